"""Capture of a mixed-table model (one input per column, text as text): the store keeps each
column by its name as the model received it, and reads back as a table of those columns."""

from __future__ import annotations

import math
from pathlib import Path

import grpc
import numpy as np

from bnserve import capture_store as store
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2, predictor_pb2_grpc
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as pb
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.settings import ServerSettings
from bnserve.training.data.loading import load_dataset
from tests.support.in_process import start_server
from tests.support.mixed_model import (
    CLASS_NAMES,
    PENGUINISH,
    Numeric,
    expected,
    reference_rows,
    write_mixed_model,
)

ROWS = reference_rows(PENGUINISH)
NUMERIC = [c.name for c in PENGUINISH.columns if isinstance(c, Numeric)]


def test_a_mixed_models_columns_are_captured_by_name(tmp_path: Path) -> None:
    model = write_mixed_model(tmp_path / "penguins.onnx")
    server = start_server(
        ServerSettings(workers=8, max_inflight=6, capture_dir=str(tmp_path / "capture")),
        {"penguins": model},
    )
    try:
        request = pb.ModelInferRequest(model_name="penguins", id="mixed-1")
        for name, values in ROWS.items():
            count = len(values)
            if name in NUMERIC:
                tensor = request.inputs.add(name=name, datatype="FP32", shape=[count, 1])
                numbers = [math.nan if v is None else v for v in values]
                tensor.contents.fp32_contents.extend(numbers)
            else:
                tensor = request.inputs.add(name=name, datatype="BYTES", shape=[count, 1])
                tensor.contents.bytes_contents.extend(str(v).encode() for v in values)
        truth = [CLASS_NAMES[i % 3] for i in range(len(ROWS["island"]))]
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
            predictor_pb2_grpc.PredictorStub(channel).Feedback(
                predictor_pb2.FeedbackRequest(
                    model_name="penguins",
                    answers=[
                        predictor_pb2.TrueAnswer(id="mixed-1", row=i, label=label)
                        for i, label in enumerate(truth)
                    ],
                )
            )
        server.capture.writer.flush()
    finally:
        server.stop(0)
    (path,) = store.finished_files(tmp_path / "capture", store.CALLS)
    header, rows = store.read_file(path)
    names = [c.name for c in PENGUINISH.columns]
    assert header[5 : 5 + len(names)] == names
    for index, name in enumerate(names):
        cells = [row[5 + index] for row in rows]
        if name in NUMERIC:
            want = ["" if v is None else v for v in ROWS[name]]
            got = ["" if c == "" else float(c) for c in cells]
            np.testing.assert_array_equal(
                np.array([math.nan if g == "" else g for g in got], dtype=np.float32),
                np.array([math.nan if w == "" else w for w in want], dtype=np.float32),
            )
        else:  # text as the request sent it ("" missing, an unseen level kept as sent)
            assert cells == [str(v) for v in ROWS[name]]
    probabilities = np.array(
        [[float(row[header.index(store.PROBABILITY + c)]) for c in CLASS_NAMES] for row in rows]
    )
    np.testing.assert_allclose(
        probabilities, expected(PENGUINISH, ROWS)["probabilities"], atol=1e-5
    )
    table = list(store.training_rows(tmp_path / "capture"))
    assert table[0] == [*names, "label"] and [row[-1] for row in table[1:]] == truth
    # A labelled training set of mixed columns: text columns read as text.
    dataset = load_dataset(str(tmp_path / "capture"), target="label")
    assert dataset.feature_names == names and dataset.x.shape[0] == len(truth)
    vocabularies = dict(zip(names, dataset.vocabularies, strict=True))
    assert vocabularies["island"] is not None and "Torgersen" in vocabularies["island"]
