"""TrainConfig: every setting of a training run, in one frozen dataclass saved with the run."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bnserve.flags import field_types
from bnserve.header_hints import parse_delimiter
from bnserve.training.metrics import METRICS
from bnserve.training.optim import UPDATES
from bnserve.training.schedule import SCHEDULES

ACTIVATIONS = ("relu", "tanh", "sigmoid")
OPTIMIZERS = tuple(UPDATES)  # optim.py's update functions, one per family
TASKS = ("classification", "regression")
STATS_MODES = ("ema", "population")
RUNNING_VAR_MODES = ("unbiased", "biased")
CLASS_WEIGHTS = ("none", "balanced")
# regression: "log" trains on log(1 + y) (training/target_transform.py)
TARGET_TRANSFORMS = ("none", "log")
# the numeric inputs: (x − mean)/std, or robust (median, quantile scale, smooth clip:
# training/scaling.py)
INPUT_SCALINGS = ("standard", "robust")
# Column defaults (training/data/schema.py; docs/data.md has the measurements behind them)
MIN_LEVEL_COUNT = 2
MAX_LEVELS = 1000
METRIC_NAMES = tuple(name for names in METRICS.values() for name in names)


def _setting(
    default: Any,
    help_text: str,
    *,
    group: str,
    choices: tuple[str, ...] | None = None,
    none: str | None = None,
    metavar: str | None = None,
    resumable: bool = False,
    off: str | None = None,
    parse: Callable[[str], Any] | None = None,
) -> Any:
    """A TrainConfig field and what `bnserve train` says of it (bnserve/flags.py reads help,
    choices and metavar; training/flags.py none; training/cli.py group).

    group: the --help section; choices: the allowed values (validated here too); none: what a
    None default means, in words; resumable: a resumed run may change it (babysitting); off: what
    the --no- flag of a True-by-default bool does (its help), the field's help being what on is;
    parse: turns the flag's text into the value (ValueError for a bad one)."""
    metadata: dict[str, Any] = {"help": help_text, "group": group, "choices": choices, "none": none}
    metadata |= {"metavar": metavar, "resumable": resumable, "off": off, "parse": parse}
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run; `from_dict` validates, `to_dict` is what config.json holds.

    Each field's help is its `bnserve train --FIELD` text; its default, the flag's default."""

    data: str = _setting(
        "digits",
        "'digits' (built in), FILE.csv[.gz] (with a header), FILE.parquet, FILE.npz, or a "
        "directory (its CSV files in name order, or a capture store with its true answers)",
        group="data",
    )
    target: str | None = _setting(None, "CSV target column", group="data", none="the last column")
    delimiter: str = _setting(
        ",",
        "a CSV's field separator, one character (\\t: a tab)",
        group="data",
        parse=parse_delimiter,
    )
    task: str | None = _setting(
        None, "what the target is", group="data", choices=TASKS, none="inferred from the target"
    )
    # () = no hidden layer: a linear model (softmax or affine output on the standardized
    # inputs, with l2 exactly logistic or ridge regression)
    hidden: tuple[int, ...] = _setting(
        (256, 256),
        'hidden widths, comma-separated, input side first ("" for none: a linear model)',
        group="network",
    )
    activation: str = _setting("relu", "hidden activation", group="network", choices=ACTIVATIONS)
    batchnorm: bool = _setting(
        True,
        "batch norm on every hidden layer",
        group="network",
        off="every hidden layer a plain affine with bias, no batch norm",
    )
    optimizer: str = _setting(
        "adam", "optimizer family", group="optimization", choices=OPTIMIZERS, resumable=True
    )
    lr: float = _setting(
        1e-3,
        "learning rate at the start of the current settings",
        group="optimization",
        resumable=True,
    )
    beta1: float = _setting(
        0.9, "Adam: decay of the first-moment average", group="optimization", resumable=True
    )
    beta2: float = _setting(
        0.999, "Adam: decay of the second-moment average", group="optimization", resumable=True
    )
    adam_epsilon: float = _setting(
        1e-8,
        "Adam/RMSprop: added to the root of the second moment",
        group="optimization",
        resumable=True,
    )
    momentum: float = _setting(
        0.9, "momentum optimizer: velocity decay", group="optimization", resumable=True
    )
    rho: float = _setting(
        0.99,
        "RMSprop: decay of the squared-gradient average",
        group="optimization",
        resumable=True,
    )
    lr_decay: float = _setting(
        1.0, "lr multiplier after every epoch", group="optimization", resumable=True
    )
    lr_schedule: str = _setting(
        "constant",
        "the rate per epoch: constant (times --lr-decay each epoch), cosine (annealed to near 0 "
        "at the last epoch), onecycle (warm-up from lr/25, then cosine; training/schedule.py)",
        group="optimization",
        choices=SCHEDULES,
        resumable=True,
    )
    warmup_epochs: int = _setting(
        0,
        "cosine, onecycle: epochs of linear warm-up to lr (onecycle with 0: 0.3·epochs)",
        group="optimization",
        metavar="N",
        resumable=True,
    )
    weight_decay: float = _setting(
        0.0,
        "decoupled weight decay (AdamW, SGDW): each step W ← W·(1 − lr·wd) on weight matrices, "
        "apart from the gradient (unlike --l2)",
        group="optimization",
        resumable=True,
    )
    label_smoothing: float = _setting(
        0.0,
        "classification: train against (1 − ε)·one-hot + ε/C instead of the one-hot label",
        group="optimization",
        resumable=True,
    )
    batch_size: int = _setting(
        64,
        "examples per mini-batch (a last batch of one joins the previous one)",
        group="optimization",
        resumable=True,
    )
    epochs: int = _setting(
        30,
        "total epochs of the run (resuming with a larger value trains on)",
        group="optimization",
        resumable=True,
    )
    bn_momentum: float = _setting(
        0.1,
        "PyTorch-style weight of the NEW batch: running = (1 − m)·running + m·batch",
        group="batch norm",
    )
    bn_epsilon: float = _setting(1e-5, "ε inside √(σ² + ε)", group="batch norm")
    running_var: str = _setting(
        "unbiased",
        "EMA of the batch variance times n/(n − 1), n the batch size (unbiased), or not (biased)",
        group="batch norm",
        choices=RUNNING_VAR_MODES,
    )
    stats: str = _setting(
        "ema",
        "frozen statistics: EMA of mini-batches, or exact over the training set at the end",
        group="batch norm",
        choices=STATS_MODES,
    )
    dropout: float = _setting(
        0.0,
        "probability of dropping a hidden unit during training (inverted dropout)",
        group="network",
        resumable=True,
    )
    l2: float = _setting(
        0.0,
        "L2 penalty 0.5·l2·ΣW² on weight matrices (not γ, β or biases)",
        group="optimization",
        resumable=True,
    )
    seed: int = _setting(
        0,
        "seeds the initial weights, shuffling and dropout (and the split, by default)",
        group="optimization",
    )
    split_seed: int | None = _setting(
        None, "seeds the train/dev/test split", group="optimization", none="the same as --seed"
    )
    dev_fraction: float = _setting(
        0.15, "share of rows held out for the dev error (0: none, no selection)", group="data"
    )
    test_fraction: float = _setting(
        0.15,
        "share of rows held out for the final test, heldout.npz (0: none, keep your own)",
        group="data",
    )
    early_stopping: int | None = _setting(
        None,
        "stop after PATIENCE epochs without a better dev objective; keep the best epoch",
        group="optimization",
        none="off: train every epoch, keep the last",
        metavar="PATIENCE",
        resumable=True,
    )
    min_delta: float = _setting(
        0.0,
        "early stopping: a new best must beat the old one by more than this",
        group="optimization",
        resumable=True,
    )
    average_epochs: int | None = _setting(
        None,
        "keep the mean weights of the last N epochs (Polyak/SWA averaging); needs --stats "
        "population, whose statistics are then those of the averaged weights",
        group="optimization",
        none="off: keep one epoch's weights",
        metavar="N",
    )
    folds: int | None = _setting(
        None,
        "K stratified folds of the train + dev rows (the tuner's --cv)",
        group="data",
        none="off: the plain train/dev split",
        metavar="K",
    )
    fold: int = _setting(
        0, "with --folds: fold I (from 0) is the dev part", group="data", metavar="I"
    )
    fold_repeat: int = _setting(
        0,
        "with --folds: the R-th drawing of the folds (the tuner's --cv-repeats)",
        group="data",
        metavar="R",
    )
    target_transform: str = _setting(
        "none",
        "regression: log trains on log(1 + y) (targets > −1; for skewed targets such as prices "
        "or counts); the model, exported graph included, still answers in the target's units",
        group="data",
        choices=TARGET_TRANSFORMS,
    )
    input_scaling: str = _setting(
        "standard",
        "numeric inputs: standard (x − mean)/std, or robust (x − median)/(q75 − q25), then "
        "smoothly clipped to ±3 by u/√(1 + (u/3)²) (RealMLP's; for heavy tails and outliers); "
        "the exported graph does the same to raw inputs",
        group="data",
        choices=INPUT_SCALINGS,
    )
    class_weight: str = _setting(
        "none",
        "balanced: weigh each class's loss by n / (C·n_c) over the training rows",
        group="data",
        choices=CLASS_WEIGHTS,
    )
    categorical: tuple[str, ...] = _setting(
        (),
        "columns taken as categorical whatever they hold (e.g. integer codes such as a zip)",
        group="columns",
        metavar="COLS",
    )
    numeric: tuple[str, ...] = _setting(
        (),
        "columns taken as numbers; a cell that is not a number is read as missing",
        group="columns",
        metavar="COLS",
    )
    ignore: tuple[str, ...] = _setting(
        (), "columns left out of the model (ids, free text)", group="columns", metavar="COLS"
    )
    na_values: tuple[str, ...] = _setting(
        (),
        "more cells read as missing, besides empty, NA, NaN, nan, null, NULL and None",
        group="columns",
        metavar="CELLS",
    )
    min_level_count: int = _setting(
        MIN_LEVEL_COUNT,
        "a categorical level seen fewer times in the training rows joins the 'other' level",
        group="columns",
        metavar="N",
    )
    max_levels: int = _setting(
        MAX_LEVELS,
        "a categorical column with more distinct levels in the training rows is refused",
        group="columns",
        metavar="N",
    )
    drop_missing_target: bool = _setting(
        False, "leave out rows whose target cell is missing (else refused)", group="columns"
    )
    metric: str | None = _setting(
        None,
        "dev/test metric the run selects on (early stopping, the tuner): error, "
        "balanced_accuracy, log_loss (classification), rmse, r2 (regression)",
        group="data",
        choices=METRIC_NAMES,
        none="error or rmse",
    )

    def __post_init__(self) -> None:
        _validate(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict (e.g. config.json); unknown or invalid fields raise ValueError."""
        known = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        converted = {name: _convert(name, value) for name, value in values.items()}
        return cls(**converted)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (tuples become lists)."""
        values = dataclasses.asdict(self)
        for name, (kind, _) in FIELD_TYPES.items():
            if kind is tuple:
                values[name] = list(getattr(self, name))
        return values

    @property
    def data_split_seed(self) -> int:
        """The seed of the train/dev/test split: split_seed if set, else seed."""
        return self.seed if self.split_seed is None else self.split_seed

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated like `from_dict`)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})


def task_mismatch(config: TrainConfig, task: str) -> str | None:
    """Why config's settings do not fit a task ("classification" or "regression"), or None:
    the one check `bnserve train` and `bnserve tune` make once the table's task is known."""
    if config.class_weight != "none" and task != "classification":
        return f"class_weight {config.class_weight!r} weighs classes: the task is regression"
    if config.label_smoothing and task != "classification":
        return "label_smoothing smooths class labels: the task is regression"
    if config.target_transform != "none" and task != "regression":
        return (
            f"target_transform {config.target_transform!r} transforms a regression target: "
            "the task is classification"
        )
    return None


def _tuple_items() -> dict[str, type]:
    """The item type (int, str) of each tuple field: hidden widths, column names."""
    items = {}
    for name, hint in typing.get_type_hints(TrainConfig).items():
        if typing.get_origin(hint) is tuple:
            items[name] = typing.get_args(hint)[0]
    return items


# each field's value type (int, float, str, bool, tuple) and whether it may be None
FIELD_TYPES = field_types(TrainConfig)
TUPLE_ITEMS = _tuple_items()
# Settings a resumed run may change (babysitting); anything else would make it another model.
RESUMABLE_FIELDS = tuple(
    setting.name for setting in dataclasses.fields(TrainConfig) if setting.metadata["resumable"]
)


def _convert(name: str, value: Any) -> Any:
    """Coerce JSON-ish values (lists, ints for floats) to the field's type; ValueError names it."""
    kind, nullable = FIELD_TYPES[name]
    try:
        if value is None and nullable:
            return None
        if kind is tuple:  # widths or column names; "64,32" or "island,sex" from a flag
            if isinstance(value, str):
                value = [part.strip() for part in value.split(",") if part.strip()]
            if TUPLE_ITEMS[name] is str:
                return tuple(str(item) for item in value)
            return tuple(_as_int(width) for width in value)
        if kind is int:
            return _as_int(value)
        if kind is float:
            if isinstance(value, bool):
                raise TypeError("a boolean is not a number")
            return float(value)
        if kind is bool and not isinstance(value, bool):
            raise TypeError(f"expected true or false, got {value!r}")
    except (TypeError, ValueError) as error:
        raise ValueError(f"config field {name!r}: {error}") from None
    return value


def _as_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"expected an integer, got {_shown(value)}")
    return int(value)


def _check(condition: bool, field: str, value: Any, allowed: str) -> None:
    if not condition:
        raise ValueError(f"config field {field!r} = {_shown(value)} is invalid: must be {allowed}")


def _shown(value: Any) -> str:
    """repr with numpy scalars as plain numbers: -1.0, not np.float64(-1.0)."""
    if isinstance(value, tuple):
        return repr(tuple(getattr(v, "item", lambda v=v: v)() for v in value))
    return repr(value.item() if hasattr(value, "item") else value)


def _validate(config: TrainConfig) -> None:
    _check(isinstance(config.data, str) and config.data != "", "data", config.data, "non-empty")
    _check(
        len(config.delimiter) == 1 and config.delimiter not in '\r\n"',
        "delimiter",
        config.delimiter,
        "one character other than a quote or a line break",
    )
    for setting in dataclasses.fields(config):
        choices, value = setting.metadata["choices"], getattr(config, setting.name)
        nullable = FIELD_TYPES[setting.name][1]
        if choices is not None and not (value in choices or (nullable and value is None)):
            allowed = f"in {choices}" + (" or None" if nullable else "")
            _check(False, setting.name, value, allowed)
    for index, width in enumerate(config.hidden, start=1):
        _check(
            width >= 1, "hidden", config.hidden, f"≥ 1 unit per layer (layer {index} is {width})"
        )
    _check(config.lr > 0, "lr", config.lr, "> 0")
    for name in ("beta1", "beta2", "momentum", "rho"):
        value = getattr(config, name)
        _check(0 <= value < 1, name, value, "in [0, 1)")
    _check(config.adam_epsilon > 0, "adam_epsilon", config.adam_epsilon, "> 0")
    _check(0 < config.lr_decay <= 1, "lr_decay", config.lr_decay, "in (0, 1]")
    min_batch = 2 if config.batchnorm else 1
    _check(
        config.batch_size >= min_batch,
        "batch_size",
        config.batch_size,
        f"≥ {min_batch} (batch norm needs two examples for a variance)",
    )
    _check(config.epochs >= 1, "epochs", config.epochs, "≥ 1")
    _check(0 < config.bn_momentum <= 1, "bn_momentum", config.bn_momentum, "in (0, 1]")
    _check(config.bn_epsilon > 0, "bn_epsilon", config.bn_epsilon, "> 0")
    _check(0 <= config.dropout < 1, "dropout", config.dropout, "in [0, 1)")
    _check(config.l2 >= 0, "l2", config.l2, "≥ 0")
    _check(
        config.weight_decay >= 0 and config.lr * config.weight_decay < 1,
        "weight_decay",
        config.weight_decay,
        f"≥ 0 with lr·weight_decay < 1 (lr = {config.lr:g})",
    )
    _check(0 <= config.label_smoothing < 1, "label_smoothing", config.label_smoothing, "in [0, 1)")
    _check(
        0 <= config.warmup_epochs <= config.epochs,
        "warmup_epochs",
        config.warmup_epochs,
        f"in [0, epochs = {config.epochs}]",
    )
    _check(0 <= config.seed < 2**32, "seed", config.seed, "in [0, 2**32)")
    _check(
        config.split_seed is None or 0 <= config.split_seed < 2**32,
        "split_seed",
        config.split_seed,
        "None or in [0, 2**32)",
    )
    for name in ("dev_fraction", "test_fraction"):
        value = getattr(config, name)
        _check(0 <= value < 0.5, name, value, "in [0, 0.5)")
    _check(
        config.early_stopping is None or config.early_stopping >= 1,
        "early_stopping",
        config.early_stopping,
        "None or a patience ≥ 1 epoch",
    )
    _check(config.min_delta >= 0, "min_delta", config.min_delta, "≥ 0")
    _check(
        config.average_epochs is None or 1 <= config.average_epochs <= config.epochs,
        "average_epochs",
        config.average_epochs,
        f"None or in [1, epochs = {config.epochs}]",
    )
    _check(
        config.average_epochs is None or config.early_stopping is None,
        "average_epochs",
        config.average_epochs,
        "None with early_stopping (it keeps the best epoch, not a mean of the last ones)",
    )
    _check(
        config.average_epochs is None or not config.batchnorm or config.stats == "population",
        "average_epochs",
        config.average_epochs,
        "None with stats 'ema' (EMA statistics belong to no averaged weights: use population)",
    )
    _check(config.folds is None or config.folds >= 2, "folds", config.folds, "None or ≥ 2")
    _check(
        0 <= config.fold < (config.folds or 1),
        "fold",
        config.fold,
        f"in [0, {config.folds or 1}) (a fold of `folds`)",
    )
    _check(config.min_level_count >= 1, "min_level_count", config.min_level_count, "≥ 1")
    _check(config.max_levels >= 2, "max_levels", config.max_levels, "≥ 2")
    named = [
        (column, kind)
        for kind in ("categorical", "numeric", "ignore")
        for column in getattr(config, kind)
    ]
    seen: dict[str, str] = {}
    for column, kind in named:
        _check(
            seen.setdefault(column, kind) == kind,
            kind,
            getattr(config, kind),
            f"without column {column!r}, which --{seen[column]} names too",
        )
    _check(config.fold_repeat >= 0, "fold_repeat", config.fold_repeat, "≥ 0")
    _check(
        config.early_stopping is None or config.dev_fraction > 0,
        "early_stopping",
        config.early_stopping,
        "None with dev_fraction = 0 (early stopping watches the dev error)",
    )
