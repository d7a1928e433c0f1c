"""The float32 data cache: a CSV/Parquet source converted once, then read in place on every run.

An entry is a directory `<cache dir>/<source size>-<hash>-<key of the read settings>/` holding
x.f32 (rows × features float32, C order, no header), codes.npy and cells.npy (the target), and
meta.json, written into a temporary directory and renamed into place whole. The entry of the
file's previous contents is deleted when the new one is written.

The hash: for a CSV, the sha256 of its bytes, so a changed CSV never finds the old entry; when
no entry has the source's size, it is hashed on a second thread while it is read. For a Parquet
file, the sha256 of its modification time (ns) and its footer (the file's metadata: schema, row
groups, each column chunk's offsets, sizes and statistics), read in one small read: writing the
file changes its mtime, and new contents change the footer's sizes or statistics. Only a rewrite
that keeps the size, the footer and the mtime (set back by hand, or by a copy that keeps it,
such as cp -p or rsync -t) is served from the old entry. Hashing the whole 158 MB Parquet file
of bench/data.py's mixed table took 0.15 CPU s alone (pyarrow's read of it: 0.65), 0.4-0.6 s on
a core shared with the read (docs/benchmarks.md).

Not cached: a Parquet file with text columns whose float32 array fits in memory
(columns.fits_in_memory) is read into memory column by column on every run (load_table).

The cache directory: --cache-dir, else $BNSERVE_CACHE_DIR, else $XDG_CACHE_HOME/bnserve/data,
else ~/.cache/bnserve/data. "off" reads into memory instead (nothing written).
"""

from __future__ import annotations

import collections
import errno
import hashlib
import io
import json
import os
import shutil
import sys
import threading
import uuid
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import numpy.typing as npt

from bnserve import atomic
from bnserve.training.data.columns import ColumnRows, fits_in_memory
from bnserve.training.data.mixed import DEFAULT_NA_VALUES
from bnserve.training.data.readers import (
    TableInfo,
    Target,
    is_parquet,
    numbers_as_strings,
    parquet_text_bytes,
    read_parquet_columns,
    read_table,
)
from bnserve.training.errors import DataError

CACHE_ENV = "BNSERVE_CACHE_DIR"
OFF = "off"
FORMAT = 3  # bump when the entry layout or the readers' output changes
SYNC_BYTES = 64 << 20  # written pages are flushed to the disk this often
PENDING_BYTES = 32 << 20  # blocks waiting for the writing thread, at most
NOTICE_BYTES = 256 << 20  # a source this large is announced on stderr before its first read


def cache_dir_setting(given: str | None = None) -> Path | None:
    """The cache directory in force (None: off, read into memory)."""
    value = given if given is not None else os.environ.get(CACHE_ENV)
    if value is None:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "bnserve" / "data"
    return None if value in ("", OFF) else Path(value)


def content_sha256(path: Path) -> str:
    """Hex sha256 of the file's bytes, read in 8 MiB pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while piece := handle.read(8 << 20):
            digest.update(piece)
    return digest.hexdigest()


def parquet_footer_sha256(path: Path, mtime_ns: int) -> str | None:
    """Hex sha256 of the modification time and the footer of a Parquet file (the module's
    docstring); None when the file does not end in a plain Parquet footer (the reader then
    says why it cannot be read)."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size < 12:  # "PAR1", the footer, its length, "PAR1"
            return None
        handle.seek(size - 8)
        tail = handle.read(8)
        length = int.from_bytes(tail[:4], "little")
        if tail[4:] != b"PAR1" or length > size - 12:
            return None
        handle.seek(size - 8 - length)
        footer = handle.read(length)
    digest = hashlib.sha256(f"parquet footer, mtime {mtime_ns} ns\n".encode())
    digest.update(footer)
    return digest.hexdigest()


def load_table(
    path: Path,
    target: str | None,
    cache_dir: Path | None,
    delimiter: str = ",",
    na_values: tuple[str, ...] = DEFAULT_NA_VALUES,
) -> tuple[FeatureRows, TableInfo]:
    """(x (N, F) float32, info): a RowFile over the cache entry, or in memory when off.

    delimiter: a CSV's field separator; na_values: the cells read as missing (mixed.py); both
    are part of the entry's key. A Parquet file with text columns whose float32 array fits in
    memory (columns.fits_in_memory) is read into memory column by column, cached or not: no
    entry is written for it (docs/training.md). One whose string columns turn out to hold only
    numbers, and no cell missing, is read by the numbers-only reader as before."""
    if is_parquet(path) and (text := parquet_text_bytes(path, target)) is not None:
        nbytes, strings_only = text
        if fits_in_memory(nbytes):
            columns, read = _read_in_memory(path, target, na_values)
            if not (strings_only and numbers_as_strings(columns, read)):
                return columns, read
            del columns  # numbers written as strings, no gaps: read as numbers below, as always
    if cache_dir is None:
        buffer = io.BytesIO()
        info = read_table(path, target, buffer, delimiter, na_values)
        x = np.frombuffer(buffer.getbuffer(), dtype=np.float32)
        return x.reshape(info.rows, len(info.feature_names)), info
    # read with another delimiter or other missing cells, the same bytes are another table
    # (a comma and the default missing cells keep older keys)
    read_with: dict[str, object] = {"target": target}
    if delimiter != ",":
        read_with["delimiter"] = delimiter
    if na_values != DEFAULT_NA_VALUES:
        read_with["na_values"] = list(na_values)
    settings = json.dumps({"format": FORMAT, **read_with}, sort_keys=True)
    key = hashlib.sha256(settings.encode()).hexdigest()[:12]
    try:
        before = _identity(path)
        size = before[1]
        sha = parquet_footer_sha256(path, before[2]) if is_parquet(path) else None
        # A CSV's entry is named by its size first: when no entry has this size, the file
        # cannot be cached, and it is hashed while it is read instead of before.
        if sha is None and any(cache_dir.glob(f"{size}-*")):
            sha = content_sha256(path)
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    if sha is not None and (opened := _open_entry(_entry(cache_dir, size, sha, key))) is not None:
        return opened
    entry, sha = _build_entry(
        path,
        size,
        target,
        cache_dir,
        sha,
        lambda sha: _entry(cache_dir, size, sha, key),
        delimiter,
        na_values,
    )
    if _identity(path) != before:
        shutil.rmtree(entry, ignore_errors=True)
        raise DataError(f"{path}: changed while being read; run again")
    opened = _open_entry(entry)
    if opened is None:
        raise DataError(f"{entry}: cache entry unreadable right after writing it")
    _remove_older_entries(cache_dir, path, sha)
    return opened


def _read_in_memory(
    path: Path, target: str | None, na_values: tuple[str, ...]
) -> tuple[ColumnRows, TableInfo]:
    """A Parquet file with text columns, read into memory column by column (no entry)."""
    try:
        before = _identity(path)
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    x, info = read_parquet_columns(path, target, na_values)
    if _identity(path) != before:
        raise DataError(f"{path}: changed while being read; run again")
    return x, info


def _entry(cache_dir: Path, size: int, sha: str, key: str) -> Path:
    """The entry of a source of `size` bytes with hash `sha` (its content's, or a Parquet
    file's footer and mtime), read with settings `key`."""
    return cache_dir / f"{size}-{sha}-{key}"


def _identity(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class _SyncingWriter:
    """A file sink that writes its dirty pages back every SYNC_BYTES.

    Under a memory limit the dirty pages of a large cache file would otherwise count against
    the process until the kernel writes them back. The clean pages stay in the page cache
    (reclaimable under a limit): the split, the standardization and the first epoch read them
    right after: dropping them made the standardization read from disk at 1M rows (its preads
    took 0.51 s instead of 0.03 s).
    """

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.unsynced = 0

    def write(self, data: memoryview | bytes) -> int:
        written = self.handle.write(data)
        self.unsynced += written
        if self.unsynced >= SYNC_BYTES:
            self.sync()
        return written

    def seek(self, offset: int) -> int:
        return self.handle.seek(offset)

    def truncate(self) -> int:
        return self.handle.truncate()

    def sync(self) -> None:
        self.handle.flush()
        os.fdatasync(self.handle.fileno())
        self.unsynced = 0


class WriteFailed(Exception):
    """The cache file could not be written (error: the OSError); not an OSError itself, so a
    reader never takes it for a problem of the source file."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class BackgroundWriter:
    """A sink whose writes happen on a thread of its own, in order (a _SyncingWriter's: an
    fdatasync every SYNC_BYTES), so the reading threads never wait for the disk.

    At most PENDING_BYTES wait to be written (beyond one block): a reader faster than the disk
    waits in write(). write() keeps a reference to the block: the caller must not change it
    afterwards (the readers hand over a new block each time). A failed write is raised as
    WriteFailed by the next write(), seek(), truncate() or sync().
    """

    def __init__(self, writer: _SyncingWriter) -> None:
        self.writer = writer
        self.pending: collections.deque[memoryview | bytes] = collections.deque()
        self.pending_bytes = 0
        self.error: OSError | None = None
        self.closing = False
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="bnserve-write", daemon=True)
        self.thread.start()

    def write(self, data: memoryview | bytes) -> int:
        size = memoryview(data).nbytes
        with self.changed:
            while self.pending and self.pending_bytes + size > PENDING_BYTES and not self.error:
                self.changed.wait()
            self._raise_error()
            self.pending.append(data)
            self.pending_bytes += size
            self.changed.notify_all()
        return size

    def _run(self) -> None:
        while True:
            with self.changed:
                while not self.pending and not self.closing:
                    self.changed.wait()
                if not self.pending:
                    return  # closed, everything written
                data = self.pending[0]
            try:
                self.writer.write(data)
            except OSError as error:
                with self.changed:
                    self.error = error
                    self.pending.clear()
                    self.pending_bytes = 0
                    self.changed.notify_all()
                return
            with self.changed:
                self.pending.popleft()
                self.pending_bytes -= memoryview(data).nbytes
                self.changed.notify_all()

    def _raise_error(self) -> None:
        if self.error is not None:
            raise WriteFailed(self.error)

    def drain(self) -> None:
        """Wait until every block handed over is written."""
        with self.changed:
            while self.pending and not self.error:
                self.changed.wait()
            self._raise_error()

    def seek(self, offset: int) -> int:
        self.drain()
        return self.writer.seek(offset)

    def truncate(self) -> int:
        self.drain()
        return self.writer.truncate()

    def sync(self) -> None:
        """Write everything handed over and flush it to the disk."""
        self.drain()
        try:
            self.writer.sync()
        except OSError as error:
            raise WriteFailed(error) from None

    def close(self) -> None:
        """Stop the thread; blocks not yet written are dropped (after a failed read)."""
        with self.changed:
            self.pending.clear()
            self.pending_bytes = 0
            self.closing = True
            self.changed.notify_all()
        self.thread.join()


def _build_entry(
    path: Path,
    size: int,
    target: str | None,
    cache_dir: Path,
    sha: str | None,
    entry_of: Callable[[str], Path],
    delimiter: str,
    na_values: tuple[str, ...],
) -> tuple[Path, str]:
    """Read the source (`size` bytes) into a new entry and rename it into place: (entry, the hash
    it is named by). sha None: the source's bytes are hashed on a second thread while it is
    read."""
    temporary = cache_dir / f"{atomic.TEMP_PREFIX}{uuid.uuid4().hex}"
    if size >= NOTICE_BYTES:  # the first read of a 453 MB CSV took 4 s: say why it waits
        print(
            f"bnserve: reading {path} ({size / 2**20:,.0f} MB) into the float32 cache in "
            f"{cache_dir}, once: later runs read it in place",
            file=sys.stderr,
            flush=True,
        )
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="bnserve-hash") as hasher:
            hashing = hasher.submit(content_sha256, path) if sha is None else None
            temporary.mkdir(parents=True)
            with (temporary / "x.f32").open("wb") as handle:
                writer = BackgroundWriter(_SyncingWriter(handle))
                try:
                    info = read_table(path, target, writer, delimiter, na_values)  # type: ignore[arg-type]
                    writer.sync()
                finally:
                    writer.close()
            named_sha = hashing.result() if hashing is not None else sha
        assert named_sha is not None
        np.save(temporary / "codes.npy", info.target.codes)
        np.save(temporary / "cells.npy", np.array(info.target.cells, dtype=str))
        for col, vocabulary in enumerate(info.vocabularies):
            if vocabulary is not None:
                np.save(temporary / f"vocabulary{col}.npy", np.array(vocabulary, dtype=str))
        meta = {
            "format": FORMAT,
            "source": str(path.resolve()),
            "sha256": named_sha,
            "hashed": "content" if sha is None or not is_parquet(path) else "footer and mtime",
            "rows": info.rows,
            "feature_names": info.feature_names,
            "target_name": info.target_name,
            "text_columns": [col for col, v in enumerate(info.vocabularies) if v is not None],
            "mixed": info.mixed,
        }
        (temporary / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        atomic.fsync_directory(temporary)
        entry = entry_of(named_sha)
        if _open_entry(entry) is not None:
            return entry, named_sha  # another process wrote the same entry meanwhile
        if entry.exists():
            shutil.rmtree(entry)  # an unreadable entry (e.g. of an older format)
        try:
            os.rename(temporary, entry)
        except OSError as error:
            if error.errno in (errno.EEXIST, errno.ENOTEMPTY):
                return entry, named_sha  # another process renamed its copy into place first
            raise
        atomic.fsync_directory(cache_dir)
        return entry, named_sha
    except (OSError, WriteFailed) as failed:
        cause = failed.error if isinstance(failed, WriteFailed) else failed
        raise DataError(
            f"{cache_dir}: cannot write the data cache ({cause}); "
            f"choose another with --cache-dir or ${CACHE_ENV}, or 'off'"
        ) from None
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _open_entry(entry: Path) -> tuple[RowFile, TableInfo] | None:
    """The entry's arrays, or None when it is missing, partial or of another format."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            return None
        rows, names = int(meta["rows"]), list(meta["feature_names"])
        shape = (rows, len(names))
        x_path = entry / "x.f32"
        if x_path.stat().st_size != rows * len(names) * 4:
            return None
        x = RowFile(x_path, *shape)
        codes = np.load(entry / "codes.npy", allow_pickle=False)
        cells = np.load(entry / "cells.npy", allow_pickle=False).tolist()
        text = {
            int(col): tuple(np.load(entry / f"vocabulary{col}.npy", allow_pickle=False).tolist())
            for col in meta["text_columns"]
        }
        mixed = bool(meta["mixed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if codes.shape != (rows,):
        return None
    vocabularies = tuple(text.get(col) for col in range(len(names))) if mixed else ()
    target = Target(cells, codes)
    return x, TableInfo(rows, names, str(meta["target_name"]), target, vocabularies, mixed)


def _remove_older_entries(cache_dir: Path, path: Path, sha: str) -> None:
    """Entries of earlier contents of the same source file (they can never be used again)."""
    source = str(path.resolve())
    for meta_path in cache_dir.glob("*/meta.json"):
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("source") == source and meta.get("sha256") != sha:
                shutil.rmtree(meta_path.parent, ignore_errors=True)
        except (OSError, ValueError):
            continue


class FeatureRows(Protocol):
    """x (N, F) as training reads it: a numpy array, or a RowFile over the float32 cache."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype[Any]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: Any, /) -> Any: ...


# what RowFile[...] takes: a row, a slice of rows, an array of row numbers, or (rows, columns)
RowIndex = int | np.integer[Any] | slice | np.ndarray | Sequence[int] | tuple[Any, ...]


class RowFile:
    """A (rows, features) float32 C-order file read with pread, rows on demand.

    Wanted rows are read in file order, neighbours closer than GAP_BYTES in one pread (up to
    PIECE_BYTES), then put back in the order asked for. Unlike a memory map, pages read this
    way are never mapped into the process: under a memory limit the kernel can drop them at
    once, and a sparse gather reads only the pages that hold wanted rows.
    """

    PIECE_BYTES = 4 << 20
    GAP_BYTES = 16 << 10

    def __init__(self, path: Path, rows: int, features: int) -> None:
        self.path = path
        self.shape = (rows, features)
        self.dtype = np.dtype(np.float32)
        self.ndim = 2
        self._row_bytes = features * 4
        self._fd = os.open(path, os.O_RDONLY)
        self._closer = weakref.finalize(self, os.close, self._fd)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        whole = self[np.arange(self.shape[0])]
        return whole if dtype is None else whole.astype(dtype)

    def __getitem__(self, index: RowIndex) -> np.ndarray:
        if isinstance(index, tuple):  # x[rows, columns]: the rows first, then numpy's indexing
            return self[index[0]][(slice(None), *index[1:])]
        if isinstance(index, slice):
            index = np.arange(*index.indices(self.shape[0]))
        elif isinstance(index, (int, np.integer)):
            row: np.ndarray = self[np.array([index])][0]
            return row
        rows = np.asarray(index, dtype=np.int64)
        rows = np.where(rows < 0, rows + self.shape[0], rows)  # from the end, as numpy does
        if rows.ndim != 1:
            raise IndexError("RowFile takes a 1-D array of row numbers")
        if rows.size and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"row out of range for {self.shape[0]} rows")
        ascending = bool(np.all(rows[1:] >= rows[:-1]))
        order = np.arange(len(rows)) if ascending else np.argsort(rows, kind="stable")
        wanted = rows if ascending else rows[order]
        out = np.empty((len(rows), self.shape[1]), dtype=np.float32)
        if not len(wanted):
            return out
        gap_rows = max(1, self.GAP_BYTES // self._row_bytes)
        piece_rows = max(1, self.PIECE_BYTES // self._row_bytes)
        breaks = np.flatnonzero(np.diff(wanted) > gap_rows) + 1
        starts = np.concatenate([[0], breaks])
        stops = np.concatenate([breaks, [len(wanted)]])
        for run_start, run_stop in zip(starts.tolist(), stops.tolist(), strict=True):
            start = run_start
            while start < run_stop:  # a long run in pieces of at most PIECE_BYTES
                first = int(wanted[start])
                stop = int(np.searchsorted(wanted, first + piece_rows, side="left", sorter=None))
                stop = min(max(stop, start + 1), run_stop)
                last = int(wanted[stop - 1])
                size, offset = (last - first + 1) * self._row_bytes, first * self._row_bytes
                block = np.frombuffer(os.pread(self._fd, size, offset), dtype=np.float32)
                block = block.reshape(-1, self.shape[1])
                if ascending:  # rows asked in file order: the first put in place as they are
                    out[start:stop] = block[wanted[start:stop] - first]
                else:
                    out[order[start:stop]] = block[wanted[start:stop] - first]
                start = stop
        return out
