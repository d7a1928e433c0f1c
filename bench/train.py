"""Training throughput (examples/s): numpy (training.train.run_epoch) vs eager PyTorch on the CPU.

The network of the issue: 64→128→128→10 MLP, batch norm on both hidden layers, ReLU, softmax
cross-entropy, Adam (lr 1e-3), batch 64, a fresh shuffle every epoch. Both sides train on the
same random standardized data (throughput does not depend on the values). Rounds alternate
between the two so machine noise hits both alike; each figure is the median over rounds.
PyTorch is optional: without it only the numpy row is printed.

    .venv/bin/python bench/train.py [--rounds 7] [--examples 8192] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import numpy as np

from training.config import TrainConfig
from training.data import Dataset, Split
from training.train import Prepared, TrainingState, fresh_state, run_epoch

FEATURES, HIDDEN, CLASSES, BATCH = 64, (128, 128), 10, 64


@dataclass(frozen=True)
class BenchSettings:
    rounds: int  # alternating rounds (one epoch per framework each); medians are reported
    examples: int  # training examples per epoch
    threads: int | None  # BLAS / torch intra-op threads (None: each library's default)


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
    return Prepared(dataset, Split(rows, rows[:0], rows[:0]), zeros, ones, None, None, x, y, x[:0])


class NumpyTrainer:
    def __init__(self, prepared: Prepared) -> None:
        self.prepared = prepared
        self.config = TrainConfig(hidden=HIDDEN, batch_size=BATCH, optimizer="adam", lr=1e-3)
        self.state: TrainingState = fresh_state(self.config, prepared)

    def epoch(self) -> None:
        run_epoch(self.state, self.prepared, self.config, self.config.lr)


class TorchTrainer:
    def __init__(self, prepared: Prepared, torch_module) -> None:
        torch = self.torch = torch_module
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
        self.x = torch.from_numpy(prepared.x_train)
        self.y = torch.from_numpy(prepared.y_train)

    def epoch(self) -> None:
        torch = self.torch
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


def examples_per_second(trainer, examples: int) -> float:
    started = time.perf_counter()
    trainer.epoch()
    return examples / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--examples", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    settings = BenchSettings(args.rounds, args.examples, args.threads)
    try:
        import torch
    except ImportError:
        torch = None
    if settings.threads is not None and torch is not None:
        torch.set_num_threads(settings.threads)
    prepared = synthetic_prepared(settings.examples)
    trainers = {"numpy (training)": NumpyTrainer(prepared)}
    if torch is not None:
        trainers[f"pytorch {torch.__version__} eager"] = TorchTrainer(prepared, torch)
    for trainer in trainers.values():
        trainer.epoch()  # warm-up: allocations, BLAS and autograd set-up
    samples: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(settings.rounds):
        for name, trainer in trainers.items():
            samples[name].append(examples_per_second(trainer, settings.examples))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    threads = f"torch threads {torch.get_num_threads()}" if torch is not None else "no torch"
    print(
        f"training throughput, 64→128→128→10 BN MLP, batch {BATCH}, Adam; "
        f"{settings.examples} examples/epoch, median of {settings.rounds} rounds; "
        f"{os.cpu_count()} CPUs, {threads}, OPENBLAS_NUM_THREADS="
        f"{os.environ.get('OPENBLAS_NUM_THREADS', 'default')}"
    )
    print(f"{'implementation':<28} {'examples/s':>12} {'min':>10} {'max':>10}")
    for name, values in samples.items():
        print(f"{name:<28} {medians[name]:>12,.0f} {min(values):>10,.0f} {max(values):>10,.0f}")
    if torch is None:
        print("ratio: PyTorch not importable here (pip install torch==2.13.0 to compare)")
        return
    numpy_rate, torch_rate = medians.values()
    print(f"ratio numpy / pytorch: {numpy_rate / torch_rate:.2f}x (goal ≥ 1.5x)")


if __name__ == "__main__":
    main()
