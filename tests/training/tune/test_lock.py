"""One writer per tune directory: a second `bnserve tune` is refused with the holder's pid, and
a lock left by a killed coordinator is taken over with a message."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bnserve.training.tune.errors import TuneLocked
from bnserve.training.tune.lock import LOCK_NAME, TuneLock
from bnserve.training.tune.store import FILENAME
from tests.support.processes import alive
from tests.support.waiting import wait_until

from .test_cli import BNSERVE, DEADLINE_SECONDS, SLOW_TRIALS, _spawned_workers, _states

# Trials of a few seconds each: the first tune is still mid-way while the second ones are refused.
LONG_TRIALS = [*SLOW_TRIALS, "--epochs", "150"]
HOLD = (
    "import sys; from pathlib import Path; from bnserve.training.tune.lock import TuneLock\n"
    "with TuneLock(Path(sys.argv[1])):\n"
    "    print('locked', flush=True); sys.stdin.read()\n"
)


def test_a_second_lock_names_the_holder_and_a_clean_release_leaves_nothing_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with TuneLock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(TuneLocked, match=f"process {os.getpid()} is running this tune"):
            TuneLock(tmp_path).acquire()
    assert (tmp_path / LOCK_NAME).read_text() == ""
    with TuneLock(tmp_path):
        pass
    assert "stale" not in capsys.readouterr().err


def test_a_killed_holders_lock_is_stale_and_taken_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "locked\n"
        with pytest.raises(TuneLocked, match=f"process {holder.pid} is running"):
            TuneLock(tmp_path).acquire()
        holder.kill()
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
        holder.wait()
        holder.stdin.close()
        holder.stdout.close()
    with TuneLock(tmp_path):
        assert f"taking over a stale lock of process {holder.pid}" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="checks process states through /proc")
def test_two_tunes_on_one_directory(tmp_path: Path) -> None:
    """The bug: two `--resume` at once ran the same trials and both exited 0."""
    out = tmp_path / "tune"
    first = subprocess.Popen(
        [BNSERVE, "tune", "--out", str(out), "--workers", "1", *LONG_TRIALS],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def started() -> bool:
            assert first.poll() is None, "the tune never started"
            return any(r.state == "running" for r in _states(out).values())

        wait_until(started, "the tune started", DEADLINE_SECONDS, interval_s=0.02)
        before = _states(out)
        for args in (["--resume"], LONG_TRIALS):  # resumed, or started again over it
            second = subprocess.run(
                [BNSERVE, "tune", "--out", str(out), *args, "--no-progress", "--no-plots"],
                capture_output=True,
                text=True,
                timeout=DEADLINE_SECONDS,
            )
            assert second.returncode == 2, second.stderr
            assert second.stderr.startswith("bnserve tune: error: ")
            assert f"process {first.pid} is running this tune" in second.stderr
            assert second.stderr.count("\n") == 1, second.stderr
        after = _states(out)
        for trial, record in before.items():  # the second one requeued and ran nothing
            if record.state == "running":
                assert after[trial].attempts == 1 and after[trial].started_at == record.started_at
        workers = _spawned_workers(first.pid)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        first.wait()
        first.stderr.close()
    wait_until(
        lambda: not any(alive(pid) for pid in workers),
        "the killed tune's workers gone",
        DEADLINE_SECONDS,
        interval_s=0.05,
    )
    resumed = subprocess.run(
        [BNSERVE, "tune", "--out", str(out), "--resume", "--no-progress", "--no-plots"],
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"taking over a stale lock of process {first.pid}" in resumed.stderr
    assert [r.state for r in _states(out).values()] == ["finished"] * 4
    assert (out / LOCK_NAME).read_text() == ""
    assert (out / FILENAME).exists()


def test_the_results_are_written_while_the_lock_is_held(tmp_path: Path) -> None:
    """results.csv, the best link and the plots are written by the directory's one writer too."""
    from bnserve.training.tune.runner import run_tune
    from bnserve.training.tune.settings import TuneSettings

    from .test_executors import SYNTHETIC

    seen = []

    def report(result) -> None:
        with pytest.raises(TuneLocked, match=f"process {os.getpid()}"):
            TuneLock(result.out).acquire()
        seen.append(len(result.ranked))

    settings = TuneSettings(
        out=tmp_path / "tune", space=SYNTHETIC, trials=3, workers=1, progress=False,
        objective="synthetic",
    )  # fmt: skip
    run_tune(settings, report=report)
    assert seen == [3]
    with TuneLock(tmp_path / "tune"):  # released at the end
        pass
