"""Typed messages (docs/typed-messages.md): serde's data model as Python declarations.

typed_vectors.json was produced by the real Rust crates (serde_bare 0.3 and 0.4, bincode 1.3 with
default options, ockam_core of April 2021); every case holds here in both directions.
"""

import collections
import dataclasses
import enum
import importlib.util
import json
import os
import random
import struct
import sys
import tracemalloc
import typing
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenockam import Address, LocalProtocolError, Node, RemoteProtocolError, Route, Worker
from greenockam.codecs import (
    BARE,
    BINCODE,
    F32,
    F64,
    I8,
    I16,
    I32,
    I64,
    I128,
    U8,
    U16,
    U32,
    U64,
    U128,
    Char,
    Fixed,
    TaggedUnion,
    typed,
)
from greenockam.transport.tcp import TcpTransport

if sys.version_info >= (3, 9):
    from typing import Annotated, get_args, get_origin, get_type_hints
else:  # pragma: no cover - typing_extensions backports them to 3.8
    from typing_extensions import Annotated, get_args, get_origin, get_type_hints

T = 10.0  # seconds: the bound on any single network wait in these tests

_VECTORS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "typed_vectors.json")
with open(_VECTORS_PATH, encoding="utf-8") as _f:
    VECTORS = json.load(_f)

CODECS = {"serde_bare_0_4": BARE, "serde_bare_0_3": BARE, "bincode_1_3": BINCODE}
CODEC_PARAMS = pytest.mark.parametrize("codec", [BARE, BINCODE], ids=["bare", "bincode"])


# --- the Rust types of the vectors, declared in Python -------------------------------------------


@dataclass
class Inner:
    a: U8
    b: str


@dataclass
class Outer:
    id: U32
    name: str
    inner: Inner
    flags: List[bool]
    maybe: Optional[U16]
    data: bytes


@dataclass
class Marker:
    """struct Marker;"""


@dataclass
class Id:
    """struct Id(u64); a newtype struct is its inner value on the wire."""

    value: U64


class Triple(NamedTuple):
    """struct Triple(u16, String, bool);"""

    number: U16
    text: str
    flag: bool


class Sample(TaggedUnion):
    """enum Sample { Ping, Pair(u16, String), Pong, Payload(Vec<u8>), Record { id: u32, name:
    String } }"""


@dataclass
class Ping(Sample):
    pass


@dataclass
class Pair(Sample):
    number: U16
    text: str


class Pong(Sample):  # a unit variant may be a plain class
    def __eq__(self, other):
        return type(other) is Pong

    def __hash__(self):
        return 0


@dataclass
class Payload(Sample):
    data: bytes


@dataclass
class Record(Sample):
    id: U32
    name: str


class SecureChannelListenerMessage(TaggedUnion):
    pass


@dataclass
class CreateResponderChannel(SecureChannelListenerMessage):
    payload: bytes


@dataclass
class RemoteForwarderInfo:
    forwarding_route: Route
    remote_address: str
    worker_address: Address


@dataclass
class TransportMessageShape:
    version: U8
    onward_route: Route
    return_route: Route
    payload: bytes


TYPES = {
    "bool": bool,
    "u8": U8,
    "u16": U16,
    "u32": U32,
    "u64": U64,
    "u128": U128,
    "i8": I8,
    "i16": I16,
    "i32": I32,
    "i64": I64,
    "i128": I128,
    "f32": F32,
    "f64": F64,
    "char": Char,
    "String": str,
    "Vec<u8>": bytes,
    "[u8; 32]": Annotated[bytes, Fixed(32)],
    "[u8; 2]": Annotated[bytes, Fixed(2)],
    "Vec<String>": List[str],
    "Vec<u64>": List[U64],
    "Option<u8>": Optional[U8],
    "Option<String>": Optional[str],
    "(u8, String)": Tuple[U8, str],
    "()": None,
    "struct Marker;": Marker,
    "struct Id(u64);": Id,
    "struct Triple(u16, String, bool);": Triple,
}


PREFIXES = [  # rust_type texts that carry declarations or comments after the type
    ("struct Outer", Outer),
    ("Outer (see", Outer),
    ("enum Sample", Sample),
    ("enum SecureChannelListenerMessage", SecureChannelListenerMessage),
    ("std::collections::HashMap<String, u32>", Dict[str, U32]),
    ("std::collections::BTreeMap<String, u32>", Dict[str, U32]),
    ("ockam_core::Address", Address),
    ("ockam_core::Route", Route),
    ("ockam_core::TransportMessage", TransportMessageShape),
    ("struct RemoteForwarderInfo", RemoteForwarderInfo),
]


def rust_type(text):
    """The Python declaration of a vector's ``rust_type``."""
    if text in TYPES:
        return TYPES[text]
    (tp,) = [tp for prefix, tp in PREFIXES if text.startswith(prefix)]
    return tp


def strip(tp):
    return get_args(tp)[0] if get_origin(tp) is Annotated else tp


def from_json(tp, value):
    """The Python value of ``tp`` for a vector's structural JSON (see its value_conventions)."""
    if tp is F32:
        return struct.unpack("<f", struct.pack("<f", value))[0]
    tp = strip(tp)
    origin, args = get_origin(tp), get_args(tp)
    if tp in (None, type(None)):
        return None
    if tp is bytes:
        if "hex" in value:
            return bytes.fromhex(value["hex"])
        assert value["rule"] == "byte i = i % 256"
        return bytes(i % 256 for i in range(value["len"]))
    if tp is Address:
        return Address(value["tt"], bytes.fromhex(value["inner"]["hex"]).decode())
    if tp is Route:
        return Route([from_json(Address, a) for a in value["inner"]])
    if origin is list:
        return [from_json(args[0], v) for v in value]
    if origin is tuple:
        return tuple(from_json(a, v) for a, v in zip(args, value))
    if origin is dict:
        return {from_json(args[0], k): from_json(args[1], v) for k, v in value}
    if origin is typing.Union:
        return None if value is None else from_json(args[0], value)
    if isinstance(tp, type) and issubclass(tp, TaggedUnion):
        variant = tp.variants[value["index"]]
        assert variant.__name__ == value["variant"] or value["variant"] == "CreateResponderChannel"
        if "value" in value:  # a newtype variant
            (name,) = [f.name for f in dataclasses.fields(variant)]
            hint = get_type_hints(variant, include_extras=True)[name]
            return variant(from_json(hint, value["value"]))
        return build(variant, value.get("fields", value.get("values")))
    if isinstance(tp, type) and (dataclasses.is_dataclass(tp) or hasattr(tp, "_fields")):
        return build(tp, value)
    return value


def build(cls, value):
    hints = get_type_hints(cls, include_extras=True)
    names = (
        [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else
        list(getattr(cls, "_fields", ()))
    )
    if not names:
        return cls()
    if isinstance(value, dict):
        return cls(**{n: from_json(hints[n], value[n]) for n in names})
    if isinstance(value, list):
        return cls(*(from_json(hints[n], v) for n, v in zip(names, value)))
    return cls(from_json(hints[names[0]], value))  # a newtype


def encoded_cases():
    for case in VECTORS["cases"]:
        if case["name"] == "seq_unknown_length":
            continue  # not a derived type: see test_a_sequence_always_carries_its_length
        tp = rust_type(case["rust_type"])
        for fmt, enc in case["encodings"].items():
            yield pytest.param(tp, case["value"], CODECS[fmt], enc, id=f"{case['name']}-{fmt}")


ENCODED = list(encoded_cases())


def test_every_vector_case_is_covered():
    assert len(ENCODED) == 3 * (VECTORS["case_count"] - 1)
    assert all(e.values[3].get("roundtrip") == "ok" for e in ENCODED)


@pytest.mark.parametrize("tp, value, codec, enc", ENCODED)
def test_each_vector_value_encodes_to_the_rust_bytes(tp, value, codec, enc):
    assert typed.encoder(tp, codec.name)(from_json(tp, value)).hex() == enc["hex"]
    assert codec.encoder(tp)(from_json(tp, value)).hex() == enc["hex"]


@pytest.mark.parametrize("tp, value, codec, enc", ENCODED)
def test_each_vector_decodes_from_the_rust_bytes_to_the_value(tp, value, codec, enc):
    expected = from_json(tp, value)
    decoded = typed.decoder(tp, codec.name)(bytes.fromhex(enc["hex"]))
    assert decoded == expected
    assert type(decoded) is type(expected)


def test_bare_0_3_and_0_4_encode_every_case_identically():
    for case in VECTORS["cases"]:
        if case["name"] != "seq_unknown_length":
            encodings = case["encodings"]
            assert encodings["serde_bare_0_3"] == encodings["serde_bare_0_4"], case["name"]


@CODEC_PARAMS
def test_a_sequence_always_carries_its_length(codec):
    # serde_bare 0.3 could write a sequence of unknown length with no prefix (undecodable);
    # a declared type always knows its length, so that form is never produced.
    payload = codec.encoder(List[U8])([1, 2, 3])
    assert payload.endswith(b"\x01\x02\x03") and len(payload) > 3


# --- what the Rust decoders accept and reject ----------------------------------------------------

ERROR_TYPES = {
    "u8": U8,
    "u32": U32,
    "String": str,
    "Vec<u8>": bytes,
    "bool": bool,
    "Option<u8>": Optional[U8],
    "char": Char,
    "ockam_core::Address": Address,
    "Sample": Sample,
}
ACCEPTED_VALUES = {
    "u8_trailing_bytes": 5,
    "struct_trailing_bytes": Address(0, "echoer"),
    "bare_enum_index_noncanonical": Pong(),
    "bare_noncanonical_varint_length": "hi",
}
# serde_bare takes any non-zero byte as true and any non-zero option tag as Some: a peer's bug
# would pass unnoticed, so greenockam refuses these as bincode does.
REFUSED_THOUGH_BARE_ACCEPTS = {"bool_byte_2", "bool_byte_ff", "option_tag_2"}


def error_cases():
    for case in VECTORS["decode_errors"]:
        tp = ERROR_TYPES[case["target_type"]]
        for fmt, result in case["results"].items():
            if not result.get("not_applicable"):
                ident = f"{case['name']}-{fmt}"
                yield pytest.param(case["name"], tp, CODECS[fmt], result, id=ident)


ERROR_CASES = list(error_cases())


def test_every_decode_error_case_is_covered():
    assert len({p.values[0] for p in ERROR_CASES}) == VECTORS["decode_error_count"]


@pytest.mark.parametrize("name, tp, codec, result", ERROR_CASES)
def test_each_decode_error_case_is_accepted_or_rejected_as_pinned(name, tp, codec, result):
    decode = typed.decoder(tp, codec.name)
    payload = bytes.fromhex(result["input_hex"])
    if result["accepted"] and name not in REFUSED_THOUGH_BARE_ACCEPTS:
        assert decode(payload) == ACCEPTED_VALUES[name]
    else:
        with pytest.raises(RemoteProtocolError, match="at offset"):
            decode(payload)


def test_a_bool_byte_2_is_refused_with_a_clear_error():
    with pytest.raises(RemoteProtocolError, match=r"^bool: a bool is 00 or 01, got 02 at offset 0"):
        typed.decoder(bool, "bare")(b"\x02")


def test_an_option_tag_2_is_refused_with_a_clear_error():
    with pytest.raises(RemoteProtocolError, match="an option tag is 00 or 01, got 02 at offset 0"):
        BARE.decoder(Optional[U8])(b"\x02\x07")


# --- errors name the field path ------------------------------------------------------------------


@dataclass
class Keys:
    small: U8
    blob: bytes
    key: Annotated[bytes, Fixed(4)]
    triple: Annotated[List[U16], Fixed(3)]
    names: List[str]


GOOD_KEYS = Keys(1, b"", b"abcd", [1, 2, 3], ["a"])


@CODEC_PARAMS
@pytest.mark.parametrize(
    "change, path, reason",
    [
        ({"small": 300}, "Keys.small", "300 does not fit a u8"),
        ({"small": -1}, "Keys.small", "-1 does not fit a u8"),
        ({"small": True}, "Keys.small", "a u8 is an int, got bool"),
        ({"blob": "text"}, "Keys.blob", "a Vec<u8> is bytes, got str"),
        ({"key": b"abcde"}, "Keys.key", "takes 4 bytes, got 5"),
        ({"triple": [1, 2, 3, 4]}, "Keys.triple", "takes 3 items, got 4"),
        ({"triple": [1, 2, 70000]}, "Keys.triple[2]", "70000 does not fit a u16"),
        ({"names": ["a", b"b"]}, "Keys.names[1]", "a String is a str, got bytes"),
        ({"names": ["\ud800"]}, "Keys.names[0]", "cannot be encoded as UTF-8"),
    ],
)
def test_a_value_that_does_not_fit_raises_local_protocol_error_naming_its_path(
    codec, change, path, reason
):
    with pytest.raises(LocalProtocolError) as info:
        codec.encode(dataclasses.replace(GOOD_KEYS, **change))
    assert str(info.value).startswith(path + ": ")
    assert reason in str(info.value)


@CODEC_PARAMS
def test_a_wrong_value_inside_an_enum_variant_names_the_variant(codec):
    with pytest.raises(LocalProtocolError, match=r"^Sample::Record\.id: -5 does not fit a u32"):
        codec.encode(Record(-5, "x"))


@CODEC_PARAMS
def test_a_nested_struct_of_the_wrong_class_is_named(codec):
    bad = Outer(1, "o", Marker(), [], None, b"")  # type: ignore[arg-type]  # a wrong value, on purpose
    with pytest.raises(LocalProtocolError, match=r"^Outer\.inner: expected Inner, got Marker"):
        codec.encode(bad)


def test_a_value_that_does_not_fit_is_refused_before_anything_is_sent(node):
    node.start_worker("sink", Relay(Keys))
    with pytest.raises(LocalProtocolError, match="Keys.small"):
        node.send(["sink"], dataclasses.replace(GOOD_KEYS, small=256))
    node.send(["sink"], GOOD_KEYS)
    # the first message to arrive is the good one: the bad one never left
    assert node.receive(timeout=T, message_type=Keys).body == GOOD_KEYS


@CODEC_PARAMS
def test_bad_bytes_raise_remote_protocol_error_naming_the_field_path_and_offset(codec):
    payload = codec.encode(Outer(258, "outer", Inner(9, "in"), [True], 7, b"\xde\xad"))
    cut = payload.index(b"in") + 1  # inside inner.b
    with pytest.raises(RemoteProtocolError) as info:
        codec.decoder(Outer)(payload[:cut])
    text = str(info.value)
    assert text.startswith("Outer.inner.b: ")
    assert text.endswith(f"at offset {cut - 1}")


def test_a_bad_list_item_names_its_index():
    payload = BARE.encoder(List[str])(["ok", "fine", "x"])
    bad = payload[:-1] + b"\xff"
    with pytest.raises(RemoteProtocolError, match=r"^Vec<String>\[2\]: a String that is not"):
        BARE.decoder(List[str])(bad)


def test_a_variant_index_out_of_range_names_the_enum():
    with pytest.raises(RemoteProtocolError, match="variant index 9, Sample has 5 variants"):
        BARE.decoder(Sample)(b"\x09")


@CODEC_PARAMS
@pytest.mark.parametrize(
    "tp, announce",
    [(str, 1 << 32), (bytes, 1 << 32), (List[U64], 1 << 32), (Dict[str, str], 1 << 40),
     (List[None], 1 << 40), (List[Marker], 1 << 20), (Route, 1 << 32)],
    ids=["str", "bytes", "list", "map", "list-of-units", "list-of-empty-structs", "route"],
)
def test_a_huge_length_in_a_short_payload_fails_without_allocating_it(codec, tp, announce):
    decode = typed.decoder(tp, codec.name)  # built before measuring
    length = _uint(announce) if codec is BARE else struct.pack("<Q", announce)
    payload = (length + b"\x00" * 10)[:10]
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError, match="at offset"):
            decode(payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


def _uint(n):
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


@CODEC_PARAMS
def test_a_list_of_units_at_the_limit_decodes(codec):
    assert codec.decoder(List[None])(codec.encoder(List[None])([None] * 1000)) == [None] * 1000


# --- declarations --------------------------------------------------------------------------------


class Color(enum.Enum):
    RED = "r"
    GREEN = "g"
    BLUE = "b"


@dataclass
class Tree:
    value: U8
    children: List["Tree"] = field(default_factory=list)


class Shape(TaggedUnion):
    pass


@dataclass
class Leaf(Shape):
    label: str


@dataclass
class Group(Shape):
    items: List[Shape]


@dataclass(frozen=True)
class Frozen:
    when: U64
    tags: Tuple[str, ...] = ()


@dataclass
class Checked:
    even: U8

    def __post_init__(self):
        if self.even % 2:
            raise ValueError("odd")


@CODEC_PARAMS
def test_a_plain_enum_encodes_its_declaration_index(codec):
    tag = codec.encode(Color.BLUE)
    assert tag == (b"\x02" if codec is BARE else b"\x02\x00\x00\x00")
    assert codec.decode(tag, Color) is Color.BLUE


@CODEC_PARAMS
def test_recursive_types_round_trip(codec):
    tree = Tree(1, [Tree(2), Tree(3, [Tree(4)])])
    assert codec.decode(codec.encode(tree), Tree) == tree
    group = Group([Leaf("a"), Group([Leaf("b")]), Group([])])
    assert codec.decode(codec.encode(group), Shape) == group


@CODEC_PARAMS
def test_a_recursive_type_names_the_path_through_its_levels(codec):
    with pytest.raises(LocalProtocolError, match=r"Tree\.children\[1\]\.children\[0\]\.value"):
        codec.encode(Tree(1, [Tree(2), Tree(3, [Tree(400)])]))


@CODEC_PARAMS
def test_a_payload_nested_past_the_depth_limit_is_refused_not_a_stack_overflow(codec):
    leaf = codec.encode(Tree(2))
    level = codec.encode(Tree(1, [Tree(2)]))[: -len(leaf)]  # value 1, then a list of one
    deep = level * 30000 + leaf  # Tree(1, [Tree(1, [... Tree(2) ...])]), 30000 levels
    with pytest.raises(RemoteProtocolError, match=f"nested deeper than {typed.MAX_DEPTH} levels"):
        codec.decoder(Tree)(deep)
    assert codec.decoder(Tree)(level * 50 + leaf).value == 1  # 50 levels are fine


@CODEC_PARAMS
def test_a_value_nested_past_the_depth_limit_is_refused(codec):
    tree = Tree(0)
    for _ in range(typed.MAX_DEPTH + 1):
        tree = Tree(1, [tree])
    with pytest.raises(LocalProtocolError, match="nested deeper than"):
        codec.encode(tree)


@pytest.mark.parametrize("key", [List[U8], Inner, Sample], ids=["list", "dataclass", "enum"])
def test_a_dict_key_whose_values_are_unhashable_is_refused_at_declaration(key):
    with pytest.raises(LocalProtocolError, match="cannot be a dict key"):
        BARE.decoder(Dict[key, U8])  # type: ignore[valid-type]  # a type built at run time


def test_a_namedtuple_without_annotations_is_refused_naming_the_field():
    plain = collections.namedtuple("Plain", "a b")  # type: ignore[name-match]  # the declared name is what the test reads
    with pytest.raises(LocalProtocolError, match=r"Plain\.a has no type annotation"):
        BARE.encode(plain(1, 2))


def test_a_tuple_of_any_length_is_refused_at_declaration_with_a_hint():
    with pytest.raises(LocalProtocolError, match=r"declare List\[T\]"):
        BARE.encode(Frozen(1, ("a",)))


@CODEC_PARAMS
def test_a_class_that_refuses_the_decoded_values_gives_remote_protocol_error(codec):
    with pytest.raises(RemoteProtocolError, match=r"^Checked: Checked refused .*odd"):
        codec.decode(b"\x03", Checked)
    assert codec.decode(b"\x04", Checked) == Checked(4)


def test_a_variant_is_sent_as_its_enum_but_received_as_the_enum():
    assert BARE.encode(Pair(1, "a")) == BARE.encoder(Sample)(Pair(1, "a"))
    with pytest.raises(LocalProtocolError, match="receive the enum, not one of its variants"):
        BARE.decoder(Pair)


def test_a_variant_declared_after_the_enum_was_used_is_refused():
    class Late(TaggedUnion):
        pass

    @dataclass
    class First(Late):
        pass

    BARE.encode(First())
    with pytest.raises(TypeError, match="declare every variant before the enum is used"):

        @dataclass
        class Second(Late):
            pass


def test_int_float_str_bytes_and_none_are_u64_f64_string_vec_u8_and_unit():
    @dataclass
    class Plain:
        a: int
        b: float
        c: str
        d: bytes
        e: None

    assert BARE.encode(Plain(1, 0.5, "s", b"b", None)) == (
        struct.pack("<Qd", 1, 0.5) + b"\x01s\x01b"
    )


def test_the_six_built_in_types_still_refuse_trailing_bytes_but_declared_types_ignore_them():
    with pytest.raises(RemoteProtocolError):
        BARE.decode(b"\x01a!", str)
    assert BARE.decode(b"\x01a!", Tuple[str]) == ("a",)


POSTPONED = """
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from greenockam.codecs import U16, TaggedUnion


@dataclass
class Point:
    x: U16
    tags: List[str]
    next: Optional[Point] = None


class Event(TaggedUnion):
    pass


@dataclass
class Moved(Event):
    to: Point
"""


def test_types_declared_under_postponed_annotations_resolve_from_their_module(tmp_path):
    path = tmp_path / "postponed_messages.py"
    path.write_text(POSTPONED)
    spec = importlib.util.spec_from_file_location("postponed_messages", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["postponed_messages"] = module
    try:
        spec.loader.exec_module(module)
        value = module.Moved(module.Point(7, ["a"], module.Point(8, [])))
        payload = BARE.encode(value)
        assert payload == bytes.fromhex("00 0700 01 0161 01 0800 00 00".replace(" ", ""))
        assert BARE.decode(payload, module.Event) == value
    finally:
        del sys.modules["postponed_messages"]


@pytest.mark.skipif(sys.version_info < (3, 10), reason="kw_only fields came in Python 3.10")
def test_keyword_only_fields_are_passed_by_name():
    kw_only = dataclasses.make_dataclass(  # type: ignore[call-arg,unused-ignore]  # 3.10+ only
        "KwOnly", [("a", U8), ("b", str)], kw_only=True
    )
    value = kw_only(b="yz", a=3)
    assert BARE.encode(value) == b"\x03\x02yz"
    assert BARE.decode(b"\x03\x02yz", kw_only) == value


# --- property tests: generated types and values ---------------------------------------------------

LEAVES = [
    (U8, st.integers(0, 255)),
    (U16, st.integers(0, 2**16 - 1)),
    (U32, st.integers(0, 2**32 - 1)),
    (U64, st.integers(0, 2**64 - 1)),
    (U128, st.integers(0, 2**128 - 1)),
    (I8, st.integers(-128, 127)),
    (I16, st.integers(-(2**15), 2**15 - 1)),
    (I32, st.integers(-(2**31), 2**31 - 1)),
    (I64, st.integers(-(2**63), 2**63 - 1)),
    (I128, st.integers(-(2**127), 2**127 - 1)),
    (F32, st.floats(width=32, allow_nan=False)),
    (F64, st.floats(allow_nan=False)),
    (bool, st.booleans()),
    (Char, st.characters(blacklist_categories=("Cs",))),  # type: ignore[arg-type]  # a tuple of categories
    (str, st.text(max_size=20)),
    (bytes, st.binary(max_size=20)),
    (None, st.none()),
    (Address, st.builds(Address, st.integers(0, 255), st.text(min_size=1, max_size=8))),
    (
        Route,
        st.lists(
            st.builds(Address, st.integers(0, 255), st.text(min_size=1, max_size=8)), max_size=3
        ).map(Route),
    ),
]
KEYS = [leaf for leaf in LEAVES if leaf[0] in (U8, I64, str, bytes, bool)]
_counter = [0]


def _new_name(stem):
    _counter[0] += 1
    return f"{stem}{_counter[0]}"


def _struct(children):
    fields = [(f"f{i}", tp) for i, (tp, _) in enumerate(children)]
    cls = dataclasses.make_dataclass(_new_name("S"), fields)
    return cls, st.tuples(*[s for _, s in children]).map(lambda vals: cls(*vals))


def _enum(children):
    base = type(_new_name("E"), (TaggedUnion,), {})
    strategies = []
    for tp, strategy in children:
        cls = dataclasses.make_dataclass(_new_name("V"), [("value", tp)], bases=(base,))
        strategies.append(strategy.map(cls))
    unit = dataclasses.make_dataclass(_new_name("U"), [], bases=(base,))
    return base, st.one_of(st.just(unit()), *strategies)


def _extend(children):
    return st.one_of(
        children.map(lambda c: (List[c[0]], st.lists(c[1], max_size=4))),  # type: ignore[valid-type]  # types built at run time
        children.map(lambda c: (Optional[c[0]], st.none() | c[1])),
        st.lists(children, min_size=0, max_size=3).map(
            lambda cs: (Tuple[tuple(c[0] for c in cs)] if cs else Tuple[()],
                        st.tuples(*[c[1] for c in cs]))
        ),
        st.tuples(st.sampled_from(KEYS), children).map(
            lambda kc: (
                Dict[kc[0][0], kc[1][0]],  # type: ignore[misc]  # types built at run time
                st.dictionaries(kc[0][1], kc[1][1], max_size=3),
            )
        ),
        children.flatmap(
            lambda c: st.integers(0, 3).map(
                lambda n: (Annotated[List[c[0]], Fixed(n)], st.lists(c[1], min_size=n, max_size=n))  # type: ignore[valid-type]  # types built at run time
            )
        ),
        st.integers(0, 6).map(
            lambda n: (Annotated[bytes, Fixed(n)], st.binary(min_size=n, max_size=n))
        ),
        st.lists(children, max_size=4).map(_struct),
        st.lists(children, min_size=1, max_size=3).map(_enum),
    )


TYPES_AND_VALUES = st.recursive(st.sampled_from(LEAVES), _extend, max_leaves=8)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_generated_types_and_values_round_trip_under_both_codecs(data):
    tp, values = data.draw(TYPES_AND_VALUES)
    value = data.draw(values)
    for codec in ("bare", "bincode"):
        payload = typed.encoder(tp, codec)(value)
        assert typed.decoder(tp, codec)(payload) == value
        assert typed.decoder(tp, codec)(payload + b"\xff\x00") == value  # trailing bytes ignored


FUZZ_TYPES = [
    Outer, Sample, RemoteForwarderInfo, TransportMessageShape, Tree, Shape, Keys, Color,
    Dict[str, List[Optional[I32]]], Tuple[Char, F32, U128], List[Route], Checked,
]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(FUZZ_TYPES), st.sampled_from([BARE, BINCODE]), st.binary(max_size=80))
def test_random_payloads_raise_nothing_but_remote_protocol_error(tp, codec, payload):
    try:
        typed.decoder(tp, codec.name)(payload)
    except RemoteProtocolError:
        pass


SEEDS = {
    Outer: Outer(258, "outer", Inner(9, "in"), [True, False], 1000, b"\xde\xad"),
    Sample: Record(7, "r"),
    RemoteForwarderInfo: RemoteForwarderInfo(
        Route(["1#127.0.0.1:4000", "forwarding_service"]), "a1b2", Address(0, "echoer")
    ),
    Tree: Tree(1, [Tree(2), Tree(3, [Tree(4)])]),
    Shape: Group([Leaf("a"), Group([Leaf("b")])]),
    Keys: GOOD_KEYS,
}


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(sorted(SEEDS, key=lambda t: t.__name__)),
    st.sampled_from([BARE, BINCODE]),
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 200),
)
def test_mutated_payloads_raise_nothing_but_remote_protocol_error(tp, codec, edits, cut):
    payload = bytearray(codec.encode(SEEDS[tp]))
    for at, byte in edits:
        payload[at % len(payload)] = byte
    try:
        codec.decoder(tp)(bytes(payload[: max(cut, 1)]))
    except RemoteProtocolError:
        pass


def test_routes_and_addresses_decoded_from_the_caches_are_the_ones_the_bytes_hold():
    rng = random.Random(7)
    for _ in range(300):
        route = Route([Address(rng.randrange(3), "a" * rng.randrange(1, 140)) for _ in range(2)])
        for value in (route, route[0]):
            for _ in range(2):  # the second time from the cache
                payload = BARE.encoder(type(value))(value)
                assert BARE.decoder(type(value))(payload) == value


# --- in a node, and over TCP ---------------------------------------------------------------------


class Relay(Worker):
    """Sends what it receives, decoded as ``message_type``, on to the app context."""

    def __init__(self, message_type):
        self.message_type = message_type

    def handle_message(self, ctx, msg):
        ctx.send(["app"], msg.body)


@dataclass
class Order:
    id: U64
    item: str
    quantity: U16
    deliver_to: Address


class Verdict(TaggedUnion):
    pass


@dataclass
class Accepted(Verdict):
    order_id: U64
    eta_seconds: U32


@dataclass
class Rejected(Verdict):
    reason: str


class Shop(Worker):
    message_type = Order

    def handle_message(self, ctx, msg):
        order = msg.body
        assert type(order) is Order
        verdict = Accepted(order.id, 60) if order.quantity <= 10 else Rejected("too many")
        ctx.reply(msg, verdict)


@pytest.mark.parametrize("codec", ["bare", "bincode"])
def test_a_struct_worker_answers_a_request_with_an_enum_within_a_node(codec):
    node = Node(codec=codec)
    try:
        node.start_worker("shop", Shop())
        reply = node.request(["shop"], Order(1, "tea", 2, Address(0, "app")), T, Verdict)
        assert reply.body == Accepted(1, 60)
        node.send(["shop"], Order(2, "tea", 11, Address(0, "app")))
        assert node.receive(timeout=T, message_type=Verdict).body == Rejected("too many")
    finally:
        node.stop(timeout=2.0)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("codec", ["bare", "bincode"])
def test_a_struct_worker_answers_a_request_with_an_enum_over_tcp(codec):
    server, client = Node(codec=codec), Node(codec=codec)
    try:
        address = TcpTransport(server).listen("127.0.0.1:0")
        TcpTransport(client)
        server.start_worker("shop", Shop())
        route = ["1#" + address, "shop"]
        replies = [
            client.request(route, Order(i, "tea", q, Address(0, "app")), T, Verdict).body
            for i, q in ((1, 3), (2, 30), (3, 10))
        ]
        assert replies == [Accepted(1, 60), Rejected("too many"), Accepted(3, 60)]
    finally:
        client.stop(timeout=2.0)
        server.stop(timeout=2.0)


def test_a_payload_that_is_not_the_workers_type_is_dropped_and_the_worker_goes_on(node):
    node.start_worker("shop", Shop())
    node.context.send_payload(["shop"], b"\x01")  # far too short for an Order
    reply = node.request(["shop"], Order(5, "tea", 1, Address(0, "app")), T, Verdict)
    assert reply.body == Accepted(5, 60)
