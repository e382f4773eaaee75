"""One consumer sidecar with 100 `--upstream` services: start time, idle CPU, memory.

    .venv/bin/python bench/many_upstreams.py [--upstreams 100] [--registry sqlite|consul|both] [--json]

Each service has one instance in the registry (written directly, as in bench/large_tables.py).
Measured for 1 and for N upstreams: from spawning the sidecar to `/ready` answering 200 and to
every table holding its instance (`sidecar_upstream_instances` in /metrics), then the sidecar's
CPU over 10 s with nothing to do, its RSS and its open file descriptors. Aim: idle CPU does not
grow like a busy loop per service.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from benchcommon import cpu_seconds, header, open_fds, rss_mib, run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, for Consul

from large_tables import consul_register, instances, write_sqlite

from sidecar.demo.fleet import sidecar_argv
from sidecar.demo.ports import free_port
from sidecar.demo.processes import spawn, stop_process, wait_for

IDLE_SECONDS = 10.0
READY_TIMEOUT_S = 120.0
POLL_S = 0.02  # the resolution of the start times measured


def start(workdir: Path, registry: str, count: int) -> tuple[Any, float, float]:
    """The consumer sidecar, and the seconds from its start to /ready and to every table full."""
    admin = free_port()
    upstreams = [arg for n in range(count) for arg in ("--upstream", f"svc{n}=127.0.0.1:{free_port()}")]
    argv = sidecar_argv(registry, admin, "--service", "consumer", *upstreams)
    started = time.monotonic()
    proc = spawn(argv, workdir / f"consumer-{count}.log")
    url = f"http://127.0.0.1:{admin}"

    def tables_full() -> bool:
        text = client.get(f"{url}/metrics").text
        return len(re.findall(r'^sidecar_upstream_instances\{service="svc\d+"\} 1\.0$', text, re.M)) == count

    with httpx.Client(timeout=5, trust_env=False) as client:
        try:
            wait_for(lambda: client.get(f"{url}/ready").status_code == 200, READY_TIMEOUT_S, "/ready",
                     interval=POLL_S)  # fmt: skip
            ready = time.monotonic() - started
            wait_for(tables_full, READY_TIMEOUT_S - ready, "every table", interval=POLL_S)
            tables = time.monotonic() - started
        except TimeoutError as exc:
            stop_process(proc)
            raise RuntimeError(f"{count} upstreams: not ready within {READY_TIMEOUT_S:.0f} s") from exc
    return proc, ready, tables


def case(kind: str, count: int, workdir: Path) -> dict[str, Any]:
    from tests.support.consul_agent import ConsulAgent

    agent = None
    rows = [row for n in range(count) for row in instances(f"svc{n}", 1)]
    if kind == "consul":
        agent = ConsulAgent(workdir / f"consul-{count}")
        agent.start()
        with httpx.Client(base_url=f"http://127.0.0.1:{agent.http_port}", timeout=30) as client:
            consul_register(client, rows)
        registry = agent.url
    else:
        db = workdir / f"upstreams-{count}.db"
        write_sqlite(str(db), rows)
        registry = f"sqlite://{db}"
    try:
        proc, ready, tables = start(workdir, registry, count)
        try:
            before = cpu_seconds(proc.pid)
            time.sleep(IDLE_SECONDS)
            idle = (cpu_seconds(proc.pid) - before) / IDLE_SECONDS
            rss, fds = rss_mib(proc.pid), open_fds(proc.pid)
        finally:
            stop_process(proc)
    finally:
        if agent is not None:
            agent.stop()
    return {"registry": kind, "upstreams": count, "ready_s": round(ready, 2), "tables_s": round(tables, 2),
            "idle_cpu_percent": round(idle * 100, 1), "rss_mib": round(rss, 1), "fds": fds}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upstreams", type=int, default=100)
    parser.add_argument("--registry", choices=["sqlite", "consul", "both"], default="both")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    info = header(f"Many upstreams: 1 against {args.upstreams} on one consumer sidecar")
    rows = []
    columns = ("upstreams", 9), ("/ready", 7), ("all tables", 10), ("idle CPU", 8), ("RSS", 9), ("fds", 5)
    print(f"{'registry':8} " + " ".join(f"{name:>{width}}" for name, width in columns))
    kinds = ["sqlite", "consul"] if args.registry == "both" else [args.registry]
    with tempfile.TemporaryDirectory(prefix="upstreams-") as tmp:
        for kind in kinds:
            for count in (1, args.upstreams):
                row = case(kind, count, Path(tmp))
                rows.append(row)
                cpu, rss = f"{row['idle_cpu_percent']:.1f}%", f"{row['rss_mib']:.1f} MiB"
                print(f"{kind:8} {count:>9} {row['ready_s']:>6.2f}s {row['tables_s']:>9.2f}s "
                      f"{cpu:>8} {rss:>9} {row['fds']:>5}")  # fmt: skip
    end = [round(x, 2) for x in os.getloadavg()]
    print(f"load average at the end: {end}")
    if args.json:
        print(json.dumps({"machine": {**info, "loadavg_end": end}, "rows": rows}))


if __name__ == "__main__":
    run(main)
