"""The sidecar_* metadata a provider sidecar publishes with its instance, written and read here
only: `published` is what the provider's lifecycle registers, `weight_spec` is how a consumer
sidecar reads it back, and `accepts_h2c` whether it may speak HTTP/2 to it. Consumers without
a sidecar see only the registry weight; the registry adapters' layouts (ZooKeeper's Dubbo
layout) translate some of these keys for their ecosystem.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sidecar.protocol.warmup import (
    CURVE_RANGE,
    DEFAULT_CURVE,
    DEFAULT_MIN_PERCENT,
    MAX_WINDOW_SECONDS,
    MIN_PERCENT_RANGE,
    Warmup,
)

META_START_MS = "sidecar_start_ms"  # wall-clock ms of the registration (the provider's clock)
META_WARMUP_S = "sidecar_warmup_s"
META_WARMUP_CURVE = "sidecar_warmup_curve"
META_WARMUP_MIN_PERCENT = "sidecar_warmup_min_percent"
META_WEIGHT = "sidecar_weight"  # the base weight, reached at the end of the warmup
META_WEIGHT_OVERRIDE = "sidecar_weight_override"  # PUT /weight: wins over everything else
META_ADMIN = "sidecar_admin"  # the provider sidecar's admin URL
# --warmup-mode latency: consumers follow the weight the provider computes (its X-Sidecar-Weight
# marks, and its registry weight until the first one) instead of a curve of their own; absent:
# the clock curve, as from a sidecar of an older release.
META_WARMUP_MODE = "sidecar_warmup_mode"
WARMUP_MODES = ("time", "latency")
# A serving instance in latency mode publishes the p90 of its app's latency (ms), rarely: the
# warm level its warming peers compare themselves with (sidecar.provider.ramp).
META_LATENCY_MS = "sidecar_latency_ms"
MAX_LATENCY_MS = 3_600_000.0
# What the provider's listener accepts, comma-separated: HTTP/1.1 and, on the same port, HTTP/2
# with prior knowledge. A consumer sidecar speaks HTTP/2 only to a provider that says so here
# (`accepts_h2c`); one of an older release publishes no such key and gets HTTP/1.1.
META_PROTOCOLS = "sidecar_protocols"
PROTOCOL_HTTP1 = "http/1.1"  # the ALPN ids, as far as there are ones: h2c has none of its own
PROTOCOL_H2C = "h2c"
PROTOCOLS = f"{PROTOCOL_HTTP1},{PROTOCOL_H2C}"
# A value longer than this was not written by a sidecar: not read (HTTP/1.1, which all speak).
MAX_PROTOCOLS_LENGTH = 200

# The base weight when none is given (--weight, a layout without one), and the largest any
# weight may be (--weight, PUT /weight, published or read).
DEFAULT_WEIGHT = 100
MAX_WEIGHT = 65535
MAX_START_MS = 2**53  # below 2**53: exact in a float, and a date in the year 287396


def published(
    start_ms: int,
    warmup: Warmup,
    weight: int,
    admin: str,
    override: int | None,
    *,
    mode: str = "time",
    latency_ms: float | None = None,
) -> dict[str, str]:
    """The metadata of an instance registered at `start_ms` (wall-clock milliseconds); the warmup
    mode and the app's p90 only in latency mode, so that the clock's metadata stays as it was."""
    fields = {
        META_START_MS: str(start_ms),
        META_WARMUP_S: f"{warmup.window:g}",
        META_WARMUP_CURVE: f"{warmup.curve:g}",
        META_WARMUP_MIN_PERCENT: f"{warmup.min_percent:g}",
        META_WEIGHT: str(weight),
        META_ADMIN: admin,
        META_PROTOCOLS: PROTOCOLS,
    }
    if override is not None:
        fields[META_WEIGHT_OVERRIDE] = str(override)
    if mode != "time":
        fields[META_WARMUP_MODE] = mode
        if latency_ms is not None:
            fields[META_LATENCY_MS] = f"{min(MAX_LATENCY_MS, max(0.001, latency_ms)):.4g}"
    return fields


def peer_latency(fields: Mapping[str, str]) -> float | None:
    """The p90 (seconds) a serving instance in latency mode published, None without a valid one."""
    try:
        return _decimal(fields, META_LATENCY_MS, (0.001, MAX_LATENCY_MS), math.nan) / 1000.0
    except ValueError:
        return None


def accepts_h2c(fields: Mapping[str, str]) -> bool:
    """Whether an instance's provider sidecar takes HTTP/2 with prior knowledge (h2c) on the
    address it registered: `sidecar_protocols` lists `h2c`. Without the key (an older sidecar, an
    instance registered without one), or with a value no sidecar writes: HTTP/1.1 only."""
    text = fields.get(META_PROTOCOLS, "")
    if len(text) > MAX_PROTOCOLS_LENGTH:
        return False
    return PROTOCOL_H2C in (part.strip() for part in text.split(","))


@dataclass(frozen=True, slots=True)
class WeightSpec:
    """An instance's weight rule, parsed once from its metadata; `at(now_ms)` is all that is
    left to compute per request."""

    base: float
    start_ms: int = 0
    warmup: Warmup | None = None  # None: no warmup, or an override, or no sidecar metadata
    invalid: str | None = None  # why the sidecar metadata was rejected (the registry weight is used)
    # Latency warmup mode: `base` is the registry weight the provider steps, and the weight its
    # responses carry (X-Sidecar-Weight) wins over it until the registry's next change. A weight
    # strictly inside `steering` (above the ramp's floor, below the base it ends at) is the
    # provider feeding an app it has seen get faster: consumers then pick it by weight alone.
    marked: bool = False
    steering: tuple[float, float] = (0.0, 0.0)

    def at(self, now_ms: int) -> float:
        """The weight at `now_ms` by the provider's wall clock (consumers use `at_age`, with an
        age of their own reckoning: see sidecar.protocol.warmup)."""
        return self.at_age((now_ms - self.start_ms) / 1000.0)

    def at_age(self, age: float) -> float:
        """The weight `age` seconds after the registration. A warming instance keeps at least
        weight 1, as in the registry: with `sidecar_warmup_min_percent` 0 a sole instance
        must still get traffic."""
        if self.warmup is None:
            return self.base
        return max(1.0, self.base * self.warmup.factor(age))


# Metadata is whatever the registry returns, written by anyone: every value is checked against
# the range a provider sidecar can publish (its own options' ranges), in the form it publishes
# (ASCII; `str(int)` or `f"{float:g}"`), so that no number is huge, NaN or infinite.
_WEIGHT_KEYS = (
    META_WEIGHT_OVERRIDE,
    META_WEIGHT,
    META_WARMUP_S,
    META_WARMUP_CURVE,
    META_WARMUP_MIN_PERCENT,
    META_START_MS,
    META_WARMUP_MODE,
)
_INTEGER = re.compile(r"[0-9]{1,16}")  # 16 digits: start_ms is below 2**53
_DECIMAL = re.compile(r"[0-9]{1,16}(\.[0-9]{1,16})?(e[+-]?[0-9]{1,3})?", re.IGNORECASE)


def _integer(fields: Mapping[str, str], key: str, low: int, high: int, default: str | None = None) -> int:
    text = fields.get(key, default)
    if text is None:
        raise ValueError(f"{key} is missing")
    if not _INTEGER.fullmatch(text) or not low <= int(text) <= high:
        raise ValueError(f"{key} is not an integer in {low}..{high}: {text[:40]!r}")
    return int(text)


def _decimal(fields: Mapping[str, str], key: str, bounds: tuple[float, float], default: float) -> float:
    low, high = bounds
    text = fields.get(key, f"{default:g}")
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
        if META_WEIGHT_OVERRIDE in fields:
            return WeightSpec(float(_integer(fields, META_WEIGHT_OVERRIDE, 0, MAX_WEIGHT)))
        base = float(_integer(fields, META_WEIGHT, 1, MAX_WEIGHT))
        window = _decimal(fields, META_WARMUP_S, (0.0, MAX_WINDOW_SECONDS), 0.0)
        start_ms = _integer(fields, META_START_MS, 0, MAX_START_MS, "0")
        curve = _decimal(fields, META_WARMUP_CURVE, CURVE_RANGE, DEFAULT_CURVE)
        floor = _decimal(fields, META_WARMUP_MIN_PERCENT, MIN_PERCENT_RANGE, DEFAULT_MIN_PERCENT)
        mode = fields.get(META_WARMUP_MODE, WARMUP_MODES[0])
        if mode not in WARMUP_MODES:
            raise ValueError(f"{META_WARMUP_MODE} is not one of {', '.join(WARMUP_MODES)}: {mode[:40]!r}")
    except ValueError as exc:
        return WeightSpec(registry_weight, invalid=str(exc))
    if window <= 0:
        return WeightSpec(base)
    if mode == "latency":  # the provider steps its registry weight: the weight until a mark
        # The ramp's floor is ceil(base x min%), at least 1: one more leaves the rounding out.
        steering = (max(1.0, base * floor / 100.0) + 1.0, base)
        return WeightSpec(min(base, max(1.0, registry_weight)), marked=True, steering=steering)
    return WeightSpec(base, start_ms, Warmup(window, curve, floor))


def effective_weight(instance_weight: int, fields: Mapping[str, str], now_ms: int) -> float:
    """The weight a consumer gives an instance at `now_ms` (see `weight_spec`)."""
    return weight_spec(instance_weight, fields).at(now_ms)
