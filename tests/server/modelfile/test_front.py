"""server/modelfile/front.py: a mixed export's column front found in its own file, the graph cut
after it, and the server's codes for a cell equal to the graph's LabelEncoders'; any other
graph is served whole."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from bnserve.server.drift.monitor import DriftSettings
from bnserve.server.modelfile.front import Front, find_front
from bnserve.server.modelfile.schema import InputSchema
from bnserve.server.models.model import Model, SessionThreads
from bnserve.server.plane.columns import decode_tensors
from bnserve.server.plane.errors import ModelLoadError
from bnserve.server.plane.inputs import Columns, Packed, TensorIn, concatenate, take
from bnserve.training.config import TrainConfig
from tests.support.mixed_model import write_mixed_model

LEVELS = {"colour": ["red", "green", "blue", "cyan"], "shape": ["round", "square", "flat"]}


def _csv(path: Path, columns: tuple[str, ...], rows: int = 240) -> Path:
    """A table with gaps in `size`, a rare level ('zz', once) and NA cells in `colour`."""
    rng = np.random.default_rng(3)
    lines = [",".join([*columns, "y"])]
    for row in range(rows):
        cells = {
            "size": "" if row % 9 == 0 else f"{rng.normal(5, 2):.4f}",
            "weight": f"{rng.normal(0, 1):.4f}",
            "colour": "zz" if row == 7 else "NA" if row % 13 == 0 else LEVELS["colour"][row % 4],
            "shape": LEVELS["shape"][row % 3],
        }
        lines.append(",".join([*(cells[c] for c in columns), f"k{row % 2}"]))
    path.write_text("\n".join(lines) + "\n")
    return path


def _export(folder: Path, columns: tuple[str, ...]) -> Path:
    from bnserve.export.exporter import ExportSettings, export_run
    from bnserve.training.train import train

    data = _csv(folder / "table.csv", columns)
    config = TrainConfig(data=str(data), target="y", hidden=(8,), epochs=1, seed=0)
    train(config, folder / "run", progress=False, plot=False, cache_dir="off")
    model = folder / "model.onnx"
    export_run(ExportSettings(run_dir=folder / "run", out=model))
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two numeric (one with gaps) and two categorical columns (one with rare and NA cells)."""
    return _export(tmp_path_factory.mktemp("front"), ("size", "colour", "weight", "shape"))


def _schema(model: onnx.ModelProto) -> InputSchema:
    metadata = {p.key: p.value for p in model.metadata_props}
    return InputSchema.from_json(json.loads(metadata["bnserve.schema"]))


def _raw_rows(schema: InputSchema, count: int = 12) -> Columns:
    """Every level of every column, rare and unseen levels, "", a missing token, NaN."""
    arrays: dict[str, np.ndarray] = {}
    for column in schema.inputs:
        if column.kind == "categorical":
            cells = [*LEVELS[column.name], "zz", "never", "", "NA"]
            arrays[column.name] = np.array(
                [[cells[i % len(cells)]] for i in range(count)], dtype=object
            )
        else:
            values = np.linspace(-3, 9, count, dtype=np.float32)
            values[::4] = np.nan
            arrays[column.name] = values.reshape(count, 1)
    return Columns(arrays)


def _with_output(model: onnx.ModelProto, name: str, width: int) -> bytes:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    exposed.graph.output.append(
        helper.make_tensor_value_info(name, TensorProto.INT64, ["N", width])
    )
    return exposed.SerializeToString()


def test_an_exported_mixed_model_is_cut_where_its_columns_are_joined(exported: Path) -> None:
    model = onnx.load(str(exported))
    schema = _schema(model)
    front = find_front(exported.read_bytes(), schema)
    assert front is not None
    assert front.numeric == ("size", "weight") and front.categorical == ("colour", "shape")
    cut = onnx.load_from_string(front.model_bytes)
    onnx.checker.check_model(cut)
    assert [(i.name, i.type.tensor_type.elem_type) for i in cut.graph.input] == [
        (front.numbers_input, TensorProto.FLOAT),
        (front.codes_input, TensorProto.INT64),
    ]
    ops = [node.op_type for node in cut.graph.node]
    assert "LabelEncoder" not in ops and "Concat" not in ops
    assert len(ops) == len(model.graph.node) - 2 - 2  # the two encoders and the two joins
    # the server's codes are the graph's LabelEncoders' (offsets included), cell for cell
    rows = _raw_rows(schema)
    packed = front.pack(rows)
    full = ort.InferenceSession(_with_output(model, front.codes_input, 2))
    *answers, graph_codes = full.run(None, rows.arrays)
    np.testing.assert_array_equal(packed.codes, graph_codes)
    assert packed.codes.dtype == np.int64 and packed.numbers.dtype == np.float32
    cut_answers = ort.InferenceSession(front.model_bytes).run(None, front.feed(packed))
    for whole, part in zip(answers, cut_answers, strict=True):
        np.testing.assert_allclose(part, whole, rtol=0, atol=1e-6)


def test_one_numeric_and_one_categorical_column(tmp_path: Path) -> None:
    exported = _export(tmp_path, ("colour", "size"))
    model = onnx.load(str(exported))
    front = find_front(exported.read_bytes(), _schema(model))
    assert front is not None
    # no joins to remove: the numeric column is its own [N, 1] block, the one slot column the codes
    assert front.numbers_input == "size"
    cut = onnx.load_from_string(front.model_bytes)
    assert [i.name for i in cut.graph.input] == ["size", front.codes_input]
    rows = _raw_rows(_schema(model))
    answers = ort.InferenceSession(str(exported)).run(None, rows.arrays)
    cut_answers = ort.InferenceSession(front.model_bytes).run(None, front.feed(front.pack(rows)))
    np.testing.assert_allclose(cut_answers[0], answers[0], rtol=0, atol=1e-6)


def _changed(model: onnx.ModelProto, change: str) -> onnx.ModelProto:
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    graph = edited.graph
    encoders = [node for node in graph.node if node.op_type == "LabelEncoder"]
    joins = [node for node in graph.node if node.op_type == "Concat"]
    if change == "a second reader of a text column":
        graph.node.append(helper.make_node("Identity", ["colour"], ["colour.copy"]))
        graph.output.append(helper.make_tensor_value_info("colour.copy", TensorProto.STRING, None))
    elif change == "a raw column is an output":
        graph.output.append(helper.make_tensor_value_info("size", TensorProto.FLOAT, None))
    elif change == "a join on another axis":
        joins[-1].attribute[0].i = 0
    elif change == "a join in another order":
        names = list(joins[0].input)
        del joins[0].input[:]
        joins[0].input.extend(reversed(names))
    elif change == "an encoder with a string default":
        encoders[0].attribute.append(helper.make_attribute("default_string", "x"))
    elif change == "an encoder with a key twice":
        keys = next(a for a in encoders[0].attribute if a.name == "keys_strings")
        values = next(a for a in encoders[0].attribute if a.name == "values_int64s")
        keys.strings.append(keys.strings[0])
        values.ints.append(values.ints[-1])
    return edited


@pytest.mark.parametrize(
    "change",
    [
        "a second reader of a text column",
        "a raw column is an output",
        "a join on another axis",
        "a join in another order",
        "an encoder with a string default",
        "an encoder with a key twice",
    ],
)
def test_any_other_front_is_served_whole(exported: Path, change: str) -> None:
    model = onnx.load(str(exported))
    assert find_front(model.SerializeToString(), _schema(model)) is not None
    assert find_front(_changed(model, change).SerializeToString(), _schema(model)) is None


def test_a_hand_made_graph_and_bad_bytes_are_served_whole(tmp_path: Path) -> None:
    path = write_mixed_model(tmp_path / "hand.onnx")  # per-column IsNaN / Gather: not export's
    model = onnx.load(str(path))
    assert find_front(path.read_bytes(), _schema(model)) is None
    assert find_front(b"\x0a\xff", _schema(model)) is None
    loaded = Model.load(path, "hand", "1", SessionThreads(1, 1))
    assert loaded.served_graph == "full" and loaded.decoder is not None
    assert loaded.decoder.front is None
    loaded.check_parity()


def test_an_export_is_served_cut_and_the_parity_gate_runs_the_cut(exported: Path) -> None:
    model = Model.load(exported, "m", "1", SessionThreads(1, 1))
    assert model.served_graph == "cut after the column front"
    model.check_parity()
    assert set(model.session_feed(model.reference_rows)) == {"input.numeric", "input.rows"}


def test_a_wrong_cut_is_refused_by_the_parity_gate(
    exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bnserve.server.models.model as model_module

    def wrong(model_bytes: bytes, schema: InputSchema) -> Front | None:
        front = find_front(model_bytes, schema)
        assert front is not None
        colours = front.lookups[0]
        first = min(colours.values())  # every colour scored as the first level
        return Front(
            front.model_bytes,
            front.numeric,
            front.categorical,
            front.numbers_input,
            front.codes_input,
            ({text: first for text in colours}, *front.lookups[1:]),
            (first, *front.default_slots[1:]),
        )

    loaded = Model.load(exported, "m", "1", SessionThreads(1, 1))
    colours = {str(text) for text in loaded.reference_rows["colour"].ravel()}
    assert len(colours) > 1  # the reference rows hold more than the first level
    monkeypatch.setattr(model_module, "find_front", wrong)
    tampered = Model.load(exported, "m", "1", SessionThreads(1, 1))
    with pytest.raises(ModelLoadError, match="parity gate failed"):
        tampered.check_parity()


def _element(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(4, "little") + data


def _request(rows: Columns) -> list[TensorIn]:
    """rows as the usual v2 request: raw FP32 contents and raw BYTES elements, shape [N, 1]."""
    count = rows.shape[0]
    tensors = []
    for name, array in rows:
        if array.dtype == object:
            data = b"".join(_element(str(text)) for text in array.ravel())
            tensors.append(TensorIn(name, "BYTES", [count, 1], data, "raw"))
        else:
            data = array.astype("<f4").tobytes()
            tensors.append(TensorIn(name, "FP32", [count, 1], data, "raw"))
    return tensors


@pytest.mark.parametrize("count", [1, 2, 12])
def test_the_decoder_packs_the_usual_request_as_the_front_packs_any_columns(
    exported: Path, count: int
) -> None:
    model = Model.load(exported, "m", "1", SessionThreads(1, 1))
    assert model.decoder is not None and model.schema is not None
    rows = take(_raw_rows(model.schema), 0, count)
    tensors = _request(rows)
    decoded = model.decoder.decode(tensors)
    assert decoded.packed is not None and decoded.packed.front is model.decoder.front
    slow = decode_tensors(model.schema, "m", tensors)  # the fallback: no packed form
    assert slow.packed is None
    repacked = model.decoder.front.pack(slow)
    np.testing.assert_array_equal(decoded.packed.codes, repacked.codes)
    np.testing.assert_array_equal(decoded.packed.numbers, repacked.numbers)  # NaN == NaN
    assert decoded.packed.numbers.flags.c_contiguous and decoded.packed.codes.flags.c_contiguous
    full = ort.InferenceSession(str(exported)).run(None, rows.arrays)
    for answers in (model.predict(decoded), model.predict(slow)):
        np.testing.assert_allclose(answers[0], full[0], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(answers[1], full[1])


def test_columns_packed_by_another_model_are_packed_again(exported: Path) -> None:
    """A shadow or another version scores the primary's Columns: never by its packed form."""
    model = Model.load(exported, "m", "1", SessionThreads(1, 1))
    rows = model.reference_rows
    assert isinstance(rows, Columns)
    right = model.predict(rows)
    count = rows.shape[0]
    wrong = Packed(object(), np.zeros((count, 2), np.float32), np.zeros((count, 2), np.int64))
    np.testing.assert_array_equal(model.predict(Columns(rows.arrays, packed=wrong))[0], right[0])


def test_batches_keep_the_packed_form_only_when_every_part_has_it(exported: Path) -> None:
    model = Model.load(exported, "m", "1", SessionThreads(1, 1))
    assert model.decoder is not None and model.schema is not None
    rows = _raw_rows(model.schema)
    first, second = model.decoder.decode(_request(take(rows, 0, 3))), take(rows, 3, 5)
    assert isinstance(first, Columns) and first.packed is not None
    assert concatenate([first, second]).packed is None  # type: ignore[union-attr]
    both = concatenate([first, model.decoder.decode(_request(second))])
    assert isinstance(both, Columns) and both.packed is not None
    whole = model.decoder.decode(_request(take(rows, 0, 5)))
    assert whole.packed is not None
    np.testing.assert_array_equal(both.packed.codes, whole.packed.codes)
    part = take(whole, 1, 4)
    assert isinstance(part, Columns) and part.packed is not None
    np.testing.assert_array_equal(part.packed.codes, whole.packed.codes[1:4])
    np.testing.assert_array_equal(model.predict(part)[0], model.predict(whole)[0][1:4])


def test_the_drift_layer_session_is_cut_too(exported: Path) -> None:
    model = Model.load(
        exported, "m", "1", SessionThreads(1, 1), drift=DriftSettings(layers=True, sample=1.0)
    )
    assert model.drift is not None and model.drift.watch_layers
    assert model._layer_cut
    model.check_parity()  # the layer session's answers are gated too
    assert model.schema is not None
    model.predict(_raw_rows(model.schema))  # sampled: through the layer session
    assert model.drift.report()["life"]["examples"] == pytest.approx(12)
