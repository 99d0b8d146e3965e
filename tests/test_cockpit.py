"""The cockpit's admin API: authentication, cross-site protection, tokens, config,
deploys and backups, in-process on the real Router and against a real server."""

import re
import sqlite3
import time
from pathlib import Path

from conftest import PASSWORD, USERNAME, Server, zip_of
from falcon import testing

from fazt.app import Router
from fazt.auth import SESSION_SECONDS, Auth
from fazt.instance import Instance

ADMIN = {"Host": "admin.localhost"}
CSRF = {"X-Fazt-Request": "1"}
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
# Every admin API call (method, path); each must refuse a caller with no session.
API_CALLS = [
    ("GET", "/api/session"), ("POST", "/api/logout"), ("POST", "/api/logout-all"),
    ("GET", "/api/system/status"), ("POST", "/api/system/recalibrate"),
    ("GET", "/api/config"), ("PUT", "/api/config"),
    ("GET", "/api/tokens"), ("POST", "/api/tokens"), ("DELETE", "/api/tokens/1"),
    ("GET", "/api/sites"), ("DELETE", "/api/sites/mysite"), ("GET", "/api/sites/mysite/logs"),
    ("POST", "/api/deploy?site=mysite"), ("GET", "/api/backup"), ("GET", "/api/no-such-call"),
]


def call(client, method: str, path: str, headers: dict | None = None, **kw):
    path, _, query = path.partition("?")
    return client.simulate_request(method, path, query_string=query or None,
                                   headers={**ADMIN, **(headers or {})}, **kw)


def sign_in(client, remote_addr: str = "127.0.0.1") -> dict:
    """Headers that carry a fresh session cookie (and the CSRF header)."""
    r = call(client, "POST", "/api/login", CSRF, remote_addr=remote_addr,
             json={"username": USERNAME, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Cookie": f"fazt_session={r.cookies['fazt_session'].value}", **CSRF}


def test_dashboard_comes_from_the_pinned_map_with_security_headers(client, instance):
    page = call(client, "GET", "/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'src="/app.js"' in page.text and "<script>" not in page.text
    assert "style=" not in page.text  # the CSP forbids inline styles
    for name in ("app.js", "api.js", "chart.js", "style.css"):
        asset = call(client, "GET", "/" + name)
        assert asset.status_code == 200, name
        assert asset.content == instance.vfs.content(
            "admin", instance.vfs.find("admin", name))
    assert call(client, "GET", "/no-such-page").status_code == 404
    r = call(client, "POST", "/")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
    for response in (page, call(client, "GET", "/api/config"), call(client, "GET", "/nope")):
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (name, response.status)
    assert call(client, "GET", "/api/config").headers["cache-control"] == "no-store"
    assert call(client, "GET", "/simulator/").status_code == 200  # the simulator is pinned too


def test_login_sets_a_strict_host_only_cookie(client):
    r = call(client, "POST", "/api/login", CSRF,
             json={"username": USERNAME, "password": PASSWORD})
    assert r.status_code == 200 and r.json == {"username": USERNAME}
    cookie = r.headers["set-cookie"]
    assert cookie.startswith("fazt_session=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Domain" not in cookie  # host-only: NAME.D never receives it
    assert "Secure" not in cookie  # plain HTTP here; over HTTPS it is Secure
    https = call(client, "POST", "/api/login", CSRF, protocol="https",
                 json={"username": USERNAME, "password": PASSWORD})
    assert "Secure" in https.headers["set-cookie"]
    # a forwarding header from a peer not in trusted_proxies is not believed
    forged = call(client, "POST", "/api/login", {**CSRF, "X-Forwarded-Proto": "https"},
                  json={"username": USERNAME, "password": PASSWORD})
    assert "Secure" not in forged.headers["set-cookie"]
    session = call(client, "GET", "/api/session", sign_in(client))
    assert session.status_code == 200 and session.json == {"username": USERNAME}


def test_wrong_password_is_401(client):
    for body in ({"username": USERNAME, "password": "wrong password"},
                 {"username": "someone", "password": PASSWORD}):
        r = call(client, "POST", "/api/login", CSRF, json=body)
        assert r.status_code == 401
        assert r.json["error"]["code"] == "wrong_credentials"
        assert "set-cookie" not in r.headers


def test_every_admin_call_without_a_session_is_401(client):
    for method, path in API_CALLS:
        for headers in ({}, CSRF):
            r = call(client, method, path, headers)
            assert r.status_code == 401, (method, path, r.status)
            assert r.json["error"]["code"] == "unauthorized"
            for name, value in SECURITY_HEADERS.items():
                assert r.headers.get(name) == value


def test_forged_expired_and_foreign_sessions_and_tokens_are_401(client, instance):
    good = instance.auth.issue()
    body, _, signature = good.rpartition(".")
    expired = instance.auth.issue(now=time.time() - SESSION_SECONDS - 60)
    other_key = Auth(USERNAME, instance.auth.password_hash, "another key").issue()
    longer = body.replace(body.split(".")[1], str(int(body.split(".")[1]) + 10**6))
    forged = [
        "garbage", "", "a.b.c", f"{body}.{signature[:-2]}xx", f"{longer}.{signature}",
        expired, other_key, good + "x",
    ]
    for value in forged:
        r = call(client, "GET", "/api/system/status", {"Cookie": f"fazt_session={value}"})
        assert r.status_code == 401, value
    for header in ("Bearer fazt_not_a_real_token", "Bearer ", "Basic b3duZXI6cGFzcw==",
                   f"Bearer {good}"):
        r = call(client, "GET", "/api/system/status", {"Authorization": header})
        assert r.status_code == 401, header
    assert call(client, "GET", "/api/system/status",
                {"Cookie": f"fazt_session={good}"}).status_code == 200


def test_cross_site_state_changes_are_refused(client):
    session = sign_in(client)
    cookie_only = {"Cookie": session["Cookie"]}
    refused = [
        cookie_only,  # a cross-site form: no custom header
        {**session, "Origin": "http://evil.test"},
        {**session, "Origin": "http://mysite.localhost"},  # a sibling site of the same domain
        {**session, "Origin": "null"},
        {**session, "Sec-Fetch-Site": "cross-site"},
        {**session, "Sec-Fetch-Site": "same-site"},
    ]
    for headers in refused:
        r = call(client, "POST", "/api/tokens", headers, json={"name": "x"})
        assert r.status_code == 403, headers
        assert r.json["error"]["code"] == "cross_site_refused"
    for method, path in (("DELETE", "/api/sites/x"), ("PUT", "/api/config"),
                         ("POST", "/api/logout-all"), ("POST", "/api/deploy?site=x")):
        assert call(client, method, path, cookie_only).status_code == 403, path
    assert call(client, "GET", "/api/tokens", session).json == {"tokens": []}
    login = call(client, "POST", "/api/login", {"Origin": "http://evil.test", **CSRF},
                 json={"username": USERNAME, "password": PASSWORD})
    assert login.status_code == 403
    same = {**session, "Origin": "http://admin.localhost", "Sec-Fetch-Site": "same-origin"}
    assert call(client, "POST", "/api/tokens", same, json={"name": "ok"}).status_code == 201


def test_brute_force_gets_429_with_retry_after(client):
    wrong = {"username": USERNAME, "password": "not the password"}
    for _ in range(5):
        r = call(client, "POST", "/api/login", CSRF, json=wrong, remote_addr="10.0.0.9")
        assert r.status_code == 401
    r = call(client, "POST", "/api/login", CSRF, json=wrong, remote_addr="10.0.0.9")
    assert r.status_code == 429
    assert int(r.headers["retry-after"]) >= 1
    assert r.json["error"]["code"] == "too_many_attempts"
    right = {"username": USERNAME, "password": PASSWORD}
    # Even the right password waits: guessing must not go on while blocked.
    assert call(client, "POST", "/api/login", CSRF, json=right,
                remote_addr="10.0.0.9").status_code == 429
    assert call(client, "POST", "/api/login", CSRF, json=right,
                remote_addr="10.0.0.10").status_code == 200


def test_logout_ends_the_session(client):
    session = sign_in(client)
    r = call(client, "POST", "/api/logout", session)
    assert r.status_code == 200
    assert re.match(r'fazt_session="?"?;.*expires=', r.headers["set-cookie"], re.I)
    # A copy of the cookie taken before logout no longer works either.
    assert call(client, "GET", "/api/system/status", session).status_code == 401


def test_logout_everywhere_rotates_the_key_in_ram_and_in_the_database(client, db_path):
    first, second = sign_in(client), sign_in(client)
    with sqlite3.connect(db_path) as conn:
        key_before = conn.execute("SELECT value FROM secrets WHERE key='session_key'").fetchone()
    assert call(client, "POST", "/api/logout-all", first).status_code == 200
    for old in (first, second):
        assert call(client, "GET", "/api/system/status", old).status_code == 401
    with sqlite3.connect(db_path) as conn:
        key_after = conn.execute("SELECT value FROM secrets WHERE key='session_key'").fetchone()
    assert key_after != key_before
    fresh = sign_in(client)
    assert call(client, "GET", "/api/system/status", fresh).status_code == 200
    # After a restart the old sessions stay dead, the new one lives.
    rebooted = Instance(str(db_path)).boot()
    try:
        again = testing.TestClient(Router(rebooted))
        assert call(again, "GET", "/api/session", second).status_code == 401
        assert call(again, "GET", "/api/session", fresh).status_code == 200
    finally:
        rebooted.close()


def test_tokens_create_list_revoke_and_deploy_with_bearer(client):
    session = sign_in(client)
    created = call(client, "POST", "/api/tokens", session, json={"name": "ci"})
    assert created.status_code == 201
    token = created.json["token"]
    listed = call(client, "GET", "/api/tokens", session).json["tokens"]
    assert [t["name"] for t in listed] == ["ci"]
    assert token not in str(listed)  # shown once, stored as a hash
    bearer = {"Authorization": f"Bearer {token}"}
    # No CSRF header: a Bearer call carries no ambient credential.
    r = call(client, "POST", "/api/deploy?site=mysite", bearer,
             body=zip_of({"index.html": "<h1>by token</h1>", "css/a.css": "p{}"}))
    assert r.status_code == 200, r.text
    assert r.json == {"site": "mysite", "version": 1, "files": 2, "bytes": 20, "skipped": []}
    page = client.simulate_get("/", headers={"Host": "mysite.localhost"})
    assert page.text == "<h1>by token</h1>"
    assert call(client, "GET", "/api/sites", bearer).json["sites"][0]["name"] == "mysite"
    assert call(client, "GET", "/api/system/status", bearer).status_code == 200
    # Tokens deploy and read; the owner's other powers need the session.
    for method, path in (("GET", "/api/tokens"), ("GET", "/api/backup"),
                         ("PUT", "/api/config"), ("DELETE", "/api/sites/mysite"),
                         ("POST", "/api/tokens"), ("POST", "/api/logout-all")):
        assert call(client, method, path, bearer).status_code == 403, path
    token_id = listed[0]["id"]
    assert call(client, "DELETE", f"/api/tokens/{token_id}", session).status_code == 200
    assert call(client, "DELETE", f"/api/tokens/{token_id}", session).status_code == 404
    assert call(client, "GET", "/api/tokens", session).json == {"tokens": []}
    r = call(client, "POST", "/api/deploy?site=mysite", bearer, body=zip_of({"a.txt": "x"}))
    assert r.status_code == 401


def test_deploy_refuses_bad_uploads(client, instance):
    session = sign_in(client)
    limit = int(instance.config["max_upload_mb"]) * 1024 * 1024
    too_big = call(client, "POST", "/api/deploy?site=big",
                   {**session, "Content-Length": str(limit + 1)}, body=b"x")
    assert too_big.status_code == 413
    assert call(client, "POST", "/api/deploy?site=bad", session,
                body=b"not a zip").json["error"]["message"] == \
        "The upload is not a valid zip archive."
    for name in ("admin", "Bad_Name", ""):
        r = call(client, "POST", f"/api/deploy?site={name}", session, body=zip_of({"a": "b"}))
        assert r.status_code == 400, name
    evil = call(client, "POST", "/api/deploy?site=evil", session,
                body=zip_of({"index.html": "x", "../escape.txt": "x"}))
    assert evil.status_code == 400
    assert call(client, "GET", "/api/sites", session).json["sites"] == []


def test_sites_list_delete_and_logs(client):
    session = sign_in(client)
    call(client, "POST", "/api/deploy?site=blog", session, body=zip_of({"index.html": "hi"}))
    sites = call(client, "GET", "/api/sites", session).json
    assert [s["name"] for s in sites["sites"]] == ["blog"]  # the admin site is not listed
    logs = call(client, "GET", "/api/sites/blog/logs", session)
    assert logs.status_code == 200 and logs.json["site"] == "blog"
    assert isinstance(logs.json["lines"], list)
    assert call(client, "GET", "/api/sites/nope/logs", session).status_code == 404
    assert call(client, "DELETE", "/api/sites/admin", session).status_code == 400
    assert call(client, "DELETE", "/api/sites/blog", session).status_code == 200
    assert call(client, "DELETE", "/api/sites/blog", session).status_code == 404
    assert client.simulate_get("/", headers={"Host": "blog.localhost"}).status_code == 404


def test_config_past_the_safe_range_needs_break_glass(client, instance):
    session = sign_in(client)
    config = call(client, "GET", "/api/config", session).json
    assert set(config) == {"values", "schema", "settings", "safe", "overrides", "owner_keys"}
    assert {e["key"] for e in config["schema"]} <= set(config["values"])
    low, high = config["safe"]["max_upload_mb"]
    past = int(high) * 3
    refused = call(client, "PUT", "/api/config", session, json={"max_upload_mb": past})
    assert refused.status_code == 409
    assert refused.json["error"]["code"] == "break_glass_required"
    assert "break glass" in refused.json["error"]["message"].lower()
    assert call(client, "GET", "/api/config", session).json["values"]["max_upload_mb"] != past
    accepted = call(client, "PUT", "/api/config", session,
                    json={"max_upload_mb": past, "break_glass": True})
    assert accepted.status_code == 200, accepted.text
    assert accepted.json["values"]["max_upload_mb"] == past
    assert [o["key"] for o in accepted.json["overrides"]] == ["max_upload_mb"]
    assert accepted.json["overrides"][0]["new"] == past
    assert "max_upload_mb" in accepted.json["owner_keys"]
    assert instance.config["max_upload_mb"] == past
    status = call(client, "GET", "/api/system/status", session).json
    assert [o["key"] for o in status["overrides"]] == ["max_upload_mb"]
    # A value of the wrong type is refused even with break glass.
    wrong = call(client, "PUT", "/api/config", session,
                 json={"max_upload_mb": "lots", "break_glass": True})
    assert wrong.status_code == 400
    assert call(client, "PUT", "/api/config", session, json={}).status_code == 400
    # A safe value undoes the override.
    back = call(client, "PUT", "/api/config", session, json={"max_upload_mb": int(low)})
    assert back.status_code == 200 and back.json["overrides"] == []


def test_deeply_nested_json_is_a_400_not_a_500(client):
    """A few KB of "[" nest past Python's recursion limit in json.loads: a bad body,
    said so as a 400, for every call that reads JSON."""
    session = sign_in(client)
    body = '{"a": ' + "[" * 5000 + "]" * 5000 + "}"
    headers = {**session, "Content-Type": "application/json"}
    for method, path in (("PUT", "/api/config"), ("POST", "/api/tokens"),
                         ("POST", "/api/config/reset"), ("POST", "/api/certificates")):
        r = call(client, method, path, headers, body=body)
        assert r.status_code == 400, (path, r.text)
        assert r.json["error"]["code"] == "bad_json"


def test_head_answers_wherever_get_does(client):
    session = sign_in(client)
    for path in ("/api/session", "/api/system/status", "/api/config", "/api/sites",
                 "/api/tokens"):
        r = call(client, "HEAD", path, session)
        assert r.status_code == 200 and r.content == b"", (path, r.status)
        assert r.headers["content-type"].startswith("application/json")
    assert call(client, "HEAD", "/api/config").status_code == 401  # still signed in only


def test_recalibrate_answers_the_new_status(client):
    r = call(client, "POST", "/api/system/recalibrate", sign_in(client))
    assert r.status_code == 200
    assert r.json["mode"] in ("normal", "maintenance") and "thresholds" in r.json


def test_admin_api_is_not_reachable_on_a_user_site_host(client):
    session = sign_in(client)
    call(client, "POST", "/api/deploy?site=mysite", session, body=zip_of({"index.html": "x"}))
    for host in ("mysite.localhost", "localhost", "example.test", "mysite.example.test",
                 "evil.test"):
        for method, path in (("GET", "/api/system/status"), ("GET", "/api/config"),
                             ("POST", "/api/login"), ("GET", "/api/backup")):
            r = client.simulate_request(method, path, headers={**session, "Host": host},
                                        json={"username": USERNAME, "password": PASSWORD})
            assert r.status_code in (404, 405), (host, path, r.status)
            assert "thresholds" not in r.text and "set-cookie" not in r.headers


def test_backup_is_a_valid_database_with_the_sites_and_leaves_nothing(client, db_path):
    session = sign_in(client)
    call(client, "POST", "/api/deploy?site=kept", session, body=zip_of({"index.html": "x"}))
    r = call(client, "GET", "/api/backup", session)
    assert r.status_code == 200
    assert re.fullmatch(r'attachment; filename="fazt-backup-\d{8}-\d{6}\.db"',
                        r.headers["content-disposition"])
    assert int(r.headers["content-length"]) == len(r.content)
    out = db_path.parent / "downloaded.db"
    out.write_bytes(r.content)
    with sqlite3.connect(out) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        names = {row[0] for row in conn.execute("SELECT name FROM sites")}
    assert {"kept", "admin"} <= names
    assert not list(db_path.parent.glob("*.backup-*"))


# -- against a real server -------------------------------------------------------


def test_real_server_login_backup_stream_and_host_isolation(server: Server, db_path: Path):
    login = server.request("POST", "/api/login", headers=CSRF,
                           json={"username": USERNAME, "password": PASSWORD})
    assert login.status_code == 200
    raw_cookie = login.headers["Set-Cookie"]
    assert "HttpOnly" in raw_cookie and "SameSite=Strict" in raw_cookie
    assert "Domain" not in raw_cookie
    cookies = {"fazt_session": login.cookies["fazt_session"]}
    deploy = server.request("POST", "/api/deploy?site=live", headers=CSRF, cookies=cookies,
                            data=zip_of({"index.html": "<p>live</p>"}))
    assert deploy.status_code == 200, deploy.text
    assert server.get("/", host="live.localhost").text == "<p>live</p>"
    backup = server.request("GET", "/api/backup", cookies=cookies)
    assert backup.status_code == 200
    out = db_path.parent / "over-http.db"
    out.write_bytes(backup.content)
    with sqlite3.connect(out) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert conn.execute("SELECT 1 FROM sites WHERE name='live'").fetchone()
    assert not list(db_path.parent.glob("*.backup-*"))
    cross = server.request("POST", "/api/tokens", cookies=cookies,
                           headers={"Origin": "http://evil.test", **CSRF}, json={"name": "x"})
    assert cross.status_code == 403
    on_site = server.request("GET", "/api/system/status", host="live.localhost",
                             cookies=cookies)
    assert on_site.status_code == 404 and "thresholds" not in on_site.text
