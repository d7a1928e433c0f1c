"""Score a built model with onnxruntime and compare it with the numpy inference path.

Tolerances (float32 model vs float64 numpy, on the same raw held-out features):

- classification: |p_onnx − p_numpy| ≤ 1e-5 on every probability; labels agree wherever numpy's
  two largest probabilities differ by more than twice that (a nearer tie may flip in float32).
- regression: |y_onnx − y_numpy| ≤ 1e-4·|y_numpy| + 1e-4·max(target.std). Float32 error grows with
  the size of the terms summed, not with |y|, so a y near 0 reached from large terms needs the
  absolute part; 1e-4 of a target standard deviation is far below what a folding mistake
  (a wrong ε, a swapped axis, a lost bias) costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from export.metadata import Tolerance

PROBABILITY_TOLERANCE = Tolerance(abs=1e-5, rel=0.0)
REGRESSION_RELATIVE = 1e-4


def regression_tolerance(target_std: np.ndarray) -> Tolerance:
    """The regression bound for targets with standard deviations target_std (T,), target units."""
    return Tolerance(abs=REGRESSION_RELATIVE * float(np.max(target_std)), rel=REGRESSION_RELATIVE)


@dataclass(frozen=True)
class Verification:
    """How an ONNX model's outputs compared with numpy's on R held-out examples."""

    example_count: int
    max_abs_error: float  # over probabilities (classification) or y (regression)
    worst_example: int  # held-out row with the largest excess over the tolerance
    failures: int  # values outside the tolerance
    label_mismatches: int  # classification: labels that differ where numpy's margin is clear
    tolerance: Tolerance

    @property
    def passed(self) -> bool:
        return self.failures == 0 and self.label_mismatches == 0


def onnx_session(model_bytes: bytes, threads: int = 1) -> ort.InferenceSession:
    """A CPU onnxruntime session for a serialized model, with `threads` intra-op threads."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def score_onnx(session: ort.InferenceSession, x_raw: np.ndarray) -> dict[str, np.ndarray]:
    """Run x_raw (N, F), cast to float32; returns every output by name."""
    names = [output.name for output in session.get_outputs()]
    values = session.run(names, {"x": np.ascontiguousarray(x_raw, dtype=np.float32)})
    return dict(zip(names, values, strict=True))


def compare_outputs(
    onnx_outputs: dict[str, np.ndarray], expected: np.ndarray, task: str, tolerance: Tolerance
) -> Verification:
    """Compare ONNX outputs with numpy's: expected is probabilities (N, C) or y (N, T), float64."""
    main_name = "probabilities" if task == "classification" else "y"
    actual = onnx_outputs[main_name].astype(np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"{main_name}: onnx shape {actual.shape} != numpy shape {expected.shape}")
    error = np.abs(actual - expected)
    excess = error - (tolerance.abs + tolerance.rel * np.abs(expected))
    failures = int(np.count_nonzero(~(excess <= 0)))  # NaN counts as a failure
    ranked_excess = np.where(np.isnan(excess), np.inf, excess)
    worst_example = int(np.unravel_index(np.argmax(ranked_excess), excess.shape)[0])
    label_mismatches = 0
    if task == "classification":
        top_two = np.sort(expected, axis=1)[:, -2:]
        clear = (top_two[:, 1] - top_two[:, 0]) > 2 * tolerance.abs
        disagree = onnx_outputs["label"] != np.argmax(expected, axis=1)
        label_mismatches = int(np.count_nonzero(disagree & clear))
    return Verification(
        example_count=expected.shape[0],
        max_abs_error=float(np.max(error)) if error.size else 0.0,
        worst_example=worst_example,
        failures=failures,
        label_mismatches=label_mismatches,
        tolerance=tolerance,
    )
