"""The floor under bnserve's Parquet load: each part of a cold load + split + standardize, timed
alone (wall and CPU seconds, best of --repeats, one process), beside pyarrow's bare read.

A float32 cache needs, besides decoding, the row-major float32 conversion, the content hash,
the cache write and the standardization pass. Their CPU seconds divided by the cores is the
least wall time any such reader can take; the last lines set it against pyarrow's read.

    .venv/bin/python bench/data_floor.py [--rows 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from data import write_tables

from bnserve.training.config import TrainConfig
from bnserve.training.data import batches, cache, readers
from bnserve.training.data.loading import load_split
from bnserve.training.threads import available_cores
from bnserve.training.train import prepare


def best(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(wall s, CPU s of the whole process) of the fastest of `repeats` calls."""
    wall = cpu = float("inf")
    for _ in range(repeats):
        started, started_cpu = time.perf_counter(), time.process_time()
        run()
        wall = min(wall, time.perf_counter() - started)
        cpu = min(cpu, time.process_time() - started_cpu)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bnserve-bench-floor-"))
    try:
        path = write_tables(args.rows, work)["parquet"]
        cache_dir = work / "cache"
        names = list(pq.ParquetFile(path).schema_arrow.names)[:-1]
        decoded = pq.ParquetFile(path).iter_batches(batch_size=readers.PARQUET_BATCH_ROWS)
        batch_list = list(decoded)
        block = np.ones((args.rows, len(names)), dtype=np.float32)

        def decode() -> None:
            parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20)
            for _ in parquet.iter_batches(batch_size=readers.PARQUET_BATCH_ROWS):
                pass

        def convert() -> None:
            for batch in batch_list:
                readers._parquet_block(path, batch, names, 0)

        def write() -> None:
            target = work / "x.f32"
            with target.open("wb") as handle:
                writer = cache._SyncingWriter(handle)
                for start in range(0, len(block), readers.PARQUET_BATCH_ROWS):
                    writer.write(block[start : start + readers.PARQUET_BATCH_ROWS].data)
                writer.sync()
            target.unlink()

        config = TrainConfig(data=str(path))
        dataset, split = load_split(config, cache_dir=str(cache_dir))

        def cold() -> None:
            shutil.rmtree(cache_dir, ignore_errors=True)
            prepare(config, cache_dir=str(cache_dir))

        parts = {
            "decode (pyarrow iter_batches, as bnserve reads)": decode,
            "float32 row-major conversion + finiteness": convert,
            "sha256 of the file": lambda: cache.content_sha256(path),
            "write the float32 bytes, fdatasync every 64 MiB": write,
            "standardization pass over the training rows": lambda: batches.fit_standardization(
                dataset.x, split.train
            ),
        }
        cores = available_cores()
        print(
            f"{args.rows:,} rows × {len(names)} columns, {path.stat().st_size / 2**20:,.0f} MB "
            f"Parquet; {cores} CPUs; load average {os.getloadavg()[0]:.1f}; "
            f"best of {args.repeats}"
        )
        print(f"  {'part':<52} {'wall s':>7} {'CPU s':>7}")
        pyarrow_wall, pyarrow_cpu = best(lambda: pq.read_table(path), args.repeats)
        baseline = "pyarrow.parquet.read_table (the baseline)"
        print(f"  {baseline:<52} {pyarrow_wall:7.3f} {pyarrow_cpu:7.3f}")
        total_cpu = 0.0
        for label, run in parts.items():
            wall, cpu = best(run, args.repeats)
            total_cpu += cpu
            print(f"  {label:<52} {wall:7.3f} {cpu:7.3f}")
        cold_wall, cold_cpu = best(cold, args.repeats)
        print(f"  {'bnserve cold load + split + standardize':<52} {cold_wall:7.3f} {cold_cpu:7.3f}")
        floor = total_cpu / cores
        print(
            f"  the parts' CPU {total_cpu:.2f} s over {cores} cores: a floor of {floor:.2f} s, "
            f"{floor / pyarrow_wall:.2f}x pyarrow's read; bnserve {cold_wall / pyarrow_wall:.2f}x "
            f"(goal ≤ 1.5x), {cold_wall / floor:.2f}x the floor"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
