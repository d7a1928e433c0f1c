"""In-process profile of one served call, stage by stage, for the mixed model and its
numbers-only twin of bench/serve_mixed.py (issue 26 §5's speed goals).

No sockets and no gRPC threads: the v2 and native servicers are called directly on a data plane
holding both models (loaded as the server loads them: parity gate, warm-up, metrics' unseen /
missing counters, drift on with its default sample share). Per call and model, each stage is
timed over blocks of calls; a stage's figure is the median over rounds of its block's mean, the
two models interleaved round by round so that a busy machine slows both alike; times are the
thread's CPU time, so the share of the core other processes take is left out.

Stages (v2 ModelInfer of 1 example; PredictBatch of --batch rows):
  parse     protobuf bytes → request message
  tensors   request → TensorIn per input (v2) / nothing (native: part of decode)
  decode    → x: (1, 12) float32, or Columns (plane/columns.py)
  check     Model.check_features
  counters  Model.observe_cells (bnserve_unseen_levels_total, bnserve_missing_cells_total)
  drift     a sampled call's drift work (the layer session's run + observe) × the sample share
  feed      plane/inputs.feed
  run       the onnxruntime session run
  response  outputs → response message → bytes
  whole     the servicer's method from the request message, plus parse and serialization

Usage: python bench/profile_mixed.py [--rounds 15] [--calls 300] [--batch 64]
                                     [--hidden 256,256] [--cprofile infer|batch]
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import serve_mixed

STAGES = ("parse", "tensors", "decode", "check", "counters", "drift", "feed", "run", "response")


class _Context:
    """The one ServicerContext method the servicers call on a good request."""

    def time_remaining(self) -> None:
        return None


def _servables(mixed: Path, numeric: Path) -> tuple[Any, Any, Any]:
    from bnserve.server.grpc.servicers.native import PredictorServicer
    from bnserve.server.grpc.servicers.v2 import InferenceServicer
    from bnserve.server.models.repository import ModelRepository
    from bnserve.server.models.servable import build_servable
    from bnserve.server.observability.metrics import ServerMetrics
    from bnserve.server.plane.admission import InflightLimiter
    from bnserve.server.plane.dataplane import DataPlane
    from bnserve.server.settings import ServerSettings

    settings = ServerSettings(batching=False, drift=True)
    metrics = ServerMetrics()
    repository = ModelRepository()
    for name, path in (("mixed", mixed), ("numeric", numeric)):
        repository.swap(name, "1", build_servable(path, name, "1", settings, metrics))
    plane = DataPlane(repository, InflightLimiter(settings.max_inflight))
    return plane, InferenceServicer(plane), PredictorServicer(plane)


def _stages(plane: Any, v2: Any, native: Any, name: str, kind: str, body: bytes) -> dict[str, Any]:
    """Each stage as a zero-argument callable, on inputs the stage before it made."""
    from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as npb
    from bnserve.server.grpc.gen.inference import grpc_service_pb2 as pb
    from bnserve.server.grpc.servicers import native as native_module
    from bnserve.server.grpc.servicers import v2 as v2_module
    from bnserve.server.modelfile.contract import INPUT_NAME
    from bnserve.server.models.model import _observe
    from bnserve.server.plane.dataplane import TensorOut, input_array
    from bnserve.server.plane.inputs import feed

    servable = plane.find(name)
    model = servable.model
    context = _Context()
    message: Any = pb.ModelInferRequest if kind == "infer" else npb.PredictBatchRequest
    named = message.FromString(body)
    named.model_name = name  # the bench's messages name "digits"
    body = named.SerializeToString()
    if kind == "infer":
        request = message.FromString(body)
        tensors = v2_module._inputs(request, True)
        x = input_array(model, tensors)

        def respond(outputs: list[Any]) -> bytes:
            response = pb.ModelInferResponse(model_name=model.name, model_version=model.version)
            for spec, values in zip(model.output_specs, outputs, strict=True):
                v2_module._add_output(response, TensorOut(spec.name, spec.datatype, values), True)
            return response.SerializeToString()

        def whole() -> bytes:
            return v2.ModelInfer(message.FromString(body), context).SerializeToString()

        stages: dict[str, Callable[[], Any]] = {
            "tensors": lambda: v2_module._inputs(request, True),
            "decode": lambda: input_array(model, tensors),
        }
    else:
        request = message.FromString(body)
        x = native_module._batch(request, model)

        def respond(outputs: list[Any]) -> bytes:
            response = npb.PredictBatchResponse(model_name=model.name, model_version=model.version)
            if request.raw_features:
                native_module._fill_raw_batch(response, model, outputs)
            else:
                native_module._fill_batch(response, model, outputs)
            return response.SerializeToString()

        def whole() -> bytes:
            return native.PredictBatch(message.FromString(body), context).SerializeToString()

        stages = {"tensors": lambda: None, "decode": lambda: native_module._batch(request, model)}
    fed = feed(x, INPUT_NAME)
    run = model._session_run
    outputs = run(model._output_list, fed, model._run_options)
    drift = model.drift

    def drifted() -> None:
        if drift is None:
            return
        if model._layer_session is None:
            _observe(drift, x, None)
            return
        with_layers = model._layer_session.run(model._layer_output_list, fed)
        _observe(drift, x, with_layers[len(model._output_list) :])

    stages.update(
        parse=lambda: message.FromString(body),
        check=lambda: model.check_features(x),
        counters=lambda: model.observe_cells(x),
        drift=drifted,
        feed=lambda: feed(x, INPUT_NAME),
        run=lambda: run(model._output_list, fed, model._run_options),
        response=lambda: respond(outputs),
        whole=whole,
    )
    stages["_share"] = drift.settings.sample if drift is not None else 0.0
    return stages


def _block(function: Callable[[], Any], calls: int) -> float:
    """Mean CPU µs of this thread per call over a block of calls (CPU time, not wall time:
    the time other processes on a shared machine take the core is not counted)."""
    started = time.thread_time_ns()
    for _ in range(calls):
        function()
    return (time.thread_time_ns() - started) / calls / 1000


def profile(arguments: argparse.Namespace) -> None:
    logging.disable(logging.WARNING)  # the drift monitor's warnings about synthetic rows
    with tempfile.TemporaryDirectory(prefix="bnserve-profile-") as scratch:
        mixed, numeric, how = serve_mixed.build_models(Path(scratch), arguments.hidden)
        messages = {
            "mixed": serve_mixed.mixed_messages(mixed, arguments.batch),
            "numeric": serve_mixed.numeric_messages(numeric, arguments.batch),
        }
        plane, v2, native = _servables(mixed, numeric)
        models = ("mixed", "numeric")
        kinds = ("infer", "batch")
        stages = {
            (model, kind): _stages(plane, v2, native, model, kind, messages[model][kind])
            for model in models
            for kind in kinds
        }
        if arguments.cprofile:
            _cprofile(stages, arguments.cprofile, arguments.calls)
            return
        names = [*STAGES, "whole"]
        times: dict[tuple[str, str, str], list[float]] = {}
        for _ in range(arguments.rounds):
            for kind in kinds:
                for stage in names:
                    for model in models:  # interleaved: both models in each round, each stage
                        calls = arguments.calls if kind == "infer" else arguments.calls // 4
                        spent = _block(stages[(model, kind)][stage], calls)
                        times.setdefault((model, kind, stage), []).append(spent)
        load = os.getloadavg()
    print(f"models: {how}; hidden {arguments.hidden}; {arguments.rounds} rounds")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1, 5, 15 min)")
    for kind in kinds:
        title = (
            "v2 ModelInfer, 1 example" if kind == "infer" else f"PredictBatch, {arguments.batch}"
        )
        print(f"\n{title:<28}{'mixed µs':>10}{'numeric µs':>12}")
        sums = dict.fromkeys(models, 0.0)
        for stage in names:
            row = {}
            for model in models:
                value = statistics.median(times[(model, kind, stage)])
                if stage == "drift":
                    value *= stages[(model, kind)]["_share"]
                row[model] = value
                if stage != "whole":
                    sums[model] += value
            label = "drift (× sample share)" if stage == "drift" else stage
            if stage == "whole":
                print(f"{'  sum of stages':<28}{sums['mixed']:>10.1f}{sums['numeric']:>12.1f}")
            print(f"{'  ' + label:<28}{row['mixed']:>10.1f}{row['numeric']:>12.1f}")
        mixed_whole = statistics.median(times[("mixed", kind, "whole")])
        numeric_whole = statistics.median(times[("numeric", kind, "whole")])
        print(f"{'  numeric / mixed (whole)':<28}{numeric_whole / mixed_whole:>10.2f}")


def _cprofile(stages: dict[tuple[str, str], dict[str, Any]], kind: str, calls: int) -> None:
    for model in ("mixed", "numeric"):
        whole = stages[(model, kind)]["whole"]
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls * 10):
            whole()
        profiler.disable()
        print(f"\n=== {model} {kind}: {calls * 10} calls ===")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(18)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=300, help="calls per block (batch: ÷4)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--hidden", type=lambda s: tuple(int(v) for v in s.split(",")), default=(256, 256)
    )
    parser.add_argument("--cprofile", choices=("infer", "batch"), default=None)
    profile(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
