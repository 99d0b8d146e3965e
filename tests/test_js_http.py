"""Site back ends over real HTTP: the contract of SPEC's "JavaScript back ends"."""

import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, Admin, Server, eventually, fazt

ECHO = """
function handler(request) {
  return {status: 201, headers: {"X-Echo": "yes"},
          body: {method: request.method, path: request.path, query: request.query,
                 agent: request.headers["x-agent"], json: request.json, body: request.body}};
}
"""
SLOW = """
function handler(request) {
  const end = Date.now() + 1500; while (Date.now() < end) {}
  return {body: "done"};
}
"""
SPIN = "function handler() { while (true) {} }"
KV = """
function handler(request) {
  if (request.method === "POST") { fazt.kv.set("color", request.json.color); }
  console.log("color asked");
  return {body: {color: fazt.kv.get("color"), keys: fazt.kv.list("")}};
}
"""


def make_site(root: Path, name: str, script: str, extra: dict | None = None) -> Path:
    site = root / name
    (site / "api").mkdir(parents=True)
    (site / "api" / "main.js").write_text(script)
    (site / "index.html").write_text(f"<p>{name}</p>")
    for path, text in (extra or {}).items():
        (site / path).write_text(text)
    return site


def deploy(db: Path, site: Path, name: str) -> None:
    fazt("deploy", str(site), "--site", name, "--db", str(db))


# The tests that take `module_server` share one server and database: each deploys its own
# site names and puts back what it changes.


def test_echo_handler(module_server, module_db, tmp_path):
    server = module_server
    deploy(module_db, make_site(tmp_path, "echo", ECHO), "echo")
    r = server.request("POST", "/api/things/1?x=1&y=two", host="echo.localhost",
                       json={"a": [1, 2]}, headers={"X-Agent": "pytest"})
    assert r.status_code == 201 and r.headers["X-Echo"] == "yes"
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {"method": "POST", "path": "/api/things/1", "query": {"x": "1", "y": "two"},
                        "agent": "pytest", "json": {"a": [1, 2]}, "body": '{"a": [1, 2]}'}
    # the script's source is never served
    assert "function handler" not in server.get("/api/main.js", host="echo.localhost").text
    assert server.get("/", host="echo.localhost").text == "<p>echo</p>"


def test_timeout_is_504_and_the_site_recovers(module_server, module_db, tmp_path):
    server, db_path = module_server, module_db
    fazt("config", "set", "js_timeout_ms", "500", "--db", str(db_path))
    try:
        site = make_site(tmp_path, "spin", SPIN)
        deploy(db_path, site, "spin")  # the running server serves both from its next request
        r = server.get("/api/x", host="spin.localhost")
        assert r.status_code == 504 and r.json()["error"]["code"] == "js_timeout"
        (site / "api" / "main.js").write_text("function handler() { return {body: 'fine'}; }")
        deploy(db_path, site, "spin")
        assert server.get("/api/x", host="spin.localhost").text == "fine"
    finally:
        fazt("config", "reset", "js_timeout_ms", "--db", str(db_path))


def test_syntax_error_fails_the_deploy_and_keeps_the_old_version(module_server, module_db,
                                                                 tmp_path):
    server, db_path = module_server, module_db
    site = make_site(tmp_path, "app", "function handler() { return {body: 'v1'}; }")
    deploy(db_path, site, "app")
    (site / "api" / "main.js").write_text("function handler() {\n  return {body: 'v2';\n}\n")
    result = fazt("deploy", str(site), "--site", "app", "--db", str(db_path), check=False)
    assert result.returncode == 1 and "does not compile" in result.stderr
    assert "line 2" in result.stderr and "Traceback" not in result.stderr
    assert server.get("/api/x", host="app.localhost").text == "v1"


def test_flood_gets_429_for_the_excess_while_static_and_cockpit_answer(tmp_path):
    from conftest import init_db

    db = init_db(tmp_path / "data.db")
    fazt("config", "set", "max_concurrent_js", "2", "--db", str(db))
    fazt("config", "set", "user_threads", "10", "--db", str(db))
    deploy(db, make_site(tmp_path, "slow", SLOW), "slow")
    with Server.running(db) as srv:
        admin = Admin(srv)
        results = []
        barrier = threading.Barrier(6)

        def hit():
            barrier.wait()
            r = srv.get("/api/work", host="slow.localhost", timeout=30)
            results.append((r.status_code, r.headers.get("Retry-After")))

        threads = [threading.Thread(target=hit) for _ in range(6)]
        for t in threads:
            t.start()
        assert eventually(lambda: admin.status()["js"]["in_use"] == 2)  # both slots busy
        during = time.time()
        assert srv.get("/", host="slow.localhost").text == "<p>slow</p>"
        assert admin.get("/api/system/status").status_code == 200
        assert time.time() - during < 1.0  # neither waited for a JS slot
        for t in threads:
            t.join()
        statuses = sorted(s for s, _ in results)
        assert statuses == [200, 200, 429, 429, 429, 429], statuses
        assert all(retry for s, retry in results if s == 429)
        assert admin.status()["js"]["rejected"] == 4


def test_two_flooding_sites_leave_a_slot_for_a_third(tmp_path):
    from conftest import init_db

    db = init_db(tmp_path / "data.db")
    fazt("config", "set", "max_concurrent_js", "3", "--break-glass", "--db", str(db))
    fazt("config", "set", "user_threads", "10", "--break-glass", "--db", str(db))
    for name in ("slowa", "slowb"):
        deploy(db, make_site(tmp_path, name, SLOW), name)
    deploy(db, make_site(tmp_path, "quick", "function handler() { return {body: 'quick'}; }"),
           "quick")
    with Server.running(db) as srv:
        admin = Admin(srv)
        results: dict[str, list] = {"slowa": [], "slowb": []}

        def hit(site):
            r = srv.get("/api/work", host=f"{site}.localhost", timeout=30)
            results[site].append(r.status_code)

        threads = [threading.Thread(target=hit, args=(site,)) for site in results
                   for _ in range(3)]
        for t in threads:
            t.start()
        assert eventually(lambda: admin.status()["js"]["in_use"] == 2
                          and sum(len(r) for r in results.values()) == 4)
        r = srv.get("/api/x", host="quick.localhost", timeout=10)
        assert (r.status_code, r.text) == (200, "quick")  # the third site still runs
        for t in threads:
            t.join()
        assert sorted(results["slowa"]) == sorted(results["slowb"]) == [200, 429, 429]
        js = admin.status()["js"]
        assert js["rejected_over_share"] == 4 and js["backends"] == 3


def test_kv_is_private_to_each_site_and_logs_are_visible(module_server, module_db, tmp_path):
    server, db_path = module_server, module_db
    for name in ("one", "two"):
        deploy(db_path, make_site(tmp_path, name, KV), name)
    server.request("POST", "/api/c", host="one.localhost", json={"color": "red"})
    server.request("POST", "/api/c", host="two.localhost", json={"color": "blue"})
    assert server.get("/api/c", host="one.localhost").json()["color"] == "red"
    assert server.get("/api/c", host="two.localhost").json()["color"] == "blue"
    admin = Admin(server)
    lines = admin.get("/api/sites/one/logs").json()["lines"]
    assert any("color asked" in line["message"] for line in lines)
    # a removed site's console goes with it: a new site of the same name starts clean
    assert admin.session.delete(server.url("/api/sites/one"), timeout=30).status_code == 200
    deploy(db_path, make_site(tmp_path / "again", "one", "function handler() {}"), "one")
    assert eventually(lambda: admin.get("/api/sites/one/logs").status_code == 200)
    assert admin.get("/api/sites/one/logs").json()["lines"] == []
    assert admin.get("/api/sites/two/logs").json()["lines"] != []


def test_a_site_removed_by_another_process_loses_its_console(instance, db_path, tmp_path):
    """What the server's config watch does when `fazt site remove` ran elsewhere."""
    for name in ("one", "two"):
        deploy(db_path, make_site(tmp_path, name, KV), name)
    instance.reload_if_changed()
    for name in ("one", "two"):
        instance.runtime.logs_ring.add(name, "log", f"{name} was here")
    fazt("site", "remove", "two", "--db", str(db_path))
    instance.reload_if_changed()
    assert instance.runtime.logs("two") == []
    assert [line["message"] for line in instance.runtime.logs("one")] == ["one was here"]


def test_the_demo_site(module_server, module_db):
    fazt("deploy", str(ROOT / "examples" / "hello"), "--site", "hello", "--db", str(module_db))
    first = module_server.get("/api/hello?name=ada", host="hello.localhost").json()
    second = module_server.get("/api/hello?name=ada", host="hello.localhost").json()
    assert first["hello"] == "ada" and second["visits"] == first["visits"] + 1


@pytest.mark.parametrize("script,code", [
    ("function handler() { throw new Error('kaput'); }", "js_error"),
    ("function handler() { return undefined; }", "bad_response"),
    ("function handler() { let a = []; while (true) a.push('x'.repeat(1000)); }",
     "js_memory_limit"),
])
def test_script_failures_are_json_errors(module_server, module_db, tmp_path, script, code):
    server, site = module_server, code.replace("_", "-")
    deploy(module_db, make_site(tmp_path, site, script), site)
    r = server.get("/api/x", host=f"{site}.localhost")
    assert r.status_code == 500 and r.json()["error"]["code"] == code
    assert "Traceback" not in r.text
    assert server.get("/_fazt/health").status_code == 200
