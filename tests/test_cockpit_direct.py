"""A cockpit task sends its own answer (Connection.send_from_thread), and never where it
must not: on a connection the loop closed, over bytes of an earlier answer still waiting,
or for a stream. Driven on a socket pair, without a loop thread."""

import selectors
import socket
from types import SimpleNamespace

import pytest

from fazt.server.connection import TASK, WAKE_BYTES, Connection
from fazt.server.transport import plain


class Server:
    """What a Connection asks of its server on these paths."""

    def __init__(self):
        self.loop = SimpleNamespace(selector=selectors.DefaultSelector(),
                                    urgent=selectors.DefaultSelector(),
                                    call_soon_threadsafe=lambda *a: None)
        self.stalled = set()
        self.admission = SimpleNamespace(is_closable=lambda conn: True)

    def forget(self, conn):
        pass


@pytest.fixture
def pair():
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(5)
    yield ours, peer
    ours.close()
    peer.close()


def in_task(sock) -> Connection:
    """A connection whose request a lane thread is running, as `dispatch` leaves it."""
    conn = Connection(Server(), sock, ("127.0.0.1", 1), plain(), None)
    conn.state = TASK
    conn.task_running = True
    conn.direct = not (conn.wire or conn.out)
    return conn


def test_the_answer_goes_out_from_the_thread(pair):
    ours, peer = pair
    conn = in_task(ours)
    conn.queue_from_thread(b"HTTP/1.1 200 OK\r\n")
    conn.queue_from_thread(b"Content-Length: 0\r\n\r\n")
    conn.send_from_thread()
    assert peer.recv(100) == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    assert not conn.out and not conn.wire and conn.queued == 0
    conn.send_from_thread()  # once per task: the flag is spent
    assert not conn.direct


def test_never_on_a_connection_the_loop_closed(pair):
    ours, peer = pair
    conn = in_task(ours)
    conn.queue_from_thread(b"late answer")
    conn.abort()  # the loop gave up on it (a timeout, shutdown)
    # Its descriptor number is free: the next socket may well get it.
    reused, reused_peer = socket.socketpair()
    try:
        reused_peer.setblocking(False)
        conn.send_from_thread()
        with pytest.raises(BlockingIOError):
            reused_peer.recv(100)
        assert peer.recv(100) == b""  # the client saw the close, and nothing else
    finally:
        reused.close()
        reused_peer.close()


def test_an_earlier_answer_still_waiting_keeps_the_order(pair):
    ours, peer = pair
    conn = Connection(Server(), ours, ("127.0.0.1", 1), plain(), None)
    conn.wire = b"rest of the first answer"  # the client had not taken it all
    conn.state, conn.task_running = TASK, True
    conn.direct = not (conn.wire or conn.out)
    conn.queue_from_thread(b"second answer")
    conn.send_from_thread()
    assert conn.out  # left for the loop, which sends the first answer's rest first
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)


def test_a_stream_or_a_large_answer_stays_with_the_loop(pair):
    ours, _ = pair
    conn = in_task(ours)
    conn.out.append(SimpleNamespace(remain=10, close=lambda: None))  # a file wrapper
    conn.send_from_thread()
    assert len(conn.out) == 1 and conn.direct
    conn = in_task(ours)
    conn.queue_from_thread(b"x" * WAKE_BYTES)  # the loop was rung: it may be sending
    conn.send_from_thread()
    assert conn.out and conn.queued == WAKE_BYTES


def test_what_the_socket_does_not_take_is_left_for_the_loop(pair):
    ours, peer = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    conn = in_task(ours)
    answer = bytes(range(256)) * 200  # 51,200 bytes: below WAKE_BYTES, above the buffer
    conn.queue_from_thread(answer)
    conn.send_from_thread()
    assert conn.wire and not conn.out and len(conn.wire) < len(answer)
    received = b""
    while len(received) < len(answer):
        received += peer.recv(65536)
        conn.flush()  # as the loop does when the socket drains
    assert received == answer and not conn.wire
