"""ONNX MLPs as other frameworks export them (BatchNormalization nodes kept), built with
onnx.helper in every shape `bnserve import` accepts, plus helpers to break them."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


@dataclass(frozen=True)
class ForeignMlp:
    """The shape of a foreign MLP; weights are random with trained-like scales."""

    features: int = 5
    hidden: tuple[int, ...] = (8, 6)
    outputs: int = 3  # classes (1 with a Sigmoid head) or regression targets
    layer: str = "gemm_transb"  # "gemm" (W (in, out)) | "gemm_transb" (torch) | "matmul_add"
    batchnorm: tuple[bool, ...] | None = None  # per hidden layer; None: after every one
    normalization: str = "sub_div"  # "none" | "sub_div" | "mul_add"
    activation: str = "Relu"  # Relu | Tanh | Sigmoid | LeakyRelu
    leaky_alpha: float = 0.2
    head: str = "Softmax"  # Softmax | LogSoftmax | Sigmoid | none (regression)
    output_scaling: bool = False  # regression: Mul by a target std, Add a target mean at the end
    batchnorm_as: str = "node"  # "node" | "mul_add": pre-folded, as tf2onnx writes Keras's
    gemm_alpha: float = 1.0
    gemm_beta: float = 1.0
    batch_dim: str | int = "batch"
    opset: int = 17
    seed: int = 0


def build_foreign(spec: ForeignMlp) -> onnx.ModelProto:
    """The foreign model: input "input" [batch, F] float32, one output "output"."""
    rng = np.random.default_rng(spec.seed)
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def node(op: str, inputs: list[str], name: str, **attributes: object) -> str:
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attributes))
        return name

    a = "input"
    if spec.normalization == "sub_div":
        mean, std = rng.normal(3, 2, spec.features), rng.uniform(0.5, 4, spec.features)
        a = node("Sub", [a, constant("norm.mean", mean)], "norm.sub")
        a = node("Div", [a, constant("norm.std", std)], "norm.div")
    elif spec.normalization == "mul_add":
        scale, shift = rng.uniform(0.2, 2, spec.features), rng.normal(0, 1, spec.features)
        a = node("Mul", [a, constant("norm.scale", scale)], "norm.mul")
        a = node("Add", [constant("norm.shift", shift), a], "norm.add")
    widths = [spec.features, *spec.hidden, spec.outputs]
    batchnorm = spec.batchnorm if spec.batchnorm is not None else (True,) * len(spec.hidden)
    last = len(widths) - 2
    for index, (fan_in, width) in enumerate(itertools.pairwise(widths)):
        prefix = f"l{index}"
        weight = rng.normal(0, 1 / np.sqrt(fan_in), (fan_in, width))
        bias = rng.normal(0, 0.3, width)
        if spec.layer == "matmul_add":
            a = node("MatMul", [a, constant(f"{prefix}.w", weight)], f"{prefix}.matmul")
            a = node("Add", [a, constant(f"{prefix}.b", bias)], f"{prefix}.add")
        else:
            transposed = spec.layer == "gemm_transb"
            stored = weight.T if transposed else weight
            a = node(
                "Gemm",
                [a, constant(f"{prefix}.w", stored), constant(f"{prefix}.b", bias)],
                f"{prefix}.gemm",
                transB=int(transposed),
                alpha=spec.gemm_alpha,
                beta=spec.gemm_beta,
            )
        if index == last:
            break
        if batchnorm[index]:
            statistics = [
                constant(f"{prefix}.gamma", rng.uniform(0.5, 1.5, width)),
                constant(f"{prefix}.beta", rng.normal(0, 0.3, width)),
                constant(f"{prefix}.mean", rng.normal(0, 0.5, width)),
                constant(f"{prefix}.var", rng.uniform(0.2, 2.0, width)),
            ]
            if spec.batchnorm_as == "mul_add":
                gamma, beta, mean, var = (numpy_helper.to_array(t) for t in initializers[-4:])
                del initializers[-4:]
                scale = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + 1e-3)
                a = node("Mul", [a, constant(f"{prefix}.bn_scale", scale)], f"{prefix}.bn_mul")
                shift = beta - mean * scale
                a = node("Add", [a, constant(f"{prefix}.bn_shift", shift)], f"{prefix}.bn_add")
            else:
                a = node(
                    "BatchNormalization",
                    [a, *statistics],
                    f"{prefix}.bn",
                    epsilon=1e-5,
                    momentum=0.9,
                )
        attributes = {"alpha": spec.leaky_alpha} if spec.activation == "LeakyRelu" else {}
        a = node(spec.activation, [a], f"{prefix}.act", **attributes)
    if spec.output_scaling:
        a = node("Mul", [a, constant("target.std", rng.uniform(0.5, 30, spec.outputs))], "t.mul")
        a = node("Add", [a, constant("target.mean", rng.normal(0, 50, spec.outputs))], "t.add")
    if spec.head in ("Softmax", "LogSoftmax"):
        a = node(spec.head, [a], "head", axis=1)
    elif spec.head == "Sigmoid":
        a = node("Sigmoid", [a], "head")
    nodes[-1].output[0] = "output"
    graph = helper.make_graph(
        nodes,
        "foreign_mlp",
        [
            helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, [spec.batch_dim, spec.features]
            )
        ],
        [
            helper.make_tensor_value_info(
                "output", TensorProto.FLOAT, [spec.batch_dim, spec.outputs]
            )
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", spec.opset)], producer_name="pytorch"
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def find_node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(node for node in model.graph.node if node.name == name)
