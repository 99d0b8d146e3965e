"""Secrets for handlers (`fazt.env.KEY`), per site: written, then never read back out.

Only the runtime reads values (to hand them to a site's script); every listing
here gives names and times, never values.
"""

import re
import sqlite3
import time

from fazt.errors import FaztError

KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}\Z")
MAX_VALUE_BYTES = 32 * 1024


def check_key(key: str) -> str:
    if not isinstance(key, str) or not KEY.match(key):
        raise FaztError(f"{key!r} is not a valid variable name: use letters, digits and _, "
                        "not starting with a digit, at most 64 characters.")
    return key


def set_var(conn: sqlite3.Connection, site: str, key: str, value: str) -> float:
    """Store one secret; return when. Call inside db.write()."""
    check_key(key)
    if not isinstance(value, str) or not value:
        raise FaztError("A secret's value must be text, and not empty.")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate ("\ud800" in JSON): SQLite cannot store it
        raise FaztError("A secret's value must be valid Unicode text (it holds a lone "
                        "surrogate).") from None
    if size > MAX_VALUE_BYTES:
        raise FaztError(f"A secret's value may be {MAX_VALUE_BYTES // 1024} KiB at most.")
    now = time.time()
    conn.execute(
        "INSERT INTO site_env (site, key, value, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT(site, key) DO UPDATE SET value = excluded.value,"
        " updated_at = excluded.updated_at",
        (site, key, value, now),
    )
    return now


def unset_var(conn: sqlite3.Connection, site: str, key: str) -> bool:
    """Delete one secret; False when there was none. Call inside db.write()."""
    check_key(key)
    return conn.execute("DELETE FROM site_env WHERE site = ? AND key = ?",
                        (site, key)).rowcount > 0


def list_vars(conn: sqlite3.Connection, site: str) -> list[dict]:
    """Names and when each was set: never the values."""
    rows = conn.execute("SELECT key, updated_at FROM site_env WHERE site = ? ORDER BY key",
                        (site,)).fetchall()
    return [{"key": r[0], "updated_at": r[1]} for r in rows]


def load_vars(conn: sqlite3.Connection, site: str) -> dict[str, str]:
    """The values, for the runtime only."""
    return dict(conn.execute("SELECT key, value FROM site_env WHERE site = ?", (site,)))


def env_stamp(conn: sqlite3.Connection) -> tuple:
    """Changes whenever a secret is set or unset, by any process."""
    return tuple(conn.execute("SELECT COUNT(*), TOTAL(updated_at) FROM site_env").fetchone())
