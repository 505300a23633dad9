/* alutwin rollout kernel, part 2 of 2: the work items, the summary and the threads.

   Follows prelude.c and the translated functions outputs_vec (with NY) and, when HAS_PRIOR, prior_vec
   (see identification/rollout/translate.py). */

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

/* The layers of member g in float32, for a float32 program (J->f32: single members, nv = 2, 4 or 8, tiles
   of TILE32(nv) entries, the normalisation not folded into the weights): the inputs (rows 0..12 of act) standardised
   in double (times the reciprocal std) and
   rounded into rows of fa (nv / 2 vectors of 8 floats, cells in the order of act's lanes), the hidden layers
   in fa, and the output layer's sums widened to double and de-standardised into d (added over groups for
   the ensemble mean). Each entry's sum runs over its weights in the order stored. */
AI void eval_group_f32(Job *J, const int g, const vd *act, vf *fa, vd *d, const int nv) {
    const int L = J->n_layers, mean = J->mean, nf = nv / 2;
    const int P = TILE32(nv);
    const double *in_mean = J->scale, *in_inv = J->scale + NX + NU;
    const double *out_scale = J->scale + 2 * (NX + NU), *out_shift = out_scale + NX + 1;
    for (int i = 0; i < NX + NU; ++i) {
        const vd m = bcast(in_mean[i]), s = bcast(in_inv[i]);
        for (int v = 0; v < nf; ++v)
            fa[i * nf + v] = narrow((act[i * nv + 2 * v] - m) * s, (act[i * nv + 2 * v + 1] - m) * s);
    }
    for (int l = 0; l < L; ++l) {
        const int last = l == L - 1;
        const int32_t t1 = J->grp_tiles[g * L + l + 1];
        for (int32_t t = J->grp_tiles[g * L + l]; t < t1; ++t) {
            const int32_t r0 = J->tile_rounds[t], r1 = J->tile_rounds[t + 1];
            vf acc[4][MAXV / 2];
            for (int p = 0; p < P; ++p) {
                const vf b = bcastf(J->tile_bias32[(long long)t * P + p]);
                for (int v = 0; v < nf; ++v) acc[p][v] = b;
            }
            if (J->tile_shared[t]) {
                for (int32_t r = r0; r < r1; ++r) {
                    const vf *s = fa + (long long)J->nz_src[(long long)r * P] * nf;
                    vf sv[MAXV / 2];
                    for (int v = 0; v < nf; ++v) sv[v] = s[v];
                    for (int p = 0; p < P; ++p) {
                        const vf w = bcastf(J->nz_w32[(long long)r * P + p]);
                        for (int v = 0; v < nf; ++v) acc[p][v] += w * sv[v];
                    }
                }
            } else {
                for (int32_t r = r0; r < r1; ++r) {
                    for (int p = 0; p < P; ++p) {
                        const long long q = (long long)r * P + p;
                        const vf w = bcastf(J->nz_w32[q]);
                        const vf *s = fa + (long long)J->nz_src[q] * nf;
                        for (int v = 0; v < nf; ++v) acc[p][v] += w * s[v];
                    }
                }
            }
            for (int p = 0; p < P; ++p) {
                const int32_t dst = J->tile_dst[(long long)t * P + p];
                if (!last) {
                    for (int v = 0; v < nf; ++v) fa[(long long)dst * nf + v] = reluf(acc[p][v]);
                    continue;
                }
                const vd os = bcast(out_scale[dst]), sh = bcast(out_shift[dst]);
                for (int v = 0; v < nf; ++v) {
                    vd lo, hi;
                    widen(acc[p][v], &lo, &hi);
                    lo = lo * os + sh;
                    hi = hi * os + sh;
                    if (mean) {
                        d[dst * nv + 2 * v] += lo;
                        d[dst * nv + 2 * v + 1] += hi;
                    } else {
                        d[dst * nv + 2 * v] = lo;
                        d[dst * nv + 2 * v + 1] = hi;
                    }
                }
            }
        }
    }
}

/* The layers of group g in the program's precision. */
AI void eval_layers(Job *J, const int g, vd *act, vf *fa, vd *d, double *dsc, const int nv, const int quad) {
    if (J->f32) eval_group_f32(J, g, act, fa, d, nv);
    else eval_group(J, g, act, d, dsc, nv, quad);
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
AI void run_item(Job *J, long long item, vd *act, vd *d, double *dsc, vf *fa, const int nv, const int quad) {
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
    double *a = (double *)act;
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
    if (J->f32)
        for (int v = 0; v < nv / 2; ++v) fa[zero_row * (nv / 2) + v] = bcastf(0.0f);
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
        for (int g = g_lo; g < g_hi; ++g) eval_layers(J, g, act, fa, d, dsc, nv, quad);
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

/* The lanes set in a comparison mask, as 4 bits. */
AI int lanes(vl m) {
#ifdef __AVX__
    return _mm256_movemask_pd((__m256d)m);
#else
    return (m[0] != 0) | (m[1] != 0) << 1 | (m[2] != 0) << 2 | (m[3] != 0) << 3;
#endif
}

/* Lanes (4 bits) of the states x (rows 0..7, nv vectors apart) outside the valid domain, as
   plant.domain.check_domain decides: a non-finite state, the side ledge below lim[0], the alumina or AlF3
   percentage (100 a / bath, its arithmetic) outside [lim[1], lim[2]] or [lim[3], lim[4]]; a NaN percentage
   (0 / 0) compares false, a fault only as a non-finite state would be. full = 0 for a member's states after a
   step, where one non-finite state makes all 8 NaN (euler_step): the ledge test then catches it. */
AI int outside_domain(const vd *x, const int nv, const double *lim, const int full) {
    const vd a = x[nv], f = x[2 * nv], bath = a + f + x[3 * nv];
    const vd pa = 100.0 * a / bath, pf = 100.0 * f / bath;
    vl bad = ~(vl)(x[0] >= bcast(lim[0])) | (vl)(pa < bcast(lim[1])) | (vl)(pa > bcast(lim[2])) |
             (vl)(pf < bcast(lim[3])) | (vl)(pf > bcast(lim[4]));
    if (full) {
        vd p = x[0] - x[0]; /* 0 where finite, NaN once a state is inf or NaN */
        for (int i = 1; i < NX; ++i) p += x[i * nv] - x[i * nv];
        bad |= ~(vl)(p == bcast(0.0));
    }
    return lanes(bad);
}

/* Lanes of x (rows 0..7) outside the box [box[i], box[NX + i]] in some state (NaN counts as outside). */
AI int outside_box(const vd *x, const int nv, const double *box) {
    vl bad = (vl)bcast(0.0);
    for (int i = 0; i < NX; ++i)
        bad |= ~((vl)(x[i * nv] >= bcast(box[i])) & (vl)(x[i * nv] <= bcast(box[NX + i])));
    return lanes(bad);
}

/* Step k as the first exit ex[cell] of the real lanes of vector v set in mask, where none is recorded yet. */
AI void record_exit(long long *ex, const int mask, const int v, const int *mirror, const long long *cell,
                    const long long k) {
    for (int j = 0; j < VL; ++j) {
        const int c = VL * v + j;
        if ((mask >> j & 1) && mirror[c] == c && ex[cell[c]] < 0) ex[cell[c]] = k;
    }
}

/* One summary work item: a block of 4 nv cells, every member, all steps. Each member keeps its states in
   xs; per step it computes what it computes alone (run_item), then the ensemble's mean, its spread (the
   population std, two passes, members in order: what numpy's mean(0) and std(0) give) and the algebraic
   outputs of the mean (outputs_vec, with the step's inputs; the last state with the last inputs), and
   the first step at which each member, the mean, and the mean against the box leave (exits). */
AI void run_summary(Job *J, long long item, vd *act, vd *d, vd *xs, vf *fa, const int nv) {
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
    if (J->f32)
        for (int v = 0; v < nv / 2; ++v) fa[zero_row * (nv / 2) + v] = bcastf(0.0f);
    for (int i = 0; i < NX; ++i)
        for (int c = 0; c < C; ++c) a[i * C + c] = J->x0[cell[c] * NX + i];
    for (int g = 0; g < M; ++g) memcpy(xs + (long long)g * NX * nv, act, sizeof(vd) * NX * nv);
    for (int c = 0; c < nb; ++c) {
        J->mean_exit[cell[c]] = -1;
        if (J->box) J->box_exit[cell[c]] = -1;
        for (int g = 0; g < M; ++g) J->member_exit[(long long)g * B + cell[c]] = -1;
    }
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
        for (int v = 0; v < nv; ++v) {
            int mask = outside_domain(act + v, nv, J->limits, 1);
            if (mask) record_exit(J->mean_exit, mask, v, mirror, cell, k);
            if (J->box && (mask = outside_box(act + v, nv, J->box))) record_exit(J->box_exit, mask, v, mirror, cell, k);
            for (int g = 0; g < M; ++g)
                if ((mask = outside_domain(xs + (long long)g * NX * nv + v, nv, J->limits, k == 0)))
                    record_exit(J->member_exit + (long long)g * B, mask, v, mirror, cell, k);
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
            eval_layers(J, g, act, fa, d, NULL, nv, 0);
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

#define SUMMARY(NV)                                                                   \
    static void summary_##NV(Job *J, long long i, vd *act, vd *d, vd *xs, vf *fa) { \
        run_summary(J, i, act, d, xs, fa, NV);                                        \
    }
SUMMARY(1)
SUMMARY(2)
SUMMARY(4)
SUMMARY(8)

#define ITEM(NV, Q)                                                                            \
    static void item_##NV##_##Q(Job *J, long long i, vd *act, vd *d, double *s, vf *fa) { \
        run_item(J, i, act, d, s, fa, NV, Q);                                                  \
    }
ITEM(1, 0)
ITEM(2, 0)
ITEM(4, 0)
ITEM(8, 0)
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
    vf *fa = NULL;
    double *dsc = NULL;
    for (;;) {
        long long i = __atomic_fetch_add(&J->next, 1, __ATOMIC_RELAXED);
        if (i >= J->n_items) break;
        if (!scratch) {
            const long long n_xs = J->summary ? (long long)J->n_members * NX * nv : 0;
            const long long n_fa = J->f32 ? J->n_rows * (nv / 2) : 0; /* in vf, each the size of a vd */
            size_t bytes = (size_t)(J->n_rows * nv + (NX + 1) * nv + n_xs + n_fa) * sizeof(vd) +
                           (size_t)(NX + 1) * nv * sizeof(double);
            scratch = (vd *)aligned_alloc(64, (bytes + 63) / 64 * 64);
            if (!scratch) {
                __atomic_store_n(&J->failed, 1, __ATOMIC_RELAXED);
                finish(J);
                continue;
            }
            act = scratch;
            d = scratch + J->n_rows * nv;
            xs = d + (NX + 1) * nv;
            fa = (vf *)(xs + n_xs);
            dsc = (double *)(xs + n_xs + n_fa);
        }
        if (J->summary) {
            switch (nv) {
                case 1: summary_1(J, i, act, d, xs, fa); break;
                case 2: summary_2(J, i, act, d, xs, fa); break;
                case 4: summary_4(J, i, act, d, xs, fa); break;
                default: summary_8(J, i, act, d, xs, fa); break;
            }
        } else if (quad) {
            switch (nv) {
                case 1: item_1_1(J, i, act, d, dsc, fa); break;
                case 2: item_2_1(J, i, act, d, dsc, fa); break;
                default: item_4_1(J, i, act, d, dsc, fa); break;
            }
        } else {
            switch (nv) {
                case 1: item_1_0(J, i, act, d, dsc, fa); break;
                case 2: item_2_0(J, i, act, d, dsc, fa); break;
                case 4: item_4_0(J, i, act, d, dsc, fa); break;
                default: item_8_0(J, i, act, d, dsc, fa); break;
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

int alutwin_rollout_abi(void) { return 1000 * HAS_PRIOR + 11; }

/* The first step at which the state rows s (8 doubles each, t of them, stride apart) leave the valid domain
   (the decision of outside_domain, one state at a time), or -1. */
static long long first_exit(const double *s, const long long t, const long long stride, const double *lim) {
    for (long long k = 0; k < t; ++k, s += stride) {
        int finite = 1;
        for (int j = 0; j < NX; ++j) finite &= isfinite(s[j]) != 0;
        const double bath = s[1] + s[2] + s[3], pa = 100.0 * s[1] / bath, pf = 100.0 * s[2] / bath;
        if (!finite || !(s[0] >= lim[0]) || pa < lim[1] || pa > lim[2] || pf < lim[3] || pf > lim[4]) return k;
    }
    return -1;
}

/* The summary of members already rolled out, (M, B, T, NX) under u (B, T - 1, NU), T >= 2: what a summary
   work item computes beside the rollout (the same mean, spread, outputs and exits), for the layouts that
   have no summary (member quads, one or two cells). Returns 0. */
int alutwin_summarise(int M, long long B, long long T, const double *members, const double *u, double *mean,
                      double *spread, double *outputs, const double *limits, const double *box,
                      long long *member_exit, long long *mean_exit, long long *box_exit) {
    const long long n = T * NX, H = T - 1;
    for (long long b = 0; b < B; ++b) {
        double *mu = mean + b * n, *sd = spread + b * n;
        const double *x0 = members + b * n;
        for (long long j = 0; j < n; ++j) mu[j] = x0[j];
        for (int g = 1; g < M; ++g) {
            const double *xg = members + ((long long)g * B + b) * n;
            for (long long j = 0; j < n; ++j) mu[j] += xg[j];
        }
        for (long long j = 0; j < n; ++j) mu[j] /= (double)M;
        for (long long j = 0; j < n; ++j) sd[j] = 0.0;
        for (int g = 0; g < M; ++g) {
            const double *xg = members + ((long long)g * B + b) * n;
            for (long long j = 0; j < n; ++j) {
                const double t = xg[j] - mu[j];
                sd[j] += t * t;
            }
        }
        for (long long j = 0; j < n; ++j) sd[j] = sqrt(sd[j] / (double)M);
        for (long long k = 0; k < T; k += VL) { /* the outputs of 4 steps at a time, one per lane */
            vd rows[NX + NU] = {0}, y[NY] = {0}; /* zeroed for -Wmaybe-uninitialized: every lane is written below */
            for (int j = 0; j < VL; ++j) {
                const long long s = k + j < T ? k + j : T - 1;
                const double *us = u + (b * H + (s < H ? s : H - 1)) * NU;
                for (int i = 0; i < NX; ++i) rows[i][j] = mu[s * NX + i];
                for (int i = 0; i < NU; ++i) rows[NX + i][j] = us[i];
            }
            for (int i = 0; i < NY; ++i) y[i] = bcast(0.0);
            outputs_vec(rows, y, 1);
            for (int j = 0; j < VL && k + j < T; ++j)
                for (int i = 0; i < NY; ++i) outputs[(b * T + k + j) * NY + i] = y[i][j];
        }
        mean_exit[b] = first_exit(mu, T, NX, limits);
        for (int g = 0; g < M; ++g)
            member_exit[(long long)g * B + b] = first_exit(members + ((long long)g * B + b) * n, T, NX, limits);
        if (box) {
            box_exit[b] = -1;
            for (long long k = 0; k < T && box_exit[b] < 0; ++k)
                for (int i = 0; i < NX; ++i) {
                    const double v = mu[k * NX + i];
                    if (!(v >= box[i] && v <= box[NX + i])) {
                        box_exit[b] = k;
                        break;
                    }
                }
        }
    }
    return 0;
}

/* Roll out B cells over H steps. quad = 0: groups are single members, a work item holds 4 * nv cells;
   quad = 1: groups are quads of members, an item holds nv cells. The caller works too; helper threads are
   detached, and the call returns as soon as every item is done, so a helper the scheduler starts late (on
   a busy machine) finds nothing left, touches only the job (on the heap, freed by the last one out) and
   never delays the caller. summary = 1 (with quad = 0, mean = 0): out gets the ensemble mean (B, H + 1, NX),
   spread its std, outputs the algebraic outputs of the mean (B, H + 1, NY), members (if not NULL) every
   member's states (M, B, H + 1, NX), member_exit (M, B), mean_exit (B,) and box_exit (B,) (with box) the
   first step at which each member, the mean, and the mean against the box leave (limits: the valid domain);
   a work item is then a block of cells with all members.
   A float32 program (quad = 0, nv = 2, 4 or 8, tile = TILE32(nv)) passes tile_bias32, nz_w32 and scale instead of tile_bias and
   nz_w: the network layers then run in float32 (eval_group_f32), the states in double as always.
   Returns 0, or -1 for bad sizes, -2 when out of memory. */
int alutwin_rollout(int n_groups, int n_layers, int n_members, int quad, int mean, long long n_rows,
                    const int32_t *grp_tiles, const int32_t *tile_dst, const double *tile_bias,
                    const int32_t *tile_rounds, const uint8_t *tile_shared, const int32_t *nz_src,
                    const double *nz_w, long long B,
                    long long H, double dt, const double *x0, const double *u, double *out, int nv,
                    int tile, int n_threads, int summary, double *spread, double *outputs, double *members,
                    const float *tile_bias32, const float *nz_w32, const double *scale, const double *limits,
                    const double *box, long long *member_exit, long long *mean_exit, long long *box_exit) {
    const int f32 = nz_w32 != NULL;
    if (nv != 1 && nv != 2 && nv != 4 && !(f32 && nv == 8)) return -1;
    if (f32 ? quad || nv == 1 || !tile_bias32 || !scale || tile_bias || nz_w : !tile_bias || !nz_w) return -1;
    if (summary && (quad || mean || !spread || !outputs || !limits || !member_exit || !mean_exit)) return -1;
    if (summary && box && !box_exit) return -1;
    if (tile != (f32 ? TILE32(nv) : TILE(nv)) || (quad && nv > 2)) return -1;
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
    J->tile_bias32 = tile_bias32;
    J->nz_w32 = nz_w32;
    J->scale = scale;
    J->f32 = f32;
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
    J->limits = limits;
    J->box = box;
    J->member_exit = member_exit;
    J->mean_exit = mean_exit;
    J->box_exit = box_exit;
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
