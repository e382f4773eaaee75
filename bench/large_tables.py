"""A consumer sidecar watching a service of 10,000 instances, against 10: picks per second, how
long a registry change takes to reach its table, memory and idle CPU.

    .venv/bin/python bench/large_tables.py [--instances 10000] [--registry sqlite|consul|both] [--json]

- picks: `InstanceTable.choose` in this process, nothing in flight, no warmup, for 10 and for N
  instances; then the same with one instance warming (its weight changes with time, so the
  weights picks draw from are rebuilt every WEIGHTS_REFRESH_MS). The aim: the rate at N no worse
  than half the rate at 10 (picking must not scan the table).
- registry: the service's N instances are written straight into the registry (SQLite rows with
  a far expiry; Consul services without checks, through the agent API), as N provider sidecars
  would publish them but without N processes beating; one real consumer sidecar with
  `--upstream big=...` then watches it. Measured: time from the sidecar's start to a table of N
  (`sidecar_upstream_instances` in /metrics), then for five changes (one instance added, one
  removed) the time from the registry write's return to the table showing it, the sidecar's RSS,
  and its CPU over 10 s of idling with the table loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from benchcommon import cpu_seconds, header, rss_mib, run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support, for Consul

from registry_adapters import Instance, open_registry
from sidecar.consumer.instances import InstanceTable
from sidecar.demo.fleet import Fleet
from sidecar.demo.processes import stop_process, wait_for
from sidecar.protocol import metadata as meta

PICK_SECONDS = 0.5
PICK_ROUNDS = 6  # alternating sizes, best of each: a shared machine disturbs some rounds
CHANGES = 5
IDLE_SECONDS = 10.0
TABLE_TIMEOUT_S = 300.0
FAR_FUTURE = 4e9  # an expiry no heartbeat has to renew


def instances(service: str, count: int, warming: int = 0) -> list[Instance]:
    now_ms = int(time.time() * 1000)
    found = []
    for n in range(count):
        fields = {meta.META_WEIGHT: "100", meta.META_START_MS: str(now_ms - 3_600_000)}
        if n < warming:
            fields |= {meta.META_WARMUP_S: "3600", meta.META_START_MS: str(now_ms)}
        found.append(Instance(service, f"{service}-{n}", "127.0.0.1", 20000 + n % 10000, 100, fields))
    return found


def picks_per_second(count: int, warming: int = 0) -> float:
    table = InstanceTable("big")
    table.update(instances("big", count, warming))
    rng = random.Random(1)
    tried: set[str] = set()
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < PICK_SECONDS:
        for _ in range(1000):
            table.choose(tried, rng)
        done += 1000
    return done / elapsed


def write_sqlite(path: str, rows: list[Instance]) -> None:
    import sqlite3

    # The adapter creates the schema; then the rows go in as one transaction.
    asyncio.run(_touch_sqlite(f"sqlite://{path}"))
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT OR REPLACE INTO instances VALUES (?, ?, ?, ?, ?, ?, 0, ?)",
            [(i.instance_id, i.service, i.host, i.port, i.weight, json.dumps(dict(i.meta)), FAR_FUTURE)
             for i in rows],
        )  # fmt: skip


async def _touch_sqlite(url: str) -> None:
    async with open_registry(url) as registry:
        await registry.deregister("nothing")


def delete_sqlite(path: str, instance_id: str) -> None:
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM instances WHERE instance_id = ?", (instance_id,))


def consul_register(client: httpx.Client, rows: list[Instance]) -> None:
    for i in rows:
        body = {"ID": i.instance_id, "Name": i.service, "Address": i.host, "Port": i.port,
                "Meta": dict(i.meta), "Weights": {"Passing": i.weight, "Warning": 1}}  # fmt: skip
        client.put("/v1/agent/service/register", json=body).raise_for_status()


def table_size(client: httpx.Client, admin: str) -> int:
    text = client.get(f"{admin}/metrics").text
    found = re.search(r'^sidecar_upstream_instances\{service="big"\} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else -1


def wait_size(client: httpx.Client, admin: str, size: int) -> float:
    """Seconds until the consumer's table holds `size` instances, to 5 ms."""
    started = time.monotonic()
    wait_for(lambda: table_size(client, admin) == size, TABLE_TIMEOUT_S, f"a table of {size}", interval=0.005)
    return time.monotonic() - started


def registry_case(kind: str, count: int, workdir: Path) -> dict[str, Any]:
    from tests.support.consul_agent import ConsulAgent

    agent: ConsulAgent | None = None
    rows = instances("big", count)
    db = str(workdir / f"{kind}-{count}.db")
    if kind == "consul":
        agent = ConsulAgent(workdir / f"consul-{count}")
        agent.start()
        url = agent.url
    else:
        url = f"sqlite://{db}"
    try:
        started = time.monotonic()
        if agent is not None:
            with httpx.Client(base_url=f"http://127.0.0.1:{agent.http_port}", timeout=30) as client:
                consul_register(client, rows)
        else:
            write_sqlite(db, rows)
        written = time.monotonic() - started
        with Fleet(workdir, url, service="big") as fleet, httpx.Client(timeout=30, trust_env=False) as client:
            started = time.monotonic()
            consumer = fleet.start_consumer()
            admin = consumer.admin
            wait_size(client, admin, count)
            loaded = time.monotonic() - started
            changes = []
            for n in range(CHANGES):
                extra = Instance(
                    "big", f"extra-{n}-{uuid.uuid4().hex[:6]}", "127.0.0.1", 19999, 100, rows[0].meta
                )
                if agent is not None:
                    with httpx.Client(base_url=f"http://127.0.0.1:{agent.http_port}", timeout=30) as api:
                        consul_register(api, [extra])
                        changes.append(wait_size(client, admin, count + 1))
                        api.put(f"/v1/agent/service/deregister/{extra.instance_id}").raise_for_status()
                        changes.append(wait_size(client, admin, count))
                else:
                    write_sqlite(db, [extra])
                    changes.append(wait_size(client, admin, count + 1))
                    delete_sqlite(db, extra.instance_id)
                    changes.append(wait_size(client, admin, count))
            pid = consumer.sidecar.pid
            cpu_before = cpu_seconds(pid)
            time.sleep(IDLE_SECONDS)
            idle_cpu = (cpu_seconds(pid) - cpu_before) / IDLE_SECONDS
            rss = rss_mib(pid)
            stop_process(consumer.sidecar)
    finally:
        if agent is not None:
            agent.stop()
    return {
        "registry": kind,
        "instances": count,
        "write_s": round(written, 2),
        "table_loaded_s": round(loaded, 2),
        "change_median_ms": round(statistics.median(changes) * 1000, 1),
        "change_max_ms": round(max(changes) * 1000, 1),
        "rss_mib": round(rss, 1),
        "idle_cpu_percent": round(idle_cpu * 100, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--registry", choices=["sqlite", "consul", "both"], default="both")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    info = header(f"Large tables: 10 against {args.instances:,} instances")
    result: dict[str, Any] = {"machine": info, "picks": {}, "registries": []}
    for warming in (0, 1):
        rates: dict[int, list[float]] = {10: [], args.instances: []}
        for _ in range(PICK_ROUNDS):
            for count in rates:
                rates[count].append(picks_per_second(count, warming))
        small, large = max(rates[10]), max(rates[args.instances])
        label = "one warming" if warming else "none warming"
        result["picks"][label] = {"10": round(small), str(args.instances): round(large),
                                  "ratio": round(small / large, 2)}  # fmt: skip
        print(f"picks/s ({label}): 10 instances {small:,.0f}, {args.instances:,} instances {large:,.0f}, "
              f"ratio {small / large:.2f} (aim: <= 2)")  # fmt: skip
    kinds = ["sqlite", "consul"] if args.registry == "both" else [args.registry]
    print(f"{'registry':8} {'instances':>9} {'write':>7} {'table loaded':>12} {'change p50/max':>16} "
          f"{'RSS':>9} {'idle CPU':>8}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="large-tables-") as tmp:
        for kind in kinds:
            for count in (10, args.instances):
                row = registry_case(kind, count, Path(tmp))
                result["registries"].append(row)
                change = f"{row['change_median_ms']:.0f}/{row['change_max_ms']:.0f} ms"
                print(
                    f"{kind:8} {count:>9,} {row['write_s']:>6.1f}s {row['table_loaded_s']:>11.2f}s "
                    f"{change:>16} {row['rss_mib']:>6.1f} MiB {row['idle_cpu_percent']:>7.1f}%"
                )
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"load average at the end: {result['machine']['loadavg_end']}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    run(main)
