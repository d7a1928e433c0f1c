"""Errors the training package raises; each message names the problem and where it is."""

from __future__ import annotations

import errno


class TrainingError(Exception):
    """Base class: a problem a person can fix (bad data, bad settings, bad run directory)."""


class DataError(TrainingError, ValueError):
    """The input data is unusable; the message names the file, row and column."""


class RunError(TrainingError):
    """A run directory is missing, incomplete or inconsistent; the message names the file."""


def disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def os_error_line(error: OSError) -> str:
    """What a failed read or write means, in words, with the file when the OS named one."""
    if disk_full(error):
        what = "no space left on the device (the disk, or your quota, is full)"
    else:
        what = (error.strerror or str(error)).lower()
    return what + (f" ({error.filename})" if error.filename else "")
