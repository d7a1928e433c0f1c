"""The ONNX graph of an ensemble: the mean of k folded MLPs that read the same input, one graph.

Input `x` float32 [N, F] and the outputs of docs/contracts.md, as for one model. Each member is a
`FoldedNetwork` (batch norm and standardization already in its W', b'); the members' first layers
are ONE Gemm (their W' concatenated along the output axis, widths n_1 … n_k), then either

- **parallel** branches: a Split gives each member its slice, and each member's later layers run
  as its own chain of Gemm → activation (members may differ in depth, width and activation); or
- **blockdiag**: each later layer is ONE Gemm whose weight is the block-diagonal of the members'
  (members must share depth and activation; widths may differ), the activation applied once to
  the wide tensor; or
- **batched**: the first Gemm's [N, k·H₁] is reshaped to [N, k, H₁] and transposed to the stack
  [k, N, H₁]; each later layer is ONE batched MatMul with the members' weights stacked
  [k, H_in, H_out], one Add of their biases [k, 1, H_out] and the activation, so the node count
  does not grow with k (members must share depth, every width and the activation).

- **grouped**: the first Gemm's [N, k·H₁] gets a trailing axis, [N, k·H₁, 1], so that its
  columns are channels; each later layer is ONE Conv with group = k and kernel 1 (member m's
  channels through its own weight, no zero blocks), bias and activation inside it, so the node
  count does not grow with k and no Transpose is needed (members must share depth, every width
  and the activation).

Then one averaging step: classification, each member's softmax, their mean `probabilities` and
`label` = ArgMax of that mean; regression, the mean of the members' y. No BatchNormalization node.
`docs/export.md` ("Ensembles") has the measurement that chose the default, AUTO: grouped when
the members allow it, else parallel (`resolve_layout`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from bnserve.export.fold import AffineLayer, FoldedNetwork
from bnserve.export.graph import (
    ACTIVATION_OPS,
    BATCH_DIM,
    Front,
    GraphBuilder,
    activation_attributes,
    add_input_scaling,
    finish_model,
)
from bnserve.server.modelfile.contract import INPUT_NAME, OUTPUT_NAMES

LAYOUTS = ("grouped", "batched", "parallel", "blockdiag")
# AUTO: grouped when the members allow it, else parallel. Measured (docs/benchmarks.md,
# "Ensembles"): for one example grouped cost the least at k = 3 and k = 5 in every run.
AUTO = "auto"
# the layouts whose members must share depth, every width and the activation
_SAME_SHAPE = ("batched", "grouped")
DEFAULT_LAYOUT = AUTO
# Hidden pre-activation tensors (γ·ẑ + β per member) the drift monitor reads, by layout: member
# k's (from 1) layer i in parallel branches, [N, H]; the members' layer i side by side in
# blockdiag and grouped, [N, Σ H] (grouped's later layers [N, Σ H, 1]), member k's columns after
# the earlier members'; the members' layer i stacked in batched, [k, N, H] (member k at k − 1).
MEMBER_PREACTIVATION = "m{k}.hidden{i}.z"
WIDE_PREACTIVATION = "hidden{i}.z"
STACKED_PREACTIVATION = "hidden{i}.z"


def layout_problem(members: Sequence[FoldedNetwork], layout: str) -> str | None:
    """Why `layout` cannot hold these members (None: it can)."""
    if layout not in LAYOUTS:
        return f"layout {layout!r} is not one of {LAYOUTS}"
    if layout == "parallel":
        return None
    depths = {len(member.layers) for member in members}
    activations = {member.activation for member in members}
    alphas = {member.leaky_relu_alpha for member in members}
    if len(depths) > 1 or len(activations) > 1 or len(alphas) > 1:
        return f"{layout} needs members of one depth and one activation"
    widths = {tuple(layer.bias.size for layer in member.layers) for member in members}
    if layout in _SAME_SHAPE and len(widths) > 1:
        return f"{layout} needs members of one depth, the same widths and one activation"
    return None


def resolve_layout(members: Sequence[FoldedNetwork], layout: str) -> str:
    """The layout to build: `layout` itself, or for AUTO grouped when the members allow it (one
    depth, the same widths, one activation: a tune's fold models), else parallel."""
    if layout != AUTO:
        return layout
    if layout_problem(members, "grouped") is None:
        return "grouped"
    return "parallel"


def build_ensemble_model(
    members: Sequence[FoldedNetwork],
    *,
    layout: str = DEFAULT_LAYOUT,
    expose_preactivations: bool = False,
    front: Front | None = None,
    front_layer: AffineLayer | None = None,
) -> onnx.ModelProto:
    """The mean of `members` (k ≥ 1, one task, F inputs, C or T outputs each) as one graph.

    front, front_layer: for members trained on raw columns, the front that computes every
    member's first layer from the raw inputs, and their merged first layer (D, Σ H₁) over its
    design inputs (export/ensemble_front.py); it takes the place of the one first Gemm.

    expose_preactivations: also output every hidden pre-activation tensor (drift monitoring;
    `preactivation_tensors` names them)."""
    layout = resolve_layout(members, layout)
    problem = layout_problem(members, layout)
    if problem is not None:
        raise ValueError(problem)
    task = members[0].task
    builder = _FrontedBuilder(front, front_layer)
    output_count = members[0].layers[-1].bias.size
    if layout == "batched":
        _batched(builder, members)
    else:
        heads = (
            _parallel(builder, members)
            if layout == "parallel"
            else _side_by_side(builder, members, layout)
        )
        _average(builder, task, heads, len(members), output_count)
    extra: tuple[onnx.ValueInfoProto, ...] = ()
    if expose_preactivations:
        stack = [len(members)] if layout == "batched" else []
        extra = tuple(
            helper.make_tensor_value_info(
                name,
                TensorProto.FLOAT,
                [*stack, BATCH_DIM, width, *([1] if layout == "grouped" and i > 0 else [])],
            )
            for i, (name, width) in enumerate(preactivation_tensors(members, layout))
        )
    feature_count = members[0].layers[0].weight.shape[0]
    return finish_model(
        builder, task, feature_count, output_count, "bnserve_ensemble", extra, front
    )


class _FrontedBuilder(GraphBuilder):
    """A GraphBuilder that knows how the members' first layers are computed: one Gemm on `x`,
    or a front over raw columns (`front`, with the members' merged first layer)."""

    def __init__(self, front: Front | None, front_layer: AffineLayer | None) -> None:
        super().__init__()
        if (front is None) != (front_layer is None):
            raise ValueError("a front needs the members' merged first layer, and only a front")
        self.front = front
        self.front_layer = front_layer


def preactivation_tensors(members: Sequence[FoldedNetwork], layout: str) -> list[tuple[str, int]]:
    """(tensor name, width) of every hidden pre-activation in the graph of `layout`, layer by
    layer: [N, width] each, except batched's [k, N, width] stacks (width: one member's) and
    grouped's later layers, [N, width, 1] (width: the members' together, as in blockdiag)."""
    if layout == "batched":
        return [
            (STACKED_PREACTIVATION.format(i=i), layer.bias.size)
            for i, layer in enumerate(members[0].layers[:-1], start=1)
        ]
    if layout == "parallel":
        return [
            (MEMBER_PREACTIVATION.format(k=k, i=i), layer.bias.size)
            for k, member in enumerate(members, start=1)
            for i, layer in enumerate(member.layers[:-1], start=1)
        ]
    depth = len(members[0].layers) - 1
    return [
        (WIDE_PREACTIVATION.format(i=i), sum(member.layers[i - 1].bias.size for member in members))
        for i in range(1, depth + 1)
    ]


def _first_layer(builder: _FrontedBuilder, members: Sequence[FoldedNetwork], name: str) -> str:
    """Every member's first layer side by side [N, Σ H₁]: one Gemm on x, W' concatenated along
    the output axis (after the members' one robust scaling and clip, when they have one); or
    the front over raw columns with the merged first layer."""
    if builder.front is not None and builder.front_layer is not None:
        return builder.front.first_layer(builder, builder.front_layer, name)
    weight = np.concatenate([member.layers[0].weight for member in members], axis=1)
    bias = np.concatenate([member.layers[0].bias for member in members])
    x = INPUT_NAME
    scaling = members[0].input_clip  # robust scaling: the members share it (export/ensemble.py)
    if scaling is not None:
        x = add_input_scaling(builder, x, scaling)
    return builder.node(
        "Gemm",
        [
            x,
            builder.constant("first.weight", weight),
            builder.constant("first.bias", bias),
        ],
        name,
        "first.gemm",
    )


def _head_name(task: str, k: int) -> str:
    return f"m{k}.logits" if task == "classification" else f"m{k}.y"


def _parallel(builder: _FrontedBuilder, members: Sequence[FoldedNetwork]) -> list[str]:
    """Members' outputs (logits or y), each from its own branch after the shared first Gemm."""
    task = members[0].task
    first = _first_layer(builder, members, "first.z")
    widths = [member.layers[0].bias.size for member in members]
    pieces = [
        MEMBER_PREACTIVATION.format(k=k, i=1) if len(member.layers) > 1 else _head_name(task, k)
        for k, member in enumerate(members, start=1)
    ]
    split = builder.constant_int64("first.split", np.asarray(widths))
    builder.nodes.append(
        helper.make_node("Split", [first, split], pieces, name="first.split", axis=1)
    )
    heads = []
    for k, (member, z) in enumerate(zip(members, pieces, strict=True), start=1):
        last = len(member.layers) - 1
        for index in range(1, last + 1):
            a = builder.node(
                ACTIVATION_OPS[member.activation],
                [z],
                f"m{k}.hidden{index}.a",
                f"m{k}.hidden{index}.{member.activation}",
                **activation_attributes(member),
            )
            layer = member.layers[index]
            prefix = f"m{k}.output" if index == last else f"m{k}.hidden{index + 1}"
            out = _head_name(task, k) if index == last else f"{prefix}.z"
            z = builder.node(
                "Gemm",
                [
                    a,
                    builder.constant(f"{prefix}.weight", layer.weight),
                    builder.constant(f"{prefix}.bias", layer.bias),
                ],
                out,
                f"{prefix}.gemm",
            )
        heads.append(z)
    return heads


def _block_diagonal(blocks: Sequence[np.ndarray]) -> np.ndarray:
    rows, columns = sum(b.shape[0] for b in blocks), sum(b.shape[1] for b in blocks)
    out = np.zeros((rows, columns))
    r = c = 0
    for block in blocks:
        out[r : r + block.shape[0], c : c + block.shape[1]] = block
        r, c = r + block.shape[0], c + block.shape[1]
    return out


def _side_by_side(
    builder: _FrontedBuilder, members: Sequence[FoldedNetwork], layout: str
) -> list[str]:
    """The members' outputs side by side in one tensor: blockdiag, (N, k·C or k·T) after
    block-diagonal Gemms; grouped, (N, k·C or k·T, 1) after grouped 1×1 Convs (member m's H
    channels through its own weight (Σ H_out, H_in, 1), no zero blocks)."""
    reference, k = members[0], len(members)
    depth = len(reference.layers)
    z = _first_layer(builder, members, WIDE_PREACTIVATION.format(i=1) if depth > 1 else "heads")
    for index in range(1, depth):
        a = builder.node(
            ACTIVATION_OPS[reference.activation],
            [z],
            f"hidden{index}.a",
            f"hidden{index}.{reference.activation}",
            **activation_attributes(reference),
        )
        weights = [member.layers[index].weight for member in members]
        bias = np.concatenate([member.layers[index].bias for member in members])
        prefix = "output" if index == depth - 1 else f"hidden{index + 1}"
        out = "heads" if index == depth - 1 else WIDE_PREACTIVATION.format(i=index + 1)
        if layout == "blockdiag":
            weight = builder.constant(f"{prefix}.weight", _block_diagonal(weights))
            bias_name = builder.constant(f"{prefix}.bias", bias)
            z = builder.node("Gemm", [a, weight, bias_name], out, f"{prefix}.gemm")
            continue
        if index == 1:  # [N, k·H₁] → [N, k·H₁, 1]: the columns become Conv channels
            axes = builder.constant_int64("hidden1.channel_axes", np.asarray([2]))
            a = builder.node("Unsqueeze", [a, axes], "hidden1.channels", "hidden1.unsqueeze")
        stacked = np.concatenate([weight.T for weight in weights])[:, :, None]
        weight = builder.constant(f"{prefix}.weight", stacked)
        bias_name = builder.constant(f"{prefix}.bias", bias)
        z = builder.node(
            "Conv", [a, weight, bias_name], out, f"{prefix}.conv", group=k, kernel_shape=[1]
        )
    return [z]


def _batched(builder: _FrontedBuilder, members: Sequence[FoldedNetwork]) -> None:
    """The stack [k, N, ·] through every later layer as one batched MatMul + Add + activation,
    then softmax over the classes and the mean over the members (or the mean of y), into the
    graph outputs."""
    reference, k = members[0], len(members)
    depth, task = len(reference.layers), reference.task
    first_width = reference.layers[0].bias.size
    z = _first_layer(builder, members, "first.z")  # [N, k·H₁], member m's columns at m·H₁
    shape = builder.constant_int64("first.shape", np.asarray([-1, k, first_width]))
    z = builder.node("Reshape", [z, shape], "first.stacked", "first.reshape")
    last_name = "heads" if depth == 1 else STACKED_PREACTIVATION.format(i=1)
    z = builder.node("Transpose", [z], last_name, "first.transpose", perm=[1, 0, 2])
    for index in range(1, depth):
        a = builder.node(
            ACTIVATION_OPS[reference.activation],
            [z],
            f"hidden{index}.a",
            f"hidden{index}.{reference.activation}",
            **activation_attributes(reference),
        )
        weight = np.stack([member.layers[index].weight for member in members])
        bias = np.stack([member.layers[index].bias for member in members])[:, None, :]
        prefix = "output" if index == depth - 1 else f"hidden{index + 1}"
        product = builder.node(
            "MatMul",
            [a, builder.constant(f"{prefix}.weight", weight)],
            f"{prefix}.product",
            f"{prefix}.matmul",
        )
        out = "heads" if index == depth - 1 else STACKED_PREACTIVATION.format(i=index + 1)
        z = builder.node(
            "Add", [product, builder.constant(f"{prefix}.bias", bias)], out, f"{prefix}.add"
        )
    main = OUTPUT_NAMES[task][0]
    if task == "classification":
        z = builder.node("Softmax", [z], "heads.probabilities", "heads.softmax", axis=2)
    builder.node("ReduceMean", [z], main, "ensemble.mean", axes=[0], keepdims=0)
    if task == "classification":
        builder.node("ArgMax", [main], OUTPUT_NAMES[task][1], "output.argmax", axis=1, keepdims=0)


def _average(builder: GraphBuilder, task: str, heads: list[str], k: int, output_count: int) -> None:
    """Mean of the members' probabilities (then ArgMax) or of their y, into the graph outputs."""
    main = OUTPUT_NAMES[task][0]
    if (
        len(heads) == 1
    ):  # blockdiag (N, k·C), grouped (N, k·C, 1) → (N, k, C): softmax over C, mean over k
        shape = builder.constant_int64("heads.shape", np.asarray([-1, k, output_count]))
        stacked = builder.node("Reshape", [heads[0], shape], "heads.stacked", "heads.reshape")
        if task == "classification":
            stacked = builder.node(
                "Softmax", [stacked], "heads.probabilities", "heads.softmax", axis=2
            )
        builder.node("ReduceMean", [stacked], main, "ensemble.mean", axes=[1], keepdims=0)
    else:
        if task == "classification":
            heads = [
                builder.node("Softmax", [head], f"m{k}.probabilities", f"m{k}.softmax", axis=1)
                for k, head in enumerate(heads, start=1)
            ]
        builder.node("Mean", heads, main, "ensemble.mean")
    if task == "classification":
        builder.node("ArgMax", [main], OUTPUT_NAMES[task][1], "output.argmax", axis=1, keepdims=0)
