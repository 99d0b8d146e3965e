"""Connections to the one SQLite file: one writer, many short readers.

Readers are one connection per thread (threads are bounded by the lanes, so
connections are too), in autocommit mode: every SELECT is its own short read
transaction, so no reader pins a WAL snapshot for long. Writers share one
connection behind a lock, so the process never fights itself for the write
lock; `BEGIN IMMEDIATE` makes another process's writer wait `busy_timeout`.

Every connection gets `cache_size`, `mmap_size=0` (the OS must not map a file
far larger than RAM into us) and `busy_timeout`; the heap limit is process-wide.
A change of limits bumps a generation number and each connection re-applies
its PRAGMAs the next time its thread takes it.
"""

import contextlib
import errno
import glob
import mmap
import os
import re
import secrets
import sqlite3
import stat
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass

from fazt.constants import MB
from fazt.errors import FaztError, ReadOnly, Unavailable
from fazt.store.claim import held_under_another_name
from fazt.store.schema import MIGRATIONS, migrate, refuse_newer, schema_version

WAL_HEADER = 48  # bytes of the WAL-index header's first copy
# Our read-only maps of `-shm` files: path -> (inode, fd, map). Never closed while the
# file lives: closing any descriptor of a file drops every POSIX lock this process
# holds on it, SQLite's own included, and another process would then reset the
# file under SQLite's feet (a bus error, seen here). A map of a file that was
# deleted and made again is replaced; closing that one is safe (another inode).
_SHM_MAPS: dict[str, tuple[int, int, mmap.mmap]] = {}
_SHM_LOCK = threading.Lock()
PAGE_SIZE = 8192  # 4096-byte pages cap a database near 17.6 TB; the target is 20 TB.
BACKUP_STEP_PAGES = 1024  # 8 MB a step of a backup
WAL_LIMIT_BYTES = 16 * MB  # journal_size_limit: what an emptied WAL is cut back to


@dataclass
class Limits:
    """The PRAGMAs taken from the `config` table."""

    cache_mb: float = 2.0  # page cache of each connection
    heap_mb: float = 0.0  # process-wide soft heap limit; 0 means none
    busy_ms: int = 5000  # how long a reader or writer waits for a lock


class Database:
    """The fazt database file and its connections."""

    def __init__(self, path: str, limits: Limits | None = None, read_only: bool = False):
        self.path = path
        self.limits = limits or Limits()
        # A follower's copy, which Litestream rewrites underneath: opened read-only, in
        # whatever journal mode the file says, and every write refused.
        self.read_only = read_only
        self._read_path: str | None = None  # where a follower's readers open it, if elsewhere
        self._generation = 0
        self._reopened = 0  # readers of an older generation than this reconnect
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._writer: sqlite3.Connection | None = None
        self._writer_generation = -1
        self._watch_lock = threading.Lock()
        self._keeper: sqlite3.Connection | None = None  # holds the -shm file open
        self._shm: mmap.mmap | None = None

    # -- connections -------------------------------------------------------

    def _connect(self, busy_ms: int, cache_mb: float | None = None) -> sqlite3.Connection:
        if self.read_only:
            conn = _connect_read_only(self._read_path or self.path, busy_ms / 1000)
        else:
            conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False,
                timeout=busy_ms / 1000
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Once a checkpoint has emptied it, the WAL file is cut back to this size
            # instead of keeping the size of the largest transaction ever written.
            conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        conn.execute("PRAGMA foreign_keys=ON")
        self._apply(conn, busy_ms, cache_mb)
        return conn

    def _apply(self, conn: sqlite3.Connection, busy_ms: int, cache_mb: float | None = None
               ) -> None:
        cache_mb = self.limits.cache_mb if cache_mb is None else cache_mb
        conn.execute(f"PRAGMA cache_size=-{max(64, int(cache_mb * 1024))}")
        conn.execute("PRAGMA mmap_size=0")
        conn.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
        if self.limits.heap_mb:
            conn.execute(f"PRAGMA soft_heap_limit={int(self.limits.heap_mb * MB)}")

    def reopen(self) -> None:
        """The file was replaced (a follower restored afresh): each thread's readers
        reconnect when next used, instead of reading the old, unlinked file."""
        self._generation += 1
        self._reopened = self._generation
        self._forget_shm()  # the new file has its own -shm: map that one

    def serve_from(self, path: str | None) -> None:
        """Read-only readers open `path` from now on (None: the database's own path):
        a follower's copy moved aside while Litestream restores a new one in its place."""
        self._read_path = path
        self.reopen()

    def set_limits(self, limits: Limits) -> None:
        """New PRAGMAs; each connection picks them up when next used."""
        self.limits = limits
        self._generation += 1

    def _reader(self, cache_mb: float | None) -> sqlite3.Connection:
        # One connection per thread and page-cache size: a thread that streams a large
        # file reads it through a second, small-cache connection, so its usual cache
        # keeps what is worth keeping.
        conns = self._local.__dict__.setdefault("conns", {})
        entry = conns.get(cache_mb)
        busy = self.limits.busy_ms
        if entry is not None and entry[1] < self._reopened:
            entry[0].close()
            entry = None
        if entry is None:
            entry = conns[cache_mb] = [self._connect(busy, cache_mb), self._generation]
        elif entry[1] != self._generation:
            self._apply(entry[0], busy, cache_mb)
            entry[1] = self._generation
        return entry[0]

    @contextlib.contextmanager
    def read(self, cache_mb: float | None = None) -> Iterator[sqlite3.Connection]:
        """A connection for short reads on this thread (autocommit).

        `cache_mb` asks for a connection with another page cache than
        `sqlite_cache_mb`: streams read each chunk once, and caching what will
        not be read again would only spend the budget.
        """
        with _as_fazt_errors():
            yield self._reader(cache_mb)

    def release_reader(self) -> None:
        """Close this thread's readers, e.g. the boot thread's once boot is done."""
        for conn, _ in self._local.__dict__.pop("conns", {}).values():
            conn.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction through the single writer; rolls back on any error."""
        with self.writer() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # also after a failed COMMIT (a full disk)
                    conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def writer(self) -> Iterator[sqlite3.Connection]:
        """The single writer, held, outside any transaction: for what must run on its own
        (VACUUM, checkpoints, incremental vacuum steps), never beside this process's writes."""
        if self.read_only:
            raise ReadOnly()
        with self._write_lock:
            with _as_fazt_errors():
                if self._writer is None:
                    self._writer = self._connect(self.limits.busy_ms)
                    self._writer_generation = self._generation
                elif self._writer_generation != self._generation:
                    self._apply(self._writer, self.limits.busy_ms)
                    self._writer_generation = self._generation
                yield self._writer

    def wal_header(self) -> bytes:
        """48 bytes that change with every commit, by any connection of any process.

        SQLite keeps the WAL-index header at the start of the `-shm` file, which every
        connection maps, and rewrites it on each commit (a change counter, the frame
        count, checksums: https://www.sqlite.org/walformat.html). Reading our own map of
        it takes no lock and no system call: well under a microsecond, and it never
        waits on another process's lock, where `PRAGMA data_version` opens a read
        transaction (about 20 times the cost: bench/freshness.py). A connection is kept
        open so SQLite never deletes the file under the map. b"" when there is no map.
        """
        shm = self._shm
        if shm is None:
            shm = self._map_shm()
        return shm[:WAL_HEADER] if shm is not None else b""

    def _map_shm(self) -> mmap.mmap | None:
        with self._watch_lock:
            if self._shm is None:
                try:
                    if self._keeper is None:
                        self._keeper = self._connect(self.limits.busy_ms, cache_mb=0)
                        self._keeper.execute("SELECT count(*) FROM sqlite_master").fetchone()
                    # SQLite puts the -shm file beside the file a symlink names (a
                    # --db through a symlinked folder, say): so must the map.
                    self._shm = _shm_map(os.path.realpath(self.path) + "-shm")
                except (OSError, ValueError, sqlite3.Error):
                    return None  # the caller looks at the stamps instead
            return self._shm

    def close(self) -> None:
        """Close the writer and this thread's reader (others close with their threads)."""
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        self._forget_shm()
        self.release_reader()

    def _forget_shm(self) -> None:
        with self._watch_lock:
            self._shm = None  # the map itself stays: see _SHM_MAPS
            if self._keeper is not None:
                self._keeper.close()
                self._keeper = None

    # -- whole-file operations -------------------------------------------

    def size_bytes(self) -> int:
        """The database's size on disk, its WAL included."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(self.path + suffix)
        return total

    def _is_own_file(self, path: str) -> bool:
        """Whether `path` names the database or a side file of it, by any name (a
        symlink, a hard link, a relative path)."""
        real = os.path.realpath(path)
        for own in _own_files(self.path):
            if real == os.path.realpath(own):
                return True
            with contextlib.suppress(OSError):  # either may not exist
                if os.path.samefile(path, own):
                    return True
        return False

    def backup(self, out_path: str) -> None:
        """A consistent copy through SQLite's online backup, written under a temporary
        name and renamed into place, so `out_path` is either complete or absent.
        Mode 0600 from the first byte: the copy holds private keys and the session key."""
        refuse_a_special_file(out_path)
        if self._is_own_file(out_path):
            raise FaztError(f"{out_path} is the database itself (or its -wal/-shm file): "
                            "a backup over it would lose what it holds. Write the backup "
                            "to another file.")
        tmp = out_path + ".partial"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            src = self._connect(self.limits.busy_ms)
            dst = sqlite3.connect(tmp)
            try:
                with _as_fazt_errors():
                    dst.execute("PRAGMA journal_mode=OFF")  # a throwaway until renamed
                    # One read transaction for the whole copy: without it the backup
                    # started over whenever another connection wrote between two steps, and
                    # a server that logs twice a second never finished a large one. In WAL
                    # mode the writers go on meanwhile (the WAL only grows until it ends).
                    # In steps all the same, so that a signal (SIGTERM to `fazt backup`) is
                    # handled between two of them, not only after the last.
                    src.execute("BEGIN")
                    src.execute("SELECT 1 FROM sqlite_master LIMIT 1")
                    src.backup(dst, pages=BACKUP_STEP_PAGES, progress=_between_steps)
                dst.execute("PRAGMA journal_mode=DELETE")
            finally:
                dst.close()
                src.close()
            os.replace(tmp, out_path)
        except BaseException as exc:
            for leftover in (tmp, tmp + "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
            # A sentence, not a traceback. No room (SQLite says "database or disk is full")
            # is the server's state: Unavailable (503 from the cockpit); a path that cannot
            # be written (no such folder, a folder's name) is the caller's.
            why = f"Could not write the backup to {out_path}"
            if isinstance(exc, Unavailable):  # busy, or no room (_as_fazt_errors)
                raise Unavailable(f"{why}. {exc.message}") from None
            if isinstance(exc, sqlite3.Error) or (
                    isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)):
                raise Unavailable(f"{why}: {getattr(exc, 'strerror', None) or exc}.") from None
            if isinstance(exc, OSError):
                raise FaztError(f"{why}: {exc.strerror or exc}.") from None
            raise


_COPY = ".backup-"  # a copy for a download: the database's name, this, 16 hex digits
_LEFTOVER = re.compile(r"\.backup-[0-9a-f]{16}(\.partial(-journal)?)?\Z")


def backup_copy_path(db_path: str) -> str:
    """Where a backup for a download is written (on the database's disk, and unlinked
    once opened)."""
    return f"{db_path}{_COPY}{secrets.token_hex(8)}"


def remove_backup_copies(db_path: str) -> list[str]:
    """Delete the copies a killed server left beside the database (SIGKILL, a power cut
    mid download: the unlink never ran), each as large as it. Only under the server's
    claim: no other process makes these."""
    removed = []
    for path in glob.glob(glob.escape(db_path) + _COPY + "*"):
        if _LEFTOVER.match(path[len(db_path):]):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(path)
    return removed


def _own_files(path: str) -> list[str]:
    return [path + suffix for suffix in ("", "-wal", "-shm", "-journal")]


def _between_steps(status: int, remaining: int, total: int) -> None:
    """Called between two steps of a backup: being Python, it lets a pending signal's
    handler run (and raise, ending the backup)."""


def _shm_map(path: str) -> mmap.mmap:
    """This process's one read-only map of the `-shm` file at `path`."""
    with _SHM_LOCK:
        inode = os.stat(path).st_ino
        known = _SHM_MAPS.get(path)
        if known is not None and known[0] == inode:
            return known[2]
        fd = os.open(path, os.O_RDONLY)  # kept open: see _SHM_MAPS
        inode = os.fstat(fd).st_ino
        _SHM_MAPS[path] = (inode, fd, mmap.mmap(fd, 0, prot=mmap.PROT_READ))
        if known is not None and known[0] != inode:
            known[2].close()
            os.close(known[1])
        return _SHM_MAPS[path][2]


@contextlib.contextmanager
def _as_fazt_errors() -> Iterator[None]:
    """SQLite's errors that a user can act on, as their sentences: busy, no room, a disk
    that fails or will not be written. Each leaves the transaction rolled back."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        text = str(exc).lower()
        # "locking protocol": SQLite gave up waiting for a WAL read lock (held by another
        # process) after its own ~10 s of retries, whatever busy_timeout says.
        if "locked" in text or "busy" in text or "locking protocol" in text:
            raise Unavailable("The database is busy; try again shortly.") from exc
        if "disk is full" in text:  # SQLITE_FULL: the transaction was rolled back whole
            raise Unavailable("The disk is full: nothing changed. Free some space and "
                              "try again.") from exc
        if "disk i/o error" in text or "readonly database" in text:  # IOERR, READONLY
            raise Unavailable(f"The database's disk refused a write ({exc}): nothing "
                              "changed. Check the disk, then try again.") from exc
        raise


def refuse_not_a_file(path: str) -> None:
    """`--db DIR` is a slip for a file inside it: say so, not "exists" or "no database".
    Nor is a device, a pipe or a socket a database: a restore (or a backup written there)
    renames its file into place, which would replace /dev/null itself, run as root."""
    if os.path.isdir(path):
        raise FaztError(f"{path} is a folder; --db names the database file (such as "
                        f"{os.path.join(path, 'data.db')}).")
    refuse_a_special_file(path)


def refuse_a_special_file(path: str) -> None:
    """FaztError when `path` is a device, a pipe or a socket: fazt writes only files."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # absent (or unreadable: the caller's own open says why)
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise FaztError(f"{path} is not a regular file (a device, a pipe or a socket); "
                        "fazt reads and writes databases and backups as files of their own.")


def create_database(path: str) -> Database:
    """Make a new database file; refuse one that exists (nothing is overwritten)."""
    refuse_not_a_file(path)
    if os.path.exists(path):
        raise FaztError(f"A database already exists at {path}; refusing to touch it.")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        # O_EXCL: two inits racing cannot both win.
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        raise FaztError(f"A database already exists at {path}; refusing to touch it.") from None
    except OSError as exc:
        raise FaztError(f"Cannot create the database at {path}: {exc.strerror}.") from None
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")  # must precede the first table
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")  # so can this: see space.py
        conn.execute("PRAGMA journal_mode=WAL")
        migrate(conn)
    except BaseException:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + suffix)
        raise
    conn.close()
    return Database(path)


def read_only_uri(path: str) -> str:
    """A read-only `file:` URI for `path`, whatever it holds (`#`, `?`, `%` would end or
    change a URI written as it is)."""
    return "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"


def _connect_read_only(path: str, timeout: float) -> sqlite3.Connection:
    uri = read_only_uri(path)
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                           timeout=timeout)


def _access_problem(path: str) -> str | None:
    """What this user may not do with the database or its folder, as one sentence, or None.

    SQLite only says "attempt to write a readonly database" or "unable to open database
    file", which reads as if the file were damaged; a folder without write access is the
    usual cause (SQLite creates the -wal and -shm files beside the database)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.access(path, os.R_OK | os.W_OK):
        return (f"This user may not read and write {path}; fix its permissions "
                "(or run fazt as its owner).")
    if not os.access(folder, os.W_OK | os.X_OK):
        return (f"This user may not write in {folder}, where SQLite keeps the database's "
                "-wal and -shm files; give it write access to that folder.")
    return None


def _refuse_a_newer_schema(conn: sqlite3.Connection, path: str) -> None:
    """Before anything is written (schema.refuse_newer)."""
    try:
        version = schema_version(conn)
    except sqlite3.OperationalError:
        return  # busy: migrate() then decides
    refuse_newer(version, path)


def refuse_a_foreign_database(path: str) -> None:
    """FaztError when `path` holds another program's SQLite database, which a restore
    over it would throw away. An absent or empty file is not one, nor is a file SQLite
    cannot read (a restore keeps that aside as damaged)."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return
    try:
        conn = sqlite3.connect(read_only_uri(path), uri=True, isolation_level=None)
        try:
            _refuse_a_foreign_file(conn, path)
        finally:
            conn.close()
    except sqlite3.Error:
        return


def _refuse_a_foreign_file(conn: sqlite3.Connection, path: str) -> None:
    """Only a database `fazt server init` made is opened for writing: migrating any other
    SQLite file (another program's, given to --db by mistake, or an empty one) would write
    fazt's tables into it and switch it to WAL."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' "
                    "AND name = 'schema_migrations'").fetchone():
        return
    if os.path.getsize(path) == 0:
        raise FaztError(f"{path} is an empty file, not a fazt database; remove it and "
                        "create one with `fazt server init`.")
    raise FaztError(f"{path} is a SQLite database but not a fazt one; fazt leaves it "
                    "untouched (check --db or $FAZT_DB).")


def open_database(path: str, limits: Limits | None = None, read_only: bool = False
                  ) -> Database:
    """Open an existing database and bring its schema forward (read-only: check it is
    already this fazt's schema, since nothing may be written)."""
    refuse_not_a_file(path)
    if not os.path.isfile(path):
        raise FaztError(f"No database at {path}; create one with `fazt server init`.")
    if read_only:
        try:
            conn = _connect_read_only(path, 5)
            try:
                version = schema_version(conn)
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            raise FaztError(f"{path} is not a usable fazt database ({exc}).") from None
        if version != len(MIGRATIONS):
            raise FaztError(f"The replica holds schema version {version}, this fazt needs "
                            f"{len(MIGRATIONS)}: run the same fazt version as the primary.")
        return Database(path, limits, read_only=True)
    if held_under_another_name(path):
        raise FaztError(f"A running fazt holds the database at {path} under another name (a "
                        "hard link to the same file); use the path it was started with.")
    if os.path.exists(path + "-txid"):
        # Litestream's mark of a follower's copy: switching it to WAL, as any open for
        # writing does, would stall the updates Litestream applies under its locks.
        raise FaztError(f"{path} is a read-only follower's copy, kept current by "
                        "Litestream; run this on the primary's database.")
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=5)
        try:
            _refuse_a_foreign_file(conn, path)
            _refuse_a_newer_schema(conn, path)
            conn.execute("PRAGMA journal_mode=WAL")
            migrate(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise FaztError(_access_problem(path) or f"{path} is not a usable fazt database "
                        f"({exc}).") from None
    return Database(path, limits)
