"""The model's valid domain: fault codes and the check that assigns them (``plant.md``, last section)."""

from __future__ import annotations

import enum

import numpy as np

from plant.params import DEFAULT_LIMITS, DomainLimits
from plant.signals import X

__all__ = ["Fault", "check_domain"]


class Fault(enum.IntEnum):
    """Why a cell left the model's valid domain (0: it did not)."""

    NONE = 0
    NON_FINITE = 1
    LEDGE_MELTED = 2
    ALUMINA_OUT_OF_RANGE = 3
    ALF3_OUT_OF_RANGE = 4

    def describe(self, limits: DomainLimits = DEFAULT_LIMITS) -> str:
        return {
            Fault.NONE: "no fault",
            Fault.NON_FINITE: "the state became non-finite",
            Fault.LEDGE_MELTED: f"side ledge below {limits.min_ledge_mass:g} kg (melted away)",
            Fault.ALUMINA_OUT_OF_RANGE: f"alumina outside {limits.alumina_pct[0]:g}-{limits.alumina_pct[1]:g} %",
            Fault.ALF3_OUT_OF_RANGE: f"AlF3 outside {limits.alf3_pct[0]:g}-{limits.alf3_pct[1]:g} %",
        }[self]


def check_domain(x: np.ndarray, limits: DomainLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Fault code (int8, see :class:`Fault`) of each state in ``x`` of shape ``(..., 8)``; 0 where valid."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        bath = x[..., X.M_AL2O3] + x[..., X.M_ALF3] + x[..., X.M_CRYOLITE]
        pa = 100.0 * x[..., X.M_AL2O3] / bath
        pf = 100.0 * x[..., X.M_ALF3] / bath
        code = np.zeros(x.shape[:-1], dtype=np.int8)
        code = np.where((pf < limits.alf3_pct[0]) | (pf > limits.alf3_pct[1]), Fault.ALF3_OUT_OF_RANGE, code)
        bad_a = (pa < limits.alumina_pct[0]) | (pa > limits.alumina_pct[1])
        code = np.where(bad_a, Fault.ALUMINA_OUT_OF_RANGE, code)
        code = np.where(x[..., X.M_LEDGE] < limits.min_ledge_mass, Fault.LEDGE_MELTED, code)
        code = np.where(~np.all(np.isfinite(x), axis=-1), Fault.NON_FINITE, code)
    return code.astype(np.int8)
