"""Large files as chunk streams: byte-exact on the loop's path (read ahead by reader
threads) and on a worker's, whole or by Range, through a real server too."""

import hashlib
import os
import resource
import threading

import pytest
from conftest import Server, eventually, fazt, init_db

from fazt import vfs
from fazt.heap import keep_free_heap
from fazt.store.database import create_database
from fazt.store.files import CHUNK_SIZE, put_blob, read_chunks
from fazt.vfs import (
    HEAP_KEEP_FACTOR,
    READ_AHEAD,
    READ_AHEAD_MB,
    ChunkStream,
    FileStream,
    StreamLoop,
)

SIZE = 9 * CHUNK_SIZE + 12345  # ten chunks, the last one short


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    db = create_database(str(tmp_path_factory.mktemp("streams") / "fazt.db"))
    data = os.urandom(SIZE)
    with db.write() as conn:
        blob = put_blob(conn, [data[i:i + 100_000] for i in range(0, SIZE, 100_000)])
    yield db, blob.id, data
    db.close()


class Loop:
    """The event loop's side, played by the test thread: it drains a stream as a
    socket would and sleeps whenever the stream says its next chunk is not here."""

    def __init__(self):
        self.rang = threading.Event()
        self.stream_loop = StreamLoop(self.rang.set)
        self.sleeps = 0

    def drain(self, stream: ChunkStream, piece: int, rewind: bool = False) -> bytes:
        out = bytearray()
        while True:
            if rewind:  # Waitress reads, then seeks back and skips what the socket took
                at = stream.tell()
                stream.read(piece)
                stream.seek(at)
            data = stream.read(piece)
            if data:
                out += data
                continue
            if not stream.waiting:
                return bytes(out)
            self.sleeps += 1
            assert self.rang.wait(10), "the reader never rang the loop"
            self.rang.clear()


@pytest.mark.parametrize("start,end", [
    (0, SIZE), (0, 1), (CHUNK_SIZE - 1, CHUNK_SIZE + 1), (5, 3 * CHUNK_SIZE),
    (4 * CHUNK_SIZE, SIZE), (SIZE - 7, SIZE), (CHUNK_SIZE * 2 + 17, CHUNK_SIZE * 7 - 3),
])
@pytest.mark.parametrize("piece", [1000, CHUNK_SIZE, 3 * CHUNK_SIZE])
def test_the_loop_gets_exactly_the_range(stored, start, end, piece):
    db, blob_id, data = stored
    loop = Loop()
    stream = ChunkStream(db, blob_id, start, end, loop.stream_loop)
    try:
        assert loop.drain(stream, piece, rewind=piece == 1000) == data[start:end]
    finally:
        stream.close()
        loop.stream_loop.shutdown()


@pytest.mark.parametrize("start,end", [
    (0, SIZE), (0, 1), (CHUNK_SIZE - 1, CHUNK_SIZE + 1), (SIZE - 7, SIZE),
    (CHUNK_SIZE * 2 + 17, CHUNK_SIZE * 7 - 3),
])
@pytest.mark.parametrize("limit", [1000, CHUNK_SIZE + 1, 4 * CHUNK_SIZE])
def test_views_offer_several_chunks_and_advance_by_what_was_sent(stored, start, end, limit):
    """The loop's sendmsg path: views of the chunks held, of which a socket takes any
    part (here a third, at least a byte); the rest is offered again."""
    db, blob_id, data = stored
    loop = Loop()
    stream = ChunkStream(db, blob_id, start, end, loop.stream_loop)
    out = bytearray()
    most = 0
    try:
        while True:
            views = stream.views(limit)
            if not views:
                if not stream.waiting:
                    break
                assert loop.rang.wait(10), "the reader never rang the loop"
                loop.rang.clear()
                continue
            offered = b"".join(views)
            assert 0 < len(offered) <= limit
            most = max(most, len(views))
            sent = max(1, len(offered) // 3)
            out += offered[:sent]
            stream.advance(sent)
        assert bytes(out) == data[start:end]
        if limit > CHUNK_SIZE and end - start > 2 * CHUNK_SIZE:
            assert most > 1  # chunks read ahead go out in the same send
    finally:
        stream.close()
        loop.stream_loop.shutdown()


def test_a_worker_thread_reads_directly(stored):
    db, blob_id, data = stored
    stream = ChunkStream(db, blob_id, 100, SIZE - 100)  # no loop: read where asked
    got = b"".join(iter(lambda: bytes(stream.read(70_000)), b""))
    assert got == data[100:SIZE - 100] and not stream.waiting
    stream.seek(CHUNK_SIZE)
    assert stream.read(10) == data[100 + CHUNK_SIZE:110 + CHUNK_SIZE]


def test_chunks_are_read_ahead_and_memory_stays_bounded(stored):
    db, blob_id, data = stored
    loop = Loop()
    stream = ChunkStream(db, blob_id, 0, SIZE, loop.stream_loop)
    try:
        held = []
        out = bytearray()
        while len(out) < SIZE:
            piece = stream.read(CHUNK_SIZE)
            if not piece:
                assert loop.rang.wait(10)
                loop.rang.clear()
                continue
            out += piece
            held.append(len(stream._ready))
            # a slow client: the readers fill what lies ahead, then stop
            assert len(stream._ready) <= READ_AHEAD + 1
        assert bytes(out) == data
        assert max(held) >= 1  # something was waiting when the loop came back
    finally:
        stream.close()
        loop.stream_loop.shutdown()


def test_a_missing_chunk_ends_the_stream_with_an_error(stored):
    db, _, _ = stored
    loop = Loop()
    stream = ChunkStream(db, 987654, 0, SIZE, loop.stream_loop)  # no such blob
    try:
        with pytest.raises(LookupError):
            loop.drain(stream, CHUNK_SIZE)
    finally:
        stream.close()
        loop.stream_loop.shutdown()


def test_closing_while_a_reader_is_busy_is_quiet(stored):
    db, blob_id, _ = stored
    loop = Loop()
    for _ in range(20):
        stream = ChunkStream(db, blob_id, 0, SIZE, loop.stream_loop)
        assert stream.read(10) == b"" and stream.waiting
        stream.close()
    loop.stream_loop.shutdown()


def test_ranges_of_a_large_file_through_a_real_server(tmp_path):
    db = init_db(tmp_path / "data.db")
    fazt("config", "set", "large_file_mb", "1", "--db", str(db))
    root = tmp_path / "big"
    root.mkdir()
    data = os.urandom(3 * (1 << 20) + 4321)
    (root / "file.bin").write_bytes(data)
    fazt("deploy", str(root), "--site", "big", "--db", str(db))
    with Server.running(db) as srv:
        whole = srv.get("/file.bin", host="big.localhost")
        assert whole.status_code == 200
        assert hashlib.sha256(whole.content).digest() == hashlib.sha256(data).digest()
        size = len(data)
        for header, (start, end) in [("bytes=0-0", (0, 1)),
                                     ("bytes=262143-262144", (262143, 262145)),
                                     ("bytes=1000000-", (1000000, size)),
                                     ("bytes=-5000", (size - 5000, size))]:
            r = srv.get("/file.bin", host="big.localhost", headers={"Range": header})
            assert r.status_code == 206, header
            assert r.headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}"
            assert r.content == data[start:end], header
        r = srv.get("/file.bin", host="big.localhost", headers={"Range": f"bytes={size}-"})
        assert r.status_code == 416


def test_read_ahead_is_shared_between_streams(stored):
    db, blob_id, data = stored
    loop = Loop()
    loop.stream_loop.ahead_limit = CHUNK_SIZE  # room for one chunk read ahead, in all
    streams = [ChunkStream(db, blob_id, 0, SIZE, loop.stream_loop) for _ in range(3)]
    try:
        outs = [bytearray() for _ in streams]
        peak = 0
        while any(len(o) < SIZE for o in outs):
            moved = False
            for stream, out in zip(streams, outs, strict=True):
                piece = stream.read(CHUNK_SIZE)
                if piece:
                    out += piece
                    moved = True
                peak = max(peak, loop.stream_loop.ahead)
            if not moved:
                assert loop.rang.wait(10)
                loop.rang.clear()
        assert all(bytes(o) == data for o in outs)
        assert peak <= CHUNK_SIZE
    finally:
        for stream in streams:
            stream.close()
    assert eventually(lambda: loop.stream_loop.ahead == 0)  # every reservation given back
    loop.stream_loop.shutdown()


def test_chunk_pages_are_reused_not_faulted_in_again():
    """heap.py: streams allocate and free chunks all the time; with glibc's defaults each
    few chunks freed went back to the kernel and came back as page faults."""
    if not keep_free_heap(HEAP_KEEP_FACTOR * READ_AHEAD_MB * 1024 * 1024):
        pytest.skip("not glibc: no mallopt")

    def churn() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(50):
            chunks = [b"x" * CHUNK_SIZE for _ in range(READ_AHEAD + 1)]
            del chunks
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    churn()  # the first round faults the heap in
    pages = 50 * (READ_AHEAD + 1) * CHUNK_SIZE // 4096
    assert churn() < pages // 20


def test_each_stream_keeps_the_least_busy_reader(stored):
    """One stream's chunks all come from one reader thread (one malloc arena), and
    downloads one after another reuse the same one."""
    db, blob_id, _ = stored
    loop = Loop()
    try:
        first = ChunkStream(db, blob_id, 0, SIZE, loop.stream_loop)
        second = ChunkStream(db, blob_id, 0, SIZE, loop.stream_loop)
        assert first._reader != second._reader
        first.close()
        first.close()  # closing twice gives the reader back once
        assert loop.stream_loop._streams == [0, 1]
        third = ChunkStream(db, blob_id, 0, SIZE, loop.stream_loop)
        assert third._reader == first._reader
        second.close()
        third.close()
        assert loop.stream_loop._streams == [0, 0]
    finally:
        loop.stream_loop.shutdown()


def test_read_chunks_hands_each_chunk_over_as_it_is_read(stored):
    """A stream's reader hands chunks to the loop one by one, in one short transaction,
    and stops early (ending the transaction) when the stream is gone."""
    db, blob_id, data = stored
    got = []

    def take(n: int, chunk: bytes) -> bool:
        got.append((n, chunk))
        return len(got) < 3

    with db.read() as conn:
        assert read_chunks(conn, blob_id, 2, 7, take) == []
        assert not conn.in_transaction
    assert [n for n, _ in got] == [2, 3, 4]
    assert b"".join(c for _, c in got) == data[2 * CHUNK_SIZE:5 * CHUNK_SIZE]


def test_the_reader_reads_on_without_the_loop(stored):
    """Once the loop has asked, the reader fetches batch after batch by itself (the loop
    never waits for a read it could have had started earlier), and stops at the window."""
    db, blob_id, data = stored
    loop = Loop()
    loop.stream_loop.ahead_limit = 6 * CHUNK_SIZE  # a window of 6 chunks: batches of 3
    stream = ChunkStream(db, blob_id, 0, SIZE, loop.stream_loop)
    try:
        assert loop.stream_loop.window() == 6
        while not stream.read(1):  # the loop asks once, waits, and takes chunk 0
            assert loop.rang.wait(10)
            loop.rang.clear()
        # Chunks 0-2 were asked for, 3-5 followed unasked; 6-8 would pass the window.
        assert eventually(lambda: stream._fetching is None and
                          sorted(stream._ready) == [1, 2, 3, 4, 5])
        assert loop.stream_loop.ahead == 5 * CHUNK_SIZE
        stream.seek(2 * CHUNK_SIZE)
        assert stream.read(10) == data[2 * CHUNK_SIZE:2 * CHUNK_SIZE + 10]  # chunk 2: 6-8 next
        assert eventually(lambda: stream._fetching is None and max(stream._ready) == 8)
        assert loop.stream_loop.ahead <= loop.stream_loop.ahead_limit
        assert loop.drain(stream, CHUNK_SIZE) == data[2 * CHUNK_SIZE + 10:]
    finally:
        stream.close()
        loop.stream_loop.shutdown()


def test_streams_share_the_read_ahead_fairly(stored):
    """A stream's window is its share of the shared limit: the first download of two does
    not take it all and leave the second none."""
    db, blob_id, data = stored
    loop = Loop()
    loop.stream_loop.ahead_limit = 8 * CHUNK_SIZE
    first = ChunkStream(db, blob_id, 0, SIZE, loop.stream_loop)
    second = ChunkStream(db, blob_id, 0, SIZE, loop.stream_loop)
    try:
        assert loop.stream_loop.window() == 4
        for stream in (first, second):
            while not stream.read(1):
                assert loop.rang.wait(10)
                loop.rang.clear()
        for stream in (first, second):
            assert eventually(lambda s=stream: s._fetching is None and len(s._ready) >= 2)
            assert max(stream._ready) <= 4  # past chunk 0: its window, not the whole limit
        assert loop.stream_loop.ahead <= 8 * CHUNK_SIZE
        assert loop.drain(first, CHUNK_SIZE) == data[1:]
        assert loop.drain(second, 3 * CHUNK_SIZE) == data[1:]
    finally:
        first.close()
        second.close()
        loop.stream_loop.shutdown()


def test_seeks_on_the_loop_path_read_from_the_new_place(stored):
    """Back into chunks already sent and forward past the read-ahead: the bytes are the
    file's, and what was read ahead for the old place is given back."""
    db, blob_id, data = stored
    loop = Loop()
    stream = ChunkStream(db, blob_id, 0, SIZE, loop.stream_loop)
    try:
        assert loop.drain(stream, CHUNK_SIZE) == data  # to the end, read ahead on the way
        for at in (100, 3 * CHUNK_SIZE + 5, SIZE - 3, CHUNK_SIZE, 0):
            stream.seek(at)
            out = bytearray()
            while len(out) < min(3 * CHUNK_SIZE, SIZE - at):
                piece = stream.read(70_000)
                if not piece:
                    assert stream.waiting and loop.rang.wait(10)
                    loop.rang.clear()
                    continue
                out += piece
            assert bytes(out) == data[at:at + len(out)], at
    finally:
        stream.close()
        loop.stream_loop.shutdown()
    assert eventually(lambda: loop.stream_loop.ahead == 0)


@pytest.mark.parametrize("after", [0, 1, 2 * CHUNK_SIZE])
def test_a_closed_stream_gives_its_read_ahead_back(stored, after):
    """Closed before its first chunk came, while its reader is mid-read, or with chunks
    read ahead: nothing of the shared limit stays held, and no read starts after."""
    db, blob_id, _ = stored
    loop = Loop()
    stream = ChunkStream(db, blob_id, 0, SIZE, loop.stream_loop)
    try:
        got = 0
        while got < after:
            piece = stream.read(after - got)
            if not piece:
                assert loop.rang.wait(10)
                loop.rang.clear()
            got += len(piece)
        if not after:
            assert stream.read(1) == b"" and stream.waiting  # its first read is on the way
        stream.close()
        assert eventually(lambda: stream._fetching is None and loop.stream_loop.ahead == 0)
        assert not stream._ready
    finally:
        loop.stream_loop.shutdown()


def test_a_download_asks_for_the_send_buffer_its_link_needs():
    """stream_sndbuf: the bandwidth-delay product from the kernel's round trip, between
    STREAM_SNDBUF_LEAST (loopback: bytes left waiting in a socket go cold in the cache)
    and STREAM_SNDBUF (the ledger's figure); STREAM_SNDBUF when the kernel does not say."""
    import socket
    import struct

    from fazt.server import connection as cn

    with socket.create_server(("127.0.0.1", 0)) as listener:
        with socket.create_connection(listener.getsockname()) as client:
            served, _ = listener.accept()
            with served:
                client.sendall(b"GET / HTTP/1.1\r\n\r\n")
                served.recv(100)
                served.sendall(b"x" * 10000)
                client.recv(10000)
                # Loopback's round trip is tens of microseconds, a few hundred on a busy
                # host (145 µs seen in CI): near the floor, far below the ledger's bound.
                assert cn.STREAM_SNDBUF_LEAST <= cn.stream_sndbuf(served) < cn.STREAM_SNDBUF
    left, right = socket.socketpair()  # not TCP: no round trip to go by
    with left, right:
        assert cn.stream_sndbuf(left) == cn.STREAM_SNDBUF

    class Link:
        def __init__(self, rtt_us: int):
            self.info = bytearray(104)
            struct.pack_into("I", self.info, cn._TCPI_RTT, rtt_us)

        def getsockopt(self, *args):
            return bytes(self.info)

    assert cn.stream_sndbuf(Link(200)) == 200 * cn.STREAM_RATE // 1_000_000  # a LAN
    assert cn.STREAM_SNDBUF_LEAST < cn.stream_sndbuf(Link(200)) < cn.STREAM_SNDBUF
    assert cn.stream_sndbuf(Link(40_000)) == cn.STREAM_SNDBUF  # across the internet


def test_a_file_stream_is_read_and_closed_by_readers_never_by_the_loop(tmp_path, monkeypatch):
    """A plain file (a backup) as a stream: the bytes exact, every read and the close of
    its descriptor on a reader thread, none on the loop's."""
    data = os.urandom(SIZE)
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    readers = []
    pread = os.pread
    monkeypatch.setattr(vfs.os, "pread", lambda fd, n, at: (
        readers.append(threading.get_ident()), pread(fd, n, at))[1])
    loop = Loop()
    file = open(path, "rb")
    os.unlink(path)
    closed = threading.Event()
    real_close = file.close
    closers = []

    class Watched:  # a file whose close says which thread closed it
        fileno = file.fileno

        def close(self):
            closers.append(threading.get_ident())
            real_close()
            closed.set()

    stream = FileStream(Watched(), loop.stream_loop)
    try:
        assert loop.drain(stream, CHUNK_SIZE) == data
        stream.close()
        assert closed.wait(10)
    finally:
        stream.close()
        loop.stream_loop.shutdown()
    me = threading.get_ident()
    assert readers and me not in readers and closers and me not in closers
    assert file.closed


def test_a_file_stream_off_the_loop_reads_directly(tmp_path):
    data = os.urandom(3 * CHUNK_SIZE + 5)
    path = tmp_path / "file.bin"
    path.write_bytes(data)
    file = open(path, "rb")
    stream = FileStream(file)
    assert stream.read(10) == data[:10]
    assert stream.read() + stream.read() + stream.read() + stream.read() == data[10:]
    stream.close()
    assert file.closed
