"""scripts/echo_server.py and scripts/echo_client.py, run as real subprocesses.

Readiness is never guessed: a server is ready when it prints ``echo_service listening on
HOST:PORT`` (it binds port 0 here, and that line says which port it got). The raw peers that check
the exact bytes on the wire are plain blocking sockets with timeouts (nothing else runs in this
process while they wait), except in the many-connections test, which uses gevent sockets.
"""

import contextlib
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time

import gevent
import gevent.socket
import pytest

import greenockam
from helpers import assert_closed_by_peer, bare_str, recv_exact, ref_frame, split_host_port

pytestmark = pytest.mark.timeout(90)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(ROOT, "scripts", "echo_server.py")
CLIENT = os.path.join(ROOT, "scripts", "echo_client.py")
READY = re.compile(r"echo_service listening on (\S+)")
HELLO = "Hello you over there!"
T = 30.0  # seconds: the bound on a subprocess start or a run of the client
CODECS = ["bare", "bincode"]

# The scripts must run the greenockam these tests import: when that is this source tree (not an
# installed copy), put the tree first on the subprocesses' path.
ENV = dict(os.environ)
if os.path.dirname(os.path.dirname(os.path.abspath(greenockam.__file__))) == ROOT:
    ENV["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p])

with open(os.path.join(ROOT, "tests", "vectors.json"), encoding="utf-8") as _f:
    FRAMES = {e["name"]: bytes.fromhex(e["frame_hex"]) for e in json.load(_f)["frames"]}




# --- subprocesses and sockets -------------------------------------------------------------------




def read_line(proc, timeout):
    """The first line the process writes on stdout, waiting at most ``timeout`` seconds."""
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    data = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                raise AssertionError(f"no line on stdout within {timeout} s (got {data!r})")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"stdout closed before a full line (got {data!r})")
            data += chunk
    return data.split(b"\n", 1)[0].decode()


def end_process(proc, sig=signal.SIGTERM, timeout=10):
    """Signal the process if it still runs; kill it if it does not exit in time. Its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


class Server:
    def __init__(self, proc, address, stderr_path):
        self.proc = proc
        self.address = address
        self.stderr_path = stderr_path

    def stop(self, sig=signal.SIGTERM):
        """Stop the server; returns (exit code, its stderr)."""
        code = end_process(self.proc, sig)
        with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
            return code, f.read()


@contextlib.contextmanager
def echo_server(tmp_path, *args, **kwargs):
    """An echo_server.py subprocess on 127.0.0.1:0, stopped on exit."""
    log_level = kwargs.pop("log_level", "WARNING")
    assert not kwargs
    stderr_path = str(tmp_path / f"server-{time.monotonic_ns()}.stderr")
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, SERVER, "127.0.0.1:0", "--log-level", log_level] + list(args),
            stdout=subprocess.PIPE,
            stderr=stderr,
            bufsize=0,
            cwd=ROOT,
            env=ENV,
        )
    try:
        try:
            line = read_line(proc, T)
        except AssertionError as exc:
            end_process(proc)
            with open(stderr_path, encoding="utf-8", errors="replace") as f:
                raise AssertionError("echo_server did not start; stderr:\n" + f.read()) from exc
        match = READY.search(line)
        assert match, line
        yield Server(proc, match.group(1), stderr_path)
    finally:
        end_process(proc)


def start_client(*args):
    return subprocess.Popen(
        [sys.executable, CLIENT] + list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        cwd=ROOT,
        env=ENV,
    )


def run_client(*args, **kwargs):
    """Run echo_client.py to its end: (returncode, stdout, stderr) as a CompletedProcess."""
    timeout = kwargs.pop("timeout", T)
    assert not kwargs
    proc = start_client(*args)
    code, out, err = finish_client(proc, timeout)
    return subprocess.CompletedProcess(proc.args, code, out, err)


def finish_client(proc, timeout=T):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return proc.returncode, out, err




def connect(address):
    """A plain blocking socket to ``address`` (nothing else runs in this process meanwhile)."""
    return socket.create_connection(split_host_port(address), T)




@contextlib.contextmanager
def raw_listener():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.settimeout(T)
        yield sock, f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# --- end to end ---------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS)
def test_the_client_gets_its_message_echoed_by_the_server(tmp_path, codec):
    with echo_server(tmp_path, "--codec", codec) as server:
        result = run_client(server.address, "--codec", codec)
        assert result.returncode == 0, result.stderr
        assert result.stdout == HELLO + "\n"

        text = "another message, with spaces"
        result = run_client(server.address, "--codec", codec, "--message", text)
        assert result.returncode == 0, result.stderr
        assert result.stdout == text + "\n"


@pytest.mark.parametrize("codec", CODECS)
def test_the_client_puts_the_captured_rust_request_on_the_wire(codec):
    with raw_listener() as (listener, address):
        proc = start_client(address, "--codec", codec, "--log-level", "WARNING")
        try:
            conn, _ = listener.accept()
            try:
                request = FRAMES["echo_request_" + codec]
                assert recv_exact(conn, len(request)) == request
                conn.sendall(FRAMES["echo_reply_" + codec])
                code, out, err = finish_client(proc)
                assert (code, out) == (0, HELLO + "\n"), err
                assert_closed_by_peer(conn)  # and it sent nothing else
            finally:
                conn.close()
        finally:
            end_process(proc)


@pytest.mark.parametrize("codec", CODECS)
def test_the_server_answers_the_captured_rust_request_with_the_captured_rust_reply(tmp_path, codec):
    with echo_server(tmp_path, "--codec", codec) as server:
        with contextlib.closing(connect(server.address)) as sock:
            sock.sendall(FRAMES["echo_request_" + codec])
            reply = FRAMES["echo_reply_" + codec]
            assert recv_exact(sock, len(reply)) == reply


def test_a_route_through_two_servers_is_forwarded_by_the_first_and_answered_by_the_second(tmp_path):
    with echo_server(tmp_path, log_level="INFO") as b, echo_server(
        tmp_path, "--connect", b.address, log_level="INFO"
    ) as a:
        route = f"1#{a.address} => 1#{b.address} => echo_service"
        result = run_client("--route", route, "--log-level", "INFO")
        assert result.returncode == 0, result.stderr
        assert result.stdout == HELLO + "\n"
        # the reply came back through A: the client only ever talked to A
        assert f"via 1#{a.address} => 1#{b.address} => 0#echo_service" in result.stderr
        a_code, a_log = a.stop()
        b_code, b_log = b.stop()
    assert (a_code, b_code) == (0, 0)
    assert f"connected to {b.address}" in a_log
    assert "Responder" not in a_log
    assert "Responder: " + HELLO in b_log


def test_a_server_not_told_to_connect_does_not_dial_for_a_forwarded_message(tmp_path):
    with echo_server(tmp_path) as b, echo_server(tmp_path) as a:
        route = f"1#{a.address} => 1#{b.address} => echo_service"
        result = run_client("--route", route, "--timeout", "1")
        assert result.returncode == 1
        a_code, a_log = a.stop()
        b_code, b_log = b.stop()
    assert (a_code, b_code) == (0, 0)
    assert "dropped a message (no_connection)" in a_log
    assert "connected to" not in a_log
    assert "accepted a connection" not in b_log


def test_the_server_replies_over_the_connection_it_accepted(tmp_path):
    with echo_server(tmp_path, log_level="INFO") as server:
        for _ in range(2):
            result = run_client(server.address, "--log-level", "WARNING")
            assert result.returncode == 0, result.stderr
        code, log = server.stop()
    assert code == 0
    assert log.count("accepted a connection from 127.0.0.1:") == 2
    assert log.count("Responder: " + HELLO) == 2
    assert "connected to" not in log


# --- client errors ------------------------------------------------------------------------------


def test_the_client_exits_non_zero_with_one_error_line_when_the_connection_is_refused():
    with contextlib.closing(socket.socket()) as holder:  # bound, not listening: refused
        holder.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        result = run_client(address)
        quiet = run_client(address, "--log-level", "ERROR")

    for r in (result, quiet):
        assert r.returncode != 0
        assert r.stdout == ""
        assert "Traceback" not in r.stderr
        (line,) = error_lines(r.stderr)
        assert address in line
    assert quiet.stderr.strip().splitlines() == error_lines(quiet.stderr)


@pytest.mark.parametrize(
    "args",
    [["localhost"], ["127.0.0.1:port"], ["127.0.0.1:70000"], ["--route", "1#a#b => echo_service"]],
    ids=["no-port", "port-not-a-number", "port-too-big", "bad-route"],
)
def test_the_client_prints_one_error_line_naming_the_bad_argument(args):
    result = run_client(*args)
    assert result.returncode != 0
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert ("--route" if args[0] == "--route" else "HOST:PORT " + repr(args[0])) in lines[0]


def test_the_client_refuses_an_address_together_with_a_route():
    result = run_client("127.0.0.1:1", "--route", "1#127.0.0.1:1 => echo_service")
    assert result.returncode == 1
    assert result.stderr.strip() == "error: give either HOST:PORT or --route, not both"


def test_the_client_prints_only_the_reply_by_default(tmp_path):
    with echo_server(tmp_path) as server:
        result = run_client(server.address)
    assert result.returncode == 0
    assert result.stdout == HELLO + "\n"
    assert result.stderr == ""


def test_a_reply_timeout_of_zero_is_not_a_connect_timeout():
    with raw_listener() as (listener, address):
        proc = start_client(address, "--timeout", "0")
        try:
            conn, _ = listener.accept()
            try:
                code, out, err = finish_client(proc)
            finally:
                conn.close()
        finally:
            end_process(proc)
    assert code == 1 and out == ""
    (line,) = error_lines(err)
    assert "no reply" in line, err


def test_the_client_gives_up_after_its_timeout_with_one_error_line():
    with raw_listener() as (listener, address):
        started = time.monotonic()
        proc = start_client(address, "--timeout", "0.5")
        try:
            conn, _ = listener.accept()  # accept, read the request, never answer
            try:
                request = FRAMES["echo_request_bare"]
                assert recv_exact(conn, len(request)) == request
                code, out, err = finish_client(proc)
            finally:
                conn.close()
        finally:
            end_process(proc)
        elapsed = time.monotonic() - started
    assert code != 0
    assert out == ""
    assert "Traceback" not in err
    (line,) = error_lines(err)
    assert "no reply" in line and "0.5" in line
    assert elapsed < T / 2


# --- load and signals ---------------------------------------------------------------------------


def test_two_hundred_concurrent_connections_each_get_their_own_reply(tmp_path):
    n = 200

    def echo(sock, i):
        payload = bare_str(f"client {i} says hello")
        sock.sendall(ref_frame(["0#echo_service"], ["0#app"], payload))
        expected = ref_frame(["0#app"], ["0#echo_service"], payload)
        return recv_exact(sock, len(expected), timeout=15) == expected

    with echo_server(tmp_path) as server:
        sockets, greenlets = [], []
        try:
            with gevent.Timeout(20, AssertionError("200 concurrent echoes took over 20 s")):
                for _ in range(n):  # all open at once before anyone sends
                    host_port = split_host_port(server.address)
                    sockets.append(gevent.socket.create_connection(host_port, timeout=10))
                greenlets = [gevent.spawn(echo, sock, i) for i, sock in enumerate(sockets)]
                gevent.joinall(greenlets)
            failed = [(i, g.exception) for i, g in enumerate(greenlets) if not g.successful()]
            assert failed == []
            assert [g.value for g in greenlets] == [True] * n
        finally:
            gevent.killall(greenlets, block=True, timeout=5)
            for sock in sockets:
                sock.close()
        assert server.proc.poll() is None
        result = run_client(server.address)  # and it still serves
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_server_exits_0_on_a_signal_and_closes_its_connections(tmp_path, sig):
    with echo_server(tmp_path) as server:
        with contextlib.closing(connect(server.address)) as sock:
            sock.sendall(FRAMES["echo_request_bare"])
            assert recv_exact(sock, len(FRAMES["echo_reply_bare"])) == FRAMES["echo_reply_bare"]

            started = time.monotonic()
            server.proc.send_signal(sig)
            code = server.proc.wait(10)
            assert code == 0, server.stop()[1]
            assert time.monotonic() - started < 10
            assert_closed_by_peer(sock)
