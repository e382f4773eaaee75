"""Between HTTP/1.1 and HTTP/2, black-box: an HTTP/1.1 client of a provider whose app speaks h2c
(nghttpd), an HTTP/2 client of a provider whose app speaks HTTP/1.1, and an HTTP/2 client of a
consumer sidecar whose instance does not take HTTP/2 (no `sidecar_protocols` in its metadata: a
provider sidecar of an older release, or an app registered without one).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.hand_providers import HandProviders
from tests.support.nghttpd import Nghttpd
from tests.support.ports import free_port
from tests.support.procs import AppProc, demo_app, sidecar, sidecar_in_front, wait_for


@pytest.fixture
def registry(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'registry.db'}"


def test_http1_client_reaches_an_h2c_app(tmp_path: Path, registry: str) -> None:
    """GET, HEAD and a POST with a body from an HTTP/1.1 client reach an h2c app (nghttpd) and
    come back as HTTP/1.1, framed by the sidecar."""
    with (
        Nghttpd(tmp_path / "nghttpd") as app,
        sidecar_in_front(tmp_path, registry, app.url, "--app-health", "") as car,
        httpx.Client(base_url=car.url, timeout=10) as client,
    ):
        got = client.get("/index.html")
        assert (got.http_version, got.status_code, got.text) == ("HTTP/1.1", 200, "hello\n")
        head = client.head("/index.html")
        assert (head.status_code, head.content) == (200, b"")
        body = bytes(range(256)) * 1000
        posted = client.post("/index.html", content=body)
        assert (posted.status_code, posted.content) == (200, body)
        chunked = client.post("/index.html", content=iter([b"a" * 70_000, b"b" * 70_000]))
        assert chunked.content == b"a" * 70_000 + b"b" * 70_000


def test_http2_client_reaches_an_http1_app(tmp_path: Path, registry: str) -> None:
    """An HTTP/2 client (prior knowledge) of a provider in front of an HTTP/1.1 app: GET and a
    POST with a body are translated both ways; the same port still serves HTTP/1.1."""
    with demo_app(tmp_path) as app, sidecar(tmp_path, registry, app) as car:
        with httpx.Client(http1=False, http2=True, base_url=car.url, timeout=10) as client:
            response = client.get("/stats")
            assert (response.http_version, response.status_code) == ("HTTP/2", 200)
            assert "served" in response.json()
            posted = client.post("/echo", content=b"z" * 100_000)
            assert (posted.http_version, posted.status_code) == ("HTTP/2", 200)
            assert len(posted.content) >= 100_000
        with httpx.Client(base_url=car.url, timeout=10) as plain:
            assert plain.get("/stats").http_version == "HTTP/1.1"


@pytest.fixture
def plain_instance(tmp_path: Path) -> Iterator[AppProc]:
    """A demo app registered in the SQLite registry by hand, with no sidecar metadata: nothing
    says it takes HTTP/2 (and it does not)."""
    with demo_app(tmp_path) as app, HandProviders(tmp_path / "registry.db") as hand:
        hand.register_plain("svc", "plain-1", app.port)
        yield app


def test_http2_client_of_a_consumer_reaches_an_http1_only_instance(
    tmp_path: Path, plain_instance: AppProc
) -> None:
    """A consumer sidecar speaks HTTP/1.1 to an instance that does not say it takes HTTP/2, and
    translates for its HTTP/2 client."""
    port = free_port()
    registry = f"sqlite://{tmp_path / 'registry.db'}"
    upstream = ("--upstream", f"svc=127.0.0.1:{port}")
    with sidecar(tmp_path, registry, None, *upstream, service="client") as car:
        wait_for(lambda: len(car.status()["upstreams"]["svc"]["instances"]) == 1, what="the instance")
        with httpx.Client(http1=False, http2=True, base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            response = client.post("/echo", content=b"q" * 5000)
    assert (response.http_version, response.status_code) == ("HTTP/2", 200)
    assert response.content == b"q" * 5000
    assert plain_instance.stats()["served"] >= 1
