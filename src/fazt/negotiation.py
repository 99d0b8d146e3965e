"""Content negotiation for static files: which stored body a request gets, with which headers.

This is the one place those decisions are made, and it is pure (no I/O, no
Falcon): the normal path (`fazt.sites.SiteResource`) and the event loop's fast
path (`fazt.server.fastpath`, which answers cache hits with pre-rendered
headers) both call `pick` and `static_headers`, so the two can never send a
different body or different headers for the same request. What sites.py does
around them applies to the fast path too: a path a forced (`!`) rule of the
site's `_redirects` matches is not a plain file hit, and the site's `_headers`
for the request's path (`vfs.rules(site).headers_for(path)`) go in as
`site_headers`.

- `choose` reads `Accept-Encoding` as RFC 9110 (section 12.5.3) says: q-values,
  `*`, `identity`, `q=0` refusals, no header or an empty one meaning identity.
  A coding the client names with any q above 0 wins over an identity it does
  not name (as nginx and Caddy read it: "gzip;q=0.5" still asks for gzip).
  When a client refuses every coding on offer, identity included, it still gets
  identity (the content is usable; a 406 would help nobody).
- `pick` chooses among a file's stored bodies: the content itself and the
  variants made at deploy. A `Range` request always gets identity, so byte
  offsets mean the same whatever the client accepts.
- `static_headers` renders the headers of a 200 or a 304: every body has its
  own strong ETag (its own SHA-256), and every compressible file says
  `Vary: Accept-Encoding`, whichever body it sent.
"""

import functools
import re
from collections.abc import Iterable, Sequence

from fazt.store.sites import Body, FileInfo

CODINGS = ("br", "gzip")  # the variants made at deploy, usually smallest first
IDENTITY = "identity"
UNNAMED_IDENTITY = 0.0001  # below any q a client can write (three decimals at most)

_COMPRESSIBLE = frozenset({
    "application/javascript", "application/x-javascript", "application/json",
    "application/xml", "application/wasm", "application/manifest+json",
    "application/rss+xml", "application/atom+xml", "application/ld+json",
    "application/geo+json", "image/svg+xml", "image/x-icon", "image/vnd.microsoft.icon",
    "image/bmp", "font/ttf", "font/otf", "application/x-font-ttf",
})

HTML_CACHE = "no-cache"  # a page always revalidates, so a deploy shows at once
ASSET_CACHE = "max-age=300"
IMMUTABLE_CACHE = "max-age=31536000, immutable"
# A content hash in the name: the name changes whenever the content does, so the file can
# be kept for a year unasked. Hex of 8+ digits and letters ("app.3f9a1c2e.js": webpack,
# Parcel, Angular), or Vite's 8 base64url characters ("index-BwOPSdeb.js"), told from a
# word ("app-MyWidget.js", "bundle-version2.js") by mixed case with a digit or three capitals;
# a word and a number ("logo-iPhone15.svg", "bg-decade10.css") is a name, not a hash.
_FINGERPRINT = re.compile(
    r"[.-](?![A-Za-z]+[0-9]+\.|[0-9]+[A-Za-z]+\.)"
    r"(?:(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{8,}"
    r"|(?=[\w-]*[a-z])(?=[\w-]*[A-Z])(?=[\w-]*[0-9]|(?:[\w-]*?[A-Z]){3})[A-Za-z0-9_-]{8})"
    r"\.[A-Za-z0-9]+$")


@functools.lru_cache(maxsize=256)  # asked per handler answer, of a few types
def compressible(mime: str) -> bool:
    """Whether a type is worth compressing (text, scripts, JSON, SVG, fonts without
    their own compression); images, video, archives and woff2 already are."""
    base = mime.split(";", 1)[0].strip().lower()
    return (base.startswith("text/") or base in _COMPRESSIBLE
            or base.endswith("+json") or base.endswith("+xml"))


def accepted(header: str) -> dict[str, float]:
    """`Accept-Encoding` as {coding: q}; a malformed q counts as a refusal."""
    weights: dict[str, float] = {}
    for item in header.split(","):
        name, _, params = item.partition(";")
        name = name.strip().lower()
        if not name:
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:
                    q = 0.0
        weights["gzip" if name == "x-gzip" else name] = q
    return weights


def choose(header: str | None, offered: Iterable[str]) -> str:
    """The coding to send: one of `offered` (a subset of CODINGS) or 'identity';
    among codings the client weighs the same, the first offered."""
    if not header or not header.strip():
        return IDENTITY  # no header, or an empty one: the client wants no coding
    return _choose(profile(header), tuple(offered))


_KNOWN = (*CODINGS, IDENTITY)


@functools.lru_cache(maxsize=256)  # clients send a handful of distinct headers
def profile(header: str) -> tuple[float, ...]:
    """The weight a non-empty `header` gives each coding fazt knows (CODINGS, then
    identity): all that `choose` reads of it. Headers of one profile get the same
    answers, so a cache keyed by the profile is not flushed by a client that sends
    another spelling each time ("gzip", "gzip ", "GZIP;q=1", ...)."""
    weights = accepted(header)
    star = weights.get("*")

    def weight(coding: str) -> float:
        if coding in weights:
            return weights[coding]
        if star is not None:
            return star
        # identity stays acceptable unless refused, but any coding the client names wins
        return UNNAMED_IDENTITY if coding == IDENTITY else 0.0

    return tuple(weight(coding) for coding in _KNOWN)


@functools.lru_cache(maxsize=256)
def _choose(weights: tuple[float, ...], offered: tuple[str, ...]) -> str:
    best, best_q = IDENTITY, 0.0
    for coding in (*offered, IDENTITY):
        q = weights[_KNOWN.index(coding)]
        if q > best_q:
            best, best_q = coding, q
    return best


def pick(info: FileInfo, accept_encoding: str | None, ranged: bool = False) -> Body:
    """The body to send for `info`: a variant when the client takes one, else identity.
    `ranged`: the request has a Range header, which always gets identity."""
    if ranged or not info.variants or not compressible(info.mime):
        # (a variant is stored per content: the same bytes under a name of a type fazt
        # does not compress, "LICENSE", get none, and no Vary says they might)
        return info.identity
    coding = choose(accept_encoding, tuple(v.encoding for v in info.variants))
    for variant in info.variants:
        if variant.encoding == coding:
            return variant
    return info.identity


def etag(body: Body) -> str:
    return f'"{body.sha256}"'


@functools.lru_cache(maxsize=1024)
def cache_control(path: str, mime: str) -> str:
    if mime.startswith("text/html"):
        return HTML_CACHE
    if _FINGERPRINT.search(path.rsplit("/", 1)[-1]):
        return IMMUTABLE_CACHE
    return ASSET_CACHE


def not_modified(if_none_match: str | None, body: Body) -> bool:
    """If-None-Match (weak comparison, as RFC 9110 asks) against this body's ETag."""
    return etag_matches(if_none_match, etag(body))


def etag_matches(if_none_match: str | None, tag: str) -> bool:
    """`not_modified` for a body known by its ETag alone."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    return any(t.strip().removeprefix("W/") == tag for t in if_none_match.split(","))


def if_match(header: str, tag: str) -> bool:
    """If-Match against an ETag: `*`, or the tag in the list by strong comparison (RFC 9110
    13.1.1: a weak tag never matches)."""
    return header.strip() == "*" or any(t.strip() == tag for t in header.split(","))


def static_headers(info: FileInfo, body: Body, *, not_modified: bool = False,
                   site_headers: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """Every header of a 200 (or, with `not_modified`, a 304) that sends `body` of `info`.

    `site_headers` are the site's own (its `_headers` file): a name given there
    replaces fazt's value for it (say, a longer Cache-Control).
    """
    headers = [("ETag", etag(body)), ("Cache-Control", cache_control(info.path, info.mime))]
    if compressible(info.mime):
        headers.append(("Vary", "Accept-Encoding"))
    if not not_modified:
        headers.append(("Content-Type", info.mime))
        if body.encoding != IDENTITY:
            headers.append(("Content-Encoding", body.encoding))
        headers += [("Accept-Ranges", "bytes"), ("Content-Length", str(body.size))]
    if site_headers:
        replaced = {name.lower() for name, _ in site_headers}
        headers = [h for h in headers if h[0].lower() not in replaced] + list(site_headers)
    return headers
