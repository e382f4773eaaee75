"""The proof, end to end: a rolling restart under load loses no request.

Three providers (demo app + provider sidecar with --warmup), one consumer-only sidecar with an
upstream listener, 32 requests in flight through it the whole time (POSTs: never retried once
sent). Each provider is rolled the way Kubernetes does it: preStop GET /shutdown, then SIGTERM
to app and sidecar, then a replacement with a new instance id, awaited on /ready.
A control run SIGKILLs a provider under the same load and does see failures.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from sidecar.demo.loadgen import LoadGenerator
from tests.support.ports import free_port
from tests.support.procs import AppProc, SidecarProc, demo_app, sidecar, wait_for

WARMUP = 5.0


@dataclass
class Provider:
    name: str
    app: AppProc
    car: SidecarProc
    ready_at: float


class Fleet:
    def __init__(self, tmp_path: Path, registry: str, stack: ExitStack) -> None:
        self.tmp_path = tmp_path
        self.registry = registry
        self.stack = stack
        self.service = f"roll-{uuid.uuid4().hex[:8]}"
        self.upstream_port = free_port()
        self.generation = 0

    def provider(self) -> Provider:
        self.generation += 1
        name = f"{self.service}-{self.generation}"
        app = self.stack.enter_context(demo_app(self.tmp_path, name=name))
        args = (
            "--instance-id",
            name,
            "--warmup",
            str(WARMUP),
            "--quiet-period",
            "0.5",
            "--drain-timeout",
            "10",
        )
        car = self.stack.enter_context(
            sidecar(self.tmp_path, self.registry, app, *args, service=self.service)
        )
        return Provider(name, app, car, time.monotonic())

    def consumer(self) -> SidecarProc:
        upstream = f"{self.service}=127.0.0.1:{self.upstream_port}"
        return self.stack.enter_context(sidecar(self.tmp_path, self.registry, None, "--upstream", upstream))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"


@contextmanager
def fleet_of_three(tmp_path: Path, registry: str) -> Iterator[tuple[Fleet, list[Provider], SidecarProc]]:
    with ExitStack() as stack:
        fleet = Fleet(tmp_path, registry, stack)
        providers = [fleet.provider() for _ in range(3)]
        consumer = fleet.consumer()
        wait_for(
            lambda: len(consumer.status()["upstreams"][fleet.service]["instances"]) == 3,
            what="the consumer to know three instances",
        )
        yield fleet, providers, consumer


def test_rolling_restart_loses_nothing(tmp_path: Path, registry_url: str) -> None:
    """Rolling three providers under load: zero failed requests, every app had nothing in flight
    at SIGTERM, and each replacement gets less traffic in its first second than after warmup."""
    with fleet_of_three(tmp_path, registry_url) as (fleet, providers, consumer):
        replacements: list[tuple[Provider, float, float]] = []
        with LoadGenerator(fleet.url, concurrency=32) as load:
            wait_for(lambda: len(load.samples) > 100, what="the load to run")
            for old in providers:
                # preStop: the sidecar drains; then the kubelet sends SIGTERM to both containers.
                answer = httpx.get(f"{old.car.admin}/shutdown", timeout=30)
                assert answer.status_code == 200, answer.text
                assert answer.json()["drained"] is True
                old.app.proc.send_signal(signal.SIGTERM)
                old.car.proc.send_signal(signal.SIGTERM)
                # One SIGTERM each, as the kubelet sends: a second would force the exit (143).
                assert old.car.proc.wait(30) == 0
                old.app.proc.wait(30)
                new = fleet.provider()
                # As maxUnavailable=0 would: the next step waits until this one is warm, and
                # until enough requests were served warm to measure its share.
                wait_for(lambda car=new.car: car.status()["phase"] == "serving", WARMUP + 10, "end of warmup")
                warm_at = time.monotonic()
                wait_for(lambda t=warm_at: sum(s.started >= t for s in load.samples) > 300, what="warm load")
                replacements.append((new, warm_at, time.monotonic()))
        failures = load.failures()
        assert len(load.samples) > 1000
        assert failures == [], f"{len(failures)} failed requests, first: {failures[:3]}"
        for old in providers:
            assert old.app.sigterm_record()["inflight_at_sigterm"] == 0, old.name
        for new, warm_at, warm_end in replacements:
            early = load.shares(new.ready_at, new.ready_at + 1).get(new.name, 0.0)
            late = load.shares(warm_at, warm_end).get(new.name, 0.0)
            assert early < late, f"{new.name}: first second {early:.0%}, after warmup {late:.0%}"
            assert late > 0.2  # about a third once warm
        metrics = httpx.get(f"{consumer.admin}/metrics").text
        assert "sidecar_notify_received_total 3.0" in metrics


def test_control_sigkill_loses_requests(tmp_path: Path, registry_url: str) -> None:
    """Control: SIGKILL of a provider (no drain) under the same load does fail requests, so the
    test above can fail."""
    with fleet_of_three(tmp_path, registry_url) as (fleet, providers, _consumer):
        with LoadGenerator(fleet.url, concurrency=32) as load:
            wait_for(lambda: len(load.samples) > 100, what="the load to run")
            victim = providers[0]
            victim.car.proc.kill()
            victim.app.proc.kill()
            count = len(load.samples)
            wait_for(lambda: len(load.samples) > count + 200, what="more load after the kill")
        assert len(load.failures()) > 0
