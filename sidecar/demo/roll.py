"""The rolling restart: providers replaced one by one, the sidecar way or the plain way.

- sidecar: preStop `GET /shutdown` (deregister, notify consumers, drain), then one SIGTERM to the
  app and its sidecar together, as the kubelet sends them;
- plain: the app gets SIGTERM and stops with whatever it has in flight; its sidecar is SIGKILLed
  at the same moment, as if it were not there: nothing drains or deregisters the instance.

After each stop a replacement is started under a new instance id; what paces the next step (a
deployment's minReadySeconds, or a condition a test awaits) is the caller's `Pacing`.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import httpx

from sidecar.demo.fleet import Fleet, Provider
from sidecar.demo.processes import POLL_SECONDS, stop_processes

Mode = Literal["sidecar", "plain"]
# /shutdown blocks until the drain ends, bounded by --drain-timeout (25 s by default).
SHUTDOWN_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Shutdown:
    """How a provider stopped the sidecar way."""

    status: int  # of GET /shutdown
    body: dict[str, Any]  # its JSON answer: drained, inflight, seconds, notified, ...
    app_exit: int
    sidecar_exit: int


def stop_with_sidecar(provider: Provider) -> Shutdown:
    """preStop GET /shutdown (it returns once drained), then SIGTERM to the app and its sidecar."""
    answer = httpx.get(
        f"{provider.admin}/shutdown", timeout=SHUTDOWN_TIMEOUT_SECONDS, trust_env=False, verify=False
    )
    app_exit, sidecar_exit = stop_processes([provider.app, provider.sidecar])
    return Shutdown(answer.status_code, answer.json(), app_exit, sidecar_exit)


def stop_plain(provider: Provider) -> None:
    """SIGKILL to the sidecar (it is "not there") and SIGTERM to the app, together."""
    stop_processes([provider.sidecar, provider.app], [signal.SIGKILL, signal.SIGTERM])


class Pacing(Protocol):
    def stopping(self, old: Provider) -> None:
        """Called right before `old` is stopped."""

    def replaced(self, new: Provider) -> None:
        """Called once `new` answers /ready; returns when the next step may start."""


class MinReady:
    """Kubernetes' minReadySeconds: the next step starts `seconds` after the replacement became
    ready. A deliberate pause of the deployment's, not a wait for a state: nothing to await."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def stopping(self, old: Provider) -> None:
        pass

    def replaced(self, new: Provider) -> None:
        until = new.ready_at + self.seconds
        while (left := until - time.monotonic()) > 0:
            self.waiting(new)
            time.sleep(min(POLL_SECONDS, left))

    def waiting(self, new: Provider) -> None:
        """Called every few ms while the pause lasts (to show progress)."""


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a roll, timed (time.monotonic()) for the report's chart."""

    old: str
    stop_began: float  # GET /shutdown sent (sidecar), or the signals (plain)
    old_exited: float  # the old app and its sidecar have both exited
    new: str
    new_ready: float  # the replacement's /ready answered 200


@dataclass
class Roll:
    mode: Mode
    started: float = field(default_factory=time.monotonic)
    ended: float = 0.0
    shutdowns: list[Shutdown] = field(default_factory=list)  # the sidecar way: one per step
    inflight_at_sigterm: list[int | None] = field(default_factory=list)  # what each old app had
    replacements: list[Provider] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)

    @property
    def drains(self) -> list[float]:
        """Seconds each drain took, as its /shutdown answered."""
        return [float(shutdown.body["seconds"]) for shutdown in self.shutdowns]


def roll(
    fleet: Fleet, mode: Mode, providers: Sequence[Provider], args: Sequence[str], prefix: str, pacing: Pacing
) -> Roll:
    """Replace each of `providers` in turn by a new one named `prefix` + its number, started with
    `args`."""
    result = Roll(mode)
    for number, old in enumerate(providers, 1):
        pacing.stopping(old)
        began = time.monotonic()
        if mode == "sidecar":
            result.shutdowns.append(stop_with_sidecar(old))
        else:
            stop_plain(old)
        exited = time.monotonic()  # both stops wait for the old processes to exit
        result.inflight_at_sigterm.append(old.inflight_at_sigterm())
        new = fleet.start_provider(f"{prefix}{number}", *args)
        result.replacements.append(new)
        result.steps.append(Step(old.name, began, exited, new.name, new.ready_at))
        pacing.replaced(new)
    result.ended = time.monotonic()
    return result
