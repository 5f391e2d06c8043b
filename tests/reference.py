"""A reference encoder written from PROTOCOL.md alone, independent of greenockam, that the tests
compare greenockam's bytes with (it is checked against the Rust vectors in test_wire.py)."""

import struct


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
