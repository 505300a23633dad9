"""The model variants of the study by name (no torch here: serving code reads this registry too)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["KINDS", "ModelSpec"]


@dataclass(frozen=True)
class ModelSpec:
    """What distinguishes the variants of the study."""

    description: str
    skip: bool = False
    regularizer: str = "l1"
    reg_settings: dict = field(default_factory=dict)
    prior: str = "none"
    prune_thresholds: tuple[float, ...] = ()  # threshold-and-mask rounds (exact zeros), each followed by re-training
    retrain_epochs: int = 0  # epochs of masked re-training after each pruning round
    debias_epochs: int = 0  # after proximal training: epochs re-fitting the non-zero weights without the penalty
    group_threshold: float = 0.0  # at each pruning round, (input, block) groups with a smaller norm are cut whole
    blocks: int = 1  # 8: one sub-network per output (see Architecture)
    hidden: tuple[int, ...] | None = None  # None: the published (20, 20, 20, 20)

    @property
    def exact(self) -> bool:
        """Whether the model's zeros are exact (pruned, or made by proximal steps during training)."""
        return bool(self.prune_thresholds) or bool(self.reg_settings.get("proximal"))


KINDS: dict[str, ModelSpec] = {
    "dense": ModelSpec("dense MLP 13-20-20-20-20-8, no penalty (published baseline)", regularizer="none"),
    "l1": ModelSpec("l1-sparse MLP, lambda = lambda_in = 1e-4 (published)", reg_settings={"lam": 1e-4, "lam_in": 1e-4}),
    "sparse": ModelSpec(
        "exactly sparse: l1 training, then weights below 1e-2 set to exact zeros and the rest re-trained",
        reg_settings={"lam": 1e-4, "lam_in": 1e-4},
        prune_thresholds=(1e-2,),
        retrain_epochs=20,
    ),
    "inputskip": ModelSpec(
        "InputSkip: output layer also sees the input and every hidden layer; own l1 weight on the skip rows",
        skip=True,
        reg_settings={"lam": 1e-4, "lam_in": 1e-4, "lam_skip": 1e-4},
    ),
    "sparse-inputskip": ModelSpec(
        "InputSkip made exactly sparse: weights below 1e-2, then 2e-2, set to exact zeros, re-training after each",
        skip=True,
        reg_settings={"lam": 1e-4, "lam_in": 1e-4, "lam_skip": 1e-4},
        prune_thresholds=(1e-2, 2e-2),
        retrain_epochs=20,
    ),
    "prox-inputskip": ModelSpec(
        "InputSkip 13-8-8-8 trained exactly sparse: proximal l1 steps in Adam's metric (lambda 3e-4, 1e-4 on the "
        "skip rows) zero weights during training, then 20 epochs re-fit the kept weights without the penalty",
        skip=True,
        hidden=(8, 8),
        reg_settings={"lam": 3e-4, "lam_in": 3e-4, "lam_skip": 1e-4, "proximal": True},
        debias_epochs=20,
    ),
    "hybrid": ModelSpec(
        "CoSTA hybrid: misspecified physics (liquidus fixed at 968 degC) + l1-sparse network on the residual",
        prior="wrong_liquidus",
        reg_settings={"lam": 1e-4, "lam_in": 1e-4},
    ),
    "structured": ModelSpec(
        "one sub-network per output with a linear input skip, group lasso per (input, output) and exact pruning",
        skip=True,
        blocks=8,
        hidden=(32, 32),
        regularizer="group",
        reg_settings={"lam": 1e-4, "lam_in": 1e-4, "lam_skip": 1e-4, "lam_group": 1e-3},
        prune_thresholds=(1e-2, 3e-2),
        group_threshold=3e-2,
        retrain_epochs=20,
    ),
    "structured-hybrid": ModelSpec(
        "the structured network learning the residual of the misspecified physics (CoSTA prior)",
        skip=True,
        blocks=8,
        hidden=(32, 32),
        prior="wrong_liquidus",
        regularizer="group",
        reg_settings={"lam": 1e-4, "lam_in": 1e-4, "lam_skip": 1e-4, "lam_group": 1e-3},
        prune_thresholds=(1e-2, 3e-2),
        group_threshold=3e-2,
        retrain_epochs=20,
    ),
}
"""Model variants by name."""
