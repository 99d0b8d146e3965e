"""The event loop's two promises, measured beside what came before (issues 14 and 16).

    python3 bench/loop_bench.py [--only fastpath,crowd,costs] [--seconds 60] [--crowd 2000]

1. Fast path: wrk on a 4 KiB cached file (1 thread, 32 connections), runs
   alternated: fazt (cache hits answered from the loop), the same fazt with
   FAZT_FASTPATH=off (every request through a thread, Waitress's WSGI bridge
   and Falcon), and a canned-response asyncio server (no parsing at all:
   Python's own ceiling here).
2. Crowd: fazt inside a 200 MB memory cgroup (v1; needs root) with the
   thresholds its probe picks there, and a crowd many times the previous
   design's connection limit (21 on this host): idle keep-alives, half-sent
   headers, bodies trickled at 10 bytes/s, slow readers of a large file,
   while clients fetch small files and the owner signs in twice a second.
   Counted: answers by status, resets, sign-in p50/p99, the 503 share, peak
   RSS and the cgroup's peak. The same run against the previous design (the
   Waitress-loop server of commit PREVIOUS, extracted with `git archive`).
3. Costs (`--only costs`): what a connection costs by state (idle, sending
   headers, sending a body, streaming a large file), in RSS and in its
   cgroup's memory with the kernel's TCP buffers: the connection ledger's
   figures (capacity.js).

Writes bench/LOOP.md.
"""

import argparse
import multiprocessing
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time

import common as c
import psutil
import requests
from soak import Cgroup

PREVIOUS = "dc7c974"  # the last commit served by Waitress's own loop
FILE = 4096
CANNED = """
import asyncio, sys
BODY = b"x" * 4096
RESP = (b"HTTP/1.1 200 OK\\r\\nContent-Type: application/octet-stream\\r\\n"
        b"Content-Length: 4096\\r\\n\\r\\n" + BODY)
class P(asyncio.Protocol):
    def connection_made(self, t): self.t = t; self.buf = b""
    def data_received(self, d):
        self.buf += d
        while b"\\r\\n\\r\\n" in self.buf:
            _, self.buf = self.buf.split(b"\\r\\n\\r\\n", 1)
            self.t.write(RESP)
async def main():
    s = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(sys.argv[1]))
    await s.serve_forever()
asyncio.run(main())
"""


def env_for(src: str, **extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def run_fazt(src: str, *args: str, db: str, preexec=None) -> str:
    done = subprocess.run([sys.executable, "-m", "fazt", *args, "--db", db], env=env_for(src),
                          capture_output=True, text=True, timeout=600, preexec_fn=preexec)
    if done.returncode:
        raise RuntimeError(done.stderr)
    return done.stdout


def start_fazt(src: str, db: str, port: int, log: str, preexec=None, **extra):
    cmd = [sys.executable, "-m", "fazt", "server", "start", "--db", db, "--host", "127.0.0.1",
           "--port", str(port)]
    proc = c.start(cmd, log, env=env_for(src, **extra), preexec=preexec)
    c.wait_ready(f"http://127.0.0.1:{port}/_fazt/health", "x.localhost", proc, log)
    return proc


def make_db(src: str, tmp: str, name: str, preexec=None, big_mb: int = 0) -> str:
    db = os.path.join(tmp, name + ".db")
    args = ["server", "init", "--domain", "example.test", "--username", c.USERNAME,
            "--password", c.PASSWORD]
    run_fazt(src, *args, db=db, preexec=preexec)
    site = os.path.join(tmp, name + "-site")
    os.makedirs(os.path.join(site, "api"), exist_ok=True)
    for i in range(50):
        with open(os.path.join(site, f"f{i}.bin"), "wb") as f:
            f.write(os.urandom(FILE))
    with open(os.path.join(site, "api", "main.js"), "w") as f:
        f.write(c.JS_SOURCE)
    if big_mb:
        c.write_file(os.path.join(site, "large.bin"), big_mb * c.MB)
    run_fazt(src, "deploy", site, "--site", "bench", db=db)
    return db


# -- 1. the fast path --------------------------------------------------------------------


def section_fastpath(tmp: str, seconds: float, rounds: int = 3) -> c.Section:
    sec = c.Section("Fast path: a 4 KiB cached file, wrk -t1 -c32")
    src = os.path.join(c.REPO, "src")
    db = make_db(src, tmp, "fast")
    # One client address at wrk's rate is not what the per-address limit is for.
    run_fazt(src, "config", "set", "address_requests_per_s", "1000000", "--break-glass", db=db)
    copy = os.path.join(tmp, "fast-off.db")
    run_fazt(src, "backup", copy, db=db)
    servers = {}
    try:
        port = c.free_port()
        servers["fazt (fast path)"] = (start_fazt(src, db, port, os.path.join(tmp, "f1.log")),
                                       port)
        port = c.free_port()
        servers["fazt, FAZT_FASTPATH=off"] = (start_fazt(src, copy, port,
                                                         os.path.join(tmp, "f2.log"),
                                                         FAZT_FASTPATH="off"), port)
        port = c.free_port()
        proc = c.start([sys.executable, "-c", CANNED, str(port)], os.path.join(tmp, "a.log"))
        _wait_port(port)
        servers["asyncio, canned answer"] = (proc, port)
        results: dict[str, list[dict]] = {name: [] for name in servers}
        for _proc, port in servers.values():  # warm the caches
            c.wrk(f"http://127.0.0.1:{port}/f1.bin", "bench.localhost", 1, 4, 1)
        for _ in range(rounds):
            for name, (_, port) in servers.items():
                results[name].append(c.wrk(f"http://127.0.0.1:{port}/f1.bin",
                                           "bench.localhost", 1, 32, seconds))
    finally:
        for proc, _ in servers.values():
            c.stop(proc)
    ceiling = c.median([r["rps"] for r in results["asyncio, canned answer"]])
    rows = []
    for name, runs in results.items():
        rps = c.median([r["rps"] for r in runs])
        rows.append([name, f"{rps:,.0f}", f"{rps / ceiling:.3f}",
                     c.ms(c.median([r["p99"] for r in runs])),
                     sum(r["errors"] + r["non2xx"] for r in runs)])
    sec.tables.append(c.table(["server", "req/s (median)", "× asyncio", "p99 ms",
                               "errors + non-2xx"], rows))
    sec.notes.append(f"{rounds} rounds of {seconds:g} s each, alternated; the median is shown.")
    return sec


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


# -- 2. the crowd -------------------------------------------------------------------------


class Crowd:
    """Hostile and careless connections, opened from a thread, kept trickling."""

    def __init__(self, port: int, size: int):
        self.port = port
        self.size = size
        self.socks: dict[str, list[socket.socket]] = {"idle": [], "headers": [], "bodies": [],
                                                      "readers": []}
        self.failed = 0
        self.stop = threading.Event()

    def _open(self, kind: str, first: bytes, rcvbuf: int = 0) -> None:
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            if rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.sendall(first)
            s.setblocking(False)
            self.socks[kind].append(s)
        except OSError:
            self.failed += 1

    def run(self) -> None:
        n = self.size
        plan = (["idle"] * int(n * 0.75) + ["headers"] * int(n * 0.15) +
                ["bodies"] * int(n * 0.05) + ["readers"] * int(n * 0.05))
        random.Random(2).shuffle(plan)
        for kind in plan:
            if self.stop.is_set():
                break
            if kind == "idle":
                self._open(kind, b"GET /f2.bin HTTP/1.1\r\nHost: bench.localhost\r\n\r\n")
            elif kind == "headers":
                self._open(kind, b"GET /f3.bin HTTP/1.1\r\nHost: bench.localhost\r\n")
            elif kind == "bodies":
                self._open(kind, b"POST /api/echo HTTP/1.1\r\nHost: bench.localhost\r\n"
                                 b"Content-Length: 100000\r\n\r\n")
            else:
                self._open(kind, b"GET /large.bin HTTP/1.1\r\nHost: bench.localhost\r\n\r\n",
                           rcvbuf=4096)
        while not self.stop.wait(1.0):
            for s in self.socks["headers"]:
                _quietly(s.send, b"X-Slow: 1\r\n")
            for s in self.socks["bodies"]:
                _quietly(s.send, b"x" * 10)
            for kind in ("readers", "idle", "headers", "bodies"):
                for s in self.socks[kind]:
                    _quietly(s.recv, 4096)

    def close(self) -> None:
        self.stop.set()
        for socks in self.socks.values():
            for s in socks:
                s.close()

    def opened(self) -> int:
        return sum(len(v) for v in self.socks.values())


def _quietly(action, *args) -> None:
    try:
        action(*args)
    except OSError:
        pass


def _failure(exc: Exception) -> str:
    """A request that got no status line: reset, closed unanswered, or never connected."""
    text = str(exc).lower()
    if "reset" in text:
        return "reset"
    if "without response" in text or "aborted" in text:
        return "closed unanswered"
    return "no connection"


def _load(port: int, seconds: float, size: int, out) -> None:
    """In its own process (its own GIL): the crowd and four small-file clients."""
    counts: dict[str, int] = {}
    stop = threading.Event()
    crowd = Crowd(port, size)
    threading.Thread(target=crowd.run, daemon=True).start()

    def fetch():
        session = requests.Session()
        rng = random.Random()
        while not stop.is_set():
            try:
                r = session.get(f"http://127.0.0.1:{port}/f{rng.randrange(50)}.bin",
                                headers={"Host": "bench.localhost"}, timeout=10)
                key = str(r.status_code)
            except requests.Timeout:  # before ConnectionError: a connect timeout is both
                key = "timeout"
                session = requests.Session()
            except requests.ConnectionError as exc:
                key = _failure(exc)
                session = requests.Session()
            counts[key] = counts.get(key, 0) + 1

    workers = [threading.Thread(target=fetch, daemon=True) for _ in range(4)]
    for w in workers:
        w.start()
    time.sleep(seconds)
    opened = crowd.opened()
    stop.set()
    for w in workers:
        w.join(40)
    crowd.close()
    out.put((counts, opened))


def crowd_run(name: str, src: str, tmp: str, seconds: float, size: int) -> list:
    group = Cgroup.make(f"fazt-crowd-{os.getpid()}-{name.split()[0]}", 200)
    proc = None
    try:
        db = make_db(src, tmp, "crowd-" + name.split()[0], preexec=group.join, big_mb=20)
        port = c.free_port()
        group.reset_counters()
        proc = start_fazt(src, db, port, os.path.join(tmp, f"crowd-{name.split()[0]}.log"),
                          preexec=group.join)
        limit = run_fazt(src, "config", "get", "connection_limit", db=db).strip()
        logins: list[float] = []
        login_codes: dict[str, int] = {}
        peak_rss = [0]
        out = multiprocessing.Queue()
        load = multiprocessing.Process(target=_load, args=(port, seconds, size, out))
        load.start()
        pid = psutil.Process(proc.pid)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:  # the owner signs in twice a second
            began = time.perf_counter()
            try:
                r = requests.post(f"http://127.0.0.1:{port}/api/login",
                                  json={"username": c.USERNAME, "password": c.PASSWORD},
                                  headers={"Host": c.ADMIN_HOST, "X-Fazt-Request": "1"},
                                  timeout=30)
                key = str(r.status_code)
            except requests.Timeout:
                key = "timeout"
            except requests.ConnectionError as exc:
                key = _failure(exc)
            logins.append(time.perf_counter() - began)
            login_codes[key] = login_codes.get(key, 0) + 1
            try:
                peak_rss[0] = max(peak_rss[0], pid.memory_info().rss)
            except psutil.Error:
                break
            time.sleep(max(0.0, 0.5 - (time.perf_counter() - began)))
        counts, opened = out.get(timeout=120)
        load.join(30)
        cgroup_peak = group.number("memory.max_usage_in_bytes") or 0
        oom = group.oom_kills()
        alive = proc.poll() is None
    finally:
        c.stop(proc)
        group.remove()
    total = sum(counts.values())
    return [name, limit, f"{opened} of {size}", total,
            ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())),
            counts.get("reset", 0) + counts.get("closed unanswered", 0),
            f"{counts.get('503', 0) / max(1, total):.1%}",
            ", ".join(f"{k}: {v}" for k, v in sorted(login_codes.items())),
            c.ms(c.percentile(logins, 50)), c.ms(c.percentile(logins, 99)),
            f"{peak_rss[0] / c.MB:.0f}", f"{cgroup_peak / c.MB:.0f}",
            "yes" if alive and not oom else f"no (OOM kills: {oom})"]


def section_crowd(tmp: str, seconds: float, size: int) -> c.Section:
    sec = c.Section(f"Crowd: {size} hostile connections against a 200 MB cgroup")
    old = os.path.join(tmp, "previous")
    os.makedirs(old)
    archive = subprocess.run(["git", "-C", c.REPO, "archive", PREVIOUS, "src"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", old], input=archive, check=True)
    rows = [crowd_run("event loop (this tree)", os.path.join(c.REPO, "src"), tmp, seconds, size),
            crowd_run(f"previous design ({PREVIOUS}, Waitress's loop)",
                      os.path.join(old, "src"), tmp, seconds, size)]
    sec.tables.append(c.table(
        ["server", "connection_limit", "crowd connected", "small-file requests",
         "answers", "resets", "503 share", "sign-ins", "sign-in p50 ms", "sign-in p99 ms",
         "peak RSS MB", "cgroup peak MB", "alive"], rows))
    sec.notes.append(
        f"{seconds:g} s. Crowd: 75% idle keep-alives, 15% half-sent headers (a line a "
        "second), 5% bodies announced at 100 kB and sent at 10 bytes/s, 5% readers of a "
        "20 MB file taking 4 KiB a second; 4 clients fetch 4 KiB files; the owner signs in "
        "every 0.5 s on a fresh connection, from another process than the load (so the "
        "two do not share Python's lock). Thresholds: what each server's probe chose "
        "inside the cgroup. Resets: requests that got no status line on a connection that "
        "was open (reset, or closed unanswered).")
    return sec


# -- 3. what a connection costs --------------------------------------------------------


def _memory(pid: psutil.Process, group: Cgroup) -> tuple[int, int]:
    """RSS, and the cgroup's memory without its page cache (the database's pages are
    the kernel's to drop) plus the TCP buffers it is charged (as cgroup v2 charges them)."""
    stat = dict(line.split() for line in (group.read("memory.stat") or "").splitlines())
    cgroup = (group.number("memory.usage_in_bytes") or 0) - int(stat.get("cache", 0)) + \
        (group.number("memory.kmem.tcp.usage_in_bytes") or 0)
    return pid.memory_info().rss, cgroup


def _settle(pid: psutil.Process, group: Cgroup) -> tuple[int, int]:
    time.sleep(2)
    return _memory(pid, group)


def section_costs(tmp: str, idle: int = 1000, partial: int = 500, bodies: int = 100,
                  streams: int = 8) -> c.Section:
    """What one connection costs, by state: the figures capacity.js charges."""
    sec = c.Section("What a connection costs (the connection ledger's figures)")
    src = os.path.join(c.REPO, "src")
    group = Cgroup.make(f"fazt-costs-{os.getpid()}", 1024)
    # cgroup v1 charges socket buffers only once a TCP limit is set: set one out of reach
    group.write("memory.kmem.tcp.limit_in_bytes", str(1 << 40))
    proc = None
    socks: list[socket.socket] = []
    rows = []
    try:
        db = make_db(src, tmp, "costs", preexec=group.join, big_mb=64)
        for key, value in (("address_connections", "100000"),
                           ("address_requests_per_s", "1000000"), ("max_streams", "64")):
            run_fazt(src, "config", "set", key, value, "--break-glass", db=db)
        port = c.free_port()
        proc = start_fazt(src, db, port, os.path.join(tmp, "costs.log"), preexec=group.join)
        pid = psutil.Process(proc.pid)
        with requests.Session() as warm:
            for i in range(50):
                warm.get(f"http://127.0.0.1:{port}/f{i}.bin",
                         headers={"Host": "bench.localhost"}, timeout=10)

        def connect(first: bytes, rcvbuf: int = 0) -> socket.socket:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            s.sendall(first)
            socks.append(s)
            return s

        def measure(label: str, count: int, open_them) -> None:
            before = _settle(pid, group)
            open_them()
            after = _settle(pid, group)
            rows.append([label, count, f"{(after[0] - before[0]) / count / 1024:,.1f}",
                         f"{(after[1] - before[1]) / count / 1024:,.1f}"])

        def idle_ones():
            for _ in range(idle):
                s = connect(b"GET /f1.bin HTTP/1.1\r\nHost: bench.localhost\r\n\r\n")
                s.recv(65536)

        def partial_ones():
            for _ in range(partial):
                connect(b"GET /f1.bin HTTP/1.1\r\nHost: bench.localhost\r\n"
                        b"User-Agent: " + b"x" * 400 + b"\r\n")

        def body_ones():
            for _ in range(bodies):
                connect(b"POST /api/echo HTTP/1.1\r\nHost: bench.localhost\r\n"
                        b"Content-Length: 100000\r\n\r\n" + b"x" * 12000)

        measure("idle keep-alive (one request answered)", idle, idle_ones)
        measure("mid-request: headers half sent", partial, partial_ones)
        measure("mid-request: 12 KB of a 100 KB body in", bodies, body_ones)
        for s in socks:
            s.close()
        socks.clear()

        def stream(n: int):
            def go():
                for _ in range(n):
                    s = connect(b"GET /large.bin HTTP/1.1\r\nHost: bench.localhost\r\n\r\n",
                                rcvbuf=4096)
                    s.recv(64)
            return go

        measure("the first large download (a slow reader)", 1, stream(1))
        measure("each further large download (slow readers)", streams, stream(streams))
        for s in socks:
            s.close()
        socks.clear()
        before = _settle(pid, group)
        with requests.get(f"http://127.0.0.1:{port}/large.bin", stream=True, timeout=60,
                          headers={"Host": "bench.localhost"}) as r:
            for _ in r.iter_content(1 << 20):
                pass
        after = _settle(pid, group)
        rows.append(["after a fast 64 MB download ended (heap kept for the next)", 1,
                     f"{(after[0] - before[0]) / 1024:,.1f}",
                     f"{(after[1] - before[1]) / 1024:,.1f}"])
    finally:
        for s in socks:
            s.close()
        c.stop(proc)
        group.remove()
    sec.tables.append(c.table(["connections", "count", "RSS KiB each",
                               "cgroup KiB each (with TCP buffers)"], rows))
    sec.notes.append(
        "Each row: the growth of fazt's RSS and of its cgroup's memory (page cache "
        "excluded, the kernel's TCP buffers included) after opening `count` more "
        "connections in that state, 2 s after the last, divided by `count`. Slow "
        "readers take nothing (4 KiB receive buffer), so each holds what a stalled "
        "download holds; the first one also fills the read-ahead shared by all.")
    return sec


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="fastpath,crowd")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--wrk-seconds", type=float, default=10)
    parser.add_argument("--crowd", type=int, default=2000)
    parser.add_argument("--out", default=os.path.join(c.HERE, "LOOP.md"))
    args = parser.parse_args()
    only = set(args.only.split(","))
    sections = []
    with tempfile.TemporaryDirectory(prefix="fazt-loop-bench-") as tmp:
        if "fastpath" in only:
            sections.append(section_fastpath(tmp, args.wrk_seconds))
        if "crowd" in only:
            sections.append(section_crowd(tmp, args.seconds, args.crowd))
        if "costs" in only:
            sections.append(section_costs(tmp))
    text = "# The event loop, measured\n\n" + __doc__.split("\n\n", 1)[1].split(
        "Writes")[0].replace("PREVIOUS", PREVIOUS)
    for sec in sections:
        text += f"\n## {sec.title}\n\n" + "\n\n".join(sec.tables) + "\n\n" + \
            "\n".join(f"- {n}" for n in sec.notes) + "\n"
    text += f"\nMeasured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on " \
            f"{os.cpu_count()} CPUs with `python3 bench/loop_bench.py --only {args.only}`.\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
