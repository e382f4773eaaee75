"""Consumer side: the instance table of one upstream service, and the registry watch that feeds it.

The table follows the registry's watch and is corrected locally the moment better information
arrives: an offline notification or a response marked `X-Sidecar-Closing` drops an instance at
once, a refused connection ejects it for a few seconds. A registry outage keeps the last table:
stale information beats none.

A registry that stalls does worse than fall silent: as it resumes it may drop every instance at
once (a stalled etcd expires every lease, a wall-clock step expires every SQLite row, a Consul
agent back from a restart has forgotten its services), while the providers are well and publish
themselves again within a renewal. So the registry's answer is held back when it would take
the table from some instances to none, or drop most of it at once (`looks_like_stall`), and
none of the instances it drops said it was leaving: those stay in the table until the registry
lists them again, or lists as many others, or they announce their departure, for at most
HOLD_SECONDS. Instances that announced their departure (an offline notice, a closing mark) leave
at once, hold or not: a scale-down drains, and draining announces.

Warmup ages are reckoned on this consumer's monotonic clock from when it first saw an instance
(sidecar.consumer.members; sidecar.protocol.warmup says why not by the provider's wall clock).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from contextlib import aclosing
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from registry_adapters import Instance, Registry, RegistryError
from sidecar.consumer.balancer import STEERED, Candidate, draw_p2c, looks_like_stall, pick
from sidecar.consumer.members import Member, start_of
from sidecar.metrics import Metrics

log = logging.getLogger("sidecar.instances")

# A refused connection usually means the instance is gone; the registry confirms within
# seconds, and an instance that was only restarting comes back after this.
EJECT_SECONDS = 5.0
WATCH_BACKOFF_MAX_SECONDS = 5.0
# The bound of a hold (see the module's docstring). A provider that is alive publishes itself
# again within one renewal of its keep-alive once its registry answers (SQLite 2 s, Consul 3 s,
# etcd TTL/3: 3.3 s by default, ZooKeeper at reconnection); this covers that several times over,
# and etcd TTLs up to a minute. Instances that really died without a word cost a refused
# connection and a retry each every EJECT_SECONDS until then.
HOLD_SECONDS = 20.0
# A hold is reported (logged, counted) once it has lasted this long, or when it ends otherwise
# than by the offline notices of all it held: a scale-down's registry removals may reach a
# consumer a few milliseconds before the providers' notices (sent at the same moment, in
# parallel), and a hold that those notices end at once is no news.
HOLD_REPORT_SECONDS = 1.0
# Departures this close together count as one ("at once"): a registry delivers what it expired
# while stalled within a second or two of resuming (etcd revokes up to 1,000 leases a second).
STALL_WINDOW_SECONDS = 5.0
# An instance that left is remembered this long: if it comes back, with the same registration,
# its warmup goes on where it was instead of starting again.
REMEMBER_SECONDS = 60.0
# Picks draw from weights computed in advance (a pick must not scan a table of thousands). A
# warming instance's weight changes with time, so while one warms they are computed again at
# most this often: a 100 ms step on a curve of seconds does not show in the shares.
WEIGHTS_REFRESH_MS = 100


def _now_ms() -> int:
    """This consumer's monotonic clock, in milliseconds: warmups and holds are timed on it."""
    return int(time.monotonic() * 1000)


def _wall_ms() -> int:
    """Wall-clock milliseconds: only to read a provider's claimed age from its sidecar_start_ms."""
    return int(time.time() * 1000)


@dataclass(slots=True)
class Departed:
    """An instance the registry stopped listing without it saying it was leaving."""

    member: Member
    at_ms: int
    counts: bool = True  # toward a stall; False once the table accepted its departure


class InstanceTable:
    """The instances of one service that may receive requests, as this consumer knows them."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.members: dict[str, Member] = {}  # what the registry lists, and what a hold keeps
        self._listed: dict[str, Member] = {}  # what the registry's last answer listed
        self._dropped: dict[str, str] = {}  # instance id -> its sidecar_start_ms when dropped
        self._departed: dict[str, Departed] = {}
        self.hold_until_ms: int | None = None  # while a hold keeps departed instances
        self.hold_ended = ""  # how the last hold ended
        self.hold_size = (0, 0)  # the current or last hold at its largest: instances held, of how many
        self.hold_was_departure = False  # the last hold ended by the notices of all it held
        self._came_back = False  # the current hold: an instance it held was listed again
        # What picks draw from: the usable members, their weights and the running sums of those.
        self._pool: list[Member] = []
        self._weights: list[float] = []
        self._steered: list[bool] = []  # its provider steers its share: picked by weight alone
        self._cumulative: list[float] = []
        self._built_ms: int | None = None  # None: the table changed, build again at the next pick
        self._settled_ms = 0  # no weight changes with time after this

    def update(self, instances: list[Instance], live: bool = False) -> None:
        """The registry's view. `live`: an answer of a watch that was following the registry
        (not its first answer, nor the first after an error), so new instances in it have just
        registered. A dropped instance stays dropped until it registers anew."""
        now_ms, wall_ms = _now_ms(), _wall_ms()
        listed: dict[str, Member] = {}
        for instance in instances:
            instance_id = instance.instance_id
            departed = self._departed.pop(instance_id, None)
            self._came_back |= departed is not None and departed.counts
            # Back after the registry dropped it (held or not), with the same registration: its
            # warmup goes on, and the weight it had then is old news, not a step seen live.
            returning = departed is not None and departed.member.start == start_of(instance)
            member = self.members.get(instance_id)
            if member is None and departed is not None and returning:
                member = departed.member
            if member is None:
                member = Member(instance)
                member.reckon(now_ms, wall_ms, live)
            else:  # the same object: requests in flight hold it
                member.follow(instance, now_ms, wall_ms, live and not returning)
            listed[instance_id] = member
        for instance_id, member in self._listed.items():
            if instance_id not in listed and instance_id not in self._dropped:
                self._departed[instance_id] = Departed(member, now_ms)
        self._listed = listed
        for instance_id, start in list(self._dropped.items()):
            current = listed.get(instance_id)
            if current is None or current.start != start:
                del self._dropped[instance_id]  # gone from the registry, or a new incarnation
        self.settle(now_ms)

    def settle(self, now_ms: int) -> None:
        """Decide what the table holds: what the registry lists, plus, while a hold lasts (see
        the module's docstring), the instances that left it without a word."""
        if self.hold_until_ms is not None and now_ms >= self.hold_until_ms:
            self._end_hold(f"not listed again within {HOLD_SECONDS:g} s: they are gone")
        for instance_id, departed in list(self._departed.items()):
            age_ms = now_ms - departed.at_ms
            if age_ms > REMEMBER_SECONDS * 1000:
                del self._departed[instance_id]
            elif self.hold_until_ms is None and age_ms > STALL_WINDOW_SECONDS * 1000:
                departed.counts = False
        vanished = [departed.member for departed in self._departed.values() if departed.counts]
        listed = sum(1 for instance_id in self._listed if instance_id not in self._dropped)
        if vanished and looks_like_stall(listed, len(vanished)):
            if self.hold_until_ms is None:
                self.hold_until_ms = now_ms + round(HOLD_SECONDS * 1000)
                self.hold_size = (0, 0)
                self._came_back = False
        elif self.hold_until_ms is not None:
            if vanished:
                self._end_hold("the registry lists at least as many instances as it dropped")
            else:
                self._end_hold("they are listed again, or announced their departure", not self._came_back)
            vanished = []
        held = {member.instance_id: member for member in vanished} if self.hold_until_ms is not None else {}
        self.members = {**self._listed, **held}
        if len(held) > self.hold_size[0]:
            self.hold_size = (len(held), len(self.members))
        self._built_ms = None

    def _end_hold(self, reason: str, departure: bool = False) -> None:
        gone = 0
        for departed in self._departed.values():
            gone += departed.counts
            departed.counts = False  # accepted: these do not count toward another hold
        self.hold_until_ms = None
        self.hold_ended = f"{reason}; {gone} left the table"
        self.hold_was_departure = departure

    @property
    def held(self) -> int:
        """Instances the table keeps although the registry no longer lists them."""
        return len(self.members) - len(self._listed)

    def drop(self, instance_id: str) -> bool:
        member = self.members.get(instance_id)
        if member is None or instance_id in self._dropped:
            return False
        if instance_id in self._listed:
            self._dropped[instance_id] = member.start
        else:  # held: it left the registry before it said so, and now it leaves the table
            del self._departed[instance_id]
        self.settle(_now_ms())
        log.info("%s: dropped %s", self.service, instance_id)
        return True

    def eject(self, instance_id: str, now: float) -> None:
        member = self.members.get(instance_id)
        if member is not None:
            member.ejected_until = now + EJECT_SECONDS

    def follow_weight(self, instance_id: str, mark: bytes | None) -> None:
        """A response's X-Sidecar-Weight (None: it had none): a provider in latency warmup mode
        says its weight on every response, and picks follow it from the next one on."""
        if mark is None:
            return
        member = self.members.get(instance_id)
        if member is not None and member.follow_mark(mark):
            self._built_ms = None  # the weights are summed again at the next pick

    def usable(self) -> list[Member]:
        return [m for instance_id, m in self.members.items() if instance_id not in self._dropped]

    def choose(self, tried: set[str], rng: random.Random) -> Member | None:
        """Weighted P2C among the usable instances not in `tried`, healthy ones first."""
        now, now_ms = time.monotonic(), _now_ms()
        if self._built_ms is None or (
            self._built_ms < self._settled_ms and now_ms - self._built_ms >= WEIGHTS_REFRESH_MS
        ):
            self._build(now_ms)
        pool, weights, steered = self._pool, self._weights, self._steered

        def fits(index: int) -> bool:
            member = pool[index]
            return weights[index] > 0 and member.ejected_until <= now and member.instance_id not in tried

        def load(index: int) -> float | None:
            return STEERED if steered[index] else pool[index].inflight / weights[index]

        index = draw_p2c(self._cumulative, fits, load, rng)
        return pool[index] if index is not None else self._scan(tried, rng, now, now_ms)

    def _build(self, now_ms: int) -> None:
        self._pool = self.usable()
        self._weights = [member.weight_at(now_ms) for member in self._pool]
        self._steered = [m.steered(w) for m, w in zip(self._pool, self._weights, strict=True)]
        self._cumulative = list(itertools.accumulate(self._weights))
        self._settled_ms = max((member.settled_ms for member in self._pool), default=0)
        self._built_ms = now_ms

    def _scan(self, tried: set[str], rng: random.Random, now: float, now_ms: int) -> Member | None:
        """The exact rule, by a scan: for when draws keep missing (most instances tried or
        ejected) or no weight is positive."""
        members = [m for m in self.usable() if m.instance_id not in tried]
        healthy = [m for m in members if m.ejected_until <= now]
        # Only ejected instances left: try them rather than fail (they may be back already).
        pool = healthy or members
        weights = [m.weight_at(now_ms) for m in pool]
        candidates = [Candidate(w, m.inflight, m.steered(w)) for m, w in zip(pool, weights, strict=True)]
        index = pick(candidates, rng)
        return None if index is None else pool[index]

    def snapshot(self) -> list[dict[str, Any]]:
        now, now_ms = time.monotonic(), _now_ms()
        return [
            {
                "instance_id": instance_id,
                "address": m.instance.address,
                "weight": round(m.weight_at(now_ms), 2),
                "inflight": m.inflight,
                "dropped": instance_id in self._dropped,
                "ejected": m.ejected_until > now,
                "held": instance_id not in self._listed,
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
        self._following = False  # the watch answered and has not failed since: answers are live
        self._watch_task: asyncio.Task[None] | None = None
        self._hold_timers: list[asyncio.TimerHandle] = []  # report the table's hold; end it at its bound
        self._reported: int | None = None  # the hold (by its bound) that was reported

    async def __aenter__(self) -> WatchedTable:
        self._watch_task = asyncio.create_task(self._watch(), name=f"watch-{self.service}")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for timer in self._hold_timers:
            timer.cancel()
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.wait([self._watch_task])

    async def _watch(self) -> None:
        pause = 0.2
        while True:
            try:
                async with aclosing(self.registry.watch(self.service)) as watch:
                    async for instances in watch:
                        self._apply(instances)
                        self.watch_error, pause = None, 0.2
            except Exception as exc:  # whatever the registry did, the last table stays and we retry
                if self.watch_error is None:
                    log.warning("watch of %s failed, keeping the last table: %s", self.service, exc,
                                exc_info=not isinstance(exc, RegistryError))  # fmt: skip
                self.watch_error = str(exc) or exc.__class__.__name__
                self._following = False
                self.metrics.registry_errors.labels("watch").inc()
                self.answered.set()  # nothing is coming soon: requests need not wait for it
            await asyncio.sleep(pause)
            pause = min(pause * 2, WATCH_BACKOFF_MAX_SECONDS)

    def _apply(self, instances: list[Instance]) -> None:
        holding = self.table.hold_until_ms
        self.table.update(instances, live=self._following)
        self._following = True
        self._changed(holding)
        self.answered.set()

    def drop(self, instance_id: str) -> bool:
        holding = self.table.hold_until_ms
        dropped = self.table.drop(instance_id)
        self._changed(holding)
        return dropped

    def _changed(self, holding: int | None) -> None:
        """After the table changed: its metrics, and the timers of a hold that began or ended."""
        until = self.table.hold_until_ms
        if until != holding:
            for timer in self._hold_timers:
                timer.cancel()
            self._hold_timers = []
            if holding is not None and holding != self._reported and not self.table.hold_was_departure:
                self._report_hold(holding, ended=True)  # a stall mended within HOLD_REPORT_SECONDS
            if holding is not None and holding == self._reported:
                log.info("%s: hold over: %s", self.service, self.table.hold_ended)
            if until is not None:
                loop = asyncio.get_running_loop()
                delay = max(0.0, (until - _now_ms()) / 1000.0)
                self._hold_timers = [
                    loop.call_later(min(HOLD_REPORT_SECONDS, delay), self._report_hold, until),
                    loop.call_later(delay, self._hold_due, until),
                ]
        self.metrics.upstream_instances.labels(self.service).set(len(self.table.usable()))
        self.metrics.upstream_held.labels(self.service).set(self.table.held)

    def _report_hold(self, until: int, ended: bool = False) -> None:
        """Once per hold: the log line and the count."""
        if self.table.hold_until_ms != until and not ended:
            return
        self._reported = until
        self.metrics.upstream_holds.labels(self.service).inc()
        dropped, of = self.table.hold_size
        log.warning(
            "%s: the registry dropped %d of %d instances at once, none of which said it was leaving"
            " (a registry stall?); keeping them until they are back, for up to %g s",
            self.service, dropped, of, HOLD_SECONDS,
        )  # fmt: skip

    def _hold_due(self, until: int) -> None:
        # At least `until`: an event loop's timer may fire a hair before the monotonic clock says so.
        self.table.settle(max(_now_ms(), until))
        self._changed(until)
