"""`graceful-sidecar exec` end to end: the offline sequence runs BEFORE the child is stopped.

Real sidecar processes in exec mode, with an app as the child (or grandchild, behind a startup
script), a real registry (SQLite and Consul) and real HTTP clients. What the issue asks for:
the app gets SIGTERM only once the instance has left the registry and nothing is in flight;
a child that exits on its own takes its instance out of the registry; /status shows the child.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.support.ports import free_port
from tests.support.procs import SidecarProc, await_for, wait_for
from tests.support.registry_view import instance_present, registered_ids

DEADLINE = 15.0
LOOK_EVERY = 0.02  # seconds between two looks at the registry

# The app role in its smallest form, run as the child: /health, /work?ms=N, /exit?code=N (exits
# with that code once answered). On SIGTERM it records the wall time and what it had in flight,
# then dies of SIGTERM's default action, as an app that knows nothing of graceful shutdown.
CHILD_APP = """\
import asyncio, json, os, signal, sys, time
from aiohttp import web

port, record = int(sys.argv[1]), sys.argv[2]
inflight = 0


def on_sigterm(signum, frame):
    at = time.time()
    with open(record + ".tmp", "w") as handle:
        json.dump({"sigterm_at": at, "inflight": inflight}, handle)
    os.replace(record + ".tmp", record)  # whole or absent for a reader
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


async def main():
    exit_code = asyncio.get_running_loop().create_future()

    async def health(request):
        return web.json_response({"healthy": True})

    async def work(request):
        global inflight
        inflight += 1
        try:
            await asyncio.sleep(int(request.query.get("ms", "0")) / 1000)
        finally:
            inflight -= 1
        return web.json_response({"instance": "child"})

    async def exit_(request):
        exit_code.set_result(int(request.query["code"]))
        return web.json_response({"exiting": exit_code.result()})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_route("*", "/work", work)
    app.router.add_get("/exit", exit_)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    code = await exit_code
    await runner.cleanup()  # answers /exit before leaving
    return code


signal.signal(signal.SIGTERM, on_sigterm)
sys.exit(asyncio.run(main()))
"""


@dataclass
class ExecSidecar(SidecarProc):
    """A `graceful-sidecar exec` process with --listen and --app; its stdout+stderr in a file."""

    child_pid: int = 0

    def log_entries(self) -> list[dict[str, Any]]:
        """The sidecar's JSON log lines (the child's own output, not JSON, is skipped)."""
        entries = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and "ts" in entry:
                    entries.append(entry)
        return entries

    def wait_exit(self) -> int:
        try:
            return self.proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the sidecar did not exit within {DEADLINE}s") from None

    async def await_exit(self) -> int:
        await await_for(lambda: self.proc.poll() is not None, DEADLINE, "the sidecar to exit")
        assert self.proc.returncode is not None
        return self.proc.returncode


@contextlib.contextmanager
def exec_sidecar(
    tmp_path: Path, registry_url: str, service: str, app_port: int, cmd: list[str]
) -> Iterator[ExecSidecar]:
    """Start `graceful-sidecar exec ... -- CMD`, wait until /ready; kill what is left on exit."""
    admin_port, listen_port = free_port(), free_port()
    argv = [sys.executable, "-m", "sidecar", "exec", "--service", service, "--registry", registry_url]
    argv += ["--admin", f"127.0.0.1:{admin_port}", "--listen", f"127.0.0.1:{listen_port}"]
    argv += ["--app", f"http://127.0.0.1:{app_port}", "--log-format", "json", "--quiet-period", "0"]
    log_path = tmp_path / f"exec-{admin_port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([*argv, "--", *cmd], stdout=log, stderr=subprocess.STDOUT)
    car = ExecSidecar(proc, admin_port, listen_port, log_path)

    def alive(check: Callable[[], Any]) -> Callable[[], Any]:
        def checked() -> Any:
            assert proc.poll() is None, f"the sidecar exited with {proc.returncode}: {log_path.read_text()}"
            return check()

        return checked

    try:
        car.child_pid = wait_for(
            alive(lambda: car.status()["child"]["pid"]), DEADLINE, "the child's pid in /status"
        )
        wait_for(
            alive(
                lambda: (
                    httpx.get(f"{car.admin}/ready", timeout=2, trust_env=False, verify=False).status_code
                    == 200
                )
            ),
            DEADLINE,
            "/ready 200",
        )
        yield car
    finally:
        if car.child_pid:  # the child's group: the child and what it started (the app)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(car.child_pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.wait(DEADLINE)


def child_app(tmp_path: Path) -> tuple[int, Path, list[str]]:
    """(port, SIGTERM record, CMD) of a CHILD_APP written into tmp_path."""
    port = free_port()
    script = tmp_path / "child_app.py"
    script.write_text(CHILD_APP)
    record = tmp_path / "child-sigterm.json"
    return port, record, [sys.executable, str(script), str(port), str(record)]


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file another process writes, once it is there and whole (bounded wait)."""
    record: dict[str, Any] = wait_for(lambda: json.loads(path.read_text()), DEADLINE, f"{path.name}")
    return record


def log_time(entry: dict[str, Any]) -> float:
    """The wall time of a JSON log line ("ts": UTC ISO with milliseconds), as time.time() gives."""
    return datetime.strptime(entry["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def offline_end(car: ExecSidecar) -> tuple[float, dict[str, Any]]:
    """When the offline sequence ended (its "offline: {...}" log line), and its result."""
    [entry] = [e for e in car.log_entries() if e["msg"].startswith("offline: {")]
    text = entry["msg"].removeprefix("offline: ")
    try:
        result: dict[str, Any] = json.loads(text)
    except ValueError:  # logged as a Python dict today
        result = ast.literal_eval(text)
    return log_time(entry), result


@dataclass
class Consumers:
    """Clients that behave as a consumer sidecar would: each calls until told the instance is
    closing (X-Sidecar-Closing) or refused (503 + X-Sidecar-Refused), then stops calling it."""

    url: str
    ok: int = 0
    closing: int = 0
    refused: int = 0
    failed: list[str] = field(default_factory=list)

    async def run(self, concurrency: int = 4) -> None:
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            await asyncio.gather(*(self._client(client) for _ in range(concurrency)))

    async def _client(self, client: httpx.AsyncClient) -> None:
        while True:
            params = {"ms": random.randint(20, 300)}
            try:
                response = await client.post(f"{self.url}/work", params=params, content=b'{"order": 42}')
            except httpx.HTTPError as exc:
                self.failed.append(f"{exc.__class__.__name__}: {exc}")
                return
            if response.status_code == 503 and "X-Sidecar-Refused" in response.headers:
                self.refused += 1  # never reached the app: a consumer retries it elsewhere
                return
            if response.status_code != 200:
                self.failed.append(f"{response.status_code}: {response.text}")
                return
            self.ok += 1
            if "X-Sidecar-Closing" in response.headers:
                self.closing += 1
                return


class RegistryWatch:
    """Polls the registry from a thread: (start, end, present) for each look, wall times."""

    def __init__(self, registry_url: str, service: str, instance_id: str) -> None:
        self.looks: list[tuple[float, float, bool]] = []
        self._args = (registry_url, service, instance_id)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RegistryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(DEADLINE)

    def _run(self) -> None:
        registry_url, service, instance_id = self._args
        while not self._stop.wait(LOOK_EVERY):
            start = time.time()
            present = instance_present(registry_url, service, instance_id)
            self.looks.append((start, time.time(), present))

    def absent_since(self) -> float:
        """The end of the first look that found the instance gone (it was gone by then)."""
        ends = [end for _, end, present in self.looks if not present]
        assert ends, f"the instance never left the registry: {self.looks}"
        return min(ends)


async def test_startup_script_app_drained_deregistered_before_sigterm(
    tmp_path: Path, registry_url: str
) -> None:
    """CMD is a startup script running the app with `&`: the app is stopped drained and deregistered."""
    app_port = free_port()
    stats = tmp_path / "app-stats.json"
    app = [sys.executable, "-m", "sidecar.demo.app", "--port", str(app_port), "--stats-file", str(stats)]
    script = tmp_path / "start.sh"
    # A shell as the process to supervise: as PID 1 it would swallow SIGTERM.
    script.write_text(f"#!/bin/bash\n{shlex.join(app)} &\nwhile true; do sleep 2; done\n")
    script.chmod(0o755)

    with exec_sidecar(tmp_path, registry_url, "exec-script", app_port, [str(script)]) as car:
        instance_id = car.status()["instance_id"]
        assert instance_id in registered_ids(registry_url, "exec-script")
        consumers = Consumers(car.url)
        with RegistryWatch(registry_url, "exec-script", instance_id) as watch:
            async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
                load = asyncio.create_task(consumers.run())
                await await_for(lambda: consumers.ok >= 8, DEADLINE, "the load to run")
                long = asyncio.create_task(client.get(f"{car.url}/work", params={"ms": 1500, "tag": "long"}))
                await await_for(
                    lambda: (
                        "/work?ms=1500&tag=long"
                        in httpx.get(
                            f"http://127.0.0.1:{app_port}/stats", trust_env=False, verify=False
                        ).json()["paths"]
                    ),
                    DEADLINE,
                    "the long request to reach the app",
                )
                car.proc.send_signal(signal.SIGTERM)
                async with asyncio.timeout(DEADLINE):
                    response = await long
                    await load
            code = await car.await_exit()
            record = read_json(stats)  # the app writes it when SIGTERM arrives
        app_sigterm_at = stats.stat().st_mtime

    assert response.status_code == 200, response.text
    assert consumers.failed == [], consumers.failed
    assert consumers.ok >= 8
    assert consumers.closing + consumers.refused == 4  # every client was told, none had to fail
    assert record["inflight_at_sigterm"] == 0
    assert watch.absent_since() < app_sigterm_at, (watch.looks, app_sigterm_at)
    assert not instance_present(registry_url, "exec-script", instance_id)
    assert code == 128 + signal.SIGTERM  # bash's status: killed by SIGTERM


async def test_child_gets_sigterm_after_the_offline_sequence_ended(tmp_path: Path, registry_url: str) -> None:
    """The child's SIGTERM comes after the logged end of the offline sequence (deregistered, drained)."""
    app_port, record_path, cmd = child_app(tmp_path)
    with exec_sidecar(tmp_path, registry_url, "exec-order", app_port, cmd) as car:
        async with httpx.AsyncClient(timeout=30, trust_env=False) as client:
            request = asyncio.create_task(client.get(f"{car.url}/work", params={"ms": 1000}))
            await await_for(lambda: car.status()["inflight"] == 1, DEADLINE, "the request in flight")
            car.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(DEADLINE):
                response = await request
        code = await car.await_exit()
        record = read_json(record_path)
        ended_at, result = offline_end(car)
        [draining] = [e for e in car.log_entries() if e["msg"].startswith("offline: draining")]

    assert response.status_code == 200
    assert response.headers["X-Sidecar-Closing"]
    assert result["deregistered"] is True
    assert result["drained"] is True
    assert record["inflight"] == 0
    assert log_time(draining) <= ended_at < record["sigterm_at"], (draining, ended_at, record)
    assert code == 128 + signal.SIGTERM


def test_child_exiting_on_its_own_leaves_the_registry(tmp_path: Path, registry_url: str) -> None:
    """A child that exits 3 by itself: the instance leaves the registry and the sidecar exits 3."""
    app_port, _, cmd = child_app(tmp_path)
    with exec_sidecar(tmp_path, registry_url, "exec-exit", app_port, cmd) as car:
        instance_id = car.status()["instance_id"]
        assert instance_id in registered_ids(registry_url, "exec-exit")
        answer = httpx.get(
            f"http://127.0.0.1:{app_port}/exit", params={"code": 3}, trust_env=False, verify=False
        )
        assert answer.status_code == 200
        code = car.wait_exit()
        # At once, with no TTL to run out: on Consul a TTL entry would linger for a minute.
        assert instance_id not in registered_ids(registry_url, "exec-exit")
        _, result = offline_end(car)

    assert code == 3
    assert result["deregistered"] is True


def test_status_shows_the_running_child(tmp_path: Path, registry_url: str) -> None:
    """/status names the child's pid (our child, the app) with state "running"."""
    app_port = free_port()
    stats = tmp_path / "app-stats.json"
    cmd = [sys.executable, "-m", "sidecar.demo.app", "--port", str(app_port), "--stats-file", str(stats)]
    with exec_sidecar(tmp_path, registry_url, "exec-status", app_port, cmd) as car:
        status = car.status()
        cmdline = Path(f"/proc/{car.child_pid}/cmdline").read_bytes().split(b"\0")
        parent = int(Path(f"/proc/{car.child_pid}/stat").read_text().rpartition(")")[2].split()[1])
        car.proc.send_signal(signal.SIGTERM)
        code = car.wait_exit()
        record = read_json(stats)

    assert status["child"] == {"pid": car.child_pid, "state": "running", "returncode": None}
    assert parent == car.proc.pid
    assert b"sidecar.demo.app" in cmdline
    assert status["registry"]["registered"] is True
    assert record["inflight_at_sigterm"] == 0
    assert code == 128 + signal.SIGTERM
