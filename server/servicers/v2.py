"""inference.GRPCInferenceService: the Open Inference Protocol (KServe v2) over gRPC."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata as package_metadata

import grpc
import numpy as np

from server.admission import InflightLimiter
from server.errors import InvalidInput, translate_errors
from server.gen.inference import grpc_service_pb2 as pb
from server.gen.inference import grpc_service_pb2_grpc
from server.model import Model, TensorSpec
from server.repository import READY, ModelRepository

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVER_NAME = "bnserve"
PLATFORM = "onnxruntime_onnx"
NUMPY_DTYPES = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}


def _server_version() -> str:
    try:
        return package_metadata.version("bnserve")
    except package_metadata.PackageNotFoundError:
        return "unknown"


class InferenceServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """Liveness, readiness, metadata and ModelInfer (FP32 typed contents or raw bytes)."""

    def __init__(self, repository: ModelRepository, limiter: InflightLimiter) -> None:
        self._repository = repository
        self._limiter = limiter
        self._metadata = pb.ServerMetadataResponse(name=SERVER_NAME, version=_server_version())

    @translate_errors
    def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @translate_errors
    def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._repository.ready)

    @translate_errors
    def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.ServicerContext
    ) -> pb.ModelReadyResponse:
        status = self._repository.status(request.name, request.version)
        return pb.ModelReadyResponse(ready=status.state == READY)

    @translate_errors
    def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return self._metadata

    @translate_errors
    def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ModelMetadataResponse:
        model = self._repository.get(request.name, request.version).model
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=self._repository.versions(model.name),
            platform=PLATFORM,
            inputs=[_tensor_metadata(model.input_spec)],
            outputs=[_tensor_metadata(spec) for spec in model.output_specs],
        )

    @translate_errors
    def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.ServicerContext
    ) -> pb.ModelInferResponse:
        servable = self._repository.get(request.model_name, request.model_version)
        model = servable.model
        x = _input_tensor(request, model)
        wanted = _requested_outputs(request, model)
        with self._limiter:
            outputs = servable.score(x, context.time_remaining())
        response = pb.ModelInferResponse(
            model_name=model.name, model_version=model.version, id=request.id
        )
        raw = bool(request.raw_input_contents)
        for index in wanted:
            spec = model.output_specs[index]
            values = outputs[index]
            tensor = response.outputs.add(
                name=spec.name, datatype=spec.datatype, shape=values.shape
            )
            if raw:
                response.raw_output_contents.append(
                    values.astype(NUMPY_DTYPES[spec.datatype]).tobytes()
                )
            elif spec.datatype == "INT64":
                tensor.contents.int64_contents.extend(values.ravel().tolist())
            else:
                tensor.contents.fp32_contents.extend(values.ravel().tolist())
        return response


def _input_tensor(request: pb.ModelInferRequest, model: Model) -> np.ndarray:
    """The request's one input as (N, F) float32; InvalidInput says what is wrong and how."""
    spec = model.input_spec
    expected = f"{spec.name!r} {spec.datatype} [N, {model.num_features}]"
    if len(request.inputs) != 1:
        names = [tensor.name for tensor in request.inputs]
        problem = "no inputs (empty request)" if not names else f"{len(names)} inputs {names}"
        raise InvalidInput(
            f"model {model.name!r} takes one input {expected}; the request has {problem}"
        )
    tensor = request.inputs[0]
    if tensor.name != spec.name:
        raise InvalidInput(f"unknown input {tensor.name!r}: model {model.name!r} takes {expected}")
    if tensor.datatype != spec.datatype:
        raise InvalidInput(
            f"input {tensor.name!r} has datatype {tensor.datatype!r}; "
            f"model {model.name!r} takes {expected}"
        )
    shape = list(tensor.shape)
    if len(shape) != 2 or shape[0] < 1 or shape[1] != model.num_features:
        raise InvalidInput(
            f"input {tensor.name!r} has shape {shape}; model {model.name!r} takes {expected}"
        )
    count = shape[0] * shape[1]
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1 or tensor.HasField("contents"):
            raise InvalidInput(
                "send the input either as raw_input_contents (exactly one entry) or as typed "
                "contents, not both"
            )
        raw = request.raw_input_contents[0]
        if len(raw) != count * 4:
            raise InvalidInput(
                f"raw_input_contents[0] has {len(raw)} bytes; shape {shape} FP32 needs {count * 4}"
            )
        return np.frombuffer(raw, dtype="<f4").reshape(shape)
    values = tensor.contents.fp32_contents
    if len(values) != count:
        what = "no fp32_contents (empty request)" if not values else f"{len(values)} fp32_contents"
        raise InvalidInput(f"input {tensor.name!r} has {what}; shape {shape} needs {count} values")
    return np.array(values[:], dtype=np.float32).reshape(shape)  # [:]: list converts faster


def _requested_outputs(request: pb.ModelInferRequest, model: Model) -> Sequence[int]:
    """Indexes into model.output_specs of the outputs to answer (all when none are named)."""
    if not request.outputs:
        return range(len(model.output_specs))
    index_by_name = {spec.name: index for index, spec in enumerate(model.output_specs)}
    unknown = [o.name for o in request.outputs if o.name not in index_by_name]
    if unknown:
        raise InvalidInput(
            f"unknown output(s) {unknown}: model {model.name!r} has outputs {list(index_by_name)}"
        )
    return [index_by_name[o.name] for o in request.outputs]


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )
