"""The consumer's instance table as its registry watch feeds it (sidecar.consumer.instances.WatchedTable).

In process, driven through its public face: a registry whose watch yields the lists (or raises
the errors) the test hands it, and the table's members, `choose` and `snapshot` as the listener
reads them. `ScriptedRegistry.answer` returns once the table has taken an answer in, so no test
guesses how long that takes. The table's own rules (holds, warmup ages) are also driven directly,
on clocks the test sets (`Clocks`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator
from types import TracebackType

import pytest
from prometheus_client import generate_latest

from registry_adapters import Instance, RegistryUnavailable
from sidecar.consumer import instances
from sidecar.consumer.instances import InstanceTable, WatchedTable
from sidecar.metrics import Metrics
from sidecar.protocol import metadata as meta
from sidecar.protocol.warmup import Warmup
from tests.support.procs import await_for

# Far longer than any answer takes to be applied, even on a loaded machine.
APPLIED_WITHIN_S = 10.0


class ScriptedRegistry:
    """A registry whose watch yields, or raises, what the test hands to `answer`."""

    kind = "scripted"

    def __init__(self) -> None:
        self._answers: asyncio.Queue[list[Instance] | Exception] = asyncio.Queue()
        self._waiting = asyncio.Event()  # a watch waits for the next answer: the last one is in

    async def answer(self, answer: list[Instance] | Exception) -> None:
        """Hand the watch an answer; return once the table has taken it in (for an error: once
        the table watches again)."""
        self._waiting.clear()
        self._answers.put_nowait(answer)
        await asyncio.wait_for(self._waiting.wait(), APPLIED_WITHIN_S)

    async def watch(self, service: str) -> AsyncGenerator[list[Instance], None]:
        while True:
            self._waiting.set()
            answer = await self._answers.get()
            self._waiting.clear()
            if isinstance(answer, Exception):
                raise answer
            yield answer

    async def register(self, instance: Instance) -> None:
        raise NotImplementedError

    async def set_weight(self, instance_id: str, weight: int) -> None:
        raise NotImplementedError

    async def set_offline(self, instance_id: str) -> None:
        raise NotImplementedError

    async def deregister(self, instance_id: str) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> ScriptedRegistry:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass


def instance(instance_id: str, weight: int = 100, **fields: str) -> Instance:
    return Instance("svc", instance_id, "127.0.0.1", 1, weight, fields)


def ids(watched: WatchedTable | InstanceTable) -> set[str]:
    table = watched.table if isinstance(watched, WatchedTable) else watched
    return {member.instance.instance_id for member in table.usable()}


def held(table: InstanceTable) -> set[str]:
    return {row["instance_id"] for row in table.snapshot() if row["held"]}


def sample(metrics: Metrics, name: str) -> float:
    """The value of one sample of service `svc` in `metrics`, 0 when absent."""
    for line in generate_latest(metrics.registry).decode().splitlines():
        if line.startswith(f'{name}{{service="svc"}} '):
            return float(line.split()[-1])
    return 0.0


class Clocks:
    """The table's two clocks, set by the test: its monotonic one and the wall clock."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.mono_ms = 5_000_000
        self.wall_ms = 1_767_225_600_000
        monkeypatch.setattr(instances, "_now_ms", lambda: self.mono_ms)
        monkeypatch.setattr(instances, "_wall_ms", lambda: self.wall_ms)

    def advance(self, seconds: float) -> None:
        self.mono_ms += round(seconds * 1000)
        self.wall_ms += round(seconds * 1000)


@pytest.fixture
def clocks(monkeypatch: pytest.MonkeyPatch) -> Clocks:
    return Clocks(monkeypatch)


@pytest.fixture
async def registry() -> ScriptedRegistry:
    return ScriptedRegistry()


async def test_empty_answer_after_outage_is_held(
    registry: ScriptedRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry back from an outage with nothing in it: the last table stays for the hold's
    bound (providers re-register), then the empty answer stands."""
    monkeypatch.setattr(instances, "HOLD_SECONDS", 0.5)
    async with WatchedTable("svc", registry, Metrics()) as watched:
        await registry.answer([instance("a"), instance("b")])
        await registry.answer(RegistryUnavailable("down"))
        assert watched.watch_error == "down"
        await registry.answer([])
        assert ids(watched) == {"a", "b"}
        assert watched.watch_error is None
        await await_for(lambda: ids(watched) == set(), APPLIED_WITHIN_S, "the empty answer after the grace")


async def test_answer_during_grace_replaces_held_empty_one(
    registry: ScriptedRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-empty answer during the hold wins over the held empty one, for good."""
    monkeypatch.setattr(instances, "HOLD_SECONDS", 0.2)
    async with WatchedTable("svc", registry, Metrics()) as watched:
        await registry.answer([instance("a")])
        await registry.answer(RegistryUnavailable("down"))
        await registry.answer([])
        await registry.answer([instance("b")])
        assert ids(watched) == {"b"}
        await registry.answer([instance("b"), instance("c")])
        assert ids(watched) == {"b", "c"}
        await asyncio.sleep(0.4)  # the hold's bound passing is the behaviour under test
        assert ids(watched) == {"b", "c"}


async def test_empty_answer_without_outage_is_held_unless_announced(registry: ScriptedRegistry) -> None:
    """A watch that never failed may still empty the table (a stalled etcd expires every lease
    as it resumes): held as well. Instances that announced their departure leave at once."""
    async with WatchedTable("svc", registry, Metrics()) as watched:
        await registry.answer([instance("a"), instance("b")])
        await registry.answer([])
        assert ids(watched) == {"a", "b"}
        assert held(watched.table) == {"a", "b"}
        assert watched.drop("a")  # its offline notice
        assert ids(watched) == {"b"}
        await registry.answer([instance("c"), instance("d")])
        watched.drop("c")
        watched.drop("d")
        await registry.answer([])
        assert ids(watched) == set()
        assert watched.table.hold_until_ms is None


ABSURD: dict[str, dict[str, str]] = {
    "huge-weight": {meta.META_WEIGHT: "9" * 400},
    "huge-start": {meta.META_WEIGHT: "100", meta.META_WARMUP_S: "60", meta.META_START_MS: "9" * 400},
    "nan-window": {meta.META_WEIGHT: "100", meta.META_WARMUP_S: "nan", meta.META_START_MS: "1"},
    "inf-curve": {meta.META_WEIGHT: "100", meta.META_WARMUP_S: "60", meta.META_WARMUP_CURVE: "inf"},
    "negative": {meta.META_WEIGHT_OVERRIDE: "-3"},
    "non-ascii": {meta.META_WEIGHT_OVERRIDE: "\u0667"},
    "empty": {meta.META_WEIGHT: ""},
}


async def test_absurd_metadata_leaves_the_table_working(
    registry: ScriptedRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """Instances with absurd sidecar metadata get their registry weight, with one warning each;
    picking and the snapshot work, and the table keeps following the registry."""
    caplog.set_level(logging.WARNING, logger="sidecar.instances")
    absurd = [instance(instance_id, 7, **fields) for instance_id, fields in ABSURD.items()]
    async with WatchedTable("svc", registry, Metrics()) as watched:
        await registry.answer(absurd)
        await registry.answer([*absurd, instance("good", 1, **{meta.META_WEIGHT: "30"})])
        assert ids(watched) == {*ABSURD, "good"}
        assert watched.watch_error is None
        weights = {row["instance_id"]: row["weight"] for row in watched.table.snapshot()}
        assert weights == {**dict.fromkeys(ABSURD, 7), "good": 30}
        rng = random.Random(5)
        chosen = [watched.table.choose(set(), rng) for _ in range(200)]
        assert {member.instance.instance_id for member in chosen if member is not None} == {*ABSURD, "good"}
        await registry.answer(absurd)
        assert ids(watched) == {*ABSURD}
    warned = [
        record.getMessage() for record in caplog.records if "invalid sidecar metadata" in record.getMessage()
    ]
    for instance_id in ABSURD:
        assert len([message for message in warned if f" {instance_id} " in message]) == 1, warned
    assert len(warned) == len(ABSURD)


def test_picks_do_not_scan_a_large_table(monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 instances without warmup: the weights are built once for any number of picks, and
    again only when the table changes; tried and ejected instances are not picked."""
    table = instances.InstanceTable("svc")
    table.update([instance(f"i{n}", 1 + n % 7) for n in range(10_000)])
    builds = 0
    build = table._build

    def counted(now_ms: int) -> None:
        nonlocal builds
        builds += 1
        build(now_ms)

    monkeypatch.setattr(table, "_build", counted)
    rng = random.Random(11)
    tried = {f"i{n}" for n in range(0, 10_000, 2)}
    table.eject("i1", 0.0)  # ejected_until 5 s after monotonic 0: long over
    table.eject("i3", 1e12)  # still ejected
    chosen = [table.choose(tried, rng) for _ in range(2_000)]
    assert builds == 1
    assert all(member is not None and member.instance_id not in tried for member in chosen)
    assert "i3" not in {member.instance_id for member in chosen if member is not None}
    table.drop("i5")
    assert table.choose(set(), rng) is not None
    assert builds == 2


def test_warming_weights_are_refreshed(clocks: Clocks) -> None:
    """While an instance warms, the weights picks use are rebuilt at most every
    WEIGHTS_REFRESH_MS, and no longer once every warmup has ended."""
    warming = {
        meta.META_WEIGHT: "100",
        meta.META_START_MS: str(clocks.wall_ms),
        meta.META_WARMUP_S: "1",
        meta.META_WARMUP_CURVE: "1",
    }
    table = instances.InstanceTable("svc")
    table.update([instance("cold", **warming), instance("hot")])
    rng = random.Random(2)
    table.choose(set(), rng)
    first = list(table._weights)
    clocks.advance(instances.WEIGHTS_REFRESH_MS / 2000)
    table.choose(set(), rng)
    assert table._weights == first  # too soon
    clocks.advance(instances.WEIGHTS_REFRESH_MS / 1000)
    table.choose(set(), rng)
    assert table._weights[0] > first[0]  # warmer now
    clocks.advance(2)  # warmup over
    table.choose(set(), rng)
    assert table._weights == [100.0, 100.0]
    built = table._built_ms
    clocks.advance(5)
    table.choose(set(), rng)
    assert table._built_ms == built  # settled: nothing to recompute


# -- holds: a registry that drops most of a table at once, unannounced --------------------------


def table_of(*instance_ids: str) -> InstanceTable:
    table = InstanceTable("svc")
    table.update([instance(instance_id) for instance_id in instance_ids])
    return table


def test_most_of_the_table_gone_at_once_is_held(clocks: Clocks) -> None:
    """Three of four instances gone without a word: all four stay (the three marked held) until
    the registry lists as many instances as it dropped; then those still missing leave."""
    table = table_of("a", "b", "c", "d")
    table.update([instance("a")], live=True)
    assert ids(table) == {"a", "b", "c", "d"}
    assert held(table) == {"b", "c", "d"}
    assert table.held == 3
    table.update([instance("a"), instance("b")], live=True)
    assert ids(table) == {"a", "b"}
    assert table.hold_until_ms is None
    assert not table.hold_was_departure


def test_half_of_the_table_gone_leaves_at_once(clocks: Clocks) -> None:
    """Half of the table gone is not most of it: applied at once, as a lone departure is."""
    table = table_of("a", "b", "c", "d")
    table.update([instance("a"), instance("b")], live=True)
    assert ids(table) == {"a", "b"}
    assert table.hold_until_ms is None
    clocks.advance(instances.STALL_WINDOW_SECONDS + 1)
    table.update([instance("a")], live=True)  # b, later: one of two
    assert ids(table) == {"a"}


def test_departures_close_together_count_as_one(clocks: Clocks) -> None:
    """Departures within STALL_WINDOW_SECONDS add up (a stalled registry reports its expiries one
    by one): the one that tips the balance brings back those that left just before; departures
    further apart do not add up."""
    table = table_of("a", "b", "c")
    table.update([instance("a"), instance("b")], live=True)
    assert ids(table) == {"a", "b"}
    clocks.advance(instances.STALL_WINDOW_SECONDS / 2)
    table.update([instance("a")], live=True)
    assert ids(table) == {"a", "b", "c"}
    assert held(table) == {"b", "c"}

    table = table_of("a", "b", "c")
    table.update([instance("a"), instance("b")], live=True)
    clocks.advance(instances.STALL_WINDOW_SECONDS + 1)
    table.update([instance("a")], live=True)
    assert ids(table) == {"a"}


def test_hold_ends_at_its_bound(clocks: Clocks) -> None:
    """Instances not listed again within HOLD_SECONDS are gone: they leave, and do not count
    toward another hold."""
    table = table_of("a", "b")
    table.update([], live=True)
    clocks.advance(instances.HOLD_SECONDS - 1)
    table.settle(clocks.mono_ms)
    assert ids(table) == {"a", "b"}
    clocks.advance(1)
    table.settle(clocks.mono_ms)
    assert ids(table) == set()
    assert "not listed again" in table.hold_ended
    table.update([instance("c")], live=True)
    table.update([], live=True)  # c alone, gone: a hold of c only
    assert ids(table) == {"c"}
    assert held(table) == {"c"}


def test_announced_departures_leave_during_a_hold(clocks: Clocks) -> None:
    """A held instance whose offline notice (or closing mark) arrives leaves at once; a hold
    whose every instance announced its departure was a scale-down, not a stall."""
    table = table_of("a", "b")
    table.update([], live=True)
    assert table.drop("a")
    assert ids(table) == {"b"}
    assert table.drop("b")
    assert ids(table) == set()
    assert table.hold_until_ms is None
    assert table.hold_was_departure
    assert not table.drop("b")


async def test_hold_is_reported_once(registry: ScriptedRegistry, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """A hold shows in the metrics (instances held, holds begun) and in the log: one warning
    when it is reported, one line when it ends, whatever the answers in between."""
    monkeypatch.setattr(instances, "HOLD_REPORT_SECONDS", 0.05)
    monkeypatch.setattr(instances, "HOLD_SECONDS", 0.6)
    caplog.set_level(logging.INFO, logger="sidecar.instances")
    metrics = Metrics()
    async with WatchedTable("svc", registry, metrics) as watched:
        await registry.answer([instance("a"), instance("b"), instance("c")])
        await registry.answer([instance("a")])
        await registry.answer([])
        assert sample(metrics, "sidecar_upstream_held_instances") == 3
        assert sample(metrics, "sidecar_upstream_instances") == 3
        await await_for(
            lambda: sample(metrics, "sidecar_upstream_holds_total") == 1, APPLIED_WITHIN_S, "a report"
        )
        await registry.answer([])
        await await_for(lambda: ids(watched) == set(), APPLIED_WITHIN_S, "the hold's bound")
        assert sample(metrics, "sidecar_upstream_held_instances") == 0
        assert sample(metrics, "sidecar_upstream_holds_total") == 1
    messages = [record.getMessage() for record in caplog.records]
    assert len([m for m in messages if "dropped 3 of 3 instances at once" in m]) == 1, messages
    assert len([m for m in messages if "hold over" in m]) == 1, messages


async def test_hold_of_a_scale_down_is_not_reported(
    registry: ScriptedRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """Registry removals that arrive just before the offline notices of the instances: held for
    those moments, but no warning and no hold counted; a stall mended as quickly is reported."""
    caplog.set_level(logging.INFO, logger="sidecar.instances")
    metrics = Metrics()
    async with WatchedTable("svc", registry, metrics) as watched:
        await registry.answer([instance("a"), instance("b")])
        await registry.answer([])
        watched.drop("a")
        watched.drop("b")
        assert ids(watched) == set()
        assert sample(metrics, "sidecar_upstream_holds_total") == 0
        await registry.answer([instance("c"), instance("d")])
        await registry.answer([])
        await registry.answer([instance("c"), instance("d")])
        assert sample(metrics, "sidecar_upstream_holds_total") == 1
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "dropped 2 of 2" in warnings[0]


# -- warmup: timed on the consumer's clock ---------------------------------------------------------

WINDOW_S = 60.0
LINEAR = Warmup(WINDOW_S, curve=1, min_percent=0)
SKEWS_S = (-120.0, 0.0, 120.0)  # the provider's clock behind, right, ahead


def warming(
    instance_id: str, age: float, skew: float, clocks: Clocks, registry_weight: int | None = None
) -> Instance:
    """An instance registered `age` seconds ago by a provider whose clock is `skew` seconds
    ahead, with the registry weight its warmup steps published (unless given)."""
    fields = {
        meta.META_WEIGHT: "100",
        meta.META_START_MS: str(round(clocks.wall_ms + (skew - age) * 1000)),
        meta.META_WARMUP_S: f"{WINDOW_S:g}",
        meta.META_WARMUP_CURVE: "1",
        meta.META_WARMUP_MIN_PERCENT: "0",
    }
    weight = LINEAR.weight(100, age) if registry_weight is None else registry_weight
    return Instance("svc", instance_id, "127.0.0.1", 1, weight, fields)


def weights(table: InstanceTable) -> dict[str, float]:
    return {row["instance_id"]: row["weight"] for row in table.snapshot()}


def test_instance_back_from_the_registry_keeps_its_warmup(clocks: Clocks) -> None:
    """An instance that the registry dropped and lists again with the same registration goes on
    warming where it was, whether a hold kept it or it had left the table."""
    table = InstanceTable("svc")
    table.update([warming("w", 0, 0, clocks), instance("x"), instance("y")], live=True)
    clocks.advance(20)
    table.update([instance("x"), instance("y")], live=True)  # w leaves: one of three
    assert ids(table) == {"x", "y"}
    clocks.advance(10)
    table.update([warming("w", 30, 0, clocks), instance("x"), instance("y")], live=True)
    assert weights(table)["w"] == pytest.approx(50, abs=1)
    clocks.advance(10)
    table.update([], live=True)  # all three: held
    clocks.advance(5)
    table.update([warming("w", 45, 0, clocks)], live=True)
    assert weights(table)["w"] == pytest.approx(75, abs=1)


def test_registrations_seen_live_warm_alike_whatever_the_clocks(clocks: Clocks) -> None:
    """Instances seen registering warm up from that moment on the consumer's clock, whatever
    their providers' clocks say (two minutes ahead or behind): none is at full weight at once,
    none without weight, and they keep step."""
    table = InstanceTable("svc")
    table.update([], live=False)
    table.update([warming(f"skew{skew:g}", 0, skew, clocks) for skew in SKEWS_S], live=True)
    assert set(weights(table).values()) == {1.0}  # at least 1: never without traffic
    clocks.advance(30)
    assert set(weights(table).values()) == {50.0}
    clocks.mono_ms += 15_000  # the wall clock stepped back meanwhile: no matter
    assert set(weights(table).values()) == {75.0}


def test_a_consumer_that_starts_dates_warmups_by_the_claim_and_the_registry_weight(clocks: Clocks) -> None:
    """In a consumer's first answer: the claimed age where the registry weight allows it (a
    half-warm instance stays half warm), else the youngest the weight allows (a provider clock
    behind does not make a cold instance warm, nor one ahead a half-warm one cold)."""
    table = InstanceTable("svc")
    table.update(
        [
            warming("half", 30, 0, clocks),
            warming("cold-behind", 0, -120, clocks),
            warming("half-ahead", 30, 120, clocks),
            warming("half-behind", 30, -120, clocks),
            warming("warm", 600, 0, clocks),
        ]
    )
    found = weights(table)
    assert found["half"] == pytest.approx(50, abs=1)
    assert found["cold-behind"] == 1.0
    # Evidence from the registry weight: (49, 50] % of the window; the youngest end of it.
    assert found["half-ahead"] == pytest.approx(49, abs=1)
    assert found["half-behind"] == pytest.approx(49, abs=1)
    assert found["warm"] == 100.0


def test_without_registry_steps_the_claim_stands(clocks: Clocks) -> None:
    """A registry weight at the base (the Dubbo layout publishes the base throughout) says
    nothing about the age: in a first answer the claimed age stands."""
    table = InstanceTable("svc")
    table.update([warming("dubbo", 30, 0, clocks, registry_weight=100)])
    assert weights(table)["dubbo"] == pytest.approx(50, abs=1)


def test_a_weight_step_seen_live_dates_the_warmup(clocks: Clocks) -> None:
    """A consumer that took a half-warm instance for a cold one (first answer, the provider's
    clock ahead, no steps yet at the floor) corrects itself at the next registry step it sees."""
    table = InstanceTable("svc")
    table.update([warming("w", 30, 600, clocks, registry_weight=1)])
    assert weights(table)["w"] == 1.0
    clocks.advance(3)
    table.update([warming("w", 33, 600, clocks)], live=True)
    assert weights(table)["w"] == pytest.approx(55, abs=1 + 100 * (LINEAR.step_seconds() + 2) / WINDOW_S)


def test_a_sole_cold_instance_is_picked(clocks: Clocks) -> None:
    """With no warmup floor and a provider clock two minutes ahead, a sole instance still gets
    every request."""
    table = InstanceTable("svc")
    table.update([])
    table.update([warming("only", 0, 120, clocks)], live=True)
    rng = random.Random(3)
    assert all(table.choose(set(), rng) is not None for _ in range(50))
