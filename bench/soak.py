"""Chaos soak: rolling restarts under load with faults injected at seeded random moments.

    .venv/bin/python bench/soak.py [--minutes 10] [--seed 1] [--json]

Fleet (real processes on loopback): a Consul agent that keeps its data (a one-node server), three
providers (demo app + provider sidecar each) and two consumer sidecars. 32 requests stay in
flight through the consumer sidecars: POSTs and GETs of 20-200 ms, 8 of each kind per consumer.
Actions follow each other, 1-3 s apart (seeded), in a seeded order that cycles through:

- roll: one provider taken out the sidecar way (`/shutdown`, then SIGTERM to app and sidecar) and
  a replacement started (new instance id, `--warmup 2`);
- consul: the agent stopped for 5-15 s (the short run: 5 s) and started again with its data kept;
  once per run (the first time) with its data wiped, as a fresh agent;
- crash: a provider's sidecar and app SIGKILLed together (a crashed pod), a replacement started;
- app-kill: a provider's app SIGKILLed while its sidecar stays up; the sidecar refuses what it
  cannot forward, its health checks take it out of `/ready`; then it is replaced;
- consumer-restart: consumer sidecar B gets SIGTERM while requests flow through it and is
  started again on the same ports (consumer A lives through the whole run);
- slow: an app frozen (SIGSTOP) for 2 s, three times in a row: its answers come 2 s late;
- frozen: an app frozen for 6 s: it accepts no connection and answers nothing meanwhile.

Every failed request is classified. Accepted by the design: a request in flight when its
instance (or app) was SIGKILLed; a request that could not connect to consumer B while it was
restarting (never sent: the local sidecar was down). Everything else is unexplained. At the end,
with the load stopped: no stale registry entry (Consul's passing instances and every consumer's
table are exactly the live providers), and consumer A's and every provider sidecar alive since
the baseline keep RSS and open file descriptors within 10% of their baseline (after the first
minute; a third into a shorter run). Both are taken the same way: the load paused until idle
connections closed (4 s with `--idle-timeout 2`), and only sidecars at least 10 s old; sockets
may also grow by up to the load's 32 connections (a provider's connections to its app stay open
as long as the app keeps them alive, 75 s for the demo app), so that pools sized by the last
burst are not taken for leaks. Exit status 1 when a check fails.
Accepted too: a request sent within 1 s after a SIGKILL on a pooled connection to the dead
instance (or app) that the consumer had not yet seen close.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from benchcommon import header, open_fds, rss_mib, run
from benchcommon import workdir as workdir_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, for Consul

from sidecar.demo.fleet import Consumer, Fleet, Provider
from sidecar.demo.loadgen import LoadGenerator, Sample
from sidecar.demo.processes import stop_process, stop_processes, wait_for
from sidecar.demo.roll import stop_with_sidecar
from sidecar.demo.stats import percentile
from tests.support.consul_agent import ConsulAgent

SERVICE = "demo"
WORK_MS = (20, 200)
PER_LOAD = 8
CONCURRENCY = 4 * PER_LOAD  # 2 methods x 2 consumers: 32 in flight
PROVIDER_ARGS = ("--quiet-period", "0.5", "--drain-timeout", "10", "--warmup", "2")
# Idle keep-alive connections close after 2 s, so that the end of the run, with the load stopped,
# counts the descriptors a sidecar keeps, not the pooled connections of the last burst. The load's
# clients reuse an idle connection for 1 s at most, as the consumers' `Keep-Alive: timeout=2`
# asks (httpx reads no Keep-Alive line; its default is 5 s, which would race the consumer's close).
IDLE_ARGS = ("--idle-timeout", "2")
CLIENT_KEEPALIVE_S = 1.0
IDLE_WAIT_S = 4.0
MIN_AGE_S = 10.0  # a sidecar younger than this at the baseline is still filling its pools
ACTIONS = ["roll", "consul", "crash", "roll", "app-kill", "consumer-restart", "roll", "slow", "frozen"]
LEAK_TOLERANCE = 0.10
KILL_WINDOW_S = 1.0
READY_TIMEOUT_S = 60.0  # starting a process under the soak's load and faults takes longer
SETTLE_S = 30.0  # registry TTLs (Consul 10 s) and consumers' tables, after the load stopped


Usage = dict[str, tuple[float, int, int]]  # sidecar -> (RSS MiB, open fds, of which sockets)


@dataclass
class Event:
    kind: str
    started: float
    ended: float = 0.0
    target: str = ""
    note: str = ""


class Soak:
    def __init__(self, workdir: Path, seed: int, minutes: float) -> None:
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.minutes = minutes
        self.short = minutes < 3
        self.agent = ConsulAgent(workdir / "consul", persistent=True)
        self.fleet = Fleet(workdir, self.agent.url, SERVICE, sidecar_args=IDLE_ARGS, app_startup_delay=0.0,
                           ready_timeout=READY_TIMEOUT_S)  # fmt: skip
        self.providers: list[Provider] = []  # the live ones
        self.events: list[Event] = []
        self.consumers: dict[str, Consumer] = {}
        self.serial = 0
        self.wiped = False

    # -- processes

    def start_provider(self) -> Provider:
        self.serial += 1
        provider = self.fleet.start_provider(f"p{self.serial}", *PROVIDER_ARGS)
        self.providers.append(provider)
        return provider

    def start_consumer(self, name: str) -> None:
        """Consumer `name` (A or B); started again on the same ports if it ran before."""
        self.consumers[name] = self.fleet.start_consumer(
            f"consumer-{name}", ports_of=self.consumers.get(name)
        )

    def wait_tables(self, timeout: float = 30.0) -> None:
        live = {p.name for p in self.providers}
        try:
            wait_for(lambda: all(c.knows(SERVICE) == live for c in self.consumers.values()), timeout,
                     "the consumers' tables to hold the live providers")  # fmt: skip
        except TimeoutError as exc:
            tables = [c.knows(SERVICE) for c in self.consumers.values()]
            raise RuntimeError(f"consumers' tables {tables} != {live}") from exc

    def thaw(self) -> None:
        """A frozen (SIGSTOPped) app cannot act on SIGTERM: let every live one run again."""
        for provider in self.providers:
            if provider.app.poll() is None:
                provider.app.send_signal(signal.SIGCONT)

    # -- actions

    def pick(self) -> Provider:
        return self.rng.choice(self.providers)

    def event(self, kind: str, target: str = "", note: str = "") -> Event:
        event = Event(kind, time.monotonic(), target=target, note=note)
        self.events.append(event)
        print(f"{event.started - self.t0:7.1f}s {kind} {target} {note}".rstrip(), flush=True)
        return event

    def roll(self) -> None:
        old = self.pick()
        event = self.event("roll", old.name)
        stop_with_sidecar(old)
        self.providers.remove(old)
        self.start_provider()
        event.ended = time.monotonic()

    def consul(self) -> None:
        wipe = not self.wiped
        self.wiped = True
        down = 5.0 if self.short else self.rng.uniform(5, 15)
        event = self.event("consul", "agent", f"{down:.1f} s down, data {'wiped' if wipe else 'kept'}")
        self.agent.stop()
        if wipe:
            shutil.rmtree(self.workdir / "consul" / "data", ignore_errors=True)
        time.sleep(down)  # the outage itself: what the fleet must ride out
        self.agent.start()
        event.ended = time.monotonic()

    def crash(self) -> None:
        victim = self.pick()
        event = self.event("crash", victim.name, victim.listen)
        stop_processes([victim.sidecar, victim.app], [signal.SIGKILL, signal.SIGKILL])
        self.providers.remove(victim)
        event.ended = time.monotonic()
        self.start_provider()

    def app_kill(self) -> None:
        victim = self.pick()
        event = self.event("app-kill", victim.name, victim.listen)
        stop_process(victim.app, signal.SIGKILL)
        event.ended = time.monotonic()
        # Its sidecar refuses (503 + X-Sidecar-Refused) and fails /ready after three checks.
        wait_for(lambda: httpx.get(f"{victim.admin}/ready", timeout=5, trust_env=False).status_code != 200,
                 30, f"{victim.name}'s sidecar to fail /ready after its app died", interval=0.1)  # fmt: skip
        self.event("app-kill-detected", victim.name)
        stop_with_sidecar(victim)  # its app is gone already
        self.providers.remove(victim)
        self.start_provider()

    def consumer_restart(self) -> None:
        event = self.event("consumer-restart", "B")
        stop_process(self.consumers["B"].sidecar)
        event.ended = time.monotonic()
        self.start_consumer("B")
        self.event("consumer-back", "B").ended = time.monotonic()
        event.ended = time.monotonic()

    def freeze(self, seconds: float, times: int, kind: str) -> None:
        victim = self.pick()
        event = self.event(kind, victim.name, f"{times} x {seconds:g} s")
        for _ in range(times):
            victim.app.send_signal(signal.SIGSTOP)
            time.sleep(seconds)  # the freeze itself
            victim.app.send_signal(signal.SIGCONT)
            time.sleep(0.5)
        event.ended = time.monotonic()

    def act(self, kind: str) -> None:
        if kind == "slow":
            self.freeze(2.0, 3, "slow")
        elif kind == "frozen":
            self.freeze(6.0, 1, "frozen")
        else:
            getattr(self, kind.replace("-", "_"))()

    # -- the run

    def usage(self, min_age: float = 0.0) -> Usage:
        """RSS and open fds of consumer A and of the providers' sidecars at least `min_age` old."""
        now = time.monotonic()
        cars = {"consumer-A": self.consumers["A"].sidecar}
        cars |= {p.name: p.sidecar for p in self.providers if now - p.started >= min_age}
        return {
            name: (rss_mib(proc.pid), open_fds(proc.pid), sockets(proc.pid)) for name, proc in cars.items()
        }

    def start_loads(self) -> list[LoadGenerator]:
        # The soak classifies failures by what they said; its clients pause on a refused port.
        loads = [
            LoadGenerator(self.consumers[c].url, PER_LOAD, WORK_MS, m, name=f"{c}-{m}", failure_text=160,
                          refused_pause=0.05, keepalive_expiry=CLIENT_KEEPALIVE_S)
            for c in "AB" for m in ("POST", "GET")
        ]  # fmt: skip
        for load in loads:
            load.__enter__()
        return loads

    def quiet_usage(self, loads: list[LoadGenerator]) -> Usage:
        """The baseline, taken as the end is: the load paused until idle connections closed
        (pools are sized by the last burst, not by leaks), sidecars that had time to warm."""
        for load in loads:
            load.stop()
        time.sleep(IDLE_WAIT_S)  # --idle-timeout 2: pooled connections close meanwhile
        usage = self.usage(min_age=MIN_AGE_S)
        self.event("baseline", note=str(usage)).ended = time.monotonic()
        loads.extend(self.start_loads())
        return usage

    def main(self) -> dict[str, Any]:
        self.agent.start()
        for _ in range(3):
            self.start_provider()
        self.start_consumer("A")
        self.start_consumer("B")
        self.wait_tables()
        loads = self.start_loads()
        self.t0 = time.monotonic()
        budget = self.minutes * 60
        baseline_at = self.t0 + min(60.0, budget / 3)
        baseline: Usage = {}
        order = list(ACTIONS)
        self.rng.shuffle(order)
        if self.short:  # one of each, the wiped Consul restart among them
            order = [kind for kind in order if kind != "roll"] + ["roll"]
        try:
            step = 0
            while self.short or time.monotonic() - self.t0 < budget:  # short: each action once
                if not baseline and time.monotonic() >= baseline_at:
                    baseline = self.quiet_usage(loads)
                self.act(order[step % len(order)])
                step += 1
                if self.short and step == len(order):
                    break
                time.sleep(self.rng.uniform(1, 3))  # the seeded moment of the next action
            if not baseline:
                baseline = self.quiet_usage(loads)
            time.sleep(2)  # a calm tail: the last action's effects show
        finally:
            for load in loads:
                load.stop()
        ended = time.monotonic()
        self.wait_tables(SETTLE_S)
        stale = self.stale_entries()
        time.sleep(max(0.0, IDLE_WAIT_S - (time.monotonic() - ended)))  # idle connections close
        final = self.usage()
        return self.report(loads, ended, stale, baseline, final)

    def stale_entries(self) -> list[str]:
        """Consul's passing instances that are not live providers, or live ones missing, once the
        registry settled (or SETTLE_S passed: then what is left is the finding)."""
        live = {p.name for p in self.providers}
        url = f"http://127.0.0.1:{self.agent.http_port}/v1/health/service/{SERVICE}?passing=1"

        def passing() -> set[str]:
            return {entry["Service"]["ID"] for entry in httpx.get(url, timeout=5).json()}

        with contextlib.suppress(TimeoutError):
            wait_for(lambda: passing() == live, SETTLE_S, "Consul to list the live providers", interval=0.2)
        return sorted(passing() ^ live)

    # -- classification

    def classify(self, sample: Sample, load: LoadGenerator) -> tuple[bool, str]:
        """(accepted by the design?, cause) of one failed request."""
        ended = sample.started + sample.seconds
        for event in self.events:
            in_flight = sample.started <= event.started + 0.05 and ended >= event.started
            if event.kind in ("crash", "app-kill") and in_flight and (sample.status in (0, 502)):
                return True, f"in flight when {event.target} was SIGKILLed ({event.kind})"
            # Sent a moment after the kill on a pooled connection the dead process had closed,
            # before the consumer saw it close: the request died with the instance all the same.
            just_after = event.started <= sample.started <= event.started + KILL_WINDOW_S
            dead = event.note in sample.error or (event.kind == "app-kill" and "app closed" in sample.error)
            if event.kind in ("crash", "app-kill") and just_after and dead:
                return True, f"sent on a connection to {event.target} just SIGKILLed ({event.kind})"
            restarting = event.started - 0.05 <= sample.started <= (event.ended or ended) + 0.05
            down = event.kind == "consumer-restart" and load.name.startswith("B") and restarting
            if down and sample.status == 0 and sample.error == "ConnectError":
                return True, "consumer B down (restarting): never sent"
        during = sorted(
            {e.kind for e in self.events if e.started <= ended and (e.ended or 1e18) >= sample.started}
        )
        return (
            False,
            f"{sample.status or sample.error} {sample.error if sample.status else ''} during {during}",
        )

    def report(
        self, loads: list[LoadGenerator], ended: float, stale: list[str], baseline: Usage, final: Usage
    ) -> dict[str, Any]:
        samples = [
            (s, load) for load in loads for s in load.samples if s.started >= self.t0 and s.started < ended
        ]
        failed = [(s, load) for s, load in samples if not s.ok]
        causes: Counter[str] = Counter()
        kinds: Counter[str] = Counter({"kill": 0, "never_sent": 0, "unexplained": 0})
        for sample, load in failed:
            accepted, cause = self.classify(sample, load)
            causes[f"{'accepted' if accepted else 'UNEXPLAINED'}: {load.method} {cause}"] += 1
            kinds["never_sent" if "never sent" in cause else "kill" if accepted else "unexplained"] += 1
        leaks = {}
        for name, (rss, fds, socks) in final.items():
            if name in baseline:
                rss0, fds0, socks0 = baseline[name]
                within = 1 + LEAK_TOLERANCE
                # Sockets: a provider keeps connections to its app that a burst opened (the app
                # closes idle ones after its own keep-alive, aiohttp's 75 s): bounded by the load's
                # concurrency, which is what a leak would exceed.
                ok = rss <= rss0 * within and fds - socks <= (fds0 - socks0) * within
                ok = ok and (socks <= socks0 * within or socks <= socks0 + CONCURRENCY)
                leaks[name] = {"rss_mib": [round(rss0, 1), round(rss, 1)], "fds": [fds0, fds],
                               "sockets": [socks0, socks], "ok": ok}  # fmt: skip
        return {
            "seconds": round(ended - self.t0, 1),
            "requests": len(samples),
            "by_method": dict(Counter(load.method for _, load in samples)),
            "failed": len(failed),
            "causes": dict(causes.most_common()),
            "unexplained": kinds["unexplained"],
            "kill_related": kinds["kill"],
            # Phases without a kill: requests that could not even connect to consumer B while it
            # restarted (the app's own sidecar was down: never sent, safe to send again), and
            # whatever is unexplained.
            "never_sent": kinds["never_sent"],
            "events": dict(Counter(e.kind for e in self.events)),
            "stale_entries": stale,
            "usage": leaks,
            "p50_ms": round(percentile([s.seconds for s, _ in samples], 0.5) * 1000),
            "p99_ms": round(percentile([s.seconds for s, _ in samples], 0.99) * 1000),
        }


def sockets(pid: int) -> int:
    fd_dir = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(fd).startswith("socket:")
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="keep the processes' logs here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    info = header(f"Chaos soak: {args.minutes:g} min, seed {args.seed}")
    with workdir_for("soak-", args.workdir) as workdir:
        soak = Soak(workdir, args.seed, args.minutes)
        try:
            with soak.fleet:  # stops every process it started, by pid
                try:
                    result = soak.main()
                finally:
                    soak.thaw()
        finally:
            soak.agent.stop()
    result["machine"] = {**info, "loadavg_end": [round(x, 2) for x in os.getloadavg()]}
    print(f"requests {result['requests']} {result['by_method']}, failed {result['failed']}: unexplained "
          f"{result['unexplained']}, kill-related {result['kill_related']}, "
          f"never sent {result['never_sent']}")  # fmt: skip
    for cause, count in result["causes"].items():
        print(f"  {count:5d}  {cause}")
    print(f"events {result['events']}; stale registry entries {result['stale_entries']}")
    for name, usage in result["usage"].items():
        print(f"  {name}: RSS {usage['rss_mib'][0]} -> {usage['rss_mib'][1]} MiB, fds {usage['fds'][0]} -> "
              f"{usage['fds'][1]} (sockets {usage['sockets'][0]} -> {usage['sockets'][1]}) "
              f"{'ok' if usage['ok'] else 'GREW'}")  # fmt: skip
    end = result["machine"]["loadavg_end"]
    print(f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms; load average at the end {end}")
    if args.json:
        print(json.dumps(result))
    ok = not result["unexplained"] and not result["stale_entries"]
    ok = ok and all(usage["ok"] for usage in result["usage"].values())
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    run(main)
