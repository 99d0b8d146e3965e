"""File contents as blobs of fixed-size chunks (the way GridFS stores files).

A blob is written chunk by chunk inside the caller's transaction and is
deduplicated by its SHA-256, which is also the file's strong ETag. Reads take
one chunk per statement, so a slow download never holds a read transaction.
"""

import hashlib
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

CHUNK_SIZE = 256 * 1024


@dataclass(frozen=True)
class Blob:
    id: int
    sha256: str
    size: int


def put_blob(conn: sqlite3.Connection, pieces: Iterable[bytes]) -> Blob:
    """Store the bytes that `pieces` yields; return the (possibly existing) blob.

    Must run inside a write transaction. Memory use is one chunk at a time.
    """
    cur = conn.execute("INSERT INTO blobs (sha256, size) VALUES (NULL, 0)")
    blob_id = cur.lastrowid
    digest = hashlib.sha256()
    size = 0
    n = 0
    pending = bytearray()
    for piece in pieces:
        digest.update(piece)
        size += len(piece)
        pending += piece
        while len(pending) >= CHUNK_SIZE:
            conn.execute(
                "INSERT INTO chunks (blob_id, n, data) VALUES (?, ?, ?)",
                (blob_id, n, bytes(pending[:CHUNK_SIZE])),
            )
            del pending[:CHUNK_SIZE]
            n += 1
    if pending or n == 0:
        conn.execute(
            "INSERT INTO chunks (blob_id, n, data) VALUES (?, ?, ?)",
            (blob_id, n, bytes(pending)),
        )
    sha = digest.hexdigest()
    row = conn.execute("SELECT id, size FROM blobs WHERE sha256 = ?", (sha,)).fetchone()
    if row is not None:  # the same content is already stored: keep one copy
        conn.execute("DELETE FROM chunks WHERE blob_id = ?", (blob_id,))
        conn.execute("DELETE FROM blobs WHERE id = ?", (blob_id,))
        return Blob(row[0], sha, row[1])
    conn.execute("UPDATE blobs SET sha256 = ?, size = ? WHERE id = ?", (sha, size, blob_id))
    return Blob(blob_id, sha, size)


def read_chunk(conn: sqlite3.Connection, blob_id: int, n: int) -> bytes:
    """Chunk n of a blob: one short read."""
    row = conn.execute(
        "SELECT data FROM chunks WHERE blob_id = ? AND n = ?", (blob_id, n)
    ).fetchone()
    if row is None:
        raise LookupError(f"chunk {n} of blob {blob_id} is missing")
    return row[0]


def read_blob(conn: sqlite3.Connection, blob_id: int) -> bytes:
    """A whole (small) blob in one read: callers keep this for files under large_file_mb."""
    rows = conn.execute(
        "SELECT data FROM chunks WHERE blob_id = ? ORDER BY n", (blob_id,)
    ).fetchall()
    return b"".join(r[0] for r in rows)


def drop_unreferenced(conn: sqlite3.Connection, blob_ids: Iterable[int]) -> int:
    """Delete those of `blob_ids` no file refers to any more; return how many."""
    dropped = 0
    for blob_id in set(blob_ids):
        used = conn.execute("SELECT 1 FROM files WHERE blob_id = ? LIMIT 1", (blob_id,)).fetchone()
        if used is None:
            conn.execute("DELETE FROM chunks WHERE blob_id = ?", (blob_id,))
            conn.execute("DELETE FROM blobs WHERE id = ?", (blob_id,))
            dropped += 1
    return dropped
