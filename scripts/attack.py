#!/usr/bin/env python3
"""Hostile load: does ``scripts/echo_server.py`` keep serving a legitimate client under attack?

    python scripts/attack.py [--seconds 20] [--measure 18] [--attackers 16] [--rate 30000]
                             [--log FILE] [--seed N] [target options, see --help]

Three processes besides this one, so that no two share an interpreter lock:

* the server, ``echo_server.py 127.0.0.1:0`` at its default log level (or
  ``--server-log-level``), its log (stderr) to a file;
* a legitimate client, a greenockam Node with one TCP connection, echoing one message at a time
  in a loop for ``--measure`` seconds in the middle of the attack, each with a ``--timeout``;
* an attacker: ``--attackers`` plain threads (``socket`` and ``threading``, no gevent) that keep
  opening connections to the server, writing a batch of frames (valid echo requests, frames for
  long unknown local addresses, for address type 9, for random ``1#127.0.0.1:<port>`` hops, with
  return routes holding random TCP hops, the TCP hops of connections the attacker has already
  closed and control characters; then, in half of the connections, random bytes, a mutated or a
  truncated frame), closing at once without reading a byte, about ``--rate`` frames a second.

Afterwards ``echo_client.py`` asks the server for one more echo over a new connection, the server
is stopped with SIGTERM and its log is read. Prints:

* the legitimate client's echoes, failures (timeouts and errors) and latency: p50 and p99 of the
  echoes that came back, and the longest wait of any request, one that failed included;
* the attack's frames by kind, their rate and the attacker's connections and errors (the rate is
  what the machine and the server's TCP backpressure allowed, at most ``--rate``);
* the server's log lines (all of them, written before and after the stop: a server that queued
  the attack logs its backlog as it stops) by level and source, the lines with a raw control
  character (a byte below 0x20 other than the line's end, or 0x7f) and the lines forged by a raw
  newline in an address;
* the server's RSS (``VmRSS`` of ``/proc/PID/status``) before the attack, at its peak (sampled
  every 0.1 s) and after the final echo; whether the server was alive and answered the final
  echo, and its exit code;

then a verdict line on the targets and a JSON line with every figure. Exits 0 if every target
holds, 1 if one does not, 2 if the test could not be run (the server would not start, a helper
process failed).

The default targets are those of the project's issue 15 for a 20 s attack: no failure, worst
latency at most 1 s, at least 5,000 echoes in the 18 s measured, at most 5,000 log lines, none
with a raw control character (nor forged by one), RSS growth (after minus before) at most
32 MiB, the server alive and serving afterwards. Each is an option.

``attack.py attacker ADDRESS ...`` and ``attack.py legit ADDRESS ...`` are the two helper
processes; they are started by the main command and not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from typing import Any, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ECHO_SERVER = os.path.join(HERE, "echo_server.py")
ECHO_CLIENT = os.path.join(HERE, "echo_client.py")
START_TIMEOUT = 30.0  # seconds for a helper process to start and say "ready"
# A raw control character in a log line: a C0 control other than the line's own end, or DEL.
CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]")
# The attacker puts a newline and then this before some addresses: a log line starting with it
# was forged by a raw newline.
FORGED = b"FORGED "
# The start of a line in loguru's default format: time | level | module (its first part)
LOG_HEADER = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \| (\w+) *\| (\w+)")

Addr = Tuple[int, str]  # (type, value) of one address


# --- the attacker's frames ----------------------------------------------------------------------
# Written from docs/protocol.md (sections 1-3) on purpose, not with greenockam.wire: the attacker
# needs no gevent, and it writes what greenockam itself would refuse to build.


def uint(value: int) -> bytes:
    """BARE uint: unsigned LEB128."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def route_bytes(route: Sequence[Addr]) -> bytes:
    out = uint(len(route))
    for kind, value in route:
        data = value.encode("utf-8")
        out += bytes([kind]) + uint(len(data)) + data
    return out


def frame(onward: Sequence[Addr], ret: Sequence[Addr], text: str) -> bytes:
    """A frame (length prefix and body, version 1) whose payload is ``text`` as a bare string."""
    data = text.encode("utf-8")
    payload = uint(len(data)) + data
    body = b"\x01" + route_bytes(onward) + route_bytes(ret) + uint(len(payload)) + payload
    return struct.pack(">H", len(body)) + body


ECHO: Addr = (0, "echo_service")
APP: Addr = (0, "app")


def tcp_hop(port: int) -> Addr:
    return (1, f"127.0.0.1:{port}")


def evil_name(rng: random.Random) -> str:
    """An address value with control characters: a forged log line, an escape sequence."""
    return rng.choice(
        [
            f"app\n{FORGED.decode()}| ERROR | greenockam: forged by an attacker {rng.random()}",
            f"\x1b[2J\x1b[31mred-{rng.randrange(1 << 30)}\x1b[0m",
            f"bell\x07nul\x00tab\tcr\r{rng.randrange(1 << 30)}\x7f",
        ]
    )


def long_name(rng: random.Random) -> str:
    """A long local address nobody has: 200 to 4,000 characters."""
    return "unknown-" + format(rng.getrandbits(4 * rng.randrange(200, 4000)), "x")


def closed_hop(rng: random.Random, closed: Sequence[int]) -> Addr:
    """The TCP hop of one of the connections the attacker has closed (a guess before any)."""
    return tcp_hop(rng.choice(closed) if closed else rng.randrange(32768, 61000))


# Kind -> a function of (rng, closed ports) giving one frame of that kind.
KINDS = {
    # answered into this connection, which is closed by then
    "echo": lambda r, c: frame([ECHO], [APP], "hostile echo"),
    # answered along a return route through a connection the attacker closed before
    "echo_via_closed_hop": lambda r, c: frame([ECHO], [closed_hop(r, c), APP], "gone hop"),
    # answered along a return route of random TCP hops and control characters
    "echo_odd_return": lambda r, c: frame(
        [ECHO],
        [tcp_hop(r.randrange(1, 65536)), (0, evil_name(r)), tcp_hop(r.randrange(1, 65536))],
        "odd return",
    ),
    "unknown_local": lambda r, c: frame([(0, long_name(r))], [APP], "to nobody"),
    "control_local": lambda r, c: frame([(0, evil_name(r))], [(0, evil_name(r))], "evil"),
    "type_9": lambda r, c: frame([(9, f"nine-{r.randrange(1 << 30)}"), ECHO], [APP], "nine"),
    "random_tcp_hop": lambda r, c: frame(
        [tcp_hop(r.randrange(1, 65536)), ECHO], [(0, evil_name(r))], "dial me"
    ),
}


WEIGHTS = {
    "echo": 30,
    "echo_via_closed_hop": 10,
    "echo_odd_return": 15,
    "unknown_local": 10,
    "control_local": 10,
    "type_9": 10,
    "random_tcp_hop": 15,
}
TAILS = ["random_bytes", "mutated_frame", "truncated_frame"]


class Attacker:
    """``threads`` threads opening connections and writing batches of frames until ``end``."""

    def __init__(self, address: tuple[str, int], threads: int, rate: float, seed: int) -> None:
        self.address = address
        self.threads = threads
        self.rate = rate
        self.seed = seed
        self.closed_ports: deque[int] = deque(maxlen=4096)  # appends and reads are thread-safe
        self.counts: list[Counter] = [Counter() for _ in range(threads)]
        self.errors: list[Counter] = [Counter() for _ in range(threads)]
        self.connections = [0] * threads
        self.waits = [0.0] * threads  # seconds each thread spent in connect and send

    def run(self, seconds: float) -> dict[str, Any]:
        start = time.monotonic()
        workers = [
            threading.Thread(target=self.attack, args=(i, start, start + seconds), daemon=True)
            for i in range(self.threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(seconds + 30)
        elapsed = time.monotonic() - start
        kinds: Counter = sum(self.counts, Counter())
        errors: Counter = sum(self.errors, Counter())
        frames = sum(kinds.values())
        return {
            "frames": frames,
            "seconds": round(elapsed, 3),
            "rate": round(frames / elapsed),
            "connections": sum(self.connections),
            "waiting": round(sum(self.waits) / (self.threads * elapsed), 3),
            "kinds": dict(sorted(kinds.items())),
            "errors": dict(sorted(errors.items())),
        }

    def attack(self, index: int, start: float, end: float) -> None:
        rng = random.Random(self.seed * 1000 + index)
        names, weights = list(WEIGHTS), list(WEIGHTS.values())
        counts, errors = self.counts[index], self.errors[index]
        share = self.rate / self.threads if self.rate > 0 else 0.0
        sent = 0
        while True:
            now = time.monotonic()
            if now >= end:
                return
            if share and sent > (now - start) * share:  # ahead of the rate: wait for it
                time.sleep(min(sent / share - (now - start), end - now))
                continue
            batch = rng.choices(names, weights, k=rng.randint(1, 40))
            parts = [KINDS[k](rng, self.closed_ports) for k in batch]
            if rng.random() < 0.5:
                tail = rng.choice(TAILS)
                batch.append(tail)
                parts.append(self.tail(rng, tail, parts[-1]))
            waited = time.monotonic()
            try:
                sock = socket.create_connection(self.address, timeout=2.0)
            except OSError as exc:
                errors["connect_" + type(exc).__name__] += 1
                self.waits[index] += time.monotonic() - waited
                continue
            try:
                port = sock.getsockname()[1]
                sock.sendall(b"".join(parts))
            except OSError as exc:
                errors["send_" + type(exc).__name__] += 1
                port = 0
            else:
                counts.update(batch)
                sent += len(batch)
            finally:
                sock.close()
            self.waits[index] += time.monotonic() - waited
            self.connections[index] += 1
            if port:
                self.closed_ports.append(port)

    @staticmethod
    def tail(rng: random.Random, kind: str, valid: bytes) -> bytes:
        """What ends a batch: bytes after which the server cannot read the stream on."""
        if kind == "random_bytes":
            size = rng.randrange(1, 300)
            return rng.getrandbits(8 * size).to_bytes(size, "little")
        if kind == "mutated_frame":
            mutated = bytearray(valid)
            for _ in range(rng.randint(1, 4)):
                mutated[rng.randrange(2, len(mutated))] = rng.randrange(256)
            return bytes(mutated)
        return valid[: rng.randrange(1, len(valid))]  # truncated_frame


def attacker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="attack.py attacker")
    parser.add_argument("address")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True)
    parser.add_argument("--seed", type=int, required=True)
    args = parser.parse_args(argv)
    host, _, port = args.address.rpartition(":")
    attacker = Attacker((host, int(port)), args.threads, args.rate, args.seed)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 2
    print(json.dumps(attacker.run(args.seconds)), flush=True)
    return 0


# --- the legitimate client ----------------------------------------------------------------------


def legit_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="attack.py legit")
    parser.add_argument("address")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    args = parser.parse_args(argv)

    import gevent

    from greenockam import GreenockamError, Node, ReceiveTimeout
    from greenockam.transport.tcp import TcpTransport

    route = [f"1#{args.address}", "echo_service"]
    latencies: list[float] = []  # of the echoes that came back
    failures: Counter = Counter()
    worst = 0.0  # the longest wait of any request, answered or not
    with Node() as node:
        TcpTransport(node, connect_timeout=args.timeout)

        def echo(seq: int) -> str | None:
            """One echo; None if it came back in time, else why not."""
            nonlocal worst
            body = f"legit {seq}"
            started = time.perf_counter()
            deadline = started + args.timeout
            try:
                node.send(route, body)
                while True:  # skip late replies to earlier requests that timed out
                    reply = node.receive(max(0.0, deadline - time.perf_counter()))
                    if reply.body == body:
                        latencies.append(time.perf_counter() - started)
                        return None
            except ReceiveTimeout:
                return "timeout"
            except GreenockamError as exc:
                gevent.sleep(min(0.1, max(0.0, deadline - time.perf_counter())))  # no busy loop
                return type(exc).__name__
            finally:
                worst = max(worst, time.perf_counter() - started)

        # One echo before the attack: the connection is up when it starts.
        if echo(0) is not None:
            print("error: the server did not answer before the attack", file=sys.stderr)
            return 2
        latencies.clear()
        worst = 0.0
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 2
        start = time.perf_counter()
        seq = 1
        while time.perf_counter() - start < args.seconds:
            failure = echo(seq)
            if failure is not None:
                failures[failure] += 1
            seq += 1
        elapsed = time.perf_counter() - start
    latencies.sort()
    result = {
        "echoes": len(latencies),
        "failures": sum(failures.values()),
        "failure_kinds": dict(failures),
        "seconds": round(elapsed, 3),
        "p50_ms": round(percentile(latencies, 50) * 1000, 3),
        "p99_ms": round(percentile(latencies, 99) * 1000, 3),
        "max_ms": round(worst * 1000, 3),
    }
    print(json.dumps(result), flush=True)
    return 0


def percentile(ordered: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile of a sorted sequence (0.0 if empty)."""
    if not ordered:
        return 0.0
    rank = max(1, -(-len(ordered) * p // 100))  # ceil(n * p / 100)
    return ordered[int(rank) - 1]


# --- the test, run from here --------------------------------------------------------------------


def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """The next line ``proc`` writes on stdout, waiting at most ``timeout`` seconds ('' if
    none came)."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                break
            chunk = os.read(fd, 1)  # one byte at a time: nothing after the line is consumed
            if not chunk:
                break
            data += chunk
    return data.decode("utf-8", "replace").strip()


def end_process(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int | None:
    """SIGTERM if still running, SIGKILL after ``timeout``; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            pipe.close()
    return proc.returncode


def helper(env: dict[str, str], role: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), role, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )


def await_ready(proc: subprocess.Popen[bytes], what: str) -> None:
    line = read_line(proc, START_TIMEOUT)
    if line != "ready":
        raise RuntimeError(f"the {what} did not start (it said {line!r})")


def go(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    proc.stdin.flush()


def result_of(proc: subprocess.Popen[bytes], what: str, timeout: float) -> dict[str, Any]:
    line = read_line(proc, timeout)
    try:
        result: dict[str, Any] = json.loads(line)
    except ValueError:
        raise RuntimeError(f"the {what} gave no result (it said {line!r})") from None
    return result


def scan_log(path: str) -> dict[str, Any]:
    """The log's lines: how many, how many with a raw control character, how many forged by a
    raw newline, and how many of each level and source (``"WARNING greenockam"``: lines of
    loguru's default format; ``"other"``: the rest, traceback lines mostly)."""
    lines = control = forged = 0
    kinds: Counter = Counter()
    with open(path, "rb") as log:
        for line in log:
            lines += 1
            if CONTROL.search(line.rstrip(b"\n")):
                control += 1
            if line.startswith(FORGED):
                forged += 1
            header = LOG_HEADER.match(line)
            kinds[b"%s %s" % header.groups() if header else b"other"] += 1
    return {
        "lines": lines,
        "control": control,
        "forged": forged,
        "kinds": {k.decode("ascii", "replace"): n for k, n in sorted(kinds.items())},
    }


def final_echo(env: dict[str, str], address: str, timeout: float) -> bool:
    """One echo over a new connection, by ``echo_client.py``."""
    try:
        done = subprocess.run(
            [sys.executable, ECHO_CLIENT, address, "--timeout", str(timeout)]
            + ["--log-level", "ERROR", "--message", "after the attack"],
            capture_output=True,
            env=env,
            timeout=timeout + START_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0 and done.stdout.strip() == b"after the attack"


def verdict(figures: dict[str, Any], args: argparse.Namespace) -> list[tuple[str, bool]]:
    """Each target of issue 15 as (what was measured against what, whether it holds)."""
    growth_mib = figures["rss_growth_kib"] / 1024
    return [
        (f"failures {figures['failures']} <= {args.max_failures}",
         figures["failures"] <= args.max_failures),
        (f"worst latency {figures['max_ms'] / 1000:.3f} s <= {args.max_latency:g} s",
         figures["max_ms"] <= args.max_latency * 1000),
        (f"echoes {figures['echoes']:,} >= {args.min_echoes:,}",
         figures["echoes"] >= args.min_echoes),
        (f"log lines {figures['log_lines']:,} <= {args.max_log_lines:,}",
         figures["log_lines"] <= args.max_log_lines),
        ((f"raw control lines {figures['log_control_lines'] + figures['log_forged_lines']:,}"
         f" <= {args.max_control_lines:,}"),
         figures["log_control_lines"] + figures["log_forged_lines"] <= args.max_control_lines),
        (f"RSS growth {growth_mib:.1f} MiB <= {args.max_rss_growth:g} MiB",
         growth_mib <= args.max_rss_growth),
        (("server alive and serving afterwards" if figures["final_echo"]
          else "server alive but no final echo") if figures["server_alive"]
         else "server DEAD after the attack",
         figures["server_alive"] and figures["final_echo"]),
    ]  # fmt: skip


def run(args: argparse.Namespace, log_path: str) -> dict[str, Any]:
    from soak import greenockam_env, rss_kb

    env = greenockam_env()  # the helpers run the greenockam this process would

    with open(log_path, "wb") as log:  # the server's stderr: its log
        server = subprocess.Popen(
            [sys.executable, ECHO_SERVER, "127.0.0.1:0"]
            + (["--log-level", args.server_log_level] if args.server_log_level else []),
            stdout=subprocess.PIPE,
            stderr=log,
            env=env,
        )
    helpers: list[subprocess.Popen[bytes]] = []
    try:
        line = read_line(server, START_TIMEOUT)
        if "listening on" not in line:
            with open(log_path, "rb") as log:
                tail = log.read()[-2000:].decode("utf-8", "replace")
            raise RuntimeError(f"echo_server.py did not start (it said {line!r}); log:\n{tail}")
        address = line.split()[-1]
        lead = max(0.0, (args.seconds - args.measure) / 2)
        print(
            f"hostile load: {args.attackers} attacker threads for {args.seconds:g} s (about "
            f"{args.rate:,.0f} frames/s, seed {args.seed}) against echo_server.py pid "
            f"{server.pid} on {address}, log level {args.server_log_level or 'default'}, log in "
            f"{log_path}; the legitimate client echoes for {args.measure:g} s from {lead:g} s in",
            flush=True,
        )
        legit = helper(
            env, "legit", address, "--seconds", str(args.measure), "--timeout", str(args.timeout)
        )
        helpers.append(legit)
        attacker = helper(
            env, "attacker", address, "--seconds", str(args.seconds), "--threads",
            str(args.attackers), "--rate", str(args.rate), "--seed", str(args.seed),
        )  # fmt: skip
        helpers.append(attacker)
        await_ready(legit, "legitimate client")
        await_ready(attacker, "attacker")

        rss_before = rss_kb(server.pid) or 0
        rss_peak = rss_before
        go(attacker)
        started = time.monotonic()
        legit_started = False
        while attacker.poll() is None and time.monotonic() - started < args.seconds + 30:
            if not legit_started and time.monotonic() - started >= lead:
                go(legit)
                legit_started = True
            rss_peak = max(rss_peak, rss_kb(server.pid) or 0)
            if time.monotonic() - started >= args.seconds:  # the attacker is finishing
                break
            time.sleep(0.1)
        if not legit_started:
            go(legit)
        attack = result_of(attacker, "attacker", 60)
        client = result_of(legit, "legitimate client", args.measure + args.timeout + 30)
        alive = server.poll() is None
        served = alive and final_echo(env, address, args.final_timeout)
        rss_after = rss_kb(server.pid) or 0
        rss_peak = max(rss_peak, rss_after)
        lines_before_stop = scan_log(log_path)["lines"]
    finally:
        for proc in helpers:
            end_process(proc)
        server_exit = end_process(server, 30)
    scan = scan_log(log_path)
    return {
        **{k: client[k] for k in ("echoes", "failures", "p50_ms", "p99_ms", "max_ms")},
        "failure_kinds": client["failure_kinds"],
        "measured_seconds": client["seconds"],
        "attack_frames": attack["frames"],
        "attack_rate": attack["rate"],
        "attack_seconds": attack["seconds"],
        "attack_connections": attack["connections"],
        "attack_waiting": attack["waiting"],
        "attack_kinds": attack["kinds"],
        "attack_errors": attack["errors"],
        "log_lines": scan["lines"],
        "log_lines_before_stop": lines_before_stop,
        "log_control_lines": scan["control"],
        "log_forged_lines": scan["forged"],
        "log_kinds": scan["kinds"],
        "rss_before_kib": rss_before,
        "rss_peak_kib": rss_peak,
        "rss_after_kib": rss_after,
        "rss_growth_kib": rss_after - rss_before,
        "server_alive": alive,
        "final_echo": served,
        "server_exit": server_exit,
    }


def report(f: dict[str, Any]) -> None:
    failures = ", ".join(f"{n} {k}" for k, n in f["failure_kinds"].items())
    print(
        f"legitimate client: {f['echoes']:,} echoes in {f['measured_seconds']:g} s, "
        f"{f['failures']:,} failures{f' ({failures})' if failures else ''}, latency "
        + (f"p50 {f['p50_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms, " if f["echoes"] else "")
        + f"max {f['max_ms']:.2f} ms"
    )
    errors = ", ".join(f"{k} {n:,}" for k, n in f["attack_errors"].items()) or "none"
    print(
        f"attacker: {f['attack_frames']:,} frames in {f['attack_seconds']:g} s "
        f"({f['attack_rate']:,} frames/s) over {f['attack_connections']:,} connections, "
        f"{f['attack_waiting']:.0%} of the threads' time in connect and send; errors: {errors}"
    )
    print("  frames: " + ", ".join(f"{k} {n:,}" for k, n in f["attack_kinds"].items()))
    print(
        f"server log: {f['log_lines']:,} lines ({f['log_lines_before_stop']:,} before it was "
        f"stopped), {f['log_control_lines']:,} with a raw control character, "
        f"{f['log_forged_lines']:,} forged by a raw newline"
    )
    print("  lines: " + ", ".join(f"{k} {n:,}" for k, n in f["log_kinds"].items()))
    print(
        f"server RSS: before {f['rss_before_kib']:,} KiB, peak {f['rss_peak_kib']:,} KiB, "
        f"after {f['rss_after_kib']:,} KiB ({f['rss_growth_kib'] / 1024:+.1f} MiB)"
    )
    print(
        f"server: {'alive' if f['server_alive'] else 'DEAD'} after the attack, final echo "
        f"{'ok' if f['final_echo'] else 'FAILED'}, exit code {f['server_exit']} after SIGTERM"
    )


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["attacker"]:
        return attacker_main(argv[1:])
    if argv[:1] == ["legit"]:
        return legit_main(argv[1:])
    parser = argparse.ArgumentParser(
        description="greenockam hostile load test (issue 15)",
        epilog="attack.py attacker|legit ADDRESS ...: the helper processes (not for use by hand)",
    )
    Option = Tuple[str, Any, Any, str, str]  # name, type, default, metavar, help
    options: list[Option] = [
        ("--seconds", float, 20.0, "SECONDS", "length of the attack"),
        ("--measure", float, None, "SECONDS", ("seconds the legitimate client echoes, in the "
         "middle of the attack (default: 90%% of --seconds)")),
        ("--attackers", int, 16, "N", "attacker threads"),
        ("--rate", float, 30_000.0, "FRAMES", ("attack frames per second, all threads together; "
         "0: as fast as they can")),
        ("--timeout", float, 5.0, "SECONDS", "seconds the legitimate client waits for an echo"),
        ("--final-timeout", float, 5.0, "SECONDS", "seconds the final echo may take"),
        ("--seed", int, None, "N", "seed of the attacker's choices (default: random)"),
        ("--log", str, None, "FILE", ("keep the server's log in this file (default: a "
         "temporary file, removed)")),
        ("--server-log-level", str.upper, None, "LEVEL", ("the server's --log-level, OFF for "
         "none (default: the server's default, as issue 15's targets assume)")),
    ]  # fmt: skip
    targets: list[Option] = [
        ("--max-failures", int, 0, "N", "legitimate echoes that may fail"),
        ("--max-latency", float, 1.0, "SECONDS", "worst wait of a legitimate request"),
        ("--min-echoes", int, 5_000, "N", "legitimate echoes in the --measure seconds"),
        ("--max-log-lines", int, 5_000, "N", "lines in the server's log"),
        ("--max-control-lines", int, 0, "N", ("log lines with a raw control character or "
         "forged by one")),
        ("--max-rss-growth", float, 32.0, "MIB", "server RSS after the attack minus before"),
    ]  # fmt: skip
    group = parser.add_argument_group("targets (issue 15)")
    for add, table in [(parser.add_argument, options), (group.add_argument, targets)]:
        for name, kind, default, metavar, text in table:
            if default is not None:
                text += " (default %(default)s)"
            add(name, type=kind, default=default, metavar=metavar, help=text)
    args = parser.parse_args(argv)
    if args.measure is None:
        args.measure = args.seconds * 0.9
    if args.seconds <= 0 or not 0 < args.measure <= args.seconds or args.attackers < 1:
        parser.error("need --seconds > 0, 0 < --measure <= --seconds and --attackers >= 1")
    if args.seed is None:
        args.seed = random.randrange(1 << 31)

    log_dir = None
    if args.log is None:
        log_dir = tempfile.mkdtemp(prefix="greenockam-attack-")
        log_path = os.path.join(log_dir, "server.log")
    else:
        log_path = args.log
    try:
        figures = run(args, log_path)
    except (OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if log_dir is not None:
            if os.path.exists(log_path):
                os.remove(log_path)
            os.rmdir(log_dir)
    report(figures)
    checks = verdict(figures, args)
    ok = all(holds for _, holds in checks)
    print(
        f"VERDICT: {'PASS' if ok else 'FAIL'}: "
        + "; ".join(f"{what} {'ok' if holds else 'FAILED'}" for what, holds in checks)
    )
    print(json.dumps({**figures, "verdict": "PASS" if ok else "FAIL"}), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
