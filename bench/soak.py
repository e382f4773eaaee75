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
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from benchcommon import header, open_fds, rss_mib, run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, for Consul

from sidecar.demo.fleet import free_port, stop, wait_http_ok
from sidecar.demo.loadgen import LoadGenerator, Sample
from tests.support.consul_agent import ConsulAgent

SERVICE = "demo"
WORK_MS = (20, 200)
PER_LOAD = 8
CONCURRENCY = 4 * PER_LOAD  # 2 methods x 2 consumers: 32 in flight
PROVIDER_ARGS = ("--quiet-period", "0.5", "--drain-timeout", "10", "--warmup", "2")
# Idle keep-alive connections close after 2 s, so that the end of the run, with the load stopped,
# counts the descriptors a sidecar keeps, not the pooled connections of the last burst.
IDLE_ARGS = ("--idle-timeout", "2")
IDLE_WAIT_S = 4.0
MIN_AGE_S = 10.0  # a sidecar younger than this at the baseline is still filling its pools
ACTIONS = ["roll", "consul", "crash", "roll", "app-kill", "consumer-restart", "roll", "slow", "frozen"]
LEAK_TOLERANCE = 0.10
KILL_WINDOW_S = 1.0
SETTLE_S = 30.0  # registry TTLs (Consul 10 s) and consumers' tables, after the load stopped


Usage = dict[str, tuple[float, int, int]]  # sidecar -> (RSS MiB, open fds, of which sockets)


@dataclass
class Event:
    kind: str
    started: float
    ended: float = 0.0
    target: str = ""
    note: str = ""


class SoakLoad(LoadGenerator):
    """A LoadGenerator that also records what a failed response said."""

    def __init__(self, url: str, method: str, name: str) -> None:
        super().__init__(url, PER_LOAD, WORK_MS, method)
        self.name = name

    async def _client(self, client: httpx.AsyncClient, stop: Any) -> None:
        rng = random.Random()
        while not stop.is_set():
            started = time.monotonic()
            try:
                response = await client.request(
                    self.method, self.url, params={"ms": rng.randint(*self.work_ms)}, content=b'{"order": 42}'
                )
                ok = response.status_code == 200
                instance = str(response.json().get("instance", "")) if ok else ""
                said = "" if ok else f"{response.text[:160]}"
                self.samples.append(
                    Sample(started, time.monotonic() - started, response.status_code, instance, said)
                )
            except (httpx.HTTPError, ValueError) as exc:
                self.samples.append(
                    Sample(started, time.monotonic() - started, 0, "", exc.__class__.__name__)
                )
                if isinstance(exc, httpx.ConnectError):
                    await asyncio.sleep(0.05)  # an app does not spin on a refused port


@dataclass
class Provider:
    name: str
    app: subprocess.Popen[bytes]
    sidecar: subprocess.Popen[bytes]
    admin: str
    address: str
    born: float = field(default_factory=time.monotonic)


class Soak:
    def __init__(self, workdir: Path, seed: int, minutes: float) -> None:
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.minutes = minutes
        self.short = minutes < 3
        self.agent = ConsulAgent(workdir / "consul", persistent=True)
        self.providers: list[Provider] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.events: list[Event] = []
        self.consumers: dict[str, dict[str, Any]] = {}
        self.serial = 0
        self.wiped = False

    # -- processes

    def spawn(self, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{log}.log", "ab") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def sidecar_argv(self, admin: int, *args: str) -> list[str]:
        return [sys.executable, "-m", "sidecar", "run", "--registry", self.agent.url, "--log-format", "json",
                "--admin", f"127.0.0.1:{admin}", *IDLE_ARGS, *args]  # fmt: skip

    def start_provider(self) -> Provider:
        self.serial += 1
        name = f"p{self.serial}"
        app_port, listen, admin = free_port(), free_port(), free_port()
        app = self.spawn([sys.executable, "-m", "sidecar.demo.app", "--port", str(app_port), "--name", name],
                         f"app-{name}")  # fmt: skip
        args = ("--service", SERVICE, "--instance-id", name, "--listen", f"127.0.0.1:{listen}",
                "--app", f"http://127.0.0.1:{app_port}", *PROVIDER_ARGS)  # fmt: skip
        car = self.spawn(self.sidecar_argv(admin, *args), f"sidecar-{name}")
        provider = Provider(name, app, car, f"http://127.0.0.1:{admin}", f"127.0.0.1:{listen}")
        wait_http_ok(f"{provider.admin}/ready", 60)
        self.providers.append(provider)
        return provider

    def start_consumer(self, name: str) -> None:
        known = self.consumers.get(name)
        admin, upstream = (known["admin_port"], known["port"]) if known else (free_port(), free_port())
        args = ("--service", f"consumer-{name}", "--upstream", f"{SERVICE}=127.0.0.1:{upstream}")
        proc = self.spawn(self.sidecar_argv(admin, *args), f"consumer-{name}")
        self.consumers[name] = {"proc": proc, "admin_port": admin, "port": upstream,
                                "admin": f"http://127.0.0.1:{admin}",
                                "url": f"http://127.0.0.1:{upstream}"}  # fmt: skip
        wait_http_ok(f"http://127.0.0.1:{admin}/ready", 60)

    def table(self, consumer: str) -> set[str]:
        status = httpx.get(f"{self.consumers[consumer]['admin']}/status", timeout=5, trust_env=False).json()
        return {row["instance_id"] for row in status["upstreams"][SERVICE]["instances"] if not row["dropped"]}

    def wait_tables(self, timeout: float = 30.0) -> None:
        live = {p.name for p in self.providers}
        deadline = time.monotonic() + timeout
        while any(self.table(name) != live for name in self.consumers):
            if time.monotonic() > deadline:
                raise RuntimeError(f"consumers' tables {[self.table(n) for n in self.consumers]} != {live}")
            time.sleep(0.05)

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
        httpx.get(f"{old.admin}/shutdown", timeout=60, trust_env=False)
        stop(old.app)
        stop(old.sidecar)
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
        event = self.event("crash", victim.name, victim.address)
        victim.sidecar.send_signal(signal.SIGKILL)
        victim.app.send_signal(signal.SIGKILL)
        victim.sidecar.wait()
        victim.app.wait()
        self.providers.remove(victim)
        event.ended = time.monotonic()
        self.start_provider()

    def app_kill(self) -> None:
        victim = self.pick()
        event = self.event("app-kill", victim.name, victim.address)
        victim.app.send_signal(signal.SIGKILL)
        victim.app.wait()
        event.ended = time.monotonic()
        # Its sidecar refuses (503 + X-Sidecar-Refused) and fails /ready after three checks.
        deadline = time.monotonic() + 30
        while httpx.get(f"{victim.admin}/ready", timeout=5, trust_env=False).status_code == 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{victim.name}'s sidecar still ready 30 s after its app died")
            time.sleep(0.1)
        self.event("app-kill-detected", victim.name)
        httpx.get(f"{victim.admin}/shutdown", timeout=60, trust_env=False)
        stop(victim.sidecar)
        self.providers.remove(victim)
        self.start_provider()

    def consumer_restart(self) -> None:
        event = self.event("consumer-restart", "B")
        stop(self.consumers["B"]["proc"])
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
        cars = {"consumer-A": self.consumers["A"]["proc"]}
        cars |= {p.name: p.sidecar for p in self.providers if now - p.born >= min_age}
        return {
            name: (rss_mib(proc.pid), open_fds(proc.pid), sockets(proc.pid)) for name, proc in cars.items()
        }

    def start_loads(self) -> list[SoakLoad]:
        loads = [SoakLoad(self.consumers[c]["url"], m, f"{c}-{m}") for c in "AB" for m in ("POST", "GET")]
        for load in loads:
            load.__enter__()
        return loads

    def quiet_usage(self, loads: list[SoakLoad]) -> Usage:
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
        live = {p.name for p in self.providers}
        deadline = time.monotonic() + SETTLE_S
        while True:
            url = f"http://127.0.0.1:{self.agent.http_port}/v1/health/service/{SERVICE}?passing=1"
            found = {entry["Service"]["ID"] for entry in httpx.get(url, timeout=5).json()}
            if found == live or time.monotonic() > deadline:
                return sorted(found ^ live)
            time.sleep(0.2)

    # -- classification

    def classify(self, sample: Sample, load: SoakLoad) -> tuple[bool, str]:
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
        self, loads: list[SoakLoad], ended: float, stale: list[str], baseline: Usage, final: Usage
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
            "p50_ms": round(percentile([s for s, _ in samples], 0.5) * 1000),
            "p99_ms": round(percentile([s for s, _ in samples], 0.99) * 1000),
        }


def sockets(pid: int) -> int:
    fd_dir = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fd_dir.iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            count += os.readlink(fd).startswith("socket:")
    return count


def percentile(samples: list[Sample], fraction: float) -> float:
    durations = sorted(s.seconds for s in samples)
    return durations[min(len(durations) - 1, int(len(durations) * fraction))] if durations else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="keep the processes' logs here")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    info = header(f"Chaos soak: {args.minutes:g} min, seed {args.seed}")
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        soak = Soak(workdir, args.seed, args.minutes)
        try:
            result = soak.main()
        finally:
            for proc in reversed(soak.procs):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGCONT)  # a frozen app must be able to stop
                    stop(proc)
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
