"""The Worker base class: what an application subclasses to handle messages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from .codecs import Codec

if TYPE_CHECKING:  # pragma: no cover
    from .message import Routed
    from .node import Context

__all__ = ["Worker"]


class Worker:
    """A message handler that runs in its own greenlet.

    Subclass it and override :meth:`handle_message`; it is a plain blocking function that may
    send, receive, sleep or do I/O. Messages to one worker are handled one at a time, in arrival
    order. An exception from :meth:`handle_message` is logged with its traceback and the worker
    goes on with the next message.

    Attributes:
        message_type: how :attr:`Routed.body` is decoded: ``str`` (default), ``bytes``, ``int``,
            ``bool``, ``None`` (the unit value) or :data:`greenockam.RAW` (the payload as is).
        codec: the payload codec, ``"bare"`` or ``"bincode"``; ``None`` uses the node's.
    """

    message_type: Any = str
    codec: Optional[Codec] = None

    def initialize(self, ctx: Context) -> None:
        """Called in the worker's greenlet before the first message.

        If it raises, the worker is not started and ``start_worker`` raises
        :class:`~greenockam.errors.WorkerInitError`.
        """

    def handle_message(self, ctx: Context, msg: Routed) -> None:
        """Handle one message. Override this."""
        raise NotImplementedError(f"{type(self).__name__} must override handle_message")

    def shutdown(self, ctx: Context) -> None:
        """Called in the worker's greenlet when it stops (``stop_worker`` or ``Node.stop``)."""
