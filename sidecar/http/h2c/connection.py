"""One HTTP/2 connection, either end, read and written frame by frame (RFC 9113): the frame heads,
the stream states, the flow-control windows and the settings, with the policy's work left to the
server and client halves (sidecar.http.h2c.server and .client).

A relay has little to do per frame: read its 9-byte head, check it against the stream's state,
and hand its payload on. Writing that here, instead of going through a general-purpose state
machine (the `h2` library this replaced), is what a profile of the relay asked for: h2 and its
events cost several times the sidecar's own work per stream.

What a peer may make this side hold is bounded by what this side advertises, whatever the peer
does: received DATA by the windows (`STREAM_WINDOW` per stream, `CONNECTION_WINDOW` per
connection; a window is opened again only once the bytes were written onward, so a slow reader
at one end slows the writer at the other, end to end), a header block by the header-list limit
(64 KiB, as on HTTP/1.1: its fragments while they arrive, and its fields while they are decoded,
so that a block that inflates past it is refused before it is decoded whole). What this side
writes (acks of PING and SETTINGS included) is bounded by the transport's buffer: once it is
full, this connection is not read until the peer reads (so a flood of frames that each want an
answer stops being read), and a peer that reads nothing for --body-timeout is cut.

A violation ends the connection (GOAWAY with the error's code, `ConnectionFault`) or only its
stream (RST_STREAM, section 5.4.2), as the RFC says of each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import cast

from h2.errors import ErrorCodes
from hpack import HPACKError, OversizedHeaderListError

from sidecar.http.deadline import Deadline
from sidecar.http.flow import HIGH_WATER
from sidecar.http.h2c import frames
from sidecar.http.h2c.frames import (
    ACK,
    END_HEADERS,
    END_STREAM,
    PADDED,
    PRIORITY,
    ConnectionFault,
    Frame,
    Setting,
    frame,
)
from sidecar.http.h2c.header_blocks import MAX_HEADER_LIST_BYTES, BlockDecoder, DecodedBlock, FieldEncoder
from sidecar.http.h2c.header_checks import Malformed, check_response, check_trailers, checked
from sidecar.http.h2c.stream import STREAM_WINDOW, Headers, Stream, StreamGone

log = logging.getLogger("sidecar.http")

# Per stream, what a peer may send before this side has written it onward (STREAM_WINDOW, 256
# KiB): enough for a 4 MiB gRPC message to flow in 16 windows, small enough that 100 streams of a
# connection cannot reach the connection's bound alone. The connection's own window is the real bound.
CONNECTION_WINDOW = 1024 * 1024
# A window is opened again once half of it was written onward, in one WINDOW_UPDATE (as
# nghttp2 does): not one frame per DATA frame.
STREAM_UPDATE_AT = STREAM_WINDOW // 2
CONNECTION_UPDATE_AT = CONNECTION_WINDOW // 2
# A connection it ends, the sidecar reads (and discards) what the peer still sends this long at most.
LINGER_SECONDS = 2.0
# Streams this side reset whose late frames are ignored (RFC 9113 section 5.1: the peer may have
# sent them before it saw the reset); older ones are forgotten, their frames then reset again.
RESETS_REMEMBERED = 1024
# CONTINUATION frames one header block may take (as h2 and nghttp2 bound them): a block of 64 KiB
# needs 4 of the smallest frames a peer may send (16 KiB); a run of empty ones is the 2024
# CONTINUATION flood (CVE-2024-27316 and its family), which the 64 KiB bound alone never ends.
MAX_CONTINUATIONS = 64
# Not a flag on the wire: marks a HEADERS frame whose priority names its own stream (section 5.3.1).
SELF_DEPENDENT = 0x100


class H2Endpoint(asyncio.Protocol):
    """One HTTP/2 connection: frames in, streams fed; frames out, one write a turn of the loop."""

    transport: asyncio.Transport
    client_side = False

    def __init__(self, body_timeout: float) -> None:
        self.encoder = FieldEncoder()
        self.decoder = BlockDecoder(max_header_list_size=MAX_HEADER_LIST_BYTES)
        self.streams: dict[int, Stream] = {}  # open (or half-closed) streams
        self.closed = False
        self.body_timeout = body_timeout
        # The peer's settings, as they stand.
        self.peer_settings = False  # its first SETTINGS came
        self.peer_max_streams = frames.MAX_STREAM_ID
        self.peer_initial_window = frames.DEFAULT_WINDOW
        self.peer_max_frame = frames.DEFAULT_MAX_FRAME
        # The connection's windows: what this side may still send, what the peer may.
        self.send_window = frames.DEFAULT_WINDOW
        self.recv_window = CONNECTION_WINDOW
        self._recv_unacked = 0  # written onward, not yet given back to the peer
        self.last_peer_stream = 0  # the highest stream id the peer opened
        self.next_stream_id = 1  # for the streams this side opens (a client's)
        self._reset_here: dict[int, None] = {}  # streams this side reset, oldest first
        self._out: list[bytes] = []  # frames to write at the end of this turn
        self._buffer = b""  # what came of a frame not whole yet
        self._awaiting_preface = not self.client_side
        self._first_frame = True  # must be the peer's SETTINGS
        self._block: tuple[int, int, bytearray] | None = None  # a header block being received
        self._continuations = 0  # CONTINUATION frames of that block so far
        self._loop = asyncio.get_running_loop()
        self._writable: asyncio.Future[None] | None = None  # awaited by senders out of window
        self._writing_paused = False
        self._stalled_since: float | None = None  # loop time the peer stopped reading us
        self._flush_scheduled = False
        self._lingering_since: float | None = None  # loop time of linger()
        self._timer = Deadline(self._deadline, self._expired)
        handlers: dict[int, Callable[[int, int, bytes], None]] = {
            Frame.DATA: self._data_frame,
            Frame.HEADERS: self._headers_frame,
            Frame.PRIORITY: self._priority_frame,
            Frame.RST_STREAM: self._rst_stream_frame,
            Frame.SETTINGS: self._settings_frame,
            Frame.PUSH_PROMISE: self._push_promise_frame,
            Frame.PING: self._ping_frame,
            Frame.GOAWAY: self._goaway_frame,
            Frame.WINDOW_UPDATE: self._window_update_frame,
            Frame.CONTINUATION: self._continuation_frame,
        }
        self._handlers = handlers

    def _settings(self) -> dict[Setting, int]:
        """The settings this end advertises beyond the common ones."""
        return {}

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(HIGH_WATER)
        settings = {
            Setting.ENABLE_PUSH: 0,
            Setting.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            Setting.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_BYTES,
            **self._settings(),
        }
        if self.client_side:
            self._out.append(frames.PREFACE)
        self._out.append(frames.settings_frame(settings))
        self._out.append(frames.window_update(0, CONNECTION_WINDOW - frames.DEFAULT_WINDOW))
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self._lingering_since is not None:
            return  # after our GOAWAY: read and discarded (see linger)
        try:
            self._receive(self._buffer + data if self._buffer else data)
        except ConnectionFault as exc:
            log.info("HTTP/2 protocol error from %s: %s", self._peer_name(), exc)
            self._out.append(frames.goaway(self.last_peer_stream, exc.code))
            self.linger()
            return
        self.flush()

    def _receive(self, data: bytes) -> None:
        if self._awaiting_preface:
            if len(data) < len(frames.PREFACE):
                self._buffer = data
                return
            if not data.startswith(frames.PREFACE):
                raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, "invalid connection preface")
            data = data[len(frames.PREFACE) :]
            self._awaiting_preface = False
        at, end = 0, len(data)
        head, handlers = frames.HEAD, self._handlers
        while end - at >= frames.HEAD_SIZE:
            high, low, kind, flags, stream_id = head.unpack_from(data, at)
            length = high << 16 | low
            if length > frames.DEFAULT_MAX_FRAME:
                raise ConnectionFault(ErrorCodes.FRAME_SIZE_ERROR, f"a frame of {length} bytes")
            start = at + frames.HEAD_SIZE
            if end - start < length:
                break
            at = start + length
            if self._block is not None and kind != Frame.CONTINUATION:
                raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, "a frame inside a header block")
            if self._first_frame:
                if kind != Frame.SETTINGS or flags & ACK:
                    raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, "no SETTINGS after the preface")
                self._first_frame = False
            handler = handlers.get(kind)
            if handler is not None:  # frames of unknown types are ignored (section 5.5)
                handler(flags, stream_id & frames.STREAM_ID_MASK, data[start:at])
            if self._lingering_since is not None or self.closed:
                return  # the connection ended (ENHANCE_YOUR_CALM)
        self._buffer = data[at:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._timer.cancel()
        for stream in list(self.streams.values()):
            stream.gone(ErrorCodes.CANCEL)
        self._wake_writers()

    def pause_writing(self) -> None:
        # The peer reads less than this side writes: read nothing more of it until it does
        # (each frame it sends may want an answer), and cut it if that lasts.
        self._writing_paused = True
        self._stalled_since = self._loop.time()
        self.transport.pause_reading()
        self._timer.watch()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._stalled_since = None
        if not self.closed:
            self.transport.resume_reading()
        self._wake_writers()

    # --- frames received (section 6)

    def _idle(self, stream_id: int) -> bool:
        """Whether `stream_id` was never opened, by either side (section 5.1)."""
        if (stream_id % 2 == 1) == self.client_side:
            return stream_id >= self.next_stream_id  # one of ours
        return stream_id > self.last_peer_stream

    def _on_closed_stream(self, stream_id: int, what: str) -> None:
        """A frame that needs an open stream came on one that is not (section 5.1)."""
        if self._idle(stream_id):
            raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, f"{what} on idle stream {stream_id}")
        if stream_id not in self._reset_here:  # else: sent before the peer saw our reset
            self._stream_error_by_id(stream_id, ErrorCodes.STREAM_CLOSED)

    def _data_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)  # flow control counts the padding too
        data = frames.unpadded(payload) if flags & PADDED else payload
        if size > self.recv_window:
            raise ConnectionFault(ErrorCodes.FLOW_CONTROL_ERROR, "DATA beyond the connection's window")
        self.recv_window -= size
        stream = self.streams.get(stream_id)
        if stream is None or stream.ended:
            self._give_back(size)  # nobody reads it
            if stream is None:
                self._on_closed_stream(stream_id, "DATA")
            else:
                self.stream_error(stream, ErrorCodes.STREAM_CLOSED)
            return
        if size > stream.recv_window:
            self._give_back(size)
            self.stream_error(stream, ErrorCodes.FLOW_CONTROL_ERROR)
            return
        stream.recv_window -= size
        if stream.expected_length is not None:
            stream.received_length += len(data)
            if stream.received_length > stream.expected_length:
                self._give_back(size)
                self.stream_error(stream, ErrorCodes.PROTOCOL_ERROR)
                return
        if size > len(data):
            self.acknowledge(stream, size - len(data))  # the padding: nobody reads it
        if data:
            stream.received_data(data)
        elif not flags & END_STREAM:
            self._empty_frame()
        if flags & END_STREAM:
            self._peer_ended(stream)

    def _headers_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, "HEADERS on stream 0")
        block = frames.unpadded(payload) if flags & PADDED else payload
        if flags & PRIORITY:
            if len(block) < 5:
                raise ConnectionFault(ErrorCodes.FRAME_SIZE_ERROR, "HEADERS too short for its priority")
            if frames.U32.unpack_from(block)[0] & frames.STREAM_ID_MASK == stream_id:
                flags |= SELF_DEPENDENT  # the stream is reset once the block is decoded
            block = block[5:]
        if flags & END_HEADERS:
            self._header_block(stream_id, flags, block)
        else:
            self._block = (stream_id, flags, bytearray(block))
            self._continuations = 0

    def _continuation_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._block is None or self._block[0] != stream_id:
            raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, "CONTINUATION without its HEADERS")
        _, first_flags, block = self._block
        block += payload
        self._continuations += 1
        if len(block) > MAX_HEADER_LIST_BYTES:
            raise ConnectionFault(ErrorCodes.ENHANCE_YOUR_CALM, "a header block over 64 KiB")
        if self._continuations > MAX_CONTINUATIONS:  # empty ones grow nothing but cost a frame each
            raise ConnectionFault(ErrorCodes.ENHANCE_YOUR_CALM, "a header block in too many frames")
        if flags & END_HEADERS:
            self._block = None
            self._header_block(stream_id, first_flags, bytes(block))

    def _header_block(self, stream_id: int, flags: int, block: bytes) -> None:
        """A whole header block: decoded (always: it may change the peer's table), then a new
        stream, a response, or trailers."""
        try:
            decoded = self.decoder.block(block)
        except OversizedHeaderListError as exc:
            raise ConnectionFault(ErrorCodes.ENHANCE_YOUR_CALM, "a header list over 64 KiB") from exc
        except (HPACKError, IndexError, TypeError, ValueError) as exc:
            raise ConnectionFault(ErrorCodes.COMPRESSION_ERROR, f"an unreadable header block: {exc}") from exc
        end = bool(flags & END_STREAM)
        stream = self.streams.get(stream_id)
        if stream is None:
            if self._idle(stream_id) and (stream_id % 2 == 1) != self.client_side:
                self.last_peer_stream = stream_id
                if flags & SELF_DEPENDENT:
                    self._stream_error_by_id(stream_id, ErrorCodes.PROTOCOL_ERROR)
                else:
                    self._peer_opened(stream_id, decoded, end)
            elif self._idle(stream_id):
                raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, f"HEADERS opening stream {stream_id}")
            elif stream_id not in self._reset_here:
                raise ConnectionFault(ErrorCodes.STREAM_CLOSED, f"HEADERS on closed stream {stream_id}")
            return
        if flags & SELF_DEPENDENT:
            self.stream_error(stream, ErrorCodes.PROTOCOL_ERROR)
            return
        if stream.ended:
            self.stream_error(stream, ErrorCodes.STREAM_CLOSED)
            return
        headers = list(decoded.fields)
        try:
            if self.client_side and not stream.headers:
                status, stream.expected_length = checked(decoded, check_response)
                if status < 200:
                    if end:
                        raise Malformed("an informational response that ends the stream")
                    return  # 1xx: the final response is still to come
                if stream.head_request or status in (204, 304):
                    stream.expected_length = None  # no body, whatever content-length says
                stream.received_headers(headers)
                if end:
                    self._peer_ended(stream)
                return
            if not end:
                raise Malformed("trailers that do not end the stream")
            checked(decoded, check_trailers)
        except Malformed as exc:
            log.debug("HTTP/2 malformed headers from %s: %s", self._peer_name(), exc)
            self.stream_error(stream, ErrorCodes.PROTOCOL_ERROR)
            return
        self._peer_ended(stream, headers)

    def _peer_opened(self, stream_id: int, decoded: DecodedBlock, end: bool) -> None:
        """The peer opened stream `stream_id` (a server's request); a client's peer may not."""
        raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, "a server opened a stream")

    def _peer_ended(self, stream: Stream, trailers: Headers | None = None) -> None:
        if stream.expected_length is not None and stream.received_length != stream.expected_length:
            self.stream_error(stream, ErrorCodes.PROTOCOL_ERROR)  # shorter than its content-length
            return
        stream.received_end(trailers)
        self._maybe_closed(stream)

    def _priority_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        """Priorities are read and not used (RFC 9113 deprecates them)."""
        if stream_id == 0:
            raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, "PRIORITY on stream 0")
        if len(payload) != 5:
            self._stream_error_by_id(stream_id, ErrorCodes.FRAME_SIZE_ERROR)
        elif frames.U32.unpack_from(payload)[0] & frames.STREAM_ID_MASK == stream_id:
            self._stream_error_by_id(stream_id, ErrorCodes.PROTOCOL_ERROR)

    def _rst_stream_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise ConnectionFault(ErrorCodes.FRAME_SIZE_ERROR, "RST_STREAM not of 4 bytes")
        if self._idle(stream_id):
            raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.gone(frames.U32.unpack(payload)[0])
            self._stream_closed(stream, by_peer=True)
            self._wake_writers()

    def _settings_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ConnectionFault(ErrorCodes.FRAME_SIZE_ERROR, "a SETTINGS ack with a payload")
            return
        if len(payload) % 6:
            raise ConnectionFault(ErrorCodes.FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 bytes")
        for at in range(0, len(payload), 6):
            self._setting(*frames.SETTING.unpack_from(payload, at))
        self._out.append(frames.SETTINGS_ACK)
        self.peer_settings = True
        self._wake_writers()

    def _setting(self, code: int, value: int) -> None:
        if code == Setting.HEADER_TABLE_SIZE:
            self.encoder.header_table_size = value
        elif code == Setting.ENABLE_PUSH:
            if value > 1:
                raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, f"SETTINGS_ENABLE_PUSH {value}")
        elif code == Setting.MAX_CONCURRENT_STREAMS:
            self.peer_max_streams = value
        elif code == Setting.INITIAL_WINDOW_SIZE:
            if value > frames.MAX_WINDOW:
                raise ConnectionFault(ErrorCodes.FLOW_CONTROL_ERROR, f"SETTINGS_INITIAL_WINDOW_SIZE {value}")
            delta, self.peer_initial_window = value - self.peer_initial_window, value
            for stream in self.streams.values():  # section 6.9.2: open windows move by the change
                stream.send_window += delta
                if stream.send_window > frames.MAX_WINDOW:
                    raise ConnectionFault(ErrorCodes.FLOW_CONTROL_ERROR, "a stream's window past 2^31-1")
        elif code == Setting.MAX_FRAME_SIZE:
            if not frames.DEFAULT_MAX_FRAME <= value <= frames.LARGEST_MAX_FRAME:
                raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
            self.peer_max_frame = value
        # MAX_HEADER_LIST_SIZE is advisory, unknown settings are ignored (section 6.5.2).

    def _push_promise_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, "PUSH_PROMISE, with push disabled")

    def _ping_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, "PING on a stream")
        if len(payload) != 8:
            raise ConnectionFault(ErrorCodes.FRAME_SIZE_ERROR, "PING not of 8 bytes")
        if flags & ACK:
            self._on_ping_ack(payload)
        else:
            self._out.append(frames.ping(payload, ack=True))

    def _on_ping_ack(self, data: bytes) -> None:
        """The peer acknowledged a PING of this side's."""

    def _goaway_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        """A GOAWAY ends nothing at once (section 6.8: "Activity on streams numbered lower than
        or equal to the last stream identifier might still complete successfully")."""
        if stream_id != 0:
            raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, "GOAWAY on a stream")
        if len(payload) < 8:
            raise ConnectionFault(ErrorCodes.FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes")
        last, code = frames.GOAWAY_HEAD.unpack_from(payload)
        self._on_goaway(last & frames.STREAM_ID_MASK, code)

    def _on_goaway(self, last_stream_id: int, code: int) -> None:
        """The peer opens no stream after its GOAWAY, and processes none above `last_stream_id`."""

    def _window_update_frame(self, flags: int, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ConnectionFault(ErrorCodes.FRAME_SIZE_ERROR, "WINDOW_UPDATE not of 4 bytes")
        increment = frames.U32.unpack(payload)[0] & frames.STREAM_ID_MASK
        if stream_id == 0:
            if not increment:
                raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > frames.MAX_WINDOW:
                raise ConnectionFault(ErrorCodes.FLOW_CONTROL_ERROR, "the connection's window past 2^31-1")
            self._wake_writers()
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if self._idle(stream_id):
                raise ConnectionFault(ErrorCodes.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            return  # a stream that just closed
        if not increment:
            self.stream_error(stream, ErrorCodes.PROTOCOL_ERROR)
            return
        stream.send_window += increment
        if stream.send_window > frames.MAX_WINDOW:
            self.stream_error(stream, ErrorCodes.FLOW_CONTROL_ERROR)
        self._wake_writers()

    def _empty_frame(self) -> None:
        """A DATA frame with nothing in it (a flood of them is an attack; see the server)."""

    def _stream_closed(self, stream: Stream, by_peer: bool) -> None:
        """`stream` is over: both halves done, or reset (`by_peer`: by the peer's RST_STREAM, or
        by this side for the peer's fault)."""

    def _peer_fault(self) -> None:
        """This side reset a stream it never handed on, for the peer's fault (see the server)."""

    # --- stream errors (section 5.4.2)

    def stream_error(self, stream: Stream, code: int) -> None:
        """The peer broke the rules on `stream`: it is reset, as if by the peer (a loop of these
        is the MadeYouReset attack, CVE-2025-8671, bounded with the peer's own resets)."""
        log.debug("HTTP/2 stream error from %s on stream %d: %s", self._peer_name(), stream.id, _name(code))
        self.reset(stream, code, by_peer=True)

    def _stream_error_by_id(self, stream_id: int, code: int) -> None:
        """`stream_error`, for a stream open or not: one never handed on is reset all the same,
        and counts as the peer's fault."""
        stream = self.streams.get(stream_id)
        if stream is not None:
            self.stream_error(stream, code)
        else:
            self._send_reset(stream_id, code)
            self._peer_fault()

    def _send_reset(self, stream_id: int, code: int) -> None:
        self._out.append(frames.rst_stream(stream_id, code))
        self._reset_here[stream_id] = None
        if len(self._reset_here) > RESETS_REMEMBERED:
            del self._reset_here[next(iter(self._reset_here))]

    # --- sending

    def _check_open(self, stream: Stream) -> None:
        """StreamGone if `stream` is over: nothing more is sent on it."""
        if stream.reset_code is not None or self.closed:
            raise StreamGone(stream.reset_code or ErrorCodes.CANCEL)
        if stream.sent_end:
            raise StreamGone(ErrorCodes.STREAM_CLOSED)

    def send_headers(self, stream: Stream, headers: Headers, end: bool = False) -> None:
        self._check_open(stream)
        block = self.encoder.encode(headers)
        self._out.extend(frames.header_frames(stream.id, block, end, self.peer_max_frame))
        if end:
            self._sent_end(stream)
        self.schedule_flush()

    async def send_data(self, stream: Stream, data: bytes, end: bool = False) -> None:
        """Send `data` as the windows allow, waiting for them; raises StreamGone if reset."""
        view = memoryview(data)
        while view:
            self._check_open(stream)
            window = 0 if self._writing_paused else min(stream.send_window, self.send_window)
            if window <= 0:
                await self._writable_again()
                continue
            size = min(window, self.peer_max_frame, len(view))
            flags = END_STREAM if end and size == len(view) else 0
            self._out.append(frame(Frame.DATA, flags, stream.id, view[:size].tobytes()))
            stream.send_window -= size
            self.send_window -= size
            view = view[size:]
            self.schedule_flush()
        if end and not data:
            self._check_open(stream)
            self._out.append(frame(Frame.DATA, END_STREAM, stream.id))
            self.schedule_flush()
        if end:
            self._sent_end(stream)

    def send_whole(self, stream: Stream, data: bytes) -> bool:
        """`data` and the stream's end in one DATA frame, if the windows allow it now (and the
        peer reads); False, and nothing sent, if not."""
        self._check_open(stream)
        if self._writing_paused or len(data) > min(stream.send_window, self.send_window, self.peer_max_frame):
            return False
        self._out.append(frame(Frame.DATA, END_STREAM, stream.id, data))
        stream.send_window -= len(data)
        self.send_window -= len(data)
        self._sent_end(stream)
        self.schedule_flush()
        return True

    def send_small(self, stream: Stream, data: bytes) -> None:
        """The whole of a small body the sidecar wrote itself, and the stream's end; what the
        window does not allow yet follows as it opens."""
        if not self.send_whole(stream, data):
            task = self._loop.create_task(self.send_data(stream, data, end=True))
            task.add_done_callback(lambda done: done.cancelled() or done.exception())

    def end_stream(self, stream: Stream, trailers: Headers | None = None) -> None:
        if trailers:
            self.send_headers(stream, trailers, end=True)
            return
        self._check_open(stream)
        self._out.append(frame(Frame.DATA, END_STREAM, stream.id))
        self._sent_end(stream)
        self.schedule_flush()

    def reset(self, stream: Stream, code: int, by_peer: bool = False) -> None:
        """Reset `stream` with `code`, unless it is over already."""
        if self.closed or stream.reset_code is not None:
            return
        stream.gone(code)
        self.streams.pop(stream.id, None)
        self._send_reset(stream.id, code)
        self.schedule_flush()
        self._stream_closed(stream, by_peer)
        self._wake_writers()

    def ping(self, data: bytes) -> None:
        self._out.append(frames.ping(data))
        self.schedule_flush()

    def _sent_end(self, stream: Stream) -> None:
        stream.sent_end = True
        self._maybe_closed(stream)

    def _maybe_closed(self, stream: Stream) -> None:
        """Both halves are done: the stream no longer counts (what it received may still be
        being read: the connection's window is given back as it is)."""
        if stream.ended and stream.sent_end and self.streams.pop(stream.id, None) is not None:
            self._stream_closed(stream, by_peer=False)

    def acknowledge(self, stream: Stream, size: int) -> None:
        """`size` bytes received on `stream` were written onward (or will never be read): the
        peer may send as much again, told in one WINDOW_UPDATE per half window."""
        if not size or self.closed:
            return
        if not stream.ended and stream.reset_code is None:
            stream.recv_unacked += size
            if stream.recv_unacked >= STREAM_UPDATE_AT:
                self._out.append(frames.window_update(stream.id, stream.recv_unacked))
                stream.recv_window += stream.recv_unacked
                stream.recv_unacked = 0
                self.schedule_flush()
        self._give_back(size)

    def _give_back(self, size: int) -> None:
        """The connection's window, for `size` bytes no longer held."""
        self._recv_unacked += size
        if self._recv_unacked >= CONNECTION_UPDATE_AT:
            self._out.append(frames.window_update(0, self._recv_unacked))
            self.recv_window += self._recv_unacked
            self._recv_unacked = 0
            self.schedule_flush()

    async def _writable_again(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self._loop.create_future()
        await asyncio.shield(self._writable)

    def _wake_writers(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def schedule_flush(self) -> None:
        """Write what was queued at the end of this turn of the loop: one write for all the
        frames the tasks of this turn made."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self._out and not self.closed:
            self.transport.write(b"".join(self._out))
        self._out.clear()

    def write_raw(self, data: bytes) -> None:
        """A frame to go now, after everything queued."""
        self._out.append(data)
        self.flush()

    # --- the one timer

    def _deadline(self) -> float | None:
        if self._lingering_since is not None:
            return self._lingering_since + LINGER_SECONDS
        if self._stalled_since is not None:
            return self._stalled_since + self.body_timeout
        return None

    def _expired(self) -> None:
        if self._lingering_since is not None:
            self.abort()
        elif self._stalled_since is not None:
            log.info("HTTP/2 peer %s read nothing for --body-timeout: connection closed", self._peer_name())
            self.abort()

    def _peer_name(self) -> str:
        peer = self.transport.get_extra_info("peername") if hasattr(self, "transport") else None
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"

    def close(self) -> None:
        """End the connection (a GOAWAY said so, or it has nothing left to do): see linger."""
        self.linger()

    def linger(self) -> None:
        """End the connection: send what is queued, shut our side, and read (and discard) what
        the peer still sends until it closes, for at most LINGER_SECONDS. Closing at once with
        its bytes unread (a PING behind its GOAWAY, a WINDOW_UPDATE) would make the kernel answer
        with a reset, which may reach the peer before our last frames do (nginx's lingering
        close)."""
        if self.closed or self._lingering_since is not None:
            return
        self.flush()
        self._lingering_since = self._loop.time()
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.transport.resume_reading()
            self._timer.watch()
        else:
            self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.transport.abort()


def _name(code: int) -> str:
    try:
        return ErrorCodes(code).name
    except ValueError:
        return f"error {code}"
