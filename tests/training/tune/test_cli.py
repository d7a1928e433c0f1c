"""`bnserve tune` end to end: the real command, kill -9 mid-trial and --resume, outputs,
bad input.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnserve.training.rundir import load_run
from bnserve.training.tune.cli import main
from bnserve.training.tune.store import FILENAME, TrialStore
from tests.support.processes import alive
from tests.support.waiting import wait_until

BNSERVE = str(Path(sys.executable).parent / "bnserve")
# Real training on digits at about a second a trial: long enough to be killed in the middle.
SLOW_TRIALS = [
    "--trials", "4", "--epochs", "40", "--set", "hidden=32", "--cv", "off",
    "--param", "lr=log:1e-3:1e-2", "--param", "batch_size=choice:32,64",
    "--no-progress", "--no-plots",
]  # fmt: skip
TINY = ["--cv", "off", "--epochs", "2", "--set", "hidden=16", "--param", "lr=log:1e-3:1e-1",
        "--no-progress"]  # fmt: skip
DEADLINE_SECONDS = 120


def _states(out):
    try:
        with TrialStore(out / FILENAME, readonly=True) as store:
            return {r.trial: r for r in store.trials()}
    except Exception:  # not created yet, or mid-creation
        return {}


@pytest.fixture
def start_tune():
    """Start `bnserve tune ARGS` in the background; whatever a test leaves running is killed."""
    started = []

    def start(*args):
        process = subprocess.Popen(
            [BNSERVE, "tune", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stderr.close()


def _children(pid):
    """Processes whose parent is `pid` (the tune's worker processes)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds worker processes through /proc")
def test_kill_9_mid_trial_then_resume_reruns_nothing_that_finished(tmp_path, start_tune):
    out = tmp_path / "tune"
    tune = start_tune("--out", str(out), "--workers", "1", *SLOW_TRIALS)
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        assert time.monotonic() < deadline and tune.poll() is None, (
            "the tune ended before it could be killed"
        )
        states = _states(out)
        finished = [t for t, r in states.items() if r.state == "finished"]
        running = [t for t, r in states.items() if r.state == "running"]
        if len(finished) >= 1 and running:
            workers = _children(tune.pid)
            os.kill(tune.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    tune.wait(timeout=30)
    before = _states(out)
    killed = [t for t, r in before.items() if r.state == "running"]
    assert killed, "the kill landed between trials; nothing was mid-way"
    done_before = {t: r for t, r in before.items() if r.state == "finished"}

    # the orphaned worker notices its coordinator is gone and exits
    assert workers
    while any(alive(pid) for pid in workers):
        assert time.monotonic() < deadline, f"workers {workers} outlived the killed coordinator"
        time.sleep(0.05)

    resumed = subprocess.run(
        [BNSERVE, "tune", "--out", str(out), "--resume", "--no-progress", "--no-plots"],
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"rerunning interrupted trial(s) {killed}" in resumed.stderr
    after = _states(out)
    assert [r.state for r in after.values()] == ["finished"] * 4
    for trial, record in done_before.items():  # untouched: same attempt, same end time
        assert after[trial] == record
    for trial in killed:
        assert after[trial].attempts == 2
    assert all(after[t].attempts == 1 for t in after if t not in killed)

    # and the resumed tune ends exactly where an uninterrupted one does
    whole = subprocess.run(
        [BNSERVE, "tune", "--out", str(tmp_path / "whole"), "--workers", "1", *SLOW_TRIALS],
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
    )
    assert whole.returncode == 0, whole.stderr
    uninterrupted = _states(tmp_path / "whole")
    assert {t: (r.params, r.dev_error, r.history) for t, r in after.items()} == {
        t: (r.params, r.dev_error, r.history) for t, r in uninterrupted.items()
    }


def _spawned_workers(pid):
    """The tune's pool workers among its children (not multiprocessing's resource tracker)."""
    workers = []
    for child in _children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            workers.append(child)
    return workers


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds worker processes through /proc")
def test_a_killed_worker_costs_its_trial_one_rerun_and_the_tune_goes_on(tmp_path, start_tune):
    out = tmp_path / "tune"
    tune = start_tune("--out", str(out), "--workers", "2", *SLOW_TRIALS)
    deadline = time.monotonic() + DEADLINE_SECONDS
    while True:
        assert time.monotonic() < deadline and tune.poll() is None, "the tune ended first"
        running = [t for t, r in _states(out).items() if r.state == "running"]
        workers = _spawned_workers(tune.pid)
        if running and workers:
            os.kill(workers[0], signal.SIGKILL)
            break
        time.sleep(0.02)
    _, stderr = tune.communicate(timeout=DEADLINE_SECONDS)
    assert tune.returncode == 0, stderr
    assert "worker lost, running it again" in stderr
    after = _states(out)
    assert [r.state for r in after.values()] == ["finished"] * 4
    assert any(r.attempts == 2 for r in after.values())


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds worker processes through /proc")
def test_random_worker_kills_never_hang_or_lose_a_tune(tmp_path, start_tune):
    """Soak version of the test above: 30 tunes, each with one worker killed at a random moment
    (start-up, mid-trial, idle, during shutdown). ProcessPoolExecutor hung in 2 of ~120 runs."""
    rng = random.Random(0)
    for attempt in range(30):
        out = tmp_path / f"tune-{attempt}"
        tune = start_tune("--out", str(out), "--workers", "2", *SLOW_TRIALS)
        kill_after = time.monotonic() + rng.uniform(0.0, 2.0)
        deadline = time.monotonic() + DEADLINE_SECONDS
        while tune.poll() is None:
            assert time.monotonic() < deadline, f"attempt {attempt}: no worker to kill"
            workers = _spawned_workers(tune.pid)
            if workers and time.monotonic() >= kill_after:
                os.kill(rng.choice(workers), signal.SIGKILL)
                break
            time.sleep(0.005)
        _, stderr = tune.communicate(timeout=DEADLINE_SECONDS)
        assert tune.returncode == 0, f"attempt {attempt}: {stderr}"
        states = [r.state for r in _states(out).values()]
        assert states == ["finished"] * 4, f"attempt {attempt}: {states}\n{stderr}"


def test_ctrl_c_exits_130_and_leaves_running_trials_for_resume(tmp_path, start_tune):
    out = tmp_path / "tune"
    tune = start_tune("--out", str(out), "--workers", "2", *SLOW_TRIALS)

    def trial_started() -> bool:
        assert tune.poll() is None, "no trial started"
        return any(r.state == "running" for r in _states(out).values())

    wait_until(trial_started, "a trial started", DEADLINE_SECONDS, interval_s=0.02)
    tune.send_signal(signal.SIGINT)
    _, stderr = tune.communicate(timeout=DEADLINE_SECONDS)
    assert tune.returncode == 130
    assert f"interrupted; finish with --resume --out {out}" in stderr
    assert "running" in {r.state for r in _states(out).values()}  # --resume reruns them


def test_a_tune_prints_best_first_and_leaves_an_exportable_best_run(tmp_path, capsys):
    out = tmp_path / "tune"
    assert main(["--out", str(out), "--trials", "4", "--workers", "2", "--rounds", "2", *TINY]) == 0
    printed = capsys.readouterr().out
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["rank"]) for row in rows] == [1, 2, 3, 4]
    errors = [float(row["dev_error"]) for row in rows]
    assert errors == sorted(errors)
    assert printed.splitlines()[0].startswith("cross-validation: off: trials are compared on")
    assert printed.splitlines()[2].split()[:2] == ["1", rows[0]["trial"]]
    best = load_run(out / "best")  # the run directory `bnserve export` reads
    assert best.meta["dev_error"] == pytest.approx(errors[0])
    assert (out / "best").resolve() == (out / rows[0]["run_dir"]).resolve()
    assert json.loads((out / "best.json").read_text())["trial"] == int(rows[0]["trial"])
    for name in ("dev_error_vs_params", "learning_curves", "boxes"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "best: trial" in printed and "bnserve export" in printed


def test_grid_and_compare_batchnorm_from_the_command_line(tmp_path, capsys):
    grid = tmp_path / "grid"
    args = [
        "--param",
        "lr=log:1e-3:1e-1",
        "--param",
        "batch_size=choice:32,64",
        "--objective",
        "synthetic",
    ]
    assert main(["--out", str(grid), "--grid", "3", "--no-plots", "--no-progress", *args]) == 0
    with TrialStore(grid / FILENAME, readonly=True) as store:
        points = sorted((r.params["lr"], r.params["batch_size"]) for r in store.trials())
    assert [lr for lr, _ in points] == pytest.approx([1e-3, 1e-3, 1e-2, 1e-2, 1e-1, 1e-1])
    assert [batch_size for _, batch_size in points] == [32, 64] * 3
    compare = tmp_path / "compare"
    assert main(["--out", str(compare), "--compare-batchnorm", "--trials", "4", *TINY]) == 0
    assert (compare / "plots" / "batchnorm_compare.png").is_file()
    capsys.readouterr()


def _closed_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--param", "learning_rate=log:1e-4:1"], "unknown hyperparameter 'learning_rate'"),
        (["--param", "lr=log:1:1e-4"], "'lr': low = 1.0 must be < high = 0.0001"),
        (["--param", "lr=log:0:1"], "'lr': a log range must stay above 0, got low = 0.0"),
        (["--param", "beta1=log1m:0.9:1"], "needs β in (0, 1), got 1.0"),
        (["--workers", "0"], "--workers 0: need at least 1 worker"),
        (["--ray-address", "127.0.0.1:{port}"], "unreachable"),
        (["--space", "{tmp}/missing.toml"], "missing.toml: cannot read the space file"),
        (["--data", "{tmp}/missing.csv"], "missing.csv: no such data file"),
        (["--set", "epochs=0"], "'epochs' = 0 is invalid"),
        (["--resume"], "no tune.sqlite to resume"),
    ],
)
def test_bad_input_is_named_and_no_trial_starts(tmp_path, capsys, args, message):
    out = tmp_path / "tune"
    args = [arg.format(port=_closed_port(), tmp=tmp_path) for arg in args]
    assert main(["--out", str(out), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_resume_keeps_the_stored_settings(tmp_path, capsys):
    out = tmp_path / "tune"
    assert (
        main(
            [
                "--out",
                str(out),
                "--trials",
                "2",
                "--objective",
                "synthetic",
                "--no-plots",
                "--no-progress",
            ]
        )
        == 0
    )
    assert main(["--out", str(out), "--resume", "--trials", "5"]) == 2
    assert "--resume keeps the tune's stored settings: drop --trials" in capsys.readouterr().err
    assert main(["--out", str(out), "--trials", "2", "--objective", "synthetic"]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err


SYNTHETIC = ["--trials", "6", "--objective", "synthetic", "--no-plots", "--no-progress"]


def test_a_tune_stored_before_newer_settings_resumes_with_their_defaults(tmp_path, capsys):
    out = tmp_path / "tune"
    assert main(["--out", str(out), *SYNTHETIC]) == 0
    with sqlite3.connect(out / FILENAME) as db:  # as an earlier bnserve wrote it
        db.execute("DELETE FROM settings WHERE key IN ('cv_repeats', 'final_average')")
    db.close()
    capsys.readouterr()
    assert main(["--out", str(out), "--resume", "--no-progress", "--no-plots"]) == 0
    assert "6 finished" in capsys.readouterr().out


def _damage(path, how):
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "overwritten":
        path.write_bytes(random.Random(0).randbytes(20_000))
    elif how == "emptied":
        path.write_bytes(b"")
    else:  # a table dropped
        with sqlite3.connect(path) as db:
            db.execute("DROP TABLE trials")
        db.close()


@pytest.mark.parametrize(
    ("how", "sqlite_says"),
    [
        ("truncated", "database disk image is malformed"),
        ("overwritten", "file is not a database"),
        ("emptied", "no such table: rounds, settings, trials"),
        ("dropped", "no such table: trials"),
    ],
)
def test_a_damaged_tune_sqlite_is_one_line_and_left_as_it_is(tmp_path, capsys, how, sqlite_says):
    """The bug: tracebacks ('database disk image is malformed', 'no such table'); a dropped
    table was even recreated empty and the tune "resumed" with no trials."""
    out = tmp_path / "tune"
    assert main(["--out", str(out), *SYNTHETIC]) == 0
    capsys.readouterr()
    _damage(out / FILENAME, how)
    damaged = (out / FILENAME).read_bytes()
    assert main(["--out", str(out), "--resume", "--no-progress", "--no-plots"]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"bnserve tune: error: {out / FILENAME}: not a readable tune database")
    assert sqlite_says in error and error.count("\n") == 1, error
    assert "restore tune.sqlite from a backup" in error
    assert (out / FILENAME).read_bytes() == damaged  # not "repaired" into something else


def test_a_full_disk_is_one_line_and_leaves_a_directory_that_starts_again(capsys, small_disk):
    disk = small_disk.mount(40)  # room for the lock file, not for the database
    out = disk / "tune"
    assert main(["--out", str(out), *SYNTHETIC]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error, error
    assert error.startswith(f"bnserve tune: error: {out / FILENAME}: database or disk is full")
    assert "make room, then start it again" in error
    assert not out.exists()  # nothing half-made that --resume would refuse
    small_disk.resize(disk, 10 * 1024)
    assert main(["--out", str(out), *SYNTHETIC]) == 0


def test_an_out_that_is_a_file_is_one_line_not_a_traceback(tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    assert main(["--out", str(tmp_path / "afile"), *SYNTHETIC]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "cannot write the tune directory: file exists" in error
