"""Summaries of an ensemble's free run in numpy: the mean, the spread over the members, the algebraic outputs
of the mean, and where the members and the mean leave the valid domain (what the twin's Predict returns; the
compiled kernel computes the same in C, beside the rollout)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from identification.rollout.translate import OUTPUT_ORDER
from plant.domain import check_domain
from plant.params import DEFAULT_LIMITS, DomainLimits
from plant.physics import OUTPUT_FUNCTIONS, algebraic
from plant.signals import N_STATES

__all__ = [
    "Box",
    "Exits",
    "Summary",
    "algebraic_outputs",
    "check_box",
    "exits_of",
    "first_steps",
    "summarise",
    "summary_of",
]

Box = tuple[np.ndarray, np.ndarray]
"""A box of states: ``(low, high)``, ``(8,)`` each; a state counts as outside where it is not in ``[low, high]``
(NaN is outside)."""


@dataclass(frozen=True)
class Exits:
    """Where an ensemble's free run leaves the valid domain: per trajectory the first step at which
    :func:`plant.domain.check_domain` reports a fault (-1: never), and the mean's first step outside a box."""

    limits: DomainLimits  # the valid domain checked
    box: Box | None  # the box the mean was checked against (None: not checked)
    members: np.ndarray  # (M, B) int64: each member's first step outside the domain
    mean: np.ndarray  # (B,) int64: the ensemble mean's
    mean_box: np.ndarray | None  # (B,) int64: the ensemble mean's first step outside the box (with box)

    def flagged(self) -> np.ndarray:
        """The scenarios where a member or the mean leaves the domain or the mean the box, ascending."""
        bad = (self.members >= 0).any(axis=0) | (self.mean >= 0)
        if self.mean_box is not None:
            bad |= self.mean_box >= 0
        return np.flatnonzero(bad)


@dataclass(frozen=True)
class Summary:
    """An ensemble's free run, summarised (what the twin's Predict returns)."""

    mean: np.ndarray  # (B, H + 1, 8) ensemble mean of the states
    spread: np.ndarray  # (B, H + 1, 8) population std over the members
    outputs: np.ndarray  # (B, H + 1, len(OUTPUT_ORDER)) algebraic outputs of the mean
    members: np.ndarray | None  # (M, B, H + 1, 8) every member's states, when asked for
    exits: Exits | None = None  # where the members and the mean leave the valid domain (None: not computed)


def summarise(states: np.ndarray, chunk: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Ensemble mean and population standard deviation over axis 0 of ``states`` ``(M, B, ...)``.

    The operations of ``states.mean(0)`` and ``states.std(0)`` (members summed in order, two passes), a few
    scenarios at a time so that each block stays in cache, which is faster on large batches.
    """
    mean = np.empty(states.shape[1:])
    spread = np.empty(states.shape[1:])
    with np.errstate(all="ignore"):  # diverged members give inf and NaN, not an error
        _summarise_into(states, mean, spread, chunk)
    return mean, spread


def _summarise_into(states: np.ndarray, mean: np.ndarray, spread: np.ndarray, chunk: int) -> None:
    m, b = states.shape[:2]
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


def algebraic_outputs(mean: np.ndarray, u: np.ndarray, names: tuple[str, ...] = OUTPUT_ORDER) -> np.ndarray:
    """Algebraic outputs ``names`` of states ``mean`` ``(B, H + 1, 8)`` with inputs ``u`` ``(B, H, 5)`` (state k
    with input k, the last state with the last input): ``(B, H + 1, len(names))``, in numpy."""
    u_ext = np.concatenate([u, u[:, -1:]], axis=1)  # (B, H + 1, 5)
    with np.errstate(all="ignore"):  # a diverged mean gives NaN outputs, not an error
        alg = algebraic(mean, u_ext)
        return np.stack([OUTPUT_FUNCTIONS[n](alg) for n in names], axis=-1)


def first_steps(flags: np.ndarray) -> np.ndarray:
    """Index (int64) of the first true entry along the last axis of ``flags``, -1 where none."""
    return np.where(flags.any(-1), np.argmax(flags, axis=-1), -1).astype(np.int64)


def check_box(box: Box | None) -> Box | None:
    """``box`` as two C-contiguous float64 arrays of 8, or a ValueError naming what is wrong."""
    if box is None:
        return None
    if not isinstance(box, tuple) or len(box) != 2:
        raise ValueError(f"box must be a pair (low, high) of {N_STATES} values, got {type(box).__name__}")
    low, high = (np.ascontiguousarray(b, dtype=np.float64) for b in box)
    if low.shape != (N_STATES,) or high.shape != (N_STATES,):
        raise ValueError(f"box must be a pair (low, high) of {N_STATES} values, got shapes {low.shape}, {high.shape}")
    return low, high


def exits_of(
    states: np.ndarray, mean: np.ndarray, limits: DomainLimits = DEFAULT_LIMITS, box: Box | None = None
) -> Exits:
    """The :class:`Exits` of member rollouts ``states`` ``(M, B, T, 8)`` with ensemble mean ``mean``
    ``(B, T, 8)``, in numpy."""
    box = check_box(box)
    mean_box = None
    if box is not None:
        with np.errstate(invalid="ignore"):
            mean_box = first_steps(np.asarray(~((mean >= box[0]) & (mean <= box[1])).all(-1)))
    return Exits(
        limits,
        box,
        first_steps(check_domain(states, limits) != 0),
        first_steps(check_domain(mean, limits) != 0),
        mean_box,
    )


def summary_of(
    states: np.ndarray,
    u: np.ndarray,
    members: bool = False,
    limits: DomainLimits = DEFAULT_LIMITS,
    box: Box | None = None,
) -> Summary:
    """The :class:`Summary` of member rollouts ``states`` ``(M, B, H + 1, 8)`` under ``u`` ``(B, H, 5)``, in numpy,
    with the :class:`Exits` from the valid domain ``limits`` (and of the mean from ``box``)."""
    mean, spread = summarise(states)
    exits = exits_of(states, mean, limits, box)
    return Summary(mean, spread, algebraic_outputs(mean, u), states if members else None, exits)
