"""Spring Cloud Zookeeper as a consumer without a sidecar (tests/support/spring_cloud.py runs the
peer), on our Curator layout on a real ZooKeeper server: a list-mode peer watches Spring's
DiscoveryClient through a roll beside a calling peer with the recommended settings."""

from __future__ import annotations

import uuid

import pytest

from tests.support.interop import Event
from tests.support.spring_cloud import (
    RECOMMENDED,
    WARMUP,
    RollUnderPeers,
    caller_args,
    report,
    roll_under_peers,
    zookeeper_args,
)
from tests.support.zookeeper_server import ZooKeeperServer


@pytest.fixture(scope="module")
def zookeeper_roll(
    zookeeper_server: ZooKeeperServer, tmp_path_factory: pytest.TempPathFactory
) -> RollUnderPeers:
    service = f"spring-{uuid.uuid4().hex[:8]}"
    callers = {"recommended": caller_args(*zookeeper_args(zookeeper_server, service, *RECOMMENDED))}
    lister = zookeeper_args(zookeeper_server, service)
    workdir = tmp_path_factory.mktemp("spring-zookeeper")
    return roll_under_peers(workdir, zookeeper_server.url, service, callers, lister)


def ids(event: Event) -> set[str]:
    return {row["id"] for row in event["instances"]}


@pytest.mark.zookeeper
def test_zookeeper_discovery_lists_the_live_instances(zookeeper_roll: RollUnderPeers) -> None:
    """Spring Cloud Zookeeper's DiscoveryClient on our Curator layout: the three providers with
    their address and our metadata (sidecar_* keys, weight), never more than the live ones
    during the roll, exactly the replacements at the end."""
    providers = {provider.name: provider for provider in zookeeper_roll.providers}
    listed = zookeeper_roll.listed
    three = next(event for event in listed if ids(event) == set(providers))
    for row in three["instances"]:
        provider = providers[row["id"]]
        assert f"{row['host']}:{row['port']}" == provider.listen
        metadata = row["metadata"]
        assert metadata["sidecar_admin"] == provider.admin
        assert metadata["sidecar_warmup_s"] == str(WARMUP)
        assert int(metadata["sidecar_start_ms"]) > 0
        assert metadata["sidecar_weight"] == "100"
        assert 0 < int(metadata["weight"]) <= 100
    # Warm once the warmup is over: the registry weight is the full one.
    assert any(
        all(row["metadata"]["weight"] == "100" for row in e["instances"])
        for e in listed
        if ids(e) == set(providers)
    )
    replacements = {new.name for new in zookeeper_roll.roll.replacements}
    assert all(len(event["instances"]) <= 3 for event in listed)
    assert all(ids(event) <= set(providers) | replacements for event in listed)
    assert ids(listed[-1]) == replacements


@pytest.mark.zookeeper
def test_zookeeper_discovery_drops_a_draining_instance(zookeeper_roll: RollUnderPeers) -> None:
    """Each old instance is out of Spring's list before its drain ended (so before /shutdown
    answered): it leaves the registry at step 2 of the offline sequence; each replacement
    appears."""
    listed = zookeeper_roll.listed
    for old, shutdown in zip(zookeeper_roll.providers, zookeeper_roll.roll.shutdowns, strict=True):
        stopping = zookeeper_roll.pacing.stopping_ms[old.name]
        drained_by = stopping + float(shutdown.body["seconds"]) * 1000
        gone = next(event for event in listed if event["t"] >= stopping and old.name not in ids(event))
        assert gone["t"] <= drained_by, (
            f"{old.name} listed {gone['t'] - stopping} ms into a {drained_by - stopping} ms drain"
        )
    for new in zookeeper_roll.roll.replacements:
        assert any(new.name in ids(event) for event in listed)


@pytest.mark.zookeeper
def test_zookeeper_roll_with_recommended_settings(
    zookeeper_roll: RollUnderPeers, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spring Cloud Zookeeper with the recommended settings through the roll: zero failed calls,
    and calls reached every replacement."""
    outcome = zookeeper_roll.outcomes["recommended"]
    report(capsys, "spring-cloud-zookeeper recommended", outcome)
    assert len(outcome.calls) > 1000
    assert outcome.failures == [], f"{len(outcome.failures)} failed, first: {outcome.failures[:3]}"
    assert outcome.instances >= {new.name for new in zookeeper_roll.roll.replacements}
