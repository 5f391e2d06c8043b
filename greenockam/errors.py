"""The one exception tree of greenockam.

Everything the library raises on purpose derives from :class:`GreenockamError`, so an
application can catch one base class. Protocol errors are split as h11 splits them:
:class:`LocalProtocolError` means *you* asked for something the protocol cannot carry (a body
over 65535 bytes), :class:`RemoteProtocolError` means the *peer* sent bytes that are not a valid
message. Likewise :class:`NodeStopped` ("you closed it") is distinct from
:class:`ConnectionLost` ("the peer broke it").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List

if TYPE_CHECKING:  # pragma: no cover
    from .wire import TransportMessage

__all__ = [
    "GreenockamError",
    "AddressError",
    "ProtocolError",
    "LocalProtocolError",
    "RemoteProtocolError",
    "RouteError",
    "UnknownAddress",
    "AddressInUse",
    "MailboxFull",
    "NodeStopped",
    "ReceiveTimeout",
    "WorkerInitError",
    "TransportError",
    "ConnectFailed",
    "RegistrationFailed",
    "ConnectionLost",
    "OutputFull",
    "SecureChannelError",
    "HandshakeFailed",
    "HandshakeTimeout",
    "UntrustedPeer",
    "DecryptFailed",
    "ReplayedMessage",
    "NonceExhausted",
]


class GreenockamError(Exception):
    """Base class of every error greenockam raises on purpose."""


class AddressError(GreenockamError, ValueError):
    """Text that is not a valid address or route, e.g. ``"1#a#b"`` or ``"300#x"``."""


class ProtocolError(GreenockamError):
    """Bytes that do not follow the Ockam routing protocol (either direction)."""


class LocalProtocolError(ProtocolError):
    """This side asked for something the protocol cannot express (e.g. a body over 65535 bytes).

    Raised before anything is written, so the connection stays usable.
    """


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that are not a valid frame or payload.

    The message says what was wrong and at which offset of the body.

    Attributes:
        messages: set only on the error that :meth:`FrameDecoder.feed
            <greenockam.wire.FrameDecoder.feed>` raises: the messages of the same chunk that were
            complete before the malformed one, in order.
    """

    messages: List[TransportMessage]


class RouteError(GreenockamError, ValueError):
    """A route that cannot be sent, e.g. an empty onward route."""


class UnknownAddress(GreenockamError, LookupError):
    """No local worker, and no transport for the address type, at the next hop."""


class AddressInUse(GreenockamError):
    """A worker was started on an address that another worker already has."""


class MailboxFull(GreenockamError):
    """The destination worker's mailbox holds ``mailbox_size`` messages already.

    See the README's mailbox policy: a local send never blocks on a full mailbox.
    """


class NodeStopped(GreenockamError):
    """The node (or the transport) was stopped; it takes no more messages."""


class ReceiveTimeout(GreenockamError, TimeoutError):
    """No message arrived within the timeout given to ``receive`` or ``request``."""


class WorkerInitError(GreenockamError):
    """A worker's ``initialize`` raised; the worker was not started."""


class TransportError(GreenockamError, ConnectionError):
    """A transport could not carry a message."""


class ConnectFailed(TransportError):
    """An outgoing connection could not be opened (refused, unreachable, timed out)."""


class RegistrationFailed(ConnectFailed):
    """A :class:`~greenockam.hub.RemoteForwarder` could not register at its hub: no
    connection, no reply within the timeout, or a reply that is not a registration
    (docs/hub.md, "The client"). The worker is not reachable through the hub."""


class OutputFull(TransportError):
    """A worker whose own mailbox is full sent to a connection whose output is stalled: past
    ``high_water``, and not a byte of it has gone out for at least ``stall_timeout`` (see
    :class:`~greenockam.transport.tcp.TcpTransport`). The message is refused, not queued.

    A worker waiting to send is not draining its mailbox, and the peer may be waiting for this
    very worker (two workers on two nodes flooding each other): such a worker waits for a slow
    output as long as it moves, but once its wait found the output stuck, its further sends to
    that connection are refused at once, so that it gets back to its mailbox, until the output
    moves again. Only a worker whose mailbox is full sees this.
    """


class ConnectionLost(TransportError):
    """The peer closed or broke a connection while a message was waiting to go out on it."""


class SecureChannelError(GreenockamError):
    """A secure channel refused a message or an operation (docs/secure-channel.md).

    The base class of the channel's own errors. Those caused by bytes from the peer are also
    :class:`RemoteProtocolError`; those caused by this side are also :class:`LocalProtocolError`.
    """


class HandshakeFailed(SecureChannelError, RemoteProtocolError):
    """A handshake message that is too short, does not authenticate or carries a low-order key.

    The handshake is left exactly as it was: it still waits for the genuine message.
    """


class HandshakeTimeout(SecureChannelError, ReceiveTimeout):
    """The other end did not complete the handshake within the timeout; the channel end that
    waited for it is closed."""


class UntrustedPeer(HandshakeFailed):
    """The peer proved it holds its static key, but the trust policy refused that key.

    Attributes:
        public_key: the refused 32-byte X25519 public key.
    """

    def __init__(self, message: str, public_key: bytes = b"") -> None:
        super().__init__(message)
        self.public_key = public_key


class DecryptFailed(SecureChannelError, RemoteProtocolError):
    """A channel message that is too short to hold a nonce and a tag, or does not authenticate.

    The message is dropped; the channel is unaffected.
    """


class ReplayedMessage(SecureChannelError, RemoteProtocolError):
    """A channel message whose nonce was already accepted, or is older than the replay window.

    The message is dropped; the channel is unaffected.
    """


class NonceExhausted(SecureChannelError, LocalProtocolError):
    """This channel end has used every nonce it may send with: it can never send again.

    Raised before anything is encrypted. Open a fresh channel to go on.
    """
