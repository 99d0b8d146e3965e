"""The store: page size, WAL, migrations, chunks, atomic deploys."""

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile

import pytest
from conftest import fazt_env, foreign_database

from fazt.errors import FaztError
from fazt.store import open_database
from fazt.store.database import PAGE_SIZE, create_database
from fazt.store.files import CHUNK_SIZE, put_blob, read_blob, read_chunk
from fazt.store.schema import MIGRATIONS
from fazt.store.sites import (
    NewFile,
    find_file,
    list_versions,
    prune_all,
    remove_site,
    replace_site,
    rollback_site,
)


@pytest.fixture
def db(tmp_path):
    database = create_database(str(tmp_path / "store.db"))
    yield database
    database.close()


def test_new_database_has_big_pages_wal_and_schema_version(db):
    conn = sqlite3.connect(db.path)
    assert conn.execute("PRAGMA page_size").fetchone()[0] >= PAGE_SIZE >= 8192
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert versions == list(range(1, len(MIGRATIONS) + 1))


def test_create_refuses_an_existing_file(tmp_path):
    path = tmp_path / "x.db"
    path.write_bytes(b"precious")
    with pytest.raises(FaztError, match="already exists"):
        create_database(str(path))
    assert path.read_bytes() == b"precious"


def test_open_refuses_missing_and_garbage(tmp_path):
    with pytest.raises(FaztError, match="No database"):
        open_database(str(tmp_path / "missing.db"))
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(FaztError, match="not a usable"):
        open_database(str(junk))


def test_open_leaves_a_file_it_did_not_make_untouched(tmp_path):
    """--db naming another program's SQLite file, or an empty one, by mistake: refused,
    and the file keeps its bytes (no fazt tables written in, no switch to WAL)."""
    other = tmp_path / "notes.db"
    before = foreign_database(other)
    with pytest.raises(FaztError, match="not a fazt one"):
        open_database(str(other))
    assert other.read_bytes() == before
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(FaztError, match="empty file"):
        open_database(str(empty))
    assert empty.read_bytes() == b""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.db", "notes.db"]


def test_connections_get_the_pragmas(db):
    with db.read() as conn:
        assert conn.execute("PRAGMA mmap_size").fetchone()[0] == 0
        assert conn.execute("PRAGMA cache_size").fetchone()[0] == -int(db.limits.cache_mb * 1024)
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == db.limits.busy_ms


def test_blob_is_chunked_and_deduplicated(db):
    data = bytes(range(256)) * (CHUNK_SIZE * 2 // 256 + 100)  # a bit over two chunks
    with db.write() as conn:
        blob = put_blob(conn, [data[i:i + 10_000] for i in range(0, len(data), 10_000)])
        again = put_blob(conn, [data])
    assert again.id == blob.id
    with db.read() as conn:
        n = conn.execute("SELECT COUNT(*) FROM chunks WHERE blob_id = ?", (blob.id,)).fetchone()[0]
        assert n == 3
        assert read_chunk(conn, blob.id, 1) == data[CHUNK_SIZE:2 * CHUNK_SIZE]
        assert read_blob(conn, blob.id) == data
        assert conn.execute("SELECT COUNT(*) FROM blobs").fetchone()[0] == 1


def _files(**contents):
    return [NewFile(path, "text/plain", [body.encode()]) for path, body in contents.items()]


def test_failed_deploy_keeps_the_old_version(db):
    with db.write() as conn:
        replace_site(conn, "blog", _files(**{"index.html": "v1"}))

    def broken():
        yield b"half"
        raise OSError("disk on fire")

    with pytest.raises(OSError), db.write() as conn:
        replace_site(conn, "blog", [NewFile("index.html", "text/html", [b"v2"]),
                                    NewFile("b.txt", "text/plain", broken())])
    with db.read() as conn:
        info = find_file(conn, "blog", "index.html")
        assert read_blob(conn, info.blob_id) == b"v1"
        assert find_file(conn, "blog", "b.txt") is None


def test_versions_are_kept_pruned_and_collected(db):
    """Redeploys keep `keep` versions; content no kept version uses goes at the next
    collection, the content shared between versions and sites stays once."""
    from fazt.vfs import Leases

    def count(table: str) -> int:
        with db.read() as conn:
            return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

    with db.write() as conn:
        replace_site(conn, "a", _files(**{"x": "one", "y": "shared"}), keep=2)
        replace_site(conn, "b", _files(**{"z": "shared"}), keep=2)
        replace_site(conn, "a", _files(**{"x": "two"}), keep=2)
    assert Leases().collect(db) == 0 and count("blobs") == 3  # a's first version is kept
    with db.write() as conn:
        assert replace_site(conn, "a", _files(**{"x": "three"}), keep=2)["version"] == 3
        assert [v["version"] for v in list_versions(conn, "a")] == [3, 2]
    assert Leases().collect(db) == 1 and count("blobs") == 3  # "one" went; "shared" is b's
    with db.write() as conn:
        assert rollback_site(conn, "a")["version"] == 2
        assert find_file(conn, "a", "x") is not None
        assert [v["live"] for v in list_versions(conn, "a")] == [False, True]
        with pytest.raises(LookupError):
            rollback_site(conn, "a", 1)
        assert remove_site(conn, "b")
        assert not remove_site(conn, "b")
    assert Leases().collect(db) == 1 and count("blobs") == 2 and count("chunks") == 2


def test_pruning_keeps_the_versions_most_recently_live_not_the_highest_numbers(db):
    """After rollbacks the versions kept are the live one and those live most recently
    before it (by a deploy or a rollback), whatever their numbers."""
    def kept() -> list[int]:
        with db.read() as conn:
            return [v["version"] for v in list_versions(conn, "a")]

    with db.write() as conn:
        for n in range(1, 7):
            replace_site(conn, "a", _files(x=f"v{n}"), keep=10)
        rollback_site(conn, "a", 2)
        rollback_site(conn, "a", 4)  # live: 4, then 2, then 6 were live, most recent first
        prune_all(conn, 3)
    assert kept() == [6, 4, 2]
    with db.write() as conn:
        rollback_site(conn, "a", 2)
        replace_site(conn, "a", _files(x="v7"), keep=3)  # 2 was live until now: it stays
    assert kept() == [7, 4, 2]
    with db.write() as conn:
        assert rollback_site(conn, "a")["version"] == 2  # the older one live most recently
        prune_all(conn, 2)
    assert kept() == [7, 2]  # the one rolled back from stays beside the live one


def test_a_leased_blob_outlives_its_versions_until_the_stream_ends(db):
    from fazt.vfs import Leases, Stale

    with db.write() as conn:
        replace_site(conn, "a", _files(**{"x": "old"}))
        old = find_file(conn, "a", "x")
    leases = Leases()
    leases.take(old.blob_id)
    with db.write() as conn:
        replace_site(conn, "a", _files(**{"x": "new"}))
    assert leases.collect(db) == 0 and leases.deferred == 1 and not leases.due()
    with db.read() as conn:
        assert read_blob(conn, old.blob_id) == b"old"
    leases.give(old.blob_id)
    assert leases.due() and leases.collect(db) == 1
    with pytest.raises(Stale):  # a lease taken while its blob is being collected
        leases._doomed = {old.blob_id}
        leases.take(old.blob_id)


def _blob_ids(db) -> set[int]:
    with db.read() as conn:
        return {r[0] for r in conn.execute("SELECT id FROM blobs")}


def _file_id(db, site: str, path: str) -> int:
    with db.read() as conn:
        return find_file(conn, site, path).blob_id


def _loose(db) -> set[int]:
    with db.read() as conn:
        return {r[0] for r in conn.execute("SELECT blob_id FROM loose_blobs")}


def test_a_collection_deletes_exactly_what_was_dropped_and_spares_what_is_leased(db):
    """The collector looks only at the contents of dropped versions (and the variants of
    those no version uses): it deletes exactly the unused ones, keeps the shared, the live
    and the leased (which stay loose until their stream ends), and leaves nothing loose."""
    from fazt.store.files import put_variant
    from fazt.vfs import Leases

    with db.write() as conn:
        replace_site(conn, "a", _files(keep="kept", gone="gone", held="held", same="shared"))
        replace_site(conn, "b", _files(same="shared"))
        before = {f: find_file(conn, "a", f).blob_id for f in ("keep", "gone", "held", "same")}
        gzip = put_variant(conn, before["gone"], "gzip", [b"gone, compressed"]).id
        other = put_variant(conn, before["keep"], "gzip", [b"kept, compressed"]).id
    leases = Leases()
    leases.take(before["held"])
    with db.write() as conn:
        replace_site(conn, "a", _files(keep="kept", new="new", same="shared"))  # keeps 1
    assert _loose(db) == {before[f] for f in ("keep", "gone", "held", "same")}
    assert leases.collect(db) == 2 and leases.deferred == 1
    assert _blob_ids(db) == {before["keep"], before["same"], before["held"], other,
                             _file_id(db, "a", "new")}
    assert gzip not in _blob_ids(db)
    assert _loose(db) == {before["held"]}  # spared for its stream, collected after it
    leases.give(before["held"])
    assert leases.due() and leases.collect(db) == 1 and _loose(db) == set()
    with db.write() as conn:
        assert remove_site(conn, "b")
    assert leases.collect(db) == 0 and before["same"] in _blob_ids(db)  # a's still
    with db.write() as conn:
        assert remove_site(conn, "a")
    assert leases.collect(db) == 4 and _blob_ids(db) == set() and _loose(db) == set()


def test_the_sweep_finds_what_no_drop_marked_loose(db):
    """A blob that lost its use some other way (a database from before loose blobs, a
    bug) is not seen by the next collection, only by the sweep, which spares the live."""
    from fazt.vfs import Leases

    with db.write() as conn:
        replace_site(conn, "a", _files(x="live"))
        orphan = put_blob(conn, [b"nobody's"]).id
    assert Leases().collect(db) == 0 and orphan in _blob_ids(db)
    assert Leases().sweep(db) == 1 and _blob_ids(db) == {_file_id(db, "a", "x")}


def test_the_server_sweeps_every_hour_off_the_request_path(instance):
    with instance.db.write() as conn:
        orphan = put_blob(conn, [b"nobody's"]).id
    instance.tick()
    assert orphan in _blob_ids(instance.db)  # no sweep yet: nothing marked it loose
    instance._next_sweep = 0
    instance.tick()
    assert orphan not in _blob_ids(instance.db) and instance._next_sweep > 0


def test_a_database_from_before_loose_blobs_starts_with_its_unused_ones_loose(tmp_path):
    from fazt.store.schema import migrate

    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    saved = MIGRATIONS[:]
    try:
        MIGRATIONS[:] = saved[:4]
        migrate(conn)
        conn.execute("BEGIN")
        _old_site(conn, "a", versions=1, live=1)
        unused = put_blob(conn, [b"unused"]).id
        conn.execute("COMMIT")
    finally:
        MIGRATIONS[:] = saved
    migrate(conn)
    assert [r[0] for r in conn.execute("SELECT blob_id FROM loose_blobs")] == [unused]
    conn.close()


def test_a_database_from_before_keeps_its_live_version_and_then_the_newest(tmp_path):
    """An older fazt recorded only which version is live: after the migration it counts
    as the most recently live, the others by number below it, and from then on rollbacks
    are remembered."""
    from fazt.store.schema import migrate

    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    saved = MIGRATIONS[:]
    try:
        MIGRATIONS[:] = saved[:5]
        migrate(conn)
        conn.execute("BEGIN")
        _old_site(conn, "a", versions=4, live=2)  # rolled back from 4 to 2
        conn.execute("COMMIT")
    finally:
        MIGRATIONS[:] = saved
    migrate(conn)
    conn.execute("BEGIN")
    rollback_site(conn, "a", 3)
    replace_site(conn, "a", _files(x="v5"), keep=3)  # 3, then 2 were live before it
    assert [v["version"] for v in list_versions(conn, "a")] == [5, 3, 2]
    conn.execute("COMMIT")
    conn.close()


def test_two_processes_opening_an_older_database_at_once_both_migrate_it(tmp_path):
    """Two processes open a database an older fazt made (the server and a command, right
    after an upgrade): both see migration 6 pending, one applies it while the other waits
    for the write lock, and the other must then find it done, not apply it again
    (ALTER TABLE: "duplicate column name", and "not a usable fazt database")."""
    from fazt.store.schema import migrate

    path = tmp_path / "old.db"
    saved = MIGRATIONS[:]
    try:
        MIGRATIONS[:] = saved[:5]
        migrate(sqlite3.connect(path, isolation_level=None))
    finally:
        MIGRATIONS[:] = saved

    other = sqlite3.connect(path, isolation_level=None)

    class Racing:
        """A connection whose first write lock is taken after the other process migrated."""

        def __init__(self, conn):
            self.conn, self.raced = conn, False

        def execute(self, sql, *args):
            if sql == "BEGIN IMMEDIATE" and not self.raced:
                self.raced = True
                migrate(other)  # the other process got the lock first
            return self.conn.execute(sql, *args)

        @property
        def in_transaction(self):
            return self.conn.in_transaction

    conn = sqlite3.connect(path, isolation_level=None)
    assert migrate(Racing(conn)) == len(MIGRATIONS)
    versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
    assert versions == list(range(1, len(MIGRATIONS) + 1))
    assert not conn.in_transaction


def _old_site(conn: sqlite3.Connection, name: str, versions: int, live: int) -> None:
    """Versions 1..`versions` of a site, `live` served, as a fazt of schema 4 or 5 wrote
    them (its own code, not today's, which writes columns those lacked)."""
    blob = put_blob(conn, [b"same"]).id
    for n in range(1, versions + 1):
        deploy = conn.execute("INSERT INTO deploys (site, created_at, file_count, total_bytes,"
                              " version) VALUES (?, ?, 1, 4, ?)", (name, n, n)).lastrowid
        conn.execute("INSERT INTO files (deploy_id, path, blob_id, mime)"
                     " VALUES (?, 'x', ?, 'text/plain')", (deploy, blob))
        if n == live:
            conn.execute("INSERT INTO sites (name, deploy_id, created_at, updated_at)"
                         " VALUES (?, ?, 0, 0)", (name, deploy))


def test_backup_is_consistent_and_atomic(db, tmp_path):
    with db.write() as conn:
        replace_site(conn, "a", _files(**{"x": "one"}))
    out = tmp_path / "copy.db"
    db.backup(str(out))
    copy = sqlite3.connect(out)
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert copy.execute("SELECT name FROM sites").fetchall() == [("a",)]
    assert not (tmp_path / "copy.db.partial").exists()


def test_a_backup_finishes_while_another_connection_keeps_writing(db, tmp_path):
    """SQLite's online backup, copied in steps, starts over whenever another connection
    writes between two steps: a server whose sites log twice a second never finished a
    backup of a database of a few hundred MB. Copied in one step (one read transaction:
    in WAL mode writers go on meanwhile), it always ends, with the state it began on."""
    import os
    import threading

    with db.write() as conn:  # about 24 MB: a few thousand pages, many steps of 1024
        replace_site(conn, "a", _files(**{f"f{i}": os.urandom(1024 * 1024).hex()[:1_500_000]
                                           for i in range(16)}))
    stop = threading.Event()
    writes = []

    def writer():
        other = sqlite3.connect(db.path, isolation_level=None, timeout=30)
        try:
            while not stop.is_set():
                other.execute("INSERT OR REPLACE INTO config (key, value, updated_at)"
                              " VALUES ('k', ?, 0)", (str(len(writes)),))
                writes.append(1)
                stop.wait(0.002)
        finally:
            other.close()

    thread = threading.Thread(target=writer)
    thread.start()
    done = threading.Event()
    out = tmp_path / "copy.db"
    copier = threading.Thread(target=lambda: (db.backup(str(out)), done.set()))
    try:
        while len(writes) < 5:  # the writer is under way before the backup starts
            stop.wait(0.01)
        copier.start()
        finished = done.wait(15)  # one step: well under a second here; in steps: 35 s
    finally:
        stop.set()
        thread.join()
        copier.join()
    assert finished, "the backup did not end while another connection wrote"
    copy = sqlite3.connect(out)
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert copy.execute("SELECT count(*) FROM files").fetchone()[0] == 16


def test_a_locked_database_is_unavailable_not_an_error(db):
    """Another process holding the write lock: a writer gives up after busy_timeout with
    Unavailable (503 over HTTP), never a raw sqlite3 error."""
    import time

    from fazt.errors import Unavailable

    db.set_limits(type(db.limits)(cache_mb=2, busy_ms=300))
    holder = sqlite3.connect(db.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        began = time.monotonic()
        with pytest.raises(Unavailable), db.write() as conn:
            conn.execute("INSERT INTO config (key, value, updated_at) VALUES ('k', '1', 0)")
        assert 0.2 < time.monotonic() - began < 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with db.write() as conn:  # and the writer works again afterwards
        conn.execute("INSERT INTO config (key, value, updated_at) VALUES ('k', '1', 0)")


# Opens the database as another user (nobody, when the tests run as root: root may write
# anywhere), after the imports, which that user could not read.
_OPEN_AS_NOBODY = """
import os, sys
from fazt.errors import FaztError
from fazt.store import open_database
if os.getuid() == 0:
    os.setgid(65534)
    os.setuid(65534)
try:
    open_database(sys.argv[1]).close()
except FaztError as exc:
    print(exc)
"""


@pytest.mark.parametrize("case", ["folder", "file"])
def test_a_database_this_user_may_not_write_says_so_not_that_it_is_damaged(case):
    """SQLite's "attempt to write a readonly database" (a folder without write access:
    the -wal and -shm files go beside the database) read as "not a usable fazt database",
    as if the file were broken."""
    folder = tempfile.mkdtemp(dir="/tmp")  # pytest's tmp_path is closed to nobody
    try:
        path = os.path.join(folder, "data.db")
        create_database(path).close()
        for name in os.listdir(folder):  # a cleanly closed database: the -wal/-shm are gone
            assert name == "data.db"
        if case == "folder":
            os.chmod(folder, 0o555)
            if os.getuid() == 0:
                os.chown(path, 65534, 65534)
        else:
            os.chmod(folder, 0o777)
            os.chmod(path, 0o600 if os.getuid() == 0 else 0)
        said = subprocess.run([sys.executable, "-c", _OPEN_AS_NOBODY, path],
                              capture_output=True, text=True, timeout=60, env=fazt_env()).stdout
        assert "not a usable" not in said, said
        assert ("may not write in " + folder if case == "folder" else
                "may not read and write " + path) in said, said
    finally:
        os.chmod(folder, 0o755)
        shutil.rmtree(folder)


def test_a_db_path_naming_a_folder_says_so(tmp_path):
    """Init said "A database already exists at DIR" and start "No database at DIR"."""
    for command in (["server", "init", "--domain", "localhost", "--username", "a",
                     "--password", "change-me-now"], ["server", "start"], ["site", "list"]):
        failed = subprocess.run([sys.executable, "-m", "fazt", *command, "--db", str(tmp_path)],
                                capture_output=True, text=True, timeout=60, env=fazt_env())
        assert failed.returncode == 1 and f"{tmp_path} is a folder" in failed.stderr, failed
    assert list(tmp_path.iterdir()) == []
