"""A primary's replication: Litestream streaming the database to the replica URL.

The server keeps one `Replication` while `replica_url` is set, and rebuilds it when
the setting changes (`fazt replica set/off` from another process arrive with the
config watch). Its status answers "how much would a dead disk lose now": the
last time Litestream uploaded to the replica (it confirms every sync interval,
changes or not), and the lag since then.
"""

import contextlib
import datetime
import json
import os
import re
import time

from fazt.replica import litestream, target
from fazt.replica.reach import StoreWatch
from fazt.replica.supervisor import Child
from fazt.store.claim import is_claimed

LAG_WARN_S = 30.0  # seconds without a confirmed sync before the status warns
_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)\Z")


def parse_time(text: str | None) -> float | None:
    """An RFC 3339 time from Litestream (nanoseconds and all) as a Unix time."""
    match = _RFC3339.match(text or "")
    if match is None:
        return None
    whole, fraction, zone = match.groups()
    stamp = datetime.datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    return stamp.timestamp() + float("0." + (fraction or "0"))


class Replication:
    """Litestream replicating one database while fazt runs."""

    def __init__(self, db_path: str, url: str, credentials: dict[str, str],
                 gomemlimit_mb: int):
        self.db_path = os.path.abspath(db_path)
        self.url = url
        self.credentials = credentials
        self.gomemlimit_mb = gomemlimit_mb
        _forget_another_replicas_state(db_path, url)
        os.makedirs(litestream.meta_dir(db_path), mode=0o700, exist_ok=True)
        with open(_url_path(db_path), "w") as f:
            f.write(url)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(errors_path(db_path))  # a past run's errors are not this one's
        self.child = Child("replicate", litestream.replicate_argv(litestream.binary()),
                           litestream.child_env(credentials, gomemlimit_mb),
                           stdin=litestream.replicate_config(db_path,
                                                             target.litestream_url(url)),
                           cwd=os.path.dirname(self.db_path), on_error=self._publish)
        self.store = StoreWatch(url, on_change=self._publish)

    def errors(self) -> dict:
        return {"last_error": self.child.last_error, "last_error_at": self.child.last_error_at,
                **self.store.as_dict()}

    def _publish(self) -> None:
        """The last error where `fazt server status` and `fazt replica status` (other
        processes, which see Litestream through its socket) find it too."""
        temp = errors_path(self.db_path) + ".tmp"
        with contextlib.suppress(OSError):
            with open(temp, "w") as f:
                json.dump(self.errors(), f)
            os.replace(temp, errors_path(self.db_path))

    def start(self) -> "Replication":
        self.child.start()
        self.store.start()
        return self

    def stop(self) -> None:
        self.store.stop()
        self.child.stop()

    def same(self, url: str, credentials: dict[str, str]) -> bool:
        return url == self.url and credentials == self.credentials

    def status(self) -> dict:
        return replication_status(self.db_path, self.url, self.child, self.gomemlimit_mb,
                                  errors=self.errors())


def _url_path(db_path: str) -> str:
    return os.path.join(litestream.meta_dir(db_path), "fazt-replica-url")


def _forget_another_replicas_state(db_path: str, url: str) -> None:
    """Litestream's working folder describes what the replica it last wrote to holds.
    Kept across a change of URL, Litestream uploads a snapshot to the new replica and
    then fails on every later change (measured with 0.5.17: "open ltx file
    .../0000000000000001-...ltx: no such file"), so nothing after the switch is
    replicated. Started without it, Litestream reads where the replica is and goes on
    from there (a new replica, or the same one again after `replica off`)."""
    try:
        with open(_url_path(db_path)) as f:
            before = f.read()
    except OSError:
        return
    if before != url:
        litestream.remove_working_files(db_path)


def errors_path(db_path: str) -> str:
    return os.path.join(litestream.meta_dir(db_path), "fazt-errors.json")


def replication_status(db_path: str, url: str | None, child: Child | None = None,
                       gomemlimit_mb: int | None = None, ask: bool = True,
                       errors: dict | None = None) -> dict:
    """What `fazt replica status`, `fazt server status` and the status API show.

    Without `child` (another process runs Litestream) the control socket still
    answers, so the command line sees what the server sees, and the errors the
    server publishes beside the database. With `ask` False (a server that runs no
    Litestream: replication is off) the socket is not tried.
    """
    now = time.time()
    listing = (litestream.control(db_path, "/list") if ask else None) or {}
    info = (litestream.control(db_path, "/info") if ask else None) or {}
    entry = next((d for d in listing.get("databases", [])
                  if d.get("path") == os.path.abspath(db_path)), {})
    last_sync = parse_time(entry.get("last_sync_at"))
    pid = child.pid if child is not None else info.get("pid")
    running = pid is not None
    lag = round(now - last_sync, 1) if last_sync else None
    started = child.started_at if child is not None else (
        now - info["uptime_seconds"] if "uptime_seconds" in info else None)
    if errors is None and child is None and (running or is_claimed(db_path)):
        errors = published_errors(db_path)  # a server runs: its Litestream may be restarting
    errors = {**NO_ERRORS, **(errors or {})}
    past = error_is_past(errors, last_sync)
    warning = None
    if url and not running:
        warning = "Litestream is not running: changes are not being replicated."
    elif url and errors["store_error"]:
        warning = (f"The replica's store cannot be reached: {errors['store_error']} "
                   "Changes are not being replicated.")
    elif url and errors["last_error"] and not past:
        warning = f"Litestream cannot sync with the replica: {plain(errors['last_error'])}"
    elif url and lag is not None and lag > LAG_WARN_S:
        warning = f"The replica is behind: the last confirmed sync was {lag:.0f} s ago."
    elif url and lag is None and started and now - started > LAG_WARN_S:
        warning = "Litestream has not confirmed a sync with the replica yet."
    status = {
        "role": "primary",
        "url": url,
        "running": running,
        "pid": pid,
        "status": entry.get("status"),
        "last_sync_at": last_sync,
        "lag_s": lag,
        "behind": warning is not None,
        "warning": warning,
        "rss_bytes": rss(pid),
        "gomemlimit_mb": gomemlimit_mb,
        **errors,
        "last_error_past": past,
    }
    if child is not None:
        status["restarts"] = child.restarts
    return status


NO_ERRORS = {"last_error": None, "last_error_at": None, "store_error": None,
             "store_error_since": None}


def published_errors(db_path: str) -> dict:
    """What the server that runs Litestream found wrong (Replication._publish)."""
    with contextlib.suppress(OSError, ValueError):
        with open(errors_path(db_path)) as f:
            found = json.load(f)
        if isinstance(found, dict):
            return {k: found.get(k) for k in NO_ERRORS}
    return {}


def error_is_past(errors: dict, confirmed_at: float | None) -> bool:
    """Whether the last error came before the last confirmed sync (or update, on a
    follower): replication has worked since, so it is history, not the present."""
    at = errors.get("last_error_at")
    return bool(errors.get("last_error") and at and confirmed_at and confirmed_at > at)


# What an owner can act on in Litestream's long S3 errors, in words.
_PLAIN = (
    (("connection refused", "no such host", "i/o timeout", "network is unreachable",
      "exceeded maximum number of attempts"), "the store cannot be reached"),
    (("nosuchbucket", "statuscode: 404"), "the bucket was not found (404)"),
    (("accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch", "statuscode: 403"),
     "the store refused the credentials (403)"),
)


def plain(error: str) -> str:
    """What Litestream's error means, when that is known; else the error itself."""
    text = error.lower()
    for words, meaning in _PLAIN:
        if any(w in text for w in words):
            return f"{meaning}; see the last error."
    return error


def rss(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except Exception:  # gone between the two calls
        return None
