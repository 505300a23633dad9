"""Sparse neural surrogates of the cell: data pipeline, models, training, metrics, export to CasADi.

Uses ``plant`` (data and equations); never imports ``twin`` or ``controller``. Importing the package does
not import torch: training (``identification.estimator``) does, serving (models, rollouts, export) does not.
"""

from identification.data import Normalization, fit_normalization, make_samples
from identification.kinds import KINDS
from identification.metrics import TRUE_STRUCTURE, score_rollouts, structure_scores
from identification.network import Architecture, EnsembleWeights
from identification.surrogate import PRIORS, Surrogate

__all__ = [
    "KINDS",
    "PRIORS",
    "TRUE_STRUCTURE",
    "Architecture",
    "EnsembleWeights",
    "Normalization",
    "Surrogate",
    "fit_normalization",
    "make_samples",
    "score_rollouts",
    "structure_scores",
]
