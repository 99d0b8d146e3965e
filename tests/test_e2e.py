"""The real `fazt` command in subprocesses and a real server on a real socket."""

import contextlib
import hashlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import psutil
import pytest
import requests
from conftest import PASSWORD, USERNAME, Server, eventually, fazt, fazt_env, init_db, slow_reader


def test_version():
    out = fazt("--version").stdout
    assert out.startswith("fazt ") and "Python package" in out


def test_init_deploy_start_fetch(db_path, site_dir, tmp_path):
    out = fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db_path)).stdout
    assert "Deployed 4 files" in out
    assert "blog" in fazt("site", "list", "--db", str(db_path)).stdout
    srv = Server(db_path)
    try:
        r = srv.get("/", host="blog.localhost")
        assert r.status_code == 200 and r.text == "<h1>hello from fazt</h1>"
        assert srv.get("/", host="blog.example.test").text == "<h1>hello from fazt</h1>"
        assert srv.get("/_fazt/health").json() == {"status": "ok", "mode": "normal"}
        assert srv.get("/", host="nope.localhost").status_code == 404
        # a redeploy by another process reaches the running server; so does a removal
        (site_dir / "index.html").write_text("v2")
        fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db_path))
        assert srv.get("/", host="blog.localhost").text == "v2"  # from the next request
        fazt("site", "remove", "blog", "--db", str(db_path))
        assert srv.get("/", host="blog.localhost").status_code == 404
    finally:
        assert srv.stop() == 0
    assert "GET /" in srv.log()  # one line a request
    # nothing but the database (and SQLite's own files) beside it
    assert {p.name for p in db_path.parent.iterdir() if p.name.startswith("data.db")} <= {
        "data.db", "data.db-wal", "data.db-shm"}


def test_db_path_resolution(tmp_path, site_dir):
    env = fazt_env(FAZT_DB=str(tmp_path / "env.db"))
    fazt("server", "init", "--domain", "d.test", "--username", "u", "--password", "password1",
         "--memory-mb", "512", env=env)
    assert (tmp_path / "env.db").exists()
    home = tmp_path / "home"
    home.mkdir()
    env = fazt_env(HOME=str(home))
    fazt("server", "init", "--domain", "d.test", "--username", "u", "--password", "password1",
         "--memory-mb", "512", env=env)
    assert (home / ".fazt" / "data.db").exists()


def _fails(*args, env=None):
    result = fazt(*args, check=False, env=env)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    message = result.stderr.strip()
    assert message.startswith("fazt: ") and "\n" not in message
    return message


def test_expected_failures_are_one_sentence(db_path, site_dir, tmp_path):
    assert "already exists" in _fails("server", "init", "--db", str(db_path), "--domain", "x",
                                      "--username", "u", "--password", "password1")
    assert "No database" in _fails("server", "start", "--db", str(tmp_path / "none.db"))
    assert "No database" in _fails("site", "list", "--db", str(tmp_path / "none.db"))
    assert "not a directory" in _fails("deploy", str(tmp_path / "nowhere"), "--site", "a",
                                       "--db", str(db_path))
    assert "not a valid site name" in _fails("deploy", str(site_dir), "--site", "Bad_Name",
                                             "--db", str(db_path))
    assert "reserved" in _fails("deploy", str(site_dir), "--site", "admin", "--db", str(db_path))
    for name in ("evil\n", "admin\n"):  # Python's '$' matches before a final newline
        assert "not a valid site name" in _fails("deploy", str(site_dir), "--site", name,
                                                 "--db", str(db_path))
    assert "no site named" in _fails("site", "remove", "ghost", "--db", str(db_path))
    assert "at least 8" in _fails("server", "init", "--db", str(tmp_path / "n.db"), "--domain",
                                  "x.test", "--username", "u", "--password", "short")
    assert not (tmp_path / "n.db").exists()


def test_symlink_outside_is_refused_and_old_version_kept(db_path, site_dir, tmp_path):
    fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db_path))
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    os.symlink(secret, site_dir / "leak.txt")
    (site_dir / "index.html").write_text("new version")
    assert "outside" in _fails("deploy", str(site_dir), "--site", "blog", "--db", str(db_path))
    with Server.running(db_path) as srv:
        assert srv.get("/", host="blog.localhost").text == "<h1>hello from fazt</h1>"
        assert srv.get("/leak.txt", host="blog.localhost").status_code == 404


def test_port_in_use(db_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        message = _fails("server", "start", "--db", str(db_path), "--host", "127.0.0.1",
                         "--port", str(port))
        assert "in use" in message


def test_sigterm_stops_cleanly(server):
    assert server.get("/_fazt/health").status_code == 200
    assert server.stop() == 0
    assert "fazt stopped" in server.log()


def _rss_sampler(pid: int, stop: threading.Event, peak: list[int]) -> None:
    proc = psutil.Process(pid)
    while not stop.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.02)


def test_large_file_streams_with_flat_memory(tmp_path):
    """200 MB through a real socket, fast and slow: the server's RSS grows by < 20 MB,
    even with a page cache per connection large enough to hold 20 MB of the file."""
    db = init_db(tmp_path / "data.db")
    fazt("config", "set", "sqlite_cache_mb", "20", "--db", str(db))
    root = tmp_path / "big"
    root.mkdir()
    block = os.urandom(1 << 20)
    digest = hashlib.sha256()
    with open(root / "movie.bin", "wb") as f:
        for _ in range(200):
            f.write(block)
            digest.update(block)
    fazt("deploy", str(root), "--site", "big", "--db", str(db))
    with Server.running(db) as srv:
        srv.get("/_fazt/health")
        base = psutil.Process(srv.proc.pid).memory_info().rss
        peak, stop = [base], threading.Event()
        sampler = threading.Thread(target=_rss_sampler, args=(srv.proc.pid, stop, peak))
        sampler.start()
        try:
            r = srv.get("/movie.bin", host="big.localhost", stream=True)
            got = hashlib.sha256()
            for piece in r.iter_content(1 << 20):
                got.update(piece)
            assert got.hexdigest() == digest.hexdigest()
            # a slow client: reads a little, then sleeps, for a few seconds
            slow = srv.get("/movie.bin", host="big.localhost", stream=True)
            raw = slow.raw
            for _ in range(20):
                assert raw.read(64 * 1024)
                time.sleep(0.1)
            slow.close()
        finally:
            stop.set()
            sampler.join()
    growth = (peak[0] - base) / 2**20
    assert growth < 20, f"RSS grew by {growth:.1f} MB while streaming"


def test_sigkill_mid_deploy_keeps_the_old_version(db_path, site_dir, tmp_path):
    fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db_path))
    big = tmp_path / "big"
    big.mkdir()
    for i in range(150):
        (big / f"f{i:03}.bin").write_bytes(os.urandom(1 << 20))
    proc = subprocess.Popen([sys.executable, "-m", "fazt", "deploy", str(big), "--site", "blog",
                             "--db", str(db_path)], env=fazt_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wal = str(db_path) + "-wal"
    eventually(lambda: proc.poll() is not None
               or (os.path.exists(wal) and os.path.getsize(wal) > 20 << 20),
               timeout=60, every=0.01)
    assert proc.poll() is None, "the deploy finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with Server.running(db_path) as srv:
        assert srv.get("/", host="blog.localhost").text == "<h1>hello from fazt</h1>"
        assert srv.get("/f000.bin", host="blog.localhost").status_code == 404


def test_config_set_reaches_a_running_server(module_server, module_db):
    server, db_path = module_server, module_db
    session = requests.Session()
    r = session.post(server.url("/api/login"), json={"username": USERNAME, "password": PASSWORD},
                     headers={"Host": "admin.localhost", "X-Fazt-Request": "1"})
    assert r.status_code == 200
    fazt("config", "set", "vfs_cache_mb", "16", "--db", str(db_path))
    try:
        status = session.get(server.url("/api/system/status"),
                             headers={"Host": "admin.localhost"}).json()  # the very next request
        assert status["thresholds"]["vfs_cache_mb"] == 16
        assert status["cache"]["limit_bytes"] == 16 * 2**20
    finally:
        fazt("config", "reset", "vfs_cache_mb", "--db", str(db_path))


@pytest.mark.parametrize("value", ["-5", "abc", "1e30"])
def test_config_set_refuses_insane_values(db_path, value):
    _fails("config", "set", "vfs_cache_mb", value, "--break-glass", "--db", str(db_path))


def test_slow_downloads_hold_no_worker_thread(tmp_path):
    """Twice as many stalled large downloads as user threads: small requests still answer."""
    db = init_db(tmp_path / "data.db")
    fazt("config", "set", "user_threads", "2", "--db", str(db))
    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("small")
    (root / "big.bin").write_bytes(os.urandom(1 << 20) * 20)
    fazt("deploy", str(root), "--site", "media", "--db", str(db))
    with Server.running(db) as srv:
        stalled = []
        try:
            for _ in range(4):
                stalled.append(slow_reader(srv.port, "media.localhost", "/big.bin"))
            for _ in range(10):
                began = time.time()
                assert srv.get("/", host="media.localhost", timeout=5).text == "small"
                assert time.time() - began < 1.0
        finally:
            for s in stalled:
                s.close()


def test_deploy_over_http_with_a_cli_token(module_server, module_db, site_dir):
    server, db_path = module_server, module_db
    token = fazt("token", "create", "--name", "laptop", "--db", str(db_path)).stdout.strip()
    assert token.startswith("fazt_")
    url = f"http://admin.localhost:{server.port}"
    # the running server knows the new token from its next request
    result = fazt("deploy", str(site_dir), "--site", "remote", "--server", url,
                  "--token", token, check=False)
    assert result.returncode == 0, result.stderr
    assert "version 1." in result.stdout  # every deploy is a version, remote ones too
    assert server.get("/", host="remote.localhost").text == "<h1>hello from fazt</h1>"
    bad = fazt("deploy", str(site_dir), "--site", "remote", "--server", url, "--token",
               "fazt_wrong", check=False)
    assert bad.returncode == 1 and "401" in bad.stderr and "Traceback" not in bad.stderr


def test_a_symlinked_folder_inside_the_site_is_deployed_and_a_loop_refused(db_path, tmp_path):
    """`latest -> releases/v2` was silently left out (the walk did not follow it); it is
    deployed as a folder of its own. A link back into a folder that holds it would never
    end: refused in one sentence, the live version kept."""
    root = tmp_path / "site"
    (root / "releases" / "v2").mkdir(parents=True)
    (root / "index.html").write_text("home")
    (root / "releases" / "v2" / "notes.txt").write_text("v2 notes")
    os.symlink("releases/v2", root / "latest")
    fazt("deploy", str(root), "--site", "blog", "--db", str(db_path))
    with Server.running(db_path) as srv:
        assert srv.get("/latest/notes.txt", host="blog.localhost").text == "v2 notes"
        assert srv.get("/releases/v2/notes.txt", host="blog.localhost").text == "v2 notes"
    for loop in ("releases/v2/up", "releases/again"):
        os.symlink(os.path.relpath(root / "releases", (root / loop).parent), root / loop)
        (root / "index.html").write_text("new home")
        message = _fails("deploy", str(root), "--site", "blog", "--db", str(db_path))
        assert "holds it" in message and "Traceback" not in message, message
        os.unlink(root / loop)
    (root / "a").mkdir()
    (root / "c").mkdir()
    (root / "c" / "f.txt").write_text("f")
    os.symlink("../c", root / "a" / "b")
    os.symlink("../a", root / "c" / "d")
    assert "holds it" in _fails("deploy", str(root), "--site", "blog", "--db", str(db_path))
    with Server.running(db_path) as srv:
        assert srv.get("/", host="blog.localhost").text == "home"


def test_a_remote_deploy_packs_and_sends_with_flat_memory(module_server, module_db, tmp_path):
    """`fazt deploy --server` built the whole zip in RAM, after holding each file whole:
    a 1 GB site needed 2 GB on the machine deploying it. It packs into a file on disk a
    piece at a time and sends that; a site over the server's max_upload_mb is the
    server's 413 in one sentence."""
    server, db_path = module_server, module_db
    token = fazt("token", "create", "--name", "big", "--db", str(db_path)).stdout.strip()
    root = tmp_path / "big"
    root.mkdir()
    with open(root / "noise.bin", "wb") as f:  # does not deflate: stored at its size
        for _ in range(48):
            f.write(os.urandom(1024 * 1024))
    (root / "index.html").write_text("big site")
    url = f"http://admin.localhost:{server.port}"
    proc = subprocess.Popen([sys.executable, "-m", "fazt", "deploy", str(root), "--site",
                             "big", "--server", url, "--token", token], env=fazt_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, psutil.Process(proc.pid).memory_info().rss)
        time.sleep(0.02)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert peak < 40 * 1024 * 1024, f"client RSS {peak / 1e6:.0f} MB for a 48 MB site"
    assert server.get("/noise.bin", host="big.localhost").content == \
        (root / "noise.bin").read_bytes()
    fazt("config", "set", "max_upload_mb", "16", "--db", str(db_path))
    try:
        refused = fazt("deploy", str(root), "--site", "big", "--server", url, "--token",
                       token, check=False)
        assert refused.returncode == 1 and "413" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    finally:
        fazt("config", "reset", "max_upload_mb", "--db", str(db_path))
