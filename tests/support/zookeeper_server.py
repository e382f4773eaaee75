"""A real ZooKeeper server (standalone), on a free loopback port, for the registry tests.

It runs `org.apache.zookeeper.server.ZooKeeperServerMain` from Debian's `zookeeper` package
(`make tools` installs it with a Java runtime) with a small config file: a config file rather
than the `PORT DATADIR` arguments, because only the file can bind the client port to 127.0.0.1
and turn off the admin server (Jetty, on port 8080 by default). `stop()` then `start()` keeps
the data dir, and so the sessions and their ephemeral nodes (their timeouts restarted);
`start(wipe=True)` starts from an empty data dir on the same port: every session is unknown to
it, which is what a server rebuilt from nothing looks like to a client.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.ports import free_port

ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")  # its manifest's Class-Path names the rest
JAVA = Path(shutil.which("java") or "/usr/bin/java")
# A tick of 250 ms lets a session timeout be as short as 0.5 s (2 ticks).
TICK_MS = 250
# The JVM starts the server in about half a second; a loaded CI machine gets far more.
STARTUP_TIMEOUT_S = 30.0
# SIGTERM normally stops it in well under a second; after this, SIGKILL.
STOP_TIMEOUT_S = 5.0
# A small heap and the client compiler only: a test server holds a few hundred nodes.
JVM_FLAGS = (
    "-Xms16m",
    "-Xmx96m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Xshare:auto",
    "-Djava.net.preferIPv4Stack=true",
)


class ZooKeeperServer:
    """ZooKeeper bound to 127.0.0.1:`port`, data in `workdir`."""

    def __init__(self, workdir: Path) -> None:
        if not ZOOKEEPER_JAR.is_file() or not JAVA.is_file():
            raise RuntimeError(
                f"ZooKeeper ({ZOOKEEPER_JAR}) or java not found: run `make tools` (as root) to install them"
            )
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = free_port()

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"zookeeper://{self.hosts}"

    @property
    def log_path(self) -> Path:
        return self._workdir / "zookeeper.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self, *, wipe: bool = False) -> None:
        """Start the server and return once it answers `ruok` with `imok`."""
        if self._proc is not None:
            raise RuntimeError("the ZooKeeper server is already running")
        data_dir = self._workdir / "data"
        if wipe:
            shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True, exist_ok=True)
        config = self._workdir / "zoo.cfg"
        config.write_text(
            "\n".join(
                [
                    f"dataDir={data_dir}",
                    f"clientPort={self.port}",
                    "clientPortAddress=127.0.0.1",
                    f"tickTime={TICK_MS}",
                    "admin.enableServer=false",
                    "4lw.commands.whitelist=ruok,srvr",
                    "maxSessionTimeout=30000",  # the server default, 20 ticks, would cap ours at 5 s
                    "maxClientCnxns=0",
                    "",
                ]
            )
        )
        argv = [
            str(JAVA),
            *JVM_FLAGS,
            f"-Dzookeeper.log.dir={self._workdir}",
            "-cp",
            str(ZOOKEEPER_JAR),
            "org.apache.zookeeper.server.ZooKeeperServerMain",
            str(config),
        ]
        # A file, not a pipe: nobody reads a pipe, and a full one would block the server.
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        try:
            self._wait_until_ok()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM the server, SIGKILL it if it does not exit in time. No-op when stopped."""
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

    def four_letters(self, command: str) -> str:
        """Send a four-letter command (`ruok`, `srvr`) and return the answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as conn:
            conn.sendall(command.encode())
            chunks = []
            while chunk := conn.recv(4096):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def _wait_until_ok(self) -> None:
        # An external process: a bounded readiness poll is the only way to know it serves.
        assert self._proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"zookeeper exited with {self._proc.returncode}:\n{self._log_tail()}")
            try:
                if self.four_letters("ruok") == "imok":
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.05)
        raise RuntimeError(f"zookeeper did not answer ruok in {STARTUP_TIMEOUT_S} s:\n{self._log_tail()}")

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
