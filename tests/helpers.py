"""Helpers shared by the test modules: a reference encoder written from PROTOCOL.md alone,
independent of greenockam, that the tests compare greenockam's bytes with (it is checked against
the Rust vectors in test_tcp.py), and socket helpers for raw test peers."""

import struct

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
