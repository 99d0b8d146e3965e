"""The cockpit answers while the database is locked and while every user thread is taken.

Both run a real `fazt server start` and a second process that shuts every
other connection out of the database. DESIGN.md's recipe
(`PRAGMA locking_mode=EXCLUSIVE`, BEGIN EXCLUSIVE, one read) only works while
no other process has read the file: a WAL connection that has read keeps a
SHARED lock on the database file for as long as it is open (see
/proc/locks), and a running fazt keeps its per-thread connections, so the
recipe's BEGIN EXCLUSIVE fails with "database is locked" as soon as fazt has
served one site request. So the locker takes the locks SQLite's WAL protocol
itself uses: exclusive POSIX locks on the WAL-index lock bytes of `-shm`
(write, checkpoint, recovery and every read mark). Until it lets go, no
connection can start a read or a write: the database is completely unavailable.
"""

import os
import threading
import time
from pathlib import Path

import pytest
import requests
from conftest import (
    PASSWORD,
    USERNAME,
    Admin,
    DatabaseLock,
    Server,
    copy_db,
    eventually,
    fazt,
    init_db,
)

CSRF = {"X-Fazt-Request": "1"}
CREDENTIALS = {"username": USERNAME, "password": PASSWORD}


def timed(action):
    began = time.monotonic()
    result = action()
    return result, time.monotonic() - began


class Answer:
    """A request made on its own thread, so the test can see that it is still waiting."""

    def __init__(self, request):
        self.response = None
        self.seconds = None
        began = time.monotonic()

        def run() -> None:
            self.response = request()
            self.seconds = time.monotonic() - began

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def within(self, seconds: float) -> bool:
        """True once answered; False if still waiting after `seconds`."""
        self.thread.join(seconds)
        return self.seconds is not None


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> Path:
    """A database with the site `mysite`, deployed once for the module."""
    folder = tmp_path_factory.mktemp("lanes")
    db = init_db(folder / "data.db")
    site = folder / "site"
    site.mkdir()
    (site / "index.html").write_text("<h1>hello from fazt</h1>")
    (site / "style.css").write_text("body { color: red }")
    fazt("deploy", str(site), "--site", "mysite", "--db", str(db))
    return db


@pytest.fixture
def db_path(deployed: Path, tmp_path: Path) -> Path:
    return copy_db(deployed, tmp_path / "data.db")  # each test locks a database of its own


@pytest.fixture
def live(db_path: Path):
    srv = Server(db_path)
    yield srv
    srv.stop()


def test_cockpit_answers_while_another_process_locks_the_database(live: Server, db_path):
    assert live.get("/", host="mysite.localhost").status_code == 200
    lock = DatabaseLock(db_path, 8)
    try:
        page, page_s = timed(lambda: live.get("/", host="admin.localhost"))
        assert page.status_code == 200 and "fazt cockpit" in page.text
        asset, asset_s = timed(lambda: live.get("/app.js", host="admin.localhost"))
        assert asset.status_code == 200
        login, login_s = timed(lambda: live.request("POST", "/api/login", headers=CSRF,
                                                    json=CREDENTIALS))
        assert login.status_code == 200
        cookies = {"fazt_session": login.cookies["fazt_session"]}
        status, status_s = timed(lambda: live.request("GET", "/api/system/status",
                                                      cookies=cookies))
        assert status.status_code == 200 and status.json()["mode"] == "normal"
        assert time.monotonic() - lock.started < 7, "the lock ended before we measured"
        print(f"\nwhile locked: page {page_s * 1000:.0f} ms, asset {asset_s * 1000:.0f} ms, "
              f"login {login_s * 1000:.0f} ms, status {status_s * 1000:.0f} ms")
        for seconds in (page_s, asset_s, login_s, status_s):
            assert seconds < 1.0
        # A page served before comes from RAM; one never looked up needs the database:
        # it may wait or refuse, but it must come back.
        cached, cached_s = timed(lambda: live.get("/", host="mysite.localhost", timeout=30))
        assert cached.status_code == 200 and cached_s < 1.0
        site = Answer(lambda: live.get("/never-served.html", host="mysite.localhost",
                                       timeout=30))
        assert not site.within(3), "it did not wait: the lock is not real"
    finally:
        lock.close()  # now it comes back
    assert site.within(15)
    print(f"uncached site page while locked: {site.response.status_code} "
          f"after {site.seconds:.1f} s")
    assert site.response.status_code in (404, 503)
    assert live.get("/", host="mysite.localhost").status_code == 200


def test_a_site_answers_503_when_the_lock_outlasts_its_wait(live: Server, db_path):
    assert live.get("/", host="mysite.localhost").status_code == 200
    lock = DatabaseLock(db_path, 14)
    try:  # a page never served before: it needs the database
        site, site_s = timed(lambda: live.get("/style.css", host="mysite.localhost",
                                              timeout=30))
    finally:
        lock.close()
    print(f"\nsite page while locked for longer than its wait: {site.status_code} "
          f"after {site_s:.1f} s")
    assert site_s < 15
    assert site.status_code == 503 and site.headers["Retry-After"]


def test_fifty_logins_answer_while_every_user_thread_is_taken(live: Server, db_path):
    assert live.get("/", host="mysite.localhost").status_code == 200  # fazt has the file open
    login = live.request("POST", "/api/login", headers=CSRF, json=CREDENTIALS)
    cookies = {"fazt_session": login.cookies["fazt_session"]}
    values = live.request("GET", "/api/config", cookies=cookies).json()["values"]
    user_threads = int(values["user_threads"])
    crowd = user_threads * 3

    lock = DatabaseLock(db_path, 12)
    finished: list[float] = []
    crowd_threads = []

    def site_request() -> None:
        try:  # a path never served, so not in RAM: each waits on the database
            requests.get(live.url(f"/busy-{threading.get_ident()}.html"),
                         headers={"Host": "mysite.localhost"}, timeout=60)
        except requests.RequestException:
            pass
        finished.append(time.monotonic())

    try:
        # Every user thread now waits out its busy timeout on the locked database.
        for _ in range(crowd):
            t = threading.Thread(target=site_request, daemon=True)
            t.start()
            crowd_threads.append(t)
        # Each complete request is handed to the user lane as soon as it is read.
        assert eventually(lambda: live.request("GET", "/api/system/status", cookies=cookies)
                          .json()["connections"]["open"] >= crowd, timeout=30)
        began = time.monotonic()
        latencies = []
        for _ in range(50):
            r, seconds = timed(lambda: live.request("POST", "/api/login", headers=CSRF,
                                                    json=CREDENTIALS, timeout=10))
            assert r.status_code == 200
            latencies.append(seconds)
        logins_done = time.monotonic()
        # The user lane was full the whole time: a newcomer still queues behind the crowd.
        late = Answer(lambda: live.get("/late.html", host="mysite.localhost", timeout=60))
        assert not late.within(1), "a site request found a free user thread: the lane was " \
            "not full"
    finally:
        lock.close()
    assert late.within(60)
    for t in crowd_threads:
        t.join(timeout=60)
    done_during_logins = sum(1 for f in finished if f <= logins_done)
    latencies.sort()
    print(f"\n{user_threads} user threads, {crowd} site requests held them; 50 logins in "
          f"{logins_done - began:.2f} s: p50 {latencies[25] * 1000:.0f} ms, "
          f"max {latencies[-1] * 1000:.0f} ms; site requests finished meanwhile: "
          f"{done_during_logins}; a site request made after them took {late.seconds:.1f} s")
    assert max(latencies) < 1.0
    assert done_during_logins < crowd - user_threads, "the user lane was not kept full"
    assert late.response.status_code in (404, 503)
    assert live.get("/", host="mysite.localhost").status_code == 200


def test_a_backup_stuck_on_the_database_does_not_hold_up_a_sign_in(live: Server, db_path):
    """One cockpit thread waits on a locked database for a backup; another signs in."""
    admin = requests.Session()
    admin.headers.update({"Host": "admin.localhost", **CSRF})
    assert admin.post(live.url("/api/login"), json=CREDENTIALS, timeout=30).status_code == 200
    assert live.get("/", host="mysite.localhost").status_code == 200  # the server has read
    lock = DatabaseLock(db_path, 8)
    answers: list[int] = []
    backup = threading.Thread(
        target=lambda: answers.append(admin.get(live.url("/api/backup"), timeout=60).status_code))
    try:
        backup.start()
        # The backup's temporary file is made just before it reads the locked database.
        assert eventually(lambda: any(".backup-" in p.name for p in db_path.parent.iterdir()))
        login, login_s = timed(lambda: live.request("POST", "/api/login", headers=CSRF,
                                                    json=CREDENTIALS))
        assert not answers, "the backup answered before the sign-in: it did not wait"
        assert login.status_code == 200 and login_s < 1.0
    finally:
        lock.close()
        backup.join(60)
    assert answers and answers[0] in (200, 503)


class _Task:
    def __init__(self, fail: bool = False):
        self.fail = fail
        self.done = threading.Event()

    def service(self):
        self.done.set()
        if self.fail:
            raise RuntimeError("a broken request")

    def cancel(self):
        self.done.set()


def test_the_cockpit_count_returns_to_zero_whatever_happens():
    """The event loop pauses while `contended()`: a count that leaked would slow it for good."""
    from fazt.server.lanes import LaneDispatcher

    lanes = LaneDispatcher(2, 2)
    try:
        assert eventually(lambda: not lanes.contended()) is True  # threads start "active"
        tasks = [_Task(), _Task(fail=True)]
        for task in tasks:
            lanes.add_task(task, cockpit=True)
        for task in tasks:
            assert task.done.wait(5)
        assert eventually(lambda: lanes.cockpit_tasks == 0) is True
        lanes.cockpit.set_thread_count(0)  # no thread: the next one waits, then is cancelled
        assert eventually(lambda: not lanes.cockpit.threads)
        lanes.add_task(_Task(), cockpit=True)
        assert lanes.contended() and lanes.cockpit_tasks == 1
    finally:
        lanes.shutdown(timeout=5)
    assert lanes.cockpit_tasks == 0


def thread_nices(pid: int) -> list[int]:
    """The nice value of each of a process's threads, from /proc."""
    nices = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        nices.append(int(stat.rsplit(")", 1)[1].split()[16]))  # field 19: nice
    return nices


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a priority needs root or CAP_SYS_NICE")
def test_cockpit_threads_alone_run_at_a_higher_priority(live: Server, db_path):
    from fazt.server.priority import RAISED

    assert live.get("/", host="mysite.localhost").status_code == 200
    raised = int(fazt("config", "get", "cockpit_threads", "--db", str(db_path)).stdout)
    nices = thread_nices(live.proc.pid)
    assert nices.count(RAISED) == raised and RAISED < 0
    assert nices.count(0) >= 2  # the event loop and the site threads are left alone
    # More user threads, made by a cockpit thread (a raised one): they start at the normal
    # priority, not the one of the thread that made them.
    admin = Admin(live)
    threads = int(admin.get("/api/config").json()["values"]["user_threads"]) + 2
    answer = admin.put("/api/config", json={"user_threads": threads, "break_glass": True})
    assert answer.status_code == 200, answer.text
    assert eventually(lambda: len(thread_nices(live.proc.pid)) >= len(nices) + 2)
    nices = thread_nices(live.proc.pid)
    assert nices.count(RAISED) == raised


def test_the_cockpit_answers_whole_while_a_flood_keeps_the_loop_busy(live: Server):
    """Many keep-alive connections keep every turn of the loop full; the cockpit's answers
    (sent by its own threads, on fresh connections and on a keep-alive one) come back
    whole and in order, and the flood's answers are whole too."""
    admin = Admin(live)
    asset = admin.get("/app.js")
    assert asset.status_code == 200 and len(asset.content) > 16 * 1024
    stop = threading.Event()
    flood_answers: list[int] = []

    def flood() -> None:
        with requests.Session() as s:
            while not stop.is_set():
                try:
                    r = s.get(live.url("/"), headers={"Host": "mysite.localhost"}, timeout=30)
                except requests.RequestException:
                    flood_answers.append(0)
                    continue
                assert r.status_code != 200 or "hello from fazt" in r.text
                flood_answers.append(r.status_code)

    crowd = [threading.Thread(target=flood, daemon=True) for _ in range(24)]
    for t in crowd:
        t.start()
    try:
        assert eventually(lambda: len(flood_answers) > 200, timeout=30)
        cookie = admin.session.cookies["fazt_session"]
        for _ in range(20):
            fresh = live.request("GET", "/api/system/status",
                                 cookies={"fazt_session": cookie})
            assert fresh.status_code == 200 and fresh.json()["mode"] == "normal"
            kept = admin.get("/app.js")  # the same connection each time (keep-alive)
            assert kept.status_code == 200 and kept.content == asset.content
            assert admin.status()["mode"] == "normal"
    finally:
        stop.set()
        for t in crowd:
            t.join(30)
    assert set(flood_answers) <= {200, 429, 503}, set(flood_answers)
