"""A raw record as the native API's `PredictRequest.values`: None → missing, text → text,
a number → number."""

from __future__ import annotations

from typing import Any

from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as native


def native_values(rows: dict[str, list[Any]], row: int) -> dict[str, native.Value]:
    """Row `row` of raw columns (column name → cells) as named native values."""
    values = {}
    for name, column in rows.items():
        value = column[row]
        if value is None:
            values[name] = native.Value(missing=True)
        elif isinstance(value, str):
            values[name] = native.Value(text=value)
        else:
            values[name] = native.Value(number=value)
    return values
