"""Other processes, seen from outside: start one with a log file, stop it by pid, wait until it
does something.

Stopping is SIGTERM, then SIGKILL after a grace. Waiting is a bounded loop on a condition: a
process we do not share memory with has no event to await, so its probe is polled, with a
deadline, and the first truthy answer returned. One copy for the demo, tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

# What a condition may raise while the other process is not up yet, or answers something else.
NOT_YET = (httpx.HTTPError, OSError, ValueError)
# A sidecar or demo app needs well under a second to start on an idle machine; a loaded CI
# machine takes ten times that, and more than this means it is not coming.
DEADLINE_SECONDS = 20.0
# Often enough that a wait ends within a few ms of its condition, rarely enough to cost nothing.
POLL_SECONDS = 0.05
# A drain ends within its quiet period, seconds; a process still there after this is hanging.
STOP_GRACE_SECONDS = 15.0


def spawn(argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
    """Start `argv` with stdout and stderr appended to `log` (a file, not a pipe: nobody reads a
    pipe, and a full one would block the process) and no stdin."""
    with open(log, "ab") as out:
        return subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop_process(
    proc: subprocess.Popen[bytes], signum: int = signal.SIGTERM, grace: float = STOP_GRACE_SECONDS
) -> int:
    """Send `signum` unless the process has exited, wait up to `grace`, then SIGKILL; returns the
    exit status."""
    return stop_processes([proc], [signum], grace)[0]


def stop_processes(
    procs: Sequence[subprocess.Popen[bytes]],
    signals: Sequence[int] | None = None,
    grace: float = STOP_GRACE_SECONDS,
) -> list[int]:
    """Signal every live process at once (SIGTERM unless `signals` gives one each), then wait for
    them all; SIGKILL whatever is still there when the grace ends. Returns the exit statuses."""
    for proc, signum in zip(procs, signals or [signal.SIGTERM] * len(procs), strict=True):
        if proc.poll() is None:
            proc.send_signal(signum)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
    return [proc.wait() for proc in procs]


def _check(condition: Callable[[], Any]) -> Any:
    try:
        return condition()
    except NOT_YET:
        return None


def wait_for(
    condition: Callable[[], Any],
    timeout: float = DEADLINE_SECONDS,
    what: str = "condition",
    interval: float = POLL_SECONDS,
) -> Any:
    """Bounded wait for something another process does; returns the first truthy value of
    `condition` and raises TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := _check(condition)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return value


async def await_for(
    condition: Callable[[], Any | Awaitable[Any]],
    timeout: float = DEADLINE_SECONDS,
    what: str = "condition",
    interval: float = POLL_SECONDS,
) -> Any:
    """`wait_for` for async code: the event loop keeps running while it waits. `condition` may be
    a coroutine function, so that a probe need not block the loop."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
        except NOT_YET:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


def wait_http_ok(url: str, timeout: float = DEADLINE_SECONDS) -> None:
    """Wait until GET `url` answers 200."""
    wait_for(
        lambda: httpx.get(url, timeout=1, trust_env=False, verify=False).status_code == 200,
        timeout,
        f"{url} 200",
    )


def print_log_tails(workdir: Path, chars: int = 1500, last: int | None = None) -> None:
    """On stderr: the end of each `*.log` below `workdir` (only the `last` ones by name, if given),
    to say why a run failed."""
    logs = sorted(workdir.glob("**/*.log"))
    for log in logs[-last:] if last else logs:
        print(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}", file=sys.stderr)
