"""Upgraded connections (WebSocket and any other protocol), black box: the upgrade request reaches
the app with its upgrade headers, and after `101 Switching Protocols` both directions are
spliced byte for byte until either side closes, through a provider sidecar and through a
consumer sidecar in front of it. An upgraded connection counts as in flight; a drain lets it run
until --drain-timeout, then closes it and reports it (504, inflight 1, drained false).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import httpx
import pytest

from tests.support.procs import (
    SidecarChain,
    SidecarProc,
    await_for,
    demo_app,
    port_of,
    sidecar,
    sidecar_in_front,
)
from tests.support.raw_app import Link, RawApp, Received
from tests.support.rawhttp import RawConnection, request

BOUND_SECONDS = 10.0


async def echo_round_trips(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Text and binary messages, small and large, come back as sent."""
    for text in ("hello", "é" * 10_000):
        await ws.send_str(text)
        assert await ws.receive_str(timeout=BOUND_SECONDS) == text
    for data in (b"\x00\xff" * 3, os.urandom(300_000)):
        await ws.send_bytes(data)
        assert await ws.receive_bytes(timeout=BOUND_SECONDS) == data


@pytest.mark.parametrize("via", ["provider", "consumer"])
async def test_websocket_echo_counts_in_flight(chain: SidecarChain, via: str) -> None:
    """A WebSocket through the provider sidecar (or the consumer and the provider) echoes
    messages both ways; while open it is in flight on the provider, once closed it is not."""
    url = chain.provider.url if via == "provider" else chain.consumer_url
    async with aiohttp.ClientSession() as session, session.ws_connect(f"{url}/ws") as ws:
        await echo_round_trips(ws)
        assert chain.provider.status()["inflight"] == 1
    await await_for(lambda: chain.provider.status()["inflight"] == 0, 5, "in flight back to 0")


# -- a protocol of our own: raw bytes after the 101 -------------------------------------------------

SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: rawecho\r\n\r\n"
# Bytes an HTTP parser would choke on or take for messages: they must pass as they are.
TRICKY = [
    b"GET /not-a-request HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
    bytes(range(256)),
    os.urandom(200_000),
    b"0\r\n\r\n",
]


async def raw_echo(request: Received, link: Link, app: RawApp) -> bool:
    """Switches to `rawecho` and echoes every byte until the peer closes."""
    await link.send(SWITCH)
    while data := await link.reader.read(65536):
        await link.send(data)
    app.note("echo: peer closed")
    return False


async def raw_once(request: Received, link: Link, app: RawApp) -> bool:
    """Switches to `rawecho`, echoes one read's worth of bytes, then closes itself."""
    await link.send(SWITCH)
    await link.send(await link.reader.read(65536))
    return False


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RawApp, SidecarProc]]:
    tmp_path = tmp_path_factory.mktemp("raw-upgrade")
    with RawApp({"/raw": raw_echo, "/once": raw_once}) as app:
        args = ("--app-health", "")
        with sidecar_in_front(tmp_path, f"sqlite://{tmp_path / 'r.db'}", app.url, *args) as car:
            yield app, car


UPGRADE = [("Connection", "Upgrade"), ("Upgrade", "rawecho"), ("X-Custom", "kept")]


async def switch(conn: RawConnection, path: str) -> None:
    await conn.send(request("GET", path, UPGRADE))
    response = await conn.head()
    assert response.status == 101, response
    assert response.header("Upgrade") == "rawecho"
    assert "upgrade" in (response.header("Connection") or "").lower()


async def test_upgrade_is_spliced_byte_for_byte(scripted: tuple[RawApp, SidecarProc]) -> None:
    """An upgrade request reaches the app with its Upgrade and Connection headers; after the 101,
    bytes that look like HTTP or like nothing at all go both ways unchanged; the client closing
    reaches the app as the end of its stream."""
    app, car = scripted
    async with await RawConnection.open(port_of(car)) as conn:
        await switch(conn, "/raw")
        for data in TRICKY:
            await conn.send(data)
            async with asyncio.timeout(BOUND_SECONDS):
                assert await conn.reader.readexactly(len(data)) == data
    head = app.of_path("/raw")[0]
    assert head.header("Upgrade") == "rawecho"
    assert "upgrade" in (head.header("Connection") or "").lower()
    assert head.header("X-Custom") == "kept"
    await app.wait_until(lambda: "echo: peer closed" in app.notes, "close from the client", timeout=5)
    await await_for(lambda: car.status()["inflight"] == 0, 5, "in flight back to 0")


async def test_app_closing_an_upgraded_connection_closes_it(
    scripted: tuple[RawApp, SidecarProc],
) -> None:
    """When the app closes its side of an upgraded connection, the client sees the end of the
    stream after the last bytes the app sent, and nothing is in flight any more."""
    _, car = scripted
    async with await RawConnection.open(port_of(car)) as conn:
        await switch(conn, "/once")
        await conn.send(b"last words")
        assert await conn.read_to_eof(BOUND_SECONDS) == b"last words"
    await await_for(lambda: car.status()["inflight"] == 0, 5, "in flight back to 0")


# -- draining --------------------------------------------------------------------------------------


async def test_drain_runs_upgraded_connection_until_drain_timeout(tmp_path: Path) -> None:
    """While draining, an open WebSocket keeps working until --drain-timeout (2 s); then the
    sidecar closes it and /shutdown answers 504 with inflight 1 and drained false."""
    registry = f"sqlite://{tmp_path / 'r.db'}"
    args = ("--instance-id", "ws-drain", "--drain-timeout", "2", "--quiet-period", "0.2")
    with demo_app(tmp_path) as app, sidecar(tmp_path, registry, app, *args) as car:
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{car.url}/ws") as ws,
            httpx.AsyncClient(timeout=30) as http,
        ):
            await echo_round_trips(ws)
            started = time.monotonic()
            shutdown = asyncio.create_task(http.get(f"{car.admin}/shutdown"))
            try:
                await await_for(lambda: car.status()["phase"] == "draining", what="draining")
                await echo_round_trips(ws)  # still spliced while the drain runs
                answer = await shutdown
            finally:
                shutdown.cancel()
            elapsed = time.monotonic() - started
            message = await ws.receive(timeout=BOUND_SECONDS)
            assert message.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.ERROR,
            )
        assert answer.status_code == 504, answer.text
        body = answer.json()
        assert (body["drained"], body["inflight"]) == (False, 1)
        assert elapsed >= 1.5, f"/shutdown answered after {elapsed:.1f} s, before the drain timeout"
