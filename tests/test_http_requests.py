"""What reaches the app is well-formed (issue 17, section 3), black box over raw sockets: exactly
one valid Host; only HTTP/1.0 and HTTP/1.1 (505 for a newer version, 400 for an older one);
targets in origin-form, without userinfo, never above the root, normalised and joined under a
path prefix of --app; `*` only with OPTIONS, no CONNECT; a request that asks for an upgrade with
a body forwarded as a plain one; no 1xx to an HTTP/1.0 client; 204, 304 and 426 as RFC 9110
says; X-Forwarded-For lines joined.

The app is a raw one (tests.support.raw_app) that records every request as it read it off the
wire. Each request carries a marker no other request has (in its target, or in an X-Mark header
where the target cannot hold one), so "the app never saw it" is a lookup in those records.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.procs import SidecarProc, consumer_of, port_of, sidecar_in_front
from tests.support.raw_app import RawApp, marker
from tests.support.rawhttp import RawConnection, request

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
REPLIES = {
    "/hints": b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" + OK,
    "/continue": b"HTTP/1.1 100 Continue\r\n\r\n" + OK,
    # RFC 9110 section 8.6: a 204 carries no Content-Length; a 304 may carry the one a 200
    # would have had; a 426 must say in Upgrade what to switch to (section 15.5.22).
    "/no-content": b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
    "/not-modified": b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 1234\r\n\r\n',
    "/upgrade-required": (
        b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: TLS/1.2, HTTP/1.1\r\nConnection: Upgrade\r\n"
        b"Content-Length: 7\r\n\r\nupgrade"
    ),
}
PREFIX = "/base"
# How long a client waits to see that nothing comes (a 100 Continue it must not get): the
# sidecar answers within milliseconds when it does.
QUIET_SECONDS = 1.0
CLOSE_BOUND_SECONDS = 5.0

# What `curl -v --http2 -d hello http://127.0.0.1:PORT/h2c-upgrade` (curl 7.88.1, nghttp2
# 1.52.0) sends to an HTTP/1.1 server, captured with a socket that printed what it received;
# only Host differs (curl wrote 127.0.0.1:PORT). The body comes right behind the head.
CURL_H2C_UPGRADE_WITH_BODY = (
    b"POST /h2c-upgrade HTTP/1.1\r\n"
    b"Host: sidecar.test\r\n"
    b"User-Agent: curl/7.88.1\r\n"
    b"Accept: */*\r\n"
    b"Connection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
    b"Content-Length: 5\r\n"
    b"Content-Type: application/x-www-form-urlencoded\r\n"
    b"\r\n"
    b"hello"
)


@pytest.fixture(scope="module")
def app() -> Iterator[RawApp]:
    with RawApp(REPLIES, default=OK) as raw:
        yield raw


@pytest.fixture(scope="module")
def car(app: RawApp, module_registry: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProc]:
    """A provider sidecar in front of the raw app, default options."""
    tmp_path = tmp_path_factory.mktemp("car")
    args = ("--app-health", "", "--instance-id", "plain")
    with sidecar_in_front(tmp_path, module_registry, app.url, *args) as proc:
        yield proc


@pytest.fixture(scope="module")
def based(app: RawApp, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProc]:
    """A provider sidecar in front of the same app under a path prefix: --app URL/base (a
    registry of its own, so that the consumer below knows only `car`)."""
    tmp_path = tmp_path_factory.mktemp("based")
    registry = f"sqlite://{tmp_path / 'r.db'}"
    with sidecar_in_front(tmp_path, registry, f"{app.url}{PREFIX}", "--app-health", "") as proc:
        yield proc


@pytest.fixture(scope="module")
def consumer(
    car: SidecarProc, module_registry: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[int]:
    """A consumer sidecar whose upstream listener (its port is yielded) balances over `car`."""
    with consumer_of(tmp_path_factory.mktemp("consumer"), module_registry, "plain") as (_, port):
        yield port


async def exchange(port: int, data: bytes, method: str = "GET") -> tuple[int, bytes]:
    """Sends `data` on a new connection; returns the status and body of the response."""
    async with await RawConnection.open(port) as conn:
        await conn.send(data)
        response = await conn.response(method=method)
    return response.status, response.body


async def assert_refused(app: RawApp, port: int, data: bytes, mark: str, status: int = 400) -> None:
    """`data`, a request marked `mark`, sent on a new connection, gets `status` from the sidecar
    and never reaches the app."""
    got, _ = await exchange(port, data)
    assert got == status
    assert app.marked(mark) == []


# -- Host -------------------------------------------------------------------------------------------


async def test_connection_host_does_not_remove_host(app: RawApp, car: SidecarProc) -> None:
    """`Connection: host` names Host as hop-by-hop; the request still reaches the app with its
    one Host header."""
    mark = marker("connection-host")
    data = f"GET /host?m={mark} HTTP/1.1\r\nHost: sidecar.test\r\nConnection: host\r\n\r\n".encode()
    assert await exchange(port_of(car), data) == (200, b"ok")
    assert (await app.only_marked(mark)).all("Host") == ["sidecar.test"]


@pytest.mark.parametrize("host", ["a b", "a@b"], ids=["space", "userinfo"])
async def test_invalid_host_is_rejected(app: RawApp, car: SidecarProc, host: str) -> None:
    """A Host that is no valid host[:port] gets 400 and never reaches the app."""
    mark = marker("invalid-host")
    data = f"GET /host?m={mark} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    await assert_refused(app, port_of(car), data, mark)


async def test_http10_without_host_gets_the_app_host(app: RawApp, car: SidecarProc) -> None:
    """An HTTP/1.0 request without Host reaches the app with the host:port of the --app URL."""
    mark = marker("http10-no-host")
    assert await exchange(port_of(car), f"GET /host?m={mark} HTTP/1.0\r\n\r\n".encode()) == (200, b"ok")
    assert (await app.only_marked(mark)).all("Host") == [f"127.0.0.1:{app.port}"]


# -- versions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "status"),
    [(" HTTP/2.0", 505), (" HTTP/3.0", 505), (" HTTP/0.9", 400), ("", 400)],
    ids=["2.0", "3.0", "0.9", "no-version"],
)
async def test_other_major_versions_are_refused(
    app: RawApp, car: SidecarProc, version: str, status: int
) -> None:
    """A request line with a major version other than 1 gets 505 (a newer one) or 400 (0.9, or
    none at all) and never reaches the app."""
    mark = marker("version")
    data = f"GET /version?m={mark}{version}\r\nHost: sidecar.test\r\n\r\n".encode()
    await assert_refused(app, port_of(car), data, mark, status)


async def test_a_later_minor_version_is_read_as_http11(app: RawApp, car: SidecarProc) -> None:
    """HTTP/1.2 is answered as HTTP/1.1 (RFC 9110 section 2.5: a later minor version is processed
    as the highest one the recipient implements) and reaches the app as HTTP/1.1."""
    mark = marker("http12")
    data = f"GET /version?m={mark} HTTP/1.2\r\nHost: sidecar.test\r\n\r\n".encode()
    assert await exchange(port_of(car), data) == (200, b"ok")
    assert (await app.only_marked(mark)).version == "HTTP/1.1"


# -- targets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authority", "host"),
    [("example.test:81", "example.test:81"), ("example.test", "example.test")],
    ids=["with-port", "default-port"],
)
async def test_absolute_form_reaches_the_app_in_origin_form(
    app: RawApp, car: SidecarProc, authority: str, host: str
) -> None:
    """An absolute-form target reaches the app in origin-form, with the target's authority as its
    only Host (replacing the Host header the client sent)."""
    mark = marker("absolute")
    data = f"GET http://{authority}/abs?m={mark} HTTP/1.1\r\nHost: sidecar.test\r\n\r\n".encode()
    assert await exchange(port_of(car), data) == (200, b"ok")
    seen = await app.only_marked(mark)
    assert (seen.target, seen.all("Host")) == (f"/abs?m={mark}", [host])


@pytest.mark.parametrize("userinfo", ["u@", "u:p@"])
async def test_userinfo_in_target_is_rejected(app: RawApp, car: SidecarProc, userinfo: str) -> None:
    """An absolute-form target with userinfo gets 400 and never reaches the app."""
    mark = marker("userinfo")
    data = f"GET http://{userinfo}example.test/abs?m={mark} HTTP/1.1\r\nHost: example.test\r\n\r\n".encode()
    await assert_refused(app, port_of(car), data, mark)


CLIMBING = ["/../up", "/a/../../up", "/%2e%2e/up", "/a/%2E%2e/%2e%2E/up"]


@pytest.mark.parametrize("prefixed", [False, True], ids=["no-prefix", "prefix"])
@pytest.mark.parametrize("path", CLIMBING)
async def test_target_above_the_root_is_rejected(
    app: RawApp, car: SidecarProc, based: SidecarProc, path: str, prefixed: bool
) -> None:
    """A target whose path climbs above the root (dots plain or percent-encoded) gets 400 and
    never reaches the app, with or without a path prefix in --app."""
    mark = marker("climbing")
    data = f"GET {path}?m={mark} HTTP/1.1\r\nHost: sidecar.test\r\n\r\n".encode()
    await assert_refused(app, port_of(based if prefixed else car), data, mark)


@pytest.mark.parametrize("path", ["/a/../b", "/a/./b/../c", "/a//b/."])
async def test_dot_segments_pass_unchanged_without_prefix(app: RawApp, car: SidecarProc, path: str) -> None:
    """Without a path prefix in --app, a target with dot segments that stays below the root
    reaches the app byte for byte as sent (like nginx's `proxy_pass http://app;`)."""
    mark = marker("dots")
    target = f"{path}?m={mark}"
    assert await exchange(port_of(car), request("GET", target)) == (200, b"ok")
    assert (await app.only_marked(mark)).target == target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("/a/./b/../c?q&m={m}", "/base/a/c?q&m={m}"),
        ("/?m={m}", "/base/?m={m}"),
        ("/a/b/..?m={m}", "/base/a/?m={m}"),
    ],
)
async def test_prefix_joins_the_normalised_target(
    app: RawApp, based: SidecarProc, target: str, expected: str
) -> None:
    """With --app URL/base, the target is normalised (RFC 3986 remove_dot_segments) and joined
    under the prefix: `/a/./b/../c?q` reaches the app as `/base/a/c?q`."""
    mark = marker("prefix")
    assert await exchange(port_of(based), request("GET", target.format(m=mark))) == (200, b"ok")
    assert (await app.only_marked(mark)).target == expected.format(m=mark)


async def test_options_asterisk_is_forwarded(app: RawApp, car: SidecarProc) -> None:
    """`OPTIONS *` reaches the app as `OPTIONS *` and is answered."""
    mark = marker("options")
    assert await exchange(port_of(car), request("OPTIONS", "*", [("X-Mark", mark)])) == (200, b"ok")
    seen = await app.only_marked(mark)
    assert (seen.method, seen.target) == ("OPTIONS", "*")


async def test_asterisk_with_get_is_rejected(app: RawApp, car: SidecarProc) -> None:
    """`GET *` gets 400 and never reaches the app: `*` is a target for OPTIONS only."""
    mark = marker("get-asterisk")
    await assert_refused(app, port_of(car), request("GET", "*", [("X-Mark", mark)]), mark)


async def test_connect_is_refused_and_closes(app: RawApp, car: SidecarProc) -> None:
    """CONNECT gets 405, the connection closes, and the app never sees it (no tunnels)."""
    mark = marker("connect")
    data = f"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\nX-Mark: {mark}\r\n\r\n".encode()
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(data)
        response = await conn.response(method="CONNECT")
        assert response.status == 405, response
        assert await conn.read_to_eof(CLOSE_BOUND_SECONDS) == b""
    assert app.marked(mark) == []


# -- an upgrade asked for with a body ---------------------------------------------------------------


async def test_upgrade_with_body_is_forwarded_as_plain_request(app: RawApp, car: SidecarProc) -> None:
    """What `curl --http2 -d hello` sends (Upgrade: h2c with a body) reaches the app as a plain
    POST with its body and without the upgrade headers, is answered, and the connection carries
    the next request."""
    mark = marker("after-upgrade")
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(CURL_H2C_UPGRADE_WITH_BODY)
        await app.wait_until(lambda: len(app.of_path("/h2c-upgrade")) >= 1, "upgrade request with its body")
        [seen] = app.of_path("/h2c-upgrade")
        assert (seen.method, seen.body, seen.header("Content-Type")) == (
            "POST",
            b"hello",
            "application/x-www-form-urlencoded",
        )
        assert (seen.all("Upgrade"), seen.all("HTTP2-Settings")) == ([], [])
        assert not any("upgrade" in value.lower() for value in seen.all("Connection")), seen.headers
        first = await conn.response(method="POST")
        assert (first.status, first.body, first.closing) == (200, b"ok", False), first
        await conn.send(request("GET", f"/next?m={mark}"))
        assert (await conn.response()).status == 200
    assert len(app.marked(mark)) == 1


# -- HTTP/1.0 clients and 1xx -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"), [("/hints", b""), ("/continue", b"hello")], ids=["103-early-hints", "100-continue"]
)
async def test_no_1xx_to_an_http10_client(car: SidecarProc, path: str, body: bytes) -> None:
    """An app's 1xx (103 Early Hints, an unasked-for 100 Continue) never reaches an HTTP/1.0
    client, which cannot know it: the first response it reads is the final one."""
    method = "POST" if body else "GET"
    length = f"Content-Length: {len(body)}\r\n" if body else ""
    data = f"{method} {path} HTTP/1.0\r\nHost: sidecar.test\r\n{length}\r\n".encode() + body
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(data)
        first = await conn.response(method=method, skip_1xx=False)
    assert (first.status, first.body) == (200, b"ok"), first


async def test_expect_is_removed_from_an_http10_request(app: RawApp, car: SidecarProc) -> None:
    """`Expect` in an HTTP/1.0 request (meaningless there) is removed before it reaches the app;
    the client gets the final response first."""
    mark = marker("http10-expect")
    data = (
        f"POST /expect?m={mark} HTTP/1.0\r\nHost: sidecar.test\r\nExpect: 100-continue\r\n"
        f"Content-Length: 5\r\n\r\nhello"
    ).encode()
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(data)
        first = await conn.response(method="POST", skip_1xx=False)
    assert (first.status, first.body) == (200, b"ok"), first
    seen = await app.only_marked(mark)
    assert (seen.all("Expect"), seen.body) == ([], b"hello")


async def test_consumer_sends_no_100_continue_to_http10(app: RawApp, consumer: int) -> None:
    """A consumer sidecar does not answer `Expect: 100-continue` from an HTTP/1.0 client: it
    waits for the body (nothing comes back meanwhile), then the app gets it without Expect."""
    mark = marker("consumer-http10-expect")
    head = (
        f"POST /expect?m={mark} HTTP/1.0\r\nHost: sidecar.test\r\nExpect: 100-continue\r\n"
        "Content-Length: 5\r\n\r\n"
    )
    async with await RawConnection.open(consumer) as conn:
        await conn.send(head.encode())
        try:
            early = await conn.head(timeout=QUIET_SECONDS)
        except AssertionError:  # nothing came: right, the body is still to come
            early = None
        assert early is None, f"the consumer answered {early.status} before the body came"
        await conn.send(b"hello")
        final = await conn.response(method="POST")
    assert (final.status, final.body) == (200, b"ok"), final
    seen = await app.only_marked(mark)
    assert (seen.all("Expect"), seen.body) == ([], b"hello")


# -- responses: 204, 304, 426 -----------------------------------------------------------------------


async def test_204_loses_content_length(car: SidecarProc) -> None:
    """A 204 from the app reaches the client without the Content-Length it came with."""
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(request("GET", "/no-content"))
        response = await conn.response()
    assert (response.status, response.all("Content-Length")) == (204, []), response


async def test_304_keeps_content_length(car: SidecarProc) -> None:
    """A 304 keeps its Content-Length (the length a 200 would have had) and carries no body: the
    connection then answers the next request."""
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(request("GET", "/not-modified"))
        response = await conn.response()
        assert (response.status, response.all("Content-Length")) == (304, ["1234"]), response
        await conn.send(request("GET", "/after-304"))
        assert (await conn.response()).status == 200


async def test_426_keeps_upgrade(car: SidecarProc) -> None:
    """A 426 Upgrade Required keeps its Upgrade header (what the client should switch to), and
    its body."""
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(request("GET", "/upgrade-required"))
        response = await conn.response()
    assert (response.status, response.all("Upgrade"), response.body) == (
        426,
        ["TLS/1.2, HTTP/1.1"],
        b"upgrade",
    )


# -- X-Forwarded-For ----------------------------------------------------------------------------------


async def test_x_forwarded_for_lines_are_joined(app: RawApp, car: SidecarProc) -> None:
    """Two X-Forwarded-For lines reach the app as one, joined in order with ", ", the caller's
    address appended."""
    mark = marker("xff")
    headers = [("X-Forwarded-For", "203.0.113.7"), ("X-Forwarded-For", "198.51.100.2, 192.0.2.1")]
    assert await exchange(port_of(car), request("GET", f"/xff?m={mark}", headers)) == (200, b"ok")
    seen = await app.only_marked(mark)
    assert seen.all("X-Forwarded-For") == ["203.0.113.7, 198.51.100.2, 192.0.2.1, 127.0.0.1"]
