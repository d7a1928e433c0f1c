"""`bnserve export RUN1 RUN2 …` and `bnserve export TUNE_DIR --ensemble K`: the mean of k runs as
one folded graph (export/ensemble.py, ensemble_graph.py, ensemble_source.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from bnserve.export.cli import main
from bnserve.export.ensemble import mean_prediction
from bnserve.export.ensemble_graph import LAYOUTS
from bnserve.export.metadata import read_metadata
from bnserve.export.verify import PROBABILITY_TOLERANCE, onnx_session, regression_tolerance
from bnserve.server.modelfile.contract import MetadataKey
from bnserve.training.rundir import load_run
from bnserve.training.tune.store import FILENAME, PlannedTrial, TrialStore
from bnserve.training.tune.trials import fold_dir
from tests.export.conftest import SyntheticRun, write_synthetic_run

# members that differ in everything an ensemble allows: depth (a linear one too), width,
# activation, batch norm
MIXED = [
    {"seed": 0},
    {"seed": 1, "hidden": (8,), "activation": "tanh", "batchnorm": False},
    {"seed": 2, "hidden": ()},
    {"seed": 3, "hidden": (10, 6, 5), "activation": "sigmoid"},
]


def _export(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _runs(synthetic_run, specs: list[dict[str, object]], **common: object) -> list[Path]:
    return [synthetic_run(**{**common, **spec}) for spec in specs]


def _scored(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = onnx_session(path.read_bytes())
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {"x": x.astype(np.float32)}), strict=True))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_graph_is_the_mean_of_its_members_numpy_paths(
    synthetic_run, out_dir: Path, capsys, layout: str
) -> None:
    specs = {
        "parallel": MIXED,
        "blockdiag": [{"seed": 0}, {"seed": 1, "hidden": (9, 4)}],
        "batched": [{"seed": 0}, {"seed": 1}, {"seed": 2, "batchnorm": False}],
        "grouped": [{"seed": 0}, {"seed": 1}, {"seed": 2, "batchnorm": False}],
    }[layout]
    runs = _runs(synthetic_run, specs)
    out = out_dir / "ensemble.onnx"
    code, printed, error = _export([*map(str, runs), "--out", str(out), "--layout", layout], capsys)
    assert code == 0, error
    assert f"ensemble of {len(runs)}" in printed
    model = onnx.load(str(out))
    ops = [node.op_type for node in model.graph.node]
    assert "BatchNormalization" not in ops
    readers_of_x = [node for node in model.graph.node if "x" in node.input]
    assert [node.op_type for node in readers_of_x] == ["Gemm"]  # every first layer, one Gemm
    assert ops.count("Mean") + ops.count("ReduceMean") == 1  # one averaging node
    members = [load_run(run) for run in runs]
    x = np.vstack([member.heldout_x for member in members]).astype(np.float32)
    expected = mean_prediction(members, x.astype(np.float64))
    served = _scored(out, x)
    assert np.max(np.abs(served["probabilities"] - expected)) <= PROBABILITY_TOLERANCE.abs
    decisive = np.sort(expected, axis=1)[:, -1] - np.sort(expected, axis=1)[:, -2] > 2e-5
    np.testing.assert_array_equal(served["label"][decisive], expected.argmax(axis=1)[decisive])
    card = read_metadata(model)
    listed = json.loads(card[MetadataKey.ENSEMBLE.full])
    assert listed["layout"] == layout
    assert [m["run_id"] for m in listed["members"]] == [m.meta["run_id"] for m in members]
    assert [m["params_sha256"] for m in listed["members"]] == [
        m.meta["params_sha256"] for m in members
    ]
    assert card[MetadataKey.RUN_ID.full].startswith("ensemble-")


@pytest.mark.parametrize(
    ("specs", "layout"),
    [
        (MIXED, "parallel"),
        ([{"seed": seed} for seed in range(3)], "grouped"),
        ([{"seed": seed, "activation": "tanh"} for seed in range(3)], "grouped"),
        ([{"seed": seed, "activation": "sigmoid"} for seed in range(3)], "grouped"),
    ],
    ids=["parallel", "grouped", "grouped-tanh", "grouped-sigmoid"],
)
def test_a_regression_ensemble_answers_the_mean_y(
    synthetic_run, out_dir: Path, capsys, specs: list[dict[str, object]], layout: str
) -> None:
    runs = _runs(synthetic_run, specs, task="regression", outputs=2)
    out = out_dir / "ensemble.onnx"
    code, printed, error = _export([*map(str, runs), "--out", str(out)], capsys)
    assert code == 0, error
    assert f"{layout}, " in printed  # auto's choice
    members = [load_run(run) for run in runs]
    x = members[0].heldout_x.astype(np.float32)
    expected = mean_prediction(members, x.astype(np.float64))
    stds = np.concatenate([m.params["target.std"] for m in members])
    tolerance = regression_tolerance(stds)
    difference = np.abs(_scored(out, x)["y"] - expected)
    assert np.all(difference <= tolerance.bound(expected))
    # the reference rows the server checks are the mean too
    card = read_metadata(onnx.load(str(out)))
    rows = np.asarray(json.loads(card[MetadataKey.REFERENCE_INPUTS.full]))
    reference = np.asarray(json.loads(card[MetadataKey.REFERENCE_OUTPUTS.full])["y"])
    np.testing.assert_allclose(reference, mean_prediction(members, rows), rtol=1e-12)


@pytest.mark.parametrize("specs", [MIXED, [{"seed": seed} for seed in range(4)]])
def test_one_example_alone_equals_it_in_a_batch(
    synthetic_run, out_dir: Path, capsys, specs: list[dict[str, object]]
) -> None:
    runs = _runs(synthetic_run, specs)
    out = out_dir / "ensemble.onnx"
    code, printed, _ = _export([*map(str, runs), "--out", str(out)], capsys)
    assert code == 0
    assert ("grouped" if specs is not MIXED else "parallel") in printed  # auto's choice
    x = load_run(runs[0]).heldout_x[:64].astype(np.float32)
    together = _scored(out, x)
    for row in range(x.shape[0]):
        alone = _scored(out, x[row : row + 1])
        np.testing.assert_allclose(
            alone["probabilities"][0], together["probabilities"][row], rtol=0, atol=1e-6
        )
        assert alone["label"][0] == together["label"][row]


def test_auto_builds_grouped_when_the_members_allow_it(synthetic_run, out_dir, capsys) -> None:
    """Members of one depth, widths and activation: grouped, whose node count does not grow
    with k; one wider: parallel; asked for grouped or batched anyway with a wider one: refused
    in one line."""

    def layout_of(specs: list[dict[str, object]], name: str, *flags: str) -> tuple[str, int]:
        out = out_dir / f"{name}.onnx"
        runs = _runs(synthetic_run, specs)
        code, _, error = _export([*map(str, runs), "--out", str(out), *flags], capsys)
        assert code == 0, error
        model = onnx.load(str(out))
        listed = json.loads(read_metadata(model)[MetadataKey.ENSEMBLE.full])
        return listed["layout"], len(model.graph.node)

    same = [{"seed": seed} for seed in range(6)]
    two, three, six = (layout_of(same[:k], f"k{k}") for k in (2, 3, 6))
    assert two[0] == three[0] == six[0] == "grouped" and two[1] == three[1] == six[1]
    assert layout_of(same[:3], "k3b", "--layout", "batched")[0] == "batched"
    assert layout_of(same[:3], "k3p", "--layout", "parallel")[0] == "parallel"
    wider = [*same[:3], {"seed": 3, "hidden": (16, 10)}]
    assert layout_of(wider, "wider")[0] == "parallel"
    runs = _runs(synthetic_run, wider)
    for layout in ("grouped", "batched"):
        code, _, error = _export(
            [*map(str, runs), "--out", str(out_dir / "no.onnx"), "--layout", layout], capsys
        )
        assert code == 2 and error.count("\n") == 1
        assert f"--layout {layout}: {layout} needs members of one depth, the same widths" in error


@pytest.mark.parametrize(
    ("second", "says"),
    [
        ({"features": 7}, "its feature names differ from"),
        ({"task": "regression"}, "task is regression, but"),
        ({"outputs": 4}, "its class names differ from"),
    ],
)
def test_members_that_differ_are_refused_in_one_line(
    synthetic_run, out_dir: Path, capsys, second: dict[str, object], says: str
) -> None:
    first, other = synthetic_run(seed=0), synthetic_run(seed=1, **second)
    out = out_dir / "ensemble.onnx"
    code, printed, error = _export([str(first), str(other), "--out", str(out)], capsys)
    assert code == 2 and printed == ""
    assert error.count("\n") == 1 and error.startswith("bnserve export: error: ")
    assert f"{other}: " in error and says in error and str(first) in error
    assert not out.exists()


def test_renamed_classes_are_refused_naming_the_class(synthetic_run, out_dir, capsys) -> None:
    first, other = synthetic_run(seed=0), synthetic_run(seed=1)
    meta = json.loads((other / "meta.json").read_text())
    meta["class_names"][1] = "renamed"
    (other / "meta.json").write_text(json.dumps(meta))
    code, _, error = _export([str(first), str(other), "--out", str(out_dir / "m.onnx")], capsys)
    assert code == 2 and error.count("\n") == 1
    assert "name #1 is 'renamed', not 'class_1'" in error


def test_a_raw_column_run_with_a_numbers_run_is_refused(synthetic_run, out_dir, capsys) -> None:
    first, other = synthetic_run(seed=0), synthetic_run(seed=1)
    schema = {
        "version": 1,
        "training_rows": 10,
        "min_level_count": 2,
        "max_levels": 1000,
        "na_values": [],
        "plain": False,
        "columns": [
            {
                "name": "colour",
                "kind": "categorical",
                "why": "inferred",
                "missing_count": 0,
                "levels": [{"value": "red", "count": 5}, {"value": "blue", "count": 5}],
            }
        ],
    }
    (other / "schema.json").write_text(json.dumps(schema))
    code, _, error = _export([str(first), str(other), "--out", str(out_dir / "m.onnx")], capsys)
    assert code == 2 and error.count("\n") == 1
    assert f"{other} takes raw columns (a schema.json) but {first} takes numbers in x" in error


def _tune_dir(root: Path, trials: list[tuple[float, list[int]]]) -> Path:
    """A tune directory as the tuner leaves it: tune.sqlite and trials/trial-NNNN, each a
    finished synthetic run (folds empty) or, cross-validated, its fold runs (seeds given)."""
    root.mkdir()
    planned = [
        PlannedTrial(trial=i, point=i, params={}, seed=i, run_dir=f"trials/trial-{i:04d}")
        for i in range(len(trials))
    ]
    with TrialStore.create(root / FILENAME, {}) as store:
        store.add_round(0, {"ranges": {}, "choices": {}}, planned)
        for plan, (dev_error, fold_seeds) in zip(planned, trials, strict=True):
            trial_dir = root / plan.run_dir
            if fold_seeds:
                for fold, seed in enumerate(fold_seeds):
                    write_synthetic_run(trial_dir / fold_dir(fold, 0), SyntheticRun(seed=seed))
            else:
                write_synthetic_run(trial_dir, SyntheticRun(seed=10 + plan.trial))
            store.mark_done(
                plan.trial, state="finished", dev_error=dev_error, history=[], seconds=1.0
            )
    return root


def test_a_tune_gives_its_best_k_trials(tmp_path: Path, out_dir: Path, capsys) -> None:
    tune = _tune_dir(tmp_path / "tune", [(0.3, []), (0.1, []), (0.2, []), (0.4, [])])
    out = out_dir / "m.onnx"
    code, printed, error = _export([str(tune), "--ensemble", "2", "--out", str(out)], capsys)
    assert code == 0, error
    assert "the best 2 finished trials" in printed
    listed = json.loads(read_metadata(onnx.load(str(out)))[MetadataKey.ENSEMBLE.full])
    assert [m["run_id"] for m in listed["members"]] == ["synthetic-11", "synthetic-12"]
    code, _, error = _export([str(tune), "--ensemble", "5", "--out", str(out)], capsys)
    assert code == 2 and "4 finished trial run(s) kept; --ensemble 5 needs 5" in error


def test_a_cross_validated_tune_gives_the_chosen_trials_fold_models(
    tmp_path: Path, out_dir: Path, capsys
) -> None:
    tune = _tune_dir(tmp_path / "tune", [(0.2, [20, 21, 22]), (0.1, [30, 31, 32])])
    out = out_dir / "m.onnx"
    code, printed, error = _export([str(tune), "--ensemble", "3", "--out", str(out)], capsys)
    assert code == 0, error
    assert "the fold models of the chosen trial 1 (3 of 3)" in printed
    listed = json.loads(read_metadata(onnx.load(str(out)))[MetadataKey.ENSEMBLE.full])
    assert [m["run_id"] for m in listed["members"]] == [f"synthetic-{s}" for s in (30, 31, 32)]


def _with_final_members(tune: Path, seeds: list[int]) -> Path:
    """The tune's end as the tuner leaves it: final, final-1, … (the best trials retrained),
    best -> final and best.json listing them as final_members."""
    names = ["final" if i == 0 else f"final-{i}" for i in range(len(seeds))]
    for name, seed in zip(names, seeds, strict=True):
        write_synthetic_run(tune / name, SyntheticRun(seed=seed))
    (tune / "best").symlink_to("final", target_is_directory=True)
    summary = {"trial": 1, "run_dir": "final", "final_members": names}
    (tune / "best.json").write_text(json.dumps(summary))
    return tune


def test_a_tune_directory_alone_exports_the_tunes_model(
    tmp_path: Path, out_dir: Path, capsys
) -> None:
    tune = _with_final_members(_tune_dir(tmp_path / "tune", [(0.2, [20, 21])]), [40, 41, 42])
    out = out_dir / "m.onnx"
    code, printed, error = _export([str(tune), "--out", str(out)], capsys)
    assert code == 0, error
    assert "the tune's model, its best 3 trials retrained" in printed
    listed = json.loads(read_metadata(onnx.load(str(out)))[MetadataKey.ENSEMBLE.full])
    assert [m["run_id"] for m in listed["members"]] == [f"synthetic-{s}" for s in (40, 41, 42)]
    members = [load_run(tune / name) for name in ("final", "final-1", "final-2")]
    x = members[0].heldout_x.astype(np.float32)
    expected = mean_prediction(members, x.astype(np.float64))
    assert np.max(np.abs(_scored(out, x)["probabilities"] - expected)) <= (
        PROBABILITY_TOLERANCE.abs
    )
    # one final member (or none: the dev split): the run `best` points at, alone
    one = _with_final_members(_tune_dir(tmp_path / "one", [(0.2, [])]), [50])
    code, printed, error = _export([str(one), "--out", str(out), "--force"], capsys)
    assert code == 0, error
    card = read_metadata(onnx.load(str(out)))
    assert card[MetadataKey.RUN_ID.full] == "synthetic-50"
    assert MetadataKey.ENSEMBLE.full not in card


def test_an_unfinished_tune_has_no_model_to_export(tmp_path: Path, out_dir: Path, capsys) -> None:
    tune = _tune_dir(tmp_path / "tune", [(0.2, [])])
    code, _, error = _export([str(tune), "--out", str(out_dir / "m.onnx")], capsys)
    assert code == 2 and error.count("\n") == 1
    assert "no best.json: the tune has not finished" in error
    _with_final_members(tune, [40, 41])
    (tune / "final-1" / "meta.json").unlink()
    code, _, error = _export([str(tune), "--out", str(out_dir / "m.onnx")], capsys)
    assert code == 2 and error.count("\n") == 1 and "are not finished runs" in error


def test_a_real_tunes_model_is_the_mean_of_its_retrains(tmp_path: Path, capsys) -> None:
    """bnserve tune with --final-members, then bnserve export TUNE_DIR: the graph answers the
    mean of the retrains' numpy paths, one example alone as in a batch."""
    from bnserve.training.tune.cli import main as tune_main

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 4))
    data = tmp_path / "small.npz"
    np.savez(data, x=x, y=(x[:, 0] + x[:, 1] > 0).astype(int))
    tune = tmp_path / "tune"
    args = ["--out", str(tune), "--data", str(data), "--trials", "3", "--cv", "2",
            "--cv-repeats", "1", "--final-members", "3", "--epochs", "3", "--set", "hidden=6",
            "--param", "lr=log:1e-3:1e-1", "--workers", "1", "--no-progress",
            "--no-plots"]  # fmt: skip
    assert tune_main(args) == 0
    capsys.readouterr()
    out = tmp_path / "m.onnx"
    code, printed, error = _export([str(tune), "--out", str(out)], capsys)
    assert code == 0, error
    assert "ensemble of 3" in printed
    members = [load_run(tune / name) for name in ("final", "final-1", "final-2")]
    rows = members[0].heldout_x.astype(np.float32)
    expected = mean_prediction(members, rows.astype(np.float64))
    batch = _scored(out, rows)["probabilities"]
    assert np.max(np.abs(batch - expected)) <= PROBABILITY_TOLERANCE.abs
    alone = np.vstack([_scored(out, rows[i : i + 1])["probabilities"] for i in range(len(rows))])
    np.testing.assert_array_equal(alone, batch)


def test_ensemble_needs_a_tune_directory(synthetic_run, out_dir: Path, capsys) -> None:
    code, _, error = _export(
        [str(synthetic_run()), "--ensemble", "3", "--out", str(out_dir / "m.onnx")], capsys
    )
    assert code == 2 and error.count("\n") == 1 and "takes one tune directory" in error


def test_help_documents_ensembles(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "RUN_DIR [RUN_DIR ...]" in text
    assert "--ensemble K" in text and "ONE graph of their mean" in text
    assert "label = argmax of that mean" in text


def test_adapt_refuses_an_ensemble(synthetic_run, out_dir: Path, capsys) -> None:
    from bnserve.export.adapt_source import AdaptError, read_source

    out = out_dir / "m.onnx"
    assert _export([str(synthetic_run(seed=0)), str(synthetic_run(seed=1)), "--out", str(out)],
                   capsys)[0] == 0  # fmt: skip
    with pytest.raises(AdaptError, match="an ensemble of several networks"):
        read_source(out)


def test_a_graph_that_is_not_the_mean_is_not_written(
    synthetic_run, out_dir: Path, capsys, monkeypatch
) -> None:
    """The check is real: a graph that averages one member too few fails it, nothing written."""
    from bnserve.export import ensemble

    build = ensemble.build_ensemble_model
    monkeypatch.setattr(
        ensemble, "build_ensemble_model", lambda members, **kw: build(members[:-1], **kw)
    )
    runs = _runs(synthetic_run, MIXED[:3])
    out = out_dir / "m.onnx"
    code, _, error = _export([*map(str, runs), "--out", str(out)], capsys)
    assert code == 2 and error.count("\n") == 1
    assert "does not reproduce the numpy inference path" in error and "nothing written" in error
    assert not out.exists()


def test_a_member_with_a_broken_meta_is_named_in_one_line(synthetic_run, out_dir, capsys) -> None:
    first, other = synthetic_run(seed=0), synthetic_run(seed=1)
    meta = json.loads((other / "meta.json").read_text())
    del meta["feature_names"]
    (other / "meta.json").write_text(json.dumps(meta))
    code, _, error = _export([str(first), str(other), "--out", str(out_dir / "m.onnx")], capsys)
    assert code == 2 and error.count("\n") == 1
    assert f"{other}" in error and "'feature_names'" in error


@pytest.mark.parametrize(
    ("layout", "specs"),
    [
        ("batched", [{"seed": 0}, {"seed": 1}, {"seed": 2}]),
        ("grouped", [{"seed": 0}, {"seed": 1}, {"seed": 2}]),
        ("blockdiag", [{"seed": 0}, {"seed": 1, "hidden": (9, 4)}, {"seed": 2, "hidden": (5, 7)}]),
    ],
)
def test_layer_drift_reads_each_member_from_the_shared_tensors(
    synthetic_run, out_dir: Path, capsys, layout: str, specs: list[dict[str, object]]
) -> None:
    """The batched graph's drift reference points every member's layers into the stacked
    tensors [k, N, H]; grouped's and blockdiag's into the columns of the members' side-by-side
    tensors [N, Σ H(, 1)] at each member's offset. The drift monitor's report on them equals
    the parallel graph's, which reads one [N, H] tensor per member and layer."""
    from bnserve.server.drift.cli import drift_report, load_model
    from bnserve.server.drift.monitor import DriftSettings

    runs = _runs(synthetic_run, specs)
    x = np.vstack([load_run(run).heldout_x for run in runs]).astype(np.float32)
    reports = {}
    for built in ("parallel", layout):
        out = out_dir / f"{built}.onnx"
        assert _export([*map(str, runs), "--out", str(out), "--layout", built], capsys)[0] == 0
        loaded = load_model(out)
        report = drift_report(loaded.session, loaded.reference, x, DriftSettings())
        reports[built] = report["layers"]
    drift = json.loads(read_metadata(onnx.load(str(out)))[MetadataKey.DRIFT.full])
    where = {
        (layer["output"], layer.get("member"), layer.get("offset")) for layer in drift["layers"]
    }
    widths = [spec.get("hidden", (16, 12)) for spec in specs]
    if layout == "batched":
        assert where == {(f"hidden{i}.z", k, None) for i in (1, 2) for k in range(3)}
    else:
        assert where == {
            (f"hidden{i}.z", None, sum(w[i - 1] for w in widths[:k]))  # type: ignore[index]
            for i in (1, 2)
            for k in range(3)
        }
    parallel, mine = reports["parallel"], reports[layout]
    assert [layer["name"] for layer in mine] == [layer["name"] for layer in parallel]
    assert len(mine) == 6
    for ours, theirs in zip(mine, parallel, strict=True):
        assert ours["score"] == pytest.approx(theirs["score"], rel=1e-4, abs=1e-6)
    assert any(layer["score"] > 0 for layer in mine)
