"""What the benchmark's processes share: the message, its frames, and the JSON line out."""

from __future__ import annotations

import json
import resource
import sys
from typing import Any, Dict, Mapping, Sequence, Tuple

MESSAGE = "0123456789abcdef0123456789abcdef"  # 32 characters: the payload of every message
assert len(MESSAGE) == 32


class BenchError(RuntimeError):
    """The run cannot go on or cannot be reported: a process hung, crashed or said something
    unexpected, or the table and the runs do not match (a target on a figure no run produced)."""


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def greenockam_frames(addr: str = "127.0.0.1:10222") -> Tuple[bytes, bytes]:
    """The request frame a greenockam client writes for MESSAGE, and the reply frame the echo
    server writes back (the first hop, the client's connection, is popped from each)."""
    from greenockam import BARE, Route, TransportMessage, encode_frame

    payload = BARE.encode(MESSAGE)
    request = encode_frame(
        TransportMessage(Route([f"1#{addr}", "echo_service"]), Route(["app"]), payload),
        pop_first=True,
    )
    reply = encode_frame(
        TransportMessage(Route(["1#127.0.0.1:54321", "app"]), Route(["echo_service"]), payload),
        pop_first=True,
    )
    assert len(request) == len(reply)
    return request, reply


def emit(obj: Dict[str, Any]) -> None:
    """Write ``obj`` as one JSON line on stdout: how a child process hands back its result."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# Every run's result (a client's or the codec role's JSON line), by (impl, phase): impl is "raw"
# or "gko", phase one of runner.PHASES or "codec"; one result per repetition, in order.
Runs = Mapping[Tuple[str, str], Sequence[Mapping[str, Any]]]
