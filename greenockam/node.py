"""The Node: workers, contexts, endpoints and transports by address, and the lifecycle.

How a message moves (docs/protocol.md, section 4):

* A **local send** (``Node.send``, any :class:`~greenockam.context.Context`'s ``send`` from any
  greenlet) is dispatched in the sender's own greenlet (:meth:`Node.dispatch`), so a bad
  destination raises right there: type 0 goes into that context's mailbox or to that endpoint,
  any other type to the transport registered for it.
* Input **from the network** is read and dispatched by the node's router greenlet
  (:mod:`greenockam.router`), which never raises and never blocks.

The interfaces a transport or a service builds on (sources, transports, outlets, endpoints and
flow control) are in :mod:`greenockam.transport.base`.
"""

from __future__ import annotations

import signal
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import gevent
from gevent import Greenlet, GreenletExit, get_hub, getcurrent
from gevent.event import AsyncResult, Event
from loguru import logger

from .address import LOCAL, Address, AddressLike, Route, RouteLike, random_address
from .codecs import Codec, get_codec
from .context import Context
from .errors import (
    AddressError,
    AddressInUse,
    ConnectFailed,
    ConnectionLost,
    MailboxFull,
    NodeStopped,
    RemoteProtocolError,
    RouteError,
    UnknownAddress,
    WorkerInitError,
)
from .faults import FaultLog, format_traceback, printable
from .message import Routed
from .router import Router
from .transport.base import Cancel, Endpoint, Outlet, Source, Transport
from .wire import TransportMessage
from .worker import Worker

__all__ = ["Node"]

_RUNNING, _STOPPING, _STOPPED = "running", "stopping", "stopped"


class Node:
    """An Ockam node: hosts workers and routes messages between them and to transports.

    Use it as a context manager, which calls :meth:`stop` on exit::

        with Node() as node:
            node.start_worker("echoer", Echoer())
            print(node.request(["echoer"], "hi", timeout=5).body)

    The node itself sends and receives as the address ``app`` (as Ockam's main context).

    Args:
        codec: the default payload codec, ``"bare"`` (default) or ``"bincode"``.
        mailbox_size: how many messages a mailbox holds before local sends to it raise
            :class:`MailboxFull` and connections feeding it pause (default :attr:`mailbox_size`).
        source_share: how many messages one connection may add to a mailbox that already holds
            more than this many before that connection pauses (default a quarter of
            ``mailbox_size``): one flooding connection cannot push everyone else behind it
            (docs/protocol.md, "Flow control").

    Attributes:
        mailbox_size: class default, 4096 messages.
        source_share: this node's share per connection (see Args).
        stop_timeout: default seconds :meth:`stop` gives workers to finish (5).
        codec: the default payload codec.
        hub: the gevent hub the node runs in.
        endpoints: the local endpoints by address value (read-only; see :meth:`start_endpoint`).
        faults: the :class:`~greenockam.faults.FaultLog` through which the node and its
            transports log what peers cause, at a bounded rate.
    """

    mailbox_size = 4096
    stop_timeout = 5.0

    def __init__(
        self,
        codec: Union[str, Codec, None] = None,
        mailbox_size: Optional[int] = None,
        source_share: Optional[int] = None,
    ):
        self.codec = get_codec(codec)
        if mailbox_size is not None:
            if mailbox_size < 1:
                raise ValueError(f"mailbox_size must be at least 1, got {mailbox_size}")
            self.mailbox_size = mailbox_size
        if source_share is not None and source_share < 1:
            raise ValueError(f"source_share must be at least 1, got {source_share}")
        share = max(1, self.mailbox_size // 4) if source_share is None else source_share
        self.source_share = min(self.mailbox_size, share)
        self.hub = get_hub()
        self._state = _RUNNING
        self._contexts: Dict[str, Context] = {}  # local address value -> its context
        self._endpoints: Dict[str, Endpoint] = {}  # local address value -> its endpoint
        self._workers: Dict[Context, Tuple[Worker, Greenlet]] = {}
        self._worker_greenlets: Dict[Any, Context] = {}
        self._transports: Dict[int, Transport] = {}
        self._routed = 0  # messages dispatched for local senders
        self._handler_errors = 0
        self._dropped: Dict[str, int] = {}
        self.faults = FaultLog(self.hub.loop)
        self._stopped = Event()  # set when stop() begins
        self._app = self.open_context("app")
        self._router = Router(self, self._contexts, self._endpoints, self._transports)

    def __repr__(self) -> str:
        return f"<Node {self._state}, {len(self._workers)} workers>"

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    @property
    def loop(self) -> Any:
        """The gevent event loop of the node's hub."""
        return self.hub.loop

    # -- the app context --------------------------------------------------------------------

    @property
    def context(self) -> Context:
        """The node's own context, address ``app``."""
        return self._app

    @property
    def address(self) -> Address:
        """``0#app``."""
        return self._app.address

    def send(self, route: RouteLike, body: Any) -> None:
        """Send from ``app``; see :meth:`Context.send`."""
        self._app.send(route, body)

    def receive(self, timeout: Optional[float] = None, message_type: Any = None) -> Routed:
        """Receive at ``app``; see :meth:`Context.receive`."""
        return self._app.receive(timeout, message_type)

    def receive_nowait(self, message_type: Any = None) -> Routed:
        """See :meth:`Context.receive_nowait`."""
        return self._app.receive_nowait(message_type)

    def request(
        self,
        route: RouteLike,
        body: Any,
        timeout: Optional[float] = None,
        message_type: Any = None,
    ) -> Routed:
        """See :meth:`Context.request`."""
        return self._app.request(route, body, timeout, message_type)

    # -- contexts and their addresses -------------------------------------------------------

    def open_context(
        self,
        address: Union[AddressLike, Iterable[AddressLike], None] = None,
        *,
        codec: Union[str, Codec, None] = None,
        message_type: Any = None,
    ) -> Context:
        """A new context at ``address`` (one address, several, or ``None`` for a random
        32-hex one) that the application sends and receives with; close it with
        :meth:`Context.close` (or use it as a context manager). ``codec`` defaults to the
        node's, ``message_type`` to ``str``.

        Raises:
            AddressInUse: an address already has a worker, context or endpoint.
            AddressError: an address is not local (type 0).
            NodeStopped: the node is stopped.
        """
        addresses = self._claim(address)
        codec = self.codec if codec is None else get_codec(codec)
        ctx = Context(self, addresses, codec, message_type)
        for addr in addresses:
            self._contexts[addr[1]] = ctx
        return ctx

    def release_addresses(self, ctx: Context) -> None:
        """Remove ``ctx``'s addresses from the node (called by :meth:`Context.close`)."""
        for addr in ctx.addresses:
            if self._contexts.get(addr[1]) is ctx:
                del self._contexts[addr[1]]

    def _claim(self, address: Union[AddressLike, Iterable[AddressLike], None]) -> List[Address]:
        """The local addresses for a new context or endpoint, checked free."""
        if self._state == _STOPPED:
            raise NodeStopped("the node is stopped")
        if address is None:
            addresses = [Address(LOCAL, random_address())]
        elif isinstance(address, (str, Address)):
            addresses = [Address.parse(address)]
        else:
            addresses = [Address.parse(a) for a in address]
            if not addresses:
                raise AddressError("a worker needs at least one address")
        for addr in addresses:
            if addr[0] != LOCAL:
                raise AddressError(f"a worker address must be local (type 0), got {addr}")
            if addr[1] in self._contexts or addr[1] in self._endpoints:
                raise AddressInUse(f"address {addr} is already in use")
        return addresses

    # -- endpoints --------------------------------------------------------------------------

    @property
    def endpoints(self) -> Dict[str, Endpoint]:
        """The endpoints by local address value (a copy)."""
        return dict(self._endpoints)

    def endpoint(self, address: AddressLike) -> Optional[Endpoint]:
        """The endpoint at the local ``address``, or None if there is none."""
        addr = Address.parse(address)
        return self._endpoints.get(addr[1]) if addr[0] == LOCAL else None

    def start_endpoint(self, address: Optional[AddressLike], endpoint: Endpoint) -> Address:
        """Register ``endpoint`` at ``address`` (``None``: a random one); the router hands it
        every message addressed there (see :class:`~greenockam.transport.base.Endpoint`).

        Raises:
            AddressInUse: the address already has a worker, context or endpoint.
        """
        (addr,) = self._claim(address)
        self._endpoints[addr[1]] = endpoint
        return addr

    def stop_endpoint(self, address: AddressLike) -> None:
        """Remove the endpoint at ``address``; messages to it are unknown from now on.

        Raises:
            UnknownAddress: no endpoint there.
        """
        addr = Address.parse(address)
        if addr[0] != LOCAL or self._endpoints.pop(addr[1], None) is None:
            raise UnknownAddress(f"no endpoint at {addr}")

    # -- workers ----------------------------------------------------------------------------

    def start_worker(
        self, address: Union[AddressLike, Iterable[AddressLike], None], worker: Worker
    ) -> Address:
        """Start ``worker`` in a new greenlet at ``address`` (one address, several, or ``None``
        for a random one); returns the primary address once ``initialize`` has returned.

        Raises:
            AddressInUse: an address already has a worker or context.
            WorkerInitError: ``initialize`` raised; the worker is not started.
        """
        if not isinstance(worker, Worker):
            raise TypeError(f"start_worker needs a Worker, got {type(worker).__name__}")
        if not isinstance(worker.concurrency, int) or worker.concurrency < 1:
            raise ValueError(f"a worker's concurrency is at least 1, got {worker.concurrency!r}")
        codec = get_codec(worker.codec) if worker.codec is not None else self.codec
        ctx = self.open_context(address, codec=codec, message_type=worker.message_type)
        started: AsyncResult = AsyncResult()
        self._workers[ctx] = (worker, Greenlet.spawn(self._run_worker, ctx, worker, started))
        started.get()
        return ctx.address

    def stop_worker(self, address: AddressLike, timeout: float = 5.0) -> None:
        """Stop the worker at ``address``: it finishes the message in hand, runs ``shutdown``;
        messages still in its mailbox are dropped (counted as ``stopped``). Waits up to
        ``timeout`` seconds, then kills it.

        Raises:
            UnknownAddress: no worker there.
        """
        addr = Address.parse(address)
        ctx = self._contexts.get(addr[1]) if addr[0] == LOCAL else None
        entry = self._workers.get(ctx) if ctx is not None else None
        if ctx is None or entry is None:
            raise UnknownAddress(f"no worker at {addr}")
        ctx.interrupt()
        greenlet = entry[1]
        if greenlet is not getcurrent():
            greenlet.join(timeout)
            if not greenlet.dead:
                logger.warning("worker {} did not stop within {}s; killing it", addr, timeout)
                greenlet.kill()

    def current_context(self) -> Optional[Context]:
        """The context of the worker whose greenlet is running, if any (transports use it for
        flow control: see :attr:`Context.mailbox_full`)."""
        return self._worker_greenlets.get(getcurrent())

    def _run_worker(self, ctx: Context, worker: Worker, started: AsyncResult) -> None:
        try:
            worker.initialize(ctx)
        except Exception as exc:
            self._workers.pop(ctx, None)
            ctx.close()
            logger.error(
                "worker {} failed to initialize:\n{}", ctx.address, format_traceback(exc)
            )
            started.set_exception(
                WorkerInitError(f"worker {ctx.address} failed to initialize: {exc!r}")
            )
            return
        started.set(ctx.address)
        others = [Greenlet.spawn(self._serve, ctx, worker) for _ in range(worker.concurrency - 1)]
        try:
            self._serve(ctx, worker)
        finally:
            ctx.interrupt()  # the other handlers' receives end now
            try:
                gevent.joinall(others)  # each finishes the message in hand
            finally:
                gevent.killall(others)  # only if this greenlet was killed while waiting
                self._workers.pop(ctx, None)
                ctx.close()
                try:
                    worker.shutdown(ctx)
                except Exception as exc:
                    logger.error(
                        "worker {} failed in shutdown:\n{}", ctx.address, format_traceback(exc)
                    )

    def _serve(self, ctx: Context, worker: Worker) -> None:
        """One greenlet's loop over a worker's mailbox: handle messages until stopped."""
        self._worker_greenlets[getcurrent()] = ctx
        handle = worker.handle_message
        receive = ctx.receive_any
        try:
            while not ctx.stopping:
                msg = receive()
                try:
                    handle(ctx, msg)
                except RemoteProtocolError as exc:  # the peer's bytes, not a bug of the handler
                    self.drop("bad_payload", msg.transport_message, exc)
                except Exception as exc:
                    if isinstance(exc, NodeStopped) and ctx.stopping:
                        continue  # woken by this worker's own stop: the loop ends here
                    self._handler_errors += 1
                    self._log_handler_error(ctx, msg, exc)
        except (NodeStopped, GreenletExit):
            pass
        finally:
            self._worker_greenlets.pop(getcurrent(), None)

    def _log_handler_error(self, ctx: Context, msg: Routed, exc: Exception) -> None:
        """A handler raised. A failure the peer caused (its connection closed or refused) is a
        fault, rate-limited and without a traceback; anything else is a bug in the handler,
        logged with its traceback (never the values of its variables, which may hold payloads)."""
        sender = printable(msg[2])
        if isinstance(exc, (ConnectionLost, ConnectFailed)):
            self.faults.warning(
                "reply_failed",
                printable(msg[2][0][1]) if msg[2] else "local",
                "worker {} could not answer {}: {}",
                ctx.address,
                sender,
                printable(exc),
            )
            return
        logger.error(
            "worker {} failed to handle a message from {}:\n{}",
            ctx.address,
            sender,
            format_traceback(exc),
        )

    # -- routing ----------------------------------------------------------------------------

    def register_transport(self, address_type: int, transport: Transport) -> None:
        """Route messages whose next hop has ``address_type`` to ``transport``."""
        if address_type == LOCAL:
            raise ValueError("address type 0 is the node's own")
        if address_type in self._transports:
            raise ValueError(f"a transport for address type {address_type} is registered")
        self._transports[address_type] = transport

    def dispatch(self, msg: TransportMessage) -> None:
        """Route ``msg`` for a local sender, in the calling greenlet: any failure raises to it.

        Raises:
            RouteError: the onward route is empty.
            UnknownAddress: no local worker, endpoint or transport for the next hop.
            MailboxFull: the local destination's mailbox is full.
            NodeStopped: the node is stopped.
            GreenockamError: whatever the transport or endpoint raised.
        """
        if self._state == _STOPPED:
            raise NodeStopped("the node is stopped")
        onward = msg[1]
        if not onward:
            raise RouteError("cannot send along an empty onward route")
        kind, value = onward[0]
        if kind == LOCAL:
            ctx = self._contexts.get(value)
            if ctx is not None:
                if len(ctx.mailbox.items) >= self.mailbox_size:
                    self.count_drop("mailbox_full")
                    raise MailboxFull(
                        f"the mailbox of {onward[0]} holds {self.mailbox_size} messages"
                    )
                ctx.mailbox.put(msg)
            else:
                endpoint = self._endpoints.get(value)
                if endpoint is None:
                    raise UnknownAddress(f"no worker at {onward[0]}")
                endpoint.handle(msg, None)
        else:
            transport = self._transports.get(kind)
            if transport is None:
                raise UnknownAddress(f"no transport for address type {kind} (next hop {onward[0]})")
            transport.send(msg, None)
        self._routed += 1

    def relay(self, msg: TransportMessage, source: Source) -> None:
        """Route ``msg`` as a message forwarded from ``source`` (a middleware hop): the rules
        of the router greenlet, in the calling greenlet: never blocks, never raises; what cannot
        be delivered is logged (at a bounded rate) and counted; a destination past its bound
        pauses ``source``; a TCP hop is dialed only as the transport's connect policy allows.

        Raises:
            NodeStopped: the node is stopped.
        """
        if self._state != _RUNNING:
            raise NodeStopped("the node is stopped")
        self._router.relay([msg], source)

    def route(self, msg: TransportMessage, source: Optional[Source]) -> None:
        """Route ``msg`` for a service that answers what it was given (an endpoint, a channel):
        as a local sender when ``source`` is None (:meth:`dispatch`: may block, raises), else as
        forwarded from ``source`` (:meth:`relay`: never blocks or raises; once the node is
        stopped the message is dropped and counted as ``stopped``)."""
        if source is None:
            self.dispatch(msg)
            return
        self.relay_run([msg], source)

    def relay_run(self, messages: List[TransportMessage], source: Source) -> None:
        """:meth:`relay` for several messages from ``source``, in order: what an endpoint that
        takes runs (:meth:`~greenockam.transport.base.Endpoint.handle_run`) sends on. Never
        raises, as an endpoint must not: once the node is stopped, the messages are dropped and
        counted as ``stopped``."""
        if self._state != _RUNNING:
            for msg in messages:
                self.drop("stopped", msg, source)
            return
        self._router.relay(messages, source)

    def outlet(self, route: Route, return_route: Route) -> Optional[Outlet]:
        """The fast path of the local endpoint or the transport at ``route``'s first hop, if it
        offers one (see :data:`~greenockam.transport.base.Outlet`); None for a context."""
        kind, value = route[0]
        if kind == LOCAL:
            endpoint = self._endpoints.get(value)
            return endpoint.outlet(route, return_route) if endpoint is not None else None
        transport = self._transports.get(kind)
        return transport.outlet(route, return_route) if transport is not None else None

    def on_close(self, address: AddressLike, callback: Callable[[], None]) -> Optional[Cancel]:
        """Call ``callback`` once, from the hub, when the connection that ``address`` names
        closes: a transport address (``1#host:port``) or a local endpoint that stands for a
        connection (a connection's mark, the first hop of a return route). Returns a function
        that cancels the watch, or None when there is no such open connection."""
        addr = Address.parse(address)
        if addr[0] == LOCAL:
            endpoint = self._endpoints.get(addr[1])
            return endpoint.on_close(callback) if endpoint is not None else None
        transport = self._transports.get(addr[0])
        return transport.on_close(addr, callback) if transport is not None else None

    def count_routed(self, n: int = 1) -> None:
        """Count ``n`` messages routed outside :meth:`dispatch` and the router (a transport's
        outlet, an endpoint's own fast path)."""
        self._routed += n

    def readable(self, source: Source) -> None:
        """Tell the router greenlet that ``source`` has input (for transports; call it once per
        readiness, typically as an I/O watcher's callback in the hub, which switches straight
        into the router)."""
        if self._state == _RUNNING:
            self._router.readable(source)

    def deliver(self, messages: List[TransportMessage], source: Source) -> None:
        """Hand messages that arrived from ``source`` to the router greenlet (for transports that
        decode their input themselves). Never blocks; a transport paces itself by honouring
        ``source.pause()``. Once :meth:`stop` has begun the messages are dropped and counted as
        ``stopped``.
        """
        if self._state != _RUNNING:
            for msg in messages:
                self.drop("stopped", msg, source)
            return
        self._router.deliver(messages, source)

    def count_drop(self, reason: str, n: int = 1) -> None:
        """Count ``n`` messages dropped for ``reason`` (see :meth:`statistics`)."""
        self._dropped[reason] = self._dropped.get(reason, 0) + n

    def drop(self, reason: str, msg: TransportMessage, cause: Any) -> None:
        """Count and log a message that cannot be delivered (never raises). ``cause``: the
        source it came from, an exception, or None."""
        self.count_drop(reason)
        origin = getattr(cause, "peer", None)
        self.faults.warning(
            reason,
            origin or "local",
            "dropped a message ({}): onward {}, return {}, {} payload bytes{}",
            reason,
            printable(msg[1]),
            printable(msg[2]),
            len(msg[3]),
            f", from {origin}" if origin else (f": {printable(cause)}" if cause else ""),
        )

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """False once :meth:`stop` has begun."""
        return self._state == _RUNNING

    def serve_forever(
        self, signals: Iterable[int] = (signal.SIGINT, signal.SIGTERM)
    ) -> Optional[int]:
        """Serve until one of ``signals`` arrives (or another greenlet calls :meth:`stop`), then
        stop gracefully (:meth:`stop`). Returns the signal that ended it, or None. Call it from
        the main greenlet of a program whose work is done by workers and transports.
        """
        received: AsyncResult = AsyncResult()
        handlers = [gevent.signal_handler(sig, received.set, sig) for sig in signals]
        self._stopped.rawlink(lambda _: received.set(None))
        # Signal watchers do not keep gevent's loop alive: without this timer a node with no
        # listener or connection would end the wait at once (LoopExit).
        keepalive = self.hub.loop.timer(3600.0, 3600.0)
        keepalive.start(lambda: None)
        try:
            return received.get()  # type: ignore[no-any-return]
        finally:
            keepalive.close()
            for handler in handlers:
                handler.cancel()
            self.stop()

    def stop(self, timeout: Optional[float] = None) -> None:
        """Stop the node: the router greenlet ends, every worker finishes the message in hand
        and runs ``shutdown``, transports close their connections; anything left in a mailbox is
        dropped. A ``receive`` or ``request`` still waiting, in a handler or elsewhere, raises
        :class:`NodeStopped` at once. Waits up to ``timeout`` seconds (default
        :attr:`stop_timeout`) for workers, then kills them. Idempotent; afterwards every send
        raises :class:`NodeStopped`.
        """
        if self._state != _RUNNING:
            return
        self._state = _STOPPING
        self._stopped.set()
        timeout = self.stop_timeout if timeout is None else timeout
        self._router.stop()
        current = getcurrent()
        workers = [g for _, g in self._workers.values() if g is not current]
        for ctx in set(self._contexts.values()):
            ctx.interrupt()  # a handler waiting in a request ends now, not at the timeout
        gevent.joinall(workers, timeout)
        stuck = [g for g in workers if not g.dead]
        if stuck:
            logger.warning("{} workers did not stop within {}s; killing them", len(stuck), timeout)
            gevent.killall(stuck, block=True, timeout=1)
        for transport in self._transports.values():
            transport.stop(timeout)
        self._state = _STOPPED
        for ctx in list(self._contexts.values()):
            ctx.close()
        self._endpoints.clear()
        self.faults.flush()
        logger.debug("node stopped: {}", self.statistics())

    # -- statistics -------------------------------------------------------------------------

    def statistics(self) -> Dict[str, Any]:
        """Plain numbers: ``state``, ``workers``, ``contexts`` (open contexts, workers' included),
        ``endpoints``, ``messages_routed``, ``handler_errors``, ``dropped`` (by reason),
        ``router_queue`` (readable connections and batches waiting for the router) and
        ``mailbox_depths`` (primary address -> messages waiting, for every context with any)."""
        contexts = set(self._contexts.values())
        return {
            "state": self._state,
            "workers": len(self._workers),
            "contexts": len(contexts),
            "endpoints": len(self._endpoints),
            "messages_routed": self._routed
            + self._router.routed
            + sum(ctx.outlet_sends for ctx in contexts),
            "handler_errors": self._handler_errors,
            "dropped": dict(self._dropped),
            "router_queue": len(self._router),
            "mailbox_depths": {
                str(ctx.address): len(ctx.mailbox) for ctx in contexts if len(ctx.mailbox)
            },
        }
