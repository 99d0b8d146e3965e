"""Request heads parsed once (fazt.server.heads): a reused parse is exactly Waitress's own,
and only heads of bodiless, faultless requests are reused."""

import socket

import pytest
from conftest import Admin, fazt
from waitress.adjustments import Adjustments
from waitress.parser import HTTPRequestParser

from fazt.server.heads import HEAD_BYTES, KnownHeads

HEAD = (b"GET /docs/?a=1&b=%20 HTTP/1.1\r\nHost: site.localhost\r\n"
        b"Accept-Encoding: gzip\r\nConnection: keep-alive\r\n\r\n")


def waitress_parse(adj: Adjustments, data: bytes) -> tuple[HTTPRequestParser, int]:
    parser = HTTPRequestParser(adj)
    return parser, parser.received(data)


def state(parser: HTTPRequestParser) -> dict:
    names = ("command", "path", "query", "version", "headers", "completed", "error", "empty",
             "body_rcv", "chunked", "content_length", "expect_continue", "connection_close",
             "url_scheme", "request_uri", "headers_finished")
    return {name: getattr(parser, name) for name in names}


def test_a_head_seen_before_gives_waitress_own_parse():
    adj, heads = Adjustments(), KnownHeads()
    data = HEAD + b"GET /next HTTP/1.1\r\n"  # a pipelined request follows
    assert heads.parser_for(adj, data) is None
    parser, consumed = waitress_parse(adj, data)
    heads.remember(adj, data, consumed, parser)
    reused, length = heads.parser_for(adj, data)
    assert length == consumed == len(HEAD)
    assert state(reused) == state(parser) and reused is not parser
    reused.headers["HOST"] = "changed"  # each request its own headers
    assert heads.parser_for(adj, data)[0].headers["HOST"] == "site.localhost"
    assert heads.hits == 2


def test_another_listener_or_other_bytes_miss():
    adj, heads = Adjustments(), KnownHeads()
    parser, consumed = waitress_parse(adj, HEAD)
    heads.remember(adj, HEAD, consumed, parser)
    assert heads.parser_for(Adjustments(url_scheme="https"), HEAD) is None
    assert heads.parser_for(adj, HEAD.replace(b"/docs/", b"/docs/x")) is None
    assert heads.parser_for(adj, HEAD[:-2]) is None  # not a whole head yet


@pytest.mark.parametrize("data", [
    b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
    b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"PUT /api/x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /" + b"x" * HEAD_BYTES + b" HTTP/1.1\r\nHost: a\r\n\r\n",
])
def test_heads_with_a_body_a_fault_or_odd_framing_are_not_kept(data):
    adj, heads = Adjustments(), KnownHeads()
    parser, consumed = waitress_parse(adj, data)
    heads.remember(adj, data, consumed, parser)
    assert heads.parser_for(adj, data) is None


def test_a_full_memory_starts_over():
    adj, heads = Adjustments(), KnownHeads(heads=2)
    datas = [HEAD.replace(b"/docs/", f"/p{i}".encode()) for i in range(3)]
    for data in datas:
        heads.remember(adj, data, *waitress_parse(adj, data)[::-1])
    assert heads.parser_for(adj, datas[2]) is not None
    assert heads.parser_for(adj, datas[0]) is None


def test_repeated_requests_on_a_connection_are_answered_alike(module_server, module_db,
                                                              site_dir):
    fazt("deploy", str(site_dir), "--site", "heads", "--db", str(module_db))
    server = module_server
    reused = Admin(server).status()["connections"]["heads_reused"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        answers = []
        for path in ("/style.css", "/style.css", "/docs/", "/style.css", "/docs/"):
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: heads.localhost\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
            while len(body) < length:
                body += s.recv(65536)
            answers.append((head.split(b"\r\n")[0], body))
    assert [a[1] for a in answers] == [b"body { color: red }"] * 2 + [b"<p>docs</p>"] + \
        [b"body { color: red }", b"<p>docs</p>"]
    assert all(a[0] == b"HTTP/1.1 200 OK" for a in answers)
    assert Admin(server).status()["connections"]["heads_reused"] >= reused + 3
