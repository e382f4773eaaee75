"""A registry that stalls must not empty a consumer's table (issue 18, point 2), black box.

Two provider sidecars of one service (in front of one demo app), a consumer sidecar with an
upstream for it, and a request every 10 ms through the consumer; then the registry misbehaves
the way a real one does:

- etcd, ZooKeeper: the server the test started is frozen with SIGSTOP for longer than the
  providers' TTL (etcd's lease, ZooKeeper's session), then resumed with SIGCONT. As it resumes
  it expires them all at once and tells the watches so; the providers, alive all along, publish
  themselves again within a renewal (etcd: the renewals that queued up in the frozen server are
  told the lease is gone the moment it resumes, so within milliseconds here).
- SQLite: rows expire by the wall clock (`expires_at` against `time.time()`), so a forward step
  of the clock (an NTP step, a resumed VM) expires them all at once. The test cannot step this
  machine's clock, so it does what such a step does to the file's readers: it moves every row's
  expiry back by the step, in the file, as another process would. The heartbeats, timed on the
  monotonic clock, write fresh expiries at their next beat, as they would after a real step.

Either way no request may fail, and the consumer says what it did: a hold counted in its metrics,
and its rows marked held while it lasts.

Consul is not among them: its TTL check is the adapter's 10 s, which no option shortens, and a
freeze past it costs a test 25 s. Checked by hand with this module's `fleet` (2026-12-07): a
12 s freeze of a Consul agent with requests every 10 ms through the consumer, 1,350 requests, 0
failed, and nothing held: Consul dropped nothing (the heartbeats that queued up while it was
frozen reach it as it resumes, before its TTL timers fire).

A real scale-down is the opposite case: instances that drain announce it, and leave at once.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.demo.loadgen import LoadGenerator
from sidecar.demo.processes import stop_processes
from tests.support.etcd_server import EtcdServer
from tests.support.ports import free_port
from tests.support.procs import SidecarProc, demo_app, metric, sidecar, wait_for
from tests.support.zookeeper_server import ZooKeeperServer

# Two requests in flight, 20 ms of work each: a request every 10 ms on average.
CONCURRENCY, WORK_MS = 2, (20, 20)
# Providers' TTLs as short as their registries allow, so that a freeze past them stays short:
# etcd's lease 2 s (its minimum), ZooKeeper's session 2 s.
ETCD_TTL_S = 2
ZOOKEEPER_SESSION_S = 2
# Past the TTL by enough that every registration has expired when the server resumes.
FREEZE_PAST_TTL_S = 2.0
# A forward wall-clock step: far past SQLite's 6 s row TTL.
CLOCK_STEP_S = 60.0
# A stall that the consumer did not see drop both instances at once is not the scenario (one
# provider was back before the other went: ZooKeeper may expire two sessions that far apart,
# and a SQLite heartbeat may land within a poll of the step); it is repeated, at most this often.
STALLS = 3
# A consumer reports a hold within a second (sidecar.consumer.instances.HOLD_REPORT_SECONDS) of
# seeing the registry drop both instances, which it does within a second of the stall's end.
SEEN_S = 5.0
# From the registry's resumption to both providers listed again (a renewal or a reconnection,
# each a few seconds at most), with room for a loaded machine.
RECOVERY_S = 30.0


def unique() -> str:
    return f"stall-{uuid.uuid4().hex[:8]}"


@dataclass
class Fleet:
    service: str
    providers: dict[str, SidecarProc]
    consumer: SidecarProc
    port: int

    def rows(self) -> dict[str, dict[str, Any]]:
        table = self.consumer.status()["upstreams"][self.service]["instances"]
        return {row["instance_id"]: row for row in table}

    def holds(self) -> float:
        return metric(self.consumer.admin, "sidecar_upstream_holds_total", service=self.service)

    def settled(self) -> bool:
        """Both providers in the table as the registry lists them: nothing held, nothing dropped."""
        rows = self.rows()
        return set(rows) == {"p1", "p2"} and not any(row["held"] or row["dropped"] for row in rows.values())


@contextmanager
def fleet(tmp_path: Path, provider_registry: str, consumer_registry: str) -> Iterator[Fleet]:
    """Providers p1 and p2 of a new service in front of one demo app, registered in
    `provider_registry`, and a consumer sidecar that watches `consumer_registry` (the same
    registry, without the providers' options) and knows both. The sidecars start, and stop,
    side by side."""
    service = unique()
    quick = ("--quiet-period", "0.2")
    with ExitStack() as stack:
        app = stack.enter_context(demo_app(tmp_path))
        providers = {
            name: stack.enter_context(
                sidecar(
                    tmp_path, provider_registry, app, "--instance-id", name, *quick, service=service, wait=""
                )
            )
            for name in ("p1", "p2")
        }
        port = free_port()
        upstream = ("--upstream", f"{service}=127.0.0.1:{port}")
        consumer = stack.enter_context(
            sidecar(tmp_path, consumer_registry, None, *upstream, *quick, service="client", wait="")
        )
        cars = [*providers.values(), consumer]
        stack.callback(stop_processes, [car.proc for car in cars])  # their drains overlap
        for car in cars:
            car.wait_ready()
        found = Fleet(service, providers, consumer, port)
        wait_for(found.settled, what="the consumer to know p1 and p2")
        yield found


@contextmanager
def frozen(pid: int | None) -> Iterator[None]:
    """The process `pid` (a server this test process started) stopped for the block's duration."""
    assert pid is not None, "the server is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def costs_nothing(found: Fleet, stall: Callable[[], None]) -> None:
    """Run `stall` under load until the consumer saw the registry drop both instances at once
    (a hold), wait until it let go of the hold (both listed again); no request may fail."""
    with LoadGenerator(f"http://127.0.0.1:{found.port}", CONCURRENCY, WORK_MS) as load:
        wait_for(lambda: len(load.samples) >= 10, what="the load to flow")
        for _ in range(STALLS):
            stall()
            with suppress(TimeoutError):
                wait_for(lambda: found.holds() >= 1, SEEN_S, "the consumer to see both instances go")
                break
            wait_for(found.settled, RECOVERY_S, "both providers back")
        wait_for(
            lambda: found.holds() >= 1 and found.settled(), RECOVERY_S, "a hold, then both providers back"
        )
        load.stop()
    failures = load.failures()
    assert failures == [], f"{len(failures)} of {len(load.samples)} requests failed: {failures[:3]}"
    assert found.holds() == 1


@pytest.mark.etcd
def test_etcd_freeze_past_the_lease_ttl_costs_nothing(tmp_path: Path, etcd_server: EtcdServer) -> None:
    """etcd frozen past the providers' lease TTL expires both leases as it resumes; the consumer
    holds the two instances until they are published again, and no request fails."""
    with fleet(tmp_path, f"{etcd_server.url}?ttl={ETCD_TTL_S}", etcd_server.url) as found:

        def freeze() -> None:
            with frozen(etcd_server.pid):
                time.sleep(ETCD_TTL_S + FREEZE_PAST_TTL_S)  # the freeze is the scenario

        costs_nothing(found, freeze)


@pytest.mark.zookeeper
def test_zookeeper_freeze_past_the_session_timeout_costs_nothing(
    tmp_path: Path, zookeeper_server: ZooKeeperServer
) -> None:
    """ZooKeeper frozen past the providers' session timeout: no request fails."""
    providers = f"{zookeeper_server.url}?session_timeout={ZOOKEEPER_SESSION_S}"
    with fleet(tmp_path, providers, zookeeper_server.url) as found:

        def freeze() -> None:
            with frozen(zookeeper_server.pid):
                time.sleep(ZOOKEEPER_SESSION_S + FREEZE_PAST_TTL_S)  # the freeze is the scenario

        costs_nothing(found, freeze)


def test_sqlite_wall_clock_step_costs_nothing_and_a_scale_down_is_not_held(tmp_path: Path) -> None:
    """A forward wall-clock step expires every SQLite row at once; the consumer holds the two
    instances until their heartbeats renew them, and no request fails. Then both providers
    drain: they announce it, and leave the table at once."""
    path = tmp_path / "registry.db"
    registry = f"sqlite://{path}"
    with fleet(tmp_path, registry, registry) as found:

        def step() -> None:
            with sqlite3.connect(path) as db:
                db.execute(
                    "UPDATE instances SET expires_at = expires_at - ? WHERE service = ?",
                    (CLOCK_STEP_S, found.service),
                )

        costs_nothing(found, step)
        # The scale-down: both providers drain at once; by the time /shutdown answers, their
        # offline notices were answered, and nothing is left to send to.
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda name: shutdown(found, name), ["p1", "p2"]))
        assert [answer["notified"] for answer in answers] == [1, 1]
        rows = found.rows()
        assert not any(row["held"] for row in rows.values()), rows
        assert all(row["dropped"] for row in rows.values()), rows
        answer = httpx.get(f"http://127.0.0.1:{found.port}/work", timeout=10, verify=False)
        assert answer.status_code == 503
        assert found.holds() == 1, "the scale-down was reported as a hold"


def shutdown(found: Fleet, name: str) -> dict[str, Any]:
    """GET /shutdown of provider `name`: its answer, once it drained."""
    answer: dict[str, Any] = httpx.get(
        f"{found.providers[name].admin}/shutdown", timeout=30, verify=False
    ).json()
    return answer
