"""train(): the run directory it writes, accuracy on digits, regression, babysitting resume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bnserve.training import rundir
from bnserve.training.config import TrainConfig
from bnserve.training.errors import RunError, TrainingError
from bnserve.training.inference import predict
from bnserve.training.rundir import load_run
from bnserve.training.train import batch_slices, train

SMALL = {"hidden": (32, 16), "epochs": 4}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "small"
    result = train(TrainConfig.from_dict(SMALL), run_dir, progress=False)
    return result, load_run(run_dir)


def test_run_directory_matches_the_contract(small_run):
    result, run = small_run
    names = {path.name for path in run.path.iterdir()}
    assert names == {
        "config.json",
        "meta.json",
        "params.npz",
        "heldout.npz",
        "history.json",
        "checkpoints",
        "learning_curve.png",
    }
    assert (run.path / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(path.name for path in (run.path / "checkpoints").iterdir()) == [
        f"epoch-{epoch:04d}.{suffix}" for epoch in range(1, 5) for suffix in ("json", "npz")
    ]
    assert set(run.params) == {
        "input.mean",
        "input.std",
        *(f"hidden{i}.{k}" for i in (1, 2) for k in ("W", "gamma", "beta")),
        *(f"hidden{i}.running_{k}" for i in (1, 2) for k in ("mean", "var")),
        "output.W",
        "output.b",
    }
    assert run.params["hidden1.W"].shape == (64, 32)
    assert run.params["output.W"].shape == (16, 10)
    meta = run.meta
    assert meta["status"] == "finished" and meta["task"] == "classification"
    assert meta["class_names"] == [str(d) for d in range(10)]
    assert (meta["stats"], meta["bn_momentum"], meta["running_var"]) == ("ema", 0.1, "unbiased")
    assert meta["epsilon"] == 1e-5 and meta["activation"] == "relu" and meta["batchnorm"] is True
    assert meta["params_sha256"] == rundir.sha256_of(run.path / "params.npz")
    assert run.config == TrainConfig.from_dict(SMALL)
    assert run.heldout_x.shape == (270, 64) and run.heldout_y.dtype == np.int64
    history = json.loads((run.path / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2, 3, 4]
    assert set(history[0]) == {"epoch", "cost", "dev_error", "dev_loss", "lr", "settings", "kept"}
    assert history[-1]["cost"] < history[0]["cost"]
    assert result.dev_error == meta["dev_error"] and result.history == history
    assert not list(run.path.rglob(".tmp-*"))


def test_the_meta_metrics_are_what_predict_gives(small_run):
    _, run = small_run
    probabilities = predict(run.params, run.meta, run.heldout_x)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    accuracy = np.mean(probabilities.argmax(axis=1) == run.heldout_y)
    assert accuracy == pytest.approx(run.meta["test_accuracy"], abs=1e-12)


def test_predict_scores_one_example_as_inside_any_batch(small_run):
    _, run = small_run
    x = run.heldout_x[:40]
    batch = predict(run.params, run.meta, x)
    shuffled = np.random.default_rng(0).permutation(40)
    np.testing.assert_allclose(predict(run.params, run.meta, x[shuffled]), batch[shuffled])
    for row in range(0, 40, 7):
        single = predict(run.params, run.meta, x[row : row + 1])
        np.testing.assert_allclose(single[0], batch[row], rtol=1e-12, atol=1e-15)
    in_float32 = predict(run.params, run.meta, x.astype(np.float32))
    assert in_float32.dtype == np.float32
    np.testing.assert_allclose(in_float32, batch, atol=1e-5)


def test_defaults_reach_96_percent_on_digits(tmp_path):
    train(TrainConfig(), tmp_path / "run", progress=False, checkpoints=False, plot=False)
    assert load_run(tmp_path / "run").meta["test_accuracy"] >= 0.96


def test_training_is_deterministic_given_the_seed(tmp_path):
    config = TrainConfig.from_dict({**SMALL, "epochs": 2, "dropout": 0.2})
    for name in ("a", "b"):
        train(config, tmp_path / name, progress=False, checkpoints=False, plot=False)
    first, second = load_run(tmp_path / "a").params, load_run(tmp_path / "b").params
    for name, value in first.items():
        np.testing.assert_array_equal(value, second[name], err_msg=name)


def test_split_seed_fixes_the_split_while_seed_changes_the_weights(tmp_path):
    base = {**SMALL, "epochs": 1}
    configs = {
        "seed0": TrainConfig.from_dict(base),
        "seed1_split0": TrainConfig.from_dict({**base, "seed": 1, "split_seed": 0}),
        "seed1": TrainConfig.from_dict({**base, "seed": 1}),
    }
    runs = {}
    for name, config in configs.items():
        train(config, tmp_path / name, progress=False, checkpoints=False, plot=False)
        runs[name] = load_run(tmp_path / name)
    same_split = runs["seed0"].heldout_x, runs["seed1_split0"].heldout_x
    np.testing.assert_array_equal(*same_split)
    assert not np.array_equal(runs["seed0"].heldout_x, runs["seed1"].heldout_x)
    weights = [runs[name].params["hidden1.W"] for name in ("seed0", "seed1_split0")]
    assert not np.array_equal(*weights)


def test_regression_on_a_csv_predicts_in_target_units(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-2, 2, (300, 3))
    y = 100.0 + 20.0 * x[:, 0] - 10.0 * x[:, 1] * x[:, 2]
    lines = ["a,b,c,price"] + [f"{a},{b},{c},{t}" for (a, b, c), t in zip(x, y, strict=True)]
    (tmp_path / "prices.csv").write_text("\n".join(lines) + "\n")
    config = TrainConfig.from_dict(
        {"data": str(tmp_path / "prices.csv"), "hidden": (32, 32), "epochs": 40, "lr": 3e-3}
    )
    train(config, tmp_path / "run", progress=False, checkpoints=False, plot=False)
    run = load_run(tmp_path / "run")
    assert run.meta["task"] == "regression" and run.meta["target_names"] == ["price"]
    assert run.meta["feature_names"] == ["a", "b", "c"]
    assert run.params["target.mean"].shape == (1,)
    predictions = predict(run.params, run.meta, run.heldout_x)
    rmse = float(np.sqrt(np.mean((predictions - run.heldout_y) ** 2)))
    assert rmse == pytest.approx(run.meta["test_rmse"])
    assert rmse < 0.25 * y.std()  # far better than predicting the mean


def test_population_statistics_are_stored_for_stats_population(tmp_path):
    config = TrainConfig.from_dict({**SMALL, "stats": "population"})
    train(config, tmp_path / "run", progress=False, checkpoints=False, plot=False)
    run = load_run(tmp_path / "run")
    assert run.meta["stats"] == "population"
    # the exact training-set mean of hidden1's z with the final weights
    from bnserve.training.data.loading import load_dataset, split_rows

    dataset = load_dataset("digits")
    split = split_rows(len(dataset.x), dev_fraction=0.15, test_fraction=0.15, seed=0)
    x_train = (dataset.x[split.train] - run.params["input.mean"]) / run.params["input.std"]
    z = x_train.astype(np.float32) @ run.params["hidden1.W"].astype(np.float32)
    np.testing.assert_allclose(run.params["hidden1.running_mean"], z.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(run.params["hidden1.running_var"], z.var(axis=0, ddof=1), rtol=1e-4)


def test_without_batchnorm_the_params_carry_biases(tmp_path):
    config = TrainConfig.from_dict({**SMALL, "batchnorm": False, "epochs": 2})
    train(config, tmp_path / "run", progress=False, checkpoints=False, plot=False)
    run = load_run(tmp_path / "run")
    assert "hidden1.b" in run.params and "hidden1.gamma" not in run.params
    assert run.meta["batchnorm"] is False


def test_a_last_batch_of_one_joins_the_previous_batch():
    assert batch_slices(129, 64) == [slice(0, 64), slice(64, 129)]
    assert batch_slices(130, 64) == [slice(0, 64), slice(64, 128), slice(128, 130)]
    assert batch_slices(2, 64) == [slice(0, 2)]


def test_callback_stops_training_early(tmp_path):
    seen = []
    result = train(
        TrainConfig.from_dict({**SMALL, "epochs": 10}),
        tmp_path / "run",
        progress=False,
        plot=False,
        on_epoch=lambda record: seen.append(record["epoch"]) or record["epoch"] < 3,
    )
    assert seen == [1, 2, 3]
    assert len(result.history) == 3
    assert load_run(tmp_path / "run").meta["epochs_trained"] == 3


def test_an_existing_run_directory_is_not_overwritten(small_run):
    _, run = small_run
    before = (run.path / "params.npz").read_bytes()
    with pytest.raises(RunError, match="already exists and is not empty"):
        train(TrainConfig.from_dict(SMALL), run.path, progress=False)
    assert (run.path / "params.npz").read_bytes() == before


def test_babysitting_resume_changes_settings_and_records_them(tmp_path):
    config = TrainConfig.from_dict({**SMALL, "epochs": 3, "lr_decay": 0.5})
    train(config, tmp_path / "run", progress=False, plot=False)
    result = train(config.replace(lr=3e-4, epochs=5), tmp_path / "run", resume=True, progress=False)
    lrs = [record["lr"] for record in result.history]
    # decay restarts from the new lr at the first epoch under the new settings
    assert lrs == pytest.approx([1e-3, 5e-4, 2.5e-4, 3e-4, 1.5e-4])
    assert [record["settings"]["lr"] for record in result.history] == [1e-3] * 3 + [3e-4] * 2
    assert load_run(tmp_path / "run").config.lr == 3e-4
    assert (tmp_path / "run" / "learning_curve.png").is_file()


def test_resume_refuses_to_change_the_model(tmp_path):
    config = TrainConfig.from_dict({**SMALL, "epochs": 1})
    train(config, tmp_path / "run", progress=False, plot=False)
    with pytest.raises(ValueError, match="cannot resume with different hidden, seed"):
        train(config.replace(hidden=(8,), seed=1), tmp_path / "run", resume=True, progress=False)


def test_from_epoch_goes_back_and_discards_later_checkpoints(tmp_path):
    config = TrainConfig.from_dict({**SMALL, "epochs": 4})
    train(config, tmp_path / "run", progress=False, plot=False)
    result = train(
        config.replace(lr=1e-4), tmp_path / "run", resume=True, from_epoch=2, progress=False
    )
    assert [record["settings"]["lr"] for record in result.history] == [1e-3, 1e-3, 1e-4, 1e-4]
    assert rundir.checkpoint_epochs(tmp_path / "run") == [1, 2, 3, 4]
    with pytest.raises(RunError, match="no checkpoint for epoch 9"):
        train(config, tmp_path / "run", resume=True, from_epoch=9, progress=False)


def test_resuming_a_run_without_checkpoints_is_an_error(tmp_path):
    config = TrainConfig.from_dict({**SMALL, "epochs": 1})
    train(config, tmp_path / "run", progress=False, checkpoints=False, plot=False)
    with pytest.raises(RunError, match="no checkpoint to resume from"):
        train(config, tmp_path / "run", resume=True, progress=False)


def test_divergence_stops_with_a_clear_error_and_no_final_params(tmp_path):
    config = TrainConfig.from_dict({**SMALL, "optimizer": "sgd", "lr": 1e6, "batchnorm": False})
    with pytest.raises(TrainingError, match=r"training diverged in epoch 1 .* smaller --lr"):
        train(config, tmp_path / "run", progress=False, plot=False)
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["status"] == "running"
    assert not (tmp_path / "run" / "params.npz").exists()


def test_resume_with_fewer_epochs_than_trained_points_to_from_epoch(tmp_path):
    config = TrainConfig.from_dict({**SMALL, "epochs": 3})
    train(config, tmp_path / "run", progress=False, plot=False)
    with pytest.raises(ValueError, match=r"epochs = 2 is fewer than the 3 already trained"):
        train(config.replace(epochs=2), tmp_path / "run", resume=True, progress=False)
    result = train(
        config.replace(epochs=2), tmp_path / "run", resume=True, from_epoch=2, progress=False
    )
    assert len(result.history) == 2


def test_no_hidden_layer_with_l2_is_ridge_regression(tmp_path):
    """hidden = (): the output layer on the standardized inputs; with l2 its minimum is ridge's,
    mean((x·W + b − y)²) + ½·l2·ΣW² on standardized x and y: W = (XᵀX + ½·n·l2·I)⁻¹ Xᵀy."""
    rng = np.random.default_rng(3)
    x = rng.normal([1.0, -50.0, 0.02], [2.0, 10.0, 0.01], size=(200, 3))
    y = 3.0 * x[:, :1] - 0.1 * x[:, 1:2] + rng.normal(0, 2.0, size=(200, 1))
    np.savez(tmp_path / "linear.npz", x=x, y=y)
    l2 = 0.5
    config = TrainConfig.from_dict(
        {"data": str(tmp_path / "linear.npz"), "hidden": [], "l2": l2, "epochs": 300, "lr": 0.05,
         "lr_decay": 0.98, "batch_size": 200, "dev_fraction": 0, "test_fraction": 0}
    )  # fmt: skip
    train(config, tmp_path / "run", progress=False, checkpoints=False, plot=False)
    run = load_run(tmp_path / "run")
    assert set(run.params) == {
        "input.mean", "input.std", "output.W", "output.b", "target.mean", "target.std",
    }  # fmt: skip
    x_std = (x - run.params["input.mean"]) / run.params["input.std"]
    y_std = (y - run.params["target.mean"]) / run.params["target.std"]
    ridge = np.linalg.solve(x_std.T @ x_std + 0.5 * len(x) * l2 * np.eye(3), x_std.T @ y_std)
    np.testing.assert_allclose(run.params["output.W"], ridge, atol=2e-3)
    np.testing.assert_allclose(run.params["output.b"], [0.0], atol=2e-3)


def test_recipes_reach_the_training_loop(tmp_path):
    """--lr-schedule sets each epoch's rate (history.json), --weight-decay shrinks the weights,
    --label-smoothing trains (classification) and is refused for regression."""
    base = {"hidden": (16,), "epochs": 5, "batchnorm": False, "stats": "ema"}
    plain = train(TrainConfig.from_dict(base), tmp_path / "plain", progress=False, plot=False)
    recipe = {"lr_schedule": "onecycle", "weight_decay": 5.0, "label_smoothing": 0.1}
    tuned = train(
        TrainConfig.from_dict({**base, **recipe}), tmp_path / "recipe", progress=False, plot=False
    )
    assert [record["lr"] for record in plain.history] == [1e-3] * 5
    expected = [1e-3 / 25, 1e-3, 1e-3]  # warm-up over round(0.3 · 5) = 2 epochs, then cosine
    assert [record["lr"] for record in tuned.history][:3] == pytest.approx(expected)
    norm = {name: np.linalg.norm(load_run(tmp_path / name).params["hidden1.W"])
            for name in ("plain", "recipe")}  # fmt: skip
    assert norm["recipe"] < norm["plain"]  # decayed by about (1 − lr·wd) per step
    assert load_run(tmp_path / "recipe").config.label_smoothing == 0.1
    x = np.random.default_rng(0).standard_normal((60, 3))
    np.savez(tmp_path / "reg.npz", x=x, y=x[:, :1])
    with pytest.raises(ValueError, match="label_smoothing smooths class labels"):
        train(
            TrainConfig.from_dict({"data": str(tmp_path / "reg.npz"), "label_smoothing": 0.1}),
            tmp_path / "reg",
            progress=False,
        )
