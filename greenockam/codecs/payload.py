"""Payload codecs: how a message body becomes the opaque payload bytes of a TransportMessage.

Two codecs, as Rust Ockam had them (docs/protocol.md, section 5):

* ``bare`` (the default): BARE, used by Rust Ockam from ``ockam_core`` 0.7 on.
* ``bincode``: the seed example's crates (``ockam_core`` 0.6.0).

Message types: ``str``, ``bytes`` (length-prefixed data), ``int`` (u64), ``bool``, the unit value
``None``, :data:`RAW` (the payload bytes as they are, no framing at all), and every type declared
with :mod:`greenockam.codecs.typed` (dataclasses, enums, ``List[U16]``, ...; see
docs/typed-messages.md). Values are never pickled or evaluated. Bad payloads raise
:class:`~greenockam.errors.RemoteProtocolError`, an unsupported value raises
:class:`~greenockam.errors.LocalProtocolError`, with either codec.

The five built-in types decode strictly (bytes after the value are an error, as before typed
messages existed); declared types ignore trailing bytes, as the Rust decoders do.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple, TypeVar

from ..errors import LocalProtocolError, RemoteProtocolError
from . import typed
from .primitives import BYTE, U64_LE, decode_uint, encode_uint, read_u64_length

__all__ = ["Codec", "BARE", "BINCODE", "RAW", "UNIT", "get_codec", "CODECS"]


class _Raw:
    """Marker type: the payload as raw bytes, neither decoded nor length-prefixed."""

    def __repr__(self) -> str:
        return "RAW"


RAW: Any = _Raw()

UNIT: Any = type(None)
"""The unit value's message type (Rust ``()``): no bytes, decoded as ``None``. (``None`` as a
``message_type`` means "the default" wherever greenockam takes one: ``str`` for a worker, the
context's type for ``receive`` and ``request``.)"""

_F = TypeVar("_F")

_BOOL = {b"\x00": False, b"\x01": True}


class Codec:
    """A payload encoding: ``encode(value) -> bytes`` and ``decode(payload, type) -> value``.

    Attributes:
        name: ``"bare"`` or ``"bincode"``.
    """

    __slots__ = ("name", "_write_len", "_read_len", "_encoders", "_decoders")

    def __init__(
        self,
        name: str,
        write_len: Callable[[int], bytes],
        read_len: Callable[[bytes, int, int], Tuple[int, int]],
    ) -> None:
        self.name = name
        self._write_len = write_len
        self._read_len = read_len
        self._encoders: Dict[type, Callable[[Any], bytes]] = {
            bytes: self._encode_bytes,
            bytearray: self._encode_bytes,
            memoryview: self._encode_bytes,
            bool: lambda v: b"\x01" if v else b"\x00",
            int: self._encode_u64,
            type(None): lambda v: b"",
        }
        self._decoders: Dict[Any, Callable[[bytes], Any]] = {
            str: self._decode_str,
            bytes: self._decode_bytes,
            bool: self._decode_bool,
            int: self._decode_u64,
            UNIT: self._decode_unit,
            RAW: bytes,
        }

    def __repr__(self) -> str:
        return f"<Codec {self.name}>"

    def encode(self, value: Any) -> bytes:
        """Encode ``value`` by its Python type: a built-in type, or an instance of a declared
        message class (a dataclass, NamedTuple, TaggedUnion variant or ``enum.Enum``).

        Raises:
            LocalProtocolError: the type is not supported, or the value does not fit.
        """
        if type(value) is str:  # the common case, without a second call
            try:
                data = value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise LocalProtocolError(f"the string cannot be encoded as UTF-8: {exc}") from None
            n = len(data)
            return (BYTE[n] if n < 0x80 and self is BARE else self._write_len(n)) + data
        try:
            encoder = self._encoders[type(value)]
        except KeyError:
            if not typed.is_declared(type(value)):
                raise LocalProtocolError(
                    f"the {self.name} codec cannot encode a {type(value).__name__}; send str, "
                    "bytes, int, bool, None or an instance of a declared message class"
                ) from None
            encoder = self._encoders[type(value)] = self._typed(typed.encoder, type(value))
        return encoder(value)

    def encoder(self, message_type: Any) -> Callable[[Any], bytes]:
        """The function that encodes a value as ``message_type``: any type :meth:`decoder`
        takes but :data:`RAW`, e.g. ``List[str]`` or ``Optional[U32]``, which :meth:`encode`
        cannot tell from the value alone.

        Raises:
            LocalProtocolError: ``message_type`` cannot be encoded, and why.
        """
        return self._typed(typed.encoder, message_type)

    def decode(self, payload: bytes, message_type: Any = str) -> Any:
        """Decode ``payload`` as ``message_type`` (``str``, ``bytes``, ``int``, ``bool``,
        :data:`UNIT`, :data:`RAW` or a declared type; ``None``: ``str``). Trailing bytes are an
        error for the built-in
        types and ignored for declared types.

        Raises:
            RemoteProtocolError: the payload is not a valid value of that type.
        """
        return self.decoder(message_type)(payload)

    def decoder(self, message_type: Any = str) -> Callable[[bytes], Any]:
        """The function that decodes a payload as ``message_type`` (see :meth:`decode`).

        ``None`` means the default, ``str``; the unit value is :data:`UNIT`.

        Raises:
            LocalProtocolError: the codec has no decoder for that type.
        """
        if message_type is None:
            message_type = str
        try:
            return self._decoders[message_type]
        except TypeError:
            raise LocalProtocolError(
                f"the {self.name} codec has no decoder for {message_type!r}"
            ) from None
        except KeyError:
            decode = self._typed(typed.decoder, message_type)
            self._decoders[message_type] = decode
            return decode

    def _typed(self, make: Callable[[Any, str], _F], message_type: Any) -> _F:
        """``make(message_type, self.name)``, its TypeError a LocalProtocolError."""
        try:
            return make(message_type, self.name)
        except TypeError as exc:
            raise LocalProtocolError(
                f"the {self.name} codec cannot use {message_type!r} as a message type: {exc}"
            ) from None

    # -- str and bytes: a length, then the bytes ---------------------------------------------

    def _encode_bytes(self, value: Any) -> bytes:
        data = bytes(value)
        return self._write_len(len(data)) + data

    def _decode_data(self, payload: bytes, what: str) -> bytes:
        n, pos = self._read_len(payload, 0, len(payload))
        if pos + n != len(payload):
            raise RemoteProtocolError(
                f"{self.name} {what} announces {n} bytes but the payload holds {len(payload) - pos}"
            )
        return payload[pos:]

    def _decode_str(self, payload: bytes) -> str:
        try:
            if self is BARE and payload and payload[0] == len(payload) - 1 < 0x80:
                return payload[1:].decode("utf-8")  # the common short string: a one-byte uint
            return self._decode_data(payload, "string").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(
                f"{self.name} string is not valid UTF-8 at byte {exc.start}"
            ) from None

    def _decode_bytes(self, payload: bytes) -> bytes:
        return self._decode_data(payload, "data")

    # -- fixed-size values --------------------------------------------------------------------

    def _encode_u64(self, value: int) -> bytes:
        if not 0 <= value < 1 << 64:
            raise LocalProtocolError(f"{value} does not fit a u64")
        return U64_LE.pack(value)

    def _decode_u64(self, payload: bytes) -> int:
        if len(payload) != 8:
            raise RemoteProtocolError(f"a u64 takes 8 bytes, the payload holds {len(payload)}")
        value: int = U64_LE.unpack(payload)[0]
        return value

    def _decode_bool(self, payload: bytes) -> bool:
        try:
            return _BOOL[payload]
        except KeyError:
            raise RemoteProtocolError(
                f"a bool is one byte 00 or 01, got {payload.hex()!r}"
            ) from None

    def _decode_unit(self, payload: bytes) -> None:
        if payload:
            raise RemoteProtocolError(
                f"the unit value takes no bytes, the payload holds {len(payload)}"
            )
        return None


BARE = Codec("bare", encode_uint, decode_uint)
BINCODE = Codec("bincode", U64_LE.pack, read_u64_length)
CODECS: Dict[str, Codec] = {"bare": BARE, "bincode": BINCODE}


def get_codec(codec: Optional[Any]) -> Codec:
    """A Codec from its name (``"bare"``, ``"bincode"``) or itself; ``None`` means bare."""
    if codec is None:
        return BARE
    if isinstance(codec, Codec):
        return codec
    try:
        return CODECS[codec]
    except (KeyError, TypeError):
        raise ValueError(f"unknown codec {codec!r}; choose from {sorted(CODECS)}") from None
