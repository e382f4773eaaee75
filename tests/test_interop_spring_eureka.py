"""Spring Cloud Netflix Eureka as a consumer without a sidecar (tests/support/spring_cloud.py runs
the peer), on a real Eureka server: a roll of our providers with Spring's defaults (the
client's registry copy fetched every 30 s, the LoadBalancer's list kept 35 s) and with the
recommended settings, side by side."""

from __future__ import annotations

import uuid

import pytest

from tests.support.eureka_server import EurekaServer
from tests.support.spring_cloud import (
    EUREKA_RECOMMENDED,
    RollUnderPeers,
    caller_args,
    eureka_args,
    report,
    roll_under_peers,
)


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
