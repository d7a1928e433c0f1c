"""The real penguins model: trained from the raw CSV (text columns, NA cells, `--target
species`, small and quick) and exported by `bnserve export` as a mixed model (one graph input
per column, bnserve.format "2"); its raw reference rows and outputs as the file states them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest

from bnserve.server.app import Server
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.training.config import TrainConfig

PENGUINS_CSV = Path(__file__).resolve().parents[2] / "training" / "fixtures" / "penguins.csv"


@dataclass(frozen=True)
class PenguinsExport:
    """The exported file, its graph inputs (name → kind) in order, its raw reference rows
    (column → values: numbers or None, texts) and reference outputs."""

    model: Path
    kinds: dict[str, str]
    rows: dict[str, list[Any]]
    probabilities: np.ndarray
    labels: np.ndarray
    class_names: list[str]


@pytest.fixture(scope="session")
def penguins(tmp_path_factory: pytest.TempPathFactory) -> PenguinsExport:
    from bnserve.export.exporter import ExportSettings, export_run
    from bnserve.training.train import train

    folder = tmp_path_factory.mktemp("penguins-export")
    config = TrainConfig(data=str(PENGUINS_CSV), target="species", hidden=(16, 8), epochs=40)
    train(config, folder / "run", progress=False, plot=False, cache_dir="off")
    model = folder / "penguins.onnx"
    export_run(ExportSettings(run_dir=folder / "run", out=model))
    metadata = {
        p.key: p.value for p in onnx.load(str(model), load_external_data=False).metadata_props
    }
    schema = json.loads(metadata["bnserve.schema"])
    references = json.loads(metadata["bnserve.reference_inputs"])
    outputs = json.loads(metadata["bnserve.reference_outputs"])
    kinds = {entry["name"]: entry["kind"] for entry in schema["inputs"]}
    return PenguinsExport(
        model=model,
        kinds=kinds,
        rows={name: [row[0] for row in references[name]] for name in kinds},
        probabilities=np.array(outputs["probabilities"]),
        labels=np.array(outputs["label"]),
        class_names=json.loads(metadata["bnserve.class_names"]),
    )


@pytest.fixture(scope="module")
def metrics() -> ServerMetrics:
    """Each module's own registry (its server's counters start at 0)."""
    return ServerMetrics()


@pytest.fixture(scope="module")
def channel(server: Server) -> Iterator[grpc.Channel]:
    """A channel to the module's own `server` fixture."""
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as opened:
        yield opened
