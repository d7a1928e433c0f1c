"""`bnserve train` (training/cli.py): options, BN momentum naming, each bad input of the issue."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bnserve.cli import main as bnserve_main
from bnserve.training.cli import CONFIG_OPTIONS, build_parser, given_settings, main

FAST = ["--hidden", "16", "--epochs", "1", "--no-progress", "--no-plot"]


def write_csv(tmp_path, text: str) -> str:
    path = tmp_path / "data.csv"
    path.write_text(text)
    return str(path)


def good_rows(count: int = 40) -> str:
    return "".join(f"{i % 7},{(i * 3) % 5},{i % 2}\n" for i in range(count))


@pytest.mark.parametrize(
    ("csv_text", "extra", "message"),
    [
        ("a,b,y\n" + good_rows() + "1,x7,0\n", [], "line 42, column 'b': 'x7' is not a number"),
        ("a,b,y\n" + good_rows() + "inf,2,0\n", [], "line 42, column 'a': 'inf' is not finite"),
        (
            "a,b,y\n" + good_rows(),
            ["--target", "label"],
            "target column 'label' is not in the header",
        ),
        ("a,b,y\n1,2,3\n4,5,3\n6,7,3\n", [], "target 'y' has a single class '3'"),
        ("a,b,y\n1,2,0\n3,4,1\n5,6,0\n", [], "3 rows leave 1 training row(s)"),
        ("a,b,y\n" + good_rows(), ["--hidden", "8,0"], "'hidden' = (8, 0) is invalid"),
        ("a,b,y\n" + good_rows(), ["--lr", "0"], "'lr' = 0.0 is invalid: must be > 0"),
        ("a,b,y\n" + good_rows(), ["--lr=-1e-3"], "'lr' = -0.001 is invalid: must be > 0"),
    ],
)
def test_bad_input_exits_nonzero_with_a_message_and_writes_nothing(
    tmp_path, capsys, csv_text, extra, message
):
    data = write_csv(tmp_path, csv_text)
    out = tmp_path / "run"
    code = main(["--out", str(out), "--data", data, *FAST[:2], *extra, "--no-progress"])
    assert code != 0
    error = capsys.readouterr().err
    assert message in error
    assert error.startswith("bnserve train: error: ")
    assert not out.exists()


def test_bn_decay_is_the_keras_name_for_one_minus_momentum(tmp_path):
    assert main(["--out", str(tmp_path / "decay"), "--bn-decay", "0.9", *FAST]) == 0
    assert main(["--out", str(tmp_path / "momentum"), "--bn-momentum", "0.1", *FAST]) == 0
    decay_meta = json.loads((tmp_path / "decay" / "meta.json").read_text())
    assert decay_meta["bn_momentum"] == pytest.approx(0.1)
    a = np.load(tmp_path / "decay" / "params.npz", allow_pickle=False)
    b = np.load(tmp_path / "momentum" / "params.npz", allow_pickle=False)
    np.testing.assert_allclose(a["hidden1.running_var"], b["hidden1.running_var"], rtol=1e-6)


def test_bn_decay_and_bn_momentum_are_mutually_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["--out", str(tmp_path / "r"), "--bn-decay", "0.9", "--bn-momentum", "0.1"])
    assert caught.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_help_prints_the_update_formula(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "running_mean = (1 − m)·running_mean + m·batch_mean" in text
    assert "--bn-decay 0.9 ≡ --bn-momentum 0.1" in text
    assert "merged into the previous batch" in text


def test_bnserve_train_runs_and_reports(tmp_path, capsys):
    assert bnserve_main(["train", "--out", str(tmp_path / "run"), *FAST]) == 0
    output = capsys.readouterr().out
    assert "1 epochs" in output and "test accuracy" in output
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["status"] == "finished"


def test_resume_with_a_new_learning_rate_via_the_cli(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["--out", run, *FAST]) == 0
    assert main(["--resume", run, "--lr", "3e-4", "--epochs", "2", "--no-progress"]) == 0
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [record["settings"]["lr"] for record in history] == [1e-3, 3e-4]
    assert main(["--resume", run, "--hidden", "32", "--no-progress"]) == 2
    assert "cannot resume with different hidden" in capsys.readouterr().err


def test_from_epoch_needs_resume(tmp_path):
    with pytest.raises(SystemExit) as caught:
        main(["--out", str(tmp_path / "r"), "--from-epoch", "2"])
    assert caught.value.code == 2


def test_every_config_field_has_an_option():
    args = build_parser().parse_args(["--out", "x"])
    assert all(hasattr(args, name) for name in CONFIG_OPTIONS)
    assert given_settings(args) == {}  # nothing given: every field keeps its default


def test_classification_of_a_continuous_target_is_refused(tmp_path, capsys):
    """The bug: a 200-class model with dev error 1.0, trained without a word."""
    rng = np.random.default_rng(0)
    rows = "".join(f"{a:.4f},{a * 3 + rng.normal():.4f}\n" for a in rng.normal(size=200))
    data = write_csv(tmp_path, "a,y\n" + rows)
    out = tmp_path / "run"
    assert main(["--out", str(out), "--data", data, "--task", "classification", *FAST]) == 2
    error = capsys.readouterr().err
    assert error.startswith("bnserve train: error: ") and error.count("\n") == 1
    assert "200 classes in 200 rows" in error and "--task regression" in error
    assert not out.exists()


def test_bn_decay_is_stored_as_given(tmp_path):
    """The bug: --bn-decay 0.9 was recorded as bn_momentum 0.09999999999999998."""
    assert main(["--out", str(tmp_path / "run"), "--bn-decay", "0.9", *FAST]) == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["bn_momentum"] == 0.1
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["bn_momentum"] == 0.1
    args = build_parser().parse_args(["--out", "x", "--bn-decay", "0.99"])
    assert given_settings(args) == {"bn_momentum": 0.01}


def test_a_keras_momentum_in_the_pytorch_option_warns(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "keras"), "--bn-momentum", "0.99", *FAST]) == 0
    error = capsys.readouterr().err
    assert "bnserve train: warning: --bn-momentum 0.99" in error
    assert "--bn-decay 0.99 (= --bn-momentum 0.01)" in error
    assert main(["--out", str(tmp_path / "torch"), "--bn-momentum", "0.1", *FAST]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_full_disk_is_one_line_and_the_run_resumes_once_there_is_room(
    tmp_path, capsys, small_disk
):
    """The bug: 61 lines of traceback ending in ENOSPC."""
    disk = small_disk.mount(600)  # config.json fits, the first checkpoint (256×256 + Adam) not
    run = disk / "run"
    assert main(["--out", str(run), "--epochs", "2", "--no-progress", "--no-plot"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error, error
    assert error.startswith(f"bnserve train: error: {run}: training stopped, no space left")
    assert f"continue with: bnserve train --resume {run}" in error
    assert not list(run.rglob(".tmp-*"))  # no half-written file left
    small_disk.resize(disk, 64 * 1024)
    assert main(["--resume", str(run), "--no-progress", "--no-plot"]) == 0
    assert "restarting from epoch 0" in capsys.readouterr().err
    assert json.loads((run / "meta.json").read_text())["status"] == "finished"


def test_a_disk_full_before_the_first_file_says_run_it_again(tmp_path, capsys, small_disk):
    disk = small_disk.mount(4)  # one page: a directory fits, no file of a run does
    (disk / "filler").write_bytes(b"x" * 4096)  # the page is taken
    run = disk / "run"
    assert main(["--out", str(run), *FAST]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no space left" in error
    assert "run the same command again" in error


def test_an_out_that_is_a_file_is_one_line_not_a_traceback(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    assert main(["--out", str(tmp_path / "afile"), *FAST]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "cannot write the run directory" in error, error
    assert "make room" not in error  # not a full disk: no advice about space
