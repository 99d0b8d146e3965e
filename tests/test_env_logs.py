"""Secrets for handlers (fazt.env), handler errors with their line, and `fazt site logs`."""

import json
import select
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Admin, Server, eventually, fazt, fazt_env, zip_of

SECRET = "sk_live_4f9a8b7c6d5e"
SCRIPT = """const atLoad = fazt.env.API_KEY;
function handler(request) {
  if (request.path === "/api/fail") {
    const parts = undefined;
    return { body: parts.length };
  }
  if (request.path === "/api/throw") throw new Error("upstream refused " + fazt.env.API_KEY);
  console.log("calling upstream with " + fazt.env.API_KEY);
  return { body: { key: fazt.env.API_KEY || null, same: atLoad === fazt.env.API_KEY,
                   names: Object.keys(fazt.env) } };
}
"""


SITE = zip_of({"api/main.js": SCRIPT, "index.html": "a site with a back end"})


def _call(srv: Server, site: str, path: str):
    return srv.request("GET", path, host=f"{site}.localhost")


def test_a_secret_reaches_its_handler_only_and_is_never_shown(tmp_path, db_path):
    with Server.running(db_path) as srv:
        admin = Admin(srv)
        for site in ("one", "two"):
            r = admin.post(f"/api/deploy?site={site}", data=SITE)
            assert r.status_code == 200, r.text
        assert _call(srv, "one", "/api/x").json() == {"key": None, "same": True, "names": []}

        set_cli = fazt("site", "env", "set", "one", "API_KEY", "--db", str(db_path),
                       input=SECRET + "\n")  # from stdin: never on a command line
        assert SECRET not in set_cli.stdout + set_cli.stderr
        assert eventually(lambda: _call(srv, "one", "/api/x").json()["key"] == SECRET)
        assert _call(srv, "two", "/api/x").json()["key"] is None  # never another site's
        r = admin.put("/api/sites/two/env/OTHER", json={"value": "two-only-value"})
        assert r.status_code == 200 and "two-only-value" not in r.text
        assert _call(srv, "two", "/api/x").json()["names"] == ["OTHER"]  # at once
        assert _call(srv, "one", "/api/x").json()["names"] == ["API_KEY"]

        thrown = _call(srv, "one", "/api/throw")
        assert thrown.status_code == 500 and SECRET not in thrown.text
        assert thrown.json()["error"]["line"] == 7

        # Every read the owner has: the API, the command line, the logs, the server's own.
        reads = [admin.get(p).text for p in (
            "/api/sites/one/env", "/api/sites", "/api/sites/one/logs", "/api/config",
            "/api/system/status", "/api/sites/one/versions")]
        listed = admin.get("/api/sites/one/env").json()["env"]
        assert [e["key"] for e in listed] == ["API_KEY"]
        assert eventually(lambda: "[secret]" in fazt(
            "site", "logs", "one", "--db", str(db_path)).stdout)
        for args in (["site", "env", "list", "one"], ["site", "env", "list", "one", "--json"],
                     ["site", "logs", "one"], ["site", "logs", "one", "--json"],
                     ["config", "get"], ["site", "list", "--json"],
                     ["server", "status", "--json"]):
            out = fazt(*args, "--db", str(db_path))
            reads.append(out.stdout + out.stderr)
        assert "API_KEY" in reads[0] and "[secret]" in reads[2]
        for text in reads:
            assert SECRET not in text and "two-only-value" not in text
        gone = admin.session.delete(srv.url("/api/sites/one/env/API_KEY"))
        assert gone.status_code == 200
        assert _call(srv, "one", "/api/x").json()["key"] is None
        assert admin.session.delete(srv.url("/api/sites/one/env/API_KEY")).status_code == 404
        assert admin.put("/api/sites/one/env/bad-name", json={"value": "x"}).status_code == 400
        lone = admin.session.put(srv.url("/api/sites/one/env/SURR"), data='{"value": "\\ud800abc"}',
                                 headers={"Content-Type": "application/json"})
        assert lone.status_code == 400 and "surrogate" in lone.text, lone.text
        assert admin.put("/api/sites/nope/env/K", json={"value": "x"}).status_code == 404
    assert SECRET not in srv.log()


def test_handler_errors_name_the_line_but_show_no_source(server):
    admin = Admin(server)
    admin.post("/api/deploy?site=err", data=SITE)
    r = _call(server, "err", "/api/fail")
    error = r.json()["error"]
    assert r.status_code == 500 and error["code"] == "js_error"
    assert error["file"] == "api/main.js" and error["line"] == 5
    assert "parts.length" not in r.text and "function handler" not in r.text
    lines = admin.get("/api/sites/err/logs").json()["lines"]
    assert any(line["message"].startswith("api/main.js:5: TypeError") and
               "api/main.js:5:" in line["message"] for line in lines), lines


def test_site_logs_follow_and_outlive_a_restart(tmp_path, db_path):
    with Server.running(db_path) as srv:
        admin = Admin(srv)
        admin.post("/api/deploy?site=chatty", data=SITE)
        follow = subprocess.Popen(
            [sys.executable, "-m", "fazt", "site", "logs", "chatty", "--follow", "--json",
             "--db", str(db_path)], stdout=subprocess.PIPE, text=True, env=fazt_env())
        try:
            for _ in range(3):
                _call(srv, "chatty", "/api/x")
            seen = [json.loads(follow.stdout.readline()) for _ in range(3)]
            assert [line["message"] for line in seen] == ["calling upstream with undefined"] * 3
            assert seen[0]["id"] < seen[1]["id"] < seen[2]["id"]
        finally:
            follow.terminate()
            follow.wait(timeout=10)
        listed = json.loads(fazt("site", "logs", "chatty", "--json", "-n", "2", "--db",
                                 str(db_path)).stdout)["lines"]
        assert len(listed) == 2
    with Server.running(db_path) as srv:  # the dashboard's view survives the restart
        lines = Admin(srv).get("/api/sites/chatty/logs").json()["lines"]
        assert [line["message"] for line in lines][-3:] == ["calling upstream with undefined"] * 3
    missing = fazt("site", "logs", "nosuch", "--db", str(db_path), check=False)
    assert missing.returncode == 1 and "no site named" in missing.stderr


def test_following_a_removed_sites_logs_ends_with_a_sentence(db_path, tmp_path):
    """`site logs --follow` went on after the site was removed, silent, and later printed
    the lines of another site made under the same name."""
    (tmp_path / "quiet").mkdir()
    (tmp_path / "quiet" / "index.html").write_text("quiet")
    fazt("deploy", str(tmp_path / "quiet"), "--site", "quiet", "--db", str(db_path))
    empty = fazt("site", "logs", "quiet", "--db", str(db_path))
    assert empty.stdout == "" and "no log lines yet" in empty.stderr
    follow = subprocess.Popen(
        [sys.executable, "-m", "fazt", "site", "logs", "quiet", "--follow", "--db",
         str(db_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=fazt_env())
    try:
        assert "waiting for new ones" in follow.stderr.readline()
        fazt("site", "remove", "quiet", "--db", str(db_path))
        out, err = follow.communicate(timeout=30)
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == 1 and "was removed" in err, err


TELLING = r"""
function handler(request) {
  const k = fazt.env.TOKEN;
  if (request.path === "/api/long") throw new Error("x".repeat(480) + k);
  if (request.path === "/api/json") { console.log(JSON.stringify({k: k})); return {body: "ok"}; }
  throw new Error("bad token " + k);
}
"""


@pytest.mark.parametrize("value", ["abcdefghijklmnopqrstuvwxyz0123456789SECRETTAIL",
                                   'line-one\nline-two"q', "caf\u00e9-\u2713-secret"])
def test_a_secret_is_masked_however_the_handler_lets_it_out(db_path, tmp_path, value):
    """Cut at 500 characters, cut at its own newline, or written by JSON.stringify: a
    secret in an error or a log line is still masked."""
    with Server.running(db_path) as srv:
        admin = Admin(srv)
        assert admin.post("/api/deploy?site=tell",
                          data=zip_of({"api/main.js": TELLING, "index.html": "x"})
                          ).status_code == 200
        assert admin.put("/api/sites/tell/env/TOKEN", json={"value": value}).status_code == 200
        parts = [p for p in value.replace("\n", " ").split() if len(p) >= 4]
        for path in ("/api/throw", "/api/long"):
            r = _call(srv, "tell", path)
            message = r.json()["error"]["message"]
            assert r.status_code == 500 and "[secret]" in message, message
            assert not any(part[:10] in message for part in parts), message
        assert _call(srv, "tell", "/api/json").text == "ok"
        logs = eventually(lambda: fazt("site", "logs", "tell", "--json", "--db",
                                       str(db_path)).stdout.count("[secret]") >= 3)
        text = fazt("site", "logs", "tell", "--json", "--db", str(db_path)).stdout
        assert logs and not any(part[:10] in text.replace("x" * 10, "") for part in parts), text


def test_env_commands_refuse_what_they_cannot_do(db_path, site_dir):
    fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db_path))
    for args, stdin in ((["blog", "EMPTY"], ""), (["blog", "bad-name", "x"], None),
                        (["blog", "KEY\n", "x"], None), (["nosuch", "KEY", "x"], None)):
        failed = fazt("site", "env", "set", *args, "--db", str(db_path), check=False,
                      input=stdin)
        assert failed.returncode == 1 and failed.stderr.count("\n") == 1, failed.stderr
    fazt("site", "env", "set", "blog", "KEY", "value-1", "--db", str(db_path))
    assert json.loads(fazt("site", "env", "list", "blog", "--json", "--db", str(db_path)
                           ).stdout)["env"][0]["key"] == "KEY"
    fazt("site", "env", "unset", "blog", "KEY", "--db", str(db_path))
    again = fazt("site", "env", "unset", "blog", "KEY", "--db", str(db_path), check=False)
    assert again.returncode == 1 and "no secret named" in again.stderr
    elsewhere = fazt("site", "env", "unset", "nosuch", "KEY", "--db", str(db_path),
                     check=False)
    assert elsewhere.returncode == 1 and "no site named 'nosuch'" in elsewhere.stderr


def test_site_logs_with_a_huge_count_prints_them_all(db_path, site_dir):
    """`-n 99999999999999999999` (more than SQLite's integers hold) means every line, not
    an OverflowError traceback."""
    fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db_path))
    shown = fazt("site", "logs", "blog", "-n", "9" * 25, "--json", "--db", str(db_path))
    assert json.loads(shown.stdout) == {"site": "blog", "lines": []}


def test_env_set_from_stdin_that_is_not_utf8_says_so(db_path, site_dir):
    """A value piped in with a stray byte, in a UTF-8 locale (Python reads stdin strictly
    there): one sentence, not a UnicodeDecodeError traceback."""
    fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db_path))
    failed = subprocess.run([sys.executable, "-m", "fazt", "site", "env", "set", "blog", "KEY",
                             "--db", str(db_path)], input=b"ok\xff", capture_output=True,
                            env=fazt_env(PYTHONIOENCODING="utf-8"), timeout=60)
    assert failed.returncode == 1 and b"Traceback" not in failed.stderr, failed.stderr
    assert b"not UTF-8" in failed.stderr
    done = subprocess.run([sys.executable, "-m", "fazt", "site", "env", "set", "blog", "KEY",
                           "--db", str(db_path)], input="caf\u00e9\n".encode(),
                          capture_output=True, env=fazt_env(PYTHONIOENCODING="utf-8"),
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_unstored_log_lines_are_bounded_and_the_loss_is_said(tmp_path):
    """Lines wait in RAM while the database is busy, at most UNSAVED_LINES of them; the
    oldest go first, and the first line stored afterwards says how many were lost."""
    import contextlib

    from conftest import init_db

    from fazt.errors import Unavailable
    from fazt.runtime import logs as site_logs
    from fazt.store import open_database
    from fazt.store.logs import read_lines

    db = open_database(str(_with_sites(init_db(tmp_path / "data.db"), tmp_path, "blog")))
    ring = site_logs.SiteLogs(unsaved_lines=5)
    ring._db = db  # what persist_to sets, without its thread: this test flushes itself
    real_write = db.write

    @contextlib.contextmanager
    def busy():
        raise Unavailable("The database is busy; try again shortly.")
        yield

    db.write = busy
    for n in range(8):
        ring.add("blog", "log", f"line {n}")
    assert ring.flush() == 0  # busy: nothing lost yet beyond the bound
    ring.add("blog", "log", "line 8")
    db.write = real_write
    assert ring.flush() == 5
    with db.read() as conn:
        stored = [line["message"] for line in read_lines(conn, "blog")]
    assert stored == ["fazt: 4 log lines were lost before they could be stored",
                      "line 4", "line 5", "line 6", "line 7", "line 8"]
    db.close()


def _line_within(proc: subprocess.Popen, seconds: float) -> str | None:
    """The next line `proc` prints, if it prints one within `seconds`."""
    ready, _, _ = select.select([proc.stdout], [], [], seconds)
    return proc.stdout.readline() if ready else None


def test_follow_with_no_past_lines_prints_only_new_ones(tmp_path, db_path):
    """`fazt site logs NAME -f -n 0`, as `tail -f -n 0`: the history stays unprinted."""
    with Server.running(db_path) as srv:
        Admin(srv).post("/api/deploy?site=chatty", data=SITE)
        _call(srv, "chatty", "/api/old")
        assert eventually(lambda: fazt("site", "logs", "chatty", "--json", "--db",
                                       str(db_path)).stdout.count('"id"') == 1)
        follow = subprocess.Popen(
            [sys.executable, "-m", "fazt", "site", "logs", "chatty", "-f", "-n", "0", "--json",
             "--db", str(db_path)], stdout=subprocess.PIPE, text=True, env=fazt_env())
        try:
            # Until the follower has read where the history ends, a new line counts as
            # history: call again until one is printed (a bare readline could wait forever).
            printed = eventually(lambda: _call(srv, "chatty", "/api/new").status_code == 200
                                 and _line_within(follow, 2), timeout=30)
            assert printed, "the follower printed no new line"
            first = json.loads(printed)
            assert fazt("site", "logs", "chatty", "--json", "--db", str(db_path)
                        ).stdout.count('"id"') >= 2
            old = json.loads(fazt("site", "logs", "chatty", "--json", "-n", "1000", "--db",
                                  str(db_path)).stdout)["lines"][0]
            assert first["id"] > old["id"]
        finally:
            follow.terminate()
            follow.wait(timeout=10)
    negative = fazt("site", "logs", "chatty", "-n", "-5", "--db", str(db_path), check=False)
    assert negative.returncode == 2 and "0 or more" in negative.stderr


def test_the_api_reads_the_lines_the_command_line_reads(tmp_path):
    """The cockpit's view of a site's log is the database's (what `fazt site logs` prints)
    and then the lines not written yet: a site past the RAM rings' count, or one removed
    and deployed again by another process, reads the same both ways."""
    from conftest import init_db

    from fazt.runtime import logs as site_logs
    from fazt.store import open_database
    from fazt.store.logs import read_lines

    db = open_database(str(_with_sites(init_db(tmp_path / "data.db"), tmp_path, "a", "b",
                                       "c")))
    ring = site_logs.SiteLogs(max_sites=2)
    ring._db = db  # what persist_to sets, without its thread: this test flushes itself
    for site in ("a", "b", "c"):
        ring.add(site, "log", f"hello {site}")
    assert [line["message"] for line in ring.lines("a")] == ["hello a"]  # not written yet
    assert ring.flush() == 3
    ring.add("a", "warn", "again")
    assert [line["message"] for line in ring.lines("a")] == ["hello a", "again"]
    ring.flush()
    with db.read() as conn:
        stored = [{k: line[k] for k in ("time", "level", "message")}
                  for line in read_lines(conn, "a")]
    assert ring.lines("a") == stored and len(stored) == 2
    ring.add("a", "log", "said just before another process removed the site")
    fazt("site", "remove", "a", "--db", str(tmp_path / "data.db"))
    _with_sites(tmp_path / "data.db", tmp_path, "a")  # and made it again
    ring.flush()
    assert ring.lines("a") == []  # the new site starts clean
    db.close()


def _with_sites(db: Path, tmp_path: Path, *names: str) -> Path:
    folder = tmp_path / "one-page"
    folder.mkdir(exist_ok=True)
    (folder / "index.html").write_text("a page")
    for name in names:
        fazt("deploy", str(folder), "--site", name, "--db", str(db))
    return db
