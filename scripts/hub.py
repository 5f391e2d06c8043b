#!/usr/bin/env python3
"""A hub node, as the Ockam Hub of 2021: ``echo_service`` and ``forwarding_service`` on
HOST:PORT (default 127.0.0.1:4000; give 0.0.0.0:4000 to accept connections from other hosts).

    python scripts/hub.py [HOST:PORT] [--max-forwarders N] [--max-forwarders-per-connection N]
                          [--max-connections N] [--marks random|peer] [--no-confine]
                          [--idle-timeout SECONDS] [--log-level LEVEL]

A node without a listener registers a worker here (``echo_server.py --hub``, or a Rust 2021
``RemoteForwarder``) and is then reachable at ``[1#HOST:PORT, <forwarder>]``. The hub never
dials out, removes a connection's forwarders when it closes, and by default marks connections
with random addresses and confines them (docs/hub.md). Payloads are never logged.

Prints ``hub listening on HOST:PORT`` once ready; runs until SIGINT or SIGTERM, then exits 0.
"""

import argparse
import sys

from loguru import logger

from _cli import LOG_LEVELS, start_logging
from greenockam import Node
from greenockam.hub import Hub
from greenockam.transport.tcp import TcpTransport, parse_host_port


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="greenockam hub")
    parser.add_argument("address", nargs="?", default="127.0.0.1:4000", help="HOST:PORT to bind")
    parser.add_argument(
        "--max-forwarders", type=positive, default=100_000, help="forwarders alive at once"
    )
    parser.add_argument(
        "--max-forwarders-per-connection",
        type=positive,
        default=64,
        help="forwarders one connection may register",
    )
    parser.add_argument(
        "--max-connections", type=positive, default=10_000, help="connections open at once"
    )
    parser.add_argument(
        "--marks",
        choices=["random", "peer"],
        default="random",
        help="name connections in return routes by unguessable random addresses (default) or "
        "by 1#ip:port as Rust nodes do",
    )
    parser.add_argument(
        "--no-confine",
        action="store_true",
        help="let a client send along any mark it knows, not only reply along the marks it "
        "was handed (without confinement and with peer marks any client can write to any other)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="close a connection that sends nothing for this many seconds",
    )
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS)
    args = parser.parse_args(argv)
    try:
        parse_host_port(args.address)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    start_logging(args.log_level)


    node = Node()
    node.context.close()  # nothing reads 0#app on a hub: what clients send there is dropped
    try:
        tcp = TcpTransport(
            node, idle_timeout=args.idle_timeout, max_connections=args.max_connections
        )
        hub = Hub(
            node,
            max_forwarders=args.max_forwarders,
            max_forwarders_per_connection=args.max_forwarders_per_connection,
        )
        bound = tcp.listen(args.address, mark=args.marks, confine=not args.no_confine)
        # A line the caller can wait for (the bound port matters when asked for port 0).
        print(f"hub listening on {bound}", flush=True)
        node.serve_forever()  # until SIGINT or SIGTERM, then a graceful stop
        logger.info("stopped: {}", hub.statistics())
    except OSError as exc:
        print(f"error: cannot listen on {args.address}: {exc}", file=sys.stderr)
        return 1
    finally:
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
