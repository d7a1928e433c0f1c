"""The join across processes: `--processes 2`, calls and true answers spread over both by the
kernel; every process's answer and the supervisor's /metrics give numpy's accuracy."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest

from bnserve import capture_store as store
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from tests.support.model_builder import CLASS_NAMES, NUM_FEATURES, ModelFiles, numpy_forward
from tests.support.server_process import ServerProcess
from tests.support.waiting import poll

SUPERVISOR_READY = r"(\d+) processes serving on port (\d+), ready"
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # a TCP connection per channel


@pytest.mark.slow
def test_labels_join_whichever_process_scored_or_took_them(
    tmp_path: Path, test_models: ModelFiles
) -> None:
    capture = tmp_path / "capture"
    server = ServerProcess(
        ["--model", str(test_models.classification), "--name", "iris", "--processes", "2",
         "--capture-dir", str(capture), "--capture-rotate-s", "0.3"]
    )  # fmt: skip
    try:
        port = int(server.wait_for(SUPERVISOR_READY, 120).group(2))
        rng = np.random.default_rng(11)
        x = rng.normal(size=(60, NUM_FEATURES)).astype(np.float32)
        truth = rng.integers(0, 3, 60)
        for i in range(60):  # one connection per call: the kernel spreads them
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as channel:
                predictor_pb2_grpc.PredictorStub(channel).Predict(
                    pb.PredictRequest(model_name="iris", features=x[i], id=f"c{i}")
                )
        for start in range(0, 60, 6):  # feedback over HTTP, new connections too
            body = {"answers": [{"id": f"c{i}", "label": CLASS_NAMES[truth[i]]}
                                for i in range(start, start + 6)]}  # fmt: skip
            request = urllib.request.Request(
                f"http://127.0.0.1:{server.http_port}/v2/models/iris/feedback",
                data=json.dumps(body).encode(),
            )
            with urllib.request.urlopen(request, timeout=10) as answer:
                assert json.loads(answer.read())["accepted"] == 6
        want = numpy_forward(test_models.classification_weights, x, "classification")
        accuracy = float(np.mean(want["label"] == truth))

        def joined() -> tuple[float] | None:
            with grpc.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION) as channel:
                quality = predictor_pb2_grpc.PredictorStub(channel).ModelQuality(
                    pb.ModelQualityRequest(model_name="iris")
                )
            if quality.versions and quality.versions[0].life.labelled == 60:
                return (quality.versions[0].life.accuracy,)
            return None

        # Each process joins the store at most a second after its last join.
        for _ in range(6):  # whichever process answers
            assert poll(lambda: joined() == (pytest.approx(accuracy),), 30, interval_s=0.2)
        pids = {
            re.search(r"-p(\d+)-", path.name).group(1)  # type: ignore[union-attr]
            for path in store.finished_files(capture, store.CALLS)
        }
        assert len(pids) == 2, "both processes scored calls"
        with urllib.request.urlopen(
            f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10
        ) as answer:
            metrics = answer.read().decode()
        line = re.search(
            r'bnserve_quality_accuracy\{model="iris",version="1",window="life"\} (\S+)', metrics
        )
        assert line is not None and float(line.group(1)) == pytest.approx(accuracy)
    finally:
        server.stop()
