"""An app that speaks raw HTTP/1.1 over keep-alive connections and records everything it gets, for
black-box tests of what the core lets through in either direction: the framing and headers a
request reaches the app with, and what the sidecar makes of whatever bytes an app answers with
(a body after a HEAD response, more than its Content-Length, a response nobody asked for); and
for what no real app does on cue: a 103 before its 200, a refused `Expect: 100-continue`, a
switch to a raw protocol, a response cut short, silence until the test is over.

Each connection reads requests one after another. A request is read whole, its head and then its
body as its framing says (Content-Length, chunked with trailers, or none), recorded as a
`Received`, and answered with the reply registered for its path: raw bytes, written as they are
whatever framing they claim, after which the connection reads its next request; or a coroutine
for replies that act over time, which says whether the connection goes on (`closing` makes one
that sends bytes and ends the connection). Connections are numbered in the order they were
accepted, so a test can tell a reused connection from a new one, and each one's end (the peer
closed it) is recorded. A path listed in `early` is answered as soon as its request head is read,
the body left unread (recorded as b""): an app that answers before the request is over, and reads
the rest or not as its coroutine reply decides; after a bytes reply to such a request the
connection ends, since the unread body stands before the next one.

It runs on a thread with an event loop of its own, so that tests may block on a sidecar or a
synchronous call without starving it; tests wait for what it records with `wait_until`, woken by
each record, never by a timer. A test that gives each request a marker no other request has
(`marker`, in the target or a header value) finds it in the records with `marked`, so that "the
app never saw it" is a lookup.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import TracebackType

from tests.support.ports import free_port
from tests.support.rawhttp import Fields, fields

STARTUP_SECONDS = 10.0
WAIT_SECONDS = 10.0
HEAD_LIMIT = 1024 * 1024
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


@dataclass(frozen=True)
class Received(Fields):
    """One request as the app read it off the wire."""

    connection: int  # which app-side connection it came on (1, 2, ... in accept order)
    method: str
    target: str
    version: str  # "HTTP/1.1"
    headers: list[tuple[str, str]]
    body: bytes  # decoded: the chunks of a chunked body joined
    trailers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]


class Link:
    """The app's side of one connection, as a coroutine reply sees it."""

    def __init__(self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.number = number
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def eof(self) -> None:
        """Returns once the peer has closed the connection (what it still sends is discarded)."""
        while await self.reader.read(65536):
            pass


# A coroutine reply: it answers (or not) on the link, and returns whether the connection goes on
# to read the next request.
Script = Callable[[Received, Link, "RawApp"], Awaitable[bool]]
Reply = bytes | Script


def closing(*pieces: bytes) -> Script:
    """A reply that sends `pieces` one after another, then closes the connection: the end of a
    body delimited by the close, or of one cut short, and the last word of an app that answers
    with `Connection: close`."""

    async def reply(request: Received, link: Link, app: RawApp) -> bool:
        for piece in pieces:
            await link.send(piece)
        return False

    return reply


# Announces 100 bytes, sends 10 and closes: a response the app broke off.
CUT = closing(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")


def marker(case: str) -> str:
    """A marker for one request of `case`, which no other request carries."""
    return f"{case}-{uuid.uuid4().hex[:10]}"


class RawApp:
    """Context manager: serves `replies` (path -> reply) on 127.0.0.1:`port` while inside."""

    def __init__(
        self, replies: Mapping[str, Reply], default: Reply = NOT_FOUND, early: Collection[str] = ()
    ) -> None:
        self.replies = replies
        self.default = default
        self.early = frozenset(early)  # paths answered once their head is read, body unread
        self.port = free_port()
        self.received: list[Received] = []
        self.accepted = 0  # connections so far
        self.ended: set[int] = set()  # connections the peer closed
        self.notes: list[str] = []  # what coroutine replies report
        self._changed = threading.Condition()
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._release = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name=f"raw-app-{self.port}", daemon=True)
        self._started = threading.Event()
        self._startup_error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def of_path(self, path: str) -> list[Received]:
        with self._changed:
            return [request for request in self.received if request.path == path]

    def marked(self, mark: str) -> list[Received]:
        """The requests read whole that carry `mark` in their target or a header value."""
        with self._changed:
            return [
                request
                for request in self.received
                if mark in request.target or any(mark in value for _, value in request.headers)
            ]

    async def only_marked(self, mark: str) -> Received:
        """The one request that carries `mark`, waited for: the test knows it came (an answer
        from the app did), its record may come a moment later."""
        await self.wait_until(lambda: len(self.marked(mark)) >= 1, f"request marked {mark}")
        found = self.marked(mark)
        assert len(found) == 1, found
        return found[0]

    def note(self, text: str) -> None:
        self._record(lambda: self.notes.append(text))

    async def wait_until(
        self, condition: Callable[[], bool], what: str, timeout: float = WAIT_SECONDS
    ) -> None:
        """Waits (off the event loop) until `condition()` holds, re-checked at each record."""

        def wait() -> bool:
            with self._changed:
                return self._changed.wait_for(condition, timeout)

        if not await asyncio.to_thread(wait):
            raise AssertionError(f"the app saw no {what} within {timeout} s")

    async def released(self) -> None:
        """For replies that hold a connection: returns once the test is over (or `release`)."""
        await self._release.wait()

    def release(self) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._release.set)

    def __enter__(self) -> RawApp:
        self._thread.start()
        if not self._started.wait(STARTUP_SECONDS) or self._startup_error is not None:
            raise AssertionError(f"the raw app did not start: {self._startup_error!r}")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(STARTUP_SECONDS)

    # --- the app's own thread

    def _record(self, change: Callable[[], None]) -> None:
        with self._changed:
            change()
            self._changed.notify_all()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    async def _main(self) -> None:
        try:
            server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, limit=HEAD_LIMIT)
        except BaseException as exc:
            self._startup_error = exc
            self._started.set()
            raise
        self._started.set()
        async with server:
            await self._stop.wait()
            server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._changed:
            self.accepted += 1
            link = Link(self.accepted, reader, writer)
        try:
            while (request := await _read_request(link, self.early)) is not None:
                self._record(lambda: self.received.append(request))
                reply = self.replies.get(request.path, self.default)
                if isinstance(reply, bytes):
                    await link.send(reply)
                    if request.path in self.early:
                        break  # its body, unread, stands before any next request
                elif not await reply(request, link, self):
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass  # the peer went away mid-request, or sent what this app cannot read
        finally:
            self._record(lambda: self.ended.add(link.number))
            writer.close()


async def _read_request(link: Link, early: frozenset[str] = frozenset()) -> Received | None:
    """The next request on `link`, or None when the peer closed the connection between requests;
    the body of a request for a path in `early` is left unread."""
    try:
        raw = await link.reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise
        return None
    request_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
    method, target, version = request_line.split(" ", 2)
    headers = fields(lines)
    lengths = [value for name, value in headers if name.lower() == "content-length"]
    codings = [value for name, value in headers if name.lower() == "transfer-encoding"]
    trailers: list[tuple[str, str]] = []
    if target.split("?", 1)[0] in early:
        body = b""
    elif codings:
        body, trailers = await _read_chunked(link.reader)
    elif lengths:
        body = await link.reader.readexactly(int(lengths[0]))
    else:
        body = b""
    return Received(link.number, method, target, version, headers, body, trailers)


async def _read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, list[tuple[str, str]]]:
    parts = []
    while size := int((await reader.readuntil(b"\r\n")).split(b";", 1)[0].strip(), 16):
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
    lines = []
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        lines.append(line[:-2].decode("latin-1"))
    return b"".join(parts), fields(lines)
