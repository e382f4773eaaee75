"""The demo's HTML report draws what the run recorded: the page is built from synthetic records
through the demo's own path (`run.timeline_of`, `run.report`), and its SVG is read back."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter

import pytest

from sidecar.demo import run
from sidecar.demo.loadgen import Sample
from sidecar.demo.report import BUCKET_SECONDS, Timeline, shares_per_bucket
from sidecar.demo.roll import Roll, Step

ORIGIN = 5000.0  # time.monotonic() when the load started
STOPPED = 10.3  # s: the load stopped inside the bucket [10.0, 10.5)
SVG = "{http://www.w3.org/2000/svg}"


def ok(at: float, instance: str, seconds: float = 0.1) -> Sample:
    return Sample(ORIGIN + at, seconds, 200, instance)


def failed(at: float, seconds: float) -> Sample:
    return Sample(ORIGIN + at, seconds, 0, "", "RemoteProtocolError")


def records() -> tuple[list[tuple[Roll, list[Sample]]], Timeline]:
    """Steady state 0-2 s (1 failure), a plain roll 2-6 s (a1 stopped by SIGTERM, 4 failures), a
    sidecar roll 6-10 s (a2 drained for 1.2 s, none), 1 failure after it; every sample in the roll
    it completed in, as the demo's slices of the load generator's list are."""
    samples = [ok(t / 10, "a1" if t % 4 else "a2") for t in range(0, 100)]
    samples += [failed(1.5, 0.3)]  # in the steady state
    samples += [failed(1.95 + i * 0.05, 2.12 - 1.95 - i * 0.05) for i in range(3)]  # in flight at SIGTERM
    samples += [failed(4.9, 0.15)]  # fails at 5.05
    samples += [failed(9.95, 0.2)]  # after the last roll ended, while the load stops
    samples.sort(key=lambda s: s.started + s.seconds)
    plain = Roll("plain", started=ORIGIN + 2.0, ended=ORIGIN + 6.0)
    plain.steps.append(Step("a1", ORIGIN + 2.1, ORIGIN + 2.11, "b1", ORIGIN + 2.8))
    with_sidecar = Roll("sidecar", started=ORIGIN + 6.0, ended=ORIGIN + 10.0)
    with_sidecar.steps.append(Step("a2", ORIGIN + 6.1, ORIGIN + 7.3, "b2", ORIGIN + 7.9))

    def done_in(roll: Roll) -> list[Sample]:
        return [s for s in samples if roll.started <= s.started + s.seconds < roll.ended]

    rolls = [(plain, done_in(plain)), (with_sidecar, done_in(with_sidecar))]
    instances = ["a1", "a2", "b1", "b2"]
    return rolls, run.timeline_of(rolls, samples, instances, ORIGIN, ORIGIN + STOPPED)


@pytest.fixture
def page() -> str:
    rolls, timeline = records()
    return run.report(rolls, timeline)


def svg_of(page: str) -> ET.Element:
    found = re.search(r"<svg.*?</svg>", page, re.S)  # the roll's chart: the page's first
    assert found is not None
    return ET.fromstring(found.group(0))


def table_failed(page: str, mode: str) -> int:
    row = re.search(rf"<tr><td>{mode}</td><td>\d+</td><td>(\d+)</td>", page)
    assert row is not None
    return int(row.group(1))


def bars(page: str) -> list[ET.Element]:
    return [rect for rect in svg_of(page).iter(f"{SVG}rect") if "data-failed" in rect.attrib]


def x_of(page: str, seconds: float) -> float:
    """Where `seconds` lies on the chart's axis, read from its 0 s and 5 s ticks."""
    ticks = {
        float(t.attrib["data-tick"]): float(t.attrib["x"])
        for t in svg_of(page).iter(f"{SVG}text")
        if "data-tick" in t.attrib
    }
    return ticks[0] + (ticks[5] - ticks[0]) * seconds / 5


def test_failures_drawn_per_bucket_add_up_to_the_table(page: str) -> None:
    """The red bars of each roll add up to that roll's failed count in the table, and all bars to
    every failure of the run."""
    drawn: Counter[str] = Counter()
    for bar in bars(page):
        drawn[bar.attrib["data-window"]] += int(bar.attrib["data-failed"])
    assert drawn["plain roll"] == table_failed(page, "plain") == 4
    assert drawn["sidecar roll"] == table_failed(page, "sidecar") == 0
    assert sum(drawn.values()) == 6  # those before and after the rolls too
    labels = {
        t.attrib["data-window"]: int(t.attrib["data-failed"])
        for t in svg_of(page).iter(f"{SVG}text")
        if "data-window" in t.attrib
    }
    assert labels == {"steady state": 1, "plain roll": 4, "sidecar roll": 0}


def test_a_failure_is_drawn_in_the_bucket_where_it_failed(page: str) -> None:
    """Requests sent before SIGTERM count in the bucket of the moment they failed, not when sent."""
    plain = {
        int(b.attrib["data-bucket"]): int(b.attrib["data-failed"])
        for b in bars(page)
        if b.attrib["data-window"] == "plain roll"
    }
    assert plain == {int(2.12 / BUCKET_SECONDS): 3, int(5.05 / BUCKET_SECONDS): 1}


def test_shares_come_from_complete_buckets_only() -> None:
    """Each bucket's shares are the answered requests' counts in it; the bucket in which the load
    stopped, holding only part of a bucket's requests, has none."""
    _, timeline = records()
    order, shares = shares_per_bucket(timeline)
    assert len(shares) == int(STOPPED / BUCKET_SECONDS)
    assert order == ["a1", "a2"]  # only the instances that answered
    # Bucket 0 holds samples 0-4 s/10: 0 and 4 went to a2, 1-3 to a1.
    assert shares[0] == {"a1": 3 / 5, "a2": 2 / 5}


def test_legend_lists_instances_in_the_order_they_were_started() -> None:
    """The legend follows the instances' start order, not the order in which they first answered."""
    rolls, timeline = records()
    late_first = [ok(0.0, "b1"), *timeline.samples]  # b1 answers before anyone else
    timeline = run.timeline_of(rolls, late_first, ["a1", "a2", "b1"], ORIGIN, ORIGIN + STOPPED)
    legend = [
        t.attrib["data-legend"]
        for t in svg_of(run.report(rolls, timeline)).iter(f"{SVG}text")
        if "data-legend" in t.attrib
    ]
    assert legend == ["a1", "a2", "b1"]


def test_each_stop_is_a_span_from_its_start_to_the_exit(page: str) -> None:
    """A stop is shaded from /shutdown (or SIGTERM) until its processes exited, on the time axis,
    and a stop without a drain still shows."""
    spans = [r for r in svg_of(page).iter(f"{SVG}rect") if "data-from" in r.attrib]
    assert [(float(r.attrib["data-from"]), float(r.attrib["data-to"])) for r in spans] == [
        (2.1, 2.11),
        (6.1, 7.3),
    ]
    plain, drain = spans
    assert float(plain.attrib["x"]) == pytest.approx(x_of(page, 2.1), abs=0.2)
    assert float(plain.attrib["width"]) >= 3
    assert float(drain.attrib["x"]) == pytest.approx(x_of(page, 6.1), abs=0.2)
    assert float(drain.attrib["width"]) == pytest.approx(x_of(page, 7.3) - x_of(page, 6.1), abs=0.2)


def test_the_time_axis_has_a_tick_every_five_seconds(page: str) -> None:
    """Ticks at 0, 5, 10 s for a run of 10.3 s, labelled in seconds."""
    ticks = [t for t in svg_of(page).iter(f"{SVG}text") if "data-tick" in t.attrib]
    assert [t.text for t in ticks] == ["0 s", "5 s", "10 s"]


def test_rolls_are_bounded_by_solid_lines(page: str) -> None:
    """A solid line marks where the plain roll ends and the sidecar roll begins."""
    solid = [
        float(line.attrib["x1"])
        for line in svg_of(page).iter(f"{SVG}line")
        if line.attrib.get("stroke-width") == "2"
    ]
    assert any(x == pytest.approx(x_of(page, 6.0), abs=0.2) for x in solid)
