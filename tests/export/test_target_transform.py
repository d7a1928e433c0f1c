"""--target-transform log: trained on log(1 + y), answered in y's units by the numpy path and by
the exported graph (Exp, Sub 1 after the last Gemm), folded or not."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest

from bnserve.export.cli import main as export_main
from bnserve.server.models.model import Model, SessionThreads
from bnserve.training.config import TrainConfig
from bnserve.training.inference import predict
from bnserve.training.rundir import load_run
from bnserve.training.train import train


@pytest.fixture(scope="module")
def skewed_run(tmp_path_factory):
    """A linear model of log(1 + y) for y = exp(2 + x0 − 0.5·x1) − 1: exact in t, skewed in y."""
    folder = tmp_path_factory.mktemp("skewed")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(300, 3))
    y = np.expm1(2.0 + x[:, 0] - 0.5 * x[:, 1])[:, None]
    np.savez(folder / "skewed.npz", x=x, y=y)
    config = TrainConfig(
        data=str(folder / "skewed.npz"), task="regression", hidden=(), epochs=60, lr=0.05,
        target_transform="log",
    )  # fmt: skip
    train(config, folder / "run", progress=False, plot=False)
    return load_run(folder / "run")


def test_the_numpy_path_answers_in_the_targets_units(skewed_run):
    run = skewed_run
    assert run.meta["target_transform"] == "log"
    t = np.log1p(run.heldout_y)
    # target.mean/std standardize t, not y: t's mean is near 2, y's near e² ≈ 9
    assert abs(float(run.params["target.mean"][0]) - 2.0) < 0.3
    predicted = predict(run.params, run.meta, run.heldout_x)
    np.testing.assert_allclose(predicted, run.heldout_y, rtol=0.05)  # y's units, not t's
    assert np.max(np.abs(np.log1p(predicted) - t)) < 0.05
    assert run.meta["test_metrics"]["r2"] > 0.99  # scored in y's units too


@pytest.mark.parametrize("unfolded", [False, True])
def test_the_graph_applies_the_inverse_and_equals_the_numpy_path(skewed_run, tmp_path, unfolded):
    out = tmp_path / "m.onnx"
    assert export_main([str(skewed_run.path), "--out", str(out), *(["--unfolded"] * unfolded)]) == 0
    graph = onnx.load(str(out)).graph
    assert [node.op_type for node in graph.node][-2:] == ["Exp", "Sub"]
    assert all(node.op_type != "BatchNormalization" for node in graph.node)
    session = onnxruntime.InferenceSession(str(out))
    x = skewed_run.heldout_x.astype(np.float32)
    outputs = session.run(["y"], {"x": x})[0]
    expected = predict(skewed_run.params, skewed_run.meta, x.astype(np.float64))
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outputs, skewed_run.heldout_y, rtol=0.05)
    single = session.run(["y"], {"x": x[3:4]})[0]  # one example alone, as in the batch
    np.testing.assert_allclose(single, outputs[3:4], rtol=1e-6)
    served = Model.load(out, "skewed", "1", SessionThreads(1, 1))
    served.check_parity()  # the server's parity gate takes the model file's tolerance
    np.testing.assert_allclose(served.predict(x)[0], outputs, rtol=1e-6)


def test_a_target_out_of_the_logs_domain_and_a_classification_are_refused(tmp_path):
    x = np.random.default_rng(0).normal(size=(80, 2))
    np.savez(tmp_path / "neg.npz", x=x, y=x[:, :1] * 3)
    config = TrainConfig(data=str(tmp_path / "neg.npz"), task="regression", target_transform="log")
    with pytest.raises(ValueError, match=r"log\(1 \+ y\): the training targets reach -\d"):
        train(config, tmp_path / "neg", progress=False)
    with pytest.raises(ValueError, match="transforms a regression target"):
        train(TrainConfig(target_transform="log", epochs=1), tmp_path / "cls", progress=False)


def test_an_ensemble_of_transformed_runs_is_refused(skewed_run, tmp_path, capsys):
    """The ensemble's mean node averages the members' last layers: t, not y."""
    other = tmp_path / "other"
    train(skewed_run.config.replace(seed=1, epochs=2), other, progress=False, plot=False)
    code = export_main([str(skewed_run.path), str(other), "--out", str(tmp_path / "e.onnx")])
    assert code == 2
    assert "its target is transformed (log)" in capsys.readouterr().err
    assert not (tmp_path / "e.onnx").exists()
