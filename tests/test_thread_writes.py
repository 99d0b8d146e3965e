"""A lane thread's answer goes to the loop, and the thread goes back to serve others:
it never waits on a client that does not read (Connection.queue_from_thread).

The loop is played by the test thread, so that each test decides when the loop takes
what a thread queued (a real loop may take the answer's head before its body arrives)."""

import queue
import socket
import threading
import time
from types import SimpleNamespace

import pytest

from fazt.server.connection import OUT_HIGH, TASK, WAKE_BYTES, Connection
from fazt.server.loop import Loop
from fazt.server.transport import plain


class PlayedLoop(Loop):
    """A Loop whose calls from other threads wait until the test runs them (`turn`)."""

    def __init__(self):
        super().__init__()
        self.calls: queue.Queue = queue.Queue()

    def call_soon_threadsafe(self, callback, *args) -> None:
        self.calls.put((callback, args))

    def turn(self, wait: float = 0.05) -> bool:
        """Run one call from a thread, if one comes within `wait` seconds."""
        try:
            callback, args = self.calls.get(timeout=wait)
        except queue.Empty:
            return False
        callback(*args)
        return True


@pytest.fixture
def stuck():
    """A connection in the task state whose client reads nothing, its socket full."""
    loop = PlayedLoop()
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    while True:  # what a client that stopped reading leaves: no room in the socket
        try:
            ours.send(b"\0" * 65536)
        except BlockingIOError:
            break
    server = SimpleNamespace(loop=loop, stalled=set(), forget=lambda conn: None)
    conn = Connection(server, ours, ("127.0.0.1", 1), plain(), None)
    conn.state, conn.task_running = TASK, True
    yield conn, loop, peer
    conn.abort()  # lets go of a thread still waiting (a failed test)
    peer.close()
    loop.close()


def test_a_thread_does_not_wait_for_the_client_once_its_answer_is_queued(stuck):
    """The loop took the answer's head (large enough to ring it: many headers) into its
    buffer, which the full socket does not take; then the body comes. The thread queues it
    and returns: it waited for the client to read the head (up to the 60 s write timeout)."""
    conn, loop, _ = stuck
    head_queued, go_on, done = threading.Event(), threading.Event(), threading.Event()

    def task() -> None:
        conn.queue_from_thread(b"H" * WAKE_BYTES)
        head_queued.set()
        go_on.wait(10)
        conn.queue_from_thread(b"B" * (4 * OUT_HIGH))
        done.set()

    threading.Thread(target=task, daemon=True).start()
    assert head_queued.wait(10)
    assert loop.turn(10)  # the loop takes the head; the socket takes none of it
    assert conn.wire and not conn.out
    go_on.set()
    deadline = time.monotonic() + 10
    while not done.is_set() and time.monotonic() < deadline:
        loop.turn()
    assert done.is_set(), "the thread waited for a client that does not read"
    assert conn.out  # the body waits for the loop, held by the connection


def test_a_thread_writing_piece_after_piece_waits_while_too_much_waits(stuck):
    """An application that yields its answer in pieces is held back before each piece
    while more than OUT_HIGH waits for the loop: a client that does not read cannot make
    a generator pile up its whole answer in memory. Once the client reads, it finishes."""
    conn, loop, peer = stuck
    piece, pieces = 32 * 1024, 64
    done = threading.Event()

    def task() -> None:
        for _ in range(pieces):
            conn.queue_from_thread(b"P" * piece)
        done.set()

    threading.Thread(target=task, daemon=True).start()
    most = 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and loop.turn(0.5):  # until the thread stops writing
        most = max(most, conn.queued)
    assert not done.is_set() and most <= OUT_HIGH + piece

    received = []
    reader = threading.Thread(target=lambda: received.append(_read_all(peer)), daemon=True)
    reader.start()
    while not done.is_set() and time.monotonic() < deadline + 10:
        if not loop.turn():
            conn.flush()  # as the loop does when the socket is writable again
        most = max(most, conn.queued)
    assert done.is_set() and most <= OUT_HIGH + piece
    while (conn.out or conn.wire) and time.monotonic() < deadline + 20:
        conn.flush()
    conn.sock.shutdown(socket.SHUT_WR)
    reader.join(10)
    assert received and received[0].endswith(b"P" * piece * pieces)


def _read_all(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(1 << 20):
        data += chunk
    return bytes(data)
