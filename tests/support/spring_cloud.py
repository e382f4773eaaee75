"""The Spring Cloud peer (interop/spring-cloud) as the Spring Cloud interop tests run it: its
arguments for each registry, the settings we recommend, and a roll of three providers with
peers calling (and listing) through it. The tests are tests/test_interop_spring_*.py.

Every Spring setting a run uses is on the peer's command line, here: Spring Cloud Consul,
Zookeeper or Netflix Eureka discovery with Spring Cloud LoadBalancer and a `@LoadBalanced
RestClient`. A roll replaces three providers the sidecar way (GET /shutdown, SIGTERM, a
replacement under a new id, the next step once it has warmed up) while the peers call the
service with four callers each; it is over once every peer calls only the replacements.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
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
PROVIDER_ARGS = ("--warmup", str(WARMUP), "--quiet-period", "0.5", "--drain-timeout", "5")
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
# Each call takes the app this long: four callers make some 150 calls a second, a steady load
# that leaves the two cores to the sidecars and registries rather than to a busy loop.
WORK_MS = 25
WEIGHTED_WARMUP = 10  # seconds: a ramp long enough to be seen in the calls' shares
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
    return ["--peer.mode=call", f"--peer.callers={CALLERS}", f"--peer.path=/work?ms={WORK_MS}", *args]


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


def listed(peer: Peer, names: set[str], now: bool = False) -> bool:
    """Whether the list peer has listed exactly `names` (`now`: in its latest view)."""
    views = peer.of("instances")
    if now:
        views = views[-1:]
    return any({row["id"] for row in view["instances"]} == names for view in views)


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
        if lister is not None:
            # The list peer's JVM starts beside the callers, not before them: the roll begins
            # once it has listed the three, or its first view could already lack one.
            wait_for(partial(listed, listing, set(names)), 60, "the list peer to list all three")
        began = now_ms()
        pacing = ServingBeforeNext()
        result = roll(fleet, "sidecar", providers, PROVIDER_ARGS, f"{service}-new", pacing)
        new = {provider.name for provider in result.replacements}
        for peer in peers.values():
            wait_for(partial(settled, peer, new), SETTLE_SECONDS, "calls on the replacements only")
        outcome = RollUnderPeers(providers, result, pacing)
        outcome.outcomes = {name: Outcome(calls_since(peer, began), result) for name, peer in peers.items()}
        if lister is not None:
            # And at the end: the list peer's last view is the replacements, before it stops.
            wait_for(partial(listed, listing, new, now=True), 30, "the list peer to list the replacements")
            outcome.listed = listing.of("instances")
    for shutdown in result.shutdowns:
        assert shutdown.status == 200, shutdown.body
    return outcome


def roll_with_caller(
    workdir: Path, registry: str, name: str, peer_args: Callable[..., list[str]], *settings: str
) -> RollUnderPeers:
    """`roll_under_peers` with one caller peer, `name`, on a new service: `peer_args(service,
    *settings)` points it at the registry (`partial(consul_args, agent)`, say)."""
    service = f"spring-{uuid.uuid4().hex[:8]}"
    callers = {name: caller_args(*peer_args(service, *settings))}
    return roll_under_peers(workdir, registry, service, callers, None)
