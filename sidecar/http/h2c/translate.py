"""Between HTTP/1.1 and HTTP/2, as Envoy translates: an HTTP/1.1 request to an origin that speaks
h2c, and an HTTP/2 stream to an origin that speaks HTTP/1.1 (an app on `http://`, a provider
sidecar that does not publish h2c).

What HTTP/1.1 cannot carry is refused with a clear error, never half-translated: gRPC (it needs
HTTP/2's trailers and streams both ways at once); an upgrade (HTTP/2 has none). Trailers of a
response to an HTTP/1.1 client go in the chunked body's trailer section; a response with a
Content-Length has none to give, and its trailers are dropped with a log line.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from h2.errors import ErrorCodes

from sidecar.errors import UpstreamBroken
from sidecar.http.client import Origin, UpstreamConnection, UpstreamResponse
from sidecar.http.fields import NONE
from sidecar.http.h2c.exchange import H2Response, StreamExchange, h2_headers, marks_of
from sidecar.http.h2c.stream import Headers, Stream, StreamGone
from sidecar.http.head import BODYLESS_STATUS, framed, serialize, status_line
from sidecar.http.pool import Pool
from sidecar.http.target import join

if TYPE_CHECKING:
    from sidecar.http.exchange import Exchange

log = logging.getLogger("sidecar.http")

GRPC_OVER_HTTP1 = "gRPC cannot be carried over HTTP/1.1: the origin must speak HTTP/2 (--app h2c://...)"


# --- an HTTP/2 stream to an HTTP/1.1 origin


async def forward_to_http1(
    exchange: StreamExchange,
    pool: Pool,
    origin: Origin,
    host: bytes,
    headers: Headers,
    body: bytes | None,
    prefix: bytes,
) -> UpstreamResponse:
    if exchange.grpc:
        raise UpstreamBroken(GRPC_OVER_HTTP1)
    request = exchange.head
    # HTTP/2 may split Cookie into one field per crumb (RFC 9113 section 8.2.3); HTTP/1.1 has one.
    crumbs = [value for name, value in headers if name.lower() == b"cookie"]
    lines = [(name, value) for name, value in headers if name.lower() != b"cookie"]
    if crumbs:
        lines.append((b"cookie", b"; ".join(crumbs)))
    head = request.to_bytes(host, lines, prefix)
    upstream = await pool.request(origin, head, body=body or b"", method=request.method)
    if body is None and request.has_body:
        try:
            await _stream_to_http1(exchange.stream, upstream, request.chunked)
        except BaseException:
            upstream.abort()
            raise
    upstream.request_sent()
    return await pool.response(upstream)


async def _stream_to_http1(stream: Stream, upstream: UpstreamConnection, chunked: bool) -> None:
    while (piece := await stream.read()) is not None:
        if piece:
            upstream.transport.writelines(framed(piece, chunked))
            await upstream.drained()
        stream.consumed(len(piece))
    if chunked:
        upstream.write(b"0\r\n\r\n")


async def relay_http1(
    exchange: StreamExchange, response: UpstreamResponse, extra: Headers, strip_marks: bool
) -> None:
    upstream, head = response.connection, response.head
    if head.status == 101:
        response.close()
        raise UpstreamBroken("101 Switching Protocols cannot be relayed over HTTP/2")
    fields = head.end_to_end(head.marks if strip_marks else NONE)
    if head.content_length is not None and head.status not in BODYLESS_STATUS:
        fields.append((b"content-length", str(head.content_length).encode()))
    out = exchange.connection
    status = [(b":status", str(head.status).encode())]
    exchange.started, exchange.status = True, head.status
    no_body = exchange.head.method == "HEAD" or head.status in BODYLESS_STATUS
    try:
        if no_body:
            out.send_headers(exchange.stream, [*status, *h2_headers(fields), *h2_headers(extra)], end=True)
            await upstream.body_received
        else:
            out.send_headers(exchange.stream, [*status, *h2_headers(fields), *h2_headers(extra)])
            while (piece := await upstream.next_piece()) is not None:
                await out.send_data(exchange.stream, piece)
            out.end_stream(exchange.stream)
    except StreamGone:
        upstream.abort()
        raise
    except BaseException:
        upstream.abort()
        out.reset(exchange.stream, ErrorCodes.INTERNAL_ERROR)
        raise
    upstream.pool.release(upstream)


# --- an HTTP/1.1 request to an HTTP/2 origin


async def forward_to_h2(
    exchange: Exchange,
    pool: Pool,
    origin: Origin,
    host: bytes,
    headers: Headers,
    body: bytes | None,
    prefix: bytes,
) -> H2Response:
    request = exchange.head
    if request.upgrade:
        raise UpstreamBroken("an upgrade cannot be forwarded to an HTTP/2 origin")
    target = join(prefix, request.target) if prefix else request.target
    pseudo = [
        (b":method", request.method.encode()),
        (b":scheme", b"http"),
        (b":authority", host),
        (b":path", target),
    ]
    if request.content_length is not None and request.has_body:
        pseudo.append((b"content-length", str(request.content_length).encode()))
    stream = await pool.h2.open(origin, [*pseudo, *h2_headers(headers)], end=not request.has_body)
    try:
        if request.has_body:
            out = stream.endpoint
            if body is not None:
                await out.send_data(stream, body, end=True)
            else:
                while (piece := await exchange.next_piece()) is not None:
                    await out.send_data(stream, piece)
                out.end_stream(stream)
        await pool.h2.response(stream)
    except BaseException:
        stream.endpoint.reset(stream, ErrorCodes.CANCEL)
        raise
    return H2Response(stream, None)


async def relay_h2(
    exchange: Exchange, response: H2Response, extra: Headers, close: bool, strip_marks: bool
) -> None:
    stream = response.stream
    regular = [(name, value) for name, value in stream.headers if not name.startswith(b":")]
    if any(name == b"content-type" and value.startswith(b"application/grpc") for name, value in regular):
        response.close()
        raise UpstreamBroken(GRPC_OVER_HTTP1)
    drop = marks_of(stream.headers) if strip_marks else set()
    fields = [(name, value) for name, value in regular if name not in drop and name != b"content-length"]
    length = stream.header(b"content-length")
    no_body = exchange.head.method == "HEAD" or response.status in BODYLESS_STATUS
    chunked = length is None and not no_body and exchange.head.version == "1.1"
    framing: Headers = []
    if length is not None and response.status != 204:
        framing.append((b"Content-Length", length))
    elif chunked:
        framing.append((b"Transfer-Encoding", b"chunked"))
    elif not no_body:
        close = True  # an HTTP/1.0 client: the body ends with the connection
    framing.extend(exchange.connection_fields(close))
    exchange.started, exchange.status = True, response.status
    connection = exchange.connection
    connection.write(serialize(status_line(response.status), [*fields, *extra, *framing]))
    try:
        while (piece := await stream.read()) is not None:
            if piece and not no_body:
                connection.transport.writelines(framed(piece, chunked))
                await connection.drained()
            stream.consumed(len(piece))
    except StreamGone as exc:
        exchange.close_after = True
        connection.abort()
        raise UpstreamBroken(f"the origin reset the stream mid-response ({exc})") from exc
    except BaseException:
        exchange.close_after = True
        stream.endpoint.reset(stream, ErrorCodes.CANCEL)
        connection.abort()
        raise
    if chunked:
        trailers = [(name, value) for name, value in stream.trailers if not name.startswith(b":")]
        connection.write(serialize(b"0", trailers))
    elif stream.trailers:
        log.info("trailers of a response with a Content-Length dropped: HTTP/1.1 has nowhere to put them")
