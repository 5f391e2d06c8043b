"""The secure channel of Ockam 2021: Noise XX over routes (docs/secure-channel.md).

* :mod:`greenockam.secure.noise` is its sans-I/O cryptographic core: the handshake in both roles
  and the transport ciphers, tested byte for byte against the Rust 2021 vectors.
* :mod:`greenockam.secure.channel` runs it on a node: :class:`SecureChannelListener`,
  :func:`open_secure_channel`, :class:`SecureChannel` and :func:`channel_of`.
* :mod:`greenockam.secure.identity` keeps a node's long-term static key in a file.
"""

from .channel import (
    LISTENER_ADDRESS,
    HandshakeTimeout,
    SecureChannel,
    SecureChannelListener,
    Trust,
    channel_of,
    open_secure_channel,
)
from .identity import load_identity
from .noise import (
    CHANNEL_OVERHEAD,
    MAX_MESSAGES,
    MAX_PLAINTEXT,
    REPLAY_WINDOW,
    Handshake,
    ReceiveCipher,
    SendCipher,
    generate_private_key,
    public_key,
)

__all__ = [
    "SecureChannelListener",
    "SecureChannel",
    "open_secure_channel",
    "channel_of",
    "HandshakeTimeout",
    "Trust",
    "LISTENER_ADDRESS",
    "load_identity",
    "Handshake",
    "SendCipher",
    "ReceiveCipher",
    "generate_private_key",
    "public_key",
    "CHANNEL_OVERHEAD",
    "MAX_MESSAGES",
    "MAX_PLAINTEXT",
    "REPLAY_WINDOW",
]
