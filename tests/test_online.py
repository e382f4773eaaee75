"""The online sequence, black box: readiness through the phases, registration metadata, warmup
steps and weight overrides as the real Consul agent shows them."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from sidecar.protocol import metadata as meta
from tests.support.consul_agent import ConsulAgent
from tests.support.procs import demo_app, sidecar, wait_for
from tests.support.registry_view import consul_services, consul_weights, watched


def ready(admin: str) -> tuple[int, str]:
    response = httpx.get(f"{admin}/ready", timeout=5, verify=False)
    return response.status_code, response.json()["phase"]


def test_ready_follows_the_phases(tmp_path: Path, registry_url: str) -> None:
    """/ready: 503 before the app is healthy, 503 during --register-delay, 200 after, 503 once
    draining."""
    with demo_app(tmp_path) as app:
        # Unhealthy until the test says so: "starting" lasts however slow the sidecar's start is.
        assert httpx.post(f"{app.url}/health", params={"healthy": "0"}, verify=False).status_code == 503
        args = ("--register-delay", "1.5", "--drain-timeout", "10")
        with sidecar(tmp_path, registry_url, app, *args, wait="live") as car:
            assert ready(car.admin) == (503, "starting")
            assert httpx.post(f"{app.url}/health", params={"healthy": "1"}, verify=False).status_code == 200
            assert wait_for(lambda: ready(car.admin) == (503, "registering"), what="phase registering")
            assert car.status()["registry"]["registered"] is False
            wait_for(lambda: ready(car.admin)[0] == 200, what="/ready 200")
            assert car.status()["registry"]["registered"] is True
            # Draining: hold a request in flight so the phase lasts long enough to look at.
            with ThreadPoolExecutor(2) as pool:
                slow = pool.submit(httpx.get, f"{car.url}/work?ms=1500", timeout=30)
                wait_for(lambda: car.status()["inflight"] == 1, what="request in flight")
                shutdown = pool.submit(httpx.get, f"{car.admin}/shutdown", timeout=30)
                assert wait_for(lambda: ready(car.admin) == (503, "draining"), what="phase draining")
                assert slow.result().status_code == 200
                assert slow.result().json()["ms"] == 1500
                assert shutdown.result().status_code == 200
                assert shutdown.result().json()["drained"] is True
            assert ready(car.admin) == (503, "drained")


def test_registration_carries_metadata(tmp_path: Path, registry_url: str) -> None:
    """The registered instance has the advertised address, the weight and the sidecar_* keys."""
    args = ("--warmup", "30", "--warmup-curve", "3", "--weight", "200", "--instance-id", "svc-meta-1")
    with demo_app(tmp_path) as app, sidecar(tmp_path, registry_url, app, *args, service="meta") as car:
        (instance,) = watched(registry_url, "meta")
        assert instance.instance_id == "svc-meta-1"
        assert instance.address == f"127.0.0.1:{car.listen_port}"
        assert 1 <= instance.weight <= 200 * 0.2  # early in a 30 s warmup with a floor of 10%
        start_ms = int(instance.meta[meta.META_START_MS])
        assert abs(start_ms / 1000 - time.time()) < 30
        assert instance.meta[meta.META_WARMUP_S] == "30"
        assert instance.meta[meta.META_WARMUP_CURVE] == "3"
        assert instance.meta[meta.META_WEIGHT] == "200"
        assert instance.meta[meta.META_ADMIN] == car.admin
        assert instance.meta[meta.META_PROTOCOLS] == "http/1.1,h2c"
        assert meta.accepts_h2c(instance.meta)


def test_warmup_steps_and_overrides_in_consul(tmp_path: Path, consul_agent: ConsulAgent) -> None:
    """Warmup raises Consul's Weights.Passing in steps up to the base weight; PUT /weight is
    visible at once, DELETE /weight resets it."""
    url = consul_agent.url
    args = ("--warmup", "4", "--warmup-curve", "1", "--weight", "100", "--instance-id", "svc-warm-1")
    with demo_app(tmp_path) as app, sidecar(tmp_path, url, app, *args, service="warm") as car:
        seen: list[int] = []

        def at_base() -> bool:
            weight = consul_weights(url, "warm")["svc-warm-1"]
            if not seen or seen[-1] != weight:
                seen.append(weight)
            return weight == 100

        wait_for(at_base, timeout=15, what="the base weight after warmup")
        assert seen == sorted(seen), f"weights must only rise during warmup: {seen}"
        assert len([weight for weight in seen if weight < 100]) >= 3, f"expected several steps: {seen}"
        assert car.status()["phase"] == "serving"

        put = httpx.put(f"{car.admin}/weight", json={"weight": 7}, verify=False)
        assert put.status_code == 200
        assert put.json()["published"] is True
        assert consul_weights(url, "warm")["svc-warm-1"] == 7
        (entry,) = consul_services(url, "warm")
        assert entry["ServiceMeta"][meta.META_WEIGHT_OVERRIDE] == "7"
        assert httpx.get(f"{car.admin}/weight", verify=False).json()["override"] == 7

        deleted = httpx.delete(f"{car.admin}/weight", verify=False)
        assert deleted.status_code == 200
        assert deleted.json()["override"] is None
        assert consul_weights(url, "warm")["svc-warm-1"] == 100
        (entry,) = consul_services(url, "warm")
        assert meta.META_WEIGHT_OVERRIDE not in entry["ServiceMeta"]


@pytest.mark.parametrize("registry_url", ["sqlite"], indirect=True)
def test_weight_zero_takes_instance_out(tmp_path: Path, registry_url: str) -> None:
    """PUT /weight 0 takes the instance out of what the registry hands consumers; DELETE brings
    it back."""
    with demo_app(tmp_path) as app, sidecar(tmp_path, registry_url, app, "--instance-id", "svc-zero") as car:
        assert [i.instance_id for i in watched(registry_url, "svc")] == ["svc-zero"]
        assert httpx.put(f"{car.admin}/weight", json={"weight": 0}, verify=False).json()["current"] == 0
        assert watched(registry_url, "svc") == []
        assert httpx.delete(f"{car.admin}/weight", verify=False).json()["current"] == 100
        assert [i.instance_id for i in watched(registry_url, "svc")] == ["svc-zero"]


@pytest.mark.parametrize("registry_url", ["sqlite"], indirect=True)
def test_ready_follows_app_health(tmp_path: Path, registry_url: str) -> None:
    """Once up, /ready turns 503 (phase starting: the app is lost) after the app's health check
    fails a few times in a row, and 200 again after it passes."""
    with demo_app(tmp_path) as app, sidecar(tmp_path, registry_url, app) as car:
        httpx.post(f"{app.url}/health", params={"healthy": "0"}, verify=False)
        wait_for(
            lambda: ready(car.admin) == (503, "starting"), timeout=20, what="/ready 503 for an unhealthy app"
        )
        httpx.post(f"{app.url}/health", params={"healthy": "1"}, verify=False)
        wait_for(lambda: ready(car.admin) == (200, "serving"), timeout=10, what="/ready 200 again")


def test_override_set_while_starting_reaches_the_registry(tmp_path: Path, consul_agent: ConsulAgent) -> None:
    """PUT /weight before the instance is registered: it registers with that weight, in Consul's
    weights and in the metadata."""
    url = consul_agent.url
    with (
        demo_app(tmp_path, startup_delay=3) as app,
        sidecar(tmp_path, url, app, "--instance-id", "early-1", service="early", wait="live") as car,
    ):
        put = httpx.put(f"{car.admin}/weight", json={"weight": 7}, verify=False)
        assert put.status_code == 200
        assert put.json()["published"] is False  # not registered yet
        car.wait_ready()
        assert wait_for(lambda: consul_weights(url, "early").get("early-1") == 7, what="weight 7 in Consul")
        # Consumer sidecars read the override from the metadata, not from Consul's weights.
        (instance,) = watched(url, "early")
        assert instance.meta[meta.META_WEIGHT_OVERRIDE] == "7"
