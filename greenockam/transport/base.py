"""The seams between a node and what carries its messages: sources, transports, outlets,
endpoints and flow control.

A node dispatches every message by the first address of its onward route (docs/protocol.md,
rule 2): a local address goes to a context's mailbox or to an :class:`Endpoint`, any other type
to the :class:`Transport` registered for it. Input from the network arrives through a
:class:`Source` that tells the node it is readable (:meth:`greenockam.Node.readable`).

Flow control (docs/protocol.md, "Flow control") is the same in both directions: whatever a
source feeds past its bound *holds* that source (:meth:`Source.pause`) until it drains, and a
:class:`Held` set resumes everything it held at once. A context holds the sources that filled its
mailbox; a TCP connection holds the sources whose forwarded frames filled its output.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Protocol, Set

from ..address import Address, Route
from ..wire import TransportMessage

__all__ = ["Source", "Vouched", "Transport", "Outlet", "Endpoint", "Held", "Cancel"]

Outlet = Callable[[bytes], bool]
"""A fast path for one local sender along one pair of routes, offered by a transport
(:meth:`Transport.outlet`) or an endpoint (:meth:`Endpoint.outlet`): takes an encoded payload and
returns True once it is sent or queued, or False (doing nothing) when the full path is needed
(a closed connection or channel, a full output); then the sender dispatches the message."""

Cancel = Callable[[], None]
"""Undoes a registration, such as a close watch; calling it twice is harmless."""


class Source(Protocol):
    """Where network messages come from: a connection that can be read, paused and resumed.

    Attributes:
        peer: who is on the other side, for logs.
        mark: the address this source puts at the front of the return route of what it brings
            (its connection's mark, docs/protocol.md section 6), or None for a source inside
            this node (a worker's forward, a :class:`Vouched` re-routing): a transport that
            confines connections trusts such a source as it trusts a local sender.
    """

    peer: str
    mark: Optional[Address]

    def read(self) -> List[TransportMessage]:
        """Read what is available without blocking and return the messages it completes.

        Called by the router greenlet after :meth:`Node.readable`; handles its own errors
        (a broken or malformed connection closes itself and returns what it decoded before).
        """

    def pause(self) -> None:
        """Stop reading until :meth:`resume` (flow control)."""

    def resume(self) -> None:
        """Read again."""


class Vouched:
    """``source`` as seen through a local endpoint that re-routes its messages on its own
    authority, such as a hub's forwarder sending to the route its registrant gave it.

    What the endpoint sends with a :class:`Vouched` source passes the confinement of a
    transport (docs/protocol.md, section 6) as a local sender's would, and keeps ``source``'s
    flow control: pausing or resuming it pauses or resumes ``source``, and it equals ``source``
    in a :class:`Held` set. It holds no state of its own: one per message or per run is
    cheap; never hand one to code that does not vouch for the message.
    """

    __slots__ = ("source", "peer")

    mark: Optional[Address] = None

    def __init__(self, source: Source) -> None:
        self.source = source
        self.peer = source.peer

    def __repr__(self) -> str:
        return f"<Vouched {self.source!r}>"

    def __eq__(self, other: object) -> bool:
        return self.source == (other.source if isinstance(other, Vouched) else other)

    def __hash__(self) -> int:
        return hash(self.source)

    def read(self) -> List[TransportMessage]:
        return []

    def pause(self) -> None:
        self.source.pause()

    def resume(self) -> None:
        self.source.resume()


class Transport(Protocol):
    """What a node needs from a transport registered for an address type
    (:meth:`Node.register_transport`)."""

    def send(self, message: TransportMessage, source: Optional[Source]) -> None:
        """Carry ``message`` whose next hop has this transport's type.

        ``source is None`` for a local sender: may block (connect, a full write buffer) and raises
        on failure. Otherwise the message is being forwarded from ``source``: must not block or
        raise; a failure is logged and counted (:meth:`Node.drop`).
        """

    def outlet(self, route: Route, return_route: Route) -> Optional[Outlet]:
        """A fast path for a local sender's next messages along ``route`` with
        ``return_route``, or None. Asked after a send along ``route`` succeeded."""

    def on_close(self, address: Address, callback: Callable[[], None]) -> Optional[Cancel]:
        """Call ``callback`` once (in the hub, so it must not block) when the connection that
        ``address`` names closes. Returns a function that cancels the watch, or None when no
        such connection is open (the caller treats that as closed already)."""

    def stop(self, timeout: float) -> None:
        """Close every connection and end every greenlet the transport started."""


class Endpoint:
    """A local address that is not a mailbox: the router hands it each message addressed to it,
    in the router greenlet, without a greenlet switch (a forwarder, a connection's mark).

    Register one with :meth:`Node.start_endpoint`; remove it with :meth:`Node.stop_endpoint`.
    """

    def handle(self, message: TransportMessage, source: Optional[Source]) -> None:
        """Take ``message`` (its onward route still starts with this endpoint's address).

        ``source`` is the connection it came from, or None for a local sender. With a source
        this runs in the router greenlet: it must not block or raise (log and count with
        :meth:`Node.drop` instead). From a local sender it runs in the sender's greenlet and may
        raise :class:`~greenockam.errors.GreenockamError` to it.
        """
        raise NotImplementedError(f"{type(self).__name__} must override handle")

    def handle_run(self, messages: List[TransportMessage], source: Source) -> None:
        """Take messages that came in a row from ``source`` with the same onward route.

        An endpoint that overrides this gets such runs from the router at once (before anything
        that came after them is routed), so that it can work on them in one go and send what
        they become on together with :meth:`Node.relay_run`; like :meth:`handle` with a
        source, it must not block or raise. Without an override, the router hands each message
        to :meth:`handle`, and one that raises costs only itself; this default does the same
        for a caller of its own.
        """
        for message in messages:
            self.handle(message, source)

    def outlet(self, route: Route, return_route: Route) -> Optional[Outlet]:
        """A fast path for a local sender's next messages along ``route`` (which starts with
        this endpoint's address) with ``return_route``, or None (the default). Asked after a
        message along ``route`` was handled; the outlet must return False once the endpoint no
        longer takes messages, so that the sender's next message takes the full path."""
        return None

    def on_close(self, callback: Callable[[], None]) -> Optional[Cancel]:
        """Watch the connection behind this endpoint, if it stands for one (see
        :meth:`Transport.on_close`): None if that connection is closed already. The default, for
        an endpoint that stands for no connection: nothing to watch, the callback is never
        called (a function that cancels nothing is returned)."""
        return _cancel_nothing


def _cancel_nothing() -> None:
    """The cancel function of a watch that will never fire."""


class Held(Set[Source]):
    """Sources held back because something they feed is past its bound; :meth:`release` resumes
    them all together. Each source is paused once however often it overflows. (A set, so that
    "is anything held?" costs no Python call on the per-message path.)"""

    __slots__ = ()

    def hold(self, source: Source) -> bool:
        """Pause ``source`` unless it is held already; True if it was paused now."""
        if source in self:
            return False
        self.add(source)
        source.pause()
        return True

    def release(self) -> None:
        """Resume every held source."""
        sources = list(self)
        self.clear()
        for source in sources:
            source.resume()
