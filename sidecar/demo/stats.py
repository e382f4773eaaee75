"""The one percentile of the demo, the tests and the benchmarks: nearest rank, no interpolation,
so that a p99 is a latency some request really had."""

from __future__ import annotations

from collections.abc import Iterable


def percentile(values: Iterable[float], fraction: float) -> float:
    """The value below which `fraction` of `values` lie (0.0 when there are none)."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]
