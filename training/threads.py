"""BLAS threads for training, chosen by the size of the work.

Small matrices run best on one thread: OpenBLAS threads spin while they wait, and on a shared
2-core machine (load ~9) a 12-epoch digits run took 15.6 s with two threads and 0.9 s with one.
Large ones (a 512-row batch through 1024-wide layers) gain from every core. The choice is made
from the largest matrix product of one training step; it never exceeds the threads BLAS
already has (a tune worker limited to one thread stays at one; OPENBLAS_NUM_THREADS holds).
"""

from __future__ import annotations

import itertools
import os

from threadpoolctl import threadpool_info, threadpool_limits

# 2·batch·fan_in·fan_out of the largest layer at which a second thread starts to pay. Measured
# with bench/train.py on 2 cores at load average 0.6: 784→512→512 at batch 256 (205 MFLOP) ran
# 11,982 examples/s on one thread and 3,494 on two; 256→1024×3 at batch 512 (1.07 GFLOP)
# 4,904 on one and 7,257 on two. 64→128→128 at batch 64 is 2 MFLOP.
PARALLEL_FLOPS = 5e8


def available_cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def current_blas_threads() -> int:
    """The largest thread count any loaded BLAS library is set to now (1 when none is loaded)."""
    counts = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    return max(counts, default=1)


def blas_threads_for(batch_size: int, layer_sizes: list[int], requested: int | None = None) -> int:
    """Threads for training layers [F, n_1, ..., C] at this batch size; `requested` wins if set."""
    if requested is not None:
        return max(1, requested)
    flops = max(
        2 * batch_size * fan_in * fan_out for fan_in, fan_out in itertools.pairwise(layer_sizes)
    )
    if flops < PARALLEL_FLOPS:
        return 1
    return max(1, min(available_cores(), current_blas_threads()))


def blas_threads(threads: int) -> threadpool_limits:
    """A context that runs BLAS with `threads` threads."""
    return threadpool_limits(limits=threads, user_api="blas")
