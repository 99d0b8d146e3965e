"""Section 9: how cost grows with work.

- Sites: one database with 10,000 sites of 10 small files (100,000 files); wrk with a Lua
  script spreads requests over 1, 1,000 or 10,000 of them (a random file each time), on
  a warmed server for each, measured in alternation: requests/s and p99 should stay flat.
- Deploys: `fazt deploy` of a directory of 10 to 10,000 small files: seconds per file.
- Databases of about 0, 2 and 20 GB (the large ones from files of zeros with a random
  head, so nothing deduplicates, made once and kept in $FAZT_BENCH_CACHE): the time from
  `fazt server start` until the port accepts, and the server's RSS then and after a burst.

The databases are made in a child process through fazt's own deploy (the same code a
`fazt deploy` runs), so they are real databases of real sites.
"""

import math
import os
import random
import shutil
import socket
import subprocess
import sys
import time

import common as c
import psutil

CACHE = os.environ.get("FAZT_BENCH_CACHE", "/var/tmp/fazt-bench")
FILES_PER_SITE = 10
SMALL_FILE = 1024
BULK_FILE_MB = 64

WALK = """
local FILES = tonumber(os.getenv("FAZT_FILES"))
local sites = tonumber(os.getenv("FAZT_SITES"))
local i = tonumber(os.getenv("FAZT_FROM"))
request = function()
  local n = i % (sites * FILES)
  i = i + 1
  return wrk.format("GET", "/f" .. (n % FILES) .. ".bin",
                    {["Host"] = "s" .. math.floor(n / FILES) .. ".localhost"})
end
"""
LUA = """
local FILES = tonumber(os.getenv("FAZT_FILES"))
local sites = tonumber(os.getenv("FAZT_SITES"))
math.randomseed(os.time())
request = function()
  local site = math.random(0, sites - 1)
  local file = math.random(0, FILES - 1)
  return wrk.format("GET", "/f" .. file .. ".bin", {["Host"] = "s" .. site .. ".localhost"})
end
"""


def plan_sizes(smoke: bool) -> dict:
    if smoke:
        return {"sites": [1, 10, 100], "deploys": [10, 100], "db_gb": [0, 0.06],
                "seconds": 2, "rounds": 1}
    return {"sites": [1, 1000, 10000], "deploys": [10, 100, 1000, 10000], "db_gb": [0, 2, 20],
            "seconds": 6, "rounds": 5}


# -- making databases (in a child process, with fazt's src on the path) ----------------------


def make_sites(db: str, count: int) -> None:
    from fazt.deploy import Source
    from fazt.instance import deploy_site
    from fazt.store import open_database
    from fazt.store.sites import NewFile

    database = open_database(db)
    rng = random.Random(count)
    for i in range(count):
        files = [NewFile(f"f{j}.bin", "application/octet-stream",
                         [rng.randbytes(SMALL_FILE)]) for j in range(FILES_PER_SITE)]
        deploy_site(database, f"s{i}", Source(files))
    database.close()


def make_bulk(db: str, gigabytes: float) -> None:
    """Sites of BULK_FILE_MB files of zeros, each with a random head (so each is its own
    blob), until the database holds `gigabytes`."""
    from fazt.deploy import Source
    from fazt.instance import deploy_site
    from fazt.store import open_database
    from fazt.store.sites import NewFile

    database = open_database(db)
    zeros = bytes(c.MB)

    def content():
        yield os.urandom(64)
        for _ in range(BULK_FILE_MB):
            yield zeros

    site = 0
    while (left := gigabytes * 2**30 * 0.98 - os.path.getsize(db)) > 0:
        count = min(32, int(left // (BULK_FILE_MB * c.MB)) + 1)  # at most 2 GiB a deploy
        files = [NewFile(f"bulk/{k}.bin", "application/octet-stream", content())
                 for k in range(count)]
        deploy_site(database, f"bulk{site}", Source(files))
        site += 1
        database.close()  # lets the last connection checkpoint the WAL into the file
        database = open_database(db)
    database.close()


def _child(what: str, db: str, amount: str) -> None:
    subprocess.run([sys.executable, os.path.abspath(__file__), what, db, amount],
                   env=c.fazt_env(), check=True, timeout=7200)


def cached_db(name: str, build) -> str:
    """A database kept in CACHE (made now by `build(path)` if missing)."""
    os.makedirs(CACHE, exist_ok=True)
    path = os.path.join(CACHE, name + ".db")
    if os.path.exists(path):
        return path
    building = os.path.join(CACHE, f"building-{os.getpid()}.db")
    began = time.time()
    print(f"Generating {name} in {CACHE} ...", flush=True)
    try:
        c.fazt("server", "init", "--domain", "localhost", "--username", c.USERNAME,
               "--password", c.PASSWORD, db=building)
        build(building)
        os.replace(building, path)
    finally:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(building + suffix):
                os.unlink(building + suffix)
    print(f"... {os.path.getsize(path) / 2**30:.2f} GiB in {time.time() - began:.0f} s",
          flush=True)
    return path


# -- measuring ------------------------------------------------------------------------------


def boot(db: str, log: str) -> tuple[subprocess.Popen, int, float]:
    """Start fazt on `db`: (process, port, seconds until the port accepted a connection)."""
    port = c.free_port()
    began = time.monotonic()
    proc = c.start([sys.executable, "-m", "fazt", "server", "start", "--db", db, "--host",
                    "127.0.0.1", "--port", str(port)], log, env=c.fazt_env())
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"fazt exited with {proc.returncode}:\n" + c.tail(log))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port, time.monotonic() - began
        except OSError:
            if time.monotonic() - began > 300:
                c.stop(proc)
                raise RuntimeError("fazt did not open its port in 300 s:\n"
                                   + c.tail(log)) from None
            time.sleep(0.005)


def rss_mb(proc: subprocess.Popen) -> float:
    return psutil.Process(proc.pid).memory_info().rss / c.MB


def wrk_sites(port: int, sites: int, seconds: float, script: str, threads: int = 2,
              connections: int = 32, start: int = 0) -> dict:
    os.environ["FAZT_SITES"] = str(sites)  # wrk inherits these; the Lua scripts read them
    os.environ["FAZT_FILES"] = str(FILES_PER_SITE)
    os.environ["FAZT_FROM"] = str(start)
    out = subprocess.run([c.need("wrk"), "-t", str(threads), "-c", str(connections),
                          "-d", f"{seconds:g}s",
                          "--latency", "--timeout", "10s", "-s", script,
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    return c.parse_wrk(out, "scale")


def walk_once(port: int, sites: int, walk: str, start: int = 0) -> dict:
    """Ask for every file of the first `sites` sites in turn, from the `start`th on (wrk's
    view of it, with `max` latency and the `requests` made)."""
    wanted, done, runs = sites * FILES_PER_SITE, start, []
    while done < wanted:  # by count, not by time: on a busy machine a timed walk falls short
        runs.append(wrk_sites(port, sites, max(1, math.ceil((wanted - done) / 2500)), walk, 1, 16,
                              start=max(0, done - 16)))  # the last few may not have come
        done += runs[-1]["requests"]
    return {"p99": max(r["p99"] for r in runs), "max": max(r["max"] for r in runs),
            "requests": done - start}


def warm(port: int, sites: int, walk: str) -> None:
    """Each file of the first `sites` sites asked for until the second time (a thread finds
    it and caches it; the event loop renders its answer when it is asked for again): else
    the measure is of first requests, and of the garbage collections the caches' growth
    brings."""
    walk_once(port, sites, walk)


def section_scale(tmp: str, plan) -> c.Section:
    sec = c.Section("9. How cost grows with work")
    c.need("wrk")
    sizes = plan_sizes(plan.smoke)
    script, walk = os.path.join(tmp, "sites.lua"), os.path.join(tmp, "walk.lua")
    for path, text in ((script, LUA), (walk, WALK)):
        with open(path, "w") as f:
            f.write(text)
    most = max(sizes["sites"])

    # Sites: one database, requests spread over more and more of them. A server (on its
    # own copy) for each N, all running at once, so that the measures alternate, round
    # after round, and a burst of others' load on this shared machine falls on each alike.
    db = cached_db(f"sites-{most}x{FILES_PER_SITE}", lambda p: _child("make-sites", p, str(most)))
    servers, first, warmed, rss = {}, {}, {}, {}
    runs: dict[int, list[dict]] = {count: [] for count in sizes["sites"]}
    try:
        for count in sizes["sites"]:
            work = os.path.join(tmp, f"sites-{count}.db")
            shutil.copyfile(db, work)
            c.lift_address_limits(work)
            servers[count] = boot(work, os.path.join(tmp, f"scale-sites-{count}.log"))[:2]
            began = time.monotonic()
            first[count] = walk_once(servers[count][1], count, walk)
            warm(servers[count][1], count, walk)
            warmed[count] = time.monotonic() - began
        for _ in range(sizes["rounds"]):
            for count, (_, port) in servers.items():
                runs[count].append(wrk_sites(port, count, sizes["seconds"], script))
        for count, (proc, _) in servers.items():
            rss[count] = rss_mb(proc)
    finally:
        for proc, _ in servers.values():
            c.stop(proc)
    rows, chart = [], {}
    for count, rs in runs.items():
        rps, p99 = c.median([r["rps"] for r in rs]), c.median([r["p99"] for r in rs])
        rows.append([f"{count:,}", f"{rps:,.0f}", c.ms(c.median([r["p50"] for r in rs])),
                     c.ms(p99), " / ".join(f"{r['rps']:,.0f}" for r in rs),
                     " / ".join(c.ms(r["p99"]) for r in rs),
                     sum(r["non2xx"] + r["errors"] for r in rs),
                     f"{c.ms(first[count]['p99'])} / {c.ms(first[count]['max'])}",
                     f"{warmed[count]:.0f}", f"{rss[count]:.0f}"])
        chart[count] = (rps, p99)
    sec.chart["sites"] = chart
    sec.tables.append(c.table(["sites in use", "req/s (median)", "p50 ms", "p99 ms (median)",
                               "req/s each round", "p99 ms each round", "non-2xx + errors",
                               "first requests p99 / max ms", "warm-up s", "RSS MB"], rows))
    sec.notes.append("Per-address limits lifted (one client address makes every request). "
                     f"One database of {most:,} sites × {FILES_PER_SITE} files of "
                     f"{SMALL_FILE} B ({most * FILES_PER_SITE:,} files), a copy and a server "
                     "for each N, all running at once. Each server is first warmed up: every "
                     "file of its N sites asked for twice in turn (a thread finds a file and "
                     "caches it; the event loop then renders its answer; 'first requests' is "
                     "wrk's view of the first pass, -t1 -c16, where the caches grow: a long "
                     "garbage collection shows in its max). Then "
                     f"{sizes['rounds']} rounds of wrk -t2 -c32 -d{sizes['seconds']}s on each "
                     "server in turn, each request a random file of a random site among the "
                     "first N (a Lua script): medians, and each round's figures.")

    # Deploys: seconds for a directory of n small files.
    rows, chart = [], {}
    db = os.path.join(tmp, "deploys.db")
    c.fazt("server", "init", "--domain", "localhost", "--username", c.USERNAME,
           "--password", c.PASSWORD, db=db)
    for n in sizes["deploys"]:
        folder = os.path.join(tmp, f"deploy-{n}")
        for j in range(n):
            path = os.path.join(folder, f"d{j % 50}", f"f{j}.bin")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(os.urandom(SMALL_FILE))
        began = time.monotonic()
        c.fazt("deploy", folder, "--site", f"d{n}", db=db)
        took = time.monotonic() - began
        shutil.rmtree(folder)
        rows.append([f"{n:,}", f"{took:.2f}", f"{took / n * 1000:.2f}"])
        chart[n] = took
    sec.chart["deploys"] = chart
    sec.tables.append(c.table(["files", "`fazt deploy` s", "ms a file"], rows))
    sec.notes.append(f"`fazt deploy DIR --site NAME --db` of n random {SMALL_FILE} B files "
                     "in 50 folders, wall time of the command (Python's start included).")

    # Database size: boot time and RSS.
    rows, chart = [], {}
    for gb in sizes["db_gb"]:
        if gb:
            path = cached_db(f"bulk-{gb:g}gb", lambda p, gb=gb: _child("make-bulk", p, str(gb)))
        else:
            path = os.path.join(tmp, "empty.db")
            c.fazt("server", "init", "--domain", "localhost", "--username", c.USERNAME,
                   "--password", c.PASSWORD, db=path)
        c.lift_address_limits(path)
        size = os.path.getsize(path) / 2**30
        boots = []
        for _ in range(1 if plan.smoke else 3):
            proc, port, took = boot(path, os.path.join(tmp, f"scale-db-{gb:g}.log"))
            try:
                time.sleep(1)
                idle = rss_mb(proc)
                r = c.wrk(f"http://127.0.0.1:{port}/_fazt/health", "admin.localhost", 1, 4, 2)
                busy = rss_mb(proc)
            finally:
                c.stop(proc)
            boots.append((took, idle, busy, r["rps"]))
        took = c.median([b[0] for b in boots])
        idle = c.median([b[1] for b in boots])
        busy = c.median([b[2] for b in boots])
        rows.append([f"{size:.2f}", f"{took * 1000:.0f}", f"{idle:.0f}", f"{busy:.0f}"])
        chart[round(size, 2)] = (took, idle, busy)
    sec.chart["db"] = chart
    sec.tables.append(c.table(["database GiB", "boot until the port opens ms (median)",
                               "RSS idle MB", "RSS after 2 s of requests MB"], rows))
    sec.notes.append("Boot: from spawning `fazt server start` until a TCP connect succeeds "
                     "(polled every 5 ms), median of 3. The large databases are sites of "
                     f"{BULK_FILE_MB} MiB files of zeros with a random head (one blob each), "
                     f"made once through fazt's deploy and kept in {CACHE}.")

    # Files: a database of many small files against an empty one. Boot and a deploy's
    # collection must not scan every blob (they did: 0.07 to 0.67 s at 100,000 blobs).
    rows, chart = [], {}
    folder = os.path.join(tmp, "deploy-again")
    os.makedirs(folder)
    for j in range(FILES_PER_SITE):
        with open(os.path.join(folder, f"f{j}.bin"), "wb") as f:
            f.write(os.urandom(SMALL_FILE))
    for label, path in (("empty", os.path.join(tmp, "empty.db")),
                        (f"{most * FILES_PER_SITE:,} files", os.path.join(tmp, "sites-1.db"))):
        c.fazt("config", "set", "keep_versions", "1", db=path)
        c.fazt("deploy", folder, "--site", "s0", db=path)  # s0 exists (or does now)
        deploys, boots = [], []
        for _ in range(1 if plan.smoke else 3):
            began = time.monotonic()
            c.fazt("deploy", folder, "--site", "s0", db=path)  # replaces s0, collects 10 blobs
            deploys.append(time.monotonic() - began)
            proc, _, took = boot(path, os.path.join(tmp, "scale-files.log"))
            c.stop(proc)
            boots.append(took)
        rows.append([label, f"{c.median(boots) * 1000:.0f}", f"{c.median(deploys):.2f}"])
        chart[label] = (c.median(boots), c.median(deploys))
    sec.chart["files"] = chart
    sec.tables.append(c.table(["database", "boot until the port opens ms (median)",
                               f"`fazt deploy` of {FILES_PER_SITE} files over site s0 "
                               "(median)"], rows))
    sec.notes.append(f"The {most:,}-site database of the first table against an empty one: "
                     "boot as above, and the wall time of `fazt deploy DIR --site s0 --db` "
                     f"of {FILES_PER_SITE} files with keep_versions 1, so that each deploy drops "
                     "the version before and collects its content (the same files each time: "
                     "deduplicated, so the 10 blobs are found in use again), median of 3.")
    return sec


def draw(axes, chart: dict) -> None:
    """Three panels: req/s and p99 against sites, deploy time against files, boot time and
    RSS against database size."""
    ax = axes[0]
    sites = chart.get("sites") or {}
    if sites:
        xs = [int(k) for k in sites]
        ax.plot(xs, [v[0] for v in sites.values()], "o-", label="req/s")
        ax.set_xscale("log")
        ax.set_ylim(bottom=0)
        ax2 = ax.twinx()
        ax2.plot(xs, [v[1] * 1000 for v in sites.values()], "s--", color="tab:red",
                 label="p99 ms")
        ax2.set_ylim(bottom=0)
        ax.legend(loc="lower left", fontsize=8)
        ax2.legend(loc="lower right", fontsize=8)
    ax.set_title("9a. Static req/s over N sites")
    ax = axes[1]
    deploys = chart.get("deploys") or {}
    if deploys:
        xs = [int(k) for k in deploys]
        ax.plot(xs, list(deploys.values()), "o-", color="tab:green")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_title("9b. `fazt deploy` seconds over files")
    ax = axes[2]
    dbs = chart.get("db") or {}
    if dbs:
        xs = [float(k) for k in dbs]
        ax.plot(xs, [v[0] * 1000 for v in dbs.values()], "o-", label="boot ms")
        ax.plot(xs, [v[1] for v in dbs.values()], "s-", label="RSS idle MB")
        ax.plot(xs, [v[2] for v in dbs.values()], "^-", label="RSS busy MB")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    ax.set_title("9c. Boot and RSS over database GiB")


if __name__ == "__main__":
    what, path, amount = sys.argv[1], sys.argv[2], sys.argv[3]
    if what == "make-sites":
        make_sites(path, int(amount))
    elif what == "make-bulk":
        make_bulk(path, float(amount))
