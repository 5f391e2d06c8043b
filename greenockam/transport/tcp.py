"""The TCP transport (address type 1): a StreamServer listener and a connector pool.

The only module of greenockam that touches sockets. It follows docs/protocol.md sections 1 and 4:

* Sending: the ``1#host:port`` hop is popped from the onward route and the frame is written on the
  connection keyed by that exact string, opened on demand and reused afterwards. A context that
  sent along a route keeps an outlet for it (:meth:`TcpTransport.outlet`): the connection and
  the encoded routes, so its next sends along that route skip the lookups and route encoding.
* Receiving: a connection's read watcher tells the node's router greenlet it is readable; the
  router calls :meth:`Connection.read`, which reads without blocking and feeds a
  :class:`~greenockam.wire.FrameDecoder` that prepends ``1#<peer>`` to every return route. No
  greenlet per connection. An accepted connection is keyed by the peer as Rust prints it
  (``127.0.0.1:54321``, ``[::1]:54321``), so replies go back over the same socket.
* Confinement: a listener may confine the connections it accepts (docs/protocol.md, section 6,
  "Confinement"). A confined connection is written only what a local sender sends, what a
  local endpoint re-routes on its own authority (a :class:`~greenockam.transport.base.Vouched`
  source), what it sent itself, and replies along a mark that this transport handed to the
  connection the reply comes from: writing a frame whose return route holds a confined mark
  *grants* that mark, with the hop after it, to the connection written to.

Writes are never made from the sending greenlet: frames are appended to the connection's output
list and one hub callback per loop iteration sends them all with a single ``send`` (coalescing,
and no frame can interleave with another). Only when the kernel buffer is full does an I/O
watcher wait for the socket to be writable. Sockets are plain non-blocking ``socket.socket``
objects driven by gevent watchers; nothing is monkey-patched.
"""

from __future__ import annotations

import itertools
import socket
from functools import partial
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Optional,
    Set,
    Tuple,
    Union,
)

import gevent
import gevent.socket
from gevent import GreenletExit, get_hub
from gevent.event import Event
from gevent.pool import Group
from gevent.server import StreamServer
from loguru import logger

from ..address import LOCAL, TCP, Address, Route, random_address
from ..errors import (
    ConnectFailed,
    ConnectionLost,
    LocalProtocolError,
    NodeStopped,
    OutputFull,
    RemoteProtocolError,
)
from ..faults import printable
from ..wire import (
    VERSION,
    FrameDecoder,
    TransportMessage,
    encode_frame,
    encode_route,
    frame_with_routes,
)
from .base import Cancel, Endpoint, Held, Outlet, Source, Vouched

if TYPE_CHECKING:  # pragma: no cover
    from ..context import Context
    from ..node import Node

__all__ = ["TcpTransport", "Connection", "parse_host_port", "format_peer"]

_CONNECTING, _OPEN, _CLOSED = 0, 1, 2
_watch_keys = itertools.count()
_GONE_LIMIT = 4096  # closed client connections remembered so that replies never dial them
_Grant = Tuple[Address, ...]  # a confined mark and the hop after it (if any): what a reply names


def parse_host_port(text: str, default_host: str = "127.0.0.1") -> Tuple[str, int]:
    """Split ``"host:port"``, ``"[::1]:port"`` or ``":port"``.

    Raises:
        ValueError: no port, or a port outside 0-65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or default_host, int(port)


def format_peer(sockaddr: Any) -> str:
    """A socket address as Rust's ``SocketAddr`` prints it: ``ip:port`` or ``[ip6]:port``."""
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Connection:
    """One TCP connection, accepted or opened: its socket, decoder, watchers and output list.

    Attributes:
        peer: the key of this connection (``host:port`` as asked, or the peer as seen).
        accepted: True if the remote side connected to us.
        mark: the address this connection is named by in return routes (docs/protocol.md,
            section 6): ``1#<peer>``, or a random local address for a listener that marks
            its connections so.
        confined: True if it was accepted on a listener that confines its connections (see
            :meth:`TcpTransport.listen`).
    """

    __slots__ = (
        "peer",
        "accepted",
        "mark",
        "confined",
        "_granted",
        "_transport",
        "_node",
        "_loop",
        "_sock",
        "_state",
        "_error",
        "_ready",
        "_out",
        "_out_bytes",
        "_flush_pending",
        "_write_watcher",
        "_read_watcher",
        "_drained",
        "_moved",
        "_stalled_at",
        "_held",
        "_watchers",
        "_paused",
        "_decoder",
        "_last_read",
    )

    def __init__(
        self,
        transport: TcpTransport,
        peer: str,
        accepted: bool,
        mark: Optional[Address] = None,
        confined: bool = False,
    ) -> None:
        self.peer = peer
        self.accepted = accepted
        self.mark = Address(TCP, peer) if mark is None else mark
        self.confined = confined
        self._granted: Optional[Route] = None  # the return route last granted to it
        self._transport = transport
        self._node = transport.node
        self._loop = get_hub().loop
        self._sock: Optional[socket.socket] = None
        self._state = _CONNECTING
        self._error: Optional[BaseException] = None
        self._ready: Optional[Event] = None
        self._out: List[bytes] = []
        self._out_bytes = 0
        self._flush_pending = False
        self._write_watcher: Any = None  # made when the kernel buffer first fills
        self._read_watcher: Any = None
        self._drained: Optional[Event] = None
        # How often bytes of the output went out, as far as a waiting local sender needs to know
        # (wait_drained): every partial send counts, and every full one once _drained is made
        # (wait_drained makes it before it reads the count), so the normal path pays nothing.
        # _stalled_at: the count when a wait found the output stuck (see stalled).
        self._moved = 0
        self._stalled_at = -1
        # Made on first use (an idle connection needs neither): the sources paused because
        # their forwarded frames filled our output, and the on_close callbacks.
        self._held: Optional[Held] = None
        self._watchers: Optional[Dict[int, Callable[[], None]]] = None
        self._paused = False
        self._decoder = FrameDecoder(self.mark)
        self._last_read = 0.0

    def __repr__(self) -> str:
        state = ("connecting", "open", "closed")[self._state]
        return f"<Connection {self.peer} {state}{' accepted' if self.accepted else ''}>"

    # -- flow control (Source) --------------------------------------------------------------

    def pause(self) -> None:
        """Stop reading (the node's router calls this when a mailbox overflows)."""
        self._paused = True
        if self._read_watcher is not None:
            self._read_watcher.stop()

    def resume(self) -> None:
        """Read again."""
        self._paused = False
        if self._state == _OPEN:
            self._read_watcher.start(self._transport._readable, self)

    # -- setup ------------------------------------------------------------------------------

    def _attach(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = self._loop
        self._sock = sock
        self._last_read = loop.now()
        self._read_watcher = loop.io(sock.fileno(), 1)
        self._state = _OPEN
        if not self._paused:
            self._read_watcher.start(self._transport._readable, self)
        if self._ready is not None:
            self._ready.set()
        if self._out:
            self._flush_pending = True
            loop.run_callback(self._flush)

    def wait_ready(self, timeout: Optional[float]) -> None:
        """Wait until an opening connection is open (for a local sender).

        Raises:
            ConnectFailed: the connection could not be opened or was closed.
        """
        if self._state == _CONNECTING:
            if self._ready is None:
                self._ready = Event()
            self._ready.wait(timeout)
        if self._state != _OPEN:
            raise ConnectFailed(f"cannot connect to {self.peer}: {self._error or 'closed'}")

    # -- writing ----------------------------------------------------------------------------

    def write(self, frame: bytes, source: Optional[Source] = None) -> None:
        """Queue a frame; it goes out with the others queued in this loop iteration. On a
        closed connection the frame is dropped and counted (``connection_closed``).

        ``source``: where a forwarded frame came from, held (paused) once more than
        ``high_water`` bytes wait here, until they have gone out.
        """
        if self._state == _CLOSED:
            self._node.count_drop("connection_closed")
            return
        self._out.append(frame)
        self._out_bytes += len(frame)
        if not self._flush_pending and self._state == _OPEN:
            self._flush_pending = True
            self._loop.run_callback(self._flush)
        if source is not None and self._out_bytes > self._transport.high_water:
            held = self._held
            if held is None:
                held = self._held = Held()
            held.hold(source)

    def write_message(self, routes_raw: bytes, payload: bytes) -> bool:
        """A local sender's fast path (see :meth:`TcpTransport.outlet`): frame ``payload``
        behind routes already encoded and queue it. Returns False, doing nothing, when the
        connection is not open or more than ``high_water`` bytes wait: the sender then takes the
        full path, which reconnects, waits or raises.

        Raises:
            LocalProtocolError: the body would exceed 65535 bytes.
        """
        if self._state != _OPEN or self._out_bytes > self._transport.high_water:
            return False
        # write(), inlined for an open connection (a call and a state test less per message)
        frame = frame_with_routes(VERSION, routes_raw, payload)
        self._out.append(frame)
        self._out_bytes += len(frame)
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.run_callback(self._flush)
        return True

    def _flush(self) -> None:
        """Runs in the hub: one ``send`` of everything queued; never blocks."""
        self._flush_pending = False
        out = self._out
        if not out or self._state != _OPEN or (self._write_watcher and self._write_watcher.active):
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        try:
            sent = self._sock.send(data)  # type: ignore[union-attr]
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.close(exc)
            return
        if sent == len(data):
            out.clear()
            self._out_bytes = 0
            if self._drained is not None or self._held:
                self._moved += 1
                self._on_drained()
        else:
            # The kernel buffer is full: keep the rest and wait until the socket is writable.
            if sent:
                self._moved += 1
            out[:] = [data[sent:]]
            self._out_bytes = len(data) - sent
            if self._drained is not None and self._out_bytes <= self._transport.high_water:
                self._drained.set()  # back under the mark: a waiting sender goes on now
            if self._write_watcher is None:
                self._write_watcher = self._loop.io(self._sock.fileno(), 2)  # type: ignore[union-attr]
            self._write_watcher.start(self._on_writable)

    def _on_writable(self) -> None:
        self._write_watcher.stop()
        self._flush()

    def _on_drained(self) -> None:
        if self._drained is not None:
            self._drained.set()
        if self._held:
            self._held.release()

    @property
    def pending(self) -> int:
        """Bytes queued on this connection that have not gone out yet (a local sender's next
        send waits while they are more than the transport's ``high_water``)."""
        return self._out_bytes

    @property
    def stalled(self) -> bool:
        """True once a worker's wait found this connection's output stuck (:meth:`wait_drained`),
        until some of it goes out again: meanwhile the transport refuses at once what a worker
        whose own mailbox is full sends here (:class:`OutputFull`)."""
        return self._stalled_at == self._moved

    def wait_drained(self, high_water: int, ctx: Optional[Context] = None) -> None:
        """Block the calling greenlet while more than ``high_water`` bytes wait to go out.

        A worker (``ctx``) waits as long as the output moves. It looks at it once per
        ``stall_timeout`` of the transport (:class:`TcpTransport`): when nothing of it went out
        for that whole interval and the worker's own mailbox is full, its wait ends (what it
        sent stays queued) and the connection is :attr:`stalled`. Such a worker is not draining
        its mailbox while it waits, and the peer may be waiting for it (see :class:`OutputFull`).
        A mailbox that fills does not cut a wait short by itself: it is looked at when the
        interval ends, so the output has always had ``stall_timeout`` to move.

        Raises:
            ConnectionLost: the connection closed meanwhile.
        """
        drained = self._drained
        if drained is None:
            drained = self._drained = Event()  # from now on every flush that sends counts
        moved = self._moved
        while self._out_bytes > high_water and self._state == _OPEN:
            drained.clear()
            if ctx is None:
                drained.wait()
            elif not drained.wait(self._transport.stall_timeout):  # an interval without a drain
                if self._moved != moved:
                    moved = self._moved  # slow, not stuck: wait on
                elif ctx.mailbox_full:
                    self._stalled_at = moved
                    return
        if self._state == _CLOSED:
            raise ConnectionLost(f"connection to {self.peer} closed: {self._error or 'closed'}")

    def on_close(self, callback: Callable[[], None]) -> Cancel:
        """Call ``callback`` once, from the hub, when this connection closes; returns the
        function that cancels that."""
        key = next(_watch_keys)
        watchers = self._watchers
        if watchers is None:
            watchers = self._watchers = {}
        watchers[key] = callback

        def cancel() -> None:
            watchers.pop(key, None)

        return cancel

    # -- reading ----------------------------------------------------------------------------

    def read(self) -> List[TransportMessage]:
        """Called by the router greenlet: one non-blocking ``recv``, decoded. Closes the
        connection on EOF, a socket error or a malformed frame (returning the messages decoded
        before it)."""
        if self._state != _OPEN or self._paused:
            return []
        try:
            data = self._sock.recv(self._transport.read_size)  # type: ignore[union-attr]
        except (BlockingIOError, InterruptedError):
            return []
        except OSError as exc:
            self.close(exc)
            return []
        if not data:
            self.close("closed by peer")
            return []
        self._last_read = self._loop.now()
        try:
            return self._decoder.feed(data)
        except RemoteProtocolError as exc:
            self._node.faults.warning(
                "malformed_frame",
                self.peer,
                "malformed frame from {}: {}; closing the connection",
                self.peer,
                printable(exc),
            )
            self._transport._count("malformed_frames")
            self.close(exc)
            return exc.messages

    # -- closing ----------------------------------------------------------------------------

    def close(self, reason: Any = None) -> None:
        """Close the socket and forget the connection. Safe to call twice."""
        if self._state == _CLOSED:
            return
        was_open = self._state == _OPEN
        faults = self._node.faults
        if self._decoder.buffered and reason != "transport stopped":
            faults.warning(
                "truncated_frame",
                self.peer,
                "connection {} {} in the middle of a frame; dropped its {} bytes",
                self.peer,
                printable(reason),
                self._decoder.buffered,
            )
        self._state = _CLOSED
        self._error = reason if isinstance(reason, BaseException) else None
        self._transport._forget(self)
        if self._out:
            faults.warning(
                "unsent_bytes",
                self.peer,
                "connection {} closed with {} bytes unsent",
                self.peer,
                self._out_bytes,
            )
            self._out.clear()
            self._out_bytes = 0
        for watcher in (self._read_watcher, self._write_watcher):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        if self._sock is not None:
            self._sock.close()
        for event in (self._ready, self._drained):
            if event is not None:
                event.set()
        self._on_drained()
        if self._watchers:
            watchers = list(self._watchers.values())
            self._watchers.clear()
            for callback in watchers:
                self._loop.run_callback(callback)
        if was_open:
            faults.info(
                "connection_closed",
                self.peer,
                "connection {} closed ({})",
                self.peer,
                printable(reason or "closed"),
            )


class _Mark(Endpoint):
    """The random mark of an accepted connection: a local endpoint that writes what is sent to
    it on that connection (see :meth:`TcpTransport.listen`), by the rules of
    :meth:`TcpTransport.send` once the connection is known.

    On a confined connection it remembers the last admission: the source's mark and the onward
    route object (a decoder repeats it) that :meth:`TcpTransport._admits` let through, and how
    many grants the transport had taken back then; the same pair is let through again without
    the grant lookup until a grant is taken back."""

    __slots__ = ("_conn", "_admitted")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._admitted: Tuple[Any, Any, int] = (None, None, -1)

    def handle(self, message: TransportMessage, source: Optional[Source]) -> None:
        conn = self._conn
        transport = conn._transport
        if source is None:
            # A local sender (a reply along the mark: no outlet here): its routes repeat those
            # this connection brought, so they go through its route cache; errors raise to it.
            frame = encode_frame(message, True, conn._decoder.route_cache)
        else:
            mark = source.mark
            if mark is not None and conn.confined:  # None: a source inside this node
                admitted = self._admitted
                if (
                    message[1] is not admitted[1]
                    or mark is not admitted[0]
                    or admitted[2] != transport._revocations
                ):
                    if not transport._admits(conn, message, source):
                        transport.node.drop("confined", message, source)
                        return
                    self._admitted = (mark, message[1], transport._revocations)
            forwarded = transport._frame(message, source)
            if forwarded is None:
                return
            frame = forwarded
        if transport._confined and message[2] is not conn._granted:
            transport._grant(conn, message[2])
        if source is None:
            transport.write(conn, frame, None)
        else:
            conn.write(frame, source)  # what transport.write does for it, one call less

    def on_close(self, callback: Callable[[], None]) -> Optional[Cancel]:
        return self._conn.on_close(callback)


class _GoneMark(Endpoint):
    """Stands in for the random mark of an accepted connection that closed: what is sent along
    it fails at once, without a connect attempt (counted as ``replies_to_gone``)."""

    __slots__ = ("_transport",)

    def __init__(self, transport: TcpTransport) -> None:
        self._transport = transport

    def handle(self, message: TransportMessage, source: Optional[Source]) -> None:
        self._transport._count("replies_to_gone")
        if source is None:
            raise ConnectionLost(f"the client marked {printable(message[1][0])} has left")
        self._transport.node.drop("gone", message, source)

    def on_close(self, callback: Callable[[], None]) -> Optional[Cancel]:
        return None  # closed already


class TcpTransport:
    """Carries messages whose next hop is ``1#host:port``; registers itself with ``node``.

    Args:
        node: the node to serve.
        connect_timeout: seconds to open an outgoing connection (default 5).
        idle_timeout: close a connection that receives nothing for this many seconds
            (default ``None``: never).
        max_connections: keep at most this many accepted connections open at once; the excess
            is closed as soon as it is accepted, and logged (default ``None``: no cap). The
            StreamServer's handler only registers a connection and returns, so the cap is
            counted here rather than by a ``Pool`` of handler greenlets.
        dial_for_forward: whether a message forwarded from the network (a middle hop) may make
            this node open a new connection (docs/protocol.md, section 7): ``False`` (default:
            forwarded messages go only over connections already open, accepted or opened by the
            application, as Rust 2021 did), ``True`` (any ``host:port``), or an iterable of the
            ``host:port`` keys allowed. Local senders always connect on demand.

    Attributes:
        high_water: bytes queued on one connection before local senders wait and forwarding
            connections pause (1 MiB).
        stall_timeout: seconds a connection's output past ``high_water`` may go without a byte
            of it going out before a worker whose own mailbox is full stops waiting for it
            (1.0): the connection is then *stalled* (:attr:`Connection.stalled`), and such a
            worker's further sends to it raise :class:`~greenockam.errors.OutputFull` at once,
            without waiting, until its output moves again. A waiting worker looks once per
            interval: it finds the output stalled at most two intervals after it last moved, and
            one after its mailbox filled. Other local senders wait as long as it takes.
        max_grants: confined marks (each with the hop after it) one connection remembers that
            it may reply along (1024; the least recently granted is forgotten first).
        max_grant_hop: the longest hop, in characters, that a grant records after a mark (255);
            a return route with a longer one grants nothing, so a reply along it is confined.
        read_size: bytes asked of each ``recv`` (64 KiB).
        backlog: the listener's ``listen()`` backlog (1024).
    """

    high_water = 1 << 20
    stall_timeout = 1.0
    read_size = 65536
    backlog = 1024
    max_grants = 1024
    max_grant_hop = 255

    def __init__(
        self,
        node: Node,
        connect_timeout: float = 5.0,
        idle_timeout: Optional[float] = None,
        max_connections: Optional[int] = None,
        dial_for_forward: Union[bool, Iterable[str]] = False,
    ) -> None:
        self.node = node
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.dial_for_forward: Union[bool, FrozenSet[str]] = (
            dial_for_forward if isinstance(dial_for_forward, bool) else frozenset(dial_for_forward)
        )
        self._connections: Dict[str, Connection] = {}
        # ip:port of accepted connections that closed, oldest first: never dialed back.
        # ... and the random marks of those that closed, kept as _GoneMark endpoints meanwhile.
        self._gone: Dict[str, Optional[Address]] = {}
        self._gone_mark = _GoneMark(self)
        self._accepted: Set[Connection] = set()
        self._confined: Dict[Address, Connection] = {}  # mark -> open confined connection
        # Confinement's grants: holder's mark -> what it may reply along, least recent first;
        # and confined mark -> holder's mark -> how many of the holder's grants name it.
        self._grants: Dict[Address, Dict[_Grant, None]] = {}
        self._revocations = 0  # grants taken back so far: what an admission remembered is stale
        self._holders: Dict[Address, Dict[Address, int]] = {}
        self._servers: List[StreamServer] = []
        self._greenlets = Group()
        self._counters: Dict[str, int] = {}
        self._stopped = False
        self._idle_timer: Any = None
        # One bound method for every connection's read watcher (not one each: 48 bytes apiece).
        self._readable = node.readable
        if idle_timeout is not None:
            interval = max(0.01, min(idle_timeout / 4, 1.0))
            self._idle_timer = get_hub().loop.timer(interval, interval)
            self._idle_timer.start(self._close_idle)
        node.register_transport(TCP, self)

    def __repr__(self) -> str:
        return f"<TcpTransport {len(self._connections)} connections>"

    # -- listener ---------------------------------------------------------------------------

    def listen(
        self, address: str = "127.0.0.1:0", mark: str = "peer", confine: bool = False
    ) -> str:
        """Accept connections on ``host:port`` (port 0 picks a free one; the host defaults to
        127.0.0.1). Returns the bound address as ``host:port``.

        ``mark`` chooses how each accepted connection is named in the return routes of what it
        brings (docs/protocol.md, section 6): ``"peer"`` (default, as Rust 2021) prepends
        ``1#<ip:port>`` of the client, which anyone may also name as a next hop; ``"random"``
        prepends an unguessable local address (32 hex characters) that only a reply along that
        return route reaches, so no client can write into another's connection.

        ``confine`` (default False) confines the accepted connections (docs/protocol.md,
        section 6, "Confinement"): another connection may write to one only along a mark this
        transport handed to it, with the hop that followed the mark; anything else from the
        network is dropped and counted (``confined``). Local senders, and local endpoints that
        re-route with a :class:`~greenockam.transport.base.Vouched` source, are not confined.
        """
        if mark not in ("peer", "random"):
            raise ValueError(f"mark must be 'peer' or 'random', got {mark!r}")
        host, port = parse_host_port(address)
        accept = partial(self._accept if mark == "peer" else self._accept_marked, confine)
        server = StreamServer((host, port), accept, backlog=self.backlog)
        server.start()
        self._servers.append(server)
        bound = format_peer(server.socket.getsockname())
        logger.info("listening on {}", bound)
        return bound

    def _accept(self, confine: bool, gsock: Any, sockaddr: Any) -> None:
        """The StreamServer's handler for ``mark="peer"``: register the connection under
        ``ip:port`` and return (the connection needs no greenlet of its own)."""
        sock = self._admit(gsock, sockaddr)
        if sock is None:
            return
        peer = format_peer(sockaddr)
        conn = Connection(self, peer, accepted=True, confined=confine)
        previous = self._connections.get(peer)
        if previous is not None:
            previous.close("replaced by a new connection from the same address")
        self._connections[peer] = conn
        self._gone.pop(peer, None)
        self._start_accepted(conn, sock)

    def _accept_marked(self, confine: bool, gsock: Any, sockaddr: Any) -> None:
        """The StreamServer's handler for ``mark="random"``: the connection is reachable only
        through its random mark, a local endpoint."""
        sock = self._admit(gsock, sockaddr)
        if sock is None:
            return
        mark = Address(LOCAL, random_address())
        conn = Connection(self, format_peer(sockaddr), accepted=True, mark=mark, confined=confine)
        self.node.start_endpoint(conn.mark, _Mark(conn))
        self._start_accepted(conn, sock)

    def _admit(self, gsock: Any, sockaddr: Any) -> Optional[socket.socket]:
        """The accepted socket, or None if it was turned away (stopped, or at the cap)."""
        sock = socket.socket(gsock.family, gsock.type, gsock.proto, fileno=gsock.detach())
        if self._stopped or (
            self.max_connections is not None and len(self._accepted) >= self.max_connections
        ):
            peer = format_peer(sockaddr)
            self.node.faults.warning(
                "connection_refused",
                peer,
                "turned away a connection from {}: {} connections open",
                peer,
                len(self._accepted),
            )
            self._count("connections_refused")
            sock.close()
            return None
        return sock

    def _start_accepted(self, conn: Connection, sock: socket.socket) -> None:
        self._accepted.add(conn)
        if conn.confined:
            self._confined[conn.mark] = conn
        conn._attach(sock)
        self._count("connections_accepted")
        self.node.faults.info(
            "connection_accepted", conn.peer, "accepted a connection from {}", conn.peer
        )

    # -- connector pool ---------------------------------------------------------------------

    def connect(self, peer: str) -> Connection:
        """Open (or reuse) the connection keyed ``peer`` (``host:port``) and wait until it is
        open.

        Raises:
            ConnectFailed: refused, unreachable, or timed out.
        """
        self._gone.pop(peer, None)  # asked for by the application: dial it even if it was a client
        conn = self._connections.get(peer) or self._open(peer)
        conn.wait_ready(self.connect_timeout + 1)
        return conn

    def _open(self, peer: str) -> Connection:
        if self._stopped:
            raise NodeStopped("the TCP transport is stopped")
        conn = Connection(self, peer, accepted=False)
        self._connections[peer] = conn
        self._greenlets.spawn(self._connect, conn)
        return conn

    def _connect(self, conn: Connection) -> None:
        try:
            host, port = parse_host_port(conn.peer)
            gsock = gevent.socket.create_connection((host, port), self.connect_timeout)
            sock = socket.socket(gsock.family, gsock.type, gsock.proto, fileno=gsock.detach())
        except (OSError, ValueError) as exc:
            self._count("connect_failures")
            if conn._out:
                self.node.count_drop("connect_failed", len(conn._out))
            self.node.faults.warning(
                "connect_failed", conn.peer, "cannot connect to {}: {}", conn.peer, printable(exc)
            )
            conn.close(exc)
            return
        except GreenletExit:
            conn.close("stopped")
            return
        if conn._state == _CLOSED:  # closed (transport stopped) while connecting
            sock.close()
            return
        conn._attach(sock)
        self._count("connections_opened")
        logger.info("connected to {}", conn.peer)

    # -- sending (the node calls this for every type-1 hop) ---------------------------------

    def send(self, message: TransportMessage, source: Optional[Source]) -> None:
        """Pop the ``1#host:port`` hop and write the frame on that connection.

        For a local sender (``source is None``) this may wait for the connection to open and for
        a full output to drain, and raises :class:`ConnectFailed`,
        :class:`~greenockam.errors.LocalProtocolError` (body over 65535 bytes),
        :class:`ConnectionLost`, or :class:`OutputFull` (a worker whose own mailbox is full,
        to a :attr:`Connection.stalled` connection: see :attr:`stall_timeout`). A forwarded
        message never waits: failures are logged and counted, and a connection whose output is
        past :attr:`high_water` pauses ``source``.
        """
        peer = message[1][0][1]
        conn = self._connections.get(peer)
        if conn is None:
            if peer in self._gone:  # a client that connected to us and left: never dial it
                self._count("replies_to_gone")
                if source is None:
                    raise ConnectionLost(f"{printable(peer)} connected to this node and has left")
                self.node.drop("gone", message, source)
                return
            if source is not None and not self._may_dial(peer):
                self.node.drop("no_connection", message, source)
                return
        elif conn.confined and source is not None and not self._admits(conn, message, source):
            self.node.drop("confined", message, source)
            return
        frame = self._frame(message, source)  # after the drops above, before any connect
        if frame is None:
            return
        if conn is None:
            try:
                conn = self._open(peer)
            except NodeStopped:
                if source is None:
                    raise
                self.node.drop("stopped", message, source)
                return
        if self._confined and message[2] is not conn._granted:
            self._grant(conn, message[2])
        self.write(conn, frame, source)

    def _frame(self, message: TransportMessage, source: Optional[Source]) -> Optional[bytes]:
        """``message``'s frame without its first hop (docs/protocol.md, rule 3). A forwarded
        message's routes are encoded once per route pair and connection it came on (that
        connection's decoder's route cache; for a :class:`Vouched` source, its connection's:
        a hub's forwarder sends its one route with the return routes that connection brings).
        A body over 65535 bytes raises to a local sender (nothing is opened or written) and is
        dropped when forwarded (None)."""
        try:
            if source is None:
                return encode_frame(message, pop_first=True)
            # Any, not cast() (a call per message): mypy 1.13 cannot intersect Source and
            # Connection.
            came: Any = source.source if type(source) is Vouched else source
            cache = came._decoder.route_cache if type(came) is Connection else None
            return encode_frame(message, True, cache)  # a route pair it came with, encoded once
        except LocalProtocolError as exc:
            if source is None:
                raise
            self.node.drop("unsendable", message, exc)  # a body that grew too big to forward
            return None

    def write(self, conn: Connection, frame: bytes, source: Optional[Source]) -> None:
        """Write ``frame`` on ``conn``: the flow-control rules of :meth:`send` once the
        connection is chosen."""
        if source is None:
            if conn._state != _OPEN:
                conn.wait_ready(self.connect_timeout + 1)
            ctx = None
            if conn._out_bytes > self.high_water:
                ctx = self.node.current_context()
                if ctx is not None and ctx.mailbox_full and conn.stalled:
                    raise OutputFull(
                        f"the output to {conn.peer} is stalled ({conn._out_bytes} bytes wait, none "
                        f"has gone out for at least {self.stall_timeout} s) and the mailbox of "
                        f"{ctx.address} is full: waiting could deadlock, message refused"
                    )
            conn.write(frame)
            if conn._out_bytes > self.high_water:
                conn.wait_drained(self.high_water, ctx or self.node.current_context())
            return
        conn.write(frame, source)

    # -- confinement ------------------------------------------------------------------------

    def _admits(self, conn: Connection, message: TransportMessage, source: Source) -> bool:
        """Whether ``message``, forwarded from ``source``, may be written on the confined
        ``conn``: ``source`` is inside this node, is ``conn`` itself, or was granted the mark
        and hop that ``message``'s onward route starts with."""
        mark = source.mark
        if mark is None or mark == conn.mark:
            return True
        grants = self._grants.get(mark)
        return grants is not None and message[1][:2] in grants

    def _grant(self, conn: Connection, ret: Route) -> None:
        """``ret`` is the return route of a frame written on ``conn``: grant ``conn`` its first
        hop if that is a confined mark (but its own), with the hop after it. Only the first: that
        is the mark this node prepended as the message arrived (docs/protocol.md, rule 4); what
        follows it is what the sender claimed, and a sender could otherwise be granted any mark
        by writing it into a return route and routing the message back to itself.

        Callers skip the call when ``ret is conn._granted``: a decoder repeats its route
        objects, so that return route was granted last time and is still the newest grant."""
        conn._granted = ret
        holder = conn.mark
        if not ret or ret[0] not in self._confined or ret[0] == holder:
            return
        hop = ret[0]
        grant = ret[0:2]
        if len(grant) > 1 and len(grant[1][1]) > self.max_grant_hop:
            return
        grants = self._grants.get(holder)
        if grants is None:
            grants = self._grants[holder] = {}
        if grant in grants:
            del grants[grant]  # granted again: now the most recent
        else:
            if len(grants) >= self.max_grants:
                oldest = next(iter(grants))
                del grants[oldest]
                self._revocations += 1
                self._unhold(oldest[0], holder)
            counts = self._holders.get(hop)
            if counts is None:
                counts = self._holders[hop] = {}
            counts[holder] = counts.get(holder, 0) + 1
        grants[grant] = None

    def _unhold(self, mark: Address, holder: Address) -> None:
        """One grant of ``mark`` to ``holder`` is gone."""
        counts = self._holders.get(mark)
        if counts is None:
            return
        left = counts.get(holder, 0) - 1
        if left > 0:
            counts[holder] = left
        else:
            counts.pop(holder, None)
            if not counts:
                del self._holders[mark]

    def _forget_grants(self, mark: Address) -> None:
        """The connection marked ``mark`` closed: forget what it was granted, and every grant
        of its mark to another connection."""
        self._revocations += 1
        grants = self._grants.pop(mark, None)
        for grant in grants or ():
            counts = self._holders.get(grant[0])
            if counts is not None:
                counts.pop(mark, None)
                if not counts:
                    del self._holders[grant[0]]
        for holder in self._holders.pop(mark, ()):
            held = self._grants.get(holder)
            if held is not None:
                for grant in [g for g in held if g[0] == mark]:
                    del held[grant]

    def _may_dial(self, peer: str) -> bool:
        """The connect policy for a forwarded message's next hop that has no connection."""
        policy = self.dial_for_forward
        return policy if isinstance(policy, bool) else peer in policy

    def outlet(self, route: Route, return_route: Route) -> Optional[Outlet]:
        """A fast path for a local sender's next messages along ``route`` (its first hop is
        ours) with ``return_route``: a callable that takes an encoded payload, writes it and
        returns True, or returns False when the full :meth:`send` is needed (see
        :meth:`Connection.write_message`). None if the connection is not open.
        """
        conn = self._connections.get(route[0][1])
        if conn is None or conn._state != _OPEN:
            return None
        if self._confined and any(hop in self._confined for hop in return_route):
            return None  # every send must grant what it hands out: the full path does
        return partial(conn.write_message, encode_route(route[1:]) + encode_route(return_route))

    def on_close(self, address: Address, callback: Callable[[], None]) -> Optional[Cancel]:
        """Call ``callback`` (from the hub) when the connection keyed ``address``'s value
        closes; None if it is not open or opening. See
        :meth:`greenockam.transport.base.Transport.on_close`."""
        conn = self._connections.get(address[1])
        if conn is None or conn._state == _CLOSED:
            return None
        return conn.on_close(callback)

    def _close_idle(self) -> None:
        """Timer callback, in the hub: close connections that received nothing for too long."""
        assert self.idle_timeout is not None  # the timer runs only with an idle timeout
        deadline = get_hub().loop.now() - self.idle_timeout
        for conn in list(self._connections.values()):
            if conn._state == _OPEN and conn._last_read < deadline:
                conn.close(f"idle for {self.idle_timeout} s")

    # -- bookkeeping ------------------------------------------------------------------------

    def _forget(self, conn: Connection) -> None:
        if self._connections.get(conn.peer) is conn:
            del self._connections[conn.peer]
            if conn.accepted:
                self._remember_gone(conn.peer, None)
        self._accepted.discard(conn)
        if self._confined.get(conn.mark) is conn:
            del self._confined[conn.mark]
        self._forget_grants(conn.mark)
        if conn.mark[0] == LOCAL and self.node.endpoint(conn.mark) is not None:
            # A reply along the mark of a client that left fails as ConnectionLost, as with a
            # 1#peer mark, rather than as an unknown address.
            self.node.stop_endpoint(conn.mark)
            if not self._stopped:
                self.node.start_endpoint(conn.mark, self._gone_mark)
                self._remember_gone(conn.mark[1], conn.mark)

    def _remember_gone(self, key: str, mark: Optional[Address]) -> None:
        """Remember a client that left (its ``ip:port``, or its random mark), the oldest of
        :data:`_GONE_LIMIT` forgotten first."""
        if len(self._gone) >= _GONE_LIMIT:
            oldest = next(iter(self._gone))
            old_mark = self._gone.pop(oldest)
            if old_mark is not None and self.node.endpoint(old_mark) is self._gone_mark:
                self.node.stop_endpoint(old_mark)
        self._gone[key] = mark

    def _count(self, what: str, n: int = 1) -> None:
        self._counters[what] = self._counters.get(what, 0) + n

    @property
    def connections(self) -> Dict[str, Connection]:
        """Open and opening connections by key (a copy)."""
        return dict(self._connections)

    def statistics(self) -> Dict[str, Any]:
        """Plain numbers: ``connections`` open now, ``listeners``, ``confined_connections``
        open now, ``grants`` held by open connections (see :meth:`listen`), and counters
        (``connections_accepted``, ``connections_opened``, ``connect_failures``,
        ``connections_refused``, ``malformed_frames``, ``replies_to_gone``: messages to a client
        that connected and left, refused without dialing it). Messages this transport could not
        carry are counted with the node's (``Node.statistics()["dropped"]``: ``connect_failed``,
        ``unsendable``, ``confined``, ``connection_closed``)."""
        stats: Dict[str, Any] = {
            "connections": len(self._connections),
            "listeners": len(self._servers),
            "confined_connections": len(self._confined),
            "grants": sum(len(grants) for grants in self._grants.values()),
        }
        stats.update(self._counters)
        return stats

    # -- lifecycle --------------------------------------------------------------------------

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listeners and every connection (giving queued frames up to ``timeout``
        seconds to go out) and end every greenlet this transport started. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        for server in self._servers:
            server.close()
        with gevent.Timeout(timeout, False):
            for conn in list(self._connections.values()):
                if conn._out and conn._state == _OPEN:
                    conn.wait_drained(0)
        for conn in list(self._connections.values()) + list(self._accepted):
            conn.close("transport stopped")
        if self._idle_timer is not None:
            self._idle_timer.stop()
            self._idle_timer.close()
        for server in self._servers:
            server.stop(timeout=1)
        self._greenlets.kill(block=True, timeout=1)
