"""One gRPC health check of the app (`--app-health grpc[:SERVICE]`): the standard
`grpc.health.v1.Health/Check` over h2c, as Kubernetes' `grpc` probe makes it. AppHealth
(app_health.py) owns the cadence, the confirmations and suspect(); this module makes one call and
says what it got.

A small client on the `h2` state machine (sans I/O) over asyncio streams: connect, the preface
and SETTINGS, one stream (HEADERS, then DATA with the 5-byte gRPC prefix and the
HealthCheckRequest), then read the response headers, the message and the trailers. The two
protobuf messages are tiny and written out by hand: HealthCheckRequest is field 1, the string
`service`; HealthCheckResponse is field 1, the enum ServingStatus.

A connection per check, as the kubelet's probe: a check every 2 s costs a connect and a SETTINGS
exchange, and it tests what a consumer does (a new connection to the app's listener). A kept
connection would go on answering SERVING from a server that closed its listener, and its loss
would have to be told from the app's.

Bounded: the whole check by HEALTH_TIMEOUT_SECONDS (the caller's timeout), the bytes read by
MAX_RESPONSE_BYTES, headers by h2's own 64 KiB header-list limit.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.events
import h2.exceptions

HEALTH_CHECK_PATH = "/grpc.health.v1.Health/Check"
# A HealthCheckResponse is 2 bytes; headers and trailers a few hundred. Whatever a health check
# reads beyond this (a flood, a huge grpc-message) is not an answer worth reading.
MAX_RESPONSE_BYTES = 64 * 1024
READ_CHUNK = 16 * 1024
# HealthCheckResponse.ServingStatus
SERVING_STATUSES = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
SERVING = 1
SERVICE_UNKNOWN = 3  # what Watch answers for an unknown service (Check: NOT_FOUND), and some servers' Check
# The gRPC status codes a health check may meet, by name (grpc/doc/statuscodes.md).
GRPC_STATUS_NAMES = {
    0: "OK",
    1: "CANCELLED",
    2: "UNKNOWN",
    3: "INVALID_ARGUMENT",
    4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND",
    6: "ALREADY_EXISTS",
    7: "PERMISSION_DENIED",
    8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION",
    10: "ABORTED",
    11: "OUT_OF_RANGE",
    12: "UNIMPLEMENTED",
    13: "INTERNAL",
    14: "UNAVAILABLE",
    15: "DATA_LOSS",
    16: "UNAUTHENTICATED",
}
NOT_FOUND = 5
UNIMPLEMENTED = 12


class _CheckFailed(Exception):
    """What went wrong, in words for the check's outcome."""


@dataclass(frozen=True, slots=True)
class GrpcTarget:
    """Where and what to check: the app's address, and the service ('' for the whole server)."""

    host: str
    port: int
    service: str

    @property
    def authority(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def describe(self) -> str:
        """`gRPC Health/Check("cart") at 127.0.0.1:5050` (no service: `Health/Check at`), the
        start of every outcome."""
        service = f'("{self.service}")' if self.service else ""
        return f"gRPC Health/Check{service} at {self.authority}"


def encode_request(service: str) -> bytes:
    """A HealthCheckRequest as a gRPC message: the 5-byte prefix (not compressed, length),
    then field 1 (tag 0x0a: field 1, length-delimited) with the UTF-8 name; empty for ''."""
    name = service.encode()
    message = b"\x0a" + _varint(len(name)) + name if name else b""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def decode_response(body: bytes) -> int:
    """The ServingStatus of a gRPC message holding a HealthCheckResponse (0, UNKNOWN, when the
    field is absent: proto3 leaves out a default); _CheckFailed when it is no such message."""
    if len(body) < 5:
        raise _CheckFailed(f"a response message of {len(body)} bytes, not a gRPC message")
    if body[0] != 0:
        raise _CheckFailed("a compressed response, which the check did not ask for")
    length = int.from_bytes(body[1:5], "big")
    if len(body) != 5 + length:
        raise _CheckFailed(f"a gRPC message of {len(body) - 5} bytes where its prefix says {length}")
    message, at, status = body[5:], 0, 0
    while at < len(message):
        key, at = _read_varint(message, at)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _read_varint(message, at)
            if field == 1:
                status = value
        elif wire == 2:
            size, at = _read_varint(message, at)
            at += size
        elif wire in (1, 5):
            at += 8 if wire == 1 else 4
        else:
            raise _CheckFailed(f"a HealthCheckResponse with wire type {wire}, not protobuf")
    if at != len(message):
        raise _CheckFailed("a HealthCheckResponse cut short")
    return status


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while at < len(data) and shift < 64:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at
    raise _CheckFailed("a HealthCheckResponse cut short")


async def check(target: GrpcTarget, timeout: float) -> tuple[bool, str]:
    """Whether the app's health service says SERVING, and what the check got in words, with
    what to do about a failure (the HTTP check's style: `... -> 503; ...`)."""
    head = target.describe()
    try:
        async with asyncio.timeout(timeout):
            status, message, serving = await _call(target)
    except TimeoutError:
        return False, f"{head} -> no answer within {timeout:g} s"
    except OSError as exc:
        reason = str(exc) or exc.__class__.__name__
        return False, f"{head} -> {reason}; is the app listening there (--app)?"
    except _CheckFailed as exc:
        return False, f"{head} -> {exc}"
    if status == UNIMPLEMENTED:
        return False, (
            f"{head} -> UNIMPLEMENTED; the app has no grpc.health.v1 service;"
            " set --app-health '' to skip the check"
        )
    if status == NOT_FOUND:
        return False, (
            f"{head} -> NOT_FOUND; the app's health service does not know the service"
            f' "{target.service}": set --app-health grpc:SERVICE to one it knows, or grpc for the'
            " server as a whole"
        )
    if status != 0:
        name = GRPC_STATUS_NAMES.get(status, f"grpc-status {status}")
        return False, f"{head} -> {name}" + (f": {message}" if message else "")
    assert serving is not None
    name = SERVING_STATUSES.get(serving, f"status {serving}")
    if serving == SERVING:
        return True, f"{head} -> SERVING"
    if serving == SERVICE_UNKNOWN:
        return False, (
            f'{head} -> SERVICE_UNKNOWN; the app\'s health service does not know "{target.service}":'
            " set --app-health grpc:SERVICE to one it knows, or grpc for the server as a whole"
        )
    return False, f"{head} -> {name}; the app's health service says it cannot take calls"


async def _call(target: GrpcTarget) -> tuple[int, str, int | None]:
    """The call, on a connection of its own: (grpc-status, grpc-message, ServingStatus, None
    unless the status is 0)."""
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        return await _exchange(target, reader, writer)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _exchange(
    target: GrpcTarget, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> tuple[int, str, int | None]:
    connection = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8", validate_inbound_headers=True)
    )
    connection.initiate_connection()
    stream = connection.get_next_available_stream_id()
    connection.send_headers(
        stream,
        [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", HEALTH_CHECK_PATH),
            (":authority", target.authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("user-agent", "graceful-sidecar"),
        ],
    )
    connection.send_data(stream, encode_request(target.service), end_stream=True)
    writer.write(connection.data_to_send())
    await writer.drain()
    headers: dict[str, str] = {}
    trailers: dict[str, str] = {}
    body = bytearray()
    received = 0
    first = b""  # the connection's first bytes, until they show a SETTINGS frame's head
    ended = False
    while not ended:
        data = await reader.read(READ_CHUNK)
        if not data:
            raise _CheckFailed("the app closed the connection before it answered")
        if received < SERVER_PREFACE_BYTES:
            first += data
            _check_server_preface(first)
        received += len(data)
        if received > MAX_RESPONSE_BYTES:
            raise _CheckFailed(f"more than {MAX_RESPONSE_BYTES // 1024} KiB in answer: not a health check's")
        try:
            events = connection.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            raise _CheckFailed(
                f"not HTTP/2 ({exc.__class__.__name__}): does the app speak h2c at this port (--app h2c://)?"
            ) from None
        for event in events:
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream:
                headers = _fields(event.headers)
            elif isinstance(event, h2.events.DataReceived) and event.stream_id == stream:
                body += event.data
                connection.acknowledge_received_data(event.flow_controlled_length, stream)
            elif isinstance(event, h2.events.TrailersReceived) and event.stream_id == stream:
                trailers = _fields(event.headers)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream:
                ended = True
            elif isinstance(event, h2.events.StreamReset) and event.stream_id == stream:
                raise _CheckFailed(f"the stream was reset ({_error_name(event.error_code)})")
            elif isinstance(event, h2.events.ConnectionTerminated) and not ended:
                raise _CheckFailed(f"the app closed the connection (GOAWAY {_error_name(event.error_code)})")
        writer.write(connection.data_to_send())
    connection.close_connection()  # GOAWAY: a polite end, which servers do not log as an error
    writer.write(connection.data_to_send())
    return _outcome(headers, trailers, bytes(body))


# An HTTP/2 server's connection preface is a SETTINGS frame (RFC 9113 section 3.4): the first
# frame's 9-byte head says at once whether the app speaks HTTP/2 at all. (h2 would buffer an
# HTTP/1.1 answer, read as a frame several MB long, instead of refusing it.)
SERVER_PREFACE_BYTES = 9
SETTINGS_FRAME_TYPE = 0x4


def _check_server_preface(first: bytes) -> None:
    if first.startswith(b"HTTP/"[: len(first)]):
        if len(first) >= 5:
            raise _CheckFailed(
                "an HTTP/1.x answer: the app does not speak HTTP/2 with prior knowledge at this port;"
                " is --app h2c:// right, or is the gRPC server on another port?"
            )
    elif len(first) >= SERVER_PREFACE_BYTES and first[3] != SETTINGS_FRAME_TYPE:
        raise _CheckFailed(
            "not HTTP/2 (the first frame is no SETTINGS): does the app speak h2c at this port?"
        )


def _outcome(headers: dict[str, str], trailers: dict[str, str], body: bytes) -> tuple[int, str, int | None]:
    if headers.get(":status") != "200":
        raise _CheckFailed(f"HTTP {headers.get(':status', '?')}, not a gRPC answer")
    # A trailers-only response (an error, often) has grpc-status in its only HEADERS.
    status_text = trailers.get("grpc-status", headers.get("grpc-status"))
    if status_text is None or not status_text.isdigit():
        kind = headers.get("content-type", "none")
        raise _CheckFailed(f"no grpc-status (content-type {kind}): is this a gRPC server?")
    status = int(status_text)
    message = unquote(trailers.get("grpc-message", headers.get("grpc-message", "")))[:200]
    return status, message, decode_response(body) if status == 0 else None


def _fields(pairs: list[tuple[str, str]] | list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {
        (name.decode("latin-1") if isinstance(name, bytes) else name): (
            value.decode("latin-1") if isinstance(value, bytes) else value
        )
        for name, value in pairs
    }


def _error_name(code: object) -> str:
    return getattr(code, "name", str(code))
