"""Exec mode: CMD runs as the sidecar's child, under tini's contract.

The sidecar is CMD's parent, often PID 1 of a container, so it does what an init does:

* The child is started with `subprocess.Popen`, not asyncio's subprocess API. asyncio waits on
  each of its children by pid (a watcher thread, or a pidfd), while an init must also reap
  orphans with `waitpid(-1)`; two waiters steal each other's exit statuses and the child's code
  is lost (asyncio then reports 255). So ONE reaper, a SIGCHLD handler on the loop, owns every
  wait in the process and resolves a future when the main child's status comes back.
* Popen rather than `os.posix_spawn`: Popen reports a failed exec as an exception carrying the
  errno (ENOENT -> 127, EACCES -> 126) on every libc, searches PATH in the child's env, closes
  inherited fds and resets SIGPIPE to default. Popen also wants to wait (`poll`, `wait`,
  `__del__` -> `subprocess._active`); we never call the first two, keep the object alive, and
  write the reaped status into `popen.returncode`, so Popen never calls waitpid behind our back.
* `start_new_session=True` (dumb-init's default setsid mode): the child leads its own session and
  process group, so `killpg(pid)` reaches its grandchildren, and as a session leader it cannot
  move to another group, so pgid == pid stays true. Terminal signals (Ctrl-C) reach the sidecar
  alone, which runs the offline sequence before it stops the child.
* Not PID 1: we become a child subreaper (Linux prctl), so orphans of the child are re-parented
  to us and reaped here, instead of piling up as zombies nobody waits for.
* SIGTERM/SIGINT are the runtime's: it runs the offline sequence, then calls `stop()`; a second
  one calls `hurry()`. The other job-control and user signals are forwarded to the group at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import signal
import subprocess
from asyncio import unix_events
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import FrameType, TracebackType
from typing import Any, Self

from sidecar.errors import SidecarError

log = logging.getLogger("sidecar.supervisor")

# From <linux/prctl.h>; not exposed by the os module.
PR_SET_CHILD_SUBREAPER = 36

# What tini and dumb-init forward untouched. SIGCHLD is ours (the reaper); SIGTERM/SIGINT are
# the runtime's (offline sequence first); SIGKILL/SIGSTOP cannot be caught.
FORWARDED_SIGNALS = (
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGCONT,
    signal.SIGTTIN,
    signal.SIGTTOU,
)

# Shell conventions, which tini and dumb-init follow too.
EXIT_NOT_FOUND = 127
EXIT_NOT_EXECUTABLE = 126

_PreviousHandler = Callable[[int, FrameType | None], Any] | int | None
# What `signal.getsignal` shows for a signal that has a `loop.add_signal_handler` callback.
_ASYNCIO_HANDLER = getattr(unix_events, "_sighandler_noop", object())


class ChildSpawnError(SidecarError):
    """CMD could not be started; `exit_code` is what the sidecar should exit with."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def exit_code_of(status: int) -> int:
    """A waitpid status as a shell reports it: the exit code, or 128+N if killed by signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _spawn_error(cmd: str, exc: OSError) -> ChildSpawnError:
    if exc.errno == errno.ENOENT:
        return ChildSpawnError(EXIT_NOT_FOUND, f"graceful-sidecar: {cmd}: command not found")
    if exc.errno in (errno.EACCES, errno.EISDIR) and os.path.isdir(cmd):
        reason = "is a directory"  # execve says EACCES for a directory; say what is wrong
    elif exc.errno == errno.EACCES:
        reason = "permission denied (not executable)"
    else:
        reason = f"cannot execute: {exc.strerror}"
    return ChildSpawnError(EXIT_NOT_EXECUTABLE, f"graceful-sidecar: {cmd}: {reason}")


def _set_subreaper(on: bool) -> bool:
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: there is no prctl
        return False
    return bool(prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0)


class Supervisor:
    """Runs `argv` as a child in its own process group; reaps, forwards signals, stops it."""

    def __init__(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, forward_signals: bool = True
    ) -> None:
        if not argv:
            raise ValueError("Supervisor needs a command to run")
        self._argv = list(argv)
        self._env = dict(env) if env is not None else None
        self._forward_signals = forward_signals
        self.pid = 0
        self._popen: subprocess.Popen[bytes] | None = None
        self._exited: asyncio.Future[int] | None = None
        self._hurried: asyncio.Future[None] | None = None
        self._group_empty: asyncio.Event | None = None  # set once no process of the group is left
        self._previous: dict[int, _PreviousHandler] = {}
        self._subreaper = False
        self._plain: set[int] = set()  # signals handled by signal.signal, not by the loop

    async def __aenter__(self) -> Self:
        if self._exited is not None:
            raise RuntimeError("a Supervisor runs its command once; create a new one")
        handled = (signal.SIGCHLD, *(FORWARDED_SIGNALS if self._forward_signals else ()))
        # asyncio keeps one callback per signal and would silently replace another owner's (a
        # SIGCHLD child watcher, the runtime's own): fail fast, before there is a child to leak.
        if taken := [s.name for s in handled if signal.getsignal(s) is _ASYNCIO_HANDLER]:
            raise RuntimeError(f"already handled by asyncio, cannot supervise: {', '.join(taken)}")
        loop = asyncio.get_running_loop()
        self._exited = loop.create_future()
        self._hurried = loop.create_future()
        self._group_empty = asyncio.Event()
        # The reaper goes in first: no exit can happen while nobody listens, and if the loop
        # refuses it (not the main thread) nothing else has been done yet.
        self._install(signal.SIGCHLD, self._reap)
        if os.getpid() == 1:
            log.info("running as PID 1: orphaned processes are re-parented to us and reaped")
        elif _set_subreaper(True):
            self._subreaper = True
            log.info("became a child subreaper: orphans of the child are re-parented to us and reaped")
        else:
            log.warning("neither PID 1 nor a child subreaper: orphans of the child will not be reaped")
        try:
            # Blocks only until exec succeeded or failed (Popen's error pipe): milliseconds.
            self._popen = subprocess.Popen(  # noqa: ASYNC220 - see the header: not asyncio's API
                self._argv, env=self._env, start_new_session=True
            )
        except OSError as exc:
            self._uninstall()
            raise _spawn_error(self._argv[0], exc) from exc
        except BaseException:
            self._uninstall()
            raise
        self.pid = self._popen.pid
        log.info("started %s as pid %d", self._argv[0], self.pid)
        if self._forward_signals:
            for sig in FORWARDED_SIGNALS:
                self._install(sig, self._forward, sig)
        self._reap()  # zombies that died before the handler existed send no new SIGCHLD
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        exited = self._started()
        if not exited.done():
            self._signal_group(signal.SIGKILL)
            await asyncio.shield(exited)
        self._reap()
        self._uninstall()

    @property
    def returncode(self) -> int | None:
        """None while the child runs; then its exit code, or 128+N if signal N killed it."""
        exited = self._exited
        return exited.result() if exited is not None and exited.done() else None

    async def wait(self) -> int:
        """The child's code once it has exited; cancelling a waiter leaves the child alone."""
        return await asyncio.shield(self._started())

    async def stop(self, timeout: float) -> int:
        """SIGTERM the child's group; SIGKILL it after `timeout` seconds or on `hurry()`.

        The whole group, not only the main child: a startup script's background app must be
        done too, or the sidecar (PID 1 of a container) exits and the kernel kills it mid-way.
        A main child that already exited on its own may have left such processes: they get
        SIGTERM as well."""
        exited = self._started()
        assert self._group_empty is not None
        deadline = asyncio.get_running_loop().time() + timeout
        if not exited.done() or self._group_alive():
            log.info("sending SIGTERM to process group %d (SIGKILL after %g s)", self.pid, timeout)
            self._signal_group(signal.SIGTERM)
        # 1. The main child, 2. the rest of its group: both within the one timeout.
        await self._until(asyncio.shield(exited), deadline)
        if not self._group_alive():
            self._group_empty.set()
        # Set by the reaper: the group's orphans are our children (subreaper or PID 1). Neither?
        # Then nothing tells us, and the group gets the whole timeout before its SIGKILL.
        await self._until(self._group_empty.wait(), deadline)
        if not exited.done() or self._group_alive():
            assert self._hurried is not None
            why = "stop hurried" if self._hurried.done() else f"still running {timeout:g}s after SIGTERM"
            log.warning("%s: sending SIGKILL to process group %d", why, self.pid)
            self._signal_group(signal.SIGKILL)
        return await asyncio.shield(exited)

    async def _until(self, awaitable: Awaitable[Any], deadline: float) -> None:
        """Wait for `awaitable`, for `hurry()` or until `deadline`, whichever comes first."""
        assert self._hurried is not None
        waiter = asyncio.ensure_future(awaitable)
        remaining = max(0.0, deadline - asyncio.get_running_loop().time())
        await asyncio.wait({waiter, self._hurried}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # a member we may not signal: still a member
            return True
        return True

    def hurry(self) -> None:
        """A second SIGTERM: a stop() in progress (or a later one) SIGKILLs without waiting."""
        if self._hurried is not None and not self._hurried.done():
            self._hurried.set_result(None)

    def status(self) -> dict[str, object]:
        """The child, as /status shows it."""
        code = self.returncode
        return {"pid": self.pid, "state": "running" if code is None else "exited", "returncode": code}

    def _started(self) -> asyncio.Future[int]:
        if self._exited is None:
            raise RuntimeError("the Supervisor has not been entered (use `async with`)")
        return self._exited

    def _reap(self) -> None:
        self._reap_exited()
        # Orphans of the group are ours (subreaper or PID 1): each exit brings us here.
        if self.returncode is not None and self._group_empty is not None and not self._group_alive():
            self._group_empty.set()

    def _reap_exited(self) -> None:
        # SIGCHLDs coalesce, so one signal may stand for many exits: wait until none is left.
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:  # no children at all
                return
            if pid == 0:  # children left, none has exited
                return
            if pid != self.pid:
                log.debug("reaped orphan %d (%d)", pid, exit_code_of(status))
                continue
            code = exit_code_of(status)
            log.info("child %d exited with %d", pid, code)
            assert self._popen is not None
            assert self._exited is not None
            self._popen.returncode = code  # Popen now thinks it waited, and never will
            if not self._exited.done():
                self._exited.set_result(code)

    def _forward(self, sig: int) -> None:
        # Once the child is reaped its pgid may in time name another group: forward no more.
        if self.returncode is None:
            log.debug("forwarding %s to process group %d", signal.Signals(sig).name, self.pid)
            self._signal_group(sig)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
            os.killpg(self.pid, sig)

    def _install(self, sig: int, callback: Callable[..., None], *args: Any) -> None:
        previous = signal.getsignal(sig)
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(sig, callback, *args)
        except RuntimeError:
            # uvloop keeps SIGCHLD from add_signal_handler (libuv's own children use it; we start
            # none through it). A plain Python handler still runs on the main thread, between
            # two steps of the loop, and hands the work to the loop.
            signal.signal(sig, lambda _signum, _frame: loop.call_soon_threadsafe(callback, *args))
            self._plain.add(sig)
        self._previous[sig] = previous

    def _uninstall(self) -> None:
        loop = asyncio.get_running_loop()
        for sig, previous in self._previous.items():
            if sig not in self._plain:
                loop.remove_signal_handler(sig)
            if previous is not None:  # None: set outside Python, cannot be put back
                signal.signal(sig, previous)
        self._plain.clear()
        self._previous.clear()
        if self._subreaper:
            # Nobody will reap for us any more; let later orphans go to init.
            self._subreaper = not _set_subreaper(False)
