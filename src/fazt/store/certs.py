"""Certificates, their keys, ACME accounts and order state, and custom domains.

Keys are read here only by `load_certificates` (for the TLS port) and
`load_account` (for ACME); what the command line and the API list never
carries a key.
"""

import sqlite3
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class StoredCert:
    host: str
    chain_pem: bytes
    key_pem: bytes
    not_before: float
    not_after: float


def save_certificate(conn: sqlite3.Connection, host: str, chain_pem: bytes, key_pem: bytes, *,
                     issuer: str, not_before: float, not_after: float, source: str) -> None:
    """Store (or replace) a host's certificate; clears its failed-order state. In db.write()."""
    conn.execute(
        "INSERT INTO certificates (host, chain_pem, key_pem, issuer, not_before, not_after,"
        " source, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(host) DO UPDATE SET"
        " chain_pem = excluded.chain_pem, key_pem = excluded.key_pem, issuer = excluded.issuer,"
        " not_before = excluded.not_before, not_after = excluded.not_after,"
        " source = excluded.source, updated_at = excluded.updated_at",
        (host, chain_pem.decode(), key_pem.decode(), issuer, not_before, not_after, source,
         time.time()))
    conn.execute("DELETE FROM cert_orders WHERE host = ?", (host,))


def remove_certificate(conn: sqlite3.Connection, host: str) -> bool:
    conn.execute("DELETE FROM cert_orders WHERE host = ?", (host,))
    return conn.execute("DELETE FROM certificates WHERE host = ?", (host,)).rowcount > 0


def load_certificates(conn: sqlite3.Connection) -> list[StoredCert]:
    """Every certificate with its key: for the TLS port only."""
    return [StoredCert(r[0], r[1].encode(), r[2].encode(), r[3], r[4]) for r in conn.execute(
        "SELECT host, chain_pem, key_pem, not_before, not_after FROM certificates")]


def list_certificates(conn: sqlite3.Connection) -> list[dict]:
    """What `fazt cert list` and the API show: never a key. Hosts with a failed order and
    no certificate yet are listed too, with their error."""
    rows = conn.execute(
        "SELECT c.host, c.issuer, c.not_before, c.not_after, c.source, o.last_error,"
        " o.next_attempt FROM certificates c LEFT JOIN cert_orders o ON o.host = c.host"
        " UNION ALL"
        " SELECT o.host, NULL, NULL, NULL, NULL, o.last_error, o.next_attempt"
        " FROM cert_orders o WHERE o.host NOT IN (SELECT host FROM certificates)"
        " ORDER BY 1").fetchall()
    return [{"host": r[0], "issuer": r[1], "not_before": r[2], "not_after": r[3],
             "source": r[4], "last_error": r[5], "next_attempt": r[6]} for r in rows]


def certificates_stamp(conn: sqlite3.Connection) -> tuple:
    """Changes whenever a certificate is stored or removed, by any process."""
    return tuple(conn.execute("SELECT COUNT(*), TOTAL(updated_at) FROM certificates").fetchone())


# -- ACME order state ----------------------------------------------------------


def order_failures(conn: sqlite3.Connection) -> dict[str, tuple[int, float, float]]:
    """host -> (failures in a row, when to try again, when it was last tried)."""
    return {r[0]: (r[1], r[2], r[3]) for r in conn.execute(
        "SELECT host, failures, next_attempt, last_attempt FROM cert_orders")}


def record_failure(conn: sqlite3.Connection, host: str, error: str, next_attempt: float
                   ) -> None:
    conn.execute(
        "INSERT INTO cert_orders (host, failures, last_error, last_attempt, next_attempt)"
        " VALUES (?, 1, ?, ?, ?) ON CONFLICT(host) DO UPDATE SET"
        " failures = failures + 1, last_error = excluded.last_error,"
        " last_attempt = excluded.last_attempt, next_attempt = excluded.next_attempt",
        (host, error, time.time(), next_attempt))


def forget_failures(conn: sqlite3.Connection) -> None:
    """Drop every host's failures and backoff: the CA settings changed (the owner's fix)."""
    conn.execute("DELETE FROM cert_orders")


def forget_orders(conn: sqlite3.Connection, keep: set[str]) -> None:
    """Drop the failure state of hosts no longer served."""
    for (host,) in conn.execute("SELECT host FROM cert_orders").fetchall():
        if host not in keep:
            conn.execute("DELETE FROM cert_orders WHERE host = ?", (host,))


# -- ACME accounts ---------------------------------------------------------------


def load_account(conn: sqlite3.Connection, directory: str) -> tuple[bytes, str] | None:
    row = conn.execute("SELECT key_pem, uri FROM acme_accounts WHERE directory = ?",
                       (directory,)).fetchone()
    return (row[0].encode(), row[1]) if row else None


def save_account(conn: sqlite3.Connection, directory: str, key_pem: bytes, uri: str) -> None:
    conn.execute(
        "INSERT INTO acme_accounts (directory, key_pem, uri, created_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT(directory) DO UPDATE SET key_pem = excluded.key_pem, uri = excluded.uri",
        (directory, key_pem.decode(), uri, time.time()))


def forget_account(conn: sqlite3.Connection, directory: str) -> None:
    conn.execute("DELETE FROM acme_accounts WHERE directory = ?", (directory,))


# -- custom domains ----------------------------------------------------------------


def add_domain(conn: sqlite3.Connection, host: str, site: str) -> None:
    conn.execute(
        "INSERT INTO domains (host, site, created_at) VALUES (?, ?, ?)"
        " ON CONFLICT(host) DO UPDATE SET site = excluded.site, created_at = excluded.created_at",
        (host, site, time.time()))


def remove_domain(conn: sqlite3.Connection, host: str) -> bool:
    return conn.execute("DELETE FROM domains WHERE host = ?", (host,)).rowcount > 0


def load_domains(conn: sqlite3.Connection) -> dict[str, str]:
    """host -> site, for every custom domain."""
    return dict(conn.execute("SELECT host, site FROM domains ORDER BY host"))


def domains_stamp(conn: sqlite3.Connection) -> tuple:
    return tuple(conn.execute("SELECT COUNT(*), TOTAL(created_at) FROM domains").fetchone())
