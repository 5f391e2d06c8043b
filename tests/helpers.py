"""Helpers shared by the test modules: a reference encoder written from docs/protocol.md alone,
independent of greenockam, that the tests compare greenockam's bytes with (it is checked against
the Rust vectors in test_tcp.py), socket helpers for raw test peers, the one way to wait for a
condition, the one log capture, the one echo worker and the one subprocess harness."""

import gc
import os
import re
import signal
import socket
import struct
import subprocess
import sys
from typing import Dict, List, Optional

import gevent
import gevent.socket
from gevent.event import Event
from gevent.fileobject import FileObjectPosix
from loguru import logger

import greenockam
from greenockam import Node, Worker
from greenockam.address import Address
from greenockam.transport.tcp import TcpTransport

WAIT = 10.0  # seconds: the default bound on a single socket wait


def ref_uint(value):
    """BARE uint: unsigned LEB128."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def ref_route(route):
    """A route from text addresses ("1#host:port", "worker") or (type, value) pairs."""
    out = ref_uint(len(route))
    for address in route:
        if isinstance(address, str):
            kind, sep, value = address.partition("#")
            if not sep:
                kind, value = "0", address
        else:
            kind, value = address
        data = value.encode("utf-8")
        out += bytes([int(kind)]) + ref_uint(len(data)) + data
    return out


def ref_body(onward, ret, payload, version=1):
    return bytes([version]) + ref_route(onward) + ref_route(ret) + ref_uint(len(payload)) + payload


def ref_frame(onward, ret, payload, version=1):
    body = ref_body(onward, ret, payload, version)
    return struct.pack(">H", len(body)) + body


def bare_str(text):
    """A str payload as the bare codec writes it."""
    data = text.encode("utf-8")
    return ref_uint(len(data)) + data


# --- raw peers ----------------------------------------------------------------------------------


def peer_name(sockaddr):
    """A socket address as Rust prints it, computed here independently of greenockam."""
    host, port = sockaddr[0], sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(address):
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def recv_exact(sock, n, timeout=WAIT):
    """Exactly ``n`` bytes from a plain or gevent socket, or AssertionError on EOF."""
    sock.settimeout(timeout)
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise AssertionError(
                f"connection closed after {len(buf)} of {n} bytes: {bytes(buf[:200])!r}"
            )
        buf += chunk
    return bytes(buf)


def recv_frame(sock, timeout=WAIT):
    header = recv_exact(sock, 2, timeout)
    return header + recv_exact(sock, struct.unpack(">H", header)[0], timeout)


def assert_closed_by_peer(sock, timeout=WAIT):
    """The other side closed: recv sees EOF (or a reset), not a timeout and not data."""
    sock.settimeout(timeout)
    try:
        data = sock.recv(1)
    except ConnectionResetError:
        return
    assert data == b"", f"expected the connection to be closed, got {data!r}"


# --- greenlets ----------------------------------------------------------------------------------


def live_greenlets():
    """Every gevent Greenlet alive now (the node's router and workers among them)."""
    return {o for o in gc.get_objects() if isinstance(o, gevent.Greenlet) and not o.dead}


# --- waiting ------------------------------------------------------------------------------------


def wait_until(predicate, wake, what, timeout=WAIT):
    """Wait until ``predicate()`` holds, checking it again each time the Event ``wake`` is set
    (by whatever changes the condition: a worker, a log sink, a reader greenlet)."""
    with gevent.Timeout(timeout, AssertionError(f"timed out after {timeout} s waiting for {what}")):
        while not predicate():
            wake.clear()
            if not predicate():
                wake.wait()


def poll_until(predicate, what, timeout=WAIT):
    """Poll a condition that has no event of its own, up to ``timeout`` seconds.

    The one polling wait of the suite, for what the library offers no event for (its statistics
    counters and its connection table); everything else waits with :func:`wait_until`.
    """
    with gevent.Timeout(timeout, AssertionError(f"timed out after {timeout} s waiting for {what}")):
        while not predicate():
            gevent.sleep(0.005)


def contains(text, needle):
    """``needle`` in ``text``, where ``127.0.0.1:5000`` does not match ``127.0.0.1:50001``."""
    return re.search(re.escape(needle) + "(?![0-9])", text) is not None


# --- workers, nodes and logs of one test ---------------------------------------------------------


class Echo(Worker):
    """Sends the payload it got, unchanged, back along the return route, once its body decoded as
    ``message_type`` (``str`` by default: a payload that is not one is dropped as bad_payload;
    ``RAW`` echoes anything); keeps the bodies in :attr:`bodies`, and puts every message in
    ``seen`` (a Queue, to wait on) if given."""

    def __init__(self, seen=None, message_type=str):
        self.seen = seen
        self.message_type = message_type
        self.bodies = []

    def handle_message(self, ctx, msg):
        self.bodies.append(msg.body)  # a payload that is not message_type raises here
        if self.seen is not None:
            self.seen.put(msg)
        ctx.send_payload(msg.reply(), msg.payload)


class Net:
    """Nodes, transports and raw gevent sockets of one test, all closed at the end."""

    def __init__(self):
        self.nodes = []
        self.socks = []

    def node(self, codec=None, listen=False, echo=False, **tcp_options):
        node = Node(codec=codec)
        self.nodes.append(node)
        tcp = TcpTransport(node, **tcp_options)
        address = tcp.listen("127.0.0.1:0") if listen else None
        if echo:
            node.start_worker("echo_service", Echo())
        return node, tcp, address

    def listener(self, host="127.0.0.1"):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = gevent.socket.socket(family, socket.SOCK_STREAM)
        self.socks.append(sock)
        sock.bind((host, 0))
        sock.listen(64)
        return sock, peer_name(sock.getsockname())

    def accept(self, listener, timeout=WAIT):
        listener.settimeout(timeout)
        conn, _ = listener.accept()
        self.socks.append(conn)
        conn.settimeout(timeout)
        return conn

    def connect(self, address, timeout=WAIT):
        sock = gevent.socket.create_connection(split_host_port(address), timeout=timeout)
        self.socks.append(sock)
        sock.settimeout(timeout)
        return sock

    def refused_address(self):
        """A port bound but not listening: connecting to it is refused, and nobody can take it."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socks.append(sock)
        sock.bind(("127.0.0.1", 0))
        return peer_name(sock.getsockname())

    def close(self):
        for sock in self.socks:
            sock.close()
        for node in reversed(self.nodes):
            node.stop(timeout=2.0)


class LogCapture:
    """greenockam's logging at ``level`` and above while it is open: :attr:`records` (loguru's
    record of each call) and :attr:`lines` (each the message as loguru formats it, with the
    traceback it appends when there is one)."""

    def __init__(self, level="DEBUG"):
        self.records = []
        self.lines = []
        self.changed = Event()
        logger.enable("greenockam")
        self.handler = logger.add(self.sink, level=level, format="{message}")

    def sink(self, message):
        self.records.append(message.record)
        self.lines.append(str(message).rstrip("\n"))
        self.changed.set()

    def close(self):
        logger.remove(self.handler)
        logger.disable("greenockam")

    def matching(self, *needles, level="TRACE"):
        """The lines at ``level`` or above that contain every needle (see :func:`contains`)."""
        floor = logger.level(level).no
        return [
            text
            for record, text in zip(self.records, self.lines)
            if record["level"].no >= floor and all(contains(text, n) for n in needles)
        ]

    def wait_for(self, *needles, level="TRACE", timeout=WAIT):
        """Wait for a line at ``level`` or above containing every needle; the matching lines."""
        found: List[str] = []

        def seen():
            found[:] = self.matching(*needles, level=level)
            return bool(found)

        wait_until(seen, self.changed, f"a {level} log line with {needles!r}", timeout)
        return found


# --- the project's scripts in subprocesses --------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
SCRIPT_WAIT = 30.0  # seconds: the bound on a script's start, a run to its end or its stop


def subprocess_env(**extra):
    """The environment of a subprocess: this one's, plus ``extra``; when the tests import the
    greenockam of this source tree (not an installed copy), the tree comes first on its path."""
    env = dict(os.environ, **extra)
    if os.path.dirname(os.path.dirname(os.path.abspath(greenockam.__file__))) == ROOT:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    return env


class Process:
    """A subprocess whose stdout and stderr are read by greenlets (:attr:`out` and :attr:`err`
    are their lines so far, :attr:`stdout` and :attr:`stderr` their text), so that waiting for a
    line or for the end never blocks this process's other greenlets (an in-process node goes on
    running meanwhile).

    Started with the standard ``subprocess`` module (fork and exec in C: safe in a process that
    has threads, and no gevent SIGCHLD handler that would reap other tests' children). A context
    manager: leaving it stops the process (:meth:`stop`), whatever happened.
    """

    def __init__(self, argv, env=None, merge_stderr=False, cwd=ROOT):
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
            cwd=cwd,
            env=subprocess_env() if env is None else env,
        )
        self.argv = list(argv)
        self.address = None  # for a server: the address it printed it listens on (start_server)
        self.text: Dict[str, List[str]] = {"out": [], "err": []}  # each pipe's lines so far
        self.changed = Event()
        stdout, stderr = self.proc.stdout, self.proc.stderr
        assert stdout is not None  # a PIPE
        pipes = {"out": stdout}
        if stderr is not None:  # None when merged into stdout
            pipes["err"] = stderr
        self.files = {k: FileObjectPosix(p.fileno(), "rb", close=False) for k, p in pipes.items()}
        self.readers = [gevent.spawn(self.read, k, f) for k, f in self.files.items()]

    def read(self, key, file):
        for line in file:
            self.text[key].append(line.decode("utf-8", "replace"))
            self.changed.set()
        self.changed.set()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()

    @property
    def pid(self):
        return self.proc.pid

    @property
    def ended(self):
        """True once the process has closed its output (it has exited, or is about to)."""
        return all(reader.dead for reader in self.readers)

    @property
    def out(self):
        return [line.rstrip("\n") for line in self.text["out"]]

    @property
    def err(self):
        return [line.rstrip("\n") for line in self.text["err"]]

    @property
    def stdout(self):
        return "".join(self.text["out"])

    @property
    def stderr(self):
        return "".join(self.text["err"])

    def line(self, index=0, timeout=SCRIPT_WAIT):
        """Line ``index`` of its stdout, or None if its stdout ends before."""
        wait_until(
            lambda: len(self.out) > index or self.ended,
            self.changed,
            f"line {index} of {self.argv!r} (stderr so far: {self.err!r})",
            timeout,
        )
        lines = self.out
        return lines[index] if len(lines) > index else None

    def first_line(self, timeout=SCRIPT_WAIT):
        """Its first line on stdout; AssertionError (with its stderr) if it ends without one."""
        line = self.line(0, timeout)
        if line is None:
            raise AssertionError(f"{self.argv!r} ended with {self.wait()}: {self.stderr}")
        return line

    def wait_for_line(self, *needles, timeout=SCRIPT_WAIT):
        """Wait for a line of its stderr (its log) containing every needle (see
        :func:`contains`); the matching lines."""
        found: List[str] = []

        def seen():
            found[:] = [t for t in self.err if all(contains(t, n) for n in needles)]
            return bool(found) or self.ended

        wait_until(seen, self.changed, f"a line of {self.argv!r} with {needles!r}", timeout)
        assert found, f"{self.argv!r} ended without a line with {needles!r}: {self.err!r}"
        return found

    def send_signal(self, sig):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout=SCRIPT_WAIT):
        """Its exit code, once it has ended by itself (AssertionError if not within
        ``timeout``); its output is then read to the end."""
        wait_until(lambda: self.ended, self.changed, f"{self.argv!r} to end", timeout)
        return self.proc.wait(timeout=timeout)

    def stop(self, sig=signal.SIGTERM, timeout=SCRIPT_WAIT):
        """Send ``sig`` if it still runs, wait for it to end (killing it after ``timeout``) and
        close its pipes; its exit code. Safe to call again."""
        self.send_signal(sig)
        gevent.joinall(self.readers, timeout=timeout)
        if not self.ended:
            self.proc.kill()
            gevent.joinall(self.readers, timeout=timeout)
            gevent.killall(self.readers)
        code = self.proc.wait(timeout=timeout)
        for file in self.files.values():
            file.close()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return code


def start_script(name, *args, **options):
    """``scripts/NAME ARGS...`` in a :class:`Process` (``options`` as for it)."""
    return Process([sys.executable, os.path.join(SCRIPTS, name), *args], **options)


def start_server(name, *args, **options):
    """``scripts/NAME ARGS...`` (a server: echo_server.py, hub.py) in a :class:`Process`, once
    its first line said ``... listening on HOST:PORT``; that address is its :attr:`address`."""
    process = start_script(name, *args, **options)
    try:
        line = process.first_line()
        match = re.search(r"listening on (\S+)$", line)
        assert match, f"{name} did not start: {line!r} {process.stderr}"
    except BaseException:
        process.stop()
        raise
    process.address = match.group(1)
    return process


def run_process(argv, timeout=SCRIPT_WAIT, **options):
    """Run ``argv`` in a :class:`Process` to its end (killed, and AssertionError, if it runs
    past ``timeout``): a CompletedProcess with text stdout and stderr."""
    with Process(argv, **options) as process:
        code = process.wait(timeout)
    return subprocess.CompletedProcess(process.argv, code, process.stdout, process.stderr)


def run_script(name, *args, timeout=SCRIPT_WAIT, **options):
    """Run ``scripts/NAME ARGS...`` to its end (see :func:`run_process`)."""
    return run_process([sys.executable, os.path.join(SCRIPTS, name), *args], timeout, **options)


class RecordingSource:
    """A source for ``Node.deliver`` and ``Node.route``: what the router needs from a
    connection (a peer name, pause() and resume()), with nothing behind it.

    Records the calls; ``depth`` (optional callable) is sampled at each call.
    """

    mark: Optional[Address] = None  # not a connection of a transport

    def __init__(self, peer="127.0.0.1:54321", depth=None):
        self.peer = peer
        self.calls = []
        self.depths = []
        self.paused = Event()
        self.resumed = Event()
        self._depth = depth

    def pause(self):
        self.calls.append("pause")
        self.depths.append(self._depth() if self._depth else None)
        self.paused.set()

    def resume(self):
        self.calls.append("resume")
        self.depths.append(self._depth() if self._depth else None)
        self.resumed.set()

    def read(self):
        """Part of the ``Source`` protocol, but ``Node.deliver`` never reads its source."""
        raise AssertionError("Node.deliver read its source")
