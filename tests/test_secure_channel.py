"""Secure channels on nodes: greenockam.secure.channel (docs/secure-channel.md, section 8).

Channels through local hops, TCP hops, a byte-recording relay, middle nodes in other processes
and the real Rust 2021 binaries (skipped with a reason when they cannot run or their fixed ports
are busy). A hand-driven initiator (:class:`RawInitiator`, built on the sans-I/O core) plays a
misbehaving or a Rust peer, to send what greenockam's own initiator never sends: empty inner
routes, replays, tampered and truncated ciphertexts. A channel whose hops are all local runs its
handshake and each message synchronously inside the sending call, so what a test checks after a
send has already happened; across TCP a test waits for a reply instead.
"""

import contextlib
import json
import os
import re
import socket
import stat
import sys
from typing import List

import gevent
import gevent.event
import gevent.subprocess
import pytest
from gevent.queue import Queue
from gevent.server import StreamServer
from loguru import logger

from greenockam import (
    BARE,
    RAW,
    ConnectFailed,
    ConnectionLost,
    LocalProtocolError,
    Node,
    NonceExhausted,
    Route,
    TransportMessage,
    UnknownAddress,
    UntrustedPeer,
    Worker,
)
from greenockam.hub import Hub, RemoteForwarder
from greenockam.secure import (
    Handshake,
    HandshakeTimeout,
    SecureChannelListener,
    channel_of,
    generate_private_key,
    load_identity,
    open_secure_channel,
    public_key,
)
from greenockam.secure.channel import decode_create_responder, encode_create_responder
from greenockam.transport.tcp import TcpTransport
from greenockam.wire import decode_body, encode_body
from helpers import WAIT, RecordingSource, poll_until, split_host_port

pytestmark = pytest.mark.timeout(90)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUST = os.path.join(os.path.dirname(ROOT), "shared", "rust-peers", "9b385e16")
RUST = os.environ.get("GREENOCKAM_RUST_PEERS", RUST)
SECRET = "the secret plaintext 7d1e"

with open(os.path.join(ROOT, "tests", "secure_channel_vectors.json"), encoding="utf-8") as _f:
    VECTORS = json.load(_f)


class Echoer(Worker):
    """Answers every message with its body and records (body, channel it came through)."""

    def __init__(self):
        self.seen = Queue()

    def handle_message(self, ctx, msg):
        self.seen.put((msg.body, channel_of(ctx, msg), msg.return_route))
        ctx.reply(msg, msg.body)


class Sink(Worker):
    """Takes messages and never answers; ``got`` is set by the first one."""

    def __init__(self):
        self.got = gevent.event.Event()

    def handle_message(self, ctx, msg):
        self.got.set()


def dropped(node, reason):
    return node.statistics()["dropped"].get(reason, 0)


class RawInitiator:
    """An initiator driven by hand from a context of ``node``, with the sans-I/O core: what a
    Rust 2021 peer (or an attacker holding a channel) can send."""

    def __init__(self, node, listener=("secure_channel_listener",), **handshake_options):
        self.ctx = node.open_context()
        self.listener = listener
        self.handshake = Handshake(initiator=True, **handshake_options)
        self.route = None

    def open(self):
        request = encode_create_responder(self.handshake.write_message())
        self.ctx.send_payload(self.listener, request)
        message_2 = self.ctx.receive(WAIT, RAW)
        self.handshake.read_message(BARE.decode(message_2.payload, bytes))
        self.route = message_2.return_route  # [.., responder's remote address]
        self.ctx.send_payload(self.route, BARE.encode(self.handshake.write_message()))
        return self

    def sealed(self, onward, body):
        inner = TransportMessage(Route(onward), Route([self.ctx.address]), BARE.encode(body))
        return BARE.encode(self.handshake.send_cipher.encrypt(encode_body(inner)))

    def send_sealed(self, payload):
        self.ctx.send_payload(self.route, payload)

    def receive(self):
        """The next inner message the responder sent back, decrypted."""
        msg = self.ctx.receive(WAIT, RAW)
        plaintext = self.handshake.receive_cipher.decrypt(BARE.decode(msg.payload, bytes))
        return decode_body(plaintext)


@pytest.fixture
def local():
    """One node with a listener and an echoer: channels through local hops only."""
    node = Node()
    echoer = Echoer()
    node.start_worker("echoer", echoer)
    listener = SecureChannelListener(node)
    yield node, listener, echoer
    node.stop(timeout=2.0)


@pytest.fixture
def tcp_pair():
    """Node ``a`` (initiator side) and node ``c`` (listener, echoer, TCP listener on port 0)."""
    a, c = Node(), Node()
    TcpTransport(a)
    tcp_c = TcpTransport(c)
    c_address = tcp_c.listen("127.0.0.1:0")
    echoer = Echoer()
    c.start_worker("echoer", echoer)
    yield a, c, c_address, echoer
    a.stop(timeout=2.0)
    c.stop(timeout=2.0)


# --- the channel ------------------------------------------------------------------------------


def test_a_message_through_the_channel_reaches_the_echoer_and_the_reply_comes_back_through_it(
    local,
):
    node, listener, echoer = local
    channel = open_secure_channel(node, ["secure_channel_listener"], timeout=WAIT)
    with node.open_context("app2") as app:
        app.send([channel.address, "echoer"], "Hello Ockam!")
        reply = app.receive(WAIT)
    body, via, seen_return = echoer.seen.get(timeout=WAIT)
    (responder,) = listener.channels
    assert body == reply.body == "Hello Ockam!"
    assert seen_return == Route([responder.address, "app2"])  # back through the far end
    assert reply.return_route == Route([channel.address, "echoer"])  # back through ours
    assert via is responder
    assert channel.auth_hash == responder.auth_hash
    assert channel.peer_key == responder.local_key and responder.peer_key == channel.local_key


def test_the_listener_request_is_the_rust_enum_of_the_vectors():
    frame = VECTORS["handshake"][0]["frames"][0]
    message_1 = bytes.fromhex(VECTORS["handshake"][0]["message_hex"])
    assert encode_create_responder(message_1).hex() in frame["frame_hex"]
    assert encode_create_responder(message_1)[:2] == b"\x00\x20"
    assert decode_create_responder(encode_create_responder(message_1)) == message_1


def test_a_channel_over_tcp_carries_requests_and_the_worker_sees_the_peer_key(tcp_pair):
    a, c, c_address, echoer = tcp_pair
    identity = generate_private_key()
    listener = SecureChannelListener(c)
    channel = open_secure_channel(a, [f"1#{c_address}", "secure_channel_listener"],
                                  identity=identity, timeout=WAIT)
    for i in range(5):
        assert a.request([channel.address, "echoer"], f"m{i}", timeout=WAIT).body == f"m{i}"
    body, via, _ = echoer.seen.get(timeout=WAIT)
    assert via.peer_key == public_key(identity) == channel.local_key
    assert via in listener.channels and not via.initiator
    assert str(channel.remote_route[0]) == f"1#{c_address}"


class RecordingRelay:
    """A plain TCP relay that records every byte it carries: what a middle hop sees."""

    def __init__(self, upstream):
        self.upstream = split_host_port(upstream)
        self.seen = bytearray()
        self.greenlets = []
        self.server = StreamServer(("127.0.0.1", 0), self._serve)
        self.server.start()
        self.address = f"127.0.0.1:{self.server.server_port}"

    def _serve(self, client, _):
        upstream = gevent.socket.create_connection(self.upstream, WAIT)
        pumps = [
            gevent.spawn(self._pump, client, upstream),
            gevent.spawn(self._pump, upstream, client),
        ]
        self.greenlets += pumps
        gevent.joinall(pumps)

    def _pump(self, src, dst):
        with contextlib.suppress(OSError):
            while True:
                data = src.recv(65536)
                if not data:
                    break
                self.seen += data
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self):
        self.server.stop(timeout=1)
        gevent.killall(self.greenlets, block=True, timeout=2)


def test_a_middle_hop_sees_only_ciphertext(tcp_pair):
    a, c, c_address, _ = tcp_pair
    SecureChannelListener(c)
    relay = RecordingRelay(c_address)
    try:
        assert a.request([f"1#{relay.address}", "echoer"], SECRET, timeout=WAIT).body == SECRET
        assert SECRET.encode() in relay.seen  # the relay does see plain routed messages
        del relay.seen[:]
        channel = open_secure_channel(a, [f"1#{relay.address}", "secure_channel_listener"],
                                      timeout=WAIT)
        for _ in range(3):
            assert a.request([channel.address, "echoer"], SECRET, timeout=WAIT).body == SECRET
        assert relay.seen and SECRET.encode() not in relay.seen
        assert b"echoer" not in relay.seen  # the inner routes are encrypted too
    finally:
        a.stop(timeout=2.0)
        c.stop(timeout=2.0)
        relay.close()


def test_a_channel_through_a_hub_forwarder_shows_the_hub_only_ciphertext(tcp_pair):
    """The responder registers its listener at a hub (docs/hub.md); the initiator opens the
    channel along [hub, forwarder]. Both connections to the hub pass through recording relays."""
    a, c, _, echoer = tcp_pair
    with Node() as hub_node:
        hub_tcp = TcpTransport(hub_node)
        hub_address = hub_tcp.listen("127.0.0.1:0", mark="random")
        hub = Hub(hub_node)
        relays = [RecordingRelay(hub_address), RecordingRelay(hub_address)]
        try:
            SecureChannelListener(c)
            forwarder = RemoteForwarder.create(c, relays[0].address, "secure_channel_listener",
                                               timeout=WAIT, reconnect=False)
            assert forwarder.info is not None
            route = [f"1#{relays[1].address}", forwarder.info.remote_address]
            channel = open_secure_channel(a, route, timeout=WAIT)
            for _ in range(3):
                assert a.request([channel.address, "echoer"], SECRET, timeout=WAIT).body == SECRET
            assert echoer.seen.get(timeout=WAIT)[0] == SECRET
            assert hub.statistics()["forwarded"] >= 1
            for relay in relays:
                assert relay.seen and SECRET.encode() not in relay.seen
                assert b"echoer" not in relay.seen
            forwarder.stop()
        finally:
            for relay in relays:
                relay.close()


# --- authentication ---------------------------------------------------------------------------


def test_pinned_keys_on_both_sides_open_the_channel(tcp_pair):
    a, c, c_address, _ = tcp_pair
    id_a, id_c = generate_private_key(), generate_private_key()
    SecureChannelListener(c, identity=id_c, trust=[public_key(id_a)])
    channel = open_secure_channel(a, [f"1#{c_address}", "secure_channel_listener"],
                                  identity=id_a, trust={public_key(id_c)}, timeout=WAIT)
    assert channel.peer_key == public_key(id_c)
    assert a.request([channel.address, "echoer"], "pinned", timeout=WAIT).body == "pinned"


def test_a_malformed_trust_set_is_refused_before_anything_starts(local):
    node, _, _ = local
    key = public_key(generate_private_key())
    endpoints = node.statistics()["endpoints"]
    for bad in [key, [key.hex()], [key[:31]]]:
        with pytest.raises(LocalProtocolError):
            SecureChannelListener(node, "never", trust=bad)  # type: ignore[arg-type]  # wrong on purpose
        with pytest.raises(LocalProtocolError):
            open_secure_channel(node, ["secure_channel_listener"], trust=bad)  # type: ignore[arg-type]  # wrong on purpose
    assert node.statistics()["endpoints"] == endpoints


def test_the_initiator_refuses_an_untrusted_responder_at_once(tcp_pair):
    a, c, c_address, _ = tcp_pair
    SecureChannelListener(c, identity=generate_private_key())
    endpoints = a.statistics()["endpoints"]
    with pytest.raises(UntrustedPeer) as info:
        open_secure_channel(a, [f"1#{c_address}", "secure_channel_listener"],
                            trust=lambda key: False, timeout=WAIT)
    assert len(info.value.public_key) == 32
    assert a.statistics()["endpoints"] == endpoints  # nothing left behind


def test_the_responder_refuses_an_untrusted_initiator(local):
    node, _, echoer = local
    strict = SecureChannelListener(node, "strict", trust=[public_key(generate_private_key())])
    channel = open_secure_channel(node, ["strict"], timeout=WAIT)  # XX: it cannot know yet
    assert strict.channels == [] and strict.pending == 0
    assert dropped(node, "secure_channel_untrusted") == 1
    with pytest.raises(UnknownAddress):  # the refused end is gone
        node.send([channel.address, "echoer"], "let me in")
    assert echoer.seen.empty()


def test_a_forged_message_2_does_not_break_the_handshake(local):
    node, _, _ = local

    class ForgeFirst(Worker):
        """A hop on the route that puts a forged message 2 before the genuine one."""

        message_type = RAW

        def handle_message(self, ctx, msg):
            if msg.onward_route[1:] and msg.onward_route[1].value != "secure_channel_listener":
                forged = TransportMessage(msg.onward_route[1:], msg.return_route,
                                          BARE.encode(os.urandom(96)))
                ctx.send_message(forged)
            ctx.forward(msg)

    node.start_worker("middle", ForgeFirst())
    channel = open_secure_channel(node, ["middle", "secure_channel_listener"], timeout=WAIT)
    assert channel.statistics()["bad_handshake"] >= 1
    assert node.request([channel.address, "echoer"], "still fine", timeout=WAIT).body == (
        "still fine"
    )


# --- replay, tampering, bad inner messages ----------------------------------------------------


def test_a_replayed_ciphertext_is_dropped_and_counted(local):
    node, _, echoer = local
    peer = RawInitiator(node).open()
    sealed = peer.sealed(["echoer"], "once")
    peer.send_sealed(sealed)
    assert echoer.seen.get(timeout=WAIT)[0] == "once"
    peer.send_sealed(sealed)
    assert dropped(node, "secure_channel_replayed") == 1
    peer.send_sealed(peer.sealed(["echoer"], "next"))
    assert echoer.seen.get(timeout=WAIT)[0] == "next"
    assert echoer.seen.empty()


def test_tampered_and_truncated_ciphertexts_are_dropped_and_the_channel_goes_on(local):
    node, _, echoer = local
    peer = RawInitiator(node).open()
    genuine = BARE.decode(peer.sealed(["echoer"], "x"), bytes)
    for bad in [genuine[:-1] + bytes([genuine[-1] ^ 1]), genuine[:10], genuine[:1], b""]:
        peer.send_sealed(BARE.encode(bad))
    peer.send_sealed(b"\xff")  # not even a data<>
    assert dropped(node, "secure_channel_undecryptable") == 5
    assert echoer.seen.empty()
    peer.send_sealed(peer.sealed(["echoer"], "after"))
    assert echoer.seen.get(timeout=WAIT)[0] == "after"


def test_in_a_run_of_ciphertexts_only_the_bad_ones_are_lost(local):
    node, _, echoer = local
    peer = RawInitiator(node).open()
    first = peer.sealed(["echoer"], "first")
    genuine = BARE.decode(peer.sealed(["echoer"], "x"), bytes)
    tampered = BARE.encode(genuine[:-1] + bytes([genuine[-1] ^ 1]))
    payloads = [first, tampered, first, peer.sealed(["echoer"], "last")]  # first again: replay
    back = Route(["1#127.0.0.1:5"])
    run = [TransportMessage(peer.route, back, p) for p in payloads]
    node.deliver(run, RecordingSource())  # one run
    assert [echoer.seen.get(timeout=WAIT)[0] for _ in range(2)] == ["first", "last"]
    assert dropped(node, "secure_channel_undecryptable") == 1
    assert dropped(node, "secure_channel_replayed") == 1


def test_what_follows_a_refused_handshake_in_the_same_run_is_dropped(local):
    node, _, echoer = local
    SecureChannelListener(node, "strict", trust=[public_key(generate_private_key())])
    peer = RawInitiator(node, listener=["strict"])
    peer.ctx.send_payload(peer.listener, encode_create_responder(peer.handshake.write_message()))
    message_2 = peer.ctx.receive(WAIT, RAW)
    peer.handshake.read_message(BARE.decode(message_2.payload, bytes))
    peer.route = message_2.return_route
    message_3 = BARE.encode(peer.handshake.write_message())  # from a key "strict" refuses
    payloads = [message_3, peer.sealed(["echoer"], "smuggled")]
    node.deliver([TransportMessage(peer.route, Route(["1#127.0.0.1:5"]), p) for p in payloads],
                 RecordingSource())  # one run: the ciphertext reaches the end while it closes
    poll_until(lambda: dropped(node, "secure_channel_untrusted") == 1, "the refusal")
    poll_until(lambda: dropped(node, "unknown_address") == 1, "the ciphertext's drop")
    assert dropped(node, "endpoint_error") == 0 and echoer.seen.empty()


def test_a_decrypted_message_with_an_empty_onward_route_is_dropped_not_fatal(local):
    node, _, echoer = local
    peer = RawInitiator(node).open()
    peer.send_sealed(peer.sealed([], "nowhere"))
    assert dropped(node, "secure_channel_empty_route") == 1
    peer.send_sealed(peer.sealed(["no_such_worker"], "lost"))
    peer.send_sealed(peer.sealed(["echoer"], "alive"))
    assert echoer.seen.get(timeout=WAIT)[0] == "alive"
    assert peer.receive().payload == BARE.encode("alive")


def test_local_only_keeps_decrypted_messages_on_local_workers(local):
    node, _, echoer = local
    SecureChannelListener(node, "local_listener", local_only=True)
    peer = RawInitiator(node, listener=["local_listener"]).open()
    peer.send_sealed(peer.sealed(["1#127.0.0.1:9", "echoer"], "relay me"))
    assert dropped(node, "secure_channel_not_local") == 1
    peer.send_sealed(peer.sealed(["echoer"], "local"))
    assert echoer.seen.get(timeout=WAIT)[0] == "local"


def test_short_and_low_order_handshake_requests_start_no_channel(local):
    node, listener, _ = local
    with node.open_context() as ctx:
        for message_1 in [bytes(31), bytes(32), b""]:  # all-zero: a low-order point
            ctx.send_payload(["secure_channel_listener"], encode_create_responder(message_1))
        ctx.send_payload(["secure_channel_listener"], b"\x01\x20" + bytes(32))  # other variant
        message_1 = encode_create_responder(Handshake(initiator=True).write_message())
        ctx.send_message(TransportMessage(Route(["secure_channel_listener"]), Route(), message_1))
    assert dropped(node, "secure_channel_bad_request") == 5  # the last: nowhere to answer
    assert listener.pending == 0 and listener.channels == []


# --- timeouts and bounds ----------------------------------------------------------------------


def test_an_initiator_whose_responder_never_answers_times_out(local):
    node, _, _ = local
    node.start_worker("black_hole", Sink())
    endpoints = node.statistics()["endpoints"]
    with pytest.raises(HandshakeTimeout):
        open_secure_channel(node, ["black_hole"], timeout=0.2)
    assert node.statistics()["endpoints"] == endpoints


def test_a_flood_of_requests_is_bounded_and_half_open_ends_time_out(local):
    node, _, _ = local
    listener = SecureChannelListener(node, "bounded", max_pending=4, handshake_timeout=0.3)
    with node.open_context() as ctx:  # never answers message 2
        for _ in range(10):
            ctx.send_payload(["bounded"], encode_create_responder(os.urandom(32)))
        assert listener.pending == 4
        assert listener.statistics()["refused"] == 6
        assert dropped(node, "secure_channel_listener_full") == 6
        with gevent.Timeout(WAIT):  # each half-open end closes at its own timer
            while listener.pending:
                gevent.sleep(0.05)
    assert open_secure_channel(node, ["bounded"], timeout=WAIT).established


def test_max_channels_bounds_established_responder_ends(local):
    node, _, _ = local
    listener = SecureChannelListener(node, "two_only", max_channels=2)
    first = open_secure_channel(node, ["two_only"], timeout=WAIT)
    open_secure_channel(node, ["two_only"], timeout=WAIT)
    with pytest.raises(HandshakeTimeout):
        open_secure_channel(node, ["two_only"], timeout=0.2)
    listener.channels[0].close()
    assert open_secure_channel(node, ["two_only"], timeout=WAIT).established
    assert first.established  # the initiator end does not know its peer closed


def test_idle_responder_ends_are_closed(local):
    node, _, _ = local
    listener = SecureChannelListener(node, "idle", idle_timeout=0.2)
    channel = open_secure_channel(node, ["idle"], timeout=WAIT)
    (responder,) = listener.channels
    closed = gevent.event.Event()
    responder.on_close(closed.set)
    assert closed.wait(WAIT)
    assert listener.channels == [] and responder.closed
    with pytest.raises(UnknownAddress):
        node.send([channel.address, "echoer"], "too late")
    listener.stop()


def test_an_initiator_that_cannot_reach_the_first_hop_gets_the_transport_error(tcp_pair):
    a, _, _, _ = tcp_pair
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(ConnectFailed):
            open_secure_channel(a, [f"1#127.0.0.1:{closed_port}", "secure_channel_listener"])


# --- the sending side: limits, renewal, close -------------------------------------------------


def test_sending_past_the_last_nonce_raises_to_the_sender(local):
    node, _, _ = local
    channel = open_secure_channel(node, ["secure_channel_listener"], send_limit=3, timeout=WAIT)
    for i in range(3):
        assert node.request([channel.address, "echoer"], f"{i}", timeout=WAIT).body == f"{i}"
    assert channel.remaining == 0
    with pytest.raises(NonceExhausted):
        node.send([channel.address, "echoer"], "one too many")


def test_renewal_keeps_one_channel_address_past_the_nonce_limit(local):
    node, listener, echoer = local
    SecureChannelListener(node, "small", send_limit=5)
    channel = open_secure_channel(node, ["small"], send_limit=5, renew_below=2, timeout=WAIT)
    for i in range(40):
        reply = node.request([channel.address, "echoer"], f"n{i}", timeout=WAIT)
        assert reply.body == f"n{i}" and reply.return_route[0] == channel.address
    assert channel.statistics()["handshakes"] >= 10
    assert channel.statistics()["sent"] == 40


def test_renewal_over_tcp_with_pipelined_messages(tcp_pair):
    a, c, c_address, _ = tcp_pair
    listener = SecureChannelListener(c, send_limit=8, idle_timeout=WAIT)
    route = [f"1#{c_address}", "secure_channel_listener"]
    channel = open_secure_channel(a, route, send_limit=8, renew_below=3, timeout=WAIT)
    with a.open_context() as app:
        for i in range(60):  # no waiting for replies: renewals overlap with traffic
            app.send([channel.address, "echoer"], f"p{i}")
        replies = sorted(app.receive(WAIT).body for _ in range(60))
    assert replies == sorted(f"p{i}" for i in range(60))
    assert channel.statistics()["handshakes"] >= 60 // 8
    assert len(listener.channels) >= 2


def test_a_plaintext_too_large_for_one_frame_is_refused_before_anything_is_sent(local):
    node, _, echoer = local
    channel = open_secure_channel(node, ["secure_channel_listener"], timeout=WAIT)
    before = channel.remaining
    with pytest.raises(LocalProtocolError):
        node.send([channel.address, "echoer"], b"x" * 65500)
    assert channel.remaining == before and channel.statistics()["sent"] == 0
    node.send([channel.address, "echoer"], b"x" * 60000)
    assert echoer.seen.get(timeout=WAIT)[0] == "x" * 60000


def test_a_contexts_repeated_sends_through_a_channel_fail_as_its_first_one_would(local):
    node, _, echoer = local
    channel = open_secure_channel(node, ["secure_channel_listener"], send_limit=4, timeout=WAIT)
    with node.open_context() as app:
        for i in range(3):  # after the first, the channel's outlet carries them
            app.send([channel.address, "echoer"], f"m{i}")
        with pytest.raises(LocalProtocolError):
            app.send([channel.address, "echoer"], b"x" * 65500)
        app.send([channel.address, "echoer"], "last")
        with pytest.raises(NonceExhausted):
            app.send([channel.address, "echoer"], "one too many")
        assert [echoer.seen.get(timeout=WAIT)[0] for _ in range(4)] == ["m0", "m1", "m2", "last"]
        assert channel.statistics()["sent"] == 4
        channel.close()
        with pytest.raises(UnknownAddress):
            app.send([channel.address, "echoer"], "closed")


def test_closing_a_channel_fails_a_waiting_request_and_frees_its_addresses(local):
    node, _, _ = local
    sink = Sink()
    node.start_worker("sink", sink)
    endpoints = node.statistics()["endpoints"]
    channel = open_secure_channel(node, ["secure_channel_listener"], timeout=WAIT)
    waiting = gevent.spawn(node.request, [channel.address, "sink"], "anyone?", WAIT)
    assert sink.got.wait(WAIT)  # the request went through the channel; its reply never comes
    channel.close()
    with pytest.raises(ConnectionLost):
        waiting.get(timeout=WAIT)
    with pytest.raises(UnknownAddress):
        node.send([channel.address, "sink"], "closed")
    assert channel.closed and channel_of(node, Route([channel.address])) is None
    # The responder end stays (the 2021 protocol has no close message) until closed itself.
    assert node.statistics()["endpoints"] == endpoints + 2


# --- identity files ---------------------------------------------------------------------------


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
def test_an_identity_is_created_once_readable_by_its_owner_only(tmp_path):
    path = str(tmp_path / "identity")
    key = load_identity(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_identity(path) == key and len(key) == 32
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError):
        load_identity(path)
    os.chmod(path, 0o600)
    with open(path, "w") as f:
        f.write("not a key\n")
    with pytest.raises(ValueError):
        load_identity(path)
    with pytest.raises(FileNotFoundError):
        load_identity(str(tmp_path / "absent"), create=False)


# --- logs -------------------------------------------------------------------------------------


def test_no_payload_or_plaintext_reaches_the_logs(local):
    node, _, echoer = local
    lines: List[str] = []
    sink = logger.add(lines.append, level="TRACE", format="{message}")
    logger.enable("greenockam")
    try:
        channel = open_secure_channel(node, ["secure_channel_listener"], timeout=WAIT)
        assert node.request([channel.address, "echoer"], SECRET, timeout=WAIT).body == SECRET
        peer = RawInitiator(node).open()
        sealed = peer.sealed(["echoer"], SECRET)
        peer.send_sealed(sealed)
        peer.send_sealed(sealed)  # a replay: logged
        peer.send_sealed(peer.sealed([], SECRET))  # an empty route: logged
        peer.send_sealed(peer.sealed(["nobody"], SECRET))  # undeliverable: logged
    finally:
        logger.disable("greenockam")
        logger.remove(sink)
    text = "".join(map(str, lines))
    assert "replay" in text and "empty" in text.lower()
    for secret in [SECRET, SECRET.encode().hex(), BARE.encode(SECRET).hex()]:
        assert secret not in text


# --- other processes: middle nodes and the Rust 2021 binaries ---------------------------------


ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT] + [os.environ.get("PYTHONPATH", "")]))
READY = re.compile(rb"listening on (\S+)")


@contextlib.contextmanager
def echo_server(*options):
    """scripts/echo_server.py on port 0; yields its bound HOST:PORT."""
    proc = gevent.subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "scripts", "echo_server.py"), "127.0.0.1:0",
         "--log-level", "WARNING", *options],
        stdout=gevent.subprocess.PIPE, env=ENV,
    )
    try:
        with gevent.Timeout(30, AssertionError("the echo server did not start")):
            line = proc.stdout.readline()
        match = READY.search(line)
        assert match, line
        yield match.group(1).decode()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except gevent.subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def echo_client(*options):
    """scripts/echo_client.py: (exit code, stdout, stderr)."""
    proc = gevent.subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "scripts", "echo_client.py"), "--log-level",
         "ERROR", *options],
        stdout=gevent.subprocess.PIPE, stderr=gevent.subprocess.PIPE, env=ENV,
    )
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out.decode(), err.decode()


def test_the_echo_scripts_talk_through_a_pinned_secure_channel(tmp_path):
    server_identity = str(tmp_path / "server.key")
    with echo_server("--worker", "echoer", "--identity", server_identity) as address:
        key = public_key(load_identity(server_identity, create=False)).hex()
        channel = f"1#{address} => secure_channel_listener"
        code, out, err = echo_client("--secure-channel", channel, "--route", "echoer",
                                     "--trust", key, "--message", SECRET,
                                     "--identity", str(tmp_path / "client.key"))
        assert (code, out) == (0, SECRET + "\n") and "error" not in err
        other = public_key(generate_private_key()).hex()
        code, out, err = echo_client("--secure-channel", channel, "--route", "echoer",
                                     "--trust", other)
        assert code == 1 and out == ""
        assert [line for line in err.splitlines() if line.startswith("error:")] == [
            f"error: the peer's static key {key} is not trusted"
        ]


@pytest.mark.parametrize("middles", [1, 2])
def test_a_channel_through_middle_nodes_in_other_processes(tcp_pair, middles):
    a, c, c_address, echoer = tcp_pair
    SecureChannelListener(c)
    with contextlib.ExitStack() as stack:
        hops = [c_address]
        for _ in range(middles):  # scripts/echo_server.py, with a connection to the next hop
            hops.insert(0, stack.enter_context(echo_server("--connect", hops[0])))
        route = [f"1#{hop}" for hop in hops] + ["secure_channel_listener"]
        channel = open_secure_channel(a, route, timeout=WAIT)
        assert a.request([channel.address, "echoer"], SECRET, timeout=WAIT).body == SECRET
        assert channel.remote_route[:-1] == Route(route[:-1])
        through = channel_of(c, echoer.seen.get(timeout=WAIT)[2])
        assert through is not None and through.peer_key == channel.local_key


def rust_binary(name):
    path = os.path.join(RUST, name)
    if not os.access(path, os.X_OK):
        pytest.skip(f"the Rust 2021 peer {path} is not available")
    return path


def ports_free(*ports):
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the listeners do
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                pytest.skip(f"port {port}, hard-coded in the Rust examples, is busy")


def wait_listening(port, proc):
    with gevent.Timeout(30, False):
        while proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                return
            gevent.sleep(0.05)
    pytest.skip(f"the Rust peer did not listen on {port} (exit code {proc.poll()})")


@contextlib.contextmanager
def rust(name, port=None):
    """A Rust 2021 example running (under ``timeout``), ready once it listens on ``port``."""
    env = dict(os.environ, OCKAM_LOG="warn")
    try:
        proc = gevent.subprocess.Popen(["timeout", "60", rust_binary(name)], env=env,
                                       stdout=gevent.subprocess.PIPE)
    except OSError as exc:
        pytest.skip(f"cannot run the Rust peer {name}: {exc}")
    try:
        if port is not None:
            wait_listening(port, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait()
        proc.stdout.close()


def run_rust_initiator():
    with rust("09-secure-channel-over-many-transport-hops-initiator") as proc:
        out, _ = proc.communicate(timeout=60)
    return out.decode(errors="replace")


def test_python_initiator_rust_middle_rust_responder():
    ports_free(3000, 4000)
    with rust("09-secure-channel-over-many-transport-hops-responder", 4000), rust(
        "09-secure-channel-over-many-transport-hops-middle", 3000
    ), Node() as a:
        TcpTransport(a)
        route = "1#127.0.0.1:3000 => 1#127.0.0.1:4000 => secure_channel_listener"
        channel = open_secure_channel(a, route, timeout=WAIT)
        for i in range(3):
            reply = a.request([channel.address, "echoer"], f"Hello Ockam! {i}", timeout=WAIT)
            assert reply.body == f"Hello Ockam! {i}"
        assert len(channel.peer_key) == 32


def test_rust_initiator_rust_middle_greenockam_responder():
    ports_free(3000, 4000)
    with Node() as c:
        TcpTransport(c).listen("127.0.0.1:4000")
        echoer = Echoer()
        c.start_worker("echoer", echoer)
        listener = SecureChannelListener(c)
        with rust("09-secure-channel-over-many-transport-hops-middle", 3000):
            out = run_rust_initiator()
        assert "App Received: Hello Ockam!" in out
        body, via, _ = echoer.seen.get(timeout=WAIT)
        assert body == "Hello Ockam!" and via in listener.channels


def test_rust_initiator_greenockam_middle_greenockam_responder():
    ports_free(3000, 4000)
    with Node() as b, Node() as c:
        TcpTransport(c).listen("127.0.0.1:4000")
        c.start_worker("echoer", Echoer())
        SecureChannelListener(c)
        middle = TcpTransport(b)
        middle.connect("127.0.0.1:4000")
        middle.listen("127.0.0.1:3000")
        assert "App Received: Hello Ockam!" in run_rust_initiator()
