"""The raw HTTP/2 client of the protocol tests (tests/support/rawh2.py), checked against a real
HTTP/2 server: nghttpd, nghttp2's own (Debian's nghttp2-server, `make tools`), and the grpcio
server of tests/support/grpc_app.py for a gRPC call written frame by frame.

What nghttpd answers here is nghttp2's behaviour, the reference the sidecar's HTTP/2 listeners
are held to: the same violations, sent the same way, are the tests of those listeners.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import hpack
import pytest
from h2.errors import ErrorCodes

from tests.support import rawh2
from tests.support.grpc_app import grpc_app
from tests.support.grpc_client import INSTANCE_SEPARATOR
from tests.support.nghttpd import Nghttpd
from tests.support.rawh2 import Flag, FrameType, H2Client, Setting

CONCURRENT_STREAMS = 2
BIG_FILE = 800 * 256  # more than the default window: the client must give window as it reads


@pytest.fixture(scope="module")
def nghttpd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nghttpd]:
    """nghttpd (h2c), at most 2 concurrent streams per connection, with a file bigger than a window."""
    with Nghttpd(tmp_path_factory.mktemp("nghttpd"), "-m", str(CONCURRENT_STREAMS)) as server:
        (server.htdocs / "big").write_bytes(bytes(range(256)) * (BIG_FILE // 256))
        yield server


async def test_handshake_and_ping(nghttpd: Nghttpd) -> None:
    """The server's SETTINGS come, ours are acknowledged, and a PING is acked with its opaque data."""
    async with await H2Client.open(nghttpd.port) as client:
        settings = await client.await_settings()
        assert settings[Setting.MAX_CONCURRENT_STREAMS] == CONCURRENT_STREAMS
        await client.ping(b"12345678")
        await client.ping(b"\x00" * 8)
        assert client.settings_acked == 1
        assert client.of_type(FrameType.SETTINGS)[0].stream_id == 0
        assert not client.closed


async def test_requests_and_responses(nghttpd: Nghttpd) -> None:
    """A GET, a POST echoed, and a body larger than the initial window (window given back) come whole."""
    async with await H2Client.open(nghttpd.port) as client:
        assert await client.request(1)
        response = await client.await_response(1)
        assert (response.status, response.data) == (200, b"hello\n")
        assert response.header("content-length") == "6"
        await client.request(3, "POST", "/", body=b"echo me", headers=[("content-length", "7")])
        assert (await client.await_response(3)).data == b"echo me"
        await client.request(5, "GET", "/big")
        big = await client.await_response(5)
        assert (big.status, len(big.data), big.reset) == (200, BIG_FILE, None)
        assert len(client.of_type(FrameType.DATA, 5)) > 1


@pytest.mark.parametrize(
    ("violation", "frames", "code", "last_stream"),
    [
        ("DATA on stream 0", [rawh2.data_frame(0, b"x")], ErrorCodes.PROTOCOL_ERROR, 0),
        (
            "PING of 7 bytes",
            [rawh2.frame_bytes(FrameType.PING, 0, 0, b"1234567")],
            ErrorCodes.FRAME_SIZE_ERROR,
            0,
        ),
        (
            "SETTINGS on a stream",
            [rawh2.frame_bytes(FrameType.SETTINGS, 0, 1, b"")],
            ErrorCodes.PROTOCOL_ERROR,
            0,
        ),
        ("WINDOW_UPDATE on an idle stream", [rawh2.window_update_frame(9, 1)], ErrorCodes.PROTOCOL_ERROR, 0),
        (
            "HEADERS on an even stream",
            [rawh2.headers_frame(2, rawh2.header_block(rawh2.request_headers()))],
            ErrorCodes.PROTOCOL_ERROR,
            0,
        ),
        (
            "window past 2^31-1",
            [rawh2.settings_frame({Setting.INITIAL_WINDOW_SIZE: 2**31})],
            ErrorCodes.FLOW_CONTROL_ERROR,
            0,
        ),
        (
            "CONTINUATION without HEADERS",
            [rawh2.continuation_frame(1, rawh2.header_block([("a", "b")]))],
            ErrorCodes.PROTOCOL_ERROR,
            0,
        ),
        (
            "a frame over SETTINGS_MAX_FRAME_SIZE",
            [
                rawh2.headers_frame(1, rawh2.header_block(rawh2.request_headers("POST")), end_stream=False),
                rawh2.data_frame(1, b"x" * 16_385),
            ],
            ErrorCodes.FRAME_SIZE_ERROR,
            1,  # the stream it came on was open
        ),
    ],
)
async def test_protocol_violation_ends_the_connection_with_goaway(
    nghttpd: Nghttpd, violation: str, frames: list[bytes], code: int, last_stream: int
) -> None:
    """A connection error is a GOAWAY with its error code, then the close; another connection goes on."""
    async with await H2Client.open(nghttpd.port) as bystander, await H2Client.open(nghttpd.port) as client:
        await client.await_settings()
        await client.send(*frames)
        goaway = await client.await_goaway()
        assert goaway.error_code == code, violation
        assert goaway.last_stream_id == last_stream
        assert await client.await_closed()
        await bystander.ping()


async def test_stream_error_resets_only_its_stream(nghttpd: Nghttpd) -> None:
    """An uppercase header name is a stream error: RST_STREAM PROTOCOL_ERROR, the connection goes on."""
    async with await H2Client.open(nghttpd.port) as client:
        await client.request(1, headers=[("X-Upper", "1")])
        assert await client.await_rst(1) == ErrorCodes.PROTOCOL_ERROR
        await client.request(3)
        assert (await client.await_response(3)).status == 200
        assert client.goaways == []


async def test_refused_stream_over_the_concurrency_limit(nghttpd: Nghttpd) -> None:
    """A stream over SETTINGS_MAX_CONCURRENT_STREAMS is refused (REFUSED_STREAM), the others go on."""
    # No window for the responses: the first streams stay open, waiting for it.
    async with await H2Client.open(nghttpd.port, settings={Setting.INITIAL_WINDOW_SIZE: 0}) as client:
        for stream in (1, 3, 5):
            await client.request(stream, "GET", "/big")
        assert await client.await_rst(5) == ErrorCodes.REFUSED_STREAM
        assert sorted(client.resets) == [5]
        await client.send(rawh2.settings_frame({Setting.INITIAL_WINDOW_SIZE: 65_535}))
        assert len((await client.await_response(1)).data) == BIG_FILE


async def test_rapid_reset_flood_is_cut_off(nghttpd: Nghttpd) -> None:
    """Streams opened and reset in a loop (CVE-2023-44487) end with a GOAWAY, then the close."""
    block = rawh2.header_block(rawh2.request_headers())
    streams = range(1, 8001, 2)
    flood = b"".join(rawh2.headers_frame(s, block) + rawh2.rst_stream_frame(s) for s in streams)
    async with await H2Client.open(nghttpd.port) as client:
        await client.send(flood)
        goaway = await client.await_goaway()
        assert goaway.error_code != ErrorCodes.NO_ERROR
        assert goaway.last_stream_id < streams[-1]
        assert await client.await_closed()


async def test_continuation_flood_is_cut_off(nghttpd: Nghttpd) -> None:
    """A header block that never ends (a CONTINUATION flood) gets the connection closed."""
    field = rawh2.hpack_literal(b"x-flood", b"v" * 1000, indexing=False)
    async with await H2Client.open(nghttpd.port) as client:
        await client.send(
            rawh2.headers_frame(1, rawh2.header_block(rawh2.request_headers()), end_headers=False)
        )
        for _ in range(100):  # 10 MB at most
            if not await client.send(*[rawh2.continuation_frame(1, field, end_headers=False)] * 100):
                break
        assert await client.await_closed()


def test_hpack_helpers_decode_as_built() -> None:
    """Hand-built HPACK representations decode as meant, the dynamic table included."""
    block = (
        rawh2.hpack_literal(b"x-big", b"v" * 300)  # into the dynamic table: index 62
        + rawh2.hpack_indexed(62) * 3
        + rawh2.hpack_indexed(2)  # static: :method GET
        + rawh2.hpack_literal(b"x-once", b"1", indexing=False)
    )
    expected = [("x-big", "v" * 300)] * 4 + [(":method", "GET"), ("x-once", "1")]
    decoded: list[object] = [tuple(field) for field in hpack.Decoder().decode(block)]
    assert decoded == expected
    assert rawh2.hpack_int(1337, 5) == bytes([31, 154, 10])  # RFC 7541 C.1.2
    standalone = rawh2.header_block(rawh2.request_headers())
    decoder = hpack.Decoder()
    assert list(decoder.decode(standalone)) == list(decoder.decode(standalone))  # no table state


def test_frame_bytes_can_lie() -> None:
    """A hand-built frame takes any length field and the reserved bit; the payload is as given."""
    frame = rawh2.frame_bytes(FrameType.PING, Flag.ACK, 3, b"12345678", length=100, reserved=True)
    assert frame[:3] == (100).to_bytes(3, "big")
    assert frame[3:5] == bytes([FrameType.PING, Flag.ACK])
    assert struct.unpack(">I", frame[5:9])[0] == 0x80000003
    assert frame[9:] == b"12345678"


async def test_grpc_call_frame_by_frame(tmp_path: Path) -> None:
    """A gRPC unary call written as raw frames is answered: headers, one message, grpc-status trailers."""
    with grpc_app(tmp_path, name="raw") as app:
        async with await H2Client.open(app.port) as client:
            await client.grpc_request(1, "/test.Echo/Unary", [b"ping"])
            response = await client.await_response(1)
            assert response.status == 200
            assert response.header("content-type") == "application/grpc"
            assert response.data == rawh2.grpc_message(b"raw" + INSTANCE_SEPARATOR + b"ping")
            assert response.trailer("grpc-status") == "0"
            await client.grpc_request(3, "/test.Echo/Nope")
            failed = await client.await_response(3)
            # An unknown method: trailers only, a single header block with the status.
            assert failed.header("grpc-status") == "12"  # UNIMPLEMENTED
            assert failed.trailers == []
