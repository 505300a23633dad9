"""A fused C kernel for :func:`identification.training.train_ensemble`: the same training, much faster.

The reference trainer spends most of its time in autograd and in tiny batched matrix products. Here one C
call (``kernel.c``, package data beside this module) runs a whole epoch of every member (forward, backward,
penalty and Adam, all minibatches), with the members spread over threads. Semantics are those of
``train_ensemble``: the same initialisation and the same shuffles (drawn from each member's torch generator in
the same order), MSE averaged over the minibatch's actual size, the same penalties and torch's Adam; only the
floating-point summation order differs (in float64 the weights agree with the reference's to rounding, which
the tests check to 1e-9 of each layer's scale after a few epochs). Each member is trained by one thread with a
fixed order of operations, so results are bit-identical whatever the thread count or the ensemble size.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from alutwin.cbuild import NATIVE_FLAGS, BuildError, LibraryCache, build_shared_library, package_source, usable_cpus
from identification.network import Architecture, EnsembleWeights
from identification.regularizers import GroupInputPenalty, L1Penalty, NoPenalty, Regularizer
from identification.training.reference import TrainConfig, TrainResult, init_weights

__all__ = [
    "MAX_LAYERS",
    "fast_training_available",
    "kernel_flags",
    "kernel_source",
    "train_ensemble_fast",
]

MAX_LAYERS = 32
"""Most weight matrices (hidden layers + 1) the kernel takes."""

_DEFAULT_CONFIG = TrainConfig()

_REAL = {"float32": ("float", "int32_t"), "float64": ("double", "int64_t")}  # dtype -> REAL, IREAL


def kernel_source() -> str:
    """``kernel.c``, the C source of the kernel (package data beside this module)."""
    return package_source(__package__, "kernel.c")


def kernel_flags(dtype: str) -> tuple[str, ...]:
    """The flags the kernel for ``dtype`` (``"float32"`` or ``"float64"``) is built with:
    :data:`alutwin.cbuild.NATIVE_FLAGS` and the precision."""
    if dtype not in _REAL:
        raise ValueError(f"dtype must be one of {sorted(_REAL)}, got {dtype!r}")
    real, ireal = _REAL[dtype]
    return (*NATIVE_FLAGS, f"-DREAL={real}", f"-DIREAL={ireal}")


def _load(dtype: str) -> ctypes.CDLL:
    path, _ = build_shared_library(kernel_source(), f"train_mlp_{dtype}", kernel_flags(dtype))
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as err:
        raise BuildError(f"cannot load the training kernel {path}: {err}") from err
    p = ctypes.c_void_p
    lib.train_epoch.restype = ctypes.c_int
    lib.train_epoch.argtypes = [
        p, ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_int, p, p, p, ctypes.c_int,
        p, p, p, p, ctypes.c_long, p, p, ctypes.c_int, p, p,
    ]  # fmt: skip
    lib.real_size.restype = ctypes.c_int
    if lib.real_size() != np.dtype(dtype).itemsize:
        raise BuildError(f"the {dtype} training kernel was built with the wrong precision")
    return lib


_LIBRARIES: LibraryCache[ctypes.CDLL, BuildError] = LibraryCache(_load, BuildError, maxsize=2)
"""The kernel of each dtype, loaded once per process and compiler (or why it cannot be)."""


def fast_training_available(dtype: str = "float32") -> bool:
    """Whether the kernel builds (a C compiler is present) for ``dtype`` (cached per compiler)."""
    return _LIBRARIES.available(dtype)


def _penalty_settings(regularizer: Regularizer, arch: Architecture) -> list[float]:
    """``[l1, lam_in, lam, lam_skip, group, lam_group, blocks, prox_group]`` for the kernel."""
    blocks = float(arch.blocks)
    if type(regularizer) is NoPenalty:
        return [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, blocks, 0.0]
    if type(regularizer) is L1Penalty:
        l1, group = regularizer, None
    elif type(regularizer) is GroupInputPenalty and type(regularizer.l1) is L1Penalty:
        l1, group = regularizer.l1, regularizer
    else:
        raise ValueError(
            f"regularizer {regularizer!r} is not supported by the fast trainer; "
            "expected NoPenalty, L1Penalty or GroupInputPenalty (use training.train_ensemble)"
        )
    lam_skip = l1.lam if l1.lam_skip is None else l1.lam_skip
    out = [1.0, float(l1.lam_in), float(l1.lam), float(lam_skip), 0.0, 0.0, blocks, 0.0]
    if group is not None:
        out[4:6] = [1.0, float(group.lam_group)]
        out[7] = 1.0 if group.proximal else 0.0
    if not np.all(np.isfinite(out)):
        raise ValueError(f"regularizer {regularizer!r} has non-finite weights")
    return out


def train_ensemble_fast(
    arch: Architecture,
    features: np.ndarray,
    targets: np.ndarray,
    seeds: Sequence[int],
    config: TrainConfig = _DEFAULT_CONFIG,
    regularizer: Regularizer | None = None,
    init: EnsembleWeights | None = None,
    masks: Sequence[np.ndarray] | None = None,
    progress: bool | str = False,
) -> TrainResult:
    """Train one ensemble member per seed, as :func:`identification.training.train_ensemble` does, in C.

    Parameters and result are those of ``train_ensemble``; ``config.threads`` is the number of the kernel's
    threads the members are spread over (None: as many as this process may use, at most one per member).

    Raises
    ------
    ValueError
        For bad shapes or non-finite data, mismatching ``init``/``masks``, or a regularizer other than
        :class:`NoPenalty`, :class:`L1Penalty` and :class:`GroupInputPenalty`.
    alutwin.cbuild.BuildError
        When there is no C compiler (use ``train_ensemble`` then).
    """
    regularizer = regularizer or NoPenalty()
    hyper = _penalty_settings(regularizer, arch)
    feats = np.asarray(features, dtype=np.float64)
    targs = np.asarray(targets, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[1] != arch.n_in or targs.shape != (feats.shape[0], arch.n_out):
        raise ValueError(
            f"features must be (S, {arch.n_in}) and targets (S, {arch.n_out}); got {feats.shape}, {targs.shape}"
        )
    if feats.shape[0] < 1:
        raise ValueError("features must hold at least one sample")
    if not (np.all(np.isfinite(feats)) and np.all(np.isfinite(targs))):
        raise ValueError("features and targets must be finite")
    m = len(seeds)
    if m < 1:
        raise ValueError("at least one seed (member) is needed")
    shapes = arch.layer_shapes
    if len(shapes) > MAX_LAYERS:
        raise ValueError(f"the fast trainer takes at most {MAX_LAYERS} weight matrices, got {len(shapes)}")
    if init is not None and (init.architecture != arch or init.n_members != m):
        raise ValueError("init weights do not match the architecture or the number of members")
    mask_arrays = None
    if masks is not None:
        if len(masks) != len(shapes):
            raise ValueError(f"masks must hold {len(shapes)} arrays, one per layer; got {len(masks)}")
        mask_arrays = []
        for i, ((a, b), mk) in enumerate(zip(shapes, masks, strict=True)):
            mk = np.asarray(mk)
            if mk.shape != (m, a, b):
                raise ValueError(f"mask {i} must have shape ({m}, {a}, {b}), got {mk.shape}")
            mask_arrays.append(mk.astype(bool))
    lib = _LIBRARIES.get(config.dtype)
    real = np.dtype(config.dtype)
    n_threads = max(1, min(config.threads or usable_cpus(), m))

    # the reference's initialisation, drawn from the same generators (also when init is given)
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    ws_t, bs_t = init_weights(arch, gens, getattr(torch, config.dtype))
    ws = [w.numpy() for w in ws_t]
    bs = [b.numpy()[:, 0, :] for b in bs_t]
    if init is not None:
        ws = [np.asarray(w).astype(real) for w in init.weights]
        bs = [np.asarray(b).astype(real) for b in init.biases]
    if mask_arrays is not None:
        ws = [w * mk.astype(real) for w, mk in zip(ws, mask_arrays, strict=True)]
    # one flat parameter vector per member: W_0, b_0, W_1, b_1, ...
    params = np.ascontiguousarray(
        np.concatenate([part for w, b in zip(ws, bs, strict=True) for part in (w.reshape(m, -1), b)], axis=1),
        dtype=real,
    )
    mask_flat = None
    if mask_arrays is not None:
        mask_flat = np.ascontiguousarray(
            np.concatenate(
                [part for mk in mask_arrays for part in (mk.reshape(m, -1), np.ones((m, mk.shape[2]), dtype=bool))],
                axis=1,
            ),
            dtype=np.uint8,
        )
    mom = np.zeros_like(params)
    vel = np.zeros_like(params)
    x = np.ascontiguousarray(feats, dtype=real)
    y = np.ascontiguousarray(targs, dtype=real)
    s = x.shape[0]
    n_batches = -(-s // config.batch_size)
    dims = np.array([arch.n_in, *arch.hidden, arch.n_out], dtype=np.int64)
    hyper_arr = np.array([config.lr, *hyper], dtype=np.float64)
    lams = regularizer.proximal_lams(arch)
    prox = None  # the proximal step's l1 weight of every parameter (biases: 0), in the parameter layout
    if lams is not None:
        prox = np.ascontiguousarray(
            np.concatenate([part for lam in lams for part in (lam.reshape(-1), np.zeros(lam.shape[1]))]),
            dtype=np.float64,
        )
        if not np.all(np.isfinite(prox)) or np.any(prox < 0):
            raise ValueError(f"regularizer {regularizer!r} has negative or non-finite weights")
    n_weights = [a * b for a, b in shapes]
    nonzeros = np.zeros((config.epochs, m), dtype=np.int64)
    loss_hist = np.zeros((config.epochs, m))
    pen_hist = np.zeros((config.epochs, m))
    loss = np.zeros(m)
    pen = np.zeros(m)
    label = progress if isinstance(progress, str) else "training"
    t0 = time.perf_counter()
    bar = tqdm(total=config.epochs * n_batches, desc=label, disable=not progress or None, unit="step", leave=False)
    for epoch in range(config.epochs):
        perm = np.ascontiguousarray(torch.stack([torch.randperm(s, generator=g) for g in gens]).numpy(), np.int64)
        rc = lib.train_epoch(
            dims.ctypes.data, len(arch.hidden), arch.n_skip_rows, s, config.batch_size, x.ctypes.data,
            y.ctypes.data, perm.ctypes.data, m, params.ctypes.data, mom.ctypes.data, vel.ctypes.data,
            None if mask_flat is None else mask_flat.ctypes.data, epoch * n_batches, hyper_arr.ctypes.data,
            None if prox is None else prox.ctypes.data, n_threads, loss.ctypes.data, pen.ctypes.data,
        )  # fmt: skip
        if rc == -2:
            raise MemoryError("the training kernel could not allocate its buffers or start its threads")
        if rc != 0:
            raise ValueError(f"the training kernel rejected its dimensions (code {rc})")
        loss_hist[epoch] = loss
        pen_hist[epoch] = pen
        nonzeros[epoch] = _count_weights(params, shapes, n_weights)
        bar.update(n_batches)
        bar.set_postfix(mse=f"{loss.mean():.3g}")
    bar.close()
    seconds = time.perf_counter() - t0

    out_w, out_b, off = [], [], 0
    for a, b in shapes:
        out_w.append(params[:, off : off + a * b].reshape(m, a, b).astype(np.float64))
        off += a * b
        out_b.append(params[:, off : off + b].astype(np.float64))
        off += b
    weights = EnsembleWeights(arch, tuple(out_w), tuple(out_b), None if mask_arrays is None else tuple(mask_arrays))
    extra = {"trainer": "c", "threads": n_threads, "nonzeros": nonzeros}
    return TrainResult(weights, loss_hist, pen_hist, seconds, extra)


def _count_weights(params: np.ndarray, shapes: Sequence[tuple[int, int]], n_weights: Sequence[int]) -> np.ndarray:
    """Exact non-zero weights (biases left out) of each member of a flat ``(M, np)`` parameter array."""
    total = np.zeros(params.shape[0], dtype=np.int64)
    off = 0
    for (_, b), n in zip(shapes, n_weights, strict=True):
        total += np.count_nonzero(params[:, off : off + n], axis=1)
        off += n + b
    return total
