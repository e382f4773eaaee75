"""The consumer's pure policy (sidecar.consumer.balancer): effective weights, weighted P2C picking and the
retry budget, as functions of their inputs; properties checked with hypothesis.

Statistical checks use Bernstein's inequality, which holds for any sample size (the normal
approximation does not for a share of 1 in 5000 over 20 000 draws): each share is allowed to stray
by the distance whose probability is below `FAILURE_PROBABILITY`. The draws are seeded, so a run
is reproducible; the bound keeps it from failing for an unlucky seed.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry_adapters import Instance
from sidecar.consumer.balancer import (
    DRAW_TRIES,
    Candidate,
    RetryBudget,
    draw_p2c,
    pick,
)
from sidecar.consumer.members import Member
from sidecar.protocol import metadata as meta
from sidecar.protocol.metadata import effective_weight, weight_spec

# Per checked share; a run checks a few hundred shares, so a false failure is out of reach.
FAILURE_PROBABILITY = 1e-9
DRAWS = 20_000
NOW_MS = 1_700_000_000_000


def tolerance(draws: int, p: float, failure: float = FAILURE_PROBABILITY) -> float:
    """Largest deviation of a Binomial(draws, p) count from its mean with probability >= 1 -
    `failure`, by Bernstein: P(|X - np| >= t) <= 2 exp(-t^2 / (2 (np(1-p) + t/3)))."""
    log_term = math.log(2 / failure)
    variance = draws * p * (1 - p)
    return log_term / 3 + math.sqrt((log_term / 3) ** 2 + 2 * log_term * variance)


def shares(candidates: list[Candidate], seed: int, draws: int = DRAWS) -> Counter[int | None]:
    rng = random.Random(seed)
    return Counter(pick(candidates, rng) for _ in range(draws))


def fields(**values: object) -> dict[str, str]:
    """Sidecar metadata as a provider publishes it (every value a string)."""
    keys = {
        "weight": meta.META_WEIGHT,
        "override": meta.META_WEIGHT_OVERRIDE,
        "window": meta.META_WARMUP_S,
        "curve": meta.META_WARMUP_CURVE,
        "floor": meta.META_WARMUP_MIN_PERCENT,
        "start_ms": meta.META_START_MS,
    }
    return {keys[name]: str(value) for name, value in values.items()}


# -- pick ----------------------------------------------------------------------------------------

weight_lists = st.lists(st.integers(min_value=1, max_value=1000), min_size=2, max_size=6)


@settings(max_examples=25, deadline=None)
@given(weight_lists, st.integers(min_value=0, max_value=2**32))
def test_idle_share_follows_weights(weights: list[int], seed: int) -> None:
    """With nothing in flight, each candidate's long-run share of picks is weight / sum."""
    counts = shares([Candidate(float(w), 0) for w in weights], seed)
    total = sum(weights)
    for index, weight in enumerate(weights):
        expected = DRAWS * weight / total
        assert abs(counts[index] - expected) <= tolerance(DRAWS, weight / total), (index, counts)


@given(
    st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=6),
    st.lists(st.integers(min_value=0, max_value=50), min_size=6, max_size=6),
    st.integers(min_value=0, max_value=2**32),
)
def test_zero_weight_never_picked(weights: list[int], inflight: list[int], seed: int) -> None:
    """A zero-weight candidate is never picked, whatever the loads; all zero gives None."""
    candidates = [Candidate(float(w), n) for w, n in zip(weights, inflight, strict=False)]
    rng = random.Random(seed)
    picks = {pick(candidates, rng) for _ in range(200)}
    if not any(weights):
        assert picks == {None}
    else:
        assert None not in picks
        assert all(weights[index] > 0 for index in picks if index is not None)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=1000), min_size=3, max_size=8),
    st.integers(min_value=0, max_value=2**32),
)
def test_drawn_share_follows_weights_among_fitting(weights: list[int], seed: int) -> None:
    """draw_p2c without a scan: with nothing in flight, each candidate that fits gets weight /
    (sum over those that fit); one that does not fit is never returned."""
    cumulative = list(itertools.accumulate(float(w) for w in weights))
    unfit = seed % len(weights)  # say, tried already
    rng = random.Random(seed)
    counts = Counter(
        draw_p2c(cumulative, lambda index: index != unfit, lambda index: 0.0, rng) for _ in range(DRAWS)
    )
    # A draw gives up (None) only after DRAW_TRIES misses in a row.
    miss = 1 - (1 - (weights[unfit] / sum(weights)) ** DRAW_TRIES) ** 2
    assert counts.pop(None, 0) <= DRAWS * miss + tolerance(DRAWS, miss)
    assert unfit not in counts
    total = sum(weights) - weights[unfit]
    draws = sum(counts.values())
    for index, weight in enumerate(weights):
        if index != unfit:
            expected = draws * weight / total
            assert abs(counts[index] - expected) <= tolerance(draws, weight / total), (index, counts)


def test_draw_gives_up_when_nothing_fits() -> None:
    """draw_p2c answers None, for the caller to scan, when nothing fits or no weight is positive."""
    rng = random.Random(3)
    assert draw_p2c([1.0, 2.0], lambda index: False, lambda index: 0.0, rng) is None
    assert draw_p2c([0.0, 0.0], lambda index: True, lambda index: 0.0, rng) is None
    assert draw_p2c([], lambda index: True, lambda index: 0.0, rng) is None


def test_edge_cases() -> None:
    """No candidate or only zero weights -> None; a single usable candidate is always it."""
    rng = random.Random(1)
    assert pick([], rng) is None
    assert pick([Candidate(0.0, 0), Candidate(0.0, 3)], rng) is None
    assert pick([Candidate(0.0, 0), Candidate(-5.0, 0)], rng) is None
    assert {pick([Candidate(7.0, 100)], rng) for _ in range(50)} == {0}
    assert {pick([Candidate(0.0, 0), Candidate(3.0, 9), Candidate(0.0, 0)], rng) for _ in range(50)} == {1}


def test_less_loaded_of_equal_weights_wins_three_quarters() -> None:
    """Two equal weights, one with requests in flight: the idle one wins when either draw hits
    it, i.e. with probability 1 - (1/2)^2 = 3/4."""
    counts = shares([Candidate(100.0, 5), Candidate(100.0, 0)], seed=7)
    assert abs(counts[1] - 0.75 * DRAWS) <= tolerance(DRAWS, 0.75)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(min_value=1, max_value=1000),
    st.integers(min_value=0, max_value=100),
    st.integers(min_value=1, max_value=100),
    st.booleans(),
    st.integers(min_value=0, max_value=2**32),
)
def test_less_loaded_picked_more_often(weight: int, low: int, extra: int, swap: bool, seed: int) -> None:
    """Under unequal loads, of two equal-weight candidates the less loaded is picked more often."""
    light, heavy = Candidate(float(weight), low), Candidate(float(weight), low + extra)
    candidates = [heavy, light] if swap else [light, heavy]
    light_index = candidates.index(light)
    counts = shares(candidates, seed, draws=4000)
    assert counts[light_index] > counts[1 - light_index]
    assert abs(counts[light_index] - 0.75 * 4000) <= tolerance(4000, 0.75)


def test_load_is_per_unit_of_weight() -> None:
    """Load compares in-flight requests per unit of weight: 4 in flight on weight 400 is lighter
    than 2 on weight 100, so the heavier-weighted one wins whenever drawn (p = 1 - (1/5)^2)."""
    counts = shares([Candidate(400.0, 4), Candidate(100.0, 2)], seed=11)
    assert abs(counts[0] - 0.96 * DRAWS) <= tolerance(DRAWS, 0.96)


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.integers(min_value=1, max_value=1000), min_size=2, max_size=5),
    st.lists(st.integers(min_value=0, max_value=50), min_size=5, max_size=5),
    st.integers(min_value=0, max_value=4),
    st.integers(min_value=0, max_value=2**32),
)
def test_steered_candidate_gets_its_weight_share_whatever_its_load(
    weights: list[int], inflight: list[int], which: int, seed: int
) -> None:
    """A candidate whose provider steers its share (latency warmup) is picked with probability
    weight / total however many requests it and the others have in flight: least request does
    not count its slowness a second time. By `pick` and by `draw_p2c` alike."""
    steered = which % len(weights)
    candidates = [Candidate(float(w), inflight[n], steered=n == steered) for n, w in enumerate(weights)]
    p = weights[steered] / sum(weights)
    assert abs(shares(candidates, seed)[steered] - p * DRAWS) <= tolerance(DRAWS, p)
    cumulative = list(itertools.accumulate(float(w) for w in weights))

    def load(index: int) -> float | None:
        candidate = candidates[index]
        return None if candidate.steered else candidate.inflight / candidate.weight

    rng = random.Random(seed)
    drawn = Counter(draw_p2c(cumulative, lambda index: True, load, rng) for _ in range(DRAWS))
    assert abs(drawn[steered] - p * DRAWS) <= tolerance(DRAWS, p)


def test_steered_candidate_is_not_starved_by_its_slowness() -> None:
    """The case it is for: a warming instance at 90 of weight with 20 requests in flight (it is
    slow), beside two warm ones at 100 with 3 each. Least request gives it only the draws where
    both land on it, (90/290)^2 = 9.6%; steered, its weight's 31%."""
    slow, warm = Candidate(90.0, 20), Candidate(100.0, 3)
    both = (90 / 290) ** 2
    assert abs(shares([slow, warm, warm], seed=3)[0] - both * DRAWS) <= tolerance(DRAWS, both)
    steered = Candidate(90.0, 20, steered=True)
    p = 90 / 290
    assert abs(shares([steered, warm, warm], seed=3)[0] - p * DRAWS) <= tolerance(DRAWS, p)


@pytest.mark.parametrize(
    ("floor", "weight", "steered"),
    [
        (10, 10, False),
        (10, 11, False),
        (10, 20, True),
        (10, 90, True),
        (10, 100, False),
        (0, 2, False),
        (0, 3, True),
    ],
)
def test_provider_steers_above_its_floor_until_full(floor: int, weight: int, steered: bool) -> None:
    """A latency-warmup instance (base 100) is steered by its provider once the weight its
    responses say is above the ramp's floor (rounding aside) and until it is full; at the floor
    least request still keeps a slow app's requests few. A clock warmup is never steered."""
    published = {**fields(weight=100, window=120, floor=floor, start_ms=1), meta.META_WARMUP_MODE: "latency"}
    member = Member(Instance("svc", "i", "127.0.0.1", 1, 100, published))
    assert member.follow_mark(str(weight).encode())
    assert member.steered(member.weight_at(0)) is steered
    clock = Member(Instance("svc", "i", "127.0.0.1", 1, 100, {**published, meta.META_WARMUP_MODE: "time"}))
    assert not clock.steered(float(weight))


# -- effective_weight ----------------------------------------------------------------------------


@pytest.mark.parametrize("override", ["0", "250", "65535"])
def test_override_wins(override: str) -> None:
    """An override beats the base and a running warmup, even 0."""
    published = fields(weight=100, override=override, window=60, curve=2, floor=10, start_ms=NOW_MS)
    assert effective_weight(100, published, NOW_MS + 1000) == int(override)


def test_warmup_curve_points() -> None:
    """Warmup: the floor early on, base x (t/T)^curve mid-way, the base once T has passed."""
    published = fields(weight=200, window=10, curve=2, floor=10, start_ms=NOW_MS)
    assert effective_weight(5, published, NOW_MS) == pytest.approx(20.0)  # floor: 10 % of 200
    assert effective_weight(5, published, NOW_MS + 1000) == pytest.approx(20.0)  # (0.1)^2 < floor
    assert effective_weight(5, published, NOW_MS + 5000) == pytest.approx(50.0)  # 200 x 0.5^2
    assert effective_weight(5, published, NOW_MS + 8000) == pytest.approx(128.0)  # 200 x 0.8^2
    assert effective_weight(5, published, NOW_MS + 10_000) == 200.0
    assert effective_weight(5, published, NOW_MS + 3_600_000) == 200.0
    cubic = fields(weight=1000, window=10, curve=3, floor=0, start_ms=NOW_MS)
    assert effective_weight(5, cubic, NOW_MS + 5000) == pytest.approx(125.0)
    # A clock running behind the provider's: not yet started counts as the very beginning.
    assert effective_weight(5, published, NOW_MS - 4000) == pytest.approx(20.0)


def test_no_warmup_is_base() -> None:
    """Warmup off (window 0) or no warmup keys: the published base weight."""
    assert effective_weight(5, fields(weight=300, window=0, start_ms=NOW_MS), NOW_MS) == 300.0
    assert effective_weight(5, fields(weight=300), NOW_MS) == 300.0


def test_metadata_without_sidecar_keys_gives_registry_weight() -> None:
    """An instance without sidecar weight metadata keeps its registry weight, without complaint."""
    for published in ({}, {"version": "1.2"}, {meta.META_ADMIN: "http://127.0.0.1:1"}):
        spec = weight_spec(42, published)
        assert (spec.at(NOW_MS), spec.invalid) == (42.0, None)
        assert weight_spec(-7, published).at(NOW_MS) == 0.0


HUGE = "9" * 400


@pytest.mark.parametrize(
    "published",
    [
        fields(weight="heavy"),
        fields(weight=100, window="soon", start_ms=NOW_MS),
        fields(weight=100, window=10, start_ms="yesterday"),
        fields(weight=100, window=10, curve="steep", start_ms=NOW_MS),
        fields(weight=100, window=10, floor="", start_ms=NOW_MS),
        fields(override="half"),
        fields(override="-3"),
        fields(override=""),
        fields(override=HUGE),
        fields(override="\u0667"),  # ARABIC-INDIC DIGIT SEVEN: int() takes it, a sidecar never sends it
        fields(window=10, start_ms=NOW_MS),  # warmup without a base weight
        fields(weight=HUGE),
        fields(weight=0),
        fields(weight=-5),
        fields(weight=65536),
        fields(weight=" 100"),
        fields(weight=100, window=10, start_ms=HUGE),
        fields(weight=100, window=10, start_ms=-NOW_MS),
        fields(weight=100, window="nan", start_ms=NOW_MS),
        fields(weight=100, window="inf", start_ms=NOW_MS),
        fields(weight=100, window="1e999", start_ms=NOW_MS),
        fields(weight=100, window=-10, start_ms=NOW_MS),
        fields(weight=100, window=10, curve="nan", start_ms=NOW_MS),
        fields(weight=100, window=10, curve=0, start_ms=NOW_MS),
        fields(weight=100, window=10, floor=-1, start_ms=NOW_MS),
        fields(weight=100, window=10, floor="1e400", start_ms=NOW_MS),
    ],
)
def test_invalid_metadata_gives_registry_weight(published: dict[str, str]) -> None:
    """Sidecar metadata out of what a sidecar publishes (unparsable, huge, NaN, inf, negative,
    non-ASCII, empty): the registry weight, unchanged, and a reason to log."""
    spec = weight_spec(42, published)
    assert spec.at(NOW_MS) == 42.0
    assert spec.invalid is not None
    assert weight_spec(-7, published).at(NOW_MS) == 0.0


WEIGHT_KEYS = [
    meta.META_WEIGHT,
    meta.META_WEIGHT_OVERRIDE,
    meta.META_WARMUP_S,
    meta.META_WARMUP_CURVE,
    meta.META_WARMUP_MIN_PERCENT,
    meta.META_START_MS,
]
odd_values = st.one_of(
    st.text(max_size=12),
    st.integers().map(str),
    st.integers(min_value=-(10**400), max_value=10**400).map(str),
    st.floats().map(str),
    st.floats().map(lambda value: f"{value:g}"),
    st.sampled_from(["", " ", "nan", "-inf", "1e309", "1_000", "0x10", "+5", "\u0667", "\uff15", "5\n"]),
)
any_metadata = st.dictionaries(st.one_of(st.sampled_from(WEIGHT_KEYS), st.text(max_size=8)), odd_values)


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=-(2**63), max_value=2**63), any_metadata, st.integers(0, 2**45))
def test_any_metadata_gives_a_usable_weight(
    registry_weight: int, published: dict[str, str], now: int
) -> None:
    """Whatever metadata the registry returns, the weight rule is built without raising and gives
    a finite weight from 0 to the largest weight anyone publishes; rejected metadata gives the
    registry weight."""
    spec = weight_spec(registry_weight, published)
    weight = spec.at(now)
    assert math.isfinite(weight)
    assert 0 <= weight <= max(65535.0, float(registry_weight))
    if spec.invalid is not None:
        assert weight == max(0.0, float(registry_weight))


@given(
    base=st.integers(min_value=1, max_value=65535),
    window_ms=st.integers(min_value=500, max_value=3_600_000),
    curve=st.floats(min_value=0.1, max_value=10),
    floor=st.floats(min_value=0, max_value=100),
    fraction=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_warmup_stays_between_floor_and_base(
    base: int, window_ms: int, curve: float, floor: float, fraction: float
) -> None:
    """During the window the weight is within [base x min%, base]; after it, exactly base."""
    # Formatted as the provider publishes them (lifecycle: f"{value:g}").
    published = fields(
        weight=base, window=f"{window_ms / 1000:g}", curve=f"{curve:g}", floor=f"{floor:g}", start_ms=NOW_MS
    )
    window_ms = round(float(published[meta.META_WARMUP_S]) * 1000)
    elapsed_ms = int(fraction * window_ms)
    during = effective_weight(1, published, NOW_MS + elapsed_ms)
    lowest = base * float(published[meta.META_WARMUP_MIN_PERCENT]) / 100
    assert lowest - 1e-9 * base <= during <= base
    assert effective_weight(1, published, NOW_MS + window_ms) == base
    assert effective_weight(1, published, NOW_MS + window_ms + elapsed_ms) == base


@given(
    base=st.integers(min_value=1, max_value=65535),
    window_ms=st.integers(min_value=500, max_value=3_600_000),
    curve=st.floats(min_value=0.1, max_value=10),
    floor=st.floats(min_value=0, max_value=100),
    a=st.floats(min_value=0, max_value=1),
    b=st.floats(min_value=0, max_value=1),
)
def test_warmup_never_falls(
    base: int, window_ms: int, curve: float, floor: float, a: float, b: float
) -> None:
    """The effective weight of a warming instance only rises with time."""
    published = fields(weight=base, window=window_ms / 1000, curve=curve, floor=floor, start_ms=NOW_MS)
    early, late = sorted((int(a * window_ms), int(b * window_ms)))
    assert effective_weight(1, published, NOW_MS + early) <= effective_weight(1, published, NOW_MS + late)


# -- RetryBudget ---------------------------------------------------------------------------------

T0 = 1000.0  # a monotonic clock reading, as time.monotonic() gives


def drain(budget: RetryBudget, now: float, limit: int = 10_000) -> int:
    """Withdraw until refused; the number of retries allowed at `now`."""
    allowed = 0
    while allowed < limit and budget.try_withdraw(now):
        allowed += 1
    return allowed


def test_budget_without_traffic_allows_min_per_second() -> None:
    """No requests: about min_per_second retries per second (10 by default), not more."""
    budget = RetryBudget()
    assert drain(budget, T0) == 10  # the initial balance
    per_second = [drain(budget, T0 + second) for second in range(1, 11)]
    assert all(9 <= allowed <= 11 for allowed in per_second), per_second
    assert sum(per_second) == pytest.approx(100, abs=1)
    # Asked every 10 ms for 5 s: the same rate, the calls themselves earn nothing.
    attempts = [budget.try_withdraw(T0 + 10 + step / 100) for step in range(1, 501)]
    assert sum(attempts) == pytest.approx(50, abs=1)


@pytest.mark.parametrize("requests", [100, 400])
def test_budget_adds_a_fifth_of_requests(requests: int) -> None:
    """N requests at once add 20 % of N retries to the min_per_second allowance."""
    budget = RetryBudget()
    for _ in range(requests):
        budget.on_request(T0)
    # abs=1: a fifth is not exact in binary, 100 deposits of 0.2 make 19.999...
    assert drain(budget, T0) == pytest.approx(10 + requests / 5, abs=1)


def test_budget_follows_requests_over_time() -> None:
    """A steady stream where every request wants a retry: about 20 % of them get one, plus the
    time allowance."""
    budget = RetryBudget(percent=0.2, min_per_second=1.0, cap=100.0)
    granted = 0
    for step in range(10_000):  # 1000 requests a second for 10 s
        now = T0 + step / 1000
        budget.on_request(now)
        granted += budget.try_withdraw(now)
    # 0.2 x 10 000 from requests, 1/s x 10 s from time, 1 initial.
    assert 2000 <= granted <= 2011


def test_budget_is_capped() -> None:
    """Neither a long idle time nor a burst of requests banks more than `cap` retries."""
    idle = RetryBudget()
    idle.try_withdraw(T0)
    assert drain(idle, T0 + 3600) == 100
    busy = RetryBudget()
    for _ in range(100_000):
        busy.on_request(T0)
    assert drain(busy, T0) == 100
    small = RetryBudget(percent=0.5, min_per_second=2.0, cap=5.0)
    for _ in range(1000):
        small.on_request(T0)
    assert drain(small, T0 + 60) == 5


@given(
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=5), st.integers(min_value=0, max_value=300)),
        max_size=30,
    )
)
def test_budget_bound(steps: list[tuple[float, int]]) -> None:
    """Over any schedule, retries granted <= initial + 20 % of requests + rate x elapsed time."""
    budget = RetryBudget()
    now, requests = T0, 0
    granted = drain(budget, now)
    for pause, count in steps:
        now += pause
        for _ in range(count):
            budget.on_request(now)
        requests += count
        granted += drain(budget, now)
    assert granted <= 10 + 0.2 * requests + 10 * (now - T0) + 1e-6
