"""server/modelfile/schema.py: the parsed `bnserve.schema` of a format-2 model, in step with
training's schema (the exporter writes schema.json's columns into it)."""

from __future__ import annotations

import json

import pytest

from bnserve.server.modelfile.schema import InputSchema
from bnserve.training.data.schema import ColumnSchema

COLUMNS = (
    ColumnSchema("id", "ignored", "--ignore", 0),
    ColumnSchema(
        "colour",
        "categorical",
        "inferred",
        3,
        levels=(("blue", 9), ("red", 12)),
        rare=(("violet", 1),),
    ),
    ColumnSchema("size", "numeric", "inferred", 2, fill=4.5, indicator=True),
    ColumnSchema("tag", "categorical", "inferred", 0, levels=(("a", 5), ("b", 7))),
)
NA = ["", "NA", "NaN", "nan", "null", "NULL", "None", "?"]


def _schema(**changes: object) -> dict:
    value = {
        "version": 1,
        "na_values": NA,
        "inputs": [{"name": c.name, "kind": c.kind} for c in COLUMNS if c.kind != "ignored"],
        "columns": [c.to_dict() for c in COLUMNS],
    }
    return {**value, **changes}


def test_columns_read_back_as_training_wrote_them() -> None:
    schema = InputSchema.from_json(json.loads(json.dumps(_schema())))
    assert schema.mixed
    assert [i.name for i in schema.inputs] == ["colour", "size", "tag"]
    assert [c.name for c in schema.used_columns] == ["colour", "size", "tag"]
    for trained in COLUMNS:
        spec = schema.column(trained.name)
        assert spec.kind == trained.kind and spec.missing_count == trained.missing_count
        if trained.kind == "categorical":
            # the slots are the one-hot inputs training made, in the same order
            assert [f"{trained.name}={slot}" for slot in spec.slots()] == trained.inputs
    assert schema.column("size").fill == 4.5 and schema.column("size").indicator
    assert schema.column("colour").level_counts == (9, 12)


def test_missing_and_unseen_cells() -> None:
    schema = InputSchema.from_json(_schema())
    assert schema.is_missing("") and schema.is_missing("?") and not schema.is_missing(" NA")
    # rare levels were seen in training; missing cells are not levels at all
    assert schema.unseen_count("colour", ["red", "violet", "green", "", "NA", "Red"]) == 2
    assert schema.unseen_count("tag", []) == 0


def test_a_numbers_only_model_takes_x() -> None:
    value = _schema(
        inputs=[{"name": "x", "kind": "numeric", "columns": ["size"]}],
        columns=[COLUMNS[0].to_dict(), COLUMNS[2].to_dict()],
    )
    schema = InputSchema.from_json(value)
    assert not schema.mixed and schema.inputs[0].columns == ("size",)


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ([], "expected a JSON object with version 1"),
        (_schema(version=2), "expected a JSON object with version 1"),
        (_schema(inputs=[{"name": "id", "kind": "numeric"}]), "names no used column 'id'"),
        (_schema(inputs=[{"name": "weight", "kind": "numeric"}]), "names no used column"),
        (_schema(inputs=[{"name": "size", "kind": "text"}]), "kind 'text'"),
        (_schema(columns=[{"name": "size"}]), "malformed (KeyError"),
    ],
)
def test_a_malformed_schema_is_named(value: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=None) as raised:
        InputSchema.from_json(value)
    assert fragment in str(raised.value)
