"""inference.GRPCInferenceService: the Open Inference Protocol (KServe v2) over gRPC, with
Triton's extensions (model configuration, statistics, repository index, streaming, the
classification extension). Translation only: protobuf in and out, the data plane in between."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grpc

from bnserve.server.grpc.decoding import current_request, current_request_bytes
from bnserve.server.grpc.gen.inference import grpc_service_pb2 as pb
from bnserve.server.grpc.gen.inference import grpc_service_pb2_grpc
from bnserve.server.grpc.gen.inference import model_config_pb2 as config_pb
from bnserve.server.grpc.raw_form import V2_GRPC, RawForm
from bnserve.server.models.model import TensorSpec
from bnserve.server.plane.columns import ColumnDecoder
from bnserve.server.plane.dataplane import (
    BACKEND,
    EXTENSIONS,
    INDEX_STATES,
    PLATFORM,
    SERVER_NAME,
    DataPlane,
    OutputRequest,
    TensorIn,
    TensorOut,
    raw_bytes,
)
from bnserve.server.plane.errors import (
    InvalidInput,
    ServingError,
    translate_errors,
    translate_stream_errors,
)
from bnserve.server.plane.inputs import Columns
from bnserve.server.plane.request_ids import request_id
from bnserve.server.plane.statistics import Duration, StatsSnapshot
from bnserve.server.version import installed_version

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
CLASSIFICATION = "classification"
CONTENTS = {  # the typed contents field of each datatype
    "FP64": "fp64_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "BYTES": "bytes_contents",
}  # the requested output parameter of the extension
_RAW_SOURCES = tuple(f"raw_input_contents[{i}]" for i in range(64))  # made once, not per call
_new_tuple = tuple.__new__
FORMS = 4  # usual request forms remembered per mixed model (server/grpc/raw_form.py)
DATA_TYPES = {
    "FP32": config_pb.TYPE_FP32,
    "INT64": config_pb.TYPE_INT64,
    "BYTES": config_pb.TYPE_STRING,
}


class InferenceServicer(grpc_service_pb2_grpc.GRPCInferenceServiceServicer):
    """Liveness, readiness, metadata, ModelInfer and ModelStreamInfer (FP32 typed contents or
    raw bytes), ModelConfig, ModelStatistics, RepositoryIndex."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane
        self._metadata = pb.ServerMetadataResponse(
            name=SERVER_NAME, version=installed_version(), extensions=EXTENSIONS
        )

    @translate_errors
    def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @translate_errors
    def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._plane.ready)

    @translate_errors
    def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.ServicerContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._plane.model_ready(request.name, request.version))

    @translate_errors
    def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return self._metadata

    @translate_errors
    def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> pb.ModelMetadataResponse:
        model = self._plane.find(request.name, request.version).model
        return pb.ModelMetadataResponse(
            name=model.name,
            versions=self._plane.versions(model.name),
            platform=PLATFORM,
            inputs=[_tensor_metadata(spec) for spec in model.input_specs],
            outputs=[_tensor_metadata(spec) for spec in model.output_specs],
        )

    @translate_errors
    def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.ServicerContext
    ) -> pb.ModelInferResponse:
        return self._infer(request, context)

    @translate_stream_errors
    def ModelStreamInfer(
        self, request_iterator: Iterator[pb.ModelInferRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.ModelStreamInferResponse]:
        """One answer per request, in order; a refused request answers error_message (as
        Triton's does) and the stream goes on."""
        for request in request_iterator:
            try:
                answer = self._infer(request, context)
            except ServingError as error:
                yield pb.ModelStreamInferResponse(error_message=str(error))
                continue
            yield pb.ModelStreamInferResponse(infer_response=answer)

    def _infer(
        self, request: pb.ModelInferRequest, context: grpc.ServicerContext
    ) -> pb.ModelInferResponse:
        servable = self._plane.find(request.model_name, request.model_version)
        model = servable.model
        raw = bool(request.raw_input_contents)
        call_id = request_id(request.id)
        decoder = model.decoder
        inputs: Sequence[TensorIn] | Columns | None = None
        if raw and decoder is not None:
            inputs = _columns(request, decoder)
        outputs = self._plane.infer(
            servable,
            _inputs(request, raw) if inputs is None else inputs,
            _requested(request),
            context.time_remaining(),
            call_id,
        )
        response = pb.ModelInferResponse(
            model_name=model.name, model_version=model.version, id=call_id
        )
        for output in outputs:
            _add_output(response, output, raw)
        return response

    @translate_errors
    def ModelConfig(
        self, request: pb.ModelConfigRequest, context: grpc.ServicerContext
    ) -> pb.ModelConfigResponse:
        info = self._plane.model_config(request.name, request.version)
        config = config_pb.ModelConfig(
            name=info.name,
            platform=PLATFORM,
            backend=BACKEND,
            max_batch_size=info.max_batch_size,
            input=[
                config_pb.ModelInput(name=s.name, data_type=DATA_TYPES[s.datatype], dims=s.shape)
                for s in info.inputs
            ],
            output=[
                config_pb.ModelOutput(name=s.name, data_type=DATA_TYPES[s.datatype], dims=s.shape)
                for s in info.outputs
            ],
            default_model_filename=info.file_name,
        )
        if all(version.isdigit() for version in info.versions):
            config.version_policy.specific.versions.extend(int(v) for v in info.versions)
        if info.batch_delay_us is not None:
            config.dynamic_batching.max_queue_delay_microseconds = info.batch_delay_us
        return pb.ModelConfigResponse(config=config)

    @translate_errors
    def ModelStatistics(
        self, request: pb.ModelStatisticsRequest, context: grpc.ServicerContext
    ) -> pb.ModelStatisticsResponse:
        found = self._plane.statistics(request.name, request.version)
        return pb.ModelStatisticsResponse(
            model_stats=[_statistics(name, version, stats) for name, version, stats in found]
        )

    @translate_errors
    def RepositoryIndex(
        self, request: pb.RepositoryIndexRequest, context: grpc.ServicerContext
    ) -> pb.RepositoryIndexResponse:
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=s.name, version=s.version, state=INDEX_STATES[s.state], reason=s.error
                )
                for s in self._plane.repository_index(request.ready)
            ]
        )

    @translate_errors
    def RepositoryModelLoad(
        self, request: pb.RepositoryModelLoadRequest, context: grpc.ServicerContext
    ) -> pb.RepositoryModelLoadResponse:
        self._plane.load(request.model_name)
        return pb.RepositoryModelLoadResponse()

    @translate_errors
    def RepositoryModelUnload(
        self, request: pb.RepositoryModelUnloadRequest, context: grpc.ServicerContext
    ) -> pb.RepositoryModelUnloadResponse:
        self._plane.unload(request.model_name)


def _columns(request: pb.ModelInferRequest, decoder: ColumnDecoder) -> Columns | None:
    """A mixed model's usual raw-contents request as Columns, or None: the full path decides.

    When the request's bytes hold the inputs of one of the last usual requests (server/grpc/
    raw_form.py; up to FORMS different ones, newest first, so a few clients that send different
    shapes or orders do not displace each other's), its raw contents are decoded with that
    request's Layout, no tensor read from the parsed message; else the tensors are read, and a
    usual request's form is remembered."""
    forms = decoder.remembered.get(V2_GRPC, ())
    assert isinstance(forms, tuple)
    if forms and current_request.get() is request:
        raw = current_request_bytes.get()
        for form in forms:
            contents = form.contents(raw)
            if contents is not None:
                return decoder.from_layout(form.layout, contents)
    tensors = _inputs(request, True)  # raises the servicer's own refusals
    layout = decoder.layout(tensors)
    if layout is None:
        return None
    columns = decoder.from_layout(layout, [tensor.data for tensor in tensors])
    if columns is not None:  # replaced whole: other threads read the tuple they got
        decoder.remembered[V2_GRPC] = (RawForm.of(request.inputs, layout), *forms[: FORMS - 1])
    return columns


def _inputs(request: pb.ModelInferRequest, raw: bool) -> list[TensorIn]:
    tensors = request.inputs
    if raw:
        contents = request.raw_input_contents
        if len(contents) != len(tensors):
            raise _both_contents()
        sources = _RAW_SOURCES
        if len(tensors) > len(sources):
            sources = tuple(f"raw_input_contents[{i}]" for i in range(len(tensors)))
        # One pass over the tensors (each step through upb's container makes a wrapper: a
        # mixed model's 12 inputs cost 26 µs in two passes, 18 in one); tuple.__new__ as
        # namedtuple's own _make: half the cost of TensorIn(...) per tensor.
        decoded = []
        for t, data, source in zip(tensors, contents, sources, strict=False):
            if t.HasField("contents"):
                raise _both_contents()
            decoded.append(_new_tuple(TensorIn, (t.name, t.datatype, t.shape, data, source)))
        return decoded
    # [:] makes a list: numpy converts it ~5× faster than the protobuf container itself.
    return [
        TensorIn(t.name, t.datatype, t.shape, t.contents.fp32_contents[:], "fp32_contents")
        if t.datatype == "FP32"
        else _typed(t)
        for t in tensors
    ]


def _both_contents() -> InvalidInput:
    return InvalidInput(
        "send the input either as raw_input_contents (exactly one entry) or as typed contents, "
        "not both"
    )


def _typed(tensor: pb.ModelInferRequest.InferInputTensor) -> TensorIn:
    """A tensor whose typed contents are not FP32 (a mixed model's columns): the field of its
    datatype (an unknown datatype: fp32_contents, which the data plane then refuses)."""
    field = CONTENTS.get(tensor.datatype, "fp32_contents")
    data = getattr(tensor.contents, field)[:]
    return TensorIn(tensor.name, tensor.datatype, tensor.shape, data, field)


def _requested(request: pb.ModelInferRequest) -> list[OutputRequest]:
    if not request.outputs:
        return []
    requested = []
    for output in request.outputs:
        class_count = 0
        if CLASSIFICATION in output.parameters:
            parameter = output.parameters[CLASSIFICATION]
            if parameter.WhichOneof("parameter_choice") not in ("int64_param", "uint64_param"):
                raise InvalidInput(
                    f"output {output.name!r}: parameter 'classification' must be an integer "
                    "(int64_param), the number of top classes to answer"
                )
            class_count = parameter.int64_param or parameter.uint64_param
        requested.append(OutputRequest(output.name, class_count))
    return requested


def _add_output(response: pb.ModelInferResponse, output: TensorOut, raw: bool) -> None:
    tensor = response.outputs.add(
        name=output.name, datatype=output.datatype, shape=output.array.shape
    )
    if raw:
        response.raw_output_contents.append(raw_bytes(output))
    elif output.datatype == "INT64":
        tensor.contents.int64_contents.extend(output.array.ravel().tolist())
    elif output.datatype == "BYTES":
        tensor.contents.bytes_contents.extend(output.array.ravel().tolist())
    else:
        tensor.contents.fp32_contents.extend(output.array.ravel().tolist())


def _duration(duration: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=duration.count, ns=duration.ns)


def _statistics(name: str, version: str, stats: StatsSnapshot) -> pb.ModelStatistics:
    return pb.ModelStatistics(
        name=name,
        version=version,
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(stats.success),
            fail=_duration(stats.fail),
            **{part: _duration(duration) for part, duration in stats.parts.items()},
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=batch.batch_size, compute_infer=_duration(batch.compute_infer)
            )
            for batch in stats.batches
        ],
    )


def _tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype, shape=spec.shape
    )
