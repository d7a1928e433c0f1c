"""The built wheel: one top-level name (bnserve), the built-in data set inside it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_only_bnserve_and_carries_the_digits(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    # issue 30: `project.license` as a TOML table printed a deprecation twice in every install
    assert "deprecated" not in built.stderr.lower(), built.stderr
    (wheel,) = tmp_path.glob("bnserve-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith("info")}
    assert top_level == {"bnserve"}
    for module in ("bnserve/cli.py", "bnserve/server/cli.py", "bnserve/training/cli.py"):
        assert module in names
    assert "bnserve/export/cli.py" in names
    assert "bnserve/training/data/datasets/digits.csv.gz" in names
    assert not any("/gen/" in name and "__pycache__" in name for name in names)
