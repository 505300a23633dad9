"""Metrics of the published protocol (AN-RFMSE, divergence), per-state errors, sparsity and structure.

AN-RFMSE: per rollout and step k, ``e_k = (1/8) sum_i |x_hat_ik - x_ik| / sigma_i`` with sigma_i the training
set's std of state i. A rollout has diverged if ``max_k e_k > 3`` or it holds a NaN/inf; diverged rollouts are
counted and left out of the window means.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

from identification.network import EnsembleWeights

__all__ = [
    "DIVERGENCE_LIMIT",
    "TRUE_STRUCTURE",
    "WINDOWS",
    "RolloutScores",
    "an_rfmse_curve",
    "fit_percent",
    "jacobian_dependency",
    "mean_pairwise_jaccard",
    "nrmse",
    "path_dependency",
    "score_rollouts",
    "structure_scores",
]

DIVERGENCE_LIMIT = 3.0
WINDOWS: dict[str, tuple[int, int]] = {"100dT": (0, 100), "2500dT": (100, 2500), "5000dT": (2500, 5000)}
"""Step windows [start, stop) of the window means."""

# Which inputs (x0..x7, u0..u4) each derivative depends on, from plant.md (spec/learning.md's table).
_TRUE = {
    0: (0, 1, 2, 3, 5, 6),
    1: (8, 9),
    2: (8, 10),
    3: (0, 1, 2, 3, 5, 6, 8),
    4: (9, 11),
    5: (0, 1, 2, 3, 5, 6, 9, 12),
    6: (0, 1, 2, 3, 5, 6, 7),
    7: (0, 6, 7),
}
TRUE_STRUCTURE = np.zeros((8, 13), dtype=bool)
for _i, _cols in _TRUE.items():
    TRUE_STRUCTURE[_i, list(_cols)] = True


def an_rfmse_curve(x_hat: np.ndarray, x_true: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """``e_k`` of each rollout: ``x_hat`` and ``x_true`` ``(R, T + 1, 8)``, ``sigma`` ``(8,)`` -> ``(R, T + 1)``.

    Non-finite predictions give ``inf`` at that step (so the rollout counts as diverged).
    """
    x_hat = np.asarray(x_hat, dtype=np.float64)
    x_true = np.asarray(x_true, dtype=np.float64)
    if x_hat.shape != x_true.shape or x_hat.ndim != 3:
        raise ValueError(f"x_hat and x_true must both be (R, T+1, 8); got {x_hat.shape} and {x_true.shape}")
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.shape != (x_hat.shape[2],) or np.any(sigma <= 0):
        raise ValueError(f"sigma must be {x_hat.shape[2]} positive values, got {sigma}")
    with np.errstate(all="ignore"):
        e = np.mean(np.abs(x_hat - x_true) / sigma, axis=2)
    return np.where(np.isfinite(e), e, np.inf)


@dataclass(frozen=True)
class RolloutScores:
    """Scores of R rollouts.

    ``window_means`` holds, per window of ``windows``, each rollout's mean ``e_k`` over it (NaN where the
    rollout diverged, or the window lies beyond the rollouts); ``at_steps`` holds ``e_k`` at chosen steps
    (NaN where the rollout diverged at or before that step).
    """

    curve: np.ndarray  # (R, T + 1) e_k
    window_means: dict[str, np.ndarray]  # name -> (R,), NaN where diverged (or the window is out of range)
    diverged_at: np.ndarray  # (R,) first step with e_k > limit, or -1
    windows: dict[str, tuple[int, int]] = field(default_factory=lambda: dict(WINDOWS))
    at_steps: dict[int, np.ndarray] = field(default_factory=dict)  # step -> (R,)

    def diverged_by(self, step: int) -> int:
        """Number of rollouts that diverged before ``step``."""
        return int(np.sum((self.diverged_at >= 0) & (self.diverged_at < step)))

    def summary(self) -> dict[str, float | int]:
        """Medians and quartiles of the window means (and of ``e_k`` at the chosen steps, as ``step<k>_...``)
        over the rollouts that did not diverge, and the counts of divergences by the end of each window."""
        out: dict[str, float | int] = {"rollouts": int(self.curve.shape[0])}
        named = {**self.window_means, **{f"step{k}": v for k, v in self.at_steps.items()}}
        for name, values in named.items():
            ok = values[np.isfinite(values)]
            q = np.percentile(ok, [25, 50, 75]) if ok.size else [np.nan] * 3
            out[f"{name}_q25"], out[f"{name}_median"], out[f"{name}_q75"] = (float(v) for v in q)
        for name, (_, stop) in self.windows.items():
            out[f"diverged_by_{name}"] = self.diverged_by(stop)
        out["diverged"] = int(np.sum(self.diverged_at >= 0))
        return out


def _check_windows(windows: Mapping[str, tuple[int, int]], n_points: int) -> dict[str, tuple[int, int]]:
    out = {}
    for name, pair in windows.items():
        try:
            start, stop = (int(v) for v in pair)
        except (TypeError, ValueError):
            raise ValueError(f"window {name!r} must be a (start, stop) pair of steps, got {pair!r}") from None
        if not (0 <= start < stop <= n_points):
            raise ValueError(
                f"window {name!r} = [{start}, {stop}) must satisfy 0 <= start < stop <= {n_points} (the rollouts' "
                "steps, initial state included)"
            )
        out[str(name)] = (start, stop)
    return out


def score_rollouts(
    x_hat: np.ndarray,
    x_true: np.ndarray,
    sigma: np.ndarray,
    limit: float = DIVERGENCE_LIMIT,
    *,
    windows: Mapping[str, tuple[int, int]] | None = None,
    steps: Sequence[int] = (),
) -> RolloutScores:
    """AN-RFMSE window means and divergence of rollouts ``(R, T + 1, 8)`` against the truth.

    ``windows``: ``name -> (start, stop)`` step windows ``[start, stop)`` to average over (default
    :data:`WINDOWS`, the published ones, NaN where the rollouts are shorter; chosen windows must fit the
    rollouts). ``steps``: steps at which to report ``e_k`` itself.
    """
    if not (np.isfinite(limit) and limit > 0):
        raise ValueError(f"limit must be a positive number, got {limit!r}")
    e = an_rfmse_curve(x_hat, x_true, sigma)
    n_points = e.shape[1]
    chosen = WINDOWS if windows is None else _check_windows(windows, n_points)
    step_list = [int(k) for k in steps]
    bad = [k for k in step_list if not 0 <= k < n_points]
    if bad:
        raise ValueError(f"steps {bad} are outside the rollouts' steps 0..{n_points - 1}")
    over = e > limit
    diverged_at = np.where(over.any(axis=1), over.argmax(axis=1), -1)
    diverged = diverged_at >= 0
    means = {}
    for name, (start, stop) in chosen.items():
        if n_points < stop:
            means[name] = np.full(e.shape[0], np.nan)
            continue
        m = e[:, start:stop].mean(axis=1)
        means[name] = np.where(diverged, np.nan, m)
    at = {k: np.where(diverged & (diverged_at <= k), np.nan, e[:, k]) for k in step_list}
    return RolloutScores(e, means, diverged_at, dict(chosen), at)


def nrmse(x_hat: np.ndarray, x_true: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """RMSE of each state over all rollouts and steps, divided by ``sigma`` (the training std): ``(8,)``."""
    err = np.asarray(x_hat) - np.asarray(x_true)
    return np.sqrt(np.mean(err.reshape(-1, err.shape[-1]) ** 2, axis=0)) / np.asarray(sigma)


def fit_percent(x_hat: np.ndarray, x_true: np.ndarray) -> np.ndarray:
    """FIT% of each state: ``100 (1 - ||x - x_hat|| / ||x - mean(x)||)`` over all rollouts and steps, ``(8,)``.

    A state that is constant in the truth has no FIT (NaN).
    """
    xt = np.asarray(x_true).reshape(-1, np.shape(x_true)[-1])
    xh = np.asarray(x_hat).reshape(-1, np.shape(x_hat)[-1])
    spread = np.linalg.norm(xt - xt.mean(axis=0), axis=0)
    with np.errstate(all="ignore"):
        fit = 100.0 * (1.0 - np.linalg.norm(xt - xh, axis=0) / spread)
    return np.where(spread > 0, fit, np.nan)


def path_dependency(weights: EnsembleWeights, threshold: float = 0.0) -> np.ndarray:
    """Which inputs each output can depend on through paths of weights with ``|w| > threshold``:
    bool ``(M, n_out, n_in)``."""
    arch = weights.architecture
    m = weights.n_members
    reach = np.broadcast_to(np.eye(arch.n_in, dtype=bool), (m, arch.n_in, arch.n_in))  # (M, n_in, units)
    seen = [reach]
    for w in weights.weights[:-1]:
        reach = np.matmul(reach.astype(np.int64), (np.abs(w) > threshold).astype(np.int64)) > 0
        seen.append(reach)
    last = np.concatenate(seen, axis=2) if arch.skip else reach
    out = np.matmul(last.astype(np.int64), (np.abs(weights.weights[-1]) > threshold).astype(np.int64)) > 0
    return np.transpose(out, (0, 2, 1))


def jacobian_dependency(
    weights: EnsembleWeights, z: np.ndarray, rel_threshold: float = 1e-2
) -> tuple[np.ndarray, np.ndarray]:
    """Dependency from the data Jacobian of the network in standardised units.

    ``z`` ``(S, n_in)`` are standardised inputs (data points). Entry (i, j) is in use if the mean of
    ``|d out_i / d z_j|`` over the data exceeds ``rel_threshold`` times the largest entry of row i.
    Returns ``(dependency bool (M, n_out, n_in), mean |J| (M, n_out, n_in))``.
    """
    arch = weights.architecture
    m = weights.n_members
    z = np.broadcast_to(np.asarray(z, dtype=np.float64), (m, *np.shape(z)))
    s = z.shape[1]
    h = z
    tangent = np.broadcast_to(np.eye(arch.n_in), (m, s, arch.n_in, arch.n_in))  # (M, S, n_in, units)
    seen = [tangent]
    for w, b in zip(weights.weights[:-1], weights.biases[:-1], strict=True):
        pre = np.matmul(h, w) + b[:, None, :]
        active = (pre > 0).astype(np.float64)  # (M, S, units)
        h = pre * active
        tangent = np.matmul(tangent, w[:, None]) * active[:, :, None, :]
        seen.append(tangent)
    last = np.concatenate(seen, axis=3) if arch.skip else tangent
    jac = np.matmul(last, weights.weights[-1][:, None])  # (M, S, n_in, n_out)
    mean_abs = np.transpose(np.abs(jac).mean(axis=1), (0, 2, 1))  # (M, n_out, n_in)
    row_max = mean_abs.max(axis=2, keepdims=True)
    return mean_abs > rel_threshold * np.maximum(row_max, 1e-300), mean_abs


def structure_scores(dependency: np.ndarray, truth: np.ndarray = TRUE_STRUCTURE) -> dict[str, float]:
    """Precision, recall and F1 of a dependency matrix ``(n_out, n_in)`` against the true structure."""
    dep = np.asarray(dependency, dtype=bool)
    if dep.shape != truth.shape:
        raise ValueError(f"dependency must have shape {truth.shape}, got {dep.shape}")
    tp = int(np.sum(dep & truth))
    fp = int(np.sum(dep & ~truth))
    fn = int(np.sum(~dep & truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "entries": int(dep.sum())}


def mean_pairwise_jaccard(dependencies: np.ndarray) -> float:
    """Mean Jaccard index over all pairs of members' dependency matrices ``(M, n_out, n_in)``; 1.0 for M = 1."""
    deps = np.asarray(dependencies, dtype=bool)
    if deps.shape[0] < 2:
        return 1.0
    scores = []
    for a, b in combinations(range(deps.shape[0]), 2):
        union = np.sum(deps[a] | deps[b])
        scores.append(np.sum(deps[a] & deps[b]) / union if union else 1.0)
    return float(np.mean(scores))
