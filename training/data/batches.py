"""Rows of a split read on demand: standardized mini-batches, one-pass statistics, chunked scoring.

The features stay where they were loaded (an array in memory or the float32 cache file);
nothing here copies a whole split. Work over many rows goes in chunks of CHUNK_BYTES, so
memory is bounded by the chunk, not by the data. A split that fits in one chunk is
computed exactly as on a whole array (np.mean/np.std, model.population_statistics); larger
ones merge per-chunk moments (Chan et al.) in float64, in one pass per quantity.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnserve.training import layers, model
from bnserve.training.data.cache import FeatureRows
from bnserve.training.data.encoding import Encoder
from bnserve.training.data.loading import unit_std_where_constant
from bnserve.training.data.schema import NumberMoments
from bnserve.training.inference import predict
from bnserve.training.layers import RunningStats
from bnserve.training.scaling import apply_clip, robust_statistics

CHUNK_BYTES = 8 << 20  # float64 bytes per chunk for statistics and scoring (64 features: 16k rows)
WINDOW_BYTES = 8 << 20  # raw float32 rows gathered at once for the coming mini-batches
# robust scaling's quantiles: exact over the training rows up to this many float64 bytes of
# numeric inputs, else over a seeded uniform sample of rows that size (rank error ≈ 1/√rows)
QUANTILE_BYTES = 64 << 20
QUANTILE_SAMPLE_SEED = 0
DTYPE = np.float32  # training arithmetic
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


@dataclass(frozen=True)
class Rows:
    """Rows `index` (n,) ascending of x (N, F), encoded (a table with text columns, gaps or
    columns left out: data/encoding.py) into D inputs, standardized with mean/std (D,) when read,
    then smooth-clipped where clip (D,) is 1 (robust scaling: training/scaling.py).
    Without an encoder D = F and the rows are x's own."""

    x: FeatureRows  # (N, F) raw features, float32/float64: an array, cache.RowFile or ColumnRows
    index: np.ndarray  # (n,) int64 row numbers of x
    mean: np.ndarray  # (D,) float64 (robust: the median)
    std: np.ndarray  # (D,) float64 (robust: the quantile scale)
    encoder: Encoder | None = None
    clip: np.ndarray | None = None  # (D,) float64 0/1; None: standard scaling, no clip

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, int]:
        """(n, D), as if the rows were an array."""
        width = self.x.shape[1] if self.encoder is None else self.encoder.width
        return (len(self.index), width)

    def inputs(self, rows: np.ndarray) -> np.ndarray:
        """Unstandardized float64 inputs (len(rows), D) of x's rows `rows`: a fresh copy."""
        if self.encoder is None:
            return np.asarray(self.x[rows], dtype=np.float64)
        return self.encoder.encode(np.asarray(self.x[rows]))

    def take(self, positions: np.ndarray | slice) -> np.ndarray:
        """Standardized float32 rows (len(positions), D) at these positions of the split."""
        values = self.inputs(self.index[positions])
        values -= self.mean  # in place: the same float64 arithmetic as (x - mean) / std
        values /= self.std
        return apply_clip(values, self.clip).astype(DTYPE)

    def raw_chunks(self, size: int | None = None) -> Iterator[np.ndarray]:
        """Consecutive unstandardized float64 chunks (≤ size, D) in row order."""
        size = size or chunk_rows(self.shape[1])
        for start in range(0, len(self.index), size):
            yield self.inputs(self.index[start : start + size])

    def chunks(self, size: int | None = None) -> Iterator[np.ndarray]:
        """Consecutive standardized float32 chunks (≤ size, F) in row order."""
        size = size or chunk_rows(self.shape[1])
        for start in range(0, len(self.index), size):
            yield self.take(slice(start, start + size))


def release_freed_memory() -> None:
    """Keep glibc from holding on to freed chunk-sized arrays.

    glibc raises its mmap threshold after a large block is freed, so later chunks come from
    the heap, which it does not give back: peak RSS crept up by a chunk per phase. A fixed
    1 MiB threshold keeps every chunk an mmap of its own, returned when freed.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):
        pass  # not glibc


def chunk_rows(features: int) -> int:
    """Rows per chunk: CHUNK_BYTES of float64 values."""
    return max(256, CHUNK_BYTES // (8 * max(1, features)))


def shuffled_batches(
    rows: Rows, y: np.ndarray, order: np.ndarray, slices: list[slice]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(x, y) of each mini-batch `order[s]` for s in slices, standardized float32.

    The rows of many consecutive batches (WINDOW_BYTES of them) are gathered in one read, in
    file order, so a shuffled epoch over data larger than memory reads the file in sweeps
    instead of a page per row. The values are exactly those of gathering batch by batch.
    """
    window_rows = max(1, WINDOW_BYTES // (4 * max(1, rows.shape[1])))
    start = 0
    while start < len(slices):
        stop = start
        first = slices[start].start
        while stop < len(slices) and slices[stop].stop - first <= max(
            window_rows, slices[start].stop - first
        ):
            stop += 1
        last = slices[stop - 1].stop
        window = rows.take(order[first:last])
        for part in slices[start:stop]:
            local = slice(part.start - first, part.stop - first)
            yield window[local], y[order[part]]
        start = stop


class Moments:
    """Count, mean, sum of squared deviations (float64), minimum and maximum, merged chunk by
    chunk."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self.minimum: np.ndarray = np.zeros(0)
        self.maximum: np.ndarray = np.zeros(0)

    def add(self, chunk: np.ndarray) -> None:
        """Merge a chunk (B, F) (Chan, Golub and LeVeque's pairwise update)."""
        values = np.asarray(chunk)
        count = len(values)
        if count == 0:
            return
        mean = values.mean(axis=0, dtype=np.float64)
        centered = values - mean  # float64: the one temporary
        m2 = np.einsum("ij,ij->j", centered, centered)
        minimum, maximum = values.min(axis=0), values.max(axis=0)
        if self.mean is None or self.m2 is None:
            self.n, self.mean, self.m2 = count, mean, m2
            self.minimum, self.maximum = minimum, maximum
            return
        self.minimum = np.minimum(self.minimum, minimum)
        self.maximum = np.maximum(self.maximum, maximum)
        total = self.n + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta**2 * (self.n * count / total)
        self.n = total

    def variance(self) -> np.ndarray:
        """The biased (1/n) variance."""
        assert self.m2 is not None
        return self.m2 / self.n


def fit_standardization(
    x: FeatureRows,
    index: np.ndarray,
    encoder: Encoder | None = None,
    moments: NumberMoments | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-input mean and std (D,) float64 of rows `index` of x (encoded when an encoder is
    given); a constant input gets std 1, and so do one-hot and indicator inputs, with mean 0.

    One pass over the rows in chunks; within one chunk the same as np.mean and np.std. With
    an encoder only the numeric values are encoded and measured (the one-hot inputs would be
    set to 0 and 1 anyway): a table with text columns of many levels has D in the thousands.
    moments: the schema's pass over the same rows (schema.NumberMoments); with it, numeric
    columns stored as numbers are not read again (a text column of numbers still is).
    """
    if encoder is not None:
        mean = np.zeros(encoder.width)
        std = np.ones(encoder.width)
        numbers = [column for column in encoder.columns if column.schema.kind == "numeric"]
        if moments is not None and all(column.value_of_code is None for column in numbers):
            for column in numbers:  # no pass: the schema's pass measured these values
                fill = column.schema.fill if column.schema.fill is not None else 0.0
                column_mean, column_std, low, high = moments.filled(column.position, fill)
                mean[column.offset] = column_mean
                std[column.offset] = unit_std_where_constant(
                    np.array([column_std]), np.array([low]), np.array([high])
                )[0]
            return mean, std
        numeric = NumericRows(x, index, encoder)
        mean[encoder.standardized_inputs], std[encoder.standardized_inputs] = _fit(numeric)
        return mean, std
    return _fit(Rows(x, index, np.zeros(0), np.zeros(0)))


def fit_robust_scaling(
    x: FeatureRows, index: np.ndarray, encoder: Encoder | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robust scaling of rows `index` of x: median, scale and clip mask (D,) float64
    (training/scaling.py); one-hot and indicator inputs get median 0, scale 1 and no clip.

    Exact (np.median, np.quantile) when the rows' numeric inputs fit in QUANTILE_BYTES, the case
    of every table that fits in memory comfortably; larger splits are measured on a seeded
    uniform sample of that many bytes of rows, read in ascending order (one sweep of the file)."""
    rows: Rows | NumericRows
    if encoder is None:
        rows = Rows(x, index, np.zeros(0), np.zeros(0))
    else:
        rows = NumericRows(x, index, encoder)
    width = rows.shape[1]
    limit = max(1, QUANTILE_BYTES // (8 * max(1, width)))
    picked = index
    if len(index) > limit:
        rng = np.random.default_rng(QUANTILE_SAMPLE_SEED)
        picked = np.sort(rng.choice(index, size=limit, replace=False))
    values = np.concatenate(
        [rows.inputs(picked[start : start + chunk_rows(width)])
         for start in range(0, len(picked), chunk_rows(width))]
        or [np.zeros((0, width))]
    )  # fmt: skip
    centre, scale = robust_statistics(values)
    if encoder is None:
        return centre, scale, np.ones(width)
    median, spread, clip = np.zeros(encoder.width), np.ones(encoder.width), np.zeros(encoder.width)
    numeric = encoder.standardized_inputs
    median[numeric], spread[numeric], clip[numeric] = centre, scale, 1.0
    return median, spread, clip


class NumericRows:
    """Rows' standardized inputs only (Encoder.standardized_values), chunk by chunk."""

    def __init__(self, x: FeatureRows, index: np.ndarray, encoder: Encoder) -> None:
        self.x, self.index, self.encoder = x, index, encoder
        self.shape = (len(index), int(encoder.standardized_inputs.sum()))

    def inputs(self, rows: np.ndarray) -> np.ndarray:
        return self.encoder.standardized_values(np.asarray(self.x[rows]))

    def raw_chunks(self, size: int | None = None) -> Iterator[np.ndarray]:
        size = size or chunk_rows(self.shape[1])
        for start in range(0, len(self.index), size):
            yield self.inputs(self.index[start : start + size])


def _fit(rows: Rows | NumericRows) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (width,) of the rows' unstandardized inputs (std 1 where constant)."""
    index = rows.index
    size = chunk_rows(rows.shape[1])
    if len(index) <= size:
        values = rows.inputs(index)
        mean, std = values.mean(axis=0), values.std(axis=0)
        minimum, maximum = values.min(axis=0), values.max(axis=0)
    else:
        moments = Moments()
        for chunk in rows.raw_chunks(size):
            moments.add(chunk)
        assert moments.mean is not None
        mean, std = moments.mean, np.sqrt(moments.variance())
        minimum, maximum = moments.minimum, moments.maximum
    return mean, unit_std_where_constant(std, minimum, maximum)


def scores(params: dict[str, np.ndarray], rows: Rows, spec: model.NetSpec) -> np.ndarray:
    """Test-mode scores (n, C or T) of standardized rows, chunk by chunk."""
    parts = [model.forward(params, chunk, spec, train=False)[0] for chunk in rows.chunks()]
    if not parts:
        return np.zeros((0, params["output.b"].shape[0]), dtype=DTYPE)
    return np.concatenate(parts)


def predictions(params: dict[str, np.ndarray], meta: dict[str, Any], rows: Rows) -> np.ndarray:
    """inference.predict (float64, raw features) over the rows, chunk by chunk."""
    parts = [predict(params, meta, chunk) for chunk in rows.raw_chunks()]
    if not parts:
        return np.zeros((0, params["output.b"].shape[0]))
    return np.concatenate(parts)


def population_statistics(
    params: dict[str, np.ndarray], rows: Rows, spec: model.NetSpec
) -> dict[str, np.ndarray]:
    """model.population_statistics over the rows: one pass per hidden layer, chunk by chunk.

    Layer i's z is computed with layers 1..i-1 already normalized by their population
    statistics, as in the in-memory version (which a split of one chunk uses as it is).
    """
    if len(rows) <= chunk_rows(rows.shape[1]):
        return model.population_statistics(params, rows.take(slice(None)), spec)
    activation_forward = layers.ACTIVATION_FUNCTIONS[spec.activation][0]
    stats: dict[str, np.ndarray] = {}
    for i in range(1, spec.n_hidden + 1):
        moments = Moments()
        for chunk in rows.chunks():
            a = chunk
            for j in range(1, i + 1):
                z, _ = layers.affine_forward(a, params[f"hidden{j}.W"])
                if j == i:
                    moments.add(z)
                    break
                state = RunningStats(
                    stats[f"hidden{j}.running_mean"], stats[f"hidden{j}.running_var"]
                )
                z, _, _ = layers.batchnorm_forward(
                    z,
                    params[f"hidden{j}.gamma"],
                    params[f"hidden{j}.beta"],
                    state,
                    spec.bn,
                    train=False,
                )
                a, _ = activation_forward(z)
        var = moments.variance()
        if spec.bn.unbiased and moments.n > 1:
            var = var * (moments.n / (moments.n - 1))
        assert moments.mean is not None
        stats[f"hidden{i}.running_mean"] = moments.mean.astype(DTYPE)
        stats[f"hidden{i}.running_var"] = var.astype(DTYPE)
    return stats
