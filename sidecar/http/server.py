"""The server half of the core: client connections as asyncio Protocols driven by llhttp.

Each parsed request head becomes an `Exchange`, handed to the policy's handler (the inbound
proxy or an upstream listener) in a task of its own; requests on one connection are answered in
order (a pipelined request waits, and reading pauses, until the one before it is answered).

A connection's states, and what ends each:

    waiting for a head   --header-timeout for the whole head (not per byte), 431 past 64 KiB
    in an exchange       the handler's business (--app-timeout lives in the pool)
    idle, keep-alive     --idle-timeout; at once when draining starts (`close_idle()`)
    spliced (upgraded)   until either side closes, or `close_upgraded()` when the drain ends

Anything llhttp will not parse without guessing (RFC 9112: Content-Length with
Transfer-Encoding, differing lengths, bad chunk sizes, bare LF, NUL, obs-fold, an invalid
method or target) answers 400 and closes the connection; a request whose head was already
forwarded is cut off at the app (its connection aborted), so the app never sees it complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

import httptools

from sidecar.config import HostPort
from sidecar.errors import StartupError
from sidecar.http.exchange import Exchange
from sidecar.http.flow import Endpoint
from sidecar.http.head import Headers, RequestHead, get, serialize, status_line

log = logging.getLogger("sidecar.http")

# Large enough for any real request head (browsers send a few KiB, big cookies 16 KiB), small
# enough that a flood of them cannot exhaust memory; nginx's large_client_header_buffers is 32 KiB.
MAX_HEAD_BYTES = 64 * 1024
# Draining closes idle keep-alive connections, but only once they have been idle this long: a
# client in the middle of a burst sends its next request within it (and gets it answered, with
# Connection: close) instead of racing the close, which would lose a request no client may
# retry (a POST on a connection closed under it). Clients that are really idle go at once.
# A second covers the gaps of a busy client even on a loaded machine (0.25 s did not, in tests).
DRAIN_IDLE_SECONDS = 1.0
# When the sidecar stops, its connections get this long to close by themselves: requests still
# running finish (answered with Connection: close), idle ones close as when draining.
SHUTDOWN_GRACE_SECONDS = 1.0

Handler = Callable[[Exchange], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Limits:
    header_timeout: float = 10.0
    idle_timeout: float = 60.0


class HeadTooLarge(Exception):
    """Raised from a parser callback: the head passed MAX_HEAD_BYTES."""


class Malformed(Exception):
    """Raised from a parser callback: a head llhttp accepts but HTTP/1.1 does not."""


class ServerConnection(Endpoint):
    """One client connection: parses request heads, runs their exchanges in order."""

    def __init__(self, server: HttpServer) -> None:
        super().__init__()
        self.server = server
        self.peer: str | None = None
        self.current: Exchange | None = None
        self.upgrade_data = b""  # bytes behind an upgrade request's head
        self._parser = httptools.HttpRequestParser(self)
        self._queue: deque[Exchange] = deque()
        self._receiving: Exchange | None = None  # the exchange whose body is being read
        self._in_head = False
        self._head_size = 0  # of the head being parsed: its target and headers so far
        self._head_raw = 0  # bytes received since it began (a coarse bound on what llhttp holds)
        self._url: list[bytes] = []
        self._headers: Headers = []
        self._upgrading = False
        self._timer: asyncio.TimerHandle | None = None
        self._idle_since = 0.0  # loop time

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peername = transport.get_extra_info("peername")
        self.peer = peername[0] if isinstance(peername, tuple) else None
        self.server.connections.add(self)
        self._idle_since = asyncio.get_running_loop().time()
        self._arm(self.server.limits.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self._upgrading:  # waiting for the app's answer to an upgrade request
            self.upgrade_data += data
            self.pause_reading()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgrading = True
            self.upgrade_data = data[exc.args[0] :]
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, HeadTooLarge):
                self._reject(431, "the request head is larger than 64 KiB")
            elif isinstance(exc.__context__, Malformed):
                self._reject(400, f"malformed request: {exc.__context__}")
            else:
                self._reject(400, f"malformed request: {exc}")
            return
        if self._in_head:
            self._head_raw += len(data)
            if self._head_raw > 2 * MAX_HEAD_BYTES:  # one header still incomplete, and huge
                self._reject(431, "the request head is larger than 64 KiB")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._disarm()
        self.server.connections.discard(self)
        if self.server.stopping and not self.server.connections:
            self.server.all_closed.set()
        if self.tunnel is not None:
            self.tunnel_lost()
        for exchange in (self.current, *self._queue):
            if exchange is not None and exchange.task is not None:
                exchange.task.cancel()  # the client is gone: so is its request
        self._queue.clear()

    # --- llhttp callbacks

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_size = self._head_raw = 0
        self._url, self._headers = [], []
        if self.current is None:
            self._arm(self.server.limits.header_timeout)  # the idle wait is over

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:  # trailers of a chunked body are dropped
            self._headers.append((name, value))
            self._count(len(name) + len(value) + 4)

    def _count(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD_BYTES:
            raise HeadTooLarge

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self.current is None:
            self._disarm()
        headers = self._headers
        hosts = sum(1 for name, _ in headers if name.lower() == b"host")
        version = self._parser.get_http_version()
        if hosts > 1 or (hosts == 0 and version == "1.1"):  # RFC 9112 section 3.2: a MUST
            raise Malformed("an HTTP/1.1 request needs exactly one Host header")
        length = get(headers, b"content-length")
        head = RequestHead(
            method=self._parser.get_method().decode(),
            target=b"".join(self._url),
            version=version,
            headers=headers,
            keep_alive=self._parser.should_keep_alive(),
            upgrade=self._parser.should_upgrade(),
            chunked=b"chunked" in (get(headers, b"transfer-encoding") or b"").lower(),
            content_length=int(length) if length is not None else None,
        )
        exchange = self._receiving = Exchange(self, head)
        if self.current is None:
            self._start(exchange)
        else:
            self._queue.append(exchange)
            self.pause_reading()  # one pipelined request at a time

    def on_body(self, data: bytes) -> None:
        if self._receiving is not None:
            self._receiving.body_data(data)

    def on_message_complete(self) -> None:
        if self._receiving is not None:
            self._receiving.body_done()

    # --- exchanges

    def _start(self, exchange: Exchange) -> None:
        self.current = exchange
        exchange.task = asyncio.get_running_loop().create_task(self._run(exchange))

    async def _run(self, exchange: Exchange) -> None:
        try:
            await self.server.handler(exchange)
        except asyncio.CancelledError:
            exchange.close_after = True
        except Exception:
            log.exception("%s %s failed", exchange.head.method, exchange.head.target.decode(errors="replace"))
            if not exchange.started:
                exchange.respond_json(502, {"error": "the sidecar failed to relay this request"}, close=True)
            exchange.close_after = True
        finally:
            self._finished(exchange)

    def _finished(self, exchange: Exchange) -> None:
        self.current = None
        if self.closed:
            return
        if exchange.close_after or not exchange.started or not exchange.body_complete:
            self.close()
        elif self._queue:
            self._start(self._queue.popleft())
            self.resume_reading()
        else:
            limits = self.server.limits
            idle = DRAIN_IDLE_SECONDS if self.server.draining else limits.idle_timeout
            self._idle_since = asyncio.get_running_loop().time()
            self._arm(limits.header_timeout if self._in_head else idle)
            self.resume_reading()

    def _reject(self, status: int, message: str) -> None:
        """A request we will not forward: stop any exchange of it, answer if we still can, close."""
        receiving = self._receiving
        if receiving is not None and not receiving.body_complete and receiving.task is not None:
            receiving.task.cancel()  # its head went out already: the app must not see it complete
        if self.current is None or (self.current is receiving and not receiving.started):
            body = json.dumps({"error": message}).encode()
            headers = [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode())]
            self.write(serialize(status_line(status), [*headers, (b"Connection", b"close")]) + body)
        self.pause_reading()
        self.close()

    def is_idle(self) -> bool:
        return self.current is None and not self._in_head and self.tunnel is None

    def close_when_idle(self) -> None:
        """Draining: close once idle for DRAIN_IDLE_SECONDS (at once if it has been already)."""
        idle_for = asyncio.get_running_loop().time() - self._idle_since
        if idle_for >= DRAIN_IDLE_SECONDS:
            self.close()
        else:
            self._arm(DRAIN_IDLE_SECONDS - idle_for)

    # --- timers: one at a time (the head's, or the idle one)

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._timer = asyncio.get_running_loop().call_later(seconds, self._timed_out)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timed_out(self) -> None:
        self._timer = None
        if self.current is None:  # waiting for a head, or idle: either way, nothing is lost
            self.close()


class HttpServer:
    """Async context manager: serves `handler` on `address` while inside the block."""

    def __init__(self, address: HostPort, handler: Handler, limits: Limits, option: str) -> None:
        self.address = address
        self.handler = handler
        self.limits = limits
        self.option = option  # names the flag in a start-up error
        self.connections: set[ServerConnection] = set()
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.all_closed.wait(), SHUTDOWN_GRACE_SECONDS)
        for connection in list(self.connections):
            connection.abort()
        await self._server.wait_closed()

    def close_idle(self) -> None:
        """Draining: close every connection that is not in an exchange (see DRAIN_IDLE_SECONDS),
        now and from now on, so that clients go elsewhere."""
        self.draining = True
        for connection in list(self.connections):
            if connection.is_idle():
                connection.close_when_idle()

    def close_upgraded(self) -> None:
        """Close every spliced (upgraded) connection: the drain has ended."""
        for connection in list(self.connections):
            if connection.tunnel is not None:
                connection.abort()
