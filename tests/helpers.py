"""Helpers shared by the test modules: a reference encoder written from docs/protocol.md alone,
independent of greenockam, that the tests compare greenockam's bytes with (it is checked against
the Rust vectors in test_tcp.py), and socket helpers for raw test peers."""

import gc
import socket
import struct

import gevent
import gevent.socket
from gevent.event import Event

from greenockam import Node, Worker
from greenockam.transport.tcp import TcpTransport

WAIT = 10.0  # seconds: the default bound on a single socket wait


def ref_uint(value):
    """BARE uint: unsigned LEB128."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def ref_route(route):
    """A route from text addresses ("1#host:port", "worker") or (type, value) pairs."""
    out = ref_uint(len(route))
    for address in route:
        if isinstance(address, str):
            kind, sep, value = address.partition("#")
            if not sep:
                kind, value = "0", address
        else:
            kind, value = address
        data = value.encode("utf-8")
        out += bytes([int(kind)]) + ref_uint(len(data)) + data
    return out


def ref_body(onward, ret, payload, version=1):
    return bytes([version]) + ref_route(onward) + ref_route(ret) + ref_uint(len(payload)) + payload


def ref_frame(onward, ret, payload, version=1):
    body = ref_body(onward, ret, payload, version)
    return struct.pack(">H", len(body)) + body


def bare_str(text):
    """A str payload as the bare codec writes it."""
    data = text.encode("utf-8")
    return ref_uint(len(data)) + data


# --- raw peers ----------------------------------------------------------------------------------


def split_host_port(address):
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def recv_exact(sock, n, timeout=WAIT):
    """Exactly ``n`` bytes from a plain or gevent socket, or AssertionError on EOF."""
    sock.settimeout(timeout)
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise AssertionError(
                f"connection closed after {len(buf)} of {n} bytes: {bytes(buf[:200])!r}"
            )
        buf += chunk
    return bytes(buf)


def recv_frame(sock, timeout=WAIT):
    header = recv_exact(sock, 2, timeout)
    return header + recv_exact(sock, struct.unpack(">H", header)[0], timeout)


def assert_closed_by_peer(sock, timeout=WAIT):
    """The other side closed: recv sees EOF (or a reset), not a timeout and not data."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(1)
    except ConnectionResetError:
        return
    assert data == b"", f"expected the connection to be closed, got {data!r}"


# --- greenlets ----------------------------------------------------------------------------------


def live_greenlets():
    """Every gevent Greenlet alive now (the node's router and workers among them)."""
    return {o for o in gc.get_objects() if isinstance(o, gevent.Greenlet) and not o.dead}


# --- nodes and raw peers of one test -------------------------------------------------------------


def peer_name(sockaddr):
    """A socket address as Rust prints it, computed here independently of greenockam."""
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def wait_until(predicate, what, timeout=WAIT):
    """Poll a condition that has no event of its own, up to ``timeout`` seconds."""
    with gevent.Timeout(timeout, AssertionError("timed out waiting until " + what)):
        while not predicate():
            gevent.sleep(0.005)


class Echo(Worker):
    """Replies with the body; records every message it got in ``seen`` if given."""

    def __init__(self, seen=None):
        self.seen = seen

    def handle_message(self, ctx, msg):
        if self.seen is not None:
            self.seen.put(msg)
        ctx.reply(msg, msg.body)


class Net:
    """Nodes, transports and raw gevent sockets of one test, all closed at the end."""

    def __init__(self):
        self.nodes = []
        self.socks = []

    def node(self, codec=None, listen=False, echo=False, **tcp_options):
        node = Node(codec=codec)
        self.nodes.append(node)
        tcp = TcpTransport(node, **tcp_options)
        address = tcp.listen("127.0.0.1:0") if listen else None
        if echo:
            node.start_worker("echo_service", Echo())
        return node, tcp, address

    def listener(self, host="127.0.0.1"):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = gevent.socket.socket(family, socket.SOCK_STREAM)
        self.socks.append(sock)
        sock.bind((host, 0))
        sock.listen(64)
        return sock, peer_name(sock.getsockname())

    def accept(self, listener, timeout=WAIT):
        listener.settimeout(timeout)
        conn, _ = listener.accept()
        self.socks.append(conn)
        conn.settimeout(timeout)
        return conn

    def connect(self, address, timeout=WAIT):
        sock = gevent.socket.create_connection(split_host_port(address), timeout=timeout)
        self.socks.append(sock)
        sock.settimeout(timeout)
        return sock

    def refused_address(self):
        """A port bound but not listening: connecting to it is refused, and nobody can take it."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socks.append(sock)
        sock.bind(("127.0.0.1", 0))
        return peer_name(sock.getsockname())

    def close(self):
        for sock in self.socks:
            sock.close()
        for node in reversed(self.nodes):
            node.stop(timeout=2.0)


class LogLines:
    """A loguru sink that keeps the messages of one test and lets it wait for one."""

    def __init__(self):
        self.lines = []
        self._new = Event()

    def sink(self, message):
        self.lines.append(message.record["message"])
        self._new.set()

    def wait_for(self, *parts, timeout=WAIT):
        def found():
            return any(all(p in line for p in parts) for line in self.lines)

        failure = AssertionError(f"no log line with {parts!r} in {self.lines!r}")
        with gevent.Timeout(timeout, failure):
            while not found():
                self._new.clear()
                self._new.wait()
