"""Online identification: from a plant's recent measurements to a challenger model, and the gate that decides
whether the challenger may replace the champion.

Pure learning, no service: the twin's re-fit worker (:mod:`twin.online.worker`) reads the historian, calls these
functions and talks to the registry.

- :func:`segments_from_window` turns one cell's accepted samples into trajectories (:class:`Segment`): a gap
  in the steps, or a sample the :func:`screen` flagged, ends a segment. A sample at step ``k`` holds the
  state measured at ``k`` and the input applied from ``k - 1`` to ``k``, so the training pair is
  ``(x_{k-1}, u_k) -> x_k``.
- :func:`screen` looks for sensor faults with the champion's one-step prediction: a *flatline* (a state
  that does not change at all for ``flatline_steps`` samples; a real cell's measured states always move) and
  a *level shift* (a one-step jump far outside the champion's innovation scale that does not come back
  next step). A drift of the process (current efficiency, heat transfer) changes derivatives, never the
  state itself from one step to the next, so it passes; a stuck or offset sensor does not. A flagged cell is
  excluded from the flagged sample on.
- :func:`refit` trains a challenger: ``"warm"`` starts from the champion's weights, keeps its sparsity
  pattern (masks of its exact zeros) and its normalisation, and trains (without the l1 penalty, which would
  make it forget rarely excited inputs) a few epochs on the replay window
  with recent samples repeated more often (an exponential recency weight with a half-life); ``"fresh"``
  trains a new ensemble of the champion's kind and architecture (with its pruning rounds) on the same data,
  in the champion's normalisation. Both use the fused C trainer where it builds.
- :func:`evaluate` scores a model by multi-step rollout error: the mean of the members' free runs (what the
  twin's Predict serves) over ``horizon`` steps (1 h = 360 steps of 10 s), started every ``stride`` steps of held-out
  segments and driven by the measured inputs; each rollout's score is the AN-RFMSE of
  ``docs/spec``'s metric averaged over steps 1..horizon, with divergence (``max e_k > 3`` or non-finite)
  counted and left out of the means.
- :class:`Gate` promotes a challenger only if it is finite, diverges no more often than the champion, is
  better by a margin overall, is not worse on any cell beyond a tolerance, and is structurally sane (non-zero
  count and input-output dependency close to the champion's). It returns a :class:`Decision` holding every
  figure and the reason.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from identification.data import Normalization
from identification.estimator import prune
from identification.kinds import KINDS
from identification.metrics import DIVERGENCE_LIMIT, an_rfmse_curve, path_dependency
from identification.modelfile import LoadedModel
from identification.network import EnsembleWeights
from identification.regularizers import make_regularizer
from identification.rollout import ENGINES, make_rollout_engine
from identification.surrogate import Surrogate, prior_derivative
from identification.training import (
    TrainConfig,
    fast_training_available,
    member_seeds,
    train_ensemble,
    train_ensemble_fast,
)
from plant.signals import N_INPUTS, N_STATES, STATE_NAMES

__all__ = [
    "HORIZON_1H",
    "REFIT_MODES",
    "Decision",
    "Evaluation",
    "Gate",
    "RefitConfig",
    "RefitError",
    "RefitResult",
    "ScreenConfig",
    "ScreenReport",
    "Segment",
    "SensorFault",
    "WindowLike",
    "evaluate",
    "refit",
    "screen",
    "segments_from_window",
    "split_holdout",
]

HORIZON_1H = 360
"""Steps of 10 s in one hour: the horizon of the online evaluation."""

REFIT_MODES = ("warm", "fresh")
"""``warm``: continue training the champion inside its sparsity pattern; ``fresh``: a new ensemble of its kind."""


class WindowLike(Protocol):
    """What :func:`segments_from_window` reads (``twin.historian.historian.Window`` fits)."""

    cell: int
    steps: np.ndarray  # (n,) int64, ascending
    time_s: np.ndarray  # (n,)
    x: np.ndarray  # (n, 8) measured state at each step
    u: np.ndarray  # (n, 5) input applied over the step that ended there


class RefitError(RuntimeError):
    """Training a challenger failed (no usable data, or the optimiser produced non-finite weights)."""


def _surrogate(model: Surrogate | LoadedModel, name: str) -> Surrogate:
    if isinstance(model, LoadedModel):
        return model.surrogate
    if isinstance(model, Surrogate):
        return model
    raise ValueError(f"{name} must be a Surrogate or a LoadedModel, got {type(model).__name__}")


def _positive(owner: str, name: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> None:
    ok_type = isinstance(value, (int, np.integer)) if integer else isinstance(value, (int, float, np.number))
    if isinstance(value, bool) or not ok_type or not math.isfinite(float(value)):
        raise ValueError(f"{owner}.{name} must be a finite {'integer' if integer else 'number'}, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{owner}.{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------
# Segments


@dataclass(frozen=True)
class Segment:
    """A run of consecutive samples of one cell: ``x`` at ``steps`` and the inputs between them."""

    cell: int
    steps: np.ndarray  # (n + 1,) int64, consecutive
    x: np.ndarray  # (n + 1, 8)
    u: np.ndarray  # (n, 5): u[j] applied from steps[j] to steps[j + 1]

    def __post_init__(self) -> None:
        steps = np.asarray(self.steps, dtype=np.int64)
        x = np.asarray(self.x, dtype=np.float64)
        u = np.asarray(self.u, dtype=np.float64)
        n = steps.shape[0] - 1
        if steps.ndim != 1 or n < 0 or x.shape != (n + 1, N_STATES) or u.shape != (n, N_INPUTS):
            raise ValueError(
                f"a segment needs steps (n+1,), x (n+1, {N_STATES}) and u (n, {N_INPUTS}); "
                f"got {steps.shape}, {x.shape}, {u.shape}"
            )
        if n > 0 and np.any(np.diff(steps) != 1):
            raise ValueError("a segment's steps must be consecutive")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(u))):
            raise ValueError(f"segment of cell {self.cell} holds non-finite values")
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "u", u)

    @property
    def n_steps(self) -> int:
        """Transitions in the segment."""
        return int(self.u.shape[0])

    def slice(self, start: int, stop: int) -> Segment:
        """The transitions ``[start, stop)`` (sample indices ``start .. stop``)."""
        return Segment(self.cell, self.steps[start : stop + 1], self.x[start : stop + 1], self.u[start:stop])


def _check_window(window: WindowLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    steps = np.asarray(window.steps, dtype=np.int64)
    x = np.asarray(window.x, dtype=np.float64)
    u = np.asarray(window.u, dtype=np.float64)
    n = steps.shape[0] if steps.ndim == 1 else -1
    if n < 0 or x.shape != (n, N_STATES) or u.shape != (n, N_INPUTS):
        raise ValueError(
            f"window of cell {window.cell} must have steps (n,), x (n, {N_STATES}), u (n, {N_INPUTS}); "
            f"got {steps.shape}, {x.shape}, {u.shape}"
        )
    if n > 1 and np.any(np.diff(steps) <= 0):
        raise ValueError(f"window of cell {window.cell}: steps must be strictly increasing")
    return steps, x, u


def segments_from_window(window: WindowLike, *, exclude: np.ndarray | None = None, min_steps: int = 1) -> list[Segment]:
    """Split one cell's samples into segments of consecutive, usable samples.

    Parameters
    ----------
    window : the cell's samples (``steps (n,)``, ``x (n, 8)``, ``u (n, 5)``).
    exclude : optional bool ``(n,)``: samples not to use (e.g. :attr:`ScreenReport.excluded`). A sample that
        is excluded, not finite, or follows a gap in the steps starts no transition.
    min_steps : shortest segment kept, in transitions.

    Returns
    -------
    The segments, oldest first.
    """
    steps, x, u = _check_window(window)
    n = steps.shape[0]
    if isinstance(min_steps, bool) or not isinstance(min_steps, (int, np.integer)) or min_steps < 1:
        raise ValueError(f"min_steps must be a positive integer, got {min_steps!r}")
    usable = np.all(np.isfinite(x), axis=1) & np.all(np.isfinite(u), axis=1)  # (n,)
    if exclude is not None:
        exclude = np.asarray(exclude)
        if exclude.shape != (n,):
            raise ValueError(f"exclude must have shape ({n},), got {exclude.shape}")
        usable &= ~exclude.astype(bool)
    # transition j links sample j to j + 1: both usable and one step apart
    link = usable[:-1] & usable[1:] & (np.diff(steps) == 1) if n > 1 else np.zeros(0, dtype=bool)
    out = []
    j = 0
    while j < link.size:
        if not link[j]:
            j += 1
            continue
        k = j
        while k < link.size and link[k]:
            k += 1
        if k - j >= min_steps:  # samples j .. k, transitions j .. k-1
            out.append(Segment(int(window.cell), steps[j : k + 1], x[j : k + 1], u[j + 1 : k + 1]))
        j = k
    return out


def split_holdout(segments: Sequence[Segment], holdout_from: dict[int, int]) -> tuple[list[Segment], list[Segment]]:
    """Split segments at each cell's first held-out step: ``(training, held_out)``.

    ``holdout_from[cell]`` is the step from which that cell's samples are held out; the transition crossing it
    is in neither part, so no sample is used both to train and to judge. Cells absent from the mapping are
    training data only.
    """
    train, held = [], []
    for seg in segments:
        start = holdout_from.get(seg.cell)
        if start is None or seg.steps[-1] <= start:
            train.append(seg)
            continue
        if seg.steps[0] >= start:
            held.append(seg)
            continue
        cut = int(start - seg.steps[0])  # sample index of the first held-out step
        if cut >= 1:
            train.append(seg.slice(0, cut - 1) if cut - 1 >= 1 else seg.slice(0, 0))
        held.append(seg.slice(cut, seg.n_steps))
    return [s for s in train if s.n_steps > 0], [s for s in held if s.n_steps > 0]


# ---------------------------------------------------------------------------------------------------------------
# Screening for sensor faults


@dataclass(frozen=True)
class ScreenConfig:
    """Settings of :func:`screen`.

    Parameters
    ----------
    flatline_steps : a state that keeps exactly the same value over this many consecutive steps, while the
        champion expects it to move by at least ``jump_floor`` of its training std over them, is stuck.
    jump_sigma : a one-step innovation beyond this many robust standard deviations (of the window's own
        innovations of that state) is a jump ...
    jump_floor : ... if it also exceeds this fraction of the state's training standard deviation (so that a
        noise-free plant, whose innovations are tiny, does not flag its own model error) ...
    jump_ratio : ... and this many times the change the champion predicted for that step (a metal tap moves
        the metal pad by tens of kg in one step; a mispredicted tap is not a broken sensor).
    """

    flatline_steps: int = 12
    jump_sigma: float = 8.0
    jump_floor: float = 0.02
    jump_ratio: float = 3.0

    def __post_init__(self) -> None:
        _positive("ScreenConfig", "flatline_steps", self.flatline_steps, integer=True)
        if self.flatline_steps < 2:
            raise ValueError(f"ScreenConfig.flatline_steps must be >= 2, got {self.flatline_steps!r}")
        _positive("ScreenConfig", "jump_sigma", self.jump_sigma)
        _positive("ScreenConfig", "jump_floor", self.jump_floor)
        _positive("ScreenConfig", "jump_ratio", self.jump_ratio)


@dataclass(frozen=True)
class SensorFault:
    """A suspected sensor fault: ``kind`` is ``"flatline"`` or ``"level_shift"``."""

    cell: int
    state: str
    step: int
    kind: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"cell": self.cell, "state": self.state, "step": self.step, "kind": self.kind, "detail": self.detail}


@dataclass(frozen=True)
class ScreenReport:
    """What :func:`screen` found in one cell's window."""

    cell: int
    excluded: np.ndarray  # (n,) bool: from the first fault on
    faults: tuple[SensorFault, ...]

    @property
    def clean(self) -> bool:
        return not self.faults


def screen(window: WindowLike, champion: Surrogate | LoadedModel, config: ScreenConfig | None = None) -> ScreenReport:
    """Look for stuck (flatline) and offset (level shift) sensors in one cell's window.

    The innovation of sample ``k`` is ``x_k`` minus the champion's one-step Euler prediction from ``x_{k-1}``
    under ``u_k``; it is judged per state in units of the champion's training standard deviation. A fault
    excludes the cell's samples from the fault's step on (a broken sensor does not heal by itself).
    """
    config = config or ScreenConfig()
    model = _surrogate(champion, "champion")
    steps, x, u = _check_window(window)
    n = steps.shape[0]
    excluded = np.zeros(n, dtype=bool)
    faults: list[SensorFault] = []
    if n < 3:
        return ScreenReport(int(window.cell), excluded, ())
    sigma = model.normalization.state_std  # (8,)
    consecutive = np.diff(steps) == 1  # (n-1,)
    first_fault = n
    with np.errstate(all="ignore"):
        step_pred = model.mean().derivative(x[:-1], u[1:]) * model.dt  # (n-1, 8) predicted change of each step
    # flatlines: runs of exactly repeated values while the champion expects the state to move (a state that
    # truly stands still, e.g. AlF3 while nothing is fed, is predicted to stand still too)
    same = (np.diff(x, axis=0) == 0) & consecutive[:, None]  # (n-1, 8)
    for i in range(N_STATES):
        run, expected = 0, 0.0
        for k in range(n - 1):
            if same[k, i]:
                run += 1
                expected += step_pred[k, i]
            else:
                run, expected = 0, 0.0
            if run + 1 >= config.flatline_steps and abs(expected) >= config.jump_floor * sigma[i]:
                start = k + 1 - run
                faults.append(
                    SensorFault(
                        int(window.cell), STATE_NAMES[i], int(steps[start]), "flatline",
                        f"{STATE_NAMES[i]} held exactly {x[start, i]:.6g} for {run + 1} samples while the "
                        f"champion expected it to move by {expected:+.4g}",
                    )
                )  # fmt: skip
                first_fault = min(first_fault, start)
                break
    # level shifts: innovation outliers that are not undone at the next step
    with np.errstate(all="ignore"):
        r = (x[1:] - x[:-1] - step_pred) / sigma  # (n-1, 8) innovation of sample k+1, in training stds
        expected = np.abs(step_pred) / sigma  # (n-1, 8) the predicted change, in training stds
    r = np.where(consecutive[:, None] & np.isfinite(r), r, np.nan)
    for i in range(N_STATES):
        ri = r[:, i]
        ok = np.isfinite(ri)
        if ok.sum() < 3:
            continue
        med = np.median(ri[ok])
        scale = 1.4826 * np.median(np.abs(ri[ok] - med))
        limit = np.maximum(max(config.jump_sigma * scale, config.jump_floor), config.jump_ratio * expected[:, i])
        big = np.flatnonzero(ok & (np.abs(ri - med) > limit))
        for k in big:
            nxt = ri[k + 1] - med if k + 1 < ri.size else np.nan
            if np.isfinite(nxt) and abs((ri[k] - med) + nxt) < 0.5 * abs(ri[k] - med):
                continue  # a spike that came back: noise, not a shifted sensor
            at = k + 1
            faults.append(
                SensorFault(
                    int(window.cell), STATE_NAMES[i], int(steps[at]), "level_shift",
                    f"{STATE_NAMES[i]} jumped by {(ri[k] - med) * sigma[i]:+.4g} in one step where the champion "
                    f"expected {step_pred[k, i]:+.3g} ({abs(ri[k] - med):.2g} training stds)",
                )
            )  # fmt: skip
            first_fault = min(first_fault, at)
            break
    excluded[first_fault:] = True
    faults.sort(key=lambda f: f.step)
    return ScreenReport(int(window.cell), excluded, tuple(faults))


# ---------------------------------------------------------------------------------------------------------------
# Re-fitting


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
        rarely excites (measured: after five re-fits on potline data the AlF3 feed's effect on the AlF3 mass
        fell from 2.88 to 2.12 kg per kg fed with the penalty, stayed 2.88 without); ``"kind"`` keeps it.
    seed : seeds the shuffles (and a fresh fit's initialisation).
    threads : trainer threads (None: the CPUs this process may use).
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
            _positive("RefitConfig", name, getattr(self, name), integer=True)
        _positive("RefitConfig", "lr", self.lr)
        _positive("RefitConfig", "half_life_steps", self.half_life_steps)
        _positive("RefitConfig", "seed", self.seed, integer=True, allow_zero=True)
        if self.threads is not None:
            _positive("RefitConfig", "threads", self.threads, integer=True)
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
    model = _surrogate(champion, "champion")
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
    data = {
        "cells": cells,
        "steps": {str(c): [int(min(s.steps[0] for s in segments if s.cell == c)),
                           int(max(s.steps[-1] for s in segments if s.cell == c))] for c in cells},
        "segments": sum(1 for s in segments if s.n_steps),
    }  # fmt: skip
    return RefitResult(
        Surrogate(weights, norm, model.prior),
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


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


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
            "an_rfmse_mean": _finite_or_none(self.error),
            "an_rfmse_median": _finite_or_none(self.median),
            "per_cell": {str(c): _finite_or_none(v) for c, v in self.per_cell().items()},
        }


def _finite_or_none(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def rollout_windows(
    segments: Sequence[Segment], horizon: int, stride: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Start points every ``stride`` steps of each segment long enough for ``horizon`` steps.

    Returns ``x_true (R, horizon + 1, 8)``, ``u (R, horizon, 5)``, cells ``(R,)``, start steps ``(R,)`` and the
    index of each rollout's segment ``(R,)``.
    """
    xs, us, cells, starts, segs = [], [], [], [], []
    for j, seg in enumerate(segments):
        for s in range(0, seg.n_steps - horizon + 1, stride):
            xs.append(seg.x[s : s + horizon + 1])
            us.append(seg.u[s : s + horizon])
            cells.append(seg.cell)
            starts.append(int(seg.steps[s]))
            segs.append(j)
    if not xs:
        return (
            np.zeros((0, horizon + 1, N_STATES)),
            np.zeros((0, horizon, N_INPUTS)),
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.int64),
            np.zeros(0, dtype=np.int64),
        )
    return np.stack(xs), np.stack(us), np.array(cells), np.array(starts), np.array(segs)


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
    sur = _surrogate(model, "model")
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


# ---------------------------------------------------------------------------------------------------------------
# The gate


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
            "ratio": _finite_or_none(self.ratio),
            "champion_nonzero": self.champion_nonzero,
            "challenger_nonzero": self.challenger_nonzero,
            "nonzero_ratio": _finite_or_none(self.nonzero_ratio),
            "dependency_jaccard": _finite_or_none(self.dependency_jaccard),
            "worst_cell": self.worst_cell,
            "worst_cell_ratio": _finite_or_none(self.worst_cell_ratio),
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
        _positive("Gate", "margin", self.margin)
        if self.margin > 1:
            raise ValueError(f"Gate.margin must be in (0, 1], got {self.margin!r}")
        _positive("Gate", "cell_tolerance", self.cell_tolerance)
        _positive("Gate", "max_new_diverged", self.max_new_diverged, integer=True, allow_zero=True)
        _positive("Gate", "max_nonzero_ratio", self.max_nonzero_ratio)
        _positive("Gate", "min_dependency_jaccard", self.min_dependency_jaccard, allow_zero=True)
        if self.min_dependency_jaccard > 1:
            raise ValueError(f"Gate.min_dependency_jaccard must be in [0, 1], got {self.min_dependency_jaccard!r}")
        _positive("Gate", "min_rollouts", self.min_rollouts, integer=True)

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
        champ = _surrogate(champion, "champion")
        chall = _surrogate(challenger, "challenger")
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
