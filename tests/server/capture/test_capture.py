"""Capture on a real in-process server: every transport writes the same rows, nothing sampled
is lost under concurrent calls, files are whole and private, pandas, pyarrow and
`bnserve train --data DIR` read them; a full disk drops (counted) and serving goes on."""

from __future__ import annotations

import json
import stat
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pytest
from pyarrow import csv as pa_csv

from bnserve import capture_store as store
from bnserve.server.app import Server
from bnserve.server.drift.cli import read_inputs
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as v2
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.settings import ServerSettings
from tests.support.in_process import start_server
from tests.support.model_builder import CLASS_NAMES, NUM_FEATURES, ModelFiles, numpy_forward

FEATURES = [f"f{i}" for i in range(NUM_FEATURES)]


def _settings(directory: Path, **more: object) -> ServerSettings:
    return ServerSettings(
        workers=8, max_inflight=6, capture_dir=str(directory), capture_rotate_s=3600, **more
    )


@pytest.fixture
def captured(tmp_path: Path, test_models: ModelFiles) -> Iterator[tuple[Server, Path]]:
    directory = tmp_path / "capture"
    server = start_server(
        _settings(directory),
        {"iris": test_models.classification, "sales": test_models.regression},
        http=True,
    )
    yield server, directory
    server.stop(0)


def _rest(port: int, path: str, body: object | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _rows(directory: Path) -> dict[str, np.ndarray]:
    """Every finished calls file, read by pyarrow as it is (ids as text), column by column."""
    files = store.finished_files(directory, store.CALLS)
    options = pa_csv.ConvertOptions(column_types={store.ID: pa.string()})
    table = pa.concat_tables(pa_csv.read_csv(path, convert_options=options) for path in files)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def test_every_transport_captures_the_same_rows(
    captured: tuple[Server, Path], test_models: ModelFiles
) -> None:
    server, directory = captured
    rng = np.random.default_rng(0)
    x = rng.normal(size=(9, NUM_FEATURES)).astype(np.float32)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        native = predictor_pb2_grpc.PredictorStub(channel)
        native.Predict(pb.PredictRequest(model_name="iris", features=x[0], id="one"))
        native.PredictBatch(
            pb.PredictBatchRequest(model_name="iris", raw_features=x[1:4].tobytes(), id="batch")
        )
        stream = [pb.PredictRequest(model_name="iris", features=x[i], id=f"s{i}") for i in (4, 5)]
        list(native.PredictStream(iter(stream)))
        v2_request = v2.ModelInferRequest(model_name="iris", id="v2")
        tensor = v2_request.inputs.add(name="x", datatype="FP32", shape=[1, NUM_FEATURES])
        tensor.contents.fp32_contents.extend(x[6].tolist())
        grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(v2_request)
    status, _ = _rest(
        server.http_port,
        "/v2/models/iris/infer",
        {"id": "rest", "inputs": [{"name": "x", "datatype": "FP32", "shape": [2, NUM_FEATURES],
                                   "data": x[7:9].ravel().tolist()}]},
    )  # fmt: skip
    assert status == 200
    server.capture.writer.flush()
    rows = _rows(directory)
    keys = list(zip(rows[store.ID], rows[store.ROW], strict=True))
    expected_keys = [("one", 0), ("batch", 0), ("batch", 1), ("batch", 2), ("s4", 0), ("s5", 0),
                     ("v2", 0), ("rest", 0), ("rest", 1)]  # fmt: skip
    assert sorted(keys) == sorted(expected_keys)
    order = {key: i for i, key in enumerate(expected_keys)}
    sort = np.argsort([order[k] for k in keys])
    inputs = np.stack([rows[f][sort] for f in FEATURES], axis=1).astype(np.float32)
    np.testing.assert_array_equal(inputs, x)
    want = numpy_forward(test_models.classification_weights, x, "classification")
    probabilities = np.stack([rows[store.PROBABILITY + c][sort] for c in CLASS_NAMES], axis=1)
    np.testing.assert_allclose(probabilities, want["probabilities"], atol=1e-5)
    assert list(rows[store.PREDICTED][sort]) == [CLASS_NAMES[k] for k in want["label"]]
    assert set(rows[store.VERSION].astype(str)) == {"1"}
    assert (rows[store.MS] > 0).all() and (rows[store.TIME] > 1.7e9).all()
    # Private: 0700 directories, 0600 files; pyarrow reads a file as it is.
    for level in [directory, directory / "iris", directory / "iris" / "1"]:
        assert stat.S_IMODE(level.stat().st_mode) == 0o700
    for path in store.finished_files(directory, store.CALLS):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert pa_csv.read_csv(path).num_rows >= 1


def test_concurrent_calls_lose_no_sampled_call(captured: tuple[Server, Path]) -> None:
    server, directory = captured
    x = np.ones(NUM_FEATURES, dtype=np.float32)

    def caller(thread: int) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            for i in range(40):
                stub.Predict(pb.PredictRequest(model_name="sales", features=x, id=f"{thread}-{i}"))

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    server.capture.writer.flush()
    ids = list(_rows(directory)[store.ID])
    assert sorted(ids) == sorted(f"{t}-{i}" for t in range(8) for i in range(40))
    assert server.capture.writer.dropped_rows == 0


def test_a_capture_directory_with_labels_is_a_training_set(
    captured: tuple[Server, Path], tmp_path: Path
) -> None:
    """Score 60 rows, post true labels for 40 of them; `bnserve train --data DIR --target
    label` trains on exactly those 40, and a half-written file beside them is never read."""
    server, directory = captured
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, NUM_FEATURES)).astype(np.float32)
    with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        native = predictor_pb2_grpc.PredictorStub(channel)
        native.PredictBatch(
            pb.PredictBatchRequest(model_name="iris", raw_features=x.tobytes(), id="day1")
        )
        truth = [CLASS_NAMES[i % 3] for i in range(40)]
        answer = native.Feedback(
            pb.FeedbackRequest(
                model_name="iris",
                answers=[pb.TrueAnswer(id="day1", row=i, label=truth[i]) for i in range(40)],
            )
        )
    assert (answer.accepted, answer.dropped) == (40, 0)
    server.capture.writer.flush()
    torn = directory / "iris" / "1" / ".calls-20990101T000000-p1-000001.csv.gz.tmp"
    torn.write_bytes(b"\x1f\x8b torn")
    rows = list(store.training_rows(directory))
    assert rows[0] == [*FEATURES, "label"]
    labelled = [row for row in rows[1:] if row[-1]]
    assert [row[-1] for row in labelled] == truth
    np.testing.assert_array_equal(np.array([r[:-1] for r in labelled], dtype=np.float32), x[:40])

    from bnserve.training.data.loading import load_dataset

    dataset = load_dataset(str(directory), target="label")
    assert dataset.labeled is not None and list(dataset.labeled) == list(range(40))
    np.testing.assert_array_equal(np.asarray(dataset.x)[dataset.labeled], x[:40])
    # `bnserve drift` and `bnserve adapt` read the directory, or one file of it, as inputs.
    np.testing.assert_array_equal(read_inputs(directory, tuple(FEATURES)), x)
    (one_file,) = store.finished_files(directory, store.CALLS)
    np.testing.assert_array_equal(read_inputs(one_file, tuple(FEATURES)), x)
    from bnserve.training.cli import main as train

    out = tmp_path / "run"
    argv = ["--data", str(directory), "--target", "label", "--out", str(out), "--epochs", "1"]
    assert train([*argv, "--no-progress"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["feature_names"] == FEATURES


def test_a_full_disk_drops_and_counts_and_serving_goes_on(
    small_disk, test_models: ModelFiles, caplog: pytest.LogCaptureFixture
) -> None:
    disk = small_disk.mount(64)
    server = start_server(
        _settings(disk / "capture", capture_max_bytes=1 << 20),
        {"iris": test_models.classification},
    )
    try:
        rng = np.random.default_rng(1)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            native = predictor_pb2_grpc.PredictorStub(channel)
            for i in range(60):  # incompressible rows: ~300 KB, far past the 64 KiB disk
                x = rng.normal(size=(64, NUM_FEATURES)).astype(np.float32)
                answer = native.PredictBatch(
                    pb.PredictBatchRequest(model_name="iris", raw_features=x.tobytes(), id=str(i))
                )
                assert answer.num_examples == 64
            server.capture.writer.flush()
            assert server.capture.writer.dropped_rows > 0
            assert "capture: " in caplog.text and "No space left" in caplog.text
            answer = native.Predict(pb.PredictRequest(model_name="iris", features=x[0], id="after"))
            assert answer.id == "after"
    finally:
        server.stop(0)
