"""The warmup of each registration, in either `--warmup-mode`: step 4 of the online sequence.

- `time` (the default): the weight follows the clock curve of sidecar.protocol.warmup over
  `--warmup`; the registry weight is raised in steps, and consumer sidecars compute the smooth
  curve themselves from the metadata.
- `latency`: the weight follows the app's latency (the policy, pure: sidecar.provider.ramp),
  measured here on every request the inbound proxy forwards (`record`), compared with the p90
  the service's serving peers publish in their metadata (a watch of the service's instances
  while warming), and `--warmup` is only its upper bound. Each response carries the weight
  (`X-Sidecar-Weight`, `mark`), which consumer sidecars follow at once; the registry weight
  follows each change, at most once a second, for consumers without a sidecar. Once serving,
  the instance publishes its own p90 for the peers that warm up after it, rarely
  (`latency_to_publish`).

Waits are on events: a window of requests that changes the weight wakes the publisher; nothing
polls the ramp.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from typing import Any

from registry_adapters import Registry, RegistryClosed
from sidecar.config import Settings
from sidecar.metrics import Metrics
from sidecar.protocol import headers as wire
from sidecar.protocol import metadata
from sidecar.protocol.warmup import MIN_STEP_SECONDS, Warmup
from sidecar.provider import ramp as policy

log = logging.getLogger("sidecar.warmup")

# A serving instance's p90 is that of its last this many requests: a few seconds of a busy
# service, and enough for a p90 that one slow request does not move. It is published once half
# of them were served after the warmup: none of the cold ones count.
RECENT_REQUESTS = 200
PUBLISHED_AFTER = RECENT_REQUESTS // 2
# A watch of the peers that fails is started again after this (the ramp keeps its reference).
PEERS_RETRY_SECONDS = 1.0

Headers = list[tuple[bytes, bytes]]


class Warming:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.clock = Warmup(settings.warmup, settings.warmup_curve, settings.warmup_min_percent)
        self.latency_mode = settings.warmup_mode == "latency" and settings.warmup > 0
        self.ramp = policy.start(settings.warmup_min_percent, settings.warmup_min_requests)
        self.ended: str | None = None  # why the last warmup ended: ramp.SETTLED or ramp.RAN_OUT
        self.changed = asyncio.Event()  # the ramp's weight changed (a window, or its end)
        self.reference: float | None = None  # the warm peers' p90, seconds
        self.peers = 0  # serving peers that published a p90
        self.measured: float | None = None  # the app's p90, seconds: the last window while warming
        self._window: list[float] = []
        self._window_start = 0.0  # monotonic: the window's first request
        self._recent: deque[float] = deque(maxlen=RECENT_REQUESTS)
        self._ended_at = 0.0  # monotonic
        self._published: float | None = None  # the p90 in this registration's metadata, seconds
        self._published_at = 0.0
        self._marks: dict[int, Headers] = {}
        metrics.warmup_mode.labels(settings.warmup_mode).set(1)

    def restart(self) -> None:
        """A registration (the first, or one after the app was lost): a new warmup, a cold app."""
        self.ramp = policy.start(self.settings.warmup_min_percent, self.settings.warmup_min_requests)
        self.ended = None
        self.measured = None
        self._window.clear()
        self._recent.clear()
        self._published = None
        self.changed.clear()

    # --- what the inbound proxy and the lifecycle ask, per request or per weight

    def record(self, seconds: float) -> None:
        """The app's latency for one forwarded request (to its response head)."""
        if not self.latency_mode:
            return
        self._recent.append(seconds)
        if self.ramp.full:
            return
        window = self._window
        if not window:
            self._window_start = time.monotonic()
        window.append(seconds)
        # Closed as requests come, not by a timer: a window without requests stays open.
        if not policy.window_closes(len(window), time.monotonic() - self._window_start):
            return
        measured = policy.measure(window)
        self.measured = measured.p90
        self.metrics.app_latency.set(measured.p90)
        before = self.ramp
        self.ramp = policy.after_window(before, measured, self.reference)
        window.clear()
        if self.ramp.share != before.share:
            self.changed.set()
        if self.ramp.ended is not None:
            self._end(self.ramp.ended)

    def weight(self, base: int, elapsed: float) -> int:
        """The weight `elapsed` seconds after the registration."""
        if self.latency_mode:
            return policy.weight(self.ramp, base)
        return self.clock.weight(base, elapsed)

    def mark(self, weight: int) -> Headers:
        """What a response carries: the weight, in latency mode (consumers follow it at once)."""
        if not self.latency_mode:
            return []
        marks = self._marks.get(weight)
        if marks is None:
            marks = self._marks[weight] = [(wire.WEIGHT_NAME, str(weight).encode())]
        return marks

    # --- step 4 of the online sequence

    async def warm(self, registry: Registry, publish: Callable[[], Awaitable[bool]], since: float) -> None:
        """Until the warmup ends, keep the registry weight in line with it: the clock's steps, or
        each change of the latency ramp, at most one write a second. `since`: the registration's
        monotonic time; the window counts from it."""
        window = self.clock.window
        if not self.latency_mode:
            while (elapsed := time.monotonic() - since) < window:
                await publish()
                await asyncio.sleep(min(self.clock.step_seconds(), window - elapsed))
            self._end(policy.RAN_OUT)
            return
        deadline = since + window
        peers = asyncio.create_task(self._follow_peers(registry), name="warmup-peers")
        try:
            while not self.ramp.full:
                self.changed.clear()
                await publish()
                wrote = time.monotonic()
                try:
                    async with asyncio.timeout(max(0.0, deadline - wrote)):
                        await self.changed.wait()
                except TimeoutError:
                    break
                # Registries are not built for frequent writes: one a second at most.
                await asyncio.sleep(max(0.0, min(wrote + MIN_STEP_SECONDS, deadline) - time.monotonic()))
        finally:
            peers.cancel()
            await asyncio.wait([peers])  # without raising its cancellation as this task's own
        if not self.ramp.full:
            self.ramp = policy.run_out(self.ramp)
            self._end(policy.RAN_OUT)

    def _end(self, reason: str) -> None:
        self.ended = reason
        self._ended_at = time.monotonic()
        self._recent.clear()  # what a warming app answered is no warm level
        self.metrics.warmup_ended.labels(reason).inc()
        if self.latency_mode:
            log.info(
                "warmup over (%s) after %d requests: p90 %s, warm peers' p90 %s",
                reason, self.ramp.served, _ms(self.measured), _ms(self.reference),
            )  # fmt: skip

    async def _follow_peers(self, registry: Registry) -> None:
        """The warm level, from the p90s the service's serving peers publish, as they change."""
        own = self.settings.instance_id
        while True:
            try:
                async with aclosing(registry.watch(self.settings.service)) as watch:
                    async for instances in watch:
                        found = [metadata.peer_latency(i.meta) for i in instances if i.instance_id != own]
                        latencies = [latency for latency in found if latency is not None]
                        self.peers, self.reference = len(latencies), policy.reference_of(latencies)
                        self.metrics.warmup_reference.set(self.reference or 0.0)
            except RegistryClosed:
                return
            except Exception as exc:  # whatever the registry did, keep the last reference
                log.info("watching the warm peers of %s failed: %s", self.settings.service, exc)
            await asyncio.sleep(PEERS_RETRY_SECONDS)

    # --- once serving: the instance's own p90, for the peers that warm up after it

    def latency_to_publish(self) -> float | None:
        """The p90 (seconds) this registration's metadata should carry: none while warming, nor
        for a minute after a warmup that ran out (the app may still be cold: it would lower its
        peers' warm level); then the last RECENT_REQUESTS' p90, published again only when it
        moved (policy.should_publish)."""
        if not self.latency_mode or self.ended is None or len(self._recent) < PUBLISHED_AFTER:
            return self._published
        now = time.monotonic()
        if self.ended == policy.RAN_OUT and now - self._ended_at < policy.REPUBLISH_SECONDS:
            return self._published
        measured = policy.measure(self._recent).p90
        self.measured = measured
        self.metrics.app_latency.set(measured)
        if policy.should_publish(self._published, measured, now - self._published_at):
            self._published, self._published_at = measured, now
        return self._published

    def published_ms(self) -> float | None:
        return None if self._published is None else self._published * 1000

    def report(self, elapsed: float, active: bool) -> dict[str, Any]:
        """The warmup in /weight and /status: the mode, the measured latency, why it ended."""
        return {
            "mode": self.settings.warmup_mode,
            "window_s": self.clock.window,
            "curve": self.clock.curve,
            "min_percent": self.clock.min_percent,
            "min_requests": self.settings.warmup_min_requests,
            "elapsed_s": round(elapsed, 3),
            "active": active and self.ended is None,
            "served": self.ramp.served + len(self._window) if self.latency_mode else None,
            "latency_p90_ms": _rounded_ms(self.measured),
            "reference_p90_ms": _rounded_ms(self.reference),
            "peers": self.peers,
            "published_p90_ms": _rounded_ms(self._published),
            "ended": self.ended,
        }


def _ms(seconds: float | None) -> str:
    return "unknown" if seconds is None else f"{seconds * 1000:.1f} ms"


def _rounded_ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)
