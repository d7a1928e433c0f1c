"""Drift of a table's columns (a format-2 model: text columns, gaps): the reference read from
`bnserve.drift` "columns" and `bnserve.schema`, raw column values turned into bucket codes, and
the per-column figures. Pure functions; DriftMonitor (monitor.py) keeps the running counts.

Per categorical column the buckets are its kept levels (schema order), `<other>` (levels rare in
training, and levels never seen in training, which the graph sends to the same input), `<missing>`
(empty or a missing token) and, counted apart, `<unseen>`: the PSI is over kept levels, `<other>`
(unseen included) and `<missing>`, each share floored at PSI_FLOOR as for the decile PSI; the
unseen share is reported beside it. Per numeric column the PSI is over (present, missing), so a
missing rate that moves is flagged by the same --drift-psi-threshold as any other PSI; its other
statistics (mean shift, variance ratio, decile PSI) are the feature's, on present values only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnserve.server.modelfile.schema import MISSING, OTHER  # also the share keys in bnserve.drift

PSI_FLOOR = 1e-4  # as monitor.PSI_FLOOR: an empty bucket does not make PSI infinite


class ColumnMetadataError(ValueError):
    """bnserve.drift "columns" or bnserve.schema is malformed; the message says which."""


@dataclass(frozen=True)
class ColumnReference:
    """One used column of the table: its training missing rate and, when categorical, its
    buckets. Categorical codes: 0..K−1 kept levels, K `<other>`, K+1 `<missing>`, K+2 unseen;
    train_shares (K+2,) over the first K+2 (unseen is part of `<other>` in training's terms)."""

    name: str
    kind: str  # "numeric" | "categorical"
    train_missing_rate: float
    feature: int = -1  # numeric: index among the reference's features (graph-input order)
    levels: tuple[str, ...] = ()  # categorical: kept levels in order
    lookup: Mapping[str, int] | None = None  # categorical: cell value -> code (not unseen)
    train_shares: np.ndarray | None = None  # categorical: (K + 2,)

    @property
    def buckets(self) -> int:
        """Codes a categorical column counts: K levels, <other>, <missing>, unseen."""
        return len(self.levels) + 3


@dataclass(frozen=True)
class ColumnsReference:
    """Every used column in the schema's order; numeric ones point at their feature."""

    columns: tuple[ColumnReference, ...]
    na_values: tuple[str, ...]

    @property
    def categorical(self) -> tuple[ColumnReference, ...]:
        return tuple(c for c in self.columns if c.kind == "categorical")

    @property
    def numeric(self) -> tuple[ColumnReference, ...]:
        return tuple(c for c in self.columns if c.kind == "numeric")


def parse_columns(columns: Any, schema_text: str, feature_names: Sequence[str]) -> ColumnsReference:
    """The columns reference from bnserve.drift "columns" (a dict), the bnserve.schema JSON text
    and the drift's numeric feature names (graph-input order); raises ColumnMetadataError."""
    if not isinstance(columns, dict):
        raise ColumnMetadataError('bnserve.drift "columns" is not an object')
    try:
        schema = json.loads(schema_text) if schema_text else {}
    except json.JSONDecodeError as error:
        raise ColumnMetadataError(f"bnserve.schema is not valid JSON ({error})") from None
    if not isinstance(schema, dict):
        raise ColumnMetadataError("bnserve.schema is not an object")
    na_values = ("", *(str(token) for token in schema.get("na_values", ())))
    rare_by_column = {
        str(entry.get("name")): [str(level) for level in entry.get("rare", ())]
        for entry in schema.get("columns", ())
        if isinstance(entry, dict)
    }
    feature_index = {name: i for i, name in enumerate(feature_names)}
    parsed = []
    try:
        for name, entry in columns.items():
            kind = entry["kind"]
            missing_rate = float(entry["missing_rate"])
            if kind == "numeric":
                if name not in feature_index:
                    raise ColumnMetadataError(
                        f'bnserve.drift column {name!r} is numeric but not among "feature_names"'
                    )
                parsed.append(ColumnReference(name, kind, missing_rate, feature_index[name]))
            elif kind == "categorical":
                parsed.append(_categorical(name, entry, missing_rate, rare_by_column, na_values))
            else:
                raise ColumnMetadataError(f"bnserve.drift column {name!r} has kind {kind!r}")
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        if isinstance(error, ColumnMetadataError):
            raise
        raise ColumnMetadataError(f'bnserve.drift "columns" is malformed ({error!r})') from None
    return ColumnsReference(tuple(parsed), na_values)


def _categorical(
    name: str,
    entry: Mapping[str, Any],
    missing_rate: float,
    rare_by_column: Mapping[str, list[str]],
    na_values: tuple[str, ...],
) -> ColumnReference:
    shares = {str(level): float(share) for level, share in entry["levels"].items()}
    levels = tuple(level for level in shares if level not in (OTHER, MISSING))
    count = len(levels)
    lookup: dict[str, int] = {token: count + 1 for token in na_values}
    lookup.update({level: count for level in rare_by_column.get(name, ())})
    lookup.update({level: index for index, level in enumerate(levels)})
    train = np.array(
        [shares[level] for level in levels] + [shares.get(OTHER, 0.0), shares.get(MISSING, 0.0)]
    )
    if not np.isfinite(train).all() or (train < 0).any():
        raise ColumnMetadataError(f"bnserve.drift column {name!r}: shares must be ≥ 0")
    return ColumnReference(name, "categorical", missing_rate, -1, levels, lookup, train)


def level_codes(values: np.ndarray, column: ColumnReference) -> np.ndarray:
    """(N,) int64 codes (ColumnReference) of a categorical column's raw cells: values (N,) or
    (N, 1) of str, bytes (UTF-8) or None (missing); cells are trimmed as training read them."""
    assert column.lookup is not None
    lookup, unseen = column.lookup, len(column.levels) + 2
    cells = np.asarray(values, dtype=object).reshape(-1).tolist()
    get = lookup.get
    codes = [get(cell, -1) for cell in cells]  # the usual cell: a str the lookup has
    if -1 in codes:  # anything else (None, bytes, NaN, untrimmed or unseen text) one by one
        codes = [
            code if code >= 0 else _code(cell, lookup, unseen)
            for code, cell in zip(codes, cells, strict=True)
        ]
    return np.array(codes, dtype=np.int64)


def _code(value: object, lookup: Mapping[str, int], unseen: int) -> int:
    if value is None:
        return lookup[""]
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, float) and value != value:  # NaN in an object column: missing
        return lookup[""]
    text = str(value)
    code = lookup.get(text)
    if code is None:
        code = lookup.get(text.strip(), unseen)
    return code


def categorical_figures(
    column: ColumnReference, counts: np.ndarray, psi_threshold: float, enough: bool
) -> dict[str, Any]:
    """One categorical column's figures from its bucket weights counts (K + 3,): live shares per
    level, PSI over kept levels + <other> (unseen included) + <missing>, unseen and missing rates.
    """
    assert column.train_shares is not None
    total = float(counts.sum())
    count = len(column.levels)
    merged = counts[: count + 2].astype(np.float64)
    merged[count] += counts[count + 2]
    live = merged / total if total else np.zeros_like(merged)
    psi = _psi(live, column.train_shares) if total else 0.0
    names = [*column.levels, OTHER, MISSING]
    levels = [
        {"level": name, "train_share": float(train), "live_share": float(share)}
        for name, train, share in zip(names, column.train_shares, live, strict=True)
    ]
    score = psi / psi_threshold
    return {
        "name": column.name,
        "kind": column.kind,
        "train_missing_rate": column.train_missing_rate,
        "live_missing_rate": float(live[count + 1]),
        "unseen_share": float(counts[count + 2] / total) if total else 0.0,
        "psi": psi,
        "levels": levels,
        "score": score,
        "flagged": bool(enough and score > 1.0),
    }


def numeric_figures(
    column: ColumnReference,
    live_missing_rate: float,
    feature: Mapping[str, Any] | None,
    psi_threshold: float,
    enough: bool,
) -> dict[str, Any]:
    """One numeric column's figures: PSI over (present, missing); its score is the larger of
    that PSI over the threshold and its feature's score (feature: window_report's entry)."""
    train = np.array([1.0 - column.train_missing_rate, column.train_missing_rate])
    live = np.array([1.0 - live_missing_rate, live_missing_rate])
    psi = _psi(live, train)
    score = max(psi / psi_threshold, float(feature["score"]) if feature else 0.0)
    return {
        "name": column.name,
        "kind": column.kind,
        "train_missing_rate": column.train_missing_rate,
        "live_missing_rate": live_missing_rate,
        "unseen_share": 0.0,
        "psi": psi,
        "levels": [],
        "score": score,
        "flagged": bool(enough and score > 1.0),
    }


def _psi(live: np.ndarray, train: np.ndarray) -> float:
    """Σ (p_live − p_train)·ln(p_live / p_train), both floored at PSI_FLOOR."""
    p_live = np.maximum(live, PSI_FLOOR)
    p_train = np.maximum(train, PSI_FLOOR)
    return float(np.sum((p_live - p_train) * np.log(p_live / p_train)))
