"""fazt.kv: a small key-value store private to each site, in the `kv` table.

Every query names the site, and the site is fixed by the runtime, never by
the script, so a site can neither read nor write another site's keys. Values
are stored as JSON text. Reads take a short read on the calling thread's
connection; writes go through the single writer, and the size check and the
write happen in the same transaction, so two concurrent writers cannot both
slip under a site's quota.
"""

import json
import sqlite3
from typing import Any

from fazt.errors import FaztError
from fazt.store.database import Database

MAX_KEY_BYTES = 512
MAX_VALUE_BYTES = 64 * 1024
MAX_SITE_BYTES = 10 * 1024 * 1024  # keys + values of one site


class KvError(FaztError):
    """A key-value call the script must fix; it becomes a JS exception."""

    code = "kv_error"

    def __init__(self, message: str, *, js_type: str = "Error"):
        super().__init__(message)
        self.js_type = js_type  # TypeError for a wrong argument, RangeError for a limit


class KvStore:
    """The `kv` table, seen one site at a time."""

    def __init__(self, db: Database, max_key: int = MAX_KEY_BYTES,
                 max_value: int = MAX_VALUE_BYTES, max_site: int = MAX_SITE_BYTES):
        self.db = db
        self.max_key = max_key
        self.max_value = max_value
        self.max_site = max_site

    def get(self, site: str, key: str) -> tuple[bool, Any]:
        """(found, value): a stored JSON null is found, a missing key is not."""
        self._check_key(key)
        with self.db.read() as conn:
            row = conn.execute("SELECT value FROM kv WHERE site = ? AND key = ?",
                               (site, key)).fetchone()
        return (False, None) if row is None else (True, json.loads(row[0]))

    def set(self, site: str, key: str, value_json: str) -> None:
        """Store a value given as JSON text, within the key, value and site limits."""
        self._check_key(key)
        size = len(_utf8(value_json, "fazt.kv.set: the value"))
        if size > self.max_value:
            raise KvError(f"fazt.kv.set: the value is {size} bytes as JSON; "
                          f"the limit is {self.max_value}.", js_type="RangeError")
        with self.db.write() as conn:
            total = _site_bytes(conn, site)
            old = conn.execute(
                "SELECT length(CAST(key AS BLOB)) + length(CAST(value AS BLOB)) FROM kv"
                " WHERE site = ? AND key = ?", (site, key)).fetchone()
            after = total - (old[0] if old else 0) + len(key.encode("utf-8")) + size
            if after > self.max_site:
                raise KvError(f"fazt.kv.set: the site's keys and values would take {after} "
                              f"bytes; the limit is {self.max_site}.", js_type="RangeError")
            conn.execute("INSERT INTO kv (site, key, value) VALUES (?, ?, ?)"
                         " ON CONFLICT (site, key) DO UPDATE SET value = excluded.value",
                         (site, key, value_json))

    def delete(self, site: str, key: str) -> bool:
        """Remove a key; whether it existed."""
        self._check_key(key)
        with self.db.write() as conn:
            cur = conn.execute("DELETE FROM kv WHERE site = ? AND key = ?", (site, key))
            return cur.rowcount > 0

    def list(self, site: str, prefix: str = "") -> list[str]:
        """The site's keys that start with `prefix`, in order. The site quota bounds the count."""
        if not isinstance(prefix, str):
            raise KvError("fazt.kv.list: the prefix must be a string.", js_type="TypeError")
        raw = _utf8(prefix, "fazt.kv.list: the prefix")
        # Compared as bytes: SQLite's text functions stop at a NUL, which a key may hold.
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT key FROM kv WHERE site = ? AND key >= ?"
                " AND substr(CAST(key AS BLOB), 1, ?) = ? ORDER BY key",
                (site, prefix, len(raw), raw)).fetchall()
        return [r[0] for r in rows]

    def used_bytes(self, site: str) -> int:
        """What counts against the site's quota."""
        with self.db.read() as conn:
            return _site_bytes(conn, site)

    def _check_key(self, key: Any) -> None:
        if not isinstance(key, str) or not key:
            raise KvError("fazt.kv: a key must be a non-empty string.", js_type="TypeError")
        size = len(_utf8(key, "fazt.kv: the key"))
        if size > self.max_key:
            raise KvError(f"fazt.kv: the key is {size} bytes; the limit is {self.max_key}.",
                          js_type="RangeError")


def _site_bytes(conn: sqlite3.Connection, site: str) -> int:
    row = conn.execute("SELECT COALESCE(SUM(length(CAST(key AS BLOB)) + "
                       "length(CAST(value AS BLOB))), 0) FROM kv WHERE site = ?",
                       (site,)).fetchone()
    return int(row[0])


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise KvError(f"{what} holds a lone surrogate; it is not valid Unicode.",
                      js_type="TypeError") from None
