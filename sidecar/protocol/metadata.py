"""The sidecar_* metadata a provider sidecar publishes with its instance, written and read here
only: `published` is what the provider's lifecycle registers, `weight_spec` is how a consumer
sidecar reads it back. Consumers without a sidecar see only the registry weight; the registry
adapters' layouts (ZooKeeper's Dubbo layout) translate some of these keys for their ecosystem.
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

# The base weight when none is given (--weight, a layout without one), and the largest any
# weight may be (--weight, PUT /weight, published or read).
DEFAULT_WEIGHT = 100
MAX_WEIGHT = 65535
MAX_START_MS = 2**53  # below 2**53: exact in a float, and a date in the year 287396


def published(start_ms: int, warmup: Warmup, weight: int, admin: str, override: int | None) -> dict[str, str]:
    """The metadata of an instance registered at `start_ms` (wall-clock milliseconds)."""
    fields = {
        META_START_MS: str(start_ms),
        META_WARMUP_S: f"{warmup.window:g}",
        META_WARMUP_CURVE: f"{warmup.curve:g}",
        META_WARMUP_MIN_PERCENT: f"{warmup.min_percent:g}",
        META_WEIGHT: str(weight),
        META_ADMIN: admin,
    }
    if override is not None:
        fields[META_WEIGHT_OVERRIDE] = str(override)
    return fields


@dataclass(frozen=True, slots=True)
class WeightSpec:
    """An instance's weight rule, parsed once from its metadata; `at(now_ms)` is all that is
    left to compute per request."""

    base: float
    start_ms: int = 0
    warmup: Warmup | None = None  # None: no warmup, or an override, or no sidecar metadata
    invalid: str | None = None  # why the sidecar metadata was rejected (the registry weight is used)

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
    except ValueError as exc:
        return WeightSpec(registry_weight, invalid=str(exc))
    if window <= 0:
        return WeightSpec(base)
    return WeightSpec(base, start_ms, Warmup(window, curve, floor))


def effective_weight(instance_weight: int, fields: Mapping[str, str], now_ms: int) -> float:
    """The weight a consumer gives an instance at `now_ms` (see `weight_spec`)."""
    return weight_spec(instance_weight, fields).at(now_ms)
