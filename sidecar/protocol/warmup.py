"""Warmup: the weight of a newly registered instance as a pure function of time.

A cold instance (empty caches, JIT not warm, pools not filled) that takes its full share at once
answers slowly and times out. During the window `T` after registration its weight is
`base x max(min_percent/100, (t/T)^curve)`, then `base`. The provider publishes coarse steps of
this curve to the registry (for consumers without a sidecar, e.g. DNS SRV weights); consumer
sidecars compute the smooth curve themselves from the registry metadata.

How old an instance is, a consumer reckons on its own monotonic clock, not from the provider's
wall clock: two hosts' wall clocks may be minutes apart, and a provider clock ahead would keep
an instance cold (or, with no floor, without traffic) and one behind would give a cold instance
its full share at once. What a consumer knows besides the provider's `sidecar_start_ms` (its
claimed age, good to the clocks' skew) is when it saw the instance appear, and the registry
weight, which the provider raises in steps on its own monotonic clock: `Warmup.ages_at` reads
that weight back into the ages that publish it, and `age_at_first_sight` / `age_after_step`
keep the claimed age where that evidence allows it, and otherwise the youngest age it allows
(Envoy's slow start counts from when the consumer first saw the host; this is that rule,
refined by the evidence so that a consumer that restarts does not take every instance for a cold
one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Registries are not built for high-frequency writes: publish at most one step per second,
# and about twenty steps over a window, which is smooth enough for DNS-weighted clients.
MIN_STEP_SECONDS = 1.0
STEPS_PER_WINDOW = 20
# The curve's parameters: their defaults (those of --warmup-curve and --warmup-min-percent, and
# of metadata that leaves them out) and the ranges a sidecar accepts and publishes.
DEFAULT_CURVE = 2.0
DEFAULT_MIN_PERCENT = 10.0
CURVE_RANGE = (0.1, 10.0)
MIN_PERCENT_RANGE = (0.0, 100.0)
MAX_WINDOW_SECONDS = 86400.0
# A registration or a weight step reaches the consumer sidecars that watch the registry within
# this: the provider's register call, the registry's own replication, a watch's round trip or
# SQLite's 100 ms poll, on a loaded host. It is also how far off the age of an instance seen
# registering can be, whatever the clocks say.
PROPAGATION_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Warmup:
    window: float  # seconds; 0 disables warmup
    curve: float = DEFAULT_CURVE
    min_percent: float = DEFAULT_MIN_PERCENT

    def factor(self, elapsed: float) -> float:
        """Share of the base weight `elapsed` seconds after registration, in (0, 1]."""
        if self.window <= 0 or elapsed >= self.window:
            return 1.0
        progress = max(elapsed, 0.0) / self.window
        return max(self.min_percent / 100.0, float(progress**self.curve))

    def weight(self, base: int, elapsed: float) -> int:
        """Integer weight for a registry: at least 1, at most base."""
        return max(1, min(base, math.ceil(base * self.factor(elapsed))))

    def step_seconds(self) -> float:
        return max(MIN_STEP_SECONDS, self.window / STEPS_PER_WINDOW)

    def ages_at(self, base: int, weight: int) -> tuple[float, float] | None:
        """The ages (seconds since registration) at which `weight(base, age)` is `weight`, as
        an interval; None when the weight says nothing about the age: the base itself, or a
        weight no step has."""
        if self.window <= 0 or not 1 <= weight < base:
            return None
        if weight < self.weight(base, 0):
            return None  # below the floor: not one of our steps
        # weight(base, t) >= w  <=>  base x factor(t) > w - 1; the floor is below that unless w
        # is the very first step, which starts at 0.
        low = 0.0 if weight == self.weight(base, 0) else self._age_of((weight - 1) / base)
        return low, self._age_of(weight / base)  # weight(base, t) <= w  <=>  base x factor(t) <= w

    def _age_of(self, share: float) -> float:
        """The age at which the curve (t/T)^curve reaches `share` of the base (0 < share < 1)."""
        return self.window * float(share ** (1.0 / self.curve))


def reckon_age(claimed: float, low: float, high: float) -> float:
    """The age to believe: the claimed one when the evidence (`low`..`high`) allows it, else the
    youngest the evidence allows. A claim that contradicts the evidence says the clocks disagree,
    and then the warmup errs on the cold side."""
    return claimed if low <= claimed <= high else low


def age_at_first_sight(
    warmup: Warmup, base: int, registry_weight: int, claimed: float, seen_registering: bool
) -> float:
    """The age of an instance a consumer sees for the first time. `claimed`: the consumer's wall
    clock minus the provider's `sidecar_start_ms`. `seen_registering`: it appeared while the
    consumer was watching (not in a first answer, which lists whatever was there already), so it
    registered just now, unless its registry weight says it is further on (an instance
    published again after its registry lost it)."""
    low, high = 0.0, math.inf
    if (ages := warmup.ages_at(base, registry_weight)) is not None:
        # The registry shows the last step published, up to a step (and its propagation) ago.
        low, high = ages[0], ages[1] + warmup.step_seconds() + PROPAGATION_SECONDS
    if seen_registering and low <= PROPAGATION_SECONDS:
        high = min(high, PROPAGATION_SECONDS)
    return reckon_age(claimed, low, high)


def age_after_step(warmup: Warmup, base: int, before: int, after: int, reckoned: float) -> float:
    """The age of a known instance whose registry weight went from `before` to `after` while the
    consumer watched: a step up was published at the first step time past the age that weight
    starts at, so it pins the age to within a step (and its propagation)."""
    ages = warmup.ages_at(base, after)
    if ages is None:
        return reckoned
    low, high = ages
    high = (low if after > before else high) + warmup.step_seconds() + PROPAGATION_SECONDS
    return reckon_age(reckoned, low, high)
