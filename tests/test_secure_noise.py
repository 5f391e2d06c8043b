"""The secure channel's cryptographic core (docs/secure-channel.md): handshake and ciphers.

Byte tests without sockets. The vector tests are driven by tests/secure_channel_vectors.json,
whose handshake messages equal the Rust 2021 crate's own test constants and whose keys and
ciphertexts were checked live against the Rust 2021 nodes. The hostile tests check that every
bad input raises the documented error and leaves the handshake or cipher as it was.
"""

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from greenockam.address import Route
from greenockam.codecs import BARE
from greenockam.errors import (
    DecryptFailed,
    HandshakeFailed,
    LocalProtocolError,
    NonceExhausted,
    RemoteProtocolError,
    ReplayedMessage,
    SecureChannelError,
    UntrustedPeer,
)
from greenockam.secure import (
    CHANNEL_OVERHEAD,
    MAX_MESSAGES,
    MAX_PLAINTEXT,
    Handshake,
    ReceiveCipher,
    SendCipher,
    generate_private_key,
    public_key,
)
from greenockam.wire import MAX_BODY, TransportMessage, decode_body, encode_body, encode_frame

_VECTORS_PATH = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "secure_channel_vectors.json"
)
with open(_VECTORS_PATH, encoding="utf-8") as _f:
    VECTORS = json.load(_f)

KEYS = {name: bytes.fromhex(value) for name, value in VECTORS["keys"].items()}
PUBLIC = {name: bytes.fromhex(value) for name, value in VECTORS["public_keys"].items()}
M1, M2, M3 = (bytes.fromhex(step["message_hex"]) for step in VECTORS["handshake"])
RESULT = {name: bytes.fromhex(value) for name, value in VECTORS["result"].items()}
TRACE_H = {
    role: {step["step"]: bytes.fromhex(step["h"]) for step in steps}
    for role, steps in VECTORS["trace"].items()
}
MESSAGES = VECTORS["messages"]
NEGATIVE = VECTORS["negative"]

# Points of small order on Curve25519: X25519 with any private key gives all zeros.
LOW_ORDER_POINTS = [
    bytes(32),
    b"\x01" + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
]

SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def vector_initiator(**options):
    return Handshake(
        initiator=True,
        static_key=KEYS["init_static_private"],
        ephemeral_key=KEYS["init_ephemeral_private"],
        **options,
    )


def vector_responder(**options):
    return Handshake(
        initiator=False,
        static_key=KEYS["resp_static_private"],
        ephemeral_key=KEYS["resp_ephemeral_private"],
        **options,
    )


def run_handshake(initiator, responder):
    """Drive both sides through the three messages; return them."""
    responder.read_message(initiator.write_message())
    initiator.read_message(responder.write_message())
    responder.read_message(initiator.write_message())
    return initiator, responder


def route(addresses):
    return Route(addresses)


def inner_message(decoded):
    """The inner TransportMessage a vector describes as onward/return/payload."""
    return TransportMessage(
        route(decoded["onward"]), route(decoded["return"]), bytes.fromhex(decoded["payload_hex"])
    )


def sender_and_receiver(direction, initiator, responder):
    if direction == "initiator -> responder":
        return initiator.send_cipher, responder.receive_cipher
    return responder.send_cipher, initiator.receive_cipher


# --- the vectors: keys and handshake ---------------------------------------------------------


@pytest.mark.parametrize(
    "private, public",
    [
        ("init_static_private", "init_static"),
        ("init_ephemeral_private", "init_ephemeral"),
        ("resp_static_private", "resp_static"),
        ("resp_ephemeral_private", "resp_ephemeral"),
    ],
)
def test_public_key_of_each_vector_private_key(private, public):
    assert public_key(KEYS[private]) == PUBLIC[public]


def test_initiator_writes_messages_1_and_3_byte_for_byte():
    initiator = vector_initiator()
    assert initiator.handshake_hash == TRACE_H["initiator"]["init"]
    assert initiator.write_message() == M1
    assert initiator.handshake_hash == TRACE_H["initiator"]["m1"]
    initiator.read_message(M2)  # the vector's message 2, as the Rust responder wrote it
    assert initiator.handshake_hash == TRACE_H["initiator"]["m2"]
    assert initiator.write_message() == M3
    assert initiator.handshake_hash == TRACE_H["initiator"]["m3"]
    assert initiator.complete


def test_responder_writes_message_2_byte_for_byte():
    responder = vector_responder()
    assert responder.handshake_hash == TRACE_H["responder"]["init"]
    responder.read_message(M1)
    assert responder.handshake_hash == TRACE_H["responder"]["m1"]
    assert responder.write_message() == M2
    assert responder.handshake_hash == TRACE_H["responder"]["m2"]
    responder.read_message(M3)
    assert responder.handshake_hash == TRACE_H["responder"]["m3"]
    assert responder.complete


def test_message_sizes_are_32_96_64():
    sizes = [step["message_len"] for step in VECTORS["handshake"]]
    assert [len(M1), len(M2), len(M3)] == sizes == [32, 96, 64]


def test_both_sides_end_with_the_auth_hash_and_each_others_static_key():
    initiator, responder = run_handshake(vector_initiator(), vector_responder())
    assert initiator.handshake_hash == responder.handshake_hash == RESULT["auth_hash"]
    assert initiator.remote_static == PUBLIC["resp_static"] == responder.local_static
    assert responder.remote_static == PUBLIC["init_static"] == initiator.local_static


def test_handshake_payloads_and_frames_match_the_vectors():
    """Message 1 travels as CreateResponderChannel (variant 0, then data<>), messages 2 and 3
    as data<>; the frames around them are ordinary routed frames."""
    payloads = [b"\x00" + BARE.encode(M1), BARE.encode(M2), BARE.encode(M3)]
    for step, payload in zip(VECTORS["handshake"], payloads):
        for frame in step["frames"]:
            assert payload.hex() == frame["payload_hex"], frame["link"]
            message = TransportMessage(route(frame["onward"]), route(frame["return"]), payload)
            assert encode_frame(message).hex() == frame["frame_hex"], frame["link"]


def test_split_keys_are_swapped_relative_to_the_noise_specification():
    """The initiator encrypts with the split's second half and decrypts with its first."""
    assert RESULT["initiator_encrypt_key"] == RESULT["hkdf_split_second_half"]
    assert RESULT["initiator_decrypt_key"] == RESULT["hkdf_split_first_half"]
    assert RESULT["responder_encrypt_key"] == RESULT["hkdf_split_first_half"]
    assert RESULT["responder_decrypt_key"] == RESULT["hkdf_split_second_half"]
    plaintext = b"which key?"
    # A cipher built from the vector key writes the very bytes the handshake's cipher writes,
    # and reads what the handshake's peer cipher writes: the keys are the vector's.
    for role in ("initiator", "responder"):
        initiator, responder = run_handshake(vector_initiator(), vector_responder())
        handshake, peer = (initiator, responder) if role == "initiator" else (responder, initiator)
        reference = SendCipher(RESULT[f"{role}_encrypt_key"]).encrypt(plaintext)
        assert handshake.send_cipher.encrypt(plaintext) == reference
        sealed = peer.send_cipher.encrypt(plaintext)
        assert ReceiveCipher(RESULT[f"{role}_decrypt_key"]).decrypt(sealed) == plaintext


# --- the vectors: transport phase ------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(MESSAGES)), ids=lambda i: f"message{i}")
def test_transport_message_vector(index):
    vector = MESSAGES[index]
    initiator, responder = run_handshake(vector_initiator(), vector_responder())
    sender, receiver = sender_and_receiver(vector["direction"], initiator, responder)
    for earlier in MESSAGES[:index]:  # the earlier messages of this direction use its nonces
        if earlier["direction"] == vector["direction"]:
            receiver.decrypt(sender.encrypt(bytes.fromhex(earlier["plaintext_hex"])))
    assert sender.next_nonce == vector["nonce"]

    # The channel end encodes the inner message like a frame body, then encrypts it.
    inner = TransportMessage(
        route(vector["app_sends_to"][1:]),
        route(vector["app_return_route"]),
        bytes.fromhex(vector["app_payload_hex"]),
    )
    plaintext = encode_body(inner)
    assert plaintext.hex() == vector["plaintext_hex"]
    sealed = sender.encrypt(plaintext)
    assert sealed.hex() == vector["channel_payload_hex"]
    assert sealed[:2] == vector["nonce"].to_bytes(2, "big")
    assert len(sealed) == len(plaintext) + CHANNEL_OVERHEAD
    for frame in vector["frames"]:
        assert BARE.encode(sealed).hex() == frame["payload_hex"], frame["link"]
        payload = BARE.encode(sealed)
        outer = TransportMessage(route(frame["onward"]), route(frame["return"]), payload)
        assert encode_frame(outer).hex() == frame["frame_hex"], frame["link"]

    # The far end decrypts the same bytes back to the inner message.
    opened = receiver.decrypt(bytes.fromhex(vector["channel_payload_hex"]))
    assert opened == plaintext
    assert decode_body(opened) == inner_message(vector["plaintext_decoded"])
    assert receiver.highest_nonce == vector["nonce"]


def _negative_outcome(receiver, case):
    """What the responder's receive cipher makes of a negative vector: ("drop", error type) or
    ("deliver", nonce, inner message)."""
    try:
        sealed = BARE.decode(bytes.fromhex(case["transport_payload_hex"]), bytes)
    except RemoteProtocolError as exc:
        return ("drop", type(exc))
    try:
        opened = receiver.decrypt(sealed)
    except SecureChannelError as exc:
        return ("drop", type(exc))
    return ("deliver", int.from_bytes(sealed[:2], "big"), decode_body(opened))


def test_negative_vectors_in_order():
    """The cases run in the vector's order against one responder that has read nonces 0-2:
    every bad one is dropped without changing the cipher, so the genuine nonce-3 message after
    them is delivered, and its replay is dropped (Rust 2021 delivered it again)."""
    initiator, responder = run_handshake(vector_initiator(), vector_responder())
    sender, receiver = initiator.send_cipher, responder.receive_cipher
    for vector in MESSAGES:
        if vector["direction"] == "initiator -> responder":
            receiver.decrypt(bytes.fromhex(vector["channel_payload_hex"]))
    assert receiver.highest_nonce == 2

    expected = {
        "drop: does not authenticate": ("drop", DecryptFailed),
        "drop: shorter than the 2-byte nonce": ("drop", DecryptFailed),
        "drop: not a BARE data<>": ("drop", RemoteProtocolError),
        "drop: replayed nonce 3": ("drop", ReplayedMessage),
    }
    for case in NEGATIVE:
        if case["channel_payload_hex"] is not None:
            assert BARE.encode(bytes.fromhex(case["channel_payload_hex"])).hex() == (
                case["transport_payload_hex"]
            )
        outcome = _negative_outcome(receiver, case)
        if case["reference_outcome"] == "deliver: 3":
            assert case["delivered"] == 1
            inner = TransportMessage(route(["0#echoer"]), route(["0#app"]), outcome[2].payload)
            assert outcome[:2] == ("deliver", 3), case["name"]
            assert outcome[2] == inner, case["name"]
        else:
            assert case["delivered"] == 0
            assert outcome == expected[case["reference_outcome"]], case["name"]
    assert receiver.highest_nonce == 3
    assert sender.next_nonce == 0  # the negative vectors were made by the reference, not here


# --- both roles with random keys -------------------------------------------------------------


def test_random_keys_both_roles_agree_and_talk_both_ways():
    initiator, responder = run_handshake(Handshake(initiator=True), Handshake(initiator=False))
    assert initiator.handshake_hash == responder.handshake_hash
    assert initiator.remote_static == responder.local_static
    assert responder.remote_static == initiator.local_static
    for n in range(5):
        to_responder = b"ping %d" % n
        assert responder.receive_cipher.decrypt(initiator.send_cipher.encrypt(to_responder)) == (
            to_responder
        )
        to_initiator = b"pong %d" % n
        assert initiator.receive_cipher.decrypt(responder.send_cipher.encrypt(to_initiator)) == (
            to_initiator
        )
    assert initiator.send_cipher.next_nonce == responder.send_cipher.next_nonce == 5
    assert initiator.receive_cipher.highest_nonce == 4


def test_a_given_static_key_is_the_one_the_peer_sees():
    identity = generate_private_key()
    assert len(identity) == 32
    initiator, responder = run_handshake(
        Handshake(initiator=True, static_key=identity), Handshake(initiator=False)
    )
    assert initiator.local_static == public_key(identity) == responder.remote_static


def test_fresh_keys_for_every_handshake():
    identity = generate_private_key()
    assert generate_private_key() != identity
    first, _ = run_handshake(
        Handshake(initiator=True, static_key=identity), Handshake(initiator=False)
    )
    second, _ = run_handshake(
        Handshake(initiator=True, static_key=identity), Handshake(initiator=False)
    )
    assert first.local_static == second.local_static
    assert first.handshake_hash != second.handshake_hash  # fresh ephemeral keys each time
    assert Handshake(initiator=False).local_static != Handshake(initiator=False).local_static


def test_each_end_reads_only_what_its_peer_of_this_channel_sent():
    a_initiator, a_responder = run_handshake(Handshake(initiator=True), Handshake(initiator=False))
    b_initiator, _ = run_handshake(Handshake(initiator=True), Handshake(initiator=False))
    sealed = b_initiator.send_cipher.encrypt(b"for another channel")
    with pytest.raises(DecryptFailed):
        a_responder.receive_cipher.decrypt(sealed)
    own = a_initiator.send_cipher.encrypt(b"mine")  # a channel's own direction key does not
    with pytest.raises(DecryptFailed):  # open what it sealed: the two directions differ
        a_initiator.receive_cipher.decrypt(own)
    assert a_responder.receive_cipher.decrypt(own) == b"mine"


# --- hostile handshakes ----------------------------------------------------------------------


def responder_waiting_for_message_3():
    responder = vector_responder()
    responder.read_message(M1)
    responder.write_message()
    return responder


def initiator_waiting_for_message_2(**options):
    initiator = vector_initiator(**options)
    initiator.write_message()
    return initiator


def waiting_for_message(number):
    """A vector handshake whose next step is to read message ``number``."""
    if number == 1:
        return vector_responder()
    if number == 2:
        return initiator_waiting_for_message_2()
    return responder_waiting_for_message_3()


def flipped(message, index):
    return message[:index] + bytes([message[index] ^ 0x01]) + message[index + 1 :]


@pytest.mark.parametrize("index", [0, 31, 32, 60, 79, 80, 95], ids=lambda i: f"byte{i}")
def test_tampered_message_2_is_refused_and_changes_nothing(index):
    initiator = initiator_waiting_for_message_2()
    before = initiator.handshake_hash
    with pytest.raises(HandshakeFailed):
        initiator.read_message(flipped(M2, index))
    assert initiator.handshake_hash == before
    assert initiator.remote_static is None and not initiator.complete
    initiator.read_message(M2)  # the genuine message 2 still works (Rust 2021: it did not)
    assert initiator.write_message() == M3


@pytest.mark.parametrize("index", [0, 31, 47, 48, 63], ids=lambda i: f"byte{i}")
def test_tampered_message_3_is_refused_and_changes_nothing(index):
    responder = responder_waiting_for_message_3()
    before = responder.handshake_hash
    with pytest.raises(HandshakeFailed):
        responder.read_message(flipped(M3, index))
    assert responder.handshake_hash == before
    assert responder.remote_static is None and not responder.complete
    with pytest.raises(LocalProtocolError):
        _ = responder.send_cipher
    responder.read_message(M3)
    assert responder.handshake_hash == RESULT["auth_hash"]


@pytest.mark.parametrize(
    "which, message, cut",
    [(1, M1, 31), (1, M1, 0), (2, M2, 95), (2, M2, 80), (2, M2, 32), (3, M3, 63), (3, M3, 48)],
    ids=lambda v: str(v) if isinstance(v, int) else "",
)
def test_truncated_handshake_messages_are_refused(which, message, cut):
    handshake = waiting_for_message(which)
    before = handshake.handshake_hash
    with pytest.raises(HandshakeFailed, match=f"message {which}"):
        handshake.read_message(message[:cut])
    assert handshake.handshake_hash == before
    handshake.read_message(message)  # nothing was changed by the short one


def test_a_longer_message_1_is_read_as_rust_reads_it():
    """Rust accepts bytes after the ephemeral key (a payload) and mixes them into h."""
    responder = vector_responder()
    responder.read_message(M1 + b"payload")
    assert responder.handshake_hash != TRACE_H["responder"]["m1"]
    assert len(responder.write_message()) == 96


@pytest.mark.parametrize("point", LOW_ORDER_POINTS, ids=lambda p: p[:2].hex())
def test_low_order_ephemeral_keys_are_refused(point):
    responder = vector_responder()
    with pytest.raises(HandshakeFailed, match="low-order"):
        responder.read_message(point)
    responder.read_message(M1)

    initiator = initiator_waiting_for_message_2()
    with pytest.raises(HandshakeFailed, match="low-order"):
        initiator.read_message(point + M2[32:])
    initiator.read_message(M2)


def test_a_forged_message_2_then_the_genuine_one():
    """A node on the route answers message 1 with its own responder. Without a trust policy
    the initiator takes it (all 2021 offers); with one, it refuses the forgery, changes nothing,
    and completes with the genuine responder's message 2."""
    trusted = {PUBLIC["resp_static"]}
    initiator = vector_initiator(verify_peer=trusted.__contains__)
    message_1 = initiator.write_message()
    impostor = Handshake(initiator=False)
    impostor.read_message(message_1)
    forged = impostor.write_message()
    before = initiator.handshake_hash

    with pytest.raises(UntrustedPeer) as refused:
        initiator.read_message(forged)
    assert refused.value.public_key == impostor.local_static
    assert isinstance(refused.value, HandshakeFailed)
    assert initiator.handshake_hash == before and initiator.remote_static is None

    initiator.read_message(M2)
    assert initiator.remote_static == PUBLIC["resp_static"]
    assert initiator.write_message() == M3

    unguarded = vector_initiator()  # the 2021 behaviour: any authentic key is taken
    impostor = Handshake(initiator=False)
    impostor.read_message(unguarded.write_message())
    unguarded.read_message(impostor.write_message())
    assert unguarded.remote_static == impostor.local_static


def test_the_responder_refuses_an_untrusted_initiator():
    seen = []

    def verify(key):
        seen.append(key)
        return False

    responder = vector_responder(verify_peer=verify)
    responder.read_message(M1)
    responder.write_message()
    with pytest.raises(UntrustedPeer):
        responder.read_message(M3)
    assert seen == [PUBLIC["init_static"]]
    assert not responder.complete and responder.remote_static is None
    with pytest.raises(LocalProtocolError):
        _ = responder.receive_cipher


def test_calls_in_the_wrong_order_raise_and_change_nothing():
    initiator = vector_initiator()
    with pytest.raises(LocalProtocolError, match="writes message 1"):
        initiator.read_message(M2)
    responder = vector_responder()
    with pytest.raises(LocalProtocolError, match="reads message 1"):
        responder.write_message()
    for handshake in (initiator, responder):
        with pytest.raises(LocalProtocolError, match="not complete"):
            _ = handshake.send_cipher
        with pytest.raises(LocalProtocolError, match="not complete"):
            _ = handshake.receive_cipher

    assert initiator.write_message() == M1
    with pytest.raises(LocalProtocolError, match="reads message 2"):
        initiator.write_message()
    responder.read_message(M1)
    with pytest.raises(LocalProtocolError, match="writes message 2"):
        responder.read_message(M3)
    assert responder.write_message() == M2
    initiator.read_message(M2)
    assert initiator.write_message() == M3
    responder.read_message(M3)

    for handshake in (initiator, responder):
        assert handshake.complete
        with pytest.raises(LocalProtocolError, match="complete"):
            handshake.write_message()
        with pytest.raises(LocalProtocolError, match="complete"):
            handshake.read_message(M3)
    assert initiator.handshake_hash == RESULT["auth_hash"]
    assert initiator.send_cipher is initiator.send_cipher  # one cipher: nonces are never reused


def test_bad_keys_and_limits_are_refused():
    with pytest.raises(LocalProtocolError, match="32 bytes"):
        Handshake(initiator=True, static_key=bytes(31))
    with pytest.raises(LocalProtocolError, match="32 bytes"):
        Handshake(initiator=True, ephemeral_key=bytes(33))
    with pytest.raises(LocalProtocolError, match="32 bytes"):
        public_key(b"")
    with pytest.raises(LocalProtocolError, match="32 bytes"):
        SendCipher(bytes(16))
    with pytest.raises(LocalProtocolError, match="32 bytes"):
        ReceiveCipher(bytes(24))
    with pytest.raises(LocalProtocolError, match="send_limit"):
        Handshake(initiator=True, send_limit=MAX_MESSAGES + 1)
    with pytest.raises(LocalProtocolError, match="replay_window"):
        ReceiveCipher(bytes(32), window=0)
    with pytest.raises(LocalProtocolError, match="replay_window"):
        Handshake(initiator=False, replay_window=65537)


def test_repr_shows_the_state_and_no_key():
    initiator, responder = run_handshake(vector_initiator(), vector_responder())
    texts = [repr(vector_initiator()), repr(initiator), repr(initiator.send_cipher)]
    texts.append(repr(responder.receive_cipher))
    assert texts[0] == "<Handshake initiator, next: write message 1>"
    assert texts[1] == "<Handshake initiator, complete>"
    secrets = [value.hex() for value in list(KEYS.values()) + list(RESULT.values())]
    for text in texts:
        assert not any(secret[:16] in text for secret in secrets)


@SETTINGS
@given(step=st.sampled_from([1, 2, 3]), data=st.binary(max_size=200))
def test_random_bytes_as_a_handshake_message_raise_handshake_failed_only(step, data):
    handshake = waiting_for_message(step)
    before = handshake.handshake_hash
    try:
        handshake.read_message(data)
    except HandshakeFailed:
        assert handshake.handshake_hash == before and not handshake.complete
    else:  # only message 1 carries nothing to authenticate
        assert step == 1 and len(data) >= 32


# --- hostile transport -----------------------------------------------------------------------


@pytest.fixture
def channel():
    """A completed vector handshake: (initiator, responder)."""
    return run_handshake(vector_initiator(), vector_responder())


def test_tampering_with_any_byte_is_refused_and_the_channel_goes_on(channel):
    initiator, responder = channel
    sealed = initiator.send_cipher.encrypt(b"integrity")
    receiver = responder.receive_cipher
    for index in range(len(sealed)):
        with pytest.raises(DecryptFailed):
            receiver.decrypt(flipped(sealed, index))
    assert receiver.highest_nonce == -1
    assert receiver.decrypt(sealed) == b"integrity"


@pytest.mark.parametrize("size", [0, 1, 2, 17], ids=lambda n: f"{n}bytes")
def test_truncated_channel_messages_are_refused(channel, size):
    initiator, responder = channel
    sealed = initiator.send_cipher.encrypt(b"")
    assert len(sealed) == CHANNEL_OVERHEAD
    message = "nonce" if size < 2 else "tag"
    with pytest.raises(DecryptFailed, match=message):
        responder.receive_cipher.decrypt(sealed[:size])
    assert responder.receive_cipher.decrypt(sealed) == b""


def test_each_nonce_is_accepted_once(channel):
    initiator, responder = channel
    sealed = [initiator.send_cipher.encrypt(b"%d" % n) for n in range(10)]
    receiver = responder.receive_cipher
    for n in (9, 3, 0, 5, 1, 2, 8, 4, 7, 6):  # reordered within the window: each arrives once
        assert receiver.decrypt(sealed[n]) == b"%d" % n
    for n in range(10):
        with pytest.raises(ReplayedMessage, match=f"nonce {n} was accepted before"):
            receiver.decrypt(sealed[n])
    assert receiver.highest_nonce == 9


def test_a_nonce_older_than_the_window_is_refused():
    key = bytes(range(32))
    sender, receiver = SendCipher(key), ReceiveCipher(key, window=4)
    sealed = [sender.encrypt(b"%d" % n) for n in range(12)]
    receiver.decrypt(sealed[10])
    with pytest.raises(ReplayedMessage, match="older than the replay window"):
        receiver.decrypt(sealed[6])
    assert receiver.decrypt(sealed[7]) == b"7"  # the oldest nonce the window still covers
    receiver.decrypt(sealed[11])
    with pytest.raises(ReplayedMessage, match="older"):
        receiver.decrypt(sealed[7])
    with pytest.raises(ReplayedMessage, match="accepted before"):
        receiver.decrypt(sealed[10])
    assert receiver.decrypt(sealed[9]) == b"9"


def test_a_forged_high_nonce_does_not_move_the_window():
    key = bytes(range(32))
    sender, receiver = SendCipher(key), ReceiveCipher(key, window=2)
    genuine = sender.encrypt(b"first")
    with pytest.raises(DecryptFailed):
        receiver.decrypt(b"\xff\xfe" + bytes(40))
    assert receiver.highest_nonce == -1
    assert receiver.decrypt(genuine) == b"first"


def test_the_full_window_remembers_every_nonce():
    key = bytes(range(32))
    sender = SendCipher(key)
    sealed = [sender.encrypt(b"%d" % n) for n in range(2000)]
    default, full = ReceiveCipher(key), ReceiveCipher(key, window=65536)
    for receiver in (default, full):
        receiver.decrypt(sealed[-1])
    with pytest.raises(ReplayedMessage, match="older"):  # 1999 behind, the default covers 1024
        default.decrypt(sealed[0])
    assert [full.decrypt(s) for s in sealed[:-1]] == [b"%d" % n for n in range(1999)]
    with pytest.raises(ReplayedMessage, match="accepted before"):
        full.decrypt(sealed[0])


_WINDOW_KEY = bytes(range(32))
_WINDOW_SENDER = SendCipher(_WINDOW_KEY)
_WINDOW_SEALED = [_WINDOW_SENDER.encrypt(b"%d" % n) for n in range(48)]  # nonces 0 to 47


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 47), max_size=80), st.integers(1, 9))
def test_the_window_accepts_exactly_the_nonces_new_and_not_too_old(order, window):
    # In order, with gaps, refilled, replayed: the cipher agrees with the rule it documents.
    receiver = ReceiveCipher(_WINDOW_KEY, window=window)
    accepted, highest = set(), -1
    for n in order:
        if n not in accepted and n > highest - window:
            assert receiver.decrypt(_WINDOW_SEALED[n]) == b"%d" % n
            accepted.add(n)
            highest = max(highest, n)
        else:
            with pytest.raises(ReplayedMessage):
                receiver.decrypt(_WINDOW_SEALED[n])
        assert receiver.highest_nonce == highest


def test_nonce_exhaustion_raises_to_the_sender_at_the_limit():
    initiator, responder = run_handshake(vector_initiator(send_limit=3), vector_responder())
    sender = initiator.send_cipher
    sealed = [sender.encrypt(b"%d" % n) for n in range(3)]
    assert sender.remaining == 0
    for _ in range(2):  # stays spent: never a silent drop, never a reused nonce
        with pytest.raises(NonceExhausted, match="3 messages"):
            sender.encrypt(b"one too many")
    assert sender.next_nonce == 3
    assert [responder.receive_cipher.decrypt(s) for s in sealed] == [b"0", b"1", b"2"]


def test_the_default_limit_is_nonce_65534():
    key = bytes(range(32))
    sender, receiver = SendCipher(key), ReceiveCipher(key)
    assert sender.remaining == MAX_MESSAGES == 65535
    last = b""
    for _ in range(MAX_MESSAGES):
        last = sender.encrypt(b"")
    assert last[:2] == b"\xff\xfe"
    with pytest.raises(NonceExhausted):
        sender.encrypt(b"")
    assert receiver.decrypt(last) == b""
    assert receiver.highest_nonce == 65534


def test_a_plaintext_too_large_for_any_frame_is_refused_before_a_nonce_is_used(channel):
    initiator, _ = channel
    sender = initiator.send_cipher
    with pytest.raises(LocalProtocolError, match="cannot fit in one frame"):
        sender.encrypt(bytes(MAX_PLAINTEXT + 1))
    assert sender.next_nonce == 0
    sealed = sender.encrypt(bytes(MAX_PLAINTEXT))
    # The bound is tight: with the smallest routes the frame body is exactly the maximum.
    frame = encode_frame(TransportMessage(Route(), Route(), BARE.encode(sealed)))
    assert len(frame) - 2 == MAX_BODY


def test_error_classes_say_whose_fault():
    for error in (HandshakeFailed, UntrustedPeer, DecryptFailed, ReplayedMessage):
        assert issubclass(error, RemoteProtocolError) and issubclass(error, SecureChannelError)
    assert issubclass(NonceExhausted, LocalProtocolError)
    assert issubclass(NonceExhausted, SecureChannelError)


@SETTINGS
@given(data=st.binary(max_size=120))
def test_random_bytes_as_a_channel_message_raise_decrypt_failed_only(data):
    key = bytes(range(32))
    receiver = ReceiveCipher(key)
    with pytest.raises(DecryptFailed):
        receiver.decrypt(data)
    assert receiver.highest_nonce == -1
    assert receiver.decrypt(SendCipher(key).encrypt(b"ok")) == b"ok"
