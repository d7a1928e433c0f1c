"""Errors the tuner raises; each message names the setting, dimension or file and what to do."""

from __future__ import annotations

from bnserve.training.errors import TrainingError


class TuneError(TrainingError):
    """A tune cannot start or go on (its directory, its stored settings, its data)."""


class SpaceError(TuneError, ValueError):
    """A search space is invalid; the message names the dimension and the value."""


class TuneSettingsError(TuneError, ValueError):
    """A tune setting (--trials, --workers, --ray-address, …) is invalid; the message names it."""


class TuneLocked(TuneError):
    """Another live process is the tune directory's writer; the message names its pid."""


class WorkerLost(RuntimeError):
    """The worker process running a trial ended before it answered (killed, OOM, crash)."""


class TrialCrashed(RuntimeError):
    """Something escaped the trial runner inside a worker (it turns exceptions into outcomes, so
    this is a bug or an interrupt); the message is the worker's one-line account."""
