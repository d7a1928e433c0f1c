"""`bnserve export`: a verified model on success; on every bad input a clear error, exit ≠ 0,
and nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import bnserve_cli
import export.exporter
from export.cli import main


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def _assert_fails_cleanly(capsys, argv: list[str], out_dir: Path, *fragments: str) -> str:
    before = sorted(path.name for path in out_dir.iterdir())
    code = main(argv)
    error = capsys.readouterr().err
    assert code != 0
    for fragment in fragments:
        assert fragment in error, error
    assert sorted(path.name for path in out_dir.iterdir()) == before  # no model, no temp file
    return error


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
    _assert_fails_cleanly(
        capsys,
        [str(tmp_path / "nope"), "--out", str(out_dir / "m.onnx")],
        out_dir,
        "nope",
        "not a run directory",
    )


def test_directory_without_a_run(tmp_path, out_dir, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_fails_cleanly(
        capsys, [str(empty), "--out", str(out_dir / "m.onnx")], out_dir, "meta.json", "missing"
    )


def test_unfinished_run(synthetic_run, out_dir, capsys) -> None:
    run_dir = synthetic_run()
    meta = json.loads((run_dir / "meta.json").read_text())
    (run_dir / "meta.json").write_text(json.dumps({**meta, "status": "running"}))
    _assert_fails_cleanly(
        capsys, [str(run_dir), "--out", str(out_dir / "m.onnx")], out_dir, "'running'", "finished"
    )


@pytest.mark.parametrize(
    ("meta_changes", "fragments"),
    [
        ({"activation": "tanh"}, ["'activation' is 'tanh' but config.json says 'relu'"]),
        ({"epsilon": 1e-3}, ["'epsilon' is 0.001 but config.json says 1e-05"]),
        ({"stats": "median"}, ["'stats' is 'median'"]),
        ({"class_names": ["only"]}, ["'class_names' has 1 entries"]),
    ],
    ids=["activation", "epsilon", "stats", "one-class"],
)
def test_meta_that_does_not_match_the_config(
    synthetic_run, out_dir, capsys, meta_changes, fragments
) -> None:
    run_dir = synthetic_run()
    meta = json.loads((run_dir / "meta.json").read_text())
    (run_dir / "meta.json").write_text(json.dumps({**meta, **meta_changes}))
    argv = [str(run_dir), "--out", str(out_dir / "m.onnx")]
    _assert_fails_cleanly(capsys, argv, out_dir, "meta.json", *fragments)


def _replace_heldout_x(run_dir: Path, heldout_x: np.ndarray) -> None:
    # heldout.npz is not covered by params_sha256, so the run still loads
    with (run_dir / "heldout.npz").open("wb") as handle:
        np.savez(handle, x=heldout_x, y=np.zeros(heldout_x.shape[0], dtype=np.int64))


def test_held_out_set_without_rows(synthetic_run, out_dir, capsys) -> None:
    run_dir = synthetic_run()
    _replace_heldout_x(run_dir, np.zeros((0, 6)))
    _assert_fails_cleanly(
        capsys, [str(run_dir), "--out", str(out_dir / "m.onnx")], out_dir, "heldout.npz", "no rows"
    )


def test_held_out_set_with_a_non_finite_feature(synthetic_run, out_dir, capsys) -> None:
    run_dir = synthetic_run()
    heldout_x = np.ones((10, 6))
    heldout_x[7, 2] = np.nan
    _replace_heldout_x(run_dir, heldout_x)
    _assert_fails_cleanly(
        capsys,
        [str(run_dir), "--out", str(out_dir / "m.onnx")],
        out_dir,
        "heldout.npz",
        "row 7, column 2",
        "not finite",
    )


@pytest.mark.parametrize(
    ("params_fields", "fragments"),
    [
        ({"hidden": (16, 10)}, ["'hidden2.W' has shape (16, 10)", "needs (16, 12)"]),
        ({"hidden": (16, 12, 8)}, ["unexpected hidden3.W", "hidden [16, 12]"]),
        ({"hidden": (16,)}, ["missing", "hidden2"]),
        ({"features": 5}, ["heldout.npz", "5 features"]),
        ({"batchnorm": False}, ["params.npz", "missing", "hidden1.beta"]),
    ],
    ids=["narrower-layer", "extra-layer", "missing-layer", "fewer-features", "no-bn-params"],
)
def test_params_that_do_not_match_the_config(
    synthetic_run, make_params, out_dir, capsys, params_fields, fragments
) -> None:
    run_dir = synthetic_run(params=make_params(**params_fields))
    _assert_fails_cleanly(
        capsys, [str(run_dir), "--out", str(out_dir / "m.onnx")], out_dir, *fragments
    )


def test_non_finite_parameter(synthetic_run, make_params, out_dir, capsys) -> None:
    params = make_params()
    params["hidden2.W"][3, 5] = np.inf
    run_dir = synthetic_run(params=params)
    _assert_fails_cleanly(
        capsys,
        [str(run_dir), "--out", str(out_dir / "m.onnx")],
        out_dir,
        "'hidden2.W'",
        "non-finite",
        "inf",
        "(3, 5)",
    )


def test_non_positive_running_variance_epsilon_cannot_save(
    synthetic_run, make_params, out_dir, capsys
) -> None:
    params = make_params()
    params["hidden1.running_var"][4] = -0.5
    run_dir = synthetic_run(params=params)
    _assert_fails_cleanly(
        capsys,
        [str(run_dir), "--out", str(out_dir / "m.onnx")],
        out_dir,
        "'hidden1.running_var' is -0.5 at unit 4",  # not np.float64(-0.5)
        "running_var + ε",
    )


def test_zero_running_variance_that_epsilon_saves_is_exported(
    synthetic_run, make_params, out_dir
) -> None:
    params = make_params()
    params["hidden1.running_var"][4] = 0.0
    params["hidden2.running_var"][2] = -1e-6  # rounding residue; ε = 1e-5 keeps σ² + ε > 0
    run_dir = synthetic_run(params=params)
    assert main([str(run_dir), "--out", str(out_dir / "m.onnx")]) == 0


def test_existing_output_needs_force(synthetic_run, out_dir, capsys) -> None:
    out = out_dir / "model.onnx"
    out.write_bytes(b"someone else's file")
    run_dir = synthetic_run()

    _assert_fails_cleanly(
        capsys, [str(run_dir), "--out", str(out)], out_dir, "already exists", "--force"
    )
    assert out.read_bytes() == b"someone else's file"

    assert main([str(run_dir), "--out", str(out), "--force"]) == 0
    onnx.checker.check_model(onnx.load(str(out)))


def test_output_that_is_a_directory(synthetic_run, out_dir, capsys) -> None:
    _assert_fails_cleanly(
        capsys, [str(synthetic_run()), "--out", str(out_dir), "--force"], out_dir, "is a directory"
    )


def test_model_that_misses_the_numpy_path_is_not_written(
    synthetic_run, out_dir, capsys, monkeypatch
) -> None:
    real_predict = export.exporter.predict

    def predict_off_by_1e4(params, meta, x_raw):
        # stands in for a folding bug: numpy's answer and the model's now differ by 1e-4
        return real_predict(params, meta, x_raw) + 1e-4

    monkeypatch.setattr(export.exporter, "predict", predict_off_by_1e4)
    _assert_fails_cleanly(
        capsys,
        [str(synthetic_run()), "--out", str(out_dir / "m.onnx")],
        out_dir,
        "does not reproduce the numpy inference path",
        "nothing written",
    )


def test_python_dash_m_export_and_bnserve_export(synthetic_run, out_dir) -> None:
    run_dir = synthetic_run(task="regression", outputs=2)
    completed = subprocess.run(
        [sys.executable, "-m", "export", str(run_dir), "--out", str(out_dir / "a.onnx")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "wrote" in completed.stdout

    assert bnserve_cli.main(["export", str(run_dir), "--out", str(out_dir / "b.onnx")]) == 0
    assert bnserve_cli.main(["export", str(run_dir), "--out", str(out_dir / "b.onnx")]) == 1


def test_a_full_disk_is_one_line_and_leaves_no_file(synthetic_run, capsys, small_disk) -> None:
    """The bug: 15 lines of traceback ending in ENOSPC."""
    disk = small_disk.mount(8)
    (disk / "filler").write_bytes(b"x" * 8192)  # full: not one more page
    out = disk / "model.onnx"
    error = _assert_fails_cleanly(
        capsys, [str(synthetic_run()), "--out", str(out)], disk, f"{out}: cannot write the model"
    )
    assert error.startswith("bnserve export: error: ") and error.count("\n") == 1, error
    assert "no space left on the device" in error and "nothing was written" in error


def test_a_run_without_hidden_layers_exports_as_one_gemm(tmp_path, out_dir, capsys) -> None:
    """hidden = () (the tuner's layers = 0): a linear model folds to Gemm → Softmax/ArgMax."""
    from training.config import TrainConfig
    from training.train import train

    run_dir = tmp_path / "linear"
    train(TrainConfig(hidden=(), epochs=2, l2=1e-3), run_dir, progress=False, plot=False)
    out = out_dir / "linear.onnx"
    assert main([str(run_dir), "--out", str(out)]) == 0
    assert "max abs error" in capsys.readouterr().out
    graph = onnx.load(str(out)).graph
    assert [node.op_type for node in graph.node].count("Gemm") == 1
    assert not {"Relu", "Tanh", "Sigmoid", "BatchNormalization"} & {n.op_type for n in graph.node}
    assert main([str(run_dir), "--out", str(out_dir / "unfolded.onnx"), "--unfolded"]) == 0
