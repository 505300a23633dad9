"""Training a challenger on the replay window, in the champion's normalisation.

``"warm"`` starts from the champion's weights, keeps its sparsity pattern (masks of its exact zeros) and trains
(without the l1 penalty, which would make it forget rarely excited inputs) a few epochs with recent samples
repeated more often (an exponential recency weight with a half-life); ``"fresh"`` trains a new ensemble of the
champion's kind and architecture (with its pruning rounds) on the same data. Both use the fused C trainer where
it builds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from identification.data import Envelope, Normalization
from identification.estimator import prune
from identification.kinds import KINDS
from identification.modelfile import LoadedModel
from identification.network import EnsembleWeights
from identification.online.common import as_surrogate, check_positive
from identification.online.segments import Segment, step_ranges
from identification.regularizers import make_regularizer
from identification.surrogate import Surrogate, prior_derivative
from identification.training import (
    TrainConfig,
    fast_training_available,
    member_seeds,
    train_ensemble,
    train_ensemble_fast,
)

__all__ = ["REFIT_MODES", "RefitConfig", "RefitError", "RefitResult", "refit"]

REFIT_MODES = ("warm", "fresh")
"""``warm``: continue training the champion inside its sparsity pattern; ``fresh``: a new ensemble of its kind."""


class RefitError(RuntimeError):
    """Training a challenger failed (no usable data, or the optimiser produced non-finite weights)."""


@dataclass(frozen=True)
class RefitConfig:
    """Settings of :func:`refit`.

    Parameters
    ----------
    mode : one of :data:`REFIT_MODES`.
    epochs : passes over the (recency-weighted) replay data; ``"fresh"`` uses ``fresh_epochs``.
    fresh_epochs : epochs of a fresh fit (before its pruning rounds, which keep the kind's own re-train epochs,
        scaled down in the same proportion as ``fresh_epochs`` to the kind's published 100).
    batch_size, lr : the optimiser (Adam). A warm start takes a smaller step than training from scratch.
    half_life_steps : age (in steps, from the newest sample) at which a sample's weight has halved.
    max_repeat : the newest samples are repeated this many times per epoch, old ones once.
    max_updates : cap on optimiser steps (epochs are reduced to fit), so that a re-fit stays within its time.
    warm_penalty : ``"none"`` (default) trains a warm start without the kind's l1 penalty: the masks already
        hold the sparsity pattern, and l1 would keep shrinking the weights of inputs that the replay window
        rarely excites (on potline data, repeated re-fits with the penalty shrank the AlF3 feed's effect on the
        AlF3 mass; without it, the effect stayed); ``"kind"`` keeps it.
    seed : seeds the shuffles (and a fresh fit's initialisation).
    threads : the fused C trainer's threads (None: the CPUs this process may use); the torch trainer uses the
        caller's torch threads (``torch.set_num_threads`` in an entry point) and ignores it.
    trainer : ``"auto"`` (fused C where it builds), ``"fused"`` or ``"torch"``.
    """

    mode: str = "warm"
    epochs: int = 20
    fresh_epochs: int = 100
    batch_size: int = 128
    lr: float = 3e-4
    half_life_steps: float = 1080.0
    max_repeat: int = 4
    max_updates: int = 30_000
    warm_penalty: str = "none"
    seed: int = 0
    threads: int | None = None
    trainer: str = "auto"

    def __post_init__(self) -> None:
        if self.mode not in REFIT_MODES:
            raise ValueError(f"RefitConfig.mode must be one of {list(REFIT_MODES)}, got {self.mode!r}")
        if self.warm_penalty not in ("none", "kind"):
            raise ValueError(f"RefitConfig.warm_penalty must be one of ['none', 'kind'], got {self.warm_penalty!r}")
        for name in ("epochs", "fresh_epochs", "batch_size", "max_repeat", "max_updates"):
            check_positive("RefitConfig", name, getattr(self, name), integer=True)
        check_positive("RefitConfig", "lr", self.lr)
        check_positive("RefitConfig", "half_life_steps", self.half_life_steps)
        check_positive("RefitConfig", "seed", self.seed, integer=True, allow_zero=True)
        if self.threads is not None:
            check_positive("RefitConfig", "threads", self.threads, integer=True)
        if self.trainer not in ("auto", "fused", "torch"):
            raise ValueError(f"RefitConfig.trainer must be one of ['auto', 'fused', 'torch'], got {self.trainer!r}")


@dataclass(frozen=True)
class RefitResult:
    """A challenger and how it was trained."""

    surrogate: Surrogate
    kind: str
    mode: str
    seconds: float
    n_samples: int  # distinct transitions
    n_weighted: int  # transitions per epoch after recency repetition
    epochs: int
    updates: int
    final_loss: float  # mean over members of the last epoch's data loss (standardised MSE)
    data: dict[str, Any] = field(default_factory=dict)  # cells, step ranges

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "mode": self.mode,
            "seconds": self.seconds,
            "n_samples": self.n_samples,
            "n_weighted": self.n_weighted,
            "epochs": self.epochs,
            "updates": self.updates,
            "final_loss": self.final_loss,
            "data": self.data,
        }


def _transitions(segments: Sequence[Segment], dt: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``x (S, 8)``, ``u (S, 5)``, ``dxdt (S, 8)`` and the step ``(S,)`` each transition ends at."""
    xs, us, ds, ks = [], [], [], []
    for seg in segments:
        if seg.n_steps == 0:
            continue
        xs.append(seg.x[:-1])
        us.append(seg.u)
        ds.append(np.diff(seg.x, axis=0) / dt)
        ks.append(seg.steps[1:])
    if not xs:
        raise RefitError("no transitions to train on (every segment is empty)")
    return np.concatenate(xs), np.concatenate(us), np.concatenate(ds), np.concatenate(ks)


def _repeats(ends: np.ndarray, half_life: float, max_repeat: int) -> np.ndarray:
    """How often each transition enters an epoch: ``1 + floor((max_repeat - 1) * 2^(-age / half_life) + 0.5)``."""
    age = (ends.max() - ends).astype(np.float64)
    return 1 + np.floor((max_repeat - 1) * np.exp2(-age / half_life) + 0.5).astype(np.int64)


def _kind_of(champion: Surrogate | LoadedModel, kind: str | None) -> str:
    if kind is None:
        if not isinstance(champion, LoadedModel):
            raise ValueError("kind is required when the champion is a bare Surrogate (a LoadedModel names its own)")
        kind = champion.kind
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; must be one of {sorted(KINDS)}")
    return kind


def refit(
    champion: Surrogate | LoadedModel,
    segments: Sequence[Segment],
    config: RefitConfig | None = None,
    *,
    kind: str | None = None,
    progress: bool | str = False,
) -> RefitResult:
    """Train a challenger on ``segments`` (the replay window), in the champion's normalisation.

    Parameters
    ----------
    champion : the model now serving (a :class:`LoadedModel` names its kind).
    segments : training trajectories (see :func:`segments_from_window`), any cells.
    config : :class:`RefitConfig` (default: a warm start of 20 epochs).
    kind : the champion's kind (required for a bare :class:`Surrogate`): its regulariser and pruning rounds.
    progress : show a progress bar (a string labels it).

    Raises
    ------
    RefitError : no data, or the training produced non-finite weights.
    ValueError : bad arguments.
    """
    config = config or RefitConfig()
    model = as_surrogate(champion, "champion")
    kind = _kind_of(champion, kind)
    spec = KINDS[kind]
    if spec.prior != model.prior:
        raise ValueError(f"kind {kind!r} has prior {spec.prior!r} but the champion has {model.prior!r}")
    norm: Normalization = model.normalization
    x, u, dxdt, ends = _transitions(segments, norm.dt)
    prior = prior_derivative(model.prior, x, u)
    target = dxdt if prior is None else dxdt - prior
    z = norm.features(x, u)  # (S, 13)
    y = (target - norm.target_mean) / norm.target_std  # (S, 8)
    if not (np.all(np.isfinite(z)) and np.all(np.isfinite(y))):
        raise RefitError("the training data give non-finite features or targets")
    reps = _repeats(ends, config.half_life_steps, config.max_repeat)
    idx = np.repeat(np.arange(z.shape[0]), reps)
    z, y = z[idx], y[idx]
    weights0 = model.weights
    arch = weights0.architecture
    m = weights0.n_members
    batches = -(-z.shape[0] // config.batch_size)
    epochs = config.epochs if config.mode == "warm" else config.fresh_epochs
    epochs = max(1, min(epochs, config.max_updates // batches))
    use_torch = config.trainer == "torch" or (config.trainer == "auto" and not fast_training_available("float32"))
    train = train_ensemble if use_torch else train_ensemble_fast
    reg = make_regularizer(spec.regularizer, **spec.reg_settings)
    tcfg = TrainConfig(epochs=epochs, batch_size=config.batch_size, lr=config.lr, threads=config.threads)
    label = progress if isinstance(progress, str) else f"{config.mode} re-fit"
    t0 = time.perf_counter()
    try:
        if config.mode == "warm":
            masks = weights0.masks
            if masks is None:
                masks = tuple(w != 0 for w in weights0.weights)
            warm_reg = reg if config.warm_penalty == "kind" else make_regularizer("none")
            result = train(
                arch, z, y, member_seeds(config.seed, m), tcfg, warm_reg, init=weights0, masks=masks,
                progress=progress and label,
            )  # fmt: skip
            weights = result.weights
            updates = epochs * batches
            if weights0.masks is not None:
                weights = EnsembleWeights(arch, weights.weights, weights.biases, weights0.masks)
        else:
            struct = arch.structural_masks()
            masks0 = None if struct is None else tuple(np.broadcast_to(s, (m, *s.shape)).copy() for s in struct)
            result = train(
                arch, z, y, member_seeds(config.seed, m), replace(tcfg, lr=1e-3), reg, masks=masks0,
                progress=progress and label,
            )  # fmt: skip
            weights = result.weights
            updates = epochs * batches
            retrain = max(1, round(spec.retrain_epochs * epochs / 100)) if spec.prune_thresholds else 0
            for round_, threshold in enumerate(spec.prune_thresholds):
                pruned = prune(weights, threshold, spec.group_threshold)
                result = train(
                    arch, z, y, member_seeds(config.seed + 1000 * (round_ + 1), m),
                    replace(tcfg, epochs=retrain, lr=1e-3), reg, init=pruned, masks=pruned.masks,
                    progress=progress and f"{label} re-train {round_ + 1}",
                )  # fmt: skip
                weights = result.weights
                updates += retrain * batches
    except ValueError as exc:
        # EnsembleWeights refuses non-finite weights: the optimiser blew up
        raise RefitError(f"{config.mode} re-fit failed: {exc}") from None
    seconds = time.perf_counter() - t0
    loss = result.loss_history[-1] if result.loss_history.size else np.full(m, np.nan)
    cells = sorted({s.cell for s in segments if s.n_steps})
    ranges = step_ranges(segments)
    data = {
        "cells": cells,
        "steps": {str(c): ranges[c] for c in cells},
        "segments": sum(1 for s in segments if s.n_steps),
    }
    envelope = Envelope.of(x, u)  # warm: the champion's envelope widened by the new data
    if config.mode == "warm" and model.envelope is not None:
        envelope = model.envelope.union(envelope)
    return RefitResult(
        Surrogate(weights, norm, model.prior, envelope=envelope),
        kind,
        config.mode,
        seconds,
        int(x.shape[0]),
        int(z.shape[0]),
        epochs,
        updates,
        float(np.mean(loss)),
        data,
    )
