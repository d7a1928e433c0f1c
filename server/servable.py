"""A loaded model as the servicers use it: checked input in, outputs out, batched or not."""

from __future__ import annotations

import numpy as np

from server.batching import DynamicBatcher, Predict
from server.errors import DeadlineExpired
from server.model import Model
from server.statistics import ModelStats

# grpc reports "no deadline" as a huge time_remaining(); anything beyond a day means none.
NO_DEADLINE_S = 86_400.0


class Servable:
    """A Model plus its optional DynamicBatcher (single-example calls only go through it) and
    its statistics.

    The data plane records requests and unbatched runs in `stats`; the batcher's predict
    should go through `stats.timed` so batched runs count too (app.build_servable does).
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

    def score(
        self, x: np.ndarray, timeout_s: float | None = None, *, batchable: bool = True
    ) -> list[np.ndarray]:
        """Check and score x (N, F) float32 within timeout_s seconds (the call's deadline).

        Single examples go through the batcher when there is one and `batchable` (a stream
        passes False: it scores its messages one after another, so each would wait out the
        batching delay alone).
        Answers in `model.output_names` order, N rows each.
        """
        self.model.check_features(x)
        return self.run(x, timeout_s, batchable=batchable)

    def run(
        self, x: np.ndarray, timeout_s: float | None = None, *, batchable: bool = True
    ) -> list[np.ndarray]:
        """`score` for an x that already passed `model.check_features`."""
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
