"""Run in a subprocess by test_rest.py: call bnserve's HTTP port with tritonclient.http (sync,
geventhttpclient) and tritonclient.http.aio (aiohttp), print JSON.
Usage: python triton_http_probe.py HOST:PORT MODEL ROWS_JSON

A subprocess: geventhttpclient brings gevent, which a test process should not share.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException


def _input(rows: np.ndarray, binary: bool) -> triton.InferInput:
    infer_input = triton.InferInput("x", list(rows.shape), "FP32")
    infer_input.set_data_from_numpy(rows, binary_data=binary)
    return infer_input


def sync_probe(url: str, model: str, x: np.ndarray) -> dict[str, object]:
    client = triton.InferenceServerClient(url=url)
    binary = client.infer(model, [_input(x, True)])
    as_json = client.infer(
        model,
        [_input(x, False)],
        outputs=[
            triton.InferRequestedOutput(name, binary_data=False)
            for name in ("probabilities", "label")
        ],
    )
    top = client.infer(
        model,
        [_input(x, True)],
        outputs=[triton.InferRequestedOutput("probabilities", class_count=2)],
    )
    try:
        client.infer("no-such-model", [_input(x, True)])
        unknown = None
    except InferenceServerException as error:
        unknown = {"status": error.status(), "message": error.message()}
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "unknown_ready": client.is_model_ready("no-such-model"),
        "server_metadata": client.get_server_metadata(),
        "model_metadata": client.get_model_metadata(model),
        "config": client.get_model_config(model),
        "statistics": client.get_inference_statistics(model),
        "index": client.get_model_repository_index(),
        "binary_probabilities": binary.as_numpy("probabilities").tobytes().hex(),
        "binary_label": binary.as_numpy("label").tolist(),
        "json_probabilities": as_json.as_numpy("probabilities").astype("<f4").tobytes().hex(),
        "top2": [[value.decode() for value in row] for row in top.as_numpy("probabilities")],
        "unknown": unknown,
    }


async def aio_probe(url: str, model: str, x: np.ndarray) -> dict[str, object]:
    async with triton_aio.InferenceServerClient(url=url) as client:
        result = await client.infer(model, [_input(x, True)])
        return {
            "ready": await client.is_server_ready(),
            "model_ready": await client.is_model_ready(model),
            "probabilities": result.as_numpy("probabilities").tobytes().hex(),
            "metadata": await client.get_model_metadata(model),
        }


if __name__ == "__main__":
    url, model_name, rows = (
        sys.argv[1],
        sys.argv[2],
        np.asarray(json.loads(sys.argv[3]), np.float32),
    )
    answer = sync_probe(url, model_name, rows)
    answer["aio"] = asyncio.run(aio_probe(url, model_name, rows))
    print(json.dumps(answer))
