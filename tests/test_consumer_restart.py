"""A consumer sidecar restarted with SIGTERM while its app's requests flow through it (found by
the chaos soak, bench/soak.py): a request either never reaches it (the connection is refused,
safe to send again) or is answered; none is cut off after it was sent."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import httpx

from registry_adapters import Instance
from sidecar.config import load_settings
from sidecar.consumer.upstream import Upstreams
from sidecar.metrics import Metrics
from tests.support.ports import free_port
from tests.support.procs import await_for, demo_app, sidecar, stop_process
from tests.test_instances import ScriptedRegistry

CLIENTS = 16  # of each method
LOAD_BEFORE = 5  # answers per client, on average, before the restart
LOAD_AFTER_S = 1.5  # of answered requests once the consumer is back
DEADLINE_S = 60.0


def start_again(argv: list[str], tmp_path: Path) -> subprocess.Popen[bytes]:
    with open(tmp_path / "restarted.log", "wb") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)


async def test_restart_under_load_loses_nothing_that_was_sent(tmp_path: Path) -> None:
    """SIGTERM to a consumer sidecar under 32 keep-alive clients, then the same sidecar started
    again on the same ports: every failure is a refused connection, never a request cut off or
    a 503 from a sidecar that answers before it knows any instance."""
    registry = f"sqlite://{tmp_path / 'r.db'}"
    port = free_port()
    url = f"http://127.0.0.1:{port}/work"
    with ExitStack() as stack:
        app = stack.enter_context(demo_app(tmp_path))
        stack.enter_context(sidecar(tmp_path, registry, app, "--instance-id", "provider"))
        consumer = stack.enter_context(
            sidecar(tmp_path, registry, None, "--upstream", f"svc=127.0.0.1:{port}", service="client")
        )
        await await_for(
            lambda: httpx.get(url, params={"ms": 0}, verify=False).status_code == 200, what="the upstream"
        )
        outcomes: Counter[str] = Counter()
        answered_after = 0
        restarted = asyncio.Event()
        finish = asyncio.Event()

        async def client(method: str) -> None:
            nonlocal answered_after
            async with httpx.AsyncClient(timeout=30) as http:
                while not finish.is_set():
                    try:
                        response = await http.request(method, url, params={"ms": 50}, content=b"{}")
                        outcome = (
                            "200"
                            if response.status_code == 200
                            else f"{response.status_code} {response.text}"
                        )
                        answered_after += restarted.is_set() and response.status_code == 200
                    except httpx.HTTPError as exc:
                        outcome = exc.__class__.__name__
                        await asyncio.sleep(0.02)  # an app does not spin on a refused port
                    outcomes[outcome] += 1

        clients = [asyncio.create_task(client(method)) for method in ("GET", "POST") for _ in range(CLIENTS)]
        try:
            # Load flowing (the state under test): five answers per client on average.
            await await_for(lambda: outcomes["200"] >= LOAD_BEFORE * 2 * CLIENTS, what="load flowing")
            consumer.signal(signal.SIGTERM)
            await asyncio.to_thread(consumer.proc.wait, DEADLINE_S)
            stack.callback(stop_process, await asyncio.to_thread(start_again, consumer.args, tmp_path))
            await await_for(
                lambda: httpx.get(f"{consumer.admin}/ready", verify=False).status_code == 200, what="restart"
            )
            restarted.set()
            started = time.monotonic()
            await await_for(lambda: time.monotonic() - started > LOAD_AFTER_S and answered_after > 50)
        finally:
            finish.set()
            await asyncio.gather(*clients)
    assert set(outcomes) <= {"200", "ConnectError"}, outcomes


async def test_request_before_the_first_answer_waits_for_it(tmp_path: Path) -> None:
    """A request that reaches a just-started upstream listener before the registry's first answer
    waits for that answer and is forwarded, instead of failing with 503 for want of an instance."""
    registry = ScriptedRegistry()
    port = free_port()
    settings = load_settings({"service": "client", "upstream": [f"svc=127.0.0.1:{port}"]}, env={})
    with demo_app(tmp_path) as app:
        async with (
            Upstreams(settings, registry, Metrics()) as upstreams,
            httpx.AsyncClient(timeout=30) as http,
        ):
            server = upstreams.listeners["svc"].server
            request = asyncio.create_task(http.get(f"http://127.0.0.1:{port}/work", params={"ms": 0}))
            await await_for(
                lambda: any(c.current is not None for c in server.connections), what="the request"
            )
            await registry.answer([Instance("svc", "provider", "127.0.0.1", app.port)])
            response = await request
    assert response.status_code == 200, response.text
