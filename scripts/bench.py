#!/usr/bin/env python3
"""greenockam against raw gevent, measured side by side in one run.

    python scripts/bench.py [--quick] [--reps R] [--cpus SERVER,CLIENT] [--target KEY=VALUE]

For every figure a raw gevent baseline and greenockam do the same work, interleaved (raw,
greenockam, raw, greenockam, ...), ``R`` times; the table shows each figure's median and the
ratio greenockam / raw. The figures (the README's Performance section says what they show):

1. ``rtt``: sequential round trips on one connection (send, wait for the echo): messages/s and
   p50/p99 latency in µs.
   ``rtt_server``: the same, raw client against the greenockam server (isolates the server side:
   node + worker + TCP), compared with the raw client against the raw server of the same
   repetition.
2. ``pipelined``: one client, a sender greenlet writing N messages as fast as it can while a
   reader greenlet reads the echoes: messages/s.
3. ``conns``: 100 concurrent connections, K round trips each: total messages/s.
4. ``idle``: 10,000 idle connections to one server: server RSS growth per connection, measured
   from /proc/<pid>/status after every connection has done one round trip.
5. ``codec``: in-process timeit of greenockam's codecs (the frame codec's encode, decode and
   both; the BARE payload codec; route conversion).
6. ``hub``: greenockam only. One client, pipelined as in 2, to an echoer that listens and is
   registered at a hub (``scripts/hub.py`` with its defaults: random marks, confinement): first
   straight to the echoer, then through the hub to its forwarder (every message crosses the
   hub twice): messages/s of both, ``hub_ratio`` = through the hub / straight, and the hub's
   CPU per message.
7. ``secure_rtt`` and ``secure_pipelined``: greenockam only. One client (the initiator) and
   the greenockam echo server (also the responder: its secure channel listener), in separate
   processes: round trips as in 1 and pipelined messages as in 2, first plain to
   ``echo_service`` and then through one secure channel to it: messages/s of both,
   ``secure_rtt_ratio`` and ``secure_pipelined_ratio`` = through the channel / plain, and each
   end's CPU per message. One channel carries a whole run, so ``secure_pipelined`` sends fewer
   messages than ``pipelined`` (a handshake allows 65,535 each way).

The raw baseline is a gevent ``StreamServer`` echo and gevent sockets with the same framing (u16
big-endian length, then a body of exactly the size of greenockam's body for the same message).
Its server sends each echo frame with its own ``send``; its pipelined client writes one frame per
``send``. The greenockam server is ``scripts/echo_server.py 127.0.0.1:0 --log-level WARNING``; the
greenockam client is a ``Node`` + ``TcpTransport`` per connection using ``node.send`` and
``node.receive``. In the ``idle`` figure both servers are driven by the same raw-socket client
(it only has to open connections and do one valid round trip on each).

Every server and client is a separate process pinned with ``os.sched_setaffinity`` (``--cpus``,
server CPU then client CPU, default ``0,0``). This process only starts them and waits. The other
roles (``--role raw-server``, ``--role client``, ``--role codec``, ``--role hub-echoer``) are this
same file run again, and can be run by hand, e.g. against a server under a profiler.

The last line printed is one JSON object. The exit status is 0 even when a target is missed (the
table says MISSED): this is a measurement, not a test. A hang or a crash of any process ends the
run with an error and exit status 1, and so does a target on a figure no run produced; every
process started here is killed on the way out. A ``--target`` naming no figure of the table is
refused before anything runs (exit status 2).

The code is in the package ``benchmark`` next to this file: ``roles`` (the raw gevent baseline and
the clients), ``codec`` (the in-process figures), ``runner`` (the processes and the runs) and
``report`` (the table of figures that aggregation, targets and rendering all read). A new figure
is one row in ``report.ROWS`` and one measuring function in ``roles`` or ``codec``.
"""

from __future__ import annotations

import argparse
import platform
import signal
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

from benchmark import codec, report, roles, runner
from benchmark.common import BenchError, greenockam_frames, raise_nofile


def orchestrate(args: argparse.Namespace, targets: Dict[str, float]) -> int:
    """Run every phase of every repetition, then print the table and the JSON line."""
    quick = args.quick
    sizes = runner.sizes(quick)
    reps = args.reps if args.reps else sizes["reps"]
    cpus = args.cpus
    timeout = args.timeout if args.timeout else (45.0 if quick else 240.0)
    raise_nofile()

    import gevent

    from greenockam import __version__ as gko_version

    request, _ = greenockam_frames()
    body_bytes = len(request) - 2
    git = runner.git_describe()
    started = time.monotonic()
    print(
        f"bench: {'quick' if quick else 'full'} run, {reps} repetition(s), "
        f"server on CPU {cpus[0]}, client on CPU {cpus[1]}; frames of 2 + {body_bytes} bytes; "
        f"Python {platform.python_version()}, gevent {gevent.__version__}, "
        f"greenockam {gko_version}",
        flush=True,
    )
    runs = runner.run_all(reps, cpus, sizes, timeout)
    figures = report.aggregate(runs)
    met = report.check_targets(figures, targets)
    meta = {
        "body_bytes": body_bytes,
        "idle_connections": sizes["idle_n"],
        "rtt_messages": sizes["rtt_n"],
        "pipelined_messages": sizes["pipelined_n"],
        "secure_pipelined_messages": sizes["secure_pipelined_n"],
        "conns": sizes["conns"],
        "round_trips_per_conn": sizes["per_conn"],
        "repetitions": reps,
        "quick": quick,
        "cpus": {"server": cpus[0], "client": cpus[1]},
        "python": platform.python_version(),
        "gevent": gevent.__version__,
        "greenockam": gko_version,
        "git": git,
        "seconds": round(time.monotonic() - started, 1),
        "targets": targets,
        "missed": [key for key, ok in met.items() if not ok],
    }
    print()
    for line in report.render(figures, targets, met, sizes, reps):
        print(line)
    print()
    print(report.json_line(figures, meta), flush=True)
    return 0


def cpu_pair(text: str) -> Tuple[int, int]:
    """``--cpus SERVER,CLIENT``."""
    cpus = tuple(int(c) for c in text.split(","))
    if len(cpus) != 2:
        raise argparse.ArgumentTypeError("takes SERVER,CLIENT, e.g. 0,0")
    return cpus[0], cpus[1]


def main(argv: Optional[List[str]] = None) -> int:
    """The command line: the benchmark, or one of the roles it starts; the exit status."""
    parser = argparse.ArgumentParser(description="greenockam against raw gevent, side by side")
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes, 1 repetition (about 30 seconds)")
    parser.add_argument("--reps", type=int, default=0, help="repetitions (default 3, quick 1)")
    parser.add_argument("--cpus", type=cpu_pair, default=(0, 0),
                        help="SERVER,CLIENT CPUs to pin to (default 0,0)")
    parser.add_argument("--target", action="append", default=[], metavar="KEY=VALUE",
                        help="add or override a target (JSON key), e.g. rtt_ratio=0.5")
    parser.add_argument("--timeout", type=float, default=0.0,
                        help="seconds allowed per client run (default 45 quick, 240 full)")
    # Roles used by the orchestrator (and usable by hand).
    parser.add_argument("--role", choices=["bench", "raw-server", "client", "codec", "hub-echoer"],
                        default="bench")
    parser.add_argument("--impl", choices=["raw", "gko"], default="gko")
    parser.add_argument("--phase", choices=roles.PHASES, default="rtt")
    parser.add_argument("--addr", default="127.0.0.1:10222")
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--warm", type=int, default=100)
    parser.add_argument("--conns", type=int, default=100)
    parser.add_argument("--per-conn", type=int, default=500)
    parser.add_argument("--server-pid", type=int, default=0,
                        help="client role: also report this server process's CPU per message")
    parser.add_argument("--hub", default="",
                        help="hub phase and hub-echoer role: the hub's HOST:PORT")
    parser.add_argument("--forwarder", default="",
                        help="hub phase: the echoer's forwarder address at the hub")
    args = parser.parse_args(argv)

    if args.role == "raw-server":
        return roles.run_raw_server(args.addr)
    if args.role == "hub-echoer":
        return roles.run_hub_echoer(args.addr, args.hub)
    if args.role == "client":
        return roles.run_client(
            args.impl, args.phase, args.addr, args.timeout or 120.0, args.n, args.warm,
            args.conns, args.per_conn, args.server_pid, args.hub, args.forwarder,
        )
    if args.role == "codec":
        return codec.run_codec(args.n)
    try:
        targets = report.parse_targets(args.target)
    except BenchError as exc:
        parser.error(str(exc))

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        return orchestrate(args, targets)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        runner.kill_all()


if __name__ == "__main__":
    sys.exit(main())
