"""Latency-driven warmup against the clock (issue 20, part 2): a cold instance joins two warm
ones under load, once with `--warmup 30` (the clock curve) and once with `--warmup-mode latency
--warmup 120` (a safety bound well above the expected warm time, as a user would set it), for
two kinds of cold app.

    .venv/bin/python bench/latency_warmup.py [--rate 250] [--json] [--chart-data PATH]
        [--only jit|cache|jit:latency|...]

`--only` runs some of the cases (a profile, or profile:mode), to iterate on one; the aims are
then judged only where both of their runs were made, and the chart data is not written.

Each run has fresh processes (sidecar/demo/fleet.py) and a SQLite registry of its own: two demo
apps behind provider sidecars, warm and at full weight (in latency mode started with the same
options as the newcomer, so that they publish their p90 as serving peers do; in clock mode with
`--warmup 0`: their warmup is over before the newcomer joins either way), a consumer sidecar,
and an open-loop load through it: `--rate` GETs a second of `/work?ms=40`, sent on schedule
whatever the answers take, as users send them (a closed loop of N clients would slow down with
the cold instance and hide its slow answers). After 5 s of that, and in latency mode once both
warm instances published their p90, the third instance joins, its demo app cold:

- `jit`: `--cold-requests 300`, ten times slower at its first request, decaying linearly to warm
  at the 300th, as a JIT compiles what it runs;
- `cache`: `--cold-seconds 45`, ten times slower for its first 45 s whatever it serves, then warm,
  as a cache that fills with time.

Measured over the 60 s after the newcomer answered `/ready` (its registration): the time until
its weight (its sidecar's `/weight`, read every 0.25 s) reached the base, its weight at 31 s,
p50 and p99 of every request through the consumer, and the newcomer's slow requests: those it
answered in more than five times the warm latency (the p50 through the consumer in the 3 s
before it joined). Aims (issue 20): the `jit` app in latency mode at full weight in under a
third of the clock's 30 s, with p99 no worse than the clock's; the `cache` app in latency mode
below half weight at 31 s (the clock is at full weight then) and at most half as many slow
requests as with the clock.

The weights over time go to `--chart-data` (by default sidecar/demo/warmup_ramps.json, which
the demo's HTML report draws side by side). The machine is shared and noisy: compare the runs
of one invocation; each line says the load average at its start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import httpx
from benchcommon import header, logs_on_failure, run
from benchcommon import workdir as workdir_for

from sidecar.demo.fleet import Fleet, Provider
from sidecar.demo.loadgen import Sample
from sidecar.demo.processes import wait_for
from sidecar.demo.stats import percentile

RATE = 250.0  # requests a second: about a third of a core for the client on this machine
WORK_MS = 40
STEADY_S = 5.0
RUN_S = 60.0
SAMPLE_S = 0.25
AT_S = 31.0  # the clock is at full weight from 30 s on
SLOW_FACTOR = 5.0
BASE = 100
PROFILES: dict[str, tuple[str, ...]] = {
    "jit": ("--cold-requests", "300"),
    "cache": ("--cold-seconds", "45"),
}
MODES: dict[str, tuple[str, ...]] = {
    "clock": ("--warmup", "30"),
    "latency": ("--warmup-mode", "latency", "--warmup", "120"),
}
WARM_ARGS: dict[str, tuple[str, ...]] = {"clock": ("--warmup", "0"), "latency": MODES["latency"]}
# Alternated so that neither mode always gets the quieter minute.
ORDER = (("jit", "clock"), ("jit", "latency"), ("cache", "latency"), ("cache", "clock"))
CHART_DATA = Path(__file__).resolve().parents[1] / "sidecar" / "demo" / "warmup_ramps.json"
# Far more than RATE x the slowest answer (0.4 s): the loop never waits for a free connection.
MAX_CONNECTIONS = 1024


class OpenLoad:
    """GET /work at `rate` a second on schedule, each request on its own, from a thread and event
    loop of their own; every request becomes a `Sample`."""

    def __init__(self, url: str, rate: float, work_ms: int) -> None:
        self.url = f"{url.rstrip('/')}/work?ms={work_ms}"
        self.rate = rate
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._main()), name="open-load", daemon=True
        )

    def __enter__(self) -> OpenLoad:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(60)

    async def _main(self) -> None:
        connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            pending: set[asyncio.Task[None]] = set()
            start, sent = time.monotonic(), 0
            while not self._stop.is_set():
                due = start + sent / self.rate
                if (wait := due - time.monotonic()) > 0:
                    await asyncio.sleep(wait)
                task = asyncio.create_task(self._one(session, due))
                pending.add(task)
                task.add_done_callback(pending.discard)
                sent += 1
            if pending:
                await asyncio.wait(pending)

    async def _one(self, session: aiohttp.ClientSession, due: float) -> None:
        # Timed from when it was due: a request the client sent late still counts its wait.
        try:
            async with session.get(self.url) as response:
                body = await response.json(content_type=None) if response.status == 200 else {}
                sample = Sample(due, time.monotonic() - due, response.status, str(body.get("instance", "")))
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            sample = Sample(due, time.monotonic() - due, 0, "", type(exc).__name__)
        self.samples.append(sample)


def weight_of(provider: Provider) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{provider.admin}/weight", timeout=5, trust_env=False).json()
    return body


def follow(provider: Provider, since: float, until: float) -> list[tuple[float, int, str | None]]:
    """(seconds since `since`, weight, why the warmup ended) every SAMPLE_S until `until`."""
    series = []
    while (now := time.monotonic()) < until:
        body = weight_of(provider)
        series.append((round(now - since, 2), int(body["current"]), body["warmup"].get("ended")))
        time.sleep(max(0.0, SAMPLE_S - (time.monotonic() - now)))
    return series


def run_case(workdir: Path, profile: str, mode: str, rate: float) -> dict[str, Any]:
    service = f"{profile}-{mode}-{uuid.uuid4().hex[:6]}"
    registry = f"sqlite://{workdir / (service + '.db')}"
    load_at_start = round(os.getloadavg()[0], 2)
    with Fleet(workdir, registry, service) as fleet:
        warm = [fleet.start_provider(f"{service}-warm{n}", *WARM_ARGS[mode]) for n in (1, 2)]
        consumer = fleet.start_consumer()
        fleet.wait_consumer_knows(consumer, 2)
        with OpenLoad(consumer.url, rate, WORK_MS) as load:
            time.sleep(STEADY_S)  # the steady state the newcomer's latency is compared with
            if mode == "latency":  # the warm level the newcomer compares itself with
                for provider in warm:
                    wait_for(
                        lambda p=provider: weight_of(p)["warmup"]["published_p90_ms"], 60, "a published p90"
                    )
            joined_before = time.monotonic()
            new = fleet.start_provider(f"{service}-new", *MODES[mode], app_args=PROFILES[profile])
            joined = new.ready_at
            series = follow(new, joined, joined + RUN_S)
            final = weight_of(new)
    samples = list(load.samples)
    steady = [s for s in samples if joined_before - 3 <= s.started and s.started + s.seconds < joined_before]
    warm_latency = percentile((s.seconds for s in steady), 0.5)
    after = [s for s in samples if joined <= s.started < joined + RUN_S]
    mine = [s for s in after if s.instance == new.name]
    full = next((t for t, weight, _ in series if weight >= BASE), None)
    at = min(series, key=lambda row: abs(row[0] - AT_S))
    return {
        "profile": profile,
        "mode": mode,
        "args": " ".join(MODES[mode]),
        "load_at_start": load_at_start,
        "requests": len(after),
        "failed": sum(not s.ok for s in after),
        "warm_latency_ms": round(warm_latency * 1000, 1),
        "p50_ms": round(percentile((s.seconds for s in after), 0.5) * 1000, 1),
        "p99_ms": round(percentile((s.seconds for s in after), 0.99) * 1000, 1),
        "new_requests": len(mine),
        "slow": sum(s.seconds > SLOW_FACTOR * warm_latency for s in mine),
        "time_to_full_s": full,
        "weight_at_31_s": at[1],
        "ended": final["warmup"].get("ended"),
        "served_in_warmup": final["warmup"].get("served"),
        "weights": [[t, weight] for t, weight, _ in series],
    }


def show(results: list[dict[str, Any]]) -> None:
    print(f"{'profile':<7} {'mode':<8} {'full weight':>11} {'at 31 s':>7} {'p50':>7} {'p99':>7} "
          f"{'slow':>5} {'new req':>7} {'requests':>8} {'failed':>6} {'ended':>8} {'load':>5}")  # fmt: skip
    for r in results:
        full = "never" if r["time_to_full_s"] is None else f"{r['time_to_full_s']:.1f} s"
        print(
            f"{r['profile']:<7} {r['mode']:<8} {full:>11} {r['weight_at_31_s']:>7} {r['p50_ms']:>5.0f}ms"
            f" {r['p99_ms']:>5.0f}ms {r['slow']:>5} {r['new_requests']:>7} {r['requests']:>8}"
            f" {r['failed']:>6} {r['ended'] or '-':>8} {r['load_at_start']:>5}"
        )
    by = {(r["profile"], r["mode"]): r for r in results}
    aims: list[tuple[str, bool]] = []
    if ("jit", "latency") in by:
        full = by["jit", "latency"]["time_to_full_s"]
        aims.append(("jit: latency mode at full weight in under 10 s", full is not None and full < 10.0))
        if ("jit", "clock") in by:
            met = by["jit", "latency"]["p99_ms"] <= by["jit", "clock"]["p99_ms"]
            aims.append(("jit: p99 no worse than the clock's", met))
    if ("cache", "latency") in by:
        cache_latency = by["cache", "latency"]
        aims.append(
            ("cache: latency mode below half weight at 31 s", cache_latency["weight_at_31_s"] < BASE / 2)
        )
        if ("cache", "clock") in by:
            met = cache_latency["slow"] * 2 <= by["cache", "clock"]["slow"]
            aims.append(("cache: at most half the clock's slow requests", met))
    for aim, met in aims:
        print(f"aim: {aim}: {'met' if met else 'NOT MET'}")


def _selects(only: str, profile: str, mode: str) -> bool:
    wanted, _, wanted_mode = only.partition(":")
    return wanted == profile and wanted_mode in ("", mode)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=RATE, help=f"requests a second (default {RATE:g})")
    parser.add_argument("--json", action="store_true", help="print a JSON summary too")
    parser.add_argument(
        "--chart-data", type=Path, default=CHART_DATA, help="where the demo's chart reads the ramps"
    )
    parser.add_argument("--keep-logs", metavar="DIR", help="write the processes' logs to DIR and keep them")
    parser.add_argument(
        "--only",
        action="append",
        metavar="PROFILE[:MODE]",
        help="run only these cases (repeatable): jit, cache, jit:latency, ...; no chart data then",
    )
    args = parser.parse_args()
    cases = [case for case in ORDER if not args.only or any(_selects(only, *case) for only in args.only)]
    if not cases:
        parser.error(f"--only selects no case of {', '.join(f'{p}:{m}' for p, m in ORDER)}")
    info = header("latency-driven warmup vs the clock: a cold instance joins two warm ones under load")
    print(f"load: {args.rate:g} GETs a second (open loop) of {WORK_MS} ms through a consumer sidecar;")
    print(
        f"each run {RUN_S:g} s after the newcomer's registration; slow: over {SLOW_FACTOR:g}x the warm p50\n"
    )
    results = []
    with workdir_for("bench-latency-warmup-", args.keep_logs) as workdir, logs_on_failure(workdir, last=6):
        for profile, mode in cases:
            result = run_case(workdir, profile, mode, args.rate)
            print(f"  {profile} {mode}: done (full weight at {result['time_to_full_s']} s)", flush=True)
            results.append(result)
    order = {key: index for index, key in enumerate((p, m) for p in PROFILES for m in MODES)}
    results.sort(key=lambda r: order[r["profile"], r["mode"]])
    show(results)
    settings = {"rate": args.rate, "work_ms": WORK_MS, "run_s": RUN_S, "profiles": PROFILES, "modes": MODES}
    summary = {"benchmark": "latency_warmup", **info, **settings, "runs": results}
    if not args.only:  # the chart draws all four runs of one invocation
        args.chart_data.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"chart data: {args.chart_data}")
    if args.json:
        print(
            json.dumps({**summary, "runs": [{k: v for k, v in r.items() if k != "weights"} for r in results]})
        )


if __name__ == "__main__":
    run(main)
