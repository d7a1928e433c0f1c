"""Which cores this process may use: its CPU affinity within its cgroup cpuset, and how many
of them a cgroup CPU quota lets it keep busy.

A container limited with `--cpus 2` (cgroup v2 `cpu.max` "200000 100000", or v1
`cpu.cfs_quota_us` / `cpu.cfs_period_us`) still sees every core of the node in
`os.cpu_count()`; `--processes auto` must see 2.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_CGROUP = Path("/proc/self/cgroup")


def usable_cores(cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP) -> int:
    """Cores this process may run on (allowed_cores), capped by the cgroup CPU quota rounded
    up; at least 1."""
    cores: int | None = len(allowed_cores(cgroup_root, proc_cgroup))
    if not cores:
        cores = os.cpu_count()
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


def allowed_cores(
    cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP
) -> tuple[int, ...]:
    """The cores this process may run on, ascending: its affinity mask, within its cgroup
    cpuset when one can be read (the kernel keeps the mask inside the cpuset; reading both
    keeps a pin inside them even if one lags the other); () where affinity is unknown."""
    if not hasattr(os, "sched_getaffinity"):
        return ()
    mask = set(os.sched_getaffinity(0))
    cpuset = cgroup_cpuset(cgroup_root, proc_cgroup)
    inside = mask & cpuset if cpuset else mask
    return tuple(sorted(inside or mask))


def cgroup_cpuset(
    cgroup_root: Path = CGROUP_ROOT, proc_cgroup: Path = PROC_CGROUP
) -> frozenset[int]:
    """The effective cpuset of this process's cgroup (v2 `cpuset.cpus.effective`, v1
    `cpuset.effective_cpus`) from its deepest directory that exists here; empty when none."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        lines = []
    candidates: list[Path] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        relative = Path(path.lstrip("/"))
        if hierarchy == "0" and controllers == "":
            mount, name = cgroup_root, "cpuset.cpus.effective"
        elif "cpuset" in controllers.split(","):
            mount, name = cgroup_root / "cpuset", "cpuset.effective_cpus"
        else:
            continue
        candidates += [mount / relative / name, *[mount / up / name for up in relative.parents]]
    if not lines:
        candidates.append(cgroup_root / "cpuset.cpus.effective")
    for candidate in candidates:
        try:
            text = candidate.read_text().strip()
        except OSError:
            continue
        try:
            cores = parse_cpu_list(text)
        except ValueError:
            continue
        if cores:
            return cores
    return frozenset()


def parse_cpu_list(text: str) -> frozenset[int]:
    """Cores of a Linux CPU list ("0-3,6", as taskset -c and cpuset files write them); raises
    ValueError naming the part that is not one."""
    cores: set[int] = set()
    for part in text.strip().split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if match is None:
            raise ValueError(f"{part.strip()!r} is not a core number or a range like 0-3")
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if high < low:
            raise ValueError(f"{part.strip()!r} is a range that runs backwards")
        cores.update(range(low, high + 1))
    return frozenset(cores)


def format_cpu_list(cores: frozenset[int] | tuple[int, ...] | set[int]) -> str:
    """A CPU list with ranges folded ({0, 1, 2, 5} → "0-2,5"), as taskset -c prints one."""
    parts: list[str] = []
    ordered = sorted(cores)
    start = previous = ordered[0] if ordered else 0
    for core in [*ordered[1:], None]:
        if core is not None and core == previous + 1:
            previous = core
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if core is not None:
            start = previous = core
    return ",".join(parts) if ordered else ""
