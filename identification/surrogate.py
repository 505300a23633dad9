"""A trained surrogate: ensemble weights + normalisation + an optional physics prior, with one-step
prediction and free-run simulation (explicit Euler, as in the published protocol)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from identification.data import Envelope, Normalization
from identification.network import EnsembleWeights, forward
from plant.params import CellParams
from plant.physics import rhs
from plant.signals import N_INPUTS, N_STATES

__all__ = ["PRIORS", "Surrogate", "check_rollout_inputs", "prior_derivative"]

PRIORS: dict[str, CellParams | None] = {
    "none": None,
    "wrong_liquidus": CellParams(liquidus_override=968.0),
}
"""Physics priors by name: the network learns the residual ``dx - prior(x, u)``. ``wrong_liquidus`` is the
CoSTA paper's misspecified model (liquidus fixed at 968 degC)."""


def prior_derivative(prior: str, x: np.ndarray, u: np.ndarray) -> np.ndarray | None:
    """The prior's derivative at ``(x, u)`` (same leading shape), or None for no prior."""
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; must be one of {sorted(PRIORS)}")
    params = PRIORS[prior]
    if params is None:
        return None
    with np.errstate(all="ignore"):
        return rhs(x, u, params)


def check_rollout_inputs(x0: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x0`` ``(B, 8)`` and ``u`` ``(B, T, 5)`` as C-contiguous float64, or a ValueError naming what is wrong.

    The one validation of every rollout engine's inputs (this module's and :mod:`identification.rollout`).
    """
    x0 = np.ascontiguousarray(x0, dtype=np.float64)
    u = np.ascontiguousarray(u, dtype=np.float64)
    if x0.ndim != 2 or x0.shape[1] != N_STATES:
        raise ValueError(f"x0 must be (B, {N_STATES}), got {x0.shape}")
    if u.ndim != 3 or u.shape[0] != x0.shape[0] or u.shape[2] != N_INPUTS:
        raise ValueError(f"u must be ({x0.shape[0]}, T, {N_INPUTS}), got {u.shape}")
    if not (np.all(np.isfinite(x0)) and np.all(np.isfinite(u))):
        raise ValueError("x0 and u must be finite")
    return x0, u


@dataclass(frozen=True)
class Surrogate:
    """``dx/dt = prior(x, u) + target_std * NN((([x, u]) - mean) / std) + target_mean`` for each member."""

    weights: EnsembleWeights
    normalization: Normalization
    prior: str = "none"
    envelope: Envelope | None = None  # the training data's ranges (None: not known)

    def __post_init__(self) -> None:
        arch = self.weights.architecture
        if arch.n_in != N_STATES + N_INPUTS or arch.n_out != N_STATES:
            raise ValueError(
                f"a cell surrogate maps {N_STATES + N_INPUTS} inputs to {N_STATES}; got {arch.n_in} -> {arch.n_out}"
            )
        if self.prior not in PRIORS:
            raise ValueError(f"unknown prior {self.prior!r}; must be one of {sorted(PRIORS)}")

    @property
    def n_members(self) -> int:
        return self.weights.n_members

    @property
    def dt(self) -> float:
        return self.normalization.dt

    def derivative(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Each member's derivative at states ``x`` ``(B, 8)`` (or ``(M, B, 8)``) and inputs ``u`` ``(B, 5)``
        (or ``(M, B, 5)``): ``(M, B, 8)``."""
        x = np.asarray(x, dtype=np.float64)
        u = np.asarray(u, dtype=np.float64)
        m = self.n_members
        if x.ndim == 2:
            x = np.broadcast_to(x, (m, *x.shape))
        if u.ndim == 2:
            u = np.broadcast_to(u, (m, *u.shape))
        if x.ndim != 3 or x.shape[0] != m or x.shape[2] != N_STATES:
            raise ValueError(f"x must be (B, {N_STATES}) or ({m}, B, {N_STATES}), got {x.shape}")
        if u.shape != (*x.shape[:2], N_INPUTS):
            raise ValueError(f"u must be (B, {N_INPUTS}) matching x, got {u.shape}")
        with np.errstate(all="ignore"):
            out = self.normalization.derivative(forward(self.weights, self.normalization.features(x, u)))
        prior = prior_derivative(self.prior, x, u)
        return out if prior is None else out + prior

    def step(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One explicit-Euler step of ``dt``: ``(M, B, 8)``."""
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(all="ignore"):
            return x + self.dt * self.derivative(x, u)

    def simulate(self, x0: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Free run of every member from ``x0`` ``(B, 8)`` driven by inputs ``u`` ``(B, T, 5)``: ``(M, B, T + 1, 8)``.

        A member that blows up yields inf/NaN from that step on (the metric counts it as diverged); nothing
        is clipped or hidden.
        """
        x0, u = check_rollout_inputs(x0, u)
        m, (b, t, _) = self.n_members, u.shape
        out = np.empty((m, b, t + 1, N_STATES))
        x = np.broadcast_to(x0, (m, b, N_STATES)).copy()
        out[:, :, 0] = x
        for k in range(t):
            x = self.step(x, u[:, k])
            out[:, :, k + 1] = x
        return out

    def predict_with_uncertainty(self, x0: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Free run of every member, summarised as the ensemble mean and spread (std over members).

        Returns ``(mean, spread)``, each ``(B, T + 1, 8)``. The spread is the predictive uncertainty of the
        ensemble: members that agree are where the data pinned the model down.
        """
        runs = self.simulate(x0, u)  # (M, B, T+1, 8)
        with np.errstate(all="ignore"):
            return runs.mean(axis=0), runs.std(axis=0)

    def mean(self) -> MeanSurrogate:
        """The ensemble mean as a single predictor."""
        return MeanSurrogate(self)


@dataclass(frozen=True)
class MeanSurrogate:
    """The ensemble-mean derivative of a :class:`Surrogate` (one trajectory per scenario)."""

    ensemble: Surrogate

    def derivative(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """``(B, 8)`` mean derivative at ``x`` ``(B, 8)``, ``u`` ``(B, 5)``."""
        return self.ensemble.derivative(x, u).mean(axis=0)

    def simulate(self, x0: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Free run of the mean model: ``(B, T + 1, 8)``."""
        x0 = np.asarray(x0, dtype=np.float64)
        u = np.asarray(u, dtype=np.float64)
        b, t, _ = u.shape
        out = np.empty((b, t + 1, N_STATES))
        out[:, 0] = x = x0
        with np.errstate(all="ignore"):
            for k in range(t):
                x = x + self.ensemble.dt * self.derivative(x, u[:, k])
                out[:, k + 1] = x
        return out
