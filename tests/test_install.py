"""install.sh: dry run, a real install into a temporary prefix, an upgrade, the systemd unit.

The quick tests use a stand-in binary (a shell script that answers like fazt);
the slow ones install the real dist/fazt.
"""

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import requests
from conftest import ROOT, free_port
from test_binary import start

INSTALL = ROOT / "install.sh"

STAND_IN = """#!/bin/sh
# Answers like fazt, for install.sh's quick tests.
case "$1 $2 $3" in
  "server probe --json") echo '{"ledger": {"ram_mb": 200, "usable_mb": 137.26}}' ;;
  "server probe"*) echo "Budget: 137 MB usable, the thresholds allow 82 MB." ;;
  "server init"*)
    while [ "$#" -gt 0 ]; do
      if [ "$1" = --db ]; then mkdir -p "$(dirname "$2")"; echo db > "$2"; fi
      shift
    done
    echo "Created." ;;
  *) echo "fazt stand-in" ;;
esac
"""


def install(*args: str, home: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    result = subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True,
                            env=env, stdin=subprocess.DEVNULL, timeout=300)
    if check:
        assert result.returncode == 0, f"install.sh failed:\n{result.stdout}\n{result.stderr}"
    return result


def tree(root: Path) -> dict:
    """Every path under root with its content hash (None for folders)."""
    return {str(p.relative_to(root)): None if p.is_dir() else sha256(p)
            for p in sorted(root.rglob("*"))}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    path = tmp_path / "stand-in" / "fazt"
    path.parent.mkdir()
    path.write_text(STAND_IN)
    path.chmod(0o755)
    return path


def paths(tmp_path: Path) -> dict:
    return {"home": tmp_path / "home", "prefix": tmp_path / "bin", "tmpdir": tmp_path / "unpack",
            "units": tmp_path / "units", "db": tmp_path / "home" / ".fazt" / "data.db"}


def test_help():
    result = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("--prefix", "--db", "--dry-run", "--systemd", "--memory-mb", "--tmpdir"):
        assert option in result.stdout


def test_unknown_option_is_one_sentence():
    result = subprocess.run(["bash", str(INSTALL), "--frobnicate"], capture_output=True,
                            text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == "install.sh: unknown option --frobnicate (see --help)."


def test_dry_run_prints_the_plan_and_changes_nothing(tmp_path: Path, stand_in: Path):
    p = paths(tmp_path)
    p["home"].mkdir()
    before = tree(tmp_path)
    result = install("--dry-run", "--binary", str(stand_in), "--prefix", str(p["prefix"]),
                     "--tmpdir", str(p["tmpdir"]), "--systemd", "--unit-dir", str(p["units"]),
                     "--password", "not shown anywhere", home=p["home"])
    assert tree(tmp_path) == before
    out = result.stdout
    assert "Dry run" in out
    assert f"+ install -m 755 {stand_in} {p['prefix']}/fazt.new" in out
    assert f"+ fazt server probe --db {p['db']}" in out
    assert "+ fazt server init --db" in out and "--password" not in out
    assert "not shown anywhere" not in out
    assert f"Writing {p['units']}/fazt.service" in out


def test_systemd_unit_has_the_budget_and_the_hardening(tmp_path: Path, stand_in: Path):
    p = paths(tmp_path)
    install("--binary", str(stand_in), "--prefix", str(p["prefix"]), "--tmpdir",
            str(p["tmpdir"]), "--systemd", "--unit-dir", str(p["units"]), home=p["home"])
    lines = (p["units"] / "fazt.service").read_text().splitlines()
    for line in ("Restart=always", "MemoryMax=138M", "NoNewPrivileges=yes",
                 "AmbientCapabilities=CAP_SYS_NICE CAP_NET_BIND_SERVICE",
                 "ProtectSystem=strict",
                 f"ReadWritePaths={p['db'].parent} {p['tmpdir']}",
                 f"ExecStart={p['prefix']}/fazt server start --db {p['db']}",
                 f"Environment=TMPDIR={p['tmpdir']}"):
        assert line in lines, line


def test_second_run_keeps_the_old_binary_and_the_database(tmp_path: Path, stand_in: Path):
    p = paths(tmp_path)
    args = ("--binary", str(stand_in), "--prefix", str(p["prefix"]), "--tmpdir",
            str(p["tmpdir"]), "--password", "long enough")
    first = install(*args, home=p["home"])
    assert "Installing" in first.stdout and p["db"].exists()
    p["db"].write_text("precious")
    second = install(*args, home=p["home"])
    assert "Upgrading" in second.stdout and "Keeping the existing database" in second.stdout
    assert (p["prefix"] / "fazt.old").exists()
    assert p["db"].read_text() == "precious"


@pytest.mark.skipif(not shutil.which("shellcheck"), reason="shellcheck is not installed")
def test_shellcheck():
    scripts = [str(INSTALL), *map(str, sorted((ROOT / "build").glob("*.sh")))]
    result = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


@pytest.mark.slow
def test_real_install_then_upgrade_keeps_the_database(tmp_path: Path, binary: Path):
    p = paths(tmp_path)
    args = ("--binary", str(binary), "--prefix", str(p["prefix"]), "--tmpdir",
            str(p["tmpdir"]), "--domain", "example.test", "--username", "owner",
            "--memory-mb", "256", "--cpus", "1")

    first = install(*args, home=p["home"])
    installed = p["prefix"] / "fazt"
    assert sha256(installed) == sha256(binary)
    assert "Budget:" in first.stdout and "Created" in first.stdout  # probe, then init
    generated = [line for line in first.stdout.splitlines() if "Generated password" in line]
    assert len(generated) == 1
    password = generated[0].rsplit(" ", 1)[1]
    assert first.stdout.count(password) == 1, "a generated password is printed once"

    env = {"PATH": "/usr/bin:/bin", "HOME": str(p["home"]), "TMPDIR": str(p["tmpdir"])}
    port = free_port()
    proc = start(installed, p["db"], port, env, tmp_path / "server.log")
    try:
        login = requests.post(f"http://127.0.0.1:{port}/api/login",
                              json={"username": "owner", "password": password},
                              headers={"Host": "admin.localhost", "X-Fazt-Request": "1"},
                              timeout=10)
        assert login.status_code == 200, login.text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)

    db_hash = sha256(p["db"])
    second = install(*args, "--systemd", "--unit-dir", str(p["units"]), home=p["home"])
    assert "Upgrading" in second.stdout and "Generated password" not in second.stdout
    assert (p["prefix"] / "fazt.old").exists()
    assert sha256(p["db"]) == db_hash, "an upgrade never touches the database"

    probe = subprocess.run([str(installed), "server", "probe", "--json", "--db", str(p["db"]),
                            "--memory-mb", "256", "--cpus", "1"], capture_output=True,
                           text=True, env=env, check=True)
    usable = json.loads(probe.stdout)["ledger"]["usable_mb"]
    unit = (p["units"] / "fazt.service").read_text().splitlines()
    assert f"MemoryMax={math.ceil(usable)}M" in unit
    assert list(p["tmpdir"].iterdir()) == []
