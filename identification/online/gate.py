"""The gate: whether a challenger may replace the champion, with every figure it used.

A challenger is promoted only if it is finite, diverges no more often than the champion, is better by a margin
overall, is not worse on any cell beyond a tolerance, and is structurally sane (non-zero count and input-output
dependency close to the champion's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from identification.metrics import path_dependency
from identification.modelfile import LoadedModel
from identification.network import EnsembleWeights
from identification.online.common import as_surrogate, check_positive, finite_or_none
from identification.online.scoring import Evaluation
from identification.surrogate import Surrogate

__all__ = ["Decision", "Gate"]


def _dependency(weights: EnsembleWeights) -> np.ndarray:
    """Entries (output, input) that at least half of the members use through non-zero weights, (8, 13)."""
    return path_dependency(weights).mean(axis=0) >= 0.5


@dataclass(frozen=True)
class Decision:
    """The gate's verdict on one challenger, with every figure it used."""

    promote: bool
    reason: str
    checks: dict[str, bool]
    champion: dict[str, Any]  # Evaluation.as_dict() of the champion
    challenger: dict[str, Any]  # ... of the challenger
    ratio: float  # challenger error / champion error (NaN if either is not finite)
    champion_nonzero: int
    challenger_nonzero: int
    nonzero_ratio: float
    dependency_jaccard: float
    worst_cell: int | None
    worst_cell_ratio: float

    def as_dict(self) -> dict[str, Any]:
        """JSON data (non-finite numbers as null)."""
        return {
            "promote": self.promote,
            "reason": self.reason,
            "checks": dict(self.checks),
            "champion": self.champion,
            "challenger": self.challenger,
            "ratio": finite_or_none(self.ratio),
            "champion_nonzero": self.champion_nonzero,
            "challenger_nonzero": self.challenger_nonzero,
            "nonzero_ratio": finite_or_none(self.nonzero_ratio),
            "dependency_jaccard": finite_or_none(self.dependency_jaccard),
            "worst_cell": self.worst_cell,
            "worst_cell_ratio": finite_or_none(self.worst_cell_ratio),
        }


@dataclass(frozen=True)
class Gate:
    """When a challenger may replace the champion.

    Parameters
    ----------
    margin : the challenger's held-out error must be at most ``margin`` times the champion's.
    cell_tolerance : and on no cell more than ``cell_tolerance`` times the champion's there (a model that
        learnt one cell's broken sensor gets worse on the healthy cells).
    max_new_diverged : rollouts the challenger may diverge on beyond the champion's count.
    max_nonzero_ratio : its non-zero weights at most this many times the champion's.
    min_dependency_jaccard : the Jaccard index of its input-output dependency matrix (entries that at least
        half the members use) with the champion's must be at least this.
    min_rollouts : fewer held-out rollouts than this give no decision (the gate refuses to promote).
    """

    margin: float = 0.9
    cell_tolerance: float = 1.1
    max_new_diverged: int = 0
    max_nonzero_ratio: float = 1.5
    min_dependency_jaccard: float = 0.7
    min_rollouts: int = 4

    def __post_init__(self) -> None:
        check_positive("Gate", "margin", self.margin)
        if self.margin > 1:
            raise ValueError(f"Gate.margin must be in (0, 1], got {self.margin!r}")
        check_positive("Gate", "cell_tolerance", self.cell_tolerance)
        check_positive("Gate", "max_new_diverged", self.max_new_diverged, integer=True, allow_zero=True)
        check_positive("Gate", "max_nonzero_ratio", self.max_nonzero_ratio)
        check_positive("Gate", "min_dependency_jaccard", self.min_dependency_jaccard, allow_zero=True)
        if self.min_dependency_jaccard > 1:
            raise ValueError(f"Gate.min_dependency_jaccard must be in [0, 1], got {self.min_dependency_jaccard!r}")
        check_positive("Gate", "min_rollouts", self.min_rollouts, integer=True)

    def as_dict(self) -> dict[str, Any]:
        return {
            "margin": self.margin,
            "cell_tolerance": self.cell_tolerance,
            "max_new_diverged": self.max_new_diverged,
            "max_nonzero_ratio": self.max_nonzero_ratio,
            "min_dependency_jaccard": self.min_dependency_jaccard,
            "min_rollouts": self.min_rollouts,
        }

    def decide(
        self,
        champion: Surrogate | LoadedModel,
        challenger: Surrogate | LoadedModel,
        champion_eval: Evaluation,
        challenger_eval: Evaluation,
    ) -> Decision:
        """Judge ``challenger`` against ``champion`` on the same held-out rollouts; every check is run and
        recorded, the reason names the first that failed."""
        champ = as_surrogate(champion, "champion")
        chall = as_surrogate(challenger, "challenger")
        if not (
            np.array_equal(champion_eval.starts, challenger_eval.starts)
            and np.array_equal(champion_eval.cells, challenger_eval.cells)
        ):
            raise ValueError("champion and challenger must be evaluated on the same rollouts")
        e0, e1 = champion_eval.error, challenger_eval.error
        ratio = e1 / e0 if math.isfinite(e0) and math.isfinite(e1) and e0 > 0 else float("nan")
        nz0 = int(champ.weights.nonzero().sum())
        nz1 = int(chall.weights.nonzero().sum())
        nz_ratio = nz1 / nz0 if nz0 else float("inf")
        same_arch = champ.weights.architecture == chall.weights.architecture
        if same_arch or (champ.weights.architecture.n_in == chall.weights.architecture.n_in):
            d0, d1 = _dependency(champ.weights), _dependency(chall.weights)
            union = int(np.sum(d0 | d1))
            jaccard = float(np.sum(d0 & d1) / union) if union else 1.0
        else:  # pragma: no cover - every surrogate has 13 inputs and 8 outputs
            jaccard = 0.0
        cells0, cells1 = champion_eval.per_cell(), challenger_eval.per_cell()
        worst_cell, worst = None, 0.0
        for c, v0 in cells0.items():
            v1 = cells1.get(c, float("nan"))
            rc = v1 / v0 if math.isfinite(v0) and v0 > 0 and math.isfinite(v1) else float("inf")
            if not math.isfinite(v0):
                rc = 0.0 if math.isfinite(v1) else 1.0  # the champion diverged on every rollout of the cell
            if worst_cell is None or rc > worst:
                worst_cell, worst = c, rc
        checks = {
            "enough_data": champion_eval.n_rollouts >= self.min_rollouts,
            "finite": bool(math.isfinite(e1) and chall.n_members > 0),
            "no_new_divergence": challenger_eval.n_diverged <= champion_eval.n_diverged + self.max_new_diverged,
            "margin": bool(math.isfinite(ratio) and ratio <= self.margin)
            or bool(math.isfinite(e1) and not math.isfinite(e0)),
            "every_cell": worst <= self.cell_tolerance,
            "sparsity": nz_ratio <= self.max_nonzero_ratio,
            "structure": jaccard >= self.min_dependency_jaccard,
        }
        reasons = {
            "enough_data": f"only {champion_eval.n_rollouts} held-out rollouts (at least {self.min_rollouts} needed)",
            "finite": "the challenger's rollouts are not finite (all diverged)",
            "no_new_divergence": f"the challenger diverged on {challenger_eval.n_diverged} rollouts, the champion on "
            f"{champion_eval.n_diverged}",
            "margin": f"not better by the margin: error {e1:.4g} vs champion {e0:.4g} (ratio {ratio:.3f} > {self.margin})",
            "every_cell": f"worse on cell {worst_cell}: {worst:.3f} x the champion's error there (tolerance "
            f"{self.cell_tolerance})",
            "sparsity": f"{nz1} non-zero weights vs the champion's {nz0} (ratio {nz_ratio:.2f} > {self.max_nonzero_ratio})",
            "structure": f"dependency structure changed: Jaccard {jaccard:.2f} with the champion's "
            f"(< {self.min_dependency_jaccard})",
        }
        failed = [name for name, ok in checks.items() if not ok]
        promote = not failed
        reason = (
            f"promoted: error {e1:.4g} vs champion {e0:.4g} (ratio {ratio:.3f} <= {self.margin})"
            if promote
            else "rejected: " + reasons[failed[0]]
        )
        return Decision(
            promote=promote,
            reason=reason,
            checks=checks,
            champion=champion_eval.as_dict(),
            challenger=challenger_eval.as_dict(),
            ratio=ratio,
            champion_nonzero=nz0,
            challenger_nonzero=nz1,
            nonzero_ratio=nz_ratio,
            dependency_jaccard=jaccard,
            worst_cell=worst_cell,
            worst_cell_ratio=worst,
        )
