"""gzip and Brotli: variants of a deploy's files made once, and small answers on the fly.

Static files are compressed at deploy, never per request, so serving them
costs no CPU: each compressible file gets a gzip and a Brotli variant when
that saves enough (MIN_SAVING_RATIO and MIN_SAVING_BYTES; below that the
identity body is sent whatever the client accepts). Content whose variants
were decided by an earlier deploy is not compressed again, so redeploying a
site with few changes costs little more than without compression.

The work happens before the deploy's transaction (`precompressed`): Brotli at
its best level runs at about 0.5 MB/s here, and the single writer should not
be held that long. The deploy's compressible files pass through one temporary
file on disk (never RAM), whose pieces the transaction then stores; one over
COMPRESS_MAX stops there and is stored as it is.
"""

import contextlib
import gzip
import hashlib
import itertools
import os
import tempfile
import zlib
from collections.abc import Iterator

import brotli

from fazt.constants import PIECE
from fazt.negotiation import compressible
from fazt.store import Database
from fazt.store.files import variants_decided
from fazt.store.sites import NewFile

MIN_SAVING_RATIO = 0.10
MIN_SAVING_BYTES = 1024
BEST_UNTIL = 512 * 1024  # best levels up to here; above it, levels that run at ~20-40 MB/s
COMPRESS_MAX = 32 * 2**20  # bigger text files (rare on a site) would add seconds: sent as they are
ON_THE_FLY_MAX = 64 * 1024  # handler answers above this go out as they are


def worth_it(size: int, compressed_size: int) -> bool:
    saved = size - compressed_size
    return saved >= MIN_SAVING_BYTES and saved >= size * MIN_SAVING_RATIO


class _Compressor:
    """One coding's streaming compressor, at a level chosen by the content's size."""

    def __init__(self, coding: str, size: int):
        best = size <= BEST_UNTIL
        if coding == "br":
            c = brotli.Compressor(quality=11 if best else 6)
            self.process, self.finish = c.process, c.finish
        else:  # gzip, with no name or time in its header: the same bytes every time
            c = zlib.compressobj(9 if best else 6, zlib.DEFLATED, 31)
            self.process, self.finish = c.compress, c.flush


class _Spool:
    """A deploy's scratch file: bodies appended, then read back by (offset, size)."""

    def __init__(self):
        self.file = tempfile.TemporaryFile()
        self.end = 0

    def append(self, data: bytes) -> None:
        os.pwrite(self.file.fileno(), data, self.end)
        self.end += len(data)

    def pieces(self, offset: int, size: int) -> Iterator[bytes]:
        stop = offset + size
        while offset < stop:
            data = os.pread(self.file.fileno(), min(PIECE, stop - offset), offset)
            if not data:
                raise OSError("the deploy's scratch file came back short")
            offset += len(data)
            yield data

    def close(self) -> None:
        self.file.close()


@contextlib.contextmanager
def precompressed(db: Database, files: list[NewFile]) -> Iterator[list[NewFile]]:
    """The same files, each compressible one with its variants (see the module's doc).
    The pieces read from scratch space that lasts as long as the `with` block."""
    spool = _Spool()
    try:
        yield [_with_variants(db, spool, f) if compressible(f.mime) else f for f in files]
    finally:
        spool.close()


def _with_variants(db: Database, spool: _Spool, f: NewFile) -> NewFile:
    offset, digest = spool.end, hashlib.sha256()
    pieces = iter(f.pieces)
    for piece in pieces:
        digest.update(piece)
        spool.append(piece)
        if spool.end - offset > COMPRESS_MAX:  # too big to hold the deploy for: as it is
            return NewFile(f.path, f.mime, itertools.chain(
                _Replay(spool, offset, spool.end - offset), pieces))
    size = spool.end - offset
    identity = _Replay(spool, offset, size)
    if size < MIN_SAVING_BYTES:
        return NewFile(f.path, f.mime, identity, ())
    with db.read() as conn:
        if variants_decided(conn, digest.hexdigest()):
            return NewFile(f.path, f.mime, identity)  # stored with its variants already
    variants = []
    for coding in ("br", "gzip"):
        start = spool.end
        compressor = _Compressor(coding, size)
        for piece in spool.pieces(offset, size):
            spool.append(compressor.process(piece))
        spool.append(compressor.finish())
        if worth_it(size, spool.end - start):
            variants.append((coding, _Replay(spool, start, spool.end - start)))
    return NewFile(f.path, f.mime, identity, tuple(variants))


class _Replay:
    """Pieces of the spool that can be read more than once."""

    def __init__(self, spool: _Spool, offset: int, size: int):
        self.spool, self.offset, self.size = spool, offset, size

    def __iter__(self) -> Iterator[bytes]:
        return self.spool.pieces(self.offset, self.size)


def compress_answer(data: bytes, coding: str) -> bytes:
    """A small handler answer, compressed at levels that cost well under a millisecond
    for ON_THE_FLY_MAX bytes."""
    if coding == "br":
        return brotli.compress(data, quality=4)
    return gzip.compress(data, compresslevel=6, mtime=0)
