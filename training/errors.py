"""Errors the training package raises; each message names the problem and where it is."""


class TrainingError(Exception):
    """Base class: a problem a person can fix (bad data, bad settings, bad run directory)."""


class DataError(TrainingError, ValueError):
    """The input data is unusable; the message names the file, row and column."""


class RunError(TrainingError):
    """A run directory is missing, incomplete or inconsistent; the message names the file."""
