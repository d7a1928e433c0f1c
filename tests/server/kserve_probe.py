"""Run by test_kserve.py in a venv of its own (kserve is heavy and pins its own grpcio): call a
bnserve server with KServe's Python SDK, InferenceRESTClient and InferenceGRPCClient (v2).
Usage: python kserve_probe.py HTTP_HOST:PORT GRPC_HOST:PORT MODEL ROWS_JSON; prints JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig


def _request(model: str, x: np.ndarray, binary: bool) -> InferRequest:
    infer_input = InferInput("x", list(x.shape), "FP32")
    infer_input.set_data_from_numpy(x, binary_data=binary)
    return InferRequest(model_name=model, infer_inputs=[infer_input])


def _outputs(response) -> dict[str, str]:
    return {o.name: o.as_numpy().astype(o.as_numpy().dtype.newbyteorder("<")).tobytes().hex()
            for o in response.outputs}  # fmt: skip


async def main(http: str, grpc_target: str, model: str, x: np.ndarray) -> dict[str, object]:
    base = f"http://{http}"
    rest = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    answer: dict[str, object] = {
        "rest_live": await rest.is_server_live(base),
        "rest_ready": await rest.is_server_ready(base),
        "rest_model_ready": await rest.is_model_ready(base, model),
        "rest_json": _outputs(await rest.infer(base, _request(model, x, False), model_name=model)),
        "rest_binary": _outputs(await rest.infer(base, _request(model, x, True), model_name=model)),
    }
    await rest.close()
    client = InferenceGRPCClient(grpc_target, retries=0)
    answer["grpc_live"] = await client.is_server_live()
    answer["grpc_ready"] = await client.is_server_ready()
    answer["grpc_model_ready"] = await client.is_model_ready(model)
    answer["grpc"] = _outputs(await client.infer(_request(model, x, True)))
    await client.close()
    return answer


if __name__ == "__main__":
    rows = np.asarray(json.loads(sys.argv[4]), dtype=np.float32)
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], rows))))
