"""Turning a directory (or, through archive.py, a zip) into a new version of a site, safely.

Everything is checked before the database is touched where it can be (names,
paths, symlinks), and the write itself is one transaction: a bad file, a full
disk or a killed process leaves the previous version serving.

Hidden files and folders (any path segment starting with a dot: `.env`,
`.git/`, `.DS_Store`) are neither stored nor served; `.well-known/` at the
top of a site is the one exception (RFC 8615). Sources leave them out and
list them, and the deploy reports that list, so the owner sees what was skipped.
"""

import mimetypes
import os
import re
import sqlite3
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from fazt.compression import precompressed
from fazt.constants import PIECE
from fazt.errors import FaztError
from fazt.store import Database
from fazt.store.sites import NewFile, replace_site

SITE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
RESERVED = frozenset({"admin", "api", "www", "fazt", "localhost"})
ADMIN_SITE = "admin"  # the cockpit's assets are stored as this reserved site
WELL_KNOWN = ".well-known"  # RFC 8615: the one hidden folder a site may serve
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE = re.compile("[\ud800-\udfff]")

_TEXT_TYPES = ("application/javascript", "application/json", "image/svg+xml", "application/xml")
# The types a site needs, fixed here: Python's own table lacks fonts, WebP, source maps and
# more, and reads the rest from the host's /etc/mime.types, so a host without one (a slim
# container) sent font/woff2 as application/octet-stream. As nginx's mime.types names them.
WEB_TYPES = {
    ".js": "text/javascript", ".mjs": "text/javascript", ".map": "application/json",
    ".wasm": "application/wasm",
    ".woff": "font/woff", ".woff2": "font/woff2", ".ttf": "font/ttf", ".otf": "font/otf",
    ".webp": "image/webp", ".avif": "image/avif", ".apng": "image/apng", ".jxl": "image/jxl",
    ".md": "text/markdown", ".xml": "application/xml", ".jsonld": "application/ld+json",
    ".webmanifest": "application/manifest+json", ".rss": "application/rss+xml",
    ".atom": "application/atom+xml", ".ics": "text/calendar", ".vtt": "text/vtt",
    ".ts": "video/mp2t", ".m4a": "audio/mp4", ".flac": "audio/flac", ".ogv": "video/ogg",
    ".glb": "model/gltf-binary", ".gltf": "model/gltf+json",
}
for _extension, _kind in WEB_TYPES.items():
    mimetypes.add_type(_kind, _extension)
# A compressed file ("data.json.gz", "app.js.br", "logo.svgz") is sent as it is stored, with
# no Content-Encoding: its type is the compressed format's, not the type of what is inside.
_COMPRESSED_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2",
                     "xz": "application/x-xz"}


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
    kind, coding = mimetypes.guess_type(path)
    if coding is not None:
        return _COMPRESSED_TYPES.get(coding, "application/octet-stream")
    kind = kind or "application/octet-stream"
    if kind.startswith("text/") or kind in _TEXT_TYPES:
        kind += "; charset=utf-8"
    return kind


@dataclass
class Source:
    """The files of a new version, and the hidden paths its source left out."""

    files: list[NewFile]
    skipped: list[str] = field(default_factory=list)


def hidden_part(path: str) -> str | None:
    """The hidden file or folder in `path` ("a/.git/" for "a/.git/config"), else None."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if part.startswith(".") and not (i == 0 and part == WELL_KNOWN and len(parts) > 1):
            return "/".join(parts[:i + 1]) + ("/" if i < len(parts) - 1 else "")
    return None


def clean_path(raw: str) -> str:
    """A relative path inside a site, or FaztError: no '..', no absolute paths,
    no backslashes, no control characters (NUL included), no empty segments, and
    text that UTF-8 can store (a file name on disk may be bytes that are not UTF-8:
    Python reads those as lone surrogates, which SQLite and zip cannot take)."""
    if _CONTROL.search(raw) or "\\" in raw:
        raise FaztError(f"The path {raw!r} contains a forbidden character.")
    if _SURROGATE.search(raw):
        raise FaztError(f"The name '{_as_bytes(raw)}' is not UTF-8 text; rename it to "
                        "deploy it.")
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        raise FaztError(f"The path {raw!r} is absolute; paths must stay inside the site.")
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts) or not parts:
        raise FaztError(f"The path {raw!r} leaves the site.")
    return "/".join(parts)


def _as_bytes(raw: str) -> str:
    """A name read from disk, its bytes outside UTF-8 shown as \\xHH."""
    try:
        return raw.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte (not from a disk)
        return raw.encode("utf-8", "backslashreplace").decode()


# -- sources ---------------------------------------------------------------


def files_from_directory(root: str) -> Source:
    """Every visible file under `root` (hidden ones listed as skipped); symlinks may
    point only inside it, and a symlinked folder is deployed as a folder of its own
    (as `cp -rL` copies it), unless it leads back into a folder that holds it."""
    if not os.path.isdir(root):
        raise FaztError(f"{root} is not a directory.")
    real_root = os.path.realpath(root)
    found: list[NewFile] = []
    skipped: list[str] = []
    # each folder walked -> the real folders it is reached through: a link to one of them
    # is a loop (`latest -> .`, or `a/b -> ../c` beside `c/d -> ../a`)
    chains: dict[str, frozenset[str]] = {root: frozenset({real_root})}
    for folder, dirs, names in os.walk(root, followlinks=True):
        rel_folder = os.path.relpath(folder, root).replace(os.sep, "/")
        prefix = "" if rel_folder == "." else rel_folder + "/"
        hidden = sorted(d for d in dirs if hidden_part(prefix + d + "/") is not None)
        skipped += [prefix + d + "/" for d in hidden]
        dirs[:] = sorted(d for d in dirs if d not in hidden)  # never walked, never read
        chain = chains.pop(folder)
        for d in dirs:
            full = os.path.join(folder, d)
            real = _inside(real_root, full) if os.path.islink(full) else os.path.realpath(full)
            if real in chain:
                raise FaztError(f"{full} is a symlink to a folder that holds it: deploying "
                                "it would never end. Remove the link or point it elsewhere.")
            chains[full] = chain | {real}
        for name in sorted(names):
            if hidden_part(prefix + name) is not None:
                skipped.append(prefix + name)
                continue
            full = os.path.join(folder, name)
            real = _inside(real_root, full)
            if not os.path.isfile(real):
                continue  # sockets, fifos, broken links: nothing to serve
            rel = clean_path(prefix + name)
            found.append(NewFile(rel, mime_type(rel), _read_file(real)))
    if not found:
        raise FaztError(f"{root} holds no files to deploy.")
    return Source(found, sorted(skipped))


def _inside(real_root: str, path: str) -> str:
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise FaztError(f"{path} is a symlink that points outside the site directory.")
    return real


def _read_file(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(PIECE):
            yield piece


# -- the deploy ------------------------------------------------------------


def _distinct(paths: list[str]) -> None:
    """FaztError for a path named twice, also in two Unicode forms: 'café' composed (NFC,
    as typed) and decomposed (NFD, as macOS may write it) look the same to every reader
    but would be two files, the link's form deciding which one a visitor gets."""
    seen: dict[str, str] = {}
    for path in paths:
        key = unicodedata.normalize("NFC", path)
        other = seen.get(key)
        seen[key] = path
        if other == path:
            raise FaztError(f"The deploy names the path {path!r} twice.")
        if other is not None:
            raise FaztError(f"The deploy names {other!r} and {path!r}, the same name in two "
                            "Unicode forms (composed and decomposed); keep one.")


Checker = Callable[[list[NewFile]], list[NewFile]]


def deploy(db: Database, name: str, files: list[NewFile], *, skipped: list[str] | None = None,
           check: Checker | None = None, allow_reserved: bool = False, keep: int = 1) -> dict:
    """Make `files` the new version of site `name` in one transaction.

    `check` may inspect (and must return) the files before the write, e.g. to
    compile the site's JavaScript; it raises FaztError to refuse the deploy.
    `keep` versions of the site are kept, the new one included. `skipped` (the
    hidden paths the source left out) is passed on in the result.
    """
    check_site_name(name, allow_reserved=allow_reserved)
    _distinct([f.path for f in files])
    if check is not None:
        files = check(files)
    try:
        with precompressed(db, files) as files, db.write() as conn:
            return {**replace_site(conn, name, files, keep), "skipped": skipped or []}
    except OSError as exc:
        raise FaztError(f"The deploy failed and nothing changed: {exc.strerror or exc}.") from None
    except sqlite3.OperationalError as exc:  # e.g. "database or disk is full"
        raise FaztError(f"The deploy failed and nothing changed: {exc}.") from None
