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
  or goes to its endpoint as one run (below). The mailbox's push is inlined in
  :meth:`Router.route`, which loads up front only what every message needs (an endpoint's
  :meth:`Router.relay` calls it for one message or a few: a hub client's relay to its worker
  0.72 -> 0.56 us per message in process, a hub's crossings 0.96 -> 0.79 and 0.80 -> 0.58 us).
* Reading in this one greenlet instead of a reader greenlet per connection (0.29 -> 0.40), and a
  connection costs no greenlet; what an idle connection never uses (its held set, close
  watchers, route cache, decoder buffer) is made on first use, and every read watcher shares one
  bound method (1.3 KB per idle connection; 1.8 KB without these).
* The hub's crossing (:mod:`greenockam.hub`, a connection's mark in the TCP transport): a
  forwarder takes runs (one ``Vouched`` per run; 0.53 -> 0.54), a ``Vouched`` source's frames are
  encoded through its connection's route cache, a confined mark remembers its last admission
  until a grant is taken back, and ``Connection.write`` holds a forwarding source itself (the
  hub's CPU per message 2.8 -> 2.4 us; pipelined through the hub / direct 0.50 -> 0.53).
* :class:`~greenockam.mailbox.Mailbox`: a deque and one waiter instead of ``gevent.queue.Queue``
  (0.40 -> 0.44); a bare libev timer for ``receive(timeout=...)`` instead of ``gevent.Timeout``
  (-> 0.55-0.62).
* :meth:`Context.receive <greenockam.context.Context.receive>` pops a waiting message without a
  call into the mailbox, whenever the mailbox is deeper than one threshold that contention,
  holds and queued signals raise (before, a test of each per message, and a call for every
  message in the band after a burst: pipelined 0.64 -> 0.67 with the next point); a context's
  own sends find their outlet by the onward route alone, without building a key; ``Routed`` and
  ``TransportMessage`` are tuples built with ``tuple.__new__`` (no Python-level ``__init__``).
* Outlets (:data:`~greenockam.transport.base.Outlet`): a context's repeated sends along one route
  skip dispatch, the transport's lookup and route encoding (pipelined 0.59-0.62 -> 0.72-0.78,
  round trips 0.60 -> 0.63-0.67).
* :class:`~greenockam.wire.FrameDecoder` skips the route parse when a frame's routes are
  byte-identical to the previous frame's, with one-byte ``uint`` fast paths (codec 1.1-1.2 us).
* Here: messages in a row for one endpoint go to it as a run: one at a time while it is still
  registered, or all at once to an endpoint that takes runs
  (:meth:`~greenockam.transport.base.Endpoint.handle_run`): a secure channel decrypts a run and
  routes it with one relay; with the channel's outlet (a context's repeated sends through
  a channel skip dispatch) and its per-session route memory, secure pipelined went from 0.32x to
  0.42-0.44x plain (``secure_pipelined_ratio``).
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
_HANDLE_EACH = Endpoint.handle_run  # an endpoint that does not override it takes one at a time


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
        "_share",
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
        self._share = node.source_share  # fixed when the node is made, as its contexts' copies
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
                if wake:  # the others, through the hub
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
        # Only what every message needs is set up front: a read often holds one message, and
        # relay() calls this per run. last_onward: the onward route last resolved to a context,
        # last_ctx; run: messages in a row for one endpoint, with the onward route run_onward
        # (None: no run).
        contexts = self._contexts
        share = self._share
        last_onward: Any = None
        last_ctx: Any = None
        run: Any = None
        run_onward: Any = None
        routed = 0  # added to self.routed once, at the end
        # Past its share, a mailbox takes ``budget`` more messages from source before the next
        # Context.contend, which is told of the ``uncounted`` ones (see there).
        budget = uncounted = 0
        for msg in messages:
            onward = msg[1]
            if onward is last_onward:
                ctx = last_ctx
            elif onward is run_onward:
                run.append(msg)
                continue
            else:
                if run_onward is not None:  # handed over before anything after it is routed
                    self._to_endpoint(run, source)
                    run_onward = None
                if uncounted:
                    last_ctx.contend(source, uncounted)
                    uncounted = 0
                budget = 0
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
                if ctx is None:  # an endpoint's, or nobody's (see _to_endpoint)
                    run = [msg]
                    run_onward = onward
                    last_onward = None  # the run goes first: what follows waits for it
                    continue
                last_onward, last_ctx = onward, ctx
            mailbox = ctx.mailbox
            items = mailbox.items
            items.append(msg)  # Mailbox.push, inlined
            if mailbox.waiters:
                wake.append(mailbox.waiters.popleft())
            if len(items) > share:  # contended: count it, maybe hold its source
                if budget:
                    budget -= 1
                    uncounted += 1
                else:
                    budget = ctx.contend(source, uncounted + 1)
                    uncounted = 0
            routed += 1
        self.routed += routed
        if uncounted:
            last_ctx.contend(source, uncounted)
        if run_onward is not None:
            self._to_endpoint(run, source)

    def relay(self, messages: List[TransportMessage], source: Source) -> None:
        """Dispatch messages by the router's rules: from an endpoint in the router greenlet,
        as part of the batch in hand (their receivers are woken with the batch's); from another
        greenlet (a middleware worker's ``forward``), waking their receivers through the hub."""
        if getcurrent() is self._greenlet:
            self.route(messages, source, self._wake_list)
            return
        wake: List[Waiter] = []
        self.route(messages, source, wake)
        for waiter in wake:
            self._hub.loop.run_callback(waiter.switch, None)

    def _to_endpoint(self, run: List[TransportMessage], source: Source) -> None:
        """Hand messages that came in a row with one onward route to the endpoint at its first
        address: all at once if it takes runs (overrides :meth:`Endpoint.handle_run`), else
        one by one while it is still registered (one that stops itself gets none of the rest).
        A failure is logged and counted; one message that fails does not stop the others."""
        value = run[0][1][0][1]
        endpoints = self._endpoints
        endpoint = endpoints.get(value)
        if endpoint is None:
            for msg in run:
                self.node.drop("unknown_address", msg, source)
            return
        if type(endpoint).handle_run is not _HANDLE_EACH:  # it takes runs
            try:
                endpoint.handle_run(run, source)
            except Exception as exc:  # an endpoint bug must not take the router down
                self._endpoint_failed(run[0], exc)
            self.routed += len(run)
            return
        handle = endpoint.handle
        routed = 0
        for msg in run:
            if endpoints.get(value) is not endpoint:
                self.node.drop("unknown_address", msg, source)
                continue
            try:
                handle(msg, source)
            except Exception as exc:  # an endpoint bug must not take the router down
                self._endpoint_failed(msg, exc)
            routed += 1
        self.routed += routed

    def _endpoint_failed(self, msg: TransportMessage, exc: Exception) -> None:
        logger.error("endpoint {} failed:\n{}", printable(msg[1][0]), format_traceback(exc))
        self.node.count_drop("endpoint_error")
