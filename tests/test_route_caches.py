"""Route caches are per connection (greenockam.wire.RouteCache): each FrameDecoder remembers the
route pairs of its own stream, within fixed bounds, and a forwarded message is encoded through the
cache of the connection it came on. What one connection remembers never changes what another
decodes or sends, a flood of distinct routes costs no memory past a fixed bound and only on its own
connection, and alternating route pairs decode and encode exactly as without any cache.
"""

from typing import Dict, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenockam.address import Address, Route
from greenockam.wire import FrameDecoder, RouteCache, TransportMessage, encode_frame
from helpers import peer_name, recv_exact, ref_frame

T = 10.0  # seconds: the bound on any single network wait in these tests

PREFIX = Address(1, "127.0.0.1:54321")


def pair(i):
    """The i-th of many distinct route pairs, as a peer behind a relay would send them."""
    onward = Route(["1#127.0.0.1:4000", f"service{i}"])
    return onward, Route([f"1#10.0.{i // 250}.{i % 250}:9", "app"])


def long_route(i):
    """A route longer than RouteCache.max_bytes, in the common shape (every length one byte)."""
    names = [f"w{i}-{n}-" + "w" * 100 for n in range(RouteCache.max_bytes // 100 + 1)]
    return Route(["1#127.0.0.1:4000"] + names)


def frame_of(i, payload=b"x"):
    onward, ret = pair(i)
    return ref_frame(onward, ret, payload)


def decode_one(decoder, frame):
    (message,) = decoder.feed(frame)
    return message


# --- decoding -------------------------------------------------------------------------------------


def test_alternating_route_pairs_decode_as_sent_and_each_pair_to_one_set_of_objects():
    decoder = FrameDecoder(PREFIX)
    seen: Dict[int, Tuple[Route, Route]] = {}
    for round_ in range(4):
        for i in range(8):
            onward, ret = pair(i)
            payload = f"{round_}:{i}".encode()
            message = decode_one(decoder, ref_frame(onward, ret, payload))
            assert message == TransportMessage(onward, ret.prepend(PREFIX), payload)
            if round_ >= 2:  # remembered by the second round at the latest
                assert message.onward_route is seen[i][0]
                assert message.return_route is seen[i][1]
            seen[i] = (message.onward_route, message.return_route)


def test_a_route_remembered_on_one_connection_is_not_what_another_connection_decodes():
    # The same route bytes on two connections: each decoder prepends its own peer, however
    # often the other one saw them.
    a = FrameDecoder(Address(1, "127.0.0.1:1111"))
    b = FrameDecoder(Address(1, "127.0.0.1:2222"))
    for _ in range(3):
        for i in range(4):
            decode_one(a, frame_of(i))
    for i in range(4):
        onward, ret = pair(i)
        from_b = decode_one(b, frame_of(i))
        from_a = decode_one(a, frame_of(i))
        assert from_b.return_route == ret.prepend("1#127.0.0.1:2222")
        assert from_a.return_route == ret.prepend("1#127.0.0.1:1111")
        assert from_b.onward_route is not from_a.onward_route
    assert a.route_cache is not b.route_cache


def test_a_flood_of_distinct_routes_on_one_decoder_leaves_another_decoders_routes_in_place():
    quiet = FrameDecoder(PREFIX)
    for _ in range(2):
        for i in range(3):
            decode_one(quiet, frame_of(i))
    before = [decode_one(quiet, frame_of(i)) for i in range(3)]
    remembered = len(quiet.route_cache)

    flooder = FrameDecoder(PREFIX)
    for i in range(1000, 1000 + 20 * RouteCache.max_pairs):
        decode_one(flooder, frame_of(i))

    assert len(quiet.route_cache) == remembered
    for i, earlier in enumerate(before):
        again = decode_one(quiet, frame_of(i))
        assert again.onward_route is earlier.onward_route
        assert again.return_route is earlier.return_route


def test_a_decoder_remembers_at_most_max_pairs_route_pairs_and_decodes_every_one_right():
    decoder = FrameDecoder(PREFIX)
    for i in range(10 * RouteCache.max_pairs):
        onward, ret = pair(i)
        expected = TransportMessage(onward, ret.prepend(PREFIX), b"x")
        assert decode_one(decoder, frame_of(i)) == expected
        assert len(decoder.route_cache) <= RouteCache.max_pairs


def test_routes_longer_than_max_bytes_are_decoded_every_time_and_not_remembered():
    routes = [(long_route(i), Route(["app"])) for i in range(2)]
    decoder = FrameDecoder()
    earlier: Dict[int, Route] = {}
    for _ in range(3):
        for i, (onward, ret) in enumerate(routes):
            message = decode_one(decoder, ref_frame(onward, ret, b"p"))
            assert message == TransportMessage(onward, ret, b"p")
            assert message.onward_route is not earlier.get(i)
            earlier[i] = message.onward_route
    assert len(decoder.route_cache) == 0


def test_a_connection_whose_routes_never_change_remembers_no_route_pair():
    decoder = FrameDecoder(PREFIX)
    messages = decoder.feed(frame_of(0) * 100)
    assert len(messages) == 100
    assert len(decoder.route_cache) == 0


# --- encoding -------------------------------------------------------------------------------------


def forwarded(message):
    """The frame a transport writes for ``message``, built by the reference encoder."""
    return ref_frame(list(message.onward_route)[1:], list(message.return_route), message.payload)


def test_forwarding_alternating_route_pairs_through_a_connections_cache_writes_the_right_frames():
    decoder = FrameDecoder(PREFIX)
    cache = decoder.route_cache
    for round_ in range(4):
        for i in (0, 5, 1, 7, 2, 0, 3, 6, 4, 0):
            message = decode_one(decoder, frame_of(i, f"{round_}/{i}".encode()))
            assert encode_frame(message, True, cache) == forwarded(message)


def test_the_encode_cache_tells_apart_routes_that_share_an_onward_route_object():
    cache = RouteCache()
    onward = Route(["1#127.0.0.1:4000", "echo"])
    first = TransportMessage(onward, Route(["app1"]), b"a")
    other_return = TransportMessage(onward, Route(["app2"]), b"a")
    assert encode_frame(first, True, cache) == ref_frame(["echo"], ["app1"], b"a")
    assert encode_frame(other_return, True, cache) == ref_frame(["echo"], ["app2"], b"a")
    assert encode_frame(other_return, False, cache) == ref_frame(list(onward), ["app2"], b"a")
    assert encode_frame(other_return, True, cache) == ref_frame(["echo"], ["app2"], b"a")


def test_an_encode_cache_holds_at_most_max_pairs_and_another_cache_keeps_its_pairs():
    kept = RouteCache()
    onward, ret = pair(0)
    encode_frame(TransportMessage(onward, ret, b"k"), True, kept)
    flooded = RouteCache()
    for i in range(10 * RouteCache.max_pairs):
        onward, ret = pair(i)
        message = TransportMessage(onward, ret, b"f")
        assert encode_frame(message, True, flooded) == forwarded(message)
        assert len(flooded) <= RouteCache.max_pairs
    assert len(kept) == 1


def test_an_encoding_longer_than_max_bytes_is_not_remembered():
    cache = RouteCache()
    message = TransportMessage(long_route(0), Route(["app"]), b"")
    for _ in range(3):
        assert encode_frame(message, True, cache) == forwarded(message)
    assert len(cache) == 0


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.integers(0, 11), min_size=1, max_size=60),
    st.sampled_from([None, PREFIX]),
)
def test_any_sequence_of_repeating_route_pairs_decodes_and_forwards_as_without_a_cache(
    picks, prefix
):
    # Pairs 0-9 are short, 10 and 11 longer than max_bytes (never remembered); the flood tests
    # cover more distinct pairs than a cache holds.
    pool = [pair(i) for i in range(10)] + [(long_route(i), Route(["app"])) for i in range(2)]
    decoder = FrameDecoder(prefix)
    stream = b"".join(
        ref_frame(pool[k][0], pool[k][1], str(n).encode()) for n, k in enumerate(picks)
    )
    messages = decoder.feed(stream)
    assert len(messages) == len(picks)
    for n, (message, k) in enumerate(zip(messages, picks)):
        onward, ret = pool[k]
        expected_return = ret if prefix is None else ret.prepend(prefix)
        assert message == TransportMessage(onward, expected_return, str(n).encode())
        assert encode_frame(message, True, decoder.route_cache) == forwarded(message)


# --- over TCP -------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_middle_node_forwards_alternating_routes_of_two_clients_each_with_its_own_return_hop(net):
    # Two raw clients send the same route bytes through node B to raw C, alternating between
    # route pairs: C gets every frame in order, each naming the client it came from.
    _, _, b_address = net.node(listen=True, dial_for_forward=True)
    c_listener, c_address = net.listener()
    clients = [net.connect(b_address), net.connect(b_address)]
    c = None
    for client in clients:
        as_b_sees = peer_name(client.getsockname())
        frames, expected = [], []
        for n, i in enumerate([0, 1, 2, 0, 1, 2, 3, 0, 3, 0] * 3):
            onward = ["1#" + c_address, f"service{i}"]
            ret = [f"app{i}"]
            payload = f"{n}".encode()
            frames.append(ref_frame(onward, ret, payload))
            expected.append(ref_frame(onward[1:], ["1#" + as_b_sees] + ret, payload))
        client.sendall(b"".join(frames))
        if c is None:
            c = net.accept(c_listener, timeout=T)
        want = b"".join(expected)
        assert recv_exact(c, len(want), timeout=T) == want
