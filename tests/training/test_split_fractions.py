"""--dev-fraction / --test-fraction: stated in meta.json; 0 test rows moves heldout.npz to dev."""

from __future__ import annotations

import numpy as np
import pytest

from bnserve.training.cli import main
from bnserve.training.config import TrainConfig
from bnserve.training.data.loading import load_dataset, split_rows
from bnserve.training.rundir import load_run

SMALL = {"hidden": (16,), "epochs": 2}


def _train(run_dir, *flags):
    return main(["--out", str(run_dir), "--epochs", "1", "--hidden", "16", "--no-progress", *flags])


def test_the_split_is_stated_in_meta(tmp_path, capsys):
    assert _train(tmp_path / "run", "--dev-fraction", "0.2", "--test-fraction", "0.1") == 0
    split = load_run(tmp_path / "run").meta["split"]
    assert split == {
        "dev_fraction": 0.2,
        "test_fraction": 0.1,
        "seed": 0,
        "train_rows": 1797 - 359 - 180,
        "dev_rows": 359,
        "test_rows": 180,
        "heldout": "test",
    }


def test_test_fraction_zero_gives_every_row_to_train_and_dev(tmp_path, capsys):
    code = _train(tmp_path / "run", "--test-fraction", "0")
    assert code == 0 and "no test rows" in capsys.readouterr().out
    run = load_run(tmp_path / "run")
    meta = run.meta
    assert (meta["split"]["test_rows"], meta["split"]["heldout"]) == (0, "dev")
    assert meta["split"]["train_rows"] + meta["split"]["dev_rows"] == 1797
    assert meta["test_accuracy"] is None
    # heldout.npz holds exactly the dev rows
    dataset = load_dataset("digits")
    split = split_rows(1797, dev_fraction=0.15, test_fraction=0.0, seed=0)
    assert len(split.test) == 0
    np.testing.assert_array_equal(run.heldout_x, dataset.x[split.dev])
    np.testing.assert_array_equal(run.heldout_y, dataset.y[split.dev])


def test_the_exporter_checks_its_fold_on_the_dev_rows_when_there_are_no_test_rows(tmp_path):
    from bnserve.export.cli import (
        main as export_main,  # export may import training, not the reverse
    )

    assert _train(tmp_path / "run", "--test-fraction", "0") == 0
    assert export_main([str(tmp_path / "run"), "--out", str(tmp_path / "m.onnx")]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_dev_fraction_zero_trains_on_every_non_test_row_without_a_dev_error(tmp_path):
    from bnserve.training.train import train

    result = train(
        TrainConfig.from_dict({**SMALL, "dev_fraction": 0.0}), tmp_path / "run", progress=False
    )
    meta = load_run(tmp_path / "run").meta
    assert result.dev_error is None and meta["dev_error"] is None
    assert meta["split"]["dev_rows"] == 0 and meta["split"]["heldout"] == "test"
    assert all(record["dev_error"] is None for record in result.history)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"test_fraction": -0.1}, r"'test_fraction' = -0.1 is invalid: must be in \[0, 0.5\)"),
        ({"dev_fraction": 0.5}, r"'dev_fraction' = 0.5 is invalid"),
        ({"dev_fraction": 0.0, "early_stopping": 3}, "early stopping watches the dev error"),
    ],
)
def test_bad_fractions_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(changes)
