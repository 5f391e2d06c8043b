"""Addresses and routes: the immutable value types every other module passes around.

An :class:`Address` is a ``(type, value)`` pair; type 0 is a local worker, type 1 a TCP peer
``host:port``. Its text form is ``"T#value"`` and text without ``#`` is type 0. A :class:`Route` is
an immutable sequence of addresses: index 0 is the next hop, the last entry the destination.

Both are ``tuple`` subclasses: hashable, cheap to build on the hot path, and usable as dict keys.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Tuple, Union

from .errors import AddressError, RouteError

__all__ = [
    "Address",
    "Route",
    "AddressLike",
    "RouteLike",
    "as_route",
    "random_address",
    "LOCAL",
    "TCP",
]

LOCAL = 0
TCP = 1

_new_tuple = tuple.__new__


def _check_utf8(value: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise AddressError(f"address value {value!r} cannot be encoded as UTF-8") from None


class Address(Tuple[int, str]):
    """One hop of a route: a transport type (0-255) and a value.

    >>> Address.parse("1#127.0.0.1:10222")
    Address(1, '127.0.0.1:10222')
    >>> str(Address(0, "echo_service"))
    '0#echo_service'
    """

    __slots__ = ()

    def __new__(cls, type: int, value: str) -> Address:  # noqa: A002 - Ockam's name
        if not isinstance(type, int) or isinstance(type, bool) or not 0 <= type <= 255:
            raise AddressError(f"address type must be an int 0-255, got {type!r}")
        if not isinstance(value, str) or not value:
            raise AddressError(f"address value must be a non-empty str, got {value!r}")
        _check_utf8(value)
        return _new_tuple(cls, (type, value))

    @classmethod
    def parse(cls, text: AddressLike) -> Address:
        """Parse ``"T#value"`` (or ``"value"`` for type 0); an Address is returned as is.

        Raises:
            AddressError: two ``#``, a type that is not 0-255, or an empty value.
        """
        if isinstance(text, Address):
            return text
        if not isinstance(text, str):
            raise AddressError(f"an address is a str like '1#host:port', got {text!r}")
        kind, sep, value = text.partition("#")
        if not sep:
            kind, value = "0", text
        elif "#" in value:
            raise AddressError(f"invalid address {text!r}: more than one '#'")
        if not (kind.isascii() and kind.isdigit()) or not 0 <= int(kind) <= 255:
            raise AddressError(f"invalid address {text!r}: type must be 0-255")
        if not value:
            raise AddressError(f"invalid address {text!r}: empty value")
        _check_utf8(value)
        return _new_tuple(cls, (int(kind), value))

    @property
    def type(self) -> int:
        """The transport type: 0 local, 1 TCP."""
        return self[0]

    @property
    def value(self) -> str:
        """The address within its transport: a worker name or ``host:port``."""
        return self[1]

    def __str__(self) -> str:
        return f"{self[0]}#{self[1]}"

    def __repr__(self) -> str:
        return f"Address({self[0]}, {self[1]!r})"


AddressLike = Union[Address, str]


class Route(Tuple[Address, ...]):
    """An immutable sequence of :class:`Address`; index 0 is the next hop.

    Built from addresses or their text form, or parsed from ``"a => b => c"``:

    >>> r = Route(["1#127.0.0.1:4000", "echoer"])
    >>> str(r.pop_front().prepend("middle"))
    '0#middle => 0#echoer'
    """

    __slots__ = ()

    def __new__(cls, addresses: Iterable[AddressLike] = ()) -> Route:
        if isinstance(addresses, Route):
            return addresses
        if isinstance(addresses, (str, Address)):
            raise RouteError(
                f"a Route is built from a list of addresses, got {addresses!r}; "
                "use Route.parse() for 'a => b' text"
            )
        return _new_tuple(cls, [Address.parse(a) for a in addresses])

    @classmethod
    def parse(cls, text: str) -> Route:
        """Parse ``"1#127.0.0.1:3000 => 1#127.0.0.1:4000 => echo_service"``."""
        parts = [p.strip() for p in text.split("=>")] if text.strip() else []
        return cls(parts)

    @property
    def next(self) -> Address:
        """The next hop (index 0).

        Raises:
            RouteError: the route is empty.
        """
        if not self:
            raise RouteError("the route is empty: there is no next hop")
        return self[0]

    @property
    def recipient(self) -> Address:
        """The final destination (the last entry)."""
        if not self:
            raise RouteError("the route is empty: there is no recipient")
        return self[-1]

    def pop_front(self) -> Route:
        """The route without its first hop."""
        if not self:
            raise RouteError("cannot pop the front of an empty route")
        return _new_tuple(Route, self[1:])

    def prepend(self, address: AddressLike) -> Route:
        """A route with ``address`` in front."""
        return _new_tuple(Route, (Address.parse(address),) + self)

    def append(self, address: AddressLike) -> Route:
        """A route with ``address`` at the end."""
        return _new_tuple(Route, self + (Address.parse(address),))

    def __str__(self) -> str:
        return " => ".join(map(str, self))

    def __repr__(self) -> str:
        return f"Route({str(self)!r})"


RouteLike = Union[Route, Iterable[AddressLike], str]


_parsed_routes: Dict[Any, Route] = {}


def as_route(route: RouteLike) -> Route:
    """Accept a Route, a list of addresses, or ``"a => b"`` text.

    Applications pass the same few lists on every send, so parsed routes are kept in a bounded
    cache (parsing two addresses costs more than encoding the whole message).
    """
    if type(route) is Route:
        return route
    key = route if isinstance(route, str) else tuple(route)
    try:
        parsed = _parsed_routes.get(key)
    except TypeError:  # unhashable items: parse them, they will say what is wrong
        return Route(route)
    if parsed is None:
        parsed = Route.parse(key) if isinstance(key, str) else Route(key)
        if len(_parsed_routes) >= 1024:
            _parsed_routes.clear()
        _parsed_routes[key] = parsed
    return parsed


def random_address() -> str:
    """32 random hex characters (128 bits from the OS), as Ockam's random addresses."""
    return os.urandom(16).hex()
