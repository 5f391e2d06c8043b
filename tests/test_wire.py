"""The wire codec (docs/protocol.md sections 1-3): frames, BARE bodies, and the streaming decoder.

The table tests are driven by tests/vectors.json, whose hex was checked against real 2021 Rust
Ockam nodes. The property tests compare greenockam against a small reference encoder written here
from the protocol text alone.
"""

import json
import os
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenockam.address import Address, Route
from greenockam.codecs import get_codec
from greenockam.errors import (
    AddressError,
    GreenockamError,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from greenockam.wire import (
    MAX_BODY,
    VERSION,
    FrameDecoder,
    TransportMessage,
    decode_body,
    decode_uint,
    encode_body,
    encode_frame,
    encode_route,
    encode_uint,
)
from helpers import ref_frame, ref_route, ref_uint

_VECTORS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors.json")
with open(_VECTORS_PATH, encoding="utf-8") as _f:
    VECTORS = json.load(_f)

FRAMES = VECTORS["frames"]
FRAMES_WITH_VALUE = [e for e in FRAMES if "value" in e and "payload_codec" in e]
DECODE_ONLY = VECTORS["decode_only"]
INVALID_BODIES = VECTORS["invalid_bodies"]

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _ids(entries):
    return [e["name"] for e in entries]


def framed(body):
    return struct.pack(">H", len(body)) + body


def as_plain(msg):
    """A message as comparable plain data: (version, onward text, return text, payload)."""
    return (msg.version, [str(a) for a in msg.onward_route], [str(a) for a in msg.return_route],
            msg.payload)


def msg(onward, ret, payload=b"", version=VERSION):
    return TransportMessage(Route(onward), Route(ret), payload, version)


def feed_in_chunks(decoder, stream, cuts):
    """Feed ``stream`` cut at the sorted positions ``cuts``; return every message, in order."""
    out = []
    start = 0
    for cut in list(cuts) + [len(stream)]:
        out += decoder.feed(stream[start:cut])
        start = cut
    return out


# --- vectors: frames ----------------------------------------------------------------------------


@pytest.mark.parametrize("entry", FRAMES, ids=_ids(FRAMES))
def test_vector_message_encodes_to_exactly_the_captured_frame(entry):
    message = msg(entry["onward"], entry["return"], bytes.fromhex(entry["payload_hex"]))
    frame = bytes.fromhex(entry["frame_hex"])
    assert encode_frame(message).hex() == entry["frame_hex"]
    assert encode_body(message) == frame[2:]
    assert struct.unpack(">H", frame[:2])[0] == len(frame) - 2


@pytest.mark.parametrize("entry", FRAMES, ids=_ids(FRAMES))
def test_vector_frame_decodes_to_exactly_its_routes_and_payload(entry):
    frame = bytes.fromhex(entry["frame_hex"])
    messages = FrameDecoder().feed(frame)
    assert len(messages) == 1
    (decoded,) = messages
    assert isinstance(decoded, TransportMessage)
    assert decoded.version == 1
    assert decoded.onward_route == Route(entry["onward"])
    assert decoded.return_route == Route(entry["return"])
    assert [str(a) for a in decoded.onward_route] == [
        str(Address.parse(a)) for a in entry["onward"]
    ]
    assert [str(a) for a in decoded.return_route] == [
        str(Address.parse(a)) for a in entry["return"]
    ]
    assert type(decoded.onward_route) is Route and type(decoded.return_route) is Route
    assert all(type(a) is Address for a in decoded.onward_route + decoded.return_route)
    assert decoded.payload == bytes.fromhex(entry["payload_hex"])
    assert type(decoded.payload) is bytes
    assert decode_body(frame[2:]) == decoded


@pytest.mark.parametrize("entry", FRAMES_WITH_VALUE, ids=_ids(FRAMES_WITH_VALUE))
def test_vector_payload_is_its_value_in_its_codec(entry):
    codec = get_codec(entry["payload_codec"])
    payload = bytes.fromhex(entry["payload_hex"])
    assert codec.decode(payload, str) == entry["value"]
    assert codec.encode(entry["value"]) == payload


@pytest.mark.parametrize("entry", FRAMES, ids=_ids(FRAMES))
def test_vector_frame_decodes_the_same_when_fed_one_byte_at_a_time(entry):
    frame = bytes.fromhex(entry["frame_hex"])
    decoder = FrameDecoder()
    out = []
    for i in range(len(frame)):
        out += decoder.feed(frame[i : i + 1])
    assert out == FrameDecoder().feed(frame)
    assert decoder.buffered == 0


# --- vectors: decode only -----------------------------------------------------------------------


@pytest.mark.parametrize("entry", DECODE_ONLY, ids=_ids(DECODE_ONLY))
def test_decode_only_vector_decodes_as_stated(entry):
    frame = bytes.fromhex(entry["frame_hex"])
    for decoded in (FrameDecoder().feed(frame)[0], decode_body(frame[2:])):
        assert decoded.onward_route == Route(entry["onward"])
        assert decoded.return_route == Route(entry["return"])
        assert decoded.payload == bytes.fromhex(entry["payload_hex"])
        assert decoded.version == frame[2]


def test_version_byte_7_is_kept_on_receive_and_re_encoded():
    (entry,) = [e for e in DECODE_ONLY if e["name"] == "version_not_checked"]
    frame = bytes.fromhex(entry["frame_hex"])
    decoded = decode_body(frame[2:])
    assert decoded.version == 7
    assert encode_frame(decoded) == frame


# --- vectors: invalid bodies --------------------------------------------------------------------


@pytest.mark.parametrize("entry", INVALID_BODIES, ids=_ids(INVALID_BODIES))
def test_invalid_body_raises_remote_protocol_error(entry):
    with pytest.raises(RemoteProtocolError):
        decode_body(bytes.fromhex(entry["body_hex"]))


@pytest.mark.parametrize("entry", INVALID_BODIES, ids=_ids(INVALID_BODIES))
def test_invalid_body_in_a_frame_makes_the_decoder_raise_remote_protocol_error(entry):
    decoder = FrameDecoder()
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(framed(bytes.fromhex(entry["body_hex"])))
    assert info.value.messages == []


def test_remote_protocol_error_is_a_protocol_error_not_a_local_one():
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert not issubclass(RemoteProtocolError, LocalProtocolError)


# --- body size limit ----------------------------------------------------------------------------


def _payload_for_body_size(onward, ret, size):
    """A payload length that makes the body exactly ``size`` bytes."""
    overhead = 1 + len(ref_route(onward)) + len(ref_route(ret))
    for n in range(size, -1, -1):
        if overhead + len(ref_uint(n)) + n == size:
            return n
    raise AssertionError("no payload length fits")  # pragma: no cover


def test_encode_frame_refuses_a_body_over_65535_bytes_naming_the_size_and_limit():
    onward, ret = Route(["echo"]), Route(["app"])
    n = _payload_for_body_size(onward, ret, 65536)
    with pytest.raises(LocalProtocolError) as info:
        encode_frame(TransportMessage(onward, ret, b"x" * n))
    assert "65536" in str(info.value)
    assert "65535" in str(info.value)
    with pytest.raises(LocalProtocolError) as info:
        encode_body(TransportMessage(onward, ret, b"x" * 100000))
    assert "65535" in str(info.value)


def test_a_body_of_exactly_65535_bytes_encodes_and_round_trips():
    onward, ret = Route(["1#127.0.0.1:4000", "echo"]), Route(["app"])
    n = _payload_for_body_size(onward, ret, 65535)
    payload = bytes(random.Random(1).getrandbits(8) for _ in range(n))
    message = TransportMessage(onward, ret, payload)
    frame = encode_frame(message)
    assert frame[:2] == b"\xff\xff"
    assert len(frame) == 2 + 65535 == 2 + MAX_BODY
    assert frame == ref_frame(onward, ret, payload)
    assert FrameDecoder().feed(frame) == [message]
    assert decode_body(frame[2:]) == message
    decoder = FrameDecoder()
    assert feed_in_chunks(decoder, frame, [1, 2, 3, 30000, 65536]) == [message]


def test_decode_body_refuses_a_body_over_65535_bytes():
    with pytest.raises(RemoteProtocolError):
        decode_body(b"\x01\x00\x00\x00" + bytes(65535))


# --- BARE uint ----------------------------------------------------------------------------------

UINT_VECTORS = [(0, "00"), (127, "7f"), (128, "8001"), (300, "ac02"), (65535, "ffff03")]


@pytest.mark.parametrize("value, hex_", UINT_VECTORS, ids=[str(v) for v, _ in UINT_VECTORS])
def test_uint_encodes_as_protocol_md_says(value, hex_):
    assert encode_uint(value).hex() == hex_


@pytest.mark.parametrize("value, hex_", UINT_VECTORS, ids=[str(v) for v, _ in UINT_VECTORS])
def test_uint_decodes_as_protocol_md_says(value, hex_):
    data = bytes.fromhex(hex_)
    assert decode_uint(data) == (value, len(data))
    assert decode_uint(b"\xaa" + data + b"\xbb", 1) == (value, 1 + len(data))


def test_non_canonical_uint_82_00_decodes_to_2():
    assert decode_uint(b"\x82\x00") == (2, 2)
    assert decode_uint(b"\x80" * 9 + b"\x00") == (0, 10)


def test_ten_byte_uint_holds_the_64_bit_maximum():
    data = b"\xff" * 9 + b"\x01"
    assert encode_uint(2**64 - 1) == data
    assert decode_uint(data) == (2**64 - 1, 10)


@pytest.mark.parametrize(
    "data",
    [b"\xff" * 10 + b"\x01", b"\xff" * 9 + b"\x02", b"\x80" * 9 + b"\x81\x00", b"\x80" * 11],
    ids=["eleventh_byte", "tenth_byte_2", "tenth_byte_continues", "eleven_continuations"],
)
def test_uint_overflowing_64_bits_or_10_bytes_is_rejected(data):
    with pytest.raises(RemoteProtocolError):
        decode_uint(data)


@pytest.mark.parametrize("data", [b"", b"\x80", b"\xff\xff"], ids=["empty", "80", "ffff"])
def test_uint_truncated_inside_raises_remote_protocol_error(data):
    with pytest.raises(RemoteProtocolError):
        decode_uint(data)


def test_uint_decode_stops_at_the_given_end():
    with pytest.raises(RemoteProtocolError):
        decode_uint(b"\x80\x01", 0, 1)


@pytest.mark.parametrize("value", [-1, 2**64], ids=["negative", "2**64"])
def test_uint_encode_refuses_values_outside_u64(value):
    with pytest.raises(LocalProtocolError):
        encode_uint(value)


@given(st.integers(0, 2**64 - 1))
@SETTINGS
def test_any_u64_uint_round_trips_in_canonical_form(value):
    data = encode_uint(value)
    assert data == ref_uint(value)
    assert decode_uint(data) == (value, len(data))


# --- FrameDecoder: chunking ---------------------------------------------------------------------

_M1 = msg(["echo_service"], ["app"], b"\x15Hello you over there!")
_M2 = msg(["1#127.0.0.1:4000", "echoer"], ["1#127.0.0.1:53000", "app"], b"x" * 300)
_M3 = msg(["app"], ["echo_service"], b"")


def test_frame_split_inside_length_prefix_decodes_once_the_rest_arrives():
    frame = encode_frame(_M1)
    decoder = FrameDecoder()
    assert decoder.feed(frame[:1]) == []
    assert decoder.buffered == 1
    assert decoder.feed(frame[1:2]) == []
    assert decoder.buffered == 2
    assert decoder.feed(frame[2:]) == [_M1]
    assert decoder.buffered == 0


def test_two_frame_stream_split_at_every_position_decodes_the_same():
    stream = encode_frame(_M1) + encode_frame(_M2) + encode_frame(_M3)
    for i in range(len(stream) + 1):
        decoder = FrameDecoder()
        assert decoder.feed(stream[:i]) + decoder.feed(stream[i:]) == [_M1, _M2, _M3], i
        assert decoder.buffered == 0


def test_stream_split_inside_the_second_length_prefix_decodes_the_same():
    first = encode_frame(_M1)
    stream = first + encode_frame(_M2)
    decoder = FrameDecoder()
    assert decoder.feed(stream[: len(first) + 1]) == [_M1]
    assert decoder.buffered == 1
    assert decoder.feed(stream[len(first) + 1 :]) == [_M2]


def test_stream_fed_one_byte_at_a_time_decodes_the_same():
    stream = encode_frame(_M1) + encode_frame(_M2) + encode_frame(_M1)
    decoder = FrameDecoder()
    out = []
    for i in range(len(stream)):
        out += decoder.feed(stream[i : i + 1])
    assert out == [_M1, _M2, _M1]


def test_feeding_nothing_returns_nothing_and_keeps_the_buffer():
    decoder = FrameDecoder()
    assert decoder.feed(b"") == []
    frame = encode_frame(_M2)
    assert decoder.feed(frame[:1]) == []
    assert decoder.feed(b"") == []
    assert decoder.feed(frame[1:10]) == []
    assert decoder.feed(b"") == []
    assert decoder.buffered == 10
    assert decoder.feed(frame[10:]) == [_M2]


def test_repeated_and_alternating_routes_decode_correctly():
    # The decoder short-cuts frames whose routes repeat the previous frame's; mix them.
    a1 = msg(["echo"], ["app"], b"1")
    a2 = msg(["echo"], ["app"], b"22")
    b = msg(["echo"], ["app", "x"], b"3")
    c = msg(["echox"], ["app"], b"")
    sequence = [a1, a2, a2, b, a1, c, c, a1]
    stream = b"".join(encode_frame(m) for m in sequence)
    assert FrameDecoder().feed(stream) == sequence
    prefix = Address(1, "127.0.0.1:9")
    prefixed = FrameDecoder(return_prefix=prefix).feed(stream)
    assert [m.return_route for m in prefixed] == [m.return_route.prepend(prefix) for m in sequence]
    assert [m.onward_route for m in prefixed] == [m.onward_route for m in sequence]
    assert [m.payload for m in prefixed] == [m.payload for m in sequence]


# --- FrameDecoder: malformed input --------------------------------------------------------------


def test_malformed_frame_reports_the_good_messages_before_it_and_poisons_the_decoder():
    bad = framed(bytes.fromhex("0101000c6563686f"))
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(_M3)) == [_M3]
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(encode_frame(_M1) + encode_frame(_M2) + bad + encode_frame(_M1))
    assert info.value.messages == [_M1, _M2]
    with pytest.raises(RemoteProtocolError):
        decoder.feed(encode_frame(_M1))
    with pytest.raises(RemoteProtocolError):
        decoder.feed(b"")


def test_malformed_frame_after_a_buffered_good_frame_reports_that_frame():
    good = encode_frame(_M2)
    bad = framed(bytes.fromhex("0101000361707001000361707009ffff"))
    decoder = FrameDecoder()
    assert decoder.feed(good[:7]) == []
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(good[7:] + bad)
    assert info.value.messages == [_M2]


def test_zero_length_frame_raises():
    with pytest.raises(RemoteProtocolError):
        FrameDecoder().feed(b"\x00\x00")


def test_zero_length_frame_after_good_frames_raises_with_those_messages():
    decoder = FrameDecoder()
    assert decoder.feed(encode_frame(_M1)) == [_M1]  # the decoder now remembers _M1's routes
    with pytest.raises(RemoteProtocolError) as info:
        decoder.feed(encode_frame(_M1) + b"\x00\x00" + encode_frame(_M1))
    assert info.value.messages == [_M1]


def test_body_ending_right_after_repeated_routes_raises():
    decoder = FrameDecoder()
    frame = encode_frame(_M1)
    assert decoder.feed(frame) == [_M1]
    routes_end = 2 + 1 + len(encode_route(_M1.onward_route)) + len(encode_route(_M1.return_route))
    with pytest.raises(RemoteProtocolError):
        decoder.feed(framed(frame[2:routes_end]))


# --- FrameDecoder: return prefix ----------------------------------------------------------------


def test_return_prefix_is_prepended_as_in_the_worked_trace_step_3():
    # Step 2 on the wire: onward [0#echo_service], return [0#app] (the echo_request_bare vector).
    (entry,) = [e for e in FRAMES if e["name"] == "echo_request_bare"]
    decoder = FrameDecoder(return_prefix=Address(1, "127.0.0.1:54321"))
    (received,) = decoder.feed(bytes.fromhex(entry["frame_hex"]))
    assert str(received.onward_route) == "0#echo_service"
    assert str(received.return_route) == "1#127.0.0.1:54321 => 0#app"
    # Twice, to cover the repeated-routes path too.
    (again,) = decoder.feed(bytes.fromhex(entry["frame_hex"]))
    assert again.return_route == Route(["1#127.0.0.1:54321", "0#app"])


def test_return_prefix_is_prepended_as_in_the_worked_trace_step_6():
    (entry,) = [e for e in FRAMES if e["name"] == "echo_reply_bare"]
    decoder = FrameDecoder(return_prefix=Address.parse("1#127.0.0.1:10222"))
    (received,) = decoder.feed(bytes.fromhex(entry["frame_hex"]))
    assert received.onward_route == Route(["0#app"])
    assert received.return_route == Route(["1#127.0.0.1:10222", "0#echo_service"])


def test_multihop_b_prepends_a_and_forwards_the_b_to_c_frame():
    (a_to_b,) = [e for e in FRAMES if e["name"] == "multihop_a_to_b"]
    (b_to_c,) = [e for e in FRAMES if e["name"] == "multihop_b_to_c"]
    (at_b,) = FrameDecoder(return_prefix=Address(1, "127.0.0.1:53000")).feed(
        bytes.fromhex(a_to_b["frame_hex"])
    )
    assert at_b.onward_route.next == Address(1, "127.0.0.1:4000")
    forwarded = TransportMessage(at_b.onward_route.pop_front(), at_b.return_route, at_b.payload)
    assert encode_frame(forwarded).hex() == b_to_c["frame_hex"]


def test_without_a_return_prefix_return_routes_are_as_sent():
    assert FrameDecoder().feed(encode_frame(_M2))[0].return_route == _M2.return_route


# --- FrameDecoder: buffering bounds -------------------------------------------------------------


def test_frame_announced_at_65535_bytes_but_unfinished_stays_buffered():
    decoder = FrameDecoder()
    assert decoder.feed(b"\xff\xff" + b"\x01" * 1000) == []
    assert decoder.buffered == 1002
    for _ in range(64):
        assert decoder.feed(b"\x00" * 1000) == []
    assert decoder.buffered == 65002
    assert decoder.feed(b"\x00" * 534) == []
    assert decoder.buffered == 65536  # one byte short of the whole frame


def test_decoder_never_buffers_more_than_the_current_incomplete_frame():
    rng = random.Random(20210401)
    messages = []
    for i in range(60):
        size = rng.choice([0, 1, 127, 128, 5000, 30000, 65000])
        messages.append(msg([f"echo_{i % 7}"], ["app"], bytes([i]) * size))
    frames = [encode_frame(m) for m in messages]
    stream = b"".join(frames)
    boundaries = [0]
    for frame in frames:
        boundaries.append(boundaries[-1] + len(frame))
    decoder = FrameDecoder()
    out = []
    pos = 0
    while pos < len(stream):
        step = rng.choice([1, 2, 3, 100, 4096, 65536, 70000, 200000])
        out += decoder.feed(stream[pos : pos + step])
        pos = min(len(stream), pos + step)
        last_boundary = max(b for b in boundaries if b <= pos)
        assert decoder.buffered == pos - last_boundary
        assert decoder.buffered <= 65537
        assert len(out) == boundaries.index(last_boundary)
    assert out == messages


# --- route caches -------------------------------------------------------------------------------


def test_routes_stay_correct_after_more_distinct_routes_than_the_caches_hold():
    def route_pair(i):
        return Route([f"1#10.0.{i // 256}.{i % 256}:{1000 + i}", f"w{i}"]), Route([f"app{i * 7}"])

    count = 5000
    decoder = FrameDecoder()
    for i in list(range(count)) + list(range(0, count, 37)) + list(range(300)):
        onward, ret = route_pair(i)
        payload = str(i).encode()
        message = TransportMessage(onward, ret, payload)
        frame = encode_frame(message)
        assert frame == ref_frame(onward, ret, payload), i
        assert encode_route(onward) == ref_route(onward)
        (decoded,) = decoder.feed(frame)
        assert decoded == message, i
        assert decode_body(frame[2:]) == message, i


def test_encoding_stays_canonical_after_decoding_a_non_canonical_route():
    onward = Route(["0#noncanonical_probe_onward"])
    ret = Route(["0#noncanonical_probe_return"])
    canonical = ref_frame(onward, ret, b"")
    # Same routes, but the onward count 1 written as 81 00.
    body = b"\x01\x81\x00" + ref_route(onward)[1:] + ref_route(ret) + b"\x00"
    assert decode_body(body) == TransportMessage(onward, ret, b"")
    assert encode_frame(TransportMessage(onward, ret, b"")) == canonical


# --- properties ---------------------------------------------------------------------------------

_values = st.one_of(
    st.text(min_size=1, max_size=20),  # UTF-8 length mostly < 128
    st.text(min_size=130, max_size=300),  # UTF-8 length always >= 128: two-byte lengths
)
_addresses = st.builds(Address, st.integers(0, 255), _values)
_routes = st.lists(_addresses, min_size=1, max_size=5).map(Route)
_payloads = st.binary(max_size=2000)
_messages = st.builds(
    TransportMessage, _routes, _routes, _payloads, version=st.integers(0, 255)
)


@given(_messages)
@SETTINGS
def test_any_message_round_trips_through_encode_frame_and_the_decoder(message):
    onward, ret, payload = message.onward_route, message.return_route, message.payload
    frame = encode_frame(message)
    assert frame == ref_frame(onward, ret, payload, message.version)
    assert encode_body(message) == frame[2:]
    (decoded,) = FrameDecoder().feed(frame)
    assert decoded == message
    assert as_plain(decoded) == as_plain(message)
    assert decode_body(frame[2:]) == message


@given(st.lists(_messages, min_size=1, max_size=6), st.data())
@SETTINGS
def test_any_chunking_of_a_stream_yields_the_same_messages_in_order(messages, data):
    stream = b"".join(encode_frame(m) for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12), label="cuts"))
    decoder = FrameDecoder()
    assert feed_in_chunks(decoder, stream, cuts) == messages
    assert decoder.buffered == 0


@given(st.lists(_messages, min_size=1, max_size=4), _addresses)
@SETTINGS
def test_return_prefix_is_prepended_to_every_message(messages, prefix):
    stream = b"".join(encode_frame(m) for m in messages)
    decoded = FrameDecoder(return_prefix=prefix).feed(stream)
    assert [m.return_route for m in decoded] == [m.return_route.prepend(prefix) for m in messages]
    assert [m.onward_route for m in decoded] == [m.onward_route for m in messages]


@given(st.binary(max_size=600), st.data())
@SETTINGS
def test_random_bytes_fed_to_a_decoder_raise_nothing_but_remote_protocol_error(stream, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6), label="cuts"))
    decoder = FrameDecoder()
    try:
        messages = feed_in_chunks(decoder, stream, cuts)
    except RemoteProtocolError:
        return
    assert all(isinstance(m, TransportMessage) for m in messages)
    assert decoder.buffered <= 65537


@given(st.lists(st.binary(max_size=120), min_size=1, max_size=6), st.data())
@SETTINGS
def test_decoder_on_random_bodies_agrees_with_decode_body_frame_by_frame(bodies, data):
    stream = b"".join(framed(b) for b in bodies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6), label="cuts"))
    expected = []
    failed = False
    for body in bodies:
        try:
            expected.append(decode_body(body))
        except RemoteProtocolError:
            failed = True
            break
    decoder = FrameDecoder()
    out = []
    try:
        for start, end in zip([0] + cuts, cuts + [len(stream)]):
            out += decoder.feed(stream[start:end])
    except RemoteProtocolError as exc:
        assert failed
        assert out + exc.messages == expected
    else:
        assert not failed
        assert out == expected


@given(st.binary(max_size=400))
@SETTINGS
def test_random_bodies_decode_or_raise_only_remote_protocol_error(body):
    try:
        message = decode_body(body)
    except RemoteProtocolError:
        return
    assert isinstance(message, TransportMessage)
    assert message.version == body[0]


@given(_messages, st.data())
@SETTINGS
def test_corrupted_or_truncated_valid_bodies_decode_or_raise_only_remote_protocol_error(
    message, data
):
    edited = bytearray(encode_body(message))
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        index = data.draw(st.integers(0, len(edited) - 1), label="index")
        edited[index] = data.draw(st.integers(0, 255), label="byte")
    body = bytes(edited[: data.draw(st.integers(0, len(edited)), label="length")])
    try:
        decoded = decode_body(body)
    except RemoteProtocolError:
        return
    assert isinstance(decoded, TransportMessage)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Address(0, "\ud800"),
        lambda: Address.parse("0#\ud800"),
        lambda: Route(["app", "\ud800"]),
        lambda: Route.parse("app => 1#\ud800"),
    ],
    ids=["Address", "Address.parse", "Route", "Route.parse"],
)
def test_an_address_that_cannot_be_utf8_encoded_is_refused_with_a_greenockam_error(make):
    # Refused where an address is made, so no message can carry one to the frame encoder.
    with pytest.raises(AddressError, match="UTF-8") as info:
        make()
    assert isinstance(info.value, GreenockamError)
