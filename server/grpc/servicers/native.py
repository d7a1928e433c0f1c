"""bnserve.v1.Predictor: Predict, PredictBatch, PredictStream, ModelInfo, ModelDrift, Feedback,
ModelQuality."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grpc
import numpy as np

from bnserve.server.capture.feedback import MAX_ANSWERS, TrueAnswer
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2 as pb
from bnserve.server.grpc.gen.bnserve.v1 import predictor_pb2_grpc
from bnserve.server.grpc.servicers.drift_rpc import drift_response
from bnserve.server.grpc.servicers.quality_rpc import quality_response
from bnserve.server.grpc.streaming import ReadAhead
from bnserve.server.models.model import Model, TensorSpec
from bnserve.server.models.servable import Servable
from bnserve.server.plane.columns import datatype_of
from bnserve.server.plane.dataplane import DataPlane
from bnserve.server.plane.errors import (
    InvalidInput,
    ServingError,
    translate_errors,
    translate_stream_errors,
)
from bnserve.server.plane.inputs import ModelInput, TensorIn, concatenate
from bnserve.server.plane.request_ids import request_id
from bnserve.server.version import installed_version

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Predictor"].full_name
STREAM_WINDOW = 256  # stream messages read ahead of their answers (back-pressure beyond)
STREAM_CHUNK = 64  # most stream messages scored in one model run
LEVELS_LISTED = 100  # ModelInfo lists a categorical column's levels up to this many


class PredictorServicer(predictor_pb2_grpc.PredictorServicer):
    """The native API, translation only: protobuf in and out, the data plane in between."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    @translate_errors
    def Predict(
        self, request: pb.PredictRequest, context: grpc.ServicerContext
    ) -> pb.PredictResponse:
        servable = self._plane.find(request.model_name, request.model_version)
        x = _example(request, servable.model)
        call_id = request_id(request.id)
        outputs = self._plane.score(servable, x, context.time_remaining(), request_id=call_id)
        return _response(servable.model, outputs, call_id)

    @translate_errors
    def PredictBatch(
        self, request: pb.PredictBatchRequest, context: grpc.ServicerContext
    ) -> pb.PredictBatchResponse:
        servable = self._plane.find(request.model_name, request.model_version)
        model = servable.model
        x = _batch(request, model)
        call_id = request_id(request.id)
        outputs = self._plane.score(servable, x, context.time_remaining(), request_id=call_id)
        response = pb.PredictBatchResponse(
            model_name=model.name,
            model_version=model.version,
            num_examples=x.shape[0],
            id=call_id,
        )
        if request.raw_features:
            _fill_raw_batch(response, model, outputs)
        else:
            _fill_batch(response, model, outputs)
        return response

    @translate_stream_errors
    def PredictStream(
        self, request_iterator: Iterator[pb.PredictRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.PredictResponse]:
        read_ahead = ReadAhead(request_iterator, window=STREAM_WINDOW, max_chunk=STREAM_CHUNK)
        index = 0
        for chunk in read_ahead.chunks():
            yield from self._answer_chunk(chunk, index, context)
            index += len(chunk)

    def _answer_chunk(
        self, chunk: list[pb.PredictRequest], first_index: int, context: grpc.ServicerContext
    ) -> Iterator[pb.PredictResponse]:
        """Answer stream messages in order, one model run per run of messages for one model."""
        group: list[pb.PredictRequest] = []
        rows: list[ModelInput] = []
        group_servable: Servable | None = None  # the servable of the group, None: no group yet
        for offset, request in enumerate(chunk):
            try:
                servable = self._plane.find(request.model_name, request.model_version)
                row = _example(request, servable.model)
                servable.model.check_request(row)
            except ServingError as error:
                if group_servable is not None:
                    yield from self._answer_group(group_servable, group, rows, context)
                label = f" (id {request.id!r})" if request.id else ""
                raise type(error)(
                    f"stream message {first_index + offset}{label}: {error}"
                ) from None
            if group_servable is not None and servable is not group_servable:
                yield from self._answer_group(group_servable, group, rows, context)
                group, rows = [], []
            group_servable = servable
            group.append(request)
            rows.append(row)
        if group_servable is not None:
            yield from self._answer_group(group_servable, group, rows, context)

    def _answer_group(
        self,
        servable: Servable,
        requests: list[pb.PredictRequest],
        rows: list[ModelInput],
        context: grpc.ServicerContext,
    ) -> Iterator[pb.PredictResponse]:
        x = concatenate(rows)
        # Each message passed the plane's check in _answer_chunk, which names the bad one.
        ids = [request_id(request.id) for request in requests]
        outputs = self._plane.score(
            servable,
            x,
            context.time_remaining(),
            batchable=False,
            checked=True,
            request_id=ids,
        )
        for row, call_id in enumerate(ids):
            yield _response(servable.model, outputs, call_id, row)

    @translate_errors
    def ModelInfo(
        self, request: pb.ModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.ModelInfoResponse:
        model = self._plane.find(request.model_name, request.model_version).model
        card = model.card
        return pb.ModelInfoResponse(
            model_name=model.name,
            model_version=model.version,
            versions=self._plane.versions(model.name),
            task=card.task,
            inputs=[_tensor_info(spec) for spec in model.input_specs],
            outputs=[_tensor_info(spec) for spec in model.output_specs],
            feature_names=card.feature_names,
            class_names=card.class_names,
            target_names=card.target_names,
            stats=card.get("stats"),
            bn_momentum=card.get("bn_momentum"),
            running_var=card.get("running_var"),
            epsilon=card.get("epsilon"),
            folded=card.get("folded") == "true",
            fold_max_abs_error=card.get("fold_max_abs_error"),
            run_id=card.get("run_id"),
            params_sha256=card.get("params_sha256"),
            graph_sha256=card.graph_sha256,
            training_json=card.get("training"),
            created_at=card.get("created_at"),
            metadata={f"bnserve.{key}": value for key, value in card.entries.items()},
            server_version=installed_version(),
            columns=_columns(model),
        )

    @translate_errors
    def ModelDrift(
        self, request: pb.ModelDriftRequest, context: grpc.ServicerContext
    ) -> pb.ModelDriftResponse:
        return drift_response(self._plane.find(request.model_name, request.model_version).model)

    @translate_errors
    def Feedback(
        self, request: pb.FeedbackRequest, context: grpc.ServicerContext
    ) -> pb.FeedbackResponse:
        if len(request.answers) > MAX_ANSWERS:
            raise InvalidInput(
                f"{len(request.answers)} true answers in one call; at most {MAX_ANSWERS} "
                "(send several calls)"
            )
        answers = [TrueAnswer(a.id, a.row, a.label, a.values[:]) for a in request.answers]
        accepted, dropped = self._plane.feedback(request.model_name, answers)
        return pb.FeedbackResponse(accepted=accepted, dropped=dropped)

    @translate_errors
    def ModelQuality(
        self, request: pb.ModelQualityRequest, context: grpc.ServicerContext
    ) -> pb.ModelQualityResponse:
        name = self._plane.find(request.model_name).model.name
        return quality_response(
            name, request.model_version, self._plane.quality(request.model_name)
        )


def _example(request: pb.PredictRequest, model: Model) -> ModelInput:
    """One example's features as (1, F) float32, from position or name, or from values of
    either kind by name (a mixed model: a one-row Columns)."""
    if request.values:
        if request.features or request.named_features:
            raise InvalidInput("set one of features, named_features and values, not several")
        return model.columns_from_values(
            {name: _value(value) for name, value in request.values.items()}
        )
    if request.features:
        if request.named_features:
            raise InvalidInput("set either features (by position) or named_features, not both")
        # [:] makes a list: numpy converts it ~5× faster than the protobuf container itself.
        return np.array(request.features[:], dtype=np.float32).reshape(1, -1)
    if request.named_features:
        # dict() first: a protobuf map answers a missing key with 0.0 instead of KeyError.
        if model.mixed:
            return model.columns_from_values(dict(request.named_features))
        row = model.row_from_names(dict(request.named_features))
        return np.array(row, dtype=np.float32).reshape(1, -1)
    if model.mixed:
        raise InvalidInput(
            f"empty request: set values, one per column ({len(model.input_specs)} columns: "
            "ModelInfo lists them)"
        )
    raise InvalidInput(
        f"empty request: set features ({model.num_features} values in the order ModelInfo "
        "lists feature_names) or named_features"
    )


def _value(value: pb.Value) -> float | str | None:
    kind = value.WhichOneof("kind")
    if kind == "number":
        return value.number
    if kind == "text":
        return value.text
    return None


def _batch(request: pb.PredictBatchRequest, model: Model) -> ModelInput:
    """Many examples as (N, F) float32 from the flat features or raw little-endian bytes, or a
    mixed model's Columns from columns."""
    num_features = model.num_features
    if request.columns:
        if request.features or request.raw_features:
            raise InvalidInput("set either columns or features / raw_features, not both")
        if model.decoder is None:
            raise InvalidInput(
                f"model {model.name!r} takes features (N × {num_features} float32), not columns"
            )
        return model.decoder.decode([_column(c) for c in request.columns])
    if model.mixed:
        raise InvalidInput(
            f"model {model.name!r} takes columns (one Column per model column, ModelInfo lists "
            "them), not a feature vector"
        )
    if request.raw_features:
        if request.features:
            raise InvalidInput("set either features or raw_features, not both")
        if len(request.raw_features) % 4:
            raise InvalidInput(
                f"raw_features has {len(request.raw_features)} bytes, not a whole number of "
                "float32 values (4 bytes each)"
            )
        values = np.frombuffer(request.raw_features, dtype="<f4")
    elif request.features:
        values = np.array(request.features[:], dtype=np.float32)
    else:
        raise InvalidInput("empty request: set features or raw_features (N × F float32, row-major)")
    if values.size % num_features:
        raise InvalidInput(
            f"{values.size} feature values is not a whole number of examples of "
            f"{num_features} features each"
        )
    return values.reshape(-1, num_features)


def _fill_batch(
    response: pb.PredictBatchResponse, model: Model, outputs: Sequence[np.ndarray]
) -> None:
    if model.is_classification:
        probabilities, labels = outputs
        response.probabilities.extend(probabilities.ravel().tolist())
        label_list = labels.tolist()
        response.labels.extend(label_list)
        class_names = model.card.class_names
        response.class_names.extend([class_names[label] for label in label_list])
    else:
        response.values.extend(outputs[0].ravel().tolist())


def _fill_raw_batch(
    response: pb.PredictBatchResponse, model: Model, outputs: Sequence[np.ndarray]
) -> None:
    if model.is_classification:
        probabilities, labels = outputs
        response.raw_probabilities = probabilities.astype("<f4", copy=False).tobytes()
        response.raw_labels = labels.astype("<i8", copy=False).tobytes()
    else:
        response.raw_values = outputs[0].astype("<f4", copy=False).tobytes()


def _response(
    model: Model, outputs: Sequence[np.ndarray], request_id: str, row: int = 0
) -> pb.PredictResponse:
    """The answer for one example: row `row` of the outputs."""
    if model.is_classification:
        label = int(outputs[1][row])
        return pb.PredictResponse(
            model_name=model.name,
            model_version=model.version,
            id=request_id,
            probabilities=outputs[0][row].tolist(),
            label=label,
            class_name=model.card.class_names[label],
        )
    return pb.PredictResponse(
        model_name=model.name,
        model_version=model.version,
        id=request_id,
        values=outputs[0][row].tolist(),
    )


def _column(column: pb.Column) -> TensorIn:
    """A Column as a v2 tensor (texts: BYTES, numbers: FP32) for the column decoder."""
    texts, numbers = column.texts, column.numbers
    if texts and numbers:
        raise InvalidInput(f"column {column.name!r}: set numbers or texts, not both")
    if texts:
        return TensorIn(column.name, "BYTES", [len(texts)], texts[:], "texts")
    # float32 already (protobuf's repeated float): no per-value checks in the decoder
    values = np.array(numbers[:], dtype=np.float32)
    return TensorIn(column.name, "FP32", [len(values)], values, "numbers")


def _columns(model: Model) -> list[pb.InputColumn]:
    if model.schema is None or not model.mixed:
        return []
    schema = model.schema
    described = []
    for graph_input in schema.inputs:
        column = schema.column(graph_input.name)
        described.append(
            pb.InputColumn(
                name=graph_input.name,
                kind=graph_input.kind,
                datatype=datatype_of(graph_input),
                levels=column.levels if len(column.levels) <= LEVELS_LISTED else (),
                level_count=len(column.levels),
                has_other=column.has_other,
                has_missing=column.has_missing,
            )
        )
    return described


def _tensor_info(spec: TensorSpec) -> pb.TensorInfo:
    return pb.TensorInfo(name=spec.name, datatype=spec.datatype, shape=spec.shape)
