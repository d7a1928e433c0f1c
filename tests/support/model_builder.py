"""Contract-compliant test models built with onnx from random weights.

The models follow docs/contracts.md: input x (N, F) float32, Gemm/Relu/Gemm then Softmax+ArgMax
(classification) or nothing (regression), bnserve.* metadata with reference rows computed by a
float64 numpy forward pass — the role bnserve.training.inference.predict plays for real exports.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

NUM_FEATURES = 6
NUM_HIDDEN = 16
CLASS_NAMES = ["setosa", "versicolor", "virginica"]
TARGET_NAMES = ["price", "volume"]
REFERENCE_ROWS = 8


@dataclass(frozen=True)
class MlpWeights:
    """W1 (F, H), b1 (H,), W2 (H, K), b2 (K,) as float32."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray

    @classmethod
    def random(cls, outputs: int, seed: int) -> MlpWeights:
        rng = np.random.default_rng(seed)
        return cls(
            rng.normal(0, 0.5, (NUM_FEATURES, NUM_HIDDEN)).astype(np.float32),
            rng.normal(0, 0.1, NUM_HIDDEN).astype(np.float32),
            rng.normal(0, 0.5, (NUM_HIDDEN, outputs)).astype(np.float32),
            rng.normal(0, 0.1, outputs).astype(np.float32),
        )


def numpy_forward(weights: MlpWeights, x: np.ndarray, task: str) -> dict[str, np.ndarray]:
    """The reference path in float64: {"probabilities", "label"} or {"y"}."""
    w1, b1, w2, b2 = (
        np.asarray(a, np.float64) for a in (weights.w1, weights.b1, weights.w2, weights.b2)
    )
    hidden = np.maximum(np.asarray(x, np.float64) @ w1 + b1, 0.0)
    logits = hidden @ w2 + b2
    if task == "regression":
        return {"y": logits}
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    return {"probabilities": probabilities, "label": probabilities.argmax(axis=1)}


def build_graph(weights: MlpWeights, task: str) -> onnx.GraphProto:
    initializers = [
        numpy_helper.from_array(weights.w1, "hidden1.W"),
        numpy_helper.from_array(weights.b1, "hidden1.b"),
        numpy_helper.from_array(weights.w2, "output.W"),
        numpy_helper.from_array(weights.b2, "output.b"),
    ]
    outputs_count = weights.w2.shape[1]
    nodes = [
        helper.make_node("Gemm", ["x", "hidden1.W", "hidden1.b"], ["z1"]),
        helper.make_node("Relu", ["z1"], ["a1"]),
    ]
    if task == "classification":
        nodes += [
            helper.make_node("Gemm", ["a1", "output.W", "output.b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
        ]
        outputs = [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", outputs_count]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
        ]
    else:
        nodes.append(helper.make_node("Gemm", ["a1", "output.W", "output.b"], ["y"]))
        outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", outputs_count])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", NUM_FEATURES])]
    return helper.make_graph(nodes, "bnserve_test_mlp", inputs, outputs, initializers)


def build_model(
    task: str, seed: int = 0, *, reference_weights: MlpWeights | None = None
) -> tuple[onnx.ModelProto, MlpWeights]:
    """A contract-compliant model; reference rows come from reference_weights (default: the
    model's own weights — pass others to make a model that fails its parity gate)."""
    outputs_count = len(CLASS_NAMES) if task == "classification" else len(TARGET_NAMES)
    weights = MlpWeights.random(outputs_count, seed)
    graph = build_graph(weights, task)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    rng = np.random.default_rng(seed + 1000)
    reference_x = rng.normal(0, 1, (REFERENCE_ROWS, NUM_FEATURES)).astype(np.float32)
    reference = numpy_forward(reference_weights or weights, reference_x, task)
    metadata = {
        "bnserve.format": "1",
        "bnserve.task": task,
        "bnserve.feature_names": json.dumps([f"f{i}" for i in range(NUM_FEATURES)]),
        "bnserve.stats": "ema",
        "bnserve.bn_momentum": "0.1",
        "bnserve.running_var": "unbiased",
        "bnserve.epsilon": "1e-05",
        "bnserve.folded": "true",
        "bnserve.fold_max_abs_error": "1e-7",
        "bnserve.run_id": f"test-{task}-{seed}",
        "bnserve.params_sha256": "0" * 64,
        "bnserve.graph_sha256": hashlib.sha256(model.graph.SerializeToString()).hexdigest(),
        "bnserve.reference_inputs": json.dumps(reference_x.tolist()),
        "bnserve.training": json.dumps({"config": {"hidden": [NUM_HIDDEN]}, "metrics": {}}),
        "bnserve.created_at": "2026-01-01T00:00:00Z",
    }
    if task == "classification":
        metadata["bnserve.class_names"] = json.dumps(CLASS_NAMES)
        metadata["bnserve.reference_outputs"] = json.dumps(
            {k: v.tolist() for k, v in reference.items()}
        )
        metadata["bnserve.reference_tolerance"] = json.dumps({"abs": 1e-5})
    else:
        metadata["bnserve.target_names"] = json.dumps(TARGET_NAMES)
        metadata["bnserve.reference_outputs"] = json.dumps({"y": reference["y"].tolist()})
        metadata["bnserve.reference_tolerance"] = json.dumps({"rel": 1e-4, "abs": 1e-6})
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model)
    return model, weights


@dataclass(frozen=True)
class ModelFiles:
    """Model files on disk and the weights behind them (for numpy expectations)."""

    classification: Path
    regression: Path
    bad_parity: Path
    classification_weights: MlpWeights
    regression_weights: MlpWeights
