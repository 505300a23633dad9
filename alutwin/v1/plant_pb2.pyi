from alutwin.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClockMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLOCK_MODE_UNSPECIFIED: _ClassVar[ClockMode]
    CLOCK_MODE_STEPPED: _ClassVar[ClockMode]
    CLOCK_MODE_REAL_TIME: _ClassVar[ClockMode]

class FaultCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAULT_CODE_NONE: _ClassVar[FaultCode]
    FAULT_CODE_NON_FINITE: _ClassVar[FaultCode]
    FAULT_CODE_LEDGE_MELTED: _ClassVar[FaultCode]
    FAULT_CODE_ALUMINA_OUT_OF_RANGE: _ClassVar[FaultCode]
    FAULT_CODE_ALF3_OUT_OF_RANGE: _ClassVar[FaultCode]
CLOCK_MODE_UNSPECIFIED: ClockMode
CLOCK_MODE_STEPPED: ClockMode
CLOCK_MODE_REAL_TIME: ClockMode
FAULT_CODE_NONE: FaultCode
FAULT_CODE_NON_FINITE: FaultCode
FAULT_CODE_LEDGE_MELTED: FaultCode
FAULT_CODE_ALUMINA_OUT_OF_RANGE: FaultCode
FAULT_CODE_ALF3_OUT_OF_RANGE: FaultCode

class CommandBounds(_message.Message):
    __slots__ = ("field", "input_index", "unit", "bounds")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    INPUT_INDEX_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    field: str
    input_index: int
    unit: str
    bounds: _common_pb2.Range
    def __init__(self, field: _Optional[str] = ..., input_index: _Optional[int] = ..., unit: _Optional[str] = ..., bounds: _Optional[_Union[_common_pb2.Range, _Mapping]] = ...) -> None: ...

class GetInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetInfoResponse(_message.Message):
    __slots__ = ("plant_spec_version", "n_cells", "dt_s", "clock_mode", "real_time_factor", "step", "states", "inputs", "outputs", "command_bounds", "current_profile", "default_acd_m", "noise_std", "max_steps_per_call", "stream_queue_size", "scenario")
    PLANT_SPEC_VERSION_FIELD_NUMBER: _ClassVar[int]
    N_CELLS_FIELD_NUMBER: _ClassVar[int]
    DT_S_FIELD_NUMBER: _ClassVar[int]
    CLOCK_MODE_FIELD_NUMBER: _ClassVar[int]
    REAL_TIME_FACTOR_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STATES_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    COMMAND_BOUNDS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_PROFILE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_ACD_M_FIELD_NUMBER: _ClassVar[int]
    NOISE_STD_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_PER_CALL_FIELD_NUMBER: _ClassVar[int]
    STREAM_QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SCENARIO_FIELD_NUMBER: _ClassVar[int]
    plant_spec_version: str
    n_cells: int
    dt_s: float
    clock_mode: ClockMode
    real_time_factor: float
    step: int
    states: _containers.RepeatedCompositeFieldContainer[_common_pb2.Signal]
    inputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Signal]
    outputs: _containers.RepeatedCompositeFieldContainer[_common_pb2.Signal]
    command_bounds: _containers.RepeatedCompositeFieldContainer[CommandBounds]
    current_profile: str
    default_acd_m: float
    noise_std: _containers.RepeatedScalarFieldContainer[float]
    max_steps_per_call: int
    stream_queue_size: int
    scenario: _containers.RepeatedCompositeFieldContainer[ScenarioEventStatus]
    def __init__(self, plant_spec_version: _Optional[str] = ..., n_cells: _Optional[int] = ..., dt_s: _Optional[float] = ..., clock_mode: _Optional[_Union[ClockMode, str]] = ..., real_time_factor: _Optional[float] = ..., step: _Optional[int] = ..., states: _Optional[_Iterable[_Union[_common_pb2.Signal, _Mapping]]] = ..., inputs: _Optional[_Iterable[_Union[_common_pb2.Signal, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[_common_pb2.Signal, _Mapping]]] = ..., command_bounds: _Optional[_Iterable[_Union[CommandBounds, _Mapping]]] = ..., current_profile: _Optional[str] = ..., default_acd_m: _Optional[float] = ..., noise_std: _Optional[_Iterable[float]] = ..., max_steps_per_call: _Optional[int] = ..., stream_queue_size: _Optional[int] = ..., scenario: _Optional[_Iterable[_Union[ScenarioEventStatus, _Mapping]]] = ...) -> None: ...

class ScenarioEventStatus(_message.Message):
    __slots__ = ("kind", "at_s", "at_step", "cells", "parameter", "factor", "state", "value", "offset", "fired", "description")
    KIND_FIELD_NUMBER: _ClassVar[int]
    AT_S_FIELD_NUMBER: _ClassVar[int]
    AT_STEP_FIELD_NUMBER: _ClassVar[int]
    CELLS_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_FIELD_NUMBER: _ClassVar[int]
    FACTOR_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    FIRED_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    kind: str
    at_s: float
    at_step: int
    cells: _containers.RepeatedScalarFieldContainer[int]
    parameter: str
    factor: float
    state: str
    value: float
    offset: float
    fired: bool
    description: str
    def __init__(self, kind: _Optional[str] = ..., at_s: _Optional[float] = ..., at_step: _Optional[int] = ..., cells: _Optional[_Iterable[int]] = ..., parameter: _Optional[str] = ..., factor: _Optional[float] = ..., state: _Optional[str] = ..., value: _Optional[float] = ..., offset: _Optional[float] = ..., fired: _Optional[bool] = ..., description: _Optional[str] = ...) -> None: ...

class GetStateRequest(_message.Message):
    __slots__ = ("cell", "include_true_state")
    CELL_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TRUE_STATE_FIELD_NUMBER: _ClassVar[int]
    cell: int
    include_true_state: bool
    def __init__(self, cell: _Optional[int] = ..., include_true_state: _Optional[bool] = ...) -> None: ...

class StreamMeasurementsRequest(_message.Message):
    __slots__ = ("cells", "every_n_steps", "include_true_state")
    CELLS_FIELD_NUMBER: _ClassVar[int]
    EVERY_N_STEPS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TRUE_STATE_FIELD_NUMBER: _ClassVar[int]
    cells: _containers.RepeatedScalarFieldContainer[int]
    every_n_steps: int
    include_true_state: bool
    def __init__(self, cells: _Optional[_Iterable[int]] = ..., every_n_steps: _Optional[int] = ..., include_true_state: _Optional[bool] = ...) -> None: ...

class StreamMeasurementsResponse(_message.Message):
    __slots__ = ("snapshot", "dropped")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    snapshot: CellSnapshot
    dropped: int
    def __init__(self, snapshot: _Optional[_Union[CellSnapshot, _Mapping]] = ..., dropped: _Optional[int] = ...) -> None: ...

class CellOutputs(_message.Message):
    __slots__ = ("superheat", "alumina_pct", "alf3_pct", "liquidus", "cell_voltage", "power")
    SUPERHEAT_FIELD_NUMBER: _ClassVar[int]
    ALUMINA_PCT_FIELD_NUMBER: _ClassVar[int]
    ALF3_PCT_FIELD_NUMBER: _ClassVar[int]
    LIQUIDUS_FIELD_NUMBER: _ClassVar[int]
    CELL_VOLTAGE_FIELD_NUMBER: _ClassVar[int]
    POWER_FIELD_NUMBER: _ClassVar[int]
    superheat: float
    alumina_pct: float
    alf3_pct: float
    liquidus: float
    cell_voltage: float
    power: float
    def __init__(self, superheat: _Optional[float] = ..., alumina_pct: _Optional[float] = ..., alf3_pct: _Optional[float] = ..., liquidus: _Optional[float] = ..., cell_voltage: _Optional[float] = ..., power: _Optional[float] = ...) -> None: ...

class FaultStatus(_message.Message):
    __slots__ = ("code", "text", "step")
    CODE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    code: FaultCode
    text: str
    step: int
    def __init__(self, code: _Optional[_Union[FaultCode, str]] = ..., text: _Optional[str] = ..., step: _Optional[int] = ...) -> None: ...

class ManualInputs(_message.Message):
    __slots__ = ("alumina_feed", "alf3_feed", "acd")
    ALUMINA_FEED_FIELD_NUMBER: _ClassVar[int]
    ALF3_FEED_FIELD_NUMBER: _ClassVar[int]
    ACD_FIELD_NUMBER: _ClassVar[int]
    alumina_feed: float
    alf3_feed: float
    acd: float
    def __init__(self, alumina_feed: _Optional[float] = ..., alf3_feed: _Optional[float] = ..., acd: _Optional[float] = ...) -> None: ...

class CellSnapshot(_message.Message):
    __slots__ = ("cell", "step", "time_s", "x", "x_true", "u", "outputs", "fault", "manual")
    CELL_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TIME_S_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    X_TRUE_FIELD_NUMBER: _ClassVar[int]
    U_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    FAULT_FIELD_NUMBER: _ClassVar[int]
    MANUAL_FIELD_NUMBER: _ClassVar[int]
    cell: int
    step: int
    time_s: float
    x: _containers.RepeatedScalarFieldContainer[float]
    x_true: _containers.RepeatedScalarFieldContainer[float]
    u: _containers.RepeatedScalarFieldContainer[float]
    outputs: CellOutputs
    fault: FaultStatus
    manual: ManualInputs
    def __init__(self, cell: _Optional[int] = ..., step: _Optional[int] = ..., time_s: _Optional[float] = ..., x: _Optional[_Iterable[float]] = ..., x_true: _Optional[_Iterable[float]] = ..., u: _Optional[_Iterable[float]] = ..., outputs: _Optional[_Union[CellOutputs, _Mapping]] = ..., fault: _Optional[_Union[FaultStatus, _Mapping]] = ..., manual: _Optional[_Union[ManualInputs, _Mapping]] = ...) -> None: ...

class Automatic(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InputCommand(_message.Message):
    __slots__ = ("manual", "automatic")
    MANUAL_FIELD_NUMBER: _ClassVar[int]
    AUTOMATIC_FIELD_NUMBER: _ClassVar[int]
    manual: float
    automatic: Automatic
    def __init__(self, manual: _Optional[float] = ..., automatic: _Optional[_Union[Automatic, _Mapping]] = ...) -> None: ...

class CellCommand(_message.Message):
    __slots__ = ("cell", "alumina_feed", "alf3_feed", "acd")
    CELL_FIELD_NUMBER: _ClassVar[int]
    ALUMINA_FEED_FIELD_NUMBER: _ClassVar[int]
    ALF3_FEED_FIELD_NUMBER: _ClassVar[int]
    ACD_FIELD_NUMBER: _ClassVar[int]
    cell: int
    alumina_feed: InputCommand
    alf3_feed: InputCommand
    acd: InputCommand
    def __init__(self, cell: _Optional[int] = ..., alumina_feed: _Optional[_Union[InputCommand, _Mapping]] = ..., alf3_feed: _Optional[_Union[InputCommand, _Mapping]] = ..., acd: _Optional[_Union[InputCommand, _Mapping]] = ...) -> None: ...

class SetInputsRequest(_message.Message):
    __slots__ = ("commands",)
    COMMANDS_FIELD_NUMBER: _ClassVar[int]
    commands: _containers.RepeatedCompositeFieldContainer[CellCommand]
    def __init__(self, commands: _Optional[_Iterable[_Union[CellCommand, _Mapping]]] = ...) -> None: ...

class SetInputsResponse(_message.Message):
    __slots__ = ("step",)
    STEP_FIELD_NUMBER: _ClassVar[int]
    step: int
    def __init__(self, step: _Optional[int] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("n",)
    N_FIELD_NUMBER: _ClassVar[int]
    n: int
    def __init__(self, n: _Optional[int] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("step",)
    STEP_FIELD_NUMBER: _ClassVar[int]
    step: int
    def __init__(self, step: _Optional[int] = ...) -> None: ...
