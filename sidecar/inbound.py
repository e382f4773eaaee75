"""Inbound reverse proxy: what consumers call. Forwards to the app, counts, marks, refuses.

Bodies stream both ways over keep-alive connections to the app. Each forwarded request is
tracked in flight, so the drain knows when it is safe to stop. While draining, responses carry
`X-Sidecar-Closing` and `Connection: close` so consumer sidecars drop this instance at once.
Once the drain has ended, requests are refused with 503 and `X-Sidecar-Refused` *without*
reaching the app, which tells a consumer sidecar that retrying elsewhere is safe whatever the
method. The same holds when the app cannot be connected to.
"""

from __future__ import annotations

import logging
from types import TracebackType

import aiohttp
from aiohttp import web
from yarl import URL

from sidecar.config import Settings
from sidecar.inflight import ConsumerBook, InflightTracker
from sidecar.lifecycle import Lifecycle
from sidecar.metrics import Metrics
from sidecar.relay import (
    CLOSING_HEADER,
    CONSUMER_HEADER,
    IDEMPOTENT,
    REFUSED_HEADER,
    end_to_end,
    relay_response,
    start_server,
)

log = logging.getLogger("sidecar.inbound")

# Enough connections for a busy instance; beyond it requests wait for a free one.
APP_CONNECTION_LIMIT = 1024


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
        self.listen = settings.listen
        self.app_url = settings.app.rstrip("/")
        self.instance_id = settings.instance_id
        self.lifecycle = lifecycle
        self.tracker = tracker
        self.consumers = consumers
        self.metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> InboundProxy:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=APP_CONNECTION_LIMIT),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,  # pass the app's bytes through untouched
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        try:
            self._runner = await start_server(app, self.listen, "--listen")
        except BaseException:
            await self._session.close()
            raise
        log.info("inbound proxy on %s -> %s", self.listen, self.app_url)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.lifecycle.refusing:
            response: web.StreamResponse = self._refuse("drained")
        else:
            consumer = request.headers.get(CONSUMER_HEADER)
            if consumer:
                self.consumers.remember(consumer, request.remote)
            with self.tracker.track():
                response = await self._forward(request)
        self.metrics.requests.labels(str(response.status)).inc()
        return response

    def _mark_closing(self, response: web.StreamResponse) -> None:
        if self.lifecycle.closing:
            response.headers[CLOSING_HEADER] = self.instance_id
            response.force_close()  # aiohttp then sends Connection: close

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        headers = end_to_end(request.headers, drop=(CONSUMER_HEADER.lower(),))
        if request.remote:
            forwarded = request.headers.get("X-Forwarded-For")
            headers["X-Forwarded-For"] = f"{forwarded}, {request.remote}" if forwarded else request.remote
        url = URL(self.app_url + request.rel_url.raw_path_qs, encoded=True)
        body = request.content if request.body_exists else None
        tries = 2 if body is None and request.method in IDEMPOTENT else 1
        for attempt in range(1, tries + 1):
            try:
                upstream = await self._session.request(
                    request.method, url, headers=headers, data=body, allow_redirects=False
                )
                break
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
                # Not even connected: the app never saw this request.
                return self._refuse("app unreachable")
            except aiohttp.ServerDisconnectedError:
                if attempt == tries:
                    return self._error(502, "the app closed the connection without answering")
            except (aiohttp.ClientError, TimeoutError) as exc:
                return self._error(502, f"the app failed: {exc.__class__.__name__}")
        try:
            return await relay_response(request, upstream, self._mark_closing)
        finally:
            upstream.release()

    def _refuse(self, why: str) -> web.Response:
        response = web.json_response(
            {
                "error": f"instance {self.instance_id} refused the request: {why}",
                "instance_id": self.instance_id,
            },
            status=503,
            headers={REFUSED_HEADER: self.instance_id},
        )
        response.force_close()
        self._mark_closing(response)
        return response

    def _error(self, status: int, message: str) -> web.Response:
        response = web.json_response({"error": message, "instance_id": self.instance_id}, status=status)
        self._mark_closing(response)
        return response
