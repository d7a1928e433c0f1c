"""Server-made request ids: a call without an id gets one on every transport (native Predict,
PredictBatch, PredictStream, v2 ModelInfer and ModelStreamInfer over gRPC, REST infer), answered
in the response; the capture store holds it and feedback posted with it joins. REST honours an
X-Request-Id header and answers the id in that header too. No two calls share an id."""

from __future__ import annotations

import json
import os
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from bnserve import capture_store as store
from bnserve.server.app import Server
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as v2
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.plane.request_ids import new_request_id, request_id
from bnserve.server.settings import ServerSettings
from tests.support.in_process import start_server
from tests.support.model_builder import CLASS_NAMES, NUM_FEATURES, ModelFiles, numpy_forward

MADE = re.compile("[0-9a-f]{32}")


@pytest.fixture
def server(tmp_path: Path, test_models: ModelFiles) -> Iterator[Server]:
    settings = ServerSettings(
        workers=8, max_inflight=6, capture_dir=str(tmp_path), capture_rotate_s=3600
    )
    server = start_server(settings, {"iris": test_models.classification}, http=True)
    yield server
    server.stop(0)


def _infer(port: int, body: dict, headers: dict[str, str] | None = None) -> tuple[dict, str]:
    """A REST infer: (the JSON answer, its X-Request-Id header)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v2/models/iris/infer",
        data=json.dumps(body).encode(),
        headers=headers or {},
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read()), answer.headers.get("X-Request-Id", "")


def _tensor(x: np.ndarray) -> dict:
    return {"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}


def _v2_request(row: np.ndarray) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name="iris")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, NUM_FEATURES])
    tensor.contents.fp32_contents.extend(row.tolist())
    return request


def test_id_less_calls_get_ids_that_capture_holds_and_feedback_joins(
    server: Server, test_models: ModelFiles
) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(12, NUM_FEATURES)).astype(np.float32)
    truth = rng.integers(0, 3, len(x))
    keys: list[tuple[str, int]] = []  # (id, row) of each row of x, in order
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        native = predictor_pb2_grpc.PredictorStub(channel)
        answer = native.Predict(pb.PredictRequest(model_name="iris", features=x[0]))
        keys.append((answer.id, 0))
        batch = native.PredictBatch(
            pb.PredictBatchRequest(model_name="iris", raw_features=x[1:4].tobytes())
        )
        keys += [(batch.id, row) for row in range(3)]
        stream = [pb.PredictRequest(model_name="iris", features=x[i]) for i in (4, 5, 6)]
        keys += [(a.id, 0) for a in native.PredictStream(iter(stream))]
        inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        keys.append((inference.ModelInfer(_v2_request(x[7])).id, 0))
        streamed = inference.ModelStreamInfer(iter([_v2_request(x[8])]))
        keys += [(a.infer_response.id, 0) for a in streamed]
        rest, header = _infer(server.http_port, {"inputs": [_tensor(x[9:12])]})
        assert header == rest["id"], "REST answers the id in the JSON and the header alike"
        keys += [(rest["id"], row) for row in range(3)]
        ids = [key for key, _ in keys]
        assert all(MADE.fullmatch(i) for i in ids), ids
        assert len(set(ids)) == 8, "every call its own id (a stream: every message)"

        # The capture store holds each call's rows under its id.
        server.capture.writer.flush()
        captured = [
            (row[0], int(row[1]))
            for path in store.finished_files(server.capture.writer.options.directory, store.CALLS)
            for row in store.read_file(path)[1]
        ]
        assert sorted(captured) == sorted(keys)

        # Feedback on those ids joins: every row labelled, over REST and the native RPC.
        answers = [
            {"id": i, "row": r, "label": CLASS_NAMES[t]}
            for (i, r), t in zip(keys, truth, strict=True)
        ]
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.http_port}/v2/models/iris/feedback",
            data=json.dumps({"answers": answers[:6]}).encode(),
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read()) == {"accepted": 6, "dropped": 0}
        native.Feedback(
            pb.FeedbackRequest(model_name="iris", answers=[pb.TrueAnswer(**a) for a in answers[6:]])
        )
        server.capture.writer.flush()
        quality = native.ModelQuality(pb.ModelQualityRequest(model_name="iris"))
    want = numpy_forward(test_models.classification_weights, x, "classification")["label"]
    assert (quality.labels, quality.unknown_labels) == (len(x), 0)
    (version,) = quality.versions
    assert version.life.labelled == len(x)
    assert version.life.accuracy == pytest.approx(float(np.mean(want == truth)))


def test_rest_takes_the_body_id_then_the_header_id(server: Server) -> None:
    x = np.zeros((1, NUM_FEATURES), np.float32)
    body = {"inputs": [_tensor(x)]}
    answer, header = _infer(server.http_port, body, {"X-Request-Id": "proxy-42"})
    assert (answer["id"], header) == ("proxy-42", "proxy-42")
    answer, header = _infer(server.http_port, {"id": "mine", **body}, {"X-Request-Id": "proxy"})
    assert (answer["id"], header) == ("mine", "mine")
    # An id a header cannot carry (a line break) is answered in the JSON only.
    answer, header = _infer(server.http_port, {"id": "two\nlines", **body})
    assert (answer["id"], header) == ("two\nlines", "")
    # A caller's id over gRPC is answered as it is.
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        native = predictor_pb2_grpc.PredictorStub(channel)
        assert native.Predict(pb.PredictRequest(model_name="iris", features=x[0], id="c")).id == "c"


def test_made_ids_are_fresh_and_a_given_id_is_kept() -> None:
    made = [new_request_id() for _ in range(20_000)] + [request_id("") for _ in range(20_000)]
    assert len(set(made)) == len(made)
    assert all(MADE.fullmatch(i) for i in made[:100] + made[-100:])
    assert request_id("order-17") == "order-17"


def test_a_forked_child_draws_its_own_ids() -> None:
    """The pool of drawn ids is not inherited: without the fork hook the child's next id would
    be the parent's next id."""
    new_request_id()  # this thread's pool is drawn, with ids left in it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: one id to the parent, then out without pytest's clean-up
        os.write(write, new_request_id().encode())
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    child = os.read(read, 64).decode()
    os.close(read)
    assert status == 0 and MADE.fullmatch(child)
    assert child != new_request_id()
