"""Request heads parsed once (fazt.server.heads): a reused parse is exactly Waitress's own,
for the same head and for a head of the same shape (another target, another Host), and
only heads of bodiless, faultless requests are reused."""

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
             "url_scheme", "request_uri", "headers_finished", "proxy_scheme",
             "proxy_netloc", "fragment", "first_line", "header_bytes_received", "header_plus")
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
    assert heads.parser_for(adj, HEAD.replace(b"GET", b"HEAD")) is None
    assert heads.parser_for(adj, HEAD.replace(b"HTTP/1.1", b"HTTP/1.0")) is None
    assert heads.parser_for(adj, HEAD.replace(b"gzip", b"br")) is None
    assert heads.parser_for(adj, HEAD[:-2]) is None  # not a whole head yet


TARGETS = [b"/", b"/docs/x", b"/a%20b/%2F?q=%41&r#frag", b"//double/slash?x", b"*",
           b"http://other.example:8080/p?q", b"/\xff\x80", b"/?", b"/#", b"/a b",
           b"http://[::1/", b"/x\ry", b"http://%zz/", b""]
HOSTS = [b"Host: site.localhost", b"host:s9.localhost", b"HOST: \t a.b \t", b"Host:",
         b"Host: bad\x01value", b"Host: x\ry", None]
LINES = [b"GET %s HTTP/1.1", b"GET %s HTTP/1.0", b"HEAD %s HTTP/1.1", b"get %s HTTP/1.1",
         b"GET %s", b"GET %s HTTP/1.1   ", b"GET  %s HTTP/1.1"]


def head_of(line: bytes, target: bytes, host: bytes | None, rest: bytes) -> bytes:
    return line.replace(b"%s", target) + b"\r\n" + (b"" if host is None else host + b"\r\n") + rest


@pytest.mark.parametrize("rest", [
    b"Accept-Encoding: gzip\r\nConnection: keep-alive\r\n\r\n",
    b"\r\n",
    b" folded\r\nAccept: */*\r\n\r\n",  # continues the Host line
    b"Host: second\r\n\r\n",  # a second Host line joins the first
    b"Connection: close\r\n\r\n",
])
def test_a_head_of_a_known_shape_gives_waitress_own_parse_of_its_bytes(rest):
    """Every pairing of request line, target and Host line: a reuse is exactly what
    Waitress makes of the new bytes, and whatever Waitress refuses is never a reuse."""
    adj, heads = Adjustments(), KnownHeads(heads=100_000)
    heads_seen = [head_of(line, target, host, rest)
                  for line in LINES for target in TARGETS for host in HOSTS]
    for data in heads_seen:
        try:
            parser, consumed = waitress_parse(adj, data)
        except ValueError:
            continue  # Waitress lets urlsplit's errors out; the connection answers 400
        heads.remember(adj, data, consumed, parser)
    reused = 0
    for data in heads_seen:
        known = heads.parser_for(adj, data + b"GET /next HTTP/1.1\r\n")
        if known is None:
            continue
        reused += 1
        parser, consumed = waitress_parse(adj, data)
        assert parser.error is None and known[1] == consumed == len(data)
        assert known[0].__dict__ == parser.__dict__, data  # every field, a new one too
    assert reused >= (45 if rest.startswith(b"Host") else 180)  # the valid pairings, at least


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


def test_a_head_of_a_known_shape_too_long_for_the_listener_gets_waitress_431():
    adj, heads = Adjustments(max_request_header_size=len(HEAD) + 1), KnownHeads()
    heads.remember(adj, HEAD, *waitress_parse(adj, HEAD)[::-1])
    longer = HEAD.replace(b"/docs/", b"/docs/longer/")
    assert heads.parser_for(adj, HEAD) is not None
    assert heads.parser_for(adj, longer) is None
    assert waitress_parse(adj, longer)[0].error.code == 431


def test_every_file_of_every_site_is_one_shape():
    """A client asking for many files of many sites sends one shape: one parse serves all."""
    adj, heads = Adjustments(), KnownHeads()
    datas = [HEAD.replace(b"/docs/?a=1&b=%20", f"/f{i % 10}.bin".encode())
             .replace(b"site", f"s{i}".encode()) for i in range(5000)]
    heads.remember(adj, datas[0], *waitress_parse(adj, datas[0])[::-1])
    for data in datas:
        assert state(heads.parser_for(adj, data)[0]) == state(waitress_parse(adj, data)[0])
    assert heads.hits == len(datas)


def test_a_full_memory_starts_over():
    adj, heads = Adjustments(), KnownHeads(heads=2)
    datas = [HEAD.replace(b"gzip", f"g{i}".encode()) for i in range(3)]
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
