"""`fazt restore --from URL`: the replica fetched onto this machine, then put in place.

Litestream fetches the latest state into a file beside the target (same disk,
umask 077 so it is never readable by others, and `-integrity-check full`); the
file-level restore (fazt.restore) then checks it as it checks any backup,
refuses a database a running server holds, and moves it into place 0600.
"""

import contextlib
import os
import subprocess
import time

from fazt.errors import FaztError
from fazt.replica import litestream, target
from fazt.replica.supervisor import die_with_parent
from fazt.restore import database_folder, restore_file
from fazt.store.claim import is_claimed

# Litestream writes PATH.tmp and renames it to PATH when the restore is complete.
_FETCH_SIDE_FILES = ("", ".tmp", "-wal", "-shm", "-journal", "-txid")


def restore_from(url: str, db_path: str, gomemlimit_mb: int) -> dict:
    """Fetch the replica at `url` and make it the database at `db_path`."""
    problem = target.check_url(url.strip()) or target.check_reachable(url.strip())
    if problem or not url.strip():
        raise FaztError(f"--from: {problem or 'give the replica URL'}")
    if is_claimed(db_path):  # before a long fetch, not after it
        raise FaztError(f"A running fazt server holds {db_path}; stop it before restoring.")
    folder = database_folder(db_path)
    name = os.path.basename(db_path)
    fetched = os.path.join(folder, f".{name}.fetching")
    _remove(fetched)
    began = time.monotonic()
    try:
        argv = litestream.restore_argv(litestream.binary(), target.litestream_url(url.strip()),
                                       fetched)
        env = litestream.child_env(target.credentials_from_env(), gomemlimit_mb)
        # dies with fazt: a killed `fazt restore` leaves no Litestream writing beside the db
        done = subprocess.run(argv, env=env, umask=0o077, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, preexec_fn=die_with_parent(os.getpid()))
        if done.returncode != 0 or not os.path.isfile(fetched):
            raise FaztError(litestream.restore_failed(url, _reason(done)))
        fetch_s = time.monotonic() - began
        result = restore_file(fetched, db_path, consume=True)
    finally:
        _remove(fetched)
    return {**result, "fetch_s": round(fetch_s, 2), "total_s": round(time.monotonic() - began, 2)}


def _reason(done: subprocess.CompletedProcess) -> str:
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if not lines:
        return f"it exited with status {done.returncode}."
    last = lines[-1].removeprefix("Error: ")
    return last if last.endswith(".") else last + "."


def _remove(path: str) -> None:
    for suffix in _FETCH_SIDE_FILES:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path + suffix)
