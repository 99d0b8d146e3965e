"""The runtime: site back ends behind the slot semaphore, with counters and logs.

One object for the life of the server; `resize` is its soft restart. Each
`handle` takes a snapshot of the limits, so a recalibration never changes a
script that is already running, and the slot check is the only thing a
request can wait on: it never waits at all.

Warm contexts. Loading a context (a QuickJS runtime, the prelude, the site's
script) costs 0.3-1 ms; calling a loaded handler again costs about 0.03 ms
(bench/js_bench.py). So each worker thread keeps the last context it ran, as
Cloudflare Workers keep an isolate, and runs the next request of the *same*
site and script version in it: globals may persist between one site's
requests, never across sites. A context stays on the thread that made it (the
binding's contexts cannot move between threads: QuickJS checks its stack
against the thread it was created on), so there is no pool to hand out, only
one context a thread. It is dropped, on its own thread, before any other
context is made there, and is not kept after:
- any failure (a thrown error, a time, memory or stack limit, a bad answer):
  the next request starts clean;
- WARM_RUNS requests, or a heap above `js_warm_mb` at the end of a request
  (so an idle context costs at most that; the ledger counts one a site
  thread, and 0 turns warm contexts off);
- a deploy or a removal of any site, and a change of `js_memory_mb` (the
  context's key changes, or `forget` bumps the generation).
The memory limit of each context is still `js_memory_mb`, and the slots still
bound how many run at once.
"""

import os
import threading
from collections.abc import Callable

from fazt.constants import MB
from fazt.errors import Busy
from fazt.runtime import engine
from fazt.runtime.bridge import Bridge, take_refusal
from fazt.runtime.engine import Limits, Loaded
from fazt.runtime.env import SiteEnv
from fazt.runtime.kv import KvStore
from fazt.runtime.logs import SiteLogs
from fazt.runtime.memory import release_free_memory
from fazt.runtime.response import JsResponse
from fazt.runtime.slots import Slots
from fazt.store.database import Database

WARM_RUNS = 1000  # requests one context serves before a fresh one takes over

class JsBusy(Busy):
    """Every JS slot is taken: come back in a second."""

    code = "js_busy"


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
                 warm_mb: float = 1, cpus: int | None = None):
        engine.self_test()
        self.kv = KvStore(db)
        self.env = SiteEnv(db)
        self.logs_ring = SiteLogs()
        self._slots = Slots(slots)
        self._cpus = cpus or usable_cpus()
        self._lock = threading.Lock()
        self._counts = {"timeouts": 0, "errors": 0, "runs": 0, "warm_runs": 0}
        self._limits = self._make_limits(slots, memory_mb, timeout_ms)
        self._warm = threading.local()  # .key, .source, .loaded: this thread's context
        self._warm_bytes = int(warm_mb * MB)
        self._generation = 0

    def _make_limits(self, slots: int, memory_mb: float, timeout_ms: int) -> Limits:
        factor = cpu_factor(slots, self._cpus)
        return Limits(memory_bytes=int(memory_mb * MB), timeout_ms=int(timeout_ms),
                      cpu_seconds=timeout_ms / 1000 * factor)

    def handle(self, site: str, script_sha: str, source: str | Callable[[], str],
               request: dict) -> JsResponse:
        """Run the site's handler for one request, or refuse at once with JsBusy (429).

        `script_sha` names the version being run: a warm context of another
        version is never used (see the module's docstring). `source` may be a
        function that reads the script: it is called only when a context must be
        loaded, so a warm request neither decodes nor compares a large script.
        """
        if not self._slots.try_acquire(site):
            raise JsBusy(self._slots.why_refused(site))
        take_refusal()
        try:
            answer, warm = self._run(site, script_sha, source, request)
        finally:
            self._slots.release(site)
        with self._lock:
            self._counts["runs"] += 1
            self._counts["warm_runs"] += warm
            if answer.error == "js_timeout":
                self._counts["timeouts"] += 1
            elif answer.error:
                self._counts["errors"] += 1
        refused = take_refusal()
        if refused is not None:  # a follower: the script tried to write
            raise refused
        return answer

    def _run(self, site: str, script_sha: str, source: str | Callable[[], str], request: dict
             ) -> tuple[JsResponse, bool]:
        """(the answer, whether a warm context gave it), on this thread's context."""
        limits = self._limits
        key = (site, script_sha, limits.memory_bytes, self._generation)
        here = self._warm
        loaded: Loaded | None = getattr(here, "loaded", None)
        here.loaded = None  # taken: whatever happens below, nothing stale stays behind
        given = isinstance(source, str)  # else the sha alone vouches for the text
        if loaded is not None and (here.key != key or (given and here.source != source)):
            del loaded  # another site or version: freed before a new context is made
            loaded = None
        answer = None
        warm = loaded is not None
        if loaded is not None:
            answer = engine.invoke(loaded, request, limits)
            if answer is None:  # the script broke the clock's restart: start afresh
                loaded = None
                warm = False
        if answer is None:
            source = source if given else source()
            made = engine.load(source, limits, Bridge(site, self.kv, self.logs_ring,
                                                      self.env))
            if isinstance(made, JsResponse):
                answer, loaded = made, None
            else:
                loaded = made
                answer = engine.invoke(loaded, request, limits)
        if (loaded is not None and answer.error is None and loaded.runs < WARM_RUNS
                and loaded.memory_bytes() <= self._warm_bytes):
            if isinstance(source, str):  # (reused warm with a reader: it keeps its text)
                here.source = source
            here.key, here.loaded = key, loaded
        else:
            del loaded
            if answer.error == "js_memory_limit":
                release_free_memory()  # the context is gone by now; see memory.py
        return answer, warm

    def forget(self) -> None:
        """A site was deployed or removed: no thread runs its old context again."""
        self._generation += 1

    def set_backends(self, count: int) -> None:
        """How many sites have a back end: the slots' fair shares depend on it."""
        self._slots.set_backends(count)

    def resize(self, *, slots: int, memory_mb: float, timeout_ms: int,
               warm_mb: float = 1) -> None:
        """Soft restart: new limits for the next invocations; running ones keep theirs."""
        self._limits = self._make_limits(slots, memory_mb, timeout_ms)
        self._warm_bytes = int(warm_mb * MB)
        self._slots.resize(slots)

    def stats(self) -> dict:
        """For the status API: slots, in_use, rejected, timeouts, errors, runs."""
        with self._lock:
            counts = dict(self._counts)
        return {**self._slots.stats(), **counts, "cpu_budget_s": self._limits.cpu_seconds}

    def logs(self, site: str) -> list[dict]:
        """The site's recent console lines and failures, oldest first."""
        return self.logs_ring.lines(site)
