"""A head's field lines as llhttp hands them over, read once, bounded as they come.

The parser callbacks add each line here, and on the way the few that decide what the core does
with the message are noted: the transfer codings and Content-Length (framing), the options of
every `Connection` line (RFC 9110 section 7.6.1: each line counts, and what they name is
hop-by-hop), Host, `Keep-Alive` (how long an origin keeps an idle connection), and the sidecar's
own marks (`X-Sidecar-*`, which an app may not set). So nothing walks the head a second time to
find them, and the head is bounded while it arrives: its bytes (request heads and trailers
together: 64 KiB) and, for responses, its lines.

`BadMessage` is the one error of a message the core will not pass on, raised from a parser
callback and mapped to its status where the parser's error is caught: h11's shape.
"""

from __future__ import annotations

# Large enough for any real request head (browsers send a few KiB, big cookies 16 KiB), small
# enough that a flood of them cannot exhaust memory; nginx's large_client_header_buffers is 32 KiB.
# Trailers count toward it too: they are a head at the other end of the body.
MAX_HEAD_BYTES = 64 * 1024
# Response heads from an app or a provider instance: Envoy's default max_headers_count.
MAX_RESPONSE_LINES = 100
# Bytes llhttp may be fed without a callback that shows progress: one field line still
# incomplete (llhttp keeps it whole until it ends) on top of a full head.
MAX_UNPARSED_BYTES = 2 * MAX_HEAD_BYTES
MARK_PREFIX = b"x-sidecar-"


class BadMessage(Exception):
    """A message the core will not pass on: `status` is the answer to such a request (a response
    from an origin is answered 502 whatever it says); the message says what it is or has."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# What a head without such lines has: shared, never mutated (a line replaces them).
NONE: frozenset[bytes] = frozenset()


class FieldReader:
    """A connection's reader of field lines: its `on_header` is the parser's own callback (no
    call in between), and `begin()` starts each head. Trailers (lines after `trailing` is set)
    are counted toward the head's bound, then dropped."""

    __slots__ = (
        "codings",
        "connection",
        "hosts",
        "keep_alive",
        "length",
        "lines",
        "marks",
        "max_lines",
        "size",
        "trailing",
    )

    def __init__(self, max_lines: int = 1 << 30) -> None:
        self.max_lines = max_lines
        self.begin()

    def begin(self) -> None:
        """A new head: its lines, and what they say, start empty."""
        self.lines: list[tuple[bytes, bytes]] = []
        self.size = 0  # bytes of the head so far (a request's target included)
        self.trailing = False
        self.connection = NONE  # the options of every Connection line, lower case
        self.codings: tuple[bytes, ...] = ()  # the transfer codings of every Transfer-Encoding line
        self.hosts: tuple[bytes, ...] = ()
        self.length: bytes | None = None  # Content-Length (llhttp rejects two that differ)
        self.keep_alive: bytes | None = None  # the last Keep-Alive line (`timeout=5, max=100`)
        self.marks = NONE  # X-Sidecar-* names, lower case

    def on_header(self, name: bytes, value: bytes) -> None:
        size = self.size + len(name) + len(value) + 4
        if size > MAX_HEAD_BYTES:
            raise BadMessage(431, "a head larger than 64 KiB (trailers included)")
        self.size = size
        if self.trailing:
            return
        lines = self.lines
        lines.append((name, value))
        if len(lines) > self.max_lines:
            raise BadMessage(431, f"a head of more than {self.max_lines} field lines")
        key = name.lower()
        if key == b"connection":
            self.connection = self.connection | {option.strip().lower() for option in value.split(b",")}
        elif key == b"transfer-encoding":
            self.codings += tuple(coding.strip().lower() for coding in value.split(b","))
        elif key == b"content-length":
            self.length = value
        elif key == b"host":
            self.hosts += (value,)
        elif key == b"keep-alive":
            self.keep_alive = value
        elif key.startswith(MARK_PREFIX):
            self.marks = self.marks | {key}

    def count(self, size: int) -> None:
        """Bytes of the head that are no field line: a request's target, a response's reason."""
        self.size += size
        if self.size > MAX_HEAD_BYTES:
            raise BadMessage(431, "a head larger than 64 KiB")

    @property
    def chunked(self) -> bool:
        return self.codings[-1:] == (b"chunked",)
