"""bnserve.v1.Predictor over a real server: Predict, PredictBatch, PredictStream, ModelInfo."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from tests.support.model_builder import (
    CLASS_NAMES,
    NUM_FEATURES,
    TARGET_NAMES,
    ModelFiles,
    numpy_forward,
)

RNG = np.random.default_rng(7)
EXAMPLES = RNG.normal(0, 1.5, (20, NUM_FEATURES)).astype(np.float32)


def test_predict_by_position_matches_numpy(predictor, test_models: ModelFiles) -> None:
    expected = numpy_forward(test_models.classification_weights, EXAMPLES, "classification")
    for row, features in enumerate(EXAMPLES):
        response = predictor.Predict(
            pb.PredictRequest(model_name="iris", features=features, id=str(row))
        )
        np.testing.assert_allclose(
            response.probabilities, expected["probabilities"][row], atol=1e-5
        )
        assert response.label == expected["label"][row]
        assert response.class_name == CLASS_NAMES[expected["label"][row]]
        assert (response.model_name, response.model_version, response.id) == ("iris", "1", str(row))


def test_predict_by_name_equals_by_position(predictor) -> None:
    features = EXAMPLES[3]
    named = {f"f{i}": float(value) for i, value in enumerate(features)}
    by_name = predictor.Predict(pb.PredictRequest(model_name="iris", named_features=named))
    by_position = predictor.Predict(pb.PredictRequest(model_name="iris", features=features))
    assert list(by_name.probabilities) == list(by_position.probabilities)


def test_values_of_numbers_work_for_a_model_of_numbers(predictor) -> None:
    """Predict.values (the mixed-input form) scores a feature-vector model too; text is refused
    naming the feature, and a missing value is refused (format 1 has no gaps)."""
    features = EXAMPLES[3]
    values = {f"f{i}": pb.Value(number=float(value)) for i, value in enumerate(features)}
    by_values = predictor.Predict(pb.PredictRequest(model_name="iris", values=values))
    by_position = predictor.Predict(pb.PredictRequest(model_name="iris", features=features))
    assert list(by_values.probabilities) == list(by_position.probabilities)
    for bad, problem in ((pb.Value(text="wide"), "'f2' is the text"), (pb.Value(), "is nan")):
        request = pb.PredictRequest(model_name="iris", values={**values, "f2": bad})
        with pytest.raises(grpc.RpcError) as error:
            predictor.Predict(request)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert problem in error.value.details(), error.value.details()


def test_predict_regression_values(predictor, test_models: ModelFiles) -> None:
    expected = numpy_forward(test_models.regression_weights, EXAMPLES, "regression")["y"]
    response = predictor.Predict(pb.PredictRequest(model_name="sales", features=EXAMPLES[0]))
    np.testing.assert_allclose(response.values, expected[0], rtol=1e-4, atol=1e-5)
    assert len(response.probabilities) == 0 and response.class_name == ""


def test_predict_batch_matches_numpy(predictor, test_models: ModelFiles) -> None:
    request = pb.PredictBatchRequest(model_name="iris", features=EXAMPLES.ravel())
    response = predictor.PredictBatch(request)
    expected = numpy_forward(test_models.classification_weights, EXAMPLES, "classification")
    assert response.num_examples == len(EXAMPLES)
    probabilities = np.array(response.probabilities).reshape(len(EXAMPLES), len(CLASS_NAMES))
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-5)
    assert list(response.labels) == expected["label"].tolist()
    assert list(response.class_names) == [CLASS_NAMES[i] for i in expected["label"]]


def test_predict_batch_raw_answers_raw(predictor, test_models: ModelFiles) -> None:
    raw = EXAMPLES.astype("<f4").tobytes()
    response = predictor.PredictBatch(pb.PredictBatchRequest(model_name="iris", raw_features=raw))
    expected = numpy_forward(test_models.classification_weights, EXAMPLES, "classification")
    probabilities = np.frombuffer(response.raw_probabilities, "<f4").reshape(len(EXAMPLES), -1)
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-5)
    assert np.frombuffer(response.raw_labels, "<i8").tolist() == expected["label"].tolist()
    assert len(response.probabilities) == 0 and len(response.class_names) == 0
    sales = predictor.PredictBatch(pb.PredictBatchRequest(model_name="sales", raw_features=raw))
    values = np.frombuffer(sales.raw_values, "<f4").reshape(len(EXAMPLES), len(TARGET_NAMES))
    y = numpy_forward(test_models.regression_weights, EXAMPLES, "regression")["y"]
    np.testing.assert_allclose(values, y, rtol=1e-4, atol=1e-5)


def test_predict_batch_regression(predictor, test_models: ModelFiles) -> None:
    response = predictor.PredictBatch(
        pb.PredictBatchRequest(model_name="sales", features=EXAMPLES.ravel())
    )
    expected = numpy_forward(test_models.regression_weights, EXAMPLES, "regression")["y"]
    values = np.array(response.values).reshape(len(EXAMPLES), len(TARGET_NAMES))
    np.testing.assert_allclose(values, expected, rtol=1e-4, atol=1e-5)


def test_predict_stream_answers_in_order(predictor, test_models: ModelFiles) -> None:
    requests = [
        pb.PredictRequest(model_name="iris", features=features, id=f"row-{i}")
        for i, features in enumerate(EXAMPLES)
    ]
    responses = list(predictor.PredictStream(iter(requests)))
    expected = numpy_forward(test_models.classification_weights, EXAMPLES, "classification")
    assert [r.id for r in responses] == [f"row-{i}" for i in range(len(EXAMPLES))]
    probabilities = np.array([r.probabilities for r in responses])
    np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-5)


def test_model_info(predictor) -> None:
    info = predictor.ModelInfo(pb.ModelInfoRequest(model_name="iris"))
    assert info.task == "classification"
    assert list(info.feature_names) == [f"f{i}" for i in range(NUM_FEATURES)]
    assert list(info.class_names) == CLASS_NAMES
    assert list(info.versions) == ["1"]
    assert (info.inputs[0].name, info.inputs[0].datatype, list(info.inputs[0].shape)) == (
        "x",
        "FP32",
        [-1, NUM_FEATURES],
    )
    assert [(o.name, o.datatype, list(o.shape)) for o in info.outputs] == [
        ("probabilities", "FP32", [-1, len(CLASS_NAMES)]),
        ("label", "INT64", [-1]),
    ]
    assert (info.stats, info.bn_momentum, info.epsilon, info.folded) == (
        "ema",
        "0.1",
        "1e-05",
        True,
    )
    assert info.run_id == "test-classification-1"
    assert info.metadata["bnserve.task"] == "classification"
    assert len(info.graph_sha256) == 64


def test_predict_stream_mixed_models_and_late_error(predictor, test_models: ModelFiles) -> None:
    """Many messages in flight (read ahead, scored in chunks): models may alternate, every
    message gets its own answer in order, and a bad one ends the stream after the good ones."""
    names = ["iris" if i % 3 else "sales" for i in range(len(EXAMPLES))]
    requests = [
        pb.PredictRequest(model_name=name, features=features, id=str(i))
        for i, (name, features) in enumerate(zip(names, EXAMPLES, strict=True))
    ]
    requests.append(pb.PredictRequest(model_name="iris", features=[1.0], id="bad"))
    stream = predictor.PredictStream(iter(requests))
    answers = []
    with pytest.raises(grpc.RpcError) as raised:
        answers.extend(stream)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"stream message {len(EXAMPLES)} (id 'bad')" in raised.value.details()
    assert [a.id for a in answers] == [str(i) for i in range(len(EXAMPLES))]
    iris = numpy_forward(test_models.classification_weights, EXAMPLES, "classification")
    sales = numpy_forward(test_models.regression_weights, EXAMPLES, "regression")["y"]
    for i, answer in enumerate(answers):
        assert answer.model_name == names[i]
        if names[i] == "iris":
            np.testing.assert_allclose(answer.probabilities, iris["probabilities"][i], atol=1e-5)
        else:
            np.testing.assert_allclose(answer.values, sales[i], rtol=1e-4, atol=1e-5)
