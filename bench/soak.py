"""Sections 5 and 6: fazt inside a 200 MB memory cgroup (v1), under a mixed load for minutes.

The soak runs fazt with the thresholds its own probe chose inside the cgroup;
the control runs the same fazt, same database, same load, with a naive
configuration set by `fazt config set ... --break-glass`. The database is
generated once with the real `fazt deploy` and cached in $FAZT_BENCH_CACHE
(default /var/tmp/fazt-bench); each run works on a copy.
"""

import io
import json
import math
import os
import random
import re
import shutil
import threading
import time
import zipfile

import common as c
import psutil
import requests

CGROUP_ROOT = "/sys/fs/cgroup/memory"
LIMIT_MB = 200
CACHE = os.environ.get("FAZT_BENCH_CACHE", "/var/tmp/fazt-bench")
JS_SITE = "js"
# The naive configuration: caches without a real cap, large files held whole,
# no effective JavaScript semaphore, generous JavaScript memory, many threads.
NAIVE = (("vfs_cache_mb", "100000"), ("large_file_mb", "1024"), ("max_concurrent_js", "256"),
         ("js_memory_mb", "1024"), ("user_threads", "32"))


# -- the cgroup ----------------------------------------------------------------------------


class Cgroup:
    """A child of the v1 memory hierarchy that this script creates and removes."""

    def __init__(self, name: str):
        self.path = os.path.join(CGROUP_ROOT, name)

    @classmethod
    def make(cls, name: str, limit_mb: int) -> "Cgroup":
        if not os.path.exists(os.path.join(CGROUP_ROOT, "memory.limit_in_bytes")):
            raise c.Skip(f"no cgroup v1 memory hierarchy at {CGROUP_ROOT}")
        group = cls(name)
        try:
            os.mkdir(group.path)
        except OSError as exc:
            raise c.Skip(f"cannot create {group.path}: {exc.strerror}") from None
        try:
            group.write("memory.limit_in_bytes", str(limit_mb * c.MB))
            # memory+swap only matters with swap; without it, setting it (on this kernel)
            # stops memory.failcnt from counting.
            if psutil.swap_memory().total and \
                    os.path.exists(os.path.join(group.path, "memory.memsw.limit_in_bytes")):
                group.write("memory.memsw.limit_in_bytes", str(limit_mb * c.MB))
            if int(group.read("memory.limit_in_bytes")) > limit_mb * c.MB:
                raise OSError(0, "the limit did not take")
        except OSError as exc:
            group.remove()
            raise c.Skip(f"cannot set a memory limit in {group.path}: {exc.strerror}") from None
        return group

    def write(self, name: str, value: str) -> None:
        with open(os.path.join(self.path, name), "w") as f:
            f.write(value)

    def read(self, name: str) -> str | None:
        try:
            with open(os.path.join(self.path, name)) as f:
                return f.read().strip()
        except OSError:
            return None

    def join(self) -> None:
        """For preexec_fn: the child process moves itself in before exec."""
        self.write("cgroup.procs", str(os.getpid()))

    def number(self, name: str) -> int | None:
        text = self.read(name)
        return int(text) if text and text.isdigit() else None

    def oom_kills(self) -> int | None:
        text = self.read("memory.oom_control") or ""
        m = re.search(r"^oom_kill (\d+)", text, re.M)
        return int(m.group(1)) if m else None

    def reset_counters(self) -> None:
        for name in ("memory.max_usage_in_bytes", "memory.failcnt"):
            try:
                self.write(name, "0")
            except OSError:
                pass

    def remove(self) -> None:
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.2)
        print(f"warning: could not remove {self.path} (tasks: {self.read('tasks')!r})")


# -- the database --------------------------------------------------------------------------


def profile(plan) -> dict:
    if plan.smoke:
        return {"sites": 4, "files": 100, "big": 1, "big_mb": 30}
    sites, files = 40, 1500  # about 12 MB a site: files of 1-16 KiB, ~8.5 KiB on average
    small_mb = sites * files * 8.5 / 1024
    big = max(1, math.ceil((plan.soak_db_gb * 1024 - small_mb) / 200))
    return {"sites": sites, "files": files, "big": big, "big_mb": 200}


def ensure_db(tmp: str, plan, group: Cgroup) -> tuple[str, dict]:
    """The cached soak database (made now if missing) and its manifest of files."""
    p = profile(plan)
    name = f"soak-{p['sites']}x{p['files']}-{p['big']}x{p['big_mb']}"
    db, manifest_path = os.path.join(CACHE, name + ".db"), os.path.join(CACHE, name + ".json")
    if os.path.exists(db) and os.path.exists(manifest_path):
        with open(manifest_path) as f:
            return db, json.load(f)
    os.makedirs(CACHE, exist_ok=True)
    building = os.path.join(CACHE, f"building-{os.getpid()}.db")
    began = time.time()
    print(f"Generating the soak database ({name}) in {CACHE} ...", flush=True)
    try:
        # The probe runs inside the cgroup: the thresholds are the ones it picks there.
        c.fazt("server", "init", "--domain", "example.test", "--username", c.USERNAME,
               "--password", c.PASSWORD, db=building, preexec=group.join)
        manifest = {"small": [], "big": []}
        rng = random.Random(1)
        for i in range(p["sites"]):
            site = f"s{i:02d}"
            folder = os.path.join(tmp, "gen", site)
            for j in range(p["files"]):
                path = f"d{j % 20}/f{j}.bin"
                full = os.path.join(folder, path)
                os.makedirs(os.path.dirname(full), exist_ok=True)
                with open(full, "wb") as f:
                    f.write(os.urandom(rng.randint(1024, 16 * 1024)))
                manifest["small"].append([site, path])
            c.fazt("deploy", folder, "--site", site, db=building)
            shutil.rmtree(folder)
        for i in range(p["big"]):
            site = f"big{i}"
            folder = os.path.join(tmp, "gen", site)
            c.write_file(os.path.join(folder, "large.bin"), p["big_mb"] * c.MB)
            c.fazt("deploy", folder, "--site", site, db=building)
            shutil.rmtree(folder)
            manifest["big"].append([site, "large.bin"])
        folder = os.path.join(tmp, "gen", JS_SITE)
        os.makedirs(os.path.join(folder, "api"))
        with open(os.path.join(folder, "api", "main.js"), "w") as f:
            f.write(c.JS_SOURCE)
        with open(os.path.join(folder, "index.html"), "w") as f:
            f.write("<!doctype html><p>js</p>\n")
        c.fazt("deploy", folder, "--site", JS_SITE, db=building)
        with open(manifest_path, "w") as f:
            json.dump(manifest, f)
        os.replace(building, db)
    finally:
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(building + suffix):
                os.unlink(building + suffix)
        shutil.rmtree(os.path.join(tmp, "gen"), ignore_errors=True)
    print(f"... {os.path.getsize(db) / 2**30:.2f} GiB in {time.time() - began:.0f} s", flush=True)
    return db, manifest


def fresh_copy(src: str, dst: str) -> None:
    """Copy the database and drop the copy from the page cache, so that the server's reads
    are charged to its cgroup instead of being found already cached by this process."""
    shutil.copyfile(src, dst)
    with open(dst, "rb+") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


# -- the load -------------------------------------------------------------------------------


class Load:
    """Mixed traffic from Python threads, each loop bounded in count and in time."""

    def __init__(self, port: int, pid: int, manifest: dict, token: str, seconds: float,
                 js_clients: int, group: Cgroup):
        self.port, self.manifest, self.token = port, manifest, token
        self.seconds, self.js_clients, self.group = seconds, js_clients, group
        self.proc = psutil.Process(pid)
        self.counts: dict[str, dict[str, int]] = {}
        self.login_times: list[float] = []
        self.timeline: list[tuple[float, float, float]] = []  # t, rss MB, cgroup usage MB
        self.status_rss: list[int] = []
        self.budget = None
        self.died_at = None
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.began = time.monotonic()

    def count(self, what: str, key: str) -> None:
        with self._lock:
            bucket = self.counts.setdefault(what, {})
            bucket[key] = bucket.get(key, 0) + 1

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def request(self, what: str, method: str, path: str, host: str, **kw):
        """One request, counted by status or by exception; the response or None."""
        try:
            r = requests.request(method, self.url(path), headers={"Host": host,
                                                                  **kw.pop("headers", {})},
                                 timeout=kw.pop("timeout", 30), **kw)
        except requests.RequestException as exc:
            self.count(what, type(exc).__name__)
            self.stop.wait(0.1)
            return None
        self.count(what, str(r.status_code))
        return r

    def loop(self, body, pause: float = 0.0, limit: int = 1_000_000) -> None:
        for _ in range(limit):
            if self.stop.is_set():
                return
            body()
            if pause:
                self.stop.wait(pause)

    # the kinds of traffic

    def small_file(self) -> None:
        site, path = random.choice(self.manifest["small"])
        r = self.request("small files (random, whole DB)", "GET", "/" + path,
                         f"{site}.localhost")
        if r is not None:
            r.close()

    def download(self, what: str, slow: bool) -> None:
        site, path = random.choice(self.manifest["big"])
        limit = 20 if slow else 120
        answered = False
        try:
            with requests.get(self.url("/" + path), headers={"Host": f"{site}.localhost"},
                              stream=True, timeout=30) as r:
                self.count(what, str(r.status_code))
                answered = True
                ends = time.monotonic() + limit
                for _ in r.iter_content(64 * 1024):
                    if time.monotonic() > ends or (slow and self.stop.wait(0.05)) or \
                            self.stop.is_set():
                        break
        except requests.RequestException as exc:
            self.count(what, ("cut mid-body: " if answered else "") + type(exc).__name__)
            self.stop.wait(0.1)

    def javascript(self) -> None:
        path = "/api/alloc?mb=4" if random.random() < 1 / 3 else "/api/spin?ms=30"
        r = self.request("JavaScript (slots + 2 clients)", "GET", path, f"{JS_SITE}.localhost")
        if r is not None and r.status_code == 429:
            self.stop.wait(0.05)

    def deploy(self) -> None:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
            for i in range(100):
                z.writestr(f"p{i}.bin", os.urandom(4096))
            z.writestr("big.bin", os.urandom(4 * c.MB))
            z.writestr("index.html", "<!doctype html><p>deployed</p>\n")
        site = f"dep{random.randrange(3)}"
        self.request("deploys (4.4 MB zip)", "POST", f"/api/deploy?site={site}",
                     c.ADMIN_HOST, data=buf.getvalue(), timeout=120,
                     headers={"Authorization": f"Bearer {self.token}",
                              "Content-Type": "application/zip"})

    def login_and_status(self) -> None:
        try:
            code, took, cookie = c.login(self.port)
        except requests.RequestException as exc:
            self.count("logins", type(exc).__name__)
            return
        self.count("logins", str(code))
        if code != 200:
            return
        self.login_times.append(took)
        try:
            st = c.status(self.port, cookie)
            self.status_rss.append(st["memory"]["rss_bytes"])
            self.budget = st["memory"]["budget_bytes"]
        except (requests.RequestException, KeyError, ValueError):
            pass

    def monitor(self) -> None:
        while not self.stop.is_set():
            t = time.monotonic() - self.began
            try:
                rss = self.proc.memory_info().rss / c.MB
                if self.proc.status() == psutil.STATUS_ZOMBIE:
                    raise psutil.NoSuchProcess(self.proc.pid)
            except psutil.Error:
                rss = 0.0
                if self.died_at is None:
                    self.died_at = t
            usage = (self.group.number("memory.usage_in_bytes") or 0) / c.MB
            self.timeline.append((t, rss, usage))
            if self.died_at is not None and t - self.died_at > 5:
                self.stop.set()  # the server is gone: no point hammering a closed port
            self.stop.wait(0.25)

    def run(self) -> None:
        jobs = [(self.monitor, ())]
        jobs += [(self.loop, (self.small_file,))] * 4
        jobs += [(self.loop, (lambda: self.download("large files, slow clients", True),))] * 4
        jobs += [(self.loop, (lambda: self.download("large files, fast client", False),))]
        jobs += [(self.loop, (self.javascript,))] * self.js_clients
        jobs += [(self.loop, (self.deploy, 5.0))]
        jobs += [(self.loop, (self.login_and_status, 1.0))]
        threads = [threading.Thread(target=fn, args=args, daemon=True) for fn, args in jobs]
        for t in threads:
            t.start()
        self.stop.wait(self.seconds)
        self.stop.set()
        for t in threads:
            t.join(150)


# -- the section ----------------------------------------------------------------------------


def log_problems(path: str) -> str:
    """Tracebacks and 500s in a fazt log, in a few words ("" when clean)."""
    try:
        with open(path, errors="replace") as f:
            text = f.read()
    except OSError:
        return ""
    tracebacks = text.count("Traceback (most recent call last)")
    fives = len(re.findall(r'" 5(?!03|04)\d\d ', text))
    if not tracebacks and not fives:
        return ""
    first = ""
    m = re.search(r"Traceback \(most recent call last\):.*?\n(\S[^\n]*)", text, re.S)
    if m:
        first = f"; first: `{m.group(1)[:200]}`"
    return f"{tracebacks} traceback(s) and {fives} response(s) 5xx other than 503/504{first}"


def section_soak(tmp: str, plan, naive: bool, js_clients: int | None = None):
    kind = "naive" if naive else "safe"
    title = ("6. Control: the naive configuration, same load" if naive
             else f"5. Soak: {LIMIT_MB} MB memory cgroup, database ≥ 10× the limit")
    sec = c.Section(title)
    group = Cgroup.make(f"fazt-soak-{os.getpid()}-{kind}", LIMIT_MB)
    db = os.path.join(tmp, f"soak-{kind}.db")
    log = os.path.join(tmp, f"soak-{kind}.log")
    proc = None
    try:
        cached, manifest = ensure_db(tmp, plan, group)
        fresh_copy(cached, db)
        size_gb = os.path.getsize(db) / 2**30
        c.fazt("server", "recalibrate", db=db, preexec=group.join)
        # The same load for both runs: JavaScript clients = the safe slot count + 2.
        js_clients = js_clients or int(c.fazt("config", "get", "max_concurrent_js", db=db)) + 2
        for key, value in NAIVE if naive else ():
            c.fazt("config", "set", key, value, "--break-glass", db=db, preexec=group.join)
        token = c.fazt("token", "create", "--name", "bench", db=db).split()[0]
        port = c.free_port()
        group.reset_counters()
        try:
            proc = c.start_fazt(db, port, log, preexec=group.join)
        except RuntimeError as exc:
            if not naive:
                raise
            sec.notes.append(f"The naive server did not even boot: {exc}")
            return sec
        _, _, cookie = c.login(port)
        st = c.status(port, cookie)
        thresholds = st["thresholds"]
        slots = int(st["js"]["slots"])
        load = Load(port, proc.pid, manifest, token, plan.soak_seconds, js_clients, group)
        load.budget = st["memory"]["budget_bytes"]
        print(f"Load for {plan.soak_seconds:.0f} s on {size_gb:.2f} GiB, thresholds {thresholds}",
              flush=True)
        load.run()
        exit_code = proc.poll()
        oom = group.oom_kills()
        failcnt = f"{group.number('memory.failcnt')} / {group.number('memory.memsw.failcnt')}"
        max_usage = group.number("memory.max_usage_in_bytes")
    finally:
        c.stop(proc)
        group.remove()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db + suffix):
                os.unlink(db + suffix)

    peak_rss = max([r for _, r, _ in load.timeline] + [0.0])
    logins = load.counts.get("logins", {})
    bad = {what: {k: v for k, v in codes.items() if k.startswith("5") and k not in ("503", "504")}
           for what, codes in load.counts.items()}
    bad = {k: v for k, v in bad.items() if v}
    all_logins = sum(logins.values())
    checks = {
        "zero OOM kills": oom == 0 and exit_code is None,
        "zero 5xx other than 503/504": not bad,
        "every login answered (200)": all_logins > 0 and logins.get("200", 0) == all_logins,
    }
    passed = all(checks.values())
    rows = []
    for what, codes in load.counts.items():
        rows.append([what, sum(codes.values()),
                     ", ".join(f"{k}: {v}" for k, v in sorted(codes.items()))])
    sec.tables.append(c.table(["traffic", "requests", "answers (status or client error)"], rows))
    budget_mb = (load.budget or 0) / c.MB
    if exit_code is None:
        fate = "alive at the end"
    elif exit_code < 0:
        fate = f"killed by signal {-exit_code} at {load.died_at or 0:.0f} s"
    else:
        fate = f"exited with {exit_code} at {load.died_at or 0:.0f} s"
    summary = [
        ["database", f"{size_gb:.2f} GiB ({size_gb * 1024 / LIMIT_MB:.1f}× the limit)"],
        ["thresholds (from the probe in the cgroup)" if not naive else "thresholds (naive)",
         ", ".join(f"{k}={thresholds[k]}" for k in ("vfs_cache_mb", "large_file_mb",
                                                     "max_concurrent_js", "js_memory_mb",
                                                     "user_threads", "connection_limit"))],
        ["load", f"{plan.soak_seconds:.0f} s: 4 small-file readers, 4 slow + 1 fast large-file "
                 f"downloaders, {js_clients} JS clients (slots: {slots}), a deploy every 5 s, "
                 "a login every 1 s"],
        ["server", fate],
        ["peak RSS (psutil) / budget", f"{peak_rss:.0f} MB / {budget_mb:.0f} MB"],
        ["peak RSS (status API)", f"{max(load.status_rss) / c.MB:.0f} MB" if load.status_rss
         else "–"],
        ["cgroup peak usage (incl. page cache)", f"{(max_usage or 0) / c.MB:.0f} MB of "
                                                 f"{LIMIT_MB} MB"],
        ["cgroup OOM kills (memory.oom_control)", "n/a" if oom is None else oom],
        ["cgroup failcnt, memory / memsw (limit hits, page cache reclaim included)", failcnt],
        ["login p50 / p99", f"{c.ms(c.percentile(load.login_times, 50))} ms / "
                            f"{c.ms(c.percentile(load.login_times, 99))} ms"],
    ]
    summary += [[name, "pass" if ok else "FAIL"] for name, ok in checks.items()]
    summary.append(["verdict", ("PASS" if passed else "FAIL") if not naive else
                    ("survived" if passed else "did not hold (as expected of the control)")])
    sec.tables.insert(0, c.table(["measure", "value"], summary))
    if bad:
        sec.notes.append(f"5xx other than 503/504: {bad}.")
    problems = log_problems(log)
    if problems:
        sec.notes.append(f"fazt's log: {problems}.")
    if naive:
        sec.notes.append("Naive settings, each via `fazt config set KEY VALUE --break-glass`: "
                         + ", ".join(f"{k}={v}" for k, v in NAIVE) + ". A cache 'capped by "
                         "entry count' cannot be configured; a byte cap far above RAM is the "
                         "same thing in effect.")
    sec.chart = {"timeline": load.timeline, "budget_mb": budget_mb, "limit_mb": LIMIT_MB,
                 "died_at": load.died_at, "js_clients": js_clients, "passed": passed}
    return sec


def draw(ax, chart: dict, title: str) -> None:
    """RSS and cgroup usage over time, against the budget and the limit."""
    timeline = chart.get("timeline") or []
    if timeline:
        ax.plot([t for t, _, _ in timeline], [r for _, r, _ in timeline], label="fazt RSS")
        ax.plot([t for t, _, _ in timeline], [u for _, _, u in timeline],
                label="cgroup usage (incl. page cache)", alpha=0.6)
        ax.axhline(chart["limit_mb"], color="red", linestyle="--", label="cgroup limit")
        if chart.get("budget_mb"):
            ax.axhline(chart["budget_mb"], color="green", linestyle=":", label="fazt budget")
        if chart.get("died_at") is not None:
            ax.axvline(chart["died_at"], color="black", label="server died")
        ax.legend(fontsize=7)
    ax.set_xlabel("s")
    ax.set_ylabel("MB")
    ax.set_title(title, fontsize=9)
