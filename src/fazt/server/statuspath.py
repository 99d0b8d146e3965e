"""The owner's status read answered from the event loop: no thread, no framework.

`GET /api/system/status` is what the dashboard polls, and what the owner reads
when the machine is in trouble. Through the cockpit lane it took a thread's turn:
under a full load (both cores busy with user traffic) the lane thread waited for
the CPU and then for Python's lock behind the loop, and the read's p99 was 2.7x
its idle p99 (bench section 4). Everything the answer needs is already in RAM
(the session key, the status's sampled part, live counters), so the loop answers
it itself, between the urgent events it looks at first (loop.py).

The answer is the thread's: the same `Instance.status()`, serialised by Falcon's
own JSON handler, the cockpit's security headers (cockpit/headers.py), framed as
Waitress frames it (responses.head), counted and logged as the Router does.
Anything else goes to the lane as before: another path or method, a query string,
HTTP/1.0, a bearer token, no valid session (the thread explains with 401), the
plain port while HTTPS redirects, a trusted proxy (the thread names who is behind
it), and a state another writer changed (the thread brings it up to date).
"""

import time

import falcon
from falcon import request_helpers

from fazt import proxies
from fazt.cockpit.headers import HEADERS
from fazt.cockpit.session import COOKIE
from fazt.hosts import ADMIN
from fazt.https import hsts
from fazt.instance import Instance
from fazt.requestlog import RequestLog, line
from fazt.server import responses

PATH = "/api/system/status"
_JSON = falcon.media.JSONHandler()  # the cockpit app's (Falcon's default) JSON handler
_HEADERS = (("Cache-Control", "no-store"), *HEADERS.items(),
            ("Content-Type", falcon.MEDIA_JSON))


class StatusPath:
    def __init__(self, instance: Instance, log: RequestLog | None = None):
        self.instance = instance
        self.log = log
        self.answered = 0

    def __call__(self, conn, parser) -> bytes | None:
        """The whole answer to a status read, or None: the cockpit lane answers."""
        target = conn.target
        if target is None or target.kind != ADMIN or parser.path != PATH:
            return None
        headers = parser.headers
        if parser.command != "GET" or parser.version != "1.1" or parser.query \
                or "AUTHORIZATION" in headers:
            return None
        instance = self.instance
        tls = conn.listener.scheme == "https"
        if instance.https_port and not tls:
            return None  # the plain port may redirect (fazt.https)
        trusted = instance.config["trusted_proxies"]
        if trusted and proxies.is_trusted(conn.ip, proxies.networks(tuple(trusted))):
            return None
        if not instance.is_current() or not instance.auth.check_session(_session(headers)):
            return None
        body = _JSON.serialize(instance.status(), falcon.MEDIA_JSON)
        sent = [*_HEADERS, *(hsts(instance.config) if tls else ())]
        keep = responses.keeps_alive(parser.version, headers.get("CONNECTION", ""))
        self.answered += 1
        instance.rate.hit()
        if self.log is not None:
            self.log.write(line(conn.ip, headers.get("HOST"), "GET", PATH, "200",
                                (time.monotonic() - conn.began) * 1000))
        return responses.head(200, sent, parser.version, keep, len(body)) + body


def _session(headers: dict) -> str | None:
    """The session cookie as the cockpit reads it (Falcon's `get_cookie_values`: the
    first value of that name, parsed by Falcon's own parser)."""
    cookie = headers.get("COOKIE")
    if not cookie:
        return None
    values = request_helpers._parse_cookie_header(cookie).get(COOKIE)
    return values[0] if values else None
