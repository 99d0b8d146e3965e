"""The JavaScript runtime in-process: real SQLite, real QuickJS, real threads."""

import json
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest
from conftest import eventually

from fazt.errors import FaztError, TooLarge
from fazt.http_errors import status_of
from fazt.runtime import JsBusy, Runtime, compile_check
from fazt.runtime.kv import MAX_VALUE_BYTES
from fazt.runtime.logs import SiteLogs
from fazt.runtime.slots import Slots
from fazt.store.database import create_database
from fazt.store.sites import NewFile

TIMEOUT_MS = 400
SLOW = "function handler() { const end = Date.now() + %d; while (Date.now() < end) {} " \
       "return {body: 'done'}; }"
SPIN = "function handler() { while (true) {} }"


@pytest.fixture
def db(tmp_path):
    return create_database(str(tmp_path / "fazt.db"))


@pytest.fixture
def rt(db):
    return Runtime(db, slots=3, memory_mb=32, timeout_ms=TIMEOUT_MS)


def request(**extra):
    base = {"method": "GET", "path": "/api/x", "query": {}, "headers": {}, "body": ""}
    return {**base, **extra}


def call(rt, source, site="alpha", **extra):
    """(status, parsed JSON or text, headers)."""
    answer = rt.handle(site, "sha", source, request(**extra))
    text = answer.body.decode()
    if answer.headers.get("Content-Type") == "application/json":
        return answer.status, json.loads(text), answer.headers
    return answer.status, text, answer.headers


def error_code(result):
    status, body, _ = result
    return status, body["error"]["code"]


# -- handlers ---------------------------------------------------------------

def test_echo_handler_sees_the_whole_request(rt):
    source = """function handler(request) {
      return {status: 201, headers: {'X-Echo': 'yes'}, body: request};
    }"""
    status, body, headers = call(
        rt, source, method="POST", path="/api/items", query={"q": "1", "page": "2"},
        headers={"content-type": "application/json", "x-token": "t"},
        body='{"name": "ada", "n": [1, 2]}')
    assert status == 201
    assert headers["X-Echo"] == "yes"
    assert headers["Content-Type"] == "application/json"
    assert body["method"] == "POST"
    assert body["path"] == "/api/items"
    assert body["query"] == {"q": "1", "page": "2"}
    assert body["headers"]["x-token"] == "t"
    assert body["json"] == {"name": "ada", "n": [1, 2]}


def test_string_body_is_text_unless_the_handler_says_otherwise(rt):
    assert call(rt, "function handler() { return {body: 'hi'}; }") == (
        200, "hi", {"Content-Type": "text/plain; charset=utf-8"})
    status, text, headers = call(rt, "function handler() { return {body: '<b>', headers: "
                                     "{'content-type': 'text/html'}}; }")
    assert (status, text, headers) == (200, "<b>", {"content-type": "text/html"})


def test_body_that_is_not_json_has_no_json_field(rt):
    status, body, _ = call(rt, "function handler(r) { return {body: {has: 'json' in r}}; }",
                           headers={"content-type": "application/json"}, body="{not json")
    assert (status, body) == (200, {"has": False})


def test_async_handler(rt):
    source = "async function handler() { await null; return {status: 202, body: 'later'}; }"
    assert call(rt, source)[:2] == (202, "later")


def test_jobs_a_handler_queues_run_before_its_request_ends(rt):
    """A handler that answers at once may still queue work (`.then`): it runs in that
    request, as an event loop runs it, not in some later request or never."""
    source = """function handler(r) {
      if (r.query.hit) {
        Promise.resolve().then(() => { fazt.kv.set('hits', (fazt.kv.get('hits') || 0) + 1);
                                       console.log('counted'); });
        return {body: 'queued'};
      }
      return {body: String(fazt.kv.get('hits'))};
    }"""
    for _ in range(3):
        assert call(rt, source, query={"hit": "1"})[:2] == (200, "queued")
    assert call(rt, source)[1] == "3"
    assert [line["message"] for line in rt.logs("alpha")] == ["counted"] * 3


def test_jobs_that_never_end_are_the_requests_timeout(rt):
    source = """function handler(r) {
      if (r.query.spin) { (function again() { Promise.resolve().then(again); })();
                          return {body: 'answered'}; }
      return Promise.resolve({body: 'fine'});
    }"""
    assert error_code(call(rt, source, query={"spin": "1"})) == (504, "js_timeout")
    # the next request of the site is not charged for them
    assert call(rt, source)[:2] == (200, "fine")


@pytest.mark.parametrize("body, sent", [
    ("'a\\u0000b'", b"a\x00b"),  # the binding hands strings over as C text: cut at a NUL
    ("'\\ud83d\\ude00 \\u0000' + 'x'.repeat(70000)", "\U0001f600 \x00".encode() + b"x" * 70000),
    ("'a\\ud800b'", "a\ufffdb".encode()),  # a lone surrogate: U+FFFD, as TextEncoder does
    ("'\\u00e9\\ud83d\\ude00'", "\u00e9\U0001f600".encode()),
    ("{s: 'a\\u0000b'}", b'{"s":"a\\u0000b"}'),
], ids=["nul", "nul-in-a-large-body", "lone-surrogate", "astral", "json"])
def test_a_body_is_sent_whole_whatever_it_holds(rt, body, sent):
    for source in (f"function handler() {{ return {{body: {body}}}; }}",
                   f"async function handler() {{ return {{body: {body}}}; }}"):
        for _ in range(2):  # a fresh context, then a warm one
            answer = rt.handle("alpha", source, source, request())
            assert (answer.status, answer.body) == (200, sent)


# -- failures become JSON errors --------------------------------------------

def test_infinite_loop_ends_with_504_and_the_site_keeps_working(rt):
    started = time.monotonic()
    assert error_code(call(rt, SPIN)) == (504, "js_timeout")
    elapsed = time.monotonic() - started
    assert TIMEOUT_MS / 1000 * 0.9 <= elapsed < 10
    assert call(rt, "function handler() { return {body: 'fine'}; }")[:2] == (200, "fine")
    assert rt.stats()["timeouts"] == 1


def test_timeout_under_cpu_contention(rt):
    """Spinners end with 504 while other JS and Python burn CPU; a script that works
    for half the timeout is never killed by its neighbours."""
    stop = threading.Event()

    def burn():
        while not stop.is_set():
            sum(range(1000))

    results = {}

    def run(name, source):
        started = time.monotonic()
        answer = rt.handle("alpha", "sha", source, request())
        results[name] = (answer.status, time.monotonic() - started)

    burner = threading.Thread(target=burn)
    burner.start()
    try:
        threads = [threading.Thread(target=run, args=(f"spin{i}", SPIN)) for i in range(2)]
        threads.append(threading.Thread(target=run, args=("legit", SLOW % (TIMEOUT_MS // 2))))
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        stop.set()
        burner.join()
    assert results["legit"][0] == 200
    for name in ("spin0", "spin1"):
        status, elapsed = results[name]
        assert status == 504
        assert TIMEOUT_MS / 1000 * 0.9 <= elapsed < 10


def test_memory_bomb_is_a_clean_error_and_rss_falls_back(db):
    rt = Runtime(db, slots=2, memory_mb=128, timeout_ms=5000)
    process = psutil.Process()
    before = process.memory_info().rss
    for bomb in ("let a = []; while (true) a.push({x: a.length, y: [1, 2]});",
                 "let a = []; while (true) a.push('y' + a.length);",
                 "let s = 'x'; while (true) s = s + s;"):
        source = "function handler() { " + bomb + " }"
        assert error_code(call(rt, source)) == (500, "js_memory_limit")
    assert process.memory_info().rss < before + 40 * 1024 * 1024
    assert call(rt, "function handler() { return {body: 'ok'}; }")[:2] == (200, "ok")


CRASHER = """
import os, sys, tempfile
from fazt.runtime import Runtime
from fazt.store.database import create_database
rt = Runtime(create_database(os.path.join(tempfile.mkdtemp(), "t.db")),
             slots=1, memory_mb=16, timeout_ms=2000)
bomb = "function handler() { let a = []; while (true) a.push('x'.repeat(1000)); }"
request = {"method": "GET", "path": "/api/x", "query": {}, "headers": {}, "body": ""}
# The archived quickjs 1.19.4 segfaulted on the 4th of these in 10 runs out of 11
# (measured here): 30 leave a wide margin at a tenth of the time 300 took.
for _ in range(30):
    assert rt.handle("s", "sha", bomb, request).error == "js_memory_limit"
"""


def test_repeat_memory_bomb_does_not_crash_the_process():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.run([sys.executable, "-c", CRASHER], env=env, capture_output=True,
                           timeout=120)
    assert child.returncode == 0, child.stderr.decode()[-500:]


@pytest.mark.parametrize("thrown, message", [
    ("'plain'", "plain"), ("42", "42"), ("undefined", "undefined"),
    ("{toString() { return 'custom'; }}", "custom"),
    ("Symbol('s')", "Symbol(s)"),
    ("Object.create(null)", "the script threw a value that cannot be read as text"),
    ("{toString() { throw 1; }}", "the script threw a value that cannot be read as text"),
    ("new Proxy({}, {get() { throw new Error('trap'); }})",
     "the script threw a value that cannot be read as text"),
], ids=["string", "number", "undefined", "object", "symbol", "no-prototype",
        "throwing-toString", "proxy"])
def test_whatever_a_script_throws_is_a_js_error(rt, thrown, message):
    """Not an Error, and not text to the binding either: still the script's error, never
    "out of memory"; thrown, rejected, or from a getter of the answer."""
    for source in (f"function handler() {{ throw {thrown}; }}",
                   f"function handler() {{ return Promise.reject({thrown}); }}",
                   f"function handler() {{ return {{get body() {{ throw {thrown}; }}}}; }}"):
        status, body, _ = call(rt, source)
        assert (status, body["error"]["code"], body["error"]["message"]) == \
            (500, "js_error", message), source
    assert call(rt, "function handler() { return {body: 'ok'}; }")[:2] == (200, "ok")


def test_deep_recursion_is_a_clean_error(rt):
    source = "function f(n) { return f(n + 1) + 1; }\nfunction handler() { return f(0); }"
    assert error_code(call(rt, source)) == (500, "js_stack_overflow")


def test_thrown_error_message_in_response_stack_in_log(rt):
    source = "function inner() { throw new Error('boom'); }\n" \
             "function handler() { return inner(); }"
    status, body, _ = call(rt, source)
    assert status == 500
    assert body == {"error": {"code": "js_error", "message": "Error: boom",
                              "file": "api/main.js", "line": 1}}  # inner's line, not handler's
    logged = [line["message"] for line in rt.logs("alpha") if line["level"] == "error"]
    assert any("Error: boom" in m and "at inner" in m for m in logged)
    assert rt.stats()["errors"] == 1



def test_an_error_in_a_getter_of_the_answer_names_the_getters_line(rt):
    source = "function handler() {\n  return {status: 200,\n    get body() { throw new " \
             "TypeError('no body'); }};\n}"
    status, body, _ = call(rt, source)
    assert (status, body["error"].get("line")) == (500, 3), body

@pytest.mark.parametrize("source", [
    "function handler() {}",
    "function handler() { return 5; }",
    "function handler() { return [1]; }",
    "function handler() { return {status: 'x'}; }",
    "function handler() { return {status: 99}; }",
    "function handler() { return {headers: {'bad name': 'v'}}; }",
    "function handler() { return {headers: {'x-a': 'a\\r\\nb'}}; }",
    "function handler() { const o = {}; o.o = o; return {body: o}; }",
    "var nothing = 1;",
])
def test_unusable_answers_are_bad_response(rt, source):
    assert error_code(call(rt, source)) == (500, "bad_response")


def test_syntax_error_at_run_time(rt):
    status, body, _ = call(rt, "function handler() {\n  return {body: 1\n}")
    assert status == 500
    assert body["error"]["code"] == "js_syntax"
    assert "line 3" in body["error"]["message"]


def test_runtime_syntax_error_from_json_parse_is_a_js_error(rt):
    assert error_code(call(rt, "function handler() { return JSON.parse('{'); }")) == (
        500, "js_error")


def test_no_globals_leak_between_requests(rt):
    first = "globalThis.x = 1; Array.prototype.evil = 1;\n" \
            "function handler() { globalThis.y = 2; return {body: 'set'}; }"
    assert call(rt, first)[:2] == (200, "set")
    second = "function handler() { return {body: [typeof x, typeof y, typeof [].evil]}; }"
    assert call(rt, second)[1] == ["undefined", "undefined", "undefined"]


def test_the_bridge_is_hidden_from_scripts(rt):
    source = "function handler() { return {body: [typeof __fazt_bridge, typeof __fazt_clock," \
             " typeof fazt.kv.get]}; }"
    assert call(rt, source)[1] == ["undefined", "undefined", "function"]


# -- compile_check ----------------------------------------------------------

def one_shot(data: bytes):
    yield data


def test_compile_check_passes_good_script_and_keeps_its_bytes():
    script = b"function handler(r) {\n  return {body: 'ok'};\n}\n"
    other = NewFile("index.html", "text/html", [b"<p>"])
    files = compile_check([other, NewFile("api/main.js", "text/javascript", one_shot(script))])
    assert files[0] is other
    assert files[1].pieces == [script]


@pytest.mark.parametrize("script, line", [
    (b"function handler(r) {\n  return {body: 'ok' 'x'};\n}\n", "line 2"),
    (b"function handler(r) {\n  return {body: 'ok'};\n", "line 3"),  # found at the end
    (b"function handler() {}\n}); (function () {\n", "line 2"),  # closes the check's wrapper
    (b"let x = ;", "line 1"),
])
def test_compile_check_reports_the_line(script, line):
    with pytest.raises(FaztError) as info:
        compile_check([NewFile("api/main.js", "text/javascript", one_shot(script))])
    assert info.value.code == "js_syntax"
    assert info.value.message.startswith("api/main.js does not compile:")
    assert line in info.value.message


def test_compile_check_does_not_run_the_script():
    script = b"while (true) {}\nfunction handler() {}"
    started = time.monotonic()
    compile_check([NewFile("api/main.js", "text/javascript", [script])])
    assert time.monotonic() - started < 1


def test_compile_check_refuses_bad_utf8_and_huge_scripts():
    with pytest.raises(FaztError, match="UTF-8"):
        compile_check([NewFile("api/main.js", "text/javascript", [b"\xff\xfe"])])
    with pytest.raises(TooLarge):
        compile_check([NewFile("api/main.js", "text/javascript", [b"//" + b"x" * 2_000_000])])


# -- the slot semaphore -----------------------------------------------------

def test_flood_gets_exactly_the_excess_rejected_at_once(rt):
    slots = 3
    barrier = threading.Barrier(3 * slots)
    outcomes = []
    lock = threading.Lock()

    def hit():
        barrier.wait()
        started = time.monotonic()
        try:
            answer = rt.handle("alpha", "sha", SLOW % 300, request())  # under the timeout
            result = ("ok", answer.status, time.monotonic() - started)
        except JsBusy as exc:
            result = ("busy", status_of(exc), time.monotonic() - started, exc.retry_after)
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=hit) for _ in range(3 * slots)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    busy = [o for o in outcomes if o[0] == "busy"]
    done = [o for o in outcomes if o[0] == "ok"]
    assert len(busy) == 2 * slots
    assert len(done) == slots
    assert all(o[1] == 429 and o[2] < 0.3 and o[3] == 1 for o in busy)
    assert all(o[1] == 200 for o in done)
    stats = rt.stats()
    assert stats["rejected"] == 2 * slots
    assert stats["in_use"] == 0
    assert stats["runs"] == slots


def test_busy_is_a_fazt_error_the_http_layer_can_send():
    exc = JsBusy("busy")
    assert isinstance(exc, FaztError)
    assert (status_of(exc), exc.code, exc.retry_after) == (429, "js_busy", 1)


def test_slots_resize_grow_at_once_shrink_lazily():
    slots = Slots(1)
    assert slots.try_acquire()
    assert not slots.try_acquire()
    slots.resize(3)
    assert slots.try_acquire() and slots.try_acquire()
    slots.resize(1)  # three holders keep running
    stats = slots.stats()
    assert (stats["slots"], stats["in_use"], stats["rejected"]) == (1, 3, 1)
    slots.release()
    slots.release()
    assert not slots.try_acquire()  # still one in use: full
    slots.release()
    assert slots.try_acquire()


def test_runtime_resize_while_a_script_runs(rt):
    rt.resize(slots=1, memory_mb=32, timeout_ms=TIMEOUT_MS)
    result = {}
    running = threading.Thread(
        # 300 ms: within the timeout itself, so the CPU budget holds even while other
        # threads of this process burn CPU beside it (the budget is the process's CPU)
        target=lambda: result.setdefault("a", rt.handle("alpha", "s", SLOW % 300, request())))
    running.start()
    assert eventually(lambda: rt.stats()["in_use"] == 1, timeout=10, every=0.01)
    with pytest.raises(JsBusy):
        rt.handle("alpha", "s", "function handler() { return {}; }", request())
    rt.resize(slots=2, memory_mb=32, timeout_ms=TIMEOUT_MS)
    assert rt.handle("alpha", "s", "function handler() { return {}; }", request()).status == 200
    rt.resize(slots=0, memory_mb=32, timeout_ms=TIMEOUT_MS)
    with pytest.raises(JsBusy):
        rt.handle("alpha", "s", "function handler() { return {}; }", request())
    running.join(10)
    assert result["a"].status == 200  # shrinking never kills a running script
    assert rt.stats()["slots"] == 0


def test_fair_shares_leave_a_slot_for_a_third_site():
    slots = Slots(3, backends=3)
    assert slots.try_acquire("a")
    assert not slots.try_acquire("a")  # a holds its share while two slots are free
    assert "its share" in slots.why_refused("a")
    assert slots.try_acquire("b")
    assert not slots.try_acquire("b")
    assert slots.try_acquire("c")  # the third site still finds a slot
    assert not slots.try_acquire("d")  # full: the total stays the size
    stats = slots.stats()
    assert (stats["in_use"], stats["rejected"], stats["rejected_over_share"]) == (3, 3, 2)
    assert "Every JavaScript slot is busy" in slots.why_refused("d")
    slots.release("a")
    assert slots.try_acquire("d")  # what a site gives back goes to whoever asks
    for site in ("b", "c", "d"):
        slots.release(site)
    assert slots.stats()["in_use"] == 0 and slots.stats()["sites_running"] == 0
    with pytest.raises(RuntimeError):
        slots.release("a")


@pytest.mark.parametrize("size,backends,alone", [(3, 1, 3), (4, 2, 2), (4, 3, 2), (2, 5, 1),
                                                 (1, 3, 1), (8, 9, 4)])
def test_one_site_alone_takes_its_share(size, backends, alone):
    slots = Slots(size, backends=backends)
    taken = 0
    while slots.try_acquire("only"):
        taken += 1
    assert taken == alone  # every slot when it is the only back end, else half at most


def test_two_flooding_sites_and_a_third_that_still_runs(db):
    rt = Runtime(db, slots=3, memory_mb=32, timeout_ms=2000)
    rt.set_backends(3)
    slow = SLOW % 600
    outcomes: dict[str, list] = {"a": [], "b": []}
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def flood(site):
        barrier.wait()
        try:
            status = rt.handle(site, "sha", slow, request()).status
        except JsBusy:
            status = 429
        with lock:
            outcomes[site].append(status)

    threads = [threading.Thread(target=flood, args=(site,)) for site in "ab" for _ in range(3)]
    for t in threads:
        t.start()
    assert eventually(lambda: rt.stats()["in_use"] == 2 and len(outcomes["a"]) == 2
                      and len(outcomes["b"]) == 2, timeout=10, every=0.01)
    answer = rt.handle("c", "sha", "function handler() { return {body: 'c ran'}; }", request())
    assert (answer.status, answer.body) == (200, b"c ran")
    for t in threads:
        t.join(30)
    assert sorted(outcomes["a"]) == sorted(outcomes["b"]) == [200, 429, 429]


# -- warm contexts -------------------------------------------------------------

COUNTER = "var n = 0;\nfunction handler() { n += 1; return {body: String(n)}; }"


def test_a_site_keeps_its_context_between_requests(rt):
    assert [call(rt, COUNTER)[1] for _ in range(3)] == ["1", "2", "3"]
    assert rt.stats()["warm_runs"] == 2


def test_contexts_are_never_shared_between_sites(rt):
    assert call(rt, COUNTER, site="alpha")[1] == "1"
    assert call(rt, COUNTER, site="beta")[1] == "1"  # same script, other site: fresh
    assert call(rt, COUNTER, site="alpha")[1] == "1"  # the thread's one context went to beta
    evil = "Array.prototype.evil = 1; globalThis.secret = 'alpha';\n" \
           "function handler() { return {body: [typeof [].evil, typeof secret]}; }"
    assert call(rt, evil, site="alpha")[1] == ["number", "string"]
    assert call(rt, evil.replace("Array.prototype.evil = 1; globalThis.secret = 'alpha';",
                                 ""), site="beta")[1] == ["undefined", "undefined"]


def test_contexts_of_other_threads_stay_on_their_threads(rt):
    results = []
    for _ in range(3):
        t = threading.Thread(target=lambda: results.append(call(rt, COUNTER)[1]))
        t.start()
        t.join()
    assert results == ["1", "1", "1"]  # each thread has its own context
    assert [call(rt, COUNTER)[1] for _ in range(2)] == ["1", "2"]


@pytest.mark.parametrize("failure,code", [
    ("throw new Error('boom')", "js_error"),
    ("while (true) {}", "js_timeout"),
    ("const a = []; while (true) a.push('x'.repeat(1 << 20));", "js_memory_limit"),
    ("const f = () => f(); f()", "js_stack_overflow"),
    ("return 'not an object'", "bad_response"),
])
def test_a_failure_discards_the_context(rt, failure, code):
    source = ("var n = 0;\nfunction handler(r) {\n  n += 1;\n"
              f"  if (r.query.fail) {{ {failure} }}\n  return {{body: String(n)}};\n}}")
    assert call(rt, source)[1] == "1"
    assert call(rt, source)[1] == "2"
    assert error_code(call(rt, source, query={"fail": "1"})) == (
        504 if code == "js_timeout" else 500, code)
    assert call(rt, source)[1] == "1"  # a fresh context after the failure


def test_a_redeploy_or_another_version_discards_the_context(rt):
    assert [call(rt, COUNTER)[1] for _ in range(2)] == ["1", "2"]
    rt.forget()  # what the instance does on every deploy and removal
    assert call(rt, COUNTER)[1] == "1"
    assert rt.handle("alpha", "other-sha", COUNTER, request()).body == b"1"


def test_a_context_serves_a_bounded_number_of_requests(rt, monkeypatch):
    from fazt.runtime import runtime

    monkeypatch.setattr(runtime, "WARM_RUNS", 3)
    assert [call(rt, COUNTER)[1] for _ in range(7)] == ["1", "2", "3", "1", "2", "3", "1"]


def test_a_large_heap_is_not_kept_warm(rt):
    rt.resize(slots=3, memory_mb=32, timeout_ms=TIMEOUT_MS, warm_mb=0)
    assert [call(rt, COUNTER)[1] for _ in range(2)] == ["1", "1"]  # 0: warm contexts off
    rt.resize(slots=3, memory_mb=32, timeout_ms=TIMEOUT_MS, warm_mb=1)
    big = "var keep = [];\nfunction handler() { keep.push('x'.repeat(2 << 20));" \
          " return {body: String(keep.length)}; }"
    assert [call(rt, big)[1] for _ in range(2)] == ["1", "1"]


def test_a_memory_limit_change_discards_the_context(rt):
    assert [call(rt, COUNTER)[1] for _ in range(2)] == ["1", "2"]
    rt.resize(slots=3, memory_mb=16, timeout_ms=TIMEOUT_MS)
    assert call(rt, COUNTER)[1] == "1"


def test_a_warm_context_keeps_its_time_limit(rt):
    source = "var n = 0;\nfunction handler(r) { n += 1; if (r.query.spin) while (true) {}" \
             " return {body: String(n)}; }"
    for _ in range(5):
        assert call(rt, source)[0] == 200
    started = time.monotonic()
    assert error_code(call(rt, source, query={"spin": "1"})) == (504, "js_timeout")
    assert time.monotonic() - started < 10 * TIMEOUT_MS / 1000


def test_a_warm_context_sees_no_other_requests_promise(rt):
    source = "var n = 0;\nasync function handler(r) { n += 1; return {body: String(n)}; }"
    assert [call(rt, source)[1] for _ in range(3)] == ["1", "2", "3"]


def test_a_warm_request_does_not_read_the_script_again(rt):
    reads = []

    def source():
        reads.append(1)
        return "var n = 0;\nfunction handler() { n += 1; return {body: String(n)}; }"

    bodies = [rt.handle("alpha", "v1", source, request()).body for _ in range(3)]
    assert bodies == [b"1", b"2", b"3"] and len(reads) == 1  # loaded once, then warm
    assert rt.handle("alpha", "v2", source, request()).body == b"1" and len(reads) == 2


def test_a_script_that_breaks_the_clock_restart_gets_fresh_contexts(rt):
    source = ("Object.defineProperty(globalThis, '__fazt_clock', {writable: false});\n"
              "var n = 0;\nfunction handler() { n += 1; return {body: String(n)}; }")
    assert [call(rt, source)[1] for _ in range(3)] == ["1", "1", "1"]


def test_a_script_cannot_put_a_setter_where_the_clock_goes(rt):
    # The engine writes __fazt_clock holding Python's lock: a setter spinning there would
    # stop every thread of the server, so the prelude leaves no room for one.
    source = ("Object.defineProperty(globalThis, '__fazt_clock', {set(v) { while (true) {} }});"
              "\nfunction handler() { return {body: 'ran'}; }")
    status, body = call(rt, source)[:2]
    assert status == 500 and "not configurable" in body["error"]["message"]


# -- runs on the event loop (handle_on_loop) ------------------------------------

LOOP_COUNTER = "var n = 0;\nfunction handler(r) { n += 1; console.log('run ' + n);" \
               " if (r.query.kv) fazt.kv.set('n', n); if (r.query.spin) while (true) {}" \
               " return {body: String(n)}; }"


def on_loop(rt, source, site="alpha", sha="sha", **extra):
    """`handle_on_loop` as the loop calls it, its script read from "RAM"."""
    return rt.handle_on_loop(site, sha, lambda: source, request(**extra))


@pytest.fixture
def loop_rt(rt, monkeypatch):
    """A runtime whose loop may load a context at every request (not 20 a second)."""
    from fazt.runtime import runtime

    monkeypatch.setattr(runtime, "LOOP_LOAD_SECONDS", 0)
    rt.env.get("alpha")  # the secrets in RAM, as a first request on a thread leaves them
    return rt


def test_the_loop_waits_for_a_thread_to_read_the_secrets(rt):
    assert on_loop(rt, LOOP_COUNTER) is None  # nothing in RAM yet: a thread answers
    assert rt.handle("alpha", "sha", LOOP_COUNTER, request()).body == b"1"
    assert on_loop(rt, LOOP_COUNTER).body == b"1"  # now the loop has its own context


def test_the_loop_keeps_its_context_and_counts_the_slot(loop_rt):
    assert [on_loop(loop_rt, LOOP_COUNTER).body for _ in range(3)] == [b"1", b"2", b"3"]
    stats = loop_rt.stats()
    assert stats["runs"] == 3 and stats["warm_runs"] == 2 and stats["in_use"] == 0
    assert [line["message"] for line in loop_rt.logs("alpha")] == ["run 1", "run 2", "run 3"]


def test_a_run_that_touches_kv_leaves_nothing_and_the_site_leaves_the_loop(loop_rt, db):
    assert on_loop(loop_rt, LOOP_COUNTER).body == b"1"
    assert on_loop(loop_rt, LOOP_COUNTER, query={"kv": "1"}) is None  # a thread's to run
    assert loop_rt.kv.get("alpha", "n") == (False, None)  # nothing was stored
    assert [line["message"] for line in loop_rt.logs("alpha")] == ["run 1"]  # nor logged
    assert on_loop(loop_rt, LOOP_COUNTER) is None  # off the loop for OFF_LOOP_SECONDS
    assert loop_rt.stats()["runs"] == 1 and loop_rt.stats()["in_use"] == 0


def test_a_run_past_the_loop_budget_is_interrupted_and_moved(loop_rt):
    started = time.monotonic()
    assert on_loop(loop_rt, LOOP_COUNTER, query={"spin": "1"}) is None
    assert time.monotonic() - started < 0.5  # the loop's budget, not the site's timeout
    assert loop_rt.stats()["timeouts"] == 0  # not the handler's failure: it runs again


def test_a_new_version_runs_on_the_loop_again(loop_rt):
    assert on_loop(loop_rt, LOOP_COUNTER, query={"kv": "1"}) is None
    assert on_loop(loop_rt, LOOP_COUNTER, sha="v2").body == b"1"


def test_handlers_that_average_too_slow_leave_the_loop(loop_rt, monkeypatch):
    from fazt.runtime import runtime

    monkeypatch.setattr(runtime, "QUICK_SECONDS", 1e-6)  # every measured run is too slow
    monkeypatch.setattr(runtime, "LOOP_SAMPLE_EVERY", 1)
    answers = [on_loop(loop_rt, LOOP_COUNTER) for _ in range(30)]
    assert [a.body for a in answers[:3]] == [b"1", b"2", b"3"]  # one run is not an average
    assert answers[-1] is None  # a sustained one is: the handler runs on threads now


def test_one_slow_run_does_not_send_a_quick_handler_away(loop_rt, monkeypatch):
    from fazt.runtime import runtime

    monkeypatch.setattr(runtime, "LOOP_SAMPLE_EVERY", 1)
    monkeypatch.setattr(runtime, "LOOP_CPU_SECONDS", 0.05)  # the slow run is not cut short
    loop_rt.resize(slots=3, memory_mb=32, timeout_ms=TIMEOUT_MS)
    source = "var n = 0;\nfunction handler(r) { n += 1; if (r.query.slow) {" \
             " var e = Date.now() + 1; while (Date.now() <= e) {} } return {body: String(n)}; }"
    assert on_loop(loop_rt, source).body == b"1"
    assert on_loop(loop_rt, source).body == b"2"
    assert on_loop(loop_rt, source, query={"slow": "1"}).body == b"3"  # about 1-2 ms
    assert [on_loop(loop_rt, source).body for _ in range(3)] == [b"4", b"5", b"6"]


WORK = "function handler(r) { var n = 0; for (var i = 0; i < Number(r.query.n || 0); i++)" \
       " { n += i; } if (r.query.spin) while (true) {} return {body: String(n)}; }"


def _windowed(window: float):
    """A context loaded under a 0.2 s budget whose clock starts at most every `window`."""
    from fazt.runtime import engine
    from fazt.runtime.bridge import Bridge

    limits = engine.Limits(memory_bytes=32 << 20, timeout_ms=100, cpu_seconds=0.2,
                           clock_window=window)
    bridge = Bridge("alpha", None, SiteLogs(), None)
    return engine, limits, engine.load(WORK, limits, bridge)


def test_a_clock_not_started_again_in_its_window_still_stops_a_runaway(monkeypatch):
    engine, limits, loaded = _windowed(3600)
    assert engine.invoke(loaded, request(), limits).body == b"0"
    started = []
    monkeypatch.setattr(engine, "arm_cpu_clock", lambda *a: started.append(a))
    assert engine.invoke(loaded, request(), limits).body == b"0"
    assert started == []  # within the window: the clock of the first request counts on
    began = time.monotonic()
    answer = engine.invoke(loaded, request(query={"spin": "1"}), limits)
    assert answer.error == "js_timeout" and time.monotonic() - began < 2


def test_a_clock_starts_again_once_its_window_has_passed():
    engine, limits, loaded = _windowed(0.05)
    assert engine.invoke(loaded, request(), limits).body == b"0"
    end = time.process_time() + 0.3  # the process burns more than the budget meanwhile
    while time.process_time() < end:
        pass
    # A handler that works through interrupt checks: under a clock that had not started
    # again, 0.3 s past its start, it would be cut short.
    answer = engine.invoke(loaded, request(query={"n": "300000"}), limits)
    assert answer.error is None and answer.body == str(sum(range(300000))).encode()


def test_a_clock_window_counts_from_the_start_of_the_load():
    """The clock a context's load started counts its top-level code: a request soon after
    the first is not left the budget minus the load's CPU (README: a run on the loop has
    2 to 3 ms at least)."""
    from fazt.runtime import engine
    from fazt.runtime.bridge import Bridge

    limits = engine.Limits(memory_bytes=32 << 20, timeout_ms=100, cpu_seconds=0.2,
                           clock_window=0.05)
    slow_start = "var t = Date.now(); while (Date.now() - t < 150) {}\n" + WORK
    loaded = engine.load(slow_start, limits, Bridge("alpha", None, SiteLogs(), None))
    assert engine.invoke(loaded, request(), limits).body == b"0"
    # (about 0.1 s of CPU: within the budget, not within what the load left of it)
    answer = engine.invoke(loaded, request(query={"n": "1000000"}), limits)
    assert answer.error is None and answer.body == str(sum(range(1000000))).encode()


def test_the_loop_loads_contexts_sparingly(rt):
    rt.env.get("alpha")
    rt.env.get("beta")
    assert on_loop(rt, LOOP_COUNTER).body == b"1"
    assert on_loop(rt, LOOP_COUNTER, site="beta") is None  # a load just happened
    assert on_loop(rt, LOOP_COUNTER).body == b"2"  # alpha's context was kept meanwhile


def test_the_loops_context_is_dropped_when_its_heap_grows(loop_rt):
    big = "var keep = [];\nfunction handler(r) {" \
          " if (r.query.grow) keep.push('x'.repeat(2 << 20));" \
          " return {body: String(keep.length)}; }"
    assert [on_loop(loop_rt, big).body for _ in range(2)] == [b"0", b"0"]
    assert on_loop(loop_rt, big, query={"grow": "1"}).body == b"1"  # not measured this run
    loop_rt.check_loop_context()  # the once-a-second sweep
    assert on_loop(loop_rt, big).body == b"0"  # a fresh context


def test_no_loop_runs_without_warm_contexts(loop_rt):
    loop_rt.resize(slots=3, memory_mb=32, timeout_ms=TIMEOUT_MS, warm_mb=0)
    assert on_loop(loop_rt, LOOP_COUNTER) is None


def test_a_full_house_is_refused_on_the_loop_too(loop_rt):
    loop_rt.resize(slots=0, memory_mb=32, timeout_ms=TIMEOUT_MS)
    with pytest.raises(JsBusy):
        on_loop(loop_rt, LOOP_COUNTER)


# -- fazt.kv -----------------------------------------------------------------

def test_kv_is_private_to_each_site(rt):
    write = "function handler(r) { fazt.kv.set('k', r.query.v); return {body: 'ok'}; }"
    read = "function handler() { return {body: {v: fazt.kv.get('k'), keys: fazt.kv.list()}}; }"
    call(rt, write, site="alpha", query={"v": "from alpha"})
    call(rt, write, site="beta", query={"v": "from beta"})
    assert call(rt, read, site="alpha")[1] == {"v": "from alpha", "keys": ["k"]}
    assert call(rt, read, site="beta")[1] == {"v": "from beta", "keys": ["k"]}
    assert call(rt, read, site="gamma")[1] == {"keys": []}  # missing: undefined


def test_kv_values_are_json_and_list_takes_a_prefix(rt):
    source = """function handler() {
      fazt.kv.set('user:1', {name: 'ada', tags: ['a']});
      fazt.kv.set('user:2', null);
      fazt.kv.set('other', 3);
      const had = fazt.kv.delete('other');
      return {body: {one: fazt.kv.get('user:1'), two: fazt.kv.get('user:2'),
                     gone: fazt.kv.get('other') === undefined, had: had,
                     users: fazt.kv.list('user:'), all: fazt.kv.list()}};
    }"""
    assert call(rt, source)[1] == {"one": {"name": "ada", "tags": ["a"]}, "two": None,
                                   "gone": True, "had": True,
                                   "users": ["user:1", "user:2"], "all": ["user:1", "user:2"]}


def test_kv_list_prefix_is_exact_whatever_the_key_holds(rt):
    source = r"""function handler() {
      const keys = ['a\u0000b', 'a\u0000', 'a', 'ab', 'a%', '\u{1F600}x', 'b'];
      for (const k of keys) fazt.kv.set(k, 1);
      let lone = 'no error';
      try { fazt.kv.list('\ud800'); } catch (e) { lone = e.name + ': ' + e.message; }
      return {body: {nul: fazt.kv.list('a\u0000'), a: fazt.kv.list('a'),
                     pct: fazt.kv.list('%'), emoji: fazt.kv.list('\u{1F600}'), lone: lone}};
    }"""
    body = call(rt, source)[1]
    assert body["nul"] == ["a\x00", "a\x00b"]
    assert body["a"] == ["a", "a\x00", "a\x00b", "a%", "ab"]
    assert body["pct"] == [] and body["emoji"] == ["\U0001F600x"]
    assert body["lone"].startswith("TypeError") and "surrogate" in body["lone"]
    assert rt.logs("alpha") == []  # no "fazt internal error" line


def test_kv_limits_are_js_exceptions(rt):
    rt.kv.max_site = 2000
    source = """function handler() {
      const out = [];
      for (const f of [() => fazt.kv.set('k'.repeat(513), 1),
                       () => fazt.kv.set('big', 'x'.repeat(MAX)),
                       () => fazt.kv.set(5, 1),
                       () => fazt.kv.set('u', undefined),
                       () => { for (let i = 0; i < 9; i++) fazt.kv.set('f' + i, 'x'.repeat(300)); },
                      ]) {
        try { f(); out.push('no error'); } catch (e) { out.push(e.name + ': ' + e.message); }
      }
      return {body: out};
    }""".replace("MAX", str(MAX_VALUE_BYTES))
    errors = call(rt, source)[1]
    assert errors[0].startswith("RangeError") and "512" in errors[0]
    assert errors[1].startswith("RangeError") and str(MAX_VALUE_BYTES) in errors[1]
    assert errors[2].startswith("TypeError")
    assert errors[3].startswith("TypeError")
    assert errors[4].startswith("RangeError") and "2000" in errors[4]
    assert rt.kv.used_bytes("alpha") <= 2000


# -- console ----------------------------------------------------------------

def test_console_goes_to_a_bounded_ring(rt):
    source = """function handler() {
      for (let i = 0; i < 250; i++) console.log('line', i, {i: i});
      console.warn('x'.repeat(5000));
      return {body: 'ok'};
    }"""
    call(rt, source)
    lines = rt.logs("alpha")
    assert len(lines) == 200
    assert lines[-2]["message"] == 'line 249 {"i":249}'
    assert lines[-1]["level"] == "warn" and len(lines[-1]["message"]) <= 1000
    assert set(lines[0]) == {"time", "level", "message"}
    assert rt.logs("beta") == []


def test_site_logs_forget_the_least_recent_site():
    logs = SiteLogs(lines_per_site=2, line_chars=10, max_sites=2)
    for site in ("a", "b", "a", "c"):
        logs.add(site, "log", "0123456789abc")
    assert logs.lines("b") == []
    assert [line["message"] for line in logs.lines("a")] == ["012345678…"] * 2
    assert len(logs.lines("c")) == 1
    logs.forget("a")
    assert logs.lines("a") == [] and len(logs.lines("c")) == 1
    logs.keep_only({"a", "b"})
    assert logs.lines("c") == []


def test_stats_names(rt):
    call(rt, "function handler() { return {body: 'x'}; }")
    stats = rt.stats()
    assert {"slots", "in_use", "rejected", "timeouts", "errors", "runs"} <= stats.keys()
    assert stats["runs"] == 1 and stats["slots"] == 3
