"""`bnserve predict` against the penguins model `bnserve export` wrote from the raw CSV: --csv on
that raw CSV (text, NA cells, the target column ignored and said so once) answers what
onnxruntime alone answers from the file; --features of either kind; one error line for a CSV
without a model column or with text in a numeric column."""

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
from tests.server.mixed.conftest import PENGUINS_CSV, PenguinsExport
from tests.support.in_process import start_server


@pytest.fixture(scope="module")
def server(penguins: PenguinsExport) -> Iterator[Server]:
    started = start_server(ServerSettings(workers=8, max_inflight=6), {"penguins": penguins.model})
    yield started
    started.stop(0)


def _onnxruntime_alone(penguins: PenguinsExport, path: Path) -> list[np.ndarray]:
    """The file scored by onnxruntime on the CSV's raw columns (NA: NaN for numbers)."""
    import onnxruntime as ort

    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    feed: dict[str, Any] = {}
    for name, kind in penguins.kinds.items():
        cells = [row[name] for row in rows]
        if kind == "categorical":
            feed[name] = np.array(cells, dtype=object).reshape(-1, 1)
        else:
            numbers = [np.nan if c == "NA" else float(c) for c in cells]
            feed[name] = np.array(numbers, dtype=np.float32).reshape(-1, 1)
    session = ort.InferenceSession(str(penguins.model), providers=["CPUExecutionProvider"])
    return session.run(["probabilities", "label"], feed)


def test_predict_csv_scores_the_raw_penguins_file(
    server: Server, penguins: PenguinsExport, capsys: pytest.CaptureFixture[str]
) -> None:
    target = f"127.0.0.1:{server.port}"
    code = main(["--target", target, "--csv", str(PENGUINS_CSV), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err.count("ignoring column(s) species") == 1
    table = list(csv.reader(io.StringIO(captured.out)))
    assert table[0][:3] == ["line", "label", "class_name"]
    probabilities, labels = _onnxruntime_alone(penguins, PENGUINS_CSV)
    assert len(table) - 1 == len(labels) == 344
    served = np.array([[float(p) for p in row[3:]] for row in table[1:]])
    np.testing.assert_allclose(served, probabilities, atol=1e-6)
    assert [int(row[1]) for row in table[1:]] == labels.tolist()
    assert [row[2] for row in table[1:]] == [penguins.class_names[label] for label in labels]


def test_predict_features_of_either_kind(
    server: Server, penguins: PenguinsExport, tmp_path: Path, capsys: pytest.CaptureFixture[str]
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
    path = tmp_path / "one.csv"
    path.write_text(
        "island,bill_length_mm,bill_depth_mm,flipper_length_mm,body_mass_g,sex,year\n"
        "Dream,NA,18.7,181,NA,male,2007\n"
    )
    _, labels = _onnxruntime_alone(penguins, path)
    assert named.startswith(f"{penguins.class_names[int(labels[0])]} (label {labels[0]})")


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
        ("island;bill_length_mm;sex\nDream;40;male\n", "(--delimiter ';')"),
    ],
    ids=["a missing model column", "text in a numeric column", "another delimiter"],
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
