"""The proxy owns framing, black box over raw sockets (issue 17, sections 1 and 2, provider side).

A response ends where its framing says: whatever an app sends beyond it (a body after a HEAD
response, a 204 or a 304; bytes past Content-Length or after the last chunk; data on a pooled
connection no request is outstanding on) reaches no client and closes that app connection; a
response that ends its connection never goes back to the pool. Transfer-Encoding and Connection
count every field line; a request with transfer codings other than exactly `chunked` gets 501. A
malformed request pipelined after a valid one waits for the valid one's answer. An early
response (the app answers before the request body is over) ends with a lingering close, so the
client reads it instead of a reset. And no app can set the sidecars' own `X-Sidecar-*` marks.

The app is a RawApp (tests.support.raw_app): it answers with exactly the bytes a case needs and
records each request with the number of the app connection it came on, and which connections
the sidecar closed. Bytes an app sends beyond a response's framing are a complete response of
their own (status 299), so a sidecar that hands them on gives them as the answer to the next
request on that client connection, which is what each such test sends next.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Iterator

import pytest

from tests.support.procs import SidecarProc, port_of, sidecar_in_front
from tests.support.raw_app import Link, RawApp, Received, marker
from tests.support.rawhttp import READ_TIMEOUT_SECONDS, RawConnection, RawResponse, request

# Bounds on a noisy shared machine: the sidecar acts within a second, we look for several.
CLOSE_BOUND_SECONDS = 5.0
# How long the app waits for the sidecar to close a connection it sent unsolicited data on; then
# it says so and closes the connection itself, so that no later test meets it in the pool.
UNSOLICITED_CLOSE_SECONDS = 5.0

# What an app sends beyond a response's framing: a response of its own, which a client handed
# these bytes takes for the answer to its next request.
SMUGGLED = b"HTTP/1.1 299 Smuggled\r\nContent-Length: 7\r\n\r\nsmuggle"
NEXT = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nnext"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
HELLO = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"
STREAMED = b"s" * (256 * 1024)


def sized(head: bytes, body: bytes) -> bytes:
    """`head` (its status line and headers, no blank line) with Content-Length for `body`."""
    return head + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body


# case -> (the request's method, the app's whole reply, the status and body the client must get)
BEYOND_FRAMING: dict[str, tuple[str, bytes, int, bytes]] = {
    "head-with-body": ("HEAD", sized(b"HTTP/1.1 200 OK", SMUGGLED), 200, b""),
    "beyond-content-length": ("GET", HELLO + SMUGGLED, 200, b"hello"),
    # Too large to be read whole before the head goes out: relayed as it arrives.
    "beyond-streamed-content-length": ("GET", sized(b"HTTP/1.1 200 OK", STREAMED) + SMUGGLED, 200, STREAMED),
    "after-last-chunk": (
        "GET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_HELLO + SMUGGLED,
        200,
        b"hello",
    ),
    "204-with-body": ("GET", sized(b"HTTP/1.1 204 No Content", SMUGGLED), 204, b""),
    "304-with-body": ("GET", sized(b'HTTP/1.1 304 Not Modified\r\nETag: "v1"', SMUGGLED), 304, b""),
}

# What an app sends on a connection it has already answered the only request of.
UNSOLICITED = {
    "response": sized(b"HTTP/1.1 200 OK", b"unsolicited"),
    "early-hints": b"HTTP/1.1 103 Early Hints\r\nLink: </unsolicited.css>; rel=preload\r\n\r\n",
}

# case -> (the request's method, a response that ends its connection, the body the client gets)
LAST_ON_CONNECTION: dict[str, tuple[str, bytes, bytes]] = {
    "head-connection-close": (
        "HEAD",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n",
        b"",
    ),
    "head-http10": ("HEAD", b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\n", b""),
    "get-connection-close": (
        "GET",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        b"hello",
    ),
    "get-http10": ("GET", b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
}

# Transfer-Encoding lines whose codings are not exactly `chunked`: none may reach the app.
NOT_JUST_CHUNKED = {
    "gzip-then-chunked-lines": [("Transfer-Encoding", "gzip"), ("Transfer-Encoding", "chunked")],
    "gzip-chunked": [("Transfer-Encoding", "gzip, chunked")],
    "chunked-chunked": [("Transfer-Encoding", "chunked, chunked")],
    "chunked-twice-lines": [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
    "identity": [("Transfer-Encoding", "identity")],
}

GZIPPED = gzip.compress(b"a body the app compressed, " * 40, mtime=0)

# Headers only sidecars may set (any case), and two that merely look like them.
FORGED = [
    ("X-Sidecar-Refused", "app"),
    ("x-sidecar-closing", "app"),
    ("X-SIDECAR-CONSUMER", "http://app.invalid"),
    ("X-Sidecar-Anything", "app"),
]
LOOKALIKES = [("X-Sidecars", "kept"), ("X-Not-Sidecar-Refused", "kept")]
MARKED_HEAD = b"\r\n".join(f"{name}: {value}".encode() for name, value in [*FORGED, *LOOKALIKES])
# case -> the app's reply carrying the forged marks, and the final status the client gets
FORGING: dict[str, tuple[bytes, int]] = {
    "small": (sized(b"HTTP/1.1 200 OK\r\n" + MARKED_HEAD, b"ok"), 200),
    "chunked": (
        b"HTTP/1.1 200 OK\r\n" + MARKED_HEAD + b"\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        200,
    ),
    "refusal": (sized(b"HTTP/1.1 503 Service Unavailable\r\n" + MARKED_HEAD, b"ok"), 503),
    "early-hints": (
        b"HTTP/1.1 103 Early Hints\r\n" + MARKED_HEAD + b"\r\n\r\n" + sized(b"HTTP/1.1 200 OK", b"ok"),
        200,
    ),
}

# An upload the app answers before reading its body: the body's size, and the piece the client
# sends before the answer comes (the rest follows after it).
UPLOAD_BYTES = 4 * 1024 * 1024
PIECE_BYTES = 64 * 1024
TOO_LARGE_BODY = b'{"error": "payload too large"}'
# Keep-alive as far as the app is concerned: closing after an early answer is the sidecar's call.
TOO_LARGE = sized(b"HTTP/1.1 413 Content Too Large\r\nContent-Type: application/json", TOO_LARGE_BODY)


# -- the app's coroutine replies ------------------------------------------------------------------


def case_and_mark(request: Received) -> tuple[str, str]:
    """The case named by the last path segment of `/kind/CASE?case=MARK`, and MARK."""
    return request.path.rsplit("/", 1)[1], request.target.split("case=", 1)[1]


async def unsolicited(request: Received, link: Link, app: RawApp) -> bool:
    """Answers; once the test says the connection is idle in the sidecar's pool, sends more on
    it, and notes whether the sidecar closed the connection within UNSOLICITED_CLOSE_SECONDS."""
    kind, mark = case_and_mark(request)
    await link.send(sized(b"HTTP/1.1 200 OK", b"first"))
    try:
        await app.wait_until(lambda: any(mark in r.target for r in app.of_path("/go")), "go-ahead")
    except AssertionError:
        app.note(f"{mark}: no go-ahead")  # the test failed before it
        return False
    await link.send(UNSOLICITED[kind])
    try:
        await asyncio.wait_for(link.eof(), UNSOLICITED_CLOSE_SECONDS)
    except TimeoutError:
        app.note(f"{mark}: still open")
    except ConnectionError:
        app.note(f"{mark}: closed")  # with a reset
    else:
        app.note(f"{mark}: closed")
    return False


async def last_on_connection(request: Received, link: Link, app: RawApp) -> bool:
    """Answers with a response that ends the connection, yet keeps the socket open: a request
    that still comes on it is noted and left unanswered (the connection closes)."""
    case, mark = case_and_mark(request)
    await link.send(LAST_ON_CONNECTION[case][1])
    try:
        data = await link.reader.read(65536)
    except ConnectionError:
        data = b""  # closed with a reset
    app.note(f"{mark}: {'reused' if data else 'closed'}")
    return False


async def gzip_until_close(request: Received, link: Link, app: RawApp) -> bool:
    """A gzip-coded body without chunked framing: it ends when the app closes the connection."""
    await link.send(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: gzip\r\n\r\n" + GZIPPED
    )
    return False


async def answer_early(request: Received, link: Link, app: RawApp) -> bool:
    """Answers 413 as soon as the head is in, then reads and drops whatever still comes."""
    await link.send(TOO_LARGE)
    await link.eof()
    return False


REPLIES = {
    **{f"/beyond/{case}": reply for case, (_, reply, _, _) in BEYOND_FRAMING.items()},
    **{f"/unsolicited/{kind}": unsolicited for kind in UNSOLICITED},
    **{f"/last/{case}": last_on_connection for case in LAST_ON_CONNECTION},
    **{f"/forged/{case}": reply for case, (reply, _) in FORGING.items()},
    "/next": NEXT,
    "/go": sized(b"HTTP/1.1 200 OK", b""),
    "/hello": HELLO,
    "/gzip": gzip_until_close,
    "/early": answer_early,
    "/connection-lines": (
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nConnection: X-Resp-Drop, x-resp-drop-too\r\n"
        b"X-Resp-Drop: 1\r\nX-Resp-Drop-Too: 1\r\nX-Resp-Keep: kept\r\nContent-Length: 2\r\n\r\nok"
    ),
}


@pytest.fixture(scope="module")
def framed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RawApp, SidecarProc]]:
    """A RawApp behind a provider sidecar (instance id `framing`, no health checks), per module."""
    tmp_path = tmp_path_factory.mktemp("framing")
    with RawApp(REPLIES, default=OK, early={"/early"}) as app:
        args = ("--app-health", "", "--instance-id", "framing")
        with sidecar_in_front(tmp_path, f"sqlite://{tmp_path / 'r.db'}", app.url, *args) as car:
            yield app, car


def at_app(app: RawApp, path: str, mark: str) -> list[Received]:
    """The requests for `path` the app received that carry `mark`."""
    return [received for received in app.of_path(path) if mark in received.target]


async def go_ahead(app: RawApp, mark: str) -> None:
    """Tells the app's coroutine reply for `mark` to go on (a request straight to the app)."""
    async with await RawConnection.open(app.port) as direct:
        await direct.send(request("GET", f"/go?case={mark}"))
        assert (await direct.response()).status == 200


async def noted(app: RawApp, mark: str) -> str:
    """What the app's coroutine reply for `mark` noted at its end."""
    await app.wait_until(lambda: any(note.startswith(f"{mark}: ") for note in app.notes), f"end of {mark}")
    (note,) = [note for note in app.notes if note.startswith(f"{mark}: ")]
    return note.removeprefix(f"{mark}: ")


async def next_gets_its_own_answer(conn: RawConnection, mark: str, body: bytes = b"") -> None:
    """The next request on `conn` (for /next, marked `mark`; a POST when it has a body) gets
    /next's own answer: no bytes left over from the response before, no 1xx."""
    await conn.send(request("POST" if body else "GET", f"/next?case={mark}", body=body))
    second = await conn.response(skip_1xx=False)
    assert (second.status, second.body) == (200, b"next"), f"the next request got {second}"


def apart(app: RawApp, path: str, mark: str) -> tuple[Received, Received]:
    """The request for `path` marked `mark` and the /next one after it, which came on another
    app connection: the one `path` was answered on did not go back to the pool."""
    (earlier,) = at_app(app, path, mark)
    (following,) = at_app(app, "/next", mark)
    assert following.connection != earlier.connection
    return earlier, following


def codings(response: RawResponse) -> list[str]:
    """The transfer codings of `response`, over all its Transfer-Encoding lines, in order."""
    return [c.strip().lower() for value in response.all("Transfer-Encoding") for c in value.split(",")]


# -- a response never leaks into the next one ---------------------------------------------------


# A body to HEAD, 204 or 304, bytes past Content-Length or after the last chunk: the client gets
# exactly the response, then its next request's own answer, from another app connection.
@pytest.mark.parametrize("case", list(BEYOND_FRAMING))
async def test_bytes_beyond_the_framing_reach_no_client(
    framed: tuple[RawApp, SidecarProc], case: str
) -> None:
    """Bytes past a response's framing reach no client, and close the app connection that sent them."""
    app, car = framed
    method, _, status, body = BEYOND_FRAMING[case]
    mark = marker(case)
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(request(method, f"/beyond/{case}?case={mark}"))
        first = await conn.response(method)
        assert first.status == status, first.raw_head
        assert first.body == body, f"{len(first.body)} bytes, ending {first.body[-40:]!r}"
        await next_gets_its_own_answer(conn, mark)
    leaky, _ = apart(app, f"/beyond/{case}", mark)
    await app.wait_until(lambda: leaky.connection in app.ended, f"close of connection {leaky.connection}")


# The client connection that had the last answer from that app connection is the one a leak
# would reach: its next request must get its own answer, from another app connection.
@pytest.mark.parametrize("kind", list(UNSOLICITED))
async def test_unsolicited_data_on_an_idle_app_connection_reaches_no_client(
    framed: tuple[RawApp, SidecarProc], kind: str
) -> None:
    """Data on an idle pooled app connection (a response, a 103) closes it and reaches no client."""
    app, car = framed
    mark = marker(kind)
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(request("GET", f"/unsolicited/{kind}?case={mark}"))
        first = await conn.response()
        assert (first.status, first.body) == (200, b"first"), first
        await go_ahead(app, mark)
        assert await noted(app, mark) == "closed", "the sidecar kept the connection after unsolicited data"
        await next_gets_its_own_answer(conn, mark)
    apart(app, f"/unsolicited/{kind}", mark)


# The app keeps the socket open and notes whether a request still came on it. The next request
# is a POST: the sidecar may not send it twice, so a reused connection shows as a 502.
@pytest.mark.parametrize("case", list(LAST_ON_CONNECTION))
async def test_a_response_that_ends_its_connection_is_not_pooled(
    framed: tuple[RawApp, SidecarProc], case: str
) -> None:
    """A Connection: close or HTTP/1.0 response (HEAD too) is not pooled: the next POST gets its 200."""
    app, car = framed
    method, _, body = LAST_ON_CONNECTION[case]
    mark = marker(case)
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(request(method, f"/last/{case}?case={mark}"))
        first = await conn.response(method)
        assert (first.status, first.body) == (200, body), first
        await next_gets_its_own_answer(conn, mark, body=b"order")
    assert await noted(app, mark) == "closed"
    _, following = apart(app, f"/last/{case}", mark)
    assert following.body == b"order"


# -- Transfer-Encoding and Connection: every line counts --------------------------------------


@pytest.mark.parametrize("case", list(NOT_JUST_CHUNKED))
async def test_transfer_codings_other_than_chunked_get_501(
    framed: tuple[RawApp, SidecarProc], case: str
) -> None:
    """Transfer codings other than exactly chunked, over all lines: 501, closed, never at the app."""
    app, car = framed
    mark = marker(case)
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(request("POST", f"/te?case={mark}", NOT_JUST_CHUNKED[case]) + CHUNKED_HELLO)
        response = await conn.response()
        assert response.status == 501, response
        assert "error" in json.loads(response.body), response
        assert await conn.read_to_eof(CLOSE_BOUND_SECONDS) == b""
    assert at_app(app, "/te", mark) == []


# The counterpart of the 501s: they are not what every chunked request gets.
async def test_exactly_chunked_is_forwarded(framed: tuple[RawApp, SidecarProc]) -> None:
    """Transfer-Encoding: chunked alone reaches the app with its body; the connection goes on."""
    app, car = framed
    mark = marker("chunked")
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(
            request("POST", f"/te?case={mark}", [("Transfer-Encoding", "chunked")]) + CHUNKED_HELLO
        )
        assert (await conn.response()).status == 200
        await conn.send(request("GET", f"/next?case={mark}"))
        assert (await conn.response()).body == b"next"
    (received,) = at_app(app, "/te", mark)
    assert received.body == b"hello"


async def test_response_coded_without_chunked_is_relayed_until_close(
    framed: tuple[RawApp, SidecarProc],
) -> None:
    """A gzip-coded response without chunked is read to the app's close, relayed as gzip, chunked."""
    _, car = framed
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(request("GET", "/gzip"))
        response = await conn.response()
    assert response.status == 200, response
    assert codings(response) == ["gzip", "chunked"], response.headers
    assert response.all("Content-Length") == []
    assert response.body == GZIPPED


# Forwarded with its body decoded and chunked again.
async def test_http10_request_with_chunked_body_is_answered_then_closed(
    framed: tuple[RawApp, SidecarProc],
) -> None:
    """An HTTP/1.0 keep-alive request with a chunked body is forwarded, answered, then closed."""
    app, car = framed
    mark = marker("http10-chunked")
    head = (
        f"POST /hello?case={mark} HTTP/1.0\r\nHost: sidecar.test\r\nConnection: keep-alive\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(head.encode() + CHUNKED_HELLO)
        response = await conn.response()
        assert (response.status, response.body) == (200, b"hello"), response
        assert await conn.read_to_eof(CLOSE_BOUND_SECONDS) == b""
    (received,) = at_app(app, "/hello", mark)
    assert (received.all("Transfer-Encoding"), received.body) == (["chunked"], b"hello")


async def test_every_connection_line_counts_in_a_request(framed: tuple[RawApp, SidecarProc]) -> None:
    """Headers named on any Connection line of a request, in any case, do not reach the app."""
    app, car = framed
    mark = marker("connection-lines")
    sent = [
        ("Connection", "keep-alive"),
        ("X-Keep", "kept"),
        ("Connection", "X-Drop, x-drop-too"),
        ("X-Drop", "secret"),
        ("X-Drop-Too", "secret"),
    ]
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(request("GET", f"/headers?case={mark}", sent))
        assert (await conn.response()).status == 200
    (received,) = at_app(app, "/headers", mark)
    names = {name.lower() for name, _ in received.headers}
    assert "x-keep" in names
    assert names.isdisjoint({"connection", "x-drop", "x-drop-too"}), received.headers


async def test_every_connection_line_counts_in_a_response(framed: tuple[RawApp, SidecarProc]) -> None:
    """Headers named on any Connection line of a response, in any case, do not reach the client."""
    _, car = framed
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(request("GET", "/connection-lines"))
        response = await conn.response()
    assert response.status == 200, response
    assert response.header("X-Resp-Keep") == "kept"
    assert response.all("X-Resp-Drop") == response.all("X-Resp-Drop-Too") == [], response.headers


# -- pipelining and early responses ---------------------------------------------------------------


async def test_malformed_request_pipelined_after_a_valid_one(framed: tuple[RawApp, SidecarProc]) -> None:
    """A GET and a malformed request in one write: the whole 200, a 400, EOF; the app sees only one."""
    app, car = framed
    valid, malformed = marker("pipelined-valid"), marker("pipelined-malformed")
    smuggling = (
        f"POST /hello?case={malformed} HTTP/1.1\r\nHost: sidecar.test\r\n"
        "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    )
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(request("GET", f"/hello?case={valid}") + smuggling.encode())
        first = await conn.response()
        assert (first.status, first.body) == (200, b"hello"), first
        second = await conn.response()
        assert (second.status, second.closing) == (400, True), second
        assert await conn.read_to_eof(CLOSE_BOUND_SECONDS) == b""
    assert len(at_app(app, "/hello", valid)) == 1
    assert at_app(app, "/hello", malformed) == []


# The app answers a large upload after its head. Without a lingering close, what the client
# still sends after the answer came meets a closed socket, and the client gets a reset.
async def test_early_response_ends_with_a_lingering_close(framed: tuple[RawApp, SidecarProc]) -> None:
    """An early 413 says close and lingers: the client sends on, reads it all, then EOF, not a reset."""
    app, car = framed
    mark = marker("early")
    head = request("POST", f"/early?case={mark}", [("Content-Length", str(UPLOAD_BYTES))])
    piece = b"u" * PIECE_BYTES
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(head + piece)
        answer = await conn.head()
        assert answer.status == 413, answer
        try:
            async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                for _ in range(UPLOAD_BYTES // PIECE_BYTES - 1):
                    conn.writer.write(piece)
                    await conn.writer.drain()
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise AssertionError(f"reset while the client still sent its body: {exc!r}") from None
        except TimeoutError:
            raise AssertionError("the sidecar stopped reading the rest of the body") from None
        try:
            async with asyncio.timeout(READ_TIMEOUT_SECONDS):
                body = await conn.reader.readexactly(int(answer.header("Content-Length") or 0))
                rest = await conn.reader.read()
        except (ConnectionResetError, asyncio.IncompleteReadError) as exc:
            raise AssertionError(f"the answer was not read to a clean end: {exc!r}") from None
    assert (body, rest) == (TOO_LARGE_BODY, b"")
    assert answer.closing, answer.headers
    assert len(at_app(app, "/early", mark)) == 1


# -- marks only the sidecar may set -----------------------------------------------------------------


# Small, chunked, a 503 (what a consumer would retry elsewhere) and a 103; look-alikes stay.
@pytest.mark.parametrize("case", list(FORGING))
async def test_app_cannot_set_sidecar_marks(framed: tuple[RawApp, SidecarProc], case: str) -> None:
    """X-Sidecar-* headers from an app (any case, any response, 103 too) never reach the client."""
    _, car = framed
    status = FORGING[case][1]
    heads: list[RawResponse] = []
    async with await RawConnection.open(port_of(car)) as conn:
        await conn.send(request("GET", f"/forged/{case}"))
        while not heads or heads[-1].status < 200:
            heads.append(await conn.response(skip_1xx=False))
    assert [head.status for head in heads][-1] == status, heads
    for head in heads:
        marks = [name for name, _ in head.headers if name.lower().startswith("x-sidecar-")]
        assert marks == [], f"{head.status} carries {marks}"
    # The first head is the one that carried them all (the 103, where there is one).
    assert [heads[0].header(name) for name, _ in LOOKALIKES] == ["kept", "kept"], heads[0].headers
    assert heads[-1].body == b"ok"
