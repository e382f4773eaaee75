"""The inbound proxy, black box: bodies stream both ways, headers pass, hop-by-hop ones do not,
connections to the app are kept alive, and an unreachable app is a refusal, not an error."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.ports import free_port
from tests.support.procs import AppProc, SidecarProc, await_for, demo_app, sidecar


@pytest.fixture(scope="module")
def proxied(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AppProc, SidecarProc]]:
    tmp_path = tmp_path_factory.mktemp("proxy")
    with demo_app(tmp_path) as app, sidecar(tmp_path, f"sqlite://{tmp_path / 'r.db'}", app) as car:
        yield app, car


def test_large_chunked_upload_streams(proxied: tuple[AppProc, SidecarProc]) -> None:
    """A 20 MB chunked request body reaches the app intact."""
    _, car = proxied
    blocks = [os.urandom(256 * 1024) for _ in range(80)]

    def chunks() -> Iterator[bytes]:
        yield from blocks  # a generator body: httpx sends it chunked

    response = httpx.post(f"{car.url}/digest", content=chunks(), timeout=60, verify=False)
    assert response.status_code == 200
    assert response.json() == {
        "sha256": hashlib.sha256(b"".join(blocks)).hexdigest(),
        "bytes": 80 * 256 * 1024,
    }


def test_small_body_round_trip(proxied: tuple[AppProc, SidecarProc]) -> None:
    """A small body with a Content-Length streams to the app and back unchanged."""
    _, car = proxied
    payload = os.urandom(1000)
    response = httpx.post(f"{car.url}/echo", content=payload, verify=False)
    assert response.status_code == 200
    assert response.content == payload


def test_large_download_streams(proxied: tuple[AppProc, SidecarProc]) -> None:
    """A 64 MB response streams through with its Content-Length."""
    _, car = proxied
    size = 64 * 1024 * 1024
    with httpx.stream("GET", f"{car.url}/bytes", params={"n": size}, timeout=60) as response:
        assert response.headers["content-length"] == str(size)
        received = sum(len(chunk) for chunk in response.iter_raw())
    assert received == size


def test_method_query_and_headers_pass(proxied: tuple[AppProc, SidecarProc]) -> None:
    """Method, path, query and end-to-end headers reach the app; the consumer header does not."""
    app, car = proxied
    response = httpx.request(
        "DELETE",
        f"{car.url}/work?ms=3&tag=a%20b",
        headers={"X-Custom": "kept", "X-Sidecar-Consumer": "http://127.0.0.1:9"},
        verify=False,
    )
    assert response.status_code == 200
    assert response.json() == {"instance": "app", "ms": 3}
    assert "/work?ms=3&tag=a%20b" in app.stats()["paths"]
    assert "x-sidecar-closing" not in response.headers  # not draining


def test_keep_alive_to_the_client(proxied: tuple[AppProc, SidecarProc]) -> None:
    """Many requests from one client reuse one connection (no Connection: close while serving)."""
    _, car = proxied
    with httpx.Client() as client:
        responses = [client.get(f"{car.url}/work?ms=0") for _ in range(20)]
    assert all(response.status_code == 200 for response in responses)
    assert all(response.headers.get("connection") != "close" for response in responses)


def test_unreachable_app_is_refused(tmp_path: Path) -> None:
    """When the app cannot be connected to, the request never reached it: 503 + X-Sidecar-Refused."""
    with demo_app(tmp_path) as app:
        registry = f"sqlite://{tmp_path / 'r.db'}"
        with sidecar(tmp_path, registry, app, "--instance-id", "gone-1") as car:
            app.proc.kill()
            app.proc.wait()
            response = httpx.get(f"{car.url}/work", verify=False)
            assert response.status_code == 503
            assert response.headers["X-Sidecar-Refused"] == "gone-1"


async def test_response_cut_short_is_a_502(tmp_path: Path) -> None:
    """An app that announces a small body and closes the connection half-way: the caller gets a
    502 with a JSON error, not a 500, and the sidecar keeps serving."""

    async def truncating(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(truncating, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    args = ("--app", f"http://127.0.0.1:{port}", "--listen", f"127.0.0.1:{free_port()}", "--app-health", "")
    try:
        async with asyncio.timeout(30):
            with sidecar(tmp_path, f"sqlite://{tmp_path / 'r.db'}", None, *args, wait="live") as car:
                listen = car.args[car.args.index("--listen") + 1]
                async with httpx.AsyncClient(timeout=10) as client:
                    await await_for(lambda: car.status()["ready"], what="ready")
                    response = await client.get(f"http://{listen}/x")
                    assert response.status_code == 502
                    assert "cut off" in response.json()["error"]
                    assert (await client.get(f"{car.admin}/live")).status_code == 200
                assert "Traceback" not in car.log()
    finally:
        server.close()
