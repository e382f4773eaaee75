"""Consumer side: one instance as a consumer's table knows it: the weight rule its metadata
publishes, and how far into its warmup it is, by this consumer's own monotonic clock.

An instance's age is dated when the consumer first sees it, from what it knows then (see
sidecar.protocol.warmup: the claimed age, good to the provider's clock skew, kept where the
registry weight and the moment of sight allow it), and again when a registration anew or a
warmup step shows; in between it runs on the consumer's monotonic clock, which no wall-clock
step, here or at the provider, moves.

A provider in latency warmup mode computes its weight itself and says it on every response
(`X-Sidecar-Weight`): the consumer takes it at once (`follow_mark`) and keeps it until the
registry's weight changes, whichever news is the later.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from registry_adapters import Instance
from sidecar.http.client import Origin
from sidecar.protocol import metadata as meta
from sidecar.protocol.metadata import WeightSpec, weight_spec
from sidecar.protocol.warmup import age_after_step, age_at_first_sight

log = logging.getLogger("sidecar.instances")

# A weight is at most 65535: a mark longer than this is no sidecar's.
MARK_DIGITS = 5


@dataclass(slots=True)
class Member:
    instance: Instance
    inflight: int = 0
    ejected_until: float = 0.0
    spec: WeightSpec = field(init=False)  # parsed from the metadata when the instance changes
    # How to reach it, made when the instance changes too: over HTTP/1.1, and over HTTP/2 if its
    # provider sidecar takes it (sidecar_protocols); its address as a request's authority.
    origins: tuple[Origin, Origin] = field(init=False)
    authority: bytes = field(init=False)
    warned: bool = field(init=False, default=False)  # about invalid metadata: once per instance
    born_ms: int = 0  # when its warmup began, on this consumer's monotonic clock (see `reckon`)
    mark: float | None = None  # the weight its last response said (latency warmup mode)

    def __post_init__(self) -> None:
        self._parse()

    def update(self, instance: Instance) -> None:
        if instance != self.instance:
            if instance.weight != self.instance.weight:
                self.mark = None  # the registry's weight is the later news now
            self.instance = instance
            self._parse()
            if not self.spec.marked:
                self.mark = None

    def follow_mark(self, value: bytes) -> bool:
        """The weight a response of this instance said; whether that changed its weight. Only a
        provider in latency mode is followed, and only an integer a sidecar could send."""
        if not self.spec.marked or not value.isdigit() or len(value) > MARK_DIGITS:
            return False
        weight = float(min(int(value), meta.MAX_WEIGHT))
        if weight == self.mark:
            return False
        self.mark = weight
        return True

    def _parse(self) -> None:
        instance = self.instance
        self.spec = weight_spec(instance.weight, instance.meta)
        http1 = Origin(instance.host, instance.port)
        self.origins = (http1, Origin(instance.host, instance.port, h2c=meta.accepts_h2c(instance.meta)))
        self.authority = instance.address.encode()
        if self.spec.invalid is not None and not self.warned:
            self.warned = True
            log.warning(
                "%s: instance %s has invalid sidecar metadata (%s); using its registry weight %g",
                self.instance.service, self.instance.instance_id, self.spec.invalid, self.spec.base,
            )  # fmt: skip

    @property
    def instance_id(self) -> str:
        return self.instance.instance_id

    @property
    def start(self) -> str:
        return start_of(self.instance)

    def weight_at(self, now_ms: int) -> float:
        if self.mark is not None:
            return self.mark
        return self.spec.at_age((now_ms - self.born_ms) / 1000.0)

    def steered(self, weight: float) -> bool:
        """Whether its provider steers its share: in latency warmup, raised above its floor
        (the ramp saw the app get faster and feeds it) and not yet full. The balancer then picks
        it by `weight` alone (see sidecar.consumer.balancer); at its floor, least request keeps
        a slow app's requests few."""
        low, full = self.spec.steering
        return self.spec.marked and low < weight < full

    @property
    def settled_ms(self) -> int:
        """From this time on, `weight_at` is constant: the end of the warmup (0 without one)."""
        warmup = self.spec.warmup
        return 0 if warmup is None else self.born_ms + math.ceil(warmup.window * 1000)

    def reckon(self, now_ms: int, wall_ms: int, live: bool) -> None:
        """Date the warmup of an instance seen for the first time (or registered anew). `live`:
        it appeared while the consumer was following the registry, so it registered just now."""
        spec, age = self.spec, 0.0
        if spec.warmup is not None:
            claimed = (wall_ms - spec.start_ms) / 1000.0
            age = age_at_first_sight(spec.warmup, int(spec.base), self.instance.weight, claimed, live)
        self.born_ms = now_ms - round(age * 1000)

    def follow(self, instance: Instance, now_ms: int, wall_ms: int, live: bool) -> None:
        """The instance as the registry lists it now. `live`: this change happened just now (the
        consumer was following the registry, and the instance did not come back from absence)."""
        before, warming_before = self.instance, self.spec.warmup is not None
        if instance == before:
            return
        self.update(instance)
        warmup = self.spec.warmup
        if warmup is None:
            return
        registered_anew = start_of(before) != self.start
        if registered_anew or not warming_before:  # a new registration, or an override cleared
            self.reckon(now_ms, wall_ms, live and registered_anew)
        elif live and before.weight != instance.weight:
            # A warmup step of the provider, seen as it happened: it dates the warmup closely.
            reckoned = (now_ms - self.born_ms) / 1000.0
            age = age_after_step(warmup, int(self.spec.base), before.weight, instance.weight, reckoned)
            self.born_ms = now_ms - round(age * 1000)


def start_of(instance: Instance) -> str:
    """Its sidecar_start_ms, as published: what tells one registration from the next."""
    return instance.meta.get(meta.META_START_MS, "")
