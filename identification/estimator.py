"""The surrogate family behind one estimator, chosen by name (scikit-learn conventions).

``SurrogateEstimator(kind=...)`` takes its settings in ``__init__``; ``fit(trajectories)`` returns ``self``
with fitted attributes ending in ``_``; ``predict`` gives one-step derivatives and ``simulate`` a free run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from identification.data import TrajectoryLike, fit_envelope, fit_normalization, make_samples
from identification.kinds import KINDS, ModelSpec
from identification.network import Architecture, EnsembleWeights
from identification.regularizers import NoPenalty, Regularizer, make_regularizer
from identification.surrogate import Surrogate, prior_derivative
from identification.training import (
    TrainConfig,
    TrainResult,
    fast_training_available,
    member_seeds,
    train_ensemble,
    train_ensemble_fast,
)

__all__ = ["KINDS", "TRAINERS", "ModelSpec", "SurrogateEstimator", "exact_pattern", "prune"]


TRAINERS = ("auto", "fused", "torch")
"""``fused``: the C kernel of :mod:`identification.training.fused`; ``torch``: the autograd reference;
``auto``: fused where a C compiler is available, else torch. Both follow the same batches and updates."""


def prune(weights: EnsembleWeights, threshold: float, group_threshold: float = 0.0) -> EnsembleWeights:
    """Threshold-and-mask: weights with ``|w| <= threshold`` become exact zeros (masked), and so do whole
    (input, block) groups whose norm is at most ``group_threshold``; existing masks are kept."""
    arch = weights.architecture
    masks = [np.abs(w) > threshold for w in weights.weights]
    if weights.masks is not None:
        masks = [a & b for a, b in zip(masks, weights.masks, strict=True)]
    if group_threshold > 0:
        first = weights.weights[0]  # (M, n_in, h1)
        m, n_in, h1 = first.shape
        sq = (first**2).reshape(m, n_in, arch.blocks, h1 // arch.blocks).sum(axis=3)
        if arch.skip:
            direct = weights.weights[-1][:, : arch.n_in]
            sq = sq + (direct**2).reshape(m, n_in, arch.blocks, arch.n_out // arch.blocks).sum(axis=3)
        keep = np.sqrt(sq) > group_threshold  # (M, n_in, blocks)
        masks[0] &= np.repeat(keep, h1 // arch.blocks, axis=2)
        if arch.skip:
            masks[-1][:, : arch.n_in] &= np.repeat(keep, arch.n_out // arch.blocks, axis=2)
    masks_t = tuple(masks)
    return EnsembleWeights(
        arch, tuple(w * mk for w, mk in zip(weights.weights, masks_t, strict=True)), weights.biases, masks_t
    )


def exact_pattern(weights: EnsembleWeights) -> EnsembleWeights:
    """The weights with their exact zeros recorded as masks (kept with any existing masks): the sparsity
    pattern a proximal fit reached, which re-fits inside the pattern (the online worker) and the exports keep."""
    masks = tuple(w != 0 for w in weights.weights)
    if weights.masks is not None:
        masks = tuple(a & b for a, b in zip(masks, weights.masks, strict=True))
    return EnsembleWeights(weights.architecture, weights.weights, weights.biases, masks)


class SurrogateEstimator:
    """Fit an ensemble surrogate of the cell to trajectories.

    Parameters
    ----------
    kind : a name of :data:`KINDS`.
    n_members : ensemble size (members differ only in their seed).
    hidden : hidden layer widths (None: the kind's own, else the published (20, 20, 20, 20)).
    epochs, batch_size, lr : the optimiser (published: 100, 128, 1e-3).
    seed : the ensemble's seed; members get independent seeds derived from it.
    dtype : training precision ("float32" or "float64").
    measured : train on the data set's noisy measurements ``y`` instead of the true states.
    trainer : one of :data:`TRAINERS`.
    progress : show progress bars.
    **overrides : replace fields of the kind's :class:`ModelSpec` (e.g. ``retrain_epochs=10``) or entries of its
        regulariser settings (e.g. ``lam=3e-4``).
    """

    def __init__(
        self,
        kind: str = "l1",
        n_members: int = 10,
        hidden: tuple[int, ...] | None = None,
        epochs: int = 100,
        batch_size: int = 128,
        lr: float = 1e-3,
        seed: int = 0,
        dtype: str = "float32",
        measured: bool = False,
        trainer: str = "auto",
        progress: bool = False,
        **overrides: Any,
    ) -> None:
        if trainer not in TRAINERS:
            raise ValueError(f"unknown trainer {trainer!r}; must be one of {list(TRAINERS)}")
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; must be one of {sorted(KINDS)}")
        if not (isinstance(n_members, int) and n_members >= 1):
            raise ValueError(f"n_members must be a positive integer, got {n_members!r}")
        spec = KINDS[kind]
        spec_fields = {f for f in spec.__dataclass_fields__ if f not in ("description", "reg_settings")}
        reg = dict(spec.reg_settings)
        for key, value in overrides.items():
            if key in spec_fields:
                spec = replace(spec, **{key: value})
            elif key in ("lam", "lam_in", "lam_skip", "lam_group"):
                reg[key] = float(value)
            elif key == "proximal":
                reg[key] = bool(value)
            else:
                valid = spec_fields | {"lam", "lam_in", "lam_skip", "lam_group", "proximal"}
                raise ValueError(f"unknown setting {key!r}; valid: {sorted(valid)}")
        self.kind = kind
        self.spec = replace(spec, reg_settings=reg)
        self.n_members = n_members
        self.hidden = tuple(hidden or self.spec.hidden or (20, 20, 20, 20))
        self.config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, dtype=dtype)
        self.seed = seed
        self.measured = measured
        self.trainer = trainer
        self.progress = progress

    @property
    def architecture(self) -> Architecture:
        return Architecture(hidden=self.hidden, skip=self.spec.skip, blocks=self.spec.blocks)

    def regularizer(self) -> Regularizer:
        return make_regularizer(self.spec.regularizer, **self.spec.reg_settings)

    def _train_fn(self) -> Callable[..., TrainResult]:
        if self.trainer == "torch" or (self.trainer == "auto" and not fast_training_available(self.config.dtype)):
            return train_ensemble
        return train_ensemble_fast

    def fit(self, data: TrajectoryLike) -> SurrogateEstimator:
        """Fit to trajectories (``x (N, T+1, 8)``, ``u (N, T, 5)``, ``fault_step``, ``dt``); returns ``self``."""
        samples = make_samples(data, measured=self.measured)
        prior = prior_derivative(self.spec.prior, samples.x, samples.u)
        norm = fit_normalization(samples, data.dt, target_offset=prior)
        z = norm.features(samples.x, samples.u)
        target = samples.dxdt if prior is None else samples.dxdt - prior
        y = (target - norm.target_mean) / norm.target_std
        seeds = member_seeds(self.seed, self.n_members)
        arch, reg = self.architecture, self.regularizer()
        label = f"{self.kind} x{self.n_members}" if self.progress else False
        m = self.n_members
        struct = arch.structural_masks()
        masks0 = None if struct is None else tuple(np.broadcast_to(s, (m, *s.shape)).copy() for s in struct)
        train = self._train_fn()
        result = train(arch, z, y, seeds, self.config, reg, masks=masks0, progress=label)
        phases = [result]
        weights = result.weights
        if reg.has_proximal_step:
            weights = exact_pattern(weights)  # the zeros of the proximal steps become the model's pattern
            if self.spec.debias_epochs:  # re-fit the kept weights without the penalty's shrinkage
                cfg = replace(self.config, epochs=self.spec.debias_epochs)
                seeds_d = member_seeds(self.seed + 999, self.n_members)
                res = train(
                    arch, z, y, seeds_d, cfg, NoPenalty(), init=weights, masks=weights.masks,
                    progress=label and f"{label} de-bias",
                )  # fmt: skip
                phases.append(res)
                weights = res.weights
        for round_, threshold in enumerate(self.spec.prune_thresholds):
            pruned = prune(weights, threshold, self.spec.group_threshold)
            cfg = replace(self.config, epochs=self.spec.retrain_epochs)
            seeds_r = member_seeds(self.seed + 1000 * (round_ + 1), self.n_members)
            res = train(
                arch,
                z,
                y,
                seeds_r,
                cfg,
                reg,
                init=pruned,
                masks=pruned.masks,
                progress=label and f"{label} re-train {round_ + 1}",
            )
            phases.append(res)
            weights = res.weights
        self.normalization_ = norm
        self.surrogate_ = Surrogate(weights, norm, self.spec.prior, envelope=fit_envelope(samples))
        self.history_ = phases
        self.train_seconds_ = float(sum(p.seconds for p in phases))
        self.n_samples_ = len(samples)
        return self

    def _fitted(self) -> Surrogate:
        if not hasattr(self, "surrogate_"):
            raise RuntimeError("this estimator is not fitted yet: call fit() first")
        return self.surrogate_

    def predict(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One-step derivative of each member at ``x`` ``(B, 8)``, ``u`` ``(B, 5)``: ``(M, B, 8)``."""
        return self._fitted().derivative(x, u)

    def simulate(self, x0: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Free run (explicit Euler) of each member: ``(M, B, T + 1, 8)``."""
        return self._fitted().simulate(x0, u)

    @property
    def last_result(self) -> TrainResult:
        return self.history_[-1]
