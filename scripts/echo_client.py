#!/usr/bin/env python3
"""Echo client, as Ockam's node-networking example: sends one message to
``[1#HOST:PORT, echo_service]`` (or along ``--route``) and prints the reply.

    python scripts/echo_client.py [HOST:PORT | --route ROUTE] [--message TEXT]
                                  [--timeout SECONDS] [--connect-timeout SECONDS]
                                  [--codec bare|bincode] [--log-level LEVEL]

``--route "1#127.0.0.1:3000 => 1#127.0.0.1:4000 => echo_service"`` goes through several nodes
(give either HOST:PORT or --route). Prints the reply and nothing else, exits 0; or prints one
``error:`` line and exits 1 (a bad argument, a refused connection, no reply in time). The log
(stderr) is silent unless ``--log-level`` asks for it.
"""

import argparse
import sys

from loguru import logger

from _cli import add_common_options, start_logging
from greenockam import GreenockamError, Node, ReceiveTimeout, Route
from greenockam.transport.tcp import TcpTransport, parse_host_port

DEFAULT_SERVER = "127.0.0.1:10222"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="greenockam echo client")
    parser.add_argument("address", nargs="?", help=f"server HOST:PORT (default {DEFAULT_SERVER})")
    parser.add_argument("--message", default="Hello you over there!")
    parser.add_argument(
        "--route", help='e.g. "1#127.0.0.1:3000 => 1#127.0.0.1:4000 => echo_service"'
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the reply")
    parser.add_argument(
        "--connect-timeout", type=float, default=5.0, help="seconds to open the connection"
    )
    add_common_options(parser, default_level="OFF")
    args = parser.parse_args(argv)
    try:
        route = _route(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for option in ("timeout", "connect_timeout"):
        if getattr(args, option) < 0:
            print(f"error: --{option.replace('_', '-')} cannot be negative", file=sys.stderr)
            return 1

    start_logging(args.log_level)

    with Node(codec=args.codec) as node:
        TcpTransport(node, connect_timeout=args.connect_timeout)
        try:
            node.send(route, args.message)  # from "app", as the Rust example's request
            reply = node.receive(timeout=args.timeout)
            body = reply.body
        except ReceiveTimeout:
            print(f"error: no reply from {route} within {args.timeout} s", file=sys.stderr)
            return 1
        except GreenockamError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        logger.info("Received return message: '{}' via {}", body, reply.return_route)
        print(body)
    return 0


def _route(args: argparse.Namespace) -> Route:
    """The route to send along, from HOST:PORT or --route.

    Raises:
        ValueError: which argument is wrong, and why.
    """
    if args.route is not None and args.address is not None:
        raise ValueError("give either HOST:PORT or --route, not both")
    if args.route is not None:
        try:
            return Route.parse(args.route)
        except ValueError as exc:
            raise ValueError(f"--route {args.route!r}: {exc}") from None
    address = DEFAULT_SERVER if args.address is None else args.address
    try:
        parse_host_port(address)
    except ValueError as exc:
        raise ValueError(f"HOST:PORT {address!r}: {exc}") from None
    return Route([f"1#{address}", "echo_service"])


if __name__ == "__main__":
    sys.exit(main())
