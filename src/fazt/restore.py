"""`fazt restore BACKUP`: a database file put back into place, proven before it is trusted.

The order is what makes it safe:

1. The backup is checked where it lies: a SQLite file, `PRAGMA integrity_check`
   ok, made by fazt (an owner, a schema this fazt knows).
2. The target is claimed (store/claim.py): a running server holds that claim,
   so a database in use is refused, and no server can start mid-swap.
3. The backup is copied beside the target (same disk, created 0600), flushed
   to disk and checked again there.
4. The current database, if any, is checkpointed (its WAL folded in) and
   renamed aside; the copy is renamed into place. A current database too damaged
   to checkpoint (the usual reason to restore) is renamed aside as it is, with
   its side files.
5. The new file is proven: it opens as a fazt database and passes the
   integrity check. Only then is the replaced file deleted (a damaged one is
   kept, for whatever it may still hold, and its name is said); if the proof
   fails, the replaced file goes back where it was.

`restore_file` is the whole of it after the backup is on local disk, so a
restore from elsewhere (a replica) fetches a file and calls it.
"""

import contextlib
import os
import sqlite3
import time

from fazt.errors import FaztError
from fazt.store.claim import try_claim
from fazt.store.config import load_config
from fazt.store.database import read_only_uri, refuse_a_foreign_database, refuse_not_a_file
from fazt.store.schema import refuse_newer, schema_version

_SIDE_FILES = ("-wal", "-shm", "-journal")
OWNER_SECRETS = {"username", "password_hash", "session_key"}
RESTORE_STEP_PAGES = 4096


def check_backup(path: str) -> dict:
    """What the backup holds, or FaztError saying why it cannot be restored."""
    if not os.path.isfile(path):
        raise FaztError(f"There is no backup file at {path}.")
    with open(path, "rb") as f:
        if f.read(16) != b"SQLite format 3\x00":
            raise FaztError(f"{path} is not a SQLite database.")
    try:
        conn = sqlite3.connect(read_only_uri(path), uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise FaztError(f"{path} cannot be opened: {exc}.") from None
    try:
        verdict = [r[0] for r in conn.execute("PRAGMA integrity_check(1)")]
        if verdict != ["ok"]:
            # SQLite lists each damaged page; one line, past its "*** in database" title
            first = [line for line in verdict[0].splitlines() if not line.startswith("***")]
            raise FaztError(f"{path} fails SQLite's integrity check: "
                            f"{(first or verdict)[0]}.")
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"schema_migrations", "secrets", "sites"} <= tables:
            raise FaztError(f"{path} is a SQLite file but not a fazt database.")
        version = schema_version(conn)
        refuse_newer(version, path)
        secrets = {r[0] for r in conn.execute("SELECT key FROM secrets")}
        if not OWNER_SECRETS <= secrets:
            raise FaztError(f"{path} has no owner; it was not made by `fazt server init`.")
        sites = conn.execute("SELECT COUNT(*) FROM sites WHERE name != 'admin'").fetchone()[0]
        replica_url = load_config(conn).get("replica_url") or None
    except sqlite3.Error as exc:
        raise FaztError(f"{path} cannot be read as a database: {exc}.") from None
    finally:
        conn.close()
    return {"schema": version, "sites": sites, "bytes": os.path.getsize(path),
            "replica_url": replica_url}


def database_folder(path: str) -> str:
    """The folder that holds the database at `path`, made if missing; FaztError when
    `path` is a folder itself, a device or a pipe, another program's SQLite database
    (a restore would throw it away), or its folder cannot be made (a file in the way,
    no permission), before any long work starts."""
    refuse_not_a_file(path)
    refuse_a_foreign_database(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise FaztError(f"Cannot make the folder {folder} for the database: "
                        f"{exc.strerror}.") from None
    return folder


def restore_file(backup: str, target: str, *, consume: bool = False) -> dict:
    """Put `backup` in place as the database at `target` (see the module's steps).

    `consume=True` lets the backup file itself be moved into place instead of
    copied, when it is on the same disk (a file fetched for the purpose, which
    the caller would delete anyway).
    """
    info = check_backup(backup)
    folder = database_folder(target)
    held = try_claim(target, brief=True)
    if held is None:
        raise FaztError(f"A running fazt server holds {target}; stop it before restoring.")
    try:
        incoming = f"{target}.restoring"
        _remove(incoming)
        try:
            _place_copy(backup, incoming, consume=consume)
            _integrity(incoming)
            replaced, damaged = _set_aside(target) if os.path.exists(target) else (None, False)
        except BaseException:
            _remove(incoming)  # nothing but the copy was made: nothing else to undo
            raise
        os.replace(incoming, target)
        _fsync_dir(folder)
        try:
            _prove(target)
        except BaseException:
            _remove(target)
            if replaced is not None:
                _move(replaced, target)
                _fsync_dir(folder)
            raise
        if replaced is not None and not damaged:
            _remove(replaced)
    finally:
        held.release()
    return {**info, "db": target, "replaced": replaced is not None,
            "kept": replaced if damaged else None}


def _place_copy(backup: str, incoming: str, *, consume: bool) -> None:
    """The backup as one self-contained file at `incoming`, 0600 from its first byte.

    Copied through SQLite's backup API rather than byte by byte, so a backup
    that still has a WAL beside it arrives with the WAL's pages folded in.
    """
    os.close(os.open(incoming, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    folder = os.path.dirname(os.path.abspath(incoming))
    if consume and os.stat(backup).st_dev == os.stat(folder).st_dev:
        _move(backup, incoming)
    else:
        src = sqlite3.connect(read_only_uri(backup), uri=True)
        dst = sqlite3.connect(incoming)
        try:
            src.backup(dst, pages=RESTORE_STEP_PAGES, progress=_between_steps)
        finally:
            dst.close()
            src.close()
    conn = sqlite3.connect(incoming, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")  # one file, whatever mode it came in
    finally:
        conn.close()
    os.chmod(incoming, 0o600)
    with open(incoming, "rb+") as f:
        os.fsync(f.fileno())


def _between_steps(status: int, remaining: int, total: int) -> None:
    """Called between two steps of the copy: being Python, it lets a pending signal's
    handler run (SIGTERM ends `fazt restore` there, and the copy is removed)."""


def _integrity(path: str) -> None:
    conn = sqlite3.connect(read_only_uri(path), uri=True, isolation_level=None)
    try:
        verdict = [r[0] for r in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()
    if verdict != ["ok"]:
        raise FaztError(f"The copy of the backup fails SQLite's integrity check: {verdict[0]}; "
                        "nothing was changed.")


def _set_aside(target: str) -> tuple[str, bool]:
    """Fold the current database's WAL into it and give it a second name aside, whole:
    (that name, whether it was too damaged to checkpoint, and so kept as it was).

    A second name (a hard link), not a rename: `target` keeps the current database until
    the new one replaces it in one rename, so a restore killed in between leaves a
    database at `target`, never none. (The side files go aside: the new database is one
    file, and the old one's WAL is folded in or kept with it.)"""
    damaged = False
    try:
        conn = sqlite3.connect(target, isolation_level=None, timeout=5)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:  # locked or busy: someone else has it open
        raise FaztError(f"The current database at {target} cannot be checkpointed ({exc}); "
                        "nothing was changed.") from None
    except sqlite3.DatabaseError:  # malformed, or not a database at all
        damaged = True
    aside = f"{target}.{'damaged' if damaged else 'replaced'}-{int(time.time())}"
    n = 1
    while os.path.lexists(aside):  # a restore earlier in the same second kept one
        n += 1
        aside = f"{target}.{'damaged' if damaged else 'replaced'}-{int(time.time())}-{n}"
    try:
        os.link(target, aside)
    except OSError:  # a filesystem without hard links: renamed, as the last resort
        _move(target, aside)
        return aside, damaged
    for suffix in _SIDE_FILES:
        if os.path.exists(target + suffix):
            os.replace(target + suffix, aside + suffix)
    return aside, damaged


def _move(src: str, dst: str) -> None:
    """Rename a database with whatever side files it has."""
    os.replace(src, dst)
    for suffix in _SIDE_FILES:
        if os.path.exists(src + suffix):
            os.replace(src + suffix, dst + suffix)


def _prove(target: str) -> None:
    from fazt.store.database import open_database  # brings an older schema forward

    try:
        open_database(target).close()
    except FaztError as exc:
        raise FaztError(f"The restored database does not open ({exc.message}); "
                        "the previous one is back in place.") from None
    _integrity(target)
    os.chmod(target, 0o600)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    _remove_side_files(path)


def _remove_side_files(path: str) -> None:
    for suffix in _SIDE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
