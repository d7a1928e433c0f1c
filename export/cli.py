"""`bnserve export RUN_DIR --out model.onnx [--unfolded] [--force]`; several RUN_DIRs, or a tune
directory with `--ensemble K`, write the mean of k runs as one graph (export/ensemble.py); a tune
directory alone writes the tune's model (its `best` run, or the mean of its final members).

Also `python -m bnserve.export`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnserve.export.ensemble import EnsembleReport, EnsembleSettings, export_ensemble
from bnserve.export.ensemble_graph import AUTO, DEFAULT_LAYOUT, LAYOUTS
from bnserve.export.ensemble_source import (
    EnsembleMembers,
    is_tune_dir,
    tune_members,
    tune_model,
)
from bnserve.export.errors import ExportError
from bnserve.export.exporter import ExportReport, ExportSettings, export_run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bnserve export",
        description=(
            "Fold input standardization and every batch norm (frozen statistics) into affine "
            "weights and write a float32 ONNX model, verified against the numpy inference path "
            "on the run's held-out set and rows at the edges of its range, output by output and "
            "layer by layer. Nothing is written if any check fails. Several runs (or a tune "
            "directory with --ensemble K) are written as ONE graph of their mean: the members' "
            "first layers as one Gemm, each member's later layers as its own branch, then the "
            "mean of their probabilities (label = argmax of that mean) or of their y; the graph "
            "must reproduce the mean of the members' numpy paths within the same tolerance. "
            "Members must share task, feature names and class (or target) names."
        ),
    )
    parser.add_argument(
        "run_dirs",
        type=Path,
        nargs="+",
        metavar="RUN_DIR",
        help="a finished training run; several: an ensemble of them (their mean, one graph); a "
        "tune directory: the tune's model (its best run, or the mean of its best trials retrained)",
    )
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument(
        "--unfolded",
        action="store_true",
        help="keep BatchNormalization nodes and Sub/Div standardization (for audit)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument(
        "--ensemble",
        type=int,
        metavar="K",
        help="RUN_DIR is a tune directory: export the mean of K of its runs, the chosen trial's "
        "K fold models when it kept them (cross-validation), else the best K finished trials",
    )
    parser.add_argument(
        "--layout",
        choices=(AUTO, *LAYOUTS),
        default=DEFAULT_LAYOUT,
        help="ensembles: the members' later layers as one grouped Conv each (grouped) or one "
        "batched MatMul each (batched), both for members of one depth, widths and activation; "
        "each member's as its own branch (parallel); or block-diagonal Gemms (blockdiag); auto "
        "is grouped when the members allow it, else parallel (measured: docs/export.md) "
        f"(default: {DEFAULT_LAYOUT})",
    )
    parser.add_argument(
        "--reference-rows",
        type=int,
        default=8,
        help="held-out rows embedded for the server's parity gate (default: 8); a model of raw "
        "columns adds records with every cell missing, every level unseen and every level",
    )
    return parser


def _describe(report: ExportReport) -> str:
    check = report.verification
    tolerance = check.tolerance
    bound = (
        f"{tolerance.abs:g}" if tolerance.rel == 0 else f"{tolerance.abs:g} + {tolerance.rel:g}·|y|"
    )
    text = (
        f"wrote {report.out} ({'folded' if report.folded else 'unfolded'}, "
        f"{report.node_count} nodes, {report.size_bytes:,} bytes, float32)\n"
        f"onnxruntime vs numpy on {report.checked}: max abs error {check.max_abs_error:.3g} "
        f"(tolerance {bound})\n"
        f"each layer's pre-activations vs the run's: {report.layers.worst_ratio:.2g} float32 "
        f"roundings of their summed terms at worst ({report.layers.worst_layer}; bound "
        f"{report.layers.bound:g})\n"
        f"graph sha256 {report.graph_sha256}"
    )
    rows = report.drift_rows
    if rows is not None:
        text += f"\ndrift reference: {rows.source}, {rows.x.shape[0]} rows"
        if rows.note:
            text += f" ({rows.note}; quantile edges are less precise)"
    return text


def _describe_ensemble(report: EnsembleReport, source: str) -> str:
    check = report.verification
    tolerance = check.tolerance
    bound = (
        f"{tolerance.abs:g}" if tolerance.rel == 0 else f"{tolerance.abs:g} + {tolerance.rel:g}·|y|"
    )
    rows = report.drift_rows
    return (
        f"wrote {report.out} (ensemble of {len(report.members)}: {', '.join(report.members)}; "
        f"{report.layout}, {report.node_count} nodes, {report.size_bytes:,} bytes, float32)\n"
        + (f"members: {source}\n" if source else "")
        + f"onnxruntime vs the mean of the members' numpy paths on {report.checked}: max abs "
        f"error {check.max_abs_error:.3g} (tolerance {bound})\n"
        f"each member's layers vs its run's: {report.worst_layer_ratio:.2g} float32 roundings "
        f"of their summed terms at worst (bound {report.layer_bound:g})\n"
        f"graph sha256 {report.graph_sha256}\n"
        f"drift reference: {rows.source} of the first member, {rows.x.shape[0]} rows"
    )


def _members(args: argparse.Namespace) -> EnsembleMembers | Path:
    """The ensemble's members, or the one run to export alone."""
    dirs: list[Path] = args.run_dirs
    if args.ensemble is not None:
        if len(dirs) != 1 or not is_tune_dir(dirs[0]):
            raise ExportError(
                f"--ensemble {args.ensemble} takes one tune directory (holding tune.sqlite); "
                f"to average runs, name them: bnserve export RUN1 RUN2 … --out FILE"
            )
        if args.ensemble < 2:
            raise ExportError(f"--ensemble {args.ensemble}: an ensemble needs K ≥ 2")
        return tune_members(dirs[0], args.ensemble)
    if len(dirs) == 1:
        return tune_model(dirs[0]) if is_tune_dir(dirs[0]) else dirs[0]
    return EnsembleMembers(tuple(dirs), "")


def main(argv: list[str]) -> int:
    """Run the exporter; prints what was written, or the error and exits 2 (README: Exit codes)."""
    args = _parser().parse_args(argv)
    if args.reference_rows < 1:
        print("bnserve export: error: --reference-rows must be ≥ 1", file=sys.stderr)
        return 2
    try:
        members = _members(args)
        if isinstance(members, EnsembleMembers) and args.unfolded:
            raise ExportError("--unfolded writes one run as trained; an ensemble is folded only")
        if isinstance(members, Path):
            settings = ExportSettings(
                run_dir=members,
                out=args.out,
                unfolded=args.unfolded,
                force=args.force,
                reference_rows=args.reference_rows,
            )
            print(_describe(export_run(settings)))
            return 0
        ensemble = EnsembleSettings(
            run_dirs=members.run_dirs,
            out=args.out,
            force=args.force,
            reference_rows=args.reference_rows,
            source=members.source,
            layout=args.layout,
        )
        print(_describe_ensemble(export_ensemble(ensemble), members.source))
    except ExportError as error:
        print(f"bnserve export: error: {error}", file=sys.stderr)
        return 2
    return 0
