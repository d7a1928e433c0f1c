"""How many cores this process may use: its CPU affinity, capped by a cgroup CPU quota.

A container limited with `--cpus 2` (cgroup v2 `cpu.max` "200000 100000", or v1
`cpu.cfs_quota_us` / `cpu.cfs_period_us`) still sees every core of the node in
`os.cpu_count()`; `--processes auto` must see 2.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def usable_cores(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """Cores this process may run on (sched_getaffinity), capped by the cgroup CPU quota
    rounded up; at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = cgroup_cpu_quota(cgroup_root, proc_cgroup)
    if quota is not None:
        cores = min(cores or 1, math.ceil(quota))
    return max(1, cores or 1)


def cgroup_cpu_quota(
    cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP
) -> float | None:
    """The tightest CPU quota (in cores) on this process's cgroup or its ancestors, v2 or v1;
    None when there is none or it cannot be read."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    quotas = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # v2, the unified hierarchy
            quotas += _quotas_up(cgroup_root, path, _v2_quota)
        elif "cpu" in controllers.split(","):  # v1, the cpu controller's hierarchy
            for mount in (controllers, "cpu", "cpu,cpuacct"):
                if (cgroup_root / mount).is_dir():
                    quotas += _quotas_up(cgroup_root / mount, path, _v1_quota)
                    break
    if not lines:  # no /proc/self/cgroup: look at the root of a v2 mount alone
        quotas += [quota for quota in [_v2_quota(cgroup_root)] if quota is not None]
    return min(quotas) if quotas else None


def _quotas_up(mount: Path, path: str, read: Callable[[Path], float | None]) -> list[float]:
    """Quotas of the cgroup at path under mount and of every ancestor that exists there (in a
    container the host's path is often absent and the mount's root is the container's group)."""
    quotas = []
    relative = Path(path.lstrip("/"))
    for directory in [mount / relative, *[mount / parent for parent in relative.parents]]:
        if directory.is_dir():
            quota = read(directory)
            if quota is not None:
                quotas.append(quota)
    return quotas


def _v2_quota(directory: Path) -> float | None:
    try:
        fields = (directory / "cpu.max").read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
