"""Fast free-run rollouts of surrogate ensembles: one generic C kernel over sparse weights.

:meth:`identification.surrogate.Surrogate.simulate` steps all members and cells together in numpy; a short
horizon for one cell (the twin's Predict RPC) is then dominated by numpy's per-call overhead, and a large
batch by dense matrix products over weights that are mostly exact zeros. :class:`RolloutEngine` prepares a
model once and runs whole rollouts in C:

- **Weights.** Per member, every layer is a list of its live output units, each with its bias and the
  non-zero weights feeding it (a sparse column). The input standardisation is folded into the first layer
  (and into the skip rows of an InputSkip output layer), the output de-standardisation ``target_std``,
  ``target_mean`` (and ``1 / M`` for the ensemble mean) into the output layer, as
  :mod:`identification.export` does for CasADi (its fold is reused). Hidden units without any non-zero input
  weight are constants, folded into the next layer's biases; units whose outgoing weights are all zero are
  dropped. The work per step is one multiply-add per non-zero weight: masked and block-structured
  (``blocks``) models cost what their non-zeros cost, and InputSkip is just longer output columns.
- **Layout.** A work item is one member (all members, for the ensemble mean) for a block of 4, 8 or 16
  cells over the whole horizon. Activations are ``(unit, cell)`` rows of SIMD vectors, so a non-zero weight
  is a multiply-add over the block's cells into a register accumulator; 2 or 4 output units (a tile, padded
  with zero weights) are summed side by side to hide the adder's latency; then ReLU, the Euler update, the
  next step. For one or two cells a work item is instead a quad of members for one cell (the four members'
  union of non-zeros, zero where a member has none), so the vector lanes are not wasted on padding.
- **Hybrid prior.** ``plant.physics.rhs`` with the prior's parameters is built as a CasADi ``SX`` graph and
  translated instruction by instruction into C on SIMD vectors (``exp`` and ``pow`` lane by lane with the C
  library), one library per prior name; the prior is evaluated for all cells of a block at once.
- **Generated code.** For large summaries of a sparse model (the twin's potline Predicts) the kernel can also
  run the model itself compiled in: :func:`specialised_source` writes each member's units as straight-line
  multiply-adds with the weights as constants (no index loads, loops or branches around a unit's handful of
  weights), compiled once per model (a few seconds, on a thread, then from the disk cache) and checked to
  give the interpreted kernel's results bit for bit before it is used (:meth:`RolloutEngine.specialise`).
  300 cells x 360 steps x 10 members: 54 -> 40 ms on 2 cores. A dense member's 1620 weights make too much
  code to run faster, so only models with at most ``_SPECIALISE_MAX_NONZEROS`` weights per member get it.
- **Threads.** Work items are taken from a shared counter by the caller and ``threads - 1`` detached
  helpers; the call returns when every item is done, so a helper that a busy machine schedules late costs
  nothing. Every item is computed by one thread in a fixed order of operations: results are bit-identical
  whatever the thread count, and a cell's trajectory does not depend on the other cells of the batch (all
  layouts sum each unit's terms in the same order, and the padding adds exact zeros).

Each step equals the reference to rounding (the folds and the summation order change the last bits, about
1e-15 relative; no ``-ffast-math``, no FMA contraction); over a rollout the model's own sensitivity amplifies
that, as it does any rounding (the tests assert 1e-9 relative over 50 steps). A member that blows up is
poisoned: from the first step at which one of a cell's states is inf or NaN, all 8 of its states are NaN (the
reference's dense products spread a NaN to most states too; the metric counts both as diverged). Nothing
else is clipped.

The library is compiled once per prior with the system C compiler (``-O3 -march=native``, cached per host
type by :func:`alutwin.cbuild.build_shared_library`) and checked against ``Surrogate.simulate`` in every layout
on a small model when it is loaded. :func:`make_rollout_engine` picks it, or the numpy reference where no
compiler is found (``"auto"`` warns once). Measured on 2 cores in ``bench/twin_predict_engine.py``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import casadi as ca
import numpy as np

from alutwin.cbuild import BuildError, build_shared_library, find_compiler, host_id
from identification.data import Normalization
from identification.export import member_layers
from identification.network import Architecture, EnsembleWeights
from identification.surrogate import PRIORS, Surrogate, check_rollout_inputs
from plant.engine import CompiledEngineError, CompilerUnavailableWarning
from plant.physics import OUTPUT_FUNCTIONS, algebraic, rhs
from plant.signals import INPUTS, N_INPUTS, N_STATES, STATES

__all__ = [
    "ENGINES",
    "GENERATED",
    "NumpyRolloutEngine",
    "OUTPUT_ORDER",
    "RolloutEngine",
    "Summary",
    "algebraic_outputs",
    "compiled_rollout_available",
    "make_rollout_engine",
    "summarise",
    "specialised_source",
    "summary_of",
    "vector_source",
]

ENGINES = ("auto", "compiled", "numpy")
OUTPUT_ORDER = tuple(OUTPUT_FUNCTIONS)
"""The algebraic outputs of the ensemble mean that :meth:`RolloutEngine.simulate_summary` returns, in order."""
"""``compiled``: :class:`RolloutEngine`; ``numpy``: :class:`NumpyRolloutEngine` (``Surrogate.simulate``);
``auto``: compiled where a C compiler is available, else numpy (with one warning)."""

_ABI = 9  # bumped with the kernel's signature
_QUAD_COST = 1.3  # a member quad's weights are vectors, not broadcast scalars: more loads per multiply-add
_ITEM_STEP_COST = 60.0  # inputs, Euler update and output of one work item and step, in vector multiply-adds
_SPECIALISE_WORK = 200_000  # member-cell-steps of a summary from which the model's generated kernel is built
_SPECIALISE_MAX_NONZEROS = 600  # weights per member above which it is not: a dense 13-20-20-20-20-8 member's
# 1620 weights make ~700 kB of code, which ran no faster than the generic kernel (300 cells: 168 vs 163 ms)
GENERATED = ("auto", "never")
"""Values of ``RolloutEngine(generated=...)``."""
_MIN_WORK_PER_THREAD = 100_000  # vector multiply-adds below which another thread costs more than it saves

_FLAGS = ("-O3", "-fPIC", "-shared", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-pthread")

_SPEC_FLAGS = ("-O1", *_FLAGS[1:])  # a model's generated code: straight-line, -O3 compiles slower for nothing

_PRELUDE = r"""
/* alutwin rollout kernel: types and helpers (also all a translated prior needs) */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __AVX__
#include <immintrin.h>
#endif

#define NX 8
#define NU 5
#define VL 4                                 /* doubles per SIMD vector */
#define TILE(nv) ((nv) <= 2 ? 4 : 2)         /* entries (output units) per tile */
#define MAXV 4                               /* most vectors per activation row */
typedef double vd __attribute__((vector_size(32)));
typedef long long vl __attribute__((vector_size(32)));
#define AI static inline __attribute__((always_inline))

typedef struct {
    int n_groups, n_layers, n_members, mean, nv;
    const int32_t *grp_tiles;   /* (G * L + 1,) first tile of each group's layer */
    const int32_t *tile_dst;    /* (n_tiles, TILE) hidden: activation row written; output layer: state index */
    const double *tile_bias;    /* (n_tiles, TILE), or (n_tiles, TILE, VL) for member quads */
    const int32_t *tile_rounds; /* (n_tiles + 1,) first round of each tile; a round is one weight per entry */
    const uint8_t *tile_shared; /* (n_tiles,) 1 where every entry of the tile reads the same rows */
    const int32_t *nz_src;      /* (rounds, TILE) activation row read */
    const double *nz_w;         /* (rounds, TILE), or (rounds, TILE, VL) for member quads */
    long long B, H, n_blocks, n_items, n_rows;
    double dt;
    const double *x0, *u;       /* (B, NX), (B, H, NU) */
    double *out;                /* (M, B, H + 1, NX), or (B, H + 1, NX) for the ensemble mean */
    double *spread, *outputs;   /* summary: (B, H + 1, NX) std over members, (B, H + 1, NY) outputs of the mean */
    double *members;            /* summary: (M, B, H + 1, NX) every member's states, or NULL */
    int quad, summary;
    long long next, done;       /* items taken and items finished, shared by the threads */
    int failed, refs;           /* refs: threads still holding the job */
    pthread_mutex_t mu;
    pthread_cond_t cv;          /* signalled when the last item is done */
} Job;

/* ReLU that keeps NaN, as numpy's maximum does (vmaxpd returns its second operand when one is NaN). */
#ifdef __AVX__
AI vd relu(vd x) { return (vd)_mm256_max_pd(_mm256_setzero_pd(), (__m256d)x); }
#else
AI vd relu(vd x) {
    const vd zero = {0.0, 0.0, 0.0, 0.0};
    return (vd)((vl)x & ~(vl)(x < zero));
}
#endif

AI vd bcast(double x) { return (vd){x, x, x, x}; }

AI vd loadu(const double *p) { /* numpy arrays need not be 32-byte aligned */
    vd v;
    memcpy(&v, p, sizeof v);
    return v;
}

"""

_KERNEL = r"""

/* Rows r[0], r[stride], r[2 stride], r[3 stride] (4 states x 4 lanes) as 4 columns (4 states of each lane). */
AI void transpose4(const vd *r, const int stride, vd *col) {
#ifdef __AVX__
    __m256d t0 = _mm256_unpacklo_pd((__m256d)r[0], (__m256d)r[stride]);
    __m256d t1 = _mm256_unpackhi_pd((__m256d)r[0], (__m256d)r[stride]);
    __m256d t2 = _mm256_unpacklo_pd((__m256d)r[2 * stride], (__m256d)r[3 * stride]);
    __m256d t3 = _mm256_unpackhi_pd((__m256d)r[2 * stride], (__m256d)r[3 * stride]);
    col[0] = (vd)_mm256_permute2f128_pd(t0, t2, 0x20);
    col[1] = (vd)_mm256_permute2f128_pd(t1, t3, 0x20);
    col[2] = (vd)_mm256_permute2f128_pd(t0, t2, 0x31);
    col[3] = (vd)_mm256_permute2f128_pd(t1, t3, 0x31);
#else
    for (int j = 0; j < VL; ++j) col[j] = (vd){r[0][j], r[stride][j], r[2 * stride][j], r[3 * stride][j]};
#endif
}

/* One step's 8 states of one cell: a whole 64-byte line, written past the caches when it is aligned. */
AI void store_row(double *o, vd lo, vd hi) {
#ifdef __AVX__
    if (((uintptr_t)o & 31) == 0) {
        _mm256_stream_pd(o, (__m256d)lo);
        _mm256_stream_pd(o + 4, (__m256d)hi);
        return;
    }
#endif
    memcpy(o, &lo, sizeof lo);
    memcpy(o + 4, &hi, sizeof hi);
}

/* Layers of group g (a member, or a member quad) on the activations: hidden rows of act, and the output
   layer into d (summed over groups for the ensemble mean). Each entry's sum runs over its weights in the
   order stored. */
AI void eval_group(Job *J, const int g, vd *act, vd *d, double *dsc, const int nv, const int quad) {
    const int L = J->n_layers, M = J->n_members, mean = J->mean;
    const int P = TILE(nv);
    for (int l = 0; l < L; ++l) {
        const int last = l == L - 1;
        const int32_t t1 = J->grp_tiles[g * L + l + 1];
        for (int32_t t = J->grp_tiles[g * L + l]; t < t1; ++t) {
            const int32_t r0 = J->tile_rounds[t], r1 = J->tile_rounds[t + 1];
            vd acc[4][MAXV];
            for (int p = 0; p < P; ++p) {
                const long long e = (long long)t * P + p;
                const vd b = quad ? loadu(J->tile_bias + e * VL) : bcast(J->tile_bias[e]);
                for (int v = 0; v < nv; ++v) acc[p][v] = b;
            }
            if (J->tile_shared[t]) { /* the entries read the same rows (dense layers): load them once */
                for (int32_t r = r0; r < r1; ++r) {
                    const vd *s = act + (long long)J->nz_src[(long long)r * P] * nv;
                    vd sv[MAXV];
                    for (int v = 0; v < nv; ++v) sv[v] = s[v];
                    for (int p = 0; p < P; ++p) {
                        const long long q = (long long)r * P + p;
                        const vd w = quad ? loadu(J->nz_w + q * VL) : bcast(J->nz_w[q]);
                        for (int v = 0; v < nv; ++v) acc[p][v] += w * sv[v];
                    }
                }
            } else {
                for (int32_t r = r0; r < r1; ++r) {
                    for (int p = 0; p < P; ++p) {
                        const long long q = (long long)r * P + p;
                        const vd w = quad ? loadu(J->nz_w + q * VL) : bcast(J->nz_w[q]);
                        const vd *s = act + (long long)J->nz_src[q] * nv;
                        for (int v = 0; v < nv; ++v) acc[p][v] += w * s[v];
                    }
                }
            }
            for (int p = 0; p < P; ++p) {
                const int32_t dst = J->tile_dst[(long long)t * P + p];
                if (!last) {
                    for (int v = 0; v < nv; ++v) act[(long long)dst * nv + v] = relu(acc[p][v]);
                } else if (!mean) {
                    for (int v = 0; v < nv; ++v) d[dst * nv + v] = acc[p][v];
                } else if (!quad) {
                    for (int v = 0; v < nv; ++v) d[dst * nv + v] += acc[p][v];
                } else {
                    for (int v = 0; v < nv; ++v)
                        for (int j = 0; j < VL; ++j)
                            if (VL * g + j < M) dsc[dst * nv + v] += acc[p][v][j];
                }
            }
        }
    }
}

/* Explicit Euler: states x (rows 0..7 of act) plus dt times derivatives d, into dst (may be act). A cell whose
   new state is inf or NaN anywhere gets NaN in all 8 states (poisoned). */
AI void euler_step(const vd *x, const vd *d, vd *dst, const double dt, const int nv) {
    vd poison[MAXV];
    for (int v = 0; v < nv; ++v) poison[v] = bcast(0.0);
    for (int i = 0; i < NX; ++i)
        for (int v = 0; v < nv; ++v) {
            vd xi = x[i * nv + v] + dt * d[i * nv + v];
            dst[i * nv + v] = xi;
            poison[v] += xi - xi; /* 0 where finite, NaN once a state is inf or NaN */
        }
    for (int i = 0; i < NX; ++i)
        for (int v = 0; v < nv; ++v) dst[i * nv + v] += poison[v];
}

/* One work item: a block of cells for one group of members (all groups for the ensemble mean), all steps.
   Lane c of an activation row is cell b0 + c of the group's member (quad = 0), or, for a member quad
   (quad = 1), member 4 g + c % 4 of cell b0 + c / 4. Each entry's sum runs over its weights in the order
   stored, so a lane's result depends neither on its neighbours nor on the thread that computes it. */
AI void run_item(Job *J, long long item, vd *act, vd *d, double *dsc, const int nv, const int quad) {
    const int C = VL * nv, M = J->n_members, mean = J->mean;
    const int cells = quad ? nv : C;
    const long long B = J->B, H = J->H;
    const long long zero_row = J->n_rows - 2;
    const double dt = J->dt;
    long long blk = mean ? item : item % J->n_blocks;
    int g_lo = mean ? 0 : (int)(item / J->n_blocks), g_hi = mean ? J->n_groups : g_lo + 1;
    long long b0 = blk * cells;
    int nb = (int)(B - b0 < cells ? B - b0 : cells); /* real cells in this block */
    int mirror[VL * MAXV];   /* the real lane a lane copies (itself if real) */
    long long cell[VL * MAXV], member[VL * MAXV];
    double *a = (double *)act, *dd = (double *)d;
    for (int c = 0; c < C; ++c) {
        int v = quad ? c / VL : c, j = quad ? c % VL : 0;
        int vv = v < nb ? v : nb - 1, jj = j;
        if (quad && mean) jj = 0;
        else if (quad && VL * g_lo + jj >= M) jj = M - 1 - VL * g_lo;
        mirror[c] = quad ? VL * vv + jj : vv;
        cell[c] = b0 + vv;
        member[c] = quad ? VL * g_lo + jj : g_lo;
    }
    for (int v = 0; v < nv; ++v) act[zero_row * nv + v] = bcast(0.0);
    for (int i = 0; i < NX; ++i)
        for (int c = 0; c < C; ++c) a[i * C + c] = J->x0[cell[c] * NX + i];
    for (int c = 0; c < C; ++c) {
        if (mirror[c] != c) continue;
        double *o = J->out + ((mean ? 0 : member[c] * B) + cell[c]) * (H + 1) * NX;
        for (int i = 0; i < NX; ++i) o[i] = a[i * C + c];
    }
    for (long long k = 0; k < H; ++k) {
        for (int j = 0; j < NU; ++j)
            for (int c = 0; c < C; ++c) a[(NX + j) * C + c] = J->u[(cell[c] * H + k) * NU + j];
        if (mean) {
            for (int i = 0; i < (NX + 1) * nv; ++i) d[i] = bcast(0.0);
            for (int i = 0; i < (NX + 1) * nv; ++i) dsc[i] = 0.0;
        }
        for (int g = g_lo; g < g_hi; ++g) eval_group(J, g, act, d, dsc, nv, quad);
        if (mean && quad)
            for (int i = 0; i < NX * nv; ++i) d[i] = bcast(dsc[i]);
#if HAS_PRIOR
        for (int v = 0; v < nv; ++v) prior_vec(act + v, d + v, nv);
#endif
        euler_step(act, d, act, dt, nv);
        for (int c = 0; c < C; ++c)
            if (mirror[c] != c)
                for (int i = 0; i < NX; ++i) a[i * C + c] = a[i * C + mirror[c]];
        for (int v = 0; v < nv; ++v) {
            vd col[NX]; /* col[j]: states 0-3 of lane 4 v + j; col[4 + j]: states 4-7 */
            transpose4(act + v, nv, col);
            transpose4(act + 4 * nv + v, nv, col + 4);
            for (int j = 0; j < VL; ++j) {
                const int c = VL * v + j;
                if (mirror[c] != c) continue;
                double *o = J->out + (((mean ? 0 : member[c] * B) + cell[c]) * (H + 1) + k + 1) * NX;
                store_row(o, col[j], col[4 + j]);
            }
        }
    }
}

/* Rows 0..7 of act (one state per row, nv vectors of cells) into rows of 8 doubles per lane, at
   base + cell[c] * stride for every real lane c. */
AI void store_states(const vd *rows, const int nv, const int *mirror, const long long *cell, double *base,
                     const long long stride) {
    for (int v = 0; v < nv; ++v) {
        vd col[NX]; /* col[j]: states 0-3 of lane 4 v + j; col[4 + j]: states 4-7 */
        transpose4(rows + v, nv, col);
        transpose4(rows + 4 * nv + v, nv, col + 4);
        for (int j = 0; j < VL; ++j) {
            const int c = VL * v + j;
            if (mirror[c] == c) store_row(base + cell[c] * stride, col[j], col[4 + j]);
        }
    }
}

/* One summary work item: a block of 4 nv cells, every member, all steps. Each member keeps its states in
   xs; per step it computes what it computes alone (run_item), then the ensemble's mean, its spread (the
   population std, two passes, members in order: what numpy's mean(0) and std(0) give) and the algebraic
   outputs of the mean (outputs_vec, with the step's inputs; the last state with the last inputs). */
AI void run_summary(Job *J, long long item, vd *act, vd *d, vd *xs, const int nv) {
    const int C = VL * nv, M = J->n_members;
    const long long B = J->B, H = J->H;
    const long long zero_row = J->n_rows - 2;
    const double dt = J->dt;
    const long long b0 = item * C;
    const int nb = (int)(B - b0 < C ? B - b0 : C);
    int mirror[VL * MAXV];
    long long cell[VL * MAXV];
    double *a = (double *)act;
    const vd m_count = bcast((double)M);
    for (int c = 0; c < C; ++c) {
        mirror[c] = c < nb ? c : nb - 1;
        cell[c] = b0 + mirror[c];
    }
    for (int v = 0; v < nv; ++v) act[zero_row * nv + v] = bcast(0.0);
    for (int i = 0; i < NX; ++i)
        for (int c = 0; c < C; ++c) a[i * C + c] = J->x0[cell[c] * NX + i];
    for (int g = 0; g < M; ++g) memcpy(xs + (long long)g * NX * nv, act, sizeof(vd) * NX * nv);
    for (long long k = 0;; ++k) {
        if (k < H)
            for (int j = 0; j < NU; ++j)
                for (int c = 0; c < C; ++c) a[(NX + j) * C + c] = J->u[(cell[c] * H + k) * NU + j];
        /* mean into act rows 0..7 (then the outputs read them with the inputs), spread into d */
        for (int i = 0; i < NX * nv; ++i) {
            vd mu = xs[i];
            for (int g = 1; g < M; ++g) mu += xs[(long long)g * NX * nv + i];
            mu = mu / m_count;
            vd var = bcast(0.0), t;
            for (int g = 0; g < M; ++g) {
                t = xs[(long long)g * NX * nv + i] - mu;
                var += t * t;
            }
            var = var / m_count;
#ifdef __AVX__
            d[i] = (vd)_mm256_sqrt_pd((__m256d)var);
#else
            d[i] = (vd){sqrt(var[0]), sqrt(var[1]), sqrt(var[2]), sqrt(var[3])};
#endif
            act[i] = mu;
        }
        store_states(act, nv, mirror, cell, J->out + k * NX, (H + 1) * NX);
        store_states(d, nv, mirror, cell, J->spread + k * NX, (H + 1) * NX);
        {
            vd y[NY * MAXV];
            for (int i = 0; i < NY * nv; ++i) y[i] = bcast(0.0);
            for (int v = 0; v < nv; ++v) outputs_vec(act + v, y + v, nv);
            double *ys = (double *)y;
            for (int c = 0; c < C; ++c) {
                if (mirror[c] != c) continue;
                double *o = J->outputs + (cell[c] * (H + 1) + k) * NY;
                for (int i = 0; i < NY; ++i) o[i] = ys[i * C + c];
            }
        }
        if (J->members)
            for (int g = 0; g < M; ++g)
                store_states(xs + (long long)g * NX * nv, nv, mirror, cell,
                             J->members + ((long long)g * B * (H + 1) + k) * NX, (H + 1) * NX);
        if (k == H) break;
        for (int g = 0; g < M; ++g) {
            vd *xg = xs + (long long)g * NX * nv;
            memcpy(act, xg, sizeof(vd) * NX * nv);
#if SPECIALISED
            if (nv == SPEC_NV)
                spec_member(g, act, d);
            else
#endif
                eval_group(J, g, act, d, NULL, nv, 0);
#if HAS_PRIOR
            for (int v = 0; v < nv; ++v) prior_vec(act + v, d + v, nv);
#endif
            euler_step(act, d, xg, dt, nv);
            double *xd = (double *)xg;
            for (int c = 0; c < C; ++c)
                if (mirror[c] != c)
                    for (int i = 0; i < NX; ++i) xd[i * C + c] = xd[i * C + mirror[c]];
        }
    }
}

#define SUMMARY(NV) \
    static void summary_##NV(Job *J, long long i, vd *act, vd *d, vd *xs) { run_summary(J, i, act, d, xs, NV); }
SUMMARY(1)
SUMMARY(2)
SUMMARY(4)

#define ITEM(NV, Q) \
    static void item_##NV##_##Q(Job *J, long long i, vd *act, vd *d, double *s) { run_item(J, i, act, d, s, NV, Q); }
ITEM(1, 0)
ITEM(2, 0)
ITEM(4, 0)
ITEM(1, 1)
ITEM(2, 1)
ITEM(4, 1)

/* Finish one item: the last one wakes the caller. The fence orders the item's streamed stores first. */
static void finish(Job *J) {
#ifdef __AVX__
    _mm_sfence();
#endif
    if (__atomic_add_fetch(&J->done, 1, __ATOMIC_ACQ_REL) == J->n_items) {
        pthread_mutex_lock(&J->mu);
        pthread_cond_broadcast(&J->cv);
        pthread_mutex_unlock(&J->mu);
    }
}

/* Take items until none is left. Scratch memory is this thread's own, allocated at its first item. */
static void work(Job *J) {
    const int nv = J->nv, quad = J->quad;
    vd *scratch = NULL, *act = NULL, *d = NULL, *xs = NULL;
    double *dsc = NULL;
    for (;;) {
        long long i = __atomic_fetch_add(&J->next, 1, __ATOMIC_RELAXED);
        if (i >= J->n_items) break;
        if (!scratch) {
            size_t bytes = (size_t)(J->n_rows + NX + 1 + (J->summary ? (long long)J->n_members * NX : 0)) * nv *
                               sizeof(vd) + (size_t)(NX + 1) * nv * sizeof(double);
            scratch = (vd *)aligned_alloc(64, (bytes + 63) / 64 * 64);
            if (!scratch) {
                __atomic_store_n(&J->failed, 1, __ATOMIC_RELAXED);
                finish(J);
                continue;
            }
            act = scratch;
            d = scratch + J->n_rows * nv;
            xs = d + (NX + 1) * nv;
            dsc = (double *)(xs + (J->summary ? (long long)J->n_members * NX * nv : 0));
        }
        if (J->summary) {
            switch (nv) {
                case 1: summary_1(J, i, act, d, xs); break;
                case 2: summary_2(J, i, act, d, xs); break;
                default: summary_4(J, i, act, d, xs); break;
            }
        } else if (quad) {
            switch (nv) {
                case 1: item_1_1(J, i, act, d, dsc); break;
                case 2: item_2_1(J, i, act, d, dsc); break;
                default: item_4_1(J, i, act, d, dsc); break;
            }
        } else {
            switch (nv) {
                case 1: item_1_0(J, i, act, d, dsc); break;
                case 2: item_2_0(J, i, act, d, dsc); break;
                default: item_4_0(J, i, act, d, dsc); break;
            }
        }
        finish(J);
    }
    free(scratch);
}

static void release(Job *J) {
    if (__atomic_sub_fetch(&J->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        pthread_mutex_destroy(&J->mu);
        pthread_cond_destroy(&J->cv);
        free(J);
    }
}

static void *helper(void *arg) {
    work((Job *)arg);
    release((Job *)arg);
    return NULL;
}

int alutwin_rollout_abi(void) { return 1000 * HAS_PRIOR + 9; }

/* Roll out B cells over H steps. quad = 0: groups are single members, a work item holds 4 * nv cells;
   quad = 1: groups are quads of members, an item holds nv cells. The caller works too; helper threads are
   detached, and the call returns as soon as every item is done, so a helper the scheduler starts late (on
   a busy machine) finds nothing left, touches only the job (on the heap, freed by the last one out) and
   never delays the caller. summary = 1 (with quad = 0, mean = 0): out gets the ensemble mean (B, H + 1, NX),
   spread its std, outputs the algebraic outputs of the mean (B, H + 1, NY), members (if not NULL) every
   member's states (M, B, H + 1, NX); a work item is then a block of cells with all members.
   Returns 0, or -1 for bad sizes, -2 when out of memory. */
int alutwin_rollout(int n_groups, int n_layers, int n_members, int quad, int mean, long long n_rows,
                    const int32_t *grp_tiles, const int32_t *tile_dst, const double *tile_bias,
                    const int32_t *tile_rounds, const uint8_t *tile_shared, const int32_t *nz_src,
                    const double *nz_w, long long B,
                    long long H, double dt, const double *x0, const double *u, double *out, int nv,
                    int tile, int n_threads, int summary, double *spread, double *outputs, double *members) {
    if (nv != 1 && nv != 2 && nv != 4) return -1;
    if (summary && (quad || mean || !spread || !outputs)) return -1;
    if (tile != TILE(nv) || (quad && nv > 2)) return -1;
    if (B < 1 || H < 0 || n_groups < 1 || n_layers < 1 || n_members < 1) return -1;
    if (quad ? n_groups != (n_members + VL - 1) / VL : n_groups != n_members) return -1;
    Job *J = (Job *)calloc(1, sizeof(Job));
    if (!J) return -2;
    J->n_groups = n_groups;
    J->n_layers = n_layers;
    J->n_members = n_members;
    J->quad = quad;
    J->mean = mean;
    J->nv = nv;
    J->grp_tiles = grp_tiles;
    J->tile_dst = tile_dst;
    J->tile_bias = tile_bias;
    J->tile_rounds = tile_rounds;
    J->tile_shared = tile_shared;
    J->nz_src = nz_src;
    J->nz_w = nz_w;
    J->B = B;
    J->H = H;
    J->dt = dt;
    J->x0 = x0;
    J->u = u;
    J->out = out;
    J->summary = summary;
    J->spread = spread;
    J->outputs = outputs;
    J->members = members;
    J->n_rows = n_rows;
    long long cells = quad ? nv : VL * nv;
    J->n_blocks = (B + cells - 1) / cells;
    J->n_items = mean || summary ? J->n_blocks : J->n_blocks * n_groups;
    J->refs = 1;
    pthread_mutex_init(&J->mu, NULL);
    pthread_cond_init(&J->cv, NULL);
    if (n_threads > J->n_items) n_threads = (int)J->n_items;
    pthread_attr_t attr;
    int have_attr = n_threads > 1 && pthread_attr_init(&attr) == 0;
    if (have_attr) pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (int t = 1; t < n_threads && have_attr; ++t) {
        pthread_t th;
        __atomic_add_fetch(&J->refs, 1, __ATOMIC_ACQ_REL);
        if (pthread_create(&th, &attr, helper, J) != 0) { /* the others do its share */
            __atomic_sub_fetch(&J->refs, 1, __ATOMIC_ACQ_REL);
            break;
        }
    }
    if (have_attr) pthread_attr_destroy(&attr);
    work(J);
    pthread_mutex_lock(&J->mu);
    while (__atomic_load_n(&J->done, __ATOMIC_ACQUIRE) < J->n_items) pthread_cond_wait(&J->cv, &J->mu);
    pthread_mutex_unlock(&J->mu);
    int failed = __atomic_load_n(&J->failed, __ATOMIC_ACQUIRE);
    release(J);
    return failed ? -2 : 0;
}
"""


_VEC_BINARY = {"OP_ADD": "+", "OP_SUB": "-", "OP_MUL": "*", "OP_DIV": "/"}
_VEC_COMPARE = {"OP_LT": "<", "OP_LE": "<=", "OP_EQ": "==", "OP_NE": "!="}
_LANE_UNARY = {
    "OP_EXP": "exp", "OP_LOG": "log", "OP_SQRT": "sqrt", "OP_FABS": "fabs", "OP_SIN": "sin", "OP_COS": "cos",
    "OP_TAN": "tan", "OP_TANH": "tanh", "OP_ATAN": "atan", "OP_FLOOR": "floor", "OP_CEIL": "ceil",
}  # fmt: skip
_LANE_BINARY = {"OP_POW": "pow", "OP_CONSTPOW": "pow", "OP_FMIN": "fmin", "OP_FMAX": "fmax", "OP_ATAN2": "atan2"}


def _c_double(v: float) -> str:
    """``v`` as an exact C literal."""
    if np.isnan(v):
        return "NAN"
    if np.isinf(v):
        return "INFINITY" if v > 0 else "-INFINITY"
    return v.hex()


def vector_source(f: ca.Function, name: str = "prior_vec") -> str:
    """C of an SX function ``f(x (8), u (5)) -> (n,)`` on SIMD vectors of 4 cells: ``name(a, d, nv)`` adds ``f``
    at rows ``a[0..12 * nv]`` (states, then inputs, ``nv`` vectors apart) into ``d[0..(n - 1) * nv]``.

    Translated instruction by instruction from the ``SX`` graph (the one CasADi's own code generator writes
    as scalar C): arithmetic on whole vectors, ``exp``, ``pow`` and the other library functions lane by lane,
    so each lane computes what scalar code computes. Raises :class:`plant.engine.CompiledEngineError` for an
    operation it does not know.
    """
    if not isinstance(f, ca.Function) or not f.is_a("SXFunction"):
        raise ValueError("vector_source needs an SX casadi.Function")
    ok = (f.n_in(), f.n_out()) == (2, 1) and [f.size_in(0), f.size_in(1)] == [(N_STATES, 1), (N_INPUTS, 1)]
    if not ok or f.size_out(0)[1] != 1:
        raise ValueError(f"vector_source needs f(x ({N_STATES}, 1), u ({N_INPUTS}, 1)) -> (n, 1)")
    names = {getattr(ca, n): n for n in dir(ca) if n.startswith("OP_") and isinstance(getattr(ca, n), int)}
    lines = []
    for k in range(f.n_instructions()):
        op = names.get(f.instruction_id(k), str(f.instruction_id(k)))
        i, o = f.instruction_input(k), f.instruction_output(k)
        w = [f"w[{j}]" for j in i]
        if op == "OP_CONST":
            rhs_ = f"bcast({_c_double(float(f.instruction_constant(k)))})"
        elif op == "OP_INPUT":
            rhs_ = f"a[{(0 if i[0] == 0 else N_STATES) + i[1]} * nv]"
        elif op == "OP_OUTPUT":
            lines.append(f"    d[{o[1]} * nv] += w[{i[0]}];")
            continue
        elif op in _VEC_BINARY:
            rhs_ = f"{w[0]} {_VEC_BINARY[op]} {w[1]}"
        elif op in _VEC_COMPARE:
            rhs_ = f"truth({w[0]} {_VEC_COMPARE[op]} {w[1]})"
        elif op == "OP_ASSIGN":
            rhs_ = w[0]
        elif op == "OP_NEG":
            rhs_ = f"-{w[0]}"
        elif op == "OP_TWICE":
            rhs_ = f"{w[0]} + {w[0]}"
        elif op == "OP_SQ":
            rhs_ = f"{w[0]} * {w[0]}"
        elif op == "OP_INV":
            rhs_ = f"bcast(1.0) / {w[0]}"
        elif op == "OP_NOT":
            rhs_ = f"truth({w[0]} == bcast(0.0))"
        elif op == "OP_AND":
            rhs_ = f"truth(({w[0]} != bcast(0.0)) & ({w[1]} != bcast(0.0)))"
        elif op == "OP_OR":
            rhs_ = f"truth(({w[0]} != bcast(0.0)) | ({w[1]} != bcast(0.0)))"
        elif op == "OP_IF_ELSE_ZERO":
            rhs_ = f"(vd)((vl){w[1]} & (vl)({w[0]} != bcast(0.0)))"
        elif op in _LANE_UNARY:
            rhs_ = f"MAP1({_LANE_UNARY[op]}, {w[0]})"
        elif op in _LANE_BINARY:
            rhs_ = f"MAP2({_LANE_BINARY[op]}, {w[0]}, {w[1]})"
        else:
            raise CompiledEngineError(f"the CasADi operation {op} (in {f.name()}) is not supported by the kernel")
        lines.append(f"    w[{o[0]}] = {rhs_};")
    body = "\n".join(lines)
    return f"AI void {name}(const vd *a, vd *d, const int nv) {{\n    vd w[{max(f.sz_w(), 1)}];\n{body}\n}}\n"


_VECTOR_HELPERS = (
    "#define MAP1(f, x) ((vd){f((x)[0]), f((x)[1]), f((x)[2]), f((x)[3])})\n"
    "#define MAP2(f, x, y) ((vd){f((x)[0], (y)[0]), f((x)[1], (y)[1]), f((x)[2], (y)[2]), f((x)[3], (y)[3])})\n"
    "AI vd truth(vl c) { return (vd)(c & (vl)bcast(1.0)); } /* a comparison as CasADi's 1.0 or 0.0 */\n"
)


def _outputs_function() -> ca.Function:
    """The algebraic outputs of :data:`plant.potline.OUTPUTS` at ``(x, u)``, as an SX function."""
    x = ca.SX.sym("x", N_STATES)
    u = ca.SX.sym("u", N_INPUTS)
    alg = algebraic(x, u)
    return ca.Function("outputs", [x, u], [ca.vertcat(*(OUTPUT_FUNCTIONS[n](alg) for n in OUTPUT_ORDER))])


def generate_source(prior: str, specialised: str = "") -> str:
    """C source of the rollout kernel for models with physics prior ``prior`` (a name of ``PRIORS``): the
    prior's :func:`plant.physics.rhs` and the algebraic outputs on SIMD vectors (:func:`vector_source`), and
    the kernel; with ``specialised`` (:func:`specialised_source`), summaries in blocks of 16 cells run one
    model's generated code instead of interpreting its weight tables."""
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; must be one of {sorted(PRIORS)}")
    params = PRIORS[prior]
    parts = [
        _PRELUDE,
        _VECTOR_HELPERS,
        f"#define NY {len(OUTPUT_ORDER)}\n",
        vector_source(_outputs_function(), "outputs_vec"),
    ]
    if params is None:
        parts.append("#define HAS_PRIOR 0\n")
    else:
        x = ca.SX.sym("x", N_STATES)
        u = ca.SX.sym("u", N_INPUTS)
        f = ca.Function(f"prior_{prior}", [x, u], [rhs(x, u, params)])
        parts += ["#define HAS_PRIOR 1\n", vector_source(f)]
    parts.append(specialised or "#define SPECIALISED 0\n")
    return "".join(parts) + _KERNEL


_SPEC_NV = 4  # vectors per activation row of the generated code (blocks of 16 cells: large batches)


def specialised_source(units: Sequence[list[list[_Unit]]], n_in: int) -> str:
    """C of ``spec_member(g, act, d)``: member ``g``'s layers, ``units`` (per member, as
    :meth:`_Programs.build` prepares them), as straight-line code on blocks of ``4 * _SPEC_NV`` cells.

    Interpreting the weight tables costs index loads, short loops and branches around every few multiply-adds
    (a sparse unit has a handful of inputs); generated code has the weights as constants and nothing else.
    Each unit's sum runs from its bias over its weights in the order stored, as the interpreted kernel's does,
    so the results are the same bit for bit (checked when the library is loaded). Hidden activations live in a
    local array, so the compiler knows they alias nothing else.
    """
    nv = _SPEC_NV
    lanes = range(nv)
    lines = [
        "#define SPECIALISED 1",
        f"#define SPEC_NV {nv}",
        "#define MAC(w, p) { const vd w_ = bcast(w); const vd *p_ = (p); "
        + " ".join(f"s{v} += w_ * p_[{v}];" for v in lanes)
        + " }",
    ]
    n_hidden = max((u[0] for layers in units for layer in layers[:-1] for u in layer), default=n_in - 1) - n_in + 1

    def row(r: int) -> str:
        return f"a + {r * nv}" if r < n_in else f"h + {(r - n_in) * nv}"

    for g, layers in enumerate(units):
        lines.append(f"static void spec_m{g}(const vd *restrict a, vd *restrict d) {{")
        lines.append(f"    vd h[{max(n_hidden, 1) * nv}];")
        for li, layer in enumerate(layers):
            last = li == len(layers) - 1
            for dst, bias, src, w in layer:
                body = " ".join(f"MAC({_c_double(float(wk))}, {row(int(sk))})" for sk, wk in zip(src, w, strict=True))
                init = " ".join(f"vd s{v} = b_;" for v in lanes)
                if last:
                    store = " ".join(f"d[{dst * nv + v}] = s{v};" for v in lanes)
                else:
                    store = " ".join(f"h[{(dst - n_in) * nv + v}] = relu(s{v});" for v in lanes)
                lines.append(f"    {{ const vd b_ = bcast({_c_double(float(bias))}); {init} {body} {store} }}")
        lines.append("}")
    lines.append("static void spec_member(int g, const vd *act, vd *d) {")
    lines.append("    switch (g) {")
    lines += [f"        case {g}: spec_m{g}(act, d); break;" for g in range(len(units))]
    lines += ["        default: break;", "    }", "}", ""]
    return "\n".join(lines)


# --- the model as the kernel reads it -----------------------------------------------------------------------

_VL = 4  # doubles per SIMD vector, and members per member quad (VL in the kernel)
_TILES = {1: 4, 2: 4, 4: 2}  # vectors per activation row -> entries per tile (TILE(nv) in the kernel); 8
# vectors (32 cells, one entry per tile) measured no faster than 4

_Unit = tuple[int, Any, np.ndarray, np.ndarray]  # dst row, bias, src rows (n,) ascending, weights (n,) [member quads:
# bias (4,) and weights (n, 4), one lane per member]


@dataclass(frozen=True)
class _Program:
    """Groups (single members, or member quads) of layers of tiles of entries (output units); each tile is
    a number of rounds, a round one weight per entry, padded with zero weights on a zero row."""

    quad: bool
    tile: int
    n_groups: int
    n_layers: int
    n_members: int
    n_rows: int  # activation rows: the 13 inputs, every hidden unit, a zero row and a trash row
    grp_tiles: np.ndarray  # (G * L + 1,) int32: first tile of each group's layer
    tile_dst: np.ndarray  # (n_tiles, tile) int32
    tile_bias: np.ndarray  # (n_tiles, tile) float64; quads: (n_tiles, tile, 4)
    tile_rounds: np.ndarray  # (n_tiles + 1,) int32: first round of each tile
    tile_shared: np.ndarray  # (n_tiles,) uint8: 1 where all entries read the same rows (one load serves all)
    nz_src: np.ndarray  # (rounds, tile) int32
    nz_w: np.ndarray  # (rounds, tile) float64; quads: (rounds, tile, 4)


def _row_units(arch: Architecture, layer: int) -> np.ndarray:
    """Activation rows feeding weight matrix ``layer``: inputs are rows 0..12, then hidden units in order."""
    starts = np.cumsum([arch.n_in, *arch.hidden])  # first row of hidden layer l is starts[l]
    if layer == 0:
        return np.arange(arch.n_in)
    if layer < len(arch.hidden):
        return np.arange(starts[layer - 1], starts[layer])
    if arch.skip:
        return np.arange(starts[-1])
    return np.arange(starts[-2], starts[-1])


def _member_units(arch: Architecture, ws: list[np.ndarray], bs: list[np.ndarray]) -> list[list[_Unit]]:
    """One member's layers as units ``(dst, bias, src rows, weights)``, constants folded and dead units dropped.

    A hidden unit without non-zero input weights is the constant ``relu(bias)``, added into the biases of the
    units it feeds; a hidden unit that no live unit reads is dropped. The output layer keeps all its units.
    """
    starts = np.cumsum([arch.n_in, *arch.hidden])
    n_rows = int(starts[-1])
    is_const = np.zeros(n_rows, dtype=bool)  # rows whose unit has no non-zero input weight
    value = np.zeros(n_rows)  # and its constant value
    layers: list[list[_Unit]] = []
    for layer, (w, b) in enumerate(zip(ws, bs, strict=True)):
        rows = _row_units(arch, layer)
        last = layer == len(ws) - 1
        folded = is_const[rows]
        bias = b + value[rows[folded]] @ w[folded] if folded.any() else b.copy()  # (n_out,)
        w = np.where(folded[:, None], 0.0, w)
        units = []
        for o in range(w.shape[1]):
            nz = np.flatnonzero(w[:, o])
            dst = o if last else int(starts[layer]) + o
            if not last and nz.size == 0:
                is_const[dst], value[dst] = True, max(float(bias[o]), 0.0)
                continue
            units.append((dst, float(bias[o]), rows[nz], w[nz, o]))
        layers.append(units)
    live = np.zeros(n_rows + 1, dtype=bool)
    for unit in layers[-1]:
        live[unit[2]] = True
    for layer in range(len(layers) - 2, -1, -1):
        layers[layer] = [unit for unit in layers[layer] if live[unit[0]]]
        for unit in layers[layer]:
            live[unit[2]] = True
    return layers


def _quad_units(members: list[list[list[_Unit]]]) -> list[list[_Unit]]:
    """Four members' layers as one, with a bias and a weight per lane (member): the union of their units and
    of each unit's sources, with a zero weight where a member lacks one (adding ``0 * a`` to a finite sum
    leaves it unchanged, bit for bit, so a member's lane computes what it computes alone)."""
    layers: list[list[_Unit]] = []
    for per_member in zip(*members, strict=True):
        by_dst: dict[int, dict[int, _Unit]] = {}
        for j, units in enumerate(per_member):
            for unit in units:
                by_dst.setdefault(unit[0], {})[j] = unit
        merged = []
        for dst in sorted(by_dst):
            parts = by_dst[dst]
            src = np.unique(np.concatenate([unit[2] for unit in parts.values()]))
            bias = np.zeros(_VL)
            w = np.zeros((src.size, _VL))
            for j, (_, b, s, v) in parts.items():
                bias[j] = b
                w[np.searchsorted(src, s), j] = v
            merged.append((dst, bias, src, w))
        layers.append(merged)
    return layers


def _flatten(groups: list[list[list[_Unit]]], quad: bool, tile: int, n_members: int, n_units: int) -> _Program:
    """Tile each layer's units, longest first (which pads least), ``tile`` to a tile."""
    zero_row, trash_row = n_units, n_units + 1
    lanes = (_VL,) if quad else ()
    tiles: list[tuple[int, list[_Unit]]] = []  # (padding destination, units)
    grp_tiles = [0]
    for layers in groups:
        for li, units in enumerate(layers):
            trash = N_STATES if li == len(layers) - 1 else trash_row  # where padding entries write
            order = sorted(units, key=lambda e: (-e[2].size, e[0]))
            tiles += [(trash, order[t0 : t0 + tile]) for t0 in range(0, len(order), tile)]
            grp_tiles.append(len(tiles))
    n_rounds = [max(unit[2].size for unit in part) for _, part in tiles]
    tile_rounds = np.concatenate([[0], np.cumsum(n_rounds, dtype=np.int64)]).astype(np.int32)
    tile_dst = np.empty((len(tiles), tile), dtype=np.int32)
    tile_shared = np.zeros(len(tiles), dtype=np.uint8)
    tile_bias = np.zeros((len(tiles), tile, *lanes))
    nz_src = np.full((int(tile_rounds[-1]), tile), zero_row, dtype=np.int32)
    nz_w = np.zeros((int(tile_rounds[-1]), tile, *lanes))
    for t, (trash, part) in enumerate(tiles):
        tile_dst[t] = trash
        r0 = tile_rounds[t]
        first = part[0][2]
        tile_shared[t] = len(part) == tile and all(np.array_equal(unit[2], first) for unit in part[1:])
        for p, (dst, bias, src, w) in enumerate(part):
            tile_dst[t, p] = dst
            tile_bias[t, p] = bias
            nz_src[r0 : r0 + src.size, p] = src
            nz_w[r0 : r0 + src.size, p] = w
    return _Program(
        quad=quad,
        tile=tile,
        n_groups=len(groups),
        n_layers=len(groups[0]),
        n_members=n_members,
        n_rows=n_units + 2,
        grp_tiles=np.asarray(grp_tiles, dtype=np.int32),
        tile_dst=tile_dst,
        tile_bias=tile_bias,
        tile_rounds=tile_rounds,
        tile_shared=tile_shared,
        nz_src=nz_src,
        nz_w=nz_w,
    )


@dataclass(frozen=True)
class _Programs:
    """A model prepared for the kernel: single-member programs per tile size and member quads."""

    single: dict[int, _Program]  # tile -> program
    quads: _Program
    nonzeros: float  # multiply-adds per member, cell and step
    units: tuple[list[list[_Unit]], ...]  # per member, its layers of units (what the programs tile)
    n_in: int  # input rows (states and inputs)

    @classmethod
    def build(cls, surrogate: Surrogate, mean: bool) -> _Programs:
        """Fold the normalisation (and ``1 / M`` for the ensemble mean) into the weights, compact and tile."""
        weights, norm = surrogate.weights, surrogate.normalization
        arch = weights.architecture
        n = weights.n_members
        scale = 1.0 / n if mean else 1.0
        members = []
        for m in range(n):
            ws, bs = member_layers(weights, m, norm.feature_mean, norm.feature_std, norm.target_std * scale)
            bs[-1] = bs[-1] + norm.target_mean * scale
            members.append(_member_units(arch, ws, bs))
        n_units = arch.n_in + sum(arch.hidden)
        quads = [_quad_units([members[min(g + j, n - 1)] for j in range(_VL)]) for g in range(0, n, _VL)]
        return cls(
            single={t: _flatten(members, False, t, n, n_units) for t in sorted(set(_TILES.values()))},
            quads=_flatten(quads, True, _TILES[1], n, n_units),
            nonzeros=sum(unit[2].size for layers in members for units in layers for unit in units) / n,
            units=tuple(members),
            n_in=arch.n_in,
        )


# --- the compiled library -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Library:
    path: Path
    fn: Any  # the ctypes function alutwin_rollout
    handle: ctypes.CDLL

    def run(
        self,
        prog: _Program,
        mean: bool,
        x0: np.ndarray,
        u: np.ndarray,
        out: np.ndarray,
        dt: float,
        nv: int,
        threads: int,
        summary: tuple[np.ndarray, np.ndarray, np.ndarray | None] | None = None,
    ) -> None:
        """Roll out ``x0`` ``(B, 8)`` under ``u`` ``(B, H, 5)`` into ``out`` (C-contiguous arrays); with
        ``summary = (spread, outputs, members or None)``, ``out`` gets the ensemble mean and those the rest."""
        b, h, _ = u.shape
        spread, outputs, members = summary if summary is not None else (None, None, None)
        code = self.fn(
            prog.n_groups,
            prog.n_layers,
            prog.n_members,
            int(prog.quad),
            int(mean),
            prog.n_rows,
            prog.grp_tiles.ctypes.data,
            prog.tile_dst.ctypes.data,
            prog.tile_bias.ctypes.data,
            prog.tile_rounds.ctypes.data,
            prog.tile_shared.ctypes.data,
            prog.nz_src.ctypes.data,
            prog.nz_w.ctypes.data,
            b,
            h,
            dt,
            x0.ctypes.data,
            u.ctypes.data,
            out.ctypes.data,
            nv,
            prog.tile,
            threads,
            int(summary is not None),
            None if spread is None else spread.ctypes.data,
            None if outputs is None else outputs.ctypes.data,
            None if members is None else members.ctypes.data,
        )
        if code != 0:
            raise CompiledEngineError(f"the rollout kernel {self.path} failed (code {code})")


def _load(prior: str, specialised: str = "") -> _Library:
    name = f"alutwin_rollout_{prior}" + ("_model" if specialised else "")
    try:
        path, _ = build_shared_library(
            generate_source(prior, specialised),
            name,
            (*(_SPEC_FLAGS if specialised else _FLAGS), f"-DALUTWIN_HOST={host_id()}"),
            libs=("-lm",),
        )
    except BuildError as err:
        raise CompiledEngineError(str(err)) from err
    try:
        handle = ctypes.CDLL(str(path))
        fn = handle.alutwin_rollout
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
    fn.argtypes += [i32, p, p, p]
    return _Library(path, fn, handle)


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


def _self_check(lib: _Library, prior: str) -> None:
    """Every layout against ``Surrogate.simulate`` on a small model: catches a broken compiler or library."""
    model = _check_model(prior)
    low = np.array([s.low for s in STATES])
    high = np.array([s.high for s in STATES])
    x0 = np.stack([low + f * (high - low) for f in (0.3, 0.5, 0.7)])  # (3, 8)
    u = np.broadcast_to(np.array([5.0, 140_000.0, 2.0, 1.0, 0.05]), (3, 4, N_INPUTS)).copy()  # (3, 4, 5)
    ref = model.simulate(x0, u)
    programs = _Programs.build(model, mean=False)
    runs = [(programs.quads, nv) for nv in (1, 2)] + [(programs.single[t], nv) for nv, t in _TILES.items()]
    for prog, nv in runs:
        out = np.empty((model.n_members, 3, 5, N_STATES))
        lib.run(prog, False, x0, u, out, model.dt, nv, 2)
        if not np.allclose(out, ref, rtol=1e-11, atol=0):
            raise CompiledEngineError(f"the rollout kernel {lib.path} disagrees with Surrogate.simulate")


@functools.lru_cache(maxsize=8)
def _library(prior: str, compiler: str | None) -> _Library | CompiledEngineError:
    """The kernel for ``prior``, loaded and self-checked once per process and compiler (or why it cannot be)."""
    del compiler  # part of the cache key only: a changed PATH or CC is looked at again
    try:
        lib = _load(prior)
        _self_check(lib, prior)
    except CompiledEngineError as err:
        return err
    return lib


def _specialised_library(surrogate: Surrogate, programs: _Programs, generic: _Library) -> _Library:
    """The kernel with ``surrogate``'s generated code (:func:`specialised_source`), built or found in the cache,
    checked to give exactly the generic kernel's summary on a small batch of this model."""
    lib = _load(surrogate.prior, specialised_source(programs.units, programs.n_in))
    rng = np.random.default_rng(3)
    low, high = np.array([s.low for s in STATES]), np.array([s.high for s in STATES])
    b, h = 4 * _SPEC_NV + 3, 6  # a full block and a partial one
    x0 = low + rng.uniform(0.3, 0.7, (b, N_STATES)) * (high - low)
    u = np.broadcast_to(np.array([[[0.024, 140_000.0, 0.0, 0.0, 0.05]]]), (b, h, N_INPUTS)).copy()
    u[..., 1] += rng.normal(0.0, 2000.0, (b, h))
    results = []
    for library in (generic, lib):
        mean, spread = np.empty((b, h + 1, N_STATES)), np.empty((b, h + 1, N_STATES))
        outputs = np.empty((b, h + 1, len(OUTPUT_ORDER)))
        prog = programs.single[_TILES[_SPEC_NV]]
        library.run(prog, False, x0, u, mean, surrogate.dt, _SPEC_NV, 1, (spread, outputs, None))
        results.append((mean, spread, outputs))
    same = all(np.array_equal(a, c, equal_nan=True) for a, c in zip(*results, strict=True))
    if not same:
        raise CompiledEngineError(f"the model's generated kernel {lib.path} disagrees with the generic kernel")
    return lib


def _get_library(prior: str) -> _Library:
    lib = _library(prior, find_compiler())
    if isinstance(lib, CompiledEngineError):
        raise CompiledEngineError(str(lib))
    return lib


def compiled_rollout_available(prior: str = "none") -> bool:
    """Whether the compiled kernel for ``prior`` builds and passes its self-check here (cached per compiler)."""
    if prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; must be one of {sorted(PRIORS)}")
    return not isinstance(_library(prior, find_compiler()), CompiledEngineError)


# --- summaries of an ensemble's rollout ---------------------------------------------------------------------


@dataclass(frozen=True)
class Summary:
    """An ensemble's free run, summarised (what the twin's Predict returns)."""

    mean: np.ndarray  # (B, H + 1, 8) ensemble mean of the states
    spread: np.ndarray  # (B, H + 1, 8) population std over the members
    outputs: np.ndarray  # (B, H + 1, len(OUTPUT_ORDER)) algebraic outputs of the mean
    members: np.ndarray | None  # (M, B, H + 1, 8) every member's states, when asked for


def summarise(states: np.ndarray, chunk: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Ensemble mean and population standard deviation over axis 0 of ``states`` ``(M, B, ...)``.

    Bit for bit what ``states.mean(0)`` and ``states.std(0)`` give (members are summed in the same order), a few
    scenarios at a time so that each block stays in cache: about twice as fast on large batches.
    """
    m, b = states.shape[:2]
    mean = np.empty(states.shape[1:])
    spread = np.empty(states.shape[1:])
    for i in range(0, b, chunk):
        block = states[:, i : i + chunk]
        mu = mean[i : i + chunk]
        np.copyto(mu, block[0])
        for k in range(1, m):
            mu += block[k]
        mu /= m
        var = spread[i : i + chunk]
        var.fill(0.0)
        tmp = np.empty_like(mu)
        for k in range(m):
            np.subtract(block[k], mu, out=tmp)
            np.multiply(tmp, tmp, out=tmp)
            var += tmp
        var /= m
        np.sqrt(var, out=var)
    return mean, spread


def algebraic_outputs(mean: np.ndarray, u: np.ndarray, names: tuple[str, ...] = OUTPUT_ORDER) -> np.ndarray:
    """Algebraic outputs ``names`` of states ``mean`` ``(B, H + 1, 8)`` with inputs ``u`` ``(B, H, 5)`` (state k
    with input k, the last state with the last input): ``(B, H + 1, len(names))``, in numpy."""
    u_ext = np.concatenate([u, u[:, -1:]], axis=1)  # (B, H + 1, 5)
    with np.errstate(all="ignore"):  # a diverged mean gives NaN outputs, not an error
        alg = algebraic(mean, u_ext)
        return np.stack([OUTPUT_FUNCTIONS[n](alg) for n in names], axis=-1)


def summary_of(states: np.ndarray, u: np.ndarray, members: bool = False) -> Summary:
    """The :class:`Summary` of member rollouts ``states`` ``(M, B, H + 1, 8)`` under ``u`` ``(B, H, 5)``, in numpy."""
    mean, spread = summarise(states)
    return Summary(mean, spread, algebraic_outputs(mean, u), states if members else None)


# --- the engines --------------------------------------------------------------------------------------------


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_threads(threads: int | None) -> int | None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None, got {threads!r}")
    return None if threads is None else int(threads)


def _empty_aligned(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float64 array starting on a 64-byte boundary (the kernel then streams whole lines)."""
    n = int(np.prod(shape))
    buf = np.empty(n + 8)
    start = (-buf.ctypes.data % 64) // 8
    return buf[start : start + n].reshape(shape)


class RolloutEngine:
    """Free runs of a surrogate ensemble in compiled C: ``Surrogate.simulate``'s results, up to rounding.

    Parameters
    ----------
    surrogate : the model (any architecture and prior of :mod:`identification.surrogate`).
    threads : threads to spread the work over (None: the CPUs this process may use, fewer for small work).
        Results do not depend on it, nor on which other cells are in the batch.
    generated : ``"auto"``: the first large summary of a sparse model (at least ``_SPECIALISE_WORK``
        member-cell-steps in blocks of 16 cells, at most ``_SPECIALISE_MAX_NONZEROS`` weights per member) starts
        building the model's generated kernel on a thread (:meth:`specialise`), and later summaries use it
        once it is ready; ``"never"``: only the generic kernel. Results are the same bit for bit either way.

    Raises
    ------
    plant.engine.CompiledEngineError
        Where the kernel cannot be built (no C compiler) or fails its self-check.

    Calls may come from several threads at once: the prepared weights are read-only and every call has its
    own scratch memory and output.
    """

    def __init__(self, surrogate: Surrogate, threads: int | None = None, generated: str = "auto") -> None:
        if not isinstance(surrogate, Surrogate):
            raise ValueError(f"surrogate must be a Surrogate, got {type(surrogate).__name__}")
        if generated not in GENERATED:
            raise ValueError(f"generated must be one of {list(GENERATED)}, got {generated!r}")
        self.surrogate = surrogate
        self.threads = _check_threads(threads)
        self.generated = generated
        self._lib = _get_library(surrogate.prior)
        self._members = _Programs.build(surrogate, mean=False)
        self._mean: _Programs | None = None  # built on first use
        self._lock = threading.Lock()
        self._summary_lib = self._lib  # the model's generated kernel once built (see specialise)
        self._spec_state = "none"  # "none", "building", "ready" or "failed"
        self._spec_error: str | None = None

    @property
    def n_members(self) -> int:
        return self.surrogate.n_members

    @property
    def nonzeros_per_member(self) -> float:
        """Multiply-adds per member, cell and step after folding constant units and dropping dead ones."""
        return self._members.nonzeros

    @property
    def specialised(self) -> str:
        """The model's generated summary kernel: ``"none"`` (not asked for yet), ``"building"``, ``"ready"``
        (large summaries use it) or ``"failed"`` (they keep the generic kernel; :attr:`specialise_error` says
        why)."""
        return self._spec_state

    @property
    def specialise_error(self) -> str | None:
        """Why the generated kernel could not be built or used (None unless :attr:`specialised` is "failed")."""
        return self._spec_error

    @property
    def sparse_enough_to_specialise(self) -> bool:
        """Whether ``generated="auto"`` builds this model's generated kernel for large summaries (at most
        ``_SPECIALISE_MAX_NONZEROS`` weights per member: more made code too large to run faster)."""
        return self._members.nonzeros <= _SPECIALISE_MAX_NONZEROS

    def specialise(self, background: bool = False) -> bool:
        """Build this model's generated summary kernel (:func:`specialised_source`: its weights compiled in as
        constants; a few seconds, then cached on disk per model) and use it for summaries in blocks of 16
        cells. Results stay the same bit for bit (checked before it is used). ``background``: build on a
        thread and return at once (summaries use the generic kernel until it is ready). Returns whether the
        generated kernel is in use now."""
        with self._lock:
            if self._spec_state != "none":
                return self._spec_state == "ready"
            self._spec_state = "building"
        if background:
            threading.Thread(target=self._build_specialised, name="rollout-specialise", daemon=True).start()
            return False
        self._build_specialised()
        return self._spec_state == "ready"

    def _build_specialised(self) -> None:
        try:
            lib = _specialised_library(self.surrogate, self._members, self._lib)
        except CompiledEngineError as err:
            self._spec_error = str(err)
            self._spec_state = "failed"
            warnings.warn(f"the model's generated rollout kernel is not used: {err}", RuntimeWarning, stacklevel=2)
            return
        self._summary_lib = lib
        self._spec_state = "ready"

    def _plan(self, programs: _Programs, b: int, h: int, mean: bool) -> tuple[_Program, int, int]:
        """``(program, nv, threads)`` for ``b`` cells over ``h`` steps: the layout with the least work per step.

        Single-member items hold ``4 nv`` cells, member-quad items ``nv`` cells; work is counted in vector
        multiply-adds (weight slots, padding included, times vectors), a quad's vector weights costing more.
        """
        options = []
        for nv in _TILES:
            if nv > 1 and _VL * (nv // 2) >= b:
                break
            prog = programs.single[_TILES[nv]]
            blocks = -(-b // (_VL * nv))
            options.append((prog.nz_src.size * blocks * nv + _ITEM_STEP_COST * blocks * self.n_members, prog, nv))
        for nv in (1, 2):
            if nv > 1 and nv // 2 >= b:
                break
            prog = programs.quads
            blocks = -(-b // nv)
            cost = prog.nz_src.size * blocks * nv * _QUAD_COST + _ITEM_STEP_COST * blocks * prog.n_groups
            options.append((cost, prog, nv))
        work, prog, nv = min(options, key=lambda o: o[0])
        n_items = -(-b // (nv if prog.quad else _VL * nv)) * (1 if mean else prog.n_groups)
        if self.threads is not None:
            return prog, nv, max(1, min(self.threads, n_items))
        return prog, nv, max(1, min(_usable_cpus(), n_items, int(work * h // _MIN_WORK_PER_THREAD)))

    def simulate(self, x0: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Free run of every member from ``x0`` ``(B, 8)`` driven by ``u`` ``(B, T, 5)``: ``(M, B, T + 1, 8)``.

        From the first step at which a cell's state is not finite, all its 8 states are NaN.
        """
        x0, u = check_rollout_inputs(x0, u)
        b, h, _ = u.shape
        out = _empty_aligned((self.n_members, b, h + 1, N_STATES))  # (M, B, T + 1, 8)
        if b == 0:
            return out
        prog, nv, threads = self._plan(self._members, b, h, mean=False)
        self._lib.run(prog, False, x0, u, out, self.surrogate.dt, nv, threads)
        return out

    def simulate_summary(self, x0: np.ndarray, u: np.ndarray, members: bool = False) -> Summary:
        """Free run of every member, summarised in C: :func:`summary_of` of :meth:`simulate`, bit for bit.

        The kernel keeps every member of a block of cells in step and writes only the mean, the spread and
        the algebraic outputs (and the members' states when ``members``), so a large batch moves a tenth of
        the memory. For one or two cells (member quads are faster there) it is :meth:`simulate` and numpy.
        The outputs' ``exp`` and ``pow`` are the C library's, as numpy's are on CPUs without AVX-512.
        """
        x0, u = check_rollout_inputs(x0, u)
        b, h, _ = u.shape
        if b < 3:
            return summary_of(self.simulate(x0, u), u, members)
        mean = _empty_aligned((b, h + 1, N_STATES))  # (B, T + 1, 8)
        spread = _empty_aligned((b, h + 1, N_STATES))  # (B, T + 1, 8)
        outputs = np.empty((b, h + 1, len(OUTPUT_ORDER)))  # (B, T + 1, 6)
        states = _empty_aligned((self.n_members, b, h + 1, N_STATES)) if members else None  # (M, B, T + 1, 8)
        prog, nv, threads = self._plan_summary(b, h)
        if (
            nv == _SPEC_NV
            and self._spec_state == "none"
            and self.generated == "auto"
            and b * h * self.n_members >= _SPECIALISE_WORK
            and self.sparse_enough_to_specialise
        ):
            self.specialise(background=True)
        lib = self._summary_lib
        lib.run(prog, False, x0, u, mean, self.surrogate.dt, nv, threads, (spread, outputs, states))
        return Summary(mean, spread, outputs, states)

    def _plan_summary(self, b: int, h: int) -> tuple[_Program, int, int]:
        """``(program, nv, threads)`` of a summary: the block size whose slowest thread has the least work."""
        cpus = self.threads or _usable_cpus()
        options = []
        for nv, tile in _TILES.items():
            if nv > 1 and _VL * (nv // 2) >= b:
                break
            prog = self._members.single[tile]
            blocks = -(-b // (_VL * nv))
            per_block = (prog.nz_src.size * nv + _ITEM_STEP_COST * self.n_members) * h
            threads = max(1, min(cpus, blocks, int(per_block * blocks // _MIN_WORK_PER_THREAD)))
            options.append((-(-blocks // threads) * per_block, nv, prog, threads))
        _, nv, prog, threads = min(options, key=lambda o: o[:2])
        return prog, nv, threads

    def simulate_mean(self, x0: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Free run of the ensemble-mean model (``Surrogate.mean().simulate``): ``(B, T + 1, 8)``."""
        x0, u = check_rollout_inputs(x0, u)
        b, h, _ = u.shape
        out = _empty_aligned((b, h + 1, N_STATES))  # (B, T + 1, 8)
        if b == 0:
            return out
        with self._lock:
            if self._mean is None:
                self._mean = _Programs.build(self.surrogate, mean=True)
        prog, nv, threads = self._plan(self._mean, b, h, mean=True)
        self._lib.run(prog, True, x0, u, out, self.surrogate.dt, nv, threads)
        return out


class NumpyRolloutEngine:
    """The reference: :meth:`Surrogate.simulate` and ``Surrogate.mean().simulate`` behind the engine's API."""

    def __init__(self, surrogate: Surrogate, threads: int | None = None) -> None:
        if not isinstance(surrogate, Surrogate):
            raise ValueError(f"surrogate must be a Surrogate, got {type(surrogate).__name__}")
        self.surrogate = surrogate
        self.threads = _check_threads(threads)  # accepted for a uniform signature; numpy decides itself

    @property
    def n_members(self) -> int:
        return self.surrogate.n_members

    def simulate(self, x0: np.ndarray, u: np.ndarray) -> np.ndarray:
        """``Surrogate.simulate``: ``(M, B, T + 1, 8)``."""
        return self.surrogate.simulate(x0, u)

    def simulate_summary(self, x0: np.ndarray, u: np.ndarray, members: bool = False) -> Summary:
        """:func:`summary_of` of :meth:`simulate`."""
        x0, u = check_rollout_inputs(x0, u)
        return summary_of(self.simulate(x0, u), u, members)

    def simulate_mean(self, x0: np.ndarray, u: np.ndarray) -> np.ndarray:
        """``Surrogate.mean().simulate``: ``(B, T + 1, 8)``."""
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
    lib = _library(surrogate.prior, find_compiler())
    if isinstance(lib, CompiledEngineError):
        if surrogate.prior not in _warned:
            _warned.add(surrogate.prior)
            warnings.warn(
                f"compiled rollout engine unavailable, using numpy: {lib}", CompilerUnavailableWarning, stacklevel=2
            )
        return NumpyRolloutEngine(surrogate, threads)
    return RolloutEngine(surrogate, threads)
