"""An app that fails the inbound proxy, black box with a raw app: a response cut off
mid-body is a 502 that still carries the closing marks while draining, and with --app-timeout an
app that goes silent gets its request answered 504 (or its response cut) and the in-flight slot
freed, so that a drain is not held up by it.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.support.procs import await_for, port_of, sidecar_in_front
from tests.support.raw_app import CUT, Link, RawApp, Received
from tests.support.rawhttp import RawConnection, request

BOUND_SECONDS = 10.0
APP_TIMEOUT_SECONDS = 1.0


async def slow(request: Received, link: Link, app: RawApp) -> bool:
    """Answers once the test releases the app."""
    await app.released()
    await link.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    return False


async def never(request: Received, link: Link, app: RawApp) -> bool:
    """Says nothing until the test releases the app, then closes."""
    await app.released()
    return False


async def partial(request: Received, link: Link, app: RawApp) -> bool:
    """Announces 100 bytes, sends 10, then says nothing until released."""
    await link.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
    await app.released()
    return False


# Each one the last on its connection: the app closes it after (they return False).
REPLIES = {"/slow": slow, "/cut": CUT, "/never": never, "/partial": partial}


async def test_cut_off_response_while_draining_is_marked_closing(tmp_path: Path) -> None:
    """While draining (a slow request keeps the drain open), the 502 for a response cut off
    mid-body carries X-Sidecar-Closing and Connection: close like every other response."""
    registry = f"sqlite://{tmp_path / 'r.db'}"
    args = ("--app-health", "", "--instance-id", "cutter", "--quiet-period", "0.2")
    with RawApp(REPLIES) as app, sidecar_in_front(tmp_path, registry, app.url, *args) as car:
        async with await RawConnection.open(port_of(car)) as slow_conn, httpx.AsyncClient(timeout=30) as http:
            await slow_conn.send(request("GET", "/slow"))
            await await_for(lambda: car.status()["inflight"] == 1, what="the slow request in flight")
            shutdown = asyncio.create_task(http.get(f"{car.admin}/shutdown"))
            try:
                await await_for(lambda: car.status()["phase"] == "draining", what="draining")
                # A new connection: idle ones are closed as the drain starts.
                async with await RawConnection.open(port_of(car)) as cut_conn:
                    await cut_conn.send(request("GET", "/cut"))
                    response = await cut_conn.response()
                assert response.status == 502, response
                assert response.header("X-Sidecar-Closing") == "cutter"
                assert response.closing
                app.release()
                assert (await slow_conn.response()).status == 200
                drained = await shutdown
            finally:
                app.release()
                shutdown.cancel()
        assert drained.json()["drained"] is True


@pytest.mark.parametrize("path", ["/never", "/partial"])
async def test_app_timeout_frees_the_request(tmp_path: Path, path: str) -> None:
    """With --app-timeout 1, an app silent before answering gets the request a 504 from the
    sidecar, and one silent mid-body too unless part of the response was sent already: then the
    connection is closed before the announced length. Either way the in-flight slot is freed
    and a drain ends at once."""
    registry = f"sqlite://{tmp_path / 'r.db'}"
    args = ("--app-health", "", "--app-timeout", str(APP_TIMEOUT_SECONDS), "--quiet-period", "0.2")
    with RawApp(REPLIES) as app, sidecar_in_front(tmp_path, registry, app.url, *args) as car:
        try:
            async with await RawConnection.open(port_of(car)) as conn:
                started = time.monotonic()
                await conn.send(request("GET", path))
                response = await conn.head()
                if response.status != 504:  # a 504 needs nothing of the response sent yet
                    assert path == "/partial", response
                    assert (response.status, response.header("Content-Length")) == (200, "100")
                    assert len(await conn.read_to_eof(BOUND_SECONDS)) < 100
                elapsed = time.monotonic() - started
            assert elapsed >= APP_TIMEOUT_SECONDS / 2, f"gave up after {elapsed:.1f} s: that is no timeout"
            await await_for(lambda: car.status()["inflight"] == 0, 5, "the in-flight slot freed")
            async with httpx.AsyncClient(timeout=30) as http:
                started = time.monotonic()
                drained = await http.get(f"{car.admin}/shutdown")
            assert drained.json()["drained"] is True
            assert time.monotonic() - started < 5.0
        finally:
            app.release()


async def test_no_app_timeout_by_default(tmp_path: Path) -> None:
    """Without --app-timeout the sidecar waits for a silent app as long as it takes: no answer
    while the app says nothing, the request stays in flight."""
    registry = f"sqlite://{tmp_path / 'r.db'}"
    args = ("--app-health", "", "--drain-timeout", "2")
    with RawApp(REPLIES) as app, sidecar_in_front(tmp_path, registry, app.url, *args) as car:
        try:
            async with await RawConnection.open(port_of(car)) as conn:
                await conn.send(request("GET", "/never"))
                await await_for(lambda: car.status()["inflight"] == 1, what="the request in flight")
                with pytest.raises(AssertionError, match="no response head"):
                    await conn.head(timeout=2 * APP_TIMEOUT_SECONDS)
                assert car.status()["inflight"] == 1
        finally:
            app.release()
