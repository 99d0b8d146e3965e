"""Serving user sites: static files from the VFS, and `/api/...` through the runtime.

A static path is answered by the first rule of the site's `_redirects` that
applies (where a file or a folder answers the path, only a forced `!` rule
does), else by its file, a folder's redirect to its trailing slash, and last
the site's `404.html` (or fazt's page). All of it from one version of the
site, the one it serves as the request begins (`VFS.live`), however a
rollback races the request.
"""

import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple
from urllib.parse import quote

import falcon

from fazt import proxies
from fazt.compression import ON_THE_FLY_MAX, compress_answer, worth_it
from fazt.constants import MB, SCRIPT
from fazt.deploy import clean_path, hidden_part
from fazt.errors import FaztError, TooLarge
from fazt.hosts import ADMIN, host_name
from fazt.http_errors import http_error
from fazt.https import came_over_https
from fazt.instance import MAINTENANCE, Instance
from fazt.negotiation import (
    CODINGS,
    IDENTITY,
    choose,
    compressible,
    etag,
    if_match,
    not_modified,
    pick,
    static_headers,
)
from fazt.runtime.response import JsResponse, error_response, site_cookie
from fazt.runtime.runtime import LOOP_SCRIPT_BYTES
from fazt.siterules import RULE_FILES, Rule, SiteRules
from fazt.store.sites import Body, FileInfo
from fazt.vfs import Stale

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)\Z")
NOT_FOUND_PAGE = "404.html"
_REDIRECT = {301: falcon.HTTPMovedPermanently, 302: falcon.HTTPFound, 303: falcon.HTTPSeeOther,
             307: falcon.HTTPTemporaryRedirect, 308: falcon.HTTPPermanentRedirect}


def _redirect(status: int, location: str) -> falcon.HTTPStatus:
    """A site's redirect holds until its next deploy, not for as long as a cache guesses
    (a 301 or 308 without Cache-Control may be kept for good): it is not stored at all,
    a redirect being a few bytes with no validator to revalidate it by."""
    return _REDIRECT[status](location, headers={"Cache-Control": "no-store"})


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """One byte range as [start, end), None for "send it all", or "416".

    RFC 9110: a Range we cannot parse (or several ranges) is ignored, and the
    whole file is sent; a well-formed range wholly past the end is 416.
    """
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    first, last = m.group(1), m.group(2)
    if first:
        start = int(first)
        end = min(int(last) + 1, size) if last else size
        if last and int(last) < start:
            return None
        if start >= size:
            return "416"
        return start, end
    suffix = int(last)
    if suffix == 0:
        return "416"
    if size == 0:
        return None  # no "bytes 0--1/0": an empty file's last bytes are the whole (empty) file
    return max(0, size - suffix), size


# Attempts of a request whose version went while it ran (Stale). With keep_versions 1,
# each deploy drops the version a request began with, so the retry's can go too: with
# a deploy every 10 ms, one try more answered about 1 request in 2,000 with 503 "stale".
STALE_TRIES = 4


class SiteResource:
    """The sink for every path on a site's host."""

    def __init__(self, instance: Instance):
        self.instance = instance

    def __call__(self, req: falcon.Request, resp: falcon.Response, site: str) -> None:
        if self.instance.mode == MAINTENANCE:
            raise http_error(503, "maintenance",
                             "This site is in maintenance; the owner is working on it.", 60)
        path = self._relative(req.path)
        status, headers = resp.status, resp.headers  # a copy
        for tries in range(STALE_TRIES, 0, -1):
            try:
                script = self._static_or_script(req, resp, site, path)
                break
            except Stale:  # the version looked in went meanwhile (another deploy): again,
                if tries == 1:  # with the next one (503 "stale", Retry-After, at the last)
                    raise
                # with nothing of the attempt's version kept (its 404 status, a header
                # only its _headers gives): the answer is the next version's alone
                resp.status = status
                for name in resp.headers:
                    if name not in headers:
                        resp.delete_header(name)
                for name, value in headers.items():
                    resp.set_header(name, value)
        if script is not None:  # outside the retry: the body is read once
            self._run(req, resp, site, script)

    def _static_or_script(self, req: falcon.Request, resp: falcon.Response, site: str,
                          path: str) -> FileInfo | None:
        """Answer a static request, or return the script when the site's back end answers
        it: from the version the site serves now, the same one for every part."""
        vfs = self.instance.vfs
        deploy = vfs.live(site)
        if deploy is not None and (path == "api" or path.startswith("api/")):
            script = vfs.find(site, SCRIPT, deploy)
            if script is not None:
                return script
        if req.method not in ("GET", "HEAD"):
            raise http_error(405, "method_not_allowed", "Static files answer GET and HEAD only.",
                             allow="GET, HEAD")
        if deploy is None:
            raise http_error(404, "no_such_site", f"There is no site named {site!r} here.")
        self._static(req, resp, site, deploy, path)
        return None

    def _static(self, req: falcon.Request, resp: falcon.Response, site: str, deploy: int,
                path: str) -> None:
        vfs = self.instance.vfs
        rules = vfs.rules(site, deploy)
        url = "/" + path + ("/" if path and req.path.endswith("/") else "")
        info = self._find(site, deploy, path, req.path)
        folder = (info is None and path and not req.path.endswith("/")
                  and vfs.find(site, _join(path, "index.html"), deploy) is not None)
        # A path something answers takes only a forced rule; any other the first rule.
        rule = rules.forced(url) if info is not None or folder else rules.fallback(url)
        if rule is not None:
            return self._apply(req, resp, site, deploy, rules, url, *rule)
        if info is not None:
            return self._send(req, resp, site, info, rules.headers_for(url))
        if folder:
            # req.path is decoded: a name outside ASCII ("café/", "✓/") goes out as UTF-8
            # percent-escapes, never as a raw byte or a character HTTP cannot carry.
            raise _redirect(301, quote(req.path) + "/" + _query(req.query_string))
        self._not_found(req, resp, site, deploy, rules.headers_for(url))

    def _apply(self, req: falcon.Request, resp: falcon.Response, site: str, deploy: int,
               rules: SiteRules, url: str, rule: Rule, params: dict[str, str]) -> None:
        """A `_redirects` rule: a redirect, or (200, 404) another file of the site."""
        if not rule.rewrite:
            # placeholders arrive decoded: encode them, then whatever the rule itself holds
            location = quote(rule.destination({k: quote(v) for k, v in params.items()}),
                             safe=":/?#[]@!$&'()*+,;=%~")
            if "?" not in location:
                location += _query(req.query_string)
            raise _redirect(rule.status, location)
        target = rule.destination(params).split("?", 1)[0].split("#", 1)[0]
        relative = self._relative(target)
        info = self._find(site, deploy, relative, target)
        if info is None and relative and not target.endswith("/"):
            info = self._find(site, deploy, relative, target + "/")  # a folder: its index.html
        if info is None:
            return self._not_found(req, resp, site, deploy, rules.headers_for(url))
        if rule.status == 404:
            return self._page(req, resp, site, info, rules.headers_for(url))
        self._send(req, resp, site, info, rules.headers_for(url))

    @staticmethod
    def _relative(raw: str) -> str:
        if raw in ("", "/") or not raw.replace("/", "").replace(".", "") and ".." not in raw:
            return ""  # "/./", "//.": the site's root, not "a path that leaves the site"
        try:
            return clean_path(raw.lstrip("/")) if raw.strip("/") else ""
        except FaztError as exc:
            raise http_error(400, "bad_path", exc.message) from None

    def _find(self, site: str, deploy: int, path: str, raw: str) -> FileInfo | None:
        vfs = self.instance.vfs
        if path in RULE_FILES:
            return None  # read by fazt, never served
        if hidden_part(path) is not None:
            return None  # never served, even where an older fazt stored it
        if path.startswith("api/") and vfs.find(site, SCRIPT, deploy) is not None:
            return None  # a back end's source is never served
        if not path or raw.endswith("/"):
            return vfs.find(site, _join(path, "index.html"), deploy)
        return vfs.find(site, path, deploy)

    def _not_found(self, req: falcon.Request, resp: falcon.Response, site: str, deploy: int,
                   site_headers: list[tuple[str, str]]) -> None:
        """The site's own 404.html with status 404, or fazt's page when it has none."""
        page = self.instance.vfs.find(site, NOT_FOUND_PAGE, deploy)
        if page is not None:
            return self._page(req, resp, site, page, site_headers)
        raise http_error(404, "not_found", "There is no file at this address.")

    def _page(self, req: falcon.Request, resp: falcon.Response, site: str, info: FileInfo,
              site_headers: list[tuple[str, str]]) -> None:
        """A file sent as the body of a 404: no validators or ranges, the coding negotiated."""
        body = pick(info, req.get_header("Accept-Encoding"))
        resp.status = falcon.HTTP_404
        headers = static_headers(info, body, site_headers=[("Cache-Control", "no-cache"),
                                                           *site_headers])
        _set_headers(resp, [h for h in headers if h[0] not in ("ETag", "Accept-Ranges")])
        if req.method != "HEAD":
            self._body(req, resp, site, info, body, 0, body.size)

    def _send(self, req: falcon.Request, resp: falcon.Response, site: str, info: FileInfo,
              site_headers: list[tuple[str, str]]) -> None:
        range_header = req.get_header("Range")
        body = pick(info, req.get_header("Accept-Encoding"), ranged=bool(range_header))
        match = req.get_header("If-Match")
        if match and not if_match(match, etag(body)):
            # RFC 9110 13.1.1, evaluated first (13.2.2): a client resuming a download of a
            # version a deploy replaced would otherwise splice the new bytes onto the old
            raise http_error(412, "precondition_failed",
                             "The file is no longer the version If-Match names.")
        if not_modified(req.get_header("If-None-Match"), body):
            resp.status = falcon.HTTP_304
            _set_headers(resp, static_headers(info, body, not_modified=True,
                                              site_headers=site_headers))
            return
        wanted = parse_range(range_header, body.size)
        if_range = req.get_header("If-Range")
        if if_range and if_range.strip() != etag(body):
            wanted = None
        if wanted == "416":
            # an error, not the file: without the file's ETag and max-age, which would let a
            # shared cache keep this answer and give it to the next plain GET
            raise falcon.HTTPError(falcon.HTTP_416, title="range_not_satisfiable",
                                   description=f"The file is {body.size} bytes long.",
                                   headers={"Content-Range": f"bytes */{body.size}"})
        _set_headers(resp, static_headers(info, body, site_headers=site_headers))
        start, end = wanted if wanted else (0, body.size)
        if wanted:
            resp.status = falcon.HTTP_206
            resp.set_header("Content-Range", f"bytes {start}-{end - 1}/{body.size}")
            resp.content_length = end - start
        if req.method != "HEAD":
            self._body(req, resp, site, info, body, start, end)

    def _body(self, req: falcon.Request, resp: falcon.Response, site: str, info: FileInfo,
              body: Body, start: int, end: int) -> None:
        vfs = self.instance.vfs
        try:
            if vfs.is_large(body):
                # the client's share of the downloads: by the key its connections count under
                resp.stream = vfs.stream(body, start, end,
                                         proxies.address_key(req.remote_addr or "-"))
            else:
                resp.data = vfs.content(site, info, body)[start:end]
        except FaztError:
            # An error (too many downloads, a file redeployed meanwhile), not the file: none
            # of the file's headers, which said its JSON was compressed (Content-Encoding)
            # and let a cache keep it for the file's max-age (see the 416 above).
            for name in FILE_HEADERS:
                resp.delete_header(name)
            raise

    def _run(self, req: falcon.Request, resp: falcon.Response, site: str, script: FileInfo) -> None:
        limit = js_body_limit(self.instance.config)
        length = req.content_length or 0
        if length > limit:
            raise TooLarge(f"The request body is over the limit of {limit // MB} MB.")
        body = req.bounded_stream.read(limit + 1) if length or req.method in ("POST", "PUT",
                                                                                  "PATCH") else b""
        request = handler_request(
            req.method, req.path, req.params, {k.lower(): v for k, v in req.headers.items()},
            body, limit)
        answer = run_handler(self.instance, site, script, request, req.get_header("Host"),
                             came_over_https(req), req.get_header("Accept-Encoding"))
        resp.status = falcon.code_to_http_status(answer.status)
        resp.data = answer.body
        _set_headers(resp, answer.headers.values())
        for cookie in answer.cookies:
            resp.append_header("Set-Cookie", cookie)


class HandlerAnswer(NamedTuple):
    """A handler's answer as it goes out: the headers (cookies apart) and the body
    after `_as_sent`, the cookies after `site_cookie`."""

    status: int
    headers: dict[str, tuple[str, str]]  # lowercased name -> (name, value)
    cookies: list[str]
    body: bytes


def js_body_limit(config: dict) -> int:
    """The largest request body a handler is given, in bytes."""
    return int(min(float(config["max_upload_mb"]), float(config["js_memory_mb"])) * MB)


def handler_request(method: str, path: str, params: Mapping[str, str | list[str]],
                    headers: dict[str, str], body: bytes, limit: int) -> dict:
    """The request object a handler receives (headers named in lowercase); TooLarge
    past `limit` bytes of body."""
    if len(body) > limit:
        raise TooLarge(f"The request body is over the limit of {limit // MB} MB.")
    return {
        "method": method,
        "path": path,
        "query": {k: v if isinstance(v, str) else v[-1] for k, v in params.items()},
        "headers": headers,
        "body": body.decode("utf-8", errors="replace"),
    }


def run_handler(instance: Instance, site: str, script: FileInfo, request: dict,
                host: str | None, https: bool, accept_encoding: str | None,
                on_loop: bool = False) -> HandlerAnswer | str | None:
    """Run the site's handler on `request` (JsBusy, ReadOnly: FaztErrors for the caller
    to answer) and shape what it answered for the wire. Every way to a handler calls it:
    the WSGI app's, and the direct ones on a lane thread and on the event loop
    (fazt.server.jspath). `on_loop`: from RAM alone, and None when a thread must run it
    (see Runtime.handle_on_loop); a usual answer comes back there as the handler's raw
    text, for the caller to `shape_answer(..., runtime.read_answer(site, text), ...)`
    unless it rendered the same answer before."""
    if on_loop:
        def source() -> str | None:
            if script.identity.size > LOOP_SCRIPT_BYTES:
                return None
            held = instance.vfs.held(site, script.path, IDENTITY, script.identity.sha256)
            return None if held is None else held.decode("utf-8", errors="replace")

        answer = instance.runtime.handle_on_loop(site, script.sha256, source, request, True)
        if answer is None or type(answer) is str:
            return answer
    else:
        def source() -> str:  # read only when a context is loaded, not per warm request
            return instance.vfs.content(site, script).decode("utf-8", errors="replace")

        answer = instance.runtime.handle(site, script.sha256, source, request)
    return shape_answer(instance, site, answer, host, https, accept_encoding)


def shape_answer(instance: Instance, site: str, answer: JsResponse, host: str | None,
                 https: bool, accept_encoding: str | None) -> HandlerAnswer:
    """A handler's checked answer as it goes out (its cookies, caching, compression)."""
    answer = _site_cookies(instance, site, answer, host, https)
    headers, body = _as_sent(answer, accept_encoding)
    return HandlerAnswer(answer.status, headers, answer.cookies, body)


def _site_cookies(instance: Instance, site: str, answer: JsResponse, host: str | None,
                  https: bool) -> JsResponse:
    """The handler's cookies as the site may set them (see runtime/response.py), or
    fazt's error with the reason in the site's log."""
    if not answer.cookies:
        return answer
    name = host_name(host)
    admin_hosts = (f"{ADMIN}.{instance.domain}", f"{ADMIN}.localhost")
    try:
        answer.cookies = [site_cookie(raw, name, admin_hosts, https) for raw in answer.cookies]
    except ValueError as exc:  # the cookie may hold a secret: not in the log, not sent
        message = instance.runtime.env.redact(site, f"handler set a cookie it may not: {exc}.")
        instance.runtime.logs_ring.add(site, "error", f"bad_response: {message}")
        return error_response(500, "bad_response", message)
    return answer


def _join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def _query(query_string: str) -> str:
    """The request's query string for a Location ("?..."), or "": what a header cannot
    carry (a control character, a space, a byte outside ASCII) percent-encoded, the
    escapes the client sent kept as they are."""
    if not query_string:
        return ""
    return "?" + quote(query_string, safe="!#$%&'()*+,/:;=?@[]~")


def _as_sent(answer: JsResponse, accept_encoding: str | None
             ) -> tuple[dict[str, tuple[str, str]], bytes]:
    """A handler's headers and body as they go out: `no-store` unless the handler says
    otherwise (an answer may be personal: no shared cache should keep it), and an answer
    of 1 KiB to ON_THE_FLY_MAX in a compressible type compressed for a client that takes
    it, unless the handler encoded it or gave it an ETag of its own."""
    headers = keyed_headers(answer.headers)
    headers.setdefault("cache-control", ("Cache-Control", "no-store"))
    body = answer.body
    if compressed_size(len(body)) and may_compress(answer.status, headers):
        vary = headers.get("vary", ("Vary", ""))[1]
        headers["vary"] = ("Vary", f"{vary}, Accept-Encoding" if vary else "Accept-Encoding")
        coding = choose(accept_encoding, CODINGS)
        if coding != IDENTITY:
            packed = compress_answer(body, coding)
            if worth_it(len(body), len(packed)):
                headers["content-encoding"] = ("Content-Encoding", coding)
                body = packed
    return headers, body


def keyed_headers(headers: dict[str, str]) -> dict[str, tuple[str, str]]:
    """A handler's headers by their lowercased names, as `_as_sent` and `may_compress`
    key them."""
    return {name.lower(): (name, value) for name, value in headers.items()}


def compressed_size(size: int) -> bool:
    """Whether a handler's body of `size` bytes is one `_as_sent` may compress."""
    return 1024 <= size <= ON_THE_FLY_MAX


def may_compress(status: int, headers: dict[str, tuple[str, str]]) -> bool:
    """Whether an answer of this status and these headers (as `_as_sent` keys them) is
    compressed when its body's size is in range and the client takes an encoding."""
    return (status not in (204, 206, 304) and compressible(headers["content-type"][1])
            and not {"content-encoding", "etag", "content-range"} & headers.keys())


# What static_headers (and a range) say of a file: dropped when its body fails (_body)
FILE_HEADERS = ("ETag", "Cache-Control", "Vary", "Content-Type", "Content-Encoding",
                "Accept-Ranges", "Content-Length", "Content-Range")


def _set_headers(resp: falcon.Response, headers: Iterable[tuple[str, str]]) -> None:
    for name, value in headers:
        resp.set_header(name, value)
