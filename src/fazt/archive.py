"""A zip upload read as site files, within limits whatever its shape.

The limits are thresholds (`zip_max_unpacked_mb`, `zip_max_ratio`,
`zip_max_entry_ratio`, `zip_max_entries`, `zip_max_path`). They are checked
in three steps, each before the next one can cost memory or disk:

1. The central directory is counted record by record, in small reads, before
   `zipfile` parses it: `zipfile` builds an object of about half a kilobyte
   per entry, so 100,000 empty entries would cost 50 MB before any check.
2. Every name must be canonical (no NUL or other control character, no
   backslash, no empty, `.` or `..` segment, not absolute); the sizes the zip
   declares must fit the total, the overall ratio (declared size over the
   bytes actually uploaded) and the per-entry ratio. A bomb is refused here,
   before anything is written.
3. While the deploy streams each entry into the database, `zipfile` inflates
   it in bounded pieces and never past the size it declared (the rest is cut
   and the CRC then fails), so a zip that lies about its sizes is stopped, and
   corrupt data is a 400 that names the entry. Only stored and deflated
   entries are accepted: `zipfile` inflates bzip2 and LZMA input without an
   output bound, and a few kilobytes of bzip2 can unpack to gigabytes in one
   call. The deploy is one transaction: the previous version serves
   throughout, and after any refusal.
"""

import stat
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from fazt.constants import MB, PIECE, SCRIPT
from fazt.deploy import Source, hidden_part, mime_type
from fazt.errors import FaztError, TooLarge
from fazt.store.sites import NewFile

# The per-entry ratio is judged once an entry passes this size: a small file that
# compresses very well (a blank page, a run of spaces) is no threat to anyone.
ENTRY_RATIO_FLOOR = 64 * 1024
MAC_METADATA = "__MACOSX/"  # resource forks macOS's zip adds: never a site's content
API_FOLDER = SCRIPT.split("/")[0]  # "api": never unwrapped (see common_folder)
# Extra field and comment of one central directory record: a few dozen bytes in
# real zips; a larger one would only make `zipfile` hold more in RAM.
RECORD_EXTRA_MAX = 1024
# The central directory's bytes per entry the count allows, on average: a record is 46
# bytes and a name and extras of a few dozen more in real zips. `zipfile` reads the whole
# directory at once and keeps each name and extra, about twice its size in RAM: without
# this bound, zip_max_entries records of the longest name and extras each (3 KB) cost a
# server 125 MB for one upload of 60 MB.
RECORD_AVERAGE = 512
_EOCD = struct.Struct("<4sHHHHIIH")  # end of central directory record
_EOCD64_LOCATOR = struct.Struct("<4sIQI")
_EOCD64 = struct.Struct("<4sQHHIIQQQQ")
_RECORD = struct.Struct("<4s6H3I5H2I")  # one central directory file header
_CONTROL = frozenset(chr(c) for c in (*range(0x20), *range(0x7F, 0xA0)))  # C0, DEL, C1


@dataclass(frozen=True)
class ArchiveLimits:
    """The archive thresholds, in bytes and plain numbers."""

    max_bytes: int
    max_ratio: float
    max_entry_ratio: float
    max_entries: int
    max_path: int

    @classmethod
    def from_config(cls, config: dict) -> "ArchiveLimits":
        return cls(max_bytes=int(float(config["zip_max_unpacked_mb"]) * MB),
                   max_ratio=float(config["zip_max_ratio"]),
                   max_entry_ratio=float(config["zip_max_entry_ratio"]),
                   max_entries=int(config["zip_max_entries"]),
                   max_path=int(config["zip_max_path"]))


def files_from_zip(fileobj: BinaryIO, limits: ArchiveLimits) -> Source:
    """The files of a zip upload (hidden paths left out and listed), or FaztError/TooLarge."""
    upload_bytes = _count_entries(fileobj, limits)
    try:
        archive = zipfile.ZipFile(fileobj)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise FaztError("The upload is not a valid zip archive.") from None
    members = archive.infolist()
    if len(members) > limits.max_entries:  # _count_entries walked what zipfile read
        raise TooLarge(f"The zip holds more than {limits.max_entries} entries, over "
                       "zip_max_entries.")
    for m in members:
        _check_name(m.orig_filename, limits)
    members = [m for m in members if not m.is_dir()]
    if not members:
        raise FaztError("The zip archive holds no files.")
    for m in members:
        _check_kind(m)
    _check_sizes(members, upload_bytes, limits)
    # The folder to unwrap, judged on what is deployed: macOS zips a folder with
    # __MACOSX/ (and often .DS_Store) beside it, and the site then landed in /site/.
    visible = [m.filename for m in members if _left_out(m.filename) is None]
    prefix = common_folder(visible) if visible else ""
    files, skipped = [], []
    for m in members:
        rel = m.filename[len(prefix):] if m.filename.startswith(prefix) else m.filename
        hidden = _left_out(rel)
        if hidden is not None:
            skipped.append(hidden)
            continue
        files.append(NewFile(rel, mime_type(rel), _inflate(archive, m)))
    if not files:  # as a folder of hidden files: nothing would serve
        raise FaztError("The zip archive holds no files to deploy (hidden ones are never "
                        f"deployed: {', '.join(sorted(set(skipped))[:5])}).")
    return Source(files, sorted(set(skipped)))


def _left_out(name: str) -> str | None:
    """The hidden file or folder in `name`, or macOS's metadata folder, else None."""
    return MAC_METADATA if name.startswith(MAC_METADATA) else hidden_part(name)


def _count_entries(fileobj: BinaryIO, limits: ArchiveLimits) -> int:
    """Walk the central directory's records without keeping them; return the upload's size.

    Refuses more than `max_entries` records, a name longer than `max_path`
    characters can be, oversized extra fields and a directory larger than
    `max_entries` records of RECORD_AVERAGE bytes, so that what `zipfile` then
    reads and builds is bounded by the thresholds.
    """
    fileobj.seek(0, 2)
    size = fileobj.tell()
    start, length = _central_directory(fileobj, size)
    if length > limits.max_entries * RECORD_AVERAGE:
        raise TooLarge(f"The zip's directory of entries is {length // 1024} KB, more than "
                       f"{limits.max_entries} entries (zip_max_entries) of names and extras "
                       f"of {RECORD_AVERAGE} bytes on average need.")
    end = start + length
    position, count = start, 0
    while position < end:
        fileobj.seek(position)
        raw = fileobj.read(_RECORD.size)
        if len(raw) < _RECORD.size or raw[:4] != b"PK\x01\x02":
            raise FaztError("The upload is not a valid zip archive (broken central directory).")
        fields = _RECORD.unpack(raw)
        name_length, extra_length, comment_length = fields[10], fields[11], fields[12]
        count += 1
        if count > limits.max_entries:
            raise TooLarge(f"The zip holds more than {limits.max_entries} entries, over "
                           "zip_max_entries.")
        if name_length > 4 * limits.max_path:  # 4 bytes is the longest UTF-8 character
            raise FaztError(f"A name in the zip is {name_length} bytes long, over zip_max_path "
                            f"({limits.max_path} characters).")
        if extra_length + comment_length > RECORD_EXTRA_MAX:
            raise FaztError("A zip entry carries an oversized extra field or comment.")
        position += _RECORD.size + name_length + extra_length + comment_length
    fileobj.seek(0)
    return size


def _central_directory(fileobj: BinaryIO, size: int) -> tuple[int, int]:
    """(start, length) of the central directory, found exactly as zipfile finds it
    (`zipfile._EndRecData`): the end record in the last 22 bytes, else the last one in
    the last 64 KiB; then the ZIP64 record whenever its locator sits right before, whatever
    the end record says (a zip carrying both must be counted by the one zipfile reads)."""
    eocd = size - _EOCD.size
    fileobj.seek(max(0, eocd))
    last = fileobj.read(_EOCD.size)
    if eocd >= 0 and last[:4] == b"PK\x05\x06" and last[-2:] == b"\x00\x00":
        fields = _EOCD.unpack(last)
    else:
        tail_start = max(0, size - _EOCD.size - (1 << 16))
        fileobj.seek(tail_start)
        tail = fileobj.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) - at < _EOCD.size:
            raise FaztError("The upload is not a valid zip archive.")
        eocd = tail_start + at
        fields = _EOCD.unpack_from(tail, at)
    length = fields[5]
    start = eocd - length
    record = _zip64_record(fileobj, eocd)
    if record is not None:
        record_at, length = record
        start = record_at - length
    if start < 0:
        raise FaztError("The upload is not a valid zip archive (broken central directory).")
    return start, length


def _zip64_record(fileobj: BinaryIO, eocd: int) -> tuple[int, int] | None:
    """(where, central directory length) of the ZIP64 end record zipfile would use, or
    None when it would use the plain one (`zipfile._EndRecData64`)."""
    locator_at = eocd - _EOCD64_LOCATOR.size
    locator = _record_at(fileobj, locator_at, _EOCD64_LOCATOR, b"PK\x06\x07")
    if locator is None:
        return None
    _, disk, _, disks = locator
    if disk != 0 or disks > 1:
        raise FaztError("The upload is not a valid zip archive (it spans several disks).")
    record_at = locator_at - _EOCD64.size
    record = _record_at(fileobj, record_at, _EOCD64, b"PK\x06\x06")
    return None if record is None else (record_at, record[8])


def _record_at(fileobj: BinaryIO, at: int, shape: struct.Struct, signature: bytes
               ) -> tuple | None:
    """The record of `shape` at offset `at` if it is there (its signature first)."""
    if at < 0:
        return None
    fileobj.seek(at)
    raw = fileobj.read(shape.size)
    if len(raw) < shape.size or raw[:4] != signature:
        return None
    return shape.unpack(raw)


def _check_name(raw: str, limits: ArchiveLimits) -> None:
    """A canonical relative name, or FaztError naming it."""
    shown = repr(raw)
    if any(c in _CONTROL for c in raw):
        raise FaztError(f"The zip entry name {shown} contains a control character.")
    if len(raw) > limits.max_path:
        raise FaztError(f"The zip entry name {shown[:80]}... is {len(raw)} characters long, "
                        f"over zip_max_path ({limits.max_path}).")
    if "\\" in raw or raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise FaztError(f"The zip entry name {shown} is not a relative path with '/' "
                        "separators.")
    parts = (raw[:-1] if raw.endswith("/") else raw).split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise FaztError(f"The zip entry name {shown} is not canonical (an empty, '.' or '..' "
                        "segment).")


def _check_kind(m: zipfile.ZipInfo) -> None:
    """A plain file fazt can inflate with bounded memory."""
    if stat.S_ISLNK(m.external_attr >> 16):
        raise FaztError(f"The zip member {m.filename!r} is a symlink; links are refused.")
    if m.flag_bits & 0x1:
        raise FaztError(f"The zip member {m.filename!r} is encrypted; fazt cannot read it.")
    if m.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise FaztError(f"The zip member {m.filename!r} uses compression method "
                        f"{m.compress_type}; fazt accepts stored and deflated entries.")


def _check_sizes(members: list[zipfile.ZipInfo], upload_bytes: int,
                 limits: ArchiveLimits) -> None:
    """The declared sizes against the limits; `_inflate` then holds the data to them."""
    total = sum(m.file_size for m in members)
    if total > limits.max_bytes:
        raise TooLarge(f"The zip would unpack to {total // MB} MB, over zip_max_unpacked_mb "
                       f"({limits.max_bytes // MB} MB).")
    ratio = total / max(1, upload_bytes)
    if ratio > limits.max_ratio:
        raise TooLarge(f"The zip would unpack to {ratio:.0f} times its size, over "
                       f"zip_max_ratio ({limits.max_ratio:g}): a zip bomb?")
    for m in members:
        if m.file_size > ENTRY_RATIO_FLOOR and \
                m.file_size > limits.max_entry_ratio * max(1, m.compress_size):
            raise TooLarge(f"The zip member {m.filename!r} would unpack to "
                           f"{m.file_size / max(1, m.compress_size):.0f} times its size, over "
                           f"zip_max_entry_ratio ({limits.max_entry_ratio:g}): a zip bomb?")


def _inflate(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> Iterator[bytes]:
    """The member's bytes in pieces, never more than it declared; corrupt data is a 400."""
    try:
        with archive.open(member) as f:
            while piece := f.read(PIECE):
                yield piece
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError,
            NotImplementedError, RuntimeError, ValueError) as exc:
        raise FaztError(f"The zip member {member.filename!r} is corrupt: "
                        f"{str(exc).rstrip('.')}.") from None


def common_folder(names: list[str]) -> str:
    """'site/' when every member sits under one visible top folder (a zipped folder), which
    is unwrapped. Never the folder of a site's back end: a zip of a site that is only
    `api/main.js` would become `main.js`, a static file that serves the script's source."""
    first = names[0].split("/", 1)
    if len(first) == 2 and not first[0].startswith(".") and first[0] != API_FOLDER and \
            all(n.startswith(first[0] + "/") for n in names):
        return first[0] + "/"
    return ""
