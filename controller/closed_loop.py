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

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from controller.mpc import Plan
from controller.plantlink import Observation, PlantLink
from controller.problem import WINDOWS, controlled
from controller.safety import SafeController, Watchdog
from identification.pretrained import default_models_dir
from plant.config import PlantConfig
from plant.excitation import sample_initial_states
from plant.potline import Potline
from plant.signals import N_INPUTS, U
from plant.simulator import MeasurementNoise

__all__ = [
    "CONTROLLERS",
    "DEFAULT_MODELS",
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


@dataclass
class _Lane:
    """One cell and its controller in :func:`run_cells`."""

    plant: PlantLink
    controller: SafeController | None
    name: str
    obs: Observation
    start_step: int
    xs: list[np.ndarray]
    ys: list[np.ndarray]
    us: list[np.ndarray] = field(default_factory=list)
    modes: list[str] = field(default_factory=list)
    fault: str = ""
    watchdog: Watchdog | None = None

    def decide(self, k: int, interval_steps: int) -> Any:
        """The controller's decision for the interval from step ``k``, sent to the cell (None: the baseline)."""
        if self.controller is None:
            self.modes.append("auto")
            return None
        obs = self.obs
        if self.us:
            seg = np.asarray(self.us[-interval_steps:])  # (n, 5)
            v_prev = np.array([seg[:, 0].mean(), seg[:, 2].mean(), seg[-1, 4]])
        else:
            v_prev = np.array([obs.u[0], obs.u[2], obs.u[4]])
        decision = self.controller.decide(obs.y, float(obs.u[1]), v_prev, float(obs.u[4]), step=k)
        self.plant.command(decision.v)
        self.modes.append(decision.mode)
        return decision

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
    controllers: Sequence[SafeController | None],
    n_steps: int,
    *,
    interval_steps: int = 60,
    names: Sequence[str] | None = None,
    scenario: Scenario | None = None,
    watchdog_s: float = 0.0,
    progress: bool = True,
) -> list[Trace]:
    """Run one controller per cell, the cells of one plant in lockstep, for ``n_steps`` steps of its clock.

    Every interval each controller decides for its cell, then every cell advances one step at a time (links of
    one plant share its clock, so the plant steps once per step; :mod:`controller.plantlink`). A cell that
    faults stops its own run; the others go on.

    Parameters
    ----------
    plants : one link per cell.
    controllers : for each cell the MPC behind its safety layer, or None for the cell's own controllers.
    n_steps : 10 s steps to run.
    interval_steps : steps per control interval.
    names : the runs' names (progress bar, log), one per cell.
    scenario : recorded in every trace.
    watchdog_s : hand a cell back to its own controllers when no measurement arrives for this long (0: off).
    progress : show a progress bar.

    Returns
    -------
    list of Trace, one per cell, in the order of ``plants``.
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    names = [f"cell {i}" for i in range(len(plants))] if names is None else list(names)
    if not plants or len(controllers) != len(plants) or len(names) != len(plants):
        raise ValueError(
            f"run_cells needs one controller and one name per plant link, got {len(plants)} links, "
            f"{len(controllers)} controllers and {len(names)} names"
        )
    t0 = time.perf_counter()
    lanes: list[_Lane] = []
    for plant, controller, name in zip(plants, controllers, names, strict=True):
        obs = plant.measure()
        lanes.append(_Lane(plant, controller, name, obs, obs.step, [obs.x], [obs.y]))
    for lane in lanes:
        if lane.controller is None:
            lane.plant.automatic()
        if watchdog_s > 0:
            lane.watchdog = Watchdog(watchdog_s, lane.plant.automatic)
    bar = tqdm(total=n_steps, desc=" / ".join(names), unit="step", disable=not progress or None, leave=False)
    try:
        k = 0
        running = list(lanes)
        while k < n_steps and running:
            decisions = [lane.decide(k, interval_steps) for lane in running]
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
            k += n
            for lane, decision, y_start, steps in zip(running, decisions, starts, done, strict=True):
                obs = lane.obs
                if steps < 0:
                    lane.fault = f"step {obs.step}: {obs.fault_text}"
                    log.error("%s: the cell faulted at %s", lane.name, lane.fault)
                elif lane.controller is not None and decision.mode != "fallback" and steps == interval_steps:
                    seg = np.asarray(lane.us[-steps:])  # (n, 5)
                    v_mean = np.array([seg[:, 0].mean(), seg[:, 2].mean(), seg[:, 4].mean()])
                    lane.controller.mpc.observe(y_start, v_mean, float(seg[:, 1].mean()), obs.y)
            running = [lane for lane, steps in zip(running, done, strict=True) if steps >= 0]
    finally:
        bar.close()
        for lane in lanes:
            if lane.watchdog is not None:
                lane.watchdog.close()
        for lane in lanes:
            if lane.controller is not None:
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
            plans=list(lane.controller.plans) if lane.controller is not None else [],
            safety=lane.controller.summary() if lane.controller is not None else None,
            fault=lane.fault,
            wall_s=wall_s,
            watchdog_expired=lane.watchdog.expired if lane.watchdog is not None else 0,
            start_step=lane.start_step,
            missed_steps=lane.plant.missed,
        )
        for lane in lanes
    ]
