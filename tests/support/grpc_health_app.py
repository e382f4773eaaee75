"""A gRPC server for the health-check tests, run as a process of its own: grpcio with the
standard health service (grpc.health.v1), whose statuses the test sets through this process's
stdin, one line each: `SERVING`, `NOT_SERVING` (the server as a whole) or `NOT_SERVING cart`
(service `cart`). `--no-health` serves no health service at all (every call: UNIMPLEMENTED).

    python -m tests.support.grpc_health_app --port 5050 [--status NOT_SERVING] [--no-health]

It prints `listening on PORT` once it serves, `status LINE` once it has set a status, and stops
on SIGTERM (grpcio leaves the default handler) or at the end of its stdin. Tests start it with
`grpc_health_app()`, which waits for each of those lines (grpcio is imported by the program only).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sidecar.demo.ports import free_port
from sidecar.demo.processes import stop_process, wait_for

REPO = Path(__file__).resolve().parents[2]


@dataclass
class GrpcHealthApp:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        """What the sidecar's --app is: HTTP/2 with prior knowledge."""
        return f"h2c://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def set_status(self, status: str, service: str = "") -> None:
        """Set the health service's status of `service` ('' for the server as a whole); returns
        once the server has it."""
        line = f"{status} {service}".strip()
        done = self.log().count(f"status {line}\n") + 1
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{line}\n".encode())
        self.proc.stdin.flush()
        wait_for(lambda: self.log().count(f"status {line}\n") >= done, what=f"the gRPC app to set {line}")


@contextmanager
def grpc_health_app(tmp_path: Path, *args: str) -> Iterator[GrpcHealthApp]:
    """This program on a free loopback port, stopped by pid on exit; `args` as on its command line."""
    port = free_port()
    log_path = tmp_path / f"grpc-health-{port}.log"
    argv = [sys.executable, "-m", "tests.support.grpc_health_app", "--port", str(port), *args]
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    app = GrpcHealthApp(proc, port, log_path)
    try:

        def listening() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the gRPC app exited with {proc.returncode}:\n{app.log()[-2000:]}")
            return f"listening on {port}\n" in app.log()

        wait_for(listening, what=f"the gRPC app on {port}")
        yield app
    finally:
        stop_process(proc)
        if proc.stdin is not None:
            proc.stdin.close()


def main() -> None:
    # Here, not at the top: the tests that import this module's helpers need no grpcio.
    import grpc  # type: ignore[import-untyped]
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--status", default="SERVING", help="the whole server's status at the start")
    parser.add_argument("--no-health", action="store_true", help="serve no health service")
    args = parser.parse_args()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = health.HealthServicer()
    if not args.no_health:
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        servicer.set("", health_pb2.HealthCheckResponse.ServingStatus.Value(args.status))
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print(f"listening on {args.port}", flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        status = health_pb2.HealthCheckResponse.ServingStatus.Value(words[0])
        servicer.set(words[1] if len(words) > 1 else "", status)
        print(f"status {' '.join(words)}", flush=True)
    server.stop(grace=None)


if __name__ == "__main__":
    main()
