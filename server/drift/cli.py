"""`bnserve drift DATA --model model.onnx`: production inputs against a model's training
distribution, offline, with the server's own statistics (server/drift/monitor.py).

Prints the features ranked by drift score, the columns of a model with text columns or gaps
(server/drift/table.py reads its raw table by column name) and the hidden layers' scores, writes
a PNG (per-feature shift bars, layer scores) and exits 1 when a feature, column or layer is past
its threshold (0 when none is, 2 for bad input), so a pipeline can gate on it.

It imports neither training nor export (the serving image carries it); pyarrow and matplotlib,
which that image lacks, are imported only when a Parquet file or a PNG asks for them.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bnserve import capture_store
from bnserve.atomic import write_bytes
from bnserve.header_hints import delimiter_hint, parse_delimiter
from bnserve.server.drift.monitor import (
    DriftMetadataError,
    DriftMonitor,
    DriftReference,
    DriftSettings,
    parse_reference,
)
from bnserve.server.drift.table import (
    GraphInput,
    MixedColumns,
    TableError,
    feed,
    graph_inputs,
    read_columns,
)
from bnserve.server.modelfile.contract import MetadataKey
from bnserve.server.modelfile.wire import with_graph_outputs

DEFAULTS = DriftSettings()
CHUNK = 4096  # rows scored per onnxruntime run
EXIT_CLEAN, EXIT_DRIFT, EXIT_BAD_INPUT = 0, 1, 2
FEW_ROWS = 100  # below this, say that the figures are noisy


class DriftInputError(ValueError):
    """Bad data or model file; the message names the file and the problem."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bnserve drift",
        description=(
            "Compare a file of production inputs with the training distribution stored in a "
            "model's metadata: per feature the mean shift in training standard deviations, the "
            "variance ratio and the PSI over training deciles; per hidden layer how far the "
            "normalized pre-activations are from N(0, 1). Exit status 1 when anything is past "
            "a threshold, 0 when nothing is, 2 for bad input."
        ),
    )
    parser.add_argument(
        "data",
        type=Path,
        metavar="DATA",
        help="inputs: .csv with a header naming the model's features (other columns ignored), "
        ".npz with 'x' (and optionally 'feature_names'), or .parquet; for a model with text "
        "columns or gaps the raw table (.csv or .parquet) with its columns by name",
    )
    parser.add_argument("--model", type=Path, required=True, help="the model.onnx to compare with")
    parser.add_argument(
        "--png", type=Path, default=None, help="figure to write (default: DATA-drift.png)"
    )
    parser.add_argument("--no-png", action="store_true", help="write no figure")
    parser.add_argument(
        "--top",
        type=int,
        default=20,
        help="features in the table; flagged ones are always shown (default: 20)",
    )
    parser.add_argument(
        "--delimiter",
        default=",",
        help="field separator of a .csv DATA: one character, \\t for a tab (default: ,)",
    )
    for name, help_text in (
        ("shift", "mean shift in training std devs"),
        ("psi", "population stability index"),
        ("variance", "variance ratio (0: not a flag)"),
        ("layer", "layer score, mean KL(z_norm ‖ N(0, 1)) per unit"),
    ):
        default = getattr(DEFAULTS, f"{name}_threshold")
        parser.add_argument(
            f"--{name}-threshold",
            type=float,
            default=default,
            help=f"flag past this {help_text} (default: {default:g}, as the server)",
        )
    return parser


def read_inputs(path: Path, feature_names: tuple[str, ...], delimiter: str = ",") -> np.ndarray:
    """The model's features from DATA as (N, F) float32, in model order. DATA: a .csv (or
    .csv.gz), .npz or .parquet file, or a directory read as one table (its CSV files in name
    order, or a capture store's calls: bnserve/capture_store.py)."""
    if path.is_dir():
        try:
            rows = list(capture_store.training_rows(path))
        except (capture_store.TableError, OSError, EOFError, csv.Error) as error:
            raise DriftInputError(f"{path}: {error}") from None
        header, column = _csv_columns(path, rows, delimiter)
        return _features(path, header, column, feature_names)
    if not path.is_file():
        raise DriftInputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv" or path.name.lower().endswith(".csv.gz"):
        header, column = _read_csv(path, delimiter)
    elif suffix == ".npz":
        header, column = _read_npz(path, feature_names)
    elif suffix == ".parquet":
        header, column = _read_parquet(path)
    else:
        raise DriftInputError(
            f"{path}: unsupported file type {suffix!r} (use .csv, .csv.gz, .npz, .parquet or "
            "a directory of them)"
        )
    return _features(path, header, column, feature_names)


def _features(
    path: Path, header: list[str], column: ColumnReader, feature_names: tuple[str, ...]
) -> np.ndarray:
    missing = [name for name in feature_names if name not in header]
    if missing:
        shown = ", ".join(repr(name) for name in missing[:5])
        raise DriftInputError(
            f"{path}: missing {len(missing)} of the model's {len(feature_names)} features "
            f"({shown}{', …' if len(missing) > 5 else ''})"
        )
    x = np.stack([column(header.index(name)) for name in feature_names], axis=1)
    if x.shape[0] == 0:
        raise DriftInputError(f"{path}: no data rows")
    bad = np.argwhere(~np.isfinite(x))
    if bad.size:
        row, index = (int(v) for v in bad[0])
        raise DriftInputError(
            f"{path}: data row {row + 1}, column {feature_names[index]!r} is {x[row, index]} "
            "(not a finite number)"
        )
    return x.astype(np.float32)


ColumnReader = Callable[[int], np.ndarray]  # column index in the header -> (N,) float64


def _read_csv(path: Path, delimiter: str) -> tuple[list[str], ColumnReader]:
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as packed:
                text = packed.read().decode("utf-8-sig")
        else:
            text = path.read_text(encoding="utf-8-sig")
        rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    except (UnicodeDecodeError, csv.Error, OSError, EOFError) as error:
        raise DriftInputError(f"{path}: not a readable UTF-8 CSV ({error})") from None
    return _csv_columns(path, rows, delimiter)


def _csv_columns(
    path: Path, rows: list[list[str]], delimiter: str
) -> tuple[list[str], ColumnReader]:
    if not rows:
        raise DriftInputError(f"{path}: empty file (a header line is needed)")
    header = [name.strip() for name in rows[0]]
    if hint := delimiter_hint(header, delimiter):
        raise DriftInputError(f"{path}: line 1: {hint}")
    body = [(line, row) for line, row in enumerate(rows[1:], start=2) if row]
    for line, row in body:
        if len(row) != len(header):
            raise DriftInputError(
                f"{path}: line {line} has {len(row)} cells, the header has {len(header)}"
            )

    def column(index: int) -> np.ndarray:
        values = np.empty(len(body))
        for position, (line, row) in enumerate(body):
            try:
                values[position] = float(row[index])
            except ValueError:
                raise DriftInputError(
                    f"{path}: line {line}, column {header[index]!r}: {row[index]!r} is not a number"
                ) from None
        return values

    return header, column


def _read_npz(path: Path, feature_names: tuple[str, ...]) -> tuple[list[str], ColumnReader]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except Exception as error:
        raise DriftInputError(
            f"{path}: not a readable .npz file without pickle ({error})"
        ) from None
    if "x" not in arrays:
        raise DriftInputError(f"{path}: missing array 'x' (found {sorted(arrays)})")
    x = arrays["x"]
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise DriftInputError(f"{path}: 'x' must be a 2-D numeric array, got {x.dtype} {x.shape}")
    if "feature_names" in arrays:
        header = [str(name) for name in arrays["feature_names"].tolist()]
        if len(header) != x.shape[1]:
            raise DriftInputError(
                f"{path}: 'feature_names' has {len(header)} names, 'x' has {x.shape[1]} columns"
            )
    elif x.shape[1] == len(feature_names):
        header = list(feature_names)  # no names: columns in model order
    else:
        raise DriftInputError(
            f"{path}: 'x' has {x.shape[1]} columns and no 'feature_names'; the model takes "
            f"{len(feature_names)}"
        )
    return header, lambda index: x[:, index].astype(np.float64)


def _read_parquet(path: Path) -> tuple[list[str], ColumnReader]:
    try:
        import pyarrow.parquet as parquet
    except ModuleNotFoundError:
        raise DriftInputError(
            f"{path}: reading Parquet needs pyarrow (pip install pyarrow)"
        ) from None
    try:
        table = parquet.read_table(path)
    except Exception as error:
        raise DriftInputError(f"{path}: not a readable Parquet file ({error})") from None

    def column(index: int) -> np.ndarray:
        try:
            values: np.ndarray = table.column(index).to_numpy(zero_copy_only=False)
            return values.astype(np.float64)
        except (TypeError, ValueError) as error:
            name = table.column_names[index]
            raise DriftInputError(f"{path}: column {name!r} is not numeric ({error})") from None

    return list(table.column_names), column


@dataclass(frozen=True)
class LoadedModel:
    """A session that also returns the watched pre-activations, the model's reference and,
    for a format-2 model, its graph inputs (bnserve.schema; empty for a format-1 model)."""

    session: ort.InferenceSession
    reference: DriftReference
    inputs: tuple[GraphInput, ...] = ()


def load_model(path: Path) -> LoadedModel:
    """The model file opened for drift (LoadedModel); raises DriftInputError."""
    try:
        model_bytes = path.read_bytes()
        metadata = ort.InferenceSession(model_bytes).get_modelmeta().custom_metadata_map
    except OSError as error:
        raise DriftInputError(f"{path}: cannot read it ({error.strerror})") from None
    except Exception as error:
        raise DriftInputError(f"{path}: not an ONNX model onnxruntime can load ({error})") from None
    try:
        feature_names = tuple(json.loads(metadata[MetadataKey.FEATURE_NAMES.full]))
        schema = metadata.get(MetadataKey.SCHEMA.full, "")
        reference = parse_reference(
            metadata.get(MetadataKey.DRIFT.full, ""),
            feature_names,
            imported=bool(metadata.get(MetadataKey.IMPORT.full)),
            schema=schema,
        )
    except (KeyError, json.JSONDecodeError):
        raise DriftInputError(f"{path}: not a bnserve model (no bnserve.feature_names)") from None
    except DriftMetadataError as error:
        raise DriftInputError(f"{path}: {error}") from None
    inputs: tuple[GraphInput, ...] = ()
    if reference.columns is not None:
        try:
            inputs = graph_inputs(schema)
        except (KeyError, TypeError, ValueError) as error:
            raise DriftInputError(f"{path}: bnserve.schema is malformed ({error!r})") from None
    try:
        session = ort.InferenceSession(
            with_graph_outputs(
                model_bytes,
                reference.layer_tensors,
                reference.stacked_tensors,
                reference.wide_tensors,
            )
        )
    except Exception as error:  # onnxruntime raises untyped errors
        raise DriftInputError(f"{path}: cannot expose its hidden layers ({error})") from None
    return LoadedModel(session, reference, inputs)


def drift_report(
    session: ort.InferenceSession, reference: DriftReference, x: np.ndarray, settings: DriftSettings
) -> dict[str, Any]:
    """The server's whole-life window for the rows of x (N, F) float32."""
    monitor = DriftMonitor(reference, settings, "offline", warn=False)
    layer_names = monitor.layer_outputs
    for start in range(0, x.shape[0], CHUNK):
        rows = x[start : start + CHUNK]
        outputs = session.run(layer_names, {"x": rows}) if layer_names else None
        monitor.observe(rows, outputs)
    life: dict[str, Any] = monitor.report()["life"]
    return life


def column_drift_report(
    model: LoadedModel, columns: MixedColumns, settings: DriftSettings
) -> dict[str, Any]:
    """As drift_report, for a format-2 model's raw table (table.read_columns)."""
    monitor = DriftMonitor(model.reference, settings, "offline", warn=False)
    layer_names = monitor.layer_outputs
    count = next(iter(columns.values())).size
    for start in range(0, count, CHUNK):
        rows = slice(start, start + CHUNK)
        outputs = (
            model.session.run(layer_names, feed(model.inputs, columns, rows))
            if layer_names
            else None
        )
        monitor.observe_columns({name: cells[rows] for name, cells in columns.items()}, outputs)
    life: dict[str, Any] = monitor.report()["life"]
    return life


def format_table(report: dict[str, Any], top: int) -> str:
    """Features ranked by score (the top ones and every flagged one), then the layers."""
    ranked = sorted(report["features"], key=lambda f: -f["score"])
    shown = [f for i, f in enumerate(ranked) if i < top or f["flagged"]]
    lines = [
        f"{'rank':>4}  {'feature':<18} {'score':>7} {'shift σ':>8} {'var ×':>7} {'PSI':>7} "
        f"{'outside':>8} {'train μ':>9} {'live μ':>9}",
    ]
    for rank, feature in enumerate(shown, start=1):
        lines.append(
            f"{rank:>4}  {feature['name']:<18} {feature['score']:>7.2f} "
            f"{feature['mean_shift']:>8.2f} {feature['variance_ratio']:>7.2f} "
            f"{feature['psi']:>7.3f} {feature['out_of_range_share']:>8.1%} "
            f"{feature['train_mean']:>9.3g} {feature['live_mean']:>9.3g}"
            + ("  DRIFT" if feature["flagged"] else "")
        )
    if len(ranked) > len(shown):
        lines.append(f"      … {len(ranked) - len(shown)} more features, none flagged")
    if report["columns"]:
        lines.append(format_columns(report["columns"], top))
    for layer in report["layers"]:
        lines.append(
            f"layer {layer['name']}: score {layer['score']:.4f} over {layer['units']} units"
            + ("  DRIFT" if layer["flagged"] else "")
        )
    return "\n".join(lines)


def format_columns(columns: list[dict[str, Any]], top: int) -> str:
    """Columns ranked by score (the top ones and every flagged one): PSI, missing rates, unseen
    share, and a categorical column's level that moved most."""
    ranked = sorted(columns, key=lambda c: -c["score"])
    shown = [c for i, c in enumerate(ranked) if i < top or c["flagged"]]
    lines = [
        f"{'rank':>4}  {'column':<18} {'kind':<11} {'score':>7} {'PSI':>7} {'missing':>8} "
        f"{'(train)':>8} {'unseen':>7}  level share live (train)"
    ]
    for rank, column in enumerate(shown, start=1):
        moved = ""
        if column["levels"]:
            level = max(column["levels"], key=lambda v: abs(v["live_share"] - v["train_share"]))
            moved = f"  {level['level']} {level['live_share']:.1%} ({level['train_share']:.1%})"
        lines.append(
            f"{rank:>4}  {column['name']:<18} {column['kind']:<11} {column['score']:>7.2f} "
            f"{column['psi']:>7.3f} {column['live_missing_rate']:>8.1%} "
            f"{column['train_missing_rate']:>8.1%} {column['unseen_share']:>7.1%}{moved}"
            + ("  DRIFT" if column["flagged"] else "")
        )
    if len(ranked) > len(shown):
        lines.append(f"      … {len(ranked) - len(shown)} more columns, none flagged")
    return "\n".join(lines)


def write_figure(path: Path, report: dict[str, Any], settings: DriftSettings, title: str) -> None:
    """Per-feature mean shift bars (flagged in red) and layer score bars, with thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    features = report["features"]
    layers = report["layers"]
    ratios = (3, 1) if layers else (1,)
    figure, axes = plt.subplots(
        len(ratios), 1, figsize=(max(8, 0.14 * len(features) + 2), 6), height_ratios=ratios
    )
    shift_axis = axes[0] if layers else axes
    colors = ["C3" if f["flagged"] else "C0" for f in features]
    shift_axis.bar(range(len(features)), [f["mean_shift"] for f in features], color=colors)
    shift_axis.axhline(settings.shift_threshold, color="grey", linestyle="--", linewidth=1)
    shift_axis.set(ylabel="|μ_live − μ_train| / σ_train", title=title)
    shift_axis.set_xticks(range(len(features)))
    shift_axis.set_xticklabels([f["name"] for f in features], rotation=90, fontsize=6)
    if layers:
        layer_axis = axes[1]
        layer_colors = ["C3" if layer["flagged"] else "C0" for layer in layers]
        layer_axis.barh([layer["name"] for layer in layers], [layer["score"] for layer in layers],
                        color=layer_colors)  # fmt: skip
        layer_axis.axvline(settings.layer_threshold, color="grey", linestyle="--", linewidth=1)
        layer_axis.set(xlabel="layer score: mean KL(z_norm ‖ N(0, 1)) per unit")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    write_bytes(path, buffer.getvalue())


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.top < 0 or min(args.shift_threshold, args.psi_threshold, args.layer_threshold) <= 0:
        print("bnserve drift: error: --top must be ≥ 0 and thresholds > 0", file=sys.stderr)
        return EXIT_BAD_INPUT
    settings = DriftSettings(
        window=1,  # unused: the table is the whole-life window
        shift_threshold=args.shift_threshold,
        psi_threshold=args.psi_threshold,
        variance_threshold=args.variance_threshold,
        layer_threshold=args.layer_threshold,
        min_examples=0,
    )
    png = None if args.no_png else (args.png or args.data.with_name(f"{args.data.stem}-drift.png"))
    try:
        try:
            delimiter = parse_delimiter(args.delimiter)
        except ValueError as error:
            raise DriftInputError(str(error)) from None
        model = load_model(args.model)
        reference = model.reference
        if reference.columns is None:
            x = read_inputs(args.data, reference.feature_names, delimiter)
            rows = x.shape[0]
        else:
            if not args.data.is_file():
                raise DriftInputError(f"{args.data}: no such file")
            columns = read_columns(args.data, reference.columns, delimiter)
            rows = next(iter(columns.values())).size
    except (DriftInputError, TableError) as error:
        print(f"bnserve drift: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as error:
        print(
            f"bnserve drift: error: {args.data}: cannot read it ({error.strerror})", file=sys.stderr
        )
        return EXIT_BAD_INPUT
    if reference.columns is None:
        report = drift_report(model.session, reference, x, settings)
    else:
        report = column_drift_report(model, columns, settings)
    if png is not None:
        try:
            write_figure(png, report, settings, f"{args.data.name} vs {args.model.name}")
        except OSError as error:
            print(f"bnserve drift: error: cannot write {png} ({error.strerror})", file=sys.stderr)
            return EXIT_BAD_INPUT
    flagged_features, flagged_layers = report["flagged_features"], report["flagged_layers"]
    flagged_columns = report["flagged_columns"]
    print(f"{args.data}: {rows} rows against {args.model} ({reference.source})")
    if rows < FEW_ROWS:
        print(f"note: only {rows} rows; the figures are noisy below {FEW_ROWS}")
    print(format_table(report, args.top))
    columns_part = (
        f", {len(flagged_columns)} of {len(report['columns'])} columns" if report["columns"] else ""
    )
    print(
        f"{len(flagged_features)} of {reference.num_features} features{columns_part} and "
        f"{len(flagged_layers)} of {len(report['layers'])} layers past threshold; "
        f"{report['out_of_range_share']:.1%} of rows have a value outside the training range"
        + (f"; figure {png}" if png is not None else "")
    )
    return EXIT_DRIFT if flagged_features or flagged_layers or flagged_columns else EXIT_CLEAN
