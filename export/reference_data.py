"""`bnserve import --reference-data FILE`: the rows (R, F) float32 the fold is verified on.

Which columns are inputs, for a CSV or Parquet file of `header` columns and a model of F inputs:

- `--target COL`: every column but COL (which must be there), and those must be F;
- no `--target`, F columns: the file is inputs only and is taken whole;
- no `--target`, F + 1 columns: the last column is a target, skipped (as `bnserve train` reads);
- anything else is refused, naming both counts.

An NPZ file's inputs are its array 'x' ('y', if there, is not used); `digits` is the built-in
data set's inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bnserve.export.errors import ExportError
from bnserve.server.plane.errors import first_line
from bnserve.training.data.loading import load_dataset


def read_reference_data(
    path: Path, features: int, target: str | None
) -> tuple[np.ndarray, list[str] | None]:
    """(x (R, features) float32, the file's input names or None) for the model's F inputs."""
    name = path.name.lower()
    if str(path) == "digits" and not path.exists():  # the built-in data set, as train reads it
        x = np.asarray(load_dataset("digits").x, dtype=np.float32)
        if x.shape[1] != features:
            raise ExportError(f"digits has {x.shape[1]} inputs, but the model takes {features}")
        return x, None
    if name.endswith(".npz"):
        return _read_npz(path, features, target)
    if not (name.endswith((".csv", ".csv.gz", ".parquet", ".pq"))):
        raise ExportError(
            f"--reference-data: {path}: unsupported file type (use .csv, .csv.gz, .parquet or .npz)"
        )
    header = _columns(path)
    if target is not None:
        if target not in header:
            raise ExportError(f"{path}: --target {target!r} is not a column ({_list(header)})")
        inputs = [column for column in header if column != target]
    elif len(header) == features:
        inputs = header
    elif len(header) == features + 1:
        inputs, target = header[:-1], header[-1]
    else:
        raise ExportError(
            f"{path}: {len(header)} columns, but the model takes {features} inputs: give exactly "
            f"{features} input columns, or {features + 1} with the target last or named by --target"
        )
    if len(inputs) != features:
        raise ExportError(
            f"{path}: {len(inputs)} input columns besides the target {target!r}, but the model "
            f"takes {features}"
        )
    return _read_columns(path, inputs), inputs


def _list(header: list[str]) -> str:
    shown = ", ".join(repr(column) for column in header[:8])
    return shown + (f", … {len(header)} in all" if len(header) > 8 else "")


def _columns(path: Path) -> list[str]:
    """The column names, read from the header (CSV) or the schema (Parquet) only."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return list(pq.read_schema(path).names)
        with pa_csv.open_csv(path) as reader:
            return list(reader.schema.names)
    except (pa.ArrowException, OSError) as error:
        raise ExportError(f"--reference-data: {path}: not readable ({first_line(error)})") from None


def _read_columns(path: Path, names: list[str]) -> np.ndarray:
    """The named columns as (R, len(names)) float32; an empty cell is NaN (missing)."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            table = pq.read_table(path, columns=names)
        else:
            convert = pa_csv.ConvertOptions(
                column_types={column: pa.float32() for column in names}, include_columns=names
            )
            table = pa_csv.read_csv(path, convert_options=convert)
        columns = [
            table.column(column).cast(pa.float32()).to_numpy(zero_copy_only=False)
            for column in names
        ]
    except (pa.ArrowException, OSError) as error:
        raise ExportError(f"--reference-data: {path}: {first_line(error)}") from None
    return _checked(path, np.stack(columns, axis=1).astype(np.float32))


def _checked(path: Path, x: np.ndarray) -> np.ndarray:
    """x itself, once it has rows and every value is finite (the original graph has no notion
    of a missing value: an empty cell would make every output NaN)."""
    if x.shape[0] == 0:
        raise ExportError(f"--reference-data: {path}: no rows")
    bad = np.argwhere(~np.isfinite(x))
    if bad.size:
        row, column = (int(v) for v in bad[0])
        raise ExportError(
            f"--reference-data: {path}: row {row + 1}, input {column + 1} is empty or not finite "
            "in float32"
        )
    return x


def _read_npz(path: Path, features: int, target: str | None) -> tuple[np.ndarray, list[str] | None]:
    if target is not None:
        raise ExportError(f"{path}: --target names a CSV column; an NPZ file's inputs are 'x'")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {
                name: archive[name] for name in archive.files if name in ("x", "feature_names")
            }
    except Exception as error:  # numpy raises ValueError, OSError, zipfile errors, …
        raise ExportError(
            f"--reference-data: {path}: not a readable .npz ({first_line(error)})"
        ) from None
    x = arrays.get("x")
    if x is None or x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise ExportError(f"--reference-data: {path}: needs a 2-D numeric array 'x' (rows, inputs)")
    if x.shape[1] != features:
        raise ExportError(
            f"{path}: 'x' has {x.shape[1]} columns, but the model takes {features} inputs"
        )
    names = (
        [str(name) for name in arrays["feature_names"].tolist()]
        if "feature_names" in arrays
        else None
    )
    return _checked(path, x.astype(np.float32)), names
