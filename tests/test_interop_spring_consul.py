"""Spring Cloud Consul as a consumer without a sidecar (tests/support/spring_cloud.py runs the
peer), on a real Consul agent: a roll of our providers with the recommended settings (no call
lost) and one with Spring's defaults (the LoadBalancer's list kept 35 s: calls go on to
instances that have left, a figure printed by `make figures`, not asserted); and Spring's
weighted balancer during a warmup."""

from __future__ import annotations

import uuid
from functools import partial
from pathlib import Path

import pytest

from sidecar.demo.fleet import Fleet
from tests.support.consul_agent import ConsulAgent
from tests.support.interop import Event, running_peer
from tests.support.procs import wait_for
from tests.support.spring_cloud import (
    CONSUL_RECOMMENDED,
    WEIGHTED_WARMUP,
    RollUnderPeers,
    caller_args,
    calls_since,
    consul_args,
    now_ms,
    report,
    roll_with_caller,
)


@pytest.fixture(scope="module")
def consul_roll(consul_agent: ConsulAgent, tmp_path_factory: pytest.TempPathFactory) -> RollUnderPeers:
    """A roll with the recommended settings."""
    workdir = tmp_path_factory.mktemp("spring-consul-recommended")
    return roll_with_caller(
        workdir, consul_agent.url, "recommended", partial(consul_args, consul_agent), *CONSUL_RECOMMENDED
    )


@pytest.fixture(scope="module")
def consul_defaults_roll(
    consul_agent: ConsulAgent, tmp_path_factory: pytest.TempPathFactory
) -> RollUnderPeers:
    """A roll with Spring's defaults: a figure for the README (`make figures`), not a check."""
    workdir = tmp_path_factory.mktemp("spring-consul-defaults")
    return roll_with_caller(workdir, consul_agent.url, "defaults", partial(consul_args, consul_agent))


@pytest.mark.consul
@pytest.mark.figures
def test_consul_roll_with_spring_defaults(
    consul_defaults_roll: RollUnderPeers, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spring Cloud Consul with Spring's defaults through a roll: the calls reach the
    replacements in the end; what failed on the way is reported, not asserted away."""
    outcome = consul_defaults_roll.outcomes["defaults"]
    report(capsys, "spring-cloud-consul defaults", outcome)
    assert len(outcome.calls) > 1000
    assert outcome.instances >= {new.name for new in consul_defaults_roll.roll.replacements}


@pytest.mark.consul
def test_consul_roll_with_recommended_settings(
    consul_roll: RollUnderPeers, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spring Cloud Consul with the recommended settings through a roll: zero failed
    calls, and calls reached every replacement."""
    outcome = consul_roll.outcomes["recommended"]
    report(capsys, "spring-cloud-consul recommended", outcome)
    assert len(outcome.calls) > 1000
    assert outcome.failures == [], f"{len(outcome.failures)} failed, first: {outcome.failures[:3]}"
    assert outcome.instances >= {new.name for new in consul_roll.roll.replacements}


def share(calls: list[Event], name: str) -> float:
    return sum(call["instance"] == name for call in calls) / max(1, len(calls))


@pytest.mark.consul
def test_consul_weighted_balancer_follows_the_warmup(
    consul_agent: ConsulAgent, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spring Cloud LoadBalancer's weighted supplier (`configurations=weighted`, which reads
    the metadata `weight`, here Consul's Meta) follows the registry weight our sidecar raises
    during `--warmup`: a new instance beside a warm one gets a small share of the calls at
    first, about half once warm. (The default round robin ignores weights.)"""
    service = f"spring-{uuid.uuid4().hex[:8]}"
    weighted = (*CONSUL_RECOMMENDED, "--spring.cloud.loadbalancer.configurations=weighted")
    with Fleet(tmp_path, consul_agent.url, service, app_startup_delay=0.0) as fleet:
        fleet.start_provider("warm")
        args = caller_args(*consul_args(consul_agent, service, *weighted))
        with running_peer("spring-cloud", args, tmp_path / "peer.log") as peer:
            peer.wait_event(lambda event: event["event"] == "ready", what="the first call to succeed")
            warming = fleet.start_provider("warming", "--warmup", str(WEIGHTED_WARMUP))
            ready = now_ms()
            wait_for(lambda: warming.status()["phase"] == "serving", WEIGHTED_WARMUP + 20, "the warmup's end")
            warm = now_ms() + 2000  # the LoadBalancer's list, 1 s old at most, renewed
            wait_for(lambda: len(calls_since(peer, warm)) > 600, 30, "calls once warm")
            calls = peer.of("call")
    early = share([call for call in calls if ready <= call["t"] < ready + 3000], "warming")
    late = share([call for call in calls if call["t"] >= warm], "warming")
    with capsys.disabled():
        print(
            f"\nspring-cloud weighted: the new instance's share {early:.0%} in its first 3 s, {late:.0%} warm"
        )
    assert early < 0.3
    assert 0.4 < late < 0.6
