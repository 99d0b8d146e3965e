"""Sites and their versions: which files make up the version a site serves.

A deploy writes every file of the new version and switches the site's
`deploy_id` in one transaction, so a site changes all at once or not at all.
Every deploy is a version (numbered per site); a rollback switches the same
pointer back to a kept one.
"""

import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fazt.errors import FaztError, TooLarge
from fazt.store.files import mark_variants_decided, put_blob, put_variant


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

    def read(self, limit: int) -> bytes:
        """The whole content, read in memory: for the few files a deploy checks (a
        back end, the rules), each of which has a limit; past it, TooLarge."""
        parts, size = [], 0
        for piece in self.pieces:
            size += len(piece)
            if size > limit:
                raise TooLarge(f"{self.path} is over the limit of {limit // 1024} KiB.")
            parts.append(piece)
        return b"".join(parts)

    def read_text(self, limit: int, code: str) -> tuple[str, "NewFile"]:
        """The content as UTF-8 text (refused with `code` when it is not one) and this file
        with its pieces replaced by the bytes read, since they may be single-use."""
        data = self.read(limit)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise FaztError(f"{self.path} is not valid UTF-8 (byte {exc.start}).",
                            code=code) from None
        return text, NewFile(self.path, self.mime, [data])


def replace_site(conn: sqlite3.Connection, name: str, files: Iterable[NewFile],
                 keep: int = 1) -> dict:
    """Write a new version of site `name` and switch to it. Call inside db.write().

    The site's older versions stay for rollback, `keep` of them in all (the
    new one counted; `_prune` says which); their files share content by hash, so
    a version costs only what changed. Content no version uses any more is left for the
    collector (a download may still be streaming it): see `files.collectable`.
    """
    now = time.time()
    version = 1 + _last_version(conn, name)
    cur = conn.execute(
        "INSERT INTO deploys (site, created_at, file_count, total_bytes, version)"
        " VALUES (?, ?, 0, 0, ?)",
        (name, now, version),
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
    _switch(conn, name, deploy_id, now)
    conn.execute("UPDATE sites SET last_version = ? WHERE name = ?", (version, name))
    _prune(conn, name, keep)
    return {"site": name, "deploy_id": deploy_id, "version": version, "files": count,
            "bytes": total}


def _last_version(conn: sqlite3.Connection, name: str) -> int:
    """The highest number the site has given a version, kept or pruned since."""
    return conn.execute(
        "SELECT MAX(COALESCE((SELECT last_version FROM sites WHERE name = ?1), 0),"
        " COALESCE((SELECT MAX(version) FROM deploys WHERE site = ?1), 0))", (name,)
    ).fetchone()[0]


def _switch(conn: sqlite3.Connection, name: str, deploy_id: int, now: float) -> None:
    """Make `deploy_id` the version `name` serves, and the one most recently live (_prune
    keeps versions in that order)."""
    conn.execute(
        "INSERT INTO sites (name, deploy_id, created_at, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT(name) DO UPDATE SET deploy_id = excluded.deploy_id,"
        " updated_at = excluded.updated_at",
        (name, deploy_id, now, now),
    )
    conn.execute("UPDATE deploys SET live_at = ?, live_seq = 1 + (SELECT MAX(live_seq)"
                 " FROM deploys WHERE site = ?) WHERE id = ?", (now, name, deploy_id))


def prune_all(conn: sqlite3.Connection, keep: int) -> None:
    """`keep` versions of every site at most, now (keep_versions was lowered: the history
    is bounded at once, not at each site's next deploy). Call inside db.write()."""
    for (name,) in conn.execute("SELECT name FROM sites").fetchall():
        _prune(conn, name, keep)


def _prune(conn: sqlite3.Connection, name: str, keep: int) -> None:
    """Keep the live version and the `keep` - 1 others most recently live (a deploy or a
    rollback makes a version live); forget the rest. By number, a deploy after a rollback
    to v3 of v1..v6 dropped v3, the version the owner had just gone back to."""
    doomed = [r[0] for r in conn.execute(
        "SELECT id FROM deploys WHERE site = ? AND id != (SELECT deploy_id FROM sites"
        " WHERE name = ?) ORDER BY live_seq DESC LIMIT -1 OFFSET ?",
        (name, name, max(0, keep - 1)),
    )]
    for deploy_id in doomed:
        _drop_deploy(conn, deploy_id)


def list_versions(conn: sqlite3.Connection, name: str) -> list[dict]:
    """The site's kept versions, newest first; `live` marks the one it serves, `live_at`
    says when each last went live (a deploy or a rollback), `previous` marks the one a
    rollback without a version goes back to (`_back_to`)."""
    rows = conn.execute(
        "SELECT d.version, d.created_at, d.file_count, d.total_bytes, d.id = s.deploy_id,"
        " d.live_at, d.live_seq FROM deploys d JOIN sites s ON s.name = d.site"
        " WHERE d.site = ? ORDER BY d.version DESC",
        (name,),
    ).fetchall()
    live = next((r[0] for r in rows if r[4]), None)
    back = _back_to(conn, name, live) if live is not None else None
    return [{"version": r[0], "created_at": r[1], "files": r[2], "bytes": r[3],
             "live": bool(r[4]), "live_at": r[5],
             "previous": back is not None and r[0] == back[1]} for r in rows]


def _back_to(conn: sqlite3.Connection, name: str, live: int) -> tuple[int, int] | None:
    """(id, version) a rollback without a version serves: of the versions numbered below
    the live one, the one live most recently. Always older, so rollbacks in a row walk
    back (v3, v2, v1), never back and forth; and after a rollback to v1 of v1..v4 and a
    bad deploy of v5, v1 (which served), not v4 (which the owner had left)."""
    return conn.execute("SELECT id, version FROM deploys WHERE site = ? AND version < ?"
                        " ORDER BY live_seq DESC, version DESC LIMIT 1",
                        (name, live)).fetchone()


def fits_integer(n: int) -> bool:
    """Whether SQLite can hold `n` (a larger Python int is an OverflowError when bound: a
    version or an id typed by hand is then simply one that does not exist)."""
    return -(2**63) <= n < 2**63


def rollback_site(conn: sqlite3.Connection, name: str, version: int | None = None) -> dict:
    """Serve a kept version again: one pointer changes, nothing is uploaded or copied.

    Without `version`, an older version: of those numbered below the live one, the one
    live most recently (`_back_to`). Call inside db.write(). Raises LookupError with a
    sentence when there is no such version.
    """
    live = conn.execute("SELECT d.version FROM sites s JOIN deploys d ON d.id = s.deploy_id"
                        " WHERE s.name = ?", (name,)).fetchone()
    if live is None:
        raise LookupError(f"There is no site named {name!r}.")
    if version is None:
        row = _back_to(conn, name, live[0])
        if row is None:
            raise LookupError(f"Site {name!r} has no version older than {live[0]} to roll "
                              "back to.")
    else:
        row = conn.execute("SELECT id, version FROM deploys WHERE site = ? AND version = ?",
                           (name, version)).fetchone() if fits_integer(version) else None
        if row is None:
            gone = 0 < version <= _last_version(conn, name)
            raise LookupError(f"Site {name!r} " + (
                f"no longer keeps version {version} (keep_versions bounds the history)"
                if gone else f"has no version {version}") +
                f"; see `fazt site versions {name}`.")
    _switch(conn, name, row[0], time.time())
    return {"site": name, "version": row[1], "from": live[0]}


def remove_site(conn: sqlite3.Connection, name: str) -> bool:
    """Delete a site, every version of it, its key-value data, secrets, log lines and
    custom domains (a host left behind would stay taken).
    Call inside db.write()."""
    row = conn.execute("SELECT deploy_id FROM sites WHERE name = ?", (name,)).fetchone()
    if row is None:
        return False
    conn.execute("DELETE FROM sites WHERE name = ?", (name,))
    for table in ("kv", "site_env", "site_logs", "domains"):
        conn.execute(f"DELETE FROM {table} WHERE site = ?", (name,))
    for (deploy_id,) in conn.execute("SELECT id FROM deploys WHERE site = ?",
                                     (name,)).fetchall():
        _drop_deploy(conn, deploy_id)
    return True


def _drop_deploy(conn: sqlite3.Connection, deploy_id: int) -> None:
    """Forget a version; its files' contents become loose (files.collectable decides)."""
    conn.execute("INSERT OR IGNORE INTO loose_blobs (blob_id)"
                 " SELECT blob_id FROM files WHERE deploy_id = ?", (deploy_id,))
    conn.execute("DELETE FROM files WHERE deploy_id = ?", (deploy_id,))
    conn.execute("DELETE FROM deploys WHERE id = ?", (deploy_id,))


# A file with its variants in one statement: "br:12:<sha256>:345,gzip:13:<sha256>:400".
_COLUMNS = """
    f.path, f.blob_id, b.sha256, b.size, f.mime,
    (SELECT group_concat(v.encoding || ':' || vb.id || ':' || vb.sha256 || ':' || vb.size)
     FROM variants v JOIN blobs vb ON vb.id = v.variant_id WHERE v.blob_id = f.blob_id)
"""
# One row while the version exists (the site's own: an id is reused once its row is gone),
# with NULLs when it has no such file.
_IN_VERSION = f"""
    SELECT {_COLUMNS}
    FROM deploys d LEFT JOIN files f ON f.deploy_id = d.id AND f.path = ?
    LEFT JOIN blobs b ON b.id = f.blob_id
    WHERE d.id = ? AND d.site = ?
"""


def _file_info(row: tuple) -> FileInfo:
    variants = ()
    if row[5]:
        parts = (v.split(":") for v in row[5].split(","))
        # smallest first, so a tie in Accept-Encoding goes to it (`negotiation.choose`):
        # above BEST_UNTIL, Brotli's faster level can lose to gzip
        variants = tuple(sorted((Body(e, int(i), sha, int(n)) for e, i, sha, n in parts),
                                key=lambda b: (b.size, b.encoding)))
    return FileInfo(*row[:5], variants)


def find_file(conn: sqlite3.Connection, site: str, path: str) -> FileInfo | None:
    """The file at `path` (no leading slash) of the version `site` serves now."""
    deploy_id = live_deploy(conn, site)
    return None if deploy_id is None else version_file(conn, site, deploy_id, path)


def live_deploy(conn: sqlite3.Connection, site: str) -> int | None:
    """The id of the version `site` serves now; None when there is no such site."""
    row = conn.execute("SELECT deploy_id FROM sites WHERE name = ?", (site,)).fetchone()
    return row[0] if row else None


def version_file(conn: sqlite3.Connection, site: str, deploy_id: int,
                 path: str) -> FileInfo | None:
    """The file at `path` in version `deploy_id` of `site`, live or not; LookupError when
    the site has no such version (any more: a deploy pruned it, or the site was removed).
    A version's files never change, so what this answers holds as long as the version."""
    row = conn.execute(_IN_VERSION, (path, deploy_id, site)).fetchone()
    if row is None:
        raise LookupError(f"Site {site!r} has no version with id {deploy_id}.")
    return _file_info(row) if row[0] is not None else None


def site_exists(conn: sqlite3.Connection, name: str) -> bool:
    return conn.execute("SELECT 1 FROM sites WHERE name = ?", (name,)).fetchone() is not None


def count_backends(conn: sqlite3.Connection) -> int:
    """How many sites serve a back end (`api/main.js`) now: one index lookup a site."""
    return conn.execute("SELECT COUNT(*) FROM sites s JOIN files f ON f.deploy_id = s.deploy_id"
                        " AND f.path = 'api/main.js'").fetchone()[0]


def list_sites(conn: sqlite3.Connection) -> list[dict]:
    rows = conn.execute(
        "SELECT s.name, s.created_at, s.updated_at, d.file_count, d.total_bytes, d.version"
        " FROM sites s JOIN deploys d ON d.id = s.deploy_id ORDER BY s.name"
    ).fetchall()
    return [
        {"name": r[0], "created_at": r[1], "updated_at": r[2], "files": r[3], "bytes": r[4],
         "version": r[5]}
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
