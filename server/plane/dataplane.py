"""The request path, once for every transport: gRPC native, gRPC v2 and HTTP/REST v2 call it.

A transport decodes its wire format into numpy arrays and plain values, calls one function here
per request kind, and encodes what comes back. Everything between is here: finding the model
and version, validation, admission (overload refusal), the deadline, scoring (batched or not),
per-version statistics, the classification extension. Errors are ServingErrors; both
transports answer them with the status server/plane/errors.py's one table gives (server/grpc/ and
server/rest/ read it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, NoReturn

import numpy as np

from bnserve.server.capture.feedback import TrueAnswer, label_rows
from bnserve.server.capture.quality import ModelQuality
from bnserve.server.capture.service import Capture
from bnserve.server.models.model import Model, TensorSpec
from bnserve.server.models.repository import FAILED, LOADING, READY, ModelRepository, ModelStatus
from bnserve.server.models.servable import Servable
from bnserve.server.observability.tracing import Tracing, scored_at
from bnserve.server.plane.admission import InflightLimiter
from bnserve.server.plane.errors import (
    CaptureOff,
    InvalidInput,
    ModelControlClosed,
    ModelNotFound,
    ServingError,
)
from bnserve.server.plane.inputs import Columns, ModelInput, TensorIn
from bnserve.server.plane.statistics import StatsSnapshot

__all__ = ["TensorIn"]  # re-exported: the transports import it from here

SERVER_NAME = "bnserve"
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
# The Open Inference Protocol extensions served on both transports (ServerMetadata lists them).
EXTENSIONS = ("classification", "model_configuration", "statistics", "binary_tensor_data")
NUMPY_DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}
# Triton's repository index states.
INDEX_STATES = {READY: "READY", LOADING: "LOADING", FAILED: "UNAVAILABLE"}

MODEL_CONTROL_CLOSED = (
    "model control is closed on this server (start it with --model-control and bearer tokens "
    "to let load rescan the model directories); bnserve reloads its directories itself"
)
CAPTURE_OFF = (
    "feedback needs the capture store: start the server with --capture-dir DIR (true answers "
    "are joined with the captured calls there)"
)
MODEL_UNLOAD_CLOSED = (
    "unload is not offered: remove the version directory and the next scan unloads it (never "
    "a model's last version)"
)

_now = time.perf_counter_ns


class OutputRequest(NamedTuple):
    """A requested output; class_count > 0 asks for its top classes (classification)."""

    name: str
    class_count: int = 0


class TensorOut(NamedTuple):
    """One answered output: BYTES arrays hold bytes objects (class_count answers)."""

    name: str
    datatype: str
    array: np.ndarray


@dataclass(frozen=True)
class ModelConfigInfo:
    """What Triton's ModelConfig says about a served version; dims exclude the batch dimension
    when max_batch_size > 0 (dynamic batching on), else include it as -1."""

    name: str
    version: str
    versions: tuple[str, ...]
    max_batch_size: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch_delay_us: int | None  # None: no dynamic batching
    file_name: str


class DataPlane:
    """Every request kind of every transport, over one repository and one admission limiter.

    tracing: the data plane's parts of each call's span (None: no tracing); rescan: model
    control's load, a scan of the model directories (None: model control closed); capture:
    the capture store every scored call is offered to, feedback's and quality's (None: off)."""

    def __init__(
        self,
        repository: ModelRepository,
        limiter: InflightLimiter,
        *,
        tracing: Tracing | None = None,
        rescan: Callable[[], None] | None = None,
        capture: Capture | None = None,
    ) -> None:
        self.repository = repository
        self.capture = capture
        self.limiter = limiter
        self._tracing = tracing
        self._rescan = rescan
        self._draining = False

    def drain(self) -> None:
        """Readiness false from now on; calls are still answered."""
        self._draining = True

    # --- lookups ---------------------------------------------------------------------------

    def find(self, name: str, version: str = "") -> Servable:
        """The servable for name (empty: the only model) and version (empty: the newest);
        ModelNotFound or ModelNotReady otherwise."""
        return self.repository.get(name, version)

    @property
    def ready(self) -> bool:
        """Every configured model serves and the server is not draining."""
        return self.repository.ready and not self._draining

    def model_ready(self, name: str, version: str = "") -> bool:
        """True when that model (version) serves; an unknown one is simply not ready."""
        try:
            return self.repository.status(name, version).state == READY
        except ModelNotFound:
            return False

    def versions(self, name: str) -> list[str]:
        return self.repository.versions(name)

    # --- scoring ---------------------------------------------------------------------------

    def score(
        self,
        servable: Servable,
        x: ModelInput,
        timeout_s: float | None,
        *,
        batchable: bool = True,
        checked: bool = False,
        request_id: str | Sequence[str] = "",
    ) -> list[np.ndarray]:
        """Validate x (N, F) float32 (a mixed model: Columns), admit, check the deadline,
        score; record statistics; offer the call to the capture store.

        timeout_s: seconds left of the caller's deadline (None: none). batchable=False keeps
        single examples out of the dynamic batcher (a stream scores its messages in order).
        checked: x already passed `servable.model.check_request` (a stream checks each message
        to name the bad one). request_id: the call's id (its rows are numbered 0..N-1 in the
        store), or one id per row (a stream's messages). Answers in
        `servable.model.output_names` order, N rows each.
        """
        stats = servable.stats
        started = _now()
        try:
            model = servable.model
            if not checked:
                model.check_request(x)
            checked_at = _now()
            with self.limiter:
                admitted = _now()
                outputs = servable.run(x, timeout_s, batchable=batchable)
        except ServingError:
            stats.record_failure(_now() - started)
            raise
        done = _now()
        if self._tracing is not None:
            self._tracing.parts(
                [
                    ("validate", started, checked_at),
                    ("queue", checked_at, admitted),
                    ("run", admitted, done),
                ]
            )
            scored_at.set(done)
        if batchable and servable.batcher is not None and x.shape[0] == 1:
            # The batcher's timed predict counts the run; the wait includes it.
            stats.record_success(
                1, done - started, done - checked_at, checked_at - started, 0, 0, False
            )
        else:
            stats.record_success(
                x.shape[0],
                done - started,
                admitted - checked_at,
                checked_at - started,
                done - admitted,
                0,
                True,
            )
        capture = self.capture
        if capture is not None:
            # x's columns by the model's feature names (a mapping of columns when inputs are
            # tables): capture writes the inputs as the model received them.
            sampled = capture.writer.offer(servable.model, x, outputs, request_id, done - started)
            if sampled:
                shadow = self.repository.shadow(servable.model.name)
                if shadow is not None and self.repository.serving(servable.model.name) is servable:
                    capture.shadow.offer(shadow, x, request_id)
        return outputs

    def infer(
        self,
        servable: Servable,
        inputs: Sequence[TensorIn] | Columns,
        requested: Sequence[OutputRequest],
        timeout_s: float | None,
        request_id: str = "",
    ) -> list[TensorOut]:
        """The Open Inference Protocol's infer: one input 'x' FP32 [N, F] in (a mixed model: one
        input per column; or their Columns, already decoded by the model's ColumnDecoder), the
        requested outputs (all when none are named) out, in request order; request_id: the
        request's id (the capture store's)."""
        model = servable.model
        try:
            x = input_array(model, inputs)
            wanted = _requested(servable, requested)
        except ServingError:
            servable.stats.record_failure(0)
            raise
        outputs = self.score(servable, x, timeout_s, request_id=request_id)
        answered = []
        for index, class_count in wanted:
            spec = model.output_specs[index]
            values = outputs[index]
            if class_count:
                answered.append(
                    TensorOut(spec.name, "BYTES", top_classes(model, values, class_count))
                )
            else:
                answered.append(TensorOut(spec.name, spec.datatype, values))
        return answered

    # --- feedback and realized quality ------------------------------------------------------

    def feedback(self, name: str, answers: Sequence[TrueAnswer]) -> tuple[int, int]:
        """Append true answers for calls to model `name` to the capture store: (accepted,
        dropped: the writer's queue was full). InvalidInput names a bad answer; CaptureOff
        without a store. Whether an id matches a call is the join's to count, not an error."""
        servable = self.find(name)
        if self.capture is None:
            raise CaptureOff(CAPTURE_OFF)
        header, rows = label_rows(servable.model, answers)
        if self.capture.writer.offer_labels(servable.model.name, header, rows):
            return len(rows), 0
        return 0, len(rows)

    def quality(self, name: str) -> ModelQuality | None:
        """Model `name`'s realized quality per version from the capture store (None: no
        capture store); ModelNotFound for a model not served."""
        model = self.find(name).model
        if self.capture is None:
            return None
        return self.capture.joiner.model(model.name) or ModelQuality({}, 0, 0, 0)

    # --- model configuration, statistics, repository index ---------------------------------

    def model_config(self, name: str, version: str = "") -> ModelConfigInfo:
        servable = self.find(name, version)
        model = servable.model
        batcher = servable.batcher
        if batcher is not None:
            max_batch_size = batcher.max_batch_size
            inputs = tuple(_without_batch(spec) for spec in model.input_specs)
            outputs = tuple(_without_batch(spec) for spec in model.output_specs)
            delay_us: int | None = round(batcher.max_delay_s * 1e6)
        else:
            max_batch_size, inputs, outputs, delay_us = (
                0,
                model.input_specs,
                model.output_specs,
                None,
            )
        return ModelConfigInfo(
            name=model.name,
            version=model.version,
            versions=tuple(self.versions(model.name)),
            max_batch_size=max_batch_size,
            inputs=inputs,
            outputs=outputs,
            batch_delay_us=delay_us,
            file_name=model.path.rsplit("/", 1)[-1],
        )

    def statistics(self, name: str = "", version: str = "") -> list[tuple[str, str, StatsSnapshot]]:
        """(name, version, statistics) of every served version matching name and version
        (empty: all); ModelNotFound for a name or version not served."""
        if name:
            self.find(name, version)  # raises for an unknown model or version
            names = [name]
        else:
            names = self.repository.names()
        found = []
        for model_name in names:
            for model_version in self.versions(model_name):
                if version and model_version != version:
                    continue
                servable = self.repository.get(model_name, model_version)
                found.append((model_name, model_version, servable.stats.snapshot()))
        return found

    def load(self, name: str) -> None:
        """Model control's load: rescan the model directories now; returns once `name` serves,
        raises ModelControlClosed when closed, ModelNotFound / ModelNotReady otherwise."""
        if self._rescan is None:
            raise ModelControlClosed(MODEL_CONTROL_CLOSED)
        self._rescan()
        self.find(name)

    def unload(self, name: str) -> NoReturn:
        """Model control's unload, never offered: raises ModelControlClosed saying how a version
        is unloaded (or, with model control closed, that it is)."""
        raise ModelControlClosed(MODEL_UNLOAD_CLOSED if self._rescan else MODEL_CONTROL_CLOSED)

    def repository_index(self, ready_only: bool = False) -> list[ModelStatus]:
        """Every configured model version, sorted, with its state and the reason it failed."""
        statuses = sorted(self.repository.statuses(), key=lambda s: (s.name, s.version))
        return [s for s in statuses if not ready_only or s.state == READY]


def input_array(model: Model, inputs: Sequence[TensorIn] | Columns) -> ModelInput:
    """The request's one input as (N, F) float32 (a mixed model: its Columns, decoded here or
    by the transport with the model's decoder); InvalidInput says what is wrong and how."""
    if isinstance(inputs, Columns):
        return inputs  # model.check_request checks it is this model's
    if model.decoder is not None:
        return model.decoder.decode(inputs)
    spec = model.input_spec
    expected = f"{spec.name!r} {spec.datatype} [N, {model.num_features}]"
    if len(inputs) != 1:
        names = [tensor.name for tensor in inputs]
        problem = "no inputs (empty request)" if not names else f"{len(names)} inputs {names}"
        raise InvalidInput(
            f"model {model.name!r} takes one input {expected}; the request has {problem}"
        )
    name, datatype, shape, data, source = inputs[0]
    if name != spec.name:
        raise InvalidInput(f"unknown input {name!r}: model {model.name!r} takes {expected}")
    if datatype != spec.datatype:
        raise InvalidInput(
            f"input {name!r} has datatype {datatype!r}; model {model.name!r} takes {expected}"
        )
    shape = list(shape)
    if len(shape) != 2 or shape[0] < 1 or shape[1] != model.num_features:
        raise InvalidInput(
            f"input {name!r} has shape {shape}; model {model.name!r} takes {expected}"
        )
    count = shape[0] * shape[1]
    if isinstance(data, bytes | bytearray | memoryview):
        if len(data) != count * 4:
            raise InvalidInput(
                f"{source} has {len(data)} bytes; shape {shape} FP32 needs {count * 4}"
            )
        return np.frombuffer(data, dtype="<f4").reshape(shape)
    size = len(data)
    if size != count:
        what = f"no {source} (empty request)" if not size else f"{size} {source}"
        raise InvalidInput(f"input {name!r} has {what}; shape {shape} needs {count} values")
    try:
        values = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidInput(f"input {name!r}: {source} must be numbers (FP32)") from None
    if values.size != count:
        raise InvalidInput(
            f"input {name!r} has {values.size} {source}; shape {shape} needs {count}"
        )
    return values.reshape(shape)


def _requested(servable: Servable, requested: Sequence[OutputRequest]) -> Sequence[tuple[int, int]]:
    """(index into model.output_specs, class_count) of the outputs to answer."""
    if not requested:
        return servable.all_outputs
    model = servable.model
    index_by_name = servable.output_index
    unknown = [o.name for o in requested if o.name not in index_by_name]
    if unknown:
        raise InvalidInput(
            f"unknown output(s) {unknown}: model {model.name!r} has outputs {list(index_by_name)}"
        )
    wanted = []
    for name, class_count in requested:
        if class_count:
            if class_count < 0:
                raise InvalidInput(
                    f"output {name!r}: classification must be ≥ 1, not {class_count}"
                )
            if not model.is_classification or name != "probabilities":
                raise InvalidInput(
                    f"output {name!r}: the classification extension (class_count) applies to "
                    f"the 'probabilities' output of a classification model only"
                )
        wanted.append((index_by_name[name], class_count))
    return wanted


def top_classes(model: Model, probabilities: np.ndarray, class_count: int) -> np.ndarray:
    """Triton's classification answer: (N, k) bytes "score:index:label", best first, k =
    min(class_count, classes); the score formatted as C++ std::to_string does (%f)."""
    k = min(class_count, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    names = model.card.class_names
    rows = [
        [f"{probabilities[row, index]:f}:{index}:{names[index]}".encode() for index in indexes]
        for row, indexes in enumerate(order.tolist())
    ]
    return np.array(rows, dtype=object).reshape(probabilities.shape[0], k)


def bytes_tensor(array: np.ndarray) -> bytes:
    """A BYTES tensor's raw form: each element as a 4-byte little-endian length, then itself."""
    parts = []
    for element in array.ravel():
        parts.append(len(element).to_bytes(4, "little"))
        parts.append(element)
    return b"".join(parts)


def raw_bytes(output: TensorOut) -> bytes:
    """An output's bytes as raw_output_contents and HTTP binary data carry them."""
    if output.datatype == "BYTES":
        return bytes_tensor(output.array)
    return output.array.astype(NUMPY_DTYPES[output.datatype], copy=False).tobytes()


def _without_batch(spec: TensorSpec) -> TensorSpec:
    return TensorSpec(spec.name, spec.datatype, spec.shape[1:] or (1,))
