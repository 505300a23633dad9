"""Scenario events of a potline: parameter drift of the cells, and poisoned sensors.

A *drift* changes a cell's physics from a given plant time on (the true dynamics change): one base quantity of
:class:`plant.params.CellParams` is multiplied by ``factor`` (every lumped constant that depends on it follows),
or ``current_efficiency``, which scales both Faraday terms (``k3``, alumina consumed per A s, and ``k6``, metal
produced per A s: ``plant.md`` folds the current efficiency into them, so a 5 % fall in current efficiency is
``factor: 0.95`` on both). A *stuck* or *offset* sensor changes only what is measured: the reported ``x`` of one
state is held at ``value`` (or at its reading when the fault starts) or shifted by ``offset``; the true state and
the cell's own controllers (which act on the true state) are unaffected. They exist to test that a twin which
learns online rejects a model fitted on poisoned data.

YAML (a list under ``scenario`` in the plant's config)::

    scenario:
      - {kind: drift, at_s: 21600, parameter: current_efficiency, factor: 0.95}          # all cells
      - {kind: drift, at_s: 21600, parameter: h_bath_ledge, factor: 1.2, cells: [0, 2]}
      - {kind: stuck_sensor, at_s: 3600, state: T_bath, cells: [1]}                       # held at its reading
      - {kind: offset_sensor, at_s: 3600, state: T_bath, offset: 15.0, cells: [3]}

An event fires at step ``ceil(at_s / dt)``: a drift then governs the step from that step to the next, a sensor
fault the measurement of that step and every later one. Events of one cell compose: drift factors multiply,
offsets add, a stuck value wins over offsets.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema, model_validator

from alutwin.config import (
    Config,
    ConfigError,
    NonNegativeInt,
    NonNegativeNumber,
    Number,
    OneOf,
    PositiveNumber,
    config_dataclass,
    validate,
)
from plant.params import CellParams
from plant.signals import STATE_NAMES

__all__ = [
    "COMPOSITE_PARAMETERS",
    "DRIFT_PARAMETERS",
    "SCENARIO_KINDS",
    "ScenarioEvent",
    "ScenarioStatus",
    "apply_drift",
    "check_cells",
    "parse_scenario",
]

SCENARIO_KINDS = ("drift", "stuck_sensor", "offset_sensor")
"""The kinds of scenario events."""

COMPOSITE_PARAMETERS: dict[str, tuple[str, ...]] = {"current_efficiency": ("k3", "k6")}
"""Drift parameters that are not one field of CellParams: the fields each one scales."""

DRIFT_PARAMETERS: tuple[str, ...] = (
    *COMPOSITE_PARAMETERS,
    *(f.name for f in dataclasses.fields(CellParams) if f.init and f.name != "liquidus_override"),
)
"""What a drift may scale: ``current_efficiency`` and every base quantity of :class:`CellParams`."""

_KEYS = {  # per kind: the keys it needs and the ones it may have, beside kind, at_s and cells
    "drift": (("parameter", "factor"), ()),
    "stuck_sensor": (("state",), ("value",)),
    "offset_sensor": (("state", "offset"), ()),
}
_OPTIONAL = tuple(dict.fromkeys(n for required, optional in _KEYS.values() for n in (*required, *optional)))


def _cells(value: Any) -> Any:
    """``"all"`` or null: every cell; else a non-empty list of distinct cell indices."""
    if value is None or value == "all":
        return None
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("must name at least one cell (omit it for all cells)")
        if len(set(value)) != len(value):
            raise ValueError(f"names a cell twice: {list(value)}")
    return value


Cells = Annotated[
    tuple[NonNegativeInt, ...] | None,
    BeforeValidator(_cells),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "uniqueItems": True},
                {"const": "all"},
                {"type": "null"},
            ]
        }
    ),
]


def _kind_rules() -> dict[str, Any]:
    """JSON schema: the keys each kind needs, and null for those it does not take."""
    rules = []
    for kind, (required, optional) in _KEYS.items():
        absent = {n: {"type": "null"} for n in _OPTIONAL if n not in required + optional}
        then = {"required": list(required), "properties": absent}
        rules.append({"if": {"properties": {"kind": {"const": kind}}}, "then": then})
    return {"allOf": rules}


@config_dataclass(json_schema_extra=_kind_rules())
class ScenarioEvent(Config):
    """One scenario event of a potline (see :mod:`plant.scenarios`).

    Attributes
    ----------
    kind : ``"drift"``, ``"stuck_sensor"`` or ``"offset_sensor"``.
    at_s : plant time (s) from which the event acts (>= 0).
    cells : the cells it affects (distinct indices); None (or ``all`` in YAML) for all.
    parameter, factor : drift only: what is scaled (:data:`DRIFT_PARAMETERS`) and by how much (> 0).
    state : sensor faults only: the state's name (:data:`plant.signals.STATE_NAMES`).
    value : stuck sensor only: the value it reports; None to hold its reading when the fault starts.
    offset : offset sensor only: added to the measurement (unit of the state).
    """

    kind: Annotated[str, OneOf(SCENARIO_KINDS)]
    at_s: NonNegativeNumber
    cells: Cells = None
    parameter: Annotated[str, OneOf(DRIFT_PARAMETERS)] | None = None
    factor: PositiveNumber | None = None
    state: Annotated[str, OneOf(STATE_NAMES)] | None = None
    value: Number | None = None
    offset: Number | None = None

    @model_validator(mode="after")
    def _check_keys(self) -> ScenarioEvent:
        required, optional = _KEYS[self.kind]
        given = {n for n in _OPTIONAL if getattr(self, n) is not None}
        extra = sorted(given - set(required) - set(optional))
        missing = [n for n in required if n not in given]
        article = "an" if self.kind[0] in "aeiou" else "a"
        problems = []
        if extra:
            takes = ", ".join((*required, *optional))
            problems.append(f"{article} {self.kind} event takes no {extra}; it takes kind, at_s, cells, {takes}")
        if missing:
            problems.append(f"{article} {self.kind} event needs {missing}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def at_step(self, dt: float) -> int:
        """The step at which the event fires: the first ``k`` with ``k * dt >= at_s`` (to within rounding)."""
        k = self.at_s / dt
        nearest = round(k)
        return int(nearest) if abs(k - nearest) <= 1e-9 * max(1.0, k) else math.ceil(k)

    def affects(self, cell: int) -> bool:
        """True when the event acts on ``cell``."""
        return self.cells is None or cell in self.cells

    @property
    def state_index(self) -> int:
        """Index of ``state`` in ``x`` (sensor faults only)."""
        if self.state is None:
            raise ValueError(f"a {self.kind} event has no state")
        return STATE_NAMES.index(self.state)

    @property
    def drift(self) -> tuple[str, float]:
        """``(parameter, factor)`` of a drift event."""
        if self.parameter is None or self.factor is None:
            raise ValueError(f"a {self.kind} event has no drift parameter and factor")
        return self.parameter, self.factor

    def describe(self) -> str:
        """The event in words."""
        who = "all cells" if self.cells is None else f"cell(s) {', '.join(map(str, self.cells))}"
        if self.kind == "drift":
            what = f"{self.parameter} x {self.factor:g}"
        elif self.kind == "stuck_sensor":
            what = f"{self.state} sensor stuck at " + ("its reading" if self.value is None else f"{self.value:g}")
        else:
            what = f"{self.state} sensor offset by {self.offset:+g}"
        return f"{what} on {who} from t = {self.at_s:g} s"


_EVENTS = tuple[ScenarioEvent, ...]


@dataclass(frozen=True)
class ScenarioStatus:
    """An event of a running potline: when it fires and whether it has."""

    event: ScenarioEvent
    at_step: int
    fired: bool


def check_cells(events: Sequence[ScenarioEvent], n_cells: int) -> list[str]:
    """The problems of ``events`` on a potline of ``n_cells`` cells: each names an event that names a cell that
    does not exist (``scenario[i].cells``)."""
    problems = []
    for i, event in enumerate(events):
        bad = [c for c in event.cells or () if c >= n_cells]
        if bad:
            problems.append(f"scenario[{i}].cells: {bad} do not exist; the potline has cells 0..{n_cells - 1}")
    return problems


def parse_scenario(data: Any, n_cells: int | None = None) -> tuple[ScenarioEvent, ...]:
    """The events of a ``scenario`` setting: a list of mappings or of :class:`ScenarioEvent`.

    With ``n_cells``, every cell an event names must exist.

    Raises
    ------
    alutwin.config.ConfigError
        A ValueError naming every problem and its event (``scenario[i].factor: must be > 0, got 0``).
    """
    if data is None:
        return ()
    events = validate(_EVENTS, data, loc=("scenario",))
    problems = [] if n_cells is None else check_cells(events, n_cells)
    if problems:
        raise ConfigError(None, problems)
    return events


def apply_drift(params: CellParams, parameter: str, factor: float) -> CellParams:
    """``params`` with ``parameter`` (:data:`DRIFT_PARAMETERS`) multiplied by ``factor``."""
    if parameter not in DRIFT_PARAMETERS:
        raise ValueError(f"parameter must be one of {list(DRIFT_PARAMETERS)}, got {parameter!r}")
    names = COMPOSITE_PARAMETERS.get(parameter, (parameter,))
    return params.with_changes(**{n: getattr(params, n) * factor for n in names})
