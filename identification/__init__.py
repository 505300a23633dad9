"""Sparse neural surrogates of the cell: data pipeline, models, training, metrics, export to CasADi.

Uses ``plant`` (data and equations); never imports ``twin`` or ``controller``. Importing the package imports
nothing else (its names load on first use); training (``identification.estimator``) imports torch, serving (models,
rollouts, export) does not.
"""

from typing import TYPE_CHECKING

from alutwin.lazy import lazy_exports

if TYPE_CHECKING:
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

# imported on first use, so that the commands' parsers (identification.commands) load without numpy
__getattr__, __dir__ = lazy_exports(
    __name__,
    __all__,
    {
        "identification.data": ("Normalization", "fit_normalization", "make_samples"),
        "identification.kinds": ("KINDS",),
        "identification.metrics": ("TRUE_STRUCTURE", "score_rollouts", "structure_scores"),
        "identification.network": ("Architecture", "EnsembleWeights"),
        "identification.surrogate": ("PRIORS", "Surrogate"),
    },
)
