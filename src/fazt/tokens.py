"""API tokens for deploys over HTTP: shown once, stored only as a SHA-256."""

import time

from fazt.auth import new_token, token_hash
from fazt.errors import FaztError
from fazt.store import Database
from fazt.store.sites import fits_integer


def create_token(db: Database, name: str) -> str:
    name = name.strip()
    if not name or len(name) > 100:
        raise FaztError("A token needs a name of 1 to 100 characters.")
    token = new_token()
    with db.write() as conn:
        conn.execute("INSERT INTO tokens (name, token_hash, created_at) VALUES (?, ?, ?)",
                     (name, token_hash(token), time.time()))
    return token


def list_tokens(db: Database) -> list[dict]:
    with db.read() as conn:
        rows = conn.execute("SELECT id, name, created_at FROM tokens WHERE revoked_at IS NULL"
                            " ORDER BY id").fetchall()
    return [{"id": r[0], "name": r[1], "created_at": r[2]} for r in rows]


def revoke_token(db: Database, token_id: int) -> str | None:
    """Revoke a token; return its hash (to drop from RAM), or None when there is none."""
    if not fits_integer(token_id):
        return None
    with db.write() as conn:
        row = conn.execute("SELECT token_hash FROM tokens WHERE id = ? AND revoked_at IS NULL",
                           (token_id,)).fetchone()
        if row is None:
            return None
        conn.execute("UPDATE tokens SET revoked_at = ? WHERE id = ?", (time.time(), token_id))
    return row[0]


def active_token_hashes(conn) -> set[str]:
    return {r[0] for r in conn.execute("SELECT token_hash FROM tokens WHERE revoked_at IS NULL")}
