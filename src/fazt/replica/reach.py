"""fazt's own look at the replica's store: does its endpoint accept a connection?

Litestream's S3 client tries a store that does not answer ten times with backoff,
so its first error comes over a minute after the store went away (measured with
0.5.17), and with nothing new to send it does not try at all. Meanwhile the
status could only say "behind". A connection attempt every few seconds, the one
`fazt replica set` makes, lets the status say at once that the store cannot be
reached, and that it answers again.
"""

import logging
import threading
import time
from collections.abc import Callable

from fazt.replica import target

CHECK_EVERY_S = 2.0
CHECK_TIMEOUT_S = 3.0
log = logging.getLogger("fazt.litestream")


class StoreWatch:
    """Checks that the store behind `url` answers, every `every` seconds, on its own
    thread. `problem` is what kept it from answering at the last check (None: it
    answered, or the URL names no endpoint to try); `since` is when that began."""

    def __init__(self, url: str, on_change: Callable[[], None] | None = None,
                 every: float = CHECK_EVERY_S):
        self.url = url
        self.on_change = on_change
        self.every = every
        self.problem: str | None = None
        self.since: float | None = None
        self._stopping = threading.Event()

    def start(self) -> "StoreWatch":
        threading.Thread(target=self._run, name="fazt-store-watch", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopping.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self.check()
            self._stopping.wait(self.every)

    def check(self) -> None:
        problem = target.check_reachable(self.url, CHECK_TIMEOUT_S)
        if problem == self.problem or self._stopping.is_set():
            return
        if problem:
            log.warning("The replica's store cannot be reached: %s", problem)
        else:
            log.warning("The replica's store answers again.")
        self.problem, self.since = problem, (time.time() if problem else None)
        if self.on_change is not None:
            self.on_change()

    def as_dict(self) -> dict:
        return {"store_error": self.problem, "store_error_since": self.since}
