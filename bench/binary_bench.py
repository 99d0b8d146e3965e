"""The single-file binary against `python -m fazt`: size, and start-up time to the first answer.

Start-up time is measured from spawning `server start` to the first answered
`GET /_fazt/health`, the two variants alternating so that both see the same
machine state; the table shows the median (and min/max) of several runs, and
the resident memory of the process tree once it answers.

    python bench/binary_bench.py [--runs 7]

Builds dist/fazt with build/binary.sh when it is missing. Uses the installed
`fazt` package for `python -m fazt` when there is one, else this checkout's src/.
"""

import argparse
import importlib.util
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
BINARY = ROOT / "dist" / "fazt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def python_env() -> tuple[dict, str]:
    env = dict(os.environ)
    if importlib.util.find_spec("fazt") is not None:
        return env, "installed package"
    env["PYTHONPATH"] = str(ROOT / "src")
    return env, "checkout (PYTHONPATH=src)"


def tree_rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    procs = [proc, *proc.children(recursive=True)]
    return sum(p.memory_info().rss for p in procs) / 2**20


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def start_once(command: list[str], env: dict, db: Path) -> tuple[float, float]:
    """Seconds until /_fazt/health answers, and the RSS (MB) of the process tree then."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/_fazt/health"
    began = time.perf_counter()
    proc = subprocess.Popen([*command, "server", "start", "--db", str(db), "--host",
                             "127.0.0.1", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{command[0]} exited with {proc.returncode} before answering")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    response.read()
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.005)
        elapsed = time.perf_counter() - began
        rss = tree_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return elapsed, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of each variant")
    args = parser.parse_args()

    if not BINARY.exists():
        subprocess.run([str(ROOT / "build" / "binary.sh")], check=True)

    work = Path(tempfile.mkdtemp(prefix="fazt-bench-"))
    unpack = work / "unpack"
    unpack.mkdir()
    db = work / "data.db"
    env, where = python_env()
    subprocess.run([sys.executable, "-m", "fazt", "server", "init", "--db", str(db),
                    "--domain", "localhost", "--username", "bench", "--password",
                    "bench-password", "--memory-mb", "512", "--cpus", "1"],
                   env=env, check=True, stdout=subprocess.DEVNULL)

    binary_env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(unpack)}
    variants = {
        "dist/fazt": ([str(BINARY)], binary_env),
        f"python -m fazt ({where})": ([sys.executable, "-m", "fazt"], env),
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    rss: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for run in range(args.runs):
        for name in order if run % 2 == 0 else reversed(order):
            elapsed, mb = start_once(*variants[name], db)
            times[name].append(elapsed)
            rss[name].append(mb)

    # The size of what the binary unpacks at each start, measured once while it runs.
    port = free_port()
    proc = subprocess.Popen([str(BINARY), "server", "start", "--db", str(db), "--host",
                             "127.0.0.1", "--port", str(port)], env=binary_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_fazt/health", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.01)
        unpacked = folder_mb(unpack)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)

    print(f"Binary size: {BINARY.stat().st_size / 2**20:.1f} MB "
          f"({BINARY.stat().st_size:,} bytes); unpacked at each start: {unpacked:.1f} MB "
          f"under $TMPDIR. {args.runs} runs each, alternating; Python {sys.version.split()[0]}.")
    print()
    print("| variant | start-up to first /_fazt/health, median | min | max | RSS once up |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name in variants:
        t = times[name]
        print(f"| {name} | {statistics.median(t) * 1000:.0f} ms | {min(t) * 1000:.0f} ms "
              f"| {max(t) * 1000:.0f} ms | {statistics.median(rss[name]):.1f} MB |")
    left = list(unpack.iterdir())
    if left:
        print(f"\nWarning: left in the extraction folder: {[p.name for p in left]}")


if __name__ == "__main__":
    main()
