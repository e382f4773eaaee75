"""The warmup ramps of the latency benchmark, in the demo's HTML report: for each cold app the
benchmark scripts (`jit`: slow for its first 300 requests; `cache`: slow for its first 45 s),
the new instance's weight over the minute after it joined two warm ones, with the clock
(`--warmup 30`) and with `--warmup-mode latency --warmup 120`, side by side.

Measured by `bench/latency_warmup.py`, which writes `warmup_ramps.json` beside this module, and
not by the demo itself: each ramp is a minute of load, four of them would make `make demo` five
times longer. The figure says when the benchmark ran; without its file it says how to make one.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DATA = Path(__file__).with_name("warmup_ramps.json")
PANEL_W, PANEL_H = 470, 270
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 30, 64  # below the axis: its ticks, then the legend
SECONDS = 60.0
BASE = 100.0
COLORS = {"clock": "#4e79a7", "latency": "#f28e2b"}
TITLES = {
    "jit": "warm after 300 requests (a JIT)",
    "cache": "slow for its first 45 s (a cache that fills)",
}


def load(path: Path = DATA) -> dict[str, Any] | None:
    """The benchmark's record, or None when there is none (or it cannot be read)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("runs"), list) else None


def _x(seconds: float) -> float:
    return LEFT + (PANEL_W - LEFT - RIGHT) * min(seconds, SECONDS) / SECONDS


def _y(weight: float) -> float:
    return TOP + (PANEL_H - TOP - BOTTOM) * (1 - min(weight, BASE) / BASE)


def _line(x1: float, y1: float, x2: float, y2: float, style: str) -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" {style}/>'


def panel(profile: str, runs: Sequence[Mapping[str, Any]]) -> str:
    """One cold app: each mode's weight over time as a step line, the 31 s mark, the axes."""
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{PANEL_W}" height="{PANEL_H}" font-size="11" '
        f'font-family="sans-serif" data-profile="{html.escape(profile)}">',
        f'<text x="{LEFT}" y="16" font-weight="bold">{html.escape(TITLES.get(profile, profile))}</text>',
    ]
    for share in (0, 50, 100):
        y = _y(share)
        parts.append(_line(LEFT, y, PANEL_W - RIGHT, y, 'stroke="#ddd"'))
        parts.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{share}%</text>')
    for tick in range(0, int(SECONDS) + 1, 10):
        x = _x(tick)
        parts.append(_line(x, PANEL_H - BOTTOM, x, PANEL_H - BOTTOM + 4, 'stroke="#333"'))
        parts.append(f'<text x="{x:.1f}" y="{PANEL_H - BOTTOM + 16}" text-anchor="middle">{tick} s</text>')
    mark = _x(31)
    parts.append(_line(mark, TOP, mark, PANEL_H - BOTTOM, 'stroke="#999" stroke-dasharray="3,3"'))
    parts.append(f'<text x="{mark + 3:.1f}" y="{TOP + 10}" fill="#777">31 s</text>')
    for run in runs:
        mode = str(run["mode"])
        points: list[str] = []
        for t, weight in run["weights"]:
            if points:  # a step: the weight holds until the next reading
                points.append(f"{_x(t):.1f},{float(points[-1].split(',')[1]):.1f}")
            points.append(f"{_x(t):.1f},{_y(weight):.1f}")
        color = COLORS.get(mode, "#333")
        parts.append(
            f'<polyline points="{" ".join(points)}" fill="none" stroke="{color}" stroke-width="2" '
            f'data-mode="{html.escape(mode)}"><title>{html.escape(_summary(run))}</title></polyline>'
        )
    for row, run in enumerate(runs):  # the legend: a line per mode, under the axis
        mode, y = str(run["mode"]), PANEL_H - BOTTOM + 34 + 16 * row
        color = COLORS.get(mode, "#333")
        parts.append(_line(LEFT, y - 4, LEFT + 16, y - 4, f'stroke="{color}" stroke-width="2"'))
        parts.append(f'<text x="{LEFT + 20}" y="{y}">{html.escape(f"{mode}: {_summary(run)}")}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def _summary(run: Mapping[str, Any]) -> str:
    full = run.get("time_to_full_s")
    reached = "never full" if full is None else f"full at {full:.0f} s"
    return f"{reached}, {run.get('slow', '?')} slow, p99 {run.get('p99_ms', 0):.0f} ms"


def section(data: Mapping[str, Any] | None) -> str:
    """The report's warmup section: both cold apps side by side, or how to measure them."""
    title = "<h2>Warmup: the clock and the app's latency</h2>"
    if data is None:
        return (
            f"{title}<p>No measurement yet: <code>.venv/bin/python bench/latency_warmup.py</code> "
            "measures both ramps and writes the data this figure is drawn from.</p>"
        )
    runs = [run for run in data["runs"] if isinstance(run, Mapping) and run.get("weights")]
    profiles = list(dict.fromkeys(str(run["profile"]) for run in runs))
    box = '<div style="display:inline-block;vertical-align:top">'
    panels = "".join(f"{box}{panel(p, [r for r in runs if r['profile'] == p])}</div>" for p in profiles)
    note = (
        f"The new instance's weight (% of its base) after it joined two warm ones under "
        f"{data.get('rate', '?'):g} requests a second through a consumer sidecar: blue with the clock "
        f"(--warmup 30), orange with --warmup-mode latency --warmup 120. Slow: answered in more than "
        f"five times the warm latency. Measured by bench/latency_warmup.py on {data.get('date', '?')}, "
        "not by this run of the demo."
    )
    return f"{title}<div>{panels}</div><p>{html.escape(note)}</p>"
