#!/usr/bin/env python3
"""Soak test: a million echoed messages against ``scripts/echo_server.py`` in a subprocess.

    python scripts/soak.py [--messages N] [--connections C] [--window W] [--timeout SECONDS]

Each connection is a client Node of its own (with its own TcpTransport) in this process, keeping
``W`` messages in flight (a sliding window). Every message carries ``<connection>:<sequence>``;
every reply is checked: none lost, none duplicated, none out of order, none from another
connection. The server's resident memory (``VmRSS`` in ``/proc/PID/status``) is sampled at the
start and every 100,000 messages, and the samples after a warm-up are checked for growth.

Prints the samples, a memory verdict, the totals, the elapsed time and the rate. Exits 0 if every
message came back exactly once and in order, 1 otherwise (2 if the server would not start).
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

import gevent
from gevent.event import Event

import greenockam
from greenockam import Node, ReceiveTimeout
from greenockam.transport.tcp import TcpTransport

HERE = os.path.dirname(os.path.abspath(__file__))
ECHO_SERVER = os.path.join(HERE, "echo_server.py")
SAMPLE_EVERY = 100_000
WARM_UP_SAMPLES = 2  # samples taken before this many * SAMPLE_EVERY messages are warm-up
FLAT_SLACK_KB = 4096  # growth after warm-up up to max(this, 5 %) still counts as flat


def rss_kb(pid: int) -> Optional[int]:
    """VmRSS of ``pid`` in KiB, or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class Soak:
    def __init__(self, address: str, messages: int, connections: int, window: int, timeout: float):
        self.address = address
        self.window = window
        self.timeout = timeout
        share, extra = divmod(messages, connections)
        self.counts = [share + (i < extra) for i in range(connections)]
        # seen[c][seq]: how many times the reply to message seq of connection c came back
        self.seen = [bytearray(n) for n in self.counts]
        self.out_of_order = 0
        self.foreign = 0  # replies that do not belong to the connection they came on
        self.sent = 0
        self.received = 0
        self.next_sample = SAMPLE_EVERY
        self.sample_due = Event()
        self.failures: List[str] = []

    def run_connection(self, c: int) -> None:
        count, seen = self.counts[c], self.seen[c]
        route = [f"1#{self.address}", "echo_service"]
        prefix = f"{c}:"
        node = Node()
        try:
            TcpTransport(node, connect_timeout=self.timeout)
            sent = 0
            expected = 0
            while sent < min(self.window, count):
                node.send(route, f"{c}:{sent}")
                sent += 1
                self.sent += 1
            while expected < count:
                try:
                    replies = [node.receive(self.timeout)]
                except ReceiveTimeout:
                    self.failures.append(
                        f"connection {c}: no reply within {self.timeout} s "
                        f"after {expected} of {count}"
                    )
                    return
                while True:
                    try:
                        replies.append(node.receive_nowait())
                    except ReceiveTimeout:
                        break
                for reply in replies:
                    body = reply.body
                    if not body.startswith(prefix):
                        self.foreign += 1
                        continue
                    seq = int(body[len(prefix) :])
                    if seq != expected:
                        self.out_of_order += 1
                    if 0 <= seq < count:
                        seen[seq] = min(seen[seq] + 1, 255)
                    expected += 1
                self.received += len(replies)
                if self.received >= self.next_sample:
                    self.sample_due.set()
                for _ in range(len(replies)):
                    if sent == count:
                        break
                    node.send(route, f"{c}:{sent}")
                    sent += 1
                    self.sent += 1
        except Exception as exc:  # report, don't hide: any error is a failed soak
            self.failures.append(f"connection {c}: {type(exc).__name__}: {exc}")
        finally:
            node.stop(timeout=2.0)

    def verdict(self):
        lost = sum(row.count(0) for row in self.seen)
        duplicated = sum(len(row) - row.count(0) - row.count(1) for row in self.seen)
        return lost, duplicated


def greenockam_env() -> Dict[str, str]:
    """This process's environment, with the greenockam it imported first on ``PYTHONPATH``: for
    a subprocess that must run the same greenockam."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(greenockam.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def start_server() -> Tuple["subprocess.Popen[str]", str]:
    proc = subprocess.Popen(
        [sys.executable, ECHO_SERVER, "127.0.0.1:0", "--log-level", "WARNING"],
        stdout=subprocess.PIPE,
        universal_newlines=True,
        env=greenockam_env(),
    )
    assert proc.stdout is not None  # stdout=PIPE
    line = proc.stdout.readline()  # "echo_service listening on HOST:PORT"
    if "listening on" not in line:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"echo_server.py did not start: {line!r}")
    return proc, line.split()[-1]


def memory_verdict(samples: List[tuple]) -> str:
    after = [kb for n, kb in samples if n >= WARM_UP_SAMPLES * SAMPLE_EVERY and kb is not None]
    if len(after) < 2:
        return "not enough samples after warm-up to judge (run more messages)"
    low, high = min(after), max(after)
    growth = after[-1] - after[0]
    slack = max(FLAT_SLACK_KB, after[0] // 20)
    flat = high - low <= slack
    return (
        f"{'FLAT' if flat else 'GROWING'} after warm-up: {len(after)} samples from "
        f"{WARM_UP_SAMPLES * SAMPLE_EVERY:,} messages, min {low:,} KiB, max {high:,} KiB, "
        f"first-to-last {growth:+,} KiB (slack {slack:,} KiB)"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="greenockam echo soak test")
    parser.add_argument("--messages", type=int, default=1_000_000, help="total messages")
    parser.add_argument("--connections", type=int, default=4, help="client connections")
    parser.add_argument("--window", type=int, default=256, help="messages in flight per connection")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a reply")
    args = parser.parse_args(argv)
    if args.messages < 1 or args.connections < 1 or args.window < 1:
        parser.error("--messages, --connections and --window must be at least 1")

    try:
        proc, address = start_server()
    except (OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"soak: {args.messages:,} messages over {args.connections} connections "
        f"(window {args.window}) to echo_server.py pid {proc.pid} on {address}",
        flush=True,
    )
    soak = Soak(address, args.messages, args.connections, args.window, args.timeout)
    samples = [(0, rss_kb(proc.pid))]
    print(f"  server RSS at {0:>9,} messages: {samples[0][1]:,} KiB", flush=True)
    start = time.perf_counter()
    greenlets = [gevent.spawn(soak.run_connection, c) for c in range(args.connections)]
    try:
        while not all(g.dead for g in greenlets):
            soak.sample_due.clear()
            if soak.received < soak.next_sample:
                running = [g for g in greenlets if not g.dead]
                gevent.wait([soak.sample_due] + running, count=1)
            while soak.received >= soak.next_sample:
                n, kb = soak.next_sample, rss_kb(proc.pid)
                samples.append((n, kb))
                rate = soak.received / (time.perf_counter() - start)
                print(
                    f"  server RSS at {n:>9,} messages: {kb:,} KiB  ({rate:,.0f} msg/s so far)",
                    flush=True,
                )
                soak.next_sample += SAMPLE_EVERY
    finally:
        gevent.killall(greenlets, timeout=5)
        elapsed = time.perf_counter() - start
        proc.send_signal(signal.SIGTERM)
        try:
            server_exit = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            server_exit = proc.wait()
        assert proc.stdout is not None  # stdout=PIPE
        proc.stdout.close()

    lost, duplicated = soak.verdict()
    print(f"memory: {memory_verdict(samples)}")
    print(
        f"totals: asked {args.messages:,}, sent {soak.sent:,}, received {soak.received:,}, "
        f"lost {lost:,}, duplicated {duplicated:,}, out of order {soak.out_of_order:,}, "
        f"from another connection {soak.foreign:,}"
    )
    print(f"time: {elapsed:.2f} s, {soak.received / elapsed:,.0f} messages/s (round trips)")
    print(f"server exit code after SIGTERM: {server_exit}")
    for failure in soak.failures:
        print(f"failure: {failure}")
    ok = not (lost or duplicated or soak.out_of_order or soak.foreign or soak.failures)
    print("RESULT: PASS" if ok else "RESULT: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
