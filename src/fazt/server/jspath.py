"""Site back ends without WSGI or Falcon: a request for a site's `/api/` goes from the
loop straight to a lane thread, which runs the handler and renders the answer once.

Through Waitress's WSGITask and Falcon, a trivial handler's request cost about twice
what running the handler costs (the environ, Falcon's request and response, the
middleware, then Waitress framing the answer; issue 16). Here the thread builds the
handler's request object from what the loop's parser already holds and writes the
answer in one piece.

The answer is the one the WSGI app gives, because the handler is run and its answer
shaped by the same functions (`fazt.sites.handler_request` and `run_handler`), the
errors by `fazt.http_errors`, and the bytes are framed as Falcon and Waitress frame
them: Falcon's status line, header names with each dash-separated part capitalised,
sorted by name (same-named ones in order), Content-Length except for 204 and 304,
`Server` and `Date`, `Connection: close` when the client asked for it. Anything
unusual is left to the WSGI app, decided on the loop (HTTP/1.0, a chunked body, the
plain port while HTTPS redirects, trusted proxies) or on the thread before the
handler runs (maintenance, a path outside ASCII or that does not clean, a site
without a back end).

A quick handler does not even go to a thread: `on_loop` runs it on the event
loop when all it needs is in RAM (see Runtime.handle_on_loop for what keeps it
harmless there), through the same `_respond`. The per-request work is kept
small for both ways (a path cleaned once, header names spelled once): on the
loop it is most of what a handler's answer costs beside the handler. So the loop
also remembers, by the answer's status and headers as the handler wrote them, the
head it rendered for them (`_PLANS`), made once by the same functions
(`response.read_answer`, `sites.shape_answer`, `_head`); the next such answer is
its body framed under that head.
"""

import sys
import time
import traceback
from functools import lru_cache

import falcon
from falcon.util.uri import parse_query_string

from fazt import http_errors
from fazt.constants import SCRIPT
from fazt.errors import FaztError
from fazt.hosts import SITE
from fazt.https import hsts
from fazt.instance import MAINTENANCE, NORMAL, Instance
from fazt.requestlog import RequestLog, line
from fazt.server import responses
from fazt.server.bridge import Job
from fazt.sites import (
    SiteResource,
    compressed_size,
    handler_request,
    js_body_limit,
    keyed_headers,
    may_compress,
    run_handler,
    shape_answer,
)
from fazt.store.sites import FileInfo
from fazt.vfs import Stale

_KEEP_BLANK = falcon.RequestOptions().keep_blank_qs_values  # as the sites' Falcon app parses
_DROPPED = frozenset({"X_FORWARDED_PROTO", "FORWARDED"})  # fazt.proxies drops them
_BODILESS = (204, 304)


@lru_cache(maxsize=1024)
def _spell(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


@lru_cache(maxsize=4096)
def _api_path(raw: str) -> str | None:
    """The cleaned path of a request for a site's back end (under api/), or None."""
    if not raw.isascii():
        return None  # Falcon decodes it from Latin-1: let it
    try:
        path = SiteResource._relative(raw)
    except falcon.HTTPError:
        return None
    return path if path == "api" or path.startswith("api/") else None


class JsPath:
    def __init__(self, instance: Instance, log: RequestLog | None = None):
        self.instance = instance
        self.log = log
        self.answered = 0
        self.on_loop_answers = 0  # of those, answered on the event loop
        self._scripts: dict[str, FileInfo] = {}  # site -> script, for the loop
        self._scripts_generation = -1

    def wants(self, conn, parser) -> bool:
        """On the loop: whether the request looks like one for a site's back end."""
        target = conn.target
        if target is None or target.kind != SITE or parser.version != "1.1" or parser.chunked:
            return False
        path = parser.path.lstrip("/")
        if not (path == "api" or path.startswith("api/")):
            return False
        instance = self.instance
        if instance.https_port and conn.listener.scheme != "https":
            return False  # the plain port may redirect (fazt.https)
        return not instance.config["trusted_proxies"]  # the WSGI app names who is behind

    def answer(self, conn, parser) -> tuple[bytes, bool] | None:
        """On a lane thread: (the whole answer, close after it), or None when the WSGI
        app must answer (nothing was run yet)."""
        began = time.monotonic()
        instance = self.instance
        instance.refresh()  # what any writer committed is served from this request on
        if instance.mode == MAINTENANCE or instance.config["trusted_proxies"]:
            return None
        try:
            found = self._script(conn, parser, instance.vfs.find)
        except Stale:  # the version looked in went meanwhile: the WSGI app looks again
            return None
        if found is None:
            return None
        return self._respond(conn, parser, *found, began, on_loop=False)

    def on_loop(self, conn, parser) -> tuple[bytes, bool] | None:
        """On the event loop: the same, when the site's handler is quick enough to run
        right here (Runtime.handle_on_loop) and all it needs is in RAM; None: a thread
        answers (`answer`), and nothing was run, or nothing that shows."""
        began = time.monotonic()
        instance = self.instance
        if not instance.is_current() or instance.mode != NORMAL:
            return None  # a thread brings the state up to date
        body = parser.body_rcv.buf if parser.body_rcv is not None else None
        if body is not None and getattr(body, "on_disk", True):
            return None  # a body on disk is read on a thread
        found = self._script(conn, parser, self._known_script)
        if found is None:
            return None
        return self._respond(conn, parser, *found, began, on_loop=True)

    def sweep(self) -> None:
        """On the loop, once a second (the server's sweep)."""
        self.instance.runtime.check_loop_context()

    def _known_script(self, site: str, name: str) -> FileInfo | None:
        """`vfs.known` for the script, remembered until a site changes."""
        vfs = self.instance.vfs
        if self._scripts_generation != vfs.generation:
            self._scripts.clear()
            self._scripts_generation = vfs.generation
        script = self._scripts.get(site)
        if script is None:
            script = vfs.known(site, name)
            if script is not None:
                if len(self._scripts) >= 1024:
                    self._scripts.clear()
                self._scripts[site] = script
        return script

    @staticmethod
    def _script(conn, parser, find) -> tuple[str, str, FileInfo] | None:
        """(the path as Waitress gives it, the site, its script), or None when the request
        is not plainly one for the site's back end (the WSGI app explains)."""
        raw = parser.path
        if raw.startswith("//"):
            raw = "/" + raw.lstrip("/")  # Waitress's PATH_INFO
        if _api_path(raw) is None:
            return None
        site = conn.target.site
        script = find(site, SCRIPT)
        return None if script is None else (raw, site, script)

    def _respond(self, conn, parser, raw: str, site: str, script: FileInfo, began: float,
                 on_loop: bool) -> tuple[bytes, bool] | None:
        instance = self.instance
        headers = parser.headers
        method = parser.command.upper()
        tls = conn.listener.scheme == "https"
        close = headers.get("CONNECTION", "").lower() == "close"
        hsts_on = tls and bool(instance.https_port)
        plan_key = None
        try:
            answer = self._run(parser, method, raw, site, script, tls, on_loop)
            if answer is None:
                return None
            if type(answer) is str:  # on the loop, a usual answer as the handler wrote it
                meta, _, text = answer.partition("\n")
                key = (site, meta[meta.find(" ") + 1:], close,
                       hsts_on and instance.config.get("hsts_max_age"))
                plan = _PLANS.get(key)
                if plan is not None:
                    done = self._planned(conn, parser, plan, text, method, raw, began, close)
                    if done is not None:
                        return done
                checked = instance.runtime.read_answer(site, answer)
                sized = _plan_kind(checked)
                if sized is not None:
                    plan_key = key
                answer = shape_answer(instance, site, checked, headers.get("HOST"), tls,
                                      headers.get("ACCEPT_ENCODING"))
            # `sent` is this answer's own dict (made by _as_sent): HSTS is added to it below
            status, sent, body = answer.status, answer.headers, answer.body
            cookies = answer.cookies
        except FaztError as exc:
            plan_key = None
            status, sent, body = self._error(raw, headers, http_errors.status_of(exc),
                                             exc.code, exc.message,
                                             getattr(exc, "retry_after", None))
            cookies = []
        except Exception as exc:  # noqa: BLE001 - as the WSGI app's last error handler
            plan_key = None
            sys.stderr.write(f"fazt: unexpected error on {method} {raw}\n"
                             + "".join(traceback.format_exception(exc)))
            status, sent, body = self._error(raw, headers, 500, "internal_error",
                                             "Something went wrong on the server; it is logged.")
            cookies = []
        if hsts_on:
            for name, value in hsts(instance.config):
                sent[name.lower()] = (name, value)
        bodiless = status in _BODILESS
        head = _head_of(status, sent, cookies, bodiless, close)
        if plan_key is not None and len(head) <= _HEADS_SIZE:
            if len(_PLANS) >= _HEADS_COUNT:
                _PLANS.clear()
            _PLANS[plan_key] = (str(status), head, bodiless, sized)
        self._answered(conn, headers, method, raw, str(status), began, on_loop)
        return _framed(head, body, bodiless, method), close

    def _planned(self, conn, parser, plan: tuple, text: str, method: str, raw: str,
                 began: float, close: bool) -> tuple[bytes, bool] | None:
        """The answer to a handler's usual answer rendered before (see _PLANS); None when
        its body is of a size that is compressed."""
        status, head, bodiless, sized = plan
        body = text.encode("utf-8", "replace")  # as response.read_answer encodes it
        if sized and compressed_size(len(body)):
            return None
        self._answered(conn, parser.headers, method, raw, status, began, True)
        return _framed(head, body, bodiless, method), close

    def _answered(self, conn, headers: dict, method: str, raw: str, status: str,
                  began: float, on_loop: bool) -> None:
        """Count an answer and write its request log line."""
        self.instance.rate.hit()
        self.answered += 1
        self.on_loop_answers += on_loop
        if self.log is not None:
            self.log.write(line(conn.ip, headers.get("HOST"), method, raw, status,
                                (time.monotonic() - began) * 1000))

    def _run(self, parser, method: str, path: str, site: str, script: FileInfo, tls: bool,
             on_loop: bool):
        headers = parser.headers
        limit = js_body_limit(self.instance.config)
        length = int(headers.get("CONTENT_LENGTH") or 0)
        body = parser.get_body_stream().read(min(length, limit + 1)) if length > 0 else b""
        query = parser.query
        request = handler_request(
            method, path,
            parse_query_string(query, keep_blank=_KEEP_BLANK, csv=False) if query else {},
            {k.replace("_", "-").lower(): v for k, v in headers.items() if k not in _DROPPED},
            body, limit)
        return run_handler(self.instance, site, script, request, headers.get("HOST"), tls,
                           headers.get("ACCEPT_ENCODING"), on_loop)

    @staticmethod
    def _error(path: str, headers: dict, status: int, code: str, message: str,
               retry_after: int | None = None) -> tuple[int, dict, bytes]:
        content_type, text = http_errors.error_for(path, headers.get("ACCEPT"), status, code,
                                                   message)
        sent = {"content-type": ("Content-Type", content_type)}
        if retry_after:
            sent["retry-after"] = ("Retry-After", str(retry_after))
        return status, sent, text.encode("utf-8")


def _head_of(status: int, sent: dict, cookies: list[str], bodiless: bool, close: bool) -> str:
    """The head for an answer (`_head`), remembered in _HEADS when it has no cookie."""
    if cookies:  # a cookie is often one visitor's: not worth remembering
        return _head(status, sent, cookies, bodiless, close)
    key = (status, tuple(sent.values()), bodiless, close)
    head = _HEADS.get(key)
    if head is None:
        head = _head(status, sent, cookies, bodiless, close)
        if len(head) <= _HEADS_SIZE:
            if len(_HEADS) >= _HEADS_COUNT:
                _HEADS.clear()
            _HEADS[key] = head
    return head


def _framed(head: str, body: bytes, bodiless: bool, method: str) -> bytes:
    """Status line, headers and body, framed as Falcon and Waitress frame them."""
    data = head.format(length=len(body), date=responses.http_date()).encode("latin-1")
    return data if bodiless or method == "HEAD" else data + body


# Rendered heads by status, headers and framing, as format strings with the length and the
# date left out: a handler answers with the same few heads most of the time, and spelling,
# sorting and joining them cost more than the handler's own run on the loop.
_HEADS: dict[tuple, str] = {}
_HEADS_COUNT = 1024
_HEADS_SIZE = 2048  # characters; a longer head is rendered every time

# A step further on the loop: the rendered head of a handler's usual answer by the site and
# the answer's description as the prelude wrote it (status, headers), with the framing (the
# client's Connection: close, HSTS). The text is then neither checked, made a
# JsResponse, shaped nor rendered again: only its body is encoded and framed. Not for an
# answer with cookies (often one visitor's), nor for a failure (its site log line is written
# each time); for a compressible one, only with a body of a size never compressed.
_PLANS: dict[tuple, tuple[str, str, bool, bool]] = {}


def _plan_kind(checked) -> bool | None:
    """Whether the head of this checked answer (a JsResponse) may be remembered: None (no:
    a failure, a cookie, a body compressed by its size), False (for any body), True (for
    bodies of sizes never compressed: `compressed_size`)."""
    if checked.error is not None or checked.cookies:
        return None
    sized = may_compress(checked.status, keyed_headers(checked.headers))
    if sized and compressed_size(len(checked.body)):
        return None
    return sized


def _head(status: int, sent: dict, cookies: list[str], bodiless: bool, close: bool) -> str:
    """The head of an answer, as a format string with fields {length} and {date}."""
    headers = [(_spell(name), _literal(value)) for name, value in sent.values()]
    headers += [("Set-Cookie", _literal(cookie)) for cookie in cookies]
    if not bodiless:
        headers.append(("Content-Length", "{length}"))
    if close:
        headers.append(("Connection", "close"))
    headers.append(("Via", "fazt") if "server" in sent else ("Server", "fazt"))
    if "date" not in sent:
        headers.append(("Date", "{date}"))
    headers.sort(key=lambda h: h[0])
    lines = [f"HTTP/1.1 {falcon.code_to_http_status(status)}"]
    lines += [f"{name}: {value}" for name, value in headers]
    return "\r\n".join(lines) + "\r\n\r\n"


def _literal(text: str) -> str:
    """`text` as it reads in a format string."""
    return text.replace("{", "{{").replace("}", "}}")


class JsJob(Job):
    """A back end's request on a lane thread: the direct way, or Waitress's and the WSGI
    app's when `JsPath.answer` declines."""

    __slots__ = ("path",)

    def __init__(self, conn, request, server, path: JsPath):
        super().__init__(conn, request, server)
        self.path = path

    def service(self) -> None:
        conn = self.conn
        try:
            done = self.path.answer(conn, self.request)
        except Exception as exc:  # outside the handler (the handler's own are answered)
            sys.stderr.write("fazt: unexpected error serving a request\n"
                             + "".join(traceback.format_exception(exc)))
            done = responses.error(500, "internal_error", "Something went wrong on the server; "
                                   "it is logged.", path=self.request.path), True
        if done is None:
            return super().service()
        data, close = done
        try:
            if not conn.closed:
                conn.queue_from_thread(data)
        finally:
            self.request.close()  # the spooled body, if any
            conn.loop.call_soon_threadsafe(conn.task_done, close)
