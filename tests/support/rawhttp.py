"""A raw HTTP/1.1 client for black-box tests: bytes go out exactly as written, and what comes back
is read as it arrives, framing included, so that tests can see what a library would hide: 1xx
responses, chunk boundaries, a connection the peer closed, bytes after a response.

Every read is bounded (`READ_TIMEOUT_SECONDS` unless told): a test that waits for something the
sidecar never sends fails with a timeout, not a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from types import TracebackType

READ_TIMEOUT_SECONDS = 10.0
HEAD_LIMIT = 256 * 1024


@dataclass
class RawResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    raw_head: bytes = field(default=b"", repr=False)

    def header(self, name: str) -> str | None:
        """The value of header `name` (the first one), None when absent."""
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    @property
    def chunked(self) -> bool:
        return any("chunked" in value.lower() for value in self.all("Transfer-Encoding"))

    @property
    def closing(self) -> bool:
        return any("close" in value.lower() for value in self.all("Connection"))


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
        status_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
        version, status, *reason = status_line.split(" ", 2)
        if not version.startswith("HTTP/1."):
            raise AssertionError(f"not an HTTP/1.x response: {raw[:200]!r}")
        headers = []
        for line in lines:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        return RawResponse(int(status), reason[0] if reason else "", headers, raw_head=raw)

    async def response(
        self, method: str = "GET", timeout: float = READ_TIMEOUT_SECONDS, skip_1xx: bool = True
    ) -> RawResponse:
        """The next complete response (head and body, framed as RFC 9112 section 6.3 says)."""
        async with asyncio.timeout(timeout):
            response = await self.head()
            while skip_1xx and 100 <= response.status < 200 and response.status != 101:
                response = await self.head()
            response.body = await self._body(method, response)
        return response

    async def _body(self, method: str, response: RawResponse) -> bytes:
        if method == "HEAD" or response.status in (204, 304) or response.status < 200:
            return b""
        lengths = response.all("Content-Length")
        if len(lengths) > 1 or (lengths and response.chunked):
            # RFC 9112 section 6.3: framing a recipient must reject (or guess at): never send it.
            raise AssertionError(f"ambiguous response framing: {response.raw_head!r}")
        if response.chunked:
            parts = []
            while chunk := await self.chunk():
                parts.append(chunk)
            return b"".join(parts)
        length = response.header("Content-Length")
        if length is not None:
            return await self.reader.readexactly(int(length))
        return await self.reader.read()  # delimited by the close

    async def chunk(self, timeout: float = READ_TIMEOUT_SECONDS) -> bytes:
        """The data of the next chunk of a chunked body; b"" for the last (trailers skipped)."""
        async with asyncio.timeout(timeout):
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # a trailer field
                return b""
            data = await self.reader.readexactly(size)
            if await self.reader.readexactly(2) != b"\r\n":
                raise AssertionError("a chunk not followed by CRLF")
            return data

    async def read_to_eof(self, timeout: float = READ_TIMEOUT_SECONDS) -> bytes:
        """Everything the peer still sends until it closes the connection; an AssertionError
        when it is still open after `timeout`. A reset counts as closed."""
        parts = []
        try:
            async with asyncio.timeout(timeout):
                while data := await self.reader.read(65536):
                    parts.append(data)
        except TimeoutError:
            raise AssertionError(
                f"the connection is still open after {timeout} s (received {b''.join(parts)[:200]!r})"
            ) from None
        except ConnectionResetError:
            pass
        return b"".join(parts)


def request(
    method: str, target: str, headers: list[tuple[str, str]] | None = None, body: bytes = b""
) -> bytes:
    """A well-formed request as bytes: Host first, then `headers`, Content-Length for a body."""
    lines = [f"{method} {target} HTTP/1.1", "Host: sidecar.test"]
    lines += [f"{name}: {value}" for name, value in headers or []]
    if body and not any(name.lower() in ("content-length", "transfer-encoding") for name, _ in headers or []):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
