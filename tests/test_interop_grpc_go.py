"""grpc-go as client and server on the HTTP/2 path: grpc-go servers (interop/grpc-go `server`,
with grpc-go's standard health service and GracefulStop on SIGTERM) behind provider sidecars
(`--app h2c://`, `--app-health grpc`), and grpc-go clients on their defaults (no service config,
so no retry policy; pick_first on one address), which report each call with its status and how
many attempts grpc-go made (stats.Begin, one per attempt: a retry without a retry policy is
grpc-go's transparent retry of a call the server never processed).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.interop import Event, Peer, running_peer
from tests.support.ports import free_port
from tests.support.procs import SidecarProc, port_of, sidecar_in_front
from tests.test_http2_grpc import grpc_consumer

PROVIDER_ARGS = ("--quiet-period", "0.5")
# Two processes told of one event in the same turn of the sidecar's loop may stamp it this far
# apart on a busy machine.
SAME_TURN_SLACK_MS = 100


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def registry(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'registry.db'}"


def peer(args: Sequence[str], log: Path) -> AbstractContextManager[Peer]:
    return running_peer("grpc-go", list(args), log)


@contextmanager
def grpc_go_provider(
    tmp_path: Path, registry: str, name: str, *args: str
) -> Iterator[tuple[Peer, SidecarProc]]:
    """A grpc-go server named `name` behind a provider sidecar of service `svc`."""
    port = free_port()
    with peer(["server", "--port", str(port), "--name", name], tmp_path / f"server-{name}.log") as server:
        server.wait_event(lambda e: e["event"] == "listening", 30, f"{name} listening")
        url = f"h2c://127.0.0.1:{port}"
        with sidecar_in_front(tmp_path, registry, url, "--app-health", "grpc", *PROVIDER_ARGS, *args) as car:
            yield server, car


def calls(client: Peer) -> list[Event]:
    return client.of("call")


def stop(process: Peer, event: str) -> Event:
    """SIGTERM, then the event the peer prints as it ends."""
    process.proc.send_signal(signal.SIGTERM)
    assert process.wait_exit(30) == 0
    return process.wait_event(lambda e: e["event"] == event, 5, f"its {event} event")


def stop_client(client: Peer) -> Event:
    """The client's goroutines finish their call in progress and it reports done."""
    return stop(client, "done")


def test_rolling_restart_through_the_consumer_sidecar_fails_no_call(tmp_path: Path, registry: str) -> None:
    """Three grpc-go servers replaced one by one under a grpc-go client on its defaults, calling
    through a consumer sidecar: every call succeeds, and the replacements answer."""
    with ExitStack() as stack:
        old = []
        for i in range(3):
            provider = ExitStack()
            stack.callback(provider.close)
            old.append((provider, provider.enter_context(grpc_go_provider(tmp_path, registry, f"old{i}"))))
        _, address = stack.enter_context(grpc_consumer(tmp_path, registry, 3))
        args = ["client", "--target", address, "--concurrency", "4", "--duration", "120s"]
        client = stack.enter_context(peer(args, tmp_path / "client.log"))
        for index, (provider, (server, car)) in enumerate(old):
            name = f"new{index}"
            stack.enter_context(grpc_go_provider(tmp_path, registry, name))
            client.wait_event(lambda e, name=name: e["event"] == "call" and e["instance"] == name, 30, name)
            body = httpx.get(f"{car.admin}/shutdown", timeout=60, verify=False).json()
            assert body["drained"] is True
            provider.close()  # the sidecar, then the grpc-go server (SIGTERM: GracefulStop)
            assert server.of("stopped"), f"old{index} did not stop gracefully: see {server.log}"
        done = len(calls(client))
        client.wait_event(lambda e: len(calls(client)) > done + 100, 30, "calls after the roll")
        stop_client(client)
    answered = calls(client)
    failed = [e for e in answered if e["code"] != "OK"]
    assert failed == [], failed[:5]
    assert {e["instance"] for e in answered if e["instance"].startswith("new")} == {"new0", "new1", "new2"}
    assert not {e["instance"] for e in answered[-100:] if e["instance"].startswith("old")}
    retried = [e for e in answered if e["attempts"] > 1]
    print(f"grpc-go roll: {len(answered)} calls, 0 failed, {len(retried)} retried transparently by grpc-go")


def test_graceful_stop_behind_a_draining_sidecar(tmp_path: Path, registry: str) -> None:
    """A long server-streaming call in flight when /shutdown starts gets every message before
    the drain ends; then SIGTERM finds nothing in flight and grpc-go's GracefulStop returns."""
    with grpc_go_provider(tmp_path, registry, "p1") as (server, car):
        args = ["stream", "--target", f"127.0.0.1:{port_of(car)}", "--count", "30", "--interval", "100ms"]
        with peer(args, tmp_path / "stream.log") as stream:
            stream.wait_event(lambda e: e["event"] == "message", 30, "the first message")
            sent = now_ms()
            body = httpx.get(f"{car.admin}/shutdown", timeout=60, verify=False).json()
            answered = now_ms()
            assert stream.wait_exit(10) == 0  # it exits once the stream has ended
            end = stream.of("stream_end")[0]
        stopped = stop(server, "stopped")  # grpc-go's GracefulStop returned
    assert body["drained"] is True
    assert (end["code"], end["messages"]) == ("OK", 30), end
    # The drain waited for the stream: /shutdown answered once it had ended. The sidecar's last
    # frame of the stream and its answer to /shutdown go out back to back, and two processes
    # each stamp their own arrival, so the client's may come a little after ours.
    assert sent < end["t"] <= answered + SAME_TURN_SLACK_MS
    assert {e["instance"] for e in stream.of("message")} == {"p1"}
    assert server.of("sigterm")[0]["inflight"] == 0
    assert stopped["graceful_ms"] < 1000, stopped
    print(
        f"grpc-go GracefulStop: stream ended {end['t'] - sent} ms after /shutdown was sent, which "
        f"answered after {answered - sent} ms; GracefulStop took {stopped['graceful_ms']} ms"
    )


def test_goaway_and_refused_stream_as_a_grpc_go_client_sees_them(tmp_path: Path, registry: str) -> None:
    """A grpc-go client calling a provider sidecar directly (no consumer sidecar) through that
    provider's /shutdown: every call that ended while the sidecar was draining succeeded (grpc-go
    reconnected after each GOAWAY and retried refused streams itself)."""
    with grpc_go_provider(tmp_path, registry, "p1", "--drain-timeout", "4") as (_, car):
        target = f"127.0.0.1:{port_of(car)}"
        args = ["client", "--target", target, "--concurrency", "4", "--sleep-ms", "50", "--duration", "60s"]
        with peer(args, tmp_path / "client.log") as client:
            client.wait_event(lambda e: len(calls(client)) >= 40, 30, "calls flowing")
            sent = now_ms()
            body = httpx.get(f"{car.admin}/shutdown", timeout=60, verify=False).json()
            answered = now_ms()
            client.wait_event(lambda e: e["event"] == "call" and e["t"] > answered, 10, "a call after")
            stop_client(client)
        # Phase drained: from then on the sidecar refuses new streams, which a client with no
        # other address to call retries once and then fails (REFUSED_STREAM twice). /shutdown
        # answers later, once what was in flight then has finished.
        drain_end = car.entered("drained")
    during = [e for e in calls(client) if sent <= e["t"] < drain_end]
    failed = [e for e in calls(client) if e["t"] < drain_end and e["code"] != "OK"]
    assert failed == [], failed[:5]
    assert body["seconds"] <= 4.5, body  # --drain-timeout 4 holds although the calls never stop
    assert len(during) > 40, len(during)
    assert {e["instance"] for e in during} == {"p1"}
    reconnects = [e for e in client.of("conn") if e["state"] == "begin" and sent <= e["t"] <= drain_end]
    assert reconnects, "grpc-go never opened a new connection after the sidecar's GOAWAY"
    retried = [e for e in during if e["attempts"] > 1]
    after = sorted({(e["code"], e["error"]) for e in calls(client) if e["t"] > drain_end})
    # After the drain, streams are refused (REFUSED_STREAM, then no listener): never cancelled.
    assert {code for code, _ in after} <= {"OK", "Unavailable"}, after
    print(
        f"grpc-go direct: /shutdown answered after {answered - sent} ms (drained {body['drained']}); "
        f"{len(during)} calls during it, 0 failed, {len(retried)} retried transparently, "
        f"{len(reconnects)} connections opened; after it: {after}"
    )
