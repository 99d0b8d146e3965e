"""One source of truth: what any writer commits is served from the next request; a
token change touches only the tokens; revocations and saves hold under concurrency."""

import os
import subprocess
import sys
import threading

import pytest
from conftest import PASSWORD, USERNAME, Admin, Server, fazt, fazt_env, zip_of

from fazt.vfs import ByteLRU

ADMIN = {"Host": "admin.localhost"}
CSRF = {"X-Fazt-Request": "1"}


def test_deploy_from_another_process_is_served_by_the_next_request(db_path, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    with Server.running(db_path) as srv:
        for n in range(5):
            (site / "index.html").write_text(f"version {n}")
            fazt("deploy", str(site), "--site", "fresh", "--db", str(db_path))
            for _ in range(3):  # the first through a thread, then the loop's fast path
                assert srv.get("/", host="fresh.localhost").text == f"version {n}"
        assert Admin(srv).status()["connections"]["fast_path_answers"] > 0
        fazt("site", "remove", "fresh", "--db", str(db_path))
        assert srv.get("/", host="fresh.localhost").status_code == 404


def test_config_and_tokens_from_another_process_apply_at_the_next_request(db_path):
    with Server.running(db_path) as srv:
        token = fazt("token", "create", "--name", "ci", "--db", str(db_path)).stdout.strip()
        auth = {"Authorization": f"Bearer {token}"}
        assert srv.request("GET", "/api/sites", headers=auth).status_code == 200
        fazt("token", "revoke", "1", "--db", str(db_path))
        assert srv.request("GET", "/api/sites", headers=auth).status_code == 401
        fazt("config", "set", "keep_versions", "7", "--db", str(db_path))
        fazt("config", "set", "vfs_cache_mb", "16", "--db", str(db_path))
        srv.request("GET", "/_fazt/health")  # any request brings the new state in
        assert srv.request("GET", "/api/sites", headers=auth).status_code == 401


def test_a_token_created_elsewhere_keeps_the_file_cache(db_path, instance, client, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("cached")
    fazt("deploy", str(site), "--site", "hot", "--db", str(db_path))
    for _ in range(3):
        assert client.simulate_get("/", host="hot.localhost").text == "cached"
    before = instance.vfs.stats()
    assert before["entries"] >= 1 and before["hits"] >= 2
    fazt("token", "create", "--name", "ci", "--db", str(db_path))
    assert client.simulate_get("/", host="hot.localhost").text == "cached"
    after = instance.vfs.stats()
    assert after["entries"] == before["entries"]
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"]
    assert len(instance.auth.token_hashes) == 1  # and the token did arrive


def test_a_smaller_cache_keeps_its_most_recently_used_entries():
    lru = ByteLRU(100)
    for key in "abcd":
        lru.put(key, b"x" * 20)
    lru.get("a")  # a is now the most recent
    hits = lru.hits
    lru.resize(45)
    assert lru.get("a") is not None and lru.get("d") is not None
    assert lru.get("b") is None and lru.get("c") is None
    assert lru.bytes == 40 and lru.hits == hits + 2
    lru.resize(200)
    assert lru.get("a") is not None  # growing evicts nothing


ECHO = "function handler(r) { return {body: 'handled by ' + r.headers.host + ' ' + r.body}; }"


def test_what_the_loop_decides_alone_follows_another_process_at_once(db_path, tmp_path):
    """Hosts and limits the event loop applies before any thread runs (a request body's
    admission, a site's back end answered on the loop): a change committed by another
    process holds from the next request, not from the server's next look a second later."""
    site = tmp_path / "shop"
    (site / "api").mkdir(parents=True)
    (site / "index.html").write_text("shop")
    (site / "api" / "main.js").write_text(ECHO)
    fazt("deploy", str(site), "--site", "shop", "--db", str(db_path))
    fazt("config", "set", "max_upload_mb", "1", "--db", str(db_path))
    with Server.running(db_path) as srv:
        for _ in range(3):  # the handler's context warm, on the loop
            assert srv.get("/api/x", host="shop.localhost").status_code == 200
        for n in range(3):
            host = f"www{n}.shop.test"
            fazt("site", "domain", "add", "shop", host, "--db", str(db_path))
            r = srv.request("POST", "/api/order", host=host, data=b"x" * 10)
            assert r.status_code == 200 and r.text == f"handled by {host} " + "x" * 10, r.text
            fazt("site", "domain", "remove", "shop", host, "--db", str(db_path))
            assert srv.get("/api/x", host=host).status_code == 404
        admin = Admin(srv)
        big = zip_of({"index.html": "big", "pad.bin": os.urandom(3 << 20)})
        assert admin.post("/api/deploy?site=big", data=big).status_code == 413
        fazt("config", "set", "max_upload_mb", "10", "--db", str(db_path))
        r = admin.post("/api/deploy?site=big", data=big)
        assert r.status_code == 200, r.text


def test_a_lower_large_file_mb_lets_go_of_the_files_now_over_it(db_path, tmp_path):
    """SPEC: files larger than large_file_mb are never held in RAM. One cached before the
    threshold came down is streamed from the next request, not answered from the cache."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "big.bin").write_bytes(b"\x01" * (3 << 20))
    fazt("deploy", str(site), "--site", "big", "--db", str(db_path))
    with Server.running(db_path) as srv:
        admin = Admin(srv)
        for _ in range(3):
            assert len(srv.get("/big.bin", host="big.localhost").content) == 3 << 20
        assert admin.status()["cache"]["bytes"] >= 3 << 20
        fazt("config", "set", "large_file_mb", "1", "--db", str(db_path))
        answers = admin.status()["connections"]["fast_path_answers"]
        for _ in range(3):
            assert len(srv.get("/big.bin", host="big.localhost").content) == 3 << 20
        status = admin.status()
        assert status["cache"]["bytes"] < 1 << 20, status["cache"]
        assert status["connections"]["fast_path_answers"] == answers


def test_revocation_holds_on_every_thread_while_others_reload_and_save(db_path, instance,
                                                                       client):
    """The old race: a watcher thread re-read the tokens just before a revocation and
    stored its older set just after it, bringing the revoked token back. Every fourth
    token is revoked by another process (`fazt token revoke`)."""
    names = [f"t{i}" for i in range(40)]
    made = {name: instance.create_token(name) for name in names}
    ids = {name: i + 1 for i, name in enumerate(names)}
    stop = threading.Event()
    problems: list[str] = []

    def reloader():
        while not stop.is_set():
            instance.reload_if_changed()

    def saver(key: str, values: tuple):
        i = 0
        while not stop.is_set():
            instance.set_config({key: values[i % 2]})
            i += 1

    low = instance.config["js_timeout_ms"]
    workers = [threading.Thread(target=reloader) for _ in range(3)]
    workers += [threading.Thread(target=saver, args=("js_timeout_ms", (low, low + 1))),
                threading.Thread(target=saver, args=("keep_versions", (5, 6)))]
    for w in workers:
        w.start()
    try:
        for name in names:
            assert instance.check_token(made[name])
            if ids[name] % 4 == 0:
                fazt("token", "revoke", str(ids[name]), "--db", str(db_path))
            else:
                assert instance.revoke_token(ids[name])
            seen = []

            def check(token=made[name], seen=seen):
                seen.append(client.simulate_get("/api/sites", headers={
                    **ADMIN, "Authorization": f"Bearer {token}"}).status_code)

            checkers = [threading.Thread(target=check) for _ in range(4)]
            for c in checkers:
                c.start()
            for c in checkers:
                c.join()
            if seen != [401] * 4:
                problems.append(f"{name}: {seen}")
        assert not any(instance.check_token(t) for t in made.values())
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert not problems, problems
    assert {"js_timeout_ms"} <= set(instance.config["owner_keys"])


SAVER = """
import sys
from fazt.instance import machine_for, read_config, update_config
from fazt.store import open_database
db = open_database(sys.argv[1])
with db.read() as conn:
    config = read_config(conn)
machine = machine_for(config, db.path)
for _ in range(int(sys.argv[3])):
    update_config(db, machine, {sys.argv[2]: config[sys.argv[2]]})
"""


@pytest.mark.parametrize("rounds", [15])
def test_concurrent_saves_from_threads_and_processes_keep_every_key(db_path, instance, rounds):
    process_keys = ["vfs_cache_mb", "max_upload_mb"]
    thread_keys = ["js_timeout_ms", "user_threads", "cockpit_threads", "large_file_mb"]
    procs = [subprocess.Popen([sys.executable, "-c", SAVER, str(db_path), key, str(rounds)],
                              env=fazt_env()) for key in process_keys]
    barrier = threading.Barrier(len(thread_keys))

    def save(key: str):
        barrier.wait()
        for _ in range(rounds):
            instance.set_config({key: instance.config[key]})

    threads = [threading.Thread(target=save, args=(key,)) for key in thread_keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        assert p.wait(timeout=120) == 0
    instance.reload_if_changed()
    assert set(process_keys + thread_keys) <= set(instance.config["owner_keys"])
    status = fazt("server", "status", "--json", "--db", str(db_path)).stdout
    assert all(key in status for key in process_keys + thread_keys)


def test_the_api_token_calls_update_every_thread_at_once(instance, client):
    session = client.simulate_post("/api/login", headers={**ADMIN, **CSRF}, json={
        "username": USERNAME, "password": PASSWORD})
    cookie = {"Cookie": f"fazt_session={session.cookies['fazt_session'].value}", **CSRF}
    made = client.simulate_post("/api/tokens", headers={**ADMIN, **cookie}, json={"name": "x"})
    token = made.json["token"]
    assert instance.check_token(token)
    listed = client.simulate_get("/api/tokens", headers={**ADMIN, **cookie}).json["tokens"]
    gone = client.simulate_delete(f"/api/tokens/{listed[0]['id']}", headers={**ADMIN, **cookie})
    assert gone.status_code == 200
    assert not instance.check_token(token)
    assert isinstance(instance.auth.token_hashes, frozenset)


def test_the_wal_header_moves_with_another_process_and_leaves_sqlite_its_locks(db_path):
    """Closing a descriptor of the -shm file would drop SQLite's locks on it, and the
    next process would reset the file under this one's feet (a bus error)."""
    from fazt.store import open_database

    db = open_database(str(db_path))
    try:
        first = db.wal_header()
        assert len(first) == 48
        for n in range(3):
            fazt("config", "set", "keep_versions", str(5 + n), "--db", str(db_path))
            now = db.wal_header()
            assert now != first
            first = now
            with db.read() as conn:
                assert conn.execute("SELECT value FROM config WHERE key = 'keep_versions'"
                                    ).fetchone()[0] == str(5 + n)
        assert db.wal_header() == first  # reading changes nothing
    finally:
        db.close()


def test_a_database_named_through_a_symlink_is_watched_where_sqlite_keeps_it(tmp_path):
    """SQLite puts `-wal`/`-shm` beside the file a symlink names. The server looked for
    the `-shm` beside the link, found none, and so could never tell its state was current:
    the loop's fast path declined every request."""
    from conftest import init_db

    (tmp_path / "real").mkdir()
    db = init_db(tmp_path / "real" / "data.db")
    link = tmp_path / "data.db"
    link.symlink_to(db)
    site = tmp_path / "site"
    site.mkdir()
    with Server.running(link) as srv:
        for n in range(3):
            (site / "index.html").write_text(f"version {n}")
            fazt("deploy", str(site), "--site", "linked", "--db", str(db))
            for _ in range(3):
                assert srv.get("/", host="linked.localhost").text == f"version {n}"
        assert Admin(srv).status()["connections"]["fast_path_answers"] >= 3


def test_the_status_shows_the_size_a_deploy_from_another_process_left(db_path, tmp_path):
    """The database's size and its ratio to RAM were the sampler's (up to a second old)
    and the last soft restart's (the ratio, kept from boot): the status read right after
    `fazt deploy` showed the database as it was before."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "big.bin").write_bytes(os.urandom(4 << 20))
    with Server.running(db_path) as srv:
        admin = Admin(srv)
        before = admin.status()["db"]
        fazt("deploy", str(site), "--site", "grown", "--db", str(db_path))
        after = admin.status()["db"]
        assert after["size_bytes"] >= before["size_bytes"] + (4 << 20), (before, after)
        assert after["ratio"] / after["size_bytes"] == pytest.approx(
            before["ratio"] / before["size_bytes"])


def test_writes_made_after_the_clock_stepped_back_are_seen(db_path, instance):
    """The server told what changed by the newest write time of each table: a setting
    saved, or a token revoked, after the clock stepped back (NTP, a restored VM) was
    never seen, and the revoked token went on working until a restart."""
    from unittest import mock

    from fazt import tokens
    from fazt.store import open_database
    from fazt.store.config import save_config

    first = instance.create_token("first")
    second = instance.create_token("second")
    fazt("token", "revoke", "1", "--db", str(db_path))
    fazt("config", "set", "keep_versions", "6", "--db", str(db_path))
    instance.refresh()
    assert not instance.check_token(first) and instance.check_token(second)
    db = open_database(str(db_path))
    try:
        with mock.patch("time.time", lambda: 1_000_000_000.0):  # 2001
            with db.write() as conn:
                save_config(conn, {"keep_versions": 8})
            assert tokens.revoke_token(db, 2) is not None
    finally:
        db.close()
    instance.refresh()
    assert instance.config["keep_versions"] == 8
    assert not instance.check_token(second)


def test_a_write_through_a_hard_link_to_a_served_database_is_refused(db_path, tmp_path):
    """SQLite keeps the WAL beside the name it is given: `fazt deploy --db LINK` to a
    database a server runs on under another name succeeded into a second WAL the server
    never read (the site stayed a 404), and two WALs on one file spoil it."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("linked")
    link = tmp_path / "link.db"
    os.link(db_path, link)
    with Server.running(db_path) as srv:
        refused = fazt("deploy", str(site), "--site", "hard", "--db", str(link), check=False)
        assert refused.returncode == 1 and "another name" in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr and not (tmp_path / "link.db-wal").exists()
        fazt("deploy", str(site), "--site", "hard", "--db", str(db_path))
        assert srv.get("/", host="hard.localhost").text == "linked"
    fazt("site", "list", "--db", str(link))  # no server: either name will do
