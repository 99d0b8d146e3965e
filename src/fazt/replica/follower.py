"""A follower: a read-only copy of a replica, kept current by Litestream's follow mode.

`litestream restore -f` restores the replica into the follower's database path,
then applies each new transaction by writing pages into that file under
SQLite's own exclusive lock, and marks the file as a rollback-journal database
so that readers notice each change (SQLite checks the file change counter at
every read). fazt opens it read-only and writes nothing to it.

Three details measured with Litestream 0.5.17:
- The first restore leaves the header in WAL mode, and a WAL-mode reader holds
  a shared lock for as long as it is open, which would stall every update. So
  the follower marks the file as a rollback-journal database itself (the same
  two header bytes Litestream sets on its first update) before anyone opens it.
- The pages it applies carry the primary's file change counter, which a WAL-mode
  primary never moves, so an open connection keeps serving its cached pages
  until the page count happens to change. So the server reopens its
  connections after each update (at most once a sync interval).
- Restarted on an existing copy, `restore -f` refuses to resume once it applied
  anything newer than the replica's latest snapshot ("saved TXID ... is ahead of
  latest snapshot"), and it will not restore over a file without its `-txid`. So
  a restarted follower restores afresh: the copy is moved aside to `PATH.serving`,
  which the server reads meanwhile (for as long as the store does not answer, if
  need be), and the database reopens its connections on the new file once it is
  complete.
"""

import contextlib
import os
import threading
import time
from collections.abc import Callable

from fazt.errors import FaztError
from fazt.replica import litestream, target
from fazt.replica.primary import error_is_past, rss
from fazt.replica.reach import StoreWatch
from fazt.replica.supervisor import Child, describe_exit
from fazt.restore import database_folder

_SIDE_FILES = ("-txid", "-wal", "-shm", "-journal", ".tmp")
SERVING = ".serving"  # the old copy, read while Litestream restores a new one
_HEADER_JOURNAL_MODE = 18  # two bytes: 1 1 rollback journal, 2 2 WAL


def is_follower_copy(path: str) -> bool:
    """Whether `path` is a follower's copy (Litestream keeps `PATH-txid` beside it)."""
    return os.path.exists(path + "-txid")


def mark_rollback_mode(path: str) -> None:
    with open(path, "r+b") as f:
        f.seek(_HEADER_JOURNAL_MODE)
        if f.read(2) == b"\x02\x02":
            f.seek(_HEADER_JOURNAL_MODE)
            f.write(b"\x01\x01")


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class Follower:
    """Litestream following `url` into `db_path`, restarted (and re-restored) if it dies."""

    def __init__(self, db_path: str, url: str, credentials: dict[str, str],
                 gomemlimit_mb: int):
        database_folder(db_path)  # Litestream's working folder
        if os.path.exists(db_path) and not is_follower_copy(db_path):
            raise FaztError(f"{db_path} is a database of its own, not a follower's copy; "
                            "give a follower its own --db path.")
        self.db_path = os.path.abspath(db_path)
        self.url = url
        self.gomemlimit_mb = gomemlimit_mb
        self.on_restored: Callable[[], None] | None = None  # the copy was replaced
        self.on_moved: Callable[[str], None] | None = None  # the copy moved aside, to here
        self.on_applied: Callable[[], None] | None = None  # pages changed in the copy
        # The primary's replica_url, as the copy holds it (the server's config).
        self.primary_url: Callable[[], str | None] | None = None
        self.restored_at: float | None = None
        self.applied_at: float | None = None
        self.txid: str | None = None
        self._ready = threading.Event()
        self.child = Child("follow", litestream.follow_argv(
                               litestream.binary(), target.litestream_url(url), self.db_path),
                           litestream.child_env(credentials, gomemlimit_mb),
                           cwd=os.path.dirname(self.db_path), on_line=self._line,
                           prepare=self._clear,
                           # a first restore that fails ends the start (start() says why)
                           restart=lambda: self.restored_at is not None)
        self.store = StoreWatch(url)

    def _clear(self) -> None:
        """Before each start: no copy where Litestream writes, so it restores afresh. A
        server reading the copy goes on reading it, moved aside, until the new one is
        complete; at the first start there is none, and what a killed follower left
        goes."""
        self._ready.clear()
        serving = self.db_path + SERVING
        if self.on_moved is None:
            _remove(serving)
        elif os.path.exists(self.db_path):
            os.replace(self.db_path, serving)  # in one step: a reader always finds a file
            self.on_moved(serving)
        for suffix in ("", *_SIDE_FILES):
            _remove(self.db_path + suffix)

    def _line(self, fields: dict[str, str]) -> None:
        message = fields.get("msg")
        if message == "entering follow mode":
            mark_rollback_mode(self.db_path)
            self.txid = fields.get("txid")
            self.restored_at = self.applied_at = time.time()
            self._ready.set()
            if self.on_restored is not None:
                self.on_restored()
            _remove(self.db_path + SERVING)  # readers open the new copy from now on
        elif message == "follow: applied updates":
            self.txid = fields.get("to_txid")
            self.applied_at = time.time()
            if self.on_applied is not None:
                self.on_applied()

    def start(self, timeout: float = 600.0) -> "Follower":
        """Start following; return once the first restore is complete."""
        self.child.start()
        self.store.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.1):
            if self.child.exits:
                self.stop()
                reason = self.child.said or f"it exited ({describe_exit(self.child.exits[-1])})"
                raise FaztError(litestream.restore_failed(self.url, reason))
            if time.monotonic() > deadline:
                self.stop()
                raise FaztError(f"The first restore from {self.url} took over "
                                f"{timeout:.0f} s; giving up.")
        return self

    def stop(self) -> None:
        self.store.stop()
        self.child.stop()

    def _moved(self) -> str | None:
        """When the primary replicates elsewhere now (`fazt replica set` another URL, or
        `replica off`: the change itself reached this replica last), nothing new will
        come here: say so, rather than look current."""
        if self.primary_url is None:
            return None
        theirs = self.primary_url() or ""
        if not theirs:
            return ("The primary no longer replicates (its replica_url is off): this "
                    "follower is not being updated.")
        if target.same_place(theirs, self.url):
            return None
        return (f"The primary now replicates to {theirs}, not to {self.url}: this follower "
                f"is not being updated; start it with --follow {theirs}.")

    def status(self) -> dict:
        pid = self.child.pid
        errors = {"last_error": self.child.last_error,
                  "last_error_at": self.child.last_error_at}
        past = error_is_past(errors, self.applied_at)
        warning = None
        if pid is None:
            warning = "Litestream is not running: this follower is not being updated."
        elif self.store.problem:
            warning = (f"The replica's store cannot be reached: {self.store.problem} "
                       "This follower is not being updated.")
        elif moved := self._moved():
            warning = moved
        elif (self.child.last_error_at or 0) > (self.applied_at or 0) + 10:
            warning = f"Litestream cannot update this follower: {self.child.last_error}"
        return {
            "role": "follower",
            "url": self.url,
            "running": pid is not None,
            "pid": pid,
            "txid": self.txid,
            "restored_at": self.restored_at,
            "last_applied_at": self.applied_at,
            "behind": warning is not None,
            "warning": warning,
            "rss_bytes": rss(pid),
            "gomemlimit_mb": self.gomemlimit_mb,
            "restarts": self.child.restarts,
            **errors,
            **self.store.as_dict(),
            "last_error_past": past,
        }
