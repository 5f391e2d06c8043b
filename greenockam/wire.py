"""The sans-I/O codec of the Ockam routing protocol v1 (docs/protocol.md sections 1-3).

Pure functions and a decoder object: nothing here touches a socket, a greenlet or a clock.

* A frame is a 2-byte big-endian body length, then the body.
* A body is a BARE ``TransportMessage``: version byte, onward route, return route, payload.
* A route is a BARE ``uint`` count of addresses; an address is a type byte, a ``uint`` length and
  the value bytes (UTF-8 text here).

Decoding follows the 2021 Rust decoder's tolerance (any version byte, non-canonical ``uint``,
ignored trailing bytes) but never its panics: every malformed body raises
:class:`~greenockam.errors.RemoteProtocolError` naming the fault and its offset in the body.

This module is on every message's path, so it has fast paths for one-byte ``uint`` and remembers
routes per connection, never globally: a :class:`FrameDecoder` skips the parse of the routes of
its last frame, and its :class:`RouteCache` holds, within fixed bounds, the other route pairs the
connection carries, decoded and, when forwarded, encoded. A peer that sends endless distinct
routes costs its own connection re-parsing, never memory, and never evicts another connection's
routes.
"""

from __future__ import annotations

import struct
from typing import ClassVar, Dict, List, Optional, Tuple

from .address import Address, Route
from .codecs.primitives import BYTE as _BYTE
from .codecs.primitives import decode_uint, encode_route, encode_uint
from .errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "MAX_BODY",
    "VERSION",
    "TransportMessage",
    "RouteCache",
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

_new_tuple = tuple.__new__
_pack_header = struct.Struct(">HB").pack  # frame length, then the version byte of the body


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


# --- per-connection route memory ---------------------------------------------------------------

_Encoded = Tuple[Route, Route, bool, bytes]  # (onward, return, pop_first, their encoding)
_NO_ENTRY: _Encoded = (_new_tuple(Route, ()), _new_tuple(Route, ()), False, b"")  # never matches


class RouteCache:
    """What one connection remembers of the route pairs it carries, within fixed bounds.

    A connection's frames mostly carry a few route pairs (its peer's workers, the clients behind
    a relay), often alternating. Its :class:`FrameDecoder` looks the raw bytes of a frame's
    routes up here before parsing them, and so returns the same route objects for the same
    bytes; :func:`encode_frame`, given the cache of the connection a forwarded message came on,
    finds the encoding of those objects here (by identity) instead of encoding them again.

    Each of the two memories holds at most :attr:`max_pairs` route pairs, each at most
    :attr:`max_bytes` long when encoded, and is emptied when full: a peer that sends endless
    distinct routes costs its own connection re-parsing, never memory, and cannot evict the
    routes of another connection. The first route pair of a connection is not remembered (the
    decoder keeps its last routes anyway), so a connection that never changes routes holds none.
    """

    __slots__ = ("_decoded", "_encoded", "_last")

    max_pairs: ClassVar[int] = 16
    """Route pairs each memory holds before it is emptied: a connection that alternates among
    up to this many pairs parses and encodes each of them once."""
    max_bytes: ClassVar[int] = 256
    """Routes whose encoding (both routes) is longer are parsed or encoded every time."""

    def __init__(self) -> None:
        # Both made on first use: an idle connection pays for neither.
        self._decoded: Optional[Dict[bytes, Tuple[Route, Route]]] = None
        # id(onward) -> (onward, return, pop_first, their encoding); the entry keeps both
        # routes alive, so the id cannot be reused while it is here.
        self._encoded: Optional[Dict[int, _Encoded]] = None
        self._last: _Encoded = _NO_ENTRY  # the entry used last: a connection's forwards repeat it

    def __len__(self) -> int:
        """Route pairs remembered, decoded and encoded (at most twice :attr:`max_pairs`)."""
        return len(self._decoded or ()) + len(self._encoded or ())


# --- routes ----------------------------------------------------------------------------------


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


def _parse_routes(
    data: bytes,
    pos: int,
    end: int,
    base: int,
    prefix: Optional[Address],
    cache: Optional[RouteCache],
) -> Tuple[Route, Route, int]:
    """Both routes starting at ``pos`` (just after the version byte), ``prefix`` prepended to
    the return route; through ``cache`` if one is given."""
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
    # Only the common shape (every uint one byte: the scan found where the routes end) is
    # looked up and remembered.
    decoded = None
    key = b""
    if cache is not None and p <= end and p - pos <= cache.max_bytes:
        key = data[pos:p]
        decoded = cache._decoded
        if decoded is None:
            decoded = cache._decoded = {}
        else:
            routes = decoded.get(key)
            if routes is not None:
                return routes[0], routes[1], p
            if len(decoded) >= cache.max_pairs:
                decoded.clear()
    onward, mid = _parse_route(data, pos, end, base, "onward")
    ret, p = _parse_route(data, mid, end, base, "return")
    if prefix is not None:
        ret = ret.prepend(prefix)
    if decoded is not None:
        decoded[key] = (onward, ret)
    return onward, ret, p


# --- bodies and frames -----------------------------------------------------------------------


def encode_body(msg: TransportMessage) -> bytes:
    """The BARE body of a message (no length prefix)."""
    return encode_frame(msg)[2:]


def encode_frame(
    msg: TransportMessage, pop_first: bool = False, cache: Optional[RouteCache] = None
) -> bytes:
    """Length prefix + body, ready for the socket.

    Args:
        pop_first: leave out the first hop of the onward route, as a transport does when it
            sends to that hop (docs/protocol.md rule 3), without building the shorter route.
        cache: the :class:`RouteCache` of the connection ``msg`` came on, when it is forwarded
            (the route objects its decoder returned, or a hub forwarder's route with them):
            each of its route pairs is encoded once.

    Raises:
        LocalProtocolError: the body would exceed 65535 bytes (nothing is written).
    """
    version, onward, ret, payload = msg
    if cache is None:
        return frame_with_routes(
            version, encode_route(onward[1:] if pop_first else onward) + encode_route(ret), payload
        )
    entry = cache._last
    if entry[0] is onward and entry[1] is ret and entry[2] is pop_first:
        return frame_with_routes(version, entry[3], payload)
    encoded = cache._encoded
    if encoded is None:
        encoded = cache._encoded = {}
    entry = encoded.get(id(onward)) or _NO_ENTRY
    if entry[0] is not onward or entry[1] is not ret or entry[2] is not pop_first:
        routes_raw = encode_route(onward[1:] if pop_first else onward) + encode_route(ret)
        if len(routes_raw) > cache.max_bytes:
            return frame_with_routes(version, routes_raw, payload)
        if len(encoded) >= cache.max_pairs:
            encoded.clear()
        entry = encoded[id(onward)] = (onward, ret, pop_first, routes_raw)
    cache._last = entry
    return frame_with_routes(version, entry[3], payload)


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

    Attributes:
        route_cache: this decoder's own :class:`RouteCache`: the frames it decodes with the same
            route bytes get the same route objects (the return prefix included). Give it to
            :func:`encode_frame` to forward them.

    If a body is malformed, ``feed`` raises :class:`RemoteProtocolError` with the messages of the
    same chunk that came before it in ``error.messages``, and the decoder refuses further input:
    the stream cannot be trusted after a bad frame.
    """

    __slots__ = (
        "_route_cache",
        "_buffer",
        "_needed",
        "_prefix",
        "_failed",
        "_routes_raw",
        "_onward",
        "_return",
    )

    def __init__(self, return_prefix: Optional[Address] = None) -> None:
        self._buffer: Optional[bytearray] = None  # made for the first incomplete frame
        self._needed = 2
        self._prefix = return_prefix
        self._failed = False
        # The routes of the last frame, raw and decoded: a connection's frames mostly repeat them,
        # so one bytes comparison replaces the route parse (and the prefix) on the common path.
        self._routes_raw = b""
        self._onward: Route = _new_tuple(Route, ())
        self._return: Route = self._onward
        self._route_cache: Optional[RouteCache] = None  # made on first use: most never need it

    @property
    def route_cache(self) -> RouteCache:
        """This decoder's own :class:`RouteCache` (see the class's attributes)."""
        cache = self._route_cache
        if cache is None:
            cache = self._route_cache = RouteCache()
        return cache

    @property
    def buffered(self) -> int:
        """Bytes held for an incomplete frame."""
        return len(self._buffer) if self._buffer is not None else 0

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
                    # A connection's first routes are not remembered: most never change.
                    self._onward, self._return, p = _parse_routes(
                        data, body + 1, end, body, self._prefix, self.route_cache if raw else None
                    )
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
            if buffer is None:
                buffer = self._buffer = bytearray()
            buffer += data[pos:] if pos else data
            self._needed = 2 + ((data[pos] << 8) | data[pos + 1]) if n - pos >= 2 else 2
        return out
