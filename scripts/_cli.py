"""What the scripts share: their common options, the secure channel options and how they turn on
logging."""

import argparse
import sys

from loguru import logger

LOG_LEVELS = ["TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL", "OFF"]


def add_common_options(parser: argparse.ArgumentParser, default_level: str = "INFO") -> None:
    """``--codec bare|bincode`` and ``--log-level LEVEL`` (``OFF``: no log at all)."""
    parser.add_argument("--codec", choices=["bare", "bincode"], default="bare")
    parser.add_argument(
        "--log-level", default=default_level, type=str.upper, choices=LOG_LEVELS
    )


def add_secure_options(parser: argparse.ArgumentParser) -> None:
    """``--identity FILE`` and ``--trust PUBLIC_KEY_HEX`` (repeatable), for secure channels."""
    parser.add_argument(
        "--identity",
        metavar="FILE",
        help="this node's static key for secure channels, kept in FILE (created, mode 0600, if "
        "absent); without it every channel gets a fresh key",
    )
    parser.add_argument(
        "--trust",
        action="append",
        default=[],
        metavar="PUBLIC_KEY_HEX",
        help="accept secure channels only with this peer public key (64 hex characters; "
        "repeatable); without it any peer is accepted",
    )


def secure_options(args: argparse.Namespace):
    """``(identity, trust)`` for greenockam.secure from the parsed options.

    Raises:
        ValueError: a trusted key is not 64 hex characters, or the identity file is unusable.
        OSError: the identity file cannot be read or created.
    """
    from greenockam.secure import load_identity

    trust = None
    if args.trust:
        trust = []
        for text in args.trust:
            try:
                key = bytes.fromhex(text)
            except ValueError:
                key = b""
            if len(key) != 32:
                raise ValueError(f"--trust takes a 32-byte public key in hex, got {text!r}")
            trust.append(key)
    identity = load_identity(args.identity) if args.identity else None
    return identity, trust


def start_logging(level: str) -> None:
    """Log to stderr at ``level``, greenockam's lines included (the library is silent until an
    application enables it). ``diagnose=False`` and ``backtrace=False``: a traceback never shows
    the values of variables, which may hold payloads."""
    logger.remove()
    if level == "OFF":
        return
    logger.add(sys.stderr, level=level, diagnose=False, backtrace=False)
    logger.enable("greenockam")
