"""An HTTP/2 connection on the `h2` state machine, either end: bytes in, typed events out, and the
I/O that h2 leaves to its user (writing what it has to send, waiting for flow-control windows).

What a peer may make this side hold is bounded by what this side advertises, whatever the peer
does: received DATA by the windows (`STREAM_WINDOW` per stream, `CONNECTION_WINDOW` per
connection; a window is opened again only once the bytes were written onward, so a slow reader
at one end slows the writer at the other, end to end), header blocks by h2's header-list limit
(64 KiB, as on HTTP/1.1, checked while decoding, so a block that inflates past it is refused
before it is decoded whole) and its 64-frame CONTINUATION backlog. What this side writes (acks
of PING and SETTINGS included) is bounded by the transport's buffer: once it is full, this
connection is not read until the peer reads (so a flood of frames that each want an answer
stops being read), and a peer that reads nothing for --body-timeout is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import Frame, GoAwayFrame

from sidecar.http.deadline import Deadline
from sidecar.http.flow import HIGH_WATER
from sidecar.http.h2c.header_blocks import BlockDecoder, FieldEncoder
from sidecar.http.h2c.stream import Headers, Stream, StreamGone, error_code

log = logging.getLogger("sidecar.http")

# Per stream, what a peer may send before this side has written it onward: enough for a 4 MiB
# gRPC message to flow in 16 windows, small enough that 100 streams of a connection cannot
# reach the connection's bound alone. The connection's own window is the real bound.
STREAM_WINDOW = 256 * 1024
CONNECTION_WINDOW = 1024 * 1024
# A connection it ends, the sidecar reads (and discards) what the peer still sends this long at most.
LINGER_SECONDS = 2.0
# As on HTTP/1.1 (sidecar.http.fields): the largest header list this side accepts.
MAX_HEADER_LIST_BYTES = 64 * 1024


class GracefulState(h2.connection.H2Connection):
    """h2's state machine, but for GOAWAY: h2 takes any GOAWAY for the end of the connection
    (every later frame, even a PING or the DATA of a stream still running, is then a protocol
    error, and what was queued to send is dropped). RFC 9113 section 6.8: "Activity on streams
    numbered lower than or equal to the last stream identifier might still complete
    successfully". So here a GOAWAY is an event and nothing more: the endpoint opens no stream
    after it, and refuses what is above its last stream id itself."""

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> tuple[list[Frame], list[h2.events.Event]]:
        event = h2.events.ConnectionTerminated()
        event.error_code = error_code(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class H2Endpoint(asyncio.Protocol):
    """One HTTP/2 connection: feeds h2, dispatches its events, writes what it has to send."""

    transport: asyncio.Transport
    client_side = False
    state_class: type[h2.connection.H2Connection] = GracefulState

    def __init__(self, body_timeout: float) -> None:
        # What this side sends is already lower case and free of connection headers (h2_headers),
        # and what it relays was checked when it came in: h2's outbound checks would only do it
        # again (they were among the largest items of a profile of the relay).
        config = h2.config.H2Configuration(
            client_side=self.client_side,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.h2 = self.state_class(config=config)
        self.h2.encoder = FieldEncoder()  # type: ignore[assignment]  # h2's interface, no dynamic table
        self.h2.decoder = BlockDecoder(self.h2.decoder.max_header_list_size)
        self.h2.local_settings = h2.settings.Settings(
            client=self.client_side,
            initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEADER_LIST_BYTES,
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                **self._settings(),
            },
        )
        self.streams: dict[int, Stream] = {}
        self.closed = False
        self.body_timeout = body_timeout
        self._loop = asyncio.get_running_loop()
        self._writable: asyncio.Future[None] | None = None  # awaited by senders out of window
        self._writing_paused = False
        self._stalled_since: float | None = None  # loop time the peer stopped reading us
        self._flush_scheduled = False
        self._lingering_since: float | None = None  # loop time of linger()
        self.peer_settings = False  # the peer's first SETTINGS came
        self._timer = Deadline(self._deadline, self._expired)

    def _settings(self) -> dict[h2.settings.SettingCodes, int]:
        """The settings this end advertises beyond the common ones."""
        return {}

    # --- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(HIGH_WATER)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self._lingering_since is not None:
            return  # after our GOAWAY: read and discarded (see linger)
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            # h2 has queued the GOAWAY with the error's code: send it, then close.
            log.info("HTTP/2 protocol error from %s: %s", self._peer_name(), exc)
            self.linger()
            return
        for event in events:
            self._dispatch(event)
        self.flush()

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

    # --- events

    def _dispatch(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            self._on_data(event)
        elif isinstance(event, h2.events.StreamEnded):
            if (stream := self.streams.get(event.stream_id)) is not None:
                stream.received_end()
                self._maybe_closed(stream)
        elif isinstance(event, h2.events.TrailersReceived):
            if (stream := self.streams.get(event.stream_id)) is not None:
                stream.received_end(list(event.headers))
                self._maybe_closed(stream)
        elif isinstance(event, h2.events.StreamReset):
            self._on_reset(event)
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.peer_settings = True
            self._wake_writers()
        elif isinstance(event, h2.events.WindowUpdated):
            self._wake_writers()
        else:
            self._on_event(event)

    def _on_event(self, event: h2.events.Event) -> None:
        """Events only one end handles (requests, responses, GOAWAY, PING acks)."""

    def _on_data(self, event: h2.events.DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        data = event.data
        padding = event.flow_controlled_length - len(data)
        if stream is None or stream.reset_code is not None:
            # Nobody reads it: give the window back at once.
            self._acknowledge(event.stream_id, event.flow_controlled_length)
            return
        if padding:
            self._acknowledge(stream.id, padding)
        if data:
            stream.received_data(data)
        else:
            self._empty_frame()
        if event.stream_ended:
            stream.received_end()
            self._maybe_closed(stream)

    def _empty_frame(self) -> None:
        """A DATA frame with nothing in it (a flood of them is an attack; see the server)."""

    def _on_reset(self, event: h2.events.StreamReset) -> None:
        stream = self.streams.pop(event.stream_id, None)
        if stream is not None:
            stream.gone(event.error_code)
            self._stream_closed(stream, remote_reset=True)
        self._wake_writers()

    def _stream_closed(self, stream: Stream, remote_reset: bool) -> None:
        """`stream` is over (both halves done, or reset)."""

    # --- sending

    @contextlib.contextmanager
    def _sending(self, stream: Stream) -> Iterator[None]:
        """Around a send on `stream`: StreamGone if it is over, before or as h2 finds out."""
        if stream.reset_code is not None or self.closed:
            raise StreamGone(stream.reset_code or ErrorCodes.CANCEL)
        try:
            yield
        except h2.exceptions.StreamClosedError as exc:
            raise StreamGone(stream.reset_code or ErrorCodes.STREAM_CLOSED) from exc

    def send_headers(self, stream: Stream, headers: Headers, end: bool = False) -> None:
        with self._sending(stream):
            self.h2.send_headers(stream.id, headers, end_stream=end)
        if end:
            self._sent_end(stream)
        self.schedule_flush()

    async def send_data(self, stream: Stream, data: bytes, end: bool = False) -> None:
        """Send `data` as the windows allow, waiting for them; raises StreamGone if reset."""
        view = memoryview(data)
        while True:
            with self._sending(stream):
                if not view:
                    break
                window = 0 if self._writing_paused else self.h2.local_flow_control_window(stream.id)
                if window > 0:
                    size = min(window, self.h2.max_outbound_frame_size, len(view))
                    last = size == len(view)
                    self.h2.send_data(stream.id, view[:size].tobytes(), end_stream=end and last)
                    view = view[size:]
                    self.schedule_flush()
                    continue
            await self._writable_again()
        if end and not data:
            with self._sending(stream):
                self.h2.end_stream(stream.id)
            self.schedule_flush()
        if end:
            self._sent_end(stream)

    def send_small(self, stream: Stream, data: bytes) -> None:
        """The whole of a small body the sidecar wrote itself, and the stream's end; what the
        window does not allow yet follows as it opens."""
        with self._sending(stream):
            fits = len(data) <= min(
                self.h2.local_flow_control_window(stream.id), self.h2.max_outbound_frame_size
            )
            if fits:
                self.h2.send_data(stream.id, data, end_stream=True)
        if fits:
            self._sent_end(stream)
            self.schedule_flush()
        else:
            task = self._loop.create_task(self.send_data(stream, data, end=True))
            task.add_done_callback(lambda done: done.cancelled() or done.exception())

    def end_stream(self, stream: Stream, trailers: Headers | None = None) -> None:
        with self._sending(stream):
            if trailers:
                self.h2.send_headers(stream.id, trailers, end_stream=True)
            else:
                self.h2.end_stream(stream.id)
        self._sent_end(stream)
        self.schedule_flush()

    def reset(self, stream: Stream, code: int) -> None:
        """Reset `stream` with `code`, unless it is over already."""
        if self.closed or stream.reset_code is not None:
            return
        stream.gone(code)
        self.streams.pop(stream.id, None)
        try:
            self.h2.reset_stream(stream.id, code)
        except h2.exceptions.StreamClosedError:
            pass
        else:
            self.schedule_flush()
        self._stream_closed(stream, remote_reset=False)
        self._wake_writers()

    def _sent_end(self, stream: Stream) -> None:
        stream.sent_end = True
        self._maybe_closed(stream)

    def _maybe_closed(self, stream: Stream) -> None:
        """Both halves are done: the stream no longer counts (what it received may still be
        being read: its windows are given back as it is, h2 takes that for a closed stream)."""
        if stream.ended and stream.sent_end and self.streams.pop(stream.id, None) is not None:
            self._stream_closed(stream, remote_reset=False)

    def acknowledge(self, stream: Stream, size: int) -> None:
        self._acknowledge(stream.id, size)
        self.schedule_flush()

    def _acknowledge(self, stream_id: int, size: int) -> None:
        if size and not self.closed:
            # Of a stream that is over, only the connection's window (h2 does that itself).
            with contextlib.suppress(h2.exceptions.StreamClosedError):
                self.h2.acknowledge_received_data(size, stream_id)

    async def _writable_again(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self._loop.create_future()
        await asyncio.shield(self._writable)

    def _wake_writers(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def schedule_flush(self) -> None:
        """Write what h2 has to send at the end of this turn of the loop: one write for all the
        frames the tasks of this turn made."""
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.transport.write(data)

    def write_raw(self, frame: bytes) -> None:
        """A frame h2 does not make itself (a GOAWAY that keeps the connection open), after
        everything h2 has queued."""
        self.flush()
        if not self.closed:
            self.transport.write(frame)

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
