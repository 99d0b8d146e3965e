"""The direct way to a site's back end (fazt.server.jspath: loop to lane thread, no WSGI,
no Falcon) answers exactly as the WSGI app does: the same status line, headers, body and
request log line, and the handler sees the same request object."""

import re
import socket
from pathlib import Path

import pytest
from conftest import Admin, eventually, fazt, with_and_without_fastpath

HANDLER = r"""
function handler(request) {
  var q = request.query;
  if (request.path === "/api/echo") return { body: request };
  if (request.path === "/api/status") {
    return { status: Number(q.code), headers: { "x-ODD-case": "v" }, body: q.body || "" };
  }
  if (request.path === "/api/cookies") {
    return { headers: { "Set-Cookie": ["b=2; Path=/", "a=1"], "Content-Type": "text/x" },
             body: "c" };
  }
  if (request.path === "/api/bad-cookie") {
    return { headers: { "Set-Cookie": "s=1; Domain=elsewhere.test" }, body: "no" };
  }
  if (request.path === "/api/big") return { body: "word ".repeat(1000) };
  if (request.path === "/api/server") {
    return { headers: { Server: "mine", Date: "Thu, 01 Jan 1970 00:00:00 GMT" }, body: "s" };
  }
  if (request.path === "/api/braces") {  // the direct way keeps heads as format strings
    return { headers: { "X-Brace": "{length} {date} {{x}} {0} }{", "Content-Type": "a/{b}" },
             body: "{}" };
  }
  if (request.path === "/api/throw") {
    throw new Error("boom");
  }
  if (request.path === "/api/bad-status") return { status: 99 };
  if (request.path === "/api/fn-status") return { status: function () {}, body: "f" };
  if (request.path === "/api/size") {  // one description, bodies of any size
    return { headers: { "Content-Type": q.type }, body: "a".repeat(Number(q.n)) };
  }
  if (request.path === "/api/promise") return Promise.resolve({ status: 201, body: [1, 2] });
  return { status: 404, body: { missing: request.path } };
}
"""


def raw(port: int, request: bytes) -> tuple[str, bytes]:
    """One request on a fresh connection: the head without its Date line, and the body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        text = head.decode("latin-1")
        match = re.search(r"\r\nContent-Length: (\d+)", text)
        length = int(match.group(1)) if match and not request.startswith(b"HEAD") else 0
        while len(body) < length:
            body += s.recv(65536)
    return re.sub(r"\r\nDate: [^\r]*", "", text), body


@pytest.fixture
def pair(tmp_path: Path, db_path: Path):
    """Two servers on the same site: one with the direct path, one with WSGI only."""
    site = tmp_path / "js"
    (site / "api").mkdir(parents=True)
    (site / "api" / "main.js").write_text(HANDLER)
    (site / "index.html").write_text("<h1>js</h1>")
    fazt("deploy", str(site), "--site", "js", "--db", str(db_path))
    with with_and_without_fastpath(db_path) as servers:
        yield servers


def requests_to_send() -> list[bytes]:
    host = "Host: js.localhost\r\n"
    out = []
    for target in ("/api/echo?a=1&a=2&blank=&flag&x=%C3%A9", "//api/echo", "/api",
                   "/api/status?code=204", "/api/status?code=304", "/api/status?code=299",
                   "/api/status?code=503&body=x", "/api/cookies", "/api/bad-cookie",
                   "/api/big", "/api/server", "/api/braces", "/api/throw", "/api/bad-status",
                   "/api/fn-status",
                   "/api/promise", "/api/nothing", "/api/../api/echo", "/api/caf%C3%A9"):
        for method in ("GET", "HEAD"):
            for extra in ("", "Accept-Encoding: gzip\r\n", "Connection: close\r\n"):
                out.append(f"{method} {target} HTTP/1.1\r\n{host}{extra}\r\n".encode())
    body = b'{"k": [1, "\xc3\xa9"]}'
    for extra in ("Content-Type: application/json\r\n", "X-Forwarded-Proto: https\r\n"
                  "Forwarded: for=1.2.3.4\r\nX-Custom_Under: no\r\nX-Twice: 1\r\nX-Twice: 2\r\n"):
        out.append(b"POST /api/echo?q=1 HTTP/1.1\r\n" + host.encode() + extra.encode()
                   + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    out.append(b"PUT /api/echo HTTP/1.1\r\n" + host.encode() + b"\r\n")
    out.append(b"DELETE /api/status?code=200 HTTP/1.0\r\n" + host.encode() + b"\r\n")
    return out


def test_answers_rendered_once_on_the_loop_fit_every_body(pair):
    # The loop remembers how a handler's answer was rendered by its status and headers
    # (jspath._PLANS): the bodies that follow, of other sizes, still get their own length,
    # and the compression (and Vary) a compressible type gets from 1 KiB on.
    direct, wsgi = pair
    kinds = ("text/plain", "application/octet-stream")
    sizes = (10, 2000, 10, 10, 60000, 10, 3000, 3000, 0)
    # past 64 KiB: never compressed, and the handler runs on threads for a while: last
    cases = [(kind, n) for kind in kinds for n in sizes] + [(kind, 70000) for kind in kinds]
    for kind, n in cases:
        for extra in ("", "Accept-Encoding: gzip\r\n"):
            request = (f"GET /api/size?n={n}&type={kind} HTTP/1.1\r\n"
                       f"Host: js.localhost\r\n{extra}\r\n").encode()
            a, b = raw(direct.port, request), raw(wsgi.port, request)
            assert a == b, request
            assert f"Content-Length: {len(a[1])}" in a[0]
    assert Admin(direct).status()["connections"]["js_loop_answers"] >= 30


def test_an_answer_fazt_cannot_read_is_the_same_failure_on_the_loop(pair):
    # A status that JSON leaves out (a function): the same 500 js_error and site log line
    # from the loop, which renders the answers it has read before without reading them
    # again, as from a thread.
    direct, wsgi = pair
    request = b"GET /api/fn-status HTTP/1.1\r\nHost: js.localhost\r\n\r\n"
    answers = [(raw(direct.port, request), raw(wsgi.port, request)) for _ in range(8)]
    assert all(a == b for a, b in answers)
    assert b'"js_error"' in answers[-1][0][1]
    assert "Traceback" not in direct.log()


def test_direct_and_wsgi_answer_alike(pair):
    direct, wsgi = pair
    sent = requests_to_send()
    statuses = set()
    for request in sent:
        a, b = raw(direct.port, request), raw(wsgi.port, request)
        assert a == b, request
        statuses.add(a[0].split()[1])
    assert {"200", "201", "204", "299", "304", "404", "500", "503"} <= statuses
    assert Admin(direct).status()["connections"]["js_direct_answers"] >= len(sent) * 3 // 4
    assert Admin(wsgi).status()["connections"]["js_direct_answers"] == 0

    def lines(server):
        return [re.sub(r" [\d.]+ms$", "", line) for line in server.log().splitlines()
                if '"' in line and "js.localhost" in line]

    assert eventually(lambda: len(lines(direct)) == len(sent) == len(lines(wsgi)))
    assert lines(direct) == lines(wsgi)
    # the site's log holds the same failures, in the same order
    def site_log(server):
        return [(e["level"], e["message"])
                for e in Admin(server).get("/api/sites/js/logs").json()["lines"]]

    assert site_log(direct) == site_log(wsgi)
    assert any("api/main.js:" in message and "boom" in message
               for _, message in site_log(direct))
