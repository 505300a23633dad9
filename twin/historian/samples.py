"""Checks of one sample on its own: indices, shapes, finiteness, physical bounds and the plant's valid domain.

Order and duplicates depend on what is stored; the storage checks them (:mod:`twin.historian.sqlite`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from plant.domain import Fault, check_domain
from plant.params import DEFAULT_LIMITS, DomainLimits
from plant.signals import INPUT_NAMES, N_INPUTS, N_STATES, STATE_NAMES
from twin.historian.historian import QuarantineReason, Sample

__all__ = ["DEFAULT_BOUNDS", "MAX_INDEX", "SampleBounds", "as_index", "as_time", "as_vector", "check_sample"]

MAX_INDEX = (1 << 62) - 1
"""Largest cell or step index stored (SQLite integers are signed 64-bit)."""


@dataclass(frozen=True)
class SampleBounds:
    """Physical bounds an accepted sample respects (inclusive), beside the plant's valid domain.

    The defaults are generous: wide enough for every state the plant's simulations reach (``plant.md``: a ledge
    of about 6900 kg at 118 kA, temperatures of the typical ranges with tens of degrees to spare) and tight
    enough to catch a gross sensor or unit error. The inputs are bounded by ``plant.md``'s ranges, the ACD by the
    plant's command bounds (0.040-0.060 m). ``limits`` adds the model's valid domain: ledge mass, alumina and
    AlF3 percentages (:func:`plant.domain.check_domain`).
    """

    x: tuple[tuple[float, float], ...] = (
        (0.0, 20_000.0),  # m_ledge, kg (the lower bound is also limits.min_ledge_mass)
        (0.0, 5_000.0),  # m_al2o3, kg
        (0.0, 10_000.0),  # m_alf3, kg
        (1_000.0, 50_000.0),  # m_cryolite, kg
        (1_000.0, 50_000.0),  # m_metal, kg
        (850.0, 1_100.0),  # T_bath, degC
        (400.0, 1_050.0),  # T_ledge, degC
        (100.0, 900.0),  # T_wall, degC
    )
    u: tuple[tuple[float, float], ...] = (
        (0.0, 22.0),  # feed_al2o3, kg/s
        (100_000.0, 160_000.0),  # current, A
        (0.0, 10.0),  # feed_alf3, kg/s
        (0.0, 9.0),  # tapping, kg/s
        (0.040, 0.060),  # acd, m
    )
    limits: DomainLimits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        for name, n in (("x", N_STATES), ("u", N_INPUTS)):
            pairs = getattr(self, name)
            if len(pairs) != n or not all(
                len(p) == 2 and all(math.isfinite(v) for v in p) and p[0] <= p[1] for p in pairs
            ):
                raise ValueError(f"SampleBounds.{name} must be {n} pairs (low, high) of finite numbers, got {pairs!r}")

    @property
    def x_array(self) -> np.ndarray:
        """(8, 2) low and high of each state."""
        return np.array(self.x, dtype=np.float64)

    @property
    def u_array(self) -> np.ndarray:
        """(5, 2) low and high of each input."""
        return np.array(self.u, dtype=np.float64)


DEFAULT_BOUNDS = SampleBounds()


def as_vector(value: Any) -> np.ndarray | None:
    """``value`` as a 1-D float64 array, or None if it is not a sequence of numbers."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return arr.reshape(-1) if arr.ndim <= 1 else arr


def as_index(value: Any) -> int | None:
    """``value`` as an int if it is an integer in ``[0, MAX_INDEX]``, else None."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= MAX_INDEX:
        return None
    return int(value)


def as_time(value: Any) -> float:
    """``value`` as a float, NaN if it is not a number."""
    if isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _first_non_finite(names: Sequence[str], values: np.ndarray) -> str:
    i = int(np.flatnonzero(~np.isfinite(values))[0])
    return f"{names[i]} = {float(values[i])!r}"


def _bad_shape(name: str, arr: np.ndarray | None, n: int) -> tuple[QuarantineReason, str]:
    got = "not an array of numbers" if arr is None else f"shape {tuple(np.shape(arr))}"
    return QuarantineReason.BAD_SHAPE, f"{name} must hold {n} numbers (shape ({n},)), got {got}"


def check_sample(sample: Sample, bounds: SampleBounds = DEFAULT_BOUNDS) -> tuple[QuarantineReason, str] | None:
    """The reason and detail why ``sample`` is bad on its own (shape, finiteness, bounds), or None if it is good.

    Order and duplicates depend on what is stored and are checked by the historian.
    """
    if as_index(sample.cell) is None:
        return QuarantineReason.BAD_INDEX, f"cell = {sample.cell!r} is not an integer in [0, {MAX_INDEX}]"
    if as_index(sample.step) is None:
        return QuarantineReason.BAD_INDEX, f"step = {sample.step!r} is not an integer in [0, {MAX_INDEX}]"
    x, u = as_vector(sample.x), as_vector(sample.u)
    if x is None or x.shape != (N_STATES,):
        return _bad_shape("x", x, N_STATES)
    if u is None or u.shape != (N_INPUTS,):
        return _bad_shape("u", u, N_INPUTS)
    t = as_time(sample.time_s)
    if not math.isfinite(t):
        return QuarantineReason.NON_FINITE, f"time_s = {sample.time_s!r} is not a finite number"
    if not np.isfinite(x).all():
        return QuarantineReason.NON_FINITE, f"x: {_first_non_finite(STATE_NAMES, x)} is not a finite number"
    if not np.isfinite(u).all():
        return QuarantineReason.NON_FINITE, f"u: {_first_non_finite(INPUT_NAMES, u)} is not a finite number"
    if t < 0:
        return QuarantineReason.OUT_OF_BOUNDS, f"time_s = {t!r} is negative"
    tables = (("x", STATE_NAMES, x, bounds.x_array), ("u", INPUT_NAMES, u, bounds.u_array))
    for name, names, arr, table in tables:
        bad = (arr < table[:, 0]) | (arr > table[:, 1])
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            return (
                QuarantineReason.OUT_OF_BOUNDS,
                f"{name}: {names[i]} = {arr[i]:.6g} is outside the physical bounds [{table[i, 0]:g}, {table[i, 1]:g}]",
            )
    fault = Fault(int(check_domain(x, bounds.limits)))
    if fault is not Fault.NONE:
        return QuarantineReason.OUT_OF_BOUNDS, f"x is outside the model's valid domain: {fault.describe(bounds.limits)}"
    return None
