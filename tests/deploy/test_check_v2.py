"""deploy/check_v2.py: the Open Inference Protocol check check-image.sh runs on the container.

tritonclient's generated code defines protobuf package `inference`, as the server's own v2 stubs
do; the check runs in a subprocess so the two never meet in one interpreter.
"""

from __future__ import annotations

import subprocess
import sys

from tests.support.deploy_support import REPO, DemoRun

CHECK_V2 = REPO / "deploy" / "check_v2.py"


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(CHECK_V2), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_check_v2_passes_on_the_model_the_run_made(
    small_demo: DemoRun, served_demo_model: str, demo_http_port: int
):
    run_dir = str(small_demo.out_dir / "run")
    http_target = f"127.0.0.1:{demo_http_port}"
    completed = run_check(
        "--target", served_demo_model, "--http-target", http_target, "--run", run_dir
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "v2 ModelInfer (gRPC) on 32 rows" in completed.stdout
    assert "v2 ModelInfer (HTTP) on 32 rows" in completed.stdout


def test_check_v2_fails_against_another_run(
    small_demo: DemoRun, served_demo_model: str, tmp_path_factory
):
    """Reference outputs from a differently seeded run must not match the served model."""
    other = tmp_path_factory.mktemp("other")
    command = [sys.executable, "-m", "bnserve.cli", "train", "--out", str(other / "run")]
    command += ["--hidden", "32", "--epochs", "3", "--seed", "7", "--no-progress"]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    completed = run_check("--target", served_demo_model, "--run", str(other / "run"))
    assert completed.returncode == 1
    assert "ModelInfer probabilities differ by" in completed.stderr


def test_check_v2_fails_on_an_unknown_model_name(small_demo: DemoRun, served_demo_model: str):
    run_dir = str(small_demo.out_dir / "run")
    completed = run_check("--target", served_demo_model, "--run", run_dir, "--model", "nope")
    assert completed.returncode == 1
    assert "nope" in completed.stderr
    assert "Traceback" not in completed.stderr
