"""Atomic file replacement: whatever a reader opens is a whole old file or a whole new one.

Every writer builds its file under a temporary name in the target's own directory (a rename is
atomic only within one file system) and renames it over the target with `os.replace`; on any
failure the temporary is deleted and the old file stays. Shared by training, export and the
server (the `bnserve` package's own modules sit below all three), so it imports only the
standard library.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

TEMP_PREFIX = ".tmp-"  # what a killed writer leaves behind: training/rundir.py sweeps these
FILE_MODE = 0o644  # mkstemp makes 0600; a server running as another user must read the file


def write_file(path: Path, write: Callable[[IO[bytes]], object]) -> None:
    """Write `path` (mode 0644, parent directories made) through `write(handle)`, atomically.

    The bytes are fsynced before the rename, so after a crash the name holds the old file or the
    whole new one. The temporary is `.tmp-*` beside `path`, unique per call (concurrent writers
    of one path never share it); a killed writer leaves it behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=TEMP_PREFIX, delete=False)  # noqa: SIM115
    try:
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(handle.name, FILE_MODE)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    """Atomically write `data` to `path` (see `write_file`)."""
    write_file(path, lambda handle: handle.write(data))


@contextmanager
def built_in_place(
    path: Path, temporary: Path, *, companions: Iterable[Path] = ()
) -> Iterator[Path]:
    """Yield `temporary` for the with-block to build (a database, a symlink), then rename it
    over `path`.

    For what `write_file` cannot stream: a file another library creates by name. `temporary`
    (and `companions`, files the builder leaves beside it, such as SQLite's -wal and -shm) are
    deleted first (a killed earlier build's) and again when the block or the rename fails.
    Nothing is fsynced here: the builder decides its own durability."""
    leftovers = [temporary, *companions]
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        for leftover in leftovers:
            leftover.unlink(missing_ok=True)
        raise


def fsync_directory(folder: Path) -> None:
    """Make the entries of `folder` (a rename into it, files made in it) durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
