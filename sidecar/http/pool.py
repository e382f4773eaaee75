"""Keep-alive connections per origin (the app, or each provider instance), lent to one request
at a time.

`Pool.request()` sends a request on an idle pooled connection or a new one; `response()` awaits
its head; `release()` takes the connection back once its response is over, if both sides keep it
alive (sidecar.http.client says when). An idle connection is reused only within the origin's
keep-alive timeout (`reuse_window` in sidecar.http.client); one idle longer is closed instead.
Per origin, at most `limit` connections are open at once (idle or busy); further requests wait
for one. With 64 KiB write buffers on each side, a sidecar's memory for bodies in transit is
bounded by connections x 128 KiB. Origins that speak HTTP/2 (h2c) are the business of `h2`, a
few multiplexed connections each (sidecar.http.h2c).
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque

from sidecar.errors import ConnectFailed
from sidecar.http.client import Informational, Origin, UpstreamConnection, UpstreamResponse
from sidecar.http.h2c.client import H2Pool


class Pool:
    """Keep-alive connections per origin, at most `limit` open per origin."""

    def __init__(self, limit: int, connect_timeout: float, app_timeout: float | None = None) -> None:
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.app_timeout = app_timeout
        self._idle: dict[Origin, list[UpstreamConnection]] = {}
        self._open: dict[Origin, int] = {}
        self._waiters: dict[Origin, deque[asyncio.Future[None]]] = {}
        self.h2 = H2Pool(connect_timeout, app_timeout)  # the origins that speak h2c

    def open_count(self, origin: Origin) -> int:
        """Connections open to `origin`, idle or busy."""
        return self._open.get(origin, 0)

    def waiting(self, origin: Origin) -> int:
        """Requests waiting for a connection to `origin` (the limit is reached)."""
        return sum(1 for waiter in self._waiters.get(origin, ()) if not waiter.done())

    async def request(
        self,
        origin: Origin,
        head: bytes,
        *,
        body: bytes = b"",
        method: str,
        informational: Informational | None = None,
    ) -> UpstreamConnection:
        """Send a request on a pooled or new connection; the caller awaits its response head
        with `response()` after sending any streamed body."""
        connection = await self._acquire(origin)
        connection.send(head, body, method, informational)
        return connection

    async def response(self, connection: UpstreamConnection) -> UpstreamResponse:
        try:
            head = await connection.head_received()
        except BaseException:
            connection.abort()
            raise
        return UpstreamResponse(connection, head)

    def release(self, connection: UpstreamConnection) -> None:
        """A response is over: keep the connection for the next request if it can be reused."""
        connection.feed_from(None)
        connection.tunnel = None
        if connection.closed or not connection.reusable:
            connection.abort()
            return
        connection.resume_reading()  # to notice the peer closing it while idle
        connection.idle_since = asyncio.get_running_loop().time()
        self._idle.setdefault(connection.origin, []).append(connection)
        self._wake(connection.origin)

    def forget(self, connection: UpstreamConnection) -> None:
        """The connection closed (connection_lost): it no longer counts against the limit."""
        idle = self._idle.get(connection.origin)
        if idle and connection in idle:
            idle.remove(connection)
        if connection.counted:
            connection.counted = False
            self._open[connection.origin] -= 1
            self._wake(connection.origin)

    async def _acquire(self, origin: Origin) -> UpstreamConnection:
        while True:
            idle = self._idle.get(origin)
            now = asyncio.get_running_loop().time()
            while idle:
                connection = idle.pop()  # the most recently used: the least likely to expire
                if connection.closed:
                    continue
                if now - connection.idle_since > connection.reuse_within:
                    connection.abort()  # the origin may be closing it right now
                    continue
                connection.reused = True
                return connection
            if self._open.get(origin, 0) < self.limit:
                break
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(origin, deque()).append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake(origin)  # woken, but gone: the next in line gets the connection
                raise
        self._open[origin] = self._open.get(origin, 0) + 1
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: UpstreamConnection(self, origin),
                    origin.host,
                    origin.port,
                    ssl=origin.tls,
                    server_hostname=origin.host if origin.tls else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            self._open[origin] -= 1
            self._wake(origin)
            raise ConnectFailed(f"cannot connect to {origin}: {exc or 'timed out'}") from exc
        except BaseException:
            self._open[origin] -= 1
            self._wake(origin)
            raise
        connection.counted = True
        return connection

    def _wake(self, origin: Origin) -> None:
        waiters = self._waiters.get(origin)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        self.h2.close()
        for idle in list(self._idle.values()):
            for connection in list(idle):
                connection.abort()
        self._idle.clear()
