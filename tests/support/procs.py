"""Real processes for black-box tests: the bundled demo app and the sidecar, on free ports.

Each helper is a context manager that stops its process by pid (SIGTERM, then SIGKILL) on exit.
Starting, stopping and the bounded waits on another process's probe are the demo's tooling
(sidecar.demo.processes), shared with the benchmarks; this module adds what tests need on top.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from sidecar.demo.fleet import demo_app_argv, sidecar_argv
from sidecar.demo.ports import free_port
from sidecar.demo.processes import DEADLINE_SECONDS, await_for, spawn, stop_process, wait_for

__all__ = [
    "AppProc",
    "SidecarChain",
    "SidecarProc",
    "await_for",
    "consumer_of",
    "demo_app",
    "metric",
    "open_gate",
    "port_of",
    "sidecar",
    "sidecar_in_front",
    "stop_process",
    "wait_for",
]

# Every HTTP call of the tests goes to loopback in plain HTTP, and says verify=False: httpx.get()
# builds a client per call, and with certificate checks on, a TLS context that loads the CA
# bundle, some 40 ms of CPU each time; a test polling every 50 ms spent most of a core on it.


@dataclass
class AppProc:
    proc: subprocess.Popen[bytes]
    port: int
    stats_file: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"{self.url}/stats", timeout=5, verify=False).json()
        return result

    def sigterm_record(self) -> dict[str, Any]:
        record: dict[str, Any] = json.loads(self.stats_file.read_text())
        return record


@contextmanager
def demo_app(
    tmp_path: Path,
    name: str = "app",
    startup_delay: float = 0.0,
    wait: bool = True,
    *,
    cold: Sequence[str] = (),
) -> Iterator[AppProc]:
    """The demo app; `cold`: its cold-start options (`--cold-requests N`, `--cold-seconds S`)."""
    port = free_port()
    stats_file = tmp_path / f"{name}-{port}-stats.json"
    argv = demo_app_argv(port, name, stats_file, startup_delay, cold)
    proc = spawn(argv, tmp_path / f"{name}-{port}.log")
    app = AppProc(proc, port, stats_file)
    try:
        if wait:
            wait_for(
                lambda: httpx.get(f"{app.url}/stats", timeout=1, verify=False).status_code == 200,
                what=f"app {name}",
            )
        yield app
    finally:
        stop_process(proc)


# These records are the tests' own, one process each, with probes that report the sidecar's log
# when it exits early; sidecar.demo.fleet's Provider and Consumer are the fleet's, an app and
# its sidecar that a roll replaces together. Both build their command lines with the fleet's
# demo_app_argv and sidecar_argv, and stop and wait with sidecar.demo.processes.
@dataclass
class SidecarProc:
    proc: subprocess.Popen[bytes]
    admin_port: int
    listen_port: int | None
    log_path: Path
    args: list[str] = field(default_factory=list)

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    def wait_ready(self, timeout: float = DEADLINE_SECONDS) -> None:
        wait_for(lambda: self._probe("/ready"), timeout, "/ready 200")

    def wait_live(self) -> None:
        wait_for(lambda: self._probe("/live"), what="/live")

    def _probe(self, path: str) -> bool:
        if self.proc.poll() is not None:  # no point waiting: say why at once
            raise AssertionError(f"the sidecar exited with {self.proc.returncode}:\n{self.log()[-2000:]}")
        return httpx.get(f"{self.admin}{path}", timeout=1, verify=False).status_code == 200

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.admin}/status", timeout=5, verify=False).json()
        return body

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)

    def entered(self, phase: str) -> int:
        """When the sidecar entered `phase`, in wall-clock milliseconds, from its log's line
        `phase A -> PHASE` (the lifecycle logs it as it switches)."""
        for line in self.log().splitlines():
            if line.startswith("{") and (record := json.loads(line))["msg"].endswith(f" -> {phase}"):
                when = datetime.fromisoformat(record["ts"].replace("Z", "+00:00"))
                return round(when.timestamp() * 1000)
        raise AssertionError(f"the sidecar never entered phase {phase!r}:\n{self.log()[-2000:]}")


@contextmanager
def sidecar(
    tmp_path: Path,
    registry: str,
    app: AppProc | None = None,
    *args: str,
    service: str = "svc",
    wait: str = "ready",
) -> Iterator[SidecarProc]:
    """A provider sidecar in front of `app` (or consumer-only without one). `wait` is "ready",
    "live" or "" (do not wait)."""
    admin_port = free_port()
    listen_port = free_port() if app else None
    proxy = ("--listen", f"127.0.0.1:{listen_port}", "--app", app.url) if app is not None else ()
    argv = sidecar_argv(registry, admin_port, "--service", service, *proxy, *args)
    log_path = tmp_path / f"sidecar-{admin_port}.log"
    proc = spawn(argv, log_path)
    car = SidecarProc(proc, admin_port, listen_port, log_path, argv)
    try:
        if wait == "ready":
            car.wait_ready()
        elif wait == "live":
            car.wait_live()
        yield car
    finally:
        stop_process(proc)


@contextmanager
def sidecar_in_front(
    tmp_path: Path, registry: str, app_url: str, *args: str, service: str = "svc", wait: str = "ready"
) -> Iterator[SidecarProc]:
    """A provider sidecar in front of an app given by its URL (one the test runs itself, e.g. a
    raw app), listening on a free port of its own."""
    listen_port = free_port()
    argv = ("--listen", f"127.0.0.1:{listen_port}", "--app", app_url, *args)
    with sidecar(tmp_path, registry, None, *argv, service=service, wait=wait) as car:
        car.listen_port = listen_port
        yield car


@contextmanager
def consumer_of(
    tmp_path: Path, registry: str, instance_id: str, *args: str
) -> Iterator[tuple[SidecarProc, int]]:
    """A consumer sidecar (service `client`) with an upstream listener for `svc` on a free port,
    yielded with that port once the only instance it knows is `instance_id`."""
    port = free_port()
    upstream = ("--upstream", f"svc=127.0.0.1:{port}")
    with sidecar(tmp_path, registry, None, *upstream, *args, service="client") as car:

        def knows_provider() -> bool:
            rows = car.status()["upstreams"]["svc"]["instances"]
            return [row["instance_id"] for row in rows] == [instance_id]

        wait_for(knows_provider, what=f"the consumer to know {instance_id}")
        yield car, port


def port_of(car: SidecarProc) -> int:
    """The port a provider sidecar listens on for its app's callers."""
    assert car.listen_port is not None, "a consumer-only sidecar has no listener of its own"
    return car.listen_port


def open_gate(app: AppProc, gate: str) -> None:
    """Opens gate `gate` of the demo app: requests waiting on it (`/wait`, `/chunks`) go on."""
    httpx.post(f"{app.url}/open", params={"gate": gate}, timeout=5, verify=False).raise_for_status()


class SidecarChain:
    """A demo app behind a provider sidecar, and a consumer sidecar in front of that."""

    def __init__(
        self, app: AppProc, provider: SidecarProc, consumer: SidecarProc, consumer_port: int
    ) -> None:
        self.app = app
        self.provider = provider
        self.consumer = consumer
        self.consumer_url = f"http://127.0.0.1:{consumer_port}"


def metric(admin: str, sample: str, **labels: str) -> float:
    """The value of one Prometheus sample of a sidecar, 0.0 when it is not there (yet)."""
    text = httpx.get(f"{admin}/metrics", timeout=5, verify=False).text
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == sample and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return 0.0
