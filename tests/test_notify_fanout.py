"""Offline notifications to many consumers (sidecar.provider.notify): a consumer that never answers holds
the drain for at most one notification timeout, and does not delay the ones that answer."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
from aiohttp import web

from sidecar.provider import notify
from tests.support.ports import free_port
from tests.support.procs import demo_app, sidecar

QUIET = 0.2
SILENT = 3
# Before the fix a silent consumer was asked three times (3 x 2 s timeouts + pauses): 6.6 s.
SLACK_S = 1.5


@contextmanager
def silent_consumer() -> Iterator[str]:
    """A listener whose connections the kernel completes (backlog) but nobody ever answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", free_port()))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


async def test_silent_consumers_hold_the_drain_one_timeout_at_most(tmp_path: Path) -> None:
    """Three silent consumers and one that answers: the answering one is notified at once, and
    /shutdown answers within one notification timeout plus the quiet period (no retries of a
    consumer that timed out)."""
    arrived: list[float] = []

    async def receive(request: web.Request) -> web.Response:
        arrived.append(time.monotonic())
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/notify", receive)
    runner = web.AppRunner(receiver)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    registry = f"sqlite://{tmp_path / 'r.db'}"
    try:
        with ExitStack() as stack:
            silent = [stack.enter_context(silent_consumer()) for _ in range(SILENT)]
            app = stack.enter_context(demo_app(tmp_path))
            car = stack.enter_context(sidecar(tmp_path, registry, app, "--quiet-period", str(QUIET)))
            async with httpx.AsyncClient(timeout=30) as client:
                for consumer in [*silent, f"http://127.0.0.1:{port}"]:
                    response = await client.get(f"{car.url}/work", headers={"X-Sidecar-Consumer": consumer})
                    assert response.status_code == 200
                started = time.monotonic()
                answer = await client.get(f"{car.admin}/shutdown")
                took = time.monotonic() - started
    finally:
        await runner.cleanup()
    assert answer.json()["notified"] == 1
    assert len(arrived) == 1
    assert arrived[0] - started < SLACK_S
    assert took < notify.TIMEOUT_SECONDS + QUIET + SLACK_S, took
