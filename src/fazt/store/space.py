"""Giving disk space back: the database file and its WAL shrink after large deletions.

SQLite reuses the pages a deletion frees but never returns them to the disk
by itself, and a WAL keeps the size of the largest transaction it held: after
a 2 GB deploy was replaced, both files stayed at about 2 GB. Three things
bring them back:

- New databases are made with `auto_vacuum=INCREMENTAL`, so free pages can be
  given back in small steps: each step is its own short write transaction of
  at most STEP_PAGES pages (8 MB), and the single writer is let go between
  steps, so a deploy or a sign-in never waits behind more than one step.
- Every connection sets `journal_size_limit` (database.py): once a checkpoint
  has emptied the WAL, the next write cuts the file back to that size.
- Without replication, fazt then checkpoints the WAL itself: PASSIVE first
  (the copying, which blocks no writer), then TRUNCATE (which only resets a
  WAL that is by then empty, so its write lock is short). With replication on,
  Litestream owns the checkpoints: it holds a read transaction so that no
  checkpoint passes its position (measured here with Litestream 0.5.17: a
  TRUNCATE from fazt waited out the 5 s busy timeout and gave up), and one that
  did pass would force a new snapshot generation. fazt then leaves the WAL to
  Litestream's PASSIVE checkpoints: the pages come back in the database and in
  the replica, but the WAL file keeps its largest size until Litestream resets
  it (its own TRUNCATE past `truncate-page-n`) or the server restarts.

This runs after a collection frees more than COMPACT_AFTER_BYTES, and when the
owner asks (`fazt db compact`). A database made before fazt did this has
`auto_vacuum=NONE`, which only a full VACUUM can change: `fazt db compact
--full` does it once (it rewrites the whole file, needs free disk about twice
its size, and holds the writer until it ends: run it at a quiet time).
"""

import time

from fazt.constants import MB
from fazt.errors import FaztError
from fazt.store.database import Database

STEP_PAGES = 1024  # pages given back per write transaction: 8 MB with 8 KiB pages
COMPACT_AFTER_BYTES = 64 * MB  # free space that makes a collection compact at once
PAUSE_S = 0.005  # between steps, so a waiting writer takes the lock first
INCREMENTAL = 2  # PRAGMA auto_vacuum's number for INCREMENTAL


def free_bytes(db: Database) -> int:
    """Bytes of free pages inside the database file."""
    with db.read() as conn:
        pages = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return pages * conn.execute("PRAGMA page_size").fetchone()[0]


def incremental(db: Database) -> bool:
    """Whether the database can give pages back in steps (made by this fazt, or converted)."""
    with db.read() as conn:
        return conn.execute("PRAGMA auto_vacuum").fetchone()[0] == INCREMENTAL


def worth_compacting(db: Database) -> bool:
    """After a collection: enough free space to give back, and a database that can."""
    return free_bytes(db) >= COMPACT_AFTER_BYTES and incremental(db)


def compact(db: Database, *, full: bool = False, checkpoint: bool = True) -> dict:
    """Give free pages back to the disk, then let the WAL shrink.

    `full` converts an older database with one full VACUUM; `checkpoint` is
    False while Litestream replicates (it owns the checkpoints then).
    """
    before = db.size_bytes()
    if not incremental(db):
        if not full:
            raise FaztError("This database was made before fazt gave space back; run "
                            "`fazt db compact --full` once (a full VACUUM: it needs free disk "
                            "about twice the database's size and holds writes until it ends).")
        with db.writer() as conn:
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("VACUUM")
    left = free_bytes(db)
    while left:
        with db.writer() as conn:
            # executescript steps the pragma to its end (execute would free one page).
            conn.executescript(f"PRAGMA incremental_vacuum({STEP_PAGES});")
        time.sleep(PAUSE_S)
        left, before_step = free_bytes(db), left
        if left >= before_step:
            break  # another writer frees pages as fast: the next compaction goes on
    if checkpoint:
        truncate_wal(db)
    return {"before_bytes": before, "after_bytes": db.size_bytes(),
            "checkpointed": checkpoint}


def truncate_wal(db: Database) -> bool:
    """Copy the WAL into the database and cut it to nothing; False when a reader held it."""
    with db.writer() as conn:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    return not busy
