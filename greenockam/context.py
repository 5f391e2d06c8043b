"""The Context: a set of local addresses with one mailbox, the handle through which a worker or
the application sends and receives.

Sending (docs/protocol.md, rules 1 and 2): a message is dispatched in the sender's own greenlet
(:meth:`Node.dispatch`), so a bad destination raises right there. After one send along a route,
the next ones with the same return route take the *outlet* that the transport or local endpoint
at its first hop offers (a connection and the encoded routes, a secure channel's session) unless
it declines.

Receiving: the mailbox holds ``mailbox_size`` messages; what the network delivers past that bound
holds its connection (:class:`~greenockam.transport.base.Held`) until a receiver has drained the
mailbox to half (docs/protocol.md, "Flow control").
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Type, Union

from .address import LOCAL, Address, AddressLike, Route, RouteLike, as_route
from .codecs import Codec
from .errors import (
    AddressError,
    ConnectionLost,
    GreenockamError,
    NodeStopped,
    ReceiveTimeout,
    RemoteProtocolError,
    RouteError,
)
from .mailbox import Mailbox
from .message import Routed, UndecodedRouted
from .transport.base import Cancel, Held, Outlet, Source
from .wire import VERSION, TransportMessage

if TYPE_CHECKING:  # pragma: no cover
    from .node import Node
    from .worker import Worker

__all__ = ["Context"]

_new_tuple = tuple.__new__  # builds a TransportMessage or Routed without a Python-level call
_OUTLETS_PER_CONTEXT = 1024  # route pairs whose transport fast path a context remembers


class _Signal:
    """Not a message: tells the receivers of a mailbox that something ended."""

    __slots__ = ("error", "text", "repeat")

    def __init__(self, error: Type[GreenockamError], text: str, repeat: bool) -> None:
        self.error = error
        self.text = text
        self.repeat = repeat  # stays for every later receiver (a close), or is taken once


_STOPPED = _Signal(NodeStopped, "{} was stopped", repeat=True)


class _Relay:
    """The source of what a context forwards (:meth:`Context.forward`): paused while a
    destination it fed is past its bound."""

    __slots__ = ("peer", "paused")
    mark: Optional[Address] = None  # a local sender: confinement lets it through

    def __init__(self, address: Address) -> None:
        self.peer = f"worker {address}"
        self.paused = False

    def read(self) -> List[TransportMessage]:
        return []

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False


class Context:
    """A set of local addresses with one mailbox: given to a worker's handlers, or opened by the
    application (:meth:`Node.open_context`; the node's own ``app`` context; the temporary
    context of a request). Use it as a context manager to close it.

    Attributes:
        node: the node this context belongs to.
        address: the primary address (the first one); messages sent from here carry it as their
            return route.
        addresses: every address of this context.
        codec: the payload codec of its sends and receives.
        message_type: how received payloads are decoded by default.
        mailbox: its :class:`~greenockam.mailbox.Mailbox` (the node's router fills it).
        stopping: True once :meth:`interrupt` or :meth:`close` was called (read it; a worker's
            loop ends before its next message). A plain attribute: the loop reads it per message.
    """

    __slots__ = (
        "node",
        "address",
        "addresses",
        "codec",
        "message_type",
        "mailbox",
        "_decode",
        "_return_route",
        "_outlets",
        "_held",
        "_low_water",
        "_contention",
        "_mailbox_size",
        "_quick",
        "_signals",
        "_share",
        "stopping",
        "_relay",
        "outlet_sends",
    )

    def __init__(
        self, node: Node, addresses: List[Address], codec: Codec, message_type: Any
    ) -> None:
        self.node = node
        self.address = addresses[0]
        self.addresses = tuple(addresses)
        self.codec = codec
        self.message_type = str if message_type is None else message_type
        self.mailbox = Mailbox(node.loop)
        self._decode = codec.decoder(message_type)
        self._return_route = Route([self.address])
        # Transports' fast paths: by onward route for this context's own return route, by
        # (onward, return) for a chosen one (see _send).
        self._outlets: Dict[Any, Outlet] = {}
        self._held = Held()  # connections paused because they filled this mailbox
        self._low_water = node.mailbox_size // 2
        # Messages each source added while the mailbox held more than its share (see contend).
        self._contention: Dict[Source, int] = {}
        self._share = node.source_share
        self._mailbox_size = node.mailbox_size
        self._signals = 0  # signals waiting in the mailbox (see _signal)
        # receive() and receive_any() pop a message without a call while the mailbox holds more
        # than this many: above it, taking one can change nothing that _take looks after (see
        # _set_quick). 0 while no source contends, nothing is held and no signal waits.
        self._quick = 0
        self.stopping = False  # see the class docstring
        self._relay = _Relay(self.address)
        self.outlet_sends = 0  # messages an outlet carried (see Node.statistics)

    def __repr__(self) -> str:
        return f"<Context {self.address}>"

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- sending ----------------------------------------------------------------------------

    def send(self, route: RouteLike, body: Any) -> None:
        """Send ``body`` (encoded with this context's codec) along ``route``.

        The return route is this context's address (docs/protocol.md, rule 1).

        Raises:
            UnknownAddress: no local worker or transport for the next hop.
            MailboxFull: the local destination's mailbox is full.
            ConnectFailed: a new TCP connection to the next hop could not be opened.
            LocalProtocolError: ``body`` cannot be encoded, or the message is too big.
            NodeStopped: the node was stopped.
        """
        self._send(as_route(route), self.codec.encode(body))

    def send_payload(self, route: RouteLike, payload: bytes) -> None:
        """Like :meth:`send`, with ``payload`` already encoded."""
        self._send(as_route(route), bytes(payload))

    def send_from_address(self, route: RouteLike, body: Any, sending_address: AddressLike) -> None:
        """Like :meth:`send`, with the return route ``[sending_address]``, which must be one of
        this context's addresses (Ockam's ``send_from_address``).

        Raises:
            AddressError: ``sending_address`` is not this context's.
        """
        address = Address.parse(sending_address)
        if address not in self.addresses:
            raise AddressError(f"{address} is not an address of {self.address}")
        ret = None if address == self.address else Route([address])
        self._send(as_route(route), self.codec.encode(body), ret)

    def send_message(self, message: TransportMessage) -> None:
        """Dispatch ``message`` as it is, with the return route it carries. Raises as
        :meth:`send`."""
        self.node.dispatch(message)

    def reply(self, msg: Routed, body: Any) -> None:
        """Send ``body`` back along ``msg``'s return route."""
        self._send(msg[2], self.codec.encode(body))

    def _send(self, route: Route, payload: bytes, ret: Optional[Route] = None) -> None:
        """Send along ``route`` with the return route ``ret`` (None: this context's own, whose
        outlets are found by the onward route alone; a chosen one's by both routes)."""
        outlet = self._outlets.get(route if ret is None else (route, ret))
        if outlet is not None and outlet(payload):  # the fast path took it
            self.outlet_sends += 1
            return
        if ret is None:
            ret = self._return_route
            key: Any = route
        else:
            key = (route, ret)
        self.node.dispatch(_new_tuple(TransportMessage, (VERSION, route, ret, payload)))
        outlet = self.node.outlet(route, ret)  # sent: the next ones may take a fast path
        if outlet is not None:
            if len(self._outlets) >= _OUTLETS_PER_CONTEXT:
                self._outlets.clear()
            self._outlets[key] = outlet

    def forward(self, msg: Routed) -> None:
        """Pass ``msg`` on as a middleware hop (docs/protocol.md, rule 5): pop this hop from the
        onward route, prepend it to the return route, keep the payload unchanged.

        A forward follows the router's rules for forwarded messages (:meth:`Node.relay`): it
        never blocks and never raises for the next hop (an unknown address, no open connection,
        a connect failure are logged at a bounded rate and counted), and a TCP hop is dialed
        only as the transport's connect policy allows. While a destination it forwarded to is
        past its bound, further forwards are dropped and counted as ``output_full``.

        Raises:
            RouteError: this context is not the next hop of ``msg``.
        """
        onward = msg[1]
        if not onward or onward[0] not in self.addresses:
            raise RouteError(f"{self.address} is not the next hop of {str(onward)!r}")
        message = _new_tuple(
            TransportMessage, (msg[0], onward.pop_front(), msg[2].prepend(onward[0]), msg[3])
        )
        if self._relay.paused:
            self.node.drop("output_full", message, self._relay)
            return
        self.node.relay(message, self._relay)

    def request(
        self,
        route: RouteLike,
        body: Any,
        timeout: Optional[float] = None,
        message_type: Any = None,
    ) -> Routed:
        """Send ``body`` from a temporary address and wait for the reply to it, decoded as
        ``message_type`` (default: this context's type).

        The temporary address is removed whether a reply came or not.

        Raises:
            ReceiveTimeout: no reply within ``timeout`` seconds (``None`` waits forever).
            ConnectionLost: the connection the request went out on closed before the reply
                came (the reply can no longer arrive).
        """
        route = as_route(route)
        reply_type = self.message_type if message_type is None else message_type
        with self.node.open_context(None, codec=self.codec, message_type=reply_type) as temp:
            temp.send(route, body)
            cancel = temp._expect_reply_over(route[0])
            try:
                return temp.receive(timeout)
            finally:
                if cancel is not None:
                    cancel()

    def _expect_reply_over(self, hop: Address) -> Optional[Cancel]:
        """Fail this context's next receive with :class:`ConnectionLost` if the connection the
        reply must come back on closes first."""
        if hop[0] == LOCAL and self.node.endpoint(hop) is None:
            return None  # a local worker: no connection involved

        def lost() -> None:
            text = f"the connection to {hop} closed before the reply to {{}} came"
            self._signal(_Signal(ConnectionLost, text, repeat=False))

        cancel = self.node.on_close(hop, lost)
        if cancel is None:
            lost()
        return cancel

    # -- receiving --------------------------------------------------------------------------

    def receive(self, timeout: Optional[float] = None, message_type: Any = None) -> Routed:
        """The next message in this context's mailbox, its body decoded as ``message_type``
        (default: the context's); waits up to ``timeout`` seconds (``None``: forever).

        Raises:
            ReceiveTimeout: nothing arrived in time.
            NodeStopped: the context was closed while waiting.
            ConnectionLost: (in a request) the connection the reply had to come on closed.
            RemoteProtocolError: the payload is not a valid ``message_type``; the message is
                dropped (counted as ``bad_payload``).
        """
        items = self.mailbox.items
        if len(items) > self._quick:
            msg = items.popleft()  # the common case under load, without a call (see _quick)
        else:
            msg = self._take(timeout)
        decode = self._decode if message_type is None else self.codec.decoder(message_type)
        try:
            body = decode(msg[3])
        except RemoteProtocolError as exc:
            self.node.drop("bad_payload", msg, exc)
            raise
        return _new_tuple(Routed, msg + (msg[1][0], body))

    def receive_any(self, timeout: Optional[float] = None) -> Routed:
        """Like :meth:`receive` with the context's type, but a payload that is not a valid value
        of it is delivered too: reading its :attr:`Routed.body` raises
        :class:`RemoteProtocolError`. A worker's handler gets its messages this way, so a worker
        that only forwards never loses a message for its payload."""
        items = self.mailbox.items
        if len(items) > self._quick:
            msg = items.popleft()  # the common case under load, without a call (see _quick)
        else:
            msg = self._take(timeout)
        try:
            body = self._decode(msg[3])
        except RemoteProtocolError as exc:
            return _new_tuple(UndecodedRouted, msg + (msg[1][0], exc))
        return _new_tuple(Routed, msg + (msg[1][0], body))

    def _take(self, timeout: Optional[float]) -> TransportMessage:
        """The next message out of the mailbox (see :meth:`receive`)."""
        mailbox = self.mailbox
        items = mailbox.items
        if items:  # the common case under load: no waiting, no call into the mailbox
            msg = items.popleft()
        else:
            try:
                msg = mailbox.get(timeout)
            except ReceiveTimeout:
                raise ReceiveTimeout(
                    f"no message for {self.address} within {timeout} seconds"
                ) from None
        if not self._quick:  # no signal waits, nothing contends (see _set_quick)
            return msg  # type: ignore[no-any-return]
        if type(msg) is _Signal:
            if msg.repeat:
                mailbox.put(msg)  # keep waking every other receiver too
            else:
                self._signals -= 1
                self._set_quick()
            raise msg.error(msg.text.format(self.address))
        if self._contention:  # see contend
            depth = len(items)
            if depth <= self._low_water and self._held:
                self._held.release()
                self._set_quick()
            if depth <= self._share // 2:
                self._contention.clear()
                self._set_quick()
        return msg  # type: ignore[no-any-return]

    def _set_quick(self) -> None:
        """Set the depth above which a receive needs no :meth:`_take` (see ``_quick``): none
        while a signal waits (it must be raised in its turn); above the depth that resumes what
        is held, or that starts the sources' counts again; else any."""
        if self._signals:
            self._quick = sys.maxsize
        elif self._held:
            self._quick = max(self._low_water, self._share // 2) + 1
        elif self._contention:
            self._quick = self._share // 2 + 1
        else:
            self._quick = 0

    def _signal(self, signal: _Signal) -> None:
        """Put ``signal`` in the mailbox: receives take the slow path until it is taken."""
        self._signals += 1
        self._quick = sys.maxsize
        self.mailbox.put(signal)

    def receive_nowait(self, message_type: Any = None) -> Routed:
        """The next message if one is waiting, else :class:`ReceiveTimeout` at once."""
        if not self.mailbox.items:
            raise ReceiveTimeout(f"no message waiting for {self.address}")
        return self.receive(None, message_type)

    # -- flow control (for the router and transports) ---------------------------------------

    def contend(self, source: Source, added: int = 1) -> int:
        """The router calls this for the messages from ``source`` that it added to the mailbox
        while it held more than the node's ``source_share``. The fairness rule (docs/protocol.md,
        "Flow control"): ``source`` is held once it added more than its share since the mailbox
        was last drained to half its share, or when the mailbox is past ``mailbox_size``
        whoever adds to it. Held sources resume once the mailbox is drained to half of
        ``mailbox_size``; the counts start again once it is drained to half the share.

        Returns how many more messages ``source`` can add before either bound is passed, if
        nothing drains the mailbox meanwhile: the router, which routes without yielding, adds
        that many before it calls again (passing them in ``added``), so a deep mailbox costs a
        call per share rather than per message, and sources are held exactly where they would
        be with a call per message."""
        contention = self._contention
        starting = not contention
        n = contention[source] = contention.get(source, 0) + added
        if starting:
            self._set_quick()
        room = self._mailbox_size - len(self.mailbox.items)
        if n > self._share or room < 0:
            self.hold(source)
            return 0
        return min(self._share - n, room)

    def hold(self, source: Source) -> None:
        """Pause ``source`` (see :meth:`contend`) until the mailbox drains to half of
        ``mailbox_size``."""
        if self._held.hold(source):
            self._set_quick()

    @property
    def mailbox_full(self) -> bool:
        """True while connections feeding this mailbox are held (past its bound or a share).

        A transport asks it of a worker that waits to send (:meth:`Node.current_context`):
        such a worker is not draining its mailbox meanwhile, and its peer may be waiting for it,
        so it waits only while its output moves (see
        :attr:`~greenockam.transport.tcp.TcpTransport.stall_timeout` and
        :class:`~greenockam.errors.OutputFull`)."""
        return bool(self._held)

    # -- lifecycle --------------------------------------------------------------------------

    def interrupt(self) -> None:
        """Make every receive (waiting now or later) raise :class:`NodeStopped`; the messages
        already in the mailbox stay until :meth:`close`."""
        self.stopping = True
        self._signal(_STOPPED)

    def close(self) -> None:
        """Give up this context's addresses; drop what waits in its mailbox (counted as
        ``stopped``); wake its receivers with :class:`NodeStopped`; resume what it held.
        Idempotent. A worker's context is closed by the node when the worker stops."""
        self.node.release_addresses(self)
        self.node.count_routed(self.outlet_sends)  # the node keeps the count once we are gone
        self.outlet_sends = 0
        self.stopping = True
        items = self.mailbox.items
        while items:
            item = items.popleft()
            if type(item) is not _Signal:
                self.node.drop("stopped", item, None)
        self._signals = 0
        self._signal(_STOPPED)
        self._held.release()

    # -- workers ----------------------------------------------------------------------------

    def start_worker(
        self, address: Union[AddressLike, Iterable[AddressLike], None], worker: Worker
    ) -> Address:
        """Shorthand for ``ctx.node.start_worker``."""
        return self.node.start_worker(address, worker)

    def stop_worker(self, address: AddressLike, timeout: float = 5.0) -> None:
        """Shorthand for ``ctx.node.stop_worker``."""
        self.node.stop_worker(address, timeout)


