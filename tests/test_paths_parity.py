"""Odd and hostile requests get the same answer from the loop's paths (the fast path for
static files, the direct and on-loop ways to a handler) as from a thread and the WSGI
app: status, headers (in any order, without Date) and body, request after request on the
same content. test_fastpath.py and test_jspath.py check the common requests and the log
lines; this is the long tail: odd paths, conditional and range headers, encodings,
methods, bodies, pipelining."""

import re
import socket
from collections import Counter
from pathlib import Path

import pytest
from conftest import Admin, fazt, with_and_without_fastpath


def exchange(port: int, request: bytes) -> list[bytes]:
    """`request` (one or several, pipelined) on a fresh connection, half-closed after it:
    each answer as its status line, its header lines sorted (Date left out) and its body;
    whatever follows the last whole answer comes last."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    answers = []
    for method in re.findall(rb"(?:^|\n)([A-Za-z]+) \S* HTTP/", request):
        head, found, rest = data.partition(b"\r\n\r\n")
        if not found:
            break
        status, *lines = head.split(b"\r\n")
        lines = sorted(line for line in lines if not line.startswith(b"Date: "))
        fields = dict(line.split(b": ", 1) for line in lines)
        length = 0 if method.upper() == b"HEAD" or b" 304 " in status or b" 100 " in status \
            else int(fields.get(b"Content-Length", b"0"))
        answers.append(b"\n".join([status, *lines, rest[:length]]))
        data = rest[length:]
    return answers + [data]


def assert_alike(fast, slow, requests_sent: list[bytes]) -> Counter:
    """Every request answered alike by both servers (the fast one already warm)."""
    for request in requests_sent:
        exchange(fast.port, request)  # a thread answers first and fills the caches
    statuses: Counter = Counter()
    different = []
    for request in requests_sent:
        a, b = exchange(fast.port, request), exchange(slow.port, request)
        if a != b:
            different.append((request, a, b))
        statuses.update(answer.split(b" ")[1] for answer in a[:-1])
    assert not different, f"{len(different)} of {len(requests_sent)} differ; the first: " \
                          f"{different[0]}"
    return statuses


@pytest.fixture
def static_pair(tmp_path: Path, db_path: Path):
    site = tmp_path / "fast"
    (site / "docs").mkdir(parents=True)
    (site / "index.html").write_text("<h1>fast</h1>" * 200)
    (site / "404.html").write_text("<h1>not here</h1>")
    (site / "docs" / "index.html").write_text("<h1>docs</h1>")
    (site / "style.css").write_text("body { color: red }\n" * 300)
    (site / "data.bin").write_bytes(bytes(range(256)) * 16)
    (site / "a b.txt").write_text("space\n" * 50)
    (site / "_headers").write_text("/*\n  X-Frame-Options: DENY\n")
    (site / "_redirects").write_text("/old /style.css 301\n/gone /data.bin 302\n")
    fazt("deploy", str(site), "--site", "fast", "--db", str(db_path))
    with with_and_without_fastpath(db_path) as servers:
        yield servers


def test_static_files_answer_alike_on_odd_requests(static_pair):
    fast, slow = static_pair
    first = exchange(slow.port, b"GET /style.css HTTP/1.1\r\nHost: fast.localhost\r\n\r\n")[0]
    etag = re.search(rb"\nEtag: (\S+)", first).group(1).decode()
    date = "Mon, 01 Jan 2024 00:00:00 GMT"
    paths = ["/", "/style.css", "/data.bin", "/docs", "/docs/", "/docs/index.html",
             "/index.html", "/a%20b.txt", "/style%2Ecss", "//style.css", "/./style.css",
             "/../style.css", "/STYLE.CSS", "/style.css?v=1", "/style.css?", "/nope",
             "/nope.css", "/old", "/gone", "/style.css/", "/%", "/%zz", "/docs/..",
             "/style.css%00", "/\xc3\xa9", "http://fast.localhost/style.css", "*"]
    extras = ["", "Accept-Encoding: gzip, br\r\n", "Accept-Encoding: br;q=0, gzip;q=0\r\n",
              "Accept-Encoding: *\r\n", "Accept-Encoding: identity;q=0\r\n",
              "Range: bytes=0-9\r\n", "Range: bytes=-10\r\n", "Range: bytes=5-\r\n",
              "Range: bytes=0-1,5-6\r\n", "Range: bytes=abc\r\n", "Range: bytes=10-5\r\n",
              "Range: items=0-5\r\n", "Range: bytes=999999-\r\n",
              f"Range: bytes=0-9\r\nIf-Range: {etag}\r\n", 'Range: bytes=0-9\r\nIf-Range: "x"\r\n',
              f"Range: bytes=0-9\r\nIf-Range: {date}\r\n", f"If-None-Match: {etag}\r\n",
              f"If-None-Match: W/{etag}\r\n", f'If-None-Match: "a", {etag}\r\n',
              "If-None-Match: *\r\n", f"If-Modified-Since: {date}\r\n",
              'If-Match: "zz"\r\n', f"If-Match: {etag}\r\nRange: bytes=0-9\r\n",
              "If-Modified-Since: garbage\r\n",
              f'If-None-Match: "zz"\r\nIf-Modified-Since: {date}\r\n',
              "Accept: application/json\r\n", "Accept: text/html\r\n",
              "Accept-Encoding: gzip\r\nRange: bytes=0-9\r\n", "Connection: close\r\n",
              "Connection: keep-alive\r\n", "Host: other.localhost\r\n"]
    sent = [f"{method} {path} HTTP/1.1\r\nHost: fast.localhost\r\n{extra}\r\n".encode("latin-1")
            for path in paths for method in ("GET", "HEAD") for extra in extras]
    sent += [f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
             for host in ("FAST.localhost", "fast.localhost:80", "fast.localhost.",
                          "fast.example.test") for path in ("/", "/style.css", "/nope")]
    sent += [f"GET {path} {version}\r\nHost: fast.localhost\r\n{extra}\r\n".encode()
             for version in ("HTTP/1.0", "HTTP/1.1") for path in ("/style.css", "/nope")
             for extra in ("", "Connection: keep-alive\r\n")]
    sent += [f"{method} /style.css HTTP/1.1\r\nHost: fast.localhost\r\nContent-Length: 0\r\n\r\n"
             .encode() for method in ("POST", "PUT", "DELETE", "OPTIONS", "TRACE", "get")]
    sent.append(b"GET /style.css HTTP/1.1\r\nHost: fast.localhost\r\n\r\n"
                b"HEAD /data.bin HTTP/1.1\r\nHost: fast.localhost\r\n\r\n"
                b"GET /nope HTTP/1.1\r\nHost: fast.localhost\r\n\r\n")
    statuses = assert_alike(fast, slow, sent)
    assert {b"200", b"206", b"301", b"304", b"404", b"416"} <= set(statuses)
    assert Admin(fast).status()["connections"]["fast_path_answers"] >= len(sent) // 4


HANDLER = r"""
function handler(r) {
  var p = r.path;
  if (p === "/api/echo") return {headers: {"X-Method": r.method, "content-type": "text/json"},
                                 body: {q: r.query, h: r.headers, b: r.body, j: r.json || null}};
  if (p === "/api/throw") throw new Error("boom");
  if (p === "/api/204") return {status: 204};
  if (p === "/api/304") return {status: 304, headers: {ETag: '"x"'}};
  if (p === "/api/cookie") return {headers: {"Set-Cookie": ["a=1; Path=/", "b=2"]}, body: "c"};
  if (p === "/api/badcookie") return {headers: {"Set-Cookie": "a=1; Domain=evil.com"}, body: "c"};
  if (p === "/api/null") return null;
  if (p === "/api/undef") return undefined;
  if (p === "/api/big") return {body: "y".repeat(200000), headers: {"Content-Type": "text/plain"}};
  if (p === "/api/text") return {body: "z".repeat(3000), headers: {"Content-Type": "text/plain"}};
  if (p === "/api/hdr") return {headers: {"x-a": "1", "X-B": "{x}", "server": "mine",
                                          "Date": "yesterday", "content-length": "5"}, body: "hi"};
  if (p === "/api/unicode") return {body: "h\u00e9llo \u2603", headers: {"X-U": "\u00e9"}};
  if (p === "/api/nul") return {body: "a\u0000b\ud800c"};
  if (p === "/api/promise") return Promise.resolve({body: "later"});
  if (p === "/api/reject") return Promise.reject(new Error("nope"));
  if (p === "/api/status") return {status: Number(r.query.s || 200), body: "s"};
  return {body: "hello " + p};
}
"""


@pytest.fixture
def handler_pair(tmp_path: Path, db_path: Path):
    site = tmp_path / "js"
    (site / "api").mkdir(parents=True)
    (site / "index.html").write_text("<h1>js</h1>")
    (site / "api" / "main.js").write_text(HANDLER)
    fazt("deploy", str(site), "--site", "js", "--db", str(db_path))
    with with_and_without_fastpath(db_path) as servers:
        yield servers


def test_handlers_answer_alike_on_odd_requests(handler_pair):
    fast, slow = handler_pair
    paths = ["/api/echo", "/api/echo?a=1&a=2&b=&c", "/api/echo?x=%C3%A9", "/api/throw",
             "/api/204", "/api/304", "/api/cookie", "/api/badcookie", "/api/null", "/api/undef",
             "/api/big", "/api/text", "/api/hdr", "/api/unicode", "/api/nul", "/api/promise",
             "/api/reject",
             "/api/status?s=500", "/api/status?s=1000", "/api/status?s=abc", "/api", "/api/",
             "//api/echo", "/api/../api/echo", "/api/%2e%2e/x", "/api/%zz", "/api/\xc3\xa9",
             "/API/echo", "/api/echo/", "/api//echo", "/apix"]
    extras = ["", "Accept-Encoding: gzip, br\r\n", "Connection: close\r\n",
              "Accept: application/json\r\n", "Accept: text/html\r\n", "Cookie: a=b\r\n",
              "X-Forwarded-For: 1.2.3.4\r\n",
              "X-Forwarded-Proto: https\r\nForwarded: for=1.1.1.1\r\n",
              "Content-Type: application/json\r\n", 'If-None-Match: "x"\r\n',
              "Range: bytes=0-3\r\n", "X-Weird: \xff\r\n", "X_Under: 1\r\n"]
    sent = [f"{method} {path} HTTP/1.1\r\nHost: js.localhost\r\n{extra}\r\n".encode("latin-1")
            for path in paths for method in ("GET", "HEAD", "DELETE", "OPTIONS")
            for extra in extras]
    for path in ("/api/echo", "/api/throw"):
        for method in ("POST", "PUT", "PATCH"):
            for body in (b"", b'{"a": 1}', b"  [1,2]", b"not json", "\u00e9".encode(),
                         b"\xff\xfe", b"x" * 70000):
                for kind in ("", "Content-Type: application/json\r\n"):
                    sent.append(f"{method} {path} HTTP/1.1\r\nHost: js.localhost\r\n{kind}"
                                f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    sent += [b"POST /api/echo HTTP/1.1\r\nHost: js.localhost\r\nTransfer-Encoding: chunked\r\n"
             b"\r\n5\r\nhello\r\n0\r\n\r\n",
             b"POST /api/echo HTTP/1.1\r\nHost: js.localhost\r\nContent-Length: 5\r\n"
             b"Expect: 100-continue\r\n\r\nhello",
             b"GET /api/echo HTTP/1.0\r\nHost: js.localhost\r\n\r\n",
             b"GET /api/echo HTTP/1.1\r\nHost: js.localhost\r\n\r\n"
             b"GET /api/text HTTP/1.1\r\nHost: js.localhost\r\nConnection: close\r\n\r\n"]
    statuses = assert_alike(fast, slow, sent)
    assert {b"200", b"204", b"304", b"400", b"404", b"500"} <= set(statuses)
    counts = Admin(fast).status()["connections"]
    assert counts["js_direct_answers"] >= len(sent) // 4 and counts["js_loop_answers"] > 0
