"""scripts/demo.py (`make demo`), run for real on a small network so it stays quick."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.deploy_support import DEMO, DemoRun, run_demo


def reported(name: str, stdout: str) -> str:
    match = re.search(rf"^{re.escape(name)}\s+(\S+)", stdout, re.MULTILINE)
    assert match, f"{name!r} not in the demo's output:\n{stdout}"
    return match.group(1)


def assert_port_closed(stdout: str) -> None:
    port = int(re.search(r"serve on 127\.0\.0\.1:(\d+)", stdout).group(1))
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


def test_demo_trains_exports_serves_scores_and_stops(small_demo: DemoRun):
    stdout = small_demo.completed.stdout
    accuracy = float(reported("served accuracy", stdout))
    max_diff = float(reported("max |served - numpy path|", stdout))
    assert 0.5 <= accuracy <= 1.0
    assert max_diff <= 1e-5
    latency = re.search(r"latency ms p50 / p90 / p99\s+(\S+) / (\S+) / (\S+)", stdout)
    p50, p90, p99 = (float(value) for value in latency.groups())
    assert 0 < p50 <= p90 <= p99
    assert "270 held-out examples, one Predict call each" in stdout
    assert "server stopped by SIGTERM, exit code 0" in stdout
    assert_port_closed(stdout)
    for left_behind in ("run/meta.json", "run/learning_curve.png", "model.onnx", "server.log"):
        assert (small_demo.out_dir / left_behind).is_file(), left_behind


def test_demo_scores_a_running_server_with_target(small_demo: DemoRun, served_demo_model: str):
    command = [sys.executable, str(DEMO), "--target", served_demo_model]
    command += ["--run", str(small_demo.out_dir / "run"), "--min-accuracy", "0.5"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    # The same model and held-out set as the demo itself: the same served accuracy.
    assert reported("served accuracy", completed.stdout) == reported(
        "served accuracy", small_demo.completed.stdout
    )
    assert float(reported("max |served - numpy path|", completed.stdout)) <= 1e-5


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
