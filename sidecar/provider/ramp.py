"""Latency-driven warmup (`--warmup-mode latency`): how a warming instance's weight follows its
app's measured latency, as pure functions of what was measured. `sidecar.provider.warming`
feeds them and publishes what they decide.

A clock is wrong both ways: an app that is warm after 300 requests waits out the window at a
reduced weight, and one that needs longer than the window (a cache that fills slowly) gets its
full share while still slow. The provider sidecar sees the latency of every request it forwards,
so the ramp is driven by that instead, window by window: a window is `WINDOW_REQUESTS` requests
served, or `WINDOW_MIN_REQUESTS` once it has lasted `WINDOW_SECONDS` (`window_closes`), so a
quiet service advances with the requests it serves, never with time alone (no starving for a
window and then a flood). After each window:

- warm: its p90 within `WARM_RATIO` of the reference (the p90 its warm peers publish), or, with
  no peer to compare with (a whole new fleet), its latency no longer falling: its median no new
  low by `FALL`, nor `RISE` above its best;
- two warm windows in a row and `--warmup-min-requests` served: warmup ends, at full weight
  (`SETTLED`), and stays there;
- otherwise the share of the base weight doubles when the window was warm or its median fell by
  `FALL` since the share last grew (measured from the last growth, so that a slow, steady fall
  adds up); it holds while the latency is flat (a flat but high latency is not warm: a cache
  that fills with time gains nothing from more traffic), and halves while windows are `RISE`
  above the best, two in a row (more traffic made it slower; one slow window is a hiccup of the
  host, and only holds it); never below the floor (`--warmup-min-percent`), never full before
  the end;
- and the share goes to the ceiling at once when the requests served since it last changed
  show a steady fall (`falling`: a trend test on their order), as a JIT's do, a fraction of a
  percent a request, and by more than `TREND_FALL` in all: an app that warms by serving has a
  fixed number of slow answers to give whatever the weight, and feeding it slowly only spreads
  them over more time. That is a probe: unless the next `PROBE_WINDOWS` windows confirm it (the
  fall goes on, or the latency reached the warm level), the share goes back where it was, so
  that a cache that fills with time and happened to look like it for a few requests gets one
  short burst of traffic, not the rest of its warmup at full weight.

The `FALL` rule reads each window's median, which a hiccup of the host or two slow requests
do not move; the warm level from its p90, as the warm peers publish theirs. How fast the share
may grow needs no cap of its own against the latency: a consumer sidecar's picks already weigh
requests in flight against the weight, so a slow instance gets fewer of them than its weight
says (power of two choices, least request).

`--warmup` stays the upper bound: the lifecycle ends the ramp there (`RAN_OUT`) whatever it says.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

# 20 requests: the p90 is the second slowest, enough to see a cold app (tens of times its share
# of slow answers). A slow instance at its floor gets few requests (consumer sidecars send fewer
# still to an instance with many in flight), so a window also closes after a second once it has
# 5: a JIT that warms by serving must not wait many seconds per doubling of its share.
WINDOW_REQUESTS = 20
WINDOW_MIN_REQUESTS = 5
WINDOW_SECONDS = 1.0
# "Warm": within 25% of the warm peers' p90 (issue 20's example), so a few ms of scheduling
# noise on a loaded host do not keep a warm app warming.
WARM_RATIO = 1.25
# A new low by 5% says the app is still getting faster; smaller steps are noise.
FALL = 0.05
# Slow start: the share doubles per window while the app gets faster, so a floor of 10% reaches
# 80% in three windows; halved while windows are half again as slow as the best one.
GROWTH = 2.0
RISE = 1.5
RISEN_WINDOWS = 2
# The trend: a Mann-Kendall test over the latencies of the requests served since the share last
# changed, in the order they were answered (the last TREND_SAMPLES of them), read at each window's
# end. Each later request faster than an earlier one counts -1, slower +1; the sum's z-score, under
# the hypothesis of no trend, says how unlikely so steady a fall is in noise. Ranks, not values:
# one request slowed by the host moves it by little, and the size of the fall does not matter,
# only its steadiness, which is what tells a JIT (a little faster with every request) from a
# flat latency plus noise. Why not windows compared with each other (the last one, the best):
# at a 10% floor a 10x slow instance gets about 3 requests a second, so a window is 5 requests,
# a JIT's median falls by 1.5% from one to the next, and the host's noise moves it as much; the
# test reads every request, and sees that fall after about ten (the 5% rule needs 17 and more).
# Why not a time bound: a quiet service advances with the requests it serves, not with time.
#   TREND_Z: a one-sided p of 1% per look. The window's median must also be below the last
#   window's and the one when the share last grew, so that a stall of the host and its recovery
#   (slow answers, then normal ones: a fall in rank) is not taken for warming.
#   PROBE_WINDOWS: the windows after a growth on the trend within which it must be confirmed,
#   or undone. At the ceiling a JIT gets tens of requests a second, a window of 20 shows its fall
#   again; a flat latency gives a false alarm at 1% per look, so a cache cold for 45 s (some 25
#   looks at its floor) probes once or so, for two windows: some 40 slow answers, not 45 s of them.
#   TREND_FALL: and the fall must be worth feeding: at least 1.5% over those requests (the
#   Theil-Sen slope, the median of the slopes between every two of them, so again not moved by
#   a few slow ones). A JIT at 10x falls 2.7% over ten requests at its floor and more with each
#   one; a steady fall of a few ms on 500 (the first requests to a fresh app and sidecar a
#   little slower than the rest) is a real trend but no warming.
TREND_SAMPLES = 60
TREND_Z = 2.33
TREND_FALL = 0.015
PROBE_WINDOWS = 2
# A share of 0 (a floor of 0%) would never double: growth adds at least this much.
MIN_GROWTH = 0.05
# Below full weight until the ramp ends, so "full weight" always means "warmup over".
CEILING = 0.9
# Why a warmup ended (/status, /weight, the metrics).
SETTLED = "settled"
RAN_OUT = "window"


@dataclass(frozen=True, slots=True)
class Window:
    """What a window of requests measured: its median and p90 latency (seconds), its size, and
    the latencies themselves in the order they were answered (for the trend; none: no trend)."""

    p50: float
    p90: float
    count: int
    samples: tuple[float, ...] = field(default=(), repr=False)


def measure(latencies: Sequence[float]) -> Window:
    """Nearest rank, as everywhere in this project: latencies some request really had."""
    ordered = sorted(latencies)
    if not ordered:
        return Window(0.0, 0.0, 0)
    last = len(ordered) - 1
    return Window(
        ordered[min(last, len(ordered) // 2)],
        ordered[min(last, int(len(ordered) * 0.9))],
        len(ordered),
        tuple(latencies),
    )


def trend_z(samples: Sequence[float]) -> float:
    """The Mann-Kendall z-score of `samples` in order: negative when they fall, about -1.5 to 1.5
    for noise, 0 for fewer than three samples or all of them equal."""
    count = len(samples)
    if count < 3:
        return 0.0
    score = sum(
        (later > earlier) - (later < earlier)
        for index, earlier in enumerate(samples)
        for later in samples[index + 1 :]
    )
    variance = count * (count - 1) * (2 * count + 5) / 18
    if score == 0:
        return 0.0
    # With the continuity correction, as the test is usually written.
    return (score - 1 if score > 0 else score + 1) / math.sqrt(variance)


@dataclass(frozen=True, slots=True)
class Ramp:
    """Where a latency-driven warmup stands: `share` of the base weight, and what it was
    decided from. A new registration starts a new one (`start`)."""

    floor: float  # the share it starts at and never goes below: --warmup-min-percent / 100
    min_requests: int  # --warmup-min-requests: never full weight before this many were served
    share: float
    served: int = 0  # requests measured since the registration
    best: float | None = None  # the lowest window median so far, seconds
    anchor: float | None = None  # the window median when the share last grew (or the first)
    last: float | None = None  # the last window's median
    trail: tuple[float, ...] = ()  # latencies since the share last changed, at most TREND_SAMPLES
    probe: float | None = None  # the share before a growth on the trend, until confirmed
    probing: int = 0  # windows since that growth
    calm: int = 0  # warm windows in a row
    hot: int = 0  # windows in a row RISE above the best
    ended: str | None = None  # SETTLED or RAN_OUT once over

    @property
    def full(self) -> bool:
        return self.ended is not None


def start(min_percent: float, min_requests: int) -> Ramp:
    floor = min(1.0, max(0.0, min_percent / 100.0))
    return Ramp(floor, max(0, min_requests), min(floor, CEILING))


def window_closes(count: int, age: float) -> bool:
    """Whether a window of `count` requests, the first `age` seconds ago, is complete."""
    return count >= WINDOW_REQUESTS or (count >= WINDOW_MIN_REQUESTS and age >= WINDOW_SECONDS)


def is_warm(ramp: Ramp, window: Window, reference: float | None) -> bool:
    """A window at the warm level: its p90 near the warm peers' p90, or with no peer to compare
    with, its latency no longer falling nor risen (a flat latency then passes, however high: the
    fallback cannot tell flat from warm)."""
    if reference is not None:
        return window.p90 <= WARM_RATIO * reference
    best = ramp.best
    return best is not None and best * (1 - FALL) <= window.p50 <= best * RISE


def after_window(ramp: Ramp, window: Window, reference: float | None) -> Ramp:
    """The ramp after `window`, given the warm peers' p90 `reference` (seconds; None: no warm
    peer published one)."""
    if ramp.full:
        return ramp
    served = ramp.served + window.count
    warm = is_warm(ramp, window, reference)
    calm = ramp.calm + 1 if warm else 0
    hot = ramp.hot + 1 if ramp.best is not None and window.p50 > ramp.best * RISE else 0
    best = window.p50 if ramp.best is None else min(ramp.best, window.p50)
    anchor = window.p50 if ramp.anchor is None else ramp.anchor
    trail = (ramp.trail + window.samples)[-TREND_SAMPLES:]
    moved = replace(ramp, served=served, best=best, anchor=anchor, last=window.p50, calm=calm, hot=hot)
    if calm >= 2 and served >= ramp.min_requests:
        return replace(moved, share=1.0, ended=SETTLED, trail=(), probe=None)
    share, probe, probing = ramp.share, ramp.probe, ramp.probing + 1
    trend = falling(ramp, window, trail)
    if warm or trend or window.p50 < anchor * (1 - FALL):
        if probe is not None:
            probe = None  # confirmed: the share stays at the ceiling
        elif trend:  # to the ceiling; a probe unless the app is warm already
            probe, probing, share = (None if warm else share), 0, CEILING
        else:
            share = max(share * GROWTH, share + MIN_GROWTH)
        anchor, trail = window.p50, ()
    elif probe is not None and probing >= PROBE_WINDOWS:
        share, probe, trail = probe, None, ()  # not confirmed: undone
    elif hot >= RISEN_WINDOWS:
        share, probe, trail = share / GROWTH, None, ()
    share = min(CEILING, max(ramp.floor, share))
    return replace(moved, share=share, anchor=anchor, trail=trail, probe=probe, probing=probing)


def falling(ramp: Ramp, window: Window, trail: Sequence[float]) -> bool:
    """Whether the latencies since the share last changed (`trail`, `window`'s last) fall
    steadily (TREND_Z), to a median below both the last window's and the last growth's."""
    anchor = window.p50 if ramp.anchor is None else ramp.anchor
    lower = ramp.last is not None and window.p50 < min(ramp.last, anchor)
    return lower and trend_z(trail) <= -TREND_Z and trend_fall(trail) >= TREND_FALL


def trend_fall(samples: Sequence[float]) -> float:
    """How much `samples` fell from the first to the last, as a share of their median, along
    their Theil-Sen line (0 for fewer than two, or a median of 0; negative for a rise)."""
    count = len(samples)
    middle = measure(samples).p50
    if count < 2 or middle <= 0:
        return 0.0
    slopes = sorted(
        (later - earlier) / (step + 1)
        for index, earlier in enumerate(samples)
        for step, later in enumerate(samples[index + 1 :])
    )
    half = len(slopes) // 2
    slope = slopes[half] if len(slopes) % 2 else (slopes[half - 1] + slopes[half]) / 2
    return -slope * (count - 1) / middle


def run_out(ramp: Ramp) -> Ramp:
    """The window (--warmup) is over: full weight, whatever the latency says."""
    return ramp if ramp.full else replace(ramp, share=1.0, ended=RAN_OUT)


def weight(ramp: Ramp, base: int) -> int:
    """The weight for a registry and the consumers: at least 1, at most `base`, `base` once over."""
    if ramp.full:
        return base
    return max(1, min(base - 1 if base > 1 else base, math.ceil(base * ramp.share)))


def reference_of(peers: Sequence[float]) -> float | None:
    """The warm level: the median of the p90s the service's serving peers publish, so that one
    peer on a slow host, or one that published while still cold, moves it little."""
    if not peers:
        return None
    ordered = sorted(peers)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


# A serving instance publishes its p90 for warming peers in its registry metadata: a registry
# write, so rarely. Again only when it moved by more than the warm tolerance (the figure it
# serves to judge), and not more than once a minute.
REPUBLISH_CHANGE = WARM_RATIO - 1
REPUBLISH_SECONDS = 60.0


def should_publish(published: float | None, measured: float, since: float) -> bool:
    """Whether a serving instance publishes `measured` (seconds) as its p90, having published
    `published` `since` seconds ago (None: never this registration)."""
    if measured <= 0:
        return False
    if published is None:
        return True
    return since >= REPUBLISH_SECONDS and abs(measured - published) > REPUBLISH_CHANGE * published
