"""gRPC through the sidecars, black-box: grpcio's own client and server (tests/support/grpc_app.py)
in processes of their own, a provider sidecar in front of the app (`--app h2c://`), and a
consumer sidecar in front of the providers. Every call kind, statuses with binary trailers,
deadlines, 4 MiB messages, per-call balancing over one channel, and the drain of a long call.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc  # type: ignore[import-untyped]
import httpx
import pytest

from tests.support import grpc_client
from tests.support.grpc_app import GrpcAppProc, grpc_app
from tests.support.ports import free_port
from tests.support.procs import SidecarProc, metric, port_of, sidecar, sidecar_in_front, wait_for


@contextmanager
def grpc_provider(
    tmp_path: Path, registry: str, name: str, *args: str
) -> Iterator[tuple[GrpcAppProc, SidecarProc]]:
    """A grpc_app named `name` behind a provider sidecar of service `svc` (h2c to the app)."""
    with grpc_app(tmp_path, name) as app:
        url = f"h2c://127.0.0.1:{app.port}"
        with sidecar_in_front(tmp_path, registry, url, "--app-health", "grpc", *args) as car:
            yield app, car


@contextmanager
def grpc_consumer(tmp_path: Path, registry: str, instances: int) -> Iterator[tuple[SidecarProc, str]]:
    """A consumer sidecar with an upstream listener for `svc`, once it knows `instances` of it."""
    port = free_port()
    with sidecar(tmp_path, registry, None, "--upstream", f"svc=127.0.0.1:{port}", service="client") as car:
        wait_for(
            lambda: len(car.status()["upstreams"]["svc"]["instances"]) == instances, what="the instances"
        )
        yield car, f"127.0.0.1:{port}"


@pytest.fixture
def registry(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'registry.db'}"


@pytest.fixture(params=["provider", "both"])
def target(request: pytest.FixtureRequest, tmp_path: Path, registry: str) -> Iterator[str]:
    """Where a client calls: a provider sidecar, or a consumer sidecar in front of it."""
    with ExitStack() as stack:
        _, provider = stack.enter_context(grpc_provider(tmp_path, registry, "p1"))
        if request.param == "provider":
            yield f"127.0.0.1:{port_of(provider)}"
        else:
            _, address = stack.enter_context(grpc_consumer(tmp_path, registry, 1))
            yield address


def test_every_call_kind_passes(target: str) -> None:
    """Unary, server, client and bidirectional streaming calls arrive whole, in order."""
    assert grpc_client.unary(target, b"hello") == ("p1", b"hello")
    instance, messages = grpc_client.server_stream(target, count=5, size=100)
    assert instance == "p1"
    assert messages == [bytes([i]) * 100 for i in range(5)]
    answer = grpc_client.client_stream(target, [b"x" * 1000] * 7)
    assert answer == {"instance": "p1", "messages": 7, "bytes": 7000}
    assert grpc_client.bidi(target, [b"a", b"bb", b"ccc"]) == ("p1", [b"a", b"bb", b"ccc"])


def test_status_details_and_binary_trailers_pass_unchanged(target: str) -> None:
    """A failing call's status, details and trailing metadata (a -bin key too) reach the client."""
    trailers = [("reason-bin", b"\x00\x01\xff"), ("retry-after", "3")]
    error = grpc_client.error_call(target, "FAILED_PRECONDITION", "not in that state", trailers)
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details == "not in that state"
    assert error.trailer("reason-bin") == b"\x00\x01\xff"
    assert error.trailer("retry-after") == "3"


def test_four_mebibyte_messages_each_way(target: str) -> None:
    """A 4 MiB request and its 4 MiB echo pass through (flow control end to end)."""
    payload = bytes(range(256)) * (4 * 1024 * 1024 // 256)
    assert grpc_client.unary(target, payload) == ("p1", payload)


def test_deadline_frees_the_stream_everywhere(tmp_path: Path, registry: str) -> None:
    """A call past its deadline ends at the client, at both sidecars and at the app: nothing
    stays in flight."""
    with (
        grpc_provider(tmp_path, registry, "p1") as (app, provider),
        grpc_consumer(tmp_path, registry, 1) as (_, address),
    ):
        error = grpc_client.failure(
            lambda: grpc_client.unary(address, grpc_client.command(sleep=30), timeout=0.5)
        )
        assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED
        wait_for(lambda: grpc_client.stats(app.target)["cancelled"] == 1, what="the app to see the cancel")
        wait_for(lambda: provider.status()["inflight"] == 0, what="the provider's in-flight count")
        assert grpc_client.stats(app.target)["inflight"] == 0


def test_one_channel_spreads_calls_over_every_instance(tmp_path: Path, registry: str) -> None:
    """Calls on one client channel (one HTTP/2 connection) are balanced one by one: each of
    three instances answers some of them."""
    with ExitStack() as stack:
        for name in ("p1", "p2", "p3"):
            stack.enter_context(grpc_provider(tmp_path, registry, name))
        _, address = stack.enter_context(grpc_consumer(tmp_path, registry, 3))
        with grpc_client.channel(address) as chan:
            seen = [grpc_client.unary(chan, b"x")[0] for _ in range(60)]
    assert set(seen) == {"p1", "p2", "p3"}
    assert min(seen.count(name) for name in ("p1", "p2", "p3")) >= 5


def test_drain_lets_a_long_streaming_call_finish(tmp_path: Path, registry: str) -> None:
    """A server-streaming call in flight when the drain starts gets every message; the drain
    waits for it and says it drained."""
    with grpc_provider(tmp_path, registry, "p1") as (_, provider):
        target = f"127.0.0.1:{port_of(provider)}"
        with grpc_client.channel(target) as chan:
            call = grpc_client.server_stream_call(chan, 20, 10, 0.1, 30)
            first = next(call)
            shutdown = httpx.get(f"{provider.admin}/shutdown", timeout=30, verify=False).json()
            rest = list(call)
    assert len([first, *rest]) == 20
    assert shutdown["drained"] is True


def test_rolling_restart_of_grpc_providers_loses_no_call(tmp_path: Path, registry: str) -> None:
    """Three gRPC providers replaced one by one under load through a consumer sidecar: a grpcio
    client on its default settings (no retry policy) sees zero failed calls."""
    with ExitStack() as stack:
        old = [stack.enter_context(grpc_provider(tmp_path, registry, f"old{i}")) for i in range(3)]
        _, address = stack.enter_context(grpc_consumer(tmp_path, registry, 3))
        failures: list[str] = []
        answered: list[str] = []
        stop = threading.Event()

        def load() -> None:
            with grpc_client.channel(address) as chan:
                while not stop.is_set():
                    try:
                        answered.append(grpc_client.unary(chan, b"x")[0])
                    except grpc.RpcError as exc:
                        failures.append(f"{exc.code()}: {exc.details()}")

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            for index, (_, car) in enumerate(old):
                new = stack.enter_context(grpc_provider(tmp_path, registry, f"new{index}"))
                assert new[1].status()["phase"] in ("warming", "serving")
                before = len(answered)
                wait_for(lambda before=before: len(answered) > before + 20, what="calls flowing")
                body = httpx.get(f"{car.admin}/shutdown", timeout=30, verify=False).json()
                assert body["drained"] is True
                car.proc.terminate()
            done = len(answered)
            wait_for(lambda: len(answered) > done + 50, what="calls after the roll")
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    assert failures == []
    assert {name for name in answered if name.startswith("new")} == {"new0", "new1", "new2"}
    assert not {name for name in answered[-40:] if name.startswith("old")}


def test_grpc_call_to_an_http1_app_is_a_clear_status(tmp_path: Path, registry: str) -> None:
    """A gRPC call to a provider whose app speaks HTTP/1.1 fails with UNAVAILABLE and says why."""
    with sidecar_in_front(tmp_path, registry, "http://127.0.0.1:9", "--app-health", "") as car:
        error = grpc_client.failure(lambda: grpc_client.unary(f"127.0.0.1:{port_of(car)}", b"x"))
    assert error.code == grpc.StatusCode.UNAVAILABLE
    assert "--app h2c://" in error.details


def rss_bytes(pid: int) -> int:
    """A process's resident memory, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_hundred_megabytes_each_way_with_flat_sidecar_memory(tmp_path: Path, registry: str) -> None:
    """100 MiB up (client streaming) and 100 MiB down (server streaming) through both sidecars:
    flow control holds each sidecar's memory to its windows, not the stream's size."""
    with (
        grpc_provider(tmp_path, registry, "p1") as (_, provider),
        grpc_consumer(tmp_path, registry, 1) as (
            consumer,
            address,
        ),
    ):
        cars = (provider, consumer)
        grpc_client.unary(address, b"warm")  # connections made, code paths loaded
        before = [rss_bytes(car.proc.pid) for car in cars]
        peak = list(before)
        mib = b"m" * (1024 * 1024)

        def upload() -> Iterator[bytes]:
            for n in range(100):
                if n % 10 == 0:
                    peak[:] = [max(p, rss_bytes(car.proc.pid)) for p, car in zip(peak, cars, strict=True)]
                yield mib

        answer = grpc_client.client_stream(address, upload(), timeout=120)
        assert answer["bytes"] == 100 * len(mib)
        with grpc_client.channel(address) as chan:
            received = 0
            for n, message in enumerate(grpc_client.server_stream_call(chan, 100, len(mib), 0.0, 120)):
                received += len(message)
                if n % 10 == 0:
                    peak[:] = [max(p, rss_bytes(car.proc.pid)) for p, car in zip(peak, cars, strict=True)]
        assert received == 100 * len(mib)
    growth = [p - b for p, b in zip(peak, before, strict=True)]
    assert max(growth) < 32 * 1024 * 1024, growth


def test_grpc_calls_are_counted_by_status(tmp_path: Path, registry: str) -> None:
    """The provider's metrics count each gRPC call by its status, and each stream by HTTP status."""
    with grpc_provider(tmp_path, registry, "p1") as (_, car):
        target = f"127.0.0.1:{port_of(car)}"
        grpc_client.unary(target, b"ok")
        grpc_client.error_call(target, "NOT_FOUND", "no such thing")
        grpc_client.error_call(target, "NOT_FOUND", "nor that")
        assert metric(car.admin, "sidecar_grpc_requests_total", grpc_status="0") == 1
        assert metric(car.admin, "sidecar_grpc_requests_total", grpc_status="5") == 2
        assert metric(car.admin, "sidecar_requests_total", code="200") == 3


def test_a_streaming_call_past_the_drain_timeout_is_cut(tmp_path: Path, registry: str) -> None:
    """A streaming call still running when --drain-timeout passes is counted in the /shutdown
    body (inflight_streams), then cut: the drain does not wait for ever."""
    with grpc_provider(tmp_path, registry, "p1", "--drain-timeout", "2") as (_, car):
        chan = grpc_client.channel(f"127.0.0.1:{port_of(car)}")
        with chan:
            call = grpc_client.server_stream_call(chan, 600, 10, 0.1, 60)
            next(call)
            body = httpx.get(f"{car.admin}/shutdown", timeout=30, verify=False).json()
            error = grpc_client.failure(lambda: list(call))
    assert (body["drained"], body["inflight"], body["inflight_streams"]) == (False, 1, 1)
    assert error.code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL)


def test_latency_warmup_marks_http2_responses(tmp_path: Path, registry: str) -> None:
    """In latency warmup mode the provider's weight mark goes out on HTTP/2 responses too (a
    gRPC call's initial metadata), where a consumer sidecar reads it."""
    with grpc_provider(tmp_path, registry, "p1", "--warmup-mode", "latency", "--warmup", "60") as (_, car):
        chan = grpc_client.channel(f"127.0.0.1:{port_of(car)}")
        with chan:
            call = grpc_client.server_stream_call(chan, 1, 1, 0.0, 10)
            list(call)
            metadata = dict(call.initial_metadata())
    assert int(metadata["x-sidecar-weight"]) >= 1
