"""The mailbox: a context's FIFO of messages and the receivers waiting on it.

The node enforces the bound (see :mod:`greenockam.context` and docs/protocol.md, "Flow
control"); the mailbox itself only holds messages and wakes receivers.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Deque, Optional

from gevent.hub import Waiter

from .errors import ReceiveTimeout

__all__ = ["Mailbox"]

_TIMED_OUT: Any = object()  # what a receive timer wakes its waiter with


class Mailbox:
    """An unbounded FIFO with blocking :meth:`get`.

    Leaner than ``gevent.queue.Queue`` on the one path that matters: :meth:`push` appends and
    hands back the receiver to wake, so the router greenlet can switch straight into it once its
    batch is dispatched (one switch instead of two through the hub); :meth:`put` wakes it through
    one hub callback; a ``get`` with messages waiting returns at once.

    Attributes:
        items: the messages waiting, oldest first (a deque; read ``len(mailbox)`` to count them).
        waiters: the receivers waiting, first come first (a deque of ``gevent.hub.Waiter``): the
            node's router pushes with these two inlined, one Python call less per message.
    """

    __slots__ = ("items", "waiters", "_loop")

    def __init__(self, loop: Any) -> None:
        self.items: Deque[Any] = deque()
        self.waiters: Deque[Waiter] = deque()
        self._loop = loop

    def __len__(self) -> int:
        return len(self.items)

    def push(self, item: Any) -> Optional[Waiter]:
        """Append ``item`` and return the waiting receiver that must now be woken (with
        ``waiter.switch(None)``), if any. Never blocks."""
        self.items.append(item)
        if self.waiters:
            return self.waiters.popleft()
        return None

    def put(self, item: Any) -> None:
        """Append ``item`` and wake one waiting receiver from the hub; never blocks (callable
        from the hub)."""
        waiter = self.push(item)
        if waiter is not None:
            self._loop.run_callback(waiter.switch, None)

    def get(self, timeout: Optional[float] = None) -> Any:
        """The oldest item; waits up to ``timeout`` seconds (``None``: forever).

        Raises:
            ReceiveTimeout: nothing arrived in time (the caller words the message).
        """
        items = self.items
        loop = self._loop
        deadline = None if timeout is None else loop.now() + timeout
        while not items:
            waiter = Waiter()
            self.waiters.append(waiter)
            timer = None
            if deadline is not None:  # a bare libev timer: gevent.Timeout costs 7 Python calls
                timer = loop.timer(max(deadline - loop.now(), 0.0))
                timer.start(waiter.switch, _TIMED_OUT)
            try:
                woken = waiter.get()
            except BaseException:  # killed while waiting
                self._forget(waiter)
                raise
            finally:
                if timer is not None:
                    timer.close()
            if woken is _TIMED_OUT:
                self._forget(waiter)
                raise ReceiveTimeout("timed out")
        item = items.popleft()
        if items and self.waiters:  # another receiver can take the next one
            loop.run_callback(self.waiters.popleft().switch, None)
        return item

    def _forget(self, waiter: Waiter) -> None:
        """A receiver leaves without an item: drop its waiter, or pass on the wake-up that
        ``push`` already gave it."""
        if waiter in self.waiters:
            self.waiters.remove(waiter)
        elif self.items and self.waiters:
            self._loop.run_callback(self.waiters.popleft().switch, None)
