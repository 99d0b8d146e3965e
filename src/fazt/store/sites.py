"""Sites and their deploys: which files make up the version a site serves.

A deploy writes every file of the new version and switches the site's
`deploy_id` in one transaction, so a site changes all at once or not at all.
"""

import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fazt.store.files import drop_unreferenced, mark_variants_decided, put_blob, put_variant


@dataclass(frozen=True)
class Body:
    """One stored form of a file's content: the content itself ('identity') or a
    compressed variant of it ('gzip', 'br'), each a blob with its own hash."""

    encoding: str
    blob_id: int
    sha256: str
    size: int


@dataclass(frozen=True)
class FileInfo:
    """What a request needs to know about one file, without its bytes."""

    path: str
    blob_id: int
    sha256: str
    size: int
    mime: str
    variants: tuple[Body, ...] = ()  # compressed forms, made at deploy

    @property
    def identity(self) -> Body:
        return Body("identity", self.blob_id, self.sha256, self.size)


@dataclass(frozen=True)
class NewFile:
    """One file of a deploy: its path in the site and a way to read it in pieces.

    `variants` are its compressed forms as (encoding, pieces); None when they were
    not considered (the content is not compressible, or already stored with them).
    """

    path: str
    mime: str
    pieces: Iterable[bytes]
    variants: tuple[tuple[str, Iterable[bytes]], ...] | None = None


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
        if f.variants is not None:
            for encoding, pieces in f.variants:
                put_variant(conn, blob.id, encoding, pieces)
            mark_variants_decided(conn, blob.id)
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


# A file with its variants in one statement: "br:12:<sha256>:345,gzip:13:<sha256>:400".
_COLUMNS = """
    f.path, f.blob_id, b.sha256, b.size, f.mime,
    (SELECT group_concat(v.encoding || ':' || vb.id || ':' || vb.sha256 || ':' || vb.size)
     FROM variants v JOIN blobs vb ON vb.id = v.variant_id WHERE v.blob_id = f.blob_id)
"""
_LOOKUP = f"""
    SELECT {_COLUMNS}
    FROM sites s JOIN files f ON f.deploy_id = s.deploy_id AND f.path = ?
    JOIN blobs b ON b.id = f.blob_id
    WHERE s.name = ?
"""


def _file_info(row: tuple) -> FileInfo:
    variants = ()
    if row[5]:
        parts = (v.split(":") for v in row[5].split(","))
        variants = tuple(sorted((Body(e, int(i), sha, int(n)) for e, i, sha, n in parts),
                                key=lambda b: b.encoding))
    return FileInfo(*row[:5], variants)


def find_file(conn: sqlite3.Connection, site: str, path: str) -> FileInfo | None:
    """The file at `path` (no leading slash) of the version `site` serves now."""
    row = conn.execute(_LOOKUP, (path, site)).fetchone()
    return _file_info(row) if row else None


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
        f"SELECT {_COLUMNS} FROM sites s JOIN files f ON f.deploy_id = s.deploy_id"
        " JOIN blobs b ON b.id = f.blob_id WHERE s.name = ?",
        (site,),
    ).fetchall()
    return (_file_info(r) for r in rows)
