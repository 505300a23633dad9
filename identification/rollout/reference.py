"""The numpy reference of float32 compute: :meth:`Surrogate.simulate` with the network layers in float32.

The inputs are standardised in float64 (:meth:`Normalization.features`), rounded to float32 and run through
the layers with the weights and biases rounded to float32; the outputs are widened to float64 and
de-standardised there, the physics prior (if any) and the explicit-Euler update stay in float64. The compiled
kernel's float32 programs (:mod:`identification.rollout.layout`) compute the same, in another order of sums.
"""

from __future__ import annotations

import numpy as np

from identification.surrogate import Surrogate, check_rollout_inputs, prior_derivative
from plant.signals import N_STATES

__all__ = ["Float32Reference"]


class Float32Reference:
    """A surrogate's float32 derivative, free run and ensemble-mean free run, in numpy."""

    def __init__(self, surrogate: Surrogate) -> None:
        if not isinstance(surrogate, Surrogate):
            raise ValueError(f"surrogate must be a Surrogate, got {type(surrogate).__name__}")
        self.surrogate = surrogate
        w = surrogate.weights
        self._weights = tuple(a.astype(np.float32) for a in w.weights)  # per layer (M, n_in, n_out)
        self._biases = tuple(b.astype(np.float32)[:, None, :] for b in w.biases)  # per layer (M, 1, n_out)

    def derivative(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Each member's derivative at ``x`` ``(M, B, 8)`` and ``u`` ``(M, B, 5)`` (float64): ``(M, B, 8)``."""
        s = self.surrogate
        with np.errstate(all="ignore"):
            z = s.normalization.features(x, u).astype(np.float32)  # (M, B, 13)
            h, seen = z, [z]
            for w, b in zip(self._weights[:-1], self._biases[:-1], strict=True):
                h = np.maximum(np.matmul(h, w) + b, np.float32(0.0))
                seen.append(h)
            last_in = np.concatenate(seen, axis=-1) if s.weights.architecture.skip else h
            out = (np.matmul(last_in, self._weights[-1]) + self._biases[-1]).astype(np.float64)  # (M, B, 8)
            dx = s.normalization.derivative(out)
        prior = prior_derivative(s.prior, x, u)
        return dx if prior is None else dx + prior

    def simulate(self, x0: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Free run of every member from ``x0`` ``(B, 8)`` under ``u`` ``(B, T, 5)``: ``(M, B, T + 1, 8)``."""
        x0, u = check_rollout_inputs(x0, u)
        m, (b, t, _) = self.surrogate.n_members, u.shape
        dt = self.surrogate.dt
        out = np.empty((m, b, t + 1, N_STATES))
        x = np.broadcast_to(x0, (m, b, N_STATES)).copy()
        out[:, :, 0] = x
        for k in range(t):
            with np.errstate(all="ignore"):
                x = x + dt * self.derivative(x, np.broadcast_to(u[:, k], (m, b, u.shape[2])))
            out[:, :, k + 1] = x
        return out

    def simulate_mean(self, x0: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Free run of the ensemble-mean model (the members' mean derivative): ``(B, T + 1, 8)``."""
        x0, u = check_rollout_inputs(x0, u)
        m, (b, t, _) = self.surrogate.n_members, u.shape
        dt = self.surrogate.dt
        out = np.empty((b, t + 1, N_STATES))
        x = x0.copy()
        out[:, 0] = x
        for k in range(t):
            xs = np.broadcast_to(x, (m, b, N_STATES))
            with np.errstate(all="ignore"):
                x = x + dt * self.derivative(xs, np.broadcast_to(u[:, k], (m, b, u.shape[2]))).mean(axis=0)
            out[:, k + 1] = x
        return out
