"""Content negotiation as a pure function: Accept-Encoding, the body picked, its headers."""

import pytest

from fazt.negotiation import cache_control, choose, compressible, not_modified, pick, static_headers
from fazt.store.sites import Body, FileInfo

BOTH = ("br", "gzip")


@pytest.mark.parametrize("header,offered,expected", [
    (None, BOTH, "identity"),                       # no header: identity
    ("", BOTH, "identity"),                         # empty: no coding wanted
    ("gzip", BOTH, "gzip"),
    ("br", BOTH, "br"),
    ("gzip, deflate, br", BOTH, "br"),              # a tie goes to the smaller
    ("gzip, deflate, br, zstd", BOTH, "br"),
    ("br;q=0, gzip", BOTH, "gzip"),
    ("gzip;q=0.5, br;q=0.4", BOTH, "gzip"),
    ("GZIP;Q=0.5, BR;Q=0.9", BOTH, "br"),
    ("gzip;q=1.0, identity; q=0.5, *;q=0", BOTH, "gzip"),
    ("*", BOTH, "br"),
    ("*;q=0", BOTH, "identity"),                    # refuses all: identity is still usable
    ("*;q=0, gzip", BOTH, "gzip"),
    ("identity", BOTH, "identity"),
    ("identity;q=0, gzip;q=0.1", BOTH, "gzip"),
    ("br;q=0, gzip;q=0", BOTH, "identity"),
    ("deflate", BOTH, "identity"),                  # nothing we have
    ("x-gzip", BOTH, "gzip"),
    ("br;q=abc, gzip", BOTH, "gzip"),               # a malformed q counts as a refusal
    ("br;q=2", ("gzip",), "identity"),
    ("br, gzip", ("gzip",), "gzip"),                # only the variants that exist
    ("br", (), "identity"),
])
def test_choose(header, offered, expected):
    assert choose(header, offered) == expected


INFO = FileInfo("app.js", 1, "a" * 64, 5000, "text/javascript; charset=utf-8",
                (Body("br", 3, "b" * 64, 900), Body("gzip", 2, "c" * 64, 1100)))


def test_pick_and_ranges():
    assert pick(INFO, "gzip, br").encoding == "br"
    assert pick(INFO, "gzip").sha256 == "c" * 64
    assert pick(INFO, "gzip, br", ranged=True) == INFO.identity
    assert pick(INFO, None) == INFO.identity


def test_headers_of_each_body():
    identity = dict(static_headers(INFO, INFO.identity))
    br = dict(static_headers(INFO, pick(INFO, "br")))
    assert identity["Vary"] == br["Vary"] == "Accept-Encoding"
    assert "Content-Encoding" not in identity and br["Content-Encoding"] == "br"
    assert identity["ETag"] != br["ETag"]
    assert br["Content-Length"] == "900" and identity["Content-Length"] == "5000"
    not_mod = dict(static_headers(INFO, pick(INFO, "br"), not_modified=True))
    assert not_mod["ETag"] == br["ETag"] and not_mod["Vary"] == "Accept-Encoding"
    assert "Content-Length" not in not_mod and "Content-Encoding" not in not_mod
    png = FileInfo("a.png", 1, "d" * 64, 10, "image/png")
    assert "Vary" not in dict(static_headers(png, png.identity))


def test_site_headers_replace_fazts():
    headers = static_headers(INFO, INFO.identity, site_headers=[("cache-control", "no-store"),
                                                                 ("X-Frame-Options", "DENY")])
    assert [v for n, v in headers if n.lower() == "cache-control"] == ["no-store"]
    assert ("X-Frame-Options", "DENY") in headers


def test_not_modified_compares_this_bodys_etag():
    br = pick(INFO, "br")
    assert not_modified(f'"{"b" * 64}"', br) and not_modified(f'W/"{"b" * 64}"', br)
    assert not not_modified(f'"{"a" * 64}"', br) and not_modified(f'"x", "{"a" * 64}"', INFO)
    assert not_modified("*", br) and not not_modified(None, br)


@pytest.mark.parametrize("path,mime,expected", [
    ("index.html", "text/html; charset=utf-8", "no-cache"),
    ("assets/index.3f9a1c2e.js", "text/javascript", "max-age=31536000, immutable"),
    ("assets/index-B3xkT9aQ.js", "text/javascript", "max-age=31536000, immutable"),
    ("main.5f8e7c3b1a2d4e6f.css", "text/css", "max-age=31536000, immutable"),
    ("app.js", "text/javascript", "max-age=300"),
    ("assets/index-BwOPSdeb.js", "text/javascript", "max-age=31536000, immutable"),
    ("codeMirrorModule--QdMvsKi.css", "text/css", "max-age=31536000, immutable"),
    ("app-Settings.js", "text/javascript", "max-age=300"),      # a word, not a hash
    ("app-MyWidget.js", "text/javascript", "max-age=300"),
    ("bundle-version2.js", "text/javascript", "max-age=300"),
    ("jquery-3.7.1.min.js", "text/javascript", "max-age=300"),
    ("polyfill-20240101.js", "text/javascript", "max-age=300"),  # a date, not a hash
    ("logo.png", "image/png", "max-age=300"),
])
def test_cache_control(path, mime, expected):
    assert cache_control(path, mime) == expected


def test_compressible():
    assert compressible("text/html; charset=utf-8") and compressible("application/json")
    assert compressible("image/svg+xml") and compressible("application/vnd.api+json")
    assert not compressible("image/png") and not compressible("font/woff2")
    assert not compressible("application/zip")
