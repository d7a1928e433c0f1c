"""Data: the built-in digits, CSV (plain or gzip) with a header, Parquet, NPZ; task inference;
seeded split.

Every error names the file and the row/column. Rows are counted as in the file: a CSV's header is
line 1, its first data row line 2; Parquet and NPZ rows count from 0 like the array.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bnserve import capture_store
from bnserve.training.data import readers
from bnserve.training.data.cache import FeatureRows, cache_dir_setting, load_table
from bnserve.training.data.mixed import DEFAULT_NA_VALUES
from bnserve.training.errors import DataError

if TYPE_CHECKING:
    from bnserve.training.config import TrainConfig

DIGITS_PATH = Path(__file__).parent / "datasets" / "digits.csv.gz"
# The built-in digits' target column, as scripts/example_files.py writes it into digits.csv.
DIGITS_TARGET = "digit"
# A numeric target with at most this many distinct integer values is taken as class labels.
MAX_INFERRED_CLASSES = 20


@dataclass(frozen=True)
class Dataset:
    """Examples as loaded: x (N, F); y (N,) int64 class indices or (N, T) float64.

    x is float32 for CSV and Parquet (a cache.RowFile over the float32 cache, an array when the
    cache is off, or a columns.ColumnRows for a Parquet file with text columns that fits in
    memory) and float64 for digits/NPZ.
    """

    x: FeatureRows
    y: np.ndarray
    task: str  # classification | regression
    feature_names: list[str]
    class_names: list[str] | None  # classification: the name of each class index
    target_names: list[str] | None  # regression: the name of each target column
    source: str  # where it came from, for messages
    # per feature column: None (numbers, NaN missing) or a text column's vocabulary (x holds
    # codes); empty for digits and NPZ (numbers only)
    vocabularies: tuple[tuple[str, ...] | None, ...] = ()
    mixed: bool = False  # text columns or missing cells somewhere (data/mixed.py)
    labeled: np.ndarray | None = None  # (n,) rows with a target (--drop-missing-target); None: all
    delimiter: str = ","  # a CSV's field separator, to find a row's line

    def place(self, row: int) -> str:
        """Where row `row` (from 0) is, for messages: "FILE: line L" for a CSV, else "row R"."""
        path = Path(self.source)
        if readers.is_csv(path) and path.is_file():
            return f"{self.source}: line {readers.csv_line_of_row(path, row, self.delimiter)}"
        return f"{self.source}: row {row}"


@dataclass(frozen=True)
class Split:
    """Row indices of the train, dev and test parts."""

    train: np.ndarray
    dev: np.ndarray
    test: np.ndarray


def load_dataset(
    source: str,
    *,
    target: str | None = None,
    task: str | None = None,
    cache_dir: str | None = None,
    delimiter: str = ",",
    na_values: tuple[str, ...] = (),
    drop_missing_target: bool = False,
) -> Dataset:
    """Load "digits", a CSV (.csv or .csv.gz, with header), a .parquet, or a .npz.

    CSV and Parquet go through the float32 cache (training/data/cache.py; cache_dir None: the
    default location, "off": read into memory); x then reads the cache file on demand.
    na_values: cells read as missing besides mixed.DEFAULT_NA_VALUES. A missing target cell is
    refused with their count, unless drop_missing_target (Dataset.labeled lists the others).
    """
    if source == "digits":
        if target not in (None, DIGITS_TARGET):
            raise DataError(
                f"digits: the built-in set has no column {target!r}; its target is "
                f"{DIGITS_TARGET!r} (--target {DIGITS_TARGET}, or leave --target out)"
            )
        return _load_digits(task)
    path = Path(source)
    if path.is_dir():
        return _load_directory(
            path,
            target=target,
            task=task,
            cache_dir=cache_dir,
            na_values=na_values,
            drop_missing_target=drop_missing_target,
        )
    if not path.is_file():
        raise DataError(
            f"{source}: no such data file (use 'digits', a .csv, .csv.gz, .parquet or .npz "
            "file, or a directory of CSV files or captured calls)"
        )
    if readers.is_csv(path) or readers.is_parquet(path):
        missing_cells = DEFAULT_NA_VALUES + tuple(
            c for c in na_values if c not in DEFAULT_NA_VALUES
        )
        x, info = load_table(path, target, cache_dir_setting(cache_dir), delimiter, missing_cells)
        cells, codes = info.target.cells, info.target.codes
        unlabeled = [index for index, cell in enumerate(cells) if cell in missing_cells]
        labeled = None
        if unlabeled:
            missing_rows = np.isin(codes, unlabeled)
            count = int(np.count_nonzero(missing_rows))
            if not drop_missing_target:
                unlabeled_set = Dataset(
                    x, codes, "", [], None, None, str(path), delimiter=delimiter
                )
                first = unlabeled_set.place(int(np.argmax(missing_rows)))
                raise DataError(
                    f"{first}, column {info.target_name!r}: {count} row(s) have no target value; "
                    "leave them out with --drop-missing-target"
                )
            labeled = np.flatnonzero(~missing_rows)
            cells, codes = _without_cells(cells, codes, unlabeled)
        dataset = _build(x, cells, codes, info.feature_names, info.target_name, task, str(path))
        return dataclasses.replace(
            dataset,
            vocabularies=info.vocabularies,
            mixed=info.mixed,
            labeled=labeled,
            delimiter=delimiter,
        )
    if path.suffix.lower() == ".npz":
        if target is not None:
            raise DataError(f"{path}: --target names a CSV column; an NPZ file's target is 'y'")
        return _load_npz(path, task)
    raise DataError(
        f"{path}: unsupported file type {path.suffix.lower()!r} "
        "(use .csv, .csv.gz, .parquet or .npz)"
    )


def _load_directory(
    directory: Path,
    *,
    target: str | None,
    task: str | None,
    cache_dir: str | None,
    na_values: tuple[str, ...],
    drop_missing_target: bool,
) -> Dataset:
    """A directory as one table (bnserve/capture_store.py's training_rows): its CSV files
    concatenated in name order, or a capture store's calls with their true answers joined
    (calls without an answer yet are left out). Read through a temporary CSV, then the CSV
    path."""
    capture = capture_store.is_capture_directory(directory)
    with tempfile.TemporaryDirectory(prefix="bnserve-table-") as scratch:
        table = Path(scratch) / f"{directory.name or 'data'}.csv"
        try:
            capture_store.write_training_csv(directory, table)
        except (capture_store.TableError, csv.Error, UnicodeDecodeError) as error:
            raise DataError(f"{directory}: {error}") from None
        except (OSError, EOFError) as error:
            raise DataError(f"{directory}: cannot read it as one table ({error})") from None
        dataset = load_dataset(
            str(table),
            target=target,
            task=task,
            cache_dir="off" if cache_dir is None else cache_dir,
            na_values=na_values,
            drop_missing_target=drop_missing_target or capture,
        )
    return dataclasses.replace(dataset, source=str(directory))


def _without_cells(
    cells: list[str], codes: np.ndarray, dropped: list[int]
) -> tuple[list[str], np.ndarray]:
    """Target cells without the missing ones; their rows get code 0 (never read: not labeled)."""
    keep = [index for index in range(len(cells)) if index not in set(dropped)]
    new_code = np.zeros(len(cells), dtype=np.int64)
    new_code[keep] = np.arange(len(keep))
    return [cells[index] for index in keep], new_code[codes]


def _load_digits(task: str | None) -> Dataset:
    with gzip.open(DIGITS_PATH, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float64)
    names = [f"pixel_{row}_{col}" for row in range(8) for col in range(8)]
    labels = [str(v) for v in table[:, -1].astype(np.int64)]
    return _build_from_cells(table[:, :-1], labels, names, DIGITS_TARGET, task, "digits")


def _build_from_cells(
    x: np.ndarray,
    target_cells: list[str],
    feature_names: list[str],
    target_name: str,
    task: str | None,
    source: str,
) -> Dataset:
    """_build for a list of target strings (digits, NPZ)."""
    index_of: dict[str, int] = {}
    codes = np.array(
        [index_of.setdefault(cell, len(index_of)) for cell in target_cells], dtype=np.int64
    )
    return _build(x, list(index_of), codes, feature_names, target_name, task, source)


def _load_npz(path: Path, task: str | None) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as error:
        raise DataError(f"{path}: cannot read without pickle ({error})") from None
    except Exception as error:
        raise DataError(f"{path}: not a readable .npz file ({error})") from None
    for name in ("x", "y"):
        if name not in arrays:
            raise DataError(f"{path}: missing array {name!r} (found {sorted(arrays)})")
    x, y = arrays["x"], arrays["y"]
    if x.ndim != 2:
        raise DataError(f"{path}: 'x' must be 2-D (rows, features), got shape {x.shape}")
    if y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
        raise DataError(f"{path}: 'y' shape {y.shape} does not match 'x' rows {x.shape[0]}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{path}: 'x' has non-numeric dtype {x.dtype}")
    x = x.astype(np.float64)
    _check_finite(x, f"{path}: 'x'")
    if "feature_names" in arrays:
        names = [str(name) for name in arrays["feature_names"].tolist()]
        if len(names) != x.shape[1]:
            raise DataError(
                f"{path}: 'feature_names' has {len(names)} names, 'x' has {x.shape[1]} columns"
            )
    else:
        names = [f"x{col}" for col in range(x.shape[1])]
    if y.ndim == 2:
        if task == "classification":
            raise DataError(f"{path}: 2-D 'y' {y.shape} is a regression target")
        return _regression(x, _numeric_targets(y, path), names, None, str(path))
    if np.issubdtype(y.dtype, np.number):
        _check_finite(y.astype(np.float64)[:, None], f"{path}: 'y'")
        cells = [repr(float(v)) if not float(v).is_integer() else str(int(v)) for v in y]
    else:
        cells = [str(v) for v in y.tolist()]
    return _build_from_cells(x, cells, names, "y", task, str(path))


def _numeric_targets(y: np.ndarray, path: Path) -> np.ndarray:
    if not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{path}: regression target 'y' has non-numeric dtype {y.dtype}")
    y = y.astype(np.float64)
    _check_finite(y, f"{path}: 'y'")
    return y


def _check_finite(values: np.ndarray, where: str) -> None:
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:
        row, col = (int(v) for v in bad[0])
        raise DataError(f"{where}: row {row}, column {col} is {values[row, col]} (not finite)")


def _build(
    x: FeatureRows,
    cells: list[str],
    codes: np.ndarray,
    feature_names: list[str],
    target_name: str,
    task: str | None,
    source: str,
) -> Dataset:
    """Turn the target (unique cells, a code (N,) per row) into class indices or numbers.

    cells are in first-seen order, so the first bad cell is also the first bad row's.
    The task is inferred when not given.
    """
    if x.shape[0] == 0:
        raise DataError(f"{source}: no data rows")
    if x.shape[1] == 0:
        raise DataError(f"{source}: no feature columns")
    cell_numbers = _try_numbers(cells)
    if task is None:
        task = _infer_task(cell_numbers)
    if task == "regression":
        if cell_numbers is None:
            first_bad = next(c for c in cells if _try_numbers([c]) is None)
            raise DataError(
                f"{source}: regression target {target_name!r} has non-numeric value {first_bad!r}"
            )
        numbers = cell_numbers[codes]
        bad = np.flatnonzero(~np.isfinite(numbers))
        if bad.size:
            raise DataError(f"{source}: target {target_name!r} row {bad[0]} is not finite")
        return _regression(x, numbers[:, None], feature_names, [target_name], source)
    if cell_numbers is not None:
        # numeric labels sort by value ("2" before "10")
        order = sorted(range(len(cells)), key=lambda index: float(cells[index]))
    else:
        order = sorted(range(len(cells)), key=lambda index: cells[index])
    class_names = [cells[index] for index in order]
    if len(class_names) < 2:
        raise DataError(
            f"{source}: target {target_name!r} has a single class {class_names[0]!r}; "
            "classification needs at least two"
        )
    class_of_cell = np.empty(len(cells), dtype=np.int64)
    class_of_cell[order] = np.arange(len(cells))
    y = class_of_cell[codes]
    return Dataset(x, y, "classification", feature_names, class_names, None, source)


def _regression(
    x: FeatureRows, y: np.ndarray, names: list[str], target_names: list[str] | None, source: str
) -> Dataset:
    if target_names is None:
        target_names = [f"y{col}" for col in range(y.shape[1])]
    return Dataset(x, y, "regression", names, None, target_names, source)


def _try_numbers(cells: list[str]) -> np.ndarray | None:
    try:
        return np.array([float(cell) for cell in cells], dtype=np.float64)
    except ValueError:
        return None


def _infer_task(numbers: np.ndarray | None) -> str:
    """Strings or few distinct integers: classification; other numbers: regression."""
    if numbers is None:
        return "classification"
    finite = numbers[np.isfinite(numbers)]
    integral = bool(np.all(finite == np.round(finite)))
    if integral and len(np.unique(finite)) <= MAX_INFERRED_CLASSES:
        return "classification"
    return "regression"


def split_rows(
    n_rows: int, *, dev_fraction: float, test_fraction: float, seed: int, source: str = "data"
) -> Split:
    """Seeded random split into train/dev/test; a non-zero fraction gets at least one row."""
    rng = np.random.default_rng([seed, 1])  # its own stream: the split never depends on the net
    order = rng.permutation(n_rows)
    n_test = max(1, round(n_rows * test_fraction)) if test_fraction > 0 else 0
    n_dev = max(1, round(n_rows * dev_fraction)) if dev_fraction > 0 else 0
    n_train = n_rows - n_test - n_dev
    if n_train < 2:
        raise DataError(
            f"{source}: {n_rows} rows leave {max(n_train, 0)} training row(s) after the dev/test "
            "split; at least 2 are needed"
        )
    return Split(
        train=np.sort(order[:n_train]),
        dev=np.sort(order[n_train : n_train + n_dev]),
        test=np.sort(order[n_train + n_dev :]),
    )


def load_split(config: TrainConfig, *, cache_dir: str | None = None) -> tuple[Dataset, Split]:
    """config's data set and its seeded train/dev/test split, exactly as a training run makes
    them (export and the tuner's folds reload a run's split through this)."""
    dataset = load_dataset(
        config.data,
        target=config.target,
        task=config.task,
        cache_dir=cache_dir,
        delimiter=config.delimiter,
        na_values=config.na_values,
        drop_missing_target=config.drop_missing_target,
    )
    labeled = dataset.labeled
    split = split_rows(
        len(dataset.x) if labeled is None else len(labeled),
        dev_fraction=config.dev_fraction,
        test_fraction=config.test_fraction,
        seed=config.data_split_seed,
        source=dataset.source,
    )
    if labeled is not None:  # positions among the labeled rows → row numbers
        split = Split(labeled[split.train], labeled[split.dev], labeled[split.test])
    return dataset, split


def fit_standardization(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std (F,) of the training split; a constant column gets std 1."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    return mean, unit_std_where_constant(std, x_train.min(axis=0), x_train.max(axis=0))


def unit_std_where_constant(
    std: np.ndarray, minimum: np.ndarray, maximum: np.ndarray
) -> np.ndarray:
    """std (F,) with 1 where a column is constant (its minimum equals its maximum).

    A constant float32 column's computed std is not always 0: a mean that rounds away from the
    value leaves deviations of one rounding step (0.1 repeated gives 1.5e-8), and dividing by
    that blows the column up to about 1e7 instead of 0."""
    std = std.copy()
    std[(std == 0) | (minimum == maximum)] = 1.0
    return std
