"""The interop peers (interop/*/): programs of other ecosystems (Spring Cloud, Dubbo, go-kratos,
grpc-go) built by `make tools` (scripts/build-interop.sh) into .tools/interop/PEER/bin/peer.

A peer reports on stdout, one JSON object per line, each with an "event" key (what the events
are is each peer's own: its README says). Anything else it prints (a framework's log) goes only
to its log file. A reader thread collects the events, so a test awaits one with `wait_event`
instead of sleeping, and judges the whole list at the end.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from sidecar.demo.processes import stop_process, wait_for

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / ".tools" / "interop"
# A JVM with Spring Boot takes seconds to start on an idle machine, ten times that on a loaded one.
START_SECONDS = 90.0

Event = dict[str, Any]


def peer_binary(peer: str) -> Path:
    """The built peer; a clear failure naming the command that builds it when it is missing."""
    binary = PEERS / peer / "bin" / "peer"
    if not binary.exists():
        raise FileNotFoundError(f"{binary} is missing: `make tools` builds the interop peers")
    return binary


class Peer:
    """A running peer: its events, in the order it printed them."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log
        self._events: list[Event] = []
        self._lock = threading.Lock()
        assert proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(proc.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stdout: IO[bytes]) -> None:
        with open(self.log, "ab") as log:
            for line in stdout:
                log.write(line)
                log.flush()
                if not line.startswith(b'{"event"'):
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                with self._lock:
                    self._events.append(event)

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return list(self._events)

    def of(self, kind: str) -> list[Event]:
        return [event for event in self.events if event["event"] == kind]

    def wait_event(
        self, predicate: Callable[[Event], bool], timeout: float = START_SECONDS, what: str = "an event"
    ) -> Event:
        """The first event (already seen or to come) for which `predicate` holds."""

        def found() -> Event | None:
            exited = self.proc.poll() is not None
            if exited:
                self._reader.join(5)  # its last lines too
            event = next((event for event in self.events if predicate(event)), None)
            if event is None and exited:
                raise AssertionError(f"peer exited ({self.proc.returncode}) awaiting {what}: see {self.log}")
            return event

        event: Event = wait_for(found, timeout, what)
        return event

    def wait_exit(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code


@contextmanager
def running_peer(
    peer: str, args: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[Peer]:
    """Start `peer` with `args` (stderr to `log`, stdout read as events); stopped by pid at exit."""
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            [str(peer_binary(peer)), *args],
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    running = Peer(proc, log)
    try:
        yield running
    finally:
        stop_process(proc)
        running._reader.join(5)
        if proc.stdout is not None:
            proc.stdout.close()
