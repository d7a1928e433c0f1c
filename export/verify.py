"""Score a built model with onnxruntime and compare it with the numpy inference path.

Two checks, on the held-out rows plus rows at the edges of their range (probe_rows):
- check_layers: the fold itself. The graph runs in float64 with its float32 weights, and every
  layer's pre-activations (the logits last) must match the run's within ROUNDING_BOUND float32
  roundings of the magnitude of what the layer sums: a relative bound that a fold dropping ε
  (≈ 40 roundings on digits) or mixing μ and β (millions) fails, and a correct fold (under 1
  rounding: only its weights' rounding is left) never does.
- compare_outputs: the float32 model as served, output by output, with these tolerances
  (float32 model vs float64 numpy on the same float32-rounded raw features):

- classification: |p_onnx − p_numpy| ≤ 1e-5 on every probability; labels agree wherever numpy's
  two largest probabilities differ by more than twice that (a nearer tie may flip in float32).
- regression: |y_onnx − y_numpy| ≤ 1e-4·|y_numpy| + 1e-4·max(target.std). Float32 error grows with
  the size of the terms summed, not with |y|, so a y near 0 reached from large terms needs the
  absolute part; 1e-4 of a target standard deviation is far below what a folding mistake
  (a wrong ε, a swapped axis, a lost bias) costs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from bnserve.export.graph import TRANSFORMED_TARGET
from bnserve.server.modelfile.contract import Tolerance, decisive_rows
from bnserve.training.model import hidden_count
from bnserve.training.scaling import apply_clip
from bnserve.training.target_transform import transform_of

PROBABILITY_TOLERANCE = Tolerance(abs=1e-5, rel=0.0)
REGRESSION_RELATIVE = 1e-4
LOG_TARGET_RELATIVE = 1e-5  # --target-transform log: δt per unit of t's magnitude


def regression_tolerance(
    target_std: np.ndarray, target_mean: np.ndarray | None = None, transform: str = "none"
) -> Tolerance:
    """The regression bound for targets with standard deviations target_std (T,), target units.

    With transform "log" (target_std, target_mean those of t = log(1 + y)) the last Gemm's t is
    bounded by δt ≤ LOG_TARGET_RELATIVE·(|μ_t| + 5·σ_t), the magnitude of the t a model gives (a
    float32 Gemm is off by a few roundings, ~1e-7, of that), and y = exp(t) − 1 turns it into
    |δy| ≈ (1 + y)·δt = δt + δt·|y|: abs = rel = that bound, under the server's ceiling
    (max_parity_tolerance_rel 1e-3) for any |μ_t| + 5·σ_t below 100."""
    if transform == "none":
        return Tolerance(
            abs=REGRESSION_RELATIVE * float(np.max(target_std)), rel=REGRESSION_RELATIVE
        )
    mean = np.zeros(1) if target_mean is None else target_mean
    bound = LOG_TARGET_RELATIVE * float(np.max(np.abs(mean)) + 5 * np.max(target_std))
    return Tolerance(abs=bound, rel=bound)


@dataclass(frozen=True)
class Verification:
    """How an ONNX model's outputs compared with numpy's on R held-out examples."""

    example_count: int
    max_abs_error: float  # over probabilities (classification) or y (regression)
    worst_example: int  # held-out row with the largest excess over the tolerance
    failures: int  # values outside the tolerance
    label_mismatches: int  # classification: labels that differ where numpy's margin is clear
    tolerance: Tolerance

    @property
    def passed(self) -> bool:
        return self.failures == 0 and self.label_mismatches == 0


def onnx_session(model_bytes: bytes, threads: int = 1) -> ort.InferenceSession:
    """A CPU onnxruntime session for a serialized model, with `threads` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def score_onnx(session: ort.InferenceSession, x_raw: np.ndarray) -> dict[str, np.ndarray]:
    """Run x_raw (N, F), cast to float32; returns every output by name."""
    return score_feeds(session, {"x": np.ascontiguousarray(x_raw, dtype=np.float32)})


def score_feeds(
    session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Run the graph on its inputs by name (a raw-column model's columns); every output by name."""
    names = [output.name for output in session.get_outputs()]
    values = session.run(names, dict(feeds))
    return dict(zip(names, values, strict=True))


def compare_outputs(
    onnx_outputs: dict[str, np.ndarray], expected: np.ndarray, task: str, tolerance: Tolerance
) -> Verification:
    """Compare ONNX outputs with numpy's: expected is probabilities (N, C) or y (N, T), float64."""
    main_name = "probabilities" if task == "classification" else "y"
    actual = onnx_outputs[main_name].astype(np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"{main_name}: onnx shape {actual.shape} != numpy shape {expected.shape}")
    error = np.abs(actual - expected)
    excess = error - tolerance.bound(expected)
    failures = int(np.count_nonzero(~(excess <= 0)))  # NaN counts as a failure
    ranked_excess = np.where(np.isnan(excess), np.inf, excess)
    worst_example = int(np.unravel_index(np.argmax(ranked_excess), excess.shape)[0])
    label_mismatches = 0
    if task == "classification":
        disagree = onnx_outputs["label"] != np.argmax(expected, axis=1)
        label_mismatches = int(np.count_nonzero(disagree & decisive_rows(expected, tolerance)))
    return Verification(
        example_count=expected.shape[0],
        max_abs_error=float(np.max(error)) if error.size else 0.0,
        worst_example=worst_example,
        failures=failures,
        label_mismatches=label_mismatches,
        tolerance=tolerance,
    )


# --- the layer check: every pre-activation, each from the model's own previous layer ------------

UNIT_ROUNDOFF = 2.0**-24  # float32: a rounded value is within this share of the exact one
# The graph runs in float64 with its float32 initializers, so the only error left is each stored
# weight's and bias's rounding to float32 (≤ 2⁻²⁴ of it, ≤ 2⁻²⁴·Σ|terms| in all); the unfolded
# graph rounds mean, std and the four BN statistics too, so a few of those. A fold that drops
# ε from √(σ²+ε) is off by ε/(2σ²) ≈ 2.5e-6 ≈ 40 roundings on a unit of variance 2.
ROUNDING_BOUND = 4.0  # |Δ| ≤ this many roundings of the layer's summed magnitudes
EDGE_CORNERS = 16  # probe rows with each feature at its low or high end, seeded
EDGE_ROWS = 2 + EDGE_CORNERS  # all lows, all highs, the corners: probe_rows adds these


@dataclass(frozen=True)
class LayerVerification:
    """Pre-activations (hidden layers: the activation's input; last layer: logits or y) of the
    ONNX graph, evaluated in float64 with its own float32 weights, against float64 ones from the
    run's parameters, layer by layer.

    Layer l's reference takes the graph's own activations of layer l − 1 as its input, so each
    layer is judged on its own: |Δ| ≤ ROUNDING_BOUND · 2⁻²⁴ · Σ|terms| per value, where Σ|terms|
    is the sum of the magnitudes of what the layer adds up (|a|·|W'| and the bias): a bound
    relative to the layer's own scale, on the logits, not an absolute one on probabilities that
    softmax squashes.
    """

    probe_rows: int
    worst_layer: str  # "hidden1", …, "output"
    worst_row: int  # probe row of the largest ratio
    worst_ratio: float  # max |Δ| / (2⁻²⁴ · Σ|terms|) over every value; passes when ≤ the bound
    bound: float = ROUNDING_BOUND

    @property
    def passed(self) -> bool:
        return self.worst_ratio <= self.bound  # NaN (as inf) fails


def probe_rows(heldout_x: np.ndarray, seed: int = 0) -> np.ndarray:
    """The held-out rows (R, F), then 2 + EDGE_CORNERS rows at the edges of the range they span:
    every feature at its lowest, every feature at its highest, and rows with each feature at one
    end or the other. Extreme inputs are where a fold's mistakes grow."""
    x = np.asarray(heldout_x, dtype=np.float64)
    low, high = x.min(axis=0), x.max(axis=0)
    corners = np.random.default_rng(seed).random((EDGE_CORNERS, x.shape[1])) < 0.5
    return np.vstack([x, low, high, np.where(corners, high, low)])


def _float64_graph(model: onnx.ModelProto, extra_outputs: list[str]) -> bytes:
    """The same graph computing in float64 from its float32 initializers (each value kept
    exactly), with `extra_outputs` (intermediate tensors) exposed; serialized."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    graph = probe.graph
    for index, tensor in enumerate(graph.initializer):
        if tensor.data_type == TensorProto.FLOAT:
            value = numpy_helper.to_array(tensor).astype(np.float64)
            graph.initializer[index].CopyFrom(numpy_helper.from_array(value, tensor.name))
    for info in [*graph.input, *graph.output]:
        if info.type.tensor_type.elem_type == TensorProto.FLOAT:
            info.type.tensor_type.elem_type = TensorProto.DOUBLE
    for node in graph.node:  # the missing indicators' Cast (export/columns.py)
        for attribute in node.attribute:
            if (
                node.op_type == "Cast"
                and attribute.name == "to"
                and attribute.i == TensorProto.FLOAT
            ):
                attribute.i = TensorProto.DOUBLE
    del graph.value_info[:]
    present = {output.name for output in graph.output}
    for name in extra_outputs:
        if name not in present:
            graph.output.append(helper.make_tensor_value_info(name, TensorProto.DOUBLE, None))
    serialized: bytes = probe.SerializeToString()
    return serialized


def _pre_activation_names(model: onnx.ModelProto, n_hidden: int) -> list[str]:
    """The input of each hidden layer's activation node ("hidden{i}.a" is its output)."""
    producer = {node.output[0]: node for node in model.graph.node}
    return [producer[f"hidden{index}.a"].input[0] for index in range(1, n_hidden + 1)]


def check_layers(
    model: onnx.ModelProto,
    params: dict[str, np.ndarray],
    meta: dict[str, Any],
    x_raw: np.ndarray,
    feeds: Mapping[str, np.ndarray] | None = None,
) -> LayerVerification:
    """Compare every layer on probe rows x_raw (N, F); params in the params.npz layout.

    feeds: the graph's own inputs when they are raw columns (export/raw_rows.py feeds_of) whose
    design inputs are x_raw (N, D); None: the graph takes x_raw as `x`."""
    p = {name: np.asarray(value, dtype=np.float64) for name, value in params.items()}
    n_hidden = hidden_count(p)
    batchnorm, epsilon, task = bool(meta["batchnorm"]), float(meta["epsilon"]), meta["task"]
    pre_names = _pre_activation_names(model, n_hidden)
    last_name = "logits" if task == "classification" else "y"
    if task == "regression" and transform_of(meta) != "none":
        last_name = TRANSFORMED_TARGET  # the layer check compares t(y); the outputs check y
    activation_names = [f"hidden{index}.a" for index in range(1, n_hidden + 1)]
    session = onnx_session(_float64_graph(model, [*pre_names, *activation_names, last_name]))
    x = np.asarray(x_raw, dtype=np.float32).astype(np.float64)  # the values the model sees
    names = [output.name for output in session.get_outputs()]
    if feeds is None:
        graph_feeds: dict[str, np.ndarray] = {"x": x}
    else:  # numbers as the float32 values the model sees, in float64; strings as they are
        graph_feeds = {
            name: value.astype(np.float64) if value.dtype == np.float32 else value
            for name, value in feeds.items()
        }
    got = dict(zip(names, session.run(names, graph_feeds), strict=True))

    # of the folded input; robust scaling's clip (slope ≤ 1) only shrinks an error in u
    magnitude = (np.abs(x) + np.abs(p["input.mean"])) / p["input.std"]
    a = apply_clip((x - p["input.mean"]) / p["input.std"], p.get("input.clip"))
    ratios: list[tuple[str, np.ndarray]] = []
    for index in range(1, n_hidden + 1):
        prefix = f"hidden{index}"
        weight = p[f"{prefix}.W"]
        if batchnorm:
            scale = p[f"{prefix}.gamma"] / np.sqrt(p[f"{prefix}.running_var"] + epsilon)
            shift, mean = p[f"{prefix}.beta"], p[f"{prefix}.running_mean"]
        else:
            scale, shift, mean = np.ones(weight.shape[1]), p[f"{prefix}.b"], np.zeros(1)
        expected = scale * (a @ weight - mean) + shift
        terms = np.abs(scale) * (magnitude @ np.abs(weight) + np.abs(mean)) + np.abs(shift)
        ratios.append((prefix, _ratio(got[pre_names[index - 1]], expected, terms)))
        a = got[f"{prefix}.a"]  # the next layer starts from the graph's own activations
        magnitude = np.abs(a)
    expected = a @ p["output.W"] + p["output.b"]
    terms = magnitude @ np.abs(p["output.W"]) + np.abs(p["output.b"])
    if task == "regression":
        expected = expected * p["target.std"] + p["target.mean"]
        terms = terms * p["target.std"] + np.abs(p["target.mean"])
    ratios.append(("output", _ratio(got[last_name], expected, terms)))
    worst_layer, worst = max(ratios, key=lambda item: float(np.max(item[1], initial=0.0)))
    return LayerVerification(
        probe_rows=x.shape[0],
        worst_layer=worst_layer,
        worst_row=int(np.unravel_index(np.argmax(worst), worst.shape)[0]),
        worst_ratio=float(np.max(worst, initial=0.0)),
    )


def _ratio(actual: np.ndarray, expected: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """|Δ| in float32 roundings of the summed magnitudes; NaN becomes inf (a failure)."""
    floor = np.finfo(np.float32).tiny
    ratio = np.abs(actual - expected) / (UNIT_ROUNDOFF * np.maximum(terms, floor))
    return np.where(np.isnan(ratio), np.inf, ratio)
