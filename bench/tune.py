"""The tuner: wall time of the same 8 real trials with 1 and 2 workers, and its own overhead.

1. Speedup: 8 trials of real training on digits (hidden 256,256, 30 epochs, batch 64; lr and β1
   searched, so every trial costs about the same), run with --workers 1 and --workers 2, rounds
   alternating so machine noise hits both alike; the median per worker count and their ratio.
   Worker-pool start-up is included: it is part of what a user waits for.
2. Overhead: 100 trivial trials (the synthetic objective, no data and no files), one worker
   process: the whole run_tune wall time (spawning the worker, sampling, SQLite, dispatch) next
   to the time the trials themselves took in the worker. Plots are not included.

    .venv/bin/python bench/tune.py [--rounds 3] [--trials 8] [--overhead-trials 100]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REAL_SPACE = {
    "fixed": {"epochs": 30, "hidden": [256, 256], "batch_size": 64},
    "search": {
        "lr": {"scale": "log", "low": 1e-4, "high": 1e-1},
        "beta1": {"scale": "log1m", "low": 0.8, "high": 0.99},
    },
}
TRIVIAL_SPACE = {
    "fixed": {"epochs": 1},
    "search": {
        "lr": {"scale": "log", "low": 1e-4, "high": 1.0},
        "beta1": {"scale": "log1m", "low": 0.9, "high": 0.999},
        "batch_size": {"choice": [32, 64, 128]},
    },
}


@dataclass(frozen=True)
class BenchSettings:
    rounds: int  # alternating measurement rounds per worker count; the median is reported
    trials: int  # real trials per tune in the speedup measurement
    overhead_trials: int  # trivial trials in the overhead measurement


@dataclass(frozen=True)
class Timing:
    wall: float  # seconds of run_tune, start to end
    cpu: float  # CPU seconds (user + system) of this process and its ended worker processes
    trial_seconds: list[float]  # per trial, as the workers measured it


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # workers, once the pool is shut
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed_tune(workdir: Path, name: str, **settings: object) -> Timing:
    # Imported here, not at the top: spawned workers re-import this file as their main module,
    # and `bnserve tune`'s own main module imports nothing heavy either.
    from bnserve.training.tune.runner import run_tune
    from bnserve.training.tune.settings import TuneSettings

    tune_settings = TuneSettings(out=workdir / name, progress=False, plots=False, **settings)
    cpu_before = _cpu_seconds()
    started = time.perf_counter()
    result = run_tune(tune_settings)
    wall = time.perf_counter() - started
    if any(record.state != "finished" for record in result.ranked):
        raise RuntimeError(f"{name}: not every trial finished")
    trial_seconds = [record.seconds or 0.0 for record in result.ranked]
    return Timing(wall, _cpu_seconds() - cpu_before, trial_seconds)


def measure_speedup(workdir: Path, bench: BenchSettings) -> dict[int, list[float]]:
    walls: dict[int, list[float]] = {1: [], 2: []}
    for round_index in range(bench.rounds):
        for workers in (1, 2):
            timing = timed_tune(
                workdir,
                f"speedup-{round_index}-{workers}",
                space=REAL_SPACE,
                trials=bench.trials,
                workers=workers,
            )
            walls[workers].append(timing.wall)
    return walls


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--overhead-trials", type=int, default=100)
    args = parser.parse_args(argv)
    bench = BenchSettings(args.rounds, args.trials, args.overhead_trials)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as temp:
        workdir = Path(temp)
        walls = measure_speedup(workdir, bench)
        overhead = timed_tune(
            workdir,
            "overhead",
            space=TRIVIAL_SPACE,
            trials=bench.overhead_trials,
            workers=1,
            objective="synthetic",
        )
    one, two = statistics.median(walls[1]), statistics.median(walls[2])
    print(
        f"{os.cpu_count()} cores; 1-minute load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after (a loaded machine cannot show a 2-worker speedup)"
    )
    print(f"same {bench.trials} real trials (digits, 256,256, 30 epochs), median of {bench.rounds}")
    print(f"  {'workers':>8}  {'wall s':>8}  rounds")
    for workers, seconds in walls.items():
        rounds = " ".join(f"{s:.2f}" for s in seconds)
        print(f"  {workers:>8}  {statistics.median(seconds):>8.2f}  {rounds}")
    print(f"  speedup 2 workers vs 1: {one / two:.2f}x (goal ≥ 1.8x on 2 cores)")
    inside = sum(overhead.trial_seconds)
    print(f"tuner overhead, {bench.overhead_trials} trivial trials, 1 worker process")
    print(f"  run_tune wall {overhead.wall:.3f} s, of which trials {inside:.4f} s")
    per_trial_ms = 1000 * (overhead.wall - inside) / bench.overhead_trials
    print(f"  overhead {overhead.wall - inside:.3f} s wall ({per_trial_ms:.2f} ms per trial)")
    print(f"  CPU time, coordinator and worker together: {overhead.cpu:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
