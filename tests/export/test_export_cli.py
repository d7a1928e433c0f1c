"""`bnserve export`: a verified model on success; on every bad input a clear error, exit ≠ 0,
and nothing written."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx

import bnserve.cli
from bnserve.export.cli import main
from tests.support.export_failure import assert_fails_cleanly


def test_export_writes_a_verified_model(synthetic_run, out_dir, capsys) -> None:
    out = out_dir / "model.onnx"

    assert main([str(synthetic_run()), "--out", str(out)]) == 0

    printed = capsys.readouterr().out
    assert f"wrote {out} (folded" in printed
    assert "onnxruntime vs numpy on 200 held-out examples and 18 at the edges" in printed
    assert "each layer's pre-activations vs the run's: " in printed and "; bound 4)" in printed
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    assert [path.name for path in out_dir.iterdir()] == ["model.onnx"]


def test_export_real_trained_runs(trained_runs, out_dir, capsys) -> None:
    for name, run_dir in trained_runs.items():
        assert main([str(run_dir), "--out", str(out_dir / f"{name}.onnx")]) == 0, name
        assert (
            main([str(run_dir), "--out", str(out_dir / f"{name}-unfolded.onnx"), "--unfolded"]) == 0
        )
    assert "max abs error" in capsys.readouterr().out


def test_missing_directory(tmp_path, out_dir, capsys) -> None:
    assert_fails_cleanly(
        capsys,
        [str(tmp_path / "nope"), "--out", str(out_dir / "m.onnx")],
        out_dir,
        "nope",
        "nope: does not exist (a run directory of bnserve train is needed)",
    )


def test_directory_without_a_run(tmp_path, out_dir, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_fails_cleanly(
        capsys, [str(empty), "--out", str(out_dir / "m.onnx")], out_dir, "meta.json", "missing"
    )


def test_unfinished_run(synthetic_run, out_dir, capsys) -> None:
    run_dir = synthetic_run()
    meta = json.loads((run_dir / "meta.json").read_text())
    (run_dir / "meta.json").write_text(json.dumps({**meta, "status": "running"}))
    assert_fails_cleanly(
        capsys, [str(run_dir), "--out", str(out_dir / "m.onnx")], out_dir, "'running'", "finished"
    )


def test_python_dash_m_export_and_bnserve_export(synthetic_run, out_dir) -> None:
    run_dir = synthetic_run(task="regression", outputs=2)
    completed = subprocess.run(
        [sys.executable, "-m", "bnserve.export", str(run_dir), "--out", str(out_dir / "a.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "wrote" in completed.stdout

    assert bnserve.cli.main(["export", str(run_dir), "--out", str(out_dir / "b.onnx")]) == 0
    assert bnserve.cli.main(["export", str(run_dir), "--out", str(out_dir / "b.onnx")]) == 2


def test_a_run_without_hidden_layers_exports_as_one_gemm(tmp_path, out_dir, capsys) -> None:
    """hidden = () (the tuner's layers = 0): a linear model folds to Gemm → Softmax/ArgMax."""
    from bnserve.training.config import TrainConfig
    from bnserve.training.train import train

    run_dir = tmp_path / "linear"
    train(TrainConfig(hidden=(), epochs=2, l2=1e-3), run_dir, progress=False, plot=False)
    out = out_dir / "linear.onnx"
    assert main([str(run_dir), "--out", str(out)]) == 0
    assert "max abs error" in capsys.readouterr().out
    graph = onnx.load(str(out)).graph
    assert [node.op_type for node in graph.node].count("Gemm") == 1
    assert not {"Relu", "Tanh", "Sigmoid", "BatchNormalization"} & {n.op_type for n in graph.node}
    assert main([str(run_dir), "--out", str(out_dir / "unfolded.onnx"), "--unfolded"]) == 0
