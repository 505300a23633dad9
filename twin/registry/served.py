"""A served model: one validated version with its rollout engine, and the smoke test every version passes before
anything points at it."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from identification.modelfile import LoadedModel
from identification.rollout import NumpyRolloutEngine, RolloutEngine, make_rollout_engine
from identification.surrogate import Surrogate
from plant.engine import CompiledEngineError
from plant.signals import N_INPUTS, N_STATES, STATES
from twin.registry.errors import ModelRejected
from twin.registry.explain import explain
from twin.results import ModelExplanation, ModelId

__all__ = ["NOMINAL_INPUT", "NOMINAL_STATE", "Engine", "ServedModel", "default_engine", "validate_model"]

log = logging.getLogger(__name__)

_bath = 13_750.0 / (1.0 - 0.03 - 0.11)
NOMINAL_STATE = np.array([3260.0, 0.03 * _bath, 0.11 * _bath, 13_750.0, 9875.0, 975.0, 820.0, 582.0])
"""(8,) the state every version's smoke rollout starts from: mid-range of the spec (3 % alumina, 11 % AlF3)."""
NOMINAL_INPUT = np.array([0.024, 140_000.0, 0.0, 0.0, 0.05])
"""(5,) the input held over the smoke rollout: consumption-level alumina feed, 140 kA, ACD 5 cm."""
_STATE_SCALE = np.array([s.high - s.low for s in STATES])
_SMOKE_LIMIT = 1e3  # a smoke rollout further than this many typical ranges from the nominal state diverges
# Engine vs reference rollout, relative to each state's typical range: two implementations (C kernel and numpy)
# whose exp/pow and summation order differ in the last bits, which a 60-step rollout grows far below this.
_CONFORMANCE_RTOL = 1e-6

Engine = RolloutEngine | NumpyRolloutEngine
"""What rolls a surrogate out: ``simulate(x0 (B, 8), u (B, H, 5)) -> (M, B, H + 1, 8)``."""


def default_engine(surrogate: Surrogate) -> Engine:
    """The fastest correct rollout engine here (compiled where a C compiler is found, else numpy)."""
    return make_rollout_engine(surrogate, "auto")


@dataclass(frozen=True, eq=False)
class ServedModel:
    """One validated version, ready to roll out; immutable, so a call keeps the version it started with.

    ``manifest_bytes`` and ``weights_bytes`` are the files exactly as validated (what ExportModel sends).
    """

    name: str
    version: int
    loaded: LoadedModel
    engine: Engine
    manifest_bytes: bytes
    weights_bytes: bytes

    @property
    def surrogate(self) -> Surrogate:
        return self.loaded.surrogate

    @property
    def n_members(self) -> int:
        return self.loaded.surrogate.n_members

    @property
    def dt(self) -> float:
        return self.loaded.surrogate.dt

    def rollout(self, x0: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Every member's free run from ``x0`` ``(B, 8)`` under ``u`` ``(B, H, 5)``: ``(M, B, H + 1, 8)``."""
        return self.engine.simulate(x0, u)

    @functools.cached_property
    def explanation(self) -> ModelExplanation:
        """Computed on first use, then kept."""
        return explain(self.loaded, ModelId(self.name, self.version))


def validate_model(
    loaded: LoadedModel, smoke_horizon: int, engine_for: Callable[[Surrogate], Engine] = default_engine
) -> Engine:
    """The rollout engine of a model that passes the smoke test; ``ModelRejected`` otherwise.

    The smoke test rolls every member out for ``smoke_horizon`` steps from :data:`NOMINAL_STATE` under
    :data:`NOMINAL_INPUT`: the result must have the right shape, be finite and stay within 1000 typical ranges
    of each state from the nominal state and, for an engine other than the numpy reference
    (:meth:`Surrogate.simulate`), agree with that reference to ``1e-6`` of each state's typical range.
    """
    surrogate = loaded.surrogate
    try:
        engine = engine_for(surrogate)
    except CompiledEngineError as exc:
        log.error("the rollout engine cannot be built: %s", exc)
        raise ModelRejected("the rollout engine this server is configured with is unavailable here") from None
    x0 = NOMINAL_STATE[None, :]  # (1, 8)
    u = np.broadcast_to(NOMINAL_INPUT, (1, smoke_horizon, N_INPUTS)).copy()  # (1, H, 5)
    try:
        out = np.asarray(engine.simulate(x0, u))
    except (ValueError, ArithmeticError) as exc:
        raise ModelRejected(f"its rollout from the nominal state fails ({str(exc)[:200]})") from None
    expected = (surrogate.n_members, 1, smoke_horizon + 1, N_STATES)
    if out.shape != expected:
        raise ModelRejected(f"its rollout has shape {out.shape}, expected {expected}")
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(out - NOMINAL_STATE) <= _SMOKE_LIMIT * _STATE_SCALE)  # NaN compares False: bad
    if bad.any():
        member, _, step, i = (int(v) for v in np.argwhere(bad)[0])
        raise ModelRejected(
            f"its rollout from the nominal state diverges: member {member} reaches {STATES[i].name} = "
            f"{out[member, 0, step, i]:.3g} {STATES[i].unit} at step {step} of {smoke_horizon}"
        )
    if not isinstance(engine, NumpyRolloutEngine):
        ref = surrogate.simulate(x0, u)
        err = float(np.max(np.abs(out - ref) / _STATE_SCALE))
        if not err <= _CONFORMANCE_RTOL:
            raise ModelRejected(f"the rollout engine disagrees with the reference rollout (relative error {err:.2e})")
    return engine
