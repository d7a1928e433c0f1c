"""Issue 26 phase 2, the export side: a run with a schema folds fills, missing indicators and
categorical lookups into the graph (export/columns.py), which then scores raw records."""

from __future__ import annotations

from bnserve.export.cli import main
from bnserve.training.config import TrainConfig
from bnserve.training.train import train


def test_a_run_with_a_row_index_left_out_exports(tmp_path, out_dir, capsys):
    data = tmp_path / "indexed.csv"
    lines = ['"",a,b,y'] + [f"{i + 1},{i % 7},{(i * 3) % 5},{i % 2}" for i in range(60)]
    data.write_text("\n".join(lines) + "\n")
    run_dir = tmp_path / "run"
    train(TrainConfig(data=str(data), hidden=(8,), epochs=1), run_dir, progress=False, plot=False)
    assert main([str(run_dir), "--out", str(out_dir / "m.onnx")]) == 0
    assert "max abs error" in capsys.readouterr().out
