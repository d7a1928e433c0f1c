"""Training throughput: numpy (training/train.py) vs eager PyTorch on the CPU, three sizes.

The networks of issue 15, each Linear (no bias) + BatchNorm1d + ReLU per hidden layer, softmax
cross-entropy, Adam (lr 1e-3), a fresh shuffle every epoch:

    64→128→128→10 at batch 64, 784→512→512→10 at batch 256, 256→1024×3→10 at batch 512

Both sides train on the same random standardized data in the same process. Rounds alternate
between the implementations so machine noise hits all alike; each figure is the median over
rounds. numpy runs with one BLAS thread and with the threads train() chooses for that size
(training/threads.py); PyTorch with one thread and with all cores. Throughput is per
wall-clock second and per CPU-second of each side's own work: a one-thread side is charged
its thread's CPU time (time.thread_time), so threads left spinning by another side are not
charged to it; a threaded side is charged the process's, with OMP_WAIT_POLICY=PASSIVE (set
before torch loads) so PyTorch's idle OpenMP threads sleep instead of spinning. GFLOP/s
counts 6·Σ fan_in·fan_out per example (the forward product and the two backward ones); the
ceiling is a bare np.matmul of the same shapes and threads, same run.
PyTorch is optional: without it only the numpy rows are printed.

    .venv/bin/python bench/train.py [--rounds 5] [--scale 1.0] [--sizes small,medium,large]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch (and its OpenMP) loads

import argparse
import statistics
import time
from dataclasses import dataclass

import numpy as np

from bnserve.training.config import TrainConfig
from bnserve.training.data.batches import Rows
from bnserve.training.data.loading import Dataset, Split
from bnserve.training.threads import available_cores, blas_threads, blas_threads_for
from bnserve.training.train import Prepared, TrainingState, fresh_state, run_epoch

CLASSES = 10


@dataclass(frozen=True)
class Network:
    name: str
    features: int
    hidden: tuple[int, ...]
    batch: int
    examples: int  # per epoch at --scale 1

    @property
    def sizes(self) -> list[int]:
        return [self.features, *self.hidden, CLASSES]

    @property
    def flops_per_example(self) -> int:
        return 6 * sum(a * b for a, b in zip(self.sizes[:-1], self.sizes[1:], strict=True))

    def label(self) -> str:
        return "→".join(map(str, self.sizes)) + f", batch {self.batch}"


NETWORKS = {
    "small": Network("small", 64, (128, 128), 64, 8192),
    "medium": Network("medium", 784, (512, 512), 256, 4096),
    "large": Network("large", 256, (1024, 1024, 1024), 512, 4096),
}


def synthetic_prepared(net: Network, examples: int, seed: int = 0) -> Prepared:
    """Random standardized features (examples, F) float32 and labels in 0..9."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((examples, net.features)).astype(np.float32)
    y = rng.integers(0, CLASSES, examples)
    names = [f"x{i}" for i in range(net.features)]
    dataset = Dataset(
        x, y, "classification", names, [str(c) for c in range(CLASSES)], None, "bench"
    )
    rows = np.arange(examples)
    ones, zeros = np.ones(net.features), np.zeros(net.features)
    split = Split(rows, rows[:0], rows[:0])
    train, dev = Rows(x, rows, zeros, ones), Rows(x, rows[:0], zeros, ones)
    return Prepared(dataset, split, zeros, ones, None, None, train, y, dev)


class NumpyTrainer:
    def __init__(self, prepared: Prepared, net: Network, threads: int) -> None:
        self.prepared, self.threads = prepared, threads
        self.config = TrainConfig(hidden=net.hidden, batch_size=net.batch, optimizer="adam")
        self.state: TrainingState = fresh_state(self.config, prepared)

    def epoch(self) -> None:
        with blas_threads(self.threads):
            run_epoch(self.state, self.prepared, self.config, self.config.lr)


class TorchTrainer:
    def __init__(self, prepared: Prepared, net: Network, torch_module, threads: int) -> None:
        torch = self.torch = torch_module
        self.threads, self.batch = threads, net.batch
        nn = torch.nn
        torch.manual_seed(0)
        layers: list = []
        for fan_in, fan_out in zip(net.sizes[:-2], net.sizes[1:-1], strict=True):
            layers += [nn.Linear(fan_in, fan_out, bias=False), nn.BatchNorm1d(fan_out), nn.ReLU()]
        self.model = nn.Sequential(*layers, nn.Linear(net.sizes[-2], CLASSES))
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
        for start in range(0, len(order), self.batch):
            x_batch = x_shuffled[start : start + self.batch]
            y_batch = y_shuffled[start : start + self.batch]
            if len(x_batch) < 2:
                continue
            self.optimizer.zero_grad(set_to_none=True)
            self.loss(self.model(x_batch), y_batch).backward()
            self.optimizer.step()


class MatmulCeiling:
    """The products of one training step, bare: X@W, dZ@Wᵀ, Xᵀ@dZ per layer, batch by batch."""

    def __init__(self, net: Network, examples: int, threads: int) -> None:
        rng = np.random.default_rng(1)
        self.threads, self.steps = threads, max(1, examples // net.batch)
        self.shapes = [
            (
                rng.standard_normal((net.batch, a), dtype=np.float32),
                rng.standard_normal((a, b), dtype=np.float32),
                rng.standard_normal((net.batch, b), dtype=np.float32),
            )
            for a, b in zip(net.sizes[:-1], net.sizes[1:], strict=True)
        ]

    def epoch(self) -> None:
        with blas_threads(self.threads):
            for _ in range(self.steps):
                for x, w, dz in self.shapes:
                    np.matmul(x, w)
                    np.matmul(dz, w.T)
                    np.matmul(x.T, dz)


@dataclass(frozen=True)
class Sample:
    wall: float  # examples per second of wall-clock time
    cpu: float  # examples per second of this process's CPU time (all its threads)


def measure(trainer, examples: int) -> Sample:
    """One epoch; a one-thread side is charged its own thread's CPU, others the process's."""
    clock = time.thread_time if trainer.threads == 1 else time.process_time
    wall_started, cpu_started = time.perf_counter(), clock()
    trainer.epoch()
    wall, cpu = time.perf_counter() - wall_started, clock() - cpu_started
    return Sample(examples / wall, examples / max(cpu, 1e-9))


def bench_network(net: Network, rounds: int, scale: float, torch) -> None:
    examples = max(net.batch * 4, int(net.examples * scale))
    prepared = synthetic_prepared(net, examples)
    cores = available_cores()
    chosen = blas_threads_for(net.batch, net.sizes)
    trainers: dict[str, object] = {}
    for threads in sorted({1, chosen}):
        trainers[f"numpy, {threads} BLAS thread{'s' * (threads > 1)}"] = NumpyTrainer(
            prepared, net, threads
        )
    if torch is not None:
        for threads in sorted({1, cores}):
            name = f"pytorch {torch.__version__}, {threads} thread{'s' * (threads > 1)}"
            trainers[name] = TorchTrainer(prepared, net, torch, threads)
    ceilings = {t: MatmulCeiling(net, examples, t) for t in sorted({1, chosen})}
    for trainer in [*trainers.values(), *ceilings.values()]:
        trainer.epoch()  # warm-up: allocations, BLAS and autograd set-up
    samples: dict[str, list[Sample]] = {name: [] for name in trainers}
    ceiling_samples: dict[int, list[Sample]] = {t: [] for t in ceilings}
    for _ in range(rounds):
        for name, trainer in trainers.items():
            samples[name].append(measure(trainer, examples))
        for threads, ceiling in ceilings.items():
            ceiling_samples[threads].append(measure(ceiling, ceiling.steps * net.batch))
    print(
        f"\n{net.label()} ({examples} examples/epoch, median of {rounds} rounds; train() "
        f"chooses {chosen} BLAS thread{'s' * (chosen > 1)}; load average "
        f"{os.getloadavg()[0]:.1f})"
    )
    print(
        f"  {'implementation':<30} {'examples/s':>11} {'min':>9} {'max':>9} {'per CPU-s':>10} "
        f"{'GFLOP/s':>8} {'matmul ceiling':>15}"
    )
    medians: dict[str, Sample] = {}
    for name, values in samples.items():
        walls = [s.wall for s in values]
        median = Sample(statistics.median(walls), statistics.median(s.cpu for s in values))
        medians[name] = median
        gflops = median.wall * net.flops_per_example / 1e9
        ceiling = ""
        if name.startswith("numpy"):
            threads = int(name.split(", ")[1].split()[0])
            bare = statistics.median(s.wall for s in ceiling_samples[threads])
            bare_gflops = bare * net.flops_per_example / 1e9
            ceiling = f"{bare_gflops:>8.1f} ({gflops / bare_gflops:.0%})"
        print(
            f"  {name:<30} {median.wall:>11,.0f} {min(walls):>9,.0f} {max(walls):>9,.0f} "
            f"{median.cpu:>10,.0f} {gflops:>8.1f} {ceiling:>15}"
        )
    if torch is None:
        print("  ratio: PyTorch not importable here (pip install torch==2.13.0 to compare)")
        return
    numpy_rows = {n: s for n, s in medians.items() if n.startswith("numpy")}
    torch_rows = {n: s for n, s in medians.items() if n.startswith("pytorch")}
    one = lambda rows: next(s for n, s in rows.items() if n.split(", ")[1].startswith("1 "))  # noqa: E731
    best = lambda rows: max(rows.values(), key=lambda s: s.wall)  # noqa: E731
    goal = "≥ 1.5x" if net.name == "small" else "≥ 1.0x"
    numpy_one, torch_one = one(numpy_rows), one(torch_rows)
    print(
        f"  ratio numpy / pytorch, 1 thread each: wall {numpy_one.wall / torch_one.wall:.2f}x, "
        f"per CPU-second {numpy_one.cpu / torch_one.cpu:.2f}x (goal {goal})"
    )
    print(
        f"  ratio numpy / pytorch, best thread count each, wall clock: "
        f"{best(numpy_rows).wall / best(torch_rows).wall:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale", type=float, default=1.0, help="examples per epoch × this")
    parser.add_argument("--sizes", default="small,medium,large", help=f"of {list(NETWORKS)}")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
    print(
        f"training throughput, numpy vs eager PyTorch, BN MLPs with Adam; {available_cores()} "
        f"CPUs, OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    )
    for size in args.sizes.split(","):
        bench_network(NETWORKS[size], args.rounds, args.scale, torch)


if __name__ == "__main__":
    main()
