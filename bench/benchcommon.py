"""What the benchmark scripts share: the header that says on what machine and when they ran,
their work dir and what a failed run prints, and signal handling that lets their `finally`
blocks stop every process they started. Processes themselves are the demo's tooling
(sidecar/demo/)."""

from __future__ import annotations

import datetime
import os
import platform
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from sidecar.demo.processes import print_log_tails


def header(title: str) -> dict[str, Any]:
    info = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "cores": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
    }
    print(f"{title} -- {info['date']}")
    print(f"machine: {info['cores']} cores, load average {info['loadavg']} at start, Python {info['python']}")
    return info


@contextmanager
def workdir(prefix: str, keep: str | None = None) -> Iterator[Path]:
    """Where the run's processes write their logs (and the SQLite registry): `keep` if given,
    kept afterwards; otherwise a temporary directory."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        path = Path(keep or tmp)
        path.mkdir(parents=True, exist_ok=True)
        yield path


@contextmanager
def logs_on_failure(workdir: Path, last: int | None = None) -> Iterator[None]:
    """A run that fails ends with status 1 after printing the end of its processes' logs (only
    the `last` ones by name, if given)."""
    try:
        yield
    except (RuntimeError, OSError, httpx.HTTPError) as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        print_log_tails(workdir, last=last)
        raise SystemExit(1) from exc


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    """Resident memory of a process, in MiB, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM and SIGINT end the run through the `finally` blocks, which stop every process it
    started (SIGINT is set explicitly: a shell may start a background job with SIGINT ignored)."""
    raise KeyboardInterrupt


def stop_on_signals() -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, interrupt)


def run(main: Callable[[], None]) -> None:
    """Run a benchmark's main; Ctrl-C or SIGTERM ends it with 130 after its cleanup ran."""
    stop_on_signals()
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted; the processes this run started were stopped", file=sys.stderr)
        sys.exit(130)
