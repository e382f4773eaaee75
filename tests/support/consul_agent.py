"""A real Consul agent in dev mode, on free loopback ports, for the registry tests.

Dev mode keeps everything in memory: stopping the agent and starting it again on the same ports
gives a Consul that has forgotten every service, which is what a restarted dev agent (or a lost
data dir) looks like to a sidecar.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
CONSUL_BINARY = REPO_ROOT / ".tools" / "consul" / "usr" / "bin" / "consul"

# A dev agent usually elects itself within 1-3 s; a loaded CI machine gets ten times that.
STARTUP_TIMEOUT_S = 30.0
# SIGTERM normally stops it in well under a second; after this, SIGKILL.
STOP_TIMEOUT_S = 5.0


class ConsulAgent:
    """`consul agent -dev` bound to 127.0.0.1. `start()` again reuses the same ports.

    `persistent=True` runs a one-node server with a data dir instead, which keeps its services
    and checks across a restart, as a production agent does.
    """

    def __init__(self, workdir: Path, *, persistent: bool = False, binary: Path = CONSUL_BINARY) -> None:
        if not binary.is_file():
            raise RuntimeError(f"Consul binary not found at {binary}: run `make tools` to install it")
        self._binary = binary
        self._workdir = workdir
        self._persistent = persistent
        self._proc: subprocess.Popen[bytes] | None = None
        ports: set[int] = set()
        while len(ports) < 4:  # distinct ports, even if the kernel hands one out twice
            ports.add(free_port())
        self.http_port, self._serf_lan, self._serf_wan, self._server = sorted(ports)

    @property
    def url(self) -> str:
        return f"consul://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self._workdir / "consul.log"

    def start(self) -> None:
        """Start the agent and return once it has a leader (it then accepts registrations)."""
        if self._proc is not None:
            raise RuntimeError("the Consul agent is already running")
        self._workdir.mkdir(parents=True, exist_ok=True)
        config = {
            "disable_update_check": True,  # no call home from tests
            "performance": {"raft_multiplier": 1},  # elect a leader in ~1 s, not ~5 (persistent mode)
            "ports": {
                "http": self.http_port,
                "serf_lan": self._serf_lan,
                "serf_wan": self._serf_wan,
                "server": self._server,
                "dns": -1,
                "grpc": -1,
            },
        }
        config_file = self._workdir / "agent.json"
        config_file.write_text(json.dumps(config))
        argv = [
            str(self._binary),
            "agent",
            *(
                ["-server", "-bootstrap-expect=1", f"-data-dir={self._workdir / 'data'}"]
                if self._persistent
                else ["-dev"]
            ),
            "-bind=127.0.0.1",
            "-client=127.0.0.1",
            f"-node=test-{self.http_port}",
            "-log-level=warn",
            f"-config-file={config_file}",
        ]
        # A file, not a pipe: nobody reads a pipe, and a full one would block the agent.
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            self._wait_for_leader()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM the agent, SIGKILL it if it does not exit in time. No-op when stopped."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()

    def _wait_for_leader(self) -> None:
        # An external process we do not own: a bounded readiness poll is the only way to know.
        assert self._proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        url = f"http://127.0.0.1:{self.http_port}/v1/status/leader"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"consul exited with {self._proc.returncode}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if json.loads(response.read()):  # "" until a leader is elected
                        return
            except (OSError, ValueError):
                pass  # not listening yet (URLError is an OSError)
            time.sleep(0.1)
        raise RuntimeError(f"consul had no leader after {STARTUP_TIMEOUT_S} s:\n{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
