"""The schema as a list of forward migrations.

Each migration runs once, in its own transaction, and is recorded in
`schema_migrations`; a database made by an older fazt is brought forward on
open. Never edit a migration that has shipped: append a new one.
"""

import sqlite3
import time

from fazt.errors import FaztError

MIGRATIONS: list[str] = [
    # 1: the whole first schema.
    """
    CREATE TABLE config (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL,            -- JSON
        updated_at REAL NOT NULL
    );
    CREATE TABLE overrides (            -- break-glass history
        id INTEGER PRIMARY KEY,
        key TEXT NOT NULL,
        old_value TEXT,
        new_value TEXT NOT NULL,
        message TEXT NOT NULL,
        at REAL NOT NULL,
        undone_at REAL
    );
    CREATE TABLE secrets (              -- never shown by `config get`
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE tokens (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    CREATE TABLE blobs (                -- file contents, deduplicated by hash
        id INTEGER PRIMARY KEY,
        sha256 TEXT UNIQUE,
        size INTEGER NOT NULL
    );
    CREATE TABLE chunks (               -- fixed-size pieces, GridFS style
        blob_id INTEGER NOT NULL REFERENCES blobs(id),
        n INTEGER NOT NULL,
        data BLOB NOT NULL,
        UNIQUE (blob_id, n)
    );
    CREATE TABLE deploys (
        id INTEGER PRIMARY KEY,
        site TEXT NOT NULL,
        created_at REAL NOT NULL,
        file_count INTEGER NOT NULL,
        total_bytes INTEGER NOT NULL
    );
    CREATE TABLE sites (
        name TEXT PRIMARY KEY,
        deploy_id INTEGER NOT NULL REFERENCES deploys(id),
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE files (
        deploy_id INTEGER NOT NULL REFERENCES deploys(id),
        path TEXT NOT NULL,
        blob_id INTEGER NOT NULL REFERENCES blobs(id),
        mime TEXT NOT NULL,
        PRIMARY KEY (deploy_id, path)
    );
    CREATE INDEX files_blob ON files(blob_id);
    CREATE TABLE kv (
        site TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (site, key)
    );
    """,
    # 2: compressed variants of a blob, made once per content at deploy (gzip, br).
    # `compressed` marks the blobs whose variants were decided; those stored before
    # this migration get theirs the next time a deploy brings them.
    """
    CREATE TABLE variants (
        blob_id INTEGER NOT NULL REFERENCES blobs(id),
        encoding TEXT NOT NULL,         -- a content coding: 'gzip' or 'br'
        variant_id INTEGER NOT NULL REFERENCES blobs(id),
        PRIMARY KEY (blob_id, encoding)
    );
    CREATE INDEX variants_variant ON variants(variant_id);
    ALTER TABLE blobs ADD COLUMN compressed INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: HTTPS. Certificates and their keys live here like everything else: a restart
    # must never order again (Let's Encrypt allows 5 duplicates a week).
    """
    CREATE TABLE certificates (
        host TEXT PRIMARY KEY,
        chain_pem TEXT NOT NULL,
        key_pem TEXT NOT NULL,          -- never printed, never returned by the API
        issuer TEXT NOT NULL,
        not_before REAL NOT NULL,
        not_after REAL NOT NULL,
        source TEXT NOT NULL,           -- 'acme' or 'import'
        updated_at REAL NOT NULL
    );
    CREATE TABLE cert_orders (          -- the last ACME attempt per host, for backoff
        host TEXT PRIMARY KEY,
        failures INTEGER NOT NULL,
        last_error TEXT,
        last_attempt REAL NOT NULL,
        next_attempt REAL NOT NULL
    );
    CREATE TABLE acme_accounts (
        directory TEXT PRIMARY KEY,
        key_pem TEXT NOT NULL,
        uri TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE domains (              -- custom hosts, each serving one site
        host TEXT PRIMARY KEY,
        site TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # 4: every deploy is a version, numbered per site (older fazt kept one deploy a site);
    # secrets for handlers; the sites' console lines, kept across restarts.
    """
    ALTER TABLE deploys ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
    CREATE UNIQUE INDEX deploys_site_version ON deploys(site, version);
    CREATE TABLE site_env (
        site TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (site, key)
    );
    CREATE TABLE site_logs (
        id INTEGER PRIMARY KEY,
        site TEXT NOT NULL,
        time REAL NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX site_logs_site ON site_logs(site, id);
    """,
    # 5: blobs that may have lost their last use (the contents of a dropped version's
    # files, the variants of content no version uses), so that a collection checks these
    # rather than every blob (at 100,000 blobs a full scan took 0.67 s at every deploy and
    # boot). A database from before starts with every blob no file uses as its content.
    """
    CREATE TABLE loose_blobs (blob_id INTEGER PRIMARY KEY);
    INSERT INTO loose_blobs (blob_id)
        SELECT id FROM blobs b WHERE NOT EXISTS (SELECT 1 FROM files f WHERE f.blob_id = b.id);
    """,
    # 6: the order in which a site's versions last went live (a deploy, or a rollback to
    # it): pruning keeps the versions most recently live, not the highest numbers, which
    # after a rollback dropped the version just served. A per-site counter, not a time:
    # a clock set back would reorder them. Before this, only which version is live was
    # known: the rest go by number, below it.
    """
    ALTER TABLE deploys ADD COLUMN live_seq INTEGER NOT NULL DEFAULT 0;
    UPDATE deploys SET live_seq = version;
    UPDATE deploys SET live_seq = 1 + (SELECT MAX(d.version) FROM deploys d
                                       WHERE d.site = deploys.site)
        WHERE id IN (SELECT deploy_id FROM sites);
    """,
    # 7: when each version last went live, shown beside the order (live_seq) in the
    # version list, so the owner sees which version served before which. Before this,
    # the time a version was deployed (and the live one's, when its site last changed).
    """
    ALTER TABLE deploys ADD COLUMN live_at REAL;
    UPDATE deploys SET live_at = created_at;
    UPDATE deploys SET live_at = (SELECT s.updated_at FROM sites s WHERE s.deploy_id = deploys.id)
        WHERE id IN (SELECT deploy_id FROM sites);
    """,
    # 8: the highest version number a site has given, so a number is never given twice
    # (taken from the kept versions, a deploy after the newest was pruned reused its
    # number for other content).
    """
    ALTER TABLE sites ADD COLUMN last_version INTEGER NOT NULL DEFAULT 0;
    UPDATE sites SET last_version = (SELECT COALESCE(MAX(version), 0) FROM deploys d
                                     WHERE d.site = sites.name);
    """,
]


def schema_version(conn: sqlite3.Connection) -> int:
    """The highest migration the database records (0: none)."""
    return conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] or 0


def refuse_newer(version: int, path: str) -> None:
    """A newer fazt's tables mean things this one does not know: writing to them (a
    deploy, a recalibration, a server, a restore) could lose or corrupt its data."""
    if version > len(MIGRATIONS):
        raise FaztError(f"{path} was made by a newer fazt (schema {version}, this fazt knows "
                        f"{len(MIGRATIONS)}); upgrade fazt first.")


def migrate(conn: sqlite3.Connection) -> int:
    """Apply every pending migration; return the schema version reached."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
    for version, script in enumerate(MIGRATIONS, start=1):
        if version in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # another process may have applied it while this one waited for the lock
            # (the server and a command opening an older database at once): asked again
            # under the lock, not applied twice ("duplicate column name")
            if conn.execute("SELECT 1 FROM schema_migrations WHERE version = ?",
                            (version,)).fetchone():
                conn.execute("COMMIT")
                continue
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                (version, time.time()),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite already rolled back a COMMIT that found no room
                conn.execute("ROLLBACK")
            raise
    return len(MIGRATIONS)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit on its own)."""
    parts, current = [], ""
    for line in script.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            parts.append(current.strip())
            current = ""
    return [p for p in parts if p]
