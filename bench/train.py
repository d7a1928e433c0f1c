"""Training throughput (examples/s): numpy (training.train.run_epoch) vs eager PyTorch on the CPU.

The network of the issue: 64→128→128→10 MLP, batch norm on both hidden layers, ReLU, softmax
cross-entropy, Adam (lr 1e-3), batch 64, a fresh shuffle every epoch. Both sides train on the
same random standardized data (throughput does not depend on the values). Rounds alternate
between the implementations so machine noise hits all alike; each figure is the median over
rounds. Throughput is given per wall-clock second and per CPU-second of the process (the latter
is steadier on a shared machine; with several threads it counts all of them). numpy runs with
one BLAS thread, as train() does; PyTorch runs with one thread and with its default intra-op
threads, and the wall-clock ratio is taken against the faster of the two.
PyTorch is optional: without it only the numpy row is printed.

    .venv/bin/python bench/train.py [--rounds 7] [--examples 8192]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import numpy as np

from training.batches import Rows
from training.config import TrainConfig
from training.data import Dataset, Split
from training.threads import blas_threads
from training.train import Prepared, TrainingState, fresh_state, run_epoch

FEATURES, HIDDEN, CLASSES, BATCH = 64, (128, 128), 10, 64


@dataclass(frozen=True)
class BenchSettings:
    rounds: int  # alternating rounds (one epoch per framework each); medians are reported
    examples: int  # training examples per epoch


def synthetic_prepared(examples: int, seed: int = 0) -> Prepared:
    """Random standardized features (examples, 64) float32 and labels in 0..9."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((examples, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, examples)
    names = [f"x{i}" for i in range(FEATURES)]
    dataset = Dataset(
        x, y, "classification", names, [str(c) for c in range(CLASSES)], None, "bench"
    )
    rows = np.arange(examples)
    ones, zeros = np.ones(FEATURES), np.zeros(FEATURES)
    split = Split(rows, rows[:0], rows[:0])
    train, dev = Rows(x, rows, zeros, ones), Rows(x, rows[:0], zeros, ones)
    return Prepared(dataset, split, zeros, ones, None, None, train, y, dev)


class NumpyTrainer:
    def __init__(self, prepared: Prepared) -> None:
        self.prepared = prepared
        self.config = TrainConfig(hidden=HIDDEN, batch_size=BATCH, optimizer="adam", lr=1e-3)
        self.state: TrainingState = fresh_state(self.config, prepared)

    def epoch(self) -> None:
        with blas_threads(1):
            run_epoch(self.state, self.prepared, self.config, self.config.lr)


class TorchTrainer:
    def __init__(self, prepared: Prepared, torch_module, threads: int) -> None:
        torch = self.torch = torch_module
        self.threads = threads
        nn = torch.nn
        torch.manual_seed(0)
        self.model = nn.Sequential(
            nn.Linear(FEATURES, HIDDEN[0], bias=False),
            nn.BatchNorm1d(HIDDEN[0]),
            nn.ReLU(),
            nn.Linear(HIDDEN[0], HIDDEN[1], bias=False),
            nn.BatchNorm1d(HIDDEN[1]),
            nn.ReLU(),
            nn.Linear(HIDDEN[1], CLASSES),
        )
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss = nn.CrossEntropyLoss()
        self.x = torch.from_numpy(prepared.x_train.take(slice(None)))
        self.y = torch.from_numpy(prepared.y_train)

    def epoch(self) -> None:
        torch = self.torch
        torch.set_num_threads(self.threads)
        order = torch.randperm(len(self.x))
        x_shuffled, y_shuffled = self.x[order], self.y[order]
        self.model.train()
        for start in range(0, len(order), BATCH):
            x_batch = x_shuffled[start : start + BATCH]
            y_batch = y_shuffled[start : start + BATCH]
            if len(x_batch) < 2:
                continue
            self.optimizer.zero_grad(set_to_none=True)
            self.loss(self.model(x_batch), y_batch).backward()
            self.optimizer.step()


@dataclass(frozen=True)
class Sample:
    wall: float  # examples per second of wall-clock time
    cpu: float  # examples per second of this process's CPU time (all its threads)


def measure_epoch(trainer: NumpyTrainer | TorchTrainer, examples: int) -> Sample:
    wall_started, cpu_started = time.perf_counter(), time.process_time()
    trainer.epoch()
    wall, cpu = time.perf_counter() - wall_started, time.process_time() - cpu_started
    return Sample(examples / wall, examples / max(cpu, 1e-9))


def print_table(samples: dict[str, list[Sample]]) -> dict[str, Sample]:
    """Medians per implementation (and the wall-clock spread); returns the medians."""
    print(f"{'implementation':<30} {'examples/s':>11} {'min':>9} {'max':>9} {'per CPU-s':>10}")
    medians = {}
    for name, values in samples.items():
        walls = [sample.wall for sample in values]
        median = Sample(statistics.median(walls), statistics.median(s.cpu for s in values))
        medians[name] = median
        print(
            f"{name:<30} {median.wall:>11,.0f} {min(walls):>9,.0f} {max(walls):>9,.0f} "
            f"{median.cpu:>10,.0f}"
        )
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--examples", type=int, default=8192)
    args = parser.parse_args()
    settings = BenchSettings(args.rounds, args.examples)
    try:
        import torch
    except ImportError:
        torch = None
    prepared = synthetic_prepared(settings.examples)
    trainers: dict[str, NumpyTrainer | TorchTrainer] = {
        "numpy, 1 BLAS thread": NumpyTrainer(prepared)
    }
    if torch is not None:
        default_threads = torch.get_num_threads()
        for threads in sorted({1, default_threads}):
            name = f"pytorch {torch.__version__}, {threads} thread{'s' if threads > 1 else ''}"
            trainers[name] = TorchTrainer(prepared, torch, threads)
    for trainer in trainers.values():
        trainer.epoch()  # warm-up: allocations, BLAS and autograd set-up
    samples: dict[str, list[Sample]] = {name: [] for name in trainers}
    for _ in range(settings.rounds):
        for name, trainer in trainers.items():
            samples[name].append(measure_epoch(trainer, settings.examples))
    print(
        f"training throughput, 64→128→128→10 BN MLP, batch {BATCH}, Adam; "
        f"{settings.examples} examples/epoch, median of {settings.rounds} rounds; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}"
    )
    medians = print_table(samples)
    if torch is None:
        print("ratio: PyTorch not importable here (pip install torch==2.13.0 to compare)")
        return
    numpy_rate, *torch_rates = medians.values()
    fastest = max(rate.wall for rate in torch_rates)
    one_thread = torch_rates[0]  # sorted thread counts: the first is 1
    print(
        f"ratio numpy / fastest pytorch, wall clock: {numpy_rate.wall / fastest:.2f}x (goal ≥ 1.5x)"
    )
    print(
        f"ratio numpy / pytorch 1 thread, per CPU-second: {numpy_rate.cpu / one_thread.cpu:.2f}x "
        "(less sensitive to other load on the machine)"
    )


if __name__ == "__main__":
    main()
