"""Log lines about what peers do: escaped, and bounded in number however much a peer sends.

A node logs what remote input or a peer going away causes (a malformed frame, a message with
nowhere to go, a connection opened, closed, refused or lost, a reply to a client that is gone).
An attacker controls how often that happens, so such lines go through a :class:`FaultLog`: every
event is counted, the first few of each kind from each host are logged in full, and the rest are
summed up in one line per interval. Every piece of text a peer controls (routes, addresses,
peer names, error details) goes through :func:`printable` first, so no peer can put a newline or
a terminal escape sequence into the log (docs/protocol.md, "Logging").
"""

from __future__ import annotations

import traceback
from typing import Any, Dict, Optional, Tuple

from loguru import logger

__all__ = ["FaultLog", "printable", "format_traceback"]

_LIMIT = 200  # characters of one remote-controlled value in a log line


def printable(value: object, limit: int = _LIMIT) -> str:
    """``str(value)`` safe for a log line: anything unprintable escaped as in a Python literal
    (``\\n``, ``\\x1b``, ``\\u2028``), then cut to ``limit`` characters."""
    text = str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


def format_traceback(exc: BaseException) -> str:
    """``exc``'s traceback as Python prints it: code and line numbers, never the values of
    variables (which a sink with ``diagnose=True`` would show, payloads included)."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()


def host_of(peer: str) -> str:
    """The host part of ``ip:port`` / ``[ip6]:port`` (a client's every connection has a new
    port, so limits count by host)."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


class FaultLog:
    """Counts events by kind and logs them at a bounded rate.

    Per interval, the first :attr:`burst` events of each (kind, host) are logged in full; the
    others are counted and reported in one summary line when the interval ends. At most
    :attr:`max_keys` (kind, host) pairs are tracked per interval; past that, events are keyed by
    kind alone, so the memory used is bounded whatever the number of peers.

    Attributes:
        counts: events by kind since the log was made (never reset; plain numbers).
        burst: full lines per kind and host per interval (5).
        interval: seconds per interval (10).
        max_keys: (kind, host) pairs tracked per interval (1024).
    """

    burst = 5
    interval = 10.0
    max_keys = 1024

    def __init__(self, loop: Any) -> None:
        self.counts: Dict[str, int] = {}
        self._loop = loop
        self._window: Dict[Tuple[str, str], int] = {}
        self._suppressed: Dict[str, int] = {}
        self._timer: Optional[Any] = None

    def log(self, level: str, kind: str, peer: str, message: str, *args: Any) -> None:
        """Count one event of ``kind`` caused by ``peer`` and log ``message`` (formatted with
        ``args`` as loguru does) unless this kind from this host is past its burst. Callers
        pass remote-controlled ``args`` through :func:`printable`."""
        self._log(level, kind, peer, message, args)

    def warning(self, kind: str, peer: str, message: str, *args: Any) -> None:
        """:meth:`log` at WARNING."""
        self._log("WARNING", kind, peer, message, args)

    def info(self, kind: str, peer: str, message: str, *args: Any) -> None:
        """:meth:`log` at INFO."""
        self._log("INFO", kind, peer, message, args)

    def _log(self, level: str, kind: str, peer: str, message: str, args: Tuple[Any, ...]) -> None:
        # depth=2: the line names the function that called log/warning/info, not this module
        self.counts[kind] = self.counts.get(kind, 0) + 1
        key = (kind, host_of(peer))
        window = self._window
        if key not in window and len(window) >= self.max_keys:
            key = (kind, "*")
        n = window[key] = window.get(key, 0) + 1
        if n <= self.burst:
            logger.opt(depth=2).log(level, message, *args)
        else:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
        if self._timer is None:
            self._timer = self._loop.timer(self.interval)
            self._timer.start(self.flush)

    def flush(self) -> None:
        """End the interval: log one line for what was suppressed in it, if anything."""
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        if self._suppressed:
            total = sum(self._suppressed.values())
            kinds = ", ".join(f"{k} {n}" for k, n in sorted(self._suppressed.items()))
            logger.warning("{} more events not logged one by one ({})", total, kinds)
        self._window.clear()
        self._suppressed.clear()
