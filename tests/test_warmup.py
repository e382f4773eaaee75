"""The warmup curve, and how a consumer reckons an instance's age, pure functions: properties
over the whole parameter space."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from sidecar.protocol.warmup import (
    PROPAGATION_SECONDS,
    Warmup,
    age_after_step,
    age_at_first_sight,
    reckon_age,
)

windows = st.floats(min_value=0.5, max_value=3600)
curves = st.floats(min_value=0.1, max_value=10)
floors = st.floats(min_value=0, max_value=100)
bases = st.integers(min_value=1, max_value=65535)


@given(windows, curves, floors, st.floats(min_value=0, max_value=1), st.floats(min_value=0, max_value=1))
def test_factor_never_falls(window: float, curve: float, floor: float, a: float, b: float) -> None:
    """The factor only rises with time, stays within [floor, 1], and is 1 once the window passed."""
    warmup = Warmup(window, curve, floor)
    early, late = sorted((a * window, b * window))
    assert warmup.factor(early) <= warmup.factor(late)
    assert floor / 100 <= warmup.factor(early) <= 1
    assert warmup.factor(window) == 1
    assert warmup.factor(window * 2) == 1


@given(windows, curves, floors, bases, st.floats(min_value=0, max_value=4000))
def test_weight_is_a_registry_weight(window: float, curve: float, floor: float, base: int, t: float) -> None:
    """The published weight is an integer in 1..base, equal to base after the window."""
    weight = Warmup(window, curve, floor).weight(base, t)
    assert 1 <= weight <= base
    if t >= window:
        assert weight == base


def test_curve_shape() -> None:
    """Quadratic by default: a quarter of the weight at half the window; the floor early on."""
    warmup = Warmup(10, 2, 10)
    assert warmup.weight(100, 5) == 25
    assert warmup.weight(100, 0) == 10
    assert warmup.weight(100, 1) == 10
    assert Warmup(0).weight(100, 0) == 100  # warmup off


def test_steps_are_coarse() -> None:
    """Registry steps: at most one a second, about twenty over a window."""
    assert Warmup(5).step_seconds() == 1
    assert Warmup(100).step_seconds() == 5


# -- the age a consumer reckons ---------------------------------------------------------------------

# How far a provider's wall clock may be off the consumer's (issue 18: two minutes either way).
skews = st.floats(min_value=-120, max_value=120)
# Float slack for ages read back through a power and its root.
EPSILON = 1e-6


def published(warmup: Warmup, base: int, age: float) -> int:
    """The registry weight a provider shows `age` seconds after registering: the weight of its
    last step, published every step_seconds() from 0 on."""
    step = warmup.step_seconds()
    return warmup.weight(base, min(math.floor(age / step) * step, warmup.window))


@given(windows, curves, floors, bases, st.floats(min_value=0, max_value=4000))
def test_ages_at_a_weight_hold_every_age_that_publishes_it(
    window: float, curve: float, floor: float, base: int, age: float
) -> None:
    """Read back, a registry weight below the base gives an interval that holds every age at
    which the curve gives that weight; the base says nothing."""
    warmup = Warmup(window, curve, floor)
    weight = warmup.weight(base, age)
    ages = warmup.ages_at(base, weight)
    if weight >= base:
        assert ages is None
    else:
        assert ages is not None
        low, high = ages
        assert low - EPSILON * window <= age <= high + EPSILON * window


@given(windows, curves, floors, bases, st.floats(min_value=0, max_value=PROPAGATION_SECONDS), skews)
def test_a_registration_seen_live_is_dated_within_its_propagation(
    window: float, curve: float, floor: float, base: int, age: float, skew: float
) -> None:
    """An instance seen registering (as young as its propagation) gets an age within
    PROPAGATION_SECONDS of the truth, however far the provider's clock is off."""
    warmup = Warmup(window, curve, floor)
    reckoned = age_at_first_sight(warmup, base, warmup.weight(base, 0), age + skew, seen_registering=True)
    assert abs(reckoned - age) <= PROPAGATION_SECONDS


@given(windows, curves, floors, bases, st.floats(min_value=0, max_value=4000))
def test_a_consumer_that_starts_believes_agreeing_clocks(
    window: float, curve: float, floor: float, base: int, age: float
) -> None:
    """In a consumer's first answer, with clocks that agree, an instance's age is its claimed
    age: a half-warm instance stays half warm, a cold one cold, a warm one warm."""
    warmup = Warmup(window, curve, floor)
    weight = published(warmup, base, age)
    assert age_at_first_sight(warmup, base, weight, age, seen_registering=False) == age


@given(windows, curves, floors, bases, st.floats(min_value=0, max_value=4000), skews)
def test_a_consumer_that_starts_is_never_fooled_into_warmth(
    window: float, curve: float, floor: float, base: int, age: float, skew: float
) -> None:
    """In a consumer's first answer, whatever the skew: while the registry shows a step below
    the base, the instance is never taken for older than that step's ages plus a step and its
    propagation (a cold instance does not get full weight because its provider's clock is
    behind), nor for younger than the step's first age (a warming one is not reset to cold
    because its provider's clock is ahead)."""
    warmup = Warmup(window, curve, floor)
    weight = published(warmup, base, age)
    reckoned = age_at_first_sight(warmup, base, weight, age + skew, seen_registering=False)
    ages = warmup.ages_at(base, weight)
    if ages is not None:
        low, high = ages
        latest = high + warmup.step_seconds() + PROPAGATION_SECONDS
        assert low <= reckoned <= latest
        if latest < window:
            assert warmup.factor(reckoned) < 1  # not full weight while the registry says otherwise
    assert reckoned >= 0


@given(
    windows,
    curves,
    floors,
    bases,
    st.floats(min_value=0, max_value=3600),
    st.floats(min_value=-3600, max_value=3600),
)
def test_a_step_seen_live_pins_the_age(
    window: float, curve: float, floor: float, base: int, age: float, error: float
) -> None:
    """A step up of the registry weight, seen as it is published, brings a reckoned age that is
    off by any amount to within a step (and its propagation) of the truth."""
    warmup = Warmup(window, curve, floor)
    before, after = published(warmup, base, age - warmup.step_seconds()), published(warmup, base, age)
    if after <= before or after >= base:
        return  # no step up here (a flat part of the curve, or the last step to the base)
    step_age = math.floor(age / warmup.step_seconds()) * warmup.step_seconds()  # when it was published
    reckoned = age_after_step(warmup, base, before, after, step_age + error)
    assert abs(reckoned - step_age) <= warmup.step_seconds() + PROPAGATION_SECONDS + EPSILON * window


@given(st.floats(-1e6, 1e6), st.floats(0, 1e6), st.floats(0, 1e6))
def test_reckon_age_keeps_a_claim_the_evidence_allows(claimed: float, a: float, b: float) -> None:
    """The claimed age if within the evidence, else the evidence's youngest end."""
    low, high = sorted((a, b))
    reckoned = reckon_age(claimed, low, high)
    assert reckoned == (claimed if low <= claimed <= high else low)
    assert low <= reckoned <= high
