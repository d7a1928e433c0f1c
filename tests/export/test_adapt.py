"""`bnserve adapt`: the un-fold/re-fold round trip, the exact repair of an offset, every refusal,
and an adapted model that passes the server's parity gate and serves."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from bnserve.export.adapt_cli import main as adapt_main
from bnserve.export.adapt_network import (
    AdaptPlan,
    adapt_params,
    network_spec,
    refold_error,
    unfold,
)
from bnserve.export.adapt_source import read_source
from bnserve.export.exporter import ExportSettings, export_run
from bnserve.export.fold import fold_params
from bnserve.export.graph import build_folded_model
from bnserve.export.metadata import attach_metadata, graph_sha256, read_metadata
from bnserve.export.verify import onnx_session, score_onnx
from bnserve.server.drift.monitor import DriftSettings
from bnserve.server.modelfile.contract import MetadataKey
from bnserve.server.models.model import Model, SessionThreads
from bnserve.training.inference import predict
from bnserve.training.layers import BatchNormSettings
from bnserve.training.model import NetSpec, population_statistics

FIELDS = {"hidden": (16, 12), "features": 6, "heldout_rows": 600}  # the synthetic run adapted
FEATURES = 6
OFFSET_SIGMA = 5.0  # a fixed c, so recent and test rows move alike


@pytest.fixture
def base(make_params) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """The synthetic network's float32 parameters (tests/export/conftest.py), with its nearly
    dead units revived: a unit with σ² ≪ ε has z_norm variance ≪ 1 and a drift layer score
    that no statistics can lower, which is not what these tests are about."""
    params: dict[str, np.ndarray] = make_params(**FIELDS)
    rng = np.random.default_rng(5)
    for prefix in ("hidden1", "hidden2"):
        weight = params[f"{prefix}.W"]
        weight[:, 0] = rng.normal(0.0, 1.0 / np.sqrt(weight.shape[0]), weight.shape[0])
    return params


THREADS = SessionThreads(1, 1)
META = {"task": "classification", "activation": "relu", "batchnorm": True, "epsilon": 1e-5}


def _population_params(base: dict[str, np.ndarray], x: np.ndarray) -> dict[str, np.ndarray]:
    """The synthetic network with its running statistics the exact population ones of x (N, F),
    float64 (an exported file rounds them to float32)."""
    params = {k: v.astype(np.float64) for k, v in base.items()}
    spec = NetSpec(n_hidden=2, activation="relu", batchnorm=True, bn=BatchNormSettings())
    standardized = (x - params["input.mean"]) / params["input.std"]
    params.update(population_statistics(params, standardized, spec))
    return params


def _training_x(base: dict[str, np.ndarray], seed: int = 1, rows: int = 600) -> np.ndarray:
    """Raw rows distributed as the network's standardization says its training rows were."""
    params = base
    rng = np.random.default_rng(seed)
    return rng.normal(params["input.mean"], params["input.std"], (rows, FEATURES))


def _exported(tmp_path: Path, synthetic_run, params: dict[str, np.ndarray] | None = None) -> Path:
    run = synthetic_run(
        params={k: v.astype(np.float32) for k, v in params.items()} if params else None,
        **FIELDS,
    )
    out = tmp_path / "source.onnx"
    export_run(ExportSettings(run_dir=run, out=out))
    return out


def _write_csv(path: Path, x: np.ndarray, names: list[str] | None = None) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names or [f"f{i}" for i in range(x.shape[1])])
        writer.writerows(x.tolist())
    return path


def _offset(x: np.ndarray) -> np.ndarray:
    """x + 2 training σ on the first two features (the synthetic net's σ are 1-10)."""
    shifted = x.copy()
    shifted[:, :2] += 2 * OFFSET_SIGMA
    return shifted


def test_unfold_then_refold_with_unchanged_statistics_is_the_source(
    tmp_path: Path, synthetic_run, base: dict[str, np.ndarray]
) -> None:
    source_path = _exported(tmp_path, synthetic_run, base)
    source = read_source(source_path)
    params = unfold(source.folded)
    refolded = fold_params(params, network_spec(source.folded))
    for old, new in zip(source.folded.network.layers, refolded.layers, strict=True):
        # the file holds float32: a bias of -158 is stored to within 1.5e-5 (one ulp)
        np.testing.assert_allclose(new.weight, old.weight, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(new.bias, old.bias, rtol=1e-6, atol=1e-6)
    assert refold_error(source.folded, params) < 1e-6
    rebuilt = onnx_session(build_folded_model(refolded).SerializeToString())
    x = _training_x(base, seed=7, rows=200)
    np.testing.assert_allclose(
        score_onnx(rebuilt, x)["probabilities"],
        score_onnx(onnx_session(source_path.read_bytes()), x)["probabilities"],
        rtol=0,
        atol=1e-6,
    )
    # and the un-folded weights are the run's own
    run_params = base
    for name in ("hidden1.W", "hidden2.W", "hidden2.running_mean", "output.W"):
        np.testing.assert_allclose(params[name], run_params[name], rtol=1e-6, atol=1e-9)


def test_offset_is_repaired_exactly_by_the_first_layer_with_population_statistics(
    base: dict[str, np.ndarray],
) -> None:
    """A constructed network whose frozen statistics are the population's of x: re-estimating
    the first layer alone on x + c gives back the source's outputs on x."""
    x = _training_x(base)
    params = _population_params(base, x)
    adapted = adapt_params(
        params,
        _offset(x),
        AdaptPlan(layers=(1,), prior_rows=0, input_standardization=False, unbiased=True),
        activation="relu",
        epsilon=1e-5,
    )
    np.testing.assert_allclose(
        predict(adapted, META, _offset(x)), predict(params, META, x), rtol=0, atol=1e-9
    )
    assert not np.allclose(predict(params, META, _offset(x)), predict(params, META, x), atol=1e-2)
    # the second layer's statistics were left alone, and needed no change
    np.testing.assert_array_equal(adapted["hidden2.running_mean"], params["hidden2.running_mean"])


def test_every_layer_is_measured_with_the_layers_before_it_adapted(
    base: dict[str, np.ndarray],
) -> None:
    """--layers all with N0 = 0 is training's exact population pass over the recent rows, which
    normalizes each layer by its own new statistics before measuring the next."""
    params = _population_params(base, _training_x(base))
    recent = _offset(_training_x(base, seed=5)) * np.array([1.0, 1.0, 2.0, 1.0, 0.5, 1.0])
    plan = AdaptPlan(layers=(1, 2), prior_rows=0, input_standardization=False, unbiased=True)
    adapted = adapt_params(params, recent, plan, activation="relu", epsilon=1e-5)
    spec = NetSpec(n_hidden=2, activation="relu", batchnorm=True, bn=BatchNormSettings())
    standardized = (recent - params["input.mean"]) / params["input.std"]
    for name, expected in population_statistics(params, standardized, spec).items():
        np.testing.assert_allclose(adapted[name], expected, rtol=1e-12, err_msg=name)
    assert not np.allclose(adapted["hidden2.running_var"], params["hidden2.running_var"])


def test_input_standardization_repairs_a_per_feature_scale_exactly(
    base: dict[str, np.ndarray],
) -> None:
    """x_j → k_j·x_j + c_j: re-estimated per feature, the standardized inputs are the source's
    (the first layer alone repairs this only in part)."""
    x = _training_x(base)
    params = _population_params(base, x)
    params["input.mean"], params["input.std"] = x.mean(axis=0), x.std(axis=0)
    params = _population_params({**params}, x)  # batch norm's statistics on that standardization
    k = np.array([3.0, 0.5, 1.0, 1.0, 2.0, 1.0])
    moved = x * k + OFFSET_SIGMA
    plan = AdaptPlan(layers=(1,), prior_rows=0, input_standardization=True, unbiased=True)
    adapted = adapt_params(params, moved, plan, activation="relu", epsilon=1e-5)
    np.testing.assert_allclose(
        predict(adapted, META, moved), predict(params, META, x), rtol=0, atol=1e-9
    )
    first_only = adapt_params(
        params, moved, AdaptPlan((1,), 0, False, True), activation="relu", epsilon=1e-5
    )
    assert np.max(np.abs(predict(first_only, META, moved) - predict(params, META, x))) > 1e-2


def test_blend_weighs_the_source_statistics_as_prior_rows(base: dict[str, np.ndarray]) -> None:
    x = _training_x(base)
    params = _population_params(base, x)
    rows = x.shape[0]
    plan = AdaptPlan(layers=(1,), prior_rows=rows, input_standardization=False, unbiased=True)
    adapted = adapt_params(params, _offset(x), plan, activation="relu", epsilon=1e-5)
    recent = adapt_params(
        params, _offset(x), AdaptPlan((1,), 0, False, True), activation="relu", epsilon=1e-5
    )
    halfway = (params["hidden1.running_mean"] + recent["hidden1.running_mean"]) / 2
    np.testing.assert_allclose(adapted["hidden1.running_mean"], halfway, rtol=1e-12)


def test_adapted_model_repairs_the_offset_passes_the_parity_gate_and_serves(
    tmp_path: Path, synthetic_run, base: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    x = _training_x(base)
    source_path = _exported(tmp_path, synthetic_run, _population_params(base, x))
    recent = _write_csv(tmp_path / "recent.csv", _offset(x))
    out = tmp_path / "adapted.onnx"
    argv = [str(source_path), "--data", str(recent), "--out", str(out)]
    assert adapt_main([*argv, "--no-input-standardization"]) == 0  # the first layer alone
    printed = capsys.readouterr().out
    assert "flagged before: 2 features, 2 layers; after: 0 features, 0 layers" in printed

    # the served file: graph hash, metadata and reference rows pass the gate, and it scores
    watch_all = DriftSettings(sample=1.0, min_examples=0)
    model = Model.load(out, "adapted", "2", THREADS, drift=watch_all)
    model.check_parity()
    test_x = _training_x(base, seed=2, rows=300)
    served = model.predict(_offset(test_x).astype(np.float32))[0]
    original = score_onnx(onnx_session(source_path.read_bytes()), test_x)["probabilities"]
    np.testing.assert_allclose(served, original, atol=2e-5)
    # the served monitor no longer flags the shift it was adapted to; the source's does
    assert model.drift is not None
    life = model.drift.report()["life"]
    assert not life["flagged_features"] and not life["flagged_layers"]
    source_model = Model.load(source_path, "adapted", "1", THREADS, drift=watch_all)
    source_model.predict(_offset(test_x).astype(np.float32))
    assert source_model.drift is not None and source_model.drift.report()["life"]["flagged_layers"]

    metadata = read_metadata(onnx.load(str(out)))
    provenance = json.loads(metadata[MetadataKey.ADAPT.full])
    assert provenance["rows"] == x.shape[0] and provenance["layers"] == "hidden1"
    assert provenance["source_graph_sha256"] == read_source(source_path).card.graph_sha256
    assert provenance["drift_before"]["features_flagged"] >= 2
    assert provenance["drift_after"]["features_flagged"] == 0
    assert provenance["drift_after"]["layers"]["hidden1"] < 1e-3
    drift = json.loads(metadata[MetadataKey.DRIFT.full])
    assert drift["source"] == "recent rows" and drift["rows"] == x.shape[0]
    np.testing.assert_allclose(drift["features"]["mean"], _offset(x).mean(axis=0), rtol=1e-6)
    # the adapted model can itself be un-folded from its card exactly
    assert refold_error(read_source(out).folded, unfold(read_source(out).folded)) < 1e-6


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert adapt_main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bnserve adapt: error: ")
    return lines[0]


@pytest.fixture
def source_and_recent(
    tmp_path: Path, synthetic_run, base: dict[str, np.ndarray]
) -> tuple[Path, Path]:
    x = _training_x(base)
    source = _exported(tmp_path, synthetic_run, _population_params(base, x))
    return source, _write_csv(tmp_path / "recent.csv", _offset(x))


def test_refuses_too_few_rows(
    base: dict[str, np.ndarray],
    tmp_path: Path,
    source_and_recent: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    source, _ = source_and_recent
    few = _write_csv(tmp_path / "few.csv", _offset(_training_x(base))[:50])
    out = tmp_path / "new.onnx"
    line = _refused([str(source), "--data", str(few), "--out", str(out)], capsys)
    assert "50 rows, fewer than --min-rows 300" in line
    assert not out.exists()


def test_refuses_columns_that_do_not_match(
    base: dict[str, np.ndarray],
    tmp_path: Path,
    source_and_recent: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    source, _ = source_and_recent
    names = ["f0", "f1", "f2", "f3", "f4", "other"]
    wrong = _write_csv(tmp_path / "wrong.csv", _offset(_training_x(base)), names)
    out = tmp_path / "new.onnx"
    line = _refused([str(source), "--data", str(wrong), "--out", str(out)], capsys)
    assert "missing 1 of the model's 6 features ('f5')" in line
    assert not out.exists()


def test_refuses_a_model_without_batchnorm_statistics(
    tmp_path: Path, synthetic_run, base: dict[str, np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    run = synthetic_run(batchnorm=False, hidden=(8,), features=6)
    source = tmp_path / "plain.onnx"
    export_run(ExportSettings(run_dir=run, out=source))
    recent = _write_csv(tmp_path / "recent.csv", _offset(_training_x(base)))
    out = tmp_path / "new.onnx"
    line = _refused([str(source), "--data", str(recent), "--out", str(out)], capsys)
    assert "no batch-norm statistics in its card" in line
    assert not out.exists()


def test_refuses_a_card_without_drift_reference(
    tmp_path: Path, source_and_recent: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    source, recent = source_and_recent
    model = onnx.load(str(source))
    kept = [p for p in model.metadata_props if p.key != MetadataKey.DRIFT.full]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    stripped = tmp_path / "stripped.onnx"
    onnx.save(model, str(stripped))
    out = tmp_path / "new.onnx"
    line = _refused([str(stripped), "--data", str(recent), "--out", str(out)], capsys)
    assert "no batch-norm statistics in its card (exported before drift monitoring" in line
    assert not out.exists()


def test_refuses_no_shift_without_force_and_adapts_with_it(
    base: dict[str, np.ndarray],
    tmp_path: Path,
    source_and_recent: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    source, _ = source_and_recent
    same = _write_csv(tmp_path / "same.csv", _training_x(base, seed=3))
    out = tmp_path / "new.onnx"
    line = _refused([str(source), "--data", str(same), "--out", str(out)], capsys)
    assert "no shift worth adapting; pass --force" in line
    assert not out.exists()
    assert adapt_main([str(source), "--data", str(same), "--out", str(out), "--force"]) == 0
    test_x = _training_x(base, seed=4, rows=300)
    before = score_onnx(onnx_session(source.read_bytes()), test_x)["label"]
    after = score_onnx(onnx_session(out.read_bytes()), test_x)["label"]
    # a random 3-class net has many near ties: 600 rows' statistics move a few labels
    assert np.mean(before == after) >= 0.9


def test_refuses_a_model_with_text_columns(
    tmp_path: Path, source_and_recent: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    source, recent = source_and_recent
    model = onnx.load(str(source))
    extra = onnx.helper.make_tensor_value_info("colour", onnx.TensorProto.STRING, ["N", 1])
    model.graph.input.append(extra)
    mixed = tmp_path / "mixed.onnx"
    onnx.save(model, str(mixed))
    line = _refused([str(mixed), "--data", str(recent), "--out", str(tmp_path / "n.onnx")], capsys)
    assert "models with text columns" in line


def test_refuses_a_graph_with_parts_it_would_not_rebuild(
    tmp_path: Path, source_and_recent: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    source, recent = source_and_recent
    model = onnx.load(str(source))
    first = model.graph.node[0]  # hidden1.gemm: feed it x clipped to the training range
    clip = onnx.helper.make_node("Clip", ["x"], ["x.clipped"], name="input.clip")
    first.input[0] = "x.clipped"
    model.graph.node.insert(0, clip)
    clipped = tmp_path / "clipped.onnx"
    onnx.save(model, str(clipped))
    out = tmp_path / "n.onnx"
    line = _refused([str(clipped), "--data", str(recent), "--out", str(out)], capsys)
    assert "does not match its card's bnserve.graph_sha256" in line
    metadata = read_metadata(model)  # a tool that re-hashes what it changed
    metadata[MetadataKey.GRAPH_SHA256.full] = graph_sha256(model)
    attach_metadata(model, metadata)
    onnx.save(model, str(clipped))
    line = _refused([str(clipped), "--data", str(recent), "--out", str(out)], capsys)
    assert "is not the plain folded MLP adapt rebuilds" in line and "Clip" in line


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--layers", "5"], "--layers '5': expected first, all or a count from 1 to 2"),
        (["--min-rows", "1"], "--min-rows must be ≥ 2"),
    ],
)
def test_refuses_bad_options(
    tmp_path: Path,
    source_and_recent: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    expected: str,
) -> None:
    source, recent = source_and_recent
    out = tmp_path / "new.onnx"
    line = _refused([str(source), "--data", str(recent), "--out", str(out), *extra], capsys)
    assert expected in line
    assert not out.exists()


def test_refuses_an_existing_output_and_a_missing_model(
    tmp_path: Path, source_and_recent: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    source, recent = source_and_recent
    line = _refused([str(source), "--data", str(recent), "--out", str(source)], capsys)
    assert "already exists" in line
    missing = tmp_path / "missing.onnx"
    line = _refused(
        [str(missing), "--data", str(recent), "--out", str(tmp_path / "n.onnx")], capsys
    )
    assert "no such file" in line
    directory = [str(source), "--data", str(tmp_path), "--out", str(tmp_path / "n.onnx")]
    assert "capture directory is not read yet" in _refused(directory, capsys)


def test_a_regression_model_is_adapted_and_passes_the_parity_gate(
    tmp_path: Path, synthetic_run, capsys: pytest.CaptureFixture[str]
) -> None:
    run = synthetic_run(task="regression", hidden=(8,), features=6, outputs=2, heldout_rows=400)
    source = tmp_path / "regression.onnx"
    export_run(ExportSettings(run_dir=run, out=source))
    rng = np.random.default_rng(3)
    recent = _write_csv(tmp_path / "recent.csv", _offset(rng.normal(0.0, 5.0, (400, 6))))
    out = tmp_path / "adapted.onnx"
    argv = [str(source), "--data", str(recent), "--out", str(out), "--force"]
    assert adapt_main(argv) == 0, capsys.readouterr().err
    Model.load(out, "regression", "2", THREADS).check_parity()


def test_a_real_server_serves_the_adapted_model(
    tmp_path: Path, synthetic_run, base: dict[str, np.ndarray]
) -> None:
    """`python -m bnserve.server` on a free loopback port: the parity gate passes (it reports
    ready only after) and Predict answers the offset rows as the source answered the originals."""
    import grpc

    from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
    from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
    from tests.support.server_process import ServerProcess

    x = _training_x(base)
    source = _exported(tmp_path, synthetic_run, _population_params(base, x))
    recent = _write_csv(tmp_path / "recent.csv", _offset(x))
    out = tmp_path / "adapted.onnx"
    argv = [str(source), "--data", str(recent), "--out", str(out), "--no-input-standardization"]
    assert adapt_main(argv) == 0
    server = ServerProcess(["--model", str(out), "--name", "adapted", "--metrics-port", "0"])
    try:
        server.wait_ready()
        rows = _training_x(base, seed=9, rows=20).astype(np.float32)
        expected = score_onnx(onnx_session(source.read_bytes()), rows)["probabilities"]
        with grpc.insecure_channel(server.target) as channel:
            stub = predictor_pb2_grpc.PredictorStub(channel)
            served = [
                stub.Predict(pb.PredictRequest(model_name="adapted", features=features))
                for features in _offset(rows.astype(np.float64))
            ]
        np.testing.assert_allclose([answer.probabilities for answer in served], expected, atol=2e-5)
        assert [answer.model_version for answer in served] == ["1"] * len(rows)
    finally:
        assert server.stop() == 0
