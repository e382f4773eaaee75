"""A small HTTP service for the demo, the tests and the benchmarks: `python -m sidecar.demo.app`.

It behaves like a typical application that knows nothing about graceful shutdown: SIGTERM's
default action ends it at once, whatever is in flight. Before dying it records how many
requests it had in flight (to `--stats-file`), which is how tests prove that the sidecar drained
it first.

    GET  /health            503 during --startup-delay, then 200
    POST /health?healthy=0  makes /health answer 503 from now on (healthy=1 undoes it)
    POST /health?fail=N     makes the next N checks of /health answer 503 (a blip)
    GET  /work?ms=N         answers after N ms: {"instance": .., "ms": N}; a cold app (below) takes
                            N ms times its cold factor
    POST /echo              streams the request body back
    POST /digest            reads the request body as it streams in: {"sha256", "bytes"}
    GET  /bytes?n=N         streams N bytes
    GET  /headers?set=N:V   the request's headers as received, [[name, value], ...]; each `set`
                            (repeatable) adds a response header, e.g. set=Server:demo
    GET  /wait?gate=NAME    answers once gate NAME is opened (at most 60 s, then 504)
    *    /open?gate=NAME    opens gate NAME (for waiting requests and all later ones)
    GET  /chunks?n=N&gate=G a chunked response of N chunks; the last one waits for gate G
    GET  /ws                WebSocket echo: each text or binary message comes back as it was
    GET  /stats             {"instance", "served", "inflight", "paths": [last paths seen],
                             "done": [last paths answered], "connections": TCP connections that
                             carried a request, "waiting": [gates being waited for],
                             "health_checks": GET /health answered, "failing": blips left,
                             "cold_factor": what the next /work takes times its ms}

A cold app, for the latency warmup's tests and benchmark (`--cold-factor F`, 10 by default):
`--cold-requests N` makes /work F times slower for its first request, decaying linearly to
its warm speed at the Nth, as a JIT warms with the code it runs; `--cold-seconds S` makes it F
times slower for the first S seconds after the start, then warm at once, as a cache that fills
with time, however much traffic it gets. Both given: the slower of the two.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import signal
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import FrameType

from aiohttp import WSMsgType, web
from multidict import CIMultiDict

# Tests look for a path they sent (or did not send) among the last ones seen.
PATHS_KEPT = 1000
CHUNK = 64 * 1024
# A gate nobody opens must not hold a request (and the app's shutdown) forever.
GATE_WAIT_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class Cold:
    """A scripted cold start: `factor` times slower at first (1: always warm)."""

    factor_at_start: float = 10.0
    requests: int = 0  # decaying linearly to warm at this many /work requests (0: not by requests)
    seconds: float = 0.0  # slow for this long after the start, then warm (0: not by time)

    def factor(self, worked: int, age: float) -> float:
        slow = self.factor_at_start - 1
        by_requests = 1 + slow * max(0.0, 1 - worked / self.requests) if self.requests else 1.0
        by_time = self.factor_at_start if age < self.seconds else 1.0
        return max(by_requests, by_time)


class DemoApp:
    def __init__(
        self, name: str, startup_delay: float, stats_file: str | None, cold: Cold | None = None
    ) -> None:
        self.name = name
        self.cold = cold or Cold()
        self.started = time.monotonic()
        self.worked = 0  # /work requests begun: how far a --cold-requests app has warmed
        self.healthy_at = time.monotonic() + startup_delay
        self.forced_unhealthy = False
        self.failing = 0  # the next this many health checks fail
        self.health_checks = 0
        self.stats_file = stats_file
        self.served = 0
        self.inflight = 0
        self.paths: deque[str] = deque(maxlen=PATHS_KEPT)
        self.done: deque[str] = deque(maxlen=PATHS_KEPT)
        self.gates: dict[str, asyncio.Event] = {}
        self.waiting: list[str] = []
        # Connections are told apart by their transport objects: a WeakSet forgets a closed one
        # only once it is gone, so a new connection is never mistaken for an old one.
        self.connections = 0
        self._transports: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()

    @web.middleware
    async def count(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        self.paths.append(request.path_qs)
        transport = request.transport
        if transport is not None and transport not in self._transports:
            self._transports.add(transport)
            self.connections += 1
        self.inflight += 1
        try:
            response = await handler(request)
            self.done.append(request.path_qs)
            return response
        finally:
            self.inflight -= 1
            self.served += 1

    async def set_health(self, request: web.Request) -> web.Response:
        if "fail" in request.query:
            try:
                self.failing = max(0, int(request.query["fail"]))
            except ValueError:
                return web.json_response({"error": "fail must be an integer"}, status=400)
            return web.json_response({"failing": self.failing})
        self.forced_unhealthy = request.query.get("healthy") == "0"
        return self._health()

    async def health(self, request: web.Request) -> web.Response:
        self.health_checks += 1
        if self.failing:
            self.failing -= 1
            return web.json_response({"healthy": False}, status=503)
        return self._health()

    def _health(self) -> web.Response:
        healthy = time.monotonic() >= self.healthy_at and not self.forced_unhealthy
        return web.json_response({"healthy": healthy}, status=200 if healthy else 503)

    async def work(self, request: web.Request) -> web.Response:
        try:
            ms = max(0, min(600_000, int(request.query.get("ms", "0"))))
        except ValueError:
            return web.json_response({"error": "ms must be an integer"}, status=400)
        factor = self.cold_factor()
        self.worked += 1
        await asyncio.sleep(ms * factor / 1000)
        return web.json_response({"instance": self.name, "ms": ms})

    def cold_factor(self) -> float:
        """How many times slower than warm the next /work is (see the module's docstring)."""
        return self.cold.factor(self.worked, time.monotonic() - self.started)

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

    async def headers(self, request: web.Request) -> web.Response:
        received = [[name.decode("latin-1"), value.decode("latin-1")] for name, value in request.raw_headers]
        extra: CIMultiDict[str] = CIMultiDict()
        for item in request.query.getall("set", []):
            name, sep, value = item.partition(":")
            if not sep or not name:
                return web.json_response({"error": "set must be Name:Value"}, status=400)
            extra.add(name, value)
        return web.json_response({"headers": received}, headers=extra)

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    async def wait_gate(self, request: web.Request) -> web.Response:
        name = request.query.get("gate", "")
        self.waiting.append(name)
        try:
            async with asyncio.timeout(GATE_WAIT_SECONDS):
                await self.gate(name).wait()
        except TimeoutError:
            return web.json_response({"error": f"gate {name!r} was not opened"}, status=504)
        finally:
            self.waiting.remove(name)
        return web.json_response({"instance": self.name, "gate": name})

    async def open_gate(self, request: web.Request) -> web.Response:
        name = request.query.get("gate", "")
        self.gate(name).set()
        return web.json_response({"gate": name, "open": True})

    async def chunks(self, request: web.Request) -> web.StreamResponse:
        count = max(1, int(request.query.get("n", "3")))
        name = request.query.get("gate")
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for index in range(count):
            if index == count - 1 and name is not None:
                self.waiting.append(name)
                try:
                    async with asyncio.timeout(GATE_WAIT_SECONDS):
                        await self.gate(name).wait()
                finally:
                    self.waiting.remove(name)
            await response.write(f"chunk {index}\n".encode())
        await response.write_eof()
        return response

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str(message.data)
            elif message.type == WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        return ws

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "instance": self.name,
                "served": self.served,
                "inflight": self.inflight,
                "paths": list(self.paths),
                "done": list(self.done),
                "connections": self.connections,
                "waiting": sorted(self.waiting),
                "health_checks": self.health_checks,
                "failing": self.failing,
                "cold_factor": self.cold_factor(),
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
        app.router.add_get("/headers", self.headers)
        app.router.add_get("/wait", self.wait_gate)
        app.router.add_route("*", "/open", self.open_gate)
        app.router.add_get("/chunks", self.chunks)
        app.router.add_get("/ws", self.websocket)
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
    parser.add_argument("--cold-factor", type=float, default=10.0, help="how much slower /work is when cold")
    parser.add_argument("--cold-requests", type=int, default=0, help="cold, decaying, for this many /work")
    parser.add_argument("--cold-seconds", type=float, default=0.0, help="cold for this long after the start")
    args = parser.parse_args()
    cold = Cold(max(1.0, args.cold_factor), max(0, args.cold_requests), max(0.0, args.cold_seconds))
    demo = DemoApp(args.name, args.startup_delay, args.stats_file, cold)
    signal.signal(signal.SIGTERM, demo.on_sigterm)
    web.run_app(demo.application(), host=args.host, port=args.port, print=None, handle_signals=False)


if __name__ == "__main__":
    main()
