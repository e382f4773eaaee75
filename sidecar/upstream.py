"""Consumer side: one local listener per `--upstream NAME=HOST:PORT`, load-balancing to NAME.

Each listener picks from a `WatchedTable` (sidecar.instances): the registry's view, corrected
locally by what this listener learns (a closing mark drops an instance, a refused connection
ejects it for a few seconds).

Retries are only for requests the provider never processed: a 503 with `X-Sidecar-Refused`, or
a connection that could not be made. A connection that broke after the request was sent is
retried only for idempotent methods. Every retry spends from a budget (see balancer.RetryBudget)
and goes to an instance not tried yet.
"""

from __future__ import annotations

import logging
import random
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from registry_adapters import Instance, Registry
from sidecar.balancer import RetryBudget
from sidecar.config import Settings, Upstream
from sidecar.instances import WatchedTable
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

log = logging.getLogger("sidecar.upstream")

# Request bodies up to this size are kept so that they can be sent again; larger ones stream
# and are retried only when they could not be sent at all.
REPLAYABLE_BODY_BYTES = 64 * 1024


Body = bytes | aiohttp.StreamReader | None


@dataclass(frozen=True, slots=True)
class Retry:
    reason: str  # for the retries metric
    otherwise: web.Response  # the answer if the budget allows no retry


class UpstreamListener:
    """The local listener of one upstream service, and the watch that feeds its table."""

    def __init__(
        self,
        upstream: Upstream,
        settings: Settings,
        registry: Registry,
        session: aiohttp.ClientSession,
        metrics: Metrics,
    ) -> None:
        self.upstream = upstream
        self.service = upstream.service
        self.consumer_url = settings.advertise_admin
        self.registry = registry
        self.session = session
        self.metrics = metrics
        self.watched = WatchedTable(upstream.service, registry, metrics)
        self.table = self.watched.table
        self.budget = RetryBudget()
        self._rng = random.Random()
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> UpstreamListener:
        await self.watched.__aenter__()
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        try:
            self._runner = await start_server(app, self.upstream.listen, f"--upstream {self.service}=")
        except BaseException:
            await self.watched.__aexit__(None, None, None)
            raise
        log.info("upstream %s on %s", self.service, self.upstream.listen)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self.watched.__aexit__(exc_type, exc, tb)

    def drop(self, instance_id: str) -> bool:
        return self.watched.drop(instance_id)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        response = await self._handle(request)
        self.metrics.upstream_requests.labels(self.service, f"{response.status // 100}xx").inc()
        return response

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.budget.on_request(time.monotonic())
        headers = end_to_end(request.headers, drop=("host", CONSUMER_HEADER.lower()))
        headers[CONSUMER_HEADER] = self.consumer_url
        body: Body = None
        if request.body_exists:
            length = request.content_length
            replayable = length is not None and length <= REPLAYABLE_BODY_BYTES
            body = await request.read() if replayable else request.content
        tried: set[str] = set()
        while (member := self.table.choose(tried, self._rng)) is not None:
            tried.add(member.instance.instance_id)
            member.inflight += 1
            try:
                outcome = await self._attempt(request, member.instance, headers, body)
            finally:
                member.inflight -= 1
            if isinstance(outcome, web.StreamResponse):
                return outcome
            if not self._may_retry(outcome.reason):
                return outcome.otherwise
        return unavailable(f"no instance of {self.service} available", tried)

    async def _attempt(
        self, request: web.Request, instance: Instance, headers: CIMultiDict[str], body: Body
    ) -> web.StreamResponse | Retry:
        """One try on one instance: the response to relay, or why another instance may be tried."""
        replayable = not isinstance(body, aiohttp.StreamReader)
        try:
            url = URL(f"http://{instance.address}{request.rel_url.raw_path_qs}", encoded=True)
        except ValueError:  # a registry entry that is no address
            self.drop(instance.instance_id)
            return Retry("connect", unavailable(f"{instance.instance_id} has no usable address"))
        try:
            upstream = await self.session.request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
            # Not connected: nothing was sent, the body (even a stream) is still unread.
            self.table.eject(instance.instance_id, time.monotonic())
            return Retry("connect", unavailable(f"cannot connect to {instance.address}"))
        except (aiohttp.ClientError, TimeoutError) as exc:
            failed = web.json_response({"error": f"{instance.address} failed: {exc!r}"}, status=502)
            # Sent, maybe processed: only an idempotent request may go again.
            return Retry("broken", failed) if request.method in IDEMPOTENT and replayable else failed
        try:
            if REFUSED_HEADER in upstream.headers:
                # Refused while closing: the instance is leaving. Refused otherwise: its app is
                # not reachable (starting, crashed); try it again in a few seconds.
                if CLOSING_HEADER in upstream.headers:
                    self.drop(instance.instance_id)
                else:
                    self.table.eject(instance.instance_id, time.monotonic())
                # Never processed: safe to send elsewhere, if the body can be sent again.
                if replayable:
                    return Retry("refused", unavailable(f"{instance.instance_id} refused the request"))
            elif CLOSING_HEADER in upstream.headers:
                self.drop(instance.instance_id)
            return await relay_response(request, upstream, no_mark)
        finally:
            upstream.release()

    def _may_retry(self, reason: str) -> bool:
        if not self.budget.try_withdraw(time.monotonic()):
            self.metrics.upstream_retries.labels(self.service, "budget_exhausted").inc()
            return False
        self.metrics.upstream_retries.labels(self.service, reason).inc()
        return True

    def status(self) -> dict[str, Any]:
        return {
            "listen": str(self.upstream.listen),
            "instances": self.table.snapshot(),
            "last_error": self.watched.watch_error,
        }


def no_mark(response: web.StreamResponse) -> None:
    """Consumer-side responses go to the local app as the provider sent them."""


def unavailable(message: str, tried: set[str] | None = None) -> web.Response:
    return web.json_response({"error": message, "tried": sorted(tried or ())}, status=503)


class Upstreams:
    """All upstream listeners of this sidecar, as one async context manager."""

    def __init__(self, settings: Settings, registry: Registry, metrics: Metrics) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.listeners: dict[str, UpstreamListener] = {}
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Upstreams:
        async with AsyncExitStack() as stack:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=2),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            stack.push_async_callback(session.close)
            for upstream in self.settings.upstream:
                listener = UpstreamListener(upstream, self.settings, self.registry, session, self.metrics)
                self.listeners[upstream.service] = await stack.enter_async_context(listener)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    def on_offline(self, service: str, instance_id: str) -> bool:
        """An offline notification: drop the instance from the table of its service."""
        listener = self.listeners.get(service)
        return listener.drop(instance_id) if listener else False

    def status(self) -> dict[str, Any]:
        return {name: listener.status() for name, listener in self.listeners.items()}
