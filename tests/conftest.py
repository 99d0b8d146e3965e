"""Shared fixtures: real databases made by the real `fazt` command, real servers on real sockets."""

import contextlib
import io
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["binary_build"]  # dist/fazt, built in the background for test_binary.py
PASSWORD = "correct horse battery"
USERNAME = "owner"


def fazt_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("FAZT_DB", None)
    env.update(extra)
    return env


def fazt(*args: str, check: bool = True, env: dict | None = None, timeout: float = 120,
         input: str | None = None) -> subprocess.CompletedProcess:
    """Run the real command line in a subprocess."""
    result = subprocess.run([sys.executable, "-m", "fazt", *args], capture_output=True,
                            text=True, env=env or fazt_env(), timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise AssertionError(f"fazt {' '.join(args)} failed ({result.returncode}):\n"
                             f"{result.stdout}\n{result.stderr}")
    return result


def foreign_database(path: Path) -> bytes:
    """Another program's SQLite database at `path` (a --db given by mistake): its bytes."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.execute("INSERT INTO notes VALUES ('keep me')")
    conn.commit()
    conn.close()
    return path.read_bytes()


def configure(db: Path, **values: str) -> None:
    """Settings written in this process, as `fazt config set` writes each, all at once
    (a `fazt` process costs ~0.5 s here)."""
    from fazt.instance import machine_for, read_config, update_config
    from fazt.store import open_database

    database = open_database(str(db))
    try:
        with database.read() as conn:
            config = read_config(conn)
        update_config(database, machine_for(config, database.path), values)
    finally:
        database.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _real_init(path: Path, *extra: str) -> Path:
    fazt("server", "init", "--db", str(path), "--domain", "example.test", "--username",
         USERNAME, "--password", PASSWORD, "--memory-mb", "1024", "--cpus", "2", *extra)
    return path


# Set by the session fixture below: where the one real `fazt server init` of the
# session puts the database every plain init_db() copies.
_template_dir: Path | None = None


def _template() -> Path:
    template = _template_dir / "data.db"
    if not template.exists():
        _real_init(template)
    return template


def init_db(path: Path, *extra: str) -> Path:
    """A database as `fazt server init` makes it.

    Without extra arguments it is a copy of one real init made once per session
    (an init costs ~0.7 s: scrypt and Brotli-11 of the cockpit's assets). Nothing
    in the file names its path (the claim is an abstract socket, not stored); the
    thresholds depend on the free disk space, so a database on another filesystem
    (a small tmpfs) gets its own init; the session key is made anew per copy so two
    tests' servers never accept each other's cookies.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if (extra or _template_dir is None or path.exists()
            or path.parent.stat().st_dev != _template_dir.stat().st_dev):
        return _real_init(path, *extra)
    return copy_db(_template(), path)


def copy_db(source: Path, path: Path) -> Path:
    """A copy of a database no process has open (made by commands that have exited),
    with a session key of its own."""
    shutil.copyfile(source, path)
    os.chmod(path, 0o600)
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute("UPDATE secrets SET value = ? WHERE key = 'session_key'",
                         (secrets.token_hex(32),))
    finally:
        conn.close()
    return path


@pytest.fixture(scope="session", autouse=True)
def _init_template(tmp_path_factory):
    global _template_dir
    _template_dir = tmp_path_factory.mktemp("template")
    yield
    _template_dir = None


class Server:
    """`fazt server start` in a subprocess on a free port."""

    def __init__(self, db: Path, env: dict | None = None, port: int | None = None,
                 args: tuple[str, ...] = (), preexec=None):
        self.db = db
        self.port = port or free_port()
        self.log_path = db.parent / f"server-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fazt", "server", "start", "--db", str(db), "--host",
             "127.0.0.1", "--port", str(self.port), *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env or fazt_env(),
            preexec_fn=preexec)
        self.wait_ready()

    def wait_ready(self, timeout: float = 30) -> None:
        """Until /_fazt/health answers: a bare connect every 20 ms first (cheap), then
        one real request."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited early:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                requests.get(self.url("/_fazt/health"), timeout=5)
                return
            except (OSError, requests.ConnectionError):
                time.sleep(0.02)
        raise AssertionError(f"server did not start:\n{self.log()}")

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str = "/", host: str = "localhost", **kw) -> requests.Response:
        headers = {"Host": host, **kw.pop("headers", {})}
        return requests.get(self.url(path), headers=headers, timeout=kw.pop("timeout", 30), **kw)

    def request(self, method: str, path: str, host: str = "admin.localhost", **kw
                ) -> requests.Response:
        headers = {"Host": host, **kw.pop("headers", {})}
        return requests.request(method, self.url(path), headers=headers,
                                timeout=kw.pop("timeout", 30), **kw)

    @classmethod
    @contextlib.contextmanager
    def running(cls, db: Path, **kw):
        srv = cls(db, **kw)
        try:
            yield srv
        finally:
            srv.stop()

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return init_db(tmp_path / "data.db")


@pytest.fixture(scope="module")
def module_db(tmp_path_factory) -> Path:
    """One database for the tests of a module that share `module_server`: each such
    test uses its own site names and tokens and puts back any setting it changes."""
    return init_db(tmp_path_factory.mktemp("module") / "data.db")


@pytest.fixture(scope="module")
def module_server(module_db: Path):
    """One running server for a module (a start and stop cost ~0.8 s a test)."""
    srv = Server(module_db)
    yield srv
    srv.stop()


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "docs").mkdir(parents=True)
    (root / "index.html").write_text("<h1>hello from fazt</h1>")
    (root / "style.css").write_text("body { color: red }")
    (root / "docs" / "index.html").write_text("<p>docs</p>")
    (root / "data.bin").write_bytes(bytes(range(256)) * 64)
    return root


@pytest.fixture
def server(db_path: Path):
    srv = Server(db_path)
    yield srv
    srv.stop()


@pytest.fixture
def instance(db_path: Path):
    """A booted fazt in this process (the same object the server runs)."""
    from fazt.instance import Instance

    inst = Instance(str(db_path)).boot()
    yield inst
    inst.close()


@pytest.fixture
def client(instance):
    """falcon.testing against the whole WSGI app, Host routing included."""
    from falcon import testing

    from fazt.app import Router

    return testing.TestClient(Router(instance))


def deploy_dir(instance, name: str, root: Path) -> dict:
    from fazt.deploy import files_from_directory

    return instance.deploy(name, files_from_directory(str(root)))


def slow_reader(port: int, host: str, path: str, started: bool = True) -> socket.socket:
    """A client that asks for a large file and reads (almost) nothing of it: a 4 KiB
    receive buffer, so the download stalls holding what a stalled download holds. With
    `started`, once the answer's status line has come back as 200."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    if started:
        assert s.recv(64).startswith(b"HTTP/1.1 200")
    return s


@contextlib.contextmanager
def with_and_without_fastpath(db: Path):
    """Two servers on the same content: `db` as it is served, and a copy of it served with
    FAZT_FASTPATH=off (no fast path, no direct handler path: every request through a
    thread and the WSGI app), to compare."""
    copy = db.parent / "copy.db"
    fazt("backup", str(copy), "--db", str(db))
    with Server.running(db) as fast, \
            Server.running(copy, env=fazt_env(FAZT_FASTPATH="off")) as slow:
        yield fast, slow


def eventually(check, timeout: float = 6.0, every: float = 0.1):
    """`check()` once it is truthy; its last value when time runs out."""
    deadline = time.time() + timeout
    while True:
        value = check()
        if value or time.time() > deadline:
            return value
        time.sleep(every)


class Admin:
    """A signed-in owner talking to the cockpit API of a running server."""

    def __init__(self, server: Server):
        self.server = server
        self.session = requests.Session()
        self.session.headers.update({"Host": "admin.localhost", "X-Fazt-Request": "1"})
        r = self.post("/api/login", json={"username": USERNAME, "password": PASSWORD})
        assert r.status_code == 200, r.text

    def get(self, path: str, **kw) -> requests.Response:
        return self.session.get(self.server.url(path), timeout=kw.pop("timeout", 30), **kw)

    def post(self, path: str, **kw) -> requests.Response:
        return self.session.post(self.server.url(path), timeout=kw.pop("timeout", 60), **kw)

    def put(self, path: str, **kw) -> requests.Response:
        return self.session.put(self.server.url(path), timeout=kw.pop("timeout", 30), **kw)

    def status(self) -> dict:
        r = self.get("/api/system/status")
        assert r.status_code == 200, r.text
        return r.json()


def zip_of(files: dict[str, str | bytes]) -> bytes:
    """A zip archive in memory, as a deploy upload."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buf.getvalue()


# The database made completely unavailable by another process. DESIGN.md's recipe
# (locking_mode=EXCLUSIVE, BEGIN EXCLUSIVE, a read) fails once fazt has read the file:
# a WAL connection keeps a SHARED lock on it while open. So the locker takes the locks
# SQLite's WAL protocol uses itself: bytes 120-127 of the `-shm` file.
LOCKER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1] + "-shm", os.O_RDWR)
# SQLite's unix VFS locks bytes 120-127 of the WAL index: write, checkpoint,
# recover and the five read marks. Holding them all shuts out every connection.
deadline = time.time() + 10
while True:  # a reader may hold a read mark for a moment: try again
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 8, 120, os.SEEK_SET)
        break
    except OSError:
        if time.time() > deadline:
            raise
        time.sleep(0.01)
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


class DatabaseLock:
    """Another process holding the whole database for `seconds` at most; `close()`
    lets go at once (the kernel drops a killed process's locks), so a test that has
    seen what it came for does not wait the rest out."""

    def __init__(self, db: Path, seconds: float):
        self.proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(db), str(seconds)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "locked"
        self.started = time.monotonic()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=60)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 # example.test (the tests' domain) too: admin.example.test over plain HTTP is
                 # not a secure context, as an owner's admin.D is before HTTPS
                 "--host-resolver-rules=MAP *.localhost 127.0.0.1, MAP *.example.test 127.0.0.1"]


@pytest.fixture(scope="session")
def browser():
    """One headless Chromium for the session (a launch costs 1-2.5 s); each test opens
    its own page or context, so cookies never cross. Playwright's sync API leaves its
    event loop marked as running in this thread, so a test must not call asyncio.run()."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser):
    """`browser.new_page` for one test: its pages (each in its own context) close after it."""
    pages = []

    def make(**kw):
        page = browser.new_page(**kw)
        pages.append(page)
        return page

    yield make
    for page in pages:
        page.close()
