"""The sans-I/O codec of the Ockam routing protocol v1 (docs/protocol.md sections 1-3).

Pure functions and a decoder object: nothing here touches a socket, a greenlet or a clock.

* A frame is a 2-byte big-endian body length, then the body.
* A body is a BARE ``TransportMessage``: version byte, onward route, return route, payload.
* A route is a BARE ``uint`` count of addresses; an address is a type byte, a ``uint`` length and
  the value bytes (UTF-8 text here).

Decoding follows the 2021 Rust decoder's tolerance (any version byte, non-canonical ``uint``,
ignored trailing bytes) but never its panics: every malformed body raises
:class:`~greenockam.errors.RemoteProtocolError` naming the fault and its offset in the body.

This module is on every message's path, so it keeps bounded caches of encoded and decoded routes
(routes repeat: a node talks to few peers and workers) and fast paths for one-byte ``uint``.
"""

from __future__ import annotations

import struct
from typing import Any, Dict, List, Optional, Tuple

from .address import Address, Route
from .codecs.primitives import BYTE as _BYTE
from .codecs.primitives import decode_uint, encode_uint
from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAX_BODY",
    "VERSION",
    "TransportMessage",
    "encode_uint",
    "decode_uint",
    "encode_route",
    "encode_body",
    "encode_frame",
    "frame_with_routes",
    "decode_body",
    "FrameDecoder",
]

MAX_BODY = 65535
VERSION = 1
_ROUTE_CACHE_SIZE = 4096

_new_tuple = tuple.__new__
_pack_header = struct.Struct(">HB").pack  # frame length, then the version byte of the body

# Route -> its encoding, and the encoding of both routes -> (onward, return). Cleared wholesale
# when full: a peer that sends endless distinct routes costs us re-parsing, never memory.
_encoded_routes: Dict[Tuple[Address, ...], bytes] = {}
_decoded_routes: Dict[bytes, Tuple[Route, Route]] = {}
# The routes of the last frame encoded, by identity: (onward, return, pop_first, their bytes).
_last_routes: Tuple[Any, Any, bool, bytes] = (None, None, False, b"")


class TransportMessage(Tuple[int, Route, Route, bytes]):
    """One message on the wire: ``(version, onward_route, return_route, payload)``."""

    __slots__ = ()

    def __new__(
        cls, onward_route: Route, return_route: Route, payload: bytes, version: int = VERSION
    ) -> TransportMessage:
        if not 0 <= version <= 255:
            raise LocalProtocolError(f"the version is one byte, got {version}")
        return _new_tuple(
            cls, (version, Route(onward_route), Route(return_route), bytes(payload))
        )

    @property
    def version(self) -> int:
        """The version byte (written as 1; any value is accepted on receive)."""
        return self[0]

    @property
    def onward_route(self) -> Route:
        """Where the message is going; index 0 is the next hop."""
        return self[1]

    @property
    def return_route(self) -> Route:
        """How to reach the sender; each hop prepends itself."""
        return self[2]

    @property
    def payload(self) -> bytes:
        """The encoded body, opaque to routing."""
        return self[3]

    def __repr__(self) -> str:
        return (
            f"TransportMessage(onward={str(self[1])!r}, return={str(self[2])!r}, "
            f"payload={len(self[3])} bytes, version={self[0]})"
        )


# --- routes ----------------------------------------------------------------------------------


def encode_route(route: Tuple[Address, ...]) -> bytes:
    """The BARE encoding of a route: count, then (type, length, value) per address."""
    raw = _encoded_routes.get(route)
    if raw is None:
        parts = [encode_uint(len(route))]
        for kind, value in route:
            data = value.encode("utf-8")
            parts += (_BYTE[kind], encode_uint(len(data)), data)
        raw = b"".join(parts)
        if len(_encoded_routes) >= _ROUTE_CACHE_SIZE:
            _encoded_routes.clear()
        _encoded_routes[route] = raw
    return raw


def _parse_route(data: bytes, pos: int, end: int, base: int, what: str) -> Tuple[Route, int]:
    """Parse a route with every check; offsets in errors are relative to ``base``."""
    if pos >= end:
        raise RemoteProtocolError(f"body ends before the {what} route at offset {pos - base}")
    count, pos = decode_uint(data, pos, end, base)
    if count > (end - pos) // 2:  # each address takes at least 2 bytes: check before allocating
        raise RemoteProtocolError(
            f"{what} route announces {count} addresses but only {end - pos} bytes remain "
            f"at offset {pos - base}"
        )
    addresses = []
    for _ in range(count):
        if pos >= end:
            raise RemoteProtocolError(f"body ends inside the {what} route at offset {pos - base}")
        kind = data[pos]
        length, pos = decode_uint(data, pos + 1, end, base)
        if pos + length > end:
            raise RemoteProtocolError(
                f"address of {length} bytes in the {what} route runs past the end of the body "
                f"at offset {pos - base}"
            )
        try:
            value = data[pos : pos + length].decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError(
                f"address in the {what} route is not valid UTF-8 at offset {pos - base}"
            ) from None
        if not value:
            raise RemoteProtocolError(f"empty address in the {what} route at offset {pos - base}")
        addresses.append(_new_tuple(Address, (kind, value)))
        pos += length
    return _new_tuple(Route, addresses), pos


def _parse_routes(data: bytes, pos: int, end: int, base: int) -> Tuple[Route, Route, int]:
    """Both routes starting at ``pos`` (just after the version byte), through the route cache."""
    # Scan the common shape (one-byte counts and lengths) without building anything; any read
    # past ``end`` leaves ``p > end`` and falls to the checked parse.
    p = pos
    try:
        for _ in (0, 1):
            count = data[p]
            p += 1
            if count >= 0x80:
                p = end + 1
                break
            while count:
                length = data[p + 1]
                if length >= 0x80:
                    p = end + 1
                    break
                p += 2 + length
                count -= 1
    except IndexError:
        p = end + 1
    canonical = p <= end  # every uint took one byte: the raw bytes are our own encoding too
    if canonical:
        routes = _decoded_routes.get(data[pos:p])
        if routes is not None:
            return routes[0], routes[1], p
    onward, mid = _parse_route(data, pos, end, base, "onward")
    ret, p = _parse_route(data, mid, end, base, "return")
    if len(_decoded_routes) >= _ROUTE_CACHE_SIZE:
        _decoded_routes.clear()
    _decoded_routes[data[pos:p]] = (onward, ret)
    if canonical:
        # A reply or a forward encodes these routes (or their tails) next: have them ready.
        if len(_encoded_routes) >= _ROUTE_CACHE_SIZE:
            _encoded_routes.clear()
        _encoded_routes[onward] = data[pos:mid]
        _encoded_routes[ret] = data[mid:p]
    return onward, ret, p


# --- bodies and frames -----------------------------------------------------------------------


def encode_body(msg: TransportMessage) -> bytes:
    """The BARE body of a message (no length prefix)."""
    return encode_frame(msg)[2:]


def encode_frame(msg: TransportMessage, pop_first: bool = False) -> bytes:
    """Length prefix + body, ready for the socket.

    Args:
        pop_first: leave out the first hop of the onward route, as a transport does when it
            sends to that hop (docs/protocol.md rule 3), without building the shorter route.

    Raises:
        LocalProtocolError: the body would exceed 65535 bytes (nothing is written).
    """
    global _last_routes
    version, onward, ret, payload = msg
    last = _last_routes
    if last[0] is onward and last[1] is ret and last[2] is pop_first:
        routes_raw = last[3]  # a worker answering one peer sends the same route objects again
    else:
        route = onward[1:] if pop_first else onward  # a tuple equal to (cached as) the Route
        routes_raw = (_encoded_routes.get(route) or encode_route(route)) + (
            _encoded_routes.get(ret) or encode_route(ret)
        )
        _last_routes = (onward, ret, pop_first, routes_raw)
    return frame_with_routes(version, routes_raw, payload)


def frame_with_routes(version: int, routes_raw: bytes, payload: bytes) -> bytes:
    """A frame whose routes are already encoded: ``routes_raw`` is the onward route's
    :func:`encode_route` followed by the return route's (a sender that repeats its routes
    encodes them once).

    Raises:
        LocalProtocolError: the body would exceed 65535 bytes.
    """
    n = len(payload)
    if n < 0x80:
        length_raw = _BYTE[n]
        size = 2 + len(routes_raw) + n
    else:
        length_raw = encode_uint(n)
        size = 1 + len(routes_raw) + len(length_raw) + n
    if size > MAX_BODY:
        raise LocalProtocolError(
            f"message body of {size} bytes exceeds the protocol limit of {MAX_BODY} bytes"
        )
    return b"".join((_pack_header(size, version), routes_raw, length_raw, payload))


def decode_body(body: bytes) -> TransportMessage:
    """Decode one BARE body (trailing bytes after the payload are ignored, as in Rust).

    Raises:
        RemoteProtocolError: what was wrong and at which offset.
    """
    if len(body) > MAX_BODY:
        raise RemoteProtocolError(f"a body of {len(body)} bytes exceeds {MAX_BODY} bytes")
    (msg,) = FrameDecoder().feed(struct.pack(">H", len(body)) + bytes(body))
    return msg


class FrameDecoder:
    """Turns a byte stream, fed in chunks of any size, into TransportMessages.

    ``feed(data)`` returns the messages completed by ``data``, in order. It buffers at most one
    incomplete frame (<= 65537 bytes) and never looks past what it was given.

    Args:
        return_prefix: an address to prepend to every decoded return route. A TCP connection
            passes ``1#<peer>`` (docs/protocol.md rule 4).

    If a body is malformed, ``feed`` raises :class:`RemoteProtocolError` with the messages of the
    same chunk that came before it in ``error.messages``, and the decoder refuses further input:
    the stream cannot be trusted after a bad frame.
    """

    __slots__ = ("_buffer", "_needed", "_prefix", "_failed", "_routes_raw", "_onward", "_return")

    def __init__(self, return_prefix: Optional[Address] = None) -> None:
        self._buffer = bytearray()
        self._needed = 2
        self._prefix = return_prefix
        self._failed = False
        # The routes of the last frame, raw and decoded: a connection's frames mostly repeat them,
        # so one bytes comparison replaces the route parse (and the prefix) on the common path.
        self._routes_raw = b""
        self._onward: Route = _new_tuple(Route, ())
        self._return: Route = self._onward

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> List[TransportMessage]:
        """Add bytes; return the messages they complete."""
        if self._failed:
            raise RemoteProtocolError("the stream already held a malformed frame")
        if type(data) is not bytes:
            data = bytes(data)  # the route cache keys on slices, which must be hashable
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._needed:
                if self._needed > 2 or len(buffer) < 2:
                    return []
                self._needed = 2 + ((buffer[0] << 8) | buffer[1])
                if len(buffer) < self._needed:
                    return []
            data = bytes(buffer)
            buffer.clear()
        out: List[TransportMessage] = []
        n = len(data)
        pos = 0
        raw = self._routes_raw
        skip = 1 + len(raw)  # the version byte and the routes
        try:
            while n - pos >= 2:
                body = pos + 2
                end = body + ((data[pos] << 8) | data[pos + 1])
                if end > n:
                    break
                if raw and data.startswith(raw, body + 1, end):
                    p = body + skip
                    size = end - p - 1
                    if 0 <= size < 0x80 and data[p] == size:  # the common case: a one-byte
                        out.append(  # payload length, and the payload fills the body
                            _new_tuple(
                                TransportMessage,
                                (data[body], self._onward, self._return, data[p + 1 : end]),
                            )
                        )
                        pos = end
                        continue
                else:
                    if body == end:
                        raise RemoteProtocolError(
                            "empty body: a message needs at least a version byte"
                        )
                    self._onward, ret, p = _parse_routes(data, body + 1, end, body)
                    self._return = ret if self._prefix is None else ret.prepend(self._prefix)
                    raw = self._routes_raw = data[body + 1 : p]
                    skip = p - body
                if p >= end:
                    raise RemoteProtocolError(
                        f"body ends before the payload length at offset {p - body}"
                    )
                size = data[p]
                if size < 0x80:
                    p += 1
                else:
                    size, p = decode_uint(data, p, end, body)
                if p + size > end:
                    raise RemoteProtocolError(
                        f"payload length {size} runs past the end of the body "
                        f"({end - p} bytes left) at offset {p - body}"
                    )
                out.append(
                    _new_tuple(
                        TransportMessage,
                        (data[body], self._onward, self._return, data[p : p + size]),
                    )
                )
                pos = end
        except RemoteProtocolError as exc:
            self._failed = True
            exc.messages = out
            raise
        if pos < n:  # _needed is only read while the buffer holds something
            buffer += data[pos:] if pos else data
            self._needed = 2 + ((data[pos] << 8) | data[pos + 1]) if n - pos >= 2 else 2
        return out
