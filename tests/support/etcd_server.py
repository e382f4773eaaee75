"""A real etcd server (one member), on free loopback ports, for the registry tests.

Each server has its own data dir under the test's temporary directory. `stop()` then `start()`
keeps the data (leases included, their TTLs restarted, as etcd does after a leader change);
`start(wipe=True)` starts from an empty data dir on the same ports, which is what a member
rebuilt from nothing looks like to a sidecar: every lease it held is unknown.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
ETCD_BINARY = REPO_ROOT / ".tools" / "etcd" / "usr" / "bin" / "etcd"

# A single member elects itself within about a second; a loaded CI machine gets far more.
STARTUP_TIMEOUT_S = 30.0
# SIGTERM normally stops it in well under a second; after this, SIGKILL.
STOP_TIMEOUT_S = 5.0


class EtcdServer:
    """`etcd` bound to 127.0.0.1 (client and peer ports), data in `workdir`."""

    def __init__(self, workdir: Path, *, binary: Path = ETCD_BINARY) -> None:
        if not binary.is_file():
            raise RuntimeError(f"etcd binary not found at {binary}: run `make tools` to install it")
        self._binary = binary
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None
        ports: set[int] = set()
        while len(ports) < 2:  # distinct ports, even if the kernel hands one out twice
            ports.add(free_port())
        self.client_port, self._peer_port = sorted(ports)

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.client_port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self._workdir / "etcd.log"

    @property
    def running(self) -> bool:
        return self._proc is not None

    def start(self, *, wipe: bool = False) -> None:
        """Start the member and return once it answers /health with a leader."""
        if self._proc is not None:
            raise RuntimeError("the etcd server is already running")
        data_dir = self._workdir / "data"
        if wipe:
            shutil.rmtree(data_dir, ignore_errors=True)
        self._workdir.mkdir(parents=True, exist_ok=True)
        client = f"http://127.0.0.1:{self.client_port}"
        peer = f"http://127.0.0.1:{self._peer_port}"
        name = f"test-{self.client_port}"
        argv = [
            str(self._binary),
            f"--name={name}",
            f"--data-dir={data_dir}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster={name}={peer}",
            "--logger=zap",
            "--log-level=warn",
        ]
        # A file, not a pipe: nobody reads a pipe, and a full one would block the server.
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM the member by pid, SIGKILL it if it does not exit in time. No-op when stopped."""
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

    def _wait_healthy(self) -> None:
        # An external process we do not own: a bounded readiness poll is the only way to know.
        assert self._proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        url = f"{self.http}/health"
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self._proc.returncode}:\n{self._log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1.0) as response:
                    if json.loads(response.read()).get("health") == "true":  # a leader, and it answers
                        return
            except (OSError, ValueError):
                pass  # not listening yet, or 503 before the election (HTTPError is an OSError)
            time.sleep(0.1)
        raise RuntimeError(f"etcd was not healthy after {STARTUP_TIMEOUT_S} s:\n{self._log_tail()}")

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
