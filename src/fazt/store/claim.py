"""A claim on a database path: how a restore knows a running server holds the database.

The claim is a Linux abstract-namespace Unix socket named after the database's
real path, and another named after its inode (a hard link is another path to
it). Binding it is atomic, only one process can hold it, and the kernel
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


def _addresses(db_path: str, brief: bool = False) -> list[bytes]:
    """The names a claim on `db_path` binds: its real path's, and, when the file exists,
    its inode's (a hard link is another path to the same file: two servers through two
    names would each keep a WAL of their own, and one's writes would be lost)."""
    real = os.path.realpath(db_path)
    keys = [real]
    try:
        found = os.stat(real)
        keys.append(f"inode:{found.st_dev}:{found.st_ino}")
    except OSError:
        pass  # not there yet (a restore onto a new path): its path is its only name
    suffix = "-brief" if brief else ""
    return [b"\0fazt-db-" + (hashlib.sha256(key.encode()).hexdigest()[:40] + suffix).encode()
            for key in keys]


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
    bound: list[socket.socket] = []
    for address in (_addresses(db_path, brief=True) if brief else []) + _addresses(db_path):
        sock = _bind(address)
        if sock is None:
            Claim(*bound).release()
            return None
        bound.append(sock)
    return Claim(*bound)


def is_claimed(db_path: str) -> bool:
    """Whether another process (a running server, a restore) holds `db_path` now."""
    held = try_claim(db_path)
    if held is None:
        return True
    held.release()
    return False


def held_under_another_name(db_path: str) -> bool:
    """Whether another process holds the file at `db_path` through another path to it (a
    hard link). SQLite keeps the WAL beside the name it was given: what is written through
    this name would go to a WAL that process never reads, and two WALs spoil the file."""
    path, *inode = _addresses(db_path)
    if not inode:
        return False
    by_path = _bind(path)
    if by_path is None:
        return False  # held under this very name: one WAL
    try:
        by_inode = _bind(inode[0])
        if by_inode is None:
            return True
        by_inode.close()
        return False
    finally:
        by_path.close()


def claim_for_server(db_path: str) -> Claim:
    """The server's claim for its whole life: waits out a brief holder, refuses a server."""
    while True:
        held = try_claim(db_path)
        if held is not None:
            return held
        markers = [_bind(address) for address in _addresses(db_path, brief=True)]
        Claim(*(m for m in markers if m is not None)).release()
        if all(m is not None for m in markers):  # no brief holder: another server has it
            if is_claimed(db_path):
                raise FaztError(f"Another fazt server is running on {db_path}; "
                                "stop it first.")
        time.sleep(0.05)


def _unix_names() -> dict[str, str]:
    """Abstract Unix socket names bound in this network namespace -> their inodes."""
    names: dict[str, str] = {}
    try:
        with open("/proc/net/unix", encoding="ascii", errors="replace") as table:
            next(table, None)  # the header
            for line in table:
                fields = line.split()
                if len(fields) >= 8 and fields[7].startswith("@"):
                    names[fields[7][1:]] = fields[6]
    except OSError:
        pass
    return names


def _holds(pid: str, sockets: set[str]) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or not ours to look at
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") in sockets:
                return True
        except OSError:
            continue
    return False


def server_pid(db_path: str) -> int | None:
    """The process id of the server running on `db_path`, when it is another process this
    one may look at; else None (no server, a brief holder such as a restore, this very
    process, or another user's process).

    The command line probes through it the machine the server runs in: a shell
    beside a systemd unit with MemoryMax= (or in another container) sees more RAM
    than the server may use, and thresholds computed there would be the server's.
    """
    bound = _unix_names()
    if any(a[1:].decode() in bound for a in _addresses(db_path, brief=True)):
        return None  # a restore or a collection holds it for a moment
    sockets = {f"socket:[{bound[name]}]" for name in
               (a[1:].decode() for a in _addresses(db_path)) if name in bound}
    if not sockets or _holds("self", sockets):
        return None
    for pid in os.listdir("/proc"):
        if pid.isdigit() and _holds(pid, sockets):
            return int(pid)
    return None
