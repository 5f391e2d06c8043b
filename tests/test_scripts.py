"""scripts/echo_server.py and scripts/echo_client.py, run as real subprocesses.

Readiness is never guessed: a server is ready when it prints ``echo_service listening on
HOST:PORT`` (it binds port 0 here, and that line says which port it got). The subprocesses run
under helpers' harness (Process); the raw peers that check the exact bytes on the wire are gevent
sockets with timeouts, so the harness goes on reading the subprocesses' output while they wait.
"""

import contextlib
import json
import os
import signal
import time

import gevent
import gevent.socket
import pytest

from helpers import (
    ROOT,
    assert_closed_by_peer,
    bare_str,
    recv_exact,
    ref_frame,
    run_script,
    split_host_port,
    start_script,
    start_server,
)

pytestmark = pytest.mark.timeout(90)

HELLO = "Hello you over there!"
T = 30.0  # seconds: the bound on a subprocess start or a run of the client
CODECS = ["bare", "bincode"]

with open(os.path.join(ROOT, "tests", "vectors.json"), encoding="utf-8") as _f:
    FRAMES = {e["name"]: bytes.fromhex(e["frame_hex"]) for e in json.load(_f)["frames"]}


# --- subprocesses and sockets -------------------------------------------------------------------


@contextlib.contextmanager
def echo_server(*args, log_level="WARNING"):
    """An echo_server.py subprocess on 127.0.0.1:0 (a helpers.Process), stopped on exit."""
    with start_server("echo_server.py", "127.0.0.1:0", "--log-level", log_level, *args) as server:
        yield server


def run_client(*args, timeout=T):
    """Run echo_client.py to its end: a CompletedProcess with its exit code, stdout and stderr."""
    return run_script("echo_client.py", *args, timeout=timeout)


def connect(address):
    return gevent.socket.create_connection(split_host_port(address), T)


@contextlib.contextmanager
def raw_listener():
    sock = gevent.socket.socket()
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
def test_the_client_gets_its_message_echoed_by_the_server(codec):
    with echo_server("--codec", codec) as server:
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
        args = [address, "--codec", codec, "--log-level", "WARNING"]
        with start_script("echo_client.py", *args) as client:
            conn, _ = listener.accept()
            with contextlib.closing(conn):
                request = FRAMES["echo_request_" + codec]
                assert recv_exact(conn, len(request)) == request
                conn.sendall(FRAMES["echo_reply_" + codec])
                assert (client.wait(), client.stdout) == (0, HELLO + "\n"), client.stderr
                assert_closed_by_peer(conn)  # and it sent nothing else


@pytest.mark.parametrize("codec", CODECS)
def test_the_server_answers_the_captured_rust_request_with_the_captured_rust_reply(codec):
    with echo_server("--codec", codec) as server:
        with contextlib.closing(connect(server.address)) as sock:
            sock.sendall(FRAMES["echo_request_" + codec])
            reply = FRAMES["echo_reply_" + codec]
            assert recv_exact(sock, len(reply)) == reply


def test_a_route_through_two_servers_is_forwarded_by_the_first_and_answered_by_the_second():
    with echo_server(log_level="INFO") as b, echo_server(
        "--connect", b.address, log_level="INFO"
    ) as a:
        route = f"1#{a.address} => 1#{b.address} => echo_service"
        result = run_client("--route", route, "--log-level", "INFO")
        assert result.returncode == 0, result.stderr
        assert result.stdout == HELLO + "\n"
        # the reply came back through A: the client only ever talked to A
        assert f"via 1#{a.address} => 1#{b.address} => 0#echo_service" in result.stderr
        a_code, b_code = a.stop(), b.stop()
    a_log, b_log = a.stderr, b.stderr
    assert (a_code, b_code) == (0, 0)
    assert f"connected to {b.address}" in a_log
    assert "Responder" not in a_log
    assert "Responder: " + HELLO in b_log


def test_a_server_not_told_to_connect_does_not_dial_for_a_forwarded_message():
    with echo_server() as b, echo_server() as a:
        route = f"1#{a.address} => 1#{b.address} => echo_service"
        result = run_client("--route", route, "--timeout", "1")
        assert result.returncode == 1
        a_code, b_code = a.stop(), b.stop()
    a_log, b_log = a.stderr, b.stderr
    assert (a_code, b_code) == (0, 0)
    assert "dropped a message (no_connection)" in a_log
    assert "connected to" not in a_log
    assert "accepted a connection" not in b_log


def test_the_server_replies_over_the_connection_it_accepted():
    with echo_server(log_level="INFO") as server:
        for _ in range(2):
            result = run_client(server.address, "--log-level", "WARNING")
            assert result.returncode == 0, result.stderr
        code, log = server.stop(), server.stderr
    assert code == 0
    assert log.count("accepted a connection from 127.0.0.1:") == 2
    assert log.count("Responder: " + HELLO) == 2
    assert "connected to" not in log


# --- client errors ------------------------------------------------------------------------------


def test_the_client_exits_non_zero_with_one_error_line_when_the_connection_is_refused():
    with contextlib.closing(gevent.socket.socket()) as holder:  # bound, not listening: refused
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


def test_the_client_prints_only_the_reply_by_default():
    with echo_server() as server:
        result = run_client(server.address)
    assert result.returncode == 0
    assert result.stdout == HELLO + "\n"
    assert result.stderr == ""


def test_a_reply_timeout_of_zero_is_not_a_connect_timeout():
    with raw_listener() as (listener, address):
        with start_script("echo_client.py", address, "--timeout", "0") as client:
            conn, _ = listener.accept()
            with contextlib.closing(conn):
                code, out, err = client.wait(), client.stdout, client.stderr
    assert code == 1 and out == ""
    (line,) = error_lines(err)
    assert "no reply" in line, err


def test_the_client_gives_up_after_its_timeout_with_one_error_line():
    with raw_listener() as (listener, address):
        started = time.monotonic()
        with start_script("echo_client.py", address, "--timeout", "0.5") as client:
            conn, _ = listener.accept()  # accept, read the request, never answer
            with contextlib.closing(conn):
                request = FRAMES["echo_request_bare"]
                assert recv_exact(conn, len(request)) == request
                code, out, err = client.wait(), client.stdout, client.stderr  # ended by itself
        elapsed = time.monotonic() - started
    assert elapsed >= 0.5  # not before its timeout
    assert code != 0
    assert out == ""
    assert "Traceback" not in err
    (line,) = error_lines(err)
    assert "no reply" in line and "0.5" in line


# --- load and signals ---------------------------------------------------------------------------


def test_two_hundred_concurrent_connections_each_get_their_own_reply():
    n = 200

    def echo(sock, i):
        payload = bare_str(f"client {i} says hello")
        sock.sendall(ref_frame(["0#echo_service"], ["0#app"], payload))
        expected = ref_frame(["0#app"], ["0#echo_service"], payload)
        return recv_exact(sock, len(expected), timeout=15) == expected

    with echo_server() as server:
        sockets, greenlets = [], []
        try:
            with gevent.Timeout(T, AssertionError(f"200 concurrent echoes did not end in {T} s")):
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
        assert not server.ended
        result = run_client(server.address)  # and it still serves
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_server_exits_0_on_a_signal_and_closes_its_connections(sig):
    with echo_server() as server:
        with contextlib.closing(connect(server.address)) as sock:
            sock.sendall(FRAMES["echo_request_bare"])
            assert recv_exact(sock, len(FRAMES["echo_reply_bare"])) == FRAMES["echo_reply_bare"]

            server.send_signal(sig)
            assert server.wait() == 0, server.stderr  # it ended by itself
            assert_closed_by_peer(sock)
