"""The hardware probe against fake /proc and cgroup trees (v1, v2, none)."""

from __future__ import annotations

import shutil
from pathlib import Path

import psutil
import pytest
from conftest import fazt, fazt_env

from fazt.errors import FaztError
from fazt.stability.probe import MB, probe

HOST_MB = psutil.virtual_memory().total / MB
UNLIMITED_V1 = "9223372036854771712"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def tree(tmp_path: Path, proc_cgroup: str) -> dict:
    """A fake /proc whose self/cgroup says `proc_cgroup`, and an empty cgroup root."""
    write(tmp_path / "proc" / "self" / "cgroup", proc_cgroup)
    (tmp_path / "cg").mkdir(exist_ok=True)
    return {"proc_root": str(tmp_path / "proc"), "cgroup_root": str(tmp_path / "cg"), "environ": {}}


V1_CGROUP = "\n".join(
    [
        "9:name=systemd:/",
        "4:memory:/process_api/abc",
        "2:cpu,cpuacct:/process_api/abc",
        "0::/",
    ]
)


def test_v1_limit_in_own_group_wins_over_unlimited_root(tmp_path):
    roots = tree(tmp_path, V1_CGROUP)
    cg = tmp_path / "cg"
    write(cg / "memory" / "memory.limit_in_bytes", UNLIMITED_V1)
    write(cg / "memory" / "process_api" / "memory.limit_in_bytes", UNLIMITED_V1)
    write(cg / "memory" / "process_api" / "abc" / "memory.limit_in_bytes", str(300 * MB))
    machine = probe(**roots)
    assert machine.ram_mb == 300
    assert "process_api/abc/memory.limit_in_bytes" in machine.source["ram"]
    assert "cgroup v1" in machine.source["ram"]
    assert machine.host_ram_mb == pytest.approx(HOST_MB, abs=0.01)


def test_v1_limit_only_in_a_parent(tmp_path):
    roots = tree(tmp_path, V1_CGROUP)
    cg = tmp_path / "cg"
    write(cg / "memory" / "memory.limit_in_bytes", UNLIMITED_V1)
    write(cg / "memory" / "process_api" / "memory.limit_in_bytes", str(200 * MB))
    write(cg / "memory" / "process_api" / "abc" / "memory.limit_in_bytes", UNLIMITED_V1)
    machine = probe(**roots)
    assert machine.ram_mb == 200
    assert machine.source["ram"].endswith("process_api/memory.limit_in_bytes")


def test_v1_unlimited_everywhere_means_host_ram(tmp_path):
    roots = tree(tmp_path, V1_CGROUP)
    cg = tmp_path / "cg"
    write(cg / "memory" / "memory.limit_in_bytes", UNLIMITED_V1)
    write(cg / "memory" / "process_api" / "abc" / "memory.limit_in_bytes", UNLIMITED_V1)
    machine = probe(**roots)
    assert machine.ram_mb == pytest.approx(HOST_MB, abs=0.01)
    assert "psutil" in machine.source["ram"]


def test_v1_container_mount_is_its_own_group(tmp_path):
    """Inside a container the path names a group the mount does not show: use the root."""
    roots = tree(tmp_path, "4:memory:/docker/0123\n3:cpu:/docker/0123")
    cg = tmp_path / "cg"
    write(cg / "memory" / "memory.limit_in_bytes", str(512 * MB))
    write(cg / "cpu" / "cpu.cfs_quota_us", "50000")
    write(cg / "cpu" / "cpu.cfs_period_us", "100000")
    machine = probe(**roots)
    assert machine.ram_mb == 512
    assert machine.cpus == 0.5


def test_v1_cpu_quota_under_cpu_cpuacct_mount(tmp_path):
    roots = tree(tmp_path, V1_CGROUP)
    group = tmp_path / "cg" / "cpu,cpuacct" / "process_api" / "abc"
    write(group / "cpu.cfs_quota_us", "100000")
    write(group / "cpu.cfs_period_us", "100000")
    write(tmp_path / "cg" / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1")
    write(tmp_path / "cg" / "cpu,cpuacct" / "cpu.cfs_period_us", "100000")
    machine = probe(**roots)
    assert machine.cpus == 1
    assert "cpu.cfs_quota_us" in machine.source["cpus"]


def test_v1_cpu_quota_unlimited(tmp_path):
    roots = tree(tmp_path, V1_CGROUP)
    write(tmp_path / "cg" / "cpu" / "cpu.cfs_quota_us", "-1")
    write(tmp_path / "cg" / "cpu" / "cpu.cfs_period_us", "100000")
    machine = probe(**roots)
    assert machine.cpus == machine.host_cpus


def test_v2_memory_max_number_and_cpu_max(tmp_path):
    roots = tree(tmp_path, "0::/system.slice/fazt.service")
    group = tmp_path / "cg" / "system.slice" / "fazt.service"
    write(group / "memory.max", str(256 * MB))
    write(group / "cpu.max", "200000 100000")
    write(tmp_path / "cg" / "system.slice" / "memory.max", "max")
    machine = probe(**roots)
    assert machine.ram_mb == 256
    assert machine.source["ram"].startswith("cgroup v2")
    assert machine.cpus == min(2, machine.host_cpus)


def test_v2_max_means_unlimited(tmp_path):
    roots = tree(tmp_path, "0::/app")
    write(tmp_path / "cg" / "app" / "memory.max", "max")
    write(tmp_path / "cg" / "app" / "cpu.max", "max 100000")
    machine = probe(**roots)
    assert machine.ram_mb == pytest.approx(HOST_MB, abs=0.01)
    assert machine.cpus == machine.host_cpus


def test_v2_smallest_limit_in_the_chain_wins(tmp_path):
    roots = tree(tmp_path, "0::/a/b")
    write(tmp_path / "cg" / "a" / "memory.max", str(128 * MB))
    write(tmp_path / "cg" / "a" / "b" / "memory.max", str(1024 * MB))
    write(tmp_path / "cg" / "a" / "cpu.max", "150000 100000")
    machine = probe(**roots)
    assert machine.ram_mb == 128
    assert machine.cpus == min(1.5, machine.host_cpus)


def test_no_cgroup_at_all(tmp_path):
    roots = {
        "proc_root": str(tmp_path / "no-proc"),
        "cgroup_root": str(tmp_path / "no-cgroup"),
        "environ": {},
    }
    machine = probe(**roots)
    assert machine.ram_mb == pytest.approx(HOST_MB, abs=0.01)
    assert machine.cpus == machine.host_cpus >= 1
    assert machine.source["ram"].startswith("psutil")


def test_container_larger_than_host_is_ignored(tmp_path):
    """The smaller of host and container wins, in both directions."""
    roots = tree(tmp_path, "0::/big")
    write(tmp_path / "cg" / "big" / "memory.max", str(int(HOST_MB * 2) * MB))
    write(tmp_path / "cg" / "big" / "cpu.max", f"{int((psutil.cpu_count() or 1) * 4)}00000 100000")
    machine = probe(**roots)
    assert machine.ram_mb == pytest.approx(HOST_MB, abs=0.01)
    assert machine.cpus == machine.host_cpus


def test_arguments_win_over_container_and_environment(tmp_path):
    roots = tree(tmp_path, "0::/app")
    write(tmp_path / "cg" / "app" / "memory.max", str(256 * MB))
    roots["environ"] = {"FAZT_MEMORY_MB": "512", "FAZT_CPUS": "3"}
    machine = probe(memory_mb=1024, cpus=2, **roots)
    assert (machine.ram_mb, machine.cpus) == (1024, 2)
    assert machine.source["ram"] == machine.source["cpus"] == "argument"


def test_environment_wins_over_container(tmp_path):
    roots = tree(tmp_path, "0::/app")
    write(tmp_path / "cg" / "app" / "memory.max", str(256 * MB))
    roots["environ"] = {"FAZT_MEMORY_MB": "700", "FAZT_CPUS": "1.5"}
    machine = probe(**roots)
    assert (machine.ram_mb, machine.cpus) == (700, 1.5)
    assert machine.source["ram"] == "environment FAZT_MEMORY_MB"


@pytest.mark.parametrize("bad", ["lots", "-5", "0", "nan", "inf", "0.001"])
def test_bad_environment_value_is_a_clear_error(tmp_path, bad):
    roots = tree(tmp_path, "0::/")
    roots["environ"] = {"FAZT_MEMORY_MB": bad}
    with pytest.raises(FaztError, match="FAZT_MEMORY_MB"):
        probe(**roots)


def test_disk_is_free_space_near_the_database(tmp_path):
    roots = tree(tmp_path, "0::/")
    machine = probe(str(tmp_path / "not" / "yet" / "data.db"), **roots)
    free_gb = shutil.disk_usage(tmp_path).free / 1024**3
    assert machine.disk_gb == pytest.approx(free_gb, abs=0.5)
    assert machine.source["disk"] == f"free space at {tmp_path}"
    assert machine.as_dict()["disk_gb"] == machine.disk_gb


def test_another_process_is_probed_through_its_own_entries(tmp_path):
    """probe(pid=N): the machine a running server sees (its cgroup, its FAZT_* settings),
    not the one of the command asking."""
    roots = tree(tmp_path, "0::/")  # the asking process: no limit at all
    write(tmp_path / "proc" / "4242" / "cgroup", "0::/server")
    (tmp_path / "proc" / "4242" / "environ").write_bytes(b"FAZT_CPUS=1.5\0PATH=/bin\0")
    write(tmp_path / "cg" / "server" / "memory.max", str(256 * MB))
    machine = probe(pid=4242, **roots)
    assert (machine.ram_mb, machine.cpus) == (256, 1.5)
    assert machine.source["ram"] == f"cgroup v2 {tmp_path / 'cg' / 'server' / 'memory.max'}"


@pytest.mark.parametrize("flag, value", [("--memory-mb", "nan"), ("--memory-mb", "0"),
                                         ("--memory-mb", "-5"), ("--cpus", "inf"),
                                         ("--cpus", "1e-300")])
def test_a_declared_machine_that_is_no_number_is_one_sentence(tmp_path, flag, value):
    """`server probe`/`init`/`recalibrate --cpus inf` (or FAZT_CPUS=inf): a sentence and
    exit 1, not a ValueError or QuickJS traceback; init leaves no database behind."""
    probed = fazt("server", "probe", f"{flag}={value}", check=False)
    assert probed.returncode == 1 and "Traceback" not in probed.stderr, probed.stderr
    assert f"{flag} must be a positive number" in probed.stderr
    db = tmp_path / "d.db"
    made = fazt("server", "init", "--domain", "localhost", "--username", "o", "--password",
                "correct horse battery", f"{flag}={value}", "--db", str(db), check=False)
    assert made.returncode == 1 and "Traceback" not in made.stderr and not db.exists()
    env = fazt("server", "probe", check=False, env=fazt_env(FAZT_CPUS=value))
    assert env.returncode == 1 and "FAZT_CPUS must be a positive number" in env.stderr
