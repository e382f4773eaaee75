"""Real processes for black-box tests: the bundled demo app and the sidecar, on free ports.

Each helper is a context manager that stops its process by pid (SIGTERM, then SIGKILL) on exit.
Readiness of another process is awaited with a bounded loop on its probe: the only way to
observe a process we do not share memory with.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.ports import free_port

DEADLINE_SECONDS = 20.0


def _check(condition: Callable[[], Any]) -> Any:
    try:
        return condition()
    except (httpx.HTTPError, OSError, ValueError):
        return None  # not up yet, or answering something else: try again


def wait_for(condition: Callable[[], Any], timeout: float = DEADLINE_SECONDS, what: str = "condition") -> Any:
    """Bounded wait for something another process does; returns the first truthy value."""
    deadline = time.monotonic() + timeout
    while not (value := _check(condition)):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return value


async def await_for(
    condition: Callable[[], Any], timeout: float = DEADLINE_SECONDS, what: str = "condition"
) -> Any:
    """`wait_for` for async tests: the event loop keeps running while it waits."""
    deadline = time.monotonic() + timeout
    while not (value := _check(condition)):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)
    return value


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


@dataclass
class AppProc:
    proc: subprocess.Popen[bytes]
    port: int
    stats_file: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = httpx.get(f"{self.url}/stats", timeout=5).json()
        return result

    def sigterm_record(self) -> dict[str, Any]:
        record: dict[str, Any] = json.loads(self.stats_file.read_text())
        return record


@contextmanager
def demo_app(
    tmp_path: Path, name: str = "app", startup_delay: float = 0.0, wait: bool = True
) -> Iterator[AppProc]:
    port = free_port()
    stats_file = tmp_path / f"{name}-{port}-stats.json"
    argv = [sys.executable, "-m", "sidecar.demo.app", "--port", str(port), "--name", name]
    argv += ["--stats-file", str(stats_file), "--startup-delay", str(startup_delay)]
    log = open(tmp_path / f"{name}-{port}.log", "wb")  # noqa: SIM115 - kept open for the child
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    app = AppProc(proc, port, stats_file)
    try:
        if wait:
            wait_for(lambda: httpx.get(f"{app.url}/stats", timeout=1).status_code == 200, what=f"app {name}")
        yield app
    finally:
        stop_process(proc)
        log.close()


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
        return httpx.get(f"{self.admin}{path}", timeout=1).status_code == 200

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{self.admin}/status", timeout=5).json()
        return body

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        os.kill(self.proc.pid, signum)


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
    argv = [sys.executable, "-m", "sidecar", "run", "--service", service, "--registry", registry]
    argv += ["--admin", f"127.0.0.1:{admin_port}", "--log-format", "json"]
    if app is not None:
        argv += ["--listen", f"127.0.0.1:{listen_port}", "--app", app.url]
    argv += list(args)
    log_path = tmp_path / f"sidecar-{admin_port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - kept open for the child
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    car = SidecarProc(proc, admin_port, listen_port, log_path, argv)
    try:
        if wait == "ready":
            car.wait_ready()
        elif wait == "live":
            car.wait_live()
        yield car
    finally:
        stop_process(proc)
        log.close()


@contextmanager
def sidecar_in_front(
    tmp_path: Path, registry: str, app_url: str, *args: str, service: str = "svc", wait: str = "ready"
) -> Iterator[SidecarProc]:
    """A provider sidecar in front of an app given by its URL (one the test runs itself, e.g. a
    scripted app), listening on a free port of its own."""
    listen_port = free_port()
    argv = ("--listen", f"127.0.0.1:{listen_port}", "--app", app_url, *args)
    with sidecar(tmp_path, registry, None, *argv, service=service, wait=wait) as car:
        car.listen_port = listen_port
        yield car


def open_gate(app: AppProc, gate: str) -> None:
    """Opens gate `gate` of the demo app: requests waiting on it (`/wait`, `/chunks`) go on."""
    httpx.post(f"{app.url}/open", params={"gate": gate}, timeout=5).raise_for_status()


class Fleet:
    """A demo app behind a provider sidecar, and a consumer sidecar in front of that."""

    def __init__(
        self, app: AppProc, provider: SidecarProc, consumer: SidecarProc, consumer_port: int
    ) -> None:
        self.app = app
        self.provider = provider
        self.consumer = consumer
        self.consumer_url = f"http://127.0.0.1:{consumer_port}"
