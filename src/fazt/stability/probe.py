"""The hardware probe: how much RAM, CPU and disk this process may really use.

A container's limit is not what psutil sees: psutil reports the host. The
binding limit sits in the cgroup that /proc/self/cgroup names for this
process (or in one of its parents), so we read it there, and the smaller of
host and container wins. Someone who knows better (a limit the probe cannot
see) says so with an argument or FAZT_MEMORY_MB / FAZT_CPUS, which win.

The roots of /proc and /sys/fs/cgroup are parameters so that tests can feed
fake trees.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

from fazt.constants import MB
from fazt.errors import FaztError

GB = 1024 * MB

# cgroup v1 writes "no limit" as a page-rounded LONG_MAX (9223372036854771712);
# anything this large cannot be a real limit.
_UNLIMITED_BYTES = 1 << 60

# The directory names under which distributions mount the v1 cpu controller.
_V1_CPU_MOUNTS = ("cpu", "cpu,cpuacct", "cpuacct,cpu")


@dataclass
class Machine:
    """What the thresholds are computed from, and where each number came from."""

    ram_mb: float
    cpus: float
    disk_gb: float
    source: dict[str, str] = field(default_factory=dict)
    host_ram_mb: float | None = None
    host_cpus: float | None = None
    replica: bool = False  # Litestream runs beside fazt (replication or a follower)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _read(path: Path) -> str | None:
    """The stripped text of a control file, or None when it is absent or unreadable."""
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _own_cgroups(proc_root: str, process: str = "self") -> dict[str, str]:
    """Controller name -> cgroup path of the process; "" is the cgroup v2 path.

    Lines of /proc/self/cgroup look like `4:memory:/docker/abc` (v1) or
    `0::/user.slice/app.scope` (v2).
    """
    text = _read(Path(proc_root) / process / "cgroup") or ""
    groups: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            groups[""] = path
        for name in controllers.split(","):
            if name:
                groups[name] = path
    return groups


def _chain(mount: Path, path: str) -> Iterator[Path]:
    """The process's own group under `mount`, then each parent up to the mount itself.

    Inside a container the mount is often the container's own group while the
    path still names it from the host's root, so a missing directory is just
    skipped and the walk goes on to the mount root.
    """
    parts = [part for part in path.split("/") if part not in ("", ".", "..")]
    for end in range(len(parts), -1, -1):
        yield mount.joinpath(*parts[:end])


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _memory_limit(groups: dict[str, str], cgroup_root: Path) -> tuple[int, str] | None:
    """The smallest memory limit in bytes over the process's groups (v2 and v1)."""
    found: list[tuple[int, str]] = []
    if "" in groups:
        for folder in _chain(cgroup_root, groups[""]):
            limit = _int(_read(folder / "memory.max"))  # "max" reads as None
            if limit is not None:
                found.append((limit, f"cgroup v2 {folder / 'memory.max'}"))
    if "memory" in groups:
        for folder in _chain(cgroup_root / "memory", groups["memory"]):
            limit = _int(_read(folder / "memory.limit_in_bytes"))
            if limit is not None and limit < _UNLIMITED_BYTES:
                found.append((limit, f"cgroup v1 {folder / 'memory.limit_in_bytes'}"))
    return min(found) if found else None


def _cpu_limit(groups: dict[str, str], cgroup_root: Path) -> tuple[float, str] | None:
    """The smallest CPU quota (in CPUs) over the process's groups (v2 and v1)."""
    found: list[tuple[float, str]] = []
    if "" in groups:
        for folder in _chain(cgroup_root, groups[""]):
            fields = (_read(folder / "cpu.max") or "").split()
            quota = _int(fields[0]) if fields else None
            period = _int(fields[1]) if len(fields) > 1 else 100000
            if quota is not None and quota > 0 and period:
                found.append((quota / period, f"cgroup v2 {folder / 'cpu.max'}"))
    if "cpu" in groups:
        for mount in _V1_CPU_MOUNTS:
            for folder in _chain(cgroup_root / mount, groups["cpu"]):
                quota = _int(_read(folder / "cpu.cfs_quota_us"))
                period = _int(_read(folder / "cpu.cfs_period_us"))
                if quota is not None and quota > 0 and period:
                    found.append((quota / period, f"cgroup v1 {folder / 'cpu.cfs_quota_us'}"))
    return min(found) if found else None


def _host_cpus(pid: int = 0) -> tuple[float, str]:
    """CPUs the process may be scheduled on (affinity and cpusets included)."""
    if hasattr(os, "sched_getaffinity"):
        try:
            return float(len(os.sched_getaffinity(pid))), "sched_getaffinity"
        except OSError:  # the process is gone: this one's
            return float(len(os.sched_getaffinity(0))), "sched_getaffinity"
    return float(psutil.cpu_count() or 1), "psutil"


def _environ_of(pid: int, proc_root: str, own: Mapping[str, str]) -> Mapping[str, str]:
    """Another process's environment (its FAZT_MEMORY_MB), or `own` when it cannot be read."""
    try:
        raw = (Path(proc_root) / str(pid) / "environ").read_bytes()
    except OSError:
        return own
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _override(
    value: float | None, argument: str, name: str, environ: Mapping[str, str]
) -> tuple[float, str]:
    """An explicit argument, else the environment variable; 0 means none was given.
    FaztError (one sentence, no traceback) for a value that is not a finite positive
    number, or one the Machine's rounding to hundredths would make 0."""
    if value is not None:
        if not (math.isfinite(value) and round(value, 2) > 0):
            raise FaztError(f"{argument} must be a positive number (at least 0.01), "
                            f"not {value:g}.")
        return float(value), "argument"
    text = environ.get(name, "").strip()
    if not text:
        return 0.0, ""
    try:
        number = float(text)
    except ValueError:
        number = 0.0
    if not (math.isfinite(number) and round(number, 2) > 0):
        raise FaztError(f"{name} must be a positive number (at least 0.01), not {text!r}.")
    return number, f"environment {name}"


def _free_disk_gb(db_path: str | None) -> tuple[float, str]:
    """Free space where the database lives (its nearest existing folder), else in cwd."""
    folder = Path(db_path).expanduser().absolute().parent if db_path else Path.cwd()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free / GB, f"free space at {folder}"


def probe(
    db_path: str | None = None,
    memory_mb: float | None = None,
    cpus: float | None = None,
    *,
    proc_root: str = "/proc",
    cgroup_root: str = "/sys/fs/cgroup",
    environ: Mapping[str, str] = os.environ,
    pid: int | None = None,
) -> Machine:
    """Measure the machine this process (or process `pid`: a running server) runs in; the
    smaller of host and container wins."""
    source: dict[str, str] = {}
    groups = _own_cgroups(proc_root, str(pid) if pid else "self")
    if pid:
        environ = _environ_of(pid, proc_root, environ)
    root = Path(cgroup_root)

    host_ram_mb = psutil.virtual_memory().total / MB
    ram_mb, source["ram"] = host_ram_mb, "psutil (host)"
    container_ram = _memory_limit(groups, root)
    if container_ram is not None and container_ram[0] / MB < host_ram_mb:
        ram_mb, source["ram"] = container_ram[0] / MB, container_ram[1]
    declared_ram, how = _override(memory_mb, "--memory-mb", "FAZT_MEMORY_MB", environ)
    if declared_ram:
        ram_mb, source["ram"] = declared_ram, how

    host_cpus, source["cpus"] = _host_cpus(pid or 0)
    machine_cpus = host_cpus
    container_cpus = _cpu_limit(groups, root)
    if container_cpus is not None and container_cpus[0] < host_cpus:
        machine_cpus, source["cpus"] = container_cpus
    declared_cpus, how = _override(cpus, "--cpus", "FAZT_CPUS", environ)
    if declared_cpus:
        machine_cpus, source["cpus"] = declared_cpus, how

    disk_gb, source["disk"] = _free_disk_gb(db_path)
    return Machine(
        ram_mb=round(ram_mb, 2),
        cpus=round(machine_cpus, 2),
        disk_gb=round(disk_gb, 2),
        source=source,
        host_ram_mb=round(host_ram_mb, 2),
        host_cpus=host_cpus,
    )
