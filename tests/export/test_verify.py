"""compare_outputs: the tolerance the exporter enforces, and what it lets through."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bnserve.export.fold
from bnserve.export.errors import ExportError
from bnserve.export.exporter import ExportSettings, build_model, export_run
from bnserve.export.verify import (
    EDGE_ROWS,
    PROBABILITY_TOLERANCE,
    ROUNDING_BOUND,
    check_layers,
    compare_outputs,
    onnx_session,
    probe_rows,
    regression_tolerance,
    score_onnx,
)
from bnserve.training.config import TrainConfig
from bnserve.training.inference import predict
from bnserve.training.rundir import load_run


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


# --- the layer check on real folds -----------------------------------------------------------

CORRECT_FOLD = bnserve.export.fold.fold_batchnorm


def _fold_without_epsilon(weight, gamma, beta, running_mean, running_var, epsilon, bias=None):
    """The bug of the issue: s = γ/√σ², not γ/√(σ²+ε)."""
    return CORRECT_FOLD(weight, gamma, beta, running_mean, running_var, 0.0, bias)


def _fold_mixing_mean_and_beta(weight, gamma, beta, running_mean, running_var, epsilon, bias=None):
    """b' = μ + s·(b − β) instead of β + s·(b − μ)."""
    return CORRECT_FOLD(weight, gamma, running_mean, beta, running_var, epsilon, bias)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default digits network (256, 256), briefly trained."""
    from bnserve.training.train import train

    out = tmp_path_factory.mktemp("digits") / "run"
    return train(TrainConfig(epochs=5), out, progress=False, plot=False, checkpoints=False).run_dir


@pytest.mark.parametrize("bug", [_fold_without_epsilon, _fold_mixing_mean_and_beta])
def test_a_fold_bug_fails_verification_on_digits_and_nothing_is_written(
    digits_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bug
) -> None:
    monkeypatch.setattr(bnserve.export.fold, "fold_batchnorm", bug)
    run = load_run(digits_run)
    model, _ = build_model(run, unfolded=False)
    check = check_layers(model, run.params, run.meta, probe_rows(run.heldout_x))
    assert not check.passed and check.worst_layer.startswith("hidden")
    assert check.worst_ratio > 4 * ROUNDING_BOUND  # not a near miss
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError) as raised:
        export_run(ExportSettings(run_dir=digits_run, out=out))
    assert "pre-activations differ" in str(raised.value) and "the fold is wrong" in str(
        raised.value
    )
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_the_epsilon_bug_passes_the_probability_check_alone(
    digits_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the layer check exists: softmax squashes a 1e-5 relative error under 1e-5 absolute."""
    monkeypatch.setattr(bnserve.export.fold, "fold_batchnorm", _fold_without_epsilon)
    run = load_run(digits_run)
    model, tolerance = build_model(run, unfolded=False)
    x = probe_rows(run.heldout_x).astype(np.float32)
    outputs = score_onnx(onnx_session(model.SerializeToString()), x)
    expected = predict(run.params, run.meta, x.astype(np.float64))
    assert compare_outputs(outputs, expected, "classification", tolerance).passed


@pytest.mark.parametrize("unfolded", [False, True])
def test_correct_folds_never_false_alarm(
    trained_runs, digits_run: Path, synthetic_run, unfolded: bool
) -> None:
    runs = [digits_run, *trained_runs.values()]
    for seed in range(6):
        runs.append(synthetic_run(seed=seed, hidden=(64, 48, 32)))
        runs.append(synthetic_run(seed=seed, task="regression", outputs=2, activation="tanh"))
        runs.append(synthetic_run(seed=seed, batchnorm=False, activation="sigmoid"))
    for run_dir in runs:
        run = load_run(run_dir)
        model, _ = build_model(run, unfolded=unfolded)
        probe = probe_rows(run.heldout_x, seed=3)
        assert probe.shape[0] == run.heldout_x.shape[0] + EDGE_ROWS
        check = check_layers(model, run.params, run.meta, probe)
        assert check.passed, (run_dir, check)
        assert check.worst_ratio < ROUNDING_BOUND / 2, (run_dir, check)  # a margin, not luck


def test_probe_rows_reach_the_edges_of_the_held_out_range() -> None:
    x = np.random.default_rng(0).normal(size=(50, 3))
    probe = probe_rows(x)
    np.testing.assert_array_equal(probe[:50], x)
    edges = probe[50:]
    np.testing.assert_array_equal(edges[0], x.min(axis=0))
    np.testing.assert_array_equal(edges[1], x.max(axis=0))
    assert np.all((edges == x.min(axis=0)) | (edges == x.max(axis=0)))
