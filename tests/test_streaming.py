"""Bodies stream through the inbound proxy, black box: a chunked response reaches the client
piece by piece while the app is still writing it, and 100 MB cross in either direction without
the sidecar's memory growing anywhere near that.

The app writes the last chunk only once the test opens a gate (demo app `/chunks?gate=`), so
"the first chunks arrived before the app wrote the last" needs no timing. Memory is the
sidecar's peak resident set (VmHWM in /proc/<pid>/status), before and after.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.procs import AppProc, SidecarProc, await_for, demo_app, open_gate, sidecar
from tests.support.rawhttp import RawConnection, request

MIB = 1024 * 1024
TRANSFER_BYTES = 100 * MIB
# A proxy holding the whole body grows by at least TRANSFER_BYTES; one that streams with flow
# control needs a few buffers (today's aiohttp path: well under 10 MB).
MAX_GROWTH_BYTES = 50 * MIB


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AppProc, SidecarProc]]:
    tmp_path = tmp_path_factory.mktemp("streaming")
    with demo_app(tmp_path) as app, sidecar(tmp_path, f"sqlite://{tmp_path / 'r.db'}", app) as car:
        yield app, car


def peak_rss(pid: int) -> int:
    """The peak resident set size of process `pid` so far, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


async def test_chunked_response_streams_chunk_by_chunk(proxied: tuple[AppProc, SidecarProc]) -> None:
    """The chunks an app has written reach the client while the app still holds back the last
    one; the last follows once the app writes it."""
    app, car = proxied
    assert car.listen_port is not None
    gate = f"last-chunk-{uuid.uuid4().hex[:8]}"
    async with await RawConnection.open(car.listen_port) as conn:
        await conn.send(request("GET", f"/chunks?n=3&gate={gate}"))
        response = await conn.head()
        assert response.status == 200, response
        assert response.chunked, response  # no length known: chunked keeps the connection usable
        received = b""
        while len(received) < len(b"chunk 0\nchunk 1\n"):
            received += await conn.chunk(timeout=5)  # chunk boundaries may move: data may not
        assert received == b"chunk 0\nchunk 1\n"
        assert gate in app.stats()["waiting"], "the app wrote its last chunk before the gate opened"
        open_gate(app, gate)
        while chunk := await conn.chunk(timeout=5):
            received += chunk
    assert received == b"chunk 0\nchunk 1\nchunk 2\n"


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_100_mb_streams_in_bounded_memory(proxied: tuple[AppProc, SidecarProc], direction: str) -> None:
    """100 MB cross the sidecar (request body to the app, or response body from it) intact while
    its peak memory grows by less than 50 MB."""
    _, car = proxied
    before = peak_rss(car.proc.pid)
    block = os.urandom(MIB)
    if direction == "upload":

        def blocks() -> Iterator[bytes]:
            for _ in range(TRANSFER_BYTES // MIB):
                yield block

        expected = hashlib.sha256()
        for piece in blocks():
            expected.update(piece)
        response = httpx.post(
            f"{car.url}/digest",
            content=blocks(),
            headers={"Content-Length": str(TRANSFER_BYTES)},
            timeout=120,
            verify=False,
        )
        assert response.status_code == 200, response.text
        assert response.json() == {"sha256": expected.hexdigest(), "bytes": TRANSFER_BYTES}
    else:
        with httpx.stream("GET", f"{car.url}/bytes", params={"n": TRANSFER_BYTES}, timeout=120) as response:
            assert response.status_code == 200
            received = sum(len(chunk) for chunk in response.iter_raw())
        assert received == TRANSFER_BYTES
    growth = peak_rss(car.proc.pid) - before
    assert growth < MAX_GROWTH_BYTES, f"the sidecar's peak memory grew by {growth / MIB:.0f} MiB"


async def test_inflight_slot_held_while_streaming(proxied: tuple[AppProc, SidecarProc]) -> None:
    """A response still streaming counts as in flight; once it ends, nothing is."""
    app, car = proxied
    assert car.listen_port is not None
    gate = f"inflight-{uuid.uuid4().hex[:8]}"
    async with await RawConnection.open(car.listen_port) as conn:
        await conn.send(request("GET", f"/chunks?n=2&gate={gate}"))
        assert (await conn.head()).status == 200
        assert await conn.chunk(timeout=5) == b"chunk 0\n"
        assert car.status()["inflight"] == 1
        open_gate(app, gate)
        while await conn.chunk(timeout=5):
            pass
    await await_for(lambda: car.status()["inflight"] == 0, 5, "in flight back to 0")


async def test_request_body_reaches_the_app_while_it_is_sent(proxied: tuple[AppProc, SidecarProc]) -> None:
    """The first chunk of an upload reaches the app, and its echo the client, while the rest of
    the upload is still to come."""
    _, car = proxied
    assert car.listen_port is not None
    async with await RawConnection.open(car.listen_port) as conn:
        await conn.send(request("POST", "/echo", [("Transfer-Encoding", "chunked")]) + b"5\r\nfirst\r\n")
        response = await conn.head()
        assert response.status == 200, response
        assert await conn.chunk(timeout=5) == b"first"  # echoed before the upload ends
        await conn.send(b"4\r\nlast\r\n0\r\n\r\n")
        assert await conn.chunk(timeout=5) == b"last"


async def test_pipelined_requests_are_answered_in_order(proxied: tuple[AppProc, SidecarProc]) -> None:
    """Two requests sent in one write are both answered, in the order they were sent, even when
    the first takes longer."""
    _, car = proxied
    assert car.listen_port is not None
    async with await RawConnection.open(car.listen_port) as conn:
        await conn.send(request("GET", "/work?ms=200") + request("GET", "/work?ms=0"))
        first = await conn.response()
        second = await conn.response()
    assert (first.status, second.status) == (200, 200)
    assert (json.loads(first.body)["ms"], json.loads(second.body)["ms"]) == (200, 0)
