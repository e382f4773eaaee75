"""`graceful-sidecar exec`'s process contract (tini's), tested black-box on the real command.

Every test runs `python -m sidecar exec [options] -- CMD ARGS...` as a process of its own (a
SIGCHLD reaper or a subreaper inside pytest would take other tests' children). The child
inherits the sidecar's stdout, where `print_signals.py` reports what it receives; the sidecar's
own stderr (JSON log lines, and the one clear line of a failed exec) goes to a file. The child's
pid comes from the sidecar's `/status`. No --listen: these tests need no inbound proxy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.ports import free_port

SUPPORT = Path(__file__).parent / "support"
PRINT_SIGNALS = [sys.executable, str(SUPPORT / "print_signals.py")]

# Bounds for reads and waits that are never reached when things work; generous for a busy CI box.
DEADLINE = 15.0

# The contract's list (design and issue), written out: importing the supervisor's own tuple
# would make this test unable to notice a signal missing from it.
FORWARDED = [
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGCONT,
    signal.SIGTTIN,
    signal.SIGTTOU,
]


def exec_prefix(tmp_path: Path, admin_port: int, stop_timeout: float | None = None) -> list[str]:
    """`graceful-sidecar exec` with its options, up to and including the `--`."""
    argv = [sys.executable, "-m", "sidecar", "exec", "--service", "exec-test"]
    argv += ["--registry", f"sqlite://{tmp_path / 'r.db'}", "--admin", f"127.0.0.1:{admin_port}"]
    argv += ["--log-format", "json", "--quiet-period", "0"]
    if stop_timeout is not None:
        argv += ["--stop-timeout", str(stop_timeout)]
    return [*argv, "--"]


@dataclass
class Supervised:
    """The sidecar process, and every stdout line its child (or grandchild) printed so far."""

    proc: asyncio.subprocess.Process
    admin_port: int
    stderr_path: Path
    lines: list[str] = field(default_factory=list)
    child_pid: int = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def status(self) -> dict[str, Any]:
        """The sidecar's /status, waited for (bounded) while its admin API starts."""
        async with httpx.AsyncClient(timeout=2, trust_env=False) as client:
            deadline = time.monotonic() + DEADLINE
            while True:
                try:
                    body: dict[str, Any] = (
                        await client.get(f"http://127.0.0.1:{self.admin_port}/status")
                    ).json()
                    return body
                except httpx.HTTPError:
                    if self.proc.returncode is not None or time.monotonic() > deadline:
                        raise AssertionError(f"no /status; stderr: {self.stderr()}") from None
                await asyncio.sleep(0.05)

    async def next_line(self) -> str:
        """The next stdout line, within the deadline."""
        assert self.proc.stdout is not None
        try:
            async with asyncio.timeout(DEADLINE):
                raw = await self.proc.stdout.readline()
        except TimeoutError:
            raise AssertionError(f"no line within {DEADLINE}s; got {self.lines}") from None
        assert raw, f"stdout closed early; got {self.lines}; stderr: {self.stderr()}"
        line = raw.decode().rstrip("\n")
        self.lines.append(line)
        return line

    async def expect(self, *wanted: str) -> None:
        """Read stdout until every line in `wanted` has arrived, in any order."""
        missing = list(wanted)
        while missing:
            line = await self.next_line()
            if line in missing:
                missing.remove(line)

    async def started(self, *wanted: str) -> None:
        """Wait for the child's readiness lines, and its pid from /status."""
        await self.expect(*wanted)
        self.child_pid = (await self.status())["child"]["pid"]
        assert self.child_pid > 0

    def send(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def finish(self) -> tuple[int, str]:
        """Wait for exit; the remaining stdout joins `lines`; returns (exit code, stderr)."""
        async with asyncio.timeout(DEADLINE):
            out, _ = await self.proc.communicate()
        self.lines += out.decode().splitlines()
        assert self.proc.returncode is not None
        return self.proc.returncode, self.stderr()


Launch = Callable[..., Awaitable[Supervised]]


@pytest.fixture
async def supervise(tmp_path: Path) -> AsyncIterator[Launch]:
    """Start CMD under `graceful-sidecar exec`; whatever a test leaves running is killed afterwards."""
    started: list[Supervised] = []

    async def launch(*cmd: str, stop_timeout: float | None = None) -> Supervised:
        admin_port = free_port()
        stderr_path = tmp_path / f"sidecar-{admin_port}.stderr"
        with stderr_path.open("wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                *exec_prefix(tmp_path, admin_port, stop_timeout),
                *cmd,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        started.append(supervised := Supervised(proc, admin_port, stderr_path))
        return supervised

    yield launch
    for supervised in started:
        if supervised.proc.returncode is None:
            if supervised.child_pid:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(supervised.child_pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                supervised.proc.kill()
        # Bounded: a survivor holding the stdout pipe must fail the run, not hang it.
        async with asyncio.timeout(DEADLINE):
            await supervised.proc.communicate()


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process from /proc, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    state, ppid = stat.rpartition(")")[2].split()[:2]  # after "pid (comm)", comm may hold spaces
    return state, int(ppid)


def parent_of(pid: int) -> int | None:
    """The parent's pid, or None once the process is gone."""
    stat = proc_stat(pid)
    return None if stat is None else stat[1]


def zombies_of(parent: int) -> list[int]:
    """Zombie processes whose parent is `parent`."""
    pids = (int(entry) for entry in os.listdir("/proc") if entry.isdigit())
    return [pid for pid in pids if proc_stat(pid) == ("Z", parent)]


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Wait, bounded, for a condition on state we do not own (the kernel's process table)."""
    try:
        async with asyncio.timeout(DEADLINE):
            while not condition():  # noqa: ASYNC110 - /proc offers no event to await
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {DEADLINE}s: {what}") from None


def plain_lines(stderr: str) -> list[str]:
    """The stderr lines that are not the sidecar's JSON log lines."""
    plain = []
    for line in stderr.splitlines():
        try:
            json.loads(line)
        except ValueError:
            plain.append(line)
    return plain


def assert_one_clear_line(stderr: str, expected: str) -> None:
    """A failed exec says so in one line of its own, among the JSON log lines, with no traceback."""
    assert plain_lines(stderr) == [expected], stderr
    assert "Traceback" not in stderr, stderr
    assert '"level": "error"' not in stderr, stderr


async def test_forwards_each_signal_once_to_child_and_grandchild(supervise: Launch) -> None:
    """Each forwarded signal reaches the child and the grandchild in its group exactly once."""
    supervised = await supervise(*PRINT_SIGNALS, "--spawn-grandchild")
    await supervised.started("ready", "grandchild: ready")
    for sig in FORWARDED:
        supervised.send(sig)
        await supervised.expect(sig.name, f"grandchild: {sig.name}")
    supervised.send(signal.SIGTERM)
    code, _ = await supervised.finish()
    assert code == 128 + signal.SIGTERM
    for sig in FORWARDED:
        assert supervised.lines.count(sig.name) == 1, supervised.lines
        assert supervised.lines.count(f"grandchild: {sig.name}") == 1, supervised.lines


@pytest.mark.parametrize("exit_code", [0, 1, 3])
async def test_exits_with_the_childs_code(supervise: Launch, exit_code: int) -> None:
    """A child that exits on its own with N makes the sidecar exit with N."""
    supervised = await supervise("sh", "-c", f"exit {exit_code}")
    code, err = await supervised.finish()
    assert code == exit_code, err


async def test_child_killed_by_sigterm_gives_143(supervise: Launch) -> None:
    """SIGTERM reaches the child, which dies of it by default action: exit status 128+15; the
    sidecar's log says it sent it, as it says a SIGKILL."""
    supervised = await supervise(*PRINT_SIGNALS)
    await supervised.started("ready")
    supervised.send(signal.SIGTERM)
    code, stderr = await supervised.finish()
    assert code == 143
    assert "SIGTERM" in supervised.lines
    assert f"sending SIGTERM to process group {supervised.child_pid}" in stderr


async def test_child_ignoring_sigterm_is_killed_after_stop_timeout(supervise: Launch) -> None:
    """A child that ignores SIGTERM is SIGKILLed once --stop-timeout passes: 137 after ~1 s."""
    supervised = await supervise(*PRINT_SIGNALS, "--ignore-term", stop_timeout=1)
    await supervised.started("ready")
    start = time.monotonic()
    supervised.send(signal.SIGTERM)
    await supervised.expect("SIGTERM")
    code, _ = await supervised.finish()
    elapsed = time.monotonic() - start
    assert code == 137
    assert 0.9 <= elapsed < 1 + DEADLINE / 3, elapsed


async def test_second_sigterm_kills_at_once(supervise: Launch) -> None:
    """A second SIGTERM during a stop SIGKILLs the child without waiting for the stop timeout."""
    supervised = await supervise(*PRINT_SIGNALS, "--ignore-term", stop_timeout=60)
    await supervised.started("ready")
    supervised.send(signal.SIGTERM)
    await supervised.expect("SIGTERM")  # the child got the stop's SIGTERM: the stop is under way
    start = time.monotonic()
    supervised.send(signal.SIGTERM)
    code, _ = await supervised.finish()
    assert code == 137
    assert time.monotonic() - start < 10


async def test_command_not_found_gives_127(supervise: Launch) -> None:
    """A command that does not exist: exit 127 and one clear stderr line, no traceback."""
    supervised = await supervise("graceful-sidecar-no-such-command")
    code, err = await supervised.finish()
    assert code == 127
    assert_one_clear_line(err, "graceful-sidecar: graceful-sidecar-no-such-command: command not found")


@pytest.mark.parametrize(("kind", "reason"), [("file", "permission denied"), ("dir", "is a directory")])
async def test_not_executable_gives_126(supervise: Launch, tmp_path: Path, kind: str, reason: str) -> None:
    """A file without the execute bit, or a directory, as the command: exit 126 and the reason."""
    target = tmp_path / "target"
    if kind == "dir":
        target.mkdir()
    else:
        target.write_text("#!/bin/sh\nexit 0\n")
        target.chmod(0o644)
    supervised = await supervise(str(target))
    code, err = await supervised.finish()
    assert code == 126
    [line] = plain_lines(err)
    assert line.startswith(f"graceful-sidecar: {target}: {reason}"), err
    assert_one_clear_line(err, line)


async def test_orphans_are_reaped(supervise: Launch) -> None:
    """Grandchildren orphaned by the child are re-parented to the sidecar and leave no zombie."""
    # Each subshell starts a sleep and exits at once, so the sleep outlives its parent.
    script = 'for i in 1 2 3; do (sleep 600 >/dev/null & echo "orphan $!"); done; exec sleep 600'
    supervised = await supervise("sh", "-c", script)
    while len(orphans := [int(line[7:]) for line in supervised.lines if line.startswith("orphan ")]) < 3:
        await supervised.next_line()
    await supervised.started()

    # 1. Re-parented to the sidecar (a subreaper), not to init.
    await eventually(
        lambda: all(parent_of(pid) == supervised.pid for pid in orphans),
        f"orphans {orphans} re-parented to {supervised.pid}",
    )
    # 2. They die while the sidecar and its child still run; the sidecar must reap them.
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    await eventually(
        lambda: all(proc_stat(pid) is None for pid in orphans) and not zombies_of(supervised.pid),
        f"orphans {orphans} reaped, no zombie left under {supervised.pid}",
    )
    # The check ran while all was still running.
    assert parent_of(supervised.child_pid) == supervised.pid
    assert supervised.proc.returncode is None

    supervised.send(signal.SIGTERM)
    code, _ = await supervised.finish()
    assert code == 143


async def test_waits_for_the_whole_group(supervise: Launch, tmp_path: Path) -> None:
    """A startup script's background app that takes a while to stop is waited for: the sidecar
    exits only once the app is done, not as soon as the script is."""
    done = tmp_path / "done"
    script = tmp_path / "startup.sh"
    app = f"trap 'sleep 1; touch {done}; exit 0' TERM; echo app-ready; while true; do sleep 0.1; done"
    script.write_text(f'#!/bin/bash\nsh -c "{app}" &\nwhile true; do sleep 2; done\n')
    script.chmod(0o755)
    supervised = await supervise(str(script), stop_timeout=10)
    await supervised.started("app-ready")
    supervised.send(signal.SIGTERM)
    code, stderr = await supervised.finish()
    assert code == 128 + signal.SIGTERM, stderr  # the script itself died of SIGTERM
    assert done.exists(), "the sidecar exited before the background app had stopped"


async def test_child_exiting_leaves_no_background_process(supervise: Launch, tmp_path: Path) -> None:
    """A child that exits on its own leaving a background process: that process gets SIGTERM
    and is waited for; the sidecar then exits with the child's code."""
    ready, done = tmp_path / "ready", tmp_path / "done"
    script = tmp_path / "startup.sh"
    background = f"trap 'touch {done}; exit 0' TERM; touch {ready}; while true; do sleep 0.1; done"
    script.write_text(
        f'#!/bin/bash\nsh -c "{background}" &\nuntil [ -f {ready} ]; do sleep 0.05; done\nexit 3\n'
    )
    script.chmod(0o755)
    supervised = await supervise(str(script), stop_timeout=10)
    code, stderr = await supervised.finish()
    assert code == 3, stderr
    assert done.exists(), "the background process was not stopped"
