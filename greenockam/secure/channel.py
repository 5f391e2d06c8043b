"""Secure channels over routes: the listener, the initiator and the channel ends.

This module wires the sans-I/O core (:mod:`greenockam.secure.noise`) into a node, on the wire
exactly as the Rust Ockam nodes of April 2021 run it (docs/secure-channel.md, sections 6 to 9):

* :class:`SecureChannelListener` sits at a local address (``secure_channel_listener`` by
  convention) and starts one responder channel end per "create a responder channel" request.
* :func:`open_secure_channel` starts an initiator channel end, runs the handshake along a route
  to a listener and returns the :class:`SecureChannel` once it is established.
* A channel end has two kinds of local address, both endpoints (handled in the router greenlet
  or in the sending greenlet, never in a greenlet of their own): its *local* address faces local
  workers (what is sent through it is encrypted and sent to the other end); a *remote* address
  per handshake faces the other end (handshake messages and ciphertexts arrive there).
* :func:`channel_of` tells a worker which channel, and so which authenticated peer key, a
  message came through.
"""

from __future__ import annotations

import itertools
import struct
from collections import deque
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    List,
    Optional,
    Set,
    Tuple,
    Union,
)

from gevent.event import AsyncResult
from loguru import logger

from ..address import LOCAL, Address, AddressLike, Route, RouteLike, as_route
from ..codecs import BARE
from ..codecs.primitives import BYTE
from ..codecs.typed import TaggedUnion, decoder, encoder
from ..context import Context
from ..errors import (
    GreenockamError,
    HandshakeFailed,
    HandshakeTimeout,
    LocalProtocolError,
    NodeStopped,
    RemoteProtocolError,
    ReplayedMessage,
    RouteError,
    SecureChannelError,
    UnknownAddress,
    UntrustedPeer,
)
from ..message import Routed
from ..transport.base import Cancel, Endpoint, Outlet, Source
from ..wire import (
    MAX_BODY,
    VERSION,
    FrameDecoder,
    TransportMessage,
    encode_body,
    encode_route,
    encode_uint,
)
from .noise import CHANNEL_OVERHEAD, KEY_SIZE, MAX_MESSAGES, REPLAY_WINDOW, Handshake

if TYPE_CHECKING:  # pragma: no cover
    from ..node import Node

__all__ = [
    "LISTENER_ADDRESS",
    "HandshakeTimeout",
    "Trust",
    "SecureChannel",
    "SecureChannelListener",
    "open_secure_channel",
    "channel_of",
    "ListenerMessage",
    "CreateResponderChannel",
    "encode_create_responder",
    "decode_create_responder",
]

LISTENER_ADDRESS = "secure_channel_listener"
_new_tuple = tuple.__new__  # a TransportMessage from checked parts, without a Python-level call
_VERSION_BYTE = BYTE[VERSION]
_frame_length = struct.Struct(">H").pack
_watch_keys = itertools.count()
# Sessions an initiator keeps receiving on after renewals replaced them, for replies in flight.
RETIRED_SESSIONS = 4

Trust = Union[None, Iterable[bytes], Callable[[bytes], bool]]
"""Which static keys a channel end accepts from its peer: ``None`` (any: the 2021 behaviour),
a collection of 32-byte X25519 public keys, or a function of the key that returns True to
accept it."""


class ListenerMessage(TaggedUnion):
    """What a secure channel listener takes: Rust 2021's ``SecureChannelListenerMessage``, a
    serde enum with a single variant (docs/secure-channel.md, section 6)."""


@dataclass
class CreateResponderChannel(ListenerMessage):
    """Variant 0: start a responder end and hand it handshake message 1 (a ``Vec<u8>``)."""

    message: bytes


_encode_listener_message = encoder(ListenerMessage)
_decode_listener_message = decoder(ListenerMessage)


def encode_create_responder(message_1: bytes) -> bytes:
    """The listener's request payload for handshake message 1: variant index 0, then the
    message as ``data<>``."""
    return _encode_listener_message(CreateResponderChannel(message_1))


def decode_create_responder(payload: bytes) -> bytes:
    """Handshake message 1 out of a listener request (see :func:`encode_create_responder`).

    Raises:
        RemoteProtocolError: another variant index, or not a ``data<>`` after it.
    """
    request: CreateResponderChannel = _decode_listener_message(payload)
    return request.message


def _data(raw: bytes) -> bytes:
    """BARE ``data<>``: a ``uint`` length, then the bytes."""
    size = len(raw)
    return (BYTE[size] if size < 0x80 else encode_uint(size)) + raw


def _undata(payload: bytes) -> bytes:
    """The bytes inside a BARE ``data<>`` payload.

    Raises:
        RemoteProtocolError: not exactly one ``data<>``.
    """
    if payload and payload[0] == len(payload) - 1 < 0x80:  # a one-byte length: most messages
        return payload[1:]
    data: bytes = BARE.decode(payload, bytes)
    return data


def _verifier(trust: Trust) -> Optional[Callable[[bytes], bool]]:
    """``verify_peer`` for :class:`Handshake` from a :data:`Trust`."""
    if trust is None:
        return None
    if callable(trust):
        return trust
    if isinstance(trust, (bytes, bytearray, str)):
        raise LocalProtocolError("trust takes a collection of public keys, not a single one")
    keys = set()
    for key in trust:
        if not isinstance(key, (bytes, bytearray, memoryview)) or len(key) != KEY_SIZE:
            raise LocalProtocolError(
                f"a trusted public key is {KEY_SIZE} bytes (bytes.fromhex for hex text), "
                f"got {key!r:.80}"
            )
        keys.add(bytes(key))
    return frozenset(keys).__contains__


def channel_of(
    node: Union[Node, Context], message: Union[Routed, Route, AddressLike]
) -> Optional[SecureChannel]:
    """The channel end that delivered ``message`` on this node, or None.

    A message that a channel end decrypted carries that end's local address as the first hop
    of its return route, put there by the end itself (a peer cannot forge it: every transport
    prepends its own hop to what arrives). So this looks up ``message.return_route[0]``; it
    also accepts a return route or an address. The channel's :attr:`SecureChannel.peer_key` is
    the static key the peer proved it holds.
    """
    if isinstance(node, Context):
        node = node.node
    if isinstance(message, (Routed, Route)):
        route = message.return_route if isinstance(message, Routed) else message
        if not route:
            return None
        address: Address = route[0]
    else:
        address = Address.parse(message)
    endpoint = node.endpoint(address)
    return endpoint.channel if isinstance(endpoint, _LocalSide) else None


class _Session:
    """One handshake of a channel end and the ciphers it gave: its remote address, the route to
    the other end, and the timer that abandons it if it does not complete in time.

    An initiator end has one session per handshake it ran (a renewal is a new session); a
    responder end has exactly one.
    """

    __slots__ = (
        "channel",
        "handshake",
        "remote",
        "remote_return",
        "route",
        "send",
        "receive",
        "room",
        "done",
        "timer",
        "closed",
        "decoder",
        "inner_onward",
        "inner_return",
        "inner_delivered",
        "inner_head",
        "inner_skip",
        "outlet",
    )

    def __init__(self, channel: SecureChannel, handshake: Handshake, route: Route) -> None:
        self.channel = channel
        self.handshake = handshake
        self.route = route  # where this session sends: re-pointed by authenticated messages
        self.remote = channel.node.start_endpoint(None, _RemoteSide(self))
        self.remote_return = Route([self.remote])
        self.send: Any = None  # the SendCipher, once the handshake is complete
        self.receive: Any = None  # the ReceiveCipher, likewise
        self.room = 0  # the largest inner message that fits in one frame along ``route``
        self.done: AsyncResult = AsyncResult()  # set (to self) or failed once it ends
        self.timer: Any = None
        self.closed = False
        self.decoder = FrameDecoder()  # decodes the inner messages (their routes repeat)
        # The routes of the last inner message routed, the return route it was delivered with
        # (this end's address in front), and how it began (the version byte and the encoded
        # routes; inner_skip bytes, 0 for none): the next message through a channel mostly
        # repeats them, with a one-byte payload length, and then needs no parse or check.
        self.inner_onward = self.inner_return = self.inner_delivered = self.remote_return
        self.inner_head = b""
        self.inner_skip = 0
        self.outlet: Optional[Outlet] = None  # the transport's fast path along ``route``

    def start_timer(self, seconds: float) -> None:
        self.timer = self.channel.node.loop.timer(seconds)
        self.timer.start(self._expired)

    def _expired(self) -> None:
        """In the hub: the handshake did not complete in time."""
        if self.send is None and not self.closed:
            logger.info(
                "secure channel {}: no handshake from the other end within the timeout",
                self.channel.address,
            )
            self.channel.session_failed(
                self, HandshakeTimeout(f"no secure channel handshake along {self.route} in time")
            )

    def open(self, payload: bytes) -> Optional[TransportMessage]:
        """The message to route locally for a ciphertext payload (a BARE ``data<>``): the inner
        message it holds (docs/secure-channel.md, section 4) with this end's address in front
        of its return route; None when the channel may not route it (dropped and counted).

        Raises:
            RemoteProtocolError: not one ``data<>``, or the plaintext is not one valid message
                body.
            DecryptFailed, ReplayedMessage: from the session's receive cipher.
        """
        if payload and payload[0] == len(payload) - 1 < 0x80:  # a one-byte length: most
            plaintext = self.receive.decrypt(payload[1:])
        else:
            plaintext = self.receive.decrypt(_undata(payload))
        p = self.inner_skip
        size = len(plaintext) - p - 1
        if p and 0 <= size < 0x80 and plaintext[p] == size and plaintext.startswith(
            self.inner_head
        ):  # the last message's routes and a one-byte payload length: no parse, no check
            return _new_tuple(
                TransportMessage,
                (plaintext[0], self.inner_onward, self.inner_delivered, plaintext[p + 1 :]),
            )
        try:
            (message,) = self.decoder.feed(_frame_length(len(plaintext)) + plaintext)
        except (RemoteProtocolError, ValueError, struct.error):
            self.decoder = FrameDecoder()  # a decoder refuses all input after a bad frame
            raise RemoteProtocolError("a decrypted channel message is not a message") from None
        onward, ret = message[1], message[2]
        if onward is not self.inner_onward or ret is not self.inner_return:
            # New routes (the decoder repeats route objects): checked and prepended once.
            channel = self.channel
            if not channel.deliverable(message):
                return None
            self.inner_onward, self.inner_return = onward, ret
            self.inner_delivered = ret.prepend(channel.address)
            raw = encode_route(onward) + encode_route(ret)
            # Encoded as we encode them: the next message may match them byte for byte.
            self.inner_skip = len(raw) + 1 if plaintext.startswith(raw, 1) else 0
            self.inner_head = plaintext[: self.inner_skip]
        return _new_tuple(TransportMessage, (message[0], onward, self.inner_delivered, message[3]))

    def transmit(self, payload: bytes) -> None:
        """Send a ciphertext payload to the other end for a local sender: through the
        transport's fast path when it has one for this route, else by :meth:`Node.dispatch`."""
        outlet = self.outlet
        node = self.channel.node
        if outlet is not None and outlet(payload):
            node.count_routed()
            return
        node.dispatch(_new_tuple(TransportMessage, (VERSION, self.route, self.remote_return,
                                                     payload)))
        if self.route[0][0] != LOCAL:
            self.outlet = node.outlet(self.route, self.remote_return)

    def complete(self, route: Route) -> None:
        """The handshake is complete; ``route`` is the return route of its last message."""
        self.route = route
        self.send = self.handshake.send_cipher
        self.receive = self.handshake.receive_cipher
        overhead = len(encode_body(TransportMessage(route, self.remote_return, b"")))
        # The payload's uint grows from 1 to at most 3 bytes; data<> adds up to 3 more.
        self.room = MAX_BODY - overhead - 2 - 3 - CHANNEL_OVERHEAD
        self.stop_timer()

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.stop()
            self.timer.close()
            self.timer = None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.stop_timer()
        try:
            self.channel.node.stop_endpoint(self.remote)
        except UnknownAddress:
            pass  # the node was stopped: it cleared its endpoints


class _RemoteSide(Endpoint):
    """The address of a session that faces the other end: handshake messages and ciphertexts,
    taken in runs (:meth:`SecureChannel.from_remote` for the session itself)."""

    __slots__ = ("_session",)

    def __init__(self, session: _Session) -> None:
        self._session = session

    def handle(self, message: TransportMessage, source: Optional[Source]) -> None:
        self._session.channel.from_remote(self._session, [message], source)

    def handle_run(self, messages: List[TransportMessage], source: Source) -> None:
        self._session.channel.from_remote(self._session, messages, source)


class _LocalSide(Endpoint):
    """The channel's address that faces local workers: what is sent through it is encrypted."""

    __slots__ = ("channel", "handle")

    def __init__(self, channel: SecureChannel) -> None:
        self.channel = channel
        # The channel's method itself: a message costs no Python call in between.
        self.handle = channel.from_local  # type: ignore[method-assign]

    def on_close(self, callback: Callable[[], None]) -> Optional[Cancel]:
        """Watch the channel as a connection: ``callback`` runs once when it closes (so a
        request through it fails at once with ``ConnectionLost`` instead of at its timeout)."""
        return self.channel.on_close(callback)

    def outlet(self, route: Route, return_route: Route) -> Optional[Outlet]:
        return self.channel.outlet(route, return_route)


class SecureChannel:
    """One end of a secure channel on this node (docs/secure-channel.md, section 8).

    Made by :func:`open_secure_channel` (the initiator end) or by a
    :class:`SecureChannelListener` (a responder end); the application does not build one.

    Send through it by sending to ``[channel.address, <route on the far node>]``: the message
    arrives there with a return route that starts with the far end's local address, so
    replies come back through the channel. What the far end sends back is delivered here with
    :attr:`address` in front of its return route.

    Attributes:
        node: the node it runs on.
        address: the local address that faces local workers (never on the wire).
        initiator: True for the end that opened the channel.
    """

    def __init__(
        self,
        node: Node,
        *,
        initiator: bool,
        identity: Optional[bytes],
        trust: Trust,
        local_only: bool,
        handshake_timeout: float,
        send_limit: int,
        replay_window: int,
        renew_below: Optional[int] = None,
        listener: Optional[SecureChannelListener] = None,
    ) -> None:
        if handshake_timeout <= 0:
            raise ValueError(f"handshake_timeout must be positive, got {handshake_timeout}")
        if renew_below is not None and not 1 <= renew_below < send_limit:
            raise ValueError(f"renew_below must be 1 to send_limit - 1, got {renew_below}")
        self.node = node
        self.initiator = initiator
        self._identity = identity
        self._verify = _verifier(trust)
        self._local_only = local_only
        self._handshake_timeout = handshake_timeout
        self._send_limit = send_limit
        self._replay_window = replay_window
        self._renew_below = renew_below
        self._listener = listener
        self._current: Optional[_Session] = None  # the established session we send with
        self._retired: Deque[_Session] = deque()  # replaced by renewals, still receiving
        self._pending: Optional[_Session] = None  # a handshake under way
        self._listener_route: Optional[Route] = None  # an initiator's route to the listener
        self._closed = False
        self._counters: Dict[str, int] = {}  # handshakes and drops by reason
        self._sent = 0
        self._received = 0
        self._watchers: Dict[int, Callable[[], None]] = {}
        # The last routes sent through this end by from_local, and the inner head they make.
        self._last_onward: Any = None
        self._last_sender: Any = None
        self._last_head = b""  # the inner message's version byte and encoded routes
        self.address = node.start_endpoint(None, _LocalSide(self))

    def __repr__(self) -> str:
        role = "initiator" if self.initiator else "responder"
        state = "closed" if self._closed else ("open" if self._current else "handshaking")
        return f"<SecureChannel {role} {self.address}, {state}>"

    # -- what the application may look at --------------------------------------------------

    @property
    def route(self) -> Route:
        """``[address]``: append the far node's route to it to send through the channel."""
        return Route([self.address])

    @property
    def established(self) -> bool:
        """A handshake completed and the channel is not closed."""
        return self._current is not None and not self._closed

    @property
    def closed(self) -> bool:
        """:meth:`close` was called (or the handshake failed)."""
        return self._closed

    @property
    def peer_key(self) -> bytes:
        """The peer's static X25519 public key (32 bytes), which it proved it holds."""
        key = self._established().handshake.remote_static
        assert key is not None  # known once the handshake is complete
        return key

    @property
    def local_key(self) -> bytes:
        """This end's static X25519 public key: what the peer sees as its :attr:`peer_key`."""
        session = self._current or self._pending
        if session is None:
            raise SecureChannelError(f"the secure channel {self.address} is closed")
        return session.handshake.local_static

    @property
    def auth_hash(self) -> bytes:
        """The handshake hash (32 bytes), equal on both ends of the current handshake."""
        return self._established().handshake.handshake_hash

    @property
    def remote_route(self) -> Route:
        """Where this end sends its ciphertexts (the other end's remote address last)."""
        return self._established().route

    @property
    def received(self) -> int:
        """Messages accepted from the other end so far."""
        return self._received

    @property
    def remaining(self) -> int:
        """How many more messages this end can send before its current handshake is spent."""
        session = self._established()
        remaining: int = session.send.remaining
        return remaining

    def statistics(self) -> Dict[str, int]:
        """Counters: ``sent``, ``received``, ``handshakes``, and the messages dropped by reason
        (``replayed``, ``undecryptable``, ``bad_handshake``, ``empty_route``, ``not_local``)."""
        return dict(self._counters, sent=self._sent, received=self._received)

    def _established(self) -> _Session:
        if self._current is None:
            raise SecureChannelError(f"the secure channel {self.address} is not established")
        return self._current

    def _count(self, what: str) -> None:
        self._counters[what] = self._counters.get(what, 0) + 1

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Remove this end's addresses: nothing can be sent through it any more and what the
        other end sends is dropped as addressed to nobody. The other end is not told (the 2021
        protocol has no close message). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for session in [self._current, self._pending, *self._retired]:
            if session is not None:
                session.close()
                if not session.done.ready():
                    session.done.set_exception(
                        SecureChannelError(f"the secure channel {self.address} was closed")
                    )
        try:
            self.node.stop_endpoint(self.address)
        except UnknownAddress:
            pass  # the node was stopped: it cleared its endpoints
        if self._listener is not None:
            self._listener.forget(self)
        watchers = list(self._watchers.values())
        self._watchers.clear()
        for callback in watchers:
            callback()

    def on_close(self, callback: Callable[[], None]) -> Optional[Cancel]:
        """Call ``callback`` once when this end closes (it must not block); returns a function
        that cancels the watch, or None if the end is closed already."""
        if self._closed:
            return None
        key = next(_watch_keys)
        self._watchers[key] = callback
        return lambda: self._watchers.pop(key, None) and None

    def __enter__(self) -> SecureChannel:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- handshakes -------------------------------------------------------------------------

    def new_session(self, route: Route) -> _Session:
        """A session with a fresh handshake (and ephemeral key) that sends along ``route``."""
        handshake = Handshake(
            initiator=self.initiator,
            static_key=self._identity,
            verify_peer=self._verify,
            send_limit=self._send_limit,
            replay_window=self._replay_window,
        )
        session = _Session(self, handshake, route)
        session.start_timer(self._handshake_timeout)
        self._pending = session
        return session

    def initiate(self, route: Route) -> _Session:
        """Start a handshake along ``route`` to a listener: send message 1 from a new remote
        address. Raises what sending it raised (the session is closed then)."""
        self._listener_route = route
        session = self.new_session(route)
        request = encode_create_responder(session.handshake.write_message())
        try:
            self.node.dispatch(TransportMessage(route, session.remote_return, request))
        except BaseException:
            self._pending = None
            session.close()
            raise
        return session

    def session_failed(self, session: _Session, error: GreenockamError) -> None:
        """A handshake ended without a channel: close its session; a channel that never was
        established closes too."""
        session.close()
        if self._pending is session:
            self._pending = None
        if not session.done.ready():
            session.done.set_exception(error)
        if self._current is None:
            self.close()

    def _established_session(self, session: _Session, route: Route) -> None:
        session.complete(route)
        self._count("handshakes")
        if self._pending is session:
            self._pending = None
        if self._current is not None:  # a renewal: keep the old one for replies in flight
            self._retired.append(self._current)
            if len(self._retired) > RETIRED_SESSIONS:
                self._retired.popleft().close()
        self._current = session
        if self._listener is not None:
            self._listener.established(self)
        session.done.set(session)

    def accept(self, request: TransportMessage, source: Optional[Source]) -> None:
        """A responder end's start: read handshake message 1 out of the listener ``request``
        and answer with message 2 along its return route. A message 1 that is refused closes
        this end at once."""
        session = self.new_session(request[2])
        try:
            data = decode_create_responder(request[3])
            self._handshake(session, request, data, source)
        except RemoteProtocolError as exc:
            self.node.drop("secure_channel_bad_request", request, exc)
            self.session_failed(session, exc)

    def _handshake(
        self, session: _Session, message: TransportMessage, data: bytes, source: Optional[Source]
    ) -> None:
        """A handshake message at ``session``'s remote address: message 2 at an initiator,
        message 1 (from the listener) or 3 at a responder. Reading it is all or nothing; the
        route to the other end changes only once the message authenticated."""
        if not message[2]:
            raise HandshakeFailed("a handshake message with an empty return route")
        handshake = session.handshake
        handshake.read_message(data)  # raises and changes nothing if it is not genuine
        if handshake.complete:  # message 3: the responder is done
            self._established_session(session, message[2])
            logger.info(
                "secure channel {} established with {}", self.address, self.peer_key.hex()
            )
            return
        reply = _data(handshake.write_message())
        route = message[2]
        if handshake.complete:  # the initiator wrote message 3
            self._established_session(session, route)
        else:
            session.route = route  # message 1 carries no authentication: only where to answer
        self.node.route(TransportMessage(route, session.remote_return, reply), source)

    # -- the two directions -----------------------------------------------------------------

    def from_remote(
        self, session: _Session, messages: List[TransportMessage], source: Optional[Source]
    ) -> None:
        """Messages that came in a row to a session's remote address: handshake messages, or
        ciphertexts to decrypt and route locally, all together and in order. Bad input is
        dropped, logged and counted, never raised, and costs only its own message."""
        delivered = []
        for message in messages:
            if session.closed:  # by an earlier message of the run: as if its address were gone
                self.node.drop("unknown_address", message, source)
                continue
            try:
                if session.receive is None:
                    self._handshake(session, message, _undata(message[3]), source)
                    continue
                opened = session.open(message[3])
            except RemoteProtocolError as exc:  # the handshake's and the ciphers' errors too
                self._refused(session, message, exc)
                continue
            if opened is not None:
                delivered.append(opened)
        if not delivered:
            return
        self._received += len(delivered)
        node = self.node
        if source is not None:
            node.relay_run(delivered, source)
            return
        for message in delivered:
            try:
                node.dispatch(message)
            except GreenockamError as exc:  # a local sender's channel: its peer's message
                node.drop("secure_channel_undeliverable", message, exc)

    def _refused(
        self, session: _Session, message: TransportMessage, exc: RemoteProtocolError
    ) -> None:
        """Count and drop a message at a remote address that did not decrypt or authenticate;
        an untrusted peer also ends the handshake."""
        if isinstance(exc, UntrustedPeer):
            self._count("untrusted")
            self.node.drop("secure_channel_untrusted", message, exc)
            self.session_failed(session, exc)
        elif isinstance(exc, ReplayedMessage):
            self._count("replayed")
            self.node.drop("secure_channel_replayed", message, exc)
        elif isinstance(exc, HandshakeFailed):
            self._count("bad_handshake")
            self.node.drop("secure_channel_bad_handshake", message, exc)
        else:
            self._count("undecryptable")
            self.node.drop("secure_channel_undecryptable", message, exc)

    def deliverable(self, inner: TransportMessage) -> bool:
        """Whether a decrypted message's onward route may be routed from here; a message that
        may not is dropped and counted."""
        onward = inner[1]
        if not onward:
            self._count("empty_route")
            self.node.drop("secure_channel_empty_route", inner, "decrypted, empty onward route")
            return False
        if self._local_only and any(hop[0] != LOCAL for hop in onward):
            self._count("not_local")
            self.node.drop("secure_channel_not_local", inner, "local_only: a non-local hop")
            return False
        return True

    def from_local(self, message: TransportMessage, source: Optional[Source]) -> None:
        """A message sent through the channel: encrypt it and send it to the other end.

        Raises (to a local sender; a message from the network is dropped and counted instead):
            RouteError: nothing follows the channel's address in the onward route.
            SecureChannelError: the channel is closed or not established.
            NonceExhausted: this end has no nonce left (and no renewal completed in time).
            LocalProtocolError: the message cannot fit in one frame through this channel.
        """
        try:
            onward, ret, body = message[1], message[2], message[3]
            if onward is not self._last_onward or ret is not self._last_sender:
                # Senders repeat route objects: the inner routes are encoded once per pair.
                rest = onward.pop_front()
                if not rest:
                    raise RouteError(f"nothing to send to after the secure channel {self.address}")
                self._last_head = _VERSION_BYTE + encode_route(rest) + encode_route(ret)
                self._last_onward, self._last_sender = onward, ret
            session = self._current
            if session is None or self._closed or self._renew_below is not None:
                session = self._sending_session(source)
            # The inner message's body (docs/secure-channel.md, section 4).
            size = len(body)
            plaintext = b"".join(
                (self._last_head, BYTE[size] if size < 0x80 else encode_uint(size), body)
            )
            if len(plaintext) > session.room:
                raise LocalProtocolError(
                    f"a message of {len(plaintext)} bytes cannot go through the secure channel "
                    f"{self.address} in one frame (at most {session.room})"
                )
            payload = _data(session.send.encrypt(plaintext))
        except GreenockamError as exc:
            if source is None:
                raise
            self.node.drop("secure_channel_unsendable", message, exc)
            return
        self._sent += 1
        if source is None:
            session.transmit(payload)
        else:
            self.node.route(
                _new_tuple(
                    TransportMessage, (VERSION, session.route, session.remote_return, payload)
                ),
                source,
            )

    def outlet(self, route: Route, return_route: Route) -> Optional[Outlet]:
        """A local sender's fast path through this end along ``route`` with ``return_route``:
        the inner message's head is encoded once, and each payload is encrypted and handed to
        the session without a dispatch. It declines (returns False) whenever :meth:`from_local`
        has more to do: no established session, a renewal configured, a closed channel, a
        payload of 128 bytes or more, a message too large for the frame."""
        rest = route.pop_front()
        if not rest or self._renew_below is not None:
            return None
        head = _VERSION_BYTE + encode_route(rest) + encode_route(return_route)

        def send(body: bytes) -> bool:
            session = self._current
            size = len(body)
            if session is None or self._closed or size >= 0x80:
                return False
            plaintext = head + BYTE[size] + body
            if len(plaintext) > session.room:
                return False
            # NonceExhausted raises to the sender, as from_local would.
            payload = _data(session.send.encrypt(plaintext))
            self._sent += 1
            session.transmit(payload)
            return True

        return send

    def _sending_session(self, source: Optional[Source]) -> _Session:
        """The session to encrypt with; starts or waits for a renewal when one is due."""
        if self._closed:
            raise SecureChannelError(f"the secure channel {self.address} is closed")
        session = self._established()
        if self._renew_below is None or source is not None:
            return session
        receive = session.receive
        due = (
            session.send.remaining < self._renew_below
            or MAX_MESSAGES - 1 - receive.highest_nonce < self._renew_below
        )
        if due and self._pending is None and self._listener_route is not None:
            logger.info("secure channel {}: renewing the handshake", self.address)
            try:
                self.initiate(self._listener_route)
            except GreenockamError as exc:
                logger.warning("secure channel {}: cannot renew: {}", self.address, exc)
        pending = self._pending
        if session.send.remaining == 0 and pending is not None:
            try:
                return pending.done.get()  # type: ignore[no-any-return]
            except GreenockamError:
                pass  # the renewal failed: the spent session raises NonceExhausted
        return self._established()


class _ListenerSide(Endpoint):
    """The listener's address."""

    __slots__ = ("_listener",)

    def __init__(self, listener: SecureChannelListener) -> None:
        self._listener = listener

    def handle(self, message: TransportMessage, source: Optional[Source]) -> None:
        self._listener.request(message, source)


class SecureChannelListener:
    """Accepts secure channels at a local address of ``node``: each request (handshake message
    1) starts a responder :class:`SecureChannel` (docs/secure-channel.md, section 8).

    Args:
        node: the node to listen on.
        address: the listener's local address.
        identity: this node's static X25519 private key (32 bytes; see
            :func:`greenockam.secure.load_identity`); ``None`` makes a fresh key per channel,
            as Rust 2021 does, and then no peer can pin this node.
        trust: which initiator keys to accept (:data:`Trust`); ``None`` accepts anyone, which
            protects against passive observers only.
        local_only: deliver decrypted messages only along routes of local addresses (no relay
            to other nodes through this one).
        handshake_timeout: seconds a responder end waits for message 3 before it is dropped.
        max_pending: responder ends waiting for message 3 at most; further requests are
            dropped and counted until one completes or times out.
        max_channels: established responder ends at most (``None``: no limit); further
            requests are dropped and counted until one is closed.
        idle_timeout: close a responder end that has received nothing for this many seconds
            (``None``: never). The other end is not told; an initiator that renews its channel
            leaves its old responder ends to this.
        send_limit: messages each responder end may send (see :class:`Handshake`).
        replay_window: the responder ends' replay window (see :class:`ReceiveCipher`).

    Raises:
        AddressInUse: something else is at ``address``.
    """

    def __init__(
        self,
        node: Node,
        address: AddressLike = LISTENER_ADDRESS,
        *,
        identity: Optional[bytes] = None,
        trust: Trust = None,
        local_only: bool = False,
        handshake_timeout: float = 10.0,
        max_pending: int = 1024,
        max_channels: Optional[int] = None,
        idle_timeout: Optional[float] = None,
        send_limit: int = MAX_MESSAGES,
        replay_window: int = REPLAY_WINDOW,
    ) -> None:
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be positive, got {idle_timeout}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {max_pending}")
        _verifier(trust)  # refuse a malformed trust set now, not at the first request
        self.node = node
        self._options: Dict[str, Any] = {
            "identity": identity,
            "trust": trust,
            "local_only": local_only,
            "handshake_timeout": handshake_timeout,
            "send_limit": send_limit,
            "replay_window": replay_window,
        }
        # The checks a request would fail on, made now.
        Handshake(initiator=False, static_key=identity, send_limit=send_limit,
                  replay_window=replay_window)
        self.max_pending = max_pending
        self.max_channels = max_channels
        self._pending: Set[SecureChannel] = set()
        self._channels: Set[SecureChannel] = set()
        self._refused = 0
        self.address = node.start_endpoint(address, _ListenerSide(self))
        self.idle_timeout = idle_timeout
        # Each responder end's message count when last seen changing, and the time then.
        self._activity: Dict[SecureChannel, Tuple[int, float]] = {}
        self._sweeper: Any = None
        if idle_timeout is not None:
            interval = max(0.01, min(idle_timeout / 4, 1.0))
            self._sweeper = node.loop.timer(interval, interval, ref=False)
            self._sweeper.start(self._close_idle)

    def _close_idle(self) -> None:
        """Timer callback, in the hub: close the responder ends that received nothing for
        ``idle_timeout`` (checked by their message counts, so receiving costs no clock read)."""
        assert self.idle_timeout is not None
        if not self.node.running:
            self.stop()
            return
        now = self.node.loop.now()
        activity = self._activity
        for channel in list(self._channels):
            seen = activity.get(channel)
            if seen is None or seen[0] != channel.received:
                activity[channel] = (channel.received, now)
            elif now - seen[1] >= self.idle_timeout:
                logger.info(
                    "secure channel {}: idle for {} s, closed", channel.address, self.idle_timeout
                )
                channel.close()

    def __repr__(self) -> str:
        return f"<SecureChannelListener {self.address}, {len(self._channels)} channels>"

    @property
    def channels(self) -> List[SecureChannel]:
        """The established responder ends it started that are not closed."""
        return list(self._channels)

    @property
    def pending(self) -> int:
        """Responder ends waiting for handshake message 3."""
        return len(self._pending)

    def statistics(self) -> Dict[str, int]:
        """``channels``, ``pending`` and ``refused`` (requests dropped at a bound)."""
        return {
            "channels": len(self._channels),
            "pending": len(self._pending),
            "refused": self._refused,
        }

    def request(self, message: TransportMessage, source: Optional[Source]) -> None:
        """A message at the listener: start a responder end for it, or drop it (never raises
        for bad input)."""
        if len(self._pending) >= self.max_pending or (
            self.max_channels is not None and len(self._channels) >= self.max_channels
        ):
            self._refused += 1
            self.node.drop("secure_channel_listener_full", message, "too many channels")
            return
        channel = SecureChannel(self.node, initiator=False, listener=self, **self._options)
        self._pending.add(channel)
        channel.accept(message, source)

    def established(self, channel: SecureChannel) -> None:
        self._pending.discard(channel)
        self._channels.add(channel)

    def forget(self, channel: SecureChannel) -> None:
        """A responder end closed (by the application, a timeout or a failed handshake)."""
        self._pending.discard(channel)
        self._channels.discard(channel)
        self._activity.pop(channel, None)

    def stop(self, close_channels: bool = False) -> None:
        """Stop accepting channels; with ``close_channels`` also close those it started.
        Idempotent."""
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper.close()
            self._sweeper = None
        try:
            self.node.stop_endpoint(self.address)
        except UnknownAddress:
            pass
        for channel in list(self._pending):
            channel.close()
        if close_channels:
            for channel in list(self._channels):
                channel.close()


def open_secure_channel(
    node: Union[Node, Context],
    route: RouteLike,
    *,
    identity: Optional[bytes] = None,
    trust: Trust = None,
    timeout: float = 10.0,
    local_only: bool = False,
    send_limit: int = MAX_MESSAGES,
    replay_window: int = REPLAY_WINDOW,
    renew_below: Optional[int] = None,
) -> SecureChannel:
    """Open a secure channel along ``route`` to a :class:`SecureChannelListener` (or a Rust
    2021 listener) and wait until it is established (docs/secure-channel.md, section 8).

    Args:
        node: the node (or a context of it) to run the initiator end on.
        route: the route to the listener, e.g.
            ``"1#127.0.0.1:3000 => 1#127.0.0.1:4000 => secure_channel_listener"``.
        identity: this node's static X25519 private key; ``None``: a fresh one per channel.
        trust: which responder keys to accept (:data:`Trust`); ``None`` accepts any.
        timeout: seconds to wait for the handshake (also for each renewal).
        local_only: deliver what comes back only along routes of local addresses.
        send_limit: messages this end may send per handshake (at most 65,535).
        replay_window: see :class:`~greenockam.secure.noise.ReceiveCipher`.
        renew_below: run a fresh handshake along ``route`` once fewer than this many nonces
            are left in either direction, keeping :attr:`SecureChannel.address`; ``None``
            (default): never, and sending past the limit raises ``NonceExhausted``.

    Raises:
        HandshakeTimeout: no complete handshake within ``timeout``.
        UntrustedPeer: the responder's static key is not trusted.
        ConnectFailed, UnknownAddress, NodeStopped: message 1 could not be sent.
    """
    if isinstance(node, Context):
        node = node.node
    route = as_route(route)
    if not route:
        raise RouteError("a secure channel needs a route to a listener")
    if not node.running:
        raise NodeStopped("the node is stopped")
    channel = SecureChannel(
        node,
        initiator=True,
        identity=identity,
        trust=trust,
        local_only=local_only,
        handshake_timeout=timeout,
        send_limit=send_limit,
        replay_window=replay_window,
        renew_below=renew_below,
    )
    try:
        session = channel.initiate(route)
        session.done.get()
    except BaseException:
        channel.close()
        raise
    logger.info(
        "secure channel {} established with {} along {}",
        channel.address,
        channel.peer_key.hex(),
        route,
    )
    return channel
