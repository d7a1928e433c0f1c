"""The tune's plots (matplotlib Agg, written atomically into TUNE_DIR/plots/).

- dev_error_vs_params.png: dev error against each hyperparameter on its own scale (log axes for
  α, and for 1 − β on the log1m scale)
- boxes.png: the coarse-to-fine boxes, round by round, on each dimension's search coordinate
- learning_curves.png: dev error per epoch of the best trials
- batchnorm_compare.png: with --compare-batchnorm, dev error against α with and without BN
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from bnserve import atomic
from bnserve.training.tune.sampler import Box
from bnserve.training.tune.space import Dimension, SearchSpace
from bnserve.training.tune.store import TrialRecord

BEST_CURVES = 5


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    _pyplot().close(figure)
    atomic.write_bytes(path, buffer.getvalue())


def _grid(count: int) -> tuple[int, int]:
    columns = min(3, count)
    return math.ceil(count / columns), columns


def _ended(records: list[TrialRecord]) -> list[TrialRecord]:
    return [r for r in records if r.state in ("finished", "pruned") and r.dev_error is not None]


def _axis_label(dimension: Dimension) -> str:
    return f"1 − {dimension.name}" if dimension.scale == "log1m" else dimension.name


def _axis_value(dimension: Dimension, value: Any) -> Any:
    return 1.0 - value if dimension.scale == "log1m" else value


def _coordinate_label(dimension: Dimension) -> str:
    """What the search coordinate of a dimension is, as an axis label."""
    if dimension.scale == "log1m":
        return f"log10 (1 − {dimension.name})"
    if dimension.scale in ("log", "log_int"):
        return f"log10 {dimension.name}"
    return dimension.name


def dev_error_figure(space: SearchSpace, records: list[TrialRecord]) -> Any:
    """One panel per dimension (x on its own scale); colour = round; pruned trials as crosses."""
    plt = _pyplot()
    rows, columns = _grid(len(space.dimensions))
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.4 * rows), squeeze=False)
    ended = _ended(records)
    for axis, dimension in zip(axes.flat, space.dimensions, strict=False):
        for state, marker in (("finished", "o"), ("pruned", "x")):
            chosen = [r for r in ended if r.state == state]
            if not chosen:
                continue
            if dimension.scale == "choice":
                labels = [str(choice) for choice in dimension.choices]
                xs = [labels.index(str(r.params[dimension.name])) for r in chosen]
                axis.set_xticks(range(len(labels)), labels)
                axis.set_xlim(-0.5, len(labels) - 0.5)
            else:
                xs = [_axis_value(dimension, r.params[dimension.name]) for r in chosen]
            axis.scatter(
                xs,
                [r.dev_error for r in chosen],
                c=[r.round for r in chosen],
                cmap="viridis",
                vmin=0,
                vmax=max(1, max(r.round for r in records)),
                s=22,
                marker=marker,
                label=state,
            )
        if dimension.scale in ("log", "log_int", "log1m"):
            axis.set_xscale("log")
            axis.xaxis.set_minor_formatter(plt.NullFormatter())
        axis.set_xlabel(_axis_label(dimension))
        axis.set_ylabel("dev error")
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(space.dimensions) :]:
        axis.set_visible(False)
    figure.suptitle("dev error against each hyperparameter (colour: round; ×: pruned)")
    figure.tight_layout()
    return figure


def plot_dev_error_vs_params(path: Path, space: SearchSpace, records: list[TrialRecord]) -> None:
    _save(dev_error_figure(space, records), path)


def plot_boxes(
    path: Path, space: SearchSpace, rounds: list[tuple[int, Box]], records: list[TrialRecord]
) -> None:
    """Per numeric dimension: each round's box as a bar on the search coordinate, and its points."""
    plt = _pyplot()
    numeric = [d for d in space.dimensions if d.scale != "choice"]
    if not numeric:
        return
    rows, columns = _grid(len(numeric))
    figure, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.8 * rows), squeeze=False)
    for axis, dimension in zip(axes.flat, numeric, strict=False):
        for round_index, box in rounds:
            lo, hi = box.ranges[dimension.name]
            axis.barh(round_index, hi - lo, left=lo, height=0.6, alpha=0.3, color="tab:blue")
            xs = [
                dimension.to_coordinate(r.params[dimension.name])
                for r in records
                if r.round == round_index
            ]
            axis.scatter(xs, [round_index] * len(xs), s=10, color="black")
        axis.set_xlabel(_coordinate_label(dimension))
        axis.set_ylabel("round")
        axis.set_yticks([index for index, _ in rounds])
        axis.invert_yaxis()
    for axis in list(axes.flat)[len(numeric) :]:
        axis.set_visible(False)
    figure.suptitle("coarse-to-fine boxes (bars) and sampled points")
    figure.tight_layout()
    _save(figure, path)


def plot_learning_curves(path: Path, ranked: list[TrialRecord]) -> None:
    """Dev error per epoch of the best few trials (ranked best first)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    for record in [r for r in ranked if r.history][:BEST_CURVES]:
        epochs = range(1, len(record.history) + 1)
        axis.plot(epochs, record.history, marker=".", label=f"trial {record.trial}")
    axis.set_xlabel("epoch")
    axis.set_ylabel("dev error")
    axis.set_title(f"learning curves of the best {BEST_CURVES} trials")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    _save(figure, path)


def plot_batchnorm_compare(path: Path, records: list[TrialRecord]) -> None:
    """Dev error against α for the same points with and without batch norm (log x axis)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    ended = _ended(records)
    for batchnorm, colour in ((True, "tab:blue"), (False, "tab:orange")):
        chosen = sorted(
            (r for r in ended if r.params.get("batchnorm") is batchnorm),
            key=lambda r: r.params["lr"],
        )
        axis.plot(
            [r.params["lr"] for r in chosen],
            [r.dev_error for r in chosen],
            "o",
            color=colour,
            label="with batch norm" if batchnorm else "without batch norm",
        )
    axis.set_xscale("log")
    axis.set_xlabel("learning rate α")
    axis.set_ylabel("dev error")
    axis.set_title("the same random points with and without batch norm")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    _save(figure, path)


def write_plots(
    out: Path,
    space: SearchSpace,
    rounds: list[tuple[int, Box]],
    ranked: list[TrialRecord],
    *,
    compare_batchnorm: bool,
) -> list[Path]:
    """Write every plot that applies into out/plots/; returns their paths."""
    plot_dir = out / "plots"
    written = [plot_dir / "dev_error_vs_params.png", plot_dir / "learning_curves.png"]
    plot_dev_error_vs_params(written[0], space, ranked)
    plot_learning_curves(written[1], ranked)
    if any(d.scale != "choice" for d in space.dimensions):
        written.append(plot_dir / "boxes.png")
        plot_boxes(written[-1], space, rounds, ranked)
    if compare_batchnorm:
        written.append(plot_dir / "batchnorm_compare.png")
        plot_batchnorm_compare(written[-1], ranked)
    return written
