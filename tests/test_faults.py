"""Fault injection: killed processes, a full disk, a locked database, hostile clients."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import (
    Admin,
    DatabaseLock,
    Server,
    eventually,
    fazt,
    fazt_env,
    free_port,
    init_db,
    zip_of,
)


def _integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.005)
    assert proc.poll() is None, "the process finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


CONFIG_LOOP = """
import sys
from fazt.instance import machine_for, update_config
from fazt.stability import thresholds as th
from fazt.store import open_database
from fazt.store.config import load_config
db = open_database(sys.argv[1])
with db.read() as conn:
    config = {**th.defaults(), **load_config(conn)}
machine = machine_for(config, db.path)
i = 0
while True:
    i += 1
    update_config(db, machine, {"vfs_cache_mb": 10 + i % 50, "js_timeout_ms": 1000 + i % 500})
    if i == 200:
        print("ready", flush=True)  # and it goes on writing until it is killed
"""


def test_sigkill_during_config_writes(db_path):
    proc = subprocess.Popen([sys.executable, "-c", CONFIG_LOOP, str(db_path)], env=fazt_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"  # 200 write transactions have run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _integrity(db_path) == "ok"
    out = fazt("config", "get", "vfs_cache_mb", "--db", str(db_path)).stdout
    assert 10 <= int(out) < 60
    with Server.running(db_path) as srv:
        assert srv.get("/_fazt/health").status_code == 200


def test_sigkill_during_backup_leaves_nothing_half_written(tmp_path):
    db = init_db(tmp_path / "data.db")
    root = tmp_path / "site"
    root.mkdir()
    for i in range(60):
        (root / f"f{i}.bin").write_bytes(os.urandom(1 << 20))
    fazt("deploy", str(root), "--site", "big", "--db", str(db))
    out = tmp_path / "backup.db"
    proc = subprocess.Popen([sys.executable, "-m", "fazt", "backup", str(out), "--db", str(db)],
                            env=fazt_env(), stdout=subprocess.DEVNULL)
    partial = Path(str(out) + ".partial")
    _kill_when(proc, lambda: partial.exists() and partial.stat().st_size > 5 << 20)
    assert not out.exists() or _integrity(out) == "ok"
    assert _integrity(db) == "ok"
    fazt("backup", str(out), "--db", str(db))  # the next backup succeeds and cleans up
    assert _integrity(out) == "ok" and not partial.exists()


def _mount_tmpfs(where: Path, size_mb: int) -> bool:
    where.mkdir()
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
                          capture_output=True)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """`small_disk(size_mb)`: a tmpfs that small, unmounted after the test (which is skipped
    where one cannot be mounted)."""
    mounted: list[Path] = []

    def mount(size_mb: int) -> Path:
        where = tmp_path / f"small{len(mounted)}"
        if not _mount_tmpfs(where, size_mb):
            pytest.skip("cannot mount a small tmpfs here")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_disk_full_during_deploy_keeps_the_old_version(tmp_path, small_disk):
    small = small_disk(24)
    db = init_db(small / "data.db")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("old version")
    fazt("deploy", str(site), "--site", "blog", "--db", str(db))
    for i in range(40):
        (site / f"f{i}.bin").write_bytes(os.urandom(1 << 20))
    (site / "index.html").write_text("new version")
    result = fazt("deploy", str(site), "--site", "blog", "--db", str(db), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "nothing changed" in result.stderr
    assert _integrity(db) == "ok"
    with Server.running(db) as srv:
        assert srv.get("/", host="blog.localhost").text == "old version"


@pytest.mark.parametrize("where", ["missing folder", "a folder", "full disk"])
def test_a_backup_that_cannot_be_written_says_why_and_leaves_nothing(tmp_path, where,
                                                                    small_disk):
    db = init_db(tmp_path / "data.db")
    site = tmp_path / "site"
    site.mkdir()
    (site / "big.bin").write_bytes(os.urandom(1 << 20) * 8)
    fazt("deploy", str(site), "--site", "blog", "--db", str(db))
    if where == "missing folder":
        out = tmp_path / "no" / "such" / "backup.db"
    elif where == "a folder":
        out = tmp_path / "folder"
        out.mkdir()
    else:
        out = small_disk(2) / "backup.db"
    result = fazt("backup", str(out), "--db", str(db), check=False)
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    assert f"Could not write the backup to {out}" in result.stderr
    if where == "a folder":
        assert out.is_dir() and not any(out.iterdir())
    else:
        assert not out.exists()
    assert not Path(str(out) + ".partial").exists()
    assert _integrity(db) == "ok"


def test_a_full_disk_under_the_log_and_the_database_still_serves(tmp_path, small_disk):
    """The deploy leaves no room at all on the disk that holds the database and the
    server's log: the server starts and serves anyway (its lines are dropped), a cockpit
    backup is a 503 that says why and leaves nothing behind, and it stops cleanly."""
    small = small_disk(24)
    db = init_db(small / "data.db")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("still here")
    (site / "api").mkdir()
    (site / "api" / "main.js").write_text(
        'function handler(request) { fazt.kv.set("n", 1); return {body: "kept"}; }')
    for i in range(14):  # the database and its WAL fill the 24 MB
        (site / f"f{i}.bin").write_bytes(os.urandom(1 << 20))
    fazt("deploy", str(site), "--site", "blog", "--db", str(db))
    assert os.statvfs(small).f_bavail * os.statvfs(small).f_frsize < 1 << 20
    srv = Server(db)  # its log is on the full disk: db.parent
    try:
        assert srv.get("/", host="blog.localhost").text == "still here"
        admin = Admin(srv)
        r = admin.get("/api/backup")
        assert r.status_code == 503, r.status_code
        assert "Could not write the backup" in r.json()["error"]["message"]
        assert not [p.name for p in small.iterdir() if ".backup-" in p.name]
        # Writes say why they wrote nothing; an upload is answered, never reset.
        r = admin.put("/api/config", json={"vfs_cache_mb": 50})
        assert r.status_code == 503 and "disk is full" in r.json()["error"]["message"]
        r = srv.get("/api/x", host="blog.localhost")
        assert r.status_code == 500 and "kv.set: The disk is full" in r.text
        upload = zip_of({"index.html": os.urandom(100_000)})  # spooled: over 16 KiB
        r = admin.post("/api/deploy?site=other", data=upload,
                       headers={"Content-Type": "application/zip"})
        assert r.status_code == 503 and "no room" in r.json()["error"]["message"], r.text
        admin.status()  # the cockpit answers on
        assert srv.get("/f3.bin", host="blog.localhost").content == \
            (site / "f3.bin").read_bytes()
    finally:
        assert srv.stop() == 0
    assert _integrity(db) == "ok"


def test_init_on_a_full_disk_says_so_and_leaves_nothing_in_the_way(tmp_path, small_disk):
    small = small_disk(1)
    filler = small / "filler"
    filler.write_bytes(bytes(900_000))
    db = small / "data.db"
    args = ("server", "init", "--db", str(db), "--domain", "localhost",
            "--username", "admin", "--password", "change-me-now")
    result = fazt(*args, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"Could not create the database at {db}" in result.stderr
    assert sorted(p.name for p in small.iterdir()) == ["filler"]
    filler.unlink()  # room again: the next init is not refused by a half-made file
    fazt(*args)
    assert _integrity(db) == "ok"


def test_started_with_its_standard_descriptors_closed_it_serves(db_path):
    """`fazt server start <&- >&- 2>&-`: Python then has no stderr, and the first sockets
    would take descriptors 0-2, where C code writes its messages. /dev/null takes them."""

    def close_standard():
        for fd in (0, 1, 2):
            os.close(fd)

    with Server.running(db_path, preexec=close_standard) as srv:
        assert srv.get("/_fazt/health").status_code == 200
        Admin(srv).status()
        for fd in (0, 1, 2):
            assert os.readlink(f"/proc/{srv.proc.pid}/fd/{fd}") == os.devnull
        assert srv.get("/nope", host="admin.localhost").status_code in (401, 404)


def test_a_disk_that_refuses_writes_is_a_503_and_serving_goes_on(tmp_path, site_dir):
    """The database's files turn immutable under a running server (`chattr +i`, which root
    obeys too): a write fails inside SQLite with "disk I/O error". It is a 503 that says
    so, reads go on, and writes work again once the disk takes them."""
    db = init_db(tmp_path / "data.db")
    fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db))
    files = [str(db), str(db) + "-wal"]
    with Server.running(db) as srv:
        admin = Admin(srv)
        if subprocess.run(["chattr", "+i", *files], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available on this filesystem")
        try:
            r = admin.put("/api/config", json={"vfs_cache_mb": 50})
            assert r.status_code == 503, r.text
            assert "refused a write" in r.json()["error"]["message"]
            assert admin.get("/api/sites").status_code == 200
            assert srv.get("/", host="blog.localhost").status_code == 200
        finally:
            subprocess.run(["chattr", "-i", *files], capture_output=True)
        assert admin.put("/api/config", json={"vfs_cache_mb": 50}).status_code == 200
    assert _integrity(db) == "ok"


def test_locked_database_with_downloads_in_flight(tmp_path):
    """Another process locks the whole database while large downloads run: the cockpit
    answers throughout (4 s of it), sites answer 503 or wait, and nothing hangs."""
    db = init_db(tmp_path / "data.db")
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("hi")
    (root / "big.bin").write_bytes(os.urandom(1 << 20) * 30)
    fazt("deploy", str(root), "--site", "big", "--db", str(db))
    with Server.running(db) as srv:
        admin = Admin(srv)
        stop_reading = threading.Event()
        received = [0, 0, 0]

        def download(i: int) -> None:  # a reader as fast as the socket, so chunks are
            s = socket.create_connection(("127.0.0.1", srv.port))  # fetched during the lock
            s.settimeout(1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            s.sendall(b"GET /big.bin HTTP/1.1\r\nHost: big.localhost\r\n\r\n")
            while not stop_reading.is_set():
                try:
                    piece = s.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not piece:
                    break
                received[i] += len(piece)
                time.sleep(0.01)  # about 6 MB/s: still going when the lock starts
            s.close()

        readers = [threading.Thread(target=download, args=(i,)) for i in range(3)]
        for t in readers:
            t.start()
        assert eventually(lambda: all(received), timeout=30)
        lock = DatabaseLock(db, 10)
        began = time.time()
        site_results = []

        def fetch_site():
            t = time.time()
            try:
                r = srv.get("/", host="big.localhost", timeout=20)
                site_results.append((r.status_code, time.time() - t, r.headers.get("Retry-After")))
            except Exception as exc:  # noqa: BLE001 - recorded, asserted below
                site_results.append((repr(exc), time.time() - t, None))

        site_thread = threading.Thread(target=fetch_site)
        site_thread.start()
        worst = 0.0
        while time.time() - began < 4:
            t = time.time()
            assert admin.get("/").status_code == 200
            assert admin.get("/api/system/status").status_code == 200
            worst = max(worst, time.time() - t)
            time.sleep(0.2)
        assert worst < 1.0, f"the cockpit took {worst:.2f} s while the database was locked"
        lock.close()
        site_thread.join(timeout=30)
        status, took, retry = site_results[0]
        assert status in (200, 503), status
        assert took < 15
        if status == 503:
            assert retry
        assert srv.get("/", host="big.localhost").text == "hi"  # back once the lock is gone
        stop_reading.set()
        for t in readers:
            t.join(timeout=30)
        assert all(n > 0 for n in received)
        assert srv.get("/big.bin", host="big.localhost").content == (root / "big.bin").read_bytes()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One server for the hostile-client tests: none changes a setting, each must leave it
    answering for the next."""
    db = init_db(tmp_path_factory.mktemp("faults") / "data.db")
    with Server.running(db) as srv:
        yield srv


def test_slowloris_and_huge_headers_do_not_starve_the_cockpit(server):
    crowd = []
    try:
        for _ in range(150):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: x.localhost\r\n")
            crowd.append(s)
        for _ in range(3):  # keep trickling header bytes
            for s in crowd:
                try:
                    s.sendall(b"X-a: b\r\n")
                except OSError:
                    pass
            t = time.time()
            r = server.get("/_fazt/health", host="admin.localhost", timeout=5)
            assert r.status_code == 200 and time.time() - t < 2
            time.sleep(0.5)
        big = socket.create_connection(("127.0.0.1", server.port))
        big.sendall(b"GET / HTTP/1.1\r\nHost: admin.localhost\r\nX-Big: " + b"a" * 100_000
                    + b"\r\n\r\n")
        answer = big.recv(4096)
        assert answer.split(b" ")[1] in (b"431", b"400"), answer[:80]
        big.close()
    finally:
        for s in crowd:
            s.close()
    assert server.get("/_fazt/health", host="admin.localhost").status_code == 200


def test_malformed_http_is_rejected(server):
    for junk in (b"BLAH\r\n\r\n", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
                 b"GET / HTTP/1.1\r\nHost: a.localhost\r\nContent-Length: -5\r\n\r\n",
                 b"\x00\xff\x10garbage\r\n\r\n"):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.settimeout(5)
        s.sendall(junk)
        answer = s.recv(4096)
        s.close()
        assert answer == b"" or answer.split(b" ")[1][:1] == b"4", answer[:80]
    assert server.get("/_fazt/health").status_code == 200


def test_hostile_uploads_are_rejected_with_flat_memory(server):
    admin = Admin(server)
    good = zip_of({"index.html": b"first"})
    assert admin.post("/api/deploy?site=shop", data=good).status_code == 200
    rss = psutil.Process(server.proc.pid).memory_info().rss

    traversal = zip_of({"../../evil.txt": b"x", "index.html": b"bad"})
    r = admin.post("/api/deploy?site=shop", data=traversal)
    assert r.status_code == 400 and r.json()["error"]["message"]

    bomb = zip_of({"index.html": b"bomb", "zeros.bin": b"\0" * (400 << 20)})
    r = admin.post("/api/deploy?site=shop", data=bomb, timeout=120)
    assert r.status_code == 413

    r = admin.post("/api/deploy?site=shop", data=b"this is not a zip")
    assert r.status_code == 400

    # 1 GB announced, over max_upload_mb: refused before the body is read
    s = socket.create_connection(("127.0.0.1", server.port))
    s.settimeout(10)
    cookie = "; ".join(f"{c.name}={c.value}" for c in admin.session.cookies)
    s.sendall(b"POST /api/deploy?site=shop HTTP/1.1\r\nHost: admin.localhost\r\n"
              b"X-Fazt-Request: 1\r\nCookie: " + cookie.encode() +
              b"\r\nContent-Length: 1073741824\r\n\r\n" + b"\0" * 65536)
    answer = s.recv(4096)
    s.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    assert server.get("/", host="shop.localhost").text == "first"
    growth = (psutil.Process(server.proc.pid).memory_info().rss - rss) / 2**20
    assert growth < 40, f"RSS grew by {growth:.0f} MB on hostile uploads"


def test_a_server_killed_mid_backup_download_leaves_no_copy_for_good(tmp_path):
    """`GET /api/backup` writes a copy beside the database and unlinks it once opened; a
    server killed before that (SIGKILL, a power cut) left it there, as large as the
    database, for ever. The next start removes such copies, and nothing else."""
    db = init_db(tmp_path / "data.db")
    leftovers = [tmp_path / "data.db.backup-0123456789abcdef.partial",
                 tmp_path / "data.db.backup-fedcba9876543210",
                 tmp_path / "data.db.backup-00112233445566aa.partial-journal"]
    mine = tmp_path / "data.db.backup-monday.db"  # the owner's own file: kept
    for path in (*leftovers, mine):
        path.write_bytes(b"x" * 1000)
    with Server.running(db) as srv:
        assert srv.get("/_fazt/health").status_code == 200
        assert not any(p.exists() for p in leftovers)
        assert mine.exists()


def _first_line(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data or b"EOF"
        data += chunk
    return data.split(b"\r\n")[0]


def test_requests_sent_while_the_server_was_stopped_are_answered(db_path):
    """SIGSTOP, then SIGCONT after the clocks ran out (a paused VM, a debugger, a host
    starved for longer than a timeout): the requests that arrived meanwhile are waiting
    in the kernel's buffers and are answered, not dropped by a clock that never looked.
    Python's epoll, woken by SIGCONT past its deadline, returns no events without asking
    the kernel; the loop then ran its timers first and closed these connections."""
    env = fazt_env(FAZT_CLIENT_TIMEOUT="1")
    with Server.running(db_path, env=env) as srv:
        kept = socket.create_connection(("127.0.0.1", srv.port))
        kept.sendall(b"GET /_fazt/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert _first_line(kept) == b"HTTP/1.1 200 OK"
        fresh = socket.create_connection(("127.0.0.1", srv.port))  # says nothing yet
        eventually(lambda: srv.get("/_fazt/health").status_code == 200)  # fresh is accepted
        srv.proc.send_signal(signal.SIGSTOP)
        try:
            for sock in (kept, fresh):
                sock.sendall(b"GET /_fazt/health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            time.sleep(2.5)  # past the first request's timeout (1 s) and the loop's wait
        finally:
            srv.proc.send_signal(signal.SIGCONT)
        assert _first_line(fresh) == b"HTTP/1.1 200 OK"
        assert _first_line(kept) == b"HTTP/1.1 200 OK"
        kept.close()
        fresh.close()


def _fill(folder: Path) -> Path:
    """A file that takes every free byte of the disk under `folder`."""
    filler = folder / "filler"
    with open(filler, "wb") as out:
        try:
            while True:
                out.write(bytes(1 << 16))
                out.flush()
        except OSError:
            pass
    return filler


def test_sighup_on_a_full_disk_logs_one_sentence(tmp_path, small_disk):
    """A recalibration the disk has no room for is a sentence in the server's log (and the
    server serves on), not a Python traceback; with room again, SIGHUP works."""
    db = init_db(small_disk(24) / "data.db")
    srv = Server.__new__(Server)  # its log off the full disk, so the line can be read
    srv.db, srv.port, srv.log_path = db, free_port(), tmp_path / "server.log"
    srv._log = open(srv.log_path, "wb")
    srv.proc = subprocess.Popen(
        [sys.executable, "-m", "fazt", "server", "start", "--db", str(db), "--host",
         "127.0.0.1", "--port", str(srv.port)], stdout=srv._log, stderr=subprocess.STDOUT,
        env=fazt_env())
    try:
        srv.wait_ready()
        filler = _fill(db.parent)
        srv.proc.send_signal(signal.SIGHUP)
        assert eventually(lambda: "failed" in srv.log(), timeout=15), srv.log()
        assert "Recalibration (SIGHUP) failed: The disk is full" in srv.log()
        assert "Traceback" not in srv.log()
        assert srv.get("/_fazt/health").status_code == 200
        filler.unlink()
    finally:
        assert srv.stop() == 0
    assert _integrity(db) == "ok"
