"""A hung etcd member, on a real 3-member cluster: a member frozen with SIGSTOP keeps accepting
connections and never answers, and the watch must leave it for a healthy member, report it, and
see a change within 15 s; a member without a leader must not keep a watch either.

The cluster is shared by the module; every test thaws what it froze and leaves the cluster with a
leader again. Instances are put by hand through a healthy member, without a lease, so that only
the watch under test depends on the frozen one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from registry_adapters import Instance, RegistryUnavailable, kratos_layout
from registry_adapters.etcd import EtcdRegistry
from tests.support import etcd_gateway as gateway
from tests.support.etcd_cluster import EtcdCluster
from tests.support.etcd_server import EtcdServer
from tests.support.ports import free_port
from tests.support.procs import sidecar, wait_for
from tests.test_consumer import metric

pytestmark = pytest.mark.etcd

# The aim: a consumer sees a change within this long of its member freezing.
CHANGE_SEEN_S = 15.0
# etcd cancels a require-leader watch after 3 election timeouts (1 s each by default) without a
# leader, checked once per election timeout: about 4 s; twice that for a loaded machine.
NO_LEADER_CANCEL_S = 8.0
# The two members left elect a leader within a few election timeouts (1 s each by default).
ELECTION_S = 10.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path_factory.mktemp("etcd-cluster")) as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def healthy(cluster: EtcdCluster) -> Iterator[None]:
    """Each test starts and leaves with a leader on every member (a thawed one catches up)."""
    cluster.wait_healthy()
    yield
    cluster.wait_healthy()


def instance(service: str, n: int) -> Instance:
    return Instance(service, f"{service}-{n}", "127.0.0.1", 9000 + n)


def put(member: EtcdServer, one: Instance) -> None:
    key = kratos_layout.key(kratos_layout.DEFAULT_NAMESPACE, one.service, one.instance_id)
    body = {"key": gateway.b64(key), "value": gateway.b64(kratos_layout.value(one))}
    written(member, "/v3/kv/put", body)


def delete(member: EtcdServer, one: Instance) -> None:
    key = kratos_layout.key(kratos_layout.DEFAULT_NAMESPACE, one.service, one.instance_id)
    written(member, "/v3/kv/deleterange", {"key": gateway.b64(key)})


def written(member: EtcdServer, path: str, body: dict[str, str]) -> None:
    """Write through `member`, again while it answers 503: when the frozen member was the leader,
    the others elect a new one first (about a second at etcd's default timings)."""

    def attempt() -> bool:
        try:
            gateway.call(member, path, body)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 503:  # "no leader", "leader changed"
                return False
            raise
        return True

    wait_for(attempt, ELECTION_S, f"{member.http} to take a write")


def watchers(member: EtcdServer) -> float:
    """How many watchers `member` holds now (etcd's own gauge on its client port)."""
    return metric(member.http, "etcd_debugging_mvcc_watcher_total")


def test_consumer_leaves_a_member_that_froze_under_its_watch(tmp_path: Path, cluster: EtcdCluster) -> None:
    """A consumer sidecar whose watch stream runs on the first listed member: that member freezes,
    an instance is deleted and another added through a healthy one; the consumer's table has both
    changes within 15 s of the freeze, and the member's failure is counted and logged."""
    service = f"frozen-{uuid.uuid4().hex[:8]}"
    hung, healthy_member = cluster.members[0], cluster.members[1]
    for n in (1, 2, 3):
        put(healthy_member, instance(service, n))
    watching_before = watchers(hung)
    upstream = ("--upstream", f"{service}=127.0.0.1:{free_port()}")
    with sidecar(tmp_path, cluster.url(first=0), None, *upstream, service="client") as car:

        def table() -> set[str]:
            return {row["instance_id"] for row in car.status()["upstreams"][service]["instances"]}

        wait_for(lambda: table() == {f"{service}-{n}" for n in (1, 2, 3)}, what="the first table")
        # The first table comes from a read; the watch stream starts after it. Frozen before etcd
        # answered that start, the member would be passed over at the start (a warning, no
        # failure of a running watch): the case below is a member freezing under a running one.
        wait_for(lambda: watchers(hung) > watching_before, what="the consumer's watch on the first member")
        with cluster.frozen(hung):
            frozen_at = time.monotonic()
            delete(healthy_member, instance(service, 1))
            put(healthy_member, instance(service, 4))
            wanted = {f"{service}-{n}" for n in (2, 3, 4)}
            wait_for(
                lambda: table() == wanted,
                CHANGE_SEEN_S - (time.monotonic() - frozen_at),
                "the consumer to see the changes made while its member was frozen",
            )
            assert metric(car.admin, "sidecar_registry_errors_total", op="watch") >= 1
            failures = [line for line in car.log().splitlines() if "watch of" in line and "failed" in line]
            assert any(f"127.0.0.1:{hung.client_port}" in line for line in failures), failures


async def test_watch_start_on_a_frozen_member_moves_to_the_next(
    cluster: EtcdCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A watch stream that starts while its member is frozen (here the first start, after the
    first read; a resume after a second of quiet starts one the same way) gets no answer there:
    the start moves to the next member, says so, and a change is seen within 15 s. A stream
    already running when its member freezes is caught by its probe instead (the test above)."""
    service = f"resume-{uuid.uuid4().hex[:8]}"
    hung, healthy_member = cluster.members[0], cluster.members[1]
    put(healthy_member, instance(service, 1))
    registry = EtcdRegistry.from_url(urlsplit(cluster.url(first=0)), watch_idle=1.0)
    async with registry, aclosing(registry.watch(service)) as watch:
        assert await anext(watch) == [instance(service, 1)]
        waiting = asyncio.ensure_future(anext(watch))
        with cluster.frozen(hung):
            await asyncio.to_thread(put, healthy_member, instance(service, 2))
            seen = await asyncio.wait_for(waiting, CHANGE_SEEN_S)
    assert seen == [instance(service, 1), instance(service, 2)]
    assert any(
        r.getMessage().startswith(f"etcd watch started on {healthy_member.http} after {hung.http}: no answer")
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


async def test_watch_on_a_member_without_leader_fails(cluster: EtcdCluster) -> None:
    """The two other members freeze: the first member still answers, but has no leader; etcd
    cancels the watch there (it asks for a leader), and the watch raises instead of waiting on a
    member that can no longer tell it anything."""
    service = f"leaderless-{uuid.uuid4().hex[:8]}"
    alone, others = cluster.members[0], cluster.members[1:]
    put(alone, instance(service, 1))
    registry = EtcdRegistry.from_url(urlsplit(cluster.url(first=0)))
    async with registry, aclosing(registry.watch(service)) as watch:
        assert await anext(watch) == [instance(service, 1)]
        with cluster.frozen(*others), pytest.raises(RegistryUnavailable, match="no leader"):
            await asyncio.wait_for(anext(watch), NO_LEADER_CANCEL_S)
