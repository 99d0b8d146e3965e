"""The stability engine end to end: maintenance mode, recalibration under load, a real cgroup."""

import hashlib
import http.client
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import Admin, Server, eventually, fazt, fazt_env, free_port, init_db


def test_maintenance_mode_end_to_end(tmp_path):
    """A database larger than maintenance_ratio × RAM boots into maintenance; the cockpit
    still works and a backup downloads; raising the ratio and recalibrating brings sites back."""
    db = tmp_path / "data.db"
    fazt("server", "init", "--db", str(db), "--domain", "example.test", "--username", "owner",
         "--password", "correct horse battery", "--memory-mb", "16", "--cpus", "1")
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<p>welcome</p>")
    with open(site / "blob.bin", "wb") as f:
        for _ in range(24):
            f.write(os.urandom(1 << 20))  # 24 MB of data: more than 1 × 16 MB of RAM
    fazt("deploy", str(site), "--site", "shop", "--db", str(db))
    fazt("config", "set", "maintenance_ratio", "1", "--db", str(db), "--break-glass")
    with Server.running(db) as srv:
        assert srv.get("/_fazt/health").json() == {"status": "ok", "mode": "maintenance"}
        r = srv.get("/", host="shop.localhost", headers={"Accept": "text/html"})
        assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
        assert "maintenance" in r.text.lower()
        admin = Admin(srv)
        status = admin.status()
        assert status["mode"] == "maintenance" and status["db"]["ratio"] > 1
        backup = admin.get("/api/backup", timeout=120)
        assert backup.status_code == 200
        copy = tmp_path / "backup.db"
        copy.write_bytes(backup.content)
        conn = sqlite3.connect(copy)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert ("shop",) in conn.execute("SELECT name FROM sites").fetchall()
        conn.close()
        # the way out: raise the ratio and recalibrate (from the command line)
        fazt("config", "set", "maintenance_ratio", "1000", "--db", str(db), "--break-glass")
        fazt("server", "recalibrate", "--db", str(db))
        assert eventually(lambda: srv.get("/_fazt/health").json()["mode"] == "normal",
                          timeout=15)
        assert srv.get("/", host="shop.localhost").text == "<p>welcome</p>"


def _held_download(srv: Server, path: str, out: dict, started: threading.Event,
                   go_on: threading.Event) -> None:
    """A download that has begun and then stops reading until `go_on`: it spans whatever
    happens meanwhile, however fast or slow the machine is."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
    conn.request("GET", path, headers={"Host": "big.localhost"})
    resp = conn.getresponse()
    digest = hashlib.sha256()
    digest.update(resp.read(256 * 1024))
    started.set()
    go_on.wait(60)
    while piece := resp.read(256 * 1024):
        digest.update(piece)
    out["status"] = resp.status
    out["sha"] = digest.hexdigest()
    conn.close()


def test_recalibration_drops_no_connection(tmp_path):
    db = init_db(tmp_path / "data.db")
    root = tmp_path / "big"
    root.mkdir()
    data = os.urandom(1 << 20) * 40
    (root / "file.bin").write_bytes(data)
    (root / "index.html").write_text("hi")
    fazt("deploy", str(root), "--site", "big", "--db", str(db))
    with Server.running(db) as srv:
        admin = Admin(srv)
        before = admin.status()
        result: dict = {}
        started, go_on = threading.Event(), threading.Event()
        downloader = threading.Thread(target=_held_download,
                                      args=(srv, "/file.bin", result, started, go_on))
        downloader.start()
        assert started.wait(30)
        keepalive = [http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
                     for _ in range(4)]
        ports = []
        for conn in keepalive:
            conn.request("GET", "/", headers={"Host": "big.localhost"})
            assert conn.getresponse().read() == b"hi"
            ports.append(conn.sock.getsockname()[1])
        # three ways to recalibrate: the API, the command line (new machine size), SIGHUP
        assert admin.post("/api/system/recalibrate").status_code == 200
        fazt("server", "recalibrate", "--db", str(db), "--memory-mb", "2048", "--cpus", "2")
        assert eventually(lambda: admin.status()["machine"]["ram_mb"] == 2048, timeout=15)
        srv.proc.send_signal(signal.SIGHUP)
        after = admin.status()
        assert after["thresholds"]["user_threads"] >= before["thresholds"]["user_threads"]
        for conn, port in zip(keepalive, ports, strict=True):
            conn.request("GET", "/", headers={"Host": "big.localhost"})
            assert conn.getresponse().read() == b"hi"
            assert conn.sock.getsockname()[1] == port  # the same connection, not a new one
            conn.close()
        go_on.set()
        downloader.join(timeout=120)
        assert result.get("status") == 200
        assert result.get("sha") == hashlib.sha256(data).hexdigest()


def test_sighup_rewrites_thresholds(tmp_path):
    db = init_db(tmp_path / "data.db")
    with Server.running(db) as srv:
        admin = Admin(srv)
        probed = admin.status()["thresholds"]["vfs_cache_mb"]
        conn = sqlite3.connect(db)
        with conn:
            conn.execute("UPDATE config SET value = '7', updated_at = updated_at + 1"
                         " WHERE key = 'vfs_cache_mb'")
        conn.close()
        assert eventually(lambda: admin.status()["thresholds"]["vfs_cache_mb"] == 7, timeout=15)
        srv.proc.send_signal(signal.SIGHUP)
        assert eventually(lambda: admin.status()["thresholds"]["vfs_cache_mb"] == probed,
                          timeout=15)
        assert admin.status()["cache"]["limit_bytes"] == probed * 2**20


CGROUP = Path("/sys/fs/cgroup/memory")


def _make_cgroup(limit_mb: int) -> Path:
    if not (CGROUP / "cgroup.procs").exists() or os.geteuid() != 0:
        pytest.skip("no writable cgroup v1 memory controller here")
    group = CGROUP / f"fazt-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(limit_mb << 20))
    except OSError as exc:
        pytest.skip(f"cannot make a memory cgroup: {exc}")
    return group


def _remove_cgroup(group: Path) -> None:
    for _ in range(50):
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.1)


def _in_cgroup(group: Path, *args: str) -> list[str]:
    """A `fazt` command line that runs inside the memory cgroup `group`."""
    enter = f'echo $$ > {group}/cgroup.procs && exec "$@"'
    return ["sh", "-c", enter, "sh", sys.executable, "-m", "fazt", *args]


def _server_in(group: Path, db: Path, tmp_path: Path) -> Server:
    """`fazt server start` inside `group`, ready."""
    port = free_port()
    proc = subprocess.Popen(_in_cgroup(group, "server", "start", "--db", str(db), "--host",
                                       "127.0.0.1", "--port", str(port)),
                            env=fazt_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    srv = Server.__new__(Server)
    srv.port, srv.proc, srv.db = port, proc, db
    srv.log_path = tmp_path / "log"
    srv.log_path.write_text("")
    srv._log = open(srv.log_path, "wb")
    try:
        srv.wait_ready()
    except AssertionError:
        srv.stop()
        raise
    return srv


def test_inside_a_real_256_mb_cgroup(tmp_path):
    group = _make_cgroup(256)
    db = tmp_path / "data.db"
    try:
        subprocess.run(_in_cgroup(group, "server", "init", "--db", str(db), "--domain",
                                  "example.test", "--username", "owner", "--password",
                                  "correct horse battery"),
                       check=True, env=fazt_env(), capture_output=True)
        srv = _server_in(group, db, tmp_path)
        try:
            status = Admin(srv).status()
            assert status["machine"]["ram_mb"] == 256
            ledger = status["memory"]["ledger"]
            assert ledger["total_mb"] <= ledger["usable_mb"] < 256
            assert status["memory"]["rss_bytes"] < status["memory"]["budget_bytes"]
            assert srv.get("/_fazt/health").json()["status"] == "ok"
        finally:
            srv.stop()
        assert int((group / "memory.failcnt").read_text()) == 0
    finally:
        _remove_cgroup(group)


def test_commands_beside_a_confined_server_use_the_servers_machine(tmp_path):
    """The server runs confined to 256 MB (a systemd unit's MemoryMax=, a container), the
    owner types commands in a shell that is not (it sees the whole host). Recalibrating
    from there wrote thresholds for the host into the confined server (a file cache of
    gigabytes: a kill for lack of memory once it fills); status showed the host's ratio
    and mode, and `config set` took a value as safe for the host."""
    group = _make_cgroup(256)
    db = tmp_path / "data.db"
    fazt("server", "init", "--db", str(db), "--domain", "example.test", "--username",
         "owner", "--password", "correct horse battery")  # no --memory-mb: nothing declared
    try:
        srv = _server_in(group, db, tmp_path)
        try:
            out = fazt("server", "recalibrate", "--db", str(db)).stdout
            assert "256 MB RAM" in out, out
            status = Admin(srv).status()
            ledger = status["memory"]["ledger"]
            assert ledger["total_mb"] <= ledger["usable_mb"] < 256, ledger
            seen = json.loads(fazt("server", "status", "--db", str(db), "--json").stdout)
            assert seen["machine"]["ram_mb"] == 256
            assert seen["thresholds"] == status["thresholds"]
            refused = fazt("config", "set", "vfs_cache_mb", "500", "--db", str(db), check=False)
            assert refused.returncode == 1 and "break glass" in refused.stderr
        finally:
            srv.stop()
    finally:
        _remove_cgroup(group)


def test_thresholds_from_a_larger_machine_are_recalibrated_at_boot(tmp_path):
    """A database made for more RAM than the server has (restored onto a smaller machine,
    or made by `init` outside the container the server runs in): its thresholds would
    let the server use more memory than it has. It recalibrates before serving and says
    so; the owner's own values stay."""
    if psutil.virtual_memory().total < 2 << 30:
        pytest.skip("the host itself is too small to stand for the larger machine")
    db = tmp_path / "data.db"
    fazt("server", "init", "--db", str(db), "--domain", "example.test", "--username", "owner",
         "--password", "correct horse battery")  # the host's thresholds
    fazt("config", "set", "js_timeout_ms", "1234", "--db", str(db))
    with Server.running(db, env=fazt_env(FAZT_MEMORY_MB="256")) as srv:
        status = Admin(srv).status()
        assert status["machine"]["ram_mb"] == 256
        ledger = status["memory"]["ledger"]
        assert ledger["total_mb"] <= ledger["usable_mb"], ledger
        assert status["thresholds"]["js_timeout_ms"] == 1234
        assert "recalibrated for it" in srv.log()
    with Server.running(db, env=fazt_env(FAZT_MEMORY_MB="256")) as srv:
        srv.get("/_fazt/health")
        assert "recalibrated" not in srv.log()  # once is enough: they fit now
