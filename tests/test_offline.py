"""The offline sequence, black box: real demo app, real sidecar process, real registry.

Numbered like the design's sequence: /shutdown waits for what is in flight (5), is bounded by
--drain-timeout, runs once whatever the number of callers, notifies consumers (3), refuses after
the drain (6); SIGTERM runs the same sequence.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.support.procs import AppProc, SidecarProc, await_for, demo_app, open_gate, sidecar, wait_for
from tests.support.registry_view import registered_ids

QUIET = 0.5


# Two responses that become readable in the same turn of the client's event loop may be timed in
# either order by this much.
SAME_TURN_SLACK_S = 0.1


async def start_request(
    client: httpx.AsyncClient, car: SidecarProc, ms: int
) -> asyncio.Task[tuple[httpx.Response, float]]:
    """Start a request through the sidecar and return once the sidecar counts it in flight; the
    task gives the response and the time.monotonic() at which it arrived."""

    async def timed() -> tuple[httpx.Response, float]:
        response = await client.get(f"{car.url}/work", params={"ms": ms})
        return response, time.monotonic()

    task = asyncio.create_task(timed())
    await await_for(lambda: car.status()["inflight"] >= 1, what="the request to be in flight")
    return task


async def test_shutdown_returns_after_inflight_request(tmp_path: Path, registry_url: str) -> None:
    """/shutdown waits for a 2 s request (not less), returns within quiet period + 0.5 s of it,
    and the request succeeds."""
    with demo_app(tmp_path) as app, sidecar(tmp_path, registry_url, app, "--quiet-period", str(QUIET)) as car:
        async with httpx.AsyncClient(timeout=30) as client:
            request = await start_request(client, car, 2000)
            answer = await client.get(f"{car.admin}/shutdown")
            shutdown_done = time.monotonic()
            response, completed = await request
        assert response.status_code == 200
        assert response.json()["ms"] == 2000
        assert response.headers["X-Sidecar-Closing"] == car.status()["instance_id"]
        assert answer.status_code == 200
        body = answer.json()
        assert body["drained"] is True
        assert body["inflight"] == 0
        assert body["deregistered"] is True
        # /shutdown answered after the response was complete: the drain did not end early ...
        assert body["seconds"] >= 1.5
        # ... and not much later than the quiet period after it.
        assert completed <= shutdown_done + SAME_TURN_SLACK_S
        assert shutdown_done - completed <= QUIET + 0.5
        assert car.status()["instance_id"] not in registered_ids(registry_url, "svc")


async def test_drain_timeout_gives_504(tmp_path: Path, registry_url: str) -> None:
    """A request longer than --drain-timeout: 504 with drained false and inflight 1."""
    args = ("--quiet-period", str(QUIET), "--drain-timeout", "1")
    with demo_app(tmp_path) as app, sidecar(tmp_path, registry_url, app, *args) as car:
        async with httpx.AsyncClient(timeout=30) as client:
            request = await start_request(client, car, 4000)
            answer = await client.get(f"{car.admin}/shutdown")
            request.cancel()
        assert answer.status_code == 504
        body = answer.json()
        assert body["drained"] is False
        assert body["inflight"] == 1
        assert 0.9 <= body["seconds"] < 3


async def test_concurrent_shutdowns_share_one_result(tmp_path: Path, registry_url: str) -> None:
    """Three concurrent GET /shutdown and one later one get identical bodies; one deregistration."""
    with demo_app(tmp_path) as app, sidecar(tmp_path, registry_url, app, "--quiet-period", str(QUIET)) as car:
        async with httpx.AsyncClient(timeout=30) as client:
            request = await start_request(client, car, 800)
            answers = await asyncio.gather(*(client.get(f"{car.admin}/shutdown") for _ in range(3)))
            later = await client.get(f"{car.admin}/shutdown")
            posted = await client.post(f"{car.admin}/shutdown")
            response, _ = await request
            metrics = (await client.get(f"{car.admin}/metrics")).text
    assert response.status_code == 200
    bodies = [answer.json() for answer in [*answers, later, posted]]
    assert all(answer.status_code == 200 for answer in [*answers, later, posted])
    assert all(body == bodies[0] for body in bodies)
    assert 'sidecar_registry_operations_total{op="deregister"} 1.0' in metrics


async def test_sigterm_alone_drains_then_exits(tmp_path: Path, registry_url: str) -> None:
    """SIGTERM without /shutdown: the in-flight request completes and the instance has left the
    registry before the process exits 0."""
    with demo_app(tmp_path) as app, sidecar(tmp_path, registry_url, app, "--quiet-period", str(QUIET)) as car:
        instance_id = car.status()["instance_id"]
        assert instance_id in registered_ids(registry_url, "svc")
        async with httpx.AsyncClient(timeout=30) as client:
            request = await start_request(client, car, 1500)
            car.signal(signal.SIGTERM)
            response, _ = await request
            exit_code = await asyncio.to_thread(car.proc.wait, 20)
        assert response.status_code == 200
        assert exit_code == 0
        # Deregistered, not expired: Consul keeps a dead TTL instance for a minute or more.
        assert instance_id not in registered_ids(registry_url, "svc")


def test_sigterm_after_shutdown_exits_at_once(tmp_path: Path, registry_url: str) -> None:
    """After a finished /shutdown, SIGTERM exits at once with status 0."""
    with demo_app(tmp_path) as app, sidecar(tmp_path, registry_url, app, "--quiet-period", str(QUIET)) as car:
        assert httpx.get(f"{car.admin}/shutdown", timeout=30, verify=False).status_code == 200
        started = time.monotonic()
        car.signal(signal.SIGTERM)
        assert car.proc.wait(10) == 0
        assert time.monotonic() - started < 2


async def test_second_sigterm_forces_exit(tmp_path: Path, registry_url: str) -> None:
    """A second SIGTERM during a drain forces exit (128 + 15) without waiting for the drain."""
    args = ("--quiet-period", str(QUIET), "--drain-timeout", "30")
    with demo_app(tmp_path) as app, sidecar(tmp_path, registry_url, app, *args) as car:
        async with httpx.AsyncClient(timeout=30) as client:
            request = await start_request(client, car, 20000)
            car.signal(signal.SIGTERM)
            await await_for(lambda: car.status()["phase"] == "draining", what="phase draining")
            started = time.monotonic()
            car.signal(signal.SIGTERM)
            exit_code = await asyncio.to_thread(car.proc.wait, 10)
            request.cancel()
        assert exit_code == 128 + signal.SIGTERM
        assert time.monotonic() - started < 5


async def test_consumers_are_notified(tmp_path: Path, registry_url: str, unused_tcp_port: int) -> None:
    """A request carrying X-Sidecar-Consumer leads to a POST /notify to that address on shutdown."""
    received: list[tuple[dict[str, Any], str | None]] = []

    async def notify(request: web.Request) -> web.Response:
        received.append((await request.json(), request.headers.get("Authorization")))
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/notify", notify)
    runner = web.AppRunner(receiver)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    consumer = f"http://127.0.0.1:{unused_tcp_port}"
    try:
        args = ("--quiet-period", str(QUIET), "--token", "fleet-secret")
        with demo_app(tmp_path) as app, sidecar(tmp_path, registry_url, app, *args) as car:
            async with httpx.AsyncClient(timeout=30) as client:
                response = await client.get(f"{car.url}/work", headers={"X-Sidecar-Consumer": consumer})
                assert response.status_code == 200
                assert response.json()["ms"] == 0
                answer = await client.get(f"{car.admin}/shutdown")
            status = car.status()
    finally:
        await runner.cleanup()
    assert answer.json()["notified"] == 1
    assert received == [
        (
            {
                "service": "svc",
                "instance_id": status["instance_id"],
                "address": _address(car),
                "event": "offline",
            },
            "Bearer fleet-secret",
        )
    ]


def _address(car: SidecarProc) -> str:
    return f"127.0.0.1:{car.listen_port}"


def test_refused_after_drain_never_reaches_app(tmp_path: Path, registry_url: str) -> None:
    """After the drain: 503 + X-Sidecar-Refused, and the app never saw the request."""
    with demo_app(tmp_path) as app, sidecar(tmp_path, registry_url, app, "--quiet-period", "0") as car:
        assert httpx.get(f"{car.admin}/shutdown", timeout=30, verify=False).json()["drained"] is True
        marker = "/work?ms=1&marker=after-drain"
        response = httpx.get(car.url + marker, timeout=10, verify=False)
        assert response.status_code == 503
        assert response.headers["X-Sidecar-Refused"] == car.status()["instance_id"]
        assert "error" in response.json()
        seen = app.stats()["paths"]
        assert "/health" in seen  # the app does record what it sees
        assert marker not in seen


def test_app_gets_sigterm_with_nothing_in_flight(tmp_path: Path, registry_url: str) -> None:
    """The preStop order (/shutdown, then SIGTERM to the app) leaves the app nothing in flight.
    The requests wait on a gate of the app, opened once the drain has begun: however slow the
    machine, all 8 are in flight when /shutdown is called."""
    with demo_app(tmp_path) as app, sidecar(tmp_path, registry_url, app, "--quiet-period", "0.2") as car:
        results: list[int] = []

        async def load() -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                tasks = [
                    asyncio.create_task(client.get(f"{car.url}/wait", params={"gate": "g"})) for _ in range(8)
                ]
                await await_for(lambda: car.status()["inflight"] == 8, what="8 requests in flight")
                shutdown = asyncio.create_task(client.get(f"{car.admin}/shutdown"))
                await await_for(lambda: car.status()["phase"] == "draining", what="the drain")
                open_gate(app, "g")
                assert (await shutdown).json()["drained"] is True
                results.extend(response.status_code for response in await asyncio.gather(*tasks))

        asyncio.run(load())
        _terminate(app)
        assert results == [200] * 8
        assert app.sigterm_record()["inflight_at_sigterm"] == 0


def _terminate(app: AppProc) -> None:
    app.proc.send_signal(signal.SIGTERM)
    app.proc.wait(10)
    wait_for(app.stats_file.exists, what="the app's record")
    json.loads(app.stats_file.read_text())


@pytest.mark.parametrize("registry_url", ["sqlite"], indirect=True)
def test_shutdown_command_waits_and_reports(tmp_path: Path, registry_url: str) -> None:
    """`graceful-sidecar shutdown` calls /shutdown, prints the result and exits 0 once drained."""
    import subprocess
    import sys

    with demo_app(tmp_path) as app, sidecar(tmp_path, registry_url, app, "--quiet-period", "0") as car:
        done = subprocess.run(
            [sys.executable, "-m", "sidecar", "shutdown", "--admin", f"127.0.0.1:{car.admin_port}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["drained"] is True


def test_odd_consumer_headers_cannot_break_a_drain(tmp_path: Path, registry_url: str) -> None:
    """X-Sidecar-Consumer values that are not a consumer's own address (another host, a host
    name, garbage) are not remembered, so nothing is sent there and the drain completes."""
    with demo_app(tmp_path) as app, sidecar(tmp_path, registry_url, app, "--quiet-period", "0") as car:
        for value in (
            "http://xn--.com:16688",
            "http://192.0.2.7:16688",
            "http://127.0.0.2:16688",
            "x" * 600,
        ):
            assert (
                httpx.get(f"{car.url}/work", headers={"X-Sidecar-Consumer": value}, verify=False).status_code
                == 200
            )
        assert car.status()["consumers"] == 0
        answer = httpx.get(f"{car.admin}/shutdown", timeout=30, verify=False)
    assert answer.status_code == 200
    assert answer.json()["drained"] is True
    assert answer.json()["notified"] == 0
