"""greenockam: Ockam-style routed messaging for Python, on gevent.

Workers are greenlets with a plain blocking ``handle_message(ctx, msg)``; a :class:`Node` routes
messages by address, locally or over TCP, speaking the 2021 Rust Ockam wire protocol byte for byte.

Importing greenockam performs no I/O and never monkey-patches. The library logs with loguru and is
silent until the application calls ``loguru.logger.enable("greenockam")``.
"""

from loguru import logger as _logger

from . import errors
from .address import Address, Route
from .codecs import BARE, BINCODE, RAW, UNIT, Codec
from .context import Context
from .errors import *  # noqa: F403 (every exception is public API; see errors.__all__)
from .message import Routed
from .node import Node
from .wire import FrameDecoder, TransportMessage, encode_frame
from .worker import Worker

_logger.disable("greenockam")

__version__ = "0.1.0"

__all__ = [
    "Node",
    "Context",
    "Worker",
    "Routed",
    "Address",
    "Route",
    "Codec",
    "BARE",
    "BINCODE",
    "RAW",
    "UNIT",
    "TransportMessage",
    "FrameDecoder",
    "encode_frame",
    *errors.__all__,
]
