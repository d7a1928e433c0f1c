"""`--cpu-affinity auto|none|LIST`: which cores each serving process runs on.

A Python gRPC server whose threads roam over cores hands the GIL between grpc's polling thread
and its handler threads across cores, and spends more CPU per call than the same server pinned
to one core (docs/serving.md, Placement). This module decides the cores of each process (a
pure plan) and pins the process it runs in; the supervisor passes each child its plan as an
explicit `--cpu-affinity LIST` (or `none`), so a child never plans for itself.

Every thread a pinned process starts afterwards (grpc's, onnxruntime's, HTTP's, metrics')
inherits its core. A plan never leaves the cores this process may use (server/process/cores.py:
the affinity mask within the cgroup cpuset).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

from bnserve.server.process.cores import format_cpu_list, parse_cpu_list

AUTO = "auto"
NONE = "none"


@dataclass(frozen=True)
class Placement:
    """The cores of each serving process (index i: process i), or None where it is not
    pinned, with what the start-up log should say about it."""

    cores: tuple[frozenset[int] | None, ...]
    notes: tuple[str, ...] = ()  # why a setting pinned nothing (logged at INFO)
    warnings: tuple[str, ...] = ()  # pins that share a core (logged at WARNING)

    def describe(self, index: int) -> str:
        """'pinned to core 1', 'pinned to cores 0-3' or 'not pinned' for process index."""
        cores = self.cores[index]
        if cores is None:
            return "not pinned"
        return f"pinned to core{'s' if len(cores) > 1 else ''} {format_cpu_list(cores)}"

    def flag(self, index: int) -> str:
        """The --cpu-affinity value that gives a child process exactly its cores."""
        cores = self.cores[index]
        return NONE if cores is None else format_cpu_list(cores)


def setting_problem(value: str) -> str | None:
    """What a --cpu-affinity value must be when its form is wrong ("must be …"), or None (the
    cores are checked against this process's mask by plan_placement)."""
    if value in (AUTO, NONE):
        return None
    try:
        parse_cpu_list(value)
    except ValueError as error:
        return f"must be 'auto', 'none' or a CPU list like 0-1,3 ({error})"
    return None


def plan_placement(
    setting: str,
    count: int,
    allowed: tuple[int, ...],
    *,
    quota: float | None = None,
    intra_op_threads: int = 1,
    current_core: int | None = None,
) -> Placement:
    """The cores of each of `count` serving processes.

    allowed: the cores this process may use, ascending; quota: a cgroup CPU quota in cores;
    current_core: the core this process runs on now (where auto pins a single process).
    - none: nothing pinned.
    - LIST: split in `count` contiguous runs (one process: the whole list); fewer cores than
      processes: process i gets the (i mod len)-th, with a warning. Raises ValueError when LIST
      names a core outside `allowed`.
    - auto: process i of several gets the i-th allowed core; one process gets the core it runs
      on (the kernel picks an idle one when a program starts, so several single-process servers
      on one machine spread out instead of stacking on the first core); more processes than
      cores share them, with a warning. auto pins nothing, and says why, when affinity is
      unknown, when onnxruntime is asked for more than one intra-op thread (they need more
      than one core), or when a CPU quota is smaller than the mask (a shared node: every
      server pinned to the node's first cores would stack there).
    """
    if setting == NONE:
        return Placement((None,) * count)
    if setting != AUTO:
        return _plan_list(parse_cpu_list(setting), count, allowed)
    unpinned = (None,) * count
    if not allowed:
        return Placement(unpinned, ("--cpu-affinity auto: CPU affinity is unknown here",))
    if intra_op_threads != 1:
        return Placement(
            unpinned,
            (
                f"--cpu-affinity auto pins nothing: --intra-op-threads {intra_op_threads} asks "
                "onnxruntime for more than one core per process",
            ),
        )
    if quota is not None and math.ceil(quota) < len(allowed):
        return Placement(
            unpinned,
            (
                f"--cpu-affinity auto pins nothing: a CPU quota of {quota:g} cores over "
                f"{len(allowed)} allowed cores ({format_cpu_list(allowed)}) means cores shared "
                "with others; pass --cpu-affinity LIST to pin anyway",
            ),
        )
    if count == 1:
        core = current_core if current_core in allowed else allowed[0]
        return Placement((frozenset({core}),))
    return _one_core_each(allowed, count)


def _plan_list(listed: frozenset[int], count: int, allowed: tuple[int, ...]) -> Placement:
    outside = listed - set(allowed)
    if outside:
        where = format_cpu_list(allowed) if allowed else "unknown here"
        raise ValueError(
            f"--cpu-affinity {format_cpu_list(listed)}: "
            f"core{'s' if len(outside) > 1 else ''} {format_cpu_list(outside)} "
            f"outside the cores this process may use ({where})"
        )
    ordered = tuple(sorted(listed))
    if len(ordered) < count:
        return _one_core_each(ordered, count)
    runs = tuple(
        frozenset(ordered[i * len(ordered) // count : (i + 1) * len(ordered) // count])
        for i in range(count)
    )
    return Placement(runs)


def _one_core_each(cores: tuple[int, ...], count: int) -> Placement:
    placed = tuple(frozenset({cores[i % len(cores)]}) for i in range(count))
    warnings: tuple[str, ...] = ()
    if count > len(cores):
        warnings = (
            f"{count} serving processes share {len(cores)} core"
            f"{'s' if len(cores) > 1 else ''} ({format_cpu_list(cores)}): each gets less than "
            "a core; fewer processes, or more cores in the affinity mask, serve better",
        )
    return Placement(placed, warnings=warnings)


def current_core() -> int | None:
    """The core this process last ran on (/proc/self/stat field 39), None when unknown."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[36])
    except (OSError, IndexError, ValueError):
        return None


def pin_process(cores: frozenset[int]) -> None:
    """Pin every thread of this process to cores (threads started later inherit it)."""
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that has just exited
            os.sched_setaffinity(int(task), cores)
