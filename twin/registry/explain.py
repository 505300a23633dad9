"""Model explanations: sparsity per layer and input-output dependency three ways (weight paths, paths through
the weights above :data:`WEIGHT_THRESHOLD`, the data Jacobian), as a :class:`twin.results.ModelExplanation`."""

from __future__ import annotations

import numpy as np

from identification.metrics import jacobian_dependency, path_dependency, structure_scores
from identification.modelfile import LoadedModel
from plant.signals import N_INPUTS, N_STATES
from twin.results import Dependency, LayerSparsity, ModelExplanation, ModelId

__all__ = ["JACOBIAN_POINTS", "JACOBIAN_REL_THRESHOLD", "WEIGHT_THRESHOLD", "dependency_of", "explain"]

WEIGHT_THRESHOLD = 1e-2
"""``|w|`` above which a weight counts in the explanation's thresholded figures (the pruning threshold)."""
JACOBIAN_POINTS = 256
"""Points (standard normal in standardised units) at which the data Jacobian is evaluated."""
JACOBIAN_REL_THRESHOLD = 1e-2
"""A Jacobian entry counts as a dependency above this share of its row's largest entry."""
_JACOBIAN_SEED = 20240601


def dependency_of(dependency: np.ndarray) -> Dependency:
    """The :class:`~twin.results.Dependency` of per-member dependency masks ``(M, 8, 13)``: the share of members
    using each entry, and the structure scores of the entries used by at least half of them."""
    share = np.asarray(dependency, dtype=np.float64).mean(axis=0)  # (M, 8, 13) -> (8, 13)
    return Dependency(share, structure_scores(share >= 0.5))


def explain(loaded: LoadedModel, model: ModelId | None = None) -> ModelExplanation:
    """The :class:`~twin.results.ModelExplanation` of a loaded model (of version ``model``, when given)."""
    weights = loaded.surrogate.weights
    m = weights.n_members
    layers = tuple(
        LayerSparsity(
            a,
            b,
            a * b * m,
            int(np.count_nonzero(w)),
            int(np.count_nonzero(np.abs(w) > WEIGHT_THRESHOLD)),
        )
        for (a, b), w in zip(weights.architecture.layer_shapes, weights.weights, strict=True)
    )
    z = np.random.default_rng(_JACOBIAN_SEED).standard_normal((JACOBIAN_POINTS, N_STATES + N_INPUTS))
    jac, _ = jacobian_dependency(weights, z, JACOBIAN_REL_THRESHOLD)
    return ModelExplanation(
        layers=layers,
        weight_threshold=WEIGHT_THRESHOLD,
        path=dependency_of(path_dependency(weights, 0.0)),
        thresholded_path=dependency_of(path_dependency(weights, WEIGHT_THRESHOLD)),
        jacobian=dependency_of(jac),
        jacobian_points=JACOBIAN_POINTS,
        jacobian_rel_threshold=JACOBIAN_REL_THRESHOLD,
        metrics=loaded.metrics,
        provenance=loaded.provenance,
        model=model,
    )
