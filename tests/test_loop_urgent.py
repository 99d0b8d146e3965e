"""The loop's urgent events (listeners, the doorbell, the cockpit's connections) are looked
at before every chunk of ordinary ones, and ordinary ones still get every turn's share."""

import selectors
import socket

import pytest

from fazt.server.loop import URGENT_EVERY, Loop


class Recorder:
    """A socket pair's readable end: on each event, note it in `seen` and drain it."""

    def __init__(self, loop: Loop, selector, seen: list, name, then=None):
        self.ours, self.peer = socket.socketpair()
        self.ours.setblocking(False)
        self.seen, self.name, self.then = seen, name, then
        selector.register(self.ours, selectors.EVENT_READ, self)

    def ring(self) -> None:
        self.peer.send(b"x")

    def handle_event(self, mask: int) -> None:
        self.seen.append(self.name)
        self.ours.recv(100)
        if self.then is not None:
            self.then()

    def close(self) -> None:
        self.ours.close()
        self.peer.close()


@pytest.fixture
def loop():
    loop = Loop()
    yield loop
    loop.close()


def test_an_urgent_event_waits_for_one_chunk_not_the_whole_turn(loop):
    seen = []
    urgent = Recorder(loop, loop.urgent, seen, "urgent")
    rung = []

    def ring_once() -> None:  # the first ordinary event handled makes the urgent one ready
        if not rung:
            rung.append(True)
            urgent.ring()

    # As a new connection arriving mid-turn: it is handled before the next chunk of
    # ordinary events, in the same turn, not after all of them.
    ordinary = [Recorder(loop, loop.selector, seen, i, ring_once)
                for i in range(4 * URGENT_EVERY)]
    try:
        for r in ordinary:
            r.ring()
        loop.run_once(timeout=1)
        assert len(seen) == len(ordinary) + 1
        assert seen.index("urgent") == URGENT_EVERY
    finally:
        for r in [urgent, *ordinary]:
            r.close()


def test_busy_urgent_events_leave_ordinary_ones_their_share(loop):
    seen = []
    urgent = Recorder(loop, loop.urgent, seen, "urgent")
    urgent.handle_event = lambda mask: seen.append("urgent")  # never drained: always ready
    urgent.ring()
    ordinary = [Recorder(loop, loop.selector, seen, i) for i in range(3 * URGENT_EVERY)]
    try:
        for r in ordinary:
            r.ring()
        loop.run_once(timeout=1)
        assert sorted(x for x in seen if x != "urgent") == list(range(len(ordinary)))
        assert seen.count("urgent") == 3  # once before each chunk
    finally:
        for r in [urgent, *ordinary]:
            r.close()


def test_a_quiet_loop_wakes_for_an_urgent_event(loop):
    seen = []
    urgent = Recorder(loop, loop.urgent, seen, "urgent")
    try:
        loop.run_once(timeout=0)
        assert seen == []
        urgent.ring()
        loop.run_once(timeout=5)
        assert seen == ["urgent"]
    finally:
        urgent.close()


def test_the_doorbell_is_urgent(loop):
    ran = []
    loop.call_soon_threadsafe(ran.append, 1)
    assert [key.data for key, _ in loop.urgent.select(0)] == [loop]
    loop.run_once(timeout=1)
    assert ran == [1]


def test_a_connection_is_urgent_until_its_first_request_shows_it_is_not_the_cockpits(loop):
    from types import SimpleNamespace

    from fazt.server.connection import READ, Connection
    from fazt.server.transport import plain

    ours, peer = socket.socketpair()
    try:
        conn = Connection(SimpleNamespace(loop=loop), ours, ("127.0.0.1", 1), plain(), None)
        conn._want(READ)  # new: its request may be the owner's
        assert loop.urgent.get_key(ours).data is conn
        conn.target = SimpleNamespace(kind="site")  # its first request was for a site
        conn._want(READ)  # answered at once (the fast path): still read, but not first
        assert loop.selector.get_key(ours).data is conn
        with pytest.raises(KeyError):
            loop.urgent.get_key(ours)
        conn.admin = True  # it spoke to the cockpit: urgent from its next watch on
        conn._want(0)
        conn._want(READ)
        assert loop.urgent.get_key(ours).data is conn
    finally:
        ours.close()
        peer.close()
