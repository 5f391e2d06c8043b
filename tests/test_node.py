"""The Node: workers as greenlets, mailboxes, the router greenlet, request/response and lifecycle.

Everything here runs real greenlets on a real Node: no mocks, no monkey-patching. Tests wait on
replies and gevent Events, never on sleep(); every wait has a timeout, so a broken node fails a test
instead of hanging it. The only stand-ins are two tiny recording classes for what a transport
provides (a ``Source`` for ``Node.deliver`` and a ``Transport`` for ``register_transport``).
"""

import json
import re
import time

import gevent
import pytest
from gevent import getcurrent
from gevent.event import Event
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger

from greenockam import (
    BARE,
    RAW,
    Address,
    AddressError,
    AddressInUse,
    MailboxFull,
    Node,
    NodeStopped,
    ReceiveTimeout,
    RemoteProtocolError,
    RouteError,
    Routed,
    TransportMessage,
    UnknownAddress,
    Worker,
    WorkerInitError,
)
from greenockam.address import Route
from helpers import Echo, LogCapture, RecordingSource, live_greenlets, poll_until

pytestmark = pytest.mark.timeout(60)

WAIT = 5.0  # upper bound for anything that should happen "at once"


# --- helpers: small real workers and stand-ins ----------------------------------------------------


def route(*addresses):
    return Route(list(addresses))


def wait(event, what, timeout=WAIT):
    assert event.wait(timeout), f"timed out waiting for {what}"


class Recorder(Worker):
    """Keeps every message; ``done`` is set once ``expected`` have arrived."""

    def __init__(self, expected=1, message_type=str):
        self.message_type = message_type
        self.expected = expected
        self.messages = []
        self.done = Event()

    def handle_message(self, ctx, msg):
        msg.body  # noqa: B018 (reads the body: a payload that is not message_type raises here)
        self.messages.append(msg)
        if len(self.messages) >= self.expected:
            self.done.set()

    @property
    def bodies(self):
        return [m.body for m in self.messages]


class Hooks(Worker):
    """Records every hook call with the context and greenlet it ran in."""

    def __init__(self):
        self.calls = []
        self.handled = Event()
        self.shut_down = Event()

    def initialize(self, ctx):
        self.calls.append(("initialize", ctx, getcurrent()))

    def handle_message(self, ctx, msg):
        self.calls.append(("handle_message", ctx, getcurrent()))
        self.handled.set()

    def shutdown(self, ctx):
        self.calls.append(("shutdown", ctx, getcurrent()))
        self.shut_down.set()


class Blocker(Worker):
    """Its first message blocks in the handler until ``gate`` is set (``entered`` tells when);
    ``done`` is set once ``expected`` messages have been handled."""

    def __init__(self, message_type=str, gate_timeout=WAIT, expected=None):
        self.message_type = message_type
        self.entered = Event()
        self.gate = Event()
        self.done = Event()
        self.gate_timeout = gate_timeout
        self.expected = expected
        self.bodies = []
        self.shutdowns = 0
        self.greenlet = None  # the worker's greenlet, once its first message entered

    def handle_message(self, ctx, msg):
        if not self.entered.is_set():
            self.greenlet = getcurrent()
            self.entered.set()
            self.gate.wait(self.gate_timeout)
        self.bodies.append(msg.body)
        if len(self.bodies) == self.expected:
            self.done.set()

    def shutdown(self, ctx):
        self.shutdowns += 1


class Silent(Worker):
    """Never answers."""

    def handle_message(self, ctx, msg):
        pass


class RecordingTransport:
    """What ``register_transport`` needs: send(message, source) and stop(timeout)."""

    def __init__(self):
        self.sent = []
        self.stops = []
        self.got = Event()

    def send(self, message, source):
        self.sent.append((message, source))
        self.got.set()

    def outlet(self, route, return_route):
        return None

    def on_close(self, address, callback):
        return None

    def stop(self, timeout):
        self.stops.append(timeout)


def network_message(onward, body="x", return_route=("1#127.0.0.1:54321", "app")):
    payload = body if isinstance(body, bytes) else BARE.encode(body)
    return TransportMessage(Route(list(onward)), Route(list(return_route)), payload)


def depth(node, address):
    return node.statistics()["mailbox_depths"].get(str(Address.parse(address)), 0)


@pytest.fixture
def log_records():
    """greenockam's logging during one test, as a list of loguru records."""
    capture = LogCapture("DEBUG")
    try:
        yield capture.records
    finally:
        capture.close()


def kill_warnings(records):
    """The warnings of workers that did not stop in time and were killed (Node.stop and
    Node.stop_worker log one when they kill)."""
    return [r["message"] for r in records if "did not stop within" in r["message"]]


# --- the node owns workers, mailboxes and a router greenlet ---------------------------------------


def test_a_new_node_runs_a_router_greenlet_and_has_the_app_context(node):
    assert node.running
    node.deliver([network_message(["app"], "through the router")], RecordingSource())
    assert node.receive(timeout=WAIT).body == "through the router"
    assert node.address == Address(0, "app")
    assert node.context.address == node.address
    assert node.statistics()["workers"] == 0


def test_local_send_puts_a_type_0_message_into_that_workers_mailbox(node):
    rec = Recorder(expected=3)
    node.start_worker("rec", rec)

    node.send(["rec"], "bare name")
    node.send(["0#rec"], "explicit type")
    node.send(route(Address(0, "rec")), "Address object")

    wait(rec.done, "three messages")
    assert rec.bodies == ["bare name", "explicit type", "Address object"]
    assert node.statistics()["workers"] == 1


def test_local_send_to_an_unknown_local_address_raises_unknown_address(node):
    with pytest.raises(UnknownAddress):
        node.send(["nobody"], "x")


@pytest.mark.parametrize("next_hop", ["1#127.0.0.1:10222", "7#somewhere"])
def test_local_send_to_a_type_without_a_registered_transport_raises_unknown_address(node, next_hop):
    with pytest.raises(UnknownAddress):
        node.send([next_hop, "echoer"], "x")


def test_local_send_along_an_empty_route_raises_route_error(node):
    with pytest.raises(RouteError):
        node.send([], "x")


def test_a_registered_transport_gets_messages_of_its_type_from_local_and_network_senders(node):
    transport = RecordingTransport()
    node.register_transport(7, transport)

    node.send(["7#far", "echoer"], "hi")
    assert len(transport.sent) == 1
    msg, source = transport.sent[0]
    assert source is None  # a local sender
    assert msg.onward_route == route("7#far", "echoer")  # not popped: that is the transport's job
    assert msg.return_route == route("app")
    assert msg.payload == BARE.encode("hi")

    transport.got.clear()
    src = RecordingSource()
    node.deliver([network_message(["7#far", "echoer"])], src)
    wait(transport.got, "the router to hand the message to the transport")
    assert transport.sent[1][1] is src

    with pytest.raises(ValueError):
        node.register_transport(7, RecordingTransport())
    with pytest.raises(ValueError):
        node.register_transport(0, RecordingTransport())

    node.stop(timeout=1.0)
    assert transport.stops == [1.0]


def test_network_messages_with_nowhere_to_go_are_dropped_and_counted_and_the_node_keeps_working(
    node,
):
    node.start_worker("echoer", Echo(message_type=RAW))
    src = RecordingSource()

    node.deliver(
        [
            network_message(["nobody"]),
            network_message(["9#far", "echoer"]),
            network_message([]),
            network_message(["nobody", "echoer"]),
        ],
        src,
    )
    # The router handles batches in order: once this one is echoed, the one before was routed.
    node.deliver([network_message(["echoer"], "canary", return_route=["app"])], src)
    assert node.receive(timeout=WAIT).body == "canary"

    dropped = node.statistics()["dropped"]
    assert dropped == {"unknown_address": 2, "unknown_transport": 1, "empty_route": 1}
    assert node.request(["echoer"], "still working", timeout=WAIT).body == "still working"


def test_a_network_message_keeps_the_return_route_its_transport_gave_it(node):
    rec = Recorder()
    node.start_worker("rec", rec)
    node.deliver([network_message(["rec"], "hello")], RecordingSource())
    wait(rec.done, "the delivered message")
    msg = rec.messages[0]
    assert msg.body == "hello"
    assert msg.onward_route == route("rec")
    assert msg.return_route == route("1#127.0.0.1:54321", "app")


# --- workers --------------------------------------------------------------------------------------


def test_worker_hooks_run_in_order_in_the_workers_own_greenlet(node):
    hooks = Hooks()
    address = node.start_worker("hooked", hooks)
    assert address == Address(0, "hooked")
    assert [c[0] for c in hooks.calls] == ["initialize"]  # initialize ran before start returned

    node.send(["hooked"], "x")
    wait(hooks.handled, "handle_message")
    node.stop_worker("hooked")
    assert hooks.shut_down.is_set()  # stop_worker waits for shutdown

    assert [c[0] for c in hooks.calls] == ["initialize", "handle_message", "shutdown"]
    contexts = {c[1] for c in hooks.calls}
    greenlets = {c[2] for c in hooks.calls}
    assert len(contexts) == 1 and contexts.pop().address == address
    assert len(greenlets) == 1
    worker_greenlet = greenlets.pop()
    assert worker_greenlet is not getcurrent()


def test_messages_to_one_worker_are_handled_one_at_a_time_in_arrival_order(node):
    class Ordered(Worker):
        message_type = int

        def __init__(self):
            self.bodies = []
            self.active = self.max_active = 0
            self.done = Event()

        def handle_message(self, ctx, msg):
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            gevent.sleep(0)  # a yield point: lets anything else run mid-handler (not a wait)
            self.bodies.append(msg.body)
            self.active -= 1
            if len(self.bodies) == 1000:
                self.done.set()

    worker = Ordered()
    node.start_worker("ordered", worker)
    for i in range(1000):
        node.send(["ordered"], i)
    wait(worker.done, "1000 messages")
    assert worker.bodies == list(range(1000))
    assert worker.max_active == 1


def test_a_worker_with_several_addresses_receives_on_each_and_replies_from_the_first(node):
    class WhoAmI(Worker):
        def handle_message(self, ctx, msg):
            ctx.reply(msg, f"{msg.address}|{msg.onward_route}|{msg.body}")

    primary = node.start_worker(["first", "second", "0#third"], WhoAmI())
    assert primary == Address(0, "first")

    for name in ("first", "second", "third"):
        node.send([name], name)
        reply = node.receive(timeout=WAIT)
        assert reply.body == f"0#{name}|0#{name}|{name}"
        assert reply.return_route == route("first")
    assert node.statistics()["workers"] == 1


def test_starting_a_worker_on_an_address_in_use_raises_address_in_use(node):
    node.start_worker("taken", Silent())
    with pytest.raises(AddressInUse):
        node.start_worker("taken", Silent())
    with pytest.raises(AddressInUse):
        node.start_worker(["fresh", "taken"], Silent())
    with pytest.raises(AddressInUse):
        node.start_worker("app", Silent())  # the node's own address
    # The refused start claimed nothing: "fresh" is still free.
    with pytest.raises(UnknownAddress):
        node.send(["fresh"], "x")
    assert node.start_worker("fresh", Silent()) == Address(0, "fresh")
    assert node.statistics()["workers"] == 2


def test_a_worker_address_must_be_local(node):
    with pytest.raises(AddressError):
        node.start_worker("1#127.0.0.1:4000", Silent())
    with pytest.raises(AddressError):
        node.start_worker([], Silent())
    with pytest.raises(TypeError):
        node.start_worker("not_a_worker", object())
    assert node.statistics()["workers"] == 0


def test_start_worker_with_no_address_gives_a_random_32_hex_address(node):
    first = node.start_worker(None, Echo(message_type=RAW))
    second = node.start_worker(None, Echo(message_type=RAW))
    for address in (first, second):
        assert address.type == 0
        assert re.fullmatch(r"[0-9a-f]{32}", address.value)
    assert first != second
    assert node.request([first], "hi", timeout=WAIT).body == "hi"


def test_stop_worker_runs_shutdown_and_every_address_of_it_becomes_unknown(node):
    hooks = Hooks()
    node.start_worker(["gone", "gone_too"], hooks)
    node.stop_worker("gone_too")

    assert hooks.shut_down.is_set()
    for name in ("gone", "gone_too"):
        with pytest.raises(UnknownAddress):
            node.send([name], "x")
    with pytest.raises(UnknownAddress):
        node.stop_worker("gone")
    assert node.statistics()["workers"] == 0
    node.start_worker("gone", Silent())  # the address can be used again


def test_stop_worker_kills_a_handler_that_never_returns_and_still_runs_shutdown(node, log_records):
    blocker = Blocker(gate_timeout=None)
    node.start_worker("stuck", blocker)
    node.send(["stuck"], "x")
    wait(blocker.entered, "the handler to block")

    started = time.monotonic()
    node.stop_worker("stuck", timeout=0.2)
    elapsed = time.monotonic() - started

    assert elapsed >= 0.15  # it waited for the timeout first
    assert len(kill_warnings(log_records)) == 1
    assert blocker.greenlet is not None and blocker.greenlet.dead
    assert blocker.shutdowns == 1
    assert node.statistics()["workers"] == 0


# --- Routed: what a worker sees -------------------------------------------------------------------


@pytest.mark.parametrize(
    "message_type, sent, expected",
    [
        (str, "héllo wörld", "héllo wörld"),
        (bytes, b"\x00\xff raw data", b"\x00\xff raw data"),
        (int, 2**64 - 1, 2**64 - 1),
        (RAW, "hi", b"\x02hi"),  # RAW: the payload as it is, length prefix included
    ],
    ids=["str", "bytes", "int", "RAW"],
)
def test_routed_body_is_decoded_with_the_workers_message_type(node, message_type, sent, expected):
    rec = Recorder(message_type=message_type)
    node.start_worker("typed", rec)
    node.send(["typed"], sent)
    wait(rec.done, "the message")

    msg = rec.messages[0]
    assert isinstance(msg, Routed)
    assert msg.body == expected and type(msg.body) is type(expected)
    assert msg.payload == BARE.encode(sent) and type(msg.payload) is bytes
    assert msg.address == Address(0, "typed")


def test_a_worker_that_sets_no_message_type_gets_str_bodies(node):
    class Plain(Worker):
        def __init__(self):
            self.bodies = []
            self.got = Event()

        def handle_message(self, ctx, msg):
            self.bodies.append(msg.body)
            self.got.set()

    plain = Plain()
    node.start_worker("plain", plain)
    node.send(["plain"], "text")
    wait(plain.got, "the message")
    assert plain.bodies == ["text"] and Worker.message_type is str


def test_routed_shows_the_worker_at_the_front_of_the_onward_route_and_reply_is_the_return_route(
    node,
):
    rec = Recorder()
    node.start_worker("dest", rec)
    node.send(["dest", "further", "1#127.0.0.1:4000"], "x")
    wait(rec.done, "the message")

    msg = rec.messages[0]
    assert msg.onward_route == route("dest", "further", "1#127.0.0.1:4000")
    assert msg.onward_route[0] == msg.address == Address(0, "dest")
    assert msg.return_route == route("app")
    assert msg.reply() == msg.return_route
    assert msg.transport_message.onward_route == msg.onward_route


@settings(max_examples=40, deadline=None)
@given(
    body=st.one_of(
        st.text(max_size=200), st.binary(max_size=200), st.integers(0, 2**64 - 1), st.booleans()
    )
)
def test_any_supported_body_round_trips_through_an_echo_worker(body):
    with Node() as node:
        node.start_worker("echoer", Echo(message_type=RAW))
        reply = node.request(["echoer"], body, timeout=WAIT, message_type=type(body))
        assert reply.body == body and type(reply.body) is type(body)


def test_middleware_chain_forwards_and_the_reply_comes_back_through_the_same_hops(node):
    class Hop(Worker):
        message_type = RAW  # middleware does not look at the payload

        def __init__(self):
            self.seen = []

        def handle_message(self, ctx, msg):
            self.seen.append((msg.onward_route, msg.return_route))
            ctx.forward(msg)

    class SeeingEcho(Worker):
        def __init__(self):
            self.seen = []

        def handle_message(self, ctx, msg):
            self.seen.append((msg.onward_route, msg.return_route))
            ctx.reply(msg, msg.body + " back")

    hops = {name: Hop() for name in "abc"}
    for name, hop in hops.items():
        node.start_worker(name, hop)
    echo = SeeingEcho()
    node.start_worker("echoer", echo)

    node.send(["a", "b", "c", "echoer"], "there")
    reply = node.receive(timeout=WAIT)

    assert reply.body == "there back"
    assert reply.onward_route == route("app")
    assert reply.return_route == route("a", "b", "c", "echoer")
    assert echo.seen == [(route("echoer"), route("c", "b", "a", "app"))]
    assert hops["a"].seen == [
        (route("a", "b", "c", "echoer"), route("app")),
        (route("a", "app"), route("b", "c", "echoer")),
    ]
    assert hops["b"].seen == [
        (route("b", "c", "echoer"), route("a", "app")),
        (route("b", "a", "app"), route("c", "echoer")),
    ]
    assert hops["c"].seen == [
        (route("c", "echoer"), route("b", "a", "app")),
        (route("c", "b", "a", "app"), route("echoer")),
    ]


def test_forward_refuses_a_message_whose_next_hop_is_not_this_context(node):
    rec = Recorder()
    node.start_worker("rec", rec)
    node.send(["rec"], "x")
    wait(rec.done, "the message")
    with pytest.raises(RouteError):
        node.context.forward(rec.messages[0])  # onward route starts with rec, not app


# --- Context: send, receive, request --------------------------------------------------------------


def test_receive_times_out_with_receive_timeout(node):
    started = time.monotonic()
    with pytest.raises(ReceiveTimeout):
        node.receive(timeout=0.1)
    assert time.monotonic() - started >= 0.09  # not before its timeout
    assert issubclass(ReceiveTimeout, TimeoutError)


def test_receive_nowait_raises_receive_timeout_when_empty_and_returns_a_waiting_message(node):
    with pytest.raises(ReceiveTimeout):
        node.receive_nowait()
    node.send(["app"], "to myself")
    msg = node.receive_nowait()
    assert msg.body == "to myself"
    assert msg.return_route == route("app")
    with pytest.raises(ReceiveTimeout):
        node.receive_nowait()


def test_receive_can_decode_with_another_message_type(node):
    node.send(["app"], 42)
    assert node.receive(timeout=WAIT, message_type=int).body == 42


def test_request_returns_the_reply_and_removes_its_temporary_address(node):
    node.start_worker("echoer", Echo(message_type=RAW))
    contexts_before = node.statistics()["contexts"]
    routed_before = node.statistics()["messages_routed"]

    reply = node.request(["echoer"], "ping", timeout=WAIT)

    assert reply.body == "ping"
    assert reply.return_route == route("echoer")
    temp = reply.onward_route[0]
    assert re.fullmatch(r"[0-9a-f]{32}", temp.value)  # sent from a temporary address...
    assert node.statistics()["contexts"] == contexts_before  # ...which is gone again
    with pytest.raises(UnknownAddress):
        node.send([temp], "late")
    assert node.statistics()["messages_routed"] == routed_before + 2


def test_request_to_a_worker_that_never_answers_times_out_and_removes_its_temporary_address(node):
    node.start_worker("silent", Silent())
    contexts_before = node.statistics()["contexts"]

    started = time.monotonic()
    with pytest.raises(ReceiveTimeout):
        node.request(["silent"], "anyone?", timeout=0.2)
    elapsed = time.monotonic() - started

    assert elapsed >= 0.19  # not before its timeout
    assert node.statistics()["contexts"] == contexts_before
    assert node.statistics()["mailbox_depths"] == {}


def test_a_handler_can_request_from_another_worker(node):
    class Asker(Worker):
        def handle_message(self, ctx, msg):
            answer = ctx.request(["echoer"], msg.body.upper(), timeout=WAIT)
            ctx.reply(msg, "asked: " + answer.body)

    node.start_worker("echoer", Echo(message_type=RAW))
    node.start_worker("asker", Asker())
    assert node.request(["asker"], "hi", timeout=WAIT).body == "asked: HI"


def test_a_handler_can_receive_the_next_message_of_its_own_mailbox(node):
    class Pair(Worker):
        def handle_message(self, ctx, msg):
            second = ctx.receive(timeout=WAIT)
            ctx.reply(msg, msg.body + second.body)

    node.start_worker("pair", Pair())
    node.send(["pair"], "ab")
    node.send(["pair"], "cd")
    assert node.receive(timeout=WAIT).body == "abcd"


def test_a_send_from_a_handler_carries_the_workers_address_as_return_route(node):
    class Relay(Worker):
        def handle_message(self, ctx, msg):
            ctx.send(["rec"], "relayed " + msg.body)

    rec = Recorder()
    node.start_worker("rec", rec)
    relay = node.start_worker(None, Relay())
    node.send([relay], "x")
    wait(rec.done, "the relayed message")
    assert rec.messages[0].body == "relayed x"
    assert rec.messages[0].return_route == route(relay) == Route([f"0#{relay.value}"])


# --- failure isolation ----------------------------------------------------------------------------


class Crashy(Worker):
    def handle_message(self, ctx, msg):
        if msg.body == "crash":
            raise ValueError("boom in handler")
        ctx.reply(msg, "ok: " + msg.body)


def test_a_handler_exception_is_logged_with_traceback_and_the_worker_goes_on(node, log_records):
    node.start_worker("crashy", Crashy())
    node.send(["crashy"], "crash")
    assert node.request(["crashy"], "next", timeout=WAIT).body == "ok: next"

    assert node.statistics()["handler_errors"] == 1
    errors = [r for r in log_records if r["level"].name == "ERROR"]
    assert len(errors) == 1
    record = errors[0]
    assert record["name"].startswith("greenockam")
    assert "0#crashy" in record["message"]
    # The traceback is part of the message, formatted without the values of local variables
    # (a sink with diagnose=True would print those, payloads included).
    assert "Traceback (most recent call last)" in record["message"]
    assert "ValueError: boom in handler" in record["message"]
    assert "handle_message" in record["message"]
    assert record["exception"] is None


def test_handler_errors_are_counted_per_failure(node):
    node.start_worker("crashy", Crashy())
    for _ in range(3):
        node.send(["crashy"], "crash")
    assert node.request(["crashy"], "after", timeout=WAIT).body == "ok: after"
    assert node.statistics()["handler_errors"] == 3


def test_a_failing_initialize_raises_worker_init_error_and_only_that_worker_is_gone(node):
    class BadInit(Worker):
        def initialize(self, ctx):
            raise RuntimeError("cannot start")

        def handle_message(self, ctx, msg):  # pragma: no cover - never reached
            pass

    node.start_worker("echoer", Echo(message_type=RAW))
    with pytest.raises(WorkerInitError, match="cannot start"):
        node.start_worker("bad", BadInit())

    assert node.statistics()["workers"] == 1
    with pytest.raises(UnknownAddress):
        node.send(["bad"], "x")
    assert node.request(["echoer"], "unaffected", timeout=WAIT).body == "unaffected"
    node.start_worker("bad", Echo(message_type=RAW))  # the address is free again
    assert node.request(["bad"], "reused", timeout=WAIT).body == "reused"


@pytest.mark.parametrize(
    "message_type, bad_payload",
    [(str, b"\x02\xff\xfe"), (int, b"\x01\x02\x03"), (bytes, b"\x05ab")],
    ids=["invalid-utf8", "short-u64", "truncated-bytes"],
)
def test_a_bad_payload_is_dropped_and_counted_and_the_worker_goes_on(
    node, message_type, bad_payload
):
    rec = Recorder(message_type=message_type)
    node.start_worker("typed", rec)
    good = {str: "fine", int: 7, bytes: b"fine"}[message_type]

    node.context.send_payload(["typed"], bad_payload)
    node.send(["typed"], good)
    wait(rec.done, "the good message")

    assert rec.bodies == [good]  # reading the bad one's body ended its handling
    stats = node.statistics()
    assert stats["dropped"] == {"bad_payload": 1}
    assert stats["handler_errors"] == 0


def test_a_worker_that_only_forwards_passes_on_payloads_that_are_not_its_message_type(node):
    class Forwarder(Worker):  # message_type is str, the default; the handler never reads body
        def handle_message(self, ctx, msg):
            ctx.forward(msg)

    node.start_worker("middle", Forwarder())
    with node.open_context("end", message_type=RAW) as end:
        for payload in (b"\x02\xff\xfe", (7).to_bytes(8, "little"), b"\x00"):
            node.context.send_payload(["middle", "end"], payload)
            msg = end.receive(timeout=WAIT)
            assert msg.body == payload
            assert msg.return_route == route("middle", "app")
    assert node.statistics()["dropped"] == {}


def test_a_bad_payload_from_the_network_is_dropped_and_counted_too(node):
    rec = Recorder()
    node.start_worker("rec", rec)
    node.deliver(
        [network_message(["rec"], b"\x02\xff\xfe"), network_message(["rec"], "fine")],
        RecordingSource(),
    )
    wait(rec.done, "the good message")
    assert rec.bodies == ["fine"]
    assert node.statistics()["dropped"] == {"bad_payload": 1}


def test_a_handler_that_raises_node_stopped_while_its_node_runs_is_a_handler_error_not_the_end(
    node, log_records
):
    # e.g. the handler talks to another node (or a transport) that was stopped
    other = Node()
    other.stop()

    class Bridge(Worker):
        def handle_message(self, ctx, msg):
            if msg.body == "bridge":
                other.send(["anyone"], "x")
            ctx.reply(msg, "ok: " + msg.body)

    node.start_worker("bridge", Bridge())
    node.send(["bridge"], "bridge")
    assert node.request(["bridge"], "still here", timeout=WAIT).body == "ok: still here"
    assert node.statistics()["handler_errors"] == 1
    errors = [r for r in log_records if r["level"].name == "ERROR"]
    assert len(errors) == 1 and "NodeStopped" in errors[0]["message"]


# --- bounded mailboxes ----------------------------------------------------------------------------


def test_a_local_send_into_a_full_mailbox_raises_mailbox_full_and_memory_stays_bounded():
    with Node(mailbox_size=10) as node:
        blocker = Blocker(message_type=int, expected=11)
        node.start_worker("slow", blocker)
        node.send(["slow"], 0)
        wait(blocker.entered, "the handler to block")  # message 0 left the mailbox

        for i in range(1, 11):
            node.send(["slow"], i)  # fills the mailbox exactly
        full = 0
        for i in range(11, 1011):
            with pytest.raises(MailboxFull):
                node.send(["slow"], i)
            full += 1

        stats = node.statistics()
        assert stats["mailbox_depths"] == {"0#slow": 10}
        assert stats["dropped"] == {"mailbox_full": full} == {"mailbox_full": 1000}

        # Once the worker drains its mailbox, it accepts again.
        blocker.gate.set()
        wait(blocker.done, "the mailbox to drain")
        assert blocker.bodies == list(range(11))
        assert depth(node, "slow") == 0
        node.send(["slow"], 2000)


def test_network_delivery_past_a_full_mailbox_pauses_the_source_and_draining_to_half_resumes_it():
    with Node(mailbox_size=10, source_share=10) as node:  # the mailbox bound alone
        blocker = Blocker(message_type=int, expected=16)
        node.start_worker("slow", blocker)
        src = RecordingSource(depth=lambda: depth(node, "slow"))

        node.deliver([network_message(["slow"], 0)], src)
        wait(blocker.entered, "the handler to block")
        node.deliver([network_message(["slow"], i) for i in range(1, 16)], src)
        wait(src.paused, "the source to be paused")

        # Messages from the network are never refused: the connection is paused instead.
        assert depth(node, "slow") == 15
        assert src.calls == ["pause"]
        assert src.depths == [11]  # paused as the mailbox went past mailbox_size
        assert node.statistics()["dropped"] == {}

        blocker.gate.set()
        wait(src.resumed, "the source to be resumed")
        wait(blocker.done, "every message")
        assert src.calls == ["pause", "resume"]
        assert src.depths == [11, 5]  # resumed once drained to half of mailbox_size
        assert blocker.bodies == list(range(16))


def test_a_flooding_source_is_paused_past_its_share_while_another_source_is_not():
    with Node(mailbox_size=64, source_share=8) as node:
        blocker = Blocker(message_type=int, expected=42)
        node.start_worker("shared", blocker)
        flood = RecordingSource("10.0.0.1:1", depth=lambda: depth(node, "shared"))
        polite = RecordingSource("10.0.0.2:1")
        node.deliver([network_message(["shared"], 0)], flood)
        wait(blocker.entered, "the handler to block")
        node.deliver([network_message(["shared"], i) for i in range(1, 40)], flood)
        node.deliver([network_message(["shared"], 100)], polite)
        node.deliver([network_message(["shared"], 101)], polite)
        wait(flood.paused, "the flooding source to be paused")
        # Held once it had added more than 8 to a mailbox already holding more than 8: long
        # before the mailbox bound of 64 that alone held it before.
        assert flood.depths == [17]
        assert polite.calls == []  # its two messages did not cost it its turn
        blocker.gate.set()
        wait(blocker.done, "every message")
        assert flood.calls == ["pause", "resume"]
        assert flood.depths == [17, 32]  # resumed once drained to half of mailbox_size
        assert sorted(blocker.bodies) == list(range(40)) + [100, 101]
        assert node.statistics()["dropped"] == {}


def test_the_counts_past_the_share_start_again_once_the_mailbox_is_drained_to_half_the_share():
    with Node(mailbox_size=64, source_share=8) as node, node.open_context("sink") as sink:
        src = RecordingSource(depth=lambda: depth(node, "sink"))
        node.deliver([network_message(["sink"], str(i)) for i in range(12)], src)
        poll_until(lambda: depth(node, "sink") == 12, "the first twelve to arrive")
        # 4 of them were counted past the share of 8: not enough to hold the source.
        for _ in range(8):
            sink.receive(timeout=WAIT)  # down to 4, half the share: the counts start again
        node.deliver([network_message(["sink"], str(i)) for i in range(12, 24)], src)
        poll_until(lambda: depth(node, "sink") == 16, "the next twelve to arrive")
        # 8 more counted past the share: within it, but 12 had the first 4 still counted.
        assert src.calls == []
        assert [sink.receive(timeout=WAIT).body for _ in range(16)] == [
            str(i) for i in range(8, 24)
        ]


def test_a_stop_signal_is_raised_in_its_turn_even_when_messages_behind_it_start_the_counts():
    with Node(mailbox_size=64, source_share=8) as node, node.open_context("sink") as sink:
        sink.interrupt()  # receives now raise NodeStopped
        src = RecordingSource(depth=lambda: depth(node, "sink"))
        node.deliver([network_message(["sink"], str(i)) for i in range(12)], src)
        poll_until(lambda: depth(node, "sink") == 13, "the twelve to arrive")
        assert src.calls == []  # counted past the share (5 of them), not held
        with pytest.raises(NodeStopped):
            sink.receive(timeout=WAIT)  # the signal came first: no shortcut past it


def test_the_share_cannot_exceed_the_mailbox_and_must_be_positive():
    with Node(mailbox_size=10, source_share=100) as node:
        assert node.source_share == 10
    with Node(mailbox_size=4096) as node:
        assert node.source_share == 1024
    with pytest.raises(ValueError):
        Node(source_share=0)


def test_stopping_a_worker_resumes_the_sources_paused_on_its_mailbox():
    with Node(mailbox_size=2) as node:
        blocker = Blocker()
        node.start_worker("slow", blocker)
        src = RecordingSource()
        node.deliver([network_message(["slow"], "first")], src)
        wait(blocker.entered, "the handler to block")
        node.deliver([network_message(["slow"], "more") for _ in range(5)], src)
        wait(src.paused, "the source to be paused")

        blocker.gate.set()
        node.stop_worker("slow")
        assert "resume" in src.calls


def test_two_workers_flooding_each_other_do_not_deadlock_the_node(log_records):
    class Flooder(Worker):
        def __init__(self, peer):
            self.peer = peer
            self.handled = 0
            self.refused = 0
            self.flooding = Event()

        def handle_message(self, ctx, msg):
            self.handled += 1
            for _ in range(2):
                try:
                    ctx.send([self.peer], "flood")
                except MailboxFull:
                    self.refused += 1
                    self.flooding.set()

    before = live_greenlets()
    node = Node(mailbox_size=10)
    try:
        ping, pong = Flooder("pong"), Flooder("ping")
        node.start_worker("echoer", Echo(message_type=RAW))
        node.start_worker("ping", ping)
        node.start_worker("pong", pong)

        node.send(["ping"], "go")
        wait(ping.flooding, "ping to hit a full mailbox")
        wait(pong.flooding, "pong to hit a full mailbox")

        for i in range(3):
            assert node.request(["echoer"], f"alive {i}", timeout=WAIT).body == f"alive {i}"
        depths = node.statistics()["mailbox_depths"]
        assert all(n <= 10 for n in depths.values())
        assert node.statistics()["dropped"]["mailbox_full"] == ping.refused + pong.refused
    finally:
        node.stop(timeout=WAIT)
    assert kill_warnings(log_records) == []  # both workers ended when asked, none was killed
    assert not live_greenlets() - before  # the router and both workers ended


# --- lifecycle ------------------------------------------------------------------------------------


def test_ten_thousand_workers_start_and_stop_cleanly():
    class Counted(Worker):
        inits = handled = shutdowns = 0
        all_handled = Event()

        def initialize(self, ctx):
            Counted.inits += 1

        def handle_message(self, ctx, msg):
            Counted.handled += 1
            if Counted.handled == 10_000:
                Counted.all_handled.set()

        def shutdown(self, ctx):
            Counted.shutdowns += 1

    before = live_greenlets()
    node = Node()
    try:
        for i in range(10_000):
            node.start_worker(f"w{i}", Counted())
        assert node.statistics()["workers"] == 10_000
        assert len(live_greenlets() - before) == 10_001  # the workers and the router
        for i in range(10_000):
            node.send([f"w{i}"], "hi")
        wait(Counted.all_handled, "every worker to handle its message", timeout=30)
    finally:
        node.stop(timeout=20)

    assert Counted.inits == Counted.handled == Counted.shutdowns == 10_000
    assert not live_greenlets() - before
    assert node.statistics()["workers"] == 0


def test_stop_runs_every_shutdown_and_ends_the_router_and_every_worker_greenlet(log_records):
    class Waiting(Worker):
        """Its handler waits in ctx.receive for a second message that never comes."""

        def __init__(self):
            self.waiting = Event()
            self.shutdowns = 0

        def handle_message(self, ctx, msg):
            self.waiting.set()
            ctx.receive()

        def shutdown(self, ctx):
            self.shutdowns += 1

    before = live_greenlets()
    node = Node()
    idle = [Hooks() for _ in range(5)]
    for i, hooks in enumerate(idle):
        node.start_worker([f"idle{i}", f"alias{i}"], hooks)
    waiting = Waiting()
    node.start_worker("waiting", waiting)
    node.send(["waiting"], "first")
    wait(waiting.waiting, "the handler to wait in receive")
    assert len(live_greenlets() - before) == 7  # six workers and the router

    node.stop(timeout=WAIT)

    assert kill_warnings(log_records) == []  # a handler in receive() is woken by stop, not killed
    assert not live_greenlets() - before
    assert all(hooks.shut_down.is_set() for hooks in idle)
    assert waiting.shutdowns == 1
    assert not node.running
    stats = node.statistics()
    assert stats["workers"] == 0 and stats["state"] == "stopped"


def test_stop_is_idempotent(node):
    hooks = Hooks()
    node.start_worker("once", hooks)
    node.stop()
    node.stop()
    node.stop(timeout=0)
    assert [c[0] for c in hooks.calls].count("shutdown") == 1


def test_the_context_manager_stops_the_node_also_on_error():
    hooks = Hooks()
    before = live_greenlets()
    with pytest.raises(KeyError):
        with Node() as node:
            node.start_worker("w", hooks)
            raise KeyError("inside")
    assert not node.running
    assert not live_greenlets() - before
    assert hooks.shut_down.is_set()


def test_after_stop_send_request_start_worker_and_receive_raise_node_stopped(node):
    node.start_worker("echoer", Echo(message_type=RAW))
    node.stop()
    with pytest.raises(NodeStopped):
        node.send(["echoer"], "x")
    with pytest.raises(NodeStopped):
        node.request(["echoer"], "x", timeout=WAIT)
    with pytest.raises(NodeStopped):
        node.start_worker("new", Echo(message_type=RAW))
    with pytest.raises(NodeStopped):
        node.receive(timeout=WAIT)
    with pytest.raises(NodeStopped):
        node.context.send_payload(["echoer"], b"x")


def test_a_receiver_blocked_in_node_receive_gets_node_stopped_when_the_node_stops(node):
    about_to_receive = Event()

    def receiver():
        about_to_receive.set()  # no switch between this and the blocking receive below
        try:
            return node.receive(timeout=WAIT)
        except NodeStopped as exc:
            return exc

    greenlet = gevent.spawn(receiver)
    wait(about_to_receive, "the receiver to start")
    node.stop()
    outcome = greenlet.get(timeout=WAIT)
    assert isinstance(outcome, NodeStopped)


def test_a_request_blocked_when_the_node_stops_gets_node_stopped(node):
    node.start_worker("silent", Silent())
    about_to_request = Event()

    def requester():
        about_to_request.set()
        try:
            return node.request(["silent"], "x", timeout=WAIT)
        except NodeStopped as exc:
            return exc

    greenlet = gevent.spawn(requester)
    wait(about_to_request, "the requester to start")
    node.stop(timeout=WAIT)
    outcome = greenlet.get(timeout=WAIT)
    assert isinstance(outcome, NodeStopped)  # not ReceiveTimeout: ended by the stop


def test_a_handler_blocked_in_a_request_without_timeout_ends_when_the_node_stops(log_records):
    class Asker(Worker):
        def __init__(self):
            self.asking = Event()
            self.outcome = None
            self.shut_down = Event()

        def handle_message(self, ctx, msg):
            self.asking.set()  # no switch between this and the blocking request below
            try:
                ctx.request(["silent"], "anyone?")  # no timeout: only stop() ends it
            except NodeStopped as exc:
                self.outcome = exc
                raise

        def shutdown(self, ctx):
            self.shut_down.set()

    node = Node()
    node.start_worker("silent", Silent())
    asker = Asker()
    node.start_worker("asker", asker)
    node.send(["asker"], "go")
    wait(asker.asking, "the handler to be in its request")
    node.stop(timeout=WAIT)
    assert kill_warnings(log_records) == [], "stop() waited for its timeout and killed it"
    assert isinstance(asker.outcome, NodeStopped)
    assert asker.shut_down.is_set()
    assert node.statistics()["handler_errors"] == 0  # ended by its own node's stop


def test_stop_with_messages_in_flight_finishes_the_one_in_hand_and_counts_the_rest_as_stopped(
    log_records,
):
    class Slow(Worker):
        def __init__(self):
            self.in_hand = Event()
            self.release = Event()
            self.handled = 0
            self.shutdowns = 0

        def handle_message(self, ctx, msg):
            self.in_hand.set()
            self.release.wait()  # the work in hand goes on until the node is stopping
            self.handled += 1

        def shutdown(self, ctx):
            self.shutdowns += 1

    node = Node()
    slow = Slow()
    node.start_worker("slow", slow)
    for i in range(100):
        node.send(["slow"], str(i))
    wait(slow.in_hand, "the first message to be in hand")

    stopping = gevent.spawn(node.stop, timeout=WAIT)
    poll_until(lambda: not node.running, "the stop to begin")
    slow.release.set()
    stopping.get(timeout=2 * WAIT)

    assert kill_warnings(log_records) == []  # the one in hand was finished, not killed
    assert slow.handled == 1
    assert slow.shutdowns == 1
    assert node.statistics()["dropped"] == {"stopped": 99}


def test_one_batch_for_several_waiting_receivers_wakes_every_one_and_the_router_goes_on(node):
    # The router switches straight into the last receiver it woke and the others through hub
    # callbacks; it must then resume for the next input, even after a handler that raised.
    class Failing(Worker):
        def handle_message(self, ctx, msg):
            raise RuntimeError("boom")

    recorders = [Recorder(expected=2) for _ in range(3)]
    for i, rec in enumerate(recorders):
        node.start_worker(f"rec{i}", rec)
    node.start_worker("failing", Failing())
    src = RecordingSource()
    got = []

    def receive_at_app():
        got.append(node.receive(timeout=WAIT).body)

    receiver = gevent.spawn(receive_at_app)  # starts, and blocks, before the router runs
    for round_ in range(2):
        batch = [network_message([f"rec{i}"], f"{round_}-{i}") for i in range(3)]
        node.deliver(batch + [network_message(["failing"])], src)
        if round_ == 0:
            node.deliver([network_message(["app"], "to app")], src)
    receiver.join(WAIT)
    for i, rec in enumerate(recorders):
        wait(rec.done, f"rec{i}'s two messages")
        assert [m.body for m in rec.messages] == [f"0-{i}", f"1-{i}"]
    assert got == ["to app"]
    assert node.statistics()["handler_errors"] == 2


def test_stop_counts_network_messages_still_waiting_for_the_router_as_stopped():
    node = Node()
    rec = Recorder()
    node.start_worker("rec", rec)
    for _ in range(10):  # deliver() does not switch greenlets: the batches wait for the router
        node.deliver([network_message(["rec"]), network_message(["rec"])], RecordingSource())
    node.stop()
    # The router may take one batch on its way out; every message is handled or counted.
    stopped = node.statistics()["dropped"].get("stopped", 0)
    assert stopped >= 16
    assert len(rec.messages) + stopped == 20


def test_deliver_after_stop_drops_and_counts_without_ever_blocking_the_transport():
    node = Node()
    node.stop()
    src = RecordingSource()
    batches = 2048  # more than the router queue holds

    def flood_the_router():
        for _ in range(batches):
            node.deliver([network_message(["app"])], src)

    flood = gevent.spawn(flood_the_router)
    flood.join(WAIT)
    assert flood.dead, "deliver() blocked on the stopped node's router queue"
    stats = node.statistics()
    assert stats["dropped"] == {"stopped": batches}
    assert stats["router_queue"] == 0


def test_stop_kills_a_handler_that_never_returns_after_the_timeout_and_still_runs_shutdown(
    log_records,
):
    before = live_greenlets()
    node = Node()
    stuck = Blocker(gate_timeout=None)
    node.start_worker("stuck", stuck)
    hooks = Hooks()
    node.start_worker("fine", hooks)
    node.send(["stuck"], "x")
    wait(stuck.entered, "the handler to block")

    started = time.monotonic()
    node.stop(timeout=0.3)
    elapsed = time.monotonic() - started

    assert elapsed >= 0.25  # it waited for the timeout first
    assert len(kill_warnings(log_records)) == 1
    assert not live_greenlets() - before
    assert stuck.shutdowns == 1
    assert hooks.shut_down.is_set()


# --- statistics and logging -----------------------------------------------------------------------


def test_statistics_are_plain_numbers(node):
    node.start_worker("echoer", Echo(message_type=RAW))
    blocker = Blocker()
    node.start_worker("slow", blocker)
    node.send(["slow"], "first")
    wait(blocker.entered, "the handler to block")
    node.send(["slow"], "queued")
    node.send(["slow"], "queued too")
    with pytest.raises(UnknownAddress):
        node.send(["nobody"], "x")
    assert node.request(["echoer"], "x", timeout=WAIT).body == "x"

    stats = node.statistics()
    json.dumps(stats)  # nothing but plain values
    assert stats["workers"] == 2
    assert stats["messages_routed"] == 5  # 3 to slow, the request and its reply
    assert stats["handler_errors"] == 0
    assert stats["dropped"] == {}
    assert stats["mailbox_depths"] == {"0#slow": 2}
    assert isinstance(stats["router_queue"], int)
    for key in ("workers", "messages_routed", "handler_errors"):
        assert type(stats[key]) is int
    blocker.gate.set()


def test_the_package_exports_every_name_it_lists_and_every_error():
    import greenockam
    from greenockam import errors

    assert all(hasattr(greenockam, name) for name in greenockam.__all__)
    error_classes = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, Exception)
        and value.__module__ == errors.__name__
    }
    assert error_classes <= set(greenockam.__all__)


def test_logging_is_silent_by_default(capfd):
    records = []
    sink_id = logger.add(lambda message: records.append(message.record), level="DEBUG")
    try:
        with Node() as node:
            node.start_worker("crashy", Crashy())
            node.send(["crashy"], "crash")
            node.send(["crashy"], "crash")
            assert node.request(["crashy"], "x", timeout=WAIT).body == "ok: x"
            node.deliver([network_message(["nobody"])], RecordingSource())
            assert node.statistics()["handler_errors"] == 2
    finally:
        logger.remove(sink_id)
    assert [r for r in records if r["name"].startswith("greenockam")] == []
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_receive_raises_for_a_payload_that_is_not_its_message_type_and_counts_the_drop(node):
    node.send(["app"], "not a number")
    with pytest.raises(RemoteProtocolError):
        node.receive(timeout=WAIT, message_type=int)
    assert node.statistics()["dropped"] == {"bad_payload": 1}
    node.send(["app"], 7)
    assert node.receive(timeout=WAIT, message_type=int).body == 7


def test_a_receiver_that_times_out_leaves_the_next_message_to_another_receiver(node):
    got = []

    def patient():
        got.append(node.receive(timeout=WAIT).body)

    waiting = gevent.spawn(patient)
    with pytest.raises(ReceiveTimeout):
        node.receive(timeout=0.01)
    node.send(["app"], "for whoever waits")
    waiting.join(WAIT)
    assert got == ["for whoever waits"]
