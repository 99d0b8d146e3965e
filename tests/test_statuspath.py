"""The owner's status read answered from the event loop (server/statuspath.py) answers as
the cockpit's thread does: the same status line, headers and fields, the same log line;
and every request it is not sure of still goes to the thread."""

import re
from pathlib import Path

import pytest
from conftest import Admin, eventually, fazt, with_and_without_fastpath
from test_fastpath import raw

STATUS = "/api/system/status"


@pytest.fixture
def pair(tmp_path: Path, db_path: Path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>hi</h1>")
    fazt("deploy", str(site), "--site", "blog", "--db", str(db_path))
    with with_and_without_fastpath(db_path) as servers:
        yield servers


def cookie_of(admin: Admin) -> str:
    return admin.session.cookies["fazt_session"]


def request(extra: str = "", method: str = "GET", target: str = STATUS,
            version: str = "1.1") -> bytes:
    return (f"{method} {target} HTTP/{version}\r\nHost: admin.localhost\r\n{extra}\r\n"
            .encode())


def loop_answers(admin: Admin) -> int:
    return admin.status()["connections"]["status_loop_answers"]


def shape(answer: tuple[str, dict, bytes]) -> tuple:
    """What must be equal: the status line, every header but the body's length (the
    counters and the uptime in the body move), and the fields, two levels down."""
    import json

    line, headers, body = answer
    headers = {k: v for k, v in headers.items() if k != "Content-Length"}
    data = json.loads(body) if body else {}
    fields = {k: sorted(v) if isinstance(v, dict) else type(v).__name__
              for k, v in data.items()}
    return line, headers, fields


def test_the_loop_answers_a_status_read_as_the_thread_does(pair):
    fast, slow = pair
    admins = Admin(fast), Admin(slow)
    before = loop_answers(admins[0])
    assert loop_answers(admins[1]) == 0  # FAZT_FASTPATH=off: every request on a thread
    sent = [f"Cookie: fazt_session={{}}\r\n{extra}" for extra in (
        "", "Connection: close\r\n", "Accept: text/html\r\n", "Accept-Encoding: gzip\r\n")]
    sent.append("Cookie: theme=dark; fazt_session={}; other=1\r\n")
    for extra in sent:
        a, b = (raw(server.port, request(extra.format(cookie_of(admin))))
                for server, admin in zip(pair, admins, strict=True))
        assert a[0] == "HTTP/1.1 200 OK", a
        assert shape(a) == shape(b), extra
        assert int(a[1]["Content-Length"]) == len(a[2])
    # each of them came from the loop (the Admin's own reads, through requests, too)
    assert loop_answers(admins[0]) == before + len(sent) + 1
    assert loop_answers(admins[1]) == 0  # FAZT_FASTPATH=off: every request on a thread

    def lines(server):
        return [re.sub(r" [\d.]+ms$", "", line) for line in server.log().splitlines()
                if STATUS in line]

    assert eventually(lambda: lines(fast) and lines(fast) == lines(slow)), \
        (lines(fast), lines(slow))


def test_what_the_loop_is_not_sure_of_goes_to_the_thread(pair):
    fast, slow = pair
    admins = Admin(fast), Admin(slow)
    token = admins[0].post("/api/tokens", json={"name": "ci"}).json()["token"]
    token_slow = admins[1].post("/api/tokens", json={"name": "ci"}).json()["token"]
    loop_answers(admins[0])  # a thread's: it brings the state up to date after the write
    before = loop_answers(admins[0])  # (a read reports the count before itself)
    cases = [
        ("Cookie: fazt_session=forged.a.b.c\r\n", "GET", STATUS, "1.1", "401"),
        ("", "GET", STATUS, "1.1", "401"),
        ("Cookie: fazt_session={}\r\n", "HEAD", STATUS, "1.1", None),
        ("Cookie: fazt_session={}\r\n", "GET", STATUS + "?x=1", "1.1", "200"),
        ("Cookie: fazt_session={}\r\n", "GET", STATUS, "1.0", "200"),
        ("Cookie: fazt_session={}\r\n", "GET", STATUS + "/", "1.1", None),
        ("Authorization: Bearer {}\r\n", "GET", STATUS, "1.1", "200"),
        ("Authorization: Bearer nope\r\nCookie: fazt_session={}\r\n", "GET", STATUS, "1.1",
         "401"),
    ]
    for extra, method, target, version, status in cases:
        answers = []
        for server, admin, tok in zip(pair, admins, (token, token_slow), strict=True):
            filled = extra.format(tok) if "Bearer {}" in extra else \
                extra.replace("{}", cookie_of(admin))
            answers.append(raw(server.port, request(filled, method, target, version)))
        a, b = answers
        assert a[0] == b[0], (extra, method, target, version)
        if status is not None:
            assert a[0].split()[1] == status, (extra, a)
        assert shape(a)[1] == shape(b)[1]
    assert loop_answers(admins[0]) == before + 1  # none of those: only this read


def test_a_signed_out_session_is_refused_from_the_next_read(pair):
    fast, _ = pair
    admin = Admin(fast)
    cookie = cookie_of(admin)
    assert raw(fast.port, request(f"Cookie: fazt_session={cookie}\r\n"))[0].endswith("200 OK")
    assert admin.post("/api/logout").status_code in (200, 204)
    line, _, body = raw(fast.port, request(f"Cookie: fazt_session={cookie}\r\n"))
    assert line.split()[1] == "401" and b"unauthorized" in body
