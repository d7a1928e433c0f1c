"""KServe's own Python SDK (InferenceRESTClient, InferenceGRPCClient) against a real server.

kserve 0.21 brings ~500 MB (fastapi, uvicorn, pandas, kubernetes, pillow, …; 3.5 min to install
here) and its generated code defines protobuf package `inference` as bnserve.server.grpc.gen
does, so it is not in the test extra: this slow test makes a venv of its own once
(BNSERVE_KSERVE_VENV names an existing one instead) and runs tests/server/kserve_probe.py in it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from bnserve.server.grpc.gen.inference import grpc_service_pb2 as pb
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.settings import ServerSettings
from tests.support.in_process import start_server
from tests.support.model_builder import NUM_FEATURES, ModelFiles, numpy_forward

KSERVE = "kserve==0.21.0"
PROBE = Path(__file__).with_name("kserve_probe.py")
ROWS = np.random.default_rng(21).normal(0, 1.5, (3, NUM_FEATURES)).astype(np.float32)


def _kserve_python(cache: Path) -> str:
    given = os.environ.get("BNSERVE_KSERVE_VENV")
    venv = Path(given) if given else cache / "kserve-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", KSERVE], check=True, timeout=1800
        )
    return str(python)


@pytest.mark.slow
def test_kserve_sdk_rest_and_grpc(test_models: ModelFiles, tmp_path_factory) -> None:
    python = _kserve_python(tmp_path_factory.getbasetemp())
    server = start_server(ServerSettings(), {"iris": test_models.classification}, http=True)
    try:
        completed = subprocess.run(
            [python, str(PROBE), f"127.0.0.1:{server.http_port}", f"127.0.0.1:{server.port}",
             "iris", json.dumps(ROWS.tolist())],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        request = pb.ModelInferRequest(model_name="iris", raw_input_contents=[ROWS.tobytes()])
        request.inputs.add(name="x", datatype="FP32", shape=ROWS.shape)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            ours = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    finally:
        server.stop(0)
    assert completed.returncode == 0, completed.stderr
    answer = json.loads(completed.stdout)
    for key in ("live", "ready", "model_ready"):
        assert answer[f"rest_{key}"] is True and answer[f"grpc_{key}"] is True, key
    expected = {"probabilities": ours.raw_output_contents[0].hex(),
                "label": ours.raw_output_contents[1].hex()}  # fmt: skip
    assert answer["rest_json"] == answer["rest_binary"] == answer["grpc"] == expected
    labels = np.frombuffer(bytes.fromhex(expected["label"]), "<i8")
    reference = numpy_forward(test_models.classification_weights, ROWS, "classification")
    assert labels.tolist() == reference["label"].tolist()
