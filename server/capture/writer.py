"""Capture: sampled calls (and posted true answers) written to the capture store off the
request path.

A call costs a random draw and, when sampled, one deque append of references to its arrays (one
short lock around the queue's record and byte counts, no condition to notify); one writer
thread, woken 20 times a second, formats the rows and writes them. A full queue drops the record
and counts it (`bnserve_capture_dropped_total`); nothing here blocks or fails a call. The writer
keeps one open segment per model version (and one for each model's labels) under a hidden
temporary name, and renames it into the store (bnserve/capture_store.py is the layout) once it
reaches its size or its age, after which the store is trimmed, oldest files first, to
`max_bytes`. A write that fails (a full disk) is logged (throttled), its segment deleted, its
rows counted as dropped, and serving goes on.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import re
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple, Protocol

import numpy as np
import orjson
from isal import isal_zlib

from bnserve import capture_store as store
from bnserve.server.observability.logs import LogThrottle
from bnserve.server.plane.inputs import Columns

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
QUEUE_RECORDS = 4096  # calls (or feedback batches) waiting for the writer; more are dropped
QUEUE_BYTES = 64 << 20  # and the arrays they hold at most (a few large batches fill it)
SEGMENT_MAX_BYTES = 16 << 20  # a segment's compressed size at most (smaller for small stores)
SEGMENT_MIN_BYTES = 64 << 10
LABEL_CELL_BYTES = 64  # a str object and its list slot, roughly, beside the text
DRAIN_INTERVAL_S = 0.05  # the writer writes what is queued this often
# ISA-L's deflate (python-isal, a standard gzip stream) at its level 1: 2.1 µs per call of a
# 64-feature model against 5.6-8.6 µs for zlib's level 1, and smaller files (docs/operations.md)
COMPRESS_LEVEL = 1
GZIP_WBITS = 31  # deflate in a gzip member: header, stream, CRC-32 and size trailer


class CapturedModel(Protocol):
    """What capture reads of a served version (server/models/model.py's Model)."""

    name: str
    version: str
    is_classification: bool

    @property
    def card(self) -> Any: ...  # feature_names, class_names, target_names


@dataclass(frozen=True)
class CaptureOptions:
    """directory: the store's root; sample: the share of calls captured (0 < p ≤ 1);
    max_bytes: the store's size bound (finished files, all models, this process's open
    segments); rotate_s: a segment's age at most before it is renamed into the store."""

    directory: Path
    sample: float
    max_bytes: int
    rotate_s: float
    queue_records: int = QUEUE_RECORDS
    queue_bytes: int = QUEUE_BYTES

    @property
    def segment_bytes(self) -> int:
        """A segment is renamed into the store once its compressed bytes reach this."""
        return max(SEGMENT_MIN_BYTES, min(SEGMENT_MAX_BYTES, self.max_bytes // 16))


class _Call(NamedTuple):
    model: CapturedModel
    inputs: np.ndarray | Mapping[str, np.ndarray]
    outputs: Sequence[np.ndarray]
    ids: str | Sequence[str]
    at: float  # seconds since the epoch
    ms: float
    nbytes: int  # of the arrays it holds
    shadow: bool  # a shadow version's answer (shadow-calls-* files)


class _Labels(NamedTuple):
    model: str
    header: list[str]
    rows: list[list[str]]
    nbytes: int  # what its cells hold, roughly (LABEL_CELL_BYTES a cell besides its text)


_STOP = object()


class CaptureCounters(Protocol):
    """Where capture reports (server/capture/metrics.py's Prometheus counters)."""

    def written(self, rows: int) -> None: ...

    def dropped(self, rows: int, reason: str) -> None: ...


class CaptureWriter:
    """The bounded queue and its one writer thread (`start`, `stop` finishes every segment)."""

    def __init__(self, options: CaptureOptions, counters: CaptureCounters | None = None) -> None:
        self.options = options
        # Calls, label batches and control items (_STOP, a flush's Event) in order. deque's
        # append and popleft are atomic; the bound (records and bytes) is kept by _reserve.
        self._queue: deque[object] = deque()
        self._queued_records = 0
        self._counters = counters
        self._segments: dict[tuple[str, ...], _Segment] = {}
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._warnings = LogThrottle(10.0)
        self._wake = threading.Event()
        self._sequence = 0
        self._queued_bytes = 0
        self._bytes_lock = threading.Lock()
        self.written_rows = 0
        self.dropped_rows = 0

    # --- the request path --------------------------------------------------------------------

    def offer(
        self,
        model: CapturedModel,
        inputs: np.ndarray | Columns | Mapping[str, np.ndarray],
        outputs: Sequence[np.ndarray],
        ids: str | Sequence[str],
        latency_ns: int,
        *,
        shadow: bool = False,
    ) -> bool:
        """A scored call, captured with probability `sample`; True when it was sampled (then
        written, or dropped and counted). inputs: (N, F) float32 in the model's feature order,
        or a mixed model's Columns, or column name → [N] / [N, 1] array (float32, NaN
        missing; or str/object text);
        outputs: the model's outputs, N rows each; ids: the call's request id (rows numbered
        0..N-1) or one id per row (a stream's messages, each row 0). shadow: a shadow
        version's answer to a sampled call (always written, to shadow-calls-* files)."""
        sample = self.options.sample
        if not shadow and sample < 1.0 and random.random() >= sample:
            return False
        if isinstance(inputs, Columns):
            inputs = inputs.arrays
        nbytes = sum(output.nbytes for output in outputs) + (
            inputs.nbytes
            if isinstance(inputs, np.ndarray)
            else sum(np.asarray(column).nbytes for column in inputs.values())
        )
        if not self._reserve(nbytes):
            self._drop(len(outputs[0]), "queue_full")
            return True
        at = time.time()
        self._queue.append(_Call(model, inputs, outputs, ids, at, latency_ns / 1e6, nbytes, shadow))
        return True

    def _release(self, nbytes: int) -> None:
        with self._bytes_lock:
            self._queued_bytes -= nbytes
            self._queued_records -= 1

    @property
    def queued_bytes(self) -> int:
        """What the queue holds now (arrays' bytes, labels' rough size), ≤ options.queue_bytes."""
        return self._queued_bytes

    def offer_labels(self, model: str, header: list[str], rows: list[list[str]]) -> bool:
        """True answers (header and rows as the labels file holds them); False: the queue was
        full and they were dropped (counted)."""
        nbytes = sum(LABEL_CELL_BYTES + len(cell) for row in rows for cell in row)
        if not self._reserve(nbytes):
            self._drop(len(rows), "queue_full")
            return False
        self._queue.append(_Labels(model, header, rows, nbytes))
        return True

    def _reserve(self, nbytes: int) -> bool:
        """Count one record of nbytes as queued; False (nothing counted) when either bound
        (options.queue_records, options.queue_bytes) would be passed."""
        with self._bytes_lock:
            if (
                self._queued_records >= self.options.queue_records
                or self._queued_bytes + nbytes > self.options.queue_bytes
            ):
                return False
            self._queued_bytes += nbytes
            self._queued_records += 1
            return True

    def _drop(self, rows: int, reason: str) -> None:
        self.dropped_rows += rows
        if self._counters is not None:
            self._counters.dropped(rows, reason)

    # --- the writer thread -------------------------------------------------------------------

    def prepare(self) -> None:
        """Make the store's root (0700; an existing one is made 0700 too); OSError naming
        the directory when it cannot be made, changed or written."""
        root = self.options.directory
        try:
            root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            os.chmod(root, DIR_MODE)
            if not os.access(root, os.W_OK | os.X_OK):
                raise PermissionError("not writable")
        except OSError as error:
            raise OSError(
                f"cannot use --capture-dir {str(root)!r}: {error.strerror or error}"
            ) from None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Write what is queued, finish every segment, end the thread."""
        if self._thread.is_alive():
            self._queue.append(_STOP)
            self._wake.set()
            self._thread.join()

    def flush(self, timeout_s: float = 10.0) -> None:
        """Rename every open segment into the store once what is queued now is written (tests,
        and a stop)."""
        done = threading.Event()
        self._queue.append(done)
        self._wake.set()
        done.wait(timeout_s)

    def _run(self) -> None:
        """Every DRAIN_INTERVAL_S (or at once for a stop or a flush), write everything queued:
        the serving threads wake this one 20 times a second, not once a call. Consecutive calls
        to one version are formatted and compressed as one block (one pass over their arrays)."""
        while True:
            self._wake.wait(min(DRAIN_INTERVAL_S, self._next_rotation_s()))
            self._wake.clear()
            calls: list[_Call] = []
            pending = self._queue
            while pending:
                item = pending.popleft()
                if isinstance(item, _Call):
                    self._release(item.nbytes)
                    if calls and not _same_block(calls[-1], item):
                        self._write_calls(calls)
                        calls = []
                    calls.append(item)
                    continue
                if calls:
                    self._write_calls(calls)
                    calls = []
                if item is _STOP:
                    self._finish_all()
                    return
                if isinstance(item, threading.Event):
                    self._finish_all()
                    item.set()
                elif isinstance(item, _Labels):
                    self._release(item.nbytes)
                    self._guarded(self._write_labels, item, len(item.rows))
            if calls:
                self._write_calls(calls)
            self._rotate_aged()

    def _next_rotation_s(self) -> float:
        if not self._segments:
            return 1.0
        oldest = min(segment.opened for segment in self._segments.values())
        return max(0.01, oldest + self.options.rotate_s - time.monotonic())

    def _guarded(self, write: Any, record: Any, rows: int) -> None:
        try:
            write(record)
        except (OSError, ValueError) as error:  # a full disk, the directory gone
            self._drop(rows, "write_error")
            held_back = self._warnings.admit("write")
            if held_back is not None:
                more = f" ({held_back} more since the last line)" if held_back else ""
                log.warning("capture: rows dropped, cannot write: %s%s", error, more)

    def _write_calls(self, calls: list[_Call]) -> None:
        """Calls to one version (`_same_block`), as one block of rows."""
        rows = sum(len(call.outputs[0]) for call in calls)
        self._guarded(self._write_block, calls, rows)

    def _write_block(self, calls: list[_Call]) -> None:
        first = calls[0]
        model = first.model
        header, text, count = _calls_text(calls)
        prefix = store.SHADOW_CALLS if first.shadow else store.CALLS
        key = (prefix, model.name, model.version)
        directory = self.options.directory / model.name / model.version
        self._write(key, directory, prefix, header, text, count)

    def _write_labels(self, labels: _Labels) -> None:
        key = ("labels", labels.model, *labels.header)
        directory = self.options.directory / labels.model / store.LABELS_DIR
        text = "".join(csv_line(row) for row in labels.rows)
        self._write(key, directory, store.LABELS, labels.header, text, len(labels.rows))

    def _write(
        self,
        key: tuple[str, ...],
        directory: Path,
        prefix: str,
        header: list[str],
        text: str,
        rows: int,
    ) -> None:
        segment = self._segments.get(key)
        if segment is not None and segment.header != header:
            self._finish(key)  # a version's columns never change; a labels header may
            segment = None
        if segment is None:
            self._sequence += 1
            segment = _Segment(directory, prefix, header, self._sequence, self.options.directory)
            self._segments[key] = segment
        try:
            segment.write(text, rows)
        except (OSError, ValueError):
            del self._segments[key]
            segment.abandon()
            raise
        self.written_rows += rows
        if self._counters is not None:
            self._counters.written(rows)
        if segment.size() >= self.options.segment_bytes:
            self._finish(key)

    def _rotate_aged(self) -> None:
        now = time.monotonic()
        for key in [
            k for k, s in self._segments.items() if now - s.opened >= self.options.rotate_s
        ]:
            self._finish(key)

    def _finish_all(self) -> None:
        for key in list(self._segments):
            self._finish(key)

    def _finish(self, key: tuple[str, ...]) -> None:
        segment = self._segments.pop(key)
        try:
            segment.finish()
        except OSError as error:
            segment.abandon()
            self._drop(segment.rows, "write_error")
            log.warning("capture: segment %s dropped, cannot finish it: %s", segment.final, error)
            return
        self._trim()

    def _trim(self) -> None:
        """Delete the oldest finished files until the store (with the open segments) fits."""
        root = self.options.directory
        files = []
        for prefix in (store.CALLS, store.SHADOW_CALLS, store.LABELS):
            for path in store.finished_files(root, prefix):
                with contextlib.suppress(OSError):  # another process removed it
                    stat = path.stat()
                    files.append((stat.st_mtime, path.name, path, stat.st_size))
        total = sum(size for *_, size in files) + sum(s.size() for s in self._segments.values())
        for _, _, path, size in sorted(files):
            if total <= self.options.max_bytes:
                break
            with contextlib.suppress(OSError):
                path.unlink()
            total -= size


class _Segment:
    """One file being written: gzip CSV under `.NAME.tmp`, renamed to NAME by `finish`; one
    gzip member, from one compressor (which holds back up to ~100 KiB of output)."""

    def __init__(
        self, directory: Path, prefix: str, header: list[str], sequence: int, root: Path
    ) -> None:
        _make_private_dirs(root, directory)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        name = f"{prefix}{stamp}-p{os.getpid()}-{sequence:06d}{store.SUFFIX}"
        self.final = directory / name
        self.temp = directory / f".{name}.tmp"
        self.header = header
        self.rows = 0
        self.opened = time.monotonic()
        descriptor = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        self._raw: IO[bytes] = os.fdopen(descriptor, "wb")
        self._deflate = isal_zlib.compressobj(COMPRESS_LEVEL, isal_zlib.DEFLATED, GZIP_WBITS)
        self._raw.write(self._deflate.compress(csv_line(header).encode()))

    def write(self, text: str, rows: int) -> None:
        self._raw.write(self._deflate.compress(text.encode()))
        self.rows += rows

    def size(self) -> int:
        """Compressed bytes written so far (the file's, without what the compressor holds)."""
        return self._raw.tell()

    def finish(self) -> None:
        self._raw.write(self._deflate.flush())  # the rest and the gzip trailer
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        os.rename(self.temp, self.final)
        descriptor = os.open(self.final.parent, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def abandon(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._raw.close()
        with contextlib.suppress(OSError):
            self.temp.unlink()


def _make_private_dirs(root: Path, directory: Path) -> None:
    """root and every level below it down to directory, 0700 (made as needed)."""
    path = root
    for part in directory.relative_to(root).parts:
        path = path / part
        if not path.is_dir():
            path.mkdir(mode=DIR_MODE, exist_ok=True)
            os.chmod(path, DIR_MODE)  # whatever the umask


def _same_block(a: _Call, b: _Call) -> bool:
    """Whether b's rows can follow a's in one block: the same version object, both captured
    or both shadow, inputs of the same form."""
    return (
        a.model is b.model
        and a.shadow == b.shadow
        and isinstance(a.inputs, np.ndarray) == isinstance(b.inputs, np.ndarray)
        and (isinstance(a.inputs, np.ndarray) or list(a.inputs) == list(b.inputs))
    )


def _calls_text(calls: Sequence[_Call]) -> tuple[list[str], str, int]:
    """Calls to one version (`_same_block`) as their file's header, their CSV lines and the
    lines' count (bnserve/capture_store.py's columns). Numbers as float32's shortest exact
    text, NaN (missing) as an empty cell; each block of columns formatted once for all calls,
    and each line joined from its parts by one format."""
    first = calls[0]
    model = first.model
    card = model.card
    version = "," + _cell(model.version) + ","
    prefixes: list[str] = []  # per row: id, row, time, ms, version and the comma after them
    for call in calls:
        common = f",{call.at:.6f},{call.ms:.3f}{version}"
        ids = call.ids
        n = len(call.outputs[0])
        if isinstance(ids, str):
            cell = _cell(ids)
            if n == 1:
                prefixes.append(f"{cell},0{common}")
            else:
                prefixes += [f"{cell},{row}{common}" for row in range(n)]
        else:
            prefixes += [f"{_cell(i)},0{common}" for i in ids]
    count = len(prefixes)
    if isinstance(first.inputs, np.ndarray):
        names = tuple(card.feature_names)
        inputs = _numbers(_stacked([np.asarray(c.inputs) for c in calls]))
    else:
        names = tuple(first.inputs)
        columns = [
            _stacked([np.asarray(c.inputs[name]).reshape(-1) for c in calls]) for name in names
        ]
        cells = [_column_cells(column) for column in columns]
        inputs = [",".join(row) for row in zip(*cells, strict=True)] if cells else [""] * count
    outputs = [_stacked([c.outputs[k] for c in calls]) for k in range(len(first.outputs))]
    if model.is_classification:
        header, quoted = _layout(names, tuple(card.class_names), True)
        labels = [quoted[k] for k in outputs[1].reshape(count).tolist()]
        probabilities = _numbers(outputs[0])
        lines = [
            f"{prefix}{row},{label},{p}\n"
            for prefix, row, label, p in zip(prefixes, inputs, labels, probabilities, strict=True)
        ]
    else:
        header, _ = _layout(names, tuple(card.target_names), False)
        values = _numbers(outputs[0].reshape(count, -1))
        lines = [
            f"{prefix}{row},{value}\n"
            for prefix, row, value in zip(prefixes, inputs, values, strict=True)
        ]
    return header, "".join(lines), count


def _stacked(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


@functools.lru_cache(maxsize=64)
def _layout(
    names: tuple[str, ...], outputs: tuple[str, ...], classification: bool
) -> tuple[list[str], list[str]]:
    """A version's header (never changed by its users) and its class names as CSV cells."""
    header = [store.ID, store.ROW, store.TIME, store.MS, store.VERSION, *names]
    if classification:
        header += [store.PREDICTED, *(store.PROBABILITY + c for c in outputs)]
    else:
        header += [store.VALUE + t for t in outputs]
    return header, [_cell(c) for c in outputs]


@functools.lru_cache(maxsize=64)
def _row_format(width: int) -> str:
    return ",".join(["%.9g"] * width)


def _numbers(block: np.ndarray) -> list[str]:
    """Each row of an (N, K) float block as K comma-separated cells: float32's shortest exact
    text (orjson's, ~10× faster than %-formatting), NaN (missing) as an empty cell."""
    values = np.ascontiguousarray(block, dtype=np.float32)
    if len(values) == 0:
        return []
    text = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    if "null" not in text:
        return text[2:-2].split("],[")
    if np.isinf(values).any():  # orjson writes ±inf as null, like NaN: %-format this block
        row_format = _row_format(values.shape[1])
        rows = [row_format % tuple(row) for row in values.tolist()]
        return [",".join("" if c == "nan" else c for c in row.split(",")) for row in rows]
    return [
        ",".join("" if c == "null" else c for c in row.split(","))
        for row in text[2:-2].split("],[")
    ]


def _column_cells(column: np.ndarray) -> list[str]:
    """One input column's cells: float32 numbers as in `_numbers`, NaN empty; text quoted."""
    if column.dtype.kind == "f":
        return _numbers(column.reshape(-1, 1))
    return [_cell("" if value is None else str(value)) for value in column.tolist()]


_NEEDS_QUOTES = re.compile(r'[,"\r\n]')


def _cell(text: str) -> str:
    """A CSV cell (RFC 4180): quoted when it holds a comma, a quote or a line break."""
    if _NEEDS_QUOTES.search(text):
        return '"' + text.replace('"', '""') + '"'
    return text


def csv_line(cells: Sequence[str]) -> str:
    return ",".join(_cell(cell) for cell in cells) + "\n"
