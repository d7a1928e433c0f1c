"""The search space: one dimension per hyperparameter, each on its own scale, from a file and flags.

A dimension maps its values to a *search coordinate* r on which sampling is uniform:

    scale     r                  use
    linear    v                  dropout
    int       v, rounded         layers
    log       log10 v            α from 1e-4 to 1: r ~ U[-4, 0], α = 10^r
    log_int   log10 v, rounded   units from 16 to 512
    log1m     log10 (1 − v)      β from 0.9 to 0.999: 1 − β = 10^r, r ~ U[-3, -1]
    choice    (none)             optimizer; batch size as powers of two

File format (TOML or JSON, same structure):

    [fixed]                       # TrainConfig fields every trial shares
    epochs = 10
    [search.lr]
    scale = "log"
    low = 1e-4
    high = 1
    [search.batch_size]
    choice = [32, 64, 128, 256]

Besides TrainConfig's fields, two names shape `hidden`: `layers` (how many) and `units` (width of
each); a trial's hidden = (units,) * layers, so layers = 0 is a linear model (units unused).
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnserve.training.config import TrainConfig
from bnserve.training.tune.errors import SpaceError

NUMERIC_SCALES = ("linear", "int", "log", "log_int", "log1m")
SCALES = (*NUMERIC_SCALES, "choice")
# Names that are not TrainConfig fields but build `hidden`.
SHAPE_NAMES = ("layers", "units")
# Fields a tune never searches: they pick the data or the bookkeeping, not the model.
NOT_SEARCHABLE = (
    "data", "target", "task", "seed", "split_seed", "dev_fraction", "test_fraction", "hidden",
    "folds", "fold", "fold_repeat",
)  # fmt: skip


@dataclass(frozen=True)
class Dimension:
    """One hyperparameter's range on its own scale (see the module docstring)."""

    name: str  # a TrainConfig field, or "layers" / "units"
    scale: str  # one of SCALES
    low: float | None = None  # numeric scales: smallest value (inclusive)
    high: float | None = None  # numeric scales: largest value (inclusive)
    choices: tuple[Any, ...] = ()  # scale "choice": the allowed values, in order

    @property
    def is_integer(self) -> bool:
        return self.scale in ("int", "log_int")

    def to_coordinate(self, value: float) -> float:
        """The search coordinate r of a numeric value (log10 for log scales)."""
        if self.scale in ("linear", "int"):
            return float(value)
        if self.scale in ("log", "log_int"):
            return math.log10(value)
        if self.scale == "log1m":
            return math.log10(1.0 - value)
        raise SpaceError(f"dimension {self.name!r}: a choice has no coordinate")

    def raw_value(self, coordinate: float) -> float:
        """The value at search coordinate r, before rounding and clipping."""
        if self.scale in ("linear", "int"):
            return coordinate
        power: float = 10.0**coordinate  # a float: the base is positive
        if self.scale in ("log", "log_int"):
            return power
        if self.scale == "log1m":
            return 1.0 - power
        raise SpaceError(f"dimension {self.name!r}: a choice has no coordinate")

    def from_coordinate(self, coordinate: float) -> float | int:
        """The value at search coordinate r, rounded for integer scales and kept in [low, high]."""
        assert self.low is not None and self.high is not None
        value = min(max(self.raw_value(coordinate), self.low), self.high)
        return round(value) if self.is_integer else float(value)

    def coordinate_bounds(self) -> tuple[float, float]:
        """(lo, hi) of the search coordinate over [low, high]; integers get ±½ so ends are fair."""
        assert self.low is not None and self.high is not None
        low, high = self.low, self.high
        if self.is_integer:
            low, high = low - 0.5, high + 0.5
        ends = sorted((self.to_coordinate(low), self.to_coordinate(high)))
        return ends[0], ends[1]

    def describe(self) -> str:
        if self.scale == "choice":
            return f"{self.name}: choice of {list(self.choices)}"
        return f"{self.name}: {self.scale} [{self.low:g}, {self.high:g}]"

    def to_dict(self) -> dict[str, Any]:
        if self.scale == "choice":
            return {"choice": list(self.choices)}
        return {"scale": self.scale, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class SearchSpace:
    """Dimensions (sorted by name, so sampling does not depend on file order) and fixed settings."""

    dimensions: tuple[Dimension, ...]
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)  # TrainConfig fields

    def names(self) -> list[str]:
        return [dimension.name for dimension in self.dimensions]

    def dimension(self, name: str) -> Dimension:
        for dimension in self.dimensions:
            if dimension.name == name:
                return dimension
        raise KeyError(name)

    def base_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.fixed)

    def config_for(self, point: dict[str, Any], seed: int | None = None) -> TrainConfig:
        """The TrainConfig of one trial: fixed settings, then the point (layers/units → hidden).

        With `seed`, the trial trains from that seed while the data split stays the fixed
        settings' split (their split_seed, else their seed): every trial and a default
        `bnserve train` see the same train/dev rows, so dev errors compare directly."""
        base = self.base_config()
        values = base.to_dict()
        if seed is not None:
            values.update(seed=seed, split_seed=base.data_split_seed)
        shape = {name: point[name] for name in SHAPE_NAMES if name in point}
        values.update({name: value for name, value in point.items() if name not in SHAPE_NAMES})
        if shape:
            hidden = list(values["hidden"])
            layers = int(shape.get("layers", len(hidden)))
            if "units" not in shape and not hidden and layers > 0:
                raise ValueError(f"layers = {layers} needs a width: search units or fix hidden")
            units = int(shape.get("units", hidden[0] if hidden else 0))
            values["hidden"] = [units] * layers
        return TrainConfig.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "fixed": dict(self.fixed),
            "search": {dimension.name: dimension.to_dict() for dimension in self.dimensions},
        }


# The split is training's default (split seed 0): every trial, and a default `bnserve train`,
# sees the same train/dev rows, so their dev errors compare directly. Trials train up to 200
# epochs and stop 15 epochs after their best, keeping it (small data overfits long before 200).
# Regularization is searched on its own scale (small data needs it): L2 from 1e-6 (next to
# none) to 0.1 on a log scale, dropout linearly from 0 to 0.5, widths down to 8 units. Layers
# start at 1: `--param layers=int:0:3` adds the linear model (layers 0), but in bench/quality.py
# it did not raise held-out quality (docs/benchmarks.md, "Quality").
DEFAULT_SPACE: dict[str, Any] = {
    "fixed": {"epochs": 200, "early_stopping": 15},
    "search": {
        "lr": {"scale": "log", "low": 1e-4, "high": 1e-1},
        "beta1": {"scale": "log1m", "low": 0.8, "high": 0.99},
        "beta2": {"scale": "log1m", "low": 0.9, "high": 0.9999},
        "units": {"scale": "log_int", "low": 8, "high": 256},
        "layers": {"scale": "int", "low": 1, "high": 3},
        "batch_size": {"choice": [16, 32, 64, 128]},
        "lr_decay": {"scale": "linear", "low": 0.95, "high": 1.0},
        "l2": {"scale": "log", "low": 1e-6, "high": 1e-1},
        "dropout": {"scale": "linear", "low": 0.0, "high": 0.5},
    },
}


def describe_default_space() -> str:
    """The default space as help text: one line per dimension, then the fixed settings."""
    space = build_space(DEFAULT_SPACE, where="default search space")
    lines = [f"  {dimension.describe()}" for dimension in space.dimensions]
    fixed = ", ".join(f"{name} = {value}" for name, value in DEFAULT_SPACE["fixed"].items())
    return "\n".join([*lines, f"  fixed: {fixed}"])


def load_space_file(path: str | Path) -> dict[str, Any]:
    """Read a space file (.toml or .json) into {"fixed": {...}, "search": {...}}."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as error:
        raise SpaceError(f"{path}: cannot read the space file ({error.strerror})") from None
    try:
        if path.suffix.lower() == ".toml":
            document = tomllib.loads(text.decode("utf-8"))
        elif path.suffix.lower() == ".json":
            document = json.loads(text)
        else:
            raise SpaceError(f"{path}: a space file must end in .toml or .json")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SpaceError(f"{path}: not valid {path.suffix[1:].upper()}: {error}") from None
    if not isinstance(document, dict):
        raise SpaceError(f"{path}: expected a table with [fixed] and [search]")
    unknown = sorted(set(document) - {"fixed", "search"})
    if unknown:
        raise SpaceError(f"{path}: unknown top-level key(s) {unknown}; expected fixed, search")
    for key in ("fixed", "search"):
        if not isinstance(document.get(key, {}), dict):
            raise SpaceError(f"{path}: [{key}] must be a table")
    return {"fixed": document.get("fixed", {}), "search": document.get("search", {})}


def parse_param_flag(flag: str) -> tuple[str, dict[str, Any]]:
    """`--param NAME=SCALE:LOW:HIGH` or `--param NAME=choice:A,B,C` → (name, spec)."""
    name, sep, spec = flag.partition("=")
    parts = spec.split(":")
    if not sep or not name.strip() or not spec:
        raise SpaceError(f"--param {flag!r}: expected NAME=SCALE:LOW:HIGH or NAME=choice:A,B,…")
    name, scale = name.strip(), parts[0].strip()
    if scale == "choice" and len(parts) == 2:
        return name, {"choice": [parse_scalar(item) for item in parts[1].split(",") if item]}
    if scale in NUMERIC_SCALES and len(parts) == 3:
        low, high = (parse_scalar(part) for part in parts[1:])
        return name, {"scale": scale, "low": low, "high": high}
    raise SpaceError(
        f"--param {flag!r}: expected NAME=SCALE:LOW:HIGH with SCALE in {NUMERIC_SCALES}, "
        f"or NAME=choice:A,B,…"
    )


def parse_scalar(text: str) -> Any:
    """A flag's text as int, float, bool or (else) the string itself."""
    text = text.strip()
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


def build_space(
    document: dict[str, Any],
    *,
    params: Sequence[str] = (),
    fixed_overrides: dict[str, Any] | None = None,
    where: str = "search space",
) -> SearchSpace:
    """Validate a space document plus `--param` flags and fixed overrides into a SearchSpace.

    Every problem raises SpaceError naming the dimension and the value, before any trial runs.
    """
    search = dict(document.get("search", {}))
    for flag in params:
        name, spec = parse_param_flag(flag)
        search[name] = spec
    fixed = {**document.get("fixed", {}), **(fixed_overrides or {})}
    try:
        base = TrainConfig.from_dict(fixed)
    except ValueError as error:
        raise SpaceError(f"{where}: [fixed]: {error}") from None
    dimensions = tuple(
        _build_dimension(name, spec, base, where) for name, spec in sorted(search.items())
    )
    if not dimensions:
        raise SpaceError(f"{where}: no dimension to search (add [search.NAME] or --param)")
    space = SearchSpace(dimensions=dimensions, fixed=fixed)
    _check_corners(space, where)
    return space


def _build_dimension(name: str, spec: Any, base: TrainConfig, where: str) -> Dimension:
    known = {field.name for field in dataclasses.fields(TrainConfig)} - set(NOT_SEARCHABLE)
    if name not in known and name not in SHAPE_NAMES:
        allowed = ", ".join(sorted(known | set(SHAPE_NAMES)))
        raise SpaceError(f"{where}: unknown hyperparameter {name!r}; searchable: {allowed}")
    if not isinstance(spec, dict):
        raise SpaceError(f"{where}: dimension {name!r} = {spec!r}: expected a table")
    if "choice" in spec:
        return _choice_dimension(name, spec, where)
    scale = spec.get("scale")
    if scale not in NUMERIC_SCALES:
        raise SpaceError(
            f"{where}: dimension {name!r}: scale {scale!r} is not one of {NUMERIC_SCALES} "
            f"(or give `choice = [...]`)"
        )
    unknown = sorted(set(spec) - {"scale", "low", "high"})
    if unknown:
        raise SpaceError(f"{where}: dimension {name!r}: unknown key(s) {unknown}")
    low, high = (_number(name, key, spec.get(key), where) for key in ("low", "high"))
    if low >= high:
        raise SpaceError(f"{where}: dimension {name!r}: low = {low!r} must be < high = {high!r}")
    if scale in ("log", "log_int") and low <= 0:
        raise SpaceError(
            f"{where}: dimension {name!r}: a log range must stay above 0, got low = {low!r}"
        )
    if scale == "log1m" and not (low > 0 and high < 1):
        bad = low if not 0 < low < 1 else high
        raise SpaceError(
            f"{where}: dimension {name!r}: a log1m range (1 − β on a log scale) needs β in (0, 1), "
            f"got {bad!r}"
        )
    if scale in ("int", "log_int") and not (float(low).is_integer() and float(high).is_integer()):
        raise SpaceError(f"{where}: dimension {name!r}: integer range needs integer ends")
    if scale == "log_int" and low < 1:
        raise SpaceError(f"{where}: dimension {name!r}: a log_int range needs low ≥ 1")
    integer_fields = {
        field.name for field in dataclasses.fields(TrainConfig) if field.type == "int"
    }
    if name in integer_fields and scale not in ("int", "log_int"):
        raise SpaceError(f"{where}: dimension {name!r} is a whole number: use scale int or log_int")
    return Dimension(name=name, scale=scale, low=low, high=high)


def _choice_dimension(name: str, spec: dict[str, Any], where: str) -> Dimension:
    unknown = sorted(set(spec) - {"choice"})
    if unknown:
        raise SpaceError(f"{where}: dimension {name!r}: unknown key(s) {unknown} beside choice")
    choices = spec["choice"]
    if not isinstance(choices, list) or not choices:
        raise SpaceError(f"{where}: dimension {name!r}: choice must be a non-empty list")
    if len({json.dumps(choice) for choice in choices}) != len(choices):
        raise SpaceError(f"{where}: dimension {name!r}: choice {choices!r} repeats a value")
    return Dimension(name=name, scale="choice", choices=tuple(choices))


def _number(name: str, key: str, value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SpaceError(f"{where}: dimension {name!r}: {key} = {value!r} is not a number")
    if not math.isfinite(value):
        raise SpaceError(f"{where}: dimension {name!r}: {key} = {value!r} is not finite")
    return float(value)


def _check_corners(space: SearchSpace, where: str) -> None:
    """Every end of every dimension must make a valid TrainConfig (e.g. β1 = 1 is not)."""
    for dimension in space.dimensions:
        if dimension.scale == "choice":
            values = list(dimension.choices)
        else:
            assert dimension.low is not None and dimension.high is not None
            values = [
                dimension.from_coordinate(dimension.to_coordinate(v))
                for v in (dimension.low, dimension.high)
            ]
        for value in values:
            try:
                space.config_for({dimension.name: value})
            except ValueError as error:
                raise SpaceError(
                    f"{where}: dimension {dimension.name!r} reaches {value!r}, "
                    f"which training rejects: {error}"
                ) from None
