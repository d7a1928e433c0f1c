"""The model file's contract: what `export` writes into metadata_props and `server` reads back.

docs/contracts.md ("The ONNX model") documents every key; tests/server/modelfile/test_contract.py
keeps that table and MetadataKey in step. This module imports only numpy and the standard
library, so the exporter may use it and the serving image (no onnx, no training code) carries it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

PREFIX = "bnserve."  # every metadata key starts with it
FORMAT_VERSION = "1"  # bnserve.format of a model taking x [N, F] of numbers without gaps
FORMAT_SCHEMA = "2"  # bnserve.format of a model with bnserve.schema (raw columns, or x with gaps)
FORMAT_VERSIONS = (FORMAT_VERSION, FORMAT_SCHEMA)  # what a reader of this contract accepts
TASKS = (
    "classification",
    "regression",
)  # the source of the list; bnserve.training.config checks it
DRIFT_FORMAT = (
    1  # the "format" inside bnserve.drift (export/distribution.py, server/drift/monitor.py)
)
# The graph's tensors: input x float32 [N, F] of raw features; per task, the outputs in order
# (probabilities float32 [N, C] and label int64 [N], or y float32 [N, T]).
INPUT_NAME = "x"
OUTPUT_NAMES = {"classification": ("probabilities", "label"), "regression": ("y",)}


class MetadataKey(StrEnum):
    """Each `bnserve.*` key, without the prefix (`full` adds it)."""

    FORMAT = "format"
    TASK = "task"
    FEATURE_NAMES = "feature_names"
    CLASS_NAMES = "class_names"  # classification only
    TARGET_NAMES = "target_names"  # regression only
    STATS = "stats"
    BN_MOMENTUM = "bn_momentum"
    RUNNING_VAR = "running_var"
    EPSILON = "epsilon"
    FOLDED = "folded"
    FOLD_MAX_ABS_ERROR = "fold_max_abs_error"
    RUN_ID = "run_id"
    PARAMS_SHA256 = "params_sha256"
    GRAPH_SHA256 = "graph_sha256"
    REFERENCE_INPUTS = "reference_inputs"
    REFERENCE_OUTPUTS = "reference_outputs"
    REFERENCE_TOLERANCE = "reference_tolerance"
    TRAINING = "training"
    CREATED_AT = "created_at"
    DRIFT = "drift"  # absent in models exported before drift monitoring
    SCHEMA = "schema"  # format "2" only: the raw inputs (server/modelfile/schema.py)
    IMPORT = "import"  # models made by `bnserve import` only
    ADAPT = "adapt"  # models made by `bnserve adapt` only
    ENSEMBLE = "ensemble"  # ensembles (`bnserve export` of several runs) only

    @property
    def full(self) -> str:
        """The key as stored in the file: `bnserve.` + the name."""
        return PREFIX + self.value


def output_names_key(task: str) -> MetadataKey:
    """The key naming the outputs: class names (classification) or target names (regression)."""
    return MetadataKey.CLASS_NAMES if task == "classification" else MetadataKey.TARGET_NAMES


@dataclass(frozen=True)
class Tolerance:
    """|served − reference| ≤ abs + rel·|reference| passes, elementwise, in the output's units
    (probabilities, or target units for regression)."""

    abs: float
    rel: float = 0.0

    def bound(self, reference: np.ndarray) -> np.ndarray:
        """The largest |difference| allowed at each value of reference (any shape)."""
        bound: np.ndarray = self.abs + self.rel * np.abs(reference)
        return bound

    def as_json(self) -> str:
        """`{"abs": …}` when rel is 0 (probabilities), else `{"rel": …, "abs": …}`."""
        if self.rel == 0:
            return json.dumps({"abs": self.abs})
        return json.dumps({"rel": self.rel, "abs": self.abs})


def decisive_rows(reference_probabilities: np.ndarray, tolerance: Tolerance) -> np.ndarray:
    """(N,) bool: rows whose label must match the reference's, for probabilities (N, C).

    A label may flip only where the reference's two largest probabilities are within
    2·tolerance.abs: each may move by tolerance.abs, so a nearer tie may swap in float32.
    """
    top_two = np.sort(reference_probabilities, axis=1)[:, -2:]
    decisive: np.ndarray = (top_two[:, 1] - top_two[:, 0]) > 2 * tolerance.abs
    return decisive
