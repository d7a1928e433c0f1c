"""Run in a subprocess by test_v2.py: call a bnserve server with tritonclient.grpc, print JSON.

tritonclient's generated code defines protobuf package `inference` too, so it cannot share an
interpreter with bnserve.server.grpc.gen.inference.
Usage: python triton_probe.py HOST:PORT MODEL ROWS_JSON
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def probe(url: str, model: str, rows: list[list[float]]) -> dict[str, object]:
    client = triton.InferenceServerClient(url=url)
    x = np.asarray(rows, dtype=np.float32)
    infer_input = triton.InferInput("x", list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x)
    result = client.infer(model, [infer_input])
    only_label = client.infer(model, [infer_input], outputs=[triton.InferRequestedOutput("label")])
    server_metadata = client.get_server_metadata(as_json=True)
    model_metadata = client.get_model_metadata(model, as_json=True)
    try:
        client.infer("no-such-model", [infer_input])
        unknown_model_error = None
    except InferenceServerException as error:
        unknown_model_error = {"status": error.status(), "message": error.message()}
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "server_metadata": server_metadata,
        "model_metadata": model_metadata,
        "probabilities": result.as_numpy("probabilities").tolist(),
        "label": result.as_numpy("label").tolist(),
        "only_label_outputs": [o["name"] for o in only_label.get_response(as_json=True)["outputs"]],
        "unknown_model_error": unknown_model_error,
    }


if __name__ == "__main__":
    print(json.dumps(probe(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))))
