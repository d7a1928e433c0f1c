"""An ensemble exported from real training runs is served unchanged: a real server with its
defaults (drift and layer drift on) passes its parity gate and answers Predict and v2 ModelInfer
with the mean of the members' numpy paths; each member's hidden layers are drift-monitored."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest

from bnserve.export.ensemble import EnsembleSettings, export_ensemble, mean_prediction
from bnserve.export.metadata import read_metadata
from bnserve.server.modelfile.contract import MetadataKey
from bnserve.training.config import TrainConfig
from bnserve.training.rundir import load_run
from bnserve.training.train import train
from tests.server.test_defaults import NAME, native_probabilities, scrape, v2_probabilities
from tests.support.server_process import ServerProcess

LAYOUT_CONFIGS = {
    # members that differ in depth, width, activation and batch norm: parallel branches
    "parallel": [
        TrainConfig(hidden=(16,), epochs=1, seed=0),
        TrainConfig(hidden=(12, 8), activation="tanh", epochs=1, seed=1),
        TrainConfig(hidden=(16,), batchnorm=False, epochs=1, seed=2),
    ],
    # one shape, one without batch norm: batched, each member's layers read from the stacks
    "batched": [
        TrainConfig(hidden=(12, 8), epochs=1, seed=0),
        TrainConfig(hidden=(12, 8), batchnorm=False, epochs=1, seed=1),
        TrainConfig(hidden=(12, 8), epochs=1, seed=2),
    ],
    # the same members as one grouped Conv per later layer (auto's choice for them), each
    # member's layers read from the columns of the side-by-side tensors
    "grouped": [
        TrainConfig(hidden=(12, 8), epochs=1, seed=0),
        TrainConfig(hidden=(12, 8), batchnorm=False, epochs=1, seed=1),
        TrainConfig(hidden=(12, 8), epochs=1, seed=2),
    ],
}
WATCHED = {
    "parallel": ["m1.hidden1", "m2.hidden1", "m2.hidden2"],  # member 3 has no batch norm
    "batched": ["m1.hidden1", "m1.hidden2", "m3.hidden1", "m3.hidden2"],
    "grouped": ["m1.hidden1", "m1.hidden2", "m3.hidden1", "m3.hidden2"],
}


@pytest.mark.parametrize("layout", ["parallel", "batched", "grouped"])
def test_a_server_with_its_defaults_serves_the_ensemble(tmp_path: Path, layout: str) -> None:
    configs = LAYOUT_CONFIGS[layout]
    runs = [
        Path(train(config, tmp_path / f"run{i}", progress=False).run_dir)
        for i, config in enumerate(configs)
    ]
    out = tmp_path / "ensemble.onnx"
    settings = EnsembleSettings(run_dirs=tuple(runs), out=out, layout=layout)
    assert export_ensemble(settings).layout == layout
    drift = json.loads(read_metadata(onnx.load(str(out)))[MetadataKey.DRIFT.full])
    watched = [layer["name"] for layer in drift["layers"]]
    assert watched == WATCHED[layout]
    members = [load_run(run) for run in runs]
    rows = members[0].heldout_x[:5].astype(np.float32)
    expected = mean_prediction(members, rows.astype(np.float64))

    server = ServerProcess(["--model", str(out), "--name", NAME, "--drift-sample", "1"])
    try:
        server.wait_ready()  # after the parity gate, which scores the rows alone and together
        with grpc.insecure_channel(server.target) as channel:
            native = native_probabilities(channel, rows, [])
            v2 = v2_probabilities(channel, rows, [])
        np.testing.assert_array_equal(native, v2)
        assert np.max(np.abs(native - expected)) <= 1e-5
        layer_scores = {
            dict(labels)["layer"]
            for (name, labels), _ in scrape(server.metrics_port).items()
            if name == "bnserve_drift_layer_score"
        }
        assert layer_scores == set(watched)
    finally:
        assert server.stop() == 0
