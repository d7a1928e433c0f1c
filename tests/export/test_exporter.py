"""export/exporter.py: a run becomes a verified, atomically written file, or nothing is written
(the held-out rows checked, the output path refused early, a model that misses numpy, a full
disk), and what `export_run` reports is what it wrote."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import onnx

import bnserve.export.exporter
from bnserve.export.cli import main
from bnserve.export.exporter import ExportSettings, build_model, export_run, reference_rows
from bnserve.export.metadata import read_metadata
from bnserve.export.verify import PROBABILITY_TOLERANCE, regression_tolerance
from bnserve.server.modelfile.contract import MetadataKey
from bnserve.training.inference import predict
from bnserve.training.rundir import load_run
from tests.support.export_failure import assert_fails_cleanly


def _replace_heldout_x(run_dir: Path, heldout_x: np.ndarray) -> None:
    # heldout.npz is not covered by params_sha256, so the run still loads
    with (run_dir / "heldout.npz").open("wb") as handle:
        np.savez(handle, x=heldout_x, y=np.zeros(heldout_x.shape[0], dtype=np.int64))


def test_held_out_set_without_rows(synthetic_run, out_dir, capsys) -> None:
    run_dir = synthetic_run()
    _replace_heldout_x(run_dir, np.zeros((0, 6)))
    assert_fails_cleanly(
        capsys, [str(run_dir), "--out", str(out_dir / "m.onnx")], out_dir, "heldout.npz", "no rows"
    )


def test_held_out_set_with_a_non_finite_feature(synthetic_run, out_dir, capsys) -> None:
    run_dir = synthetic_run()
    heldout_x = np.ones((10, 6))
    heldout_x[7, 2] = np.nan
    _replace_heldout_x(run_dir, heldout_x)
    assert_fails_cleanly(
        capsys,
        [str(run_dir), "--out", str(out_dir / "m.onnx")],
        out_dir,
        "heldout.npz",
        "row 7, column 2",
        "not finite",
    )


def test_existing_output_needs_force(synthetic_run, out_dir, capsys) -> None:
    out = out_dir / "model.onnx"
    out.write_bytes(b"someone else's file")
    run_dir = synthetic_run()

    assert_fails_cleanly(
        capsys, [str(run_dir), "--out", str(out)], out_dir, "already exists", "--force"
    )
    assert out.read_bytes() == b"someone else's file"

    assert main([str(run_dir), "--out", str(out), "--force"]) == 0
    onnx.checker.check_model(onnx.load(str(out)))


def test_output_that_is_a_directory(synthetic_run, out_dir, capsys) -> None:
    assert_fails_cleanly(
        capsys, [str(synthetic_run()), "--out", str(out_dir), "--force"], out_dir, "is a directory"
    )


def test_model_that_misses_the_numpy_path_is_not_written(
    synthetic_run, out_dir, capsys, monkeypatch
) -> None:
    real_predict = bnserve.export.exporter.predict

    def predict_off_by_1e4(params, meta, x_raw):
        # stands in for a folding bug: numpy's answer and the model's now differ by 1e-4
        return real_predict(params, meta, x_raw) + 1e-4

    monkeypatch.setattr(bnserve.export.exporter, "predict", predict_off_by_1e4)
    assert_fails_cleanly(
        capsys,
        [str(synthetic_run()), "--out", str(out_dir / "m.onnx")],
        out_dir,
        "does not reproduce the numpy inference path",
        "nothing written",
    )


def test_a_full_disk_is_one_line_and_leaves_no_file(synthetic_run, capsys, small_disk) -> None:
    """The bug: 15 lines of traceback ending in ENOSPC."""
    disk = small_disk.mount(8)
    (disk / "filler").write_bytes(b"x" * 8192)  # full: not one more page
    out = disk / "model.onnx"
    error = assert_fails_cleanly(
        capsys, [str(synthetic_run()), "--out", str(out)], disk, f"{out}: cannot write the model"
    )
    assert error.startswith("bnserve export: error: ") and error.count("\n") == 1, error
    assert "no space left on the device" in error and "nothing was written" in error


def test_the_report_describes_the_file_written(synthetic_run, out_dir) -> None:
    out = out_dir / "model.onnx"
    report = export_run(ExportSettings(run_dir=synthetic_run(), out=out))
    model = onnx.load(str(out))
    assert report.out == out and report.folded
    assert report.size_bytes == out.stat().st_size
    assert report.node_count == len(model.graph.node)
    assert report.graph_sha256 == read_metadata(model)[MetadataKey.GRAPH_SHA256.full]
    assert report.verification.passed and report.layers.passed
    assert report.verification.example_count == 200 + 18  # held-out rows and edge rows
    assert stat.S_IMODE(out.stat().st_mode) == 0o644  # a server under another user reads it


def test_build_model_verifies_with_the_task_s_tolerance(synthetic_run) -> None:
    _, tolerance = build_model(load_run(synthetic_run()), unfolded=False)
    assert tolerance == PROBABILITY_TOLERANCE
    run = load_run(synthetic_run(task="regression", outputs=2))
    model, tolerance = build_model(run, unfolded=True)
    assert tolerance == regression_tolerance(run.params["target.std"])
    assert "BatchNormalization" in {node.op_type for node in model.graph.node}


def test_reference_rows_are_spread_rounded_to_float32_and_scored_by_numpy(synthetic_run) -> None:
    run = load_run(synthetic_run(heldout_rows=50))
    rows = reference_rows(run, 8)
    heldout = np.asarray(run.heldout_x, dtype=np.float64)
    indices = [0, 7, 14, 21, 28, 35, 42, 49]
    np.testing.assert_array_equal(rows.inputs, heldout[indices].astype(np.float32))
    expected = predict(run.params, run.meta, rows.inputs.astype(np.float64))
    np.testing.assert_array_equal(rows.outputs["probabilities"], expected)
    np.testing.assert_array_equal(rows.outputs["label"], np.argmax(expected, axis=1))
    assert reference_rows(run, 500).inputs.shape[0] == 50  # never more than the held-out set
