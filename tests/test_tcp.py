"""The TCP transport (docs/protocol.md sections 1, 3 and 4) with real sockets and real greenlets.

Every greenockam node here runs in this process on 127.0.0.1 with port 0. The "raw peers" that
check the exact bytes on the wire are written with ``gevent.socket`` (so they yield to the nodes
under test) and a small reference encoder written from the protocol text, which is itself checked
against tests/vectors.json (captured from real 2021 Rust Ockam nodes). Nothing is mocked or
monkey-patched, and every wait has a short explicit timeout.
"""

import json
import os
import re
import socket
import struct
from typing import List

import gevent
import gevent.socket
import pytest
from gevent.event import Event
from gevent.queue import Queue

from greenockam import (
    ConnectFailed,
    GreenockamError,
    LocalProtocolError,
    Node,
    NodeStopped,
    Route,
)
from greenockam.transport.tcp import TcpTransport
from helpers import (
    Echo,
    LogCapture,
    assert_closed_by_peer,
    bare_str,
    live_greenlets,
    peer_name,
    poll_until,
    recv_exact,
    recv_frame,
    ref_frame,
    ref_uint,
    split_host_port,
)

pytestmark = pytest.mark.timeout(60)

T = 10.0  # seconds: the bound on any single network wait in these tests
HELLO = "Hello you over there!"

_VECTORS_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors.json")
with open(_VECTORS_PATH, encoding="utf-8") as _f:
    VECTORS = json.load(_f)
FRAMES = {e["name"]: bytes.fromhex(e["frame_hex"]) for e in VECTORS["frames"]}
INVALID_BODIES = VECTORS["invalid_bodies"]
CODECS = ["bare", "bincode"]


def _has_ipv6_loopback():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        s.bind(("::1", 0))
        return True
    except OSError:
        return False
    finally:
        s.close()


HAS_IPV6 = _has_ipv6_loopback()


def retarget(frame, old, new):
    """``frame`` with the address value ``old`` (and its length) replaced by ``new``."""
    body = frame[2:]
    old_raw = ref_uint(len(old)) + old.encode()
    assert body.count(old_raw) == 1, (old, body)
    body = body.replace(old_raw, ref_uint(len(new)) + new.encode())
    return struct.pack(">H", len(body)) + body


def test_the_reference_encoder_of_these_tests_reproduces_the_vectors():
    for entry in VECTORS["frames"]:
        payload = bytes.fromhex(entry["payload_hex"])
        assert ref_frame(entry["onward"], entry["return"], payload) == FRAMES[entry["name"]]
    assert retarget(FRAMES["multihop_b_to_c"], "127.0.0.1:53000", "127.0.0.1:53000") == FRAMES[
        "multihop_b_to_c"
    ]


# --- raw peers and helpers ----------------------------------------------------------------------




@pytest.fixture
def warnings_log():
    """greenockam's WARNING-and-above log lines during the test."""
    capture = LogCapture("WARNING")
    try:
        yield capture
    finally:
        capture.close()


# --- exact bytes on the wire --------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_a_node_answers_the_captured_rust_request_with_the_captured_rust_reply(net, codec):
    _, tcp, address = net.node(codec=codec, listen=True, echo=True)
    peer = net.connect(address)

    expected = FRAMES["echo_reply_" + codec]
    for _ in range(2):  # the first reply takes the full send path, the second the fast path
        peer.sendall(FRAMES["echo_request_" + codec])
        assert recv_exact(peer, len(expected)) == expected
    assert list(tcp.connections) == [peer_name(peer.getsockname())]


@pytest.mark.parametrize("codec", CODECS)
def test_a_node_sends_the_captured_rust_request_and_decodes_the_captured_reply(net, codec):
    listener, address = net.listener()
    node, _, _ = net.node(codec=codec)

    node.send(["1#" + address, "echo_service"], HELLO)
    peer = net.accept(listener)
    expected = FRAMES["echo_request_" + codec]
    assert recv_exact(peer, len(expected)) == expected
    node.send(["1#" + address, "echo_service"], HELLO)  # again, through the fast path
    assert recv_exact(peer, len(expected)) == expected

    peer.sendall(FRAMES["echo_reply_" + codec])
    msg = node.receive(timeout=T)
    assert msg.body == HELLO
    assert msg.onward_route == Route(["0#app"])
    assert msg.return_route == Route(["1#" + address, "0#echo_service"])


def test_frames_arriving_a_byte_at_a_time_are_reassembled(net):
    _, _, address = net.node(listen=True, echo=True)
    peer = net.connect(address)
    peer.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    for byte in FRAMES["echo_request_bare"] * 2:
        peer.sendall(bytes([byte]))
        gevent.sleep(0.0005)  # pacing only (so the node reads partial frames), not synchronisation

    expected = FRAMES["echo_reply_bare"] * 2
    assert recv_exact(peer, len(expected)) == expected


# --- routing: the prepended peer and multi-hop --------------------------------------------------


def test_the_receiving_node_prepends_the_peer_as_seen_on_the_socket_and_replies_over_it(net):
    node, tcp, address = net.node(listen=True)
    seen = Queue()
    node.start_worker("echoer", Echo(seen))
    peer = net.connect(address)  # plays B of the multi-hop trace, talking to C
    me = peer_name(peer.getsockname())

    peer.sendall(FRAMES["multihop_b_to_c"])

    msg = seen.get(timeout=T)
    assert msg.onward_route == Route(["0#echoer"])
    assert msg.return_route == Route(["1#" + me, "1#127.0.0.1:53000", "0#app"])
    expected = FRAMES["multihop_c_to_b"]  # C's TCP popped 1#<peer>; nothing else changed
    assert recv_exact(peer, len(expected)) == expected
    assert tcp.connections[me].accepted


def test_a_message_crosses_three_nodes_and_the_reply_retraces_the_path(net):
    a, a_tcp, _ = net.node()
    b, b_tcp, b_address = net.node(listen=True, dial_for_forward=True)
    c, c_tcp, c_address = net.node(listen=True)
    seen = Queue()
    c.start_worker("echoer", Echo(seen))

    a.send(["1#" + b_address, "1#" + c_address, "echoer"], "Hello Ockam!")
    reply = a.receive(timeout=T)

    assert reply.body == "Hello Ockam!"
    assert reply.onward_route == Route(["0#app"])
    assert reply.return_route == Route(["1#" + b_address, "1#" + c_address, "0#echoer"])
    # B holds the connection it opened to C (keyed as asked) and the one A opened (keyed by A's
    # ephemeral port); C only accepted B's.
    a_as_b_sees = [k for k, conn in b_tcp.connections.items() if conn.accepted]
    assert len(a_as_b_sees) == 1 and a_as_b_sees[0] != b_address
    assert not b_tcp.connections[c_address].accepted
    assert set(b_tcp.connections) == {c_address, a_as_b_sees[0]}
    (b_as_c_sees,) = c_tcp.connections
    assert c_tcp.connections[b_as_c_sees].accepted
    msg = seen.get(timeout=T)
    assert msg.return_route == Route(["1#" + b_as_c_sees, "1#" + a_as_b_sees[0], "0#app"])
    assert list(a_tcp.connections) == [b_address]

    # A second round trip reuses every connection.
    a.send(["1#" + b_address, "1#" + c_address, "echoer"], "again")
    assert a.receive(timeout=T).body == "again"
    for tcp, opened, accepted in ((a_tcp, 1, None), (b_tcp, 1, 1), (c_tcp, None, 1)):
        stats = tcp.statistics()
        assert stats.get("connections_opened") == opened
        assert stats.get("connections_accepted") == accepted


def test_an_intermediate_node_only_pops_its_hop_and_prepends_the_previous_one_byte_for_byte(net):
    # raw A -> node B -> raw C and back, each link checked against the multihop vectors with the
    # real addresses put in place of the ports of the trace.
    _, b_tcp, b_address = net.node(listen=True, dial_for_forward=True)
    c_listener, c_address = net.listener()
    a = net.connect(b_address)
    a_as_b_sees = peer_name(a.getsockname())

    a.sendall(retarget(FRAMES["multihop_a_to_b"], "127.0.0.1:4000", c_address))
    c = net.accept(c_listener)
    expected = retarget(FRAMES["multihop_b_to_c"], "127.0.0.1:53000", a_as_b_sees)
    assert recv_exact(c, len(expected)) == expected

    c.sendall(retarget(FRAMES["multihop_c_to_b"], "127.0.0.1:53000", a_as_b_sees))
    expected = retarget(FRAMES["multihop_b_to_a"], "127.0.0.1:4000", c_address)
    assert recv_exact(a, len(expected)) == expected

    assert b_tcp.statistics().get("connections_opened") == 1
    assert b_tcp.statistics().get("connections_accepted") == 1
    assert set(b_tcp.connections) == {a_as_b_sees, c_address}


# --- the connector pool -------------------------------------------------------------------------


def test_a_second_message_to_the_same_peer_reuses_the_connection(net):
    _, server_tcp, address = net.node(listen=True, echo=True)
    node, tcp, _ = net.node()

    for body in ("one", "two"):
        node.send(["1#" + address, "echo_service"], body)
        assert node.receive(timeout=T).body == body

    assert server_tcp.statistics()["connections_accepted"] == 1
    assert tcp.statistics()["connections_opened"] == 1
    assert list(tcp.connections) == [address]


def test_concurrent_first_sends_to_one_peer_open_exactly_one_connection(net):
    _, server_tcp, address = net.node(listen=True, echo=True)
    node, tcp, _ = net.node()

    route = ["1#" + address, "echo_service"]
    senders = [gevent.spawn(node.send, route, f"message {i}") for i in range(20)]
    gevent.joinall(senders, timeout=T)
    assert [g.exception for g in senders] == [None] * 20
    assert all(g.successful() for g in senders)
    bodies = sorted(node.receive(timeout=T).body for _ in range(20))

    assert bodies == sorted(f"message {i}" for i in range(20))
    assert server_tcp.statistics()["connections_accepted"] == 1
    assert tcp.statistics()["connections_opened"] == 1


def test_an_explicit_connect_opens_the_connection_that_later_sends_use(net):
    _, server_tcp, address = net.node(listen=True, echo=True)
    node, tcp, _ = net.node()

    conn = tcp.connect(address)
    assert conn.peer == address and not conn.accepted
    assert tcp.connections == {address: conn}
    assert tcp.connect(address) is conn

    node.send(["1#" + address, "echo_service"], HELLO)
    assert node.receive(timeout=T).body == HELLO
    assert tcp.connections == {address: conn}
    assert tcp.statistics()["connections_opened"] == 1
    assert server_tcp.statistics()["connections_accepted"] == 1


def test_a_host_name_address_connects_and_keys_the_connection_by_that_name(net):
    _, _, address = net.node(listen=True, echo=True)
    node, tcp, _ = net.node()
    by_name = f"localhost:{split_host_port(address)[1]}"

    node.send(["1#" + by_name, "echo_service"], HELLO)
    reply = node.receive(timeout=T)

    assert reply.body == HELLO
    assert reply.return_route == Route(["1#" + by_name, "0#echo_service"])
    assert list(tcp.connections) == [by_name]


@pytest.mark.skipif(not HAS_IPV6, reason="this machine has no IPv6 loopback (::1)")
def test_ipv6_addresses_are_bracketed_as_rust_prints_them_both_ways(net):
    server, server_tcp, _ = net.node()
    server.start_worker("echo_service", Echo())
    address = server_tcp.listen("[::1]:0")
    assert re.match(r"^\[::1\]:[1-9][0-9]*$", address), address

    node, tcp, _ = net.node()
    node.send(["1#" + address, "echo_service"], HELLO)
    reply = node.receive(timeout=T)
    assert reply.return_route == Route(["1#" + address, "0#echo_service"])
    assert list(tcp.connections) == [address]

    raw = net.connect(address)
    raw_key = peer_name(raw.getsockname())
    assert raw_key.startswith("[::1]:")
    raw.sendall(FRAMES["echo_request_bare"])
    assert recv_exact(raw, len(FRAMES["echo_reply_bare"])) == FRAMES["echo_reply_bare"]
    assert raw_key in server_tcp.connections
    accepted = [k for k, conn in server_tcp.connections.items() if conn.accepted]
    assert len(accepted) == 2
    assert all(re.match(r"^\[::1\]:[1-9][0-9]*$", k) for k in accepted), accepted


def test_the_reply_goes_back_over_the_accepted_connection(net):
    _, server_tcp, address = net.node(listen=True, echo=True)
    node, tcp, _ = net.node()
    raw = net.connect(address)
    raw_key = peer_name(raw.getsockname())

    node.send(["1#" + address, "echo_service"], HELLO)
    assert node.receive(timeout=T).body == HELLO
    raw.sendall(FRAMES["echo_request_bare"])
    assert recv_exact(raw, len(FRAMES["echo_reply_bare"])) == FRAMES["echo_reply_bare"]

    stats = server_tcp.statistics()
    assert "connections_opened" not in stats
    assert stats["connections_accepted"] == 2
    assert raw_key in server_tcp.connections
    assert all(conn.accepted for conn in server_tcp.connections.values())
    assert address not in server_tcp.connections
    assert tcp.statistics()["connections_opened"] == 1


# --- writes -------------------------------------------------------------------------------------


def test_a_body_over_65535_bytes_is_refused_before_anything_is_written(net):
    listener, address = net.listener()
    node, tcp, _ = net.node()
    route = ["1#" + address, "echo_service"]

    def frame_of(text):
        return ref_frame(["0#echo_service"], ["0#app"], bare_str(text))

    n = 65000
    while len(frame_of("x" * n)) - 2 < 65535:
        n += 1
    assert len(frame_of("x" * n)) - 2 == 65535

    with pytest.raises(LocalProtocolError):  # to a peer not connected yet: nothing is opened
        node.send(route, "x" * (n + 1))
    assert tcp.connections == {}

    node.send(route, HELLO)
    peer = net.accept(listener)
    assert recv_exact(peer, len(FRAMES["echo_request_bare"])) == FRAMES["echo_request_bare"]
    conn = tcp.connections[address]

    node.send(route, "x" * n)  # exactly the largest body
    frame = recv_frame(peer)
    assert frame[:2] == b"\xff\xff" and frame == frame_of("x" * n)

    with pytest.raises(LocalProtocolError):
        node.send(route, "x" * (n + 1))
    with pytest.raises(LocalProtocolError):
        node.send(route, "x" * 100000)

    node.send(route, HELLO)  # the connection still works, and nothing was written in between
    assert recv_exact(peer, len(FRAMES["echo_request_bare"])) == FRAMES["echo_request_bare"]
    assert tcp.connections == {address: conn}


def test_ten_thousand_frames_queued_in_one_go_arrive_intact_and_in_order(net):
    listener, address = net.listener()
    node, tcp, _ = net.node()
    route = ["1#" + address, "sink"]
    node.send(route, "first")
    peer = net.accept(listener)
    assert recv_frame(peer) == ref_frame(["0#sink"], ["0#app"], bare_str("first"))

    others_ran: List[bool] = []
    gevent.spawn(others_ran.append, True)
    for i in range(10000):
        node.send(route, f"message {i}")
    assert others_ran == [], "sending on an open connection should not yield"

    expected = b"".join(
        ref_frame(["0#sink"], ["0#app"], bare_str(f"message {i}")) for i in range(10000)
    )
    assert recv_exact(peer, len(expected)) == expected


# --- failures -----------------------------------------------------------------------------------


def test_a_refused_connect_raises_connect_failed_to_a_local_sender(net):
    address = net.refused_address()
    node, tcp, _ = net.node()

    with pytest.raises(ConnectFailed) as info:
        node.send(["1#" + address, "echo_service"], HELLO)
    assert address in str(info.value)
    with pytest.raises(ConnectFailed):
        tcp.connect(address)

    assert tcp.connections == {}
    assert tcp.statistics()["connect_failures"] == 2


def test_a_connection_the_peer_drops_is_forgotten_and_the_next_message_reconnects(net):
    listener, address = net.listener()
    node, tcp, _ = net.node()
    route = ["1#" + address, "echo_service"]

    node.send(route, HELLO)
    first = net.accept(listener)
    assert recv_exact(first, len(FRAMES["echo_request_bare"])) == FRAMES["echo_request_bare"]
    first.close()
    poll_until(lambda: address not in tcp.connections, "the dropped connection is forgotten")

    node.send(route, HELLO)
    second = net.accept(listener)
    assert recv_exact(second, len(FRAMES["echo_request_bare"])) == FRAMES["echo_request_bare"]
    assert tcp.statistics()["connections_opened"] == 2
    assert address in tcp.connections


def test_an_accepted_connection_the_client_closes_is_forgotten(net):
    _, tcp, address = net.node(listen=True, echo=True)
    raw = net.connect(address)
    key = peer_name(raw.getsockname())
    raw.sendall(FRAMES["echo_request_bare"])
    assert recv_exact(raw, len(FRAMES["echo_reply_bare"])) == FRAMES["echo_reply_bare"]
    assert key in tcp.connections

    raw.close()
    poll_until(lambda: key not in tcp.connections, "the closed connection is forgotten")
    assert tcp.statistics()["connections"] == 0


@pytest.mark.parametrize("bad", INVALID_BODIES, ids=[e["name"] for e in INVALID_BODIES])
def test_a_malformed_frame_closes_only_its_connection_and_logs_the_peer(net, warnings_log, bad):
    _, tcp, address = net.node(listen=True, echo=True)
    good = net.connect(address)
    evil = net.connect(address)
    evil_key = peer_name(evil.getsockname())
    request, reply = FRAMES["echo_request_bare"], FRAMES["echo_reply_bare"]
    good.sendall(request)
    assert recv_exact(good, len(reply)) == reply

    body = bytes.fromhex(bad["body_hex"])
    evil.sendall(struct.pack(">H", len(body)) + body)

    assert_closed_by_peer(evil)
    warnings_log.wait_for("malformed", evil_key)
    assert evil_key not in tcp.connections
    assert tcp.statistics()["malformed_frames"] == 1
    good.sendall(request)
    assert recv_exact(good, len(reply)) == reply
    assert peer_name(good.getsockname()) in tcp.connections


def test_a_forwarded_message_to_an_unreachable_hop_is_logged_and_dropped(net, warnings_log):
    node, tcp, address = net.node(listen=True, echo=True, dial_for_forward=True)
    unreachable = net.refused_address()
    peer = net.connect(address)

    peer.sendall(ref_frame(["1#" + unreachable, "0#echo_service"], ["0#app"], bare_str(HELLO)))

    warnings_log.wait_for(unreachable)
    poll_until(
        lambda: node.statistics()["dropped"].get("connect_failed") == 1, "the drop is counted"
    )
    assert tcp.statistics()["connect_failures"] == 1
    assert unreachable not in tcp.connections
    # The node keeps serving, on the same connection.
    peer.sendall(FRAMES["echo_request_bare"])
    assert recv_exact(peer, len(FRAMES["echo_reply_bare"])) == FRAMES["echo_reply_bare"]


# --- lifecycle ----------------------------------------------------------------------------------


def stuck_address(net):
    """An address whose connect never completes: a listener with a full accept queue (Linux
    drops the SYN, so the connecting side keeps retrying)."""
    sock = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    net.socks.append(sock)
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)
    address = peer_name(sock.getsockname())
    net.connect(address)  # fills the queue; nobody ever accepts it
    return address


def test_stop_closes_the_listener_every_connection_and_ends_every_greenlet_it_started(net):
    node = Node()
    net.nodes.append(node)
    node.start_worker("echo_service", Echo())
    before = live_greenlets()

    tcp = TcpTransport(node, dial_for_forward=True)
    address = tcp.listen("127.0.0.1:0")
    clients = [net.connect(address) for _ in range(3)]
    for raw in clients:
        raw.sendall(FRAMES["echo_request_bare"])
        assert recv_exact(raw, len(FRAMES["echo_reply_bare"])) == FRAMES["echo_reply_bare"]
    listener, other = net.listener()
    node.send(["1#" + other, "sink"], "out")  # one connection this node opened itself
    outgoing = net.accept(listener)
    recv_frame(outgoing)
    # ... one it is still opening, for a forwarded message and for a local sender waiting on it
    stuck = stuck_address(net)
    clients[0].sendall(ref_frame(["1#" + stuck, "0#echo_service"], ["0#app"], bare_str("fwd")))
    poll_until(lambda: stuck in tcp.connections, "the forward starts connecting")

    about_to_send = Event()

    def send_waiting_for_the_connect():
        about_to_send.set()  # no switch between this and the send below, which blocks
        try:
            node.send(["1#" + stuck, "sink"], "waits for the connect")
        except GreenockamError as exc:
            return exc

    waiting = gevent.spawn(send_waiting_for_the_connect)
    assert about_to_send.wait(T)  # runs again only once the sender is blocked in its send
    assert not waiting.dead
    assert len(tcp.connections) == 5

    tcp.stop()

    assert waiting.dead and isinstance(waiting.value, ConnectFailed)
    assert live_greenlets() - before == set()  # whatever greenlets it started have ended
    assert tcp.connections == {}
    for raw in clients + [outgoing]:
        assert_closed_by_peer(raw)
    with pytest.raises(ConnectionRefusedError):
        gevent.socket.create_connection(split_host_port(address), timeout=T).close()
    with pytest.raises(NodeStopped):
        node.send(["1#" + other, "sink"], "after stop")
    tcp.stop()  # idempotent


@pytest.mark.parametrize("spec", [":0", None])
def test_the_default_bind_address_is_the_ipv4_loopback(net, spec):
    node, tcp, _ = net.node(echo=True)
    address = tcp.listen() if spec is None else tcp.listen(spec)

    host, port = split_host_port(address)
    assert host == "127.0.0.1" and port > 0
    raw = net.connect(f"127.0.0.1:{port}")
    raw.sendall(FRAMES["echo_request_bare"])
    assert recv_exact(raw, len(FRAMES["echo_reply_bare"])) == FRAMES["echo_reply_bare"]
