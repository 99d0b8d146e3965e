"""`_redirects` and `_headers`: what parses, what matches, what is refused and where."""

import pytest

from fazt.errors import FaztError
from fazt.siterules import SiteRules, parse_headers, parse_redirects


def rules(redirects: str = "", headers: str = "") -> SiteRules:
    return SiteRules.of(parse_redirects(redirects), parse_headers(headers))


def test_first_matching_rule_wins_with_its_placeholders():
    r = rules("/a/:x   /one/:x  302\n/a/*  /two/:splat\n/  /home 200\n")
    rule, params = r.fallback("/a/b")
    assert (rule.status, rule.destination(params)) == (302, "/one/b")
    rule, params = r.fallback("/a/b/c")
    assert (rule.status, rule.destination(params)) == (301, "/two/b/c")
    assert r.fallback("/")[0].status == 200
    assert r.fallback("/b") is None and r.forced("/a/b") is None


def test_forced_rules_are_kept_apart():
    r = rules("/x  /y  301!\n/z  /w\n")
    assert r.forced("/x")[0].target == "/y" and r.forced("/z") is None


def test_headers_from_every_matching_block_are_merged():
    r = rules(headers="/*\n  X-A: 1\n  Link: </a.css>\n/docs/*\n  Link: </b.css>\n"
                      "  # a comment\n  X-B: 2\n")
    assert r.headers_for("/docs/x") == [("X-A", "1"), ("Link", "</a.css>, </b.css>"),
                                        ("X-B", "2")]
    assert r.headers_for("/") == [("X-A", "1"), ("Link", "</a.css>")]


@pytest.mark.parametrize("text,line,words", [
    ("/a\n", 1, "FROM path"),
    ("\n\n/a /b 301 Country=us\n", 3, "not supported"),
    ("/a /b 299\n", 1, "not one of"),
    ("a /b\n", 1, "must start with '/'"),
    ("/a/*/b /c\n", 1, "only end a path"),
    ("/a b\n", 1, "must be a path"),
    ("/a/:id /b/:name\n", 1, "':name'"),
    ("/a/:id/:id /b\n", 1, "used twice"),
    ("/a https://x.example/ 200\n", 1, "proxying"),
])
def test_bad_redirect_lines(text, line, words):
    with pytest.raises(FaztError, match=f"^_redirects line {line}: .*{words}"):
        parse_redirects(text)


@pytest.mark.parametrize("text,line,words", [
    ("  X-A: 1\n", 1, "before any path"),
    ("/a\n  no colon here\n", 2, "Name: value"),
    ("/a\n  Vary: Cookie\n", 2, "cannot be set"),
    ("/a\n  Set-Cookie: a=b\n", 2, "cannot be set"),
    ("/a\n/b\n  X-A: 1\n", 1, "no headers"),
    ("/a /b\n  X-A: 1\n", 1, "one path"),
    ("/a\n  X-A: bad\x01value\n", 2, "control character"),
])
def test_bad_header_lines(text, line, words):
    with pytest.raises(FaztError, match=f"^_headers line {line}: .*{words}"):
        parse_headers(text)


def test_files_saved_by_windows_editors_parse():
    """A byte order mark and CRLF line ends, as Notepad writes them."""
    r = rules("\ufeff/old  /new  302\r\n/x  /y\r\n", "\ufeff/*\r\n  X-A: 1\r\n")
    assert r.fallback("/old")[0].target == "/new" and r.fallback("/x")[0].status == 301
    assert r.headers_for("/any") == [("X-A", "1")]
