"""The TCP transport (address type 1): a StreamServer listener and a connector pool.

The only module of greenockam that touches sockets. It follows PROTOCOL.md sections 1 and 4:

* Sending: the ``1#host:port`` hop is popped from the onward route and the frame is written on the
  connection keyed by that exact string, opened on demand and reused afterwards.
* Receiving: each connection's reader feeds a :class:`~greenockam.wire.FrameDecoder` that
  prepends ``1#<peer>`` to every return route, and hands the messages to the node's router. An
  accepted connection is keyed by the peer as Rust prints it (``127.0.0.1:54321``,
  ``[::1]:54321``), so replies go back over the same socket.

Writes are never made from the sending greenlet: frames are appended to the connection's output
list and one hub callback per loop iteration sends them all with a single ``send`` (coalescing,
and no frame can interleave with another). Only when the kernel buffer is full does an I/O
watcher wait for the socket to be writable. Sockets are plain non-blocking ``socket.socket``
objects driven by gevent watchers; nothing is monkey-patched.
"""

from __future__ import annotations

import errno
import socket
from typing import Any, Dict, List, Optional, Set, Tuple

import gevent
import gevent.socket
from gevent import Greenlet, GreenletExit, get_hub
from gevent.event import Event
from gevent.pool import Group, Pool
from gevent.server import StreamServer
from loguru import logger

from ..address import TCP, Address
from ..errors import ConnectFailed, ConnectionLost, NodeStopped, RemoteProtocolError
from ..node import Node, Source
from ..wire import FrameDecoder, TransportMessage, encode_frame

__all__ = ["TcpTransport", "Connection", "parse_host_port", "format_peer"]

_CONNECTING, _OPEN, _CLOSED = 0, 1, 2


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
    """One TCP connection, accepted or opened, with its reader greenlet and output list.

    Attributes:
        peer: the key of this connection (``host:port`` as asked, or the peer as seen).
        accepted: True if the remote side connected to us.
    """

    __slots__ = (
        "peer",
        "accepted",
        "_transport",
        "_sock",
        "_state",
        "_error",
        "_ready",
        "_reader",
        "_out",
        "_out_bytes",
        "_flush_pending",
        "_write_watcher",
        "_read_watcher",
        "_drained",
        "_paused_sources",
        "_resume",
        "_paused",
        "_address",
    )

    def __init__(self, transport: "TcpTransport", peer: str, accepted: bool) -> None:
        self.peer = peer
        self.accepted = accepted
        self._transport = transport
        self._sock: Optional[socket.socket] = None
        self._state = _CONNECTING
        self._error: Optional[BaseException] = None
        self._ready: Optional[Event] = None
        self._reader: Optional[Greenlet] = None
        self._out: List[bytes] = []
        self._out_bytes = 0
        self._flush_pending = False
        self._write_watcher: Any = None
        self._read_watcher: Any = None
        self._drained: Optional[Event] = None
        self._paused_sources: Set[Source] = set()
        self._resume: Optional[Event] = None
        self._paused = False
        self._address = Address(TCP, peer)

    def __repr__(self) -> str:
        state = ("connecting", "open", "closed")[self._state]
        return f"<Connection {self.peer} {state}{' accepted' if self.accepted else ''}>"

    # -- flow control (Source) --------------------------------------------------------------

    def pause(self) -> None:
        """Stop reading (the node's router calls this when a mailbox overflows)."""
        self._paused = True
        if self._resume is None:
            self._resume = Event()
        self._resume.clear()

    def resume(self) -> None:
        """Read again."""
        self._paused = False
        if self._resume is not None:
            self._resume.set()

    # -- setup ------------------------------------------------------------------------------

    def _attach(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        loop = get_hub().loop
        self._sock = sock
        self._read_watcher = loop.io(sock.fileno(), 1)
        self._write_watcher = loop.io(sock.fileno(), 2)
        self._state = _OPEN
        if self._ready is not None:
            self._ready.set()
        if self._out:
            self._schedule_flush()

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

    def write(self, frame: bytes) -> None:
        """Queue a frame; it goes out with the others queued in this loop iteration."""
        self._out.append(frame)
        self._out_bytes += len(frame)
        if not self._flush_pending and self._state == _OPEN:
            self._schedule_flush()

    def _schedule_flush(self) -> None:
        self._flush_pending = True
        get_hub().loop.run_callback(self._flush)

    def _flush(self) -> None:
        """Runs in the hub: one ``send`` of everything queued; never blocks."""
        self._flush_pending = False
        out = self._out
        if not out or self._state != _OPEN or self._write_watcher.active:
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
            if self._drained is not None or self._paused_sources:
                self._on_drained()
        else:
            # The kernel buffer is full: keep the rest and wait until the socket is writable.
            out[:] = [data[sent:]]
            self._out_bytes = len(data) - sent
            self._write_watcher.start(self._on_writable)

    def _on_writable(self) -> None:
        self._write_watcher.stop()
        self._flush()

    def _on_drained(self) -> None:
        if self._drained is not None:
            self._drained.set()
        paused, self._paused_sources = self._paused_sources, set()
        for source in paused:
            source.resume()

    def wait_drained(self, high_water: int) -> None:
        """Block the calling greenlet while more than ``high_water`` bytes wait to go out."""
        while self._out_bytes > high_water and self._state == _OPEN:
            if self._drained is None:
                self._drained = Event()
            self._drained.clear()
            self._drained.wait()
        if self._state == _CLOSED:
            raise ConnectionLost(f"connection to {self.peer} closed: {self._error or 'closed'}")

    # -- reading ----------------------------------------------------------------------------

    def _read_loop(self, idle_timeout: Optional[float]) -> None:
        """The reader greenlet: recv, decode, hand to the router, until EOF or an error."""
        sock = self._sock
        assert sock is not None
        recv = sock.recv
        hub = get_hub()
        watcher = self._read_watcher
        decoder = FrameDecoder(self._address)
        feed = decoder.feed
        deliver = self._transport.node.deliver
        read_size = self._transport.read_size
        reason: Any = None
        try:
            while True:
                if self._paused:
                    self._resume.wait()  # type: ignore[union-attr]
                try:
                    data = recv(read_size)
                except BlockingIOError:
                    if idle_timeout is None:
                        hub.wait(watcher)
                    else:
                        with gevent.Timeout(idle_timeout, False):
                            hub.wait(watcher)
                            continue
                        reason = f"idle for {idle_timeout} s"
                        break
                    continue
                if not data:
                    reason = "closed by peer"
                    break
                try:
                    messages = feed(data)
                except RemoteProtocolError as exc:
                    if exc.messages:  # type: ignore[attr-defined]
                        deliver(exc.messages, self)  # type: ignore[attr-defined]
                    logger.warning("malformed frame from {}: {}; closing the connection", self.peer, exc)
                    self._transport._count("malformed_frames")
                    reason = exc
                    break
                if messages:
                    deliver(messages, self)
        except OSError as exc:
            reason = exc
        except GreenletExit:
            reason = "stopped"
        finally:
            self.close(reason, from_reader=True)

    # -- closing ----------------------------------------------------------------------------

    def close(self, reason: Any = None, from_reader: bool = False) -> None:
        """Close the socket, forget the connection, end its reader. Safe to call twice."""
        if self._state == _CLOSED:
            return
        was_open = self._state == _OPEN
        self._state = _CLOSED
        self._error = reason if isinstance(reason, BaseException) else None
        self._transport._forget(self)
        if self._out:
            logger.warning(
                "connection {} closed with {} bytes unsent", self.peer, self._out_bytes
            )
            self._out.clear()
            self._out_bytes = 0
        if self._write_watcher is not None:
            self._write_watcher.stop()
            self._write_watcher.close()
            self._read_watcher.close()
        if self._sock is not None:
            self._sock.close()
        for event in (self._ready, self._drained, self._resume):
            if event is not None:
                event.set()
        self._on_drained()
        reader = self._reader
        if not from_reader and reader is not None and reader is not gevent.getcurrent():
            reader.kill(block=False)
        if was_open:
            logger.info("connection {} closed ({})", self.peer, reason or "closed")


class TcpTransport:
    """Carries messages whose next hop is ``1#host:port``; registers itself with ``node``.

    Args:
        node: the node to serve.
        connect_timeout: seconds to open an outgoing connection (default 5).
        idle_timeout: close a connection that receives nothing for this many seconds
            (default ``None``: never).
        max_connections: accept at most this many connections at once per listener; the excess
            is closed at once and logged (default ``None``: no cap).

    Attributes:
        high_water: bytes queued on one connection before local senders wait and forwarding
            connections pause (1 MiB).
        read_size: bytes asked of each ``recv`` (64 KiB).
        backlog: the listener's ``listen()`` backlog (1024).
    """

    high_water = 1 << 20
    read_size = 65536
    backlog = 1024

    def __init__(
        self,
        node: Node,
        connect_timeout: float = 5.0,
        idle_timeout: Optional[float] = None,
        max_connections: Optional[int] = None,
    ) -> None:
        self.node = node
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._connections: Dict[str, Connection] = {}
        self._accepted: Set[Connection] = set()
        self._servers: List[StreamServer] = []
        self._greenlets = Group()
        self._counters: Dict[str, int] = {}
        self._stopped = False
        node.register_transport(TCP, self)

    def __repr__(self) -> str:
        return f"<TcpTransport {len(self._connections)} connections>"

    # -- listener ---------------------------------------------------------------------------

    def listen(self, address: str = "127.0.0.1:0") -> str:
        """Accept connections on ``host:port`` (port 0 picks a free one; the host defaults to
        127.0.0.1). Returns the bound address as ``host:port``.
        """
        host, port = parse_host_port(address)
        pool = Pool(self.max_connections + 1) if self.max_connections else None
        server = StreamServer(
            (host, port), self._accept, spawn=pool or "default", backlog=self.backlog
        )
        server.start()
        self._servers.append(server)
        bound = format_peer(server.socket.getsockname())
        logger.info("listening on {}", bound)
        return bound

    def _accept(self, gsock: Any, sockaddr: Any) -> None:
        """Runs in the StreamServer's greenlet for the connection, which becomes its reader."""
        sock = socket.socket(gsock.family, gsock.type, gsock.proto, fileno=gsock.detach())
        peer = format_peer(sockaddr)
        if self._stopped or (
            self.max_connections is not None and len(self._accepted) >= self.max_connections
        ):
            logger.warning("turned away a connection from {}: {} connections open", peer, len(self._accepted))
            self._count("connections_refused")
            sock.close()
            return
        conn = Connection(self, peer, accepted=True)
        conn._reader = gevent.getcurrent()  # type: ignore[assignment]
        previous = self._connections.get(peer)
        if previous is not None:
            previous.close("replaced by a new connection from the same address")
        self._connections[peer] = conn
        self._accepted.add(conn)
        conn._attach(sock)
        self._count("connections_accepted")
        logger.info("accepted a connection from {}", peer)
        conn._read_loop(self.idle_timeout)

    # -- connector pool ---------------------------------------------------------------------

    def connect(self, peer: str) -> Connection:
        """Open (or reuse) the connection keyed ``peer`` (``host:port``) and wait until it is
        open.

        Raises:
            ConnectFailed: refused, unreachable, or timed out.
        """
        conn = self._connections.get(peer) or self._open(peer)
        conn.wait_ready(self.connect_timeout + 1)
        return conn

    def _open(self, peer: str) -> Connection:
        if self._stopped:
            raise NodeStopped("the TCP transport is stopped")
        conn = Connection(self, peer, accepted=False)
        self._connections[peer] = conn
        conn._reader = self._greenlets.spawn(self._connect_and_read, conn)
        return conn

    def _connect_and_read(self, conn: Connection) -> None:
        try:
            host, port = parse_host_port(conn.peer)
            gsock = gevent.socket.create_connection((host, port), self.connect_timeout)
            sock = socket.socket(gsock.family, gsock.type, gsock.proto, fileno=gsock.detach())
        except (OSError, ValueError) as exc:
            self._count("connect_failures")
            if conn._out:
                self._count_dropped(len(conn._out))
            logger.warning("cannot connect to {}: {}", conn.peer, exc)
            conn.close(exc, from_reader=True)
            return
        except GreenletExit:
            conn.close("stopped", from_reader=True)
            return
        conn._attach(sock)
        self._count("connections_opened")
        logger.info("connected to {}", conn.peer)
        conn._read_loop(self.idle_timeout)

    # -- sending (the node calls this for every type-1 hop) ---------------------------------

    def send(self, message: TransportMessage, source: Optional[Source]) -> None:
        """Pop the ``1#host:port`` hop and write the frame on that connection.

        For a local sender (``source is None``) this may wait for the connection to open and for
        a full output to drain, and raises :class:`ConnectFailed`,
        :class:`~greenockam.errors.LocalProtocolError` (body over 65535 bytes) or
        :class:`ConnectionLost`. A forwarded message never waits: failures are logged and
        counted, and a connection whose output is past :attr:`high_water` pauses ``source``.
        """
        peer = message[1][0][1]
        conn = self._connections.get(peer)
        if source is None:
            frame = encode_frame(message, pop_first=True)
            if conn is None:
                conn = self._open(peer)
            if conn._state != _OPEN:
                conn.wait_ready(self.connect_timeout + 1)
            conn.write(frame)
            if conn._out_bytes > self.high_water:
                conn.wait_drained(self.high_water)
            return
        try:
            frame = encode_frame(message, pop_first=True)
            if conn is None:
                conn = self._open(peer)
        except Exception as exc:  # a body too big to forward, or the transport is stopped
            self._count_dropped(1)
            logger.warning("cannot forward a message from {} to {}: {}", source.peer, peer, exc)
            return
        conn.write(frame)
        if conn._out_bytes > self.high_water and source not in conn._paused_sources:
            conn._paused_sources.add(source)
            source.pause()

    # -- bookkeeping ------------------------------------------------------------------------

    def _forget(self, conn: Connection) -> None:
        if self._connections.get(conn.peer) is conn:
            del self._connections[conn.peer]
        self._accepted.discard(conn)

    def _count(self, what: str, n: int = 1) -> None:
        self._counters[what] = self._counters.get(what, 0) + n

    def _count_dropped(self, n: int) -> None:
        self._count("messages_dropped", n)

    @property
    def connections(self) -> Dict[str, Connection]:
        """Open and opening connections by key (a copy)."""
        return dict(self._connections)

    def statistics(self) -> Dict[str, Any]:
        """Plain numbers: ``connections`` open now, ``listeners``, and counters
        (``connections_accepted``, ``connections_opened``, ``connect_failures``,
        ``connections_refused``, ``malformed_frames``, ``messages_dropped``)."""
        stats: Dict[str, Any] = {"connections": len(self._connections), "listeners": len(self._servers)}
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
        connections = list(self._connections.values()) + list(self._accepted)
        for conn in connections:
            conn.close("transport stopped")
        gevent.joinall([c._reader for c in connections if c._reader is not None], timeout=1)
        for server in self._servers:
            server.stop(timeout=1)
        self._greenlets.kill(block=True, timeout=1)
