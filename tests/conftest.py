"""Fixtures every test package may use: a real, tiny filesystem to fill up; and, for the whole
suite, the float32 data cache (training/data/cache.py) in a temporary directory."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


class SmallDisks:
    """tmpfs mounts of a given size under a test's tmp_path: writes fail with a real ENOSPC."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.mounted: list[Path] = []

    def mount(self, kib: int) -> Path:
        point = self.root / f"disk{len(self.mounted)}"
        point.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k,mode=755", "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        self.mounted.append(point)
        return point

    def resize(self, point: Path, kib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(point)], check=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisks]:
    """Needs root to mount (CI runs as root); skipped elsewhere. Unmounted after the test."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    disks = SmallDisks(tmp_path)
    yield disks
    for point in disks.mounted:
        subprocess.run(["umount", "--lazy", str(point)], check=True)


@pytest.fixture(autouse=True)
def _data_cache_in_tmp(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("BNSERVE_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "data-cache"))
