"""Confinement in the TCP transport (docs/protocol.md, section 6, "Confinement"):
``TcpTransport.listen(confine=True)``, the grants it records as it writes, ``Vouched`` sources,
and what a connection accepted on such a listener is refused.

A node M listens with confinement; client nodes connect to it. M's ``inbox`` context learns each
client's mark (the first hop of the return route of what the client sends it), and a ``Pipe``
endpoint on M re-routes what it gets to a fixed route, as a hub's forwarder does. Nothing waits
on a clock: "nothing arrived" is shown by ordering (a later message over the same connections
arrived, so an earlier one would have too), and a close at M is waited for with
``Node.on_close``.
"""

import gevent.event
import pytest

from greenockam import ReceiveTimeout, Route, TransportMessage
from greenockam.transport.base import Endpoint, Vouched

T = 10.0  # seconds: the bound on any single wait


class Pipe(Endpoint):
    """Sends everything it gets to ``route``, keeping the return route (a hub's forwarder)."""

    def __init__(self, node, route, vouch=True):
        self.node = node
        self.route = Route(route)
        self.vouch = vouch

    def handle(self, message, source):
        out = TransportMessage(self.route, message.return_route, message.payload)
        if source is None:
            self.node.dispatch(out)
        else:
            self.node.deliver([out], Vouched(source) if self.vouch else source)


class Confined:
    """M, listening with confinement, and its ``inbox`` context."""

    def __init__(self, net, mark="random", confine=True):
        self.net = net
        self.m, self.tcp, _ = net.node()
        self.address = self.tcp.listen("127.0.0.1:0", mark=mark, confine=confine)
        self.inbox = self.m.open_context("inbox")

    def client(self, name="app"):
        """A client node with a context ``name``, connected to M; returns (node, context, the
        mark M gives its connection)."""
        node, _, _ = self.net.node()
        ctx = node.context if name == "app" else node.open_context(name)
        ctx.send(self.route("inbox"), "hello")
        msg = self.inbox.receive(timeout=T)
        assert msg.return_route[1:] == Route([name])
        return node, ctx, msg.return_route[0]

    def route(self, *hops):
        return Route(["1#" + self.address, *hops])

    def pipe(self, route, vouch=True):
        """A Pipe on M to ``route``; returns the route a client sends to it along."""
        address = self.m.start_endpoint(None, Pipe(self.m, route, vouch))
        return self.route(address)

    def dropped(self, reason="confined"):
        return self.m.statistics()["dropped"].get(reason, 0)

    def closed(self, mark):
        """An Event set once M has handled the close of the connection marked ``mark``."""
        event = gevent.event.Event()
        assert self.m.on_close(mark, event.set) is not None
        return event


def nothing_waits(ctx):
    with pytest.raises(ReceiveTimeout):
        ctx.receive_nowait()


@pytest.fixture(params=["random", "peer"])
def confined(net, request):
    return Confined(net, mark=request.param)


def test_a_connection_gets_what_a_vouching_endpoint_sends_and_may_reply_along_it(confined):
    _, a, a_mark = confined.client()
    _, b, b_mark = confined.client()
    a.send(confined.pipe([b_mark, "app"]), "through the pipe")
    msg = b.receive(timeout=T)
    assert msg.body == "through the pipe"
    assert msg.return_route == Route([f"1#{confined.address}", a_mark, "app"])
    b.reply(msg, "the reply")
    answer = a.receive(timeout=T)
    assert (answer.body, answer.return_route) == (
        "the reply",
        Route([f"1#{confined.address}", b_mark, "app"]),
    )
    a.reply(answer, "and back along the mark A was handed")
    assert b.receive(timeout=T).body == "and back along the mark A was handed"
    assert confined.dropped() == 0
    assert confined.tcp.statistics()["grants"] == 2  # B holds A's mark, A holds B's


def test_a_mark_that_was_not_handed_out_reaches_nothing(confined):
    """C knows A's mark (here from the test; a guessed port or a leaked route in life) but was
    never handed it: what it sends along it is dropped and counted."""
    _, a, a_mark = confined.client()
    _, c, _ = confined.client()
    c.send(confined.route(a_mark, "app"), "unasked")
    c.send(confined.route("inbox"), "after")
    assert confined.inbox.receive(timeout=T).body == "after"
    nothing_waits(a)  # "unasked" went over the same connections, ahead of "after"
    assert confined.dropped() == 1


def test_a_grant_covers_the_hop_after_the_mark_only(confined):
    """B was handed [A's mark, app]: it may reply to A's app, not reach A's other workers."""
    a_node, a, a_mark = confined.client()
    secret = a_node.open_context("secret")
    _, b, b_mark = confined.client()
    a.send(confined.pipe([b_mark, "app"]), "hello")
    msg = b.receive(timeout=T)
    b.send(Route([msg.return_route[0], a_mark, "secret"]), "attack")
    b.reply(msg, "reply")
    assert a.receive(timeout=T).body == "reply"
    nothing_waits(secret)
    assert confined.dropped() == 1


def test_a_mark_written_into_a_return_route_and_reflected_back_grants_nothing(confined):
    """C knows A's mark and writes it into the return route of a message it routes back to
    itself through a pipe: what comes back carries [C's mark, A's mark, secret], but only the
    first hop (the one M prepended) is granted, so C still cannot reach A's secret worker."""
    a_node, _, a_mark = confined.client()
    secret = a_node.open_context("secret")
    c_node, c, c_mark = confined.client()
    back_to_c = confined.pipe([c_mark, "app"])
    message = TransportMessage(back_to_c, Route([a_mark, "secret"]), b"\x05forge")
    c.send_message(message)
    reflected = c.receive(timeout=T)
    assert reflected.return_route[1:] == Route([c_mark, a_mark, "secret"])
    c.send(confined.route(a_mark, "secret"), "attack")
    c.send(confined.route("inbox"), "after")
    assert confined.inbox.receive(timeout=T).body == "after"
    nothing_waits(secret)
    assert confined.dropped() == 1


def test_an_endpoint_that_does_not_vouch_is_confined(confined):
    _, a, _ = confined.client()
    _, b, b_mark = confined.client()
    a.send(confined.pipe([b_mark, "app"], vouch=False), "not vouched for")
    a.send(confined.pipe([b_mark, "app"]), "vouched for")
    assert b.receive(timeout=T).body == "vouched for"
    nothing_waits(b)
    assert confined.dropped() == 1


def test_a_local_sender_writes_to_any_confined_connection(confined):
    _, a, a_mark = confined.client()
    confined.m.send([a_mark, "app"], "from M's app")
    assert a.receive(timeout=T).body == "from M's app"
    assert confined.dropped() == 0


def test_a_connection_may_send_along_its_own_mark(confined):
    """The echo pattern: a service answers along the sender's own return route."""
    _, a, a_mark = confined.client()
    a.send(confined.pipe([a_mark, "app"], vouch=False), "to myself")
    assert a.receive(timeout=T).body == "to myself"
    assert confined.dropped() == 0


def test_grants_are_bounded_per_connection_least_recent_forgotten_first(confined):
    confined.tcp.max_grants = 2
    a_node, a, _ = confined.client()
    _, b, b_mark = confined.client()
    pipe = confined.pipe([b_mark, "app"])
    workers = {name: a_node.open_context(name) for name in ("w1", "w2", "w3")}
    for name in workers:
        a.send_message(TransportMessage(pipe, Route([name]), b"\x01x"))
    received = [b.receive(timeout=T) for _ in workers]
    assert confined.tcp.statistics()["grants"] == 2  # B holds A's mark with w2 and w3
    for msg in received:
        b.reply(msg, "y")
    assert [workers[name].receive(timeout=T).body for name in ("w2", "w3")] == ["y", "y"]
    nothing_waits(workers["w1"])  # its reply went first, over the same connections
    assert confined.dropped() == 1


def test_a_grant_taken_back_refuses_the_very_routes_it_let_through_before(confined):
    """B replies along its grant, then along the same routes once that grant is forgotten
    (a newer one took its place): the second reply is refused, although it repeats the first
    byte for byte."""
    confined.tcp.max_grants = 1
    a_node, a, _ = confined.client()
    _, b, b_mark = confined.client()
    pipe = confined.pipe([b_mark, "app"])
    w1, w2 = a_node.open_context("w1"), a_node.open_context("w2")
    a.send_message(TransportMessage(pipe, Route(["w1"]), b"\x01x"))
    first = b.receive(timeout=T)
    b.reply(first, "admitted")
    assert w1.receive(timeout=T).body == "admitted"
    a.send_message(TransportMessage(pipe, Route(["w2"]), b"\x01x"))  # B's grant is now w2's
    second = b.receive(timeout=T)
    b.reply(first, "refused")
    b.reply(second, "admitted")
    assert w2.receive(timeout=T).body == "admitted"
    nothing_waits(w1)  # its reply went first, over the same connections
    assert confined.dropped() == 1


def test_the_grants_of_a_connection_go_when_it_closes_and_so_do_the_grants_naming_it(
    confined,
):
    a_node, a, a_mark = confined.client()
    _, b, b_mark = confined.client()
    _, c, c_mark = confined.client()
    for peer_mark in (b_mark, c_mark):
        a.send(confined.pipe([peer_mark, "app"]), "hello")
    for ctx in (b, c):
        ctx.reply(ctx.receive(timeout=T), "reply")
    for _ in range(2):
        a.receive(timeout=T)
    stats = confined.tcp.statistics()
    assert (stats["confined_connections"], stats["grants"]) == (3, 4)
    closed = confined.closed(a_mark)
    a_node.stop(timeout=2)
    assert closed.wait(T)
    stats = confined.tcp.statistics()
    assert (stats["confined_connections"], stats["grants"]) == (2, 0)


def test_without_confinement_any_known_mark_is_written(net):
    control = Confined(net, confine=False)
    _, a, a_mark = control.client()
    _, c, _ = control.client()
    c.send(control.route(a_mark, "app"), "unasked")
    assert a.receive(timeout=T).body == "unasked"
    assert control.tcp.statistics()["confined_connections"] == 0


def test_a_write_on_a_closed_connection_is_dropped_and_counted(net):
    node, tcp, _ = net.node()
    _, _, address = net.node(listen=True)
    conn = tcp.connect(address)
    conn.close("test")
    before = node.statistics()["dropped"].get("connection_closed", 0)
    conn.write(b"\x00\x00")
    assert node.statistics()["dropped"]["connection_closed"] == before + 1
