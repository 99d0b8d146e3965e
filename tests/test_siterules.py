"""`_redirects` and `_headers`: what parses, what matches, what is refused and where."""

import pytest

from fazt.errors import FaztError
from fazt.siterules import SiteRules, check_rules, parse_headers, parse_redirects
from fazt.store.sites import NewFile


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


def test_a_forced_rule_does_not_jump_ahead_of_an_earlier_one():
    """First match wins among the rules that apply: where no file answers, every rule
    applies, and the forced one below an ordinary one comes second."""
    r = rules("/a  /x  302\n/a  /y  302!\n/*  /index.html  200\n/b/*  /z  302!\n")
    assert r.fallback("/a")[0].target == "/x" and r.forced("/a")[0].target == "/y"
    assert r.fallback("/b/q")[0].target == "/index.html" and r.forced("/b/q")[0].target == "/z"


def test_comments_begin_a_line_or_follow_a_space_so_fragments_stay():
    r = rules("# moved\n/frag  /about.html#team  302\n/b  https://x.example/#install  302  "
              "# with a note\n")
    assert r.fallback("/frag")[0].destination({}) == "/about.html#team"
    rule = r.fallback("/b")[0]
    assert (rule.status, rule.target) == (302, "https://x.example/#install")


def test_a_percent_encoded_path_matches_the_request_it_names():
    """Netlify's own example: the request's path is matched decoded, so FROM is too."""
    r = rules("/authors/c%C3%A9line  /authors/about-c%C3%A9line\n/sp%20ace  /space  302\n"
              "/raw/café  /cafe  302\n")
    assert r.fallback("/authors/céline")[0].target == "/authors/about-c%C3%A9line"
    assert r.fallback("/sp ace")[0].status == 302 and r.fallback("/raw/café") is not None


def test_a_colon_inside_a_target_is_text_unless_it_names_a_placeholder():
    r = rules("/help  https://en.wikipedia.org/wiki/Help:Contents  301\n"
              "/s  /search?q=tag:news  302\n/u/:id  /users/:id/profile:id  302\n")
    assert r.fallback("/help")[0].destination({}) == "https://en.wikipedia.org/wiki/Help:Contents"
    assert r.fallback("/s")[0].destination({}) == "/search?q=tag:news"
    rule, params = r.fallback("/u/7")
    assert rule.destination(params) == "/users/7/profile7"


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
    ("/a/:id /b/x/:nmae/c\n", 1, "':nmae'"),
    ("/a/:id/:id /b\n", 1, "used twice"),
    ("/a https://x.example/ 200\n", 1, "proxying"),
    ("/a\x00 /b 301\n", 1, "control character"),
    # a form feed, a vertical tab, U+2028 end no line for an editor: the count stays right
    ("/a /b\x0c 301\n/c /d 302\n/e /f 999\n", 1, "control character"),
    ("# notes\x0bmore\n/c /d 302\n/e /f 999\n", 1, "control character"),
    ("/a /b 301\u2028/c /d 302\n", 1, "control character"),
    ("/a /b 301\r/c /d 999\r", 2, "not one of"),  # an old Mac's line ends are line ends
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
    ("/a\n  X-A: \u2713\n", 2, "outside Latin-1"),
    ("/a\n  Date: Thu, 01 Jan 1970 00:00:00 GMT\n", 2, "cannot be set"),
    ("/a\n  Server: mine\n", 2, "cannot be set"),
    ("/a\n  X-A: 1\x85\n  Vary: x\n", 2, "control character"),  # U+0085 ends no line either
    ("/a\n  Last-Modified: Thu, 01 Jan 1970 00:00:00 GMT\n", 2, "cannot be set"),
    ("/a\n  Strict-Transport-Security: max-age=1\n", 2, "cannot be set"),
    # hop-by-hop: Waitress refuses them from an application (a thread's 500)
    ("/a\n  Proxy-Authenticate: Basic\n", 2, "cannot be set"),
    ("/a\n  Proxy-Authorization: Basic eA==\n", 2, "cannot be set"),
    ("/a\n  Trailers: x\n", 2, "cannot be set"),
])
def test_bad_header_lines(text, line, words):
    with pytest.raises(FaztError, match=f"^_headers line {line}: .*{words}"):
        parse_headers(text)


def test_an_older_headers_file_loses_only_the_names_fazt_owns():
    """A `_headers` deployed before a name was refused still applies, without that name
    (sent twice, a Date or a Server would contradict fazt's own)."""
    text = "/*\n  Date: yesterday\n  X-A: 1\n  Server: mine\n"
    assert parse_headers(text, strict=False)[0].headers == (("X-A", "1"),)
    text = "/*\n  Proxy-Authenticate: Basic\n  X-A: 1\n  Trailers: x\n"
    assert parse_headers(text, strict=False)[0].headers == (("X-A", "1"),)


def test_files_saved_by_windows_editors_parse():
    """A byte order mark and CRLF line ends, as Notepad writes them."""
    r = rules("\ufeff/old  /new  302\r\n/x  /y\r\n", "\ufeff/*\r\n  X-A: 1\r\n")
    assert r.fallback("/old")[0].target == "/new" and r.fallback("/x")[0].status == 301
    assert r.headers_for("/any") == [("X-A", "1")]


def test_an_older_file_with_a_control_character_keeps_its_rules():
    """Refused at deploy now, but a file an older fazt took still serves its rules."""
    r = parse_redirects("/a\x01  /b  302\n/c  /d  302\n", strict=False)
    assert [rule.target for rule in r] == ["/b", "/d"]


def deployed(redirects: str, *names: str) -> None:
    """check_rules on a deploy of `names` (empty files) and this `_redirects`."""
    files = [NewFile(name, "text/html", [b""]) for name in names]
    check_rules([*files, NewFile("_redirects", "text/plain", [redirects.encode()])])


@pytest.mark.parametrize("text,names,line", [
    ("/a  /a  301\n", (), 1),
    ("/x  /y  302\n/a  /b  302\n/b  /a  302\n", (), 2),
    ("/a/*  /a/:splat  301\n", (), 1),
    ("/*  /index.html  301!\n", ("index.html",), 1),  # forced: even where the file is
    ("/docs  /docs/  301\n", (), 1),  # no folder there: /docs/ matches the rule again
    ("/search  /search?q=all  302\n", (), 1),  # the query string is not matched
    ("/:lang/*  /:lang/home  302\n", (), 1),
])
def test_a_loop_of_redirects_is_refused(text, names, line):
    with pytest.raises(FaztError, match=f"^_redirects line {line}: .*loop of redirects"):
        deployed(text, *names)


@pytest.mark.parametrize("text,names", [
    ("/a  /a  301\n", ("a",)),  # a file answers /a: the rule never applies
    ("/*  /index.html  301\n", ("index.html",)),
    ("/docs  /docs/  301\n", ("docs/index.html",)),
    ("/old  /new  301\n/new  /old  301\n", ("new",)),
    ("/*  /blog/:splat  301\n", ("blog/a.html",)),  # grows for a missing page, never loops
    ("/*  /api/:splat  302\n", ("api/main.js",)),  # the back end answers there
    ("/*  /index.html  200\n", ()),
    ("/a  https://elsewhere.example/a  301\n", ()),
])
def test_redirects_that_end_are_taken(text, names):
    deployed(text, *names)
