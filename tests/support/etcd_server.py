"""A real etcd server (one member), on free loopback ports, for the registry tests.

Each server has its own data dir under the test's temporary directory. `stop()` then `start()`
keeps the data (leases included, their TTLs restarted, as etcd does after a leader change);
`start(wipe=True)` starts from an empty data dir on the same ports, which is what a member
rebuilt from nothing looks like to a sidecar: every lease it held is unknown. A member of a
cluster (`tests/support/etcd_cluster.py`) gets the cluster's `initial_cluster` before it starts.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from pathlib import Path

from tests.support.ports import free_port
from tests.support.server_process import ServerProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
ETCD_BINARY = REPO_ROOT / ".tools" / "etcd" / "usr" / "bin" / "etcd"


class EtcdServer(ServerProcess):
    """`etcd` bound to 127.0.0.1 (client and peer ports), data in `workdir`."""

    name = "etcd"

    def __init__(self, workdir: Path, *, binary: Path = ETCD_BINARY) -> None:
        if not binary.is_file():
            raise RuntimeError(f"etcd binary not found at {binary}: run `make tools` to install it")
        super().__init__(workdir)
        self._binary = binary
        ports: set[int] = set()
        while len(ports) < 2:  # distinct ports, even if the kernel hands one out twice
            ports.add(free_port())
        self.client_port, self._peer_port = sorted(ports)
        self.member_name = f"test-{self.client_port}"
        # `NAME=PEER_URL,...` of every member; alone by default. Set before the first start.
        self.initial_cluster = f"{self.member_name}={self.peer_url}"

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.client_port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self._peer_port}"

    @property
    def running(self) -> bool:
        return self._proc is not None

    def start(self, *, wipe: bool = False) -> None:
        """Start the member and return once it answers /health with a leader."""
        if wipe and self._proc is None:
            shutil.rmtree(self._workdir / "data", ignore_errors=True)
        super().start()

    def _argv(self) -> list[str]:
        return [
            str(self._binary),
            f"--name={self.member_name}",
            f"--data-dir={self._workdir / 'data'}",
            f"--listen-client-urls={self.http}",
            f"--advertise-client-urls={self.http}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            # Its own token: a member never joins another test's cluster on a reused port.
            f"--initial-cluster-token={self.initial_cluster.partition('=')[0]}",
            "--logger=zap",
            "--log-level=warn",
        ]

    def healthy(self) -> bool:
        """Whether the member answers `/health` with a leader; False when it does not answer."""
        try:
            return self._ready()
        except (OSError, ValueError):
            return False

    def _ready(self) -> bool:
        with urllib.request.urlopen(f"{self.http}/health", timeout=1.0) as response:
            return bool(json.loads(response.read()).get("health") == "true")  # a leader, answering
