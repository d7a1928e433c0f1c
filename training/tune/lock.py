"""One writer per tune directory: an flock on TUNE_DIR/tune.lock that records the holder's pid.

The kernel drops an flock when its holder exits, however it exits (kill -9 included), so a lock
left by a crashed coordinator is never "held": the next tune takes it and, finding the dead
holder's pid still written in the file, says it took over a stale lock. A clean exit empties the
file. The file itself stays (unlinking a lock file races with a process about to lock it).
"""

from __future__ import annotations

import errno
import fcntl
import os
import sys
from pathlib import Path

from bnserve.training.tune.errors import TuneLocked

LOCK_NAME = "tune.lock"


class TuneLock:
    """Hold the tune directory's lock for a `with` block (the directory must exist).

    Raises TuneLocked, naming the holder's pid, when another process (or another TuneLock in
    this one) holds it.
    """

    def __init__(self, tune_dir: Path) -> None:
        self.path = Path(tune_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _read_pid(fd)
            os.close(fd)
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            who = f"process {holder}" if holder else "another process"
            raise TuneLocked(
                f"{self.path.parent}: {who} is running this tune (it holds {self.path}); "
                "wait for it to end or stop it, then --resume"
            ) from None
        previous = _read_pid(fd)
        if previous and previous != os.getpid():
            print(
                f"{self.path}: taking over a stale lock of process {previous}, which ended "
                "without releasing it (killed or crashed)",
                file=sys.stderr,
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        os.ftruncate(fd, 0)  # a clean end: the next holder has nothing stale to report
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def __enter__(self) -> TuneLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None
