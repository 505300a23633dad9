import datetime

from alutwin.v1 import common_pb2 as _common_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ArrayEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARRAY_ENCODING_UNSPECIFIED: _ClassVar[ArrayEncoding]
    ARRAY_ENCODING_PACKED: _ClassVar[ArrayEncoding]
    ARRAY_ENCODING_RAW: _ClassVar[ArrayEncoding]
    ARRAY_ENCODING_RAW_F32: _ClassVar[ArrayEncoding]

class ComputePrecision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPUTE_PRECISION_UNSPECIFIED: _ClassVar[ComputePrecision]
    COMPUTE_PRECISION_FLOAT64: _ClassVar[ComputePrecision]
    COMPUTE_PRECISION_FLOAT32: _ClassVar[ComputePrecision]

class RegistryEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REGISTRY_EVENT_TYPE_UNSPECIFIED: _ClassVar[RegistryEventType]
    REGISTRY_EVENT_TYPE_SNAPSHOT: _ClassVar[RegistryEventType]
    REGISTRY_EVENT_TYPE_VERSION_REGISTERED: _ClassVar[RegistryEventType]
    REGISTRY_EVENT_TYPE_ALIAS_MOVED: _ClassVar[RegistryEventType]
    REGISTRY_EVENT_TYPE_ROLLED_BACK: _ClassVar[RegistryEventType]
ARRAY_ENCODING_UNSPECIFIED: ArrayEncoding
ARRAY_ENCODING_PACKED: ArrayEncoding
ARRAY_ENCODING_RAW: ArrayEncoding
ARRAY_ENCODING_RAW_F32: ArrayEncoding
COMPUTE_PRECISION_UNSPECIFIED: ComputePrecision
COMPUTE_PRECISION_FLOAT64: ComputePrecision
COMPUTE_PRECISION_FLOAT32: ComputePrecision
REGISTRY_EVENT_TYPE_UNSPECIFIED: RegistryEventType
REGISTRY_EVENT_TYPE_SNAPSHOT: RegistryEventType
REGISTRY_EVENT_TYPE_VERSION_REGISTERED: RegistryEventType
REGISTRY_EVENT_TYPE_ALIAS_MOVED: RegistryEventType
REGISTRY_EVENT_TYPE_ROLLED_BACK: RegistryEventType

class DoubleArray(_message.Message):
    __slots__ = ("shape", "values", "raw", "raw_f32")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    RAW_F32_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    raw: bytes
    raw_f32: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ..., raw: _Optional[bytes] = ..., raw_f32: _Optional[bytes] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version", "alias")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    alias: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ...) -> None: ...

class ResolvedModel(_message.Message):
    __slots__ = ("name", "version", "alias")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    alias: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ...) -> None: ...

class GetServingInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServingInfo(_message.Message):
    __slots__ = ("max_batch", "max_horizon", "max_work", "max_message_bytes", "max_concurrent_predictions", "max_upload_bytes", "default_alias", "states", "inputs", "outputs", "default_outputs", "served_versions", "response_overhead_bytes", "max_envelope_excess")
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    MAX_HORIZON_FIELD_NUMBER: _ClassVar[int]
    MAX_WORK_FIELD_NUMBER: _ClassVar[int]
    MAX_MESSAGE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    MAX_UPLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ALIAS_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    SERVED_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_OVERHEAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_ENVELOPE_EXCESS_FIELD_NUMBER: _ClassVar[int]
    max_batch: int
    max_horizon: int
    max_work: int
    max_message_bytes: int
    max_concurrent_predictions: int
    max_upload_bytes: int
    default_alias: str
    states: _containers.RepeatedCompositeFieldContainer[_common_pb2.Signal]
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Signal]
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Signal]
    default_outputs: _containers.RepeatedScalarFieldContainer[str]
    served_versions: _containers.RepeatedCompositeFieldContainer[ServedVersion]
    response_overhead_bytes: int
    max_envelope_excess: float
    def __init__(self, max_batch: _Optional[int] = ..., max_horizon: _Optional[int] = ..., max_work: _Optional[int] = ..., max_message_bytes: _Optional[int] = ..., max_concurrent_predictions: _Optional[int] = ..., max_upload_bytes: _Optional[int] = ..., default_alias: _Optional[str] = ..., states: _Optional[_Iterable[_Union[_common_pb2.Signal, _Mapping]]] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.Signal, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[_common_pb2.Signal, _Mapping]]] = ..., default_outputs: _Optional[_Iterable[str]] = ..., served_versions: _Optional[_Iterable[_Union[ServedVersion, _Mapping]]] = ..., response_overhead_bytes: _Optional[int] = ..., max_envelope_excess: _Optional[float] = ...) -> None: ...

class ServedVersion(_message.Message):
    __slots__ = ("name", "version", "aliases", "n_members", "kind", "has_envelope")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    N_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    HAS_ENVELOPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    aliases: _containers.RepeatedScalarFieldContainer[str]
    n_members: int
    kind: str
    has_envelope: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., aliases: _Optional[_Iterable[str]] = ..., n_members: _Optional[int] = ..., kind: _Optional[str] = ..., has_envelope: _Optional[bool] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "x0", "u", "outputs", "include_members", "encoding", "field_mask", "stride", "precision")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    X0_FIELD_NUMBER: _ClassVar[int]
    U_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    FIELD_MASK_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    x0: DoubleArray
    u: DoubleArray
    outputs: _containers.RepeatedScalarFieldContainer[str]
    include_members: bool
    encoding: ArrayEncoding
    field_mask: _field_mask_pb2.FieldMask
    stride: int
    precision: ComputePrecision
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., x0: _Optional[_Union[DoubleArray, _Mapping]] = ..., u: _Optional[_Union[DoubleArray, _Mapping]] = ..., outputs: _Optional[_Iterable[str]] = ..., include_members: _Optional[bool] = ..., encoding: _Optional[_Union[ArrayEncoding, str]] = ..., field_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ..., stride: _Optional[int] = ..., precision: _Optional[_Union[ComputePrecision, str]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model", "mean", "spread", "output_names", "outputs", "members", "n_members", "dt_s", "stride", "validity", "input_warnings", "envelope_known")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    SPREAD_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NAMES_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    N_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    DT_S_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    VALIDITY_FIELD_NUMBER: _ClassVar[int]
    INPUT_WARNINGS_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_KNOWN_FIELD_NUMBER: _ClassVar[int]
    model: ResolvedModel
    mean: DoubleArray
    spread: DoubleArray
    output_names: _containers.RepeatedScalarFieldContainer[str]
    outputs: DoubleArray
    members: DoubleArray
    n_members: int
    dt_s: float
    stride: int
    validity: _containers.RepeatedCompositeFieldContainer[ScenarioValidity]
    input_warnings: _containers.RepeatedCompositeFieldContainer[EnvelopeWarning]
    envelope_known: bool
    def __init__(self, model: _Optional[_Union[ResolvedModel, _Mapping]] = ..., mean: _Optional[_Union[DoubleArray, _Mapping]] = ..., spread: _Optional[_Union[DoubleArray, _Mapping]] = ..., output_names: _Optional[_Iterable[str]] = ..., outputs: _Optional[_Union[DoubleArray, _Mapping]] = ..., members: _Optional[_Union[DoubleArray, _Mapping]] = ..., n_members: _Optional[int] = ..., dt_s: _Optional[float] = ..., stride: _Optional[int] = ..., validity: _Optional[_Iterable[_Union[ScenarioValidity, _Mapping]]] = ..., input_warnings: _Optional[_Iterable[_Union[EnvelopeWarning, _Mapping]]] = ..., envelope_known: _Optional[bool] = ...) -> None: ...

class ScenarioValidity(_message.Message):
    __slots__ = ("domain_exit_step", "domain_reason", "envelope_exit_step", "envelope_signals", "diverged_members", "first_divergence_step")
    DOMAIN_EXIT_STEP_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_REASON_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_EXIT_STEP_FIELD_NUMBER: _ClassVar[int]
    ENVELOPE_SIGNALS_FIELD_NUMBER: _ClassVar[int]
    DIVERGED_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    FIRST_DIVERGENCE_STEP_FIELD_NUMBER: _ClassVar[int]
    domain_exit_step: int
    domain_reason: str
    envelope_exit_step: int
    envelope_signals: _containers.RepeatedScalarFieldContainer[str]
    diverged_members: _containers.RepeatedScalarFieldContainer[int]
    first_divergence_step: int
    def __init__(self, domain_exit_step: _Optional[int] = ..., domain_reason: _Optional[str] = ..., envelope_exit_step: _Optional[int] = ..., envelope_signals: _Optional[_Iterable[str]] = ..., diverged_members: _Optional[_Iterable[int]] = ..., first_divergence_step: _Optional[int] = ...) -> None: ...

class EnvelopeWarning(_message.Message):
    __slots__ = ("array", "signal", "count", "worst_value", "low", "high", "excess", "scenario", "step")
    ARRAY_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    WORST_VALUE_FIELD_NUMBER: _ClassVar[int]
    LOW_FIELD_NUMBER: _ClassVar[int]
    HIGH_FIELD_NUMBER: _ClassVar[int]
    EXCESS_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    array: str
    signal: str
    count: int
    worst_value: float
    low: float
    high: float
    excess: float
    scenario: int
    step: int
    def __init__(self, array: _Optional[str] = ..., signal: _Optional[str] = ..., count: _Optional[int] = ..., worst_value: _Optional[float] = ..., low: _Optional[float] = ..., high: _Optional[float] = ..., excess: _Optional[float] = ..., scenario: _Optional[int] = ..., step: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "revision", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    revision: int
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ..., revision: _Optional[int] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ModelSummary(_message.Message):
    __slots__ = ("name", "versions", "aliases")
    class AliasesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    name: str
    versions: _containers.RepeatedCompositeFieldContainer[VersionSummary]
    aliases: _containers.ScalarMap[str, int]
    def __init__(self, name: _Optional[str] = ..., versions: _Optional[_Iterable[_Union[VersionSummary, _Mapping]]] = ..., aliases: _Optional[_Mapping[str, int]] = ...) -> None: ...

class VersionSummary(_message.Message):
    __slots__ = ("version", "kind", "registered", "description", "registered_at")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    version: int
    kind: str
    registered: str
    description: str
    registered_at: _timestamp_pb2.Timestamp
    def __init__(self, version: _Optional[int] = ..., kind: _Optional[str] = ..., registered: _Optional[str] = ..., description: _Optional[str] = ..., registered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class Architecture(_message.Message):
    __slots__ = ("n_in", "hidden", "n_out", "skip", "blocks")
    N_IN_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    N_OUT_FIELD_NUMBER: _ClassVar[int]
    SKIP_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    n_in: int
    hidden: _containers.RepeatedScalarFieldContainer[int]
    n_out: int
    skip: bool
    blocks: int
    def __init__(self, n_in: _Optional[int] = ..., hidden: _Optional[_Iterable[int]] = ..., n_out: _Optional[int] = ..., skip: _Optional[bool] = ..., blocks: _Optional[int] = ...) -> None: ...

class ModelVersionInfo(_message.Message):
    __slots__ = ("model", "aliases", "kind", "prior", "n_members", "architecture", "dt_s", "exactly_sparse", "nonzero_weights", "total_weights", "created", "registered", "description", "weights_sha256", "loaded", "created_at", "registered_at")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ALIASES_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PRIOR_FIELD_NUMBER: _ClassVar[int]
    N_MEMBERS_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    DT_S_FIELD_NUMBER: _ClassVar[int]
    EXACTLY_SPARSE_FIELD_NUMBER: _ClassVar[int]
    NONZERO_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    model: ResolvedModel
    aliases: _containers.RepeatedScalarFieldContainer[str]
    kind: str
    prior: str
    n_members: int
    architecture: Architecture
    dt_s: float
    exactly_sparse: bool
    nonzero_weights: int
    total_weights: int
    created: str
    registered: str
    description: str
    weights_sha256: str
    loaded: bool
    created_at: _timestamp_pb2.Timestamp
    registered_at: _timestamp_pb2.Timestamp
    def __init__(self, model: _Optional[_Union[ResolvedModel, _Mapping]] = ..., aliases: _Optional[_Iterable[str]] = ..., kind: _Optional[str] = ..., prior: _Optional[str] = ..., n_members: _Optional[int] = ..., architecture: _Optional[_Union[Architecture, _Mapping]] = ..., dt_s: _Optional[float] = ..., exactly_sparse: _Optional[bool] = ..., nonzero_weights: _Optional[int] = ..., total_weights: _Optional[int] = ..., created: _Optional[str] = ..., registered: _Optional[str] = ..., description: _Optional[str] = ..., weights_sha256: _Optional[str] = ..., loaded: _Optional[bool] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., registered_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ExplainModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class LayerSparsity(_message.Message):
    __slots__ = ("layer", "n_in", "n_out", "total", "nonzero", "above_threshold")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    N_IN_FIELD_NUMBER: _ClassVar[int]
    N_OUT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    NONZERO_FIELD_NUMBER: _ClassVar[int]
    ABOVE_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    layer: int
    n_in: int
    n_out: int
    total: int
    nonzero: int
    above_threshold: int
    def __init__(self, layer: _Optional[int] = ..., n_in: _Optional[int] = ..., n_out: _Optional[int] = ..., total: _Optional[int] = ..., nonzero: _Optional[int] = ..., above_threshold: _Optional[int] = ...) -> None: ...

class StructureScores(_message.Message):
    __slots__ = ("precision", "recall", "f1", "entries")
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    F1_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    precision: float
    recall: float
    f1: float
    entries: int
    def __init__(self, precision: _Optional[float] = ..., recall: _Optional[float] = ..., f1: _Optional[float] = ..., entries: _Optional[int] = ...) -> None: ...

class DependencyMatrix(_message.Message):
    __slots__ = ("rows", "cols", "share", "row_names", "col_names", "scores")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    COLS_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    ROW_NAMES_FIELD_NUMBER: _ClassVar[int]
    COL_NAMES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    rows: int
    cols: int
    share: _containers.RepeatedScalarFieldContainer[float]
    row_names: _containers.RepeatedScalarFieldContainer[str]
    col_names: _containers.RepeatedScalarFieldContainer[str]
    scores: StructureScores
    def __init__(self, rows: _Optional[int] = ..., cols: _Optional[int] = ..., share: _Optional[_Iterable[float]] = ..., row_names: _Optional[_Iterable[str]] = ..., col_names: _Optional[_Iterable[str]] = ..., scores: _Optional[_Union[StructureScores, _Mapping]] = ...) -> None: ...

class ModelExplanation(_message.Message):
    __slots__ = ("model", "layers", "weight_threshold", "path_dependency", "thresholded_path_dependency", "jacobian_dependency", "jacobian_points", "jacobian_rel_threshold", "metrics_json", "provenance_json")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    PATH_DEPENDENCY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDED_PATH_DEPENDENCY_FIELD_NUMBER: _ClassVar[int]
    JACOBIAN_DEPENDENCY_FIELD_NUMBER: _ClassVar[int]
    JACOBIAN_POINTS_FIELD_NUMBER: _ClassVar[int]
    JACOBIAN_REL_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    METRICS_JSON_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_JSON_FIELD_NUMBER: _ClassVar[int]
    model: ResolvedModel
    layers: _containers.RepeatedCompositeFieldContainer[LayerSparsity]
    weight_threshold: float
    path_dependency: DependencyMatrix
    thresholded_path_dependency: DependencyMatrix
    jacobian_dependency: DependencyMatrix
    jacobian_points: int
    jacobian_rel_threshold: float
    metrics_json: str
    provenance_json: str
    def __init__(self, model: _Optional[_Union[ResolvedModel, _Mapping]] = ..., layers: _Optional[_Iterable[_Union[LayerSparsity, _Mapping]]] = ..., weight_threshold: _Optional[float] = ..., path_dependency: _Optional[_Union[DependencyMatrix, _Mapping]] = ..., thresholded_path_dependency: _Optional[_Union[DependencyMatrix, _Mapping]] = ..., jacobian_dependency: _Optional[_Union[DependencyMatrix, _Mapping]] = ..., jacobian_points: _Optional[int] = ..., jacobian_rel_threshold: _Optional[float] = ..., metrics_json: _Optional[str] = ..., provenance_json: _Optional[str] = ...) -> None: ...

class ExportModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class ExportModelResponse(_message.Message):
    __slots__ = ("model", "manifest_json", "weights")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    model: ResolvedModel
    manifest_json: bytes
    weights: bytes
    def __init__(self, model: _Optional[_Union[ResolvedModel, _Mapping]] = ..., manifest_json: _Optional[bytes] = ..., weights: _Optional[bytes] = ...) -> None: ...

class RegisterModelRequest(_message.Message):
    __slots__ = ("name", "manifest_json", "weights", "set_alias", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_JSON_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    SET_ALIAS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    manifest_json: bytes
    weights: bytes
    set_alias: str
    description: str
    def __init__(self, name: _Optional[str] = ..., manifest_json: _Optional[bytes] = ..., weights: _Optional[bytes] = ..., set_alias: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class RegisterModelResponse(_message.Message):
    __slots__ = ("model", "revision")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    model: ResolvedModel
    revision: int
    def __init__(self, model: _Optional[_Union[ResolvedModel, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...

class SetAliasRequest(_message.Message):
    __slots__ = ("name", "alias", "version", "expected_version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    version: int
    expected_version: int
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ..., version: _Optional[int] = ..., expected_version: _Optional[int] = ...) -> None: ...

class SetAliasResponse(_message.Message):
    __slots__ = ("previous_version", "revision")
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    previous_version: int
    revision: int
    def __init__(self, previous_version: _Optional[int] = ..., revision: _Optional[int] = ...) -> None: ...

class RollbackRequest(_message.Message):
    __slots__ = ("name", "alias")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    name: str
    alias: str
    def __init__(self, name: _Optional[str] = ..., alias: _Optional[str] = ...) -> None: ...

class RollbackResponse(_message.Message):
    __slots__ = ("version", "rolled_back_from", "revision")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_FROM_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    version: int
    rolled_back_from: int
    revision: int
    def __init__(self, version: _Optional[int] = ..., rolled_back_from: _Optional[int] = ..., revision: _Optional[int] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RegistryEvent(_message.Message):
    __slots__ = ("revision", "type", "name", "version", "alias", "previous_version", "models", "time_unix_ms", "time")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALIAS_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    revision: int
    type: RegistryEventType
    name: str
    version: int
    alias: str
    previous_version: int
    models: _containers.RepeatedCompositeFieldContainer[ModelSummary]
    time_unix_ms: int
    time: _timestamp_pb2.Timestamp
    def __init__(self, revision: _Optional[int] = ..., type: _Optional[_Union[RegistryEventType, str]] = ..., name: _Optional[str] = ..., version: _Optional[int] = ..., alias: _Optional[str] = ..., previous_version: _Optional[int] = ..., models: _Optional[_Iterable[_Union[ModelSummary, _Mapping]]] = ..., time_unix_ms: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
