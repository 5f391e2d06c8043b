"""The public seams that services and channels build on: chosen return routes, raw messages,
contexts opened by the application, endpoints, close watches, connection marks, outlets keyed by
both routes, and the connect policy for forwarded messages (docs/protocol.md, sections 6 and 7).

Real nodes, real sockets on 127.0.0.1 port 0, real greenlets; nothing is mocked.
"""


import gevent
import pytest
from gevent import getcurrent
from gevent.event import Event
from gevent.queue import Queue

from greenockam import (
    AddressError,
    AddressInUse,
    ConnectionLost,
    Node,
    NodeStopped,
    ReceiveTimeout,
    Route,
    TransportMessage,
    UnknownAddress,
)
from greenockam.address import Address
from greenockam.transport.base import Endpoint
from helpers import (
    WAIT,
    Echo,
    RecordingSource,
    bare_str,
    peer_name,
    poll_until,
    recv_frame,
    ref_frame,
)

pytestmark = pytest.mark.timeout(60)


class Recording(Endpoint):
    """Records what it gets and in which greenlet; re-raises ``fail`` if set."""

    def __init__(self, fail=None):
        self.got = Queue()
        self.fail = fail

    def handle(self, message, source):
        self.got.put((message, source, getcurrent()))
        if self.fail is not None:
            raise self.fail


def route(*addresses):
    return Route(addresses)


# --- chosen return routes and raw messages -------------------------------------------------------


def test_send_from_address_puts_the_chosen_address_of_the_context_in_the_return_route(node):
    with node.open_context(["primary", "secondary"]) as ctx:
        ctx.send_from_address(["app"], "hi", "secondary")
        msg = node.receive(timeout=WAIT)
    assert msg.body == "hi"
    assert msg.return_route == route("secondary")


def test_send_from_address_refuses_an_address_that_is_not_the_contexts(node):
    with node.open_context("mine") as ctx:
        with pytest.raises(AddressError):
            ctx.send_from_address(["app"], "hi", "someone_else")
    with pytest.raises(ReceiveTimeout):
        node.receive_nowait()


def test_send_message_dispatches_a_whole_message_with_the_return_route_it_carries(node):
    message = TransportMessage(route("app"), route("far", "away"), bare_str("raw"))
    node.context.send_message(message)
    msg = node.receive(timeout=WAIT)
    assert msg.body == "raw"
    assert msg.return_route == route("far", "away")


# --- contexts opened by the application ----------------------------------------------------------


def test_an_application_context_at_a_chosen_address_receives_and_frees_it_on_close(node):
    ctx = node.open_context("inbox")
    node.send(["inbox"], "for the inbox")
    assert ctx.receive(timeout=WAIT).body == "for the inbox"
    assert node.statistics()["contexts"] == 2  # app and inbox
    ctx.close()
    assert node.statistics()["contexts"] == 1
    with pytest.raises(UnknownAddress):
        node.send(["inbox"], "gone")
    node.open_context("inbox").close()  # the address can be taken again


def test_an_application_context_at_a_random_address_gets_32_hex_characters(node):
    with node.open_context() as ctx:
        value = ctx.address[1]
    assert len(value) == 32 and int(value, 16) >= 0


def test_closing_a_context_wakes_its_waiting_receiver_with_node_stopped(node):
    ctx = node.open_context("waiting")
    errors = Queue()

    def receive():
        try:
            ctx.receive(timeout=WAIT)
        except NodeStopped as exc:
            errors.put(exc)

    g = gevent.spawn(receive)  # waiting now, or about to: either way close() must end it
    ctx.close()
    assert isinstance(errors.get(timeout=WAIT), NodeStopped)
    g.join(WAIT)


def test_a_context_address_and_an_endpoint_address_cannot_clash(node):
    node.start_endpoint("shared", Recording())
    with pytest.raises(AddressInUse):
        node.open_context("shared")
    with node.open_context("taken"):
        with pytest.raises(AddressInUse):
            node.start_endpoint("taken", Recording())


# --- endpoints -----------------------------------------------------------------------------------


def test_an_endpoint_gets_local_messages_in_the_senders_greenlet_with_no_source(node):
    endpoint = Recording()
    node.start_endpoint("ep", endpoint)
    node.send(["ep", "beyond"], "local")
    message, source, greenlet = endpoint.got.get(timeout=WAIT)
    assert source is None
    assert greenlet is getcurrent()
    assert message.onward_route == route("ep", "beyond")  # its own address still first
    assert message.return_route == route("app")


def test_node_route_raises_to_a_local_sender_and_drops_for_a_source():
    node = Node()
    try:
        lost = TransportMessage(route("nobody"), route("service"), b"")
        with pytest.raises(UnknownAddress):
            node.route(lost, None)
        # As forwarded: dropped and counted at once, never raised.
        node.route(lost, RecordingSource())
        assert node.statistics()["dropped"]["unknown_address"] == 1
    finally:
        node.stop()
    node.route(lost, RecordingSource())
    assert node.statistics()["dropped"]["stopped"] == 1
    with pytest.raises(NodeStopped):
        node.route(lost, None)


def test_an_endpoint_that_takes_runs_gets_messages_in_a_row_at_once_and_in_order(node):
    seen = Queue()

    class Runs(Endpoint):
        def handle(self, message, source):
            seen.put(("one", [message.payload], source))

        def handle_run(self, messages, source):
            seen.put(("run", [m.payload for m in messages], source))

    class One(Endpoint):
        def handle(self, message, source):
            seen.put(("other", [message.payload], source))

    node.start_endpoint("runs", Runs())
    node.start_endpoint("other", One())
    to_runs, to_other, back = route("runs"), route("other"), route("peer")  # as a decoder does
    line = RecordingSource()
    node.deliver(
        [TransportMessage(to, back, bytes([i])) for i, to in
         enumerate([to_runs, to_runs, to_runs, to_other, to_runs])],
        line,
    )
    got = [seen.get(timeout=WAIT) for _ in range(3)]
    assert got == [("run", [b"\0", b"\1", b"\2"], line), ("other", [b"\3"], line),
                   ("run", [b"\4"], line)]
    assert node.statistics()["messages_routed"] == 5


def test_an_endpoint_failing_on_one_message_of_a_run_loses_only_that_message(node):
    handled = Queue()

    class Picky(Endpoint):
        def handle(self, message, source):
            if message.payload == b"bad":
                raise RuntimeError("a bug in the endpoint")
            handled.put(message.payload)

    node.start_endpoint("picky", Picky())
    to_picky, back = route("picky"), route("peer")
    node.deliver(
        [TransportMessage(to_picky, back, p) for p in (b"one", b"bad", b"two")], RecordingSource()
    )
    assert [handled.get(timeout=WAIT) for _ in range(2)] == [b"one", b"two"]
    assert node.statistics()["dropped"]["endpoint_error"] == 1


def test_an_endpoint_gets_network_messages_in_the_router_greenlet_with_their_source(net):
    node, tcp, address = net.node(listen=True)
    endpoint = Recording()
    node.start_endpoint("ep", endpoint)
    peer = net.connect(address)
    peer.sendall(ref_frame(["0#ep"], ["0#client"], bare_str("from the network")))
    message, source, greenlet = endpoint.got.get(timeout=WAIT)
    assert source is not None and source.peer == next(iter(tcp.connections))
    assert greenlet is not getcurrent()
    assert message.return_route[0] == Address(1, source.peer)


def test_a_stopped_endpoint_is_an_unknown_address(node):
    node.start_endpoint("ep", Recording())
    assert node.statistics()["endpoints"] == 1
    node.stop_endpoint("ep")
    assert node.statistics()["endpoints"] == 0
    with pytest.raises(UnknownAddress):
        node.send(["ep"], "x")
    with pytest.raises(UnknownAddress):
        node.stop_endpoint("ep")


class StopsItself(Endpoint):
    """Stops its own address ``once`` on the first message it gets; counts what it got."""

    def __init__(self, node):
        self.node = node
        self.got = 0

    def handle(self, message, source):
        self.got += 1
        self.node.stop_endpoint("once")


def test_an_endpoint_stopped_while_a_read_is_routed_gets_none_of_the_rest_of_it(net):
    """Five frames to one endpoint in one write (one read, most likely: the router resolves
    their repeated route once): the endpoint stops itself at the first, the other four are
    unknown addresses."""
    node, _, address = net.node(listen=True, echo=True)
    endpoint = StopsItself(node)
    node.start_endpoint("once", endpoint)
    peer = net.connect(address)
    to_once = ref_frame(["0#once"], ["0#client"], bare_str("x"))
    peer.sendall(to_once * 5 + ref_frame(["0#echo_service"], ["0#client"], bare_str("after")))
    assert recv_frame(peer) == ref_frame(["0#client"], ["0#echo_service"], bare_str("after"))
    assert endpoint.got == 1
    assert node.statistics()["dropped"] == {"unknown_address": 4}


def test_an_endpoint_that_raises_in_the_router_is_counted_and_the_router_goes_on(net):
    node, _, address = net.node(listen=True, echo=True)
    node.start_endpoint("broken", Recording(fail=RuntimeError("endpoint bug")))
    peer = net.connect(address)
    peer.sendall(ref_frame(["0#broken"], ["0#client"], bare_str("x")))
    peer.sendall(ref_frame(["0#echo_service"], ["0#client"], bare_str("still served")))
    assert recv_frame(peer) == ref_frame(["0#client"], ["0#echo_service"], bare_str("still served"))
    assert node.statistics()["dropped"]["endpoint_error"] == 1


# --- close watches -------------------------------------------------------------------------------


def test_a_service_learns_that_the_connection_a_message_came_on_closed(net):
    node, _, address = net.node(listen=True)
    closed = Event()
    with node.open_context("service") as service:
        peer = net.connect(address)
        peer.sendall(ref_frame(["0#service"], ["0#client"], bare_str("register me")))
        msg = service.receive(timeout=WAIT)
        assert node.on_close(msg.return_route[0], closed.set) is not None
        assert not closed.is_set()
        peer.close()
        assert closed.wait(WAIT)


def test_a_cancelled_close_watch_is_not_called(net):
    node, _, address = net.node(listen=True)
    kept, cancelled = Event(), Event()
    with node.open_context("service") as service:
        peer = net.connect(address)
        peer.sendall(ref_frame(["0#service"], ["0#client"], bare_str("x")))
        mark = service.receive(timeout=WAIT).return_route[0]
        node.on_close(mark, cancelled.set)()
        node.on_close(mark, kept.set)
        peer.close()
        assert kept.wait(WAIT)
    assert not cancelled.is_set()


def test_a_close_watch_on_a_connection_that_is_not_open_returns_none(net):
    node, _, _ = net.node()
    assert node.on_close("1#127.0.0.1:9", lambda: None) is None
    assert node.on_close("nobody", lambda: None) is None


def test_a_request_fails_at_once_with_connection_lost_when_its_connection_closes(net):
    node, _, _ = net.node()
    listener, address = net.listener()
    timeout = 60.0
    outcome = Queue()

    def request():
        try:
            node.request(["1#" + address, "echo_service"], "never answered", timeout=timeout)
        except ConnectionLost as exc:  # not ReceiveTimeout: ended by the close
            outcome.put(exc)

    g = gevent.spawn(request)
    server_side = net.accept(listener)
    recv_frame(server_side)  # the request arrived; now the peer dies without answering
    server_side.close()
    error = outcome.get(timeout=WAIT)  # long before the request's own timeout
    g.join(WAIT)
    assert address in str(error)


# --- connection marks ----------------------------------------------------------------------------


def test_a_random_mark_names_an_accepted_connection_by_an_unguessable_local_address(net):
    node, tcp, _ = net.node(echo=True)
    seen = Queue()
    node.stop_worker("echo_service")
    node.start_worker("echo_service", Echo(seen))
    address = tcp.listen("127.0.0.1:0", mark="random")
    peer = net.connect(address)
    peer.sendall(ref_frame(["0#echo_service"], ["0#client"], bare_str("marked")))
    assert recv_frame(peer) == ref_frame(["0#client"], ["0#echo_service"], bare_str("marked"))
    mark = seen.get(timeout=WAIT).return_route[0]
    assert mark[0] == 0 and len(mark[1]) == 32
    assert node.statistics()["endpoints"] == 1
    assert tcp.connections == {}  # not reachable by 1#ip:port
    closed = Event()
    node.on_close(mark, closed.set)
    peer.close()
    assert closed.wait(WAIT)
    # The mark now stands for a client that left: a reply along it fails at once, no dialing.
    with pytest.raises(ConnectionLost):
        node.send([mark, "client"], "too late")
    assert tcp.statistics()["replies_to_gone"] == 1
    tcp.stop()
    assert node.statistics()["endpoints"] == 1  # left to the node, which clears it on stop


def test_a_request_through_an_endpoint_that_stands_for_no_connection_waits_for_its_reply(node):
    class Relay(Endpoint):  # re-routes to the echoer behind it; no connection involved
        def handle(self, message, source):
            onward, ret = message.onward_route.pop_front(), message.return_route
            node.dispatch(TransportMessage(onward, ret, message.payload))

    node.start_worker("echoer", Echo())
    node.start_endpoint("relay", Relay())
    assert node.request(["relay", "echoer"], "through", timeout=WAIT).body == "through"


def test_with_random_marks_one_client_cannot_write_into_another_clients_connection(net):
    node, tcp, _ = net.node()
    address = tcp.listen("127.0.0.1:0", mark="random")
    victim = net.connect(address)
    attacker = net.connect(address)
    victim_name = peer_name(victim.getsockname())
    attacker.sendall(ref_frame(["1#" + victim_name, "0#victim_app"], ["0#x"], bare_str("forged")))
    poll_until(lambda: node.statistics()["dropped"].get("no_connection") == 1, "the drop")
    victim.sendall(ref_frame(["0#nobody"], ["0#v"], b""))  # the victim's line still works
    poll_until(lambda: node.statistics()["dropped"].get("unknown_address") == 1, "its frame")
    victim.settimeout(0.0)
    with pytest.raises(BlockingIOError):
        victim.recv(1)  # nothing was written to the victim


def test_with_peer_marks_the_default_a_reply_goes_back_by_ip_and_port(net):
    node, tcp, address = net.node(listen=True, echo=True)
    peer = net.connect(address)
    peer.sendall(ref_frame(["0#echo_service"], ["0#client"], bare_str("hi")))
    assert recv_frame(peer) == ref_frame(["0#client"], ["0#echo_service"], bare_str("hi"))
    assert list(tcp.connections) == [peer_name(peer.getsockname())]


def test_listen_refuses_an_unknown_mark(net):
    _, tcp, _ = net.node()
    with pytest.raises(ValueError):
        tcp.listen("127.0.0.1:0", mark="sequential")


# --- outlets keyed by both routes ----------------------------------------------------------------


def test_a_chosen_return_route_on_a_route_used_before_is_not_replaced_by_the_old_one(net):
    node, _, _ = net.node()
    listener, address = net.listener()
    with node.open_context(["first", "second"]) as ctx:
        ctx.send(["1#" + address, "far"], "a")
        far = net.accept(listener)
        assert recv_frame(far) == ref_frame(["0#far"], ["0#first"], bare_str("a"))
        ctx.send(["1#" + address, "far"], "b")  # through the outlet now
        assert recv_frame(far) == ref_frame(["0#far"], ["0#first"], bare_str("b"))
        ctx.send_from_address(["1#" + address, "far"], "c", "second")
        assert recv_frame(far) == ref_frame(["0#far"], ["0#second"], bare_str("c"))
        ctx.send_from_address(["1#" + address, "far"], "d", "second")
        assert recv_frame(far) == ref_frame(["0#far"], ["0#second"], bare_str("d"))
        ctx.send(["1#" + address, "far"], "e")
        assert recv_frame(far) == ref_frame(["0#far"], ["0#first"], bare_str("e"))


def test_an_endpoint_outlet_carries_a_contexts_next_sends_until_it_declines(node):
    class Counting(Endpoint):  # handles by dispatch; offers an outlet that it can switch off
        def __init__(self):
            self.handled, self.through_outlet, self.open = [], [], True

        def handle(self, message, source):
            self.handled.append(message.payload)

        def outlet(self, route_, return_route):
            assert route_[0] == Address.parse("counting") and return_route == route("sender")

            def send(payload):
                if self.open:
                    self.through_outlet.append(payload)
                return self.open

            return send

    counting = Counting()
    node.start_endpoint("counting", counting)
    with node.open_context("sender") as ctx:
        for body in ("a", "b", "c"):
            ctx.send(["counting", "behind"], body)
        counting.open = False
        ctx.send(["counting", "behind"], "d")  # declined: the full path takes it
    assert counting.handled == [bare_str("a"), bare_str("d")]
    assert counting.through_outlet == [bare_str("b"), bare_str("c")]
    assert node.statistics()["messages_routed"] == 4


def test_an_endpoint_without_an_outlet_gets_every_message_by_dispatch(node):
    recording = Recording()
    node.start_endpoint("recording", recording)
    with node.open_context("sender") as ctx:
        for body in ("a", "b"):
            ctx.send(["recording"], body)
    got = [recording.got.get(timeout=WAIT) for _ in range(2)]
    assert [message.payload for message, _, _ in got] == [bare_str("a"), bare_str("b")]


# --- the connect policy for forwarded messages ---------------------------------------------------


def test_by_default_a_forwarded_message_goes_only_over_an_open_connection(net):
    node, tcp, address = net.node(listen=True)
    listener, target = net.listener()
    peer = net.connect(address)
    peer.sendall(ref_frame(["1#" + target, "0#echo_service"], ["0#app"], bare_str("relay me")))
    poll_until(lambda: node.statistics()["dropped"].get("no_connection") == 1, "the drop")
    assert target not in tcp.connections
    stats = tcp.statistics()
    assert "connections_opened" not in stats and "connect_failures" not in stats

    tcp.connect(target)  # opened by the application: now forwarding may use it
    far = net.accept(listener)
    peer.sendall(ref_frame(["1#" + target, "0#echo_service"], ["0#app"], bare_str("relay me")))
    frame = recv_frame(far)
    assert frame.endswith(bare_str("relay me"))


def test_a_local_sender_still_connects_on_demand(net):
    node, tcp, _ = net.node()
    listener, target = net.listener()
    node.send(["1#" + target, "far"], "local")
    assert recv_frame(net.accept(listener)) == ref_frame(["0#far"], ["0#app"], bare_str("local"))
    assert tcp.statistics()["connections_opened"] == 1


def test_dial_for_forward_with_a_list_allows_exactly_those_peers(net):
    allowed_listener, allowed = net.listener()
    _, other = net.listener()
    node, tcp, address = net.node(listen=True, dial_for_forward=[allowed])
    peer = net.connect(address)
    peer.sendall(ref_frame(["1#" + other, "0#x"], ["0#app"], bare_str("no")))
    peer.sendall(ref_frame(["1#" + allowed, "0#x"], ["0#app"], bare_str("yes")))
    assert recv_frame(net.accept(allowed_listener)).endswith(bare_str("yes"))
    assert node.statistics()["dropped"].get("no_connection") == 1
    assert other not in tcp.connections


def test_dial_for_forward_true_dials_any_peer(net):
    listener, target = net.listener()
    _, _, address = net.node(listen=True, dial_for_forward=True)
    peer = net.connect(address)
    peer.sendall(ref_frame(["1#" + target, "0#x"], ["0#app"], bare_str("anywhere")))
    assert recv_frame(net.accept(listener)).endswith(bare_str("anywhere"))


def test_a_client_of_a_peer_marked_listener_can_reach_another_client_only_by_its_open_connection(
    net,
):
    # With 1#ip:port marks, naming another client's connection is possible (it is open): the
    # reason random marks exist. Pinned here so that the README's warning stays true.
    node, tcp, address = net.node(listen=True)
    victim = net.connect(address)
    attacker = net.connect(address)
    victim_name = peer_name(victim.getsockname())
    poll_until(lambda: victim_name in tcp.connections, "the victim's connection is registered")
    attacker.sendall(ref_frame(["1#" + victim_name, "0#victim_app"], ["0#x"], bare_str("forged")))
    assert recv_frame(victim).endswith(bare_str("forged"))
