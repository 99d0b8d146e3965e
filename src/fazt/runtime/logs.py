"""The per-site console: a bounded ring of recent lines for each site.

Kept in RAM only, and bounded three ways (lines per site, characters per line,
sites tracked) so that a chatty or hostile script can never grow it: the worst
case is about LINES_PER_SITE × LINE_CHARS × MAX_SITES characters (about 6 MB
with the defaults), a fixed entry in the memory ledger. The oldest line goes
first; the site seen least recently goes first.
"""

import threading
import time
from collections import OrderedDict, deque

LINES_PER_SITE = 200
LINE_CHARS = 1000
MAX_SITES = 32
LEVELS = ("log", "info", "warn", "error", "debug")


class SiteLogs:
    """console.log/warn/error lines and script failures, per site."""

    def __init__(self, lines_per_site: int = LINES_PER_SITE, line_chars: int = LINE_CHARS,
                 max_sites: int = MAX_SITES):
        self.lines_per_site = lines_per_site
        self.line_chars = line_chars
        self.max_sites = max_sites
        self._lock = threading.Lock()
        self._rings: OrderedDict[str, deque] = OrderedDict()

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

    def lines(self, site: str) -> list[dict]:
        """A copy of the site's lines, oldest first."""
        with self._lock:
            return [dict(line) for line in self._rings.get(site, ())]

    def forget(self, site: str) -> None:
        """Drop a removed site's lines, so a new site of that name starts clean."""
        with self._lock:
            self._rings.pop(site, None)

    def keep_only(self, sites: set[str]) -> None:
        """Drop the lines of sites that no longer exist (removed by another process)."""
        with self._lock:
            for site in [s for s in self._rings if s not in sites]:
                del self._rings[site]
