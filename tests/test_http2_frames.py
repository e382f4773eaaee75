"""HTTP/2 at the frame level, black-box over raw sockets (tests/support/rawh2.py): the two-step
GOAWAY drain, REFUSED_STREAM for what is not forwarded, and the bounds that hold against the
known attacks on HTTP/2 proxies (rapid reset, floods, oversized or inflating header blocks,
CONTINUATION runs) and against malformed frames, each ending one connection only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from h2.errors import ErrorCodes

from tests.support import grpc_client
from tests.support.grpc_app import GrpcAppProc, grpc_app
from tests.support.procs import SidecarProc, await_for, demo_app, port_of, sidecar, sidecar_in_front, wait_for
from tests.support.rawh2 import (
    GRPC_REQUEST_HEADERS,
    PREFACE,
    ConnectionClosed,
    FrameType,
    H2Client,
    continuation_frame,
    data_frame,
    frame_bytes,
    grpc_message,
    header_block,
    headers_frame,
    hpack_indexed,
    hpack_literal,
    ping_frame,
    request_headers,
    rst_stream_frame,
    settings_frame,
    window_update_frame,
)

MAX_STREAM_ID = 2**31 - 1
SLEEP_CALL = "/test.Echo/Unary"


@pytest.fixture
def provider(tmp_path: Path) -> Iterator[tuple[GrpcAppProc, SidecarProc]]:
    """A grpc_app behind a provider sidecar (h2c to the app), on a SQLite registry."""
    with grpc_app(tmp_path, "p1") as app:
        registry = f"sqlite://{tmp_path / 'registry.db'}"
        url = f"h2c://127.0.0.1:{app.port}"
        with sidecar_in_front(tmp_path, registry, url, "--app-health", "grpc") as car:
            yield app, car


def sleep_message(seconds: float) -> bytes:
    return grpc_client.command(sleep=seconds)


def served(app: GrpcAppProc) -> int:
    return int(grpc_client.stats(app.target)["served"])


async def test_settings_advertise_the_stream_limit(provider: tuple[GrpcAppProc, SidecarProc]) -> None:
    """The sidecar's SETTINGS say 100 concurrent streams and a 64 KiB header list."""
    async with await H2Client.open(port_of(provider[1])) as client:
        settings = await client.await_settings()
    assert settings[0x3] == 100
    assert settings[0x6] == 64 * 1024


async def test_drain_is_two_goaways_and_refuses_what_came_after(
    provider: tuple[GrpcAppProc, SidecarProc],
) -> None:
    """Draining: GOAWAY(2^31-1) and a PING, then GOAWAY with the last stream forwarded; a stream
    above it gets REFUSED_STREAM and never reaches the app, the one below it completes."""
    app, car = provider
    async with await H2Client.open(port_of(car)) as client, httpx.AsyncClient(timeout=30) as admin:
        await client.grpc_request(1, SLEEP_CALL, [sleep_message(2)], headers=[("x-mark", "first")])
        # The call is at the app: the drain must wait for it.
        await await_for(lambda: grpc_client.stats(app.target)["inflight"] == 1, what="the call at the app")
        shutdown = asyncio.create_task(admin.get(f"{car.admin}/shutdown"))
        first = await client.await_goaway(timeout=10)
        assert (first.last_stream_id, first.error_code) == (MAX_STREAM_ID, ErrorCodes.NO_ERROR)
        second = await client.await_goaway(timeout=10)  # our client acks the PING at once
        assert (second.last_stream_id, second.error_code) == (1, ErrorCodes.NO_ERROR)
        await client.grpc_request(3, SLEEP_CALL, [b"late"], headers=[("x-mark", "late")])
        assert await client.await_rst(3) == ErrorCodes.REFUSED_STREAM
        done = await client.await_response(1, timeout=10)
        assert dict(done.trailers).get("grpc-status") == "0"
        body = (await shutdown).json()
    assert body["drained"] is True
    marks = grpc_client.stats(app.target)["marks"]
    assert "first" in marks
    assert "late" not in marks


async def test_streams_beyond_the_limit_are_refused_not_the_connection(
    provider: tuple[GrpcAppProc, SidecarProc],
) -> None:
    """The 101st concurrent stream gets REFUSED_STREAM; the 100 before it, and the connection,
    go on."""
    _, car = provider
    async with await H2Client.open(port_of(car)) as client:
        block = header_block(
            request_headers("POST", SLEEP_CALL, headers=[("content-type", "application/grpc")])
        )
        # HEADERS without END_STREAM: each stream stays open, waiting for its body.
        frames = [headers_frame(2 * n + 1, block, end_stream=False) for n in range(101)]
        await client.send(*frames)
        assert await client.await_rst(201) == ErrorCodes.REFUSED_STREAM
        assert not client.goaways
        await client.send(data_frame(1, grpc_message(b"one"), end_stream=True))
        response = await client.await_response(1, timeout=10)
        assert response.status == 200


async def test_rapid_reset_is_cut_with_enhance_your_calm(provider: tuple[GrpcAppProc, SidecarProc]) -> None:
    """Streams opened and reset in a loop (CVE-2023-44487) end that connection with GOAWAY
    ENHANCE_YOUR_CALM; another connection is served as before."""
    _, car = provider
    async with await H2Client.open(port_of(car)) as client:
        block = header_block(
            request_headers("POST", SLEEP_CALL, headers=[("content-type", "application/grpc")])
        )
        frames: list[bytes] = []
        for n in range(1000):
            frames += [headers_frame(2 * n + 1, block, end_stream=False), rst_stream_frame(2 * n + 1)]
        await client.send(*frames)
        goaway = await client.await_goaway(timeout=10)
        assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert await client.await_closed(timeout=10)
    assert grpc_client.unary(f"127.0.0.1:{port_of(car)}", b"still here") == ("p1", b"still here")


async def test_streams_made_to_be_reset_count_as_resets(provider: tuple[GrpcAppProc, SidecarProc]) -> None:
    """Streams opened and then made to be reset by the sidecar (a WINDOW_UPDATE of 0 on each, a
    stream error: MadeYouReset, CVE-2025-8671) count as resets: the connection ends with GOAWAY
    ENHANCE_YOUR_CALM, and the calls that reached the app were cancelled, not left running."""
    app, car = provider
    async with await H2Client.open(port_of(car)) as client:
        block = header_block(request_headers("POST", SLEEP_CALL, headers=list(GRPC_REQUEST_HEADERS)))
        call = grpc_message(sleep_message(30))
        frames: list[bytes] = []
        for n in range(1000):
            stream = 2 * n + 1
            frames += [
                headers_frame(stream, block, end_stream=False),
                data_frame(stream, call, end_stream=True),
            ]
            frames.append(window_update_frame(stream, 0))
        await client.send(*frames)
        goaway = await client.await_goaway(timeout=10)
        assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert await client.await_closed(timeout=10)
    await await_for(lambda: grpc_client.stats(app.target)["inflight"] == 0, timeout=15, what="the app idle")


async def test_malformed_requests_in_a_loop_are_cut(provider: tuple[GrpcAppProc, SidecarProc]) -> None:
    """Malformed requests (an upper-case field name: each a stream error the sidecar answers with
    RST_STREAM) sent in a loop end the connection with GOAWAY ENHANCE_YOUR_CALM, as the client's
    own resets would; none reaches the app."""
    app, car = provider
    before = served(app)
    block = header_block(request_headers("POST", SLEEP_CALL, headers=[("X-Upper", "1")]))
    async with await H2Client.open(port_of(car)) as client:
        await client.send(*[headers_frame(2 * n + 1, block) for n in range(1000)])
        goaway = await client.await_goaway(timeout=10)
        assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    assert served(app) == before


async def test_empty_data_flood_is_cut(provider: tuple[GrpcAppProc, SidecarProc]) -> None:
    """Empty DATA frames in a loop end the connection with GOAWAY ENHANCE_YOUR_CALM."""
    _, car = provider
    async with await H2Client.open(port_of(car)) as client:
        block = header_block(
            request_headers("POST", SLEEP_CALL, headers=[("content-type", "application/grpc")])
        )
        await client.send(headers_frame(1, block, end_stream=False), *[data_frame(1, b"")] * 2000)
        goaway = await client.await_goaway(timeout=10)
        assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM


async def test_header_list_over_64_kib_is_refused(provider: tuple[GrpcAppProc, SidecarProc]) -> None:
    """A header list over 64 KiB never reaches the app: the connection ends with GOAWAY."""
    app, car = provider
    before = served(app)
    async with await H2Client.open(port_of(car)) as client:
        headers = [("content-type", "application/grpc"), *[(f"x-big-{n}", "v" * 1000) for n in range(70)]]
        await client.send(
            headers_frame(1, header_block(request_headers("POST", SLEEP_CALL, headers=headers)))
        )
        goaway = await client.await_goaway(timeout=10)
        assert goaway.error_code != ErrorCodes.NO_ERROR
    assert served(app) == before


async def test_hpack_block_that_inflates_past_the_limit_is_refused(
    provider: tuple[GrpcAppProc, SidecarProc],
) -> None:
    """One 4 KiB table entry referenced 100 times (400 KiB once decoded, 300 bytes on the wire)
    is refused, and the sidecar answers others."""
    app, car = provider
    before = served(app)
    async with await H2Client.open(port_of(car)) as client:
        pseudo = header_block(request_headers("POST", SLEEP_CALL))
        bomb = pseudo + hpack_literal(b"x-bomb", b"b" * 4000) + hpack_indexed(62) * 100
        await client.send(headers_frame(1, bomb))
        goaway = await client.await_goaway(timeout=10)
        assert goaway.error_code != ErrorCodes.NO_ERROR
    assert served(app) == before
    assert grpc_client.unary(f"127.0.0.1:{port_of(car)}", b"after")[1] == b"after"


async def test_continuation_flood_is_bounded(provider: tuple[GrpcAppProc, SidecarProc]) -> None:
    """A HEADERS frame followed by CONTINUATION frames that never end the block (the 2024
    CONTINUATION flood) ends the connection instead of growing without bound."""
    _, car = provider
    async with await H2Client.open(port_of(car)) as client:
        block = header_block(request_headers("POST", SLEEP_CALL))
        frames = [headers_frame(1, block, end_stream=True, end_headers=False)]
        frames += [continuation_frame(1, header_block([("x-more", "m" * 100)]), end_headers=False)] * 2000
        with contextlib.suppress(ConnectionClosed, ConnectionError, TimeoutError):
            await client.send(*frames)  # cut while sending: as good as a GOAWAY
        assert await client.await_closed(timeout=10)
        assert client.goaways
        assert client.goaways[0].error_code != ErrorCodes.NO_ERROR


async def test_empty_continuation_flood_is_bounded(provider: tuple[GrpcAppProc, SidecarProc]) -> None:
    """CONTINUATION frames with nothing in them (the 2024 flood's other form: the block never
    grows, so no byte bound ends it) end the connection with GOAWAY ENHANCE_YOUR_CALM."""
    _, car = provider
    async with await H2Client.open(port_of(car)) as client:
        block = header_block(request_headers("POST", SLEEP_CALL))
        frames = [headers_frame(1, block, end_stream=True, end_headers=False)]
        frames += [continuation_frame(1, b"", end_headers=False)] * 5000
        with contextlib.suppress(ConnectionClosed, ConnectionError, TimeoutError):
            await client.send(*frames)  # cut while sending: the GOAWAY came first
        goaway = await client.await_goaway(timeout=10)
        assert goaway.error_code == ErrorCodes.ENHANCE_YOUR_CALM


async def test_malformed_frame_ends_only_its_connection(provider: tuple[GrpcAppProc, SidecarProc]) -> None:
    """DATA on stream 0 is a connection error (PROTOCOL_ERROR); a call on another connection
    that was in flight meanwhile completes."""
    _, car = provider
    port = port_of(car)
    async with await H2Client.open(port) as other:
        await other.grpc_request(1, SLEEP_CALL, [sleep_message(1)])
        async with await H2Client.open(port) as client:
            await client.send(frame_bytes(FrameType.DATA, 0, 0, b"nope"))
            goaway = await client.await_goaway(timeout=10)
            assert goaway.error_code == ErrorCodes.PROTOCOL_ERROR
        response = await other.await_response(1, timeout=10)
        assert dict(response.trailers)["grpc-status"] == "0"


async def test_refused_after_the_drain_never_reaches_the_app(
    provider: tuple[GrpcAppProc, SidecarProc],
) -> None:
    """Once drained, a new connection's stream is refused with REFUSED_STREAM (never NO_ERROR or
    CANCEL, which gRPC reads as failures), and the app never sees it."""
    app, car = provider
    async with httpx.AsyncClient(timeout=30) as admin:
        assert (await admin.get(f"{car.admin}/shutdown")).json()["drained"] is True
    before = json.dumps(grpc_client.stats(app.target)["marks"])
    async with await H2Client.open(port_of(car)) as client:
        await client.grpc_request(1, SLEEP_CALL, [b"x"], headers=[("x-mark", "after-drain")])
        assert await client.await_rst(1) == ErrorCodes.REFUSED_STREAM
    assert json.dumps(grpc_client.stats(app.target)["marks"]) == before


def test_ping_flood_from_a_client_that_reads_nothing_is_bounded(tmp_path: Path) -> None:
    """A client that floods PINGs and reads none of the ACKs is read no more once its ACKs fill
    the sidecar's buffer (memory stays flat) and is cut after --body-timeout."""
    with grpc_app(tmp_path, "p1") as app:
        registry = f"sqlite://{tmp_path / 'registry.db'}"
        url = f"h2c://127.0.0.1:{app.port}"
        with sidecar_in_front(tmp_path, registry, url, "--app-health", "", "--body-timeout", "2") as car:
            before = rss_bytes(car.proc.pid)
            with socket.create_connection(("127.0.0.1", port_of(car))) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(PREFACE + settings_frame())
                sock.settimeout(2)
                flood = ping_frame() * 1000
                sent = 0
                with contextlib.suppress(TimeoutError, ConnectionError):
                    while sent < 200_000_000:  # 200 MB of PINGs at most: it must stop reading first
                        sock.sendall(flood)
                        sent += len(flood)
                assert sent < 200_000_000, "the sidecar kept reading a client that reads nothing"
                grown = rss_bytes(car.proc.pid) - before
                sock.settimeout(10)
                closed = wait_for(
                    lambda: _peer_closed(sock), timeout=15, what="the sidecar to cut the client"
                )
            assert closed
    assert grown < 16 * 1024 * 1024, grown


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the peer has closed (or reset) the connection: reads what is there until EOF."""
    sock.settimeout(0.5)
    try:
        while data := sock.recv(65536):
            del data
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def test_bodies_nobody_reads_give_the_connection_window_back(tmp_path: Path) -> None:
    """gRPC calls the sidecar answers itself, their bodies unread (the app speaks HTTP/1.1 only):
    eight of 200 kB on one connection, more than its 1 MiB window, are each answered, and the
    connection is not ended for going past its window."""
    registry = f"sqlite://{tmp_path / 'registry.db'}"
    body = grpc_message(b"m" * 200_000)
    pieces = [body[at : at + 16_384] for at in range(0, len(body), 16_384)]
    with demo_app(tmp_path) as app, sidecar(tmp_path, registry, app, "--app-health", "") as car:
        async with await H2Client.open(port_of(car)) as client:
            await client.await_settings()
            for stream in range(1, 17, 2):
                block = header_block(request_headers("POST", SLEEP_CALL, headers=GRPC_REQUEST_HEADERS))
                frames = [headers_frame(stream, block, end_stream=False)]
                frames += [data_frame(stream, piece, end_stream=piece is pieces[-1]) for piece in pieces]
                await client.send(*frames)
                response = await client.await_response(stream, timeout=10)
                assert response.header("grpc-status") == "14", response  # UNAVAILABLE: HTTP/1.1 app
                types = [value for name, value in response.headers if name == "content-type"]
                assert types == ["application/grpc"]  # one, gRPC's
            assert client.goaways == []
