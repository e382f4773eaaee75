"""What the inbound proxy passes on unchanged, black box over raw sockets: request and response
headers (all but the hop-by-hop ones), no Server header of its own, 1xx responses (100 Continue
from the app, 103 Early Hints), and keep-alive connections to the app.

The demo app echoes the request headers it received (`/headers`) and sets response headers on
request; a raw app (tests.support.raw_app) sends what the demo app cannot.
"""

from __future__ import annotations

import json
import os
from collections.abc import Collection, Iterator

import httpx
import pytest

from tests.support.procs import AppProc, SidecarChain, SidecarProc, port_of, sidecar_in_front
from tests.support.raw_app import CUT, RawApp, closing
from tests.support.rawhttp import RawConnection, RawResponse, request

# RFC 9110 section 7.6.1 plus the de facto ones; headers named in Connection are hop-by-hop too.
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
# What a reverse proxy may add to a request on its way to the app.
FORWARDING = {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "via"}
# Few enough for "kept alive" and for the app's own /stats calls and health checks to fit in.
MAX_APP_CONNECTIONS = 5


OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
# The raw app's replies, each the last on its connection: the app closes it after.
REPLIES = {
    "/plain": closing(OK_CLOSE),
    "/cut": CUT,
    "/hints": closing(
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n", OK_CLOSE
    ),
    # Refuses `Expect: 100-continue` with a final status, without reading the body (see `early`).
    "/refuse": closing(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
}


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RawApp, SidecarProc]]:
    tmp_path = tmp_path_factory.mktemp("scripted")
    with RawApp(REPLIES, early={"/refuse"}) as app:
        args = ("--app-health", "", "--instance-id", "scripted")
        with sidecar_in_front(tmp_path, f"sqlite://{tmp_path / 'r.db'}", app.url, *args) as car:
            yield app, car


def end_to_end(headers: list[tuple[str, str]], ignore: Collection[str] = ()) -> list[tuple[str, str]]:
    """`headers` minus the hop-by-hop ones (named in Connection too) and `ignore` (lower case),
    names in lower case, in their order."""
    nominated = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == "connection"
        for token in value.split(",")
    }
    dropped = HOP_BY_HOP | nominated | set(ignore)
    return [(name.lower(), value) for name, value in headers if name.lower() not in dropped]


# -- headers ----------------------------------------------------------------------------------


async def test_request_headers_reach_the_app_unchanged(proxied: tuple[AppProc, SidecarProc]) -> None:
    """The app receives the request's headers as sent (order, duplicates, values), minus the
    hop-by-hop ones (those named in Connection too), plus at most forwarding headers: nothing
    else added (no User-Agent, no Accept-Encoding), nothing else removed."""
    _, car = proxied
    sent = [
        ("X-Custom", "Mixed Case Value"),
        ("X-Dup", "one"),
        ("Cookie", "a=1; b=2"),
        ("X-Dup", "two"),
        ("Connection", "keep-alive, X-Private"),
        ("X-Private", "for the sidecar only"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Proxy-Connection", "keep-alive"),
        ("Accept", "text/plain"),
    ]
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(request("GET", "/headers", sent))
        response = await conn.response()
    assert response.status == 200, response
    received = [(name, value) for name, value in json.loads(response.body)["headers"]]
    assert end_to_end(received, FORWARDING) == end_to_end([("Host", "sidecar.test"), *sent])


async def test_response_headers_reach_the_client_unchanged(proxied: tuple[AppProc, SidecarProc]) -> None:
    """The client receives the app's response headers as the app sent them (its own Server
    header, duplicates, order), minus the hop-by-hop ones (those named in Connection too)."""
    app, car = proxied
    query = "&".join(
        "set=" + item
        for item in (
            "Server:demo-app/1.0",
            "X-Dup:one",
            "Set-Cookie:a=1",
            "X-Dup:two",
            "Set-Cookie:b=2",
            "Connection:X-Resp-Private",
            "X-Resp-Private:1",
            "Keep-Alive:timeout=5",
        )
    )
    target = f"/headers?{query}"
    responses: list[RawResponse] = []
    for port in (app.port, port_of(car)):
        async with await RawConnection.open(port) as conn:
            await conn.send(request("GET", target))
            responses.append(await conn.response())
    direct, proxied_response = responses
    assert proxied_response.status == 200, proxied_response
    assert proxied_response.all("Server") == ["demo-app/1.0"]
    assert proxied_response.all("X-Resp-Private") == []
    varying = {"date", "content-length"}  # the echoed headers differ: Host names the port
    assert end_to_end(proxied_response.headers, varying) == end_to_end(direct.headers, varying)


async def test_no_server_header_of_its_own(scripted: tuple[RawApp, SidecarProc]) -> None:
    """An app response without a Server header reaches the client without one, and the sidecar's
    own answers (a 502 for a cut-off response) carry none either."""
    _, car = scripted
    for path, status in (("/plain", 200), ("/cut", 502)):
        async with await RawConnection.open(port_of(car)) as conn:
            await conn.send(request("GET", path))
            response = await conn.response()
        assert response.status == status, response
        assert response.all("Server") == [], path


# -- 1xx ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["provider", "consumer"])
async def test_expect_100_continue_passes(chain: SidecarChain, via: str) -> None:
    """A client that sends `Expect: 100-continue` and holds its body until told gets
    `100 Continue` (from the app through a provider sidecar; from a consumer sidecar itself,
    which keeps a small body for retries), sends the body, and gets the app's answer to it."""
    port = port_of(chain.provider) if via == "provider" else port_of_url(chain.consumer_url)
    payload = os.urandom(5000)
    async with await RawConnection.open(port) as conn:
        head = request("POST", "/echo", [("Expect", "100-continue"), ("Content-Length", str(len(payload)))])
        await conn.send(head)
        interim = await conn.head()
        assert interim.status == 100, interim
        await conn.send(payload)
        response = await conn.response(method="POST")
    assert response.status == 200, response
    assert response.body == payload


async def test_app_refusing_expectation_is_seen_first(scripted: tuple[RawApp, SidecarProc]) -> None:
    """`100 Continue` is the app's to give: an app that answers `Expect: 100-continue` with a
    final 417 is seen to do so, with no 100 from the sidecar before it."""
    app, car = scripted
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(request("POST", "/refuse", [("Expect", "100-continue"), ("Content-Length", "1000")]))
        first = await conn.head()
    assert first.status == 417, first
    heads = app.of_path("/refuse")
    assert [head.header("Expect") for head in heads] == ["100-continue"]


async def test_early_hints_pass_through(scripted: tuple[RawApp, SidecarProc]) -> None:
    """An app's `103 Early Hints` (with its Link header) reaches the client before the 200."""
    _, car = scripted
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(request("GET", "/hints"))
        hints = await conn.head()
        assert (hints.status, hints.header("Link")) == (103, "</style.css>; rel=preload; as=style")
        final = await conn.response(skip_1xx=False)
    assert (final.status, final.body) == (200, b"ok")


# -- keep-alive to the app ------------------------------------------------------------------------


@pytest.mark.parametrize("client_keep_alive", [True, False], ids=["one-client-connection", "new-each-time"])
def test_app_connections_are_kept_alive(
    proxied: tuple[AppProc, SidecarProc], client_keep_alive: bool
) -> None:
    """100 sequential requests through the sidecar reach the app over a few kept-alive
    connections, whether or not the client reuses its own."""
    app, car = proxied
    before = app.stats()["connections"]
    headers = {} if client_keep_alive else {"Connection": "close"}
    with httpx.Client(timeout=10, headers=headers) as client:
        for n in range(100):
            assert client.get(f"{car.url}/work", params={"n": n}).status_code == 200
    opened = app.stats()["connections"] - before
    assert opened <= MAX_APP_CONNECTIONS, f"{opened} connections to the app for 100 requests"


# -- through a consumer sidecar ---------------------------------------------------------------------


async def test_consumer_relays_request_headers_end_to_end(chain: SidecarChain) -> None:
    """Through both sidecars the app sees the client's end-to-end headers, Host set to the
    instance it was sent to, and none of the sidecars' own X-Sidecar-Consumer."""
    async with await RawConnection.open(port_of_url(chain.consumer_url)) as conn:
        await conn.send(request("GET", "/headers", [("X-Custom", "kept"), ("Connection", "x-gone")]))
        response = await conn.response()
    assert response.status == 200, response
    seen = {name.lower(): value for name, value in json.loads(response.body)["headers"]}
    assert seen["x-custom"] == "kept"
    assert seen["host"] == chain.provider.url.removeprefix("http://")
    assert "x-sidecar-consumer" not in seen
    assert "x-gone" not in seen
    assert "connection" not in seen


def port_of_url(url: str) -> int:
    return int(url.rsplit(":", 1)[1])
