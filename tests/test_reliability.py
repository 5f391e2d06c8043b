"""Reliability: bad input, slow and silent peers, dead peers, floods, graceful stop, safe defaults.

Every test uses real sockets on 127.0.0.1 (port 0), bounds every wait with a timeout, and waits on
replies, events, end-of-stream or log lines, never on a ``sleep()``. Raw peers are gevent sockets
that write hand-made frames; the server is an in-process Node + TcpTransport with an echo worker,
or ``scripts/echo_server.py`` in a subprocess where a real process matters (killing it, SIGTERM,
or its own logging).
"""

import collections
import os
import pickle  # noqa: TID251 (builds a pickle exploit to prove payloads are never unpickled)
import random
import signal
import socket
import struct
import time
import tracemalloc
from typing import Deque, List, Tuple

import gevent
import gevent.socket
import pytest
from gevent.event import Event

from greenockam import (
    RAW,
    ConnectFailed,
    GreenockamError,
    Node,
    OutputFull,
    RemoteProtocolError,
    Route,
    Worker,
)
from greenockam.codecs import BARE
from greenockam.transport.tcp import TcpTransport, format_peer, parse_host_port
from greenockam.wire import FrameDecoder, TransportMessage, decode_body, encode_frame, encode_uint
from helpers import Echo, LogCapture, poll_until, start_server, wait_until

pytestmark = pytest.mark.timeout(60)

WAIT = 5.0  # seconds: the bound on any single wait that should succeed at once


# --- helpers -------------------------------------------------------------------------------------


def frame(onward, ret=("app",), payload=b""):
    """A valid frame with these routes (lists of address text) and payload bytes."""
    return encode_frame(TransportMessage(Route(list(onward)), Route(list(ret)), payload))


def raw_frame(body):
    """A length prefix and ``body`` as is, valid or not."""
    return struct.pack(">H", len(body)) + body


def address_bytes(kind, value):
    return bytes([kind]) + encode_uint(len(value)) + value


@pytest.fixture
def logs():
    """greenockam's INFO-and-above log lines during the test."""
    capture = LogCapture("INFO")
    yield capture
    capture.close()


class RawPeer:
    """A client that writes raw bytes on a gevent socket and decodes what comes back."""

    def __init__(self, address, timeout=WAIT):
        host, port = parse_host_port(address)
        self.sock = gevent.socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)
        self.decoder = FrameDecoder()
        self.pending: Deque[TransportMessage] = collections.deque()
        # The key the server gives this connection: the peer as seen on its socket.
        self.key = format_peer(self.sock.getsockname())

    def send(self, data):
        self.sock.sendall(data)

    def receive(self, timeout=WAIT):
        """The next message from the server."""
        with gevent.Timeout(timeout, AssertionError(f"no message within {timeout} s")):
            while not self.pending:
                data = self.sock.recv(65536)
                if not data:
                    raise AssertionError("the server closed the connection")
                self.pending.extend(self.decoder.feed(data))
        return self.pending.popleft()

    def echo(self, text, to="echo_service", timeout=WAIT):
        """Send ``text`` to the echo worker ``to`` and return the echoed text."""
        self.send(frame([to], ["app"], BARE.encode(text)))
        msg = self.receive(timeout)
        assert list(map(str, msg.onward_route)) == ["0#app"]
        return BARE.decode(msg.payload, str)

    def wait_closed(self, timeout=WAIT):
        """True once the server has closed the connection (EOF or reset), False on timeout."""
        self.sock.settimeout(timeout)
        try:
            with gevent.Timeout(timeout, False):
                while True:
                    data = self.sock.recv(65536)
                    if not data:
                        return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(WAIT)
        return False

    def still_open(self, timeout=0.2):
        """True if nothing (neither data nor EOF) comes from the server within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            self.sock.recv(1)
        except socket.timeout:
            return True
        except OSError:
            pass
        finally:
            self.sock.settimeout(WAIT)
        return False

    def close(self):
        self.sock.close()


@pytest.fixture
def peers():
    """Opens RawPeers to an address; closes them all after the test."""
    opened = []

    def open_peer(address, **kwargs):
        peer = RawPeer(address, **kwargs)
        opened.append(peer)
        return peer

    yield open_peer
    for peer in opened:
        peer.close()


class Recorder(Worker):
    """Keeps every body it gets; ``arrived`` is set on each."""

    def __init__(self, message_type, arrived):
        self.message_type = message_type
        self.bodies = []
        self.arrived = arrived

    def handle_message(self, ctx, msg):
        self.bodies.append(msg.body)
        self.arrived.set()


class InProcessServer:
    def __init__(self, node, transport, address):
        self.node, self.transport, self.address = node, transport, address


@pytest.fixture
def make_server():
    """Starts a Node with a TcpTransport listening on 127.0.0.1:0 and an ``echo_service`` worker
    (the name echo_server.py uses, so the same frames serve both)."""
    nodes = []

    def make(mailbox_size=None, **transport_options):
        node = Node(mailbox_size=mailbox_size)
        nodes.append(node)
        transport = TcpTransport(node, **transport_options)
        address = transport.listen("127.0.0.1:0")
        node.start_worker("echo_service", Echo())
        return InProcessServer(node, transport, address)

    yield make
    for node in nodes:
        node.stop(timeout=2.0)


def start_echo_server(address="127.0.0.1:0"):
    """``scripts/echo_server.py`` on ``address`` in a subprocess, once it listens (a Process of
    helpers, with the ``address`` it bound); its stderr is its log."""
    return start_server("echo_server.py", address, "--log-level", "WARNING")


@pytest.fixture
def echo_process():
    """An echo_server.py of the test's own (a server logs only the first few faults of a kind
    from one host per interval, so tests that count log lines cannot share one)."""
    with start_echo_server() as server:
        yield server


# --- bad input on a connection -----------------------------------------------------------------

_ECHO_BODY = frame(["echo_service"], ["app"], BARE.encode("hello"))[2:]
_RNG = random.Random(20210325)
_RANDOM_BODY = bytes(_RNG.randrange(256) for _ in range(64))
_UNFINISHED = object()  # a frame announced at 65535 bytes, 1000 of them sent, then EOF
_APP_RETURN_ROUTE = b"\x01" + address_bytes(0, b"app")


def _body(onward_raw, return_raw=_APP_RETURN_ROUTE, rest=b"\x00"):
    return raw_frame(b"\x01" + onward_raw + return_raw + rest)


# (id, what the peer sends, "malformed" (the connection is closed) or the drop reason of a valid
# frame that cannot be delivered (the connection goes on), a piece of the log line to expect:
# None means the decoder's own error message).
BAD_INPUTS = [
    ("random bytes", raw_frame(_RANDOM_BODY), "malformed", None),
    ("truncated body", raw_frame(_ECHO_BODY[:-3]), "malformed", None),
    ("uint overflow", _body(b"\xff" * 9 + b"\x02"), "malformed", "overflows 64 bits"),
    (
        "route count past the end",
        _body(b"\x32" + address_bytes(0, b"echo_service")),
        "malformed",
        "announces 50 addresses",
    ),
    (
        "invalid UTF-8 in an address",
        _body(b"\x01" + address_bytes(0, b"ech\xff")),
        "malformed",
        "not valid UTF-8",
    ),
    ("zero-length body", b"\x00\x00", "malformed", "empty body"),
    ("frame announced at 65535 and never finished", _UNFINISHED, "malformed", "frame"),
    ("empty onward route", frame([], ["app"], BARE.encode("x")), "empty_route", "empty_route"),
    ("unknown worker", frame(["nobody"], ["app"], BARE.encode("x")), "unknown_address", "nobody"),
    ("unknown address type", frame(["5#x"], ["app"], BARE.encode("x")), "unknown_transport", "5#x"),
    (
        "undecodable payload",
        frame(["echo_service"], ["app"], b"\xff\xff"),
        "bad_payload",
        "bad_payload",
    ),
]
BAD_INPUT_PARAMS = pytest.mark.parametrize(
    "data, effect, fault", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS]
)


def _expected_fault(data, fault):
    if fault is not None:
        return fault
    with pytest.raises(RemoteProtocolError) as info:
        decode_body(data[2:])
    return str(info.value)


def _send_bad_input(peer, data):
    if data is _UNFINISHED:
        peer.send(b"\xff\xff" + b"\x01" * 1000)
        peer.sock.shutdown(socket.SHUT_WR)  # the rest of the frame never comes
    else:
        peer.send(data)


def _check_own_connection(peer, effect):
    if effect == "malformed":
        assert peer.wait_closed(), "a malformed frame must close its connection"
    else:  # the message is dropped, the same connection goes on serving
        assert peer.echo("after") == "after"


def test_bad_input_vectors_are_what_they_claim():
    for _name, data, effect, _ in BAD_INPUTS:
        if data is _UNFINISHED:
            continue
        if effect == "malformed":
            with pytest.raises(RemoteProtocolError):
                decode_body(data[2:])
        else:
            decode_body(data[2:])  # a valid frame: only its destination or payload is bad


@BAD_INPUT_PARAMS
def test_bad_input_is_logged_once_and_harms_only_its_own_connection(
    make_server, peers, logs, data, effect, fault
):
    server = make_server()
    bystander = peers(server.address)
    assert bystander.echo("before") == "before"
    culprit = peers(server.address)

    _send_bad_input(culprit, data)
    _check_own_connection(culprit, effect)
    logs.wait_for(culprit.key, _expected_fault(data, fault), level="WARNING")

    assert bystander.echo("still served") == "still served"
    newcomer = peers(server.address)
    assert newcomer.echo("new connection") == "new connection"
    assert len(logs.matching(culprit.key, level="WARNING")) == 1, logs.matching(culprit.key)
    assert not logs.matching(bystander.key, level="WARNING")
    assert not logs.matching(newcomer.key, level="WARNING")
    if effect != "malformed":
        assert server.node.statistics()["dropped"] == {effect: 1}
    elif data is not _UNFINISHED:
        assert server.transport.statistics()["malformed_frames"] == 1


@BAD_INPUT_PARAMS
def test_echo_server_process_survives_bad_input(echo_process, peers, data, effect, fault):
    bystander = peers(echo_process.address)
    culprit = peers(echo_process.address)

    _send_bad_input(culprit, data)
    _check_own_connection(culprit, effect)
    lines = echo_process.wait_for_line(culprit.key, _expected_fault(data, fault))

    assert bystander.echo("still served") == "still served"
    newcomer = peers(echo_process.address)
    assert newcomer.echo("new connection") == "new connection"
    assert len(lines) == 1 and "WARNING" in lines[0], lines


# --- slow and silent peers -----------------------------------------------------------------------


def test_a_half_sent_frame_does_not_block_other_connections(make_server, peers):
    server = make_server()
    big = frame(["echo_service"], ["app"], BARE.encode("z" * 60000))
    staller = peers(server.address)
    staller.send(big[: len(big) // 2])

    other = peers(server.address)
    for i in range(20):
        assert other.echo(f"meanwhile {i}") == f"meanwhile {i}"
    assert staller.still_open()

    staller.send(big[len(big) // 2 :])  # the stalled frame completes and is served in turn
    assert BARE.decode(staller.receive().payload, str) == "z" * 60000


def test_an_idle_connection_is_closed_after_the_idle_timeout(make_server, peers, logs):
    server = make_server(idle_timeout=0.3)
    start = time.monotonic()  # before any connection: each was idle for less than this
    active = peers(server.address)
    idle = peers(server.address)
    stalled = peers(server.address)
    stalled.send(b"\xff\xff" + b"\x01" * 100)  # a 65535-byte frame that never comes
    assert active.echo("busy") == "busy"

    assert idle.wait_closed(timeout=WAIT) and stalled.wait_closed(timeout=WAIT)
    assert time.monotonic() - start >= 0.25  # not before the idle timeout (0.3 s)
    logs.wait_for(idle.key, "idle", level="INFO")
    (line,) = logs.wait_for(stalled.key, "frame", level="WARNING")  # it stalled inside a frame
    assert "idle" in line
    assert not logs.matching(idle.key, level="WARNING")  # an idle connection is no fault
    assert server.transport.statistics()["connections"] <= 1


def test_connections_past_max_connections_are_turned_away(make_server, peers, logs):
    server = make_server(max_connections=2)
    first, second = peers(server.address), peers(server.address)
    assert first.echo("1") == "1" and second.echo("2") == "2"

    excess = peers(server.address)
    assert excess.wait_closed(timeout=WAIT)  # there is no idle timeout: the limit closed it
    logs.wait_for("turned away", excess.key, level="WARNING")
    assert first.echo("still 1") == "still 1" and second.echo("still 2") == "still 2"
    assert server.transport.statistics()["connections_refused"] == 1

    first.close()
    logs.wait_for(f"connection {first.key} closed", level="INFO")
    third = peers(server.address)
    assert third.echo("3") == "3"
    assert second.echo("still 2") == "still 2"


# --- dead peers ----------------------------------------------------------------------------------


def test_a_killed_peer_is_detected_fails_loudly_while_down_and_is_reconnected(logs):
    server = start_echo_server()
    node = Node()
    try:
        transport = TcpTransport(node, connect_timeout=1.0)
        route = [f"1#{server.address}", "echo_service"]
        assert node.request(route, "first", timeout=WAIT).body == "first"
        for i in range(200):  # mid-stream: messages in flight when it dies
            node.send(route, f"in flight {i}")

        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
        logs.wait_for(f"connection {server.address} closed", level="INFO")
        assert server.address not in transport.connections

        for attempt in range(3):
            with pytest.raises(ConnectFailed):
                node.send(route, f"while down {attempt}")
        with pytest.raises(ConnectFailed):  # at the connect, not a ReceiveTimeout after 30 s
            node.request(route, "request while down", timeout=30)
        assert server.address not in transport.connections

        server = start_echo_server(server.address)  # back, on the same port
        assert node.request(route, "back again", timeout=WAIT).body == "back again"
    finally:
        node.stop(timeout=2.0)
        server.stop()


# --- floods --------------------------------------------------------------------------------------

_END = (1 << 64) - 1


class Gated(Worker):
    """A slow worker: each message waits for ``gate``; ``_END`` sets ``done``."""

    message_type = int

    def __init__(self):
        self.gate = Event()
        self.done = Event()
        self.bodies = []

    def handle_message(self, ctx, msg):
        self.gate.wait()
        if msg.body == _END:
            self.done.set()
        else:
            self.bodies.append(msg.body)


def test_a_flood_over_tcp_keeps_the_mailbox_bounded_and_delivers_everything_in_order(
    make_server, peers
):
    server = make_server(mailbox_size=64)
    worker = Gated()
    server.node.start_worker("slow", worker)
    frame_size = len(frame(["slow"], ["app"], BARE.encode(0)))
    one_read = server.transport.read_size // frame_size + 2
    bound = server.node.mailbox_size + one_read

    depths = []
    stop_monitor = Event()

    def monitor():
        while not stop_monitor.is_set():
            depths.append(server.node.statistics()["mailbox_depths"].get("0#slow", 0))
            stop_monitor.wait(0.002)

    watcher = gevent.spawn(monitor)
    sender = peers(server.address)
    sender.sock.settimeout(0.5)
    chunk_frames = 1000
    sent_chunks = 0
    rest = b""
    try:
        while not rest:  # until the kernel buffers are full and a send times out
            assert sent_chunks < 2000, "the sender never blocked: no backpressure"
            first = sent_chunks * chunk_frames
            data = b"".join(
                frame(["slow"], ["app"], BARE.encode(i)) for i in range(first, first + chunk_frames)
            )
            view = memoryview(data)
            while view:
                try:
                    view = view[sender.sock.send(view) :]
                except socket.timeout:
                    rest = bytes(view)
                    break
            sent_chunks += 1
        depth_while_blocked = server.node.statistics()["mailbox_depths"].get("0#slow", 0)
        assert depth_while_blocked <= bound

        worker.gate.set()
        sender.sock.settimeout(30)
        sender.send(rest + frame(["slow"], ["app"], BARE.encode(_END)))
        assert worker.done.wait(timeout=30), "not everything was delivered"
    finally:
        stop_monitor.set()
        watcher.join(timeout=WAIT)
    total = sent_chunks * chunk_frames
    assert max(depths) <= bound, (max(depths), bound)
    assert len(worker.bodies) == total and worker.bodies == list(range(total))


class Flooder(Worker):
    """On ``0``: sends ``burst`` messages to ``peer``; on any other message: counts it and,
    while ``budget`` lasts, sends one back (so both mailboxes stay full). A send the library
    refuses (MailboxFull, or any other error it raises on purpose) is counted, never retried.
    ``progress`` is set on every send and every message."""

    message_type = int

    def __init__(self, peer, burst, progress, budget=0):
        self.peer = peer
        self.burst = burst
        self.budget = budget
        self.progress = progress
        self.sent = self.received = self.refused = 0
        self.burst_done = Event()

    def _send(self, ctx, value):
        try:
            ctx.send(self.peer, value)
            self.sent += 1
        except GreenockamError:
            self.refused += 1
        self.progress.set()

    def handle_message(self, ctx, msg):
        if msg.body == 0:
            for i in range(1, self.burst + 1):
                self._send(ctx, i)
            self.burst_done.set()
        else:
            self.received += 1
            if self.budget > 0:
                self.budget -= 1
                self._send(ctx, msg.body)
        self.progress.set()


def _flood_is_over(a, b):
    return (
        a.burst_done.is_set()
        and b.burst_done.is_set()
        and a.received == b.sent
        and b.received == a.sent
        and not a.budget
        and not b.budget
    )


def test_two_local_workers_flooding_each_other_do_not_deadlock():
    with Node(mailbox_size=64) as node:
        progress = Event()
        a = Flooder(["b"], burst=500, progress=progress, budget=5000)
        b = Flooder(["a"], burst=500, progress=progress, budget=5000)
        node.start_worker("a", a)
        node.start_worker("b", b)
        node.send(["a"], 0)
        node.send(["b"], 0)

        wait_until(lambda: _flood_is_over(a, b), progress, "the flood to end")
        assert a.refused and b.refused, "the mailboxes never filled: not a flood"
        assert node.statistics()["handler_errors"] == 0
        assert node.statistics()["dropped"] == {"mailbox_full": a.refused + b.refused}


def test_two_workers_on_two_nodes_flooding_each_other_over_tcp_do_not_deadlock():
    burst = 400_000  # more than the kernel buffers (~4 MB here), high_water and a mailbox hold
    node1, node2 = Node(mailbox_size=64), Node(mailbox_size=64)
    try:
        transport1, transport2 = TcpTransport(node1), TcpTransport(node2)
        transport1.high_water = transport2.high_water = 1 << 16  # documented policy attribute
        address1, address2 = transport1.listen(), transport2.listen()
        progress = Event()
        a = Flooder([f"1#{address2}", "b"], burst=burst, progress=progress)
        b = Flooder([f"1#{address1}", "a"], burst=burst, progress=progress)
        node1.start_worker("a", a)
        node2.start_worker("b", b)
        node1.send(["a"], 0)
        node2.send(["b"], 0)

        with gevent.Timeout(60, AssertionError("the flood did not end within 60 s")):
            while not _flood_is_over(a, b):
                progress.clear()
                if not _flood_is_over(a, b) and not progress.wait(10.0):
                    raise AssertionError(
                        f"deadlock: nothing moved for 10 s; sent {a.sent}, {b.sent}, "
                        f"received {a.received}, {b.received}"
                    )
        # An output stalled with its worker's mailbox full (OutputFull): that broke the cycle.
        assert a.refused or b.refused, "no output ever stalled: not a flood"
    finally:  # a short timeout: deadlocked workers are killed rather than waited for
        node1.stop(timeout=0.5)
        node2.stop(timeout=0.5)


# A worker whose mailbox is full, sending 60,000-byte payloads to a raw peer that reads at its own
# pace: its output is past high_water for as long as the peer lets it.

_PAYLOAD = 60_000


def _payload(index):
    return index.to_bytes(4, "big") * (_PAYLOAD // 4)


class Scripted(Worker):
    """Runs ``script(ctx)`` as the handler of its first message, once ``gate`` is set (the test
    fills its mailbox from the network meanwhile), then sets ``done``. The other messages are
    left alone: its mailbox stays full while the script runs."""

    message_type = RAW

    def __init__(self, script):
        self.script = script
        self.gate = Event()
        self.done = Event()

    def handle_message(self, ctx, msg):
        if not self.done.is_set():
            self.gate.wait()
            try:
                self.script(ctx)
            finally:
                self.done.set()


def _start_with_a_full_mailbox(server, peers, script):
    """``script`` running in a worker whose mailbox a raw client has filled past its bound (so
    the connection that filled it is held: ``ctx.mailbox_full``)."""
    worker = Scripted(script)
    server.node.start_worker("busy", worker)
    server.node.send(["busy"], b"go")
    size = server.node.mailbox_size
    peers(server.address).send(b"".join(frame(["busy"]) for _ in range(2 * size)))
    poll_until(
        lambda: server.node.statistics()["mailbox_depths"].get("0#busy", 0) > size,
        "the worker's mailbox to fill",
    )
    worker.gate.set()
    return worker


def _attempt(ctx, route, index):
    """Send ``_payload(index)`` along ``route``: (refused with OutputFull, waited: the send let
    another greenlet run, which only a wait for the connection does)."""
    waited = Event()
    marker = gevent.spawn(waited.set)  # runs only if the send switches to the hub
    try:
        ctx.send_payload(route, _payload(index))
        refused = False
    except OutputFull:
        refused = True
    marker.kill()
    return refused, waited.is_set()


def _read(sock, got, arrived, chunk, pause=0.0):
    """The peer: reads ``chunk`` bytes at a time, pausing ``pause`` s after each read (how slowly
    it reads), and appends the index of every payload that arrives to ``got``."""
    decoder = FrameDecoder()
    while True:
        data = sock.recv(chunk)
        if not data:
            return
        got.extend(int.from_bytes(m.payload[:4], "big") for m in decoder.feed(data))
        arrived.set()
        if pause:
            gevent.sleep(pause)


def test_a_worker_with_a_full_mailbox_waits_for_a_slow_output_as_long_as_it_moves(
    make_server, peers, net
):
    """The echoer behind a busy hub: its mailbox is full and its output past high_water, but the
    peer keeps reading (16 KiB, then a millisecond's pause): every send waits its turn and goes
    through, and nothing is refused, though the output stays full for well over stall_timeout
    in all (at most 16 MB/s for the 26 MB past the kernel's buffers)."""
    server = make_server(mailbox_size=8)
    listener, sink = net.listener()
    route = Route([f"1#{sink}", "sink"])
    count = 500  # 30 MB: more than the kernel buffers (about 4 MB here) and high_water hold
    outcomes: List[Tuple[bool, bool]] = []
    full: List[bool] = []

    def script(ctx):
        full.append(ctx.mailbox_full)
        outcomes.extend(_attempt(ctx, route, i) for i in range(count))
        full.append(ctx.mailbox_full)

    worker = _start_with_a_full_mailbox(server, peers, script)
    got: List[int] = []
    arrived = Event()
    reader = gevent.spawn(_read, net.accept(listener), got, arrived, 16384, pause=0.001)
    try:
        assert worker.done.wait(timeout=50), "the worker's sends did not end"
        assert full == [True, True]  # its mailbox was full all along
        refusals = [i for i, (refused, _) in enumerate(outcomes) if refused]
        assert not refusals, f"{len(refusals)} of {count} sends refused, from #{refusals[0]} on"
        assert any(waited for _, waited in outcomes), "no send waited: the output never filled"
        wait_until(lambda: len(got) == count, arrived, "every payload at the peer")
    finally:
        reader.kill()
    assert got == list(range(count))


def test_a_stalled_output_refuses_a_full_worker_at_once_until_it_moves_again(
    make_server, peers, net
):
    """The peer reads nothing: the send that finds the output stuck waits out stall_timeout and
    is queued, the connection is stalled, and the next sends are refused at once (without a
    switch to the hub: no wait) while nothing has moved. Once the peer has read what was
    queued, the connection is no longer stalled, and the worker, its mailbox still full, waits
    for its output again instead of being refused."""
    server = make_server(mailbox_size=8)
    server.transport.stall_timeout = 0.25  # documented policy attribute: a quicker test
    listener, sink = net.listener()
    route = Route([f"1#{sink}", "sink"])
    before: List[Tuple[bool, bool]] = []
    after: List[Tuple[bool, bool]] = []
    full_after: List[bool] = []
    refusing = Event()
    moved = Event()

    def script(ctx):
        while sum(refused for refused, _ in before) < 3:
            before.append(_attempt(ctx, route, len(before)))
        refusing.set()
        moved.wait(WAIT)
        full_after.append(ctx.mailbox_full)
        after.extend(_attempt(ctx, route, len(before) + i) for i in range(100))

    worker = _start_with_a_full_mailbox(server, peers, script)
    peer = net.accept(listener)
    assert refusing.wait(timeout=WAIT), "no send was refused"
    # The send that found the output stuck waited and was queued; the next ones were refused
    # without waiting, and the peer has read nothing yet: no byte moved meanwhile.
    assert before[-4:] == [(False, True)] + [(True, False)] * 3
    assert server.transport.connections[sink].stalled
    queued = list(range(len(before) - 3))

    got: List[int] = []
    arrived = Event()
    reader = gevent.spawn(_read, peer, got, arrived, 16384)
    try:
        wait_until(lambda: len(got) == len(queued), arrived, "what was queued at the peer")
        assert not server.transport.connections[sink].stalled  # every byte queued went out
        moved.set()
        assert worker.done.wait(timeout=WAIT), "the worker's later sends did not end"
        assert full_after == [True]
        assert [refused for refused, _ in after] == [False] * 100
        assert any(waited for _, waited in after), "no later send waited: the output never filled"
        wait_until(lambda: len(got) == len(queued) + 100, arrived, "the later payloads")
    finally:
        reader.kill()
    assert got == queued + list(range(len(before), len(before) + 100))


def test_a_sender_waiting_for_its_output_goes_on_once_it_is_back_under_high_water(make_server, net):
    """A local sender whose output is past high_water waits, and goes on as soon as the output
    is back under the mark, not only once it is empty: the peer reads slowly, and the sends that
    waited return while bytes of the output are still going out."""
    server = make_server()
    listener, sink = net.listener()
    route = Route([f"1#{sink}", "sink"])
    count = 150  # 9 MB: more than the kernel buffers (about 4 MB here) and high_water hold
    ctx = server.node.open_context()  # an application's sender: it waits however long it takes
    pending_after_waits: List[int] = []

    def send_all():
        for i in range(count):
            refused, waited = _attempt(ctx, route, i)
            assert not refused
            if waited and i:  # the first one waited for the connection to open
                pending_after_waits.append(server.transport.connections[sink].pending)

    sender = gevent.spawn(send_all)
    got: List[int] = []
    arrived = Event()
    reader = gevent.spawn(_read, net.accept(listener), got, arrived, 16384, pause=0.002)
    try:
        sender.get(timeout=50)
        wait_until(lambda: len(got) == count, arrived, "every payload at the peer")
    finally:
        sender.kill()
        reader.kill()
        ctx.close()
    assert got == list(range(count))
    assert pending_after_waits, "no send waited: the output never filled"
    assert max(pending_after_waits) > 0, "every wait lasted until the output was empty"


# --- graceful stop -------------------------------------------------------------------------------


def test_sigterm_lets_echo_server_finish_and_exit_cleanly(peers):
    with start_echo_server() as server:
        client = peers(server.address)
        count = 5000
        client.send(
            b"".join(frame(["echo_service"], ["app"], BARE.encode(str(i))) for i in range(count))
        )
        client.pending.appendleft(client.receive())  # it is busy handling them
        replies = [int(BARE.decode(m.payload, str)) for m in client.pending]

        server.send_signal(signal.SIGTERM)
        with gevent.Timeout(10, AssertionError("the client never saw the connection end")):
            while True:
                try:
                    data = client.sock.recv(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                replies += [int(BARE.decode(m.payload, str)) for m in client.decoder.feed(data)]
        assert server.wait() == 0  # its log is then read to the end
        assert replies == list(range(len(replies))), "replies lost, duplicated or reordered"
        assert not [line for line in server.err if "unsent" in line], "replies were left unsent"
        dropped = [line for line in server.err if "dropped a message (stopped)" in line]
        assert len(replies) + len(dropped) <= count


# --- security defaults ---------------------------------------------------------------------------


def test_listen_binds_loopback_by_default(node):
    address = TcpTransport(node).listen()
    host, port = parse_host_port(address)
    assert host == "127.0.0.1" and port > 0


class _Exploit:
    """Unpickling this creates ``path``."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_payload_is_never_unpickled(make_server, peers, logs, tmp_path):
    control = str(tmp_path / "control")
    pickle.loads(pickle.dumps(_Exploit(control))).close()
    assert os.path.exists(control), "the exploit does work when unpickled"
    target = str(tmp_path / "pwned")
    evil = pickle.dumps(_Exploit(target))

    server = make_server()
    arrived = Event()
    raw, as_bytes = Recorder(RAW, arrived), Recorder(bytes, arrived)
    server.node.start_worker("raw", raw)
    server.node.start_worker("bytes", as_bytes)
    peer = peers(server.address)
    peer.send(frame(["raw"], ["app"], evil))
    peer.send(frame(["bytes"], ["app"], BARE.encode(evil)))
    peer.send(frame(["echo_service"], ["app"], evil))  # a str worker: not valid BARE text
    wait_until(lambda: raw.bodies and as_bytes.bodies, arrived, "both recorders")
    logs.wait_for("bad_payload", peer.key, level="WARNING")

    assert raw.bodies == [evil] and as_bytes.bodies == [evil]
    assert peer.echo("fine") == "fine"
    assert not os.path.exists(target)


@pytest.mark.parametrize(
    "where", ["onward count", "return count", "address length", "payload length"]
)
def test_huge_announced_sizes_are_rejected_before_allocating(make_server, peers, logs, where):
    huge = encode_uint(1 << 60)
    body = {
        "onward count": b"\x01" + huge + b"\x00" * 16,
        "return count": b"\x01\x00" + huge + b"\x00" * 16,
        "address length": b"\x01\x01\x00" + huge + b"x" * 16,
        "payload length": b"\x01\x00\x00" + huge + b"x" * 16,
    }[where]
    tracemalloc.start()
    try:
        with pytest.raises(RemoteProtocolError):
            decode_body(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000, peak

    server = make_server()
    peer = peers(server.address)
    peer.send(raw_frame(body))
    assert peer.wait_closed()
    logs.wait_for("malformed frame", peer.key, level="WARNING")


@pytest.mark.parametrize(
    "onward, ret, payload",
    [
        (["nobody"], ["app"], b"p" * 60000),
        (["n" * 60000], ["app"], b""),
        (["nobody"], ["r" * 250] * 230, b""),
        (["echo_service"], ["app"], b"\xff" * 60000),
    ],
    ids=["payload", "unknown address", "return route", "undecodable payload"],
)
def test_a_dropped_message_is_logged_in_a_short_line(
    make_server, peers, logs, onward, ret, payload
):
    server = make_server()
    peer = peers(server.address)
    peer.send(frame(onward, ret, payload))
    assert peer.echo("after") == "after"
    (line,) = logs.wait_for("dropped", peer.key, level="WARNING")
    assert len(line) < 1000, len(line)
