"""The registry is down at start or during shutdown (real Consul agent, stopped and restarted):
the sidecar keeps retrying at start and still drains at shutdown."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.support.consul_agent import ConsulAgent
from tests.support.procs import demo_app, sidecar, wait_for
from tests.support.registry_view import consul_weights, registered_ids


def test_consul_down_at_start(tmp_path: Path, fresh_consul: ConsulAgent) -> None:
    """Consul down at start: /ready 503 and /status shows the error; once Consul is back the
    instance registers and /ready turns 200."""
    fresh_consul.stop()
    with demo_app(tmp_path) as app, sidecar(tmp_path, fresh_consul.url, app, wait="live") as car:
        error = wait_for(lambda: car.status()["registry"]["last_error"], what="a registry error in /status")
        assert error.startswith("register")
        assert httpx.get(f"{car.admin}/ready").status_code == 503
        assert car.status()["registry"]["registered"] is False
        assert 'sidecar_registry_errors_total{op="register"}' in httpx.get(f"{car.admin}/metrics").text
        fresh_consul.start()
        car.wait_ready(timeout=30)
        status = car.status()
        assert status["registry"] == {"kind": "consul", "registered": True, "last_error": None}
        assert status["instance_id"] in registered_ids(fresh_consul.url, "svc")


def test_consul_down_during_shutdown(tmp_path: Path, fresh_consul: ConsulAgent) -> None:
    """Consul down during /shutdown: the drain completes (readiness, closing headers), the
    deregistration is retried within the drain timeout, and the body says deregistered false."""
    args = ("--drain-timeout", "2", "--quiet-period", "0.2")
    with demo_app(tmp_path) as app, sidecar(tmp_path, fresh_consul.url, app, *args) as car:
        fresh_consul.stop()
        with ThreadPoolExecutor(1) as pool:
            shutdown = pool.submit(httpx.get, f"{car.admin}/shutdown", timeout=30)
            wait_for(lambda: car.status()["phase"] == "draining", what="phase draining")
            during = httpx.get(f"{car.url}/work")
            answer = shutdown.result()
        assert during.status_code == 200
        assert during.headers["X-Sidecar-Closing"] == car.status()["instance_id"]
        assert during.headers["Connection"] == "close"
        assert answer.status_code == 200
        body = answer.json()
        assert body["drained"] is True
        assert body["deregistered"] is False
        assert 1.8 <= body["seconds"] <= 4
        assert httpx.get(f"{car.admin}/ready").status_code == 503
        assert car.status()["registry"]["last_error"].startswith("deregister")
        refused = httpx.get(f"{car.url}/work")
        assert refused.status_code == 503
        assert "X-Sidecar-Refused" in refused.headers


def test_weight_set_during_outage_reaches_consul_later(tmp_path: Path, fresh_consul: ConsulAgent) -> None:
    """PUT /weight while Consul is down answers published false; once Consul is back, the
    sidecar publishes it by itself."""
    args = ("--instance-id", "outage-w", "--weight", "100")
    with demo_app(tmp_path) as app, sidecar(tmp_path, fresh_consul.url, app, *args, service="outw") as car:
        fresh_consul.stop()
        put = httpx.put(f"{car.admin}/weight", json={"weight": 7}, timeout=30)
        assert put.status_code == 200
        assert put.json()["published"] is False
        fresh_consul.start()
        wait_for(
            lambda: consul_weights(fresh_consul.url, "outw").get("outage-w") == 7, 30, "weight 7 in Consul"
        )
