"""A potline: N cells sharing one line current, stepped together, with manual commands and latched faults.

No gRPC here: :class:`Potline` is the plain object that :mod:`plant.service` serves. Shapes: N cells, states
``(N, 8)``, inputs ``(N, 5)``. Each step uses :func:`plant.simulator.compose_inputs` and
:func:`plant.simulator.step` batched over the cells, so a potline reproduces :func:`plant.simulator.simulate`
under the same inputs, to rounding (the simulator may run its compiled C engine, whose ``exp``/``pow`` can
differ from numpy's in the last bit). Its settings are :class:`plant.config.PlantConfig`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from plant.config import COMMAND_INDEX, COMMANDS, CURRENT_PROFILES, PlantConfig
from plant.domain import Fault, check_domain
from plant.excitation import sample_initial_states
from plant.params import DEFAULT_LIMITS, DEFAULT_PARAMS, CellParams, DomainLimits
from plant.physics import OUTPUT_FUNCTIONS, algebraic
from plant.scenarios import ScenarioEvent, ScenarioStatus, apply_drift, parse_scenario
from plant.signals import N_STATES, Signal
from plant.simulator import DT, MeasurementNoise, compose_inputs, step, validate_states

__all__ = [
    "CellFaulted",
    "CellSnapshot",
    "CurrentProfile",
    "InvalidCommand",
    "OUTPUTS",
    "OUTPUT_NAMES",
    "Potline",
    "PotlineError",
    "UnknownCell",
]


class PotlineError(Exception):
    """Base class of the potline's errors (each maps to one gRPC status code in the service)."""


class UnknownCell(PotlineError, LookupError):
    """A cell index that the potline does not have."""


class CellFaulted(PotlineError):
    """The cell has left the model's valid domain and no longer accepts commands."""


class InvalidCommand(PotlineError, ValueError):
    """A command value that is out of bounds or not a finite number."""


class CurrentProfile:
    """The line current, one value per step, drawn lazily so that a potline can run without end.

    ``"constant"``: ``level`` amperes. ``"aprbs"``: the current steps of the "aprbs" excitation of
    ``plant.md`` (140 kA plus a uniform offset in [-22 kA, 15 kA], each level held a uniform 100-1100 steps),
    drawn from ``rng``.
    """

    APRBS_OFFSET = (-22_000.0, 15_000.0)  # A, around 140 kA
    APRBS_HOLD = (100, 1100)  # steps
    APRBS_CENTRE = 140_000.0  # A

    def __init__(self, kind: str, rng: np.random.Generator, level: float = 140_000.0) -> None:
        if kind not in CURRENT_PROFILES:
            raise ValueError(f"unknown current profile {kind!r}; must be one of {sorted(CURRENT_PROFILES)}")
        self.kind = kind
        self._rng = rng
        self._level = float(level)
        self._left = 0 if kind == "aprbs" else -1  # steps the present level is still held (-1: forever)

    def next(self) -> float:
        """The current (A) for the next step."""
        if self._left == 0:
            self._level = self.APRBS_CENTRE + float(self._rng.uniform(*self.APRBS_OFFSET))
            self._left = int(self._rng.integers(self.APRBS_HOLD[0], self.APRBS_HOLD[1] + 1))
        if self._left > 0:
            self._left -= 1
        return self._level


OUTPUTS: tuple[Signal, ...] = (
    Signal(0, "superheat", "degC", "bath temperature minus liquidus temperature", 5.0, 15.0),
    Signal(1, "alumina_pct", "%", "dissolved alumina, % of bath mass", 2.0, 5.0),
    Signal(2, "alf3_pct", "%", "AlF3, % of bath mass", 9.0, 13.0),
    Signal(3, "liquidus", "degC", "liquidus temperature of the bath", 945.0, 980.0),
    Signal(4, "cell_voltage", "V", "cell voltage as modelled (bubble plus ohmic bath drop)", 1.0, 2.0),
    Signal(5, "power", "W", "electrical power into the bath", 1.2e5, 3.0e5),
)
"""The algebraic outputs a snapshot reports (``plant.md``, "Algebraic quantities"), with units."""

OUTPUT_NAMES: tuple[str, ...] = tuple(s.name for s in OUTPUTS)


@dataclass(frozen=True)
class CellSnapshot:
    """One cell at one step (arrays are read-only copies).

    Attributes
    ----------
    cell : index of the cell.
    step : steps taken; the state is ``x[step]`` (held at the last valid state once the cell faulted).
    time_s : plant time, s.
    x : (8,) true state.
    y : (8,) measured state (``x`` plus noise; ``x`` itself when the plant has no noise).
    u : (5,) input applied over the last step; at step 0 the input the cell would apply now.
    outputs : the algebraic quantities at ``(y, u)``, keyed as in :data:`OUTPUT_NAMES`.
    manual : (3,) manual commands in the order of :data:`plant.config.COMMANDS`, NaN where automatic.
    fault : the latched fault (``Fault.NONE`` while healthy).
    fault_step : step k whose result left the valid domain, or -1.
    fault_text : the fault in words.
    params : the cell's model constants now (drift scenarios change them).
    """

    cell: int
    step: int
    time_s: float
    x: np.ndarray
    y: np.ndarray
    u: np.ndarray
    outputs: dict[str, float]
    manual: np.ndarray
    fault: Fault
    fault_step: int
    fault_text: str
    params: CellParams = DEFAULT_PARAMS


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64)
    a.flags.writeable = False
    return a


class Potline:
    """N cells on one line current, advanced together in steps of ``dt``.

    Parameters
    ----------
    n_cells : int
        Number of cells.
    seed : int or numpy.random.Generator
        Source of the initial states (unless ``x0`` is given), the "aprbs" current and the noise.
    dt : float
        Sample time, s.
    current_profile : str
        ``"constant"`` or ``"aprbs"`` (see :class:`CurrentProfile`).
    line_current : float
        A, the level of the constant profile.
    acd : float
        m, the ACD of cells whose ACD is not commanded.
    noise : MeasurementNoise, optional
        Measurement noise; None for exact measurements.
    x0 : array_like (n_cells, 8), optional
        Initial states; drawn with :func:`plant.excitation.sample_initial_states` when absent.
    params, limits
        Model constants and valid domain.
    scenario : sequence of ScenarioEvent
        Drifts (a cell's constants change from a step on) and sensor faults (only the measured ``y`` changes),
        see :mod:`plant.scenarios`.

    Notes
    -----
    Thread-safe: every public method holds the potline's lock. Deterministic under a seed: the initial
    states, the current and the noise come from independent streams spawned from the seed.
    """

    def __init__(
        self,
        n_cells: int,
        seed: int | np.random.Generator,
        *,
        dt: float = DT,
        current_profile: str = "constant",
        line_current: float = 140_000.0,
        acd: float = 0.05,
        noise: MeasurementNoise | None = None,
        x0: np.ndarray | None = None,
        params: CellParams = DEFAULT_PARAMS,
        limits: DomainLimits = DEFAULT_LIMITS,
        scenario: Sequence[ScenarioEvent] = (),
    ) -> None:
        if isinstance(n_cells, bool) or not isinstance(n_cells, (int, np.integer)) or n_cells < 1:
            raise ValueError(f"n_cells must be a positive integer, got {n_cells!r}")
        if not (math.isfinite(dt) and dt > 0):
            raise ValueError(f"dt must be a positive number of seconds, got {dt!r}")
        parent = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        rng_x0, rng_current, rng_noise = parent.spawn(3)
        self.n_cells = int(n_cells)
        self.dt = float(dt)
        self.default_acd = float(acd)
        self.line_current = float(line_current)
        self.noise = noise
        self.params = params
        self.limits = limits
        self._profile = CurrentProfile(current_profile, rng_current, line_current)
        self._rng_noise = rng_noise
        events = parse_scenario(scenario, int(n_cells))
        self._events: tuple[tuple[ScenarioEvent, int], ...] = tuple((e, e.at_step(self.dt)) for e in events)
        self._fired = [False] * len(events)
        self._cell_params: list[CellParams] = [params] * int(n_cells)  # drifts replace entries
        self._stuck = np.full((int(n_cells), N_STATES), np.nan)  # (N, 8) NaN = not stuck
        self._stuck_pending = np.zeros((int(n_cells), N_STATES), dtype=bool)  # (N, 8) stuck at the next reading
        self._offset = np.zeros((int(n_cells), N_STATES))  # (N, 8)
        if x0 is None:
            x = sample_initial_states(rng_x0, self.n_cells)
        else:
            x = validate_states(x0)
            if x.shape[0] != self.n_cells:
                raise ValueError(f"x0 must have shape ({self.n_cells}, {N_STATES}), got {np.shape(x0)}")
            bad = check_domain(x, limits)
            if np.any(bad):
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(f"x0[{i}] is outside the model's valid domain: {Fault(int(bad[i])).describe(limits)}")
        self._lock = threading.RLock()
        self._k = 0
        self._x = x.copy()  # (N, 8) true state
        self._manual = np.full((self.n_cells, len(COMMANDS)), np.nan)  # (N, 3) NaN = automatic
        self._fault = np.zeros(self.n_cells, dtype=np.int8)  # (N,) Fault codes
        self._fault_step = np.full(self.n_cells, -1, dtype=np.int64)  # (N,)
        self._current = self._profile.next()  # A, for the next step
        self._fire_events()
        self._u = self._inputs(self._x)  # (N, 5): at step 0, what the cells would apply now
        self._y = self._measure(self._x)  # (N, 8)

    @classmethod
    def from_config(
        cls, config: PlantConfig, *, x0: np.ndarray | None = None, params: CellParams = DEFAULT_PARAMS
    ) -> Potline:
        """The potline a :class:`PlantConfig` describes."""
        return cls(
            config.n_cells,
            config.seed,
            dt=config.dt,
            current_profile=config.current_profile,
            line_current=config.line_current,
            acd=config.acd,
            noise=None if config.noise_std is None else MeasurementNoise(config.noise_std),
            x0=x0,
            params=params,
            limits=config.limits,
            scenario=config.scenario,
        )

    # -- reading -----------------------------------------------------------------------------------------

    @property
    def step_index(self) -> int:
        """Steps taken so far."""
        with self._lock:
            return self._k

    @property
    def states(self) -> np.ndarray:
        """(N, 8) copy of the true states."""
        with self._lock:
            return self._x.copy()

    @property
    def faults(self) -> np.ndarray:
        """(N,) fault codes (int8, see :class:`plant.domain.Fault`)."""
        with self._lock:
            return self._fault.copy()

    def cell_params(self, cell: int) -> CellParams:
        """The model constants of ``cell`` now (drift scenarios change them)."""
        with self._lock:
            return self._cell_params[self.check_cell(cell)]

    def scenario_status(self) -> tuple[ScenarioStatus, ...]:
        """The scenario events, the step each fires at, and whether it has fired."""
        with self._lock:
            return tuple(ScenarioStatus(e, k, f) for (e, k), f in zip(self._events, self._fired, strict=True))

    @property
    def manual(self) -> np.ndarray:
        """(N, 3) manual commands in the order of :data:`plant.config.COMMANDS`, NaN where automatic."""
        with self._lock:
            return self._manual.copy()

    def check_cell(self, cell: int) -> int:
        """``cell`` as an int, or :class:`UnknownCell`."""
        if isinstance(cell, bool) or not isinstance(cell, (int, np.integer)) or not 0 <= cell < self.n_cells:
            raise UnknownCell(f"cell {cell!r} does not exist; this potline has cells 0..{self.n_cells - 1}")
        return int(cell)

    def snapshots(self, cells: Iterable[int] | None = None) -> list[CellSnapshot]:
        """Snapshots of ``cells`` (default all) at the present step."""
        with self._lock:
            idx = list(range(self.n_cells)) if cells is None else [self.check_cell(c) for c in cells]
            if not idx:
                return []
            with np.errstate(all="ignore"):
                alg = algebraic(self._y[idx], self._u[idx], self.params)
                out = {name: OUTPUT_FUNCTIONS[name](alg) for name in OUTPUT_NAMES}
            snaps = []
            for j, c in enumerate(idx):
                fault = Fault(int(self._fault[c]))
                snaps.append(
                    CellSnapshot(
                        cell=c,
                        step=self._k,
                        time_s=self._k * self.dt,
                        x=_frozen(self._x[c]),
                        y=_frozen(self._y[c]),
                        u=_frozen(self._u[c]),
                        outputs={name: float(out[name][j]) for name in OUTPUT_NAMES},
                        manual=_frozen(self._manual[c]),
                        fault=fault,
                        fault_step=int(self._fault_step[c]),
                        fault_text=fault.describe(self.limits),
                        params=self._cell_params[c],
                    )
                )
            return snaps

    def snapshot(self, cell: int) -> CellSnapshot:
        """The snapshot of one cell at the present step."""
        return self.snapshots([cell])[0]

    # -- commands ----------------------------------------------------------------------------------------

    def set_commands(self, commands: Iterable[tuple[int, str, float]]) -> int:
        """Set manual commands ``(cell, field, value)``; a NaN value hands the input back (automatic).

        All commands are checked before any is applied. They act from the next step on.

        Returns
        -------
        int
            The present step index (the commands act on the step from it to the next).

        Raises
        ------
        UnknownCell
            A cell index out of range.
        CellFaulted
            A cell that has faulted.
        InvalidCommand
            An unknown field, a non-finite value other than NaN, or a value out of bounds.
        """
        checked = []
        with self._lock:
            for cell, field, value in commands:
                c = self.check_cell(cell)
                if field not in COMMAND_INDEX:
                    raise InvalidCommand(f"unknown command field {field!r}; must be one of {list(COMMAND_INDEX)}")
                spec = COMMANDS[COMMAND_INDEX[field]]
                v = float(value)
                if not math.isnan(v):
                    if not math.isfinite(v):
                        raise InvalidCommand(f"{field} = {v!r} for cell {c} is not a finite number")
                    if not spec.low <= v <= spec.high:
                        raise InvalidCommand(
                            f"{field} = {v:g} {spec.unit} for cell {c} is outside the bounds "
                            f"[{spec.low:g}, {spec.high:g}] {spec.unit}"
                        )
                if self._fault[c]:
                    raise CellFaulted(
                        f"cell {c} has faulted at step {int(self._fault_step[c])} "
                        f"({Fault(int(self._fault[c])).describe(self.limits)}) and takes no commands"
                    )
                checked.append((c, COMMAND_INDEX[field], v))
            for c, j, v in checked:
                self._manual[c, j] = v
            return self._k

    # -- advancing ---------------------------------------------------------------------------------------

    def _inputs(self, x: np.ndarray) -> np.ndarray:
        acd_cmd = self._manual[:, COMMAND_INDEX["acd"]]
        acd = np.where(np.isfinite(acd_cmd), acd_cmd, self.default_acd)  # (N,)
        return compose_inputs(
            x,
            self._current,
            acd,
            self.dt,
            alumina_cmd=self._manual[:, COMMAND_INDEX["alumina_feed"]],
            alf3_cmd=self._manual[:, COMMAND_INDEX["alf3_feed"]],
        )

    def _measure(self, x: np.ndarray) -> np.ndarray:
        """The measurement of every cell: noise, then the sensor faults of the scenario."""
        y = x.copy() if self.noise is None else self.noise.apply(self._rng_noise, x)
        if self._stuck_pending.any():  # a sensor stuck "at its reading" holds this reading from now on
            self._stuck[self._stuck_pending] = y[self._stuck_pending]
            self._stuck_pending[:] = False
        y = y + self._offset
        return np.where(np.isnan(self._stuck), y, self._stuck)

    def _fire_events(self) -> None:
        """Apply the scenario events due at the present step (called once the potline reaches a step)."""
        for i, (event, at) in enumerate(self._events):
            if self._fired[i] or at > self._k:
                continue
            self._fired[i] = True
            cells = range(self.n_cells) if event.cells is None else event.cells
            for c in cells:
                if event.kind == "drift":
                    self._cell_params[c] = apply_drift(self._cell_params[c], *event.drift)
                elif event.kind == "offset_sensor":
                    self._offset[c, event.state_index] += event.offset
                elif event.value is None:
                    self._stuck_pending[c, event.state_index] = True
                else:
                    self._stuck[c, event.state_index] = event.value

    def _advance(self, x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One step of every cell with its own constants (one batched call per distinct set of constants)."""
        first = self._cell_params[0]
        if all(p is first for p in self._cell_params):
            return step(x, u, self.dt, first, self.limits)
        x_next = np.empty_like(x)  # (N, 8)
        fault = np.empty(self.n_cells, dtype=np.int8)  # (N,)
        groups: dict[int, list[int]] = {}
        for c, p in enumerate(self._cell_params):
            groups.setdefault(id(p), []).append(c)
        for idx in groups.values():
            x_next[idx], fault[idx] = step(x[idx], u[idx], self.dt, self._cell_params[idx[0]], self.limits)
        return x_next, fault

    def step(self, n: int = 1) -> int:
        """Advance every cell by ``n`` steps; faulted cells hold their last valid state.

        Returns
        -------
        int
            Steps taken so far, after this call.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        with self._lock:
            for _ in range(int(n)):
                alive = self._fault == 0  # (N,)
                u = self._inputs(self._x)  # (N, 5)
                x_next, fault = self._advance(self._x, u)
                new = alive & (fault != 0)
                self._fault[new] = fault[new]
                self._fault_step[new] = self._k
                self._u = np.where(alive[:, None], u, self._u)
                self._x = np.where(alive[:, None], x_next, self._x)
                self._k += 1
                self._fire_events()
                y = self._measure(self._x)  # drawn for every cell, so faults do not shift the noise stream
                self._y = np.where(alive[:, None], y, self._y)
                self._current = self._profile.next()
            return self._k

    @property
    def current(self) -> float:
        """The line current (A) the next step will apply."""
        with self._lock:
            return self._current

    def __repr__(self) -> str:
        return f"Potline(n_cells={self.n_cells}, step={self.step_index}, profile={self._profile.kind!r})"
