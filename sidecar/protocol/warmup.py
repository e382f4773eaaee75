"""Warmup: the weight of a newly registered instance as a pure function of time.

A cold instance (empty caches, JIT not warm, pools not filled) that takes its full share at once
answers slowly and times out. During the window `T` after registration its weight is
`base x max(min_percent/100, (t/T)^curve)`, then `base`. The provider publishes coarse steps of
this curve to the registry (for consumers without a sidecar, e.g. DNS SRV weights); consumer
sidecars compute the smooth curve themselves from the registry metadata.
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
