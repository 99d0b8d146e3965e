"""Shared pieces of the benchmark: processes, fazt's command line, wrk, statistics, tables."""

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PASSWORD = "correct horse battery"
USERNAME = "owner"
SITE_HOST = "bench.localhost"
ADMIN_HOST = "admin.localhost"
MB = 1024 * 1024


JS_SOURCE = """\
// The benchmark's back end: a trivial answer, a busy loop, an allocation.
var BODY = "x".repeat(4096);
function handler(request) {
  if (request.path === "/api/spin") {
    var end = Date.now() + Number(request.query.ms || 50), n = 0;
    while (Date.now() < end) { n++; }
    return { status: 200, body: "spun " + n };
  }
  if (request.path === "/api/alloc") {
    var parts = [];
    for (var i = 0; i < Number(request.query.mb || 1) * 16; i++) {
      parts.push(String.fromCharCode(97 + (i % 26)).repeat(65536));
    }
    return { status: 200, body: "allocated " + parts.length * 64 + " KiB" };
  }
  return { status: 200, headers: { "Content-Type": "application/octet-stream" }, body: BODY };
}
"""


@dataclass
class Section:
    title: str
    tables: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    chart: dict = field(default_factory=dict)
    failed: bool = False
    run: str = ""  # when and by which command it was measured

    def markdown(self) -> str:
        parts = [f"## {self.title}"] + ([f"_Measured {self.run}._"] if self.run else [])
        parts += self.tables + [f"- {n}" for n in self.notes]
        return "\n\n".join(parts)



class Skip(Exception):
    """A row or a section that cannot run here (a missing tool); the note says why."""


# -- processes -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fazt_env() -> dict:
    """The environment for fazt's processes: the repository's src/ (or $FAZT_SRC) first."""
    env = dict(os.environ)
    src = os.environ.get("FAZT_SRC") or os.path.join(REPO, "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def fazt(*args: str, db: str, preexec=None, timeout: float = 900) -> str:
    """Run a `fazt` command to completion; its output, or RuntimeError with its stderr."""
    cmd = [sys.executable, "-m", "fazt", *args, "--db", db]
    done = subprocess.run(cmd, env=fazt_env(), capture_output=True, text=True,
                          timeout=timeout, preexec_fn=preexec)
    if done.returncode != 0:
        raise RuntimeError(f"`fazt {' '.join(args)}` failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def lift_address_limits(db: str) -> None:
    """One client address makes every request of a benchmark: the per-address limits
    (connections, requests/s) are for crowds of addresses, so they are lifted here."""
    for key, value in (("address_connections", "100000"), ("address_requests_per_s", "1000000")):
        fazt("config", "set", key, value, "--break-glass", db=db)


def start(cmd: list[str], log_path: str, env: dict | None = None,
          preexec=None) -> subprocess.Popen:
    """A background process whose stdout and stderr go to `log_path`."""
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=preexec, start_new_session=True)
    finally:
        log.close()


def stop(proc: subprocess.Popen | None, grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; never raises."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    except OSError:
        pass


def start_fazt(db: str, port: int, log_path: str, preexec=None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fazt", "server", "start", "--db", db,
           "--host", "127.0.0.1", "--port", str(port)]
    proc = start(cmd, log_path, env=fazt_env(), preexec=preexec)
    wait_ready(f"http://127.0.0.1:{port}/_fazt/health", SITE_HOST, proc, log_path)
    return proc


def wait_ready(url: str, host: str, proc: subprocess.Popen, log_path: str,
               timeout: float = 120) -> None:
    """Until `url` answers at all; RuntimeError (with the log's tail) if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{' '.join(proc.args[:4])}... exited with {proc.returncode}:\n"
                               + tail(log_path))
        try:
            requests.get(url, headers={"Host": host}, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.2)
    stop(proc)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s:\n" + tail(log_path))


def tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return ""


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise Skip(f"`{tool}` is not installed")
    return path


# -- the cockpit -----------------------------------------------------------------


def login(port: int, timeout: float = 30) -> tuple[int, float, str | None]:
    """One sign-in on a fresh connection: (status, seconds, session cookie or None)."""
    began = time.perf_counter()
    r = requests.post(f"http://127.0.0.1:{port}/api/login",
                      json={"username": USERNAME, "password": PASSWORD},
                      headers={"Host": ADMIN_HOST, "X-Fazt-Request": "1"}, timeout=timeout)
    took = time.perf_counter() - began
    return r.status_code, took, r.cookies.get("fazt_session")


def status(port: int, cookie: str, timeout: float = 10) -> dict:
    r = requests.get(f"http://127.0.0.1:{port}/api/system/status",
                     headers={"Host": ADMIN_HOST, "Cookie": f"fazt_session={cookie}"},
                     timeout=timeout)
    r.raise_for_status()
    return r.json()


# -- wrk -----------------------------------------------------------------------

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, host: str, threads: int, connections: int, seconds: float,
        extra: list[str] = ()) -> dict:
    """One wrk run: requests/s, bytes/s, latency p50/p99 (s), errors and non-2xx/3xx answers.
    `extra`: more wrk arguments (headers, a script)."""
    cmd = [need("wrk"), "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s",
           "--latency", "--timeout", "10s", "-H", f"Host: {host}", *extra, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    return parse_wrk(out, url)


def parse_wrk(out: str, what: str) -> dict:
    """wrk's --latency output as numbers (see `wrk`; `max` is the longest latency)."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"wrk printed no result for {what}:\n{out}")
    pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)", out, re.M))
    most = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(B|KB|MB|GB)", out)
    return {
        "rps": float(rps.group(1)),
        "transfer": float(transfer.group(1)) * 1024 ** "B KB MB GB".split().index(
            transfer.group(2)) if transfer else float("nan"),
        "p50": _seconds(pct["50"]),
        "p99": _seconds(pct["99"]),
        "max": _seconds(most.group(1)) if most else float("nan"),
        "requests": int(total.group(1)) if total else 0,
        "errors": sum(int(x) for x in errors.groups()) if errors else 0,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
    }


# -- numbers and tables ------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ms(seconds: float) -> str:
    return "–" if seconds != seconds else f"{seconds * 1000:.1f}"


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_file(path: str, size: int) -> str:
    """A file of `size` random bytes (random, so that nothing compresses or deduplicates)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        left = size
        while left:
            piece = os.urandom(min(left, 4 * MB))
            f.write(piece)
            left -= len(piece)
    return path
