"""Spring Cloud Netflix Eureka as a consumer without a sidecar (tests/support/spring_cloud.py runs
the peer), on a real Eureka server: a roll of our providers with the recommended settings (no
call lost) and one with Spring's defaults (the client's registry copy fetched every 30 s, the
LoadBalancer's list kept 35 s: a figure printed by `make figures`, not asserted)."""

from __future__ import annotations

from functools import partial

import pytest

from tests.support.eureka_server import EurekaServer
from tests.support.spring_cloud import (
    EUREKA_RECOMMENDED,
    RollUnderPeers,
    eureka_args,
    report,
    roll_with_caller,
)


@pytest.fixture(scope="module")
def eureka_roll(eureka_server: EurekaServer, tmp_path_factory: pytest.TempPathFactory) -> RollUnderPeers:
    """A roll with the recommended settings."""
    workdir = tmp_path_factory.mktemp("spring-eureka-recommended")
    return roll_with_caller(
        workdir, eureka_server.url, "recommended", partial(eureka_args, eureka_server), *EUREKA_RECOMMENDED
    )


@pytest.fixture(scope="module")
def eureka_defaults_roll(
    eureka_server: EurekaServer, tmp_path_factory: pytest.TempPathFactory
) -> RollUnderPeers:
    """A roll with Spring's defaults: a figure for the README (`make figures`), not a check."""
    workdir = tmp_path_factory.mktemp("spring-eureka-defaults")
    return roll_with_caller(workdir, eureka_server.url, "defaults", partial(eureka_args, eureka_server))


@pytest.mark.eureka
@pytest.mark.figures
def test_eureka_roll_with_spring_defaults(
    eureka_defaults_roll: RollUnderPeers, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spring Cloud Netflix Eureka's client with Spring's defaults through a roll (its registry
    copy fetched every 30 s, the LoadBalancer's list kept 35 s): the calls reach the
    replacements in the end; what failed on the way is reported, not asserted away."""
    outcome = eureka_defaults_roll.outcomes["defaults"]
    report(capsys, "spring-cloud-eureka defaults", outcome)
    assert len(outcome.calls) > 1000
    assert outcome.instances >= {new.name for new in eureka_defaults_roll.roll.replacements}


@pytest.mark.eureka
def test_eureka_roll_with_recommended_settings(
    eureka_roll: RollUnderPeers, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spring Cloud Netflix Eureka with the recommended settings through a roll: zero
    failed calls, and calls reached every replacement."""
    outcome = eureka_roll.outcomes["recommended"]
    report(capsys, "spring-cloud-eureka recommended", outcome)
    assert len(outcome.calls) > 1000
    assert outcome.failures == [], f"{len(outcome.failures)} failed, first: {outcome.failures[:3]}"
    assert outcome.instances >= {new.name for new in eureka_roll.roll.replacements}
