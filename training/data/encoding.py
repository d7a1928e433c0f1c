"""From stored rows (numbers and codes, NaN missing) to the network's inputs, by the schema.

x (n, F) float32 as the readers store it becomes the design (n, D) float64, column by column
(schema.ColumnSchema.inputs names each of the D inputs):
  numeric      the value, a missing cell filled with the training mean; then a 0/1 missing
               indicator when the training rows had gaps
  categorical  one-hot over the kept levels, then "other" (levels rare in training, and levels
               never seen in training) and "missing" when the training rows had them. Without
               an "other" input an unseen level has no input (all zeros); likewise a missing cell
               without a "missing" input goes to "other", or to none.
Only the numeric values are standardized afterwards (standardized_inputs); one-hot and
indicator inputs stay 0/1, so one-hot × W is a row of W (the lookup phase 2 folds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bnserve.training.data.schema import ColumnSchema, TableSchema, number_of_cell


@dataclass(frozen=True)
class ColumnEncoder:
    """How one used column's stored values (x[:, position]) become its inputs at `offset`.

    A stored value is a number, or the code of a cell in the table's vocabulary of that column
    (`lookup` maps codes); NaN is missing."""

    position: int  # the column in x
    offset: int  # its first input in the design
    schema: ColumnSchema
    # numeric text column: (V,) float64 number of each code, NaN for a text cell (--numeric)
    value_of_code: np.ndarray | None
    # categorical: (V,) int64 input slot of each code, −1 for none; for numbers taken as levels
    # (--categorical on a column of numbers) the sorted level numbers and their slots
    slot_of_code: np.ndarray | None
    seen_code: np.ndarray | None  # (V,) bool: the training rows had this level
    level_numbers: np.ndarray | None  # (L,) float64 sorted
    level_slots: np.ndarray | None  # (L,) int64
    other_slot: int  # −1: none
    missing_slot: int  # −1: none


class Encoder:
    """Encodes stored rows into design rows, for one schema and the table's vocabularies."""

    def __init__(self, schema: TableSchema, vocabularies: Sequence[tuple[str, ...] | None]) -> None:
        self.schema = schema
        by_column = list(vocabularies) or [None] * len(schema.columns)
        self.columns: list[ColumnEncoder] = []
        offset = 0
        for position, column in enumerate(schema.columns):
            if column.kind == "ignored":
                continue
            self.columns.append(_column_encoder(position, offset, column, by_column[position]))
            offset += len(column.inputs)
        self.width = offset  # D
        mask = np.zeros(offset, dtype=bool)
        for encoder in self.columns:
            if encoder.schema.kind == "numeric":
                mask[encoder.offset] = True
        self.standardized_inputs = mask  # (D,) bool: the numeric values

    def encode(self, raw: np.ndarray) -> np.ndarray:
        """raw (n, F) float32/64 stored rows → design (n, D) float64."""
        design = np.zeros((len(raw), self.width), dtype=np.float64)
        for encoder in self.columns:
            values = np.asarray(raw[:, encoder.position], dtype=np.float64)
            if encoder.schema.kind == "numeric":
                _encode_numeric(encoder, values, design)
            else:
                slots = _slots(encoder, values)
                rows = np.flatnonzero(slots >= 0)
                design[rows, encoder.offset + slots[rows]] = 1.0
        return design

    def standardized_values(self, raw: np.ndarray) -> np.ndarray:
        """raw (n, F) stored rows → (n, K) float64: the inputs `standardized_inputs` marks (the
        numeric values, filled), exactly as `encode` puts them, without the one-hot columns."""
        numeric = [encoder for encoder in self.columns if encoder.schema.kind == "numeric"]
        values = np.asarray(raw[:, [encoder.position for encoder in numeric]], dtype=np.float64)
        for index, encoder in enumerate(numeric):
            if encoder.value_of_code is not None:  # a text column of numbers: codes → numbers
                values[:, index] = _numbers_of_codes(encoder.value_of_code, values[:, index])
        fills = [0.0 if encoder.schema.fill is None else encoder.schema.fill for encoder in numeric]
        np.copyto(values, np.array(fills, dtype=np.float64), where=np.isnan(values))
        return values

    def unseen_counts(self, raw: np.ndarray) -> dict[str, int]:
        """Per categorical column: the present cells of raw (n, F) whose level the training
        rows never had (scored with "other", never an error)."""
        counts = {}
        for encoder in self.columns:
            if encoder.schema.kind != "categorical":
                continue
            values = np.asarray(raw[:, encoder.position], dtype=np.float64)
            values = values[~np.isnan(values)]
            if encoder.seen_code is not None:
                seen = encoder.seen_code[values.astype(np.int64)]
            else:
                known = _level_numbers(encoder.schema.levels + encoder.schema.rare)
                seen = np.isin(values, known)
            counts[encoder.schema.name] = int(np.count_nonzero(~seen))
        return counts


def _column_encoder(
    position: int, offset: int, column: ColumnSchema, vocabulary: tuple[str, ...] | None
) -> ColumnEncoder:
    kept = len(column.levels)
    other_slot = kept if column.other_count else -1
    missing_slot = kept + (other_slot >= 0) if column.missing_count else -1
    if column.kind == "numeric":
        values = None
        if vocabulary is not None:
            parsed = [number_of_cell(cell) for cell in vocabulary]
            values = np.array([np.nan if n is None else n for n in parsed], dtype=np.float64)
        return ColumnEncoder(
            position, offset, column, values, None, None, None, None, -1, missing_slot
        )
    if vocabulary is None:  # --categorical on numbers: the levels are number texts
        numbers = _level_numbers(column.levels)
        order = np.argsort(numbers, kind="stable")
        return ColumnEncoder(
            position,
            offset,
            column,
            None,
            None,
            None,
            numbers[order],
            order,
            other_slot,
            missing_slot,
        )
    slot_of = {value: slot for slot, (value, _) in enumerate(column.levels)}
    known = set(slot_of) | {value for value, _ in column.rare}
    slot_of_code = np.array([slot_of.get(cell, other_slot) for cell in vocabulary], dtype=np.int64)
    seen = np.array([cell in known for cell in vocabulary], dtype=bool)
    return ColumnEncoder(
        position, offset, column, None, slot_of_code, seen, None, None, other_slot, missing_slot
    )


def _level_numbers(levels: tuple[tuple[str, int], ...]) -> np.ndarray:
    """(L,) float64 of levels named by number texts, as float32 stored them."""
    return np.array([float(value) for value, _ in levels], dtype=np.float32).astype(np.float64)


def _encode_numeric(
    encoder: ColumnEncoder, values: np.ndarray, design: np.ndarray, offset: int | None = None
) -> None:
    """The column's value (filled) at design column `offset` (default: its own) and, when it
    has one, its missing indicator right after."""
    offset = encoder.offset if offset is None else offset
    if encoder.value_of_code is not None:  # a text column of numbers: codes → numbers
        values = _numbers_of_codes(encoder.value_of_code, values)
    missing = np.isnan(values)
    fill = encoder.schema.fill if encoder.schema.fill is not None else 0.0
    design[:, offset] = np.where(missing, fill, values)
    if encoder.schema.indicator:
        design[:, offset + 1] = missing


def _numbers_of_codes(value_of_code: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """(n,) float64 number of each code (NaN: missing, or a text cell)."""
    present = ~np.isnan(codes)
    numbers = np.full(len(codes), np.nan)
    numbers[present] = value_of_code[codes[present].astype(np.int64)]
    return numbers


def _slots(encoder: ColumnEncoder, values: np.ndarray) -> np.ndarray:
    """(n,) int64 input slot of each cell, −1 for none."""
    missing = np.isnan(values)
    present = ~missing
    slots = np.full(len(values), encoder.other_slot, dtype=np.int64)
    if encoder.slot_of_code is not None:
        slots[present] = encoder.slot_of_code[values[present].astype(np.int64)]
    elif encoder.level_numbers is not None and encoder.level_slots is not None:
        numbers = values[present]
        if len(encoder.level_numbers) and len(numbers):
            found = np.minimum(
                np.searchsorted(encoder.level_numbers, numbers), len(encoder.level_numbers) - 1
            )
            exact = encoder.level_numbers[found] == numbers
            slots[present] = np.where(exact, encoder.level_slots[found], encoder.other_slot)
    slots[missing] = encoder.missing_slot if encoder.missing_slot >= 0 else encoder.other_slot
    return slots
