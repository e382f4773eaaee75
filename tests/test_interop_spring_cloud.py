"""Spring Cloud as a consumer without a sidecar: Spring Cloud Consul and Spring Cloud Zookeeper
discovery with Spring Cloud LoadBalancer and a `@LoadBalanced RestClient`, against our provider
sidecars (demo app + sidecar) on a real Consul agent, a real ZooKeeper server and a real Eureka
server (with Spring Cloud Netflix's Eureka client). The peer is
interop/spring-cloud (its source says what it prints); every Spring setting a run uses is on its
command line below.

One roll per registry, shared by the module's tests: three providers replaced the sidecar way
(GET /shutdown, SIGTERM, a replacement under a new id, the next step once it has warmed up)
while peers call the service with four callers each. On Consul two peers call through the same
roll, one with Spring's defaults and one with the recommended settings (RECOMMENDED): the
defaults keep the LoadBalancer's instance list for 35 s and go on calling instances that have
left, a figure printed, not asserted; the recommended settings lose no call. So on Eureka,
whose client adds a 30 s fetch interval of its own by default. On ZooKeeper a
list-mode peer watches Spring's DiscoveryClient through the roll beside a calling peer.
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from sidecar.demo.fleet import Fleet, Provider
from sidecar.demo.roll import Roll, roll
from tests.support.consul_agent import ConsulAgent
from tests.support.eureka_server import EurekaServer
from tests.support.interop import Event, Peer, running_peer
from tests.support.procs import wait_for
from tests.support.zookeeper_server import ZooKeeperServer

WARMUP = 1  # seconds: short, the roll is about stale instance lists, not the ramp
PROVIDER_ARGS = ("--warmup", str(WARMUP), "--quiet-period", "0.5", "--drain-timeout", "10")
# What a Spring Cloud consumer should set in front of our sidecars (the README's recommendation):
# - the LoadBalancer's instance list kept 1 s instead of 35 s, so that an instance gone from the
#   registry stops getting calls within a second, well inside its drain;
# - a 503 (our sidecar's answer, with X-Sidecar-Refused, to what arrives after its drain) retried
#   on other instances, as a refused connection already is (retry is on by default once
#   spring-retry is on the classpath, but for IOExceptions and one other instance only).
RECOMMENDED = (
    "--spring.cloud.loadbalancer.cache.ttl=1s",
    "--spring.cloud.loadbalancer.retry.enabled=true",
    "--spring.cloud.loadbalancer.retry.retryable-status-codes=503",
    "--spring.cloud.loadbalancer.retry.max-retries-on-next-service-instance=2",
)
# Consul: only instances whose checks pass (our sidecar's maintenance mode, an app lost, a
# sidecar killed with its TTL check critical: all out at once).
CONSUL_RECOMMENDED = ("--spring.cloud.consul.discovery.query-passing=true", *RECOMMENDED)
# Eureka: the client's copy of the registry fetched every second instead of every 30 s (the
# delta: one small request), below the drain's quiet period as the LoadBalancer's cache is.
EUREKA_RECOMMENDED = ("--eureka.client.registry-fetch-interval-seconds=1", *RECOMMENDED)
CALLERS = 4
# Spring's default cache TTL is 35 s, and Eureka's client fetches every 30 s on top of it: with
# the defaults the roll is over for a peer only once both have been renewed.
SETTLE_SECONDS = 90.0


def consul_args(agent: ConsulAgent, service: str, *settings: str) -> list[str]:
    return [
        "--spring.cloud.zookeeper.enabled=false",
        "--spring.cloud.consul.host=127.0.0.1",
        f"--spring.cloud.consul.port={agent.http_port}",
        f"--peer.service={service}",
        *settings,
    ]


def eureka_args(server: EurekaServer, service: str, *settings: str) -> list[str]:
    return [
        "--spring.cloud.consul.enabled=false",
        "--spring.cloud.zookeeper.enabled=false",
        "--eureka.client.enabled=true",
        f"--eureka.client.service-url.defaultZone={server.http}/",
        f"--peer.service={service}",
        *settings,
    ]


def zookeeper_args(server: ZooKeeperServer, service: str, *settings: str) -> list[str]:
    return [
        "--spring.cloud.consul.enabled=false",
        f"--spring.cloud.zookeeper.connect-string={server.hosts}",
        f"--peer.service={service}",
        *settings,
    ]


def caller_args(*args: str) -> list[str]:
    return ["--peer.mode=call", f"--peer.callers={CALLERS}", *args]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class ServingBeforeNext:
    """The next step once the replacement's warmup is over (a state awaited, not a pause); the
    wall-clock time each old provider's stop began, for the list peer's events."""

    def __init__(self) -> None:
        self.stopping_ms: dict[str, int] = {}

    def stopping(self, old: Provider) -> None:
        self.stopping_ms[old.name] = now_ms()

    def replaced(self, new: Provider) -> None:
        wait_for(lambda: new.status()["phase"] == "serving", WARMUP + 10, f"{new.name} serving")


def calls_since(peer: Peer, since_ms: int) -> list[Event]:
    return [call for call in peer.of("call") if call["t"] >= since_ms]


def reached(peer: Peer, names: set[str]) -> bool:
    return {call["instance"] for call in peer.of("call")} >= names


def settled(peer: Peer, names: set[str], last: int = 200) -> bool:
    """The last `last` calls all succeeded, on the replacements only, and each got some: the
    roll is over for this consumer."""
    calls = peer.of("call")[-last:]
    return (
        len(calls) == last
        and all(call["status"] == 200 and call["instance"] in names for call in calls)
        and {call["instance"] for call in calls} == names
    )


@dataclass
class Outcome:
    calls: list[Event]
    roll: Roll

    @property
    def failures(self) -> list[Event]:
        return [call for call in self.calls if call["status"] != 200]

    @property
    def instances(self) -> set[str]:
        return {call["instance"] for call in self.calls}

    def summary(self) -> dict[str, object]:
        failed = self.failures
        kinds: dict[str, int] = {}
        for call in failed:
            kind = call["error"].split(":")[0] if call["status"] is None else f"HTTP {call['status']}"
            kinds[kind] = kinds.get(kind, 0) + 1
        return {
            "calls": len(self.calls),
            "failed": len(failed),
            "failed_share": round(len(failed) / max(1, len(self.calls)), 4),
            "failing_seconds": round((failed[-1]["t"] - failed[0]["t"]) / 1000, 1) if failed else 0.0,
            "kinds": kinds,
            "drains_s": [round(seconds, 1) for seconds in self.roll.drains],
        }


def report(capsys: pytest.CaptureFixture[str], name: str, outcome: Outcome) -> None:
    """The figure in the test output, with or without -s."""
    with capsys.disabled():
        print(f"\n{name}: {json.dumps(outcome.summary())}")


@dataclass
class RollUnderPeers:
    """One roll of three providers with peers on it: the callers' outcomes by name, and the
    list peer's events if there was one."""

    providers: list[Provider]
    roll: Roll
    pacing: ServingBeforeNext
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    listed: list[Event] = field(default_factory=list)


def roll_under_peers(
    workdir: Path, registry: str, service: str, callers: dict[str, list[str]], lister: list[str] | None
) -> RollUnderPeers:
    """Three providers; the `callers` peers (name: arguments) calling them and the `lister` peer
    listing them; a roll; returns once every caller calls only the replacements, all succeeding
    (or fails after SETTLE_SECONDS)."""
    names = [f"{service}-{n}" for n in (1, 2, 3)]
    with Fleet(workdir, registry, service, app_startup_delay=0.0) as fleet, ExitStack() as stack:
        providers = [fleet.start_provider(name, *PROVIDER_ARGS) for name in names]
        peers = {
            name: stack.enter_context(running_peer("spring-cloud", args, workdir / f"peer-{name}.log"))
            for name, args in callers.items()
        }
        if lister is not None:
            listing = stack.enter_context(
                running_peer("spring-cloud", ["--peer.mode=list", *lister], workdir / "lister.log")
            )
        for peer in peers.values():
            peer.wait_event(lambda event: event["event"] == "ready", what="the first call to succeed")
            wait_for(partial(reached, peer, set(names)), 30, "calls to reach all three providers")
        began = now_ms()
        pacing = ServingBeforeNext()
        result = roll(fleet, "sidecar", providers, PROVIDER_ARGS, f"{service}-new", pacing)
        new = {provider.name for provider in result.replacements}
        for peer in peers.values():
            wait_for(partial(settled, peer, new), SETTLE_SECONDS, "calls on the replacements only")
        outcome = RollUnderPeers(providers, result, pacing)
        outcome.outcomes = {name: Outcome(calls_since(peer, began), result) for name, peer in peers.items()}
        if lister is not None:
            outcome.listed = listing.of("instances")
    for shutdown in result.shutdowns:
        assert shutdown.status == 200, shutdown.body
    return outcome


# -- Spring Cloud Consul ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def consul_roll(consul_agent: ConsulAgent, tmp_path_factory: pytest.TempPathFactory) -> RollUnderPeers:
    service = f"spring-{uuid.uuid4().hex[:8]}"
    callers = {
        "defaults": caller_args(*consul_args(consul_agent, service)),
        "recommended": caller_args(*consul_args(consul_agent, service, *CONSUL_RECOMMENDED)),
    }
    return roll_under_peers(
        tmp_path_factory.mktemp("spring-consul"), consul_agent.url, service, callers, None
    )


@pytest.mark.consul
def test_consul_roll_with_spring_defaults(
    consul_roll: RollUnderPeers, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spring Cloud Consul with Spring's defaults through a roll: the calls reach the
    replacements in the end; what failed on the way is reported, not asserted away."""
    outcome = consul_roll.outcomes["defaults"]
    report(capsys, "spring-cloud-consul defaults", outcome)
    assert len(outcome.calls) > 1000
    assert outcome.instances >= {new.name for new in consul_roll.roll.replacements}


@pytest.mark.consul
def test_consul_roll_with_recommended_settings(
    consul_roll: RollUnderPeers, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spring Cloud Consul with the recommended settings through the same roll: zero failed
    calls, and calls reached every replacement."""
    outcome = consul_roll.outcomes["recommended"]
    report(capsys, "spring-cloud-consul recommended", outcome)
    assert len(outcome.calls) > 1000
    assert outcome.failures == [], f"{len(outcome.failures)} failed, first: {outcome.failures[:3]}"
    assert outcome.instances >= {new.name for new in consul_roll.roll.replacements}


# -- Spring Cloud Netflix Eureka ----------------------------------------------------------------


@pytest.fixture(scope="module")
def eureka_roll(eureka_server: EurekaServer, tmp_path_factory: pytest.TempPathFactory) -> RollUnderPeers:
    service = f"spring-{uuid.uuid4().hex[:8]}"
    callers = {
        "defaults": caller_args(*eureka_args(eureka_server, service)),
        "recommended": caller_args(*eureka_args(eureka_server, service, *EUREKA_RECOMMENDED)),
    }
    workdir = tmp_path_factory.mktemp("spring-eureka")
    return roll_under_peers(workdir, eureka_server.url, service, callers, None)


@pytest.mark.eureka
def test_eureka_roll_with_spring_defaults(
    eureka_roll: RollUnderPeers, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spring Cloud Netflix Eureka's client with Spring's defaults through a roll (its registry
    copy fetched every 30 s, the LoadBalancer's list kept 35 s): the calls reach the
    replacements in the end; what failed on the way is reported, not asserted away."""
    outcome = eureka_roll.outcomes["defaults"]
    report(capsys, "spring-cloud-eureka defaults", outcome)
    assert len(outcome.calls) > 1000
    assert outcome.instances >= {new.name for new in eureka_roll.roll.replacements}


@pytest.mark.eureka
def test_eureka_roll_with_recommended_settings(
    eureka_roll: RollUnderPeers, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spring Cloud Netflix Eureka with the recommended settings through the same roll: zero
    failed calls, and calls reached every replacement."""
    outcome = eureka_roll.outcomes["recommended"]
    report(capsys, "spring-cloud-eureka recommended", outcome)
    assert len(outcome.calls) > 1000
    assert outcome.failures == [], f"{len(outcome.failures)} failed, first: {outcome.failures[:3]}"
    assert outcome.instances >= {new.name for new in eureka_roll.roll.replacements}


# -- Spring Cloud Zookeeper ---------------------------------------------------------------------


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
