"""compare_outputs: the tolerance the exporter enforces, and what it lets through."""

from __future__ import annotations

import numpy as np

from export.verify import PROBABILITY_TOLERANCE, compare_outputs, regression_tolerance


def _probabilities(rows: int, classes: int, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(rows, classes)) * 3
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def _classifier_outputs(probabilities: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "probabilities": probabilities.astype(np.float32),
        "label": np.argmax(probabilities, axis=1),
    }


def test_float32_rounding_of_probabilities_passes() -> None:
    expected = _probabilities(100, 5)
    check = compare_outputs(
        _classifier_outputs(expected), expected, "classification", PROBABILITY_TOLERANCE
    )
    assert check.passed
    assert 0 < check.max_abs_error < 1e-7
    assert check.example_count == 100


def test_a_probability_off_by_more_than_1e5_fails_and_names_its_row() -> None:
    expected = _probabilities(100, 5)
    actual = expected.copy()
    actual[42, 3] += 2e-5

    check = compare_outputs(
        _classifier_outputs(actual), expected, "classification", PROBABILITY_TOLERANCE
    )

    assert not check.passed
    assert check.failures == 1
    assert check.worst_example == 42
    assert check.max_abs_error > 1e-5


def test_nan_output_fails() -> None:
    expected = _probabilities(10, 3)
    actual = expected.copy()
    actual[7, 0] = np.nan

    check = compare_outputs(
        _classifier_outputs(actual), expected, "classification", PROBABILITY_TOLERANCE
    )

    assert not check.passed
    assert check.worst_example == 7


def test_a_flipped_label_fails_only_where_numpy_is_not_nearly_tied() -> None:
    expected = np.array([[0.7, 0.2, 0.1], [0.5 + 5e-6, 0.5 - 5e-6, 0.0]])
    outputs = {"probabilities": expected.astype(np.float32), "label": np.array([1, 1])}

    check = compare_outputs(outputs, expected, "classification", PROBABILITY_TOLERANCE)

    # row 0 is a clear 0 (a real mismatch); row 1 is a tie within float32 error (tolerated)
    assert check.label_mismatches == 1
    assert not check.passed


def test_regression_bound_is_relative_plus_a_share_of_the_target_std() -> None:
    tolerance = regression_tolerance(np.array([0.5, 20.0]))
    assert tolerance.rel == 1e-4
    assert tolerance.abs == 20.0 * 1e-4

    expected = np.array([[1000.0, 0.0], [-3.0, 1.0]])
    within = expected + np.array([[0.09, 0.0019], [0.0, 0.0]])  # 1e-4·1000 + 2e-3; 2e-3
    beyond = expected + np.array([[0.0, 0.0], [0.0, 0.0025]])

    assert compare_outputs({"y": within}, expected, "regression", tolerance).passed
    check = compare_outputs({"y": beyond}, expected, "regression", tolerance)
    assert not check.passed
    assert check.worst_example == 1
