"""One request on a client connection, and the response the handler gives it.

An `Exchange` is what the policy (the inbound proxy, an upstream listener) works with: the
request head; its body, read whole when small enough to be sent again (`read_body`), or
streamed to the origin as it arrives; `forward` to an origin through a `Pool`; `relay` of the
origin's response (its body as it arrives, 1xx on the way, a 101 spliced); or `respond` from the
sidecar itself.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from sidecar.errors import UpstreamBroken
from sidecar.http.client import Origin, UpstreamConnection, UpstreamResponse
from sidecar.http.fields import NONE
from sidecar.http.flow import HIGH_WATER
from sidecar.http.head import (
    BODYLESS_STATUS,
    Headers,
    RequestHead,
    framed,
    get,
    serialize,
    status_line,
    upgrade_headers,
)
from sidecar.http.pool import Pool

if TYPE_CHECKING:
    from sidecar.http.h2c.exchange import H2Response
    from sidecar.http.server import ServerConnection

# A response body up to this size (with a Content-Length) is read whole before its head goes
# out: one write instead of several, and a 502 is still possible if the app breaks off.
WHOLE_BODY_BYTES = HIGH_WATER


class Exchange:
    """One request on a client connection, and the response the handler gives it."""

    http2 = False
    grpc = False  # gRPC is HTTP/2's only
    grpc_status: bytes | None = None

    def __init__(self, connection: ServerConnection, head: RequestHead) -> None:
        self.connection = connection
        self.head = head
        self.peer = connection.peer
        self.started = False  # the response head went out
        self.status = 0  # the response's status, once started
        self.close_after = False
        self.body_complete = not head.has_body
        self._body: list[bytes] = []
        self._body_size = 0
        self._body_sink: UpstreamConnection | None = None
        self._body_waiter: asyncio.Future[None] | None = None
        self._piecewise = False  # the body is taken by next_piece()
        self.task: asyncio.Task[None] | None = None

    def header(self, name: bytes) -> bytes | None:
        return get(self.head.headers, name)

    # --- the request body

    async def read_body(self, limit: int) -> bytes | None:
        """The whole body when it has a Content-Length of at most `limit`, else None (it will
        stream). A body read here can be sent again: to another instance, say."""
        length = self.head.content_length
        if self.head.chunked or length is None or length > limit:
            return None if self.head.has_body else b""
        if not self.body_complete:
            expect = self.header(b"expect") if self.head.version == "1.1" else None
            if (expect or b"").lower() == b"100-continue":
                # The client waits for this before sending the body we wait for; the request then
                # goes on with its body and without the Expect header (RFC 9110 section 10.1.1).
                self.connection.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                self.head.continued = True
            self._body_waiter = asyncio.get_running_loop().create_future()
            self.connection.resume_reading()
            await self._body_waiter
        body = b"".join(self._body)
        self._body, self._body_size = [], 0
        return body

    def body_data(self, data: bytes) -> None:
        if self._body_sink is not None:
            if not self._body_sink.closed:  # else the exchange learns it from the response
                self._body_sink.transport.writelines(framed(data, self.head.chunked))
            return
        self._body.append(data)
        self._body_size += len(data)
        if self._piecewise and self._body_waiter is not None and not self._body_waiter.done():
            self._body_waiter.set_result(None)
        if self._body_size > HIGH_WATER and (self._body_waiter is None or self._piecewise):
            self.connection.pause_reading()

    async def next_piece(self) -> bytes | None:
        """The body piece by piece, for a relay that is not a byte stream (to HTTP/2): what has
        arrived, None at its end. The client is read only while pieces are taken."""
        self._piecewise = True
        while not self._body:
            if self.body_complete:
                return None
            self._body_waiter = asyncio.get_running_loop().create_future()
            self.connection.resume_reading()
            await self._body_waiter
        pieces, self._body, self._body_size = self._body, [], 0
        return b"".join(pieces)

    def body_done(self) -> None:
        self.body_complete = True
        if self._body_waiter is not None and not self._body_waiter.done():
            self._body_waiter.set_result(None)
        if self._body_sink is not None:
            self._finish_body(self._body_sink)

    def _stream_body_to(self, upstream: UpstreamConnection) -> None:
        pieces = [piece for data in self._body for piece in framed(data, self.head.chunked)]
        self._body, self._body_size = [], 0
        if pieces:
            upstream.transport.writelines(pieces)
        self._body_sink = upstream
        upstream.feed_from(self.connection)  # a slow app holds back the client's upload
        if self.body_complete:
            self._finish_body(upstream)
        else:
            self.connection.resume_reading()

    def _finish_body(self, upstream: UpstreamConnection) -> None:
        if self.head.chunked:
            upstream.write(b"0\r\n\r\n")
        upstream.feed_from(None)
        self._body_sink = None
        upstream.request_sent()

    # --- forwarding and relaying

    async def forward(
        self,
        pool: Pool,
        origin: Origin,
        host: bytes,
        headers: Headers,
        body: bytes | None,
        prefix: bytes = b"",
    ) -> UpstreamResponse | H2Response:
        """Send this request to `origin` (with `host`, the end-to-end `headers` to forward, its
        target under `prefix`; `body` as read by `read_body`, or None to stream it) and return
        the response head; 1xx responses on the way go to the client at once. An origin that
        speaks HTTP/2 gets it translated (sidecar.http.h2c.translate)."""
        if origin.h2c:
            from sidecar.http.h2c.translate import forward_to_h2

            return await forward_to_h2(self, pool, origin, host, headers, body, prefix)
        head = self.head.to_bytes(host, headers, prefix)
        sent = b"" if body is None else body
        upstream = await pool.request(
            origin, head, body=sent, method=self.head.method, informational=self._info
        )
        if body is None and self.head.has_body:
            self._stream_body_to(upstream)
        else:
            upstream.request_sent()
        return await pool.response(upstream)

    def _info(self, head: bytes) -> None:
        if self.head.version == "1.1":  # an HTTP/1.0 client knows no 1xx (RFC 9110 section 15.2)
            self.connection.write(head)

    async def relay(
        self, response: UpstreamResponse | H2Response, extra: Headers, close: bool, strip_marks: bool = False
    ) -> None:
        """Send `response` to the client, its body as it arrives, with `extra` headers; `close`
        ends the client connection after it; `strip_marks` removes the X-Sidecar-* headers the
        origin sent. Raises UpstreamError if the body is cut off (the client connection is then
        closed: the status line is already out)."""
        if not isinstance(response, UpstreamResponse):
            from sidecar.http.h2c.translate import relay_h2

            await relay_h2(self, response, extra, close, strip_marks)
            return
        upstream, head = response.connection, response.head
        if head.status == 101:
            await self._splice(response, strip_marks)
            return
        no_body = self.head.method == "HEAD" or head.status in BODYLESS_STATUS
        headers = head.end_to_end(head.marks if strip_marks else NONE)
        chunked = False
        if head.content_length is not None:
            if head.status != 204:  # RFC 9110 section 8.6: a 204 has none
                headers.append((b"Content-Length", str(head.content_length).encode()))
        elif not no_body:
            if self.head.version == "1.1":
                chunked = True
                codings = b"chunked" if head.codings is None else head.codings + b", chunked"
                headers.append((b"Transfer-Encoding", codings))
            else:
                close = True  # an HTTP/1.0 client: the body ends with the connection
        if head.status == 426:  # Upgrade Required names the protocols to upgrade to
            headers.extend(upgrade_headers(head.headers))
        length = head.content_length
        if not no_body and length is not None and length <= WHOLE_BODY_BYTES:
            # Small: have it all before the status line goes out, so a response cut short can
            # still be answered with a clean 502.
            try:
                await upstream.body_received
            except BaseException:
                upstream.abort()
                raise
        headers.extend(extra)
        # An upgrade refused (no 101): what the client sends next may already be the other
        # protocol, so this connection carries no further request. An early response (the app
        # answered before the request's body ended): the rest of the body is discarded, and
        # the connection closes after it (connection_fields).
        headers.extend(self.connection_fields(close or self.head.upgrade))
        self.started, self.status = True, head.status
        first = serialize(status_line(head.status, head.reason), headers)
        done = upstream.pipe_to(self.connection, first, chunked)
        try:
            await done
        except BaseException:
            self.close_after = True
            upstream.abort()
            self.connection.abort()
            raise
        finally:
            self.connection.feed_from(None)
        if chunked:
            self.connection.write(b"0\r\n\r\n")
        if not self.body_complete or self._body_sink is not None:
            upstream.reusable = False  # the app answered before the whole request was sent
            self.close_after = True
            self._body_sink = None
        upstream.pool.release(upstream)

    async def _splice(self, response: UpstreamResponse, strip_marks: bool) -> None:
        upstream = response.connection
        if not self.head.upgrade:
            response.close()
            raise UpstreamBroken("101 Switching Protocols to a request that asked for no upgrade")
        marks = response.head.marks if strip_marks else NONE
        headers = [*response.head.end_to_end(marks), *upgrade_headers(response.head.headers)]
        self.started = self.close_after = True
        self.status = 101
        self.connection.write(serialize(status_line(101, response.head.reason), headers))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.connection.splice(upstream, done)
        # Bytes that came right behind either head belong to the new protocol already.
        if upstream.upgrade_data:
            self.connection.write(upstream.upgrade_data)
        if self.connection.upgrade_data:
            upstream.write(self.connection.upgrade_data)
        try:
            await done
        finally:
            upstream.abort()
            self.connection.abort()

    def connection_fields(self, close: bool) -> Headers:
        """The response's own connection field: `Connection: close` if the connection ends after
        it (`close`, or the client, an unread request body or a server that stopped listening
        says so; `close_after` is then set), else `Keep-Alive: timeout=N` with --idle-timeout,
        so that a client pooling the connection stops reusing it before the sidecar closes it
        (a consumer sidecar does: sidecar.http.client). An HTTP/1.0 client that asked for
        keep-alive is told `Connection: keep-alive`: without it, it takes the connection for
        closed after the response (RFC 9112 appendix C.2.2)."""
        server = self.connection.server
        if close or not self.head.keep_alive or not self.body_complete or server.stopping:
            self.close_after = True
            return [(b"Connection", b"close")]
        if self.head.version == "1.0":
            return [(b"Connection", b"keep-alive"), (b"Keep-Alive", server.keep_alive)]
        return [(b"Keep-Alive", server.keep_alive)]

    # --- local answers

    def respond(self, status: int, headers: Headers, body: bytes = b"", close: bool = False) -> None:
        """Answer from the sidecar itself (a refusal, an error): the whole response at once."""
        framing = [] if status == 204 else [(b"Content-Length", str(len(body)).encode())]
        framing.extend(self.connection_fields(close))
        self.started, self.status = True, status
        if self.head.method == "HEAD":
            body = b""
        self.connection.write(serialize(status_line(status), [*headers, *framing]) + body)

    def refuse(self, body: object, headers: Headers) -> None:
        """Not forwarded, and the client may send it elsewhere: 503 (the caller's headers say
        it was refused: X-Sidecar-Refused)."""
        self.respond_json(503, body, headers, close=True)

    def respond_json(
        self, status: int, body: object, headers: Headers | None = None, close: bool = False
    ) -> None:
        payload = json.dumps(body).encode()
        self.respond(status, [(b"Content-Type", b"application/json"), *(headers or [])], payload, close)
