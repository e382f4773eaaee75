"""A pooled keep-alive connection is reused only well within its origin's idle timeout, black box.

An origin closes a keep-alive connection that stayed idle too long. A request the sidecar sends on
it at that moment is lost: the connection closes unanswered, and a POST cannot be sent again (the
origin may have read it), so its caller gets a 502. The apps here close a connection idle for
their timeout when the next request arrives on it, which is that race forced on every try. The
sidecar must have opened a new connection instead: within a second less than the timeout an
origin announces (`Keep-Alive: timeout=N`), within 1.5 s when it announces none (gunicorn closes
after 2 s and says nothing). That holds for a provider's connections to its app and for a
consumer's to a provider instance (the same pool); and a sidecar announces its own
--idle-timeout, so that consumers stop reusing its connections in time.

The waits below are the scenario (a connection left idle past the origin's timeout), not a
synchronisation.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.hand_providers import HandProviders
from tests.support.procs import consumer_of, port_of, sidecar_in_front
from tests.support.raw_app import Link, RawApp, Received, Script
from tests.support.rawhttp import RawConnection, request

MARGIN_S = 0.3  # past the app's timeout, as the app measures it, before the next request


def idle_closer(timeout: int, announce: bool) -> Script:
    """An app that answers 200 (announcing `timeout` in `Keep-Alive` or not) and closes a
    connection idle `timeout` seconds or more when a request arrives on it, unanswered."""
    answered: dict[int, float] = {}  # connection -> when its last answer went out

    async def reply(request: Received, link: Link, app: RawApp) -> bool:
        last = answered.get(link.number)
        if last is not None and time.monotonic() - last >= timeout:
            app.note(f"{request.method} {request.path} on connection {link.number}, idle: closed")
            return False
        announced = b"Keep-Alive: timeout=%d\r\n" % timeout if announce else b""
        await link.send(b"HTTP/1.1 200 OK\r\n" + announced + b"Content-Length: 2\r\n\r\nok")
        answered[link.number] = time.monotonic()
        return True

    return reply


CASES = {"announced": (1, True), "unannounced": (2, False)}  # timeout, announced


@pytest.fixture(params=sorted(CASES))
def closer(request: pytest.FixtureRequest) -> Iterator[tuple[RawApp, int]]:
    timeout, announce = CASES[request.param]
    with RawApp({}, default=idle_closer(timeout, announce)) as app:
        yield app, timeout


def post_after_idle(base_url: str, app: RawApp, timeout: int) -> list[int]:
    """Two POSTs back to back (the second reuses the first's connection), then one after the
    connection idled past the app's timeout; the statuses."""
    with httpx.Client(base_url=base_url, timeout=10, trust_env=False) as client:
        statuses = [client.post("/order", content=b"one").status_code]
        statuses.append(client.post("/order", content=b"two").status_code)
        assert app.accepted == 1, "the second POST should have reused the first one's connection"
        time.sleep(timeout + MARGIN_S)  # the scenario: the pooled connection idles past the timeout
        statuses.append(client.post("/order", content=b"three").status_code)
    return statuses


def test_provider_opens_a_new_app_connection_before_the_app_closes_the_idle_one(
    tmp_path: Path, closer: tuple[RawApp, int]
) -> None:
    """A POST after the app connection idled past the app's timeout goes on a new connection."""
    app, timeout = closer
    registry = f"sqlite://{tmp_path / 'r.db'}"
    with sidecar_in_front(tmp_path, registry, app.url, "--app-health", "") as car:
        statuses = post_after_idle(car.url, app, timeout)
    assert statuses == [200, 200, 200], (statuses, app.notes)
    assert app.notes == [], "a POST went out on a connection the app was closing"
    assert app.accepted == 2
    assert [r.body for r in app.of_path("/order")] == [b"one", b"two", b"three"]


def test_consumer_opens_a_new_instance_connection_before_the_instance_closes_the_idle_one(
    tmp_path: Path, closer: tuple[RawApp, int]
) -> None:
    """The same on a consumer's connection to an instance (one registered without a sidecar)."""
    app, timeout = closer
    registry = f"sqlite://{tmp_path / 'registry.db'}"
    with HandProviders(tmp_path / "registry.db") as hand:
        hand.register_plain("svc", "raw-1", app.port)
        with consumer_of(tmp_path, registry, "raw-1") as (_, port):
            statuses = post_after_idle(f"http://127.0.0.1:{port}", app, timeout)
    assert statuses == [200, 200, 200], (statuses, app.notes)
    assert app.notes == [], "a POST went out on a connection the instance was closing"
    assert app.accepted == 2


async def test_sidecar_announces_its_idle_timeout(tmp_path: Path) -> None:
    """Every keep-alive response says `Keep-Alive: timeout=` --idle-timeout (and, to an HTTP/1.0
    client that asked for keep-alive, `Connection: keep-alive`); one that ends its connection
    says `Connection: close` instead."""
    registry = f"sqlite://{tmp_path / 'r.db'}"
    with (
        RawApp({}, default=b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") as app,
        sidecar_in_front(tmp_path, registry, app.url, "--app-health", "", "--idle-timeout", "7") as car,
    ):
        async with await RawConnection.open(port_of(car)) as conn:
            await conn.send(request("GET", "/a"))
            kept = await conn.response("GET")
            await conn.send(request("GET", "/b", headers=[("Connection", "close")]))
            last = await conn.response("GET")
        async with await RawConnection.open(port_of(car)) as conn:
            http10 = b"GET /c HTTP/1.0\r\nHost: sidecar.test\r\nConnection: keep-alive\r\n\r\n"
            await conn.send(http10)
            first = await conn.response("GET")
            await conn.send(http10.replace(b"/c", b"/d"))  # on the same connection: it was kept
            second = await conn.response("GET")
    assert (kept.status, kept.header("Keep-Alive"), kept.closing) == (200, "timeout=7", False)
    assert (last.status, last.header("Keep-Alive"), last.closing) == (200, None, True)
    for response in (first, second):
        assert (response.status, response.header("Connection"), response.header("Keep-Alive")) == (
            200,
            "keep-alive",
            "timeout=7",
        )
    assert [received.path for received in app.received] == ["/a", "/b", "/c", "/d"]
