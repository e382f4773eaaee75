"""HTTP/2 frames as bytes (RFC 9113 sections 4 and 6): the 9-byte head, the frames the sidecar
writes, and the connection error a received frame can be. Nothing here keeps state.
"""

from __future__ import annotations

import struct
from enum import IntEnum

from h2.errors import ErrorCodes

from sidecar.errors import SidecarError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Length (24 bits, as a byte and a short), type, flags, stream id (31 bits, the reserved bit
# ignored on receipt).
HEAD = struct.Struct(">BHBBL")
HEAD_SIZE = HEAD.size
STREAM_ID_MASK = 0x7FFFFFFF
MAX_WINDOW = 2**31 - 1
MAX_STREAM_ID = 2**31 - 1
DEFAULT_WINDOW = 65_535
DEFAULT_MAX_FRAME = 16_384  # what this side accepts (it never advertises more)
LARGEST_MAX_FRAME = 2**24 - 1


class Frame(IntEnum):
    DATA = 0
    HEADERS = 1
    PRIORITY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PUSH_PROMISE = 5
    PING = 6
    GOAWAY = 7
    WINDOW_UPDATE = 8
    CONTINUATION = 9


# Flags (one value may mean two things, by frame type).
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY = 0x20


class Setting(IntEnum):
    HEADER_TABLE_SIZE = 1
    ENABLE_PUSH = 2
    MAX_CONCURRENT_STREAMS = 3
    INITIAL_WINDOW_SIZE = 4
    MAX_FRAME_SIZE = 5
    MAX_HEADER_LIST_SIZE = 6


SETTING = struct.Struct(">HL")
U32 = struct.Struct(">L")
GOAWAY_HEAD = struct.Struct(">LL")


class ConnectionFault(SidecarError):
    """A connection error (RFC 9113 section 5.4.1): GOAWAY with `code`, then the close."""

    def __init__(self, code: ErrorCodes, why: str) -> None:
        super().__init__(why)
        self.code = code


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    length = len(payload)
    return HEAD.pack(length >> 16, length & 0xFFFF, kind, flags, stream_id) + payload


def settings_frame(values: dict[Setting, int]) -> bytes:
    return frame(Frame.SETTINGS, 0, 0, b"".join(SETTING.pack(code, value) for code, value in values.items()))


SETTINGS_ACK = frame(Frame.SETTINGS, ACK, 0)


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(Frame.WINDOW_UPDATE, 0, stream_id, U32.pack(increment))


def rst_stream(stream_id: int, code: int) -> bytes:
    return frame(Frame.RST_STREAM, 0, stream_id, U32.pack(code))


def goaway(last_stream_id: int, code: int = ErrorCodes.NO_ERROR, debug: bytes = b"") -> bytes:
    """A GOAWAY: with NO_ERROR it leaves the connection open for the streams at or below
    `last_stream_id` (RFC 9113 section 6.8)."""
    return frame(Frame.GOAWAY, 0, 0, GOAWAY_HEAD.pack(last_stream_id, code) + debug)


def ping(data: bytes, ack: bool = False) -> bytes:
    return frame(Frame.PING, ACK if ack else 0, 0, data)


def unpadded(payload: bytes) -> bytes:
    """The content of a PADDED frame's payload (section 6.1): padding as long as the payload or
    longer is a connection error."""
    if not payload or payload[0] >= len(payload):
        raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, "padding as long as the frame or longer")
    return payload[1 : len(payload) - payload[0]]


def header_frames(stream_id: int, block: bytes, end_stream: bool, max_frame: int) -> list[bytes]:
    """A header block as HEADERS and, when it is longer than `max_frame`, CONTINUATION frames."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame:
        return [frame(Frame.HEADERS, flags | END_HEADERS, stream_id, block)]
    pieces = [block[at : at + max_frame] for at in range(0, len(block), max_frame)]
    out = [frame(Frame.HEADERS, flags, stream_id, pieces[0])]
    out += [frame(Frame.CONTINUATION, 0, stream_id, piece) for piece in pieces[1:-1]]
    out.append(frame(Frame.CONTINUATION, END_HEADERS, stream_id, pieces[-1]))
    return out
