"""One timer per connection, for whichever wait its state bounds.

A connection's bound depends on its state (a head to come, a body owed, idleness, a response
owed by the app...), and most events only push it later: a read moves "nothing sent for 60 s"
on by its own time. Re-arming a timer on every read would cost a timer per read, so the owner
only notes the time of its reads, and the timer, when it fires, asks the owner for the deadline
again: past, the wait has run out; later, the timer is armed for it. Only a state change that
may bring the deadline *earlier* calls `watch()`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

# A timer that fires this close to its deadline has reached it (libuv's clock counts in ms).
EARLY_SECONDS = 0.002


class Deadline:
    """Calls `expired()` once loop time passes `deadline()` (None: no bound in this state)."""

    def __init__(self, deadline: Callable[[], float | None], expired: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._deadline = deadline
        self._expired = expired
        self._timer: asyncio.TimerHandle | None = None
        self._at = 0.0

    def watch(self) -> None:
        """The state changed: arm the timer for its deadline, unless it fires before that."""
        deadline = self._deadline()
        if deadline is None:
            return
        if self._timer is not None:
            if self._at <= deadline:
                return
            self._timer.cancel()
        self._at = deadline
        self._timer = self._loop.call_at(deadline, self._fire)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fire(self) -> None:
        self._timer = None
        deadline = self._deadline()
        if deadline is None:
            return
        if deadline > self._loop.time() + EARLY_SECONDS:
            self.watch()  # it moved on since the timer was armed
        else:
            self._expired()
