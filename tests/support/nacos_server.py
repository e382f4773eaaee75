"""A real Nacos server (Nacos 3.1, built by `make tools` from interop/nacos-server), standalone
with its embedded database, on free loopback ports, for the registry tests.

Nacos binds four ports from its main one, P: HTTP on P, gRPC on P+1000 and P+1001, JRaft on
P-1000; all must be free, and P below the kernel's ephemeral range (32768 up), where another
process's outgoing connection may take one between the check and the bind. Its data and logs
stay in the work dir. Its instances live in memory: `stop()` then `start()` is a server that
lost every ephemeral instance, on the same ports.
"""

from __future__ import annotations

import json
import random
import socket
import urllib.request
from pathlib import Path

from tests.support.interop import peer_binary
from tests.support.server_process import ServerProcess

# The offsets of the ports Nacos binds beside its main one (gRPC client and cluster, JRaft).
PORT_OFFSETS = (0, 1000, 1001, -1000)
# Main ports are picked here: their JRaft port (P-1000) stays above the well-known ports, and
# their gRPC ports (P+1001) below the ephemeral range.
PORT_RANGE = (11000, 31000)
READINESS = "/v3/admin/core/state/readiness"


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("0.0.0.0", port))  # gRPC and JRaft bind every address
        except OSError:
            return False
    return True


def free_nacos_port(tries: int = 200) -> int:
    """A main port P with P, P+1000, P+1001 and P-1000 free (checked, not reserved)."""
    for _ in range(tries):
        port = random.randrange(*PORT_RANGE)
        if all(_free(port + offset) for offset in PORT_OFFSETS):
            return port
    raise RuntimeError(f"no free Nacos port set in {PORT_RANGE} after {tries} tries")


class NacosServer(ServerProcess):
    """A standalone Nacos server: HTTP on 127.0.0.1, data and logs in the work dir."""

    name = "nacos"
    # Two Spring contexts in one JVM: 10-20 s on an idle machine, several times that on a
    # loaded one.
    startup_timeout = 180.0

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self._binary = peer_binary("nacos-server")
        self.port = free_nacos_port()

    @property
    def http(self) -> str:
        """The base of its open API."""
        return f"http://127.0.0.1:{self.port}/nacos"

    @property
    def url(self) -> str:
        return f"nacos://127.0.0.1:{self.port}"

    def _argv(self) -> list[str]:
        return [
            str(self._binary),
            f"--home={self._workdir / 'home'}",
            f"--nacos.server.main.port={self.port}",
        ]

    def _ready(self) -> bool:
        with urllib.request.urlopen(self.http + READINESS, timeout=2.0) as response:
            return bool(json.load(response).get("data") == "ok")
