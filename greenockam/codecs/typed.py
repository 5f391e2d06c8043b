"""Typed messages: Rust serde types declared as Python dataclasses, in BARE and bincode.

A message type is declared once, in ordinary typed Python, and encodes byte for byte as the Rust
type with the same shape does under ``serde_bare`` and ``bincode`` (docs/typed-messages.md has
the mapping and the byte layouts)::

    @dataclass
    class Record:                      # struct Record { id: u32, name: String, data: Vec<u8> }
        id: U32
        name: str
        data: bytes

    class Sample(TaggedUnion):         # enum Sample { Ping, Pair(u16, String) }
        pass

    @dataclass
    class Ping(Sample):
        pass

    @dataclass
    class Pair(Sample):
        number: U16
        text: str

The fixed-width integers (:data:`U8` ... :data:`I128`), :data:`F32` and :data:`Char` are
``typing.Annotated`` aliases of ``int``, ``float`` and ``str``: a type checker sees plain Python
values, the codec sees the Rust width. ``Annotated[bytes, Fixed(32)]`` is ``[u8; 32]``.

For each type and codec the encoder and the decoder are generated once, as Python source
specialised to that type, compiled, and cached: no annotation is read per message. The source is
built only from the declarations, never from message data.
"""

from __future__ import annotations

import dataclasses
import enum
import struct
import sys
import threading
import types
from typing import (
    Any,
    Callable,
    ClassVar,
    Dict,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Set,
    Tuple,
    Type,
    Union,
)

from ..address import Address, Route
from ..errors import LocalProtocolError, RemoteProtocolError
from .primitives import BYTE, decode_uint, encode_route, encode_uint

if sys.version_info >= (3, 9):
    from typing import Annotated, get_args, get_origin, get_type_hints
else:  # pragma: no cover - typing_extensions backports Annotated to 3.8
    from typing_extensions import Annotated, get_args, get_origin, get_type_hints

__all__ = [
    "U8",
    "U16",
    "U32",
    "U64",
    "U128",
    "I8",
    "I16",
    "I32",
    "I64",
    "I128",
    "F32",
    "F64",
    "Char",
    "Fixed",
    "TaggedUnion",
    "is_declared",
    "encoder",
    "decoder",
]


# --- declaration markers ---------------------------------------------------------------------


class _Int(NamedTuple):
    """``Annotated`` metadata: a fixed-width integer."""

    bits: int
    signed: bool


class _Float(NamedTuple):
    """``Annotated`` metadata: an IEEE-754 float of 4 or 8 bytes."""

    size: int


class _Char(NamedTuple):
    """``Annotated`` metadata: one Unicode scalar value (Rust ``char``)."""


class Fixed(NamedTuple):
    """``Annotated`` metadata: an array of exactly ``length`` items, without a length prefix.

    ``Annotated[bytes, Fixed(32)]`` is Rust's ``[u8; 32]``; ``Annotated[List[U16], Fixed(3)]``
    is ``[u16; 3]``.
    """

    length: int


U8 = Annotated[int, _Int(8, False)]
U16 = Annotated[int, _Int(16, False)]
U32 = Annotated[int, _Int(32, False)]
U64 = Annotated[int, _Int(64, False)]
U128 = Annotated[int, _Int(128, False)]
I8 = Annotated[int, _Int(8, True)]
I16 = Annotated[int, _Int(16, True)]
I32 = Annotated[int, _Int(32, True)]
I64 = Annotated[int, _Int(64, True)]
I128 = Annotated[int, _Int(128, True)]
F32 = Annotated[float, _Float(4)]
F64 = Annotated[float, _Float(8)]
Char = Annotated[str, _Char()]


class TaggedUnion:
    """Base class of a Rust enum whose variants carry data.

    Subclass it once for the enum, then subclass the enum once per variant, in the Rust
    declaration order (the order is the variant index on the wire). A variant is a dataclass;
    a class with no fields is a unit variant, one field a newtype variant, several fields a tuple
    or struct variant (serde encodes these three the same way).

    Attributes:
        variants: the enum's variant classes, in declaration order (set on the enum itself).
    """

    variants: ClassVar[Tuple[type, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        enum_class = _enum_of(cls)
        if enum_class is None:
            cls.variants = ()  # a new enum
            return
        if enum_class is not cls.__bases__[0]:
            raise TypeError(
                f"{cls.__name__} subclasses the variant {cls.__bases__[0].__name__}; "
                f"a variant of {enum_class.__name__} subclasses the enum itself"
            )
        if enum_class in _in_use:
            raise TypeError(
                f"{cls.__name__} is declared after {enum_class.__name__} was first encoded or "
                "decoded: declare every variant before the enum is used"
            )
        enum_class.variants = enum_class.variants + (cls,)


_in_use: Set[type] = set()  # enums whose variants are frozen: a plan of theirs exists


def _enum_of(cls: type) -> Optional[Type[TaggedUnion]]:
    """The enum class a TaggedUnion variant belongs to; ``None`` for an enum itself."""
    bases = [b for b in cls.__mro__[1:] if b is not TaggedUnion and issubclass(b, TaggedUnion)]
    return bases[-1] if bases else None


# --- the type tree ---------------------------------------------------------------------------
#
# A declaration is first resolved into a tree of _Node objects (one per type, shared between
# codecs); the code generator then walks the tree once per codec.


class _Node:
    """One resolved type: its kind, its parameters and its children."""

    __slots__ = ("kind", "name", "args", "children", "cls", "fields")

    def __init__(
        self,
        kind: str,
        name: str,
        args: Any = None,
        children: Sequence[Any] = (),
        cls: Any = None,
        fields: Sequence[str] = (),
    ) -> None:
        self.kind = kind
        self.name = name  # shown in error messages: "u8", "Vec<String>", "Record"
        self.args = args
        self.children: List[Any] = list(children)
        self.cls = cls
        self.fields = tuple(fields)


_SCALARS: Dict[Any, _Node] = {
    int: _Node("int", "u64", _Int(64, False)),
    float: _Node("float", "f64", _Float(8)),
    bool: _Node("bool", "bool"),
    str: _Node("str", "String"),
    bytes: _Node("bytes", "Vec<u8>"),
    None: _Node("unit", "()"),
    type(None): _Node("unit", "()"),
    Address: _Node("address", "Address"),
    Route: _Node("route", "Route"),
}

_UNION_TYPES: Tuple[Any, ...] = (Union,)
if sys.version_info >= (3, 10):
    _UNION_TYPES += (types.UnionType,)


def _resolve(tp: Any, named: Dict[Any, _Node]) -> _Node:
    """The tree of ``tp``; ``named`` holds the structs and enums resolved so far (recursion).

    Raises:
        TypeError: ``tp`` is not a type this module can encode, with the reason.
    """
    try:
        scalar = _SCALARS.get(tp)
    except TypeError:
        scalar = None
    if scalar is not None:
        return scalar
    origin = get_origin(tp)
    if origin is Annotated:
        base, *meta = get_args(tp)
        return _resolve_annotated(tp, base, meta, named)
    if origin in (list, List):
        (item,) = get_args(tp) or (None,)
        if item is None:
            raise TypeError("a list needs its item type: List[U8], List[str], ...")
        child = _resolve(item, named)
        return _Node("list", f"Vec<{child.name}>", children=[child])
    if origin in (tuple, Tuple):
        if tp is Tuple:
            raise TypeError("a tuple needs its item types: Tuple[U8, str], ...")
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            raise TypeError("Tuple[T, ...] has no fixed length: declare List[T] for a Vec<T>")
        if args == ((),):  # Tuple[()] on 3.8-3.10
            args = ()
        children = [_resolve(a, named) for a in args]
        return _Node("tuple", "(" + ", ".join(c.name for c in children) + ")", children=children)
    if origin in (dict, Dict):
        key, value = get_args(tp) or (None, None)
        if key is None:
            raise TypeError("a dict needs its key and value types: Dict[str, U32], ...")
        children = [_resolve(key, named), _resolve(value, named)]
        if not _hashable(children[0], ()):
            raise TypeError(f"{key!r} cannot be a dict key: its decoded values are not hashable")
        return _Node("map", f"Map<{children[0].name}, {children[1].name}>", children=children)
    if origin in _UNION_TYPES:
        options = [a for a in get_args(tp) if a is not type(None)]
        if len(options) != 1 or len(get_args(tp)) != 2:
            raise TypeError(
                f"{tp!r}: only Optional[T] is supported among unions; a Rust enum is declared "
                "as a TaggedUnion"
            )
        child = _resolve(options[0], named)
        return _Node("option", f"Option<{child.name}>", children=[child])
    if isinstance(tp, type):
        return _resolve_class(tp, named)
    raise TypeError(f"{tp!r} is not a supported message type")


def _hashable(node: _Node, seen: Tuple[_Node, ...]) -> bool:
    """Whether every decoded value of ``node`` can be a dict key."""
    if node.kind in ("list", "array", "map"):
        return False
    if node in seen:
        return True
    if node.kind == "struct" and getattr(node.cls, "__hash__", None) is None:
        return False  # a dataclass with eq=True that is neither frozen nor unsafe_hash
    return all(_hashable(child, seen + (node,)) for child in node.children)


def _resolve_annotated(tp: Any, base: Any, meta: List[Any], named: Dict[Any, _Node]) -> _Node:
    marks = [m for m in meta if isinstance(m, (_Int, _Float, _Char, Fixed))]
    if len(marks) != 1:
        return _resolve(base, named)  # Annotated metadata of other libraries: the base type
    mark = marks[0]
    if isinstance(mark, _Int) and base is int:
        return _Node("int", ("i" if mark.signed else "u") + str(mark.bits), mark)
    if isinstance(mark, _Float) and base is float:
        return _Node("float", f"f{mark.size * 8}", mark)
    if isinstance(mark, _Char) and base is str:
        return _Node("char", "char")
    if isinstance(mark, Fixed):
        if not isinstance(mark.length, int) or mark.length < 0:
            raise TypeError(f"Fixed needs a length >= 0, got {mark.length!r}")
        if base is bytes:
            return _Node("fixed_bytes", f"[u8; {mark.length}]", mark.length)
        if get_origin(base) in (list, List):
            child = _resolve(get_args(base)[0], named)
            return _Node(
                "array", f"[{child.name}; {mark.length}]", mark.length, children=[child]
            )
    raise TypeError(f"{tp!r}: {mark!r} does not apply to {base!r}")


def _hints(cls: type) -> Dict[str, Any]:
    try:
        return get_type_hints(cls, include_extras=True)
    except Exception as exc:
        raise TypeError(
            f"the annotations of {cls.__qualname__} cannot be resolved ({exc}); declare message "
            "types at module level"
        ) from None


def _resolve_class(cls: type, named: Dict[Any, _Node]) -> _Node:
    node = named.get(cls)
    if node is not None:
        return node  # a recursive reference: the same node, generated as a call
    if issubclass(cls, TaggedUnion):
        if _enum_of(cls) is not None:
            raise TypeError(
                f"{cls.__qualname__} is a variant of {cls.__mro__[1].__qualname__}: declare and "
                "receive the enum, not one of its variants"
            )
        if not cls.variants:
            raise TypeError(f"the enum {cls.__qualname__} has no variants")
        _in_use.add(cls)
        node = named[cls] = _Node("enum", cls.__qualname__, cls=cls)
        node.children = [_resolve_struct(v, named, register=False) for v in cls.variants]
        return node
    if issubclass(cls, enum.Enum):
        members = list(cls)
        if not members:
            raise TypeError(f"the enum {cls.__qualname__} has no members")
        return _Node("unit_enum", cls.__qualname__, members, cls=cls)
    if dataclasses.is_dataclass(cls) or (issubclass(cls, tuple) and hasattr(cls, "_fields")):
        return _resolve_struct(cls, named, register=True)
    raise TypeError(
        f"{cls.__qualname__} is not a message type: declare a dataclass, a NamedTuple, a "
        "TaggedUnion or an enum.Enum"
    )


def _resolve_struct(cls: type, named: Dict[Any, _Node], register: bool) -> _Node:
    node = _Node("struct", cls.__qualname__, cls=cls)
    if register:
        named[cls] = node
    hints = _hints(cls)
    if dataclasses.is_dataclass(cls):
        fields = dataclasses.fields(cls)
        for f in fields:
            if not f.init:
                raise TypeError(
                    f"{cls.__qualname__}.{f.name} has init=False: every field of a message "
                    "goes on the wire and comes back through the constructor"
                )
        node.fields = tuple(f.name for f in fields)
        node.args = tuple(getattr(f, "kw_only", False) is True for f in fields)
    elif issubclass(cls, tuple) and hasattr(cls, "_fields"):
        node.fields = tuple(cls._fields)
        node.args = None  # a NamedTuple: fields by index
    elif _enum_of(cls) is not None and not cls.__dict__.get("__annotations__"):
        node.fields = ()  # a unit variant declared as a plain class
        node.args = ()
    else:
        raise TypeError(f"the variant {cls.__qualname__} must be a dataclass")
    missing = [name for name in node.fields if name not in hints]
    if missing:
        raise TypeError(f"{cls.__qualname__}.{missing[0]} has no type annotation")
    node.children = [_resolve(hints[name], named) for name in node.fields]
    return node


def is_declared(tp: Any) -> bool:
    """Whether ``tp`` is a message class for :func:`encoder`: a dataclass, a NamedTuple, a
    TaggedUnion (or one of its variants) or an ``enum.Enum``."""
    return isinstance(tp, type) and (
        dataclasses.is_dataclass(tp)
        or issubclass(tp, (TaggedUnion, enum.Enum))
        or (issubclass(tp, tuple) and hasattr(tp, "_fields"))
    )


# --- runtime helpers the generated code calls ------------------------------------------------


def _enc_fail(path: str, reason: str) -> LocalProtocolError:
    return LocalProtocolError(f"{path}: {reason}")


def _dec_fail(path: str, pos: int, reason: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"{path}: {reason} at offset {pos}")


def _type_name(value: Any) -> str:
    return type(value).__name__


def _as_int(value: Any, path: str, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    raise _enc_fail(path, f"a {name} is an int, got {_type_name(value)}")


def _as_float(value: Any, path: str, name: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise _enc_fail(path, f"a {name} is a float, got {_type_name(value)}")


def _as_bytes(value: Any, path: str, name: str) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise _enc_fail(path, f"a {name} is bytes, got {_type_name(value)}")


def _as_str(value: Any, path: str) -> bytes:
    if not isinstance(value, str):
        raise _enc_fail(path, f"a String is a str, got {_type_name(value)}")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _enc_fail(path, f"the str cannot be encoded as UTF-8: {exc.reason}") from None


def _as_seq(value: Any, path: str, name: str) -> Sequence[Any]:
    if isinstance(value, (list, tuple)):
        return value
    raise _enc_fail(path, f"a {name} is a list or tuple, got {_type_name(value)}")


def _check_char(value: Any, path: str) -> int:
    if not isinstance(value, str) or len(value) != 1:
        raise _enc_fail(path, f"a char is a str of one character, got {value!r}")
    code = ord(value)
    if 0xD800 <= code <= 0xDFFF:
        raise _enc_fail(path, f"a char cannot be the surrogate U+{code:04X}")
    return code


def _read_uint(data: bytes, pos: int, end: int, path: str) -> Tuple[int, int]:
    try:
        return decode_uint(data, pos, end)
    except RemoteProtocolError:
        if pos >= end:
            raise _dec_fail(path, pos, "the payload ends inside a uint") from None
        raise _dec_fail(path, pos, "a uint longer than 10 bytes or 64 bits") from None


def _char_utf8(data: bytes, pos: int, end: int) -> Optional[str]:
    """The UTF-8 char at ``pos`` (bincode's ``char``), or ``None`` if there is none."""
    first = data[pos]
    size = 1 if first < 0x80 else 2 if first < 0xE0 else 3 if first < 0xF0 else 4
    try:
        text = data[pos : pos + size].decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if len(text) == 1 and pos + size <= end else None


_new_tuple = tuple.__new__

# The struct formats of the fixed-width types (u8 is a table lookup, 128 bits int.to_bytes).
_FORMATS = {
    "u16": "<H",
    "u32": "<I",
    "u64": "<Q",
    "i8": "b",
    "i16": "<h",
    "i32": "<i",
    "i64": "<q",
    "f32": "<f",
    "f64": "<d",
}

# Routes and addresses decoded by the bare codec, by their bytes, and the bare encodings of
# addresses. Each is cleared wholesale when full: distinct values cost re-parsing, never memory.
_CACHE_SIZE = 4096
_KEY_BYTES = 256  # longer routes and addresses are not cached: entries stay small
_decoded_routes: Dict[bytes, Route] = {}
_decoded_addresses: Dict[bytes, Address] = {}
_encoded_addresses: Dict[Address, bytes] = {}


def _encode_address(address: Address) -> bytes:
    """The BARE encoding of ``address``, as the first address of :func:`encode_route` writes it.
    Called once per address: the generated code caches the result."""
    if len(_encoded_addresses) >= _CACHE_SIZE:
        _encoded_addresses.clear()
    return encode_route(_new_tuple(Route, (address,)))[1:]


# Every name the generated code uses but its own constants (classes, enum members).
_ENV: Dict[str, Any] = {
    "BYTE": BYTE,
    "encode_uint": encode_uint,
    "encode_route": encode_route,
    "read_uint": _read_uint,
    "enc_fail": _enc_fail,
    "dec_fail": _dec_fail,
    "type_name": _type_name,
    "as_int": _as_int,
    "as_float": _as_float,
    "as_bytes": _as_bytes,
    "as_str": _as_str,
    "as_seq": _as_seq,
    "check_char": _check_char,
    "char_utf8": _char_utf8,
    "new_tuple": _new_tuple,
    "Address": Address,
    "Route": Route,
    "routes": _decoded_routes,
    "addresses": _decoded_addresses,
    "address_bytes": _encoded_addresses,
    "encode_address": _encode_address,
    "struct_error": struct.error,
}
_ENV.update({"pack_" + name: struct.Struct(f).pack for name, f in _FORMATS.items()})
_ENV.update({"unpack_" + name: struct.Struct(f).unpack_from for name, f in _FORMATS.items()})

# Zero-sized items (unit, empty structs) take no bytes, so a length cannot be checked against
# the bytes left; more than this many is refused rather than looped over.
_MAX_ZERO_SIZED_ITEMS = 65536


# --- code generation -------------------------------------------------------------------------


class _Gen:
    """Generates the encoder and decoder source of one type for one codec."""

    def __init__(self, codec: str, root: _Node) -> None:
        self.bare = codec == "bare"
        self.codec = codec
        self.root = root
        self.env: Dict[str, Any] = dict(_ENV)  # the names the generated code uses
        self.counter = 0
        self.inlining: List[_Node] = []

    def var(self, stem: str) -> str:
        self.counter += 1
        return f"{stem}{self.counter}"

    def const(self, value: Any, stem: str = "k") -> str:
        name = self.var(stem)
        self.env[name] = value
        return name

    @staticmethod
    def path(path: str) -> str:
        """The f-string expression of a path: ``path`` is f-string text after ``{path}``."""
        return f'f"{{path}}{path}"' if path else "path"

    # -- sizes -----------------------------------------------------------------------------

    def min_size(self, node: _Node, seen: Tuple[_Node, ...] = ()) -> int:
        """The fewest bytes a value of ``node`` can take: bounds a length before allocating."""
        kind = node.kind
        if node in seen:
            return 0
        length = 1 if self.bare else 8
        if kind == "int":
            return int(node.args.bits // 8)
        if kind == "float":
            return int(node.args.size)
        if kind in ("bool", "option"):
            return 1
        if kind == "char":
            return 4 if self.bare else 1
        if kind in ("str", "bytes", "list", "map", "route"):
            return length
        if kind == "address":
            return 1 + length
        if kind == "unit":
            return 0
        if kind == "fixed_bytes":
            return int(node.args)
        if kind == "array":
            return int(node.args) * self.min_size(node.children[0], seen)
        if kind in ("tuple", "struct"):
            return sum(self.min_size(c, seen + (node,)) for c in node.children)
        tag = 1 if self.bare else 4
        if kind == "unit_enum":
            return tag
        # enum
        return tag + min(self.min_size(v, seen + (node,)) for v in node.children)

    # -- encoding --------------------------------------------------------------------------

    def write_length(self, n: str) -> str:
        if self.bare:
            return f"w(BYTE[{n}] if {n} < 128 else encode_uint({n}))"
        return f"w(pack_u64({n}))"

    def write_tag(self, index: int) -> str:
        raw = encode_uint(index) if self.bare else struct.pack("<I", index)
        return f"w({raw!r})"

    def enc(self, node: _Node, x: str, path: str, out: List[str], ind: str) -> None:
        """Lines that append the encoding of the value in variable ``x`` through ``w``."""
        kind = node.kind
        p = self.path(path)
        name = node.name
        if kind == "int":
            bits, signed = node.args
            lo = -(1 << (bits - 1)) if signed else 0
            hi = (1 << (bits - 1 if signed else bits)) - 1
            out.append(f"{ind}if {x}.__class__ is not int: {x} = as_int({x}, {p}, {name!r})")
            out.append(f"{ind}if not {lo} <= {x} <= {hi}:")
            out.append(f"{ind}    raise enc_fail({p}, f'{{{x}}} does not fit a {name}')")
            if bits == 8 and not signed:
                out.append(f"{ind}w(BYTE[{x}])")
            elif bits == 128:
                out.append(f"{ind}w({x}.to_bytes(16, 'little', signed={signed}))")
            else:
                out.append(f"{ind}w(pack_{name}({x}))")
        elif kind == "float":
            out.append(f"{ind}if {x}.__class__ is not float: {x} = as_float({x}, {p}, {name!r})")
            if node.args.size == 4:  # a double too large for an f32 raises OverflowError
                out.append(f"{ind}try:")
                out.append(f"{ind}    w(pack_f32({x}))")
                out.append(f"{ind}except (OverflowError, struct_error):")
                out.append(
                    f"{ind}    raise enc_fail({p}, f'{{{x}}} does not fit an f32') from None"
                )
            else:
                out.append(f"{ind}w(pack_f64({x}))")
        elif kind == "bool":
            out.append(f"{ind}if {x} is True: w(b'\\x01')")
            out.append(f"{ind}elif {x} is False: w(b'\\x00')")
            out.append(
                f"{ind}else: raise enc_fail({p}, f'a bool is True or False, got {{{x}!r}}')"
            )
        elif kind == "char":
            c = self.var("c")
            out.append(f"{ind}{c} = check_char({x}, {p})")
            if self.bare:
                out.append(f"{ind}w(pack_u32({c}))")
            else:
                out.append(f"{ind}w({x}.encode('utf-8'))")
        elif kind == "str":
            d, n = self.var("d"), self.var("n")
            out.append(f"{ind}if {x}.__class__ is str:")
            out.append(f"{ind}    try:")
            out.append(f"{ind}        {d} = {x}.encode('utf-8')")
            out.append(f"{ind}    except UnicodeError:")
            out.append(f"{ind}        {d} = as_str({x}, {p})")
            out.append(f"{ind}else:")
            out.append(f"{ind}    {d} = as_str({x}, {p})")
            out.append(f"{ind}{n} = len({d})")
            out.append(ind + self.write_length(n))
            out.append(f"{ind}w({d})")
        elif kind == "bytes":
            n = self.var("n")
            out.append(f"{ind}if {x}.__class__ is not bytes: {x} = as_bytes({x}, {p}, {name!r})")
            out.append(f"{ind}{n} = len({x})")
            out.append(ind + self.write_length(n))
            out.append(f"{ind}w({x})")
        elif kind == "fixed_bytes":
            out.append(f"{ind}if {x}.__class__ is not bytes: {x} = as_bytes({x}, {p}, {name!r})")
            out.append(f"{ind}if len({x}) != {node.args}:")
            out.append(
                f"{ind}    raise enc_fail({p}, f'a {name} takes {node.args} bytes, "
                f"got {{len({x})}}')"
            )
            out.append(f"{ind}w({x})")
        elif kind == "unit":
            out.append(f"{ind}if {x} is not None:")
            out.append(f"{ind}    raise enc_fail({p}, f'the unit value is None, got {{{x}!r}}')")
        elif kind in ("list", "array"):
            i, item = self.var("i"), self.var("e")
            out.append(f"{ind}if {x}.__class__ is not list: {x} = as_seq({x}, {p}, {name!r})")
            if kind == "list":
                n = self.var("n")
                out.append(f"{ind}{n} = len({x})")
                out.append(ind + self.write_length(n))
            else:
                out.append(f"{ind}if len({x}) != {node.args}:")
                out.append(
                    f"{ind}    raise enc_fail({p}, f'a {name} takes {node.args} items, "
                    f"got {{len({x})}}')"
                )
            out.append(f"{ind}for {i}, {item} in enumerate({x}):")
            self.enc(node.children[0], item, f"{path}[{{{i}}}]", out, ind + "    ")
        elif kind == "tuple":
            out.append(f"{ind}if {x}.__class__ is not tuple: {x} = as_seq({x}, {p}, 'tuple')")
            out.append(f"{ind}if len({x}) != {len(node.children)}:")
            out.append(
                f"{ind}    raise enc_fail({p}, f'a {name} has {len(node.children)} items, "
                f"got {{len({x})}}')"
            )
            for position, child in enumerate(node.children):
                item = self.var("e")
                out.append(f"{ind}{item} = {x}[{position}]")
                self.enc(child, item, f"{path}[{position}]", out, ind)
        elif kind == "option":
            out.append(f"{ind}if {x} is None:")
            out.append(f"{ind}    w(b'\\x00')")
            out.append(f"{ind}else:")
            out.append(f"{ind}    w(b'\\x01')")
            self.enc(node.children[0], x, path, out, ind + "    ")
        elif kind == "map":
            k, v, n = self.var("k"), self.var("v"), self.var("n")
            out.append(f"{ind}if not isinstance({x}, dict):")
            out.append(f"{ind}    raise enc_fail({p}, f'a map is a dict, got {{type_name({x})}}')")
            out.append(f"{ind}{n} = len({x})")
            out.append(ind + self.write_length(n))
            out.append(f"{ind}for {k}, {v} in {x}.items():")
            self.enc(node.children[0], k, f"{path}[{{{k}!r}}]", out, ind + "    ")
            self.enc(node.children[1], v, f"{path}[{{{k}!r}}]", out, ind + "    ")
        elif kind == "address":
            out.append(f"{ind}if {x}.__class__ is not Address:")
            out.append(
                f"{ind}    raise enc_fail({p}, f'expected an Address, got {{type_name({x})}}')"
            )
            if self.bare:  # addresses repeat: their encodings are cached
                r = self.var("r")
                out.append(f"{ind}{r} = address_bytes.get({x})")
                out.append(f"{ind}if {r} is None:")
                out.append(f"{ind}    {r} = address_bytes[{x}] = encode_address({x})")
                out.append(f"{ind}w({r})")
            else:
                d = self.var("d")
                out.append(f"{ind}{d} = {x}[1].encode('utf-8')")
                out.append(f"{ind}w(BYTE[{x}[0]])")
                out.append(ind + self.write_length(f"len({d})"))
                out.append(f"{ind}w({d})")
        elif kind == "route":
            out.append(f"{ind}if {x}.__class__ is not Route:")
            out.append(
                f"{ind}    raise enc_fail({p}, f'expected a Route, got {{type_name({x})}}')"
            )
            if self.bare:
                out.append(f"{ind}w(encode_route({x}))")  # the frame codec's encoding
            else:
                a = self.var("a")
                out.append(ind + self.write_length(f"len({x})"))
                out.append(f"{ind}for {a} in {x}:")
                self.enc(_SCALARS[Address], a, path, out, ind + "    ")
        elif kind == "unit_enum":
            numbers = self.const({m: i for i, m in enumerate(node.args)}, "numbers")
            t, cls = self.var("t"), self.const(node.cls, "cls")
            out.append(f"{ind}{t} = {numbers}.get({x}) if {x}.__class__ is {cls} else None")
            out.append(f"{ind}if {t} is None:")
            out.append(
                f"{ind}    raise enc_fail({p}, f'expected a {name} member, got {{{x}!r}}')"
            )
            if self.bare:
                out.append(f"{ind}w(BYTE[{t}] if {t} < 128 else encode_uint({t}))")
            else:
                out.append(f"{ind}w(pack_u32({t}))")
        elif kind == "struct":
            if self.recursive(node):
                return self.call_enc(node, x, path, out, ind)
            cls = self.const(node.cls, "cls")
            out.append(f"{ind}if {x}.__class__ is not {cls} and not isinstance({x}, {cls}):")
            out.append(
                f"{ind}    raise enc_fail({p}, f'expected {name}, got {{type_name({x})}}')"
            )
            self.enc_fields(node, x, path, out, ind)
        elif kind == "enum":
            if self.recursive(node):
                return self.call_enc(node, x, path, out, ind)
            t = self.var("t")
            out.append(f"{ind}{t} = {x}.__class__")
            self.inlining.append(node)
            for number, variant in enumerate(node.children):
                cls = self.const(variant.cls, "cls")
                out.append(f"{ind}{'elif' if number else 'if'} {t} is {cls}:")
                out.append(f"{ind}    {self.write_tag(number)}")
                self.enc_fields(variant, x, self.variant_path(path, variant), out, ind + "    ")
            self.inlining.pop()
            out.append(f"{ind}else:")
            out.append(
                f"{ind}    raise enc_fail({p}, f'expected a variant of {name}, got "
                f"{{type_name({x})}}')"
            )
        else:  # pragma: no cover - every kind above
            raise AssertionError(kind)

    def enc_fields(self, node: _Node, x: str, path: str, out: List[str], ind: str) -> None:
        self.inlining.append(node)
        for k, (field, child) in enumerate(zip(node.fields, node.children)):
            f = self.var("f")
            out.append(f"{ind}{f} = {x}[{k}]" if node.args is None else f"{ind}{f} = {x}.{field}")
            self.enc(child, f, f"{path}.{field}", out, ind)
        if not node.fields:
            out.append(f"{ind}pass")
        self.inlining.pop()

    @staticmethod
    def variant_path(path: str, variant: _Node) -> str:
        return f"{path}::{variant.cls.__name__}"

    def recursive(self, node: _Node) -> bool:
        return node in self.inlining

    def call_enc(self, node: _Node, x: str, path: str, out: List[str], ind: str) -> None:
        fn = self.const(_lazy(node.cls, self.codec, "encode_into"), "rec")
        out.append(f"{ind}{fn}({x}, w, {self.path(path)})")

    # -- decoding --------------------------------------------------------------------------

    def need(self, size: Any, what: str, path: str, out: List[str], ind: str) -> None:
        out.append(f"{ind}if end - pos < {size}:")
        out.append(
            f"{ind}    raise dec_fail({self.path(path)}, pos, "
            f"f'{what} takes {{{size}}} bytes, {{end - pos}} remain')"
        )

    def read_length(self, n: str, path: str, out: List[str], ind: str) -> None:
        if self.bare:
            self.need(1, "a length", path, out, ind)
            out.append(f"{ind}{n} = data[pos]")
            out.append(f"{ind}if {n} < 128: pos += 1")
            out.append(f"{ind}else: {n}, pos = read_uint(data, pos, end, {self.path(path)})")
        else:
            self.need(8, "a length", path, out, ind)
            out.append(f"{ind}{n} = unpack_u64(data, pos)[0]")
            out.append(f"{ind}pos += 8")

    def check_count(self, n: str, item: _Node, path: str, out: List[str], ind: str) -> None:
        """Refuse a count the bytes left cannot hold, before allocating anything."""
        size = self.min_size(item)
        limit = f"(end - pos) // {size}" if size else str(_MAX_ZERO_SIZED_ITEMS)
        out.append(f"{ind}if {n} > {limit}:")
        out.append(
            f"{ind}    raise dec_fail({self.path(path)}, pos, f'{{{n}}} items announced, "
            f"the {{end - pos}} bytes left hold at most {{{limit}}}')"
        )

    def dec(self, node: _Node, x: str, path: str, out: List[str], ind: str) -> None:
        """Lines that decode one value at ``pos`` into variable ``x`` and advance ``pos``."""
        kind = node.kind
        p = self.path(path)
        name = node.name
        if kind == "int":
            bits, signed = node.args
            size = bits // 8
            self.need(size, f"a {name}", path, out, ind)
            if bits == 8 and not signed:
                out.append(f"{ind}{x} = data[pos]")
            elif bits == 128:
                out.append(
                    f"{ind}{x} = int.from_bytes(data[pos:pos + 16], 'little', signed={signed})"
                )
            else:
                out.append(f"{ind}{x} = unpack_{name}(data, pos)[0]")
            out.append(f"{ind}pos += {size}")
        elif kind == "float":
            size = node.args.size
            self.need(size, f"a {name}", path, out, ind)
            out.append(f"{ind}{x} = unpack_{name}(data, pos)[0]")
            out.append(f"{ind}pos += {size}")
        elif kind in ("bool", "option"):
            b = self.var("b")
            self.need(1, "a bool" if kind == "bool" else "an option tag", path, out, ind)
            out.append(f"{ind}{b} = data[pos]")
            out.append(f"{ind}if {b} > 1:")
            what = "a bool is 00 or 01" if kind == "bool" else "an option tag is 00 or 01"
            out.append(f"{ind}    raise dec_fail({p}, pos, f'{what}, got {{{b}:02x}}')")
            out.append(f"{ind}pos += 1")
            if kind == "bool":
                out.append(f"{ind}{x} = {b} == 1")
            else:
                out.append(f"{ind}if {b}:")
                self.dec(node.children[0], x, path, out, ind + "    ")
                out.append(f"{ind}else:")
                out.append(f"{ind}    {x} = None")
        elif kind == "char":
            if self.bare:
                c = self.var("c")
                self.need(4, "a char", path, out, ind)
                out.append(f"{ind}{c} = unpack_u32(data, pos)[0]")
                out.append(f"{ind}if {c} > 0x10FFFF or 0xD800 <= {c} <= 0xDFFF:")
                out.append(
                    f"{ind}    raise dec_fail({p}, pos, f'{{{c}:#x}} is not a Unicode scalar "
                    "value')"
                )
                out.append(f"{ind}{x} = chr({c})")
                out.append(f"{ind}pos += 4")
            else:
                self.need(1, "a char", path, out, ind)
                out.append(f"{ind}{x} = char_utf8(data, pos, end)")
                out.append(f"{ind}if {x} is None:")
                out.append(f"{ind}    raise dec_fail({p}, pos, 'not a char in UTF-8')")
                out.append(f"{ind}pos += len({x}.encode('utf-8'))")
        elif kind in ("str", "bytes"):
            n = self.var("n")
            self.read_length(n, path, out, ind)
            out.append(f"{ind}if {n} > end - pos:")
            out.append(
                f"{ind}    raise dec_fail({p}, pos, f'a length of {{{n}}} bytes, "
                f"{{end - pos}} remain')"
            )
            if kind == "bytes":
                out.append(f"{ind}{x} = data[pos:pos + {n}]")
            else:
                out.append(f"{ind}try:")
                out.append(f"{ind}    {x} = data[pos:pos + {n}].decode('utf-8')")
                out.append(f"{ind}except UnicodeDecodeError as exc:")
                out.append(
                    f"{ind}    raise dec_fail({p}, pos + exc.start, 'a String that is not valid "
                    "UTF-8') from None"
                )
            out.append(f"{ind}pos += {n}")
        elif kind == "fixed_bytes":
            self.need(node.args, f"a {name}", path, out, ind)
            out.append(f"{ind}{x} = data[pos:pos + {node.args}]")
            out.append(f"{ind}pos += {node.args}")
        elif kind == "unit":
            out.append(f"{ind}{x} = None")
        elif kind == "route" and self.bare:
            # Routes repeat: look the raw bytes up first. The scan assumes one-byte lengths; a
            # wrong guess only misses, since every key is bytes that decode to exactly its route.
            q, start = self.var("q"), self.var("s")
            out.append(f"{ind}{q} = pos + 1")
            out.append(f"{ind}try:")
            out.append(f"{ind}    for _ in range(data[pos]): {q} += 2 + data[{q} + 1]")
            out.append(f"{ind}    {x} = routes.get(data[pos:{q}]) if {q} <= end else None")
            out.append(f"{ind}except IndexError:")
            out.append(f"{ind}    {x} = None")
            out.append(f"{ind}if {x} is not None:")
            out.append(f"{ind}    pos = {q}")
            out.append(f"{ind}else:")
            out.append(f"{ind}    {start} = pos")
            self.dec_list(node, x, path, out, ind + "    ")
            out.append(f"{ind}    if len(routes) >= {_CACHE_SIZE}: routes.clear()")
            keep = f"if pos - {start} <= {_KEY_BYTES}:"
            out.append(f"{ind}    {keep} routes[data[{start}:pos]] = {x}")
        elif kind in ("list", "array", "route"):
            self.dec_list(node, x, path, out, ind)
        elif kind == "tuple":
            items = [self.var("e") for _ in node.children]
            for position, (child, item) in enumerate(zip(node.children, items)):
                self.dec(child, item, f"{path}[{position}]", out, ind)
            out.append(f"{ind}{x} = ({''.join(item + ', ' for item in items)})")
        elif kind == "map":
            n, i, k, v = self.var("n"), self.var("i"), self.var("k"), self.var("v")
            self.read_length(n, path, out, ind)
            pair = _Node("tuple", "", children=node.children)
            self.check_count(n, pair, path, out, ind)
            out.append(f"{ind}{x} = {{}}")
            out.append(f"{ind}for {i} in range({n}):")
            self.dec(node.children[0], k, f"{path}[{{{i}}}].key", out, ind + "    ")
            self.dec(node.children[1], v, f"{path}[{{{i}}}].value", out, ind + "    ")
            out.append(f"{ind}    {x}[{k}] = {v}")
        elif kind == "address" and self.bare:
            # Addresses repeat: look the raw bytes up first, assuming a one-byte length (a wrong
            # guess only misses, as for routes).
            q, start = self.var("q"), self.var("s")
            out.append(f"{ind}try:")
            out.append(f"{ind}    {q} = pos + 2 + data[pos + 1]")
            out.append(f"{ind}    {x} = addresses.get(data[pos:{q}]) if {q} <= end else None")
            out.append(f"{ind}except IndexError:")
            out.append(f"{ind}    {x} = None")
            out.append(f"{ind}if {x} is not None:")
            out.append(f"{ind}    pos = {q}")
            out.append(f"{ind}else:")
            out.append(f"{ind}    {start} = pos")
            self.dec_address(x, path, out, ind + "    ")
            out.append(f"{ind}    if len(addresses) >= {_CACHE_SIZE}: addresses.clear()")
            keep = f"if pos - {start} <= {_KEY_BYTES}:"
            out.append(f"{ind}    {keep} addresses[data[{start}:pos]] = {x}")
        elif kind == "address":
            self.dec_address(x, path, out, ind)
        elif kind in ("unit_enum", "enum"):
            if kind == "enum" and self.recursive(node):
                return self.call_dec(node, x, path, out, ind)
            t, q = self.var("t"), self.var("q")
            count = len(node.args) if kind == "unit_enum" else len(node.children)
            if self.bare:
                self.need(1, "a variant index", path, out, ind)
                out.append(f"{ind}{t} = data[pos]")
                out.append(f"{ind}if {t} < 128: {q} = pos + 1")
                out.append(f"{ind}else: {t}, {q} = read_uint(data, pos, end, {p})")
            else:
                self.need(4, "a variant index", path, out, ind)
                out.append(f"{ind}{t} = unpack_u32(data, pos)[0]")
                out.append(f"{ind}{q} = pos + 4")
            out.append(f"{ind}if {t} >= {count}:")
            out.append(
                f"{ind}    raise dec_fail({p}, pos, f'variant index {{{t}}}, {name} has "
                f"{count} variants')"
            )
            out.append(f"{ind}pos = {q}")
            if kind == "unit_enum":
                out.append(f"{ind}{x} = {self.const(node.args, 'members')}[{t}]")
            else:
                self.inlining.append(node)
                for number, variant in enumerate(node.children):
                    out.append(f"{ind}{'elif' if number else 'if'} {t} == {number}:")
                    self.dec_fields(variant, x, self.variant_path(path, variant), out, ind + "    ")
                self.inlining.pop()
        elif kind == "struct":
            if self.recursive(node):
                return self.call_dec(node, x, path, out, ind)
            self.dec_fields(node, x, path, out, ind)
        else:  # pragma: no cover - every kind above
            raise AssertionError(kind)

    def dec_address(self, x: str, path: str, out: List[str], ind: str) -> None:
        """An address: its type byte, a length, its value in UTF-8 (never empty)."""
        p = self.path(path)
        n, t, a = self.var("n"), self.var("t"), self.var("a")
        self.need(1, "an address type", path, out, ind)
        out.append(f"{ind}{t} = data[pos]")
        out.append(f"{ind}pos += 1")
        self.read_length(n, path, out, ind)
        out.append(f"{ind}if {n} > end - pos:")
        out.append(
            f"{ind}    raise dec_fail({p}, pos, f'an address of {{{n}}} bytes, {{end - pos}} "
            "remain')"
        )
        out.append(f"{ind}try:")
        out.append(f"{ind}    {a} = data[pos:pos + {n}].decode('utf-8')")
        out.append(f"{ind}except UnicodeDecodeError:")
        out.append(
            f"{ind}    raise dec_fail({p}, pos, 'an address value that is not valid UTF-8') "
            "from None"
        )
        out.append(f"{ind}if not {a}:")
        out.append(f"{ind}    raise dec_fail({p}, pos, 'an empty address value')")
        out.append(f"{ind}{x} = new_tuple(Address, ({t}, {a}))")
        out.append(f"{ind}pos += {n}")

    def dec_list(self, node: _Node, x: str, path: str, out: List[str], ind: str) -> None:
        """A list, an array or a route: a count (or the array's length), then the items."""
        kind = node.kind
        item_node = _SCALARS[Address] if kind == "route" else node.children[0]
        n, i, item = self.var("n"), self.var("i"), self.var("e")
        if kind == "array":
            out.append(f"{ind}{n} = {node.args}")
        else:
            self.read_length(n, path, out, ind)
        self.check_count(n, item_node, path, out, ind)
        out.append(f"{ind}{x} = []")
        out.append(f"{ind}for {i} in range({n}):")
        self.dec(item_node, item, f"{path}[{{{i}}}]", out, ind + "    ")
        out.append(f"{ind}    {x}.append({item})")
        if kind == "route":
            out.append(f"{ind}{x} = new_tuple(Route, {x})")

    def dec_fields(self, node: _Node, x: str, path: str, out: List[str], ind: str) -> None:
        self.inlining.append(node)
        names = []
        for field, child in zip(node.fields, node.children):
            f = self.var("f")
            self.dec(child, f, f"{path}.{field}", out, ind)
            names.append(f)
        self.inlining.pop()
        cls = self.const(node.cls, "cls")
        keyword = node.args or (False,) * len(names)  # a dataclass's kw_only fields go by name
        args = "".join(f + ", " for f, kw in zip(names, keyword) if not kw)
        kwargs = ", ".join(f"{a!r}: {f}" for a, f, kw in zip(node.fields, names, keyword) if kw)
        if node.args is None:  # a NamedTuple
            out.append(f"{ind}{x} = new_tuple({cls}, ({args}))")
        else:
            p = self.path(path)
            out.append(f"{ind}try:")
            out.append(f"{ind}    {x} = {cls}({args}{'**{' + kwargs + '}' if kwargs else ''})")
            out.append(f"{ind}except Exception as exc:  # the class's own checks refused them")
            out.append(
                f"{ind}    raise dec_fail({p}, pos, f'{node.name} refused the decoded values "
                "({exc})') from None"
            )

    def call_dec(self, node: _Node, x: str, path: str, out: List[str], ind: str) -> None:
        fn = self.const(_lazy(node.cls, self.codec, "decode_at"), "rec")
        out.append(f"{ind}{x}, pos = {fn}(data, pos, end, {self.path(path)})")

    # -- the functions ---------------------------------------------------------------------

    def build(self) -> Dict[str, Any]:
        enc: List[str] = []
        self.enc(self.root, "v", "", enc, "    ")
        dec: List[str] = []
        self.dec(self.root, "v", "", dec, "    ")
        root = repr(self.root.name)
        source = "\n".join(
            [
                f"def encode(v, path={root}):",
                "    out = []",
                "    w = out.append",
                *enc,
                "    return b''.join(out)",
                "def encode_into(v, w, path):",
                *enc,
                f"def decode(data, path={root}):",
                "    if data.__class__ is not bytes: data = bytes(data)",
                "    pos = 0",
                "    end = len(data)",
                *dec,
                "    return v",
                "def decode_at(data, pos, end, path):",
                *dec,
                "    return v, pos",
            ]
        )
        namespace = dict(self.env)
        try:
            code = compile(source, f"<greenockam {self.codec} codec of {self.root.name}>", "exec")
        except (SyntaxError, RecursionError, MemoryError) as exc:  # ~20 nested loops at most
            raise TypeError(f"{self.root.name} nests too deeply to compile ({exc})") from None
        exec(code, namespace)
        return namespace


class _Plan:
    """The compiled encoder and decoder of one type under one codec."""

    __slots__ = ("encode", "encode_into", "decode", "decode_at")

    def __init__(self, tp: Any, codec: str) -> None:
        namespace = _Gen(codec, _resolve(tp, {})).build()
        self.encode: Callable[..., bytes] = namespace["encode"]
        self.encode_into: Callable[..., None] = namespace["encode_into"]
        self.decode: Callable[..., Any] = namespace["decode"]
        self.decode_at: Callable[..., Tuple[Any, int]] = namespace["decode_at"]


# How deeply a recursive type may nest in one message: a peer must not be able to exhaust the
# stack with a payload of a few kilobytes (each level takes two bytes or so).
MAX_DEPTH = 100
_nesting = threading.local()  # greenlets switch only between messages: one count per thread


def _lazy(tp: Any, codec: str, which: str) -> Callable[..., Any]:
    """A function calling ``which`` (``encode_into`` or ``decode_at``) of ``tp``'s plan, looked
    up when called: a recursive type calls its own plan, which does not exist yet while its code
    is generated. It counts the nesting and refuses more than :data:`MAX_DEPTH` levels."""

    def call(*args: Any) -> Any:
        depth = getattr(_nesting, "depth", 0)
        if depth >= MAX_DEPTH:
            if which == "decode_at":
                raise _dec_fail(args[3], args[1], f"nested deeper than {MAX_DEPTH} levels")
            raise _enc_fail(args[2], f"nested deeper than {MAX_DEPTH} levels")
        _nesting.depth = depth + 1
        try:
            return getattr(_plan(tp, codec), which)(*args)
        finally:
            _nesting.depth = depth

    return call


_plans: Dict[Tuple[Any, str], _Plan] = {}


def _plan(tp: Any, codec: str) -> _Plan:
    plan = _plans.get((tp, codec))
    if plan is None:
        if codec not in ("bare", "bincode"):
            raise ValueError(f"unknown codec {codec!r}; choose 'bare' or 'bincode'")
        plan = _plans[tp, codec] = _Plan(tp, codec)
    return plan


def encoder(tp: Any, codec: str = "bare") -> Callable[[Any], bytes]:
    """The function that encodes a value of ``tp`` with ``codec`` (``"bare"`` or
    ``"bincode"``), generated on the first call for that pair and cached. A variant of a
    :class:`TaggedUnion` encodes as its enum.

    The function raises :class:`~greenockam.errors.LocalProtocolError` naming the field path
    when a value does not fit its declared type.

    Raises:
        TypeError: ``tp`` is not a type that can be encoded, and why.
    """
    if isinstance(tp, type) and issubclass(tp, TaggedUnion):
        tp = _enum_of(tp) or tp  # a variant encodes as its enum: index, then fields
    return _plan(tp, codec).encode


def decoder(tp: Any, codec: str = "bare") -> Callable[[bytes], Any]:
    """The function that decodes a payload as ``tp`` with ``codec``, cached like
    :func:`encoder`. Bytes after the value are ignored, as by the Rust decoders.

    The function raises :class:`~greenockam.errors.RemoteProtocolError` naming the field path
    and the byte offset when the payload is not a valid value of ``tp``.

    Raises:
        TypeError: ``tp`` is not a type that can be decoded, and why.
    """
    return _plan(tp, codec).decode
