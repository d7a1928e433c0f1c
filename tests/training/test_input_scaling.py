"""--input-scaling robust (training/scaling.py): the statistics equal numpy's median and
quartiles on the training rows, the smooth clip is what it says, only numeric inputs are clipped,
and the default leaves a run exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest

from bnserve.training.cli import main
from bnserve.training.config import TrainConfig
from bnserve.training.data import batches
from bnserve.training.inference import predict
from bnserve.training.rundir import load_run
from bnserve.training.scaling import robust_statistics, smooth_clip
from bnserve.training.train import prepare, train


def _table(tmp_path):
    """300 rows: a normal column, a heavy-tailed one with far outliers, a mostly-zero one
    (quartile range 0: the half-range fallback) and a constant one."""
    rng = np.random.default_rng(1)
    x = np.column_stack(
        [
            rng.normal(10.0, 2.0, 300),
            rng.standard_cauchy(300),
            np.where(rng.random(300) < 0.9, 0.0, rng.uniform(1.0, 5.0, 300)),
            np.full(300, 7.0),
        ]
    )
    x[5, 1], x[6, 1] = 1e6, -1e6
    y = (x[:, 0] > 10).astype(np.int64)
    path = tmp_path / "table.npz"
    np.savez(path, x=x, y=y)
    return path, x


def test_the_clip_is_u_over_root_of_1_plus_u_over_3_squared_and_bounded_by_3():
    u = np.array([0.0, 1.0, -3.0, 30.0, 1e6, -1e6, np.inf, -np.inf, np.nan, 1e300])
    got = smooth_clip(u)
    finite = u[:6]
    np.testing.assert_allclose(got[:6], finite / np.sqrt(1 + (finite / 3) ** 2), rtol=1e-15)
    assert got[2] == pytest.approx(-3 / np.sqrt(2))
    np.testing.assert_allclose(got[4:8], [3.0, -3.0, 3.0, -3.0], rtol=1e-11)
    assert np.isnan(got[8]) and got[9] == 3.0
    assert np.all(np.diff(smooth_clip(np.linspace(-50, 50, 1001))) > 0)  # increasing
    assert smooth_clip(np.float32([1e30]))[0] == np.float32(3.0)  # q² overflows float32: the limit


def test_the_statistics_are_numpys_median_and_quartiles_of_the_training_rows(tmp_path):
    path, x = _table(tmp_path)
    prepared = prepare(TrainConfig(data=str(path), input_scaling="robust"))
    train_x = x[prepared.split.train]
    np.testing.assert_array_equal(prepared.input_mean, np.median(train_x, axis=0))
    q25, q75 = np.quantile(train_x, [0.25, 0.75], axis=0)
    np.testing.assert_allclose(prepared.input_std[:2], (q75 - q25)[:2], rtol=1e-15)
    assert q75[2] == q25[2] == 0  # mostly zero: half the range instead
    np.testing.assert_allclose(prepared.input_std[2], np.ptp(train_x[:, 2]) / 2, rtol=1e-15)
    assert prepared.input_std[3] == 1.0  # constant: 1
    assert prepared.input_clip is not None and prepared.input_clip.tolist() == [1.0] * 4
    # the rows the network trains on: scaled, then clipped, so the outliers enter as ≈ ±3
    taken = prepared.x_train.take(slice(None)).astype(np.float64)
    expected = smooth_clip((train_x - prepared.input_mean) / prepared.input_std)
    np.testing.assert_allclose(taken, expected, rtol=1e-6, atol=1e-7)
    assert np.max(np.abs(taken)) < 3.0


def test_a_split_larger_than_the_quantile_budget_is_measured_on_a_sample(monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.lognormal(0.0, 1.0, (20_000, 3))
    index = np.arange(len(x))
    exact = batches.fit_robust_scaling(x, index)
    monkeypatch.setattr(batches, "QUANTILE_BYTES", 8 * 3 * 4_000)  # 4,000 rows' worth
    sampled = batches.fit_robust_scaling(x, index)
    assert not np.array_equal(sampled[0], exact[0])  # the sample path was taken
    np.testing.assert_allclose(sampled[0], exact[0], rtol=0.05)  # median of a 4,000-row sample
    np.testing.assert_allclose(sampled[1], exact[1], rtol=0.1)
    again = batches.fit_robust_scaling(x, index)  # seeded: the same sample
    assert all(np.array_equal(a, b) for a, b in zip(again, sampled, strict=True))


def test_a_mixed_table_clips_its_numeric_values_only_after_the_fill(tmp_path):
    rng = np.random.default_rng(4)
    lines = ["colour,size,y"]
    for row in range(200):
        size = "" if row % 10 == 0 else f"{rng.normal(50, 5):.2f}"
        lines.append(f"{['red', 'blue'][row % 2]},{size},{row % 2}")
    lines.append("red,1000000,0")  # a far outlier
    path = tmp_path / "mixed.csv"
    path.write_text("\n".join(lines) + "\n")
    prepared = prepare(TrainConfig(data=str(path), input_scaling="robust"), cache_dir="off")
    assert prepared.encoder is not None and prepared.schema is not None
    names = prepared.schema.inputs
    assert names[:2] == ["colour=blue", "colour=red"] and "size:missing" in names
    value, indicator = names.index("size"), names.index("size:missing")
    assert prepared.input_clip is not None
    assert [name for name, c in zip(names, prepared.input_clip, strict=True) if c] == ["size"]
    design = prepared.x_train.inputs(prepared.split.train)  # filled, unscaled
    median, scale = robust_statistics(design[:, [value]])
    assert prepared.input_mean[value] == median[0] and prepared.input_std[value] == scale[0]
    taken = prepared.x_train.take(slice(None)).astype(np.float64)
    np.testing.assert_array_equal(taken[:, [0, 1, indicator]], design[:, [0, 1, indicator]])
    size = smooth_clip((design[:, value] - median[0]) / scale[0])
    np.testing.assert_allclose(taken[:, value], size, rtol=1e-6, atol=1e-7)


def test_a_robust_run_predicts_raw_rows_and_one_row_alone_as_in_a_batch(tmp_path):
    path, x = _table(tmp_path)
    config = TrainConfig(data=str(path), input_scaling="robust", hidden=(8,), epochs=3)
    train(config, tmp_path / "run", progress=False, plot=False)
    run = load_run(tmp_path / "run")
    assert run.config.input_scaling == "robust"
    np.testing.assert_array_equal(run.params["input.clip"], np.ones(4))
    rows = np.vstack([x[:20], [[1e6, -1e6, 1e6, 7.0]]])
    batch = predict(run.params, run.meta, rows)
    assert np.all(np.isfinite(batch))
    for index in (0, 5, 20):
        np.testing.assert_array_equal(predict(run.params, run.meta, rows[index : index + 1]),
                                      batch[index : index + 1])  # fmt: skip


def test_the_default_is_standard_and_leaves_no_clip(tmp_path):
    path, x = _table(tmp_path)
    assert TrainConfig().input_scaling == "standard"
    prepared = prepare(TrainConfig(data=str(path)))
    assert prepared.input_clip is None and prepared.x_train.clip is None
    np.testing.assert_array_equal(prepared.input_mean, x[prepared.split.train].mean(axis=0))
    with pytest.raises(ValueError, match="input_scaling"):
        TrainConfig(input_scaling="quantile")


def test_the_flag_trains_a_robust_run_and_a_bad_value_is_one_line(tmp_path, capsys):
    path, _ = _table(tmp_path)
    out = tmp_path / "run"
    argv = ["--data", str(path), "--input-scaling", "robust", "--epochs", "1", "--hidden", "4"]
    assert main([*argv, "--out", str(out), "--no-progress", "--no-plot"]) == 0
    assert "input.clip" in load_run(out).params
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["--data", str(path), "--input-scaling", "quantile", "--out", str(tmp_path / "q")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("bnserve train: error: argument --input-scaling: invalid choice")
