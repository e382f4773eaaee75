"""ZooKeeper backend (kazoo), publishing in a layout that existing ZooKeeper consumers read.

Features
--------
- An instance is an EPHEMERAL node of this object's publishing session: a sidecar killed with
  SIGKILL stops pinging, and ZooKeeper deletes its node when the session expires (`ttl`, the
  session timeout, 10 s by default; the server bounds it to 2..20 ticks). Where the node lives
  and what it holds is the layout's business (`zookeeper_layouts`): Curator's service discovery
  (Spring Cloud Zookeeper) or Dubbo's providers list, so consumers without a sidecar see the
  instance, its weight and its departure.
- Weight 0 and `set_offline` delete the node (neither Curator's consumers nor Dubbo's skip a
  node for its weight); a later weight > 0 creates it again, never after `set_offline`.
  `deregister` deletes it and, once nothing is published here, closes the publishing session.
- Every change reconciles the service's children with what this object wants published, in one
  ZooKeeper transaction: our node created, updated (Curator: setData, as Curator's own update)
  or replaced (Dubbo: the URL is the name, so a new weight is a new node, created in the same
  transaction that deletes the old one: consumers never see the instance missing), and stale
  nodes of the same instance id deleted (an earlier process's, not yet expired). A node that
  belongs to another session is replaced, so that it lives exactly as long as ours.
- A session lost and established anew (a partition longer than the timeout, a server restarted
  without its data) has lost its ephemeral nodes: they are published again on reconnection, as
  is any change that failed while the server could not be reached.
- `watch` reads the service's children (and, for Curator, their data) with one-shot ZooKeeper
  watches, bridged from kazoo's threads into the event loop; a lost connection ends the watch
  with `RegistryUnavailable`. Watches use a session of their own, so that closing the
  publishing session never disturbs the consumer side.
- `services` lists the children of the layout's root (`/services`, `/dubbo`) that have an
  instance node (Dubbo: a provider), with the reader's session; a node out of rotation is no
  node, so such a service is not listed.
- kazoo is thread-based: its calls are issued asynchronously and their results bridged into the
  loop (`kazoo_bridge`); only starting and stopping a session, which block, run in worker
  threads. Calls fail fast while a session is not connected.

Connection string
-----------------
`zookeeper://HOST[:PORT][,HOST[:PORT]...][/CHROOT][?layout=curator|dubbo&session_timeout=S
&protocol=P]`. PORT defaults to 2181; CHROOT is created when missing. `layout=curator` (default)
publishes `/services/{service}/{id}`; `layout=dubbo` publishes
`/dubbo/{service}/providers/{URL}`, with `protocol` (default `dubbo`) as the URL's scheme.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Self
from urllib.parse import SplitResult, unquote

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import NoNodeError, RolledBackError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from registry_adapters import kazoo_bridge
from registry_adapters.base import Instance, RegistryRejected, RegistryUnavailable, RegistryURLError
from registry_adapters.kazoo_bridge import CONFLICTS, Drops, said, threadsafe, translated
from registry_adapters.keepalive import Published, Publisher
from registry_adapters.reasons import told
from registry_adapters.urls import BadHost, host_list, query_options
from registry_adapters.zookeeper_layouts import LAYOUTS, Layout, make_layout

log = logging.getLogger(__name__)
_kazoo_log = logging.getLogger(f"{__name__}.kazoo")  # its connection chatter, apart from ours

DEFAULT_PORT = 2181
# kazoo's default: a killed sidecar's node goes 10 s after its last ping (kazoo pings every ~3 s).
DEFAULT_SESSION_TIMEOUT_S = 10.0
# A connected server answers in milliseconds; beyond this it is unwell. Also bounds a start.
DEFAULT_CALL_TIMEOUT_S = 5.0
_USAGE = "expected zookeeper://HOST[:PORT][,HOST[:PORT]...][/CHROOT][?layout=curator|dubbo]"


@dataclass(slots=True, kw_only=True)
class _Published(Published):
    """What this process wants ZooKeeper to show for one instance: also since when."""

    registered_ms: int

    @property
    def hidden(self) -> bool:
        return self.leaving or not self.in_rotation


class ZooKeeperRegistry(Publisher[_Published]):
    kind = "zookeeper"

    def __init__(
        self,
        hosts: str = f"127.0.0.1:{DEFAULT_PORT}",
        *,
        chroot: str = "",
        layout: str = "curator",
        protocol: str = "dubbo",
        ttl: float = DEFAULT_SESSION_TIMEOUT_S,
        call_timeout: float = DEFAULT_CALL_TIMEOUT_S,
        beat_interval: float | None = None,  # unused: kazoo pings within a third of `ttl` itself
    ) -> None:
        super().__init__()  # its lock also serialises a publishing session's start
        self._hosts = hosts
        self._chroot = chroot
        self.where = f"zookeeper at {hosts}{chroot}"
        self._drops = {"reader": Drops(_kazoo_log), "publisher": Drops(_kazoo_log)}  # why not connected
        self.layout: Layout = make_layout(layout, protocol)
        self._ttl = ttl
        self._call_timeout = call_timeout
        self._publisher: KazooClient | None = None
        self._reader: KazooClient | None = None
        self._wakers: set[asyncio.Event] = set()  # one per running watch, set on state changes
        self._reader_lock = asyncio.Lock()
        self._resyncs: set[asyncio.Task[None]] = set()

    @classmethod
    def from_url(cls, parts: SplitResult, **options: Any) -> Self:
        shown = parts.geturl()
        try:
            hosts = host_list(parts.netloc, DEFAULT_PORT)
        except BadHost as exc:
            raise RegistryURLError(
                f"registry URL {shown!r}: bad host {exc.entry!r} in the host list; {_USAGE}"
            ) from None
        chroot = unquote(parts.path).rstrip("/") if parts.path not in ("", "/") else ""
        if chroot and any(segment in ("", ".", "..") for segment in chroot.split("/")[1:]):
            raise RegistryURLError(f"registry URL {shown!r}: bad chroot {parts.path!r}; {_USAGE}")
        known = ["layout", "session_timeout", "protocol"]
        query = query_options(parts, shown, known, "unknown option(s) {names}; known: {known}")
        layout = query.get("layout", "curator")
        if layout not in LAYOUTS:
            raise RegistryURLError(f"registry URL {shown!r}: layout must be curator or dubbo, not {layout!r}")
        if "session_timeout" in query:
            try:
                options["ttl"] = float(query["session_timeout"])
            except ValueError:
                options["ttl"] = -1.0
            if not 1 <= options["ttl"] <= 600:
                raise RegistryURLError(f"registry URL {shown!r}: session_timeout must be 1..600 seconds")
        protocol = query.get("protocol", "dubbo")
        if not re.fullmatch(r"[a-z][a-z0-9+.-]*", protocol):
            raise RegistryURLError(f"registry URL {shown!r}: protocol must be a URL scheme, not {protocol!r}")
        return cls(",".join(hosts), chroot=chroot, layout=layout, protocol=protocol, **options)

    async def register(self, instance: Instance) -> None:
        self._check_open()
        async with self._lock:
            previous = self._published.get(instance.instance_id)
            registered_ms = previous.registered_ms if previous else int(time.time() * 1000)
            published = _Published(instance, registered_ms=registered_ms)
            self._published[instance.instance_id] = published
            await self._reconcile(published)

    async def watch(self, service: str) -> AsyncGenerator[list[Instance], None]:
        self._check_open()
        parent = self.layout.parent(service)
        client = await self._session("reader", "watch")
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        # One callable for the whole watch: kazoo keeps a set of watchers per path, so watching
        # a node again with it does not pile up callbacks.
        wake = threadsafe(loop, lambda *_: changed.set())
        self._wakers.add(changed)
        try:
            last: list[Instance] | None = None
            while True:
                changed.clear()
                current = await self._read(client, service, parent, wake)
                if current != last:
                    last = current
                    yield current
                await changed.wait()
        finally:
            self._wakers.discard(changed)

    async def services(self) -> list[str]:
        client = await self._session("reader", "services")
        children = await self._children(client, self.layout.root)
        nodes = [self.layout.service_node(child) for child in children]
        # `exists` tells how many children a node has, without listing them.
        stats = await asyncio.gather(
            *(self._call("services", client.exists_async, path) for _, path in nodes)
        )
        return sorted(
            {name for (name, _), stat in zip(nodes, stats, strict=True) if stat and stat.numChildren}
        )

    async def close(self) -> None:
        self._closed = True
        for task in self._resyncs:
            task.cancel()
        await asyncio.gather(*self._resyncs, return_exceptions=True)
        clients = [self._publisher, self._reader]
        self._publisher = self._reader = None
        for changed in self._wakers:
            changed.set()
        await asyncio.gather(*(kazoo_bridge.stop(client) for client in clients))

    # -- sessions ---------------------------------------------------------------------------------

    async def _session(self, role: str, what: str) -> KazooClient:
        """The connected client of `role`, started on first use: "reader" for watches,
        "publisher" for our nodes (called with `_lock` held, which serialises its start)."""
        self._check_open()  # and so never a new session after close()
        if role == "reader":
            async with self._reader_lock:
                if self._reader is None:
                    self._reader = await self._start(role, what)
                client = self._reader
        else:
            if self._publisher is None:
                self._publisher = await self._start(role, what)
            client = self._publisher
        if client.state != KazooState.CONNECTED:
            last = self._drops[role].last
            why = f"not connected: {said(last)}" if last else f"not connected ({client.state.lower()})"
            raise RegistryUnavailable(told(self.where, why, what))
        return client

    async def _start(self, role: str, what: str) -> KazooClient:
        # The chroot is set once connected, after creating it if missing: kazoo cannot create a
        # chroot through a client that already lives inside it.
        client = KazooClient(
            hosts=self._hosts,
            timeout=self._ttl,
            # Reconnect for ever, quickly: every call fails fast meanwhile, nothing waits on this.
            connection_retry=KazooRetry(max_tries=-1, delay=0.1, backoff=2, max_delay=2.0),
            logger=self._drops[role],
        )
        self._drops[role].last = None  # what an earlier session met is no reason for this one
        loop = asyncio.get_running_loop()
        client.add_listener(threadsafe(loop, lambda state: self._on_state(role, client, state)))
        try:
            await asyncio.to_thread(client.start, self._call_timeout)
            if self._chroot:
                if role == "publisher":
                    await self._call("create chroot", client.ensure_path_async, self._chroot)
                client.chroot = self._chroot
        except KazooTimeoutError as exc:  # kazoo stopped the client already
            last = self._drops[role].last  # why: "connection refused", say, else only the timeout
            why = said(last) if last else f"no session within {self._call_timeout:g} s"
            raise RegistryUnavailable(told(self.where, why, what)) from exc
        except BaseException:
            await kazoo_bridge.stop(client)
            raise
        return client

    def _on_state(self, role: str, client: KazooClient, state: str) -> None:
        """A session's state changed (in the loop, from kazoo's thread)."""
        if role == "reader":
            for changed in self._wakers:
                changed.set()  # running watches look at the state and end if it is not connected
        elif state == KazooState.LOST and client is self._publisher and self._published:
            log.warning(
                "zookeeper session lost: nodes of %s will be published again", sorted(self._published)
            )
        elif state == KazooState.CONNECTED and client is self._publisher and not self._closed:
            # A new task each time (they queue on the lock): one still running may have failed
            # on the disconnection that this connection ends.
            task = asyncio.create_task(self._publish_all(), name="zookeeper-resync")
            self._resyncs.add(task)
            task.add_done_callback(self._resyncs.discard)

    async def _publish_all(self) -> None:
        """After a (re)connection: bring every node in line; a new session has none of them."""
        async with self._lock:
            for published in list(self._published.values()):
                try:
                    await self._reconcile(published)
                except (RegistryUnavailable, RegistryRejected) as exc:
                    log.warning(
                        "zookeeper: publishing %s again failed: %s", published.instance.instance_id, exc
                    )

    # -- publishing -------------------------------------------------------------------------------

    async def _show(self, published: _Published, *, weight_changed: bool) -> None:
        await self._reconcile(published)

    async def _withdraw(self, instance_id: str, published: _Published | None) -> None:
        if published is None:
            return
        published.leaving = True
        await self._reconcile(published)  # kept (hidden) until this succeeds: retried then
        del self._published[instance_id]
        if not self._published:
            client, self._publisher = self._publisher, None
            await kazoo_bridge.stop(client)

    async def _reconcile(self, published: _Published) -> None:
        """Make the service's children show `published`: one transaction, retried once if the
        children changed in between (another process's node of the same id came or went)."""
        for attempt in (1, 2):
            try:
                await self._reconcile_once(published)
                return
            except CONFLICTS as exc:
                if attempt == 2:
                    why = f"nodes kept changing ({said(exc)})"
                    raise RegistryUnavailable(told(self.where, why, "publish")) from exc

    async def _reconcile_once(self, published: _Published) -> None:
        instance = published.instance
        client = await self._session("publisher", "publish")
        parent = self.layout.parent(instance.service)
        want = None
        if not published.hidden:
            want = self.layout.node(instance, published.registered_ms)
        children = await self._children(client, parent)
        wanted_name = want.name if want is not None else None
        stale = [c for c in children if self.layout.owner(c) == instance.instance_id and c != wanted_name]
        transaction = client.transaction()
        changes = len(stale)
        if want is not None:
            path = f"{parent}/{want.name}"
            current = await self._get(client, path) if want.name in children else None
            session_id = client.client_id[0] if client.client_id else None
            if current is None:
                await self._call("create parent", client.ensure_path_async, parent)
                transaction.create(path, want.data, ephemeral=True)
                changes += 1
            elif current[1].ephemeralOwner != session_id:
                transaction.delete(path)
                transaction.create(path, want.data, ephemeral=True)
                changes += 1
            elif current[0] != want.data:
                transaction.set_data(path, want.data, version=current[1].version)
                changes += 1
        for child in stale:
            transaction.delete(f"{parent}/{child}")
        if changes:
            results = await self._call("publish", transaction.commit_async)
            failures = [r for r in results if isinstance(r, Exception) and not isinstance(r, RolledBackError)]
            if failures and isinstance(failures[0], CONFLICTS):
                raise failures[0]
            if failures:
                raise translated(self.where, "publish", failures[0]) from failures[0]

    async def _children(self, client: KazooClient, parent: str, watch: Any = None) -> list[str]:
        try:
            children: list[str] = await self._call("list", client.get_children_async, parent, watch)
        except NoNodeError:
            if watch is None:
                return []
            # Be told when the parent appears. If it appeared since the read above (the first
            # provider registering just then), `exists` sets a watch on its data, not on its
            # children: read them now, or this watch would miss them until something else moves.
            if await self._call("exists", client.exists_async, parent, watch) is None:
                return []
            return await self._children(client, parent, watch)
        return sorted(children)

    async def _get(self, client: KazooClient, path: str, watch: Any = None) -> tuple[bytes, Any] | None:
        try:
            result: tuple[bytes, Any] = await self._call("read", client.get_async, path, watch)
        except NoNodeError:
            return None
        return result

    async def _read(
        self, client: KazooClient, service: str, parent: str, wake: Callable[..., None]
    ) -> list[Instance]:
        if client.state != KazooState.CONNECTED or self._closed:
            raise RegistryUnavailable(told(self.where, "connection lost", f"watch of {service}"))
        children = await self._children(client, parent, wake)
        if self.layout.reads_data:
            found = await asyncio.gather(*(self._get(client, f"{parent}/{c}", wake) for c in children))
            datas = [(child, got[0]) for child, got in zip(children, found, strict=True) if got is not None]
        else:
            datas = [(child, b"") for child in children]
        instances = (self.layout.parse(service, child, data) for child, data in datas)
        unique = {i.instance_id: i for i in instances if i is not None}
        return sorted(unique.values(), key=lambda i: i.instance_id)

    async def _call(self, what: str, start: Callable[..., Any], *args: Any) -> Any:
        return await kazoo_bridge.call(self.where, what, self._call_timeout, start, *args)
