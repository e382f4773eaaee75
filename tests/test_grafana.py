"""deploy/grafana/graceful-sidecar.json: one importable Grafana (10+) dashboard whose every query
names only metrics a live sidecar exports, filtered by its data-source and instance variables."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.ports import free_port
from tests.support.procs import demo_app, sidecar

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "graceful-sidecar.json"
METRIC = re.compile(r"\bsidecar_[a-z_]+\b")
# What the issue asks the dashboard to show, by the metric that shows it.
SHOWN = {
    "phase timeline": "sidecar_phase",
    "requests in flight": "sidecar_inflight_requests",
    "drain durations": "sidecar_drain_seconds",
    "notification results": "sidecar_notifications_total",
    "published weight": "sidecar_weight",
    "consumer-side instances": "sidecar_upstream_instances",
    "retries and budget exhaustion": "sidecar_upstream_retries_total",
    "registry errors": "sidecar_registry_errors_total",
}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL the dashboard runs: panel targets and variable queries."""
    found = [t["expr"] for p in panels(dashboard) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            found.append(variable["query"]["query"])
    return found


def exported_metric_names(text: str) -> set[str]:
    """Names in a Prometheus text exposition: sample names, and families without samples yet."""
    names = {m.group(1) for m in re.finditer(r"^# TYPE (\S+) ", text, re.M)}
    names |= {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if line and line[0] != "#"}
    return names


def test_dashboard_is_importable(dashboard: dict[str, Any]) -> None:
    """A Grafana 10+ dashboard: schema version, unique uid and panel ids, placed panels, and a
    Prometheus data-source variable that every panel and variable query uses."""
    assert dashboard["schemaVersion"] >= 36  # Grafana 9.4+; 10.x writes 37-39
    assert dashboard["uid"]
    assert dashboard["title"]
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"service", "instance"} <= set(variables)
    assert "$service" in variables["instance"]["query"]["query"]
    source = {"type": "prometheus", "uid": "${datasource}"}
    for panel in panels(dashboard):
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        if panel["type"] != "row":
            assert panel["datasource"] == source, panel["title"]
            assert all(t["datasource"] == source for t in panel["targets"])
    assert variables["service"]["datasource"] == variables["instance"]["datasource"] == source


def test_every_panel_query_follows_the_instance_variable(dashboard: dict[str, Any]) -> None:
    """Each panel's query selects `instance=~"$instance"` in every metric it names."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            selectors = re.findall(r"sidecar_[a-z_]+\{([^}]*)\}", target["expr"])
            assert len(selectors) == len(METRIC.findall(target["expr"])), target["expr"]
            assert all('instance=~"$instance"' in s for s in selectors), target["expr"]


def test_dashboard_shows_what_was_asked(dashboard: dict[str, Any]) -> None:
    """Phase, in flight, drains, notifications, weight, upstream instances, retries and the
    retry budget, registry errors: each has a query."""
    named = {name for query in queries(dashboard) for name in METRIC.findall(query)}
    assert set(SHOWN.values()) <= named
    assert any('reason="budget_exhausted"' in query for query in queries(dashboard))


def test_every_metric_queried_is_exported(tmp_path: Path, dashboard: dict[str, Any]) -> None:
    """Every metric name in the dashboard's queries is in a live sidecar's /metrics."""
    registry = f"sqlite://{tmp_path / 'registry.db'}"
    upstream = ("--upstream", f"svc=127.0.0.1:{free_port()}")
    with demo_app(tmp_path) as app, sidecar(tmp_path, registry, app, *upstream) as car:
        text = httpx.get(f"{car.admin}/metrics", timeout=5, verify=False).text
    exported = exported_metric_names(text)
    named = {name for query in queries(dashboard) for name in METRIC.findall(query)}
    assert named, "no metric found in the dashboard's queries"
    assert named <= exported, f"not exported: {sorted(named - exported)}"
    assert re.search(r"^sidecar_info\{[^}]*service=\"svc\"", text, re.M)
