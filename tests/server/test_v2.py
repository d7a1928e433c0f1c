"""The Open Inference Protocol: tritonclient.grpc unchanged (in a subprocess), typed contents."""

from __future__ import annotations

import json
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
from tests.support.model_builder import CLASS_NAMES, NUM_FEATURES, ModelFiles, numpy_forward

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


EXTENSIONS_PROBE = Path(__file__).with_name("triton_extensions_probe.py")


def test_tritonclient_extensions(test_models: ModelFiles) -> None:
    """Config, statistics, repository index, stream infer (sync and aio), class_count, an
    unknown model's readiness and unserved methods, through tritonclient.grpc itself."""
    server = start_server(
        ServerSettings(workers=8, max_inflight=6), {"iris": test_models.classification}
    )
    try:
        completed = subprocess.run(
            [
                sys.executable,
                str(EXTENSIONS_PROBE),
                f"127.0.0.1:{server.port}",
                "iris",
                json.dumps(ROWS[:3].tolist()),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.stop(0)
    assert completed.returncode == 0, completed.stderr
    answer = json.loads(completed.stdout)
    expected = numpy_forward(test_models.classification_weights, ROWS[:3], "classification")
    probabilities = expected["probabilities"]

    config = answer["config"]["config"]
    assert (config["name"], config["platform"], config["backend"]) == (
        "iris",
        "onnxruntime_onnx",
        "onnxruntime",
    )
    assert config.get("max_batch_size", 0) == 0 and "dynamic_batching" not in config
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": ["-1", "6"]}]
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("probabilities", "TYPE_FP32", ["-1", str(len(CLASS_NAMES))]),
        ("label", "TYPE_INT64", ["-1"]),
    ]
    assert answer["aio"]["config"] == answer["config"]

    # The stream: three single rows, an unknown model (error, the stream goes on), two rows.
    stream = answer["stream"]
    assert [entry.get("id") for entry in stream] == ["0", "1", "2", None, "after-bad"]
    assert "no model named 'no-such-model'" in stream[3]["error"]
    for row in range(3):
        np.testing.assert_allclose(
            stream[row]["probabilities"], probabilities[row : row + 1], atol=1e-5
        )
    np.testing.assert_allclose(stream[4]["probabilities"], probabilities[:2], atol=1e-5)
    aio = answer["aio"]["stream"]
    assert [entry["id"] for entry in aio] == ["0", "1", "2"]
    for row in range(3):
        np.testing.assert_allclose(
            aio[row]["probabilities"], probabilities[row : row + 1], atol=1e-5
        )

    # Statistics, read after the sync stream (3 + 2 rows) and the top-2 call (3 rows).
    (stats,) = answer["statistics"]["model_stats"]
    assert answer["all_statistics"]["model_stats"] == [stats]
    assert (stats["name"], stats["version"]) == ("iris", "1")
    assert int(stats["inference_count"]) == 3 + 2 + 3
    assert int(stats["execution_count"]) == 5
    inference_stats = stats["inference_stats"]
    for part in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert int(inference_stats[part]["count"]) == 5, part
    assert int(inference_stats["success"]["ns"]) >= int(inference_stats["compute_infer"]["ns"]) > 0
    assert {b["batch_size"]: int(b["compute_infer"]["count"]) for b in stats["batch_stats"]} == {
        "1": 3,
        "2": 1,
        "3": 1,
    }
    assert int(stats["last_inference"]) > 0

    assert answer["index"]["models"] == [{"name": "iris", "version": "1", "state": "READY"}]
    assert answer["unknown_ready"] is False and answer["aio"]["unknown_ready"] is False
    assert set(answer["server_metadata"]["extensions"]) == {
        "classification",
        "model_configuration",
        "statistics",
        "binary_tensor_data",
    }

    # class_count=2: Triton's "score:index:label" strings, best first, shape [N, 2].
    assert answer["top2_shape"] == [3, 2]
    for row, classes in enumerate(answer["top2"]):
        best = np.argsort(-probabilities[row])[:2]
        assert [int(c.split(":")[1]) for c in classes] == best.tolist()
        assert [c.split(":")[2] for c in classes] == [CLASS_NAMES[i] for i in best]
        np.testing.assert_allclose(
            [float(c.split(":")[0]) for c in classes], probabilities[row, best], atol=1e-6
        )
    refused = answer["class_count_on_label"]
    assert (
        refused["status"] == "StatusCode.INVALID_ARGUMENT"
        and "'probabilities'" in refused["message"]
    )
    assert answer["load"]["status"] == "StatusCode.UNIMPLEMENTED"
    assert "closed" in answer["load"]["message"]
    shared_memory = answer["shared_memory"]
    assert shared_memory["status"] == "StatusCode.UNIMPLEMENTED"
    assert "inference.GRPCInferenceService" in shared_memory["message"]


def test_model_config_states_dynamic_batching_when_on(test_models: ModelFiles) -> None:
    server = start_server(
        ServerSettings(batching=True, max_batch_size=16, max_batch_delay_ms=2.5),
        {"iris": test_models.classification},
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            config = stub.ModelConfig(pb.ModelConfigRequest(name="iris")).config
            stub.ModelInfer(_typed_request(ROWS[:1]))
            stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="iris")).model_stats[0]
            with pytest.raises(grpc.RpcError) as raised:
                stub.ModelStatistics(pb.ModelStatisticsRequest(name="tulip"))
    finally:
        server.stop(0)
    assert config.max_batch_size == 16
    assert config.dynamic_batching.max_queue_delay_microseconds == 2500
    assert [list(i.dims) for i in config.input] == [[NUM_FEATURES]]
    assert [list(o.dims) for o in config.output] == [[len(CLASS_NAMES)], [1]]
    # A batched request: its wait is queue time, its run is counted by the batcher's predict.
    assert stats.inference_count == 1 and stats.execution_count == 1
    assert stats.inference_stats.queue.ns > 0 and stats.inference_stats.compute_infer.ns == 0
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
