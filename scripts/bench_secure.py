#!/usr/bin/env python3
"""Secure channel throughput against plain greenockam, measured side by side in one run.

    python scripts/bench_secure.py [--quick] [--reps R] [--messages N]

The responder is ``scripts/echo_server.py 127.0.0.1:0`` in its own process (a worker
``echo_service`` and a secure channel listener). This process is the initiator: a ``Node`` with a
``TcpTransport`` that sends 32-character strings to ``[1#server, echo_service]`` (plain) or to
``[channel, echo_service]`` through a channel opened along ``[1#server,
secure_channel_listener]`` (secure), alternating plain and secure ``R`` times. Each secure
repetition opens a fresh channel (outside the timing), since one handshake carries 65,535
messages each way.

1. ``rtt``: sequential round trips (send, wait for the echo): messages/s.
2. ``pipelined``: a sender greenlet sends N messages as fast as it can while the receiver reads
   the echoes: messages/s.

The table shows each figure's median and the ratio secure / plain; the last line printed is one
JSON object with ``secure_rtt_ratio`` and ``secure_pipelined_ratio`` (targets: at least 0.75 and
0.5). The exit status is 0 even when a target is missed: this is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import gevent

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a source tree without installing

from greenockam import Node, Route  # noqa: E402
from greenockam.secure import open_secure_channel  # noqa: E402
from greenockam.transport import TcpTransport  # noqa: E402

MESSAGE = "0123456789abcdef0123456789abcdef"
TARGETS = {"secure_rtt_ratio": 0.75, "secure_pipelined_ratio": 0.5}


def start_server() -> Tuple[subprocess.Popen[bytes], str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(HERE)] + sys.path))
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "echo_server.py"), "127.0.0.1:0",
         "--log-level", "WARNING"],
        stdout=subprocess.PIPE, env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"error: the echo server did not start ({line!r})")
    return proc, line.split()[-1]


def rtt(node: Node, route: Route, n: int) -> float:
    with node.open_context() as ctx:
        start = time.perf_counter()
        for _ in range(n):
            ctx.send(route, MESSAGE)
            ctx.receive(30)
        return n / (time.perf_counter() - start)


def pipelined(node: Node, route: Route, n: int) -> float:
    with node.open_context() as ctx:

        def sender() -> None:
            for _ in range(n):
                ctx.send(route, MESSAGE)

        start = time.perf_counter()
        greenlet = gevent.spawn(sender)
        for _ in range(n):
            ctx.receive(30)
        greenlet.get()
        return n / (time.perf_counter() - start)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="secure channel benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer messages and repetitions")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--messages", type=int, default=None, help="messages per figure")
    args = parser.parse_args(argv)
    reps = args.reps or (3 if args.quick else 7)
    n = args.messages or (2000 if args.quick else 20000)
    if n >= 65535:
        parser.error("--messages must stay below 65535 (one handshake)")

    proc, address = start_server()
    results: Dict[str, List[float]] = {}
    try:
        with Node() as node:
            TcpTransport(node)
            plain = Route([f"1#{address}", "echo_service"])
            figures: Dict[str, Callable[[Node, Route, int], float]] = {
                "rtt": rtt,
                "pipelined": pipelined,
            }
            for name, measure in figures.items():
                measure(node, plain, min(n, 500))  # warm up the connection and the caches
                for _ in range(reps):
                    results.setdefault(f"plain_{name}", []).append(measure(node, plain, n))
                    channel = open_secure_channel(
                        node, [f"1#{address}", "secure_channel_listener"], timeout=30
                    )
                    secure = Route([channel.address, "echo_service"])
                    results.setdefault(f"secure_{name}", []).append(measure(node, secure, n))
                    channel.close()
    finally:
        proc.terminate()
        proc.wait(10)

    res: Dict[str, Any] = {k: statistics.median(v) for k, v in results.items()}
    for name in ("rtt", "pipelined"):
        res[f"secure_{name}_ratio"] = res[f"secure_{name}"] / res[f"plain_{name}"]
    res.update(reps=reps, messages=n)
    print(f"{'figure':<28}{'plain':>12}{'secure':>12}{'ratio':>8}  target")
    for name in ("rtt", "pipelined"):
        key = f"secure_{name}_ratio"
        verdict = "met" if res[key] >= TARGETS[key] else "MISSED"
        plain, secure = res[f"plain_{name}"], res[f"secure_{name}"]
        print(f"{name + ' (msg/s)':<28}{plain:>12,.0f}{secure:>12,.0f}{res[key]:>8.3f}"
              f"  >= {TARGETS[key]} {verdict}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
