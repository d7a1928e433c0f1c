"""Call a running bnserve through the Open Inference Protocol (KServe v2) with tritonclient.

Used by deploy/check-image.sh against the container: server live and ready, model ready and its
metadata, then ModelInfer on held-out rows compared with the training inference path; over gRPC
(tritonclient.grpc) and, with --http-target, over HTTP/REST too (tritonclient.http, binary
tensors), where the answer must equal gRPC's bit for bit.

  python deploy/check_v2.py --target 127.0.0.1:50051 --run RUN_DIR [--http-target HOST:8000]
      [--model model] [--rows 32]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from bnserve.training.inference import predict
from bnserve.training.rundir import load_run

# Served float32 probabilities against the float64 numpy path (the exporter's own tolerance).
MAX_ABS_DIFF = 1e-5


def check(
    target: str, run_dir: Path, model_name: str, rows: int, http_target: str = ""
) -> list[str]:
    """The problems found (empty when the v2 API answers like the training inference path)."""
    run = load_run(run_dir)
    x = run.heldout_x[:rows].astype(np.float32)
    reference = predict(run.params, run.meta, x.astype(np.float64))
    answers: dict[str, np.ndarray] = {}
    problems = []
    transports = [("gRPC", triton, target)]
    if http_target:
        transports.append(("HTTP", triton_http, http_target))
    for transport, module, url in transports:
        client = module.InferenceServerClient(url=url)
        try:
            found = _check_calls(module, client, model_name, x, reference, transport, answers)
        except InferenceServerException as error:
            found = [f"a v2 call failed: {error}"]
        problems += [f"{transport}: {problem}" for problem in found]
    if len(answers) == 2 and answers["gRPC"].tobytes() != answers["HTTP"].tobytes():
        problems.append("HTTP and gRPC answered different probabilities for the same rows")
    return problems


def _check_calls(
    module: Any,
    client: Any,
    model_name: str,
    x: np.ndarray,
    reference: np.ndarray,
    transport: str,
    answers: dict[str, np.ndarray],
) -> list[str]:
    problems = []
    if not (client.is_server_live() and client.is_server_ready()):
        problems.append("server not live and ready")
    if not client.is_model_ready(model_name):
        return [*problems, f"model {model_name!r} not ready"]
    metadata = client.get_model_metadata(model_name)
    if isinstance(metadata, dict):  # tritonclient.http answers JSON
        input_names = [tensor["name"] for tensor in metadata["inputs"]]
    else:
        input_names = [tensor.name for tensor in metadata.inputs]
    if input_names != ["x"]:
        problems.append(f"model inputs {input_names}, expected ['x']")

    request_input = module.InferInput("x", list(x.shape), "FP32")
    request_input.set_data_from_numpy(x)
    outputs = [module.InferRequestedOutput(name) for name in ("probabilities", "label")]
    result = client.infer(model_name, [request_input], outputs=outputs)
    probabilities = result.as_numpy("probabilities")
    labels = result.as_numpy("label")
    answers[transport] = probabilities
    max_diff = float(np.max(np.abs(probabilities.astype(np.float64) - reference)))
    print(f"v2 ModelInfer ({transport}) on {len(x)} rows: max |served - numpy path| {max_diff:.2e}")
    if not max_diff <= MAX_ABS_DIFF:
        problems.append(f"ModelInfer probabilities differ by {max_diff:.2e} > {MAX_ABS_DIFF}")
    if not np.array_equal(labels, probabilities.argmax(axis=1)):
        problems.append("ModelInfer labels are not the arg max of its probabilities")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True, help="HOST:PORT of gRPC")
    parser.add_argument("--http-target", default="", help="HOST:PORT of HTTP/REST (optional)")
    parser.add_argument("--run", type=Path, required=True, help="the run the model came from")
    parser.add_argument("--model", default="model", help="v2 model name (the file's stem)")
    parser.add_argument("--rows", type=int, default=32, help="held-out rows in one ModelInfer")
    args = parser.parse_args(argv)
    problems = check(args.target, args.run, args.model, args.rows, args.http_target)
    for problem in problems:
        print(f"check_v2: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
