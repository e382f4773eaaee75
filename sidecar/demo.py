"""`graceful-sidecar demo`: one instance taken offline under load, every number measured live.

A bundled demo app runs behind a provider sidecar registered in the embedded SQLite registry
(or `--registry consul://...`). Clients keep requests in flight through the sidecar; then
`/shutdown` is called the way a Kubernetes preStop hook does, and the clients stop calling the
instance as soon as a response says it is closing (what a consumer sidecar does). Finally the app
gets SIGTERM. The summary shows what happened: requests served and failed, the drain's duration,
the registry before and after, and how many requests the app had in flight when SIGTERM came.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import AsyncExitStack, aclosing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from registry_adapters import Instance, open_registry

CLIENTS = 8
# Mixed request durations, as in the design's scenarios.
WORK_MS = (20, 300)
LOAD_BEFORE_SHUTDOWN_SECONDS = 2.0
READY_TIMEOUT_SECONDS = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class LoadStats:
    codes: Counter[str] = field(default_factory=Counter)
    closing_seen: int = 0
    latencies: list[float] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(count for code, count in self.codes.items() if code != "200")


@contextmanager
def process(argv: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process that is stopped (SIGTERM, then SIGKILL) when the block ends."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


async def wait_ready(client: httpx.AsyncClient, url: str) -> None:
    """Readiness of another process: a bounded wait on its probe."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        try:
            if (await client.get(url)).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not become ready within {READY_TIMEOUT_SECONDS:.0f} s")


async def registry_view(url: str, service: str) -> list[Instance]:
    async with open_registry(url) as registry, aclosing(registry.watch(service)) as watch:
        async for instances in watch:
            return instances
    return []


async def client_loop(client: httpx.AsyncClient, base: str, stats: LoadStats, stop: asyncio.Event) -> None:
    """One client: calls until told to stop or until the instance says it is closing."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            response = await client.get(f"{base}/work", params={"ms": random.randint(*WORK_MS)})
            stats.codes[str(response.status_code)] += 1
            stats.latencies.append(time.monotonic() - started)
            if "x-sidecar-closing" in response.headers:
                stats.closing_seen += 1
                return  # a consumer sidecar drops the instance at this point
        except httpx.HTTPError as exc:
            stats.codes[exc.__class__.__name__] += 1


async def demo(registry_url: str, workdir: Path) -> int:
    app_port, listen_port, admin_port = free_port(), free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    stats_file = workdir / "app-stats.json"
    sidecar = [sys.executable, "-m", "sidecar", "run", "--service", "demo", "--instance-id", "demo-1"]
    sidecar += ["--listen", f"127.0.0.1:{listen_port}", "--app", f"http://127.0.0.1:{app_port}"]
    sidecar += ["--admin", f"127.0.0.1:{admin_port}", "--registry", registry_url, "--log-format", "json"]
    sidecar += ["--quiet-period", "0.5", "--drain-timeout", "10"]
    app = [sys.executable, "-m", "sidecar.demo_app", "--port", str(app_port), "--name", "demo-1"]
    app += ["--stats-file", str(stats_file), "--startup-delay", "0.5"]

    print(f"registry: {registry_url}")
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=30, trust_env=False))
        app_proc = stack.enter_context(process(app, workdir / "app.log"))
        sidecar_proc = stack.enter_context(process(sidecar, workdir / "sidecar.log"))
        started = time.monotonic()
        await wait_ready(client, f"{admin}/ready")
        print(f"sidecar ready after {time.monotonic() - started:.2f} s (app healthy, then registered)")
        for instance in await registry_view(registry_url, "demo"):
            print(f"  registry: {instance.instance_id} at {instance.address}, weight {instance.weight}")

        stats, stop = LoadStats(), asyncio.Event()
        load = [
            asyncio.create_task(client_loop(client, f"http://127.0.0.1:{listen_port}", stats, stop))
            for _ in range(CLIENTS)
        ]
        await asyncio.sleep(LOAD_BEFORE_SHUTDOWN_SECONDS)  # let the load run: this is a demonstration
        inflight = (await client.get(f"{admin}/status")).json()["inflight"]
        print(f"{CLIENTS} clients calling; {inflight} requests in flight; GET /shutdown ...")
        shutdown_started = time.monotonic()
        answer = await client.get(f"{admin}/shutdown")
        shutdown_seconds = time.monotonic() - shutdown_started
        stop.set()
        await asyncio.gather(*load)
        after = await registry_view(registry_url, "demo")
        refused = await client.get(f"http://127.0.0.1:{listen_port}/work")

        app_proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(app_proc.wait, 10)
        sidecar_proc.send_signal(signal.SIGTERM)
        sidecar_exit = await asyncio.to_thread(sidecar_proc.wait, 10)
        app_record = json.loads(stats_file.read_text()) if stats_file.exists() else {}

    body = answer.json()
    ok = stats.codes.get("200", 0)
    latencies = sorted(stats.latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else 0.0
    print()
    print(f"/shutdown answered {answer.status_code} after {shutdown_seconds:.2f} s: {json.dumps(body)}")
    print(
        f"requests: {sum(stats.codes.values())} sent, {ok} OK, {stats.failed} failed, p99 {p99 * 1000:.0f} ms"
    )
    print(f"clients told 'closing' by the sidecar: {stats.closing_seen} of {CLIENTS}")
    print(f"registry after /shutdown: {[i.instance_id for i in after] or 'no instance of demo'}")
    refused_by = refused.headers.get("x-sidecar-refused")
    print(f"a request after the drain: {refused.status_code}, X-Sidecar-Refused: {refused_by}")
    print(f"app's requests in flight when it got SIGTERM: {app_record.get('inflight_at_sigterm', 'unknown')}")
    print(f"sidecar exit status after SIGTERM: {sidecar_exit}")
    lossless = stats.failed == 0 and body.get("drained") and app_record.get("inflight_at_sigterm") == 0
    print("result: " + ("no request lost" if lossless else "REQUESTS LOST"))
    return 0 if lossless else 1


def run_demo(registry: str | None) -> int:
    with tempfile.TemporaryDirectory(prefix="graceful-sidecar-demo-") as tmp:
        workdir = Path(tmp)
        url = registry or f"sqlite://{workdir / 'registry.db'}"
        os.environ.setdefault("PYTHONUNBUFFERED", "1")
        try:
            return asyncio.run(demo(url, workdir))
        except (RuntimeError, OSError, httpx.HTTPError) as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            for log in sorted(workdir.glob("*.log")):
                print(f"--- {log.name}\n{log.read_text()[-3000:]}", file=sys.stderr)
            return 1
