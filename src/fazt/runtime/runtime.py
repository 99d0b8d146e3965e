"""The runtime: site back ends behind the slot semaphore, with counters and logs.

One object for the life of the server; `resize` is its soft restart. Each
`handle` takes a snapshot of the limits, so a recalibration never changes a
script that is already running, and the slot check is the only thing a
request can wait on: it never waits at all.
"""

import os
import threading

from fazt.errors import FaztError
from fazt.runtime import engine
from fazt.runtime.bridge import Bridge
from fazt.runtime.engine import JsResponse, Limits
from fazt.runtime.kv import KvStore
from fazt.runtime.logs import SiteLogs
from fazt.runtime.slots import Slots
from fazt.store.database import Database

MB = 1024 * 1024


class JsBusy(FaztError):
    """Every JS slot is taken: come back in a second."""

    status = 429
    code = "js_busy"
    retry_after = 1


def cpu_factor(slots: int, cpus: int) -> int:
    """How many threads can burn CPU at once: the slots plus Python, at most the CPUs.

    QuickJS times a script by the CPU time of the whole process, so its budget
    is the timeout times this factor; see engine.py for the guarantee it gives.
    """
    return max(1, min(cpus, slots + 1))


def usable_cpus() -> int:
    """CPUs this process may run on (a cgroup quota can only be lower, never higher)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Runtime:
    """Runs `api/main.js` handlers; see SPEC "JavaScript back ends"."""

    def __init__(self, db: Database, *, slots: int, memory_mb: float, timeout_ms: int,
                 cpus: int | None = None):
        engine.self_test()
        self.kv = KvStore(db)
        self.logs_ring = SiteLogs()
        self._slots = Slots(slots)
        self._cpus = cpus or usable_cpus()
        self._lock = threading.Lock()
        self._counts = {"timeouts": 0, "errors": 0, "runs": 0}
        self._limits = self._make_limits(slots, memory_mb, timeout_ms)

    def _make_limits(self, slots: int, memory_mb: float, timeout_ms: int) -> Limits:
        factor = cpu_factor(slots, self._cpus)
        return Limits(memory_bytes=int(memory_mb * MB), timeout_ms=int(timeout_ms),
                      cpu_seconds=timeout_ms / 1000 * factor)

    def handle(self, site: str, script_sha: str, source: str, request: dict) -> JsResponse:
        """Run the site's handler for one request, or refuse at once with JsBusy (429).

        `script_sha` names the version being run; each request compiles the
        source afresh (see engine.py), so it is not needed for caching.
        """
        if not self._slots.try_acquire():
            raise JsBusy("Every JavaScript slot is busy; try again in a second.")
        try:
            answer = engine.run(source, request, self._limits, Bridge(site, self.kv,
                                                                         self.logs_ring))
        finally:
            self._slots.release()
        with self._lock:
            self._counts["runs"] += 1
            if answer.error == "js_timeout":
                self._counts["timeouts"] += 1
            elif answer.error:
                self._counts["errors"] += 1
        return answer

    def resize(self, *, slots: int, memory_mb: float, timeout_ms: int) -> None:
        """Soft restart: new limits for the next invocations; running ones keep theirs."""
        self._limits = self._make_limits(slots, memory_mb, timeout_ms)
        self._slots.resize(slots)

    def stats(self) -> dict:
        """For the status API: slots, in_use, rejected, timeouts, errors, runs."""
        with self._lock:
            counts = dict(self._counts)
        return {**self._slots.stats(), **counts, "cpu_budget_s": self._limits.cpu_seconds}

    def logs(self, site: str) -> list[dict]:
        """The site's recent console lines and failures, oldest first."""
        return self.logs_ring.lines(site)
