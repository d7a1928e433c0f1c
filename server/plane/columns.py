"""A mixed model's request, column by column: v2 tensors or named values → `Columns`.

Each graph input is a column named after it (server/modelfile/schema.py). Over v2 a numeric
column comes as FP32, FP64, INT32 or INT64 and a categorical one as BYTES, each of shape [N] or
[N, 1]; JSON `null` (or NaN) is a missing number, `null` or "" a missing text. Every refusal is
InvalidInput naming the column: a missing or unknown column, text in a numeric column or a number
where BYTES was expected, a wrong shape, a different N from the other columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np

from bnserve.server.modelfile.schema import CATEGORICAL, GraphInput, InputSchema
from bnserve.server.plane.errors import InvalidInput
from bnserve.server.plane.inputs import Columns, Packed, TensorIn

if TYPE_CHECKING:
    from bnserve.server.modelfile.front import Front

NUMERIC_DATATYPES: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
}
BYTES = "BYTES"
_NOT_NUMBERS = (str, bytes, bool, list, dict)
_RAW = (bytes, bytearray, memoryview)
_INFINITIES = frozenset((math.inf, -math.inf))
_BYTES_TYPE, _STR_TYPE = frozenset((bytes,)), frozenset((str,))
_NUMBER_TYPES = frozenset((float, int, type(None)))  # typed numbers (bool is refused)
SMALL = 64  # up to this many values, Python's checks beat numpy's per-call cost


def is_categorical(column: GraphInput) -> bool:
    return column.kind == CATEGORICAL


def datatype_of(column: GraphInput) -> str:
    """The v2 datatype a column is described with (ModelMetadata, ModelConfig)."""
    return BYTES if is_categorical(column) else "FP32"


def input_names(schema: InputSchema) -> tuple[str, ...]:
    """The graph input names, in order."""
    return tuple(column.name for column in schema.inputs)


def describe(schema: InputSchema, limit: int = 8) -> str:
    """'a' FP32, 'b' BYTES, … — the inputs a mixed model takes, for messages."""
    shown = [f"{c.name!r} {datatype_of(c)}" for c in schema.inputs[:limit]]
    more = ", …" if len(schema.inputs) > limit else ""
    return f"{', '.join(shown)}{more} (each [N] or [N, 1])"


class Layout(NamedTuple):
    """Where a usual request's columns are: order[i] is the request's tensor of the model's
    input i (None: the model's own order); rows: N."""

    order: tuple[int, ...] | None
    rows: int


class ColumnDecoder:
    """One mixed model's v2 input tensors → Columns, built once per model.

    `decode` takes the usual request in one pass over all columns at once: every column once,
    numeric ones FP32 and categorical ones BYTES, all of one shape [N] or [N, 1], numbers as
    raw little-endian bytes (one frombuffer for all numeric columns) or as typed lists of
    numbers, texts as raw BYTES elements or typed str / UTF-8 bytes. It then checks for
    infinity once over all numeric columns. Anything else, or anything wrong, goes to
    `decode_tensors`, which takes every form and names the problem and the column.

    With the model's `front` (a cut graph is served: server/modelfile/front.py), the usual
    request's Columns also carry their `Packed` form, made from the same two blocks: the
    numbers (N, Fn) from the one frombuffer, each text cell's slot from the list of texts.
    """

    def __init__(self, schema: InputSchema, model: str, front: Front | None = None) -> None:
        self.schema = schema
        self.model = model
        kinds = [is_categorical(column) for column in schema.inputs]
        numeric_names = tuple(c.name for c in schema.inputs if not is_categorical(c))
        categorical_names = tuple(c.name for c in schema.inputs if is_categorical(c))
        if front is not None and (front.numeric, front.categorical) != (
            numeric_names,
            categorical_names,
        ):
            front = None  # not this schema's front: Columns without their packed form
        self.front = front
        self._names = input_names(schema)
        self._name_set = frozenset(self._names)
        self._datatypes = tuple(BYTES if categorical else "FP32" for categorical in kinds)
        self._numeric = tuple(i for i, categorical in enumerate(kinds) if not categorical)
        self._categorical = tuple(i for i, categorical in enumerate(kinds) if categorical)
        # where each input's (N, 1) array is: (numeric?, its row in that kind's block)
        numeric_rows = {index: row for row, index in enumerate(self._numeric)}
        categorical_rows = {index: row for row, index in enumerate(self._categorical)}
        self._places = tuple(
            (False, categorical_rows[i]) if categorical else (True, numeric_rows[i])
            for i, categorical in enumerate(kinds)
        )
        # each text column's place among the text columns (Columns.cells)
        self._text_places = {self._names[index]: row for row, index in enumerate(self._categorical)}
        # A transport's note of the last usual request it decoded (opaque here: e.g. the v2
        # servicer's RawForm), by transport; replaced whole, never changed in place.
        self.remembered: dict[str, object] = {}

    def decode(self, tensors: Sequence[TensorIn]) -> Columns:
        """v2 input tensors → Columns in the model's input order; InvalidInput names the
        column (decode_tensors' messages)."""
        columns = self._usual(tensors)
        if columns is None:
            return decode_tensors(self.schema, self.model, tensors)
        return columns

    def _usual(self, tensors: Sequence[TensorIn]) -> Columns | None:
        """The usual request's Columns, or None for anything else (decode_tensors decides)."""
        layout = self.layout(tensors)
        if layout is None:
            return None
        return self.from_layout(layout, [tensor[3] for tensor in tensors])

    def layout(self, tensors: Sequence[TensorIn]) -> Layout | None:
        """How a usual request lays its columns out (every column once, in any order, each in
        its kind's datatype, all of one shape [N] or [N, 1]), from the tensors' names,
        datatypes and shapes alone; None for anything else (`decode` decides)."""
        if len(tensors) != len(self._names):
            return None
        names = tuple([tensor[0] for tensor in tensors])
        order = None
        if names != self._names:
            position = {name: index for index, name in enumerate(names)}
            if position.keys() != self._name_set:  # a duplicate leaves a name out
                return None
            order = tuple([position[name] for name in self._names])
            tensors = [tensors[index] for index in order]
        if tuple([tensor[1] for tensor in tensors]) != self._datatypes:
            return None
        shape = tensors[0][2]
        if any([tensor[2] != shape for tensor in tensors]):
            return None
        dims = list(shape)
        if not (len(dims) == 1 or (len(dims) == 2 and dims[1] == 1)) or dims[0] < 1:
            return None
        return Layout(order, dims[0])

    def from_layout(self, layout: Layout, data: Sequence[Any]) -> Columns | None:
        """The Columns of a usual request's data (each tensor's, in the request's order) laid
        out as `layout` says, or None when the data is not the usual form (raw bytes of the
        right size or typed lists, no infinity, clean BYTES elements): `decode` decides.

        A transport that knows a request has the same names, datatypes and shapes as one
        `layout` took (server/grpc/raw_form.py) calls this alone, without building tensors."""
        order, count = layout
        if order is not None:
            data = [data[index] for index in order]
        numbers = _number_block([data[i] for i in self._numeric], count)
        cells = _text_cells([data[i] for i in self._categorical], count)
        if numbers is None or cells is None:
            return None
        block, gaps = numbers
        places, names = self._places, self._names
        categorical = len(self._categorical)

        def build() -> dict[str, np.ndarray]:  # when something reads the arrays
            texts = np.array(cells, dtype=object).reshape(categorical, count, 1)
            arrays = [
                block[row] if numeric else texts[row]
                for numeric, row in places  # views, no copies
            ]
            return dict(zip(names, arrays, strict=True))

        packed = None
        front = self.front
        if front is not None:
            joined = block.reshape(len(self._numeric), count)
            joined = joined.T if count == 1 else np.ascontiguousarray(joined.T)
            packed = Packed(front, joined, front.codes(cells, count))
        return Columns.decoded(names, count, build, (cells, self._text_places), gaps, packed)


def _number_block(data: list[Any], count: int) -> tuple[np.ndarray, bool] | None:
    """((columns, count, 1) float32, whether any is NaN) of FP32 columns (raw bytes, or typed
    numbers or None), or None when a column is not that (decode_tensors names it) or holds an
    infinity."""
    if not data:
        return np.empty((0, count, 1), dtype=np.float32), False
    if all([isinstance(values, _RAW) for values in data]):
        size = count * 4
        if any([len(values) != size for values in data]):
            return None
        block = np.frombuffer(b"".join(data), dtype="<f4")  # one copy for all columns
    elif all([type(values) is np.ndarray and values.dtype == np.float32 for values in data]):
        if any([values.shape != (count,) for values in data]):
            return None
        block = np.concatenate(data)  # float32 already (the native API's repeated float)
    elif all([type(values) is list for values in data]):
        if any([len(values) != count for values in data]):
            return None
        if not all([_NUMBER_TYPES.issuperset(map(type, values)) for values in data]):
            return None
        try:
            block = np.array(data, dtype=np.float32)
        except (OverflowError, ValueError):  # an integer beyond float32
            return None
    else:
        return None
    flat = block.ravel()
    if flat.size <= SMALL:
        values = flat.tolist()
        if not _INFINITIES.isdisjoint(values):
            return None
        total = sum(values)  # finite float32 values: NaN only if one is NaN
        gaps = total != total
    else:
        if np.isinf(flat).any():
            return None
        gaps = bool(np.isnan(flat).any())
    return block.reshape(len(data), count, 1), gaps


def _text_cells(data: list[Any], count: int) -> list[str] | None:
    """The cells of BYTES columns (raw elements, or typed str or UTF-8 bytes) as str, column
    after column, or None for anything else (None cells, a bad element: decode_tensors)."""
    texts: list[str] = []
    try:
        for values in data:
            if type(values) is bytes and count == 1:  # the usual single example, inline
                if int.from_bytes(values[:4], "little") != len(values) - 4:
                    return None
                texts.append(values[4:].decode("utf-8"))
                continue
            if isinstance(values, _RAW):
                elements = _elements(bytes(values), count)
                if elements is None:
                    return None
            elif type(values) is list and len(values) == count:
                elements = values
            else:
                return None
            kinds = set(map(type, elements))
            if kinds == _BYTES_TYPE:
                texts += [element.decode("utf-8") for element in elements]
            elif kinds == _STR_TYPE:
                texts += cast("list[str]", elements)
            else:
                return None
    except UnicodeDecodeError:
        return None
    return texts


def _elements(data: bytes, count: int) -> list[bytes] | None:
    """A raw BYTES tensor's count elements, or None when it does not split into exactly that."""
    if count == 1:  # the usual single example: one length, then the element
        if len(data) < 4 or int.from_bytes(data[:4], "little") != len(data) - 4:
            return None
        return [data[4:]]
    elements: list[bytes] = []
    offset, end = 0, len(data)
    while offset + 4 <= end:
        stop = offset + 4 + int.from_bytes(data[offset : offset + 4], "little")
        if stop > end:
            return None
        elements.append(data[offset + 4 : stop])
        offset = stop
    return elements if offset == end and len(elements) == count else None


def decode_tensors(schema: InputSchema, model: str, tensors: Sequence[TensorIn]) -> Columns:
    """v2 input tensors → Columns in the model's input order; InvalidInput names the column.
    Every form, one column at a time (ColumnDecoder takes the usual request faster)."""
    by_name: dict[str, TensorIn] = {}
    for given in tensors:
        if given.name in by_name:
            raise InvalidInput(f"input {given.name!r} appears twice in the request")
        by_name[given.name] = given
    known = {column.name for column in schema.inputs}
    unknown = [name for name in by_name if name not in known]
    if unknown:
        raise InvalidInput(
            f"unknown input {unknown[0]!r}: model {model!r} takes one input per column: "
            f"{describe(schema)}"
        )
    arrays: dict[str, np.ndarray] = {}
    first: tuple[str, int] | None = None
    for column in schema.inputs:
        tensor = by_name.get(column.name)
        if tensor is None:
            kind = "categorical, BYTES" if is_categorical(column) else "numeric, FP32"
            raise InvalidInput(
                f"missing input {column.name!r} ({kind} [N, 1]): model {model!r} takes one "
                f"input per column: {describe(schema)}"
            )
        array = _decode(column, tensor)
        if first is None:
            first = (column.name, array.shape[0])
        elif array.shape[0] != first[1]:
            raise InvalidInput(
                f"input {column.name!r} has {array.shape[0]} rows but input {first[0]!r} has "
                f"{first[1]}: every column needs the same N"
            )
        arrays[column.name] = array
    return Columns(arrays)


def _decode(column: GraphInput, tensor: TensorIn) -> np.ndarray:
    name, datatype, shape, data = column.name, tensor.datatype, list(tensor.shape), tensor.data
    categorical = column.kind == CATEGORICAL
    if categorical and datatype != BYTES:
        raise InvalidInput(
            f'input {name!r} is a categorical column: send BYTES (text; null or "" for '
            f"missing), not {datatype}"
        )
    if not categorical and datatype not in NUMERIC_DATATYPES:
        raise InvalidInput(
            f"input {name!r} is a numeric column: send FP32, FP64, INT32 or INT64 (null or NaN "
            f"for missing), not {datatype}"
        )
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
        raise InvalidInput(f"input {name!r} has shape {shape}; a column takes [N] or [N, 1], N ≥ 1")
    count = shape[0]
    if categorical:
        texts = _texts(name, data, tensor.source)
        if len(texts) != count:
            raise InvalidInput(
                f"input {name!r} has {len(texts)} values; shape {shape} needs {count}"
            )
        return np.array(texts, dtype=object).reshape(count, 1)
    values = _numbers(name, datatype, data, tensor.source, count, shape)
    return values.reshape(count, 1)


def _numbers(
    name: str, datatype: str, data: Any, source: str, count: int, shape: list[int]
) -> np.ndarray:
    if isinstance(data, _RAW):
        dtype = NUMERIC_DATATYPES[datatype]
        if len(data) != count * dtype.itemsize:
            raise InvalidInput(
                f"input {name!r}: {source} has {len(data)} bytes; shape {shape} {datatype} "
                f"needs {count * dtype.itemsize}"
            )
        values = np.frombuffer(data, dtype=dtype)  # FP32: read-only, no copy
        if datatype != "FP32":
            values = values.astype(np.float32)
    else:
        if not isinstance(data, np.ndarray):
            for position, value in enumerate(data):
                if isinstance(value, _NOT_NUMBERS):
                    what = "text" if isinstance(value, str | bytes) else "a non-number"
                    raise InvalidInput(
                        f"input {name!r} is a numeric column but its {source} hold {what} "
                        f"{value!r} at position {position}; send a number, or null for missing"
                    )
        if len(data) != count:
            raise InvalidInput(
                f"input {name!r} has {len(data)} {source}; shape {shape} needs {count} values"
            )
        try:
            values = np.asarray(data, dtype=np.float32)
        except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond float
            raise InvalidInput(f"input {name!r}: {source} must be numbers (or null)") from None
    if _has_infinity(values):
        position = int(np.flatnonzero(np.isinf(values))[0])
        raise InvalidInput(
            f"input {name!r}: value {values[position]} at position {position} is not finite "
            "(send null or NaN for a missing value)"
        )
    return values


def _has_infinity(values: np.ndarray) -> bool:
    if values.size <= SMALL:
        return not _INFINITIES.isdisjoint(values.tolist())
    return bool(np.isinf(values).any())


def _texts(name: str, data: Any, source: str) -> list[str]:
    if isinstance(data, _RAW):
        elements: Sequence[Any] = _split_bytes(name, bytes(data), source)
    elif isinstance(data, np.ndarray):
        raise InvalidInput(f"input {name!r} is a categorical column: send text, not numbers")
    else:
        elements = data
    texts: list[str] = []
    for position, value in enumerate(elements):
        if value is None:
            texts.append("")
        elif isinstance(value, str):
            texts.append(value)
        elif isinstance(value, bytes):
            try:
                texts.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                raise InvalidInput(
                    f"input {name!r}: element {position} of {source} is not UTF-8 text"
                ) from None
        else:
            raise InvalidInput(
                f"input {name!r} is a categorical column (BYTES) but its {source} hold a number "
                f'{value!r} at position {position}; send it as text ("{value}"), or '
                'null / "" for missing'
            )
    return texts


def _split_bytes(name: str, data: bytes, source: str) -> list[bytes]:
    """A BYTES tensor's raw form: each element a 4-byte little-endian length, then itself."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise InvalidInput(f"input {name!r}: {source} ends inside an element's 4-byte length")
        length = int.from_bytes(data[offset : offset + 4], "little")
        offset += 4
        if offset + length > len(data):
            raise InvalidInput(
                f"input {name!r}: {source} element {len(elements)} claims {length} bytes; "
                f"{len(data) - offset} are left"
            )
        elements.append(data[offset : offset + length])
        offset += length
    return elements


def from_values(
    schema: InputSchema, model: str, values: Mapping[str, float | str | None]
) -> Columns:
    """One example from named values (a number, a text or None for missing per column) → a
    one-row Columns; InvalidInput names a missing, unknown or mistyped column."""
    known = {column.name for column in schema.inputs}
    unknown = [name for name in values if name not in known]
    if unknown:
        raise InvalidInput(
            f"unknown input {unknown[0]!r}: model {model!r} takes {describe(schema)}"
        )
    arrays: dict[str, np.ndarray] = {}
    for column in schema.inputs:
        if column.name not in values:
            raise InvalidInput(
                f"missing value for column {column.name!r}: model {model!r} takes "
                f"{describe(schema)} (send a missing value to mean missing)"
            )
        value = values[column.name]
        if is_categorical(column):
            if value is not None and not isinstance(value, str):
                raise InvalidInput(
                    f"column {column.name!r} is categorical: send text, not the number {value!r}"
                )
            arrays[column.name] = np.array([[value or ""]], dtype=object)
        else:
            if isinstance(value, str):
                raise InvalidInput(
                    f"column {column.name!r} is numeric: send a number, not the text {value!r}"
                )
            number = math.nan if value is None else float(value)
            if math.isinf(number):
                raise InvalidInput(f"column {column.name!r}: {number} is not a finite number")
            arrays[column.name] = np.array([[number]], dtype=np.float32)
    return Columns(arrays)
