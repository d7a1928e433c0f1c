"""Ensembles of runs trained on raw columns (export/ensemble_columns.py): the fold models of a
penguins table (text columns, gaps), each with its own schema, as one graph of raw inputs."""

from __future__ import annotations

import http.client
import json
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest

from bnserve.export.cli import main
from bnserve.export.exporter import run_schema
from bnserve.export.metadata import read_metadata
from bnserve.export.raw_rows import RawRows, design_of, feeds_of, special_rows
from bnserve.export.schema_rows import schema_rows
from bnserve.export.verify import PROBABILITY_TOLERANCE, onnx_session, score_feeds
from bnserve.server.modelfile.contract import MetadataKey
from bnserve.training.config import TrainConfig
from bnserve.training.inference import predict
from bnserve.training.rundir import load_run
from bnserve.training.train import train
from tests.export.test_raw_columns import _numbers
from tests.server.test_defaults import NAME, native_probabilities, scrape
from tests.support.server_process import ServerProcess

from .conftest import PENGUINS

FOLD = TrainConfig(data=str(PENGUINS), target="species", hidden=(12, 8), epochs=8, folds=3)


@pytest.fixture(scope="module")
def fold_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The 3 fold models of a penguins table, as `bnserve tune --cv 3` trains a trial's."""
    folder = tmp_path_factory.mktemp("penguin-folds")
    runs = []
    for fold in range(3):
        run_dir = folder / f"fold-{fold}"
        config = replace(FOLD, fold=fold, seed=fold)
        train(config, run_dir, progress=False, plot=False, cache_dir="off")
        runs.append(run_dir)
    return runs


def _export(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _records(runs: list[Path]) -> RawRows:
    """Every member's held-out records and special rows (every cell missing, every level
    unseen, every level of its columns)."""
    parts = []
    for run_dir in runs:
        schema = run_schema(run_dir)
        assert schema is not None
        parts += [schema_rows(load_run(run_dir), schema).heldout, special_rows(schema)]
    return RawRows.concat(parts)


@pytest.mark.parametrize("layout", ["grouped", "batched", "parallel"])
def test_fold_models_export_as_the_mean_of_their_numpy_paths_on_raw_records(
    fold_runs: list[Path], out_dir: Path, capsys, layout: str
) -> None:
    schemas = [run_schema(run) for run in fold_runs]
    assert all(schema is not None for schema in schemas)
    fills = {
        tuple(column.fill for column in schema.columns if column.kind == "numeric")
        for schema in schemas
        if schema is not None
    }
    assert len(fills) == 3  # each fold's fills come from its own training rows
    out = out_dir / f"{layout}.onnx"
    args = [*map(str, fold_runs), "--out", str(out), "--layout", layout]
    code, printed, error = _export(args, capsys)
    assert code == 0, error
    assert f"{layout}," in printed
    assert "numpy paths on " in printed and "held-out records of the members and" in printed
    records = _records(fold_runs)
    expected = np.mean(
        [
            predict(run.params, run.meta, design_of(schema, records))
            for run, schema in zip(map(load_run, fold_runs), schemas, strict=True)
            if schema is not None
        ],
        axis=0,
    )
    assert schemas[0] is not None
    feeds = feeds_of(schemas[0], records)
    served = score_feeds(onnx_session(out.read_bytes()), feeds)
    probabilities, labels = served["probabilities"], served["label"]
    assert np.max(np.abs(probabilities - expected)) <= PROBABILITY_TOLERANCE.abs
    decisive = np.sort(expected, axis=1)[:, -1] - np.sort(expected, axis=1)[:, -2] > 2e-5
    np.testing.assert_array_equal(labels[decisive], expected.argmax(axis=1)[decisive])
    model = onnx.load(str(out))
    assert "BatchNormalization" not in [node.op_type for node in model.graph.node]
    card = read_metadata(model)
    assert card[MetadataKey.FORMAT.full] == "2"
    schema_card = json.loads(card[MetadataKey.SCHEMA.full])
    assert [item["name"] for item in schema_card["inputs"]] == [
        input_.name for input_ in model.graph.input
    ]
    # the reference rows are raw records: the gate scores what a client sends
    reference = json.loads(card[MetadataKey.REFERENCE_INPUTS.full])
    assert set(reference) == {input_.name for input_ in model.graph.input}


def test_a_real_server_passes_the_parity_gate_on_an_ensemble_of_a_table_with_gaps(
    tmp_path: Path, out_dir: Path, capsys
) -> None:
    """A table of numbers with gaps: x [N, 3] with NaN, each fold model's own fills folded into
    its front. (The server does not load graphs with one input per column yet: `_check_signature`
    wants `x` alone; the penguins ensemble above is checked with onnxruntime.)"""
    data = tmp_path / "gaps.csv"
    data.write_text("\n".join(_numbers(gaps=True)) + "\n")
    runs = []
    for fold in range(3):
        config = TrainConfig(
            data=str(data), target="y", hidden=(8,), epochs=3, folds=3, fold=fold, seed=fold
        )
        train(config, tmp_path / f"fold-{fold}", progress=False, plot=False, cache_dir="off")
        runs.append(tmp_path / f"fold-{fold}")
    schemas = [run_schema(run) for run in runs]
    assert len({tuple(c.fill for c in s.columns) for s in schemas if s is not None}) == 3
    out = out_dir / "ensemble.onnx"
    code, printed, error = _export(
        [*map(str, runs), "--out", str(out), "--layout", "batched"], capsys
    )
    assert code == 0, error
    assert "batched," in printed  # layer drift reads the members from the stacks
    model = onnx.load(str(out))
    assert [i.name for i in model.graph.input] == ["x"]
    card = read_metadata(model)
    assert any(None in row for row in json.loads(card[MetadataKey.REFERENCE_INPUTS.full])["x"])
    drift = json.loads(card[MetadataKey.DRIFT.full])
    watched = [layer["name"] for layer in drift["layers"]]
    assert watched == ["m1.hidden1", "m2.hidden1", "m3.hidden1"]
    server = ServerProcess(["--model", str(out), "--name", NAME, "--drift-sample", "1"])
    try:
        server.wait_ready()  # after the parity gate: reference records together and alone
        # (a gap is scored by the parity gate's reference records; Predict itself still
        # refuses NaN features)
        rows = np.array([[10.0, -3.5, 1000.0], [9.0, -2.0, 1100.0]], dtype=np.float32)
        with grpc.insecure_channel(server.target) as channel:
            served = native_probabilities(channel, rows, [])
        records = RawRows({name: rows[:, i].astype(np.float64) for i, name in enumerate("abc")})
        expected = np.mean(
            [
                predict(run.params, run.meta, design_of(schema, records))
                for run, schema in zip(map(load_run, runs), schemas, strict=True)
                if schema is not None
            ],
            axis=0,
        )
        assert np.max(np.abs(served - expected)) <= 1e-5
        layer_scores = {
            dict(labels)["layer"]
            for (name, labels), _ in scrape(server.metrics_port).items()
            if name == "bnserve_drift_layer_score"
        }
        assert layer_scores == set(watched)
    finally:
        assert server.stop() == 0


def test_members_with_other_inputs_are_refused_in_one_line(
    fold_runs: list[Path], tmp_path: Path, out_dir: Path, capsys
) -> None:
    other = tmp_path / "no-island"
    train(replace(FOLD, ignore=("island",)), other, progress=False, plot=False, cache_dir="off")
    code, printed, error = _export(
        [str(fold_runs[0]), str(other), "--out", str(out_dir / "m.onnx")], capsys
    )
    assert code == 2 and printed == "" and error.count("\n") == 1
    assert error.startswith(f"bnserve export: error: {other}: its graph inputs [")
    assert "ensemble members must share them (names, kinds, order)" in error
    assert not (out_dir / "m.onnx").exists()


def test_a_raw_column_member_and_a_numbers_member_are_refused(
    fold_runs: list[Path], synthetic_run, out_dir: Path, capsys
) -> None:
    numbers = synthetic_run(seed=0)
    code, _, error = _export(
        [str(fold_runs[0]), str(numbers), "--out", str(out_dir / "m.onnx")], capsys
    )
    assert code == 2 and error.count("\n") == 1
    assert f"{fold_runs[0]} takes raw columns (a schema.json) but {numbers} takes" in error


def _table(path: Path, colours: list[str], gaps: bool, seed: int) -> Path:
    """colour (text; for seed 0 one rare "teal", scored as `<other>`), size (numbers, gaps on
    request), y from both."""
    rng = np.random.default_rng(seed)
    lines = ["colour,size,y"]
    for row in range(120):
        colour = "teal" if row == 3 and seed == 0 else colours[row % len(colours)]
        size = rng.normal(5, 2)
        cell = "" if gaps and row % 7 == 0 else f"{size:.3f}"
        lines.append(f"{colour},{cell},{int(size > 5) ^ (colour == colours[0])}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_members_with_different_levels_fills_and_indicators_score_through_one_front(
    tmp_path: Path, out_dir: Path, capsys
) -> None:
    """Members of one table's columns whose schemas differ in every way a front can: kept
    levels (a level one member never saw), the `<missing>` slot, fills and the indicator.
    The merged front answers as each member's own on every level any member kept, an unseen
    one and missing cells; its lookups cost what one member's do."""
    specs = [(["red", "blue"], False), (["red", "green", ""], True), (["blue", "green"], True)]
    runs = []
    for index, (colours, gaps) in enumerate(specs):
        data = _table(tmp_path / f"t{index}.csv", colours, gaps, seed=index)
        config = TrainConfig(data=str(data), target="y", hidden=(6,), epochs=3, seed=index)
        train(config, tmp_path / f"run{index}", progress=False, plot=False, cache_dir="off")
        runs.append(tmp_path / f"run{index}")
    schemas = [run_schema(run) for run in runs]
    assert all(schema is not None for schema in schemas)
    assert schemas[0] is not None and schemas[0].columns[0].rare == (("teal", 1),)
    out = out_dir / "m.onnx"
    code, _, error = _export([*map(str, runs), "--out", str(out)], capsys)
    assert code == 0, error
    records = RawRows(
        {
            "colour": np.array(["red", "blue", "green", "purple", "", "NA", "teal"], dtype=object),
            "size": np.array([4.0, np.nan, 6.0, 5.0, np.nan, 1.0, 3.0]),
        }
    )
    expected = np.mean(
        [
            predict(run.params, run.meta, design_of(schema, records))
            for run, schema in zip(map(load_run, runs), schemas, strict=True)
            if schema is not None
        ],
        axis=0,
    )
    assert schemas[0] is not None
    served = score_feeds(onnx_session(out.read_bytes()), feeds_of(schemas[0], records))
    assert np.max(np.abs(served["probabilities"] - expected)) <= PROBABILITY_TOLERANCE.abs
    ops = [node.op_type for node in onnx.load(str(out)).graph.node]
    assert ops.count("LabelEncoder") == 1 and ops.count("Gather") == 1


def test_a_real_server_serves_the_penguins_fold_ensemble_over_rest(
    fold_runs: list[Path], out_dir: Path, capsys
) -> None:
    """A mixed-table ensemble as a server takes it: past the parity gate (its raw reference
    records, together and alone), a REST request of BYTES and FP32 columns (null = missing, an
    unseen island) answered with the mean of the members' numpy paths."""
    out = out_dir / "served.onnx"
    code, _, error = _export([*map(str, fold_runs), "--out", str(out)], capsys)
    assert code == 0, error
    records = RawRows(
        {
            "island": np.array(["Torgersen", "Atlantis"], dtype=object),
            "bill_length_mm": np.array([39.1, np.nan]),
            "bill_depth_mm": np.array([18.7, 14.8]),
            "flipper_length_mm": np.array([181.0, 217.0]),
            "body_mass_g": np.array([3750.0, 5200.0]),
            "sex": np.array(["male", ""], dtype=object),
            "year": np.array([2007.0, 2008.0]),
        }
    )
    schemas = [run_schema(run) for run in fold_runs]
    expected = np.mean(
        [
            predict(run.params, run.meta, design_of(schema, records))
            for run, schema in zip(map(load_run, fold_runs), schemas, strict=True)
            if schema is not None
        ],
        axis=0,
    )
    inputs = []
    for name, values in records.columns.items():
        if values.dtype == object:
            data = [value or None for value in values]
            inputs.append({"name": name, "datatype": "BYTES", "shape": [2, 1], "data": data})
        else:
            data = [None if np.isnan(value) else float(value) for value in values]
            inputs.append({"name": name, "datatype": "FP32", "shape": [2, 1], "data": data})
    server = ServerProcess(["--model", str(out), "--name", NAME])
    try:
        server.wait_ready()  # after the parity gate
        connection = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=30)
        connection.request("POST", f"/v2/models/{NAME}/infer", json.dumps({"inputs": inputs}))
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
    finally:
        assert server.stop() == 0
    assert response.status == 200, answer
    outputs = {output["name"]: output for output in answer["outputs"]}
    served = np.array(outputs["probabilities"]["data"]).reshape(2, -1)
    assert np.max(np.abs(served - expected)) <= PROBABILITY_TOLERANCE.abs
    assert outputs["label"]["data"] == expected.argmax(axis=1).tolist()
