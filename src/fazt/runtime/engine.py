"""Running a handler in a QuickJS context, under hard limits.

Every context is a whole QuickJS runtime of its own: it shares nothing with
another, and its memory limit covers everything its script allocates. QuickJS
has no way to reset a context (a script can change any global, any builtin
prototype, any closure kept by the prelude), so a context is only ever reused
for the same site and script version, never across sites; runtime.py decides
when (`load` makes one, `invoke` runs the handler in it, again and again). A
context is created, used and freed on one thread (each thread keeps its own
warm context: runtime.py). Older bindings required that (QuickJS checked its
stack depth against the thread that made it: used from another, every call
overflowed); quickjs-ng 0.17 does not (a context made on one thread recursed
to half its depth limit from another), so contexts shared by a site's threads
are possible, though not built. Measured here
(`bench/js_bench.py`, 2 vCPUs): a fresh context with the prelude and a small
script costs 0.3-1.1 ms, calling the handler again in a loaded one about
0.03 ms, the CPU clock's restart and the heap's size included.

Time limit ("the CPU clock"). The binding exposes only `set_time_limit`,
whose interrupt handler compares `clock()` (the CPU time of the whole
process) against a budget, and it refuses every call into Python (fazt.kv,
console) while a time limit is set. Two facts of the binding let us keep
both: the interrupt handler and its start time live in the context and stay
installed if the limit is switched off while JavaScript runs, and a Python
callable's last reference is dropped, with the GIL held, when its JS
function is freed. `start_cpu_clock` sets the limit, runs one tiny eval that
frees a callable whose finalizer switches the limit off, and from then on
the interrupt handler keeps counting from that start while calls into Python
are allowed. `Runtime` runs a self-test at start-up so a binding that
behaves otherwise fails loudly instead of running scripts unbounded.

Starting the clock less often. Starting it reads the process's CPU time (`clock()`, a
system call that sums every thread's time), and on the event loop that read cost more
than itself: with one client at a time, a trivial handler answered 3% more requests a
second when the loop's context started its clock once in five requests instead of at
each (measured here side by side, issue 16). So a context with `Limits.clock_window`
starts its clock at most once in that much wall time; the requests in between run under
the same interrupt handler, counting from the same start. The process burns at most
`cpus × window` of CPU in a window, so a budget of `own + cpus × window` leaves every
request at least `own` of it, and at most the whole (runtime.py's loop limits).

What the budget means. Because `clock()` counts every thread, the budget is
`timeout × factor`, where factor is the number of threads that can burn CPU
at once (the JS slots plus one for Python, capped by the CPUs the process
may use; see `cpu_factor`). The guarantee: a script is never stopped before
`timeout` of wall-clock time while the process burns no more than `factor`
CPUs, and it is always stopped once the whole process has burned
`timeout × factor` CPU-seconds since it started, which for a script spinning
alone is `factor × timeout` of wall time at most (exactly `timeout` on one
CPU). Measured on 2 vCPUs with timeout 400 ms, factor 2: `while(true){}`
alone ends after ~0.8 s; with two other spinning scripts and a spinning
Python thread, after ~0.41 s; a script that works for 200 ms of wall time
beside two spinners is never stopped. CPU taken by *other processes* only
stretches these times (1.2–1.3 s measured on a loaded machine), never
shortens them.

The engine is `quickjs-ng` (same `import quickjs`). The archived `quickjs`
1.19.4 corrupts its heap when `String.prototype.repeat` or `padEnd` hits the
memory limit, and the process segfaults within a few such runs (reproduced
without fazt, and with fazt: the 4th bomb; tests/test_runtime.py runs 30 in a child
process).
quickjs-ng survives them; its loops are slower (DESIGN.md measured ~3×),
a price stability is worth.
"""

import json
import re
import time
import weakref
from dataclasses import dataclass
from typing import Any

import quickjs

from fazt.constants import MB, SCRIPT
from fazt.runtime.bridge import Bridge
from fazt.runtime.memory import release_free_memory
from fazt.runtime.prelude import PENDING, PRELUDE
from fazt.runtime.response import JsResponse, checked_before, error_response, read_answer

STACK_BYTES = 512 * 1024  # deep recursion becomes a clean error; thread stacks are 8 MB
CHECK_MEMORY_BYTES = 64 * MB  # for compiling a script at deploy
CHECK_SECONDS = 2.0
FORGET_CHARS = 64 * 1024  # a larger answer's body is dropped from its context at once
# The request's JSON, with an encoder made once: json.dumps makes one per call, which was
# half of the 2.3 µs it took (the text differs only in leaving out the separators' spaces).
_ENCODER = json.encoder.c_make_encoder and json.encoder.c_make_encoder(
    None, json.JSONEncoder().default, json.encoder.encode_basestring_ascii, None, ":", ",",
    False, False, True)
_LINE = re.compile(r"at <input>:(\d+)")
_PRELUDE_FRAME = re.compile(r"\n\s+at __fazt_\w+ \([^)\n]*\)")  # prelude.py names them so
# A frame's name may hold a space: a getter's is `get body`.
_FRAME = re.compile(r"^\s+at (.+?) \((?:<input>|api/main\.js):(\d+)", re.M)


@dataclass(frozen=True)
class Limits:
    """What one invocation may use; a snapshot, so a resize never changes a running one."""

    memory_bytes: int
    timeout_ms: int
    cpu_seconds: float  # the CPU-time budget: timeout × cpu_factor
    # Wall time one start of the CPU clock serves a warm context (0: every request starts
    # it; see "Starting the clock less often" above). `cpu_seconds` must then hold the
    # CPU the process may burn in that time on top of a request's own budget.
    clock_window: float = 0.0


@dataclass(eq=False)
class Loaded:
    """A site's script evaluated in its own context, kept on the thread that made it."""

    ctx: quickjs.Context
    step: Any  # the prelude's step function (a quickjs.Object)
    bridge: Bridge
    runs: int = 0
    clock_at: float = 0.0  # time.monotonic() when its CPU clock was last started

    def memory_bytes(self) -> int:
        """What the context's heap holds now (QuickJS's own count, about 10 µs)."""
        return int(self.ctx.memory()["malloc_size"])


def run(source: str, request: dict, limits: Limits, bridge: Bridge) -> JsResponse:
    """Run `handler(request)` of `source` in a fresh context that is freed at once;
    every failure of the script becomes a JsResponse."""
    loaded = load(source, limits, bridge)
    answer = loaded if isinstance(loaded, JsResponse) else invoke(loaded, request, limits)
    del loaded  # the context goes here, on this thread
    if answer is not None and answer.error == "js_memory_limit":
        release_free_memory()  # see memory.py
    return answer


def load(source: str, limits: Limits, bridge: Bridge) -> "Loaded | JsResponse":
    """A new context with the prelude and `source` evaluated, or the failure as a response."""
    ctx = quickjs.Context()
    try:
        ctx.set_memory_limit(limits.memory_bytes)
        ctx.set_max_stack_size(STACK_BYTES)
        # The clock's window runs from its start, not from the end of the load: a request
        # soon after the first does not inherit what the top-level code burned.
        started = time.monotonic()
        start_cpu_clock(ctx, limits.cpu_seconds)  # top-level code counts against request one
        ctx.add_callable("__fazt_bridge", bridge)
        step = ctx.eval(PRELUDE)
        try:
            ctx.eval(source)
        except quickjs.JSException as exc:
            if _first_line(exc).startswith("SyntaxError"):
                problem = syntax_error(source)
                if problem:
                    return _syntax_failure(problem, bridge)
            raise
        return Loaded(ctx, step, bridge, clock_at=started)
    except quickjs.JSException as exc:
        return _failure(exc, limits, bridge)


def invoke(loaded: Loaded, request: dict, limits: Limits, raw: bool = False
           ) -> JsResponse | str | None:
    """Run the handler once more in a loaded context; None when the context cannot be
    used again (the script got in the way of the CPU clock): load a fresh one.

    `raw`: a usual answer (the body's length, its description, a newline, the body) whose
    description was found good before comes back as the prelude wrote it, for `read`
    later: the event loop renders the answers it has seen before without reading them
    again (fazt.server.jspath)."""
    ctx, step, bridge = loaded.ctx, loaded.step, loaded.bridge
    clock = None
    if loaded.runs and _clock_due(loaded, limits):  # a warm context: its clock starts again
        try:  # (step drops the callable that switches it off before it runs the handler)
            clock = arm_cpu_clock(ctx, limits.cpu_seconds)
        except (quickjs.JSException, TypeError):  # the script made __fazt_clock read-only
            return None
    loaded.runs += 1
    try:
        answer = _call(step, encode_request(request))
        if _clock_kept(clock):
            return None
        # The jobs the handler queued run now, in its request and under its clock, as an
        # event loop runs them once the handler returns, even when it answered at once: a
        # `.then(() => fazt.kv.set(...))` left for later was lost with its context, or ran
        # in another request's time.
        timeout = _run_jobs(ctx, limits, bridge)
        if timeout is not None:
            return timeout
        if answer == PENDING:
            answer = _call(step)
        if answer is _UNREADABLE or _cut_short(answer):
            return read_answer(step(True), bridge, escaped=True)  # the body as JSON text
        if len(answer) > FORGET_CHARS:
            step(False)  # not kept in the context until its next request
        if raw and type(answer) is str and answer[:1] != "{" and checked_before(answer):
            return answer  # ("{": a problem)
        return read_answer(answer, bridge)
    except quickjs.JSException as exc:
        if _clock_kept(clock):
            return None
        return _failure(exc, limits, bridge)
    except Exception as exc:  # e.g. a string QuickJS hands back that is not valid UTF-8
        return _unreadable(bridge, exc)


def read(answer: str, bridge: Bridge) -> JsResponse:
    """A raw answer of `invoke` read and checked, as `invoke` reads the others."""
    try:
        return read_answer(answer, bridge)
    except Exception as exc:  # noqa: BLE001 - as invoke's
        return _unreadable(bridge, exc)


def _unreadable(bridge: Bridge, exc: Exception) -> JsResponse:
    bridge.log("error", f"fazt could not read the script's answer: {exc!r}")
    return error_response(500, "js_error", "The script's answer could not be read.")


def _clock_due(loaded: Loaded, limits: Limits) -> bool:
    """Whether the context's CPU clock starts again for this request: always, or once its
    window of wall time has passed (the interrupt handler stays installed meanwhile)."""
    if not limits.clock_window:
        return True
    now = time.monotonic()
    if now - loaded.clock_at < limits.clock_window:
        return False
    loaded.clock_at = now
    return True


_UNREADABLE = object()


def _call(step: Any, *args: str) -> Any:
    """The step's answer, or _UNREADABLE when its body holds a lone surrogate (the binding
    cannot hand that over; the prelude's `step(true)` can)."""
    try:
        return step(*args)
    except UnicodeDecodeError:
        return _UNREADABLE


def _run_jobs(ctx: quickjs.Context, limits: Limits, bridge: Bridge) -> JsResponse | None:
    """Run the context's pending jobs; the timeout's response when they run too long.

    The interrupt handler of the step's clock still counts (see above); this is a
    backstop between jobs, from here, as the clock's reading costs a system call."""
    if not ctx.execute_pending_job():
        return None  # (most handlers queue none: one call, no clock read)
    started = time.process_time()
    while ctx.execute_pending_job():
        if time.process_time() - started >= limits.cpu_seconds:
            timeout = quickjs.JSException("InternalError: interrupted")
            return _failure(timeout, limits, bridge)
    return None


def _cut_short(answer: Any) -> bool:
    """Whether the binding cut the answer's body at a NUL (it hands strings over as C text):
    the body is shorter than the length the prelude wrote before it (see prelude.py)."""
    if not isinstance(answer, str) or answer[:1] == "{":
        return False  # not a response (bad_response says why), or a problem
    space, newline = answer.find(" "), answer.find("\n")
    length = int(answer[:space])
    if len(answer) - newline - 1 >= length:
        return False  # (a code point counts one, a UTF-16 unit at most: never more)
    return len(answer[newline + 1:].encode("utf-16-le", "surrogatepass")) // 2 < length


def encode_request(request: dict) -> str:
    """The request as JSON text for the prelude's step."""
    return "".join(_ENCODER(request, 0)) if _ENCODER else json.dumps(request)


def _clock_kept(clock: "weakref.ref[ClockOff] | None") -> bool:
    """Whether the limit was never switched off during the step (the script kept the
    callable). Then every call into Python was refused, so nothing the step did left
    its context: the context is dropped and a fresh one runs the request."""
    token = clock() if clock is not None else None
    if token is not None:
        token.ctx = None  # its end, whenever it comes, switches nothing off any more
        return True
    return False


class ClockOff:
    """The callable armed as `__fazt_clock`: its end switches the context's limit off.

    Its own `__del__` rather than a `weakref.finalize` (which registers every token in
    a global table): arming and dropping it is one of the few things a warm request
    costs besides the handler (about 1.3 µs instead of 2.2). It holds the context
    until then; `_clock_kept` lets go of it when a script keeps the callable."""

    __slots__ = ("ctx", "__weakref__")

    def __init__(self, ctx: quickjs.Context):
        self.ctx = ctx

    def __call__(self) -> None:
        return None

    def __del__(self) -> None:
        ctx = self.ctx
        if ctx is not None:
            self.ctx = None
            ctx.set_time_limit(-1)


def arm_cpu_clock(ctx: quickjs.Context, seconds: float) -> "weakref.ref[ClockOff]":
    """Start the CPU-time budget of `ctx` and give it `__fazt_clock`, a callable whose
    end (the JavaScript that runs next drops it) switches the limit off (see above)."""
    ctx.set_time_limit(seconds)
    token = ClockOff(ctx)
    switched_off = weakref.ref(token)
    ctx.add_callable("__fazt_clock", token)
    return switched_off


def start_cpu_clock(ctx: quickjs.Context, seconds: float) -> None:
    """Start the CPU-time budget of `ctx` and still allow calls into Python (see above)."""
    switched_off = arm_cpu_clock(ctx, seconds)
    ctx.eval("globalThis.__fazt_clock = undefined")
    if _clock_kept(switched_off):
        raise RuntimeError("this quickjs binding kept a deleted callable alive; "
                           "fazt cannot enforce JS time limits with it")


def self_test() -> None:
    """Refuse to serve scripts if the binding does not behave as start_cpu_clock needs."""
    ctx = quickjs.Context()
    start_cpu_clock(ctx, 0.02)
    ctx.add_callable("__fazt_echo", lambda text: text)
    try:
        if ctx.eval("__fazt_echo('ok')") != "ok":
            raise RuntimeError("a call into Python failed under the CPU clock")
        try:
            ctx.eval("while (true) {}")
        except quickjs.JSException as exc:
            if _first_line(exc) == "InternalError: interrupted":
                return
        raise RuntimeError("the CPU clock did not interrupt a loop")
    finally:
        del ctx


def syntax_error(source: str) -> tuple[int | None, str] | None:
    """(line, message) when `source` is not a valid script, without running it.

    The script is compiled as the body of a function expression that is never
    called, in a throwaway context with tight limits. A valid script cannot
    close that function early, so the text of the compiled function must be
    exactly the wrapper. When it is not, or the wrapper does not compile, the
    script is invalid, and compiling it as a script (which fails before any
    of it runs) gives the message and line in the script's own terms.
    """
    wrapped = _wrapped_problem(source)
    if wrapped is None:
        return None
    ctx = _check_context()
    try:
        ctx.eval(source)
    except quickjs.JSException as exc:
        if _first_line(exc).startswith("SyntaxError"):
            return _syntax_problem(exc)
    finally:
        del ctx
    return wrapped


def _wrapped_problem(source: str) -> tuple[int | None, str] | None:
    ctx = _check_context()
    try:
        compiled = ctx.eval("(function(){" + source + "\n})")
        measure = ctx.eval("(f) => typeof f === 'function' ? String(f).length : -1")
        length = measure(compiled)
        del compiled, measure
        if length == len(source.encode("utf-16-le")) // 2 + len("function(){\n}"):
            return None
        return None, "the script closes a brace it never opened"
    except quickjs.JSException as exc:
        first = _first_line(exc)
        if first.startswith("SyntaxError"):
            return _syntax_problem(exc)
        if first.startswith("InternalError: out of memory") or first == "null":
            return None, "the script is too large to compile"
        return None, "the script closes a brace it never opened"
    finally:
        del ctx


def _syntax_problem(exc: quickjs.JSException) -> tuple[int | None, str]:
    match = _LINE.search(str(exc))
    return (int(match.group(1)) if match else None), _first_line(exc).removeprefix("SyntaxError: ")


def script_line(trace: str) -> int | None:
    """The line of the script's innermost frame in a QuickJS stack trace (the prelude's
    own frames, named __fazt_*, skipped), or None when the script has no frame."""
    for name, line in _FRAME.findall(trace):
        if not name.startswith("__fazt_"):
            return int(line)
    return None


def _check_context() -> quickjs.Context:
    ctx = quickjs.Context()
    ctx.set_memory_limit(CHECK_MEMORY_BYTES)
    ctx.set_max_stack_size(STACK_BYTES)
    ctx.set_time_limit(CHECK_SECONDS)
    return ctx


def _first_line(exc: BaseException | str) -> str:
    return str(exc).split("\n", 1)[0].strip()


def _syntax_failure(problem: tuple[int | None, str], bridge: Bridge) -> JsResponse:
    line, message = problem
    where = f"line {line}: " if line else ""
    text = f"{SCRIPT} does not compile: {where}{message}"
    bridge.log("error", text)
    return error_response(500, "js_syntax", text, line)


def _failure(exc: quickjs.JSException, limits: Limits, bridge: Bridge) -> JsResponse:
    """Name the limit that stopped the script; the stack goes to the site's log only.

    On `quickjs` an out-of-memory error whose own Error object could not be
    allocated arrives as the bare message "null" (or as the binding's
    "Failed obtaining QuickJS error string"), so those count as memory too;
    a script that literally throws null is reported as out of memory.
    """
    text = _PRELUDE_FRAME.sub("", str(exc)).strip().replace("(<input>:", f"({SCRIPT}:")
    first = _first_line(exc)
    if isinstance(exc, quickjs.StackOverflow) or first == "InternalError: stack overflow":
        status, code = 500, "js_stack_overflow"
        message = f"The script recursed too deeply (stack limit {STACK_BYTES // 1024} KiB)."
    elif first == "InternalError: interrupted":
        status, code = 504, "js_timeout"
        message = f"The script ran past its time limit of {limits.timeout_ms} ms."
    elif ("out of memory" in first or first in ("null", "") or "string too long" in first
          or first.startswith("(Failed obtaining QuickJS error string")):
        status, code = 500, "js_memory_limit"
        message = f"The script ran out of memory (limit {limits.memory_bytes // MB} MB)."
    else:
        status, code = 500, "js_error"
        # A script may throw a secret: never to visitors. Redacted whole before the first
        # line is cut to 500 characters (a value cut in two, or one holding a newline, would
        # not match after that).
        message = _first_line(bridge.redact(str(exc)))[:500]
    line = script_line(text)
    where = f"{SCRIPT}:{line}: " if line is not None else ""
    bridge.log("error", f"{where}{code}: {text}" if code != "js_error" else f"{where}{text}")
    return error_response(status, code, message, line)
