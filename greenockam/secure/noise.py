"""The Noise XX handshake and the transport ciphers of the Ockam 2021 secure channel.

Sans-I/O: byte strings in, byte strings out. Nothing here knows about nodes, routes, greenlets
or sockets, and nothing here logs: every refusal is an exception that says what was wrong.
docs/secure-channel.md describes the protocol; the section numbers below refer to it.

* :class:`Handshake` runs ``Noise_XX_25519_AESGCM_SHA256`` with an empty prologue and empty
  payloads in either role, and produces or consumes the three raw Noise messages (section 2).
  Reading a message is all-or-nothing: a message that is short, does not authenticate, carries a
  low-order key or a static key the trust policy refuses changes nothing.
* When the handshake is complete it hands out a :class:`SendCipher` and a :class:`ReceiveCipher`
  with the split keys assigned as Ockam 2021 assigns them, the reverse of the Noise
  specification (section 3).
* The ciphers produce and consume the *channel payload* of section 4: a 2-byte big-endian nonce
  counter, then the AES-256-GCM ciphertext and its 16-byte tag. The sender never reuses a nonce
  and refuses loudly when it has none left; the receiver accepts each nonce once (section 5).

Every primitive (X25519, AES-256-GCM, SHA-256, HKDF) comes from PyCA ``cryptography``.
"""

from __future__ import annotations

import struct
import warnings
from typing import Callable, NoReturn, Optional, Tuple

with warnings.catch_warnings():
    # The last cryptography for Python 3.8 (47.0, which setup.py allows on purpose) warns on
    # import that its 3.8 support is deprecated: a line on stderr of every application that
    # imports greenockam.secure, which the library must not print. Scoped to this import.
    warnings.filterwarnings("ignore", message=r"Python 3\.8 is no longer supported")
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import (
        X25519PrivateKey,
        X25519PublicKey,
    )
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import (
    DecryptFailed,
    HandshakeFailed,
    LocalProtocolError,
    NonceExhausted,
    ReplayedMessage,
    UntrustedPeer,
)
from ..wire import MAX_BODY

__all__ = [
    "PROTOCOL_NAME",
    "KEY_SIZE",
    "TAG_SIZE",
    "NONCE_SIZE",
    "CHANNEL_OVERHEAD",
    "MESSAGE_SIZES",
    "MAX_MESSAGES",
    "MAX_PLAINTEXT",
    "REPLAY_WINDOW",
    "Handshake",
    "SendCipher",
    "ReceiveCipher",
    "generate_private_key",
    "public_key",
]

# The protocol name padded to the hash length; it is the initial chaining key as it is.
PROTOCOL_NAME = b"Noise_XX_25519_AESGCM_SHA256\0\0\0\0"
KEY_SIZE = 32
TAG_SIZE = 16
NONCE_SIZE = 2
CHANNEL_OVERHEAD = NONCE_SIZE + TAG_SIZE
# The smallest valid message 1, 2 and 3 (empty payloads); Rust 2021 checks only 32, 80 and 48.
MESSAGE_SIZES = (32, 96, 64)
# Nonces 0 to 65534: the 65,536th message of a direction is refused, as Rust 2021 refuses it.
MAX_MESSAGES = 0xFFFF
# A plaintext beyond this cannot fit in one frame whatever the routes: 1 version byte, two empty
# routes (1 byte each), and the 3-byte lengths of the frame payload and of the data<> around it.
MAX_PLAINTEXT = MAX_BODY - CHANNEL_OVERHEAD - 1 - 2 - 3 - 3
REPLAY_WINDOW = 1024

# The 12-byte AES-GCM nonce of a counter (section 1 of the doc): 10 zero bytes, then the counter
# as 2 bytes big-endian, which are also the channel payload's first 2 bytes.
_nonce = struct.Struct(">10xH").pack
_INITIATOR_STEPS = ("write", "read", "write")
_RESPONDER_STEPS = ("read", "write", "read")


def generate_private_key() -> bytes:
    """32 fresh random bytes: an X25519 private key (e.g. a node's long-term static key)."""
    return X25519PrivateKey.generate().private_bytes_raw()


def public_key(private_key: bytes) -> bytes:
    """The 32-byte X25519 public key of a 32-byte private key.

    Raises:
        LocalProtocolError: ``private_key`` is not 32 bytes.
    """
    return _private(private_key, "private key").public_key().public_bytes_raw()


def _private(raw: bytes, what: str) -> X25519PrivateKey:
    if len(raw) != KEY_SIZE:
        raise LocalProtocolError(f"an X25519 {what} is {KEY_SIZE} bytes, got {len(raw)}")
    return X25519PrivateKey.from_private_bytes(bytes(raw))


def _sha256(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SHA256())
    digest.update(data)
    return digest.finalize()


class _SymmetricState:
    """Noise's chaining key ``ck``, handshake hash ``h`` and handshake cipher ``k`` with ``n``.

    A reader works on a :meth:`copy` and keeps it only if the whole message was good.
    """

    __slots__ = ("ck", "h", "cipher", "n")

    def __init__(self, ck: bytes, h: bytes, cipher: Optional[AESGCM], n: int) -> None:
        self.ck = ck
        self.h = h
        self.cipher = cipher
        self.n = n

    def copy(self) -> _SymmetricState:
        return _SymmetricState(self.ck, self.h, self.cipher, self.n)

    def mix_hash(self, data: bytes) -> None:
        self.h = _sha256(self.h + data)

    def mix_key(self, dh_output: bytes) -> None:
        self.ck, key = _hkdf(self.ck, dh_output)
        self.cipher = AESGCM(key)
        self.n = 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        assert self.cipher is not None  # XX encrypts only after its first MixKey
        ciphertext = self.cipher.encrypt(_nonce(self.n), plaintext, self.h)
        self.n += 1
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes, what: str) -> bytes:
        assert self.cipher is not None  # XX decrypts only after its first MixKey
        try:
            plaintext = self.cipher.decrypt(
                _nonce(self.n), ciphertext, self.h
            )
        except InvalidTag:
            raise HandshakeFailed(f"{what} does not authenticate") from None
        self.n += 1
        self.mix_hash(ciphertext)
        return plaintext


def _hkdf(chaining_key: bytes, input_key_material: bytes) -> Tuple[bytes, bytes]:
    """Noise's ``HKDF(ck, ikm, 2)``: RFC 5869 with SHA-256, salt ``ck``, no info, 64 bytes."""
    out = HKDF(algorithm=hashes.SHA256(), length=64, salt=chaining_key, info=None).derive(
        input_key_material
    )
    return out[:KEY_SIZE], out[KEY_SIZE:]


class Handshake:
    """One side of the Noise XX handshake, as an Ockam 2021 channel end runs it.

    The initiator calls ``write_message()`` (message 1), ``read_message(m2)``, then
    ``write_message()`` (message 3); the responder ``read_message(m1)``, ``write_message()``
    (message 2), then ``read_message(m3)``. The messages are the raw Noise bytes; on the wire
    each travels inside a BARE ``data<>`` (docs/secure-channel.md section 2). After the last
    step :attr:`complete` is true and :attr:`send_cipher`, :attr:`receive_cipher`,
    :attr:`remote_static` and :attr:`handshake_hash` (the auth hash) are final.

    Args:
        initiator: ``True`` for the side that opens the channel, ``False`` for the responder.
        static_key: this side's 32-byte X25519 static private key, its identity for this channel.
            ``None`` makes a fresh one, which is what Rust 2021 always does.
        ephemeral_key: a fixed ephemeral private key, **for test vectors only**: the ephemeral
            key must be fresh for every handshake or the channel loses its forward secrecy.
        verify_peer: called with the peer's static public key once the peer has proved it holds
            the private key (the initiator while reading message 2, the responder while reading
            message 3); a false result refuses the message with :class:`UntrustedPeer`. ``None``
            accepts any key: the channel then only resists passive observers.
        send_limit: how many messages :attr:`send_cipher` may encrypt, at most (and by default)
            :data:`MAX_MESSAGES`. Lower it to test what happens when a channel is spent.
        replay_window: how far below the highest nonce received a late message is still
            accepted by :attr:`receive_cipher` (see :class:`ReceiveCipher`).

    Raises:
        LocalProtocolError: a key is not 32 bytes, or a limit is out of range.
    """

    __slots__ = (
        "_steps",
        "_step",
        "_symmetric",
        "_static",
        "_static_public",
        "_ephemeral",
        "_ephemeral_public",
        "_remote_ephemeral",
        "_remote_static",
        "_ee",
        "_verify_peer",
        "_send_limit",
        "_replay_window",
        "_send_cipher",
        "_receive_cipher",
    )

    def __init__(
        self,
        *,
        initiator: bool,
        static_key: Optional[bytes] = None,
        ephemeral_key: Optional[bytes] = None,
        verify_peer: Optional[Callable[[bytes], bool]] = None,
        send_limit: int = MAX_MESSAGES,
        replay_window: int = REPLAY_WINDOW,
    ) -> None:
        _check_send_limit(send_limit)
        _check_replay_window(replay_window)
        self._steps = _INITIATOR_STEPS if initiator else _RESPONDER_STEPS
        self._step = 0
        # Empty prologue: h = SHA256(name) is MixHash(empty) applied to h = name.
        self._symmetric = _SymmetricState(PROTOCOL_NAME, _sha256(PROTOCOL_NAME), None, 0)
        self._static = (
            X25519PrivateKey.generate()
            if static_key is None
            else _private(static_key, "static private key")
        )
        self._static_public = self._static.public_key().public_bytes_raw()
        self._ephemeral = (
            X25519PrivateKey.generate()
            if ephemeral_key is None
            else _private(ephemeral_key, "ephemeral private key")
        )
        self._ephemeral_public = self._ephemeral.public_key().public_bytes_raw()
        self._remote_ephemeral: Optional[X25519PublicKey] = None
        self._remote_static: Optional[bytes] = None
        self._ee = b""  # the responder computes DH(e, re) while reading message 1
        self._verify_peer = verify_peer
        self._send_limit = send_limit
        self._replay_window = replay_window
        self._send_cipher: Optional[SendCipher] = None
        self._receive_cipher: Optional[ReceiveCipher] = None

    def __repr__(self) -> str:
        role = "initiator" if self.initiator else "responder"
        if self.complete:
            return f"<Handshake {role}, complete>"
        return f"<Handshake {role}, next: {self._steps[self._step]} message {self._step + 1}>"

    # -- what the application may look at ----------------------------------------------------

    @property
    def initiator(self) -> bool:
        """``True`` on the side that opened the channel."""
        return self._steps is _INITIATOR_STEPS

    @property
    def complete(self) -> bool:
        """All three messages were written or read; the ciphers are ready."""
        return self._step == 3

    @property
    def local_static(self) -> bytes:
        """This side's static X25519 public key (32 bytes): what the peer will see."""
        return self._static_public

    @property
    def remote_static(self) -> Optional[bytes]:
        """The peer's static X25519 public key (32 bytes) once a message proved it, else None."""
        return self._remote_static

    @property
    def handshake_hash(self) -> bytes:
        """Noise's handshake hash ``h`` (32 bytes) as it stands now.

        Once the handshake is complete it is the channel's *auth hash*, equal on both sides.
        """
        return self._symmetric.h

    @property
    def send_cipher(self) -> SendCipher:
        """The cipher for messages to the peer.

        Raises:
            LocalProtocolError: the handshake is not complete.
        """
        if self._send_cipher is None:
            raise LocalProtocolError("the handshake is not complete: nothing can be encrypted")
        return self._send_cipher

    @property
    def receive_cipher(self) -> ReceiveCipher:
        """The cipher for messages from the peer.

        Raises:
            LocalProtocolError: the handshake is not complete.
        """
        if self._receive_cipher is None:
            raise LocalProtocolError("the handshake is not complete: nothing can be decrypted")
        return self._receive_cipher

    # -- the three messages -------------------------------------------------------------------

    def write_message(self) -> bytes:
        """Write this side's next handshake message (1 or 3 as initiator, 2 as responder).

        Raises:
            LocalProtocolError: it is the peer's turn, or the handshake is complete.
        """
        number = self._expect("write")
        state = self._symmetric.copy()
        if number == 1:
            message = self._write_message_1(state)
        elif number == 2:
            message = self._write_message_2(state)
        else:
            message = self._write_message_3(state)
        self._commit(state)
        return message

    def read_message(self, message: bytes) -> None:
        """Read the peer's next handshake message (2 as initiator, 1 or 3 as responder).

        All or nothing: if it raises, this handshake is exactly as it was before the call.

        Raises:
            HandshakeFailed: the message is shorter than its minimum, does not authenticate, or
                carries a low-order public key.
            UntrustedPeer: ``verify_peer`` refused the peer's static key.
            LocalProtocolError: it is this side's turn to write, or the handshake is complete.
        """
        number = self._expect("read")
        message = bytes(message)
        minimum = MESSAGE_SIZES[number - 1]
        if len(message) < minimum:
            raise HandshakeFailed(
                f"handshake message {number} holds {len(message)} bytes, at least {minimum} needed"
            )
        state = self._symmetric.copy()
        if number == 1:
            self._read_message_1(state, message)
        elif number == 2:
            self._read_message_2(state, message)
        else:
            self._read_message_3(state, message)
        self._commit(state)

    def _expect(self, action: str) -> int:
        """The number of the message to ``action`` now, or a LocalProtocolError."""
        if self.complete:
            raise LocalProtocolError(f"the handshake is complete: no message to {action}")
        if self._steps[self._step] != action:
            role = "initiator" if self.initiator else "responder"
            raise LocalProtocolError(
                f"the {role} cannot {action} now: it {self._steps[self._step]}s message "
                f"{self._step + 1} next"
            )
        return self._step + 1

    def _commit(self, state: _SymmetricState) -> None:
        self._symmetric = state
        self._step += 1
        if self.complete:
            first, second = _hkdf(state.ck, b"")
            # Ockam 2021 swaps the Noise split: the initiator sends with the second key.
            send_key, receive_key = (second, first) if self.initiator else (first, second)
            self._send_cipher = SendCipher(send_key, self._send_limit)
            self._receive_cipher = ReceiveCipher(receive_key, self._replay_window)
            state.cipher = None  # the handshake cipher is done with

    def _dh(self, private: X25519PrivateKey, peer: X25519PublicKey, what: str) -> bytes:
        try:
            return private.exchange(peer)
        except ValueError:  # an all-zero result: the peer's key has a low order
            raise HandshakeFailed(f"{what} is a low-order X25519 point") from None

    def _check_peer(self, remote_static: bytes) -> None:
        if self._verify_peer is not None and not self._verify_peer(remote_static):
            raise UntrustedPeer(
                f"the peer's static key {remote_static.hex()} is not trusted", remote_static
            )

    # Each step below changes only ``state`` (and, in a reader, the remote keys once nothing
    # can fail any more), so a step that raises leaves the handshake untouched.

    def _write_message_1(self, state: _SymmetricState) -> bytes:  # -> e
        state.mix_hash(self._ephemeral_public)
        state.mix_hash(b"")  # the empty payload
        return self._ephemeral_public

    def _read_message_1(self, state: _SymmetricState, message: bytes) -> None:  # -> e
        remote_ephemeral = X25519PublicKey.from_public_bytes(message[:32])
        ee = self._dh(self._ephemeral, remote_ephemeral, "the initiator's ephemeral key")
        state.mix_hash(message[:32])
        state.mix_hash(message[32:])  # a payload, ignored (Ockam sends none)
        self._remote_ephemeral = remote_ephemeral
        self._ee = ee

    def _write_message_2(self, state: _SymmetricState) -> bytes:  # <- e, ee, s, es
        assert self._remote_ephemeral is not None
        state.mix_hash(self._ephemeral_public)
        state.mix_key(self._ee)
        encrypted_static = state.encrypt_and_hash(self._static_public)
        state.mix_key(self._dh(self._static, self._remote_ephemeral, "the initiator's key"))
        return self._ephemeral_public + encrypted_static + state.encrypt_and_hash(b"")

    def _read_message_2(self, state: _SymmetricState, message: bytes) -> None:
        remote_ephemeral = X25519PublicKey.from_public_bytes(message[:32])
        state.mix_hash(message[:32])
        state.mix_key(self._dh(self._ephemeral, remote_ephemeral, "the responder's ephemeral key"))
        remote_static = state.decrypt_and_hash(message[32:80], "the responder's static key")
        state.mix_key(
            self._dh(
                self._ephemeral,
                X25519PublicKey.from_public_bytes(remote_static),
                "the responder's static key",
            )
        )
        state.decrypt_and_hash(message[80:], "the payload of handshake message 2")
        self._check_peer(remote_static)
        self._remote_ephemeral = remote_ephemeral
        self._remote_static = remote_static

    def _write_message_3(self, state: _SymmetricState) -> bytes:  # -> s, se
        assert self._remote_ephemeral is not None
        encrypted_static = state.encrypt_and_hash(self._static_public)
        state.mix_key(self._dh(self._static, self._remote_ephemeral, "the responder's key"))
        return encrypted_static + state.encrypt_and_hash(b"")

    def _read_message_3(self, state: _SymmetricState, message: bytes) -> None:
        remote_static = state.decrypt_and_hash(message[:48], "the initiator's static key")
        state.mix_key(
            self._dh(
                self._ephemeral,
                X25519PublicKey.from_public_bytes(remote_static),
                "the initiator's static key",
            )
        )
        state.decrypt_and_hash(message[48:], "the payload of handshake message 3")
        self._check_peer(remote_static)
        self._remote_static = remote_static


def _check_send_limit(limit: int) -> None:
    if not 0 <= limit <= MAX_MESSAGES:
        raise LocalProtocolError(f"send_limit must be 0 to {MAX_MESSAGES}, got {limit}")


def _check_replay_window(window: int) -> None:
    if not 1 <= window <= 0x10000:
        raise LocalProtocolError(f"replay_window must be 1 to 65536, got {window}")


class SendCipher:
    """Encrypts the messages one channel end sends (docs/secure-channel.md section 4).

    Each call to :meth:`encrypt` uses the next nonce, from 0 up; a nonce is never used twice,
    not even when a message is refused after its nonce was taken.

    Args:
        key: the 32-byte AES-256-GCM key from the handshake's split.
        limit: how many messages this cipher may encrypt, at most :data:`MAX_MESSAGES`.
    """

    __slots__ = ("_aead", "_next", "_limit")

    def __init__(self, key: bytes, limit: int = MAX_MESSAGES) -> None:
        if len(key) != KEY_SIZE:
            raise LocalProtocolError(f"an AES-256-GCM key is {KEY_SIZE} bytes, got {len(key)}")
        _check_send_limit(limit)
        self._aead = AESGCM(bytes(key))
        self._next = 0
        self._limit = limit

    def __repr__(self) -> str:
        return f"<SendCipher {self._next} of {self._limit} nonces used>"

    @property
    def next_nonce(self) -> int:
        """The nonce of the next message; also the number of messages encrypted so far."""
        return self._next

    @property
    def remaining(self) -> int:
        """How many more messages this cipher can encrypt; 0 means the channel end is spent."""
        return self._limit - self._next

    def encrypt(self, plaintext: bytes) -> bytes:
        """The channel payload for ``plaintext``: 2-byte big-endian nonce, ciphertext, tag.

        ``plaintext`` is the encoded inner message (docs/secure-channel.md section 4); the
        result goes on the wire inside a BARE ``data<>``.

        Raises:
            NonceExhausted: every nonce is used; nothing was encrypted.
            LocalProtocolError: ``plaintext`` is longer than :data:`MAX_PLAINTEXT` and could never
                fit in a frame; nothing was encrypted and no nonce was used.
        """
        counter = self._next
        if counter >= self._limit or len(plaintext) > MAX_PLAINTEXT:
            self._refuse(plaintext)
        self._next = counter + 1  # taken before encrypting: whatever happens, never reused
        nonce = _nonce(counter)
        return nonce[10:] + self._aead.encrypt(nonce, plaintext, None)  # the last NONCE_SIZE

    def _refuse(self, plaintext: bytes) -> NoReturn:
        if len(plaintext) > MAX_PLAINTEXT:
            raise LocalProtocolError(
                f"a plaintext of {len(plaintext)} bytes cannot fit in one frame "
                f"(at most {MAX_PLAINTEXT} bytes, less the size of the routes)"
            )
        raise NonceExhausted(
            f"this channel end has sent its {self._limit} messages; open a fresh channel"
        )


class ReceiveCipher:
    """Decrypts the messages one channel end receives, accepting each nonce once.

    A sliding window remembers which of the ``window`` nonces at and below the highest accepted
    one were accepted. A nonce above the highest is new; one within the window is accepted if it
    was not before; an older one is refused, because it can no longer be told from a replay.
    Honest senders count up and every hop keeps order, so only a reordering path could lose a
    message to the window, and ``window=65536`` remembers every nonce (8 KiB). A message changes
    the window only after it authenticated: forged nonces cannot push genuine messages out.
    While every nonce up to the highest has been accepted (an in-order stream, the common
    case), the window is kept as "all of them" and the next nonce costs no bit arithmetic.

    Args:
        key: the 32-byte AES-256-GCM key from the handshake's split.
        window: 1 to 65536 nonces, :data:`REPLAY_WINDOW` by default.
    """

    __slots__ = ("_aead", "_window", "_mask", "_highest", "_seen")

    def __init__(self, key: bytes, window: int = REPLAY_WINDOW) -> None:
        if len(key) != KEY_SIZE:
            raise LocalProtocolError(f"an AES-256-GCM key is {KEY_SIZE} bytes, got {len(key)}")
        _check_replay_window(window)
        self._aead = AESGCM(bytes(key))
        self._window = window
        self._mask = (1 << window) - 1  # the window's bits of _seen
        self._highest = -1  # the highest nonce accepted
        # Bit i: nonce (highest - i) was accepted; -1 (all bits): every nonce up to the highest
        # was (nonces below 0 count as accepted: no message can carry one).
        self._seen = -1

    def __repr__(self) -> str:
        return f"<ReceiveCipher highest nonce {self._highest}, window {self._window}>"

    @property
    def highest_nonce(self) -> int:
        """The highest nonce accepted so far, -1 before the first message.

        The peer has sent at least this many messages plus one: a hint of how close its
        direction is to :data:`MAX_MESSAGES`.
        """
        return self._highest

    def decrypt(self, payload: bytes) -> bytes:
        """The plaintext of a channel payload (the bytes inside the wire's ``data<>``).

        All or nothing: if it raises, the cipher is exactly as it was before the call.

        Raises:
            DecryptFailed: shorter than the nonce and the tag, or does not authenticate.
            ReplayedMessage: its nonce was accepted before, or is older than the window.
        """
        size = len(payload)
        if size < CHANNEL_OVERHEAD:
            what = "the 2-byte nonce" if size < NONCE_SIZE else "the nonce and the 16-byte tag"
            raise DecryptFailed(f"a channel message of {size} bytes is shorter than {what}")
        counter = (payload[0] << 8) | payload[1]
        behind = self._highest - counter
        if behind >= 0:
            if behind >= self._window:
                raise ReplayedMessage(
                    f"nonce {counter} is older than the replay window "
                    f"({self._window} nonces up to {self._highest})"
                )
            if (self._seen >> behind) & 1:
                raise ReplayedMessage(f"nonce {counter} was accepted before: a replay")
        try:
            plaintext = self._aead.decrypt(_nonce(counter), payload[NONCE_SIZE:], None)
        except InvalidTag:
            raise DecryptFailed(
                f"the channel message with nonce {counter} does not authenticate"
            ) from None
        seen = self._seen
        if behind == -1 and seen == -1:  # the next nonce of an in-order stream: most messages
            self._highest = counter
            return plaintext
        if behind >= 0:
            seen |= 1 << behind
        else:
            ahead = -behind
            seen = 1 if ahead >= self._window else ((seen << ahead) | 1) & self._mask
            self._highest = counter
        self._seen = -1 if seen == self._mask else seen
        return plaintext
