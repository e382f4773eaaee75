"""Embedded SQLite backend, the default: one database file shared by the sidecars of one host.

Features
--------
- No server to run. The file is in WAL mode, so readers never wait for the writer; writers wait
  their turn (busy timeout) and every statement is its own short transaction.
- `register` upserts a row and starts a heartbeat that pushes its `expires_at` forward. A
  sidecar killed with SIGKILL stops beating and its row expires after the TTL. `expires_at` is
  wall-clock time, the one clock all processes of a host share. A beat that finds its row gone
  (pruned after a long stall, deleted by hand) inserts it again.
- Weight 0 and `set_offline` keep the row but hide it from `watch`, which yields only the
  instances that should get traffic.
- `watch` polls the file every 100 ms (there is nothing to subscribe to) and yields only when
  the list changed, also when a row expired. The watches of one registry object poll together,
  on the same 100 ms ticks, with one query for all their services (a consumer with 100
  upstreams reads the file 10 times a second, not 1,000), and a row that did not change is not
  parsed again (a table of 10,000 instances). A poll reads no row at all while no connection has
  committed anything since the last read (`PRAGMA data_version`) and no row of it has expired.
- `set_weight` and `set_offline` act on instances registered through this object (`set_weight`
  of another one is rejected, `set_offline` of another one does nothing).
- `services` lists the services with a row that has not expired (out of rotation or not).
- `close()` stops the heartbeats and leaves the rows to expire; it does not deregister.
- sqlite3 calls run in worker threads (`asyncio.to_thread`). Each write opens a connection of
  its own; reads share one connection kept open (opening one per 100 ms poll was most of an idle
  sidecar's CPU), opened again when the file was replaced or removed, or a read failed.

Connection string
-----------------
`sqlite:///ABSOLUTE/PATH.db`: three slashes, then an absolute path. The parent directory is
created if needed. Processes that should see each other use the same file.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, Self, TypeVar
from urllib.parse import SplitResult, unquote

from registry_adapters.base import Backend, Instance, RegistryRejected, RegistryUnavailable, RegistryURLError
from registry_adapters.keepalive import Beats, Published, not_registered
from registry_adapters.reasons import reason, told

log = logging.getLogger(__name__)

# Three beats per TTL: two may be lost (a stalled event loop, a busy file) before the row expires.
DEFAULT_TTL_S = 6.0
DEFAULT_BEAT_S = 2.0
DEFAULT_POLL_S = 0.1
# Writers of other processes hold the lock for milliseconds; waiting longer means trouble.
DEFAULT_BUSY_TIMEOUT_S = 5.0
# Expired rows are deleted this long after expiry: invisible anyway, kept a while for debugging.
PRUNE_AFTER_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY,
    service     TEXT NOT NULL,
    host        TEXT NOT NULL,
    port        INTEGER NOT NULL,
    weight      INTEGER NOT NULL,
    meta        TEXT NOT NULL,              -- JSON object of strings
    offline     INTEGER NOT NULL DEFAULT 0,
    expires_at  REAL NOT NULL               -- time.time() seconds
);
CREATE INDEX IF NOT EXISTS instances_by_service ON instances (service);
"""

P = ParamSpec("P")
T = TypeVar("T")


class SQLiteRegistry(Backend):
    kind = "sqlite"

    def __init__(
        self,
        path: str | Path,
        *,
        ttl: float = DEFAULT_TTL_S,
        beat_interval: float = DEFAULT_BEAT_S,
        poll_interval: float = DEFAULT_POLL_S,
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT_S,
    ) -> None:
        self.path = Path(path)
        self.where = f"sqlite at {self.path}"
        self._ttl = ttl
        self._poll_interval = poll_interval
        self._busy_timeout = busy_timeout
        self._schema_ready = False
        # A beat rewrites the row with a new expiry (inserting it again if it vanished).
        self._beats = Beats("sqlite heartbeat", beat_interval, self._beat, log)
        # Held (in worker threads) around every write and every change of `_published`, so that
        # a beat cannot insert again a row that deregister has just deleted.
        self._write_lock = threading.Lock()
        self._published: dict[str, Published] = {}
        self._watched: Counter[str] = Counter()  # service -> watches of it through this object
        self._round: asyncio.Future[dict[str, list[Instance]]] | None = None  # a read under way
        self._round_services: frozenset[str] = frozenset()  # what it reads
        self._parsed: dict[tuple[Any, ...], Instance | None] = {}  # row -> instance, last read
        # The readers' connection (see `_reading`), the file it opened (device, inode), and the
        # lock every read holds: one statement at a time on it, whichever thread runs it.
        self._reader: sqlite3.Connection | None = None
        self._reader_file: tuple[int, int] | None = None
        self._read_lock = threading.Lock()
        self._last_read: LastRead | None = None

    @classmethod
    def from_url(cls, parts: SplitResult, **options: Any) -> Self:
        path = unquote(parts.path)
        if parts.netloc or not path.startswith("/") or path.endswith("/") or parts.query:
            raise RegistryURLError(
                f"registry URL {parts.geturl()!r} needs an absolute file path, e.g. sqlite:///var/lib/sidecar.db"
            )
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RegistryURLError(
                f"registry URL {parts.geturl()!r}: cannot create its directory: {reason(exc)}"
            ) from exc
        return cls(path, **options)

    async def register(self, instance: Instance) -> None:
        await self._run(self._write_register, Published(instance))
        self._beats.start(instance.instance_id)

    async def set_weight(self, instance_id: str, weight: int) -> None:
        if not await self._run(self._write_change, instance_id, weight=weight):
            raise not_registered(instance_id)

    async def set_offline(self, instance_id: str) -> None:
        await self._run(self._write_change, instance_id, offline=True)

    async def deregister(self, instance_id: str) -> None:
        await self._run(self._write_deregister, instance_id)
        await self._beats.stop([instance_id])

    async def watch(self, service: str) -> AsyncGenerator[list[Instance], None]:
        self._check_open()
        last: list[Instance] | None = None
        self._watched[service] += 1
        try:
            while True:
                current = await self._read_together(service)
                if current != last:
                    last = current
                    yield current
                # Sleep to the next tick of the interval, the same for every watch of this object.
                now = asyncio.get_running_loop().time()
                await asyncio.sleep(self._poll_interval - now % self._poll_interval)
        finally:
            self._watched[service] -= 1
            if not self._watched[service]:
                del self._watched[service]

    async def services(self) -> list[str]:
        return await self._run(self._read_services)

    async def _read_together(self, service: str) -> list[Instance]:
        """This service's live instances, from the read under way for all watched services if
        it covers this one (watches wake on the same tick and share it), else a new read."""
        if self._round is None or self._round.done() or service not in self._round_services:
            self._round_services = frozenset(self._watched)
            self._round = asyncio.ensure_future(self._run(self._read_live, sorted(self._round_services)))
            self._round.add_done_callback(_retrieved)  # its watches may all be gone by then
        found = await asyncio.shield(self._round)
        return found[service]

    async def close(self) -> None:
        self._closed = True
        await self._beats.stop()
        await asyncio.to_thread(self._release_reader)

    # -- internals ------------------------------------------------------------------------------

    async def _run(self, work: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking sqlite3 work in a thread, translating its errors; every call goes
        through here, and so does the closed registry's refusal."""
        self._check_open()
        what = work.__name__.removeprefix("_").replace("_", " ")  # "write register"
        try:
            return await asyncio.to_thread(work, *args, **kwargs)
        except sqlite3.OperationalError as exc:  # locked, unreadable, disk full: may pass
            if "no such table" in str(exc):
                self._schema_ready = False  # the file was replaced: the next call recreates it
            raise RegistryUnavailable(told(self.where, reason(exc), what)) from exc
        except sqlite3.Error as exc:  # not a database, constraint: retrying will not help
            raise RegistryRejected(told(self.where, reason(exc), what)) from exc

    async def _beat(self, instance_id: str) -> bool:
        return await self._run(self._write_change, instance_id)

    def _connect(self, shared: bool = False) -> sqlite3.Connection:
        # isolation_level=None: autocommit, each statement a transaction of its own (a reader
        # holds no snapshot between its reads). `shared`: used from any worker thread, one at a
        # time (under _read_lock).
        db = sqlite3.connect(
            self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=not shared
        )
        try:
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: safe from corruption, and fast
            if not self._schema_ready:
                db.execute("PRAGMA journal_mode=WAL")  # stored in the file: once is enough
                db.executescript(_SCHEMA)
                self._schema_ready = True
        except BaseException:
            db.close()
            raise
        return db

    @contextmanager
    def _reader_held(self) -> Iterator[sqlite3.Connection]:
        """The readers' connection, for one read at a time; a failed read closes it, and the
        next read opens it again."""
        with self._read_lock:
            try:
                yield self._reading()
            except sqlite3.Error:
                self._close_reader()
                raise

    def _reading(self) -> sqlite3.Connection:
        """The readers' connection, opened again if the file at the path is not the one it
        opened (replaced, or removed: a connection to a removed file would read it forever)."""
        self._check_open()  # a read that waited for the lock while close() released it
        file = _file_id(self.path)
        if self._reader is None or file is None or file != self._reader_file:
            self._close_reader()
            self._reader = self._connect(shared=True)
            # _connect made the file if it was missing. Replaced meanwhile, it may not be the one
            # the connection opened: then none is recorded, and the next read opens it again.
            opened = _file_id(self.path)
            self._reader_file = opened if file is None or opened == file else None
        return self._reader

    def _release_reader(self) -> None:
        with self._read_lock:  # not under a read still running in another thread
            self._close_reader()

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader, self._reader_file = None, None

    def _write_register(self, published: Published) -> None:
        now = time.time()
        with self._write_lock, closing(self._connect()) as db:
            db.execute("DELETE FROM instances WHERE expires_at < ?", (now - PRUNE_AFTER_S,))
            self._insert(db, published, now)
            self._published[published.instance.instance_id] = published

    def _write_change(self, instance_id: str, *, weight: int | None = None, offline: bool = False) -> bool:
        """Apply a change to the local copy, then write the row (again if it vanished) with a
        new expiry: set_weight, set_offline and the heartbeat. False if not registered here."""
        now = time.time()
        with self._write_lock, closing(self._connect()) as db:
            published = self._published.get(instance_id)
            if published is None:
                return False
            published.change(weight=weight, offline=offline)
            updated = db.execute(
                "UPDATE instances SET weight = ?, offline = ?, expires_at = ? WHERE instance_id = ?",
                (published.instance.weight, published.offline, now + self._ttl, instance_id),
            )
            if updated.rowcount == 0:
                log.warning("sqlite row of %s vanished while registered; inserting it again", instance_id)
                self._insert(db, published, now)
            return True

    def _write_deregister(self, instance_id: str) -> None:
        with self._write_lock, closing(self._connect()) as db:
            self._published.pop(instance_id, None)
            db.execute("DELETE FROM instances WHERE instance_id = ?", (instance_id,))

    def _insert(self, db: sqlite3.Connection, published: Published, now: float) -> None:
        i, meta = published.instance, json.dumps(dict(published.instance.meta))
        row = (i.instance_id, i.service, i.host, i.port, i.weight, meta, published.offline, now + self._ttl)
        db.execute("INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)  # schema order

    def _read_services(self) -> list[str]:
        with self._reader_held() as db:
            rows = db.execute(
                "SELECT DISTINCT service FROM instances WHERE expires_at > ? ORDER BY service",
                (time.time(),),
            ).fetchall()
        return [service for (service,) in rows]

    def _read_live(self, services: list[str]) -> dict[str, list[Instance]]:
        """The live instances of `services`. The last answer stands, unread, while no connection
        committed anything to the file (`PRAGMA data_version`, which moves for every commit but
        the reading connection's own: it writes only the schema, as it opens) and none of its
        rows has expired: a table that nobody changes costs a pragma per poll, not a read of
        every row. The lists are shared by every answer that stands: not to be changed."""
        asked, marks = tuple(services), ", ".join("?" * len(services))
        with self._reader_held() as db:
            now = time.time()
            (version,) = db.execute("PRAGMA data_version").fetchone()
            last = self._last_read
            if last is not None and last.stands(db, version, asked, now):
                return last.found
            rows = db.execute(
                "SELECT service, instance_id, host, port, weight, meta, expires_at FROM instances"
                f" WHERE service IN ({marks}) AND offline = 0 AND weight > 0 AND expires_at > ?"
                " ORDER BY service, instance_id",
                (*services, now),
            ).fetchall()
        found: dict[str, list[Instance]] = {service: [] for service in services}
        parsed, previous = {}, self._parsed
        until = math.inf  # the first of these rows to expire
        for row in rows:
            if isinstance(row[6], int | float):  # another writer's text there never expires
                until = min(until, row[6])
            fields = row[:6]  # a heartbeat moves only the expiry: the row is not parsed again
            instance = previous[fields] if fields in previous else _instance(fields)
            parsed[fields] = instance
            if instance is not None:
                found[instance.service].append(instance)
        self._parsed = parsed  # replaced whole: a read in another thread keeps the one it had
        self._last_read = LastRead(db, version, asked, found, until)
        return found


@dataclass(frozen=True)
class LastRead:
    """What `_read_live` last read, and when it is to be read again at the latest."""

    reader: sqlite3.Connection  # on which connection (data_version is per connection)
    version: int  # its data_version then
    services: tuple[str, ...]
    found: dict[str, list[Instance]]
    until: float  # wall-clock time the first of its rows expires

    def stands(self, reader: sqlite3.Connection, version: int, services: tuple[str, ...], now: float) -> bool:
        """Whether it is still the answer: same question, nothing committed since, none expired."""
        return (
            reader is self.reader
            and version == self.version
            and services == self.services
            and now < self.until
        )


def _file_id(path: Path) -> tuple[int, int] | None:
    """Which file is at `path` now (device, inode), None if none."""
    try:
        found = os.stat(path)
    except OSError:  # none, or none to be seen: the connect that follows says why
        return None
    return found.st_dev, found.st_ino


def _retrieved(read: asyncio.Future[Any]) -> None:
    if not read.cancelled():
        read.exception()


def _instance(row: tuple[Any, ...]) -> Instance | None:
    """An Instance from a row, or None (logged once) when another writer stored something odd."""
    service, instance_id, host, port, weight, meta_json = row
    try:
        meta = json.loads(meta_json)
    except (TypeError, ValueError):
        meta = None
    if (
        isinstance(instance_id, str)
        and isinstance(host, str)
        and type(port) is int
        and type(weight) is int
        and isinstance(meta, dict)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items())
    ):
        return Instance(service, instance_id, host, port, weight, meta)
    log.warning("skipping a malformed sqlite row: %.300r", row)
    return None
