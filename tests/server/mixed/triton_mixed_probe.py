"""Run in a subprocess by test_mixed_serving.py: score raw rows of a mixed model with
tritonclient.http (BYTES + FP32 InferInputs, binary and JSON tensors), print JSON.
Usage: python triton_mixed_probe.py HOST:PORT MODEL ROWS_JSON   (ROWS_JSON: {column: [values]})

A subprocess: geventhttpclient brings gevent, which a test process should not share.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.http as triton


def inputs(columns: dict[str, list[object]], binary: bool) -> list[triton.InferInput]:
    made = []
    for name, values in columns.items():
        if any(isinstance(value, str) for value in values):
            array = np.array([[value] for value in values], dtype=np.object_)
            infer_input = triton.InferInput(name, list(array.shape), "BYTES")
        else:
            array = np.array(
                [[np.nan if value is None else value] for value in values], dtype=np.float32
            )
            infer_input = triton.InferInput(name, list(array.shape), "FP32")
        infer_input.set_data_from_numpy(array, binary_data=binary)
        made.append(infer_input)
    return made


def main() -> None:
    url, model, rows_json = sys.argv[1:4]
    columns = json.loads(rows_json)
    client = triton.InferenceServerClient(url=url)
    answers = {}
    for binary in (True, False):
        result = client.infer(model, inputs(columns, binary))
        answers["binary" if binary else "json"] = {
            "probabilities": result.as_numpy("probabilities").tolist(),
            "label": result.as_numpy("label").tolist(),
        }
    answers["metadata"] = client.get_model_metadata(model)
    answers["config"] = client.get_model_config(model)
    print(json.dumps(answers))


if __name__ == "__main__":
    main()
