"""Pure policy for the consumer side: instance picking, the retry budget, and when a table
distrusts its registry (the weights they use are read from the registry metadata by
`sidecar.protocol.metadata`).

Nothing here does I/O or reads a clock by itself: times and random sources are arguments, so
the behaviour is a function of its inputs and is tested with properties (hypothesis).

Picking is power-of-two-choices least-request, weighted: draw two candidates with probability
proportional to their weight, keep the one with fewer requests in flight per unit of weight.
When nothing is in flight the first draw wins, so the long-run share follows the weights
exactly; under load the second draw steers away from a slow or overloaded instance.

Except for an instance whose provider steers its share itself (a provider in latency warmup
mode that raised its weight above the floor, having seen the app get faster: least request would
count the same slowness a second time and starve the very requests that warm it): when either
draw is such an instance the first draw wins, so that instance gets exactly its weight's share.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    weight: float
    inflight: int
    steered: bool = False  # its provider steers its share: picked by weight alone


# The load of a candidate whose provider steers its share (see the module's doc): no comparison.
STEERED = None


def p2c_winner(first: int, second: int, load: Callable[[int], float | None]) -> int:
    """Of two weighted draws, the one with fewer requests in flight per unit of weight; the first
    when either is steered by its provider (load STEERED), or on a tie."""
    first_load, second_load = load(first), load(second)
    if first_load is STEERED or second_load is STEERED:
        return first
    return second if second_load < first_load else first


def weighted_draw(cumulative: Sequence[float], rng: random.Random) -> int:
    return bisect.bisect_right(cumulative, rng.random() * cumulative[-1])


# A draw that lands on a candidate the caller cannot use (tried already, ejected) is drawn again;
# after this many misses in a row `draw_p2c` gives up and the caller scans with `pick`. With one
# of three instances out, that happens once in 3^8 = 6,561 draws.
DRAW_TRIES = 8


def draw_p2c(
    cumulative: Sequence[float],
    fits: Callable[[int], bool],
    load: Callable[[int], float | None],
    rng: random.Random,
) -> int | None:
    """`pick` without a scan, for large tables: two weighted draws by bisection over prebuilt
    cumulative weights, each drawn again while `fits` rejects it (rejection sampling: a draw
    stays proportional to the weights among the candidates that fit), then the lower `load`
    wins (`p2c_winner`). O(log n) per pick. None when no weight is positive or DRAW_TRIES draws in a row
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
    return p2c_winner(drawn[0], drawn[1], load)


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

    def load(index: int) -> float | None:
        candidate = candidates[index]
        return STEERED if candidate.steered else candidate.inflight / candidate.weight

    return p2c_winner(first, second, load)


def looks_like_stall(listed: int, vanished: int) -> bool:
    """Whether a registry that stopped listing `vanished` instances at once, none of which said
    it was leaving (no offline notice, no closing mark), while it still lists `listed` others,
    more likely stalled than saw them go: the table would be empty, or most of it (more than
    half: Envoy's default panic threshold) went at once. A stalled etcd expires every lease as
    it resumes, a wall-clock step expires every SQLite row; instances that drain announce it.
    Dubbo's empty protection (off by default) holds only the empty case; Nacos's protect
    threshold and Envoy's panic threshold hold below a share, as here."""
    return vanished > listed


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
