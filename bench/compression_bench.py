"""7. Compression: a typical site served with and without it, beside WhiteNoise; deploy time.

The site is fazt's own dashboard and simulator (HTML, CSS, JavaScript: real
files, always in the repository) with a 300 KiB bundle of source text. fazt
compresses them at deploy; WhiteNoise serves the same files with the `.gz` and
`.br` copies its `compress` command makes (the way it is meant to run). Both
are asked three ways: no Accept-Encoding, gzip only, and a browser's `gzip,
deflate, br`.

Bytes: what one visit to every file costs on the wire (the bodies). req/s:
wrk cycling through every file of the site, with that Accept-Encoding.
Deploy: `fazt deploy` of the site into a fresh database with compression,
the same with compression turned off (the deploy as it was before), and a
redeploy of the unchanged site (its variants are kept, not made again);
WhiteNoise's `compress` of the same files for reference.

    python bench/compression_bench.py [--smoke]      # or through bench/run.sh
"""

import argparse
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time

import common as c
import peers

ACCEPTS = (("none", None), ("gzip", "gzip"), ("browser", "gzip, deflate, br"))
SITE_FILES = {  # served path -> file in the repository
    "index.html": "src/fazt/cockpit/assets/index.html",
    "style.css": "src/fazt/cockpit/assets/style.css",
    "app.js": "src/fazt/cockpit/assets/app.js",
    "api.js": "src/fazt/cockpit/assets/api.js",
    "chart.js": "src/fazt/cockpit/assets/chart.js",
    "simulator/index.html": "src/fazt/web_simulator/index.html",
    "simulator/simulator.css": "src/fazt/web_simulator/simulator.css",
    "simulator/simulator.js": "src/fazt/web_simulator/simulator.js",
    "simulator/capacity.js": "src/fazt/web_simulator/capacity.js",
}
WRK_SCRIPT = """\
paths = {%s}
i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
"""
NO_COMPRESSION = """\
import sys
import fazt.compression
fazt.compression.compressible = lambda mime: False  # the deploy as it was before variants
from fazt.cli import main
sys.exit(main(sys.argv[1:]))
"""


MARK = {".html": "<!-- {} -->\n", ".css": "/* {} */\n", ".js": "// {}\n"}


VENDOR = "vendor.js"  # stands in for a library bundle: source text of about that size
VENDOR_BYTES = 300 * 1024


def make_site(root: str) -> list[str]:
    """The files, each with a line of its own at the end (fazt stores its own dashboard
    at init, and the very same bytes would be found there, already compressed), and a
    vendor bundle made of fazt's Python sources."""
    for path, source in SITE_FILES.items():
        target = os.path.join(root, path)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(c.REPO, source), target)
        with open(target, "a") as f:
            f.write(MARK[os.path.splitext(path)[1]].format("a copy for the benchmark"))
    text = b""
    for folder, _, names in sorted(os.walk(os.path.join(c.REPO, "src", "fazt"))):
        for name in sorted(n for n in names if n.endswith(".py")):
            with open(os.path.join(folder, name), "rb") as f:
                text += f.read()
    with open(os.path.join(root, VENDOR), "wb") as f:
        f.write(text[:VENDOR_BYTES])
    return [*SITE_FILES, VENDOR]


COMPRESS_ONLY = """\
import sys, time
from fazt.compression import precompressed
from fazt.deploy import files_from_directory
from fazt.store import open_database
db, files = open_database(sys.argv[1]), files_from_directory(sys.argv[2]).files
began = time.perf_counter()
with precompressed(db, files) as out:
    for f in out:
        for pieces in [f.pieces, *(p for _, p in f.variants or ())]:
            for _ in pieces:
                pass
print(time.perf_counter() - began)
"""


def compress_only(site: str, db: str) -> float:
    """The deploy's compression step alone, in-process: what it adds to a deploy."""
    done = subprocess.run([sys.executable, "-c", COMPRESS_ONLY, db, site], env=c.fazt_env(),
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"timing the compression failed: {done.stderr.strip()[-1000:]}")
    return float(done.stdout)


def timed(cmd: list[str]) -> float:
    began = time.perf_counter()
    done = subprocess.run(cmd, env=c.fazt_env(), capture_output=True, text=True, timeout=600)
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd[:5])}...` failed: {done.stderr.strip()[-1000:]}")
    return took


def new_db(path: str) -> str:
    c.fazt("server", "init", "--domain", "example.test", "--username", c.USERNAME,
           "--password", c.PASSWORD, db=path)
    return path


def deploy_cmd(site: str, db: str, compress: bool = True) -> list[str]:
    head = [sys.executable, "-m", "fazt"] if compress else [sys.executable, "-c", NO_COMPRESSION]
    return head + ["deploy", site, "--site", "bench", "--db", db]


def deploy_times(tmp: str, site: str, rounds: int) -> list[list]:
    runs: dict[str, list[float]] = {"without compression": [], "with compression": [],
                                    "redeploy, unchanged": [], "compression step alone": [],
                                    "WhiteNoise compress": []}
    for n in range(rounds):  # alternated, each into a database of its own
        runs["without compression"].append(
            timed(deploy_cmd(site, new_db(os.path.join(tmp, f"plain{n}.db")), compress=False)))
        db = new_db(os.path.join(tmp, f"packed{n}.db"))
        runs["with compression"].append(timed(deploy_cmd(site, db)))
        runs["redeploy, unchanged"].append(timed(deploy_cmd(site, db)))
        runs["compression step alone"].append(
            compress_only(site, new_db(os.path.join(tmp, f"step{n}.db"))))
        copy = shutil.copytree(site, os.path.join(tmp, f"wn{n}"))
        runs["WhiteNoise compress"].append(
            timed([sys.executable, "-m", "whitenoise.compress", "-q", copy]))
    base = c.median(runs["without compression"])
    return [[name, f"{c.median(t):.2f}", f"{c.median(t) / base:.2f}"]
            for name, t in runs.items()]


def body_bytes(port: int, host: str, paths: list[str], accept: str | None) -> int:
    """The bytes of every file's body as sent (read raw: nothing decodes them)."""
    total = 0
    for path in paths:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request("GET", f"/{path}", headers={"Host": host, **(
                {"Accept-Encoding": accept} if accept else {})})
            r = conn.getresponse()
            if r.status != 200:
                raise RuntimeError(f"GET /{path} on {host}:{port} gave {r.status}")
            total += len(r.read())
        finally:
            conn.close()
    return total


def section_compression(tmp: str, plan) -> c.Section:
    sec = c.Section("7. Compression")
    c.need("wrk")
    work = os.path.join(tmp, "compression")
    site = os.path.join(work, "site")
    paths = make_site(site)
    size = sum(os.path.getsize(os.path.join(site, p)) for p in paths)
    rounds = 1 if plan.smoke else 5
    deploys = deploy_times(work, site, rounds)

    db = new_db(os.path.join(work, "serve.db"))
    c.fazt("deploy", site, "--site", "bench", db=db)
    wn_root = shutil.copytree(site, os.path.join(work, "whitenoise"))
    subprocess.run([sys.executable, "-m", "whitenoise.compress", "-q", wn_root], check=True)
    threads = int(c.fazt("config", "get", "user_threads", db=db))
    port, wn_port = c.free_port(), c.free_port()
    servers = {}
    try:
        servers["fazt"] = (port, c.SITE_HOST, c.start_fazt(db, port, os.path.join(work, "f.log")))
        try:
            servers["WhiteNoise"] = (wn_port, "localhost", peers.start_python_peer(
                "whitenoise", wn_root, wn_port, threads, os.path.join(work, "wn.log")))
        except c.Skip as exc:
            sec.notes.append(f"WhiteNoise skipped: {exc}.")
        script = os.path.join(work, "site.lua")
        with open(script, "w") as f:
            f.write(WRK_SCRIPT % ", ".join(f'"/{p}"' for p in paths))
        results: dict[tuple[str, str], list[dict]] = {}
        for _ in range(plan.rounds):
            for name, (p, host, _) in servers.items():
                for label, accept in ACCEPTS:
                    extra = ["-H", f"Accept-Encoding: {accept}"] if accept else []
                    results.setdefault((name, label), []).append(c.wrk(
                        f"http://127.0.0.1:{p}/", host, plan.wrk_threads, plan.connections,
                        plan.seconds, extra=extra + ["-s", script]))
        rows = []
        rps = {key: c.median([r["rps"] for r in runs]) for key, runs in results.items()}
        for name, (p, host, _) in servers.items():
            identity = body_bytes(p, host, paths, None)
            for label, accept in ACCEPTS:
                sent = body_bytes(p, host, paths, accept)
                runs = results[(name, label)]
                peer = rps.get(("WhiteNoise", label))
                rows.append([name, label, f"{sent:,}", f"{sent / identity:.2f}",
                             f"{rps[(name, label)]:,.0f}",
                             f"{rps[(name, label)] / peer:.2f}" if peer else "–",
                             f"{c.median([r['transfer'] for r in runs]) / c.MB:.1f}",
                             sum(r["non2xx"] + r["errors"] for r in runs)])
                sec.chart[f"{name} {label}"] = rps[(name, label)]
    finally:
        for _, _, proc in servers.values():
            c.stop(proc)
    sec.tables.append(c.table(["server", "Accept-Encoding", "body bytes, whole site",
                               "× uncompressed", "req/s (median)", "× WhiteNoise's req/s",
                               "MB/s on the wire",
                               "non-2xx + socket errors"], rows))
    sec.tables.append(c.table(["deploy of the site", "seconds (median)", "× without"],
                              deploys))
    sec.notes.append(f"The site: {len(paths)} files, {size:,} bytes: fazt's dashboard and "
                     f"simulator (HTML, CSS, JS), and `{VENDOR}` ({VENDOR_BYTES // 1024} KiB "
                     "of fazt's Python sources standing in for a library bundle). 'browser' "
                     "asks `gzip, deflate, br`; both servers then send Brotli.")
    sec.notes.append(f"wrk -t{plan.wrk_threads} -c{plan.connections} -d{plan.seconds:g}s "
                     f"cycling through every file, {plan.rounds} round(s) alternated; "
                     "WhiteNoise on Waitress with fazt's `user_threads`.")
    sec.notes.append(f"Deploys: `fazt deploy` in a process of its own (Python's start-up "
                     f"included), each into a new database, {rounds} round(s) alternated; "
                     "'without' turns compression off in that process; 'compression step "
                     "alone' times just that step inside a process (this site's files are "
                     "small: Brotli at quality 11, gzip at 9).")
    return sec


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()

    class Plan:
        smoke = args.smoke
        rounds = 1 if args.smoke else 3
        seconds = 2 if args.smoke else 10
        wrk_threads = 2
        connections = 8 if args.smoke else 32

    tmp = tempfile.mkdtemp(prefix="fazt-compression-")
    try:
        print(section_compression(tmp, Plan).markdown())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
