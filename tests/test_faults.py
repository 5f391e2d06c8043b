"""What peers cause is logged escaped and at a bounded rate, and a client that left is never
dialed (the failure section of the README; greenockam.faults).

Real nodes on 127.0.0.1 port 0 and raw gevent sockets as hostile peers; the log is captured with
a loguru sink.
"""

import re
from typing import List

import pytest
from gevent.event import Event
from gevent.queue import Queue
from loguru import logger

from greenockam import ConnectionLost, Worker
from greenockam.faults import FaultLog, printable
from helpers import WAIT, Echo, LogCapture, bare_str, poll_until, recv_frame, ref_frame

pytestmark = pytest.mark.timeout(60)

CONTROL = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]")
NASTY = "evil\nFORGED | CRITICAL | fake line\x1b[31m\u2028"


@pytest.fixture
def logs():
    """Every greenockam log line of the test, as loguru formats it (a traceback included)."""
    capture = LogCapture()
    try:
        yield capture
    finally:
        capture.close()


def assert_no_raw_control_characters(lines):
    for line in lines:
        # a handler's traceback spans several lines on purpose; nothing a peer sent may
        text = line if "Traceback" not in line else line.split("\n", 1)[0]
        assert not CONTROL.search(text), repr(line)


# --- printable and FaultLog on their own ---------------------------------------------------------


def test_printable_escapes_every_unprintable_character_and_cuts_long_text():
    assert printable(NASTY) == "evil\\nFORGED | CRITICAL | fake line\\x1b[31m\\u2028"
    assert printable("x" * 500) == "x" * 200 + "..."
    assert printable("ordinary 1#127.0.0.1:4000 => échoer") == "ordinary 1#127.0.0.1:4000 => échoer"


class _ManualLoop:
    """Only what FaultLog asks of a loop: a timer whose callback the test fires itself."""

    class _Timer:
        def __init__(self):
            self.callback = None

        def start(self, callback):
            self.callback = callback

        def close(self):
            self.callback = None

    def __init__(self):
        self.timers = []

    def timer(self, _seconds):
        self.timers.append(self._Timer())
        return self.timers[-1]


def test_a_fault_log_logs_the_first_few_per_kind_and_host_then_one_summary(logs):
    loop = _ManualLoop()
    faults = FaultLog(loop)
    for port in range(20):  # one attacker host, a new port per connection
        faults.warning("malformed_frame", f"10.0.0.1:{40000 + port}", "bad frame {}", port)
    faults.warning("malformed_frame", "10.0.0.2:40000", "another host")
    assert faults.counts == {"malformed_frame": 21}
    assert logs.lines == [f"bad frame {i}" for i in range(5)] + ["another host"]
    loop.timers[0].callback()  # the interval ends
    assert logs.lines[-1] == "15 more events not logged one by one (malformed_frame 15)"
    faults.warning("malformed_frame", "10.0.0.1:1", "a new interval")
    assert logs.lines[-1] == "a new interval"


def test_a_fault_log_tracks_a_bounded_number_of_hosts():
    faults = FaultLog(_ManualLoop())
    faults.max_keys = 10
    for i in range(1000):
        faults.warning("drop", f"10.0.{i // 256}.{i % 256}:1", "x")
    assert faults.counts["drop"] == 1000
    faults.flush()  # nothing kept past the interval


# --- every path that prints remote text escapes it -----------------------------------------------


def test_a_dropped_message_line_escapes_the_routes(net, logs):
    node, _, address = net.node(listen=True)
    peer = net.connect(address)
    peer.sendall(ref_frame(["0#" + NASTY], ["0#" + NASTY], bare_str("x")))
    poll_until(lambda: node.statistics()["dropped"].get("unknown_address") == 1, "the drop")
    logs.wait_for("dropped a message (unknown_address)")
    assert_no_raw_control_characters(logs.lines)
    assert any("evil\\nFORGED" in line for line in logs.lines)


def test_a_handler_error_line_escapes_the_return_route(net, logs):
    class Failing(Worker):
        def handle_message(self, ctx, msg):
            raise ValueError("handler bug")

    node, _, address = net.node(listen=True)
    node.start_worker("failing", Failing())
    peer = net.connect(address)
    peer.sendall(ref_frame(["0#failing"], ["0#" + NASTY], bare_str("x")))
    logs.wait_for("worker 0#failing failed")
    assert_no_raw_control_characters(logs.lines)


def test_a_forwarded_message_with_no_connection_escapes_its_next_hop(net, logs):
    node, _, address = net.node(listen=True)
    peer = net.connect(address)
    peer.sendall(ref_frame(["1#" + NASTY, "0#x"], ["0#y"], bare_str("x")))
    logs.wait_for("no_connection")
    assert_no_raw_control_characters(logs.lines)


def test_a_reply_that_fails_escapes_the_route_and_has_no_traceback(net, logs):
    class Replier(Worker):
        def handle_message(self, ctx, msg):
            raise ConnectionLost("the connection to 1#" + NASTY + " closed")

    node, _, address = net.node(listen=True)
    node.start_worker("replier", Replier())
    peer = net.connect(address)
    peer.sendall(ref_frame(["0#replier"], ["0#" + NASTY], bare_str("x")))
    logs.wait_for("could not answer")
    assert_no_raw_control_characters(logs.lines)
    assert not any("Traceback" in line for line in logs.lines)
    assert node.statistics()["handler_errors"] == 1


def test_a_malformed_frame_line_names_the_peer_and_escapes_the_fault(net, logs):
    node, tcp, address = net.node(listen=True)
    peer = net.connect(address)
    body = b"\x01\x01\x00\x05ab\xff\n\x1b"  # an address that is not UTF-8, then garbage
    peer.sendall(len(body).to_bytes(2, "big") + body)
    logs.wait_for("malformed frame from")
    assert_no_raw_control_characters(logs.lines)
    assert tcp.statistics()["malformed_frames"] == 1


def test_a_flood_of_bad_frames_from_one_host_logs_a_bounded_number_of_lines(net, logs):
    node, tcp, address = net.node(listen=True)
    for _ in range(50):  # a new connection (a new port) for every bad frame
        peer = net.connect(address)
        peer.sendall(b"\x00\x00")  # an empty body: malformed
    poll_until(lambda: tcp.statistics().get("malformed_frames") == 50, "every frame is seen")
    malformed = [line for line in logs.lines if line.startswith("malformed frame")]
    assert len(malformed) == FaultLog.burst
    assert node.faults.counts["malformed_frame"] == 50


# --- a client that left is never dialed ----------------------------------------------------------


def test_a_reply_to_a_client_that_left_fails_at_once_without_dialing_it(net, logs):
    node, tcp, address = net.node(listen=True)

    class SlowEcho(Worker):
        """Answers only once told to, so the client can leave first."""

        def __init__(self):
            self.entered = Queue()
            self.go = Queue()
            self.outcome = Queue()

        def handle_message(self, ctx, msg):
            self.entered.put(True)
            self.go.get(timeout=WAIT)
            try:
                ctx.reply(msg, msg.body)
                self.outcome.put("sent")
            except ConnectionLost as exc:
                self.outcome.put(exc)

    slow = SlowEcho()
    node.start_worker("slow", slow)
    node.start_worker("echo_service", Echo())
    client = net.connect(address)
    client.sendall(ref_frame(["0#slow"], ["0#client"], bare_str("answer me later")))
    slow.entered.get(timeout=WAIT)
    client.close()
    poll_until(lambda: tcp.connections == {}, "the server sees the client leave")
    slow.go.put(True)
    outcome = slow.outcome.get(timeout=WAIT)
    assert isinstance(outcome, ConnectionLost)
    stats = tcp.statistics()
    assert stats["replies_to_gone"] == 1
    assert "connections_opened" not in stats and "connect_failures" not in stats
    # the node goes on serving everyone else
    other = net.connect(address)
    other.sendall(ref_frame(["0#echo_service"], ["0#c"], bare_str("still here")))
    assert recv_frame(other) == ref_frame(["0#c"], ["0#echo_service"], bare_str("still here"))


# --- middleware forwarding -----------------------------------------------------------------------


class Forwarder(Worker):
    """A middleware hop: forwards whatever it gets."""

    def handle_message(self, ctx, msg):
        ctx.forward(msg)


def test_a_middleware_forward_to_an_unreachable_hop_never_blocks_and_logs_a_bounded_number(
    net, logs
):
    node, tcp, _ = net.node(dial_for_forward=True)
    node.start_worker("middle", Forwarder())
    node.start_worker("echo_service", Echo())
    unreachable = net.refused_address()
    for i in range(20):
        node.send(["middle", "1#" + unreachable, "x"], str(i))
    # Handled behind those 20 without waiting for any connect: the forwarder keeps serving.
    assert node.request(["middle", "echo_service"], "through", timeout=WAIT).body == "through"
    poll_until(
        lambda: sum(node.statistics()["dropped"].values()) == 20, "every forward is accounted for"
    )
    assert set(node.statistics()["dropped"]) == {"connect_failed"}
    failures = [line for line in logs.lines if line.startswith("cannot connect")]
    assert 1 <= len(failures) <= FaultLog.burst
    assert not any("Traceback" in line for line in logs.lines)


def test_a_middleware_forward_follows_the_connect_policy(net, logs):
    node, tcp, _ = net.node()
    node.start_worker("middle", Forwarder())
    _, target = net.listener()
    node.send(["middle", "1#" + target, "x"], "relay me")
    poll_until(lambda: node.statistics()["dropped"].get("no_connection") == 1, "the drop")
    assert tcp.connections == {}
    assert node.statistics()["handler_errors"] == 0


def test_a_handler_bug_logs_its_traceback_without_the_payload_even_with_a_diagnosing_sink(node):
    class Leaky(Worker):
        def handle_message(self, ctx, msg):
            secret = msg.body  # noqa: F841 (a local a diagnosing sink would print)
            raise ValueError("handler bug")

    out: List[str] = []
    logger.enable("greenockam")
    handler = logger.add(out.append, level="DEBUG", diagnose=True, backtrace=True)
    try:
        node.start_worker("leaky", Leaky())
        node.send(["leaky"], "pw=hunter2")
        poll_until(lambda: node.statistics()["handler_errors"] == 1, "the handler error")
        poll_until(lambda: any("handler bug" in str(m) for m in out), "its log line")
    finally:
        logger.remove(handler)
        logger.disable("greenockam")
    text = "".join(str(m) for m in out)
    assert "ValueError: handler bug" in text and "Traceback" in text
    assert "hunter2" not in text


def test_a_reply_along_the_random_mark_of_a_client_that_left_is_a_fault_not_a_bug(net, logs):
    node, tcp, _ = net.node()
    address = tcp.listen("127.0.0.1:0", mark="random")
    entered, go = Queue(), Queue()

    class Late(Worker):
        def handle_message(self, ctx, msg):
            entered.put(msg.return_route[0])
            go.get(timeout=WAIT)
            ctx.reply(msg, "too late")

    node.start_worker("late", Late())
    client = net.connect(address)
    client.sendall(ref_frame(["0#late"], ["0#client"], bare_str("answer me later")))
    mark = entered.get(timeout=WAIT)
    closed = Event()
    node.on_close(mark, closed.set)
    client.close()
    assert closed.wait(WAIT)
    go.put(True)
    logs.wait_for("could not answer")
    assert not any("Traceback" in line for line in logs.lines)
    assert tcp.statistics()["replies_to_gone"] == 1
