"""What the benchmark scripts share: the header that says on what machine and when they ran,
and signal handling that lets their `finally` blocks stop every process they started."""

from __future__ import annotations

import datetime
import os
import platform
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any


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
