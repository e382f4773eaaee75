"""The gRPC peers of the HTTP/2 tests, checked against each other with nothing in between: the
grpcio server of tests/support/grpc_app.py and the helpers of tests/support/grpc_client.py.

Every call goes to the `target` fixture's address: the app itself, then the same calls through a
provider sidecar in front of it (`--app h2c://`), and through a consumer sidecar in front of that
provider: what holds directly must hold through the sidecars.
"""

from __future__ import annotations

import os
import queue
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc  # type: ignore[import-untyped]
import pytest

from sidecar.demo.processes import wait_for
from tests.support import grpc_client as gc
from tests.support.grpc_app import GrpcAppProc, grpc_app
from tests.support.ports import free_port
from tests.support.procs import port_of, sidecar, sidecar_in_front

MIB = 1024 * 1024
BINARY = bytes(range(256)) * 4  # every byte value, NUL and CR LF among them


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcAppProc]:
    """One grpc_app for the module's tests."""
    with grpc_app(tmp_path_factory.mktemp("grpc"), name="peer") as running:
        yield running


@pytest.fixture(scope="module")
def provider(app: GrpcAppProc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A provider sidecar in front of the app: (its address, the registry both sidecars read)."""
    tmp = tmp_path_factory.mktemp("provider")
    registry = f"sqlite://{tmp / 'registry.db'}"
    with sidecar_in_front(tmp, registry, app.url, "--app-health", "grpc") as car:
        yield f"127.0.0.1:{port_of(car)}", registry


@pytest.fixture(scope="module")
def consumer(provider: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A consumer sidecar in front of the provider: the address of its upstream listener."""
    port = free_port()
    upstream = ("--upstream", f"svc=127.0.0.1:{port}")
    with sidecar(tmp_path_factory.mktemp("consumer"), provider[1], None, *upstream, service="client") as car:
        wait_for(lambda: len(car.status()["upstreams"]["svc"]["instances"]) == 1, what="the provider")
        yield f"127.0.0.1:{port}"


@pytest.fixture(params=["direct", "provider", "both"])
def target(request: pytest.FixtureRequest, app: GrpcAppProc) -> str:
    """The address calls go to: the app itself, a provider sidecar, or a consumer sidecar."""
    if request.param == "provider":
        return str(request.getfixturevalue("provider")[0])
    if request.param == "both":
        return str(request.getfixturevalue("consumer"))
    return app.target


def settled(app: GrpcAppProc) -> dict[str, object] | None:
    """The app's stats once no call is in flight there, else None."""
    stats = app.stats()
    return stats if stats["inflight"] == 0 else None


def test_unary_echoes_and_names_the_instance(target: str) -> None:
    """A unary call comes back with its bytes as sent and the name of the instance that answered."""
    assert gc.unary(target, b"hello") == ("peer", b"hello")
    with gc.channel(target) as chan:
        answers = [gc.unary(chan, BINARY + bytes([n])) for n in range(5)]
    assert answers == [("peer", BINARY + bytes([n])) for n in range(5)]
    assert gc.unary(target, b"") == ("peer", b"")


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
    ],
)
def test_status_details_and_binary_trailers(target: str, code: grpc.StatusCode) -> None:
    """A failed call reaches the client with its status, details (non-ASCII too) and binary trailers."""
    details = f"{code.name.lower()}: ça n'existe pas ✗ 100%"
    trailers: list[tuple[str, str | bytes]] = [
        ("x-reason", "because"),
        ("x-blob-bin", BINARY),
        ("x-empty-bin", b""),
    ]
    failed = gc.error_call(target, code, details, trailers)
    assert (failed.code, failed.details) == (code, details)
    assert failed.trailer("x-reason") == "because"
    assert failed.trailer("x-blob-bin") == BINARY
    assert failed.trailer("x-empty-bin") == b""


def test_deadline_ends_the_call_at_the_app(target: str, app: GrpcAppProc) -> None:
    """A call past its deadline fails DEADLINE_EXCEEDED and the app's handler ends, not sleeps on."""
    before = app.stats()["cancelled"]
    failed = gc.failure(lambda: gc.unary(target, gc.command(sleep=30), timeout=0.3))
    assert failed.code == grpc.StatusCode.DEADLINE_EXCEEDED
    stats = wait_for(lambda: settled(app), timeout=5, what="the app's call to end")
    assert stats["cancelled"] == before + 1


def test_cancellation_reaches_the_app(target: str, app: GrpcAppProc) -> None:
    """A call cancelled by its client while the app works on it ends there too."""
    mark = f"cancel-{os.getpid()}-{target}"
    with gc.channel(target) as chan:
        call = gc.unary_future(chan, gc.command(sleep=30), metadata=[("x-mark", mark)])
        wait_for(lambda: mark in app.stats()["marks"], what="the call to reach the app")
        assert app.stats()["inflight"] == 1
        assert call.cancel()
        assert call.cancelled()
        assert call.code() == grpc.StatusCode.CANCELLED
    wait_for(lambda: settled(app), timeout=5, what="the app's call to end")


def test_a_sleep_then_an_answer(target: str) -> None:
    """A call the app holds for a while, within its deadline, is answered."""
    request = gc.command(sleep=0.2)
    assert gc.unary(target, request, timeout=10) == ("peer", request)


def test_four_mib_each_way(target: str) -> None:
    """4 MiB messages pass each way, in every kind of call."""
    payload = os.urandom(4 * MIB)
    assert gc.unary(target, payload) == ("peer", payload)
    assert gc.client_stream(target, [payload, payload]) == {
        "instance": "peer",
        "messages": 2,
        "bytes": 8 * MIB,
    }
    instance, messages = gc.server_stream(target, count=2, size=4 * MIB)
    assert instance == "peer"
    assert messages == [bytes([0]) * 4 * MIB, bytes([1]) * 4 * MIB]
    assert gc.bidi(target, [payload]) == ("peer", [payload])


def test_server_stream(target: str) -> None:
    """A server-streaming call brings its messages in order, of the size asked."""
    instance, messages = gc.server_stream(target, count=300, size=1000, interval=0.001)
    assert instance == "peer"
    assert messages == [bytes([n % 256]) * 1000 for n in range(300)]


def test_server_stream_read_as_it_goes(target: str, app: GrpcAppProc) -> None:
    """A long server stream is read message by message, and cancelling it ends it at the app."""
    with gc.channel(target) as chan:
        call = gc.server_stream_call(chan, count=1000, size=10, interval=0.05)
        assert [next(call) for _ in range(3)] == [bytes([n]) * 10 for n in range(3)]
        assert gc.instance_of(call) == "peer"
        assert call.cancel()
    wait_for(lambda: settled(app), timeout=5, what="the stream to end at the app")


def test_client_stream(target: str) -> None:
    """A client-streaming call's messages are all received, however many and however small."""
    messages = [b"x" * n for n in range(200)]
    answer = gc.client_stream(target, messages)
    assert answer == {"instance": "peer", "messages": 200, "bytes": sum(range(200))}
    assert gc.client_stream(target, []) == {"instance": "peer", "messages": 0, "bytes": 0}


def test_bidi_echoes_each_message_as_it_comes(target: str) -> None:
    """A bidirectional call answers each message before the next is sent."""
    outgoing: queue.Queue[bytes | None] = queue.Queue()

    def requests() -> Iterator[bytes]:
        while (message := outgoing.get(timeout=gc.CALL_TIMEOUT)) is not None:
            yield message

    with gc.channel(target) as chan:
        call = gc.bidi_call(chan, requests())
        for n in range(20):
            outgoing.put(BINARY[: n * 50])
            assert next(call) == BINARY[: n * 50]
        outgoing.put(None)
        assert list(call) == []
        assert gc.instance_of(call) == "peer"
        assert call.code() == grpc.StatusCode.OK


def test_health_service(target: str, app: GrpcAppProc) -> None:
    """The standard health service says SERVING, knows the Echo service, and takes a status set."""
    assert gc.health_status(target) == "SERVING"
    assert gc.health_status(target, gc.SERVICE) == "SERVING"
    assert gc.health_status(target, "nobody") is None  # NOT_FOUND
    gc.set_health(app.target, "NOT_SERVING", "flaky")
    assert gc.health_status(target, "flaky") == "NOT_SERVING"


def test_startup_delay_and_sigterm_record(tmp_path: Path) -> None:
    """An app in its startup delay is NOT_SERVING, then SERVING; SIGTERM records what was in flight."""
    with grpc_app(tmp_path, name="slow", startup_delay=1.0, wait="answering") as app:
        assert gc.health_status(app.target) in ("NOT_SERVING", "SERVING")
        wait_for(lambda: gc.health_status(app.target) == "SERVING", what="SERVING after the delay")
        with gc.channel(app.target) as chan:
            call = gc.unary_future(chan, gc.command(sleep=30))
            wait_for(lambda: app.stats()["inflight"] == 1, what="the call to reach the app")
            os.kill(app.proc.pid, signal.SIGTERM)
            assert app.proc.wait(timeout=10) == -signal.SIGTERM
            assert gc.failure(call.result).code == grpc.StatusCode.UNAVAILABLE
        assert app.sigterm_record() == {"instance": "slow", "inflight_at_sigterm": 1, "served": 0}
