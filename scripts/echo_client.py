#!/usr/bin/env python3
"""Echo client, as Ockam's node-networking example: sends one message to
``[1#HOST:PORT, echo_service]`` (or along ``--route``) and prints the reply.

    python scripts/echo_client.py [HOST:PORT] [--codec bare|bincode] [--message TEXT]
                                  [--route ROUTE] [--timeout SECONDS]
                                  [--secure-channel ROUTE] [--identity FILE]
                                  [--trust PUBLIC_KEY_HEX ...]

``--route "1#127.0.0.1:3000 => 1#127.0.0.1:4000 => echo_service"`` goes through several nodes.
``--secure-channel "1#127.0.0.1:3000 => 1#127.0.0.1:4000 => secure_channel_listener"`` first
opens a secure channel along that route (docs/secure-channel.md) and sends the message through
it; ``--route`` then names the worker behind the channel (default ``echo_service``).
``--trust`` accepts only a responder with one of these public keys; ``--identity`` keeps this
client's key in FILE.
Exits 0 with the reply on stdout; 1 with a one-line error on a refused connection, a timeout or
a bad argument.
"""

import argparse
import sys

from loguru import logger

from _cli import add_common_options, add_secure_options, secure_options, start_logging
from greenockam import GreenockamError, Node, ReceiveTimeout, Route
from greenockam.secure import HandshakeTimeout, open_secure_channel
from greenockam.transport.tcp import TcpTransport, parse_host_port


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="greenockam echo client")
    parser.add_argument("address", nargs="?", default="127.0.0.1:10222", help="server HOST:PORT")
    parser.add_argument("--message", default="Hello you over there!")
    parser.add_argument("--route", help='e.g. "1#127.0.0.1:3000 => 1#127.0.0.1:4000 => echo_service"')
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the reply")
    parser.add_argument(
        "--secure-channel",
        metavar="ROUTE",
        help="open a secure channel along ROUTE (to a listener) and send through it",
    )
    add_common_options(parser)
    add_secure_options(parser)
    args = parser.parse_args(argv)
    try:
        parse_host_port(args.address)
        if args.secure_channel:
            channel_route = Route.parse(args.secure_channel)
            route = Route.parse(args.route or "echo_service")
        else:
            default = Route([f"1#{args.address}", "echo_service"])
            route = Route.parse(args.route) if args.route else default
    except ValueError:
        print("Usage: echo_client.py <ip>:<port> [--route ROUTE] [--secure-channel ROUTE]",
              file=sys.stderr)
        return 1
    try:
        identity, trust = secure_options(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    start_logging(args.log_level)

    with Node(codec=args.codec) as node:
        TcpTransport(node, connect_timeout=args.timeout)
        try:
            if args.secure_channel:
                channel = open_secure_channel(node, channel_route, identity=identity, trust=trust,
                                              timeout=args.timeout, local_only=True)
                logger.info("secure channel to {}", channel.peer_key.hex())
                route = Route([channel.address, *route])
            node.send(route, args.message)
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


if __name__ == "__main__":
    sys.exit(main())
