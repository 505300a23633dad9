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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from plant.params import CellParams
from plant.signals import STATE_NAMES

__all__ = [
    "COMPOSITE_PARAMETERS",
    "DRIFT_PARAMETERS",
    "SCENARIO_KINDS",
    "ScenarioEvent",
    "ScenarioStatus",
    "apply_drift",
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

_KEYS = {
    "drift": ({"kind", "at_s", "parameter", "factor"}, {"cells"}),
    "stuck_sensor": ({"kind", "at_s", "state"}, {"cells", "value"}),
    "offset_sensor": ({"kind", "at_s", "state", "offset"}, {"cells"}),
}


def _number(where: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError(f"{where}.{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ScenarioEvent:
    """One scenario event (see the module docstring).

    Attributes
    ----------
    kind : ``"drift"``, ``"stuck_sensor"`` or ``"offset_sensor"``.
    at_s : plant time (s) from which the event acts.
    cells : the cells it affects; None for all.
    parameter, factor : drift only: what is scaled (:data:`DRIFT_PARAMETERS`) and by how much (> 0).
    state : sensor faults only: the state's name (:data:`plant.signals.STATE_NAMES`).
    value : stuck sensor only: the value it reports; None to hold its reading when the fault starts.
    offset : offset sensor only: added to the measurement (unit of the state).
    """

    kind: str
    at_s: float
    cells: tuple[int, ...] | None = None
    parameter: str | None = None
    factor: float | None = None
    state: str | None = None
    value: float | None = None
    offset: float | None = None

    def __post_init__(self) -> None:
        where = "ScenarioEvent"
        if self.kind not in SCENARIO_KINDS:
            raise ValueError(f"{where}.kind must be one of {list(SCENARIO_KINDS)}, got {self.kind!r}")
        at_s = _number(where, "at_s", self.at_s)
        if at_s < 0:
            raise ValueError(f"{where}.at_s must be >= 0 s, got {self.at_s!r}")
        object.__setattr__(self, "at_s", at_s)
        if self.cells is not None:
            if isinstance(self.cells, (str, bytes)) or not isinstance(self.cells, Sequence) or not self.cells:
                raise ValueError(f"{where}.cells must be a non-empty list of cell indices or null, got {self.cells!r}")
            for c in self.cells:
                if isinstance(c, bool) or not isinstance(c, int) or c < 0:
                    raise ValueError(f"{where}.cells must hold non-negative integers, got {c!r}")
            if len(set(self.cells)) != len(self.cells):
                raise ValueError(f"{where}.cells names a cell twice: {list(self.cells)}")
            object.__setattr__(self, "cells", tuple(int(c) for c in self.cells))
        given = {n for n in ("parameter", "factor", "state", "value", "offset") if getattr(self, n) is not None}
        required, optional = _KEYS[self.kind]
        allowed = (required | optional) - {"kind", "at_s", "cells"}
        extra = sorted(given - allowed)
        if extra:
            raise ValueError(f"{where}: a {self.kind} event takes no {extra}; it takes {sorted(allowed)}")
        missing = sorted((required - {"kind", "at_s"}) - given)
        if missing:
            raise ValueError(f"{where}: a {self.kind} event needs {missing}")
        if self.kind == "drift":
            if self.parameter not in DRIFT_PARAMETERS:
                raise ValueError(f"{where}.parameter must be one of {list(DRIFT_PARAMETERS)}, got {self.parameter!r}")
            factor = _number(where, "factor", self.factor)
            if factor <= 0:
                raise ValueError(f"{where}.factor must be > 0, got {self.factor!r}")
            object.__setattr__(self, "factor", factor)
        else:
            if self.state not in STATE_NAMES:
                raise ValueError(f"{where}.state must be one of {list(STATE_NAMES)}, got {self.state!r}")
            for name in ("value", "offset"):
                if getattr(self, name) is not None:
                    object.__setattr__(self, name, _number(where, name, getattr(self, name)))

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

    @classmethod
    def from_mapping(cls, data: Any, where: str = "scenario event") -> ScenarioEvent:
        """An event from a mapping (YAML); unknown or missing keys raise a ValueError naming them."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{where} must be a mapping with a 'kind', got {data!r}")
        kind = data.get("kind")
        if kind not in SCENARIO_KINDS:
            raise ValueError(f"{where}.kind must be one of {list(SCENARIO_KINDS)}, got {kind!r}")
        required, optional = _KEYS[kind]
        unknown = sorted(set(data) - required - optional)
        if unknown:
            raise ValueError(
                f"{where}: unknown key(s) {unknown} for a {kind} event; valid keys {sorted(required | optional)}"
            )
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"{where}: a {kind} event needs {missing}")
        values = dict(data)
        if values.get("cells") in ("all", None):
            values["cells"] = None
        try:
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {str(exc).removeprefix('ScenarioEvent')}") from None


@dataclass(frozen=True)
class ScenarioStatus:
    """An event of a running potline: when it fires and whether it has."""

    event: ScenarioEvent
    at_step: int
    fired: bool


def parse_scenario(data: Any, n_cells: int | None = None) -> tuple[ScenarioEvent, ...]:
    """The events of a ``scenario`` setting: a list of mappings or of :class:`ScenarioEvent`.

    With ``n_cells``, every cell an event names must exist. Errors name the event (``scenario[i]``).
    """
    if data is None:
        return ()
    if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Sequence):
        raise ValueError(f"scenario must be a list of events, got {data!r}")
    events = []
    for i, item in enumerate(data):
        where = f"scenario[{i}]"
        event = item if isinstance(item, ScenarioEvent) else ScenarioEvent.from_mapping(item, where)
        if n_cells is not None and event.cells is not None:
            bad = [c for c in event.cells if c >= n_cells]
            if bad:
                raise ValueError(f"{where}.cells {bad} do not exist; the potline has cells 0..{n_cells - 1}")
        events.append(event)
    return tuple(events)


def apply_drift(params: CellParams, parameter: str, factor: float) -> CellParams:
    """``params`` with ``parameter`` (:data:`DRIFT_PARAMETERS`) multiplied by ``factor``."""
    if parameter not in DRIFT_PARAMETERS:
        raise ValueError(f"parameter must be one of {list(DRIFT_PARAMETERS)}, got {parameter!r}")
    names = COMPOSITE_PARAMETERS.get(parameter, (parameter,))
    return params.with_changes(**{n: getattr(params, n) * factor for n in names})
