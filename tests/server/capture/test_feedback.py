"""Feedback and realized quality: the join against numpy, unknown and late labels counted,
the size bound, tokens; the writer's queue and the store's bounds."""

from __future__ import annotations

import hashlib
import json
import math
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from bnserve import capture_store as store
from bnserve.server.capture.feedback import MAX_ANSWERS
from bnserve.server.capture.writer import CaptureOptions, CaptureWriter
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.security.auth import TokenAuthInterceptor
from bnserve.server.settings import ServerSettings
from tests.support.in_process import start_server
from tests.support.model_builder import CLASS_NAMES, NUM_FEATURES, ModelFiles, numpy_forward
from tests.support.waiting import poll

TOKEN = "feedback-token-0123456789"


def _post(port: int, path: str, body: object, token: str | None = None) -> tuple[int, dict]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_realized_quality_equals_numpy_and_odd_labels_are_counted(
    tmp_path: Path, test_models: ModelFiles
) -> None:
    server = start_server(
        ServerSettings(workers=8, max_inflight=6, capture_dir=str(tmp_path), capture_rotate_s=3600),
        {"iris": test_models.classification, "sales": test_models.regression},
        http=True,
    )
    try:
        rng = np.random.default_rng(5)
        x = rng.normal(size=(50, NUM_FEATURES)).astype(np.float32)
        truth = rng.integers(0, 3, 50)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            native = predictor_pb2_grpc.PredictorStub(channel)
            for i in range(50):
                native.Predict(pb.PredictRequest(model_name="iris", features=x[i], id=f"c{i}"))
                native.Predict(pb.PredictRequest(model_name="sales", features=x[i], id=f"r{i}"))
            labelled = range(0, 50, 2)
            body = {"answers": [{"id": f"c{i}", "label": CLASS_NAMES[truth[i]]} for i in labelled]
                    + [{"id": "never-seen", "label": "setosa"}]}  # fmt: skip
            assert _post(server.http_port, "/v2/models/iris/feedback", body)[1] == {
                "accepted": 26,
                "dropped": 0,
            }
            values = rng.normal(size=(50, 2))
            native.Feedback(
                pb.FeedbackRequest(
                    model_name="sales",
                    answers=[pb.TrueAnswer(id=f"r{i}", values=values[i]) for i in labelled],
                )
            )
            server.capture.writer.flush()
            quality = native.ModelQuality(pb.ModelQualityRequest(model_name="iris"))
            regression = native.ModelQuality(pb.ModelQualityRequest(model_name="sales"))
        rows = list(labelled)
        want = numpy_forward(test_models.classification_weights, x[rows], "classification")
        accuracy = float(np.mean(want["label"] == truth[rows]))
        p_true = want["probabilities"][np.arange(len(rows)), truth[rows]]
        assert (quality.labels, quality.unknown_labels, quality.late_labels) == (26, 1, 0)
        (version,) = quality.versions
        for window in (version.life, version.recent):
            assert window.labelled == 25
            assert window.accuracy == pytest.approx(accuracy)
            assert window.log_loss == pytest.approx(float(-np.mean(np.log(p_true))), rel=1e-5)
            cells = {(c.true_class, c.predicted_class): c.count for c in window.confusion}
            for t in range(3):
                for p in range(3):
                    count = int(np.sum((truth[rows] == t) & (want["label"] == p)))
                    assert cells.get((CLASS_NAMES[t], CLASS_NAMES[p]), 0) == count
        predicted = numpy_forward(test_models.regression_weights, x[rows], "regression")["y"]
        errors = values[rows] - predicted
        life = regression.versions[0].life
        assert life.rmse == pytest.approx(math.sqrt(np.mean(errors**2)), rel=1e-5)
        assert life.mae == pytest.approx(float(np.mean(np.abs(errors))), rel=1e-5)
        # The same figures in REST's stats and quality answers.
        with urllib.request.urlopen(
            f"http://127.0.0.1:{server.http_port}/v2/models/iris/stats", timeout=10
        ) as answer:
            stats = json.loads(answer.read())["model_stats"][0]
        assert stats["quality"]["life"]["accuracy"] == pytest.approx(accuracy)
    finally:
        server.stop(0)


def test_late_labels_are_counted_not_used(tmp_path: Path, test_models: ModelFiles) -> None:
    server = start_server(
        ServerSettings(workers=8, max_inflight=6, capture_dir=str(tmp_path), feedback_window_s=0.2),
        {"iris": test_models.classification},
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            native = predictor_pb2_grpc.PredictorStub(channel)
            native.Predict(pb.PredictRequest(model_name="iris", features=[0] * 6, id="old"))
            time.sleep(0.3)  # the label must arrive after the 0.2 s window: that is the case
            native.Feedback(
                pb.FeedbackRequest(
                    model_name="iris", answers=[pb.TrueAnswer(id="old", label="setosa")]
                )
            )
            server.capture.writer.flush()
            quality = native.ModelQuality(pb.ModelQualityRequest(model_name="iris"))
        assert (quality.labels, quality.unknown_labels, quality.late_labels) == (1, 0, 1)
        assert quality.versions[0].life.labelled == 0
    finally:
        server.stop(0)


def test_feedback_is_bounded_and_token_protected(tmp_path: Path, test_models: ModelFiles) -> None:
    auth = TokenAuthInterceptor([hashlib.sha256(TOKEN.encode()).digest()])
    server = start_server(
        ServerSettings(workers=8, max_inflight=6, capture_dir=str(tmp_path)),
        {"iris": test_models.classification},
        http=True,
        interceptors=[auth],
        http_auth=auth.accepts,
    )
    try:
        port = server.http_port
        one = {"answers": [{"id": "a", "label": "setosa"}]}
        assert _post(port, "/v2/models/iris/feedback", one)[0] == 401
        assert _post(port, "/v2/models/iris/feedback", one, "forged")[0] == 401
        assert _post(port, "/v2/models/iris/feedback", one, TOKEN)[0] == 200
        too_many = {"answers": [{"id": "a", "label": "setosa"}] * (MAX_ANSWERS + 1)}
        status, answer = _post(port, "/v2/models/iris/feedback", too_many, TOKEN)
        assert status == 400 and f"at most {MAX_ANSWERS}" in answer["error"]
        bad = {"answers": [{"id": "a", "label": "tulip"}]}
        status, answer = _post(port, "/v2/models/iris/feedback", bad, TOKEN)
        assert status == 400 and "'tulip' is not a class" in answer["error"]
        answer_a = pb.TrueAnswer(id="a", label="setosa")
        request = pb.FeedbackRequest(model_name="iris", answers=[answer_a])
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            native = predictor_pb2_grpc.PredictorStub(channel)
            for metadata in [None, (("authorization", "Bearer forged"),)]:
                with pytest.raises(grpc.RpcError) as refused:
                    native.Feedback(request, metadata=metadata)
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            good = (("authorization", f"Bearer {TOKEN}"),)
            assert native.Feedback(request, metadata=good).accepted == 1
            del request.answers[:]
            request.answers.extend([pb.TrueAnswer(id="a", label="setosa")] * (MAX_ANSWERS + 1))
            with pytest.raises(grpc.RpcError) as refused:
                native.Feedback(request, metadata=good)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        server.stop(0)


class _Model:
    name, version, is_classification = "m", "1", False

    class card:  # what the writer reads of a model card
        feature_names = ("a", "b")
        target_names = ("y",)
        class_names = ()


def test_a_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    writer = CaptureWriter(CaptureOptions(tmp_path, 1.0, 1 << 20, 60.0, queue_records=3))
    x, y = np.zeros((2, 2), np.float32), [np.zeros((2, 1), np.float32)]
    started = time.perf_counter()
    for i in range(10):  # the writer thread is not started: nothing leaves the queue
        writer.offer(_Model(), x, y, str(i), 1000)
    assert time.perf_counter() - started < 0.5
    assert writer.dropped_rows == 7 * 2
    assert not writer.offer_labels("m", [store.ID], [["a"]])
    writer.start()
    writer.stop()
    assert writer.written_rows == 3 * 2
    # The arrays queued are bounded in bytes too: a large batch past the bound is dropped.
    small = CaptureWriter(CaptureOptions(tmp_path, 1.0, 1 << 20, 60.0, queue_bytes=10_000))
    big = np.zeros((1000, 2), np.float32)  # 8000 bytes, with its outputs 12000
    small.offer(_Model(), big, [np.zeros((1000, 1), np.float32)], "big", 1000)
    small.offer(_Model(), x, y, "fits", 1000)
    assert small.dropped_rows == 1000


def test_a_feedback_flood_stays_within_the_queue_bound(tmp_path: Path) -> None:
    """Feedback faster than the writer: the queue holds at most its bytes, the rest is
    dropped and counted, and the answers say so."""
    writer = CaptureWriter(CaptureOptions(tmp_path, 1.0, 1 << 20, 60.0, queue_bytes=2_000_000))
    rows = [[f"id-{i}", "0", "1796660000.0", "setosa"] for i in range(MAX_ANSWERS)]
    answers = [writer.offer_labels("iris", ["bnserve.id"], rows) for _ in range(50)]
    assert 0 < answers.count(True) < 50
    assert writer.queued_bytes <= 2_000_000
    assert writer.dropped_rows == answers.count(False) * MAX_ANSWERS
    writer.start()
    writer.stop()
    assert writer.queued_bytes == 0
    assert writer.written_rows == answers.count(True) * MAX_ANSWERS


def test_rotation_and_the_size_bound(tmp_path: Path) -> None:
    """Incompressible rows: segments rotate by size (1/16 of the bound, 64 KiB here; ISA-L's
    deflate emits in ~100 KiB steps, so a file is at least one step), the store stays under its
    bound, the oldest files going first; an idle segment rotates by age."""
    options = CaptureOptions(tmp_path, 1.0, 1_000_000, 3600.0)
    writer = CaptureWriter(options)
    writer.prepare()
    writer.start()
    rng = np.random.default_rng(0)
    calls = 1500
    for i in range(calls):
        writer.offer(_Model(), rng.normal(size=(50, 2)).astype(np.float32),
                     [rng.normal(size=(50, 1)).astype(np.float32)], f"call{i}", 1000)  # fmt: skip
    writer.stop()
    assert writer.written_rows == calls * 50  # nothing dropped on the way: the trim did it
    files = store.finished_files(tmp_path, store.CALLS)
    sizes = [path.stat().st_size for path in files]
    assert len(files) >= 3 and sum(sizes) <= options.max_bytes
    first_ids = {row[0] for row in store.read_file(files[0])[1]}
    assert "call0" not in first_ids  # the oldest rows were trimmed away
    assert f"call{calls - 1}" in {row[0] for row in store.read_file(files[-1])[1]}

    aged = CaptureWriter(CaptureOptions(tmp_path / "aged", 1.0, 1 << 20, 0.2))
    aged.prepare()
    aged.start()
    aged.offer(_Model(), np.zeros((1, 2), np.float32), [np.zeros((1, 1), np.float32)], "x", 1)
    assert poll(lambda: store.finished_files(tmp_path / "aged", store.CALLS), timeout_s=5)
    aged.stop()
