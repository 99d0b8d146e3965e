"""Where a cockpit status read's time goes, idle and under section 4's full load.

Section 4 times `GET /api/system/status` with `requests`, whose own CPU is most of an
idle read. This reads it with a plain socket (a fresh connection each, as the
dashboard's poll may) and splits each read by the client's clock and the server's
request log (which times a request from the start of its parsing to its answer):

    connect         connect() on loopback
    before parsing  from connected to the server starting to parse: the event loop
                    accepting and reading it (its turn, the CPU, Python's lock)
    server          parsing to answer (the log line's time; 0.1 ms steps)
    to the client   the answer's first byte reaching the client, and the close

    python3 bench/status_split.py [--reads N]
"""

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time

import common as c

import bench as b

_MILLIS = re.compile(r'"GET /api/system/status" 200 ([\d.]+)ms$')


def read_once(port: int, request: bytes) -> tuple[float, float, float, float]:
    """(connect, connected to first byte, first byte to close, total), in seconds."""
    began = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        connected = time.perf_counter()
        sock.sendall(request)
        data = sock.recv(65536)
        first = time.perf_counter()
        while chunk := sock.recv(65536):
            data += chunk
        ended = time.perf_counter()
    if not data.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"status read answered {data[:60]!r}")
    return connected - began, first - connected, ended - first, ended - began


def server_times(log: str) -> list[float]:
    """The server's time for each status read logged so far, in seconds."""
    out = []
    with open(log, errors="replace") as f:
        for line in f:
            m = _MILLIS.search(line.rstrip())
            if m:
                out.append(float(m.group(1)) / 1000)
    return out


def phase(port: int, request: bytes, log: str, reads: int) -> list[tuple]:
    """`reads` status reads, each split with the server's time for it."""
    before = len(server_times(log))
    client = []
    for _ in range(reads):
        client.append(read_once(port, request))
        time.sleep(0.01)
    deadline = time.monotonic() + 10  # the request log is written in batches
    while len(server := server_times(log)[before:]) < reads and time.monotonic() < deadline:
        time.sleep(0.1)
    if len(server) != reads:
        raise RuntimeError(f"{reads} reads, {len(server)} log lines")
    return [(conn, to_first - srv, srv, after, total)
            for (conn, to_first, after, total), srv in zip(client, server, strict=True)]


def start(tmp: str) -> tuple[subprocess.Popen, int, str]:
    """fazt with section 4's site: (process, port, log path)."""
    _, db = b.bench_site(tmp, 64)
    port, log = c.free_port(), os.path.join(tmp, "fazt.log")
    return c.start_fazt(db, port, log), port, log


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reads", type=int, default=600)
    args = p.parse_args(argv)
    wrk = c.need("wrk")
    proc = flood = load = None
    try:
        proc, port, log = start(tempfile.mkdtemp(prefix="fazt-split-"))
        code, _, cookie = c.login(port)
        if code != 200:
            raise RuntimeError(f"sign-in answered {code}")
        request = (f"GET /api/system/status HTTP/1.1\r\nHost: {c.ADMIN_HOST}\r\n"
                   f"Cookie: fazt_session={cookie}\r\nConnection: close\r\n\r\n").encode()
        phase(port, request, log, 30)  # warm
        rows = {"idle": phase(port, request, log, args.reads)}
        flood = subprocess.Popen(
            [wrk, "-t", "2", "-c", "64", "-d", "600s", "-H", f"Host: {c.SITE_HOST}",
             f"http://127.0.0.1:{port}/file.bin"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        load = b.UserLoad(port, b.COCKPIT_JS_CLIENTS, 8)
        time.sleep(1)
        rows["full load (section 4)"] = phase(port, request, log, args.reads)
    finally:
        c.stop(flood)
        if load is not None:
            load.stop()
        c.stop(proc)
    parts = ["connect", "before parsing", "server", "to the client", "total"]
    table = []
    for name, split in rows.items():
        cells = [name, str(len(split))]
        for i in range(len(parts)):
            values = [r[i] * 1e3 for r in split]
            cells.append(f"{c.percentile(values, 50):.2f} / {c.percentile(values, 99):.2f}")
        table.append(cells)
    print(c.table(["phase", "reads", *(f"{x} p50 / p99 ms" for x in parts)], table))
    idle, full = (c.percentile([r[-1] for r in split], 99) for split in rows.values())
    print(f"\ntotal p99, full load ÷ idle: {full / idle:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
