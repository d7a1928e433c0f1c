"""The training loop: mini-batches, a checkpoint each epoch, resume, the finished run directory."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from bnserve.training import layers, model, optim, rundir, schedule, target_transform, threads
from bnserve.training.averaging import WeightAverage
from bnserve.training.config import RESUMABLE_FIELDS, TrainConfig, task_mismatch
from bnserve.training.data import batches
from bnserve.training.data.batches import Rows
from bnserve.training.data.encoding import Encoder
from bnserve.training.data.folds import fold_split
from bnserve.training.data.loading import Dataset, Split, fit_standardization, load_split
from bnserve.training.data.schema import NumberMoments, SchemaSettings, TableSchema, fit_schema
from bnserve.training.data.targets import check_class_counts
from bnserve.training.early_stopping import BestEpoch
from bnserve.training.errors import RunError, TrainingError
from bnserve.training.layers import BatchNormSettings
from bnserve.training.metrics import LOSS, check_metric, default_metric, evaluate, objective
from bnserve.training.run_meta import (
    HeldoutPart,
    ModelFacts,
    Outcome,
    RunMeta,
    early_stopping_facts,
    model_facts,
    split_facts,
)
from bnserve.training.state import TrainingState, load_state, save_checkpoint

DTYPE = np.float32  # training arithmetic; the saved run is float64
HELDOUT_MAX_ROWS = 10_000  # heldout.npz: the first rows of the test split, never the whole data
EpochCallback = Callable[[dict[str, Any]], "bool | None"]


@dataclass(frozen=True)
class TrainResult:
    """What train() returns (the run directory holds the rest)."""

    dev_error: float | None  # final dev objective of the metric (error rate, RMSE…); None: no dev
    history: list[dict[str, Any]]  # one record per epoch (see history.json)
    run_dir: Path
    kept_epoch: int  # the epoch whose parameters params.npz holds (the best, with early stopping)


@dataclass(frozen=True)
class Prepared:
    """The split data, standardized with training statistics when read (data/batches.py)."""

    dataset: Dataset
    split: Split
    input_mean: np.ndarray  # (F,) float64 (robust scaling: the median)
    input_std: np.ndarray  # (F,) float64 (robust scaling: the quantile scale)
    target_mean: np.ndarray | None  # (T,) regression only
    target_std: np.ndarray | None
    x_train: Rows  # (n_train, F) read on demand, standardized float32
    y_train: np.ndarray  # (n_train,) int64 or (n_train, T) standardized float32
    x_dev: Rows  # (n_dev, F) read on demand, standardized float32
    metric: str = "error"  # the dev metric selected on (training/metrics.py)
    class_weight: np.ndarray | None = None  # (C,) loss weight per class (--class-weight), float32
    schema: TableSchema | None = None  # the columns as the training rows shaped them
    encoder: Encoder | None = None  # None: x's columns are the inputs as they are
    target_transform: str = "none"  # regression: what target.mean/std standardize (t(y))
    input_clip: np.ndarray | None = None  # (F,) 0/1: robust scaling's clipped inputs (scaling.py)


def prepare(
    config: TrainConfig, *, cache_dir: str | None = None, schema: TableSchema | None = None
) -> Prepared:
    """Load the data, split it with the seed, fit the schema and the standardization on the
    training rows (schema: a resumed run's own, kept as it was).

    cache_dir: where CSV/Parquet sources are cached as float32 (training/data/cache.py).
    """
    dataset, split = load_split(config, cache_dir=cache_dir)
    if dataset.task == "classification":
        labeled = dataset.y if dataset.labeled is None else dataset.y[dataset.labeled]
        check_class_counts(labeled, dataset.class_names or [], dataset.source)
    if config.folds is not None:
        split = fold_split(
            split,
            dataset.y,
            dataset.task,
            config.folds,
            config.fold,
            config.data_split_seed,
            dataset.source,
            config.fold_repeat,
        )
    metric = config.metric or default_metric(dataset.task)
    check_metric(metric, dataset.task)
    moments = None  # a resumed run's schema: the standardization makes its own pass
    if schema is None:
        schema, moments = fit_table_schema(config, dataset, split.train)
    encoder = None if schema.plain else Encoder(schema, dataset.vocabularies)
    clip = None
    if config.input_scaling == "robust":
        mean, std, clip = batches.fit_robust_scaling(dataset.x, split.train, encoder)
    else:
        mean, std = batches.fit_standardization(dataset.x, split.train, encoder, moments)
    target_mean = target_std = None
    y_train = dataset.y[split.train]
    mismatch = task_mismatch(config, dataset.task)
    if mismatch is not None:
        raise ValueError(mismatch)
    class_weight = None
    if config.class_weight == "balanced":
        class_weight = balanced_class_weights(y_train, len(dataset.class_names or [])).astype(DTYPE)
    if dataset.task == "regression":
        y_train = target_transform.forward(y_train, config.target_transform)
        target_mean, target_std = fit_standardization(y_train)
        y_train = ((y_train - target_mean) / target_std).astype(DTYPE)
    return Prepared(
        dataset,
        split,
        mean,
        std,
        target_mean,
        target_std,
        Rows(dataset.x, split.train, mean, std, encoder, clip),
        y_train,
        Rows(dataset.x, split.dev, mean, std, encoder, clip),
        metric,
        class_weight,
        schema,
        encoder,
        config.target_transform if dataset.task == "regression" else "none",
        clip,
    )


def fit_table_schema(
    config: TrainConfig, dataset: Dataset, train_rows: np.ndarray
) -> tuple[TableSchema, NumberMoments | None]:
    """The schema of the dataset's feature columns from its training rows, and the moments of
    their values found in the same pass (data/schema.py)."""
    settings = SchemaSettings(
        categorical=config.categorical,
        numeric=config.numeric,
        ignore=config.ignore,
        na_values=config.na_values,
        min_level_count=config.min_level_count,
        max_levels=config.max_levels,
    )
    return fit_schema(
        dataset.x,
        train_rows,
        dataset.feature_names,
        dataset.vocabularies,
        dataset.mixed,
        settings,
        dataset.place,
    )


def balanced_class_weights(y_train: np.ndarray, n_classes: int) -> np.ndarray:
    """n / (C·n_c) per class c (scikit-learn's "balanced"): every class weighs the same in total.

    y_train: (n,) class indices; a class absent from the training rows gets weight 0."""
    counts = np.bincount(y_train, minlength=n_classes).astype(np.float64)
    weights = np.zeros(n_classes)
    present = counts > 0
    weights[present] = len(y_train) / (np.count_nonzero(present) * counts[present])
    return weights


def net_spec(config: TrainConfig) -> model.NetSpec:
    """The network shape and batch-norm settings a config describes."""
    bn = BatchNormSettings(
        momentum=config.bn_momentum,
        epsilon=config.bn_epsilon,
        unbiased=config.running_var == "unbiased",
    )
    return model.NetSpec(
        len(config.hidden), config.activation, config.batchnorm, bn, config.dropout
    )


def optimizer_settings(config: TrainConfig) -> optim.OptimizerSettings:
    """The optimizer family and hyperparameters a config describes."""
    return optim.OptimizerSettings(
        name=config.optimizer,
        beta1=config.beta1,
        beta2=config.beta2,
        epsilon=config.adam_epsilon,
        momentum=config.momentum,
        rho=config.rho,
        weight_decay=config.weight_decay,
    )


def batch_slices(n_rows: int, batch_size: int) -> list[slice]:
    """Consecutive mini-batches; a last batch of one row joins the previous batch.

    Batch norm cannot normalize a single example (its batch variance is 0), so with 129 rows and
    batch size 64 the batches are 64 and 65 rows.
    """
    slices = [
        slice(start, min(start + batch_size, n_rows)) for start in range(0, n_rows, batch_size)
    ]
    if len(slices) > 1 and slices[-1].stop - slices[-1].start == 1:
        last = slices.pop()
        slices[-1] = slice(slices[-1].start, last.stop)
    return slices


def resumable_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings recorded per epoch in history.json (those a resume may change)."""
    return {name: getattr(config, name) for name in RESUMABLE_FIELDS}


def error_of(outputs: np.ndarray, y: np.ndarray, task: str) -> float:
    """Error rate of scores/probabilities (N, C) against labels (N,), or RMSE of (N, T) values.

    NaN when any output is not finite (a diverged network has no meaningful error).
    """
    if not np.all(np.isfinite(outputs)):
        return float("nan")
    if task == "classification":
        return float(np.mean(outputs.argmax(axis=1) != y))
    return float(np.sqrt(np.mean((outputs - y) ** 2)))


def dev_error(
    params: dict[str, np.ndarray], prepared: Prepared, spec: model.NetSpec
) -> tuple[float | None, float | None]:
    """(objective, loss) on the dev rows, (None, None) without any.

    objective: the run's metric, lower is better (by default the error rate or the RMSE in
    target units); loss: the mean log loss or MSE, which breaks ties between equal objectives."""
    if len(prepared.x_dev) == 0:
        return None, None
    scores = batches.scores(params, prepared.x_dev, spec)
    task = prepared.dataset.task
    if task == "regression":
        scores = scores * prepared.target_std + prepared.target_mean
        scores = target_transform.inverse(scores, prepared.target_transform)
    else:
        scores = layers.softmax(scores)
    values = evaluate(scores, prepared.dataset.y[prepared.split.dev], task)
    return objective(prepared.metric, values), values[LOSS[task]]


def run_epoch(state: TrainingState, prepared: Prepared, config: TrainConfig, lr: float) -> float:
    """One pass over the shuffled training split; returns the mean cost per example."""
    spec, settings = net_spec(config), optimizer_settings(config)
    order = state.rng.permutation(len(prepared.x_train))
    total_cost = 0.0
    slices = batch_slices(len(order), config.batch_size)
    # read a window of batches at a time: the shuffled split is never copied whole
    for rows, (x_batch, y_batch) in zip(
        slices,
        batches.shuffled_batches(prepared.x_train, prepared.y_train, order, slices),
        strict=True,
    ):
        cost, grads, running = model.loss_and_grads(
            state.params,
            x_batch,
            y_batch,
            spec,
            task=prepared.dataset.task,
            l2=config.l2,
            rng=state.rng,
            class_weight=prepared.class_weight,
            label_smoothing=config.label_smoothing,
        )
        state.params.update(running)  # grads hold exactly the learnable parameters
        optim.update(state.params, grads, state.optimizer, settings, lr)
        total_cost += cost * (rows.stop - rows.start)
    return total_cost / len(order)


def resumed_state(run_dir: Path, epoch: int, config: TrainConfig) -> TrainingState:
    """The checkpoint's state, adjusted for settings changed on resume."""
    state, saved_config = load_state(run_dir, epoch)
    if saved_config.optimizer != config.optimizer:
        state.optimizer = optim.OptimizerState()  # another family: its slots mean nothing here
    if resumable_settings(saved_config) != resumable_settings(config):
        state.settings_since_epoch = epoch + 1
    return state


def fresh_state(config: TrainConfig, prepared: Prepared) -> TrainingState:
    """Initial weights (He or Xavier, seeded), empty optimizer state, epoch 0."""
    rng = np.random.default_rng(config.seed)
    class_names = prepared.dataset.class_names  # None: regression
    n_outputs = prepared.y_train.shape[1] if class_names is None else len(class_names)
    sizes = [prepared.x_train.shape[1], *config.hidden, n_outputs]
    params = model.init_params(
        sizes, activation=config.activation, batchnorm=config.batchnorm, rng=rng, dtype=DTYPE
    )
    return TrainingState(params, optim.OptimizerState(), rng, [], 0, 1)


def check_resume_config(run_dir: Path, config: TrainConfig) -> None:
    """A resumed run may change only the optimizer/schedule settings (RESUMABLE_FIELDS)."""
    stored = TrainConfig.from_dict(rundir.read_json(run_dir / "config.json"))
    changed = [
        name
        for name, value in config.to_dict().items()
        if name not in RESUMABLE_FIELDS and stored.to_dict()[name] != value
    ]
    if changed:
        raise ValueError(
            f"{run_dir}: cannot resume with different {', '.join(changed)} "
            f"(only {', '.join(RESUMABLE_FIELDS)} may change)"
        )


# --- the run -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainOptions:
    """How train() runs and reports, apart from what it trains (TrainConfig): never saved."""

    progress: bool = True  # a progress bar on stderr
    checkpoints: bool = True  # checkpoints/epoch-NNNN.{npz,json} after every epoch
    plot: bool = True  # learning_curve.png (off, with checkpoints: cheap tuning trials)
    on_epoch: EpochCallback | None = None  # given each history record; False stops after it
    blas_threads: int | None = None  # None: by the size of the work (training/threads.py)


@dataclass(frozen=True)
class Job:
    """One train() call: what it trains, on which rows, into which directory, and how."""

    config: TrainConfig
    prepared: Prepared
    run_dir: Path
    options: TrainOptions


@dataclass
class Kept:
    """Which weights the run ends with: the best epoch's (early stopping), the mean of the last
    epochs' (--average-epochs), or else the last epoch's (state.params)."""

    best: BestEpoch  # the best dev objective so far (tracked with or without early stopping)
    best_params: dict[str, np.ndarray]  # early stopping: the best epoch's parameters; else {}
    average: WeightAverage | None  # --average-epochs: the window's running mean


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    checkpoints: bool = True,
    plot: bool = True,
    from_epoch: int | None = None,
    on_epoch: EpochCallback | None = None,
    cache_dir: str | None = None,
    blas_threads: int | None = None,
) -> TrainResult:
    """Train into run directory `out_dir` (docs/contracts.md) and return the final dev error.

    resume: continue from the last checkpoint (or `from_epoch`'s, discarding later ones); only
    RESUMABLE_FIELDS of `config` may differ from the stored config. cache_dir: the float32 data
    cache (training/data/cache.py; "off": in memory). progress, checkpoints, plot, on_epoch and
    blas_threads: TrainOptions (the keywords docs/contracts.md promises the tuner).
    """
    run_dir = Path(out_dir)
    batches.release_freed_memory()
    options = TrainOptions(progress, checkpoints, plot, on_epoch, blas_threads)
    stored_schema = None
    if resume and (run_dir / "schema.json").is_file():  # the run's columns stay as they were
        stored_schema = TableSchema.from_dict(rundir.read_json(run_dir / "schema.json"))
    prepared = prepare(config, cache_dir=cache_dir, schema=stored_schema)
    job = Job(config, prepared, run_dir, options)
    if not resume:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise RunError(
                f"{run_dir}: already exists and is not empty (use --resume or a new --out)"
            )
        return _start(job, fresh_state(config, job.prepared), RunMeta.new())
    check_resume_config(run_dir, config)
    epochs = rundir.checkpoint_epochs(run_dir)
    if not epochs and from_epoch in (None, 0):  # killed before its first checkpoint
        return _restart(job)
    epoch = epochs[-1] if from_epoch is None else from_epoch
    if epoch not in epochs:
        raise RunError(f"{run_dir}: no checkpoint for epoch {epoch} (have {epochs})")
    if config.epochs < epoch:
        raise ValueError(
            f"{run_dir}: epochs = {config.epochs} is fewer than the {epoch} already trained "
            f"(to go back, use --from-epoch {config.epochs})"
        )
    meta = RunMeta.from_json(rundir.read_json(run_dir / "meta.json"))
    rundir.remove_stale_temporaries(run_dir)
    state = resumed_state(run_dir, epoch, config)
    rundir.discard_checkpoints_after(run_dir, epoch)
    return _start(job, state, meta)


def _start(job: Job, state: TrainingState, meta: RunMeta) -> TrainResult:
    """Write config.json (schema.json) and a "running" meta.json, then train and finish."""
    meta = meta.with_status("running")
    rundir.write_json(job.run_dir / "config.json", job.config.to_dict())
    schema = job.prepared.schema
    if schema is not None and not schema.plain:
        rundir.write_json(job.run_dir / "schema.json", schema.to_dict())
    rundir.write_json(job.run_dir / "meta.json", meta.to_json())
    return _train_and_finish(job, state, meta)


def _restart(job: Job) -> TrainResult:
    """--resume of a run with no checkpoint (killed in its first epoch): start it again."""
    meta_path = job.run_dir / "meta.json"  # written just after config.json: a kill can fall between
    meta = RunMeta.from_json(rundir.read_json(meta_path)) if meta_path.exists() else RunMeta.new()
    if meta.status == "finished":
        raise RunError(
            f"{job.run_dir}: finished with no checkpoint to resume from (--no-checkpoints)"
        )
    print(
        f"{job.run_dir}: no checkpoint yet (it stopped before its first epoch ended): "
        "restarting from epoch 0",
        file=sys.stderr,
    )
    rundir.remove_stale_temporaries(job.run_dir)
    return _train_and_finish(job, fresh_state(job.config, job.prepared), meta)


def _train_and_finish(job: Job, state: TrainingState, meta: RunMeta) -> TrainResult:
    """Train from state with the BLAS threads the work's size calls for, then write the run."""
    config = job.config
    n_outputs = state.params["output.b"].shape[0]
    sizes = [job.prepared.x_train.shape[1], *config.hidden, n_outputs]
    threads_wanted = threads.blas_threads_for(config.batch_size, sizes, job.options.blas_threads)
    with threads.blas_threads(threads_wanted):
        best = BestEpoch.replay(state.history, config.early_stopping, config.min_delta)
        best_params = _kept_params(state, best, job.run_dir, config)
        kept = Kept(best, best_params, _resumed_average(state, job.run_dir, config))
        _train_epochs(job, state, kept)
        return _finish(job, state, meta, kept)


def _train_epochs(job: Job, state: TrainingState, kept: Kept) -> None:
    """Train until config.epochs, early stopping or on_epoch says stop, updating `kept`."""
    config, options = job.config, job.options
    bar = tqdm(
        total=config.epochs,
        initial=state.epoch,
        desc="train",
        unit="epoch",
        file=sys.stderr,
        disable=not options.progress,
        dynamic_ncols=True,
    )
    with bar:
        while state.epoch < config.epochs and not kept.best.should_stop:
            record, examples_per_second = _one_epoch(job, state)
            if kept.average is not None:
                kept.average.add(state.epoch, state.params)
            new_best = kept.best.update(state.epoch, record["dev_error"], record["dev_loss"])
            if new_best and config.early_stopping:
                kept.best_params = {name: array.copy() for name, array in state.params.items()}
            if options.checkpoints:
                save_checkpoint(job.run_dir, state, config)
            bar.set_postfix(
                cost=f"{record['cost']:.4f}",
                dev_err=f"{record['dev_error'] or 0:.4f}",
                ex_s=f"{examples_per_second:,.0f}",
            )
            bar.update(1)
            if options.on_epoch is not None and options.on_epoch(record) is False:
                break


def _one_epoch(job: Job, state: TrainingState) -> tuple[dict[str, Any], float]:
    """Train epoch state.epoch + 1 and append its history record: (record, examples/s)."""
    config, prepared = job.config, job.prepared
    epoch = state.epoch + 1
    lr = schedule.learning_rate(
        config.lr_schedule,
        config.lr,
        epoch,
        config.epochs,
        warmup=config.warmup_epochs,
        lr_decay=config.lr_decay,
        since_epoch=state.settings_since_epoch,
    )
    started = time.perf_counter()
    # overflow is reported once, clearly, by the finiteness check below
    with np.errstate(over="ignore", invalid="ignore"):
        cost = run_epoch(state, prepared, config, lr)
    if not np.isfinite(cost):
        raise TrainingError(
            f"{job.run_dir}: training diverged in epoch {epoch} (cost {cost}) at lr {lr:g}; "
            "resume from the last checkpoint with a smaller --lr"
        )
    examples_per_second = len(prepared.x_train) / (time.perf_counter() - started)
    error, loss = dev_error(state.params, prepared, net_spec(config))
    record = {
        "epoch": epoch,
        "cost": cost,
        "dev_error": error,
        "dev_loss": loss,
        "lr": lr,
        "settings": resumable_settings(config),
    }
    state.history.append(record)
    state.epoch = epoch
    return record, examples_per_second


def _kept_params(
    state: TrainingState, best: BestEpoch, run_dir: Path, config: TrainConfig
) -> dict[str, np.ndarray]:
    """Early stopping: the best epoch's parameters so far (its checkpoint's, when resumed)."""
    if config.early_stopping is None:
        return {}  # the last epoch's are kept: state.params at the end
    if best.epoch in (0, state.epoch):
        return {name: array.copy() for name, array in state.params.items()}
    return load_state(run_dir, best.epoch)[0].params


def _resumed_average(
    state: TrainingState, run_dir: Path, config: TrainConfig
) -> WeightAverage | None:
    """--average-epochs: the window's running mean, with its epochs already trained (resumed)."""
    if config.average_epochs is None:
        return None
    average = WeightAverage.for_run(config.average_epochs, config.epochs)
    if state.epoch > 0:
        average.replay(state.epoch, lambda epoch: load_state(run_dir, epoch)[0].params)
    return average


# --- the finished run directory ----------------------------------------------------------------


def _finish(job: Job, state: TrainingState, meta: RunMeta, kept: Kept) -> TrainResult:
    """Write params.npz, heldout.npz, history.json, the plot, and meta.json last."""
    config, prepared = job.config, job.prepared
    kept_epoch = state.epoch if config.early_stopping is None else kept.best.epoch
    params = _final_params(job, state, kept)
    rundir.write_npz(job.run_dir / "params.npz", params)
    heldout_part = _write_heldout(job)
    history = [{**record, "kept": record["epoch"] == kept_epoch} for record in state.history]
    rundir.write_json(job.run_dir / "history.json", history)
    if job.options.plot and state.history:
        from bnserve.training.plot import write_learning_curve  # matplotlib only when plotting

        write_learning_curve(
            job.run_dir / "learning_curve.png", history, prepared.dataset.task, prepared.metric
        )
    facts = model_facts(config, prepared.dataset)
    if prepared.schema is not None and not prepared.schema.plain:
        facts = dataclasses.replace(
            facts, feature_names=prepared.schema.inputs, columns=prepared.dataset.feature_names
        )
    if prepared.encoder is not None:
        x, split = prepared.dataset.x, prepared.split
        unseen = {part: prepared.encoder.unseen_counts(np.asarray(x[getattr(split, part)]))
                  for part in ("dev", "test")}  # fmt: skip
        facts = dataclasses.replace(facts, unseen_levels=unseen)
    scores = _scores(job, params, facts)
    outcome = Outcome(
        params_sha256=rundir.sha256_of(job.run_dir / "params.npz"),
        epochs_trained=state.epoch,
        kept_epoch=kept_epoch,
        early_stopping=early_stopping_facts(config, kept.best),
        weight_averaging=None if kept.average is None else kept.average.describe(),
        split=split_facts(config, prepared.split, heldout_part),
        metric=prepared.metric,
        class_weight=None if prepared.class_weight is None else prepared.class_weight.tolist(),
        dev_error=scores.dev_error,
        dev_metrics=scores.dev_metrics,
        test_metrics=scores.test_metrics,
        test_score=scores.test_score,
    )
    finished = RunMeta(meta.run_id, meta.created_at, "finished", facts, outcome)
    rundir.write_json(job.run_dir / "meta.json", finished.to_json())
    return TrainResult(outcome.dev_error, history, job.run_dir, kept_epoch)


def _final_params(job: Job, state: TrainingState, kept: Kept) -> dict[str, np.ndarray]:
    """params.npz's arrays, float64: the kept weights, population statistics when asked for,
    and the input (and regression target) standardization."""
    config, prepared = job.config, job.prepared
    params = dict(state.params if config.early_stopping is None else kept.best_params)
    if kept.average is not None and kept.average.epochs:  # else stopped before the window
        params = kept.average.mean(DTYPE)
    if config.batchnorm and config.stats == "population":
        params.update(batches.population_statistics(params, prepared.x_train, net_spec(config)))
    params = {name: array.astype(np.float64) for name, array in params.items()}
    params["input.mean"], params["input.std"] = prepared.input_mean, prepared.input_std
    if prepared.input_clip is not None:  # robust scaling (training/scaling.py)
        params["input.clip"] = prepared.input_clip
    if prepared.target_mean is not None and prepared.target_std is not None:  # regression
        params["target.mean"], params["target.std"] = prepared.target_mean, prepared.target_std
    return params


def _write_heldout(job: Job) -> HeldoutPart:
    """heldout.npz: raw float64 features and targets of the first HELDOUT_MAX_ROWS rows of the
    part heldout_source picks; returns that part's name."""
    prepared = job.prepared
    dataset, split = prepared.dataset, prepared.split
    part = heldout_source(split)
    rows = getattr(split, part)[:HELDOUT_MAX_ROWS]
    heldout = Rows(dataset.x, rows, prepared.input_mean, prepared.input_std, prepared.encoder)
    x = heldout.inputs(rows)  # (n, D): the inputs params.npz's input.mean is of
    rundir.write_npz(job.run_dir / "heldout.npz", {"x": x, "y": dataset.y[rows]})
    return part


class Scores(NamedTuple):
    """The final params' scores, as Outcome records them (None where the split has no rows)."""

    dev_error: float | None
    dev_metrics: dict[str, float] | None
    test_metrics: dict[str, float] | None
    test_score: float | None


def _scores(job: Job, params: dict[str, np.ndarray], facts: ModelFacts) -> Scores:
    """Score the final params (float64) on the dev and test rows."""
    prepared = job.prepared
    dataset, split, task = prepared.dataset, prepared.split, prepared.dataset.task
    network = facts.to_json()  # inference.predict reads task, activation, batchnorm, epsilon
    dev_error = dev_metrics = test_metrics = test_error = None
    if len(split.dev):
        dev_outputs = batches.predictions(params, network, prepared.x_dev)
        dev_metrics = evaluate(dev_outputs, dataset.y[split.dev], task)
        dev_error = objective(prepared.metric, dev_metrics)
    if len(split.test):
        test_rows = Rows(
            dataset.x,
            split.test,
            prepared.input_mean,
            prepared.input_std,
            prepared.encoder,
            prepared.input_clip,
        )
        test_outputs = batches.predictions(params, network, test_rows)
        test_error = error_of(test_outputs, dataset.y[split.test], task)
        test_metrics = evaluate(test_outputs, dataset.y[split.test], task)
    if task == "classification" and test_error is not None:
        return Scores(dev_error, dev_metrics, test_metrics, 1.0 - test_error)
    return Scores(dev_error, dev_metrics, test_metrics, test_error)


def heldout_source(split: Split) -> HeldoutPart:
    """Which rows heldout.npz holds: the test rows; without any, the dev rows; else training's.

    The exporter checks its fold and picks reference rows from them: with --test-fraction 0 they
    are dev rows, which the run selected on but never trained on."""
    parts: tuple[HeldoutPart, ...] = ("test", "dev", "train")
    return next(part for part in parts if len(getattr(split, part)))
