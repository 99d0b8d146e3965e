"""The HTTP server: listening sockets, the open connections, their clocks.

It ties the pieces together on the loop's thread: a Listener accepts, the
Admission says who stays, each Connection runs its states, the fast path
answers cache hits, and the lanes' threads run everything else. Once a second
a sweep checks every connection's timeouts.
"""

import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from waitress.adjustments import Adjustments

from fazt.requestlog import RequestLog, line
from fazt.server.admission import Admission
from fazt.server.bridge import Job, ServerInfo
from fazt.server.connection import Connection
from fazt.server.heads import KnownHeads
from fazt.server.jspath import JsJob, JsPath
from fazt.server.lanes import LaneDispatcher
from fazt.server.loop import Listener, Loop
from fazt.server.transport import TransportFactory, plain

SWEEP_SECONDS = 1.0
PARKED_ROUNDS = 2  # reads of the state a request waits for at most (after_refresh)
log = logging.getLogger("fazt")
MAX_HEADER_BYTES = 32 * 1024


class HTTPServer:
    def __init__(self, application, lanes: LaneDispatcher, admission: Admission,
                 spool_folder: str, log: RequestLog | None = None,
                 after_turn: Callable[[], None] | None = None):
        self.application = application
        self.lanes = lanes
        self.admission = admission
        self.spool_folder = spool_folder
        self.log = log
        self.loop = Loop(after_turn=after_turn, on_wake=self.resume_stalled)
        self.connections: set[Connection] = set()
        # Half-closed connections reading what still arrives (Connection._begin_close),
        # oldest first. Uncounted by admission, so bounded here: each holds a descriptor.
        self.lingering: OrderedDict[Connection, None] = OrderedDict()
        self.heads = KnownHeads()  # request heads parsed before (heads.py)
        self.stalled: set[Connection] = set()
        self.listeners: list[Listener] = []
        self.listener_info: dict[Listener, ServerInfo] = {}
        self.fastpath: Callable | None = None  # (connection, parser) -> response bytes or None
        self.jspath: JsPath | None = None  # site back ends without WSGI, set at boot
        self.statuspath: Callable | None = None  # the owner's status read (statuspath.py)
        # Headers for every answer the loop writes itself over TLS (HSTS), set at boot.
        self.tls_headers: Callable[[], list[tuple[str, str]]] = list
        self.stopping = False
        # Whether the state the loop judges requests by (hosts, limits) is what the database
        # holds, and how a thread reads it again: Instance.is_current and .refresh, at boot.
        self.state_current: Callable[[], bool] = lambda: True
        self.state_refresh: Callable[[], None] = lambda: None
        self.parked: list[Connection] = []  # requests waiting for that (after_refresh)
        self._refresh_wanted = threading.Event()
        self._refresher: threading.Thread | None = None
        self.loop.call_later(SWEEP_SECONDS, self.sweep)

    def listen(self, sock: socket.socket, transport: TransportFactory = plain,
               scheme: str = "http") -> Listener:
        """Serve a bound, listening socket; its connections get `transport()` each."""
        listener = Listener(self.loop, sock, transport, self.accept, self.has_room, scheme)
        adj = Adjustments(
            url_scheme=scheme,
            ident="fazt",
            max_request_header_size=MAX_HEADER_BYTES,
            max_request_body_size=1 << 62,  # admission sets each route's limit
            log_socket_errors=False,
        )
        host = sock.getsockname()[0]
        self.listener_info[listener] = ServerInfo(self.application, adj, listener.port,
                                                  host if host not in ("0.0.0.0", "::")
                                                  else "localhost")
        self.listeners.append(listener)
        return listener

    def has_room(self) -> bool:
        """Asked by a listener before each accept; when full, it pauses until `resume`."""
        if self.admission.has_room():
            return True
        self.admission.paused += 1
        self.loop.call_later(0.1, self.resume_listeners)  # a quiet one may be closable soon
        return False

    def resume_listeners(self) -> None:
        for listener in self.listeners:
            listener.resume()

    def accept(self, sock: socket.socket, addr, transport, listener: Listener) -> None:
        conn = Connection(self, sock, addr, transport, listener)
        self.connections.add(conn)
        self.admission.arrived(conn)
        conn.start()

    def after_refresh(self, conn: Connection) -> None:
        """Go on with `conn`'s request once a thread has read what was committed since the
        state was last read (another process added a host, raised a limit): admission
        must judge it by that, and the loop never waits on the database itself."""
        self.parked.append(conn)
        if self._refresher is None:
            self._refresher = threading.Thread(target=self._refresh_when_wanted,
                                               name="fazt-refresh", daemon=True)
            self._refresher.start()
        self._refresh_wanted.set()

    def _refresh_when_wanted(self) -> None:
        while True:
            self._refresh_wanted.wait()
            self._refresh_wanted.clear()
            try:
                self.state_refresh()
            except Exception:  # a background duty must never die
                log.exception("could not read the committed state")
            self.loop.call_soon_threadsafe(self._resume_parked)

    def _resume_parked(self) -> None:
        """On the loop: go on with the parked requests, once the state is current; a
        request parked while the read ran waits for the next one, but never for more than
        PARKED_ROUNDS (a busy database leaves the state as it was)."""
        current = self.state_current()
        waiting = []
        for conn in self.parked:
            conn.parked_rounds += 1
            if conn.closed:
                continue
            if current or conn.parked_rounds >= PARKED_ROUNDS:
                conn.resume_parked()
            else:
                waiting.append(conn)
        self.parked = waiting
        if waiting:
            self._refresh_wanted.set()

    def js_job(self, conn: Connection, request) -> JsJob | None:
        """The direct job for a request to a site's back end (jspath.py), or None."""
        if self.jspath is not None and self.jspath.wants(conn, request):
            return JsJob(conn, request, self.listener_info[conn.listener], self.jspath)
        return None

    def job(self, conn: Connection, request) -> Job:
        return Job(conn, request, self.listener_info[conn.listener])

    def forget(self, conn: Connection) -> None:
        """A connection closed."""
        self.lingering.pop(conn, None)
        if conn in self.connections:
            self.connections.discard(conn)
            self.release(conn)

    def linger(self, conn: Connection) -> None:
        """`conn` half-closed and now lingers. Past lingering_limit (a crowd evicted faster
        than LINGER lets them go) the oldest is closed outright: its client was answered
        or evicted a while ago, and a descriptor held for it could lock out a newcomer
        (descriptors.py counts on this bound)."""
        self.lingering[conn] = None
        while len(self.lingering) > self.admission.lingering_limit:
            oldest, _ = self.lingering.popitem(last=False)
            oldest.drop_input()  # a close with unread input would answer with a reset
            oldest.abort()

    def release(self, conn: Connection) -> None:
        """It no longer counts against the limits (closed, or closing)."""
        if conn.counted:
            self.admission.left(conn)
            if not self.stopping:
                self.resume_listeners()

    def resume_stalled(self) -> None:
        for conn in list(self.stalled):
            self.stalled.discard(conn)
            conn.resume()

    def sweep(self) -> None:
        self.loop.call_later(SWEEP_SECONDS, self.sweep)
        now = time.monotonic()
        for conn in list(self.connections):
            try:
                conn.check_time(now)
            except Exception:  # one connection's bug must not stop every clock
                log.exception("timeout check failed")
                conn.abort()
        self.admission.trim()
        self.admission.forget_idle_addresses()
        if self.jspath is not None:
            self.jspath.sweep()

    def log_request(self, conn: Connection, status: int) -> None:
        """The request log line of an answer the loop gave itself."""
        if self.log is None:
            return
        parser = conn.parser
        # A request line Waitress refused after reading its method has no path: its raw
        # target is logged instead (escaped, as every field).
        has_line = parser is not None and hasattr(parser, "command")
        self.log.write(line(conn.ip, parser.headers.get("HOST") if parser else None,
                            parser.command if has_line else "-",
                            getattr(parser, "path", parser.request_uri) if has_line else "-",
                            str(status),
                            (time.monotonic() - conn.began) * 1000 if conn.began else 0.0))

    def log_plain_answer(self, conn: Connection, request: bytes, status: int) -> None:
        """The log line of a request a transport answered itself (plain HTTP on the HTTPS
        port): its method, target and Host as far as the first read holds them."""
        if self.log is None:
            return
        head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        words = head[0].split(" ")
        host = next((h.split(":", 1)[1].strip() for h in head[1:]
                     if h.lower().startswith("host:")), None)
        self.log.write(line(conn.ip, host, words[0] if words[0] else None,
                            words[1] if len(words) > 1 else None, str(status), 0.0))

    def run(self) -> None:
        self.loop.run()

    def drain(self, seconds: float) -> None:
        """Stop accepting; give answers in flight up to `seconds` to finish."""
        self.stopping = True
        for listener in self.listeners:
            listener.close()
        deadline = time.monotonic() + seconds
        self.loop.stopping = False
        self.loop.run(until=lambda: time.monotonic() > deadline or not any(
            c.task_running or c.wire or c.out for c in self.connections))

    def close(self) -> None:
        for conn in list(self.connections):
            conn.abort()
        for listener in self.listeners:
            if listener.sock.fileno() >= 0:
                listener.close()
        self.loop.close()

    def stats(self) -> dict:
        """For the status page (read from another thread: plain counters, no locks)."""
        return {**self.admission.stats(),
                "fast_path_answers": self.fastpath.answered if self.fastpath else 0,
                "js_direct_answers": self.jspath.answered if self.jspath else 0,
                "js_loop_answers": self.jspath.on_loop_answers if self.jspath else 0,
                "status_loop_answers": self.statuspath.answered if self.statuspath else 0,
                "heads_reused": self.heads.hits}
