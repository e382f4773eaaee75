"""Message heads: what the HTTP/1.1 core reads from llhttp and writes back to the wire.

Headers stay as the raw `(name, value)` byte pairs the parser gave, in their order, so that what
the app sent reaches the client unchanged apart from hop-by-hop headers (RFC 9110 section 7.6.1):
those describe one connection, not the message, and every hop writes its own. The framing
(`Content-Length` or chunked) and a request's `Host` are always the core's own: read and checked
when the head arrived (sidecar.http.fields), written back by the core. A head is turned back
into bytes in one `b"".join`.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass
from http import HTTPStatus

from sidecar.http.fields import NONE
from sidecar.http.target import join

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
# What the core writes itself: framing always, and a request's Host (never removed by a
# Connection line: it may only name hop-by-hop fields, and Host is the request's own).
CORE_WRITTEN = HOP_BY_HOP | {b"content-length"}
REQUEST_CORE_WRITTEN = CORE_WRITTEN | {b"host"}
# Methods whose request may be sent again when a connection broke before an answer came (RFC 9110
# 9.2.2): a pooled keep-alive connection the server had just closed, say. Browsers and Go's
# net/http apply the same rule.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# Responses without a body whatever their headers say (RFC 9112 section 6.3); so is every 1xx.
BODYLESS_STATUS = frozenset({204, 304})

REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


def get(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header `name` (lower case), or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def upgrade_headers(headers: Headers) -> Headers:
    """The headers that ask for (or agree to) a protocol switch, which an upgrade must carry."""
    return [(b"Connection", b"Upgrade"), *((b"Upgrade", v) for k, v in headers if k.lower() == b"upgrade")]


def serialize(start_line: bytes, headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    lines = [start_line]
    lines.extend(name + b": " + value for name, value in headers)
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


@dataclass(slots=True)
class RequestHead:
    """A request as the client sent it, checked: method, target in origin-form, version, headers,
    and what the core decided from them."""

    method: str
    target: bytes  # origin-form (or `*`), as forwarded without a prefix
    version: str  # "1.1" or "1.0"
    headers: Headers
    host: bytes | None  # the Host to forward: the client's, or an absolute-form target's authority
    keep_alive: bool
    upgrade: bool  # Connection: Upgrade with an Upgrade header, and no body
    chunked: bool
    content_length: int | None
    dropped: Set[bytes]  # not forwarded beyond the core's own: named in Connection (Expect in 1.0)
    continued: bool = False  # the sidecar answered `Expect: 100-continue` itself

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def end_to_end(self, drop: Set[bytes] = NONE) -> Headers:
        """The headers to forward (before the core's own), without `drop` (lower case) either."""
        return without(self.headers, REQUEST_CORE_WRITTEN, self.dropped, drop)

    def to_bytes(self, host: bytes, headers: Headers, prefix: bytes = b"") -> bytes:
        """The request line (its target joined to `prefix`), `host`, `headers` (end to end ones)
        and this request's own framing."""
        framing: Headers = []
        if self.chunked:
            framing.append((b"Transfer-Encoding", b"chunked"))
        elif self.content_length is not None:
            framing.append((b"Content-Length", str(self.content_length).encode()))
        if self.upgrade:
            framing.extend(upgrade_headers(self.headers))
        if self.continued:
            headers = [(name, value) for name, value in headers if name.lower() != b"expect"]
        target = join(prefix, self.target) if prefix else self.target
        line = f"{self.method} ".encode() + target + b" HTTP/1.1"
        return serialize(line, [(b"Host", host), *headers, *framing])


@dataclass(slots=True)
class ResponseHead:
    """A response's status line and headers as the app (or a provider sidecar) sent them."""

    status: int
    reason: bytes
    headers: Headers
    chunked: bool
    content_length: int | None
    dropped: Set[bytes]  # not relayed beyond the core's own: named in Connection
    marks: Set[bytes] = NONE  # X-Sidecar-* names it carries, lower case
    codings: bytes | None = None  # transfer codings other than chunked, relayed as they are

    def get(self, name: bytes) -> bytes | None:
        return get(self.headers, name)

    def end_to_end(self, drop: Set[bytes] = NONE) -> Headers:
        return without(self.headers, CORE_WRITTEN, self.dropped, drop)


def without(headers: Headers, core: Set[bytes], named: Set[bytes], drop: Set[bytes]) -> Headers:
    """`headers` but those whose lower-case name is in any of the sets: the one pass over a head
    on its way out, three lookups per line (cheaper than a union per message)."""
    return [
        (name, value)
        for name, value in headers
        if (key := name.lower()) not in core and key not in named and key not in drop
    ]


def framed(data: bytes, chunked: bool) -> list[bytes]:
    """`data` as one chunk of a chunked body, or as it is."""
    return [b"%x\r\n" % len(data), data, b"\r\n"] if chunked else [data]


def status_line(status: int, reason: bytes | None = None) -> bytes:
    return b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b"") if reason is None else reason)
