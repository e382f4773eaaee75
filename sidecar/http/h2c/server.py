"""The server half of HTTP/2: a client connection that began with the h2c preface (the HTTP/1.1
server hands it over, sidecar.http.server), each stream handed to the policy's handler as a
`StreamExchange` in a task of its own, as an HTTP/1.1 request is.

Draining, the way RFC 9113 section 6.8, grpc-go (`outgoingGoAwayHandler`) and hyper's h2
(`go_away_gracefully`) do it, in two steps:

1. GOAWAY with the last stream id 2^31-1 and a PING: "A server that is attempting to gracefully
   shut down a connection SHOULD send an initial GOAWAY frame with the last stream identifier set
   to 2^31-1 and a NO_ERROR code. This signals to the client that a shutdown is imminent and that
   initiating further requests is prohibited."
2. Once the PING is acknowledged (the client has seen the GOAWAY: every stream it opened before
   is here), or after GOAWAY_PING_SECONDS: GOAWAY with the last stream id actually handed to the
   handler. Every stream above it is answered RST_STREAM REFUSED_STREAM and never reaches the
   app: gRPC clients retry exactly those, transparently (gRPC's A6: the call was not processed).
   Never NO_ERROR or CANCEL for this: gRPC reads them as INTERNAL and CANCELLED.
The connection closes once its streams are done.

Attacks on HTTP/2 proxies, bounded as nghttp2 and Envoy bound them: streams beyond
MAX_CONCURRENT_STREAMS are refused (REFUSED_STREAM); a client that resets streams faster than
RESETS allow (rapid reset, CVE-2023-44487), or makes the sidecar reset them by breaking the rules
on them (MadeYouReset, CVE-2025-8671: a stream so reset no longer counts as open, so its work is
cancelled too, and it counts as a reset), or sends empty DATA frames faster than EMPTY_FRAMES
allow gets GOAWAY ENHANCE_YOUR_CALM; header lists, CONTINUATION runs, windows and PING/SETTINGS
floods are bounded by the connection itself (sidecar.http.h2c.connection).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING

from h2.errors import ErrorCodes

from sidecar.http.h2c.connection import H2Endpoint
from sidecar.http.h2c.exchange import StreamExchange, request_head
from sidecar.http.h2c.frames import MAX_STREAM_ID, Setting, goaway
from sidecar.http.h2c.header_blocks import DecodedBlock
from sidecar.http.h2c.header_checks import Malformed, check_request, checked
from sidecar.http.h2c.stream import Stream

if TYPE_CHECKING:
    from sidecar.http.listener import HttpServer

log = logging.getLogger("sidecar.http")

# Advertised and enforced (with REFUSED_STREAM): what nghttp2 and Envoy default to, about.
MAX_CONCURRENT_STREAMS = 100
# Step 2 of the drain comes at the PING's acknowledgement, or after this at the latest (grpc-go
# waits for the ack only; a client that never answers must not hold the drain).
GOAWAY_PING_SECONDS = 1.0


class TokenBucket:
    """`burst` events at once, then `rate` a second: a client within it is not an attacker."""

    def __init__(self, burst: float, rate: float, now: float) -> None:
        self.burst, self.rate = burst, rate
        self.tokens, self.at = burst, now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


# Rapid reset: a client cancelling calls now and then is normal (a deadline, a user leaving);
# hundreds a second on one connection are not. nghttp2 and Envoy bound the same ratio.
RESET_BURST, RESET_RATE = 200.0, 100.0
# A DATA frame with no data and no END_STREAM does nothing but cost a frame's work.
EMPTY_BURST, EMPTY_RATE = 100.0, 50.0


class H2ServerConnection(H2Endpoint):
    """One client connection speaking HTTP/2: streams in, handed to the server's handler."""

    def __init__(self, server: HttpServer, peer: str | None) -> None:
        super().__init__(server.limits.body_timeout)
        self.server = server
        self.peer = peer
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.last_accepted = 0  # the highest stream id handed to the handler
        self.refuse_above: int | None = None  # step 2 of the drain done: streams above, refused
        self.draining = False
        self._ping: bytes | None = None  # step 1's PING
        now = self._since = self._loop.time()  # the connection has had no stream since
        self._resets = TokenBucket(RESET_BURST, RESET_RATE, now)
        self._empties = TokenBucket(EMPTY_BURST, EMPTY_RATE, now)

    def _settings(self) -> dict[Setting, int]:
        return {Setting.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server.connections.add(self)
        self._timer.watch()
        if self.server.draining:
            self.drain()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        for task in self.tasks.values():
            task.cancel()  # the client is gone: so are its requests
        self.server.forget(self)

    # --- streams

    def _on_ping_ack(self, data: bytes) -> None:
        if data == self._ping:
            self._refuse_from_now()

    def _on_goaway(self, last_stream_id: int, code: int) -> None:
        # The client is going away: what it started still finishes.
        self.refuse_above = min(self.refuse_above or MAX_STREAM_ID, self.last_accepted)
        self._close_if_done()

    def _peer_opened(self, stream_id: int, decoded: DecodedBlock, end: bool) -> None:
        stream = Stream(self, stream_id)
        headers = list(decoded.fields)
        try:
            stream.expected_length = checked(decoded, check_request)
        except Malformed as exc:
            log.debug("HTTP/2 malformed request from %s: %s", self.peer, exc)
            self.stream_error(stream, ErrorCodes.PROTOCOL_ERROR)  # the client's fault: counted
            return
        if self.refuse_above is not None and stream_id > self.refuse_above:
            self.reset(stream, ErrorCodes.REFUSED_STREAM)  # drained: it never reaches the app
            return
        if len(self.streams) >= MAX_CONCURRENT_STREAMS:
            # Open streams count, as the client counts them (RFC 9113 section 5.1.2): one whose
            # both halves ended does not, even if its task is still finishing.
            self.reset(stream, ErrorCodes.REFUSED_STREAM)
            return
        head = request_head(headers, end)
        if head is None:  # a well-formed CONNECT, which the sidecar does not forward
            self.reset(stream, ErrorCodes.PROTOCOL_ERROR)
            return
        self.streams[stream_id] = stream
        stream.received_headers(headers)
        self.last_accepted = stream_id
        exchange = StreamExchange(self, stream, head)
        self.tasks[stream_id] = self._loop.create_task(self._run(exchange))
        if end:
            self._peer_ended(stream)

    async def _run(self, exchange: StreamExchange) -> None:
        try:
            await self.server.handler(exchange)
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("%s %s failed", exchange.head.method, exchange.head.target.decode(errors="replace"))
            if not exchange.started:
                exchange.respond_json(502, {"error": "the sidecar failed to relay this request"})
        finally:
            exchange.finish()
            self.tasks.pop(exchange.stream.id, None)
            if not self.tasks:
                self._since = self._loop.time()
                self._timer.watch()
            self._close_if_done()

    def _stream_closed(self, stream: Stream, by_peer: bool) -> None:
        if not by_peer:
            return
        task = self.tasks.pop(stream.id, None)
        if task is not None:
            # The client gave up (or broke the rules on it): its exchange, and the app's stream,
            # go too; it no longer counts against MAX_CONCURRENT_STREAMS, so its work must not
            # go on either (its task ends in a moment).
            task.cancel()
        self._peer_fault()

    def _peer_fault(self) -> None:
        """A reset the client sent, or made this side send (malformed requests, frames on closed
        streams...): each takes from the same budget."""
        if not self._resets.take(self._loop.time()):
            self._calm_down("streams reset, or made to be reset, faster than allowed (rapid reset)")

    def _empty_frame(self) -> None:
        if not self._empties.take(self._loop.time()):
            self._calm_down("empty DATA frames faster than allowed")

    def _calm_down(self, why: str) -> None:
        log.warning("HTTP/2 client %s: %s; connection closed (ENHANCE_YOUR_CALM)", self.peer, why)
        self.write_raw(goaway(self.last_accepted, ErrorCodes.ENHANCE_YOUR_CALM))
        self.abort_streams()
        self.linger()

    # --- draining (see the module's docstring)

    def drain(self) -> None:
        """Step 1: GOAWAY(2^31-1) and a PING; step 2 follows its ack, or GOAWAY_PING_SECONDS."""
        if self.draining or self.closed:
            return
        self.draining = True
        self.write_raw(goaway(MAX_STREAM_ID))
        self._ping = os.urandom(8)
        self.ping(self._ping)
        self.flush()
        self._loop.call_later(GOAWAY_PING_SECONDS, self._refuse_from_now)

    def _refuse_from_now(self) -> None:
        """Step 2: GOAWAY with the last stream handed to the handler; those above are refused."""
        if (self.refuse_above is not None and self.refuse_above <= self.last_accepted) or self.closed:
            return
        self.refuse_above = self.last_accepted
        self.write_raw(goaway(self.last_accepted))
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self.refuse_above is not None and not self.tasks and not self.closed:
            self.close()

    def end_drain(self) -> None:
        """The drain is over: what still runs (a long streaming call) is cut, and a stream that
        has not gone on to the app (just arrived, about to be refused) is refused."""
        if self.tasks and not self.closed:
            self.write_raw(goaway(self.last_accepted))
            for stream in list(self.streams.values()):
                self.reset(stream, ErrorCodes.CANCEL if stream.forwarded else ErrorCodes.REFUSED_STREAM)
            self.close()

    def abort_streams(self) -> None:
        for stream in list(self.streams.values()):
            self.reset(stream, ErrorCodes.CANCEL)

    # --- the one timer: the stall bound (H2Endpoint), and idleness

    def _deadline(self) -> float | None:
        stalled = super()._deadline()  # or lingering
        if self.tasks or self.closed or self._lingering_since is not None:
            return stalled
        idle = self._since + self.server.limits.idle_timeout
        return idle if stalled is None else min(idle, stalled)

    def _expired(self) -> None:
        if self._stalled_since is not None or self._lingering_since is not None:
            super()._expired()
        elif not self.tasks and not self.closed:
            self.write_raw(goaway(self.last_accepted))
            self.close()
