"""Message heads: what the HTTP/1.1 core reads from llhttp and writes back to the wire.

Headers stay as the raw `(name, value)` byte pairs the parser gave, in their order, so that what
the app sent reaches the client unchanged apart from hop-by-hop headers (RFC 9110 section 7.6.1):
those describe one connection, not the message, and every hop writes its own. A head is turned
back into bytes in one `b"".join`, the framing headers (`Content-Length` or chunked) added by the
core itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from http import HTTPStatus

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
HOP_BY_HOP_AND_LENGTH = HOP_BY_HOP | {b"content-length"}
# Methods whose request may be sent again when a connection broke before an answer came (RFC 9110
# 9.2.2): a pooled keep-alive connection the server had just closed, say. Browsers and Go's
# net/http apply the same rule.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# Responses without a body whatever their headers say (RFC 9112 section 6.3).
BODYLESS_STATUS = frozenset({204, 304})

REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


def get(headers: Headers, name: bytes) -> bytes | None:
    """The first value of header `name` (lower case), or None."""
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def end_to_end(headers: Headers, drop: frozenset[bytes] = frozenset()) -> Headers:
    """`headers` without the hop-by-hop ones, those that `Connection` names, `drop` (lower case),
    and Content-Length: each hop writes the framing of what it sends."""
    dropped = HOP_BY_HOP_AND_LENGTH | drop
    connection = get(headers, b"connection")
    if connection:
        dropped |= {token.strip().lower() for token in connection.split(b",")}
    return [(name, value) for name, value in headers if name.lower() not in dropped]


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
    """A request as the client sent it: method, raw target, version and headers."""

    method: str
    target: bytes
    version: str  # "1.1" or "1.0"
    headers: Headers
    keep_alive: bool
    upgrade: bool  # Connection: Upgrade with an Upgrade header
    chunked: bool
    content_length: int | None
    continued: bool = False  # the sidecar answered `Expect: 100-continue` itself

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)

    def to_bytes(self, headers: Headers, prefix: bytes = b"") -> bytes:
        """The request line (its target after `prefix`) with `headers` (end to end ones) and this
        request's own framing."""
        framing: Headers = []
        if self.chunked:
            framing.append((b"Transfer-Encoding", b"chunked"))
        elif self.content_length is not None:
            framing.append((b"Content-Length", str(self.content_length).encode()))
        if self.upgrade:
            framing.extend(upgrade_headers(self.headers))
        if self.continued:
            headers = [(name, value) for name, value in headers if name.lower() != b"expect"]
        line = f"{self.method} ".encode() + prefix + self.target + b" HTTP/1.1"
        return serialize(line, [*headers, *framing])


@dataclass(slots=True)
class ResponseHead:
    """A response's status line and headers as the app (or a provider sidecar) sent them."""

    status: int
    reason: bytes
    headers: Headers
    chunked: bool
    content_length: int | None

    def get(self, name: bytes) -> bytes | None:
        return get(self.headers, name)


def framed(data: bytes, chunked: bool) -> list[bytes]:
    """`data` as one chunk of a chunked body, or as it is."""
    return [b"%x\r\n" % len(data), data, b"\r\n"] if chunked else [data]


def status_line(status: int, reason: bytes | None = None) -> bytes:
    return b"HTTP/1.1 %d %s" % (status, REASONS.get(status, b"") if reason is None else reason)
