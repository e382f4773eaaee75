"""Consumer side policy: one local listener per `--upstream NAME=HOST:PORT`, load-balancing to NAME.

Each listener picks from a `WatchedTable` (sidecar.consumer.instances): the registry's view, corrected
locally by what this listener learns (a closing mark drops an instance; a refused connection,
or silence past --upstream-timeout, ejects it for a few seconds).

Each request, and each HTTP/2 stream (each gRPC call of a client's one connection), is balanced
on its own; an HTTP/2 client's streams go on as HTTP/2 to a provider whose metadata says it takes
it, over a few multiplexed connections (sidecar.http.h2c.client), and as HTTP/1.1 otherwise.

Retries are only for requests the provider never processed: a 503 with `X-Sidecar-Refused`, an
HTTP/2 stream refused (REFUSED_STREAM, or above the provider's GOAWAY), or a connection that
could not be made. A connection that broke after the request was sent is retried only for
idempotent methods (the forwarding policy, sidecar.http.failures, shared with the provider
side, says which). Every retry spends from a budget (see balancer.RetryBudget)
and goes to an instance not tried yet. The bytes are the HTTP core's business (sidecar.http).

An upstream without an instance answers 503 naming the registry it reads and the services that
registry has (sidecar.consumer.listing), and says so in the log once, not per request: again only
after a request has found an instance since.

Memory is bounded: at most `CONNECTIONS_PER_INSTANCE` connections to each instance (further
requests wait for one), and per request at most `REPLAYABLE_BODY_BYTES` of request body kept for
a retry, plus the transports' 64 KiB write buffers on each side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from registry_adapters import Registry
from sidecar.config import Settings, Upstream
from sidecar.consumer.balancer import RetryBudget
from sidecar.consumer.instances import WatchedTable
from sidecar.consumer.listing import ServiceListing
from sidecar.consumer.members import Member
from sidecar.errors import UpstreamError
from sidecar.http import AnyExchange, Failure, HttpServer, Limits, Pool, classify, refused
from sidecar.metrics import Metrics
from sidecar.protocol import headers as wire

log = logging.getLogger("sidecar.upstream")

# Request bodies up to this size are kept so that they can be sent again; larger ones stream
# and are retried only when they could not be sent at all.
REPLAYABLE_BODY_BYTES = 64 * 1024
# Per provider instance: a local app rarely needs more in parallel; beyond it requests queue
# here rather than open sockets without bound (memory: see the module's docstring).
CONNECTIONS_PER_INSTANCE = 256
CONNECT_TIMEOUT_SECONDS = 2.0
# Failures that take an instance out of the picking for a few seconds: it could not be connected
# to, or it went silent past --upstream-timeout (a frozen process, a hung host). Either way the
# next requests are better sent elsewhere until the registry says more.
EJECTED = frozenset({"connect", "timeout"})
# A request that arrives before the registry's first answer (a sidecar that has just started)
# waits for it, rather than fail for want of an instance: it takes milliseconds when the
# registry is up, and a registry that fails answers at once too (see WatchedTable.answered).
FIRST_ANSWER_WAIT_SECONDS = 5.0
# The consumer header is this sidecar's own (Host is the instance's address).
DROPPED = frozenset({wire.CONSUMER})


@dataclass(frozen=True, slots=True)
class Retry:
    """A try that failed in a way another instance may be tried for."""

    failure: Failure  # its reason labels the retries metric; its status answers if none may
    message: str


class UpstreamListener:
    """The local listener of one upstream service, and the watch that feeds its table."""

    def __init__(
        self, upstream: Upstream, settings: Settings, registry: Registry, pool: Pool, metrics: Metrics
    ) -> None:
        self.upstream = upstream
        self.service = upstream.service
        self.consumer_header = (wire.CONSUMER_NAME, settings.advertise_admin.encode())
        self.pool = pool
        self.metrics = metrics
        self.watched = WatchedTable(upstream.service, registry, metrics)
        self.table = self.watched.table
        self.listing = ServiceListing(registry, upstream.service)
        self._lacking = False  # the log said there is no instance, and no request found one since
        self.budget = RetryBudget()
        self._rng = random.Random()
        limits = Limits(settings.header_timeout, settings.idle_timeout, settings.body_timeout)
        self.server = HttpServer(upstream.listen, self.handle, limits, f"--upstream {self.service}=")
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> UpstreamListener:
        async with AsyncExitStack() as stack:
            await stack.enter_async_context(self.watched)
            await stack.enter_async_context(self.listing)
            await stack.enter_async_context(self.server)
            self._stack = stack.pop_all()
        log.info("upstream %s on %s", self.service, self.upstream.listen)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    def drop(self, instance_id: str) -> bool:
        return self.watched.drop(instance_id)

    async def handle(self, exchange: AnyExchange) -> None:
        await self._handle(exchange)
        self.metrics.count_upstream_request(self.service, exchange.status)

    async def _handle(self, exchange: AnyExchange) -> None:
        self.budget.on_request(time.monotonic())
        if not self.watched.answered.is_set():
            # asyncio.timeout, not wait_for: see InflightTracker.wait_quiet.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FIRST_ANSWER_WAIT_SECONDS):
                    await self.watched.answered.wait()
        body = await exchange.read_body(REPLAYABLE_BODY_BYTES)  # None: too large to keep, streams
        tried: set[str] = set()
        retry: Retry | None = None
        while (member := self.table.choose(tried, self._rng)) is not None:
            self._lacking = False
            tried.add(member.instance.instance_id)
            member.inflight += 1
            try:
                retry = await self._attempt(exchange, member, body)
            finally:
                member.inflight -= 1
            if retry is None:
                return
            if not self._may_retry(retry.failure.reason):
                return _answer(exchange, retry.failure.status, retry.message, tried)
        if exchange.http2 and retry is not None and retry.failure.reason == "refused":
            # The last instance refused it unprocessed too: so does this sidecar, with
            # REFUSED_STREAM, which an HTTP/2 client (gRPC's above all) tries again by itself.
            return exchange.refuse({"error": retry.message, "tried": sorted(tried)}, [])
        if tried:  # every instance was tried: their failures are the news, not the registry
            return _answer(exchange, 503, f"no instance of {self.service} available", tried)
        await self._no_instance(exchange)

    async def _no_instance(self, exchange: AnyExchange) -> None:
        """503 naming the registry and its services; the log says it once, not per request."""
        told = await self.listing.told()
        if not self._lacking:
            self._lacking = True
            if "services" in told:
                names = ", ".join(told["services"])
                has = f"whose services are: {names}" if names else "which has no service at all"
            else:
                has = f"whose services could not be listed: {told['services_error']}"
            log.warning(
                "no instance of %s in %s, %s; answering 503 until one is there",
                self.service, told["registry"], has,
            )  # fmt: skip
        body = {"error": f"no instance of {self.service} available", "tried": [], **told}
        exchange.respond_json(503, body)

    async def _attempt(self, exchange: AnyExchange, member: Member, body: bytes | None) -> Retry | None:
        """One try on one instance: None once a response was relayed, or why another instance may
        be tried (and what to answer if none may)."""
        instance = member.instance
        request = exchange.head
        headers = [*request.end_to_end(DROPPED), self.consumer_header]
        replayable = body is not None  # kept whole; a streamed body is used up once sent
        # HTTP/2 to a provider sidecar that takes it, when the client speaks it (gRPC); else
        # HTTP/1.1, which every provider takes.
        origin = member.origins[exchange.http2]
        try:
            response = await exchange.forward(self.pool, origin, member.authority, headers, body)
        except UpstreamError as exc:
            failure = classify(exc, request.method, replayable)
            # Not for a refused HTTP/2 stream: REFUSED_STREAM may only mean "not now" (its
            # concurrent streams are all taken); a draining provider is dropped by its notice.
            if failure.reason in EJECTED:
                self.table.eject(instance.instance_id, time.monotonic())
            if failure.reason == "connect":
                message = f"cannot connect to {instance.address}"
            else:
                message = f"{instance.address} failed: {exc}"
            if failure.resendable:
                return Retry(failure, message)
            if failure.reason == "refused":  # not processed, but its body is gone: the client's
                refusal = [(wire.REFUSED_NAME, instance.instance_id.encode())]
                exchange.refuse({"error": message, "tried": [instance.instance_id]}, refusal)
                return None
            _answer(exchange, failure.status, message)
            return None
        self.table.follow_weight(instance.instance_id, response.header(wire.WEIGHT))  # latency warmup
        # A refusal is a 503 (an app's own headers never get past its provider sidecar, but a
        # mark on another status is no refusal whoever set it).
        if response.status == 503 and response.header(wire.REFUSED) is not None:
            # Refused while closing: the instance is leaving. Refused otherwise: its app is not
            # reachable (starting, crashed); try it again in a few seconds.
            if response.header(wire.CLOSING) is not None:
                self.drop(instance.instance_id)
            else:
                self.table.eject(instance.instance_id, time.monotonic())
            failure = refused(replayable)
            if failure.resendable:
                response.close()
                return Retry(failure, f"{instance.instance_id} refused the request")
            # Not resendable: the refusal itself is relayed, the client learns it was not processed.
        elif response.header(wire.CLOSING) is not None:
            self.drop(instance.instance_id)
        try:
            await exchange.relay(response, [], close=False)
        except UpstreamError as exc:
            failure = classify(exc, request.method, replayable, responded=True)
            if failure.reason in EJECTED:
                self.table.eject(instance.instance_id, time.monotonic())
            if not exchange.started:
                _answer(exchange, failure.status, f"{instance.address} failed: {exc}")
            log.info("response of %s cut short: %s", instance.instance_id, exc)
        return None

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


def _answer(exchange: AnyExchange, status: int, message: str, tried: set[str] | None = None) -> None:
    exchange.respond_json(status, {"error": message, "tried": sorted(tried or ())})


class Upstreams:
    """All upstream listeners of this sidecar, as one async context manager."""

    def __init__(self, settings: Settings, registry: Registry, metrics: Metrics) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = metrics
        self.listeners: dict[str, UpstreamListener] = {}
        self.pool = Pool(CONNECTIONS_PER_INSTANCE, CONNECT_TIMEOUT_SECONDS, settings.upstream_timeout)
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> Upstreams:
        async with AsyncExitStack() as stack:
            stack.callback(self.pool.close)
            for upstream in self.settings.upstream:
                listener = UpstreamListener(upstream, self.settings, self.registry, self.pool, self.metrics)
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
