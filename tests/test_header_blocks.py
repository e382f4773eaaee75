"""The sidecar's HPACK (sidecar.http.h2c.header_blocks), pure logic. The encoder: hpack's own
decoder (h2's, and a reference implementation of RFC 7541) reads back exactly the fields encoded,
in order, block after block on one connection, never-indexed ones marked so, and nothing it
decodes lands in its dynamic table. The decoder: what it finds by a block's bytes is what hpack
decodes, across connections for peers without a table, and on one connection only while the
table of a peer that keeps one has not changed."""

from __future__ import annotations

from hpack import Decoder, Encoder, HeaderTuple, NeverIndexedHeaderTuple
from hypothesis import given
from hypothesis import strategies as st

from sidecar.http.h2c import header_blocks
from sidecar.http.h2c.header_blocks import (
    CACHE_ENTRIES,
    DECODED_ENTRIES,
    BlockDecoder,
    FieldEncoder,
    representation,
)

names = st.one_of(
    st.sampled_from([b":status", b":path", b"content-type", b"grpc-status", b"te", b"x-request-id"]),
    st.binary(min_size=1, max_size=40).map(bytes.lower),
)
values = st.one_of(st.sampled_from([b"200", b"/", b"trailers", b"0", b""]), st.binary(max_size=300))
blocks = st.lists(st.lists(st.tuples(names, values), max_size=12), min_size=1, max_size=5)


@given(blocks)
def test_hpack_reads_back_every_block(headers_per_block: list[list[tuple[bytes, bytes]]]) -> None:
    """Block after block on one connection, hpack decodes the fields as given, indexes none."""
    encoder, decoder = FieldEncoder(), Decoder()
    for headers in headers_per_block:
        assert decoder.decode(encoder.encode(headers), raw=True) == headers
        assert len(decoder.header_table.dynamic_entries) == 0
    assert decoder.header_table_size == 0  # the first block's size update


def test_never_indexed_fields_stay_so() -> None:
    """A never-indexed field is sent never-indexed, even after its plain twin was cached."""
    encoder, decoder = FieldEncoder(), Decoder()
    fields = [HeaderTuple(b"accept", b"*/*"), NeverIndexedHeaderTuple(b"authorization", b"secret")]
    plain_first = encoder.encode([(b"authorization", b"secret")])  # the plain twin, cached first
    decoder.decode(plain_first, raw=True)
    decoded = decoder.decode(encoder.encode(fields), raw=True)
    assert decoded == fields
    assert [type(field) for field in decoded] == [HeaderTuple, NeverIndexedHeaderTuple]


def test_a_settings_change_brings_the_size_update_again() -> None:
    """The size update to 0 opens the first block, and the first after a SETTINGS change."""
    encoder = FieldEncoder()
    assert encoder.encode([(b":status", b"200")]) == b"\x20\x88"  # update to 0, static index 8
    assert encoder.encode([(b":status", b"200")]) == b"\x88"
    encoder.header_table_size = 1024  # as h2 sets it on the peer's SETTINGS_HEADER_TABLE_SIZE
    assert encoder.encode([(b":status", b"200")]) == b"\x20\x88"


def test_distinct_values_do_not_grow_the_cache_past_its_bound() -> None:
    """Ever new values (request ids) leave the cache within CACHE_ENTRIES."""
    encoder = FieldEncoder()
    for serial in range(CACHE_ENTRIES * 2 + 5):
        encoder.encode([(b"x-request-id", b"%d" % serial)])
        assert len(header_blocks._cache) <= CACHE_ENTRIES


def test_long_integers_and_literals() -> None:
    """A value of 300 bytes needs a length past the 7-bit prefix (RFC 7541 section 5.1)."""
    decoder = Decoder()
    piece = representation(b"x-long", b"v" * 300)
    assert decoder.decode(piece, raw=True) == [(b"x-long", b"v" * 300)]


@given(blocks)
def test_blocks_of_a_tableless_peer_decode_alike_found_or_not(
    headers_per_block: list[list[tuple[bytes, bytes]]],
) -> None:
    """Another sidecar's blocks: the second connection finds them by their bytes, as decoded."""
    for _ in range(2):  # two connections from two sidecars: the second finds the first's blocks
        encoder, decoder, reference = FieldEncoder(), BlockDecoder(), Decoder()
        for headers in headers_per_block:
            block = encoder.encode(headers)
            assert list(decoder.block(block).fields) == reference.decode(block, raw=True) == headers


def test_the_same_bytes_from_a_peer_with_a_table_are_decoded_each_time() -> None:
    """From hpack.Encoder, one byte can name other fields as its table changes: never cached."""
    encoder, decoder = Encoder(), BlockDecoder()
    first = [(b"x-tenant", b"a")]
    decoder.block(encoder.encode(first))  # now at index 62
    index_62 = b"\xbe"
    assert list(decoder.block(index_62).fields) == first
    decoder.block(encoder.encode([(b"x-tenant", b"b")]))  # index 62 is this one now
    assert list(decoder.block(index_62).fields) == [(b"x-tenant", b"b")]
    assert index_62 not in header_blocks._decoded


@given(st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=12), blocks)
def test_blocks_of_a_peer_with_a_table_decode_as_hpack_does(
    picks: list[int], pool: list[list[tuple[bytes, bytes]]]
) -> None:
    """From hpack.Encoder (a dynamic table, as gRPC clients and h2load keep), requests picked
    from a few, so that the same indexed bytes come again, before and after the table changed."""
    encoder, decoder, reference = Encoder(), BlockDecoder(), Decoder()
    for pick in picks:
        headers = pool[pick % len(pool)]
        block = encoder.encode(headers)
        assert list(decoder.block(block).fields) == reference.decode(block, raw=True) == headers


def test_indexed_blocks_from_a_peer_with_a_table_are_found_until_it_changes() -> None:
    """The second request's block (all indexed) is found by its bytes, until the table moves."""
    encoder, decoder = Encoder(), BlockDecoder()
    request = [(b":method", b"GET"), (b"x-tenant", b"a")]
    decoder.block(encoder.encode(request))  # x-tenant: a goes in the table
    indexed = encoder.encode(request)
    assert list(decoder.block(indexed).fields) == request
    assert indexed in decoder._known
    assert list(decoder.block(indexed).fields) == request  # found
    decoder.block(encoder.encode([(b"x-tenant", b"b")]))  # the table moves
    assert list(decoder.block(indexed).fields) == [(b":method", b"GET"), (b"x-tenant", b"b")]


def test_a_block_that_grows_the_table_is_not_kept() -> None:
    """A size update to more than 0 makes the next blocks depend on it: decoded, not kept."""
    decoder = BlockDecoder()
    decoder.block(b"\x20\x88")  # table to 0, :status 200
    grow = b"\x3f\xe1\x1f\x88"  # table to 4096 (RFC 7541 5.1: 31 + 4065), :status 200
    assert list(decoder.block(grow).fields) == [(b":status", b"200")]
    assert grow not in header_blocks._decoded
    assert decoder.header_table_size == 4096


def test_distinct_blocks_do_not_grow_the_decoded_cache_past_its_bound() -> None:
    """Ever new blocks leave the decoded cache within DECODED_ENTRIES."""
    encoder, decoder = FieldEncoder(), BlockDecoder()
    for serial in range(DECODED_ENTRIES * 2 + 5):
        decoder.block(encoder.encode([(b"x-request-id", b"%d" % serial)]))
        assert len(header_blocks._decoded) <= DECODED_ENTRIES
