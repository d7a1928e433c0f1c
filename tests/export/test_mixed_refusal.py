"""Until issue 26's phase 2 folds them into the graph, a run with categorical columns or
missing-value handling is refused by `bnserve export` in one line; a run whose only change is a
left-out column (an R row index) exports as before."""

from __future__ import annotations

from pathlib import Path

from bnserve.export.cli import main
from bnserve.training.config import TrainConfig
from bnserve.training.train import train
from tests.support.export_failure import assert_fails_cleanly

PENGUINS = Path(__file__).parents[1] / "training" / "fixtures" / "penguins.csv"


def test_a_run_with_categorical_columns_and_gaps_is_refused_in_one_line(tmp_path, out_dir, capsys):
    run_dir = tmp_path / "penguins"
    config = TrainConfig(data=str(PENGUINS), target="species", hidden=(8,), epochs=1)
    train(config, run_dir, progress=False, plot=False, cache_dir="off")
    error = assert_fails_cleanly(
        capsys,
        [str(run_dir), "--out", str(out_dir / "p.onnx")],
        out_dir,
        "has categorical columns and missing-value handling (schema.json)",
        "cannot fold into the model file yet",
    )
    assert error.count("\n") == 1


def test_a_run_with_a_row_index_left_out_exports(tmp_path, out_dir, capsys):
    data = tmp_path / "indexed.csv"
    lines = ['"",a,b,y'] + [f"{i + 1},{i % 7},{(i * 3) % 5},{i % 2}" for i in range(60)]
    data.write_text("\n".join(lines) + "\n")
    run_dir = tmp_path / "run"
    train(TrainConfig(data=str(data), hidden=(8,), epochs=1), run_dir, progress=False, plot=False)
    assert main([str(run_dir), "--out", str(out_dir / "m.onnx")]) == 0
    assert "max abs error" in capsys.readouterr().out
