"""Turning a directory or a zip into a new version of a site, safely.

Everything is checked before the database is touched where it can be (names,
paths, symlinks), and the write itself is one transaction: a bad file, a full
disk or a killed process leaves the previous version serving.
"""

import mimetypes
import os
import re
import sqlite3
import stat
import zipfile
from collections.abc import Callable, Iterator
from typing import BinaryIO

from fazt.compression import precompressed
from fazt.constants import MB, PIECE
from fazt.errors import FaztError, TooLarge
from fazt.store import Database
from fazt.store.sites import NewFile, replace_site

SITE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
RESERVED = frozenset({"admin", "api", "www", "fazt", "localhost"})
ADMIN_SITE = "admin"  # the cockpit's assets are stored as this reserved site
ZIP_MAX_RATIO = 200  # a member that inflates more than this is treated as a bomb

_TEXT_TYPES = ("application/javascript", "application/json", "image/svg+xml", "application/xml")
mimetypes.add_type("text/javascript", ".mjs")
mimetypes.add_type("application/wasm", ".wasm")
mimetypes.add_type("image/webp", ".webp")


def check_site_name(name: str, *, allow_reserved: bool = False) -> str:
    if not isinstance(name, str) or not SITE_NAME.match(name):
        raise FaztError(
            f"{name!r} is not a valid site name: use 1-63 lower-case letters, digits "
            "and hyphens, not starting or ending with a hyphen."
        )
    if name in RESERVED and not allow_reserved:
        raise FaztError(f"The site name {name!r} is reserved; choose another.")
    return name


def mime_type(path: str) -> str:
    kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind in _TEXT_TYPES:
        kind += "; charset=utf-8"
    return kind


def clean_path(raw: str) -> str:
    """A relative path inside a site, or FaztError: no '..', no absolute paths,
    no backslashes, no NUL bytes, no empty segments."""
    if "\x00" in raw or "\\" in raw:
        raise FaztError(f"The path {raw!r} contains a forbidden character.")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        raise FaztError(f"The path {raw!r} is absolute; paths must stay inside the site.")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts) or not parts:
        raise FaztError(f"The path {raw!r} leaves the site.")
    return "/".join(parts)


# -- sources ---------------------------------------------------------------


def files_from_directory(root: str) -> list[NewFile]:
    """Every file under `root`; symlinks may point only inside it. `.git` is skipped."""
    if not os.path.isdir(root):
        raise FaztError(f"{root} is not a directory.")
    real_root = os.path.realpath(root)
    found: list[NewFile] = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for d in list(dirs):  # a symlinked directory: check it, then walk it as files
            full = os.path.join(folder, d)
            if os.path.islink(full):
                _inside(real_root, full)
        for name in sorted(names):
            full = os.path.join(folder, name)
            real = _inside(real_root, full)
            if not os.path.isfile(real):
                continue  # sockets, fifos, broken links: nothing to serve
            rel = clean_path(os.path.relpath(full, root).replace(os.sep, "/"))
            found.append(NewFile(rel, mime_type(rel), _read_file(real)))
    if not found:
        raise FaztError(f"{root} holds no files to deploy.")
    return found


def _inside(real_root: str, path: str) -> str:
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise FaztError(f"{path} is a symlink that points outside the site directory.")
    return real


def _read_file(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(PIECE):
            yield piece


def files_from_zip(fileobj: BinaryIO, max_total_bytes: int) -> list[NewFile]:
    """Members of a zip as files, refusing traversal, links and bombs.

    Sizes are enforced on the bytes actually inflated, not on what the zip
    claims, so a lying header cannot get past the limit.
    """
    try:
        archive = zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, OSError, ValueError):
        raise FaztError("The upload is not a valid zip archive.") from None
    members = [m for m in archive.infolist() if not m.is_dir()]
    if not members:
        raise FaztError("The zip archive holds no files.")
    declared = sum(m.file_size for m in members)
    if declared > max_total_bytes:
        raise TooLarge(
            f"The zip inflates to {declared // MB} MB, over the limit of "
            f"{max_total_bytes // MB} MB."
        )
    prefix = _common_folder([m.filename for m in members])
    budget = _Budget(max_total_bytes)
    files = []
    for m in members:
        if stat.S_ISLNK(m.external_attr >> 16):
            raise FaztError(f"The zip member {m.filename!r} is a symlink; links are refused.")
        ratio = m.file_size / m.compress_size if m.compress_size else 0
        if ratio > ZIP_MAX_RATIO and m.file_size > 2**20:
            raise TooLarge(f"The zip member {m.filename!r} inflates suspiciously (a zip bomb?).")
        rel = clean_path(m.filename[len(prefix):])
        files.append(NewFile(rel, mime_type(rel), _read_member(archive, m, budget)))
    return files


def _common_folder(names: list[str]) -> str:
    """'site/' when every member sits under one top folder (as zips made of a folder do)."""
    first = names[0].split("/", 1)
    if first[0] in ("", ".", "..") or "\\" in first[0]:
        return ""  # not a folder to unwrap: clean_path judges these names
    if len(first) == 2 and all(n.startswith(first[0] + "/") for n in names):
        return first[0] + "/"
    return ""


class _Budget:
    def __init__(self, limit: int):
        self.left = limit
        self.limit = limit

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise TooLarge(f"The zip inflates past the limit of {self.limit // MB} MB.")


def _read_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, budget: _Budget):
    try:
        with archive.open(member) as f:
            read = 0
            while piece := f.read(PIECE):
                read += len(piece)
                if read > member.file_size:
                    raise TooLarge(f"The zip member {member.filename!r} is larger than it claims.")
                budget.spend(len(piece))
                yield piece
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        raise FaztError(f"The zip member {member.filename!r} cannot be read: {exc}.") from None


# -- the deploy ------------------------------------------------------------

Checker = Callable[[list[NewFile]], list[NewFile]]


def deploy(db: Database, name: str, files: list[NewFile], *, check: Checker | None = None,
           allow_reserved: bool = False, keep: int = 1) -> dict:
    """Make `files` the new version of site `name` in one transaction.

    `check` may inspect (and must return) the files before the write, e.g. to
    compile the site's JavaScript; it raises FaztError to refuse the deploy.
    `keep` versions of the site are kept, the new one included.
    """
    check_site_name(name, allow_reserved=allow_reserved)
    paths = [f.path for f in files]
    if len(set(paths)) != len(paths):
        raise FaztError("The deploy names the same path twice.")
    if check is not None:
        files = check(files)
    try:
        with precompressed(db, files) as files, db.write() as conn:
            return replace_site(conn, name, files, keep)
    except OSError as exc:
        raise FaztError(f"The deploy failed and nothing changed: {exc.strerror or exc}.") from None
    except sqlite3.OperationalError as exc:  # e.g. "database or disk is full"
        raise FaztError(f"The deploy failed and nothing changed: {exc}.") from None
