"""Chunked statistics equal whole-array ones; windows of batches equal batch-by-batch gathers;
streaming over the cache trains bit-identically to the in-memory path."""

from __future__ import annotations

import numpy as np
import pytest

from bnserve.training import model
from bnserve.training.config import TrainConfig
from bnserve.training.data import batches
from bnserve.training.data.batches import Rows
from bnserve.training.data.loading import fit_standardization
from bnserve.training.layers import BatchNormSettings
from bnserve.training.rundir import load_run
from bnserve.training.train import batch_slices, train


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(batches, "CHUNK_BYTES", 8 * 4 * 40)  # 256 rows (the floor) per chunk
    monkeypatch.setattr(batches, "WINDOW_BYTES", 4 * 4 * 100)


def test_chunked_standardization_matches_numpy(small_chunks):
    x = np.random.default_rng(0).normal(5.0, 3.0, (2000, 4))
    x[:, 2] = 7.0  # a constant column
    index = np.sort(np.random.default_rng(1).permutation(2000)[:1500])
    mean, std = batches.fit_standardization(x, index)
    np.testing.assert_allclose(mean, x[index].mean(axis=0), rtol=1e-12)
    expected_std = x[index].std(axis=0)
    expected_std[2] = 1.0
    np.testing.assert_allclose(std, expected_std, rtol=1e-10)


def test_chunked_population_statistics_match_the_in_memory_ones(small_chunks):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 6))
    params = model.init_params([6, 8, 5, 3], activation="relu", batchnorm=True, rng=rng)
    params["hidden1.gamma"] += 0.5
    spec = model.NetSpec(2, "relu", True, BatchNormSettings())
    rows = Rows(x, np.arange(1000), np.zeros(6), np.ones(6))
    streamed = batches.population_statistics(params, rows, spec)
    whole = model.population_statistics(params, rows.take(slice(None)), spec)
    assert streamed.keys() == whole.keys()
    for name in whole:
        np.testing.assert_allclose(streamed[name], whole[name], rtol=1e-4, atol=1e-6)


def test_windows_of_batches_hold_exactly_the_batch_rows(small_chunks):
    x = np.random.default_rng(0).standard_normal((1000, 4)).astype(np.float32)
    y = np.arange(1000)
    rows = Rows(x, np.arange(0, 1000, 2), np.full(4, 0.5), np.full(4, 2.0))
    order = np.random.default_rng(2).permutation(len(rows))
    slices = batch_slices(len(order), 37)
    got = list(batches.shuffled_batches(rows, y[rows.index], order, slices))
    assert len(got) == len(slices)
    for part, (x_batch, y_batch) in zip(slices, got, strict=True):
        np.testing.assert_array_equal(x_batch, rows.take(order[part]))
        np.testing.assert_array_equal(y_batch, rows.index[order[part]])


def write_table_csv(path, rows: int) -> None:
    rng = np.random.default_rng(3)
    x = np.round(rng.standard_normal((rows, 5)), 3)
    y = (x[:, 0] + x[:, 1] > 0).astype(int) + (x[:, 2] > 1)
    body = "".join(",".join(map(str, r)) + f",{t}\n" for r, t in zip(x, y, strict=True))
    path.write_text("a,b,c,d,e,label\n" + body)


@pytest.mark.parametrize("stats", ["ema", "population"])
def test_streaming_over_the_cache_equals_the_in_memory_path(tmp_path, small_chunks, stats):
    data = tmp_path / "table.csv"
    write_table_csv(data, 1500)
    config = TrainConfig(data=str(data), hidden=(16, 8), epochs=3, batch_size=32, stats=stats)
    common = dict(progress=False, checkpoints=False, plot=False)
    train(config, tmp_path / "memory", cache_dir="off", **common)
    train(config, tmp_path / "streamed", cache_dir=str(tmp_path / "cache"), **common)
    memory, streamed = load_run(tmp_path / "memory"), load_run(tmp_path / "streamed")
    assert memory.params.keys() == streamed.params.keys()
    for name, value in memory.params.items():
        np.testing.assert_array_equal(streamed.params[name], value, err_msg=name)
    np.testing.assert_array_equal(streamed.heldout_x, memory.heldout_x)  # the same split
    assert memory.meta["dev_error"] == streamed.meta["dev_error"]
    assert memory.meta["test_accuracy"] == streamed.meta["test_accuracy"]
    assert any((tmp_path / "cache").iterdir())


def test_the_run_directory_holds_at_most_the_heldout_cap(tmp_path, monkeypatch):
    from bnserve.training import train as train_module

    monkeypatch.setattr(train_module, "HELDOUT_MAX_ROWS", 40)
    data = tmp_path / "table.csv"
    write_table_csv(data, 1000)
    config = TrainConfig(data=str(data), hidden=(8,), epochs=1)
    train(config, tmp_path / "run", progress=False, checkpoints=False, plot=False)
    run = load_run(tmp_path / "run")
    assert run.heldout_x.shape == (40, 5)
    # the test metric still covers the whole test split (150 rows), not only the 40 kept
    correct = run.meta["test_accuracy"] * 150
    assert abs(correct - round(correct)) < 1e-9


def test_a_constant_column_whose_std_rounds_above_zero_gets_std_1() -> None:
    """0.1 repeated in float32: the computed std is one rounding step (1.5e-8), not 0; dividing
    by it would turn a constant column into values of about 1e7."""
    x = np.ones((97, 2), dtype=np.float32)
    x[:, 0] = np.float32(0.1)
    x[::2, 1] = 3.0
    assert x[:, 0].std() > 0  # the rounding this guards against
    many = np.repeat(x, batches.chunk_rows(2) // 97 * 3, axis=0)  # read in several chunks
    for rows in (x, many):
        _, std = batches.fit_standardization(rows, np.arange(len(rows)))
        assert std[0] == 1.0 and std[1] != 1.0
    _, std = fit_standardization(x)
    assert std[0] == 1.0 and std[1] != 1.0


@pytest.mark.parametrize("chunk_bytes", [None, 8 * 4 * 40])  # one pass; chunks of 256 rows
def test_a_mixed_tables_standardization_measures_only_its_numeric_values(
    monkeypatch, chunk_bytes
) -> None:
    """Only the numeric values are encoded to fit it (not the one-hot columns), and it equals
    numpy's mean and std of the whole encoded design, with 0 and 1 for the one-hot and
    indicator inputs."""
    from pathlib import Path

    from bnserve.training.train import prepare

    if chunk_bytes is not None:
        monkeypatch.setattr(batches, "CHUNK_BYTES", chunk_bytes)
    penguins = Path(__file__).parent.parent / "fixtures" / "penguins.csv"
    prepared = prepare(TrainConfig(data=str(penguins), target="species"), cache_dir="off")
    encoder = prepared.encoder
    assert encoder is not None
    train_rows = prepared.split.train
    design = encoder.encode(np.asarray(prepared.dataset.x[train_rows]))
    numeric = encoder.standardized_inputs
    assert numeric.sum() == 5 and design.shape[1] > 10
    mean, std = batches.fit_standardization(prepared.dataset.x, train_rows, encoder)
    np.testing.assert_allclose(mean[numeric], design[:, numeric].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std[numeric], design[:, numeric].std(axis=0), rtol=1e-12)
    assert (mean[~numeric] == 0).all() and (std[~numeric] == 1).all()


@pytest.mark.parametrize("chunk_bytes", [None, 8 * 4 * 40])  # one chunk; chunks of 256 rows
def test_the_schema_pass_gives_the_standardization_without_a_second_pass(
    tmp_path, monkeypatch, chunk_bytes
) -> None:
    """prepare() takes the numeric columns' mean and std from the schema's pass
    (schema.NumberMoments): they equal numpy's over the encoded design and a second pass's, for
    values far from 0 (shifted sums), gaps (filled with the mean), a constant column with gaps,
    and a constant column."""
    from bnserve.training.data import schema
    from bnserve.training.train import prepare

    if chunk_bytes is not None:
        monkeypatch.setattr(schema, "CHUNK_BYTES", chunk_bytes)
    rng = np.random.default_rng(3)
    rows = 1000
    far = 1e6 + rng.standard_normal(rows).round(2)
    gappy = rng.standard_normal(rows).round(3)
    lines = ["far,gappy,same,level,colour,label"]
    for i in range(rows):
        gap = "" if i % 9 == 0 else f"{gappy[i]}"
        same = "" if i % 5 == 0 else "4.5"
        lines.append(f"{far[i]},{gap},{same},7,{'abc'[i % 3]},{i % 2}")
    path = tmp_path / "moments.csv"
    path.write_text("\n".join(lines) + "\n")
    prepared = prepare(TrainConfig(data=str(path)), cache_dir="off")
    encoder = prepared.encoder
    assert encoder is not None
    train_rows = prepared.split.train
    numeric = encoder.standardized_inputs
    assert numeric.sum() == 3  # far, gappy, same ("level" is constant: left out)
    design = encoder.encode(np.asarray(prepared.dataset.x[train_rows]))
    mean, std = batches.fit_standardization(prepared.dataset.x, train_rows, encoder)  # a pass
    np.testing.assert_allclose(prepared.input_mean, mean, rtol=1e-12)
    np.testing.assert_allclose(prepared.input_std, std, rtol=1e-9)
    np.testing.assert_allclose(prepared.input_mean[numeric], design[:, numeric].mean(axis=0))
    expected_std = design[:, numeric].std(axis=0)
    expected_std[2] = 1.0  # "same": 4.5 everywhere once filled: constant
    np.testing.assert_allclose(prepared.input_std[numeric], expected_std, rtol=1e-9)
    assert prepared.input_std[numeric][0] < 2  # far from 0, yet its std is that of the noise
