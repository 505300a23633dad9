"""Summaries of an ensemble's free run in numpy: the mean, the spread over the members and the algebraic outputs
of the mean (what the twin's Predict returns; the compiled kernel computes the same in C)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from identification.rollout.translate import OUTPUT_ORDER
from plant.physics import OUTPUT_FUNCTIONS, algebraic

__all__ = ["Summary", "algebraic_outputs", "summarise", "summary_of"]


@dataclass(frozen=True)
class Summary:
    """An ensemble's free run, summarised (what the twin's Predict returns)."""

    mean: np.ndarray  # (B, H + 1, 8) ensemble mean of the states
    spread: np.ndarray  # (B, H + 1, 8) population std over the members
    outputs: np.ndarray  # (B, H + 1, len(OUTPUT_ORDER)) algebraic outputs of the mean
    members: np.ndarray | None  # (M, B, H + 1, 8) every member's states, when asked for


def summarise(states: np.ndarray, chunk: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Ensemble mean and population standard deviation over axis 0 of ``states`` ``(M, B, ...)``.

    The operations of ``states.mean(0)`` and ``states.std(0)`` (members summed in order, two passes), a few
    scenarios at a time so that each block stays in cache, which is faster on large batches.
    """
    m, b = states.shape[:2]
    mean = np.empty(states.shape[1:])
    spread = np.empty(states.shape[1:])
    for i in range(0, b, chunk):
        block = states[:, i : i + chunk]
        mu = mean[i : i + chunk]
        np.copyto(mu, block[0])
        for k in range(1, m):
            mu += block[k]
        mu /= m
        var = spread[i : i + chunk]
        var.fill(0.0)
        tmp = np.empty_like(mu)
        for k in range(m):
            np.subtract(block[k], mu, out=tmp)
            np.multiply(tmp, tmp, out=tmp)
            var += tmp
        var /= m
        np.sqrt(var, out=var)
    return mean, spread


def algebraic_outputs(mean: np.ndarray, u: np.ndarray, names: tuple[str, ...] = OUTPUT_ORDER) -> np.ndarray:
    """Algebraic outputs ``names`` of states ``mean`` ``(B, H + 1, 8)`` with inputs ``u`` ``(B, H, 5)`` (state k
    with input k, the last state with the last input): ``(B, H + 1, len(names))``, in numpy."""
    u_ext = np.concatenate([u, u[:, -1:]], axis=1)  # (B, H + 1, 5)
    with np.errstate(all="ignore"):  # a diverged mean gives NaN outputs, not an error
        alg = algebraic(mean, u_ext)
        return np.stack([OUTPUT_FUNCTIONS[n](alg) for n in names], axis=-1)


def summary_of(states: np.ndarray, u: np.ndarray, members: bool = False) -> Summary:
    """The :class:`Summary` of member rollouts ``states`` ``(M, B, H + 1, 8)`` under ``u`` ``(B, H, 5)``, in numpy."""
    mean, spread = summarise(states)
    return Summary(mean, spread, algebraic_outputs(mean, u), states if members else None)
