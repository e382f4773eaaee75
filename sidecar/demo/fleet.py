"""A fleet of real processes on loopback: apps behind provider sidecars, and consumer sidecars
with an upstream listener each. Used by `graceful-sidecar demo`, the end-to-end tests and the
benchmarks.

Every process gets free ports of its own and a log file in the fleet's work dir, and is stopped by
pid when the fleet closes: the providers first, all at once, while their consumers still listen
for the offline notifications; then the consumers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from sidecar.demo.ports import free_port
from sidecar.demo.processes import spawn, stop_processes, wait_for, wait_http_ok

# Two Python processes to start per provider: on a loaded machine that takes seconds.
READY_TIMEOUT_SECONDS = 30.0
# The demo app answers /health 503 this long after it starts, so that a sidecar's starting phase
# (waiting for the app's health before registering) shows in the demo.
APP_STARTUP_DELAY_SECONDS = 0.3


def demo_app_argv(
    port: int,
    name: str,
    stats_file: Path | None = None,
    startup_delay: float = 0.0,
    extra: Sequence[str] = (),
) -> list[str]:
    """The bundled demo app (sidecar/demo/app.py) on 127.0.0.1:`port`; `extra`: more of its
    options (a cold start: `--cold-requests N`, `--cold-seconds S`)."""
    argv = [sys.executable, "-m", "sidecar.demo.app", "--port", str(port), "--name", name]
    if stats_file is not None:
        argv += ["--stats-file", str(stats_file)]
    return [*argv, "--startup-delay", str(startup_delay), *extra]


def sidecar_argv(registry: str, admin_port: int, *args: str) -> list[str]:
    """`graceful-sidecar run` with its admin API on 127.0.0.1:`admin_port` and JSON logs."""
    argv = [sys.executable, "-m", "sidecar", "run", "--registry", registry, "--log-format", "json"]
    return [*argv, "--admin", f"127.0.0.1:{admin_port}", *args]


def _get_json(url: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(url, timeout=5, trust_env=False, verify=False).json()
    return body


@dataclass
class Provider:
    name: str  # also its instance id
    app: subprocess.Popen[bytes]
    sidecar: subprocess.Popen[bytes]
    app_url: str
    listen: str  # host:port where its sidecar takes the app's traffic
    admin: str
    stats_file: Path | None
    started: float  # time.monotonic() when it was spawned
    ready_at: float  # time.monotonic() when /ready answered 200

    def inflight_at_sigterm(self) -> int | None:
        """What the demo app recorded when SIGTERM reached it (None if it never did)."""
        if self.stats_file is None or not self.stats_file.exists():
            return None
        record: dict[str, Any] = json.loads(self.stats_file.read_text())
        return int(record["inflight_at_sigterm"])

    def status(self) -> dict[str, Any]:
        return _get_json(f"{self.admin}/status")


@dataclass
class Consumer:
    name: str
    sidecar: subprocess.Popen[bytes]
    admin_port: int
    upstream_port: int

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def url(self) -> str:
        """Its upstream listener: the fleet's service, balanced over the providers it knows."""
        return f"http://127.0.0.1:{self.upstream_port}"

    def status(self) -> dict[str, Any]:
        return _get_json(f"{self.admin}/status")

    def instances(self, service: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.status()["upstreams"][service]["instances"]
        return found

    def knows(self, service: str) -> set[str]:
        """The instances of `service` it would send to."""
        return {row["instance_id"] for row in self.instances(service) if not row["dropped"]}


@dataclass
class Fleet:
    """`app_command`, if given, replaces the demo app: a command that takes `--port N --name X`."""

    workdir: Path
    registry: str
    service: str = "demo"
    sidecar_args: Sequence[str] = ()  # given to every sidecar of the fleet
    app_command: Sequence[str] | None = None
    app_startup_delay: float = APP_STARTUP_DELAY_SECONDS
    ready_timeout: float = READY_TIMEOUT_SECONDS
    providers: list[Provider] = field(default_factory=list)  # every one started, stopped or not
    consumers: list[Consumer] = field(default_factory=list)

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stop_processes([proc for p in self.providers for proc in (p.sidecar, p.app)])
        stop_processes([consumer.sidecar for consumer in self.consumers])

    def _sidecar_argv(self, admin_port: int, *args: str) -> list[str]:
        return sidecar_argv(self.registry, admin_port, *self.sidecar_args, *args)

    def _app_argv(self, port: int, name: str, stats_file: Path, app_args: Sequence[str]) -> list[str]:
        if self.app_command is not None:
            return [*self.app_command, "--port", str(port), "--name", name, *app_args]
        return demo_app_argv(port, name, stats_file, self.app_startup_delay, app_args)

    def start_provider(self, name: str, *args: str, app_args: Sequence[str] = ()) -> Provider:
        """An app (with `app_args`) and its provider sidecar (instance id `name`, with `args`);
        returns once /ready answers 200."""
        app_port, listen_port, admin_port = free_port(), free_port(), free_port()
        stats_file = self.workdir / f"{name}-stats.json"
        started = time.monotonic()
        app_argv = self._app_argv(app_port, name, stats_file, app_args)
        app = spawn(app_argv, self.workdir / f"app-{name}.log")
        app_url, listen = f"http://127.0.0.1:{app_port}", f"127.0.0.1:{listen_port}"
        identity = ("--service", self.service, "--instance-id", name)
        argv = self._sidecar_argv(admin_port, *identity, "--listen", listen, "--app", app_url, *args)
        car = spawn(argv, self.workdir / f"sidecar-{name}.log")
        admin = f"http://127.0.0.1:{admin_port}"
        stats = stats_file if self.app_command is None else None
        provider = Provider(name, app, car, app_url, listen, admin, stats, started, started)
        self.providers.append(provider)
        wait_http_ok(f"{admin}/ready", self.ready_timeout)
        provider.ready_at = time.monotonic()
        return provider

    def start_consumer(
        self, name: str = "consumer", *args: str, ports_of: Consumer | None = None
    ) -> Consumer:
        """A consumer-only sidecar (service `name`) with an upstream listener for the fleet's
        service; on the ports of `ports_of` if given (a restart). Returns once /ready answers 200."""
        admin_port, upstream_port = (
            (ports_of.admin_port, ports_of.upstream_port) if ports_of else (free_port(), free_port())
        )
        upstream = f"{self.service}=127.0.0.1:{upstream_port}"
        argv = self._sidecar_argv(admin_port, "--service", name, "--upstream", upstream, *args)
        consumer = Consumer(name, spawn(argv, self.workdir / f"{name}.log"), admin_port, upstream_port)
        self.consumers.append(consumer)
        wait_http_ok(f"{consumer.admin}/ready", self.ready_timeout)
        return consumer

    def wait_consumer_knows(self, consumer: Consumer, count: int) -> None:
        wait_for(
            lambda: len(consumer.knows(self.service)) == count,
            self.ready_timeout,
            f"{consumer.name} to know {count} instances",
        )
