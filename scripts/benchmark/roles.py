"""What the child processes run: the raw gevent echo server, and the clients of every phase.

The raw gevent baseline is written here: a ``StreamServer`` echo and gevent sockets with the same
framing as greenockam (u16 big-endian length, then a body of exactly the size of greenockam's body
for the same message). Its per-frame loops are written out inline in each function on purpose:
a shared helper would add a call per frame to what the baseline costs. Its server sends each echo
frame with its own ``send``; its pipelined client writes one frame per ``send``.

The greenockam clients are a ``Node`` + ``TcpTransport`` per connection using ``node.send`` and
``node.receive``; the greenockam server is ``scripts/echo_server.py`` (started by
:mod:`.runner`). A client measures one phase, writes its result as one JSON line
(:func:`.common.emit`) and exits; the result's fields are what :mod:`.report`'s rows read.

The secure phases (greenockam only) run against ``scripts/echo_server.py`` too, which is also a
secure channel responder: one client measures plain round trips or pipelined messages and then
the same through a secure channel it opens to the server (:func:`client_secure`).

The hub phase (greenockam only) has a server of its own, :func:`run_hub_echoer`: an echo worker
that both listens and is registered at a hub (``scripts/hub.py``), so that one client can send
to it straight and through the hub in the same run.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .common import MESSAGE, emit, greenockam_frames, raise_nofile

# What a client process can measure.
PHASES = ("rtt", "pipelined", "conns", "idle", "hub", "secure_rtt", "secure_pipelined")
# The hub phase keeps at most this many messages unanswered, straight and through the hub alike
# (about 0.7 MB of frames, below a connection's 1 MiB high_water). It came in when a worker whose
# mailbox was full refused its reply (OutputFull) as soon as its output was past high_water,
# which an unbounded burst through two hops hit at the echoer; such a worker now waits while its
# output moves (README "Mailboxes and flow control"), and the bound stays so that the hub
# figures compare with the earlier ones.
HUB_WINDOW = 10_000
WINDOW_STEP = 500  # how often a windowed sender looks at what came back


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The value at quantile ``q`` (0 to 1) of already sorted values, nearest rank; NaN if none."""
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
    """The result fields for the CPU spent between two :func:`cpu_marks` over ``n`` messages."""
    return {
        "server_cpu_us": (end[0] - start[0]) / n * 1e6,
        "client_cpu_us": (end[1] - start[1]) / n * 1e6,
    }


# --------------------------------------------------------------------------------------------
# The raw gevent echo server
# --------------------------------------------------------------------------------------------


def run_raw_server(address: str) -> int:
    """The raw-server role: echo every frame back with one ``send`` each, until killed.

    Prints ``raw_echo listening on HOST:PORT`` once listening (``address`` may use port 0).
    """
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
# The hub phase's echoer
# --------------------------------------------------------------------------------------------


def run_hub_echoer(address: str, hub: str) -> int:
    """The hub-echoer role: ``echo_service`` as ``scripts/echo_server.py`` runs it, listening on
    ``address`` and registered at the hub ``hub``, until killed.

    Prints ``hub_echoer listening on HOST:PORT forwarder F`` once both are ready.
    """
    from greenockam import Node, Worker
    from greenockam.hub import RemoteForwarder
    from greenockam.transport.tcp import TcpTransport

    class Echo(Worker):
        def handle_message(self, ctx: Any, msg: Any) -> None:
            ctx.reply(msg, msg.body)

    raise_nofile()
    node = Node()
    bound = TcpTransport(node).listen(address)
    node.start_worker("echo_service", Echo())
    forwarder = RemoteForwarder.create(node, hub, "echo_service", reconnect=False)
    assert forwarder.info is not None
    print(f"hub_echoer listening on {bound} forwarder {forwarder.info.remote_address}",
          flush=True)
    node.serve_forever()
    return 0



# --------------------------------------------------------------------------------------------
# Clients (raw or greenockam), one phase per process
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
    """A gevent socket connected to ``addr`` (HOST:PORT), blocking, with TCP_NODELAY."""
    import socket

    import gevent.socket

    host, _, port = addr.rpartition(":")
    sock = gevent.socket.create_connection((host, int(port)), timeout)
    sock.settimeout(None)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def raw_send(sock: Any, frame: bytes) -> None:
    """Write ``frame`` with one ``send``, finishing with ``sendall`` if that was short."""
    sent = sock.send(frame)
    if sent < len(frame):
        sock.sendall(frame[sent:])


def client_rtt(
    impl: str, addr: str, n: int, warm: int, timeout: float, server_pid: int
) -> Dict[str, Any]:
    """``n`` sequential round trips on one connection after ``warm`` unmeasured ones:
    messages/s, p50/p99 latency in µs and CPU per message of both sides."""
    if impl != "raw":
        from greenockam import Node
        from greenockam.transport.tcp import TcpTransport

        node = Node()
        TcpTransport(node, connect_timeout=timeout)
        result = gko_rtt(node, [f"1#{addr}", "echo_service"], n, warm, timeout, server_pid)
        node.stop(1)
        return result
    pc = time.perf_counter_ns
    lat = [0] * n
    request, echo_reply = greenockam_frames(addr)
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
    sock.close()
    # The raw server echoes the request; the greenockam server sends its reply.
    return rtt_result(total, lat, cpu0, cpu1, frame in (request, echo_reply))


def gko_rtt(
    node: Any, route: List[str], n: int, warm: int, timeout: float, server_pid: int
) -> Dict[str, Any]:
    """:func:`client_rtt` for greenockam: ``node`` sends along ``route`` and receives."""
    pc = time.perf_counter_ns
    lat = [0] * n
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
    return rtt_result(total, lat, cpu0, cpu1, reply.body == MESSAGE)


def rtt_result(
    total_ns: int, lat: List[int], cpu0: Tuple[float, float], cpu1: Tuple[float, float], ok: bool
) -> Dict[str, Any]:
    """The result of a round-trip run: ``lat`` holds each round trip's nanoseconds."""
    n = len(lat)
    lat.sort()
    return {
        "per_s": n / (total_ns / 1e9),
        "p50_us": percentile(lat, 0.50) / 1000,
        "p99_us": percentile(lat, 0.99) / 1000,
        "n": n,
        "ok": ok,
        **cpu_per_msg(cpu0, cpu1, n),
    }


def client_pipelined(
    impl: str, addr: str, n: int, timeout: float, server_pid: int
) -> Dict[str, Any]:
    """One connection, a sender greenlet writing ``n`` messages as fast as it can while this
    greenlet reads the echoes: messages/s and CPU per message of both sides."""
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
        warm_up(node, route, timeout)
        result = gko_pipelined_result(node, route, n, timeout, server_pid)
        node.stop(1)
        return result
    return {"per_s": n / (total / 1e9), "n": n, "ok": ok, **cpu_per_msg(cpu0, cpu1, n)}


def warm_up(node: Any, route: List[str], timeout: float) -> None:
    """Open the connection along ``route`` and warm the path: 100 round trips."""
    for _ in range(100):
        node.send(route, MESSAGE)
        node.receive(timeout=timeout)


def gko_pipelined(
    node: Any, route: List[str], n: int, timeout: float, window: Optional[int] = None
) -> Tuple[int, bool]:
    """A sender greenlet sends ``n`` messages along ``route`` as fast as it can while this
    greenlet receives the echoes: the nanoseconds it took, and whether the last echo was right.
    With ``window``, the sender keeps at most that many messages unanswered (it looks every
    :data:`WINDOW_STEP` messages, so the bound costs nothing per message)."""
    import gevent
    from gevent.event import Event

    received = [0]
    caught_up = Event()

    def sender() -> None:
        send = node.send
        sent = 0
        while sent < n:
            if window is not None:
                while sent - received[0] > window - WINDOW_STEP:
                    caught_up.clear()
                    caught_up.wait()
            step = min(WINDOW_STEP, n - sent)
            for _ in range(step):
                send(route, MESSAGE)
            sent += step

    receive = node.receive
    start = time.perf_counter_ns()
    g = gevent.spawn(sender)
    if window is None:
        for _ in range(n):
            reply = receive(timeout=timeout)
    else:
        for done in range(1, n + 1):
            reply = receive(timeout=timeout)
            if not done % WINDOW_STEP:
                received[0] = done
                caught_up.set()
    g.get()
    return time.perf_counter_ns() - start, reply.body == MESSAGE


def gko_pipelined_result(
    node: Any, route: List[str], n: int, timeout: float, server_pid: int
) -> Dict[str, Any]:
    """:func:`client_pipelined` for greenockam along a warm ``route``: its result."""
    cpu0 = cpu_marks(server_pid)
    total, ok = gko_pipelined(node, route, n, timeout)
    cpu1 = cpu_marks(server_pid)
    return {"per_s": n / (total / 1e9), "n": n, "ok": ok, **cpu_per_msg(cpu0, cpu1, n)}


def client_secure(
    phase: str, addr: str, n: int, warm: int, timeout: float, server_pid: int
) -> Dict[str, Any]:
    """One initiator node and the echo server at ``addr`` (process ``server_pid``), which is
    also the responder (its ``secure_channel_listener``): ``phase`` ``secure_rtt`` measures
    round trips as :func:`client_rtt`, ``secure_pipelined`` pipelined messages as
    :func:`client_pipelined`, first plain to ``echo_service`` and then through one secure
    channel to it. The result is the secure run's, with the plain run's fields prefixed
    ``plain_`` and ``ratio`` = secure / plain messages/s.

    One channel carries the warm-up and the measured messages: together they must stay below
    the 65,535 messages one handshake allows in each direction (docs/secure-channel.md).
    """
    from greenockam import Node
    from greenockam.secure import open_secure_channel
    from greenockam.transport.tcp import TcpTransport

    node = Node()
    TcpTransport(node, connect_timeout=timeout)
    plain = [f"1#{addr}", "echo_service"]
    channel = open_secure_channel(node, [f"1#{addr}", "secure_channel_listener"],
                                  timeout=timeout)
    secure = [str(channel.address), "echo_service"]
    runs = []
    for route in (plain, secure):
        if phase == "secure_rtt":
            runs.append(gko_rtt(node, route, n, warm, timeout, server_pid))
        else:
            warm_up(node, route, timeout)
            runs.append(gko_pipelined_result(node, route, n, timeout, server_pid))
    channel.close()
    node.stop(1)
    plain_run, result = runs
    result.update({f"plain_{key}": value for key, value in plain_run.items()
                   if key not in ("n", "ok")})
    result["ratio"] = result["per_s"] / plain_run["per_s"]
    result["ok"] = result["ok"] and plain_run["ok"]
    return result


def client_hub(
    addr: str, hub: str, forwarder: str, n: int, timeout: float, server_pid: int
) -> Dict[str, Any]:
    """Pipelined as :func:`client_pipelined` (greenockam), to the hub echoer straight at
    ``addr`` and then through the hub ``hub`` (process ``server_pid``) to its ``forwarder``:
    messages/s of each, their ratio, and the hub's CPU per message."""
    from greenockam import Node
    from greenockam.transport.tcp import TcpTransport

    node = Node()
    TcpTransport(node, connect_timeout=timeout)
    direct = [f"1#{addr}", "echo_service"]
    through = [f"1#{hub}", forwarder]
    warm_up(node, direct, timeout)
    warm_up(node, through, timeout)
    direct_ns, direct_ok = gko_pipelined(node, direct, n, timeout, HUB_WINDOW)
    cpu0 = cpu_marks(server_pid)
    hub_ns, hub_ok = gko_pipelined(node, through, n, timeout, HUB_WINDOW)
    cpu1 = cpu_marks(server_pid)
    node.stop(1)
    per_s, direct_per_s = n / (hub_ns / 1e9), n / (direct_ns / 1e9)
    return {
        "per_s": per_s,
        "direct_per_s": direct_per_s,
        "ratio": per_s / direct_per_s,
        "hub_cpu_us": (cpu1[0] - cpu0[0]) / n * 1e6,
        "n": n,
        "ok": direct_ok and hub_ok,
    }


def client_conns(
    impl: str, addr: str, conns: int, per_conn: int, timeout: float, server_pid: int
) -> Dict[str, Any]:
    """``conns`` concurrent connections, ``per_conn`` round trips each, timed from the moment
    the last one is open: total messages/s and CPU per message of both sides."""
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



def run_client(
    impl: str,
    phase: str,
    addr: str,
    timeout: float,
    n: int,
    warm: int,
    conns: int,
    per_conn: int,
    server_pid: int,
    hub: str = "",
    forwarder: str = "",
) -> int:
    """The client role: measure ``phase`` against the server at ``addr``, emit the result.

    ``n`` and ``warm`` are the messages (rtt, pipelined, hub and the secure phases) or
    connections (idle) measured and warmed up with; ``conns`` and ``per_conn`` size the conns
    phase; ``hub`` and ``forwarder`` are the hub phase's hub (``server_pid`` is then the hub's)
    and the echoer's forwarder there. The whole phase must end within ``timeout`` seconds.
    Returns the exit status: 1 if an echo came back wrong.
    """
    import gevent

    raise_nofile()
    with gevent.Timeout(timeout, RuntimeError(f"client phase {phase} took over {timeout} s")):
        if phase == "rtt":
            result = client_rtt(impl, addr, n, warm, timeout, server_pid)
        elif phase == "pipelined":
            result = client_pipelined(impl, addr, n, timeout, server_pid)
        elif phase == "conns":
            result = client_conns(impl, addr, conns, per_conn, timeout, server_pid)
        elif phase == "idle":
            result = client_idle(addr, n, warm, timeout)
        elif phase == "hub":
            result = client_hub(addr, hub, forwarder, n, timeout, server_pid)
        elif phase in ("secure_rtt", "secure_pipelined"):
            result = client_secure(phase, addr, n, warm, timeout, server_pid)
        else:
            raise SystemExit(f"unknown phase {phase}")
    if not result.get("ok"):
        print(f"error: phase {phase} ({impl}) got a wrong echo", file=sys.stderr)
        return 1
    emit(result)
    return 0
