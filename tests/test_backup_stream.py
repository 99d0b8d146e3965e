"""`GET /api/backup` is read off the event loop: reader threads read the backup's file,
the loop only sends it, so a backup on a cold disk never stalls other answers.

A server in this process (the one `fazt server start` builds, its loop on a thread of
its own) so that what the loop's thread reads is counted: Linux keeps per thread the
bytes its read system calls returned (/proc/self/task/TID/io, `rchar`)."""

import os
import socket
import sqlite3
import threading
import time

import pytest
from conftest import PASSWORD, USERNAME, zip_of

from fazt.instance import Instance
from fazt.server.boot import bind, make_server
from fazt.vfs import StreamLoop

BULK = 6 * 1024 * 1024  # random bytes deployed, so the backup is several MB


def rchar(tid: int) -> int:
    """Bytes the thread's read system calls returned so far."""
    with open(f"/proc/self/task/{tid}/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


@pytest.fixture
def live(db_path):
    """A booted server in this process; its loop (and the StreamLoop, made on the loop's
    thread as boot makes it) runs on a thread whose id the test knows."""
    instance = Instance(str(db_path)).boot()
    server = make_server(instance)
    sock = bind("127.0.0.1", 0)
    server.listen(sock)
    ready = threading.Event()
    ids = {}

    def run() -> None:
        instance.vfs.loop = StreamLoop(server.loop.wake)
        ids["loop"] = threading.get_native_id()
        ready.set()
        server.run()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10)
    yield sock.getsockname()[1], ids["loop"], db_path
    server.loop.stop()
    thread.join(10)
    server.lanes.shutdown(timeout=5)
    server.close()
    instance.vfs.loop.shutdown()
    instance.close()


def request(port: int, method: str, path: str, host: str, headers: dict | None = None,
            body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in (headers or {}).items())]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    return sock


def head_of(sock: socket.socket) -> tuple[bytes, bytes]:
    """The response head and the body bytes that came with it."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, data
        data += piece
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def whole(sock: socket.socket) -> tuple[bytes, bytes]:
    head, body = head_of(sock)
    while piece := sock.recv(1 << 20):
        body += piece
    sock.close()
    return head, body


def signed_in(port: int) -> dict:
    body = f'{{"username": "{USERNAME}", "password": "{PASSWORD}"}}'.encode()
    head, _ = whole(request(port, "POST", "/api/login", "admin.localhost",
                            {"X-Fazt-Request": "1", "Content-Type": "application/json"}, body))
    assert head.startswith(b"HTTP/1.1 200"), head
    cookie = next(line for line in head.split(b"\r\n")
                  if line.lower().startswith(b"set-cookie: fazt_session="))
    return {"Cookie": cookie.split(b":", 1)[1].split(b";")[0].strip().decode(),
            "X-Fazt-Request": "1"}


def test_the_loop_sends_a_backup_it_never_reads_and_others_are_answered_meanwhile(live):
    port, loop_tid, db_path = live
    session = signed_in(port)
    upload = zip_of({"index.html": "<p>hi</p>", "bulk.bin": os.urandom(BULK)})
    head, _ = whole(request(port, "POST", "/api/deploy?site=live", "admin.localhost",
                            {**session, "Content-Type": "application/zip"}, upload))
    assert head.startswith(b"HTTP/1.1 200"), head

    before = rchar(loop_tid)
    # A slow client: a small receive buffer, read a piece at a time with pauses.
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    slow.settimeout(10)
    slow.connect(("127.0.0.1", port))
    lines = ["GET /api/backup HTTP/1.1", "Host: admin.localhost", "Connection: close",
             f"Cookie: {session['Cookie']}"]
    slow.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head, body = head_of(slow)
    assert head.startswith(b"HTTP/1.1 200"), head
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    size = int(headers[b"Content-Length"])
    assert size > BULK
    assert headers[b"Content-Type"] == b"application/vnd.sqlite3"
    assert headers[b"Content-Disposition"].startswith(b'attachment; filename="fazt-backup-')
    assert not list(db_path.parent.glob("*.backup-*"))  # unlinked while it is sent

    # While the backup trickles out, a static answer comes at once, each time.
    while len(body) < size // 2:
        body += slow.recv(65536)
        started = time.monotonic()
        got = {}
        asker = threading.Thread(target=lambda answers: answers.update(
            answer=whole(request(port, "GET", "/", "live.localhost"))), args=(got,),
            daemon=True)
        asker.start()
        asker.join(5)
        assert got, "a static request waited on a backup being downloaded"
        assert got["answer"][0].startswith(b"HTTP/1.1 200") and got["answer"][1] == b"<p>hi</p>"
        assert time.monotonic() - started < 5
        time.sleep(0.01)
    while piece := slow.recv(1 << 20):
        body += piece
    slow.close()
    assert len(body) == size

    # The loop's thread sent the backup; it read next to none of it.
    read_on_loop = rchar(loop_tid) - before
    assert read_on_loop < size // 10, f"the loop's thread read {read_on_loop} bytes of {size}"

    out = db_path.parent / "downloaded.db"
    out.write_bytes(body)
    with sqlite3.connect(out) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT 1 FROM sites WHERE name = 'live'").fetchone()
    assert not list(db_path.parent.glob("*.backup-*"))
