"""Column drift of a format-2 model (text columns and gaps), from its metadata alone.

The bnserve.drift and bnserve.schema values are written here as docs/contracts.md fixes them
(the drift code reads only the metadata, not the graph). Live rows double one level's share in
one categorical column and raise one numeric column's missing rate to 30%: exactly those two
columns are flagged, and every figure equals numpy's on the same cells.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from bnserve.server.drift.columns import level_codes
from bnserve.server.drift.monitor import (
    DriftMetadataError,
    DriftMonitor,
    DriftSettings,
    parse_reference,
)

ROWS = 20_000
NA_VALUES = ["", "NA", "NaN", "nan", "null", "NULL", "None", "?"]
COLOR_LEVELS = ["blue", "green", "red"]  # kept; "teal" is rare (<other>); missing 4%
COLOR_SHARES = [0.40, 0.30, 0.20, 0.06, 0.04]  # blue, green, red, teal, missing
SIZE_LEVELS = ["L", "M", "S", "XL"]  # no rare level, no missing cell
SIZE_SHARES = [0.25, 0.25, 0.25, 0.25]
PSI_THRESHOLD = 0.25  # the server's default


def _draw(rng: np.random.Generator, values: list[str], shares: list[float]) -> np.ndarray:
    return np.asarray(rng.choice(np.array(values, dtype=object), size=ROWS, p=shares))


def _table(rng: np.random.Generator, *, weight_missing: float, blue: float) -> dict[str, Any]:
    """Raw columns as a data plane passes them: numbers with NaN gaps, strings with tokens."""
    height = rng.normal(170.0, 10.0, ROWS)
    weight = rng.normal(70.0, 12.0, ROWS)
    weight[rng.random(ROWS) < weight_missing] = np.nan
    rest = 1.0 - blue
    color_shares = [blue] + [s * rest / (1.0 - COLOR_SHARES[0]) for s in COLOR_SHARES[1:]]
    color = _draw(rng, [*COLOR_LEVELS, "teal", "NA"], color_shares)
    size = _draw(rng, SIZE_LEVELS, SIZE_SHARES)
    return {"height": height, "weight": weight, "color": color, "size": size}


def _decile_reference(values: np.ndarray) -> dict[str, Any]:
    present = values[~np.isnan(values)]
    edges = np.quantile(present, np.linspace(0.1, 0.9, 9))
    bins = (present[:, None] > edges[None, :]).sum(axis=1)
    shares = np.bincount(bins, minlength=10) / present.size
    return {
        "mean": float(present.mean()),
        "std": float(present.std()),
        "min": float(present.min()),
        "max": float(present.max()),
        "edges": edges.astype(np.float32).tolist(),
        "shares": shares.tolist(),
    }


def _metadata(train: dict[str, Any]) -> tuple[str, str]:
    """(bnserve.drift, bnserve.schema) of a model trained on `train`, per docs/contracts.md."""
    numeric = ["height", "weight"]
    per_feature = [_decile_reference(np.asarray(train[name], dtype=float)) for name in numeric]
    features = {key: [f[key] for f in per_feature] for key in per_feature[0]}
    color, size = train["color"], train["size"]
    color_missing = float(np.isin(color, NA_VALUES).mean())
    columns = {
        "height": {"kind": "numeric", "missing_rate": 0.0},
        "weight": {"kind": "numeric", "missing_rate": float(np.isnan(train["weight"]).mean())},
        "color": {
            "kind": "categorical",
            "missing_rate": color_missing,
            "levels": {
                **{level: float((color == level).mean()) for level in COLOR_LEVELS},
                "<other>": float((color == "teal").mean()),
                "<missing>": color_missing,
            },
        },
        "size": {
            "kind": "categorical",
            "missing_rate": 0.0,
            "levels": {level: float((size == level).mean()) for level in SIZE_LEVELS},
        },
    }
    drift = {
        "format": 1,
        "source": "training split",
        "feature_names": numeric,
        "features": features,
        "layers": [],
        "columns": columns,
    }
    schema = {
        "version": 1,
        "na_values": NA_VALUES,
        "inputs": [
            {"name": "height", "kind": "numeric"},
            {"name": "weight", "kind": "numeric"},
            {"name": "color", "kind": "categorical"},
            {"name": "size", "kind": "categorical"},
        ],
        "columns": [
            {"name": "height", "kind": "numeric", "missing_count": 0, "fill": 170.0},
            {"name": "weight", "kind": "numeric", "missing_count": 1, "fill": 70.0},
            {"name": "color", "kind": "categorical", "rare": ["teal"], "levels": []},
            {"name": "size", "kind": "categorical", "rare": [], "levels": []},
        ],
    }
    return json.dumps(drift), json.dumps(schema)


@pytest.fixture(scope="module")
def metadata() -> tuple[str, str]:
    train = _table(np.random.default_rng(0), weight_missing=0.05, blue=COLOR_SHARES[0])
    return _metadata(train)


def _psi(live: np.ndarray, train: np.ndarray) -> float:
    live, train = np.maximum(live, 1e-4), np.maximum(train, 1e-4)
    return float(np.sum((live - train) * np.log(live / train)))


def _observe(metadata: tuple[str, str], live: dict[str, Any], chunk: int = 777) -> dict:
    drift, schema = metadata
    reference = parse_reference(drift, ["ignored"], schema=schema)
    monitor = DriftMonitor(reference, DriftSettings(), "test", warn=False)
    for start in range(0, ROWS, chunk):  # batches of an odd size cross the chunk boundary
        monitor.observe_columns({name: v[start : start + chunk] for name, v in live.items()})
    life: dict = monitor.report()["life"]
    return life


def test_a_doubled_level_and_a_missing_rate_of_30_percent_flag_exactly_those_columns(
    metadata: tuple[str, str],
) -> None:
    live = _table(np.random.default_rng(1), weight_missing=0.30, blue=2 * COLOR_SHARES[0])
    report = _observe(metadata, live)
    assert report["flagged_columns"] == ["weight", "color"]
    assert report["flagged_features"] == []  # present weights look like training
    drift = json.loads(metadata[0])
    by_name = {column["name"]: column for column in report["columns"]}
    assert [c["name"] for c in report["columns"]] == ["height", "weight", "color", "size"]

    # numeric: missing rate and PSI over (present, missing); statistics over present values
    for index, name in enumerate(["height", "weight"]):
        values = live[name]
        missing = float(np.isnan(values).mean())
        train_missing = drift["columns"][name]["missing_rate"]
        figures = by_name[name]
        assert figures["live_missing_rate"] == pytest.approx(missing, abs=1e-12)
        expected = _psi(
            np.array([1 - missing, missing]), np.array([1 - train_missing, train_missing])
        )
        assert figures["psi"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
        feature = report["features"][index]
        assert feature["live_mean"] == pytest.approx(np.nanmean(values), rel=1e-5)
        assert feature["live_std"] == pytest.approx(np.nanstd(values), rel=1e-4)
    assert by_name["weight"]["psi"] > PSI_THRESHOLD > by_name["height"]["psi"]

    # categorical: level shares (teal is rare: <other>; "NA" is missing), PSI over them
    for name, levels in (("color", COLOR_LEVELS), ("size", SIZE_LEVELS)):
        cells = live[name]
        missing = np.isin(cells, NA_VALUES)
        other = ~missing & ~np.isin(cells, levels)
        live_shares = np.array(
            [(cells == level).mean() for level in levels] + [other.mean(), missing.mean()]
        )
        train_levels = drift["columns"][name]["levels"]
        train_shares = np.array(
            [train_levels[level] for level in levels]
            + [train_levels.get("<other>", 0.0), train_levels.get("<missing>", 0.0)]
        )
        figures = by_name[name]
        assert [level["level"] for level in figures["levels"]] == [*levels, "<other>", "<missing>"]
        np.testing.assert_allclose(
            [level["live_share"] for level in figures["levels"]], live_shares, rtol=0, atol=1e-12
        )
        assert figures["live_missing_rate"] == pytest.approx(missing.mean(), abs=1e-12)
        assert figures["unseen_share"] == 0.0
        assert figures["psi"] == pytest.approx(_psi(live_shares, train_shares), rel=1e-9)
    assert by_name["color"]["psi"] > PSI_THRESHOLD > by_name["size"]["psi"]
    assert report["score"] == max(c["score"] for c in report["columns"])


def test_unseen_levels_bytes_and_gaps_where_training_had_none(metadata: tuple[str, str]) -> None:
    live = _table(np.random.default_rng(2), weight_missing=0.05, blue=COLOR_SHARES[0])
    size = live["size"].copy()
    size[: ROWS // 10] = "XXL"  # never seen in training: unseen, scored as <other>
    size[ROWS // 10 : ROWS // 5] = None  # missing, which training never had
    live["size"] = size
    live["color"] = np.array([c.encode() for c in live["color"]], dtype=object)[:, None]  # BYTES
    report = _observe(metadata, live)
    size_figures = next(c for c in report["columns"] if c["name"] == "size")
    assert size_figures["unseen_share"] == pytest.approx(0.1)
    assert size_figures["live_missing_rate"] == pytest.approx(0.1)
    shares = {level["level"]: level["live_share"] for level in size_figures["levels"]}
    assert shares["<other>"] == pytest.approx(0.1)  # where the graph sends an unseen level
    assert report["flagged_columns"] == ["size"]  # bytes read as text: color unchanged


def test_level_codes_trim_and_read_missing_tokens(metadata: tuple[str, str]) -> None:
    reference = parse_reference(metadata[0], [], schema=metadata[1])
    assert reference.columns is not None
    color = reference.columns.categorical[0]
    cells = np.array([" red", "blue", "teal", "?", None, "", "pink", b"green"], dtype=object)
    # kept levels 0-2 (blue, green, red), <other> 3, <missing> 4, unseen 5
    assert level_codes(cells, color).tolist() == [2, 0, 3, 4, 4, 4, 5, 1]


def test_a_numeric_only_model_with_gaps_takes_x_with_nan(metadata: tuple[str, str]) -> None:
    drift = json.loads(metadata[0])
    drift["columns"] = {k: v for k, v in drift["columns"].items() if v["kind"] == "numeric"}
    reference = parse_reference(json.dumps(drift), ["x"], schema=metadata[1])
    monitor = DriftMonitor(reference, DriftSettings(), "test", warn=False)
    rng = np.random.default_rng(3)
    x = np.stack([rng.normal(170.0, 10.0, 400), rng.normal(70.0, 12.0, 400)], axis=1)
    x[:300, 1] = np.nan
    monitor.observe(x.astype(np.float32))
    report = monitor.report()["life"]
    assert [c["live_missing_rate"] for c in report["columns"]] == [0.0, 0.75]
    assert report["flagged_columns"] == ["weight"]
    assert report["features"][1]["live_mean"] == pytest.approx(np.nanmean(x[:, 1]), rel=1e-5)


def test_malformed_columns_are_one_named_error(metadata: tuple[str, str]) -> None:
    drift = json.loads(metadata[0])
    drift["columns"]["color"]["levels"] = "blue"
    with pytest.raises(DriftMetadataError, match="columns"):
        parse_reference(json.dumps(drift), [], schema=metadata[1])
    drift = json.loads(metadata[0])
    drift["columns"]["depth"] = {"kind": "numeric", "missing_rate": 0.0}
    with pytest.raises(DriftMetadataError, match="'depth' is numeric but not among"):
        parse_reference(json.dumps(drift), [], schema=metadata[1])


def _shifted_monitor(metadata: tuple[str, str]) -> DriftMonitor:
    drift, schema = metadata
    monitor = DriftMonitor(parse_reference(drift, [], schema=schema), DriftSettings(), "t")
    live = _table(np.random.default_rng(1), weight_missing=0.30, blue=2 * COLOR_SHARES[0])
    monitor.observe_columns(live)
    return monitor


def test_the_model_drift_rpc_and_the_gauges_carry_the_columns(metadata: tuple[str, str]) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from bnserve.server.drift.metrics import DriftCollector
    from bnserve.server.grpc.servicers.drift_rpc import drift_response

    monitor = _shifted_monitor(metadata)
    model = SimpleNamespace(name="shop", version="1", drift_status="on", drift=monitor)
    response = drift_response(model)  # type: ignore[arg-type]
    expected = monitor.report()["life"]
    assert list(response.life.flagged_columns) == ["weight", "color"]
    for sent, column in zip(response.life.columns, expected["columns"], strict=True):
        assert (sent.name, sent.kind, sent.flagged) == (
            column["name"],
            column["kind"],
            column["flagged"],
        )
        assert sent.psi == pytest.approx(column["psi"])
        assert sent.live_missing_rate == pytest.approx(column["live_missing_rate"])
        assert [level.live_share for level in sent.levels] == pytest.approx(
            [level["live_share"] for level in column["levels"]]
        )

    class Repository:
        def names(self) -> list[str]:
            return ["shop"]

        def versions(self, name: str) -> list[str]:
            return ["1"]

        def get(self, name: str, version: str) -> SimpleNamespace:
            return SimpleNamespace(model=model)

    registry = CollectorRegistry(auto_describe=False)
    registry.register(DriftCollector(Repository()))
    samples = {
        (family.name, sample.labels.get("column"), sample.labels["window"]): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
    }
    assert samples["bnserve_drift_columns_flagged", None, "life"] == 2
    for column in expected["columns"]:
        key = (column["name"], "life")
        assert samples[("bnserve_drift_column_psi", *key)] == pytest.approx(column["psi"])
        assert samples[("bnserve_drift_column_missing_rate", *key)] == pytest.approx(
            column["live_missing_rate"]
        )
        assert samples[("bnserve_drift_column_flagged", *key)] == float(column["flagged"])


def _format2_model(path: Path, metadata: tuple[str, str]) -> Path:
    """A stand-in model file with the mixed graph's inputs and format-2 metadata (the drift
    command reads only the metadata when no hidden layer is listed)."""
    import onnx
    from onnx import TensorProto, helper

    inputs = [
        helper.make_tensor_value_info(name, kind, ["N", 1])
        for name, kind in (
            ("height", TensorProto.FLOAT),
            ("weight", TensorProto.FLOAT),
            ("color", TensorProto.STRING),
            ("size", TensorProto.STRING),
        )
    ]
    output = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])
    node = helper.make_node("Identity", ["height"], ["y"])
    graph = helper.make_graph([node], "g", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    drift, schema = metadata
    names = json.dumps(["height", "weight", "color", "size"])
    entries = {"format": "2", "feature_names": names, "drift": drift, "schema": schema}
    for key, value in entries.items():
        model.metadata_props.add(key=f"bnserve.{key}", value=value)
    onnx.save(model, str(path))
    return path


def test_bnserve_drift_reads_a_raw_csv_by_column_name(
    metadata: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from bnserve.server.drift.cli import main

    model = _format2_model(tmp_path / "shop.onnx", metadata)
    live = _table(np.random.default_rng(1), weight_missing=0.30, blue=2 * COLOR_SHARES[0])
    lines = ["id,size,color,weight,height"]  # another order, and a column the model ignores
    for row in range(2_000):
        weight = "NA" if np.isnan(live["weight"][row]) else f"{live['weight'][row]:.3f}"
        lines.append(
            f"{row},{live['size'][row]},{live['color'][row]},{weight},{live['height'][row]:.3f}"
        )
    data = tmp_path / "live.csv"
    data.write_text("\n".join(lines) + "\n")
    code = main([str(data), "--model", str(model), "--no-png"])
    out = capsys.readouterr().out
    assert code == 1, out
    drifted = [line.split()[1] for line in out.splitlines() if line.endswith("DRIFT")]
    assert sorted(drifted) == ["color", "weight"]
    assert "0 of 2 features, 2 of 4 columns and 0 of 0 layers past threshold" in out

    lines[5] = lines[5].replace(",NA,", ",3;5,") if ",NA," in lines[5] else "4,S,red,3;5,170"
    data.write_text("\n".join(lines) + "\n")
    code = main([str(data), "--model", str(model), "--no-png"])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("bnserve drift: error: ") and error.count("\n") == 1
    assert "line 6, column 'weight': '3;5' is not a number" in error


def test_level_codes_of_known_texts_only(metadata: tuple[str, str]) -> None:
    """The usual batch (every cell a level or token as written) is coded in one lookup pass;
    one other cell sends the batch cell by cell, with the same codes for the known ones."""
    reference = parse_reference(metadata[0], [], schema=metadata[1])
    assert reference.columns is not None
    color = reference.columns.categorical[0]
    known = ["red", "blue", "teal", "?", "", "green"]
    assert level_codes(np.array(known, dtype=object), color).tolist() == [2, 0, 3, 4, 4, 1]
    cells = np.array([*known, " red"], dtype=object).reshape(-1, 1)
    assert level_codes(cells, color).tolist() == [2, 0, 3, 4, 4, 1, 2]
