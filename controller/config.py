"""Settings of the MPC and of its safety layer: typed, frozen, validated at construction.

:class:`ControllerConfig` is the controller's settings file (``deploy/mpc.yaml``: an ``mpc`` and a ``safety``
section; JSON schema ``deploy/schemas/mpc.schema.json``); :class:`MPCConfig` and :class:`SafetyConfig` load alone
from a mapping or YAML too (``MPCConfig.from_yaml``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, model_validator

from alutwin.cbuild import check_flags
from alutwin.config import (
    Config,
    Flag,
    NonNegativeInt,
    NonNegativeNumber,
    OneOf,
    PositiveInt,
    PositiveNumber,
    Text,
    config_dataclass,
)
from controller.problem import ACD_RATE, WINDOWS, CostWeights

__all__ = ["HESSIANS", "ControllerConfig", "MPCConfig", "SafetyConfig"]

HESSIANS = ("exact", "limited-memory")
"""IPOPT's Hessian options the MPC offers."""

Margins = tuple[NonNegativeNumber, NonNegativeNumber, NonNegativeNumber, NonNegativeNumber]
"""A margin per window (``controller.problem.WINDOWS`` order and units)."""


@config_dataclass
class MPCConfig(Config):
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
    continue_capped : bool
        A capped solve whose iterate is not used (infeasible, or ``accept_capped`` off) still warm-starts the next
        solve from that iterate, shifted, as a successful one does (IPOPT goes on from where the cap stopped it);
        False: the next solve starts cold from the model's simulation.
    feasibility_tol : float
        Largest constraint violation (the NLP's scaled units) of an accepted capped iterate.
    warm_multipliers : bool
        Warm-start IPOPT's multipliers too (shifted like the primal solution) with a small initial barrier
        parameter, instead of the primal solution alone.
    backoff : tuple of 4 float
        Margins inside the windows (``controller.problem.WINDOWS`` order and units: %, %, degC, kg) the MPC's
        soft constraints use, so that model error and the current's steps leave the true windows held. Twice a
        margin must be less than its window's width.
    backoff_high : tuple of 4 float, optional
        Margins inside the windows' upper ends, where they differ from ``backoff`` (None: ``backoff`` on both
        sides); with ``backoff`` less than each window's width. A wider upper margin on the ledge keeps room for
        its growth when the line current drops.
    violation_factor : float or tuple of 4 float
        The MPC's penalties on leaving its (backed-off) windows are the cost's violation weights times this
        factor (the closed-loop cost keeps the stated weights): nearly hard constraints that stay feasible.
        One factor per window (``WINDOWS`` order) ranks the windows: the slow alumina and AlF3 take hours to
        come back from an excursion, a ledge excursion inside its margin is temporary. The ledge's 3 (not 1)
        makes the NMPC add heat early enough when the line current drops for hours: with 1, the surrogate NMPC
        let the ledge ride its margin until the ACD reached the top of the surrogate's known range and the
        ledge left its window (``bench/closed_loop.py``); 3 holds it there at the same energy per kg, where a
        wider ledge margin cost more energy.
    tol : float
        IPOPT's convergence tolerance.
    jit : bool
        Compile the NLP's functions to C (CasADi JIT with the system's C compiler): slower to build, much
        faster to solve. Without a compiler the MPC falls back to CasADi's virtual machine, with a warning.
    jit_flags : tuple of str
        Flags of the C compiler, after the common ones (:data:`alutwin.cbuild.DEFAULT_FLAGS`); flags that would
        break the floating-point policy (fast-math, FMA contraction) are refused.
    compile_in_background : bool
        When the model changes (a new champion in the twin), compile the new problem on a thread and keep
        solving the current one until it is ready, instead of compiling between two solves (a gap the safety
        layer would have to cover).
    bias_gain : float
        Gain in [0, 1] of the offset-free correction: after each interval the difference between the measured
        state and the model's one-interval prediction updates a constant derivative bias added to the model
        over the horizon (0 disables it).
    acd_rate : float
        m; the largest ACD move per control interval.
    """

    interval_steps: Annotated[PositiveInt, Field(le=10_000)] = 60
    horizon: Annotated[PositiveInt, Field(le=1000)] = 12
    weights: CostWeights = CostWeights()
    hessian: Annotated[str, OneOf(HESSIANS)] = "exact"
    max_iter: PositiveInt = 60
    max_wall_s: PositiveNumber = 1.5
    accept_capped: Flag = True
    continue_capped: Flag = True
    feasibility_tol: PositiveNumber = 1e-6
    warm_multipliers: Flag = True
    backoff: Margins = (0.3, 0.2, 1.0, 400.0)
    backoff_high: Margins | None = (0.3, 0.9, 1.0, 1125.0)
    violation_factor: NonNegativeNumber | Margins = (1000.0, 1000.0, 10.0, 3.0)
    tol: PositiveNumber = 1e-6
    jit: Flag = True
    jit_flags: Annotated[tuple[Text, ...], AfterValidator(check_flags)] = ("-O1",)
    compile_in_background: Flag = True
    bias_gain: Annotated[NonNegativeNumber, Field(le=1)] = 0.5
    acd_rate: PositiveNumber = ACD_RATE

    @model_validator(mode="after")
    def _check_margins(self) -> MPCConfig:
        problems = []
        for i, (m, w) in enumerate(zip(self.backoff, WINDOWS, strict=True)):
            if not 2 * m < w.high - w.low:
                problems.append(f"backoff[{i}]: {m} leaves nothing of the window {w.name} [{w.low}, {w.high}]")
        if self.backoff_high is not None:
            for i, (lo, hi, w) in enumerate(zip(self.backoff, self.backoff_high, WINDOWS, strict=True)):
                if not lo + hi < w.high - w.low:
                    problems.append(
                        f"backoff_high[{i}]: {hi} leaves nothing of the window {w.name} [{w.low}, {w.high}] "
                        f"beside backoff[{i}] = {lo}"
                    )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def violation_factors(self) -> tuple[float, ...]:
        """The violation factor of each window (``WINDOWS`` order)."""
        f = self.violation_factor
        return tuple(f) if isinstance(f, tuple) else (float(f),) * len(WINDOWS)

    @property
    def backoffs_high(self) -> tuple[float, ...]:
        """The margins inside the windows' upper ends."""
        return self.backoff if self.backoff_high is None else self.backoff_high


@config_dataclass
class SafetyConfig(Config):
    """Settings of the safety layer around the MPC.

    Parameters
    ----------
    shifted_intervals : int
        After a failed solve, how many intervals the shifted last feasible plan is applied before the cell's
        own controllers take over (0: hand over at once).
    watchdog_s : float
        Wall-clock seconds without a measurement after which the watchdog hands the cell back to its own
        controllers (0 disables the watchdog).
    alumina_guard_pct : float
        %: the alumina feed of an interval is raised, where needed, so that the alumina (measured now, with the
        cell's consumption ``k3 I``) ends the interval at this level at least (0 disables the guard). Below
        about 2.2 % the model's bubble coverage nears 1 and the cell voltage, and with it the heat, runs away
        within minutes (the ledge melts: a fault), and the MPC's surrogate need not know where. The default is
        the alumina window's lower end plus the MPC's back-off (2.0 + 0.3).
    """

    shifted_intervals: NonNegativeInt = 3
    watchdog_s: NonNegativeNumber = 30.0
    alumina_guard_pct: NonNegativeNumber = 2.3


@config_dataclass
class ControllerConfig(Config):
    """The controller's settings file: the MPC and its safety layer.

    Parameters
    ----------
    mpc : MPCConfig
        Settings of the NMPC (a mapping in YAML).
    safety : SafetyConfig
        Settings of the safety layer (a mapping in YAML).
    """

    mpc: MPCConfig = MPCConfig()
    safety: SafetyConfig = SafetyConfig()
