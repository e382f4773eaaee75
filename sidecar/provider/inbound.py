"""Inbound reverse proxy policy: what consumers call. Forwards to the app, counts, marks, refuses.

Each forwarded request is tracked in flight from the arrival of its head to the last byte of its
response (an upgraded connection until it closes), so the drain knows when it is safe to stop.
While draining, responses carry `X-Sidecar-Closing` and `Connection: close` so consumer sidecars
drop this instance at once; idle keep-alive connections are closed when draining starts, and
upgraded ones when the drain ends. Once the drain has ended, requests are refused with 503 and
`X-Sidecar-Refused` *without* reaching the app, which tells a consumer sidecar that retrying
elsewhere is safe whatever the method. The same holds when the app cannot be connected to.
On HTTP/2 the same holds per stream, in HTTP/2's own words: GOAWAY when draining starts, and
RST_STREAM with REFUSED_STREAM for a refused stream (sidecar.http.h2c).
What a failure to forward means (refuse, retry once, 502 or 504) is the forwarding policy's
(sidecar.http.failures), shared with the consumer side. Any such failure also has the app's
health checked at once (app_health): a crashed app leaves the registry within about a second.

The bytes are the HTTP core's business (sidecar.http); this module only decides.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from contextlib import AsyncExitStack
from types import TracebackType
from urllib.parse import urlsplit

from sidecar.config import Settings
from sidecar.errors import UpstreamError
from sidecar.http import AnyExchange, Headers, HttpServer, Limits, Origin, Pool, classify
from sidecar.metrics import Metrics
from sidecar.protocol import headers as wire
from sidecar.provider.inflight import ConsumerBook, InflightTracker
from sidecar.provider.lifecycle import Lifecycle

log = logging.getLogger("sidecar.inbound")

# Enough connections for a busy instance; beyond it requests wait for a free one.
APP_CONNECTION_LIMIT = 1024
APP_CONNECT_TIMEOUT_SECONDS = 5.0
# Not forwarded to the app: the consumer's URL is for this sidecar; X-Forwarded-For is rewritten.
DROPPED = frozenset({wire.CONSUMER, b"x-forwarded-for"})
# The error messages of what the app failed to answer (the status is the forwarding policy's).
TIMED_OUT = "the app sent nothing within --app-timeout"
NOT_ANSWERED = "the app closed the connection without answering"
CUT_OFF = "the response was cut off mid-body"
NOT_HTTP2 = "gRPC needs an app that speaks HTTP/2: --app h2c://HOST:PORT"


class InboundProxy:
    """Async context manager: listens on --listen while inside the `async with` block."""

    def __init__(
        self,
        settings: Settings,
        lifecycle: Lifecycle,
        tracker: InflightTracker,
        consumers: ConsumerBook,
        metrics: Metrics,
    ) -> None:
        if settings.listen is None or settings.app is None:
            raise RuntimeError("InboundProxy needs --listen and --app")
        self.instance_id = settings.instance_id.encode()
        self.lifecycle = lifecycle
        self.tracker = tracker
        self.consumers = consumers
        self.metrics = metrics
        self.origin = _origin(settings.app)
        app = urlsplit(settings.app)
        self.prefix = app.path.rstrip("/").encode()  # --app http://host:port/prefix
        self.authority = app.netloc.encode()  # the Host of an HTTP/1.0 request that named none
        self.pool = Pool(APP_CONNECTION_LIMIT, APP_CONNECT_TIMEOUT_SECONDS, settings.app_timeout)
        limits = Limits(settings.header_timeout, settings.idle_timeout, settings.body_timeout)
        self.server = HttpServer(settings.listen, self.handle, limits, "--listen")
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> InboundProxy:
        async with AsyncExitStack() as stack:
            stack.callback(self.pool.close)
            await stack.enter_async_context(self.server)
            follow = asyncio.create_task(self._follow_drain(), name="inbound-drain")
            stack.callback(follow.cancel)
            self._stack = stack.pop_all()
        log.info("inbound proxy on %s -> %s", self.server.address, self.origin)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    async def _follow_drain(self) -> None:
        """Draining: idle clients reconnect elsewhere, once consumers are notified. The drain
        over (and upgraded connections still open counted in its result): those end too."""
        await self.lifecycle.draining.wait()
        # Not before the consumer sidecars were told: until then one may pick this instance and
        # send on a pooled connection that has been idle a while, which a close would cut after
        # the request went out (a POST lost; found by bench/soak.py during rolls).
        await self.lifecycle.notified.wait()
        self.server.close_idle()
        await self.lifecycle.ended.wait()
        self.server.close_upgraded()

    async def handle(self, exchange: AnyExchange) -> None:
        if self.lifecycle.refusing:
            self._refuse(exchange, "drained")
        else:
            consumer = exchange.header(wire.CONSUMER)
            if consumer:
                self.consumers.remember(consumer.decode("latin-1"), exchange.peer)
            self.tracker.begin(exchange.http2)
            try:
                await self._forward(exchange)
            finally:
                self.tracker.end(exchange.http2)
        self.metrics.count_request(exchange.status)
        if exchange.grpc:
            self.metrics.count_grpc(exchange.grpc_status)

    async def _forward(self, exchange: AnyExchange) -> None:
        request = exchange.head
        if exchange.http2 and exchange.grpc and not self.origin.h2c:
            return self._error(exchange, 502, NOT_HTTP2)
        headers = request.end_to_end(DROPPED)
        if exchange.peer:
            chain = [value for name, value in request.headers if name.lower() == b"x-forwarded-for"]
            headers.append((b"X-Forwarded-For", b", ".join([*chain, exchange.peer.encode()])))
        host = request.host or self.authority
        replayable = not request.has_body  # a body streams to the app: once read, it is gone
        started = time.monotonic()
        for attempt in (1, 2):
            try:
                response = await exchange.forward(self.pool, self.origin, host, headers, None, self.prefix)
                break
            except UpstreamError as exc:
                failure = classify(exc, request.method, replayable)
                # A pooled connection the app had just closed is tried again once, when that is safe.
                if attempt == 1 and failure.stale and failure.resendable:
                    continue
                self.lifecycle.app.suspect()  # a crashed app is taken out without waiting for a poll
                if not failure.sent:
                    return self._refuse(exchange, "app unreachable")  # the app never saw it
                message = TIMED_OUT if failure.status == 504 else NOT_ANSWERED
                return self._error(exchange, failure.status, message)
        self.lifecycle.warming.record(time.monotonic() - started)  # latency warmup: the app's latency
        try:
            # The app's X-Sidecar-* headers go: consumers must be able to trust the marks.
            await exchange.relay(response, self._marks(), close=self.lifecycle.closing, strip_marks=True)
        except UpstreamError as exc:
            self.lifecycle.app.suspect()
            if not exchange.started:
                failure = classify(exc, request.method, replayable, responded=True)
                message = TIMED_OUT if failure.status == 504 else CUT_OFF
                return self._error(exchange, failure.status, message)
            # Mid-body: the status line is out, so closing the connection is the only signal left.
            log.info("response to %s cut short: %s", request.method, exc)

    def _marks(self) -> Headers:
        if self.lifecycle.closing:
            return [(wire.CLOSING_NAME, self.instance_id)]
        return self.lifecycle.weight_marks()  # latency warmup mode: X-Sidecar-Weight

    def _refuse(self, exchange: AnyExchange, why: str) -> None:
        body = {"error": f"instance {self.instance_id.decode()} refused the request: {why}"}
        headers = [(wire.REFUSED_NAME, self.instance_id), *self._marks()]
        exchange.refuse({**body, "instance_id": self.instance_id.decode()}, headers)

    def _error(self, exchange: AnyExchange, status: int, message: str) -> None:
        body = {"error": message, "instance_id": self.instance_id.decode()}
        exchange.respond_json(status, body, self._marks(), close=self.lifecycle.closing)


def _origin(app_url: str) -> Origin:
    parts = urlsplit(app_url)
    assert parts.hostname is not None  # validated by options.parse_http_url
    tls = ssl.create_default_context() if parts.scheme == "https" else None
    return Origin(parts.hostname, parts.port or (443 if tls else 80), tls, h2c=parts.scheme == "h2c")
