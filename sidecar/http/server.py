"""The server half of the core: client connections as asyncio Protocols driven by llhttp. One
whose first bytes are HTTP/2's connection preface (h2c, prior knowledge) is handed over to
sidecar.http.h2c.server, on the same port.

Each parsed request head becomes an `Exchange`, handed to the policy's handler (the inbound
proxy or an upstream listener) in a task of its own; requests on one connection are answered in
order (a pipelined request waits, and reading pauses, until the one before it is answered).

A connection's states, and the one deadline each has (one timer per connection: reads only note
their time, and the timer, when it fires, re-arms itself if the deadline has moved on):

    waiting for a head   --header-timeout for the whole head (not per byte)
    in an exchange       --body-timeout while the client owes body bytes and sends none; what
                         the app owes is the pool's business (--app-timeout)
    idle, keep-alive     --idle-timeout; DRAIN_IDLE_SECONDS once draining (`close_idle()`)
    lingering            after a response that left client bytes unread: read and discard them
                         until the client closes, for LINGER_QUIET_SECONDS of silence or
                         LINGER_SECONDS in all (nginx's lingering_close), so that the client
                         reads its response instead of a reset
    spliced (upgraded)   until either side closes, or `close_upgraded()` when the drain ends
and in any state, --body-timeout once the client reads nothing of what it is sent (the socket's
buffer full): a client that stopped reading is cut, its exchange, slot and app connection freed.

What the core will not forward (sidecar.http.request_head says what, and with which status) is
answered in its turn, after the requests before it on the connection, and the connection then
closes (lingering). A request whose head was forwarded before its body turned out bad is cut
off at the app (its connection aborted), so the app never sees it complete.

An upgrade the core ignores (one with a body, or to h2c: sidecar.http.request_head) goes on as a
plain request: llhttp stops at the head of any upgrade request, and a fresh parser reads on.

llhttp joins the pieces of one field line as reads bring them (httptools' `+=`: quadratic in
the number of reads); counting what it was fed since the last sign of progress bounds that to
MAX_UNPARSED_BYTES, at most a few microseconds a read.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from sidecar.http.exchange import Exchange
from sidecar.http.fields import MAX_UNPARSED_BYTES, FieldReader
from sidecar.http.flow import Endpoint
from sidecar.http.h2c.frames import PREFACE
from sidecar.http.h2c.server import H2ServerConnection
from sidecar.http.head import serialize, status_line
from sidecar.http.request_head import framing_only, read_request_head, refusal, request_parser

if TYPE_CHECKING:
    from sidecar.http.listener import HttpServer

log = logging.getLogger("sidecar.http")

# Draining closes idle keep-alive connections, but only once they have been idle this long: a
# client in the middle of a burst sends its next request within it (and gets it answered, with
# Connection: close) instead of racing the close, which would lose a request no client may
# retry (a POST on a connection closed under it). Clients that are really idle go at once.
# A second covers the gaps of a busy client even on a loaded machine (0.25 s did not, in tests).
DRAIN_IDLE_SECONDS = 1.0
# nginx's lingering_timeout and lingering_time: a client still sending after its response gets
# this much silence, and this much in all, to notice the response and stop.
LINGER_QUIET_SECONDS = 5.0
LINGER_SECONDS = 30.0


class ServerConnection(Endpoint):
    """One client connection: parses request heads, runs their exchanges in order."""

    on_header: Callable[[bytes, bytes], None]

    def __init__(self, server: HttpServer) -> None:
        super().__init__()
        self.server = server
        self.peer: str | None = None
        self.current: Exchange | None = None
        self.upgrade_data = b""  # bytes behind an upgrade request's head
        self._fields = FieldReader()
        self.on_header = self._fields.on_header  # llhttp's callback, bound before the parser is made
        self._parser = request_parser(self)
        self._queue: deque[Exchange] = deque()
        self._receiving: Exchange | None = None  # the exchange whose body is being read
        self._in_head = False
        self._url: list[bytes] = []
        self._unparsed = 0  # bytes fed since the parser last showed progress (a body, a message)
        self._upgrading = False  # an upgrade request went out: what follows waits for its answer
        self._upgrade_ignored = False  # an upgrade asked for, ignored: llhttp stopped at its head
        self._resuming = False  # a fresh parser reads the framing-only head it was given
        self._rejection: bytes | None = None  # the answer to a request not forwarded, in its turn
        self._lingering = False
        self._served = False  # an exchange ran: from then on, waiting is idleness, not a late head
        self._since = 0.0  # loop time the current wait began: a head, idleness, lingering
        self._sniffing = True  # the first bytes may be HTTP/2's preface (h2c, prior knowledge)
        self._sniffed = b""

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peername = transport.get_extra_info("peername")
        self.peer = peername[0] if isinstance(peername, tuple) else None
        self.server.connections.add(self)
        self._since = self._last_read = self._loop.time()
        self._timer.watch()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        self._last_read = self._loop.time()
        if self._lingering or self._rejection is not None:
            return  # read and discarded: nothing more is answered on this connection
        if self._upgrading:  # waiting for the app's answer to an upgrade request
            self.upgrade_data += data
            self.pause_reading()
            return
        if self._sniffing:
            data = self._sniff(data)
            if not data:
                return
        self._feed(data)

    def _sniff(self, data: bytes) -> bytes:
        """A connection's first bytes: HTTP/2's preface hands it over to an H2ServerConnection
        (the same port serves both); anything else is HTTP/1.1's, returned to be parsed."""
        seen = self._sniffed + data
        if not PREFACE.startswith(seen[: len(PREFACE)]):
            self._sniffing, self._sniffed = False, b""
            return seen
        if len(seen) < len(PREFACE):
            self._sniffed = seen  # a preface cut short by the network: wait for the rest
            return b""
        self._timer.cancel()
        self.server.connections.discard(self)
        http2 = H2ServerConnection(self.server, self.peer)
        self.transport.set_protocol(http2)
        http2.connection_made(self.transport)
        http2.data_received(seen)
        return b""

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._timer.cancel()
        self.wake_drain()
        self.server.forget(self)
        if self.tunnel is not None:
            self.tunnel_lost()
        for exchange in (self.current, *self._queue):
            if exchange is not None and exchange.task is not None:
                exchange.task.cancel()  # the client is gone: so is its request
        self._queue.clear()

    # --- llhttp

    def _feed(self, data: bytes) -> None:
        self._unparsed += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            rest = data[exc.args[0] :]
        except httptools.HttpParserError as exc:
            self._reject(*refusal(exc))
            return
        else:
            if self._unparsed > MAX_UNPARSED_BYTES:  # one field line still incomplete, and huge
                self._reject(431, "the request has a head larger than 64 KiB")
            return
        self._upgraded(rest)

    def _upgraded(self, rest: bytes) -> None:
        """llhttp stopped after an upgrade request's head; `rest` is what came behind it."""
        exchange = self._receiving
        if self._upgrade_ignored and exchange is not None:
            # The request goes on as a plain one (RFC 9110 section 7.8 allows it), read on by a
            # fresh parser; a body is read from a head given to it that carries only its framing.
            self._upgrade_ignored = False
            self._parser = request_parser(self)
            if exchange.head.has_body:
                self._resuming = True
                self._feed(framing_only(exchange.head) + rest)
            elif rest:
                self._feed(rest)
        else:
            self._upgrading = True
            self.upgrade_data = rest

    def on_message_begin(self) -> None:
        self._in_head = True
        self._url = []
        self._fields.begin()
        if self.current is None and not self._resuming:
            self._since = self._loop.time()  # the idle wait is over: the head's begins
            self._timer.watch()

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._fields.count(len(url))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._fields.trailing = True  # what lines come now are trailers
        if self._resuming:  # the framing-only head after an ignored upgrade: its body follows
            self._resuming = False
            return
        head = read_request_head(self._parser, self._fields, b"".join(self._url))
        # llhttp stops at the head of an upgrade request; an ignored one goes on as plain.
        self._upgrade_ignored = self._parser.should_upgrade() and not head.upgrade
        exchange = self._receiving = Exchange(self, head)
        if self.current is None:
            self._start(exchange)
        else:
            self._queue.append(exchange)
            self.pause_reading()  # one pipelined request at a time

    def on_body(self, data: bytes) -> None:
        self._unparsed = 0
        if self._receiving is not None:
            self._receiving.body_data(data)

    def on_message_complete(self) -> None:
        self._unparsed = 0
        if self._upgrade_ignored:
            return  # llhttp ends an upgrade request at its head; a body is still to come
        if self._receiving is not None:
            self._receiving.body_done()

    # --- exchanges

    def _start(self, exchange: Exchange) -> None:
        self.current, self._served = exchange, True
        exchange.task = self._loop.create_task(self._run(exchange))
        if not exchange.body_complete:
            self._timer.watch()  # --body-timeout, from the last read

    async def _run(self, exchange: Exchange) -> None:
        try:
            await self.server.handler(exchange)
        except asyncio.CancelledError:
            exchange.close_after = True
        except Exception:
            log.exception("%s %s failed", exchange.head.method, exchange.head.target.decode(errors="replace"))
            if not exchange.started:
                exchange.respond_json(502, {"error": "the sidecar failed to relay this request"}, close=True)
            exchange.close_after = True
        finally:
            self._finished(exchange)

    def _finished(self, exchange: Exchange) -> None:
        if self.current is exchange:
            self.current = None
        if self.closed or self._lingering:
            return
        if not exchange.started and self._rejection is not None:
            self._send_rejection()  # it was cut off by what came after its head: this answers it
        elif exchange.close_after or not exchange.started or not exchange.body_complete:
            unread = self._queue or self._in_head or self._rejection is not None
            self._close(linger=not exchange.body_complete or bool(unread))
        elif self._queue:
            self._start(self._queue.popleft())
            if self._rejection is None:
                self.resume_reading()
        elif self._rejection is not None:
            self._send_rejection()
        else:
            self._since = self._loop.time()
            self._timer.watch()
            self.resume_reading()

    def _reject(self, status: int, message: str) -> None:
        """A request the core will not forward: answered after those before it, then the
        connection closes; what the client still sends is discarded."""
        receiving = self._receiving
        if receiving is not None and not receiving.body_complete:
            # The bad bytes were in its body: the app must not see it complete.
            if receiving in self._queue:
                self._queue.remove(receiving)
            elif receiving.task is not None:
                receiving.task.cancel()
                if not receiving.started:
                    self.current = None  # this rejection is its answer, now
        body = json.dumps({"error": message}).encode()
        headers = [(b"Content-Type", b"application/json"), (b"Content-Length", str(len(body)).encode())]
        self._rejection = serialize(status_line(status), [*headers, (b"Connection", b"close")]) + body
        self.pause_reading()
        if self.current is None:
            self._send_rejection()

    def _send_rejection(self) -> None:
        assert self._rejection is not None
        self.write(self._rejection)
        self._rejection = None
        self._close(linger=True)

    def _close(self, linger: bool) -> None:
        """Close after the last response; `linger` when the client may still be sending: keep
        reading (and discarding) until it stops, so that its kernel does not get a reset before
        it read the response."""
        if not linger:
            self.close()
            return
        self._lingering = True
        self._since = self._loop.time()
        self._queue.clear()
        self.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()  # after what is buffered: the response
        self._timer.watch()

    def is_idle(self) -> bool:
        return self.current is None and not self._in_head and self.tunnel is None and not self._lingering

    def close_when_idle(self) -> None:
        """Draining: close once idle for DRAIN_IDLE_SECONDS (at once if it has been already)."""
        self._timer.watch()

    def drain(self) -> None:
        """Draining: an idle connection closes (see DRAIN_IDLE_SECONDS); one in an exchange
        closes after its response (Connection: close)."""
        if self.is_idle():
            self.close_when_idle()

    def end_drain(self) -> None:
        """The drain is over: a spliced (upgraded) connection is cut."""
        if self.tunnel is not None:
            self.abort()

    # --- the one timer (sidecar.http.deadline)

    def _deadline(self) -> float | None:
        """When the current state's wait runs out (loop time), None if it has no bound here."""
        limits = self.server.limits
        if self.closed:
            return None
        if self._lingering:
            own: float | None = min(self._since + LINGER_SECONDS, self._last_read + LINGER_QUIET_SECONDS)
        elif self.current is not None:
            receiving = self._receiving
            owed = receiving is not None and not receiving.body_complete and not self._reading_paused
            own = self._last_read + limits.body_timeout if owed else None
        elif self._in_head:
            own = self._since + limits.header_timeout
        elif self.tunnel is not None:
            own = None
        elif self.server.draining:
            own = self._since + DRAIN_IDLE_SECONDS
        else:  # a new connection waits for its first head; one that was answered is idle
            own = self._since + (limits.idle_timeout if self._served else limits.header_timeout)
        if self._stalled_since is None:
            return own
        stalled = self._stalled_since + limits.body_timeout
        return stalled if own is None else min(own, stalled)

    def _expired(self) -> None:
        if self.closed:
            return
        if self._stalled_since is not None or self.current is not None:
            log.info("client %s sent or read nothing for --body-timeout: connection closed", self.peer)
            self.abort()  # its exchange is cancelled: the slot and the app connection are freed
        else:  # waiting for a head, idle, or lingering: nothing is lost
            self.close()
