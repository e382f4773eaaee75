"""The registry is down at start or during shutdown (a real Consul agent or etcd member, stopped
and restarted): the sidecar keeps retrying at start and still drains at shutdown."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from sidecar.provider.lifecycle import FINISHING_SHARE
from tests.support.consul_agent import ConsulAgent
from tests.support.procs import await_for, demo_app, sidecar, wait_for
from tests.support.registry_server import RegistryServer
from tests.support.registry_view import consul_weights, registered_ids


def test_registry_down_at_start(tmp_path: Path, fresh_registry: RegistryServer) -> None:
    """Registry down at start: /ready 503 and /status shows the error; once the registry is back
    the instance registers and /ready turns 200."""
    fresh_registry.stop()
    with demo_app(tmp_path) as app, sidecar(tmp_path, fresh_registry.url, app, wait="live") as car:
        error = wait_for(lambda: car.status()["registry"]["last_error"], what="a registry error in /status")
        kind = fresh_registry.url.partition("://")[0]
        assert error.startswith(f"{kind} at 127.0.0.1:"), error  # where, why and the adapter's operation
        assert "registry register failed" in car.log()
        assert httpx.get(f"{car.admin}/ready", verify=False).status_code == 503
        assert car.status()["registry"]["registered"] is False
        assert (
            'sidecar_registry_errors_total{op="register"}'
            in httpx.get(f"{car.admin}/metrics", verify=False).text
        )
        fresh_registry.start()
        car.wait_ready(timeout=30)
        status = car.status()
        assert status["registry"] == {"kind": kind, "registered": True, "last_error": None}
        assert status["instance_id"] in registered_ids(fresh_registry.url, "svc")


def test_registry_down_during_shutdown(tmp_path: Path, fresh_registry: RegistryServer) -> None:
    """Registry down during /shutdown: the drain completes (readiness, closing headers), the
    deregistration is retried until the drain's last part (kept for finishing what is in
    flight), and the body says deregistered false."""
    args = ("--drain-timeout", "2", "--quiet-period", "0.2")
    with demo_app(tmp_path) as app, sidecar(tmp_path, fresh_registry.url, app, *args) as car:
        fresh_registry.stop()
        with ThreadPoolExecutor(1) as pool:
            shutdown = pool.submit(httpx.get, f"{car.admin}/shutdown", timeout=30)
            wait_for(lambda: car.status()["phase"] == "draining", what="phase draining")
            during = httpx.get(f"{car.url}/work", verify=False)
            answer = shutdown.result()
        assert during.status_code == 200
        assert during.headers["X-Sidecar-Closing"] == car.status()["instance_id"]
        assert during.headers["Connection"] == "close"
        assert answer.status_code == 200
        body = answer.json()
        assert body["drained"] is True
        assert body["deregistered"] is False
        assert 2 * (1 - FINISHING_SHARE) - 0.1 <= body["seconds"] <= 4
        assert httpx.get(f"{car.admin}/ready", verify=False).status_code == 503
        assert car.status()["registry"]["last_error"] is not None
        assert "registry deregister failed" in car.log()
        refused = httpx.get(f"{car.url}/work", verify=False)
        assert refused.status_code == 503
        assert "X-Sidecar-Refused" in refused.headers


def test_weight_set_during_outage_reaches_consul_later(tmp_path: Path, fresh_consul: ConsulAgent) -> None:
    """PUT /weight while Consul is down answers published false; once Consul is back, the
    sidecar publishes it by itself."""
    args = ("--instance-id", "outage-w", "--weight", "100")
    with demo_app(tmp_path) as app, sidecar(tmp_path, fresh_consul.url, app, *args, service="outw") as car:
        fresh_consul.stop()
        put = httpx.put(f"{car.admin}/weight", json={"weight": 7}, timeout=30, verify=False)
        assert put.status_code == 200
        assert put.json()["published"] is False
        fresh_consul.start()
        wait_for(
            lambda: consul_weights(fresh_consul.url, "outw").get("outage-w") == 7, 30, "weight 7 in Consul"
        )


# Two responses that become readable in the same turn of the client's event loop may be timed in
# either order; a forwarded response that arrives after /shutdown's is later than this.
SAME_TURN_SLACK_S = 0.1


async def test_drain_waits_for_requests_forwarded_while_consul_is_down(
    tmp_path: Path, fresh_consul: ConsulAgent
) -> None:
    """Consul down during /shutdown, steady requests: every request the sidecar forwarded has
    completed when /shutdown answers, the body's inflight is what the app has in flight then, and
    whatever arrives later is refused without reaching the app."""
    args = ("--drain-timeout", "4", "--quiet-period", "0.2")
    with demo_app(tmp_path) as app, sidecar(tmp_path, fresh_consul.url, app, *args) as car:
        fresh_consul.stop()
        async with httpx.AsyncClient(timeout=30) as client:
            shutdown = asyncio.create_task(client.get(f"{car.admin}/shutdown"))
            await await_for(lambda: car.status()["phase"] == "draining", what="phase draining")
            # The scenario: a lull longer than the quiet period (the instance looks drained), then
            # steady traffic from consumers that still find it in the registry.
            await asyncio.sleep(0.6)
            answered = asyncio.Event()
            responses: list[tuple[httpx.Response, float]] = []  # with the time it arrived

            async def steady() -> None:
                while not answered.is_set():
                    response = await client.get(f"{car.url}/work", params={"ms": 200})
                    responses.append((response, time.monotonic()))

            streams = [asyncio.create_task(steady()) for _ in range(3)]
            answer = await shutdown
            answered_at = time.monotonic()
            app_inflight = (await client.get(f"{app.url}/stats")).json()["inflight"] - 1  # not /stats
            answered.set()
            await asyncio.gather(*streams)
            late = await client.get(f"{car.url}/work", params={"ms": 0, "marker": "late"})
        body = answer.json()
        assert (answer.status_code, body["drained"], body["inflight"]) == (200, True, 0), body
        assert body["deregistered"] is False
        assert app_inflight == body["inflight"]
        forwarded = [arrived for response, arrived in responses if response.status_code == 200]
        assert len(forwarded) >= 3, "the scenario needs requests forwarded while the registry is down"
        assert max(forwarded) <= answered_at + SAME_TURN_SLACK_S, "forwarded requests outlived the drain"
        refused = [response for response, _ in responses if response.status_code != 200]
        assert all(response.status_code == 503 for response in refused), [r.text for r in refused]
        assert all("X-Sidecar-Refused" in response.headers for response in [*refused, late])
        assert "/work?ms=0&marker=late" not in app.stats()["paths"]
