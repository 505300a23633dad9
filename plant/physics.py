"""The cell's equations (``plant.md``), written once for numpy arrays and CasADi symbols.

Every function takes ``x`` with the 8 states and ``u`` with the 5 inputs, either as numpy arrays whose last
axis holds the signals (any leading batch axes: ``(..., 8)`` and ``(..., 5)``), or as CasADi column vectors
(``SX``/``MX``/``DM`` of shape ``(8, 1)`` and ``(5, 1)``). The same source lines serve both, so the simulator
and the oracle MPC share one set of equations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import casadi as ca
import numpy as np

from plant.params import DEFAULT_PARAMS, CellParams
from plant.signals import N_INPUTS, N_STATES

__all__ = [
    "Algebraic",
    "algebraic",
    "rhs",
    "rk4_step",
    "liquidus",
    "cell_voltage",
    "feed_controllers",
    "OUTPUT_FUNCTIONS",
]

_CASADI_TYPES = (ca.SX, ca.MX, ca.DM)


class _Ops:
    """The handful of elementwise functions that differ between numpy and CasADi."""

    def __init__(self, symbolic: bool) -> None:
        self.symbolic = symbolic
        self.exp = ca.exp if symbolic else np.exp
        self.sqrt = ca.sqrt if symbolic else np.sqrt
        self.fmin = ca.fmin if symbolic else np.minimum
        self.fmax = ca.fmax if symbolic else np.maximum
        self.where = ca.if_else if symbolic else np.where


def _ops_for(*values: Any) -> _Ops:
    return _Ops(any(isinstance(v, _CASADI_TYPES) for v in values))


def _split(v: Any, n: int, what: str, ops: _Ops) -> list[Any]:
    """The ``n`` signals of ``v`` as a list (numpy: last axis; CasADi: rows of a column)."""
    if ops.symbolic:
        if v.shape != (n, 1):
            raise ValueError(f"{what} must be a CasADi column of shape ({n}, 1), got {v.shape}")
        return [v[i] for i in range(n)]
    if v.shape[-1:] != (n,):
        raise ValueError(f"{what} must have {n} signals on its last axis, got shape {v.shape}")
    return [v[..., i] for i in range(n)]


def _stack(parts: list[Any], ops: _Ops) -> Any:
    return ca.vertcat(*parts) if ops.symbolic else np.stack(parts, axis=-1)


def _as_array(v: Any) -> Any:
    return v if isinstance(v, _CASADI_TYPES) else np.asarray(v, dtype=np.float64)


class Algebraic(NamedTuple):
    """Algebraic quantities of the cell at one state and input (same shapes as one signal of ``x``)."""

    bath_mass: Any  # kg
    c_alumina: Any  # mass fraction
    c_alf3: Any  # mass fraction
    liquidus: Any  # degC
    superheat: Any  # degC, T_bath - T_liq
    conductivity: Any  # S/cm as in the correlation
    bubble_coverage: Any  # -
    bubble_thickness: Any  # cm as in the correlation
    bubble_voltage: Any  # V
    cell_voltage: Any  # V
    power: Any  # W


def liquidus(p_alf3: Any, p_alumina: Any, ops: _Ops | None = None) -> Any:
    """Liquidus temperature (degC) from the AlF3 and alumina percentages."""
    ops = ops or _ops_for(p_alf3, p_alumina)
    pf, pa = p_alf3, p_alumina
    return (
        991.2
        + 1.12 * pf
        - 0.13 * pf**2.2
        + 0.061 * pf * ops.sqrt(pf)
        - 7.93 * pa / (1.0 + 0.0936 * pf - 0.0017 * pf * pf - 0.0023 * pf * pa)
    )


def _voltage_terms(current: Any, acd: Any, c_alumina: Any, t_bath: Any, ops: _Ops) -> tuple[Any, ...]:
    """Conductivity, bubble coverage, bubble thickness, bubble voltage and cell voltage."""
    i = current
    pa = 100.0 * c_alumina
    kappa = ops.exp(2.496 - 2068.4 / (273.0 + t_bath) - 2.07 * c_alumina)
    dpa = pa - 2.2
    coverage = (
        0.531 + 6.958e-7 * i - 2.51e-12 * i * i + 3.06e-18 * i * i * i + (0.431 - 0.1437 * dpa) / (1.0 + 7.353 * dpa)
    )
    thickness = (0.5517 + 3.8168e-6 * i) / (1.0 + 8.271e-6 * i)
    u_bubble = 3.8168e-6 * coverage * thickness * i / (kappa * (1.0 - coverage))
    u_cell = u_bubble + i * acd / (2620.0 * kappa)
    return kappa, coverage, thickness, u_bubble, u_cell


def cell_voltage(x: Any, u: Any) -> Any:
    """Cell voltage U (V) as modelled: bubble drop plus ohmic bath drop."""
    return algebraic(x, u).cell_voltage


def algebraic(x: Any, u: Any, params: CellParams = DEFAULT_PARAMS) -> Algebraic:
    """All algebraic quantities of ``plant.md`` at ``(x, u)``."""
    x, u = _as_array(x), _as_array(u)
    ops = _ops_for(x, u)
    xs = _split(x, N_STATES, "x", ops)
    us = _split(u, N_INPUTS, "u", ops)
    bath = xs[1] + xs[2] + xs[3]
    ca_, cf = xs[1] / bath, xs[2] / bath
    g = _liquidus_of(ca_, cf, params, ops)
    kappa, coverage, thickness, u_bub, u_cell = _voltage_terms(us[1], us[4], ca_, xs[5], ops)
    return Algebraic(bath, ca_, cf, g, xs[5] - g, kappa, coverage, thickness, u_bub, u_cell, us[1] * u_cell)


OUTPUT_FUNCTIONS: dict[str, Callable[[Algebraic], Any]] = {
    "superheat": lambda a: a.superheat,
    "alumina_pct": lambda a: 100.0 * a.c_alumina,
    "alf3_pct": lambda a: 100.0 * a.c_alf3,
    "liquidus": lambda a: a.liquidus,
    "cell_voltage": lambda a: a.cell_voltage,
    "power": lambda a: a.power,
}
"""The algebraic outputs a cell reports, by name, from :func:`algebraic` (names and units in the table
``plant.potline.OUTPUTS``); numpy or CasADi alike."""


def _liquidus_of(c_alumina: Any, c_alf3: Any, params: CellParams, ops: _Ops) -> Any:
    if params.liquidus_override is not None:
        return params.liquidus_override + 0.0 * c_alumina
    return liquidus(100.0 * c_alf3, 100.0 * c_alumina, ops)


def rhs(x: Any, u: Any, params: CellParams = DEFAULT_PARAMS) -> Any:
    """State derivative ``dx/dt`` (per second) of the cell model.

    Parameters
    ----------
    x : array_like (..., 8) or CasADi (8, 1)
        State, in the order of :data:`plant.signals.STATES`.
    u : array_like (..., 5) or CasADi (5, 1)
        Input, in the order of :data:`plant.signals.INPUTS`.
    params : CellParams
        Constants of the model.

    Returns
    -------
    Same kind and shape as ``x``.
    """
    x, u = _as_array(x), _as_array(u)
    ops = _ops_for(x, u)
    x0, x1, x2, x3, _x4, x5, x6, x7 = _split(x, N_STATES, "x", ops)
    u0, u1, u2, u3, u4 = _split(u, N_INPUTS, "u", ops)
    p = params
    bath = x1 + x2 + x3
    g = _liquidus_of(x1 / bath, x2 / bath, p, ops)
    _, _, _, _, u_cell = _voltage_terms(u1, u4, x1 / bath, x5, ops)

    ledge = p.k0 * x0  # ledge thickness, m
    sup = x5 - g  # superheat
    sub = g - x6  # ledge sub-cooling
    q_wall = p.k9 * (x6 - x7) / (p.k14 + p.k15 * ledge)

    dx0 = p.k1 * sub / ledge - p.k2 * sup
    dx1 = u0 - p.k3 * u1
    dx2 = u2 - p.k4 * u0
    dx3 = -dx0 + p.k5 * u0
    dx4 = p.k6 * u1 - u3
    dx5 = (p.alpha / bath) * (
        u1 * u_cell - p.k9 * (x5 - x6) / (p.k10 + p.k11 * ledge) - (p.k7 * sup * sup - p.k8 * sup * sub / ledge)
    )
    dx6 = (p.beta / x0) * (p.k9 * sub / (p.k15 * ledge) - q_wall - (p.k12 * sup * sub - p.k13 * sub * sub / ledge))
    dx7 = p.k17 * (q_wall - p.k9 * (x7 - p.k19) / (p.k14 + p.k20))
    return _stack([dx0, dx1, dx2, dx3, dx4, dx5, dx6, dx7], ops)


def rk4_step(x: Any, u: Any, dt: float, params: CellParams = DEFAULT_PARAMS) -> Any:
    """One classical Runge-Kutta-4 step of length ``dt`` seconds, inputs held (zero-order hold)."""
    x, u = _as_array(x), _as_array(u)
    k1 = rhs(x, u, params)
    k2 = rhs(x + (0.5 * dt) * k1, u, params)
    k3 = rhs(x + (0.5 * dt) * k2, u, params)
    k4 = rhs(x + dt * k3, u, params)
    return x + (dt / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)


def feed_controllers(x: Any, dt: float) -> tuple[Any, Any, Any]:
    """The cell's own alumina, AlF3 and tapping controllers of ``plant.md`` (kg/s each).

    Returns ``(feed_al2o3, feed_alf3, tapping)`` with the shape of one signal of ``x``.
    """
    x = _as_array(x)
    ops = _ops_for(x)
    xs = _split(x, N_STATES, "x", ops)
    bath = xs[1] + xs[2] + xs[3]

    def rule(raw: Any, cap: float, floor: float) -> Any:
        v = ops.fmin(ops.fmax(raw, 0.0), cap)
        return ops.where(v < floor, 0.0 * v, v)

    feed_a = rule(30000.0 * (0.023 - xs[1] / bath), 220.0 / dt, 140.0 / dt)
    feed_f = rule(13000.0 * (0.105 - xs[2] / bath), 80.0 / dt, 20.0 / dt)
    tap = rule(300.0 * (xs[4] - 10000.0), 90.0 / dt, 20.0 / dt)
    return feed_a, feed_f, tap
