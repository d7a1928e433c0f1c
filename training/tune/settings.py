"""TuneSettings: every setting of one tune, in one frozen dataclass stored in its SQLite file."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from bnserve.training.tune.early_stop import RULES
from bnserve.training.tune.errors import TuneSettingsError
from bnserve.training.tune.space import SearchSpace, build_space
from bnserve.training.tune.trials import OBJECTIVES

# Settings a resumed tune may change: they decide how trials run, not which trials there are.
RUNTIME_FIELDS = ("workers", "ray_address", "progress", "plots", "show")


@dataclass(frozen=True)
class TuneSettings:
    """Settings of one tune; `space` is the validated search-space document."""

    out: Path  # the tune directory
    space: dict[str, Any]  # {"fixed": {...}, "search": {...}} as build_space accepts it
    trials: int = 20  # total trials (points × 2 with compare_batchnorm), over all rounds
    rounds: int = 1  # coarse-to-fine rounds; each after the first samples in a shrunk box
    shrink: float = 0.5  # each round's box is this fraction of the previous one's width
    grid_points: int | None = None  # grid search with this many values per numeric dimension
    seed: int = 0  # the tune's seed: each point's sample derives from (seed, point index)
    workers: int | None = None  # trials at once; None = one per core (or the Ray cluster's CPUs)
    ray_address: str | None = None  # run trials on this Ray cluster ("local" starts one here)
    early_stop: str = "none"  # "none" | "median" | "halving"
    grace_epochs: int = 3  # early stopping: never stop a trial before this many epochs
    reduction: int = 3  # halving: η, each rung (grace_epochs·η^k) keeps about 1/η of the trials
    compare_batchnorm: bool = False  # each point twice: with and without batch norm
    objective: str = "train"  # "train", or "synthetic" for the tuner's own tests and benchmarks
    checkpoints: bool = False  # per-epoch checkpoints in each trial's run directory
    cv: int | None = None  # K-fold cross-validation of every trial (see cv.py); None: dev split
    cv_repeats: int = 1  # --cv: the folds drawn this many times (repeated CV; see cv.py)
    # --cv: the retrain keeps the mean weights of this share of its last epochs (cv.py), 0: off
    final_average: float = 0.5
    # --cv: retrain this many best trials (cv.py); the tune's model is the mean of their predictions
    final_members: int = 1
    progress: bool = True  # a progress bar over trials
    plots: bool = True  # write plots/*.png at the end
    show: int = 10  # rows of the results table printed in the terminal

    def __post_init__(self) -> None:
        _validate(self)

    def search_space(self) -> SearchSpace:
        return build_space(self.space, where=f"{self.out}: search space")

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["out"] = str(self.out)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TuneSettings:
        known = {field.name for field in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TuneSettingsError(f"unknown tune setting(s): {', '.join(unknown)}")
        return cls(**{**values, "out": Path(values["out"])})


def with_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """Stored settings with the fields added since they were written at their defaults, so a
    tune made by an earlier bnserve (before cv_repeats, final_average, final_members) resumes."""
    defaults = {field.name: field.default for field in fields(TuneSettings)}
    return {
        **{name: value for name, value in defaults.items() if value is not MISSING},
        **stored,
    }


def _validate(settings: TuneSettings) -> None:
    def check(condition: bool, message: str) -> None:
        if not condition:
            raise TuneSettingsError(message)

    check(settings.trials >= 1, f"--trials {settings.trials}: need at least 1 trial")
    check(settings.rounds >= 1, f"--rounds {settings.rounds}: need at least 1 round")
    check(
        settings.rounds <= settings.trials,
        f"--rounds {settings.rounds} is more than --trials {settings.trials}",
    )
    check(0 < settings.shrink < 1, f"--shrink {settings.shrink}: must be in (0, 1)")
    check(
        settings.workers is None or settings.workers >= 1,
        f"--workers {settings.workers}: need at least 1 worker",
    )
    check(settings.early_stop in RULES, f"--early-stop {settings.early_stop!r}: one of {RULES}")
    check(settings.grace_epochs >= 1, f"--grace-epochs {settings.grace_epochs}: must be ≥ 1")
    check(settings.reduction >= 2, f"--reduction {settings.reduction}: must be ≥ 2")
    check(
        settings.objective in OBJECTIVES, f"objective {settings.objective!r}: one of {OBJECTIVES}"
    )
    check(0 <= settings.seed < 2**32, f"--seed {settings.seed}: must be in [0, 2**32)")
    check(settings.show >= 0, f"--show {settings.show}: must be ≥ 0")
    check(
        settings.cv is None or settings.cv >= 2,
        f"--cv {settings.cv}: cross-validation needs at least 2 folds",
    )
    check(settings.cv_repeats >= 1, f"--cv-repeats {settings.cv_repeats}: must be ≥ 1")
    check(
        settings.cv_repeats == 1 or settings.cv is not None,
        f"--cv-repeats {settings.cv_repeats} repeats cross-validation: give --cv",
    )
    check(
        0 <= settings.final_average <= 1,
        f"--final-average {settings.final_average}: a share of the epochs, in [0, 1]",
    )
    check(settings.final_members >= 1, f"--final-members {settings.final_members}: must be ≥ 1")
    check(
        settings.final_members == 1 or settings.cv is not None,
        f"--final-members {settings.final_members} retrains after cross-validation: give --cv",
    )
    check(
        settings.cv is None or settings.objective == "train",
        "--cv trains folds of the data: not with --objective synthetic",
    )
    if settings.grid_points is not None:
        check(settings.rounds == 1, "--grid runs one round: drop --rounds")
    space = build_space(settings.space, where="search space")
    if settings.compare_batchnorm:
        check(settings.rounds == 1, "--compare-batchnorm runs one round: drop --rounds")
        check("lr" in space.names(), "--compare-batchnorm plots dev error against lr: search lr")
        check(
            "batchnorm" not in space.names(),
            "--compare-batchnorm sets batchnorm itself: remove it from the search space",
        )
        check(
            settings.trials % 2 == 0 or settings.grid_points is not None,
            f"--compare-batchnorm trains each point twice: --trials {settings.trials} is odd",
        )
