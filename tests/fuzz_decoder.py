#!/usr/bin/env python3
"""Fuzz the wire decoder with hypothesis: a separate run, not part of the pytest suite.

    python tests/fuzz_decoder.py [--examples N] [--seed S]

Feeds ``greenockam.wire.FrameDecoder`` and ``decode_body`` with, by default, 100,000 generated
inputs of three kinds:

* random bytes, as a raw stream and as the body of a frame with a correct length prefix;
* streams of valid frames, mutated: bit flips, byte overwrites, truncation, insertions, deletions;
* valid streams left as they are, which must decode back to the messages they were made from;

each fed to a decoder whole and, separately, in random chunks (with and without the ``1#peer``
return prefix a TCP connection uses). For every input:

* nothing but :class:`~greenockam.errors.RemoteProtocolError` may be raised;
* the chunked decoder returns exactly the messages of the whole-stream decoder (counting the
  ones an error carries in ``error.messages``) and fails if and only if it fails;
* it never holds more than one incomplete frame (65537 bytes);
* ``decode_body`` of each complete frame agrees with the stream decoder.

Prints the number of inputs and of decoder errors (expected, for malformed input) and unexpected
exceptions (must be 0) with the time taken. Exits 1 on any unexpected exception or broken
invariant, after hypothesis has shrunk it to a minimal example.
"""

import argparse
import collections
import random
import struct
import sys
import time
from typing import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from greenockam.address import Address, Route
from greenockam.errors import RemoteProtocolError
from greenockam.wire import FrameDecoder, TransportMessage, decode_body, encode_frame

DEFAULT_EXAMPLES = 100_000
PREFIX = Address(1, "127.0.0.1:54321")
COUNTS: Counter[str] = collections.Counter()

# --- strategies ----------------------------------------------------------------------------------
#
# Hypothesis draws the shape of each case (its kind, the mutations, a seed); the bulk of a valid
# stream (addresses, payloads) and the chunk sizes come from ``random.Random(seed)``. Drawing every
# character through hypothesis costs ~5 ms an input; this keeps 100,000 inputs to a few minutes
# while a failure still replays exactly from the seed hypothesis reports.

_ALPHABET = "abcxyz_:#.[]0123456789" + "\u00e9\u4e2d\U0001f600"  # 1- to 4-byte UTF-8


def _random_value(rng):
    size = rng.choice((1, 1, 2, 4, 8, 12, 40, 130, 200))  # >= 128: a two-byte uint length
    return "".join(rng.choices(_ALPHABET, k=size))


def _random_message(rng, routes=None):
    if routes is None:
        routes = [
            Route(
                [Address(rng.choice((0, 0, 1, 1, 2, 255)), _random_value(rng))
                 for _ in range(rng.choice((0, 1, 1, 2, 3, 4)))]
            )
            for _ in (0, 1)
        ]
    size = rng.choice((0, 1, 5, 30, 127, 128, 400))
    payload = rng.getrandbits(8 * size).to_bytes(size, "little") if size else b""
    return TransportMessage(routes[0], routes[1], payload, rng.choice((0, 1, 1, 1, 2, 255)))


def _valid_stream(seed, frames):
    """(stream bytes, the messages in it); routes are often repeated, as on a real connection
    (the decoder's last-routes fast path)."""
    rng = random.Random(seed)
    first = _random_message(rng)
    same_routes = rng.random() < 0.5
    messages = [first] + [
        _random_message(rng, (first.onward_route, first.return_route) if same_routes else None)
        for _ in range(frames - 1)
    ]
    return b"".join(encode_frame(m) for m in messages), messages


_mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "truncate", "insert", "delete"]),
        st.integers(0, 1 << 16),  # position (taken modulo the length)
        st.integers(0, 255),  # bit index / byte value / count
        st.binary(min_size=1, max_size=8),  # inserted bytes
    ),
    min_size=1,
    max_size=4,
)


def _mutate(stream, mutations):
    data = bytearray(stream)
    for kind, pos, n, inserted in mutations:
        if not data:
            data += inserted
            continue
        pos %= len(data) + (kind in ("truncate", "insert"))
        if kind == "flip":
            data[pos] ^= 1 << (n % 8)
        elif kind == "set":
            data[pos] = n
        elif kind == "truncate":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = inserted
        else:
            del data[pos : pos + 1 + n % 16]
    return bytes(data)


@st.composite
def _cases(draw):
    """(kind, stream, expected messages or None)."""
    kind = draw(st.sampled_from(["random stream", "random body", "mutated", "valid"]))
    if kind == "random stream":
        return kind, draw(st.binary(max_size=300)), None
    if kind == "random body":
        body = draw(st.binary(max_size=300))
        return kind, struct.pack(">H", len(body)) + body, None
    stream, messages = _valid_stream(draw(st.integers(0, 2**32)), draw(st.integers(1, 4)))
    if kind == "valid":
        return kind, stream, messages
    return kind, _mutate(stream, draw(_mutations)), None


# The chunk sizes: a seed for random.Random and the largest chunk (1: byte by byte).
_chunkings = st.tuples(st.integers(0, 2**32), st.sampled_from([1, 2, 7, 64, 4096]))


# --- the property --------------------------------------------------------------------------------


def _decode_whole(stream, prefix):
    decoder = FrameDecoder(prefix)
    try:
        return decoder.feed(stream), None, decoder
    except RemoteProtocolError as exc:
        return list(exc.messages), exc, decoder


def _decode_chunked(stream, chunking, prefix):
    seed, largest = chunking
    rng = random.Random(seed)
    decoder = FrameDecoder(prefix)
    out = []
    pos = 0
    while pos < len(stream):
        size = rng.randint(1, largest)
        try:
            out += decoder.feed(stream[pos : pos + size])
        except RemoteProtocolError as exc:
            return out + list(exc.messages), exc
        assert decoder.buffered <= 65537, decoder.buffered
        pos += size
    return out, None


def _complete_bodies(stream):
    """The bodies of the complete frames at the start of ``stream``."""
    bodies = []
    pos = 0
    while len(stream) - pos >= 2:
        (n,) = struct.unpack_from(">H", stream, pos)
        if pos + 2 + n > len(stream):
            break
        bodies.append(stream[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return bodies


def _without_prefix(msg, prefix):
    if prefix is None:
        return msg
    assert msg.return_route[0] == prefix, msg
    return TransportMessage(msg.onward_route, Route(msg.return_route[1:]), msg.payload, msg.version)


def check(case, chunking, use_prefix):
    kind, stream, expected = case
    prefix = PREFIX if use_prefix else None
    COUNTS["inputs"] += 1
    COUNTS[kind] += 1
    try:
        whole, whole_error, decoder = _decode_whole(stream, prefix)
        chunked, chunked_error = _decode_chunked(stream, chunking, prefix)
        assert chunked == whole, "chunked and whole-stream decoding disagree"
        assert (chunked_error is None) == (whole_error is None), (chunked_error, whole_error)
        if whole_error is None:
            assert decoder.buffered <= 65537
        else:
            COUNTS["decoder errors"] += 1
        if expected is not None:
            assert whole_error is None and [_without_prefix(m, prefix) for m in whole] == expected
        for i, body in enumerate(_complete_bodies(stream)):
            try:
                single = decode_body(body)
            except RemoteProtocolError:
                COUNTS["decode_body errors"] += 1
                # The stream decoder must stop at this frame too.
                assert whole_error is not None and len(whole) <= i
                break
            if i < len(whole):
                assert _without_prefix(whole[i], prefix) == single
    except RemoteProtocolError:
        raise AssertionError("RemoteProtocolError escaped where it must be caught") from None
    except AssertionError:
        COUNTS["broken invariants"] += 1
        raise
    except Exception:
        COUNTS["unexpected exceptions"] += 1
        raise


def make_fuzz(examples):
    """The hypothesis test with ``examples`` generated inputs."""

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=_cases(), chunking=_chunkings, use_prefix=st.booleans())
    def fuzz_decoder(case, chunking, use_prefix):
        check(case, chunking, use_prefix)

    return fuzz_decoder


def main(argv=None):
    parser = argparse.ArgumentParser(description="fuzz greenockam's wire decoder")
    parser.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES, help="inputs to generate")
    parser.add_argument("--seed", type=int, default=None, help="hypothesis seed (default random)")
    args = parser.parse_args(argv)
    fuzz = make_fuzz(args.examples)
    if args.seed is not None:
        fuzz = hypothesis_seed(args.seed)(fuzz)
    start = time.perf_counter()
    failure = None
    try:
        fuzz()
    except Exception as exc:  # hypothesis has printed the minimal falsifying example
        failure = exc
    elapsed = time.perf_counter() - start
    print(f"inputs: {COUNTS['inputs']:,} (asked for {args.examples:,} generated examples)")
    kinds = ("random stream", "random body", "mutated", "valid")
    print("by kind: " + ", ".join(f"{k} {COUNTS[k]:,}" for k in kinds))
    print(
        f"RemoteProtocolError raised (malformed input, expected): stream decoder "
        f"{COUNTS['decoder errors']:,}, decode_body {COUNTS['decode_body errors']:,}"
    )
    print(
        f"unexpected exceptions: {COUNTS['unexpected exceptions']:,}, "
        f"broken invariants: {COUNTS['broken invariants']:,}"
    )
    print(f"time: {elapsed:.1f} s ({COUNTS['inputs'] / elapsed:,.0f} inputs/s)")
    if failure is not None:
        print(f"FAIL: {type(failure).__name__}: {failure}")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
