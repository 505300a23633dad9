"""The compiled rollout kernel: built once per prior (:func:`alutwin.cbuild.build_shared_library` with
:data:`alutwin.cbuild.NATIVE_FLAGS`, cached per host type), loaded with :mod:`ctypes` and checked against
``Surrogate.simulate`` in every layout on a small model (the float32 layouts against
:class:`identification.rollout.reference.Float32Reference`)."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from alutwin.cbuild import NATIVE_FLAGS, BuildError, LibraryCache, build_shared_library
from identification.data import Normalization
from identification.network import Architecture, EnsembleWeights
from identification.rollout.layout import TILES, TILES32, ModelPrograms, Program
from identification.rollout.reference import Float32Reference
from identification.rollout.translate import kernel_source
from identification.surrogate import PRIORS, Surrogate
from plant.engine import CompiledEngineError
from plant.signals import INPUTS, N_INPUTS, N_STATES, STATES

__all__ = ["KernelLibrary", "SummaryBuffers", "compiled_rollout_available", "kernel_library", "library_or_error"]

_ABI = 11  # bumped with the kernel's signature


@dataclass(frozen=True)
class SummaryBuffers:
    """What a summary run writes besides the ensemble mean, and the domain it checks (C-contiguous arrays)."""

    spread: np.ndarray  # (B, H + 1, 8)
    outputs: np.ndarray  # (B, H + 1, NY)
    members: np.ndarray | None  # (M, B, H + 1, 8), or None: not written
    limits: np.ndarray  # (5,) min ledge mass, alumina % low, high, AlF3 % low, high
    box: np.ndarray | None  # (16,) low, high of the box the mean is checked against, or None
    member_exit: np.ndarray  # (M, B) int64
    mean_exit: np.ndarray  # (B,) int64
    box_exit: np.ndarray | None  # (B,) int64, with box


def _ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


@dataclass(frozen=True)
class KernelLibrary:
    """The loaded kernel of one prior."""

    path: Path
    fn: Any  # the ctypes function alutwin_rollout
    handle: ctypes.CDLL
    summarise_fn: Any  # the ctypes function alutwin_summarise

    def run(
        self,
        prog: Program,
        mean: bool,
        x0: np.ndarray,
        u: np.ndarray,
        out: np.ndarray,
        dt: float,
        nv: int,
        threads: int,
        summary: SummaryBuffers | None = None,
    ) -> None:
        """Roll out ``x0`` ``(B, 8)`` under ``u`` ``(B, H, 5)`` into ``out`` (C-contiguous arrays); with
        ``summary``, ``out`` gets the ensemble mean and ``summary``'s arrays the rest. A float32 program
        (``prog.scale`` set) runs the network layers in float32."""
        b, h, _ = u.shape
        s = summary
        f32 = prog.scale is not None
        bias, w = prog.tile_bias.ctypes.data, prog.nz_w.ctypes.data
        code = self.fn(
            prog.n_groups,
            prog.n_layers,
            prog.n_members,
            int(prog.quad),
            int(mean),
            prog.n_rows,
            prog.grp_tiles.ctypes.data,
            prog.tile_dst.ctypes.data,
            None if f32 else bias,
            prog.tile_rounds.ctypes.data,
            prog.tile_shared.ctypes.data,
            prog.nz_src.ctypes.data,
            None if f32 else w,
            b,
            h,
            dt,
            x0.ctypes.data,
            u.ctypes.data,
            out.ctypes.data,
            nv,
            prog.tile,
            threads,
            int(s is not None),
            None if s is None else s.spread.ctypes.data,
            None if s is None else s.outputs.ctypes.data,
            None if s is None else _ptr(s.members),
            bias if f32 else None,
            w if f32 else None,
            _ptr(prog.scale),
            None if s is None else s.limits.ctypes.data,
            None if s is None else _ptr(s.box),
            None if s is None else s.member_exit.ctypes.data,
            None if s is None else s.mean_exit.ctypes.data,
            None if s is None else _ptr(s.box_exit),
        )
        if code != 0:
            raise CompiledEngineError(f"the rollout kernel {self.path} failed (code {code})")

    def summarise(self, states: np.ndarray, u: np.ndarray, mean: np.ndarray, summary: SummaryBuffers) -> None:
        """The summary of member rollouts ``states`` ``(M, B, H + 1, 8)`` under ``u`` ``(B, H, 5)``, ``H >= 1``,
        into ``mean`` and ``summary`` (what a summary run computes beside its rollout; members not written)."""
        m, b, t, _ = states.shape
        s = summary
        self.summarise_fn(
            m,
            b,
            t,
            states.ctypes.data,
            u.ctypes.data,
            mean.ctypes.data,
            s.spread.ctypes.data,
            s.outputs.ctypes.data,
            s.limits.ctypes.data,
            _ptr(s.box),
            s.member_exit.ctypes.data,
            s.mean_exit.ctypes.data,
            _ptr(s.box_exit),
        )


def _load(prior: str) -> KernelLibrary:
    try:
        path, _ = build_shared_library(kernel_source(prior), f"alutwin_rollout_{prior}", NATIVE_FLAGS)
    except BuildError as err:
        raise CompiledEngineError(str(err)) from err
    try:
        handle = ctypes.CDLL(str(path))
        fn = handle.alutwin_rollout
        summarise = handle.alutwin_summarise
        abi = handle.alutwin_rollout_abi
    except (OSError, AttributeError) as err:
        raise CompiledEngineError(f"cannot load the rollout kernel {path}: {err}") from err
    abi.restype = ctypes.c_int
    expected = 1000 * (PRIORS[prior] is not None) + _ABI
    if abi() != expected:
        raise CompiledEngineError(f"the rollout kernel {path} has ABI {abi()}, expected {expected}")
    p, i32, i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong
    fn.restype = ctypes.c_int
    fn.argtypes = [i32, i32, i32, i32, i32, i64, p, p, p, p, p, p, p, i64, i64, ctypes.c_double, p, p, p, i32, i32, i32]
    fn.argtypes += [i32, p, p, p, p, p, p, p, p, p, p, p]
    summarise.restype = ctypes.c_int
    summarise.argtypes = [i32, i64, i64, p, p, p, p, p, p, p, p, p, p]
    return KernelLibrary(path, fn, handle, summarise)


def _check_model(prior: str) -> Surrogate:
    """A small InputSkip ensemble of 5 with masks (the library's self-check)."""
    rng = np.random.default_rng(7)
    arch = Architecture(hidden=(8, 8), skip=True)
    ws = [rng.normal(0, 0.4, (5, a, b)) for a, b in arch.layer_shapes]
    masks = tuple(rng.random(w.shape) < 0.6 for w in ws)
    bs = [rng.normal(0, 0.1, (5, b)) for _, b in arch.layer_shapes]
    low = np.array([s.low for s in (*STATES, *INPUTS)])
    high = np.array([s.high for s in (*STATES, *INPUTS)])
    norm = Normalization((low + high) / 2, (high - low) / 4, np.zeros(8), np.full(8, 1e-3), 10.0)
    weights = EnsembleWeights(arch, tuple(w * mk for w, mk in zip(ws, masks, strict=True)), tuple(bs), masks)
    return Surrogate(weights, norm, prior)


def _self_check(lib: KernelLibrary, prior: str) -> None:
    """Every layout against ``Surrogate.simulate`` on a small model, the float32 ones against
    :class:`Float32Reference`: catches a broken compiler or library."""
    model = _check_model(prior)
    low = np.array([s.low for s in STATES])
    high = np.array([s.high for s in STATES])
    x0 = np.stack([low + f * (high - low) for f in (0.3, 0.5, 0.7)])  # (3, 8)
    u = np.broadcast_to(np.array([5.0, 140_000.0, 2.0, 1.0, 0.05]), (3, 4, N_INPUTS)).copy()  # (3, 4, 5)
    ref = model.simulate(x0, u)
    programs = ModelPrograms.build(model, mean=False)
    if programs.quads is None:
        raise CompiledEngineError("float64 programs without member quads")  # cannot happen: build makes them
    runs = [(programs.quads, nv) for nv in (1, 2)] + [(programs.single[t], nv) for nv, t in TILES.items()]
    for prog, nv in runs:
        out = np.empty((model.n_members, 3, 5, N_STATES))
        lib.run(prog, False, x0, u, out, model.dt, nv, 2)
        # 4 steps of a small model: the folds and the summation order change the last bits only
        if not np.allclose(out, ref, rtol=1e-11, atol=0):
            raise CompiledEngineError(f"the rollout kernel {lib.path} disagrees with Surrogate.simulate")
    ref32 = Float32Reference(model).simulate(x0, u)
    f32 = ModelPrograms.build(model, mean=False, precision="float32")
    for nv, tile in TILES32.items():
        out = np.empty((model.n_members, 3, 5, N_STATES))
        lib.run(f32.single[tile], False, x0, u, out, model.dt, nv, 2)
        # float32 sums in another order: a few float32 roundings of the derivative, times dt, on each state
        if not np.allclose(out, ref32, rtol=1e-9, atol=0) or np.array_equal(out, ref):
            raise CompiledEngineError(f"the float32 rollout kernel {lib.path} disagrees with Float32Reference")


def _checked(prior: str) -> KernelLibrary:
    lib = _load(prior)
    _self_check(lib, prior)
    return lib


_LIBRARIES: LibraryCache[KernelLibrary, CompiledEngineError] = LibraryCache(_checked, CompiledEngineError, maxsize=8)
"""The kernel of each prior, loaded and self-checked once per process and compiler (or why it cannot be)."""


def library_or_error(prior: str) -> KernelLibrary | CompiledEngineError:
    """The kernel for ``prior`` with the compiler found now, or the error that says why there is none."""
    return _LIBRARIES.get_or_error(prior)


def kernel_library(prior: str) -> KernelLibrary:
    """The kernel for ``prior``; raises :class:`plant.engine.CompiledEngineError` where it cannot be had."""
    return _LIBRARIES.get(prior)


def compiled_rollout_available(prior: str = "none") -> bool:
    """Whether the compiled kernel for ``prior`` builds and passes its self-check here (cached per compiler)."""
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; must be one of {sorted(PRIORS)}")
    return _LIBRARIES.available(prior)
