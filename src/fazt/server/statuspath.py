"""The owner's status read answered from the event loop: no thread, no framework.

`GET /api/system/status` is what the dashboard polls, and what the owner reads
when the machine is in trouble. Through the cockpit lane it took a thread's turn:
under a full load (both cores busy with user traffic) the lane thread waited for
the CPU and then for Python's lock behind the loop. Everything the answer needs
is already in RAM (the session key, the status's sampled part, live counters), so
the loop answers it itself, between the urgent events it looks at first (loop.py).

The answer is the thread's: the cockpit makes it (`QuickStatus`, which the Router
hands over: only the Router knows the cockpit), it is framed as Waitress frames it
(responses.head), counted and logged as the Router does. Anything else goes to the
lane as before: another path or method, a query string, HTTP/1.0, a bearer token,
no valid session (the thread explains with 401), the plain port while HTTPS
redirects, a trusted proxy (the thread names who is behind it), and a state
another writer changed (the thread brings it up to date).
"""

import time
from collections.abc import Callable

from fazt.hosts import ADMIN
from fazt.https import hsts
from fazt.instance import Instance
from fazt.requestlog import RequestLog, line
from fazt.server import responses
from fazt.server.fastpath import for_threads

# (Cookie header) -> (headers, body) for a valid session, else None: app.Router.quick_status
Answer = Callable[[str | None], tuple[tuple, bytes] | None]


class StatusPath:
    def __init__(self, instance: Instance, answer: Answer, path: str,
                 log: RequestLog | None = None):
        self.instance = instance
        self.answer = answer
        self.path = path
        self.log = log
        self.answered = 0

    def __call__(self, conn, parser) -> bytes | None:
        """The whole answer to a status read, or None: the cockpit lane answers."""
        target = conn.target
        if target is None or target.kind != ADMIN or parser.path != self.path:
            return None
        headers = parser.headers
        if parser.command != "GET" or parser.version != "1.1" or parser.query \
                or "AUTHORIZATION" in headers:
            return None
        instance = self.instance
        if for_threads(instance, conn) or not instance.is_current():
            return None
        answer = self.answer(headers.get("COOKIE"))
        if answer is None:
            return None
        sent, body = answer
        if conn.listener.scheme == "https":
            sent = (*sent, *hsts(instance.config))
        keep = responses.keeps_alive(parser.version, headers.get("CONNECTION", ""))
        self.answered += 1
        instance.rate.hit()
        if self.log is not None:
            self.log.write(line(conn.ip, headers.get("HOST"), "GET", self.path, "200",
                                (time.monotonic() - conn.began) * 1000))
        return responses.head(200, sent, parser.version, keep, len(body)) + body
