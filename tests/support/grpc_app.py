"""A gRPC server for the HTTP/2 tests, run as a process of its own: grpcio with generic handlers
(bytes in, bytes out: no protoc) and the standard health service (grpc.health.v1), SERVING.

    python -m tests.support.grpc_app --port N --name NAME [--stats-file F] [--startup-delay S]

Service `test.Echo` (tests/support/grpc_client.py calls it):

    Unary         answers NAME, NUL, then the request's bytes as they came, so that a test can
                  tell which instance answered. A request that starts with `cmd:` and a JSON
                  object asks for more (both keys optional, sleep first):
                    {"sleep": S}  answers after S seconds, or ends at once when the call does
                                  (cancelled, past its deadline: counted in `cancelled`);
                    {"abort": CODE, "details": "..", "trailers": [[KEY, VALUE], ...]}  fails
                                  with status CODE (a name such as "NOT_FOUND" or a number),
                                  those details and that trailing metadata; the value of a
                                  `-bin` key is given in base64 and sent as the bytes it encodes.
    ServerStream  the request is {"count": N, "size": B, "interval": S}: N messages of B bytes
                  each (message i is the byte i % 256, B times), S seconds apart.
    ClientStream  reads every message, then answers {"instance", "messages", "bytes"}.
    Bidi          answers each message with the same bytes, as it comes.

Each Echo call sends its initial metadata `instance: NAME` (except a Unary that aborts: that
answer is trailers only, as a failing unary call of a real server often is). Request metadata
`x-mark: VALUE` is recorded, so that "the app never saw that call" is a lookup.

Service `test.Control`, for the tests' own bookkeeping (not counted as calls):

    Stats      {"instance", "served", "inflight", "cancelled", "calls": {method: count},
                "marks": [last x-mark values seen]}
    SetHealth  the request is {"service": "", "status": "NOT_SERVING"}: sets the health service's
               status of that service ("" is the server as a whole).

Health is NOT_SERVING during --startup-delay, then SERVING (for "" and for `test.Echo`).

Like the demo app, it knows nothing of graceful shutdown: SIGTERM's default action ends it at
once, whatever is in flight, after it records what was (to --stats-file), which is how a test
proves that the sidecar drained it first. The message size limits are 8 MiB each way, so that a
4 MiB message passes with room to spare (grpcio's default limit to receive is 4 MiB).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import grpc  # type: ignore[import-untyped]
from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

from sidecar.demo.processes import stop_process, wait_for
from tests.support import grpc_client
from tests.support.grpc_client import (
    COMMAND_PREFIX,
    CONTROL,
    INSTANCE_SEPARATOR,
    MESSAGE_OPTIONS,
    SERVICE,
    status_code,
)
from tests.support.ports import free_port

# grpcio's servers set SO_REUSEPORT by default: a second server on a port already taken would
# share it silently instead of failing to start.
SERVER_OPTIONS = [*MESSAGE_OPTIONS, ("grpc.so_reuseport", 0)]
# Each call in progress holds a thread (a streaming one for its whole length).
WORKERS = 64
MARKS_KEPT = 1000
REPO_ROOT = Path(__file__).resolve().parents[2]


class EchoApp:
    def __init__(self, name: str, stats_file: str | None) -> None:
        self.name = name
        self.stats_file = stats_file
        self.health = health.HealthServicer()
        self._lock = threading.Lock()
        self.served = 0
        self.inflight = 0
        self.cancelled = 0
        self.calls: Counter[str] = Counter()
        self.marks: deque[str] = deque(maxlen=MARKS_KEPT)

    # -- bookkeeping --------------------------------------------------------------------------

    def _begin(self, method: str, context: Any) -> threading.Event:
        """Counts the call in; returns an event set once the call is over, whichever way."""
        with self._lock:
            self.inflight += 1
            self.calls[method] += 1
            self.marks.extend(value for key, value in context.invocation_metadata() if key == "x-mark")
        over = threading.Event()
        context.add_callback(over.set)
        return over

    def _end(self, context: Any) -> None:
        with self._lock:
            self.inflight -= 1
            self.served += 1
            if not context.is_active():
                self.cancelled += 1

    def _pause(self, seconds: float, over: threading.Event, context: Any) -> bool:
        """Waits `seconds` unless the call ends first; returns whether it is still on."""
        over.wait(seconds)
        return bool(context.is_active())

    def _hello(self, context: Any) -> None:
        context.send_initial_metadata((("instance", self.name),))

    # -- test.Echo ----------------------------------------------------------------------------

    def unary(self, request: bytes, context: Any) -> bytes:
        over = self._begin("Unary", context)
        try:
            command: dict[str, Any] = {}
            if request.startswith(COMMAND_PREFIX):
                command = json.loads(request[len(COMMAND_PREFIX) :])
            if not self._pause(float(command.get("sleep", 0)), over, context):
                return b""  # nobody to answer
            if "abort" in command:
                trailers = [
                    (key, base64.b64decode(value) if key.endswith("-bin") else value)
                    for key, value in command.get("trailers", [])
                ]
                context.set_trailing_metadata(trailers)
                context.abort(status_code(command["abort"]), command.get("details", ""))
            self._hello(context)
            return self.name.encode() + INSTANCE_SEPARATOR + request
        finally:
            self._end(context)

    def server_stream(self, request: bytes, context: Any) -> Iterator[bytes]:
        over = self._begin("ServerStream", context)
        try:
            command = json.loads(request or b"{}")
            interval = float(command.get("interval", 0))
            self._hello(context)
            for index in range(int(command.get("count", 1))):
                if index and not self._pause(interval, over, context):
                    return
                yield bytes([index % 256]) * int(command.get("size", 1))
        finally:
            self._end(context)

    def client_stream(self, requests: Iterable[bytes], context: Any) -> bytes:
        self._begin("ClientStream", context)
        try:
            self._hello(context)
            messages = total = 0
            for message in requests:
                messages += 1
                total += len(message)
            return json.dumps({"instance": self.name, "messages": messages, "bytes": total}).encode()
        finally:
            self._end(context)

    def bidi(self, requests: Iterable[bytes], context: Any) -> Iterator[bytes]:
        self._begin("Bidi", context)
        try:
            self._hello(context)
            yield from requests
        finally:
            self._end(context)

    # -- test.Control -------------------------------------------------------------------------

    def stats(self, request: bytes, context: Any) -> bytes:
        with self._lock:
            body = {
                "instance": self.name,
                "served": self.served,
                "inflight": self.inflight,
                "cancelled": self.cancelled,
                "calls": dict(self.calls),
                "marks": list(self.marks),
            }
        return json.dumps(body).encode()

    def set_health(self, request: bytes, context: Any) -> bytes:
        command = json.loads(request)
        status = health_pb2.HealthCheckResponse.ServingStatus.Value(command["status"])
        self.health.set(command.get("service", ""), status)
        return b"{}"

    def set_serving(self, status: str) -> None:
        value = health_pb2.HealthCheckResponse.ServingStatus.Value(status)
        for service in ("", SERVICE):
            self.health.set(service, value)

    # -- the process --------------------------------------------------------------------------

    def handlers(self) -> list[Any]:
        unary, stream = grpc.unary_unary_rpc_method_handler, grpc.unary_stream_rpc_method_handler
        echo = {
            "Unary": unary(self.unary),
            "ServerStream": stream(self.server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(self.client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(self.bidi),
        }
        control = {"Stats": unary(self.stats), "SetHealth": unary(self.set_health)}
        return [
            grpc.method_handlers_generic_handler(SERVICE, echo),
            grpc.method_handlers_generic_handler(CONTROL, control),
        ]

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        """Record what was in flight, then die the way SIGTERM's default action would."""
        if self.stats_file:
            with self._lock, open(self.stats_file, "w") as handle:
                record = {"instance": self.name, "inflight_at_sigterm": self.inflight, "served": self.served}
                json.dump(record, handle)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="grpc", help="the instance's name, in every answer")
    parser.add_argument("--stats-file", default=None, help="where to record in-flight calls at SIGTERM")
    parser.add_argument("--startup-delay", type=float, default=0.0, help="seconds of NOT_SERVING first")
    args = parser.parse_args()
    app = EchoApp(args.name, args.stats_file)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS), options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers(app.handlers())
    health_pb2_grpc.add_HealthServicer_to_server(app.health, server)
    if server.add_insecure_port(f"{args.host}:{args.port}") == 0:
        sys.exit(f"grpc_app: cannot listen on {args.host}:{args.port}")
    app.set_serving("NOT_SERVING" if args.startup_delay > 0 else "SERVING")
    signal.signal(signal.SIGTERM, app.on_sigterm)
    server.start()
    print(f"grpc_app {args.name} listening on {args.host}:{args.port}", flush=True)
    if args.startup_delay > 0:  # the app's own start-up time
        threading.Timer(args.startup_delay, app.set_serving, ["SERVING"]).start()
    server.wait_for_termination()


# -- seen from the tests ----------------------------------------------------------------------


@dataclass
class GrpcAppProc:
    proc: subprocess.Popen[bytes]
    port: int
    name: str
    stats_file: Path

    @property
    def target(self) -> str:
        """The address a gRPC channel is opened to."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The app as a sidecar's `--app` names it (HTTP/2 with prior knowledge)."""
        return f"h2c://127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        return grpc_client.stats(self.target)

    def sigterm_record(self) -> dict[str, Any]:
        record: dict[str, Any] = json.loads(self.stats_file.read_text())
        return record


def grpc_app_argv(
    port: int, name: str, stats_file: Path | None = None, startup_delay: float = 0.0
) -> list[str]:
    """This program on 127.0.0.1:`port`, to run from the repository's root (where `tests` is a
    package): `grpc_app()` does, and so must any other launcher."""
    argv = [sys.executable, "-m", "tests.support.grpc_app", "--port", str(port), "--name", name]
    if stats_file is not None:
        argv += ["--stats-file", str(stats_file)]
    return [*argv, "--startup-delay", str(startup_delay)]


@contextmanager
def grpc_app(
    tmp_path: Path, name: str = "grpc", startup_delay: float = 0.0, wait: str = "serving"
) -> Iterator[GrpcAppProc]:
    """This program on a free port, stopped by pid on exit. `wait` is "serving" (its health
    says SERVING), "answering" (its health service answers, whatever it says) or ""."""
    port = free_port()
    stats_file = tmp_path / f"{name}-{port}-stats.json"
    log = tmp_path / f"{name}-{port}.log"
    argv = grpc_app_argv(port, name, stats_file, startup_delay)
    # As sidecar.demo.processes.spawn, from the repository's root: where `tests` is a package.
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO_ROOT
        )
    app = GrpcAppProc(proc, port, name, stats_file)
    try:
        if wait:
            wanted: Callable[[str | None], bool] = (
                (lambda status: status == "SERVING") if wait == "serving" else (lambda s: s is not None)
            )

            def ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"grpc_app {name} exited with {proc.returncode}:\n{log.read_text()}")
                return wanted(grpc_client.health_status(app.target, timeout=1))

            wait_for(ready, what=f"grpc_app {name} to be {wait}")
        yield app
    finally:
        stop_process(proc)


if __name__ == "__main__":
    main()
