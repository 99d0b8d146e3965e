"""The fast path (cache hits answered from the event loop) answers exactly as a thread would:
the same status, headers and body for GET, HEAD, 304, 206 and 416, and the same log line."""

import hashlib
import re
import socket
from pathlib import Path

import pytest
from conftest import Admin, deploy_dir, eventually, fazt, with_and_without_fastpath


def raw(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    """One request on a fresh connection: status line, headers (no Date), body."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        length = 0 if request.startswith(b"HEAD") or lines[0].split()[1] == "304" else \
            int(headers.get("Content-Length", 0))
        while len(body) < length:
            body += s.recv(65536)
    headers.pop("Date")
    return lines[0], headers, body


@pytest.fixture
def pair(tmp_path: Path, db_path: Path):
    """Two servers on the same content: one with the fast path, one without."""
    site = tmp_path / "fast"
    site.mkdir()
    (site / "index.html").write_text("<h1>fast</h1>" * 200)
    (site / "style.css").write_text("body { color: red }\n" * 300)
    (site / "data.bin").write_bytes(bytes(range(256)) * 16)
    (site / "_headers").write_text("/*\n  X-Frame-Options: DENY\n")
    fazt("deploy", str(site), "--site", "fast", "--db", str(db_path))
    with with_and_without_fastpath(db_path) as servers:
        yield servers


def variants(etags: dict[str, str]) -> list[bytes]:
    out = []
    for path in ("/", "/style.css", "/data.bin"):
        extras = ["", "Accept-Encoding: gzip, br\r\n", "Accept-Encoding: gzip\r\n",
                  "Range: bytes=0-9\r\n", "Range: bytes=999999-\r\n", "Connection: close\r\n",
                  f"If-None-Match: {etags[path]}\r\n", 'If-None-Match: "nope"\r\n']
        for method in ("GET", "HEAD"):
            for extra in extras:
                out.append(f"{method} {path} HTTP/1.1\r\nHost: fast.localhost\r\n{extra}\r\n"
                           .encode())
    return out


def test_fast_and_slow_paths_answer_alike(pair):
    fast, slow = pair
    etags = {path: raw(slow.port, f"GET {path} HTTP/1.1\r\nHost: fast.localhost\r\n\r\n"
                       .encode())[1]["Etag"] for path in ("/", "/style.css", "/data.bin")}
    requests_sent = variants(etags)
    for request in requests_sent:
        raw(fast.port, request)  # a thread answers first and fills the caches
    seen = set()
    for request in requests_sent:
        a, b = raw(fast.port, request), raw(slow.port, request)
        assert a == b, request
        seen.add(a[0].split()[1])
    assert {"200", "206", "304", "416"} <= seen
    answered = Admin(fast).status()["connections"]["fast_path_answers"]
    assert answered >= len(requests_sent) // 2  # the fast path did answer most of them
    assert Admin(slow).status()["connections"]["fast_path_answers"] == 0

    def lines(server):
        return [re.sub(r" [\d.]+ms$", "", line) for line in server.log().splitlines()
                if '"' in line and "fast.localhost" in line]

    # every request's line, in order: the fast one's were sent twice
    assert eventually(lambda: len(lines(fast)) == 2 * len(requests_sent))
    assert eventually(lambda: len(lines(slow)) == len(requests_sent) + 3)
    assert lines(fast)[len(requests_sent):] == lines(slow)[3:]


def test_the_loop_renders_one_versions_rules_with_that_versions_file(instance, tmp_path):
    """Another process rolls the site back: until the server notices (the next request's
    refresh), a thread may look up what it had not remembered yet, and reads the
    rolled-back state. The loop then rendered the rules just read with the file
    remembered from before; now both come from the version the site served when a thread
    first looked, until the server notices."""
    from fazt.server.fastpath import OK, SHA256, FastPath
    from fazt.store.sites import rollback_site

    root = tmp_path / "site"
    root.mkdir()
    for n in (1, 2):
        (root / "index.html").write_text(f"version {n}")
        (root / "_headers").write_text(f"/*\n  X-Version: {n}\n")
        deploy_dir(instance, "s", root)
    vfs = instance.vfs
    bodies = {hashlib.sha256(f"version {n}".encode()).hexdigest(): f"version {n}"
              for n in (1, 2)}

    def served() -> tuple[str, str]:
        """(X-Version, body) of the answer the loop renders for /."""
        answer = FastPath(instance)._prepare("s", "/", None)
        header = re.search(rb"X-Version: (\d)", answer[OK]).group(1).decode()
        return header, bodies[answer[SHA256]]

    assert vfs.find("s", "index.html") is not None  # a thread served version 2's file
    with instance.db.write() as conn:
        rollback_site(conn, "s", 1)  # as `fazt site rollback --db` does, unseen so far
    vfs.rules("s")  # a thread parses the rules, which nobody had asked for yet
    assert served() == ("2", "version 2")
    instance.refresh()  # the next request sees the rollback
    vfs.rules("s")
    vfs.find("s", "index.html")
    assert served() == ("1", "version 1")


def test_answers_are_remembered_by_what_accept_encoding_means_not_its_spelling(instance,
                                                                              tmp_path):
    """The loop remembered a file's answers under the raw Accept-Encoding: a client that
    sent another spelling each time ("gzip, x1", "gzip, x2", ...) filled the memo and
    flushed everyone's answers, over and over. Spellings of one meaning share one entry,
    and each still gets the answer its header asks for."""
    import types

    from waitress.adjustments import Adjustments
    from waitress.parser import HTTPRequestParser

    from fazt.hosts import SITE
    from fazt.server.fastpath import FastPath

    root = tmp_path / "site"
    root.mkdir()
    (root / "style.css").write_text("body { color: red }\n" * 300)
    deploy_dir(instance, "s", root)
    instance.refresh()
    instance.vfs.rules("s")
    info = instance.vfs.find("s", "style.css")  # a thread read it into RAM, every variant
    for body in (info.identity, *info.variants):
        instance.vfs.content("s", info, body)
    assert {v.encoding for v in info.variants} == {"br", "gzip"}
    fast = FastPath(instance)
    conn = types.SimpleNamespace(target=types.SimpleNamespace(kind=SITE, site="s"),
                                 listener=types.SimpleNamespace(scheme="http"),
                                 ip="127.0.0.1", began=0.0, direct=False)

    def get(accept: str | None) -> bytes:
        parser = HTTPRequestParser(Adjustments())
        extra = f"Accept-Encoding: {accept}\r\n" if accept is not None else ""
        parser.received(f"GET /style.css HTTP/1.1\r\nHost: s.localhost\r\n{extra}\r\n"
                        .encode())
        answer = fast(conn, parser)
        assert answer is not None
        return answer

    for n in range(2 * instance.vfs.found_limit):
        assert b"Content-Encoding: gzip" in get(f"gzip, x-junk{n}")
        assert b"Content-Encoding: br" in get(f"br;q=1.0, X-Other{n}")
    assert b"Content-Encoding" not in get(None)
    assert b"Content-Encoding" not in get("gzip;q=0, br;q=0")
    assert len(fast.memo) == 4
