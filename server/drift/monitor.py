"""Covariate-shift monitoring: streaming statistics of what a model version scores, compared with
the training distribution its metadata carries (`bnserve.drift`, docs/contracts.md).

Per input feature: the standardized mean shift |μ_live − μ_train| / σ_train, the variance ratio
σ²_live / σ²_train, the population stability index over the training deciles, and the share of
values outside the training range. Per hidden layer with batch norm: z_norm = (pre − β)/γ, which
has mean 0 and variance 1 per unit on training data; the layer score is the mean over units of
KL(N(m, v) ‖ N(0, 1)) = ½(v + m² − 1 − ln v). A layer sees what the marginals cannot: rows whose
features each look normal but whose combination the network never saw.

A format-2 model (text columns, gaps: docs/contracts.md) also has per-column figures
(columns.py): a numeric feature's statistics are over its present values, and each column's
missing rate, and a categorical column's level shares, are compared with training by PSI.

Two windows: the whole life of the version and a recent one, where each example's weight decays
as exp(−age / window) with age counted in examples scored after it. Rows are buffered and folded
into the sums a chunk at a time with a few numpy calls, so a single-example call costs a copy.
"""

from __future__ import annotations

import json
import logging
import math
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnserve.server.drift.columns import (
    ColumnMetadataError,
    ColumnsReference,
    categorical_figures,
    level_codes,
    numeric_figures,
    parse_columns,
)
from bnserve.server.modelfile.contract import DRIFT_FORMAT
from bnserve.server.observability.logs import LogThrottle
from bnserve.server.settings import ServerSettings, default

log = logging.getLogger(__name__)

CHUNK_ROWS = 64  # rows buffered before the sums are updated
MAX_EDGES = 255  # bin indices are counted in uint8 (the exporter writes ≤ 9 decile edges)
CHECK_INTERVAL_S = 1.0  # thresholds are checked for the log at most this often
PSI_FLOOR = 1e-4  # bin shares are floored here so an empty bin does not make PSI infinite
MIN_VARIANCE = 1e-6  # floor of a unit's live variance inside ln v
WINDOWS = ("life", "recent")  # the keys of DriftMonitor.report()
REEXPORT_HINT = (
    "re-export it from its training run with `bnserve export` (which stores the training "
    "distribution in metadata bnserve.drift)"
)


class DriftMetadataError(ValueError):
    """The model's bnserve.drift entry is missing or malformed; the message says which."""


@dataclass(frozen=True)
class DriftSettings:
    """How a server watches drift: ServerSettings' drift_* fields, whose help says what each
    means and whose defaults these are (server/settings.py states them once)."""

    layers: bool = default("drift_layers")  # also watch hidden layers (a second session)
    window: int = default("drift_window")  # recent window in examples: exp(−age/window)
    sample: float = default("drift_sample")  # share of scoring runs entering the statistics
    shift_threshold: float = default("drift_shift_threshold")  # |μ_live − μ_train| / σ_train
    psi_threshold: float = default("drift_psi_threshold")  # population stability index
    variance_threshold: float = default("drift_variance_threshold")  # σ²_live/σ²_train; 0: off
    layer_threshold: float = default("drift_layer_threshold")  # mean KL score of a layer
    min_examples: int = default("drift_min_examples")  # no flags before a window weighs this
    top_k: int = default("drift_top_k")  # features exported per model version (the worst)
    log_interval_s: float = default("drift_log_interval_s")  # one warning per version per this

    @classmethod
    def of(cls, settings: ServerSettings) -> DriftSettings | None:
        """The server's drift settings (None when drift monitoring is off)."""
        if not settings.drift:
            return None
        return cls(
            layers=settings.drift_layers,
            window=settings.drift_window,
            sample=settings.drift_sample,
            shift_threshold=settings.drift_shift_threshold,
            psi_threshold=settings.drift_psi_threshold,
            variance_threshold=settings.drift_variance_threshold,
            layer_threshold=settings.drift_layer_threshold,
            min_examples=settings.drift_min_examples,
            top_k=settings.drift_top_k,
            log_interval_s=settings.drift_log_interval_s,
        )


@dataclass(frozen=True)
class LayerReference:
    """One hidden layer's frozen statistics; `monitored` marks the units with |γ| ≥ GAMMA_MIN."""

    name: str
    output: str  # graph tensor of the pre-activation γ·ẑ + β: [N, H], [K, N, H] or [N, W(, 1)]
    gamma: np.ndarray  # (H,)
    beta: np.ndarray  # (H,)
    running_mean: np.ndarray  # (H,)
    running_var: np.ndarray  # (H,)
    monitored: np.ndarray  # (H,) bool
    member: int | None = None  # output is a stack [K, N, H]; this layer is output[member]
    # output is the members side by side, [N, W] or [N, W, 1] (W ≥ offset + H): this layer is
    # its columns offset … offset + H − 1
    offset: int | None = None

    @property
    def width(self) -> int:
        return int(self.gamma.size)


GAMMA_MIN = 1e-3  # (pre − β)/γ would only magnify float32 noise for smaller |γ|


@dataclass(frozen=True)
class DriftReference:
    """The training distribution of one model, as parsed from its metadata.

    mean, std: (F,) the standardization (std 1 for a constant column); variance: (F,) the actual
    training variance (0 for a constant column); minimum, maximum: (F,) float32; edges: (F, K)
    float32 padded with +inf, bins: (F,) valid bins per feature (≤ K + 1), shares: (F, K + 1)
    training share per bin (0 past a feature's last bin).
    """

    feature_names: tuple[str, ...]
    source: str
    mean: np.ndarray
    std: np.ndarray
    variance: np.ndarray
    minimum: np.ndarray
    maximum: np.ndarray
    edges: np.ndarray
    bins: np.ndarray
    shares: np.ndarray
    layers: tuple[LayerReference, ...]
    columns: ColumnsReference | None = None  # format-2 models: the table's used columns

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def layer_tensors(self) -> list[tuple[str, int]]:
        """(graph tensor, width) that the layers read, each tensor once, in first-use order."""
        return list({layer.output: layer.width for layer in self.layers}.items())

    @property
    def stacked_tensors(self) -> set[str]:
        """The layer tensors that are stacks [K, N, H] (an ensemble's batched layout)."""
        return {layer.output for layer in self.layers if layer.member is not None}

    @property
    def wide_tensors(self) -> set[str]:
        """The layer tensors that hold several members side by side, [N, W] or [N, W, 1] (an
        ensemble's grouped or blockdiag layout): declared without a shape."""
        return {layer.output for layer in self.layers if layer.offset is not None}


IMPORTED_HINT = (
    "made by `bnserve import`, which has no training split to describe; drift monitoring needs "
    "a model exported from a bnserve training run"
)


def parse_reference(
    text: str, feature_names: Sequence[str], *, imported: bool = False, schema: str = ""
) -> DriftReference:
    """Parse a bnserve.drift JSON value; raises DriftMetadataError naming the problem.

    feature_names: bnserve.feature_names; a format-2 drift value names its (numeric) features
    itself ("feature_names") and has "columns", read with schema (the bnserve.schema text).
    imported: the model came from `bnserve import` (its missing metadata has another remedy)."""
    if not text:
        why = IMPORTED_HINT if imported else f"exported before drift monitoring; {REEXPORT_HINT}"
        raise DriftMetadataError(f"has no bnserve.drift metadata ({why})")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise DriftMetadataError(f"bnserve.drift is not valid JSON ({error})") from None
    if not isinstance(value, dict) or value.get("format") != DRIFT_FORMAT:
        raise DriftMetadataError(
            f"bnserve.drift is not a format-{DRIFT_FORMAT} object; {REEXPORT_HINT}"
        )
    columns: ColumnsReference | None = None
    try:
        if "feature_names" in value:
            feature_names = [str(name) for name in value["feature_names"]]
        if "columns" in value:
            columns = parse_columns(value["columns"], schema, feature_names)
    except ColumnMetadataError as error:
        raise DriftMetadataError(str(error)) from None
    except TypeError as error:
        raise DriftMetadataError(f"bnserve.drift is malformed ({error!r})") from None
    count = len(feature_names)
    try:
        features = value["features"]
        vectors = {
            key: np.asarray(features[key], dtype=np.float64)
            for key in ("mean", "std", "min", "max")
        }
        edge_lists = [np.asarray(edges, dtype=np.float32) for edges in features["edges"]]
        share_lists = [np.asarray(shares, dtype=np.float64) for shares in features["shares"]]
        layers = tuple(_layer(entry) for entry in value["layers"])
    except (KeyError, TypeError, ValueError) as error:
        raise DriftMetadataError(f"bnserve.drift is malformed ({error!r})") from None
    for key, vector in vectors.items():
        if vector.shape != (count,) or not np.isfinite(vector).all():
            raise DriftMetadataError(f"bnserve.drift features.{key} is not {count} finite numbers")
    if len(edge_lists) != count or len(share_lists) != count:
        raise DriftMetadataError(
            f"bnserve.drift features.edges/shares do not list {count} features"
        )
    widest = max((edges.size for edges in edge_lists), default=0)
    if widest > MAX_EDGES:
        raise DriftMetadataError(
            f"bnserve.drift lists {widest} edges for a feature (≤ {MAX_EDGES})"
        )
    padded_edges = np.full((count, widest), np.inf, dtype=np.float32)
    padded_shares = np.zeros((count, widest + 1))
    for index, (edges, shares) in enumerate(zip(edge_lists, share_lists, strict=True)):
        if edges.ndim != 1 or shares.shape != (edges.size + 1,) or np.any(np.diff(edges) <= 0):
            raise DriftMetadataError(
                f"bnserve.drift feature {feature_names[index]!r}: edges must increase and shares "
                "have one entry more"
            )
        padded_edges[index, : edges.size] = edges
        padded_shares[index, : shares.size] = shares
    std = vectors["std"]
    constant = vectors["min"] == vectors["max"]
    return DriftReference(
        feature_names=tuple(feature_names),
        source=str(value.get("source", "")),
        mean=vectors["mean"],
        std=np.where(std > 0, std, 1.0),
        variance=np.where(constant, 0.0, std**2),
        minimum=vectors["min"].astype(np.float32),
        maximum=vectors["max"].astype(np.float32),
        edges=padded_edges,
        bins=np.array([edges.size + 1 for edges in edge_lists]),
        shares=padded_shares,
        layers=layers,
        columns=columns,
    )


def _layer(entry: Mapping[str, Any]) -> LayerReference:
    arrays = {
        key: np.asarray(entry[key], dtype=np.float64)
        for key in ("gamma", "beta", "running_mean", "running_var")
    }
    width = arrays["gamma"].size
    if any(array.shape != (width,) for array in arrays.values()):
        raise ValueError(f"layer {entry['name']!r}: gamma, beta and running stats differ in size")
    member, offset = entry.get("member"), entry.get("offset")
    for key, value in (("member", member), ("offset", offset)):
        if value is not None and (type(value) is not int or value < 0):
            raise ValueError(f"layer {entry['name']!r}: {key} is not a whole number ≥ 0")
    if member is not None and offset is not None:
        raise ValueError(f"layer {entry['name']!r}: has both a member and an offset")
    return LayerReference(
        name=str(entry["name"]),
        output=str(entry["output"]),
        monitored=np.abs(arrays["gamma"]) >= GAMMA_MIN,
        member=member,
        offset=offset,
        **arrays,
    )


def _layer_view(
    tensor: np.ndarray, member: int | None, offset: int | None, width: int
) -> np.ndarray:
    """One layer's pre-activations (N, H), a view: the tensor itself, a stack's member, or the
    columns offset … offset + width − 1 of a wide [N, W] or [N, W, 1] tensor."""
    if member is not None:
        view: np.ndarray = tensor[member]
        return view
    if offset is not None:
        columns: np.ndarray = tensor.reshape(tensor.shape[0], -1)
        return columns[:, offset : offset + width]
    return tensor


class _Layout:
    """Where each per-row statistic sits in a row of the chunk matrix (and in _Sums.values):
    weight 1, outside [min, max] (F), any outside (1), then the values whose squares are also
    summed — u = (x − μ)/σ (F) and per watched layer the pre-activation (H) — then those squares
    in the same order (one multiply squares them all). z_norm = (pre − β)/γ is affine in pre, so
    its mean and variance follow from these at report time: no per-row transform."""

    def __init__(self, feature_count: int, layer_widths: Sequence[int], gaps: bool = False) -> None:
        offset = 0

        def take(width: int) -> slice:
            nonlocal offset
            offset += width
            return slice(offset - width, offset)

        self.weight = take(1)
        self.outside = take(feature_count)
        self.outside_rows = take(1)
        # format 2 (gaps): 1 where a feature is present; u and u² are 0 where it is missing
        self.present = take(feature_count) if gaps else None
        self.u = take(feature_count)
        self.pre = [take(width) for width in layer_widths]
        self.squared_from = slice(self.u.start, offset)
        self.u_squared = take(feature_count)
        self.pre_squared = [take(width) for width in layer_widths]
        self.squared = slice(self.u_squared.start, offset)
        self.width = offset


class _Sums:
    """Weighted sums of the per-row statistics (see _Layout), of the decile bin counts (a last
    bin per feature counts missing values) and of the categorical columns' bucket codes."""

    def __init__(self, layout: _Layout, bins_shape: tuple[int, int], codes: int = 0) -> None:
        self.layout = layout
        self.values = np.zeros(layout.width)
        self.bins = np.zeros(bins_shape)
        self.codes = np.zeros(codes)

    def copy(self) -> _Sums:
        copied = _Sums(self.layout, self.bins.shape, self.codes.size)
        copied.values[:] = self.values
        copied.bins[:] = self.bins
        copied.codes[:] = self.codes
        return copied

    @property
    def present(self) -> np.ndarray:
        """(F,) weight of the present values per feature (every row's without gaps)."""
        if self.layout.present is None:
            return np.full(self.layout.u.stop - self.layout.u.start, self.weight)
        return self.values[self.layout.present]

    @property
    def weight(self) -> float:
        return float(self.values[self.layout.weight][0])

    @property
    def u(self) -> np.ndarray:
        return self.values[self.layout.u]

    @property
    def u_squared(self) -> np.ndarray:
        return self.values[self.layout.u_squared]

    @property
    def outside(self) -> np.ndarray:
        return self.values[self.layout.outside]

    @property
    def outside_rows(self) -> float:
        return float(self.values[self.layout.outside_rows][0])

    @property
    def pre(self) -> list[np.ndarray]:
        return [self.values[part] for part in self.layout.pre]

    @property
    def pre_squared(self) -> list[np.ndarray]:
        return [self.values[part] for part in self.layout.pre_squared]


class DriftMonitor:
    """Streaming drift statistics of one model version; thread-safe.

    `observe(x, preactivations)` takes each scored batch: x (N, F) float32 raw features (NaN:
    missing, for a model with gaps) and, when layers are watched, the graph tensors
    `layer_outputs` names: one (N, H_l) float32 pre-activation per hidden layer, or a stack
    (K, N, H_l) that several layers read a member of (a view, no copy). A mixed model's data
    plane calls `observe_columns` with the raw columns instead. `report()` gives both windows'
    figures.
    """

    def __init__(
        self,
        reference: DriftReference,
        settings: DriftSettings,
        label: str = "model",
        *,
        warn: bool = True,
    ) -> None:
        self.reference = reference
        self.warn = warn  # log a (throttled) warning when the recent window crosses a threshold
        self.settings = settings
        self.label = label  # "model NAME version V", for the log
        self.watch_layers = settings.layers and bool(reference.layers)
        count = reference.num_features
        self._lock = threading.Lock()
        self._x = np.empty((CHUNK_ROWS, count), dtype=np.float32)
        layers = reference.layers if self.watch_layers else ()
        self._filled = 0
        columns = reference.columns
        self._layout = _Layout(count, [layer.width for layer in layers], gaps=columns is not None)
        self._categorical = columns.categorical if columns is not None else ()
        buckets = [column.buckets for column in self._categorical]
        self._code_offsets = np.cumsum([0, *buckets])[:-1].astype(np.intp)
        self._codes = np.zeros((CHUNK_ROWS, len(buckets)), dtype=np.intp)
        tensors = [name for name, _ in reference.layer_tensors] if self.watch_layers else []
        # per watched layer: (index into layer_outputs, member of a stack or None, offset into
        # a wide tensor or None, width)
        self._sources = [
            (tensors.index(layer.output), layer.member, layer.offset, layer.width)
            for layer in layers
        ]
        self._tensor_names = tensors
        self._chunk = np.zeros((CHUNK_ROWS, self._layout.width))
        # observe writes pre-activations straight into their columns of the chunk matrix
        self._pre = [self._chunk[:, part] for part in self._layout.pre]
        self._chunk[:, self._layout.weight] = 1.0
        self._missing_bin = reference.shares.shape[1]  # one bin past the deciles: missing
        bins_shape = (count, self._missing_bin + 1)
        self._life = _Sums(self._layout, bins_shape, sum(buckets))
        self._recent = _Sums(self._layout, bins_shape, sum(buckets))
        self._bin_offsets = np.arange(count) * bins_shape[1]
        self._edges_by_rank = np.ascontiguousarray(reference.edges.T)[:, None, :]  # (K, 1, F)
        self._full_chunk_weights: np.ndarray | None = None
        self._throttle = LogThrottle(settings.log_interval_s)
        self._next_check_at = 0.0
        self._sample = settings.sample
        self._random = random.Random()

    @property
    def layer_outputs(self) -> list[str]:
        """Graph tensors `observe` wants, in order (empty when layers are not watched)."""
        return list(self._tensor_names)

    def sampled(self) -> bool:
        """Whether this scoring run's rows should enter the statistics."""
        return self._sample >= 1.0 or self._random.random() < self._sample

    def observe(self, x: np.ndarray, preactivations: Sequence[np.ndarray] | None = None) -> None:
        """Add a scored batch: x (N, F) float32 (NaN: missing, for a model with gaps);
        preactivations the `layer_outputs` tensors."""
        if self._categorical:
            raise ValueError(f"{self.label}: a model with text columns takes observe_columns")
        self._observe(x, None, preactivations)

    def observe_columns(
        self,
        columns: Mapping[str, np.ndarray],
        preactivations: Sequence[np.ndarray] | None = None,
    ) -> None:
        """Add a scored batch of a format-2 model by column, as its graph inputs take them:
        columns maps each used column name to its N raw cells, shape (N,) or (N, 1) — numeric
        ones as numbers (NaN or None: missing), categorical ones as str or UTF-8 bytes (None,
        "" or a missing token of bnserve.schema: missing; a level training never had: unseen).
        Extra names are ignored; preactivations as for `observe`. The cells must have passed the
        data plane's checks (a column missing here raises KeyError)."""
        reference = self.reference
        names = reference.feature_names
        first = next(iter(columns.values()))
        rows = first.size if isinstance(first, np.ndarray) else len(first)
        numeric = [columns[name] for name in names]
        if numeric and all(
            [isinstance(cells, np.ndarray) and cells.dtype == np.float32 for cells in numeric]
        ):  # the data plane's columns: one copy for all of them
            x = np.concatenate([cells.reshape(rows, 1) for cells in numeric], axis=1)
        else:
            x = np.empty((rows, len(names)), dtype=np.float32)
            for index, cells in enumerate(numeric):
                x[:, index] = _numbers(cells)
        codes = np.empty((rows, len(self._categorical)), dtype=np.intp)
        for index, column in enumerate(self._categorical):
            codes[:, index] = level_codes(columns[column.name], column)
        self._observe(x, codes, preactivations)

    def _observe(
        self,
        x: np.ndarray,
        codes: np.ndarray | None,
        preactivations: Sequence[np.ndarray] | None,
    ) -> None:
        """Buffer x (N, F), codes (N, C) of the categorical columns (None: no such column)
        and the pre-activations, flushing full chunks."""
        wanted = len(self._tensor_names)
        if self.watch_layers and (preactivations is None or len(preactivations) != wanted):
            raise ValueError(f"{self.label}: observe needs {wanted} pre-activation tensors")
        tensors = preactivations or ()
        pres = [
            _layer_view(tensors[index], member, offset, width)
            for index, member, offset, width in self._sources
        ]
        rows = x.shape[0]
        flushed = False
        with self._lock:
            filled = self._filled
            if filled + rows < CHUNK_ROWS:  # the common case: it fits, one copy per array
                self._x[filled : filled + rows] = x
                if codes is not None:
                    self._codes[filled : filled + rows] = codes
                for buffer, pre in zip(self._pre, pres, strict=False):
                    buffer[filled : filled + rows] = pre
                self._filled = filled + rows
                return
            start = 0
            while start < rows:
                take = min(CHUNK_ROWS - self._filled, rows - start)
                end = self._filled + take
                self._x[self._filled : end] = x[start : start + take]
                if codes is not None:
                    self._codes[self._filled : end] = codes[start : start + take]
                for buffer, pre in zip(self._pre, pres, strict=False):
                    buffer[self._filled : end] = pre[start : start + take]
                self._filled = end
                start += take
                if self._filled == CHUNK_ROWS:
                    self._flush()
                    flushed = True
        if flushed and self.warn:
            self._maybe_warn()

    def _flush(self) -> None:
        """Fold the buffered rows into both windows (lock held)."""
        rows = self._filled
        if rows == 0:
            return
        self._filled = 0
        reference = self.reference
        x = self._x[:rows]
        recent_weights = self._recent_weights(rows)
        decay = math.exp(-rows / self.settings.window)
        layout, chunk = self._layout, self._chunk[:rows]
        present = None
        if layout.present is not None:  # gaps: a missing value adds to neither u nor its range
            present = ~np.isnan(x)
            chunk[:, layout.present] = present
            x = np.where(present, x, reference.mean.astype(np.float32))
        np.divide(x - reference.mean, reference.std, out=chunk[:, layout.u])
        np.square(chunk[:, layout.squared_from], out=chunk[:, layout.squared])
        outside = (x < reference.minimum) | (x > reference.maximum)
        chunk[:, layout.outside] = outside
        chunk[:, layout.outside_rows] = outside.any(axis=1, keepdims=True)
        # bin of each value: how many of its feature's edges lie below it (+inf pads never do).
        # Comparing against (K, 1, F) edges and summing over the outer axis as uint8 adds whole
        # contiguous planes (several times faster than reducing a trailing axis of length K).
        below = x[None, :, :] > self._edges_by_rank
        bin_index = below.view(np.uint8).sum(axis=0, dtype=np.uint8).astype(np.intp)
        if present is not None:
            bin_index[~present] = self._missing_bin
        flat_bins = (bin_index + self._bin_offsets).ravel()
        life, recent = self._life, self._recent
        life.values += recent_weights[0] @ chunk  # two matrix-vector products: BLAS gemv
        recent.values *= decay
        recent.values += recent_weights[1] @ chunk
        size, shape = life.bins.size, life.bins.shape
        life.bins += np.bincount(flat_bins, minlength=size).reshape(shape)
        recent.bins *= decay
        recent.bins += np.bincount(
            flat_bins, weights=np.repeat(recent_weights[1], x.shape[1]), minlength=size
        ).reshape(shape)
        if self._categorical:
            flat_codes = (self._codes[:rows] + self._code_offsets).ravel()
            size = life.codes.size
            life.codes += np.bincount(flat_codes, minlength=size)
            recent.codes *= decay
            recent.codes += np.bincount(
                flat_codes,
                weights=np.repeat(recent_weights[1], len(self._categorical)),
                minlength=size,
            )

    def _recent_weights(self, rows: int) -> np.ndarray:
        """(2, rows): ones, and each row's recent-window weight once all `rows` are in,
        exp(−(rows − 1 − i)/window); cached for full chunks."""
        if rows == CHUNK_ROWS and self._full_chunk_weights is not None:
            return self._full_chunk_weights
        ages = np.arange(rows - 1, -1, -1, dtype=np.float64)
        weights = np.stack([np.ones(rows), np.exp(-ages / self.settings.window)])
        if rows == CHUNK_ROWS:
            self._full_chunk_weights = weights
        return weights

    def _maybe_warn(self) -> None:
        """Log (throttled) when the recent window has flagged features or layers."""
        now = time.monotonic()
        if now < self._next_check_at:
            return
        report = self.report()["recent"]
        if report["examples"] >= self.settings.min_examples:
            self._next_check_at = now + CHECK_INTERVAL_S  # before that, check every chunk
        if not (
            report["flagged_features"] or report["flagged_layers"] or report["flagged_columns"]
        ):
            return
        held_back = self._throttle.admit(self.label)
        if held_back is None:
            return
        worst = sorted(report["features"], key=lambda f: -f["score"])
        parts = [
            f"{f['name']} (shift {f['mean_shift']:.2f}σ, variance ×{f['variance_ratio']:.2f}, "
            f"PSI {f['psi']:.2f})"
            for f in worst
            if f["flagged"]
        ][:5]
        parts += [
            f"column {c['name']} (PSI {c['psi']:.2f}, missing {c['live_missing_rate']:.1%}, "
            f"unseen {c['unseen_share']:.1%})"
            for c in report["columns"]
            if c["flagged"]
        ][:5]
        parts += [
            f"layer {layer['name']} score {layer['score']:.3f}"
            for layer in report["layers"]
            if layer["flagged"]
        ]
        log.warning(
            "drift: %s, recent window of %.0f examples: %d feature(s), %d column(s) and "
            "%d layer(s) past threshold: %s%s",
            self.label,
            report["examples"],
            len(report["flagged_features"]),
            len(report["flagged_columns"]),
            len(report["flagged_layers"]),
            "; ".join(parts),
            f" ({held_back} more such warnings held back)" if held_back else "",
        )

    def report(self) -> dict[str, Any]:
        """{"life": window, "recent": window}; see `window_report` for a window's keys."""
        with self._lock:
            self._flush()
            sums = {"life": self._life.copy(), "recent": self._recent.copy()}
        return {name: window_report(self.reference, self.settings, s) for name, s in sums.items()}


def window_report(
    reference: DriftReference, settings: DriftSettings, sums: _Sums
) -> dict[str, Any]:
    """One window's figures: examples, out_of_range_share, score, flagged_features,
    flagged_layers, flagged_columns, features (one dict per feature in model order; statistics
    over present values), layers and columns (format 2: one dict per used column, columns.py;
    empty otherwise)."""
    weight = sums.weight
    enough = weight >= settings.min_examples
    present = sums.present
    counted = np.where(present > 0, present, 1.0)  # an empty sum over 1 is 0
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_u = sums.u / counted
        variance_u = np.maximum(sums.u_squared / counted - mean_u**2, 0.0)
        live_mean = reference.mean + reference.std * mean_u
        live_variance = variance_u * reference.std**2
        shift = np.abs(mean_u)
        ratio = np.where(
            reference.variance > 0,
            live_variance / np.where(reference.variance > 0, reference.variance, 1.0),
            np.where(live_variance > 0, np.inf, 1.0),
        )
        live_shares = sums.bins[:, : reference.shares.shape[1]] / counted[:, None]
        valid = np.arange(reference.shares.shape[1])[None, :] < reference.bins[:, None]
        p_live = np.maximum(live_shares, PSI_FLOOR)
        p_train = np.maximum(reference.shares, PSI_FLOOR)
        psi = np.where(valid, (p_live - p_train) * np.log(p_live / p_train), 0.0).sum(axis=1)
        psi = np.where(present > 0, psi, 0.0)
        outside = sums.outside / weight if weight else np.zeros_like(sums.outside)
    parts = [shift / settings.shift_threshold, psi / settings.psi_threshold]
    if settings.variance_threshold > 0:
        parts.append(ratio / settings.variance_threshold)
    score = np.maximum.reduce(parts)
    flagged = score > 1.0 if enough else np.zeros(score.shape, dtype=bool)
    features = [
        {
            "name": name,
            "train_mean": float(reference.mean[i]),
            "train_std": float(math.sqrt(reference.variance[i])),
            "live_mean": float(live_mean[i]),
            "live_std": float(math.sqrt(live_variance[i])),
            "mean_shift": float(shift[i]),
            "variance_ratio": float(ratio[i]),
            "psi": float(psi[i]),
            "out_of_range_share": float(outside[i]),
            "score": float(score[i]),
            "flagged": bool(flagged[i]),
        }
        for i, name in enumerate(reference.feature_names)
    ]
    layers = []
    watched = reference.layers[: len(sums.pre)]  # none when layers are not watched
    for layer, pre_sum, pre_squared_sum in zip(watched, sums.pre, sums.pre_squared, strict=True):
        kept = layer.monitored
        if weight:
            pre_mean = pre_sum[kept] / weight
            pre_variance = np.maximum(pre_squared_sum[kept] / weight - pre_mean**2, 0.0)
            unit_mean = (pre_mean - layer.beta[kept]) / layer.gamma[kept]
            unit_variance = pre_variance / layer.gamma[kept] ** 2
            floored = np.maximum(unit_variance, MIN_VARIANCE)
            layer_score = float(np.mean(0.5 * (floored + unit_mean**2 - 1.0 - np.log(floored))))
        else:
            unit_mean = unit_variance = np.zeros(int(kept.sum()))
            layer_score = 0.0
        layers.append(
            {
                "name": layer.name,
                "units": int(unit_mean.size),
                "unit_mean": unit_mean.tolist(),
                "unit_variance": unit_variance.tolist(),
                "score": layer_score,
                "flagged": bool(
                    weight >= settings.min_examples and layer_score > settings.layer_threshold
                ),
            }
        )
    columns = _column_figures(reference, settings, sums, features, enough)
    worst = max([float(score.max(initial=0.0))] + [c["score"] for c in columns])
    return {
        "examples": float(weight),
        "out_of_range_share": float(sums.outside_rows / weight) if weight else 0.0,
        "score": worst if weight else 0.0,
        "flagged_features": [f["name"] for f in features if f["flagged"]],
        "flagged_layers": [layer["name"] for layer in layers if layer["flagged"]],
        "flagged_columns": [c["name"] for c in columns if c["flagged"]],
        "features": features,
        "layers": layers,
        "columns": columns,
    }


def _column_figures(
    reference: DriftReference,
    settings: DriftSettings,
    sums: _Sums,
    features: Sequence[Mapping[str, Any]],
    enough: bool,
) -> list[dict[str, Any]]:
    """Format 2: one dict per used column in the schema's order (columns.py); else none."""
    if reference.columns is None:
        return []
    weight = sums.weight
    present = sums.present
    figures = []
    offset = 0
    for column in reference.columns.columns:
        if column.kind == "numeric":
            rate = float(1.0 - present[column.feature] / weight) if weight else 0.0
            figures.append(
                numeric_figures(
                    column, rate, features[column.feature], settings.psi_threshold, enough
                )
            )
        else:
            counts = sums.codes[offset : offset + column.buckets]
            offset += column.buckets
            figures.append(categorical_figures(column, counts, settings.psi_threshold, enough))
    return figures


def _numbers(values: Any) -> np.ndarray:
    """(N,) float32 of a numeric column's cells (None: NaN)."""
    array = np.asarray(values)
    if array.dtype == object:
        array = np.array([np.nan if v is None else v for v in array.reshape(-1)], dtype=float)
    return array.astype(np.float32, copy=False).reshape(-1)
