"""What `bnserve adapt` recovers on digits under five shifts, and what it costs to be wrong.

Digits (1,797 rows) is split once: 70% source rows (the model's training, and the pool the
unlabelled adaptation rows are drawn from), 30% test rows (scored). Shifts, drawn once per seed:
  (a) offset   x + c·σ on a random third of the features, c ~ U(1, 3), σ the source rows' std
  (b) scale    x·k on a random third, k ~ U(0.5, 3)
  (c) both     scale, then offset (different thirds)
  (d) label    class priors 4:1 (digits 0-4 four times as likely as 5-9), inputs unchanged
               within a class: rows resampled by class
  (e) none
Adaptation rows are source rows, shifted, labels dropped; test rows are test rows, shifted:
never the same rows. Digits has fewer rows than the sweep asks for, so the adaptation rows are
drawn WITH REPLACEMENT from the 1,257 source rows (10,000 rows are ~8 copies of each).

Columns: accuracy on the shifted test rows of the source model, of the adapted model (the
command's defaults; "refused" when adapt refuses without --force, then the --force figure),
and of the oracle (the same training config on the LABELLED shifted source rows); recovery =
(adapted − source) / (clean − source), clean = the source on unshifted test rows. Then the sweep:
recovery against recent rows (100, 300, 1,000, 10,000) and --prior-rows, for --layers first and
all and --input-standardization, as a table and a PNG.

    .venv/bin/python bench/adapt.py [--seeds 3] [--quick] [--png docs/adapt-recovery.png]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bnserve.export.adapt_source import AdaptError  # noqa: E402
from bnserve.export.adapter import AdaptSettings, NoShiftError, adapt_model  # noqa: E402
from bnserve.export.errors import ExportError  # noqa: E402
from bnserve.export.exporter import ExportSettings, export_run  # noqa: E402
from bnserve.export.verify import onnx_session, score_onnx  # noqa: E402
from bnserve.training.config import TrainConfig  # noqa: E402
from bnserve.training.data.loading import fit_standardization, load_dataset  # noqa: E402
from bnserve.training.train import train  # noqa: E402

HIDDEN = (128, 128)
EPOCHS = 30
SOURCE_SHARE = 0.7
ROWS = (100, 300, 1_000, 10_000)
PRIORS = (0, 100, 1_000)
SHIFTS = ("offset", "scale", "both", "label", "none")
LABELS = {"offset": "(a)", "scale": "(b)", "both": "(c)", "label": "(d)", "none": "(e)"}
VARIANTS = {  # name -> AdaptSettings fields
    "first": {"layers": "first", "input_standardization": False},
    "all": {"layers": "all", "input_standardization": False},
    "first+input": {"layers": "first", "input_standardization": True},
    "all+input": {"layers": "all", "input_standardization": True},
}


@dataclass(frozen=True)
class Data:
    x_source: np.ndarray  # (N_s, F) raw
    y_source: np.ndarray  # (N_s,)
    x_test: np.ndarray
    y_test: np.ndarray
    names: list[str]


Shift = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def load() -> Data:
    dataset = load_dataset("digits")
    x, y = np.asarray(dataset.x, dtype=np.float64), dataset.y
    order = np.random.default_rng(0).permutation(x.shape[0])
    cut = int(SOURCE_SHARE * x.shape[0])
    source, test = order[:cut], order[cut:]
    return Data(x[source], y[source], x[test], y[test], list(dataset.feature_names))


def make_shift(kind: str, data: Data, seed: int) -> Shift:
    """A function (x, y, rng) -> (x', y') applying one drawn shift to any rows."""
    rng = np.random.default_rng(seed)
    features = data.x_source.shape[1]
    _, std = fit_standardization(data.x_source)
    third = features // 3
    order = rng.permutation(features)
    offset_columns, scale_columns = order[:third], order[third : 2 * third]
    offset = np.zeros(features)
    # multiples of 1/64: a column constant in the source rows stays EXACTLY constant when offset
    # (training's standardization gives a float-rounded constant a std of 1e-16, not 1)
    offset[offset_columns] = np.round(rng.uniform(1, 3, third) * std[offset_columns] * 64) / 64
    scale = np.ones(features)
    scale[scale_columns] = rng.uniform(0.5, 3, third)
    priors = np.where(np.arange(10) < 5, 4.0, 1.0)

    def apply(x: np.ndarray, y: np.ndarray, draw: np.random.Generator) -> tuple[np.ndarray, ...]:
        if kind == "offset":
            return x + offset, y
        if kind == "scale":
            return x * scale, y
        if kind == "both":
            return x * scale + offset, y
        if kind == "label":
            weights = priors[y] / priors[y].sum()
            rows = draw.choice(x.shape[0], x.shape[0], replace=True, p=weights)
            return x[rows], y[rows]
        return x, y

    return apply  # type: ignore[return-value]


def train_model(x: np.ndarray, y: np.ndarray, names: list[str], work: Path, seed: int) -> Path:
    """Train (labelled rows) and export; returns the model file."""
    work.mkdir(parents=True)
    data = work / "train.npz"
    with data.open("wb") as handle:
        np.savez(handle, x=x, y=y, feature_names=np.array(names))
    config = TrainConfig(data=str(data), hidden=HIDDEN, epochs=EPOCHS, seed=seed, test_fraction=0.0)
    run = Path(train(config, work / "run", progress=False, checkpoints=False, plot=False).run_dir)
    return export_run(ExportSettings(run_dir=run, out=work / "model.onnx")).out


def accuracy(model: Path, x: np.ndarray, y: np.ndarray) -> float:
    labels = score_onnx(onnx_session(model.read_bytes()), x)["label"]
    return float(np.mean(labels == y))


def adapt(
    model: Path, x: np.ndarray, names: list[str], work: Path, **fields: object
) -> tuple[Path, bool]:
    """Adapt model to unlabelled rows x; (new model, refused without --force)."""
    recent = work / f"recent-{time.monotonic_ns()}.npz"
    with recent.open("wb") as handle:
        np.savez(handle, x=x, feature_names=np.array(names))
    out = recent.with_suffix(".onnx")
    settings = AdaptSettings(source=model, data=recent, out=out, min_rows=2, **fields)  # type: ignore[arg-type]
    refused = False
    try:
        adapt_model(settings)
    except NoShiftError:
        refused = True
        out = recent.with_name(recent.stem + "-forced.onnx")
        adapt_model(AdaptSettings(**{**settings.__dict__, "out": out, "force": True}))
    return out, refused


def recent_rows(shift: Shift, data: Data, rows: int, rng: np.random.Generator) -> np.ndarray:
    """rows adaptation rows: source rows drawn with replacement, shifted, labels dropped."""
    x, _ = shift(data.x_source, data.y_source, rng)
    return x[rng.integers(0, x.shape[0], rows)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seeds", type=int, default=None, help="shift draws (and models) averaged (default 3)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="rows 100/1000, prior 0, 1 seed unless --seeds"
    )
    parser.add_argument("--png", type=Path, default=REPO / "docs" / "adapt-recovery.png")
    args = parser.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 3)
    rows_sweep = (100, 1_000) if args.quick else ROWS
    priors = (0,) if args.quick else PRIORS
    data = load()
    load_line = os.getloadavg()
    print(f"digits: {data.x_source.shape[0]} source rows, {data.x_test.shape[0]} test rows; "
          f"hidden {HIDDEN}, {EPOCHS} epochs, EMA statistics; {seeds} seed(s); "
          f"load average {load_line[0]:.2f}")  # fmt: skip
    main_rows = 1_000
    table: dict[str, list[dict[str, float]]] = {shift: [] for shift in SHIFTS}
    sweep: dict[tuple[str, str, int, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        for seed in range(seeds):
            source = train_model(data.x_source, data.y_source, data.names, work / f"s{seed}", seed)
            clean = accuracy(source, data.x_test, data.y_test)
            for kind in SHIFTS:
                shift = make_shift(kind, data, seed)
                draw = np.random.default_rng(1000 + seed)
                x_test, y_test = shift(data.x_test, data.y_test, draw)
                x_oracle, y_oracle = shift(data.x_source, data.y_source, draw)
                row = {"clean": clean, "source": accuracy(source, x_test, y_test)}
                try:
                    oracle = train_model(
                        x_oracle, y_oracle, data.names, work / f"o{seed}{kind}", seed
                    )
                    row["oracle"] = accuracy(oracle, x_test, y_test)
                except ExportError as error:
                    print(f"  oracle {kind} seed {seed} not exported: {error}", file=sys.stderr)
                for variant, fields in VARIANTS.items():
                    for rows in rows_sweep if kind in ("offset", "scale", "both") else (main_rows,):
                        for prior in priors:
                            recent = recent_rows(shift, data, rows, draw)
                            try:
                                model, refused = adapt(
                                    source, recent, data.names, work, prior_rows=prior, **fields
                                )
                            except AdaptError as error:
                                print(f"  {kind} {variant} {rows} {prior}: {error}")
                                continue
                            score = accuracy(model, x_test, y_test)
                            sweep.setdefault((kind, variant, rows, prior), []).append(score)
                            if rows == main_rows and prior == 0:
                                row[variant] = score
                                row[f"{variant} refused"] = float(refused)
                table[kind].append(row)
                print(f"  seed {seed} {kind}: done", file=sys.stderr)
    print_table(table)
    print_sweep(sweep, table, rows_sweep, priors)
    write_png(args.png, sweep, table, rows_sweep, priors)
    print(f"figure: {args.png}; load average at the end {os.getloadavg()[0]:.2f}")
    return 0


def _mean(rows: list[dict[str, float]], key: str) -> float:
    values = [row[key] for row in rows if key in row]
    return float(np.mean(values)) if values else float("nan")


def print_table(table: dict[str, list[dict[str, float]]]) -> None:
    print("\naccuracy on shifted test rows, 1,000 adaptation rows, --prior-rows 0, mean over seeds")
    head = f"{'shift':<12} {'clean':>6} {'source':>7} " + " ".join(
        f"{name:<12}" for name in VARIANTS
    )
    print(head + f" {'oracle':>7}  recovery ({' / '.join(VARIANTS)})")
    for kind, rows in table.items():
        clean, source = _mean(rows, "clean"), _mean(rows, "source")
        cells = []
        for name in VARIANTS:
            refused = [row[f"{name} refused"] for row in rows if f"{name} refused" in row]
            mark = f"r{int(sum(refused))}/{len(refused)}" if sum(refused) else ""
            cells.append(f"{_mean(rows, name):>7.4f}{mark:<5}")
        lost = clean - source
        recovery = " / ".join(
            f"{(_mean(rows, name) - source) / lost:.0%}" if lost > 0.005 else "—"
            for name in VARIANTS
        )
        print(f"{LABELS[kind]} {kind:<8} {clean:>6.4f} {source:>7.4f} " + " ".join(cells)
              + f" {_mean(rows, 'oracle'):>7.4f}  {recovery}")  # fmt: skip
    print("rK/N: refused without --force for K of N seeds; the figure is then the --force model's")


def print_sweep(
    sweep: dict[tuple[str, str, int, int], list[float]],
    table: dict[str, list[dict[str, float]]],
    rows_sweep: tuple[int, ...],
    priors: tuple[int, ...],
) -> None:
    print("\nrecovery of the lost accuracy vs adaptation rows (drawn with replacement) and prior")
    print(f"{'shift':<8} {'variant':<12} {'prior':>6} " + " ".join(f"{r:>7}" for r in rows_sweep))
    for kind in ("offset", "scale", "both"):
        clean, source = _mean(table[kind], "clean"), _mean(table[kind], "source")
        for variant in VARIANTS:
            for prior in priors:
                cells = []
                for rows in rows_sweep:
                    scores = sweep.get((kind, variant, rows, prior), [])
                    value = (np.mean(scores) - source) / (clean - source) if scores else np.nan
                    cells.append(f"{value:>7.0%}")
                print(f"{kind:<8} {variant:<12} {prior:>6} " + " ".join(cells))


def write_png(
    path: Path,
    sweep: dict[tuple[str, str, int, int], list[float]],
    table: dict[str, list[dict[str, float]]],
    rows_sweep: tuple[int, ...],
    priors: tuple[int, ...],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
    for axis, kind in zip(axes, ("offset", "scale", "both"), strict=True):
        clean, source = _mean(table[kind], "clean"), _mean(table[kind], "source")
        for index, variant in enumerate(VARIANTS):
            for prior, style in zip(priors, ("-", "--", ":"), strict=False):
                values = [
                    (np.mean(sweep[(kind, variant, rows, prior)]) - source) / (clean - source)
                    if (kind, variant, rows, prior) in sweep
                    else np.nan
                    for rows in rows_sweep
                ]
                axis.plot(rows_sweep, values, style, color=f"C{index}", marker="o",
                          label=f"{variant}, prior {prior}")  # fmt: skip
        axis.axhline(1.0, color="grey", linewidth=1)
        axis.axhline(0.95, color="grey", linewidth=1, linestyle="--")
        axis.set(xscale="log", xlabel="adaptation rows", title=f"{LABELS[kind]} {kind}")
    axes[0].set_ylabel("share of the lost accuracy recovered")
    axes[-1].legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
