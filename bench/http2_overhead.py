"""What HTTP/2 and gRPC cost through the sidecars, beside nghttpx (issue 21, "How fast").

    scripts/install-nghttp2.sh    (as root, once: h2load, nghttpd, nghttpx from Debian's packages)
    .venv/bin/python bench/http2_overhead.py [--seconds 10] [--quick] [--json FILE]

Everything speaks HTTP/2 with prior knowledge (h2c), is started by this run (the gRPC app as
`python -m tests.support.grpc_app` from the repository's root) and stopped by pid when the run
ends, Ctrl-C included. Two apps, each reached four ways:

  small file  nghttpd (the same as tests/support/nghttpd.py) serving index.html, 6 bytes:
    nghttpd     h2load -> nghttpd
    nghttpx     h2load -> nghttpx -> nghttpd (nghttp2's own proxy, C, 1 worker, h2c both sides:
                -f'HOST,PORT;no-tls' -b'HOST,PORT;;proto=h2' --workers=1, no config file)
    provider    h2load -> provider sidecar (--listen) -> nghttpd (--app h2c://...)
    two-hop     h2load -> consumer sidecar (--upstream) -> provider sidecar -> nghttpd
  gRPC unary  tests/support/grpc_app.py (grpcio, `/test.Echo/Unary`): direct, nghttpx, provider,
              two-hop as above; h2load POSTs one gRPC-framed message (5-byte prefix + 4 bytes)
              with `content-type: application/grpc` and `te: trailers`

The sidecars run as a user runs them (`python -m sidecar run --registry sqlite://... --log-format
json`, one SQLite registry file in the run's temp dir); the consumer has one upstream per app.

Two cases, each run over every path in turn, `--seconds` each after 1 s of warmup per path,
h2load with 1 thread: 32 x 1 (-c 32 -m 1: 32 connections, 1 stream in flight on each) and
32 x 10 (-m 10). Streams/s counts the 2xx answers. h2load prints no percentiles: p50/p99 come
from its --log-file (one line per request: start, status, microseconds to the end of the
response), over the 2xx answers. "p99 added" is against the app alone in the same case. For
each proxy path its processes (nghttpx's main and worker; the provider; consumer + provider for
two-hop) are measured around every run: CPU seconds per 1,000 streams (utime + stime from
/proc/<pid>/stat), VmRSS after the run and VmHWM (peak since start), in MB (10^6 bytes).

A gRPC answer is 200 whatever the call's fate (grpc-status comes in the trailers, which h2load
does not read), so every gRPC run is also checked: the app's own count of calls served (its
Control/Stats service), the provider sidecar's count of grpc-status values for the paths through
it (sidecar_grpc_requests_total), and a sample of 20 calls with grpcio's client
(tests/support/grpc_client.py) through the same path, each of which must come back echoed.

h2load, the apps and the proxies share the machine's cores: on 2 cores, ratios measured in one
run compare like with like (hence "of nghttpx", same run and case); absolute figures move with
whatever else runs (the header prints the load average).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import re
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from benchcommon import cpu_seconds, header, logs_on_failure, run, workdir
from prometheus_client.parser import text_string_to_metric_families
from proxy_overhead import children, memory_mb, spawn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support: nghttpd, the gRPC app

from sidecar.demo.fleet import sidecar_argv
from sidecar.demo.ports import free_port
from sidecar.demo.processes import wait_for
from tests.support.grpc_app import grpc_app
from tests.support.grpc_client import channel, stats, unary
from tests.support.nghttpd import Nghttpd

H2LOAD = "/usr/bin/h2load"
NGHTTPX = "/usr/sbin/nghttpx"
INSTALL_HINT = "scripts/install-nghttp2.sh installs it (as root; `make tools` runs it)"
WARMUP_SECONDS = 1
QUICK_SECONDS = 2
CONNECTIONS = 32
CASES = (("32x1", 1), ("32x10", 10))  # streams in flight per connection
FILE_PATHS = ("nghttpd", "nghttpx", "provider", "two-hop")
GRPC_PATHS = ("direct", "nghttpx", "provider", "two-hop")
SMALL_FILE = "/index.html"  # "hello\n", written by Nghttpd
GRPC_METHOD = "/test.Echo/Unary"
GRPC_PAYLOAD = b"ping"
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
SAMPLE_CALLS = 20
SETTLE_TIMEOUT = 30.0  # for the calls in flight when h2load stops; seconds at most, even queued
SETTLE_SECONDS = 0.2  # then for the provider sidecar to count the last of them
# The issue's aims: through the provider at least nghttpx's streams/s, through both sidecars at
# least half of that, at most 2 ms added at p99 (32 x 1), gRPC through both sidecars at least
# half of direct calls/s.
AIM_PROVIDER_OF_NGHTTPX = 1.0
AIM_TWO_HOP_OF_NGHTTPX = 0.5
AIM_P99_ADDED_MS = 2.0
AIM_GRPC_OF_DIRECT = 0.5


@dataclass(slots=True)
class Result:
    app: str  # "file" or "grpc"
    case: str
    path: str
    connections: int
    streams_per_connection: int
    seconds: float
    answers: int  # 2xx
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int  # failed, errored, timed out or not 2xx
    of_nghttpx: float | None = None
    of_direct: float | None = None  # the app alone (nghttpd, or the gRPC app)
    p99_added_ms: float | None = None
    cpu_s_per_1k: float | None = None
    rss_mb: float | None = None
    hwm_mb: float | None = None
    checks: dict[str, Any] = field(default_factory=dict)  # gRPC: how the calls ended


@dataclass(slots=True)
class Way:
    """One way to an app: where h2load sends, the proxy's processes, how to check gRPC calls."""

    url: str
    pids: list[int]
    target: str  # host:port, for grpcio's client
    provider_admin: str | None = None  # the sidecar whose grpc-status counts are read


def tool(binary: str) -> str:
    if not os.access(binary, os.X_OK):
        raise SystemExit(f"{binary} not found: {INSTALL_HINT}")
    return binary


def h2load_argv(
    url: str, app: str, connections: int, streams: int, seconds: float | None, data: Path
) -> list[str]:
    argv = [H2LOAD, "-c", str(connections), "-m", str(streams)]
    if seconds is not None:
        argv += ["-D", f"{seconds:g}"]
    else:
        argv += ["-n", str(connections)]
    if app == "grpc":
        argv += ["-d", str(data)]
        for field_line in GRPC_HEADERS:
            argv += ["-H", field_line]
    return [*argv, url]


def parse_h2load(out: str) -> dict[str, float]:
    """h2load's summary: duration, 2xx answers, errors (streams failed, errored or timed out,
    answers other than 2xx)."""
    finished = re.search(r"finished in ([\d.]+)(us|ms|s)", out)
    requests = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
        r"(\d+) errored, (\d+) timeout",
        out,
    )
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if not (finished and requests and codes):
        raise RuntimeError(f"h2load printed no summary:\n{out[-3000:]}")
    seconds = float(finished[1]) / {"us": 1e6, "ms": 1e3, "s": 1}[finished[2]]
    failed, errored, timeout = (int(requests[i]) for i in (5, 6, 7))
    not_2xx = sum(int(codes[i]) for i in (2, 3, 4))
    return {"seconds": seconds, "answers": int(codes[1]), "errors": failed + errored + timeout + not_2xx}


def latencies(log: Path) -> tuple[float | None, float | None]:
    """p50 and p99 in ms (nearest rank) over the 2xx lines of h2load's --log-file: start time
    (us since the epoch), status, us to the end of the response. A histogram by microsecond keeps
    millions of lines in little memory."""
    histogram: Counter[int] = Counter()
    with open(log) as lines:
        for line in lines:
            columns = line.split("\t")
            if len(columns) >= 3 and columns[1].startswith("2"):
                histogram[int(columns[2])] += 1
    total = sum(histogram.values())
    if not total:
        return None, None

    def rank(fraction: float) -> float:
        wanted, seen = max(1, math.ceil(total * fraction)), 0
        for micros in sorted(histogram):
            seen += histogram[micros]
            if seen >= wanted:
                return micros / 1000
        raise AssertionError("unreachable")

    return rank(0.50), rank(0.99)


def h2load(
    url: str, app: str, streams: int, seconds: float, data: Path, log: Path | None = None
) -> dict[str, float]:
    argv = h2load_argv(url, app, CONNECTIONS, streams, seconds, data)
    if log is not None:
        argv[1:1] = ["--log-file", str(log)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    if out.returncode:
        raise RuntimeError(f"{' '.join(argv)} exited with {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return parse_h2load(out.stdout)


def answers_one(url: str, app: str, data: Path) -> bool:
    """Whether one request by h2load gets a 2xx answer (a path is up end to end)."""
    argv = h2load_argv(url, app, 1, 1, None, data)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and re.search(r"status codes: 1 2xx", out.stdout) is not None


def start_nghttpx(stack: contextlib.ExitStack, work: Path, name: str, app_port: int) -> tuple[int, list[int]]:
    """nghttpx with one worker in front of 127.0.0.1:`app_port`, h2c on both sides, reading no
    config file (--conf=/dev/null: not the package's /etc/nghttpx/nghttpx.conf); its error log
    goes to stderr, i.e. its log file, and it keeps no access log. Returns its port and pid."""
    port = free_port()
    argv = [
        tool(NGHTTPX), "--conf=/dev/null", f"--frontend=127.0.0.1,{port};no-tls",
        f"--backend=127.0.0.1,{app_port};;proto=h2", "--workers=1",
    ]  # fmt: skip
    return port, [spawn(stack, argv, work / f"{name}.log").pid]


def grpc_message(payload: bytes) -> bytes:
    """A gRPC length-prefixed message: not compressed, 4-byte big-endian length, the bytes."""
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def grpc_statuses(admin: str) -> Counter[str]:
    """The provider sidecar's count of gRPC calls answered, by grpc-status."""
    text = httpx.get(f"{admin}/metrics", timeout=5, trust_env=False).text
    counts: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sidecar_grpc_requests_total":
                counts[sample.labels["grpc_status"]] += int(sample.value)
    return counts


def grpc_sample(target: str) -> int:
    """How many of SAMPLE_CALLS unary calls with grpcio's client, on one channel, come back
    from the app with their payload echoed."""
    good = 0
    with channel(target) as chan:
        for i in range(SAMPLE_CALLS):
            payload = GRPC_PAYLOAD + str(i).encode()
            with contextlib.suppress(Exception):  # grpc.RpcError: a failed call, counted as such
                good += unary(chan, payload, timeout=5) == ("g1", payload)
    return good


def measure(
    app: str, case: str, streams: int, path: str, way: Way, seconds: int, work: Path, data: Path,
    app_stats: Callable[[], dict[str, Any]] | None,
) -> Result:  # fmt: skip
    log = work / f"h2load-{app}-{case}-{path}.tsv"
    grpc_before = grpc_statuses(way.provider_admin) if way.provider_admin and app == "grpc" else None
    app_before = app_stats() if app_stats else None
    cpu_before = sum(cpu_seconds(pid) for pid in way.pids)
    report = h2load(way.url, app, streams, seconds, data, log)
    cpu = sum(cpu_seconds(pid) for pid in way.pids) - cpu_before
    p50, p99 = latencies(log)
    log.unlink()  # millions of lines at 32 x 10
    answers = int(report["answers"])
    result = Result(
        app=app, case=case, path=path, connections=CONNECTIONS, streams_per_connection=streams,
        seconds=report["seconds"], answers=answers, rps=answers / report["seconds"], p50_ms=p50,
        p99_ms=p99, errors=int(report["errors"]),
    )  # fmt: skip
    if way.pids:
        result.cpu_s_per_1k = cpu / answers * 1000 if answers else None
        result.rss_mb = memory_mb(way.pids, "VmRSS")
        result.hwm_mb = memory_mb(way.pids, "VmHWM")
    if app_stats and app_before is not None:
        # h2load stops with streams in flight: let the app finish them and the provider count them
        wait_for(lambda: app_stats()["inflight"] == 0, SETTLE_TIMEOUT, "the gRPC app to finish its calls")
        time.sleep(SETTLE_SECONDS)
        after = app_stats()
        result.checks["app_served"] = after["served"] - app_before["served"]
        result.checks["app_cancelled"] = after["cancelled"] - app_before["cancelled"]
    if way.provider_admin and grpc_before is not None:  # the gRPC paths through a provider
        statuses = grpc_statuses(way.provider_admin)
        statuses.subtract(grpc_before)
        result.checks["provider_grpc_status"] = {k: v for k, v in sorted(statuses.items()) if v}
    if app == "grpc":
        result.checks["sample_ok"] = grpc_sample(way.target)
        result.checks["sample_of"] = SAMPLE_CALLS
    return result


def grpc_check_text(r: Result) -> str:
    if r.app != "grpc":
        return ""
    parts = [f"app served {r.checks.get('app_served', 0):,} ({r.checks.get('app_cancelled', 0)} cancelled)"]
    if "provider_grpc_status" in r.checks:
        statuses = r.checks["provider_grpc_status"]
        parts.append(
            "provider grpc-status " + (", ".join(f"{k}: {v:,}" for k, v in statuses.items()) or "none")
        )
    parts.append(f"sample {r.checks['sample_ok']}/{r.checks['sample_of']} ok")
    return "; ".join(parts)


def grpc_calls_ok(r: Result) -> bool:
    """The run's calls succeeded: every sample call echoed, the app served at least as many
    calls as h2load counted answers, and, where a provider sidecar saw them, at least as many
    grpc-status 0 and no other status but CANCELLED (1: streams h2load cut off at its end)."""
    statuses = r.checks.get("provider_grpc_status")
    through_provider = statuses is None or (
        statuses.get("0", 0) >= r.answers and not set(statuses) - {"0", "1"}
    )
    return (
        r.checks["sample_ok"] == r.checks["sample_of"]
        and r.checks["app_served"] >= r.answers
        and through_provider
    )


def fill_ratios(results: list[Result]) -> None:
    get = {(r.app, r.case, r.path): r for r in results}
    for r in results:
        nghttpx = get.get((r.app, r.case, "nghttpx"))
        alone = get.get((r.app, r.case, "nghttpd" if r.app == "file" else "direct"))
        if r.path != "nghttpx" and nghttpx and nghttpx.rps:
            r.of_nghttpx = r.rps / nghttpx.rps
        if alone and alone is not r:
            r.of_direct = r.rps / alone.rps if alone.rps else None
            if r.p99_ms is not None and alone.p99_ms is not None:
                r.p99_added_ms = r.p99_ms - alone.p99_ms


def aims(results: list[Result]) -> list[dict[str, Any]]:
    """The issue's aims, each with what this run measured."""
    get = {(r.app, r.case, r.path): r for r in results}
    checks: list[tuple[str, float, str, float, str]] = []
    for case, _ in CASES:
        checks.append(
            (
                f"provider streams/s >= nghttpx's, {case}",
                get["file", case, "provider"].of_nghttpx or 0,
                ">=",
                AIM_PROVIDER_OF_NGHTTPX,
                "{:.1%}",
            )
        )
        checks.append(
            (
                f"two-hop streams/s >= half nghttpx's, {case}",
                get["file", case, "two-hop"].of_nghttpx or 0,
                ">=",
                AIM_TWO_HOP_OF_NGHTTPX,
                "{:.1%}",
            )
        )
    added = get["file", "32x1", "provider"].p99_added_ms
    checks.append(
        (
            "provider p99 added <= 2 ms, 32x1",
            added if added is not None else float("inf"),
            "<=",
            AIM_P99_ADDED_MS,
            "{:+.2f} ms",
        )
    )
    for case, _ in CASES:
        checks.append(
            (
                f"gRPC unary two-hop calls/s >= half of direct, {case}",
                get["grpc", case, "two-hop"].of_direct or 0,
                ">=",
                AIM_GRPC_OF_DIRECT,
                "{:.1%}",
            )
        )
    return [
        {
            "aim": aim,
            "measured": value,
            "bound": bound,
            "met": value >= bound if op == ">=" else value <= bound,
            "shown": spec.format(value),
        }
        for aim, value, op, bound, spec in checks
    ]  # fmt: skip


def cell(value: float | int | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown(results: list[Result], checked: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    lines = [
        f"Run of {machine['date']}, load average {machine['loadavg'][0]} at start, "
        f"{machine['load_end'][0]} at end; h2load, {CONNECTIONS} connections, "
        f"{machine['seconds']} s per path and case.",
        "",
        "| app | case | path | streams/s | of nghttpx | of app alone | p50 / p99 ms | p99 added | errors "
        "| CPU s per 1k streams | RSS / HWM MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        latency = f"{cell(r.p50_ms, '.2f')} / {cell(r.p99_ms, '.2f')}" if r.p99_ms is not None else "-"
        memory = f"{r.rss_mb:.1f} / {r.hwm_mb:.1f}" if r.rss_mb is not None and r.hwm_mb is not None else ""
        app = "small file" if r.app == "file" else "gRPC unary"
        lines.append(
            f"| {app} | {r.case} | {r.path} | {r.rps:,.0f} | {cell(r.of_nghttpx, '.1%')} "
            f"| {cell(r.of_direct, '.1%')} | {latency} | {cell(r.p99_added_ms, '+.2f')} | {r.errors:,} "
            f"| {cell(r.cpu_s_per_1k, '.3f')} | {memory} |"
        )
    lines += ["", "gRPC calls checked (grpc-status is in the trailers, which h2load does not read):", ""]
    lines += [
        f"- {r.case} {r.path}: {grpc_check_text(r)} -- {'ok' if grpc_calls_ok(r) else 'FAILED CALLS'}"
        for r in results
        if r.app == "grpc"
    ]
    lines += ["", "Aims (same run):", ""]
    lines += [f"- {c['aim']}: {c['shown']} -- {'met' if c['met'] else '**not met**'}" for c in checked]
    return "\n".join(lines)


def progress(r: Result) -> None:
    latency = f"p50 {r.p50_ms:.2f} ms p99 {r.p99_ms:.2f} ms" if r.p99_ms is not None else "no answers"
    cpu = f", {r.cpu_s_per_1k:.3f} CPU s/1k" if r.cpu_s_per_1k is not None else ""
    print(
        f"  {r.app:5} {r.case:6} {r.path:9} {r.rps:>10,.0f}/s  {latency}, {r.errors} errors{cpu}", flush=True
    )


def start_all(stack: contextlib.ExitStack, work: Path, data: Path) -> dict[str, dict[str, Way]]:
    """Both apps, nghttpx in front of each, a provider sidecar in front of each and one consumer
    sidecar with an upstream to each service; returns the ways to each app by name, all up."""
    nghttpd = stack.enter_context(Nghttpd(work / "nghttpd"))
    try:
        grpc = stack.enter_context(grpc_app(work, "g1"))
    except AssertionError as exc:  # it exited before it served
        raise RuntimeError(str(exc)) from None
    registry = f"sqlite://{work / 'registry.db'}"
    x_file, x_file_pids = start_nghttpx(stack, work, "nghttpx-file", nghttpd.port)
    x_grpc, x_grpc_pids = start_nghttpx(stack, work, "nghttpx-grpc", grpc.port)
    admin = {name: free_port() for name in ("file", "grpc", "consumer")}
    listen = {name: free_port() for name in ("file", "grpc")}
    upstream = {name: free_port() for name in ("file", "grpc")}
    providers = {
        "file": spawn(stack, sidecar_argv(
            registry, admin["file"], "--service", "bench-file", "--listen", f"127.0.0.1:{listen['file']}",
            "--app", nghttpd.url, "--app-health", SMALL_FILE,
        ), work / "provider-file.log"),
        "grpc": spawn(stack, sidecar_argv(
            registry, admin["grpc"], "--service", "bench-grpc", "--listen", f"127.0.0.1:{listen['grpc']}",
            "--app", grpc.url, "--app-health", "grpc",
        ), work / "provider-grpc.log"),
    }  # fmt: skip
    consumer = spawn(stack, sidecar_argv(
        registry, admin["consumer"], "--service", "bench-consumer",
        "--upstream", f"bench-file=127.0.0.1:{upstream['file']}",
        "--upstream", f"bench-grpc=127.0.0.1:{upstream['grpc']}",
    ), work / "consumer.log")  # fmt: skip

    def way(port: int, pids: list[int], provider: str | None = None) -> Way:
        admin_url = f"http://127.0.0.1:{admin[provider]}" if provider else None
        return Way(f"http://127.0.0.1:{port}", pids, f"127.0.0.1:{port}", admin_url)

    ways = {
        "file": {
            "nghttpd": way(nghttpd.port, []),
            "nghttpx": way(x_file, x_file_pids),
            "provider": way(listen["file"], [providers["file"].pid], "file"),
            "two-hop": way(upstream["file"], [consumer.pid, providers["file"].pid], "file"),
        },
        "grpc": {
            "direct": way(grpc.port, []),
            "nghttpx": way(x_grpc, x_grpc_pids),
            "provider": way(listen["grpc"], [providers["grpc"].pid], "grpc"),
            "two-hop": way(upstream["grpc"], [consumer.pid, providers["grpc"].pid], "grpc"),
        },
    }
    for app, by_path in ways.items():  # two-hop answers once the consumer knows the provider
        suffix = SMALL_FILE if app == "file" else GRPC_METHOD
        for path, w in by_path.items():
            w.url += suffix
            wait_for(functools.partial(answers_one, w.url, app, data), what=f"{app} {path} to answer 2xx")
    for pids in (x_file_pids, x_grpc_pids):  # nghttpx's worker process, up by now
        pids.extend(children(pids[0]))
    return ways


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10, help="h2load duration per path and case")
    parser.add_argument(
        "--quick", action="store_true", help=f"smoke run: {QUICK_SECONDS} s per path and case"
    )
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    args = parser.parse_args()
    seconds = QUICK_SECONDS if args.quick else args.seconds
    for binary in (H2LOAD, NGHTTPX):
        tool(binary)

    machine = header("HTTP/2 and gRPC overhead: nghttpd / gRPC app alone, nghttpx, provider, both sidecars")
    machine["seconds"] = seconds
    print(
        f"h2load: 1 thread, {CONNECTIONS} connections, {seconds} s per path and case, "
        f"after {WARMUP_SECONDS} s of warmup per path"
    )
    results: list[Result] = []
    with workdir("http2-overhead-") as work, logs_on_failure(work), contextlib.ExitStack() as stack:
        data = work / "grpc-message.bin"
        data.write_bytes(grpc_message(GRPC_PAYLOAD))
        ways = start_all(stack, work, data)
        grpc_target = ways["grpc"]["direct"].target

        def app_stats() -> dict[str, Any]:
            return stats(grpc_target)

        for app, by_path in ways.items():
            for w in by_path.values():
                h2load(w.url, app, CASES[1][1], WARMUP_SECONDS, data)
        for app, paths in (("file", FILE_PATHS), ("grpc", GRPC_PATHS)):
            for case, streams in CASES:
                for path in paths:
                    counts = app_stats if app == "grpc" else None
                    result = measure(app, case, streams, path, ways[app][path], seconds, work, data, counts)
                    progress(result)
                    results.append(result)

    machine["load_end"] = [round(x, 2) for x in os.getloadavg()]
    fill_ratios(results)
    checked = aims(results)
    print()
    print(markdown(results, checked, machine))
    if args.json:
        document = {
            "machine": machine,
            "seconds": seconds,
            "results": [asdict(r) for r in results],
            "aims": [{k: v for k, v in c.items() if k != "shown"} for c in checked],
            "grpc_calls_ok": all(grpc_calls_ok(r) for r in results if r.app == "grpc"),
        }
        Path(args.json).write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    run(main)
