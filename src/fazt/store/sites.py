"""Sites and their deploys: which files make up the version a site serves.

A deploy writes every file of the new version and switches the site's
`deploy_id` in one transaction, so a site changes all at once or not at all.
"""

import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fazt.store.files import drop_unreferenced, put_blob


@dataclass(frozen=True)
class FileInfo:
    """What a request needs to know about one file, without its bytes."""

    path: str
    blob_id: int
    sha256: str
    size: int
    mime: str


@dataclass(frozen=True)
class NewFile:
    """One file of a deploy: its path in the site and a way to read it in pieces."""

    path: str
    mime: str
    pieces: Iterable[bytes]


def replace_site(conn: sqlite3.Connection, name: str, files: Iterable[NewFile]) -> dict:
    """Write a new version of site `name` and switch to it. Call inside db.write()."""
    now = time.time()
    cur = conn.execute(
        "INSERT INTO deploys (site, created_at, file_count, total_bytes) VALUES (?, ?, 0, 0)",
        (name, now),
    )
    deploy_id = cur.lastrowid
    count = total = 0
    for f in files:
        blob = put_blob(conn, f.pieces)
        conn.execute(
            "INSERT INTO files (deploy_id, path, blob_id, mime) VALUES (?, ?, ?, ?)",
            (deploy_id, f.path, blob.id, f.mime),
        )
        count += 1
        total += blob.size
    conn.execute(
        "UPDATE deploys SET file_count = ?, total_bytes = ? WHERE id = ?", (count, total, deploy_id)
    )
    old = conn.execute("SELECT deploy_id FROM sites WHERE name = ?", (name,)).fetchone()
    if old is None:
        conn.execute(
            "INSERT INTO sites (name, deploy_id, created_at, updated_at) VALUES (?, ?, ?, ?)",
            (name, deploy_id, now, now),
        )
    else:
        conn.execute(
            "UPDATE sites SET deploy_id = ?, updated_at = ? WHERE name = ?", (deploy_id, now, name)
        )
        _drop_deploy(conn, old[0])
    return {"site": name, "deploy_id": deploy_id, "files": count, "bytes": total}


def remove_site(conn: sqlite3.Connection, name: str) -> bool:
    """Delete a site, its files and its key-value data. Call inside db.write()."""
    row = conn.execute("SELECT deploy_id FROM sites WHERE name = ?", (name,)).fetchone()
    if row is None:
        return False
    conn.execute("DELETE FROM sites WHERE name = ?", (name,))
    conn.execute("DELETE FROM kv WHERE site = ?", (name,))
    _drop_deploy(conn, row[0])
    return True


def _drop_deploy(conn: sqlite3.Connection, deploy_id: int) -> None:
    blob_ids = [r[0] for r in conn.execute("SELECT blob_id FROM files WHERE deploy_id = ?",
                                           (deploy_id,))]
    conn.execute("DELETE FROM files WHERE deploy_id = ?", (deploy_id,))
    conn.execute("DELETE FROM deploys WHERE id = ?", (deploy_id,))
    drop_unreferenced(conn, blob_ids)


_LOOKUP = """
    SELECT f.path, f.blob_id, b.sha256, b.size, f.mime
    FROM sites s JOIN files f ON f.deploy_id = s.deploy_id AND f.path = ?
    JOIN blobs b ON b.id = f.blob_id
    WHERE s.name = ?
"""


def find_file(conn: sqlite3.Connection, site: str, path: str) -> FileInfo | None:
    """The file at `path` (no leading slash) of the version `site` serves now."""
    row = conn.execute(_LOOKUP, (path, site)).fetchone()
    return FileInfo(*row) if row else None


def site_exists(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sites WHERE name = ?", (name,)).fetchone() is not None


def list_sites(conn: sqlite3.Connection) -> list[dict]:
    rows = conn.execute(
        "SELECT s.name, s.created_at, s.updated_at, d.file_count, d.total_bytes"
        " FROM sites s JOIN deploys d ON d.id = s.deploy_id ORDER BY s.name"
    ).fetchall()
    return [
        {"name": r[0], "created_at": r[1], "updated_at": r[2], "files": r[3], "bytes": r[4]}
        for r in rows
    ]


def site_files(conn: sqlite3.Connection, site: str) -> Iterator[FileInfo]:
    """Every file of a site's current version (used to hydrate the pinned map)."""
    rows = conn.execute(
        "SELECT f.path, f.blob_id, b.sha256, b.size, f.mime"
        " FROM sites s JOIN files f ON f.deploy_id = s.deploy_id"
        " JOIN blobs b ON b.id = f.blob_id WHERE s.name = ?",
        (site,),
    ).fetchall()
    return (FileInfo(*r) for r in rows)
