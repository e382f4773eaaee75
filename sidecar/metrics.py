"""Prometheus collectors of one sidecar, on a registry of its own (not the process-global one),
so that several sidecars in one process (tests) never collide.

The per-request counters of the data path are plain dict counts, turned into Prometheus samples
only when /metrics is read: a request costs one dict increment, and a scrape is still exact.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

# The *_created series double the output for no use here (they are mainly for OpenMetrics).
disable_created_metrics()  # type: ignore[no-untyped-call]

PHASES = ("starting", "registering", "warming", "serving", "draining", "drained")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.inflight = Gauge(
            "sidecar_inflight_requests", "Requests in flight through the inbound proxy", registry=r
        )
        self.requests: Tally[str] = Tally()  # status code -> requests answered by the inbound proxy
        r.register(
            TallyCollector(
                "sidecar_requests",
                "Requests answered by the inbound proxy, by status code",
                ("code",),
                self.requests,
            )
        )
        self.grpc_requests: Tally[str] = Tally()  # gRPC status -> calls through the inbound proxy
        r.register(
            TallyCollector(
                "sidecar_grpc_requests",
                "gRPC calls answered by the inbound proxy, by gRPC status (the HTTP/2 streams that "
                "carried them are in sidecar_requests_total too)",
                ("grpc_status",),
                self.grpc_requests,
            )
        )
        self.drain_seconds = Gauge("sidecar_drain_seconds", "Duration of the last drain", registry=r)
        self.notifications = Counter(
            "sidecar_notifications",
            "Offline notifications sent to consumers, by result",
            ["result"],
            registry=r,
        )
        self.weight = Gauge("sidecar_weight", "Weight currently published for this instance", registry=r)
        self.phase = Gauge("sidecar_phase", "1 for the current lifecycle phase", ["phase"], registry=r)
        self.registry_errors = Counter(
            "sidecar_registry_errors", "Failed registry operations, by operation", ["op"], registry=r
        )
        self.registry_ops = Counter(
            "sidecar_registry_operations", "Successful registry operations, by operation", ["op"], registry=r
        )
        self.upstream_requests: Tally[tuple[str, str]] = Tally()  # (service, "2xx") -> requests
        r.register(
            TallyCollector(
                "sidecar_upstream_requests",
                "Requests through upstream listeners, by service and status class",
                ("service", "result"),
                self.upstream_requests,
            )
        )
        self.upstream_retries = Counter(
            "sidecar_upstream_retries",
            "Upstream retries, by service and reason",
            ["service", "reason"],
            registry=r,
        )
        self.upstream_instances = Gauge(
            "sidecar_upstream_instances",
            "Instances an upstream may send to, by service",
            ["service"],
            registry=r,
        )
        self.upstream_held = Gauge(
            "sidecar_upstream_held_instances",
            "Instances an upstream keeps although its registry dropped them (a hold), by service",
            ["service"],
            registry=r,
        )
        self.upstream_holds = Counter(
            "sidecar_upstream_holds",
            "Holds begun: the registry dropped most of a table at once, unannounced, by service",
            ["service"],
            registry=r,
        )
        # Warmup (sidecar.provider.warming): which mode, what the latency mode measures, and why
        # each warmup ended.
        self.warmup_mode = Gauge(
            "sidecar_warmup_mode", "1 for the --warmup-mode in use", ["mode"], registry=r
        )
        self.app_latency = Gauge(
            "sidecar_app_latency_p90_seconds",
            "Latency mode: the app's p90 to its response head (the last window while warming)",
            registry=r,
        )
        self.warmup_reference = Gauge(
            "sidecar_warmup_reference_p90_seconds",
            "Latency mode: the p90 the warm peers publish, the level warming compares with (0: none)",
            registry=r,
        )
        self.warmup_ended = Counter(
            "sidecar_warmup_ended",
            "Warmups ended, by reason: settled (latency mode: warm) or window (--warmup ran out)",
            ["reason"],
            registry=r,
        )
        self.notify_received = Counter(
            "sidecar_notify_received", "Offline notifications received from providers", registry=r
        )
        # Which service and instance this sidecar is, as labels of a constant 1 (as node_exporter's
        # node_uname_info): dashboards pick a service and find its scrape targets through it.
        self.info = Gauge(
            "sidecar_info",
            "1, labelled with this sidecar's service and instance id",
            ["service", "instance_id"],
            registry=r,
        )
        for phase in PHASES:
            self.phase.labels(phase).set(0)

    def set_info(self, service: str, instance_id: str) -> None:
        self.info.labels(service, instance_id).set(1)

    def count_request(self, status: int) -> None:
        self.requests[str(status)] += 1

    def count_grpc(self, grpc_status: bytes | None) -> None:
        """A gRPC call's status; "none" when it ended without one (reset, cut off)."""
        self.grpc_requests[grpc_status.decode("latin-1") if grpc_status else "none"] += 1

    def count_upstream_request(self, service: str, status: int) -> None:
        self.upstream_requests[service, f"{status // 100}xx"] += 1

    def set_phase(self, phase: str) -> None:
        for name in PHASES:
            self.phase.labels(name).set(1 if name == phase else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TallyCollector(Collector):
    """A counter family read from a dict of counts at scrape time."""

    def __init__(self, name: str, documentation: str, labels: tuple[str, ...], counts: Tally[Any]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = labels
        self.counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        for key, count in list(self.counts.items()):
            family.add_metric(key if isinstance(key, tuple) else (key,), count)
        yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labels)
