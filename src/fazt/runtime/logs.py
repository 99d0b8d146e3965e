"""The per-site console: a bounded ring of recent lines for each site.

The ring in RAM is what the dashboard reads, bounded three ways (lines per
site, characters per line, sites tracked) so that a chatty or hostile script
can never grow it: the worst case is about LINES_PER_SITE × LINE_CHARS ×
MAX_SITES characters (about 6 MB with the defaults), a fixed entry in the
memory ledger. The oldest line goes first; the site seen least recently goes
first.

A running server also writes the lines to the database (`persist_to`), in
one transaction every half second at most, never from the request that logged
them, so `fazt site logs` reads them from another process and they outlive a
restart (`load` fills the rings again at boot). Lines waiting for that write
are bounded too (UNSAVED_LINES): when they come faster than they can be
stored, or the database stays locked, the oldest go, and a line says how many.
"""

import logging
import threading
import time
from collections import OrderedDict, deque

from fazt.errors import FaztError
from fazt.store import Database
from fazt.store.logs import append_lines, read_lines

LINES_PER_SITE = 200
LINE_CHARS = 1000
MAX_SITES = 32
LEVELS = ("log", "info", "warn", "error", "debug")
UNSAVED_LINES = 1000
FLUSH_EVERY = 0.5  # seconds
log = logging.getLogger("fazt")


class SiteLogs:
    """console.log/warn/error lines and script failures, per site."""

    def __init__(self, lines_per_site: int = LINES_PER_SITE, line_chars: int = LINE_CHARS,
                 max_sites: int = MAX_SITES, unsaved_lines: int = UNSAVED_LINES):
        self.lines_per_site = lines_per_site
        self.line_chars = line_chars
        self.max_sites = max_sites
        self._lock = threading.Lock()
        self._rings: OrderedDict[str, deque] = OrderedDict()
        self._unsaved: deque[tuple[str, float, str, str]] = deque(maxlen=unsaved_lines)
        self._writing: list[tuple[str, float, str, str]] = []  # the batch being written
        self._dropped = 0
        self._db: Database | None = None
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    def add(self, site: str, level: str, message: str) -> None:
        """Append one line; an over-long message is cut and says so."""
        if level not in LEVELS:
            level = "log"
        if len(message) > self.line_chars:
            message = message[: self.line_chars - 1] + "…"
        line = {"time": time.time(), "level": level, "message": message}
        with self._lock:
            ring = self._rings.get(site)
            if ring is None:
                ring = self._rings[site] = deque(maxlen=self.lines_per_site)
                while len(self._rings) > self.max_sites:
                    self._rings.popitem(last=False)
            else:
                self._rings.move_to_end(site)
            ring.append(line)
            if self._db is not None:
                if len(self._unsaved) == self._unsaved.maxlen:
                    self._dropped += 1
                self._unsaved.append((site, line["time"], level, message))

    def lines(self, site: str) -> list[dict]:
        """The site's last lines, oldest first: once they are written to a database, the
        ones stored there (what `fazt site logs` reads: a site past the rings' `max_sites`,
        or removed and deployed again by another process, reads the same both ways), then
        those not written yet. The ring in RAM without a database, or while it cannot be
        read."""
        if self._db is not None:
            try:
                with self._db.read() as conn:
                    stored = read_lines(conn, site, last=self.lines_per_site)
            except FaztError:
                stored = None
            if stored is not None:
                with self._lock:
                    waiting = [{"time": t, "level": level, "message": message}
                               for s, t, level, message in (*self._writing, *self._unsaved)
                               if s == site]
                lines = [{k: line[k] for k in ("time", "level", "message")} for line in stored]
                return (lines + waiting)[-self.lines_per_site:]
        with self._lock:
            return [dict(line) for line in self._rings.get(site, ())]

    def forget(self, site: str) -> None:
        """Drop a removed site's lines, so a new site of that name starts clean."""
        with self._lock:
            self._rings.pop(site, None)
            self._keep_unsaved(lambda s: s != site)

    def keep_only(self, sites: set[str]) -> None:
        """Drop the lines of sites that no longer exist (removed by another process)."""
        with self._lock:
            for site in [s for s in self._rings if s not in sites]:
                del self._rings[site]
            self._keep_unsaved(lambda s: s in sites)

    def _keep_unsaved(self, keep) -> None:
        """Drop the unwritten lines of removed sites (with the lock held)."""
        kept = [line for line in self._unsaved if keep(line[0])]
        self._unsaved.clear()
        self._unsaved.extend(kept)

    # -- in the database ----------------------------------------------------------

    def load(self, db: Database, sites: list[str]) -> None:
        """Fill the rings with the last lines the database kept (at boot)."""
        with db.read() as conn:
            for site in sites[-self.max_sites:]:
                lines = read_lines(conn, site, last=self.lines_per_site)
                if lines:
                    ring = deque(({k: line[k] for k in ("time", "level", "message")}
                                  for line in lines), maxlen=self.lines_per_site)
                    with self._lock:
                        self._rings[site] = ring

    def persist_to(self, db: Database) -> None:
        """Write every line from now on to the database, in batches, on a thread of its own."""
        self._db = db
        self._flusher = threading.Thread(target=self._flush_loop, name="fazt-site-logs",
                                         daemon=True)
        self._flusher.start()

    def flush(self) -> int:
        """Write the lines not yet written; they wait for the next try if the database
        is busy. Returns how many were written."""
        with self._lock:
            batch = self._writing = list(self._unsaved)
            self._unsaved.clear()
            dropped, self._dropped = self._dropped, 0
        if not batch:
            return 0
        note = [(batch[0][0], time.time(), "warn",
                 f"fazt: {dropped} log lines were lost before they could be stored")
                ] if dropped else []
        try:
            with self._db.write() as conn:
                append_lines(conn, note + batch)
        except FaztError:
            with self._lock:  # back in front of newer lines, within the bound
                self._writing = []
                room = self._unsaved.maxlen - len(self._unsaved)
                self._dropped += dropped + max(0, len(batch) - max(room, 0))
                if room > 0:
                    self._unsaved.extendleft(reversed(batch[-room:]))
            return 0
        with self._lock:
            self._writing = []
        return len(batch)

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH_EVERY):
            try:
                self.flush()
            except Exception:  # a background duty must never die
                log.exception("could not write site log lines")

    def stop(self) -> None:
        """Write what is left and stop the writer (the server is stopping)."""
        if self._flusher is not None:
            self._stop.set()
            self._flusher.join(timeout=5)
            self._flusher = None
            self.flush()
