"""One client connection, on the loop's thread, through its states:

    handshake -> idle -> headers -> (admitted) -> body -> task -> writing -> idle ...

- handshake: the transport (TLS) is not ready for plaintext yet.
- idle: between requests; may be closed to make room (admission) or after a
  quiet while. Nothing is lost: no request is in flight.
- headers: bytes of a request are arriving; Waitress's parser reads them.
  Past HEADER_TIMEOUT the client gets 408 and the connection closes.
- admitted: the headers are in. From here on the request gets an answer,
  whatever happens: its own, or a refusal with a status code and a reason.
- body: read only if admission allowed it, into a Spool (RAM up to
  SPOOL_MEMORY, then an unnamed file beside the database, never $TMPDIR),
  at BODY_MIN_RATE or 408.
- task: a lane thread runs the application (bridge.py); the socket is not
  read meanwhile, so a pipelining client waits in the kernel's buffer. A
  cockpit task sends its own small answer when nothing else waits to go out
  (`send_from_thread`), so the owner's answer never waits for the loop's next
  turn; the loop still does the bookkeeping (`task_done`).
- writing: what the task queued goes out as the client takes it; a stream
  (a large file) is pulled piece by piece, and a stream waiting for its next
  chunk leaves the connection asleep until the reader rings the loop.

A refused request whose body was not read closes the connection after its
answer; the close lingers (reads and drops what the client still sends for
a moment) so the answer is not destroyed by a reset.
"""

import io
import selectors
import socket
import struct
import tempfile
import threading
import time
from collections import deque

from waitress.parser import HTTPRequestParser
from waitress.utilities import BadRequest

from fazt.hosts import ADMIN
from fazt.server import responses
from fazt.server.admission import BODY_GRACE, BODY_MIN_RATE, Refusal
from fazt.server.timeouts import CLIENT_TIMEOUT
from fazt.server.transport import TransportFailure

HANDSHAKE, IDLE, HEADERS, BODY, TASK, CLOSING = "handshake", "idle", "headers", "body", \
    "task", "closing"
READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
RECV_SIZE = 256 * 1024
SEND_PIECE = 256 * 1024  # how much of a stream is taken per send
SEND_BATCH = 1024 * 1024  # how much of a chunk stream (several chunks) one sendmsg offers
# The kernel's send buffer of a connection that streams a large file: left to autotune it
# grows to tcp_wmem's maximum (4 MiB by default) for a client that reads slowly, measured
# at 5 MB of kernel memory per stalled download (bench/LOOP.md), which cgroup v2 charges
# to fazt. The kernel books twice what is asked, so one batch still fits.
STREAM_SNDBUF = SEND_BATCH // 2
# ... and no more than the link needs: its bandwidth-delay product at STREAM_RATE, from
# the kernel's measured round trip (TCP_INFO), at least STREAM_SNDBUF_LEAST. Bytes that
# wait in a socket go cold in the CPU's cache before the receiver copies them: on
# loopback (a proxy on the same host, the benchmark) a 1 GB download ran at 0.75x
# WhiteNoise with 1 MiB in the socket, and at 1.0-1.2x with 256 KiB (the kernel's double
# of 128 KiB), the receiver spending two thirds of the CPU a GB it had spent.
STREAM_SNDBUF_LEAST = 128 * 1024
STREAM_RATE = 1024 * 1024 * 1024  # bytes a second one download is sized for
_TCPI_RTT = 68  # offset of tcpi_rtt (microseconds) in Linux's struct tcp_info
OUT_HIGH = 128 * 1024  # a task's next piece waits while this much waits for the loop
WAKE_BYTES = 64 * 1024  # a task rings the loop when this much waits, not for every write
HEADER_TIMEOUT = CLIENT_TIMEOUT  # seconds from a request's first byte to its last header
FIRST_REQUEST_TIMEOUT = CLIENT_TIMEOUT  # a new connection that says nothing is closed after this
KEEPALIVE_TIMEOUT = 30.0  # an idle keep-alive connection is closed after this
WRITE_TIMEOUT = 60.0  # a client that takes no byte of its answer for this long is gone
LINGER = 2.0  # seconds a closing connection reads and drops what still arrives (HTTPServer.linger)
SPOOL_MEMORY = 16 * 1024  # a body above this goes to a file


def stream_sndbuf(sock: socket.socket) -> int:
    """The send buffer a download's socket asks for: STREAM_SNDBUF at most, and less on
    a short round trip (see STREAM_SNDBUF_LEAST); STREAM_SNDBUF when the kernel does
    not say."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        rtt = struct.unpack_from("I", info, _TCPI_RTT)[0]
    except (AttributeError, OSError, struct.error):
        return STREAM_SNDBUF
    return max(STREAM_SNDBUF_LEAST, min(STREAM_SNDBUF, rtt * STREAM_RATE // 1_000_000))


class Spool:
    """A request body as Waitress's body receivers fill it (`append`, `getfile`, len):
    in RAM while small, then in an unnamed file in the database's folder (the database's
    disk, not a RAM-backed /tmp; the file has no name, so nothing is left behind)."""

    __slots__ = ("folder", "file", "size", "on_disk")

    def __init__(self, folder: str):
        self.folder = folder
        self.file = io.BytesIO()
        self.size = 0
        self.on_disk = False

    def append(self, data: bytes) -> None:
        if not self.on_disk and self.size + len(data) > SPOOL_MEMORY:
            spilled = tempfile.TemporaryFile(dir=self.folder)
            spilled.write(self.file.getvalue())
            self.file = spilled
            self.on_disk = True
        self.file.write(data)
        self.size += len(data)

    def __len__(self) -> int:
        return self.size

    def getfile(self):
        self.file.seek(0)
        return self.file

    def close(self) -> None:
        self.file.close()


class Connection:
    __slots__ = ("server", "loop", "sock", "addr", "ip", "transport", "listener", "state",
                 "since", "parser", "inbuf", "wire", "out", "queued", "cond", "events",
                 "admin", "reserve", "over_share", "in_body", "body_limit", "body_bytes",
                 "served", "closed", "close_after", "task_running", "last_write", "began",
                 "stalled", "eof", "target", "counted", "key", "client", "direct",
                 "watcher", "parked_rounds", "close_when_answered", "parsing", "hello")

    def __init__(self, server, sock: socket.socket, addr, transport, listener):
        self.server = server
        self.loop = server.loop
        self.sock = sock
        self.addr = addr
        self.ip = addr[0]  # the full address: the request log, trusted_proxies
        self.key = self.ip  # whom its connection counts against (admission: its /64 for IPv6)
        self.client = self.ip  # whom the request's limits count (behind a trusted proxy: admission)
        self.transport = transport
        self.listener = listener
        self.state = IDLE if transport.handshake_done else HANDSHAKE
        self.since = time.monotonic()
        self.parser = None
        self.inbuf = b""
        self.wire = b""  # bytes for the socket, already through the transport
        self.out: deque = deque()  # plaintext and stream buffers waiting for the transport
        self.queued = 0  # bytes a task queued that are not sent yet (its flow control)
        self.cond = threading.Condition(threading.Lock())
        self.events = 0
        self.watcher = None  # the loop's selector that watches it while `events`
        self.admin = False  # it has spoken to the cockpit: never closed to make room
        self.reserve = False  # accepted past the limit: only the cockpit is served on it
        self.over_share = False  # its address holds all it may
        self.in_body = False
        self.body_limit = 0
        self.body_bytes = 0
        self.served = 0
        self.closed = False
        self.close_after = False
        self.task_running = False
        self.last_write = 0.0
        self.began = 0.0
        self.stalled = False
        self.eof = False  # the client will send nothing more
        self.target = None  # what the last request's Host named (admission classifies it)
        self.counted = False  # admission counts it (from arrival until closed or evicted)
        self.direct = False  # its running task may send its own answer (send_from_thread)
        self.parked_rounds = 0  # reads of the state its parked request waited for
        self.close_when_answered = False  # a reserve connection's unproven cockpit request
        self.parsing = False  # inside parse(): an answer given there does not parse again
        self.hello = b""  # a handshake's first bytes, held while the state is read again

    # -- events -----------------------------------------------------------------

    def start(self) -> None:
        out = self.transport.outgoing()
        if out:
            self._send_wire(out)
        # A client usually sends its request with its connection: reading it now saves a
        # whole turn of the loop, which under a flood is milliseconds (bench section 4).
        # Not over TLS, where a request is still round trips away: a handshake answered at
        # once only let a handshake flood (closed-loop clients) go faster and take the CPU
        # from the owner's sign-in (its p99 went from 1.2-1.4x to 2.3-2.4x idle; bench 8).
        if self.transport.plain and not self.closed:
            self.read()
        self._update_events()

    def handle_event(self, mask: int) -> None:
        if mask & WRITE:
            self.flush()
        if mask & READ and not self.closed:
            self.read()

    def _want(self, events: int) -> None:
        if self.closed:
            return
        # Among the loop's urgent events (loop.py): the cockpit's connections, and a new one
        # until its first request says whose it is (the owner's next request may be on it).
        loop = self.loop
        watcher = loop.urgent if self.admin or self.target is None else loop.selector
        if self.events and watcher is not self.watcher:  # its request said whose it is
            self.watcher.unregister(self.sock)
            self.events = 0
        if events == self.events:
            return
        if not events:
            self.watcher.unregister(self.sock)
        elif not self.events:
            self.watcher = watcher
            watcher.register(self.sock, events, self)
        else:
            self.watcher.modify(self.sock, events, self)
        self.events = events

    def _reading(self) -> int:
        if self.state == TASK or self.eof:
            return 0
        if self.inbuf and self._answer_pending():
            return 0  # a pipelined request waits for the answer before it: read no more
        return READ

    def _answer_pending(self) -> bool:
        """Between requests, with the last answer not yet all handed to the kernel: the
        next pipelined request waits (each queued answer was memory a client that pipelines
        and never reads could pile up: 4.5 MB files, twenty at a time)."""
        return self.parser is None and bool(self.wire or self.out)

    def _writing(self) -> int:
        return WRITE if (self.wire or self.out) and not self.stalled else 0

    def _update_events(self) -> None:
        self._want(self._reading() | self._writing())

    # -- reading ------------------------------------------------------------------

    def read(self) -> None:
        try:
            data = self.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self.abort()
        if self.state == CLOSING or (self.close_after and data):
            if not data:
                self.abort()
            return  # lingering, or closing after this answer: what arrives now is dropped
        if self.state == HANDSHAKE and data and not self.server.state_current():
            # The ClientHello names the host whose certificate is chosen, and another
            # process may have just imported or removed it (`fazt cert import`): a thread
            # reads the state again first, as for a request's headers (headers_done).
            self.hello += data
            self.parked_rounds = 0
            self.state, self.since = TASK, time.monotonic()
            self._update_events()
            return self.server.after_refresh(self)
        self._received(data)

    def _received(self, data: bytes) -> None:
        try:
            plain = self.transport.feed(data)
        except TransportFailure as failure:
            if failure.answered:  # a plain request on the HTTPS port, answered 400
                self.server.log_plain_answer(self, failure.request, failure.answered)
            return self._transport_failed()
        out = self.transport.outgoing()
        if out:
            self._send_wire(out)
        if self.transport.peer_closed and plain and data:
            # TLS: what the client had to say and its close_notify came in one read. A
            # whole request is answered (the end of the TCP stream, read after it, closes);
            # the rest of a partial one will never come.
            if self.state == HANDSHAKE:
                self.state, self.since = IDLE, time.monotonic()
            self.inbuf += plain
            self.parse()
            if not self.closed and self.state in (HEADERS, BODY):
                self.eof = True
                self.abort()
            return
        if not data or self.transport.peer_closed:
            # The client sends no more. An answer on its way still goes out (a client may
            # half-close after its request); otherwise there is no one left to answer.
            self.eof = True
            if self.state == IDLE and (self.wire or self.out):
                self.close_after = True
                self._update_events()
            else:
                self.abort()
            return
        if self.state == HANDSHAKE:
            if not self.transport.handshake_done:
                return
            self.state, self.since = IDLE, time.monotonic()
        if plain:
            self.inbuf += plain
            self.parse()

    def parse(self) -> None:
        """Read the requests that have arrived, answering each as it completes. Never
        re-entered: an answer given from inside the loop below (the fast path's, a
        refusal) returns to it for the next pipelined request. Each answer called parse
        again, a few frames deeper a request, so about 245 pipelined requests overflowed
        Python's stack and the connection was dropped without answers."""
        if self.parsing:
            return
        self.parsing = True
        try:
            self._parse()
        finally:
            self.parsing = False

    def _parse(self) -> None:
        while self.inbuf and not self.closed and not self.close_after and \
                self.state in (IDLE, HEADERS, BODY):
            known = None
            if self._answer_pending():
                break  # flush() goes on once the answer before it is sent
            if self.parser is None:
                adj = self.listener_info.adj
                known = self.server.heads.parser_for(adj, self.inbuf)  # heads.py
                self.parser = HTTPRequestParser(adj) if known is None else known[0]
                self.state = HEADERS
                self.since = self.began = time.monotonic()
                self.server.admission.quiet_again(self)  # most recently active
            parser = self.parser
            if known is not None:
                consumed = known[1]
            else:
                fresh = self.state == HEADERS and not parser.header_bytes_received
                try:
                    consumed = parser.received(self.inbuf)
                except ValueError:  # Waitress lets urlsplit's errors out ("GET http://[::1")
                    self.server.admission.busy(self)
                    return self.refuse(Refusal(400, "bad_request", "Bad Request: Bad URI."))
                except OSError as exc:  # a body's spool file found no room on the disk
                    self.server.admission.busy(self)
                    return self.refuse(Refusal(503, "unavailable", "There is no room on the "
                                               f"disk for this request's body: "
                                               f"{exc.strerror or exc}."))
                if not parser.completed and parser.body_rcv is None and \
                        b"\n\n" in parser.header_plus[-len(self.inbuf) - 1:]:
                    # Lines ended by a bare LF: Waitress waits for CRLF CRLF, which never
                    # comes, and the client would wait for the header timeout's 408.
                    self.server.admission.busy(self)
                    return self.refuse(Refusal(400, "bad_request", "Bad Request: a header "
                                               "line ends in a bare LF; HTTP wants CRLF."))
                if fresh and parser.completed:
                    self.server.heads.remember(parser.adj, self.inbuf, consumed, parser)
            self.inbuf = self.inbuf[consumed:]
            if self.state == HEADERS:
                if parser.completed or parser.headers_finished:
                    self.headers_done()
            else:
                self.body_bytes += consumed
                if parser.completed:
                    self.body_done()
                elif self.body_bytes > self.body_limit:
                    self.refuse(Refusal(413, "too_large", "The request body is larger than "
                                        "this URL takes."))
            if not consumed:
                break

    @property
    def between_requests(self) -> bool:
        """An idle keep-alive: it has been answered and has not begun its next request."""
        return self.served > 0 and self.state == IDLE

    @property
    def listener_info(self):
        return self.server.listener_info[self.listener]

    def headers_done(self, fresh: bool = False) -> None:
        parser = self.parser
        if parser.empty:  # blank lines between requests
            self.parser = None
            self.state = IDLE
            return
        self.server.admission.busy(self)
        if not fresh and not self.server.state_current():
            # Another writer committed since the state was read: a host, a limit may have
            # changed. A thread reads it; the request goes on then (resume_headers).
            self.parked_rounds = 0
            self.state, self.since = TASK, time.monotonic()
            self._update_events()
            return self.server.after_refresh(self)
        if parser.error is None and ((parser.chunked and "CONTENT_LENGTH" in parser.headers)
                                     or "TRANSFER_ENCODING" in parser.headers):
            # Two framings (RFC 9112 6.1, 6.3): Waitress would follow Transfer-Encoding
            # (HTTP/1.1; it pops the header) or Content-Length (HTTP/1.0, where the header
            # stays) and keep the connection, while a proxy in front that followed the
            # other would see another request in the body: a smuggled one. As a parser
            # error, the connection closes after the answer.
            parser.error = BadRequest("both Content-Length and Transfer-Encoding, or "
                                      "Transfer-Encoding in HTTP/1.0")
        elif parser.error is None and "," in parser.headers.get("HOST", ""):
            # Waitress joins repeated headers with ", ": two Host lines (RFC 9112 3.2: 400),
            # which a proxy in front may have read the other way
            parser.error = BadRequest("more than one Host header")
        elif parser.error is None and not parser.path.startswith("/") and (
                parser.path or not parser.proxy_scheme):
            # "*" (asterisk-form, RFC 9112 3.2.4: server-wide OPTIONS, which fazt has none
            # of), a bare word or a bare query ("?a=1", which Waitress gives as the path ""
            # and was served as "/"): no file or redirect can answer it (the plain port's
            # 308 went to "https://host%2A"). nginx answers 400 too. (Absolute-form has its
            # path here: "http://h/x" is "/x", and "http://h" is "", which means "/".)
            parser.error = BadRequest("the request target is not a path (such as /index.html)")
        elif parser.error is None and parser.proxy_netloc:
            # Absolute-form (RFC 9112 3.2.2): the target's authority names the host, not the
            # Host line, as nginx reads it too. A proxy in front that follows the RFC routes
            # by the target: fazt answering for the Host line's site instead would serve one
            # site's answer for another's address (a cache in front keeps it).
            if "@" in parser.proxy_netloc:  # user:password@host: not for http(s) (RFC 9110)
                parser.error = BadRequest("the request target holds a user name")
            else:
                parser.headers["HOST"] = parser.proxy_netloc
        if parser.error is not None:
            error = parser.error
            code = {400: "bad_request", 413: "too_large", 431: "headers_too_large",
                    501: "not_implemented"}.get(error.code, "bad_request")
            return self.refuse(Refusal(error.code, code, f"{error.reason}: {error.body}."))
        headers = parser.headers
        verdict = self.server.admission.admit(
            self, parser.command, parser.path, headers.get("HOST"),
            self.server.lanes.user_queue_depth(), headers.get("X_FORWARDED_FOR"),
            headers.get("COOKIE"), headers.get("AUTHORIZATION"))
        if isinstance(verdict, Refusal):
            return self.refuse(verdict)
        refusal = self.server.admission.check_body(self, verdict, parser.content_length,
                                                   parser.chunked,
                                                   "CONTENT_LENGTH" in parser.headers)
        if refusal is not None:
            return self.refuse(refusal)
        if parser.completed:
            return self.dispatch()
        self.body_limit = verdict.limit
        self.body_bytes = 0
        parser.body_rcv.buf = Spool(self.server.spool_folder)
        self.state, self.since = BODY, time.monotonic()
        if verdict.exempt:
            # A sign-in's few hundred bytes come with its headers. One that dribbles may be
            # closed to make room, as headers still arriving are: sign-ins are exempt from
            # the shares of bodies, and a crowd of dribbling ones held every place (the
            # reserve's too) and kept the owner in the kernel's backlog for their 408.
            self.server.admission.quiet_again(self)
        if parser.expect_continue:
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def resume_parked(self) -> None:
        """On the loop, once the state was read again: the parked handshake or request
        goes on."""
        if self.hello:
            hello, self.hello = self.hello, b""
            self.state = HANDSHAKE
            self._update_events()
            return self._received(hello)
        self.resume_headers()

    def resume_headers(self) -> None:
        self.state = HEADERS
        self._update_events()
        self.headers_done(fresh=True)
        if self.inbuf and self.state == BODY:
            self.parse()  # what arrived of the body with the headers

    def body_done(self) -> None:
        self.server.admission.busy(self)  # a sign-in's was closable until whole
        self.server.admission.body_ended(self)
        parser = self.parser
        if parser.error is not None:
            return self.refuse(Refusal(parser.error.code, "bad_request",
                                       f"{parser.error.reason}: {parser.error.body}."))
        self.dispatch()

    def body_too_slow(self, now: float) -> bool:
        return self.body_bytes < BODY_MIN_RATE * (now - self.since - BODY_GRACE)

    # -- answering ----------------------------------------------------------------

    def dispatch(self) -> None:
        """The whole request is in: the fast path answers it here, or a thread does."""
        parser = self.parser
        server = self.server
        job = server.js_job(self, parser)  # a back end's request: the fast path has no answer
        if job is not None:
            quick = job.path.on_loop(self, parser)  # a quick handler, run right here
            if quick is not None:
                self.send(quick[0])
                return self.finished(quick[1])
            answer = None
        else:
            answer = server.fastpath(self, parser) if server.fastpath else None
            if answer is None and server.statuspath is not None:
                answer = server.statuspath(self, parser)  # the owner's status read
        if answer is not None:
            keep = responses.keeps_alive(parser.version, parser.headers.get("CONNECTION", ""))
            self.send(answer)
            return self.finished(not keep)
        self.state, self.since = TASK, time.monotonic()
        self.task_running = True
        # Nothing of an earlier answer waits to go out: the loop will not touch the socket
        # or the transport until the task is done, so the task may send its answer itself.
        self.direct = not (self.wire or self.out)
        self._update_events()
        # The cockpit's lane for the cockpit's requests (a sign-in included), whatever the
        # connection said before: a site's request never takes a cockpit thread.
        server.lanes.add_task(job or server.job(self, parser), self.target.kind == ADMIN)

    def refuse(self, refusal: Refusal) -> None:
        """Answer from the loop; close unless the request is whole (no unread body)."""
        parser = self.parser
        self.server.admission.body_ended(self)
        whole = parser is not None and parser.completed and parser.error is None \
            and not refusal.close
        version = parser.version if hasattr(parser, "command") else "1.1"
        keep = whole and responses.keeps_alive(version, parser.headers.get("CONNECTION", ""))
        path = getattr(parser, "path", "/") or "/"
        method = getattr(parser, "command", "GET") or "GET"
        self.send(responses.error(
            refusal.status, refusal.code, refusal.message, path=path,
            accept=parser.headers.get("ACCEPT") if parser is not None else None,
            version=version, keep_alive=keep, retry_after=refusal.retry_after, method=method,
            extra=[*(self.server.tls_headers() if self.listener.scheme == "https" else ()),
                   *((("Allow", refusal.allow),) if refusal.allow else ())]))
        self.server.log_request(self, refusal.status)
        self.finished(not keep)

    def finished(self, close: bool) -> None:
        """The answer is queued: next request, or close once it is sent."""
        close = close or self.close_when_answered
        if self.parser is not None:
            self.parser.close()
            self.parser = None
        self.served += 1
        if close:
            self.close_after = True
            if not (self.wire or self.out):
                self._begin_close()
            else:
                self.state = IDLE  # stays busy for admission until closed
                self._update_events()
            return
        self.state, self.since = IDLE, time.monotonic()
        self._update_events()
        if not (self.wire or self.out):
            self.server.admission.quiet_again(self)
        if self.inbuf:
            self.parse()

    def task_done(self, close: bool) -> None:
        """On the loop: the thread has queued the whole answer."""
        self.task_running = False
        if self.closed:
            return
        self.flush()
        if self.closed:
            return
        if self.parser is not None and self.parser.connection_close:
            close = True
        self.state = IDLE  # reading may resume while the rest is sent
        self.finished(close)

    # -- writing --------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        """On the loop: plaintext to the client, sent now as far as the socket takes it.
        A large answer (a cached file) bounds what the kernel holds for it, as a stream
        does: a slow reader's socket would otherwise grow its buffer to megabytes."""
        if len(data) > SEND_PIECE:
            self._bound_sndbuf()
        self.out.append(data)
        self.flush()

    def queue_from_thread(self, data) -> None:
        """On a task's thread: queue a piece of the answer, ring the loop when worth it.

        A piece already built is handed over whatever the client does: waiting after it
        would hold the thread (a lane has a few) for a client that may never read, and
        save no memory. The wait is before a piece, while more than OUT_HIGH of earlier
        ones waits for the loop to take it (`queued`): only an application that writes
        piece after piece (a WSGI iterator) is held back there, which bounds what it can
        pile up for a client that does not read. An answer written whole (the status line
        and headers, then the body: every answer fazt's routes build in memory) finds
        nothing waiting before its last piece, and its thread returns at once; a large
        file is a stream, which the loop pulls (`_stream_begins`)."""
        if type(data) is not bytes:  # a stream: the loop pulls it
            self.out.append(data)
            self.loop.call_soon_threadsafe(self._stream_begins)
            return
        with self.cond:
            while self.queued > OUT_HIGH and not self.closed:
                self.cond.wait(1.0)
            if self.closed:
                return  # nobody to answer (TaskChannel.write_soon says so at the next write)
            # Queued and counted at once, under the lock `_taken` takes: were the loop to
            # take the piece before it is counted, its count would never come off.
            self.out.append(data)
            self.queued += len(data)
            queued = self.queued
        if queued >= WAKE_BYTES:
            self.loop.call_soon_threadsafe(self.flush)

    def send_from_thread(self) -> None:
        """On a task's thread, once its whole answer is queued: send it now instead of a
        turn of the loop later (under a flood a turn takes milliseconds).

        Only while the loop has had no reason to touch the connection since `dispatch`:
        nothing was waiting to go out then (`direct`), and the task queued neither a stream
        nor enough bytes to ring the loop (WAKE_BYTES). Until `task_done` the socket and
        the transport are then this thread's, except that the loop may abort the
        connection: `abort` closes the socket under `cond`'s lock, which is held here, so
        the descriptor cannot be closed (and reused by another connection) mid-send.
        What the socket does not take is left in `wire` for the loop."""
        with self.cond:
            if self.closed or not self.direct or not self.out or self.queued >= WAKE_BYTES \
                    or any(type(item) is not bytes for item in self.out):
                return
            self.direct = False
            try:
                wire = self.transport.wrap(b"".join(self.out))
            except TransportFailure:  # the loop meets it again when it sends, and closes
                return
            self.out.clear()
            self.queued = 0
            # Full, or broken (None): the loop sends the rest (or finds it broken) itself.
            sent = self._send(self.sock.send, wire) or 0
            self.wire = wire[sent:]

    def _stream_begins(self) -> None:
        """On the loop: bound what the kernel holds for this stream, then send."""
        self._bound_sndbuf()
        self.flush()

    def _bound_sndbuf(self) -> None:
        if not self.closed:
            try:
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                     stream_sndbuf(self.sock))
            except OSError:
                pass

    def _send_wire(self, data: bytes) -> None:
        if data:
            self.wire = bytes(self.wire) + data if self.wire else data
            self.flush()

    def flush(self) -> None:
        if self.closed:
            return
        sock = self.sock
        out = self.out
        taken = 0
        while True:
            wire = self.wire
            if wire:
                sent = self._send(sock.send, wire)
                if sent is None:
                    self._taken(taken)
                    return self.abort()
                if sent < len(wire):
                    self.wire = wire[sent:]
                    break
                self.wire = b""
            if not out:
                break
            item = out[0]
            if type(item) is bytes:
                pieces = []
                size = 0
                while out and type(out[0]) is bytes and size < SEND_PIECE:
                    piece = out.popleft()
                    pieces.append(piece)
                    size += len(piece)
                taken += size
                try:
                    self.wire = self.transport.wrap(b"".join(pieces) if len(pieces) > 1
                                                    else pieces[0])
                except TransportFailure:  # nothing more can go through it: close now
                    self._taken(taken)
                    return self._transport_failed()
                continue
            stream = item.file if self.transport.plain else None
            try:  # a wsgi.file_wrapper buffer over a stream
                if hasattr(stream, "views"):  # a ChunkStream (or FileStream): several chunks a send
                    views = stream.views(min(SEND_BATCH, item.remain))
                    piece = None
                else:
                    piece = item.get(SEND_PIECE, skip=True)
            except Exception:  # noqa: BLE001 - the stream failed (database gone): end it
                self._taken(taken)
                return self.abort()
            if piece:
                try:
                    self.wire = self.transport.wrap(piece)
                except TransportFailure:
                    self._taken(taken)
                    return self._transport_failed()
                continue
            if piece is None and views:
                sent = self._send(sock.sendmsg, views)
                if sent is None:
                    self._taken(taken)
                    return self.abort()
                stream.advance(sent)
                item.remain -= sent
                if sent < sum(len(v) for v in views):
                    break  # the socket is full: WRITE wakes us
                continue
            if item.remain <= 0:
                item.close()
                out.popleft()
                continue
            self.stalled = True  # its next chunk is being read: wait for the ring
            self.server.stalled.add(self)
            break
        self._taken(taken)
        self._update_events()
        if not (self.wire or out) and self.state == IDLE and not self.task_running:
            if self.close_after:
                self._begin_close()
            elif self.parser is None and self.inbuf:
                self.parse()  # the pipelined request that waited for this answer
            elif self.parser is None and not self.server.admission.is_closable(self):
                self.since = time.monotonic()  # answered: idle from now, and closable
                self.server.admission.quiet_again(self)

    def _send(self, send, data) -> int | None:
        """What the socket took of `data` through `send` (0 when it is full); None when the
        connection broke."""
        try:
            sent = send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError:
            return None
        if sent:
            self.last_write = time.monotonic()
        return sent

    def _taken(self, size: int) -> None:
        if size:
            with self.cond:
                self.queued = max(0, self.queued - size)
                if self.queued <= OUT_HIGH:
                    self.cond.notify_all()

    def resume(self) -> None:
        """A stream's chunk has arrived (the loop's doorbell rang)."""
        self.stalled = False
        self.flush()

    # -- closing ----------------------------------------------------------------------

    def _begin_close(self) -> None:
        """Half-close and linger: the client reads its answer instead of a reset."""
        if self.closed or self.state == CLOSING:
            return
        bye = self.transport.close()
        if bye:
            try:
                self.sock.send(bye)
            except OSError:
                pass
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return self.abort()
        # No longer counted: it holds a socket for at most LINGER, and a 503 answered from
        # the reserve must free its place at once for the next newcomer (the owner's).
        self.server.release(self)
        self.state, self.since = CLOSING, time.monotonic()
        self._want(READ)
        self.server.linger(self)

    def _transport_failed(self) -> None:
        """The peer broke the transport's protocol: garbage or plain HTTP where a TLS
        handshake was due, a forged record. Nothing more can be read from it, nor written
        through it, so the connection closes now, after what the transport has to say (an
        alert, or its plain-HTTP 400). Waiting instead held the socket and its place until
        the handshake or header timeout, and the 408 then could not be wrapped."""
        self.eof = True
        if self.task_running:
            return self.abort()  # its answer can no longer be wrapped: the task sees `closed`
        self._drop_out()  # plaintext not yet wrapped can no longer be
        self._send(self.sock.send, self.wire + self.transport.outgoing())  # as far as it goes
        self.wire = b""
        self._begin_close()

    def evict(self) -> None:
        """Closed to make room, only ever between requests (admission's closable orders).

        Gracefully: a close() with unread input makes the kernel answer with a reset, and
        the client's next request may be in our receive buffer or on the wire. So a request
        still being sent gets an explicit 503, and the close is a half-close that reads and
        drops what still arrives until the client closes too (or LINGER passes)."""
        self.server.admission.left(self)  # the room is free now, whatever the linger takes
        if self.state in (HEADERS, BODY):  # BODY: a sign-in's, the one body closable
            self.refuse(Refusal(503, "over_capacity", "The server is at its connection "
                                "limit; try again shortly.", 2, close=True))
        else:
            self._begin_close()

    def drop_input(self) -> None:
        """Read and drop what the client has sent (a few reads at most), so that a close
        right after does not find unread input and reset the connection."""
        for _ in range(16):
            try:
                if not self.sock.recv(65536):
                    return
            except OSError:  # nothing more for now, or the socket is gone
                return

    def abort(self) -> None:
        if self.closed:
            return
        if self.events:
            try:
                self.watcher.unregister(self.sock)
            except (KeyError, ValueError):
                pass
            self.events = 0
        with self.cond:  # never while a task sends on it (send_from_thread)
            self.closed = True  # a running task notices it at its next write
            try:
                self.sock.close()
            except OSError:
                pass
        if self.parser is not None and not self.task_running:
            self.parser.close()
        self._drop_out()
        self.wire = b""
        with self.cond:
            self.cond.notify_all()
        self.server.forget(self)

    def _drop_out(self) -> None:
        """Forget what waits to be sent, closing the streams among it."""
        for item in self.out:
            if type(item) is not bytes:
                item.close()
        self.out.clear()
        self.stalled = False
        self.server.stalled.discard(self)

    # -- timeouts ----------------------------------------------------------------------

    def _caught_up(self) -> bool:
        """Before a clock closes it: read what the client sent while the loop was not
        looking (the process was stopped and continued, or starved of CPU; Python's epoll,
        woken past its deadline, returns no events, and the timers run first). True when
        something was waiting, so the client was not the slow one: a request that sat in
        the kernel's buffer is answered, not closed on."""
        if self.eof or not self._reading():
            return False
        before = (self.state, self.since, self.body_bytes, len(self.inbuf))
        self.read()
        return self.closed or before != (self.state, self.since, self.body_bytes,
                                         len(self.inbuf))

    def check_time(self, now: float) -> None:
        """Called about once a second by the server's sweep."""
        state = self.state
        if state == IDLE:
            if self.wire or self.out:
                if now - self.last_write > WRITE_TIMEOUT:
                    self.abort()
            elif now - self.since > (KEEPALIVE_TIMEOUT if self.served else FIRST_REQUEST_TIMEOUT) \
                    and not self._caught_up():
                self._begin_close()
        elif state == HEADERS:
            if now - self.since > HEADER_TIMEOUT and not self._caught_up():
                self.refuse(Refusal(408, "request_timeout",
                                    "The request's headers took too long to arrive."))
        elif state == BODY:
            if self.body_too_slow(now) and not self._caught_up():
                self.refuse(Refusal(408, "request_timeout",
                                    "The request body arrives too slowly."))
        elif state == TASK:
            if (self.wire or self.out) and self.last_write and \
                    now - max(self.last_write, self.since) > WRITE_TIMEOUT:
                self.abort()
        elif state == HANDSHAKE:
            if self.transport.handshake_expired(now) and not self._caught_up():
                self.abort()
        elif state == CLOSING and now - self.since > LINGER:
            self.abort()
