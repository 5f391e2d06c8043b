"""Payload codecs (docs/protocol.md section 5): BARE (the default) and bincode (seed-era crates)."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenockam.codecs import BARE, BINCODE, CODECS, RAW, UNIT, Codec, get_codec
from greenockam.errors import LocalProtocolError, RemoteProtocolError
from helpers import ref_uint

CODEC_PARAMS = pytest.mark.parametrize("codec", [BARE, BINCODE], ids=["bare", "bincode"])

DATA_300 = bytes(range(256)) + bytes(range(44))


def _ref_length(codec, n):
    return ref_uint(n) if codec is BARE else struct.pack("<Q", n)


# --- encodings from docs/protocol.md section 5 --------------------------------------------------

ENCODINGS = [
    # (id, value, bare hex, bincode hex)
    ("str_hi", "hi", "026869", "02000000000000006869"),
    ("str_empty", "", "00", "0000000000000000"),
    ("str_utf8", "h\u00e9", "0368c3a9", "030000000000000068c3a9"),
    ("bytes_300", DATA_300, "ac02" + DATA_300.hex(), "2c01000000000000" + DATA_300.hex()),
    ("bytes_empty", b"", "00", "0000000000000000"),
    ("u64_7", 7, "0700000000000000", "0700000000000000"),
    ("u64_0", 0, "0000000000000000", "0000000000000000"),
    ("u64_max", 2**64 - 1, "ffffffffffffffff", "ffffffffffffffff"),
    ("bool_true", True, "01", "01"),
    ("bool_false", False, "00", "00"),
    ("unit", None, "", ""),
]


@pytest.mark.parametrize(
    "value, bare_hex", [(e[1], e[2]) for e in ENCODINGS], ids=[e[0] for e in ENCODINGS]
)
def test_bare_encodes_values_as_protocol_section_5_says(value, bare_hex):
    assert BARE.encode(value) == bytes.fromhex(bare_hex)


@pytest.mark.parametrize(
    "value, bincode_hex", [(e[1], e[3]) for e in ENCODINGS], ids=[e[0] for e in ENCODINGS]
)
def test_bincode_encodes_values_as_protocol_section_5_says(value, bincode_hex):
    assert BINCODE.encode(value) == bytes.fromhex(bincode_hex)


@CODEC_PARAMS
@pytest.mark.parametrize("value", [e[1] for e in ENCODINGS], ids=[e[0] for e in ENCODINGS])
def test_decoding_an_encoded_value_gives_it_back_with_its_type(codec, value):
    message_type = type(value)
    decoded = codec.decode(codec.encode(value), message_type)
    assert decoded == value
    assert type(decoded) is message_type


@CODEC_PARAMS
def test_unit_decodes_with_the_unit_marker_and_none_means_the_default_str(codec):
    assert UNIT is type(None)
    assert codec.decode(b"", UNIT) is None
    assert codec.decode(codec.encode("hi"), None) == "hi"


@CODEC_PARAMS
def test_decode_defaults_to_str(codec):
    assert codec.decode(codec.encode("hi")) == "hi"


@CODEC_PARAMS
@pytest.mark.parametrize("kind", [bytearray, memoryview], ids=["bytearray", "memoryview"])
def test_bytearray_and_memoryview_encode_like_bytes(codec, kind):
    assert codec.encode(kind(b"abc")) == codec.encode(b"abc")


def test_bare_str_of_128_bytes_takes_a_two_byte_length():
    assert BARE.encode("x" * 128)[:2] == b"\x80\x01"
    assert BARE.decode(b"\x80\x01" + b"x" * 128, str) == "x" * 128


def test_bare_accepts_a_non_canonical_length_as_rust_does():
    assert BARE.decode(b"\x82\x00hi", str) == "hi"


# --- RAW --------------------------------------------------------------------------------------


@CODEC_PARAMS
@pytest.mark.parametrize("payload", [b"", b"\x02hi", b"\xff\xfe\x00", DATA_300], ids=repr)
def test_raw_returns_the_payload_as_is(codec, payload):
    decoded = codec.decode(payload, RAW)
    assert decoded == payload
    assert type(decoded) is bytes


def test_raw_has_a_readable_repr():
    assert repr(RAW) == "RAW"


# --- bad payloads -----------------------------------------------------------------------------

BAD_PAYLOADS = [
    # (id, message type, bare payload, bincode payload)
    ("str_empty_payload", str, b"", b""),
    ("str_truncated_length", str, b"\x80", b"\x02\x00\x00"),
    ("str_shorter_than_length", str, b"\x03hi", b"\x03" + bytes(7) + b"hi"),
    ("str_trailing_bytes", str, b"\x01hi", b"\x01" + bytes(7) + b"hi"),
    ("str_huge_length", str, b"\xff\xff\xff\xff\x0fhi", b"\xff" * 8 + b"hi"),
    ("str_invalid_utf8", str, b"\x02\xff\xfe", b"\x02" + bytes(7) + b"\xff\xfe"),
    ("str_encoded_surrogate", str, b"\x03\xed\xa0\x80", b"\x03" + bytes(7) + b"\xed\xa0\x80"),
    ("str_truncated_utf8", str, b"\x01\xc3", b"\x01" + bytes(7) + b"\xc3"),
    ("str_uint_overflow", str, b"\xff" * 10 + b"\x01", b"\xff" * 7),
    ("bytes_empty_payload", bytes, b"", b""),
    ("bytes_truncated_length", bytes, b"\xac", b"\x2c\x01"),
    ("bytes_shorter_than_length", bytes, b"\x05abc", b"\x05" + bytes(7) + b"abc"),
    ("bytes_trailing_bytes", bytes, b"\x01abc", b"\x01" + bytes(7) + b"abc"),
    ("u64_too_short", int, bytes(7), bytes(7)),
    ("u64_too_long", int, bytes(9), bytes(9)),
    ("u64_empty", int, b"", b""),
    ("bool_empty", bool, b"", b""),
    ("bool_two", bool, b"\x02", b"\x02"),
    ("bool_two_bytes", bool, b"\x01\x00", b"\x01\x00"),
    ("unit_not_empty", UNIT, b"\x00", b"\x00"),
]


@pytest.mark.parametrize(
    "message_type, payload",
    [(e[1], e[2]) for e in BAD_PAYLOADS],
    ids=[e[0] for e in BAD_PAYLOADS],
)
def test_bare_rejects_a_malformed_payload_with_remote_protocol_error(message_type, payload):
    with pytest.raises(RemoteProtocolError):
        BARE.decode(payload, message_type)


@pytest.mark.parametrize(
    "message_type, payload",
    [(e[1], e[3]) for e in BAD_PAYLOADS],
    ids=[e[0] for e in BAD_PAYLOADS],
)
def test_bincode_rejects_a_malformed_payload_with_remote_protocol_error(message_type, payload):
    with pytest.raises(RemoteProtocolError):
        BINCODE.decode(payload, message_type)


# --- unsupported values and types -------------------------------------------------------------


@CODEC_PARAMS
@pytest.mark.parametrize(
    "value", [1.5, {"a": 1}, [1, 2], ("a",), object(), {1}], ids=lambda v: type(v).__name__
)
def test_encoding_an_unsupported_type_raises_local_protocol_error(codec, value):
    with pytest.raises(LocalProtocolError) as info:
        codec.encode(value)
    assert type(value).__name__ in str(info.value)


@CODEC_PARAMS
@pytest.mark.parametrize("value", [-1, 2**64], ids=["negative", "2**64"])
def test_an_int_outside_u64_raises_local_protocol_error(codec, value):
    with pytest.raises(LocalProtocolError):
        codec.encode(value)


@CODEC_PARAMS
@pytest.mark.parametrize("message_type", [complex, dict, "str", [str], object], ids=repr)
def test_decoding_as_an_unsupported_type_raises_local_protocol_error(codec, message_type):
    with pytest.raises(LocalProtocolError):
        codec.decode(b"\x00", message_type)


@CODEC_PARAMS
def test_a_str_that_cannot_be_utf8_encoded_raises_local_protocol_error(codec):
    with pytest.raises(LocalProtocolError):
        codec.encode("\ud800")


# --- get_codec ----------------------------------------------------------------------------------


def test_get_codec_by_name_none_or_object():
    assert get_codec("bare") is BARE
    assert get_codec("bincode") is BINCODE
    assert get_codec(None) is BARE
    assert get_codec(BARE) is BARE
    assert get_codec(BINCODE) is BINCODE
    assert CODECS == {"bare": BARE, "bincode": BINCODE}
    assert BARE.name == "bare" and BINCODE.name == "bincode"
    assert isinstance(BARE, Codec)
    assert repr(BINCODE) == "<Codec bincode>"


@pytest.mark.parametrize("name", ["json", "BARE", "", 3, ["bare"]], ids=repr)
def test_get_codec_with_an_unknown_name_raises_value_error(name):
    with pytest.raises(ValueError) as info:
        get_codec(name)
    assert repr(name) in str(info.value)


# --- properties -------------------------------------------------------------------------------


@CODEC_PARAMS
@given(text=st.text())
@settings(deadline=None)
def test_any_text_round_trips_and_is_length_prefixed_utf8(codec, text):
    data = text.encode("utf-8")
    payload = codec.encode(text)
    assert payload == _ref_length(codec, len(data)) + data
    assert codec.decode(payload, str) == text


@CODEC_PARAMS
@given(data=st.binary(max_size=2000))
@settings(deadline=None)
def test_any_bytes_round_trip_and_are_length_prefixed(codec, data):
    payload = codec.encode(data)
    assert payload == _ref_length(codec, len(data)) + data
    assert codec.decode(payload, bytes) == data


@CODEC_PARAMS
@given(value=st.integers(0, 2**64 - 1))
@settings(deadline=None)
def test_any_u64_round_trips_as_8_little_endian_bytes(codec, value):
    payload = codec.encode(value)
    assert payload == struct.pack("<Q", value)
    assert codec.decode(payload, int) == value


@CODEC_PARAMS
@given(payload=st.binary(max_size=64))
@settings(deadline=None)
def test_random_bytes_decoded_as_str_return_str_or_raise_remote_protocol_error(codec, payload):
    try:
        value = codec.decode(payload, str)
    except RemoteProtocolError:
        return
    assert isinstance(value, str)
    assert codec.encode(value) == payload or codec is BARE  # BARE accepts non-canonical lengths


@CODEC_PARAMS
@pytest.mark.parametrize("message_type", [bytes, int, bool, None], ids=repr)
@given(payload=st.binary(max_size=32))
@settings(deadline=None)
def test_random_bytes_decoded_as_any_type_never_raise_anything_else(codec, message_type, payload):
    try:
        codec.decode(payload, message_type)
    except RemoteProtocolError:
        pass
