"""Routed: a message as a worker (or a receiving context) sees it."""

from __future__ import annotations

from typing import Any, Callable

from .address import Address, Route
from .wire import TransportMessage

__all__ = ["Routed"]

_UNDECODED: Any = object()


class Routed:
    """A received message with its routes, as Ockam's ``Routed<M>``.

    Attributes:
        address: the local address it was delivered to.
    """

    __slots__ = ("_message", "_decode", "_body", "address")

    def __init__(
        self, message: TransportMessage, address: Address, decode: Callable[[bytes], Any]
    ) -> None:
        self._message = message
        self._decode = decode  # the receiver's codec's decoder for its message type
        self._body = _UNDECODED
        self.address = address

    @property
    def body(self) -> Any:
        """The payload decoded with the receiver's codec and message type (``str`` by default).

        Raises:
            RemoteProtocolError: the payload is not a valid value of that type.
        """
        body = self._body
        if body is _UNDECODED:
            body = self._body = self._decode(self._message[3])
        return body

    @property
    def payload(self) -> bytes:
        """The raw payload bytes."""
        return self._message[3]

    @property
    def onward_route(self) -> Route:
        """The onward route; the receiving worker is still at its front (PROTOCOL.md rule 2)."""
        return self._message[1]

    @property
    def return_route(self) -> Route:
        """The route back to the sender."""
        return self._message[2]

    @property
    def transport_message(self) -> TransportMessage:
        """The message as it travels, for forwarding unchanged."""
        return self._message

    def reply(self) -> Route:
        """The route to send an answer to (Ockam's ``Routed::reply``): the return route."""
        return self._message[2]

    def __repr__(self) -> str:
        return (
            f"Routed(onward={str(self._message[1])!r}, return={str(self._message[2])!r}, "
            f"payload={len(self._message[3])} bytes)"
        )
