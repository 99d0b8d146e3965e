"""Where the replica is and how to reach it: the `replica_url` setting and its credentials.

The URL is Litestream's own replica URL (`s3://bucket/path?endpoint=...&region=...`),
kept as a setting of the settings schema (fazt.settings); empty means off.
Credentials are never part of it. They come from the environment of the fazt
that runs Litestream (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), or, when the
owner asks, are stored in the secrets table, which no command or page shows.
"""

import os
import socket
import sqlite3
import urllib.parse

from fazt.store.config import load_secrets, save_secret

URL_KEY = "replica_url"
SECRET_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
_SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "replica_access_key_id",
                "AWS_SECRET_ACCESS_KEY": "replica_secret_access_key"}
_QUERY_KEYS = {"endpoint", "region", "force-path-style", "skip-verify", "sign-payload",
               "require-content-md5", "concurrency", "part-size", "sse", "sse-kms-key-id"}


def check_url(url: str) -> str | None:
    """What is wrong with a replica URL, in one sentence; None when it is fine (or
    empty: replication off)."""
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "s3":
        return ("a replica URL starts with s3:// (S3 or any S3-compatible storage), for "
                "example s3://bucket/fazt?endpoint=https://host&region=auto.")
    if "@" in parts.netloc:
        return ("credentials never go in the replica URL: give them as AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY in the environment.")
    if not parts.hostname:
        return "the replica URL names no bucket: s3://BUCKET/PATH."
    if not parts.path.strip("/"):
        return "the replica URL needs a path inside the bucket: s3://BUCKET/PATH."
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - _QUERY_KEYS)
    if unknown:
        return (f"unknown replica URL option {unknown[0]!r}; known: "
                f"{', '.join(sorted(_QUERY_KEYS))}.")
    if "endpoint" in query:
        endpoint = urllib.parse.urlsplit(query["endpoint"][-1])
        if endpoint.scheme not in ("http", "https") or not endpoint.hostname:
            return "the replica URL's endpoint must be an http:// or https:// address."
    return None


def check_reachable(url: str, timeout: float = 3.0) -> str | None:
    """What keeps the URL's endpoint from answering, in one sentence; None when it
    accepts a connection or the URL names none (AWS itself). Litestream would retry an
    unreachable store for minutes before saying so."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    if "endpoint" not in query:
        return None
    endpoint = urllib.parse.urlsplit(query["endpoint"][-1])
    try:
        port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return f"the replica's endpoint {endpoint.scheme}://{endpoint.netloc} does not answer " \
               f"({reason})."
    return None


def same_place(a: str, b: str) -> bool:
    """Whether two replica URLs name the same bucket and path (the endpoints may differ:
    a follower may reach the store by another address than its primary)."""
    pa, pb = urllib.parse.urlsplit(a), urllib.parse.urlsplit(b)
    return (pa.scheme, pa.hostname, pa.path.strip("/")) == \
        (pb.scheme, pb.hostname, pb.path.strip("/"))


def litestream_url(url: str) -> str:
    """The URL as Litestream gets it: S3-compatible stores (MinIO, R2, moto) behind an
    endpoint want bucket-in-path addressing unless the owner said otherwise."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
    if "endpoint" in query and "force-path-style" not in query:
        sep = "&" if parts.query else ""
        return urllib.parse.urlunsplit(parts._replace(query=parts.query + sep +
                                                      "force-path-style=true"))
    return url


def credentials(conn: sqlite3.Connection, environ: dict | None = None) -> dict[str, str]:
    """The variables Litestream needs to reach the replica: stored ones win over the
    environment's, since the owner stored them on purpose."""
    environ = os.environ if environ is None else environ
    stored = load_secrets(conn)
    found = {}
    for name, key in _SECRET_KEYS.items():
        value = stored.get(key) or environ.get(name)
        if value:
            found[name] = value
    return found


def credentials_from_env(environ: dict | None = None) -> dict[str, str]:
    """A follower's or a restore's credentials: there is no database to store them in."""
    environ = os.environ if environ is None else environ
    return {n: environ[n] for n in SECRET_NAMES if environ.get(n)}


def credentials_source(conn: sqlite3.Connection) -> str:
    """"stored", "environment" (this process's) or "none": never the values."""
    if any(k in _SECRET_KEYS.values() for k in load_secrets(conn)):
        return "stored"
    if all(os.environ.get(n) for n in SECRET_NAMES):
        return "environment"
    return "none"


def store_credentials(conn: sqlite3.Connection, environ: dict) -> None:
    """Keep this environment's credentials in the secrets table. Call inside db.write()."""
    for name, key in _SECRET_KEYS.items():
        save_secret(conn, key, environ[name])


def forget_credentials(conn: sqlite3.Connection) -> None:
    """Call inside db.write()."""
    conn.executemany("DELETE FROM secrets WHERE key = ?",
                     [(key,) for key in _SECRET_KEYS.values()])
