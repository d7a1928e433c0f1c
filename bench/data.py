"""Data loading: bnserve's CSV/Parquet reader next to pyarrow, pandas and numpy.loadtxt.

Synthetic tables as in issue 15: 64 numeric columns with 4 decimals and an integer target with
10 classes, as CSV and Parquet, at 10k / 100k / 1M rows (10M with --large). Every load runs in
a fresh process (imports done before the clock starts), which reports its own time and peak
RSS; each loader (and each epoch row) runs --repeats times in turn (the median is shown), and
ratios are against pyarrow's bare read of the same file in the same run. bnserve is timed cold
(the float32 cache is built) and warm (the cache is read in place), and as load + split +
standardize, the part of `bnserve train` before the first batch. The one-epoch rows are whole
`bnserve train --epochs 1` processes: from the CSV (cold and warm cache) and from an in-memory
NPZ of the same data. pandas is optional (skipped when not installed).

The mixed rows (issue 26; --mixed-sizes, 1M rows by default, 0 to skip): 48 numeric columns
and 16 text columns of 10 to 1,000 levels (geometrically spaced), 5% of the cells missing (empty
in the CSV, null in the Parquet file, whose text columns are dictionary-encoded), and the
10-class target. bnserve's load + split + encode (`prepare`: float32 numbers and level codes,
in the cache for the CSV and in memory for the Parquet file, the split, the schema and the
standardization fitted on the training rows) is timed against pyarrow's bare read of the same
file (goal ≤ 1.5x), beside both processes' CPU seconds (less bent by a shared machine's load),
and its peak RSS against the encoded arrays, rows × 64 float32 (goal ≤ 2x).

    .venv/bin/python bench/data.py [--sizes 10000,100000] [--large] [--no-epoch] [--no-loadtxt]
        [--repeats 3] [--mixed-sizes 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FEATURES, CLASSES = 64, 10
MIXED_NUMERIC, MIXED_TEXT, MISSING_SHARE = 48, 16, 0.05  # the mixed table (issue 26)
MIXED_LEVELS = np.geomspace(10, 1000, MIXED_TEXT).round().astype(int)  # 10 ... 1,000
REPO = Path(__file__).resolve().parent.parent

# Each loader is the body of a child process: `path` is the file, `cache` a fresh cache dir.
# Imports happen before the clock starts (bnserve imports pyarrow lazily: done here up front).
PYARROW = "import pyarrow.csv, pyarrow.parquet, pyarrow.compute; "
LOADERS = {
    "bnserve, cold cache": (
        PYARROW + "from bnserve.training.data.loading import load_dataset",
        "d = load_dataset(path, cache_dir=cache); x = np.asarray(d.x[-1])",
    ),
    "bnserve, warm cache": (
        PYARROW
        + "from bnserve.training.data.loading import load_dataset; "
        + "load_dataset(path, cache_dir=cache)",
        "d = load_dataset(path, cache_dir=cache); x = np.asarray(d.x[-1])",
    ),
    "bnserve load+split+standardize": (
        PYARROW
        + "from bnserve.training.config import TrainConfig; "
        + "from bnserve.training.train import prepare",
        "p = prepare(TrainConfig(data=path), cache_dir=cache)",
    ),
    "bnserve load+split+encode": (
        PYARROW
        + "from bnserve.training.config import TrainConfig; "
        + "from bnserve.training.train import prepare",
        "p = prepare(TrainConfig(data=path, target='y'), cache_dir=cache)",
    ),
    "pyarrow": (
        "import pyarrow.csv, pyarrow.parquet",
        "t = (pyarrow.parquet.read_table(path) if path.endswith('.parquet') "
        "else pyarrow.csv.read_csv(path))",
    ),
    "pandas": (
        "import pandas",
        "t = (pandas.read_parquet(path) if path.endswith('.parquet') else pandas.read_csv(path))",
    ),
    "numpy.loadtxt": ("", "t = np.loadtxt(path, delimiter=',', skiprows=1, dtype=np.float32)"),
}

CHILD = """
import json, sys, time
import numpy as np
path, cache = sys.argv[1], sys.argv[2]
{setup}
with open("/proc/self/status") as status:  # VmRSS after the imports, before the clock
    start_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
started, started_cpu = time.perf_counter(), time.process_time()
{body}
seconds, cpu = time.perf_counter() - started, time.process_time() - started_cpu
with open("/proc/self/status") as status:  # VmHWM: this process's own peak (not its parent's)
    peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({{
    "seconds": seconds, "cpu": cpu, "peak_mb": peak_kb / 1024, "start_mb": start_kb / 1024
}}))
"""


def write_tables(rows: int, folder: Path, seed: int = 0) -> dict[str, Path]:
    """The synthetic CSV, Parquet and NPZ of `rows` rows (written in blocks)."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    names = [f"f{col}" for col in range(FEATURES)]
    paths = {kind: folder / f"data-{rows}.{kind}" for kind in ("csv", "parquet", "npz")}
    rng = np.random.default_rng(seed)
    schema = pa.schema([*(pa.field(n, pa.float64()) for n in names), pa.field("y", pa.int64())])
    xs, ys = [], []
    with (
        pa_csv.CSVWriter(paths["csv"], schema) as csv_writer,
        pq.ParquetWriter(paths["parquet"], schema) as parquet_writer,
    ):
        for start in range(0, rows, 250_000):
            count = min(250_000, rows - start)
            x = np.round(rng.standard_normal((count, FEATURES)), 4)
            y = rng.integers(0, CLASSES, count)
            table = pa.table({**{n: x[:, i] for i, n in enumerate(names)}, "y": y}, schema=schema)
            csv_writer.write_table(table)
            parquet_writer.write_table(table)
            xs.append(x.astype(np.float32))
            ys.append(y)
    np.savez(paths["npz"], x=np.concatenate(xs), y=np.concatenate(ys))
    return paths


def write_mixed_tables(rows: int, folder: Path, seed: int = 0) -> dict[str, Path]:
    """The mixed CSV and Parquet of `rows` rows (MIXED_* above; written in blocks)."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import pyarrow.parquet as pq

    numeric = [f"n{col}" for col in range(MIXED_NUMERIC)]
    text = [f"c{col}" for col in range(MIXED_TEXT)]
    paths = {kind: folder / f"mixed-{rows}.{kind}" for kind in ("csv", "parquet")}
    rng = np.random.default_rng(seed)
    dictionaries = [
        pa.array([f"c{col}_level{level}" for level in range(count)])
        for col, count in enumerate(MIXED_LEVELS)
    ]
    fields = [pa.field(n, pa.float64()) for n in numeric]
    csv_schema = pa.schema([*fields, *(pa.field(n, pa.string()) for n in text),
                            pa.field("y", pa.int64())])  # fmt: skip
    parquet_schema = pa.schema([*fields, *(pa.field(n, pa.dictionary(pa.int32(), pa.string()))
                                           for n in text), pa.field("y", pa.int64())])  # fmt: skip
    with (
        pa_csv.CSVWriter(paths["csv"], csv_schema) as csv_writer,
        pq.ParquetWriter(paths["parquet"], parquet_schema) as parquet_writer,
    ):
        for start in range(0, rows, 250_000):
            count = min(250_000, rows - start)
            x = np.round(rng.standard_normal((count, MIXED_NUMERIC)), 4)
            gaps = rng.random((count, MIXED_NUMERIC + MIXED_TEXT)) < MISSING_SHARE
            columns = [pa.array(x[:, i], mask=gaps[:, i]) for i in range(MIXED_NUMERIC)]
            for col, levels in enumerate(MIXED_LEVELS):
                codes = (levels * rng.random(count) ** 2).astype(np.int32)  # uneven shares
                indices = pa.array(codes, mask=gaps[:, MIXED_NUMERIC + col])
                columns.append(pa.DictionaryArray.from_arrays(indices, dictionaries[col]))
            y = pa.array(rng.integers(0, CLASSES, count))
            parquet_writer.write_table(pa.Table.from_arrays([*columns, y], schema=parquet_schema))
            as_text = columns[:MIXED_NUMERIC] + [
                c.cast(pa.string()) for c in columns[MIXED_NUMERIC:]
            ]
            csv_writer.write_table(pa.Table.from_arrays([*as_text, y], schema=csv_schema))
    return paths


def run_loader(name: str, path: Path, work: Path) -> dict[str, float] | None:
    """{seconds, peak_mb} of one load in a fresh process; None when it cannot run here."""
    setup, body = LOADERS[name]
    cache = work / f"cache-{name.split(',')[0].split()[0]}-{path.name}"
    shutil.rmtree(cache, ignore_errors=True)
    code = CHILD.format(setup=setup, body=body)
    done = subprocess.run(
        [sys.executable, "-c", code, str(path), str(cache)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    shutil.rmtree(cache, ignore_errors=True)
    if done.returncode != 0:
        if "ModuleNotFoundError" in done.stderr:
            return None
        raise RuntimeError(f"{name} on {path.name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def interleaved_loads(
    names: list[str], path: Path, work: Path, repeats: int
) -> dict[str, dict[str, float] | None]:
    """Each loader's median seconds and largest peak over `repeats` rounds, A B C A B C ...

    Taken in turn, so a loader is not favoured by the state (CPU clocks, free memory) the one
    before it left; one run each varied 2x between runs of pyarrow on this VM.
    """
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    missing: set[str] = set()
    for _ in range(repeats):
        for name in names:
            if name in missing:
                continue
            result = run_loader(name, path, work)
            if result is None:
                missing.add(name)
            else:
                runs[name].append(result)
    return {
        name: None
        if name in missing
        else {
            "seconds": statistics.median(run["seconds"] for run in runs[name]),
            "cpu": statistics.median(run["cpu"] for run in runs[name]),
            "peak_mb": max(run["peak_mb"] for run in runs[name]),
            "start_mb": min(run["start_mb"] for run in runs[name]),
        }
        for name in names
    }


def one_epoch(data: Path, work: Path, cache: Path) -> tuple[float, float]:
    """(seconds, peak MB) of a whole `bnserve train --epochs 1` process on `data`."""
    out = work / f"run-{data.name}"
    command = [
        *(sys.executable, "-m", "bnserve.training", "--data", str(data), "--out", str(out)),
        *("--epochs", "1", "--no-plot", "--no-checkpoints", "--no-progress"),
        *("--cache-dir", str(cache)),
    ]
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    shutil.rmtree(out, ignore_errors=True)
    if child.returncode != 0:
        raise RuntimeError(f"bnserve train on {data.name} exited {child.returncode}")
    return seconds, usage.ru_maxrss / 1024


def interleaved_epochs(paths: dict[str, Path], work: Path, repeats: int) -> list[float]:
    """[seconds, peak MB] × (CSV cold cache, CSV warm cache, NPZ): medians and largest peaks
    over `repeats` rounds, each round cold, warm, NPZ in turn."""
    runs: list[list[tuple[float, float]]] = [[], [], []]
    cache = work / "cache-epoch"
    for _ in range(repeats):
        shutil.rmtree(cache, ignore_errors=True)
        for kind, out in zip(("csv", "csv", "npz"), runs, strict=True):
            out.append(one_epoch(paths[kind], work, cache))
    shutil.rmtree(cache, ignore_errors=True)
    summary: list[float] = []
    for out in runs:
        summary += [statistics.median(s for s, _ in out), max(mb for _, mb in out)]
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="rows, comma-separated")
    parser.add_argument("--large", action="store_true", help="also 10,000,000 rows")
    parser.add_argument("--no-epoch", action="store_true", help="skip the one-epoch rows")
    parser.add_argument("--no-loadtxt", action="store_true", help="skip numpy.loadtxt")
    parser.add_argument("--dir", type=Path, help="keep the generated files here")
    parser.add_argument(
        "--repeats", type=int, default=3, help="interleaved runs of each loader and epoch"
    )
    parser.add_argument(
        "--mixed-sizes", default="1000000", help="rows of the mixed table (0: none)"
    )
    parser.add_argument("--generate", type=int, help=argparse.SUPPRESS)  # child: write files
    parser.add_argument("--generate-mixed", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate is not None:
        write_tables(args.generate, args.dir)
        return
    if args.generate_mixed is not None:
        write_mixed_tables(args.generate_mixed, args.dir)
        return
    sizes = [int(size) for size in args.sizes.split(",") if int(size)]
    sizes += [10_000_000] if args.large else []
    mixed_sizes = [int(size) for size in args.mixed_sizes.split(",") if int(size)]
    work = args.dir or Path(tempfile.mkdtemp(prefix="bnserve-bench-data-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPUs, load average at start {os.getloadavg()[0]:.1f}")
    try:
        for rows in sizes:
            # generated in a child: this process stays small, and a child's peak RSS as
            # getrusage reports it starts from its parent's
            generate = [sys.executable, __file__, "--generate", str(rows), "--dir", str(work)]
            subprocess.run(generate, check=True)
            paths = {kind: work / f"data-{rows}.{kind}" for kind in ("csv", "parquet", "npz")}
            float32_mb = rows * FEATURES * 4 / 2**20
            for kind in ("csv", "parquet"):
                path = paths[kind]
                print(
                    f"\n{kind}, {rows:,} rows × {FEATURES} features: "
                    f"{path.stat().st_size / 2**20:,.0f} MB file, {float32_mb:,.0f} MB float32"
                )
                print(
                    f"  {'loader':<32} {'seconds':>8} {'÷ pyarrow':>10} {'peak RSS MB':>12}"
                    f"   (median of {args.repeats} interleaved runs)"
                )
                names = [
                    name
                    for name in LOADERS
                    if not (name == "numpy.loadtxt" and (kind == "parquet" or args.no_loadtxt))
                ]
                results = interleaved_loads(names, path, work, args.repeats)
                pyarrow_result = results["pyarrow"]
                assert pyarrow_result is not None  # a training dependency: always installed
                base = pyarrow_result["seconds"]
                for name, result in results.items():
                    if result is None:
                        print(f"  {name:<32} {'not installed':>8}")
                        continue
                    print(
                        f"  {name:<32} {result['seconds']:>8.3f} "
                        f"{result['seconds'] / base:>9.2f}x {result['peak_mb']:>12,.0f}"
                    )
            if not args.no_epoch:
                cold_s, cold_mb, warm_s, warm_mb, npz_s, npz_mb = interleaved_epochs(
                    paths, work, args.repeats
                )
                print(
                    "  one epoch, a whole `bnserve train --epochs 1` process "
                    f"(median of {args.repeats} interleaved runs):"
                )
                for name, seconds, peak in (
                    ("CSV, cold cache", cold_s, cold_mb),
                    ("CSV, warm cache", warm_s, warm_mb),
                    ("NPZ, in memory", npz_s, npz_mb),
                ):
                    print(
                        f"    {name:<16} {seconds:>7.2f} s {seconds / npz_s:>6.2f}x NPZ "
                        f"(goal ≤ 1.3x)  peak RSS {peak:,.0f} MB"
                    )
            for path in paths.values():
                path.unlink()
        for rows in mixed_sizes:
            mixed_rows(rows, work, args.repeats)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nload average at end {os.getloadavg()[0]:.1f}")


MIXED_LOADERS = ("bnserve load+split+encode", "pyarrow")


def mixed_rows(rows: int, work: Path, repeats: int) -> None:
    """The mixed table's rows: bnserve's load + split + encode against pyarrow, with the goals."""
    generate = [sys.executable, __file__, "--generate-mixed", str(rows), "--dir", str(work)]
    subprocess.run(generate, check=True)
    encoded_mb = rows * (MIXED_NUMERIC + MIXED_TEXT) * 4 / 2**20
    for kind in ("csv", "parquet"):
        path = work / f"mixed-{rows}.{kind}"
        print(
            f"\nmixed {kind}, {rows:,} rows × ({MIXED_NUMERIC} numeric + {MIXED_TEXT} text "
            f"columns of {MIXED_LEVELS[0]}-{MIXED_LEVELS[-1]:,} levels, {MISSING_SHARE:.0%} "
            f"missing): {path.stat().st_size / 2**20:,.0f} MB file, encoded arrays "
            f"{encoded_mb:,.0f} MB (float32 numbers and codes)"
        )
        print(
            f"  {'loader':<32} {'seconds':>8} {'÷ pyarrow':>10} {'CPU s':>6} {'÷ pyarrow':>10} "
            f"{'peak RSS MB':>12} {'growth MB':>10} {'÷ encoded':>10}   (median of {repeats} "
            "interleaved runs; CPU: the process's, all threads; growth: peak RSS less the RSS "
            "after imports)"
        )
        results = interleaved_loads(list(MIXED_LOADERS), path, work, repeats)
        base = results["pyarrow"]
        assert base is not None
        for name, result in results.items():
            assert result is not None
            goals = "  goals ≤ 1.5x, ≤ 2x" if name.startswith("bnserve") else ""
            growth = result["peak_mb"] - result["start_mb"]
            print(
                f"  {name:<32} {result['seconds']:>8.3f} "
                f"{result['seconds'] / base['seconds']:>9.2f}x {result['cpu']:>6.2f} "
                f"{result['cpu'] / base['cpu']:>9.2f}x {result['peak_mb']:>12,.0f} "
                f"{growth:>10,.0f} {growth / encoded_mb:>9.2f}x{goals}"
            )
        path.unlink()


if __name__ == "__main__":
    main()
