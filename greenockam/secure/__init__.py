"""The secure channel of Ockam 2021: Noise XX over routes (docs/secure-channel.md).

:mod:`greenockam.secure.noise` is its sans-I/O cryptographic core: the handshake in both roles
and the transport ciphers, tested byte for byte against the Rust 2021 vectors.
"""

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
