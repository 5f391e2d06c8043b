"""Generic fixtures shared by the test modules (keep this file small and library-agnostic)."""

import gevent
import pytest

from greenockam import Node
from helpers import Net, live_greenlets


@pytest.fixture(autouse=True)
def no_greenlet_outlives_the_test():
    """Fail a test that leaves behind a gevent Greenlet it (or the code it ran) started."""
    before = live_greenlets()
    yield
    leaked = live_greenlets() - before
    if leaked:  # a greenlet that was killed or is returning gets a bounded moment to finish
        gevent.joinall(list(leaked), timeout=1.0)
        leaked = {g for g in leaked if not g.dead}
    if leaked:
        gevent.killall(list(leaked), block=True, timeout=1.0)  # don't poison the next test
        pytest.fail(f"{len(leaked)} greenlet(s) outlived the test: {sorted(map(repr, leaked))[:5]}")


@pytest.fixture
def node():
    """A running Node, stopped after the test."""
    n = Node()
    yield n
    n.stop(timeout=2.0)


@pytest.fixture
def net():
    """Nodes, transports and raw sockets of one test (see helpers.Net), all closed at the end."""
    n = Net()
    try:
        yield n
    finally:
        n.close()
