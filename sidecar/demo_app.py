"""A small HTTP service for the demo, the tests and the benchmarks: `python -m sidecar.demo_app`.

It behaves like a typical application that knows nothing about graceful shutdown: SIGTERM's
default action ends it at once, whatever is in flight. Before dying it records how many
requests it had in flight (to `--stats-file`), which is how tests prove that the sidecar drained
it first.

    GET  /health            503 during --startup-delay, then 200
    POST /health?healthy=0  makes /health answer 503 from now on (healthy=1 undoes it)
    GET  /work?ms=N         answers after N ms: {"instance": .., "ms": N}
    POST /echo              streams the request body back
    POST /digest            reads the request body as it streams in: {"sha256", "bytes"}
    GET  /bytes?n=N         streams N bytes
    GET  /stats             {"instance", "served", "inflight", "paths": [last paths seen]}
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import FrameType

from aiohttp import web

# Tests look for a path they sent (or did not send) among the last ones seen.
PATHS_KEPT = 1000
CHUNK = 64 * 1024


class DemoApp:
    def __init__(self, name: str, startup_delay: float, stats_file: str | None) -> None:
        self.name = name
        self.healthy_at = time.monotonic() + startup_delay
        self.forced_unhealthy = False
        self.stats_file = stats_file
        self.served = 0
        self.inflight = 0
        self.paths: deque[str] = deque(maxlen=PATHS_KEPT)

    @web.middleware
    async def count(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.paths.append(request.path_qs)
        self.inflight += 1
        try:
            return await handler(request)
        finally:
            self.inflight -= 1
            self.served += 1

    async def set_health(self, request: web.Request) -> web.Response:
        self.forced_unhealthy = request.query.get("healthy") == "0"
        return await self.health(request)

    async def health(self, request: web.Request) -> web.Response:
        healthy = time.monotonic() >= self.healthy_at and not self.forced_unhealthy
        return web.json_response({"healthy": healthy}, status=200 if healthy else 503)

    async def work(self, request: web.Request) -> web.Response:
        try:
            ms = max(0, min(600_000, int(request.query.get("ms", "0"))))
        except ValueError:
            return web.json_response({"error": "ms must be an integer"}, status=400)
        await asyncio.sleep(ms / 1000)
        return web.json_response({"instance": self.name, "ms": ms})

    async def echo(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        async for chunk in request.content.iter_chunked(CHUNK):
            await response.write(chunk)
        await response.write_eof()
        return response

    async def digest(self, request: web.Request) -> web.Response:
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(CHUNK):
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"sha256": digest.hexdigest(), "bytes": size})

    async def bytes(self, request: web.Request) -> web.StreamResponse:
        remaining = int(request.query.get("n", "0"))
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = remaining
        await response.prepare(request)
        block = b"x" * CHUNK
        while remaining > 0:
            await response.write(block[: min(CHUNK, remaining)])
            remaining -= CHUNK
        await response.write_eof()
        return response

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "instance": self.name,
                "served": self.served,
                "inflight": self.inflight,
                "paths": list(self.paths),
            }
        )

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        """Record what was in flight, then die the way SIGTERM's default action would."""
        if self.stats_file:
            with open(self.stats_file, "w") as handle:
                json.dump(
                    {"instance": self.name, "inflight_at_sigterm": self.inflight, "served": self.served},
                    handle,
                )
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    def application(self) -> web.Application:
        app = web.Application(middlewares=[self.count])
        app.router.add_get("/health", self.health)
        app.router.add_post("/health", self.set_health)
        app.router.add_route("*", "/work", self.work)
        app.router.add_post("/echo", self.echo)
        app.router.add_post("/digest", self.digest)
        app.router.add_get("/bytes", self.bytes)
        app.router.add_get("/stats", self.stats)
        return app


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="demo")
    parser.add_argument("--startup-delay", type=float, default=0.0, help="seconds /health answers 503")
    parser.add_argument("--stats-file", default=None, help="where to record in-flight requests at SIGTERM")
    args = parser.parse_args()
    demo = DemoApp(args.name, args.startup_delay, args.stats_file)
    signal.signal(signal.SIGTERM, demo.on_sigterm)
    web.run_app(demo.application(), host=args.host, port=args.port, print=None, handle_signals=False)


if __name__ == "__main__":
    main()
