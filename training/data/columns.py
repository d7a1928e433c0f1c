"""A table held in memory column by column: (F, N) float32, read as rows (N, F) on demand.

A Parquet file with text columns that fits in memory is read into one (cache.py): each column
is then one contiguous cast from Arrow's buffers, never a strided write into rows, and the
schema's pass over the training rows gathers each column on its own (schema.py). Rows asked
for come back as a C-order (n, F) array, the same values a row-major array or a cache file
gives, so training reads it like either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

# a table is held in memory when its float32 array takes at most this share of the memory the
# process may still use (the rest: decoding, training's batches, other processes)
MEMORY_SHARE = 0.5


class ColumnRows:
    """x (N, F) float32 stored as columns (F, N) C-order; x[rows] gives (n, F) C-order rows."""

    def __init__(self, columns: np.ndarray) -> None:
        if columns.ndim != 2 or columns.dtype != np.float32 or not columns.flags.c_contiguous:
            raise ValueError("ColumnRows takes a C-order (F, N) float32 array")
        self.columns = columns  # (F, N)
        self.shape: tuple[int, int] = (int(columns.shape[1]), int(columns.shape[0]))
        self.dtype = np.dtype(np.float32)
        self.ndim = 2

    @classmethod
    def empty(cls, rows: int, features: int) -> ColumnRows:
        """Rows × features, every cell 0 (filled column by column by the reader)."""
        return cls(np.zeros((features, rows), dtype=np.float32))

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        whole = np.ascontiguousarray(self.columns.T)
        return whole if dtype is None else whole.astype(dtype)

    def transposed(self, rows: np.ndarray) -> np.ndarray:
        """(F, n) C-order: the columns at rows `rows` (n,), one gather per column."""
        return np.take(self.columns, rows, axis=1)

    def __getitem__(self, index: Any) -> np.ndarray:
        if isinstance(index, tuple):  # x[rows, columns]: the rows first, then numpy's indexing
            return self[index[0]][(slice(None), *index[1:])]
        if isinstance(index, (int, np.integer)):
            row: np.ndarray = self.columns[:, index].copy()
            return row
        if isinstance(index, slice):
            return np.ascontiguousarray(self.columns[:, index].T)
        rows = np.asarray(index, dtype=np.int64)
        if rows.ndim != 1:
            raise IndexError("ColumnRows takes a 1-D array of row numbers")
        return np.ascontiguousarray(self.transposed(rows).T)


def available_memory() -> int | None:
    """Bytes this process may still allocate: the least of the system's available memory and
    its memory cgroup's room (v2 memory.max, v1 memory.limit_in_bytes); None when unknown."""
    known: list[int] = []
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    known.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    room = _cgroup_room()
    if room is not None:
        known.append(room)
    return min(known) if known else None


def _cgroup_room() -> int | None:
    """The memory cgroup's limit less its usage, when a limit is set."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, group = line.split(":", 2)
        if controllers == "":  # v2
            files = (f"/sys/fs/cgroup{group}/memory.max", f"/sys/fs/cgroup{group}/memory.current")
        elif "memory" in controllers.split(","):  # v1
            base = f"/sys/fs/cgroup/memory{group}"
            files = (f"{base}/memory.limit_in_bytes", f"{base}/memory.usage_in_bytes")
        else:
            continue
        try:
            limit, usage = (Path(name).read_text().strip() for name in files)
        except OSError:
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:
            continue
        return max(0, int(limit) - int(usage))
    return None


def fits_in_memory(nbytes: int) -> bool:
    """An array of nbytes takes at most MEMORY_SHARE of available_memory() (False: unknown)."""
    available = available_memory()
    return available is not None and nbytes <= MEMORY_SHARE * available
