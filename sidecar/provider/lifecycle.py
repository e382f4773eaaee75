"""The phase state machine: the online and the offline sequence, each written once, in order,
and between them what happens when the app is lost under a live sidecar.

    starting -> registering -> warming -> serving -> draining -> drained
       ^                                     |
       +------------- the app lost ----------+   (from registering and warming too)

`run()` runs as a task from start-up: the online sequence, and each time the app is lost, the
app-lost sequence and the online sequence again. `offline()` is what /shutdown, SIGTERM and
SIGINT call; it ends `run()`. It runs once: concurrent and later callers get the same result.
Registry failures never stop either sequence: they are recorded (for /status and metrics) and
retried with backoff, within the drain deadline when going offline (registry_calls).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, TypeVar

from registry_adapters import Instance, Registry, RegistryClosed, RegistryError
from sidecar.config import Settings
from sidecar.metrics import Metrics
from sidecar.protocol import metadata
from sidecar.protocol.notice import OfflineNotice
from sidecar.protocol.warmup import Warmup
from sidecar.provider.app_health import AppHealth, health_checks
from sidecar.provider.inflight import ConsumerBook, InflightTracker
from sidecar.provider.notify import Notifier
from sidecar.provider.registry_calls import RegistryCalls
from sidecar.provider.warming import Headers, Warming

log = logging.getLogger("sidecar.lifecycle")
T = TypeVar("T")

# A weight the registry failed to take is tried again this often once serving.
RESYNC_SECONDS = 5.0
# A drain whose instance the registry cannot take out never gets quiet: its consumers' caches
# stay stale and keep sending. The last fifth of --drain-timeout (5 s of the default 25) is then
# spent refusing new requests while those in flight finish, so that /shutdown answers, and the
# app is stopped, with nothing in flight.
FINISHING_SHARE = 0.2


@dataclass(frozen=True, slots=True)
class DrainResult:
    drained: bool
    inflight: int
    inflight_streams: int  # of `inflight`, the HTTP/2 streams (gRPC calls among them)
    seconds: float
    notified: int
    deregistered: bool  # an instance was taken out of the registry
    registered: bool  # there was one to take out: a register call had succeeded

    def body(self) -> dict[str, Any]:
        return asdict(self)


class Lifecycle:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        tracker: InflightTracker,
        consumers: ConsumerBook,
        notifier: Notifier,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self._registry = registry
        self._tracker = tracker
        self._consumers = consumers
        self._notifier = notifier
        self._metrics = metrics
        self.warmup = Warmup(settings.warmup, settings.warmup_curve, settings.warmup_min_percent)
        self.warming = Warming(settings, metrics)  # step 4, by the clock or by the app's latency
        self.phase = "starting"
        self.registered = False
        self.registry_calls = RegistryCalls(metrics)  # its last_error is /status's
        self.override: int | None = None
        self.refusing = False  # the drain has ended: requests are refused, not forwarded
        self.draining = asyncio.Event()  # set at step 1 of the offline sequence
        self.ended = asyncio.Event()  # set when the offline sequence has its result
        self.notified = asyncio.Event()  # set once step 3's notifications were answered or failed
        self.app = AppHealth(*health_checks(settings.app, settings.app_health))
        self._register_attempted = False  # a register call may have reached the registry
        self._registered_once = False  # a register call succeeded: the registry knows the instance
        self._registered_at = 0.0  # monotonic
        self._start_ms = 0
        # (weight, override, published p90 in ms) as the registry has them
        self._published: tuple[int, int | None, float | None] | None = None
        self._publish_lock = asyncio.Lock()
        self._online_task: asyncio.Task[None] | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._offline_task: asyncio.Task[DrainResult] | None = None
        metrics.set_phase(self.phase)

    # --- what other components read

    @property
    def provider(self) -> bool:
        """False for a consumer-only sidecar (no --listen): nothing to register."""
        return self.settings.advertise is not None

    @property
    def ready(self) -> bool:
        serving = self.phase in ("warming", "serving") and (self.registered or not self.provider)
        return serving and self.app.healthy

    @property
    def closing(self) -> bool:
        return self.phase in ("draining", "drained")

    def current_weight(self) -> int:
        if self.override is not None:
            return self.override
        if not self.registered:
            return 0
        return self.warming.weight(self.settings.weight, time.monotonic() - self._registered_at)

    def weight_marks(self) -> Headers:
        """The weight mark of a response (latency warmup mode; none while not registered)."""
        if not (self.registered and self.warming.latency_mode):
            return []  # the default mode pays nothing per response
        return self.warming.mark(self.current_weight())

    def since_registered(self) -> float:
        """Seconds since the registration (the warmup's t), 0 while not registered."""
        return time.monotonic() - self._registered_at if self.registered else 0.0

    # --- the online sequence

    async def __aenter__(self) -> Lifecycle:
        """Start the online sequence; leaving the block cancels whatever sequence still runs."""
        self._online_task = asyncio.create_task(self.run(), name="online")
        self._online_task.add_done_callback(_log_failure)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop_tasks()

    async def run(self) -> None:
        """Until the offline sequence cancels it: the online sequence, cut short whenever the
        health watch (which step 1 starts) has lost the app; then the app-lost sequence, and
        the online sequence again, warmup included: a restarted app is cold."""
        while True:
            self.app.lost.clear()
            online = asyncio.create_task(self.online(), name="online-sequence")
            online.add_done_callback(_log_failure)
            try:
                await self.app.lost.wait()
            finally:  # also when the offline sequence begins: the app's health no longer matters
                watch = [self._health_task] if self._health_task is not None else []
                for task in (online, *watch):
                    task.cancel()
                await asyncio.wait([online, *watch])
            await self.app_lost()

    async def online(self) -> None:
        # 1. Phase starting: poll the app's health URL until it answers 2xx.
        self._set_phase("starting")
        await self.app.wait_healthy()
        self._health_task = asyncio.create_task(self.app.watch(), name="app-health")
        self._health_task.add_done_callback(_log_failure)
        # 2. Phase registering: wait --register-delay.
        self._set_phase("registering")
        await asyncio.sleep(self.settings.register_delay)
        # 3. Register with the sidecar metadata (retried while the registry is down); ready.
        if self.provider:
            self.warming.restart()  # a new registration warms up anew: the app may be cold
            await self.registry_calls.retry("register", self._register_now)
            await self.publish_weight()  # an override set while starting (weight 0, say)
            log.info("online: %s registered as %s", self.settings.service, self.settings.instance_id)
        warming = self.warmup.window > 0 and self.provider
        self._set_phase("warming" if warming else "serving")
        # 4. Warmup: raise the registry weight in steps, by the clock or as the app's latency
        #    comes down, until it ends (--warmup at the latest); the full weight is in the
        #    registry before the phase says serving (a failed write is retried in step 5).
        if warming:
            await self.warming.warm(self._registry, self.publish_weight, self._registered_at)
            await self.publish_weight()
        self._set_phase("serving")
        # 5. From now on, retry any weight the registry failed to take (a PUT /weight during an
        #    outage, say); a no-op while the registry is in line.
        while self.provider:
            await self.publish_weight()
            await asyncio.sleep(RESYNC_SECONDS)

    async def _register_now(self) -> None:
        start_ms = int(time.time() * 1000)
        self._register_attempted = True
        instance, override = self._instance(start_ms), self.override
        await self._registry.register(instance)
        self._start_ms = start_ms
        self._registered_at = time.monotonic()
        self.registered = self._registered_once = True
        # What was sent, not self.override: a PUT /weight during the call is not in the registry
        # yet, and publish_weight (called next) sends it only if this says so.
        self._published = (instance.weight, override, self.warming.published_ms())
        self._metrics.weight.set(instance.weight)

    def _instance(self, start_ms: int) -> Instance:
        advertise = self.settings.advertise
        assert advertise is not None  # only providers register
        fields = metadata.published(
            start_ms, self.warmup, self.settings.weight, self.settings.advertise_admin, self.override,
            mode=self.settings.warmup_mode, latency_ms=self.warming.published_ms(),
        )  # fmt: skip
        # Registries such as Consul cannot publish weight 0 at registration: set_weight(0) follows.
        if self.override is None and not self.registered:
            weight = self.warming.weight(self.settings.weight, 0)  # registering now: t = 0
        else:
            weight = max(1, self.current_weight())
        return Instance(
            self.settings.service, self.settings.instance_id, advertise.host, advertise.port, weight, fields
        )

    async def set_override(self, weight: int | None) -> bool:
        """PUT/DELETE /weight: publish at once. Returns whether the registry has it now."""
        self.override = weight
        return await self.publish_weight()

    async def publish_weight(self) -> bool:
        """Bring the registry in line with the current weight and override; False if it failed."""
        async with self._publish_lock:
            if not self.registered or self.closing:
                return False
            self.warming.latency_to_publish()  # serving in latency mode: its p90, for warming peers
            wanted = (self.current_weight(), self.override, self.warming.published_ms())
            if wanted == self._published:
                return True
            try:
                if self._published is None or wanted[1:] != self._published[1:]:
                    await self._registry.register(self._instance(self._start_ms))  # the metadata changed
                await self._registry.set_weight(self.settings.instance_id, wanted[0])
            except RegistryClosed:
                raise  # as in RegistryCalls.retry: no later try can help
            except RegistryError as exc:
                self.registry_calls.failed("set_weight", exc)
                return False
            self._published = wanted
            self.registry_calls.succeeded("set_weight")
            self._metrics.weight.set(wanted[0])
            return True

    # --- the app lost under a live sidecar

    async def app_lost(self) -> None:
        """The app stopped answering: out of the registry's healthy set and the consumers'
        tables at once, as when going offline, but with no drain: nothing reaches the app (the
        inbound proxy refuses what arrives, which consumer sidecars retry elsewhere)."""
        # 1. Phase starting: /ready answers 503; no weight is published from now on (once a
        #    publish under way has ended: the lock).
        self._set_phase("starting")
        async with self._publish_lock:
            self.registered = False
        self._metrics.weight.set(0)
        log.warning("app lost: %s leaves the registry until the app answers", self.settings.instance_id)
        # 2. Registry: out of the healthy set (Consul: maintenance; etcd, ZooKeeper: the key or
        #    node removed; SQLite: the row marked offline), still kept alive; the next register
        #    call brings it back. Retried while the registry is down, before any such call.
        offline = partial(self._registry.set_offline, self.settings.instance_id)
        taking_out = (
            self.registry_calls.retry("set_offline", offline) if self._register_attempted else _done()
        )
        # 3. Notify every consumer that called recently, in parallel. Awaited: a notice that
        #    came after the next registration would drop the restarted instance.
        notice = OfflineNotice(self.settings.service, self.settings.instance_id, str(self.settings.advertise))
        _, sent = await asyncio.gather(taking_out, self._notifier.send_all(self._consumers.recent(), notice))
        self._count_notifications(sent)

    # --- the offline sequence

    async def offline(self) -> DrainResult:
        """Run the offline sequence once; every caller waits for, and gets, the same result."""
        if self._offline_task is None:
            self._offline_task = asyncio.create_task(self._offline(), name="offline-sequence")
        # Shielded: a caller that goes away (a /shutdown client hanging up) must not stop it.
        return await asyncio.shield(self._offline_task)

    async def _offline(self) -> DrainResult:
        started = time.monotonic()
        deadline = started + self.settings.drain_timeout
        settle_by = deadline - FINISHING_SHARE * self.settings.drain_timeout
        if self._online_task is not None and not self._online_task.done():
            self._online_task.cancel()
            await asyncio.wait([self._online_task])  # no register call may land after ours
        # 1. Phase draining: /ready answers 503, responses are marked closing.
        self._set_phase("draining")
        self.draining.set()
        log.info("offline: draining %s (%d in flight)", self.settings.instance_id, self._tracker.count)
        # 2. Registry: take the instance out, retried in the background until the drain deadline.
        #    (Nothing to take out if no register call was ever made. If none succeeded, the
        #    registry has most likely never seen it: the try goes on beside the drain, which
        #    does not wait for it, and ends with the drain.)
        deregistering = asyncio.create_task(self._deregister(deadline)) if self._register_attempted else None
        awaited = deregistering if self._registered_once else None
        # 3. Notify every consumer that called recently, in parallel.
        notice = OfflineNotice(self.settings.service, self.settings.instance_id, str(self.settings.advertise))
        notifying = asyncio.create_task(self._notifier.send_all(self._consumers.recent(), notice))
        notifying.add_done_callback(lambda _: self.notified.set())
        # 4. Keep serving what arrives: the inbound proxy marks those responses closing.
        try:
            # 5. Wait for the registry and the notifications, then until nothing is in flight and
            #    no request arrived for --quiet-period; by `settle_by`, which leaves the end of
            #    the drain to finish what is in flight (see FINISHING_SHARE).
            if await _within(self._settle(notifying, awaited, started), settle_by) is None:
                log.warning("offline: not settled in time, %d requests in flight", self._tracker.count)
            # 6. Phase drained: refuse whatever still arrives; answer /shutdown once what is in
            #    flight has finished, or at the drain deadline with what is left.
            self.refusing = True
            self._set_phase("drained")
            await _within(self._tracker.wait_idle(), deadline)
            inflight, streams = self._tracker.count, self._tracker.streams
        finally:  # also when a second signal cuts the sequence short
            for task in (notifying, deregistering):
                if task is not None and not task.done():
                    task.cancel()
        sent: list[bool] = notifying.result() if _succeeded(notifying) else []
        result = DrainResult(
            drained=inflight == 0,
            inflight=inflight,
            inflight_streams=streams,
            seconds=round(time.monotonic() - started, 3),
            notified=sum(sent),
            deregistered=deregistering is not None and _succeeded(deregistering) and deregistering.result(),
            registered=self._registered_once,
        )
        self._metrics.drain_seconds.set(result.seconds)
        self._count_notifications(sent)
        log.info("offline: %s", json.dumps(result.body()))
        self.ended.set()
        return result

    async def _settle(
        self, notifying: asyncio.Task[list[bool]], deregistering: asyncio.Task[bool] | None, since: float
    ) -> bool:
        """Step 5: the registry and the consumers first; the quiet period then also covers the
        requests that arrived meanwhile (consumers keep calling until the registry lets go)."""
        others = [asyncio.shield(task) for task in (notifying, deregistering) if task is not None]
        await asyncio.gather(*others, return_exceptions=True)
        await self._tracker.wait_quiet(self.settings.quiet_period, since)
        return True

    async def _deregister(self, deadline: float) -> bool:
        async def take_out() -> None:
            await self._registry.set_offline(self.settings.instance_id)
            await self._registry.deregister(self.settings.instance_id)

        if not await _within(self.registry_calls.retry("deregister", take_out), deadline):
            return False
        self.registered = False
        self._metrics.weight.set(0)
        return True

    async def stop_tasks(self) -> None:
        """On exit: cancel the sequences that still run, and wait for them to end."""
        sequences = (self._online_task, self._offline_task, self._health_task)
        tasks = [task for task in sequences if task and not task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # --- shared helpers

    def _count_notifications(self, sent: list[bool]) -> None:
        self._metrics.notifications.labels("ok").inc(sum(sent))
        self._metrics.notifications.labels("failed").inc(len(sent) - sum(sent))

    def _set_phase(self, phase: str) -> None:
        if phase != self.phase:
            log.info("phase %s -> %s", self.phase, phase)
        self.phase = phase
        self._metrics.set_phase(phase)


async def _within(awaitable: Awaitable[T], deadline: float) -> T | None:
    """`awaitable`'s result, or None if `deadline` (time.monotonic()) passes first."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            return await awaitable
    except TimeoutError:
        return None


async def _done() -> bool:
    return True


def _succeeded(task: asyncio.Task[Any]) -> bool:
    return task.done() and not task.cancelled() and task.exception() is None


def _log_failure(task: asyncio.Task[None]) -> None:
    """A background sequence that fails must say so (a bug: registry errors are retried)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s failed", task.get_name(), exc_info=exc)
