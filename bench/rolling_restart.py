"""A rolling restart of three providers under load, done the sidecar way and done plainly, in
the same run on the same machine.

    .venv/bin/python bench/rolling_restart.py [--registry consul://HOST:PORT] [--json]

Each roll gets fresh processes (sidecar/demo/fleet.py): three demo apps (sidecar/demo/app.py), each
behind a provider sidecar, and one consumer-only sidecar whose upstream listener balances over
them. A LoadGenerator (sidecar/demo/loadgen.py) keeps 32 POSTs of 20-300 ms in flight through the
consumer sidecar for 2 s before the roll, during it and 1 s after it. POST is not idempotent:
no sidecar retries one that was sent, so a lossless roll has to come from draining.

- sidecar roll: for each old instance, preStop `GET /shutdown` on its sidecar (deregister,
  notify the consumer, drain with the default --quiet-period 1 s), then SIGTERM to app and
  sidecar; a replacement (new instance id) starts with `--warmup 2` and is awaited on `/ready`.
  The warmup is 2 s, not the 5 s of tests/test_rolling_restart.py, to keep the run short.
- plain roll: the same consumer set-up and registry, but nothing drains: the app gets SIGTERM
  (the demo app dies at once with whatever it has in flight) and its sidecar gets SIGKILL at the
  same moment, as if there were no sidecar. The instance stays in the registry until its
  heartbeat expires (SQLite: TTL 6 s; Consul: TTL 10 s); meanwhile the consumer sidecar's
  connections to it are refused, which it may retry elsewhere (nothing was sent) and which
  ejects the instance for 5 s. The replacement starts with `--warmup 0`.

Both rolls are paced the same way: the next step starts 2 s after the replacement answered
`/ready` (like Kubernetes' minReadySeconds; in the sidecar roll that is also the end of its
warmup). Counted: every request in flight at any time between the first step and the end of the
last pause (the "roll time"); failed = anything but a 200 from a demo app; latencies are over all
those requests, failed or not, as the load generator saw them (through the consumer sidecar).
"steady p50/p99" are the same fleet's requests completed in the 2 s before its roll: the
machine's noise floor at that moment. "in flight at SIGTERM" is what each old demo app recorded
when SIGTERM reached it.

The machine is shared and noisy (2 cores here, other test suites running): starting a
replacement (two Python processes) takes seconds of CPU and shows as latency spikes in both
rolls. Compare the rows of one run; `--rounds N` repeats the pair, alternating which roll goes
first, so that neither always gets the quieter minute.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from benchcommon import header, run

from sidecar.demo.fleet import Fleet, Provider, stop_all
from sidecar.demo.loadgen import LoadGenerator, Sample

CONCURRENCY = 32
WORK_MS = (20, 300)
WARMUP_S = 2.0
PACE_S = 2.0  # after /ready, before the next step (minReadySeconds)
STEADY_S = 2.0
TAIL_S = 1.0


@dataclass
class Roll:
    mode: str
    started: float = 0.0
    ended: float = 0.0
    drains: list[float] = field(default_factory=list)
    inflight_at_sigterm: list[int | None] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)  # requests in flight at any time of the roll
    steady: list[Sample] = field(default_factory=list)  # requests done before the roll began
    outside_failed: int = 0  # failures of requests outside the roll window

    def summary(self) -> dict[str, Any]:
        failed = [s for s in self.samples if not s.ok]

        def percentile(samples: list[Sample], fraction: float) -> float:
            durations = sorted(s.seconds for s in samples) or [0.0]
            return round(durations[min(len(durations) - 1, int(len(durations) * fraction))] * 1000, 1)

        kinds = Counter(s.error or f"HTTP {s.status}" for s in failed)
        return {
            "roll": self.mode,
            "requests": len(self.samples),
            "failed": len(failed),
            "error_rate": round(len(failed) / len(self.samples), 5) if self.samples else 0.0,
            "p50_ms": percentile(self.samples, 0.5),
            "p99_ms": percentile(self.samples, 0.99),
            "steady_requests": len(self.steady),
            "steady_p50_ms": percentile(self.steady, 0.5),
            "steady_p99_ms": percentile(self.steady, 0.99),
            "roll_s": round(self.ended - self.started, 2),
            "drains_s": self.drains,
            "inflight_at_sigterm": self.inflight_at_sigterm,
            "failures_by_kind": dict(kinds.most_common()),
            "failed_outside_roll": self.outside_failed,
        }


def roll(fleet: Fleet, mode: str, providers: list[Provider]) -> tuple[Roll, list[Provider]]:
    result = Roll(mode, started=time.monotonic())
    replacements = []
    for number, old in enumerate(providers, 1):
        if mode == "sidecar":
            # preStop GET /shutdown (blocks until drained), then SIGTERM to app and sidecar.
            answer = httpx.get(f"{old.admin}/shutdown", timeout=60, trust_env=False)
            result.drains.append(float(answer.json()["seconds"]))
            stop_all([old.app, old.sidecar])
            args: tuple[str, ...] = ("--warmup", f"{WARMUP_S:g}")
        else:
            # No drain: SIGKILL the sidecar (it is "not there") and SIGTERM the app, together.
            stop_all([old.sidecar, old.app], [signal.SIGKILL, signal.SIGTERM])
            args = ("--warmup", "0")
        result.inflight_at_sigterm.append(old.inflight_at_sigterm())
        new = fleet.start_provider(f"{fleet.service}-new{number}", *args)
        replacements.append(new)
        time.sleep(max(0.0, new.ready_at + PACE_S - time.monotonic()))
    result.ended = time.monotonic()
    return result, replacements


def run_roll(workdir: Path, registry: str, mode: str) -> Roll:
    service = f"roll-{mode}-{uuid.uuid4().hex[:6]}"
    with Fleet(workdir, registry, service) as fleet:
        providers: list[Provider] = []
        try:
            providers = [fleet.start_provider(f"{service}-old{n}") for n in (1, 2, 3)]
            fleet.start_consumer()
            fleet.wait_consumer_knows(3)
            with LoadGenerator(fleet.upstream_url, CONCURRENCY, WORK_MS) as load:
                time.sleep(STEADY_S)
                result, providers = roll(fleet, mode, providers)
                time.sleep(TAIL_S)
        finally:
            # All providers at once; the fleet then stops the consumer (and what is left) by pid.
            procs = [proc for p in providers for proc in (p.sidecar, p.app)]
            stop_all(procs)
    samples = list(load.samples)
    result.samples = [
        s for s in samples if s.started <= result.ended and s.started + s.seconds >= result.started
    ]
    result.steady = [s for s in samples if s.started + s.seconds < result.started]
    result.outside_failed = sum(not s.ok for s in samples) - sum(not s.ok for s in result.samples)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--registry", default=None, help="default: a fresh SQLite file; or consul://HOST:PORT"
    )
    parser.add_argument("--rounds", type=int, default=1, help="pairs of rolls (default 1)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary too")
    parser.add_argument("--keep-logs", metavar="DIR", help="write the processes' logs to DIR and keep them")
    args = parser.parse_args()

    info = header("rolling restart of 3 providers under load: with the sidecar vs plain")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-roll-") as tmp:
        workdir = Path(args.keep_logs or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        registry = args.registry or f"sqlite://{workdir / 'registry.db'}"
        kind = registry.split(":", 1)[0]
        print(f"registry: {kind}; load: {CONCURRENCY} POSTs in flight, {WORK_MS[0]}-{WORK_MS[1]} ms each")
        print(f"sidecar roll: /shutdown, SIGTERM, replacement --warmup {WARMUP_S:g}; plain roll: SIGTERM")
        print(f"to the app + SIGKILL to its sidecar, replacement --warmup 0; both paced {PACE_S:g} s after")
        print("/ready. Roll windows count every request in flight during the roll.\n")
        try:
            for round_number in range(args.rounds):
                order = ("sidecar", "plain") if round_number % 2 == 0 else ("plain", "sidecar")
                for mode in order:
                    results.append({"round": round_number + 1, **run_roll(workdir, registry, mode).summary()})
        except (RuntimeError, OSError, httpx.HTTPError) as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            for log in sorted(workdir.glob("*.log")):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-1500:]}", file=sys.stderr)
            raise SystemExit(1) from exc

    print(f"{'roll':<8} {'requests':>8} {'failed':>6} {'error rate':>10} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'roll time':>9}  {'steady p50/p99':>14}  {'drains (s)':<16}  in flight at SIGTERM")  # fmt: skip
    for r in results:
        drains = ", ".join(f"{d:.2f}" for d in r["drains_s"]) or "none"
        inflight = ", ".join("?" if n is None else str(n) for n in r["inflight_at_sigterm"])
        steady = f"{r['steady_p50_ms']:.0f}/{r['steady_p99_ms']:.0f}"
        print(
            f"{r['roll']:<8} {r['requests']:>8} {r['failed']:>6} {r['error_rate']:>10.2%} {r['p50_ms']:>7.0f}"
            f" {r['p99_ms']:>7.0f} {r['roll_s']:>8.1f}s  {steady:>14}  {drains:<16}  {inflight}"
        )
    for r in results:
        if r["failures_by_kind"]:
            kinds = ", ".join(f"{kind}: {count}" for kind, count in r["failures_by_kind"].items())
            print(f"{r['roll']} (round {r['round']}) failures: {kinds}")
        if r["failed_outside_roll"]:
            print(
                f"{r['roll']} (round {r['round']}): {r['failed_outside_roll']} more failures outside the roll"
            )
    if args.json:
        settings = {"registry": kind, "concurrency": CONCURRENCY, "work_ms": list(WORK_MS),
                    "warmup_s": WARMUP_S, "pace_s": PACE_S}  # fmt: skip
        print(json.dumps({"benchmark": "rolling_restart", **info, **settings, "rolls": results}))


if __name__ == "__main__":
    run(main)
