"""Import an MLP trained elsewhere (an ONNX export with BatchNormalization nodes): parse, fold,
verify against the original graph under onnxruntime, write in bnserve's contract.

Like `bnserve export`, nothing is written unless every step passed, and the file appears
atomically. The reference rows the server's parity gate replays are the ORIGINAL graph's outputs,
so the served model answers for the source model, not for itself.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto

from bnserve.atomic import write_bytes
from bnserve.export.errors import ExportError
from bnserve.export.exporter import check_output_path
from bnserve.export.fold import LEAKY_RELU_ALPHA, AffineLayer, FoldedNetwork, fold_layers
from bnserve.export.graph import build_folded_model
from bnserve.export.metadata import ReferenceRows, attach_metadata, build_metadata, graph_sha256
from bnserve.export.onnx_chain import ParsedChain, parse_chain
from bnserve.export.reference_data import read_reference_data
from bnserve.export.state_dict import (
    StateDictSpec,
    graph_from_state_dict,
    is_state_dict_path,
    load_state_dict,
)
from bnserve.export.verify import (
    PROBABILITY_TOLERANCE,
    REGRESSION_RELATIVE,
    Verification,
    compare_outputs,
    onnx_session,
    score_onnx,
)
from bnserve.flags import flag_of
from bnserve.server.modelfile.contract import MetadataKey, Tolerance
from bnserve.server.plane.errors import first_line

CHUNK_ROWS = 4096  # rows per onnxruntime call while verifying (bounds memory on big files)


@dataclass(frozen=True)
class ImportSettings:
    """What `bnserve import` was asked to do."""

    source: Path  # the foreign .onnx file
    out: Path  # the folded .onnx file to write
    reference_data: Path | None = None  # CSV/NPZ of inputs (training's readers); None: generated
    target: str | None = None  # the reference file's target column (export/reference_data.py)
    task: str | None = None  # "classification" reads a graph ending in logits as a classifier
    # a state dict (.pt/.pth) only: what it does not record
    activation: str | None = None  # relu | tanh | sigmoid | leaky_relu
    leaky_relu_alpha: float | None = None  # LeakyReLU's negative_slope (default 0.01)
    bn_epsilon: float | None = None  # BatchNorm1d's eps (default 1e-5)
    feature_names: tuple[str, ...] | None = None  # default: the reference file's, else x0, x1, …
    class_names: tuple[str, ...] | None = None  # default: "0", "1", …
    target_names: tuple[str, ...] | None = None  # default: y0, y1, …
    reference_rows: int = 8  # rows embedded for the server's parity gate
    generated_rows: int = 256  # rows verified on when no reference data is given
    seed: int = 0  # of the generated rows
    force: bool = False  # replace an existing output file


@dataclass(frozen=True)
class ImportReport:
    """What was written and how well the fold reproduced the original graph."""

    out: Path
    chain: ParsedChain
    verification: Verification
    rows_from: str  # where the verification rows came from, as the model card says
    node_count: int
    size_bytes: int
    graph_sha256: str


def import_model(settings: ImportSettings) -> ImportReport:
    """Fold settings.source into settings.out; on anything unfoldable raise ExportError."""
    check_output_path(settings.out, settings.force)
    source_bytes, source_model = _read_source(settings)
    chain = _as_task(parse_chain(source_model, str(settings.source)), settings)
    original = _original_session(source_model, settings.source)
    inputs, rows_from, file_names = _verification_inputs(settings, chain)
    try:
        expected = _original_outputs(original, chain, inputs)
    except ExportError as error:
        raise ExportError(f"{settings.source}: {error}") from None
    task = chain.task
    names = _names(settings, chain, file_names)
    model = build_folded_model(fold_chain(chain))
    tolerance = _tolerance(task, expected)
    verification = compare_outputs(
        score_onnx(onnx_session(model.SerializeToString()), inputs), expected, task, tolerance
    )
    if not verification.passed:
        raise ExportError(_verification_failure(settings.source, verification, rows_from))
    references = _reference_rows(inputs, expected, task, settings.reference_rows)
    source_sha256 = hashlib.sha256(source_bytes).hexdigest()
    card = _card(chain, source_model, settings.source, source_sha256, rows_from)
    metadata = build_metadata(
        meta={
            "task": task,
            **names,
            "stats": card["stats"],
            "batchnorm": bool(chain.batchnorms),
            "bn_momentum": card["bn_momentum"],
            "running_var": card["running_var"],
            "epsilon": [node.stated_epsilon for node in chain.batchnorms],
            "run_id": f"import-{source_sha256[:12]}",
            "params_sha256": source_sha256,  # imported: the sha256 of the source .onnx file
        },
        training={"config": None, "metrics": {}, "imported_from": settings.source.name},
        folded=True,
        fold_max_abs_error=verification.max_abs_error,
        tolerance=tolerance,
        references=references,
        model=model,
    )
    # where the model came from and what its source states
    metadata[MetadataKey.IMPORT.full] = json.dumps(card["import"], sort_keys=True)
    attach_metadata(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    payload = model.SerializeToString()
    write_bytes(settings.out, payload)
    return ImportReport(
        out=settings.out,
        chain=chain,
        verification=verification,
        rows_from=rows_from,
        node_count=len(model.graph.node),
        size_bytes=len(payload),
        graph_sha256=graph_sha256(model),
    )


def _as_task(chain: ParsedChain, settings: ImportSettings) -> ParsedChain:
    """The chain with --task applied: classification turns final logits into a classifier."""
    if settings.task is None or settings.task == chain.task:
        return chain
    if settings.task == "classification":
        if chain.output_count < 2:
            raise ExportError(
                f"{settings.source}: --task classification, but the graph ends in one output "
                "with no Sigmoid; softmax over one logit is always 1"
            )
        return replace(chain, head="logits")
    raise ExportError(
        f"{settings.source}: --task regression, but the graph ends in "
        f"{chain.summary().rsplit(' → ', 1)[-1]}: it is a classifier"
    )


def fold_chain(chain: ParsedChain) -> FoldedNetwork:
    """The parsed chain through bnserve.export.fold's one fold; a Sigmoid head becomes a two-class
    softmax: softmax([0, z]) = [1 − σ(z), σ(z)] exactly, so bnserve's contract holds."""
    network = fold_layers(
        chain.layers,
        input_mean=chain.input_mean,
        input_std=chain.input_std,
        activation=chain.activation,
        task=chain.task,
        leaky_relu_alpha=chain.leaky_relu_alpha,
    )
    if chain.head != "sigmoid":
        return network
    last = network.layers[-1]
    binary = AffineLayer(
        weight=np.concatenate([np.zeros_like(last.weight), last.weight], axis=1),
        bias=np.concatenate([np.zeros_like(last.bias), last.bias]),
    )
    return FoldedNetwork(
        layers=(*network.layers[:-1], binary),
        activation=network.activation,
        task=network.task,
        leaky_relu_alpha=network.leaky_relu_alpha,
    )


def _read_source(settings: ImportSettings) -> tuple[bytes, onnx.ModelProto]:
    """The source file's bytes and its ONNX graph (for a state dict: the graph torch would
    export for it)."""
    path = settings.source
    if not path.is_file():
        raise ExportError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    if is_state_dict_path(path):
        spec = StateDictSpec(
            activation=settings.activation,
            task=settings.task,
            epsilon=1e-5 if settings.bn_epsilon is None else settings.bn_epsilon,
            leaky_relu_alpha=(
                LEAKY_RELU_ALPHA if settings.leaky_relu_alpha is None else settings.leaky_relu_alpha
            ),
        )
        return path.read_bytes(), graph_from_state_dict(load_state_dict(path), spec, str(path))
    for flag, value in (
        ("--activation", settings.activation),
        ("--leaky-relu-alpha", settings.leaky_relu_alpha),
        ("--bn-epsilon", settings.bn_epsilon),
    ):
        if value is not None:
            raise ExportError(
                f"{path}: {flag} is for a state dict (.pt); an ONNX model's graph states it"
            )
    try:
        source_bytes = path.read_bytes()
        model = onnx.load(str(path))  # also reads external data beside it
    except Exception as error:  # protobuf and onnx raise several untyped errors for bad files
        raise ExportError(f"{path}: not a readable ONNX model ({first_line(error)})") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ExportError(f"{path}: not an ONNX model (no graph nodes)")
    _refuse_text_inputs(path, model)
    return source_bytes, model


def _refuse_text_inputs(path: Path, model: onnx.ModelProto) -> None:
    """A foreign model with a string input (a categorical column) is out of scope (issue 26)."""
    constants = {tensor.name for tensor in model.graph.initializer}
    for value in model.graph.input:
        if value.name not in constants and value.type.tensor_type.elem_type == TensorProto.STRING:
            raise ExportError(
                f"{path}: input {value.name!r} is a string tensor (a categorical column): "
                "importing models with categorical inputs is out of scope; bnserve import "
                "takes MLPs on one float input (train on the raw table with bnserve train instead)"
            )


def _original_session(model: onnx.ModelProto, path: Path) -> ort.InferenceSession:
    try:
        return onnx_session(model.SerializeToString())
    except Exception as error:  # onnxruntime's errors are untyped
        raise ExportError(
            f"{path}: onnxruntime cannot run the original ({first_line(error)})"
        ) from None


def _verification_inputs(
    settings: ImportSettings, chain: ParsedChain
) -> tuple[np.ndarray, str, list[str] | None]:
    """Rows (R, F) float32 to verify on, how the model card describes them, the file's names."""
    features = chain.feature_count
    if settings.reference_data is None:
        rng = np.random.default_rng(settings.seed)
        spread = np.abs(chain.input_std)
        x = chain.input_mean + spread * rng.standard_normal((settings.generated_rows, features))
        if chain.normalization:
            how = (
                f"generated: {settings.generated_rows} rows drawn from N(mean, std²) per feature, "
                f"the range the model's own input normalization ({'/'.join(chain.normalization)}) "
                f"implies, seed {settings.seed}"
            )
        else:
            how = (
                f"generated: {settings.generated_rows} rows drawn from N(0, 1) per feature (the "
                f"model has no input normalization to say its range), seed {settings.seed}"
            )
        return x.astype(np.float32), how, None
    x, names = read_reference_data(settings.reference_data, features, settings.target)
    return x, f"from {settings.reference_data.name}: {x.shape[0]} rows", names


def _original_outputs(
    session: ort.InferenceSession, chain: ParsedChain, inputs: np.ndarray
) -> np.ndarray:
    """The original graph on inputs, float64: probabilities (R, C) or y (R, T)."""
    step = chain.batch_size or CHUNK_ROWS
    parts = []
    for start in range(0, inputs.shape[0], step):
        chunk = inputs[start : start + step]
        rows = chunk.shape[0]
        if chain.batch_size is not None and rows < step:  # a fixed batch: pad the last chunk
            chunk = np.concatenate([chunk, np.zeros((step - rows, chunk.shape[1]), np.float32)])
        try:
            (value,) = session.run([chain.output_name], {chain.input_name: chunk})
        except Exception as error:  # onnxruntime's errors are untyped
            raise ExportError(
                f"onnxruntime cannot run the original graph on rows {start}–{start + rows - 1} "
                f"({first_line(error)})"
            ) from None
        parts.append(
            np.asarray(value, dtype=np.float64).reshape(step if chain.batch_size else rows, -1)[
                :rows
            ]
        )
    output = np.concatenate(parts)
    if chain.head == "log_softmax":
        return np.exp(output)
    if chain.head == "logits":
        shifted = np.exp(output - output.max(axis=1, keepdims=True))
        probabilities: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
        return probabilities
    if chain.head == "sigmoid":
        return np.concatenate([1.0 - output, output], axis=1)
    return output


def _names(
    settings: ImportSettings, chain: ParsedChain, file_names: list[str] | None
) -> dict[str, list[str]]:
    features = chain.feature_count
    feature_names = list(settings.feature_names or file_names or [f"x{i}" for i in range(features)])
    if len(feature_names) != features:
        raise ExportError(f"--feature-names: {len(feature_names)} names for {features} features")
    if len(set(feature_names)) != len(feature_names):
        raise ExportError("--feature-names: a name is listed twice")
    outputs = chain.output_count
    if chain.task == "classification":
        key, given, default = "class_names", settings.class_names, [str(i) for i in range(outputs)]
    else:
        key, given, default = (
            "target_names",
            settings.target_names,
            [f"y{i}" for i in range(outputs)],
        )
    names = list(given or default)
    flag = flag_of(key)
    if len(names) != outputs:
        what = "classes" if chain.task == "classification" else "outputs"
        raise ExportError(f"{flag}: {len(names)} names for {outputs} {what}")
    if len(set(names)) != len(names):
        raise ExportError(f"{flag}: a name is listed twice")
    return {"feature_names": feature_names, key: names}


def _tolerance(task: str, expected: np.ndarray) -> Tolerance:
    """Probabilities: export's 1e-5. Regression: export's 1e-4 relative, and 1e-4 of the
    outputs' spread on the verification rows (the role target.std plays for a bnserve run)."""
    if task == "classification":
        return PROBABILITY_TOLERANCE
    spread = float(np.max(np.std(expected, axis=0))) if expected.shape[0] > 1 else 0.0
    if spread == 0.0:
        spread = max(float(np.max(np.abs(expected))), 1.0)
    return Tolerance(abs=REGRESSION_RELATIVE * spread, rel=REGRESSION_RELATIVE)


def _reference_rows(
    inputs: np.ndarray, expected: np.ndarray, task: str, count: int
) -> ReferenceRows:
    indices = np.unique(
        np.linspace(0, inputs.shape[0] - 1, min(count, inputs.shape[0])).astype(int)
    )
    outputs = expected[indices]
    if task == "classification":
        return ReferenceRows(
            inputs[indices], {"probabilities": outputs, "label": np.argmax(outputs, axis=1)}
        )
    return ReferenceRows(inputs[indices], {"y": outputs})


def _card(
    chain: ParsedChain, model: onnx.ModelProto, path: Path, sha256: str, rows_from: str
) -> dict[str, Any]:
    """The conventions the source states (and what it does not), for the model card."""
    producer = model.producer_name.strip()
    momenta = [node.momentum for node in chain.batchnorms]
    stated = bool(momenta) and all(m is not None for m in momenta)
    if not chain.batchnorms:
        stats, bn_momentum = "", ""
    elif stated:
        # ONNX's momentum weighs the OLD running value (a decay); bnserve/PyTorch state 1 − it
        pytorch_style = sorted({round(1.0 - m, 12) for m in momenta if m is not None})
        stats = "ema"
        bn_momentum = ", ".join(f"{m:g}" for m in pytorch_style)
    else:
        stats, bn_momentum = "unknown", "unknown"
    running_var = {"pytorch": "unbiased", "tf2onnx": "biased", "keras2onnx": "biased"}.get(
        producer.lower(), "unknown"
    )
    record = {
        "source": path.name,
        "source_format": (
            "PyTorch state dict (torch.load weights_only=True); activation, task and ε from "
            "the command line, as the graph torch.onnx.export writes"
            if is_state_dict_path(path)
            else "ONNX"
        ),
        "source_sha256": sha256,
        "producer": f"{producer} {model.producer_version}".strip() or "unknown",
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "chain": chain.summary(),
        "head": chain.head,
        "activation": (
            f"leaky_relu(alpha={chain.leaky_relu_alpha:g})"
            if chain.activation == "leaky_relu"
            else chain.activation
        )
        if len(chain.layers) > 1
        else None,
        "input_normalization": list(chain.normalization),
        "batchnorm": [
            {
                "node": node.node,
                "layer": node.layer,
                "epsilon": node.stated_epsilon,
                "onnx_momentum": None
                if node.momentum is None
                else float(str(np.float32(node.momentum))),
                "pytorch_momentum": node.pytorch_momentum,
            }
            for node in chain.batchnorms
        ],
        "running_var": (
            f"{running_var}: inferred from producer {producer!r}"
            if running_var != "unknown"
            else "unknown: the ONNX file does not say how the running variance was averaged"
        ),
        "momentum_convention": (
            "ONNX BatchNormalization momentum weighs the old running value (a decay): "
            "running = momentum·running + (1 − momentum)·batch; bnserve.bn_momentum states "
            "1 − it (PyTorch's convention). It affects only training, never the fold."
        ),
        "reference_rows": rows_from,
    }
    return {
        "stats": stats,
        "bn_momentum": bn_momentum,
        "running_var": running_var,
        "import": record,
    }


def _verification_failure(path: Path, verification: Verification, rows_from: str) -> str:
    tolerance = verification.tolerance
    return (
        f"{path}: the folded model does not reproduce the original graph on the verification "
        f"rows ({rows_from}): max abs error {verification.max_abs_error:.3g}, "
        f"{verification.failures} value(s) outside |Δ| ≤ {tolerance.abs:g} + {tolerance.rel:g}·|y| "
        f"(worst at row {verification.worst_example}), {verification.label_mismatches} label(s) "
        "differ; nothing written"
    )
