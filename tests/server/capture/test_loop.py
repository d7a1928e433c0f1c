"""The whole feedback loop with real trained models, against `python -m bnserve.server`: serve v1
with capture on, production traffic and feedback for half of it (realized accuracy), a better v2
dropped in as the shadow (agreement, |Δp|, both versions' accuracy on the same calls), then a
promotion and a rollback under a caller that never stops. Every figure is numpy's
(`bnserve.training.inference.predict`, float64) on the same rows."""

from __future__ import annotations

import json
import re
import threading
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from bnserve import capture_store as store
from bnserve.atomic import write_bytes
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.training.rundir import Run
from tests.support.server_process import ServerProcess, install_version
from tests.support.waiting import poll, wait_until

BATCH = 10  # rows per PredictBatch call: feedback names (id, row)


def _train_and_export(root: Path, name: str, hidden: tuple[int, ...], epochs: int) -> Run:
    from bnserve.export.exporter import ExportSettings, export_run
    from bnserve.training.config import TrainConfig
    from bnserve.training.rundir import load_run
    from bnserve.training.train import train

    config = TrainConfig(hidden=hidden, epochs=epochs, seed=3)
    result = train(config, root / name, progress=False, checkpoints=False, plot=False)
    run_dir = Path(result.run_dir)
    export_run(ExportSettings(run_dir=run_dir, out=root / f"{name}.onnx"))
    return load_run(run_dir)


def _numpy(run: Run, x: np.ndarray) -> np.ndarray:
    from bnserve.training.inference import predict

    return predict(run.params, run.meta, x)


def _send(stub: predictor_pb2_grpc.PredictorStub, x: np.ndarray, prefix: str) -> np.ndarray:
    """x as production traffic, BATCH rows a call with ids prefix0, prefix1, …: every answer's
    version and probabilities, (N,) str and (N, C)."""
    versions, probabilities = [], []
    for call, start in enumerate(range(0, len(x), BATCH)):
        rows = x[start : start + BATCH].astype(np.float32)
        answer = stub.PredictBatch(
            pb.PredictBatchRequest(model_name="digits", features=rows.ravel(), id=f"{prefix}{call}")
        )
        versions += [answer.model_version] * len(rows)
        probabilities.append(np.reshape(answer.probabilities, (len(rows), -1)))
    assert set(versions) == {"1"}, "the served version answers, never the shadow"
    return np.concatenate(probabilities)


def _answers(labelled: np.ndarray, y: np.ndarray, prefix: str) -> list[dict[str, Any]]:
    """True answers for the rows `labelled` (indices into the traffic) in feedback's JSON form."""
    return [
        {"id": f"{prefix}{i // BATCH}", "row": i % BATCH, "label": str(y[i])}
        for i in labelled.tolist()
    ]


def _accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(p, axis=1) == y))


def _log_loss(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-15))))


def test_the_whole_loop(tmp_path: Path) -> None:
    v1 = _train_and_export(tmp_path, "v1", hidden=(8,), epochs=1)
    v2 = _train_and_export(tmp_path, "v2", hidden=(64,), epochs=12)
    x, y = v1.heldout_x, v1.heldout_y  # the test split: neither run trained on it
    assert np.array_equal(x, v2.heldout_x), "one split seed: the same held-out rows"
    assert v1.meta["class_names"] == [str(c) for c in range(10)]
    p1, p2 = _numpy(v1, x), _numpy(v2, x)
    assert _accuracy(p2, y) > _accuracy(p1, y) + 0.05, "v2 must be the better model"
    labelled = np.arange(0, len(x), 2)  # feedback for half the calls

    model_dir = tmp_path / "models" / "digits"
    install_version(model_dir, 1, (tmp_path / "v1.onnx").read_bytes())
    server = ServerProcess(
        ["--model-root", str(tmp_path / "models"), "--capture-dir", str(tmp_path / "capture"),
         "--capture-rotate-s", "0.2", "--reload-interval-s", "0.1"]
    )  # fmt: skip
    try:
        server.wait_ready()
        channel = grpc.insecure_channel(server.target)
        stub = predictor_pb2_grpc.PredictorStub(channel)

        def quality() -> pb.ModelQualityResponse:
            return stub.ModelQuality(pb.ModelQualityRequest(model_name="digits"))

        def life(version: str) -> pb.QualityWindow | None:
            found = [v.life for v in quality().versions if v.model_version == version]
            return found[0] if found else None

        # 1. v1 serves with capture on: held-out rows as traffic, feedback (REST) for half.
        np.testing.assert_allclose(_send(stub, x, "a"), p1, atol=1e-5)
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.http_port}/v2/models/digits/feedback",
            data=json.dumps({"answers": _answers(labelled, y, "a")}).encode(),
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read()) == {"accepted": len(labelled), "dropped": 0}
        wait_until(
            lambda: (w := life("1")) is not None and w.labelled == len(labelled),
            "joined",
            timeout_s=30,
        )
        window = life("1")
        assert window is not None
        assert window.accuracy == pytest.approx(_accuracy(p1[labelled], y[labelled]))
        assert window.log_loss == pytest.approx(_log_loss(p1[labelled], y[labelled]), rel=1e-4)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{server.http_port}/v2/models/digits/quality", timeout=10
        ) as response:
            rest = json.loads(response.read())
        assert rest["versions"]["1"]["life"]["accuracy"] == pytest.approx(window.accuracy)
        assert rest["labels"] == len(labelled) and rest["unknown_labels"] == 0

        # 2. v2 (trained longer) dropped in as the shadow: marked first, so it never serves.
        write_bytes(model_dir / "shadow", b"2\n")
        install_version(model_dir, 2, (tmp_path / "v2.onnx").read_bytes())
        server.wait_for(r"model digits: version 2 is the shadow; version 1 serving", 30)
        np.testing.assert_allclose(_send(stub, x, "b"), p1, atol=1e-5)
        stub.Feedback(
            pb.FeedbackRequest(
                model_name="digits",
                answers=[pb.TrueAnswer(**answer) for answer in _answers(labelled, y, "b")],
            )
        )

        def pair() -> pb.ShadowPair | None:
            pairs = quality().shadows
            return pairs[0] if len(pairs) == 1 else None

        wait_until(
            lambda: (s := pair()) is not None and s.primary_quality.labelled == len(labelled),
            "the shadow's calls and answers joined",
            timeout_s=30,
        )
        shadow = pair()
        assert shadow is not None
        assert (shadow.primary_version, shadow.shadow_version) == ("1", "2")
        assert shadow.calls == len(x)
        agreement = np.mean(np.argmax(p1, axis=1) == np.argmax(p2, axis=1))
        assert 0 < agreement < 1, "the versions must disagree somewhere for the test to bite"
        assert shadow.agreement == pytest.approx(agreement)
        delta = np.max(np.abs(p1 - p2), axis=1)
        assert shadow.delta_mean == pytest.approx(delta.mean(), abs=1e-5)
        assert shadow.delta_max == pytest.approx(delta.max(), abs=1e-5)
        assert shadow.shadow_quality.labelled == len(labelled)
        for figures, p in [(shadow.primary_quality, p1), (shadow.shadow_quality, p2)]:
            assert figures.accuracy == pytest.approx(_accuracy(p[labelled], y[labelled]))
            assert figures.log_loss == pytest.approx(_log_loss(p[labelled], y[labelled]), rel=1e-4)
        assert shadow.shadow_quality.accuracy > shadow.primary_quality.accuracy
        # v1's own figures: both rounds' labelled calls, the same rows twice.
        window = life("1")
        assert window is not None and window.labelled == 2 * len(labelled)
        assert window.accuracy == pytest.approx(_accuracy(p1[labelled], y[labelled]))
        assert life("2") is None, "a shadow's rows are not the version's served calls"

        # 3. Promote, then roll back, while a caller (calls without ids) never stops.
        stop = threading.Event()
        answered: list[str] = []
        errors: list[Exception] = []

        def caller() -> None:
            with grpc.insecure_channel(server.target) as own:
                calls = predictor_pb2_grpc.PredictorStub(own)
                row = x[0].astype(np.float32)
                while not stop.is_set():
                    try:
                        request = pb.PredictRequest(model_name="digits", features=row)
                        answered.append(calls.Predict(request, timeout=10).model_version)
                    except grpc.RpcError as error:
                        errors.append(error)

        def served_by(version: str) -> bool:
            count = len(answered)
            return poll(lambda: len(answered) > count and answered[-1] == version, 30)

        thread = threading.Thread(target=caller)
        thread.start()
        try:
            assert served_by("1")
            write_bytes(model_dir / "shadow", b"1\n")  # promote 2: 1 becomes its shadow
            assert served_by("2")
            answer = stub.Predict(pb.PredictRequest(model_name="digits", features=x[1]))
            assert answer.model_version == "2"
            np.testing.assert_allclose(answer.probabilities, p2[1], atol=1e-5)
            write_bytes(model_dir / "shadow", b"2\n")  # roll back: 1 serves, 2 its shadow
            assert served_by("1")
            answer = stub.Predict(pb.PredictRequest(model_name="digits", features=x[1]))
            assert answer.model_version == "1"
            np.testing.assert_allclose(answer.probabilities, p1[1], atol=1e-5)
        finally:
            stop.set()
            thread.join()
        assert errors == []
        runs = [v for i, v in enumerate(answered) if i == 0 or answered[i - 1] != v]
        assert runs == ["1", "2", "1"], "one switch each way, every call answered"
        # The caller's calls carried no id: each got one the server made, so they pair too,
        # both ways ("2" served with "1" its shadow between the promotion and the rollback). A
        # last round with ids shows the join has read everything written before it: every
        # shadow row in the store is paired.
        np.testing.assert_allclose(_send(stub, x[:20], "c"), p1[:20], atol=1e-5)

        def every_shadow_row_paired() -> bool:
            rows = [
                row
                for path in store.finished_files(tmp_path / "capture", store.SHADOW_CALLS)
                for row in store.read_file(path)[1]
            ]
            pairs = {(s.primary_version, s.shadow_version): s.calls for s in quality().shadows}
            return (
                {"c0", "c1"} <= {row[0] for row in rows}
                and set(pairs) == {("1", "2"), ("2", "1")}
                and sum(pairs.values()) == len(rows)
            )

        wait_until(every_shadow_row_paired, "id-less calls paired by their made ids", timeout_s=30)
        made = [
            row[0]
            for path in store.finished_files(tmp_path / "capture" / "digits", store.CALLS)
            for row in store.read_file(path)[1]
            if not re.fullmatch(r"[abc]\d+", row[0])
        ]
        assert made and all(re.fullmatch("[0-9a-f]{32}", i) for i in made)
        assert len(set(made)) == len(made), "every id-less call got its own id"
        channel.close()
    finally:
        assert server.stop() == 0
