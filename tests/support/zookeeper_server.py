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

import shutil
import socket
from pathlib import Path

from tests.support.ports import free_port
from tests.support.server_process import ServerProcess

ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")  # its manifest's Class-Path names the rest
JAVA = Path(shutil.which("java") or "/usr/bin/java")
# A tick of 250 ms lets a session timeout be as short as 0.5 s (2 ticks).
TICK_MS = 250
# A small heap and the client compiler only: a test server holds a few hundred nodes.
JVM_FLAGS = (
    "-Xms16m",
    "-Xmx96m",
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Xshare:auto",
    "-Djava.net.preferIPv4Stack=true",
)


class ZooKeeperServer(ServerProcess):
    """ZooKeeper bound to 127.0.0.1:`port`, data in `workdir`."""

    name = "zookeeper"

    def __init__(self, workdir: Path) -> None:
        if not ZOOKEEPER_JAR.is_file() or not JAVA.is_file():
            raise RuntimeError(
                f"ZooKeeper ({ZOOKEEPER_JAR}) or java not found: run `make tools` (as root) to install them"
            )
        super().__init__(workdir)
        self.port = free_port()

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"zookeeper://{self.hosts}"

    def start(self, *, wipe: bool = False) -> None:
        """Start the server and return once it answers `ruok` with `imok`."""
        if wipe and self._proc is None:
            shutil.rmtree(self._workdir / "data", ignore_errors=True)
        super().start()

    def _argv(self) -> list[str]:
        data_dir = self._workdir / "data"
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
        return [
            str(JAVA),
            *JVM_FLAGS,
            f"-Dzookeeper.log.dir={self._workdir}",
            "-cp",
            str(ZOOKEEPER_JAR),
            "org.apache.zookeeper.server.ZooKeeperServerMain",
            str(config),
        ]

    def four_letters(self, command: str) -> str:
        """Send a four-letter command (`ruok`, `srvr`) and return the answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as conn:
            conn.sendall(command.encode())
            chunks = []
            while chunk := conn.recv(4096):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def _ready(self) -> bool:
        return self.four_letters("ruok") == "imok"
