"""What makes a received HTTP/2 header list malformed (RFC 9113 sections 8.2 and 8.3): a stream
error, so that the app never sees a request the sidecar could not read as the RFC reads it.

Each check raises `Malformed`; those that pass give the content-length the DATA frames must then
add up to (section 8.1.1), None without one. A field found good is remembered (a bounded set):
clients send the same fields on every request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from sidecar.http.h2c.header_blocks import DecodedBlock

Headers = Sequence[tuple[bytes, bytes]]
T = TypeVar("T")

# Section 8.2.2: connection-specific fields have no place in HTTP/2 (`te` only as "trailers").
CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade")
)
REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))
# Section 8.2.1: a name is lower case, without controls, spaces, separators or non-ASCII; a
# value has no NUL, CR or LF and no white space at either end.
BAD_NAME = re.compile(rb"[^!#$%&'*+\-.^_`|~0-9a-z]")
BAD_VALUE = re.compile(rb"[\x00\r\n]|\A[ \t]|[ \t]\Z")
GOOD_FIELDS_KEPT = 4096
_good: set[tuple[bytes, bytes]] = set()


class Malformed(Exception):
    """A malformed header list: a stream error PROTOCOL_ERROR (section 8.1.1)."""


def _regular(name: bytes, value: bytes) -> None:
    field = (name, value)
    if field in _good:
        return
    if not name or BAD_NAME.search(name):
        raise Malformed(f"field name {name!r}")
    if BAD_VALUE.search(value):
        raise Malformed(f"the value of {name.decode('latin-1')}")
    if name in CONNECTION_SPECIFIC or (name == b"te" and value != b"trailers"):
        raise Malformed(f"connection-specific field {name.decode('latin-1')}")
    if len(_good) >= GOOD_FIELDS_KEPT:
        _good.clear()  # distinct fields cannot grow it
    _good.add(field)


def _length(value: bytes, length: int | None) -> int:
    if not value.isdigit() or (length is not None and int(value) != length):
        raise Malformed("content-length")
    return int(value)


def check_request(headers: Headers) -> int | None:
    """Section 8.3.1: the four pseudo-fields of a request, once each and first; CONNECT has
    neither :scheme nor :path."""
    pseudo: dict[bytes, bytes] = {}
    length: int | None = None
    regular = False
    for name, value in headers:
        if name[:1] == b":":
            if regular or name not in REQUEST_PSEUDO or name in pseudo:
                raise Malformed(f"pseudo-field {name.decode('latin-1')}")
            pseudo[name] = value
            continue
        regular = True
        _regular(name, value)
        if name == b"content-length":
            length = _length(value, length)
    method = pseudo.get(b":method")
    if method == b"CONNECT":
        if b":authority" not in pseudo or b":scheme" in pseudo or b":path" in pseudo:
            raise Malformed("CONNECT's pseudo-fields")
    elif method is None or b":scheme" not in pseudo or not pseudo.get(b":path"):
        raise Malformed("a request without :method, :scheme or :path")
    return length


def check_response(headers: Headers) -> tuple[int, int | None]:
    """Section 8.3.2: :status, three digits, first and alone; gives it and the content-length."""
    status: int | None = None
    length: int | None = None
    for index, (name, value) in enumerate(headers):
        if name[:1] == b":":
            if name != b":status" or index != 0 or len(value) != 3 or not value.isdigit():
                raise Malformed(f"pseudo-field {name.decode('latin-1')}")
            status = int(value)
            continue
        _regular(name, value)
        if name == b"content-length":
            length = _length(value, length)
    if status is None:
        raise Malformed("a response without :status")
    return status, length


def check_trailers(headers: Headers) -> None:
    """Section 8.1: trailers carry no pseudo-field."""
    for name, value in headers:
        if name[:1] == b":":
            raise Malformed(f"pseudo-field {name.decode('latin-1')} in trailers")
        _regular(name, value)


def checked(block: DecodedBlock, check: Callable[[Headers], T]) -> T:
    """`check(block.fields)`, once per block: what it gave, or why it was malformed, is kept
    with the block, which the decoder finds again by its bytes."""
    memo: tuple[Any, str | None] | None = block.memo.get(check)
    if memo is None:
        try:
            memo = (check(block.fields), None)
        except Malformed as exc:
            memo = (None, str(exc))
        block.memo[check] = memo
    result, fault = memo
    if fault is not None:
        raise Malformed(fault)
    return cast(T, result)
