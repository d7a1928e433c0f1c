"""Issue 26 phase 2, the export side: a run with a schema folds fills, missing indicators and
categorical lookups into the graph (export/columns.py), which then scores raw records; the
fold check and the metadata cover them."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bnserve.export.adapt_cli import main as adapt_main
from bnserve.export.cli import main
from bnserve.export.columns import missing_tokens
from bnserve.export.exporter import ExportSettings, build_model, export_run, run_schema
from bnserve.export.import_cli import main as import_main
from bnserve.export.metadata import read_metadata
from bnserve.export.raw_rows import (
    UNSEEN_LEVEL,
    RawRows,
    design_of,
    feeds_of,
    special_rows,
)
from bnserve.export.schema_rows import schema_rows
from bnserve.export.verify import (
    PROBABILITY_TOLERANCE,
    check_layers,
    onnx_session,
    score_feeds,
)
from bnserve.server.modelfile.contract import decisive_rows
from bnserve.server.modelfile.metadata import parse_model_card
from bnserve.server.plane.errors import ModelLoadError
from bnserve.training.config import TrainConfig
from bnserve.training.inference import predict
from bnserve.training.rundir import load_run
from bnserve.training.train import train
from tests.support.export_failure import assert_fails_cleanly

from .conftest import PENGUINS


def _numpy_and_onnx(run_dir, model_path, records: RawRows):
    """The numpy inference path on the records' design inputs, and onnxruntime on the records."""
    run = load_run(run_dir)
    schema = run_schema(run_dir)
    assert schema is not None
    design = design_of(schema, records)
    expected = predict(run.params, run.meta, design)
    session = onnx_session(model_path.read_bytes())
    got = score_feeds(session, feeds_of(schema, records))
    return expected, got


def _train(tmp_path, name, lines, **settings):
    data = tmp_path / f"{name}.csv"
    data.write_text("\n".join(lines) + "\n")
    run_dir = tmp_path / name
    config = TrainConfig(data=str(data), hidden=(8,), epochs=3, **settings)
    train(config, run_dir, progress=False, plot=False, cache_dir="off")
    return run_dir


# --- penguins: the mixed model ------------------------------------------------------------------


def test_the_folded_graph_equals_the_numpy_path_on_raw_records(penguins_model):
    run = load_run(penguins_model.run_dir)
    schema = run_schema(penguins_model.run_dir)
    assert schema is not None
    found = schema_rows(run, schema)
    assert found.heldout_source == "held-out records" and not found.note  # from the data file
    # the rebuilt records encode to exactly what training stored in heldout.npz
    np.testing.assert_array_equal(design_of(schema, found.heldout), run.heldout_x)
    special = special_rows(schema)
    for records in (found.heldout, special):
        expected, got = _numpy_and_onnx(penguins_model.run_dir, penguins_model.model, records)
        assert np.max(np.abs(got["probabilities"] - expected)) <= 1e-5
        clear = decisive_rows(expected, PROBABILITY_TOLERANCE)  # no near tie that float32 may flip
        assert np.array_equal(got["label"][clear], np.argmax(expected, axis=1)[clear])
    # the special records: every cell missing (twice: "" and a token), every level unseen,
    # then every kept level of every column
    assert special.columns["island"][:3].tolist() == ["", "NA", UNSEEN_LEVEL]
    assert np.isnan(special.columns["body_mass_g"][:2]).all()
    for column in ("island", "sex"):
        kept = {value for value, _ in next(c for c in schema.columns if c.name == column).levels}
        assert kept <= set(special.columns[column][3:].tolist())


def test_missing_and_unseen_cells_take_the_training_encoding(penguins_model):
    schema = run_schema(penguins_model.run_dir)
    assert schema is not None
    design = design_of(schema, special_rows(schema))
    names = schema.inputs
    missing, token, unseen = design[0], design[1], design[2]
    np.testing.assert_array_equal(missing, token)  # "NA" is missing, as the reader reads it
    assert missing[names.index("sex=<missing>")] == 1  # sex had gaps in training: its own slot
    assert (
        missing[[names.index(f"island={v}") for v in ("Biscoe", "Dream", "Torgersen")]].sum() == 0
    )
    assert missing[names.index("body_mass_g:missing")] == 1
    fill = next(c.fill for c in schema.columns if c.name == "body_mass_g")
    assert missing[names.index("body_mass_g")] == pytest.approx(np.float32(fill))
    one_hots = [i for i, name in enumerate(names) if "=" in name]
    assert unseen[one_hots].sum() == 0  # no <other> slot on penguins: an unseen level adds nothing


def test_no_batch_norm_node_and_one_record_alone_equals_it_in_a_batch(penguins_model):
    model = onnx.load(str(penguins_model.model))
    ops = [node.op_type for node in model.graph.node]
    assert "BatchNormalization" not in ops
    assert {"LabelEncoder", "Gather", "IsNaN", "Where", "Sum"} <= set(ops)
    run = load_run(penguins_model.run_dir)
    schema = run_schema(penguins_model.run_dir)
    assert schema is not None
    records = RawRows.concat([schema_rows(run, schema).heldout, special_rows(schema)])
    session = onnx_session(penguins_model.model.read_bytes())
    together = score_feeds(session, feeds_of(schema, records))["probabilities"]
    for row in range(len(records)):
        alone = score_feeds(session, feeds_of(schema, records.take(np.array([row]))))
        np.testing.assert_array_equal(alone["probabilities"][0], together[row])


def test_the_metadata_describes_the_raw_inputs(penguins_model):
    model = onnx.load(str(penguins_model.model))
    metadata = read_metadata(model)
    card = parse_model_card(metadata, str(penguins_model.model))
    columns = ["island", "bill_length_mm", "bill_depth_mm", "flipper_length_mm", "body_mass_g"]
    assert card.format == "2"
    assert card.feature_names == (*columns, "sex", "year")
    assert card.schema is not None and card.schema.mixed
    assert [(i.name, i.kind) for i in card.schema.inputs][:2] == [
        ("island", "categorical"),
        ("bill_length_mm", "numeric"),
    ]
    assert card.schema.na_values[:2] == ("", "NA")
    assert card.schema.unseen_count("island", ["Dream", "Atlantis", "", "NA"]) == 1
    assert card.reference_feeds["island"].dtype == object
    assert card.reference_inputs.shape == (len(card.reference_outputs["label"]), 0)
    references = json.loads(metadata["bnserve.reference_inputs"])
    assert [""] in references["sex"] and [UNSEEN_LEVEL] in references["island"]
    assert [None] in references["body_mass_g"]
    drift = json.loads(metadata["bnserve.drift"])
    numeric = [*columns[1:], "year"]
    assert drift["feature_names"] == numeric
    assert len(drift["features"]["mean"]) == len(drift["features"]["edges"]) == len(numeric)
    schema = run_schema(penguins_model.run_dir)
    assert schema is not None
    for column in schema.columns:
        facts = drift["columns"][column.name]
        assert facts["missing_rate"] == pytest.approx(
            column.missing_count / schema.training_rows, abs=1e-6
        )
        if column.kind == "categorical":
            shares = facts["levels"]
            assert sum(shares.values()) == pytest.approx(1.0, abs=1e-5)
            for value, count in column.levels:
                assert shares[value] == pytest.approx(count / schema.training_rows, abs=1e-6)
    # numeric features on their present values only
    body = next(c for c in schema.columns if c.name == "body_mass_g")
    index = numeric.index("body_mass_g")
    assert drift["features"]["mean"][index] == pytest.approx(body.fill, rel=1e-6)


def test_the_fold_check_catches_a_wrong_lookup(penguins_model):
    run = load_run(penguins_model.run_dir)
    schema = run_schema(penguins_model.run_dir)
    assert schema is not None
    model, _ = build_model(run, unfolded=False, schema=schema)
    records = RawRows.concat([schema_rows(run, schema).heldout, special_rows(schema)])
    feeds, design = feeds_of(schema, records), design_of(schema, records)
    assert check_layers(model, run.params, run.meta, design, feeds).passed
    table = next(t for t in model.graph.initializer if t.name.endswith(".table"))
    rows = numpy_helper.to_array(table).copy()
    rows[[0, 1]] = rows[[1, 0]]  # two levels swapped
    table.CopyFrom(numpy_helper.from_array(rows, table.name))
    assert not check_layers(model, run.params, run.meta, design, feeds).passed


def test_a_run_whose_data_file_is_gone_is_checked_on_records_from_its_schema(
    tmp_path, out_dir, capsys
):
    data = tmp_path / "penguins.csv"
    shutil.copy(PENGUINS, data)
    run_dir = tmp_path / "run"
    config = TrainConfig(data=str(data), target="species", hidden=(8,), epochs=2)
    train(config, run_dir, progress=False, plot=False, cache_dir="off")
    data.unlink()
    assert main([str(run_dir), "--out", str(out_dir / "p.onnx")]) == 0
    out = capsys.readouterr().out
    assert "records synthesized from the schema (training data not readable" in out
    assert "drift reference: held-out split" in out


# --- rare levels, numbers taken as levels, --na-values, regression ------------------------------


def test_rare_unseen_and_token_cells_score_as_the_training_encoding_says(tmp_path, out_dir):
    rng = np.random.default_rng(3)
    lines = ["colour,code,size,tag,y"]
    for row in range(240):
        colour = ["red", "green", "blue"][row % 3] if row != 7 else "violet"  # violet: rare
        size = "?" if row % 11 == 0 else f"{rng.normal(50, 5):.2f}"  # "?" via --na-values
        tag = "" if row % 13 == 0 else ["a", "b"][row % 2]
        lines.append(f"{colour},{row % 4 + 1},{size},{tag},{rng.normal(row % 3, 1):.3f}")
    run_dir = _train(
        tmp_path,
        "rare",
        lines,
        target="y",
        categorical=("code",),
        na_values=("?",),
        dev_fraction=0.1,
    )
    model_path = out_dir / "rare.onnx"
    export_run(ExportSettings(run_dir=run_dir, out=model_path))
    schema = run_schema(run_dir)
    assert schema is not None and "?" in missing_tokens(schema)
    colour = next(c for c in schema.columns if c.name == "colour")
    assert colour.other_count  # violet is rare: an <other> slot
    records = RawRows(
        {
            "colour": np.array(["violet", UNSEEN_LEVEL, "red", "", "?"], dtype=object),
            "code": np.array(["1", "3", "9", "", "2"], dtype=object),
            "size": np.array([50.0, np.nan, 49.0, 51.0, 48.0]),
            "tag": np.array(["a", "b", "?", "c", "NA"], dtype=object),
        }
    )
    expected, got = _numpy_and_onnx(run_dir, model_path, records)
    np.testing.assert_allclose(got["y"], expected, rtol=1e-4, atol=1e-4 * 2)
    design = design_of(schema, records)
    other = schema.inputs.index("colour=<other>")
    assert design[0, other] == design[1, other] == 1  # rare and unseen: both <other>
    # regression models get the same metadata
    card = parse_model_card(read_metadata(onnx.load(str(model_path))), "rare")
    assert card.schema is not None and card.schema.column("code").levels == ("1", "2", "3", "4")
    drift = json.loads(card.get("drift"))
    assert drift["columns"]["colour"]["levels"]["<other>"] > 0


# --- numbers only -------------------------------------------------------------------------------


def _numbers(gaps: bool) -> list[str]:
    rng = np.random.default_rng(5)
    lines = ["a,b,c,y"]
    for row in range(200):
        a, b, c = rng.normal(10, 2), rng.normal(-3, 1), rng.normal(1000, 50)
        cells = [f"{a:.3f}", "" if gaps and row % 9 == 0 else f"{b:.3f}", f"{c:.1f}"]
        if gaps and row % 17 == 0:
            cells[2] = "NA"
        lines.append(",".join(cells) + f",{int(a + b > 7)}")
    return lines


def test_a_numbers_only_table_with_gaps_takes_x_with_nan_filled_in_the_graph(tmp_path, out_dir):
    run_dir = _train(tmp_path, "gaps", _numbers(gaps=True), target="y")
    model_path = out_dir / "gaps.onnx"
    export_run(ExportSettings(run_dir=run_dir, out=model_path))
    model = onnx.load(str(model_path))
    assert [
        (i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim])
        for i in model.graph.input
    ] == [("x", ["N", 3])]
    ops = [node.op_type for node in model.graph.node]
    assert {"IsNaN", "Where", "Cast", "MatMul"} <= set(ops) and "LabelEncoder" not in ops
    metadata = read_metadata(model)
    assert metadata["bnserve.format"] == "2"
    assert json.loads(metadata["bnserve.feature_names"]) == ["a", "b", "c"]
    assert json.loads(metadata["bnserve.schema"])["inputs"] == [
        {"name": "x", "kind": "numeric", "columns": ["a", "b", "c"]}
    ]
    assert any(None in row for row in json.loads(metadata["bnserve.reference_inputs"])["x"])
    records = RawRows(
        {
            "a": np.array([10.0, 10.0, np.nan]),
            "b": np.array([np.nan, -3.0, np.nan]),
            "c": np.array([1000.0, np.nan, np.nan]),
        }
    )
    expected, got = _numpy_and_onnx(run_dir, model_path, records)
    np.testing.assert_allclose(got["probabilities"], expected, atol=1e-5)
    schema = run_schema(run_dir)
    assert schema is not None
    indicator = schema.inputs.index("b:missing")
    assert design_of(schema, records)[0, indicator] == 1  # the indicator, computed in the graph


def test_a_numbers_only_table_with_an_ignored_column_takes_the_used_columns(tmp_path, out_dir):
    run_dir = _train(tmp_path, "ignored", _numbers(gaps=True), target="y", ignore=("b",))
    model_path = out_dir / "ignored.onnx"
    export_run(ExportSettings(run_dir=run_dir, out=model_path))
    model = onnx.load(str(model_path))
    assert model.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 2
    metadata = read_metadata(model)
    assert json.loads(metadata["bnserve.feature_names"]) == ["a", "c"]
    assert json.loads(metadata["bnserve.drift"])["feature_names"] == ["a", "c"]
    columns = json.loads(metadata["bnserve.schema"])["columns"]
    assert [(c["name"], c["kind"]) for c in columns][1] == ("b", "ignored")


def test_a_numbers_only_table_without_gaps_exports_the_format_1_graph(tmp_path, out_dir):
    run_dir = _train(tmp_path, "plain", _numbers(gaps=False), target="y")
    assert not (run_dir / "schema.json").exists()
    model_path = out_dir / "plain.onnx"
    export_run(ExportSettings(run_dir=run_dir, out=model_path))
    model = onnx.load(str(model_path))
    assert [node.op_type for node in model.graph.node] == [
        "Gemm",
        "Relu",
        "Gemm",
        "Softmax",
        "ArgMax",
    ]
    assert [t.name for t in model.graph.initializer] == [
        "hidden1.weight",
        "hidden1.bias",
        "output.weight",
        "output.bias",
    ]
    assert [o.domain for o in model.opset_import] == [""]
    metadata = read_metadata(model)
    assert metadata["bnserve.format"] == "1" and "bnserve.schema" not in metadata
    assert "feature_names" not in json.loads(metadata["bnserve.drift"])


def test_a_row_index_left_out_exports_a_format_2_model_of_the_other_columns(
    tmp_path, out_dir, capsys
):
    lines = ['"",a,b,y'] + [f"{i + 1},{i % 7},{(i * 3) % 5},{i % 2}" for i in range(60)]
    run_dir = _train(tmp_path, "indexed", lines)
    assert main([str(run_dir), "--out", str(out_dir / "m.onnx")]) == 0
    assert "max abs error" in capsys.readouterr().out
    model = onnx.load(str(out_dir / "m.onnx"))
    assert [node.op_type for node in model.graph.node][:1] == ["Gemm"]  # no gaps: no fill
    assert read_metadata(model)["bnserve.format"] == "2"


# --- what the other commands say ----------------------------------------------------------------


def test_import_refuses_a_model_with_a_string_input_in_one_line(penguins_model, out_dir, capsys):
    code = import_main([str(penguins_model.model), "--out", str(out_dir / "i.onnx")])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert "input 'island' is a string tensor" in error and "out of scope" in error
    assert not list(out_dir.iterdir())


def test_adapt_refuses_a_format_2_model_in_one_line(penguins_model, tmp_path, out_dir, capsys):
    run_dir = _train(tmp_path, "gaps", _numbers(gaps=True), target="y")
    gaps = tmp_path / "gaps.onnx"
    export_run(ExportSettings(run_dir=run_dir, out=gaps))
    data = tmp_path / "recent.csv"
    data.write_text("a,b,c\n1,2,3\n")
    for model in (penguins_model.model, gaps):  # raw columns; x with gaps filled in the graph
        code = adapt_main([str(model), "--data", str(data), "--out", str(out_dir / "a.onnx")])
        error = capsys.readouterr().err
        assert code == 2 and error.count("\n") == 1
        assert "mixed-table models" in error and "cannot be adapted yet" in error
    assert not list(out_dir.iterdir())


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("bnserve.format", "3", "is '3'; this server reads formats ['1', '2']"),
        ("bnserve.schema", "{}", "bnserve.schema is not a valid input schema"),
        ("bnserve.reference_inputs", '{"island": [["Dream"]]}', "one entry per graph input"),
    ],
)
def test_the_model_file_reader_names_a_bad_format_2_entry(penguins_model, key, value, fragment):
    metadata = read_metadata(onnx.load(str(penguins_model.model)))
    with pytest.raises(ModelLoadError) as raised:
        parse_model_card({**metadata, key: value}, "p.onnx")
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


def test_a_column_named_like_a_graph_tensor_is_refused_in_one_line(tmp_path, out_dir, capsys):
    lines = ["label,colour,y"] + [f"{i % 5},{['red', 'blue'][i % 2]},{i % 2}" for i in range(60)]
    run_dir = _train(tmp_path, "named", lines, target="y")
    error = assert_fails_cleanly(
        capsys,
        [str(run_dir), "--out", str(out_dir / "n.onnx")],
        out_dir,
        "column 'label': its name is taken by one of the graph's own tensors",
    )
    assert error.count("\n") == 1
