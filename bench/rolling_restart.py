"""A rolling restart of three providers under load, done the sidecar way and done plainly, in
the same run on the same machine.

    .venv/bin/python bench/rolling_restart.py [--registry consul://HOST:PORT] [--json]

Each roll gets fresh processes (sidecar/demo/fleet.py): three demo apps (sidecar/demo/app.py), each
behind a provider sidecar, and one consumer-only sidecar whose upstream listener balances over
them; the roll is the demo's (sidecar/demo/roll.py). A LoadGenerator (sidecar/demo/loadgen.py)
keeps 32 POSTs of 20-300 ms in flight through the consumer sidecar for 2 s before the roll,
during it and 1 s after it. POST is not idempotent: no sidecar retries one that was sent, so a
lossless roll has to come from draining.

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
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchcommon import header, logs_on_failure, run
from benchcommon import workdir as workdir_for

from sidecar.demo.fleet import Fleet
from sidecar.demo.loadgen import LoadGenerator, Sample
from sidecar.demo.roll import MinReady, Mode, Roll, roll
from sidecar.demo.stats import percentile

CONCURRENCY = 32
WORK_MS = (20, 300)
WARMUP_S = 2.0
PACE_S = 2.0  # after /ready, before the next step (minReadySeconds)
STEADY_S = 2.0
TAIL_S = 1.0
REPLACEMENT_ARGS: dict[Mode, tuple[str, ...]] = {
    "sidecar": ("--warmup", f"{WARMUP_S:g}"),
    "plain": ("--warmup", "0"),
}


@dataclass
class Measured:
    roll: Roll
    samples: list[Sample]  # requests in flight at any time of the roll
    steady: list[Sample]  # requests done before the roll began
    outside_failed: int  # failures of requests outside the roll window

    def summary(self) -> dict[str, Any]:
        failed = [s for s in self.samples if not s.ok]

        def ms(samples: list[Sample], fraction: float) -> float:
            return round(percentile((s.seconds for s in samples), fraction) * 1000, 1)

        kinds = Counter(s.error or f"HTTP {s.status}" for s in failed)
        return {
            "roll": self.roll.mode,
            "requests": len(self.samples),
            "failed": len(failed),
            "error_rate": round(len(failed) / len(self.samples), 5) if self.samples else 0.0,
            "p50_ms": ms(self.samples, 0.5),
            "p99_ms": ms(self.samples, 0.99),
            "steady_requests": len(self.steady),
            "steady_p50_ms": ms(self.steady, 0.5),
            "steady_p99_ms": ms(self.steady, 0.99),
            "roll_s": round(self.roll.ended - self.roll.started, 2),
            "drains_s": self.roll.drains,
            "inflight_at_sigterm": self.roll.inflight_at_sigterm,
            "failures_by_kind": dict(kinds.most_common()),
            "failed_outside_roll": self.outside_failed,
        }


def run_roll(workdir: Path, registry: str, mode: Mode) -> Measured:
    service = f"roll-{uuid.uuid4().hex[:6]}"
    # On exit the fleet stops all providers at once, then the consumer, by pid.
    with Fleet(workdir, registry, service) as fleet:
        providers = [fleet.start_provider(f"{service}-old{n}") for n in (1, 2, 3)]
        consumer = fleet.start_consumer()
        fleet.wait_consumer_knows(consumer, 3)
        with LoadGenerator(consumer.url, CONCURRENCY, WORK_MS) as load:
            time.sleep(STEADY_S)  # the steady state before the roll, to compare against
            result = roll(fleet, mode, providers, REPLACEMENT_ARGS[mode], f"{service}-new", MinReady(PACE_S))
            time.sleep(TAIL_S)  # requests started during the roll finish
    samples = list(load.samples)
    during = [s for s in samples if s.started <= result.ended and s.started + s.seconds >= result.started]
    steady = [s for s in samples if s.started + s.seconds < result.started]
    outside_failed = sum(not s.ok for s in samples) - sum(not s.ok for s in during)
    return Measured(result, during, steady, outside_failed)


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
    with workdir_for("bench-roll-", args.keep_logs) as workdir:
        registry = args.registry or f"sqlite://{workdir / 'registry.db'}"
        kind = registry.split(":", 1)[0]
        print(f"registry: {kind}; load: {CONCURRENCY} POSTs in flight, {WORK_MS[0]}-{WORK_MS[1]} ms each")
        print(f"sidecar roll: /shutdown, SIGTERM, replacement --warmup {WARMUP_S:g}; plain roll: SIGTERM")
        print(f"to the app + SIGKILL to its sidecar, replacement --warmup 0; both paced {PACE_S:g} s after")
        print("/ready. Roll windows count every request in flight during the roll.\n")
        with logs_on_failure(workdir):
            for round_number in range(args.rounds):
                order: tuple[Mode, Mode] = (
                    ("sidecar", "plain") if round_number % 2 == 0 else ("plain", "sidecar")
                )
                for mode in order:
                    results.append({"round": round_number + 1, **run_roll(workdir, registry, mode).summary()})

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
