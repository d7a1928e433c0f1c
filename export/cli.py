"""`bnserve export RUN_DIR --out model.onnx [--unfolded] [--force]`.

Also `python -m bnserve.export`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bnserve.export.errors import ExportError
from bnserve.export.exporter import ExportReport, ExportSettings, export_run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bnserve export",
        description=(
            "Fold input standardization and every batch norm (frozen statistics) into affine "
            "weights and write a float32 ONNX model, verified against the numpy inference path "
            "on the run's held-out set and rows at the edges of its range, output by output and "
            "layer by layer. Nothing is written if any check fails."
        ),
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished training run")
    parser.add_argument("--out", type=Path, required=True, help="the .onnx file to write")
    parser.add_argument(
        "--unfolded",
        action="store_true",
        help="keep BatchNormalization nodes and Sub/Div standardization (for audit)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument(
        "--reference-rows",
        type=int,
        default=8,
        help="held-out rows embedded for the server's parity gate (default: 8)",
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


def main(argv: list[str]) -> int:
    """Run the exporter; prints what was written, or the error and exits 2 (README: Exit codes)."""
    args = _parser().parse_args(argv)
    if args.reference_rows < 1:
        print("bnserve export: error: --reference-rows must be ≥ 1", file=sys.stderr)
        return 2
    settings = ExportSettings(
        run_dir=args.run_dir,
        out=args.out,
        unfolded=args.unfolded,
        force=args.force,
        reference_rows=args.reference_rows,
    )
    try:
        report = export_run(settings)
    except ExportError as error:
        print(f"bnserve export: error: {error}", file=sys.stderr)
        return 2
    print(_describe(report))
    return 0
