"""Hot static files answered from the event loop: no thread, no framework, one write.

A GET or HEAD for a site's file whose version, location, rules and body are
already in RAM (the VFS's remembered versions and locations, parsed
`_redirects`/`_headers`, and the byte cache) is answered right here, with
headers rendered once per file and encoding and then reused until the next
deploy. Measured here: a thread handoff, the WSGI environ and Falcon cost
about twenty times what answering costs (issue 16).

The answer is the one the thread would give, because it is made by the same
pure functions: `fazt.negotiation` picks the body and renders its headers,
`SiteResource._relative` cleans the path, the site's rules come from the same
parse, and the log line from `requestlog.line`. Header names are spelled as
Waitress spells them (each dash-separated part capitalised). Anything
unusual goes to a thread: another method, HTTP/1.0, a Range, If-Range or If-Match, a
path under /api/, a file or rule not yet in RAM, a forced redirect, a large
file, maintenance mode, a non-ASCII path, and with HTTPS on every request on the
plain port (the thread redirects it, fazt.https). Answers over HTTPS carry
Strict-Transport-Security as the thread's do.
"""

import time

from fazt import proxies
from fazt.deploy import hidden_part
from fazt.hosts import SITE
from fazt.https import hsts_lines
from fazt.instance import NORMAL, Instance
from fazt.negotiation import etag, etag_matches, pick, profile, static_headers
from fazt.requestlog import RequestLog, line
from fazt.server.responses import http_date
from fazt.siterules import RULE_FILES
from fazt.sites import SiteResource

# Rendered answers are kept for as many files as the VFS remembers locations of
# (`found_limit`, which the ledger charges for both): a fixed 4,096 was cleared over and
# over with requests spread over 10,000 sites of 10 files (bench section 9).


def _spell(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


def _render(status: str, headers: list[tuple[str, str]]) -> bytes:
    """Status line and headers (Date, Server and Connection are added per answer)."""
    lines = [f"HTTP/1.1 {status}"]
    lines += [f"{_spell(n)}: {v}" for n, v in sorted(headers, key=lambda h: _spell(h[0]))]
    return ("\r\n".join(lines) + "\r\nServer: fazt\r\n").encode("latin-1")


def for_threads(instance: Instance, conn) -> bool:
    """Requests no answer from the loop may take (the fast path's, the status read's): on
    the plain port while HTTPS is on (the thread redirects once the host has a
    certificate), and a trusted proxy's (the thread names the client behind it)."""
    if instance.https_port and conn.listener.scheme != "https":
        return True
    trusted = instance.config["trusted_proxies"]
    return bool(trusted) and proxies.is_trusted(conn.ip, proxies.networks(tuple(trusted)))


# One file's answers for one Accept-Encoding, rendered once: a plain tuple of strings and
# bytes, (path, encoding, sha256, etag, 200's head, 304's head), which CPython's cyclic
# collector stops tracking (an object would be walked at every full collection, on the
# loop's thread: see the Found map in vfs.py).
PATH, ENCODING, SHA256, ETAG, OK, NOT_MODIFIED = range(6)


class FastPath:
    def __init__(self, instance: Instance, log: RequestLog | None = None):
        self.instance = instance
        self.vfs = instance.vfs
        self.log = log
        self.memo: dict[tuple, tuple] = {}  # (site, path, Accept-Encoding's profile) -> answers
        self.generation = -1
        self.answered = 0
        self._date = (0, b"")

    def __call__(self, conn, parser) -> bytes | None:
        """The whole response for this request, or None: a thread answers it."""
        method = parser.command
        if (method != "GET" and method != "HEAD") or parser.version != "1.1":
            return None
        headers = parser.headers
        if "RANGE" in headers or "IF_RANGE" in headers or "IF_MATCH" in headers:
            return None
        instance = self.instance
        if not instance.is_current():
            return None  # another writer committed: a thread brings the state up to date
        if instance.mode != NORMAL:
            return None
        if for_threads(instance, conn):
            return None
        tls = conn.listener.scheme == "https"
        target = conn.target  # admission classified the Host
        if target is None or target.kind != SITE:
            return None
        site = target.site
        path = parser.path
        if path.startswith("/"):
            path = "/" + path.lstrip("/")  # what Waitress puts in PATH_INFO
        if self.generation != self.vfs.generation:
            self.memo.clear()
            self.generation = self.vfs.generation
        encoding = headers.get("ACCEPT_ENCODING")
        # by what the header means, not how it is spelt: a client that sends another
        # spelling each time would otherwise flush every file's answers again and again
        key = (site, path, profile(encoding) if encoding and encoding.strip() else None)
        prepared = self.memo.get(key)
        if prepared is None:
            prepared = self._prepare(site, path, encoding)
            if prepared is None:
                return None
            if len(self.memo) >= self.vfs.found_limit:
                self.memo.clear()
            self.memo[key] = prepared
        data = self.vfs.held(site, prepared[PATH], prepared[ENCODING], prepared[SHA256])
        if data is None:
            return None  # evicted: a thread reads it back into the cache
        inm = headers.get("IF_NONE_MATCH")
        if inm and etag_matches(inm, prepared[ETAG]):
            status, answer = "304", prepared[NOT_MODIFIED]
        else:
            status, answer = "200", prepared[OK]
        answer += self._date_line()
        if tls:
            answer += hsts_lines(instance.config)
        if headers.get("CONNECTION", "").lower() == "close":
            answer += b"Connection: close\r\n"
        answer += b"\r\n"
        if status == "200" and method == "GET":
            answer += data
        self.answered += 1
        instance.rate.hit()
        if self.log is not None:
            self.log.write(line(conn.ip, headers.get("HOST"), method, path, status,
                                (time.monotonic() - conn.began) * 1000))
        return answer

    def _date_line(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, f"Date: {http_date()}\r\n".encode("latin-1"))
        return self._date[1]

    def _prepare(self, site: str, raw: str, encoding: str | None) -> tuple | None:
        """Render a file's answers, from RAM only; None when anything is not there yet."""
        if not raw.isascii():
            return None
        try:
            path = SiteResource._relative(raw)
        except Exception:  # noqa: BLE001 - a bad path: the thread explains it
            return None
        if path == "api" or path.startswith("api/") or path in RULE_FILES \
                or hidden_part(path) is not None:  # hidden files: the thread's 404
            return None
        vfs = self.vfs
        # the rules and the file of one version: a thread may remember a newer one meanwhile
        deploy = vfs.known_live(site)
        if deploy is None:
            return None
        rules = vfs.known_rules(site, deploy)
        if rules is None:
            return None
        url = "/" + path + ("/" if path and raw.endswith("/") else "")
        if rules.forced(url) is not None:
            return None
        name = (f"{path}/index.html" if path else "index.html") \
            if not path or raw.endswith("/") else path
        info = vfs.known(site, name, deploy)
        if info is None:
            return None
        body = pick(info, encoding)
        if vfs.is_large(body):
            return None
        site_headers = rules.headers_for(url)
        return (
            info.path, body.encoding, body.sha256, etag(body),
            _render("200 OK", static_headers(info, body, site_headers=site_headers)),
            _render("304 Not Modified", static_headers(info, body, not_modified=True,
                                                       site_headers=site_headers)))
