"""The latency warmup's policy (sidecar.provider.ramp), pure functions: properties over any
sequence of measured windows, as tests/test_warmup.py has them for the clock curve."""

from __future__ import annotations

import itertools
import math

from hypothesis import example, given
from hypothesis import strategies as st

from sidecar.provider.ramp import (
    CEILING,
    FALL,
    PROBE_WINDOWS,
    RAN_OUT,
    REPUBLISH_SECONDS,
    SETTLED,
    WARM_RATIO,
    WINDOW_REQUESTS,
    Ramp,
    Window,
    after_window,
    measure,
    reference_of,
    run_out,
    should_publish,
    start,
    trend_z,
    weight,
)

floors = st.floats(min_value=0, max_value=100)
min_requests = st.integers(min_value=0, max_value=1000)
latencies = st.floats(min_value=0.0005, max_value=30)
references = st.none() | latencies
bases = st.integers(min_value=1, max_value=65535)
windows = st.lists(st.tuples(latencies, st.floats(min_value=1, max_value=10), references), max_size=60)
Seen = list[tuple[float, float, float | None]]  # per window: median, p90 / median, reference


def window(median: float, spread: float = 1.2) -> Window:
    """A window of WINDOW_REQUESTS requests with this median, its p90 `spread` times as slow."""
    return Window(median, median * spread, WINDOW_REQUESTS)


def ramp_through(ramp: Ramp, seen: Seen) -> list[Ramp]:
    """Every state of `ramp` as these windows arrive."""
    states = [ramp]
    for median, spread, reference in seen:
        states.append(after_window(states[-1], window(median, spread), reference))
    return states


@given(floors, min_requests, windows)
def test_share_stays_between_the_floor_and_full(floor: float, needed: int, seen: Seen) -> None:
    """Whatever the app answers, the share is within [floor, CEILING] until the ramp ends, and
    full (1) from then on."""
    for state in ramp_through(start(floor, needed), seen):
        if state.full:
            assert state.share == 1
        else:
            assert min(floor / 100, CEILING) <= state.share <= CEILING


@given(floors, min_requests, windows)
def test_never_settled_before_the_minimum_requests(floor: float, needed: int, seen: Seen) -> None:
    """Warmup ends as settled only once --warmup-min-requests were served, after two warm
    windows in a row; once over, it stays over."""
    states = ramp_through(start(floor, needed), seen)
    for before, after in itertools.pairwise(states):
        if after.ended == SETTLED and not before.full:
            assert after.served >= needed
            assert after.calm >= 2
        if before.full:
            assert after == before


@given(floors, min_requests, st.lists(latencies, min_size=1, max_size=60), latencies)
def test_flat_high_latency_is_never_warm(
    floor: float, needed: int, slow: list[float], reference: float
) -> None:
    """With warm peers to compare with, an app whose p90 is above the warm level in every window
    never settles, however its latency moves."""
    seen: Seen = [(max(latency, WARM_RATIO * reference * 1.01), 1.0, reference) for latency in slow]
    for state in ramp_through(start(floor, needed), seen):
        assert not state.full


@given(floors, min_requests, latencies, st.integers(min_value=1, max_value=60))
def test_a_constant_slow_latency_holds_the_floor(
    floor: float, needed: int, reference: float, count: int
) -> None:
    """A cache that fills with time: ten times the warm level, window after window, keeps the
    share at the floor (traffic does not warm it, so none is added)."""
    seen: Seen = [(10 * reference, 1.2, reference)] * count
    for state in ramp_through(start(floor, needed), seen):
        assert state.share == min(floor / 100, CEILING)


@given(floors, st.integers(min_value=0, max_value=400), latencies)
def test_a_warm_app_settles_once_enough_was_served(floor: float, needed: int, reference: float) -> None:
    """An app at the warm level from its first request ends at full weight after two windows, or
    as soon as --warmup-min-requests were served if that takes longer."""
    seen: Seen = [(reference / 1.2, 1.2, reference)] * 100
    states = ramp_through(start(floor, needed), seen)
    ended = next(index for index, state in enumerate(states) if state.full)
    assert states[ended].ended == SETTLED
    assert ended == max(2, math.ceil(needed / WINDOW_REQUESTS))


@given(floors, min_requests, st.integers(min_value=2, max_value=60), references)
def test_warming_as_it_serves_raises_the_share(
    floor: float, needed: int, count: int, reference: float | None
) -> None:
    """A JIT: each window faster than the one before by more than FALL, and from the second on
    the share doubles, up to the ceiling, until it ends."""
    seen: Seen = [(10.0 * (1 - 2 * FALL) ** index, 1.2, reference) for index in range(count)]
    states = ramp_through(start(floor, needed), seen)
    for before, after in itertools.pairwise(states[1:]):
        assert after.full or after.share >= min(CEILING, before.share * 2)


@given(floors, min_requests, st.integers(min_value=0, max_value=20), latencies)
def test_one_slow_window_holds_and_two_halve(floor: float, needed: int, count: int, median: float) -> None:
    """A window twice as slow as the best one is a hiccup: the share holds; a second one in a
    row says more traffic made the app slower: the share halves (not below the floor)."""
    seen: Seen = [(median * (1 - 2 * FALL) ** index, 1.2, None) for index in range(count + 2)]
    grown = ramp_through(start(floor, needed), seen)[-1]
    if grown.full:
        return
    slowest = 2 * (grown.best or median)
    hiccup = after_window(grown, window(slowest), None)
    assert hiccup.share == grown.share
    again = after_window(hiccup, window(slowest), None)
    assert again.share == min(CEILING, max(grown.floor, grown.share / 2))


@given(floors, min_requests, windows, st.tuples(latencies, st.floats(min_value=1, max_value=10), references))
# Found by hypothesis in a make test run (2026-12-08): no warm peer, and the slower window, flat
# against the best, ended the warmup while the faster one, a new low, went on warming.
@example(0.0, 0, [(2.0, 1.0, 2.0)], (1.5, 1.0, None))
def test_a_faster_window_never_gets_less_weight(
    floor: float, needed: int, seen: Seen, next_window: tuple[float, float, float | None]
) -> None:
    """From any state, a window with a lower median and p90 leaves a share at least as large as
    a slower one: the weight only ever rewards the app for answering faster. With one exception,
    by design: with no warm peer to compare with, warm means "no longer getting faster", so a
    window that is a new low by FALL still warms (its share grows) where a flat one would end
    the warmup at full weight."""
    state = ramp_through(start(floor, needed), seen)[-1]
    median, spread, reference = next_window
    faster = after_window(state, window(median, spread), reference)
    slower = after_window(state, window(median * 1.5, spread), reference)
    best, ending = state.best, not state.full and slower.ended == SETTLED
    if ending and reference is None and best is not None and median < best * (1 - FALL):
        assert faster.ended is None
        assert faster.share >= state.share
        return
    assert faster.share >= slower.share


def ramp_through_samples(ramp: Ramp, samples: list[float], size: int, reference: float | None) -> list[Ramp]:
    """Every state of `ramp` as windows of `size` of these latencies (in order) arrive."""
    states = [ramp]
    for index in range(0, len(samples) - size + 1, size):
        states.append(after_window(states[-1], measure(samples[index : index + size]), reference))
    return states


@given(
    floors,
    min_requests,
    st.floats(min_value=0.002, max_value=0.05),
    st.integers(min_value=5, max_value=20),
    st.integers(min_value=3, max_value=12),
)
def test_a_steady_fall_per_request_goes_to_the_ceiling(
    floor: float, needed: int, fall: float, size: int, count: int
) -> None:
    """A JIT at its floor: each request a little faster than the one before (0.2% to 5%: far
    less than FALL per window at the low end, yet over TREND_FALL in two windows), and from the
    second window on the share is at the ceiling (the trend over the requests), confirmed as
    the fall goes on, until it ends."""
    samples = [1.0 * (1 - fall) ** index for index in range(size * count)]
    reference = samples[-1] / 100  # far below: never warm, the trend alone decides
    states = ramp_through_samples(start(floor, needed), samples, size, reference)
    assert states[1].share == min(floor / 100, CEILING)
    for state in states[2:]:
        assert state.full or state.share == CEILING


@given(floors, min_requests, st.integers(min_value=5, max_value=20), st.integers(min_value=0, max_value=10))
def test_a_probe_that_the_latency_does_not_confirm_is_undone(
    floor: float, needed: int, size: int, flat_windows: int
) -> None:
    """A burst of falling latencies (a host stall's recovery, a cache that looked like a JIT
    for a few requests) sends the share to the ceiling; flat windows after it do not confirm
    it, and within PROBE_WINDOWS windows the share is back at the floor, and stays there."""
    falling = [2.0 - index / 100 for index in range(2 * size)]
    # Flat at the median of the window that sent it up: no fall since, by rank or by FALL.
    flat = [measure(falling[size:]).p50] * (size * (PROBE_WINDOWS + flat_windows))
    states = ramp_through_samples(start(floor, needed), falling + flat, size, 0.01)
    base = min(floor / 100, CEILING)
    assert states[2].share == CEILING
    for state in states[2 + PROBE_WINDOWS :]:
        assert state.share == base


@given(
    floors,
    min_requests,
    st.lists(latencies, min_size=1, max_size=200),
    st.integers(min_value=5, max_value=20),
)
def test_latencies_that_never_fall_never_raise_the_share(
    floor: float, needed: int, values: list[float], size: int
) -> None:
    """A cache that fills with time, or an app that more traffic slows down: each request as
    slow as the one before or slower, above the warm level: the share never leaves the floor."""
    samples = sorted(values)
    reference = samples[0] / 2
    for state in ramp_through_samples(start(floor, needed), samples, size, reference):
        assert state.share == min(floor / 100, CEILING)


@given(st.lists(latencies, max_size=40))
def test_the_trend_is_negative_only_for_a_fall(values: list[float]) -> None:
    """The trend's z-score: below zero for latencies in falling order, above for rising, zero
    for equal ones, and bounded by the steadiest fall of that many requests."""
    ordered = sorted(values)
    assert trend_z(ordered) >= 0
    assert trend_z(ordered[::-1]) <= 0
    assert trend_z([1.0] * len(values)) == 0
    assert trend_z(values) >= trend_z(sorted(values, reverse=True))


@given(floors, min_requests, windows, bases)
def test_weight_is_a_registry_weight(floor: float, needed: int, seen: Seen, base: int) -> None:
    """The published weight is an integer in 1..base, below base until the ramp ends (so full
    weight always means the warmup is over), base once it ran out."""
    state = ramp_through(start(floor, needed), seen)[-1]
    published = weight(state, base)
    assert 1 <= published <= base
    if not state.full and base > 1:
        assert published < base
    over = run_out(state)
    assert weight(over, base) == base
    assert over.ended in (SETTLED, RAN_OUT)


@given(st.lists(st.floats(min_value=0, max_value=100), min_size=1, max_size=200))
def test_a_window_measures_latencies_some_request_had(values: list[float]) -> None:
    """Nearest rank: the median and the p90 are among the values, with at most half and a tenth
    of them above."""
    measured = measure(values)
    assert measured.p50 in values
    assert measured.p90 in values
    assert measured.p50 <= measured.p90
    assert sum(value > measured.p50 for value in values) <= len(values) // 2
    assert sum(value > measured.p90 for value in values) <= len(values) // 10
    assert measured.count == len(values)


@given(st.lists(latencies, max_size=20))
def test_reference_is_the_median_of_the_peers(peers: list[float]) -> None:
    """No peer: no reference. Else the median: one peer far off moves it no further than its
    neighbours."""
    reference = reference_of(peers)
    if not peers:
        assert reference is None
        return
    assert reference is not None
    assert min(peers) <= reference <= max(peers)
    assert sum(p < reference for p in peers) <= len(peers) // 2
    assert sum(p > reference for p in peers) <= len(peers) // 2


@given(st.none() | latencies, latencies, st.floats(min_value=0, max_value=3600))
def test_a_serving_instance_publishes_rarely(published: float | None, measured: float, since: float) -> None:
    """The first p90 is published at once; later ones only when it moved by more than the warm
    tolerance, and not within a minute of the last."""
    decided = should_publish(published, measured, since)
    if published is None:
        assert decided
    elif since < REPUBLISH_SECONDS or abs(measured - published) <= (WARM_RATIO - 1) * published:
        assert not decided
