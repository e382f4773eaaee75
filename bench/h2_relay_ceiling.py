"""How fast can an HTTP/2 relay in Python go at all? The ceiling under the issue-21 aims, measured
beside nghttpx in one run.

    .venv/bin/python bench/h2_relay_ceiling.py [--seconds 10]

The sidecar's HTTP/2 path runs on the `h2` state machine; the issue sketches a frame-level relay
instead (frame heads read, header blocks decoded only where needed). Before building one, this
measures what such relays cost at their least, as five throwaway relays on uvloop, each with one
connection to the app per client connection (so stream ids need no rewriting) and no checks:

  splice        the bytes passed on as they come: a TCP proxy, the ceiling of any Python relay
  frames        the same, but every frame's 9-byte head read, partial frames kept across reads,
                the streams counted (what a frame-level relay does at the very least)
  frames+hpack  and every HEADERS block decoded by hpack, both ways, as validating requests,
                routing and counting gRPC statuses need (h2load and nghttpd send no CONTINUATION)
  frames+table0 the same, but both peers asked for SETTINGS_HEADER_TABLE_SIZE 0 (the issue's
                sketch), so that a block decodes alike on any connection: each distinct block is
                decoded once and then found by its bytes (the sidecar's BlockDecoder)
  table0+policy and the provider's work per stream, as plain Python: in flight from the request's
                HEADERS to the response's END_STREAM (a dict), the caller's X-Sidecar-Consumer
                looked up and remembered, the response's status read, a Prometheus counter
                incremented by status, the latency kept for the warmup

h2load (1 thread, 32 connections, 1 and 10 streams each) against nghttpd's 6-byte file: alone,
through nghttpx (C, 1 worker), through each relay, and through the provider sidecar; streams/s
(the 2xx answers) and CPU s per 1,000 streams of the proxy's processes. Every process is started
by this run and stopped by pid when it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections import deque
from pathlib import Path

import hpack
from benchcommon import cpu_seconds, header, logs_on_failure, run, workdir
from http2_overhead import H2LOAD, NGHTTPX, SMALL_FILE, answers_one, h2load, start_nghttpx, tool
from proxy_overhead import children, spawn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.demo.fleet import sidecar_argv
from sidecar.demo.ports import free_port
from sidecar.demo.processes import wait_for
from sidecar.http.h2c.header_blocks import BlockDecoder
from tests.support.nghttpd import Nghttpd

MODES = ("splice", "frames", "frames+hpack", "frames+table0", "table0+policy")
TABLE0 = ("frames+table0", "table0+policy")
CASES = (("32x1", 1), ("32x10", 10))
DATA, HEADERS, SETTINGS = 0x0, 0x1, 0x4
END_STREAM, ACK, PADDED, PRIORITY = 0x1, 0x1, 0x8, 0x20
HEADER_TABLE_SIZE_0 = b"\x00\x01\x00\x00\x00\x00"  # SETTINGS_HEADER_TABLE_SIZE = 0


# --- the relays (run as `h2_relay_ceiling.py --relay MODE --listen PORT --app PORT`)


class Policy:
    """The provider's bookkeeping, shared by all connections: consumers seen, requests counted by
    status (prometheus_client, as the sidecar's metrics), latencies kept for the warmup."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter

        self.consumers: dict[bytes, float] = {}
        self.requests = Counter("requests", "by status", ["status"], registry=CollectorRegistry())
        self.latencies: deque[float] = deque(maxlen=1000)


class Half(asyncio.Protocol):
    """One side of a relayed connection: what it reads goes on to its peer. In the frame modes,
    only whole frames go on (a partial one waits for the rest); in the table0 modes each peer's
    SETTINGS is sent on with SETTINGS_HEADER_TABLE_SIZE 0 appended (the last value counts, RFC
    9113 section 6.5), so that both encoders drop their dynamic table and a header block decodes
    the same whatever came before: the sidecar's own BlockDecoder then decodes it once and finds
    it by its bytes afterwards."""

    def __init__(self, mode: str, skip: int = 0, policy: Policy | None = None) -> None:
        self.mode = mode
        self.peer: Half | None = None
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []  # to send once the peer is connected
        self.buffer = b""
        self.skip = skip  # bytes before the first frame (the client's connection preface)
        self.streams = 0
        self.policy = policy  # table0+policy: the client's side only
        self.inflight: dict[int, float] = {}  # table0+policy: shared by both sides of a connection
        self.status: dict[int, bytes] = {}  # the app's side: each stream's :status, till its end
        self.decoder: hpack.Decoder | None = None
        if mode == "frames+hpack":
            self.decoder = hpack.Decoder()
        elif mode in TABLE0:
            self.decoder = BlockDecoder()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        out = data if self.mode == "splice" else self.read_frames(data)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(out)
        else:
            self.pending.append(out)

    def read_frames(self, data: bytes) -> bytes:
        """The whole frames of what came, as they go on."""
        buffer = self.buffer + data if self.buffer else data
        at, self.skip = self.skip, 0
        rewritten: list[bytes] = []
        start = 0
        while len(buffer) - at >= 9:
            length, kind, flags = int.from_bytes(buffer[at : at + 3], "big"), buffer[at + 3], buffer[at + 4]
            end = at + 9 + length
            if end > len(buffer):
                break
            if kind == HEADERS:
                if flags & END_STREAM:
                    self.streams += 1
                if self.decoder is not None:
                    block = buffer[at + 9 : end]
                    if flags & PADDED:
                        block = block[1 : len(block) - block[0]]
                    if flags & PRIORITY:
                        block = block[5:]
                    headers = list(self.decoder.block(block).fields)
                    if self.mode == "table0+policy":
                        stream = int.from_bytes(buffer[at + 5 : at + 9], "big") & 0x7FFFFFFF
                        self.on_headers(stream, headers, flags & END_STREAM)
            elif kind == DATA and flags & END_STREAM and self.mode == "table0+policy":
                self.on_end(int.from_bytes(buffer[at + 5 : at + 9], "big") & 0x7FFFFFFF)
            elif kind == SETTINGS and not flags & ACK and self.mode in TABLE0:
                rewritten += [buffer[start:at], (length + 6).to_bytes(3, "big"), buffer[at + 3 : end]]
                rewritten.append(HEADER_TABLE_SIZE_0)
                start = end
            at = end
        self.buffer = buffer[at:]
        if rewritten:
            return b"".join([*rewritten, buffer[start:at]])
        return buffer[:at]

    def on_headers(self, stream: int, headers: list[tuple[bytes, bytes]], ended: int) -> None:
        """A request's HEADERS (client side) opens the stream in flight; a response's (app side)
        carries its status, and ends it with END_STREAM (a trailers-only answer, or trailers)."""
        if self.policy is not None:  # the client's side: a request
            self.inflight[stream] = time.monotonic()
            for name, value in headers:
                if name == b"x-sidecar-consumer":
                    self.policy.consumers[value] = time.monotonic()
            return
        for name, value in headers:
            if name == b":status":
                self.status[stream] = value
        if ended:
            self.on_end(stream)

    def on_end(self, stream: int) -> None:
        """The response's END_STREAM, from the app: the stream is no longer in flight."""
        started = self.inflight.pop(stream, None)
        if started is not None and self.peer is not None and self.peer.policy is not None:
            policy = self.peer.policy
            policy.requests.labels(self.status.pop(stream, b"").decode()).inc()
            policy.latencies.append(time.monotonic() - started)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def relay(mode: str, listen: int, app: int) -> None:
    loop = asyncio.get_running_loop()
    connecting: set[asyncio.Task[None]] = set()
    policy = Policy() if mode == "table0+policy" else None

    def client_side() -> Half:
        client = Half(mode, skip=24, policy=policy)  # the preface comes before the first frame

        async def connect() -> None:
            _, upstream = await loop.create_connection(lambda: Half(mode), "127.0.0.1", app)
            upstream.peer, client.peer = client, upstream
            upstream.inflight = client.inflight
            # What either side read before they were linked (the app may speak first).
            for source, sink in ((client, upstream), (upstream, client)):
                for piece in source.pending:
                    sink.transport.write(piece)  # type: ignore[union-attr]
                source.pending.clear()

        task = loop.create_task(connect())
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return client

    server = await loop.create_server(client_side, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


def relay_main(mode: str, listen: int, app: int) -> None:
    import uvloop

    uvloop.run(relay(mode, listen, app))


# --- the run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--relay", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--listen", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--app", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay:
        relay_main(args.relay, args.listen, args.app)
        return
    for binary in (H2LOAD, NGHTTPX):
        tool(binary)
    header("HTTP/2 relay ceiling in Python: splice, frame heads, HPACK, beside nghttpx and the provider")
    with workdir("h2-relay-ceiling-") as work, logs_on_failure(work), contextlib.ExitStack() as stack:
        nghttpd = stack.enter_context(Nghttpd(work / "nghttpd"))
        x_port, x_pids = start_nghttpx(stack, work, "nghttpx", nghttpd.port)
        paths: dict[str, tuple[int, list[int]]] = {"nghttpd": (nghttpd.port, []), "nghttpx": (x_port, x_pids)}
        for mode in MODES:
            port = free_port()
            argv = [
                sys.executable,
                __file__,
                "--relay",
                mode,
                "--listen",
                str(port),
                "--app",
                str(nghttpd.port),
            ]
            paths[mode] = (port, [spawn(stack, argv, work / f"relay-{mode}.log").pid])
        listen, admin = free_port(), free_port()
        registry = f"sqlite://{work / 'registry.db'}"
        provider = spawn(stack, sidecar_argv(
            registry, admin, "--service", "ceiling", "--listen", f"127.0.0.1:{listen}",
            "--app", nghttpd.url, "--app-health", SMALL_FILE,
        ), work / "provider.log")  # fmt: skip
        paths["provider"] = (listen, [provider.pid])
        data = work / "unused.bin"
        data.write_bytes(b"")
        for name, (port, _) in paths.items():
            url = f"http://127.0.0.1:{port}{SMALL_FILE}"
            wait_for(lambda url=url: answers_one(url, "file", data), what=f"{name} to answer")  # type: ignore[misc]
            h2load(url, "file", 1, 1, data)  # warmup
        x_pids.extend(children(x_pids[0]))  # nghttpx's worker, up by now
        print(f"{'case':<6} {'path':<13} {'streams/s':>10} {'of nghttpx':>11} {'CPU s per 1k':>13}")
        for case, streams in CASES:
            measured: dict[str, float] = {}
            for name, (port, pids) in paths.items():
                before = sum(cpu_seconds(pid) for pid in pids)
                report = h2load(f"http://127.0.0.1:{port}{SMALL_FILE}", "file", streams, args.seconds, data)
                cpu = sum(cpu_seconds(pid) for pid in pids) - before
                rate = report["answers"] / report["seconds"]
                measured[name] = rate
                of = (
                    f"{rate / measured['nghttpx']:.1%}" if "nghttpx" in measured and name != "nghttpx" else ""
                )
                per_1k = f"{cpu / report['answers'] * 1000:.3f}" if pids and report["answers"] else ""
                errors = f"  ({int(report['errors'])} errors)" if report["errors"] else ""
                print(f"{case:<6} {name:<13} {rate:>10,.0f} {of:>11} {per_1k:>13}{errors}", flush=True)


if __name__ == "__main__":
    run(main)
