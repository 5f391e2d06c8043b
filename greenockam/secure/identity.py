"""A node's long-term static key (its identity), kept in a file only its owner can read.

The file holds the 32-byte X25519 private key as 64 hexadecimal characters on one line. It is
created with mode 0600 and never overwritten; on POSIX systems a file that the group or others
may read or write is refused, as OpenSSH refuses such a private key (docs/secure-channel.md,
section 8). Peers pin the matching public key (:func:`greenockam.secure.public_key`).
"""

from __future__ import annotations

import os
import stat

from .noise import KEY_SIZE, generate_private_key, public_key

__all__ = ["load_identity"]


def load_identity(path: str, create: bool = True) -> bytes:
    """The private key stored at ``path``; with ``create``, a fresh one is made and stored there
    first if the file does not exist.

    Raises:
        FileNotFoundError: no file and ``create`` is false.
        FileExistsError: another process created the file at the same moment (load it again).
        PermissionError: the file may be read or written by others than its owner.
        ValueError: the file does not hold one 32-byte key in hexadecimal.
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if not create:
            raise
        return _create(path)
    with os.fdopen(fd, "r", encoding="ascii") as f:
        mode = os.fstat(f.fileno()).st_mode
        if os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise PermissionError(
                f"the identity file {path} is accessible to others (mode {stat.filemode(mode)}); "
                f"make it readable by its owner only (chmod 600)"
            )
        text = f.read(4 * KEY_SIZE).strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_SIZE:
        raise ValueError(f"the identity file {path} does not hold a {KEY_SIZE}-byte hex key")
    public_key(key)  # a last check that it is a usable X25519 key
    return key


def _create(path: str) -> bytes:
    key = generate_private_key()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key.hex() + "\n")
    return key
