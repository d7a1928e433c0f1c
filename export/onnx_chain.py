"""Read a foreign ONNX MLP into the layers `export/fold.py` folds: one chain from input to output.

Accepted, in this order (every operand besides the running tensor is a constant: an
initializer or a Constant node):

    x [N, F] float32
    → input normalization: Sub, Add, Mul, Div by constants, scalar or per feature (any order)
    → a layer: Gemm (transA=0; any transB, alpha, beta; C optional) or MatMul, then any
      Add of a constant bias, then optionally BatchNormalization in inference mode, then
      optionally Sub/Add/Mul/Div by per-unit constants (a batch norm its exporter already
      folded, as tf2onnx writes Keras's; or a regression output's de-standardization)
    → Relu | Tanh | Sigmoid | LeakyRelu → the next layer …
    → after the last layer: Softmax or LogSoftmax over the classes, a Sigmoid over ONE output
      (binary classification), or nothing (regression).

Identity nodes pass through. Everything else is refused with an ExportError naming the node and
why: nothing is ever folded approximately.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import onnx
from onnx import helper, numpy_helper

from bnserve.export.errors import ExportError
from bnserve.export.fold import LEAKY_RELU_ALPHA, BatchNormStats, LinearLayer
from bnserve.export.graph import ACTIVATION_OPS

ELEMENTWISE_OPS = ("Sub", "Add", "Mul", "Div")
ACTIVATIONS = {op: kind for kind, op in ACTIVATION_OPS.items()}  # ONNX op → activation name
HEADS = {"Softmax": "softmax", "LogSoftmax": "log_softmax"}
SUPPORTED_OPS = (
    "Gemm",
    "MatMul",
    *ELEMENTWISE_OPS,
    "BatchNormalization",
    *ACTIVATIONS,
    *HEADS,
    "Identity",
    "Constant",
)


@dataclass(frozen=True)
class BatchNormNode:
    """What one source BatchNormalization node states about its conventions."""

    node: str  # the node's name (its output's name when unnamed)
    layer: int  # 1-based index of the layer it follows
    epsilon: float  # the float32 attribute's exact value
    momentum: float | None  # ONNX convention (the OLD running value's weight); None: not stated

    @property
    def stated_epsilon(self) -> float:
        """ε as the source wrote it: the shortest decimal that is the same float32 (1e-05)."""
        return float(str(np.float32(self.epsilon)))

    @property
    def pytorch_momentum(self) -> float | None:
        """1 − momentum (bnserve's and PyTorch's convention), from the float32 as written."""
        if self.momentum is None:
            return None
        return round(1.0 - float(str(np.float32(self.momentum))), 12)


@dataclass(frozen=True)
class ParsedChain:
    """A foreign MLP as the fold takes it. Arrays float64; weights (in, out)."""

    input_name: str
    output_name: str
    batch_size: int | None  # a fixed batch the source declares (e.g. 1); None: symbolic
    input_mean: np.ndarray  # (F,): the source's input normalization as (x − mean)/std
    input_std: np.ndarray  # (F,); mean 0 and std 1 when it has none
    normalization: tuple[str, ...]  # the normalization's op types in order; () without one
    layers: tuple[LinearLayer, ...]  # the last is the output layer
    activation: (
        str  # one of bnserve.export.fold.FOLDED_ACTIVATIONS ("relu" when there is one layer)
    )
    leaky_relu_alpha: float
    # "softmax" | "log_softmax" | "sigmoid" (one output: binary) | "none" (regression), or
    # "logits": a graph that ends in logits, read as a classifier (`--task classification`)
    head: str
    batchnorms: tuple[BatchNormNode, ...]
    scalings: tuple[tuple[str, ...], ...] = ()  # per layer: the op types of its scaling

    @property
    def feature_count(self) -> int:
        return int(self.input_mean.shape[0])

    @property
    def task(self) -> str:
        return "regression" if self.head == "none" else "classification"

    @property
    def output_count(self) -> int:
        """Classes C (2 for a Sigmoid head) or targets T."""
        width = self.layers[-1].weight.shape[1]
        return 2 if self.head == "sigmoid" else width

    def summary(self) -> str:
        """e.g. 'Sub/Div → 5→8+BN → Relu → 8→3 → Softmax' (layers as in→out)."""
        parts = ["/".join(self.normalization)] if self.normalization else []
        for index, layer in enumerate(self.layers):
            if index:
                parts.append(ACTIVATION_OPS[self.activation])
            parts.append(
                f"{layer.weight.shape[0]}→{layer.weight.shape[1]}"
                + ("+BN" if layer.batchnorm is not None else "")
                + ("".join(f"+{op}" for op in self.scalings[index]) if self.scalings else "")
            )
        if self.head != "none":
            parts.append(HEAD_NAMES[self.head])
        return " → ".join(parts)


HEAD_NAMES = {
    "softmax": "Softmax",
    "log_softmax": "LogSoftmax",
    "sigmoid": "Sigmoid",
    "logits": "logits (+ Softmax)",
}


def describe(node: onnx.NodeProto) -> str:
    """How messages name a node: `Gemm '/0/Gemm'`."""
    return f"{node.op_type} {node.name or node.output[0]!r}"


def parse_chain(model: onnx.ModelProto, source: str) -> ParsedChain:
    """The chain model's graph holds, or ExportError("{source}: …") naming what cannot fold."""
    return _Walker(model, source).parse()


class _Walker:
    """Follows the running tensor from the graph input, one node at a time."""

    def __init__(self, model: onnx.ModelProto, source: str) -> None:
        self.graph = model.graph
        self.source = source
        self.constants, self.constant_nodes = _constants(self.graph)
        self.producer = {out: node for node in self.graph.node for out in node.output if out}
        self.consumers: dict[str, list[int]] = defaultdict(list)
        for index, node in enumerate(self.graph.node):
            for name in dict.fromkeys(node.input):  # a node using a tensor twice counts once
                if name:
                    self.consumers[name].append(index)
        self.visited: set[int] = set()
        data_inputs = [i for i in self.graph.input if i.name not in self.constants]
        if not data_inputs:
            self.fail("the graph has no input (every input has an initializer)")
        self.input = data_inputs[0]
        self.extra_inputs = [i.name for i in data_inputs[1:]]
        if len(self.graph.output) != 1:
            names = [output.name for output in self.graph.output]
            self.fail(
                f"the graph has {len(names)} outputs {names}; bnserve imports a model with one "
                "output (probabilities, log-probabilities or y)"
            )
        self.output_name = self.graph.output[0].name
        self.current = self.input.name

    def fail(self, problem: str) -> NoReturn:
        raise ExportError(f"{self.source}: {problem}")

    # --- following the chain

    def peek(self) -> onnx.NodeProto | None:
        """The one node consuming the running tensor (Identity nodes skipped), or None at the
        end; refuses branches and unsupported ops."""
        while True:
            users = self.consumers.get(self.current, [])
            if users and self.current == self.output_name:
                self.fail(
                    f"tensor {self.current!r} is the graph output and also feeds "
                    f"{self._names(users)}; bnserve folds a single chain"
                )
            if len(users) > 1:
                self.fail(
                    f"tensor {self.current!r} feeds {len(users)} nodes ({self._names(users)}): "
                    "a branch (a skip connection or several heads) is not one chain of layers, "
                    "and bnserve folds only a chain"
                )
            if not users:
                return None
            node: onnx.NodeProto = self.graph.node[users[0]]
            if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED_OPS:
                domain = f" (domain {node.domain!r})" if node.domain not in ("", "ai.onnx") else ""
                self.fail(
                    f"{describe(node)}{domain} is not supported: bnserve imports MLPs made of "
                    f"{', '.join(op for op in SUPPORTED_OPS if op != 'Constant')}"
                )
            if node.op_type != "Identity":
                return node
            self.take(node)

    def take(self, node: onnx.NodeProto) -> None:
        self.visited.add(self._index(node))
        self.current = node.output[0]

    def _index(self, node: onnx.NodeProto) -> int:
        return next(i for i, n in enumerate(self.graph.node) if n is node)

    def _names(self, indices: list[int]) -> str:
        return ", ".join(describe(self.graph.node[i]) for i in indices)

    # --- operands

    def constant(self, node: onnx.NodeProto, position: int, role: str) -> np.ndarray:
        """Input `position` of node as a finite float64 array, or a refusal naming it."""
        name = node.input[position] if position < len(node.input) else ""
        if name not in self.constants:
            if name in self.producer:
                origin = f"it is computed by {describe(self.producer[name])}"
            else:
                origin = "it is a graph input, set at run time"
            self.fail(f"{describe(node)}: its {role} {name!r} is not a constant ({origin})")
        value = self.constants[name]
        if not np.issubdtype(value.dtype, np.floating):
            self.fail(f"{describe(node)}: its {role} {name!r} is {value.dtype}; expected floats")
        value = value.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(value))
        if bad.size:
            where = tuple(int(i) for i in np.unravel_index(bad[0], value.shape))
            self.fail(
                f"{describe(node)}: its {role} {name!r} has {bad.size} non-finite value(s), "
                f"first {value[where]} at index {where}"
            )
        return value

    def per_unit(
        self, node: onnx.NodeProto, value: np.ndarray, width: int, role: str
    ) -> np.ndarray:
        """A scalar, (width,) or (1, width) constant as (width,)."""
        if value.size == 1 and value.ndim <= 2:
            return np.full(width, float(value.reshape(())))
        if value.shape in ((width,), (1, width)):
            return value.reshape(width)
        self.fail(
            f"{describe(node)}: its {role} has shape {list(value.shape)}; expected a scalar or "
            f"one value per unit ({width}) of the [N, {width}] tensor it applies to"
        )

    def elementwise(self, node: onnx.NodeProto) -> tuple[np.ndarray, bool]:
        """The constant operand of a Sub/Add/Mul/Div and whether the running tensor comes first."""
        if len(node.input) != 2:
            self.fail(f"{describe(node)}: expected 2 inputs, has {len(node.input)}")
        running_first = node.input[0] == self.current
        if node.input[0] == node.input[1]:
            self.fail(f"{describe(node)} applies the running tensor to itself: not affine")
        value = self.constant(node, 1 if running_first else 0, "other operand")
        if node.op_type == "Div" and not running_first:
            self.fail(f"{describe(node)} divides a constant by the running tensor: not affine")
        return value, running_first

    # --- the grammar

    def parse(self) -> ParsedChain:
        self._check_input()
        normalization: list[tuple[onnx.NodeProto, np.ndarray, bool]] = []
        node = self.peek()
        while node is not None and node.op_type in ELEMENTWISE_OPS:
            normalization.append((node, *self.elementwise(node)))
            self.take(node)
            node = self.peek()
        layers: list[LinearLayer] = []
        batchnorms: list[BatchNormNode] = []
        activation: tuple[str, float] | None = None
        head = "none"
        scalings: list[tuple[str, ...]] = []
        while True:
            where = f"after layer {len(layers)}" if layers else "before the first layer"
            if node is None:
                self.fail(f"the graph ends {where}: it has no Gemm or MatMul layer")
            if node.op_type not in ("Gemm", "MatMul"):
                self.fail(
                    f"{describe(node)} {where}: expected "
                    + (
                        "Gemm or MatMul"
                        if layers
                        else "Sub/Add/Mul/Div by a constant, Gemm or MatMul"
                    )
                )
            fan_in = layers[-1].weight.shape[1] if layers else self._declared_features()
            layer, batchnorm, scaling = self._layer(node, fan_in, len(layers) + 1)
            layers.append(layer)
            scalings.append(scaling)
            if batchnorm is not None:
                batchnorms.append(batchnorm)
            node = self.peek()
            if node is None:
                break
            if node.op_type in HEADS:
                head = self._softmax_head(node)
                break
            if node.op_type not in ACTIVATIONS:
                self.fail(
                    f"{describe(node)} after layer {len(layers)}: expected an activation "
                    f"({', '.join(ACTIVATIONS)}), Softmax, LogSoftmax or the end of the graph"
                )
            self.take(node)
            following = self.peek()
            if following is None:
                head = self._final_activation(node, layer)
                break
            activation = self._same_activation(node, activation, len(layers))
            node = following
        self._check_end()
        feature_count = layers[0].weight.shape[0]
        scale, shift = self._affine(normalization, feature_count, "feature")
        kind, alpha = activation if activation is not None else ("relu", LEAKY_RELU_ALPHA)
        dims = self.input.type.tensor_type.shape.dim
        return ParsedChain(
            input_name=self.input.name,
            output_name=self.output_name,
            batch_size=dims[0].dim_value if dims and dims[0].HasField("dim_value") else None,
            input_mean=-shift / scale,
            input_std=1.0 / scale,
            normalization=tuple(n.op_type for n, _, _ in normalization),
            layers=tuple(layers),
            activation=kind,
            leaky_relu_alpha=alpha,
            head=head,
            batchnorms=tuple(batchnorms),
            scalings=tuple(scalings),
        )

    def _check_input(self) -> None:
        tensor_type = self.input.type.tensor_type
        if not self.input.type.HasField("tensor_type"):
            self.fail(f"input {self.input.name!r} is not a tensor; expected float32 [N, F]")
        if tensor_type.elem_type != onnx.TensorProto.FLOAT:
            type_name = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
            self.fail(
                f"input {self.input.name!r} is {type_name}; bnserve imports a float32 input [N, F]"
            )
        if tensor_type.HasField("shape") and len(tensor_type.shape.dim) != 2:
            dims = [
                d.dim_value if d.HasField("dim_value") else d.dim_param or "?"
                for d in tensor_type.shape.dim
            ]
            self.fail(
                f"input {self.input.name!r} has rank {len(dims)} (shape {dims}); bnserve imports "
                "a single float32 input of rank 2, [N, F]"
            )

    def _declared_features(self) -> int | None:
        dims = self.input.type.tensor_type.shape.dim
        return dims[1].dim_value if len(dims) == 2 and dims[1].HasField("dim_value") else None

    def _layer(
        self, node: onnx.NodeProto, fan_in: int | None, number: int
    ) -> tuple[LinearLayer, BatchNormNode | None, tuple[str, ...]]:
        if node.input[0] != self.current:
            self.fail(
                f"{describe(node)}: the running tensor {self.current!r} is not its first input; "
                f"bnserve needs z = a·W with a [N, in] (layer {number})"
            )
        bias: np.ndarray | None = None
        if node.op_type == "Gemm":
            attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            if attributes.get("transA", 0):
                self.fail(
                    f"{describe(node)}: transA=1 would transpose the running [N, in] tensor itself "
                    "(its batch would become a column); an MLP layer has transA=0"
                )
            weight = self.constant(node, 1, "weight B")
            if weight.ndim != 2:
                self.fail(
                    f"{describe(node)}: its weight B has shape {list(weight.shape)}; expected 2-D"
                )
            if attributes.get("transB", 0):
                weight = weight.T
            weight = float(attributes.get("alpha", 1.0)) * weight
            if len(node.input) > 2 and node.input[2]:
                bias_value = self.constant(node, 2, "bias C")
                bias = float(attributes.get("beta", 1.0)) * self.per_unit(
                    node, bias_value, weight.shape[1], "bias C"
                )
        else:
            weight = self.constant(node, 1, "weight")
            if weight.ndim != 2:
                self.fail(
                    f"{describe(node)}: its weight has shape {list(weight.shape)}; expected 2-D"
                )
        if fan_in is not None and weight.shape[0] != fan_in:
            self.fail(
                f"{describe(node)}: its weight (in, out) is {tuple(weight.shape)}, but its input "
                f"has {fan_in} columns"
            )
        width = weight.shape[1]
        self.take(node)
        following = self.peek()
        while following is not None and following.op_type == "Add":
            value, _ = self.elementwise(following)
            added = self.per_unit(following, value, width, "bias")
            bias = added if bias is None else bias + added
            self.take(following)
            following = self.peek()
        batchnorm = None
        stats = None
        if following is not None and following.op_type == "BatchNormalization":
            stats, batchnorm = self._batchnorm(following, width, number)
            self.take(following)
            following = self.peek()
        steps: list[tuple[onnx.NodeProto, np.ndarray, bool]] = []
        while following is not None and following.op_type in ELEMENTWISE_OPS:
            steps.append((following, *self.elementwise(following)))
            self.take(following)
            following = self.peek()
        scale, shift = self._affine(steps, width, "unit") if steps else (None, None)
        layer = LinearLayer(weight=weight, bias=bias, batchnorm=stats, scale=scale, shift=shift)
        return layer, batchnorm, tuple(step[0].op_type for step in steps)

    def _batchnorm(
        self, node: onnx.NodeProto, width: int, number: int
    ) -> tuple[BatchNormStats, BatchNormNode]:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        outputs = [name for name in node.output if name]
        if (
            attributes.get("training_mode", 0)
            or attributes.get("is_test", 1) == 0
            or len(outputs) > 1
        ):
            self.fail(
                f"{describe(node)} is in training mode (it normalizes each batch with that batch's "
                "own statistics and updates the running ones); only inference mode, with frozen "
                "running statistics, folds exactly: export the model after model.eval()"
            )
        if node.input[0] != self.current:
            self.fail(f"{describe(node)}: its input X is not the output of layer {number}")
        roles = ("scale (γ)", "B (β)", "input_mean (running mean)", "input_var (running variance)")
        values = []
        for position, role in enumerate(roles, start=1):
            value = self.constant(node, position, role)
            if value.shape != (width,):
                self.fail(
                    f"{describe(node)}: its {role} has shape {list(value.shape)}; layer {number} "
                    f"has {width} units"
                )
            values.append(value)
        # ONNX float attributes are float32: fold with exactly the ε onnxruntime uses
        epsilon = float(attributes.get("epsilon", np.float32(1e-5)))
        gamma, beta, running_mean, running_var = values
        bad = np.flatnonzero(~(running_var + epsilon > 0))
        if bad.size:
            self.fail(
                f"{describe(node)}: running variance + ε (ε = {epsilon:g}) is "
                f"{running_var[bad[0]] + epsilon:g} at unit {int(bad[0])} ({bad.size} unit(s) in "
                "all); 1/√(σ²+ε) needs it > 0"
            )
        momentum = attributes.get("momentum")
        return (
            BatchNormStats(gamma, beta, running_mean, running_var, epsilon),
            BatchNormNode(
                node=node.name or node.output[0],
                layer=number,
                epsilon=epsilon,
                momentum=None if momentum is None else float(momentum),
            ),
        )

    def _softmax_head(self, node: onnx.NodeProto) -> str:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attributes.get("axis", -1) not in (1, -1):
            self.fail(
                f"{describe(node)}: axis={attributes['axis']}; over [N, C] the classes are axis 1"
            )
        self.take(node)
        following = self.peek()
        if following is not None:
            self.fail(f"{describe(node)} must end the graph, but it feeds {describe(following)}")
        return HEADS[node.op_type]

    def _final_activation(self, node: onnx.NodeProto, last: LinearLayer) -> str:
        if node.op_type != "Sigmoid":
            self.fail(
                f"{describe(node)} ends the graph: a final {node.op_type} is not in bnserve's "
                "contract (regression outputs the last layer as is; classification ends in "
                "Softmax, LogSoftmax or a Sigmoid over one output)"
            )
        width = last.weight.shape[1]
        if width != 1:
            self.fail(
                f"{describe(node)} ends the graph over {width} outputs: independent "
                "probabilities (multi-label) are not one distribution over classes; bnserve "
                "reads a final Sigmoid over ONE output as binary classification"
            )
        return "sigmoid"

    def _same_activation(
        self, node: onnx.NodeProto, seen: tuple[str, float] | None, number: int
    ) -> tuple[str, float]:
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        kind = ACTIVATIONS[node.op_type]
        alpha = (
            float(attributes.get("alpha", LEAKY_RELU_ALPHA))
            if kind == "leaky_relu"
            else LEAKY_RELU_ALPHA
        )
        if seen is not None and seen != (kind, alpha):

            def name(pair: tuple[str, float]) -> str:
                op = ACTIVATION_OPS[pair[0]]
                return f"{op}(alpha={pair[1]:g})" if pair[0] == "leaky_relu" else op

            self.fail(
                f"{describe(node)} after layer {number} is {name((kind, alpha))}, but the "
                f"layers before use {name(seen)}; bnserve's folded graph applies one activation "
                "between all its layers"
            )
        return kind, alpha

    def _check_end(self) -> None:
        if self.current != self.output_name:
            self.fail(
                f"the chain from input {self.input.name!r} ends at {self.current!r}, which is not "
                f"the graph output {self.output_name!r}"
            )
        for index, node in enumerate(self.graph.node):
            if index not in self.visited and index not in self.constant_nodes:
                self.fail(
                    f"{describe(node)} is not on the chain from {self.input.name!r} to "
                    f"{self.output_name!r}; bnserve folds a single chain"
                )
        if self.extra_inputs:
            self.fail(
                f"graph inputs {self.extra_inputs} are not used by the chain; bnserve imports "
                "a model with one input"
            )

    def _affine(
        self, steps: list[tuple[onnx.NodeProto, np.ndarray, bool]], width: int, what: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """The elementwise steps composed: v ↦ v·scale + shift, (width,) each."""
        scale, shift = np.ones(width), np.zeros(width)
        for node, value, running_first in steps:
            constant = self.per_unit(node, value, width, "constant")
            op = node.op_type
            if op == "Add":
                shift = shift + constant
            elif op == "Sub" and running_first:
                shift = shift - constant
            elif op == "Sub":  # constant − x
                scale, shift = -scale, constant - shift
            elif op == "Mul" or op == "Div":
                zero = np.flatnonzero(constant == 0)
                if zero.size:
                    verb = "multiplies" if op == "Mul" else "divides"
                    self.fail(
                        f"{describe(node)} {verb} {what} {int(zero[0])} by 0; a scaling by "
                        f"constants must keep every {what}"
                    )
                factor = constant if op == "Mul" else 1.0 / constant
                scale, shift = scale * factor, shift * factor
        return scale, shift


def _constants(graph: onnx.GraphProto) -> tuple[dict[str, np.ndarray], set[int]]:
    """Initializers and the values of Constant nodes and of Identity nodes of constants (the
    PyTorch exporter writes those for shared weights), by tensor name; and those nodes' indices.
    """
    values = {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
    constant_nodes: set[int] = set()
    for index, node in enumerate(graph.node):  # nodes are topologically sorted
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Constant" and node.attribute:
            value = helper.get_attribute_value(node.attribute[0])
            if isinstance(value, onnx.TensorProto):
                values[node.output[0]] = numpy_helper.to_array(value)
            elif isinstance(value, float | int | list):
                values[node.output[0]] = np.asarray(value)
            constant_nodes.add(index)
        elif node.op_type == "Identity" and node.input and node.input[0] in values:
            values[node.output[0]] = values[node.input[0]]
            constant_nodes.add(index)
    return values, constant_nodes
