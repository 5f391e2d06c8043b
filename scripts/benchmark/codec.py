"""The figures measured in-process with ``timeit``: greenockam's codecs, without a network.

The codec role (``bench.py --role codec``) runs every function of :data:`MEASURES` in order and
emits their fields merged into one JSON line; :mod:`.report` reads them as the runs of the
``codec`` phase. Each function prepares its data, times what it measures with :func:`best_ns`
and returns its fields. A new in-process figure is one more function here (appended to
:data:`MEASURES`) and one row in :data:`.report.ROWS` naming its field; a figure comparing two
ways of doing the same work (e.g. a typed payload against ``json.dumps`` + ``json.loads`` of the
same data) times both here and returns their quotient as one field.
"""

from __future__ import annotations

import timeit
from typing import Any, Callable, Dict, List

from .common import MESSAGE, emit

Measure = Callable[[int], Dict[str, float]]  # number of calls per timing -> fields


def best_ns(fn: Callable[[], Any], number: int) -> float:
    """Nanoseconds per call of ``fn``: the best of 5 timings of ``number`` calls each.

    The call of ``fn`` itself is included (see :func:`call_overhead`).
    """
    return min(timeit.Timer(fn).repeat(repeat=5, number=number)) / number * 1e9


def frame_codec(number: int) -> Dict[str, float]:
    """The frame codec on the echo reply as the server's transport encodes it (onward route
    ``[1#client, app]``, first hop popped): its size, encode, encode of the already popped
    message, decode with ``FrameDecoder.feed``, and encode + decode."""
    from greenockam import BARE, FrameDecoder, Route, TransportMessage, encode_frame
    from greenockam.wire import RouteCache

    payload = BARE.encode(MESSAGE)
    reply_popped = TransportMessage(
        Route(["1#127.0.0.1:54321", "app"]), Route(["echo_service"]), payload
    )
    reply_plain = TransportMessage(Route(["app"]), Route(["echo_service"]), payload)
    cache = RouteCache()  # as the transport encodes a message forwarded from a connection
    frame = encode_frame(reply_popped, True, cache)
    assert frame == encode_frame(reply_plain)
    feed = FrameDecoder().feed
    (decoded,) = feed(frame)
    assert decoded[1] == reply_plain[1] and decoded[2] == reply_plain[2] and decoded[3] == payload
    return {
        "frame_bytes": len(frame),
        "encode_ns": best_ns(lambda: encode_frame(reply_popped, True, cache), number),
        "encode_plain_ns": best_ns(lambda: encode_frame(reply_plain, False, cache), number),
        "decode_ns": best_ns(lambda: feed(frame), number),
        "roundtrip_ns": best_ns(lambda: feed(encode_frame(reply_popped, True, cache)), number),
    }


def payload_codec(number: int) -> Dict[str, float]:
    """The BARE payload codec on MESSAGE: encode and decode."""
    from greenockam import BARE

    payload = BARE.encode(MESSAGE)
    return {
        "payload_encode_ns": best_ns(lambda: BARE.encode(MESSAGE), number),
        "payload_decode_ns": best_ns(lambda: BARE.decode(payload, str), number),
    }


def route_conversion(number: int) -> Dict[str, float]:
    """``as_route`` on the list of two strings an application passes to every ``send``."""
    from greenockam.address import as_route

    route_list = ["1#127.0.0.1:10222", "echo_service"]
    return {"as_route_list_ns": best_ns(lambda: as_route(route_list), number)}


def call_overhead(number: int) -> Dict[str, float]:
    """The call of an empty lambda: part of every figure above, measured to be reported."""
    return {"call_overhead_ns": best_ns(lambda: None, number)}


def typed_codec(number: int) -> Dict[str, float]:
    """Typed messages (docs/typed-messages.md) in bare, encode + decode, against
    ``json.dumps`` + ``json.loads`` of the same data as a dict (C code in the standard library):
    a small struct (a u64, a str, bytes) and a struct holding a Route and an Address."""
    import json
    from dataclasses import make_dataclass

    from greenockam import BARE, Address, Route
    from greenockam.codecs import U64

    # make_dataclass: real annotations, not the strings this module's future import makes
    Small = make_dataclass("Small", [("id", U64), ("name", str), ("data", bytes)])
    Forward = make_dataclass("Forward", [("route", Route), ("name", str), ("address", Address)])
    small = Small(123456789, "hello world", bytes(range(8)))
    small_json = {"id": 123456789, "name": "hello world", "data": small.data.hex()}
    forward = Forward(
        Route(["1#127.0.0.1:4000", "forwarding_service"]), "a1b2c3d4", Address(0, "echoer")
    )
    forward_json = {
        "route": [[1, "127.0.0.1:4000"], [0, "forwarding_service"]],
        "name": "a1b2c3d4",
        "address": [0, "echoer"],
    }
    fields: Dict[str, float] = {}
    cases = (("struct", small, small_json), ("route_struct", forward, forward_json))
    for label, value, as_dict in cases:
        encode, decode = BARE.encode, BARE.decoder(type(value))
        assert decode(encode(value)) == value
        typed_ns = best_ns(lambda: decode(encode(value)), number)  # noqa: B023 (used at once)
        json_ns = best_ns(lambda: json.loads(json.dumps(as_dict)), number)  # noqa: B023
        fields[f"typed_{label}_ns"] = typed_ns
        fields[f"json_{label}_ns"] = json_ns
        fields[f"typed_{label}_ratio"] = typed_ns / json_ns
    return fields


MEASURES: List[Measure] = [
    frame_codec,
    payload_codec,
    route_conversion,
    call_overhead,
    typed_codec,
]


def measure(number: int) -> Dict[str, float]:
    """Every in-process figure, by field name, each timed over ``number`` calls."""
    fields: Dict[str, float] = {}
    for fn in MEASURES:
        fields.update(fn(number))
    return fields


def run_codec(number: int) -> int:
    """The codec role: measure everything and emit it as one JSON line; returns 0."""
    emit({"ok": True, **measure(number)})
    return 0
