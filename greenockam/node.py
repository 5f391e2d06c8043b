"""The Node: workers, their mailboxes, the router greenlet, request/response and lifecycle.

How a message moves (PROTOCOL.md section 4):

* A **local send** (``Node.send``, ``Context.send`` from any greenlet) is dispatched in the
  sender's own greenlet, so a bad destination raises right there: type 0 goes into that worker's
  mailbox, any other type to the transport registered for it. After one send along a route, the
  next ones take the transport's *outlet* for it (the connection and the encoded routes, kept by
  the context) unless it declines.
* Input **from the network** is read by the node's **router greenlet**: a transport tells the
  node that a connection is readable (:meth:`Node.readable`, from an I/O callback, which switches
  into the router), and the router reads it (non-blocking), decodes it, dispatches each message
  by the same rules and switches into the worker it woke. It never raises and never blocks: what
  cannot be delivered is logged, counted in :meth:`Node.statistics` and dropped. One greenlet
  serves every connection: a connection costs no greenlet.

Mailbox policy (see the README): a mailbox holds ``mailbox_size`` messages. A local send into a
full mailbox raises :class:`~greenockam.errors.MailboxFull` at once (never blocks, so two workers
flooding each other cannot deadlock). A message from the network is always accepted, but when it
takes a mailbox past ``mailbox_size`` the connection it came on stops reading until the worker
has drained the mailbox to half, so TCP backpressure reaches the remote sender and memory stays
bounded by ``mailbox_size`` plus one read per paused connection.
"""

from __future__ import annotations

import os
from collections import deque
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    List,
    Optional,
    Protocol,
    Set,
    Tuple,
    Union,
)

import gevent
from gevent import Greenlet, GreenletExit, get_hub, getcurrent
from gevent.event import AsyncResult, Event
from gevent.hub import Waiter
from loguru import logger

from .address import LOCAL, Address, AddressLike, Route, RouteLike, as_route
from .codecs import Codec, get_codec
from .errors import (
    AddressError,
    AddressInUse,
    MailboxFull,
    NodeStopped,
    ReceiveTimeout,
    RemoteProtocolError,
    RouteError,
    UnknownAddress,
    WorkerInitError,
)
from .message import Routed
from .wire import VERSION, TransportMessage
from .worker import Worker

__all__ = ["Node", "Context", "Transport", "Source"]

_new_tuple = tuple.__new__  # builds a TransportMessage or Routed without a Python-level call
_OUTLETS_PER_CONTEXT = 1024  # routes whose transport fast path a context remembers
_TIMED_OUT: Any = object()  # what a receive timer wakes its waiter with
_STOP: Any = object()  # wakes a context's receivers when it closes
_RUNNING, _STOPPING, _STOPPED = "running", "stopping", "stopped"


class Source(Protocol):
    """Where network messages come from: a connection that can be read, paused and resumed."""

    peer: str

    def read(self) -> List[TransportMessage]:
        """Read what is available without blocking and return the messages it completes.

        Called by the router greenlet after :meth:`Node.readable`; handles its own errors
        (a broken or malformed connection closes itself and returns what it decoded before).
        """

    def pause(self) -> None:
        """Stop reading until :meth:`resume` (flow control)."""

    def resume(self) -> None:
        """Read again."""


class Transport(Protocol):
    """What a node needs from a transport registered for an address type."""

    def send(self, message: TransportMessage, source: Optional[Source]) -> None:
        """Carry ``message`` whose next hop has this transport's type.

        ``source is None`` for a local sender: may block (connect, a full write buffer) and raises
        on failure. Otherwise the message is being forwarded from ``source``: must not block or
        raise; a failure is logged and counted.
        """

    def stop(self, timeout: float) -> None:
        """Close every connection and end every greenlet the transport started."""

    # Optional: ``outlet(route, return_route)`` returns a callable that carries a local
    # sender's next payloads along ``route`` without the full path, returning False when it
    # cannot (then :meth:`send` is used), or None. See TcpTransport.outlet.


class Mailbox:
    """A context's unbounded FIFO of messages (the bound is enforced by :class:`Node`).

    Leaner than ``gevent.queue.Queue`` on the one path that matters: a ``put`` wakes one waiting
    receiver through a single hub callback (the router greenlet, which inlines ``put``, switches
    into it instead), and a ``get`` with messages waiting returns at once.
    """

    __slots__ = ("_items", "_waiters", "_loop")

    def __init__(self, loop: Any) -> None:
        self._items: Deque[Any] = deque()
        self._waiters: Deque[Waiter] = deque()
        self._loop = loop

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: Any) -> None:
        """Append ``item``; never blocks (callable from the hub)."""
        self._items.append(item)
        if self._waiters:
            self._loop.run_callback(self._waiters.popleft().switch, None)

    def get(self, timeout: Optional[float] = None) -> Any:
        """The oldest item; waits up to ``timeout`` seconds (``None``: forever).

        Raises:
            ReceiveTimeout: nothing arrived in time (the caller words the message).
        """
        items = self._items
        loop = self._loop
        deadline = None if timeout is None else loop.now() + timeout
        while not items:
            waiter = Waiter()
            self._waiters.append(waiter)
            timer = None
            if deadline is not None:  # a bare libev timer: gevent.Timeout costs 7 Python calls
                timer = loop.timer(max(deadline - loop.now(), 0.0))
                timer.start(waiter.switch, _TIMED_OUT)
            try:
                woken = waiter.get()
            except BaseException:  # killed while waiting
                self._forget(waiter)
                raise
            finally:
                if timer is not None:
                    timer.close()
            if woken is _TIMED_OUT:
                self._forget(waiter)
                raise ReceiveTimeout("timed out")
        item = items.popleft()
        if items and self._waiters:  # another receiver can take the next one
            loop.run_callback(self._waiters.popleft().switch, None)
        return item

    def _forget(self, waiter: Waiter) -> None:
        """A receiver leaves without an item: drop its waiter, or pass on the wake-up that
        ``put`` already gave it."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        elif self._items and self._waiters:
            self._loop.run_callback(self._waiters.popleft().switch, None)


def random_address() -> str:
    """32 hex characters, as Ockam's random addresses."""
    return os.urandom(16).hex()


class Context:
    """A set of local addresses with one mailbox: given to a worker's handlers, or used by the
    application itself (the node's ``app`` context, and the temporary context of a request).

    Attributes:
        node: the node this context belongs to.
        address: the primary address (the first one); messages sent from here carry it as their
            return route.
        addresses: every address of this context.
    """

    __slots__ = (
        "node",
        "address",
        "addresses",
        "codec",
        "message_type",
        "_decode",
        "_queue",
        "_return_route",
        "_outlets",
        "_paused",
        "_low_water",
        "_stopping",
        "_greenlet",
        "_blocked_on",
    )

    def __init__(
        self, node: "Node", addresses: List[Address], codec: Codec, message_type: Any
    ) -> None:
        self.node = node
        self.address = addresses[0]
        self.addresses = tuple(addresses)
        self.codec = codec
        self.message_type = message_type
        self._decode = codec.decoder(message_type)
        self._queue = Mailbox(node._hub.loop)
        self._return_route = Route([self.address])
        # Transports' fast paths for the routes this context sends along (see _send).
        self._outlets: Dict[Route, Callable[[bytes], bool]] = {}
        self._paused: Set[Source] = set()
        self._low_water = node.mailbox_size // 2
        self._stopping = False
        self._greenlet: Optional[Greenlet] = None
        self._blocked_on: Optional[Event] = None  # set by a transport while a send waits

    def __repr__(self) -> str:
        return f"<Context {self.address}>"

    # -- sending ----------------------------------------------------------------------------

    def send(self, route: RouteLike, body: Any) -> None:
        """Send ``body`` (encoded with this context's codec) along ``route``.

        The return route is this context's address (PROTOCOL.md rule 1).

        Raises:
            UnknownAddress: no local worker or transport for the next hop.
            MailboxFull: the local destination's mailbox is full.
            ConnectFailed: a new TCP connection to the next hop could not be opened.
            NodeStopped: the node was stopped.
        """
        self._send(as_route(route), self.codec.encode(body))

    def send_payload(self, route: RouteLike, payload: bytes) -> None:
        """Like :meth:`send`, with ``payload`` already encoded."""
        self._send(as_route(route), bytes(payload))

    def reply(self, msg: Routed, body: Any) -> None:
        """Send ``body`` back along ``msg``'s return route."""
        self._send(msg[2], self.codec.encode(body))

    def _send(self, route: Route, payload: bytes) -> None:
        outlet = self._outlets.get(route)
        if outlet is not None and outlet(payload):  # the transport's fast path took it
            self.node._routed += 1
            return
        self.node._send_local(
            _new_tuple(TransportMessage, (VERSION, route, self._return_route, payload))
        )
        if route[0][0] != LOCAL:  # sent: the next message along this route may take a fast path
            outlet = self.node._outlet(route, self._return_route)
            if outlet is not None:
                if len(self._outlets) >= _OUTLETS_PER_CONTEXT:
                    self._outlets.clear()
                self._outlets[route] = outlet

    def forward(self, msg: Routed) -> None:
        """Pass ``msg`` on as a middleware hop (PROTOCOL.md rule 5): pop this hop from the onward
        route, prepend it to the return route, keep the payload unchanged."""
        onward = msg[1]
        if not onward or onward[0] not in self.addresses:
            raise RouteError(f"{self.address} is not the next hop of {str(onward)!r}")
        self.node._send_local(
            _new_tuple(
                TransportMessage, (msg[0], onward.pop_front(), msg[2].prepend(onward[0]), msg[3])
            )
        )

    def request(
        self, route: RouteLike, body: Any, timeout: Optional[float] = None, message_type: Any = str
    ) -> Routed:
        """Send ``body`` from a temporary address and wait for the reply to it.

        The temporary address is removed whether a reply came or not.

        Raises:
            ReceiveTimeout: no reply within ``timeout`` seconds (``None`` waits forever).
        """
        temp = self.node._open_context(None, self.codec, message_type)
        try:
            temp.send(route, body)
            return temp.receive(timeout)
        finally:
            self.node._close_context(temp)

    # -- receiving --------------------------------------------------------------------------

    def receive(self, timeout: Optional[float] = None, message_type: Any = None) -> Routed:
        """The next message in this context's mailbox, its body decoded as ``message_type``
        (default: the context's); waits up to ``timeout`` seconds (``None``: forever).

        Raises:
            ReceiveTimeout: nothing arrived in time.
            NodeStopped: the context was closed while waiting.
            RemoteProtocolError: the payload is not a valid ``message_type``; the message is
                dropped (counted as ``bad_payload``).
        """
        items = self._queue._items
        if items:  # the common case under load: no waiting, no call into the mailbox
            msg = items.popleft()
        else:
            try:
                msg = self._queue.get(timeout)
            except ReceiveTimeout:
                raise ReceiveTimeout(
                    f"no message for {self.address} within {timeout} seconds"
                ) from None
        if msg is _STOP:
            self._queue.put(_STOP)  # keep waking every other receiver too
            raise NodeStopped(f"{self.address} was stopped")
        if self._paused and len(items) <= self._low_water:
            self._resume_sources()
        decode = self._decode if message_type is None else self.codec.decoder(message_type)
        try:
            body = decode(msg[3])
        except RemoteProtocolError as exc:
            self.node._drop("bad_payload", msg, exc)
            raise
        return _new_tuple(Routed, msg + (msg[1][0], body))

    def receive_nowait(self, message_type: Any = None) -> Routed:
        """The next message if one is waiting, else :class:`ReceiveTimeout` at once."""
        if not self._queue._items:
            raise ReceiveTimeout(f"no message waiting for {self.address}")
        return self.receive(None, message_type)

    def _resume_sources(self) -> None:
        paused, self._paused = self._paused, set()
        for source in paused:
            source.resume()

    # -- workers ----------------------------------------------------------------------------

    def start_worker(self, address: Any, worker: Worker) -> Address:
        """Shorthand for ``ctx.node.start_worker``."""
        return self.node.start_worker(address, worker)

    def stop_worker(self, address: AddressLike, timeout: float = 5.0) -> None:
        """Shorthand for ``ctx.node.stop_worker``."""
        self.node.stop_worker(address, timeout)


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

    Attributes:
        mailbox_size: class default, 4096 messages.
        stop_timeout: default seconds :meth:`stop` gives workers to finish (5).
    """

    mailbox_size = 4096
    stop_timeout = 5.0

    def __init__(self, codec: Union[str, Codec, None] = None, mailbox_size: Optional[int] = None):
        self.codec = get_codec(codec)
        if mailbox_size is not None:
            if mailbox_size < 1:
                raise ValueError(f"mailbox_size must be at least 1, got {mailbox_size}")
            self.mailbox_size = mailbox_size
        self._state = _RUNNING
        self._contexts: Dict[str, Context] = {}  # local address value -> its context
        self._workers: Dict[Context, Worker] = {}
        self._worker_greenlets: Dict[Any, Context] = {}
        self._transports: Dict[int, Transport] = {}
        self._ready: Deque[Tuple[Source, Optional[List[TransportMessage]]]] = deque()
        self._router_idle = False
        self._hub = get_hub()
        self._routed = 0
        self._handler_errors = 0
        self._dropped: Dict[str, int] = {}
        self._app = self._open_context("app", self.codec, str)
        self._router = Greenlet.spawn(self._route_incoming)

    def __repr__(self) -> str:
        return f"<Node {self._state}, {len(self._workers)} workers>"

    def __enter__(self) -> "Node":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

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
        self, route: RouteLike, body: Any, timeout: Optional[float] = None, message_type: Any = str
    ) -> Routed:
        """See :meth:`Context.request`."""
        return self._app.request(route, body, timeout, message_type)

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
        codec = get_codec(worker.codec) if worker.codec is not None else self.codec
        ctx = self._open_context(address, codec, worker.message_type)
        started = AsyncResult()
        ctx._greenlet = Greenlet.spawn(self._run_worker, ctx, worker, started)
        self._workers[ctx] = worker
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
        if ctx is None or ctx not in self._workers:
            raise UnknownAddress(f"no worker at {addr}")
        self._signal_stop(ctx)
        greenlet = ctx._greenlet
        if greenlet is not None and greenlet is not getcurrent():
            greenlet.join(timeout)
            if not greenlet.dead:
                logger.warning("worker {} did not stop within {}s; killing it", addr, timeout)
                greenlet.kill()

    def _signal_stop(self, ctx: Context) -> None:
        ctx._stopping = True
        ctx._queue.put(_STOP)

    def _run_worker(self, ctx: Context, worker: Worker, started: AsyncResult) -> None:
        try:
            worker.initialize(ctx)
        except Exception as exc:
            self._workers.pop(ctx, None)
            self._close_context(ctx)
            logger.opt(exception=exc).error("worker {} failed to initialize", ctx.address)
            started.set_exception(
                WorkerInitError(f"worker {ctx.address} failed to initialize: {exc!r}")
            )
            return
        started.set(ctx.address)
        self._worker_greenlets[getcurrent()] = ctx
        handle = worker.handle_message
        receive = ctx.receive
        try:
            while not ctx._stopping:
                try:
                    msg = receive()
                except RemoteProtocolError:
                    continue  # a payload that is not a message_type: dropped and counted
                try:
                    handle(ctx, msg)
                except Exception as exc:
                    if isinstance(exc, NodeStopped) and ctx._stopping:
                        continue  # woken by this worker's own stop: the loop ends here
                    self._handler_errors += 1
                    logger.opt(exception=True).error(
                        "worker {} failed to handle a message from {}",
                        ctx.address,
                        str(msg.return_route)[:200],
                    )
        except (NodeStopped, GreenletExit):
            pass
        finally:
            self._worker_greenlets.pop(getcurrent(), None)
            self._workers.pop(ctx, None)
            self._close_context(ctx)
            try:
                worker.shutdown(ctx)
            except Exception:
                logger.opt(exception=True).error("worker {} failed in shutdown", ctx.address)

    # -- contexts and their addresses -------------------------------------------------------

    def _open_context(self, address: Any, codec: Codec, message_type: Any) -> Context:
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
            if addr[1] in self._contexts:
                raise AddressInUse(f"address {addr} is already in use")
        ctx = Context(self, addresses, codec, message_type)
        for addr in addresses:
            self._contexts[addr[1]] = ctx
        return ctx

    def _close_context(self, ctx: Context) -> None:
        for addr in ctx.addresses:
            if self._contexts.get(addr[1]) is ctx:
                del self._contexts[addr[1]]
        items = ctx._queue._items
        while items:
            item = items.popleft()
            if item is not _STOP:
                self._drop("stopped", item, None)
        ctx._queue.put(_STOP)  # wakes anyone still waiting in receive()
        ctx._resume_sources()

    # -- routing ----------------------------------------------------------------------------

    def register_transport(self, address_type: int, transport: Transport) -> None:
        """Route messages whose next hop has ``address_type`` to ``transport``."""
        if address_type == LOCAL:
            raise ValueError("address type 0 is the node's own")
        if address_type in self._transports:
            raise ValueError(f"a transport for address type {address_type} is registered")
        self._transports[address_type] = transport

    def _send_local(self, msg: TransportMessage) -> None:
        """Dispatch from a local sender: any failure raises to it."""
        if self._state == _STOPPED:
            raise NodeStopped("the node is stopped")
        onward = msg[1]
        if not onward:
            raise RouteError("cannot send along an empty onward route")
        kind, value = onward[0]
        if kind == LOCAL:
            ctx = self._contexts.get(value)
            if ctx is None:
                raise UnknownAddress(f"no worker at {onward[0]}")
            if len(ctx._queue) >= self.mailbox_size:
                self._count_drop("mailbox_full")
                raise MailboxFull(f"the mailbox of {onward[0]} holds {self.mailbox_size} messages")
            ctx._queue.put(msg)
        else:
            transport = self._transports.get(kind)
            if transport is None:
                raise UnknownAddress(f"no transport for address type {kind} (next hop {onward[0]})")
            transport.send(msg, None)
        self._routed += 1

    def _outlet(self, route: Route, return_route: Route) -> Optional[Callable[[bytes], bool]]:
        """The fast path of the transport for ``route``'s first hop, if it offers one."""
        outlet = getattr(self._transports.get(route[0][0]), "outlet", None)
        return outlet(route, return_route) if outlet is not None else None

    def readable(self, source: Source) -> None:
        """Tell the router greenlet that ``source`` has input (for transports; call it once per
        readiness, typically as an I/O watcher's callback in the hub, which switches straight
        into the router)."""
        if self._state == _RUNNING:
            self._ready.append((source, None))
            self._wake_router()

    def deliver(self, messages: List[TransportMessage], source: Source) -> None:
        """Hand messages that arrived from ``source`` to the router greenlet (for transports that
        decode their input themselves). Never blocks; a transport paces itself by honouring
        ``source.pause()``. Once :meth:`stop` has begun the messages are dropped and counted as
        ``stopped``.
        """
        if self._state != _RUNNING:
            for msg in messages:
                self._drop("stopped", msg, source)
            return
        self._ready.append((source, messages))
        self._wake_router()

    def _wake_router(self) -> None:
        """Called with the node running, after queueing input for the router."""
        if self._router_idle:
            self._router_idle = False
            if getcurrent() is self._hub:
                self._router.switch()  # from an I/O callback: straight into the router
            else:
                self._hub.loop.run_callback(self._resume_router)

    def _resume_router(self) -> None:
        if self._state == _RUNNING:  # once stop() has begun, what waits is dropped, not routed
            self._router.switch()

    def _route_incoming(self) -> None:
        """The router greenlet: read what is ready, dispatch it; never raises, never blocks.

        A worker waiting for a message it delivered is woken by a switch straight from here when
        the batch is done (the last one; any others through hub callbacks), so a message costs one
        switch into its worker rather than two through the hub. The router is idle while that
        worker runs and resumes when the next input switches back to it.
        """
        contexts = self._contexts
        transports = self._transports
        ready = self._ready
        hub = self._hub
        run_callback = hub.loop.run_callback
        mailbox_size = self.mailbox_size
        wake: List[Waiter] = []  # receivers to wake once the batch is dispatched
        while True:
            while ready:
                source, messages = ready.popleft()
                if messages is None:
                    try:
                        messages = source.read()
                    except Exception:  # a transport bug must not take the router down
                        logger.opt(exception=True).error("reading from {} failed", source.peer)
                        continue
                # A connection's frames mostly share one onward route object (the decoder
                # reuses it): resolve it to a context once per run of them.
                last_onward = last_ctx = None
                for msg in messages:
                    onward = msg[1]
                    if onward is last_onward:
                        ctx = last_ctx
                    else:
                        last_onward = None  # until this route resolves to a local context
                        if not onward:
                            self._drop("empty_route", msg, source)
                            continue
                        kind, value = onward[0]
                        if kind != LOCAL:
                            transport = transports.get(kind)
                            if transport is None:
                                self._drop("unknown_transport", msg, source)
                                continue
                            transport.send(msg, source)
                            self._routed += 1
                            continue
                        ctx = contexts.get(value)
                        if ctx is None:
                            self._drop("unknown_address", msg, source)
                            continue
                        last_onward, last_ctx = onward, ctx
                    queue = ctx._queue
                    items = queue._items
                    items.append(msg)  # Mailbox.put, inlined, waking by switch (above)
                    if queue._waiters:
                        wake.append(queue._waiters.popleft())
                    if len(items) > mailbox_size and source not in ctx._paused:
                        ctx._paused.add(source)
                        source.pause()
                        if ctx._blocked_on is not None:  # its worker waits to send: see
                            ctx._blocked_on.set()  # TcpTransport.send (it could deadlock)
                    self._routed += 1
            self._router_idle = True
            if wake:
                last = wake.pop()
                for waiter in wake:
                    run_callback(waiter.switch, None)
                wake.clear()
                # The waiter's greenlet is parked in Waiter.get (hub.switch): nothing ran since
                # its waiter left the mailbox, so this cannot wake it anywhere else.
                last.greenlet.switch(None)
            else:
                hub.switch()  # until readable() or _wake_router switches back

    def _sender_context(self) -> Optional[Context]:
        """The worker context whose greenlet is running, if any (for transports' flow control)."""
        return self._worker_greenlets.get(getcurrent())

    def _count_drop(self, reason: str) -> None:
        self._dropped[reason] = self._dropped.get(reason, 0) + 1

    def _drop(self, reason: str, msg: TransportMessage, cause: Any) -> None:
        """Count and log a message that cannot be delivered (never raises)."""
        self._count_drop(reason)
        origin = getattr(cause, "peer", None)
        logger.warning(
            "dropped a message ({}): onward {!r}, return {!r}, {} payload bytes{}",
            reason,
            str(msg[1])[:200],
            str(msg[2])[:200],
            len(msg[3]),
            f", from {origin}" if origin else (f": {cause}" if cause else ""),
        )

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """False once :meth:`stop` has begun."""
        return self._state == _RUNNING

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
        timeout = self.stop_timeout if timeout is None else timeout
        self._router.kill()
        while self._ready:
            source, messages = self._ready.popleft()
            for msg in messages or ():
                self._drop("stopped", msg, source)
        current = getcurrent()
        workers = [
            ctx._greenlet
            for ctx in list(self._workers)
            if ctx._greenlet is not None and ctx._greenlet is not current
        ]
        for ctx in list(self._workers):
            self._signal_stop(ctx)
        for ctx in set(self._contexts.values()).difference(self._workers):
            ctx._queue.put(_STOP)  # app and requests' temporary contexts: a handler in a request
        gevent.joinall(workers, timeout)  # ends now instead of holding its worker till timeout
        stuck = [g for g in workers if not g.dead]
        if stuck:
            logger.warning("{} workers did not stop within {}s; killing them", len(stuck), timeout)
            gevent.killall(stuck, block=True, timeout=1)
        for transport in self._transports.values():
            transport.stop(timeout)
        self._state = _STOPPED
        for ctx in list(self._contexts.values()):
            self._close_context(ctx)
        logger.debug("node stopped: {}", self.statistics())

    # -- statistics -------------------------------------------------------------------------

    def statistics(self) -> Dict[str, Any]:
        """Plain numbers: ``workers``, ``messages_routed``, ``handler_errors``, ``dropped`` (by
        reason), ``router_queue`` (readable connections and batches waiting for the router) and
        ``mailbox_depths`` (primary address -> messages waiting, for every context with any)."""
        contexts = set(self._contexts.values())
        return {
            "state": self._state,
            "workers": len(self._workers),
            "messages_routed": self._routed,
            "handler_errors": self._handler_errors,
            "dropped": dict(self._dropped),
            "router_queue": len(self._ready),
            "mailbox_depths": {
                str(ctx.address): len(ctx._queue) for ctx in contexts if len(ctx._queue)
            },
        }
