"""The `config` table (thresholds and settings), the break-glass history, and secrets.

Values are stored as JSON so numbers stay numbers. Secrets (password hash,
session key) live in their own table so that `config get` can never show them.
"""

import json
import sqlite3
import time


def load_config(conn: sqlite3.Connection) -> dict:
    return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM config")}


def save_config(conn: sqlite3.Connection, values: dict) -> None:
    """Upsert `values`. Call inside db.write()."""
    now = time.time()
    conn.executemany(
        "INSERT INTO config (key, value, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        [(k, json.dumps(v), now) for k, v in values.items()],
    )


def record_override(conn: sqlite3.Connection, key: str, old, new, message: str) -> None:
    """Note a break-glass change; a later safe value for the key marks it undone."""
    conn.execute(
        "INSERT INTO overrides (key, old_value, new_value, message, at) VALUES (?, ?, ?, ?, ?)",
        (key, json.dumps(old), json.dumps(new), message, time.time()),
    )


def undo_overrides(conn: sqlite3.Connection, key: str) -> None:
    conn.execute(
        "UPDATE overrides SET undone_at = ? WHERE key = ? AND undone_at IS NULL",
        (time.time(), key),
    )


def active_overrides(conn: sqlite3.Connection) -> list[dict]:
    rows = conn.execute(
        "SELECT key, old_value, new_value, message, at FROM overrides"
        " WHERE undone_at IS NULL ORDER BY at"
    ).fetchall()
    return [
        {"key": r[0], "old": json.loads(r[1]), "new": json.loads(r[2]), "message": r[3], "at": r[4]}
        for r in rows
    ]


def load_secrets(conn: sqlite3.Connection) -> dict:
    return dict(conn.execute("SELECT key, value FROM secrets"))


def save_secret(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO secrets (key, value) VALUES (?, ?)"
        " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        (key, value),
    )
