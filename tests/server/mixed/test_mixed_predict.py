"""`bnserve predict` against a mixed model: --csv on the raw penguins CSV (text, NA cells, the
target column ignored and said so once), --features of either kind, and one error line for a
CSV without a model column or with text in a numeric column."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bnserve.server.app import Server
from bnserve.server.clients.predict import main
from bnserve.server.settings import ServerSettings
from tests.support.in_process import start_server
from tests.support.mixed_model import PENGUINS, Numeric, expected, write_mixed_model

PENGUINS_CSV = Path(__file__).resolve().parents[2] / "training" / "fixtures" / "penguins.csv"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    path = write_mixed_model(tmp_path_factory.mktemp("penguins") / "model.onnx", PENGUINS)
    started = start_server(ServerSettings(workers=8, max_inflight=6), {"penguins": path})
    yield started
    started.stop(0)


def _raw_columns(path: Path) -> dict[str, list[Any]]:
    """The CSV's model columns as the numpy path takes them (NA: None for numbers)."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns: dict[str, list[Any]] = {}
    for column in PENGUINS.columns:
        cells = [row[column.name] for row in rows]
        if isinstance(column, Numeric):
            columns[column.name] = [None if c == "NA" else float(c) for c in cells]
        else:
            columns[column.name] = cells
    return columns


def test_predict_csv_scores_the_raw_penguins_file(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"127.0.0.1:{server.port}"
    code = main(["--target", target, "--csv", str(PENGUINS_CSV), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err.count("ignoring column(s) species") == 1
    table = list(csv.reader(io.StringIO(captured.out)))
    assert table[0][:3] == ["line", "label", "class_name"]
    want = expected(PENGUINS, _raw_columns(PENGUINS_CSV))
    assert len(table) - 1 == len(want["label"]) == 344
    probabilities = np.array([[float(p) for p in row[3:]] for row in table[1:]])
    np.testing.assert_allclose(probabilities, want["probabilities"], atol=1e-5)
    assert [int(row[1]) for row in table[1:]] == want["label"].tolist()


def test_predict_features_of_either_kind(
    server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"127.0.0.1:{server.port}"
    record = (
        "island=Dream,bill_length_mm=,bill_depth_mm=18.7,flipper_length_mm=181,body_mass_g=NA,"
        "sex=male,year=2007"
    )
    assert main(["--target", target, "--features", record]) == 0
    named = capsys.readouterr().out
    positional = "Dream,,18.7,181,NA,male,2007"
    assert main(["--target", target, "--features", positional]) == 0
    assert capsys.readouterr().out == named
    row = {
        "island": ["Dream"], "bill_length_mm": [None], "bill_depth_mm": [18.7],
        "flipper_length_mm": [181.0], "body_mass_g": [None], "sex": ["male"], "year": [2007.0],
    }  # fmt: skip
    want = expected(PENGUINS, row)
    assert named.startswith(f"{PENGUINS.class_names[int(want['label'][0])]} (label ")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            "species,island,bill_length_mm\nAdelie,Dream,40\n",
            "lacks the model's column(s) ['bill_depth_mm'",
        ),
        (
            "island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,sex,year\n"
            "Dream,forty,18,181,3750,male,2007\n",
            "line 2, column 'bill_length_mm': 'forty' is not a number",
        ),
    ],
    ids=["a missing model column", "text in a numeric column"],
)
def test_bad_csv_is_one_error_line(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, problem: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    code = main(["--target", f"127.0.0.1:{server.port}", "--csv", str(path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("bnserve predict: error: "), err
    assert problem in err
