"""Hostile input, round two (issue 18): each case an outside audit found, against a real
server and the real `fazt` command."""

import io
import json
import os
import socket
import sqlite3
import struct
import time
import zipfile
import zlib
from pathlib import Path

import psutil
import pytest
import requests
from conftest import (
    PASSWORD,
    USERNAME,
    Admin,
    Server,
    deploy_dir,
    eventually,
    fazt,
    init_db,
    zip_of,
)
from test_replica import replica_url, s3, s3_env, synced_after  # noqa: F401 - fixtures

# The tests that take `module_server` share one server and database, each with its own
# site names, tokens and sessions; those that count log lines have a server of their own.


def sign_in(server: Server) -> str:
    r = server.request("POST", "/api/login", json={"username": USERNAME, "password": PASSWORD},
                       headers={"X-Fazt-Request": "1"})
    assert r.status_code == 200, r.text
    return r.cookies["fazt_session"]


def as_owner(server: Server, method: str, path: str, cookie: str) -> requests.Response:
    return server.request(method, path, cookies={"fazt_session": cookie},
                          headers={"X-Fazt-Request": "1"})


# -- sessions ------------------------------------------------------------------


def test_each_sign_in_gets_its_own_session_and_logout_ends_only_that_one(module_server):
    server = module_server
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


def test_two_logouts_at_once_both_outlive_a_restart(instance):
    """Each logout saves the whole list of signed-out sessions. It was read before waiting
    for the single writer, so a logout that saved meanwhile was overwritten by the older
    list, and that session came back to life at the next restart."""
    from fazt.instance import REVOKED_SESSIONS
    from fazt.store.config import load_secrets

    auth = instance.auth
    first, second = auth.issue(), auth.issue()
    read_list = auth.revoked

    def read_then_another_logout() -> dict:
        taken = read_list()
        auth.revoked = read_list
        if not instance.db._write_lock.locked():  # read outside the writer: the other
            auth.revoke(second)                  # logout may take it and save first
            instance.save_revoked_sessions()
        return taken

    auth.revoked = read_then_another_logout
    auth.revoke(first)
    instance.save_revoked_sessions()
    if auth.check_session(second):  # the writer was held: the other logout comes after
        auth.revoke(second)
        instance.save_revoked_sessions()
    with instance.db.read() as conn:
        saved = json.loads(load_secrets(conn)[REVOKED_SESSIONS])
    assert set(saved) == {first.split(".")[2], second.split(".")[2]}

def test_a_cookie_a_site_tosses_at_the_whole_domain_cannot_sign_the_owner_out(module_server):
    """JavaScript on a site's page can set `fazt_session` for the whole domain with a longer
    path; the browser sends it first, before the owner's own. The valid one still counts,
    for the API, the loop's status read, and logout."""
    server = module_server
    cookie = sign_in(server)
    for tossed in ("junk", "b3duZXI.1.x.forged", cookie + "x"):
        header = f"fazt_session={tossed}; fazt_session={cookie}"
        for path in ("/api/session", "/api/system/status"):
            r = server.request("GET", path, headers={"Cookie": header, "X-Fazt-Request": "1"})
            assert r.status_code == 200, (path, r.text)
    r = server.request("POST", "/api/logout", headers={
        "Cookie": f"fazt_session=junk; fazt_session={cookie}", "X-Fazt-Request": "1"})
    assert r.status_code == 200
    assert as_owner(server, "GET", "/api/session", cookie).status_code == 401  # it ended
    r = server.request("GET", "/api/session", headers={"Cookie": "fazt_session=junk",
                                                       "X-Fazt-Request": "1"})
    assert r.status_code == 401


def test_a_forged_cookie_or_name_outside_ascii_is_refused_not_a_crash(module_server):
    server = module_server
    forged = "fazt_session=b3duZXI.1.x.sign\u00e9ture".encode("latin-1")
    r = server.request("GET", "/api/session", headers={"Cookie": forged, "X-Fazt-Request": "1"})
    assert r.status_code == 401, r.text
    # JSON may carry a lone surrogate; it is a wrong username like any other.
    r = server.request("POST", "/api/login", data='{"username": "\\ud800", "password": "x"}',
                       headers={"Content-Type": "application/json", "X-Fazt-Request": "1"})
    assert r.status_code == 401, r.text
    assert "Traceback" not in server.log()


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


def exchange(server: Server, request: bytes) -> bytes:
    """Everything the server sends back on one connection until it closes it."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as s:
        s.sendall(request)
        answer = b""
        while piece := s.recv(65536):
            answer += piece
    return answer


@pytest.mark.parametrize("target", [b"/caf\xc3\xa9", b"http://[::1"])
def test_a_request_line_the_parser_half_read_is_a_400_and_one_log_line(server, target):
    answer = exchange(server, b"GET " + target + b" HTTP/1.1\r\nHost: hello.localhost\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert eventually(lambda: "hello.localhost" in server.log())
    assert "Traceback" not in server.log()
    lines = [line for line in server.log().splitlines() if "hello.localhost" in line]
    assert len(lines) == 1 and " 400 " in lines[0], lines


def test_two_host_headers_are_a_400(module_server):
    answer = exchange(module_server, b"GET / HTTP/1.1\r\nHost: hello.localhost\r\n"
                                     b"Host: admin.localhost\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"more than one Host" in answer, answer


def test_an_absolute_form_target_names_the_host_not_the_host_line(module_server):
    """RFC 9112 3.2.2, and nginx: a proxy in front routes `GET http://A/` by A whatever the
    Host line says, so fazt must answer as A, never as the Host line's site."""
    def ask(target: bytes, host: bytes) -> bytes:
        return exchange(module_server, b"GET " + target + b" HTTP/1.1\r\nHost: " + host
                        + b"\r\nConnection: close\r\n\r\n")

    r = Admin(module_server).post("/api/deploy?site=aform",
                                  data=zip_of({"index.html": "<p>aform</p>"}))
    assert r.status_code == 200, r.text
    served = ask(b"/", b"aform.localhost")
    assert served.startswith(b"HTTP/1.1 200 ") and served.endswith(b"<p>aform</p>"), served
    assert ask(b"http://nosuch.localhost/", b"aform.localhost").startswith(b"HTTP/1.1 404 ")
    for target in (b"http://aform.localhost/", b"http://aform.localhost"):
        assert ask(target, b"nosuch.localhost").endswith(b"<p>aform</p>"), target
    answer = ask(b"http://user@aform.localhost/", b"aform.localhost")
    assert answer.startswith(b"HTTP/1.1 400 ") and b"user name" in answer, answer


@pytest.mark.parametrize("request_bytes", [
    b"GET / HTTP/1.1\nHost: hello.localhost\n\n",
    b"GET / HTTP/1.1\r\nHost: hello.localhost\n\n",
])
def test_header_lines_ended_by_a_bare_lf_are_a_400_at_once(module_server, request_bytes):
    """Not the header timeout's 408 ten seconds later: Waitress waits for CRLF CRLF."""
    with socket.create_connection(("127.0.0.1", module_server.port), timeout=15) as s:
        s.sendall(request_bytes)
        answer = s.recv(65536)  # (the timeout's answer would be a 408)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"bare LF" in answer, answer


def test_pipelined_requests_that_are_never_read_hold_one_answer(tmp_path):
    """A client that pipelines thirty requests for a 2 MB cached file and reads nothing:
    the next request waits for the answer before it to reach the kernel, so the server
    holds about one answer (it held all thirty: 60 MB), and the kernel a bounded send
    buffer. Read at last, every answer arrives whole and in order."""
    db = init_db(tmp_path / "data.db")
    site = tmp_path / "files"
    site.mkdir()
    body = os.urandom(2 << 20)
    (site / "two.bin").write_bytes(body)
    fazt("deploy", str(site), "--site", "files", "--db", str(db))
    with Server.running(db) as server:
        for _ in range(3):  # cached, and answered from the loop
            assert server.get("/two.bin", host="files.localhost").content == body
        rss = psutil.Process(server.proc.pid).memory_info().rss
        request = b"GET /two.bin HTTP/1.1\r\nHost: files.localhost\r\n\r\n"
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(request * 30)
            assert eventually(lambda: server.get("/_fazt/health").status_code == 200)
            for _ in range(10):  # a moment for anything the server would pile up
                server.get("/_fazt/health")
            grown = (psutil.Process(server.proc.pid).memory_info().rss - rss) / 2**20
            assert grown < 20, f"RSS grew {grown:.0f} MB"
            s.settimeout(30)
            data = bytearray()
            while len(data) < 30 * len(body):
                piece = s.recv(1 << 20)
                assert piece, "closed early"
                data += piece
            while data.count(b"HTTP/1.1 200 OK") < 30 or not data.endswith(body):
                piece = s.recv(1 << 20)
                assert piece, "closed early"
                data += piece
        assert data.count(body) == 30


def test_content_length_beside_transfer_encoding_is_refused_and_closed(module_server):
    server = module_server
    # A proxy in front that reads Content-Length would take the rest as a second request.
    smuggled = (b"POST /x HTTP/1.1\r\nHost: hello.localhost\r\nContent-Length: 4\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                b"GET /smuggled HTTP/1.1\r\nHost: hello.localhost\r\n\r\n")
    answer = exchange(server, smuggled)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert answer.count(b"HTTP/1.1 ") == 1, answer
    assert b"Content-Length and Transfer-Encoding" in answer
    # HTTP/1.0 has no Transfer-Encoding: its framing is faulty, even kept alive.
    answer = exchange(server, b"POST /x HTTP/1.0\r\nHost: hello.localhost\r\n"
                              b"Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
                              b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: hello.localhost\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 400 ") and answer.count(b" 400 ") == 1, answer


def test_a_sites_log_cannot_drive_the_owners_terminal_or_forge_an_entry(module_server, tmp_path):
    server = module_server
    root = tmp_path / "noisy"
    (root / "api").mkdir(parents=True)
    (root / "api" / "main.js").write_text(r"""
function handler(request) {
  console.log("x\n2026-01-01 00:00:00 log   forged\r\u001b]52;c;cHduZWQ=\u0007\u009b31m");
  return { status: 200, body: "ok" };
}
""")
    fazt("deploy", str(root), "--site", "noisy", "--db", str(server.db))
    assert eventually(lambda: server.get("/api/x", host="noisy.localhost").text == "ok")
    out = eventually(lambda: fazt("site", "logs", "noisy", "--db", str(server.db)).stdout)
    assert "\x1b" not in out and "\r" not in out and "\x07" not in out and "\x9b" not in out
    assert "\\x1B]52" in out and "\\x0D" in out
    entries = [line for line in out.splitlines() if not line.startswith(" ")]
    assert len(entries) == 1 and entries[0].endswith(" x"), out


# -- archives --------------------------------------------------------------------


def raw_zip(entries: list[tuple[bytes, bytes, int, int]]) -> bytes:
    """A zip built by hand from (name, deflated data, crc32, size) entries, so a test can
    repeat one compressed entry thousands of times, or say what zipfile would not."""
    out, directory = bytearray(), bytearray()
    for name, data, crc, size in entries:
        offset = len(out)
        out += struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 8, 0, 0x21, crc, len(data), size,
                           len(name), 0) + name + data
        directory += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, crc,
                                 len(data), size, len(name), 0, 0, 0, 0, 0, offset) + name
    count, end = len(entries), bytearray()
    if count > 0xFFFF:  # ZIP64: the count lives in its own record
        where = len(out) + len(directory)
        end += struct.pack("<4sQ2H2I4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count,
                           len(directory), len(out))
        end += struct.pack("<4sIQI", b"PK\x06\x07", 0, where, 1)
        count = 0xFFFF
    end += struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, count, count, len(directory), len(out),
                       0)
    return bytes(out + directory + end)


def deflated(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    return packer.compress(data) + packer.flush()


@pytest.fixture(scope="module")
def shop(tmp_path_factory):
    """A running server whose upload limit is no obstacle, with site `shop` serving v1;
    one for the module: every test here is refused and leaves v1 serving."""
    db = init_db(tmp_path_factory.mktemp("shop") / "data.db")
    fazt("config", "set", "max_upload_mb", "8000", "--break-glass", "--db", str(db))
    with Server.running(db) as server:
        admin = Admin(server)
        assert admin.post("/api/deploy?site=shop", data=zip_of({"index.html": "v1"})).ok
        server.admin = admin
        server.rss = lambda: psutil.Process(server.proc.pid).memory_info().rss
        yield server


def refused(server: Server, upload: bytes, status: int) -> str:
    r = server.admin.post("/api/deploy?site=shop", data=upload, timeout=120)
    assert r.status_code == status, r.text
    assert server.get("/", host="shop.localhost").text == "v1"  # the old version serves
    return r.json()["error"]["message"]


def test_zip_bombs_of_any_shape_are_refused_with_flat_memory(shop):
    mib = bytes(1 << 20)
    packed, crc = deflated(mib), zlib.crc32(mib)
    before = shop.rss()
    # 3,000 entries of 1 MiB: 3.3 MB on the wire, 3 GiB unpacked.
    split = raw_zip([(f"part{i:04}.bin".encode(), packed, crc, len(mib)) for i in range(3000)])
    assert len(split) < 4_000_000
    assert "zip_max_unpacked_mb" in refused(shop, split, 413)
    # 300 of them fit the size limit, but unpack to a thousand times the upload.
    split = raw_zip([(f"part{i:04}.bin".encode(), packed, crc, len(mib)) for i in range(300)])
    assert "zip_max_ratio" in refused(shop, split, 413)
    # One bomb hidden among incompressible files.
    noise = os.urandom(4 << 20)
    hidden = raw_zip([(b"noise.bin", deflated(noise), zlib.crc32(noise), len(noise)),
                      (b"bomb.bin", deflated(bytes(20 << 20)), zlib.crc32(bytes(20 << 20)),
                       20 << 20)])
    assert "zip_max_entry_ratio" in refused(shop, hidden, 413)
    # 100,000 empty entries.
    empty = raw_zip([(f"e{i}".encode(), deflated(b""), 0, 0) for i in range(100_000)])
    assert "zip_max_entries" in refused(shop, empty, 413)
    # A zip that lies about its sizes is held to them as it inflates (then fails its CRC).
    liar = raw_zip([(b"index.html", packed, crc, 1000)])
    assert "index.html" in refused(shop, liar, 400)
    # bzip2 would inflate without bound in one call: only stored and deflate are read.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr("zeros.bin", bytes(50 << 20))
    assert "compression method 12" in refused(shop, buf.getvalue(), 400)
    growth = (shop.rss() - before) / 2**20
    assert growth < 25, f"RSS grew by {growth:.0f} MB on the archive cases"


def test_a_zip_with_two_directories_is_counted_by_the_one_zipfile_reads(shop):
    """The plain end record names a one-record directory (whose comment covers the ZIP64
    records); the ZIP64 record, which zipfile reads whenever its locator is there, names
    100,001 entries. Counted by the plain one, they got past zip_max_entries and zipfile
    built them all (RSS grew about six times the upload)."""
    many = raw_zip([(b"index.html", deflated(b"v2"), zlib.crc32(b"v2"), 2)]
                   + [(f".h{i}".encode(), deflated(b""), 0, 0) for i in range(100_001)])
    end = many.rindex(b"PK\x06\x06")
    body, directory_at = many[:end], struct.unpack_from("<Q", many, end + 48)[0]
    cover = struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0, 2, 0, 76,
                        0, 0, 0, 0) + b"x/"
    directory = body[directory_at:] + cover
    count = 100_003
    upload = (body[:directory_at] + directory
              + struct.pack("<4sQ2H2I4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count,
                            len(directory), directory_at)
              + struct.pack("<4sIQI", b"PK\x06\x07", 0, directory_at + len(directory), 1)
              + struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 1, 1, len(cover) + 76, 12345, 0))
    assert len(zipfile.ZipFile(io.BytesIO(upload)).infolist()) == count  # as zipfile reads it
    before = shop.rss()
    assert "zip_max_entries" in refused(shop, upload, 413)
    assert (shop.rss() - before) / 2**20 < 25


def test_a_directory_of_long_names_and_extras_is_refused_with_flat_memory(shop):
    """Within the entry count, each record with the longest name and extras the count pass
    let through (3 KB): zipfile read the 36 MB directory whole and kept every name and
    extra, +75 MB of RSS for one upload, before the names were judged."""
    local = struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, 0, 0, 0, 0, 0, 0, 1, 0) + b"a"
    extra = struct.pack("<2H", 0xCAFE, 996) + bytes(996)
    directory = bytearray()
    for i in range(12_000):
        name = f"{i:05}".encode() + b"n" * 1995
        directory += struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, 0, 0, 0, 0, 0, 0,
                                 len(name), len(extra), 0, 0, 0, 0, 0) + name + extra
    upload = local + directory + struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, 12_000,
                                             12_000, len(directory), len(local), 0)
    before = shop.rss()
    assert "zip_max_entries" in refused(shop, upload, 413)
    assert (shop.rss() - before) / 2**20 < 25

def test_a_zip_of_hidden_files_alone_is_refused_as_a_folder_of_them_is(shop, tmp_path):
    upload = zip_of({".env": "SECRET=1", ".site/index.html": "v2"})
    assert "no files to deploy" in refused(shop, upload, 400)
    (tmp_path / "dots").mkdir()
    (tmp_path / "dots" / ".env").write_text("SECRET=1")
    result = fazt("deploy", str(tmp_path / "dots"), "--site", "shop", "--db", str(shop.db),
                  check=False)
    assert result.returncode == 1 and "no files to deploy" in result.stderr


def test_corrupt_zip_data_is_a_400_naming_the_entry(shop):
    page = b"<h1>v2</h1>" * 100
    good = deflated(page)
    garbage = raw_zip([(b"index.html", b"\xff" * len(good), zlib.crc32(page), len(page))])
    assert "index.html" in refused(shop, garbage, 400)
    wrong_crc = raw_zip([(b"index.html", good, zlib.crc32(page) ^ 1, len(page))])
    assert "index.html" in refused(shop, wrong_crc, 400)
    short = raw_zip([(b"index.html", good[: len(good) // 2], zlib.crc32(page), len(page))])
    assert "index.html" in refused(shop, short, 400)


@pytest.mark.parametrize("name", [b"page\x00.txt", b"a\nb.txt", b"a\x1bb.txt", b"a//b.txt",
                                  b"./a.txt", b"a/./b.txt", b"a\\b.txt", b"/abs.txt",
                                  b"../up.txt", b"C:/x.txt"])
def test_zip_names_must_be_canonical(shop, name):
    data = b"x"
    upload = raw_zip([(b"index.html", deflated(b"v2"), zlib.crc32(b"v2"), 2),
                      (name, deflated(data), zlib.crc32(data), 1)])
    assert refused(shop, upload, 400)
    assert shop.get("/page", host="shop.localhost").status_code == 404


def test_zip_names_with_a_c1_control_character_are_refused(shop):
    # U+0085 (NEL) and U+009B (CSI) are control characters too, outside ASCII.
    for name in ("a\x85b.txt", "a\x9b31mb.txt"):
        message = refused(shop, zip_of({"index.html": "v2", name: "x"}), 400)
        assert "control character" in message


def test_one_name_in_two_unicode_forms_is_refused(shop, tmp_path):
    """'café.html' composed and decomposed look alike but were stored as two files, the
    link's form choosing which one a visitor gets."""
    composed, decomposed = "caf\u00e9.html", "cafe\u0301.html"
    upload = zip_of({"index.html": "v2", composed: "one", decomposed: "two"})
    message = refused(shop, upload, 400)
    assert "two Unicode forms" in message and composed in message and decomposed in message
    root = tmp_path / "forms"
    root.mkdir()
    for name in ("index.html", composed, decomposed):
        (root / name).write_text("v2")
    result = fazt("deploy", str(root), "--site", "shop", "--db", str(shop.db), check=False)
    assert result.returncode == 1 and "two Unicode forms" in result.stderr
    assert shop.get("/", host="shop.localhost").text == "v1"

def test_zip_path_length_is_a_threshold(shop):
    fazt("config", "set", "zip_max_path", "40", "--db", str(shop.db))
    assert eventually(lambda: shop.admin.get("/api/config").json()["values"]["zip_max_path"]
                      == 40)
    long_name = "d/" * 20 + "x.txt"
    message = refused(shop, zip_of({"index.html": "v2", long_name: "x"}), 400)
    assert "zip_max_path" in message



def test_a_zip_of_a_back_end_alone_keeps_it_a_back_end(module_server):
    """A site that is only `api/main.js`, zipped as API.md shows (`zip -r . `): its one top
    folder was unwrapped as a zipped folder's, so the script became /main.js, served to
    anyone as source, and /api/ had no back end."""
    server = module_server
    script = "function handler(request) { return {body: 'from the back end'}; }"
    r = Admin(server).post("/api/deploy?site=backend", data=zip_of({"api/main.js": script}))
    assert r.status_code == 200, r.text
    assert server.get("/api/hello", host="backend.localhost").text == "from the back end"
    assert server.get("/main.js", host="backend.localhost").status_code == 404


def test_a_folder_deploys_over_http_as_it_deploys_from_disk(module_server, tmp_path):
    """`fazt deploy DIR --server` zips the folder; the server then unwrapped a single top
    folder (a site that is only docs/ lost its docs/) and took a blank file, which deflates
    a thousandfold, for a zip bomb (413), though `fazt deploy DIR --db` takes both."""
    server = module_server
    root = tmp_path / "handbook"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "index.html").write_text("<p>handbook</p>")
    (root / "docs" / "blank.img").write_bytes(bytes(4 << 20))
    token = fazt("token", "create", "--name", "handbook", "--db", str(server.db)).stdout.strip()
    remote = ("deploy", str(root), "--site", "handbook", "--server",
              f"http://admin.localhost:{server.port}", "--token", token)
    result = eventually(lambda: fazt(*remote, check=False).returncode == 0 or None, timeout=10)
    assert result, fazt(*remote, check=False).stderr
    assert server.get("/docs/", host="handbook.localhost").text == "<p>handbook</p>"
    blank = server.get("/docs/blank.img", host="handbook.localhost")
    assert blank.status_code == 200 and blank.content == bytes(4 << 20)

# -- dotfiles ----------------------------------------------------------------------


HIDDEN = {".env": "SECRET=1", ".git/config": "[core]", ".DS_Store": "x", "sub/.htaccess": "x",
          "sub/.cache/a.js": "x"}
VISIBLE = {"index.html": "<p>site</p>", "sub/page.html": "page",
           ".well-known/security.txt": "Contact: mailto:owner@example.test"}
SKIPPED = [".DS_Store", ".env", ".git/", "sub/.cache/", "sub/.htaccess"]


def assert_hidden_not_served(server: Server, site: str) -> None:
    for path in HIDDEN:
        assert server.get("/" + path, host=f"{site}.localhost").status_code == 404, path
    for path, body in VISIBLE.items():
        assert server.get("/" + path, host=f"{site}.localhost").text == body, path


def test_dotfiles_in_a_zip_are_skipped_and_listed(module_server):
    server = module_server
    admin = Admin(server)
    r = admin.post("/api/deploy?site=dots", data=zip_of({**HIDDEN, **VISIBLE}))
    assert r.status_code == 200, r.text
    assert r.json()["skipped"] == SKIPPED
    assert r.json()["files"] == len(VISIBLE)
    assert_hidden_not_served(server, "dots")
    # Zipped as a folder: the folder is unwrapped, its dotfiles are still skipped.
    r = admin.post("/api/deploy?site=dots", data=zip_of(
        {f"site/{k}": v for k, v in {**HIDDEN, **VISIBLE}.items()}))
    assert r.json()["skipped"] == SKIPPED
    assert_hidden_not_served(server, "dots")


def test_a_folder_zipped_on_macos_is_unwrapped_and_its_metadata_skipped(module_server):
    """Finder's zip of a folder puts __MACOSX/ (resource forks) beside it, and a .DS_Store
    often sits there too: the folder was not unwrapped, so the site served from /site/."""
    r = Admin(module_server).post("/api/deploy?site=finder", data=zip_of({
        "site/index.html": "<p>finder</p>", "site/about.html": "about",
        "__MACOSX/site/._index.html": "fork", "__MACOSX/._site": "fork", ".DS_Store": "x"}))
    assert r.status_code == 200, r.text
    assert r.json()["skipped"] == [".DS_Store", "__MACOSX/"] and r.json()["files"] == 2
    assert module_server.get("/", host="finder.localhost").text == "<p>finder</p>"
    for path in ("/site/index.html", "/__MACOSX/._site", "/__MACOSX/site/._index.html"):
        assert module_server.get(path, host="finder.localhost").status_code == 404, path

def test_dotfiles_in_a_folder_are_skipped_and_listed(module_server, tmp_path):
    server = module_server
    root = tmp_path / "site"
    for path, body in {**HIDDEN, **VISIBLE}.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(body)
    out = fazt("deploy", str(root), "--site", "local", "--db", str(server.db)).stdout
    assert "Skipped 5 hidden" in out and ", ".join(SKIPPED) in out
    token = fazt("token", "create", "--name", "ci", "--db", str(server.db)).stdout.strip()
    remote = ("deploy", str(root), "--site", "remote", "--server",
              f"http://admin.localhost:{server.port}", "--token", token)

    def deployed():  # once the server has seen the new token (its config watch)
        result = fazt(*remote, check=False)
        return result if result.returncode == 0 else None

    result = eventually(deployed, timeout=10)
    assert result and ", ".join(SKIPPED) in result.stdout
    for site in ("local", "remote"):
        assert_hidden_not_served(server, site)



def test_a_file_name_that_is_not_utf8_is_a_clear_refusal(module_server, tmp_path):
    """Linux names are bytes: one that is not UTF-8 crashed `fazt deploy` (SQLite, and the
    zip of a deploy over HTTP, cannot take the lone surrogate Python reads it as)."""
    server = module_server
    root = tmp_path / "latin1"
    root.mkdir()
    (root / "index.html").write_text("v1")
    fazt("deploy", str(root), "--site", "latin1", "--db", str(server.db))
    (root / "index.html").write_text("v2")
    with open(os.path.join(os.fsencode(root), b"caf\xe9.html"), "wb") as f:
        f.write(b"x")
    token = fazt("token", "create", "--name", "latin1", "--db", str(server.db)).stdout.strip()
    remote = ("--server", f"http://admin.localhost:{server.port}", "--token", token)
    for where in (("--db", str(server.db)), remote):
        result = fazt("deploy", str(root), "--site", "latin1", *where, check=False)
        assert result.returncode == 1, result.stdout
        assert "Traceback" not in result.stderr
        assert result.stderr.strip() == ("fazt: The name 'caf\\xe9.html' is not UTF-8 text; "
                                         "rename it to deploy it.")
    assert server.get("/", host="latin1.localhost").text == "v1"

# -- handler responses -----------------------------------------------------------

HANDLER = r"""
function handler(request) {
  const cases = {
    cookie: { headers: { "Set-Cookie": "theme=dark; Path=/; HttpOnly" } },
    cookies: { headers: { "Set-Cookie": ["a=1", "b=2; Domain=shop.localhost; Secure"] } },
    admin: { headers: { "Set-Cookie": "fazt_session=forged; Path=/" } },
    parent: { headers: { "Set-Cookie": "a=1; Domain=localhost" } },
    other: { headers: { "Set-Cookie": "a=1; Domain=admin.localhost" } },
    latin: { headers: { "X-Name": "caf\u00e9 \u2713" } },
    control: { headers: { "X-Name": "a\u0001b" } },
    split: { headers: { "X-Name": "a\r\nSet-Cookie: fazt_session=x" } },
    status: { status: 1000 },
    hop: { headers: { "Upgrade": "h2c", "Keep-Alive": "timeout=5",
                      "Strict-Transport-Security": "max-age=63072000; includeSubDomains" } },
    newline: { headers: { "X-A\n": "b" } },
    tossed: { headers: { "Set-Cookie\n": "fazt_session=evil; Domain=localhost" } },
    secret: { headers: { "Set-Cookie": fazt.env.KEY || "unset" } },
    secretdomain: { headers: { "Set-Cookie": "a=1; Domain=" + (fazt.env.KEY || "x") + ".com" } },
    secretname: { headers: { ["X K " + (fazt.env.KEY || "")]: "v" } },
  };
  const answer = cases[request.query.case];
  return { status: answer.status || 200, headers: answer.headers || {}, body: "ok" };
}
"""


SECRET = "supersecretvalue123"


@pytest.fixture(scope="module")
def shop_api(tmp_path_factory):
    """A running server with the handler above as site `shop`, one for the module:
    the tests only read its answers."""
    folder = tmp_path_factory.mktemp("shop_api")
    db = init_db(folder / "data.db")
    root = folder / "shop"
    (root / "api").mkdir(parents=True)
    (root / "index.html").write_text("<p>shop</p>")
    (root / "api" / "main.js").write_text(HANDLER)
    fazt("deploy", str(root), "--site", "shop", "--db", str(db))
    fazt("site", "env", "set", "shop", "KEY", SECRET, "--db", str(db))
    with Server.running(db) as server:
        assert server.get("/", host="shop.localhost").ok
        yield server


def answer(server: Server, case: str, **headers) -> requests.Response:
    return server.get(f"/api/x?case={case}", host="shop.localhost", headers=headers)


def test_handlers_set_cookies_for_their_own_host(shop_api):
    r = answer(shop_api, "cookie")
    assert r.status_code == 200 and r.text == "ok"
    assert r.headers["Set-Cookie"] == "theme=dark; Path=/; HttpOnly"
    r = answer(shop_api, "cookies")
    assert r.raw.headers.getlist("Set-Cookie") == ["a=1", "b=2; Domain=shop.localhost; Secure"]


def test_cookies_are_secure_over_https(instance, client, tmp_path):
    # In process: the TLS port is the event loop's (issue 14); this is the same app.
    root = tmp_path / "shop"
    (root / "api").mkdir(parents=True)
    (root / "api" / "main.js").write_text(HANDLER)
    deploy_dir(instance, "shop", root)
    r = client.simulate_get("/api/x", query_string="case=cookie", protocol="https",
                            headers={"Host": "shop.localhost"})
    assert r.headers["Set-Cookie"] == "theme=dark; Path=/; HttpOnly; Secure"
    r = client.simulate_get("/api/x", query_string="case=cookies", protocol="https",
                            headers={"Host": "shop.localhost"})
    assert r.cookies["a"].secure and r.cookies["b"].secure
    assert r.cookies["b"].domain == "shop.localhost"


@pytest.mark.parametrize("case, reason", [
    ("admin", "the cookie name 'fazt_session' is the cockpit's"),
    ("parent", "Domain=localhost"),
    ("other", "Domain=admin.localhost"),
    ("latin", "U+2713"),
    ("control", "U+0001"),
    ("split", "U+000D"),
    ("status", "status 1000"),
    ("newline", "invalid header name 'X-A\\n'"),  # Python's '$' matched before a final \n
    ("tossed", "invalid header name 'Set-Cookie\\n'"),
    ("secret", "no valid name=value pair"),
    ("secretdomain", "Domain=[secret].com"),
    ("secretname", "'X K [secret]'"),
])
@pytest.mark.parametrize("path", ["/api/x", "/api/%C3%A9"])  # the direct way, and the WSGI app's
def test_malformed_handler_answers_are_fazt_errors_with_the_reason_logged(shop_api, case,
                                                                          reason, path):
    r = shop_api.get(f"{path}?case={case}", host="shop.localhost")
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "bad_response"
    assert reason in r.json()["error"]["message"]
    assert "Set-Cookie" not in r.headers and SECRET not in r.text
    admin = Admin(shop_api)
    lines = admin.get("/api/sites/shop/logs").json()["lines"]
    assert any(reason in line["message"] for line in lines), lines
    assert not any(SECRET in line["message"] for line in lines)


def test_hop_by_hop_headers_from_a_handler_are_dropped(shop_api):
    r = answer(shop_api, "hop")
    assert r.status_code == 200 and r.text == "ok"
    assert "Upgrade" not in r.headers and "Keep-Alive" not in r.headers
    # HSTS is the hsts_max_age setting's: a site at D could pin admin.D and every site
    assert "Strict-Transport-Security" not in r.headers
    r = shop_api.get("/api/%C3%A9?case=hop", host="shop.localhost")  # the WSGI app's way
    assert r.status_code == 200 and "Strict-Transport-Security" not in r.headers


def test_a_folder_named_outside_ascii_redirects_to_its_slash_percent_encoded(module_server,
                                                                             tmp_path):
    server = module_server
    root = tmp_path / "names"
    for folder in ("café", "\u2713"):
        (root / folder).mkdir(parents=True)
        (root / folder / "index.html").write_text(folder)
    fazt("deploy", str(root), "--site", "names", "--db", str(server.db))
    for folder, escaped in (("café", "/caf%C3%A9"), ("\u2713", "/%E2%9C%93")):
        r = server.get(escaped, host="names.localhost", allow_redirects=False)
        assert r.status_code == 301, r.text  # a check mark cannot go out as Latin-1: was a 500
        assert r.headers["Location"] == escaped + "/"
        assert server.get(escaped, host="names.localhost").text == folder


# -- disk space ---------------------------------------------------------------------


def disk_bytes(db) -> tuple[int, int]:
    wal = Path(f"{db}-wal")
    return db.stat().st_size, wal.stat().st_size if wal.exists() else 0


def test_space_comes_back_after_a_large_deploy_is_replaced(tmp_path):
    db = init_db(tmp_path / "data.db")
    fazt("config", "set", "keep_versions", "1", "--db", str(db))
    big = os.urandom(80 << 20)  # incompressible: stored as is
    with Server.running(db) as server:
        admin = Admin(server)
        r = admin.post("/api/deploy?site=big", data=zip_of({"index.html": "v1", "big.bin": big}),
                       timeout=300)
        assert r.status_code == 200, r.text
        assert sum(disk_bytes(db)) > 80 << 20
        r = admin.post("/api/deploy?site=big", data=zip_of({"index.html": "v2"}))
        assert r.status_code == 200, r.text
        # The collection frees 80 MB: the server gives it back in steps, and cuts the WAL.
        assert eventually(lambda: max(disk_bytes(db)) < 16 << 20, timeout=60), disk_bytes(db)
        assert server.get("/", host="big.localhost").text == "v2"
        out = fazt("db", "compact", "--db", str(db)).stdout  # the owner may ask, server up
        assert "MB now" in out
    assert max(disk_bytes(db)) < 16 << 20


def test_an_older_database_is_converted_once_with_full(tmp_path):
    db = init_db(tmp_path / "data.db")
    with sqlite3.connect(db) as conn:  # what a database made by an older fazt looks like
        conn.execute("PRAGMA auto_vacuum=NONE")
        conn.execute("VACUUM")
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    r = fazt("db", "compact", "--db", str(db), check=False)
    assert r.returncode == 1 and "fazt db compact --full" in r.stderr
    fazt("db", "compact", "--full", "--db", str(db))
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    assert fazt("site", "list", "--db", str(db)).returncode == 0


def test_space_comes_back_while_litestream_replicates(tmp_path, replica_url):  # noqa: F811
    db = init_db(tmp_path / "data.db")
    fazt("config", "set", "keep_versions", "1", "--db", str(db))
    fazt("replica", "set", replica_url, "--db", str(db), env=s3_env())
    with Server.running(db, env=s3_env()) as server:
        admin = Admin(server)
        assert eventually(lambda: admin.status()["replica"]["running"], timeout=15)
        r = admin.post("/api/deploy?site=big", timeout=300,
                       data=zip_of({"index.html": "v1", "big.bin": os.urandom(80 << 20)}))
        assert r.status_code == 200, r.text
        assert admin.post("/api/deploy?site=big", data=zip_of({"index.html": "v2"})).ok
        # fazt gives the pages back (Litestream owns the WAL's checkpoints meanwhile)...
        assert eventually(lambda: database_bytes(db) < 16 << 20, timeout=90), database_bytes(db)
        last_write = time.time()
        assert eventually(lambda: synced_after(admin, last_write), timeout=30)
        status = admin.status()["replica"]
        assert status["running"] and not status["last_error"], status
    # ...and the replica holds the smaller database.
    restored = tmp_path / "restored.db"
    fazt("restore", "--from", replica_url, "--db", str(restored), env=s3_env())
    assert restored.stat().st_size < 16 << 20
    with Server.running(restored) as server:
        assert server.get("/", host="big.localhost").text == "v2"


def database_bytes(db: Path) -> int:
    """The database's size in pages, free ones included, wherever the newest copy of each
    page is (the file, or a WAL not yet checkpointed)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return (conn.execute("PRAGMA page_count").fetchone()[0]
                * conn.execute("PRAGMA page_size").fetchone()[0])
