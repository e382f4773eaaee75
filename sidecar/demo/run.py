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
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.demo.fleet import Fleet, Provider
from sidecar.demo.loadgen import LoadGenerator, Sample
from sidecar.demo.report import Event, chart, render

CONCURRENCY = 32
WORK_MS = (20, 300)
WARMUP_SECONDS = 3.0
MIN_READY_SECONDS = 3.0
REPORT = Path("demo-report.html")


@dataclass
class Roll:
    name: str
    started: float = 0.0
    ended: float = 0.0
    drains: list[float] = field(default_factory=list)
    inflight_at_sigterm: list[int | None] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)

    def row(self) -> list[str]:
        failed = [s for s in self.samples if not s.ok]
        durations = sorted(s.seconds for s in self.samples) or [0.0]

        def percentile(fraction: float) -> str:
            return f"{durations[min(len(durations) - 1, int(len(durations) * fraction))] * 1000:.0f} ms"

        rate = len(failed) / len(self.samples) if self.samples else 0.0
        longest = f"{max(self.drains):.2f} s" if self.drains else "none"
        inflight = ", ".join("?" if n is None else str(n) for n in self.inflight_at_sigterm)
        return [
            self.name,
            str(len(self.samples)),
            str(len(failed)),
            f"{rate:.2%}",
            percentile(0.5),
            percentile(0.99),
            longest,
            f"{self.ended - self.started:.1f} s",
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


def roll(fleet: Fleet, mode: str, providers: list[Provider], load: LoadGenerator, progress: Progress,
         events: list[Event], generation: int) -> tuple[Roll, list[Provider]]:  # fmt: skip
    result = Roll(mode)
    result.started = time.monotonic()
    first_sample = len(load.samples)
    replacements = []
    for number, old in enumerate(providers, 1):
        events.append(Event(time.monotonic(), f"{mode}: stop {old.name}"))
        progress.show(f"{mode} roll: stopping {old.name}", force=True)
        if mode == "sidecar":
            result.drains.append(float(fleet.stop_with_sidecar(old)["seconds"]))
            args: tuple[str, ...] = ("--warmup", str(WARMUP_SECONDS), "--quiet-period", "0.5")
        else:
            fleet.stop_plain(old)
            args = ("--warmup", "0", "--app-health", "")
        result.inflight_at_sigterm.append(old.inflight_at_sigterm())
        new = fleet.start_provider(f"v{generation}-{number}", *args)
        replacements.append(new)
        events.append(Event(new.ready_at, f"{new.name} ready"))
        while time.monotonic() < new.ready_at + MIN_READY_SECONDS:  # the deployment's pacing
            progress.show(f"{mode} roll: {new.name} ready, minReadySeconds")
            time.sleep(0.05)
    result.ended = time.monotonic()
    result.samples = load.samples[first_sample:]
    return result, replacements


def run(workdir: Path, registry: str) -> int:
    print(f"registry: {registry}")
    print(
        f"load: {CONCURRENCY} POSTs in flight, {WORK_MS[0]}-{WORK_MS[1]} ms each, through a consumer sidecar"
    )
    with Fleet(workdir, registry) as fleet:
        providers = [fleet.start_provider(f"v1-{n}", "--quiet-period", "0.5") for n in (1, 2, 3)]
        fleet.start_consumer()
        fleet.wait_consumer_knows(3)
        origin = time.monotonic()
        events: list[Event] = []
        with LoadGenerator(fleet.upstream_url, CONCURRENCY, WORK_MS) as load:
            progress = Progress(load, origin)
            while time.monotonic() < origin + 2:  # a steady state to compare against
                progress.show("steady state")
                time.sleep(0.05)
            plain, providers = roll(fleet, "plain", providers, load, progress, events, 2)
            with_sidecar, providers = roll(fleet, "sidecar", providers, load, progress, events, 3)
            progress.show("done", force=True)
        print()
    rows = [plain.row(), with_sidecar.row()]
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
    lost = len([s for s in with_sidecar.samples if not s.ok])
    print("through the sidecar: " + ("no request lost" if lost == 0 else f"{lost} REQUESTS LOST"))
    return 0 if lost == 0 else 1


def run_demo(registry: str | None) -> int:
    with tempfile.TemporaryDirectory(prefix="graceful-sidecar-demo-") as tmp:
        workdir = Path(tmp)
        try:
            return run(workdir, registry or f"sqlite://{workdir / 'registry.db'}")
        except (RuntimeError, OSError) as exc:
            print(f"\ndemo failed: {exc}", file=sys.stderr)
            for log in sorted(workdir.glob("*.log")):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
            return 1
