"""The demo's HTML report: one self-contained file (inline SVG and CSS, no scripts, no network)
with the side-by-side table and one chart on one time axis:

- each instance's share of the requests started in each bucket, stacked in the order the
  instances were started (the legend's order), where warmup ramps show as widening bands;
- each old instance's stop as a hatched span, from `/shutdown` (or the plain way's signals)
  until its processes exited: the drain, or its absence;
- under it, the failed requests per bucket as a red strip, counted by when they failed, since a
  request fails at the moment its instance goes, not when it was sent;
- the windows (steady state, plain roll, sidecar roll) as labelled bands with solid boundaries.

Everything drawn is computed here from the run's records (`Timeline`); the failure bars carry
their counts (`data-failed`) so that a test can add them up against the table.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from sidecar.demo.loadgen import Sample

BUCKET_SECONDS = 0.5  # fine enough to show a 1 s drain, coarse enough for ~30 requests a bucket
TICK_SECONDS = 5.0
WIDTH, MARGIN = 960, 48  # the left margin holds "100%" and "failed"
BAND_H = 20  # the windows' labels
TOP = 118  # room above the plot for the rotated labels of stops and readies
PLOT_H = 200
STRIP_GAP, STRIP_H = 12, 44
FAILED = "#d62728"
# No reds or pinks among the instances: red means failed requests.
PALETTE = (
    "#4e79a7", "#f28e2b", "#59a14f", "#76b7b2", "#edc948", "#b07aa1",
    "#9c755f", "#a0cbe8", "#8cd17d", "#bab0ac", "#ffbe7d", "#d4a6c8",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Window:
    """A labelled stretch of the run and the requests it counts (the table's row for it)."""

    label: str
    start: float  # time.monotonic()
    end: float
    samples: Sequence[Sample]


@dataclass(frozen=True, slots=True)
class Span:
    """An old instance's stop, from the first thing done to it until its processes exited."""

    start: float
    end: float
    label: str


@dataclass(frozen=True, slots=True)
class Mark:
    """A replacement became ready."""

    at: float
    label: str


@dataclass(frozen=True, slots=True)
class Timeline:
    """The run's records, as the chart needs them."""

    origin: float  # 0 s on the axis: the load started
    stopped: float  # the load stopped starting requests
    samples: Sequence[Sample]  # every request of the run
    instances: Sequence[str]  # in the order they were started
    windows: Sequence[Window] = ()
    spans: Sequence[Span] = ()
    marks: Sequence[Mark] = ()


def bucket(at: float, origin: float) -> int:
    return math.floor((at - origin) / BUCKET_SECONDS)


def shares_per_bucket(timeline: Timeline) -> tuple[list[str], list[dict[str, float]]]:
    """Instances (start order first, then any other by first answer), and per complete bucket
    each one's share of the answered requests started in it."""
    # The bucket in which the load stopped holds only part of a bucket's requests, and the
    # shortest ones: its shares would be noise, so the series ends before it.
    complete = max(0, bucket(timeline.stopped, timeline.origin))
    counts = [Counter[str]() for _ in range(complete)]
    answered = sorted((s for s in timeline.samples if s.ok), key=lambda s: s.started)
    for sample in answered:
        index = bucket(sample.started, timeline.origin)
        if 0 <= index < complete:
            counts[index][sample.instance] += 1
    seen = {name for c in counts for name in c}
    order = [name for name in timeline.instances if name in seen]
    order += [
        name for name in dict.fromkeys(s.instance for s in answered) if name in seen and name not in order
    ]
    series = []
    for c in counts:
        total = sum(c.values())
        series.append({name: c[name] / total for name in order} if total else {})
    return order, series


def failures_per_bucket(samples: Sequence[Sample], origin: float) -> Counter[int]:
    """Failed requests per bucket of the moment they failed."""
    return Counter(bucket(s.started + s.seconds, origin) for s in samples if not s.ok)


def failures_by_window(timeline: Timeline) -> list[tuple[str, Counter[int]]]:
    """Each window's failures per bucket, from the window's own requests; then those of the
    requests no window counts (those that ended while the load stopped), labelled ""."""
    counted = {id(s) for window in timeline.windows for s in window.samples}
    rest = [s for s in timeline.samples if id(s) not in counted]
    series = [(w.label, failures_per_bucket(w.samples, timeline.origin)) for w in timeline.windows]
    return [*series, ("", failures_per_bucket(rest, timeline.origin))]


@dataclass(frozen=True, slots=True)
class Frame:
    """Where things go: x from seconds since the origin, y from a share; the strip under the plot."""

    seconds: float  # the axis' length

    plot_w: ClassVar[int] = WIDTH - 2 * MARGIN
    strip_top: ClassVar[int] = TOP + PLOT_H + STRIP_GAP
    bottom: ClassVar[int] = strip_top + STRIP_H

    def x(self, at: float) -> float:
        return MARGIN + self.plot_w * at / self.seconds

    def y(self, share: float) -> float:
        return TOP + PLOT_H * (1 - share)


def _rotated(x: float, y: float, text: str, color: str) -> str:
    at = f'x="{x:.1f}" y="{y:.1f}" transform="rotate(-60 {x:.1f} {y:.1f})"'
    return f'<text {at} fill="{color}">{html.escape(text)}</text>'


def _line(x1: float, y1: float, x2: float, y2: float, style: str) -> str:
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" {style}/>'


def _shares(frame: Frame, order: Sequence[str], shares: Sequence[dict[str, float]], end: float) -> list[str]:
    """Stacked bands: a point per bucket at its middle, held flat to the edges: 0 s and `end`, the
    load's end, past the last complete bucket (a blank sliver there would read as a loss)."""
    if not shares:
        return []
    xs = [frame.x(0.0), *(frame.x((i + 0.5) * BUCKET_SECONDS) for i in range(len(shares)))]
    xs.append(frame.x(max(end, len(shares) * BUCKET_SECONDS)))
    parts, below = [], [0.0] * len(shares)
    for number, name in enumerate(order):
        above = [below[i] + shares[i].get(name, 0.0) for i in range(len(shares))]
        ups, downs = [above[0], *above, above[-1]], [below[0], *below, below[-1]]
        top = " ".join(f"{px:.1f},{frame.y(v):.1f}" for px, v in zip(xs, ups, strict=True))
        low = " ".join(f"{px:.1f},{frame.y(v):.1f}" for px, v in reversed(list(zip(xs, downs, strict=True))))
        color = PALETTE[number % len(PALETTE)]
        parts.append(
            f'<polygon points="{top} {low}" fill="{color}"><title>{html.escape(name)}</title></polygon>'
        )
        below = above
    return parts


def _failures(frame: Frame, failures: Sequence[tuple[str, Counter[int]]]) -> list[str]:
    """The red strip: a bar per bucket, the windows' parts stacked, scaled to the worst bucket."""
    totals: Counter[int] = Counter()
    for _, counts in failures:
        totals.update(counts)
    worst = max(totals.values(), default=0)
    parts = [
        f'<rect x="{MARGIN}" y="{frame.strip_top}" width="{frame.plot_w}" height="{STRIP_H}" '
        'fill="#f3f3f3"/>',
        f'<text x="4" y="{frame.strip_top + STRIP_H / 2 + 4:.1f}" fill="{FAILED}">failed</text>',
        f'<text x="{MARGIN - 4}" y="{frame.bottom}" text-anchor="end">0</text>',
    ]
    if worst:
        parts.append(f'<text x="{MARGIN - 4}" y="{frame.strip_top + 9}" text-anchor="end">{worst}</text>')
    stacked: Counter[int] = Counter()
    for label, counts in failures:
        for index, count in sorted(counts.items()):
            low = frame.bottom - STRIP_H * stacked[index] / worst
            high = frame.bottom - STRIP_H * (stacked[index] + count) / worst
            stacked[index] += count
            left, right = frame.x(index * BUCKET_SECONDS), frame.x((index + 1) * BUCKET_SECONDS)
            when = f"{index * BUCKET_SECONDS:g}-{(index + 1) * BUCKET_SECONDS:g} s"
            title = html.escape(f"{count} failed at {when}" + (f" ({label})" if label else ""))
            parts.append(
                f'<rect x="{left:.1f}" y="{high:.1f}" width="{max(1.0, right - left - 0.5):.1f}" '
                f'height="{low - high:.1f}" fill="{FAILED}" data-window="{html.escape(label)}" '
                f'data-bucket="{index}" data-failed="{count}"><title>{title}</title></rect>'
            )
    return parts


def _windows(frame: Frame, timeline: Timeline, failures: Sequence[tuple[str, Counter[int]]]) -> list[str]:
    """A band per window with its label and failure count, a solid line at each of its edges."""
    parts = []
    for number, window in enumerate(timeline.windows):
        left, right = frame.x(window.start - timeline.origin), frame.x(window.end - timeline.origin)
        failed = sum(failures[number][1].values())
        full = f"{window.label}: {failed} failed"
        # The longest of these that fits (about 8 px a bold character), the full text on hover.
        fits = [t for t in (full, window.label, window.label.split(" ")[0]) if len(t) * 8 < right - left]
        band = f'x="{left:.1f}" y="0" width="{right - left:.1f}" height="{BAND_H}"'
        tint = "#f6d3d3" if failed else "#e4e4e4"
        tooltip = f"<title>{html.escape(full)}</title>"
        parts.append(f'<rect {band} fill="{tint}">{tooltip}</rect>')
        parts.append(
            f'<text x="{(left + right) / 2:.1f}" y="14" text-anchor="middle" font-size="13" '
            f'font-weight="bold" fill="{FAILED if failed else "#222"}" '
            f'data-window="{html.escape(window.label)}" data-failed="{failed}">'
            f"{html.escape(fits[0] if fits else '')}{tooltip}</text>"
        )
        for edge in (left, right):
            parts.append(_line(edge, 0, edge, frame.bottom, 'stroke="#111" stroke-width="2"'))
    return parts


def _stops_and_readies(frame: Frame, timeline: Timeline) -> list[str]:
    """Stops hatched from start to exit through plot and strip, a few pixels wide at least so
    that a stop without a drain (milliseconds) shows where it happened; readies dashed."""
    parts = []
    for span in timeline.spans:
        start, end = span.start - timeline.origin, span.end - timeline.origin
        left, width = frame.x(start), max(3.0, frame.x(end) - frame.x(start))
        title = html.escape(f"{span.label}: {end - start:.2f} s until exit")
        parts.append(
            f'<rect x="{left:.1f}" y="{TOP}" width="{width:.1f}" height="{frame.bottom - TOP}" '
            f'fill="url(#stop)" stroke="#222" stroke-width="0.8" data-from="{start:.3f}" '
            f'data-to="{end:.3f}"><title>{title}</title></rect>'
        )
        parts.append(_rotated(left + 2, TOP - 4, span.label, "#000"))
    for mark in timeline.marks:
        mx = frame.x(mark.at - timeline.origin)
        parts.append(_line(mx, TOP, mx, TOP + PLOT_H, 'stroke="#333" stroke-dasharray="3,3"'))
        parts.append(_rotated(mx + 2, TOP - 4, mark.label, "#555"))
    return parts


def _axes(frame: Frame) -> list[str]:
    """Shares on the left; under the strip, a tick every TICK_SECONDS."""
    parts = [
        f'<text x="{MARGIN - 4}" y="{frame.y(share) + 4:.1f}" text-anchor="end">{share:.0%}</text>'
        for share in (0, 0.5, 1)
    ]
    parts.append(_line(MARGIN, frame.bottom, WIDTH - MARGIN, frame.bottom, 'stroke="#333"'))
    for tick in range(int(frame.seconds // TICK_SECONDS) + 1):
        tx = frame.x(tick * TICK_SECONDS)
        parts.append(_line(tx, frame.bottom, tx, frame.bottom + 5, 'stroke="#333"'))
        parts.append(
            f'<text x="{tx:.1f}" y="{frame.bottom + 17}" text-anchor="middle" '
            f'data-tick="{tick * TICK_SECONDS:g}">{tick * TICK_SECONDS:g} s</text>'
        )
    return parts


def _legend(order: Sequence[str], top: float) -> tuple[list[str], float]:
    """The instances in the order they were started, then a key to the other marks, each row
    flowing left to right; returns the parts and the height used."""
    cell = 96
    per_row = max(1, (WIDTH - 2 * MARGIN) // cell)
    parts = []
    for number, name in enumerate(order):
        lx, ly = MARGIN + (number % per_row) * cell, top + (number // per_row) * 16
        parts.append(
            f'<rect x="{lx}" y="{ly}" width="10" height="10" fill="{PALETTE[number % len(PALETTE)]}"/>'
        )
        parts.append(
            f'<text x="{lx + 14}" y="{ly + 9}" data-legend="{html.escape(name)}">{html.escape(name)}</text>'
        )
    ky = top + 16 * ((len(order) + per_row - 1) // per_row) + 6
    keys = [  # a swatch's fill (none: the dashed line of a ready), and what it means
        (f'fill="{FAILED}"', f"failed requests per {BUCKET_SECONDS:g} s"),
        (
            'fill="url(#stop)" stroke="#222" stroke-width="0.8"',
            "an old instance stopping: from /shutdown or SIGTERM until it exited",
        ),
        ("", "replacement ready"),
    ]
    kx = MARGIN
    for fill, text in keys:
        if fill:
            parts.append(f'<rect x="{kx}" y="{ky}" width="16" height="10" {fill}/>')
        else:
            parts.append(_line(kx + 8, ky - 2, kx + 8, ky + 12, 'stroke="#333" stroke-dasharray="3,2"'))
        parts.append(f'<text x="{kx + 20}" y="{ky + 9}">{html.escape(text)}</text>')
        kx += 20 + len(text) * 6 + 24  # about 6 px a character at 11 px
    return parts, ky + 14 - top


def chart(timeline: Timeline) -> str:
    order, shares = shares_per_bucket(timeline)
    failures = failures_by_window(timeline)
    if not shares and not any(counts for _, counts in failures):
        return "<p>No request was answered.</p>"
    # The axis covers every record: the load, the windows, the stops, the last failure.
    last_failure = max((b + 1 for _, counts in failures for b in counts), default=0) * BUCKET_SECONDS
    ends = [timeline.stopped, *(w.end for w in timeline.windows), *(s.end for s in timeline.spans)]
    frame = Frame(max(last_failure, *(at - timeline.origin for at in ends), BUCKET_SECONDS))
    legend, legend_h = _legend(order, frame.bottom + 34)
    height = frame.bottom + 34 + legend_h
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" font-size="11" '
        'font-family="sans-serif">',
        '<defs><pattern id="stop" width="6" height="6" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="6" height="6" fill="#fff" fill-opacity="0.45"/>'
        '<rect width="2" height="6" fill="#222" fill-opacity="0.55"/></pattern></defs>',
        *_shares(frame, order, shares, timeline.stopped - timeline.origin),
        *_failures(frame, failures),
        *_windows(frame, timeline, failures),
        *_stops_and_readies(frame, timeline),
        *_axes(frame),
        *legend,
        "</svg>",
    ]
    return "\n".join(parts)


def render(
    title: str, header: Sequence[str], rows: Sequence[Sequence[str]], figure: str, notes: str, more: str = ""
) -> str:
    """The page: the table, the figure and its notes, then `more` (HTML: further sections)."""
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
td{{white-space:nowrap}}td:first-child,th:first-child{{text-align:left}}</style></head>
<body><h1>{html.escape(title)}</h1>
<table><tr>{head}</tr>{body}</table>
<h2>Share of traffic per instance, stops and failed requests over time</h2>
{figure}
<p>{html.escape(notes)}</p>
{more}
</body></html>
"""
