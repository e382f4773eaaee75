"""What one proxied request costs the provider sidecar, in instructions: a figure the load of a
shared machine does not move, for comparing two versions of the data path.

    .venv/bin/python bench/request_instructions.py [--python PY] [--requests 500 2500]

The provider sidecar (`PY -m sidecar run`: this venv's Python unless `--python` names another,
so another checkout's venv measures that checkout) runs under valgrind's callgrind in front of
the demo app. One keep-alive connection sends `GET /work?ms=0` with three headers, one request
after the other, N times, for two values of N; callgrind counts every instruction the process
ran. The difference of the two totals over the difference of the two N is one request's cost:
start-up, shutdown and the work they share cancel out. What runs by the wall clock beside the
requests does not cancel, so there is as little as can be: no app health check (`--app-health
''`: its poll every 2 s, slow under callgrind, moved the figure by several percent with the
machine's load), the SQLite registry's beats and the lifecycle's resync remain.

valgrind comes from Debian's packages (`make bench-tools`). Under callgrind the sidecar runs
about 50 times slower: a run takes a few minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from benchcommon import header, run

from sidecar.demo.fleet import demo_app_argv
from sidecar.demo.ports import free_port
from sidecar.demo.processes import print_log_tails, spawn, stop_process, wait_http_ok

REQUEST = b"GET /work?ms=0 HTTP/1.1\r\nHost: bench.test\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"
# Start-up under callgrind takes tens of seconds; this bounds it (and every other wait).
VALGRIND_DEADLINE_SECONDS = 600.0
READ_SECONDS = 60.0


def measure(python: str, requests: int, work: Path) -> int:
    """Instructions the provider sidecar ran in all, serving `requests` requests."""
    out = work / f"callgrind-{requests}.out"
    log = work / f"sidecar-{requests}.log"
    app_port, listen_port, admin_port = free_port(), free_port(), free_port()
    with contextlib.ExitStack() as stack:
        app = spawn(demo_app_argv(app_port, "app"), work / f"app-{requests}.log")
        stack.callback(stop_process, app)
        argv = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            python, "-m", "sidecar", "run", "--service", "bench", "--log-format", "json",
            "--registry", f"sqlite://{work / f'registry-{requests}.db'}",
            "--admin", f"127.0.0.1:{admin_port}",
            "--listen", f"127.0.0.1:{listen_port}", "--app", f"http://127.0.0.1:{app_port}",
            "--app-health", "",  # its polls (one each 2 s) would count by the wall clock
        ]  # fmt: skip
        sidecar = spawn(argv, log)
        wait_http_ok(f"http://127.0.0.1:{admin_port}/ready", VALGRIND_DEADLINE_SECONDS)
        with socket.create_connection(("127.0.0.1", listen_port), timeout=READ_SECONDS) as conn:
            pending = b""
            for _ in range(requests):
                conn.sendall(REQUEST)
                pending = read_response(conn, pending)
        stop_process(sidecar, grace=VALGRIND_DEADLINE_SECONDS)
    total = re.search(r"Collected : (\d+)", log.read_text())
    if total is None:
        raise RuntimeError(f"callgrind printed no total (see {log})")
    return int(total.group(1))


def read_response(conn: socket.socket, pending: bytes) -> bytes:
    """Reads one response framed by Content-Length (the demo app's); returns what came after it."""
    while True:
        end = pending.find(b"\r\n\r\n")
        if end >= 0:
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", pending[:end])
            if length is None or not pending.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(f"unexpected response: {pending[:200]!r}")
            size = end + 4 + int(length.group(1))
            if len(pending) >= size:
                return pending[size:]
        data = conn.recv(65536)
        if not data:
            raise RuntimeError("the sidecar closed the connection")
        pending += data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--python", default=sys.executable, help="the Python whose sidecar to measure")
    parser.add_argument(
        "--requests", type=int, nargs=2, default=(500, 2500), metavar="N", help="the two request counts"
    )
    args = parser.parse_args()
    fewer, more = sorted(args.requests)
    if fewer == more:
        raise SystemExit("--requests needs two different counts")
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind not found: `make bench-tools` installs it (apt-get install valgrind)")
    header("instructions per request through the provider sidecar, under callgrind")
    print(f"sidecar: {args.python} -m sidecar; requests: {fewer} and {more} on one connection")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            totals = [measure(args.python, count, work) for count in (fewer, more)]
        except (RuntimeError, OSError, TimeoutError, subprocess.SubprocessError):
            print_log_tails(work)
            raise
    per_request = (totals[1] - totals[0]) / (more - fewer)
    print(f"instructions in all: {totals[0]:,} ({fewer} requests), {totals[1]:,} ({more} requests)")
    print(f"per request: {per_request:,.0f}")


if __name__ == "__main__":
    run(main)
