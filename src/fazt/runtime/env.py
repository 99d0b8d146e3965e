"""Each site's secrets (`fazt.env`) in RAM, and their removal from what the owner's log shows.

Values are read from the database at a site's first request after a change
(the server forgets them all on a change it makes, and within seconds of one
made by another process), so a request never waits on the database for them.
"""

import json
import threading

from fazt.store import Database
from fazt.store.env import load_vars

REDACT_MIN = 4  # shorter values ("1", "on") would blank out ordinary text
REDACTED = "[secret]"


class SiteEnv:
    def __init__(self, db: Database):
        self.db = db
        self._lock = threading.Lock()
        self._values: dict[str, dict[str, str]] = {}
        self._generation = 0

    def get(self, site: str) -> dict[str, str]:
        with self._lock:
            values = self._values.get(site)
            generation = self._generation
        if values is None:
            with self.db.read() as conn:
                values = load_vars(conn, site)
            with self._lock:
                if generation == self._generation:  # no change since we read
                    self._values[site] = values
        return values

    def peek(self, site: str) -> dict[str, str] | None:
        """The site's secrets from RAM alone (the event loop never waits on the database):
        None until a request on a thread has read them."""
        with self._lock:
            return self._values.get(site)

    def forget(self) -> None:
        """A secret changed somewhere: read them again when next needed."""
        with self._lock:
            self._values.clear()
            self._generation += 1

    def redact(self, site: str, text: str) -> str:
        """`text` with every secret value of the site replaced, longest first."""
        return redact(self.get(site), text)


def redact(values: dict[str, str], text: str) -> str:
    """`text` with each of the secret `values` replaced, longest first, as they are and as
    JSON writes them inside a string (a handler may log `JSON.stringify` of a secret that
    holds a quote, a backslash, a newline or a character outside ASCII)."""
    kept = {form for v in values.values() if len(v) >= REDACT_MIN for form in _forms(v)}
    for value in sorted(kept, key=len, reverse=True):
        text = text.replace(value, REDACTED)
    return text


def _forms(value: str) -> set[str]:
    return {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}
