"""The fast path (cache hits answered from the event loop) answers exactly as a thread would:
the same status, headers and body for GET, HEAD, 304, 206 and 416, and the same log line."""

import re
import socket
from pathlib import Path

import pytest
from conftest import Admin, eventually, fazt, with_and_without_fastpath


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
