"""One gRPC health check (sidecar.provider.grpc_health) and the metadata that tells consumers a
provider accepts h2c: the hand-written protobuf against grpcio's own messages, and the check
against servers that misbehave (silent, HTTP/1.1, flooding), each on a loopback port of its own:
a failed check with a reason, within the timeout and the size bound, never a hang."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import h2.config
import h2.connection
import h2.events
import pytest
from grpc_health.v1 import health_pb2  # type: ignore[import-untyped]

from sidecar.protocol import metadata as meta
from sidecar.protocol.warmup import Warmup
from sidecar.provider.app_health import AppHealth
from sidecar.provider.grpc_health import (
    MAX_RESPONSE_BYTES,
    GrpcTarget,
    check,
    decode_response,
    encode_request,
)

TIMEOUT_SECONDS = 1.0
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.mark.parametrize("service", ["", "cart", "shop.v1.Cart", "s" * 200, "café"])
def test_request_is_grpcio_s_health_check_request(service: str) -> None:
    """The request is the 5-byte gRPC prefix and what protobuf encodes for HealthCheckRequest."""
    message = health_pb2.HealthCheckRequest(service=service).SerializeToString()
    assert encode_request(service) == b"\x00" + len(message).to_bytes(4, "big") + message


@pytest.mark.parametrize("status", [0, 1, 2, 3])
def test_response_status_is_read_as_grpcio_writes_it(status: int) -> None:
    """Each ServingStatus grpcio serialises (UNKNOWN, the default, as no field at all) reads back."""
    message = health_pb2.HealthCheckResponse(status=status).SerializeToString()
    assert decode_response(b"\x00" + len(message).to_bytes(4, "big") + message) == status


def test_a_provider_publishes_that_it_accepts_h2c() -> None:
    """Published metadata says http/1.1 and h2c; without the key, or with a value no sidecar
    writes, a consumer takes HTTP/1.1 only."""
    published = meta.published(1, Warmup(0, 2, 10), 100, "http://127.0.0.1:16688", None)
    assert published[meta.META_PROTOCOLS] == "http/1.1,h2c"
    assert meta.accepts_h2c(published)
    assert meta.accepts_h2c({meta.META_PROTOCOLS: "h2c"})
    assert meta.accepts_h2c({meta.META_PROTOCOLS: "http/1.1, h2c"})
    assert not meta.accepts_h2c({})
    assert not meta.accepts_h2c({meta.META_PROTOCOLS: "http/1.1"})
    assert not meta.accepts_h2c({meta.META_PROTOCOLS: "h2"})
    assert not meta.accepts_h2c({meta.META_PROTOCOLS: "x," * 200 + "h2c"})


@asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[GrpcTarget]:
    """`handler` serving on a loopback port; the target of a check of service `cart` there. On
    exit every connection is closed and its handler done, so that nothing outlives the test."""
    handlers: set[asyncio.Task[None]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        with contextlib.suppress(ConnectionError):
            await handler(reader, writer)

    listener = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield GrpcTarget("127.0.0.1", listener.sockets[0].getsockname()[1], "cart")
    finally:
        listener.close()
        for writer in writers:
            writer.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        for writer in writers:
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await listener.wait_closed()


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # until the check gives up and closes
    writer.close()


async def http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")  # the HTTP/2 preface's first part: `PRI * HTTP/2.0`
    writer.write(b"HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-length: 0\r\n\r\n")
    await reader.read()
    writer.close()


def h2_server(body: bytes, trailers: list[tuple[str, str]]) -> Handler:
    """An HTTP/2 server that answers every stream 200 application/grpc with `body` and `trailers`."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        connection.initiate_connection()
        writer.write(connection.data_to_send())
        while data := await reader.read(65536):
            for event in connection.receive_data(data):
                if isinstance(event, h2.events.StreamEnded):
                    headers = [(":status", "200"), ("content-type", "application/grpc")]
                    connection.send_headers(event.stream_id, headers)
                    # Unbounded by flow control on purpose: a server that ignores the window.
                    writer.write(connection.data_to_send())
                    for at in range(0, len(body), 16384):
                        writer.write(_data_frame(event.stream_id, body[at : at + 16384]))
                    connection.send_headers(event.stream_id, trailers, end_stream=True)
            writer.write(connection.data_to_send())
            await writer.drain()
        writer.close()

    return serve


def _data_frame(stream_id: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + b"\x00\x00" + stream_id.to_bytes(4, "big") + payload


def grpc_message(status: int) -> bytes:
    message = health_pb2.HealthCheckResponse(status=status).SerializeToString()
    return b"\x00" + len(message).to_bytes(4, "big") + message


@pytest.mark.parametrize(
    ("handler", "passed", "says"),
    [
        (h2_server(grpc_message(1), [("grpc-status", "0")]), True, "-> SERVING"),
        (h2_server(grpc_message(2), [("grpc-status", "0")]), False, "-> NOT_SERVING; "),
        (h2_server(grpc_message(3), [("grpc-status", "0")]), False, "-> SERVICE_UNKNOWN; "),
        (
            h2_server(b"", [("grpc-status", "14"), ("grpc-message", "going%20away")]),
            False,
            "UNAVAILABLE: going away",
        ),
        (h2_server(b"", [("x-other", "1")]), False, "no grpc-status"),
        (h2_server(b"\x01" * (MAX_RESPONSE_BYTES + 1), [("grpc-status", "0")]), False, "more than 64 KiB"),
        (silent, False, f"-> no answer within {TIMEOUT_SECONDS:g} s"),
        (http1, False, "-> an HTTP/1.x answer: the app does not speak HTTP/2"),
    ],
    ids=["serving", "not-serving", "service-unknown", "unavailable", "no-status", "flood", "silent", "http1"],
)
async def test_one_check_against_a_server(handler: Handler, passed: bool, says: str) -> None:
    """What a check gets from each kind of server, said after `gRPC Health/Check("cart") at
    HOST:PORT`, within the timeout."""
    async with server(handler) as target:
        started = asyncio.get_running_loop().time()
        result = await check(target, TIMEOUT_SECONDS)
        assert asyncio.get_running_loop().time() - started < TIMEOUT_SECONDS + 0.5
    assert result[0] is passed, result
    assert result[1].startswith(f'gRPC Health/Check("cart") at 127.0.0.1:{target.port} -> '), result
    assert says in result[1], result


async def http2_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An HTTP/2-only server (prior knowledge) that answers GET /healthz 200, anything else 404."""
    connection = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    connection.initiate_connection()
    writer.write(connection.data_to_send())
    paths: dict[int, str] = {}
    while data := await reader.read(65536):
        for event in connection.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                paths[event.stream_id] = dict(event.headers)[b":path"].decode()
            if isinstance(event, h2.events.StreamEnded):
                status = "200" if paths[event.stream_id] == "/healthz" else "404"
                connection.send_headers(event.stream_id, [(":status", status)], end_stream=True)
        writer.write(connection.data_to_send())
        await writer.drain()
    writer.close()


async def test_a_health_path_of_an_h2c_app_is_a_get_over_http2() -> None:
    """`--app h2c://` with a health path: the GET goes over HTTP/2 with prior knowledge (an
    HTTP/2-only server answers it); a 404 says how to change the check."""
    async with server(http2_get) as target:
        healthy = AppHealth(f"h2c://127.0.0.1:{target.port}/healthz")
        async with asyncio.timeout(TIMEOUT_SECONDS * 5):
            await healthy.wait_healthy()
        assert healthy.last_check == f"GET h2c://127.0.0.1:{target.port}/healthz -> 200"
        missing = AppHealth(f"h2c://127.0.0.1:{target.port}/health")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(TIMEOUT_SECONDS):
                await missing.wait_healthy()
        assert missing.last_check == (
            f"GET h2c://127.0.0.1:{target.port}/health -> 404; set --app-health PATH (or grpc for a"
            " gRPC server), or '' to skip the check"
        )
