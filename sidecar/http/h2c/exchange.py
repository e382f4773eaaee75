"""One HTTP/2 stream on a client connection, as the policy sees it: the same `Exchange` an
HTTP/1.1 request is (sidecar.http.exchange), so that the inbound proxy and the upstream listeners
decide the same way whatever the client speaks.

Forwarded to an origin that speaks HTTP/2 (an h2c app, a provider sidecar), the stream goes on
as a stream of one of the pool's multiplexed connections (sidecar.http.h2c.client): headers and
trailers as they are (`grpc-status`, `-bin` metadata), the body both ways as it arrives, each
piece's window given back only once it was written onward. To an HTTP/1.1 origin it is
translated (sidecar.http.h2c.translate). A refusal is the native one: RST_STREAM with
REFUSED_STREAM, which a gRPC client retries on its own; the sidecar's own answers to a gRPC
caller are gRPC statuses (a trailers-only response), as gRPC maps HTTP statuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING
from urllib.parse import quote

from h2.errors import ErrorCodes

from sidecar.errors import StreamRefused, UpstreamBroken, UpstreamError
from sidecar.http.fields import NONE
from sidecar.http.h2c.stream import Headers, Stream, StreamGone
from sidecar.http.head import HOP_BY_HOP, REQUEST_CORE_WRITTEN, RequestHead, get
from sidecar.http.target import join

if TYPE_CHECKING:
    from sidecar.http.client import Origin, UpstreamResponse
    from sidecar.http.h2c.server import H2ServerConnection
    from sidecar.http.pool import Pool

# Not forwarded on HTTP/2 (RFC 9113 section 8.2.2: connection-specific), besides HTTP/1.1's
# hop-by-hop headers; `te: trailers` alone is allowed, and gRPC needs it.
GRPC = b"application/grpc"
# gRPC's own mapping of the HTTP statuses it meets without a grpc-status (grpc's
# doc/http-grpc-status-mapping.md): what a gRPC caller gets when the sidecar answers itself.
GRPC_STATUS = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
GRPC_UNKNOWN = 2


def request_head(headers: Headers, ended: bool) -> RequestHead | None:
    """The request an HTTP/2 HEADERS frame opens (checked by sidecar.http.h2c.header_checks), as the
    policy reads requests; None for what the sidecar does not forward (CONNECT)."""
    method = path = authority = None
    regular: Headers = []
    length: int | None = None
    for name, value in headers:
        if name == b":method":
            method = value
        elif name == b":path":
            path = value
        elif name == b":authority":
            authority = value
        elif not name.startswith(b":"):
            regular.append((name, value))
            if name == b"content-length":
                length = int(value) if value.isdigit() else None
    if method is None or path is None or method == b"CONNECT":
        return None
    if authority is None:
        authority = get(regular, b"host")
    return RequestHead(
        method=method.decode("latin-1"),
        target=path,
        version="2",
        headers=regular,
        host=authority,
        keep_alive=True,
        upgrade=False,
        # No END_STREAM on the HEADERS: a body follows, framed by DATA frames (chunked when it
        # goes on over HTTP/1.1 without a length).
        chunked=not ended and length is None,
        content_length=0 if ended else length,
        dropped=NONE,
    )


def h2_headers(headers: Headers, drop: frozenset[bytes] | set[bytes] = frozenset()) -> Headers:
    """`headers` as HTTP/2 carries them: names in lower case, no connection-specific ones."""
    out: Headers = []
    for name, value in headers:
        key = name.lower()
        if key in REQUEST_CORE_WRITTEN or key in drop or key.startswith(b":"):
            if key == b"te" and value.lower() == b"trailers":
                out.append((b"te", b"trailers"))
            continue
        out.append((key, value))
    return out


def origin_fields(fields: Headers, strip_marks: bool, drop: frozenset[bytes] = HOP_BY_HOP) -> Headers:
    """An HTTP/2 origin's headers or trailers (lower case, checked on receipt) as they go on to
    the client, in one pass: without pseudo-fields and `drop` (hop-by-hop fields; a response's
    content-length stays, its DATA were checked against it), and without its X-Sidecar-* marks
    when `strip_marks`."""
    return [
        (name, value)
        for name, value in fields
        if name[:1] != b":" and name not in drop and not (strip_marks and name.startswith(b"x-sidecar-"))
    ]


def marks_of(headers: Headers) -> set[bytes]:
    return {name for name, _ in headers if name.startswith(b"x-sidecar-")}


class H2Response:
    """A response head from an HTTP/2 origin, with the stream its body is still to come on."""

    def __init__(self, stream: Stream, pump: asyncio.Task[None] | None) -> None:
        self.stream = stream
        self.pump = pump  # the request body, still going to the origin
        self.status = int(stream.header(b":status") or 0)

    def header(self, name: bytes) -> bytes | None:
        return self.stream.header(name)

    def close(self) -> None:
        """Not relayed (a refusal to retry elsewhere): the stream is reset."""
        if self.pump is not None:
            self.pump.cancel()
        self.stream.endpoint.reset(self.stream, ErrorCodes.CANCEL)


class StreamExchange:
    """One stream of an HTTP/2 client connection, and the response the handler gives it."""

    http2 = True

    def __init__(self, connection: H2ServerConnection, stream: Stream, head: RequestHead) -> None:
        self.connection = connection
        self.stream = stream
        self.head = head
        self.peer = connection.peer
        self.started = False
        self.status = 0
        self.grpc = (get(head.headers, b"content-type") or b"").startswith(GRPC)
        self.grpc_status: bytes | None = None  # the call's status, once its trailers went out
        self._upstream: Stream | None = None

    def header(self, name: bytes) -> bytes | None:
        return get(self.head.headers, name)

    async def read_body(self, limit: int) -> bytes | None:
        """The whole body when it has all arrived already and is at most `limit`, else None (it
        streams). Waiting for more would deadlock a streaming call that waits for an answer."""
        if not self.head.has_body:
            return b""
        body = self.stream.buffered()
        if body is None or len(body) > limit:
            return None
        self.stream.discard()
        return body

    async def next_piece(self) -> bytes | None:
        """The body piece by piece, as it arrives (as Exchange.next_piece), None at its end;
        raises StreamGone if the client reset the stream."""
        piece = await self.stream.read()
        if piece is not None:
            self.stream.consumed(len(piece))
        return piece

    async def forward(
        self,
        pool: Pool,
        origin: Origin,
        host: bytes,
        headers: Headers,
        body: bytes | None,
        prefix: bytes = b"",
    ) -> H2Response | UpstreamResponse:
        """Open a stream at `origin` (an h2c one) for this request and return its response head;
        the body goes on streaming to it. Raises UpstreamError (StreamRefused: never processed)."""
        self.stream.forwarded = True
        if not origin.h2c:
            from sidecar.http.h2c.translate import forward_to_http1

            return await forward_to_http1(self, pool, origin, host, headers, body, prefix)
        target = join(prefix, self.head.target) if prefix else self.head.target
        pseudo = [
            (b":method", self.head.method.encode()),
            (b":scheme", b"http"),
            (b":authority", host),
            (b":path", target),
        ]
        if (self.header(b"te") or b"").lower() == b"trailers":
            pseudo.append((b"te", b"trailers"))  # gRPC servers want it: the one TE HTTP/2 allows
        has_body = self.head.has_body
        if has_body and self.head.content_length is not None:  # the client's DATA were checked against it
            pseudo.append((b"content-length", str(self.head.content_length).encode()))
        upstream = await pool.h2.open(origin, [*pseudo, *h2_headers(headers)], end=not has_body)
        self._upstream = upstream
        pump = None
        if has_body and not self._sent_whole(upstream, body):
            pump = asyncio.get_running_loop().create_task(self._send_body(upstream, body))
        try:
            await pool.h2.response(upstream)
        except BaseException:
            if pump is not None:
                pump.cancel()
            upstream.endpoint.reset(upstream, ErrorCodes.CANCEL)
            raise
        return H2Response(upstream, pump)

    def _sent_whole(self, upstream: Stream, body: bytes | None) -> bool:
        """Whether the whole request body (`body`, or the client's if it has all arrived, without
        trailers) went to the origin's stream at once: a gRPC unary call's does, and then needs no
        task of its own to pump it. The client's window is given back once it is sent."""
        buffered = body is None
        if buffered:
            body = None if self.stream.trailers else self.stream.buffered()
        try:
            if body is None or not upstream.endpoint.send_whole(upstream, body):
                return False
        except StreamGone:
            return False  # the pump hears of it, as it would have
        if buffered:
            self.stream.discard()
        return True

    async def _send_body(self, upstream: Stream, body: bytes | None) -> None:
        """The request body to the origin's stream, as it arrives; trailers too."""
        out = upstream.endpoint
        try:
            if body is not None:
                await out.send_data(upstream, body, end=True)
                return
            while (piece := await self.stream.read()) is not None:
                await out.send_data(upstream, piece)
                self.stream.consumed(len(piece))
            out.end_stream(upstream, self.stream.trailers)
        except StreamGone:
            pass  # either side reset: the relay hears of it from the stream itself

    async def relay(
        self, response: H2Response | UpstreamResponse, extra: Headers, close: bool, strip_marks: bool = False
    ) -> None:
        """Send `response` to the client (its body and trailers as they arrive) with `extra`
        headers; `close` means nothing on HTTP/2 (draining is GOAWAY's business). Raises
        UpstreamError if the origin's stream broke before its end."""
        if not isinstance(response, H2Response):
            from sidecar.http.h2c.translate import relay_http1

            await relay_http1(self, response, extra, strip_marks)
            return
        upstream = response.stream
        status = (b":status", b"%d" % response.status)
        headers = [status, *origin_fields(upstream.headers, strip_marks), *h2_headers(extra)]
        self.started, self.status = True, response.status
        out = self.connection
        try:
            if upstream.ended and upstream.buffered() == b"" and not upstream.trailers:
                self.grpc_status = get(upstream.headers, b"grpc-status")  # trailers-only
                out.send_headers(self.stream, headers, end=True)
                return
            out.send_headers(self.stream, headers)
            while (piece := await upstream.read()) is not None:
                await out.send_data(self.stream, piece)
                upstream.consumed(len(piece))
            trailers = None
            if upstream.trailers:  # no framing field in trailers (RFC 9110 section 6.5.1)
                trailers = origin_fields(upstream.trailers, strip_marks, REQUEST_CORE_WRITTEN)
            if trailers:
                self.grpc_status = get(trailers, b"grpc-status")
            out.end_stream(self.stream, trailers)
        except StreamGone as exc:
            if self.stream.reset_code is not None:
                raise  # the client went: the handler's task is cancelled anyway
            out.reset(self.stream, ErrorCodes.INTERNAL_ERROR)
            raise UpstreamBroken(f"the origin reset the stream mid-response ({exc})") from exc
        finally:
            if response.pump is not None and not response.pump.done() and self.stream.reset_code is None:
                # The origin answered before the request's body ended (a gRPC server may): what
                # the client still sends is not wanted (RFC 9113 section 8.1).
                response.pump.cancel()

    def refuse(self, body: object, headers: Headers) -> None:
        """Not forwarded, and the client may send it elsewhere: REFUSED_STREAM."""
        self.started, self.status = True, 503
        self.connection.reset(self.stream, ErrorCodes.REFUSED_STREAM)

    def respond(self, status: int, headers: Headers, body: bytes = b"", close: bool = False) -> None:
        """Answer from the sidecar itself; a gRPC caller gets a gRPC status."""
        self.started, self.status = True, status
        out = self.connection
        with contextlib.suppress(StreamGone):
            if self.grpc:
                code = GRPC_STATUS.get(status, GRPC_UNKNOWN)
                message = _error_text(body) or f"HTTP {status}"
                self.grpc_status = str(code).encode()
                grpc = [(b"content-type", GRPC), (b"grpc-status", self.grpc_status)]
                grpc.append((b"grpc-message", quote(message, safe=" ").encode()))
                extra = h2_headers(headers, drop={b"content-type"})  # a gRPC answer's is gRPC's
                out.send_headers(self.stream, [(b":status", b"200"), *grpc, *extra], end=True)
                return
            fields = [(b":status", str(status).encode()), *h2_headers(headers)]
            if status != 204:
                fields.append((b"content-length", str(len(body)).encode()))
            if self.head.method == "HEAD" or not body:
                out.send_headers(self.stream, fields, end=True)
            else:
                out.send_headers(self.stream, fields)
                out.send_small(self.stream, body)

    def respond_json(
        self, status: int, body: object, headers: Headers | None = None, close: bool = False
    ) -> None:
        payload = json.dumps(body).encode()
        self.respond(status, [(b"content-type", b"application/json"), *(headers or [])], payload, close)

    def finish(self) -> None:
        """The handler is done: a stream it left open is reset (and the origin's with it), and
        what the client sent that nobody read gives its window back."""
        self.stream.discard()
        if self._upstream is not None and not self._upstream.closed:
            self._upstream.endpoint.reset(self._upstream, ErrorCodes.CANCEL)
        if self.stream.closed:
            return
        if self.stream.sent_end:
            # Answered in full while the client still sends: it may stop (RFC 9113 section 8.1).
            self.connection.reset(self.stream, ErrorCodes.NO_ERROR)
        else:
            self.connection.reset(
                self.stream, ErrorCodes.CANCEL if self.started else ErrorCodes.INTERNAL_ERROR
            )


def _error_text(body: bytes) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(body)["error"])
    return ""


__all__ = ["H2Response", "StreamExchange", "StreamRefused", "UpstreamError", "request_head"]
