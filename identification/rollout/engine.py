"""Fast free-run rollouts of surrogate ensembles: one generic C kernel over sparse weights.

:meth:`identification.surrogate.Surrogate.simulate` steps all members and cells together in numpy; a short
horizon for one cell (the twin's Predict RPC) is then dominated by numpy's per-call overhead, and a large
batch by dense matrix products over weights that are mostly exact zeros. :class:`RolloutEngine` prepares a
model once and runs whole rollouts in C (``kernel.c``, built by :mod:`identification.rollout.library`):

- **Weights** (:mod:`identification.rollout.layout`). Per member, every layer is a list of its live output
  units with their non-zero weights, the normalisation folded in, constant units folded into the next layer,
  dead units dropped. The work per step is one multiply-add per non-zero weight: masked and block-structured
  (``blocks``) models cost what their non-zeros cost, and InputSkip is just longer output columns.
- **Layout.** A work item is one member (all members, for the ensemble mean) for a block of 4, 8 or 16
  cells over the whole horizon. Activations are ``(unit, cell)`` rows of SIMD vectors, so a non-zero weight
  is a multiply-add over the block's cells into a register accumulator; 2 or 4 output units (a tile, padded
  with zero weights) are summed side by side to hide the adder's latency; then ReLU, the Euler update, the
  next step. For one or two cells a work item is instead a quad of members for one cell (the four members'
  union of non-zeros, zero where a member has none), so the vector lanes are not wasted on padding.
- **Hybrid prior** (:mod:`identification.rollout.translate`). ``plant.physics.rhs`` with the prior's
  parameters is built as a CasADi ``SX`` graph and translated instruction by instruction into C on SIMD
  vectors (``exp`` and ``pow`` lane by lane with the C library), one library per prior name; the prior is
  evaluated for all cells of a block at once.
- **Threads.** Work items are taken from a shared counter by the caller and ``threads - 1`` detached
  helpers; the call returns when every item is done, so a helper that a busy machine schedules late costs
  nothing. Every item is computed by one thread in a fixed order of operations: results are bit-identical
  whatever the thread count, and a cell's trajectory does not depend on the other cells of the batch (all
  layouts sum each unit's terms in the same order, and the padding adds exact zeros).

- **Float32** (``precision="float32"`` on every call). The network layers run in float32: weights and
  biases rounded once, activations in vectors of 8 floats (twice the cells per vector, so about half the
  multiply-add instructions), the inputs standardised and the outputs de-standardised in float64 beside them
  (the normalisation is not folded into float32 weights), the prior, the Euler update and the summaries in
  float64 as always. Its reference is :class:`identification.rollout.reference.Float32Reference` (numpy,
  what :class:`NumpyRolloutEngine` runs for float32). Only single-member layouts of 8 or 16 cells exist in
  float32 (8, 16 or 32 cells: 1, 2 or 4 vectors of 8 floats), so for one or two cells (member quads in
  float64) it wastes lanes and is no faster.

Each float64 step equals the reference to rounding (the folds and the summation order change the last bits, about
1e-15 relative; no ``-ffast-math``, no FMA contraction); over a rollout the model's own sensitivity amplifies
that, as it does any rounding (the tests assert 1e-9 relative over 50 steps). A member that blows up is
poisoned: from the first step at which one of a cell's states is inf or NaN, all 8 of its states are NaN (the
reference's dense products spread a NaN to most states too; the metric counts both as diverged). Nothing
else is clipped.

:func:`make_rollout_engine` picks the compiled engine, or the numpy reference where no compiler is found
(``"auto"`` warns once).
"""

from __future__ import annotations

import functools
import math
import sys
import threading
import warnings

import numpy as np

from alutwin.cbuild import usable_cpus
from identification.rollout.layout import PRECISIONS, TILES, TILES32, VL, ModelPrograms, Program, check_precision
from identification.rollout.library import SummaryBuffers, kernel_library, library_or_error
from identification.rollout.reference import Float32Reference
from identification.rollout.summary import Box, Exits, Summary, check_box, summary_of
from identification.rollout.translate import OUTPUT_ORDER
from identification.surrogate import Surrogate, check_rollout_inputs
from plant.engine import CompiledEngineError, CompilerUnavailableWarning
from plant.params import DEFAULT_LIMITS, DomainLimits
from plant.signals import N_STATES

__all__ = ["ENGINES", "PRECISIONS", "NumpyRolloutEngine", "RolloutEngine", "make_rollout_engine"]

ENGINES = ("auto", "compiled", "numpy")
"""``compiled``: :class:`RolloutEngine`; ``numpy``: :class:`NumpyRolloutEngine` (``Surrogate.simulate``);
``auto``: compiled where a C compiler is available, else numpy (with one warning)."""

_QUAD_COST = 1.3  # a member quad's weights are vectors, not broadcast scalars: more loads per multiply-add
_ITEM_STEP_COST = 60.0  # inputs, Euler update and output of one work item and step, in vector multiply-adds
_MIN_WORK_PER_THREAD = 100_000  # vector multiply-adds below which another thread costs more than it saves
_REUSE_MIN_BYTES = 16 << 20  # outputs from this size on come from kept buffers (_Buffers)
_REUSE_KEEP = 2  # large buffers an engine keeps
_FREE_REFS = 3  # sys.getrefcount of a kept buffer no array refers to: the pool's list, the loop's name, the call


def _check_threads(threads: int | None) -> int | None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return None if threads is None else int(threads)


@functools.lru_cache(maxsize=8)
def _limits_array(limits: DomainLimits) -> np.ndarray:
    """``limits`` as the kernel reads them: min ledge mass, alumina % low, high, AlF3 % low, high (read-only)."""
    a = np.array([limits.min_ledge_mass, *limits.alumina_pct, *limits.alf3_pct], dtype=np.float64)
    a.flags.writeable = False
    return a


def _empty_aligned(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float64 array starting on a 64-byte boundary (the kernel then streams whole lines)."""
    return _aligned_view(np.empty(math.prod(shape) + 8), shape)


def _aligned_view(buf: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The first ``shape`` of the 1-d float64 ``buf`` (8 more than needed) that starts on a 64-byte boundary."""
    start = (-buf.ctypes.data % 64) // 8
    return buf[start : start + math.prod(shape)].reshape(shape)


class _Buffers:
    """Large output buffers, kept for reuse.

    Memory fresh from the operating system is zeroed page by page at its first touch: about 5 ms for the
    70 MB of a potline's member trajectories, a quarter of their rollout (smaller arrays come back warm from
    the C heap, which reuses freed blocks below its mmap threshold, at most 32 MB). A kept buffer to which no
    array refers any more (only this pool: CPython's reference count says so; every view of it holds a
    reference) is handed out again instead.
    """

    def __init__(self) -> None:
        self._kept: list[np.ndarray] = []  # the newest first
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...]) -> np.ndarray:
        """:func:`_empty_aligned`, from a kept buffer where one of the size is free."""
        n = math.prod(shape) + 8
        if n * 8 < _REUSE_MIN_BYTES:
            return _empty_aligned(shape)
        with self._lock:
            for i in range(len(self._kept)):
                buf = self._kept[i]
                if buf.size == n and sys.getrefcount(buf) == _FREE_REFS:
                    return _aligned_view(buf, shape)
            buf = np.empty(n)
            self._kept = [buf, *self._kept][:_REUSE_KEEP]  # a buffer dropped here lives on in its arrays
            return _aligned_view(buf, shape)


class RolloutEngine:
    """Free runs of a surrogate ensemble in compiled C: ``Surrogate.simulate``'s results, up to rounding.

    Parameters
    ----------
    surrogate : the model (any architecture and prior of :mod:`identification.surrogate`).
    threads : threads to spread the work over (None: the CPUs this process may use, fewer for small work).
        Results do not depend on it, nor on which other cells are in the batch.

    Raises
    ------
    plant.engine.CompiledEngineError
        Where the kernel cannot be built (no C compiler) or fails its self-check.

    Every rollout takes ``precision``, one of :data:`PRECISIONS`: ``"float64"`` (the default, the reference
    to rounding) or ``"float32"`` (the network layers in float32, the states in float64; its programs are
    prepared at its first use). Calls may come from several threads at once: the prepared weights are
    read-only and every call has its own scratch memory and output.
    """

    def __init__(self, surrogate: Surrogate, threads: int | None = None) -> None:
        if not isinstance(surrogate, Surrogate):
            raise ValueError(f"surrogate must be a Surrogate, got {type(surrogate).__name__}")
        self.surrogate = surrogate
        self.threads = _check_threads(threads)
        self._lib = kernel_library(surrogate.prior)
        self._members = ModelPrograms.build(surrogate, mean=False)
        self._mean: ModelPrograms | None = None  # built on first use, as are the float32 ones
        self._members32: ModelPrograms | None = None
        self._mean32: ModelPrograms | None = None
        self._lock = threading.Lock()
        self._buffers = _Buffers()

    @property
    def n_members(self) -> int:
        return self.surrogate.n_members

    @property
    def nonzeros_per_member(self) -> float:
        """Multiply-adds per member, cell and step after folding constant units and dropping dead ones."""
        return self._members.nonzeros

    def _programs(self, mean: bool, precision: str) -> ModelPrograms:
        """The prepared programs of the members (or of the ensemble mean) in ``precision``."""
        if not mean and precision == "float64":
            return self._members
        attr = {(True, "float64"): "_mean", (False, "float32"): "_members32", (True, "float32"): "_mean32"}
        name = attr[(mean, precision)]
        with self._lock:
            if getattr(self, name) is None:
                setattr(self, name, ModelPrograms.build(self.surrogate, mean=mean, precision=precision))
            programs: ModelPrograms = getattr(self, name)
        return programs

    def _plan(self, programs: ModelPrograms, b: int, h: int, mean: bool) -> tuple[Program, int, int]:
        """``(program, nv, threads)`` for ``b`` cells over ``h`` steps: the layout with the least work per step.

        Single-member items hold ``4 nv`` cells, member-quad items ``nv`` cells; work is counted in vector
        multiply-adds (weight slots, padding included, times vectors), a quad's vector weights costing more.
        Float32 programs have single-member items of 8, 16 or 32 cells only, in ``nv / 2`` vectors of 8 floats.
        """
        f32 = programs.quads is None
        tiles = TILES32 if f32 else TILES
        options = []
        for nv, tile in tiles.items():
            if nv > min(tiles) and VL * (nv // 2) >= b:
                break
            prog = programs.single[tile]
            blocks = -(-b // (VL * nv))
            vectors = nv // 2 if f32 else nv
            options.append((prog.nz_src.size * blocks * vectors + _ITEM_STEP_COST * blocks * self.n_members, prog, nv))
        quads = programs.quads  # None for float32 programs
        for nv in (1, 2):
            if quads is None or (nv > 1 and nv // 2 >= b):
                break
            blocks = -(-b // nv)
            cost = quads.nz_src.size * blocks * nv * _QUAD_COST + _ITEM_STEP_COST * blocks * quads.n_groups
            options.append((cost, quads, nv))
        work, prog, nv = min(options, key=lambda o: o[0])
        n_items = -(-b // (nv if prog.quad else VL * nv)) * (1 if mean else prog.n_groups)
        if self.threads is not None:
            return prog, nv, max(1, min(self.threads, n_items))
        return prog, nv, max(1, min(usable_cpus(), n_items, int(work * h // _MIN_WORK_PER_THREAD)))

    def simulate(self, x0: np.ndarray, u: np.ndarray, precision: str = "float64") -> np.ndarray:
        """Free run of every member from ``x0`` ``(B, 8)`` driven by ``u`` ``(B, T, 5)``: ``(M, B, T + 1, 8)``.

        From the first step at which a cell's state is not finite, all its 8 states are NaN.
        """
        check_precision(precision)
        x0, u = check_rollout_inputs(x0, u)
        b, h, _ = u.shape
        out = self._buffers.empty((self.n_members, b, h + 1, N_STATES))  # (M, B, T + 1, 8)
        if b == 0:
            return out
        prog, nv, threads = self._plan(self._programs(False, precision), b, h, mean=False)
        self._lib.run(prog, False, x0, u, out, self.surrogate.dt, nv, threads)
        return out

    def simulate_summary(
        self,
        x0: np.ndarray,
        u: np.ndarray,
        members: bool = False,
        precision: str = "float64",
        *,
        limits: DomainLimits = DEFAULT_LIMITS,
        box: Box | None = None,
    ) -> Summary:
        """Free run of every member, summarised in C: :func:`summary_of` of :meth:`simulate`, to rounding.

        The kernel keeps every member of a block of cells in step and writes only the mean, the spread and
        the algebraic outputs (and the members' states when ``members``), so a large batch moves a fraction
        of the memory; on the way it notes where each member and the mean first leave the valid domain
        ``limits`` (:func:`plant.domain.check_domain`'s decision, a few compares per member and step) and the
        mean the ``box`` (:class:`Exits`). The members' states are :meth:`simulate`'s bit for bit (the same
        kernel); the mean and spread take numpy's operations in numpy's order, and the outputs' ``exp`` and
        ``pow`` are the C library's, which may differ from numpy's SIMD ones in the last bit. For one or two
        cells (member quads are faster there) it is :meth:`simulate` and the same summary in C after it.
        """
        check_precision(precision)
        x0, u = check_rollout_inputs(x0, u)
        box = check_box(box)
        b, h, _ = u.shape
        if b == 0 or (b < 3 and h == 0):
            return summary_of(self.simulate(x0, u, precision), u, members, limits, box)
        m = self.n_members
        mean = _empty_aligned((b, h + 1, N_STATES))  # (B, T + 1, 8)
        bufs = SummaryBuffers(
            spread=_empty_aligned((b, h + 1, N_STATES)),  # (B, T + 1, 8)
            outputs=np.empty((b, h + 1, len(OUTPUT_ORDER))),  # (B, T + 1, 6)
            members=self._buffers.empty((m, b, h + 1, N_STATES)) if members and b >= 3 else None,  # (M, B, T + 1, 8)
            limits=_limits_array(limits),
            box=None if box is None else np.concatenate(box),
            member_exit=np.empty((m, b), dtype=np.int64),
            mean_exit=np.empty(b, dtype=np.int64),
            box_exit=None if box is None else np.empty(b, dtype=np.int64),
        )
        states = bufs.members
        if b < 3:
            states = self.simulate(x0, u, precision)
            self._lib.summarise(states, u, mean, bufs)
        else:
            prog, nv, threads = self._plan_summary(self._programs(False, precision), b, h)
            self._lib.run(prog, False, x0, u, mean, self.surrogate.dt, nv, threads, bufs)
        exits = Exits(limits, box, bufs.member_exit, bufs.mean_exit, bufs.box_exit)
        return Summary(mean, bufs.spread, bufs.outputs, states if members else None, exits)

    def _plan_summary(self, programs: ModelPrograms, b: int, h: int) -> tuple[Program, int, int]:
        """``(program, nv, threads)`` of a summary: the block size whose slowest thread has the least work."""
        cpus = self.threads or usable_cpus()
        f32 = programs.quads is None
        tiles = TILES32 if f32 else TILES
        options = []
        for nv, tile in tiles.items():
            if nv > min(tiles) and VL * (nv // 2) >= b:
                break
            prog = programs.single[tile]
            blocks = -(-b // (VL * nv))
            vectors = nv // 2 if f32 else nv
            per_block = (prog.nz_src.size * vectors + _ITEM_STEP_COST * self.n_members) * h
            threads = max(1, min(cpus, blocks, int(per_block * blocks // _MIN_WORK_PER_THREAD)))
            options.append((-(-blocks // threads) * per_block, nv, prog, threads))
        _, nv, prog, threads = min(options, key=lambda o: o[:2])
        return prog, nv, threads

    def simulate_mean(self, x0: np.ndarray, u: np.ndarray, precision: str = "float64") -> np.ndarray:
        """Free run of the ensemble-mean model (``Surrogate.mean().simulate``): ``(B, T + 1, 8)``."""
        check_precision(precision)
        x0, u = check_rollout_inputs(x0, u)
        b, h, _ = u.shape
        out = _empty_aligned((b, h + 1, N_STATES))  # (B, T + 1, 8)
        if b == 0:
            return out
        prog, nv, threads = self._plan(self._programs(True, precision), b, h, mean=True)
        self._lib.run(prog, True, x0, u, out, self.surrogate.dt, nv, threads)
        return out


class NumpyRolloutEngine:
    """The reference: :meth:`Surrogate.simulate` and ``Surrogate.mean().simulate`` behind the engine's API, and
    for ``precision="float32"`` :class:`identification.rollout.reference.Float32Reference`."""

    def __init__(self, surrogate: Surrogate, threads: int | None = None) -> None:
        if not isinstance(surrogate, Surrogate):
            raise ValueError(f"surrogate must be a Surrogate, got {type(surrogate).__name__}")
        self.surrogate = surrogate
        self.threads = _check_threads(threads)  # accepted for a uniform signature; numpy decides itself
        self._f32: Float32Reference | None = None  # made on first use
        self._lock = threading.Lock()

    @property
    def n_members(self) -> int:
        return self.surrogate.n_members

    def _float32(self) -> Float32Reference:
        with self._lock:
            if self._f32 is None:
                self._f32 = Float32Reference(self.surrogate)
            return self._f32

    def simulate(self, x0: np.ndarray, u: np.ndarray, precision: str = "float64") -> np.ndarray:
        """``Surrogate.simulate``: ``(M, B, T + 1, 8)``."""
        if check_precision(precision) == "float32":
            return self._float32().simulate(x0, u)
        return self.surrogate.simulate(x0, u)

    def simulate_summary(
        self,
        x0: np.ndarray,
        u: np.ndarray,
        members: bool = False,
        precision: str = "float64",
        *,
        limits: DomainLimits = DEFAULT_LIMITS,
        box: Box | None = None,
    ) -> Summary:
        """:func:`summary_of` of :meth:`simulate` (with the :class:`Exits` from ``limits`` and ``box``)."""
        check_precision(precision)
        x0, u = check_rollout_inputs(x0, u)
        return summary_of(self.simulate(x0, u, precision), u, members, limits, check_box(box))

    def simulate_mean(self, x0: np.ndarray, u: np.ndarray, precision: str = "float64") -> np.ndarray:
        """``Surrogate.mean().simulate``: ``(B, T + 1, 8)``."""
        if check_precision(precision) == "float32":
            return self._float32().simulate_mean(x0, u)
        x0, u = check_rollout_inputs(x0, u)
        return self.surrogate.mean().simulate(x0, u)


_warned: set[str] = set()


def make_rollout_engine(
    surrogate: Surrogate, engine: str = "auto", threads: int | None = None
) -> RolloutEngine | NumpyRolloutEngine:
    """A rollout engine for ``surrogate`` by name, one of :data:`ENGINES`.

    ``"compiled"`` raises :class:`plant.engine.CompiledEngineError` where the kernel cannot be built;
    ``"auto"`` then falls back to numpy, with a :class:`plant.engine.CompilerUnavailableWarning` the first time
    per prior in this process.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; must be one of {list(ENGINES)}")
    if not isinstance(surrogate, Surrogate):
        raise ValueError(f"surrogate must be a Surrogate, got {type(surrogate).__name__}")
    if engine == "numpy":
        return NumpyRolloutEngine(surrogate, threads)
    if engine == "compiled":
        return RolloutEngine(surrogate, threads)
    lib = library_or_error(surrogate.prior)
    if isinstance(lib, CompiledEngineError):
        if surrogate.prior not in _warned:
            _warned.add(surrogate.prior)
            warnings.warn(
                f"compiled rollout engine unavailable, using numpy: {lib}", CompilerUnavailableWarning, stacklevel=2
            )
        return NumpyRolloutEngine(surrogate, threads)
    return RolloutEngine(surrogate, threads)
