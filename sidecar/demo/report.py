"""The demo's HTML report: one self-contained file (inline SVG, no scripts, no network) with the
side-by-side table and a stacked chart of each instance's share of traffic over time, where
warmup ramps and drains show as widening and narrowing bands."""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from sidecar.demo.loadgen import Sample

BIN_SECONDS = 0.5
WIDTH, HEIGHT, MARGIN = 960, 320, 40
TOP = 110  # room for the rotated step labels
PALETTE = (
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948",
    "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac", "#86bcb6", "#d37295",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Event:
    at: float  # time.monotonic()
    label: str


def shares_over_time(samples: Sequence[Sample], origin: float) -> tuple[list[str], list[dict[str, float]]]:
    """Instances in order of first appearance, and per time bin each one's share of requests."""
    answered = [s for s in samples if s.ok]
    if not answered:
        return [], []
    order = list(dict.fromkeys(s.instance for s in sorted(answered, key=lambda s: s.started)))
    bins: dict[int, Counter[str]] = {}
    for sample in answered:
        bins.setdefault(int((sample.started - origin) / BIN_SECONDS), Counter())[sample.instance] += 1
    last = max(bins)
    series = []
    for index in range(last + 1):
        counts = bins.get(index, Counter())
        total = sum(counts.values())
        series.append({name: counts[name] / total for name in order} if total else {})
    return order, series


def chart(samples: Sequence[Sample], events: Sequence[Event], origin: float) -> str:
    order, series = shares_over_time(samples, origin)
    if not series:
        return "<p>No request was answered.</p>"
    plot_w, plot_h = WIDTH - 2 * MARGIN, HEIGHT - TOP - MARGIN
    step = plot_w / max(1, len(series) - 1)

    def x(index: float) -> float:
        return MARGIN + index * step

    def y(share: float) -> float:
        return TOP + plot_h * (1 - share)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT + 60}" font-size="11">'
    ]
    below = [0.0] * len(series)
    for number, name in enumerate(order):
        above = [below[i] + series[i].get(name, 0.0) for i in range(len(series))]
        top = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(above))
        bottom = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in reversed(list(enumerate(below))))
        color = PALETTE[number % len(PALETTE)]
        title = f"<title>{html.escape(name)}</title>"
        parts.append(f'<polygon points="{top} {bottom}" fill="{color}" opacity="0.85">{title}</polygon>')
        legend_x = MARGIN + (number % 6) * 150
        legend_y = HEIGHT + 10 + (number // 6) * 16
        parts.append(f'<rect x="{legend_x}" y="{legend_y}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{legend_x + 14}" y="{legend_y + 9}">{html.escape(name)}</text>')
        below = above
    for event in events:
        ex = x((event.at - origin) / BIN_SECONDS)
        line = f'x1="{ex:.1f}" y1="{TOP}" x2="{ex:.1f}" y2="{TOP + plot_h}"'
        parts.append(f'<line {line} stroke="#333" stroke-dasharray="3,3"/>')
        at = f'x="{ex + 2:.1f}" y="{TOP - 4}" transform="rotate(-60 {ex + 2:.1f} {TOP - 4})"'
        parts.append(f"<text {at}>{html.escape(event.label)}</text>")
    for share in (0, 0.5, 1):
        parts.append(f'<text x="4" y="{y(share) + 4:.1f}">{share:.0%}</text>')
    seconds = len(series) * BIN_SECONDS
    parts.append(f'<text x="{MARGIN}" y="{HEIGHT - MARGIN + 16}">0 s</text>')
    parts.append(f'<text x="{WIDTH - MARGIN - 30}" y="{HEIGHT - MARGIN + 16}">{seconds:.0f} s</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def render(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], figure: str, notes: str) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}</style></head>
<body><h1>{html.escape(title)}</h1>
<table><tr>{head}</tr>{body}</table>
<h2>Share of traffic per instance over time</h2>
{figure}
<p>{html.escape(notes)}</p>
</body></html>
"""
