"""`fazt server start`: the quiet window, then the loop.

Boot order: open the database (maintenance check), hydrate the pinned map and
RAM auth, and only then bind the port, so the first request already finds the
cockpit in RAM.
"""

import errno
import gc
import logging
import os
import signal
import socket
import sys
import threading
import time

from fazt import proxies
from fazt.app import Router
from fazt.constants import DEFAULT_PORT, MB
from fazt.errors import FaztError
from fazt.heap import keep_free_heap
from fazt.hosts import classify, host_name
from fazt.https import hsts
from fazt.instance import Instance
from fazt.requestlog import RequestLog
from fazt.server import descriptors, logstream, priority
from fazt.server.admission import Admission
from fazt.server.fastpath import FastPath
from fazt.server.http import HTTPServer
from fazt.server.jspath import JsPath
from fazt.server.lanes import LaneDispatcher
from fazt.server.statuspath import StatusPath
from fazt.stability import thresholds
from fazt.store.claim import claim_for_server
from fazt.store.database import remove_backup_copies
from fazt.vfs import HEAP_KEEP_FACTOR, StreamLoop

LOOP_YIELD = 0.0002  # seconds the event loop pauses per turn while the lanes are busy
TICK = 2.0  # seconds between housekeeping turns (collection, Litestream, an idle server)
DRAIN_SECONDS = 3.0  # at SIGTERM, answers in flight get this long to finish
BACKLOG = 4096  # the kernel queues this many connections the loop has not accepted yet
log = logging.getLogger("fazt")


def bind(host: str, port: int, option: str = "--port") -> socket.socket:
    if not 0 <= port <= 65535:  # socket.bind raises OverflowError, not OSError
        raise FaztError(f"{option} {port} is not a port number (1-65535).")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise FaztError(f"Port {port} is already in use on {host}; "
                            f"stop the other program or pick another {option}.") from None
        if exc.errno == errno.EACCES and port < 1024:
            raise FaztError(f"Cannot listen on {host}:{port}: ports below 1024 need root or "
                            "CAP_NET_BIND_SERVICE (install.sh grants it).") from None
        raise FaztError(f"Cannot listen on {host}:{port}: {exc.strerror}.") from None
    sock.listen(BACKLOG)
    return sock


def admission_for(instance: Instance, fds: descriptors.Descriptors) -> Admission:
    admission = Admission(host_classifier(instance), **_admission_limits(instance.config, fds))
    admission.trusted = lambda: proxies.networks(tuple(instance.config["trusted_proxies"]))
    return admission


def host_classifier(instance: Instance, entries: int = 1024):
    """`hosts.classify` remembered per Host header until the domain or the custom domains
    change: the event loop asks for every request. It keeps as many as the fast path's
    memo of files allows sites (found_limit / 8, charged in the ledger with it)."""
    known: dict = {}
    stamp = [None]

    def classify_host(host: str | None):
        now = (instance.domain, id(instance.domains))
        if stamp[0] != now or len(known) >= max(entries, instance.vfs.found_limit // 8):
            known.clear()
            stamp[0] = now
        target = known.get(host)
        if target is None:
            target = known[host] = classify(host, instance.domain, instance.domains)
        return target

    return classify_host


def _admission_limits(c: dict, fds: descriptors.Descriptors) -> dict:
    """The thresholds admission applies; connections no more than descriptors allow."""
    limit = min(int(c["connection_limit"]),
                fds.connections(int(c["user_threads"]) + int(c["cockpit_threads"])))
    return {
        "connection_limit": limit,
        "address_connections": min(int(c["address_connections"]), limit),
        "address_rps": float(c["address_requests_per_s"]),
        "max_upload_bytes": int(float(c["max_upload_mb"]) * MB),
        "js_body_bytes": int(min(float(c["max_upload_mb"]), float(c["js_memory_mb"])) * MB),
    }


def make_server(instance: Instance, log: RequestLog | None = None) -> HTTPServer:
    """A server with no socket yet (see `HTTPServer.listen`), not yet running."""
    c = instance.config
    lanes = LaneDispatcher(int(c["user_threads"]), int(c["cockpit_threads"]))
    fds = descriptors.Descriptors()  # before the lanes' threads open their readers
    admission = admission_for(instance, fds)
    if admission.connection_limit < int(c["connection_limit"]):
        sys.stderr.write(f"fazt: {fds.soft} file descriptors (ulimit -n) allow "
                         f"{admission.connection_limit} connections, fewer than "
                         f"connection_limit ({c['connection_limit']}): admission uses "
                         f"{admission.connection_limit}\n")

    def pause() -> None:
        """The loop gives Python's lock away while the lanes are busy.

        The loop makes a system call every few microseconds (epoll, recv, send), and each
        one lets go of Python's lock and takes it straight back. A worker thread waiting
        for the lock only forces a hand-over when five milliseconds pass *without* the
        lock changing hands, which never happens: the loop starves every worker (CPython's
        "convoy effect"). Measured with 64 wrk connections on a 4 KiB file (Waitress's
        poll loop): 335-616 req/s with a p99 of 0.4-0.6 s, bimodal from run to run; with
        this pause 3,800-4,200 req/s and a p99 of 25 ms, and a sign-in under that flood
        1.6x its idle p99 instead of 2-2.4x. With one client (nothing contended) there is
        no pause.
        """
        if lanes.contended():
            time.sleep(LOOP_YIELD)

    server = HTTPServer(Router(instance, log=log), lanes, admission,
                        spool_folder=os.path.dirname(os.path.abspath(instance.db_path)),
                        log=log, after_turn=pause)
    admission.owner = server.application.owner

    def resize(user_threads: int, cockpit_threads: int, connection_limit: int) -> None:
        lanes.resize(user_threads, cockpit_threads)
        admission.resize(**_admission_limits(instance.config, fds))

    instance.resize_lanes = resize
    return server


def run(db_path: str, host: str, port: int | None, https_port: int | None = None,
        follow: str | None = None) -> None:
    """Boot, serve until SIGINT/SIGTERM, stop cleanly. With `follow` (a replica URL),
    serve read-only from a copy of that replica that Litestream keeps current."""
    logstream.install()  # a full disk under the log must not stop the server (logstream.py)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING,
                        format="%(name)s: %(message)s")
    # Waitress warns on every request queued behind busy threads: under a flood that is a
    # log line per request. A queue is expected under load.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    descriptors.raise_limit()
    priority.reset_new_threads()  # before any thread is raised, so none inherits it
    held = claim_for_server(db_path)  # `fazt restore` refuses a database a server holds
    for path in remove_backup_copies(db_path):
        log.warning("Removed %s, a backup copy left by a server that was killed.", path)
    instance = _follower(db_path, follow) if follow else _primary(db_path)
    # A follower cannot order or renew certificates (that writes): TLS goes in front of it.
    https_on = instance.config.get("https") == "on" and not follow
    port = port or (80 if https_on else int(instance.config.get("port") or DEFAULT_PORT))
    autocert = start_certificates(instance) if https_on else None
    requests_log = RequestLog().start()
    server = make_server(instance, requests_log)
    # (no WAL header to compare, say on a file system that refuses the -shm map: the loop
    # judges by the state it has, and the threads keep it current, as before)
    server.state_current = lambda: instance.is_current() or not instance.db.wal_header()
    server.state_refresh = instance.refresh
    server.tls_headers = lambda: hsts(instance.config)
    if autocert is not None:
        server.admission.redirected = lambda host: autocert.serves(host_name(host))
    if os.environ.get("FAZT_FASTPATH", "on") != "off":  # off: every request takes WSGI
        server.fastpath = FastPath(instance, requests_log)
        server.jspath = JsPath(instance, requests_log)
        status = server.application.quick_status
        server.statuspath = StatusPath(instance, status, status.PATH, requests_log)
    server.listen(bind(host, port))
    if autocert is not None:
        instance.https_port = https_port or 443  # the plain port now redirects there
        server.listen(bind(host, instance.https_port, "--https-port"), autocert.sink.transport,
                      "https")
    instance.connection_stats = server.stats
    ahead_bytes = int(thresholds.read_ahead_mb(instance.machine) * MB)
    instance.vfs.loop = StreamLoop(server.loop.wake, ahead_bytes=ahead_bytes)
    # Streams reuse their chunks' pages (heap.py). What malloc keeps free is memory the
    # streams held at their peak, which the ledger charges (the read-ahead and the chunks of
    # each download), so it scales with this host's read-ahead rather than a fixed size.
    keep_free_heap(HEAP_KEEP_FACTOR * ahead_bytes)
    instance.db.release_reader()  # and never reads the database again: drop boot's cache
    # What boot made (modules, functions, the cockpit's pinned files, ...) lives as long as
    # the server: out of the cyclic collector's sight, so that a full collection, which
    # stops every thread (the event loop's too), walks only what was made since.
    gc.collect()
    gc.freeze()

    def stop(signum, frame):
        server.loop.stop()

    def hup(signum, frame):
        if instance.read_only:
            log.warning("SIGHUP ignored: a follower runs with the primary's thresholds")
            return
        # Recalibration writes to the database: never on the event loop's thread.
        threading.Thread(target=_safely, args=(instance.recalibrate, "Recalibration (SIGHUP)"),
                         daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, hup)
    threading.Thread(target=_tick, args=(instance,), daemon=True).start()
    instance.start_sampler()  # status reads take a snapshot: no I/O on the cockpit lane
    d = instance.domain
    role = f"as a read-only follower of {follow}, " if follow else ""
    at = f"[{host}]" if ":" in host else host  # an IPv6 address, as a URL spells it
    sys.stderr.write(
        f"fazt serving on http://{at}:{port} {role}in {instance.mode} mode "
        f"(sites: http://NAME.{d}:{port}, cockpit: http://admin.{d}:{port})\n")
    if autocert is not None:
        sys.stderr.write(f"HTTPS on {at}:{instance.https_port}; the plain port answers ACME "
                         "checks and health, and redirects the rest (`fazt cert list`)\n")
    elif https_port:
        sys.stderr.write("--https-port is ignored: the setting https is off\n")
    sys.stderr.flush()
    if autocert is not None:
        autocert.start()  # the plain port is open: HTTP-01 checks can reach it
    try:
        server.run()
        server.drain(DRAIN_SECONDS)
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

    problem = target.check_url(url) or target.check_reachable(url)
    if problem:
        raise FaztError(f"--follow: {problem}")
    gomemlimit = th.replica_gomemlimit_mb(probe(db_path))
    follower = Follower(db_path, url, target.credentials_from_env(), gomemlimit).start()
    try:
        instance = Instance(db_path, read_only=True).boot()
    except BaseException:
        follower.stop()
        raise
    instance.replication = follower

    def restored() -> None:  # Litestream died and restored afresh: read the new file
        instance.db.serve_from(None)
        instance.vfs.forget_files()

    follower.on_restored = restored
    follower.on_moved = instance.db.serve_from  # read the old copy while it restores
    follower.primary_url = lambda: instance.config.get(target.URL_KEY)
    follower.on_applied = instance.db.reopen  # the counter SQLite checks did not move
    return instance


def _tick(instance: Instance) -> None:
    # Not for freshness: every request brings the state up to date itself (Router,
    # and the fast path declines while it is not current).
    while True:
        instance.wait_for_tick(TICK)
        _safely(instance.tick)


def _safely(action, what: str = "a background task"):
    try:
        return action()
    except FaztError as exc:  # expected (a full disk, a busy database): its sentence
        log.warning("%s failed: %s", what, exc.message)
    except Exception:  # a background duty must never kill the server
        log.exception("%s failed", what)
    return None
