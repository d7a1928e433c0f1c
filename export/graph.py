"""Build the ONNX graph: folded (Gemm + activation) or unfolded (Sub/Div, Gemm, BatchNormalization).

Input `x` float32 [N, F] of raw features; outputs `probabilities` float32 [N, C] and `label`
int64 [N] (classification) or `y` float32 [N, T] (regression). Opset 17, batch dimension "N".
Every model passes `onnx.checker` before it is returned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bnserve.export.fold import AffineLayer, FoldedNetwork, InputClip
from bnserve.export.network import NetworkSpec
from bnserve.server.modelfile.contract import INPUT_NAME, OUTPUT_NAMES
from bnserve.training.model import BATCHNORM_ARRAYS, layer_names
from bnserve.training.scaling import CLIP_BOUND

OPSET = 17
# IR 8 is what opset 17 was released with; onnxruntime ≥ 1.20 loads it (onnx 1.20 would
# otherwise stamp a newer IR version than older runtimes accept).
IR_VERSION = 8
BATCH_DIM = "N"
ACTIVATION_OPS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "leaky_relu": "LeakyRelu"}
# The tensor holding hidden layer i's pre-activation γ·ẑ + β (i from 1), in each graph kind.
FOLDED_PREACTIVATION = "hidden{i}.z"
UNFOLDED_PREACTIVATION = "hidden{i}.z_bn"
# Regression with a target transform: the last Gemm gives t(y) under this name, then the inverse
TRANSFORMED_TARGET = "y.transformed"


class GraphBuilder:
    """Collects nodes and float32 initializers; names every node after the layer it belongs to."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def constant(self, name: str, value: np.ndarray) -> str:
        array = np.ascontiguousarray(value, dtype=np.float32)
        self.initializers.append(numpy_helper.from_array(array, name=name))
        return name

    def constant_int64(self, name: str, value: np.ndarray) -> str:
        """An int64 initializer (shapes, split sizes)."""
        array = np.ascontiguousarray(value, dtype=np.int64)
        self.initializers.append(numpy_helper.from_array(array, name=name))
        return name

    def node(self, op: str, inputs: list[str], output: str, name: str, **attributes: Any) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attributes))
        return output

    def tensor(self, name: str, value: np.ndarray) -> str:
        """An initializer of value's own dtype (int64 shapes and indices)."""
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name=name))
        return name


class Front(Protocol):
    """The first layer of a graph whose inputs are raw columns (export/columns.py): it adds
    the graph inputs and the nodes that compute the first layer's z from them."""

    @property
    def inputs(self) -> list[onnx.ValueInfoProto]:
        """The graph's inputs, in order."""
        ...

    @property
    def opsets(self) -> Sequence[tuple[str, int]]:
        """(domain, version) of every operator set besides the main one it uses."""
        ...

    def first_layer(self, builder: GraphBuilder, layer: AffineLayer, output: str) -> str:
        """Add nodes computing `output` = the first affine layer of the design inputs."""
        ...


def _input_info(feature_count: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, feature_count])


def _output_infos(task: str, output_count: int) -> list[onnx.ValueInfoProto]:
    if task == "classification":
        probabilities, label = OUTPUT_NAMES[task]
        return [
            helper.make_tensor_value_info(
                probabilities, TensorProto.FLOAT, [BATCH_DIM, output_count]
            ),
            helper.make_tensor_value_info(label, TensorProto.INT64, [BATCH_DIM]),
        ]
    (y,) = OUTPUT_NAMES[task]
    return [helper.make_tensor_value_info(y, TensorProto.FLOAT, [BATCH_DIM, output_count])]


def _add_target_inverse(builder: GraphBuilder, transformed: str, transform: str) -> None:
    """y from t(y): "log" adds Exp then Sub 1 (y = exp(t) − 1; training/target_transform.py)."""
    if transform != "log":
        raise ValueError(f"unknown target transform {transform!r}")
    exp = builder.node("Exp", [transformed], "y.exp", "target.exp")
    one = builder.constant("target.one", np.ones(1))
    builder.node("Sub", [exp, one], OUTPUT_NAMES["regression"][0], "target.expm1")


def add_smooth_clip(builder: GraphBuilder, u: str, clip: np.ndarray) -> str:
    """u / √(1 + (u/3)²) (training/scaling.py) where clip (F,) bool is set, u elsewhere:
    Div, Mul, Add, Sqrt, Div (and a Where when only some inputs are clipped)."""
    q = builder.node("Div", [u, builder.constant("input.clip_bound", np.array([CLIP_BOUND]))],
                     "input.q", "input.clip_q")  # fmt: skip
    squared = builder.node("Mul", [q, q], "input.q2", "input.clip_square")
    one = builder.constant("input.clip_one", np.ones(1))
    shifted = builder.node("Add", [squared, one], "input.q2_1", "input.clip_add")
    root = builder.node("Sqrt", [shifted], "input.clip_root", "input.clip_sqrt")
    if np.all(clip):
        return builder.node("Div", [u, root], "input.clipped", "input.clip_div")
    clipped = builder.node("Div", [u, root], "input.clipped_all", "input.clip_div")
    mask = builder.tensor("input.clip_mask", np.asarray(clip, dtype=bool))
    return builder.node("Where", [mask, clipped, u], "input.clipped", "input.clip_where")


def add_input_scaling(builder: GraphBuilder, x: str, scaling: InputClip) -> str:
    """Robust scaling of raw x [N, F]: Sub(centre), Div(scale), then add_smooth_clip."""
    centred = builder.node(
        "Sub", [x, builder.constant("input.centre", scaling.centre)], "input.centred", "input.sub"
    )
    u = builder.node(
        "Div", [centred, builder.constant("input.scale", scaling.scale)], "input.u", "input.div"
    )
    return add_smooth_clip(builder, u, scaling.clip)


def _regression_output_name(transform: str) -> str:
    """What the last affine step writes: y itself, or t(y) when an inverse follows."""
    return OUTPUT_NAMES["regression"][0] if transform == "none" else TRANSFORMED_TARGET


def add_classification_head(builder: GraphBuilder, logits: str) -> None:
    probabilities_name, label_name = OUTPUT_NAMES["classification"]
    probabilities = builder.node("Softmax", [logits], probabilities_name, "output.softmax", axis=1)
    # The label is the argmax of the probabilities the caller sees, so the two always agree.
    builder.node("ArgMax", [probabilities], label_name, "output.argmax", axis=1, keepdims=0)


def finish_model(
    builder: GraphBuilder,
    task: str,
    feature_count: int,
    output_count: int,
    graph_name: str,
    extra_outputs: tuple[onnx.ValueInfoProto, ...] = (),
    front: Front | None = None,
) -> onnx.ModelProto:
    graph = helper.make_graph(
        builder.nodes,
        graph_name,
        [_input_info(feature_count)] if front is None else front.inputs,
        [*_output_infos(task, output_count), *extra_outputs],
        initializer=builder.initializers,
    )
    extra_opsets = [] if front is None else list(front.opsets)
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", OPSET),
            *(helper.make_opsetid(domain, version) for domain, version in extra_opsets),
        ],
        ir_version=IR_VERSION,
        producer_name="bnserve",
        doc_string="bnserve MLP: raw float32 features in, "
        + ("probabilities and label out" if task == "classification" else "y out"),
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def activation_attributes(network: FoldedNetwork) -> dict[str, float]:
    """LeakyRelu's slope (written even when it is ONNX's default, so the graph states it)."""
    if network.activation == "leaky_relu":
        return {"alpha": float(network.leaky_relu_alpha)}
    return {}


def preactivation_outputs(widths: list[int], name: str) -> tuple[onnx.ValueInfoProto, ...]:
    """Graph outputs for hidden layers' pre-activations: float32 [N, width] each, named by the
    format string `name` (FOLDED_PREACTIVATION or UNFOLDED_PREACTIVATION)."""
    return tuple(
        helper.make_tensor_value_info(name.format(i=index), TensorProto.FLOAT, [BATCH_DIM, width])
        for index, width in enumerate(widths, start=1)
    )


def build_folded_model(
    network: FoldedNetwork, *, expose_preactivations: bool = False, front: Front | None = None
) -> onnx.ModelProto:
    """The folded network as Gemm → activation → … → Gemm (→ Softmax, ArgMax): no BN node.

    front: the first layer reads raw columns (fills, indicators, lookups: export/columns.py)
    instead of the Gemm on `x`; the network's first layer then spans the design inputs.

    expose_preactivations: also output each hidden layer's Gemm result `hidden{i}.z` (N, n_i),
    γ·ẑ + β when batch norm was folded in, for drift monitoring. The default graph has only the
    task's outputs (onnxruntime may then fuse Gemm with the activation).
    """
    builder = GraphBuilder()
    activation_op = ACTIVATION_OPS[network.activation]
    a = INPUT_NAME
    if network.input_clip is not None and front is None:  # a front scales its own inputs
        a = add_input_scaling(builder, a, network.input_clip)
    last = len(network.layers) - 1
    for index, layer in enumerate(network.layers):
        prefix = "output" if index == last else f"hidden{index + 1}"
        if index == last:
            z_name = "logits"
            if network.task == "regression":
                z_name = _regression_output_name(network.target_transform)
        else:
            z_name = f"{prefix}.z"
        if index == 0 and front is not None:
            z = front.first_layer(builder, layer, z_name)
        else:
            weight = builder.constant(f"{prefix}.weight", layer.weight)
            bias = builder.constant(f"{prefix}.bias", layer.bias)
            z = builder.node("Gemm", [a, weight, bias], z_name, f"{prefix}.gemm")
        if index != last:
            a = builder.node(
                activation_op,
                [z],
                f"{prefix}.a",
                f"{prefix}.{network.activation}",
                **activation_attributes(network),
            )
    if network.task == "classification":
        add_classification_head(builder, z)
    elif network.target_transform != "none":
        _add_target_inverse(builder, z, network.target_transform)
    feature_count, output_count = network.layers[0].weight.shape[0], network.layers[-1].bias.size
    extra: tuple[onnx.ValueInfoProto, ...] = ()
    if expose_preactivations:
        widths = [layer.bias.size for layer in network.layers[:-1]]
        extra = preactivation_outputs(widths, FOLDED_PREACTIVATION)
    return finish_model(
        builder, network.task, feature_count, output_count, "bnserve_mlp_folded", extra, front
    )


def build_unfolded_model(params: Mapping[str, np.ndarray], spec: NetworkSpec) -> onnx.ModelProto:
    """The network as trained: Sub/Div standardization, Gemm, BatchNormalization, activation.

    For audit and comparison with the folded model; params in the params.npz layout, already
    checked against spec by `bnserve.export.network.check_params`.
    """
    builder = GraphBuilder()
    activation, task = spec.activation, spec.task
    activation_op = ACTIVATION_OPS[activation]
    centred = builder.node(
        "Sub",
        [INPUT_NAME, builder.constant("input.mean", params["input.mean"])],
        "input.centred",
        "input.sub",
    )
    a = builder.node(
        "Div", [centred, builder.constant("input.std", params["input.std"])], "input.z", "input.div"
    )
    if "input.clip" in params:  # robust scaling (training/scaling.py)
        a = add_smooth_clip(builder, a, params["input.clip"] > 0.5)
    for prefix in layer_names(len(spec.hidden_sizes))[:-1]:
        weight = builder.constant(f"{prefix}.W", params[f"{prefix}.W"])
        if spec.batchnorm:
            z = builder.node("Gemm", [a, weight], f"{prefix}.z", f"{prefix}.gemm")
            # BatchNormalization's inputs are scale, B, input_mean, input_var: the layout's order
            statistics = [
                builder.constant(f"{prefix}.{name}", params[f"{prefix}.{name}"])
                for name in BATCHNORM_ARRAYS
            ]
            z = builder.node(
                "BatchNormalization",
                [z, *statistics],
                f"{prefix}.z_bn",
                f"{prefix}.batchnorm",
                epsilon=float(spec.epsilon),
            )
        else:
            bias = builder.constant(f"{prefix}.b", params[f"{prefix}.b"])
            z = builder.node("Gemm", [a, weight, bias], f"{prefix}.z", f"{prefix}.gemm")
        a = builder.node(activation_op, [z], f"{prefix}.a", f"{prefix}.{activation}")
    output_w = builder.constant("output.W", params["output.W"])
    output_b = builder.constant("output.b", params["output.b"])
    if task == "classification":
        logits = builder.node("Gemm", [a, output_w, output_b], "logits", "output.gemm")
        add_classification_head(builder, logits)
    else:
        y_std = builder.node("Gemm", [a, output_w, output_b], "y_standardized", "output.gemm")
        scaled = builder.node(
            "Mul",
            [y_std, builder.constant("target.std", params["target.std"])],
            "y_scaled",
            "target.mul",
        )
        y = builder.node(
            "Add",
            [scaled, builder.constant("target.mean", params["target.mean"])],
            _regression_output_name(spec.target_transform),
            "target.add",
        )
        if spec.target_transform != "none":
            _add_target_inverse(builder, y, spec.target_transform)
    return finish_model(
        builder, task, spec.feature_count, spec.output_count, "bnserve_mlp_unfolded"
    )
