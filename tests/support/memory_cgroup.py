"""Run a command in a child cgroup v1 memory controller with a hard limit (tests only)."""

from __future__ import annotations

import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

MEMORY_ROOT = Path("/sys/fs/cgroup/memory")


@dataclass(frozen=True)
class LimitedRun:
    returncode: int
    stderr: str
    peak_bytes: int  # memory.max_usage_in_bytes: RSS and page cache charged to the cgroup
    oom_kills: int


def unavailable_reason() -> str | None:
    """Why a memory cgroup cannot be made here, or None when it can."""
    if not (MEMORY_ROOT / "memory.limit_in_bytes").is_file():
        return f"no cgroup v1 memory controller at {MEMORY_ROOT}"
    probe = MEMORY_ROOT / f"bnserve-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as error:
        return f"cannot create a cgroup under {MEMORY_ROOT} ({error}; needs root)"
    return None


def run_limited(command: list[str], limit_bytes: int, timeout: float) -> LimitedRun:
    """Run `command` inside a fresh memory cgroup limited to `limit_bytes`, then remove it."""
    group = MEMORY_ROOT / f"bnserve-test-{uuid.uuid4().hex[:8]}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit_bytes))
        enter = f'echo $$ > {group / "cgroup.procs"} && exec "$@"'
        done = subprocess.run(
            ["sh", "-c", enter, "sh", *command],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        peak = int((group / "memory.max_usage_in_bytes").read_text())
        control = dict(
            line.split() for line in (group / "memory.oom_control").read_text().splitlines()
        )
        return LimitedRun(done.returncode, done.stderr, peak, int(control.get("oom_kill", 0)))
    finally:
        for _ in range(50):  # the charges move to the parent once the last task is gone
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)
