from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "features", "named_features", "id", "values")
    class NamedFeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Value
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    NAMED_FEATURES_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    features: _containers.RepeatedScalarFieldContainer[float]
    named_features: _containers.ScalarMap[str, float]
    id: str
    values: _containers.MessageMap[str, Value]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., features: _Optional[_Iterable[float]] = ..., named_features: _Optional[_Mapping[str, float]] = ..., id: _Optional[str] = ..., values: _Optional[_Mapping[str, Value]] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("number", "text", "missing")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    number: float
    text: str
    missing: bool
    def __init__(self, number: _Optional[float] = ..., text: _Optional[str] = ..., missing: _Optional[bool] = ...) -> None: ...

class Column(_message.Message):
    __slots__ = ("name", "numbers", "texts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUMBERS_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    numbers: _containers.RepeatedScalarFieldContainer[float]
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., numbers: _Optional[_Iterable[float]] = ..., texts: _Optional[_Iterable[str]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "id", "probabilities", "label", "class_name", "values")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    id: str
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    label: int
    class_name: str
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., id: _Optional[str] = ..., probabilities: _Optional[_Iterable[float]] = ..., label: _Optional[int] = ..., class_name: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class PredictBatchRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "features", "raw_features", "columns", "id")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    RAW_FEATURES_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    features: _containers.RepeatedScalarFieldContainer[float]
    raw_features: bytes
    columns: _containers.RepeatedCompositeFieldContainer[Column]
    id: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., features: _Optional[_Iterable[float]] = ..., raw_features: _Optional[bytes] = ..., columns: _Optional[_Iterable[_Union[Column, _Mapping]]] = ..., id: _Optional[str] = ...) -> None: ...

class PredictBatchResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "num_examples", "probabilities", "labels", "class_names", "values", "raw_probabilities", "raw_labels", "raw_values", "id")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    RAW_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    RAW_LABELS_FIELD_NUMBER: _ClassVar[int]
    RAW_VALUES_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    num_examples: int
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    labels: _containers.RepeatedScalarFieldContainer[int]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    values: _containers.RepeatedScalarFieldContainer[float]
    raw_probabilities: bytes
    raw_labels: bytes
    raw_values: bytes
    id: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., num_examples: _Optional[int] = ..., probabilities: _Optional[_Iterable[float]] = ..., labels: _Optional[_Iterable[int]] = ..., class_names: _Optional[_Iterable[str]] = ..., values: _Optional[_Iterable[float]] = ..., raw_probabilities: _Optional[bytes] = ..., raw_labels: _Optional[bytes] = ..., raw_values: _Optional[bytes] = ..., id: _Optional[str] = ...) -> None: ...

class ModelInfoRequest(_message.Message):
    __slots__ = ("model_name", "model_version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class TensorInfo(_message.Message):
    __slots__ = ("name", "datatype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class InputColumn(_message.Message):
    __slots__ = ("name", "kind", "datatype", "levels", "level_count", "has_other", "has_missing")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    LEVEL_COUNT_FIELD_NUMBER: _ClassVar[int]
    HAS_OTHER_FIELD_NUMBER: _ClassVar[int]
    HAS_MISSING_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    datatype: str
    levels: _containers.RepeatedScalarFieldContainer[str]
    level_count: int
    has_other: bool
    has_missing: bool
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., datatype: _Optional[str] = ..., levels: _Optional[_Iterable[str]] = ..., level_count: _Optional[int] = ..., has_other: _Optional[bool] = ..., has_missing: _Optional[bool] = ...) -> None: ...

class ModelInfoResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "versions", "task", "inputs", "outputs", "feature_names", "class_names", "target_names", "stats", "bn_momentum", "running_var", "epsilon", "folded", "fold_max_abs_error", "run_id", "params_sha256", "graph_sha256", "training_json", "created_at", "metadata", "server_version", "columns")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_NAMES_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    TARGET_NAMES_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    BN_MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    RUNNING_VAR_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    FOLDED_FIELD_NUMBER: _ClassVar[int]
    FOLD_MAX_ABS_ERROR_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_SHA256_FIELD_NUMBER: _ClassVar[int]
    GRAPH_SHA256_FIELD_NUMBER: _ClassVar[int]
    TRAINING_JSON_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    task: str
    inputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorInfo]
    feature_names: _containers.RepeatedScalarFieldContainer[str]
    class_names: _containers.RepeatedScalarFieldContainer[str]
    target_names: _containers.RepeatedScalarFieldContainer[str]
    stats: str
    bn_momentum: str
    running_var: str
    epsilon: str
    folded: bool
    fold_max_abs_error: str
    run_id: str
    params_sha256: str
    graph_sha256: str
    training_json: str
    created_at: str
    metadata: _containers.ScalarMap[str, str]
    server_version: str
    columns: _containers.RepeatedCompositeFieldContainer[InputColumn]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., task: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorInfo, _Mapping]]] = ..., feature_names: _Optional[_Iterable[str]] = ..., class_names: _Optional[_Iterable[str]] = ..., target_names: _Optional[_Iterable[str]] = ..., stats: _Optional[str] = ..., bn_momentum: _Optional[str] = ..., running_var: _Optional[str] = ..., epsilon: _Optional[str] = ..., folded: _Optional[bool] = ..., fold_max_abs_error: _Optional[str] = ..., run_id: _Optional[str] = ..., params_sha256: _Optional[str] = ..., graph_sha256: _Optional[str] = ..., training_json: _Optional[str] = ..., created_at: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., server_version: _Optional[str] = ..., columns: _Optional[_Iterable[_Union[InputColumn, _Mapping]]] = ...) -> None: ...

class ModelDriftRequest(_message.Message):
    __slots__ = ("model_name", "model_version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class FeatureDrift(_message.Message):
    __slots__ = ("name", "train_mean", "train_std", "live_mean", "live_std", "mean_shift", "variance_ratio", "psi", "out_of_range_share", "score", "flagged")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TRAIN_MEAN_FIELD_NUMBER: _ClassVar[int]
    TRAIN_STD_FIELD_NUMBER: _ClassVar[int]
    LIVE_MEAN_FIELD_NUMBER: _ClassVar[int]
    LIVE_STD_FIELD_NUMBER: _ClassVar[int]
    MEAN_SHIFT_FIELD_NUMBER: _ClassVar[int]
    VARIANCE_RATIO_FIELD_NUMBER: _ClassVar[int]
    PSI_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_RANGE_SHARE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    name: str
    train_mean: float
    train_std: float
    live_mean: float
    live_std: float
    mean_shift: float
    variance_ratio: float
    psi: float
    out_of_range_share: float
    score: float
    flagged: bool
    def __init__(self, name: _Optional[str] = ..., train_mean: _Optional[float] = ..., train_std: _Optional[float] = ..., live_mean: _Optional[float] = ..., live_std: _Optional[float] = ..., mean_shift: _Optional[float] = ..., variance_ratio: _Optional[float] = ..., psi: _Optional[float] = ..., out_of_range_share: _Optional[float] = ..., score: _Optional[float] = ..., flagged: _Optional[bool] = ...) -> None: ...

class LayerDrift(_message.Message):
    __slots__ = ("name", "units", "unit_mean", "unit_variance", "score", "flagged")
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    UNIT_MEAN_FIELD_NUMBER: _ClassVar[int]
    UNIT_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    name: str
    units: int
    unit_mean: _containers.RepeatedScalarFieldContainer[float]
    unit_variance: _containers.RepeatedScalarFieldContainer[float]
    score: float
    flagged: bool
    def __init__(self, name: _Optional[str] = ..., units: _Optional[int] = ..., unit_mean: _Optional[_Iterable[float]] = ..., unit_variance: _Optional[_Iterable[float]] = ..., score: _Optional[float] = ..., flagged: _Optional[bool] = ...) -> None: ...

class DriftWindow(_message.Message):
    __slots__ = ("examples", "out_of_range_share", "score", "flagged_features", "flagged_layers", "features", "layers")
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    OUT_OF_RANGE_SHARE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FEATURES_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_LAYERS_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    examples: float
    out_of_range_share: float
    score: float
    flagged_features: _containers.RepeatedScalarFieldContainer[str]
    flagged_layers: _containers.RepeatedScalarFieldContainer[str]
    features: _containers.RepeatedCompositeFieldContainer[FeatureDrift]
    layers: _containers.RepeatedCompositeFieldContainer[LayerDrift]
    def __init__(self, examples: _Optional[float] = ..., out_of_range_share: _Optional[float] = ..., score: _Optional[float] = ..., flagged_features: _Optional[_Iterable[str]] = ..., flagged_layers: _Optional[_Iterable[str]] = ..., features: _Optional[_Iterable[_Union[FeatureDrift, _Mapping]]] = ..., layers: _Optional[_Iterable[_Union[LayerDrift, _Mapping]]] = ...) -> None: ...

class ModelDriftResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "monitored", "status", "life", "recent", "window", "reference")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MONITORED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LIFE_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    monitored: bool
    status: str
    life: DriftWindow
    recent: DriftWindow
    window: int
    reference: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., monitored: _Optional[bool] = ..., status: _Optional[str] = ..., life: _Optional[_Union[DriftWindow, _Mapping]] = ..., recent: _Optional[_Union[DriftWindow, _Mapping]] = ..., window: _Optional[int] = ..., reference: _Optional[str] = ...) -> None: ...

class TrueAnswer(_message.Message):
    __slots__ = ("id", "row", "label", "values")
    ID_FIELD_NUMBER: _ClassVar[int]
    ROW_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    id: str
    row: int
    label: str
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, id: _Optional[str] = ..., row: _Optional[int] = ..., label: _Optional[str] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("model_name", "answers")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    answers: _containers.RepeatedCompositeFieldContainer[TrueAnswer]
    def __init__(self, model_name: _Optional[str] = ..., answers: _Optional[_Iterable[_Union[TrueAnswer, _Mapping]]] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("accepted", "dropped")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    dropped: int
    def __init__(self, accepted: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...

class ModelQualityRequest(_message.Message):
    __slots__ = ("model_name", "model_version")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ...) -> None: ...

class ConfusionCell(_message.Message):
    __slots__ = ("true_class", "predicted_class", "count")
    TRUE_CLASS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_CLASS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    true_class: str
    predicted_class: str
    count: int
    def __init__(self, true_class: _Optional[str] = ..., predicted_class: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class QualityWindow(_message.Message):
    __slots__ = ("labelled", "accuracy", "log_loss", "confusion", "rmse", "mae")
    LABELLED_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOG_LOSS_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_FIELD_NUMBER: _ClassVar[int]
    RMSE_FIELD_NUMBER: _ClassVar[int]
    MAE_FIELD_NUMBER: _ClassVar[int]
    labelled: int
    accuracy: float
    log_loss: float
    confusion: _containers.RepeatedCompositeFieldContainer[ConfusionCell]
    rmse: float
    mae: float
    def __init__(self, labelled: _Optional[int] = ..., accuracy: _Optional[float] = ..., log_loss: _Optional[float] = ..., confusion: _Optional[_Iterable[_Union[ConfusionCell, _Mapping]]] = ..., rmse: _Optional[float] = ..., mae: _Optional[float] = ...) -> None: ...

class VersionQuality(_message.Message):
    __slots__ = ("model_version", "task", "recent", "life")
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    LIFE_FIELD_NUMBER: _ClassVar[int]
    model_version: str
    task: str
    recent: QualityWindow
    life: QualityWindow
    def __init__(self, model_version: _Optional[str] = ..., task: _Optional[str] = ..., recent: _Optional[_Union[QualityWindow, _Mapping]] = ..., life: _Optional[_Union[QualityWindow, _Mapping]] = ...) -> None: ...

class ModelQualityResponse(_message.Message):
    __slots__ = ("model_name", "captured", "versions", "labels", "unknown_labels", "late_labels", "shadows")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    CAPTURED_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_LABELS_FIELD_NUMBER: _ClassVar[int]
    LATE_LABELS_FIELD_NUMBER: _ClassVar[int]
    SHADOWS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    captured: bool
    versions: _containers.RepeatedCompositeFieldContainer[VersionQuality]
    labels: int
    unknown_labels: int
    late_labels: int
    shadows: _containers.RepeatedCompositeFieldContainer[ShadowPair]
    def __init__(self, model_name: _Optional[str] = ..., captured: _Optional[bool] = ..., versions: _Optional[_Iterable[_Union[VersionQuality, _Mapping]]] = ..., labels: _Optional[int] = ..., unknown_labels: _Optional[int] = ..., late_labels: _Optional[int] = ..., shadows: _Optional[_Iterable[_Union[ShadowPair, _Mapping]]] = ...) -> None: ...

class ShadowPair(_message.Message):
    __slots__ = ("primary_version", "shadow_version", "calls", "agreement", "delta_mean", "delta_max", "shadow_ms_mean", "shadow_ms_max", "primary_ms_mean", "primary_quality", "shadow_quality")
    PRIMARY_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHADOW_VERSION_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_FIELD_NUMBER: _ClassVar[int]
    DELTA_MEAN_FIELD_NUMBER: _ClassVar[int]
    DELTA_MAX_FIELD_NUMBER: _ClassVar[int]
    SHADOW_MS_MEAN_FIELD_NUMBER: _ClassVar[int]
    SHADOW_MS_MAX_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_MS_MEAN_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_QUALITY_FIELD_NUMBER: _ClassVar[int]
    SHADOW_QUALITY_FIELD_NUMBER: _ClassVar[int]
    primary_version: str
    shadow_version: str
    calls: int
    agreement: float
    delta_mean: float
    delta_max: float
    shadow_ms_mean: float
    shadow_ms_max: float
    primary_ms_mean: float
    primary_quality: QualityWindow
    shadow_quality: QualityWindow
    def __init__(self, primary_version: _Optional[str] = ..., shadow_version: _Optional[str] = ..., calls: _Optional[int] = ..., agreement: _Optional[float] = ..., delta_mean: _Optional[float] = ..., delta_max: _Optional[float] = ..., shadow_ms_mean: _Optional[float] = ..., shadow_ms_max: _Optional[float] = ..., primary_ms_mean: _Optional[float] = ..., primary_quality: _Optional[_Union[QualityWindow, _Mapping]] = ..., shadow_quality: _Optional[_Union[QualityWindow, _Mapping]] = ...) -> None: ...
