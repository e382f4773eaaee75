"""Differential testing of two reverse proxies in front of one recording app: nginx and the
provider sidecar (tests/test_nginx_differential.py holds the corpora and the differences it
intends). This module sends the cases, reads what comes back (framed as tests.support.rawhttp
reads it) and summarises it; tests.support.differences compares.

A request case (`Sent`) is sent whole on a fresh connection to each proxy in turn, and then, on
the same connection, a next request (`/probe`): its answer, or the close, says what became of the
connection. A response case (`Returned`) is the app's raw reply to a path of its own
(`resp_path`), fetched on a fresh connection and followed there by a normal request (`/normal`),
to see that nothing leaks into it; the app tells whether that one came on the same app connection
(each proxy has at most one idle app connection: the test sends one request at a time).

What each side saw is a few parts ("app", "client #1", "next request"), each a summary line
("200 from the app", "closed", the request lines the app got) and aspects: for the app, each
request's line, headers (lower-case names; the order of lines of one name kept, the order across
names not), decoded body and trailers; for the client, each response's 1xx statuses, status,
end-to-end headers, decoded body and trailers.

Normalised, no difference: header name case and the order across names; Date and Server (nginx
sets its own and drops the app's); Connection and Keep-Alive on a response, and Connection's
keep-alive and close tokens on a request (what became of the connection is compared instead);
Content-Length and chunked framing, to the app and to the client, for the same body (a response's
Content-Length is kept where no body follows: HEAD, 204, 304); the body and Content-Type of a
proxy's own error response (ERROR_PAGES).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.nginx import Nginx
from tests.support.procs import sidecar_in_front
from tests.support.raw_app import Link, RawApp, Received, Reply
from tests.support.rawhttp import BadFraming, RawConnection, RawResponse, parse_head

HOST = "differential.test"
# Both proxies answer within milliseconds: what waits this long is a connection one of them holds
# (nginx after an app's 1xx or an unframed response), recorded as such ("no complete response").
# Those waits are most of the module's running time; 3 s is still far above any real answer.
READ_SECONDS = 3.0
# The next request on a case's connection, whose answer says the connection went on.
PROBE = f"GET /probe HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
NORMAL = f"GET /normal HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
# What the app sends on each of its responses, so that a response without it is a proxy's own.
APP_MARK = "X-App: raw"


def message(*lines: str, body: bytes = b"") -> bytes:
    """A request or response: `lines` joined with CRLF, the empty line, `body`."""
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True)
class Sent:
    raw: bytes
    methods: tuple[str, ...] = ("GET",)  # the method each expected response answers, in order
    http10: bool = False  # an HTTP/1.0 client: a chunked response to it is a problem


@dataclass(frozen=True)
class Returned:
    reply: Reply  # the app's answer to the case's path: bytes, or a script that closes after
    method: str = "GET"
    http10: bool = False  # asked by an HTTP/1.0 client (with keep-alive, for the next request)

    def request(self, path: str) -> bytes:
        if self.http10:
            return message(f"{self.method} {path} HTTP/1.0", f"Host: {HOST}", "Connection: keep-alive")
        return message(f"{self.method} {path} HTTP/1.1", f"Host: {HOST}")


def resp_path(case: str) -> str:
    return f"/resp/{case}"


# -- the proxies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    app: RawApp
    ports: dict[str, int]  # "nginx", "sidecar"


async def answer(request: Received, link: Link, app: RawApp) -> bool:
    """The app's answer to every other path: 200, the request line as the body."""
    body = f"{request.method} {request.target}".encode("latin-1")
    head = message("HTTP/1.1 200 OK", APP_MARK, f"Content-Length: {len(body)}")
    await link.send(head + (b"" if request.method == "HEAD" else body))
    return True


@contextmanager
def bench_running(tmp_path: Path, responses: Mapping[str, Returned]) -> Iterator[Bench]:
    """One recording app that answers each response case's path with its reply, and nginx and a
    provider sidecar in front of it."""
    replies: dict[str, Reply] = {resp_path(case): returned.reply for case, returned in responses.items()}
    registry = f"sqlite://{tmp_path / 'r.db'}"
    with (
        RawApp(replies, default=answer) as app,
        Nginx(tmp_path / "nginx", app.port) as nginx,
        sidecar_in_front(tmp_path, registry, app.url, "--app-health", "") as car,
    ):
        assert car.listen_port is not None
        yield Bench(app, {"nginx": nginx.port, "sidecar": car.listen_port})


# -- reading what the client gets -----------------------------------------------------------------


@dataclass
class Answer(RawResponse):
    """One response as the client read it (status 0: no head came), with the 1xx statuses before
    it and what kept it from being read whole, if anything."""

    status: int = 0
    reason: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    informational: list[int] = field(default_factory=list)
    problem: str = ""


def show(data: bytes) -> str:
    if len(data) <= 80:
        return repr(data)
    return f"{len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()[:12]}, from {data[:24]!r}"


async def read_answer(conn: RawConnection, method: str) -> Answer | None:
    """The next response (1xx ones gathered on the way), or None when the connection closed (or
    was reset) before one began. Bounded by READ_SECONDS in all. Read as rawhttp reads, but what
    a test would fail on is recorded here as the answer's problem, for the comparison."""
    answer = Answer()
    try:
        async with asyncio.timeout(READ_SECONDS):
            while True:
                try:
                    raw = await conn.reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    if not exc.partial and not answer.informational:
                        return None
                    answer.problem = (
                        f"no HTTP/1.x response head, the connection closed after {show(exc.partial)}"
                    )
                    return answer
                try:
                    head = parse_head(raw)
                except ValueError:
                    answer.problem = f"not an HTTP/1.x response head: {show(raw)}"
                    return answer
                answer = Answer(head.status, head.reason, head.headers, informational=answer.informational)
                if not head.interim:
                    break
                answer.informational.append(head.status)
            try:
                await conn.read_body(method, answer)
            except asyncio.IncompleteReadError:
                answer.problem = f"the body was cut short after {len(answer.body)} bytes"
            except BadFraming as exc:
                answer.problem = str(exc)
            except ValueError:
                answer.problem = "a bad chunk size sent to the client"
    except TimeoutError:
        answer.problem = hang()
        if not answer.status:
            answer.problem += await leftover(conn.reader)
        elif answer.body:
            answer.problem += f" (body so far {show(answer.body)})"
    except ConnectionResetError:
        if not answer.status and not answer.informational:
            return None  # closed: the reset came in answer to what we sent after the close
        answer.problem = f"connection reset (body so far {show(answer.body)})"
    return answer


def hang() -> str:
    """The problem of a response not complete within READ_SECONDS."""
    return f"no complete response within {READ_SECONDS:g} s"


async def leftover(reader: asyncio.StreamReader) -> str:
    """What the reader holds already, for the diagnosis of a head that never ended (no waiting:
    a read with nothing in the buffer is cut at once)."""
    try:
        async with asyncio.timeout(0):
            data = await reader.read(65536)
    except TimeoutError:
        return ""
    return f", got {show(data)}" if data else ""


# -- what each side saw --------------------------------------------------------------------------

# Per hop, compared through what they mean (the body, the connection's fate), or replaced by the
# proxy (nginx drops the app's Date and Server and sets its own).
CLIENT_FRAMING = {"connection", "keep-alive", "date", "server"}
APP_FRAMING = {"keep-alive", "content-length", "transfer-encoding"}
# Connection tokens about the app connection's persistence (nginx sends no Connection header,
# the sidecar may say keep-alive); any other token (Upgrade) is compared.
PERSISTENCE = {"keep-alive", "close"}
# A header value longer than this is shown by its length and digest (the filler lines).
SHOWN_CHARS = 100
# Applied to every response rather than listed per case: a proxy's own error response (one
# without the app's mark) has its body and Content-Type compared as ERROR_PAGES once each is seen
# to be in its proxy's form: nginx's HTML page, the sidecar's JSON {"error": "..."} (the
# contract's error body; spec 1 for the 501). An intended difference of every error response.
ERROR_PAGES = "<the proxy's own error page>"
# The app's own address (its port changes with each run): the sidecar's Host for an HTTP/1.0
# request without one (spec section 3).
APP_ADDRESS = "<the app's address>"
BROKEN = "not tried: the response before was broken"

# part ("app", "client #1", "next request", ...) -> aspect -> value; "" is the part's summary.
Part = dict[str, str]
Seen = dict[str, Part]


def grouped(headers: list[tuple[str, str]], drop: set[str], app_address: str = "") -> dict[str, str]:
    """Header values by lower-case name, those of one name in their order, `drop` left out."""
    values: dict[str, list[str]] = {}
    for name, value in headers:
        if name.lower() not in drop:
            value = APP_ADDRESS if app_address and value == app_address else value
            values.setdefault(name.lower(), []).append(value)
    return {name: clip(" | ".join(found)) for name, found in values.items()}


def clip(text: str) -> str:
    if len(text) <= SHOWN_CHARS:
        return text
    return show(text.encode("latin-1"))


def error_page(answer: Answer) -> bool:
    """A proxy's own error response in its proxy's form: nginx's HTML page or the sidecar's JSON."""
    if answer.all("X-App") or answer.status < 400:
        return False
    if answer.body.startswith(b"<html>") and f"<title>{answer.status} ".encode() in answer.body:
        return True
    try:
        document = json.loads(answer.body)
    except ValueError:
        return False
    return isinstance(document, dict) and isinstance(document.get("error"), str)


def summary(answer: Answer) -> str:
    """One line: the status, whose response it is, and what went wrong reading it."""
    if answer.status == 0:
        return answer.problem
    if answer.all("X-App"):
        origin = "from the app"
    else:
        origin = "its own error page" if error_page(answer) else "its own"
    text = f"{answer.status} {origin}"
    if answer.informational:
        text = " ".join(map(str, answer.informational)) + " then " + text
    return f"{text}, then {answer.problem}" if answer.problem else text


def client_part(answer: Answer | None, method: str, http10: bool) -> Part:
    if answer is None:
        return {"": "none: the connection closed"}
    part = {"": summary(answer), "status": str(answer.status)}
    if answer.problem:
        part["problem"] = answer.problem
    if answer.informational:
        part["1xx"] = " ".join(map(str, answer.informational))
    bodiless = method == "HEAD" or answer.status in (101, 204, 304)
    drop = set(CLIENT_FRAMING) | (set() if bodiless else {"content-length"})
    headers = []
    for name, value in answer.headers:
        if name.lower() == "transfer-encoding":
            if http10 and "chunked" in value.lower():
                part["problem"] = "a chunked response to an HTTP/1.0 client"
            value = ", ".join(c.strip() for c in value.split(",") if c.strip().lower() != "chunked")
            if not value:
                continue
        headers.append((name, value))
    body = show(answer.body)
    if error_page(answer):
        drop.add("content-type")
        body = ERROR_PAGES
    for name, value in grouped(headers, drop).items():
        part[f"header {name}"] = value
    if not bodiless:
        part["body"] = body
    if answer.trailers:
        part["trailers"] = str(grouped(answer.trailers, set()))
    return part


def app_part(received: list[Received], app_address: str) -> Part:
    """The requests the app received: their lines (and bodies) as the summary, then each one's
    headers, body and trailers."""
    lines = []
    part: Part = {}
    for number, request in enumerate(received, 1):
        line = f"{request.method} {request.target} {request.version}"
        lines.append(f"{line} + {show(request.body)}" if request.body else line)
        part[f"#{number} request line"] = line
        headers = [(name, value) for name, value in request.headers if name.lower() != "connection"]
        tokens = [t.strip() for value in request.all("Connection") for t in value.split(",") if t.strip()]
        if kept := [token for token in tokens if token.lower() not in PERSISTENCE]:
            headers.append(("Connection", ", ".join(kept)))
        for name, value in grouped(headers, APP_FRAMING, app_address).items():
            part[f"#{number} header {name}"] = value
        part[f"#{number} body"] = show(request.body)
        if request.trailers:
            part[f"#{number} trailers"] = str(grouped(request.trailers, set()))
    return {"": "; ".join(lines) or "nothing", **part}


async def next_request(conn: RawConnection, last: Answer | None, request: bytes) -> Part:
    """What became of the connection: a next request is sent and answered, or it was closed. Not
    tried after a response that did not end as its framing said (the client would close)."""
    if last is not None and last.problem:
        return {"": BROKEN}
    await conn.send(request)
    answer = await read_answer(conn, "GET")
    if answer is None:
        return {"": "closed"}
    return client_part(answer, "GET", http10=False)


# -- running a case through one proxy --------------------------------------------------------------


async def through(bench: Bench, proxy: str, case: Sent) -> Seen:
    """A request case on a fresh connection to `proxy`: what the client and the app received."""
    before = len(bench.app.received)
    seen: Seen = {}
    async with await RawConnection.open(bench.ports[proxy]) as conn:
        await conn.send(case.raw)
        last: Answer | None = None
        for number, method in enumerate(case.methods, 1):
            last = await read_answer(conn, method)
            seen[f"client #{number}"] = client_part(last, method, case.http10)
            if last is None or last.problem:
                break
        seen["next request"] = await next_request(conn, last, PROBE)
    received = [request for request in bench.app.received[before:] if request.path != "/probe"]
    seen["app"] = app_part(received, f"127.0.0.1:{bench.app.port}")
    return seen


async def fetched(bench: Bench, proxy: str, case: str, returned: Returned) -> Seen:
    """A response case through `proxy`: what the client got for it and for the next request, and
    whether that came to the app on the same connection."""
    before = len(bench.app.received)
    async with await RawConnection.open(bench.ports[proxy]) as conn:
        await conn.send(returned.request(resp_path(case)))
        first = await read_answer(conn, returned.method)
        seen = {"client": client_part(first, returned.method, returned.http10)}
        seen["next request"] = await next_request(conn, first, NORMAL)
    received = bench.app.received[before:]
    paths = ", ".join(request.path for request in received)
    app = {"": paths, "paths": paths}
    connections = {request.path: request.connection for request in received}
    if resp_path(case) in connections and "/normal" in connections:
        same = connections[resp_path(case)] == connections["/normal"]
        app["next request on the same app connection"] = "yes" if same else "no"
        app[""] += f" (the next request on {'the same' if same else 'another'} app connection)"
    seen["app"] = app
    return seen
