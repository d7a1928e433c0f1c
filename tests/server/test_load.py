"""Load against a real server process: single-example calls at concurrency 64 with zero errors,
every answer right, and resident memory flat as calls go on (slow: 100,000 then 1,000,000)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from tests.support.load_client import run_load
from tests.support.model_builder import NUM_FEATURES, ModelFiles, numpy_forward
from tests.support.server_process import ServerProcess

CONCURRENCY = 64
EXAMPLES = np.random.default_rng(9).normal(0, 1.5, (256, NUM_FEATURES)).astype(np.float32)


def _load_then_memory(test_models: ModelFiles, first_calls: int, total_calls: int, batching: bool):
    expected = numpy_forward(test_models.classification_weights, EXAMPLES, "classification")
    server = ServerProcess(
        ["--model", str(test_models.classification),
         # Admit every call of the load: 64 in flight (+ headroom), threads beyond that.
         "--workers", "80", "--max-inflight", "72",
         "--batching" if batching else "--no-batching"]
    )  # fmt: skip
    try:
        server.wait_ready()
        with grpc.insecure_channel(server.target) as channel:
            first = run_load(channel, first_calls, CONCURRENCY, EXAMPLES, expected["probabilities"])
            rss_after_first = server.rss_bytes()
            rest = run_load(
                channel, total_calls - first_calls, CONCURRENCY, EXAMPLES,
                expected["probabilities"],
            )  # fmt: skip
            rss_after_all = server.rss_bytes()
    finally:
        assert server.stop() == 0
    for result, calls in ((first, first_calls), (rest, total_calls - first_calls)):
        assert dict(result.errors) == {}
        assert (result.answered, result.wrong) == (calls, 0)
    growth = rss_after_all / rss_after_first - 1
    print(
        f"RSS after {first_calls:,} calls {rss_after_first / 2**20:.1f} MiB, after "
        f"{total_calls:,} {rss_after_all / 2**20:.1f} MiB ({growth:+.2%})"
    )
    return growth


@pytest.mark.parametrize(
    "batching", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["unbatched", "batched"]
)
def test_load_short(test_models: ModelFiles, batching: bool) -> None:
    growth = _load_then_memory(test_models, 5_000, 20_000, batching)
    assert growth < 0.05


@pytest.mark.slow
@pytest.mark.timeout(3600)  # ~1,000 calls/s from one Python client on 2 shared cores
def test_load_100k_then_memory_flat_to_1m(test_models: ModelFiles) -> None:
    growth = _load_then_memory(test_models, 100_000, 1_000_000, batching=False)
    assert growth < 0.05
