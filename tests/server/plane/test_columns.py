"""plane/columns.py: ColumnDecoder's one-pass decoding of the usual request gives exactly what
the column-by-column decode_tensors gives, and every other request (each refusal included) ends
with decode_tensors' answer; the per-call unseen / missing counts are per column."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from bnserve.server.modelfile.schema import InputSchema
from bnserve.server.models.model import Model, SessionThreads
from bnserve.server.plane.columns import ColumnDecoder, decode_tensors
from bnserve.server.plane.errors import InvalidInput
from bnserve.server.plane.inputs import Columns, TensorIn
from tests.support.mixed_model import PENGUINISH, UNSEEN, schema_json, write_mixed_model

SCHEMA = InputSchema.from_json(json.loads(schema_json(PENGUINISH)))
NAMES = [column.name for column in SCHEMA.inputs]  # bill_length_mm, island, body_mass_g, sex
NUMERIC = {"bill_length_mm", "body_mass_g"}
ROWS: dict[str, list[Any]] = {
    "bill_length_mm": [39.5, math.nan, 46.25],
    "island": ["Dream", "", UNSEEN],
    "body_mass_g": [3800.0, 4100.5, -1.0],
    "sex": ["female", "male", "NA"],
}


def _element(text: str | bytes) -> bytes:
    data = text.encode() if isinstance(text, str) else text
    return len(data).to_bytes(4, "little") + data


def _raw(rows: int = 3, shape: list[int] | None = None, **data: Any) -> list[TensorIn]:
    """Tensors as v2 raw_input_contents: FP32 little-endian bytes, BYTES length-prefixed."""
    tensors = []
    for index, name in enumerate(NAMES):
        values = ROWS[name][:rows]
        if name in NUMERIC:
            raw = np.array(values, "<f4").tobytes()
            datatype = "FP32"
        else:
            raw = b"".join(_element(v) for v in values)
            datatype = "BYTES"
        raw = data.get(name, raw)
        tensors.append(
            TensorIn(name, datatype, shape or [rows, 1], raw, f"raw_input_contents[{index}]")
        )
    return tensors


def _typed(rows: int = 3, **data: Any) -> list[TensorIn]:
    """Tensors as typed contents / JSON: lists of numbers and of str."""
    return [
        TensorIn(
            name,
            "FP32" if name in NUMERIC else "BYTES",
            [rows],
            data.get(name, ROWS[name][:rows]),
            "JSON data values",
        )
        for name in NAMES
    ]


def _same(decoded: Columns, reference: Columns) -> None:
    assert list(decoded.arrays) == list(reference.arrays) == NAMES
    for name in NAMES:
        got, want = decoded[name], reference[name]
        assert (got.dtype, got.shape) == (want.dtype, want.shape), name
        if got.dtype == object:
            assert got.tolist() == want.tolist(), name
        else:
            np.testing.assert_array_equal(got, want)


USUAL = {
    "raw, one example": lambda: _raw(1),
    "raw, three examples": lambda: _raw(3),
    "raw, shape [N]": lambda: _raw(3, shape=[3]),
    "raw, inputs in another order": lambda: list(reversed(_raw(3))),
    "typed lists": lambda: _typed(3),
    "typed bytes": lambda: _typed(3, island=[b"Dream", b"", b"x"], sex=[b"male"] * 3),
    "native float32 arrays": lambda: _typed(
        3, bill_length_mm=np.array([1, 2, 3], "f4"), body_mass_g=np.zeros(3, "f4")
    ),
    "no text at all": lambda: _typed(1, island=[""], sex=[""]),
}


@pytest.mark.parametrize("case", USUAL, ids=list(USUAL))
def test_the_usual_request_takes_one_pass_and_decodes_as_column_by_column(case: str) -> None:
    tensors = USUAL[case]()
    decoder = ColumnDecoder(SCHEMA, "penguins")
    usual = decoder._usual(tensors)
    assert usual is not None  # the one-pass path took it
    reference = decode_tensors(SCHEMA, "penguins", tensors)
    # what the checks and counters read before any array is built: names, shape, cells
    assert usual.names == reference.names == tuple(NAMES)
    assert usual.shape == reference.shape
    for name in NAMES:
        cells, want = usual.cells(name), reference[name].ravel().tolist()
        if name in NUMERIC:
            np.testing.assert_array_equal(cells, want)
        else:  # the decoder's own list of texts
            assert cells == reference.cells(name) == want
    _same(usual, reference)
    _same(decoder.decode(tensors), usual)
    layout = decoder.layout(tensors)
    assert layout is not None
    by_layout = decoder.from_layout(layout, [tensor.data for tensor in tensors])
    assert by_layout is not None
    _same(by_layout, usual)


OTHER = {  # not the usual form but valid: decode_tensors takes them
    "None cells in typed texts and numbers": lambda: _typed(
        2, island=[None, "Dream"], bill_length_mm=[None, 1]
    ),
    "FP64 raw": lambda: [
        t._replace(datatype="FP64", data=np.array(ROWS[t.name], "<f8").tobytes())
        if t.name == "body_mass_g"
        else t
        for t in _raw(3)
    ],
    "[N] and [N, 1] together": lambda: [
        t._replace(shape=[3]) if t.name == "sex" else t for t in _raw(3)
    ],
}


@pytest.mark.parametrize("case", OTHER, ids=list(OTHER))
def test_other_valid_forms_are_decoded_column_by_column(case: str) -> None:
    tensors = OTHER[case]()
    decoder = ColumnDecoder(SCHEMA, "penguins")
    assert decoder._usual(tensors) is None
    _same(decoder.decode(tensors), decode_tensors(SCHEMA, "penguins", tensors))


def _with(tensors: list[TensorIn], name: str, **changes: Any) -> list[TensorIn]:
    return [t._replace(**changes) if t.name == name else t for t in tensors]


BAD = {
    "infinity, raw": lambda: _raw(2, bill_length_mm=np.array([1, np.inf], "<f4").tobytes()),
    "infinity, typed": lambda: _typed(2, body_mass_g=[1.0, -math.inf]),
    "too few bytes": lambda: _raw(2, body_mass_g=b"\x00" * 7),
    "a BYTES length past the end": lambda: _raw(1, island=b"\x09\x00\x00\x00Dream"),
    "a BYTES length inside an element": lambda: _raw(2, sex=_element("male") + b"\x01\x00"),
    "too few BYTES elements": lambda: _raw(2, sex=_element("male")),
    "not UTF-8": lambda: _raw(1, island=_element(b"\xff\xfe")),
    "not UTF-8, typed": lambda: _typed(1, island=[b"\xff"]),
    "text in a numeric column": lambda: _typed(2, bill_length_mm=[1.0, "2"]),
    "a bool in a numeric column": lambda: _typed(1, bill_length_mm=[True]),
    "a number in a BYTES column": lambda: _typed(1, sex=[3]),
    "an integer beyond float32": lambda: _typed(1, body_mass_g=[10**400]),
    "a wrong shape": lambda: _raw(1, shape=[1, 2]),
    "N = 0": lambda: _raw(0, shape=[0]),
    "an inconsistent N": lambda: _with(_raw(2), "sex", shape=[1, 1], data=_element("male")),
    "a missing column": lambda: _raw(1)[:-1],
    "an unknown column": lambda: [*_raw(1)[:-1], _raw(1)[-1]._replace(name="species")],
    "a column twice": lambda: [*_raw(1)[:-1], _raw(1)[0]],
    "FP32 where BYTES is expected": lambda: _with(_raw(1), "island", datatype="FP32"),
    "BYTES where FP32 is expected": lambda: _with(_raw(1), "body_mass_g", datatype="BYTES"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_every_refusal_is_decode_tensors_one_line(case: str) -> None:
    tensors = BAD[case]()
    with pytest.raises(InvalidInput) as reference:
        decode_tensors(SCHEMA, "penguins", tensors)
    with pytest.raises(InvalidInput) as decoded:
        ColumnDecoder(SCHEMA, "penguins").decode(tensors)
    assert str(decoded.value) == str(reference.value)
    assert "\n" not in str(decoded.value)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    path = write_mixed_model(tmp_path_factory.mktemp("columns") / "penguins.onnx")
    return Model.load(path, "penguins", "1", SessionThreads())


def test_unseen_levels_and_gaps_are_counted_per_column(model: Model) -> None:
    counted: dict[str, tuple[int, int]] = {}
    model.cell_counter = lambda column, unseen, missing: counted.update({column: (unseen, missing)})
    x = ColumnDecoder(SCHEMA, "penguins").decode(_raw(3))
    assert x.gaps is True  # the decoder saw the NaN
    for columns in (x, Columns(x.arrays)):  # gaps known, and not known (looked for)
        counted.clear()
        model.observe_cells(columns)
        # island: "" missing, UNSEEN unseen; sex: "NA" a missing token; a NaN in bill_length_mm
        assert counted == {"bill_length_mm": (0, 1), "island": (1, 1), "sex": (0, 1)}
    counted.clear()
    model.observe_cells(ColumnDecoder(SCHEMA, "penguins").decode(_raw(1)))
    assert counted == {}  # known levels, no gaps: nothing counted
