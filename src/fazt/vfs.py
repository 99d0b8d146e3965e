"""The virtual file system: a pinned map, a byte-capped LRU, and chunked streams.

- Pinned: whole sites (the admin assets) loaded before the port opens and
  never evicted; lookups there never touch the database.
- Cached: contents of small files, keyed by SHA-256, evicted least recently
  used first when the *bytes* held pass `vfs_cache_mb` (never by entry count).
  A file above `large_file_mb` never enters it.
- Streamed: large files are read one chunk per short read as the client
  drains them, so memory stays at one chunk per download.
- Live: which version (deploy id) each recently served site serves. A request
  asks once and takes everything else from that version, so one answer is one
  version's: its rules, its file, its 404 page. Asked for separately, a
  rollback racing a request paired one version's `_headers` with another's file
  (about 2% of answers during a rollback every 40 ms).
- Found: where each recently served path of a version lives (its FileInfo), so a
  hot file costs no database call at all. Measured: the one SQLite lookup per
  request, with the lock handoffs around it, made static serving fall from
  ~2,000 to ~250 requests a second in about half the runs of a wrk flood.
  The server forgets these on every deploy or removal, its own or another
  process's (`fazt deploy --db`: noticed before the next request, see
  Instance.refresh); a file that vanished meanwhile is noticed (Stale) and
  looked up again.
  Each is kept as a plain tuple of strings and numbers, not as a FileInfo: CPython's
  cyclic collector stops tracking such a tuple, while it walks every FileInfo at each
  full collection, on whichever thread allocated last (the event loop's, often).
  Measured (bench section 9): with 100,000 files remembered, full collections took
  200 to 600 ms, and static p99 over 10,000 sites was 27 times one site's.
- Rules: each recently served version's parsed `_redirects` and `_headers` (an
  empty set for most), forgotten with the found files.
- Leased: a stream holds its file's content until it ends, so collecting what
  no kept version uses (after a deploy pruned one, or a removal) never cuts a
  download in flight; that content is collected once the stream is closed.
"""

import functools
import io
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from fazt.errors import Busy, FaztError, Unavailable
from fazt.siterules import EMPTY, HEADERS, REDIRECTS, SiteRules, parse_headers, parse_redirects
from fazt.store import Database
from fazt.store.files import (
    CHUNK_SIZE,
    collectable,
    delete_blobs,
    mark_loose,
    read_blob,
    read_chunks,
    unreferenced_blobs,
)
from fazt.store.sites import Body, FileInfo, live_deploy, site_files, version_file

FOUND_ENTRIES = 64  # at least this many locations are remembered (FOUND_SHARE of 1 MB)
RULES_ENTRIES = 256  # and the parsed rules of at least this many sites (most share EMPTY)
# A remembered location (key, file tuple, cache slot) and the fast path's rendered answer
# for it (server/fastpath.py keeps as many): measured with tracemalloc, about 1,560 bytes
# beyond the content for 1 KiB files.
FOUND_ENTRY_BYTES = 1600
FOUND_SHARE = 0.10  # beyond the minimum, locations take 10% of vfs_cache_mb (capacity.js)
PINNED = 0  # the version a pinned site serves (no deploy has id 0): its files never change


def found_entries(cache_bytes: int) -> int:
    """How many file locations to remember for a cache of `cache_bytes`. A fixed 4,096
    made static serving 0.57x as fast with requests spread over 10,000 sites of 10
    files as with one site (bench section 9): every miss is a database lookup on a
    thread instead of an answer from the event loop's fast path."""
    return max(FOUND_ENTRIES, int(cache_bytes * FOUND_SHARE) // FOUND_ENTRY_BYTES)


class TooManyStreams(Unavailable):
    """Every large download this server may hold at once is running (503, Retry-After)."""

    code = "too_many_downloads"
    retry_after = 5


class TooManyStreamsHere(Busy):
    """This address holds its share of the large downloads already (429, Retry-After)."""

    code = "too_many_downloads"
    retry_after = 5


# One address may hold this share of `max_streams` (at least STREAMS_ADDRESS_MIN): else
# one machine opens `max_streams` downloads of a large file, reads a byte a minute, and
# every other visitor's large file is a 503 for as long as it likes.
STREAMS_SHARE = 8
STREAMS_ADDRESS_MIN = 4


class Stale(Unavailable):
    """A remembered file is gone (another process redeployed the site): look again."""

    code = "stale"
    retry_after = 1


class ByteLRU:
    """An LRU map whose capacity is a number of bytes, not of entries."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            data = self._items.get(key)
            if data is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return data

    def peek(self, key: str) -> bytes | None:
        """`get` for the event loop's fast path: a hit counts, a miss is left to the thread
        that will load the file (and count it)."""
        with self._lock:
            data = self._items.get(key)
            if data is not None:
                self._items.move_to_end(key)
                self.hits += 1
            return data

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.limit_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= len(old)
            self._items[key] = data
            self.bytes += len(data)
            while self.bytes > self.limit_bytes:
                _, evicted = self._items.popitem(last=False)
                self.bytes -= len(evicted)

    def resize(self, limit_bytes: int, largest: int | None = None) -> None:
        """Re-cap (a soft restart): the most recently used entries that fit stay, and
        so do the counters; an entry over `largest` bytes goes whatever room is left."""
        with self._lock:
            self.limit_bytes = limit_bytes
            if largest is not None:
                for key in [k for k, data in self._items.items() if len(data) > largest]:
                    self.bytes -= len(self._items.pop(key))
            while self.bytes > limit_bytes:
                _, evicted = self._items.popitem(last=False)
                self.bytes -= len(evicted)

    def __len__(self) -> int:
        return len(self._items)


class Leases:
    """The blobs that streams are reading now, and the collector that spares them."""

    def __init__(self):
        self._lock = threading.Lock()
        self._held: Counter[int] = Counter()
        self._doomed: set[int] = set()
        self.deferred = 0  # unused blobs spared for a stream at the last collection
        self._released = False  # a lease ended since then: worth collecting again

    def take(self, blob_id: int) -> None:
        with self._lock:
            if blob_id in self._doomed:
                raise Stale("The site changed while this file was looked up; try again.")
            self._held[blob_id] += 1

    def give(self, blob_id: int) -> None:
        with self._lock:
            self._held[blob_id] -= 1
            if self._held[blob_id] <= 0:
                del self._held[blob_id]
                self._released = True

    def due(self) -> bool:
        """Content was spared for a stream that has ended since."""
        return self.deferred > 0 and self._released

    def collect(self, db: Database) -> int:
        """Delete the content no kept version uses, except what streams hold; how many.
        Looks only at the blobs that lost a use since the last collection (the loose
        ones, `files.collectable`), and at those `sweep` found."""
        with db.write() as conn:
            unused = collectable(conn)
            with self._lock:
                self._doomed = unused - self._held.keys()
                self.deferred = len(unused) - len(self._doomed)
                self._released = False
            try:
                delete_blobs(conn, self._doomed)
                return len(self._doomed)
            finally:
                with self._lock:
                    self._doomed = set()

    def sweep(self, db: Database) -> int:
        """`collect`, after a scan of every blob for any that lost its last use unseen (a
        safety net: every way of dropping a version marks its content loose). The scan is
        a read, which no writer waits for; the collection checks each blob again."""
        with db.read() as conn:
            unused = unreferenced_blobs(conn)
        if unused:
            with db.write() as conn:
                mark_loose(conn, unused)
        return self.collect(db)


@dataclass(frozen=True)
class PinnedFile:
    info: FileInfo
    bodies: dict[str, bytes]  # by encoding: 'identity' and the variants

    @property
    def bytes(self) -> int:
        return sum(len(b) for b in self.bodies.values())


class VFS:
    """Where site files come from: pinned RAM, the LRU, or the database."""

    def __init__(self, db: Database, cache_bytes: int, large_file_bytes: int):
        self.db = db
        self.cache = ByteLRU(cache_bytes)
        self.large_file_bytes = large_file_bytes
        self._pinned: dict[str, dict[str, PinnedFile]] = {}
        self.pinned_bytes = 0
        self.loop: StreamLoop | None = None  # set by the server: streams feed its event loop
        self._live: OrderedDict[str, int] = OrderedDict()  # site -> the deploy it serves
        # by (site, deploy id, path): an id is reused once its version is gone; with the
        # site in the key, nothing remembered under a reused id crosses to another site
        self._found: OrderedDict[tuple[str, int, str], tuple] = OrderedDict()  # _packed
        self._found_limit = found_entries(cache_bytes)
        self._found_lock = threading.Lock()
        self._found_generation = 0
        self._rules: OrderedDict[tuple[str, int], SiteRules] = OrderedDict()  # by version
        self.leases = Leases()
        self.max_streams: int | None = None  # `max_streams`, set by the instance
        self.streams = 0  # open now
        self._client_streams: Counter[str] = Counter()  # open now, by client address key
        self._streams_lock = threading.Lock()

    def pin_site(self, site: str) -> int:
        """Load every file of `site` into the pinned map; return its bytes."""
        with self.db.read() as conn:
            files = {
                info.path: PinnedFile(info, {body.encoding: read_blob(conn, body.blob_id)
                                             for body in (info.identity, *info.variants)})
                for info in site_files(conn, site)
            }
        old = self._pinned.get(site, {})
        self._pinned[site] = files
        self.pinned_bytes += sum(f.bytes for f in files.values())
        self.pinned_bytes -= sum(f.bytes for f in old.values())
        return sum(f.bytes for f in files.values())

    def live(self, site: str) -> int | None:
        """The version (deploy id) `site` serves now; None when there is no such site. Ask
        once per request and pass it to `find` and `rules`: one answer, one version."""
        if site in self._pinned:
            return PINNED
        deploy, generation = self._recall(self._live, site)
        if deploy is not None:
            return deploy
        with self.db.read() as conn:
            deploy = live_deploy(conn, site)
        if deploy is not None:
            self._remember(self._live, site, deploy, generation, self._sites_limit())
        return deploy

    def known_live(self, site: str) -> int | None:
        """`live` from RAM alone: None until a thread has looked it up."""
        if site in self._pinned:
            return PINNED
        return self._live.get(site)  # a plain dict read: atomic, no lock needed

    def find(self, site: str, path: str, deploy: int | None = None) -> FileInfo | None:
        """The file at `path` in version `deploy` of `site` (by default the one it serves
        now). Stale when that version is gone (a deploy pruned it): look again."""
        pinned = self._pinned.get(site)
        if pinned is not None:
            entry = pinned.get(path)
            return entry.info if entry else None
        if deploy is None:
            deploy = self.live(site)
            if deploy is None:
                return None
        key = (site, deploy, path)
        packed, generation = self._recall(self._found, key)
        if packed is not None:
            return _unpacked(packed)
        try:
            with self.db.read() as conn:
                info = version_file(conn, site, deploy, path)
        except LookupError:
            self.forget_files()  # the site's version remembered is gone too
            raise Stale("The site changed while this file was looked up; try again.") from None
        if info is not None:
            self._remember(self._found, key, _packed(info), generation, self._found_limit)
        return info

    def known(self, site: str, path: str, deploy: int | None = None) -> FileInfo | None:
        """`find` from RAM alone (the event loop never waits on the database): None when
        the file is not pinned or remembered, whether or not it exists."""
        pinned = self._pinned.get(site)
        if pinned is not None:
            entry = pinned.get(path)
            return entry.info if entry else None
        if deploy is None:
            deploy = self.known_live(site)
        packed = self._found.get((site, deploy, path))  # a plain dict read: atomic, no lock
        return None if packed is None else _unpacked(packed)

    def known_rules(self, site: str, deploy: int | None = None) -> SiteRules | None:
        """`rules` from RAM alone: None until a thread has parsed them."""
        if deploy is None:
            deploy = self.known_live(site)
        return self._rules.get((site, deploy))

    def held(self, site: str, path: str, encoding: str, sha256: str) -> bytes | None:
        """`content` from RAM alone: None unless the body (the file at `path` in
        `encoding`, whose hash is `sha256`) is pinned or in the cache."""
        pinned = self._pinned.get(site)
        if pinned is not None and path in pinned:
            return pinned[path].bodies[encoding]
        return self.cache.peek(sha256)

    @property
    def found_limit(self) -> int:
        """How many file locations are remembered (the fast path keeps as many answers)."""
        return self._found_limit

    @property
    def generation(self) -> int:
        """Changes whenever a site changes (every remembered location is forgotten)."""
        return self._found_generation

    def forget_files(self) -> None:
        """A site changed: every remembered version, location and rule may be wrong now."""
        with self._found_lock:
            self._live.clear()
            self._found.clear()
            self._rules.clear()
            self._found_generation += 1

    def _recall(self, cache: OrderedDict, key) -> tuple:
        """(what `cache` (`_live`, `_found`, `_rules`) holds under `key`, made its newest,
        or None; the generation to hand `_remember` with what is read instead)."""
        with self._found_lock:
            value = cache.get(key)
            if value is not None:
                cache.move_to_end(key)
            return value, self._found_generation

    def _remember(self, cache: OrderedDict, key, value, generation: int, limit: int) -> None:
        """Keep `value`, read at `generation`, unless a site changed since (it may be of
        the state before), dropping the oldest past `limit`."""
        with self._found_lock:
            if generation == self._found_generation:
                cache[key] = value
                while len(cache) > limit:
                    cache.popitem(last=False)

    def _sites_limit(self) -> int:
        """How many sites' versions, and versions' rules, are remembered."""
        return max(RULES_ENTRIES, self._found_limit // 8)

    def rules(self, site: str, deploy: int | None = None) -> SiteRules:
        """The `_redirects` and `_headers` of version `deploy` of `site` (by default the
        one it serves now), parsed once until a site changes. Stale as `find`."""
        if deploy is None:
            deploy = self.live(site)
            if deploy is None:
                return EMPTY
        key = (site, deploy)
        rules, generation = self._recall(self._rules, key)
        if rules is not None:
            return rules
        texts = {}
        for name in (REDIRECTS, HEADERS):
            info = self.find(site, name, deploy)
            texts[name] = self.content(site, info).decode("utf-8", "replace") if info else ""
        rules = _parsed(texts[REDIRECTS], texts[HEADERS])
        self._remember(self._rules, key, rules, generation, self._sites_limit())
        return rules

    def site_exists(self, site: str) -> bool:
        return self.live(site) is not None

    def is_large(self, body: Body) -> bool:
        """Streamed rather than held whole: above large_file_mb, or above the whole cache
        (on a tiny host a file the cache could never keep is not worth a thread's RAM)."""
        return body.size > min(self.large_file_bytes, self.cache.limit_bytes)

    def content(self, site: str, info: FileInfo, body: Body | None = None) -> bytes:
        """One whole body of a small file (identity unless `body` names a variant),
        through the pinned map or the LRU, which keys each body by its own hash."""
        body = body or info.identity
        pinned = self._pinned.get(site)
        if pinned is not None and info.path in pinned:
            return pinned[info.path].bodies[body.encoding]
        data = self.cache.get(body.sha256)
        if data is None:
            with self.db.read() as conn:
                data = read_blob(conn, body.blob_id)
            if len(data) != body.size:
                self.forget_files()
                raise Stale("The site changed while this file was read; try again.")
            self.cache.put(body.sha256, data)  # callers stream large files, never ask here
        return data

    def stream(self, body: Body, start: int = 0, end: int | None = None,
               client: str | None = None) -> "ChunkStream":
        """A stream that holds the body's blob until it is closed (see Leases).

        At most `max_streams` at once: each holds a chunk or two however slowly its client
        reads, so their count, not the connections', bounds that memory. And at most
        `address_streams` of them for one `client` (its `proxies.address_key`)."""
        with self._streams_lock:
            if self.max_streams is not None:
                if client is not None and \
                        self._client_streams[client] >= self.address_streams:
                    raise TooManyStreamsHere(
                        f"This address is already downloading {self.address_streams} large "
                        "files, as many as one address may at once; try again when one "
                        "is done.")
                if self.streams >= self.max_streams:
                    raise TooManyStreams(f"{self.streams} large downloads are running, as "
                                         "many as this server holds at once; try again "
                                         "shortly.")
            self.streams += 1
            if client is not None:
                self._client_streams[client] += 1
        try:
            return self._stream(body, start, end, client)
        except BaseException:
            self._stream_ended(body.blob_id, client)
            raise

    @property
    def address_streams(self) -> int:
        """The large downloads one address may hold at once."""
        return max(STREAMS_ADDRESS_MIN, (self.max_streams or 0) // STREAMS_SHARE)

    def _stream_ended(self, blob_id: int, client: str | None = None) -> None:
        with self._streams_lock:
            self.streams -= 1
            if client is not None:
                self._client_streams[client] -= 1
                if self._client_streams[client] <= 0:
                    del self._client_streams[client]

    def _stream(self, body: Body, start: int, end: int | None,
                client: str | None = None) -> "ChunkStream":
        self.leases.take(body.blob_id)
        try:
            with self.db.read() as conn:  # collected between lookup and lease?
                row = conn.execute("SELECT size FROM blobs WHERE id = ?",
                                   (body.blob_id,)).fetchone()
            if row is None or row[0] != body.size:
                self.forget_files()
                raise Stale("The site changed while this file was looked up; try again.")
        except BaseException:
            self.leases.give(body.blob_id)
            raise
        def ended(blob_id: int) -> None:
            self.leases.give(blob_id)
            self._stream_ended(blob_id, client)

        return ChunkStream(self.db, body.blob_id, start, body.size if end is None else end,
                           self.loop, on_close=ended)

    def resize(self, cache_bytes: int, large_file_bytes: int) -> None:
        # a file now over large_file_mb is streamed from here on, never held (SPEC)
        self.cache.resize(cache_bytes, largest=large_file_bytes)
        self._found_limit = found_entries(cache_bytes)
        self.large_file_bytes = large_file_bytes

    def stats(self) -> dict:
        return {
            "bytes": self.cache.bytes,
            "limit_bytes": self.cache.limit_bytes,
            "entries": len(self.cache),
            "pinned_bytes": self.pinned_bytes,
            "hits": self.cache.hits,
            "misses": self.cache.misses,
            "large_file_bytes": self.large_file_bytes,
        }


def _packed(info: FileInfo) -> tuple:
    """`info` as a plain tuple of strings, numbers and such tuples (see Found above)."""
    return (info.path, info.blob_id, info.sha256, info.size, info.mime,
            tuple((b.encoding, b.blob_id, b.sha256, b.size) for b in info.variants))


def _unpacked(packed: tuple) -> FileInfo:
    return FileInfo(*packed[:5], tuple(Body(*v) for v in packed[5]))


def _parsed(redirects: str, headers: str) -> SiteRules:
    if not redirects and not headers:
        return EMPTY
    return SiteRules.of(_lenient(functools.partial(parse_redirects, strict=False), redirects),
                        _lenient(functools.partial(parse_headers, strict=False), headers))


def _lenient(parse, text: str) -> tuple:
    """Rules are checked at deploy; a file deployed before fazt read rules was never
    checked, and counts as absent when it does not parse."""
    try:
        return parse(text)
    except FaztError:
        return ()


STREAM_CACHE_MB = 0.5  # a chunk is read once: streams read through a small page cache
# What streams hold (the memory ledger, web_simulator/capacity.js, charges these): each
# download the chunk it sends and the one it waits for (2 x CHUNK_SIZE), and all of them
# together at most READ_AHEAD_MB read ahead, however many there are.
READ_AHEAD = 32  # chunks a stream on the loop keeps fetched (or on their way) past the one it sends
READ_BATCH = 16  # chunks one reader job fetches, in one short read transaction
RING_CHUNKS = 4  # chunks in a row a waiting loop is rung for (or the rest of a read)
READ_AHEAD_MB = 8  # what all streams together may hold read ahead (beyond a chunk each)
HEAP_KEEP_FACTOR = 2  # free heap malloc keeps for the next chunks, x the read-ahead (heap.py)


class StreamLoop:
    """Lets chunk streams feed the event loop without it ever touching SQLite.

    The loop thread must never wait on a locked database or a slow disk: every
    connection it serves would wait with it, the cockpit's included. So chunks
    are read by a small pool of reader threads. While the loop sends one piece
    of a file, readers keep the next chunks fetched, up to READ_AHEAD or the
    stream's share of the shared limit (`window`), in batches of up to
    READ_BATCH (half the window at most), each batch one short read
    transaction whose chunks are handed over one by one as they are read, and
    the next batch asked for by the reader itself: so a fast client rarely
    waits; when it does ask for bytes that are not in memory yet, the stream
    answers "nothing yet" and the
    connection sleeps (it is not writable while a stream waits) until the
    reader has them and `wake` rings the loop. A reader that finishes ahead of
    the loop rings nothing: the loop will find the chunks when it comes.

    Reading ahead is shared: all streams together hold at most READ_AHEAD_MB of
    chunks fetched before the loop asked for them, so a crowd of downloads
    costs what it did without read-ahead (the chunk each one sends, and the one
    it waits for) plus that much.

    Each stream keeps one reader thread, the one with the fewest streams (the
    first when all are free): with the readers taking turns, each thread's
    malloc arena came to hold its share of every download's chunks (heap.py
    keeps freed pages for reuse), and downloads one after another grew RSS by
    12 MB instead of 7.
    """

    def __init__(self, wake: Callable[[], None], readers: int = 2,
                 ahead_bytes: int = READ_AHEAD_MB * 1024 * 1024):
        self.thread = threading.get_ident()  # built on the loop's own thread
        self.wake = wake
        self.readers = [ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"fazt-stream-{i}")
                        for i in range(readers)]
        self._streams = [0] * readers  # streams keeping each reader
        self.ahead_limit = ahead_bytes
        self.ahead = 0  # bytes streams hold (or are fetching) before the loop asked for them
        self._lock = threading.Lock()

    def reserve(self, chunks: int) -> int:
        """Room for up to `chunks` chunks of read-ahead: as many as the shared limit allows."""
        with self._lock:
            granted = max(0, min(chunks, (self.ahead_limit - self.ahead) // CHUNK_SIZE))
            self.ahead += granted * CHUNK_SIZE
            return granted

    def release(self, size: int) -> None:
        with self._lock:
            self.ahead -= size

    def reader(self) -> int:
        """The reader a new stream keeps (give it back with `leave`)."""
        with self._lock:
            index = self._streams.index(min(self._streams))
            self._streams[index] += 1
            return index

    def leave(self, index: int) -> None:
        with self._lock:
            self._streams[index] -= 1

    def window(self) -> int:
        """How many chunks past the one it sends a stream may keep read ahead: READ_AHEAD,
        or its share of the shared limit when other streams are open (a stream that took
        the whole limit would leave the next download none)."""
        return max(1, min(READ_AHEAD, self.ahead_limit // CHUNK_SIZE // max(1, sum(self._streams))))

    def on_loop(self) -> bool:
        return threading.get_ident() == self.thread

    def shutdown(self) -> None:
        for reader in self.readers:
            reader.shutdown(wait=False, cancel_futures=True)


class ChunkStream(io.RawIOBase):
    """Bytes [start, end) of a blob as a seekable file, holding a few chunks at a time.

    The server's `wsgi.file_wrapper` reads it from its event loop as the socket
    drains, so no worker thread waits for a slow client. On the loop thread the
    chunks come from the StreamLoop's readers, read ahead (see there); on any
    other thread a chunk is read directly, one short read per chunk.

    On the loop `read` answers memoryview slices of the chunk it holds, never
    copies: a socket's send takes them as they are. Memory: the chunk being sent, and up
    to READ_AHEAD + 1 fetched behind it (8 MiB with 256 KiB chunks), all but one of
    them inside the loop's shared read-ahead limit (READ_AHEAD_MB for all streams).
    Measured with READ_AHEAD 1: more than half of the loop's requests for a
    chunk found it still being read, and the download stalled each time; with 3
    (768 KiB, about a millisecond of a loopback download) the loop still sat
    idle a third of the time, waiting for a reader thread to be scheduled, and
    15 made one download 1.5 to 2 times as fast. With 32, batches of 16 handed
    over chunk by chunk, and the reader asking for the next batch itself (the
    loop used to, after taking a batch), one 1 GB download went from 0.56 to
    0.75 of WhiteNoise's MB/s side by side (bench/large_ab.py, five rounds).
    """

    def __init__(self, db: Database | None, blob_id: int, start: int, end: int,
                 loop: StreamLoop | None = None,
                 on_close: Callable[[int], None] | None = None):
        super().__init__()
        self._on_close = on_close
        self._db = db
        self._blob_id = blob_id
        self._start = start
        self._end = end
        self._pos = start
        self._last_chunk = (end - 1) // CHUNK_SIZE if end > start else -1
        self._chunk_no = -1
        self._chunk = memoryview(b"")
        self._loop = loop
        self._reader = loop.reader() if loop is not None else -1
        self._reader_kept = loop is not None  # until closed
        self._lock = threading.Lock()
        self._ready: dict[int, bytes] = {}  # chunks a reader fetched ahead
        self._fetching: range | None = None  # the chunks its reader is still fetching
        self._reserved = 0  # read-ahead bytes this stream holds of its loop's shared limit
        self._asked = start // CHUNK_SIZE  # every chunk before this one was asked for
        self._error: BaseException | None = None
        self.waiting = False  # the loop asked for a chunk that is not here yet
        self._ended = False  # closed (`closed` turns true only after close's last step)
        self._awaited = -1  # which one (while waiting)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos - self._start

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: self._start, io.SEEK_CUR: self._pos, io.SEEK_END: self._end}[whence]
        self._pos = min(max(self._start, base + offset), self._end)
        return self.tell()

    def read(self, size: int = -1) -> bytes | memoryview:
        if self._pos >= self._end:
            return b""
        n, offset = divmod(self._pos, CHUNK_SIZE)
        on_loop = self._loop is not None and self._loop.on_loop()
        if n != self._chunk_no and not self._hold(n, on_loop):
            return b""  # not yet: the connection sleeps until the reader rings
        stop = min(len(self._chunk), offset + (size if size >= 0 else len(self._chunk)),
                   offset + self._end - self._pos)
        data = self._chunk[offset:stop]
        self._pos += len(data)
        return data if on_loop else bytes(data)  # a WSGI iterator must yield bytes

    def views(self, limit: int) -> list[memoryview]:
        """On the loop: up to `limit` bytes from the position on, as views of the chunks
        held (the current one and those read ahead after it), consumed by nothing: the
        caller sends what it can in one `sendmsg` and calls `advance` with that count.
        [] when the next chunk is not here yet (as `read` answers b"").

        Measured: four chunks a send instead of one took a tenth of a
        download's CPU away (fewer system calls, wakeups of the client, turns of
        the loop), and nothing is copied or held beyond the chunks already counted.
        """
        pos = self._pos
        stop = min(self._end, pos + limit)
        if pos >= stop:
            return []
        n, offset = divmod(pos, CHUNK_SIZE)
        if n != self._chunk_no and \
                not self._hold(n, self._loop is not None and self._loop.on_loop()):
            return []  # not yet: the connection sleeps until the reader rings
        out = [self._chunk[offset:min(len(self._chunk), offset + stop - pos)]]
        pos += len(out[0])
        with self._lock:
            while pos < stop:
                n += 1
                data = self._ready.get(n)
                if data is None:
                    break
                out.append(memoryview(data)[:stop - pos])
                pos += len(out[-1])
        return out

    def advance(self, size: int) -> None:
        """On the loop: `size` bytes of the last `views` are sent."""
        self._pos += size

    def _hold(self, n: int, on_loop: bool) -> bool:
        """Make chunk n the current one: on the loop if a reader has it (else False, and it
        is asked for), elsewhere read now."""
        if on_loop:
            return self._take_ready(n)
        self._chunk = memoryview(b"")  # drop the old chunk before loading the next
        self._chunk = memoryview(self._read_chunks(n, n + 1)[0])
        self._chunk_no = n
        return True

    def _read_chunks(self, first: int, stop: int,
                     take: Callable[[int, bytes], bool] | None = None) -> list[bytes]:
        """Chunks first..stop-1 in one short read (handed to `take` one by one, if given)."""
        with self._db.read(STREAM_CACHE_MB) as conn:
            return read_chunks(conn, self._blob_id, first, stop, take)

    def _take_ready(self, n: int) -> bool:
        """On the loop: make chunk n current if a reader has it (and fetch what follows),
        else ask for it."""
        with self._lock:
            if self._error is not None:
                raise self._error  # the server closes the connection: the download ends
            data = self._ready.pop(n, None)
            for old in [k for k in self._ready if k < n]:  # skipped by a seek
                del self._ready[old]
            self._settle()
            if data is None:
                self.waiting, self._awaited = True, n
                if self._fetching is None or n not in self._fetching:
                    self._asked = n  # out of order (a seek): read from here on
                self._fetch_soon(n)
                return False
            self._chunk_no, self._chunk = n, memoryview(data)
            self._fetch_soon(n)  # read ahead while this one is sent
            return True

    def _fetch_soon(self, n: int) -> None:
        """With the lock held: unless its reader is at it already, have it fetch the next
        chunks not yet asked for, a batch of up to READ_BATCH (half the window at most, so
        that one batch is read while the one before is sent) when it fits in the window of
        chunks past chunk n. The chunk the loop waits for is always fetched; more only
        within the shared limit."""
        first = self._asked
        if self._fetching is not None or first > self._last_chunk:
            return
        window = self._loop.window()
        size = min(max(1, min(READ_BATCH, window // 2)), self._last_chunk + 1 - first)
        waited = 1 if first == n else 0  # the loop asked for it: not read ahead
        if not waited and first + size > n + 1 + window:
            return  # enough read ahead: the loop asks again as it takes chunks
        granted = self._loop.reserve(size - waited)
        if not granted and not waited:
            return  # others hold the read-ahead: this stream reads as the loop asks
        self._reserved += granted * CHUNK_SIZE
        self._fetching = range(first, first + waited + granted)
        self._asked = self._fetching.stop
        self._loop.readers[self._reader].submit(self._fetch, self._fetching)

    def _settle(self) -> None:
        """With the lock held: give back the read-ahead no longer held (chunks taken by
        the loop or dropped), keeping what the ready and fetching chunks still use."""
        held = (len(self._ready) + (len(self._fetching) if self._fetching else 0)) * CHUNK_SIZE
        if self._reserved > held:
            self._loop.release(self._reserved - held)
            self._reserved = held

    def _fetch(self, wanted: range) -> None:
        """On a reader thread: one short read whose chunks are handed over one by one as
        they are read, then the next read asked for at once, off the loop."""
        def take(n: int, data: bytes) -> bool:
            with self._lock:
                if self._ended:
                    return False
                self._ready[n] = data
                self._fetching = range(n + 1, wanted.stop)
                # A waiting loop is rung once it can send the chunk it waits for and a few
                # after it at once (or the rest of this read): a ring for every chunk cost
                # it a turn (and the reader a wait for Python's lock) per chunk.
                ring = self.waiting and wanted.start <= self._awaited <= n and (
                    n + 1 - self._awaited >= RING_CHUNKS or n + 1 == wanted.stop)
                if ring:
                    self.waiting = False
            if ring:
                self._loop.wake()
            return True

        try:
            self._read_chunks(wanted.start, wanted.stop, take)
            error = None
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which ends the stream
            error = exc
        with self._lock:
            self._fetching = None
            self._settle()
            if self._ended:
                return
            self._error = error
            if error is None:  # read on while the loop sends
                self._fetch_soon(self._awaited if self.waiting else self._chunk_no)
            ring = self.waiting and (error is not None or self._awaited in self._ready)
            if ring:
                self.waiting = False
        if ring:
            self._loop.wake()

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with self._lock:
            self._ended = True  # under the lock: no reader hands over a chunk after this
            self._chunk = memoryview(b"")
            self._ready.clear()
            if self._loop is not None:
                self._settle()  # a reader still fetching gives back its part when done
            on_close, self._on_close = self._on_close, None  # once, however often closed
            leave, self._reader_kept = self._reader_kept, False
        if leave:
            self._loop.leave(self._reader)
        if on_close is not None:
            on_close(self._blob_id)
        super().close()


class FileStream(ChunkStream):
    """An open file as a ChunkStream: its chunks read with `pread` by the StreamLoop's
    readers, never by the loop, as a blob's are read from SQLite.

    For a file on disk that is not in the page cache (a backup of several GB on a
    small host), each read waits for the disk: made by the loop through a plain
    `wsgi.file_wrapper`, every such wait stalled every connection. The file is closed
    on its reader too, after any read still running (its executor runs jobs in
    order): the descriptor is never closed under a read, and the last close of an
    unlinked file, which frees its blocks, is disk work the loop must not do either.
    """

    def __init__(self, file: io.BufferedIOBase, loop: StreamLoop | None = None):
        self._file = file  # before anything can fail: close() gives it back
        super().__init__(None, -1, 0, os.fstat(file.fileno()).st_size, loop)

    def _read_chunks(self, first: int, stop: int,
                     take: Callable[[int, bytes], bool] | None = None) -> list[bytes]:
        fd = self._file.fileno()
        out = []
        for n in range(first, stop):
            size = min(CHUNK_SIZE, self._end - n * CHUNK_SIZE)
            data = os.pread(fd, size, n * CHUNK_SIZE)
            if len(data) != size:
                raise OSError(f"chunk {n} of a {self._end}-byte file came short")
            if take is None:
                out.append(data)
            elif not take(n, data):
                break
        return out

    def close(self) -> None:
        file, self._file = getattr(self, "_file", None), None
        super().close()
        if file is None:
            return
        if self._loop is None:
            file.close()
            return
        try:
            self._loop.readers[self._reader].submit(file.close)
        except RuntimeError:  # the readers are shut down (the server stops): close here
            file.close()
