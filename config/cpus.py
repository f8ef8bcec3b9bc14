"""How many CPUs this process may use: the CPUs it may be scheduled on, capped by
its cgroup's CPU quota.

In a container limited to two CPUs on a 32-core node (``docker run --cpus 2``,
a Kubernetes CPU limit), ``os.cpu_count()`` says 32: only the cgroup knows the
quota. cgroup v2 keeps it in ``cpu.max`` ("200000 100000": 200 ms of CPU time
per 100 ms period, two CPUs; "max 100000" for none), cgroup v1 in
``cpu.cfs_quota_us`` (-1 for none) and ``cpu.cfs_period_us``. Quotas nest, so the
tightest one from the process's own cgroup up to the root of the hierarchy counts.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def available_cpus(*, cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP) -> int:
    """The CPUs to size a process pool for: at least one."""
    cpus = _schedulable_cpus()
    limit = cgroup_cpu_limit(cgroup_root=cgroup_root, proc_cgroup=proc_cgroup)
    if limit is None:
        return cpus
    return max(1, min(cpus, math.ceil(limit)))


def cgroup_cpu_limit(
    *, cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_SELF_CGROUP
) -> float | None:
    """The CPU quota in CPUs (1.5 for 150 ms a 100 ms period), or None without one."""
    limits = [
        limit
        for folder in _cgroup_folders(cgroup_root, proc_cgroup)
        if (limit := _quota_in(folder)) is not None
    ]
    return min(limits, default=None)


def _schedulable_cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cgroup_folders(cgroup_root: Path, proc_cgroup: Path) -> list[Path]:
    """The process's cgroup folders with the CPU controller and their ancestors, for
    v2 (the unified hierarchy, "0::/path") and v1 (a "cpu" hierarchy,
    "4:cpu,cpuacct:/path"). In a container the folder the line names may not
    exist under the container's own mount, where the mount's root is its cgroup."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    folders = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            mount = cgroup_root
        elif "cpu" in controllers.split(","):
            mount = cgroup_root / controllers
            if not mount.is_dir():
                mount = cgroup_root / "cpu"
        else:
            continue
        folder = mount / path.lstrip("/")
        while True:
            folders.append(folder)
            if folder == mount:
                break
            folder = folder.parent
    return folders


def _quota_in(folder: Path) -> float | None:
    try:
        if (folder / "cpu.max").exists():
            quota, period = (folder / "cpu.max").read_text().split()
            return None if quota == "max" else int(quota) / int(period)
        if (folder / "cpu.cfs_quota_us").exists():
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
            return None if quota < 0 else quota / period
    except (OSError, ValueError):
        return None
    return None
