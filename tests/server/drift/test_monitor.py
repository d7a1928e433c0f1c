"""Drift monitoring on a real server serving a real digits model.

Three names serve the same file, so each keeps its own statistics: `heldout` gets the held-out
split, `shifted` the same rows with three features moved by +2σ and one scaled ×3, `shuffled`
the same rows with every column permuted independently. Every figure the server reports (the
ModelDrift call and the Prometheus gauges) is compared with numpy on the same rows: the feature
statistics from the raw values, the layer statistics from a float64 forward pass of params.npz.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bnserve.server.app import Server
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.observability.calls import CallObserver
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.settings import ServerSettings
from tests.support.in_process import is_serving, start_server
from tests.support.model_builder import NUM_FEATURES

WINDOW = 200  # recent window (examples): differs from the whole life, still holds > 100
NAMES = ("heldout", "shifted", "shuffled")
SHIFT_THRESHOLD, PSI_THRESHOLD, LAYER_THRESHOLD = 0.5, 0.25, 0.05  # the defaults


@dataclass(frozen=True)
class DigitsModel:
    path: Path
    params: dict[str, np.ndarray]
    heldout: np.ndarray  # (R, F) float32
    feature_names: list[str]
    drift: dict  # the model's bnserve.drift metadata


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> DigitsModel:
    from bnserve.export.exporter import ExportSettings, export_run
    from bnserve.training.config import TrainConfig
    from bnserve.training.rundir import load_run
    from bnserve.training.train import train

    root = tmp_path_factory.mktemp("digits")
    config = TrainConfig(hidden=(64, 32), epochs=8, seed=0)
    run_dir = Path(train(config, root / "run", progress=False).run_dir)
    path = root / "digits.onnx"
    export_run(ExportSettings(run_dir=run_dir, out=path))
    run = load_run(run_dir)
    import onnxruntime as ort

    metadata = ort.InferenceSession(str(path)).get_modelmeta().custom_metadata_map
    return DigitsModel(
        path,
        {name: np.asarray(value, dtype=np.float64) for name, value in run.params.items()},
        run.heldout_x.astype(np.float32),
        list(run.meta["feature_names"]),
        json.loads(metadata["bnserve.drift"]),
    )


def shifted_rows(digits: DigitsModel) -> tuple[np.ndarray, list[int]]:
    """The held-out rows with the three widest features +2σ and the fourth widest ×3."""
    order = np.argsort(-digits.params["input.std"], kind="stable")
    rows = digits.heldout.copy()
    for column in order[:3]:
        rows[:, column] += np.float32(2 * digits.params["input.std"][column])
    rows[:, order[3]] *= np.float32(3.0)
    return rows, sorted(int(c) for c in order[:4])


def shuffled_rows(digits: DigitsModel) -> np.ndarray:
    rng = np.random.default_rng(5)
    rows = digits.heldout.copy()
    for column in range(rows.shape[1]):
        rows[:, column] = rng.permutation(rows[:, column])
    return rows


@dataclass
class Served:
    server: Server
    stub: predictor_pb2_grpc.PredictorStub
    metrics_port: int
    sent: dict[str, np.ndarray]


@pytest.fixture(scope="module")
def served(digits: DigitsModel) -> Iterator[Served]:
    metrics = ServerMetrics()
    settings = ServerSettings(workers=4, max_inflight=2, drift_window=WINDOW, drift_sample=1.0)
    server = start_server(
        settings,
        dict.fromkeys(NAMES, digits.path),
        http=True,
        metrics=metrics,
        observer=CallObserver(metrics),
    )
    for name in NAMES:
        assert is_serving(server, name)
    metrics_port = metrics.serve("127.0.0.1", 0)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = predictor_pb2_grpc.PredictorStub(channel)
    rows = {
        "heldout": digits.heldout,
        "shifted": shifted_rows(digits)[0],
        "shuffled": shuffled_rows(digits),
    }
    for name, x in rows.items():
        # single calls and batches of several sizes: the buffer's chunking must not matter
        for row in x[:5]:
            stub.Predict(pb.PredictRequest(model_name=name, features=row))
        for start, stop in ((5, 6), (6, 70), (70, 200), (200, x.shape[0])):
            stub.PredictBatch(
                pb.PredictBatchRequest(model_name=name, features=x[start:stop].ravel())
            )
    yield Served(server, stub, metrics_port, rows)
    channel.close()
    metrics.stop()
    server.stop(0)


def _report(served: Served, name: str) -> pb.ModelDriftResponse:
    return served.stub.ModelDrift(pb.ModelDriftRequest(model_name=name))


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


# numpy, independently of server/drift/monitor.py


def _weights(rows: int, window: int | None) -> np.ndarray:
    """Weight of each row once all have been scored, in the order sent."""
    if window is None:
        return np.ones(rows)
    return np.exp(-np.arange(rows - 1, -1, -1) / window)


def numpy_features(digits: DigitsModel, x: np.ndarray, window: int | None) -> dict[str, np.ndarray]:
    w = _weights(x.shape[0], window)
    features = digits.drift["features"]
    mean = np.asarray(features["mean"], dtype=np.float32).astype(np.float64)
    std = np.asarray(features["std"], dtype=np.float32).astype(np.float64)
    values = x.astype(np.float64)
    live_mean = w @ values / w.sum()
    live_var = w @ (values - live_mean) ** 2 / w.sum()
    train_min = np.asarray(features["min"], dtype=np.float32)
    train_max = np.asarray(features["max"], dtype=np.float32)
    constant = train_min == train_max
    psi = []
    for column, edges, shares in zip(x.T, features["edges"], features["shares"], strict=True):
        bins = np.searchsorted(np.asarray(edges, dtype=np.float32), column, side="left")
        live = np.bincount(bins, weights=w, minlength=len(shares)) / w.sum()
        live, train = np.maximum(live, 1e-4), np.maximum(np.asarray(shares), 1e-4)
        psi.append(float(np.sum((live - train) * np.log(live / train))))
    outside = (x < train_min) | (x > train_max)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(constant, np.where(live_var > 0, np.inf, 1.0), live_var / std**2)
    return {
        "live_mean": live_mean,
        "live_std": np.sqrt(live_var),
        "mean_shift": np.abs(live_mean - mean) / std,
        "variance_ratio": ratio,
        "psi": np.array(psi),
        "out_of_range_share": w @ outside / w.sum(),
        "rows_outside": np.array(w @ outside.any(axis=1) / w.sum()),
    }


def numpy_layers(digits: DigitsModel, x: np.ndarray, window: int | None) -> list[dict]:
    """z_norm = (z − running mean)/√(running var + ε) from params: per-unit mean, variance,
    and the layer's mean KL(N(m, v) ‖ N(0, 1))."""
    params = digits.params
    w = _weights(x.shape[0], window)
    a = (x.astype(np.float64) - params["input.mean"]) / params["input.std"]
    layers = []
    for index in (1, 2):
        prefix = f"hidden{index}"
        z = a @ params[f"{prefix}.W"]
        z_norm = (z - params[f"{prefix}.running_mean"]) / np.sqrt(
            params[f"{prefix}.running_var"] + 1e-5
        )
        a = np.maximum(params[f"{prefix}.gamma"] * z_norm + params[f"{prefix}.beta"], 0.0)
        kept = np.abs(params[f"{prefix}.gamma"].astype(np.float32)) >= 1e-3
        unit_mean = w @ z_norm[:, kept] / w.sum()
        unit_var = w @ (z_norm[:, kept] - unit_mean) ** 2 / w.sum()
        kl = 0.5 * (unit_var + unit_mean**2 - 1 - np.log(unit_var))
        layers.append({"unit_mean": unit_mean, "unit_variance": unit_var, "score": kl.mean()})
    return layers


def _check_figures(digits: DigitsModel, x: np.ndarray, window_pb: pb.DriftWindow, window) -> None:
    expected = numpy_features(digits, x, window)
    assert window_pb.examples == pytest.approx(_weights(x.shape[0], window).sum(), rel=1e-9)
    for key in ("live_mean", "live_std", "mean_shift", "variance_ratio", "psi"):
        served = np.array([getattr(feature, key) for feature in window_pb.features])
        np.testing.assert_allclose(served, expected[key], rtol=1e-6, atol=1e-6, err_msg=key)
    served_outside = np.array([feature.out_of_range_share for feature in window_pb.features])
    np.testing.assert_allclose(served_outside, expected["out_of_range_share"], atol=1e-12)
    assert window_pb.out_of_range_share == pytest.approx(float(expected["rows_outside"]))
    scores = np.maximum(expected["mean_shift"] / SHIFT_THRESHOLD, expected["psi"] / PSI_THRESHOLD)
    np.testing.assert_allclose([f.score for f in window_pb.features], scores, rtol=1e-6, atol=1e-6)
    assert window_pb.score == pytest.approx(scores.max(), rel=1e-6)
    # float32 graph vs float64 numpy: z_norm agrees to ~1e-5; moments of it a little less
    for layer_pb, layer in zip(window_pb.layers, numpy_layers(digits, x, window), strict=True):
        np.testing.assert_allclose(layer_pb.unit_mean, layer["unit_mean"], atol=5e-5)
        np.testing.assert_allclose(layer_pb.unit_variance, layer["unit_variance"], rtol=1e-4)
        assert layer_pb.score == pytest.approx(layer["score"], rel=1e-3, abs=1e-5)


def _check_both_windows(digits: DigitsModel, served: Served, name: str) -> pb.ModelDriftResponse:
    report = _report(served, name)
    assert report.monitored and report.window == WINDOW
    assert report.reference == "training split"
    _check_figures(digits, served.sent[name], report.life, None)
    _check_figures(digits, served.sent[name], report.recent, WINDOW)
    return report


def test_the_heldout_split_flags_nothing_and_every_figure_matches_numpy(digits, served) -> None:
    report = _check_both_windows(digits, served, "heldout")

    assert report.life.examples == digits.heldout.shape[0]
    for window in (report.life, report.recent):
        assert list(window.flagged_features) == [] and list(window.flagged_layers) == []
        assert window.score < 1.0
        assert all(layer.score < LAYER_THRESHOLD for layer in window.layers)
        assert [layer.name for layer in window.layers] == ["hidden1", "hidden2"]


def test_three_shifted_and_one_scaled_feature_are_exactly_the_four_flagged(digits, served) -> None:
    _, moved = shifted_rows(digits)
    names = [digits.feature_names[column] for column in moved]
    report = _check_both_windows(digits, served, "shifted")
    baseline = _report(served, "heldout")

    for window in (report.life, report.recent):
        assert sorted(window.flagged_features) == sorted(names)
        assert [f.name for f in window.features if f.flagged] == [
            f for f in digits.feature_names if f in names
        ]
    assert report.life.layers[0].score > 5 * baseline.life.layers[0].score
    assert report.life.layers[0].score > LAYER_THRESHOLD
    assert "hidden1" in report.life.flagged_layers

    samples = _scrape(served.metrics_port)
    labels = (("model", "shifted"), ("version", "1"), ("window", "life"))
    assert samples[("bnserve_drift_features_flagged", labels)] == 4
    assert samples[("bnserve_drift_examples", labels)] == digits.heldout.shape[0]
    flagged_in_metrics = sorted(
        dict(key)["feature"]
        for (metric, key), value in samples.items()
        if metric == "bnserve_drift_feature_flagged"
        and dict(key)["model"] == "shifted"
        and dict(key)["window"] == "life"
        and value == 1
    )
    assert flagged_in_metrics == sorted(names)
    by_name = {feature.name: feature for feature in report.life.features}
    for feature in names:
        key = tuple(sorted((*labels, ("feature", feature))))
        assert samples[("bnserve_drift_feature_mean_shift", key)] == by_name[feature].mean_shift
        assert samples[("bnserve_drift_feature_psi", key)] == by_name[feature].psi
        assert (
            samples[("bnserve_drift_feature_variance_ratio", key)]
            == by_name[feature].variance_ratio
        )
    layer_key = tuple(sorted((*labels, ("layer", "hidden1"))))
    assert samples[("bnserve_drift_layer_score", layer_key)] == report.life.layers[0].score
    assert samples[("bnserve_drift_score", labels)] == report.life.score

    url = f"http://127.0.0.1:{served.server.http_port}/v2/models/shifted/drift"
    with urllib.request.urlopen(url, timeout=10) as answer:  # the same figures over HTTP
        over_http = json.loads(answer.read())
    assert over_http["monitored"] and over_http["model_name"] == "shifted"
    assert sorted(over_http["life"]["flagged_features"]) == sorted(names)
    assert over_http["life"]["score"] == report.life.score


def test_metrics_bound_the_feature_labels_to_the_top_k(digits, served) -> None:
    samples = _scrape(served.metrics_port)
    for name in NAMES:
        features = {
            dict(key)["feature"]
            for (metric, key), _ in samples.items()
            if metric == "bnserve_drift_feature_psi"
            and dict(key)["model"] == name
            and dict(key)["window"] == "life"
        }
        assert len(features) == 16  # the default top-k of 64 features


def test_shuffling_each_column_keeps_the_marginals_but_moves_the_layers(digits, served) -> None:
    report = _check_both_windows(digits, served, "shuffled")
    baseline = _report(served, "heldout")

    assert list(report.life.flagged_features) == []
    assert report.life.score < 1.0
    for shuffled, original in zip(report.life.features, baseline.life.features, strict=True):
        # the same values in another order: the same marginal figures (to rounding)
        assert shuffled.psi == pytest.approx(original.psi, abs=1e-12)
        assert shuffled.mean_shift == pytest.approx(original.mean_shift, abs=1e-9)
    for shuffled, original in zip(report.life.layers, baseline.life.layers, strict=True):
        assert shuffled.score > 3 * original.score


def test_a_model_exported_before_drift_monitoring_is_served_and_says_so_once(
    test_models, caplog
) -> None:
    settings = ServerSettings(workers=4, max_inflight=2)
    with caplog.at_level(logging.WARNING, logger="bnserve.server.models.model"):
        server = start_server(settings, {"old": test_models.classification})
    try:
        assert is_serving(server, "old")
        lines = [r.getMessage() for r in caplog.records if "drift" in r.getMessage()]
        assert len(lines) == 1
        assert "exported before drift monitoring" in lines[0] and "serving on" in lines[0]
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            stub.Predict(pb.PredictRequest(features=[0.1] * NUM_FEATURES))
            report = stub.ModelDrift(pb.ModelDriftRequest())
        assert not report.monitored
        assert "exported before drift monitoring" in report.status
        assert len([r for r in caplog.records if "drift" in r.getMessage()]) == 1
    finally:
        server.stop(0)


def test_drift_off_keeps_no_statistics(digits) -> None:
    settings = ServerSettings(workers=4, max_inflight=2, drift=False)
    server = start_server(settings, {"digits": digits.path})
    try:
        assert is_serving(server, "digits")
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            report = predictor_pb2_grpc.PredictorStub(channel).ModelDrift(pb.ModelDriftRequest())
        assert not report.monitored and report.status == "off"
    finally:
        server.stop(0)


def test_a_crossed_threshold_is_logged_and_rate_limited(digits, caplog) -> None:
    settings = ServerSettings(
        workers=4, max_inflight=2, drift_log_interval_s=3600, drift_sample=1.0
    )
    server = start_server(settings, {"digits": digits.path})
    rows, moved = shifted_rows(digits)
    try:
        assert is_serving(server, "digits")
        with (
            caplog.at_level(logging.WARNING, logger="bnserve.server.drift.monitor"),
            grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel,
        ):
            stub = predictor_pb2_grpc.PredictorStub(channel)
            for _ in range(3):
                stub.PredictBatch(pb.PredictBatchRequest(features=rows.ravel()))
        warnings = [
            r.getMessage() for r in caplog.records if r.name == "bnserve.server.drift.monitor"
        ]
        assert len(warnings) == 1
        assert "model digits version 1" in warnings[0] and "4 feature(s)" in warnings[0]
        for column in moved:
            assert digits.feature_names[column] in warnings[0]
    finally:
        server.stop(0)


def test_sampling_observes_a_share_of_the_runs(digits) -> None:
    settings = ServerSettings(workers=4, max_inflight=2, drift_sample=0.25)
    server = start_server(settings, {"digits": digits.path})
    try:
        assert is_serving(server, "digits")
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            for row in digits.heldout[:200]:
                stub.Predict(pb.PredictRequest(features=row))
            examples = stub.ModelDrift(pb.ModelDriftRequest()).life.examples
        # Binomial(200, 0.25): mean 50, sd ≈ 6; outside 10..120 has probability < 1e-12
        assert 10 < examples < 120
    finally:
        server.stop(0)


@pytest.mark.parametrize(
    ("value", "problem"),
    [("{not json", "not valid JSON"), ('{"format": 9}', "not a format-1 object"),
     ('{"format": 1, "features": {}, "layers": []}', "malformed")],
)  # fmt: skip
def test_malformed_drift_metadata_is_reported_and_the_model_served(
    digits, tmp_path, caplog, value, problem
) -> None:
    import onnx

    model = onnx.load(str(digits.path))
    for prop in model.metadata_props:
        if prop.key == "bnserve.drift":
            prop.value = value
    path = tmp_path / "edited.onnx"
    path.write_bytes(model.SerializeToString())
    with caplog.at_level(logging.WARNING, logger="bnserve.server.models.model"):
        server = start_server(ServerSettings(workers=4, max_inflight=2), {"edited": path})
    try:
        assert is_serving(server, "edited")
        assert any(problem in r.getMessage() for r in caplog.records)
        with grpc.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            stub.Predict(pb.PredictRequest(features=digits.heldout[0]))
            report = stub.ModelDrift(pb.ModelDriftRequest())
        assert not report.monitored and problem in report.status
    finally:
        server.stop(0)


def _write_csv(path: Path, names: list[str], x: np.ndarray) -> Path:
    lines = [",".join([*names, "label"])]
    lines += [",".join([*(repr(float(v)) for v in row), "unknown"]) for row in x]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bnserve_drift_flags_the_same_four_offline(digits, served, tmp_path, capsys) -> None:
    from bnserve.server.drift.cli import main

    rows, moved = shifted_rows(digits)
    names = sorted(digits.feature_names[column] for column in moved)
    shifted_csv = _write_csv(tmp_path / "shifted.csv", digits.feature_names, rows)
    heldout_csv = _write_csv(tmp_path / "heldout.csv", digits.feature_names, digits.heldout)

    assert main([str(shifted_csv), "--model", str(digits.path), "--top", "5"]) == 1
    out = capsys.readouterr().out
    flagged = sorted(line.split()[1] for line in out.splitlines() if line.endswith("DRIFT")
                     and not line.startswith("layer"))  # fmt: skip
    assert flagged == names
    assert "layer hidden1: score" in out and "4 of 64 features" in out
    assert (tmp_path / "shifted-drift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    served_life = {f.name: f for f in _report(served, "shifted").life.features}
    for line in out.splitlines():
        if line.endswith("DRIFT") and not line.startswith("layer"):
            cells = line.split()
            assert float(cells[3]) == pytest.approx(served_life[cells[1]].mean_shift, abs=0.005)
            assert float(cells[5]) == pytest.approx(served_life[cells[1]].psi, abs=0.0005)

    assert main([str(heldout_csv), "--model", str(digits.path), "--no-png"]) == 0
    assert "0 of 64 features and 0 of 2 layers past threshold" in capsys.readouterr().out
