"""Admin API routes (default 127.0.0.1:16688): probes, shutdown, weight, status, metrics, and
their OpenAPI document (sidecar/app/openapi.py) at /openapi.json, served by the sidecar's own
HTTP core (sidecar.http), as the data path is.

Mutating endpoints answer 403 unless the caller's address is in --allow or it sends
`Authorization: Bearer <--token>`. Every error is a JSON `{"error": ...}` with a 4xx status
that says what was wrong; nothing a caller sends can produce a 500 or stop the sidecar.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import unquote_to_bytes

from prometheus_client import CONTENT_TYPE_LATEST

from sidecar.app.status import StatusView
from sidecar.config import Settings
from sidecar.http import AnyExchange, Headers, HttpServer, Limits
from sidecar.http.h2c.stream import StreamGone
from sidecar.protocol import notice as notice_format
from sidecar.protocol.metadata import MAX_WEIGHT
from sidecar.protocol.notice import OfflineNotice
from sidecar.provider.lifecycle import Lifecycle

log = logging.getLogger("sidecar.admin")

# Admin bodies are a few bytes of JSON; anything much larger is a mistake or an attack.
MAX_BODY_BYTES = 64 * 1024
JSON = b"application/json"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: bytes
    content_type: bytes | None = JSON
    headers: Headers | None = None


def json_reply(body: object, status: int = 200) -> Reply:
    return Reply(status, json.dumps(body).encode())


def json_error(status: int, message: str, headers: Headers | None = None) -> Reply:
    return Reply(status, json.dumps({"error": message}).encode(), headers=headers)


class BadBody(Exception):
    """A request body that cannot be used; answered 400 with the message (413 if too large)."""

    status = 400


class TooLarge(BadBody):
    status = 413


class Request:
    """What an endpoint sees of a request: who sent it, its headers and its JSON body."""

    def __init__(self, exchange: AnyExchange) -> None:
        self.exchange = exchange
        self.remote = exchange.peer or ""

    def header(self, name: bytes) -> bytes:
        return self.exchange.header(name) or b""

    async def json(self, expected: str) -> Any:
        body = await _whole_body(self.exchange)
        try:
            return json.loads(body)
        except (ValueError, RecursionError) as exc:  # bad UTF-8 and bad JSON are ValueErrors too
            raise BadBody(f"body is not valid JSON ({str(exc)[:200]}); {expected}") from None


async def _whole_body(exchange: AnyExchange) -> bytes:
    """The request body, up to MAX_BODY_BYTES (else TooLarge), waiting for all of it."""
    too_large = TooLarge(f"body too large (limit {MAX_BODY_BYTES} bytes)")
    if (exchange.head.content_length or 0) > MAX_BODY_BYTES:
        raise too_large
    body = await exchange.read_body(MAX_BODY_BYTES)
    if body is not None:
        return body
    pieces, size = [], 0  # chunked, or an HTTP/2 body still arriving
    while (piece := await exchange.next_piece()) is not None:
        size += len(piece)
        if size > MAX_BODY_BYTES:
            raise too_large
        pieces.append(piece)
    return b"".join(pieces)


Endpoint = Callable[[Request], Awaitable[Reply]]
# A GET answers HEAD too (its head alone), but for these: a HEAD must not shut the sidecar down.
NO_IMPLICIT_HEAD = frozenset({"/shutdown"})


class AdminServer:
    """Async context manager: serves the admin API while inside the `async with` block."""

    def __init__(
        self,
        settings: Settings,
        lifecycle: Lifecycle,
        on_offline: Callable[[str, str], bool],
        view: StatusView,
    ) -> None:
        self.settings = settings
        self.lifecycle = lifecycle  # the sequences: /shutdown and PUT|DELETE /weight drive them
        self.on_offline = on_offline  # POST /notify: the consumer side drops the instance
        self.view = view  # everything the GET endpoints report
        self._routes = self.routes()
        self._stack = AsyncExitStack()

    def routes(self) -> dict[str, dict[str, Endpoint]]:
        """path -> method -> endpoint; a GET also answers HEAD, but see NO_IMPLICIT_HEAD."""
        return {
            "/shutdown": {"GET": self.shutdown, "POST": self.shutdown},
            "/ready": {"GET": self.ready},
            "/live": {"GET": self.live},
            "/status": {"GET": self.status},
            "/weight": {"GET": self.get_weight, "PUT": self.put_weight, "DELETE": self.delete_weight},
            "/metrics": {"GET": self.metrics},
            "/notify": {"POST": self.notify},
            "/openapi.json": {"GET": self.openapi},
        }

    async def __aenter__(self) -> AdminServer:
        server = HttpServer(self.settings.admin, self.handle, Limits(), "--admin")
        await self._stack.enter_async_context(server)
        log.info("admin API on %s", self.settings.admin)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    async def handle(self, exchange: AnyExchange) -> None:
        """Route one request; every error a JSON answer, and no traceback ever reaches a caller."""
        method = exchange.head.method
        path = unquote_to_bytes(exchange.head.target.partition(b"?")[0]).decode("utf-8", "replace")
        try:
            reply = await self._answer(Request(exchange), method, path)
        except BadBody as exc:
            reply = json_error(exc.status, str(exc))
        except StreamGone:
            return  # the client reset its HTTP/2 stream: nobody to answer
        except Exception:
            log.exception("admin %s %s failed", method, path)
            reply = json_error(500, "internal error; see the sidecar's log")
        headers = [(b"Content-Type", reply.content_type)] if reply.content_type else []
        exchange.respond(reply.status, [*headers, *(reply.headers or [])], reply.body)

    async def _answer(self, request: Request, method: str, path: str) -> Reply:
        endpoints = self._routes.get(path)
        if endpoints is None:
            return json_error(404, f"no such endpoint: {path}")
        allowed = set(endpoints) | (
            {"HEAD"} if "GET" in endpoints and path not in NO_IMPLICIT_HEAD else set()
        )
        endpoint = endpoints.get("GET" if method == "HEAD" and "HEAD" in allowed else method)
        if endpoint is None:
            allow = ",".join(sorted(allowed)).encode()
            return json_error(405, f"method {method} not allowed on {path}", [(b"Allow", allow)])
        return await endpoint(request)

    # --- access

    def allowed(self, request: Request) -> bool:
        token = self.settings.token
        if token and hmac.compare_digest(request.header(b"authorization"), f"Bearer {token}".encode()):
            return True
        try:
            caller = ipaddress.ip_address(request.remote)
        except ValueError:
            return False
        if caller.version == 6 and caller.ipv4_mapped is not None:
            caller = caller.ipv4_mapped
        return any(caller in network for network in self.settings.allow)

    def forbidden(self) -> Reply:
        return json_error(403, "forbidden: caller not in --allow and no valid 'Authorization: Bearer' token")

    # --- endpoints

    async def shutdown(self, request: Request) -> Reply:
        if not self.allowed(request):
            return self.forbidden()
        result = await self.lifecycle.offline()
        return json_reply(result.body(), status=200 if result.drained else 504)

    async def ready(self, request: Request) -> Reply:
        ready = self.lifecycle.ready
        return json_reply({"ready": ready, "phase": self.lifecycle.phase}, status=200 if ready else 503)

    async def live(self, request: Request) -> Reply:
        return json_reply({"live": True, "phase": self.lifecycle.phase})

    async def status(self, request: Request) -> Reply:
        return json_reply(self.view.status())

    async def get_weight(self, request: Request) -> Reply:
        return json_reply(self.view.weight())

    async def put_weight(self, request: Request) -> Reply:
        if not self.allowed(request):
            return self.forbidden()
        if self.lifecycle.closing:
            return json_error(409, "the instance is going offline: its weight can no longer change")
        payload = await request.json('expected {"weight": N}')
        if not isinstance(payload, dict) or set(payload) != {"weight"}:
            return json_error(400, 'expected a JSON object with exactly one key: {"weight": N}')
        weight = payload["weight"]
        # 5.0 is the integer 5 in JSON, and in the JSON Schema of /openapi.json.
        if isinstance(weight, float) and weight.is_integer():
            weight = int(weight)
        if isinstance(weight, bool) or not isinstance(weight, int):
            return json_error(400, f"weight must be an integer in 0..{MAX_WEIGHT}, got {json.dumps(weight)}")
        if not 0 <= weight <= MAX_WEIGHT:
            return json_error(400, f"weight must be an integer in 0..{MAX_WEIGHT}, got {weight}")
        published = await self.lifecycle.set_override(weight)
        return json_reply({**self.view.weight(), "published": published})

    async def delete_weight(self, request: Request) -> Reply:
        if not self.allowed(request):
            return self.forbidden()
        if self.lifecycle.closing:
            return json_error(409, "the instance is going offline: its weight can no longer change")
        published = await self.lifecycle.set_override(None)
        return json_reply({**self.view.weight(), "published": published})

    async def notify(self, request: Request) -> Reply:
        """An offline notification from a provider sidecar: drop the instance at once."""
        if not self.allowed(request):
            return self.forbidden()
        try:
            notice = OfflineNotice.from_body(await request.json(notice_format.EXPECTED))
        except ValueError as exc:
            return json_error(400, str(exc))
        dropped = self.on_offline(notice.service, notice.instance_id)
        log.info("notified: %s %s offline (dropped: %s)", notice.service, notice.instance_id, dropped)
        return Reply(204, b"", content_type=None)

    async def openapi(self, request: Request) -> Reply:
        from sidecar.app.openapi import document  # it imports this module's limits

        return json_reply(document())

    async def metrics(self, request: Request) -> Reply:
        return Reply(200, self.view.metrics_text(), CONTENT_TYPE_LATEST.encode())
