"""The warmup curve, a pure function: properties over the whole parameter space."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from sidecar.protocol.warmup import Warmup

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
