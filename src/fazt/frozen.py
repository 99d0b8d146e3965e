"""What only the single-file binary needs: where it was unpacked, and tidying up after kills.

PyInstaller's one-file bootloader unpacks the program into a fresh `_MEIxxxxxx`
folder at every start, before any Python runs, under the first of `$TMPDIR`,
`$TEMP`, `$TMP`, `/tmp`, `/var/tmp`. So `$TMPDIR` is the one knob, and it must
be set before the binary starts (install.sh sets it in the systemd unit).
On a small host `/tmp` is often tmpfs, where the unpacked files would sit in
RAM that the memory budget does not count: `server start` says so.

The bootloader deletes the folder when the program ends, also on SIGTERM and
SIGINT, which it forwards to the program. Only a SIGKILL of the bootloader
itself leaves the folder behind; the next start removes such leftovers.
"""

import os
import shutil
import sys
import time

RAM_FILESYSTEMS = {"tmpfs", "ramfs"}
# A folder younger than this may belong to a binary that is still unpacking.
STALE_AFTER_SECONDS = 60
# A file every fazt extraction folder holds; other programs' folders are not ours.
MARKER = os.path.join("fazt", "web_simulator", "capacity.js")


def extraction_dir() -> str | None:
    """The folder this binary was unpacked into, or None when not frozen."""
    if not getattr(sys, "frozen", False):
        return None
    return getattr(sys, "_MEIPASS", None)


def filesystem_type(path: str) -> str:
    """The type of the filesystem holding `path` (longest mount point wins), or ''."""
    path = os.path.realpath(path)
    best, kind = "", ""
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                point = fields[1].replace("\\040", " ")
                inside = path == point or path.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, kind = point, fields[2]
    except OSError:
        return ""
    return kind


def _folders_in_use(candidates: list[str]) -> set[str]:
    """The candidates that a running process has files mapped from (libpython, at least)."""
    used: set[str] = set()
    prefixes = {c: c.rstrip("/") + "/" for c in candidates}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/maps") as maps:
                text = maps.read()
        except OSError:
            continue
        used.update(c for c, prefix in prefixes.items() if prefix in text)
    return used


def remove_stale(current: str | None = None, now: float | None = None) -> list[str]:
    """Delete fazt's `_MEI*` folders beside `current` left by killed runs; return them.

    A folder is stale when it is ours (same owner, holds the fazt marker), older
    than a minute, and no process maps a file from it.
    """
    current = current or extraction_dir()
    if not current:
        return []
    current = os.path.realpath(current)
    parent = os.path.dirname(current)
    now = time.time() if now is None else now
    candidates = []
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    for name in names:
        path = os.path.join(parent, name)
        if not name.startswith("_MEI") or path == current:
            continue
        try:
            info = os.stat(path, follow_symlinks=False)
        except OSError:
            continue
        if (os.path.isdir(path) and not os.path.islink(path) and info.st_uid == os.getuid()
                and now - info.st_mtime > STALE_AFTER_SECONDS
                and os.path.isfile(os.path.join(path, MARKER))):
            candidates.append(path)
    if not candidates:
        return []
    stale = [c for c in candidates if c not in _folders_in_use(candidates)]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def ram_warning(folder: str | None = None) -> str | None:
    """One sentence when the extraction folder lives in RAM, else None."""
    folder = folder or extraction_dir()
    if not folder:
        return None
    kind = filesystem_type(folder)
    if kind not in RAM_FILESYSTEMS:
        return None
    return (f"fazt: this binary is unpacked into {os.path.dirname(folder)}, which is {kind} "
            "(RAM, outside the memory budget); start it with TMPDIR set to a folder on disk, "
            "for example TMPDIR=~/.cache/fazt.")


def prepare(argv: list[str]) -> None:
    """Run by the binary's entry point before the CLI: tidy up, and warn a server about RAM."""
    if not extraction_dir():
        return
    try:
        remove_stale()
    except OSError:
        pass  # tidying is a courtesy; it must never stop the program
    if argv[:2] == ["server", "start"]:
        warning = ram_warning()
        if warning:
            print(warning, file=sys.stderr)
