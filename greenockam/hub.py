"""The hub: ``echo_service``, ``forwarding_service`` and its forwarders, and the
:class:`RemoteForwarder` client that makes a node without a listener reachable through a hub.

Everything here follows docs/hub.md, which gives the frames byte for byte (they are those of the
2021 Rust Ockam hub and its ``RemoteForwarder``) and the rules that keep a greenockam hub from
being an open relay:

* The services and every forwarder are :class:`~greenockam.transport.base.Endpoint` objects:
  each message is re-routed in the node's router greenlet, with the connection it came from as
  its source, so flow control pauses a sender whose destination's output is full and nothing
  else (docs/hub.md, "Limits").
* A forwarder is bound to the connection that registered it and removed when that connection
  closes; registrations past the per-connection or total limit are dropped and counted.
* A forwarder re-routes with a :class:`~greenockam.transport.base.Vouched` source: a
  transport that confines its connections (``TcpTransport.listen(confine=True)``, what
  ``scripts/hub.py`` does) lets through what a registrant's forwarders send it, and otherwise
  only replies along the marks it handed out (docs/hub.md, "Confinement").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Set

import gevent
from gevent import Greenlet
from gevent.event import AsyncResult, Event
from loguru import logger

from .address import LOCAL, TCP, Address, AddressLike, Route
from .codecs.typed import encoder
from .errors import AddressInUse, GreenockamError, NodeStopped, RegistrationFailed
from .faults import format_traceback
from .node import Node
from .transport.base import Cancel, Endpoint, Source, Vouched
from .transport.tcp import parse_host_port
from .wire import VERSION, TransportMessage

__all__ = [
    "ECHO_SERVICE",
    "FORWARDING_SERVICE",
    "REGISTER_PAYLOAD",
    "Hub",
    "ForwarderInfo",
    "RemoteForwarder",
    "RegistrationFailed",  # defined in greenockam.errors; re-exported where the client raises it
]

ECHO_SERVICE = "echo_service"
FORWARDING_SERVICE = "forwarding_service"
REGISTER_PAYLOAD = b"\x08register"
"""The registration payload: the BARE string ``"register"`` (docs/hub.md, "Registration")."""

_new_tuple = tuple.__new__


def _message(onward: Route, ret: Route, payload: bytes) -> TransportMessage:
    return _new_tuple(TransportMessage, (VERSION, onward, ret, payload))


# --- the hub ---------------------------------------------------------------------------------


class _Forwarder(Endpoint):
    """One registration: sends every message it gets along the registered route, with the
    sender's return route (docs/hub.md, "Forwarding"). It vouches for what it sends (the
    registrant gave it that route), and hands it straight to the registrant's connection when
    the route starts with a local endpoint (a connection's random mark), as the router would."""

    __slots__ = ("hub", "route", "endpoint")

    def __init__(self, hub: Hub, route: Route) -> None:
        self.hub = hub
        self.route = route
        self.endpoint = hub.node.endpoint(route[0])

    def handle(self, message: TransportMessage, source: Optional[Source]) -> None:
        if source is not None:
            self.handle_run([message], source)
            return
        self.hub.forwarded += 1
        self.hub.node.dispatch(_message(self.route, message[2], message[3]))

    def handle_run(self, messages: List[TransportMessage], source: Source) -> None:
        """Messages that came in a row from one connection: re-routed together, with one
        ``Vouched`` source, straight to the registrant's connection when its mark is here."""
        hub = self.hub
        hub.forwarded += len(messages)
        route = self.route
        # _message(), inlined: a call less per message
        forwards = [_new_tuple(TransportMessage, (VERSION, route, m[2], m[3])) for m in messages]
        vouched = Vouched(source)
        if self.endpoint is not None:
            self.endpoint.handle_run(forwards, vouched)
        else:
            hub.node.relay_run(forwards, vouched)


class _EchoService(Endpoint):
    """``echo_service``: the payload back along the return route, from ``echo_service``."""

    __slots__ = ("hub",)

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def handle(self, message: TransportMessage, source: Optional[Source]) -> None:
        self.hub.echoed += 1
        self.hub.node.route(_message(message[2], self.hub._echo_route, message[3]), source)


class _ForwardingService(Endpoint):
    """``forwarding_service``: each message registers a new forwarder."""

    __slots__ = ("hub",)

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def handle(self, message: TransportMessage, source: Optional[Source]) -> None:
        self.hub._register(message, source)


class Hub:
    """The hub services on ``node``: ``echo_service``, ``forwarding_service`` and the forwarders
    it creates (docs/hub.md). Starts them at once; :meth:`stop` removes them (the node runs on).

    A hub never dials: give its node a ``TcpTransport`` with the default
    ``dial_for_forward=False``, and listen with random marks and confinement (what
    ``scripts/hub.py`` does; docs/hub.md, "Confinement")::

        node = Node()
        tcp = TcpTransport(node)
        tcp.listen("127.0.0.1:4000", mark="random", confine=True)
        hub = Hub(node)

    Args:
        node: the node to serve.
        max_forwarders: forwarders alive at once, over which a registration is dropped
            (default 100000).
        max_forwarders_per_connection: forwarders registered over one connection (default 64).

    Attributes:
        registrations, forwarded, echoed: counters (see :meth:`statistics`).
    """

    def __init__(
        self,
        node: Node,
        *,
        max_forwarders: int = 100_000,
        max_forwarders_per_connection: int = 64,
    ) -> None:
        for name, value in (
            ("max_forwarders", max_forwarders),
            ("max_forwarders_per_connection", max_forwarders_per_connection),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        self.node = node
        self.max_forwarders = max_forwarders
        self.max_forwarders_per_connection = max_forwarders_per_connection
        self.registrations = 0
        self.forwarded = 0
        self.echoed = 0
        self._refused = 0
        self._forwarders: Dict[str, _Forwarder] = {}  # address value -> forwarder
        self._by_connection: Dict[Address, Set[str]] = {}  # registrant mark -> its forwarders
        self._watches: Dict[Address, Cancel] = {}  # registrant mark -> its close watch
        self._echo_route = Route([Address(LOCAL, ECHO_SERVICE)])
        self._services = [
            node.start_endpoint(ECHO_SERVICE, _EchoService(self)),
            node.start_endpoint(FORWARDING_SERVICE, _ForwardingService(self)),
        ]

    def __repr__(self) -> str:
        return f"<Hub {len(self._forwarders)} forwarders>"

    # -- registration -----------------------------------------------------------------------

    def _register(self, message: TransportMessage, source: Optional[Source]) -> None:
        """Create a forwarder for the registration ``message`` and reply from it (in the
        router for a network registrant: never blocks or raises to it)."""
        node = self.node
        route = message[2]
        if not route:
            node.drop("empty_route", message, source)
            return
        connection = route[0] if source is not None else None
        if len(self._forwarders) >= self.max_forwarders:
            self._refuse("forwarder_limit", message, source)
            return
        owned = self._by_connection.get(connection) if connection is not None else None
        if owned is not None and len(owned) >= self.max_forwarders_per_connection:
            self._refuse("connection_forwarder_limit", message, source)
            return
        if connection is not None and owned is None:
            cancel = node.on_close(connection, lambda: self._connection_closed(connection))
            if cancel is None:
                node.drop("connection_closed", message, source)
                return
            owned = self._by_connection[connection] = set()
            self._watches[connection] = cancel
        forwarder = _Forwarder(self, route)
        while True:
            try:  # 8 bytes from the OS, as the 2021 hub: never an address in use on the node
                address = node.start_endpoint(os.urandom(8).hex(), forwarder)
                break
            except AddressInUse:
                continue
        self._forwarders[address[1]] = forwarder
        if owned is not None:
            owned.add(address[1])
        self.registrations += 1
        logger.debug("forwarder {} registered for {}", address, connection or "a local worker")
        node.route(_message(route, Route([address]), message[3]), source)

    def _refuse(self, reason: str, message: TransportMessage, source: Optional[Source]) -> None:
        self._refused += 1
        self.node.drop(reason, message, source)

    def _connection_closed(self, connection: Address) -> None:
        """The registrant's connection closed: its forwarders go (called from the hub)."""
        self._watches.pop(connection, None)
        for value in self._by_connection.pop(connection, ()):
            self._remove(value)

    def _remove(self, value: str) -> None:
        if self._forwarders.pop(value, None) is not None:
            try:
                self.node.stop_endpoint(Address(LOCAL, value))
            except GreenockamError:
                pass  # the node stopped and cleared its endpoints already
            logger.debug("forwarder 0#{} removed", value)

    # -- inspection and lifecycle -----------------------------------------------------------

    @property
    def forwarders(self) -> Dict[str, Route]:
        """The live forwarders: address value -> registered route (a copy)."""
        return {value: f.route for value, f in self._forwarders.items()}

    def statistics(self) -> Dict[str, Any]:
        """Plain numbers: ``forwarders`` alive, ``registrant_connections`` (connections that
        own forwarders), ``registrations`` made, ``registrations_refused`` (over a limit),
        ``forwarded`` and ``echoed`` messages. Messages dropped are counted with the node's
        (``Node.statistics()["dropped"]``: ``forwarder_limit``, ``connection_forwarder_limit``,
        ``unknown_address``, ``no_connection``, and the transport's ``confined``); confinement's
        own figures are the transport's (``TcpTransport.statistics()``)."""
        return {
            "forwarders": len(self._forwarders),
            "registrant_connections": len(self._by_connection),
            "registrations": self.registrations,
            "registrations_refused": self._refused,
            "forwarded": self.forwarded,
            "echoed": self.echoed,
        }

    def stop(self) -> None:
        """Remove the services and every forwarder (the connections stay open). Idempotent."""
        node = self.node
        for cancel in list(self._watches.values()):
            cancel()
        self._watches.clear()
        self._by_connection.clear()
        for value in list(self._forwarders):
            self._remove(value)
        for address in self._services:
            if node.endpoint(address) is not None:
                node.stop_endpoint(address)
        self._services = []


# --- the client ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForwarderInfo:
    """Where a registered worker can be reached: Rust's ``RemoteForwarderInfo``, a typed
    message (docs/typed-messages.md) whose BARE encoding is that struct's (docs/hub.md, "The
    client": the route, the string, the address, in that order, untagged).

    Attributes:
        forwarding_route: ``[1#hub, 0#<forwarder>]``: the route senders use.
        remote_address: the forwarder's address at the hub (16 hex characters for a
            greenockam or 2021 hub).
        worker_address: the :class:`RemoteForwarder`'s own local address.
    """

    forwarding_route: Route
    remote_address: str
    worker_address: Address

    def encode(self) -> bytes:
        """The BARE encoding of Rust's struct."""
        return _encode_forwarder_info(self)


_encode_forwarder_info = encoder(ForwarderInfo)


class RemoteForwarder(Endpoint):
    """Makes the local worker ``destination`` reachable at a hub: registers with the hub's
    ``forwarding_service`` and passes on everything its forwarder sends (docs/hub.md, "The
    client"). Wire-compatible with Rust's 2021 ``RemoteForwarder``; beyond it, it registers
    again with backoff when the connection to the hub drops, and tells the application each new
    address through ``on_registered``.

    ::

        rf = RemoteForwarder.create(node, "127.0.0.1:4000", "echoer", timeout=10)
        print(rf.info.remote_address)  # senders use [1#127.0.0.1:4000, <that address>]

    Args:
        node: the local node; it needs a ``TcpTransport``.
        hub: the hub as ``host:port``.
        destination: the local address everything sent to the forwarder goes to.
        timeout: seconds one registration waits for the hub's reply (default 10).
        on_registered: called with the :class:`ForwarderInfo` of each registration, the
            first one (before :meth:`start` returns) and every one after a reconnection, in
            the greenlet that registered; it should not block for long.
        reconnect: register again when the connection to the hub closes (default True).
        backoff: seconds before the first retry after a failure, doubled per failure up to
            ``max_backoff`` (defaults 0.1 and 30).

    Attributes:
        info: the current :class:`ForwarderInfo`, or None while not registered.
        address: this forwarder's own local address (the return route of its registration).
    """

    def __init__(
        self,
        node: Node,
        hub: str,
        destination: AddressLike,
        *,
        timeout: float = 10.0,
        on_registered: Optional[Callable[[ForwarderInfo], None]] = None,
        reconnect: bool = True,
        backoff: float = 0.1,
        max_backoff: float = 30.0,
    ) -> None:
        parse_host_port(hub)  # ValueError for anything but host:port
        self.node = node
        self.hub = hub
        self.destination = Route([destination])
        self.timeout = timeout
        self.on_registered = on_registered
        self.reconnect = reconnect
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.info: Optional[ForwarderInfo] = None
        self.address: Optional[Address] = None
        self._service_route = Route([Address(TCP, hub), Address(LOCAL, FORWARDING_SERVICE)])
        self._reply: Optional[AsyncResult] = None
        self._lost = Event()
        self._stopped = Event()
        self._watch: Optional[Cancel] = None
        self._greenlet: Optional[Greenlet] = None

    def __repr__(self) -> str:
        state = self.info.remote_address if self.info is not None else "unregistered"
        return f"<RemoteForwarder {self.hub} {state}>"

    @classmethod
    def create(
        cls, node: Node, hub: str, destination: AddressLike, **options: Any
    ) -> RemoteForwarder:
        """A started :class:`RemoteForwarder` (see :meth:`start`); ``options`` as the
        constructor's."""
        forwarder = cls(node, hub, destination, **options)
        forwarder.start()
        return forwarder

    def start(self) -> ForwarderInfo:
        """Register, wait for the hub's reply, then (with ``reconnect``) watch the connection
        in a greenlet of its own.

        Raises:
            RegistrationFailed: the hub could not be reached or did not reply properly within
                ``timeout``; nothing is left running.
        """
        if self.address is not None:
            raise RuntimeError("this RemoteForwarder was started already")
        self.address = self.node.start_endpoint(None, self)
        try:
            info = self._register()
        except BaseException:
            self.stop()
            raise
        if self.reconnect:
            self._greenlet = Greenlet.spawn(self._supervise)
        return info

    def stop(self) -> None:
        """Stop re-registering and remove this forwarder's local address (the hub removes its
        forwarder when the connection closes). Idempotent."""
        self._stopped.set()
        self._lost.set()
        if self._watch is not None:
            self._watch()
            self._watch = None
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None and greenlet is not gevent.getcurrent():
            greenlet.kill()
        if self.address is not None and self.node.endpoint(self.address) is not None:
            self.node.stop_endpoint(self.address)
        self.info = None

    # -- registering ------------------------------------------------------------------------

    def _register(self) -> ForwarderInfo:
        """One registration over the (re)opened connection to the hub."""
        assert self.address is not None
        if self._watch is not None:  # from an attempt that timed out
            self._watch()
            self._watch = None
        reply: AsyncResult = AsyncResult()
        self._reply = reply
        self.info = None
        self._lost.clear()
        hub_address = Address(TCP, self.hub)
        try:
            self.node.dispatch(
                _message(self._service_route, Route([self.address]), REGISTER_PAYLOAD)
            )
            self._watch = self.node.on_close(hub_address, self._connection_closed)
            if self._watch is None:
                raise RegistrationFailed(f"the connection to the hub at {self.hub} closed")
            info = reply.get(timeout=self.timeout)
        except gevent.Timeout:
            raise RegistrationFailed(
                f"no reply from the hub at {self.hub} within {self.timeout} s"
            ) from None
        except NodeStopped:
            raise
        except RegistrationFailed:
            raise
        except GreenockamError as exc:
            raise RegistrationFailed(f"cannot register at the hub at {self.hub}: {exc}") from exc
        finally:
            self._reply = None
        logger.info("registered at the hub {}: forwarder {}", self.hub, info.remote_address)
        if self.on_registered is not None:
            try:
                self.on_registered(info)
            except Exception as exc:
                logger.error("on_registered failed for {}:\n{}", info, format_traceback(exc))
        return info  # type: ignore[no-any-return]

    def _connection_closed(self) -> None:
        """The connection to the hub closed (called from the hub)."""
        self._watch = None
        self.info = None
        self._lost.set()
        reply = self._reply
        if reply is not None and not reply.ready():
            reply.set_exception(
                RegistrationFailed(f"the connection to the hub at {self.hub} closed")
            )

    def _supervise(self) -> None:
        """Register again, with backoff, each time the connection to the hub closes."""
        while True:
            self._lost.wait()
            if self._stopped.is_set() or not self.node.running:
                return
            logger.warning("lost the connection to the hub {}; registering again", self.hub)
            delay = self.backoff
            while True:
                try:
                    self._register()
                    break
                except RegistrationFailed as exc:
                    logger.warning("{}; next attempt in {:.1f} s", exc, delay)
                except NodeStopped:
                    return
                if self._stopped.wait(delay) or not self.node.running:
                    return
                delay = min(delay * 2, self.max_backoff)

    # -- messages (in the router for network input) -----------------------------------------

    def handle(self, message: TransportMessage, source: Optional[Source]) -> None:
        reply = self._reply
        if reply is not None and not reply.ready():
            # The registration reply: the payload must be the registration's and the last
            # return hop a local address, the forwarder's (docs/hub.md, "The client").
            ret = message[2]
            if message[3] != REGISTER_PAYLOAD or not ret or ret[-1][0] != LOCAL:
                reply.set_exception(
                    RegistrationFailed(f"the hub at {self.hub} sent an invalid registration reply")
                )
            else:
                assert self.address is not None
                self.info = ForwarderInfo(ret, ret[-1][1], self.address)
                reply.set(self.info)
            return
        if self.info is None:
            self.node.drop("not_registered", message, source)
            return
        forward = _new_tuple(TransportMessage, (VERSION, self.destination, message[2], message[3]))
        if source is not None:
            self.node.relay(forward, source)  # in order with the rest of the batch in hand
        else:
            self.node.dispatch(forward)
