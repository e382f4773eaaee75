"""What the admin API reports, read explicitly from the parts `runtime` composed: the bodies of
/status and /weight, and the /metrics text. The parts only keep their state; this is the one
place that turns it into the API's JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sidecar.config import Settings
from sidecar.consumer.upstream import Upstreams
from sidecar.exec.supervisor import Supervisor
from sidecar.metrics import Metrics
from sidecar.provider.inflight import ConsumerBook, InflightTracker
from sidecar.provider.lifecycle import Lifecycle


@dataclass(frozen=True, slots=True)
class StatusView:
    settings: Settings
    lifecycle: Lifecycle
    tracker: InflightTracker
    consumers: ConsumerBook
    registry_kind: str
    upstreams: Upstreams
    child: Supervisor | None
    metrics: Metrics

    def status(self) -> dict[str, Any]:
        lifecycle, app = self.lifecycle, self.lifecycle.app
        provider = lifecycle.provider
        return {
            "service": self.settings.service,
            "instance_id": self.settings.instance_id,
            # A consumer-only sidecar (no --listen) registers no instance: no weight, no app.
            "role": "provider" if provider else "consumer-only",
            "phase": lifecycle.phase,
            "ready": lifecycle.ready,
            "weight": {
                "base": self.settings.weight,
                "current": lifecycle.current_weight(),
                "override": lifecycle.override,
                "warmup": self.warmup(),
            }
            if provider
            else None,
            "app": {"health": app.url, "healthy": app.healthy, "last_check": app.last_check}
            if self.settings.app is not None
            else None,
            "inflight": self.tracker.count,
            "registry": {
                "kind": self.registry_kind,
                "registered": lifecycle.registered,
                "last_error": lifecycle.registry_calls.last_error,
            },
            "consumers": len(self.consumers),
            "upstreams": self.upstreams.status(),
            "child": self.child.status() if self.child else None,
        }

    def weight(self) -> dict[str, Any]:
        lifecycle = self.lifecycle
        return {
            "base": self.settings.weight,
            "current": lifecycle.current_weight(),
            "override": lifecycle.override,
            "warmup": self.warmup(),
        }

    def warmup(self) -> dict[str, Any]:
        """Its mode, how far it is, the latency it measures, and why it ended."""
        lifecycle = self.lifecycle
        return lifecycle.warming.report(lifecycle.since_registered(), lifecycle.phase == "warming")

    def metrics_text(self) -> bytes:
        return self.metrics.render()
