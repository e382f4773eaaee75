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

from sidecar.demo.fleet import Fleet, Provider
from sidecar.demo.loadgen import LoadGenerator, Sample
from sidecar.demo.processes import print_log_tails
from sidecar.demo.report import Event, chart, render
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
    """The deployment's pacing (minReadySeconds), shown live and marked on the chart."""

    def __init__(self, mode: Mode, progress: Progress, events: list[Event]) -> None:
        super().__init__(MIN_READY_SECONDS)
        self.mode = mode
        self.progress = progress
        self.events = events

    def stopping(self, old: Provider) -> None:
        self.events.append(Event(time.monotonic(), f"{self.mode}: stop {old.name}"))
        self.progress.show(f"{self.mode} roll: stopping {old.name}", force=True)

    def replaced(self, new: Provider) -> None:
        self.events.append(Event(new.ready_at, f"{new.name} ready"))
        super().replaced(new)

    def waiting(self, new: Provider) -> None:
        self.progress.show(f"{self.mode} roll: {new.name} ready, minReadySeconds")


def measured_roll(
    fleet: Fleet, mode: Mode, providers: list[Provider], load: LoadGenerator, progress: Progress,
    events: list[Event], generation: int,
) -> tuple[Roll, list[Sample]]:  # fmt: skip
    """One roll, and the requests completed while it ran."""
    first_sample = len(load.samples)
    pacing = Paced(mode, progress, events)
    result = roll(fleet, mode, providers, REPLACEMENT_ARGS[mode], f"v{generation}-", pacing)
    return result, load.samples[first_sample:]


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
        events: list[Event] = []
        with LoadGenerator(consumer.url, CONCURRENCY, WORK_MS) as load:
            progress = Progress(load, origin)
            while time.monotonic() < origin + 2:  # a steady state to compare against
                progress.show("steady state")
                time.sleep(0.05)
            plain, plain_samples = measured_roll(fleet, "plain", providers, load, progress, events, 2)
            providers = plain.replacements
            with_sidecar, sidecar_samples = measured_roll(
                fleet, "sidecar", providers, load, progress, events, 3
            )
            progress.show("done", force=True)
        print()
    rows = [table_row(plain, plain_samples), table_row(with_sidecar, sidecar_samples)]
    widths = [max(len(row[i]) for row in [HEADER, *rows]) for i in range(len(HEADER))]
    for row in [HEADER, *rows]:
        print(
            "  ".join(
                cell.ljust(width) if i == 0 else cell.rjust(width)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            )
        )
    notes = (
        f"Plain roll: the app gets SIGTERM directly; replacements take full traffic at once. "
        f"Sidecar roll: preStop GET /shutdown then SIGTERM; replacements warm up over {WARMUP_SECONDS:g} s. "
        f"Both paced by minReadySeconds={MIN_READY_SECONDS:g}; dashed lines mark the steps."
    )
    figure = chart(load.samples, events, origin)
    REPORT.write_text(
        render("graceful-sidecar demo: rolling restart under load", HEADER, rows, figure, notes)
    )
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
