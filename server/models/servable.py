"""A loaded model as the servicers use it: checked input in, outputs out, batched or not; and
`build_servable`, which makes one from a model file and the server's settings."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bnserve.server.drift.monitor import DriftSettings
from bnserve.server.modelfile.contract import Tolerance
from bnserve.server.models.model import Model, ModelLimits, SessionThreads
from bnserve.server.observability.metrics import ServerMetrics
from bnserve.server.plane.batching import DynamicBatcher, Predict
from bnserve.server.plane.errors import DeadlineExpired, ModelLoadError, first_line
from bnserve.server.plane.inputs import ModelInput
from bnserve.server.plane.statistics import ModelStats
from bnserve.server.settings import ServerSettings

# grpc reports "no deadline" as a huge time_remaining(); anything beyond a day means none.
NO_DEADLINE_S = 86_400.0


class Servable:
    """A Model plus its optional DynamicBatcher (single-example calls only go through it) and
    its statistics.

    The data plane records requests and unbatched runs in `stats`; the batcher's predict
    should go through `stats.timed` so batched runs count too (`build_servable` does).
    """

    def __init__(
        self,
        model: Model,
        batcher: DynamicBatcher | None = None,
        predict: Predict | None = None,
        stats: ModelStats | None = None,
    ) -> None:
        self.model = model
        self.batcher = batcher
        # model.predict, or a wrapper around it (metrics count examples per run).
        self._predict = predict if predict is not None else model.predict
        self.stats = stats if stats is not None else ModelStats()
        # Output name → index into model.output_specs, and "every output, no class_count".
        self.output_index = {spec.name: i for i, spec in enumerate(model.output_specs)}
        self.all_outputs = tuple((i, 0) for i in range(len(model.output_specs)))

    def run(
        self, x: ModelInput, timeout_s: float | None = None, *, batchable: bool = True
    ) -> list[np.ndarray]:
        """Score x (N, F) float32 or a mixed model's Columns, which passed
        `model.check_features`, within timeout_s seconds
        (the call's deadline). Single examples go through the batcher when there is one and
        `batchable` (a stream passes False: it scores its messages one after another, so each
        would wait out the batching delay alone). Answers in `model.output_names` order, N rows
        each."""
        if timeout_s is not None and timeout_s <= 0:
            raise DeadlineExpired("deadline passed before scoring")
        if batchable and self.batcher is not None and x.shape[0] == 1:
            return self.batcher.score(
                x, None if timeout_s is None or timeout_s > NO_DEADLINE_S else timeout_s
            )
        return self._predict(x)

    def close(self) -> None:
        """Finish queued work and stop the batcher, if any."""
        if self.batcher is not None:
            self.batcher.close()


def build_servable(
    path: str | Path,
    name: str,
    version: str,
    settings: ServerSettings,
    metrics: ServerMetrics | None = None,
) -> Servable:
    """Load, verify (structure, graph hash, parity gate) and warm up a model file, and serve it
    as name/version with the settings' batching and onnxruntime threads; raises ModelLoadError
    naming the file and the problem."""
    model = Model.load(
        path,
        name,
        version,
        SessionThreads.of(settings),
        ModelLimits.of(settings),
        DriftSettings.of(settings),
    )
    ceiling = Tolerance(settings.max_parity_tolerance_abs, settings.max_parity_tolerance_rel)
    try:
        model.warm_up(settings.max_batch_size)
        model.check_parity(ceiling)
    except ModelLoadError:
        raise
    except Exception as error:  # onnxruntime raises its own untyped errors from a run
        raise ModelLoadError(
            f"model {path}: a run during warm-up or the parity gate failed ({first_line(error)})"
        ) from None
    model.refuse_unseen = model.mixed and settings.unseen_levels == "error"
    predict: Predict = model.predict
    if metrics is not None:
        predict = metrics.instrument_predict(name, predict)
        if model.schema is not None:
            model.cell_counter = metrics.cell_counter(name)
    stats = ModelStats()  # ModelStatistics; the data plane times unbatched runs itself
    batcher = None
    if settings.batching:
        batcher = DynamicBatcher(
            stats.timed(predict),
            max_batch_size=settings.max_batch_size,
            max_delay_s=settings.max_batch_delay_ms / 1000,
            max_queue=settings.max_inflight,
            name=name,
        )
    return Servable(model, batcher, predict, stats)
