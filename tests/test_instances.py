"""The consumer's instance table as its registry watch feeds it (sidecar.consumer.instances.WatchedTable).

In process, driven through its public face: a registry whose watch yields the lists (or raises
the errors) the test hands it, and the table's members, `choose` and `snapshot` as the listener
reads them. `ScriptedRegistry.answer` returns once the table has taken an answer in, so no test
guesses how long that takes.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator
from types import TracebackType

import pytest

from registry_adapters import Instance, RegistryUnavailable
from sidecar.consumer import instances
from sidecar.consumer.instances import WatchedTable
from sidecar.metrics import Metrics
from sidecar.protocol import metadata as meta
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


def ids(watched: WatchedTable) -> set[str]:
    return {member.instance.instance_id for member in watched.table.usable()}


@pytest.fixture
async def registry() -> ScriptedRegistry:
    return ScriptedRegistry()


async def test_empty_answer_after_outage_is_held(
    registry: ScriptedRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry back from an outage with nothing in it: the last table stays for a grace
    period (providers re-register), then the empty answer stands."""
    monkeypatch.setattr(instances, "EMPTY_AFTER_OUTAGE_GRACE_SECONDS", 0.5)
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
    """A non-empty answer during the grace period wins over the held empty one, for good."""
    monkeypatch.setattr(instances, "EMPTY_AFTER_OUTAGE_GRACE_SECONDS", 0.2)
    async with WatchedTable("svc", registry, Metrics()) as watched:
        await registry.answer([instance("a")])
        await registry.answer(RegistryUnavailable("down"))
        await registry.answer([])
        await registry.answer([instance("b")])
        assert ids(watched) == {"b"}
        await registry.answer([instance("b"), instance("c")])
        assert ids(watched) == {"b", "c"}
        await asyncio.sleep(0.4)  # the grace period passing is the behaviour under test
        assert ids(watched) == {"b", "c"}


async def test_empty_answer_without_outage_applies_at_once(registry: ScriptedRegistry) -> None:
    """An empty answer from a healthy watch (every provider left) applies at once."""
    async with WatchedTable("svc", registry, Metrics()) as watched:
        await registry.answer([instance("a")])
        assert ids(watched) == {"a"}
        await registry.answer([])
        assert ids(watched) == set()


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
        await registry.answer([instance("good", 1, **{meta.META_WEIGHT: "30"})])
        assert ids(watched) == {"good"}
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


def test_warming_weights_are_refreshed(monkeypatch: pytest.MonkeyPatch) -> None:
    """While an instance warms, the weights picks use are rebuilt at most every
    WEIGHTS_REFRESH_MS, and no longer once every warmup has ended."""
    clock = {"ms": 1_700_000_000_000}
    monkeypatch.setattr(instances, "_now_ms", lambda: clock["ms"])
    warming = {
        meta.META_WEIGHT: "100",
        meta.META_START_MS: str(clock["ms"]),
        meta.META_WARMUP_S: "1",
        meta.META_WARMUP_CURVE: "1",
    }
    table = instances.InstanceTable("svc")
    table.update([instance("cold", **warming), instance("hot")])
    rng = random.Random(2)
    table.choose(set(), rng)
    first = list(table._weights)
    clock["ms"] += instances.WEIGHTS_REFRESH_MS // 2
    table.choose(set(), rng)
    assert table._weights == first  # too soon
    clock["ms"] += instances.WEIGHTS_REFRESH_MS
    table.choose(set(), rng)
    assert table._weights[0] > first[0]  # warmer now
    clock["ms"] += 2_000  # warmup over
    table.choose(set(), rng)
    assert table._weights == [100.0, 100.0]
    built = table._built_ms
    clock["ms"] += 5_000
    table.choose(set(), rng)
    assert table._built_ms == built  # settled: nothing to recompute
