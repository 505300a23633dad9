"""The closed loop: controller, plant and (for surrogate MPCs) the twin, on the same seeded scenarios.

:func:`run_loop` runs one controller against one cell, through any :class:`~controller.plantlink.PlantLink`
(:func:`apps.runner.run_system` starts the whole system on loopback around it, or connects to a twin and a
plant that run elsewhere); :func:`run_cells` runs one controller per cell of one plant in lockstep. The loop
reads as three calls per interval::

    decision = controller.decide(y, current, v_prev, acd_now)   # MPC + safety layer
    plant.command(decision.v)                                   # plant service (or in-process potline)
    plant.advance(1); obs = plant.measure()                     # ... once per 10 s step of the interval
"""

from __future__ import annotations

import abc
import contextlib
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from controller.mpc import Plan
from controller.plantlink import Observation, PlantLink
from controller.problem import WINDOWS, controlled
from controller.safety import Decision, SafeController, Watchdog
from identification.pretrained import default_models_dir
from plant.config import PlantConfig
from plant.excitation import sample_initial_states
from plant.potline import Potline
from plant.signals import N_INPUTS, U
from plant.simulator import MeasurementNoise

__all__ = [
    "CONTROLLERS",
    "DEFAULT_MODELS",
    "CellRecord",
    "ControllerGroup",
    "LocalControllers",
    "Observed",
    "Request",
    "INITIAL_STATES",
    "OPERATING_MARGINS",
    "SURROGATE_DIRS",
    "TWIN_MODELS",
    "Scenario",
    "Trace",
    "operating_initial_state",
    "run_cells",
    "run_loop",
]

log = logging.getLogger(__name__)

CONTROLLERS = ("baseline", "oracle", "sparse", "dense")
"""The controllers of ``control.md``: the cell's own, and the NMPC on the true equations, on the sparse and on
the dense surrogate the twin serves."""

DEFAULT_MODELS = default_models_dir()
"""The surrogates that ship with alutwin, or ``$ALUTWIN_MODELS`` (:func:`identification.pretrained.default_models_dir`;
``sparse-inputskip`` and ``dense`` are used)."""

SURROGATE_DIRS = {"sparse": "sparse-inputskip", "dense": "dense"}
"""Which model directory each surrogate controller serves through the twin."""

TWIN_MODELS = {name: f"cell-{name}" for name in SURROGATE_DIRS}
"""The twin's registry name of each surrogate controller's model (the NMPC follows its alias ``champion``)."""

_STEPS_PER_HOUR = 360  # 10 s steps


INITIAL_STATES = ("operating", "wide")
"""How a scenario draws its initial state: ``"operating"`` (default) a random cell in normal operation, inside
the windows with a margin (:data:`OPERATING_MARGINS`); ``"wide"`` the identification study's distribution of
``plant.md`` (alumina 2-5 %, AlF3 9-13 %, bath 960-990 degC drawn independently)."""

OPERATING_MARGINS = {"alumina_pct": 0.25, "alf3_pct": 0.25, "superheat": 1.0, "ledge_mass": 250.0}
"""Margins inside each window (``controller.problem.WINDOWS``) the "operating" initial state keeps: alumina
2.25-3.75 %, AlF3 10.25-11.75 %, superheat 6-14 degC, ledge 2250-4250 kg."""

_X0_STREAM = 0x5CE0  # the initial state's own random stream, apart from the potline's (current, noise)


def operating_initial_state(seed: int) -> np.ndarray:
    """A random state (8,) of a cell in normal operation, drawn from ``seed`` alone.

    Rejection sampling of the study's distribution (``plant.excitation.sample_initial_states`` with continuous
    percentages, a seeded generator of its own): the first draw whose alumina, AlF3, superheat
    (``T_bath - T_liq`` of the drawn composition, ``plant.physics.algebraic``) and ledge mass all lie inside
    their windows by :data:`OPERATING_MARGINS`. About 4 % of the draws qualify, so the state is a uniform draw
    from that part of the study's box, consistent with the plant's algebraic relations by construction.
    """
    rng = np.random.default_rng([seed, _X0_STREAM])
    u = np.zeros(N_INPUTS)
    u[U.CURRENT], u[U.ACD] = 140_000.0, 0.05  # the inputs do not enter the windows' quantities
    for _ in range(1000):
        x = sample_initial_states(rng, 256, integer_percent=False)  # (256, 8)
        values, _ = controlled(x, u)
        ok = np.ones(len(x), dtype=bool)
        for value, window in zip(values, WINDOWS, strict=True):
            m = OPERATING_MARGINS[window.name]
            ok &= (value >= window.low + m) & (value <= window.high - m)
        if ok.any():
            return x[int(np.flatnonzero(ok)[0])].copy()
    raise RuntimeError(f"no initial state inside the operating windows after 256000 draws (seed {seed})")


@dataclass(frozen=True)
class Scenario:
    """A seeded scenario: random initial state and "aprbs" line-current steps drawn from ``seed``.

    Parameters
    ----------
    hours : float
        Plant time (24 h = 8640 steps of 10 s).
    seed : int
        Seeds the initial state, the current steps and the noise (``plant.potline.Potline``).
    noise : bool
        Measurement noise (``plant.simulator.MeasurementNoise`` default: 2 degC on the bath temperature).
    initial : str
        One of :data:`INITIAL_STATES`. ``control.md`` asks for "a random initial state"; the default draws a
        cell in normal operation (:func:`operating_initial_state`), since from the study's wide box (AlF3 up
        to 13 %, which only dilution lowers, over days) no controller can hold the windows in 24 h.
    """

    hours: float
    seed: int
    noise: bool = False
    initial: str = "operating"

    def __post_init__(self) -> None:
        h = self.hours
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not math.isfinite(h) or h <= 0:
            raise ValueError(f"Scenario.hours must be a positive number, got {h!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"Scenario.seed must be an integer >= 0, got {self.seed!r}")
        if round(h * _STEPS_PER_HOUR) < 1:
            raise ValueError(f"Scenario.hours = {h!r} is shorter than one 10 s step")
        if self.initial not in INITIAL_STATES:
            raise ValueError(f"Scenario.initial must be one of {list(INITIAL_STATES)}, got {self.initial!r}")

    @property
    def n_steps(self) -> int:
        return round(self.hours * _STEPS_PER_HOUR)

    def plant_config(self) -> PlantConfig:
        """The plant service's settings for this scenario (one cell, stepped, port 0)."""
        noise = MeasurementNoise().std if self.noise else None
        return PlantConfig(n_cells=1, seed=self.seed, port=0, current_profile="aprbs", noise_std=noise, grace_s=0.0)

    def initial_state(self) -> np.ndarray | None:
        """The initial state (8,), or None where the potline draws it itself (``initial="wide"``)."""
        return operating_initial_state(self.seed) if self.initial == "operating" else None

    def potline(self) -> Potline:
        """The cell of this scenario, in process (the plant service serves the same object)."""
        x0 = self.initial_state()
        return Potline.from_config(self.plant_config(), x0=None if x0 is None else x0[None, :])


@dataclass
class Trace:
    """One controller's run on one scenario.

    Attributes
    ----------
    controller : its name.
    x : (T + 1, 8) true states; ``y`` the measured ones.
    u : (T, 5) inputs applied.
    modes : (n_intervals,) what decided each interval (``"auto"`` for the baseline).
    plans : every solve.
    safety : the safety layer's summary (None for the baseline).
    fault : the plant's fault in words, or "".
    model : what the MPC's model was.
    wall_s : wall time of the run.
    watchdog_expired : how often the measurement watchdog handed the cell back.
    start_step : the plant's step at the first measurement (0 for a fresh plant).
    missed_steps : steps of a real-time plant the run could not record (it fell too far behind).
    """

    controller: str
    scenario: Scenario
    x: np.ndarray
    y: np.ndarray
    u: np.ndarray
    dt: float
    modes: list[str] = field(default_factory=list)
    plans: list[Plan] = field(default_factory=list)
    safety: dict[str, Any] | None = None
    fault: str = ""
    model: dict[str, Any] | None = None
    wall_s: float = 0.0
    watchdog_expired: int = 0
    start_step: int = 0
    missed_steps: int = 0


def run_loop(
    plant: PlantLink,
    controller: SafeController | None,
    n_steps: int,
    *,
    interval_steps: int = 60,
    name: str = "controller",
    scenario: Scenario | None = None,
    watchdog_s: float = 0.0,
    progress: bool = True,
) -> Trace:
    """Run ``controller`` (None: the cell's own controllers) against ``plant`` for ``n_steps`` steps.

    Parameters
    ----------
    plant : the cell.
    controller : the MPC behind its safety layer, or None for the baseline.
    n_steps : 10 s steps to run.
    interval_steps : steps per control interval.
    watchdog_s : hand the cell back to its own controllers when no measurement arrives for this long (0: off).
    progress : show a progress bar.

    Returns
    -------
    Trace
    """
    return run_cells(
        [plant],
        [controller],
        n_steps,
        interval_steps=interval_steps,
        names=[name],
        scenario=scenario,
        watchdog_s=watchdog_s,
        progress=progress,
    )[0]


@dataclass(frozen=True)
class Request:
    """What a cell's controller decides from at the start of an interval (:meth:`SafeController.decide`'s
    arguments)."""

    y: np.ndarray  # (8,) measured state
    current: float  # A, measured line current
    v_prev: np.ndarray  # (3,) manipulated inputs of the last interval (mean feeds, last ACD)
    acd_prev: float  # m, the ACD applied now
    step: int  # the plant's step


@dataclass(frozen=True)
class Observed:
    """One interval as applied, for the offset-free update (:meth:`NMPC.observe`'s arguments)."""

    y_start: np.ndarray  # (8,) measured at the interval's start
    v_mean: np.ndarray  # (3,) applied inputs, interval means
    current: float  # A, interval mean
    y_end: np.ndarray  # (8,) measured at its end


@dataclass
class CellRecord:
    """What a cell's controller did over a run: every solve, the safety layer's summary, and its model."""

    plans: list[Plan]
    safety: dict[str, Any] | None
    model: dict[str, Any] | None = None


class ControllerGroup(abc.ABC):
    """The controllers of :func:`run_cells`' cells, asked together each interval: in this process
    (:class:`LocalControllers`) or hosted elsewhere (``apps.fleet.control``: Ray actors, each holding the NMPCs,
    warm starts and safety layers of its cells)."""

    @abc.abstractmethod
    def active(self) -> list[bool]:
        """Per cell: whether an NMPC controls it (False: the cell's own controllers, the baseline)."""

    @abc.abstractmethod
    def decide(self, requests: Mapping[int, Request]) -> dict[int, Decision]:
        """Each requested cell's decision for the next interval (cell index -> decision)."""

    @abc.abstractmethod
    def observe(self, observed: Mapping[int, Observed]) -> None:
        """Pass each cell's applied interval to its NMPC."""

    @abc.abstractmethod
    def records(self) -> list[CellRecord | None]:
        """Per cell: its record (None for a baseline cell)."""


class LocalControllers(ControllerGroup):
    """One :class:`SafeController` (or None: the baseline) per cell, asked one after another in this process."""

    def __init__(self, controllers: Sequence[SafeController | None]) -> None:
        self.controllers = list(controllers)

    def active(self) -> list[bool]:
        return [c is not None for c in self.controllers]

    def decide(self, requests: Mapping[int, Request]) -> dict[int, Decision]:
        out = {}
        for i, r in requests.items():
            controller = self.controllers[i]
            if controller is None:
                raise ValueError(f"cell {i} has no controller (baseline): nothing to decide")
            out[i] = controller.decide(r.y, r.current, r.v_prev, r.acd_prev, step=r.step)
        return out

    def observe(self, observed: Mapping[int, Observed]) -> None:
        for i, o in observed.items():
            controller = self.controllers[i]
            if controller is not None:
                controller.mpc.observe(o.y_start, o.v_mean, o.current, o.y_end)

    def records(self) -> list[CellRecord | None]:
        return [None if c is None else CellRecord(list(c.plans), c.summary()) for c in self.controllers]


@dataclass
class _Lane:
    """One cell of :func:`run_cells`."""

    index: int
    plant: PlantLink
    active: bool
    name: str
    obs: Observation
    start_step: int
    xs: list[np.ndarray]
    ys: list[np.ndarray]
    us: list[np.ndarray] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    fault: str = ""
    watchdog: Watchdog | None = None

    def request(self, k: int, interval_steps: int) -> Request:
        """What the cell's controller decides from at step ``k``."""
        obs = self.obs
        if self.us:
            seg = np.asarray(self.us[-interval_steps:])  # (n, 5)
            v_prev = np.array([seg[:, 0].mean(), seg[:, 2].mean(), seg[-1, 4]])
        else:
            v_prev = np.array([obs.u[0], obs.u[2], obs.u[4]])
        return Request(obs.y, float(obs.u[1]), v_prev, float(obs.u[4]), k)

    def apply(self, decision: Decision | None) -> None:
        """Send the decision to the cell (None: the baseline, nothing to send)."""
        if decision is None:
            self.modes.append("auto")
            return
        self.plant.command(decision.v)
        self.modes.append(decision.mode)

    def step(self) -> bool:
        """One step of the cell, recorded; False once the cell has faulted."""
        self.plant.advance(1)
        obs = self.obs = self.plant.measure()
        if self.watchdog is not None:
            self.watchdog.feed()
        self.xs.append(obs.x)
        self.ys.append(obs.y)
        self.us.append(obs.u)
        return not obs.fault


def run_cells(
    plants: Sequence[PlantLink],
    controllers: Sequence[SafeController | None] | ControllerGroup,
    n_steps: int,
    *,
    interval_steps: int = 60,
    names: Sequence[str] | None = None,
    scenario: Scenario | None = None,
    watchdog_s: float = 0.0,
    progress: bool = True,
    timings: list[dict[str, float]] | None = None,
) -> list[Trace]:
    """Run one controller per cell, the cells of one plant in lockstep, for ``n_steps`` steps of its clock.

    Every interval the controllers decide for their cells together (:meth:`ControllerGroup.decide`), then every
    cell advances one step at a time (links of one plant share its clock, so the plant steps once per step;
    :mod:`controller.plantlink`). A cell that faults stops its own run; the others go on.

    Parameters
    ----------
    plants : one link per cell.
    controllers : for each cell the MPC behind its safety layer, or None for the cell's own controllers; or a
        :class:`ControllerGroup` of one controller per cell.
    n_steps : 10 s steps to run.
    interval_steps : steps per control interval.
    names : the runs' names (progress bar, log), one per cell.
    scenario : recorded in every trace.
    watchdog_s : hand a cell back to its own controllers when no measurement arrives for this long (0: off); while
        the controllers decide (no measurement is read then) up to one interval of plant time is allowed.
    progress : show a progress bar.
    timings : when given, one entry per interval is appended: ``step``, ``decide_s`` (wall time of all the
        cells' decisions) and ``advance_s`` (of the interval's steps and measurements).

    Returns
    -------
    list of Trace, one per cell, in the order of ``plants``.
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    group = controllers if isinstance(controllers, ControllerGroup) else LocalControllers(controllers)
    active = group.active()
    names = [f"cell {i}" for i in range(len(plants))] if names is None else list(names)
    if not plants or len(active) != len(plants) or len(names) != len(plants):
        raise ValueError(
            f"run_cells needs one controller and one name per plant link, got {len(plants)} links, "
            f"{len(active)} controllers and {len(names)} names"
        )
    t0 = time.perf_counter()
    lanes: list[_Lane] = []
    for i, (plant, on, name) in enumerate(zip(plants, active, names, strict=True)):
        obs = plant.measure()
        lanes.append(_Lane(i, plant, on, name, obs, obs.step, [obs.x], [obs.y]))
    for lane in lanes:
        if not lane.active:
            lane.plant.automatic()
        if watchdog_s > 0:
            lane.watchdog = Watchdog(watchdog_s, lane.plant.automatic)
    bar = tqdm(total=n_steps, desc=_bar_name(names), unit="step", disable=not progress or None, leave=False)
    try:
        k = 0
        running = list(lanes)
        while k < n_steps and running:
            t_decide = time.perf_counter()
            requests = {lane.index: lane.request(k, interval_steps) for lane in running if lane.active}
            with contextlib.ExitStack() as held:  # no measurement is read while the controllers decide
                for lane in running:
                    if lane.watchdog is not None:
                        held.enter_context(lane.watchdog.hold(interval_steps * lane.plant.dt))
                decisions = group.decide(requests) if requests else {}
            for lane in running:
                lane.apply(decisions.get(lane.index))
            t_advance = time.perf_counter()
            starts = [lane.obs.y for lane in running]
            n = min(interval_steps, n_steps - k)
            done = [0] * len(running)
            for _ in range(n):
                healthy = [i for i, lane in enumerate(running) if done[i] >= 0]
                if not healthy:
                    break
                for i in healthy:
                    done[i] = done[i] + 1 if running[i].step() else -1
            bar.update(n)
            if timings is not None:
                now = time.perf_counter()
                timings.append({"step": k, "decide_s": t_advance - t_decide, "advance_s": now - t_advance})
            k += n
            observed = {}
            for lane, y_start, steps in zip(running, starts, done, strict=True):
                obs = lane.obs
                decision = decisions.get(lane.index)
                if steps < 0:
                    lane.fault = f"step {obs.step}: {obs.fault_text}"
                    log.error("%s: the cell faulted at %s", lane.name, lane.fault)
                    if lane.watchdog is not None:  # a faulted cell takes no commands: nothing to hand back
                        lane.watchdog.close()
                elif decision is not None and decision.mode != "fallback" and steps == interval_steps:
                    seg = np.asarray(lane.us[-steps:])  # (n, 5)
                    v_mean = np.array([seg[:, 0].mean(), seg[:, 2].mean(), seg[:, 4].mean()])
                    observed[lane.index] = Observed(y_start, v_mean, float(seg[:, 1].mean()), obs.y)
            if observed:
                group.observe(observed)
            running = [lane for lane, steps in zip(running, done, strict=True) if steps >= 0]
    finally:
        bar.close()
        for lane in lanes:
            if lane.watchdog is not None:
                lane.watchdog.close()
        for lane in lanes:
            if lane.active:
                with contextlib.suppress(Exception):  # leave the cell under its own control
                    lane.plant.automatic()
    wall_s = time.perf_counter() - t0
    return [
        Trace(
            controller=lane.name,
            scenario=scenario or Scenario(hours=n_steps / _STEPS_PER_HOUR, seed=0),
            x=np.asarray(lane.xs),
            y=np.asarray(lane.ys),
            u=np.asarray(lane.us).reshape(-1, 5),
            dt=lane.plant.dt,
            modes=lane.modes,
            plans=record.plans if record is not None else [],
            safety=record.safety if record is not None else None,
            fault=lane.fault,
            model=record.model if record is not None else None,
            wall_s=wall_s,
            watchdog_expired=lane.watchdog.expired if lane.watchdog is not None else 0,
            start_step=lane.start_step,
            missed_steps=lane.plant.missed,
        )
        for lane, record in zip(lanes, group.records(), strict=True)
    ]


def _bar_name(names: Sequence[str]) -> str:
    return " / ".join(names) if len(names) <= 4 else f"{len(names)} cells"
