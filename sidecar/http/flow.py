"""Flow control between the two connections of a proxied exchange, and splicing after an upgrade.

Bytes read on one connection are written to the other as they arrive, without a copy in between.
When the writing side's transport buffer passes its high-water mark, asyncio calls
`pause_writing()` on its protocol: we then stop *reading* from the connection that feeds it (its
`feeder`), and read again on `resume_writing()`. So a slow reader at either end holds back the
fast writer at the other end, and the sidecar never buffers more than the transports' limits:
no whole body is ever held in memory.

The same events time the waits: each endpoint notes when it last read and since when its peer
has read nothing of what it writes (its buffer full), and has one timer (sidecar.http.deadline)
for whatever bound its state has, which the server and client halves define.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from sidecar.http.deadline import Deadline

log = logging.getLogger("sidecar.http")

# What one connection may hold in its write buffer before its feeder stops being read; asyncio's
# own default high-water mark, written out: large enough for a 1 MiB body to flow in a few
# writes, small enough that 1,000 slow clients cost 64 MiB at most.
HIGH_WATER = 64 * 1024


class Endpoint(asyncio.Protocol):
    """One side of a relay: a client connection (server side) or an upstream connection."""

    transport: asyncio.Transport

    def __init__(self) -> None:
        self.feeder: Endpoint | None = None  # the endpoint whose reads we write out
        self.tunnel: Endpoint | None = None  # after an upgrade: the endpoint we splice to
        self.tunnel_done: asyncio.Future[None] | None = None
        self.closed = False
        self._reading_paused = False
        self._writing_paused = False
        self._loop = asyncio.get_running_loop()
        self._last_read = 0.0  # loop time of the last read, or of the end of a pause of ours
        self._stalled_since: float | None = None  # loop time the peer stopped reading our writes
        self._drain: asyncio.Future[None] | None = None  # awaited by `drained()`
        self._timer = Deadline(self._deadline, self._expired)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses
        self.transport.set_write_buffer_limits(HIGH_WATER)

    # --- our own reading, paused by whoever we feed

    def pause_reading(self) -> None:
        if not self._reading_paused and not self.closed:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and not self.closed:
            self._reading_paused = False
            self._last_read = self._loop.time()  # the pause was ours: the peer's clock restarts
            self.transport.resume_reading()

    # --- our writing, which holds back our feeder

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._stalled_since = self._loop.time()
        self._timer.watch()
        if self.feeder is not None:
            self.feeder.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._stalled_since = None
        self.wake_drain()
        if self.feeder is not None:
            self.feeder.resume_reading()

    # --- the one timer: what its state bounds, and what happens when the bound is reached

    def _deadline(self) -> float | None:
        """Loop time the current wait runs out, None when it has no bound."""
        return None

    def _expired(self) -> None:
        """The wait ran out."""

    def feed_from(self, feeder: Endpoint | None) -> None:
        """From now on `feeder`'s reads are written to us (None: nobody)."""
        if self.feeder is not None and self.feeder is not feeder:
            self.feeder.resume_reading()
        self.feeder = feeder
        if feeder is not None and self._writing_paused:
            feeder.pause_reading()

    async def drained(self) -> None:
        """Once our write buffer is below its high-water mark (for writers that await, rather
        than pause a feeder: a relay to or from HTTP/2)."""
        while self._writing_paused and not self.closed:
            if self._drain is None or self._drain.done():
                self._drain = self._loop.create_future()
            await asyncio.shield(self._drain)

    def wake_drain(self) -> None:
        """Writable again, or closed: whoever awaits `drained()` looks again."""
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    # --- splicing: after 101 Switching Protocols, bytes go both ways untouched

    def splice(self, other: Endpoint, done: asyncio.Future[None]) -> None:
        """Relay bytes between `self` and `other` until either closes; then close both and
        resolve `done`. Each side's data_received hands its bytes to `tunnel`."""
        self.tunnel, other.tunnel = other, self
        self.tunnel_done = other.tunnel_done = done
        self.feed_from(other)
        other.feed_from(self)
        self.resume_reading()
        other.resume_reading()

    def tunnel_lost(self) -> None:
        """Our connection closed while spliced: close the other end too."""
        if self.tunnel is not None:
            self.tunnel.close()
        if self.tunnel_done is not None and not self.tunnel_done.done():
            self.tunnel_done.set_result(None)

    def close(self) -> None:
        if not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.transport.abort()
