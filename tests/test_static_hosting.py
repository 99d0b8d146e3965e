"""Static hosting as people expect it, through a real server: compression variants made at
deploy, the site's 404.html, `_redirects` (SPA fallback included) and `_headers`."""

import gzip
import http.client
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import brotli
import pytest
from conftest import Admin, Server, fazt, init_db, zip_of

HTML = ("<!doctype html><title>shop</title>"
        + "".join(f"<p class=item>item {i}: a thing worth buying</p>\n" for i in range(300)))
CSS = "".join(f".c{i} {{ color: #{i:06x}; margin: {i}px }}\n" for i in range(400))
JS = "".join(f"export function f{i}(x) {{ return x * {i} + {i}; }}\n" for i in range(400))
TINY = "body{margin:0}"  # under 1 KiB: never worth a variant
PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(4096)  # random, as incompressible as images are
PAGE_404 = "<!doctype html><title>gone</title>" + "<p>no such page, sorry</p>\n" * 80
REDIRECTS = """\
# moved pages
/old            /new.html
/temp           /new.html            302
/blog/:year/:slug  /posts/:year-:slug.html  307
/docs/*         https://docs.example.com/:splat   308
/see            /new.html            303
/hidden.html    /new.html            301!
/pretty         /new.html            200
/gone/*         /404.html            404
"""
LICENSE = "Permission is hereby granted, free of charge, to any person.\n" * 80
EDGE_REDIRECTS = """\
/frag                  /new.html#team      302
/a                     /x.html             302
/a                     /y.html             302!
/authors/c%C3%A9line   /new.html           302
/sp%20ace              /new.html           307
/help                  https://en.wikipedia.org/wiki/Help:Contents  301
/to-blog               /blog               200
"""
HEADERS = """\
/*
  X-Frame-Options: DENY
/assets/*
  Cache-Control: max-age=31536000, immutable
  X-Robots-Tag: noindex
"""
API = """
function handler(request) {
  if (request.path === "/api/big") {
    var rows = [];
    for (var i = 0; i < 400; i++) rows.push({id: i, name: "row number " + i});
    return {status: 200, headers: {"Content-Type": "application/json"}, body: rows};
  }
  if (request.path === "/api/cached")
    return {status: 200, headers: {"Cache-Control": "max-age=60"}, body: "ok"};
  return {status: 200, body: {hello: "world"}};
}
"""


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return root


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("static")
    db = init_db(tmp / "data.db")
    shop = write(tmp / "shop", {
        "index.html": HTML, "app.css": CSS, "app.js": JS, "tiny.css": TINY, "logo.png": PNG,
        "new.html": "<p>the new page</p>", "posts/2024-hello.html": "<p>hello post</p>",
        "hidden.html": "<p>shadowed by a forced rule</p>",
        "404.html": PAGE_404, "_redirects": REDIRECTS, "_headers": HEADERS,
        "assets/app.3f9a1c2e.js": JS, "api/main.js": API,
    })
    fazt("deploy", str(shop), "--site", "shop", "--db", str(db))
    spa = write(tmp / "spa", {"index.html": HTML, "app.js": JS,
                              "_redirects": "/*  /index.html  200\n"})
    fazt("deploy", str(spa), "--site", "spa", "--db", str(db))
    edges = write(tmp / "edges", {
        "LICENSE": LICENSE, "LICENSE.txt": LICENSE, "new.html": "<p>new</p>",
        "blog/index.html": "<p>blog</p>", "x.html": "<p>x</p>", "y.html": "<p>y</p>",
        "_redirects": EDGE_REDIRECTS})
    fazt("deploy", str(edges), "--site", "edges", "--db", str(db))
    with Server.running(db) as server:
        yield server


def fetch(srv: Server, path: str, host: str = "shop.localhost", method: str = "GET",
          **headers: str) -> tuple[int, dict[str, str], bytes]:
    """One exchange with no client-side decoding: status, headers (lower-case), raw body."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request(method, path, headers={"Host": host, **{k.replace("_", "-"): v
                                                              for k, v in headers.items()}})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def decode(encoding: str | None, body: bytes) -> bytes:
    if encoding == "br":
        return brotli.decompress(body)
    if encoding == "gzip":
        return gzip.decompress(body)
    assert encoding is None
    return body


@pytest.mark.parametrize("accept,expected", [
    (None, None), ("", None), ("gzip", "gzip"), ("br", "br"), ("gzip, deflate, br", "br"),
    ("br;q=0, gzip", "gzip"), ("gzip;q=0.9, br;q=0.5", "gzip"), ("*", "br"),
    ("*;q=0", None), ("identity", None), ("br;q=0, gzip;q=0", None), ("deflate", None),
])
@pytest.mark.parametrize("path,original", [("/", HTML), ("/app.css", CSS), ("/app.js", JS)])
def test_each_encoding_chosen_and_decoding_to_the_original(srv, accept, expected, path,
                                                           original):
    headers = {} if accept is None else {"Accept-Encoding": accept}
    status, h, body = fetch(srv, path, **headers)
    assert status == 200
    assert h.get("content-encoding") == expected
    assert h["vary"] == "Accept-Encoding"
    assert int(h["content-length"]) == len(body)
    assert decode(expected, body) == original.encode()
    if expected:
        assert len(body) < 0.9 * len(original)


def test_etags_differ_per_encoding_and_304_works_for_each(srv):
    tags = {}
    for accept in ("identity", "gzip", "br"):
        _, h, _ = fetch(srv, "/app.js", Accept_Encoding=accept)
        tags[accept] = h["etag"]
        status, h304, body = fetch(srv, "/app.js", Accept_Encoding=accept,
                                   If_None_Match=h["etag"])
        assert status == 304 and body == b""
        assert h304["etag"] == h["etag"] and h304["vary"] == "Accept-Encoding"
        assert h304["cache-control"] == h["cache-control"]
    assert len(set(tags.values())) == 3
    # a cached gzip body does not answer a client that now gets br
    status, h, _ = fetch(srv, "/app.js", Accept_Encoding="br", If_None_Match=tags["gzip"])
    assert status == 200 and h["content-encoding"] == "br"


@pytest.mark.parametrize("accept", ["identity", "gzip", "br"])
def test_head_agrees_with_get(srv, accept):
    _, got, _ = fetch(srv, "/app.css", Accept_Encoding=accept)
    status, head, body = fetch(srv, "/app.css", method="HEAD", Accept_Encoding=accept)
    assert status == 200 and body == b""
    for name in ("content-length", "content-encoding", "etag", "vary", "content-type",
                 "cache-control"):
        assert head.get(name) == got.get(name), name


def test_range_gets_identity(srv):
    status, h, body = fetch(srv, "/app.js", Accept_Encoding="gzip, br", Range="bytes=10-19")
    assert status == 206 and body == JS.encode()[10:20]
    assert "content-encoding" not in h and h["vary"] == "Accept-Encoding"
    assert h["content-range"] == f"bytes 10-19/{len(JS.encode())}"
    _, identity, _ = fetch(srv, "/app.js")
    assert h["etag"] == identity["etag"]


def test_if_match_naming_another_version_is_412(srv):
    """If-Match (RFC 9110 13.1.1, evaluated before the other conditions): a download resumed
    after a deploy replaced the file gets 412, not the new file's bytes to splice onto the
    old ones. Each request twice: from a thread, then from the event loop's fast path."""
    _, h, _ = fetch(srv, "/app.js")
    tag = h["etag"]
    cases = [
        ({"If_Match": '"old"', "Range": "bytes=10-19"}, 412),
        ({"If_Match": '"old"'}, 412),
        ({"If_Match": f"W/{tag}"}, 412),  # a weak tag never matches
        ({"If_Match": '"old"', "If_None_Match": tag}, 412),
        ({"If_Match": tag, "Range": "bytes=10-19"}, 206),
        ({"If_Match": f'"old", {tag}'}, 200),
        ({"If_Match": "*"}, 200),
        ({"If_Match": tag, "If_None_Match": tag}, 304),
    ]
    for headers, expected in cases:
        for method in ("GET", "GET", "HEAD", "HEAD"):
            status, _, body = fetch(srv, "/app.js", method=method, **headers)
            assert status == expected, (method, headers)
            if expected == 412 and method == "GET":
                assert json.loads(body)["error"]["code"] == "precondition_failed"
    # a request that is no 2xx without it ignores the condition (RFC 9110 13.2.1)
    assert fetch(srv, "/nothing-here", If_Match='"old"')[0] == 404


def test_small_and_binary_files_are_sent_as_they_are(srv):
    _, h, body = fetch(srv, "/tiny.css", Accept_Encoding="gzip, br")
    assert body == TINY.encode() and "content-encoding" not in h
    assert h["vary"] == "Accept-Encoding"  # compressible, even if not worth it here
    _, h, body = fetch(srv, "/logo.png", Accept_Encoding="gzip, br")
    assert body == PNG and "content-encoding" not in h and "vary" not in h


def test_cache_headers(srv):
    assert fetch(srv, "/")[1]["cache-control"] == "no-cache"
    assert fetch(srv, "/app.css")[1]["cache-control"] == "max-age=300"
    _, h, _ = fetch(srv, "/assets/app.3f9a1c2e.js")
    assert h["cache-control"] == "max-age=31536000, immutable"
    _, h, _ = fetch(srv, "/api/hello")
    assert h["cache-control"] == "no-store"  # a handler's answer is not for shared caches
    _, h, _ = fetch(srv, "/api/cached")
    assert h["cache-control"] == "max-age=60"  # unless it says otherwise


def test_handler_answers_compress_on_the_fly_when_small(srv):
    status, h, body = fetch(srv, "/api/big", Accept_Encoding="gzip")
    assert status == 200 and h["content-encoding"] == "gzip" and "Accept-Encoding" in h["vary"]
    rows = json.loads(gzip.decompress(body))
    assert len(rows) == 400 and int(h["content-length"]) == len(body)
    _, h, body = fetch(srv, "/api/big", Accept_Encoding="br")
    assert h["content-encoding"] == "br" and json.loads(brotli.decompress(body)) == rows
    _, h, body = fetch(srv, "/api/big")
    assert "content-encoding" not in h and json.loads(body) == rows
    _, h, body = fetch(srv, "/api/hello", Accept_Encoding="gzip")  # tiny: as it is
    assert "content-encoding" not in h and json.loads(body) == {"hello": "world"}


@pytest.mark.parametrize("accept", [None, "gzip", "br"])
def test_the_sites_own_404_page(srv, accept):
    headers = {"Accept-Encoding": accept} if accept else {}
    status, h, body = fetch(srv, "/no/such/page", **headers)
    assert status == 404 and decode(h.get("content-encoding"), body) == PAGE_404.encode()
    assert h["content-type"].startswith("text/html") and h.get("content-encoding") == accept
    assert "etag" not in h and h["x-frame-options"] == "DENY"
    status, h, body = fetch(srv, "/no/such/page", method="HEAD", **headers)
    assert status == 404 and body == b"" and h.get("content-encoding") == accept


def test_fazts_page_when_the_site_has_none(srv):
    for method in ("POST", "DELETE", "OPTIONS"):
        status, h, body = fetch(srv, "/nothing-here", host="spa.localhost", method=method)
        assert status == 405 and h["allow"] == "GET, HEAD"  # RFC 9110 requires Allow
    status, _, body = fetch(srv, "/x", host="nosite.localhost")
    assert status == 404 and b"no_such_site" in body


@pytest.mark.parametrize("path,status,location", [
    ("/old", 301, "/new.html"),
    ("/old/", 301, "/new.html"),  # a trailing slash matches too
    ("/old?utm=x", 301, "/new.html?utm=x"),  # the query string goes along
    ("/temp", 302, "/new.html"),
    ("/blog/2024/hello", 307, "/posts/2024-hello.html"),
    ("/docs/guide/start.html", 308, "https://docs.example.com/guide/start.html"),
    ("/see", 303, "/new.html"),
    ("/blog/2024/caf%C3%A9%3F", 307, "/posts/2024-caf%C3%A9%3F.html"),  # encoded again
    ("/hidden.html", 301, "/new.html"),  # forced with '!': wins over the file there
])
def test_redirects(srv, path, status, location):
    got, h, _ = fetch(srv, path)
    assert (got, h.get("location")) == (status, location)
    assert h.get("cache-control") == "no-store"  # until the next deploy, not a cache's guess


def test_rewrites_and_forced_rules(srv):
    status, h, body = fetch(srv, "/pretty")
    assert status == 200 and body == b"<p>the new page</p>" and "location" not in h
    status, _, body = fetch(srv, "/gone/anything")
    assert status == 404 and body == PAGE_404.encode()
    # a file shadows a rule that is not forced: /new.html is served, not redirected
    assert fetch(srv, "/new.html")[0] == 200


def test_spa_fallback(srv):
    for path in ("/", "/app/deep/link", "/settings/"):
        status, h, body = fetch(srv, path, host="spa.localhost", Accept_Encoding="br")
        assert status == 200 and brotli.decompress(body) == HTML.encode(), path
    status, _, body = fetch(srv, "/app.js", host="spa.localhost")
    assert status == 200 and body == JS.encode()


def test_headers_file_and_rule_files_are_never_served(srv):
    _, h, _ = fetch(srv, "/assets/app.3f9a1c2e.js")
    assert h["x-frame-options"] == "DENY" and h["x-robots-tag"] == "noindex"
    _, h, _ = fetch(srv, "/app.css")
    assert h["x-frame-options"] == "DENY" and "x-robots-tag" not in h
    for path in ("/_redirects", "/_headers"):
        status, _, body = fetch(srv, path)
        assert status == 404 and body == PAGE_404.encode()
        assert fetch(srv, path, host="spa.localhost")[2] == HTML.encode()  # the SPA fallback


@pytest.mark.parametrize("name,text,line", [
    ("_redirects", "/a /b\n/c\n", 2),
    ("_redirects", "# ok\n/a /b 301\n/c /d 418\n", 3),
    ("_redirects", "/a /b 301\n\n/x/:id /y/:other 302\n", 3),
    ("_redirects", "/* https://elsewhere.example/ 200\n", 1),
    ("_redirects", "/a /b 301\n/c /d \u00b2\n", 2),  # a digit to str.isdigit, not to int()
    ("_redirects", "/a /b \u0663\u0660\u0661\n", 1),  # 301 in Arabic-Indic digits
    ("_redirects", "/ok /index.html 302\n/a /b 302\n/b /a 302\n", 2),  # a loop of redirects
    ("_redirects", "/docs/* /docs/:splat 301!\n", 1),
    ("_headers", "/*\n  X-A: 1\n  Content-Length: 5\n", 3),
    ("_headers", "  X-A: 1\n", 1),
    ("_headers", "/*\n  Date: Thu, 01 Jan 1970 00:00:00 GMT\n", 2),
    ("_headers", "/*\n  X-A: 1\n  Server: evil\n", 3),
])
def test_a_bad_rule_line_refuses_the_deploy_and_the_old_version_serves(srv, tmp_path, name,
                                                                      text, line):
    admin = Admin(srv)
    r = admin.post("/api/deploy?site=shop", data=zip_of({"index.html": "new", name: text}))
    assert r.status_code == 400, r.text
    message = r.json()["error"]["message"]
    assert message.startswith(f"{name} line {line}: "), message
    assert decode(None, fetch(srv, "/")[2]) == HTML.encode()  # the old version, untouched
    bad = write(tmp_path / "bad", {"index.html": "new", name: text})
    result = fazt("deploy", str(bad), "--site", "shop", "--db", str(srv.db), check=False)
    assert result.returncode == 1 and f"{name} line {line}: " in result.stderr
    assert "Traceback" not in result.stderr


def test_the_dashboards_own_files_are_compressed_too(srv):
    original = (Path(__file__).parent.parent / "src/fazt/cockpit/assets/app.js").read_bytes()
    status, h, body = fetch(srv, "/app.js", host="admin.localhost", Accept_Encoding="br")
    assert status == 200 and h["content-encoding"] == "br" and h["vary"] == "Accept-Encoding"
    assert brotli.decompress(body) == original and h["cache-control"] == "no-cache"
    status, h304, _ = fetch(srv, "/app.js", host="admin.localhost", Accept_Encoding="br",
                            If_None_Match=h["etag"])
    assert status == 304 and h304["etag"] == h["etag"]
    _, h, body = fetch(srv, "/app.js", host="admin.localhost")
    assert body == original and "content-encoding" not in h and h["etag"] != h304["etag"]


def raw_response(srv: Server, path: str, host: str = "shop.localhost", **headers: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Host": host, **{k.replace("_", "-"): v
                                                            for k, v in headers.items()}})
        r = conn.getresponse()
        head = f"HTTP/1.1 {r.status} {r.reason}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in r.getheaders()) + "\r\n"
        return head.encode() + r.read()
    finally:
        conn.close()


@pytest.mark.skipif(shutil.which("httplint") is None, reason="httplint is not installed")
@pytest.mark.parametrize("path,accept", [
    ("/", "gzip, br"), ("/app.css", "gzip"), ("/app.js", None), ("/assets/app.3f9a1c2e.js", "br"),
    ("/logo.png", None), ("/api/big", "gzip"), ("/api/hello", None), ("/old", None),
    ("/nothing-here", "gzip"),
])
def test_an_outside_linter_finds_nothing_to_warn_about(srv, path, accept):
    headers = {"Accept-Encoding": accept} if accept else {}
    report = subprocess.run(["httplint", "-n"], input=raw_response(srv, path, **headers),
                            capture_output=True, check=True).stdout.decode()
    problems = [line for line in report.splitlines() if "[WARN]" in line or "[BAD]" in line]
    assert not problems, report


def test_a_type_fazt_does_not_compress_is_sent_as_it_is_whatever_shares_its_bytes(srv):
    """`LICENSE` (no extension: application/octet-stream) holds the bytes of LICENSE.txt,
    whose compressed copies are stored: it gets none of them, and says no Vary."""
    _, h, body = fetch(srv, "/LICENSE.txt", host="edges.localhost", Accept_Encoding="gzip")
    assert h["content-encoding"] == "gzip" and h["vary"] == "Accept-Encoding"
    for accept in ("gzip", "br", "gzip, br"):
        _, h, body = fetch(srv, "/LICENSE", host="edges.localhost", Accept_Encoding=accept)
        assert body == LICENSE.encode() and "content-encoding" not in h and "vary" not in h


@pytest.mark.parametrize("path,status,location", [
    ("/frag", 302, "/new.html#team"),  # a fragment is not a comment
    ("/a", 302, "/x.html"),  # the first rule, though a forced one follows
    ("/authors/c%C3%A9line", 302, "/new.html"),  # FROM written percent-encoded
    ("/sp%20ace", 307, "/new.html"),
    ("/help", 301, "https://en.wikipedia.org/wiki/Help:Contents"),
    ("/blog?utm=1", 301, "/blog/?utm=1"),  # a folder's redirect keeps the query too
])
def test_redirect_rules_as_netlify_reads_them(srv, path, status, location):
    got, h, _ = fetch(srv, path, host="edges.localhost")
    assert (got, h.get("location")) == (status, location)


def test_a_rewrite_to_a_folder_serves_its_index(srv):
    status, _, body = fetch(srv, "/to-blog", host="edges.localhost")
    assert (status, body) == (200, b"<p>blog</p>")


def test_a_query_with_control_characters_is_encoded_in_the_location(srv):
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(b'GET /a?x=\x01b%20c&d=\x7f"<e> HTTP/1.1\r\nHost: edges.localhost\r\n'
                  b"Connection: close\r\n\r\n")
        answer = b"".join(iter(lambda: s.recv(65536), b""))
    head = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    assert head.startswith("HTTP/1.1 302 ")
    assert "\r\nLocation: /x.html?x=%01b%20c&d=%7F%22%3Ce%3E\r\n" in head, head


@pytest.mark.parametrize("rule", ["/api/old  /api/new  301!", "/api/*  /index.html  200",
                                  "/api  /elsewhere  302"])
def test_a_rule_under_api_is_refused_when_the_site_has_a_back_end(srv, tmp_path, rule):
    site = write(tmp_path / "site", {"index.html": "x", "api/main.js": API,
                                     "_redirects": f"/ok  /index.html  302\n{rule}\n"})
    result = fazt("deploy", str(site), "--site", "apirules", "--db", str(srv.db), check=False)
    assert result.returncode == 1 and "_redirects line 2: " in result.stderr
    assert "back end" in result.stderr and "Traceback" not in result.stderr
    (site / "api" / "main.js").unlink()  # without a back end, the same rule is fine
    fazt("deploy", str(site), "--site", "apirules", "--db", str(srv.db))
