"""`bnserve import MODEL.onnx --out folded.onnx [--reference-data FILE] …` (also
`python -m bnserve.export import`)."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from bnserve.export.errors import ExportError
from bnserve.export.fold import FOLDED_ACTIVATIONS
from bnserve.export.importer import ImportReport, ImportSettings, import_model
from bnserve.server.modelfile.contract import TASKS

MAX_ROWS = 1_000_000  # generated or embedded rows: beyond that only memory grows


def _names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated non-empty names")
    return names


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bnserve import",
        description=(
            "Fold every inference-mode BatchNormalization (and an input normalization) of an "
            "ONNX MLP trained elsewhere — Gemm or MatMul+Add layers, Relu/Tanh/Sigmoid/LeakyRelu "
            "between them, Softmax/LogSoftmax/Sigmoid or nothing at the end — into bnserve's "
            "folded graph and contract. The fold is verified against the original graph under "
            "onnxruntime; its outputs on a few rows become the reference rows the server's "
            "parity gate replays. What cannot be folded exactly is refused, naming the node; "
            "nothing is written then."
        ),
    )
    parser.add_argument(
        "source",
        type=Path,
        metavar="MODEL.onnx",
        help="the ONNX model to import (or a PyTorch state dict, MODEL.pt)",
    )
    parser.add_argument("--out", type=Path, required=True, help="the folded .onnx file to write")
    parser.add_argument(
        "--reference-data",
        type=Path,
        metavar="FILE",
        help="CSV (with a header), Parquet or NPZ ('x') of inputs: the fold is verified on every "
        "row. A file with exactly the model's inputs is taken whole; a target column is skipped "
        "when --target names it, or when there is one column more than the inputs (the last). "
        "Default: rows drawn from the range the model's own input normalization implies",
    )
    parser.add_argument(
        "--target",
        metavar="COL",
        help="a column of --reference-data to skip (default: the last, only when the file has one "
        "column more than the model's inputs)",
    )
    parser.add_argument(
        "--task",
        choices=TASKS,
        help="default: from the graph's end (Softmax/LogSoftmax/Sigmoid: classification, nothing: "
        "regression); classification reads a graph that ends in logits as a classifier, its "
        "probabilities the softmax of the logits",
    )
    parser.add_argument(
        "--feature-names",
        type=_names,
        metavar="A,B,…",
        help="feature names (default: the reference file's, else x0, x1, …)",
    )
    parser.add_argument(
        "--class-names", type=_names, metavar="A,B,…", help="class names (default: 0, 1, …)"
    )
    parser.add_argument(
        "--target-names", type=_names, metavar="A,B,…", help="regression outputs (default: y0, …)"
    )
    parser.add_argument(
        "--reference-rows",
        type=int,
        metavar="K",
        default=8,
        help="rows embedded for the server's parity gate (default: 8)",
    )
    parser.add_argument(
        "--generated-rows",
        type=int,
        metavar="N",
        default=256,
        help="rows verified on without --reference-data (default: 256)",
    )
    state_dict = parser.add_argument_group(
        "a PyTorch state dict (MODEL.pt: nn.Sequential of Linear, BatchNorm1d, activations; "
        "needs torch)"
    )
    state_dict.add_argument(
        "--activation",
        choices=FOLDED_ACTIVATIONS,
        help="the activation between the layers (a state dict does not record it)",
    )
    state_dict.add_argument(
        "--leaky-relu-alpha",
        type=float,
        metavar="A",
        help="LeakyReLU's negative_slope (default: 0.01)",
    )
    state_dict.add_argument(
        "--bn-epsilon",
        type=float,
        metavar="EPS",
        help="BatchNorm1d's eps (default: 1e-5; a state dict does not store it)",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    return parser


def _describe(report: ImportReport) -> str:
    check = report.verification
    tolerance = check.tolerance
    bound = (
        f"{tolerance.abs:g}"
        if tolerance.rel == 0
        else f"{tolerance.abs:.3g} + {tolerance.rel:g}·|y|"
    )
    norms = len(report.chain.batchnorms)
    return (
        f"read {report.chain.summary()} ({norms} BatchNormalization node(s) folded)\n"
        f"wrote {report.out} (folded, {report.node_count} nodes, {report.size_bytes:,} bytes, "
        f"float32)\n"
        f"folded vs original under onnxruntime on {check.example_count} rows "
        f"({report.rows_from}): max abs error {check.max_abs_error:.3g} (tolerance {bound})\n"
        f"graph sha256 {report.graph_sha256}"
    )


def main(argv: list[str]) -> int:
    """Run the importer; prints what was written, or the error and exits 2 (README: Exit codes)."""
    parser = _parser()
    args = parser.parse_args(argv)
    for flag, value in (
        ("--reference-rows", args.reference_rows),
        ("--generated-rows", args.generated_rows),
    ):
        if not 1 <= value <= MAX_ROWS:
            print(f"bnserve import: error: {flag} must be in 1..{MAX_ROWS:,}", file=sys.stderr)
            return 2
    if not (args.leaky_relu_alpha is None or math.isfinite(args.leaky_relu_alpha)) or not (
        args.bn_epsilon is None or (math.isfinite(args.bn_epsilon) and args.bn_epsilon >= 0)
    ):
        print(
            "bnserve import: error: --leaky-relu-alpha must be finite, --bn-epsilon finite ≥ 0",
            file=sys.stderr,
        )
        return 2
    settings = ImportSettings(
        source=args.source,
        out=args.out,
        reference_data=args.reference_data,
        target=args.target,
        task=args.task,
        activation=args.activation,
        leaky_relu_alpha=args.leaky_relu_alpha,
        bn_epsilon=args.bn_epsilon,
        feature_names=args.feature_names,
        class_names=args.class_names,
        target_names=args.target_names,
        reference_rows=args.reference_rows,
        generated_rows=args.generated_rows,
        force=args.force,
    )
    try:
        report = import_model(settings)
    except ExportError as error:
        print(f"bnserve import: error: {error}", file=sys.stderr)
        return 2
    print(_describe(report))
    return 0
