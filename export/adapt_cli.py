"""`bnserve adapt MODEL.onnx --data RECENT --out NEW.onnx` (docs/adapt.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bnserve.export.adapt_network import layer_range
from bnserve.export.adapt_source import AdaptError
from bnserve.export.adapter import AdaptReport, AdaptSettings, NoShiftError, adapt_model

DEFAULTS = AdaptSettings(source=Path(), data=Path(), out=Path())
TOP = 5  # features in the before/after table (flagged ones always shown)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bnserve adapt",
        description=(
            "Re-estimate a model's frozen batch-norm statistics on unlabelled recent inputs "
            "(AdaBN), layer by layer, blended with the source's; re-fold, verify like an "
            "export, and write a new model file whose reference rows and drift reference come "
            "from the recent rows. Works from the model file alone. Repairs exactly an offset "
            "added to features, in part a change of scale, not at all a change in how labels "
            "follow inputs. Refuses (one line, nothing written) too few rows, columns that do "
            "not match the model, a card without batch-norm statistics, and recent rows that "
            "show no drift (unless --force)."
        ),
    )
    parser.add_argument("source", type=Path, metavar="MODEL.onnx", help="a model from export")
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        metavar="RECENT",
        help="recent inputs, no labels needed: .csv with a header naming the model's features "
        "(other columns ignored), .parquet or .npz; a server capture directory is not read yet "
        "(it comes with the feedback work)",
    )
    parser.add_argument("--out", type=Path, required=True, help="the new model file to write")
    parser.add_argument(
        "--layers",
        default=DEFAULTS.layers,
        help="hidden layers to re-estimate: first, all, or K (the first K) "
        f"(default: {DEFAULTS.layers})",
    )
    parser.add_argument(
        "--prior-rows",
        type=float,
        default=DEFAULTS.prior_rows,
        metavar="N",
        help="the source statistics count as N rows in the blend (0: the recent rows' own) "
        f"(default: {DEFAULTS.prior_rows:g})",
    )
    parser.add_argument(
        "--input-standardization",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.input_standardization,
        help="also re-estimate each feature's mean and std (undoes a per-feature change of "
        "scale, which the first batch-norm layer repairs only in part) (default: on)",
    )
    parser.add_argument(
        "--min-rows",
        type=int,
        default=DEFAULTS.min_rows,
        help=f"refuse fewer recent rows (default: {DEFAULTS.min_rows})",
    )
    parser.add_argument(
        "--force", action="store_true", help="adapt even when no drift is past a threshold"
    )
    return parser


def format_drift(before: dict[str, Any], after: dict[str, Any] | None) -> str:
    """Features ranked by their score before (the top ones and every flagged one), then the
    layers, with the score after adapting beside each when there is one."""
    later = {f["name"]: f for f in after["features"]} if after else {}
    later_layers = {layer["name"]: layer for layer in after["layers"]} if after else {}
    ranked = sorted(before["features"], key=lambda f: -f["score"])
    shown = [f for i, f in enumerate(ranked) if i < TOP or f["flagged"]]
    lines = [f"{'feature':<18} {'before':>8} {'after':>8}   (drift score; > 1 flags)"]
    for feature in shown:
        then = later.get(feature["name"])
        lines.append(
            f"{feature['name']:<18} {feature['score']:>8.2f} "
            + (f"{then['score']:>8.2f}" if then else f"{'':>8}")
            + ("  DRIFT" if feature["flagged"] else "")
            + ("  still" if then and then["flagged"] else "")
        )
    if len(ranked) > len(shown):
        lines.append(f"… {len(ranked) - len(shown)} more features, none flagged before")
    for layer in before["layers"]:
        then = later_layers.get(layer["name"])
        lines.append(
            f"layer {layer['name']:<12} {layer['score']:>8.4f} "
            + (f"{then['score']:>8.4f}" if then else f"{'':>8}")
            + ("  DRIFT" if layer["flagged"] else "")
            + ("  still" if then and then["flagged"] else "")
        )
    return "\n".join(line.rstrip() for line in lines)


def _describe(report: AdaptReport, source: Path, data: Path) -> str:
    before, after = report.before, report.after
    plan = report.plan
    how = (
        f"layers {layer_range(plan.layers)}"
        + (", input standardization" if plan.input_standardization else "")
        + f", prior rows {plan.prior_rows:g}"
    )
    return "\n".join(
        [
            f"{data}: {report.rows} rows against {source}",
            format_drift(before, after),
            f"flagged before: {len(before['flagged_features'])} features, "
            f"{len(before['flagged_layers'])} layers; after: "
            f"{len(after['flagged_features'])} features, {len(after['flagged_layers'])} layers",
            f"adapted {how}",
            f"verified: every layer within {report.layers.worst_ratio:.2f} float32 roundings of "
            f"the numpy adapted network (bound {report.layers.bound:g}); outputs max abs error "
            f"{report.verification.max_abs_error:.2g} on {report.verification.example_count} rows",
            f"wrote {report.out} (graph sha256 {report.graph_sha256[:12]}…)",
        ]
    )


def main(argv: list[str]) -> int:
    """Adapt; prints the drift before and after and what was written, or one error line (2)."""
    args = _parser().parse_args(argv)
    if args.min_rows < 2 or not args.prior_rows >= 0:
        print("bnserve adapt: error: --min-rows must be ≥ 2 and --prior-rows ≥ 0", file=sys.stderr)
        return 2
    settings = AdaptSettings(
        source=args.source,
        data=args.data,
        out=args.out,
        layers=args.layers,
        prior_rows=args.prior_rows,
        input_standardization=args.input_standardization,
        min_rows=args.min_rows,
        force=args.force,
    )
    try:
        report = adapt_model(settings)
    except NoShiftError as error:
        print(f"{args.data} against {args.source}:\n{format_drift(error.before, None)}")
        print(f"bnserve adapt: error: {error}", file=sys.stderr)
        return 2
    except AdaptError as error:
        print(f"bnserve adapt: error: {error}", file=sys.stderr)
        return 2
    print(_describe(report, args.source, args.data))
    return 0
