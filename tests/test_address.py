"""Addresses and routes: text forms, immutability, and the route operations routing relies on.

docs/protocol.md section 3: an address is (type, value), written ``"T#value"``; text without
``#`` is type 0. A route is an ordered list of addresses, index 0 the next hop.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from greenockam.address import LOCAL, TCP, Address, Route, as_route
from greenockam.errors import AddressError, GreenockamError, RouteError

# Values whose text form survives "T#value" and "a => b" parsing: no '#', no '=>', and nothing that
# str.strip() would remove (whitespace and control characters).
_text_safe_values = st.text(
    alphabet=st.characters(
        exclude_categories=("Cs", "Cc", "Zs", "Zl", "Zp"), exclude_characters="#=>"
    ),
    min_size=1,
    max_size=30,
)
_text_safe_addresses = st.builds(Address, st.integers(0, 255), _text_safe_values)


# --- Address: parsing and text form -------------------------------------------------------------


def test_tcp_address_text_parses_to_type_1_and_value():
    address = Address.parse("1#127.0.0.1:10222")
    assert address == Address(1, "127.0.0.1:10222")
    assert address.type == TCP == 1
    assert address.value == "127.0.0.1:10222"
    assert isinstance(address, Address)


def test_address_str_is_type_hash_value_and_parses_back():
    for text in ("1#127.0.0.1:10222", "0#echo_service", "1#[::1]:10222", "255#x", "7#a:b/c"):
        assert str(Address.parse(text)) == text
        assert Address.parse(str(Address.parse(text))) == Address.parse(text)


def test_text_without_hash_is_a_local_address_same_as_type_0():
    bare = Address.parse("echo_service")
    explicit = Address.parse("0#echo_service")
    assert bare == explicit == Address(0, "echo_service")
    assert bare.type == LOCAL == 0
    assert str(bare) == "0#echo_service"


def test_ipv6_tcp_address_keeps_its_colons_and_brackets():
    address = Address.parse("1#[::1]:10222")
    assert address.type == 1
    assert address.value == "[::1]:10222"


def test_type_bounds_0_and_255_are_accepted():
    assert Address.parse("0#x").type == 0
    assert Address.parse("255#x").type == 255


def test_parse_returns_an_address_unchanged():
    address = Address(1, "127.0.0.1:4000")
    assert Address.parse(address) is address


def test_address_repr_shows_type_and_value():
    assert repr(Address(0, "echo_service")) == "Address(0, 'echo_service')"
    assert repr(Address.parse("1#127.0.0.1:10222")) == "Address(1, '127.0.0.1:10222')"


@given(_text_safe_addresses)
@settings(deadline=None)
def test_any_address_without_hash_round_trips_through_its_text(address):
    assert Address.parse(str(address)) == address


# --- Address: immutability, hashing, equality ---------------------------------------------------


def test_address_is_frozen():
    address = Address(1, "127.0.0.1:10222")
    with pytest.raises(AttributeError):
        address.type = 0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        address.value = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        address.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        address[0] = 0  # type: ignore[index]
    assert address == Address(1, "127.0.0.1:10222")


def test_equal_addresses_hash_equal_and_work_as_dict_keys():
    a = Address(0, "echo")
    b = Address.parse("echo")
    c = Address.parse("0#echo")
    assert a == b == c
    assert hash(a) == hash(b) == hash(c)
    assert len({a, b, c}) == 1
    table = {a: "worker"}
    assert table[Address.parse("0#echo")] == "worker"


def test_addresses_differing_in_type_or_value_are_not_equal():
    assert Address(0, "x") != Address(1, "x")
    assert Address(0, "x") != Address(0, "y")
    assert len({Address(0, "x"), Address(1, "x"), Address(0, "y")}) == 3


# --- Address: invalid input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["1#a#b", "256#x", "-1#x", "x#y", "1#", "", "#x", "1.5#x", "²#x"],
    ids=[
        "two_hashes",
        "type_256",
        "negative_type",
        "non_numeric_type",
        "empty_value",
        "empty_text",
        "empty_type",
        "fractional_type",
        "superscript_digit_type",
    ],
)
def test_invalid_address_text_raises_address_error_naming_the_input(text):
    with pytest.raises(AddressError) as info:
        Address.parse(text)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, GreenockamError)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("not_text", [None, 12, b"1#x", ("0", "x")], ids=repr)
def test_parsing_something_that_is_not_text_raises_address_error(not_text):
    with pytest.raises(AddressError):
        Address.parse(not_text)


@pytest.mark.parametrize(
    "kind, value",
    [(256, "x"), (-1, "x"), (True, "x"), ("1", "x"), (1.0, "x"), (0, ""), (0, None), (0, b"x")],
    ids=repr,
)
def test_constructing_an_address_with_a_bad_type_or_value_raises_address_error(kind, value):
    with pytest.raises(AddressError):
        Address(kind, value)


# --- Route: construction and text form ----------------------------------------------------------


def test_route_is_built_from_address_text_and_addresses_alike():
    route = Route(["1#127.0.0.1:4000", Address(0, "echoer"), "middle"])
    assert list(route) == [Address(1, "127.0.0.1:4000"), Address(0, "echoer"), Address(0, "middle")]
    assert all(type(a) is Address for a in route)
    assert len(route) == 3


def test_route_parse_reads_arrow_separated_text():
    route = Route.parse("1#127.0.0.1:3000 => 1#127.0.0.1:4000 => echo_service")
    assert list(route) == [
        Address(1, "127.0.0.1:3000"),
        Address(1, "127.0.0.1:4000"),
        Address(0, "echo_service"),
    ]
    assert isinstance(route, Route)


def test_route_parse_tolerates_missing_spaces_around_arrows():
    assert Route.parse("1#127.0.0.1:3000=>echo") == Route(["1#127.0.0.1:3000", "0#echo"])


def test_route_parse_of_empty_text_is_the_empty_route():
    assert Route.parse("") == Route() == Route([])
    assert len(Route.parse("   ")) == 0


def test_route_parse_with_an_empty_hop_raises_address_error():
    with pytest.raises(AddressError):
        Route.parse("echo => ")
    with pytest.raises(AddressError):
        Route.parse("a => => b")


def test_route_str_joins_addresses_with_arrows_and_parses_back():
    route = Route(["1#127.0.0.1:3000", "1#127.0.0.1:4000", "echo_service"])
    text = "1#127.0.0.1:3000 => 1#127.0.0.1:4000 => 0#echo_service"
    assert str(route) == text
    assert Route.parse(text) == route
    assert str(Route()) == ""


def test_route_repr_shows_the_text_form():
    assert repr(Route(["1#127.0.0.1:4000", "echoer"])) == "Route('1#127.0.0.1:4000 => 0#echoer')"
    assert repr(Route()) == "Route('')"


def test_route_of_a_route_is_the_same_route():
    route = Route(["a", "b"])
    assert Route(route) is route


def test_route_from_a_single_string_or_address_is_refused_with_route_error():
    with pytest.raises(RouteError) as info:
        Route("a => b")
    assert "Route.parse" in str(info.value)
    with pytest.raises(RouteError):
        Route(Address(0, "a"))  # type: ignore[arg-type]
    assert issubclass(RouteError, ValueError)


def test_route_with_an_invalid_address_raises_address_error():
    with pytest.raises(AddressError):
        Route(["echo", "1#a#b"])


@given(st.lists(_text_safe_addresses, max_size=6))
@settings(deadline=None)
def test_any_route_round_trips_through_its_text(addresses):
    route = Route(addresses)
    assert Route.parse(str(route)) == route


# --- Route: navigation returns new routes -------------------------------------------------------


def test_next_is_the_first_hop_and_recipient_the_last():
    route = Route(["1#127.0.0.1:3000", "middle", "echoer"])
    assert route.next == Address(1, "127.0.0.1:3000")
    assert route.recipient == Address(0, "echoer")
    assert Route(["only"]).next == Route(["only"]).recipient == Address(0, "only")


def test_pop_front_returns_a_new_route_and_leaves_the_original_unchanged():
    route = Route(["1#127.0.0.1:10222", "echo_service"])
    popped = route.pop_front()
    assert popped == Route(["echo_service"])
    assert type(popped) is Route
    assert route == Route(["1#127.0.0.1:10222", "echo_service"])
    assert popped.pop_front() == Route()


def test_prepend_returns_a_new_route_and_leaves_the_original_unchanged():
    route = Route(["app"])
    longer = route.prepend("1#127.0.0.1:54321")
    assert longer == Route(["1#127.0.0.1:54321", "0#app"])
    assert type(longer) is Route
    assert route == Route(["app"])
    assert route.prepend(Address(0, "middle")) == Route(["middle", "app"])


def test_append_returns_a_new_route_and_leaves_the_original_unchanged():
    route = Route(["1#127.0.0.1:4000"])
    longer = route.append("echoer")
    assert longer == Route(["1#127.0.0.1:4000", "0#echoer"])
    assert type(longer) is Route
    assert route == Route(["1#127.0.0.1:4000"])
    assert Route().append(Address(1, "h:1")) == Route(["1#h:1"])


def test_prepend_and_append_reject_invalid_address_text():
    with pytest.raises(AddressError):
        Route(["a"]).prepend("1#a#b")
    with pytest.raises(AddressError):
        Route(["a"]).append("")


def test_middleware_hop_pops_itself_and_prepends_to_the_return_route():
    # docs/protocol.md rule 5 on plain routes: the docstring example of Route.
    onward = Route(["middle", "1#127.0.0.1:4000", "echoer"])
    ret = Route(["app"])
    assert onward.pop_front() == Route(["1#127.0.0.1:4000", "echoer"])
    assert ret.prepend(onward.next) == Route(["middle", "app"])


def test_empty_route_has_no_next_hop_recipient_or_front():
    empty = Route()
    with pytest.raises(RouteError):
        _ = empty.next
    with pytest.raises(RouteError):
        _ = empty.recipient
    with pytest.raises(RouteError):
        empty.pop_front()


# --- Route: immutability and hashing ------------------------------------------------------------


def test_route_is_frozen_and_hashable():
    route = Route(["a", "b"])
    with pytest.raises(AttributeError):
        route.extra = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        route[0] = Address(0, "c")  # type: ignore[index]
    same = Route.parse("0#a => 0#b")
    assert route == same
    assert hash(route) == hash(same)
    assert {route: 1}[same] == 1
    assert Route(["a", "b"]) != Route(["b", "a"])


# --- as_route -----------------------------------------------------------------------------------


def test_as_route_returns_a_route_unchanged():
    route = Route(["a"])
    assert as_route(route) is route


def test_as_route_accepts_a_list_tuple_or_generator_of_addresses():
    expected = Route(["1#127.0.0.1:4000", "0#echoer"])
    assert as_route(["1#127.0.0.1:4000", "echoer"]) == expected
    assert as_route((Address(1, "127.0.0.1:4000"), "echoer")) == expected
    assert as_route(a for a in ["1#127.0.0.1:4000", "echoer"]) == expected
    assert type(as_route(["a"])) is Route


def test_as_route_parses_arrow_text():
    route = as_route("1#127.0.0.1:4000 => echoer")
    assert route == Route(["1#127.0.0.1:4000", "0#echoer"])
    assert type(route) is Route
    assert as_route("echoer") == Route(["echoer"])
