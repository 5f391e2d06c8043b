"""The router greenlet: reads what the network delivered and dispatches it by address.

A transport tells the router that a connection is readable (:meth:`Router.readable`, from an I/O
callback in the hub, which switches straight into the router). The router reads it
(non-blocking), decodes it and dispatches each message by the first address of its onward route
(docs/protocol.md, rule 2): a local address to a context's mailbox or an endpoint, any other
type to its transport. It never raises and never blocks: what cannot be delivered is logged,
counted (:meth:`Node.drop`) and dropped. One greenlet serves every connection.

The per-message path's deliberate shortcuts, together, each with what it bought when measured
with ``scripts/bench.py`` (round-trip ratio to raw gevent; README, "Performance"):

* Here: the worker woken last in a batch is switched into straight from the router (the others
  through hub callbacks), one switch into its worker instead of two through the hub, and the read
  watcher calls the node directly (0.55 -> 0.59-0.63, -10 % instructions); a run of messages with
  the same onward route object (a connection's decoder reuses it) resolves to its context once,
  and to an endpoint with one look-up that it is still there. The mailbox's push and an
  endpoint's dispatch are inlined in :meth:`Router.route`, which loads up front only what every
  message needs (an endpoint's :meth:`Router.relay` calls it per message: a hub client's relay
  to its worker 0.72 -> 0.56 us per message in process, a hub's crossings 0.96 -> 0.79 and
  0.80 -> 0.58 us).
* Reading in this one greenlet instead of a reader greenlet per connection (0.29 -> 0.40), and a
  connection costs no greenlet; what an idle connection never uses (its held set, close
  watchers, route cache, decoder buffer) is made on first use, and every read watcher shares one
  bound method (1.3 KB per idle connection; 1.8 KB without these).
* The hub's crossing (:mod:`greenockam.hub`, a connection's mark in the TCP transport): a
  forwarder reuses one ``Vouched`` per source for a batch, a ``Vouched`` source's frames are
  encoded through its connection's route cache, a confined mark remembers its last admission
  until a grant is taken back, and ``Connection.write`` holds a forwarding source itself (the
  hub's CPU per message 2.8 -> 2.4 us; pipelined through the hub / direct 0.50 -> 0.53).
* :class:`~greenockam.mailbox.Mailbox`: a deque and one waiter instead of ``gevent.queue.Queue``
  (0.40 -> 0.44); a bare libev timer for ``receive(timeout=...)`` instead of ``gevent.Timeout``
  (-> 0.55-0.62).
* :meth:`Context.receive <greenockam.context.Context.receive>` pops a waiting message without a
  call into the mailbox; ``Routed`` and ``TransportMessage`` are tuples built with
  ``tuple.__new__`` (no Python-level ``__init__``).
* Outlets (:data:`~greenockam.transport.base.Outlet`): a context's repeated sends along one route
  skip dispatch, the transport's lookup and route encoding (pipelined 0.59-0.62 -> 0.72-0.78,
  round trips 0.60 -> 0.63-0.67).
* :class:`~greenockam.wire.FrameDecoder` skips the route parse when a frame's routes are
  byte-identical to the previous frame's, with one-byte ``uint`` fast paths (codec 1.1-1.2 us).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Optional, Tuple

from gevent import Greenlet, getcurrent
from gevent.hub import Waiter
from loguru import logger

from .address import LOCAL
from .faults import format_traceback, printable
from .transport.base import Endpoint, Source, Transport
from .wire import TransportMessage

if TYPE_CHECKING:  # pragma: no cover
    from .context import Context
    from .node import Node

__all__ = ["Router"]

_Batch = Tuple[Source, Optional[List[TransportMessage]]]


class Router:
    """The node's router greenlet and the queue of input waiting for it.

    It shares the node's tables (local contexts, endpoints, transports by address type), which
    the node alone changes.
    """

    __slots__ = (
        "node",
        "routed",
        "_contexts",
        "_endpoints",
        "_transports",
        "_ready",
        "_idle",
        "_hub",
        "_greenlet",
        "_wake_list",
    )

    def __init__(
        self,
        node: Node,
        contexts: Dict[str, Context],
        endpoints: Dict[str, Endpoint],
        transports: Dict[int, Transport],
    ) -> None:
        self.node = node
        self.routed = 0  # messages dispatched from the network
        self._contexts = contexts
        self._endpoints = endpoints
        self._transports = transports
        self._ready: Deque[_Batch] = deque()
        self._idle = False
        self._hub = node.hub
        self._wake_list: List[Waiter] = []  # receivers to wake once the batch is dispatched
        self._greenlet = Greenlet.spawn(self._run)

    def __len__(self) -> int:
        """Readable connections and batches waiting for the router."""
        return len(self._ready)

    def readable(self, source: Source) -> None:
        """Queue ``source`` to be read (the node checks that it is running)."""
        self._ready.append((source, None))
        if self._idle:  # _wake(), inlined: a call less per read
            self._idle = False
            if getcurrent() is self._hub:
                self._greenlet.switch()  # from an I/O callback: straight into the router
            else:
                self._hub.loop.run_callback(self._resume)

    def deliver(self, messages: List[TransportMessage], source: Source) -> None:
        """Queue messages that ``source`` decoded itself."""
        self._ready.append((source, messages))
        self._wake()

    def _wake(self) -> None:
        if self._idle:
            self._idle = False
            if getcurrent() is self._hub:
                self._greenlet.switch()  # from an I/O callback: straight into the router
            else:
                self._hub.loop.run_callback(self._resume)

    def _resume(self) -> None:
        if self.node.running:  # once stop() has begun, what waits is dropped, not routed
            self._greenlet.switch()

    def stop(self) -> None:
        """End the greenlet; drop (and count) what still waits for it."""
        self._greenlet.kill()
        while self._ready:
            source, messages = self._ready.popleft()
            for msg in messages or ():
                self.node.drop("stopped", msg, source)

    def _run(self) -> None:
        """Read what is ready, dispatch it; never raises, never blocks."""
        ready = self._ready
        hub = self._hub
        run_callback = hub.loop.run_callback
        route = self.route
        wake = self._wake_list
        while True:
            while ready:
                source, messages = ready.popleft()
                if messages is None:
                    try:
                        messages = source.read()
                    except Exception as exc:  # a transport bug must not take the router down
                        logger.error(
                            "reading from {} failed:\n{}",
                            printable(source.peer),
                            format_traceback(exc),
                        )
                        continue
                route(messages, source, wake)
            self._idle = True
            if wake:
                last = wake.pop()
                for waiter in wake:
                    run_callback(waiter.switch, None)
                wake.clear()
                # The waiter's greenlet is parked in Waiter.get (hub.switch): nothing ran since
                # its waiter left the mailbox, so this cannot wake it anywhere else.
                last.greenlet.switch(None)
            else:
                hub.switch()  # until readable() or _wake switches back

    def route(
        self, messages: List[TransportMessage], source: Source, wake: List[Waiter]
    ) -> None:
        """Dispatch messages that came from ``source`` (docs/protocol.md, rule 2), never
        raising or blocking; the receivers to wake are appended to ``wake``. Called by the
        router greenlet for what it read, and by a middleware worker's ``forward``."""
        # Only what every message needs is loaded up front: relay() calls this per message.
        contexts = self._contexts
        share = self.node.source_share
        last_onward: Any = None
        last_ctx: Any = None
        # The last endpoint, its address value and the route object that resolved to it: a
        # run of messages to one (a hub's forwarder, a mark) checks only that it is still there.
        endpoint: Any = None
        endpoint_value: Any = None
        endpoint_onward: Any = None
        routed = 0  # added to self.routed once, at the end
        for msg in messages:
            onward = msg[1]
            if onward is last_onward:
                ctx = last_ctx
            else:
                if onward is endpoint_onward and self._endpoints.get(endpoint_value) is endpoint:
                    ctx = None
                else:
                    last_onward = None  # until this route resolves to a local context
                    if not onward:
                        self.node.drop("empty_route", msg, source)
                        continue
                    kind, value = onward[0]
                    if kind != LOCAL:
                        transport = self._transports.get(kind)
                        if transport is None:
                            self.node.drop("unknown_transport", msg, source)
                            continue
                        transport.send(msg, source)
                        routed += 1
                        continue
                    ctx = contexts.get(value)
                    if ctx is not None:
                        last_onward, last_ctx = onward, ctx
                    else:
                        found = self._endpoints.get(value)
                        if found is None:  # (endpoint stays what it was: it matches its route)
                            self.node.drop("unknown_address", msg, source)
                            continue
                        endpoint, endpoint_value, endpoint_onward = found, value, onward
                if ctx is None:
                    try:
                        endpoint.handle(msg, source)
                    except Exception as exc:  # an endpoint bug must not take the router down
                        self._endpoint_failed(msg, exc)
                    routed += 1
                    continue
            mailbox = ctx.mailbox
            items = mailbox.items
            items.append(msg)  # Mailbox.push, inlined
            waiters = mailbox.waiters
            if waiters:
                wake.append(waiters.popleft())
            if len(items) > share:  # contended: count it, maybe hold its source
                ctx.contend(source)
            routed += 1
        self.routed += routed

    def relay(self, message: TransportMessage, source: Source) -> None:
        """Dispatch one message by the router's rules: from an endpoint in the router greenlet,
        as part of the batch in hand (its receiver is woken with the batch's); from another
        greenlet (a middleware worker's ``forward``), waking its receiver through the hub."""
        if getcurrent() is self._greenlet:
            self.route([message], source, self._wake_list)
            return
        wake: List[Waiter] = []
        self.route([message], source, wake)
        for waiter in wake:
            self._hub.loop.run_callback(waiter.switch, None)

    def _endpoint_failed(self, msg: TransportMessage, exc: Exception) -> None:
        logger.error("endpoint {} failed:\n{}", printable(msg[1][0]), format_traceback(exc))
        self.node.count_drop("endpoint_error")
