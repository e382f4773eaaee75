"""Pure policy for the consumer side: effective weights, instance picking, the retry budget.

Nothing here does I/O or reads a clock by itself: times and random sources are arguments, so
the behaviour is a function of its inputs and is tested with properties (hypothesis).

Picking is power-of-two-choices least-request, weighted: draw two candidates with probability
proportional to their weight, keep the one with fewer requests in flight per unit of weight.
When nothing is in flight the first draw wins, so the long-run share follows the weights
exactly; under load the second draw steers away from a slow or overloaded instance.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from registry_adapters import base as meta
from sidecar.protocol.warmup import Warmup


@dataclass(frozen=True, slots=True)
class WeightSpec:
    """An instance's weight rule, parsed once from its metadata; `at(now_ms)` is all that is
    left to compute per request."""

    base: float
    start_ms: int = 0
    warmup: Warmup | None = None  # None: no warmup, or an override, or no sidecar metadata
    invalid: str | None = None  # why the sidecar metadata was rejected (the registry weight is used)

    def at(self, now_ms: int) -> float:
        if self.warmup is None:
            return self.base
        return self.base * self.warmup.factor((now_ms - self.start_ms) / 1000.0)

    @property
    def settled_ms(self) -> int:
        """From this time on, `at` is constant: the end of the warmup (0 without one)."""
        return 0 if self.warmup is None else self.start_ms + math.ceil(self.warmup.window * 1000)


# Metadata is whatever the registry returns, written by anyone: every value is checked against
# the range a provider sidecar can publish (its own options' ranges), in the form it publishes
# (ASCII; `str(int)` or `f"{float:g}"`), so that no number is huge, NaN or infinite.
_WEIGHT_KEYS = (
    meta.META_WEIGHT_OVERRIDE,
    meta.META_WEIGHT,
    meta.META_WARMUP_S,
    meta.META_WARMUP_CURVE,
    meta.META_WARMUP_MIN_PERCENT,
    meta.META_START_MS,
)
_INTEGER = re.compile(r"[0-9]{1,16}")  # 16 digits: start_ms is below 2**53 (year 287396)
_DECIMAL = re.compile(r"[0-9]{1,16}(\.[0-9]{1,16})?(e[+-]?[0-9]{1,3})?", re.IGNORECASE)
MAX_WEIGHT = 65535
MAX_START_MS = 2**53
MAX_WARMUP_S = 86400.0


def _integer(fields: Mapping[str, str], key: str, low: int, high: int, default: str | None = None) -> int:
    text = fields.get(key, default)
    if text is None:
        raise ValueError(f"{key} is missing")
    if not _INTEGER.fullmatch(text) or not low <= int(text) <= high:
        raise ValueError(f"{key} is not an integer in {low}..{high}: {text[:40]!r}")
    return int(text)


def _decimal(fields: Mapping[str, str], key: str, low: float, high: float, default: str) -> float:
    text = fields.get(key, default)
    value = float(text) if _DECIMAL.fullmatch(text) else math.nan
    if not low <= value <= high:  # also rejects NaN, and inf from a huge exponent
        raise ValueError(f"{key} is not a number in {low:g}..{high:g}: {text[:40]!r}")
    return value


def weight_spec(instance_weight: int, fields: Mapping[str, str]) -> WeightSpec:
    """The weight rule a provider sidecar published: an override wins; during warmup
    `base x max(min%, (t/T)^curve)`; else the base. Instances without sidecar metadata, or
    with metadata out of the range a sidecar publishes (`invalid` says why), keep their
    registry weight."""
    registry_weight = float(max(0, instance_weight))
    if not any(key in fields for key in _WEIGHT_KEYS):
        return WeightSpec(registry_weight)
    try:
        if meta.META_WEIGHT_OVERRIDE in fields:
            return WeightSpec(float(_integer(fields, meta.META_WEIGHT_OVERRIDE, 0, MAX_WEIGHT)))
        base = float(_integer(fields, meta.META_WEIGHT, 1, MAX_WEIGHT))
        window = _decimal(fields, meta.META_WARMUP_S, 0.0, MAX_WARMUP_S, "0")
        start_ms = _integer(fields, meta.META_START_MS, 0, MAX_START_MS, "0")
        curve = _decimal(fields, meta.META_WARMUP_CURVE, 0.1, 10.0, "2")
        floor = _decimal(fields, meta.META_WARMUP_MIN_PERCENT, 0.0, 100.0, "10")
    except ValueError as exc:
        return WeightSpec(registry_weight, invalid=str(exc))
    if window <= 0:
        return WeightSpec(base)
    return WeightSpec(base, start_ms, Warmup(window, curve, floor))


def effective_weight(instance_weight: int, fields: Mapping[str, str], now_ms: int) -> float:
    """The weight a consumer gives an instance at `now_ms` (see `weight_spec`)."""
    return weight_spec(instance_weight, fields).at(now_ms)


@dataclass(frozen=True, slots=True)
class Candidate:
    weight: float
    inflight: int


def weighted_draw(cumulative: Sequence[float], rng: random.Random) -> int:
    return bisect.bisect_right(cumulative, rng.random() * cumulative[-1])


# A draw that lands on a candidate the caller cannot use (tried already, ejected) is drawn again;
# after this many misses in a row `draw_p2c` gives up and the caller scans with `pick`. With one
# of three instances out, that happens once in 3^8 = 6,561 draws.
DRAW_TRIES = 8


def draw_p2c(
    cumulative: Sequence[float],
    fits: Callable[[int], bool],
    load: Callable[[int], float],
    rng: random.Random,
) -> int | None:
    """`pick` without a scan, for large tables: two weighted draws by bisection over prebuilt
    cumulative weights, each drawn again while `fits` rejects it (rejection sampling: a draw
    stays proportional to the weights among the candidates that fit), then the lower `load`
    wins. O(log n) per pick. None when no weight is positive or DRAW_TRIES draws in a row
    missed: the caller then scans."""
    if not cumulative or cumulative[-1] <= 0:
        return None
    drawn: list[int] = []
    while len(drawn) < 2:
        for _ in range(DRAW_TRIES):
            index = min(weighted_draw(cumulative, rng), len(cumulative) - 1)
            if fits(index):
                drawn.append(index)
                break
        else:
            return None
    first, second = drawn
    return second if load(second) < load(first) else first


def pick(candidates: Sequence[Candidate], rng: random.Random) -> int | None:
    """Index of the chosen candidate, or None when no candidate has a positive weight."""
    usable = [index for index, candidate in enumerate(candidates) if candidate.weight > 0]
    if not usable:
        return None
    if len(usable) == 1:
        return usable[0]
    cumulative = list(itertools.accumulate(candidates[index].weight for index in usable))
    first = usable[min(weighted_draw(cumulative, rng), len(usable) - 1)]
    second = usable[min(weighted_draw(cumulative, rng), len(usable) - 1)]

    def load(index: int) -> float:
        return candidates[index].inflight / candidates[index].weight

    return second if load(second) < load(first) else first


class RetryBudget:
    """Finagle's retry budget: retries may add about `percent` of the requests, plus
    `min_per_second` so that a quiet service can still retry; a bad deploy cannot turn into a
    retry storm. A token bucket: each request deposits `percent`, time deposits
    `min_per_second`, a retry withdraws one; the balance is capped at `cap`."""

    def __init__(self, percent: float = 0.2, min_per_second: float = 10.0, cap: float = 100.0) -> None:
        self.percent = percent
        self.min_per_second = min_per_second
        self.cap = cap
        self._balance = min_per_second
        self._last: float | None = None

    def _refill(self, now: float) -> None:
        if self._last is not None:
            self._balance = min(self.cap, self._balance + (now - self._last) * self.min_per_second)
        self._last = now

    def on_request(self, now: float) -> None:
        self._refill(now)
        self._balance = min(self.cap, self._balance + self.percent)

    def try_withdraw(self, now: float) -> bool:
        self._refill(now)
        if self._balance >= 1:
            self._balance -= 1
            return True
        return False
