"""One served model: its onnxruntime session, metadata, input checks, warm-up and parity gate."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bnserve.server._compat import session_run
from bnserve.server.drift.monitor import (
    DriftMetadataError,
    DriftMonitor,
    DriftSettings,
    parse_reference,
)
from bnserve.server.modelfile.contract import (
    INPUT_NAME,
    OUTPUT_NAMES,
    MetadataKey,
    Tolerance,
    decisive_rows,
)
from bnserve.server.modelfile.front import Front, find_front
from bnserve.server.modelfile.metadata import ModelCard, parse_model_card
from bnserve.server.modelfile.schema import CATEGORICAL, InputSchema
from bnserve.server.modelfile.wire import (
    GRAPH_FIELD,
    GRAPH_NODE_FIELD,
    WireFormatError,
    count_fields,
    field_bytes,
    graph_sha256,
    with_graph_outputs,
)
from bnserve.server.plane.columns import (
    ColumnDecoder,
    datatype_of,
    describe,
    from_values,
    input_names,
    is_categorical,
)
from bnserve.server.plane.errors import InvalidInput, ModelLoadError, first_line
from bnserve.server.plane.inputs import Columns, ModelInput, feed, take
from bnserve.server.settings import ServerSettings, default

log = logging.getLogger(__name__)

DATATYPES = {"tensor(float)": "FP32", "tensor(int64)": "INT64", "tensor(double)": "FP64"}
PARITY_REPORT_LIMIT = 3  # mismatches quoted in a parity-gate error
# The loosest parity tolerance a model file may state, by default (the server's own settings
# cap it; bnserve export states abs 1e-5 on probabilities and 1e-4 (+1e-4·target std) for
# regression).
DEFAULT_PARITY_CEILING = Tolerance(
    abs=default("max_parity_tolerance_abs"), rel=default("max_parity_tolerance_rel")
)
# An onnxruntime run (onnxruntime gives no types): (output names, {input name: array}, run
# options) → the outputs, in the order asked.
SessionRun = Callable[[list[str], dict[str, np.ndarray], Any], list[np.ndarray]]
# What a mixed model counts per scored request and column: (column, unseen levels, missing cells).
CellCounter = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as the Open Inference Protocol describes it (-1: batch dim)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelLimits:
    """The most a model file may demand before onnxruntime is given it: a 40 MB file of 10⁶
    nodes took 2.6 GB and 33 s to load. Folded bnserve MLPs have a handful of nodes. Defaults:
    the settings' max_model_bytes and max_model_nodes."""

    max_bytes: int = default("max_model_bytes")  # file size
    max_nodes: int = default("max_model_nodes")  # nodes in the main graph

    @classmethod
    def of(cls, settings: ServerSettings) -> ModelLimits:
        return cls(settings.max_model_bytes, settings.max_model_nodes)


@dataclass(frozen=True)
class SessionThreads:
    """onnxruntime thread counts (0: onnxruntime's own default for the machine). Defaults: the
    settings' intra_op_threads and inter_op_threads."""

    intra_op: int = default("intra_op_threads")
    inter_op: int = default("inter_op_threads")

    @classmethod
    def of(cls, settings: ServerSettings) -> SessionThreads:
        return cls(settings.intra_op_threads, settings.inter_op_threads)


class Model:
    """An exported bnserve model ready to score: `predict(x)` with x (N, F) float32 raw features,
    or for a mixed model (format 2, a categorical column) `Columns` of raw columns.

    Build it with `Model.load`, which verifies the graph hash and the metadata; call `warm_up`
    and `check_parity` before serving it.
    """

    def __init__(
        self,
        name: str,
        version: str,
        path: str,
        session: ort.InferenceSession,
        card: ModelCard,
        drift: DriftMonitor | None = None,
        layer_session: ort.InferenceSession | None = None,
        front: Front | None = None,
        layer_cut: bool = False,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.card = card
        self._session = session
        self.output_names: tuple[str, ...] = OUTPUT_NAMES[card.task]
        self._output_list = list(self.output_names)
        # The run path bench/serving_floor.py measured fastest for one example: the session's
        # C++ binding with one RunOptions shared by every call (read-only during a run). It
        # skips only InferenceSession.run's Python-side checks of the feed's names and OrtValue
        # ownership, which hold by construction here: the feed is always {"x": float32 array}
        # and _check_signature verified the session takes exactly x (a mixed model: one array per
        # graph input, in input order, float32 or object str, as check_features verified and
        # _check_columns_signature verified the session takes; with a front, session is the
        # graph cut after it and the feed is front.feed's two arrays). io binding with
        # preallocated outputs and run_with_ort_values measured slower (they must copy out).
        self._run_options = ort.RunOptions()
        self._session_run: SessionRun = session_run(session)  # server/_compat.py
        self._feature_index = {feature: i for i, feature in enumerate(card.feature_names)}
        self.num_features = card.num_features
        self.is_classification = card.task == "classification"
        # Format 2 (server/modelfile/schema.py): mixed models take one input per column; in a
        # numbers-only one NaN in x means missing (filled inside the graph).
        self.schema: InputSchema | None = card.schema
        self.mixed = card.schema is not None and card.schema.mixed
        self.allows_missing = card.schema is not None
        # A categorical column's levels that are not unseen: kept and rare training levels.
        self._seen: dict[str, frozenset[str]] = {}
        self._numeric_names: tuple[str, ...] = ()  # a mixed model's numeric columns
        # texts that mean missing: "" and the schema's missing tokens
        self._missing_texts = (
            frozenset(("", *card.schema.na_values)) if card.schema else frozenset()
        )
        self._input_names: tuple[str, ...] = (INPUT_NAME,)
        # v2 tensors / native columns → Columns (None: the model takes x)
        self.decoder: ColumnDecoder | None = None
        # The file's column front when session is the graph cut after it (server/modelfile/
        # front.py): Columns are scored as their Packed form.
        self._front = front if self.mixed else None
        self.served_graph = "cut after the column front" if self._front else "full"
        if card.schema is not None and self.mixed:
            self._input_names = input_names(card.schema)
            self.decoder = ColumnDecoder(card.schema, name, self._front)
            self._seen = {
                column.name: frozenset((*column.levels, *column.rare))
                for column in card.schema.used_columns
                if column.kind == CATEGORICAL
            }
            self._numeric_names = tuple(
                column.name for column in card.schema.inputs if not is_categorical(column)
            )
            self.input_specs = tuple(
                TensorSpec(column.name, datatype_of(column), (-1, 1))
                for column in card.schema.inputs
            )
        else:
            self.input_specs = (TensorSpec(INPUT_NAME, "FP32", (-1, self.num_features)),)
        self.input_spec = self.input_specs[0]
        # Unseen levels and missing cells per column of requests (format 2; None: not counted);
        # build_servable sets it to the metrics' counters.
        self.cell_counter: CellCounter | None = None
        # Refuse a request holding a level training never saw (--unseen-levels error) instead
        # of scoring it as `<other>`; build_servable sets it from the settings.
        self.refuse_unseen = False
        self.output_specs = _output_specs(session, self.output_names)
        # Drift statistics of what predict scores (None: off, or the model has no reference);
        # layer_session is the same graph also returning the hidden pre-activations.
        self.drift = drift
        self.drift_status = "on" if drift is not None else "off"
        self._layer_session = layer_session
        self._layer_cut = layer_cut and self._front is not None  # takes the packed feed too
        self._layer_output_list = self._output_list + (drift.layer_outputs if drift else [])

    @classmethod
    def load(
        cls,
        path: str | Path,
        name: str,
        version: str,
        threads: SessionThreads,
        limits: ModelLimits = ModelLimits(),
        drift: DriftSettings | None = None,
    ) -> Model:
        """Read, verify and open a model file; raises ModelLoadError naming the file and problem.

        With drift settings, scored inputs are watched (when the metadata allows it)."""
        source = str(path)
        try:
            size = Path(path).stat().st_size
            if size > limits.max_bytes:
                raise ModelLoadError(
                    f"model {source}: {size:,} bytes, more than this server loads "
                    f"({limits.max_bytes:,}, --max-model-bytes)"
                )
            model_bytes = Path(path).read_bytes()
        except OSError as error:
            raise ModelLoadError(f"model {source}: cannot read it ({error.strerror})") from None
        _check_node_count(model_bytes, source, limits.max_nodes)
        session = _open_session(model_bytes, source, threads)
        card = parse_model_card(session.get_modelmeta().custom_metadata_map, source)
        _check_graph_hash(model_bytes, card.graph_sha256, source)
        _check_signature(session, card, source)
        front = None
        if card.schema is not None and card.schema.mixed:
            front = find_front(model_bytes, card.schema)
            if front is not None:
                try:
                    session = _open_session(front.model_bytes, f"{source} (cut graph)", threads)
                except ModelLoadError as error:  # the full graph is served, as it loaded
                    log.warning("%s; serving the full graph", error)
                    front = None
        if drift is None:
            return cls(name, version, source, session, card, front=front)
        label = f"model {name} version {version}"
        try:
            imported = bool(card.get(MetadataKey.IMPORT))
            reference = parse_reference(
                card.get(MetadataKey.DRIFT),
                card.feature_names,
                imported=imported,
                schema=card.get(MetadataKey.SCHEMA),
            )
        except DriftMetadataError as error:
            log.warning("%s (%s): no drift statistics: %s; serving on", label, source, error)
            model = cls(name, version, source, session, card, front=front)
            model.drift_status = f"not monitored: {error}"
            return model
        monitor = DriftMonitor(reference, drift, label)
        layer_session, layer_cut = None, False
        if monitor.watch_layers:
            exposed = with_graph_outputs(
                model_bytes,
                reference.layer_tensors,
                reference.stacked_tensors,
                reference.wide_tensors,
            )
            if front is not None and card.schema is not None:
                layer_front = find_front(exposed, card.schema)
                if layer_front is not None and _same_feed(front, layer_front):
                    exposed, layer_cut = layer_front.model_bytes, True
            layer_session = _open_session(exposed, source, threads)
        return cls(name, version, source, session, card, monitor, layer_session, front, layer_cut)

    def predict(self, x: ModelInput) -> list[np.ndarray]:
        """Score x (N, F) float32, or a mixed model's Columns; answers in `output_names` order:
        probabilities (N, C) float32
        and label (N,) int64, or y (N, T) float32. x must have passed `check_features`.

        Sampled runs also feed the drift statistics (hidden pre-activations included, from the
        second session, when layers are watched)."""
        drift = self.drift
        if drift is None or not drift.sampled():
            return self._run(x)
        if self._layer_session is None:
            outputs = self._run(x)
            _observe(drift, x, None)
            return outputs
        with_layers: list[np.ndarray] = self._layer_session.run(
            self._layer_output_list, self._layer_feed(x)
        )
        count = len(self._output_list)
        _observe(drift, x, with_layers[count:])
        return with_layers[:count]

    def _run(self, x: ModelInput) -> list[np.ndarray]:
        """Score x without touching the drift statistics (warm-up, parity gate)."""
        return self._session_run(self._output_list, self.session_feed(x), self._run_options)

    def session_feed(self, x: ModelInput) -> dict[str, np.ndarray]:
        """The served session's feed: {x} or one array per column (plane/inputs.feed), or with a
        front the Packed form's two arrays (the decoder's when it made them for this model,
        else packed here from the columns)."""
        front = self._front
        if front is None or not isinstance(x, Columns):
            return feed(x, INPUT_NAME)
        packed = x.packed
        if packed is None or packed.front is not front:
            packed = front.pack(x)
        return front.feed(packed)

    def _layer_feed(self, x: ModelInput) -> dict[str, np.ndarray]:
        """The drift layer session's feed (the same cut as the served session, or the full
        graph's raw inputs)."""
        return self.session_feed(x) if self._layer_cut else feed(x, INPUT_NAME)

    def check_features(self, x: ModelInput) -> None:
        """Raise InvalidInput unless x is (N ≥ 1, F) of finite values (NaN allowed where the
        model fills gaps), or a mixed model's Columns (decoded and checked by plane/columns.py)."""
        if isinstance(x, Columns) or self.mixed:
            self._check_columns(x)
            return
        if x.ndim != 2 or x.shape[1] != self.num_features:
            given = x.shape[-1] if x.ndim else 0
            raise InvalidInput(
                f"model {self.name!r} takes {self.num_features} features per example "
                f"({_preview(self.card.feature_names)}); got {given}"
            )
        if x.shape[0] == 0:
            raise InvalidInput("empty request: no examples to score")
        bad = np.isinf(x) if self.allows_missing else ~np.isfinite(x)
        if bad.any():
            row, column = np.argwhere(bad)[0]
            must = "finite numbers or NaN (missing)" if self.allows_missing else "finite numbers"
            raise InvalidInput(
                f"example {row}, feature {column} ({self.card.feature_names[column]!r}) is "
                f"{x[row, column]}; features must be {must}"
            )

    def _check_columns(self, x: ModelInput) -> None:
        """A mixed model's Columns: N ≥ 1 rows of its inputs in order (each array's dtype and
        shape are plane/columns.py's); anything else names what the model takes instead."""
        schema = self.schema
        if schema is None or not self.mixed:
            raise InvalidInput(
                f"model {self.name!r} takes one input {INPUT_NAME!r} FP32 "
                f"[N, {self.num_features}], not columns"
            )
        if not isinstance(x, Columns):
            raise InvalidInput(
                f"model {self.name!r} takes one input per column, by name: "
                f"{describe(schema)}; not a vector of features"
            )
        if x.shape[0] == 0:
            raise InvalidInput("empty request: no examples to score")
        if x.names != self._input_names:
            raise InvalidInput(
                f"model {self.name!r} takes the columns {describe(schema)}; got {list(x.names)}"
            )

    def check_request(self, x: ModelInput) -> None:
        """`check_features`, then the request's cells (`observe_cells`) when they are counted or
        unseen levels are refused: the one check of a request's input on every transport."""
        self.check_features(x)
        if self.cell_counter is not None or self.refuse_unseen:
            self.observe_cells(x)

    def observe_cells(self, x: ModelInput) -> None:
        """Count unseen levels and missing cells of checked inputs per column (cell_counter);
        with `refuse_unseen`, then raise InvalidInput naming the first unseen level's column,
        value and row. A missing cell ("" or a missing token) is never an unseen level."""
        counter, schema = self.cell_counter, self.schema
        if schema is None:
            return
        if not isinstance(x, Columns):
            if counter is not None:
                missing = np.isnan(x).sum(axis=0)
                for index in np.flatnonzero(missing).tolist():
                    counter(self.card.feature_names[index], 0, int(missing[index]))
            return
        names, missing_texts = self._numeric_names, self._missing_texts
        if counter is not None and names and x.gaps is not False:  # one NaN check for all
            block = np.concatenate([x[name] for name in names], axis=1)
            counts = np.isnan(block).sum(axis=0).tolist()
            for name, count in zip(names, counts, strict=True):
                if count:
                    counter(name, 0, count)
        first_unseen: tuple[str, int, str] | None = None  # (column, row, value)
        for name, seen in self._seen.items():
            cells = x.cells(name)
            if seen.issuperset(cells):  # the usual request: every level known
                continue
            unseen_rows = [
                (row, text)
                for row, text in enumerate(cells)
                if text not in seen and text not in missing_texts
            ]
            missing_cells = sum(1 for text in cells if text not in seen and text in missing_texts)
            if counter is not None:
                counter(name, len(unseen_rows), missing_cells)
            if unseen_rows and first_unseen is None:
                first_unseen = (name, *unseen_rows[0])
        if first_unseen is not None and self.refuse_unseen:
            name, row, text = first_unseen
            raise InvalidInput(
                f"column {name!r}, row {row}: level {text[:100]!r} was never seen in training; "
                "this server refuses unseen levels (--unseen-levels error; ModelInfo lists the "
                "column's levels)"
            )

    def columns_from_values(self, values: Mapping[str, float | str | None]) -> ModelInput:
        """One example from named values of either kind (None: missing): a mixed model's
        one-row Columns, or (1, F) float32 for a model that takes x."""
        if self.schema is not None and self.mixed:
            return from_values(self.schema, self.name, values)
        texts = [name for name, value in values.items() if isinstance(value, str)]
        if texts:
            raise InvalidInput(
                f"model {self.name!r} takes numbers only; {texts[0]!r} is the text "
                f"{values[texts[0]]!r}"
            )
        numbers = {
            name: math.nan if value is None else float(value) for name, value in values.items()
        }
        return np.array(self.row_from_names(numbers), dtype=np.float32).reshape(1, -1)

    def row_from_names(self, named: Mapping[str, float]) -> list[float]:
        """Feature values in model order from a name → value map naming every feature once."""
        try:
            row = [named[feature] for feature in self.card.feature_names]
        except KeyError:
            row = None
        if row is None or len(named) != self.num_features:
            unknown = sorted(set(named) - set(self._feature_index))
            missing = [f for f in self.card.feature_names if f not in named]
            problems = []
            if unknown:
                problems.append(f"unknown feature names {_preview(unknown)}")
            if missing:
                problems.append(f"missing features {_preview(missing)}")
            raise InvalidInput(
                f"model {self.name!r}: {'; '.join(problems)}; it takes "
                f"{_preview(self.card.feature_names)}"
            )
        return row

    def warm_up(self, max_batch_size: int) -> None:
        """Run the sizes serving will use so the first real calls pay no allocation cost."""
        for batch_size in sorted({1, 2, max_batch_size}):
            zeros = self._zeros(batch_size)
            for _ in range(3):
                self._run(zeros)
                if self._layer_session is not None:
                    self._layer_session.run(self._layer_output_list, self._layer_feed(zeros))

    def _zeros(self, rows: int) -> ModelInput:
        """rows examples of zeros (a mixed model: 0 and "" per column)."""
        if self.schema is None or not self.mixed:
            return np.zeros((rows, self.num_features), dtype=np.float32)
        return Columns(
            {
                column.name: np.full((rows, 1), "", dtype=object)
                if is_categorical(column)
                else np.zeros((rows, 1), dtype=np.float32)
                for column in self.schema.inputs
            }
        )

    @property
    def reference_rows(self) -> ModelInput:
        """The file's raw reference rows as predict takes them (the parity gate scores them)."""
        if self.mixed:
            return Columns(self.card.reference_feeds)
        return self.card.reference_inputs

    def check_parity(self, ceiling: Tolerance = DEFAULT_PARITY_CEILING) -> None:
        """Score the embedded reference rows together and one at a time; raise ModelLoadError
        unless both reproduce the numpy inference path within the stated tolerance, and that
        tolerance is no looser than the server's ceiling allows (`check_tolerance`)."""
        self.check_tolerance(ceiling)
        reference_x = self.reference_rows
        together = self._run(reference_x)
        alone = [self._run(take(reference_x, i, i + 1)) for i in range(reference_x.shape[0])]
        alone_stacked = [np.concatenate(parts) for parts in zip(*alone, strict=True)]
        problems = self._parity_problems(together, "scored together")
        problems += self._parity_problems(alone_stacked, "scored one at a time")
        if self._layer_session is not None:
            with_layers = self._layer_session.run(
                self._layer_output_list, self._layer_feed(reference_x)
            )
            problems += self._parity_problems(
                with_layers[: len(self._output_list)], "scored by the drift session"
            )
        if problems:
            quoted = "; ".join(problems[:PARITY_REPORT_LIMIT])
            more = (
                f"; and {len(problems) - PARITY_REPORT_LIMIT} more"
                if len(problems) > PARITY_REPORT_LIMIT
                else ""
            )
            raise ModelLoadError(
                f"model {self.path}: parity gate failed, the served model does not reproduce its "
                f"{reference_x.shape[0]} reference rows ({quoted}{more}); re-export it from its "
                "training run with `bnserve export`"
            )

    def check_tolerance(self, ceiling: Tolerance) -> None:
        """Raise ModelLoadError when the file states a parity tolerance looser than the server
        accepts: for probabilities abs ≤ ceiling.abs; for regression outputs (target units)
        abs ≤ ceiling.abs + ceiling.rel·max|reference y|; for both rel ≤ ceiling.rel. The file
        cannot vouch for itself: an edited model with a loosened tolerance would pass."""
        stated = self.card.tolerance
        allowed_abs = ceiling.abs
        if not self.is_classification:
            scale = float(np.max(np.abs(self.card.reference_outputs["y"])))
            allowed_abs += ceiling.rel * scale
        if stated.abs > allowed_abs or stated.rel > ceiling.rel:
            raise ModelLoadError(
                f"model {self.path}: metadata bnserve.reference_tolerance (abs {stated.abs:g}, "
                f"rel {stated.rel:g}) is looser than this server accepts (abs ≤ "
                f"{allowed_abs:.3g}, rel ≤ {ceiling.rel:g}; --max-parity-tolerance-abs / "
                "--max-parity-tolerance-rel); a parity gate that loose would pass a model whose "
                "weights were changed: re-export it with `bnserve export`"
            )

    def _parity_problems(self, served: Sequence[np.ndarray], how: str) -> list[str]:
        tolerance = self.card.tolerance
        problems = []
        for name, served_values in zip(self.output_names, served, strict=True):
            reference = self.card.reference_outputs[name]
            if name == "label":
                problems += self._label_problems(served_values, how)
                continue
            allowed = tolerance.bound(reference)
            difference = np.abs(served_values.astype(np.float64) - reference)
            for row, column in np.argwhere(difference > allowed):
                problems.append(
                    f"{name}[{row}, {column}] {how}: {served_values[row, column]:.7g} vs reference "
                    f"{reference[row, column]:.7g} (|diff| {difference[row, column]:.2g} > "
                    f"{allowed[row, column]:.2g})"
                )
        return problems

    def _label_problems(self, served_labels: np.ndarray, how: str) -> list[str]:
        reference_probabilities = self.card.reference_outputs["probabilities"]
        decisive = decisive_rows(reference_probabilities, self.card.tolerance)
        reference_labels = self.card.reference_outputs["label"]
        wrong = np.flatnonzero(decisive & (served_labels != reference_labels))
        return [
            f"label[{row}] {how}: {served_labels[row]} vs reference {reference_labels[row]}"
            for row in wrong
        ]


def _same_feed(front: Front, other: Front) -> bool:
    """other takes front's feed: the same input names and the same slot of every cell."""
    return (
        (front.numbers_input, front.codes_input) == (other.numbers_input, other.codes_input)
        and front.lookups == other.lookups
        and front.default_slots == other.default_slots
    )


def _open_session(model_bytes: bytes, source: str, threads: SessionThreads) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads.intra_op
    options.inter_op_num_threads = threads.inter_op
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning threads would burn the cores the gRPC threads need between tiny runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own untyped errors for bad files
        raise ModelLoadError(
            f"model {source}: onnxruntime cannot load it ({first_line(error)})"
        ) from None


def _check_node_count(model_bytes: bytes, source: str, max_nodes: int) -> None:
    try:
        graphs = field_bytes(model_bytes, GRAPH_FIELD)
        nodes = sum(count_fields(graph, GRAPH_NODE_FIELD) for graph in graphs)
    except WireFormatError as error:
        raise ModelLoadError(f"model {source}: not a well-formed ONNX file ({error})") from None
    if nodes > max_nodes:
        raise ModelLoadError(
            f"model {source}: {nodes:,} graph nodes, more than this server loads "
            f"({max_nodes:,}, --max-model-nodes); a folded bnserve MLP has a few per layer"
        )


def _check_graph_hash(model_bytes: bytes, expected: str, source: str) -> None:
    try:
        actual = graph_sha256(model_bytes)
    except WireFormatError as error:
        raise ModelLoadError(f"model {source}: not a well-formed ONNX file ({error})") from None
    if actual != expected:
        raise ModelLoadError(
            f"model {source}: graph sha256 is {actual} but metadata bnserve.graph_sha256 says "
            f"{expected}; the nodes or weights were changed after export"
        )


def _check_signature(session: ort.InferenceSession, card: ModelCard, source: str) -> None:
    inputs = {tensor.name: tensor for tensor in session.get_inputs()}
    if card.schema is not None and card.schema.mixed:
        _check_columns_signature(session, card.schema, source)
    elif set(inputs) != {INPUT_NAME}:
        raise ModelLoadError(f"model {source}: inputs are {sorted(inputs)}; expected ['x']")
    else:
        x = inputs[INPUT_NAME]
        if x.type != "tensor(float)" or len(x.shape) != 2 or x.shape[1] != card.num_features:
            raise ModelLoadError(
                f"model {source}: input x is {x.type} {x.shape}; expected tensor(float) "
                f"[N, {card.num_features}] for {card.num_features} feature names"
            )
    outputs = {tensor.name for tensor in session.get_outputs()}
    missing = [name for name in OUTPUT_NAMES[card.task] if name not in outputs]
    if missing:
        raise ModelLoadError(
            f"model {source}: a {card.task} model needs outputs {list(OUTPUT_NAMES[card.task])}; "
            f"missing {missing} (has {sorted(outputs)})"
        )


def _check_columns_signature(
    session: ort.InferenceSession, schema: InputSchema, source: str
) -> None:
    """A mixed model's graph inputs are bnserve.schema's, in order: numeric tensor(float) and
    categorical tensor(string), each [N, 1]."""
    graph = [(tensor.name, tensor.type, tensor.shape) for tensor in session.get_inputs()]
    names = [name for name, _, _ in graph]
    if names != list(input_names(schema)):
        raise ModelLoadError(
            f"model {source}: graph inputs are {names}; bnserve.schema says "
            f"{list(input_names(schema))}"
        )
    for column, (name, kind, shape) in zip(schema.inputs, graph, strict=True):
        wanted = "tensor(string)" if is_categorical(column) else "tensor(float)"
        if kind != wanted or len(shape) != 2 or shape[1] != 1:
            raise ModelLoadError(
                f"model {source}: input {name!r} is {kind} {shape}; its {column.kind} column "
                f"needs {wanted} [N, 1]"
            )


def _output_specs(session: ort.InferenceSession, names: Sequence[str]) -> tuple[TensorSpec, ...]:
    by_name = {tensor.name: tensor for tensor in session.get_outputs()}
    specs = []
    for name in names:
        tensor = by_name[name]
        shape = tuple(dim if isinstance(dim, int) else -1 for dim in tensor.shape)
        specs.append(TensorSpec(name, DATATYPES.get(tensor.type, tensor.type), shape))
    return tuple(specs)


def _preview(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    return f"[{shown}{', …' if len(names) > limit else ''}] ({len(names)})"


def _observe(drift: DriftMonitor, x: ModelInput, tensors: list[np.ndarray] | None) -> None:
    """Feed a scored batch to the drift monitor: a mixed model's columns by name, else x."""
    if isinstance(x, Columns):
        drift.observe_columns(x.arrays, tensors)
    else:
        drift.observe(x, tensors)
