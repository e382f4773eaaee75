"""nginx and the provider sidecar side by side, in front of the same recording app (issue 17): a
corpus of raw requests (well-formed, odd and malformed) and a corpus of raw app responses go
through both, and what the app and the client receive must be the same but for the differences
listed in INTENDED, each with its reason; any other difference fails and shows both sides. This
is how the next request-smuggling or response-splitting defect is found before a user finds it.

How a case is sent, what is compared and what is normalised first: tests/support/differential.py;
how the intended differences are written and checked: tests/support/differences.py.
A new difference is for the lead to decide: fixed in the sidecar, or listed here with its reason.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import pytest

from tests.support.differences import (
    FROM_APP,
    SIDECAR_502,
    Intended,
    compare,
    nginx_holds,
    sidecar_502,
    sidecar_forwards,
    sidecar_refuses,
)
from tests.support.differential import (
    APP_ADDRESS,
    APP_MARK,
    BROKEN,
    HOST,
    Bench,
    Returned,
    Sent,
    bench_running,
    fetched,
    hang,
    message,
    resp_path,
    through,
)
from tests.support.raw_app import closing


def filler(prefix: str, total: int, line: int = 3500) -> list[str]:
    """Header lines `prefix-N: fff...` of `line` bytes each, `total` bytes in all."""
    return [f"{prefix}-{n}: {'f' * (line - len(prefix) - 8)}" for n in range(total // line + 1)]


H = f"Host: {HOST}"

# -- the request corpus ---------------------------------------------------------------------------


def post(target: str, *lines: str, body: bytes, version: str = "HTTP/1.1") -> bytes:
    return message(f"POST {target} {version}", H, *lines, body=body)


CHUNKED = "Transfer-Encoding: chunked"
HELLO_CHUNKED = b"5\r\nhello\r\n0\r\n\r\n"

REQUESTS: dict[str, Sent] = {
    # well-formed
    "get": Sent(
        message("GET /get?q=1 HTTP/1.1", H, "Accept: */*", "X-Dup: one", "Cookie: a=1", "X-Dup: two")
    ),
    "head": Sent(message("HEAD /head HTTP/1.1", H), ("HEAD",)),
    "post-length": Sent(post("/post", "Content-Type: text/plain", "Content-Length: 11", body=b"hello world")),
    "post-empty": Sent(post("/post", "Content-Length: 0", body=b"")),
    "get-with-body": Sent(message("GET /get HTTP/1.1", H, "Content-Length: 4", body=b"body")),
    "chunked": Sent(post("/chunked", CHUNKED, body=b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")),
    "chunked-trailers": Sent(
        post("/chunked", CHUNKED, "Trailer: X-Checksum", body=b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n")
    ),
    "chunk-extensions": Sent(post("/chunked", CHUNKED, body=b"5;name=value\r\nhello\r\n0;last\r\n\r\n")),
    "chunk-size-forms": Sent(
        post("/chunked", CHUNKED, body=b"0005\r\nhello\r\nA\r\n0123456789\r\n0\r\n\r\n")
    ),
    "te-chunked-capitalised": Sent(post("/chunked", "Transfer-Encoding: Chunked", body=HELLO_CHUNKED)),
    "expect-100-continue": Sent(post("/expect", "Expect: 100-continue", "Content-Length: 5", body=b"hello")),
    "connection-close": Sent(message("GET /close HTTP/1.1", H, "Connection: close")),
    "host-with-port": Sent(message("GET /port HTTP/1.1", "Host: differential.test:8080")),
    "empty-header-value": Sent(message("GET /empty HTTP/1.1", H, "X-Empty:")),
    "long-target": Sent(message(f"GET /long?{'q' * 8000} HTTP/1.1", H)),
    "many-header-lines": Sent(message("GET /many HTTP/1.1", H, *(f"X-Line-{n}: {n}" for n in range(150)))),
    "large-head": Sent(message("GET /large HTTP/1.1", H, *filler("X-Filler", 48 * 1024))),
    "x-sidecar-header-from-client": Sent(message("GET /mark HTTP/1.1", H, "X-Sidecar-Closing: client")),
    # HTTP/1.0
    "http10": Sent(message("GET /old HTTP/1.0", H), http10=True),
    "http10-keep-alive": Sent(message("GET /old HTTP/1.0", H, "Connection: keep-alive"), http10=True),
    "http10-no-host": Sent(message("GET /old HTTP/1.0"), http10=True),
    "http10-expect": Sent(
        post("/old", "Expect: 100-continue", "Content-Length: 5", body=b"hello", version="HTTP/1.0"),
        http10=True,
    ),
    "http10-chunked": Sent(post("/old", CHUNKED, body=HELLO_CHUNKED, version="HTTP/1.0"), http10=True),
    # request targets
    "absolute-form": Sent(message("GET http://example.test:81/abs?b HTTP/1.1", "Host: other.test")),
    "absolute-form-without-host": Sent(message("GET http://example.test/abs HTTP/1.1", "Accept: */*")),
    "absolute-form-userinfo": Sent(
        message("GET http://user@example.test/abs HTTP/1.1", "Host: example.test")
    ),
    "options-star": Sent(message("OPTIONS * HTTP/1.1", H)),
    "get-star": Sent(message("GET * HTTP/1.1", H)),
    "dot-segments": Sent(message("GET /a/../b HTTP/1.1", H)),
    "dot-segment-single": Sent(message("GET /a/./b HTTP/1.1", H)),
    "dot-segments-above-root": Sent(message("GET /../x HTTP/1.1", H)),
    "dot-segments-above-root-deep": Sent(message("GET /a/../../x HTTP/1.1", H)),
    "encoded-dot-segments-above-root": Sent(message("GET /%2e%2e/x HTTP/1.1", H)),
    "encoded-dot-segments-mixed-case": Sent(message("GET /a/%2E%2e/%2e%2E/x HTTP/1.1", H)),
    "encoded-slash": Sent(message("GET /a%2Fb/c HTTP/1.1", H)),
    "dots-in-query": Sent(message("GET /q?path=/../../etc HTTP/1.1", H)),
    "fragment-in-target": Sent(message("GET /frag#part HTTP/1.1", H)),
    # methods and request lines
    "connect": Sent(message("CONNECT example.test:443 HTTP/1.1", "Host: example.test:443")),
    "extension-method": Sent(message("FROB /frob HTTP/1.1", H)),
    "lowercase-method": Sent(message("get /lower HTTP/1.1", H)),
    "request-line-double-space": Sent(message("GET  /space HTTP/1.1", H)),
    "request-line-trailing-space": Sent(message("GET /space HTTP/1.1 ", H)),
    "http2-request-line": Sent(message("GET /v HTTP/2.0", H)),
    "http3-request-line": Sent(message("GET /v HTTP/3.0", H)),
    "http12-request-line": Sent(message("GET /v HTTP/1.2", H)),
    "http09-request-line": Sent(message("GET /v HTTP/0.9", H)),
    "no-version": Sent(b"GET /v\r\n\r\n"),
    "lowercase-version": Sent(message("GET /v http/1.1", H)),
    # upgrades
    "upgrade-h2c-with-body": Sent(
        post(
            "/h2c",
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA",
            "Content-Length: 5",
            body=b"hello",
        )
    ),
    "upgrade-h2c-without-body": Sent(
        message(
            "GET /h2c HTTP/1.1",
            H,
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA",
        )
    ),
    "upgrade-websocket-refused": Sent(
        message(
            "GET /ws HTTP/1.1",
            H,
            "Connection: Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13",
        )
    ),
    # transfer codings
    "te-gzip-then-chunked-two-lines": Sent(
        post("/te", "Transfer-Encoding: gzip", "Transfer-Encoding: chunked", body=HELLO_CHUNKED)
    ),
    "te-gzip-chunked-one-line": Sent(post("/te", "Transfer-Encoding: gzip, chunked", body=HELLO_CHUNKED)),
    "te-chunked-chunked": Sent(post("/te", "Transfer-Encoding: chunked, chunked", body=HELLO_CHUNKED)),
    "te-identity": Sent(post("/te", "Transfer-Encoding: identity", body=b"hello")),
    "te-chunked-two-lines": Sent(post("/te", CHUNKED, CHUNKED, body=HELLO_CHUNKED)),
    "te-unknown": Sent(post("/te", "Transfer-Encoding: xchunked", body=HELLO_CHUNKED)),
    # hop-by-hop and forwarding headers
    "connection-host": Sent(message("GET /conn HTTP/1.1", H, "Connection: host")),
    "connection-names-header": Sent(message("GET /conn HTTP/1.1", H, "Connection: X-Secret", "X-Secret: s")),
    "hop-by-hop-headers": Sent(
        message(
            "GET /hop HTTP/1.1",
            H,
            "Keep-Alive: timeout=5",
            "TE: trailers",
            "Proxy-Connection: keep-alive",
            "Trailer: X-Checksum",
            "Proxy-Authorization: Basic dTpw",
        )
    ),
    "x-forwarded-for-two-lines": Sent(
        message("GET /xff HTTP/1.1", H, "X-Forwarded-For: 192.0.2.1", "X-Forwarded-For: 192.0.2.2")
    ),
    "x-forwarded-for-list": Sent(message("GET /xff HTTP/1.1", H, "X-Forwarded-For: 192.0.2.1, 192.0.2.2")),
    "underscore-in-header-name": Sent(message("GET /under HTTP/1.1", H, "X_Forwarded_For: 192.0.2.9")),
    # Host
    "no-host": Sent(message("GET /host HTTP/1.1", "Accept: */*")),
    "two-hosts": Sent(message("GET /host HTTP/1.1", "Host: a.test", "Host: b.test")),
    "host-with-space": Sent(message("GET /host HTTP/1.1", "Host: a b")),
    "host-with-userinfo": Sent(message("GET /host HTTP/1.1", "Host: a@b")),
    "host-empty": Sent(message("GET /host HTTP/1.1", "Host:")),
    # framing (RFC 9112 section 6.3)
    "content-length-and-chunked": Sent(post("/cl", "Content-Length: 5", CHUNKED, body=b"0\r\n\r\n")),
    "chunked-and-content-length": Sent(post("/cl", CHUNKED, "Content-Length: 5", body=b"0\r\n\r\n")),
    "two-content-lengths": Sent(post("/cl", "Content-Length: 5", "Content-Length: 6", body=b"hello!")),
    "two-equal-content-lengths": Sent(post("/cl", "Content-Length: 5", "Content-Length: 5", body=b"hello")),
    "content-length-list": Sent(post("/cl", "Content-Length: 5, 5", body=b"hello")),
    "chunk-size-trailing-space": Sent(post("/chunked", CHUNKED, body=b"5 \r\nhello\r\n0\r\n\r\n")),
    "bad-chunk-size": Sent(post("/chunked", CHUNKED, body=b"5x\r\nhello\r\n0\r\n\r\n")),
    "chunk-longer-than-size": Sent(post("/chunked", CHUNKED, body=b"3\r\nhello\r\n0\r\n\r\n")),
    "bare-lf-in-chunk-lines": Sent(post("/chunked", CHUNKED, body=b"5\nhello\n0\n\n")),
    "huge-trailers": Sent(
        post("/chunked", CHUNKED, body=b"5\r\nhello\r\n0\r\n" + message(*filler("X-Trailer", 70 * 1024)))
    ),
    # field syntax
    "bare-lf-in-head": Sent(f"GET /lf HTTP/1.1\r\n{H}\nX-A: b\r\n\r\n".encode()),
    "bare-lf-after-request-line": Sent(f"GET /lf HTTP/1.1\n{H}\r\n\r\n".encode()),
    "bare-cr-in-header-value": Sent(message("GET /cr HTTP/1.1", H, "X-A: a\rb")),
    "obs-fold": Sent(message("GET /fold HTTP/1.1", H, "X-Folded: a", " b")),
    "nul-in-header-value": Sent(message("GET /nul HTTP/1.1", H, "X-A: a\x00b")),
    "space-before-colon": Sent(message("GET /colon HTTP/1.1", H, "X-A : b")),
    "header-without-colon": Sent(message("GET /colon HTTP/1.1", H, "X-No-Colon")),
    "head-over-64k": Sent(message("GET /huge HTTP/1.1", H, *filler("X-Filler", 70 * 1024))),
    # pipelining
    "pipelined-two-valid": Sent(
        message("GET /p1 HTTP/1.1", H) + message("GET /p2 HTTP/1.1", H), ("GET", "GET")
    ),
    "pipelined-post-then-get": Sent(
        post("/p1", "Content-Length: 5", body=b"hello") + message("GET /p2 HTTP/1.1", H), ("POST", "GET")
    ),
    "pipelined-chunked-then-get": Sent(
        post("/p1", CHUNKED, body=HELLO_CHUNKED) + message("GET /p2 HTTP/1.1", H), ("POST", "GET")
    ),
    "pipelined-after-close": Sent(
        message("GET /p1 HTTP/1.1", H, "Connection: close") + message("GET /p2 HTTP/1.1", H), ("GET", "GET")
    ),
    "pipelined-valid-then-malformed": Sent(
        message("GET /p1 HTTP/1.1", H) + post("/p2", "Content-Length: 1", "Content-Length: 2", body=b"ab"),
        ("GET", "POST"),
    ),
}

# -- the response corpus --------------------------------------------------------------------------


def response(status: str, *lines: str, body: bytes = b"") -> bytes:
    return message(status, APP_MARK, *lines, body=body)


OK = "HTTP/1.1 200 OK"
GZIPPED = gzip.compress(b"hello", mtime=0)
GZIPPED_CHUNKED = b"%x\r\n%s\r\n0\r\n\r\n" % (len(GZIPPED), GZIPPED)

RESPONSES: dict[str, Returned] = {
    "plain": Returned(response(OK, "Content-Length: 2", body=b"ok")),
    "headers-pass": Returned(
        response(
            OK,
            "Set-Cookie: a=1",
            "Cache-Control: no-store",
            "Set-Cookie: b=2",
            "X-Dup: one",
            "X-Dup: two",
            "Server: app/1.0",
            "X-Empty:",
            "Content-Length: 2",
            body=b"ok",
        )
    ),
    "head-with-body": Returned(response(OK, "Content-Length: 5", body=b"hello"), "HEAD"),
    "head-with-chunked-body": Returned(response(OK, CHUNKED, body=b"2\r\nok\r\n0\r\n\r\n"), "HEAD"),
    "head-chunked-without-body": Returned(response(OK, CHUNKED), "HEAD"),
    "more-than-content-length": Returned(response(OK, "Content-Length: 2", body=b"okEXTRA")),
    "bytes-after-last-chunk": Returned(response(OK, CHUNKED, body=b"2\r\nok\r\n0\r\n\r\nEXTRA")),
    "204-with-body-and-length": Returned(
        response("HTTP/1.1 204 No Content", "Content-Length: 5", body=b"hello")
    ),
    "304-with-body-and-length": Returned(
        response("HTTP/1.1 304 Not Modified", 'ETag: "x"', "Content-Length: 5", body=b"hello")
    ),
    "103-then-200": Returned(
        message("HTTP/1.1 103 Early Hints", "Link: </s.css>; rel=preload")
        + response(OK, "Content-Length: 2", body=b"ok")
    ),
    "100-then-200-unasked": Returned(
        message("HTTP/1.1 100 Continue") + response(OK, "Content-Length: 2", body=b"ok")
    ),
    "103-to-http10-client": Returned(
        message("HTTP/1.1 103 Early Hints", "Link: </s.css>; rel=preload")
        + response(OK, "Content-Length: 2", body=b"ok"),
        http10=True,
    ),
    "connection-close": Returned(response(OK, "Connection: close", "Content-Length: 2", body=b"ok")),
    "connection-close-on-head": Returned(response(OK, "Connection: close", "Content-Length: 5"), "HEAD"),
    "http10-response": Returned(message("HTTP/1.0 200 OK", APP_MARK, "Content-Length: 2", body=b"ok")),
    "http10-response-keep-alive": Returned(
        message("HTTP/1.0 200 OK", APP_MARK, "Connection: keep-alive", "Content-Length: 2", body=b"ok")
    ),
    "close-delimited": Returned(closing(response(OK, body=b"until the close"))),
    "te-gzip-close-delimited": Returned(closing(response(OK, "Transfer-Encoding: gzip", body=GZIPPED))),
    "te-gzip-then-chunked-two-lines": Returned(
        response(OK, "Transfer-Encoding: gzip", "Transfer-Encoding: chunked", body=GZIPPED_CHUNKED)
    ),
    "te-gzip-chunked-one-line": Returned(
        response(OK, "Transfer-Encoding: gzip, chunked", body=GZIPPED_CHUNKED)
    ),
    "content-length-and-chunked": Returned(
        response(OK, "Content-Length: 100", CHUNKED, body=b"2\r\nok\r\n0\r\n\r\n")
    ),
    "two-content-lengths": Returned(response(OK, "Content-Length: 2", "Content-Length: 7", body=b"okEXTRA")),
    "two-equal-content-lengths": Returned(response(OK, "Content-Length: 2", "Content-Length: 2", body=b"ok")),
    "large-head": Returned(response(OK, *filler("X-Filler", 48 * 1024), "Content-Length: 2", body=b"ok")),
    "head-over-64k": Returned(response(OK, *filler("X-Filler", 70 * 1024), "Content-Length: 2", body=b"ok")),
    "150-header-lines": Returned(
        response(OK, *(f"X-Line-{n}: {n}" for n in range(150)), "Content-Length: 2", body=b"ok")
    ),
    "x-sidecar-marks": Returned(
        response(
            OK,
            "X-Sidecar-Refused: app",
            "X-Sidecar-Closing: app",
            "x-sidecar-other: app",
            "Content-Length: 2",
            body=b"ok",
        )
    ),
    "426-with-upgrade": Returned(
        response(
            "HTTP/1.1 426 Upgrade Required",
            "Upgrade: TLS/1.3, HTTP/1.1",
            "Connection: Upgrade",
            "Content-Length: 7",
            body=b"upgrade",
        )
    ),
    "connection-names-header": Returned(
        response(OK, "Connection: X-Private", "X-Private: 1", "Content-Length: 2", body=b"ok")
    ),
    "chunked-trailers": Returned(
        response(OK, CHUNKED, "Trailer: X-Checksum", body=b"2\r\nok\r\n0\r\nX-Checksum: abc\r\n\r\n")
    ),
    "obs-fold": Returned(response(OK, "X-Folded: a", " b", "Content-Length: 2", body=b"ok")),
    "bare-lf-head": Returned(b"HTTP/1.1 200 OK\n" + APP_MARK.encode() + b"\nContent-Length: 2\n\nok"),
    "nul-in-header-value": Returned(response(OK, "X-A: a\x00b", "Content-Length: 2", body=b"ok")),
    "space-before-colon": Returned(response(OK, "X-A : b", "Content-Length: 2", body=b"ok")),
    "header-without-colon": Returned(response(OK, "X-No-Colon", "Content-Length: 2", body=b"ok")),
    "invalid-content-length": Returned(closing(response(OK, "Content-Length: 2x", body=b"ok"))),
    "unknown-status-code": Returned(response("HTTP/1.1 599 Odd", "Content-Length: 2", body=b"ok")),
    "no-reason-phrase": Returned(response("HTTP/1.1 200 ", "Content-Length: 2", body=b"ok")),
    "chunk-extensions": Returned(response(OK, CHUNKED, body=b"2;name=value\r\nok\r\n0;last\r\n\r\n")),
    "invalid-status-code": Returned(closing(response("HTTP/1.1 20 OK", "Content-Length: 2", body=b"ok"))),
    "no-status-line": Returned(closing(b"hello\r\n")),
    "truncated-body": Returned(closing(response(OK, "Content-Length: 100", body=b"only ten b"))),
    "bad-chunk-size": Returned(closing(response(OK, CHUNKED, body=b"5x\r\nhello\r\n0\r\n\r\n"))),
    "101-unasked": Returned(
        closing(response("HTTP/1.1 101 Switching Protocols", "Upgrade: websocket", "Connection: Upgrade"))
    ),
}


# -- intended differences -------------------------------------------------------------------------

# The reasons. "spec N": section N of the lead's decisions for issue 17 (the HTTP/1.1 hardening).
# "nginx": what nginx 1.22 (Debian bookworm) gets wrong. "README": the documented contract of the
# data path, where the RFC allows either behaviour.
NGINX_HOST = "nginx, configured with Host $http_host, sends the Host header the client sent"
NGINX_TOKENS = (
    "nginx does not remove the fields a Connection header names (RFC 9110 section 7.6.1: a proxy MUST); "
    "spec 1: the sidecar does"
)
NGINX_1XX = (
    "nginx 1.22 takes an app's 1xx for the final response (it relays 1xx from 1.29 on), passes the rest "
    "of the app's bytes unparsed and then holds the client connection; spec 1: the sidecar relays the "
    "1xx and the final response, and keeps both connections"
)
NGINX_UNFRAMED = (
    "nginx 1.22 relays an app response without a valid status line as HTTP/0.9: the app's bytes "
    "verbatim with no head of its own (response splitting), then holds the client connection; the "
    "sidecar answers 502"
)
NGINX_CODINGS = (
    "nginx 1.22 drops a response transfer coding it does not know and relays the still encoded bytes "
    "as if they were not (the client cannot know to decode them); spec 1 keeps them in Transfer-Encoding"
)
README_STRICT = (
    "README, limits: a bare LF in a request head gets 400 (RFC 9112 section 2.2 lets a recipient "
    "accept one, it does not require it); nginx accepts it"
)
README_HOP = "README: Proxy-* and Trailer are per hop; nginx removes only TE, Keep-Alive, Expect and Upgrade"
README_UPGRADE = (
    "README: upgrades (WebSocket) are forwarded; nginx needs an Upgrade map this config leaves out"
)
SPEC_SEPARATES = (
    "spec 1: bytes the framing does not cover are never relayed and that app connection is never "
    "reused; nginx reuses it (the extra bytes came with the response and were dropped)"
)


REQUEST_DIFFERENCES: dict[str, dict[str, Intended]] = {
    "expect-100-continue": {
        "app: #1 header expect": Intended(
            None, "100-continue", "README: Expect passes through, 100 Continue is the app's to give"
        ),
        "client #1: 1xx": Intended(
            "100", None, "README: the app gives 100 Continue (this one does not); nginx answers it itself"
        ),
    },
    "http10-no-host": {
        "app: #1 header host": Intended(
            None, APP_ADDRESS, f"spec 3: the --app URL's authority; {NGINX_HOST}"
        ),
    },
    "http10-chunked": sidecar_forwards(
        "POST /old HTTP/1.1 + b'hello'",
        "spec 1: an HTTP/1.0 request with Transfer-Encoding: chunked is forwarded, then closed; nginx: 400",
    ),
    "absolute-form": {
        "app: #1 header host": Intended(
            "other.test",
            "example.test:81",
            f"spec 3: the target's authority replaces Host (RFC 9112 section 3.2.2); {NGINX_HOST}",
        ),
    },
    "options-star": sidecar_forwards(
        "OPTIONS * HTTP/1.1",
        "spec 3: OPTIONS * is forwarded; nginx has no asterisk-form",
        sidecar_next=FROM_APP,
    ),
    "connect": {"client #1: status": Intended("400", "405", "spec 3: CONNECT gets 405")},
    "extension-method": sidecar_refuses(
        "FROB /frob HTTP/1.1",
        "400",
        "README, limits: an unknown method gets 400: llhttp knows a fixed list of methods (most of the IANA "
        "registry's, WebDAV's included, and a few others such as PURGE) and refuses the rest; nginx "
        "forwards any token (RFC 9110 section 9.1 lets methods be extended)",
    ),
    "no-version": {
        "app": Intended("GET /v HTTP/1.1", "nothing", "spec 3: a request line without a version gets 400"),
        "client #1": Intended(
            "no HTTP/1.x response head, the connection closed after b'GET /v'",
            "400 its own error page",
            "spec 3: no version gets 400; nginx serves it as HTTP/0.9 (the app's body, no head)",
        ),
        "next request": Intended(BROKEN, "closed", "as above: nginx's HTTP/0.9 answer has no head to read"),
    },
    "upgrade-h2c-with-body": {
        "app: #1 header http2-settings": Intended("AAMAAABkAAQCAAAAAAIAAAAA", None, NGINX_TOKENS),
    },
    "upgrade-h2c-without-body": {
        "app: #1 header http2-settings": Intended("AAMAAABkAAQCAAAAAAIAAAAA", None, NGINX_TOKENS),
    },
    "upgrade-websocket-refused": {
        "app: #1 header connection": Intended(None, "Upgrade", README_UPGRADE),
        "app: #1 header upgrade": Intended(None, "websocket", README_UPGRADE),
        "next request": Intended(
            FROM_APP,
            "closed",
            "the app refused the upgrade (200, no 101), and what the client sends next may already be the "
            "other protocol: the sidecar closes the connection (sidecar.http.exchange.relay); nginx, "
            "which forwarded no upgrade, goes on",
        ),
    },
    "te-gzip-then-chunked-two-lines": {
        "client #1: status": Intended(
            "400",
            "501",
            "spec 1: transfer codings other than exactly chunked get 501; nginx: 400 for two TE lines",
        ),
    },
    "connection-names-header": {"app: #1 header x-secret": Intended("s", None, NGINX_TOKENS)},
    "underscore-in-header-name": {
        "app: #1 header x_forwarded_for": Intended(
            None,
            "192.0.2.9",
            "forwarded as Envoy does by default (headers_with_underscores_action ALLOW); nginx drops "
            "names with '_' (underscores_in_headers off) because CGI maps '_' and '-' alike: whether to "
            "accept one is the app server's call",
        ),
    },
    "hop-by-hop-headers": {
        "app: #1 header proxy-authorization": Intended("Basic dTpw", None, README_HOP),
        "app: #1 header proxy-connection": Intended("keep-alive", None, README_HOP),
        "app: #1 header trailer": Intended("X-Checksum", None, README_HOP),
    },
    "chunked-trailers": {
        "app: #1 header trailer": Intended(
            "X-Checksum", None, f"{README_HOP}; nginx passes Trailer but not the trailer fields it announces"
        ),
    },
    "host-with-userinfo": sidecar_refuses(
        "GET /host HTTP/1.1", "400", "spec 3: Host a@b is invalid (RFC 3986 reg-name); nginx forwards it"
    ),
    "bare-lf-in-chunk-lines": sidecar_refuses(
        "POST /chunked HTTP/1.1 + b'hello'",
        "400",
        "nginx accepts a bare LF in chunk lines (RFC 9112 section 7.1: CRLF), a request smuggling vector",
    ),
    "huge-trailers": sidecar_refuses(
        "POST /chunked HTTP/1.1 + b'hello'", "431", "spec 4: head and trailers over 64 KiB get 431"
    ),
    "bare-lf-in-head": sidecar_refuses("GET /lf HTTP/1.1", "400", README_STRICT),
    "bare-lf-after-request-line": sidecar_refuses("GET /lf HTTP/1.1", "400", README_STRICT),
    "header-without-colon": sidecar_refuses(
        "GET /colon HTTP/1.1", "400", "nginx forwards a field line without a colon (RFC 9112 section 5)"
    ),
    "te-chunked-two-lines": {
        "client #1: status": Intended(
            "400", "501", "spec 1: two TE lines of chunked are the codings chunked, chunked: 501; nginx: 400"
        ),
    },
    "chunk-size-trailing-space": sidecar_refuses(
        "POST /chunked HTTP/1.1 + b'hello'",
        "400",
        "nginx accepts whitespace after a chunk size (RFC 9112 section 7.1 has none without a ';'), a "
        "known request smuggling discrepancy",
    ),
    "request-line-trailing-space": sidecar_refuses(
        "GET /space HTTP/1.1",
        "400",
        "nginx accepts a space after the version (RFC 9112 section 3: an invalid request line, 400)",
    ),
    "head-over-64k": sidecar_refuses(
        "GET /huge HTTP/1.1", "431", "README, limits: 64 KiB for the whole head; nginx bounds each line"
    ),
}

RESPONSE_DIFFERENCES: dict[str, dict[str, Intended]] = {
    "head-with-body": {"app: next request on the same app connection": Intended("yes", "no", SPEC_SEPARATES)},
    "head-with-chunked-body": {
        "app: next request on the same app connection": Intended("yes", "no", SPEC_SEPARATES)
    },
    "204-with-body-and-length": {
        "client: header content-length": Intended(
            "5",
            None,
            "spec 3: a 204 loses its Content-Length (RFC 9110 section 8.6: MUST NOT); nginx keeps it",
        ),
    },
    "103-then-200": nginx_holds("103-then-200", None, NGINX_1XX),
    "100-then-200-unasked": nginx_holds("100-then-200-unasked", None, NGINX_1XX),
    "103-to-http10-client": {
        **nginx_holds("103-to-http10-client", None, NGINX_1XX),
        "client: 1xx": Intended(
            "103", None, "spec 3: no 1xx to an HTTP/1.0 client (RFC 9110 section 15.2); nginx sends one"
        ),
    },
    "http10-response-keep-alive": {
        "app: next request on the same app connection": Intended(
            "no",
            "yes",
            "spec 1 pools an HTTP/1.0 response with keep-alive (RFC 9112 section 9.3); nginx never",
        ),
    },
    "te-gzip-close-delimited": {"client: header transfer-encoding": Intended(None, "gzip", NGINX_CODINGS)},
    "te-gzip-then-chunked-two-lines": {
        "client: header transfer-encoding": Intended(None, "gzip", NGINX_CODINGS)
    },
    "te-gzip-chunked-one-line": {"client: header transfer-encoding": Intended(None, "gzip", NGINX_CODINGS)},
    "content-length-and-chunked": sidecar_502(
        "RFC 9112 section 6.3: Content-Length with Transfer-Encoding ought to be handled as an error; nginx "
        "1.23 answers 502 too, bookworm's 1.22 lets Transfer-Encoding win"
    ),
    "two-content-lengths": sidecar_502(
        "nginx 1.22 takes the last of two different Content-Lengths (RFC 9112 section 6.3: a proxy MUST 502)"
    ),
    "two-equal-content-lengths": sidecar_502(
        "RFC 9110 section 8.6 lets a recipient reject repeated Content-Length lines; nginx 1.23 does too"
    ),
    "bare-lf-head": sidecar_502(
        "RFC 9112 section 2.2 lets a recipient accept a bare LF as a line end (MAY); llhttp does not, and "
        "an app whose framing a proxy must guess at is one it can be desynchronised by; nginx accepts it"
    ),
    "150-header-lines": sidecar_502("spec 4: over 100 field lines in a response head get 502"),
    "header-without-colon": sidecar_502(
        "nginx relays a field line without a colon (RFC 9112 section 5) as an empty field"
    ),
    "x-sidecar-marks": {
        f"client: header {name}": Intended("app", None, "spec 2: an app's X-Sidecar-* headers are removed")
        for name in ("x-sidecar-closing", "x-sidecar-other", "x-sidecar-refused")
    },
    "connection-names-header": {"client: header x-private": Intended("1", None, NGINX_TOKENS)},
    "chunked-trailers": {
        "client: header trailer": Intended(
            "X-Checksum", None, f"{README_HOP}; nginx passes Trailer but not the trailer fields it announces"
        ),
    },
    "invalid-content-length": {
        "client": Intended(
            "200 from the app",
            SIDECAR_502,
            "nginx 1.22 ignores an invalid Content-Length and reads the body to the close (RFC 9112 section "
            "6.3: a proxy MUST answer 502)",
        ),
    },
    "invalid-status-code": nginx_holds(
        "invalid-status-code",
        "not an HTTP/1.x response head: b'HTTP/1.1 20 OK\\r\\nX-App: raw\\r\\nContent-Length: 2\\r\\n\\r\\n'",
        NGINX_UNFRAMED,
        "another",
    ),
    "no-status-line": nginx_holds(
        "no-status-line", f"{hang()}, got b'hello\\r\\n'", NGINX_UNFRAMED, "another"
    ),
    "101-unasked": {
        "client": Intended(
            "101 from the app",
            SIDECAR_502,
            "nginx relays a 101 the client never asked for (RFC 9110 section 15.2.2: a server MUST NOT "
            "switch to a protocol not asked for), then goes on in HTTP/1.1; the sidecar answers 502",
        ),
    },
    "truncated-body": {
        "client": Intended(
            "200 from the app, then the body was cut short after 10 bytes",
            SIDECAR_502,
            "README: a response of at most 64 KiB with a Content-Length is read whole before its head goes "
            "out, a clean 502 if the app breaks off; nginx streams the head and cuts the body",
        ),
        "next request": Intended(BROKEN, FROM_APP, "README: the sidecar's 502 is a whole response"),
        "app": Intended(
            resp_path("truncated-body"),
            f"{resp_path('truncated-body')}, /normal (the next request on another app connection)",
            "README: the sidecar's 502 is a whole response",
        ),
    },
    "bad-chunk-size": {
        "client": Intended(
            "none: the connection closed",
            "200 from the app, then the body was cut short after 0 bytes",
            "README: a chunked body streams as it comes, so its head is out before a bad chunk is met "
            "and the connection is cut; nginx held its head back and closes without one: both fail it",
        ),
        "next request": Intended("closed", BROKEN, "as above"),
    },
}

INTENDED = {"request": REQUEST_DIFFERENCES, "response": RESPONSE_DIFFERENCES}


# -- the tests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    """One recording app, and nginx and a provider sidecar in front of it, for the module."""
    with bench_running(tmp_path_factory.mktemp("differential"), RESPONSES) as bench:
        yield bench


@pytest.mark.parametrize("case", list(REQUESTS))
async def test_request(bench: Bench, case: str) -> None:
    """A raw request reaches the app, and its answer the client, the same through both proxies
    (but for the intended differences), and the client connection ends or goes on alike."""
    nginx = await through(bench, "nginx", REQUESTS[case])
    sidecar = await through(bench, "sidecar", REQUESTS[case])
    compare(case, REQUEST_DIFFERENCES.get(case, {}), nginx, sidecar)


@pytest.mark.parametrize("case", list(RESPONSES))
async def test_response(bench: Bench, case: str) -> None:
    """A raw app response reaches the client the same through both proxies (but for the intended
    differences), and the next request on that connection gets its own proper answer."""
    nginx = await fetched(bench, "nginx", case, RESPONSES[case])
    sidecar = await fetched(bench, "sidecar", case, RESPONSES[case])
    compare(case, RESPONSE_DIFFERENCES.get(case, {}), nginx, sidecar)


def test_tables_name_only_cases() -> None:
    """Every intended difference names a case of its corpus (no stale entries)."""
    for kind, corpus in (("request", REQUESTS), ("response", RESPONSES)):
        assert set(INTENDED[kind]) <= set(corpus), kind
