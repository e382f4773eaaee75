"""Warmup does not depend on the provider's wall clock (issue 18, point 3), black box: instances
registered by hand in a SQLite registry with `sidecar_start_ms` from clocks two minutes ahead
or behind (tests.support.hand_providers, which also steps their registry weight as a provider
does), and a consumer sidecar whose /status shows the weights it gives them, over time.

Warmups here are linear over WINDOW_S with no floor, so a weight reads as a share of the window:
weight 50 is half way. Ages may differ by a few seconds between instances and across a
consumer's first answer (the registry weight dates an instance to within a step and its
propagation, `TOLERANCE_S`), never by the minutes of skew.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from sidecar.protocol.warmup import PROPAGATION_SECONDS, Warmup
from tests.support.hand_providers import HandProviders
from tests.support.ports import free_port
from tests.support.procs import SidecarProc, demo_app, sidecar, wait_for

# Long enough for a consumer to start on a loaded machine while instances are still warming.
WINDOW_S = 120.0
WARMUP = Warmup(WINDOW_S, curve=1, min_percent=0)
SKEW_S = 120.0  # two minutes: the provider's clock ahead (+) or behind (-)
HALF_S = WINDOW_S / 2
# How far off an age may be: a registry step, its propagation, and a second of the test's own
# reading (a /status read, a loaded machine).
TOLERANCE_S = WARMUP.step_seconds() + PROPAGATION_SECONDS + 1.0
# Weights are read again once the warmup moved on by this much.
LATER_S = 5.0


@dataclass
class Consumer:
    car: SidecarProc
    hand: HandProviders
    ports: dict[str, int]  # upstream service -> its local listener's port
    first: dict[str, dict[str, float]]  # service -> ages shown when the consumer first knew them

    def ages(self, service: str) -> dict[str, float]:
        """The warmup age of each instance, as the weight the consumer gives it shows it."""
        rows: list[dict[str, Any]] = self.car.status()["upstreams"][service]["instances"]
        return {row["instance_id"]: age_of(row["weight"]) for row in rows}


def age_of(weight: float) -> float:
    """The age a weight shows on the linear warmup of base 100 (weight 1: 0 to 1.2 s)."""
    return WINDOW_S * weight / 100


def knows(consumer: SidecarProc, service: str, instance_ids: set[str]) -> dict[str, float] | None:
    """The ages the consumer shows for `service` once its table holds exactly `instance_ids`."""
    rows: list[dict[str, Any]] = consumer.status()["upstreams"][service]["instances"]
    ages = {row["instance_id"]: age_of(row["weight"]) for row in rows}
    return ages if set(ages) == instance_ids else None


@pytest.fixture(scope="module")
def consumer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consumer]:
    """One consumer sidecar with three upstreams, on a SQLite registry where the test registers
    by hand: `started` has instances half way through their warmup and cold ones before the
    consumer starts, `live` gets cold ones registered once the consumer watches, and `sole`
    one cold instance of a provider whose clock is ahead, in front of a demo app."""
    tmp_path = tmp_path_factory.mktemp("skew")
    path = tmp_path / "registry.db"
    ports = {service: free_port() for service in ("started", "live", "sole")}
    upstreams = [
        arg for service, port in ports.items() for arg in ("--upstream", f"{service}=127.0.0.1:{port}")
    ]
    with HandProviders(path) as hand, demo_app(tmp_path) as app:
        hand.register("started", "half", WARMUP, age=HALF_S, skew=0)
        hand.register("started", "half-ahead", WARMUP, age=HALF_S, skew=SKEW_S)
        hand.register("started", "cold", WARMUP, age=0, skew=0)
        hand.register("started", "cold-behind", WARMUP, age=0, skew=-SKEW_S)
        with sidecar(tmp_path, f"sqlite://{path}", None, *upstreams, service="client") as car:
            first = {
                "started": wait_for(
                    lambda: knows(car, "started", {"half", "half-ahead", "cold", "cold-behind"})
                )
            }
            for name, skew in (("agree", 0.0), ("ahead", SKEW_S), ("behind", -SKEW_S)):
                hand.register("live", name, WARMUP, age=0, skew=skew)
            first["live"] = wait_for(lambda: knows(car, "live", {"agree", "ahead", "behind"}))
            hand.register("sole", "only", WARMUP, age=0, skew=SKEW_S, port=app.port)
            wait_for(lambda: knows(car, "sole", {"only"}))
            yield Consumer(car, hand, ports, first)


def true_to_age(consumer: Consumer, ages: dict[str, float]) -> None:
    """Each age shown is within TOLERANCE_S of the instance's true age (none is minutes off)."""
    for instance_id, shown in ages.items():
        truth = consumer.hand.age(instance_id)
        assert abs(shown - truth) <= TOLERANCE_S, (instance_id, shown, truth)


def test_a_consumer_that_starts_keeps_warmups_where_they_are(consumer: Consumer) -> None:
    """A consumer that starts while instances warm up sees each about as far into its warmup as
    it is: a half-warm one half warm whether its provider's clock is right or two minutes ahead,
    a cold one cold whether its provider's clock is right or two minutes behind; and so later on
    by the consumer's own clock."""
    true_to_age(consumer, consumer.first["started"])
    first = consumer.first["started"]
    later = wait_for(
        lambda: (ages := consumer.ages("started"))["cold"] >= first["cold"] + LATER_S and ages,
        what="the warmups to move on",
    )
    true_to_age(consumer, later)


def test_registrations_seen_live_warm_alike_whatever_the_clocks(consumer: Consumer) -> None:
    """Instances seen registering warm up from then on, whatever their providers' clocks say:
    the one behind is not at full weight at once, the one ahead not without weight; later too."""
    first = consumer.first["live"]
    true_to_age(consumer, first)
    assert all(age > 0 for age in first.values()), first  # some weight: never without traffic
    later = wait_for(
        lambda: (ages := consumer.ages("live"))["agree"] >= first["agree"] + LATER_S and ages,
        what="the warmups to move on",
    )
    true_to_age(consumer, later)


def test_a_sole_instance_whose_clock_is_ahead_gets_traffic(consumer: Consumer) -> None:
    """A sole cold instance, no warmup floor, its provider's clock two minutes ahead: every
    request reaches it."""
    url = f"http://127.0.0.1:{consumer.ports['sole']}/work"
    statuses = {httpx.get(url, params={"ms": 0}, timeout=10, verify=False).status_code for _ in range(20)}
    assert statuses == {200}
