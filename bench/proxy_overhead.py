"""What the inbound proxy costs: a trivial app hit directly, then through the sidecar.

    make bench        (installs wrk from Debian's packages if missing, then runs this)

wrk (C, event-driven) generates the load so that the load generator takes as little of the
machine's CPU as possible; both runs happen in the same invocation, one after the other, so the
ratios compare like with like on a shared, noisy machine. Prints requests/s, p50 and p99 for
both runs and the ratios; `--json` prints them as JSON too.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from sidecar.fleet import free_port, wait_http_ok

CONCURRENCY = 32
DURATION_S = 10
UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * UNITS[match.group(2)]


def wrk(url: str, duration: int, concurrency: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", f"-t{min(2, concurrency)}", f"-c{concurrency}", f"-d{duration}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = to_ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = to_ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "non_2xx": float(errors.group(1)) if errors else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=DURATION_S)
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: `make bench` installs it (apt-get install wrk)")

    app_port, listen_port, admin_port = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        app = subprocess.Popen(
            [sys.executable, "-m", "sidecar.demo_app", "--port", str(app_port)], stdout=subprocess.DEVNULL
        )
        car = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "run", "--service", "bench", "--log-format", "json",
             "--listen", f"127.0.0.1:{listen_port}", "--app", f"http://127.0.0.1:{app_port}",
             "--admin", f"127.0.0.1:{admin_port}", "--registry", f"sqlite://{Path(tmp) / 'r.db'}"],
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_http_ok(f"http://127.0.0.1:{admin_port}/ready")
            path = "/work?ms=0"
            wrk(f"http://127.0.0.1:{app_port}{path}", 2, args.concurrency)  # warm both up
            wrk(f"http://127.0.0.1:{listen_port}{path}", 2, args.concurrency)
            direct = wrk(f"http://127.0.0.1:{app_port}{path}", args.duration, args.concurrency)
            proxied = wrk(f"http://127.0.0.1:{listen_port}{path}", args.duration, args.concurrency)
        finally:
            for proc in (car, app):
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)

    ratio = proxied["rps"] / direct["rps"]
    overhead_p99 = proxied["p99_ms"] - direct["p99_ms"]
    print(
        f"concurrency {args.concurrency}, {args.duration} s each, wrk with {min(2, args.concurrency)} threads"
    )
    print(f"{'':10} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8}")
    for name, run in (("direct", direct), ("proxied", proxied)):
        print(f"{name:10} {run['rps']:>10.0f} {run['p50_ms']:>8.2f} {run['p99_ms']:>8.2f}")
    print(f"throughput through the proxy: {ratio:.0%} of direct (aim >= 50%)")
    overhead_p50 = proxied["p50_ms"] - direct["p50_ms"]
    print(f"p99 overhead: {overhead_p99:+.2f} ms (aim <= 2 ms); p50 overhead {overhead_p50:+.2f} ms")
    if args.json:
        print(
            json.dumps(
                {"direct": direct, "proxied": proxied, "rps_ratio": ratio, "p99_overhead_ms": overhead_p99}
            )
        )


if __name__ == "__main__":
    main()
