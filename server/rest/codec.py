"""JSON bodies of the Open Inference Protocol's REST API, with Triton's binary tensor extension.

An infer request is JSON, or JSON followed by binary tensor bytes when the header
Inference-Header-Content-Length gives the JSON's length (inputs with parameters.binary_data_size
take their bytes from there, in input order). Outputs go back as JSON "data", or as binary when
asked (output parameter binary_data, or request parameter binary_data_output), as tritonclient.http
does for numpy arrays. JSON numbers round-trip float32 exactly, so both forms equal gRPC's answer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from bnserve.server.capture.feedback import MAX_ANSWERS, TrueAnswer
from bnserve.server.models.model import Model, TensorSpec
from bnserve.server.plane.dataplane import (
    ModelConfigInfo,
    OutputRequest,
    TensorIn,
    TensorOut,
    raw_bytes,
)
from bnserve.server.plane.errors import InvalidInput
from bnserve.server.plane.statistics import Duration, StatsSnapshot

HEADER_LENGTH = "Inference-Header-Content-Length"
_dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


class InferRequest:
    """A decoded infer body: inputs, requested outputs, which answer in binary, the timeout."""

    __slots__ = ("binary_outputs", "default_binary", "id", "inputs", "outputs", "timeout_s")

    def __init__(self, body: bytes, header_length: str | None) -> None:
        header, binary = _split(body, header_length)
        try:
            request = json.loads(header)
        except (ValueError, UnicodeDecodeError) as error:
            raise InvalidInput(f"the request body is not JSON ({error})") from None
        except RecursionError:
            raise InvalidInput("the request body nests JSON deeper than any tensor needs") from None
        if not isinstance(request, dict):
            raise InvalidInput("the request body must be a JSON object with 'inputs'")
        self.id = request.get("id", "")
        if not isinstance(self.id, str):
            raise InvalidInput("'id' must be a string")
        parameters = _object(request.get("parameters"), "request 'parameters'")
        self.default_binary = parameters.get("binary_data_output") is True
        timeout_us = parameters.get("timeout")
        if timeout_us is not None and (type(timeout_us) is not int or timeout_us < 0):
            raise InvalidInput("request parameter 'timeout' must be microseconds (an integer ≥ 0)")
        self.timeout_s = None if not timeout_us else timeout_us / 1e6
        self.inputs = _inputs(request.get("inputs"), binary)
        self.outputs, self.binary_outputs = _outputs(request.get("outputs"), self.default_binary)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(body):
        raise InvalidInput(
            f"{HEADER_LENGTH}: {header_length!r} is not a length within the {len(body)}-byte body"
        )
    return body[:length], memoryview(body)[length:]


def _object(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return value


def _inputs(inputs: Any, binary: memoryview) -> list[TensorIn]:
    if inputs is None:
        return []
    if not isinstance(inputs, list):
        raise InvalidInput("'inputs' must be a list of tensors")
    decoded = []
    offset = 0
    for index, tensor in enumerate(inputs):
        if not isinstance(tensor, dict):
            raise InvalidInput(f"inputs[{index}] must be a JSON object")
        name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str):
            raise InvalidInput(f"inputs[{index}] needs 'name' and 'datatype' strings")
        if not isinstance(shape, list) or any(type(d) is not int for d in shape):
            raise InvalidInput(f"input {name!r}: 'shape' must be a list of integers")
        size = _object(tensor.get("parameters"), f"input {name!r} parameters").get(
            "binary_data_size"
        )
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise InvalidInput(
                    f"input {name!r}: binary_data_size {size!r} does not fit the "
                    f"{len(binary) - offset} binary bytes left after the JSON header"
                )
            data: Any = bytes(binary[offset : offset + size])
            offset += size
            decoded.append(TensorIn(name, datatype, shape, data, f"input {name!r} binary data"))
            continue
        data = tensor.get("data")
        if data is None:
            raise InvalidInput(f"input {name!r} has no 'data' (and no binary_data_size)")
        if not isinstance(data, list):
            data = [data]
        if datatype == "BYTES":
            data = _flat(data)
        elif data and isinstance(data[0], list):
            try:
                data = np.asarray(data, dtype=np.float32).ravel()
            except (TypeError, ValueError):
                raise InvalidInput(
                    f"input {name!r}: 'data' must be numbers, flat or nested by row"
                ) from None
        decoded.append(TensorIn(name, datatype, shape, data, "JSON data values"))
    if offset != len(binary):
        raise InvalidInput(
            f"{len(binary) - offset} bytes of binary data after the inputs' binary_data_size"
        )
    return decoded


def _flat(data: list[Any]) -> list[Any]:
    """Nested lists (by row) flattened, values as they are (BYTES: text or null)."""
    if not any(isinstance(value, list) for value in data):
        return data
    flat: list[Any] = []
    for value in data:
        flat.extend(_flat(value) if isinstance(value, list) else [value])
    return flat


def _outputs(outputs: Any, default_binary: bool) -> tuple[list[OutputRequest], list[bool]]:
    if outputs is None:
        return [], []
    if not isinstance(outputs, list):
        raise InvalidInput("'outputs' must be a list")
    requested, binary = [], []
    for index, output in enumerate(outputs):
        if not isinstance(output, dict) or not isinstance(output.get("name"), str):
            raise InvalidInput(f"outputs[{index}] must be an object with a 'name'")
        name = output["name"]
        parameters = _object(output.get("parameters"), f"output {name!r} parameters")
        class_count = parameters.get("classification", 0)
        if type(class_count) is not int:
            raise InvalidInput(
                f"output {name!r}: parameter 'classification' must be an integer, the number "
                "of top classes to answer"
            )
        requested.append(OutputRequest(name, class_count))
        binary.append(parameters.get("binary_data", default_binary) is True)
    return requested, binary


def infer_response(
    model: Model, request: InferRequest, outputs: Sequence[TensorOut]
) -> tuple[bytes, int | None]:
    """The body and, when binary outputs follow the JSON, the JSON's length."""
    binary = request.binary_outputs or [request.default_binary] * len(outputs)
    tensors = []
    chunks = []
    for output, as_binary in zip(outputs, binary, strict=True):
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.array.shape),
        }
        if as_binary:
            raw = raw_bytes(output)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif output.datatype == "BYTES":
            entry["data"] = [value.decode() for value in output.array.ravel().tolist()]
        else:
            entry["data"] = output.array.ravel().tolist()
        tensors.append(entry)
    header: dict[str, Any] = {
        "model_name": model.name,
        "model_version": model.version,
        "id": request.id,  # the caller's, or the one the transport made
        "outputs": tensors,
    }
    encoded = _dumps(header).encode()
    if not chunks:
        return encoded, None
    return b"".join([encoded, *chunks]), len(encoded)


def dumps(value: Any) -> bytes:
    return _dumps(value).encode()


def tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": spec.datatype, "shape": list(spec.shape)}


def model_config(info: ModelConfigInfo) -> dict[str, Any]:
    """Triton's model configuration as its HTTP API answers it."""

    def tensor(spec: TensorSpec) -> dict[str, Any]:
        data_type = {"FP32": "TYPE_FP32", "INT64": "TYPE_INT64", "BYTES": "TYPE_STRING"}[
            spec.datatype
        ]
        return {"name": spec.name, "data_type": data_type, "dims": list(spec.shape)}

    config: dict[str, Any] = {
        "name": info.name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": info.max_batch_size,
        "input": [tensor(spec) for spec in info.inputs],
        "output": [tensor(spec) for spec in info.outputs],
        "default_model_filename": info.file_name,
    }
    if all(version.isdigit() for version in info.versions):
        config["version_policy"] = {"specific": {"versions": [int(v) for v in info.versions]}}
    if info.batch_delay_us is not None:
        config["dynamic_batching"] = {"max_queue_delay_microseconds": info.batch_delay_us}
    return config


def _duration(duration: Duration) -> dict[str, int]:
    return {"count": duration.count, "ns": duration.ns}


def model_statistics(found: Sequence[tuple[str, str, StatsSnapshot]]) -> dict[str, Any]:
    """Triton's /v2/models/{name}/stats body: the figures gRPC ModelStatistics answers."""
    return {
        "model_stats": [
            {
                "name": name,
                "version": version,
                "last_inference": stats.last_inference_ms,
                "inference_count": stats.inference_count,
                "execution_count": stats.execution_count,
                "inference_stats": {
                    "success": _duration(stats.success),
                    "fail": _duration(stats.fail),
                    **{part: _duration(d) for part, d in stats.parts.items()},
                },
                "batch_stats": [
                    {
                        "batch_size": batch.batch_size,
                        "compute_infer": _duration(batch.compute_infer),
                    }
                    for batch in stats.batches
                ],
            }
            for name, version, stats in found
        ]
    }


def feedback_answers(body: bytes) -> list[TrueAnswer]:
    """POST /v2/models/{name}/feedback's body as true answers; InvalidInput names what is
    wrong (at most MAX_ANSWERS; each {"id": str, "row": int ≥ 0 (default 0), "label": str}
    or {"id", "row", "values": [numbers]})."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidInput("the request body is not JSON") from None
    items = parsed.get("answers") if isinstance(parsed, dict) else None
    if not isinstance(items, list):
        raise InvalidInput(
            'the request body must be {"answers": [{"id": "...", "row": 0, "label": "..."}, '
            '...]} (regression: "values": [...] instead of "label")'
        )
    if len(items) > MAX_ANSWERS:
        raise InvalidInput(
            f"{len(items)} true answers in one call; at most {MAX_ANSWERS} (send several calls)"
        )
    answers = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InvalidInput(f"answers[{index}] must be an object")
        ident, row = item.get("id"), item.get("row", 0)
        label, values = item.get("label", ""), item.get("values", [])
        if not isinstance(ident, str):
            raise InvalidInput(f"answers[{index}].id must be the call's request id (a string)")
        if not isinstance(row, int) or isinstance(row, bool):
            raise InvalidInput(f"answers[{index}].row must be a whole number")
        if not isinstance(label, str):
            raise InvalidInput(f"answers[{index}].label must be a class name (a string)")
        if not isinstance(values, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        ):
            raise InvalidInput(f"answers[{index}].values must be a list of numbers")
        answers.append(TrueAnswer(ident, row, label, [float(v) for v in values]))
    return answers
