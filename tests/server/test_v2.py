"""The Open Inference Protocol: tritonclient.grpc unchanged (in a subprocess), typed contents."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from model_builder import CLASS_NAMES, NUM_FEATURES, ModelFiles, numpy_forward

from server.gen.inference import grpc_service_pb2 as pb

PROBE = Path(__file__).with_name("triton_probe.py")
ROWS = np.random.default_rng(11).normal(0, 1.5, (5, NUM_FEATURES)).astype(np.float32)


def test_tritonclient_calls_it_unchanged(server, test_models: ModelFiles) -> None:
    completed = subprocess.run(
        [sys.executable, str(PROBE), f"127.0.0.1:{server.port}", "iris", json.dumps(ROWS.tolist())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    answer = json.loads(completed.stdout)
    expected = numpy_forward(test_models.classification_weights, ROWS, "classification")
    assert (answer["live"], answer["ready"], answer["model_ready"]) == (True, True, True)
    assert answer["server_metadata"]["name"] == "bnserve"
    metadata = answer["model_metadata"]
    assert metadata["name"] == "iris" and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [
        {"name": "x", "datatype": "FP32", "shape": ["-1", str(NUM_FEATURES)]}
    ]
    assert [o["name"] for o in metadata["outputs"]] == ["probabilities", "label"]
    np.testing.assert_allclose(answer["probabilities"], expected["probabilities"], atol=1e-5)
    assert answer["label"] == expected["label"].tolist()
    assert answer["only_label_outputs"] == ["label"]
    assert answer["unknown_model_error"]["status"] == "StatusCode.NOT_FOUND"
    assert "no-such-model" in answer["unknown_model_error"]["message"]


def _typed_request(rows: np.ndarray, model: str = "iris") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, id="req-7")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=rows.shape)
    tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    return request


def test_model_infer_typed_contents_answers_typed(inference, test_models: ModelFiles) -> None:
    response = inference.ModelInfer(_typed_request(ROWS))
    expected = numpy_forward(test_models.classification_weights, ROWS, "classification")
    assert (response.model_name, response.model_version, response.id) == ("iris", "1", "req-7")
    assert len(response.raw_output_contents) == 0
    probabilities, label = response.outputs
    assert (probabilities.name, probabilities.datatype, list(probabilities.shape)) == (
        "probabilities",
        "FP32",
        [len(ROWS), len(CLASS_NAMES)],
    )
    np.testing.assert_allclose(
        np.array(probabilities.contents.fp32_contents).reshape(len(ROWS), -1),
        expected["probabilities"],
        atol=1e-5,
    )
    assert (label.datatype, list(label.contents.int64_contents)) == (
        "INT64",
        expected["label"].tolist(),
    )


def test_model_infer_raw_regression(inference, test_models: ModelFiles) -> None:
    request = pb.ModelInferRequest(model_name="sales", raw_input_contents=[ROWS.tobytes()])
    request.inputs.add(name="x", datatype="FP32", shape=ROWS.shape)
    response = inference.ModelInfer(request)
    expected = numpy_forward(test_models.regression_weights, ROWS, "regression")["y"]
    assert [o.name for o in response.outputs] == ["y"]
    values = np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(expected.shape)
    np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-5)


def test_metadata_and_readiness(inference) -> None:
    assert inference.ServerLive(pb.ServerLiveRequest()).live
    assert inference.ServerReady(pb.ServerReadyRequest()).ready
    assert inference.ModelReady(pb.ModelReadyRequest(name="sales", version="1")).ready
    metadata = inference.ModelMetadata(pb.ModelMetadataRequest(name="sales"))
    assert [(o.name, o.datatype, list(o.shape)) for o in metadata.outputs] == [
        ("y", "FP32", [-1, 2])
    ]
    assert metadata.platform == "onnxruntime_onnx"
    # As Triton answers: an unknown model is not ready (status OK), so is_model_ready is False.
    assert not inference.ModelReady(pb.ModelReadyRequest(name="nope")).ready
    assert not inference.ModelReady(pb.ModelReadyRequest(name="sales", version="9")).ready
