"""Every deploy is a version: list, roll back (CLI, API), keep_versions, and collection that
never cuts a download in flight."""

import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path

import pytest
import requests
from conftest import Admin, Server, deploy_dir, eventually, fazt, fazt_env, init_db, zip_of

from fazt.store.files import unreferenced_blobs


def _deploy(db: Path, root: Path, text: str, site: str = "blog") -> str:
    (root / "index.html").write_text(text)
    return fazt("deploy", str(root), "--site", site, "--db", str(db)).stdout


# The tests that take `module_server` share one server and database, each with its own site.


def test_cli_versions_and_rollback_reach_a_running_server(module_server, module_db, tmp_path):
    server, db_path = module_server, module_db
    root = tmp_path / "site"
    root.mkdir()
    for n in (1, 2, 3):
        assert f"version {n}" in _deploy(db_path, root, f"v{n}")

    def served() -> str:
        return server.get("/", host="blog.localhost").text

    assert eventually(lambda: served() == "v3")
    listed = json.loads(fazt("site", "versions", "blog", "--json", "--db", str(db_path)).stdout)
    assert [(v["version"], v["live"]) for v in listed["versions"]] == [
        (3, True), (2, False), (1, False)]
    assert "* " in fazt("site", "versions", "blog", "--db", str(db_path)).stdout

    out = fazt("site", "rollback", "blog", "--db", str(db_path)).stdout
    assert "version 2" in out
    assert eventually(lambda: served() == "v2")
    fazt("site", "rollback", "blog", "1", "--db", str(db_path))
    assert eventually(lambda: served() == "v1")
    fazt("site", "rollback", "blog", "3", "--db", str(db_path))  # forward again
    assert eventually(lambda: served() == "v3")

    for bad in (["blog", "9"], ["nosuch"], ["blog", "99999999999999999999999"]):
        failed = fazt("site", "rollback", *bad, "--db", str(db_path), check=False)
        assert failed.returncode == 1 and failed.stderr.count("\n") == 1, failed.stderr
    fazt("site", "rollback", "blog", "1", "--db", str(db_path))
    failed = fazt("site", "rollback", "blog", "--db", str(db_path), check=False)
    assert failed.returncode == 1 and "no version older than 1" in failed.stderr


def test_api_versions_and_instant_rollback(module_server):
    server = module_server
    admin = Admin(server)
    for n in (1, 2):
        r = admin.post("/api/deploy?site=app", data=zip_of({"index.html": f"v{n}"}))
        assert r.json()["version"] == n
    versions = admin.get("/api/sites/app/versions").json()["versions"]
    assert [(v["version"], v["live"]) for v in versions] == [(2, True), (1, False)]
    r = admin.post("/api/sites/app/rollback", json={})
    assert r.status_code == 200 and r.json() == {"site": "app", "version": 1, "from": 2}
    assert server.get("/", host="app.localhost").text == "v1"  # the very next request
    assert admin.post("/api/sites/app/rollback", json={"version": 2}).json()["version"] == 2
    assert server.get("/", host="app.localhost").text == "v2"
    r = admin.post("/api/sites/app/rollback", json={"version": 7})
    assert r.status_code == 404 and "no version 7" in r.json()["error"]["message"]
    assert admin.post("/api/sites/app/rollback", json={"version": "x"}).status_code == 400
    r = admin.post("/api/sites/app/rollback", json={"version": 99999999999999999999999})
    assert r.status_code == 404, r.text  # past SQLite's integers: a version that is not there
    r = admin.session.delete(server.url("/api/tokens/99999999999999999999999"))
    assert r.status_code == 404, r.text
    failed = fazt("token", "revoke", "99999999999999999999999", "--db", str(server.db),
                  check=False)
    assert failed.returncode == 1 and failed.stderr.count("\n") == 1, failed.stderr
    assert admin.get("/api/sites/nope/versions").status_code == 404
    sites = {site["name"]: site for site in admin.get("/api/sites").json()["sites"]}
    assert sites["app"]["version"] == 2


def test_keep_versions_bounds_history_and_unused_files_go(db_path, tmp_path):
    fazt("config", "set", "keep_versions", "2", "--db", str(db_path))
    root = tmp_path / "site"
    root.mkdir()
    (root / "same.txt").write_text("shared by every version")
    for n in range(1, 6):
        (root / "each.bin").write_bytes(os.urandom(1000 + n))
        _deploy(db_path, root, f"v{n}")
    listed = json.loads(fazt("site", "versions", "blog", "--json", "--db", str(db_path)).stdout)
    assert [v["version"] for v in listed["versions"]] == [5, 4]
    conn = sqlite3.connect(db_path)
    unused = unreferenced_blobs(conn)
    shared = conn.execute("SELECT COUNT(*) FROM files WHERE path = 'same.txt'").fetchone()[0]
    same = conn.execute("SELECT COUNT(DISTINCT blob_id) FROM files WHERE path = 'same.txt'"
                        ).fetchone()[0]
    conn.close()
    assert unused == set()  # nothing unused is left behind
    assert shared == 2 and same == 1  # two versions, one stored copy


def test_lowering_keep_versions_bounds_the_history_at_once(db_path, tmp_path):
    """From the command line, and from the API beside a running server: the versions past
    the new count go now, not at each site's next deploy, and their content with them."""
    root = tmp_path / "site"
    root.mkdir()
    for n in range(1, 6):
        (root / "each.bin").write_bytes(os.urandom(1000 + n))
        _deploy(db_path, root, f"v{n}")
        _deploy(db_path, root, f"w{n}", site="other")

    def kept(site: str) -> list[int]:
        listed = fazt("site", "versions", site, "--json", "--db", str(db_path)).stdout
        return [v["version"] for v in json.loads(listed)["versions"]]

    assert kept("blog") == [5, 4, 3, 2, 1]
    fazt("config", "set", "keep_versions", "3", "--db", str(db_path))
    assert kept("blog") == [5, 4, 3] and kept("other") == [5, 4, 3]
    conn = sqlite3.connect(db_path)
    assert unreferenced_blobs(conn) == set()
    conn.close()
    with Server.running(db_path) as server:
        admin = Admin(server)
        r = admin.put("/api/config", json={"keep_versions": 1})
        assert r.status_code == 200, r.text
        versions = admin.get("/api/sites/blog/versions").json()["versions"]
        assert [v["version"] for v in versions] == [5]
        assert server.get("/", host="blog.localhost").text == "v5"

        def unused() -> set:
            conn = sqlite3.connect(db_path)
            try:
                return unreferenced_blobs(conn)
            finally:
                conn.close()

        assert eventually(lambda: unused() == set())


def test_a_deploy_after_a_rollback_keeps_the_version_rolled_back_to(db_path, tmp_path):
    """The audit's case: v3 of v1..v6 is live again (v4 to v6 were bad), keep_versions is
    3, and the fix is deployed as v7. v3, live until that deploy, is kept (it was the
    one dropped: the highest numbers were kept), and so is v6, live before it."""
    root = tmp_path / "site"
    root.mkdir()
    for n in range(1, 7):
        _deploy(db_path, root, f"v{n}")
    fazt("site", "rollback", "blog", "3", "--db", str(db_path))
    fazt("config", "set", "keep_versions", "3", "--db", str(db_path))
    _deploy(db_path, root, "v7")

    def kept() -> list[int]:
        listed = fazt("site", "versions", "blog", "--json", "--db", str(db_path)).stdout
        return [v["version"] for v in json.loads(listed)["versions"]]

    assert kept() == [7, 6, 3]
    assert "version 3" in fazt("site", "rollback", "blog", "3", "--db", str(db_path)).stdout


def test_rollback_without_a_version_goes_to_the_older_version_live_most_recently(
        db_path, tmp_path):
    """Rollbacks in a row walk back (v3, v2, v1), never back and forth. And when the owner
    went back to v1 of v1..v4, then deployed v5, which is bad: a plain `rollback` serves v1
    again (which served), not the next number down (v4, which the owner had left)."""
    root = tmp_path / "site"
    root.mkdir()
    for n in range(1, 4):
        _deploy(db_path, root, f"v{n}")

    def rollback(site: str = "blog") -> str:
        return fazt("site", "rollback", site, "--db", str(db_path)).stdout

    assert "version 2 again (was 3)" in rollback()
    assert "version 1 again (was 2)" in rollback()
    failed = fazt("site", "rollback", "blog", "--db", str(db_path), check=False)
    assert failed.returncode == 1 and "no version older than 1" in failed.stderr
    _deploy(db_path, root, "v4")
    _deploy(db_path, root, "v5")  # after v1, then v4: v5 is bad
    assert "version 4 again (was 5)" in rollback()
    fazt("site", "rollback", "blog", "1", "--db", str(db_path))
    _deploy(db_path, root, "v6")
    assert "version 1 again (was 6)" in rollback()
    _deploy(db_path, root, "only", site="solo")
    failed = fazt("site", "rollback", "solo", "--db", str(db_path), check=False)
    assert failed.returncode == 1 and "no version older than 1" in failed.stderr, failed.stderr


def test_versions_show_the_order_they_went_live_in(db_path, tmp_path):
    """Numbers say the order of deploys; after rollbacks the owner also needs the order
    the versions served in: when each last went live, and which one a plain rollback
    goes back to."""
    root = tmp_path / "site"
    root.mkdir()
    for n in range(1, 5):
        _deploy(db_path, root, f"v{n}")
    fazt("site", "rollback", "blog", "1", "--db", str(db_path))
    fazt("site", "rollback", "blog", "3", "--db", str(db_path))
    listed = json.loads(fazt("site", "versions", "blog", "--json", "--db",
                             str(db_path)).stdout)["versions"]
    by_number = {v["version"]: v for v in listed}
    assert [v["version"] for v in listed] == [4, 3, 2, 1]  # newest deploy first, as before
    assert by_number[3]["live_at"] > by_number[1]["live_at"] > by_number[4]["live_at"] \
        > by_number[2]["live_at"]
    assert [v["version"] for v in listed if v["previous"]] == [1]
    text = fazt("site", "versions", "blog", "--db", str(db_path)).stdout.splitlines()
    assert "went live" in text[0]
    assert text[2].split()[:2] == ["*", "3"] and text[4].split()[:2] == ["<", "1"]
    assert "1 again" in fazt("site", "rollback", "blog", "--db", str(db_path)).stdout


def test_a_version_number_is_never_given_twice(db_path, tmp_path):
    """v1 is live again, keep_versions 1 prunes v2..v4: the next deploy is v5, not a second
    v2 (a number in a log or a message would then name two contents), and asking for a
    pruned version says it is no longer kept."""
    root = tmp_path / "site"
    root.mkdir()
    for n in range(1, 5):
        _deploy(db_path, root, f"v{n}")
    fazt("site", "rollback", "blog", "1", "--db", str(db_path))
    fazt("config", "set", "keep_versions", "1", "--db", str(db_path))
    assert "version 5" in _deploy(db_path, root, "v5")
    failed = fazt("site", "rollback", "blog", "3", "--db", str(db_path), check=False)
    assert failed.returncode == 1 and "no longer keeps version 3" in failed.stderr
    failed = fazt("site", "rollback", "blog", "6", "--db", str(db_path), check=False)
    assert failed.returncode == 1 and "has no version 6" in failed.stderr


def test_a_download_in_flight_survives_rollback_and_collection(tmp_path):
    """Stream the newer version's large file slowly; meanwhile roll back, deploy twice
    (the streamed version is pruned from history, once over HTTP and once by the command
    line beside the running server): the download completes byte-exact, and the unused
    content is collected once it ends."""
    db = init_db(tmp_path / "data.db")
    fazt("config", "set", "keep_versions", "1", "--db", str(db))
    big = os.urandom(24 * 1024 * 1024 + 123)
    digest = hashlib.sha256(big).hexdigest()

    def stored() -> bool:
        conn = sqlite3.connect(db)
        try:
            return conn.execute("SELECT 1 FROM blobs WHERE sha256 = ?", (digest,)).fetchone()
        finally:
            conn.close()

    with Server.running(db) as srv:
        admin = Admin(srv)
        admin.post("/api/deploy?site=dl", data=zip_of({"index.html": "v1"}))
        fazt("config", "set", "keep_versions", "2", "--db", str(db))
        assert eventually(lambda: admin.get("/api/config").json()["values"]["keep_versions"]
                          == 2)
        admin.post("/api/deploy?site=dl", data=zip_of({"index.html": "v2", "big.bin": big}))
        download = srv.get("/big.bin", host="dl.localhost", stream=True)
        assert download.status_code == 200
        pieces = download.iter_content(64 * 1024)
        got = [next(pieces) for _ in range(16)]  # one MiB in, then the owner acts

        assert admin.post("/api/sites/dl/rollback", json={}).json()["version"] == 1
        admin.post("/api/deploy?site=dl", data=zip_of({"index.html": "v3"}))
        site = tmp_path / "v4"
        site.mkdir()
        _deploy(db, site, "v4", site="dl")  # prunes v2: big.bin is used by no version now
        assert eventually(lambda: srv.get("/", host="dl.localhost").text == "v4")
        assert stored()  # the stream still holds it

        got.extend(pieces)
        assert hashlib.sha256(b"".join(got)).hexdigest() == digest
        download.close()
        assert eventually(lambda: not stored(), timeout=15)


def _version(n: int) -> bytes:
    """Version n of a site whose every answer says which version made it: its body, and
    X-Version from its `_headers`; /r is rewritten to a.html in version 1, b.html in 2."""
    return zip_of({"index.html": f"version {n}", "a.html": f"a of {n}", "b.html": f"b of {n}",
                   "_headers": f"/*\n  X-Version: {n}\n",
                   "_redirects": f"/r /{'ab'[n - 1]}.html 200\n"})


# What each path may answer: one version's header with that version's body.
_ALIKE = {"/": {("1", "version 1"), ("2", "version 2")},
          "/r": {("1", "a of 1"), ("2", "b of 2")}}


@pytest.mark.parametrize("fastpath", ["on", "off"])
def test_an_answer_comes_from_one_version_while_rollbacks_race(tmp_path, fastpath):
    """The owner rolls back and forth through the API as fast as it answers while clients
    ask for a file and for a rewritten path: each answer's header, rule and body are one
    version's, on the loop's fast path and on a thread. The rules, the file and its
    content were looked up one by one, and up to 8% of answers here (at least one in
    the first second, every run) paired one version's `_headers` or `_redirects` with
    the other's file."""
    db = init_db(tmp_path / "data.db")
    with Server.running(db, env=fazt_env(FAZT_FASTPATH=fastpath)) as server:
        owner = Admin(server)
        for n in (1, 2):
            assert owner.post("/api/deploy?site=race", data=_version(n)).status_code == 200
        stop = threading.Event()
        rollbacks, answers, mixed = [], [], []

        def roll() -> None:
            admin = Admin(server)
            while not stop.is_set():
                r = admin.post("/api/sites/race/rollback",
                               json={"version": len(rollbacks) % 2 + 1})
                rollbacks.append(r.status_code)

        def read() -> None:
            client = requests.Session()
            client.headers["Host"] = "race.localhost"
            while not stop.is_set():
                for path, alike in _ALIKE.items():
                    r = client.get(server.url(path), timeout=30)
                    answers.append(r.status_code)
                    if r.status_code != 200 or (r.headers.get("X-Version"), r.text) not in alike:
                        mixed.append((path, r.status_code, r.headers.get("X-Version"), r.text))

        threads = [threading.Thread(target=work) for work in (roll, roll, read, read)]
        for thread in threads:
            thread.start()
        eventually(lambda: mixed, timeout=3)  # on the old code, the first comes within 0.2 s
        stop.set()
        for thread in threads:
            thread.join()
        assert not mixed, f"{len(mixed)} of {len(answers)} answers mixed versions: {mixed[:3]}"
        assert set(rollbacks) == {200} and len(rollbacks) > 100 and len(answers) > 100
        if fastpath == "on":  # the loop answered some of them itself
            assert owner.status()["connections"]["fast_path_answers"] > 0


def test_a_version_pruned_while_a_request_reads_it_is_looked_up_again(instance, tmp_path):
    """A request reads the version its site served as it began; when another process's
    deploy prunes that version meanwhile, a lookup in it is Stale (the request looks
    again, once) rather than a 404 for a file the site has, and the next look finds the
    new version."""
    from fazt.store.sites import NewFile, replace_site
    from fazt.vfs import Stale

    root = tmp_path / "site"
    root.mkdir()
    (root / "index.html").write_text("v1")
    deploy_dir(instance, "s", root)
    vfs = instance.vfs
    began = vfs.live("s")
    with instance.db.write() as conn:  # keep_versions 1: version 1 goes
        replace_site(conn, "s", [NewFile("index.html", "text/html", [b"v2"])], keep=1)
    with pytest.raises(Stale):
        vfs.find("s", "index.html", began)
    now = vfs.live("s")
    assert now != began and vfs.content("s", vfs.find("s", "index.html", now)) == b"v2"


def test_a_retry_after_stale_keeps_nothing_of_the_first_attempt(instance, client, tmp_path):
    """The first attempt of a request can set its status and headers from one version
    (v1's 404 page, its `_headers`) before a lookup in it is Stale (a deploy pruned it and
    collected its content). The retry answers from the next version, and nothing of the
    first attempt stays: not v1's 404 status on v2's file, not a header only v1 gives."""
    from fazt.store.sites import NewFile, replace_site
    from fazt.vfs import Stale

    root = tmp_path / "v1"
    root.mkdir()
    (root / "404.html").write_text("not found in v1")
    (root / "_headers").write_text("/*\n  X-Only-V1: yes\n  X-Ver: 1\n")
    deploy_dir(instance, "s", root)
    vfs = instance.vfs
    content = vfs.content
    raised = []

    def collected_once(site, info, body=None):
        # v1's page is read: a deploy prunes v1, and its content goes first
        if not raised and info.path == "404.html":
            raised.append(info.path)
            with instance.db.write() as conn:
                replace_site(conn, "s", [NewFile("p", "text/plain", [b"p in v2"]),
                                         NewFile("_headers", "text/plain",
                                                 [b"/*\n  X-Ver: 2\n"])], keep=1)
            vfs.forget_files()
            raise Stale("The site changed while this file was read; try again.")
        return content(site, info, body)

    vfs.content = collected_once
    r = client.simulate_get("/p", headers={"Host": "s.localhost"})
    assert raised == ["404.html"]
    assert (r.status_code, r.text, r.headers.get("X-Ver")) == (200, "p in v2", "2")
    assert "X-Only-V1" not in r.headers and r.headers["Cache-Control"] != "no-cache"


def test_a_request_outlasts_several_deploys_that_prune_its_version(instance, client, tmp_path):
    """With keep_versions 1 each deploy drops the version a request began with, and the
    version its retry takes can be dropped by the next deploy too: the request looks
    again (a few times) and answers from the version live then, not 503 "stale"."""
    from fazt.store.sites import NewFile, replace_site
    from fazt.vfs import Stale

    root = tmp_path / "v1"
    root.mkdir()
    (root / "index.html").write_text("v1")
    deploy_dir(instance, "s", root)
    vfs = instance.vfs
    content = vfs.content
    deploys = []

    def pruned_twice(site, info, body=None):
        if len(deploys) < 2:  # a deploy prunes the version just looked in, and collects it
            deploys.append(info.path)
            with instance.db.write() as conn:
                replace_site(conn, "s", [NewFile("index.html", "text/html",
                                                 [f"v{len(deploys) + 1}".encode()])], keep=1)
            vfs.forget_files()
            raise Stale("The site changed while this file was read; try again.")
        return content(site, info, body)

    vfs.content = pruned_twice
    r = client.simulate_get("/", headers={"Host": "s.localhost"})
    assert (r.status_code, r.text, len(deploys)) == (200, "v3", 2)
