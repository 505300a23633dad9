import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class QuarantineReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    QUARANTINE_REASON_UNSPECIFIED: _ClassVar[QuarantineReason]
    QUARANTINE_REASON_NON_FINITE: _ClassVar[QuarantineReason]
    QUARANTINE_REASON_OUT_OF_BOUNDS: _ClassVar[QuarantineReason]
    QUARANTINE_REASON_OUT_OF_ORDER: _ClassVar[QuarantineReason]
    QUARANTINE_REASON_DUPLICATE: _ClassVar[QuarantineReason]
    QUARANTINE_REASON_BAD_SHAPE: _ClassVar[QuarantineReason]
    QUARANTINE_REASON_BAD_INDEX: _ClassVar[QuarantineReason]
QUARANTINE_REASON_UNSPECIFIED: QuarantineReason
QUARANTINE_REASON_NON_FINITE: QuarantineReason
QUARANTINE_REASON_OUT_OF_BOUNDS: QuarantineReason
QUARANTINE_REASON_OUT_OF_ORDER: QuarantineReason
QUARANTINE_REASON_DUPLICATE: QuarantineReason
QUARANTINE_REASON_BAD_SHAPE: QuarantineReason
QUARANTINE_REASON_BAD_INDEX: QuarantineReason

class Sample(_message.Message):
    __slots__ = ("cell", "step", "time_s", "x", "u")
    CELL_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TIME_S_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    U_FIELD_NUMBER: _ClassVar[int]
    cell: int
    step: int
    time_s: float
    x: _containers.RepeatedScalarFieldContainer[float]
    u: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, cell: _Optional[int] = ..., step: _Optional[int] = ..., time_s: _Optional[float] = ..., x: _Optional[_Iterable[float]] = ..., u: _Optional[_Iterable[float]] = ...) -> None: ...

class IngestRequest(_message.Message):
    __slots__ = ("batch_id", "samples")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    samples: _containers.RepeatedCompositeFieldContainer[Sample]
    def __init__(self, batch_id: _Optional[int] = ..., samples: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ...) -> None: ...

class QuarantinedSample(_message.Message):
    __slots__ = ("index", "cell", "step", "time_s", "x", "u", "reason", "detail", "received_at_unix_s", "received_at")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TIME_S_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    U_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    index: int
    cell: int
    step: int
    time_s: float
    x: _containers.RepeatedScalarFieldContainer[float]
    u: _containers.RepeatedScalarFieldContainer[float]
    reason: QuarantineReason
    detail: str
    received_at_unix_s: float
    received_at: _timestamp_pb2.Timestamp
    def __init__(self, index: _Optional[int] = ..., cell: _Optional[int] = ..., step: _Optional[int] = ..., time_s: _Optional[float] = ..., x: _Optional[_Iterable[float]] = ..., u: _Optional[_Iterable[float]] = ..., reason: _Optional[_Union[QuarantineReason, str]] = ..., detail: _Optional[str] = ..., received_at_unix_s: _Optional[float] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CellProgress(_message.Message):
    __slots__ = ("cell", "last_step")
    CELL_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    cell: int
    last_step: int
    def __init__(self, cell: _Optional[int] = ..., last_step: _Optional[int] = ...) -> None: ...

class IngestAck(_message.Message):
    __slots__ = ("batch_id", "accepted", "quarantined", "progress")
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    accepted: int
    quarantined: _containers.RepeatedCompositeFieldContainer[QuarantinedSample]
    progress: _containers.RepeatedCompositeFieldContainer[CellProgress]
    def __init__(self, batch_id: _Optional[int] = ..., accepted: _Optional[int] = ..., quarantined: _Optional[_Iterable[_Union[QuarantinedSample, _Mapping]]] = ..., progress: _Optional[_Iterable[_Union[CellProgress, _Mapping]]] = ...) -> None: ...

class GetHistorianInfoRequest(_message.Message):
    __slots__ = ("cells",)
    CELLS_FIELD_NUMBER: _ClassVar[int]
    cells: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, cells: _Optional[_Iterable[int]] = ...) -> None: ...

class CellHistory(_message.Message):
    __slots__ = ("cell", "count", "first_step", "last_step", "last_time_s")
    CELL_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_STEP_FIELD_NUMBER: _ClassVar[int]
    LAST_STEP_FIELD_NUMBER: _ClassVar[int]
    LAST_TIME_S_FIELD_NUMBER: _ClassVar[int]
    cell: int
    count: int
    first_step: int
    last_step: int
    last_time_s: float
    def __init__(self, cell: _Optional[int] = ..., count: _Optional[int] = ..., first_step: _Optional[int] = ..., last_step: _Optional[int] = ..., last_time_s: _Optional[float] = ...) -> None: ...

class QuarantineCount(_message.Message):
    __slots__ = ("reason", "count")
    REASON_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    reason: QuarantineReason
    count: int
    def __init__(self, reason: _Optional[_Union[QuarantineReason, str]] = ..., count: _Optional[int] = ...) -> None: ...

class HistorianInfo(_message.Message):
    __slots__ = ("cells", "total_samples", "quarantine", "backend", "max_batch_samples", "max_quarantine_list")
    CELLS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    QUARANTINE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MAX_QUARANTINE_LIST_FIELD_NUMBER: _ClassVar[int]
    cells: _containers.RepeatedCompositeFieldContainer[CellHistory]
    total_samples: int
    quarantine: _containers.RepeatedCompositeFieldContainer[QuarantineCount]
    backend: str
    max_batch_samples: int
    max_quarantine_list: int
    def __init__(self, cells: _Optional[_Iterable[_Union[CellHistory, _Mapping]]] = ..., total_samples: _Optional[int] = ..., quarantine: _Optional[_Iterable[_Union[QuarantineCount, _Mapping]]] = ..., backend: _Optional[str] = ..., max_batch_samples: _Optional[int] = ..., max_quarantine_list: _Optional[int] = ...) -> None: ...

class ListQuarantineRequest(_message.Message):
    __slots__ = ("cell", "limit")
    CELL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    cell: int
    limit: int
    def __init__(self, cell: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ListQuarantineResponse(_message.Message):
    __slots__ = ("samples",)
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    samples: _containers.RepeatedCompositeFieldContainer[QuarantinedSample]
    def __init__(self, samples: _Optional[_Iterable[_Union[QuarantinedSample, _Mapping]]] = ...) -> None: ...
