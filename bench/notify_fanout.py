"""Offline notifications to 1,000 consumer sidecars, 100 of which never answer.

    .venv/bin/python bench/notify_fanout.py [--consumers 1000] [--silent 100] [--json]

One demo app behind one provider sidecar. This script opens `--consumers` listeners on loopback
that stand for consumer sidecars' admin APIs: the answering ones reply `204` to `POST /notify`
and record when the notification arrived; the silent ones accept the connection, read the
request and never answer (a consumer whose host froze). Each consumer calls the provider once
with its own `X-Sidecar-Consumer: http://127.0.0.1:PORT`, so the provider remembers all of them;
the silent ones are spread at random among the others. Then `GET /shutdown` (quiet period
0.2 s), and measured:

- from the `/shutdown` call to the first and the last notification an answering consumer got
  (aim: the last within 1 s);
- how long `/shutdown` took (aim: not held past one notification timeout, 2 s, by the silent
  ones: about 2 s plus the quiet period at most);
- the provider sidecar's open file descriptors, sampled every 5 ms from /proc during the
  drain, against before it (bounded by the notifier's concurrency limit, notify.PARALLEL).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from benchcommon import cpu_seconds, header, open_fds, run

from sidecar.demo.fleet import Fleet
from sidecar.provider import notify

QUIET_S = 0.2


class Consumer(asyncio.Protocol):
    """A consumer's admin API, reduced to what a notification needs."""

    def __init__(self, arrivals: list[float], silent: bool) -> None:
        self.arrivals = arrivals
        self.silent = silent
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head, sep, body = self.buffer.partition(b"\r\n\r\n")
        if not sep or self.silent or self.transport is None:
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(body) >= length:
            self.arrivals.append(time.monotonic())
            self.transport.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
            self.transport.close()


class Consumers:
    """The listeners, on an event loop in a thread of their own."""

    def __init__(self, count: int, silent: int, seed: int) -> None:
        self.arrivals: list[float] = []
        self.silent = set(random.Random(seed).sample(range(count), silent))
        self.ports: list[int] = []
        self._count = count
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Consumers:
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("the consumer listeners did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        servers = []
        for index in range(self._count):
            silent = index in self.silent
            server = self._loop.run_until_complete(
                self._loop.create_server(lambda s=silent: Consumer(self.arrivals, s), "127.0.0.1", 0)
            )
            servers.append(server)
            self.ports.append(server.sockets[0].getsockname()[1])
        self._ready.set()
        self._loop.run_forever()
        for server in servers:
            server.close()


def fd_sampler(pid: int, stop: threading.Event, samples: list[int]) -> None:
    while not stop.is_set():
        try:
            samples.append(open_fds(pid))
        except OSError:
            return
        stop.wait(0.005)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--consumers", type=int, default=1000)
    parser.add_argument("--silent", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # a listener and a connection each
    info = header(f"Notification fan-out: {args.consumers} consumers, {args.silent} silent")
    with (
        tempfile.TemporaryDirectory(prefix="fanout-") as tmp,
        Fleet(Path(tmp), f"sqlite://{tmp}/r.db") as fleet,
    ):
        provider = fleet.start_provider("p1", "--quiet-period", str(QUIET_S))
        url = f"http://{provider.listen}"
        with (
            Consumers(args.consumers, args.silent, args.seed) as consumers,
            httpx.Client(timeout=10) as client,
        ):
            for port in consumers.ports:
                consumer = {"X-Sidecar-Consumer": f"http://127.0.0.1:{port}"}
                client.get(f"{url}/work", params={"ms": 0}, headers=consumer).raise_for_status()
            known = client.get(f"{provider.admin}/status").json()["consumers"]
            pid = provider.sidecar.pid
            fds_before = open_fds(pid)
            samples: list[int] = []
            stop = threading.Event()
            sampler = threading.Thread(target=fd_sampler, args=(pid, stop, samples), daemon=True)
            sampler.start()
            cpu_before = cpu_seconds(pid)
            started = time.monotonic()
            answer = client.get(f"{provider.admin}/shutdown", timeout=120).json()
            took = time.monotonic() - started
            cpu = cpu_seconds(pid) - cpu_before
            stop.set()
            sampler.join(5)
            arrivals = sorted(consumers.arrivals)
    result: dict[str, Any] = {
        "machine": info,
        "consumers": args.consumers,
        "silent": args.silent,
        "known_to_provider": known,
        "answered": len(arrivals),
        "first_s": round(arrivals[0] - started, 3) if arrivals else None,
        "last_s": round(arrivals[-1] - started, 3) if arrivals else None,
        "shutdown_s": round(took, 3),
        "shutdown": answer,
        "parallel": notify.PARALLEL,
        "timeout_s": notify.TIMEOUT_SECONDS,
        "provider_cpu_s": round(cpu, 2),
        "fds_before": fds_before,
        "fds_max": max(samples, default=fds_before),
    }
    print(f"provider knew {known} consumers; {len(arrivals)} answering ones were notified")
    print(
        f"first notification {result['first_s']} s, last {result['last_s']} s after /shutdown (aim: <= 1 s)"
    )
    print(f"/shutdown took {took:.2f} s (notification timeout {notify.TIMEOUT_SECONDS} s, "
          f"quiet period {QUIET_S} s), provider CPU {cpu:.2f} s; body {json.dumps(answer)}")  # fmt: skip
    print(f"provider fds: {fds_before} before, at most {result['fds_max']} during the drain "
          f"(concurrency limit {notify.PARALLEL})")  # fmt: skip
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    run(main)
