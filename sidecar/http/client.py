"""The client half of the core: one keep-alive connection to the app or to a provider instance,
which the pool (sidecar.http.pool) lends to one request at a time.

A request head (and a body, or a stream fed by the client's connection) goes out on it, and the
response head is awaited; 1xx heads on the way are handed to a callback, so `100 Continue` and
`103 Early Hints` reach the client. The response body then flows through `pipe_to()`, written to
the client as it is read. A connection goes back to the pool only after a complete response on a
connection both sides keep alive; anything else closes it.

An origin closes a keep-alive connection that stayed idle too long, and a request sent on it at
that moment is lost: the origin may have read it before closing, so a POST cannot be sent again
(RFC 9110 section 9.2.2), and its client gets a 502. So a pooled connection is reused only well
within the origin's idle timeout (`reuse_window`): the one it announces with `Keep-Alive:
timeout=N` (Node.js, Tomcat and every provider sidecar do), and otherwise UNANNOUNCED_REUSE_SECONDS,
under the shortest defaults of servers that announce nothing (gunicorn's 2 s, uvicorn's 5 s).
Past that, the pool opens a new connection instead, which costs a connect.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import httptools

from sidecar.errors import UpstreamBroken, UpstreamTimeout
from sidecar.http.fields import MAX_RESPONSE_LINES, MAX_UNPARSED_BYTES, BadMessage, FieldReader
from sidecar.http.flow import HIGH_WATER, Endpoint
from sidecar.http.head import (
    BODYLESS_STATUS,
    CORE_WRITTEN,
    ResponseHead,
    framed,
    serialize,
    status_line,
    without,
)

if TYPE_CHECKING:
    from sidecar.http.pool import Pool

log = logging.getLogger("sidecar.http")

Informational = Callable[[bytes], None]

# How long an idle connection to an origin that announced no keep-alive timeout is reused.
UNANNOUNCED_REUSE_SECONDS = 1.5


def reuse_window(keep_alive: bytes | None) -> float:
    """How long an idle connection may be reused, given the origin's `Keep-Alive` line (None:
    it sent none): a second less than the timeout it announces (half of one under 2 s), so that
    a request never crosses the origin's own close."""
    for parameter in (keep_alive or b"").split(b","):
        name, _, value = parameter.partition(b"=")
        if name.strip().lower() == b"timeout" and value.strip().isdigit():
            timeout = int(value.strip())
            return max(timeout / 2, timeout - 1.0)
    return UNANNOUNCED_REUSE_SECONDS


@dataclass(frozen=True, slots=True)
class Origin:
    host: str
    port: int
    tls: ssl.SSLContext | None = field(default=None, compare=False)
    h2c: bool = False  # it speaks HTTP/2 with prior knowledge (sidecar.http.h2c.client)

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class UpstreamConnection(Endpoint):
    """One connection to an origin; carries one request at a time.

    The origin speaks only when spoken to: a response ends where its framing says (RFC 9112
    section 6.3; a HEAD, 1xx, 204 or 304 response at its head), and any byte after it, or on
    the connection while it is idle in the pool, belongs to no request. Such a connection is
    closed and what it sent reaches no client (nginx: "upstream sent more data than specified";
    Go: "Unsolicited response received on idle HTTP channel"). It is pooled again only after a
    response that both sides keep alive: HTTP/1.1 without `Connection: close`, or HTTP/1.0 with
    `keep-alive`, and framed by length or chunks.
    """

    on_header: Callable[[bytes, bytes], None]

    def __init__(self, pool: Pool, origin: Origin) -> None:
        super().__init__()
        self.pool = pool
        self.origin = origin
        self.reusable = False  # set once a response completed on a keep-alive connection
        self.reused = False  # taken from the pool: the peer may have closed it meanwhile
        self.idle_since = 0.0  # loop time it went back to the pool
        self.reuse_within = UNANNOUNCED_REUSE_SECONDS  # per the origin's last response (reuse_window)
        self.counted = False  # counts against the pool's limit until it closes
        self._fields = FieldReader(MAX_RESPONSE_LINES)
        self.on_header = self._fields.on_header  # llhttp's callback, bound before the parser is made
        self._owed = False  # a request went out and its response has not ended
        self._request_out = False  # the whole request was sent: the app owes an answer
        self._parser = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[ResponseHead] | None = None
        self._done: asyncio.Future[None] | None = None
        self._informational: Informational | None = None
        self._interim = False  # the message being parsed is a 1xx
        self._reason = b""
        self._skip_body = False  # HEAD: the response has no body whatever it says
        self._close_delimited = False
        self._keep_alive = False
        self._unparsed = 0  # bytes fed since the parser last showed progress (a body, a message)
        self._pending: list[bytes] = []  # body bytes read before the client side was attached
        self._pending_size = 0
        self._piece: asyncio.Future[None] | None = None  # awaited by next_piece()
        self._sink: Endpoint | None = None
        self._chunked_out = False
        self.upgrade_data = b""  # bytes after a 101 response head: the new protocol's first
        self._upgraded = False

    # --- sending

    def send(self, head: bytes, body: bytes, method: str, informational: Informational | None) -> None:
        """Write a request; `head_received()` then waits for its response head."""
        self.reusable = self._request_out = False
        self._owed = True
        self._head, self._done = self._loop.create_future(), self._loop.create_future()
        self._done.add_done_callback(_retrieved)  # a body nobody relays may fail unheard
        self._informational = informational
        self._skip_body = method == "HEAD"
        self._pending, self._pending_size = [], 0
        self._sink = None
        self.transport.write(head + body if body else head)

    def request_sent(self) -> None:
        """The whole request is out: from now on the app owes an answer (the timeout runs)."""
        self._request_out = True
        self._last_read = self._loop.time()
        self._timer.watch()

    async def head_received(self) -> ResponseHead:
        assert self._head is not None
        return await self._head

    @property
    def body_received(self) -> asyncio.Future[None]:
        """Resolves once the whole response body has arrived (read so far into memory unless
        `pipe_to` was called: up to HIGH_WATER bytes, then reading pauses)."""
        assert self._done is not None
        return self._done

    # --- the response body, written to the client's connection as it arrives

    def pipe_to(self, sink: Endpoint, first: bytes, chunked: bool) -> asyncio.Future[None]:
        """Write `first` (the client's response head) and the body read so far to `sink`, then
        the rest as it arrives; the future resolves when the body is complete."""
        assert self._done is not None
        self._chunked_out = chunked
        pieces = [first]
        for data in self._pending:
            pieces.extend(framed(data, chunked))
        self._pending, self._pending_size = [], 0
        sink.transport.writelines(pieces)
        self._sink = sink
        sink.feed_from(self)
        self.resume_reading()
        return self._done

    async def next_piece(self) -> bytes | None:
        """The body piece by piece, for a relay that is not a byte stream (to HTTP/2): what has
        arrived, None at the end; raises UpstreamError if it broke off."""
        assert self._done is not None
        while not self._pending:
            if self._done.done():
                self._done.result()
                return None
            self._piece = self._loop.create_future()
            self.resume_reading()
            await asyncio.wait((self._piece, self._done), return_when=asyncio.FIRST_COMPLETED)
        pieces, self._pending, self._pending_size = self._pending, [], 0
        return b"".join(pieces)

    # --- asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.write(data)
            return
        if self._upgraded:  # a 101 came: until the splice, what follows is the new protocol's
            self.upgrade_data += data
            self.pause_reading()
            return
        self._last_read = self._loop.time()
        self._unparsed += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            self._upgraded = True
            self.upgrade_data = data[exc.args[0] :]
            self._request_out = False
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, BadMessage):
                self._broken(f"sent a response with {cause}" if cause.status == 431 else str(cause))
            else:
                self._broken(f"sent an invalid response: {exc}")
        else:
            if self._unparsed > MAX_UNPARSED_BYTES:
                self._broken("sent a response with a head larger than 64 KiB")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._timer.cancel()
        self.wake_drain()
        self.pool.forget(self)
        if self.tunnel is not None or self.tunnel_done is not None:
            self.tunnel_lost()
            return
        if self._owed:
            assert self._head is not None
            if self._close_delimited and self._head.done():
                self._settle()  # a body that ends with the connection
            else:
                self._fail(UpstreamBroken(f"{self.origin} closed the connection", reused=self.reused))

    # --- llhttp callbacks

    def on_message_begin(self) -> None:
        if not self._owed:
            raise BadMessage(502, "sent data after the end of its response")
        self._fields.begin()

    def on_status(self, reason: bytes) -> None:
        self._reason = reason
        self._fields.count(len(reason))

    def on_headers_complete(self) -> None:
        status, fields = self._parser.get_status_code(), self._fields
        fields.trailing = True
        if 100 <= status < 200 and status != 101:
            self._interim = True
            if self._informational is not None:
                # Passed on as it is but for its hop-by-hop fields and any sidecar mark: a mark
                # means something on a final response only, and there only the sidecar's own.
                lines = without(fields.lines, CORE_WRITTEN, fields.connection, fields.marks)
                self._informational(serialize(status_line(status, self._reason), lines))
            return
        self.reuse_within = reuse_window(fields.keep_alive)
        chunked = fields.chunked
        length = int(fields.length) if fields.length is not None and not fields.codings else None
        no_body = self._skip_body or status in BODYLESS_STATUS or status == 101
        self._close_delimited = not (no_body or chunked or length is not None)
        if self._parser.get_http_version() == "1.1":
            keep_alive = b"close" not in fields.connection
        else:  # HTTP/1.0: only when asked for, and never with Transfer-Encoding (RFC 9112 6.1)
            keep_alive = b"keep-alive" in fields.connection and not fields.codings
        self._keep_alive = keep_alive and not self._close_delimited
        codings = fields.codings[:-1] if chunked else fields.codings
        head = ResponseHead(
            status,
            self._reason,
            fields.lines,
            chunked,
            length,
            dropped=fields.connection,
            marks=fields.marks,
            codings=b", ".join(codings) if codings else None,
        )
        assert self._head is not None
        if not self._head.done():
            self._head.set_result(head)
        if no_body and status != 101:
            self._settle()
            if self._skip_body:  # llhttp cannot know the request was HEAD: it would read a body
                self._parser = httptools.HttpResponseParser(self)

    def on_body(self, data: bytes) -> None:
        self._unparsed = 0
        if not self._owed:
            raise BadMessage(502, "sent a body with a response that has none")
        if self._sink is not None:
            if not self._sink.closed:  # else the client is gone, and its exchange with it
                self._sink.transport.writelines(framed(data, self._chunked_out))
            return
        self._pending.append(data)
        self._pending_size += len(data)
        if self._piece is not None and not self._piece.done():
            self._piece.set_result(None)
        if self._pending_size > HIGH_WATER:
            self.pause_reading()

    def on_message_complete(self) -> None:
        self._unparsed = 0
        if self._interim:
            self._interim = False
        elif self._owed:
            self._settle()

    # --- internals

    def _settle(self) -> None:
        """The response is complete: from here on, a byte from the origin belongs to no request."""
        self._owed = self._request_out = False
        self.reusable = self._keep_alive
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _broken(self, what: str) -> None:
        """The origin sent what cannot be relayed: whoever waits learns it, the connection closes."""
        if self._owed:
            self._fail(UpstreamBroken(f"{self.origin} {what}"))
        else:
            log.warning("%s %s: connection closed, nothing of it relayed", self.origin, what)
        self.reusable = False
        self.abort()

    def _fail(self, error: Exception) -> None:
        """Tell whoever waits (for the head, or for the body being piped) what went wrong."""
        self._owed = self._request_out = False
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        elif self._done is not None and not self._done.done():
            self._done.set_exception(error)

    def _deadline(self) -> float | None:
        """While a response is owed: --app-timeout (or --upstream-timeout) of silence from the
        origin, or of it reading nothing of the request (nginx's proxy_read_timeout and
        proxy_send_timeout); a pause of ours (a slow client) does not count."""
        timeout = self.pool.app_timeout
        if timeout is None or not self._owed or self.closed:
            return None
        if self._stalled_since is not None:
            return self._stalled_since + timeout
        if self._request_out and not self._reading_paused:
            return self._last_read + timeout
        return None

    def _expired(self) -> None:
        silent = "read nothing of the request" if self._stalled_since is not None else "sent nothing"
        self._fail(UpstreamTimeout(f"{self.origin} {silent} for {self.pool.app_timeout:g} s"))
        self.abort()


def _retrieved(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


class UpstreamResponse:
    """A response head from an origin, with the connection its body is still to come on."""

    def __init__(self, connection: UpstreamConnection, head: ResponseHead) -> None:
        self.connection = connection
        self.head = head

    @property
    def status(self) -> int:
        return self.head.status

    def header(self, name: bytes) -> bytes | None:
        return self.head.get(name)

    def close(self) -> None:
        """Not relayed (a refusal to retry elsewhere, say): drop the connection."""
        self.connection.abort()
