"""A claim on a database path: how a restore knows a running server holds the database.

The claim is a Linux abstract-namespace Unix socket named after the database's
real path. Binding it is atomic, only one process can hold it, and the kernel
drops it the moment its holder dies (even by SIGKILL), so a stale claim cannot
outlive a crash. Nothing is written beside the database, and no descriptor of
the database file is opened: POSIX drops every lock a process holds on a file
when it closes *any* descriptor of that file, so a lock file descriptor on the
database itself would silently drop SQLite's own locks.

Holders: `fazt server start` for its whole life; `fazt restore` while it swaps
the file; a command-line deploy while it collects unused file contents (a
running server may be streaming them, so it leaves them to the server).
"""

import hashlib
import os
import socket
import time

from fazt.errors import FaztError


def _address(db_path: str, brief: bool = False) -> bytes:
    real = os.path.realpath(db_path)
    name = hashlib.sha256(real.encode()).hexdigest()[:40] + ("-brief" if brief else "")
    return b"\0fazt-db-" + name.encode()


class Claim:
    """Held until release(); the kernel drops it when the process ends."""

    def __init__(self, *socks: socket.socket):
        self._socks = socks

    def release(self) -> None:
        for sock in self._socks:
            sock.close()


def _bind(address: bytes) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(address)
    except OSError:
        sock.close()
        return None
    return sock


def try_claim(db_path: str, *, brief: bool = False) -> Claim | None:
    """The claim on `db_path`, or None when another process holds it.

    A brief claim (a restore, a collection) also marks itself as brief, so a
    server that starts meanwhile waits for it instead of giving up.
    """
    marker = _bind(_address(db_path, brief=True)) if brief else None
    if brief and marker is None:
        return None
    sock = _bind(_address(db_path))
    if sock is None:
        if marker is not None:
            marker.close()
        return None
    return Claim(sock, *([marker] if marker else []))


def is_claimed(db_path: str) -> bool:
    """Whether another process (a running server, a restore) holds `db_path` now."""
    held = try_claim(db_path)
    if held is None:
        return True
    held.release()
    return False


def claim_for_server(db_path: str) -> Claim:
    """The server's claim for its whole life: waits out a brief holder, refuses a server."""
    while True:
        held = try_claim(db_path)
        if held is not None:
            return held
        marker = _bind(_address(db_path, brief=True))
        if marker is not None:  # no brief holder: another server has it
            marker.close()
            if is_claimed(db_path):
                raise FaztError(f"Another fazt server is running on {db_path}; "
                                "stop it first.")
        time.sleep(0.05)
