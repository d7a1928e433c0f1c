"""TrainConfig: every setting of a training run, in one frozen dataclass saved with the run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from training.metrics import METRICS

ACTIVATIONS = ("relu", "tanh", "sigmoid")
OPTIMIZERS = ("sgd", "momentum", "rmsprop", "adam")
TASKS = ("classification", "regression")
STATS_MODES = ("ema", "population")
RUNNING_VAR_MODES = ("unbiased", "biased")
CLASS_WEIGHTS = ("none", "balanced")
METRIC_NAMES = tuple(name for names in METRICS.values() for name in names)

# Settings a resumed run may change (babysitting); anything else would make it another model.
RESUMABLE_FIELDS = (
    "optimizer",
    "lr",
    "beta1",
    "beta2",
    "adam_epsilon",
    "momentum",
    "rho",
    "lr_decay",
    "batch_size",
    "epochs",
    "dropout",
    "l2",
    "early_stopping",
    "min_delta",
)


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run; `from_dict` validates, `to_dict` is what config.json holds."""

    data: str = "digits"  # "digits" (built in) or a path to a .csv (with header) or .npz file
    target: str | None = None  # CSV target column name; None = the last column
    task: str | None = None  # "classification" | "regression"; None = inferred from the target
    # width of each hidden layer, input side first; () = none: a linear model (softmax or affine
    # output on the standardized inputs, with l2 exactly logistic or ridge regression)
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "relu"  # hidden activation: relu | tanh | sigmoid
    batchnorm: bool = True  # batch norm on every hidden layer (False: plain affine with bias)
    optimizer: str = "adam"  # sgd | momentum | rmsprop | adam
    lr: float = 1e-3  # learning rate at the start of the current settings
    beta1: float = 0.9  # Adam: decay of the first-moment average
    beta2: float = 0.999  # Adam: decay of the second-moment average
    adam_epsilon: float = 1e-8  # Adam and RMSprop: added to the root of the second moment
    momentum: float = 0.9  # momentum optimizer: velocity decay
    rho: float = 0.99  # RMSprop: decay of the squared-gradient average
    lr_decay: float = 1.0  # the learning rate is multiplied by this after every epoch
    batch_size: int = 64  # examples per mini-batch (a last batch of one joins the previous one)
    epochs: int = 30  # total epochs of the run (resuming with a larger value trains on)
    bn_momentum: float = 0.1  # PyTorch convention: running = (1 − m)·running + m·batch
    bn_epsilon: float = 1e-5  # added to the variance inside the square root
    running_var: str = "unbiased"  # EMA of the batch variance times m/(m−1) ("unbiased") or not
    stats: str = "ema"  # frozen statistics: "ema" of mini-batches or exact "population" at the end
    dropout: float = 0.0  # probability of dropping a hidden unit during training (inverted)
    l2: float = 0.0  # L2 penalty 0.5·l2·ΣW² on weight matrices (not γ, β or biases)
    seed: int = 0  # seeds the initial weights, shuffling and dropout (and the split, by default)
    split_seed: int | None = None  # seeds the train/dev/test split; None: the same as seed
    dev_fraction: float = 0.15  # share of rows held out for the dev error; 0: none (no selection)
    test_fraction: float = 0.15  # share of rows held out for the final test (heldout.npz); 0: none
    # early stopping: stop after this many epochs without a new best dev objective and keep the
    # best epoch's parameters; None: train every epoch and keep the last
    early_stopping: int | None = None
    min_delta: float = 0.0  # early stopping: a new best must beat the old one by more than this
    # cross-validation (the tuner's --cv): train + dev rows in this many stratified folds, fold
    # `fold` (from 0) is the dev part; None: the plain train/dev split
    folds: int | None = None
    fold: int = 0
    # "balanced": each class's loss weighted n / (C·n_c) over the training rows; "none": 1
    class_weight: str = "none"
    # dev/test metric the run selects on (early stopping, the tuner): error | balanced_accuracy |
    # log_loss (classification), rmse | r2 (regression); None: error or rmse
    metric: str | None = None

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
        values["hidden"] = list(self.hidden)
        return values

    @property
    def data_split_seed(self) -> int:
        """The seed of the train/dev/test split: split_seed if set, else seed."""
        return self.seed if self.split_seed is None else self.split_seed

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated like `from_dict`)."""
        return TrainConfig.from_dict({**self.to_dict(), **changes})


_INT_FIELDS = ("batch_size", "epochs", "seed", "fold")
_FLOAT_FIELDS = (
    "lr",
    "beta1",
    "beta2",
    "adam_epsilon",
    "momentum",
    "rho",
    "lr_decay",
    "bn_momentum",
    "bn_epsilon",
    "dropout",
    "l2",
    "dev_fraction",
    "test_fraction",
    "min_delta",
)


def _convert(name: str, value: Any) -> Any:
    """Coerce JSON-ish values (lists, ints for floats) to the field's type; ValueError names it."""
    try:
        if name == "hidden":
            if isinstance(value, str):
                value = [part for part in value.split(",") if part.strip()]
            return tuple(_as_int(width) for width in value)
        if name in _INT_FIELDS:
            return _as_int(value)
        if name in ("split_seed", "early_stopping", "folds"):
            return None if value is None else _as_int(value)
        if name in _FLOAT_FIELDS:
            if isinstance(value, bool):
                raise TypeError("a boolean is not a number")
            return float(value)
        if name == "batchnorm" and not isinstance(value, bool):
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
    _check(config.task in (None, *TASKS), "task", config.task, f"one of {TASKS} or None")
    for index, width in enumerate(config.hidden, start=1):
        _check(
            width >= 1, "hidden", config.hidden, f"≥ 1 unit per layer (layer {index} is {width})"
        )
    _check(config.activation in ACTIVATIONS, "activation", config.activation, f"in {ACTIVATIONS}")
    _check(config.optimizer in OPTIMIZERS, "optimizer", config.optimizer, f"in {OPTIMIZERS}")
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
    _check(
        config.running_var in RUNNING_VAR_MODES,
        "running_var",
        config.running_var,
        f"in {RUNNING_VAR_MODES}",
    )
    _check(config.stats in STATS_MODES, "stats", config.stats, f"in {STATS_MODES}")
    _check(0 <= config.dropout < 1, "dropout", config.dropout, "in [0, 1)")
    _check(config.l2 >= 0, "l2", config.l2, "≥ 0")
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
    _check(config.folds is None or config.folds >= 2, "folds", config.folds, "None or ≥ 2")
    _check(
        config.class_weight in CLASS_WEIGHTS,
        "class_weight",
        config.class_weight,
        f"in {CLASS_WEIGHTS}",
    )
    _check(config.metric in (None, *METRIC_NAMES), "metric", config.metric, f"in {METRIC_NAMES}")
    _check(
        0 <= config.fold < (config.folds or 1),
        "fold",
        config.fold,
        f"in [0, {config.folds or 1}) (a fold of `folds`)",
    )
    _check(
        config.early_stopping is None or config.dev_fraction > 0,
        "early_stopping",
        config.early_stopping,
        "None with dev_fraction = 0 (early stopping watches the dev error)",
    )
