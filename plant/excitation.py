"""Initial-state sampling and the excitations used to generate identification data (``plant.md``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from plant.signals import N_STATES

__all__ = [
    "EXCITATIONS",
    "INITIAL_BOX",
    "Exogenous",
    "aprbs",
    "constant",
    "initial_states_in",
    "oper",
    "sample_initial_states",
]


@dataclass(frozen=True)
class Exogenous:
    """The open-loop part of the inputs for B trajectories of T steps; the feed controllers act on top.

    Attributes are arrays of shape ``(B, T)``: line current (A), anode-cathode distance (m), and extra alumina
    and AlF3 feed (kg/s) added to what the cell's own controllers decide.
    """

    current: np.ndarray  # (B, T) A
    acd: np.ndarray  # (B, T) m
    alumina_extra: np.ndarray  # (B, T) kg/s
    alf3_extra: np.ndarray  # (B, T) kg/s

    def __post_init__(self) -> None:
        shape = np.shape(self.current)
        for name in ("current", "acd", "alumina_extra", "alf3_extra"):
            arr = np.asarray(getattr(self, name), dtype=np.float64)
            if arr.ndim != 2 or arr.shape != shape:
                raise ValueError(f"Exogenous.{name} must have shape (B, T) = {shape}, got {arr.shape}")
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"Exogenous.{name} holds non-finite values")
            object.__setattr__(self, name, arr)

    @property
    def shape(self) -> tuple[int, int]:
        return self.current.shape


def held_levels(rng: np.random.Generator, n_steps: int, low: float, high: float, hold: tuple[int, int]) -> np.ndarray:
    """A piecewise-constant signal: uniform levels in [low, high], each held a uniform number of steps."""
    out = np.empty(n_steps)
    k = 0
    while k < n_steps:
        n = int(rng.integers(hold[0], hold[1] + 1))
        out[k : k + n] = rng.uniform(low, high)
        k += n
    return out


def _impulses(rng: np.random.Generator, n_steps: int, low: float, high: float, gap: tuple[int, int]) -> np.ndarray:
    """One-step impulses of uniform height in [low, high], separated by a uniform number of steps."""
    out = np.zeros(n_steps)
    k = int(rng.integers(gap[0], gap[1] + 1))
    while k < n_steps:
        out[k] = rng.uniform(low, high)
        k += int(rng.integers(gap[0], gap[1] + 1))
    return out


def aprbs(rng: np.random.Generator, n_traj: int, n_steps: int) -> Exogenous:
    """The "aprbs" excitation of the published study (training and test sets)."""
    _check_sizes(n_traj, n_steps)
    cur, acd, ea, ef = (np.empty((n_traj, n_steps)) for _ in range(4))
    for b in range(n_traj):
        cur[b] = 140_000.0 + held_levels(rng, n_steps, -22_000.0, 15_000.0, (100, 1100))
        acd[b] = 0.05 + held_levels(rng, n_steps, -0.007, 0.007, (100, 1100))
        ea[b] = _impulses(rng, n_steps, 1.0, 20.0, (500, 2000))
        ef[b] = _impulses(rng, n_steps, 1.0, 10.0, (1000, 3000))
    return Exogenous(cur, acd, ea, ef)


def oper(n_traj: int, n_steps: int) -> Exogenous:
    """The "oper" excitation (normal operation): slow sinusoids of current and ACD, feed controllers only."""
    _check_sizes(n_traj, n_steps)
    k = np.arange(n_steps, dtype=np.float64)
    cur = np.broadcast_to(140_000.0 + 2000.0 * np.sin(0.01 * k), (n_traj, n_steps)).copy()
    acd = np.broadcast_to(0.05 + 0.005 * np.cos(0.1 * k), (n_traj, n_steps)).copy()
    zero = np.zeros((n_traj, n_steps))
    return Exogenous(cur, acd, zero, zero.copy())


def constant(n_traj: int, n_steps: int, current: float = 140_000.0, acd: float = 0.05) -> Exogenous:
    """Constant current and ACD, feed controllers only."""
    _check_sizes(n_traj, n_steps)
    full = np.full((n_traj, n_steps), 1.0)
    return Exogenous(current * full, acd * full, 0.0 * full, 0.0 * full)


def _check_sizes(n_traj: int, n_steps: int) -> None:
    for name, v in (("n_traj", n_traj), ("n_steps", n_steps)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


EXCITATIONS = {
    "aprbs": lambda rng, n_traj, n_steps: aprbs(rng, n_traj, n_steps),
    "oper": lambda rng, n_traj, n_steps: oper(n_traj, n_steps),
    "constant": lambda rng, n_traj, n_steps: constant(n_traj, n_steps),
}
"""Excitations by name: each takes ``(rng, n_traj, n_steps)``."""


def sample_initial_states(rng: np.random.Generator, n: int, integer_percent: bool = True) -> np.ndarray:
    """Initial states drawn as in ``plant.md``; returns ``(n, 8)``.

    With ``integer_percent`` (as in the original study) the alumina and AlF3 percentages are whole numbers.
    """
    _check_sizes(n, 1)
    if integer_percent:
        a = rng.integers(2, 6, size=n) / 100.0
        f = rng.integers(9, 14, size=n) / 100.0
    else:
        a = rng.uniform(0.02, 0.05, size=n)
        f = rng.uniform(0.09, 0.13, size=n)
    x = np.empty((n, N_STATES))
    x[:, 0] = rng.uniform(2060.0, 4460.0, size=n)
    cryolite = rng.uniform(11_500.0, 16_000.0, size=n)
    bath = cryolite / (1.0 - a - f)
    x[:, 1] = a * bath
    x[:, 2] = f * bath
    x[:, 3] = cryolite
    x[:, 4] = rng.uniform(9750.0, 10_000.0, size=n)
    x[:, 5] = rng.uniform(960.0, 990.0, size=n)
    x[:, 6] = rng.uniform(790.0, 850.0, size=n)
    x[:, 7] = rng.uniform(555.0, 610.0, size=n)
    return x


INITIAL_BOX: dict[str, tuple[float, float]] = {
    "ledge_kg": (2060.0, 4460.0),
    "alumina_pct": (2.0, 5.0),
    "alf3_pct": (9.0, 13.0),
    "cryolite_kg": (11_500.0, 16_000.0),
    "metal_kg": (9750.0, 10_000.0),
    "bath_c": (960.0, 990.0),
    "ledge_c": (790.0, 850.0),
    "wall_c": (555.0, 610.0),
}
"""The box ``plant.md`` draws initial states from (the training box), per quantity ``(low, high)``; the
alumina and AlF3 masses follow from the percentages of the bath."""


def initial_states_in(rng: np.random.Generator, n: int, box: Mapping[str, Any] | None = None) -> np.ndarray:
    """``n`` initial states ``(n, 8)`` drawn uniformly from ``box`` (keys of :data:`INITIAL_BOX`; missing keys
    keep the training box's range), percentages continuous. A key may hold a list of ranges, e.g.
    ``{"ledge_kg": [(1200, 2060), (4460, 6000)]}``: each draw picks one range (with probability proportional to
    its width), so that a box *around* the training one can be drawn."""
    _check_sizes(n, 1)
    box = dict(box or {})
    unknown = set(box) - set(INITIAL_BOX)
    if unknown:
        raise ValueError(f"unknown initial-state quantities {sorted(unknown)}; valid: {list(INITIAL_BOX)}")

    def draw(name: str) -> np.ndarray:
        spec = box.get(name, INITIAL_BOX[name])
        pairs = np.asarray(spec, dtype=np.float64)
        pairs = pairs[None] if pairs.ndim == 1 else pairs
        if pairs.ndim != 2 or pairs.shape[1] != 2 or pairs.shape[0] < 1:
            raise ValueError(f"{name}: give a (low, high) pair or a list of them, got {spec!r}")
        lows, highs = pairs[:, 0], pairs[:, 1]
        if not (np.all(np.isfinite(lows)) and np.all(highs >= lows)):
            raise ValueError(f"{name}: ranges must be finite (low, high) pairs with low <= high, got {spec!r}")
        widths = highs - lows
        pick = rng.choice(len(pairs), size=n, p=widths / widths.sum() if widths.sum() > 0 else None)
        return lows[pick] + rng.random(n) * widths[pick]

    a, f = draw("alumina_pct") / 100.0, draw("alf3_pct") / 100.0
    if np.any(a + f >= 1) or np.any(a < 0) or np.any(f < 0):
        raise ValueError("alumina and AlF3 percentages must be non-negative and leave some cryolite")
    x = np.empty((n, N_STATES))
    x[:, 0] = draw("ledge_kg")
    cryolite = draw("cryolite_kg")
    bath = cryolite / (1.0 - a - f)
    x[:, 1] = a * bath
    x[:, 2] = f * bath
    x[:, 3] = cryolite
    x[:, 4] = draw("metal_kg")
    x[:, 5] = draw("bath_c")
    x[:, 6] = draw("ledge_c")
    x[:, 7] = draw("wall_c")
    return x
