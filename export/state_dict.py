"""`bnserve import STATE_DICT.pt`: a PyTorch nn.Sequential's saved state dict, as the ONNX graph
torch.onnx.export would write for it, so the ONNX import path folds and verifies it.

Read with `torch.load(weights_only=True)`, which never unpickles code; torch is needed only here
(the `torch` extra). Layers come from the keys and shapes, in the state dict's order: a module
with a 2-D `weight` (out, in) is a Linear, one with `running_mean`/`running_var` a BatchNorm1d.
What a state dict does not record is given by flags: the activation between the layers
(modules without parameters leave no keys), the task (the head has no parameters either) and ε.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bnserve.export.errors import ExportError
from bnserve.export.fold import LEAKY_RELU_ALPHA

STATE_DICT_SUFFIXES = (".pt", ".pth")
ACTIVATION_OPS = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "leaky_relu": "LeakyRelu"}
BATCHNORM_KEYS = ("running_mean", "running_var")


@dataclass(frozen=True)
class StateDictSpec:
    """What the state dict cannot say: given on the command line."""

    activation: str | None  # relu | tanh | sigmoid | leaky_relu; needed with ≥ 2 Linear layers
    task: str | None  # classification (softmax over ≥ 2 logits, Sigmoid over 1) | regression
    epsilon: float = 1e-5  # BatchNorm1d's eps (not saved in a state dict); its default
    leaky_relu_alpha: float = LEAKY_RELU_ALPHA


def is_state_dict_path(path: Path) -> bool:
    return path.suffix.lower() in STATE_DICT_SUFFIXES


def load_state_dict(path: Path) -> dict[str, np.ndarray]:
    """The file's tensors by key, as numpy arrays; ExportError names what is wrong."""
    try:
        import torch
    except ModuleNotFoundError:
        raise ExportError(
            f"{path}: reading a PyTorch state dict needs torch, which is not installed here "
            "(pip install 'bnserve[torch]'), or export the model with torch.onnx.export and "
            "import the .onnx file"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises pickle, zip and runtime errors alike
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()  # torch bolds some words
        first_line = (text.splitlines() or [type(error).__name__])[0][:160]
        raise ExportError(
            f"{path}: not a state dict that torch.load(weights_only=True) reads ({first_line}); "
            "save model.state_dict(), not the model"
        ) from None
    if not isinstance(state, Mapping):
        raise ExportError(
            f"{path}: holds a {type(state).__name__}, not a state dict; save model.state_dict()"
        )
    arrays = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ExportError(f"{path}: {key!r} is a {type(value).__name__}, not a tensor")
        arrays[str(key)] = value.detach().cpu().numpy()
    return arrays


def graph_from_state_dict(
    arrays: Mapping[str, np.ndarray], spec: StateDictSpec, source: str
) -> onnx.ModelProto:
    """The ONNX graph of Linear [→ BatchNorm1d] → activation → … → Linear → head, named after
    the state dict's modules, as torch.onnx.export writes it (Gemm transB=1)."""
    modules = _modules(arrays, source)
    linear_count = sum(1 for _, kind, _ in modules if kind == "linear")
    if spec.task is None:
        raise ExportError(
            f"{source}: a state dict does not say what the last layer means: pass --task "
            "classification (softmax over the logits; Sigmoid over one) or --task regression"
        )
    if linear_count > 1 and spec.activation is None:
        raise ExportError(
            f"{source}: a state dict does not record activations (they have no parameters): "
            f"pass --activation {'|'.join(ACTIVATION_OPS)}"
        )
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []

    def constant(name: str, value: np.ndarray) -> str:
        initializers.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    running = "x"
    fan_in: int | None = None
    seen_linear = 0
    for position, (name, kind, params) in enumerate(modules):
        if kind == "linear":
            weight = params["weight"]
            if fan_in is not None and weight.shape[1] != fan_in:
                raise ExportError(
                    f"{source}: Linear {name!r} takes {weight.shape[1]} inputs, but the layer "
                    f"before gives {fan_in}"
                )
            if seen_linear:  # the activation between this Linear and the one before
                assert spec.activation is not None
                attributes = (
                    {"alpha": spec.leaky_relu_alpha} if spec.activation == "leaky_relu" else {}
                )
                op = ACTIVATION_OPS[spec.activation]
                running = _node(nodes, op, [running], f"{name}.input_{op}", **attributes)
            inputs = [running, constant(f"{name}.weight", weight)]
            if "bias" in params:
                inputs.append(constant(f"{name}.bias", params["bias"]))
            running = _node(nodes, "Gemm", inputs, f"{name}.Gemm", transB=1)
            fan_in = weight.shape[0]
            seen_linear += 1
        else:
            if position == 0 or modules[position - 1][1] != "linear":
                raise ExportError(
                    f"{source}: BatchNorm1d {name!r} does not follow a Linear layer; bnserve "
                    "folds a batch norm into the Linear before it"
                )
            width = params["running_mean"].shape[0]
            if width != fan_in:
                raise ExportError(
                    f"{source}: BatchNorm1d {name!r} has {width} features, but the Linear before "
                    f"gives {fan_in}"
                )
            statistics = [
                constant(f"{name}.weight", params.get("weight", np.ones(width))),
                constant(f"{name}.bias", params.get("bias", np.zeros(width))),
                constant(f"{name}.running_mean", params["running_mean"]),
                constant(f"{name}.running_var", params["running_var"]),
            ]
            running = _node(
                nodes,
                "BatchNormalization",
                [running, *statistics],
                f"{name}.BatchNormalization",
                epsilon=float(spec.epsilon),
            )
    assert fan_in is not None
    if spec.task == "classification":
        head = "Sigmoid" if fan_in == 1 else "Softmax"
        running = _node(
            nodes, head, [running], f"head.{head}", **({"axis": 1} if fan_in > 1 else {})
        )
    nodes[-1].output[0] = "output"
    first_weight = next(params["weight"] for _, kind, params in modules if kind == "linear")
    graph = helper.make_graph(
        nodes,
        "state_dict",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", first_weight.shape[1]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", fan_in])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="pytorch"
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _node(
    nodes: list[onnx.NodeProto], op: str, inputs: list[str], name: str, **attributes: Any
) -> str:
    nodes.append(helper.make_node(op, inputs, [name], name=name, **attributes))
    return name


def _modules(
    arrays: Mapping[str, np.ndarray], source: str
) -> list[tuple[str, str, dict[str, np.ndarray]]]:
    """(module name, "linear" | "batchnorm", its float64 params) in the state dict's order."""
    grouped: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        module, _, param = key.rpartition(".")
        grouped.setdefault(module, {})[param] = value
    if not grouped:
        raise ExportError(f"{source}: the state dict is empty")
    modules = []
    for module, params in grouped.items():
        params.pop("num_batches_tracked", None)  # a counter, not a parameter
        for param, value in params.items():
            if not np.issubdtype(value.dtype, np.floating):
                raise ExportError(f"{source}: {module}.{param} is {value.dtype}; expected floats")
            bad = np.flatnonzero(~np.isfinite(value))
            if bad.size:
                raise ExportError(
                    f"{source}: {module}.{param} has {bad.size} non-finite value(s), first at "
                    f"flat index {int(bad[0])}"
                )
        params = {param: value.astype(np.float64) for param, value in params.items()}
        keys = sorted(params)
        if set(BATCHNORM_KEYS) <= set(params) and set(params) <= {
            *BATCHNORM_KEYS,
            "weight",
            "bias",
        }:
            shapes = {value.shape for value in params.values()}
            if len(shapes) != 1 or len(next(iter(shapes))) != 1:
                raise ExportError(
                    f"{source}: BatchNorm1d {module!r} has shapes "
                    f"{ {k: list(v.shape) for k, v in params.items()} }; expected one (C,)"
                )
            modules.append((module, "batchnorm", params))
        elif (
            "weight" in params and params["weight"].ndim == 2 and set(params) <= {"weight", "bias"}
        ):
            out_features = params["weight"].shape[0]
            if "bias" in params and params["bias"].shape != (out_features,):
                raise ExportError(
                    f"{source}: Linear {module!r} has bias {list(params['bias'].shape)} for "
                    f"{out_features} outputs"
                )
            modules.append((module, "linear", params))
        elif "weight" in params and params["weight"].ndim == 1 and "running_mean" not in params:
            raise ExportError(
                f"{source}: module {module!r} ({keys}) has no running statistics: a BatchNorm1d "
                "with track_running_stats=False normalizes every batch by itself, which does "
                "not fold"
            )
        else:
            listed = {k: list(v.shape) for k, v in params.items()}
            raise ExportError(
                f"{source}: module {module!r} with {listed} is neither a Linear nor a "
                "BatchNorm1d; bnserve imports an nn.Sequential of Linear, BatchNorm1d and "
                "parameter-free activations"
            )
    return modules
