"""A provider's drain and its consumer sidecars' pooled connections (found by the chaos soak,
bench/soak.py: POSTs lost during rolls): an idle keep-alive connection stays open until the
consumers have been notified, so a request a consumer sends on it meanwhile is answered."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx

from sidecar.http.server import DRAIN_IDLE_SECONDS
from sidecar.provider import notify
from tests.support.ports import free_port
from tests.support.procs import await_for, demo_app, sidecar
from tests.support.rawhttp import RawConnection, request

# Longer than DRAIN_IDLE_SECONDS: a connection idle this long used to close when draining began;
# well within the notification's timeout, until which it must now stay open.
STILL_OPEN_S = DRAIN_IDLE_SECONDS + 0.25
assert STILL_OPEN_S < notify.TIMEOUT_SECONDS - 0.5


async def test_pooled_connection_outlives_the_notification(tmp_path: Path) -> None:
    """While a consumer's notification is pending (it never answers: 2 s), its idle pooled
    connection stays open and a POST sent on it is answered, marked closing."""
    registry = f"sqlite://{tmp_path / 'r.db'}"
    args = ("--instance-id", "pooled", "--quiet-period", "0.2")
    with (
        socket.socket() as silent,
        demo_app(tmp_path) as app,
        sidecar(tmp_path, registry, app, *args) as car,
    ):
        silent.bind(("127.0.0.1", free_port()))
        silent.listen(4)  # the kernel accepts; nobody ever answers
        consumer = [("X-Sidecar-Consumer", f"http://127.0.0.1:{silent.getsockname()[1]}")]
        assert car.listen_port is not None
        async with await RawConnection.open(car.listen_port) as pooled, httpx.AsyncClient(timeout=30) as http:
            await pooled.send(request("GET", "/work?ms=0", consumer))
            assert (await pooled.response()).status == 200
            shutdown = asyncio.create_task(http.get(f"{car.admin}/shutdown"))
            await await_for(lambda: car.status()["phase"] == "draining", what="draining")
            await asyncio.sleep(STILL_OPEN_S)  # the idle time under test, not a synchronisation
            await pooled.send(request("POST", "/work?ms=0", consumer, b"{}"))
            response = await pooled.response()
            assert response.status == 200
            assert response.header("X-Sidecar-Closing") == "pooled"
            assert response.closing
            assert (await shutdown).json()["drained"] is True
