"""Hostile input, round two (issue 18): each case an outside audit found, against a real
server and the real `fazt` command."""

import requests
from conftest import PASSWORD, USERNAME, Server, eventually


def sign_in(server: Server) -> str:
    r = server.request("POST", "/api/login", json={"username": USERNAME, "password": PASSWORD},
                       headers={"X-Fazt-Request": "1"})
    assert r.status_code == 200, r.text
    return r.cookies["fazt_session"]


def as_owner(server: Server, method: str, path: str, cookie: str) -> requests.Response:
    return server.request(method, path, cookies={"fazt_session": cookie},
                          headers={"X-Fazt-Request": "1"})


# -- sessions ------------------------------------------------------------------


def test_each_sign_in_gets_its_own_session_and_logout_ends_only_that_one(server):
    # Five sign-ins take well under three seconds, so at least two of them share a
    # second: a token derived from the time would repeat.
    cookies = [sign_in(server) for _ in range(5)]
    assert len(set(cookies)) == 5
    assert as_owner(server, "POST", "/api/logout", cookies[0]).status_code == 200
    assert as_owner(server, "GET", "/api/session", cookies[0]).status_code == 401
    for other in cookies[1:]:  # the owner's other devices stay signed in
        assert as_owner(server, "GET", "/api/session", other).status_code == 200
    # A sign-in right after a logout gets a session that works.
    fresh = sign_in(server)
    assert as_owner(server, "GET", "/api/session", fresh).status_code == 200


def test_a_logged_out_session_stays_out_after_a_restart(db_path):
    with Server.running(db_path) as server:
        gone, kept = sign_in(server), sign_in(server)
        assert as_owner(server, "POST", "/api/logout", gone).status_code == 200
    with Server.running(db_path) as server:
        assert as_owner(server, "GET", "/api/session", gone).status_code == 401
        assert as_owner(server, "GET", "/api/session", kept).status_code == 200
        assert as_owner(server, "POST", "/api/logout-all", kept).status_code == 200
        assert as_owner(server, "GET", "/api/session", kept).status_code == 401


# -- the request log -----------------------------------------------------------


def test_a_newline_in_the_path_cannot_forge_a_log_line(server):
    forged = '127.0.0.1 admin.localhost "POST /api/login" 200 1.0ms'
    path = "/x%0a" + forged.replace(" ", "%20").replace('"', "%22") + "%0d%0a"
    assert server.get(path, host="hello.localhost").status_code in (400, 404)
    assert eventually(lambda: "hello.localhost" in server.log())
    lines = [line for line in server.log().splitlines() if "hello.localhost" in line
             or line.startswith("127.0.0.1 admin.localhost")]
    assert len(lines) == 1, lines
    assert lines[0].startswith('127.0.0.1 hello.localhost "GET /x\\x0A127.0.0.1 ')
    assert '\\x22POST /api/login\\x22' in lines[0]
    assert "\\x0D\\x0A" in lines[0]
