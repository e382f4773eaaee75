"""HPACK as the sidecar speaks it (RFC 7541): the header blocks it sends, without a dynamic
table, and those it reads, decoded once per distinct block when no table can stand behind them.

Encoding. hpack's encoder (hpack.Encoder, which h2 used) indexes fields in a dynamic table it
keeps per connection, and encoding was among the largest items of a profile of the relay. An encoder that
never indexes is a pure function of each field, so a field's representation is computed once and
kept: a header block is then a join of cached pieces. Each is the static table's index when the
field is there whole, its name's index and the value as a literal when only the name is, else
both literal; literals are not Huffman-coded. A field the peer marked never-indexed (hpack's
NeverIndexedHeaderTuple, relayed as it came) stays so. The first block on a connection, and the
first after the peer changed its SETTINGS_HEADER_TABLE_SIZE, starts with a dynamic table size
update to 0, so the peer's decoder holds nothing for this connection either.

Decoding (hpack.Decoder, with its bound on the decoded size). Once a peer's encoder has set its
table to 0 (another sidecar's does, with its first block), a block means the same on any
connection whatever came before it: `BlockDecoder` then decodes each distinct block once and
finds it by its bytes afterwards, in a bounded cache shared by all connections. From a peer that
keeps a table (a gRPC library, h2load), the same bytes may mean other fields once the table
changed: a block is found by its bytes on its own connection only, and only while the table has
not changed since it was decoded (clients send the same request's fields as indexed bytes, which
change nothing, on every request after the first).

Measured beside hpack (a gRPC call's request, response and trailers, bench/header_blocks.py,
2026-12-07): 2-3 us of CPU to encode instead of 51-56, and hpack decodes these blocks as fast as
its own indexed ones (Huffman decoding in Python costs more than the bytes it saves between two
sidecars); a block found in the cache costs under a microsecond. The cost is bytes: a field sent
on every request of a connection is sent whole each time, about 190 bytes for a gRPC request's
block instead of 9 with a dynamic table.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hpack import Decoder
from hpack.hpack import encode_integer
from hpack.table import HeaderTable

# Representations kept, at most (a distinct value, say a request id, is encoded and not kept).
CACHE_ENTRIES = 4096
CACHE_BYTES = 256  # longer representations are not kept
# Decoded blocks kept, at most, and the longest kept (a request's block is 100-300 bytes).
DECODED_ENTRIES = 4096
DECODED_BYTES = 1024
MAX_HEADER_LIST_BYTES = 64 * 1024  # as on HTTP/1.1 (sidecar.http.fields)
KNOWN_PER_CONNECTION = 64  # decoded blocks kept per connection whose peer keeps a table
SIZE_UPDATE_TO_0 = b"\x20"  # RFC 7541 section 6.3, the integer 0 on 5 bits

_WHOLE: dict[tuple[bytes, bytes], int] = {}
_NAME: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, start=1):
    _WHOLE.setdefault((_name, _value), _index)
    _NAME.setdefault(_name, _index)

_cache: dict[Any, bytes] = {}
_decoded: dict[bytes, DecodedBlock] = {}


def _keep(cache: dict[Any, Any], key: Any, value: Any, entries: int) -> None:
    """Keep `value` in a bounded cache: a full one is emptied, so distinct keys (a request id, say)
    cannot grow it, nor pin what it holds."""
    if len(cache) >= entries:
        cache.clear()
    cache[key] = value


def _integer(value: int, prefix_bits: int, flags: int) -> bytes:
    """RFC 7541 section 5.1 (hpack's encoding), with the representation's flags in the prefix."""
    encoded = encode_integer(value, prefix_bits)
    encoded[0] |= flags
    return bytes(encoded)


def _literal(data: bytes) -> bytes:
    """RFC 7541 section 5.2, not Huffman-coded."""
    return _integer(len(data), 7, 0) + data


def representation(name: bytes, value: bytes, never_indexed: bool = False) -> bytes:
    """One field as a header block carries it without touching a dynamic table (section 6)."""
    if not never_indexed and (whole := _WHOLE.get((name, value))) is not None:
        return _integer(whole, 7, 0x80)  # 6.1, indexed
    flags = 0x10 if never_indexed else 0x00  # 6.2.3 never indexed, 6.2.2 without indexing
    if (named := _NAME.get(name)) is not None:
        return _integer(named, 4, flags) + _literal(value)
    return bytes((flags,)) + _literal(name) + _literal(value)


class FieldEncoder:
    """The encoder of one connection: `encode`, and `header_table_size`, set when the peer's
    SETTINGS_HEADER_TABLE_SIZE changes."""

    def __init__(self) -> None:
        self._update = True  # the next block starts with a table size update to 0

    @property
    def header_table_size(self) -> int:
        return 0

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._update = True

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        pieces = [SIZE_UPDATE_TO_0] if self._update else []
        self._update = False
        cache = _cache
        # Any, not tuple[bytes, bytes]: compiled (setup.py), a field typed as a tuple is unboxed,
        # and hpack's never-indexed subclass would come back a plain tuple
        fields: Iterable[Any] = headers
        for field in fields:
            # Fields are plain (name, value) tuples, or hpack's tuples as a peer's were decoded,
            # which compare equal to plain ones but may be never-indexed: kept apart.
            key: Any = field if type(field) is tuple else (*field, not getattr(field, "indexable", True))
            piece = cache.get(key)
            if piece is None:
                piece = representation(*key)
                if len(piece) <= CACHE_BYTES:
                    _keep(cache, key, piece, CACHE_ENTRIES)
            pieces.append(piece)
        return b"".join(pieces)


class _CountedTable(HeaderTable):
    """hpack's dynamic table, counting its changes: a block decoded while the count stays the
    same means the same fields until it moves."""

    changes = 0

    def add(self, name: bytes, value: bytes) -> None:
        self.changes += 1
        super().add(name, value)

    @property
    def maxsize(self) -> int:
        return self._maxsize

    @maxsize.setter
    def maxsize(self, value: int) -> None:
        self.changes += 1
        HeaderTable.maxsize.fset(self, value)  # type: ignore[attr-defined]


class DecodedBlock:
    """A header block's fields, and what the checks of them gave (`memo`, by check): a block
    found again by its bytes is not checked again either."""

    __slots__ = ("fields", "memo")

    def __init__(self, fields: tuple[tuple[bytes, bytes], ...]) -> None:
        self.fields = fields  # hpack's HeaderTuple (never-indexed ones stay so when relayed)
        self.memo: dict[object, Any] = {}


class BlockDecoder(Decoder):
    """hpack's decoder, decoding each distinct block once while it cannot mean
    anything else: on one connection, until the peer's dynamic table changes (a block of indexed
    fields, as clients send on every request after the first, is then found by its bytes); on
    every connection, once the peer's table is 0 before and after the block (a block that sets
    it otherwise is decoded, and not kept)."""

    def __init__(self, max_header_list_size: int = MAX_HEADER_LIST_BYTES) -> None:
        super().__init__(max_header_list_size=max_header_list_size)
        # hpack's Decoder uses header_table; this class reads it as `counted` (compiled, an
        # attribute typed here is checked when hpack's __init__ sets its own first)
        self.counted = self.header_table = _CountedTable()
        self._known: dict[bytes, tuple[int, DecodedBlock]] = {}

    def block(self, data: bytes) -> DecodedBlock:
        """The fields of `data` (raw bytes), found or decoded; raises what hpack raises."""
        block = bytes(data)
        table = self.counted
        if len(block) > DECODED_BYTES:
            return DecodedBlock(tuple(self.decode(block, raw=True)))
        tableless = table.maxsize == 0
        if tableless:
            found = _decoded.get(block)
            if found is not None:
                return found
        else:
            known = self._known.get(block)
            if known is not None and known[0] == table.changes:
                return known[1]
        changes = table.changes
        decoded = DecodedBlock(tuple(self.decode(block, raw=True)))
        if tableless and table.maxsize == 0:
            _keep(_decoded, block, decoded, DECODED_ENTRIES)
        elif table.changes == changes:
            _keep(self._known, block, (changes, decoded), KNOWN_PER_CONNECTION)
        return decoded
