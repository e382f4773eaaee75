"""A real Consul agent in dev mode, on free loopback ports, for the registry tests.

Dev mode keeps everything in memory: stopping the agent and starting it again on the same ports
gives a Consul that has forgotten every service, which is what a restarted dev agent (or a lost
data dir) looks like to a sidecar.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from tests.support.ports import free_port
from tests.support.server_process import ServerProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
CONSUL_BINARY = REPO_ROOT / ".tools" / "consul" / "usr" / "bin" / "consul"


class ConsulAgent(ServerProcess):
    """`consul agent -dev` bound to 127.0.0.1. `start()` again reuses the same ports.

    `persistent=True` runs a one-node server with a data dir instead, which keeps its services
    and checks across a restart, as a production agent does.
    """

    def __init__(self, workdir: Path, *, persistent: bool = False, binary: Path = CONSUL_BINARY) -> None:
        if not binary.is_file():
            raise RuntimeError(f"Consul binary not found at {binary}: run `make tools` to install it")
        super().__init__(workdir)
        self._binary = binary
        self._persistent = persistent
        ports: set[int] = set()
        while len(ports) < 4:  # distinct ports, even if the kernel hands one out twice
            ports.add(free_port())
        self.http_port, self._serf_lan, self._serf_wan, self._server = sorted(ports)

    @property
    def url(self) -> str:
        return f"consul://127.0.0.1:{self.http_port}"

    def _argv(self) -> list[str]:
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
        return [
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

    def _ready(self) -> bool:
        """A leader is elected: the agent accepts registrations."""
        url = f"http://127.0.0.1:{self.http_port}/v1/status/leader"
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return bool(json.loads(response.read()))  # "" until a leader is elected
