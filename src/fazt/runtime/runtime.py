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

Quick handlers on the event loop (`handle_on_loop`). Most handlers answer in
tens of microseconds, and handing such a request to a thread and its answer
back cost several times that (issue 16: a trivial handler answered at a
quarter of a static file's rate). So the loop runs a site's handler itself,
as Cloudflare Workers run isolates on their event loop, while it stays quick
and harmless there:
- it runs under a budget of LOOP_CPU_SECONDS of the process's CPU (up to
  CPUs × LOOP_CLOCK_WINDOW more: its clock starts at most that often), not the
  site's timeout; past it the script is interrupted;
- fazt.kv (the database) is not called on the loop: see `LoopBridge`;
- the run takes a slot like any other, so the 429 semaphore stays exact.
A run that hit the budget, touched fazt.kv, ran out of memory, or made the
context unusable left nothing visible (its console lines wait until it ends,
its context is dropped), so the request starts over on a thread with the
site's real limits, and the site's handler stays off the loop for
OFF_LOOP_SECONDS. So does a handler whose runs average more than
QUICK_SECONDS of the loop's time, or that answered more than LOOP_ANSWER_BYTES
(its answer still goes out from the loop that once: copying large answers
between QuickJS, Python and the socket is work for a thread). The loop keeps
one warm context, as every site thread does (the ledger counts it), and loads
one at most every
LOOP_LOAD_SECONDS (0.3-1 ms each; a script over LOOP_SCRIPT_BYTES, whose
compilation alone would hold the loop, never), so sites taking turns go to
threads rather than reloading on the loop. Only what is in RAM is used: a script or
secrets not yet read by a thread send the request to one.
"""

import os
import threading
import time
from collections.abc import Callable

from fazt.constants import MB
from fazt.errors import Busy
from fazt.runtime import engine
from fazt.runtime.bridge import Bridge, LoopBridge, take_refusal
from fazt.runtime.engine import Limits, Loaded
from fazt.runtime.env import SiteEnv
from fazt.runtime.kv import KvStore
from fazt.runtime.logs import SiteLogs
from fazt.runtime.memory import release_free_memory
from fazt.runtime.response import JsResponse
from fazt.runtime.slots import Slots
from fazt.store.database import Database

WARM_RUNS = 1000  # requests one context serves before a fresh one takes over
LOOP_CPU_SECONDS = 0.002  # the process's CPU a run on the event loop may use at least
# The loop's context starts its CPU clock at most this often (engine.py, "Starting the clock
# less often"): a run there may then use up to LOOP_CPU_SECONDS + CPUs × this.
LOOP_CLOCK_WINDOW = 0.0005
QUICK_SECONDS = 0.00025  # a handler whose runs on the loop average more goes to threads
OFF_LOOP_SECONDS = 60.0  # how long a handler that could not stay on the loop runs on threads
LOOP_LOAD_SECONDS = 0.05  # the loop loads a context at most this often
LOOP_SCRIPT_BYTES = 64 * 1024  # a larger script compiles too long for the loop: threads
LOOP_ANSWER_BYTES = 64 * 1024  # a handler that answered more runs on threads (copies cost)
# The average of the loop's runs moves by a sixteenth of each measured run, counted at
# most 4 x QUICK_SECONDS: a collection of Python's garbage or a preemption in one run does
# not send a quick handler to threads, a handler slow every time goes within ~20 samples.
_QUICK_WEIGHT = 1 / 16
_QUICK_CAP = 4
# A run on the loop is timed every LOOP_SAMPLE_EVERY runs, and its context's heap measured
# every LOOP_MEMORY_EVERY (QuickJS's count of its heap, a dict of 30 numbers, costs about
# 6 µs: a fair share of a quick run); the server's sweep measures the loop's context once a
# second as well. Timed by the wall clock: the loop runs nothing else meanwhile, and a CPU
# clock is a system call whose cost showed in every request's time (a trivial handler
# answered 4% more requests a second without it, measured side by side, issue 16).
LOOP_SAMPLE_EVERY = 8
LOOP_MEMORY_EVERY = 32
_MOVED = "moved"  # a run on the loop that must start over on a thread

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
        self._loop_limits = self._make_loop_limits()
        self._loop_loaded_at = 0.0
        self._loop_runs = 0
        # (site, script sha) -> [average CPU a run on the loop, off the loop until]
        self._on_loop: dict[tuple[str, str], list[float]] = {}

    def _make_limits(self, slots: int, memory_mb: float, timeout_ms: int) -> Limits:
        factor = cpu_factor(slots, self._cpus)
        return Limits(memory_bytes=int(memory_mb * MB), timeout_ms=int(timeout_ms),
                      cpu_seconds=timeout_ms / 1000 * factor)

    def _make_loop_limits(self) -> Limits:
        return Limits(memory_bytes=self._limits.memory_bytes, timeout_ms=self._limits.timeout_ms,
                      cpu_seconds=LOOP_CPU_SECONDS + self._cpus * LOOP_CLOCK_WINDOW,
                      clock_window=LOOP_CLOCK_WINDOW)

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
            self.env.get(site)  # in RAM from now on, for the loop (handle_on_loop)
            answer, warm = self._run(site, script_sha, source, request, self._limits)
        finally:
            self._slots.release(site)
        self._count(answer, warm)
        refused = take_refusal()
        if refused is not None:  # a follower: the script tried to write
            raise refused
        return answer

    def handle_on_loop(self, site: str, script_sha: str, source: Callable[[], str | None],
                       request: dict, raw: bool = False) -> JsResponse | str | None:
        """On the event loop's thread: run a quick handler right there (see the module's
        docstring), or None when a thread must run the request (nothing it did shows).

        `source` reads the script from RAM alone (None when it is not there). JsBusy
        (429) as `handle`: a run on the loop takes a slot like any other. `raw`: a usual
        answer comes back as text, for `read_answer` (engine.invoke)."""
        if not self._warm_bytes:
            return None  # no warm contexts: each run would load one on the loop
        key = (site, script_sha)
        seen = self._on_loop.get(key)
        if seen is not None and seen[1] > time.monotonic():
            return None
        values = self.env.peek(site)
        if values is None:
            return None  # a thread reads the secrets from the database first
        if not self._slots.try_acquire(site):
            raise JsBusy(self._slots.why_refused(site))
        self._loop_runs += 1
        timed = self._loop_runs % LOOP_SAMPLE_EVERY == 0
        began = time.perf_counter() if timed else 0.0
        try:
            answer, warm = self._run(site, script_sha, source, request, self._loop_limits,
                                     values, raw)
        finally:
            self._slots.release(site)
        if answer is None:
            return None  # no context to run it in here (and none loaded just now)
        if seen is None:
            if len(self._on_loop) >= 4096:  # sites come and go: forget what is old
                self._on_loop.clear()
            seen = self._on_loop[key] = [0.0, 0.0]
        if timed and warm:  # (a run that loaded its context also paid for the load, once)
            spent = min(time.perf_counter() - began, _QUICK_CAP * QUICK_SECONDS)
            seen[0] += (spent - seen[0]) * _QUICK_WEIGHT
        moved = answer is _MOVED
        if moved or seen[0] > QUICK_SECONDS or (
                len(answer) if type(answer) is str else len(answer.body)) > LOOP_ANSWER_BYTES:
            seen[0], seen[1] = 0.0, time.monotonic() + OFF_LOOP_SECONDS
        if moved:
            return None
        self._count(answer, warm)
        return answer

    def read_answer(self, site: str, text: str) -> JsResponse:
        """A raw answer of `handle_on_loop` read and checked (engine.read)."""
        return engine.read(text, Bridge(site, self.kv, self.logs_ring, self.env))

    def _count(self, answer: JsResponse | str, warm: bool) -> None:
        error = None if type(answer) is str else answer.error
        with self._lock:
            self._counts["runs"] += 1
            self._counts["warm_runs"] += warm
            if error == "js_timeout":
                self._counts["timeouts"] += 1
            elif error:
                self._counts["errors"] += 1

    def _run(self, site: str, script_sha: str, source: str | Callable[[], str | None],
             request: dict, limits: Limits, loop_values: dict[str, str] | None = None,
             raw: bool = False) -> tuple[JsResponse | str | None, bool]:
        """(the answer, whether a warm context gave it), on this thread's context.

        With `loop_values` (the site's secrets), on the event loop: the answer may then
        also be None (no context here, and none may be loaded now) or _MOVED (the run must
        start over on a thread; its context is gone)."""
        on_loop = loop_values is not None
        key = (site, script_sha, limits.memory_bytes, self._generation, on_loop)
        here = self._warm
        loaded: Loaded | None = getattr(here, "loaded", None)
        given = isinstance(source, str)  # else the sha alone vouches for the text
        if loaded is None or here.key != key or (given and here.source != source):
            text = self._source_to_load(source, on_loop)
            if text is None:
                return None, False  # on the loop: the warm context stays for its site
            here.loaded = loaded = None  # another site or version: freed before a new one
            return self._run_fresh(site, text, request, limits, key, loop_values, raw)
        here.loaded = None  # taken: whatever happens below, nothing stale stays behind
        if on_loop:
            loaded.bridge.begin(loop_values)
        answer = engine.invoke(loaded, request, limits, raw)
        if answer is None:  # the script broke the clock's restart: start afresh
            del loaded
            if on_loop:
                return _MOVED, False
            text = source if given else source()
            return self._run_fresh(site, text, request, limits, key, loop_values)
        return self._after(loaded, answer, key, source, loop_values), True

    def _source_to_load(self, source: str | Callable[[], str | None], on_loop: bool
                        ) -> str | None:
        """The script's text for a new context; on the loop, None when it is not in RAM or
        the loop loaded a context too recently."""
        if not on_loop:
            return source if isinstance(source, str) else source()
        now = time.monotonic()
        if now - self._loop_loaded_at < LOOP_LOAD_SECONDS:
            return None
        text = source()
        if text is not None:
            self._loop_loaded_at = now
        return text

    def _run_fresh(self, site: str, source: str, request: dict, limits: Limits, key: tuple,
                   loop_values: dict[str, str] | None, raw: bool = False
                   ) -> tuple[JsResponse | str, bool]:
        """Load the script in a new context and run the request in it."""
        if loop_values is None:
            bridge = Bridge(site, self.kv, self.logs_ring, self.env)
        else:
            bridge = LoopBridge(site, self.kv, self.logs_ring, self.env)
            bridge.begin(loop_values)
        made = engine.load(source, limits, bridge)
        if isinstance(made, JsResponse):
            if loop_values is not None:
                return _MOVED, False  # a thread loads it with the site's own limits
            return made, False
        answer = engine.invoke(made, request, limits, raw)  # a first run restarts no clock
        return self._after(made, answer, key, source, loop_values), False

    def _after(self, loaded: Loaded, answer: JsResponse | str, key: tuple,
               source: str | Callable[[], str | None], loop_values: dict[str, str] | None
               ) -> JsResponse | str:
        """Keep the context warm for the next request of its site, or drop it (a raw
        answer, a str, is a usual one: no error)."""
        bridge = loaded.bridge
        error = None if type(answer) is str else answer.error
        if loop_values is not None and (bridge.moved or error in ("js_timeout",
                                                                  "js_memory_limit")):
            # Past the loop's budget, into the database, or out of memory (a thread trims
            # the heap after that; see memory.py): the context goes, a thread starts over.
            return _MOVED
        here = self._warm
        measured = loop_values is None or loaded.runs % LOOP_MEMORY_EVERY == 1
        if (error is None and loaded.runs < WARM_RUNS
                and (not measured or loaded.memory_bytes() <= self._warm_bytes)):
            if isinstance(source, str):  # (reused warm with a reader: it keeps its text)
                here.source = source
            here.key, here.loaded = key, loaded
        else:
            del loaded
            if error == "js_memory_limit":
                release_free_memory()  # the context is gone by now; see memory.py
        if loop_values is not None:
            bridge.end()
        return answer

    def check_loop_context(self) -> None:
        """On the event loop's thread, once a second: drop its warm context if its heap
        grew past `js_warm_mb` (its runs measure it only now and then)."""
        loaded = getattr(self._warm, "loaded", None)
        if loaded is not None and loaded.memory_bytes() > self._warm_bytes:
            self._warm.loaded = None

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
        self._loop_limits = self._make_loop_limits()
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
