"""`bnserve drift`: exit status, the table, and one clear line for every kind of bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from bnserve.export.exporter import ExportSettings, export_run
from bnserve.server.drift.cli import main
from bnserve.training.rundir import load_run


@pytest.fixture(scope="module")
def digits_model(trained_runs, tmp_path_factory) -> tuple[Path, np.ndarray, list[str]]:
    run_dir = trained_runs["digits-bn"]
    path = tmp_path_factory.mktemp("drift") / "digits.onnx"
    export_run(ExportSettings(run_dir=run_dir, out=path))
    run = load_run(run_dir)
    return path, run.heldout_x, list(run.meta["feature_names"])


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.write_text("\n".join(",".join(row) for row in [header, *rows]) + "\n")
    return path


def _run(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_npz_input_in_a_different_column_order(digits_model, tmp_path, capsys) -> None:
    path, heldout, names = digits_model
    order = np.arange(len(names))[::-1]
    data = tmp_path / "rows.npz"
    np.savez(data, x=heldout[:, order], feature_names=np.array(names)[order])
    code, out, _ = _run(capsys, data, "--model", path, "--no-png")
    assert code == 0
    assert "0 of 64 features" in out


def test_a_model_exported_before_drift_monitoring_says_what_to_re_export(
    digits_model, tmp_path, capsys
) -> None:
    path, heldout, _ = digits_model
    model = onnx.load(str(path))
    kept = [prop for prop in model.metadata_props if prop.key != "bnserve.drift"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    old = tmp_path / "old.onnx"
    old.write_bytes(model.SerializeToString())
    data = tmp_path / "rows.npz"
    np.savez(data, x=heldout)

    code, out, err = _run(capsys, data, "--model", old)
    assert code == 2 and out == ""
    assert err.startswith(f"bnserve drift: error: {old}: has no bnserve.drift metadata")
    assert "re-export it from its training run with `bnserve export`" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d, n: _csv(d / "a.csv", n[:-1], [["1"] * 63]), "missing 1 of the model's 64"),
        (lambda d, n: _csv(d / "b.csv", n, [["1"] * 63 + ["x"]]), "line 2, column 'pixel_7_7'"),
        (lambda d, n: _csv(d / "c.csv", n, [["1"] * 62]), "line 2 has 62 cells"),
        (lambda d, n: _csv(d / "d.csv", n, []), "no data rows"),
        (lambda d, n: _csv(d / "e.csv", n, [["1"] * 63 + ["nan"]]), "is nan (not a finite"),
        (lambda d, n: d / "missing.csv", "no such file"),
        (lambda d, n: (d / "f.txt").write_text("1") and d / "f.txt", "unsupported file type"),
    ],
    ids=["column", "cell", "cells", "empty", "nan", "nofile", "suffix"],
)
def test_bad_data_gets_one_line(digits_model, tmp_path, capsys, make, message) -> None:
    path, _, names = digits_model
    code, out, err = _run(capsys, make(tmp_path, names), "--model", path, "--no-png")
    assert code == 2 and out == ""
    assert err.startswith("bnserve drift: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_not_a_model(tmp_path, capsys) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    data = _csv(tmp_path / "a.csv", ["a"], [["1"]])
    code, _, err = _run(capsys, data, "--model", junk)
    assert code == 2 and "not an ONNX model onnxruntime can load" in err


def test_an_unwritable_figure_is_one_line(digits_model, tmp_path, capsys) -> None:
    path, heldout, _ = digits_model
    data = tmp_path / "rows.npz"
    np.savez(data, x=heldout)
    # write_bytes makes missing parent directories; a file in the way of one cannot be made
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = _run(capsys, data, "--model", path, "--png", blocker / "x.png")
    assert code == 2 and err.startswith("bnserve drift: error: cannot write")


def test_parquet_input(digits_model, tmp_path, capsys) -> None:
    pyarrow = pytest.importorskip("pyarrow")  # the Parquet reader comes with issue 15's extra
    import pyarrow.parquet as parquet

    path, heldout, names = digits_model
    data = tmp_path / "rows.parquet"
    parquet.write_table(pyarrow.table({name: heldout[:, i] for i, name in enumerate(names)}), data)
    code, out, _ = _run(capsys, data, "--model", path, "--no-png")
    assert code == 0 and "0 of 64 features" in out


def test_parquet_without_pyarrow_is_one_line(digits_model, tmp_path, capsys, monkeypatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("pyarrow"):
            raise ModuleNotFoundError(name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    data = tmp_path / "rows.parquet"
    data.write_bytes(b"PAR1")
    code, _, err = _run(capsys, data, "--model", digits_model[0], "--no-png")
    assert code == 2 and "reading Parquet needs pyarrow" in err


@pytest.mark.parametrize(
    ("run_name", "unfolded", "layers"),
    [("regression-bn-population", False, 2), ("digits-bn", True, 2), ("digits-no-bn", False, 0)],
)
def test_regression_unfolded_and_batchnorm_free_models(
    trained_runs, tmp_path, capsys, run_name, unfolded, layers
) -> None:
    run_dir = trained_runs[run_name]
    model = tmp_path / "model.onnx"
    export_run(ExportSettings(run_dir=run_dir, out=model, unfolded=unfolded))
    data = tmp_path / "rows.npz"
    np.savez(data, x=load_run(run_dir).heldout_x)
    code, out, _ = _run(capsys, data, "--model", model, "--no-png", "--top", "0")
    layer_lines = [line for line in out.splitlines() if line.startswith("layer ")]
    assert len(layer_lines) == layers
    assert f"of {layers} layers past threshold" in out
    summary = out.splitlines()[-1].split()  # "N of F features and M of L layers past …"
    assert code == (1 if int(summary[0]) + int(summary[5]) else 0)


def test_an_imported_model_without_drift_statistics_names_bnserve_import(
    digits_model, tmp_path, capsys
) -> None:
    """The bug: drift told the user to re-export an imported model from a training run it never
    had; the server already said why (made by `bnserve import`)."""
    path, heldout, _ = digits_model
    model = onnx.load(str(path))
    kept = [prop for prop in model.metadata_props if prop.key != "bnserve.drift"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key="bnserve.import", value='{"source": "mlp.onnx"}')
    imported = tmp_path / "imported.onnx"
    imported.write_bytes(model.SerializeToString())
    data = tmp_path / "rows.npz"
    np.savez(data, x=heldout)

    code, out, err = _run(capsys, data, "--model", imported)
    assert code == 2 and out == ""
    assert err == (
        f"bnserve drift: error: {imported}: has no bnserve.drift metadata (made by `bnserve "
        "import`, which has no training split to describe; drift monitoring needs a model "
        "exported from a bnserve training run)\n"
    )


def test_a_csv_with_a_byte_order_mark_reads_as_without(digits_model, tmp_path, capsys) -> None:
    path, heldout, names = digits_model
    rows = [[f"{value:g}" for value in row] for row in heldout[:50]]
    plain = _csv(tmp_path / "plain.csv", names, rows)
    bom = tmp_path / "bom.csv"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    results = [_run(capsys, data, "--model", path, "--no-png") for data in (plain, bom)]
    assert results[0][0] == results[1][0] != 2  # 50 rows: a flag or two is fine here
    assert results[1][1] == results[0][1].replace("plain.csv", "bom.csv")


def test_a_semicolon_file_gets_the_delimiter_hint_then_reads_with_it(
    digits_model, tmp_path, capsys
) -> None:
    path, heldout, names = digits_model
    semicolons = tmp_path / "rows.csv"
    lines = [names, *([f"{value:g}" for value in row] for row in heldout[:50])]
    semicolons.write_text("\n".join(";".join(line) for line in lines) + "\n")
    code, out, err = _run(capsys, semicolons, "--model", path, "--no-png")
    assert code == 2 and out == ""
    assert err == (
        f"bnserve drift: error: {semicolons}: line 1: the header has one column containing ';' "
        "— is the file separated by ';'? (--delimiter ';')\n"
    )
    code, out, _ = _run(capsys, semicolons, "--model", path, "--no-png", "--delimiter", ";")
    assert code != 2 and out.startswith(f"{semicolons}: 50 rows against")


def test_the_command_imports_nothing_the_serving_image_lacks() -> None:
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, bnserve.server.drift.cli; print(' '.join(sys.modules))",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    heavy = ("bnserve.training", "bnserve.export", "pyarrow", "matplotlib", "onnx.")
    assert not [name for name in loaded if name.startswith(heavy) or name == "onnx"]


def test_a_mixed_model_on_its_raw_table_by_column_name(tmp_path, capsys) -> None:
    """A real penguins model (text columns, gaps; its hidden layers watched through the mixed
    graph's own inputs): the raw file scores clean; with every island Biscoe and half the
    bill lengths missing, exactly those two columns are flagged."""
    import csv

    from bnserve.training.config import TrainConfig
    from bnserve.training.train import train

    penguins = Path(__file__).parents[2] / "training" / "fixtures" / "penguins.csv"
    run_dir = tmp_path / "run"
    config = TrainConfig(data=str(penguins), target="species", hidden=(16, 8), epochs=20)
    train(config, run_dir, progress=False, plot=False, cache_dir="off")
    model = tmp_path / "penguins.onnx"
    export_run(ExportSettings(run_dir=run_dir, out=model))

    code, out, err = _run(capsys, penguins, "--model", model, "--no-png")
    assert code == 0, out + err
    assert "0 of 5 features, 0 of 7 columns and 0 of 2 layers past threshold" in out

    with penguins.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    for index, row in enumerate(rows):
        row["island"] = "Biscoe"
        if index % 2:
            row["bill_length_mm"] = "NA"
    shifted = tmp_path / "shifted.csv"
    with shifted.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    code, out, err = _run(capsys, shifted, "--model", model, "--no-png")
    assert code == 1, out + err
    columns = [
        line.split() for line in out.splitlines() if " numeric " in line or " categorical " in line
    ]
    flagged = sorted(fields[1] for fields in columns if fields[-1] == "DRIFT")
    assert flagged == ["bill_length_mm", "island"], out
    assert "2 of 7 columns" in out
