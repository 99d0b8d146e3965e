"""The single-file binary `dist/fazt` (the `binary` fixture: tests/binary_build.py), run with a
clean environment.

A clean environment means no virtualenv, no PYTHONPATH, a fresh HOME, and
TMPDIR (where the bootloader unpacks the binary) inside the test's folder, so
that we can see what it leaves behind.
"""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests
from conftest import PASSWORD, ROOT, USERNAME, configure, eventually, free_port

from fazt import frozen
from fazt.replica.primary import replication_status


def clean_env(home: Path, tmpdir: Path) -> dict:
    return {"PATH": "/usr/bin:/bin", "HOME": str(home), "TMPDIR": str(tmpdir)}


@pytest.fixture
def frozen_env(tmp_path: Path):
    home, unpack = tmp_path / "home", tmp_path / "unpack"
    home.mkdir()
    unpack.mkdir()
    return clean_env(home, unpack), unpack


def run(binary: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    result = subprocess.run([str(binary), *args], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, f"fazt {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def start(binary: Path, db: Path, port: int, env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(binary), "server", "start", "--db", str(db), "--host",
                                 "127.0.0.1", "--port", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
    deadline = time.time() + 30
    while time.time() < deadline:
        assert proc.poll() is None, f"server exited early:\n{log.read_text()}"
        try:
            requests.get(f"http://127.0.0.1:{port}/_fazt/health", timeout=1)
            return proc
        except requests.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"server did not start:\n{log.read_text()}")


@pytest.mark.slow
def test_binary_serves_and_leaves_nothing_behind(tmp_path: Path, frozen_env, binary: Path):
    env, unpack = frozen_env
    db = tmp_path / "data" / "data.db"

    version = run(binary, "--version", env=env).stdout
    assert "frozen single-file build" in version

    run(binary, "server", "init", "--db", str(db), "--domain", "example.test", "--username",
        USERNAME, "--password", PASSWORD, "--memory-mb", "256", "--cpus", "1", env=env)
    run(binary, "deploy", str(ROOT / "examples" / "hello"), "--site", "hello", "--db", str(db),
        env=env)

    port = free_port()
    proc = start(binary, db, port, env, tmp_path / "server.log")
    try:
        assert len(list(unpack.glob("_MEI*"))) == 1, "the binary unpacks under $TMPDIR"
        url = f"http://127.0.0.1:{port}"
        page = requests.get(url + "/", headers={"Host": "hello.localhost"}, timeout=10)
        assert page.status_code == 200 and "<" in page.text
        api = requests.get(url + "/api/hello", headers={"Host": "hello.localhost"}, timeout=10)
        assert api.status_code == 200, api.text  # QuickJS works inside the binary
        admin = requests.get(url + "/", headers={"Host": "admin.localhost"}, timeout=10)
        assert admin.status_code == 200 and "html" in admin.headers["Content-Type"]
        health = requests.get(url + "/_fazt/health", timeout=10)
        assert health.json() == {"status": "ok", "mode": "normal"}
    finally:
        proc.send_signal(signal.SIGTERM)  # to the bootloader, which forwards it
        code = proc.wait(timeout=20)
    assert code == 0, (tmp_path / "server.log").read_text()
    assert list(unpack.iterdir()) == [], "the extraction folder is removed on exit"
    beside = {p.name for p in db.parent.iterdir()}
    assert beside <= {"data.db", "data.db-wal", "data.db-shm"}, beside


@pytest.mark.slow
def test_binary_carries_https(tmp_path: Path, frozen_env, binary: Path):
    """cryptography (import), acme and requests (an order, here to a CA that is not there)."""
    import trustme

    env, _ = frozen_env
    db = tmp_path / "data.db"
    run(binary, "server", "init", "--db", str(db), "--domain", "example.test", "--username",
        USERNAME, "--password", PASSWORD, "--memory-mb", "256", "--cpus", "1", env=env)
    leaf = trustme.CA().issue_cert("www.example.org")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    chain.write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    run(binary, "cert", "import", "www.example.org", "--cert", str(chain), "--key", str(key),
        "--db", str(db), env=env)
    # settings are not what this test is about: written here, not by two more unpacks
    configure(db, https="on", acme_directory=f"https://127.0.0.1:{free_port()}/d")
    proc = subprocess.Popen([str(binary), "server", "start", "--db", str(db), "--host",
                             "127.0.0.1", "--port", str(free_port()), "--https-port",
                             str(free_port())], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    def errors(listed: list[dict]) -> list[str]:
        return [c["last_error"] for c in listed if c["last_error"]]

    try:
        # looked at from this process (each run of the binary unpacks 29 MB), then shown
        # by the binary once
        assert eventually(lambda: errors(certificates(db)), timeout=60, every=0.2)
        found = errors(json.loads(run(binary, "cert", "list", "--json", "--db", str(db),
                                      env=env).stdout))
        assert found and "Cannot reach the ACME server" in found[0], found
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


@pytest.mark.slow
def test_binary_carries_litestream(tmp_path: Path, frozen_env, binary: Path):
    """Replication works from the single file alone: Litestream is inside it, found with
    no Python and nothing on PATH, and runs as the server's child from the unpack folder."""
    env, unpack = frozen_env
    db = tmp_path / "data.db"
    run(binary, "server", "init", "--db", str(db), "--domain", "example.test", "--username",
        USERNAME, "--password", PASSWORD, env=env)
    # `replica set` checks that the endpoint accepts a connection; S3 itself is not needed
    # here (the child only has to run), so a bare listening socket stands in for it
    endpoint = socket.create_server(("127.0.0.1", 0))
    run(binary, "replica", "set",
        f"s3://bucket/fazt?endpoint=http://127.0.0.1:{endpoint.getsockname()[1]}", "--db",
        str(db), env=env)
    proc = start(binary, db, free_port(), env, tmp_path / "server.log")
    try:
        def child() -> dict | None:  # what `replica status` shows, asked from this process
            status = replication_status(str(db), "s3://bucket/fazt")
            return status if status["running"] else None

        status = eventually(child, timeout=20)
        assert status, (tmp_path / "server.log").read_text()
        exe = os.readlink(f"/proc/{status['pid']}/exe")
        assert exe.startswith(str(unpack)) and exe.endswith("/litestream")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        endpoint.close()


@pytest.mark.slow
def test_next_start_removes_what_a_killed_bootloader_left(tmp_path: Path, frozen_env, binary: Path):
    env, unpack = frozen_env
    db = tmp_path / "data.db"
    run(binary, "server", "init", "--db", str(db), "--domain", "example.test", "--username",
        USERNAME, "--password", PASSWORD, "--memory-mb", "256", "--cpus", "1", env=env)
    proc = start(binary, db, free_port(), env, tmp_path / "server.log")
    child = int(subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                               text=True).stdout.split()[0])
    proc.kill()  # SIGKILL the bootloader: it cannot clean up, and its child lives on
    proc.wait()
    (leftover,) = unpack.glob("_MEI*")

    run(binary, "--version", env=env)
    assert leftover.exists(), "kept while the orphaned server still uses it"

    os.kill(child, signal.SIGTERM)
    deadline = time.time() + 15
    while Path(f"/proc/{child}").exists() and time.time() < deadline:
        time.sleep(0.05)
    old = time.time() - 2 * frozen.STALE_AFTER_SECONDS
    os.utime(leftover, (old, old))
    run(binary, "--version", env=env)
    assert list(unpack.iterdir()) == []


def certificates(db: Path) -> list[dict]:
    from fazt.certs import certificate_list
    from fazt.store import open_database

    database = open_database(str(db))
    try:
        return certificate_list(database)
    finally:
        database.close()


# -- fazt.frozen, without building ------------------------------------------------------


def _fake_extraction(parent: Path, name: str, age: float, marker: bool = True) -> Path:
    folder = parent / name
    (folder / "fazt" / "web_simulator").mkdir(parents=True)
    if marker:
        (folder / frozen.MARKER).write_text("//")
    then = time.time() - age
    os.utime(folder, (then, then))
    return folder


def test_remove_stale_takes_only_old_unused_fazt_folders(tmp_path: Path):
    current = _fake_extraction(tmp_path, "_MEIcurrent", age=3600)
    stale = _fake_extraction(tmp_path, "_MEIstale1", age=3600)
    young = _fake_extraction(tmp_path, "_MEIyoung1", age=1)
    foreign = _fake_extraction(tmp_path, "_MEIother1", age=3600, marker=False)
    unrelated = _fake_extraction(tmp_path, "keepme", age=3600)

    removed = frozen.remove_stale(str(current))

    assert removed == [str(stale)]
    assert not stale.exists()
    for kept in (current, young, foreign, unrelated):
        assert kept.exists()


def test_remove_stale_is_a_no_op_outside_the_binary():
    assert frozen.extraction_dir() is None
    assert frozen.remove_stale() == []
    assert frozen.ram_warning() is None


def test_ram_filesystems_are_named():
    assert frozen.filesystem_type("/proc/self") == "proc"
    if frozen.filesystem_type("/dev/shm") == "tmpfs":
        assert "TMPDIR" in frozen.ram_warning("/dev/shm/_MEIxyz")
