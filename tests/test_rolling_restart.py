"""The proof, end to end: a rolling restart under load loses no request.

Three providers (demo app + provider sidecar with --warmup), one consumer-only sidecar with an
upstream listener, 32 requests in flight through it the whole time (POSTs: never retried once
sent). Each provider is rolled the way Kubernetes does it: preStop GET /shutdown, then SIGTERM
to app and sidecar, then a replacement with a new instance id, awaited on /ready. The fleet and
the roll are the demo's (sidecar/demo/fleet.py, roll.py).
A control run SIGKILLs a provider under the same load and does see failures
(tests/test_rolling_restart_control.py).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from sidecar.demo.fleet import Consumer, Fleet, Provider
from sidecar.demo.loadgen import LoadGenerator
from sidecar.demo.roll import roll
from tests.support.procs import wait_for

WARMUP = 3.0
PROVIDER_ARGS = ("--warmup", str(WARMUP), "--quiet-period", "0.5", "--drain-timeout", "10")


@contextmanager
def fleet_of_three(tmp_path: Path, registry: str) -> Iterator[tuple[Fleet, list[Provider], Consumer]]:
    service = f"roll-{uuid.uuid4().hex[:8]}"
    with Fleet(tmp_path, registry, service, app_startup_delay=0.0) as fleet:
        providers = [fleet.start_provider(f"{service}-{n}", *PROVIDER_ARGS) for n in (1, 2, 3)]
        consumer = fleet.start_consumer()
        fleet.wait_consumer_knows(consumer, 3)
        yield fleet, providers, consumer


class WarmBeforeNext:
    """As maxUnavailable=0 would: the next step waits until the replacement is warm, and until
    enough requests were served warm to measure its share."""

    def __init__(self, load: LoadGenerator) -> None:
        self.load = load
        self.warm: list[tuple[Provider, float, float]] = []  # replacement, warm from, to

    def stopping(self, old: Provider) -> None:
        pass

    def replaced(self, new: Provider) -> None:
        wait_for(lambda: new.status()["phase"] == "serving", WARMUP + 10, "end of warmup")
        warm_at = time.monotonic()
        wait_for(lambda: sum(s.started >= warm_at for s in self.load.samples) > 300, what="warm load")
        self.warm.append((new, warm_at, time.monotonic()))


def test_rolling_restart_loses_nothing(tmp_path: Path, registry_url: str) -> None:
    """Rolling three providers under load: zero failed requests, every app had nothing in flight
    at SIGTERM, and each replacement gets less traffic in its first second than after warmup."""
    with fleet_of_three(tmp_path, registry_url) as (fleet, providers, consumer):
        with LoadGenerator(consumer.url, concurrency=32) as load:
            wait_for(lambda: len(load.samples) > 100, what="the load to run")
            pacing = WarmBeforeNext(load)
            result = roll(fleet, "sidecar", providers, PROVIDER_ARGS, f"{fleet.service}-new", pacing)
        for shutdown in result.shutdowns:
            assert shutdown.status == 200, shutdown.body
            assert shutdown.body["drained"] is True
            # One SIGTERM each, as the kubelet sends: a second would force the exit (143).
            assert shutdown.sidecar_exit == 0
        failures = load.failures()
        assert len(load.samples) > 1000
        assert failures == [], f"{len(failures)} failed requests, first: {failures[:3]}"
        assert result.inflight_at_sigterm == [0, 0, 0], [old.name for old in providers]
        for new, warm_at, warm_end in pacing.warm:
            early = load.shares(new.ready_at, new.ready_at + 1).get(new.name, 0.0)
            late = load.shares(warm_at, warm_end).get(new.name, 0.0)
            assert early < late, f"{new.name}: first second {early:.0%}, after warmup {late:.0%}"
            assert late > 0.2  # about a third once warm
        metrics = httpx.get(f"{consumer.admin}/metrics", verify=False).text
        assert "sidecar_notify_received_total 3.0" in metrics
