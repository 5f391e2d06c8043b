#!/usr/bin/env python3
"""Echo client, as Ockam's node-networking example: sends one message to
``[1#HOST:PORT, echo_service]`` (or along ``--route``) and prints the reply.

    python scripts/echo_client.py [HOST:PORT | --route ROUTE] [--message TEXT]
                                  [--timeout SECONDS] [--connect-timeout SECONDS]
                                  [--codec bare|bincode] [--log-level LEVEL]
                                  [--secure-channel ROUTE] [--identity FILE]
                                  [--trust PUBLIC_KEY_HEX ...]

``--route "1#127.0.0.1:3000 => 1#127.0.0.1:4000 => echo_service"`` goes through several nodes
(give either HOST:PORT or --route).
``--secure-channel "1#127.0.0.1:3000 => 1#127.0.0.1:4000 => secure_channel_listener"`` first
opens a secure channel along that route (docs/secure-channel.md) and sends the message through
it; ``--route`` then names the worker behind the channel (default ``echo_service``).
``--trust`` accepts only a responder with one of these public keys; ``--identity`` keeps this
client's key in FILE. Prints the reply and nothing else, exits 0; or prints one
``error:`` line and exits 1 (a bad argument, a refused connection, no reply in time). The log
(stderr) is silent unless ``--log-level`` asks for it.
"""

import argparse
import sys

from loguru import logger

from _cli import add_common_options, add_secure_options, secure_options, start_logging
from greenockam import GreenockamError, Node, ReceiveTimeout, Route
from greenockam.secure import HandshakeTimeout, open_secure_channel
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
    parser.add_argument(
        "--secure-channel",
        metavar="ROUTE",
        help="open a secure channel along ROUTE (to a listener) and send through it",
    )
    add_common_options(parser, default_level="OFF")
    add_secure_options(parser)
    args = parser.parse_args(argv)
    try:
        route = _route(args)
        identity, trust = secure_options(args)
    except (ValueError, OSError) as exc:
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
            if args.secure_channel:
                channel = open_secure_channel(
                    node,
                    args.secure_channel,
                    identity=identity,
                    trust=trust,
                    timeout=args.timeout,
                    local_only=True,
                )
                logger.info("secure channel to {}", channel.peer_key.hex())
                route = Route([channel.address, *route])
            node.send(route, args.message)  # from "app", as the Rust example's request
            reply = node.receive(timeout=args.timeout)
            body = reply.body
        except HandshakeTimeout as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
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
    """The route to send along, from HOST:PORT or --route; with --secure-channel, the route
    behind the channel (--route, default ``echo_service``).

    Raises:
        ValueError: which argument is wrong, and why.
    """
    if args.secure_channel is not None:
        if args.address is not None:
            raise ValueError(
                "with --secure-channel, give --route (behind the channel), not HOST:PORT"
            )
        for option, text in (("--secure-channel", args.secure_channel), ("--route", args.route)):
            try:
                if text is not None and not Route.parse(text):
                    raise ValueError("the route is empty")
            except ValueError as exc:
                raise ValueError(f"{option} {text!r}: {exc}") from None
        return Route.parse(args.route or "echo_service")
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
