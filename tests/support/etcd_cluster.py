"""A real etcd cluster (three members by default), on free loopback ports, for the failover tests.

A member cannot answer `/health` with a leader until a quorum runs, so the members start side by
side, each in its own thread, and the cluster is ready once every one of them has a leader.
`frozen(member)` stops a member's process with SIGSTOP (SIGCONT on the way out, whatever
happened): it keeps its sockets and the kernel still accepts connections for it, but nothing
answers, which is what a hung member (a stalled disk, a paused VM) looks like to a client.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

from sidecar.demo.processes import wait_for
from tests.support.etcd_server import EtcdServer
from tests.support.server_process import STARTUP_TIMEOUT_S


class EtcdCluster:
    """`size` etcd members that know each other; `url` lists them in order."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.members = [EtcdServer(workdir / f"member-{i}") for i in range(size)]
        initial_cluster = ",".join(f"{m.member_name}={m.peer_url}" for m in self.members)
        for member in self.members:
            member.initial_cluster = initial_cluster

    def url(self, first: int = 0) -> str:
        """`etcd://` with every member, the one at index `first` listed first."""
        order = self.members[first:] + self.members[:first]
        return "etcd://" + ",".join(f"127.0.0.1:{m.client_port}" for m in order)

    def start(self) -> None:
        with ThreadPoolExecutor(len(self.members)) as pool:
            started = [pool.submit(member.start) for member in self.members]
        try:
            for future in started:
                future.result()
        except BaseException:
            self.stop()
            raise

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Return once every member has a leader again (after a freeze, say)."""
        wait_for(
            lambda: all(m.healthy() for m in self.members), timeout, "every etcd member to have a leader"
        )

    def stop(self) -> None:
        for member in self.members:
            member.stop()

    @contextmanager
    def frozen(self, *members: EtcdServer) -> Iterator[None]:
        """`members` stopped with SIGSTOP while inside; SIGCONT on the way out, whatever happened."""
        pids = [member.pid for member in members]
        assert None not in pids, "a member is not running"
        stopped: list[int] = []
        try:
            for pid in pids:
                assert pid is not None
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
            yield
        finally:
            for pid in stopped:
                os.kill(pid, signal.SIGCONT)

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
