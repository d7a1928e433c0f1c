"""A request's inputs as the data plane carries them, for every kind of model.

- A format-1 or numbers-only model takes one float32 array `x` (N, F): the fast path, unchanged.
- A mixed model (a categorical column; docs/contracts.md "The ONNX model") takes `Columns`: one
  (N, 1) array per graph input, in the model's input order: float32 for a numeric column (NaN:
  missing), object holding `str` for a categorical column ("" or a missing token: missing).

`ModelInput` is either; `rows`, `concatenate` and `take` work on both, so the batcher, the
stream and capture/drift code need not tell them apart.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np


class TensorIn(NamedTuple):
    """One v2 input tensor as a transport decoded it.

    data: bytes (the tensor's little-endian bytes: raw_input_contents, HTTP binary data) or the
    typed values, flat (an ndarray or a sequence numpy converts; BYTES: str, bytes or None).
    source names where the data
    came from, for messages ("fp32_contents", "raw_input_contents[0]", "JSON data").
    """

    name: str
    datatype: str
    shape: Sequence[int]
    data: bytes | np.ndarray | Sequence[Any]  # numbers, or text / bytes / None for BYTES
    source: str


class Packed(NamedTuple):
    """A mixed model's columns as its cut graph takes them (server/modelfile/front.py): numbers
    (N, Fn) float32, the numeric columns joined (NaN: missing; (N, 0) without any), codes
    (N, Fc) int64, each categorical cell's slot as its column's LabelEncoder gives it. front:
    the Front that made them; a model uses them only if it is its own (a shadow or another
    version codes the columns again)."""

    front: object
    numbers: np.ndarray
    codes: np.ndarray


class Columns:
    """N rows of a mixed model's inputs: name → (N, 1) array, in the model's input order.

    `shape` is (N, number of columns), so code that reads `x.shape[0]` for the row count works
    on both kinds of input; `names` are the columns in order. `gaps`: whether a numeric column
    holds NaN (None: not known; the decoder knows it from its one pass over the numbers, so the
    missing-cell counters need not look again). `packed`: the same rows as a cut graph takes
    them, when the decoder made them in its pass (None: the model packs them itself if it
    serves a cut graph).

    The decoder's Columns (`Columns.decoded`) make their arrays only when something reads them
    (drift's sampled calls, capture, the full graph's feed, the batcher): a call scored by the
    packed form alone never builds them; `cells` reads a text column from the decoder's list."""

    __slots__ = ("_arrays", "_build", "_texts", "gaps", "names", "packed", "shape")

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        gaps: bool | None = None,
        packed: Packed | None = None,
    ) -> None:
        self._arrays: dict[str, np.ndarray] | None = dict(arrays)
        self._build: Callable[[], dict[str, np.ndarray]] | None = None
        self._texts: tuple[list[str], Mapping[str, int]] | None = None
        self.gaps = gaps
        self.packed = packed
        self.names: tuple[str, ...] = tuple(self._arrays)
        first = next(iter(self._arrays.values()), None)
        self.shape: tuple[int, int] = (0 if first is None else first.shape[0], len(self._arrays))

    @classmethod
    def decoded(
        cls,
        names: tuple[str, ...],
        rows: int,
        build: Callable[[], dict[str, np.ndarray]],
        texts: tuple[list[str], Mapping[str, int]],
        gaps: bool,
        packed: Packed | None,
    ) -> Columns:
        """A decoder's Columns: `build()` makes the arrays (name → (rows, 1), in `names`
        order) when first read; texts: every text cell, column after column, and each text
        column's place in that order (its cells are texts[place·rows:(place+1)·rows])."""
        self = cls.__new__(cls)
        self._arrays, self._build, self._texts = None, build, texts
        self.gaps, self.packed, self.names, self.shape = gaps, packed, names, (rows, len(names))
        return self

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """name → (N, 1) array, in the model's input order."""
        arrays = self._arrays
        if arrays is None:
            assert self._build is not None
            arrays = self._arrays = self._build()  # two threads may both build: the same
        return arrays

    def cells(self, name: str) -> list[Any]:
        """Column `name`'s N cells as a list (a text column's str, from the decoder's list
        when it made one)."""
        texts = self._texts
        if texts is not None and name in texts[1]:
            rows = self.shape[0]
            place = texts[1][name] * rows
            return texts[0][place : place + rows]
        return self.arrays[name].ravel().tolist()

    def __iter__(self) -> Iterator[tuple[str, np.ndarray]]:
        return iter(self.arrays.items())

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __repr__(self) -> str:
        return f"Columns({self.shape[0]} rows: {', '.join(self.names)})"


ModelInput = np.ndarray | Columns


def rows(inputs: ModelInput) -> int:
    """N, the examples in inputs."""
    return int(inputs.shape[0])


def concatenate(parts: Sequence[ModelInput]) -> ModelInput:
    """The parts' rows one after another (every part of one kind, for one model)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, Columns):
        tables = [part for part in parts if isinstance(part, Columns)]
        packs = [part.packed for part in tables if part.packed is not None]
        packed = None
        if len(packs) == len(tables) and all(pack.front is packs[0].front for pack in packs):
            numbers = np.concatenate([pack.numbers for pack in packs])
            packed = Packed(packs[0].front, numbers, np.concatenate([pack.codes for pack in packs]))
        return Columns(
            {name: np.concatenate([part[name] for part in tables]) for name in first.arrays},
            packed=packed,
        )
    return np.concatenate([part for part in parts if isinstance(part, np.ndarray)])


def take(inputs: ModelInput, start: int, stop: int) -> ModelInput:
    """Rows start..stop-1 of inputs."""
    if isinstance(inputs, Columns):
        packed = inputs.packed
        if packed is not None:
            packed = Packed(packed.front, packed.numbers[start:stop], packed.codes[start:stop])
        return Columns({name: array[start:stop] for name, array in inputs}, packed=packed)
    return inputs[start:stop]


def feed(inputs: ModelInput, input_name: str) -> dict[str, np.ndarray]:
    """The onnxruntime feed: {input_name: x} for an array, one entry per column otherwise."""
    if isinstance(inputs, Columns):
        return inputs.arrays
    return {input_name: inputs}
