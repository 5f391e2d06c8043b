"""BARE and bincode primitives: the bottom layer under the frame codec and the payload codecs.

Plain functions and tables, imported at module level by :mod:`greenockam.wire` (every frame) and
by the payload codecs. The encodings are described in docs/typed-messages.md ("Lengths").

* A BARE ``uint`` is unsigned LEB128: seven bits per byte, low group first, the high bit set on
  every byte but the last, at most 10 bytes (64 bits).
* bincode (default options) writes a length as a little-endian u64.
"""

from __future__ import annotations

import struct
from typing import List, Optional, Tuple

from ..errors import LocalProtocolError, RemoteProtocolError

__all__ = ["BYTE", "U64_LE", "encode_uint", "decode_uint", "encode_route", "read_u64_length"]

BYTE: List[bytes] = [bytes((i,)) for i in range(256)]
"""``BYTE[n]`` is ``bytes((n,))`` without building it: one-byte ``uint`` values and type bytes."""

U64_LE = struct.Struct("<Q")
"""A little-endian u64: bincode's lengths, and Rust's ``u64``."""


def encode_uint(value: int) -> bytes:
    """Unsigned LEB128, as BARE writes a ``uint``: ``300`` -> ``b"\\xac\\x02"``.

    Raises:
        LocalProtocolError: ``value`` is negative or needs more than 64 bits.
    """
    if value < 0x80:
        if value < 0:
            raise LocalProtocolError(f"a BARE uint cannot be negative: {value}")
        return BYTE[value]
    if value >= 1 << 64:
        raise LocalProtocolError(f"a BARE uint holds at most 64 bits: {value}")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_uint(
    data: bytes, pos: int = 0, end: Optional[int] = None, base: int = 0
) -> Tuple[int, int]:
    """Read a BARE ``uint`` at ``pos``; return ``(value, position after it)``.

    Non-canonical forms (``82 00`` for 2) are accepted, as by the Rust decoder. Offsets in errors
    are relative to ``base``.

    Raises:
        RemoteProtocolError: the data ends inside the uint, or it overflows 10 bytes / 64 bits.
    """
    if end is None:
        end = len(data)
    value = 0
    shift = 0
    start = pos
    while True:
        if pos >= end:
            raise RemoteProtocolError(f"data ends inside a uint at offset {start - base}")
        byte = data[pos]
        pos += 1
        if shift == 63 and byte > 1:
            raise RemoteProtocolError(f"uint overflows 64 bits at offset {start - base}")
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def read_u64_length(data: bytes, pos: int, end: int) -> Tuple[int, int]:
    """Read a bincode length (a u64 LE) at ``pos``; return ``(value, position after it)``.

    Raises:
        RemoteProtocolError: fewer than 8 bytes remain.
    """
    if end - pos < 8:
        raise RemoteProtocolError(
            f"a bincode length takes 8 bytes, {end - pos} remain at offset {pos}"
        )
    return U64_LE.unpack_from(data, pos)[0], pos + 8


def encode_route(route: Tuple[Tuple[int, str], ...]) -> bytes:
    """The BARE encoding of a route (a tuple of ``(type, value)`` addresses, such as a
    :class:`~greenockam.address.Route`): count, then (type, length, value) per address; the
    layout of docs/protocol.md, section 3. Used by the frame codec and the typed layer alike."""
    n = len(route)
    parts = [BYTE[n] if n < 0x80 else encode_uint(n)]
    for kind, value in route:
        data = value.encode("utf-8")
        n = len(data)
        parts += (BYTE[kind], BYTE[n] if n < 0x80 else encode_uint(n), data)
    return b"".join(parts)
