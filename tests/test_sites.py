"""Static serving, in-process through the whole WSGI app: routing, headers, ranges, traversal."""

import gzip
import json
import subprocess
import sys

import pytest
from conftest import ROOT, deploy_dir

H = {"Host": "blog.localhost"}


@pytest.fixture
def blog(instance, site_dir):
    deploy_dir(instance, "blog", site_dir)
    return site_dir


def get(client, path, host="blog.localhost", **headers):
    return client.simulate_get(path, headers={"Host": host, **headers})


def test_index_and_directories(client, blog):
    r = get(client, "/")
    assert r.status_code == 200 and r.text == "<h1>hello from fazt</h1>"
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache"
    assert get(client, "/docs/").text == "<p>docs</p>"
    r = get(client, "/docs")
    assert r.status_code == 301 and r.headers["location"] == "/docs/"


def test_static_headers(client, blog):
    r = get(client, "/style.css")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/css; charset=utf-8"
    assert r.headers["content-length"] == str(len("body { color: red }"))
    assert r.headers["etag"].startswith('"') and len(r.headers["etag"]) == 66
    assert "max-age" in r.headers["cache-control"]


def test_if_none_match_gives_304(client, blog):
    etag = get(client, "/style.css").headers["etag"]
    r = get(client, "/style.css", **{"If-None-Match": etag})
    assert r.status_code == 304 and r.content == b""
    assert get(client, "/style.css", **{"If-None-Match": '"other"'}).status_code == 200


def test_head_has_headers_and_no_body(client, blog):
    r = client.simulate_head("/data.bin", headers=H)
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-length"] == str(256 * 64)


@pytest.mark.parametrize("header,status,span", [
    ("bytes=0-9", 206, (0, 10)),
    ("bytes=100-", 206, (100, 16384)),
    ("bytes=-16", 206, (16368, 16384)),
    ("bytes=16000-99999", 206, (16000, 16384)),
    ("bytes=16384-", 416, None),
    ("bytes=-0", 416, None),
    ("bytes=abc", 200, (0, 16384)),       # malformed: ignored, whole file
    ("bytes=0-1,5-6", 200, (0, 16384)),   # several ranges: whole file
    ("bytes=9-3", 200, (0, 16384)),       # invalid: ignored
])
def test_ranges(client, blog, header, status, span):
    body = (blog / "data.bin").read_bytes()
    r = get(client, "/data.bin", Range=header)
    assert r.status_code == status
    if status == 416:
        assert r.headers["content-range"] == f"bytes */{len(body)}"
        # an error: nothing a cache could keep as the file's answer
        assert "etag" not in r.headers and "cache-control" not in r.headers
        return
    assert r.content == body[span[0]:span[1]]
    if status == 206:
        assert r.headers["content-range"] == f"bytes {span[0]}-{span[1] - 1}/{len(body)}"


@pytest.mark.parametrize("header,status", [("bytes=-5", 200), ("bytes=0-", 416)])
def test_ranges_of_an_empty_file(client, instance, site_dir, header, status):
    """The last 5 bytes of nothing are the whole (empty) file: a 200, never a 206 with
    "Content-Range: bytes 0--1/0", which no client can read."""
    (site_dir / "empty.txt").write_bytes(b"")
    deploy_dir(instance, "blog", site_dir)
    r = get(client, "/empty.txt", Range=header)
    assert r.status_code == status
    if status == 200:
        assert r.content == b"" and "content-range" not in r.headers
    else:
        assert r.headers["content-range"] == "bytes */0"


@pytest.mark.parametrize("name,kind", [
    ("data.json.gz", "application/gzip"), ("logo.svgz", "application/gzip"),
    ("app.js.br", "application/octet-stream"), ("dump.sql.xz", "application/x-xz"),
])
def test_a_compressed_file_has_the_type_of_its_format(client, instance, site_dir, name, kind):
    """Sent as stored (no Content-Encoding), "data.json.gz" is gzip, not JSON: a browser told
    application/json shows it as garbled text."""
    (site_dir / name).write_bytes(gzip.compress(b"{}" * 2000))
    deploy_dir(instance, "blog", site_dir)
    r = get(client, "/" + name, **{"Accept-Encoding": "gzip, br"})
    assert r.status_code == 200 and r.headers["content-type"] == kind
    assert "content-encoding" not in r.headers and "vary" not in r.headers


def test_web_types_do_not_depend_on_the_hosts_mime_types_file():
    """Python reads /etc/mime.types when there is one: without it (a slim container) fonts,
    WebP and source maps were application/octet-stream, and .js application/javascript."""
    names = ("a.woff2", "a.woff", "a.webp", "a.map", "a.js", "a.avif", "a.md")
    script = ("import json, mimetypes; mimetypes.init(files=[]); "
              "from fazt.deploy import mime_type; "
              f"print(json.dumps([mime_type(n) for n in {names!r}]))")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, env={"PYTHONPATH": str(ROOT / "src")}).stdout
    assert json.loads(out) == [
        "font/woff2", "font/woff", "image/webp", "application/json; charset=utf-8",
        "text/javascript; charset=utf-8", "image/avif", "text/markdown; charset=utf-8"]


def test_if_range_with_a_stale_etag_sends_everything(client, blog):
    r = get(client, "/data.bin", Range="bytes=0-9", **{"If-Range": '"stale"'})
    assert r.status_code == 200 and len(r.content) == 256 * 64


@pytest.mark.parametrize("path", [
    "/../conftest.py", "/%2e%2e/%2e%2e/etc/passwd", "/docs/../../x", "/a\\..\\b",
    "/%00index.html", "//etc/passwd/..",
])
def test_traversal_never_leaves_the_site(client, blog, path):
    r = get(client, path)
    assert r.status_code in (400, 404)
    assert "root:" not in r.text and "import" not in r.text


@pytest.mark.parametrize("path", ["/.", "/./", "//./.", "/docs/./"])
def test_a_dot_segment_names_the_folder_it_is_in(client, blog, path):
    r = get(client, path)
    expected = "<p>docs</p>" if path.startswith("/docs") else "<h1>hello from fazt</h1>"
    assert r.status_code == 200 and r.text == expected


def test_unknown_site_and_host(client, blog):
    r = get(client, "/", host="nosuch.localhost")
    assert r.status_code == 404 and r.json["error"]["code"] == "no_such_site"
    r = get(client, "/", host="evil.example.com")
    assert r.status_code == 404 and r.json["error"]["code"] == "unknown_host"
    r = get(client, "/", host="a.b.localhost")
    assert r.status_code == 404


def test_browsers_get_a_page_and_apis_get_json(client, blog):
    r = get(client, "/missing.html", Accept="text/html,*/*")
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/html")
    assert "Traceback" not in r.text and "<h1>404" in r.text
    r = get(client, "/missing.html")
    assert r.json["error"]["code"] == "not_found"


def test_root_domain_serves_site_root(client, instance, site_dir):
    deploy_dir(instance, "root", site_dir)
    assert get(client, "/", host="example.test").text == "<h1>hello from fazt</h1>"
    assert get(client, "/", host="localhost:4698").text == "<h1>hello from fazt</h1>"


def test_health_on_every_host(client):
    for host in ("localhost", "admin.localhost", "x.example.test", "nowhere.org"):
        r = get(client, "/_fazt/health", host=host)
        assert r.status_code == 200 and r.json == {"status": "ok", "mode": "normal"}


def test_post_to_a_static_file_is_405(client, blog):
    r = client.simulate_post("/index.html", headers=H)
    assert r.status_code == 405 and r.json["error"]["code"] == "method_not_allowed"
    assert r.headers["allow"] == "GET, HEAD"  # RFC 9110: a 405 must say what is allowed


def test_small_files_are_cached_by_bytes(client, instance, tmp_path):
    """Serve 3x the cache's size in small files: the cache never holds more than its cap."""
    cap = 64 * 1024
    instance.vfs.resize(cap, instance.vfs.large_file_bytes)
    root = tmp_path / "many"
    root.mkdir()
    for i in range(48):  # 48 × 4 KiB = 192 KiB = 3 × cap
        (root / f"f{i}.txt").write_bytes(bytes([i]) * 4096)
    deploy_dir(instance, "many", root)
    for _ in range(2):
        for i in range(48):
            r = get(client, f"/f{i}.txt", host="many.localhost")
            assert r.content == bytes([i]) * 4096
            stats = instance.vfs.stats()
            assert stats["bytes"] <= cap
    assert stats["entries"] == cap // 4096
    assert stats["misses"] >= 48


def test_large_files_never_enter_the_cache(client, instance, tmp_path):
    instance.vfs.resize(64 * 2**20, 1 * 2**20)  # large_file_mb = 1
    root = tmp_path / "large"
    root.mkdir()
    body = bytes(range(256)) * (3 * 2**20 // 256)
    (root / "big.bin").write_bytes(body)
    deploy_dir(instance, "large", root)
    r = get(client, "/big.bin", host="large.localhost")
    assert r.content == body
    assert instance.vfs.stats()["bytes"] == 0
    r = get(client, "/big.bin", host="large.localhost", Range="bytes=262140-262150")
    assert r.content == body[262140:262151]  # across a chunk boundary


def test_simulator_is_served_on_the_cockpit_host(client):
    r = client.simulate_get("/simulator/", headers={"Host": "admin.localhost"})
    assert r.status_code == 200 and "capacity.js" in r.text
    r = client.simulate_get("/simulator/capacity.js", headers={"Host": "admin.localhost"})
    assert r.status_code == 200 and "function fazt_thresholds" in r.text
    # a user-site host never reaches the cockpit's files
    r = client.simulate_get("/simulator/", headers={"Host": "blog.localhost"})
    assert r.status_code == 404


def test_a_file_redeployed_behind_the_servers_back_is_looked_up_again(client, instance, tmp_path):
    """Another process replaced the site: the server's watch notices and serves the
    new version."""
    from fazt.store.sites import NewFile, replace_site

    root = tmp_path / "v1"
    root.mkdir()
    (root / "page.txt").write_text("version one")
    deploy_dir(instance, "moving", root)
    assert get(client, "/page.txt", host="moving.localhost").text == "version one"
    with instance.db.write() as conn:  # as `fazt deploy --db` from another process would
        replace_site(conn, "moving", [NewFile("page.txt", "text/plain", [b"version two!"])])
    instance.reload_if_changed()  # as the server's config watch does every two seconds
    r = get(client, "/page.txt", host="moving.localhost")
    assert r.status_code == 200 and r.text == "version two!"


def test_hot_files_cost_no_database_read(client, instance, blog):
    """Once served, a small file answers from RAM even with the database closed."""
    assert get(client, "/style.css").status_code == 200
    instance.db.release_reader()
    instance.db.path = "/nonexistent/fazt.db"  # any database access would now fail
    r = get(client, "/style.css")
    assert r.status_code == 200 and r.text == "body { color: red }"
