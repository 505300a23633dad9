"""The control problem of ``control.md``: manipulated inputs and their bounds, the windows and targets of the
controlled quantities, and the stage cost, written once for numpy arrays and CasADi symbols.

The stage cost is a rate per hour of plant time, in kWh-equivalents: the electrical energy ``I U`` (kWh/h) plus
quadratic target terms plus linear-and-quadratic penalties on window violations. The MPC integrates it over
its horizon (with slack variables for the violations); the closed loop integrates it over the plant's true
trajectory, which gives the closed-loop cost every controller is compared on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import casadi as ca
import numpy as np

from alutwin.config import Config, NonNegativeNumber, config_dataclass
from plant.params import DEFAULT_PARAMS
from plant.physics import algebraic
from plant.signals import N_INPUTS, U, X

__all__ = [
    "ACD_RATE",
    "CONTROLLED",
    "CostWeights",
    "MANIPULATED",
    "Manipulated",
    "Window",
    "WINDOWS",
    "controlled",
    "cost_rate",
    "full_input",
    "mpc_power",
    "tapping_rate",
    "violation",
]

_CASADI = (ca.SX, ca.MX, ca.DM)


@dataclass(frozen=True)
class Manipulated:
    """One input the MPC decides: its index in ``u``, bounds, unit and the plant command field that sets it."""

    name: str
    index: int
    low: float
    high: float
    unit: str
    command: str

    @property
    def span(self) -> float:
        return self.high - self.low


MANIPULATED: tuple[Manipulated, ...] = (
    Manipulated("feed_al2o3", U.FEED_AL2O3, 0.0, 0.06, "kg/s", "alumina_feed"),
    Manipulated("feed_alf3", U.FEED_ALF3, 0.0, 0.01, "kg/s", "alf3_feed"),
    Manipulated("acd", U.ACD, 0.040, 0.060, "m", "acd"),
)
"""The manipulated inputs of ``control.md`` in the order of the MPC's input vector ``v`` (3,)."""

ACD_RATE = 0.0005
"""m: the largest ACD move per control interval (0.5 mm)."""


@dataclass(frozen=True)
class Window:
    """A soft window ``[low, high]`` on a controlled quantity, with an optional target inside it.

    ``scale`` is the unit of the violation in the cost (a violation of ``scale`` counts as 1).
    """

    name: str
    low: float
    high: float
    target: float | None
    unit: str
    scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.low < self.high:
            raise ValueError(f"Window {self.name}: low ({self.low}) must be below high ({self.high})")
        if self.target is not None and not self.low <= self.target <= self.high:
            raise ValueError(f"Window {self.name}: target {self.target} is outside [{self.low}, {self.high}]")


WINDOWS: tuple[Window, ...] = (
    Window("alumina_pct", 2.0, 4.0, 3.0, "%"),
    Window("alf3_pct", 10.0, 12.0, 11.0, "%"),
    Window("superheat", 5.0, 15.0, 10.0, "degC"),
    Window("ledge_mass", 2000.0, 4500.0, None, "kg", scale=100.0),
)
"""The windows of ``control.md`` in the order of :func:`controlled`."""

CONTROLLED: tuple[str, ...] = tuple(w.name for w in WINDOWS)


@config_dataclass
class CostWeights(Config):
    """Weights of the stage cost (a rate per hour of plant time).

    Parameters
    ----------
    energy : per kWh of electrical energy ``I U``.
    alumina, alf3, superheat : per hour and per squared unit of deviation from the target (%, %, degC).
    violation_linear, violation_quadratic : per hour and per unit (squared unit) of window violation, in the
        window's ``scale`` (1 %, 1 degC, 100 kg of ledge).
    move : per squared move of each manipulated input (:data:`MANIPULATED` order) between control intervals, in
        units of the input's span (``MANIPULATED[i].span``); only in the MPC's objective, not in the closed-loop
        cost.
    """

    energy: NonNegativeNumber = 1.0
    alumina: NonNegativeNumber = 10.0
    alf3: NonNegativeNumber = 5.0
    superheat: NonNegativeNumber = 0.5
    violation_linear: NonNegativeNumber = 500.0
    violation_quadratic: NonNegativeNumber = 500.0
    move: tuple[NonNegativeNumber, NonNegativeNumber, NonNegativeNumber] = (2.0, 2.0, 20.0)

    @property
    def targets(self) -> tuple[float, ...]:
        """Target weights in the order of :data:`WINDOWS` (0 where a window has no target)."""
        return (self.alumina, self.alf3, self.superheat, 0.0)


def tapping_rate(current: Any) -> Any:
    """kg/s: the metal tapping the MPC assumes over its horizon, the cell rule's long-run average.

    The cell's tapping rule keeps the metal pad at 10 000 kg, so on average it taps what the current produces
    (``k6 I``); the MPC holds that rate instead of the rule's pulses.
    """
    return DEFAULT_PARAMS.k6 * current


def full_input(v: Any, current: Any) -> Any:
    """The cell's input ``u`` (5) from the manipulated inputs ``v`` (3) and the line current.

    numpy: ``v`` ``(..., 3)`` and ``current`` broadcastable to ``(...)``; CasADi: columns.
    """
    if isinstance(v, _CASADI) or isinstance(current, _CASADI):
        return ca.vertcat(v[0], current, v[1], tapping_rate(current), v[2])
    v = np.asarray(v, dtype=np.float64)
    cur = np.broadcast_to(np.asarray(current, dtype=np.float64), v.shape[:-1])
    u = np.empty((*v.shape[:-1], N_INPUTS))
    u[..., U.FEED_AL2O3] = v[..., 0]
    u[..., U.CURRENT] = cur
    u[..., U.FEED_ALF3] = v[..., 1]
    u[..., U.TAPPING] = tapping_rate(cur)
    u[..., U.ACD] = v[..., 2]
    return u


def controlled(x: Any, u: Any) -> tuple[list[Any], Any]:
    """The controlled quantities (in the order of :data:`WINDOWS`) and the electrical power (W) at ``(x, u)``.

    numpy: ``x`` ``(..., 8)``, ``u`` ``(..., 5)``; each quantity ``(...)``. CasADi: columns; each ``(1, 1)``.
    """
    a = algebraic(x, u)
    ledge = x[X.M_LEDGE] if isinstance(x, _CASADI) else np.asarray(x)[..., X.M_LEDGE]
    return [100.0 * a.c_alumina, 100.0 * a.c_alf3, a.superheat, ledge], a.power


MIN_VOLTAGE_ALUMINA = 0.024
"""Mass fraction of alumina below which the MPC's objective evaluates the cell voltage at this fraction.

The bubble coverage of ``plant.md`` reaches 1 near ``p_a = 2.21 %`` (118-155 kA): the modelled voltage rises to
infinity there (the anode effect) and turns negative below, which an optimiser exploits (starving the cell of
alumina would "save" energy). Above 2.4 % the voltage is finite and falls with alumina, so the clamp only
changes iterates near the bottom of the alumina window, where its penalties already act."""


def mpc_power(x: Any, u: Any) -> Any:
    """W: the electrical power the MPC's objective uses, ``I U`` with the alumina fraction raised to at least
    :data:`MIN_VOLTAGE_ALUMINA` (CasADi columns). Equal to :func:`controlled`'s power inside the windows."""
    c = MIN_VOLTAGE_ALUMINA
    rest = x[X.M_ALF3] + x[X.M_CRYOLITE]
    x_eff = ca.vertcat(x[: X.M_AL2O3], ca.fmax(x[X.M_AL2O3], c / (1.0 - c) * rest), x[X.M_AL2O3 + 1 :])
    return algebraic(x_eff, u).power


def violation(value: Any, window: Window) -> Any:
    """How far ``value`` lies outside ``window``, in units of ``window.scale`` (0 inside)."""
    if isinstance(value, _CASADI):
        return (ca.fmax(window.low - value, 0) + ca.fmax(value - window.high, 0)) / window.scale
    value = np.asarray(value, dtype=np.float64)
    return (np.maximum(window.low - value, 0.0) + np.maximum(value - window.high, 0.0)) / window.scale


def cost_rate(x: Any, u: Any, weights: CostWeights) -> Any:
    """Stage cost per hour at ``(x, u)`` (energy, targets, window violations); shapes as :func:`controlled`."""
    values, power = controlled(x, u)
    cost = weights.energy * power / 1000.0
    for value, window, wt in zip(values, WINDOWS, weights.targets, strict=True):
        if window.target is not None and wt:
            cost = cost + wt * (value - window.target) ** 2
        v = violation(value, window)
        cost = cost + weights.violation_linear * v + weights.violation_quadratic * v * v
    return cost
