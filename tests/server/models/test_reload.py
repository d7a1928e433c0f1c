"""Versions and hot reload: the scan's decisions in-process (deterministic: each test calls
`scan()` itself), then 20 swaps under load against a real server subprocess."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bnserve.server.app import Extras, Server
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as v2
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.settings import ServerSettings
from tests.support.model_builder import NUM_FEATURES, numpy_forward
from tests.support.server_process import (
    ServerProcess,
    bad_parity_bytes,
    corrupt_bytes,
    install_version,
    model_bytes,
    remove_version,
)
from tests.support.waiting import poll, wait_until

EXAMPLES = np.random.default_rng(11).normal(0, 1.5, (32, NUM_FEATURES)).astype(np.float32)


class Running:
    """An in-process server on a model directory, with stubs; scans only when told."""

    def __init__(self, model_dirs: list[Path], **settings: object) -> None:
        defaults = {"workers": 6, "max_inflight": 4, "reload_interval_s": 0, "reload_settle_s": 0,
                    "http_port": 0}  # fmt: skip
        self.server = Server.create(
            ServerSettings(
                model=tuple(str(d) for d in model_dirs), host="127.0.0.1", port=0,
                **{**defaults, **settings},
            )
        )  # fmt: skip
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.predictor = predictor_pb2_grpc.PredictorStub(self.channel)
        self.inference = grpc_service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    def predict(self, version: str = "", row: int = 0) -> pb.PredictResponse:
        return self.predictor.Predict(
            pb.PredictRequest(model_name="iris", model_version=version, features=EXAMPLES[row])
        )

    def versions(self) -> list[str]:
        return list(self.predictor.ModelInfo(pb.ModelInfoRequest(model_name="iris")).versions)

    def serving(self) -> bool:
        response = self.health.Check(health_pb2.HealthCheckRequest(service=""))
        return response.status == health_pb2.HealthCheckResponse.SERVING

    def close(self) -> None:
        self.channel.close()
        self.server.stop(0)


@pytest.fixture
def running_factory() -> Iterator:
    started: list[Running] = []

    def start(model_dirs: list[Path], **settings: object) -> Running:
        started.append(Running(model_dirs, **settings))
        return started[-1]

    yield start
    for running in started:
        running.close()


def _probabilities(weights, row: int) -> np.ndarray:
    return numpy_forward(weights, EXAMPLES[row : row + 1], "classification")["probabilities"][0]


def test_newest_serves_by_default_and_any_version_on_request(tmp_path: Path, running_factory):
    model_dir = tmp_path / "iris"
    weights = {}
    for version in (1, 2, 10):
        data, weights[version] = model_bytes(seed=version)
        install_version(model_dir, version, data)
    running = running_factory([model_dir])
    assert running.versions() == ["1", "2", "10"]
    newest = running.predict()
    assert newest.model_version == "10"
    np.testing.assert_allclose(newest.probabilities, _probabilities(weights[10], 0), atol=1e-5)
    for version in ("1", "2"):
        answer = running.predict(version)
        assert answer.model_version == version
        np.testing.assert_allclose(
            answer.probabilities, _probabilities(weights[int(version)], 0), atol=1e-5
        )
    v2_answer = running.inference.ModelInfer(
        v2.ModelInferRequest(
            model_name="iris",
            model_version="2",
            inputs=[
                v2.ModelInferRequest.InferInputTensor(
                    name="x",
                    datatype="FP32",
                    shape=[1, NUM_FEATURES],
                    contents=v2.InferTensorContents(fp32_contents=EXAMPLES[0]),
                )
            ],
        )
    )
    assert v2_answer.model_version == "2"
    np.testing.assert_allclose(
        v2_answer.outputs[0].contents.fp32_contents, _probabilities(weights[2], 0), atol=1e-5
    )
    with pytest.raises(grpc.RpcError) as missing:
        running.predict("3")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert "has no version '3' (it has: 1, 2, 10)" in missing.value.details()


def test_new_version_swapped_in_and_bad_ones_refused(
    tmp_path: Path, running_factory, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = tmp_path / "iris"
    install_version(model_dir, 1, model_bytes(seed=1)[0])
    running = running_factory([model_dir])
    data, weights = model_bytes(seed=2)
    install_version(model_dir, 2, data)
    running.server.versions.scan()
    answer = running.predict()
    assert answer.model_version == "2"
    np.testing.assert_allclose(answer.probabilities, _probabilities(weights, 0), atol=1e-5)

    caplog.set_level(logging.ERROR, logger="bnserve.server.models.reload")
    install_version(model_dir, 3, corrupt_bytes(model_bytes(seed=3)[0]))
    install_version(model_dir, 4, bad_parity_bytes(seed=4))
    running.server.versions.scan()
    refusals = [r.getMessage() for r in caplog.records]
    assert any("version 3 refused" in m and "graph sha256" in m for m in refusals), refusals
    assert any("version 4 refused" in m and "parity gate failed" in m for m in refusals), refusals
    assert running.predict().model_version == "2"  # the old version keeps answering
    assert running.serving() and running.server.repository.ready
    assert not running.inference.ModelReady(v2.ModelReadyRequest(name="iris", version="4")).ready
    assert running.inference.ModelReady(v2.ModelReadyRequest(name="iris")).ready
    with pytest.raises(grpc.RpcError) as refused:
        running.predict("4")
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "parity gate failed" in refused.value.details()

    caplog.clear()
    running.server.versions.scan()  # the same bad files are not retried on every scan
    assert not caplog.records

    fixed, fixed_weights = model_bytes(seed=4)  # the operator replaces version 4 with a good file
    remove_version(model_dir, 4)
    install_version(model_dir, 4, fixed)
    running.server.versions.scan()
    answer = running.predict()
    assert answer.model_version == "4"
    np.testing.assert_allclose(answer.probabilities, _probabilities(fixed_weights, 0), atol=1e-5)


def test_file_still_being_written_is_not_read(
    tmp_path: Path, running_factory, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = tmp_path / "iris"
    install_version(model_dir, 1, model_bytes(seed=1)[0])
    running = running_factory([model_dir], reload_settle_s=30)
    data, _ = model_bytes(seed=2)
    (model_dir / "2").mkdir()
    partial = model_dir / "2" / "model.onnx"
    caplog.set_level(logging.INFO, logger="bnserve.server.models.reload")
    with partial.open("wb") as writer:  # an in-place copy, half done
        writer.write(data[: len(data) // 2])
        writer.flush()
        running.server.versions.scan()
        assert running.versions() == ["1"]
        assert not [r for r in caplog.records if "version 2" in r.getMessage()]
        writer.write(data[len(data) // 2 :])
    running.server.versions.scan()  # complete, but modified just now: still waits
    assert running.versions() == ["1"]
    settled = time.time() - 60
    os.utime(partial, (settled, settled))
    running.server.versions.scan()
    assert running.versions() == ["1", "2"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_removed_versions_unloaded_but_never_the_last(tmp_path: Path, running_factory) -> None:
    model_dir = tmp_path / "iris"
    for version in (1, 2):
        install_version(model_dir, version, model_bytes(seed=version)[0])
    running = running_factory([model_dir])
    remove_version(model_dir, 2)
    running.server.versions.scan()
    assert running.versions() == ["1"]
    remove_version(model_dir, 1)
    running.server.versions.scan()
    assert running.versions() == ["1"] and running.serving()


def test_max_versions_keeps_the_newest_good_ones(tmp_path: Path, running_factory) -> None:
    model_dir = tmp_path / "iris"
    for version in (1, 2, 3):
        install_version(model_dir, version, model_bytes(seed=version)[0])
    running = running_factory([model_dir], max_versions=2)
    assert running.versions() == ["2", "3"]
    install_version(model_dir, 4, bad_parity_bytes(seed=4))
    running.server.versions.scan()
    assert running.versions() == ["2", "3"]  # a refused version does not push a good one out
    install_version(model_dir, 5, model_bytes(seed=5)[0])
    running.server.versions.scan()
    assert running.versions() == ["3", "5"]


def test_several_models_each_with_versions(tmp_path: Path, running_factory) -> None:
    install_version(tmp_path / "iris", 1, model_bytes(seed=1)[0])
    install_version(tmp_path / "sales", 3, model_bytes(seed=2, task="regression")[0])
    running = running_factory([tmp_path / "iris", tmp_path / "sales"])
    assert sorted(running.server.repository.names()) == ["iris", "sales"]
    sales = running.predictor.Predict(pb.PredictRequest(model_name="sales", features=EXAMPLES[0]))
    assert (sales.model_version, len(sales.values)) == ("3", 2)


def test_start_up_with_only_a_bad_version_is_not_ready(tmp_path: Path, running_factory) -> None:
    install_version(tmp_path / "iris", 1, bad_parity_bytes(seed=1))
    running = running_factory([tmp_path / "iris"])
    assert not running.serving() and not running.server.repository.ready


# --- under load, against the real server process ---------------------------------------------

SWAPS = 20


class CallRecorder:
    """Clients calling Predict (newest version) back to back; every answer with its times."""

    def __init__(self, target: str, threads: int) -> None:
        self.answers: list[tuple[float, float, int, pb.PredictResponse]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._channel = grpc.insecure_channel(target)
        stub = predictor_pb2_grpc.PredictorStub(self._channel)
        self._threads = [
            threading.Thread(target=self._call, args=(stub, index), daemon=True)
            for index in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def _call(self, stub: predictor_pb2_grpc.PredictorStub, index: int) -> None:
        row = index
        while not self._stop.is_set():
            row = (row + 1) % len(EXAMPLES)
            started = time.monotonic()
            try:
                answer = stub.Predict(
                    pb.PredictRequest(model_name="iris", features=EXAMPLES[row]), timeout=10
                )
            except grpc.RpcError as error:
                self.errors.append(f"{error.code()}: {error.details()}")
                continue
            self.answers.append((started, time.monotonic(), row, answer))

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._channel.close()


def _newest_version(stub: predictor_pb2_grpc.PredictorStub) -> str:
    return stub.ModelInfo(pb.ModelInfoRequest(model_name="iris")).model_version


def _wait_until_newest(stub, version: int, timeout_s: float = 30) -> float:
    """When version `version` was first seen serving (time.monotonic())."""
    wait_until(
        lambda: _newest_version(stub) == str(version),
        f"version {version} serving",
        timeout_s,
        interval_s=0.02,
    )
    return time.monotonic()


@pytest.mark.parametrize("batching", [False, True], ids=["unbatched", "batched"])
def test_twenty_swaps_under_load_no_failed_call_every_answer_from_a_serving_version(
    tmp_path: Path, batching: bool
) -> None:
    model_dir = tmp_path / "models" / "iris"
    weights = {}
    staged = {}
    for version in range(1, SWAPS + 2):
        staged[version], weights[version] = model_bytes(seed=100 + version)
    install_version(model_dir, 1, staged[1])
    server = ServerProcess(
        ["--model", str(model_dir), "--reload-interval-s", "0.05", "--max-versions", "2",
         "--workers", "12", "--max-inflight", "10",
         "--batching" if batching else "--no-batching"]
    )  # fmt: skip
    try:
        server.wait_ready()
        channel = grpc.insecure_channel(server.target)
        stub = predictor_pb2_grpc.PredictorStub(channel)
        clients = CallRecorder(server.target, threads=6)
        dropped_at = {1: 0.0}
        serving_from = {1: 0.0}
        for version in range(2, SWAPS + 2):
            dropped_at[version] = time.monotonic()
            install_version(model_dir, version, staged[version])
            serving_from[version] = _wait_until_newest(stub, version)
        corrupt_at = time.monotonic()
        install_version(model_dir, SWAPS + 2, corrupt_bytes(model_bytes(seed=999)[0]))
        server.wait_for(rf"version {SWAPS + 2} refused: .*graph sha256")
        after_corrupt = len(clients.answers)
        poll(lambda: len(clients.answers) >= after_corrupt + 50, 30, interval_s=0.02)
        clients.stop()
        assert _newest_version(stub) == str(SWAPS + 1)
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        channel.close()
    finally:
        exit_code = server.stop()
    assert exit_code == 0
    assert clients.errors == []
    answers = clients.answers
    assert len(answers) > 200, f"only {len(answers)} calls made; the load was too thin to tell"
    seen_versions = set()
    for started, finished, row, answer in answers:
        version = int(answer.model_version)
        seen_versions.add(version)
        # Serving as newest from its install (≥ dropped_at) until the next one was seen serving.
        became_newest = dropped_at[version]
        stopped_being_newest = serving_from.get(version + 1, float("inf"))
        assert became_newest <= finished and started <= stopped_being_newest, (
            f"call [{started:.3f}, {finished:.3f}] answered by version {version}, newest only "
            f"within [{became_newest:.3f}, {stopped_being_newest:.3f}]"
        )
        np.testing.assert_allclose(
            answer.probabilities, _probabilities(weights[version], row), atol=1e-5
        )
    assert len(seen_versions) >= SWAPS // 2, f"answers came from only {sorted(seen_versions)}"
    assert any(started > corrupt_at for started, *_ in answers)


def test_single_file_replaced_is_reloaded_and_deleted_keeps_serving(
    tmp_path: Path, running_factory, caplog: pytest.LogCaptureFixture
) -> None:
    model_file = tmp_path / "iris.onnx"
    model_file.write_bytes(model_bytes(seed=1)[0])
    running = running_factory([model_file])
    data, weights = model_bytes(seed=2)
    staged = tmp_path / ".iris.onnx.new"
    staged.write_bytes(data)
    past = time.time() - 60
    os.utime(staged, (past, past))
    os.replace(staged, model_file)  # an atomic replace, as `mv` does
    running.server.versions.scan()
    answer = running.predict()
    assert answer.model_version == "1"
    np.testing.assert_allclose(answer.probabilities, _probabilities(weights, 0), atol=1e-5)
    caplog.set_level(logging.WARNING, logger="bnserve.server.models.reload")
    model_file.unlink()
    running.server.versions.scan()
    assert running.predict().model_version == "1" and running.serving()
    assert any("cannot read" in record.getMessage() for record in caplog.records)


def _failing_warm_up_bytes(seed: int) -> bytes:
    """A model that loads and passes every file check but whose run fails at batch size 2
    (a Reshape of x to [1, F]): its warm-up raises inside onnxruntime."""
    import hashlib
    import json

    import onnx

    from tests.support.model_builder import build_model

    model, _ = build_model("classification", seed=seed)
    graph = model.graph
    for node in graph.node:
        node.input[:] = ["x_one" if name == "x" else name for name in node.input]
    shape = onnx.numpy_helper.from_array(np.array([1, NUM_FEATURES], np.int64), "one_row")
    graph.initializer.append(shape)
    graph.node.insert(0, onnx.helper.make_node("Reshape", ["x", "one_row"], ["x_one"]))
    props = {p.key: p for p in model.metadata_props}
    props["bnserve.graph_sha256"].value = hashlib.sha256(graph.SerializeToString()).hexdigest()
    assert json.loads(props["bnserve.feature_names"].value)
    return model.SerializeToString()


def test_a_version_whose_warm_up_raises_is_refused_once_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from bnserve.server.observability.metrics import ServerMetrics

    model_dir = tmp_path / "iris"
    install_version(model_dir, 1, model_bytes(seed=1)[0])
    metrics = ServerMetrics()
    settings = ServerSettings(
        model=(str(model_dir),), host="127.0.0.1", port=0, workers=6, max_inflight=4,
        reload_interval_s=0, reload_settle_s=0, http_port=0,
    )  # fmt: skip
    server = Server.create(settings, Extras(metrics=metrics))
    server.start()
    failures = {"model": "iris"}
    try:
        assert metrics.registry.get_sample_value("bnserve_reload_failures_total", failures) == 0
        caplog.set_level(logging.INFO, logger="server")
        install_version(model_dir, 2, _failing_warm_up_bytes(seed=2))
        for _ in range(3):
            server.versions.scan()
        refusals = [r for r in caplog.records if "version 2 refused" in r.getMessage()]
        assert len(refusals) == 1, [r.getMessage() for r in caplog.records]
        assert "warm-up or the parity gate failed" in refusals[0].getMessage()
        assert not any(r.exc_info for r in caplog.records)  # one line, no traceback
        assert metrics.registry.get_sample_value("bnserve_reload_failures_total", failures) == 1
        assert server.repository.versions("iris") == ["1"]
    finally:
        server.stop(0)
