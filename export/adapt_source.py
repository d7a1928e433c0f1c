"""Read a folded bnserve model file for `bnserve adapt`: its graph's affine layers and its card.

Everything adapt needs is in the file: the folded weights (initializers `hidden{i}.weight`,
`hidden{i}.bias`, `output.weight`, `output.bias` as export/graph.py names them) and, in the card,
γ, β, μ, σ² per hidden layer and the input standardization (`bnserve.drift`) and ε
(`bnserve.epsilon`). A model the card cannot un-fold is refused with AdaptError naming why.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from bnserve.export.adapt_network import FoldedSource
from bnserve.export.errors import ExportError
from bnserve.export.fold import AffineLayer, BatchNormStats, FoldedNetwork
from bnserve.export.graph import ACTIVATION_OPS, build_folded_model
from bnserve.export.metadata import graph_sha256, read_metadata
from bnserve.server.modelfile.contract import FORMAT_SCHEMA, INPUT_NAME, MetadataKey
from bnserve.server.modelfile.metadata import ModelCard, parse_model_card
from bnserve.server.plane.errors import ModelLoadError


class AdaptError(ExportError):
    """`bnserve adapt` cannot do what was asked: one line naming the file and the reason."""


@dataclass(frozen=True)
class SourceModel:
    """A model file adapt can work from."""

    path: Path
    model: onnx.ModelProto
    card: ModelCard
    folded: FoldedSource
    drift: dict[str, object]  # the parsed bnserve.drift object


def read_source(path: Path) -> SourceModel:
    """Load and check path; AdaptError when it is not a folded bnserve model with BN statistics."""
    try:
        model = onnx.load(str(path))
    except FileNotFoundError:
        raise AdaptError(f"{path}: no such file") from None
    except OSError as error:
        raise AdaptError(f"{path}: cannot read it ({error.strerror})") from None
    except Exception as error:  # onnx raises DecodeError and others for a bad file
        raise AdaptError(f"{path}: not an ONNX model ({type(error).__name__})") from None
    inputs = [value.name for value in model.graph.input]
    if inputs != [INPUT_NAME]:
        raise AdaptError(
            f"{path}: takes inputs {inputs}, not one table x: mixed-table models (models with "
            "text columns, one input per column) cannot be adapted yet"
        )
    try:
        card = parse_model_card(read_metadata(model), str(path))
    except ModelLoadError as error:
        raise AdaptError(str(error)) from None
    if card.format == FORMAT_SCHEMA:
        raise AdaptError(
            f"{path}: a model with bnserve.schema (format {FORMAT_SCHEMA}: gaps or left-out "
            "columns handled in the graph): mixed-table models cannot be adapted yet"
        )
    if graph_sha256(model) != card.graph_sha256:
        raise AdaptError(
            f"{path}: its graph does not match its card's bnserve.graph_sha256 (changed after "
            "export); the server would not load it either"
        )
    if card.get(MetadataKey.FOLDED) != "true":
        raise AdaptError(
            f"{path}: an unfolded model (bnserve.folded = {card.get(MetadataKey.FOLDED)!r}); "
            "adapt re-folds a folded one: export the run without --unfolded"
        )
    if card.get(MetadataKey.ENSEMBLE):
        raise AdaptError(
            f"{path}: an ensemble of several networks (bnserve.ensemble); adapt re-folds one "
            "network: adapt a member's own export instead"
        )
    drift = _drift(path, card)
    return SourceModel(path, model, card, _folded_source(path, model, card, drift), drift)


def _drift(path: Path, card: ModelCard) -> dict[str, object]:
    """The card's drift reference; refused when it carries no batch-norm statistics."""
    text = card.get(MetadataKey.DRIFT)
    why = ""
    if card.get(MetadataKey.IMPORT):
        why = "made by `bnserve import`, whose card has no training distribution"
    elif not text:
        why = "exported before drift monitoring (no bnserve.drift)"
    if why:
        raise AdaptError(
            f"{path}: no batch-norm statistics in its card ({why}); re-export it from its "
            "training run with `bnserve export`"
        )
    try:
        drift = json.loads(text)
    except json.JSONDecodeError as error:
        raise AdaptError(f"{path}: metadata bnserve.drift is not valid JSON ({error})") from None
    if not isinstance(drift, dict) or not drift.get("layers"):
        raise AdaptError(
            f"{path}: no batch-norm statistics in its card (bnserve.drift lists no layers: "
            "the model was trained without batch norm); there is nothing to re-estimate"
        )
    return drift


def _folded_source(
    path: Path, model: onnx.ModelProto, card: ModelCard, drift: dict[str, object]
) -> FoldedSource:
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    layer_entries = drift["layers"]
    features = drift.get("features")
    if not isinstance(layer_entries, list) or not isinstance(features, dict):
        raise AdaptError(f"{path}: metadata bnserve.drift lacks 'layers' or 'features'")
    try:
        epsilon = float(card.get(MetadataKey.EPSILON))
        hidden = [_affine(initializers, f"hidden{i}") for i in range(1, len(layer_entries) + 1)]
        output = _affine(initializers, "output")
        batchnorm = tuple(
            BatchNormStats(
                gamma=_vector(entry, "gamma"),
                beta=_vector(entry, "beta"),
                running_mean=_vector(entry, "running_mean"),
                running_var=_vector(entry, "running_var"),
                epsilon=epsilon,
            )
            for entry in layer_entries
        )
        input_mean, input_std = _vector(features, "mean"), _vector(features, "std")
    except (KeyError, TypeError, ValueError) as error:
        raise AdaptError(
            f"{path}: graph and card do not describe a bnserve MLP adapt can un-fold ({error})"
        ) from None
    if f"hidden{len(layer_entries) + 1}.weight" in initializers:
        raise AdaptError(f"{path}: the card's bnserve.drift describes fewer layers than the graph")
    for layer, norm in zip(hidden, batchnorm, strict=True):
        if norm.gamma.shape != layer.bias.shape or norm.running_var.shape != layer.bias.shape:
            raise AdaptError(f"{path}: the card's layer statistics do not fit the graph's widths")
    if input_mean.shape != (hidden[0].weight.shape[0],) or not np.all(input_std > 0):
        raise AdaptError(f"{path}: the card's input standardization does not fit the graph")
    ops = {node.op_type for node in model.graph.node}
    activations = [name for name, op in ACTIVATION_OPS.items() if op in ops]
    if len(activations) != 1:
        raise AdaptError(f"{path}: expected one activation kind in the graph, found {activations}")
    network = FoldedNetwork(layers=(*hidden, output), activation=activations[0], task=card.task)
    _check_rebuildable(path, model, network)
    return FoldedSource(network, batchnorm, input_mean, input_std)


def _check_rebuildable(path: Path, model: onnx.ModelProto, network: FoldedNetwork) -> None:
    """The graph must be exactly what build_folded_model makes of its layers (no imputation,
    lookups or other parts adapt would drop when it rebuilds the graph)."""
    rebuilt = build_folded_model(network)
    found = [node.op_type for node in model.graph.node]
    expected = [node.op_type for node in rebuilt.graph.node]
    if found != expected:
        raise AdaptError(
            f"{path}: its graph ({', '.join(found)}) is not the plain folded MLP adapt rebuilds "
            f"({', '.join(expected)}); nothing of it can be adapted yet"
        )


def _affine(initializers: dict[str, onnx.TensorProto], prefix: str) -> AffineLayer:
    weight = numpy_helper.to_array(initializers[f"{prefix}.weight"]).astype(np.float64)
    bias = numpy_helper.to_array(initializers[f"{prefix}.bias"]).astype(np.float64)
    if weight.ndim != 2 or bias.shape != (weight.shape[1],):
        raise ValueError(f"{prefix}: weight {weight.shape} and bias {bias.shape} do not match")
    return AffineLayer(weight, bias)


def _vector(entry: object, name: str) -> np.ndarray:
    if not isinstance(entry, dict):
        raise TypeError(f"{name}: expected an object")
    values = np.asarray(entry[name], dtype=np.float64)
    if values.ndim != 1 or not np.all(np.isfinite(values)):
        raise ValueError(f"{name}: not a finite vector")
    return values
