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
  tensors   request → TensorIn per input (v2; a mixed model: its raw contents read from the
            request's bytes, server/grpc/raw_form.py) / nothing (native: part of decode)
  decode    → x: (1, 12) float32, or Columns (plane/columns.py; a mixed model's v2 request:
            ColumnDecoder.from_layout)
  check     Model.check_features
  counters  Model.observe_cells (bnserve_unseen_levels_total, bnserve_missing_cells_total)
  drift     a sampled call's drift work (the layer session's run + observe) × the sample share
  feed      Model.session_feed (plane/inputs.feed; with a cut graph, the Packed form's two arrays,
            made by the decoder)
  run       the onnxruntime session run (the cut graph's, where the model is served cut)
  response  outputs → response message → bytes
  whole     the servicer's method from the request message, plus parse and serialization

With --baseline DIR (another checkout, e.g. `git worktree add DIR COMMIT` or `git archive COMMIT
| tar -x -C DIR`), each block runs in two worker processes, DIR's bnserve and this one's, one
after the other: before / after columns under the same load. --cprofile prints cProfile's
hottest functions of the whole call instead (this checkout only).

With --whole, a third model: the same mixed file served whole (the server's packed path off:
server/modelfile/front.py's cut not taken), so the cut graph and the full one are compared in
one process.

Usage: python bench/profile_mixed.py [--rounds 15] [--calls 300] [--batch 64]
                                     [--hidden 256,256] [--cprofile infer|batch]
                                     [--baseline DIR | --whole]
Not a speed benchmark of the server (bench/serve.py --mixed is): no transport, one thread.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

STAGES = ("parse", "tensors", "decode", "check", "counters", "drift", "feed", "run", "response")


class _Context:
    """The one ServicerContext method the servicers call on a good request."""

    def time_remaining(self) -> None:
        return None


def _servables(mixed: Path, numeric: Path, whole: bool) -> tuple[Any, Any, Any]:
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
    if whole:  # the same mixed file, its front not looked for: the full graph served
        from bnserve.server.models import model as model_module

        find_front = model_module.find_front
        model_module.find_front = lambda *_: None
        try:
            servable = build_servable(mixed, WHOLE, "1", settings, metrics)
        finally:
            model_module.find_front = find_front
        repository.swap(WHOLE, "1", servable)
    plane = DataPlane(repository, InflightLimiter(settings.max_inflight))
    return plane, InferenceServicer(plane), PredictorServicer(plane)


def _stages(plane: Any, v2: Any, native: Any, name: str, kind: str, body: bytes) -> dict[str, Any]:
    """Each stage as a zero-argument callable, on inputs the stage before it made."""
    from bnserve.server.grpc.decoding import _parse_or_abort
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
        read, decode = _raw_stages(model, request, body, tensors)

        def respond(outputs: list[Any]) -> bytes:
            response = pb.ModelInferResponse(model_name=model.name, model_version=model.version)
            for spec, values in zip(model.output_specs, outputs, strict=True):
                v2_module._add_output(response, TensorOut(spec.name, spec.datatype, values), True)
            return response.SerializeToString()

        def whole() -> bytes:  # parsed as the server's decoding interceptor parses it
            parsed = _parse_or_abort(message.FromString, body, context, "ModelInfer")
            return v2.ModelInfer(parsed, context).SerializeToString()

        stages: dict[str, Callable[[], Any]] = {"tensors": read, "decode": decode}
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
    # the served session's feed (with a cut graph: the packed form; a checkout without one
    # feeds the columns), and the drift layer session's
    session_feed = getattr(model, "session_feed", None) or (lambda inputs: feed(inputs, INPUT_NAME))
    layer_feed = getattr(model, "_layer_feed", None) or (lambda inputs: feed(inputs, INPUT_NAME))
    fed = session_feed(x)
    run = model._session_run
    outputs = run(model._output_list, fed, model._run_options)
    drift = model.drift

    def drifted() -> None:
        if drift is None:
            return
        if model._layer_session is None:
            _observe(drift, x, None)
            return
        with_layers = model._layer_session.run(model._layer_output_list, layer_feed(x))
        _observe(drift, x, with_layers[len(model._output_list) :])

    stages.update(
        parse=lambda: message.FromString(body),
        check=lambda: model.check_features(x),
        counters=lambda: model.observe_cells(x),
        drift=drifted,
        feed=lambda: session_feed(x),
        run=lambda: run(model._output_list, fed, model._run_options),
        response=lambda: respond(outputs),
        whole=whole,
    )
    stages["_share"] = drift.settings.sample if drift is not None else 0.0
    return stages


def _raw_stages(
    model: Any, request: Any, body: bytes, tensors: Any
) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """tensors and decode of a v2 request: for a mixed model served by a checkout with
    server/grpc/raw_form.py, the raw contents read from the request's bytes and the columns
    decoded by their Layout (the v2 servicer's path after the first call), else TensorIns
    from the parsed message and input_array."""
    from bnserve.server.grpc.servicers import v2 as v2_module
    from bnserve.server.plane.dataplane import input_array

    try:
        from bnserve.server.grpc.raw_form import RawForm
    except ImportError:
        RawForm = None  # a checkout before it
    decoder = model.decoder
    if RawForm is None or decoder is None:
        return (lambda: v2_module._inputs(request, True)), (lambda: input_array(model, tensors))
    layout = decoder.layout(tensors)
    form = RawForm.of(request.inputs, layout)
    contents = form.contents(body)
    return (lambda: form.contents(body)), (lambda: decoder.from_layout(layout, contents))


def _block(function: Callable[[], Any], calls: int) -> float:
    """Mean CPU µs of this thread per call over a block of calls (CPU time, not wall time:
    the time other processes on a shared machine take the core is not counted)."""
    started = time.thread_time_ns()
    for _ in range(calls):
        function()
    return (time.thread_time_ns() - started) / calls / 1000


MODELS = ["mixed", "numeric"]  # with --whole, also WHOLE (before numeric)
WHOLE = "mixed-whole"
KINDS = ("infer", "batch")


def _load_stages(scratch: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """The models served from scratch/ (written by `profile`), and each call's stages."""
    logging.disable(logging.WARNING)  # the drift monitor's warnings about synthetic rows
    whole = WHOLE in MODELS
    plane, v2, native = _servables(scratch / "mixed.onnx", scratch / "numeric.onnx", whole)
    return {
        (model, kind): _stages(
            plane,
            v2,
            native,
            model,
            kind,
            (scratch / f"{'mixed' if model == WHOLE else model}-{kind}.bin").read_bytes(),
        )
        for model in MODELS
        for kind in KINDS
    }


def _worker(scratch: Path) -> int:
    """--worker: time blocks as the driver asks on stdin ("model kind stage calls" a line),
    one µs figure a line on stdout; the bnserve imported is whichever PYTHONPATH gives."""
    stages = _load_stages(scratch)
    print("ready", flush=True)
    for line in sys.stdin:
        model, kind, stage, calls = line.split()
        if stage == "_share":
            print(stages[(model, kind)]["_share"], flush=True)
            continue
        print(_block(stages[(model, kind)][stage], int(calls)), flush=True)
    return 0


class _Worker:
    """A --worker process of this script over one checkout (None: the installed bnserve)."""

    def __init__(self, scratch: Path, checkout: Path | None) -> None:
        env = dict(os.environ)
        if checkout is not None:
            env["PYTHONPATH"] = str(checkout)  # its bnserve/ before the installed one
        self._process = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(scratch)]
            + (["--whole"] if WHOLE in MODELS else []),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=checkout or Path(__file__).resolve().parent.parent,
        )
        if self._read() != "ready":
            raise RuntimeError(f"profile worker for {checkout or 'this checkout'} did not start")

    def _read(self) -> str:
        assert self._process.stdout is not None
        return self._process.stdout.readline().strip()

    def ask(self, model: str, kind: str, stage: str, calls: int) -> float:
        assert self._process.stdin is not None
        self._process.stdin.write(f"{model} {kind} {stage} {calls}\n")
        self._process.stdin.flush()
        return float(self._read())

    def close(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        self._process.wait(timeout=30)


def profile(arguments: argparse.Namespace) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.support, if needed
    import serve_mixed

    with tempfile.TemporaryDirectory(prefix="bnserve-profile-") as scratch_name:
        scratch = Path(scratch_name)
        (scratch / "build").mkdir()
        mixed, numeric, how = serve_mixed.build_models(scratch / "build", arguments.hidden)
        shutil.copyfile(mixed, scratch / "mixed.onnx")
        shutil.copyfile(numeric, scratch / "numeric.onnx")
        messages = {
            "mixed": serve_mixed.mixed_messages(mixed, arguments.batch),
            "numeric": serve_mixed.numeric_messages(numeric, arguments.batch),
        }
        for model in messages:
            for kind in KINDS:
                (scratch / f"{model}-{kind}.bin").write_bytes(messages[model][kind])
        if arguments.cprofile:
            _cprofile(_load_stages(scratch), arguments.cprofile, arguments.calls)
            return
        checkouts: dict[str, Path | None] = {"": None}
        if arguments.baseline is not None:
            checkouts = {"before": arguments.baseline.resolve(), "after": None}
        workers = {label: _Worker(scratch, checkout) for label, checkout in checkouts.items()}
        try:
            times = _measure(workers, arguments)
            shares = {
                (label, model, kind): workers[label].ask(model, kind, "_share", 0)
                for label in workers
                for model in MODELS
                for kind in KINDS
            }
        finally:
            for worker in workers.values():
                worker.close()
        load = os.getloadavg()
    print(f"models: {how}; hidden {arguments.hidden}; {arguments.rounds} rounds")
    if arguments.baseline is not None:
        print(f"before: {arguments.baseline}; after: this checkout (interleaved block by block)")
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (1, 5, 15 min)")
    _print(times, shares, list(workers), arguments.batch)


def _measure(
    workers: dict[str, _Worker], arguments: argparse.Namespace
) -> dict[tuple[str, str, str, str], list[float]]:
    """Blocks of each stage, interleaved: every round, stage, model and checkout in turn."""
    times: dict[tuple[str, str, str, str], list[float]] = {}
    for _ in range(arguments.rounds):
        for kind in KINDS:
            calls = arguments.calls if kind == "infer" else arguments.calls // 4
            for stage in [*STAGES, "whole"]:
                for model in MODELS:
                    for label, worker in workers.items():
                        spent = worker.ask(model, kind, stage, calls)
                        times.setdefault((label, model, kind, stage), []).append(spent)
    return times


def _print(
    times: dict[tuple[str, str, str, str], list[float]],
    shares: dict[tuple[str, str, str], float],
    labels: list[str],
    batch: int,
) -> None:
    columns = [(model, label) for model in MODELS for label in labels]
    for kind in KINDS:
        title = "v2 ModelInfer, 1 example" if kind == "infer" else f"PredictBatch, {batch}"
        heading = "".join(f"{f'{model} {label}'.rstrip() + ' µs':>18}" for model, label in columns)
        print(f"\n{title:<26}{heading}")
        sums = dict.fromkeys(columns, 0.0)
        for stage in [*STAGES, "whole"]:
            row = {}
            for model, label in columns:
                value = statistics.median(times[(label, model, kind, stage)])
                if stage == "drift":
                    value *= shares[(label, model, kind)]
                row[(model, label)] = value
                if stage != "whole":
                    sums[(model, label)] += value
            if stage == "whole":
                print(f"{'  sum of stages':<26}" + "".join(f"{sums[c]:>18.1f}" for c in columns))
            name = "drift (× sample share)" if stage == "drift" else stage
            print(f"{'  ' + name:<26}" + "".join(f"{row[c]:>18.1f}" for c in columns))
        for label in labels:
            numeric = statistics.median(times[(label, "numeric", kind, "whole")])
            for model in MODELS[:-1]:
                mixed = statistics.median(times[(label, model, kind, "whole")])
                print(f"{f'  numeric / {model} {label}'.rstrip():<26}{numeric / mixed:>18.2f}")


def _cprofile(stages: dict[tuple[str, str], dict[str, Any]], kind: str, calls: int) -> None:
    for model in MODELS:
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
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout (e.g. `git worktree add DIR COMMIT`): its bnserve timed too, "
        "block by block against this one",
    )
    parser.add_argument(
        "--whole",
        action="store_true",
        help=f"also serve the mixed file whole (its front not cut), as {WHOLE!r}: the packed "
        "path against the full graph in one process (not with --baseline)",
    )
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args(argv)
    if arguments.whole and arguments.baseline is not None:
        parser.error("--whole compares within this checkout: leave out --baseline")
    if arguments.whole:
        MODELS.insert(1, WHOLE)
    if arguments.worker is not None:
        return _worker(arguments.worker)
    profile(arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
