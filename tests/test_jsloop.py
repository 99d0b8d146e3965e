"""Quick handlers run on the event loop (Runtime.handle_on_loop, JsPath.on_loop): their
answers are the ones a thread gives, and whatever a run there cannot finish (fazt.kv, past
the loop's budget, out of memory) starts over on a thread with nothing of the first try
showing: no second write, no console line twice, no global changed twice."""

import threading

from conftest import Admin, configure, eventually, fazt
from test_js_http import deploy, make_site

QUICK = """
var served = 0;
function handler(request) {
  served++;
  console.log("quick " + request.query.i);
  return { headers: { "X-Served": String(served) }, body: { i: request.query.i } };
}
"""
COUNTER = """
var calls = 0;
function handler(request) {
  calls++;  // a second run of this request would show here and in the count
  console.log("before kv " + request.query.i);
  var count = (fazt.kv.get("count") || 0) + 1;
  fazt.kv.set("count", count);
  return { body: { count: count, calls: calls } };
}
"""
BUSY = """
var calls = 0;
function handler(request) {
  calls++;
  console.log("busy " + request.query.i);
  var end = Date.now() + 40, n = 0;
  while (Date.now() < end) { n++; }
  return { body: { calls: calls, spun: n > 0 } };
}
"""
CATCHER = """
function handler(request) {
  var seen;
  try { fazt.kv.set("k", "v"); seen = "stored"; } catch (e) { seen = "caught " + e.message; }
  return { body: seen };
}
"""
BOMB = """
function handler(request) {
  var parts = [];
  for (;;) { parts.push("x".repeat(1 << 20) + parts.length); }
}
"""
CHATTY = """
function handler(request) {
  for (var i = 0; i < 300; i++) console.log("r" + request.query.r + " line " + i);
  return { body: "ok" };
}
"""
LATER = """
function handler(request) {
  if (request.query.hit) {
    Promise.resolve().then(function () {
      fazt.kv.set("hits", (fazt.kv.get("hits") || 0) + 1);
      console.log("hit " + request.query.hit);
    });
    return { body: "queued" };
  }
  return { body: { hits: fazt.kv.get("hits") || 0 } };
}
"""
SECRET = """
function handler(request) {
  console.log("the key is " + fazt.env.API_KEY);
  return { body: { length: fazt.env.API_KEY.length } };
}
"""


def loop_answers(admin: Admin) -> int:
    return admin.status()["connections"]["js_loop_answers"]


def site_lines(admin: Admin, site: str) -> list[str]:
    return [line["message"] for line in admin.get(f"/api/sites/{site}/logs").json()["lines"]]


def test_a_quick_handler_is_answered_on_the_loop(module_server, module_db, tmp_path):
    server, admin = module_server, Admin(module_server)
    deploy(module_db, make_site(tmp_path, "quick", QUICK), "quick")
    before = loop_answers(admin)
    answers = [server.get(f"/api/q?i={i}", host="quick.localhost") for i in range(20)]
    assert [r.json() for r in answers] == [{"i": str(i)} for i in range(20)]
    assert all(r.headers["Cache-Control"] == "no-store" for r in answers)
    # the first request reads the site's secrets and script on a thread; then the loop runs it
    assert loop_answers(admin) - before >= 15
    # one context on the loop serves them in turn: its globals persist, as a thread's do
    served = [int(r.headers["X-Served"]) for r in answers[-10:]]
    assert served == sorted(served) and served[-1] > served[0]
    assert eventually(lambda: site_lines(admin, "quick").count("quick 7") == 1)
    assert sum(line.startswith("quick ") for line in site_lines(admin, "quick")) == 20


def test_fazt_kv_moves_the_request_to_a_thread_once(module_server, module_db, tmp_path):
    server, admin = module_server, Admin(module_server)
    deploy(module_db, make_site(tmp_path, "counter", COUNTER), "counter")
    before = loop_answers(admin)
    counts = [server.get(f"/api/c?i={i}", host="counter.localhost").json() for i in range(6)]
    # each request stored exactly once, and ran once in the context that answered it
    assert [c["count"] for c in counts] == [1, 2, 3, 4, 5, 6]
    assert loop_answers(admin) == before  # the loop never answered it
    lines = eventually(lambda: [m for m in site_lines(admin, "counter") if "before kv" in m]
                       if len(site_lines(admin, "counter")) >= 6 else None)
    assert sorted(lines) == [f"before kv {i}" for i in range(6)]  # once each, not twice


def test_a_handler_logs_every_line_wherever_it_runs(module_server, module_db, tmp_path):
    """Past the lines a run on the loop keeps (LoopBridge.MAX_LINES), the request moves to a
    thread, which logs them all: the same handler logs the same lines on either."""
    server = module_server
    deploy(module_db, make_site(tmp_path, "chatty", CHATTY), "chatty")
    for r in range(3):
        assert server.get(f"/api/x?r={r}", host="chatty.localhost").text == "ok"

    def stored() -> list[str]:
        out = fazt("site", "logs", "chatty", "-n", "2000", "--db", str(module_db)).stdout
        return [line for line in out.splitlines() if " line " in line]

    lines = eventually(lambda: stored() if len(stored()) >= 900 else None)
    assert lines and len(lines) == 900, len(stored())
    for r in range(3):
        assert sum(f"r{r} line " in line for line in lines) == 300
        assert sum(line.endswith(f"r{r} line 299") for line in lines) == 1


def test_a_script_that_catches_the_refusal_still_stores_once(module_server, module_db,
                                                            tmp_path):
    server = module_server
    deploy(module_db, make_site(tmp_path, "catcher", CATCHER), "catcher")
    for _ in range(3):
        r = server.get("/api/x", host="catcher.localhost")
        assert (r.status_code, r.text) == (200, "stored")


def test_work_queued_by_a_handler_that_answered_at_once_is_done_once(module_server,
                                                                     module_db, tmp_path):
    """`.then(...)` after a handler returned: done in its request (on a thread, as it writes),
    once, instead of never."""
    server, admin = module_server, Admin(module_server)
    deploy(module_db, make_site(tmp_path, "later", LATER), "later")
    for i in range(5):
        assert server.get(f"/api/x?hit={i}", host="later.localhost").text == "queued"
    assert server.get("/api/x", host="later.localhost").json() == {"hits": 5}
    lines = eventually(lambda: [m for m in site_lines(admin, "later") if m.startswith("hit")]
                       if len(site_lines(admin, "later")) >= 5 else None)
    assert sorted(lines) == [f"hit {i}" for i in range(5)]


def test_a_slow_handler_leaves_the_loop_and_still_answers(module_server, module_db, tmp_path):
    server, admin = module_server, Admin(module_server)
    deploy(module_db, make_site(tmp_path, "busy", BUSY), "busy")
    before = loop_answers(admin)
    for i in range(4):
        r = server.get(f"/api/b?i={i}", host="busy.localhost")
        assert r.status_code == 200 and r.json()["spun"] is True
    assert loop_answers(admin) == before  # 40 ms is far past the loop's budget
    lines = eventually(lambda: [m for m in site_lines(admin, "busy") if m.startswith("busy")]
                       if len(site_lines(admin, "busy")) >= 4 else None)
    assert sorted(lines) == [f"busy {i}" for i in range(4)]  # the interrupted tries left none
    # the static files of the site are served meanwhile, as ever
    assert server.get("/", host="busy.localhost").text == "<p>busy</p>"


def test_a_memory_bomb_on_the_loop_is_the_threads_error(module_server, module_db, tmp_path):
    server = module_server
    deploy(module_db, make_site(tmp_path, "bomb", BOMB), "bomb")
    for _ in range(2):
        r = server.get("/api/x", host="bomb.localhost")
        assert r.status_code == 500 and r.json()["error"]["code"] == "js_memory_limit"
    assert server.get("/_fazt/health").status_code == 200


def test_secrets_on_the_loop_are_read_and_kept_out_of_the_log(module_server, module_db,
                                                              tmp_path):
    server, admin = module_server, Admin(module_server)
    deploy(module_db, make_site(tmp_path, "secret", SECRET), "secret")
    fazt("site", "env", "set", "secret", "API_KEY", "hunter2-long-secret", "--db",
         str(module_db))
    before = loop_answers(admin)
    for _ in range(5):
        assert server.get("/api/x", host="secret.localhost").json() == {"length": 19}
    assert loop_answers(admin) > before
    lines = eventually(lambda: [m for m in site_lines(admin, "secret") if "the key" in m]
                       if len(site_lines(admin, "secret")) >= 5 else None)
    assert lines and all(m == "the key is [secret]" for m in lines)


def test_the_slots_count_runs_on_the_loop(db_path, tmp_path):
    """One slot, held by a slow handler on a thread: a quick site's request on the loop
    gets the same 429 at once, and runs again once the slot is free."""
    from conftest import Server

    configure(db_path, max_concurrent_js="1")
    slow = make_site(tmp_path, "slow", "function handler() { var e = Date.now() + 1500;"
                     " while (Date.now() < e) {} return { body: 'slow' }; }")
    deploy(db_path, slow, "slow")
    deploy(db_path, make_site(tmp_path, "quick", QUICK), "quick")
    with Server.running(db_path) as server:
        admin = Admin(server)
        for _ in range(3):  # the quick site's context is warm on the loop
            assert server.get("/api/q?i=0", host="quick.localhost").status_code == 200
        before = loop_answers(admin)
        done = []
        holder = threading.Thread(target=lambda: done.append(
            server.get("/api/s", host="slow.localhost").text))
        holder.start()
        assert eventually(lambda: admin.status()["js"]["in_use"] == 1, timeout=10)
        r = server.get("/api/q?i=1", host="quick.localhost")
        assert r.status_code == 429 and r.headers["Retry-After"]
        holder.join()
        assert done == ["slow"]
        assert server.get("/api/q?i=2", host="quick.localhost").status_code == 200
        assert loop_answers(admin) > before


def test_a_large_script_runs_on_threads(module_server, module_db, tmp_path):
    """Compiling it would hold the loop (LOOP_SCRIPT_BYTES): its requests go to threads."""
    server, admin = module_server, Admin(module_server)
    big = "// " + "padding " * 9000 + "\n" + QUICK
    deploy(module_db, make_site(tmp_path, "large", big), "large")
    before = loop_answers(admin)
    for i in range(5):
        assert server.get(f"/api/q?i={i}", host="large.localhost").json() == {"i": str(i)}
    assert loop_answers(admin) == before
