"""What the sidecar's data path costs: one app, hit directly, through the sidecars, through nginx.

    make bench        (installs wrk and nginx from Debian's packages when missing, then runs this)
    .venv/bin/python bench/proxy_overhead.py [--seconds 10] [--quick] [--json FILE]

Four paths to the same demo app (sidecar/demo/app.py), all started by this run:
  direct     wrk -> app
  provider   wrk -> provider sidecar (--listen) -> app
  two-hop    wrk -> consumer sidecar (--upstream) -> provider sidecar -> app: the real path
  nginx      wrk -> nginx -> app (1 worker, upstream keepalive, HTTP/1.1; streaming both ways
             through 64 KiB buffers as the sidecar relays, instead of its default of spooling
             bodies to temp files: with 4-8 KiB unbuffered reads it moved about half as many MB/s)
The sidecars run as a user runs them (`python -m sidecar run ... --log-format json`, one SQLite
registry file in the run's temp dir), nginx with a config written there; every process is
stopped by pid when the run ends, Ctrl-C included.

Four cases, each run over every path in turn, `--seconds` each, wrk with 1 thread:
  small/32   GET /work?ms=0 (a trivial JSON answer), 32 connections
  small/1    the same, 1 connection: nothing queues, so this is the per-request cost alone
  get-1MiB   GET /bytes?n=1048576, 8 connections
  post-1MiB  POST of 1 MiB to /digest, 8 connections; the app reads it as it streams in (and
             hashes it: about 0.6 ms of the app's CPU per MiB here, the same on every path)

bench/wrk_report.lua prints wrk's own counts and percentiles in microseconds. MB/s = 10^6 bytes
of payload per second. For each proxy path, the proxy's processes (provider; consumer +
provider for two-hop; nginx's master + worker) are measured around every wrk run: CPU seconds
from /proc/<pid>/stat (utime + stime) per 1,000 requests, and memory from /proc/<pid>/status,
VmRSS after the run and VmHWM (peak since start). Istio's performance summary gives Envoy
0.35 vCPU and 40 MB per 1,000 requests/s, i.e. 0.35 CPU seconds per 1,000 requests.

wrk, the app and the proxies share the machine's cores: on 2 cores, ratios measured in one run
compare like with like; absolute figures move with whatever else runs (the header prints the
load average).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchcommon import cpu_seconds, header, run

from sidecar.demo import processes
from sidecar.demo.fleet import demo_app_argv, sidecar_argv
from sidecar.demo.ports import free_port
from sidecar.demo.processes import print_log_tails, stop_process, wait_http_ok

MIB = 1 << 20
WARMUP_SECONDS = 1
QUICK_SECONDS = 2
# Enough to keep every hop busy with 1 MiB bodies; 32 of them in flight would measure socket
# buffers and scheduling more than relaying.
BIG_CONNECTIONS = 8
WRK_TIMEOUT = "10s"  # wrk's default of 2 s counts a slow 1 MiB transfer on a loaded box as an error
ENVOY_CPU_S_PER_1K = 0.35
ENVOY_MB = 40
LUA = Path(__file__).with_name("wrk_report.lua")
PATHS = ("direct", "provider", "two-hop", "nginx")


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    target: str
    connections: int
    body_bytes: int = 0  # uploads
    payload_bytes: int = 0  # bytes per request counted for MB/s


CASES = (
    Case("small/32", "/work?ms=0", 32),
    Case("small/1", "/work?ms=0", 1),
    Case("get-1MiB", f"/bytes?n={MIB}", BIG_CONNECTIONS, payload_bytes=MIB),
    Case("post-1MiB", "/digest", BIG_CONNECTIONS, body_bytes=MIB, payload_bytes=MIB),
)


@dataclass(slots=True)
class Result:
    case: str
    path: str
    connections: int
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    mb_s: float | None = None
    ratio: float | None = None  # rps / direct rps, same case
    cpu_s_per_1k: float | None = None
    rss_mb: float | None = None
    hwm_mb: float | None = None


def wrk(url: str, connections: int, seconds: int, body_bytes: int = 0) -> dict[str, Any]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", WRK_TIMEOUT, "-s", str(LUA), url]
    env = {**os.environ, "WRK_BODY_BYTES": str(body_bytes)}
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("WRK-JSON "):
            report: dict[str, Any] = json.loads(line.removeprefix("WRK-JSON "))
            return report
    raise RuntimeError(f"wrk printed no report:\n{out.stdout}\n{out.stderr}")


def memory_mb(pids: list[int], key: str) -> float:
    """Sum of a /proc/<pid>/status field (VmRSS, VmHWM) over the processes, in MB (10^6)."""
    kib = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                kib += int(line.split()[1])
    return kib * 1024 / 1e6


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                if int(Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry))
    return found


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if not found:
        raise SystemExit("nginx not found: `make bench-tools` installs it (apt-get install nginx)")
    return found


def spawn(stack: contextlib.ExitStack, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a process that the stack stops by pid (SIGTERM, then SIGKILL) when the run ends."""
    proc = processes.spawn(argv, log)
    stack.callback(stop_process, proc)
    return proc


def start_nginx(
    stack: contextlib.ExitStack, prefix: Path, port: int, app_port: int
) -> subprocess.Popen[bytes]:
    """nginx in the foreground (no systemd), writing only under `prefix`; -e: even before it has
    read the config, errors go there, not to /var/log/nginx."""
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, port, app_port))
    argv = [nginx_binary(), "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True)
    if check.returncode:
        raise RuntimeError(f"nginx rejected its config {conf}:\n{check.stderr}")
    return spawn(stack, argv, prefix / "stderr.log")


def nginx_conf(prefix: Path, port: int, app_port: int) -> str:
    temp_paths = "".join(
        f"    {kind}_temp_path {prefix}/{kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""\
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
{temp_paths}    upstream app {{
        server 127.0.0.1:{app_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        client_max_body_size 2m;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_buffer_size 64k;
            proxy_buffers 4 64k;
            client_body_buffer_size 64k;
        }}
    }}
}}
"""


def measure(case: Case, path: str, url: str, pids: list[int], seconds: int) -> Result:
    before = sum(cpu_seconds(pid) for pid in pids)
    report = wrk(url + case.target, case.connections, seconds, case.body_bytes)
    cpu = sum(cpu_seconds(pid) for pid in pids) - before
    requests = report["requests"]
    duration = report["duration_us"] / 1e6
    result = Result(
        case=case.name,
        path=path,
        connections=case.connections,
        requests=requests,
        rps=requests / duration,
        p50_ms=report["p50_us"] / 1000,
        p99_ms=report["p99_us"] / 1000,
        errors=sum(report["errors"].values()),
    )
    if case.payload_bytes:
        result.mb_s = requests * case.payload_bytes / duration / 1e6
    if pids:
        result.cpu_s_per_1k = cpu / requests * 1000 if requests else None
        result.rss_mb = memory_mb(pids, "VmRSS")
        result.hwm_mb = memory_mb(pids, "VmHWM")
    return result


def print_table(results: list[Result]) -> None:
    direct = {r.case: r for r in results if r.path == "direct"}

    def extra(r: Result, field: str) -> float | None:
        return None if r.path == "direct" else getattr(r, field) - getattr(direct[r.case], field)

    columns: list[tuple[str, str, Callable[[Result], float | None]]] = [
        ("req/s", ".0f", lambda r: r.rps),
        ("ratio", ".0%", lambda r: r.ratio),
        ("p50 ms", ".2f", lambda r: r.p50_ms),
        ("p99 ms", ".2f", lambda r: r.p99_ms),
        ("+p50", "+.2f", lambda r: extra(r, "p50_ms")),
        ("+p99", "+.2f", lambda r: extra(r, "p99_ms")),
        ("MB/s", ".0f", lambda r: r.mb_s),
        ("err", "d", lambda r: r.errors),
        ("CPU s/1k", ".3f", lambda r: r.cpu_s_per_1k),
        ("RSS MB", ".1f", lambda r: r.rss_mb),
        ("HWM MB", ".1f", lambda r: r.hwm_mb),
    ]
    print(f"{'case':10} {'path':9}", *(f"{title:>8}" for title, _, _ in columns))
    for r in results:
        cells = ("-" if (v := get(r)) is None else format(v, spec) for _, spec, get in columns)
        print(f"{r.case:10} {r.path:9}", *(f"{cell:>8}" for cell in cells))


def aims(results: list[Result]) -> list[dict[str, Any]]:
    """The issue's aims, each with what this run measured."""
    get = {(r.case, r.path): r for r in results}

    def extra(case: str, path: str, field: str) -> float:
        value: float = getattr(get[case, path], field) - getattr(get[case, "direct"], field)
        return value

    def mb_ratio(case: str) -> float:
        return (get[case, "provider"].mb_s or 0) / (get[case, "direct"].mb_s or 1)

    small = get["small/32", "provider"]
    checks = [
        ("provider throughput >= 70% of direct, 32 conn", small.ratio or 0, ">=", 0.70, "{:.0%}"),
        ("provider p99 <= +1 ms, 32 conn", extra("small/32", "provider", "p99_ms"), "<=", 1.0, "{:+.2f} ms"),
        ("two-hop throughput >= 50% of direct, 32 conn", get["small/32", "two-hop"].ratio or 0, ">=", 0.50,
         "{:.0%}"),
        ("provider p50 <= +0.2 ms, 1 conn", extra("small/1", "provider", "p50_ms"), "<=", 0.2, "{:+.2f} ms"),
        ("provider 1 MiB responses >= 80% of direct MB/s", mb_ratio("get-1MiB"), ">=", 0.80, "{:.0%}"),
        ("provider 1 MiB uploads >= 80% of direct MB/s", mb_ratio("post-1MiB"), ">=", 0.80, "{:.0%}"),
        (f"provider CPU s per 1k requests <= Envoy's {ENVOY_CPU_S_PER_1K}, 32 conn", small.cpu_s_per_1k or 0,
         "<=", ENVOY_CPU_S_PER_1K, "{:.3f}"),
        (f"provider RSS MB <= Envoy's {ENVOY_MB}, 32 conn", small.rss_mb or 0, "<=", ENVOY_MB,
         "{:.1f}"),
    ]  # fmt: skip
    return [
        {
            "aim": aim,
            "measured": value,
            "bound": bound,
            "met": value >= bound if op == ">=" else value <= bound,
            "shown": spec.format(value),
        }
        for aim, value, op, bound, spec in checks
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="wrk duration per path and case")
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: {QUICK_SECONDS} s per path and case"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args()
    seconds = QUICK_SECONDS if args.quick else args.seconds
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: `make bench-tools` installs it (apt-get install wrk)")
    nginx_binary()

    machine = header("proxy overhead: direct, provider sidecar, consumer + provider sidecars, nginx")
    print(f"wrk: 1 thread, {seconds} s per path and case, after {WARMUP_SECONDS} s of warmup per path")
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        work = Path(tmp)
        app_port, listen_port, upstream_port, nginx_port = (free_port() for _ in range(4))
        spawn(stack, demo_app_argv(app_port, "demo"), work / "app.log")
        registry = f"sqlite://{work / 'registry.db'}"
        provider = spawn(stack, sidecar_argv(
            registry, free_port(), "--service", "bench",
            "--listen", f"127.0.0.1:{listen_port}", "--app", f"http://127.0.0.1:{app_port}",
        ), work / "provider.log")  # fmt: skip
        consumer = spawn(stack, sidecar_argv(
            registry, free_port(), "--service", "bench-consumer",
            "--upstream", f"bench=127.0.0.1:{upstream_port}",
        ), work / "consumer.log")  # fmt: skip
        nginx = start_nginx(stack, work / "nginx", nginx_port, app_port)
        paths = {
            "direct": (f"http://127.0.0.1:{app_port}", []),
            "provider": (f"http://127.0.0.1:{listen_port}", [provider.pid]),
            "two-hop": (f"http://127.0.0.1:{upstream_port}", [consumer.pid, provider.pid]),
            "nginx": (f"http://127.0.0.1:{nginx_port}", [nginx.pid]),
        }
        for url, _ in paths.values():  # two-hop answers 200 once the consumer knows the provider
            try:
                wait_http_ok(f"{url}/health")
            except TimeoutError:
                print_log_tails(work)
                raise
        paths["nginx"][1].extend(children(nginx.pid))  # the worker
        for url, _ in paths.values():
            wrk(url + CASES[0].target, CASES[0].connections, WARMUP_SECONDS)
        for case in CASES:
            for path in PATHS:
                url, pids = paths[path]
                results.append(measure(case, path, url, pids, seconds))

    direct = {r.case: r.rps for r in results if r.path == "direct"}
    for r in results:
        r.ratio = r.rps / direct[r.case] if direct[r.case] else None
    print_table(results)
    print("CPU s/1k, RSS, HWM: the proxy's processes (two-hop: consumer + provider sidecars; nginx: master")
    print(
        f"and worker). Envoy, in Istio's performance summary: {ENVOY_CPU_S_PER_1K} CPU s/1k, {ENVOY_MB} MB."
    )
    checked = aims(results)
    print("aims (against direct, same run):")
    for check in checked:
        verdict = "met" if check["met"] else "NOT met"
        print(f"  {check['aim']}: {check['shown']} -- {verdict}")
    if args.json:
        document = {
            "machine": machine,
            "seconds": seconds,
            "results": [asdict(r) for r in results],
            "aims": [{k: v for k, v in c.items() if k != "shown"} for c in checked],
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    run(main)
