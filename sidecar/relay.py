"""HTTP relaying shared by the inbound proxy and the upstream listeners: the headers between
sidecars, which headers cross a proxy, and copying an app's response back to the caller.

Bodies stream: up to `SMALL_BODY_BYTES` of a response with a known length is read whole and
sent in one write (headers and body together: streaming it would cost three writes, most of a
small request's time in the proxy); anything larger or chunked is copied chunk by chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.config import HostPort
from sidecar.errors import StartupError

log = logging.getLogger("sidecar.relay")

CONSUMER_HEADER = "X-Sidecar-Consumer"
CLOSING_HEADER = "X-Sidecar-Closing"
REFUSED_HEADER = "X-Sidecar-Refused"
# RFC 9110 section 7.6.1 plus the de facto ones: they describe one connection, not the message.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Methods whose request may be sent again when a connection broke before an answer came (RFC 9110
# 9.2.2): a pooled keep-alive connection the server had just closed, say. Browsers and Go's
# net/http apply the same rule.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# Bounded, so memory stays bounded: 1024 connections x 64 KiB = 64 MiB at most.
SMALL_BODY_BYTES = 64 * 1024
# When the sidecar stops, requests still running (after a drain that timed out) get this long.
SHUTDOWN_GRACE_SECONDS = 1.0

Mark = Callable[[web.StreamResponse], None]


def end_to_end(headers: CIMultiDictProxy[str], drop: Iterable[str] = ()) -> CIMultiDict[str]:
    """The headers that describe the message, not the connection, minus `drop` (lower case)."""
    dropped = HOP_BY_HOP.union(drop)
    return CIMultiDict((name, value) for name, value in headers.items() if name.lower() not in dropped)


async def relay_response(
    request: web.Request, upstream: aiohttp.ClientResponse, mark: Mark
) -> web.StreamResponse:
    """Copy `upstream` back to the caller of `request`; `mark` may add headers first."""
    headers = end_to_end(upstream.headers)
    length = upstream.content_length
    if length is not None and length <= SMALL_BODY_BYTES and request.method != "HEAD":
        del headers["Content-Length"]  # aiohttp sets it from the body
        try:
            body = await upstream.read()
        except (aiohttp.ClientError, ConnectionError) as exc:
            # Cut off mid-body, before we sent anything: a clean 502 is still possible.
            log.info("response to %s %s cut short: %s", request.method, request.path, exc.__class__.__name__)
            return web.json_response({"error": "the response was cut off mid-body"}, status=502)
        small = web.Response(status=upstream.status, reason=upstream.reason, body=body)
        small.headers.extend(headers)
        mark(small)
        return small
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    mark(response)
    try:
        await response.prepare(request)
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
    except (aiohttp.ClientError, ConnectionError) as exc:
        # Mid-stream: either side went away. The status line is already sent, so the only
        # honest signal left to the caller is closing the connection.
        log.info("stream of %s %s broken: %s", request.method, request.path, exc.__class__.__name__)
        upstream.close()
        response.force_close()
    return response


async def start_server(app: web.Application, address: HostPort, option: str) -> web.AppRunner:
    """Serve `app` on `address`; a port that cannot be bound is a StartupError naming `option`."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_SECONDS)
    await runner.setup()
    try:
        await web.TCPSite(runner, address.host, address.port, reuse_address=True).start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(f"{option} {address}: cannot listen ({exc.strerror})") from exc
    return runner
