"""A raw HTTP/1.1 client for black-box tests: bytes go out exactly as written, and what comes back
is read as it arrives, framing included, so that tests can see what a library would hide: 1xx
responses, chunk boundaries, trailers, a connection the peer closed, bytes after a response.

Every read is bounded (`READ_TIMEOUT_SECONDS` unless told): a test that waits for something the
sidecar never sends fails with a timeout, not a hang. Framing a client must reject fails with
`BadFraming`, which a caller that reports rather than fails (the differential test) catches.

Field lines are read the same way on both sides of a test (`fields`, `Fields`): here, and in the
raw app that records the requests it gets (tests.support.raw_app).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType

READ_TIMEOUT_SECONDS = 10.0
HEAD_LIMIT = 256 * 1024


class BadFraming(AssertionError):
    """A message framed as no recipient may accept (RFC 9112 sections 6.3 and 7.1)."""


def fields(lines: Iterable[str]) -> list[tuple[str, str]]:
    """(name, value) of each field line: the name as sent, so that an odd one (`X-A : b`) shows;
    the value without the whitespace around it (RFC 9112 section 5.1: SP and HTAB)."""
    return [(name, value.strip(" \t")) for name, _, value in (line.partition(":") for line in lines)]


class Fields:
    """Lookups on the field lines of a request or a response read raw."""

    headers: list[tuple[str, str]]

    def header(self, name: str) -> str | None:
        """The value of header `name` (the first one), None when absent."""
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]


@dataclass
class RawResponse(Fields):
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    raw_head: bytes = field(default=b"", repr=False)

    @property
    def interim(self) -> bool:
        """A 1xx response that another follows (101 is the last on its connection)."""
        return 100 <= self.status < 200 and self.status != 101

    @property
    def chunked(self) -> bool:
        return any("chunked" in value.lower() for value in self.all("Transfer-Encoding"))

    @property
    def closing(self) -> bool:
        return any("close" in value.lower() for value in self.all("Connection"))


def parse_head(raw: bytes) -> RawResponse:
    """The response head `raw` (up to and with its empty line); a ValueError when it is no HTTP/1.x
    head: a version other than HTTP/1.0 and HTTP/1.1, or no three-digit status."""
    status_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if version not in ("HTTP/1.1", "HTTP/1.0") or not (code.isascii() and code.isdigit()):
        raise ValueError(f"not an HTTP/1.x response: {raw[:200]!r}")
    return RawResponse(int(code), rest[4:], fields(lines), raw_head=raw)


async def until_closed(receive: Callable[[], Awaitable[bytes]], timeout: float) -> bytes:
    """Everything `receive` (one read off a connection) returns until the peer closes the
    connection; an AssertionError when it is still open after `timeout`. A reset counts as
    closed, what came before it kept."""
    parts = []
    try:
        async with asyncio.timeout(timeout):
            while data := await receive():
                parts.append(data)
    except TimeoutError:
        raise AssertionError(
            f"the connection is still open after {timeout} s (received {b''.join(parts)[:200]!r})"
        ) from None
    except ConnectionResetError:
        pass
    return b"".join(parts)


class RawConnection:
    """One TCP connection to 127.0.0.1:`port`; an async context manager that closes it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=HEAD_LIMIT)
        return cls(reader, writer)

    async def __aenter__(self) -> RawConnection:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):  # the peer reset it: closed either way
            await self.writer.wait_closed()

    async def send(self, data: bytes) -> None:
        """Write `data`; a peer that already closed (and said so with a reset) is not an error
        here: the test reads what it answered before."""
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            self.writer.write(data)
            await self.writer.drain()

    async def head(self, timeout: float = READ_TIMEOUT_SECONDS) -> RawResponse:
        """The next response head (a 1xx one included), without its body."""
        try:
            async with asyncio.timeout(timeout):
                raw = await self.reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            raise AssertionError(f"no response head within {timeout} s") from None
        try:
            return parse_head(raw)
        except ValueError as exc:
            raise AssertionError(str(exc)) from None

    async def response(
        self, method: str = "GET", timeout: float = READ_TIMEOUT_SECONDS, skip_1xx: bool = True
    ) -> RawResponse:
        """The next complete response (head and body, framed as RFC 9112 section 6.3 says)."""
        async with asyncio.timeout(timeout):
            response = await self.head()
            while skip_1xx and response.interim:
                response = await self.head()
            await self.read_body(method, response)
        return response

    async def read_body(self, method: str, response: RawResponse) -> None:
        """Reads the body of `response` (to `method`), whose head was the last thing read, into
        response.body, and a chunked body's trailer fields into response.trailers. What came stays
        in response.body when the read fails or is cancelled, for a caller that reports it."""
        if method == "HEAD" or response.status in (204, 304) or response.status < 200:
            return
        lengths = response.all("Content-Length")
        if len(lengths) > 1 or (lengths and response.chunked):
            # RFC 9112 section 6.3: framing a recipient must reject (or guess at): never send it.
            raise BadFraming(f"ambiguous framing sent to the client: {response.headers}")
        parts = []
        try:
            if response.chunked:
                while chunk := await self.chunk(trailers=response.trailers):
                    parts.append(chunk)
            elif lengths:
                parts.append(await self.reader.readexactly(int(lengths[0])))
            else:
                while data := await self.reader.read(65536):  # delimited by the close
                    parts.append(data)
        except asyncio.IncompleteReadError as exc:
            parts.append(exc.partial)
            raise
        finally:
            response.body = b"".join(parts)

    async def chunk(
        self, timeout: float = READ_TIMEOUT_SECONDS, trailers: list[tuple[str, str]] | None = None
    ) -> bytes:
        """The data of the next chunk of a chunked body; b"" for the last, after its trailer
        fields (added to `trailers` when given)."""
        async with asyncio.timeout(timeout):
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                lines = []
                while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
                    lines.append(line[:-2].decode("latin-1"))
                if trailers is not None:
                    trailers += fields(lines)
                return b""
            data = await self.reader.readexactly(size)
            if await self.reader.readexactly(2) != b"\r\n":
                raise BadFraming("a chunk not followed by CRLF")
            return data

    async def read_to_eof(self, timeout: float = READ_TIMEOUT_SECONDS) -> bytes:
        """Everything the peer still sends until it closes the connection; an AssertionError
        when it is still open after `timeout`. A reset counts as closed."""
        return await until_closed(lambda: self.reader.read(65536), timeout)


def request(
    method: str, target: str, headers: list[tuple[str, str]] | None = None, body: bytes = b""
) -> bytes:
    """A well-formed request as bytes: Host first, then `headers`, Content-Length for a body."""
    lines = [f"{method} {target} HTTP/1.1", "Host: sidecar.test"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    if body and not any(name.lower() in ("content-length", "transfer-encoding") for name, _ in headers or []):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
