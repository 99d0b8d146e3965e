"""The sites' log lines (console output, handler failures), kept across restarts.

Written in batches by the runtime (runtime/logs.py), bounded per site, read by
`fazt site logs` and at boot to fill the dashboard's ring again.
"""

import sqlite3

KEPT_PER_SITE = 1000


def append_lines(conn: sqlite3.Connection, lines: list[tuple[str, float, str, str]]) -> None:
    """(site, time, level, message) rows, then each touched site cut to KEPT_PER_SITE.
    A line of a site that no longer exists, or that was made again after the line (removed
    by another process while its lines waited to be written), is left out: a new site of
    that name starts clean. Call inside db.write()."""
    conn.executemany(
        "INSERT INTO site_logs (site, time, level, message) SELECT ?1, ?2, ?3, ?4"
        " WHERE EXISTS (SELECT 1 FROM sites WHERE name = ?1 AND created_at <= ?2)", lines)
    for site in {line[0] for line in lines}:
        conn.execute(
            "DELETE FROM site_logs WHERE site = ?1 AND id <= (SELECT id FROM site_logs"
            " WHERE site = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            (site, KEPT_PER_SITE),
        )


def read_lines(conn: sqlite3.Connection, site: str, after: int = 0, last: int | None = None
               ) -> list[dict]:
    """Lines of `site` with an id above `after`, oldest first; only the `last` ones if given."""
    rows = conn.execute(
        "SELECT id, time, level, message FROM site_logs WHERE site = ? AND id > ?"
        " ORDER BY id DESC LIMIT ?",
        (site, after, -1 if last is None else last),
    ).fetchall()
    return [{"id": r[0], "time": r[1], "level": r[2], "message": r[3]} for r in reversed(rows)]
