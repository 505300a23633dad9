"""Settings of the MPC and of its safety layer: typed, frozen, validated at construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from controller.problem import ACD_RATE, WINDOWS, CostWeights

__all__ = ["HESSIANS", "MPCConfig", "SafetyConfig"]

HESSIANS = ("exact", "limited-memory")
"""IPOPT's Hessian options the MPC offers."""


def _int(owner: str, name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
        raise ValueError(f"{owner}.{name} must be {bound}, got {value!r}")


def _num(owner: str, name: str, value: Any, low: float, high: float = math.inf, *, strict: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if strict else value >= low) and value <= high
    if not ok:
        rel = ">" if strict else ">="
        upper = f" and <= {high:g}" if math.isfinite(high) else ""
        raise ValueError(f"{owner}.{name} must be a finite number {rel} {low:g}{upper}, got {value!r}")


@dataclass(frozen=True)
class MPCConfig:
    """Settings of the NMPC.

    Parameters
    ----------
    interval_steps : int
        Model steps (of the model's ``dt``, 10 s) per control interval; the inputs are held over an interval.
    horizon : int
        Control intervals in the prediction horizon.
    weights : CostWeights
        Stage-cost weights (``controller.problem``).
    hessian : str
        ``"exact"`` (second derivatives through the chained model steps) or ``"limited-memory"`` (L-BFGS).
    max_iter : int
        IPOPT iteration limit.
    max_wall_s : float
        IPOPT wall-time limit per solve, s.
    accept_capped : bool
        A solve stopped by ``max_iter`` or ``max_wall_s`` is used (status ``"...(feasible iterate)"``) when its
        last iterate satisfies every constraint (``feasibility_tol``) and its objective is not above the first
        iterate's (when that one was feasible); otherwise, and always when False, it counts as a failed solve.
    feasibility_tol : float
        Largest constraint violation (the NLP's scaled units) of an accepted capped iterate.
    warm_multipliers : bool
        Warm-start IPOPT's multipliers too (shifted like the primal solution) with a small initial barrier
        parameter, instead of the primal solution alone.
    backoff : tuple of 4 float
        Margins inside the windows (``controller.problem.WINDOWS`` order and units: %, %, degC, kg) the MPC's
        soft constraints use, so that model error and the current's steps leave the true windows held.
    backoff_high : tuple of 4 float, optional
        Margins inside the windows' upper ends, where they differ from ``backoff`` (None: ``backoff`` on both
        sides). A wider upper margin on the ledge keeps room for its growth when the line current drops.
    violation_factor : float or tuple of 4 float
        The MPC's penalties on leaving its (backed-off) windows are the cost's violation weights times this
        factor (the closed-loop cost keeps the stated weights): nearly hard constraints that stay feasible.
        One factor per window (``WINDOWS`` order) ranks the windows: the slow alumina and AlF3 take hours to
        come back from an excursion, a ledge excursion inside its margin is temporary. The ledge's 3 (not 1)
        makes the NMPC add heat early enough when the line current drops for hours: with 1, the surrogate NMPC
        let the ledge ride its margin until the ACD reached the top of the surrogate's known range, and the
        ledge left its window for 1 % of a 24-h scenario (``bench/closed_loop.py`` seed 0); 3 holds it there at
        the same energy per kg and solve times, where a wider ledge margin cost 1.5 % more energy.
    tol : float
        IPOPT's convergence tolerance.
    jit : bool
        Compile the NLP's functions to C (CasADi JIT with the system's C compiler): slower to build, much
        faster to solve. Without a compiler the MPC falls back to CasADi's virtual machine, with a warning.
    jit_flags : tuple of str
        Flags of the C compiler.
    compile_in_background : bool
        When the model changes (a new champion in the twin), compile the new problem on a thread and keep
        solving the current one until it is ready, instead of compiling between two solves (about a minute, a
        gap the safety layer would have to cover).
    bias_gain : float
        Gain in [0, 1] of the offset-free correction: after each interval the difference between the measured
        state and the model's one-interval prediction updates a constant derivative bias added to the model
        over the horizon (0 disables it).
    acd_rate : float
        m; the largest ACD move per control interval.
    """

    interval_steps: int = 60
    horizon: int = 12
    weights: CostWeights = field(default_factory=CostWeights)
    hessian: str = "exact"
    max_iter: int = 60
    max_wall_s: float = 1.5
    accept_capped: bool = True
    feasibility_tol: float = 1e-6
    warm_multipliers: bool = True
    backoff: tuple[float, float, float, float] = (0.3, 0.2, 1.0, 400.0)
    backoff_high: tuple[float, float, float, float] | None = (0.3, 0.9, 1.0, 1125.0)
    violation_factor: float | tuple[float, float, float, float] = (1000.0, 1000.0, 10.0, 3.0)
    tol: float = 1e-6
    jit: bool = True
    jit_flags: tuple[str, ...] = ("-O1",)
    compile_in_background: bool = True
    bias_gain: float = 0.5
    acd_rate: float = ACD_RATE

    @property
    def violation_factors(self) -> tuple[float, ...]:
        """The violation factor of each window (``WINDOWS`` order)."""
        f = self.violation_factor
        return tuple(f) if isinstance(f, tuple) else (float(f),) * len(WINDOWS)

    @property
    def backoffs_high(self) -> tuple[float, ...]:
        """The margins inside the windows' upper ends."""
        return self.backoff if self.backoff_high is None else self.backoff_high

    def __post_init__(self) -> None:
        owner = "MPCConfig"
        _int(owner, "interval_steps", self.interval_steps, 1, 10_000)
        _int(owner, "horizon", self.horizon, 1, 1000)
        _int(owner, "max_iter", self.max_iter, 1)
        if not isinstance(self.weights, CostWeights):
            raise ValueError(f"{owner}.weights must be a CostWeights, got {type(self.weights).__name__}")
        if self.hessian not in HESSIANS:
            raise ValueError(f"{owner}.hessian must be one of {list(HESSIANS)}, got {self.hessian!r}")
        _num(owner, "max_wall_s", self.max_wall_s, 0.0, strict=True)
        _num(owner, "tol", self.tol, 0.0, strict=True)
        _num(owner, "bias_gain", self.bias_gain, 0.0, 1.0)
        _num(owner, "feasibility_tol", self.feasibility_tol, 0.0, strict=True)
        if isinstance(self.violation_factor, (tuple, list)):
            if len(self.violation_factor) != len(WINDOWS):
                raise ValueError(f"{owner}.violation_factor must be a number or {len(WINDOWS)} numbers")
            for v in self.violation_factor:
                _num(owner, "violation_factor", v, 0.0)
            object.__setattr__(self, "violation_factor", tuple(float(v) for v in self.violation_factor))
        else:
            _num(owner, "violation_factor", self.violation_factor, 0.0)
        for name in ("accept_capped", "warm_multipliers", "compile_in_background"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{owner}.{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.backoff, (tuple, list)) or len(self.backoff) != len(WINDOWS):
            raise ValueError(f"{owner}.backoff must be {len(WINDOWS)} margins, got {self.backoff!r}")
        for m, w in zip(self.backoff, WINDOWS, strict=True):
            _num(owner, "backoff", m, 0.0)
            if not 2 * m < w.high - w.low:
                raise ValueError(f"{owner}.backoff: {m} leaves nothing of the window {w.name} [{w.low}, {w.high}]")
        object.__setattr__(self, "backoff", tuple(float(m) for m in self.backoff))
        if self.backoff_high is not None:
            if not isinstance(self.backoff_high, (tuple, list)) or len(self.backoff_high) != len(WINDOWS):
                raise ValueError(f"{owner}.backoff_high must be {len(WINDOWS)} margins, got {self.backoff_high!r}")
            for lo, hi, w in zip(self.backoff, self.backoff_high, WINDOWS, strict=True):
                _num(owner, "backoff_high", hi, 0.0)
                if not lo + hi < w.high - w.low:
                    raise ValueError(f"{owner}.backoff_high: {hi} leaves nothing of the window {w.name}")
            object.__setattr__(self, "backoff_high", tuple(float(m) for m in self.backoff_high))
        _num(owner, "acd_rate", self.acd_rate, 0.0, strict=True)
        if not isinstance(self.jit, bool):
            raise ValueError(f"{owner}.jit must be true or false, got {self.jit!r}")
        if isinstance(self.jit_flags, str) or not all(isinstance(f, str) for f in self.jit_flags):
            raise ValueError(f"{owner}.jit_flags must be a list of strings, got {self.jit_flags!r}")
        object.__setattr__(self, "jit_flags", tuple(self.jit_flags))


@dataclass(frozen=True)
class SafetyConfig:
    """Settings of the safety layer around the MPC.

    Parameters
    ----------
    shifted_intervals : int
        After a failed solve, how many intervals the shifted last feasible plan is applied before the cell's
        own controllers take over (0: hand over at once).
    watchdog_s : float
        Wall-clock seconds without a measurement after which the watchdog hands the cell back to its own
        controllers (0 disables the watchdog).
    """

    shifted_intervals: int = 3
    watchdog_s: float = 30.0

    def __post_init__(self) -> None:
        _int("SafetyConfig", "shifted_intervals", self.shifted_intervals, 0)
        _num("SafetyConfig", "watchdog_s", self.watchdog_s, 0.0)
