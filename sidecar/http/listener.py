"""Where the data path listens: `HttpServer` serves a handler on an address while inside an
`async with` block, over HTTP/1.1 (sidecar.http.server) and HTTP/2 (sidecar.http.h2c.server)
connections on the same port, and drains and stops them together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

from sidecar.config import HostPort
from sidecar.errors import StartupError
from sidecar.http.exchange import Exchange
from sidecar.http.h2c.exchange import StreamExchange
from sidecar.http.h2c.server import H2ServerConnection
from sidecar.http.server import ServerConnection

# When the sidecar stops, its connections get this long to close by themselves: requests still
# running finish (answered with Connection: close), idle ones close as when draining.
SHUTDOWN_GRACE_SECONDS = 1.0

Handler = Callable[[Exchange | StreamExchange], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    body_timeout: float = 60.0


class HttpServer:
    """Async context manager: serves `handler` on `address` while inside the block."""

    def __init__(self, address: HostPort, handler: Handler, limits: Limits, option: str) -> None:
        self.address = address
        self.handler = handler
        self.limits = limits
        # What every keep-alive response says of the connection's idle timeout (Exchange).
        self.keep_alive = b"timeout=%d" % int(limits.idle_timeout)
        self.option = option  # names the flag in a start-up error
        self.connections: set[ServerConnection | H2ServerConnection] = set()
        self.draining = False
        self.stopping = False  # no longer listening: every response closes its connection
        self.all_closed = asyncio.Event()  # set once stopping and no connection is left
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> HttpServer:
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: ServerConnection(self), self.address.host, self.address.port, reuse_address=True
            )
        except OSError as exc:
            raise StartupError(f"{self.option} {self.address}: cannot listen ({exc.strerror})") from exc
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._server is None:
            return
        # Aborting a keep-alive connection would cut a request its client has just sent on it
        # (found by bench/soak.py: a consumer sidecar's SIGTERM under load). So: stop listening,
        # answer whatever arrives with Connection: close, close idle connections as when
        # draining, and wait for every connection to close by itself; abort what is left after
        # SHUTDOWN_GRACE_SECONDS.
        self._server.close()
        self.stopping = True
        self.close_idle()
        if self.connections:
            # asyncio.timeout, not wait_for: see InflightTracker.wait_quiet.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHUTDOWN_GRACE_SECONDS):
                    await self.all_closed.wait()
        for connection in list(self.connections):
            connection.abort()
        await self._server.wait_closed()

    def forget(self, connection: ServerConnection | H2ServerConnection) -> None:
        """`connection` closed."""
        self.connections.discard(connection)
        if self.stopping and not self.connections:
            self.all_closed.set()

    def close_idle(self) -> None:
        """Draining: close every connection that is not in an exchange (see DRAIN_IDLE_SECONDS),
        now and from now on, so that clients go elsewhere; HTTP/2 ones get GOAWAY (two steps:
        sidecar.http.h2c.server) and close once their streams are done."""
        self.draining = True
        for connection in list(self.connections):
            connection.drain()

    def close_upgraded(self) -> None:
        """The drain has ended: close every spliced (upgraded) connection, and every HTTP/2
        connection with a stream still open (a long streaming call)."""
        for connection in list(self.connections):
            connection.end_drain()
