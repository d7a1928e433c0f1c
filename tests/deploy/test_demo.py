"""scripts/demo.py (`make demo`), run for real on a small network so it stays quick."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SMALL_NETWORK = ["--hidden", "32", "--epochs", "3", "--warmup-calls", "2"]


def run_demo(out_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(REPO / "scripts" / "demo.py"), "--out-dir", str(out_dir)]
    return subprocess.run(
        [*command, *SMALL_NETWORK, *extra], capture_output=True, text=True, timeout=300
    )


def reported(name: str, stdout: str) -> str:
    match = re.search(rf"^{re.escape(name)}\s+(\S+)", stdout, re.MULTILINE)
    assert match, f"{name!r} not in the demo's output:\n{stdout}"
    return match.group(1)


def assert_port_closed(stdout: str) -> None:
    port = int(re.search(r"serve on 127\.0\.0\.1:(\d+)", stdout).group(1))
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


def test_demo_trains_exports_serves_scores_and_stops(tmp_path: Path):
    completed = run_demo(tmp_path / "demo", "--min-accuracy", "0.5")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    accuracy = float(reported("served accuracy", completed.stdout))
    max_diff = float(reported("max |served - numpy path|", completed.stdout))
    assert 0.5 <= accuracy <= 1.0
    assert max_diff <= 1e-5
    p50, p90, p99 = (
        float(value)
        for value in re.search(
            r"latency ms p50 / p90 / p99\s+(\S+) / (\S+) / (\S+)", completed.stdout
        ).groups()
    )
    assert 0 < p50 <= p90 <= p99
    assert "270 held-out examples, one Predict call each" in completed.stdout
    assert "exit code 0" in completed.stdout
    assert_port_closed(completed.stdout)

    out_dir = tmp_path / "demo"
    for left_behind in ("run/meta.json", "run/learning_curve.png", "model.onnx", "server.log"):
        assert (out_dir / left_behind).is_file(), left_behind


def test_demo_fails_when_served_accuracy_misses_the_bar(tmp_path: Path):
    completed = run_demo(tmp_path / "demo", "--min-accuracy", "1.01")
    assert completed.returncode == 1
    assert re.search(r"demo: FAILED: accuracy \S+ < 1\.01", completed.stderr), completed.stderr
    assert_port_closed(completed.stdout)


def test_demo_starts_afresh_over_an_old_run(tmp_path: Path):
    """A second demo into the same directory replaces the run and the model, not resumes."""
    out_dir = tmp_path / "demo"
    out_dir.mkdir()
    (out_dir / "model.onnx").write_bytes(b"not a model")
    (out_dir / "run").mkdir()
    (out_dir / "run" / "stale.txt").write_text("from an older demo")
    completed = run_demo(out_dir, "--min-accuracy", "0")
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    assert not (out_dir / "run" / "stale.txt").exists()
    assert (out_dir / "model.onnx").read_bytes()[:11] != b"not a model"
