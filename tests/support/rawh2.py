"""A raw HTTP/2 client for protocol tests (h2c with prior knowledge): frames go out exactly as the
test builds them, malformed ones included, and every frame that comes back is read, recorded and
shown, so that a test sees what a library would hide or refuse to do.

Frames are built with hyperframe where it allows (`H2Client.send` takes its Frame objects), or
by hand with `frame_bytes` where it does not: any type, flags and stream id (the reserved bit
too), a length field that lies, a payload of any size. Header blocks are HPACK-encoded without
the dynamic table by default (`header_block`), so that a block built and never sent cannot put
the peer's decoder out of step; `hpack_literal` and `hpack_indexed` build representations one by
one, for blocks that use the dynamic table on purpose (an HPACK bomb: one big entry, then many
references to it).

Reads are bounded (`READ_TIMEOUT_SECONDS` unless told): a test waiting for a frame the peer never
sends fails with TimeoutError, and one whose peer closes the connection sees ConnectionClosed.
As a real client does, by default the client acknowledges the peer's SETTINGS and PINGs, and
gives back flow-control window for the DATA it reads; each can be turned off for tests of the
peer's side of those (a PING never acked, a window never opened).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from types import TracebackType

import hpack
from h2.errors import ErrorCodes
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import Frame

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
READ_TIMEOUT_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 5.0
# Sending waits this long for the peer to read before giving up: a flood into a peer that
# stopped reading fails with TimeoutError instead of hanging.
SEND_TIMEOUT_SECONDS = 10.0
# The default initial window of every stream, and of the connection (RFC 9113 section 6.9.2).
DEFAULT_WINDOW = 65_535
# What the client decodes of one header block at most: generous, since a test may want to see
# a header list the sidecar should have refused.
DECODE_LIMIT = 16 * 1024 * 1024
# Bytes read from the socket and not yet by the test: past this, the socket is read no more.
BUFFER_LIMIT = 32 * 1024 * 1024


class FrameType(IntEnum):
    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


class Flag:
    END_STREAM = 0x1
    ACK = 0x1
    END_HEADERS = 0x4
    PADDED = 0x8
    PRIORITY = 0x20


class Setting(IntEnum):
    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6


# Settings by `Setting` or number: {Setting.INITIAL_WINDOW_SIZE: 0}, or pairs (which may repeat).
Settings = Mapping[Setting, int] | Mapping[int, int] | Iterable[tuple[int, int]]


# -- building frames ------------------------------------------------------------------------------


def frame_bytes(
    type_: int,
    flags: int,
    stream_id: int,
    payload: bytes = b"",
    length: int | None = None,
    reserved: bool = False,
) -> bytes:
    """One frame built by hand: its 9-byte head (`length` in place of the payload's real length
    if given: a length that lies; `reserved` sets the reserved bit of the stream id), then
    `payload`."""
    size = len(payload) if length is None else length
    stream = (stream_id & 0x7FFFFFFF) | (0x80000000 if reserved else 0)
    return struct.pack(">I", size)[1:] + struct.pack(">BBI", type_, flags, stream) + payload


def settings_frame(settings: Settings = (), ack: bool = False) -> bytes:
    """A SETTINGS frame; pairs may repeat and take any value (an invalid one included)."""
    pairs = settings.items() if isinstance(settings, Mapping) else settings
    payload = b"".join(struct.pack(">HI", key, value) for key, value in pairs)
    return frame_bytes(FrameType.SETTINGS, Flag.ACK if ack else 0, 0, payload)


def headers_frame(stream_id: int, block: bytes, end_stream: bool = True, end_headers: bool = True) -> bytes:
    flags = (Flag.END_STREAM if end_stream else 0) | (Flag.END_HEADERS if end_headers else 0)
    return frame_bytes(FrameType.HEADERS, flags, stream_id, block)


def continuation_frame(stream_id: int, block: bytes, end_headers: bool = True) -> bytes:
    return frame_bytes(FrameType.CONTINUATION, Flag.END_HEADERS if end_headers else 0, stream_id, block)


def data_frame(stream_id: int, data: bytes, end_stream: bool = False) -> bytes:
    return frame_bytes(FrameType.DATA, Flag.END_STREAM if end_stream else 0, stream_id, data)


def rst_stream_frame(stream_id: int, error_code: int = ErrorCodes.CANCEL) -> bytes:
    return frame_bytes(FrameType.RST_STREAM, 0, stream_id, struct.pack(">I", error_code))


def ping_frame(opaque: bytes = b"rawh2-pi", ack: bool = False) -> bytes:
    return frame_bytes(FrameType.PING, Flag.ACK if ack else 0, 0, opaque)


def goaway_frame(last_stream_id: int, error_code: int = ErrorCodes.NO_ERROR, debug: bytes = b"") -> bytes:
    return frame_bytes(FrameType.GOAWAY, 0, 0, struct.pack(">II", last_stream_id, error_code) + debug)


def window_update_frame(stream_id: int, increment: int) -> bytes:
    return frame_bytes(FrameType.WINDOW_UPDATE, 0, stream_id, struct.pack(">I", increment))


def request_headers(
    method: str = "GET",
    path: str = "/",
    authority: str = "localhost",
    scheme: str = "http",
    headers: Iterable[tuple[str, str]] = (),
) -> list[tuple[str, str]]:
    """The pseudo-headers of a request, then `headers`."""
    pseudo = [(":method", method), (":scheme", scheme), (":authority", authority), (":path", path)]
    return [*pseudo, *headers]


GRPC_REQUEST_HEADERS = [("content-type", "application/grpc"), ("te", "trailers")]


def grpc_message(payload: bytes, compressed: bool = False) -> bytes:
    """One gRPC message as DATA carries it: the compressed flag, the length, the bytes."""
    return struct.pack(">BI", int(compressed), len(payload)) + payload


# -- HPACK ----------------------------------------------------------------------------------------


def header_block(headers: Iterable[tuple[str | bytes, str | bytes]], huffman: bool = True) -> bytes:
    """An HPACK block for `headers` that neither uses nor changes the dynamic table: each block
    stands alone, whatever was sent before it."""
    encoder = hpack.Encoder()
    return encoder.encode([hpack.NeverIndexedHeaderTuple(name, value) for name, value in headers], huffman)


def hpack_int(value: int, prefix_bits: int, first_byte: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 section 5.1) with a `prefix_bits`-bit prefix; `first_byte`
    holds the representation's bits above the prefix."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte | value])
    out = bytearray([first_byte | limit])
    value -= limit
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    out.append(value)
    return bytes(out)


def hpack_string(text: bytes) -> bytes:
    """An HPACK string literal, not Huffman-coded."""
    return hpack_int(len(text), 7) + text


def hpack_literal(name: bytes, value: bytes, indexing: bool = True) -> bytes:
    """A literal field with a literal name: added to the dynamic table (incremental indexing:
    it becomes index 62) or not."""
    return bytes([0x40 if indexing else 0x00]) + hpack_string(name) + hpack_string(value)


def hpack_indexed(index: int) -> bytes:
    """An indexed field: entry `index` (1-61 static, 62 and up dynamic, newest first)."""
    return hpack_int(index, 7, 0x80)


def hpack_table_size_update(size: int) -> bytes:
    return hpack_int(size, 5, 0x20)


# -- what comes back ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One frame as read off the wire."""

    type: int
    flags: int
    stream_id: int
    payload: bytes = field(repr=False)
    frame: Frame | None = field(default=None, repr=False)  # None when hyperframe refused it

    @property
    def kind(self) -> str:
        return FrameType(self.type).name if self.type in FrameType._value2member_map_ else f"0x{self.type:x}"

    def has(self, flag: int) -> bool:
        return bool(self.flags & flag)

    def __str__(self) -> str:
        return f"{self.kind}(stream={self.stream_id}, flags=0x{self.flags:x}, length={len(self.payload)})"


@dataclass(frozen=True)
class GoAway:
    last_stream_id: int
    error_code: int  # an ErrorCodes member when it is one
    debug_data: bytes = b""


@dataclass
class Response:
    """What came on one stream, in order."""

    stream_id: int
    blocks: list[list[tuple[str, str]]] = field(default_factory=list)  # header blocks as decoded
    data: bytes = b""
    reset: int | None = None  # RST_STREAM's error code, if the stream was reset

    @property
    def headers(self) -> list[tuple[str, str]]:
        """The final response's header block (after any 1xx)."""
        return next((block for block in self.blocks if not _informational(block)), [])

    @property
    def trailers(self) -> list[tuple[str, str]]:
        final = [block for block in self.blocks if not _informational(block)]
        return final[1] if len(final) > 1 else []

    @property
    def status(self) -> int | None:
        value = self.header(":status")
        return int(value) if value is not None else None

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)

    def trailer(self, name: str) -> str | None:
        return next((value for key, value in self.trailers if key == name), None)


def _informational(block: list[tuple[str, str]]) -> bool:
    status = next((value for key, value in block if key == ":status"), "")
    return status.startswith("1")


def to_error_code(value: int) -> int:
    """`value` as an ErrorCodes member when it is one (readable in assertions), else as it is."""
    try:
        return ErrorCodes(value)
    except ValueError:
        return value


class ConnectionClosed(Exception):
    """The peer closed the connection (or reset it) while the client waited to read."""


class _Wire:
    """The socket, read ahead into a buffer by a task of its own, and written to by the test.

    Not asyncio's streams: their transport drops the connection at the first failed write (a
    peer that closed after a flood), unread bytes and all, and a StreamReader raises a reset
    before the bytes it holds. Here what the peer sent before it closed (its GOAWAY) is read
    whatever happened to the writes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.ended: BaseException | None = None  # how the connection ended: EOF or the error
        self.write_failed = False
        self._readable = asyncio.Event()
        self._room = asyncio.Event()  # the buffer is below its limit
        self._room.set()
        self._pump = asyncio.get_running_loop().create_task(self._read_ahead())

    @classmethod
    async def connect(cls, host: str, port: int) -> _Wire:
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return cls(sock)

    async def _read_ahead(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self._room.wait()  # the test reads slower than the peer writes
                chunk = await loop.sock_recv(self.sock, 256 * 1024)
                if not chunk:
                    self.ended = ConnectionClosed("the peer closed the connection")
                    return
                self.buffer += chunk
                if len(self.buffer) > BUFFER_LIMIT:
                    self._room.clear()
                self._readable.set()
        except OSError as error:
            self.ended = error
        finally:
            self._readable.set()

    async def read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if self.ended is not None:
                raise ConnectionClosed(f"the peer closed the connection ({self.ended!r})")
            self._readable.clear()
            await self._readable.wait()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        if len(self.buffer) <= BUFFER_LIMIT:
            self._room.set()
        return data

    async def write(self, data: bytes) -> bool:
        """False when the connection is gone (before or while the peer reads)."""
        if self.write_failed or self.sock.fileno() < 0:
            return False
        try:
            await asyncio.get_running_loop().sock_sendall(self.sock, data)
        except OSError:  # reset, broken pipe
            self.write_failed = True
            return False
        return True

    async def close(self) -> None:
        self._pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump
        self.sock.close()


# -- the client -----------------------------------------------------------------------------------


class H2Client:
    """One HTTP/2 connection, the client's side; `await H2Client.open(port)` connects and sends
    the preface and a SETTINGS frame (or not: `preface=False`)."""

    def __init__(
        self, wire: _Wire, ack_settings: bool = True, ack_pings: bool = True, give_window: bool = True
    ) -> None:
        self._wire = wire
        self.ack_settings = ack_settings
        self.ack_pings = ack_pings
        self.give_window = give_window
        self.received: list[Received] = []  # every frame read, in order
        self.goaways: list[GoAway] = []
        self.resets: dict[int, int] = {}  # stream -> RST_STREAM error code
        self.streams: dict[int, Response] = {}
        self.ended: set[int] = set()  # streams the peer ended (END_STREAM)
        self.peer_settings: dict[int, int] = {}
        self.settings_acked = 0  # SETTINGS ACKs received
        self.decode_errors: list[str] = []
        self.closed = False  # the peer closed the connection (EOF, or a reset)
        self._decoder = hpack.Decoder(max_header_list_size=DECODE_LIMIT)
        self._decoder.max_allowed_table_size = 1 << 32
        # A header block awaiting CONTINUATION: its stream, its bytes, whether it ends the stream.
        self._block: tuple[int, bytearray, bool] | None = None
        self._goaways_returned = 0
        self._head: bytes | None = None  # a frame head read, its payload not yet

    @classmethod
    async def open(
        cls,
        port: int,
        host: str = "127.0.0.1",
        preface: bool = True,
        settings: Settings = (),
        ack_settings: bool = True,
        ack_pings: bool = True,
        give_window: bool = True,
    ) -> H2Client:
        async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
            wire = await _Wire.connect(host, port)
        client = cls(wire, ack_settings, ack_pings, give_window)
        if preface:
            await client.send(PREFACE + settings_frame(settings))
        return client

    async def __aenter__(self) -> H2Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._wire.close()

    # -- sending --------------------------------------------------------------------------------

    async def send(self, *frames: Frame | bytes, timeout: float = SEND_TIMEOUT_SECONDS) -> bool:
        """Sends `frames` (hyperframe Frames or bytes) as one write. False when the peer has
        closed or reset the connection; TimeoutError when it does not read them in time."""
        data = b"".join(f if isinstance(f, bytes | bytearray) else f.serialize() for f in frames)
        async with asyncio.timeout(timeout):
            return await self._wire.write(data)

    async def request(
        self,
        stream_id: int,
        method: str = "GET",
        path: str = "/",
        headers: Iterable[tuple[str, str]] = (),
        body: bytes | None = None,
        end_stream: bool = True,
        authority: str = "localhost",
    ) -> bool:
        """Opens stream `stream_id` with a request: HEADERS, then `body` in one DATA frame if
        given; the stream ends with the last of them if `end_stream`."""
        block = header_block(request_headers(method, path, authority, headers=headers))
        frames = [headers_frame(stream_id, block, end_stream=end_stream and body is None)]
        if body is not None:
            frames.append(data_frame(stream_id, body, end_stream=end_stream))
        return await self.send(*frames)

    async def grpc_request(
        self,
        stream_id: int,
        path: str,
        messages: Iterable[bytes] = (),
        headers: Iterable[tuple[str, str]] = (),
    ) -> bool:
        """A gRPC call on stream `stream_id`: HEADERS, each message in a DATA frame, and the last
        one (or an empty one) ending the stream."""
        block = header_block(request_headers("POST", path, headers=[*GRPC_REQUEST_HEADERS, *headers]))
        bodies = [grpc_message(message) for message in messages] or [b""]
        frames = [headers_frame(stream_id, block, end_stream=False)]
        frames += [
            data_frame(stream_id, body, end_stream=n == len(bodies) - 1) for n, body in enumerate(bodies)
        ]
        return await self.send(*frames)

    async def ping(self, opaque: bytes = b"rawh2-pi", timeout: float = READ_TIMEOUT_SECONDS) -> None:
        """Sends a PING and returns once its ACK came back."""
        await self.send(ping_frame(opaque))
        await self.await_ping_ack(opaque, timeout)

    # -- reading --------------------------------------------------------------------------------

    async def read_frame(self, timeout: float = READ_TIMEOUT_SECONDS) -> Received:
        """The next frame from the peer, recorded (and acted on: acks, window) before it is
        returned. TimeoutError after `timeout` s; ConnectionClosed once the peer closed."""
        if self.closed:
            raise ConnectionClosed("the peer closed the connection")
        try:
            async with asyncio.timeout(timeout):
                if self._head is None:
                    self._head = await self._wire.read_exactly(9)
                length = int.from_bytes(self._head[:3], "big")
                payload = await self._wire.read_exactly(length)
        except ConnectionClosed:
            self.closed = True
            raise
        head, self._head = self._head, None
        received = self._parse(head, payload)
        self.received.append(received)
        await self._react(received)
        return received

    async def wait_frame(
        self,
        predicate: Callable[[Received], bool],
        timeout: float = READ_TIMEOUT_SECONDS,
        what: str = "a frame",
    ) -> Received:
        """Reads frames until one satisfies `predicate`, which it returns; TimeoutError (naming
        the frames read meanwhile) after `timeout` s in all."""
        start = len(self.received)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            try:
                if remaining <= 0:
                    raise TimeoutError
                frame = await self.read_frame(remaining)
            except TimeoutError:
                seen = ", ".join(str(f) for f in self.received[start:]) or "nothing"
                raise TimeoutError(f"no {what} within {timeout:g} s; read: {seen}") from None
            except ConnectionClosed:
                seen = ", ".join(str(f) for f in self.received[start:]) or "nothing"
                raise ConnectionClosed(f"closed before {what}; read: {seen}") from None
            if predicate(frame):
                return frame

    async def await_goaway(self, timeout: float = READ_TIMEOUT_SECONDS) -> GoAway:
        """The next GOAWAY's last stream id, error code and debug data (one already read and not
        yet returned counts: this returns each GOAWAY once, in order)."""
        if self._goaways_returned == len(self.goaways):
            await self.wait_frame(
                lambda f: f.type == FrameType.GOAWAY and len(f.payload) >= 8, timeout, "GOAWAY"
            )
        self._goaways_returned += 1
        return self.goaways[self._goaways_returned - 1]

    async def await_rst(self, stream_id: int, timeout: float = READ_TIMEOUT_SECONDS) -> int:
        """The error code of the RST_STREAM the peer sent (or sends) on `stream_id`."""
        if stream_id not in self.resets:
            await self.wait_frame(
                lambda f: f.type == FrameType.RST_STREAM and f.stream_id == stream_id,
                timeout,
                f"RST_STREAM on stream {stream_id}",
            )
        return self.resets[stream_id]

    async def await_ping_ack(
        self, opaque: bytes = b"rawh2-pi", timeout: float = READ_TIMEOUT_SECONDS
    ) -> None:
        """Returns once a PING ACK carrying `opaque` has come (before or now)."""
        if any(self._is_ping_ack(f, opaque) for f in self.received):
            return
        await self.wait_frame(lambda f: self._is_ping_ack(f, opaque), timeout, f"PING ACK {opaque!r}")

    async def await_settings(self, timeout: float = READ_TIMEOUT_SECONDS) -> dict[int, int]:
        """The peer's SETTINGS (its first frame), once they came."""
        if not any(f.type == FrameType.SETTINGS and not f.has(Flag.ACK) for f in self.received):
            await self.wait_frame(
                lambda f: f.type == FrameType.SETTINGS and not f.has(Flag.ACK), timeout, "SETTINGS"
            )
        return dict(self.peer_settings)

    async def await_response(self, stream_id: int, timeout: float = READ_TIMEOUT_SECONDS) -> Response:
        """Everything on `stream_id` once the peer ended it (END_STREAM) or reset it."""
        if stream_id not in self.ended and stream_id not in self.resets:
            await self.wait_frame(
                lambda f: f.stream_id == stream_id and (stream_id in self.ended or stream_id in self.resets),
                timeout,
                f"the end of stream {stream_id}",
            )
        return self.streams.setdefault(stream_id, Response(stream_id))

    async def await_closed(self, timeout: float = READ_TIMEOUT_SECONDS) -> bool:
        """Whether the peer closes the connection within `timeout` s (frames read meanwhile are
        recorded); True at once if it already has."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await self.read_frame(remaining)
            except TimeoutError:
                return False
            except ConnectionClosed:
                return True
        return True

    def of_type(self, type_: int, stream_id: int | None = None) -> list[Received]:
        """The frames of type `type_` read so far (on `stream_id` only, if given)."""
        return [
            f for f in self.received if f.type == type_ and (stream_id is None or f.stream_id == stream_id)
        ]

    # -- inside ---------------------------------------------------------------------------------

    @staticmethod
    def _is_ping_ack(frame: Received, opaque: bytes) -> bool:
        return frame.type == FrameType.PING and frame.has(Flag.ACK) and frame.payload == opaque

    @staticmethod
    def _parse(head: bytes, payload: bytes) -> Received:
        type_, flags = head[3], head[4]
        stream_id = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        try:
            frame, _ = Frame.parse_frame_header(memoryview(head))
            frame.parse_body(memoryview(payload))
        except (HyperframeError, ValueError, struct.error):
            return Received(type_, flags, stream_id, payload)
        return Received(type_, flags, stream_id, payload, frame)

    async def _react(self, received: Received) -> None:
        frame, sid = received.frame, received.stream_id
        if received.type == FrameType.SETTINGS:
            if received.has(Flag.ACK):
                self.settings_acked += 1
            else:
                for offset in range(0, len(received.payload) - 5, 6):
                    key, value = struct.unpack_from(">HI", received.payload, offset)
                    self.peer_settings[key] = value
                if self.ack_settings:
                    await self.send(settings_frame(ack=True))
        elif received.type == FrameType.PING and not received.has(Flag.ACK):
            if self.ack_pings:
                await self.send(ping_frame(received.payload, ack=True))
        elif received.type == FrameType.GOAWAY and len(received.payload) >= 8:
            last, code = struct.unpack_from(">II", received.payload)
            self.goaways.append(GoAway(last & 0x7FFFFFFF, to_error_code(code), received.payload[8:]))
        elif received.type == FrameType.RST_STREAM and len(received.payload) == 4:
            self.resets[sid] = to_error_code(struct.unpack(">I", received.payload)[0])
            self.streams.setdefault(sid, Response(sid)).reset = self.resets[sid]
        elif received.type == FrameType.DATA:
            response = self.streams.setdefault(sid, Response(sid))
            response.data += getattr(frame, "data", b"")
            if self.give_window and received.payload:
                increments = [window_update_frame(0, len(received.payload))]
                if not received.has(Flag.END_STREAM):
                    increments.append(window_update_frame(sid, len(received.payload)))
                await self.send(*increments)
            if received.has(Flag.END_STREAM):
                self.ended.add(sid)
        elif received.type in (FrameType.HEADERS, FrameType.PUSH_PROMISE):
            ends = received.type == FrameType.HEADERS and received.has(Flag.END_STREAM)
            self._block = (sid, bytearray(getattr(frame, "data", b"")), ends)
        elif received.type == FrameType.CONTINUATION and self._block is not None:
            self._block[1].extend(received.payload)
        header_frame = received.type in (FrameType.HEADERS, FrameType.PUSH_PROMISE, FrameType.CONTINUATION)
        if header_frame and received.has(Flag.END_HEADERS) and self._block is not None:
            stream, block, ends = self._block
            self._block = None
            self._decode(stream, block)
            if ends:  # the stream's end counts once its last header block is read
                self.ended.add(stream)

    def _decode(self, stream_id: int, block: bytearray) -> None:
        # Every block is decoded, in order: the peer's encoder and this decoder share a table.
        try:
            raw = self._decoder.decode(bytes(block), raw=True)
        except hpack.HPACKError as error:
            self.decode_errors.append(f"stream {stream_id}: {error!r}")
            return
        decoded = [
            (bytes(k).decode("utf-8", "surrogateescape"), bytes(v).decode("utf-8", "surrogateescape"))
            for k, v in raw
        ]
        self.streams.setdefault(stream_id, Response(stream_id)).blocks.append(decoded)
