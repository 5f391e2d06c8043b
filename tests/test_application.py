"""What a first real application relies on: concurrent handlers, cooperative blocking, typed
defaults that agree, and a node that serves until it is told to stop (README, "Patterns").

Real nodes and greenlets; signals are sent to this process with ``os.kill``.
"""

import os
import signal

import gevent
import pytest
from gevent.event import Event
from gevent.queue import Queue

from greenockam import RAW, UNIT, Node, RemoteProtocolError, Worker
from helpers import WAIT, Echo, live_greenlets

pytestmark = pytest.mark.timeout(60)


class Gated(Worker):
    """Each handler call reports that it entered, then waits for ``gate``."""

    def __init__(self, concurrency):
        self.concurrency = concurrency
        self.entered = Queue()
        self.gate = Event()
        self.initialized = 0
        self.shut_down = 0

    def initialize(self, ctx):
        self.initialized += 1

    def handle_message(self, ctx, msg):
        self.entered.put(msg.body)
        self.gate.wait(WAIT)
        ctx.reply(msg, msg.body)

    def shutdown(self, ctx):
        self.shut_down += 1


# --- concurrency ---------------------------------------------------------------------------------


def test_a_worker_with_concurrency_three_handles_three_messages_at_once(node):
    worker = Gated(concurrency=3)
    node.start_worker("pool", worker)
    for i in range(3):
        node.send(["pool"], str(i))
    entered = {worker.entered.get(timeout=WAIT) for _ in range(3)}  # all three, none finished
    assert entered == {"0", "1", "2"}
    worker.gate.set()
    assert {node.receive(timeout=WAIT).body for _ in range(3)} == {"0", "1", "2"}


def test_a_worker_with_the_default_concurrency_handles_one_message_at_a_time(node):
    worker = Gated(concurrency=1)
    node.start_worker("single", worker)
    node.send(["single"], "first")
    node.send(["single"], "second")
    assert worker.entered.get(timeout=WAIT) == "first"
    assert node.statistics()["mailbox_depths"] == {"0#single": 1}  # the second waits its turn
    worker.gate.set()
    assert [node.receive(timeout=WAIT).body for _ in range(2)] == ["first", "second"]


def test_a_concurrent_worker_initializes_and_shuts_down_once_and_leaves_no_greenlet(node):
    before = live_greenlets()
    worker = Gated(concurrency=4)
    node.start_worker("pool", worker)
    assert len(live_greenlets() - before) == 4
    worker.gate.set()
    node.stop_worker("pool")
    assert (worker.initialized, worker.shut_down) == (1, 1)
    assert not live_greenlets() - before


def test_concurrency_below_one_is_refused(node):
    with pytest.raises(ValueError):
        node.start_worker("none", Gated(concurrency=0))


# --- cooperative blocking ------------------------------------------------------------------------


def test_a_worker_sleeping_cooperatively_does_not_delay_another_workers_reply(node):
    done_sleeping = Event()

    class Sleeper(Worker):
        def handle_message(self, ctx, msg):
            gevent.sleep(WAIT / 2)  # cooperative: other greenlets run meanwhile
            done_sleeping.set()

    node.start_worker("sleeper", Sleeper())
    node.start_worker("echoer", Echo())
    node.send(["sleeper"], "sleep")
    assert node.request(["echoer"], "meanwhile", timeout=WAIT).body == "meanwhile"
    assert not done_sleeping.is_set()  # answered while the other worker was still sleeping


# --- typed defaults ------------------------------------------------------------------------------


class IntEcho(Worker):
    message_type = int

    def handle_message(self, ctx, msg):
        ctx.reply(msg, msg.body + 1)


def test_a_request_decodes_its_reply_with_the_context_type_unless_told_otherwise(node):
    node.start_worker("int_echo", IntEcho())
    with node.open_context("ints", message_type=int) as ctx:
        assert ctx.request(["int_echo"], 41, timeout=WAIT).body == 42  # the context's type
        reply = ctx.request(["int_echo"], 1, timeout=WAIT, message_type=RAW)
        assert reply.body == (2).to_bytes(8, "little")  # the type asked for
    # the app context's type is str: an int reply needs message_type=int there
    assert node.request(["int_echo"], 1, timeout=WAIT, message_type=int).body == 2
    with pytest.raises(RemoteProtocolError):
        node.request(["int_echo"], 1, timeout=WAIT)


def test_unit_is_its_own_marker_and_none_means_the_default(node):
    seen = Queue()

    class UnitWorker(Worker):
        message_type = UNIT

        def handle_message(self, ctx, msg):
            seen.put(msg.body)

    class DefaultWorker(Worker):
        message_type = None  # the default: str

        def handle_message(self, ctx, msg):
            seen.put(msg.body)

    node.start_worker("unit", UnitWorker())
    node.start_worker("default", DefaultWorker())
    node.send(["unit"], None)
    assert seen.get(timeout=WAIT) is None
    node.send(["default"], "text")
    assert seen.get(timeout=WAIT) == "text"


# --- serving until stopped -----------------------------------------------------------------------


def test_serve_forever_returns_the_signal_that_ended_it_and_stops_the_node():
    node = Node()
    node.start_worker("echoer", Echo())
    served = gevent.spawn(node.serve_forever, [signal.SIGUSR1])
    assert node.request(["echoer"], "while serving", timeout=WAIT).body == "while serving"
    os.kill(os.getpid(), signal.SIGUSR1)
    assert served.get(timeout=WAIT) == signal.SIGUSR1
    assert not node.running


def test_serve_forever_returns_none_when_another_greenlet_stops_the_node():
    node = Node()
    served = gevent.spawn(node.serve_forever, [signal.SIGUSR2])
    gevent.spawn(node.stop).join(WAIT)
    assert served.get(timeout=WAIT) is None
    assert not node.running


def test_serve_forever_waits_on_a_node_with_no_listener_until_a_signal(tmp_path):
    # gevent's signal watchers do not keep its loop alive: a bare node must still wait.
    import subprocess
    import sys

    program = (
        "import gevent\n"
        "from greenockam import Node\n"
        "node = Node()\n"
        "gevent.spawn(print, 'serving', flush=True)  # runs once serve_forever waits\n"
        "print(int(node.serve_forever()), flush=True)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", program], stdout=subprocess.PIPE, universal_newlines=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "serving\n"
        assert proc.poll() is None  # still serving: it did not end on its own
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=WAIT)
        assert out == f"{int(signal.SIGTERM)}\n"
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
