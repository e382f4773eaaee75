"""One HTTP/2 stream as either end sees it (sidecar.http.h2c.connection feeds it): what the peer
sent on it, as it arrives, and whether it is over.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from h2.errors import ErrorCodes

if TYPE_CHECKING:
    from sidecar.http.h2c.connection import H2Endpoint

STREAM_WINDOW = 256 * 1024  # what this side advertises (SETTINGS_INITIAL_WINDOW_SIZE)

Headers = list[tuple[bytes, bytes]]


class StreamGone(Exception):
    """The stream was reset (by either side) or its connection was lost."""

    def __init__(self, code: int) -> None:
        super().__init__(f"stream reset ({_code_name(code)})")
        self.code = code


def error_code(code: int) -> ErrorCodes | int:
    try:
        return ErrorCodes(code)
    except ValueError:
        return code


def _code_name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"error {code}"


class Stream:
    """One stream as either end sees it: the headers, body and trailers the peer sent on it, as
    they arrive. `read()` gives the body piece by piece; `consumed()` opens the window again
    once a piece was written onward."""

    def __init__(self, endpoint: H2Endpoint, stream_id: int) -> None:
        self.endpoint = endpoint
        self.id = stream_id
        self.headers: Headers = []  # the peer's (request or response) headers, pseudo ones too
        self.trailers: Headers = []
        self.ended = False  # the peer's half is closed: no more body
        self.reset_code: int | None = None  # reset by either side, or its connection lost
        self.sent_end = False  # this side's half is closed
        self.forwarded = False  # a client's stream that went on to the origin (a relay's)
        # Flow control (sidecar.http.h2c.connection): what this side may still send on it, what
        # the peer may, and what was written onward but not yet given back.
        self.send_window = endpoint.peer_initial_window
        self.recv_window = STREAM_WINDOW
        self.recv_unacked = 0
        self.expected_length: int | None = None  # the peer's content-length, which DATA must match
        self.received_length = 0
        self.head_request = False  # this side sent a HEAD: the response has no body
        # A stream this side opened (a client's) awaits the peer's headers (H2ClientConnection.open
        # makes the future); the reader of the body awaits the next piece. Made only when needed:
        # every stream costs them otherwise.
        self.head: asyncio.Future[None] | None = None
        self._chunks: deque[bytes] = deque()
        self._readable: asyncio.Future[None] | None = None

    @property
    def closed(self) -> bool:
        return self.reset_code is not None or (self.ended and self.sent_end)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def read(self) -> bytes | None:
        """The next piece of the peer's body, None once it ended; raises StreamGone if reset."""
        while not self._chunks:
            if self.reset_code is not None:
                raise StreamGone(self.reset_code)
            if self.ended:
                return None
            self._readable = asyncio.get_running_loop().create_future()
            await self._readable
        return self._chunks.popleft()

    def buffered(self) -> bytes | None:
        """The whole body if it has all arrived (none of it read yet), else None."""
        if not self.ended or self.reset_code is not None:
            return None
        return b"".join(self._chunks)

    def discard(self) -> None:
        """What arrived and will not be read (or was used whole, from `buffered()`) is dropped,
        and its window given back: else the connection's window would shrink by it for good."""
        if self._chunks:
            size = sum(len(piece) for piece in self._chunks)
            self._chunks.clear()
            self.consumed(size)

    def consumed(self, size: int) -> None:
        """`size` bytes of what `read()` gave were written onward: the peer may send more."""
        self.endpoint.acknowledge(self, size)

    # --- fed by the endpoint's events

    def received_headers(self, headers: Headers) -> None:
        self.headers = headers
        if self.head is not None and not self.head.done():
            self.head.set_result(None)

    def received_data(self, data: bytes) -> None:
        self._chunks.append(data)
        self._wake()

    def received_end(self, trailers: Headers | None = None) -> None:
        if trailers is not None:
            self.trailers = trailers
        self.ended = True
        self._wake()

    def gone(self, code: int) -> None:
        if self.reset_code is None:
            self.reset_code = code
        self.discard()
        self._wake()
        if self.head is not None and not self.head.done():
            self.head.set_exception(StreamGone(code))
            self.head.exception()  # retrieved: nobody may be waiting for it

    def _wake(self) -> None:
        if self._readable is not None and not self._readable.done():
            self._readable.set_result(None)
