"""What a header block costs the sidecar to encode, and its peer (another sidecar) to decode:
hpack.Encoder (h2's own, with a dynamic table) beside sidecar.http.h2c.header_blocks (no dynamic
table, pieces cached), for the blocks of one gRPC call: its request, response and trailers.

    .venv/bin/python bench/header_blocks.py [--calls 20000]

CPU per call, in microseconds, min of 5 repetitions (timeit), after the encoder has seen the call
once (hpack's table holds its fields; the pieces are cached); bytes per block; and what hpack's
Decoder, the one h2 uses on the other side, spends on each kind of block: hpack's indexed one,
the field encoder's, and a Huffman-coded literal one (what a table-less encoder that compressed
strings would send); and the sidecar's BlockDecoder on the same block, which finds a block by its
bytes once the peer's table is 0 (the field encoder's and the Huffman one; hpack's indexed block
is decoded each time). Pure CPU, one process: ratios compare like with like on a shared machine.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

import hpack
from benchcommon import header

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sidecar.http.h2c.header_blocks import BlockDecoder, FieldEncoder

REQUEST = [
    (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"127.0.0.1:40123"),
    (b":path", b"/test.Echo/Unary"), (b"te", b"trailers"), (b"content-type", b"application/grpc"),
    (b"user-agent", b"grpc-python/1.66.1 grpc-c/43.0.0 (linux; chttp2)"),
    (b"grpc-accept-encoding", b"identity, deflate, gzip"), (b"x-forwarded-for", b"127.0.0.1"),
]  # fmt: skip
RESPONSE = [
    (b":status", b"200"),
    (b"content-type", b"application/grpc"),
    (b"grpc-accept-encoding", b"identity"),
]
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"")]
CALL = (REQUEST, RESPONSE, TRAILERS)


def per_call_us(function: object, calls: int) -> float:
    return min(timeit.repeat(function, number=calls, repeat=5)) / calls * 1e6  # type: ignore[arg-type]


def huffman() -> hpack.Encoder:
    """Literals only, Huffman-coded: the third kind of block."""
    encoder = hpack.Encoder()
    encoder.header_table_size = 0
    return encoder


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20000)
    calls = parser.parse_args().calls
    header("Header blocks: hpack.Encoder beside the field encoder")
    encoders = {"hpack.Encoder": hpack.Encoder, "field encoder": FieldEncoder, "huffman, no table": huffman}
    columns = (
        "encode us/call",
        "request B",
        "response B",
        "trailers B",
        "decode request us",
        "BlockDecoder us",
    )
    print(f"{'encoder':<18}", *(f"{column:>18}" for column in columns))
    for name, new_encoder in encoders.items():
        encoder = new_encoder()
        decoder = hpack.Decoder()
        for block in CALL:  # the first call: both tables filled, pieces cached
            decoder.decode(encoder.encode(block), raw=True)
        sizes = [len(encoder.encode(block)) for block in CALL]
        encode = per_call_us(lambda e=encoder: [e.encode(block) for block in CALL], calls)
        # The same call again adds nothing to hpack's table: its request is all indexes now,
        # which the decoder, having seen the first call, reads again and again.
        request = encoder.encode(REQUEST)

        def decode(d: hpack.Decoder = decoder, block: bytes = request) -> None:
            if d.decode(block, raw=True) != REQUEST:
                raise AssertionError("decoded otherwise")

        decoding = per_call_us(decode, calls)
        # The sidecar's decoder, on a connection that has seen the call: what it finds by bytes.
        encoder, block_decoder = new_encoder(), BlockDecoder()
        for block in CALL:
            block_decoder.block(encoder.encode(block))
        request = encoder.encode(REQUEST)
        found = per_call_us(lambda d=block_decoder, block=request: d.decode(block, raw=True), calls)
        print(
            f"{name:<18}", f"{encode:>18.1f}", *(f"{size:>18}" for size in sizes), f"{decoding:>18.1f}",
            f"{found:>18.1f}",
        )  # fmt: skip


if __name__ == "__main__":
    main()
