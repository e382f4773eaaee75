"""A small fleet of real processes on loopback: demo apps behind provider sidecars, and a
consumer sidecar with an upstream listener. Used by `graceful-sidecar demo` and the benchmarks.

Every process is started with its own free ports and log file, and stopped by pid when the
fleet closes (SIGTERM, then SIGKILL). Waiting for another process's probe is a bounded loop:
there is no other way to observe a process we do not share memory with.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

READY_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0


# Servers of tests, the demo and benchmarks listen below Linux's ephemeral range (32768 and up),
# where no outgoing connection can take a port between the moment it is found free and the
# moment the server binds it; each pytest-xdist worker searches a slice of its own.
PORT_BASE, PORT_SPAN = 20000, 12000
# Ports handed out by this process: a port closed again is free to the kernel, which may hand
# it out twice in a row (seen: --listen and --admin given the same port). Never reuse one here.
_handed_out: set[int] = set()


def _port_slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker.removeprefix("gw")) if worker.startswith("gw") else 0
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    size = PORT_SPAN // count
    return range(PORT_BASE + index * size, PORT_BASE + (index + 1) * size)


def free_port() -> int:
    """A port on 127.0.0.1 that is free for TCP and UDP right now.

    UDP is checked too because Consul's Serf ports listen on both. The port is released before it
    is returned, so another process may still take it: good enough for loopback runs, not a
    reservation. The search starts at a random place, so that concurrent runs rarely meet.
    """
    ports = _port_slice()
    start = random.randrange(len(ports))
    for offset in range(len(ports)):
        port = ports[(start + offset) % len(ports)]
        if port in _handed_out:
            continue
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                tcp.bind(("127.0.0.1", port))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port left in {ports.start}-{ports.stop - 1}")


def wait_http_ok(url: str, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s")
        time.sleep(0.05)


def stop(proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(signum)
        try:
            return proc.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


def stop_all(procs: list[subprocess.Popen[bytes]], signals: list[int] | None = None) -> None:
    """Signal every live process at once (SIGTERM unless `signals` gives one each), then wait
    for them all; SIGKILL whatever is still there when the stop timeout ends."""
    for proc, signum in zip(procs, signals or [signal.SIGTERM] * len(procs), strict=True):
        if proc.poll() is None:
            proc.send_signal(signum)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Provider:
    name: str
    app: subprocess.Popen[bytes]
    sidecar: subprocess.Popen[bytes]
    admin: str
    stats_file: Path
    ready_at: float  # time.monotonic() when /ready answered 200

    def inflight_at_sigterm(self) -> int | None:
        """What the app recorded when SIGTERM reached it (None if it never did)."""
        import json

        if not self.stats_file.exists():
            return None
        record: dict[str, Any] = json.loads(self.stats_file.read_text())
        return int(record["inflight_at_sigterm"])


class Fleet:
    def __init__(self, workdir: Path, registry: str, service: str = "demo") -> None:
        self.workdir = workdir
        self.registry = registry
        self.service = service
        self.upstream_port = free_port()
        self.consumer_admin = ""
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for proc in reversed(self._procs):
            stop(proc)

    @property
    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{log_name}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self._procs.append(proc)
        return proc

    def _sidecar_argv(self, admin_port: int, *args: str) -> list[str]:
        argv = [sys.executable, "-m", "sidecar", "run", "--registry", self.registry, "--log-format", "json"]
        return [*argv, "--admin", f"127.0.0.1:{admin_port}", *args]

    def start_provider(self, name: str, *args: str) -> Provider:
        """A demo app and its provider sidecar; returns once /ready answers 200."""
        app_port, listen_port, admin_port = free_port(), free_port(), free_port()
        stats_file = self.workdir / f"{name}-stats.json"
        app_argv = [sys.executable, "-m", "sidecar.demo.app", "--port", str(app_port), "--name", name]
        app = self._spawn(
            [*app_argv, "--stats-file", str(stats_file), "--startup-delay", "0.3"], f"app-{name}"
        )
        identity = ("--service", self.service, "--instance-id", name)
        proxy = ("--listen", f"127.0.0.1:{listen_port}", "--app", f"http://127.0.0.1:{app_port}")
        car = self._spawn(self._sidecar_argv(admin_port, *identity, *proxy, *args), f"sidecar-{name}")
        admin = f"http://127.0.0.1:{admin_port}"
        wait_http_ok(f"{admin}/ready")
        return Provider(name, app, car, admin, stats_file, time.monotonic())

    def start_consumer(self, *args: str) -> str:
        """A consumer-only sidecar with an upstream listener for the service; returns its admin URL."""
        admin_port = free_port()
        upstream = f"{self.service}=127.0.0.1:{self.upstream_port}"
        self._spawn(
            self._sidecar_argv(admin_port, "--service", "consumer", "--upstream", upstream, *args), "consumer"
        )
        self.consumer_admin = f"http://127.0.0.1:{admin_port}"
        wait_http_ok(f"{self.consumer_admin}/ready")
        return self.consumer_admin

    def consumer_instances(self) -> list[dict[str, Any]]:
        status = httpx.get(f"{self.consumer_admin}/status", timeout=5, trust_env=False).json()
        instances: list[dict[str, Any]] = status["upstreams"][self.service]["instances"]
        return instances

    def wait_consumer_knows(self, count: int, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while sum(not i["dropped"] for i in self.consumer_instances()) != count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the consumer did not see {count} instances within {timeout:.0f} s")
            time.sleep(0.05)

    @staticmethod
    def stop_with_sidecar(provider: Provider) -> dict[str, Any]:
        """Kubernetes with the sidecar: preStop GET /shutdown (drain), then SIGTERM to both."""
        answer = httpx.get(f"{provider.admin}/shutdown", timeout=60, trust_env=False)
        stop(provider.app)
        stop(provider.sidecar)
        body: dict[str, Any] = answer.json()
        return body

    @staticmethod
    def stop_plain(provider: Provider) -> None:
        """A plain deployment: the app gets SIGTERM and stops at once, still registered. Its
        sidecar is killed at the same moment, as if it were not there: nothing drains or
        deregisters it (the registry forgets it when its heartbeat expires), and nothing answers
        for the app while it stops."""
        provider.sidecar.send_signal(signal.SIGKILL)
        provider.app.send_signal(signal.SIGTERM)
        stop(provider.sidecar, signal.SIGKILL)
        stop(provider.app)
