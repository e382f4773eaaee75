"""Admin API routes (default 127.0.0.1:16688): probes, shutdown, weight, status, metrics, and
their OpenAPI document (sidecar/app/openapi.py) at /openapi.json.

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
from types import TracebackType
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from sidecar.app.status import StatusView
from sidecar.config import HostPort, Settings
from sidecar.errors import StartupError
from sidecar.protocol import notice as notice_format
from sidecar.protocol.metadata import MAX_WEIGHT
from sidecar.protocol.notice import OfflineNotice
from sidecar.provider.lifecycle import Lifecycle

# When the sidecar stops, a /shutdown still waiting (after a second signal) gets this long.
SHUTDOWN_GRACE_SECONDS = 1.0

log = logging.getLogger("sidecar.admin")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Admin bodies are a few bytes of JSON; anything much larger is a mistake or an attack.
MAX_BODY_BYTES = 64 * 1024


def json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


class BadBody(Exception):
    """A request body that cannot be used; answered 400 with the message."""


async def read_json(request: web.Request, expected: str) -> Any:
    try:
        return json.loads(await request.read())
    except (ValueError, RecursionError) as exc:  # bad UTF-8 and bad JSON are ValueErrors too
        raise BadBody(f"body is not valid JSON ({str(exc)[:200]}); {expected}") from None


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413) as JSON, and no traceback ever reaches a caller."""
    try:
        return await handler(request)
    except BadBody as exc:
        return json_error(400, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = {
            404: f"no such endpoint: {request.path}",
            405: f"method {request.method} not allowed on {request.path}",
            413: f"body too large (limit {MAX_BODY_BYTES} bytes)",
        }.get(exc.status, exc.reason)
        extra = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
        return json_error(exc.status, message, **extra)
    except Exception:
        log.exception("admin %s %s failed", request.method, request.path)
        return json_error(500, "internal error; see the sidecar's log")


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
        self._runner: web.AppRunner | None = None

    def routes(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[json_errors])
        # No implicit HEAD: a HEAD request must not start the offline sequence.
        app.router.add_get("/shutdown", self.shutdown, allow_head=False)
        app.router.add_post("/shutdown", self.shutdown)
        app.router.add_get("/ready", self.ready)
        app.router.add_get("/live", self.live)
        app.router.add_get("/status", self.status)
        app.router.add_get("/weight", self.get_weight)
        app.router.add_put("/weight", self.put_weight)
        app.router.add_delete("/weight", self.delete_weight)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_post("/notify", self.notify)
        app.router.add_get("/openapi.json", self.openapi)
        return app

    async def __aenter__(self) -> AdminServer:
        self._runner = await start_server(self.routes(), self.settings.admin, "--admin")
        log.info("admin API on %s", self.settings.admin)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- access

    def allowed(self, request: web.Request) -> bool:
        token = self.settings.token
        if token:
            sent = request.headers.get("Authorization", "")
            # surrogateescape: header bytes that are not UTF-8 must compare unequal, not raise
            if hmac.compare_digest(sent.encode("utf-8", "surrogateescape"), f"Bearer {token}".encode()):
                return True
        try:
            caller = ipaddress.ip_address(request.remote or "")
        except ValueError:
            return False
        if caller.version == 6 and caller.ipv4_mapped is not None:
            caller = caller.ipv4_mapped
        return any(caller in network for network in self.settings.allow)

    def forbidden(self) -> web.Response:
        return json_error(403, "forbidden: caller not in --allow and no valid 'Authorization: Bearer' token")

    # --- endpoints

    async def shutdown(self, request: web.Request) -> web.Response:
        if not self.allowed(request):
            return self.forbidden()
        result = await self.lifecycle.offline()
        return web.json_response(result.body(), status=200 if result.drained else 504)

    async def ready(self, request: web.Request) -> web.Response:
        ready = self.lifecycle.ready
        return web.json_response(
            {"ready": ready, "phase": self.lifecycle.phase}, status=200 if ready else 503
        )

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True, "phase": self.lifecycle.phase})

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(self.view.status())

    async def get_weight(self, request: web.Request) -> web.Response:
        return web.json_response(self.view.weight())

    async def put_weight(self, request: web.Request) -> web.Response:
        if not self.allowed(request):
            return self.forbidden()
        if self.lifecycle.closing:
            return json_error(409, "the instance is going offline: its weight can no longer change")
        payload = await read_json(request, 'expected {"weight": N}')
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
        return web.json_response({**self.view.weight(), "published": published})

    async def delete_weight(self, request: web.Request) -> web.Response:
        if not self.allowed(request):
            return self.forbidden()
        if self.lifecycle.closing:
            return json_error(409, "the instance is going offline: its weight can no longer change")
        published = await self.lifecycle.set_override(None)
        return web.json_response({**self.view.weight(), "published": published})

    async def notify(self, request: web.Request) -> web.Response:
        """An offline notification from a provider sidecar: drop the instance at once."""
        if not self.allowed(request):
            return self.forbidden()
        try:
            notice = OfflineNotice.from_body(await read_json(request, notice_format.EXPECTED))
        except ValueError as exc:
            return json_error(400, str(exc))
        dropped = self.on_offline(notice.service, notice.instance_id)
        log.info("notified: %s %s offline (dropped: %s)", notice.service, notice.instance_id, dropped)
        return web.Response(status=204)

    async def openapi(self, request: web.Request) -> web.Response:
        from sidecar.app.openapi import document  # it imports this module's limits

        return web.json_response(document())

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.view.metrics_text(), headers={"Content-Type": CONTENT_TYPE_LATEST})


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
