"""A registry server run by the tests: started on free loopback ports, awaited until it answers,
stopped by pid. Consul, etcd and ZooKeeper differ only in their command line and in how they
say they are ready (`_ready`); the rest is here, once.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import TracebackType
from typing import Self

from sidecar.demo.processes import spawn, stop_process, wait_for

# A server usually answers within 1-3 s; a loaded CI machine gets ten times that.
STARTUP_TIMEOUT_S = 30.0
# SIGTERM normally stops one in well under a second; after this, SIGKILL.
STOP_TIMEOUT_S = 5.0
READY_POLL_S = 0.1


class ServerProcess:
    """Subclasses set `name` and implement `_argv()` (after preparing their work dir) and
    `_ready()` (True once the server answers as it should; may raise OSError or ValueError)."""

    name = "server"
    startup_timeout = STARTUP_TIMEOUT_S

    def __init__(self, workdir: Path) -> None:
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self._workdir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self) -> None:
        """Start the server and return once it is ready."""
        if self._proc is not None:
            raise RuntimeError(f"{self.name} is already running")
        self._workdir.mkdir(parents=True, exist_ok=True)
        self._proc = spawn(self._argv(), self.log_path)
        try:
            wait_for(self._answering, self.startup_timeout, f"{self.name} to be ready", READY_POLL_S)
        except TimeoutError as exc:
            self.stop()
            raise RuntimeError(f"{exc}:\n{self._log_tail()}") from None
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM the server by pid, SIGKILL it if it does not exit in time. No-op when stopped."""
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, grace=STOP_TIMEOUT_S)

    def _answering(self) -> bool:
        """`_ready()`, once the process is still there (an exited one will never be ready)."""
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self._proc.returncode}:\n{self._log_tail()}")
        return self._ready()  # OSError, ValueError: not listening yet, or not ready to say so

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
