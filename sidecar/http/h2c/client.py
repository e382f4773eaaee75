"""The client half of HTTP/2: connections to h2c origins (an h2c app, a provider sidecar), each
carrying many streams at once, a few per origin (`H2Pool`).

A stream the origin never processed says so, and is then `StreamRefused` (the forwarding policy
may send it anywhere again, sidecar.http.failures): RST_STREAM with REFUSED_STREAM, or a stream
above the last stream id of the origin's GOAWAY (RFC 9113 section 6.8: "streams ... with
identifiers higher than the included last stream identifier ... were not processed"). A
connection that got a GOAWAY opens no new stream; the pool opens another connection instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from h2.errors import ErrorCodes

from sidecar.errors import ConnectFailed, StreamRefused, UpstreamBroken, UpstreamTimeout
from sidecar.http.client import Origin
from sidecar.http.h2c.connection import H2Endpoint
from sidecar.http.h2c.frames import MAX_STREAM_ID
from sidecar.http.h2c.stream import Headers, Stream, StreamGone

log = logging.getLogger("sidecar.http")

# A few connections per origin: one carries up to the origin's SETTINGS_MAX_CONCURRENT_STREAMS
# (100 for a sidecar), but a second is opened past STREAMS_BEFORE_ANOTHER so that one slow
# connection (a TCP loss, one busy core at the origin) does not hold every call.
CONNECTIONS_PER_ORIGIN = 4
STREAMS_BEFORE_ANOTHER = 50
# What a new connection carries before the origin's SETTINGS came: RFC 9113 recommends at least
# 100 concurrent streams, which a provider sidecar advertises (and nghttpd and Envoy too).
ASSUMED_MAX_STREAMS = 100
# An origin's connection without a stream closes after this: before a provider sidecar's
# --idle-timeout (60 s by default) closes it, so that a stream never races that close.
IDLE_SECONDS = 30.0
# A connection whose origin reads nothing of what is written to it for this long is cut.
STALL_SECONDS = 60.0


class H2ClientConnection(H2Endpoint):
    """One connection to an h2c origin, carrying many streams."""

    client_side = True

    def __init__(self, pool: H2Pool, origin: Origin) -> None:
        super().__init__(STALL_SECONDS)
        self.pool = pool
        self.origin = origin
        self.goaway_last: int | None = None  # the origin's GOAWAY: no new stream here
        self._since = self._loop.time()

    @property
    def usable(self) -> bool:
        limit = self.peer_max_streams
        if not self.peer_settings:
            # Unlimited until the origin's SETTINGS say otherwise (RFC 9113 section 6.5.2),
            # but a burst that outruns them would be refused past the origin's own limit.
            limit = min(limit, ASSUMED_MAX_STREAMS)
        return not self.closed and self.goaway_last is None and len(self.streams) < limit

    def open(self, headers: Headers, end: bool) -> Stream:
        stream = Stream(self, self.next_stream_id)
        self.next_stream_id += 2
        if self.next_stream_id > MAX_STREAM_ID:
            self.goaway_last = 0  # stream ids used up: the pool opens another connection
        stream.head_request = headers[0] == (b":method", b"HEAD")
        stream.head = self._loop.create_future()
        self.streams[stream.id] = stream
        self.send_headers(stream, headers, end)
        return stream

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.pool.forget(self)

    def _on_goaway(self, last: int, code: int) -> None:
        self.goaway_last = last
        if code != ErrorCodes.NO_ERROR:
            log.info("%s sent GOAWAY (error code %d)", self.origin, code)
        for stream in [stream for stream in self.streams.values() if stream.id > last]:
            self.streams.pop(stream.id)
            stream.gone(ErrorCodes.REFUSED_STREAM)  # not processed: may go anywhere again
        self.pool.wake(self.origin, everyone=True)
        if not self.streams:
            self.close()

    def _stream_closed(self, stream: Stream, by_peer: bool) -> None:
        self.pool.wake(self.origin)
        if not self.streams:
            if self.goaway_last is not None:
                self.close()
            else:
                self._since = self._loop.time()
                self._timer.watch()

    def _deadline(self) -> float | None:
        stalled = super()._deadline()  # or lingering
        if self.streams or self.closed or self._lingering_since is not None:
            return stalled
        idle = self._since + IDLE_SECONDS
        return idle if stalled is None else min(idle, stalled)

    def _expired(self) -> None:
        if self._stalled_since is not None or self._lingering_since is not None:
            super()._expired()
        elif not self.streams:
            self.close()


class H2Pool:
    """A few HTTP/2 connections per origin, streams spread over them."""

    def __init__(self, connect_timeout: float, response_timeout: float | None) -> None:
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self._connections: dict[Origin, list[H2ClientConnection]] = {}
        self._connecting: dict[Origin, asyncio.Lock] = {}
        self._growing: set[asyncio.Task[None]] = set()
        self._waiters: dict[Origin, deque[asyncio.Future[None]]] = {}

    async def open(self, origin: Origin, headers: Headers, end: bool) -> Stream:
        """A new stream at `origin` with `headers` sent; raises ConnectFailed. Streams wait
        for room in turn (first come, first served) when every connection is full."""
        while True:
            connection = self._room(origin)
            if connection is not None:
                if len(connection.streams) >= STREAMS_BEFORE_ANOTHER:
                    self._grow(origin)  # busy: another connection, while this one still takes it
                stream = connection.open(headers, end)
                if self._waiters.get(origin) and self._room(origin) is not None:
                    self.wake(origin)  # room for the next in line too
                return stream
            if self._count(origin) < CONNECTIONS_PER_ORIGIN:
                # No connection with room: one connect at a time per origin; whoever waited for
                # it looks again after it.
                async with self._lock(origin):
                    if self._room(origin) is None and self._count(origin) < CONNECTIONS_PER_ORIGIN:
                        await self._connect(origin)
                continue
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(origin, deque()).append(waiter)
            await waiter

    def _count(self, origin: Origin) -> int:
        """Connections to `origin` that may still open streams."""
        return sum(1 for connection in self._connections.get(origin, ()) if connection.goaway_last is None)

    def _room(self, origin: Origin) -> H2ClientConnection | None:
        """The least busy connection with room for a stream."""
        usable = [connection for connection in self._connections.get(origin, ()) if connection.usable]
        return min(usable, key=lambda connection: len(connection.streams), default=None)

    def _lock(self, origin: Origin) -> asyncio.Lock:
        return self._connecting.setdefault(origin, asyncio.Lock())

    def _grow(self, origin: Origin) -> None:
        """One more connection to `origin`, in the background (a stream does not wait for it),
        unless one is being made or there are CONNECTIONS_PER_ORIGIN already."""
        if self._lock(origin).locked() or self._count(origin) >= CONNECTIONS_PER_ORIGIN:
            return

        async def grow() -> None:
            async with self._lock(origin):
                if self._count(origin) < CONNECTIONS_PER_ORIGIN:
                    with contextlib.suppress(ConnectFailed):  # the streams stay where they are
                        await self._connect(origin)

        task = asyncio.get_running_loop().create_task(grow())
        self._growing.add(task)
        task.add_done_callback(self._growing.discard)

    async def response(self, stream: Stream) -> None:
        """Wait for `stream`'s response head (--app-timeout / --upstream-timeout at most: a timer
        that fails the wait, cheaper than asyncio.timeout for every stream)."""
        head = stream.head
        assert head is not None  # made by H2ClientConnection.open
        timer = None
        if self.response_timeout is not None:
            timer = asyncio.get_running_loop().call_later(self.response_timeout, _too_late, head)
        try:
            await head
        except TimeoutError as exc:
            raise UpstreamTimeout(f"no response within {self.response_timeout:g} s") from exc
        except StreamGone as exc:
            if exc.code == ErrorCodes.REFUSED_STREAM:
                raise StreamRefused("the origin refused the stream: it was not processed") from exc
            raise UpstreamBroken(f"the origin ended the stream without a response ({exc})") from exc
        finally:
            if timer is not None:
                timer.cancel()

    async def _connect(self, origin: Origin) -> H2ClientConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: H2ClientConnection(self, origin), origin.host, origin.port
                )
        except (OSError, TimeoutError) as exc:
            raise ConnectFailed(f"cannot connect to {origin}: {exc or 'timed out'}") from exc
        self._connections.setdefault(origin, []).append(connection)
        return connection

    def forget(self, connection: H2ClientConnection) -> None:
        connections = self._connections.get(connection.origin)
        if connections and connection in connections:
            connections.remove(connection)
        self.wake(connection.origin, everyone=True)

    def wake(self, origin: Origin, everyone: bool = False) -> None:
        """A stream ended: the first in line looks for room again (`everyone`: a connection
        went, or got a GOAWAY, and new ones may be opened)."""
        waiters = self._waiters.get(origin)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if not everyone:
                    return

    def close(self) -> None:
        for task in list(self._growing):
            task.cancel()
        for connections in list(self._connections.values()):
            for connection in list(connections):
                connection.abort()
        self._connections.clear()


def _too_late(head: asyncio.Future[None]) -> None:
    if not head.done():
        head.set_exception(TimeoutError())
