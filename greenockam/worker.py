"""The Worker base class: what an application subclasses to handle messages."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from .codecs import Codec

if TYPE_CHECKING:  # pragma: no cover
    from .context import Context
    from .message import Routed

__all__ = ["Worker"]


class Worker:
    """A message handler that runs in its own greenlet.

    Subclass it and override :meth:`handle_message`; it is a plain blocking function that may
    send, receive, sleep or do I/O (gevent-cooperative I/O: see the README). Messages to one
    worker are handled one at a time, in arrival order, unless :attr:`concurrency` says
    otherwise. An exception from :meth:`handle_message` is logged (with its traceback when it is
    a bug, without one when the peer caused it) and the worker goes on with the next message.

    Attributes:
        message_type: how :attr:`Routed.body` is decoded: ``str`` (default; ``None`` means the
            same), ``bytes``, ``int``, ``bool``, :data:`greenockam.UNIT` (the unit value),
            :data:`greenockam.RAW` (the payload as is) or a declared type
            (docs/typed-messages.md). The body is decoded when the message is received; reading
            :attr:`Routed.body` of a payload that is not this type raises
            :class:`~greenockam.errors.RemoteProtocolError`, counted as ``bad_payload`` (a worker
            that only forwards never reads it).
        codec: the payload codec, ``"bare"`` or ``"bincode"``; ``None`` uses the node's.
        concurrency: how many greenlets handle this worker's messages at once (default 1). Above
            1, they share one mailbox: messages are taken in arrival order but may finish in any
            order, and handlers must not rely on running one at a time.
    """

    message_type: Any = str
    codec: Optional[Codec] = None
    concurrency: int = 1

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
