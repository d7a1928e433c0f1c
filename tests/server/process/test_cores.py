"""`--processes auto`: affinity capped by a cgroup CPU quota (v2 cpu.max, v1 cfs quota)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bnserve.server.process.cores import cgroup_cpu_quota, usable_cores
from bnserve.server.settings import ServerSettings


def _tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_v2_quota_of_the_process_group_and_its_ancestors(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/kubepods/pod1/box\n")
    _tree(
        tmp_path / "fs",
        {
            "cpu.max": "max 100000\n",
            "kubepods/cpu.max": "400000 100000\n",
            "kubepods/pod1/cpu.max": "150000 100000\n",
            "kubepods/pod1/box/cpu.max": "max 100000\n",
        },
    )
    assert cgroup_cpu_quota(tmp_path / "fs", proc) == 1.5
    assert usable_cores(tmp_path / "fs", proc) == min(len(os.sched_getaffinity(0)), 2)


def test_v2_container_whose_path_is_absent_reads_the_mount_root(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/docker-abc.scope\n")
    _tree(tmp_path / "fs", {"cpu.max": "100000 100000\n"})
    assert cgroup_cpu_quota(tmp_path / "fs", proc) == 1.0
    assert usable_cores(tmp_path / "fs", proc) == 1


def test_v1_cfs_quota(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/\n")
    _tree(
        tmp_path / "fs",
        {
            "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "250000\n",
            "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        },
    )
    assert cgroup_cpu_quota(tmp_path / "fs", proc) == 2.5


@pytest.mark.parametrize(
    "files",
    [{}, {"cpu.max": "max 100000\n"}, {"cpu.max": "garbage\n"}, {"cpu.max": "-1 100000\n"}],
)
def test_no_quota_means_affinity(tmp_path: Path, files: dict[str, str]) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/\n")
    _tree(tmp_path / "fs", files)
    assert cgroup_cpu_quota(tmp_path / "fs", proc) is None
    assert usable_cores(tmp_path / "fs", proc) == len(os.sched_getaffinity(0))


def test_v1_unlimited_quota_is_none(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("1:cpu:/\n")
    _tree(tmp_path / "fs", {"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_quota(tmp_path / "fs", proc) is None


def test_affinity_is_respected(tmp_path: Path) -> None:
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert usable_cores(tmp_path / "none", tmp_path / "none") == 1
    finally:
        os.sched_setaffinity(0, before)
    assert usable_cores(tmp_path / "none", tmp_path / "none") == len(before)


def test_processes_setting_resolves_auto_to_the_usable_cores() -> None:
    assert ServerSettings(processes="auto").process_count() == usable_cores()
    assert ServerSettings(processes="3").process_count() == 3
    for bad in ("0", "-1", "1.5", "", "２"):
        with pytest.raises(ValueError, match="must be a whole number ≥ 1 or 'auto'"):
            ServerSettings(processes=bad)
