"""The hub (docs/hub.md): echo_service, forwarding_service, forwarders, the RemoteForwarder
client, what a greenockam hub refuses, scripts/hub.py and echo_server.py --hub, and the real Rust
2021 programs through a greenockam hub.

In-process tests run the hub and its clients as nodes in this process (real sockets on
127.0.0.1 port 0, real greenlets). Nothing waits on a clock: "nothing arrived" is shown by
ordering (a later message over the same connections arrived, so an earlier one would have
too), and a connection closing at the hub is waited for with ``Node.on_close``, whose
callbacks run in the order they were registered (the hub's own first).
"""

import contextlib
import itertools
import json
import os
import re
import shutil
import signal

import gevent
import gevent.queue
import gevent.socket
import pytest
from gevent.event import Event

from greenockam import (
    ReceiveTimeout,
    RegistrationFailed,
    Route,
    TransportMessage,
    Worker,
)
from greenockam.hub import ForwarderInfo, Hub, RemoteForwarder
from greenockam.transport.tcp import TcpTransport
from greenockam.wire import decode_body
from helpers import (
    ROOT,
    Echo,
    Net,
    Process,
    bare_str,
    recv_frame,
    ref_frame,
    run_process,
    run_script,
    start_script,
    start_server,
    subprocess_env,
)

pytestmark = pytest.mark.timeout(120)

T = 30.0  # seconds: the bound on any single wait

with open(os.path.join(ROOT, "tests", "hub_vectors.json"), encoding="utf-8") as _f:
    VECTORS = json.load(_f)
PARAMS = VECTORS["parameters"]
FRAMES = {e["name"]: e for e in VECTORS["frames"] + VECTORS["echo"]}

# The Rust 2021 programs (see the README of the directory): GREENOCKAM_RUST_PEERS, or the
# shared directory beside the checkout.
RUST = os.environ.get(
    "GREENOCKAM_RUST_PEERS", os.path.join(ROOT, "..", "shared", "rust-peers", "9b385e16")
)


# --- helpers ------------------------------------------------------------------------------------


class HubNet(Net):
    """:class:`helpers.Net` with a hub node, its clients and registrants, all stopped at the
    end."""

    def __init__(self):
        super().__init__()
        self.forwarders = []

    def start_hub(self, mark="random", confine=True, address="127.0.0.1:0", **options):
        self.hub_node, self.hub_tcp, _ = self.node()
        self.hub_address = self.hub_tcp.listen(address, mark=mark, confine=confine)
        self.hub = Hub(self.hub_node, **options)
        return self.hub

    def client(self):
        """A node with a TCP transport and no listener."""
        return self.node()[0]

    def registrant(self, destination="echoer", **options):
        """A node with an Echo at ``destination`` registered at the hub."""
        node = self.client()
        echoer = Echo()
        node.start_worker(destination, echoer)
        rf = RemoteForwarder.create(node, self.hub_address, destination, timeout=T, **options)
        self.forwarders.append(rf)
        return node, echoer, rf

    def route(self, *hops):
        return Route(["1#" + self.hub_address, *hops])

    def raw(self):
        return self.connect(self.hub_address, T)

    def closed_at_hub(self, mark):
        """An Event set once the hub has handled the close of the connection marked ``mark``."""
        event = Event()
        assert self.hub_node.on_close(mark, event.set) is not None
        return event

    def close(self):
        for rf in self.forwarders:
            rf.stop()
        super().close()


@pytest.fixture
def net():
    n = HubNet()
    try:
        yield n
    finally:
        n.close()


def frame_of(entry, subst=()):
    """A vector frame rebuilt from its routes with text substitutions (random values, ports)."""

    def fix(address):
        for old, new in subst:
            address = address.replace(old, new)
        return address

    onward = [fix(a) for a in entry["onward"]]
    ret = [fix(a) for a in entry["return"]]
    return ref_frame(onward, ret, bytes.fromhex(entry["payload_hex"]))


def closed_port():
    """An address on 127.0.0.1 that nothing listens on (a port just bound and released)."""
    sock = gevent.socket.socket()
    sock.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    return address


def message_of(frame):
    return decode_body(frame[2:])


def registered(rf):
    """The info of a RemoteForwarder that has registered."""
    assert rf.info is not None
    return rf.info


def dropped(node, reason):
    return node.statistics()["dropped"].get(reason, 0)


# --- the vectors --------------------------------------------------------------------------------


def test_the_reference_encoder_rebuilds_every_vector_frame():
    for entry in list(FRAMES.values()) + VECTORS["elixir_variant"]:
        assert frame_of(entry) == bytes.fromhex(entry["frame_hex"]), entry["name"]


def test_echo_service_answers_the_captured_rust_request_byte_for_byte(net):
    net.start_hub()
    sock = net.raw()
    sock.sendall(bytes.fromhex(FRAMES["hub_echo_request"]["frame_hex"]))
    assert recv_frame(sock) == bytes.fromhex(FRAMES["hub_echo_reply"]["frame_hex"])
    assert net.hub.statistics()["echoed"] == 1


@pytest.mark.parametrize("mark", ["peer", "random"])
def test_the_worked_example_frame_by_frame(net, mark):
    """docs/hub.md, "Worked example": B registers, A sends "Hello" to B's forwarder, B's echoer
    answers A through the hub. With peer marks every frame is the vector's with the random
    forwarder and the real ports substituted; with random marks, the marks are the hub's
    random addresses instead of 1#ip:port, and everything else is the same."""
    net.start_hub(mark=mark)
    b, a = net.raw(), net.raw()

    b.sendall(bytes.fromhex(FRAMES["register_request"]["frame_hex"]))
    reply = recv_frame(b)
    forwarder = message_of(reply).return_route[0].value
    assert re.fullmatch(r"[0-9a-f]{16}", forwarder)
    f_subst = [(PARAMS["forwarder_address"], forwarder)]
    assert reply == frame_of(FRAMES["register_reply"], f_subst)
    assert net.hub.forwarders[forwarder][1] == Route([PARAMS["remote_forwarder_worker"]])[0]

    a.sendall(frame_of(FRAMES["send_request"], f_subst))
    forwarded = recv_frame(b)
    a_mark = str(message_of(forwarded).return_route[0])
    b_mark = str(net.hub.forwarders[forwarder][0])
    if mark == "peer":
        assert a_mark == f"1#127.0.0.1:{a.getsockname()[1]}"
        assert b_mark == f"1#127.0.0.1:{b.getsockname()[1]}"
    else:
        assert re.fullmatch(r"0#[0-9a-f]{32}", a_mark) and re.fullmatch(r"0#[0-9a-f]{32}", b_mark)
    marks = [("1#127.0.0.1:50002", a_mark), ("1#127.0.0.1:50001", b_mark)]
    assert forwarded == frame_of(FRAMES["forwarded"], marks)

    b.sendall(frame_of(FRAMES["echo_reply"], marks))
    assert recv_frame(a) == frame_of(FRAMES["echo_reply_to_a"], marks)


def test_remote_forwarder_info_encodes_as_the_rust_struct():
    entry = VECTORS["remote_forwarder_info"]
    info = ForwarderInfo(
        Route(entry["forwarding_route"]),
        entry["remote_address"],
        Route([entry["worker_address"]])[0],
    )
    assert info.encode() == bytes.fromhex(entry["bare_hex"])


def test_the_remote_forwarder_registers_with_the_bytes_of_the_rust_client(net):
    """Frame 1 of the worked example from a greenockam RemoteForwarder: only its random
    worker address differs; the hub's reply (frame 2) makes it report the forwarder."""
    listener = gevent.socket.socket()
    net.socks.append(listener)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    hub = f"127.0.0.1:{listener.getsockname()[1]}"
    node = net.client()
    creating = gevent.spawn(RemoteForwarder.create, node, hub, "echoer", timeout=T)
    try:
        conn, _ = listener.accept()
        net.socks.append(conn)
        request = recv_frame(conn)
        worker = str(message_of(request).return_route[0])
        assert re.fullmatch(r"0#[0-9a-f]{32}", worker)
        subst = [(PARAMS["remote_forwarder_worker"], worker)]
        assert request == frame_of(FRAMES["register_request"], subst)
        conn.sendall(frame_of(FRAMES["register_reply"], subst))
        rf = creating.get(timeout=T)
        net.forwarders.append(rf)
    finally:
        creating.kill()
    assert rf.info.remote_address == PARAMS["forwarder_address"]
    assert rf.info.forwarding_route == Route(["1#" + hub, "0#" + PARAMS["forwarder_address"]])
    assert str(rf.info.worker_address) == worker


# --- greenockam on every side -------------------------------------------------------------------


def test_a_registered_worker_is_reachable_through_its_forwarder(net):
    net.start_hub()
    _, echoer, rf = net.registrant()
    assert rf.info.forwarding_route == net.route("0#" + rf.info.remote_address)
    a = net.client()
    reply = a.request(rf.info.forwarding_route, "Hello", timeout=T)
    assert reply.body == "Hello"
    # the reply came straight from B's echoer through the hub, not through the forwarder
    assert reply.return_route[0] == net.route()[0]
    assert str(reply.return_route[2]) == "0#echoer"
    # what follows the forwarder in the onward route is dropped, as in 2021
    assert a.request(net.route(rf.info.remote_address, "elsewhere"), "2", timeout=T).body == "2"
    assert echoer.bodies == ["Hello", "2"]
    # the sender can go on replying along the route it was handed
    assert a.request(reply.return_route, "again", timeout=T).body == "again"
    assert net.hub.statistics()["forwarded"] == 2


def test_a_burst_through_a_forwarder_arrives_whole_and_in_order(net):
    # Sent without waiting, the messages reach the hub in runs: each run is re-routed together.
    net.start_hub()
    _, echoer, rf = net.registrant()
    a = net.client()
    with a.open_context() as sender:
        for i in range(500):
            sender.send(rf.info.forwarding_route, f"m{i}")
        replies = [sender.receive(T).body for _ in range(500)]
    assert replies == [f"m{i}" for i in range(500)]
    assert echoer.bodies == replies
    assert net.hub.statistics()["forwarded"] == 500


class Opened(Echo):
    """An Echo that starts by answering "opened" along ``route``."""

    def __init__(self, route):
        super().__init__()
        self.route = route

    def initialize(self, ctx):
        ctx.send(self.route, "opened")


class Spawner(Worker):
    """Starts a worker for each message, which answers it (as a channel listener does)."""

    def handle_message(self, ctx, msg):
        ctx.start_worker(None, Opened(msg.return_route))


def test_a_peer_talks_to_the_worker_a_registrant_started_for_it(net):
    """The routing of a secure channel through a forwarder, under confinement: the first
    message goes through the forwarder, the rest along the route of the answer."""
    net.start_hub()
    b = net.client()
    b.start_worker("listener", Spawner())
    rf = RemoteForwarder.create(b, net.hub_address, "listener", timeout=T)
    net.forwarders.append(rf)
    a = net.client()
    first = a.request(registered(rf).forwarding_route, "open", timeout=T)
    assert first.body == "opened"
    assert first.return_route[-1] != Route(["listener"])[0]
    for text in ("one", "two"):
        assert a.request(first.return_route, text, timeout=T).body == text
    assert dropped(net.hub_node, "confined") == 0


def test_echo_service_through_the_hub(net):
    net.start_hub()
    a = net.client()
    reply = a.request(net.route("echo_service"), "Hello Ockam!", timeout=T)
    assert (reply.body, str(reply.return_route)) == (
        "Hello Ockam!",
        f"1#{net.hub_address} => 0#echo_service",
    )


def test_a_context_on_the_hub_node_itself_can_register(net):
    net.start_hub()
    local = net.hub_node.open_context("local")
    local.send(["forwarding_service"], "register")
    reply = local.receive(timeout=T)
    assert (reply.body, len(reply.return_route)) == ("register", 1)
    forwarder = reply.return_route[0].value
    assert net.hub.forwarders[forwarder] == Route(["local"])
    net.client().send(net.route(forwarder), "to the hub's own context")
    assert local.receive(timeout=T).body == "to the hub's own context"
    assert net.hub_node.request(["echo_service"], "local echo", timeout=T).body == "local echo"


def test_hub_limits_must_be_positive(node):
    for option in ("max_forwarders", "max_forwarders_per_connection"):
        with pytest.raises(ValueError, match=option):
            Hub(node, **{option: 0})
    assert node.statistics()["endpoints"] == 0


def test_every_registration_gets_a_new_forwarder(net):
    net.start_hub()
    node, echoer, rf1 = net.registrant()
    rf2 = RemoteForwarder.create(node, net.hub_address, "echoer", timeout=T)
    net.forwarders.append(rf2)
    assert registered(rf1).remote_address != registered(rf2).remote_address
    a = net.client()
    for rf in (rf1, rf2):
        info = registered(rf)
        assert a.request(info.forwarding_route, info.remote_address, timeout=T).body
    assert echoer.bodies == [registered(rf1).remote_address, registered(rf2).remote_address]
    assert net.hub.statistics()["forwarders"] == 2


# --- the client's errors ------------------------------------------------------------------------


@contextlib.contextmanager
def silent_hub(reply=None):
    """A listener that accepts, reads the registration and answers ``reply(request)`` if given,
    else nothing."""
    listener = gevent.socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    conns = []

    def serve():
        conn, _ = listener.accept()
        conns.append(conn)
        request = recv_frame(conn)
        if reply is not None:
            conn.sendall(reply(request))
        conn.recv(1)  # until the client closes

    server = gevent.spawn(serve)
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.kill()
        for sock in conns + [listener]:
            sock.close()


def test_a_registration_without_a_reply_fails_after_its_timeout(node):
    TcpTransport(node)
    endpoints = node.statistics()["endpoints"]
    with silent_hub() as hub:
        with pytest.raises(RegistrationFailed, match="no reply from the hub at .* within 0.2 s"):
            RemoteForwarder.create(node, hub, "echoer", timeout=0.2)
    assert node.statistics()["endpoints"] == endpoints  # nothing left behind


def test_a_reply_that_is_not_a_registration_fails_at_once(node):
    TcpTransport(node)

    def wrong_payload(request):
        msg = message_of(request)
        return ref_frame([str(a) for a in msg.return_route], ["0#f00"], bare_str("nope"))

    with silent_hub(wrong_payload) as hub:
        with pytest.raises(RegistrationFailed, match="invalid registration reply"):
            RemoteForwarder.create(node, hub, "echoer", timeout=T)


def test_a_registration_at_a_closed_port_fails_with_the_connect_error(node):
    TcpTransport(node)
    hub = closed_port()
    with pytest.raises(RegistrationFailed, match="cannot register at the hub .* cannot connect"):
        RemoteForwarder.create(node, hub, "echoer", timeout=T)


def test_a_hub_address_must_be_host_and_port(node):
    with pytest.raises(ValueError):
        RemoteForwarder(node, "hub.example", "echoer")


# --- what a greenockam hub refuses --------------------------------------------------------------


def learned_mark(net):
    """B registered; A got one reply from B's echoer. Returns (A, B's secret context, echoer,
    forwarder, the return route A was handed: [1#hub, B's mark, echoer])."""
    b, echoer, rf = net.registrant()
    secret = b.open_context("secret")
    a = net.client()
    reply = a.request(rf.info.forwarding_route, "hello", timeout=T)
    return a, secret, echoer, rf, reply.return_route


def test_a_sender_cannot_reach_a_registrants_other_workers_with_its_mark(net):
    """docs/hub.md, "Confinement": A learned B's mark from a reply; it may reply along that
    route, not reach B's other workers."""
    net.start_hub()
    a, secret, echoer, rf, handed = learned_mark(net)
    a.send(Route([handed[0], handed[1], "secret"]), "attack")
    assert a.request(rf.info.forwarding_route, "after", timeout=T).body == "after"
    with pytest.raises(ReceiveTimeout):
        secret.receive_nowait()  # "after" went over the same connections, behind "attack"
    assert dropped(net.hub_node, "confined") == 1
    assert a.request(handed, "along the handed route", timeout=T).body == "along the handed route"
    assert echoer.bodies == ["hello", "after", "along the handed route"]


def test_without_confinement_the_learned_mark_reaches_any_worker(net):
    """The control for the test above: the 2021 behaviour (docs/hub.md, "Weaknesses")."""
    net.start_hub(confine=False)
    a, secret, _, _, handed = learned_mark(net)
    a.send(Route([handed[0], handed[1], "secret"]), "attack")
    assert secret.receive(timeout=T).body == "attack"


def test_with_peer_marks_confinement_still_holds(net):
    """Marked 1#ip:port, B's connection is known to A and guessable by anyone; confinement
    still lets A only reply along what it was handed."""
    net.start_hub(mark="peer")
    a, secret, echoer, rf, handed = learned_mark(net)
    assert str(handed[1]).startswith("1#127.0.0.1:")
    a.send(Route([handed[0], handed[1], "secret"]), "attack")
    net.client().send(handed, "from a client that guessed the port")
    assert a.request(handed, "along the handed route", timeout=T).body == "along the handed route"
    assert echoer.bodies == ["hello", "along the handed route"]
    assert dropped(net.hub_node, "confined") == 2
    with pytest.raises(ReceiveTimeout):
        secret.receive_nowait()


def test_with_peer_marks_and_no_confinement_the_hub_is_the_2021_open_relay(net):
    """The control for the test above (docs/hub.md, "Weaknesses")."""
    net.start_hub(mark="peer", confine=False)
    a, secret, _, _, handed = learned_mark(net)
    a.send(Route([handed[0], handed[1], "secret"]), "attack")
    assert secret.receive(timeout=T).body == "attack"


def test_a_third_client_cannot_use_a_leaked_route(net):
    net.start_hub()
    _, _, echoer, rf, handed = learned_mark(net)
    c = net.client()
    c.send(handed, "leaked")  # the exact route A was handed, from another connection
    assert c.request(rf.info.forwarding_route, "legit", timeout=T).body == "legit"
    assert echoer.bodies == ["hello", "legit"]
    assert dropped(net.hub_node, "confined") == 1


def test_guessed_marks_reach_nothing(net):
    """A raw registrant B (frames of the worked example); C guesses B's mark from its port and
    tries a random mark: only C's message through the forwarder reaches B."""
    net.start_hub()
    b = net.raw()
    b.sendall(bytes.fromhex(FRAMES["register_request"]["frame_hex"]))
    forwarder = message_of(recv_frame(b)).return_route[0].value
    c = net.client()
    worker = PARAMS["remote_forwarder_worker"]
    c.send(net.route(f"1#127.0.0.1:{b.getsockname()[1]}", worker), "guess by port")
    c.send(net.route("0#" + os.urandom(16).hex(), worker), "guess at random")
    c.send(net.route(forwarder), "legit")
    msg = message_of(recv_frame(b))
    assert msg.payload == bare_str("legit")
    assert dropped(net.hub_node, "no_connection") == 1  # the hub never dials
    assert dropped(net.hub_node, "unknown_address") == 1


def test_echo_service_answers_only_the_sender(net):
    """A forged return route naming B's mark and echoer: the echo goes back to A (whose node
    drops it), never to B."""
    net.start_hub()
    a, _, echoer, rf, handed = learned_mark(net)
    before = dropped(a, "unknown_address")
    a.context.send_message(
        TransportMessage(net.route("echo_service"), handed.pop_front(), bare_str("reflect"))
    )
    assert a.request(rf.info.forwarding_route, "after", timeout=T).body == "after"
    assert echoer.bodies == ["hello", "after"]
    assert net.hub.statistics()["echoed"] == 1
    assert dropped(a, "unknown_address") == before + 1  # the echo came back to A


def test_registrations_past_the_connection_limit_are_dropped(net):
    net.start_hub(max_forwarders_per_connection=4)
    sock = net.raw()
    register = bytes.fromhex(FRAMES["register_request"]["frame_hex"])
    sock.sendall(register * 6 + bytes.fromhex(FRAMES["hub_echo_request"]["frame_hex"]))
    replies = [message_of(recv_frame(sock)) for _ in range(5)]
    assert [str(m.return_route[0]).startswith("0#") for m in replies[:4]] == [True] * 4
    assert str(replies[4].return_route) == "0#echo_service"  # the 5th and 6th got nothing
    stats = net.hub.statistics()
    assert (stats["forwarders"], stats["registrations_refused"]) == (4, 2)
    assert dropped(net.hub_node, "connection_forwarder_limit") == 2
    # another connection registers and is reached as usual
    _, echoer, rf = net.registrant()
    assert net.client().request(rf.info.forwarding_route, "still", timeout=T).body == "still"


def test_registrations_past_the_total_limit_are_dropped_and_the_client_says_so(net):
    net.start_hub(max_forwarders=2)
    net.registrant()
    node, _, _ = net.registrant()
    with pytest.raises(RegistrationFailed, match="no reply"):
        RemoteForwarder.create(node, net.hub_address, "echoer", timeout=0.2)
    assert dropped(net.hub_node, "forwarder_limit") == 1
    assert net.client().request(net.route("echo_service"), "ok", timeout=T).body == "ok"


def test_a_slow_registrant_holds_back_only_the_senders_to_it(net):
    """B registers and stops reading; S floods B's forwarder. The hub queues a bounded amount
    for B and stops reading S; everyone else goes on. When B goes, S is read again and its
    messages to the dead forwarder are dropped."""
    net.start_hub()
    b = net.raw()
    b.sendall(bytes.fromhex(FRAMES["register_request"]["frame_hex"]))
    forwarder = message_of(recv_frame(b)).return_route[0].value
    closed = net.closed_at_hub(net.hub.forwarders[forwarder][0])
    flood = ref_frame([forwarder], ["0#s"], b"x" * 60000) * 1100  # 66 MB, never read by B
    s = net.raw()
    sending = gevent.spawn(s.sendall, flood)
    _, echoer, rf = net.registrant()
    c = net.client()
    for i in range(3):
        assert c.request(rf.info.forwarding_route, str(i), timeout=T).body == str(i)
        assert c.request(net.route("echo_service"), str(i), timeout=T).body == str(i)
    assert not sending.dead  # held back: the hub stopped reading S
    b.close()
    assert closed.wait(T)
    sending.get(timeout=T)  # read again once B's connection is gone
    assert c.request(net.route("echo_service"), "done", timeout=T).body == "done"


# --- lifetimes ----------------------------------------------------------------------------------


def test_a_registrants_forwarders_go_when_its_connection_closes(net):
    net.start_hub()
    a = net.client()
    assert a.request(net.route("echo_service"), "warm", timeout=T).body == "warm"
    baseline = (net.hub.statistics()["forwarders"], net.hub_node.statistics()["endpoints"])
    b, _, rf = net.registrant()
    rf2 = RemoteForwarder.create(b, net.hub_address, "echoer", timeout=T)
    net.forwarders.append(rf2)
    route = rf.info.forwarding_route
    assert a.request(route, "x", timeout=T).body == "x"
    closed = net.closed_at_hub(net.hub.forwarders[rf.info.remote_address][0])
    b.stop()
    assert closed.wait(T)
    # the forwarders are gone; the registrant's mark stays as a gone mark (bounded, it refuses
    # replies to the client that left) until the transport forgets it
    assert (net.hub.statistics()["forwarders"], net.hub_node.statistics()["endpoints"]) == (
        baseline[0],
        baseline[1] + 1,
    )
    # a sender along the stale route gets nothing delivered; the hub goes on
    a.send(route, "stale")
    assert a.request(net.route("echo_service"), "next", timeout=T).body == "next"
    assert dropped(net.hub_node, "unknown_address") == 1


def test_a_registrant_killed_with_sigkill_leaves_nothing_at_the_hub(net):
    net.start_hub()
    a = net.client()
    assert a.request(net.route("echo_service"), "warm", timeout=T).body == "warm"
    baseline = (net.hub.statistics(), net.hub_node.statistics()["endpoints"])
    args = ["--hub", net.hub_address, "--log-level", "WARNING"]
    with start_script("echo_server.py", *args) as server:
        forwarder = server.first_line()
        route = net.route(forwarder)
        assert a.request(route, "through the hub", timeout=T).body == "through the hub"
        closed = net.closed_at_hub(net.hub.forwarders[forwarder][0])
        server.send_signal(signal.SIGKILL)
        assert closed.wait(T)
    assert net.hub.statistics()["forwarders"] == baseline[0]["forwarders"] == 0
    stats = net.hub_tcp.statistics()
    assert (stats["confined_connections"], stats["grants"]) == (1, 0)  # A's, with nothing to B
    assert net.hub_node.statistics()["endpoints"] == baseline[1] + 1  # its gone mark (bounded)
    a.send(route, "stale")
    assert a.request(net.route("echo_service"), "next", timeout=T).body == "next"
    assert dropped(net.hub_node, "unknown_address") == 1


def test_the_remote_forwarder_registers_again_after_the_hub_restarts(net):
    net.start_hub()
    infos = gevent.queue.Queue()
    b, echoer, rf = net.registrant(on_registered=infos.put, backoff=0.05, max_backoff=0.5)
    first = infos.get(timeout=T)
    assert first == rf.info
    address = net.hub_address
    net.hub_node.stop()
    assert rf.info is None or rf.info == first  # lost, or about to notice
    net.start_hub(address=address)
    second = infos.get(timeout=T)
    assert second.remote_address != first.remote_address
    assert rf.info == second
    a = net.client()
    assert a.request(second.forwarding_route, "back", timeout=T).body == "back"
    assert echoer.bodies == ["back"]


def test_stopping_a_remote_forwarder_removes_its_address(net):
    net.start_hub()
    b, _, rf = net.registrant()
    endpoints = b.statistics()["endpoints"]
    rf.stop()
    rf.stop()
    assert b.statistics()["endpoints"] == endpoints - 1
    assert rf.info is None


def test_stopping_the_hub_leaves_the_node_and_its_connections(net):
    net.start_hub()
    _, _, rf = net.registrant()
    a = net.client()
    reply = a.request(rf.info.forwarding_route, "x", timeout=T)
    marks = {v for v in net.hub_node.endpoints if v not in net.hub.forwarders}
    marks -= {"echo_service", "forwarding_service"}
    assert len(marks) == 2  # A's and B's connections
    net.hub.stop()
    net.hub.stop()
    assert set(net.hub_node.endpoints) == marks
    assert net.hub.statistics()["forwarders"] == 0
    # the connections work as on any node: a reply along the route A holds still arrives
    assert a.request(reply.return_route, "y", timeout=T).body == "y"
    a.send(rf.info.forwarding_route, "to a forwarder that is gone")
    a.send(net.route("echo_service"), "to a service that is gone")
    assert a.request(reply.return_route, "z", timeout=T).body == "z"
    assert dropped(net.hub_node, "unknown_address") == 2


# --- many registrants ---------------------------------------------------------------------------


def rss_kib(pid):
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.timeout(300)
def test_a_thousand_registrants_each_answer_through_their_forwarder(net, record_property):
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc to read the hub's memory")
    hub = start_server("hub.py", "127.0.0.1:0", "--log-level", "WARNING")
    try:
        net.hub_address = hub.address
        a = net.client()
        assert a.request(net.route("echo_service"), "warm", timeout=T).body == "warm"
        before = rss_kib(hub.pid)
        infos = []
        for _ in range(20):  # 20 connections of 50 registrants (the per-connection limit is 64)
            node = net.client()
            node.start_worker("echoer", Echo())
            for _ in range(50):
                rf = RemoteForwarder.create(node, net.hub_address, "echoer", timeout=T)
                net.forwarders.append(rf)
                infos.append(registered(rf))
        after = rss_kib(hub.pid)
        with a.open_context() as ctx:
            for i, info in enumerate(infos):
                ctx.send(info.forwarding_route, str(i))
            bodies = {ctx.receive(timeout=T).body for _ in infos}
        assert bodies == {str(i) for i in range(len(infos))}
        per_forwarder = (after - before) * 1024 / len(infos)
        record_property("hub_bytes_per_forwarder", per_forwarder)
        print(
            f"hub memory: {before} KiB before, {after} KiB after {len(infos)} forwarders: "
            f"~{per_forwarder:.0f} bytes each"
        )
        for rf in net.forwarders:
            rf.stop()
        net.forwarders = []
    finally:
        assert hub.stop() == 0


def raw_echoer(sock):
    """A registrant on a raw socket: answers every forwarded frame along its return route, from
    ``0#echoer`` (frame 5 of the worked example)."""
    while True:
        msg = message_of(recv_frame(sock, timeout=None))
        sock.sendall(ref_frame([str(a) for a in msg.return_route], ["0#echoer"], msg.payload))


@pytest.mark.timeout(300)
def test_a_thousand_registrant_connections_each_answer_through_their_forwarder(
    net, record_property
):
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc to read the hub's memory")
    hub = start_server("hub.py", "127.0.0.1:0", "--log-level", "WARNING")
    echoers = []
    try:
        net.hub_address = hub.address
        a = net.client()
        assert a.request(net.route("echo_service"), "warm", timeout=T).body == "warm"
        before = rss_kib(hub.pid)
        register = bytes.fromhex(FRAMES["register_request"]["frame_hex"])
        socks = [net.raw() for _ in range(1000)]
        for sock in socks:
            sock.sendall(register)
        forwarders = [message_of(recv_frame(sock)).return_route[0].value for sock in socks]
        after = rss_kib(hub.pid)
        echoers = [gevent.spawn(raw_echoer, sock) for sock in socks]
        with a.open_context() as ctx:
            for forwarder in forwarders:
                ctx.send(net.route(forwarder), forwarder)
            bodies = {ctx.receive(timeout=T).body for _ in forwarders}
        assert bodies == set(forwarders) and len(bodies) == 1000
        per_registrant = (after - before) * 1024 / len(socks)
        record_property("hub_bytes_per_registrant_connection", per_registrant)
        print(
            f"hub memory: {before} KiB before, {after} KiB after 1000 connections with a "
            f"forwarder each: ~{per_registrant:.0f} bytes each"
        )
    finally:
        gevent.killall(echoers)
        assert hub.stop() == 0


# --- the scripts --------------------------------------------------------------------------------


@contextlib.contextmanager
def hub_script(*args, address="127.0.0.1:0"):
    with start_server("hub.py", address, "--log-level", "WARNING", *args) as proc:
        yield proc.address
        assert proc.stop() == 0


@contextlib.contextmanager
def echo_server_behind(hub):
    with start_script("echo_server.py", "--hub", hub, "--log-level", "WARNING") as proc:
        forwarder = proc.first_line()
        assert re.fullmatch(r"[0-9a-f]{16}", forwarder), forwarder
        yield forwarder
        assert proc.stop() == 0


def test_the_echo_client_reaches_an_echo_server_behind_the_hub():
    with hub_script() as hub, echo_server_behind(hub) as forwarder:
        result = run_script(
            "echo_client.py", "--route", f"1#{hub} => {forwarder}", "--message", "NAT"
        )
        assert (result.returncode, result.stdout) == (0, "NAT\n"), result.stderr


def test_the_echo_server_prints_its_new_forwarder_after_the_hub_restarts():
    with contextlib.ExitStack() as stack:
        with hub_script() as hub:
            server = start_script("echo_server.py", "--hub", hub, "--log-level", "WARNING")
            stack.enter_context(server)
            first = server.first_line()
        with hub_script(address=hub):
            second = server.line(1)
            assert second is not None and second != first
            result = run_script(
                "echo_client.py", "--route", f"1#{hub} => {second}", "--message", "again"
            )
            assert (result.returncode, result.stdout) == (0, "again\n"), result.stderr
        assert server.stop() == 0


def test_the_echo_server_exits_1_when_the_hub_is_unreachable():
    hub = closed_port()
    result = run_script("echo_server.py", "--hub", hub, "--log-level", "ERROR")
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot register at the hub at " + hub)


def test_the_hub_script_rejects_a_bad_address():
    result = run_script("hub.py", "nowhere")
    assert result.returncode == 1
    assert "error: expected HOST:PORT" in result.stderr


# --- Rust 2021 programs through a greenockam hub ------------------------------------------------


def rust(program):
    path = os.path.join(RUST, program)
    if not os.access(path, os.X_OK):
        pytest.skip(f"Rust 2021 program {path} not found (set GREENOCKAM_RUST_PEERS)")
    if shutil.which("timeout") is None:
        pytest.skip("needs the timeout command to bound the Rust programs")
    return path


RUST_START_FAILURE = 'Error { code: 11009, domain: "OCKAM_NODE" }'
"""How a 2021 Rust node now and then fails inside itself (InternalIOFailure), before or
whatever the hub sends (the frames are fixed bytes): such a run is retried, twice at most."""


def run_rust(program, *args):
    """Run a Rust program to its end under ``timeout`` (they wait forever without an answer)."""
    path = rust(program)
    for _ in range(3):
        result = run_process(
            ["timeout", str(int(T)), path, *args],
            timeout=2 * T,
            merge_stderr=True,
            env=subprocess_env(OCKAM_LOG="warn"),
        )
        if result.returncode == 126 or "error while loading shared libraries" in result.stdout:
            pytest.skip(f"the Rust program cannot run here: {result.stdout.strip()[:200]}")
        if RUST_START_FAILURE not in result.stdout:
            break
    return result


@contextlib.contextmanager
def rust_registered_echoer(hub):
    """hub-registered-echoer, once it printed its forwarder (a start that fails with
    :data:`RUST_START_FAILURE` is retried, twice at most)."""
    path = rust("hub-registered-echoer")
    output = []
    for _ in range(3):
        proc = Process(
            ["timeout", str(int(T * 3)), path, hub],
            merge_stderr=True,
            env=subprocess_env(OCKAM_LOG="warn"),
        )
        try:
            forwarder = None
            for index in itertools.count():
                line = proc.line(index)
                if line is None:
                    break
                output.append(line)
                if line.startswith("FORWARDER "):
                    forwarder = line.split()[1]
                    break
            if forwarder is not None:
                yield forwarder
                return
        finally:
            output.append(f"exit status {proc.stop()}")  # timeout passes SIGTERM on
        if not any(RUST_START_FAILURE in line for line in output):
            break
    pytest.fail(f"hub-registered-echoer did not register: {output}")


def test_rust_example_10_gets_its_echo_from_the_hub():
    with hub_script() as hub:
        result = run_rust("10-routing-to-a-cloud-node", hub)
    assert result.returncode == 0 and "App Received: 'Hello Ockam!'" in result.stdout, result


@pytest.mark.parametrize("marks", ["random", "peer"])
def test_a_rust_sender_reaches_a_rust_registered_echoer(marks):
    with hub_script("--marks", marks) as hub, rust_registered_echoer(hub) as forwarder:
        result = run_rust("hub-send", hub, forwarder, "Hello from Rust")
    assert result.returncode == 0 and "App Received: Hello from Rust" in result.stdout, result


def test_a_greenockam_sender_reaches_a_rust_registered_echoer():
    with hub_script() as hub, rust_registered_echoer(hub) as forwarder:
        result = run_script(
            "echo_client.py", "--route", f"1#{hub} => {forwarder}", "--message", "py"
        )
    assert (result.returncode, result.stdout) == (0, "py\n"), result.stderr


def test_a_rust_sender_reaches_a_greenockam_echo_server_behind_the_hub():
    with hub_script() as hub, echo_server_behind(hub) as forwarder:
        result = run_rust("hub-send", hub, forwarder, "Hello from Rust")
    assert result.returncode == 0 and "App Received: Hello from Rust" in result.stdout, result


def test_a_rust_registered_echoer_in_front_of_a_greenockam_in_process_hub(net):
    """The Rust RemoteForwarder accepts the greenockam hub's reply, and the hub drops its
    forwarder when the Rust node goes."""
    net.start_hub()
    with rust_registered_echoer(net.hub_address) as forwarder:
        a = net.client()
        assert a.request(net.route(forwarder), "to Rust", timeout=T).body == "to Rust"
        closed = net.closed_at_hub(net.hub.forwarders[forwarder][0])
    assert closed.wait(T)
    assert net.hub.statistics()["forwarders"] == 0
