"""Consumer side: the instance table of one upstream service, and the registry watch that feeds it.

The table follows the registry's watch and is corrected locally the moment better information
arrives: an offline notification or a response marked `X-Sidecar-Closing` drops an instance at
once, a refused connection ejects it for a few seconds. A registry outage keeps the last table:
stale information beats none.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from registry_adapters import Instance, Registry, RegistryError
from sidecar.consumer.balancer import Candidate, draw_p2c, pick
from sidecar.metrics import Metrics
from sidecar.protocol import metadata as meta
from sidecar.protocol.metadata import WeightSpec, weight_spec

log = logging.getLogger("sidecar.instances")

# A refused connection usually means the instance is gone; the registry confirms within
# seconds, and an instance that was only restarting comes back after this.
EJECT_SECONDS = 5.0
WATCH_BACKOFF_MAX_SECONDS = 5.0
# Longer than a few provider heartbeats (Consul 3 s, SQLite 2 s): see WatchedTable._apply.
EMPTY_AFTER_OUTAGE_GRACE_SECONDS = 10.0
# Picks draw from weights computed in advance (a pick must not scan a table of thousands). A
# warming instance's weight changes with time, so while one warms they are computed again at
# most this often: a 100 ms step on a curve of seconds does not show in the shares.
WEIGHTS_REFRESH_MS = 100


def _now_ms() -> int:
    """Wall-clock milliseconds: warmups count from the provider's sidecar_start_ms."""
    return int(time.time() * 1000)


@dataclass(slots=True)
class Member:
    instance: Instance
    inflight: int = 0
    ejected_until: float = 0.0
    spec: WeightSpec = field(init=False)  # parsed from the metadata when the instance changes
    warned: bool = field(init=False, default=False)  # about invalid metadata: once per instance

    def __post_init__(self) -> None:
        self._parse()

    def update(self, instance: Instance) -> None:
        if instance != self.instance:
            self.instance = instance
            self._parse()

    def _parse(self) -> None:
        self.spec = weight_spec(self.instance.weight, self.instance.meta)
        if self.spec.invalid is not None and not self.warned:
            self.warned = True
            log.warning(
                "%s: instance %s has invalid sidecar metadata (%s); using its registry weight %g",
                self.instance.service, self.instance.instance_id, self.spec.invalid, self.spec.base,
            )  # fmt: skip

    @property
    def instance_id(self) -> str:
        return self.instance.instance_id

    @property
    def start(self) -> str:
        return self.instance.meta.get(meta.META_START_MS, "")


class InstanceTable:
    """The instances of one service that may receive requests, as this consumer knows them."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.members: dict[str, Member] = {}
        self._dropped: dict[str, str] = {}  # instance id -> its sidecar_start_ms when dropped
        # What picks draw from: the usable members, their weights and the running sums of those.
        self._pool: list[Member] = []
        self._weights: list[float] = []
        self._cumulative: list[float] = []
        self._built_ms: int | None = None  # None: the table changed, build again at the next pick
        self._settled_ms = 0  # no weight changes with time after this

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
        self._built_ms = None
        for instance_id, start in list(self._dropped.items()):
            current = fresh.get(instance_id)
            if current is None or current.start != start:
                del self._dropped[instance_id]  # gone from the registry, or a new incarnation

    def drop(self, instance_id: str) -> bool:
        member = self.members.get(instance_id)
        if member is None or instance_id in self._dropped:
            return False
        self._dropped[instance_id] = member.start
        self._built_ms = None
        log.info("%s: dropped %s", self.service, instance_id)
        return True

    def eject(self, instance_id: str, now: float) -> None:
        member = self.members.get(instance_id)
        if member is not None:
            member.ejected_until = now + EJECT_SECONDS

    def usable(self) -> list[Member]:
        return [m for instance_id, m in self.members.items() if instance_id not in self._dropped]

    def choose(self, tried: set[str], rng: random.Random) -> Member | None:
        """Weighted P2C among the usable instances not in `tried`, healthy ones first."""
        now, now_ms = time.monotonic(), _now_ms()
        if self._built_ms is None or (
            self._built_ms < self._settled_ms and now_ms - self._built_ms >= WEIGHTS_REFRESH_MS
        ):
            self._build(now_ms)
        pool, weights = self._pool, self._weights

        def fits(index: int) -> bool:
            member = pool[index]
            return weights[index] > 0 and member.ejected_until <= now and member.instance_id not in tried

        index = draw_p2c(self._cumulative, fits, lambda index: pool[index].inflight / weights[index], rng)
        return pool[index] if index is not None else self._scan(tried, rng, now, now_ms)

    def _build(self, now_ms: int) -> None:
        self._pool = self.usable()
        self._weights = [member.spec.at(now_ms) for member in self._pool]
        self._cumulative = list(itertools.accumulate(self._weights))
        self._settled_ms = max((member.spec.settled_ms for member in self._pool), default=0)
        self._built_ms = now_ms

    def _scan(self, tried: set[str], rng: random.Random, now: float, now_ms: int) -> Member | None:
        """The exact rule, by a scan: for when draws keep missing (most instances tried or
        ejected) or no weight is positive."""
        members = [m for m in self.usable() if m.instance_id not in tried]
        healthy = [m for m in members if m.ejected_until <= now]
        # Only ejected instances left: try them rather than fail (they may be back already).
        pool = healthy or members
        index = pick([Candidate(m.spec.at(now_ms), m.inflight) for m in pool], rng)
        return None if index is None else pool[index]

    def snapshot(self) -> list[dict[str, Any]]:
        now, now_ms = time.monotonic(), _now_ms()
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


class WatchedTable:
    """Async context manager: while inside, the registry's watch of `service` feeds `table`."""

    def __init__(self, service: str, registry: Registry, metrics: Metrics) -> None:
        self.service = service
        self.registry = registry
        self.metrics = metrics
        self.table = InstanceTable(service)
        self.watch_error: str | None = None
        # Set once the registry answered (or failed) the first time: until then an empty table
        # only means that the answer is on its way.
        self.answered = asyncio.Event()
        self._watch_task: asyncio.Task[None] | None = None
        self._held: asyncio.TimerHandle | None = None  # an empty answer not applied yet

    async def __aenter__(self) -> WatchedTable:
        self._watch_task = asyncio.create_task(self._watch(), name=f"watch-{self.service}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
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
                self.answered.set()  # nothing is coming soon: requests need not wait for it
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
        self.answered.set()
        self.metrics.upstream_instances.labels(self.service).set(len(self.table.usable()))

    def drop(self, instance_id: str) -> bool:
        dropped = self.table.drop(instance_id)
        self.metrics.upstream_instances.labels(self.service).set(len(self.table.usable()))
        return dropped
