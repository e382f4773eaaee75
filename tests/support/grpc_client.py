"""Synchronous helpers over grpcio's client for the HTTP/2 tests: calls of the services of
tests/support/grpc_app.py (which imports the constants of its protocol from here).

Every helper takes a `target`: an address ("127.0.0.1:PORT"; a channel is opened for the call and
closed after it) or a channel from `channel()`, which a test keeps to send many calls over one
HTTP/2 connection (as a real client does: through a consumer sidecar, each call may go to
another instance). The address is all a test changes to send the same calls through a sidecar.
Every call has a deadline (`timeout`), so that no test waits for ever. A failed call raises
grpc.RpcError; `failure()` turns one into a `CallError` to compare.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped]
from grpc_health.v1 import health_pb2, health_pb2_grpc  # type: ignore[import-untyped]

SERVICE = "test.Echo"
CONTROL = "test.Control"
# A Unary request that starts with this, then a JSON object, asks grpc_app for more than an echo.
COMMAND_PREFIX = b"cmd:"
# A Unary answer: the instance's name, this byte, then the request's bytes.
INSTANCE_SEPARATOR = b"\x00"
# 4 MiB messages each way with room to spare, on both sides (grpcio receives 4 MiB by default).
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MESSAGE_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
CALL_TIMEOUT = 10.0

Metadata = Sequence[tuple[str, str | bytes]]
Target = Any  # str (an address) or grpc.Channel (grpcio has no type hints)


def status_code(code: str | int | grpc.StatusCode) -> grpc.StatusCode:
    """grpc.StatusCode by name ("NOT_FOUND") or number (5)."""
    for member in grpc.StatusCode:
        if code in (member, member.name, member.value[0]):
            return member
    raise ValueError(f"no gRPC status {code!r}")


def channel(target: str, options: Sequence[tuple[str, Any]] = ()) -> Any:
    """An insecure channel (h2c) to `target` that sends and receives 4 MiB messages; close it
    (or use it as a context manager) when done."""
    return grpc.insecure_channel(target, options=[*MESSAGE_OPTIONS, *options])


@contextmanager
def _using(target: Target) -> Iterator[Any]:
    if isinstance(target, str):
        with channel(target) as opened:
            yield opened
    else:
        yield target


def _method(chan: Any, kind: str, service: str, method: str) -> Any:
    # No serializers: requests and responses are the message bytes themselves.
    return getattr(chan, kind)(f"/{service}/{method}")


@dataclass(frozen=True)
class CallError:
    """How a call failed, as its client saw it."""

    code: grpc.StatusCode
    details: str
    trailers: tuple[tuple[str, str | bytes], ...]

    def trailer(self, key: str) -> str | bytes | None:
        """The value of trailing metadata `key` (bytes for a `-bin` key), None if absent."""
        return next((value for name, value in self.trailers if name == key), None)


def call_error(error: grpc.RpcError) -> CallError:
    """A grpc.RpcError (also a grpc.Call) as a CallError."""
    trailers = tuple((item[0], item[1]) for item in error.trailing_metadata() or ())
    return CallError(error.code(), error.details() or "", trailers)


def failure(call: Callable[[], object]) -> CallError:
    """Runs `call`, which must fail with grpc.RpcError, and says how it failed."""
    try:
        result = call()
    except grpc.RpcError as error:
        return call_error(error)
    raise AssertionError(f"the call did not fail: {result!r}")


def command(
    sleep: float | None = None,
    abort: str | int | grpc.StatusCode | None = None,
    details: str = "",
    trailers: Metadata = (),
) -> bytes:
    """A Unary request that makes grpc_app sleep `sleep` seconds (ended early if the call is),
    then fail with status `abort`, `details` and trailing metadata `trailers` (a `-bin` key's
    value as bytes), or echo as usual without `abort`."""
    body: dict[str, Any] = {}
    if sleep is not None:
        body["sleep"] = sleep
    if abort is not None:
        body["abort"] = status_code(abort).name
        body["details"] = details
        body["trailers"] = [
            [key, base64.b64encode(value).decode() if isinstance(value, bytes) else value]
            for key, value in trailers
        ]
    return COMMAND_PREFIX + json.dumps(body).encode()


def unary(
    target: Target, payload: bytes, timeout: float = CALL_TIMEOUT, metadata: Metadata = ()
) -> tuple[str, bytes]:
    """A Unary call: (the instance that answered, the payload echoed)."""
    with _using(target) as chan:
        answer: bytes = _method(chan, "unary_unary", SERVICE, "Unary")(
            payload, timeout=timeout, metadata=metadata
        )
    instance, separator, echoed = answer.partition(INSTANCE_SEPARATOR)
    assert separator, f"not an answer of grpc_app: {answer[:100]!r}"
    return instance.decode(), echoed


def unary_future(chan: Any, payload: bytes, timeout: float = CALL_TIMEOUT, metadata: Metadata = ()) -> Any:
    """A Unary call started on channel `chan` and not awaited: a grpc.Future (and grpc.Call),
    which a test may `.cancel()`, or read with `.result()`."""
    return _method(chan, "unary_unary", SERVICE, "Unary").future(payload, timeout=timeout, metadata=metadata)


def error_call(
    target: Target,
    code: str | int | grpc.StatusCode,
    details: str = "",
    trailers: Metadata = (),
    timeout: float = CALL_TIMEOUT,
) -> CallError:
    """A Unary call that grpc_app fails with `code`, `details` and trailing metadata `trailers`:
    how the client saw it fail."""
    return failure(lambda: unary(target, command(abort=code, details=details, trailers=trailers), timeout))


def server_stream_call(
    chan: Any,
    count: int,
    size: int,
    interval: float = 0.0,
    timeout: float = CALL_TIMEOUT,
    metadata: Metadata = (),
) -> Any:
    """A ServerStream call started on channel `chan`: an iterator of its messages (and a
    grpc.Call: `.initial_metadata()`, `.cancel()`), for tests that read it as it goes."""
    request = json.dumps({"count": count, "size": size, "interval": interval}).encode()
    return _method(chan, "unary_stream", SERVICE, "ServerStream")(request, timeout=timeout, metadata=metadata)


def server_stream(
    target: Target, count: int, size: int, interval: float = 0.0, timeout: float = CALL_TIMEOUT
) -> tuple[str, list[bytes]]:
    """A ServerStream call of `count` messages of `size` bytes, `interval` seconds apart, read
    whole: (the instance, the messages)."""
    with _using(target) as chan:
        call = server_stream_call(chan, count, size, interval, timeout)
        messages = list(call)
        return instance_of(call), messages


def client_stream(
    target: Target, messages: Iterable[bytes], timeout: float = CALL_TIMEOUT, metadata: Metadata = ()
) -> dict[str, Any]:
    """A ClientStream call sending `messages`: {"instance", "messages", "bytes"} as received."""
    with _using(target) as chan:
        answer, _ = _method(chan, "stream_unary", SERVICE, "ClientStream").with_call(
            iter(messages), timeout=timeout, metadata=metadata
        )
    result: dict[str, Any] = json.loads(answer)
    return result


def bidi_call(
    chan: Any, messages: Iterable[bytes], timeout: float = CALL_TIMEOUT, metadata: Metadata = ()
) -> Any:
    """A Bidi call started on channel `chan`, sending `messages` (an iterator the test may feed
    as it reads: a queue's iterator): an iterator of the echoes, and a grpc.Call."""
    return _method(chan, "stream_stream", SERVICE, "Bidi")(iter(messages), timeout=timeout, metadata=metadata)


def bidi(target: Target, messages: Iterable[bytes], timeout: float = CALL_TIMEOUT) -> tuple[str, list[bytes]]:
    """A Bidi call sending `messages`: (the instance, the echoes read whole)."""
    with _using(target) as chan:
        call = bidi_call(chan, messages, timeout)
        echoes = list(call)
        return instance_of(call), echoes


def instance_of(call: Any) -> str:
    """The instance that answered a streaming call (its initial metadata `instance`)."""
    return next(str(item[1]) for item in call.initial_metadata() if item[0] == "instance")


def health_status(target: Target, service: str = "", timeout: float = CALL_TIMEOUT) -> str | None:
    """The standard health service's status of `service` ("SERVING", ...), or None when the
    call fails (nothing listens, no such service...)."""
    with _using(target) as chan:
        stub = health_pb2_grpc.HealthStub(chan)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return None
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def set_health(target: Target, status: str, service: str = "") -> None:
    """Sets grpc_app's health status of `service` ("" for the server as a whole)."""
    request = json.dumps({"service": service, "status": status}).encode()
    with _using(target) as chan:
        _method(chan, "unary_unary", CONTROL, "SetHealth")(request, timeout=CALL_TIMEOUT)


def stats(target: Target) -> dict[str, Any]:
    """grpc_app's counts: {"instance", "served", "inflight", "cancelled", "calls", "marks"}."""
    with _using(target) as chan:
        answer = _method(chan, "unary_unary", CONTROL, "Stats")(b"", timeout=CALL_TIMEOUT)
    result: dict[str, Any] = json.loads(answer)
    return result
