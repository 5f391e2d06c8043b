#!/usr/bin/env python3
"""greenockam against raw gevent, measured side by side in one run.

    python scripts/bench.py [--quick] [--reps R] [--cpus SERVER,CLIENT] [--target KEY=VALUE]

For every figure a raw gevent baseline and greenockam do the same work, interleaved (raw,
greenockam, raw, greenockam, ...), ``R`` times; the table shows each figure's median and the
ratio greenockam / raw. The figures (PERFORMANCE-NOTES.md explains why they are taken this way):

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
5. ``codec``: in-process timeit of greenockam's frame codec (encode, decode, both).

The raw baseline is a gevent ``StreamServer`` echo and gevent sockets with the same framing (u16
big-endian length, then a body of exactly the size of greenockam's body for the same message).
Its server sends each echo frame with its own ``send``; its pipelined client writes one frame per
``send``. The greenockam server is ``scripts/echo_server.py 127.0.0.1:0 --log-level WARNING``; the
greenockam client is a ``Node`` + ``TcpTransport`` per connection using ``node.send`` and
``node.receive``. In the ``idle`` figure both servers are driven by the same raw-socket client
(it only has to open connections and do one valid round trip on each).

Every server and client is a separate process pinned with ``os.sched_setaffinity`` (``--cpus``,
server CPU then client CPU, default ``0,0``). This process only starts them and waits. The other
roles (``--role raw-server``, ``--role client``, ``--role codec``) are this same file run again,
and can be run by hand, e.g. against a server under a profiler.

The last line printed is one JSON object. The exit status is 0 even when a target is missed (the
table says MISSED): this is a measurement, not a test. A hang or a crash of any process ends the
run with an error and exit status 1; every process started here is killed on the way out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ECHO_SERVER = os.path.join(HERE, "echo_server.py")
THIS = os.path.abspath(__file__)

MESSAGE = "0123456789abcdef0123456789abcdef"  # 32 characters: the payload of every message
assert len(MESSAGE) == 32

# Targets shown in the table. Direction is taken from DIRECTIONS (higher or lower is better).
# Override or add any with --target KEY=VALUE (keys as in the JSON line).
TARGETS: Dict[str, float] = {  # greenockam's published targets (README, Performance)
    "rtt_ratio": 0.75,  # round trips through node + worker + TCP: at least 0.75x raw gevent
    "pipelined_ratio": 0.80,  # pipelined: at least 0.80x raw gevent's one write per frame
    "conns_ratio": 0.75,  # 100 concurrent connections: at least 0.75x raw gevent
    "codec_roundtrip_ns": 1300.0,  # encode + decode of one echo reply frame: at most 1.3 µs
    "bytes_per_idle_conn": 20480.0,  # 10,000 idle connections: at most 20 KiB each
}

SIZES = {
    # figure: (full, quick)
    "rtt_n": (20000, 5000),
    "rtt_warm": (2000, 500),
    "pipelined_n": (200000, 50000),
    "conns": (100, 100),
    "per_conn": (500, 100),
    "idle_n": (10000, 10000),
    "idle_warm": (100, 100),
    "codec_number": (200000, 50000),
    "reps": (3, 1),
}


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def greenockam_frames(addr: str = "127.0.0.1:10222") -> Tuple[bytes, bytes]:
    """The request frame a greenockam client writes for MESSAGE, and the reply frame the echo
    server writes back (PROTOCOL.md section 4, worked trace steps 2 and 5)."""
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


def percentile(sorted_values: List[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[i]


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_marks(server_pid: int) -> Tuple[float, float]:
    """CPU seconds (user + system) used so far by the server process and by this process.

    The server's comes from /proc/<pid>/stat (clock ticks, 10 ms); 0.0 if ``server_pid`` is 0.
    """
    server = 0.0
    if server_pid:
        with open(f"/proc/{server_pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        server = (int(fields[11]) + int(fields[12])) / _TICK
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return server, usage.ru_utime + usage.ru_stime


def cpu_per_msg(start: Tuple[float, float], end: Tuple[float, float], n: int) -> Dict[str, float]:
    return {
        "server_cpu_us": (end[0] - start[0]) / n * 1e6,
        "client_cpu_us": (end[1] - start[1]) / n * 1e6,
    }


def emit(obj: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------
# Role: raw gevent echo server
# --------------------------------------------------------------------------------------------


def run_raw_server(address: str) -> int:
    import socket

    from gevent.server import StreamServer

    raise_nofile()
    host, _, port = address.rpartition(":")

    def handle(sock: Any, _addr: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        recv = sock.recv
        send = sock.send
        rest = b""
        try:
            while True:
                data = recv(65536)
                if not data:
                    break
                if rest:
                    data = rest + data
                n = len(data)
                pos = 0
                while n - pos >= 2:
                    end = pos + 2 + ((data[pos] << 8) | data[pos + 1])
                    if end > n:
                        break
                    frame = data[pos:end]
                    # One write per frame; send() first: sendall() costs an extra getsockopt.
                    sent = send(frame)
                    if sent < len(frame):
                        sock.sendall(frame[sent:])
                    pos = end
                rest = data[pos:]
        except OSError:
            pass
        finally:
            sock.close()

    server = StreamServer((host or "127.0.0.1", int(port)), handle, backlog=1024)
    server.start()
    bound = server.socket.getsockname()
    print(f"raw_echo listening on {bound[0]}:{bound[1]}", flush=True)
    server.serve_forever()
    return 0


# --------------------------------------------------------------------------------------------
# Role: client (raw or greenockam), one phase per process
# --------------------------------------------------------------------------------------------


class RawFrameReader:
    """Reads whole length-prefixed frames from a gevent socket."""

    __slots__ = ("recv", "buf")

    def __init__(self, sock: Any) -> None:
        self.recv = sock.recv
        self.buf = bytearray()

    def read_frame(self) -> bytes:
        buf = self.buf
        while True:
            if len(buf) >= 2:
                end = 2 + ((buf[0] << 8) | buf[1])
                if len(buf) >= end:
                    frame = bytes(buf[:end])
                    del buf[:end]
                    return frame
            data = self.recv(65536)
            if not data:
                raise EOFError("connection closed by the server")
            buf += data


def raw_connect(addr: str, timeout: float) -> Any:
    import socket

    import gevent.socket

    host, _, port = addr.rpartition(":")
    sock = gevent.socket.create_connection((host, int(port)), timeout)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def raw_send(sock: Any, frame: bytes) -> None:
    sent = sock.send(frame)
    if sent < len(frame):
        sock.sendall(frame[sent:])


def client_rtt(
    impl: str, addr: str, n: int, warm: int, timeout: float, server_pid: int
) -> Dict[str, Any]:
    pc = time.perf_counter_ns
    lat = [0] * n
    if impl == "raw":
        request, reply = greenockam_frames(addr)
        sock = raw_connect(addr, timeout)
        reader = RawFrameReader(sock)
        read = reader.read_frame
        send = sock.send
        size = len(request)
        for _ in range(warm):
            raw_send(sock, request)
            read()
        cpu0 = cpu_marks(server_pid)
        start = pc()
        for i in range(n):
            t0 = pc()
            if send(request) < size:
                raise RuntimeError("short send")
            frame = read()
            lat[i] = pc() - t0
        total = pc() - start
        cpu1 = cpu_marks(server_pid)
        last_ok = frame in (request, reply)  # raw server: the request; greenockam: its reply
        sock.close()
    else:
        from greenockam import Node
        from greenockam.transport.tcp import TcpTransport

        node = Node()
        TcpTransport(node, connect_timeout=timeout)
        route = [f"1#{addr}", "echo_service"]
        send = node.send
        receive = node.receive
        for _ in range(warm):
            send(route, MESSAGE)
            receive(timeout=timeout)
        cpu0 = cpu_marks(server_pid)
        start = pc()
        for i in range(n):
            t0 = pc()
            send(route, MESSAGE)
            reply = receive(timeout=timeout)
            lat[i] = pc() - t0
        total = pc() - start
        cpu1 = cpu_marks(server_pid)
        last_ok = reply.body == MESSAGE
        node.stop(1)
    lat.sort()
    return {
        "per_s": n / (total / 1e9),
        "p50_us": percentile(lat, 0.50) / 1000,
        "p99_us": percentile(lat, 0.99) / 1000,
        "n": n,
        "ok": last_ok,
        **cpu_per_msg(cpu0, cpu1, n),
    }


def client_pipelined(
    impl: str, addr: str, n: int, timeout: float, server_pid: int
) -> Dict[str, Any]:
    import gevent

    pc = time.perf_counter_ns
    if impl == "raw":
        request, _ = greenockam_frames(addr)
        sock = raw_connect(addr, timeout)
        reader = RawFrameReader(sock)
        for _ in range(100):  # warm the path
            raw_send(sock, request)
            reader.read_frame()
        size = len(request)

        def sender() -> None:
            send = sock.send
            for _ in range(n):  # one write per frame
                sent = send(request)
                if sent < size:
                    sock.sendall(request[sent:])

        def read_all() -> int:
            recv = sock.recv
            got = 0
            rest = b""
            last = b""
            while got < n:
                data = recv(65536)
                if not data:
                    raise EOFError("connection closed by the server")
                if rest:
                    data = rest + data
                end_data = len(data)
                pos = 0
                while end_data - pos >= 2:
                    end = pos + 2 + ((data[pos] << 8) | data[pos + 1])
                    if end > end_data:
                        break
                    last = data[pos + 2 : end]
                    got += 1
                    pos = end
                rest = data[pos:]
            return len(last) == size - 2

        cpu0 = cpu_marks(server_pid)
        start = pc()
        g = gevent.spawn(sender)
        ok = read_all()
        g.get()
        total = pc() - start
        cpu1 = cpu_marks(server_pid)
        sock.close()
    else:
        from greenockam import Node
        from greenockam.transport.tcp import TcpTransport

        node = Node()
        TcpTransport(node, connect_timeout=timeout)
        route = [f"1#{addr}", "echo_service"]
        for _ in range(100):  # open the connection and warm the path
            node.send(route, MESSAGE)
            node.receive(timeout=timeout)

        def sender() -> None:
            send = node.send
            for _ in range(n):
                send(route, MESSAGE)

        receive = node.receive
        cpu0 = cpu_marks(server_pid)
        start = pc()
        g = gevent.spawn(sender)
        for _ in range(n):
            reply = receive(timeout=timeout)
        g.get()
        total = pc() - start
        cpu1 = cpu_marks(server_pid)
        ok = reply.body == MESSAGE
        node.stop(1)
    return {"per_s": n / (total / 1e9), "n": n, "ok": ok, **cpu_per_msg(cpu0, cpu1, n)}


def client_conns(
    impl: str, addr: str, conns: int, per_conn: int, timeout: float, server_pid: int
) -> Dict[str, Any]:
    import gevent
    from gevent.event import Event

    pc = time.perf_counter_ns
    go = Event()
    ready: List[int] = []
    start = [0]
    cpu0 = [(0.0, 0.0)]

    def arrive() -> None:
        # The last connection to be ready starts the clock and releases everyone.
        ready.append(1)
        if len(ready) == conns:
            cpu0[0] = cpu_marks(server_pid)
            start[0] = pc()
            go.set()
        go.wait()
    if impl == "raw":
        request, _ = greenockam_frames(addr)

        def one() -> bool:
            sock = raw_connect(addr, timeout)
            reader = RawFrameReader(sock)
            read = reader.read_frame
            raw_send(sock, request)
            read()
            arrive()
            send = sock.send
            size = len(request)
            for _ in range(per_conn):
                if send(request) < size:
                    raise RuntimeError("short send")
                frame = read()
            sock.close()
            return len(frame) == size

    else:
        from greenockam import Node
        from greenockam.transport.tcp import TcpTransport

        def one() -> bool:
            node = Node()
            TcpTransport(node, connect_timeout=timeout)
            route = [f"1#{addr}", "echo_service"]
            send = node.send
            receive = node.receive
            send(route, MESSAGE)
            receive(timeout=timeout)
            arrive()
            for _ in range(per_conn):
                send(route, MESSAGE)
                reply = receive(timeout=timeout)
            node.stop(1)
            return reply.body == MESSAGE

    greenlets = [gevent.spawn(one) for _ in range(conns)]
    gevent.joinall(greenlets, raise_error=True)
    total = pc() - start[0]
    cpu1 = cpu_marks(server_pid)
    ok = all(g.value for g in greenlets)
    n = conns * per_conn
    return {"per_s": n / (total / 1e9), "n": n, "ok": ok, **cpu_per_msg(cpu0[0], cpu1, n)}


def client_idle(addr: str, n: int, warm: int, timeout: float) -> Dict[str, Any]:
    """Open ``warm`` connections, say so and wait for "go"; open ``n`` more, one round trip on
    each (so the server has accepted and served every one), say so and wait for "done"."""
    import gevent
    from gevent.pool import Pool

    request, _ = greenockam_frames(addr)
    socks: List[Any] = []

    def one() -> None:
        sock = raw_connect(addr, timeout)
        raw_send(sock, request)
        frame = RawFrameReader(sock).read_frame()
        if len(frame) != len(request):
            raise RuntimeError(f"bad echo of {len(frame)} bytes")
        socks.append(sock)

    def open_many(count: int) -> float:
        t0 = time.perf_counter()
        pool = Pool(500)  # at most 500 connects in flight: stay under the listen backlog
        greenlets = [pool.spawn(one) for _ in range(count)]
        gevent.joinall(greenlets, raise_error=True)
        return time.perf_counter() - t0

    open_many(warm)
    print(f"warm {len(socks)}", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise RuntimeError("expected 'go' on stdin")
    seconds = open_many(n)
    print(f"connected {len(socks)} {seconds:.3f}", flush=True)
    if sys.stdin.readline().strip() != "done":
        raise RuntimeError("expected 'done' on stdin")
    for sock in socks:
        sock.close()
    return {"n": n, "connect_seconds": seconds, "ok": len(socks) == n + warm}


def run_client(args: argparse.Namespace) -> int:
    import gevent

    raise_nofile()
    timeout = args.timeout
    with gevent.Timeout(timeout, RuntimeError(f"client phase {args.phase} took over {timeout} s")):
        if args.phase == "rtt":
            result = client_rtt(args.impl, args.addr, args.n, args.warm, timeout, args.server_pid)
        elif args.phase == "pipelined":
            result = client_pipelined(args.impl, args.addr, args.n, timeout, args.server_pid)
        elif args.phase == "conns":
            result = client_conns(
                args.impl, args.addr, args.conns, args.per_conn, timeout, args.server_pid
            )
        elif args.phase == "idle":
            result = client_idle(args.addr, args.n, args.warm, timeout)
        else:
            raise SystemExit(f"unknown phase {args.phase}")
    if not result.get("ok"):
        print(f"error: phase {args.phase} ({args.impl}) got a wrong echo", file=sys.stderr)
        return 1
    emit(result)
    return 0


# --------------------------------------------------------------------------------------------
# Role: codec micro-benchmark (in-process timeit)
# --------------------------------------------------------------------------------------------


def run_codec(number: int) -> int:
    import timeit

    from greenockam import BARE, FrameDecoder, Route, TransportMessage, encode_frame
    from greenockam.address import as_route

    payload = BARE.encode(MESSAGE)
    # The echo reply as the server's transport encodes it: onward [1#client, app] popped.
    reply_popped = TransportMessage(
        Route(["1#127.0.0.1:54321", "app"]), Route(["echo_service"]), payload
    )
    reply_plain = TransportMessage(Route(["app"]), Route(["echo_service"]), payload)
    frame = encode_frame(reply_popped, pop_first=True)
    assert frame == encode_frame(reply_plain)
    decoder = FrameDecoder()
    feed = decoder.feed
    (decoded,) = feed(frame)
    assert decoded[1] == reply_plain[1] and decoded[2] == reply_plain[2] and decoded[3] == payload
    route_list = ["1#127.0.0.1:10222", "echo_service"]

    cases = {
        "encode_ns": lambda: encode_frame(reply_popped, True),
        "encode_plain_ns": lambda: encode_frame(reply_plain),
        "decode_ns": lambda: feed(frame),
        "roundtrip_ns": lambda: feed(encode_frame(reply_popped, True)),
        "payload_encode_ns": lambda: BARE.encode(MESSAGE),
        "payload_decode_ns": lambda: BARE.decode(payload, str),
        "as_route_list_ns": lambda: as_route(route_list),
    }
    out: Dict[str, Any] = {"frame_bytes": len(frame), "ok": True}
    for name, fn in cases.items():
        timer = timeit.Timer(fn)
        best = min(timer.repeat(repeat=5, number=number)) / number
        out[name] = best * 1e9
    # The lambda call itself is in every figure above; measure it to report it.
    out["call_overhead_ns"] = (
        min(timeit.Timer(lambda: None).repeat(repeat=5, number=number)) / number * 1e9
    )
    emit(out)
    return 0


# --------------------------------------------------------------------------------------------
# Orchestrator
# --------------------------------------------------------------------------------------------


class BenchError(RuntimeError):
    pass


def _set_pdeathsig() -> None:
    """Children die with the orchestrator even if it is SIGKILLed (Linux prctl)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class Proc:
    """A pinned child process with line reads that time out."""

    live: List["Proc"] = []

    def __init__(self, name: str, argv: List[str], cpu: int, stdin: bool = False) -> None:
        self.name = name
        self.stderr = tempfile.TemporaryFile()

        def pre() -> None:
            os.setsid()
            _set_pdeathsig()
            os.sched_setaffinity(0, {cpu})
            raise_nofile()

        self.popen = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            bufsize=0,
            preexec_fn=pre,
            cwd=os.path.dirname(HERE),
        )
        self.pid = self.popen.pid
        self._buf = b""
        Proc.live.append(self)

    def readline(self, timeout: float) -> str:
        """The next line of stdout; BenchError on timeout or EOF."""
        deadline = time.monotonic() + timeout
        fd = self.popen.stdout.fileno()  # type: ignore[union-attr]
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(f"{self.name}: no output within {timeout} s{self.tail()}")
                if sel.select(left):
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        self.popen.wait(5)
                        raise BenchError(
                            f"{self.name} exited with status {self.popen.returncode} "
                            f"before writing a line{self.tail()}"
                        )
                    self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def write(self, text: str) -> None:
        self.popen.stdin.write(text.encode())  # type: ignore[union-attr]
        self.popen.stdin.flush()  # type: ignore[union-attr]

    def result(self, timeout: float) -> Dict[str, Any]:
        """Read the JSON line a client prints last, and wait for it to exit 0."""
        line = self.readline(timeout)
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{self.name} did not exit{self.tail()}") from None
        if self.popen.returncode != 0:
            raise BenchError(f"{self.name} failed with status {self.popen.returncode}{self.tail()}")
        self.close()
        return json.loads(line)

    def tail(self) -> str:
        try:
            self.stderr.seek(0)
            text = self.stderr.read().decode(errors="replace")[-3000:]
        except (OSError, ValueError):
            return ""
        return f"\n--- {self.name} stderr (tail) ---\n{text}" if text.strip() else ""

    def rss_kb(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise BenchError(f"no VmRSS for {self.name}")

    def stop(self, grace: float = 5.0) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
            except ProcessLookupError:
                pass
        self.close()

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)  # it leads its own session (setsid)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                pass
        self.close()

    def close(self) -> None:
        for f in (self.popen.stdin, self.popen.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        if self in Proc.live:
            Proc.live.remove(self)


def git_describe() -> Optional[str]:
    """The commit of the tree measured, with "+dirty" if greenockam/ has uncommitted changes."""
    root = os.path.dirname(HERE)
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, timeout=10,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "greenockam"], cwd=root,
                               timeout=10, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty.strip() else "")


def start_server(impl: str, cpu: int, timeout: float) -> Tuple[Proc, str]:
    if impl == "raw":
        argv = [sys.executable, THIS, "--role", "raw-server", "--addr", "127.0.0.1:0"]
        prefix = "raw_echo listening on "
    else:
        argv = [sys.executable, ECHO_SERVER, "127.0.0.1:0", "--log-level", "WARNING"]
        prefix = "echo_service listening on "
    proc = Proc(f"{impl} server", argv, cpu)
    line = proc.readline(timeout)
    if not line.startswith(prefix):
        raise BenchError(f"{proc.name}: unexpected first line {line!r}{proc.tail()}")
    return proc, line[len(prefix) :].strip()


def client_argv(impl: str, phase: str, addr: str, timeout: float, **kw: Any) -> List[str]:
    argv = [sys.executable, THIS, "--role", "client", "--impl", impl, "--phase", phase,
            "--addr", addr, "--timeout", str(timeout)]
    for key, value in kw.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def run_phase(impl: str, phase: str, cpus: Tuple[int, int], sizes: Dict[str, int],
              timeout: float) -> Dict[str, Any]:
    server, addr = start_server(impl, cpus[0], 30)
    client_impl = impl
    if phase == "rtt_server":  # raw client, greenockam server
        client_impl, phase = "raw", "rtt"
    try:
        if phase == "rtt":
            kw = {"n": sizes["rtt_n"], "warm": sizes["rtt_warm"], "server_pid": server.pid}
        elif phase == "pipelined":
            kw = {"n": sizes["pipelined_n"], "server_pid": server.pid}
        elif phase == "conns":
            kw = {"conns": sizes["conns"], "per_conn": sizes["per_conn"], "server_pid": server.pid}
        else:
            kw = {"n": sizes["idle_n"], "warm": sizes["idle_warm"]}
        client = Proc(f"{client_impl} {phase} client",
                      client_argv(client_impl, phase, addr, timeout, **kw),
                      cpus[1], stdin=(phase == "idle"))
        try:
            if phase != "idle":
                return client.result(timeout + 30)
            line = client.readline(timeout)
            if not line.startswith("warm "):
                raise BenchError(f"{client.name}: unexpected line {line!r}")
            before = server.rss_kb()
            client.write("go\n")
            line = client.readline(timeout)
            if not line.startswith("connected "):
                raise BenchError(f"{client.name}: unexpected line {line!r}")
            after = server.rss_kb()
            if server.popen.poll() is not None:
                raise BenchError(f"{server.name} died{server.tail()}")
            client.write("done\n")
            result = client.result(timeout)
            result.update(
                rss_before_kb=before,
                rss_after_kb=after,
                bytes_per_conn=(after - before) * 1024 / sizes["idle_n"],
            )
            return result
        finally:
            client.kill()
    finally:
        server.stop()


def run_codec_phase(cpu: int, number: int, timeout: float) -> Dict[str, Any]:
    proc = Proc("codec", [sys.executable, THIS, "--role", "codec", "--n", str(number)], cpu)
    try:
        return proc.result(timeout)
    finally:
        proc.kill()


DIRECTIONS = {  # +1: higher is better, -1: lower is better
    "per_s": 1,
    "ratio": 1,
    "_us": -1,
    "_ns": -1,
    "bytes": -1,
}


def direction(key: str) -> int:
    if key.endswith("_ratio") and ("p50" in key or "p99" in key or "bytes" in key):
        return -1
    for suffix, d in DIRECTIONS.items():
        if suffix in key:
            return d
    return 1


def orchestrate(args: argparse.Namespace) -> int:
    quick = args.quick
    sizes = {k: v[1] if quick else v[0] for k, v in SIZES.items()}
    reps = args.reps if args.reps else sizes["reps"]
    cpus = tuple(int(c) for c in args.cpus.split(","))
    if len(cpus) != 2:
        raise SystemExit("--cpus takes SERVER,CLIENT, e.g. 0,0")
    targets = dict(TARGETS)
    for item in args.target:
        key, _, value = item.partition("=")
        targets[key.strip()] = float(value)
    timeout = args.timeout if args.timeout else (45.0 if quick else 240.0)
    raise_nofile()

    import gevent

    from greenockam import __version__ as gko_version

    request, _ = greenockam_frames()
    body_bytes = len(request) - 2
    git = git_describe()
    started = time.monotonic()
    print(
        f"bench: {'quick' if quick else 'full'} run, {reps} repetition(s), "
        f"server on CPU {cpus[0]}, client on CPU {cpus[1]}; frames of 2 + {body_bytes} bytes; "
        f"Python {platform.python_version()}, gevent {gevent.__version__}, "
        f"greenockam {gko_version}",
        flush=True,
    )
    phases = ["rtt", "rtt_server", "pipelined", "conns", "idle"]
    runs: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    codec_runs: List[Dict[str, Any]] = []
    for rep in range(reps):
        for phase in phases:
            for impl in ("gko",) if phase == "rtt_server" else ("raw", "gko"):
                t0 = time.monotonic()
                r = run_phase(impl, phase, cpus, sizes, timeout)
                runs.setdefault((impl, phase), []).append(r)
                shown = (
                    f"{r['bytes_per_conn']:,.0f} B/conn" if phase == "idle"
                    else f"{r['per_s']:,.0f} msg/s"
                )
                print(f"  rep {rep + 1} {phase:10} {impl:4} {shown:>18}  "
                      f"({time.monotonic() - t0:.1f} s)", flush=True)
        codec_runs.append(run_codec_phase(cpus[1], sizes["codec_number"], timeout))
        print(f"  rep {rep + 1} codec           {codec_runs[-1]['roundtrip_ns']:,.0f} ns enc+dec",
              flush=True)

    runs[("raw", "rtt_server")] = runs[("raw", "rtt")]  # its baseline: raw client, raw server

    def med(impl: str, phase: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[(impl, phase)])

    def cmed(key: str) -> float:
        return statistics.median(r[key] for r in codec_runs)

    res: Dict[str, Any] = {}
    for prefix, phase, key in (
        ("rtt_per_s", "rtt", "per_s"),
        ("rtt_p50_us", "rtt", "p50_us"),
        ("rtt_p99_us", "rtt", "p99_us"),
        ("rtt_server_per_s", "rtt_server", "per_s"),
        ("rtt_server_p50_us", "rtt_server", "p50_us"),
        ("rtt_server_p99_us", "rtt_server", "p99_us"),
        ("pipelined_per_s", "pipelined", "per_s"),
        ("conns_per_s", "conns", "per_s"),
        ("bytes_per_idle_conn", "idle", "bytes_per_conn"),
        ("rtt_server_cpu_us", "rtt", "server_cpu_us"),
        ("rtt_client_cpu_us", "rtt", "client_cpu_us"),
        ("rtt_server_server_cpu_us", "rtt_server", "server_cpu_us"),
        ("rtt_server_client_cpu_us", "rtt_server", "client_cpu_us"),
        ("pipelined_server_cpu_us", "pipelined", "server_cpu_us"),
        ("pipelined_client_cpu_us", "pipelined", "client_cpu_us"),
        ("conns_server_cpu_us", "conns", "server_cpu_us"),
        ("conns_client_cpu_us", "conns", "client_cpu_us"),
    ):
        res[prefix] = med("gko", phase, key)
        res["raw_" + prefix] = med("raw", phase, key)
    res["rtt_ratio"] = res["rtt_per_s"] / res["raw_rtt_per_s"]
    res["rtt_p50_ratio"] = res["rtt_p50_us"] / res["raw_rtt_p50_us"]
    res["rtt_p99_ratio"] = res["rtt_p99_us"] / res["raw_rtt_p99_us"]
    res["rtt_server_ratio"] = res["rtt_server_per_s"] / res["raw_rtt_server_per_s"]
    res["rtt_server_p50_ratio"] = res["rtt_server_p50_us"] / res["raw_rtt_server_p50_us"]
    res["rtt_server_p99_ratio"] = res["rtt_server_p99_us"] / res["raw_rtt_server_p99_us"]
    for phase in ("rtt", "rtt_server", "pipelined", "conns"):
        for side in ("server", "client"):
            key = f"{phase}_{side}_cpu_us"
            raw = res["raw_" + key]
            res[key + "_ratio"] = res[key] / raw if raw else float("nan")
    res["pipelined_ratio"] = res["pipelined_per_s"] / res["raw_pipelined_per_s"]
    res["conns_ratio"] = res["conns_per_s"] / res["raw_conns_per_s"]
    res["bytes_per_idle_conn_ratio"] = (
        res["bytes_per_idle_conn"] / res["raw_bytes_per_idle_conn"]
        if res["raw_bytes_per_idle_conn"] > 0 else float("nan")
    )
    for key in ("encode_ns", "encode_plain_ns", "decode_ns", "roundtrip_ns",
                "payload_encode_ns", "payload_decode_ns", "as_route_list_ns", "call_overhead_ns"):
        res["codec_" + key] = cmed(key)
    res.update(
        body_bytes=body_bytes,
        idle_connections=sizes["idle_n"],
        rtt_messages=sizes["rtt_n"],
        pipelined_messages=sizes["pipelined_n"],
        conns=sizes["conns"],
        round_trips_per_conn=sizes["per_conn"],
        repetitions=reps,
        quick=quick,
        cpus={"server": cpus[0], "client": cpus[1]},
        python=platform.python_version(),
        gevent=gevent.__version__,
        greenockam=gko_version,
        git=git,
        seconds=round(time.monotonic() - started, 1),
        targets=targets,
        missed=[],
    )

    def target_cell(key: str) -> str:
        if key not in targets:
            return "–"
        goal = targets[key]
        d = direction(key)
        ok = res[key] >= goal if d > 0 else res[key] <= goal
        if not ok:
            res["missed"].append(key)
        sign = ">=" if d > 0 else "<="
        return f"{sign} {goal:,.4g}" + ("" if ok else "  MISSED")

    rows: List[Tuple[str, str, str, str, str]] = []

    def row(label: str, key: str, fmt: str, ratio_key: Optional[str] = None) -> None:
        raw = res.get("raw_" + key)
        ratio = res.get(ratio_key) if ratio_key else None
        cell = target_cell(key)
        if ratio_key and ratio_key in targets:
            ratio_cell = target_cell(ratio_key)
            cell = ratio_cell if cell == "–" else f"{cell}; ratio {ratio_cell}"
        rows.append((
            label,
            format(raw, fmt) if raw is not None else "–",
            format(res[key], fmt),
            f"{ratio:.3f}" if ratio is not None else "–",
            cell,
        ))

    def cpu_rows(phase: str) -> None:
        for side in ("server", "client"):
            key = f"{phase}_{side}_cpu_us"
            row(f"  {side} CPU per message (µs)", key, ".2f", key + "_ratio")

    row("round trips, 1 conn (msg/s)", "rtt_per_s", ",.0f", "rtt_ratio")
    row("  latency p50 (µs)", "rtt_p50_us", ".1f", "rtt_p50_ratio")
    row("  latency p99 (µs)", "rtt_p99_us", ".1f", "rtt_p99_ratio")
    cpu_rows("rtt")
    row("round trips, raw client -> greenockam server (msg/s)", "rtt_server_per_s", ",.0f",
        "rtt_server_ratio")
    row("  latency p50 (µs)", "rtt_server_p50_us", ".1f", "rtt_server_p50_ratio")
    row("  latency p99 (µs)", "rtt_server_p99_us", ".1f", "rtt_server_p99_ratio")
    row("  server CPU per message (µs)", "rtt_server_server_cpu_us", ".2f",
        "rtt_server_server_cpu_us_ratio")
    row(f"pipelined, {sizes['pipelined_n']:,} msgs (msg/s)", "pipelined_per_s", ",.0f",
        "pipelined_ratio")
    cpu_rows("pipelined")
    row(f"{sizes['conns']} conns x {sizes['per_conn']} round trips (msg/s)", "conns_per_s", ",.0f",
        "conns_ratio")
    cpu_rows("conns")
    row(f"server RSS per idle conn, {sizes['idle_n']:,} (bytes)", "bytes_per_idle_conn", ",.0f",
        "bytes_per_idle_conn_ratio")
    row("codec encode, reply popped (ns)", "codec_encode_ns", ",.0f")
    row("codec decode, FrameDecoder.feed (ns)", "codec_decode_ns", ",.0f")
    row("codec encode + decode (ns)", "codec_roundtrip_ns", ",.0f")
    row("  BARE str payload encode (ns)", "codec_payload_encode_ns", ",.0f")
    row("  BARE str payload decode (ns)", "codec_payload_decode_ns", ",.0f")
    row("  as_route(list of 2 str) per send (ns)", "codec_as_route_list_ns", ",.0f")

    headers = ("figure", "raw gevent", "greenockam", "ratio", "target")
    widths = [max(len(headers[i]), *(len(r[i]) for r in rows)) for i in range(5)]
    line = " | ".join(h.ljust(w) for h, w in zip(headers, widths))
    print()
    print(f"medians of {reps} run(s); ratio = greenockam / raw gevent "
          "(codec figures: greenockam only, timeit best of 5, incl. ~"
          f"{res['codec_call_overhead_ns']:.0f} ns call overhead)")
    print(line)
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(
            (c.ljust(w) if i in (0, 4) else c.rjust(w)) for i, (c, w) in enumerate(zip(r, widths))
        ))
    print()
    clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in res.items()}
    print(json.dumps(clean, sort_keys=True), flush=True)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="greenockam against raw gevent, side by side")
    parser.add_argument("--quick", action="store_true", help="smaller, 1 repetition, < 1 minute")
    parser.add_argument("--reps", type=int, default=0, help="repetitions (default 3, quick 1)")
    parser.add_argument("--cpus", default="0,0", help="SERVER,CLIENT CPUs to pin to (default 0,0)")
    parser.add_argument("--target", action="append", default=[], metavar="KEY=VALUE",
                        help="add or override a target (JSON key), e.g. rtt_ratio=0.5")
    parser.add_argument("--timeout", type=float, default=0.0,
                        help="seconds allowed per client run (default 45 quick, 240 full)")
    # Roles used by the orchestrator (and usable by hand).
    parser.add_argument("--role", choices=["bench", "raw-server", "client", "codec"],
                        default="bench")
    parser.add_argument("--impl", choices=["raw", "gko"], default="gko")
    parser.add_argument("--phase", choices=["rtt", "pipelined", "conns", "idle"], default="rtt")
    parser.add_argument("--addr", default="127.0.0.1:10222")
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--warm", type=int, default=100)
    parser.add_argument("--conns", type=int, default=100)
    parser.add_argument("--per-conn", type=int, default=500)
    parser.add_argument("--server-pid", type=int, default=0,
                        help="client role: also report this server process's CPU per message")
    args = parser.parse_args(argv)

    if args.role == "raw-server":
        return run_raw_server(args.addr)
    if args.role == "client":
        if not args.timeout:
            args.timeout = 120.0
        return run_client(args)
    if args.role == "codec":
        return run_codec(args.n)

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        return orchestrate(args)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        for proc in list(Proc.live):
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
