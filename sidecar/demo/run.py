"""`graceful-sidecar demo`: the same rolling restart done twice under load, measured live.

Three instances of the bundled demo app, each behind a provider sidecar; one consumer sidecar
with an upstream listener; a load generator keeping 32 POSTs of 20-300 ms in flight through it.
The three instances are rolled twice, paced the same way (each replacement gets
`MIN_READY_SECONDS`, Kubernetes' minReadySeconds, before the next step):

1. plain: the app gets SIGTERM directly and stops with whatever it had in flight; nothing takes
   it out of the registry until its heartbeat expires; replacements take full traffic at once.
2. sidecar: preStop `GET /shutdown` (deregister, notify consumers, drain), then SIGTERM;
   replacements register after their health check and warm up over `WARMUP_SECONDS`.

Every number printed, and the HTML report's chart, come from this run's requests.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from sidecar.demo import ramps
from sidecar.demo.fleet import Fleet, Provider
from sidecar.demo.loadgen import LoadGenerator, Sample
from sidecar.demo.processes import print_log_tails
from sidecar.demo.report import BUCKET_SECONDS, Mark, Span, Timeline, Window, chart, render
from sidecar.demo.roll import MinReady, Mode, Roll, roll
from sidecar.demo.stats import percentile

CONCURRENCY = 32
WORK_MS = (20, 300)
WARMUP_SECONDS = 3.0
MIN_READY_SECONDS = 3.0
REPORT = Path("demo-report.html")
# What each roll's replacements are started with.
REPLACEMENT_ARGS: dict[Mode, tuple[str, ...]] = {
    "plain": ("--warmup", "0", "--app-health", ""),
    "sidecar": ("--warmup", str(WARMUP_SECONDS), "--quiet-period", "0.5"),
}


def table_row(result: Roll, samples: list[Sample]) -> list[str]:
    """The table's line for one roll; `samples` are the requests completed during it."""
    failed = [s for s in samples if not s.ok]
    durations = [s.seconds for s in samples]
    rate = len(failed) / len(samples) if samples else 0.0
    drains = result.drains
    longest = f"{max(drains):.2f} s" if drains else "none"
    inflight = ", ".join("?" if n is None else str(n) for n in result.inflight_at_sigterm)
    return [
        result.mode,
        str(len(samples)),
        str(len(failed)),
        f"{rate:.2%}",
        f"{percentile(durations, 0.5) * 1000:.0f} ms",
        f"{percentile(durations, 0.99) * 1000:.0f} ms",
        longest,
        f"{result.ended - result.started:.1f} s",
        inflight,
    ]


HEADER = [
    "roll",
    "requests",
    "failed",
    "error rate",
    "p50",
    "p99",
    "longest drain",
    "roll duration",
    "app in flight at SIGTERM",
]


class Progress:
    """A live progress line on a terminal; a line every few seconds otherwise."""

    def __init__(self, load: LoadGenerator, origin: float) -> None:
        self.load = load
        self.origin = origin
        self.tty = sys.stdout.isatty()
        self._last = 0.0

    def show(self, what: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < (0.2 if self.tty else 3.0):
            return
        self._last = now
        samples = list(self.load.samples)
        failed = sum(not s.ok for s in samples)
        line = f"t={now - self.origin:5.1f}s  requests {len(samples):6d}  failed {failed:4d}  {what}"
        print(f"\r{line:<100}" if self.tty else line, end="" if self.tty else "\n", flush=True)


class Paced(MinReady):
    """The deployment's pacing (minReadySeconds), shown live."""

    def __init__(self, mode: Mode, progress: Progress) -> None:
        super().__init__(MIN_READY_SECONDS)
        self.mode = mode
        self.progress = progress

    def stopping(self, old: Provider) -> None:
        self.progress.show(f"{self.mode} roll: stopping {old.name}", force=True)

    def waiting(self, new: Provider) -> None:
        self.progress.show(f"{self.mode} roll: {new.name} ready, minReadySeconds")


def measured_roll(
    fleet: Fleet, mode: Mode, providers: list[Provider], load: LoadGenerator, progress: Progress,
    generation: int,
) -> tuple[Roll, list[Sample]]:  # fmt: skip
    """One roll, and the requests completed while it ran."""
    first_sample = len(load.samples)
    pacing = Paced(mode, progress)
    result = roll(fleet, mode, providers, REPLACEMENT_ARGS[mode], f"v{generation}-", pacing)
    return result, load.samples[first_sample:]


def timeline_of(
    rolls: list[tuple[Roll, list[Sample]]], samples: list[Sample], instances: list[str], origin: float,
    stopped: float,
) -> Timeline:  # fmt: skip
    """The chart's records: the steady state, and each roll a window counting the very requests
    of its table row; each step's stop a span until the old processes exited, each replacement's
    readiness a mark."""
    first = min(r.started for r, _ in rolls)
    counted = {id(s) for _, rs in rolls for s in rs}
    steady = [s for s in samples if id(s) not in counted and s.started + s.seconds < first]
    windows = [Window("steady state", origin, first, steady)]
    windows += [Window(f"{r.mode} roll", r.started, r.ended, rs) for r, rs in rolls]
    how = {"plain": "SIGTERM", "sidecar": "/shutdown"}
    steps = [(r.mode, step) for r, _ in rolls for step in r.steps]
    spans = [Span(s.stop_began, s.old_exited, f"{s.old} {how[mode]}") for mode, s in steps]
    marks = [Mark(s.new_ready, f"{s.new} ready") for _, s in steps]
    return Timeline(origin, stopped, samples, instances, windows, spans, marks)


def report(rolls: list[tuple[Roll, list[Sample]]], timeline: Timeline) -> str:
    """The HTML report: the table and the chart, from the same records."""
    rows = [table_row(r, rs) for r, rs in rolls]
    notes = (
        f"Plain roll: the app gets SIGTERM directly; replacements take full traffic at once. "
        f"Sidecar roll: preStop GET /shutdown then SIGTERM; replacements warm up over {WARMUP_SECONDS:g} s. "
        f"Both paced by minReadySeconds={MIN_READY_SECONDS:g}. Shares are of the requests started in "
        f"each {BUCKET_SECONDS:g} s; failed requests count when they failed."
    )
    title = "graceful-sidecar demo: rolling restart under load"
    # The warmup ramps come from bench/latency_warmup.py's last run (sidecar.demo.ramps says why).
    return render(title, HEADER, rows, chart(timeline), notes, ramps.section(ramps.load()))


def run(workdir: Path, registry: str) -> int:
    print(f"registry: {registry}")
    print(
        f"load: {CONCURRENCY} POSTs in flight, {WORK_MS[0]}-{WORK_MS[1]} ms each, through a consumer sidecar"
    )
    with Fleet(workdir, registry) as fleet:
        providers = [fleet.start_provider(f"v1-{n}", "--quiet-period", "0.5") for n in (1, 2, 3)]
        consumer = fleet.start_consumer()
        fleet.wait_consumer_knows(consumer, 3)
        origin = time.monotonic()
        with LoadGenerator(consumer.url, CONCURRENCY, WORK_MS) as load:
            progress = Progress(load, origin)
            while time.monotonic() < origin + 2:  # a steady state to compare against
                progress.show("steady state")
                time.sleep(0.05)
            plain, plain_samples = measured_roll(fleet, "plain", providers, load, progress, 2)
            providers = plain.replacements
            with_sidecar, sidecar_samples = measured_roll(fleet, "sidecar", providers, load, progress, 3)
            progress.show("done", force=True)
            stopped = time.monotonic()  # leaving the block stops the load
        print()
        instances = [provider.name for provider in fleet.providers]
    rolls = [(plain, plain_samples), (with_sidecar, sidecar_samples)]
    rows = [table_row(r, rs) for r, rs in rolls]
    widths = [max(len(row[i]) for row in [HEADER, *rows]) for i in range(len(HEADER))]
    for row in [HEADER, *rows]:
        print(
            "  ".join(
                cell.ljust(width) if i == 0 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
        )
    REPORT.write_text(report(rolls, timeline_of(rolls, load.samples, instances, origin, stopped)))
    print(f"report: {REPORT.resolve()}")
    lost = len([s for s in sidecar_samples if not s.ok])
    print("through the sidecar: " + ("no request lost" if lost == 0 else f"{lost} REQUESTS LOST"))
    return 0 if lost == 0 else 1


def run_demo(registry: str | None) -> int:
    with tempfile.TemporaryDirectory(prefix="graceful-sidecar-demo-") as tmp:
        workdir = Path(tmp)
        try:
            return run(workdir, registry or f"sqlite://{workdir / 'registry.db'}")
        except (RuntimeError, OSError) as exc:
            print(f"\ndemo failed: {exc}", file=sys.stderr)
            print_log_tails(workdir, 2000)
            return 1
