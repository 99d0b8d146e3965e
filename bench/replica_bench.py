"""Section 10: replication with Litestream, against S3 on loopback (moto_server).

Three measures, each side by side in one run:
- lag: how long after a deploy finishes the replica holds it (Litestream has
  uploaded a file whose last transaction is the deploy's), by deploy size;
- restore: `fazt restore --from` time by database size, checks included;
- memory: fazt and its Litestream child together in a 200 MB memory cgroup under
  the soak's load (section 5's traffic, its deploys included), on a smaller
  database than the soak's so that moto (which keeps the bucket in RAM) stays small.
"""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from types import SimpleNamespace
from urllib.parse import quote

import common as c
import psutil
import requests
import soak

SRC = os.environ.get("FAZT_SRC") or os.path.join(c.REPO, "src")
sys.path.insert(0, SRC)
from fazt.replica import litestream  # noqa: E402  (this checkout's fazt)
from fazt.replica.target import litestream_url  # noqa: E402

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench"}


def _litestream_or_skip() -> str:
    try:
        return litestream.binary()
    except Exception as exc:
        raise c.Skip(str(exc).rstrip(".")) from None


class S3:
    """moto's S3 on a loopback port, one bucket."""

    def __init__(self, log_path: str):
        exe = shutil.which("moto_server")
        if exe is None:
            raise c.Skip("moto_server is not installed (pip install 'moto[server]')")
        self.port = c.free_port()
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 30
        while True:
            try:
                if requests.put(f"{self.endpoint}/bench", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.time() > deadline:
                self.close()
                raise RuntimeError("moto_server did not start")
            time.sleep(0.2)

    def url(self, path: str) -> str:
        return f"s3://bench/{path}?endpoint={quote(self.endpoint, safe=':/')}&region=us-east-1"

    def close(self) -> None:
        c.stop(self.proc)
        self.log.close()


def env() -> dict:
    return {**c.fazt_env(), **CREDENTIALS}


def fazt(*args: str, db: str, preexec=None, timeout: float = 900) -> str:
    done = subprocess.run([sys.executable, "-m", "fazt", *args, "--db", db], env=env(),
                          capture_output=True, text=True, timeout=timeout, preexec_fn=preexec)
    if done.returncode != 0:
        raise RuntimeError(f"`fazt {' '.join(args)}` failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def start_server(db: str, port: int, log_path: str, preexec=None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "fazt", "server", "start", "--db", db, "--host", "127.0.0.1",
           "--port", str(port)]
    proc = c.start(cmd, log_path, env=env(), preexec=preexec)
    c.wait_ready(f"http://127.0.0.1:{port}/_fazt/health", c.SITE_HOST, proc, log_path)
    return proc


def replica_txid(url: str) -> int:
    """The last transaction the replica holds (what a restore would get)."""
    exe = litestream.binary()
    done = subprocess.run([exe, "ltx", "-json", litestream_url(url)],
                          env=litestream.child_env(CREDENTIALS, 32), capture_output=True,
                          text=True, timeout=30)
    files = json.loads(done.stdout or "[]") if done.returncode == 0 else []
    return max((int(f["max_txid"], 16) for f in files), default=0)


def wait_replicated(db: str, url: str, timeout: float = 300) -> float:
    """Seconds until the replica holds the database's current transaction."""
    began = time.monotonic()
    route = f"/txid?path={quote(os.path.abspath(db))}"
    while not (target := (litestream.control(db, route) or {}).get("txid")):
        if time.monotonic() - began > 30:  # Litestream starts with the server
            raise RuntimeError(f"Litestream's control socket gave no txid for {db}")
        time.sleep(0.05)
    while replica_txid(url) < target:
        if time.monotonic() - began > timeout:
            raise RuntimeError(f"the replica did not reach txid {target} in {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - began


def site_of(root: str, mb: int) -> str:
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "index.html"), "w") as f:
        f.write(f"<h1>{mb} MB</h1>")
    c.write_file(os.path.join(root, "blob.bin"), mb * c.MB)
    return root


def section_replica(tmp: str, plan) -> c.Section:
    _litestream_or_skip()
    sec = c.Section("10. Replication (Litestream to S3 on loopback)")
    s3 = S3(os.path.join(tmp, "moto.log"))
    try:
        sec.tables.append(lag_table(tmp, plan, s3))
        sec.tables.append(restore_table(tmp, plan, s3))
        sec.tables.append(memory_table(tmp, plan, s3))
    finally:
        s3.close()
    sec.notes.append(
        "Lag: from the end of `fazt deploy` (its transaction committed) until "
        "`litestream ltx` lists a replica file holding that transaction, polled every 50 ms "
        "(Litestream syncs each second). Restore: `fazt restore --from` end to end: "
        "Litestream's fetch with `-integrity-check full`, then fazt's own checks before and "
        "after the swap. moto is an in-memory S3 on the same 2-core machine: a real store "
        "adds network time.")
    return sec


def lag_table(tmp: str, plan, s3: S3) -> str:
    sizes = [1, 4] if plan.smoke else [1, 10, 50, 100]
    db = os.path.join(tmp, "lag", "data.db")
    os.makedirs(os.path.dirname(db))
    url = s3.url("lag")
    fazt("server", "init", "--domain", "example.test", "--username", c.USERNAME,
         "--password", c.PASSWORD, db=db)
    fazt("replica", "set", url, db=db)
    port = c.free_port()
    proc = start_server(db, port, os.path.join(tmp, "lag.log"))
    rows = []
    try:
        wait_replicated(db, url)
        for mb in sizes:
            root = site_of(os.path.join(tmp, f"site-{mb}"), mb)
            began = time.monotonic()
            fazt("deploy", root, "--site", f"s{mb}", db=db)
            deployed = time.monotonic() - began
            lag = wait_replicated(db, url)
            rows.append([f"{mb} MB", f"{deployed:.1f} s", f"{lag:.2f} s"])
            shutil.rmtree(root)
    finally:
        c.stop(proc)
    return c.table(["deploy", "deploy took", "replicated after it finished"], rows)


def restore_table(tmp: str, plan, s3: S3) -> str:
    sizes = [5] if plan.smoke else [10, 100, 300]
    rows = []
    for mb in sizes:
        db = os.path.join(tmp, f"restore-{mb}", "data.db")
        os.makedirs(os.path.dirname(db))
        url = s3.url(f"restore-{mb}")
        fazt("server", "init", "--domain", "example.test", "--username", c.USERNAME,
             "--password", c.PASSWORD, db=db)
        root = site_of(os.path.join(tmp, f"rsite-{mb}"), mb)
        fazt("deploy", root, "--site", "big", db=db)
        shutil.rmtree(root)
        fazt("replica", "set", url, db=db)
        proc = start_server(db, c.free_port(), os.path.join(tmp, f"restore-{mb}.log"))
        try:
            wait_replicated(db, url)
        finally:
            c.stop(proc)
        size = os.path.getsize(db) / c.MB
        target = os.path.join(tmp, f"restored-{mb}", "data.db")
        began = time.monotonic()
        fazt("restore", "--from", url, db=target)
        took = time.monotonic() - began
        rows.append([f"{size:.0f} MB", f"{took:.2f} s", f"{size / took:.0f} MB/s"])
        for folder in (os.path.dirname(db), os.path.dirname(target)):
            shutil.rmtree(folder)
    return c.table(["database", "fazt restore --from", "rate"], rows)


def memory_table(tmp: str, plan, s3: S3) -> str:
    seconds = 20 if plan.smoke else 180
    shape = SimpleNamespace(smoke=True) if plan.smoke else SimpleNamespace(smoke=False,
                                                                          soak_db_gb=0.7)
    group = soak.Cgroup.make(f"fazt-replica-{os.getpid()}", soak.LIMIT_MB)
    db = os.path.join(tmp, "replica-soak.db")
    url = s3.url("soak")
    proc = None
    peaks = {"fazt": 0, "litestream": 0, "both": 0, "litestream private": 0, "both private": 0}
    try:
        cached, manifest = soak.ensure_db(tmp, shape, group)
        soak.fresh_copy(cached, db)
        fazt("replica", "set", url, db=db, preexec=group.join)  # recomputes the thresholds
        fazt("server", "recalibrate", db=db, preexec=group.join)
        token = fazt("token", "create", "--name", "bench", db=db).split()[0]
        js_clients = int(fazt("config", "get", "max_concurrent_js", db=db)) + 2
        port = c.free_port()
        group.reset_counters()
        proc = start_server(db, port, os.path.join(tmp, "replica-soak.log"), group.join)
        first_sync = wait_replicated(db, url, timeout=600)  # the first snapshot
        _, _, cookie = c.login(port)
        budget = c.status(port, cookie)["memory"]["budget_bytes"]
        charged = c.status(port, cookie)["memory"]["ledger"]["replica"]
        load = soak.Load(port, proc.pid, manifest, token, seconds, js_clients, group)
        stop = threading.Event()

        def sample() -> None:
            server = psutil.Process(proc.pid)
            while not stop.is_set():
                try:
                    mine = server.memory_info()
                    theirs = [p.memory_info() for p in server.children()
                              if "litestream" in p.name()]
                except psutil.Error:
                    break
                # Private = resident minus file-backed shared pages (the binaries' text,
                # which the kernel can drop and read again): what memory pressure cannot take.
                ls = sum(m.rss for m in theirs)
                ls_private = sum(m.rss - m.shared for m in theirs)
                for key, value in (("fazt", mine.rss), ("litestream", ls),
                                   ("both", mine.rss + ls), ("litestream private", ls_private),
                                   ("both private", mine.rss - mine.shared + ls_private)):
                    peaks[key] = max(peaks[key], value)
                stop.wait(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        load.run()
        stop.set()
        sampler.join(5)
        lag_after = wait_replicated(db, url)
        alive = proc.poll() is None
        oom = group.oom_kills()
        max_usage = group.number("memory.max_usage_in_bytes") or 0
        deploys = sum(sum(codes.values()) for what, codes in load.counts.items()
                      if what.startswith("deploys"))
    finally:
        c.stop(proc)
        group.remove()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(db + suffix):
                os.unlink(db + suffix)
        shutil.rmtree(litestream.meta_dir(db), ignore_errors=True)
    size_mb = os.path.getsize(cached) / c.MB
    rows = [
        ["database", f"{size_mb:.0f} MB"],
        ["load", f"{seconds} s of section 5's traffic ({js_clients} JS clients, "
                 f"{deploys} deploys)"],
        ["first snapshot to the replica", f"{first_sync:.1f} s"],
        ["peak RSS: fazt / Litestream / both", f"{peaks['fazt'] / c.MB:.0f} / "
         f"{peaks['litestream'] / c.MB:.0f} / {peaks['both'] / c.MB:.0f} MB"],
        ["peak private RSS (no shared file pages): Litestream / both",
         f"{peaks['litestream private'] / c.MB:.0f} / {peaks['both private'] / c.MB:.0f} MB"],
        ["budget / Litestream's share in it", f"{budget / c.MB:.0f} MB / {charged:.0f} MB"],
        ["cgroup peak usage (incl. page cache)", f"{max_usage / c.MB:.0f} of "
                                                 f"{soak.LIMIT_MB} MB"],
        ["cgroup OOM kills", "n/a" if oom is None else oom],
        ["server at the end", "alive" if alive else "dead"],
        ["replica current again after the load", f"{lag_after:.1f} s"],
    ]
    return c.table(["fazt + Litestream in a 200 MB cgroup", "value"], rows)
