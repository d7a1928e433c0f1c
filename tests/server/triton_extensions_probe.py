"""Run in a subprocess by test_v2.py: Triton's gRPC extensions through tritonclient.grpc (sync
and aio), printed as JSON. Usage: python triton_extensions_probe.py HOST:PORT MODEL ROWS_JSON

A subprocess because tritonclient's generated code defines protobuf package `inference` too.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sys

import numpy as np
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException


def _input(rows: np.ndarray) -> triton.InferInput:
    infer_input = triton.InferInput("x", list(rows.shape), "FP32")
    infer_input.set_data_from_numpy(rows)
    return infer_input


def _error(call) -> dict[str, str] | None:
    try:
        call()
    except InferenceServerException as error:
        return {"status": error.status(), "message": error.message()}
    return None


def sync_probe(url: str, model: str, x: np.ndarray) -> dict[str, object]:
    client = triton.InferenceServerClient(url=url)
    answers: queue.Queue = queue.Queue()
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    for row in range(x.shape[0]):
        client.async_stream_infer(model, [_input(x[row : row + 1])], request_id=str(row))
    client.async_stream_infer("no-such-model", [_input(x[:1])], request_id="bad")
    client.async_stream_infer(model, [_input(x[:2])], request_id="after-bad")
    stream = []
    for _ in range(x.shape[0] + 2):
        result, error = answers.get(timeout=30)
        if error is not None:
            stream.append({"error": error.message()})
        else:
            response = result.get_response()
            stream.append(
                {"id": response.id, "probabilities": result.as_numpy("probabilities").tolist()}
            )
    client.stop_stream()
    top = client.infer(
        model, [_input(x)], outputs=[triton.InferRequestedOutput("probabilities", class_count=2)]
    )
    return {
        "config": client.get_model_config(model, as_json=True),
        "statistics": client.get_inference_statistics(model, as_json=True),
        "all_statistics": client.get_inference_statistics(as_json=True),
        "index": client.get_model_repository_index(as_json=True),
        "unknown_ready": client.is_model_ready("no-such-model"),
        "server_metadata": client.get_server_metadata(as_json=True),
        "stream": stream,
        "top2": [[value.decode() for value in row] for row in top.as_numpy("probabilities")],
        "top2_shape": list(top.as_numpy("probabilities").shape),
        "class_count_on_label": _error(
            lambda: client.infer(
                model, [_input(x)], outputs=[triton.InferRequestedOutput("label", class_count=2)]
            )
        ),
        "load": _error(lambda: client.load_model(model)),
        "shared_memory": _error(client.get_system_shared_memory_status),
    }


async def aio_probe(url: str, model: str, x: np.ndarray) -> dict[str, object]:
    async with triton_aio.InferenceServerClient(url=url) as client:

        async def requests():
            for row in range(x.shape[0]):
                yield {
                    "model_name": model,
                    "inputs": [_input(x[row : row + 1])],
                    "request_id": str(row),
                }

        stream = []
        async for result, error in client.stream_infer(requests()):
            if error is not None:
                stream.append({"error": error.message()})
            else:
                stream.append(
                    {
                        "id": result.get_response().id,
                        "probabilities": result.as_numpy("probabilities").tolist(),
                    }
                )
            if len(stream) == x.shape[0]:
                break
        return {
            "stream": stream,
            "unknown_ready": await client.is_model_ready("no-such-model"),
            "config": await client.get_model_config(model, as_json=True),
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
