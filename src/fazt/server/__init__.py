"""`fazt server start`: boot in the quiet window, then serve with Waitress in two lanes.

Boot order: open the database (maintenance check), hydrate the pinned map and
RAM auth, and only then bind the port, so the first request already finds the
cockpit in RAM.

Connections: Waitress stops accepting at its connection limit, and lanes do
not help a connection that was never accepted. So the server closes requests
whose headers take longer than HEADER_TIMEOUT (slowloris), and when the limit
is reached it makes room by closing the oldest connection that has not yet
sent a whole request, instead of shutting everyone out.
"""

import errno
import logging
import signal
import socket
import sys
import threading
import time

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer

from fazt.app import Router
from fazt.constants import DEFAULT_PORT, MB
from fazt.errors import FaztError
from fazt.hosts import ADMIN, classify
from fazt.instance import Instance
from fazt.lanes import LaneDispatcher
from fazt.requestlog import RequestLog
from fazt.store.claim import claim_for_server
from fazt.vfs import ChunkStream, StreamLoop

LOOP_YIELD = 0.0002  # seconds the event loop pauses per turn while the lanes are busy
HEADER_TIMEOUT = 10.0  # seconds a client may take to send a request's headers
CONFIG_POLL = 2.0  # seconds between looks for config written by another process
log = logging.getLogger("fazt")


class Channel(HTTPChannel):
    """Remembers when the request now arriving began, for the header timeout."""

    partial_since = 0.0

    def received(self, data: bytes) -> bool:
        if self.request is None:
            self.partial_since = time.time()
        return super().received(data)

    def waiting_for_headers(self) -> bool:
        return self.request is not None and not self.request.headers_finished

    def writable(self) -> bool:
        # Called for every channel on every turn of the event loop: keep it cheap.
        # A stream whose next chunk is still being read has nothing to send: without
        # this the event loop would spin on a writable socket until the chunk arrives.
        if self.will_close or self.close_when_flushed:
            return True
        if not self.total_outbufs_len:
            return False
        stream = getattr(self.outbufs[0], "file", None)
        return not (type(stream) is ChunkStream and stream.waiting)


class Server(TcpWSGIServer):
    channel_class = Channel

    def run(self) -> None:
        """Waitress's event loop, which gives Python's lock away while the lanes are busy.

        The loop makes a system call every few microseconds (poll, recv, send), and each
        one lets go of Python's lock and takes it straight back. A worker thread waiting
        for the lock only forces a hand-over when five milliseconds pass *without* the
        lock changing hands, which never happens: the loop starves every worker (CPython's
        "convoy effect"). Measured with 64 wrk connections on a 4 KiB file: 335-616 req/s
        with a p99 of 0.4-0.6 s, bimodal from run to run; with this pause 3,800-4,200
        req/s and a p99 of 25 ms, and a sign-in under that flood 1.6x its idle p99 instead
        of 2-2.4x. Each turn the pause costs is LOOP_YIELD; with one client (nothing
        contended) there is none.
        """
        try:
            while self._map:
                # poll(2), never select(2): no FD_SETSIZE cap on connections
                wasyncore.poll2(self.adj.asyncore_loop_timeout, self._map)
                if self.lanes.contended():
                    time.sleep(LOOP_YIELD)
        except (SystemExit, KeyboardInterrupt):
            self.task_dispatcher.shutdown()

    def maintenance(self, now: float) -> None:
        super().maintenance(now)
        for channel in list(self.active_channels.values()):
            if channel.waiting_for_headers() and now - channel.partial_since > HEADER_TIMEOUT:
                channel.will_close = True

    def handle_accept(self) -> None:
        # Waitress's limit includes a reserve; past the owner's limit, make room.
        if len(self.active_channels) >= self.soft_limit:
            idle = [c for c in self.active_channels.values()
                    if not c.requests and (c.request is None or c.waiting_for_headers())]
            if idle:
                oldest = min(idle, key=lambda c: c.last_activity)
                oldest.handle_close()
        super().handle_accept()

    soft_limit = 100


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise FaztError(f"Port {port} is already in use on {host}; "
                            "stop the other program or pick another --port.") from None
        raise FaztError(f"Cannot listen on {host}:{port}: {exc.strerror}.") from None
    sock.listen(1024)
    return sock


def make_server(instance: Instance, host: str, port: int,
                log: RequestLog | None = None) -> Server:
    """A ready server on a bound port, not yet running."""
    c = instance.config
    lanes = LaneDispatcher(lambda h: classify(h, instance.domain).kind == ADMIN,
                           int(c["user_threads"]), int(c["cockpit_threads"]))
    sock = bind(host, port)
    adj = Adjustments(
        sockets=[sock],
        threads=int(c["user_threads"]),
        connection_limit=int(c["connection_limit"]) + 16,
        channel_timeout=30,
        cleanup_interval=2,
        max_request_header_size=32 * 1024,
        max_request_body_size=int(float(c["max_upload_mb"]) * MB) + 64 * 1024,
        inbuf_overflow=64 * 1024,
        outbuf_overflow=256 * 1024,
        outbuf_high_watermark=1024 * 1024,
        ident="fazt",
    )
    server = Server(Router(instance, log=log), {}, True, sock, dispatcher=lanes,
                    adj=adj, bind_socket=False,
                    sockinfo=(sock.family, sock.type, sock.proto, sock.getsockname()))
    server.soft_limit = int(c["connection_limit"])
    server.lanes = lanes

    def resize(user_threads: int, cockpit_threads: int, connection_limit: int) -> None:
        lanes.resize(user_threads, cockpit_threads)
        adj.connection_limit = connection_limit + 16
        adj.max_request_body_size = int(float(instance.config["max_upload_mb"]) * MB) + 64 * 1024
        server.soft_limit = connection_limit

    instance.resize_lanes = resize
    return server


def run(db_path: str, host: str, port: int | None, https_port: int | None = None,
        follow: str | None = None) -> None:
    """Boot, serve until SIGINT/SIGTERM, stop cleanly. With `follow` (a replica URL),
    serve read-only from a copy of that replica that Litestream keeps current."""
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(name)s: %(message)s")
    # Waitress warns on every request queued behind busy threads: under a flood that is a
    # log line per request, written by the event loop thread itself (measured: a sign-in
    # under a flood took 100 ms at p50 with it, 72 without). A queue is expected under load.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    held = claim_for_server(db_path)  # `fazt restore` refuses a database a server holds
    instance = _follower(db_path, follow) if follow else _primary(db_path)
    # A follower cannot order or renew certificates (that writes): TLS goes in front of it.
    https_on = instance.config.get("https") == "on" and not follow
    port = port or (80 if https_on else int(instance.config.get("port") or DEFAULT_PORT))
    autocert = start_certificates(instance) if https_on else None
    requests_log = RequestLog().start()
    server = make_server(instance, host, port, requests_log)
    instance.vfs.loop = StreamLoop(server.pull_trigger)  # this thread runs the event loop
    instance.db.release_reader()  # and never reads the database again: drop boot's cache

    def stop(signum, frame):
        raise SystemExit(0)

    def hup(signum, frame):
        # Recalibration writes to the database: never on the event loop's thread.
        threading.Thread(target=_safely, args=(instance.recalibrate,), daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, hup)
    threading.Thread(target=_watch_config, args=(instance,), daemon=True).start()
    d = instance.domain
    role = f"read-only follower of {follow}, " if follow else ""
    sys.stderr.write(
        f"fazt serving on http://{host}:{port} in {role}{instance.mode} mode "
        f"(sites: http://NAME.{d}:{port}, cockpit: http://admin.{d}:{port})\n")
    sys.stderr.flush()
    if autocert is not None:
        autocert.start()  # the plain port is open: HTTP-01 checks can reach it
    try:
        server.run()
    finally:
        if autocert is not None:
            autocert.stop()
        server.lanes.shutdown(timeout=5)
        instance.vfs.loop.shutdown()
        server.close()
        instance.close()
        requests_log.close()
        held.release()
        sys.stderr.write("fazt stopped\n")


def start_certificates(instance: Instance):
    """The certificates the TLS port will show, loaded from the database before any port
    opens, and the keeper that orders and renews them once the plain port is open."""
    from fazt.autocert import AutoCert
    from fazt.server.tls import Certificates

    certificates = Certificates(default_host=instance.domain)
    autocert = AutoCert(instance.db, certificates, lambda: instance.config)
    autocert.load()
    instance.autocert = autocert
    return autocert


def _primary(db_path: str) -> Instance:
    instance = Instance(db_path).boot()
    try:
        instance.keep_replicating()
    except BaseException:
        instance.close()
        raise
    return instance


def _follower(db_path: str, url: str) -> Instance:
    """Restore the replica into `db_path` and keep it current; boot on it read-only."""
    from fazt.replica import target
    from fazt.replica.follower import Follower
    from fazt.stability import thresholds as th
    from fazt.stability.probe import probe

    problem = target.check_url(url)
    if problem:
        raise FaztError(f"--follow: {problem}")
    url = target.litestream_url(url)
    gomemlimit = th.replica_gomemlimit_mb(probe(db_path))
    follower = Follower(db_path, url, target.credentials_from_env(), gomemlimit).start()
    try:
        instance = Instance(db_path, read_only=True).boot()
    except BaseException:
        follower.stop()
        raise
    instance.replication = follower

    def restored() -> None:  # Litestream died and restored afresh: read the new file
        instance.db.reopen()
        instance.vfs.forget_files()

    follower.on_restored = restored
    return instance


def _watch_config(instance: Instance) -> None:
    while True:
        time.sleep(CONFIG_POLL)
        if _safely(instance.reload_if_changed):
            _safely(instance.keep_replicating)


def _safely(action):
    try:
        return action()
    except Exception:  # a background duty must never kill the server
        log.exception("background task failed")
        return None
