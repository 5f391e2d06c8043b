"""Routed: a message as a worker (or a receiving context) sees it."""

from __future__ import annotations

from operator import itemgetter
from typing import Any, Tuple

from .address import Address, Route
from .wire import TransportMessage

__all__ = ["Routed", "UndecodedRouted"]

_new_tuple = tuple.__new__


class Routed(Tuple[int, Route, Route, bytes, Address, Any]):
    """A received message with its routes and decoded body, as Ockam's ``Routed<M>``.

    Immutable; a tuple ``(version, onward_route, return_route, payload, address, body)`` so
    that building one and reading its fields cost no Python call on the per-message path.
    """

    __slots__ = ()

    version = property(itemgetter(0), doc="The version byte of the TransportMessage.")
    onward_route = property(
        itemgetter(1),
        doc="The onward route; the receiving worker is at its front (docs/protocol.md rule 2).",
    )
    return_route = property(itemgetter(2), doc="The route back to the sender.")
    payload = property(itemgetter(3), doc="The raw payload bytes.")
    address = property(itemgetter(4), doc="The local address it was delivered to.")
    body = property(
        itemgetter(5),
        doc="The payload decoded with the receiver's codec and message type (``str`` by "
        "default). For a payload that is not a valid value of that type, a worker's handler gets "
        "an :class:`UndecodedRouted`, whose ``body`` raises instead.",
    )

    def __new__(cls, message: TransportMessage, address: Address, body: Any) -> Routed:
        return _new_tuple(cls, message + (address, body))

    @property
    def transport_message(self) -> TransportMessage:
        """The message as it travels, for forwarding unchanged."""
        return _new_tuple(TransportMessage, self[:4])

    def reply(self) -> Route:
        """The route to send an answer to (Ockam's ``Routed::reply``): the return route."""
        return self[2]

    def __repr__(self) -> str:
        return (
            f"Routed(onward={str(self[1])!r}, return={str(self[2])!r}, "
            f"payload={len(self[3])} bytes)"
        )


class UndecodedRouted(Routed):
    """A received message whose payload is not a valid value of the receiver's message type:
    what a worker's handler gets for it (so a worker that only forwards never loses a message
    for its payload). Its sixth item is the decoding error, and reading :attr:`body` raises it.
    """

    __slots__ = ()

    @property  # type: ignore[override,unused-ignore]  # Routed.body: property(itemgetter(5))
    def body(self) -> Any:
        """Raises:
        RemoteProtocolError: why the payload could not be decoded."""
        raise self[5]
