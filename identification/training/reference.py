"""Vectorised training of an ensemble: all M members in one pass, each with its own seed.

Members are stacked on a leading axis and trained with batched matrix products; the loss is the sum of the
members' losses, and Adam is elementwise, so each member follows exactly the trajectory it would follow if
trained alone with the same seed (a test checks this).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from identification.network import Architecture, EnsembleWeights
from identification.regularizers import GroupInputPenalty, NoPenalty, Regularizer

__all__ = ["TrainConfig", "TrainResult", "init_weights", "member_seeds", "torch_threads", "train_ensemble"]


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads; the process's setting is restored afterwards (for entry
    points that run several fits, such as a Ray task or a benchmark)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (the published protocol by default).

    ``threads`` is the fused kernel's thread count only (:func:`~identification.training.train_ensemble_fast`;
    None: the CPUs this process may use, at most one per member); :func:`train_ensemble` does not use it, since
    torch's intra-op threads are the caller's (``torch.set_num_threads`` in an entry point).
    """

    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-3
    dtype: str = "float32"
    threads: int | None = None  # the fused kernel's threads only (see above)

    def __post_init__(self) -> None:
        if not (isinstance(self.epochs, int) and self.epochs >= 0):
            raise ValueError(f"epochs must be a non-negative integer, got {self.epochs!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be positive, got {self.lr!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.threads is not None and (
            isinstance(self.threads, bool) or not isinstance(self.threads, (int, np.integer)) or self.threads < 1
        ):
            raise ValueError(f"threads must be a positive integer or None, got {self.threads!r}")


@dataclass(frozen=True)
class TrainResult:
    weights: EnsembleWeights
    loss_history: np.ndarray  # (epochs, M) mean data loss (MSE) per epoch and member
    penalty_history: np.ndarray  # (epochs, M)
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def member_seeds(seed: int, n_members: int) -> list[int]:
    """Independent per-member seeds derived from one seed."""
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n_members)]


def init_weights(
    arch: Architecture, gens: Sequence[torch.Generator], dtype: torch.dtype
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Kaiming-normal weights (ReLU gain, fan-in) and zero biases, member by member from its own generator.

    Returns
    -------
    Per layer, the weights ``(M, n_in, n_out)`` and the biases ``(M, 1, n_out)`` in ``dtype``; both trainers
    start from them.
    """
    ws, bs = [], []
    for a, b in arch.layer_shapes:
        std = float(np.sqrt(2.0 / a))
        w = torch.stack([torch.randn(a, b, generator=g, dtype=torch.float64) * std for g in gens]).to(dtype)
        ws.append(w)
        bs.append(torch.zeros(len(gens), 1, b, dtype=dtype))
    return ws, bs


def _forward(ws: list[torch.Tensor], bs: list[torch.Tensor], z: torch.Tensor, skip: bool) -> torch.Tensor:
    h = z
    seen = [z]
    for w, b in zip(ws[:-1], bs[:-1], strict=True):
        h = torch.relu(torch.baddbmm(b, h, w))
        if skip:
            seen.append(h)
    last = torch.cat(seen, dim=-1) if skip else h
    return torch.baddbmm(bs[-1], last, ws[-1])


def _adam_denominator(opt: torch.optim.Adam, w: torch.Tensor) -> torch.Tensor:
    """Adam's denominator ``sqrt(v_hat) + eps`` of each element of ``w`` after ``opt.step()``, as torch computes it."""
    group = opt.param_groups[0]
    state = opt.state[w]
    return state["exp_avg_sq"].sqrt() / (1 - group["betas"][1] ** float(state["step"])) ** 0.5 + group["eps"]


def _proximal_step(opt: torch.optim.Adam, ws: Sequence[torch.Tensor], lams: Sequence[torch.Tensor], lr: float) -> None:
    """The ℓ1 proximal step in Adam's metric after ``opt.step()`` (see :class:`L1Penalty`): each weight moves
    towards zero by ``lr lam / (sqrt(v_hat) + eps)``, and to exactly zero when that is more than its size."""
    with torch.no_grad():
        for w, lam in zip(ws, lams, strict=True):
            shrunk = w.abs() - lr * lam / _adam_denominator(opt, w)
            w.copy_(torch.sign(w) * torch.clamp(shrunk, min=0))


def _group_proximal_step(
    opt: torch.optim.Adam, ws: Sequence[torch.Tensor], arch: Architecture, lam_group: float, lr: float
) -> None:
    """The group lasso's proximal step (see :class:`GroupInputPenalty`): each (input, block) group scaled by
    ``max(0, 1 - lr lam_group / (d ||w_g||))``, ``d`` the mean Adam denominator over the group."""

    first, out = ws[0], ws[-1]
    m, n_in, h1 = first.shape
    nb = arch.blocks
    with torch.no_grad():
        w0 = first.reshape(m, n_in, nb, h1 // nb)
        d0 = _adam_denominator(opt, first).reshape(m, n_in, nb, h1 // nb)
        ss, dsum, count = (w0.double() ** 2).sum(dim=3), d0.double().sum(dim=3), h1 // nb
        if arch.skip:
            k = arch.n_out // nb
            w1 = out[:, :n_in].reshape(m, n_in, nb, k)
            ss = ss + (w1.double() ** 2).sum(dim=3)
            dsum = dsum + _adam_denominator(opt, out)[:, :n_in].reshape(m, n_in, nb, k).double().sum(dim=3)
            count += k
        norm = ss.sqrt()
        keep = torch.where(norm > 0, 1 - lr * lam_group / (dsum / count * norm), torch.zeros_like(norm))
        scale = torch.clamp(keep, min=0).to(first.dtype)  # (M, n_in, blocks)
        first.copy_((w0 * scale[..., None]).reshape(m, n_in, h1))
        if arch.skip:
            k = arch.n_out // nb
            part = out[:, :n_in].reshape(m, n_in, nb, k) * scale[..., None]
            out[:, :n_in] = part.reshape(m, n_in, arch.n_out)


def train_ensemble(
    arch: Architecture,
    features: np.ndarray,
    targets: np.ndarray,
    seeds: Sequence[int],
    config: TrainConfig = TrainConfig(),
    regularizer: Regularizer | None = None,
    init: EnsembleWeights | None = None,
    masks: Sequence[np.ndarray] | None = None,
    progress: bool | str = False,
) -> TrainResult:
    """Train one ensemble member per seed, all at once.

    Parameters
    ----------
    arch : the network.
    features : (S, n_in) standardised inputs.
    targets : (S, n_out) standardised targets.
    seeds : one integer per member: it draws the member's initial weights and its shuffling.
    config : optimisation settings.
    regularizer : the weight penalty (none by default).
    init : start from these weights instead of a fresh Kaiming initialisation (warm start, re-training).
    masks : per layer bool ``(M, n_in, n_out)``; masked weights are held at exactly zero.
    progress : show a progress bar (a string is used as its label).

    Torch's intra-op threads are the caller's (``torch.set_num_threads`` in an entry point);
    ``config.threads`` is for the fused kernel and is not used here.
    """
    regularizer = regularizer or NoPenalty()
    feats = np.asarray(features, dtype=np.float64)
    targs = np.asarray(targets, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[1] != arch.n_in or targs.shape != (feats.shape[0], arch.n_out):
        raise ValueError(
            f"features must be (S, {arch.n_in}) and targets (S, {arch.n_out}); got {feats.shape}, {targs.shape}"
        )
    if not (np.all(np.isfinite(feats)) and np.all(np.isfinite(targs))):
        raise ValueError("features and targets must be finite")
    m = len(seeds)
    if m < 1:
        raise ValueError("at least one seed (member) is needed")
    dtype = getattr(torch, config.dtype)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    ws, bs = init_weights(arch, gens, dtype)
    if init is not None:
        if init.architecture != arch or init.n_members != m:
            raise ValueError("init weights do not match the architecture or the number of members")
        ws = [torch.tensor(w, dtype=dtype) for w in init.weights]
        bs = [torch.tensor(b[:, None, :], dtype=dtype) for b in init.biases]
    mask_t = None
    if masks is not None:
        mask_t = [torch.tensor(np.asarray(mk, dtype=bool)).to(dtype) for mk in masks]
        ws = [w * mk for w, mk in zip(ws, mask_t, strict=True)]
    prox = regularizer.proximal_lams(arch)
    prox_lams = None if prox is None else [torch.tensor(lam, dtype=dtype) for lam in prox]
    params = [torch.nn.Parameter(t) for t in (*ws, *bs)]
    ws_p, bs_p = params[: len(ws)], params[len(ws) :]
    opt = torch.optim.Adam(params, lr=config.lr)
    z = torch.tensor(feats, dtype=dtype)
    y = torch.tensor(targs, dtype=dtype)
    s = z.shape[0]
    n_batches = -(-s // config.batch_size)
    loss_hist = np.zeros((config.epochs, m))
    pen_hist = np.zeros((config.epochs, m))
    nonzeros = np.zeros((config.epochs, m), dtype=np.int64)
    label = progress if isinstance(progress, str) else "training"
    t0 = time.perf_counter()
    bar = tqdm(total=config.epochs * n_batches, desc=label, disable=not progress or None, unit="step", leave=False)
    for epoch in range(config.epochs):
        perm = torch.stack([torch.randperm(s, generator=g) for g in gens])  # (M, S)
        acc = torch.zeros(m, dtype=torch.float64)
        for k in range(n_batches):
            idx = perm[:, k * config.batch_size : (k + 1) * config.batch_size]  # (M, b)
            w_eff: list[torch.Tensor] = (
                [w * mk for w, mk in zip(ws_p, mask_t, strict=True)] if mask_t is not None else list(ws_p)
            )
            out = _forward(w_eff, list(bs_p), z[idx], arch.skip)  # (M, b, n_out)
            mse = ((out - y[idx]) ** 2).mean(dim=(1, 2))  # (M,)
            if k == n_batches - 1:  # recorded at the epoch's last step, before its update
                with torch.no_grad():
                    pen = regularizer.penalty(w_eff, arch)
            loss = (mse + regularizer.loss_penalty(w_eff, arch)).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if prox_lams is not None:
                _proximal_step(opt, ws_p, prox_lams, config.lr)
            if isinstance(regularizer, GroupInputPenalty) and regularizer.proximal:
                _group_proximal_step(opt, ws_p, arch, regularizer.lam_group, config.lr)
            acc += mse.detach().to(torch.float64) * idx.shape[1]
        loss_hist[epoch] = (acc / s).numpy()
        pen_hist[epoch] = pen.detach().to(torch.float64).numpy()
        nonzeros[epoch] = [sum(int(torch.count_nonzero(w[j])) for w in ws_p) for j in range(m)]
        bar.update(n_batches)
        bar.set_postfix(mse=f"{loss_hist[epoch].mean():.3g}")
    bar.close()
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        final_w = [
            w.detach() * mk if mask_t is not None else w.detach() for w, mk in zip(ws_p, mask_t or ws_p, strict=True)
        ]
        weights = EnsembleWeights(
            arch,
            tuple(w.to(torch.float64).numpy().copy() for w in final_w),
            tuple(b.detach().to(torch.float64).numpy()[:, 0, :].copy() for b in bs_p),
            None if masks is None else tuple(np.asarray(mk, dtype=bool) for mk in masks),
        )
    return TrainResult(weights, loss_hist, pen_hist, seconds, {"trainer": "torch", "nonzeros": nonzeros})
