"""Batched simulation of cells: RK4 (dt = 10 s, zero-order hold), the cell's feed controllers, domain guard.

Shapes: B trajectories (or cells), T steps. States ``x`` are ``(B, T + 1, 8)``, applied inputs ``u`` are
``(B, T, 5)``. A trajectory that leaves the model's valid domain is stopped with a fault code and holds its
last valid state; no NaN is ever handed out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from plant.domain import Fault, check_domain
from plant.engine import make_auto_engine, simulate_compiled
from plant.excitation import Exogenous
from plant.params import DEFAULT_LIMITS, DEFAULT_PARAMS, CellParams, DomainLimits
from plant.physics import feed_controllers, rk4_step
from plant.signals import N_INPUTS, N_STATES, U

__all__ = [
    "Fault",
    "Trajectories",
    "MeasurementNoise",
    "check_domain",
    "compose_inputs",
    "step",
    "simulate",
    "ENGINES",
    "validate_states",
]

DT = 10.0


def validate_states(x: object, name: str = "x0") -> np.ndarray:
    """``x`` as a float64 array of shape ``(B, 8)``, or a ValueError naming what is wrong."""
    arr = np.asarray(x, dtype=np.float64)
    given = arr.shape
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != N_STATES:
        raise ValueError(f"{name} must have shape (B, {N_STATES}) or ({N_STATES},), got {given}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds non-finite values")
    return arr


def compose_inputs(
    x: np.ndarray,
    current: np.ndarray | float,
    acd: np.ndarray | float,
    dt: float = DT,
    alumina_extra: np.ndarray | float = 0.0,
    alf3_extra: np.ndarray | float = 0.0,
    alumina_cmd: np.ndarray | None = None,
    alf3_cmd: np.ndarray | None = None,
) -> np.ndarray:
    """The input vector ``(B, 5)`` applied to cells in state ``x`` ``(B, 8)``.

    The cell's own controllers decide the alumina feed, AlF3 feed and tapping; ``*_extra`` is added on top
    (the identification excitation). Where ``alumina_cmd`` / ``alf3_cmd`` (``(B,)``) is finite it replaces
    the controller's decision for that cell (a manual command, e.g. from an MPC); NaN means "automatic".
    """
    feed_a, feed_f, tap = feed_controllers(x, dt)
    if alumina_cmd is not None:
        feed_a = np.where(np.isfinite(alumina_cmd), alumina_cmd, feed_a)
    if alf3_cmd is not None:
        feed_f = np.where(np.isfinite(alf3_cmd), alf3_cmd, feed_f)
    u = np.empty((*x.shape[:-1], N_INPUTS))
    u[..., U.FEED_AL2O3] = feed_a + alumina_extra
    u[..., U.CURRENT] = current
    u[..., U.FEED_ALF3] = feed_f + alf3_extra
    u[..., U.TAPPING] = tap
    u[..., U.ACD] = acd
    return u


def step(
    x: np.ndarray,
    u: np.ndarray,
    dt: float = DT,
    params: CellParams = DEFAULT_PARAMS,
    limits: DomainLimits = DEFAULT_LIMITS,
) -> tuple[np.ndarray, np.ndarray]:
    """Advance cells ``x`` ``(B, 8)`` by one step under inputs ``u`` ``(B, 5)``.

    Returns ``(x_next, fault)``: where a cell's next state leaves the valid domain its fault code is set
    and ``x_next`` keeps the previous (valid) state.
    """
    with np.errstate(all="ignore"):
        x_next = rk4_step(x, u, dt, params)
    fault = check_domain(x_next, limits)
    x_next = np.where(fault[..., None] != 0, x, x_next)
    return x_next, fault


@dataclass(frozen=True)
class MeasurementNoise:
    """Standard deviation of additive Gaussian measurement noise per state (same units as the state).

    The default is a realistic bath-temperature thermocouple (2 degC) and nothing else.
    """

    std: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if len(self.std) != N_STATES or not all(np.isfinite(s) and s >= 0 for s in self.std):
            raise ValueError(f"MeasurementNoise.std must be {N_STATES} finite values >= 0, got {self.std!r}")

    def apply(self, rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
        """A noisy measurement of ``x`` (any shape ending in 8)."""
        return x + rng.standard_normal(x.shape) * np.asarray(self.std)


@dataclass(frozen=True)
class Trajectories:
    """Simulated trajectories.

    Attributes
    ----------
    x : (B, T + 1, 8) true states; after a fault, the last valid state repeated.
    u : (B, T, 5) inputs applied at each step (zero-order hold over the step).
    fault_step : (B,) int, the step k whose result x[k + 1] left the valid domain, or -1.
    fault_code : (B,) int, a :class:`Fault` code (0 where none).
    y : (B, T + 1, 8) noisy measurements, or None when no noise was asked for.
    dt : sample time in seconds.
    """

    x: np.ndarray
    u: np.ndarray
    fault_step: np.ndarray
    fault_code: np.ndarray
    y: np.ndarray | None = None
    dt: float = DT

    @property
    def n_traj(self) -> int:
        return self.x.shape[0]

    @property
    def n_steps(self) -> int:
        return self.u.shape[1]


def _simulate_numpy(
    x0: np.ndarray, exo: Exogenous, dt: float, params: CellParams, limits: DomainLimits
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    b, t = exo.shape
    xs = np.empty((b, t + 1, N_STATES))
    us = np.empty((b, t, N_INPUTS))
    fault_step = np.full(b, -1, dtype=np.int64)
    fault_code = np.zeros(b, dtype=np.int8)
    x = x0.copy()
    xs[:, 0] = x
    for k in range(t):
        u = compose_inputs(x, exo.current[:, k], exo.acd[:, k], dt, exo.alumina_extra[:, k], exo.alf3_extra[:, k])
        alive = fault_code == 0
        x_next, fault = step(x, u, dt, params, limits)
        new = alive & (fault != 0)
        fault_step[new] = k
        fault_code[new] = fault[new]
        x = np.where(alive[:, None], x_next, x)
        xs[:, k + 1] = x
        us[:, k] = np.where(alive[:, None], u, us[:, k - 1] if k else u)
    return xs, us, fault_step, fault_code


Engine = Callable[[np.ndarray, Exogenous, float, CellParams, DomainLimits], tuple[np.ndarray, ...]]

ENGINES: dict[str, Engine] = {
    "numpy": _simulate_numpy,
    "compiled": simulate_compiled,
    "auto": make_auto_engine(_simulate_numpy),
}
"""Simulation engines by name. Each takes ``(x0 (B, 8), exo, dt, params, limits)`` and returns
``(x (B, T+1, 8), u (B, T, 5), fault_step (B,), fault_code (B,))`` with the semantics of the numpy engine.
``"compiled"`` is the same step generated to C (:mod:`plant.engine`); ``"auto"`` uses it where a C compiler
is available and falls back to ``"numpy"`` (with one warning) where not."""


def simulate(
    x0: np.ndarray,
    exo: Exogenous,
    *,
    dt: float = DT,
    params: CellParams = DEFAULT_PARAMS,
    limits: DomainLimits = DEFAULT_LIMITS,
    noise: MeasurementNoise | None = None,
    rng: np.random.Generator | None = None,
    engine: str = "auto",
) -> Trajectories:
    """Simulate B cells from ``x0`` ``(B, 8)`` under the excitation ``exo`` (B trajectories of T steps).

    The cell's own feed controllers act every step; ``exo`` adds on top. With ``noise``, ``rng`` draws the
    measurement noise (required then). ``engine`` picks the implementation by name (see :data:`ENGINES`).
    """
    x0 = validate_states(x0)
    if x0.shape[0] != exo.shape[0]:
        raise ValueError(f"x0 has {x0.shape[0]} trajectories but the excitation has {exo.shape[0]}")
    if not (np.isfinite(dt) and dt > 0):
        raise ValueError(f"dt must be a positive number of seconds, got {dt!r}")
    bad = check_domain(x0, limits)
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"x0[{i}] is outside the model's valid domain: {Fault(int(bad[i])).describe(limits)}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; must be one of {sorted(ENGINES)}")
    if noise is not None and rng is None:
        raise ValueError("noise needs an rng (numpy.random.Generator) to draw from")
    xs, us, fault_step, fault_code = ENGINES[engine](x0, exo, dt, params, limits)
    y = noise.apply(rng, xs) if noise is not None and rng is not None else None  # rng checked above
    return Trajectories(xs, us, fault_step, fault_code, y, dt)
