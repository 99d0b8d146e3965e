"""`fazt restore BACKUP`: integrity first, never under a running server, the old file kept
until the new one is proven, the result 0600; and a backup taken under load restores whole."""

import hashlib
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import requests
from conftest import Admin, Server, eventually, fazt, fazt_env, foreign_database, init_db, zip_of


def _sites(db: Path) -> dict:
    conn = sqlite3.connect(db)
    try:
        return dict(conn.execute(
            "SELECT s.name || '/' || f.path, b.sha256 FROM sites s"
            " JOIN files f ON f.deploy_id = s.deploy_id JOIN blobs b ON b.id = f.blob_id"
            " WHERE s.name != 'admin'").fetchall())
    finally:
        conn.close()


def test_restore_puts_the_backup_back_with_0600(db_path, site_dir, tmp_path):
    fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db_path))
    backup = tmp_path / "backup.db"
    fazt("backup", str(backup), "--db", str(db_path))
    before = _sites(db_path)
    (site_dir / "index.html").write_text("<h1>a later version</h1>")
    fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db_path))
    fazt("deploy", str(site_dir), "--site", "other", "--db", str(db_path))
    assert _sites(db_path) != before

    done = fazt("restore", str(backup), "--db", str(db_path))
    assert "integrity ok" in done.stdout
    assert _sites(db_path) == before
    assert stat.S_IMODE(os.stat(db_path).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("data.db")) in (
        ["data.db"], ["data.db", "data.db-shm", "data.db-wal"])  # nothing else left behind


def test_restore_onto_a_fresh_machine(db_path, tmp_path):
    backup = tmp_path / "backup.db"
    fazt("backup", str(backup), "--db", str(db_path))
    fresh = tmp_path / "new" / "home" / "data.db"
    fazt("restore", str(backup), "--db", str(fresh))
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o600
    with Server.running(fresh) as srv:
        Admin(srv)  # the owner of the backup signs in


def test_a_db_path_that_cannot_hold_a_database_is_one_sentence(db_path, tmp_path):
    """`--db` naming a folder, or a path under a file: one sentence, before any copy."""
    backup = tmp_path / "backup.db"
    fazt("backup", str(backup), "--db", str(db_path))
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "a-folder").mkdir()
    for db, words in [(tmp_path / "a-file" / "data.db", "Cannot make the folder"),
                      (tmp_path / "a-folder", "is a folder")]:
        result = fazt("restore", str(backup), "--db", str(db), check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert words in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list((tmp_path / "a-folder").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a-file", "a-folder", "backup.db", "data.db"]


def test_a_pipe_or_device_is_never_replaced_by_a_backup_or_a_restore(db_path, tmp_path):
    """`fazt backup /dev/null` (run as root) renamed its copy over /dev/null itself, and a
    restore over a device did the same; a pipe as --db hung SQLite. One sentence now, and
    the special file stays what it was."""
    backup = tmp_path / "backup.db"
    fazt("backup", str(backup), "--db", str(db_path))
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    for args in (["backup", str(pipe), "--db", str(db_path)],
                 ["restore", str(backup), "--db", str(pipe)],
                 ["config", "get", "domain", "--db", str(pipe)]):
        result = fazt(*args, check=False, timeout=30)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "is not a regular file" in result.stderr, args
        assert stat.S_ISFIFO(os.stat(pipe).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.db", "data.db", "pipe"]


def test_another_programs_database_is_never_restored_over(db_path, tmp_path):
    """--db naming another program's SQLite file by mistake: a restore threw it away
    ("the database it replaced is gone"). One sentence now, and the file is as it was."""
    backup = tmp_path / "backup.db"
    fazt("backup", str(backup), "--db", str(db_path))
    other = tmp_path / "notes.sqlite"
    before = hashlib.sha256(foreign_database(other)).hexdigest()
    result = fazt("restore", str(backup), "--db", str(other), check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "not a fazt one" in result.stderr
    assert hashlib.sha256(other.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["backup.db", "data.db", "notes.sqlite"]


def test_restoring_a_replicating_database_says_it_will_replicate_again(db_path, tmp_path):
    """A restored copy resumes its primary's replication when started: if the primary
    still runs, the two spoil the replica. The restore says so, and only then."""
    backup = tmp_path / "backup.db"
    fazt("backup", str(backup), "--db", str(db_path))
    quiet = fazt("restore", str(backup), "--db", str(tmp_path / "a" / "data.db")).stdout
    assert "replicates to" not in quiet
    url = "s3://bucket/fazt?endpoint=http://127.0.0.1:9&region=auto"
    conn = sqlite3.connect(backup)
    conn.execute("INSERT INTO config (key, value, updated_at) VALUES ('replica_url', ?, 0)"
                 " ON CONFLICT(key) DO UPDATE SET value = excluded.value", (f'"{url}"',))
    conn.commit()
    conn.close()
    said = fazt("restore", str(backup), "--db", str(tmp_path / "b" / "data.db")).stdout
    assert f"It replicates to {url}" in said and "two would spoil the replica" in said


@pytest.mark.parametrize("damage", ["truncated", "garbage", "text"])
def test_restore_replaces_a_damaged_database_and_keeps_it_aside(db_path, site_dir, tmp_path,
                                                                damage):
    """Replacing a broken database is what a restore is for: the damaged file cannot be
    checkpointed, so it is set aside as it is (kept: it may hold what the backup does
    not), and nothing else is left behind."""
    fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db_path))
    backup = tmp_path / "backup.db"
    fazt("backup", str(backup), "--db", str(db_path))
    before = _sites(db_path)
    broken = tmp_path / "broken.db"
    if damage == "truncated":
        broken.write_bytes(db_path.read_bytes()[:100_000])
    else:
        broken.write_bytes(os.urandom(300_000) if damage == "garbage" else b"notes\n" * 999)
    done = fazt("restore", str(backup), "--db", str(broken))
    assert "integrity ok" in done.stdout and "damaged database" in done.stdout, done.stdout
    assert _sites(broken) == before
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("broken.db"))
    assert left[0] == "broken.db" and len(left) == 2 and left[1].startswith("broken.db.damaged-")
    assert str(tmp_path / left[1]) in done.stdout


def test_paths_with_uri_characters_restore_where_they_say(db_path, tmp_path):
    """`#`, `?` and `%` end or change a `file:` URI: the backup read and the file proven
    are the ones named, and no stray file appears."""
    odd = tmp_path / "odd #1?x%20"
    odd.mkdir()
    backup = odd / "b#1?.db"
    fazt("backup", str(backup), "--db", str(db_path))
    target = odd / "t#1%20.db"
    done = fazt("restore", str(backup), "--db", str(target))
    assert "integrity ok" in done.stdout
    assert _sites(target) == _sites(db_path)
    assert sorted(p.name for p in odd.iterdir()) == ["b#1?.db", "t#1%20.db"]
    stray = {p.name for p in tmp_path.iterdir()} - {"odd #1?x%20"}  # as "odd " (cut at '#')
    assert stray <= {"data.db", "data.db-wal", "data.db-shm"}, stray


@pytest.mark.parametrize("damage", ["garbage", "truncated", "corrupt", "not_fazt", "missing"])
def test_a_bad_backup_is_refused_and_nothing_changes(db_path, tmp_path, damage):
    backup = tmp_path / "backup.db"
    fazt("backup", str(backup), "--db", str(db_path))
    if damage == "garbage":
        backup.write_bytes(b"not a database at all" * 100)
    elif damage == "truncated":
        data = backup.read_bytes()
        backup.write_bytes(data[: len(data) // 2])
    elif damage == "corrupt":  # pages overwritten: SQLite lists each, fazt says one
        with open(backup, "r+b") as f:
            f.seek(8192)
            f.write(b"\xff" * 4096)
    elif damage == "not_fazt":
        backup.unlink()
        sqlite3.connect(backup).execute("CREATE TABLE t (x)").connection.commit()
    else:
        backup.unlink()
    digest = hashlib.sha256(db_path.read_bytes()).hexdigest()
    failed = fazt("restore", str(backup), "--db", str(db_path), check=False)
    assert failed.returncode == 1
    assert "Traceback" not in failed.stderr and failed.stderr.count("\n") == 1, failed.stderr
    assert hashlib.sha256(db_path.read_bytes()).hexdigest() == digest
    assert not list(tmp_path.glob("data.db.r*"))  # no .restoring / .replaced left


def test_a_database_of_a_newer_schema_is_refused_and_left_as_it_is(db_path):
    """A newer fazt's database (the binary rolled back after an upgrade): a server or a
    command writing to tables whose meaning it does not know could lose data."""
    from fazt.store.schema import MIGRATIONS

    conn = sqlite3.connect(db_path, isolation_level=None)
    conn.execute("INSERT INTO schema_migrations VALUES (?, 0)", (len(MIGRATIONS) + 1,))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    digest = hashlib.sha256(db_path.read_bytes()).hexdigest()
    for command in (["server", "start", "--port", "1"], ["site", "list"],
                    ["server", "recalibrate"], ["deploy", str(db_path.parent), "--site", "x"]):
        failed = fazt(*command, "--db", str(db_path), check=False, timeout=30)
        assert failed.returncode == 1, (command, failed.stdout, failed.stderr)
        assert "newer fazt" in failed.stderr and failed.stderr.count("\n") == 1, failed.stderr
    assert hashlib.sha256(db_path.read_bytes()).hexdigest() == digest


def test_restore_refuses_a_database_a_running_server_holds(server, db_path, tmp_path):
    backup = tmp_path / "backup.db"
    fazt("backup", str(backup), "--db", str(db_path))
    failed = fazt("restore", str(backup), "--db", str(db_path), check=False)
    assert failed.returncode == 1 and "running fazt server" in failed.stderr
    assert server.get("/_fazt/health").status_code == 200
    server.stop()
    fazt("restore", str(backup), "--db", str(db_path))  # stopped: now it may


def test_a_second_server_on_the_same_database_is_refused(server, db_path, tmp_path):
    second = fazt("server", "start", "--db", str(db_path), "--port", "1", check=False,
                  timeout=30)
    assert second.returncode == 1 and "Another fazt server" in second.stderr
    # A hard link is another name for the same file: each name would get a WAL of its own,
    # and one server's writes would be lost.
    link = tmp_path / "linked.db"
    os.link(db_path, link)
    second = fazt("server", "start", "--db", str(link), "--port", "1", check=False, timeout=30)
    assert second.returncode == 1 and "Another fazt server" in second.stderr
    backup = tmp_path / "backup.db"
    fazt("backup", str(backup), "--db", str(db_path))
    failed = fazt("restore", str(backup), "--db", str(link), check=False)
    assert failed.returncode == 1 and "running fazt server" in failed.stderr


def test_the_replaced_file_returns_when_the_new_one_fails_its_proof(db_path, tmp_path,
                                                                    monkeypatch):
    from fazt import restore
    from fazt.errors import FaztError

    backup = tmp_path / "backup.db"
    fazt("backup", str(backup), "--db", str(db_path))
    fazt("server", "init", "--db", str(tmp_path / "other.db"), "--domain", "x.test",
         "--username", "someone", "--password", "another password")
    digest = hashlib.sha256(db_path.read_bytes()).hexdigest()

    def failing_proof(target):
        raise FaztError("proof failed")

    monkeypatch.setattr(restore, "_prove", failing_proof)
    with pytest.raises(FaztError, match="proof failed"):
        restore.restore_file(str(tmp_path / "other.db"), str(db_path))
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT value FROM secrets WHERE key='username'").fetchone()[0] == "owner"
    conn.close()
    assert hashlib.sha256(db_path.read_bytes()).hexdigest() == digest
    assert not list(tmp_path.glob("data.db.r*"))


def test_a_backup_taken_under_load_restores_whole_and_byte_exact(tmp_path):
    db = init_db(tmp_path / "data.db")
    big = os.urandom(3 * 1024 * 1024 + 17)
    files = {"index.html": "<h1>steady</h1>", "big.bin": big,
             "api/main.js": "function handler(r) { fazt.kv.set('n', (fazt.kv.get('n') || 0)"
                            " + 1); return {body: 'ok'}; }"}
    backup = tmp_path / "backup.db"
    with Server.running(db) as srv:
        admin = Admin(srv)
        assert admin.post("/api/deploy?site=steady", data=zip_of(files)).status_code == 200
        stop = threading.Event()
        errors: list[str] = []

        def load(kind: int) -> None:
            session = requests.Session()
            n = 0
            while not stop.is_set():
                n += 1
                try:
                    if kind == 0:
                        r = session.get(srv.url("/big.bin"), headers={"Host": "steady.localhost"})
                        assert r.content == big
                    elif kind == 1:
                        r = session.post(srv.url("/api/count"),
                                         headers={"Host": "steady.localhost"})
                        assert r.status_code in (200, 429), r.text
                    else:
                        r = admin.post(f"/api/deploy?site=churn{n % 3}",
                                       data=zip_of({"x.txt": os.urandom(200_000)}))
                        assert r.status_code in (200, 503), r.text
                except Exception as exc:  # noqa: BLE001 - reported below
                    errors.append(repr(exc))
                    return

        workers = [threading.Thread(target=load, args=(k,)) for k in (0, 1, 2)]
        for w in workers:
            w.start()
        try:
            fazt("backup", str(backup), "--db", str(db))
        finally:
            stop.set()
            for w in workers:
                w.join()
        assert not errors, errors
    fazt("restore", str(backup), "--db", str(db))
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    with Server.running(db) as srv:
        for path, want in (("/big.bin", big), ("/", b"<h1>steady</h1>")):
            assert srv.get(path, host="steady.localhost").content == want


# Runs `fazt ARGS` with each step of its copy slowed down, so that a signal surely arrives
# mid-copy (the copy is otherwise the same).
_SLOW_COPY = """
import sys, time
import fazt.restore as restore
import fazt.store.database as database
from fazt.cli import main
database.BACKUP_STEP_PAGES = restore.RESTORE_STEP_PAGES = 16
database._between_steps = restore._between_steps = lambda *_: time.sleep(0.05)
sys.exit(main(sys.argv[1:]))
"""


def _ballast(db: Path) -> None:
    """Some MB, so that a copy takes many steps."""
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("CREATE TABLE ballast (data BLOB)")
        conn.executemany("INSERT INTO ballast VALUES (randomblob(65536))", [()] * 64)
    conn.close()


def _stop_slow_copy(args: list[str], partial: Path, signum: int) -> None:
    """Run `fazt ARGS` slowed down, send `signum` once `partial` is being written, and
    check that it ends by the signal, without a traceback."""
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_COPY, *args], env=fazt_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert eventually(lambda: partial.exists() and partial.stat().st_size > 0, timeout=30)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signum, err
    assert b"Traceback" not in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_backup_ended_by_a_signal_leaves_nothing_and_keeps_the_previous_one(
        db_path, tmp_path, signum):
    """`fazt backup OUT` stopped mid-copy (a service manager's SIGTERM, a closed
    terminal's SIGHUP): no `.partial` file is left, and an earlier backup at OUT stays."""
    _ballast(db_path)
    out = tmp_path / "backup.db"
    out.write_bytes(b"yesterday's backup")
    _stop_slow_copy(["backup", str(out), "--db", str(db_path)],
                    tmp_path / "backup.db.partial", signum)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("backup")) == [
        "backup.db"]
    assert out.read_bytes() == b"yesterday's backup"


def test_a_restore_ended_by_a_signal_leaves_the_database_as_it_was(db_path, tmp_path):
    """SIGTERM while the backup is copied beside the database: the copy goes, the
    database is untouched."""
    backup = tmp_path / "backup.db"
    fazt("backup", str(backup), "--db", str(db_path))
    _ballast(backup)
    target = tmp_path / "live" / "data.db"
    target.parent.mkdir()
    fazt("backup", str(target), "--db", str(db_path))
    before = target.read_bytes()
    _stop_slow_copy(["restore", str(backup), "--db", str(target)],
                    tmp_path / "live" / "data.db.restoring", signal.SIGTERM)
    assert sorted(p.name for p in target.parent.iterdir()) == ["data.db"]
    assert target.read_bytes() == before


def test_a_backup_over_the_database_itself_is_refused(db_path, site_dir, tmp_path):
    """`fazt backup` given the database's own path (as typed, through a link, or its WAL):
    the copy renamed over it would swap the file under a running server, or replace the
    WAL with a database, and lose what they hold."""
    fazt("deploy", str(site_dir), "--site", "blog", "--db", str(db_path))
    (tmp_path / "hard.db").hardlink_to(db_path)
    (tmp_path / "soft.db").symlink_to(db_path)
    wal = Path(f"{db_path}-wal")
    for out in (db_path, tmp_path / "hard.db", tmp_path / "soft.db", wal,
                Path(f"{db_path}-shm")):
        failed = fazt("backup", str(out), "--db", str(db_path), check=False)
        assert failed.returncode == 1 and "is the database itself" in failed.stderr, out
        assert failed.stderr.count("\n") == 1
    assert len(_sites(db_path)) == 4  # the site's files, all there
    assert not any(p.name.endswith(".partial") for p in tmp_path.rglob("*"))


def test_a_restore_killed_before_its_last_rename_leaves_the_old_database_in_place(
        db_path, tmp_path, monkeypatch):
    """The current database used to be renamed aside before the new one was renamed in:
    a restore killed between the two left no database at its path. Now the old one stays
    at the path (it is linked aside) until the one rename that puts the new one there."""
    from fazt import restore

    backup = tmp_path / "backup.db"
    fazt("backup", str(backup), "--db", str(db_path))
    digest = hashlib.sha256(db_path.read_bytes()).hexdigest()
    replace = os.replace

    def killed_at_the_swap(src, dst):
        if str(dst) == str(db_path) and str(src).endswith(".restoring"):
            raise KeyboardInterrupt  # as a kill there: nothing after it runs
        return replace(src, dst)

    monkeypatch.setattr(restore.os, "replace", killed_at_the_swap)
    with pytest.raises(KeyboardInterrupt):
        restore.restore_file(str(backup), str(db_path))
    monkeypatch.setattr(restore.os, "replace", replace)
    assert hashlib.sha256(db_path.read_bytes()).hexdigest() == digest
    conn = sqlite3.connect(db_path)
    assert conn.execute("SELECT value FROM secrets WHERE key='username'").fetchone()[0] == "owner"
    conn.close()
    # and a restore run again completes (the killed one's copy is cleared first)
    restore.restore_file(str(backup), str(db_path))
    assert not list(tmp_path.glob("data.db.restoring*"))
    conn = sqlite3.connect(db_path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
