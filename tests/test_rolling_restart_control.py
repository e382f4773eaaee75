"""The control of tests/test_rolling_restart.py: SIGKILL of a provider (no drain) under the same
load does fail requests, so the roll's zero can fail. In a module of its own so that the two
run side by side (each module runs on one worker). On the SQLite registry alone: what a SIGKILL
loses (the requests in flight on the victim) does not depend on the registry, and the roll
itself runs on every registry."""

from __future__ import annotations

from pathlib import Path

from sidecar.demo.loadgen import LoadGenerator
from tests.support.procs import wait_for
from tests.test_rolling_restart import fleet_of_three


def test_control_sigkill_loses_requests(tmp_path: Path) -> None:
    """Control: SIGKILL of a provider (no drain) under the same load does fail requests, so the
    test above can fail."""
    with fleet_of_three(tmp_path, f"sqlite://{tmp_path / 'registry.db'}") as (_fleet, providers, consumer):
        with LoadGenerator(consumer.url, concurrency=32) as load:
            wait_for(lambda: len(load.samples) > 100, what="the load to run")
            victim = providers[0]
            # Killed with requests in flight (a provider still warming up may have none for a
            # moment): those are what the kill loses.
            wait_for(lambda: victim.status()["inflight"] >= 2, what="requests in flight on the victim")
            victim.sidecar.kill()
            victim.app.kill()
            count = len(load.samples)
            wait_for(lambda: len(load.samples) > count + 200, what="more load after the kill")
        assert len(load.failures()) > 0
