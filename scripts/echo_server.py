#!/usr/bin/env python3
"""Echo server, as Ockam's node-networking example: a worker ``echo_service`` answers every
message with its body, over TCP on HOST:PORT (default 127.0.0.1:10222).

    python scripts/echo_server.py [HOST:PORT] [--connect HOST:PORT ...] [--hub HOST:PORT]
                                  [--worker NAME] [--identity FILE] [--trust PUBLIC_KEY_HEX ...]
                                  [--codec bare|bincode] [--log-level LEVEL]

It also runs a secure channel listener at ``secure_channel_listener``, as the responder of
Ockam's get started example 09 does (docs/secure-channel.md): ``echo_client.py
--secure-channel`` reaches the worker through an encrypted channel. Decrypted messages go to
local workers only. ``--identity`` gives the listener a long-term key (its public key is logged);
``--trust`` accepts only initiators with these keys. ``--worker echoer`` names the worker as the
Rust get started examples do.

A message that arrives for another ``1#host:port`` is forwarded only over a connection that is
open (docs/protocol.md, section 7): ``--connect`` opens one at start, as the middle node of
Ockam's get started example 08 does, so this server can be the middle hop of a route.

``--hub HOST:PORT`` opens no listener: the server registers ``echo_service`` at that hub
(``scripts/hub.py``, docs/hub.md) and prints its forwarder address on a line of its own (again
after each re-registration, when the connection to the hub drops); clients reach it with
``echo_client.py --route "1#HOST:PORT => <forwarder>"``.

Runs until SIGINT or SIGTERM, then finishes the messages in hand, closes its connections and
exits 0.
"""

import argparse
import sys

from loguru import logger

from _cli import add_common_options, add_secure_options, secure_options, start_logging
from greenockam import ConnectFailed, Node, Worker
from greenockam.faults import printable
from greenockam.hub import RegistrationFailed, RemoteForwarder
from greenockam.secure import SecureChannelListener, public_key
from greenockam.transport.tcp import TcpTransport, parse_host_port


class Responder(Worker):
    """Sends every message back to where it came from."""

    def __init__(self, log_each: bool) -> None:
        self.log_each = log_each

    def handle_message(self, ctx, msg):
        if self.log_each:  # as Rust's example prints each message; bounded per sending host
            ctx.node.faults.info(
                "echoed", str(msg.return_route[0]), "Responder: {}", printable(msg.body)
            )
        ctx.reply(msg, msg.body)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="greenockam echo server")
    parser.add_argument("address", nargs="?", default="127.0.0.1:10222", help="HOST:PORT to bind")
    parser.add_argument(
        "--connect",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="open a connection to HOST:PORT at start, so that messages can be forwarded to it "
        "(repeatable)",
    )
    parser.add_argument(
        "--hub",
        metavar="HOST:PORT",
        help="listen nowhere: be reachable through the forwarder of this hub instead",
    )
    parser.add_argument(
        "--worker",
        default="echo_service",
        metavar="NAME",
        help="the echo worker's address (default echo_service)",
    )
    add_common_options(parser)
    add_secure_options(parser)
    args = parser.parse_args(argv)
    try:
        for text in [args.address, *args.connect, *([args.hub] if args.hub else [])]:
            parse_host_port(text)
        identity, trust = secure_options(args)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1

    start_logging(args.log_level)

    node = Node(codec=args.codec)
    try:
        tcp = TcpTransport(node)
        for peer in args.connect:
            tcp.connect(peer)
        bound = tcp.listen(args.address) if not args.hub else None
        log_each = args.log_level != "OFF" and logger.level(args.log_level).no <= 20  # INFO
        node.start_worker(args.worker, Responder(log_each))
        SecureChannelListener(  # bounded: established ends too, and idle ones are closed
            node,
            identity=identity,
            trust=trust,
            local_only=True,
            max_channels=1024,
            idle_timeout=600.0,
        )
        if identity is not None:
            logger.info("secure channel public key {}", public_key(identity).hex())
        if args.hub:
            RemoteForwarder.create(
                node,
                args.hub,
                args.worker,
                on_registered=lambda info: print(info.remote_address, flush=True),
            )
        else:
            # A line the caller can wait for (the bound port matters when asked for port 0).
            print(f"{args.worker} listening on {bound}", flush=True)
        node.serve_forever()  # until SIGINT or SIGTERM
        logger.info("stopping")
    except (ConnectFailed, RegistrationFailed) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot listen on {args.address}: {exc}", file=sys.stderr)
        return 1
    finally:
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
