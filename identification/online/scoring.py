"""Scoring a model by multi-step rollout error on held-out segments.

The score is the mean of the members' free runs (what the twin's Predict serves) over ``horizon`` steps (1 h =
360 steps of 10 s), started every ``stride`` steps of held-out segments and driven by the measured inputs; each
rollout's score is the AN-RFMSE of ``docs/spec``'s metric averaged over steps 1..horizon, with divergence
(``max e_k > 3`` or non-finite) counted and left out of the means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from identification.metrics import DIVERGENCE_LIMIT, an_rfmse_curve
from identification.modelfile import LoadedModel
from identification.online.common import as_surrogate, finite_or_none
from identification.online.segments import Segment, rollout_windows
from identification.rollout import ENGINES, make_rollout_engine
from identification.surrogate import Surrogate
from plant.signals import N_STATES

__all__ = ["HORIZON_1H", "Evaluation", "evaluate"]

HORIZON_1H = 360
"""Steps of 10 s in one hour: the horizon of the online evaluation."""


@dataclass(frozen=True)
class Evaluation:
    """Multi-step rollout scores of one model on held-out segments.

    ``scores[r]`` is rollout r's AN-RFMSE over steps 1..horizon (inf where it diverged); ``error`` is their mean
    over the rollouts that did not diverge (NaN if none is left).
    """

    horizon: int
    scores: np.ndarray  # (R,)
    cells: np.ndarray  # (R,) cell of each rollout
    starts: np.ndarray  # (R,) step each rollout starts from
    diverged: np.ndarray  # (R,) bool

    @property
    def n_rollouts(self) -> int:
        return int(self.scores.shape[0])

    @property
    def n_diverged(self) -> int:
        return int(self.diverged.sum())

    @property
    def error(self) -> float:
        ok = self.scores[~self.diverged]
        return float(ok.mean()) if ok.size else float("nan")

    @property
    def median(self) -> float:
        ok = self.scores[~self.diverged]
        return float(np.median(ok)) if ok.size else float("nan")

    def per_cell(self) -> dict[int, float]:
        """Mean score of each cell's non-diverged rollouts (NaN for a cell whose rollouts all diverged)."""
        out = {}
        for c in np.unique(self.cells):
            sel = (self.cells == c) & ~self.diverged
            out[int(c)] = float(self.scores[sel].mean()) if sel.any() else float("nan")
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "horizon": self.horizon,
            "rollouts": self.n_rollouts,
            "diverged": self.n_diverged,
            "an_rfmse_mean": finite_or_none(self.error),
            "an_rfmse_median": finite_or_none(self.median),
            "per_cell": {str(c): finite_or_none(v) for c, v in self.per_cell().items()},
        }


def evaluate(
    model: Surrogate | LoadedModel,
    segments: Sequence[Segment],
    *,
    horizon: int = HORIZON_1H,
    stride: int = 30,
    sigma: np.ndarray | None = None,
    engine: str = "auto",
    threads: int | None = None,
) -> Evaluation:
    """Multi-step rollout error of ``model``'s prediction (the mean of its members' free runs, as the twin's
    Predict serves it) on held-out ``segments``.

    Parameters
    ----------
    model : the model.
    segments : held-out trajectories; each contributes rollouts from every ``stride``-th step that leaves
        ``horizon`` steps.
    horizon : rollout length, steps (360 = 1 h).
    stride : steps between rollout starts.
    sigma : ``(8,)`` the metric's per-state scale; default the model's own training std. Compare two models
        with the same ``sigma`` (the worker passes the champion lineage's).
    engine : rollout engine (:data:`identification.rollout.ENGINES`).
    threads : rollout threads.
    """
    sur = as_surrogate(model, "model")
    for name, v in (("horizon", horizon), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; must be one of {list(ENGINES)}")
    sig = sur.normalization.state_std if sigma is None else np.asarray(sigma, dtype=np.float64)
    if sig.shape != (N_STATES,) or not np.all(np.isfinite(sig)) or np.any(sig <= 0):
        raise ValueError(f"sigma must be {N_STATES} positive finite values, got {sigma!r}")
    x_true, u, cells, starts, _ = rollout_windows(segments, int(horizon), int(stride))
    r = x_true.shape[0]
    if r == 0:
        empty = np.zeros(0)
        return Evaluation(int(horizon), empty, empty.astype(np.int64), empty.astype(np.int64), empty.astype(bool))
    with np.errstate(all="ignore"):  # what the twin's Predict serves: the mean of the members' trajectories
        x_hat = make_rollout_engine(sur, engine, threads).simulate(x_true[:, 0], u).mean(axis=0)  # (R, H + 1, 8)
    e = an_rfmse_curve(x_hat, x_true, sig)[:, 1:]  # (R, H)
    diverged = ~np.all(np.isfinite(e), axis=1) | (np.max(e, axis=1) > DIVERGENCE_LIMIT)
    with np.errstate(all="ignore"):
        scores = np.where(diverged, np.inf, e.mean(axis=1))
    return Evaluation(int(horizon), scores, cells.astype(np.int64), starts.astype(np.int64), diverged)
