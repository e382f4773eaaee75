"""The demo report's warmup figure (sidecar.demo.ramps): both ramps of each cold app side by
side, drawn from what bench/latency_warmup.py recorded, or a word on how to record it."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from sidecar.demo import ramps
from sidecar.demo.run import report
from tests.test_demo_report import records

SVG = "{http://www.w3.org/2000/svg}"


def run_of(profile: str, mode: str, weights: list[list[float]], full: float | None) -> dict[str, Any]:
    return {
        "profile": profile,
        "mode": mode,
        "weights": weights,
        "time_to_full_s": full,
        "slow": 12,
        "p99_ms": 250.0,
    }


DATA: dict[str, Any] = {
    "date": "2026-12-07 06:05:59 UTC",
    "rate": 250.0,
    "runs": [
        run_of("jit", "clock", [[0, 10], [15, 25], [30, 100], [60, 100]], 30.0),
        run_of("jit", "latency", [[0, 10], [8, 20], [20, 100], [60, 100]], 20.0),
        run_of("cache", "clock", [[0, 10], [30, 100], [60, 100]], 30.0),
        run_of("cache", "latency", [[0, 10], [46, 100], [60, 100]], 46.0),
    ],
}


def svgs(html: str) -> list[ET.Element]:
    return [ET.fromstring(found) for found in re.findall(r"<svg.*?</svg>", html, re.S)]


def test_each_cold_app_has_a_panel_with_both_ramps() -> None:
    """One panel per cold app, in the order recorded, each with a line per mode that ends where
    the weight ended (the base: the top of the plot), and the date of the measurement."""
    html = ramps.section(DATA)
    panels = svgs(html)
    assert [panel.attrib["data-profile"] for panel in panels] == ["jit", "cache"]
    for panel in panels:
        lines = {line.attrib["data-mode"]: line.attrib["points"] for line in panel.iter(f"{SVG}polyline")}
        assert set(lines) == {"clock", "latency"}
        for points in lines.values():
            last_y = float(points.split()[-1].split(",")[1])
            assert last_y == round(ramps._y(100), 1)
    assert "2026-12-07 06:05:59 UTC" in html


def test_a_ramp_is_drawn_as_steps() -> None:
    """A weight holds until the next reading: each reading adds a horizontal then a vertical
    segment, so a jump is drawn where it was seen, not as a slope."""
    (panel, _) = svgs(ramps.section(DATA))
    latency = next(line for line in panel.iter(f"{SVG}polyline") if line.attrib["data-mode"] == "latency")
    points = [tuple(map(float, point.split(","))) for point in latency.attrib["points"].split()]
    at = round(ramps._x(8), 1)
    assert points[1] == (at, round(ramps._y(10), 1))
    assert points[2] == (at, round(ramps._y(20), 1))


def test_the_demo_page_carries_the_figure_or_says_how_to_make_it(tmp_path: Path) -> None:
    """Without the benchmark's file the section says which script records it; a file that is not
    the benchmark's is taken for none; the demo's page carries the section after the roll's."""
    assert ramps.load(tmp_path / "missing.json") is None
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert ramps.load(tmp_path / "bad.json") is None
    assert "bench/latency_warmup.py" in ramps.section(None)
    rolls, timeline = records()
    page = report(rolls, timeline)
    assert page.index("Share of traffic per instance") < page.index("Warmup: the clock and the app's latency")
