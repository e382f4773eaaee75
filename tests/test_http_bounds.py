"""A bound on every wait and every size (issue 17, section 4), black box over raw sockets and real
processes: --body-timeout cuts a client that stalls inside its request body or stops reading its
response, and frees its in-flight slot and its app connection; a consumer's --upstream-timeout
answers 504 for a provider instance that went silent and ejects it; request trailers count
toward the 64 KiB head limit (431, without blocking the sidecar meanwhile); response heads over
64 KiB or 100 field lines are a 502.

The apps are raw ones (tests.support.raw_app) that record what they read and when a connection
ends. Each request carries a marker no other request has, so "the app never saw it" is a lookup
in those records.
"""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.support.procs import SidecarProc, await_for, consumer_of, port_of, sidecar_in_front
from tests.support.raw_app import Link, RawApp, Received, marker
from tests.support.rawhttp import RawConnection, request, until_closed

BODY_TIMEOUT_SECONDS = 1.0
UPSTREAM_TIMEOUT_SECONDS = 1.0
# Bounds on a noisy shared machine: the sidecar acts within a second of a timeout, we look for
# several.
CLOSE_BOUND_SECONDS = 5.0
# Without the bound, a request to a frozen provider is still unanswered after this long (twice
# --upstream-timeout and more); short enough that the frozen provider's registry row, which its
# heartbeat no longer renews, does not expire meanwhile (the SQLite registry's TTL is 6 s, beaten
# every 2 s: at least 4 s left).
HELD_SECONDS = 2.5
# The contract's bounds on a head.
HEAD_LIMIT = 64 * 1024
FIELD_LINES_LIMIT = 100
# A response no chain of loopback buffers can absorb: Linux autotunes a receive buffer up to
# tcp_rmem's maximum (6 MiB by default, 32 MiB on some hosts) and a send buffer up to 4 MiB, on
# each of the two hops, besides the sidecar's own 64 KiB per direction. 128 MiB is far beyond
# their sum, and is written in pieces, never held whole.
BIG_RESPONSE_BYTES = 128 * 1024 * 1024
PIECE = b"x" * 65536
# The client that stops reading keeps its own buffers small, so that the sidecar's fill sooner.
CLIENT_RCVBUF = 4096
CLIENT_STREAM_LIMIT = 16 * 1024
# Trailers far beyond the head limit, sent in pieces until the sidecar closes the connection.
TRAILER_BYTES = 48 * 1024 * 1024
TRAILER_PIECE_BYTES = 64 * 1024
# A request on another connection is answered within this while a client floods trailers: the
# sidecar's event loop is not held up by them (on an idle machine it takes milliseconds).
PROMPT_SECONDS = 1.0

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
# Every answer of the app behind the --body-timeout sidecar closes its connection, so that no
# pooled app connection is ever idle there: a request always opens a new one, and the newest
# connection the app accepted is the one carrying the request under test.
OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def response_head(lines: list[bytes]) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(line + b"\r\n" for line in [b"Content-Length: 2", *lines])
        + b"\r\nok"
    )


# 100 KiB in one field; 150 small field lines; and, just under both bounds, 96 field lines (the
# Content-Length among them) of about 60 KiB in all.
HUGE_FIELD = response_head([b"X-Huge: " + b"h" * (100 * 1024)])
MANY_FIELDS = response_head([b"X-Line-%03d: v" % n for n in range(150)])
UNDER_FIELDS = [(f"X-Fill-{n:02d}", chr(ord("a") + n % 26) * 620) for n in range(95)]
UNDER_BOUNDS = response_head([f"{name}: {value}".encode() for name, value in UNDER_FIELDS])


async def big_response(request: Received, link: Link, app: RawApp) -> bool:
    """A 200 of BIG_RESPONSE_BYTES, written in pieces as fast as the sidecar takes them."""
    await link.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG_RESPONSE_BYTES)
    for _ in range(BIG_RESPONSE_BYTES // len(PIECE)):
        await link.send(PIECE)
    return True


@pytest.fixture(scope="module")
def stalling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RawApp, SidecarProc]]:
    """A raw app behind a provider sidecar of its own with --body-timeout 1."""
    tmp_path = tmp_path_factory.mktemp("stalling")
    args = ("--app-health", "", "--body-timeout", f"{BODY_TIMEOUT_SECONDS:g}")
    registry = f"sqlite://{tmp_path / 'r.db'}"
    with (
        RawApp({"/big": big_response}, default=OK_CLOSE) as app,
        sidecar_in_front(tmp_path, registry, app.url, *args) as car,
    ):
        yield app, car


@pytest.fixture(scope="module")
def app() -> Iterator[RawApp]:
    replies = {"/huge-field": HUGE_FIELD, "/many-fields": MANY_FIELDS, "/under-bounds": UNDER_BOUNDS}
    with RawApp(replies, default=OK) as raw:
        yield raw


@pytest.fixture(scope="module")
def provider(
    app: RawApp, module_registry: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SidecarProc]:
    """A provider sidecar (instance id `provider`) in front of the raw app, default options."""
    tmp_path = tmp_path_factory.mktemp("provider")
    args = ("--app-health", "", "--instance-id", "provider")
    with sidecar_in_front(tmp_path, module_registry, app.url, *args) as car:
        yield car


@pytest.fixture(scope="module")
def impatient_consumer(
    provider: SidecarProc, module_registry: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SidecarProc, int]]:
    """A consumer sidecar in front of `provider` with --upstream-timeout 1."""
    timeout = ("--upstream-timeout", f"{UPSTREAM_TIMEOUT_SECONDS:g}")
    with consumer_of(tmp_path_factory.mktemp("consumer"), module_registry, "provider", *timeout) as consumer:
        yield consumer


@pytest.fixture(scope="module")
def patient_consumer(
    provider: SidecarProc, module_registry: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[SidecarProc, int]]:
    """A consumer sidecar in front of `provider` with the default options."""
    with consumer_of(tmp_path_factory.mktemp("consumer"), module_registry, "provider") as consumer:
        yield consumer


def instances(consumer: SidecarProc) -> list[tuple[str, bool]]:
    """(instance id, ejected) of each row of the consumer's table of `svc`."""
    rows = consumer.status()["upstreams"]["svc"]["instances"]
    return [(row["instance_id"], row["ejected"]) for row in rows]


@contextmanager
def frozen(car: SidecarProc) -> Iterator[None]:
    """The sidecar's process stopped (SIGSTOP) inside the block: its kernel still accepts
    connections and takes in bytes, but nothing answers; always continued (SIGCONT) after."""
    car.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        car.signal(signal.SIGCONT)


async def connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    """A non-blocking TCP socket connected to 127.0.0.1:`port`, with a receive buffer of
    `rcvbuf` bytes if given (set before connecting: it sizes the window)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


# -- --body-timeout -----------------------------------------------------------------------------


async def test_stalled_request_body_is_cut(stalling: tuple[RawApp, SidecarProc]) -> None:
    """A client that sends a head with Content-Length 100 and 10 bytes of body, then nothing, is
    closed after --body-timeout (1 s; a 408 first is allowed); its in-flight slot is freed and
    the connection that carried the request to the app is closed."""
    app, car = stalling
    before = app.accepted  # no idle pooled connection (see OK_CLOSE): this request opens one
    head = b"POST /upload HTTP/1.1\r\nHost: sidecar.test\r\nContent-Length: 100\r\n\r\n"
    async with await RawConnection.open(port_of(car)) as conn:
        started = time.monotonic()
        await conn.send(head + b"0123456789")
        await await_for(lambda: car.status()["inflight"] == 1, CLOSE_BOUND_SECONDS, "the upload in flight")
        rest = await conn.read_to_eof(CLOSE_BOUND_SECONDS)
        elapsed = time.monotonic() - started
    assert rest == b"" or rest.startswith(b"HTTP/1.1 408"), rest[:200]
    assert elapsed >= BODY_TIMEOUT_SECONDS / 2, f"closed after {elapsed:.2f} s: that is no timeout"
    await await_for(lambda: car.status()["inflight"] == 0, CLOSE_BOUND_SECONDS, "the in-flight slot freed")

    def app_connection_ended() -> bool:
        return app.accepted > before and set(range(before + 1, app.accepted + 1)) <= app.ended

    await app.wait_until(app_connection_ended, "end of the connection that carried the upload")


async def test_client_not_reading_response_is_cut(stalling: tuple[RawApp, SidecarProc]) -> None:
    """A client that asks for a response far larger than every buffer on the way and never reads
    it is closed after --body-timeout (1 s): its in-flight slot is freed, the app's connection
    closed, and what the client then finds is a 200 cut short, then the end of the connection."""
    app, car = stalling
    mark = marker("not-reading")
    sock = await connect(port_of(car), CLIENT_RCVBUF)
    reader, writer = await asyncio.open_connection(sock=sock, limit=CLIENT_STREAM_LIMIT)
    async with RawConnection(reader, writer) as conn:
        await conn.send(request("GET", f"/big?m={mark}"))
        seen = await app.only_marked(mark)  # the app writes from now on
        started = time.monotonic()
        await await_for(
            lambda: car.status()["inflight"] == 0,
            BODY_TIMEOUT_SECONDS + CLOSE_BOUND_SECONDS,
            "the in-flight slot of a client that stopped reading freed",
        )
        elapsed = time.monotonic() - started
        await app.wait_until(
            lambda: seen.connection in app.ended, "end of the connection of the big response"
        )
        received = await conn.read_to_eof(CLOSE_BOUND_SECONDS)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head[:200]
    assert b"Content-Length: %d" % BIG_RESPONSE_BYTES in head, head[:200]
    assert len(body) < BIG_RESPONSE_BYTES
    assert elapsed >= BODY_TIMEOUT_SECONDS / 2, f"cut after {elapsed:.2f} s: that is no timeout"


# -- --upstream-timeout (consumer side) ---------------------------------------------------------


async def test_upstream_timeout_answers_504_and_ejects(
    provider: SidecarProc, impatient_consumer: tuple[SidecarProc, int]
) -> None:
    """With --upstream-timeout 1, a POST through the consumer to a provider whose process is
    frozen gets 504 within seconds (it may not go elsewhere), and the consumer's table shows
    the instance ejected."""
    consumer, port = impatient_consumer
    await await_for(lambda: instances(consumer) == [("provider", False)], what="the provider not ejected")
    async with await RawConnection.open(port) as conn:
        with frozen(provider):
            started = time.monotonic()
            await conn.send(request("POST", f"/frozen?m={marker('frozen')}", body=b"hello"))
            response = await conn.head(timeout=CLOSE_BOUND_SECONDS)
            elapsed = time.monotonic() - started
            table = instances(consumer)
    assert response.status == 504, response
    assert elapsed >= UPSTREAM_TIMEOUT_SECONDS / 2, f"answered after {elapsed:.2f} s: that is no timeout"
    assert table == [("provider", True)]


async def test_frozen_provider_holds_a_request_by_default(
    provider: SidecarProc, patient_consumer: tuple[SidecarProc, int]
) -> None:
    """Without --upstream-timeout (60 s by default), a POST to a frozen provider is still
    unanswered well after the 1 s above, and the instance is not ejected: the 504 is the
    option's doing."""
    consumer, port = patient_consumer
    await await_for(lambda: instances(consumer) == [("provider", False)], what="the provider not ejected")
    async with await RawConnection.open(port) as conn:
        with frozen(provider):
            await conn.send(request("POST", f"/frozen?m={marker('held')}", body=b"hello"))
            with pytest.raises(AssertionError, match="no response head"):
                await conn.head(timeout=HELD_SECONDS)
            table = instances(consumer)
    assert table == [("provider", False)]


# -- trailers count toward the head limit -------------------------------------------------------


def trailer_pieces(shape: str) -> Iterator[bytes]:
    """TRAILER_BYTES of trailer section, never ended, in pieces: one field that never ends, or
    many 1 KB field lines."""
    count = TRAILER_BYTES // TRAILER_PIECE_BYTES
    if shape == "one-field":
        yield b"X-Huge: "
        piece = b"t" * TRAILER_PIECE_BYTES
    else:
        line = b"X-Trailer: " + b"t" * 1000 + b"\r\n"
        piece = line * (TRAILER_PIECE_BYTES // len(line))
    for _ in range(count):
        yield piece


async def flood(sock: socket.socket, pieces: Iterator[bytes], answer: asyncio.Task[bytes]) -> None:
    """Sends `pieces` until they run out, `answer` came, or the peer closed the connection."""
    loop = asyncio.get_running_loop()
    for piece in pieces:
        if answer.done():
            return
        try:
            await loop.sock_sendall(sock, piece)
        except (BrokenPipeError, ConnectionResetError):
            return


async def probe_until(port: int, done: asyncio.Task[bytes]) -> list[float]:
    """How long requests on new connections take to be answered, one after another, until
    `done` is (at least one request)."""
    latencies = []
    while True:
        started = time.monotonic()
        async with await RawConnection.open(port) as conn:
            await conn.send(request("GET", "/probe"))
            response = await conn.response()
        assert response.status == 200, response
        latencies.append(time.monotonic() - started)
        if done.done():
            return latencies


@pytest.mark.parametrize("shape", ["one-field", "many-fields"])
async def test_trailers_over_the_head_limit_get_431(app: RawApp, provider: SidecarProc, shape: str) -> None:
    """A chunked request whose trailer section runs past 64 KiB gets 431 and its connection is
    closed, quickly, the app never getting it whole; meanwhile the sidecar answers a request on
    another connection promptly (the flood does not hold up its event loop)."""
    mark = marker(f"trailers-{shape}")
    head = (
        f"POST /trailers?m={mark} HTTP/1.1\r\nHost: sidecar.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n0\r\n"
    )
    loop = asyncio.get_running_loop()
    sock = await connect(port_of(provider))
    with sock:
        started = time.monotonic()
        await loop.sock_sendall(sock, head.encode())
        # Read off the raw socket, not a RawConnection: asyncio's stream transport stops reading
        # once a write fails, and the 431 that came before the reset would be lost (Linux keeps
        # what arrived before a reset for a reader of the socket).
        receive = functools.partial(loop.sock_recv, sock, 65536)
        answer = asyncio.create_task(until_closed(receive, CLOSE_BOUND_SECONDS))
        flooding = asyncio.create_task(flood(sock, trailer_pieces(shape), answer))
        try:
            latencies = await probe_until(port_of(provider), answer)
            received = await answer
            elapsed = time.monotonic() - started
        finally:
            flooding.cancel()
            await asyncio.gather(flooding, return_exceptions=True)
    status_line, *fields = received.partition(b"\r\n\r\n")[0].split(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 431 "), received[:200]
    assert b"connection: close" in [field.lower() for field in fields], received[:200]
    assert elapsed < CLOSE_BOUND_SECONDS
    assert max(latencies) < PROMPT_SECONDS, f"requests on another connection took {latencies}"
    assert app.marked(mark) == []


# -- response heads -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/huge-field", "/many-fields"])
async def test_oversized_response_head_is_502(app: RawApp, provider: SidecarProc, path: str) -> None:
    """An app response head over 64 KiB (one 100 KiB field) or over 100 field lines (150) is
    answered 502 with a JSON error, and the app's connection is closed."""
    mark = marker("big-head")
    async with await RawConnection.open(port_of(provider)) as conn:
        await conn.send(request("GET", f"{path}?m={mark}"))
        response = await conn.response()
    assert response.status == 502, (response.status, len(response.raw_head), len(response.headers))
    assert response.header("Content-Type") == "application/json"
    assert json.loads(response.body)["error"]
    seen = await app.only_marked(mark)
    await app.wait_until(lambda: seen.connection in app.ended, f"end of the connection of {path}")


async def test_response_head_under_both_bounds_passes(app: RawApp, provider: SidecarProc) -> None:
    """A response head just under both bounds (96 field lines, about 60 KiB) reaches the client
    whole: the 502s above are the bounds' doing."""
    assert len(UNDER_BOUNDS) < HEAD_LIMIT - 4096
    assert len(UNDER_FIELDS) + 1 < FIELD_LINES_LIMIT
    async with await RawConnection.open(port_of(provider)) as conn:
        await conn.send(request("GET", "/under-bounds"))
        response = await conn.response()
    assert response.status == 200, response.status
    assert [(name, value) for name, value in response.headers if name.startswith("X-Fill-")] == UNDER_FIELDS
    assert response.body == b"ok"
