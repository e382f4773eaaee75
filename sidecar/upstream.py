"""Consumer side: one local listener per `--upstream NAME=HOST:PORT`, load-balancing to NAME.

The instance table of each service follows the registry's watch, and is corrected locally the
moment better information arrives: an offline notification (`POST /notify`) or a response
marked `X-Sidecar-Closing` drops an instance at once, a refused connection ejects it for a few
seconds. A registry outage keeps the last table: stale information beats none.

Retries are only for requests the provider never processed: a 503 with `X-Sidecar-Refused`, or
a connection that could not be made. A connection that broke after the request was sent is
retried only for idempotent methods. Every retry spends from a budget (see balancer.RetryBudget)
and goes to an instance not tried yet.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from contextlib import AsyncExitStack, aclosing
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from registry_adapters import Instance, Registry, RegistryError
from registry_adapters import base as meta
from sidecar.balancer import Candidate, RetryBudget, WeightSpec, pick, weight_spec
from sidecar.config import Settings, Upstream
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

# A refused connection usually means the instance is gone; the registry confirms within
# seconds, and an instance that was only restarting comes back after this.
EJECT_SECONDS = 5.0
# Request bodies up to this size are kept so that they can be sent again; larger ones stream
# and are retried only when they could not be sent at all.
REPLAYABLE_BODY_BYTES = 64 * 1024
WATCH_BACKOFF_MAX_SECONDS = 5.0
# Longer than a few provider heartbeats (Consul 3 s, SQLite 2 s): see UpstreamListener._apply.
EMPTY_AFTER_OUTAGE_GRACE_SECONDS = 10.0


Body = bytes | aiohttp.StreamReader | None


@dataclass(frozen=True, slots=True)
class Retry:
    reason: str  # for the retries metric
    otherwise: web.Response  # the answer if the budget allows no retry


@dataclass(slots=True)
class Member:
    instance: Instance
    inflight: int = 0
    ejected_until: float = 0.0
    spec: WeightSpec = field(init=False)  # parsed from the metadata when the instance changes

    def __post_init__(self) -> None:
        self.spec = weight_spec(self.instance.weight, self.instance.meta)

    def update(self, instance: Instance) -> None:
        if instance != self.instance:
            self.instance = instance
            self.spec = weight_spec(instance.weight, instance.meta)

    @property
    def start(self) -> str:
        return self.instance.meta.get(meta.META_START_MS, "")


class InstanceTable:
    """The instances of one service that may receive requests, as this consumer knows them."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.members: dict[str, Member] = {}
        self._dropped: dict[str, str] = {}  # instance id -> its sidecar_start_ms when dropped

    def update(self, instances: list[Instance]) -> None:
        """The registry's view. A dropped instance stays dropped until it registers anew."""
        fresh: dict[str, Member] = {}
        for instance in instances:
            member = self.members.get(instance.instance_id)
            if member is None:
                member = Member(instance)
            else:
                member.update(instance)  # same object: requests in flight hold it
            fresh[instance.instance_id] = member
        self.members = fresh
        for instance_id, start in list(self._dropped.items()):
            current = fresh.get(instance_id)
            if current is None or current.start != start:
                del self._dropped[instance_id]  # gone from the registry, or a new incarnation

    def drop(self, instance_id: str) -> bool:
        member = self.members.get(instance_id)
        if member is None or instance_id in self._dropped:
            return False
        self._dropped[instance_id] = member.start
        log.info("%s: dropped %s", self.service, instance_id)
        return True

    def eject(self, instance_id: str, now: float) -> None:
        member = self.members.get(instance_id)
        if member is not None:
            member.ejected_until = now + EJECT_SECONDS

    def usable(self) -> list[Member]:
        return [m for instance_id, m in self.members.items() if instance_id not in self._dropped]

    def choose(self, tried: set[str], rng: random.Random) -> Member | None:
        now, now_ms = time.monotonic(), int(time.time() * 1000)
        members = [m for m in self.usable() if m.instance.instance_id not in tried]
        healthy = [m for m in members if m.ejected_until <= now]
        # Only ejected instances left: try them rather than fail (they may be back already).
        pool = healthy or members
        index = pick(
            [Candidate(m.spec.at(now_ms), m.inflight) for m in pool],
            rng,
        )
        return None if index is None else pool[index]

    def snapshot(self) -> list[dict[str, Any]]:
        now, now_ms = time.monotonic(), int(time.time() * 1000)
        return [
            {
                "instance_id": instance_id,
                "address": m.instance.address,
                "weight": round(m.spec.at(now_ms), 2),
                "inflight": m.inflight,
                "dropped": instance_id in self._dropped,
                "ejected": m.ejected_until > now,
            }
            for instance_id, m in sorted(self.members.items())
        ]


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
        self.table = InstanceTable(upstream.service)
        self.budget = RetryBudget()
        self.watch_error: str | None = None
        self._rng = random.Random()
        self._watch_task: asyncio.Task[None] | None = None
        self._held: asyncio.TimerHandle | None = None  # an empty answer not applied yet
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> UpstreamListener:
        self._watch_task = asyncio.create_task(self._watch(), name=f"watch-{self.service}")
        app = web.Application(client_max_size=0)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        try:
            self._runner = await start_server(app, self.upstream.listen, f"--upstream {self.service}=")
        except BaseException:
            self._watch_task.cancel()
            raise
        log.info("upstream %s on %s", self.service, self.upstream.listen)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._held is not None:
            self._held.cancel()
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.wait([self._watch_task])

    async def _watch(self) -> None:
        pause = 0.2
        while True:
            try:
                async with aclosing(self.registry.watch(self.service)) as watch:
                    async for instances in watch:
                        self._apply(instances, after_outage=self.watch_error is not None)
                        self.watch_error, pause = None, 0.2
            except Exception as exc:  # whatever the registry did, the last table stays and we retry
                if self.watch_error is None:
                    log.warning("watch of %s failed, keeping the last table: %s", self.service, exc,
                                exc_info=not isinstance(exc, RegistryError))  # fmt: skip
                self.watch_error = str(exc) or exc.__class__.__name__
                self.metrics.registry_errors.labels("watch").inc()
            await asyncio.sleep(pause)
            pause = min(pause * 2, WATCH_BACKOFF_MAX_SECONDS)

    def _apply(self, instances: list[Instance], after_outage: bool = False) -> None:
        if self._held is not None:
            self._held.cancel()
            self._held = None
        if after_outage and not instances and self.table.members:
            # A registry back from an outage with nothing in it may have lost its state (a Consul
            # dev agent restarted): providers re-register within a heartbeat or two. Until then,
            # stale beats none; if nothing comes back, the empty answer stands after the grace.
            log.warning("%s: registry came back empty; keeping the last table for now", self.service)
            self._held = asyncio.get_running_loop().call_later(
                EMPTY_AFTER_OUTAGE_GRACE_SECONDS, self._apply, []
            )
            return
        self.table.update(instances)
        self.metrics.upstream_instances.labels(self.service).set(len(self.table.usable()))

    def drop(self, instance_id: str) -> bool:
        dropped = self.table.drop(instance_id)
        self.metrics.upstream_instances.labels(self.service).set(len(self.table.usable()))
        return dropped

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
            "last_error": self.watch_error,
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
