"""Training of surrogate ensembles: the torch reference (all members in one vectorised pass) and the fused C
kernel that follows the same batches and Adam updates."""

from identification.training.fused import MAX_LAYERS, fast_training_available, train_ensemble_fast
from identification.training.reference import (
    TrainConfig,
    TrainResult,
    init_weights,
    member_seeds,
    torch_threads,
    train_ensemble,
)

__all__ = [
    "MAX_LAYERS",
    "TrainConfig",
    "TrainResult",
    "fast_training_available",
    "init_weights",
    "member_seeds",
    "torch_threads",
    "train_ensemble",
    "train_ensemble_fast",
]
