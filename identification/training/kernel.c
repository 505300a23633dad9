/* alutwin fused training kernel: one call runs a whole epoch of every ensemble member (forward, backward,
   penalty and Adam, all minibatches), members spread over threads (identification/training/fused.py).

   Compiled with -DREAL=float -DIREAL=int32_t or -DREAL=double -DIREAL=int64_t. Activations are stored
   feature-major, (units, batch) with rows padded to whole SIMD vectors, so every inner loop runs over
   contiguous samples. Matrix products are register-tiled with GCC vector extensions; reductions run in a
   fixed order (no -ffast-math, no FMA contraction), so a member's result never depends on its neighbours. */
#ifndef REAL
#error "define REAL (float or double) and IREAL (int32_t or int64_t)"
#endif

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <tgmath.h> /* sqrt of a float is sqrtf */

#define VBYTES 32
#define VL ((int)(VBYTES / sizeof(REAL)))
#define MAXW 32
typedef REAL vec __attribute__((vector_size(VBYTES)));
typedef IREAL ivec __attribute__((vector_size(VBYTES)));
#define AI static inline __attribute__((always_inline))
#define LOADV(p) (*(const vec *)(p))
#define STOREV(p, v) (*(vec *)(p) = (v))

typedef struct {
    int L;                           /* hidden layers; weight matrices 0..L, L is the output layer */
    int rows[MAXW], cols[MAXW];      /* (n_in, n_out) of each weight matrix */
    long woff[MAXW], boff[MAXW];     /* offsets of each weight and bias in a member's parameter vector */
    int in_row[MAXW], out_row[MAXW]; /* first activation row each layer reads / writes */
    long np;                         /* parameters per member */
    int n_in, n_out, n_act, n_hid, n_skip_rows;
    long S;
    int batch, ld;
    const REAL *X, *Y;               /* (S, n_in), (S, n_out) */
    const int64_t *perm;             /* (M, S) */
    int M;
    REAL *P, *Mo, *Ve;               /* (M, np): parameters, Adam's first and second moments */
    const uint8_t *mask;             /* (M, np) or NULL */
    const double *prox;              /* (np,): each parameter's l1 weight applied as a proximal step, or NULL */
    long step0;
    double lr;
    int l1, group, blocks, prox_group;
    double lam_in, lam, lam_skip, lam_group;
    double *loss, *pen;              /* (M,) */
    int next, failed;
} Job;

typedef struct {
    REAL *A, *dA, *Yb, *out, *dout, *g, *p, *mo, *ve;
} Scratch;

/* ---- out[o, :] = init + sum_k W[k*sk + o*so] * in[k, :], then ReLU / gate ---------------------------- */
/* Register tiles: RO outputs x RS vectors of samples (rows kernel), DI inputs x DO outputs (weight gradient).
   The dispatchers call the always-inline tiles with constant sizes, so the compiler unrolls them. */
#ifndef RO
#define RO 3
#endif
#ifndef RS
#define RS 4
#endif
#ifndef DI
#define DI 3
#endif
#ifndef DO
#define DO 4
#endif
enum { POST_NONE = 0, POST_RELU = 1, POST_GATE = 2 };

typedef struct {
    REAL *out;
    const REAL *in, *W, *bias, *gate;
    long sk, so;
    int nk, ld, accumulate, post;
} RowsArgs;

AI void rows_tile(const RowsArgs *A, int o0, const int ot, int v0, const int sv) {
    vec acc[RO][RS];
    const vec zero = {0};
    const int ld = A->ld;
    for (int a = 0; a < ot; a++)
        for (int c = 0; c < sv; c++) {
            if (A->bias)
                acc[a][c] = zero + A->bias[o0 + a];
            else if (A->accumulate)
                acc[a][c] = LOADV(A->out + (long)(o0 + a) * ld + (v0 + c) * VL);
            else
                acc[a][c] = zero;
        }
    const REAL *restrict in = A->in + v0 * VL;
    const REAL *restrict W = A->W + o0 * A->so;
    for (int k = 0; k < A->nk; k++) {
        vec x[RS];
        for (int c = 0; c < sv; c++) x[c] = LOADV(in + (long)k * ld + c * VL);
        for (int a = 0; a < ot; a++) {
            const REAL w = W[k * A->sk + a * A->so];
            for (int c = 0; c < sv; c++) acc[a][c] += w * x[c];
        }
    }
    for (int a = 0; a < ot; a++)
        for (int c = 0; c < sv; c++) {
            const long at = (long)(o0 + a) * ld + (v0 + c) * VL;
            vec r = acc[a][c];
            if (A->post == POST_RELU)
                r = (vec)((ivec)r & (r > zero));
            else if (A->post == POST_GATE)
                r = (vec)((ivec)r & (LOADV(A->gate + at) > zero));
            STOREV(A->out + at, r);
        }
}

AI void rows_ot(const RowsArgs *A, int o0, const int ot, int nv) {
    int v = 0;
    for (; v + RS <= nv; v += RS) rows_tile(A, o0, ot, v, RS);
    switch (nv - v) {
#if RS > 3
    case 3: rows_tile(A, o0, ot, v, 3); break;
#endif
#if RS > 2
    case 2: rows_tile(A, o0, ot, v, 2); break;
#endif
#if RS > 1
    case 1: rows_tile(A, o0, ot, v, 1); break;
#endif
    default: break;
    }
}

static void rows_kernel(REAL *restrict out, const REAL *restrict in, const REAL *restrict W, long sk, long so,
                        int nk, int no, int nv, int ld, const REAL *restrict bias, int accumulate, int post,
                        const REAL *restrict gate) {
    const RowsArgs A = {out, in, W, bias, gate, sk, so, nk, ld, accumulate, post};
    for (int o0 = 0; o0 < no; o0 += RO) {
        switch (no - o0 < RO ? no - o0 : RO) {
#if RO > 5
        case 6: rows_ot(&A, o0, 6, nv); break;
#endif
#if RO > 4
        case 5: rows_ot(&A, o0, 5, nv); break;
#endif
#if RO > 3
        case 4: rows_ot(&A, o0, 4, nv); break;
#endif
#if RO > 2
        case 3: rows_ot(&A, o0, 3, nv); break;
#endif
#if RO > 1
        case 2: rows_ot(&A, o0, 2, nv); break;
#endif
        default: rows_ot(&A, o0, 1, nv); break;
        }
    }
}

/* ---- G[i, o] = sum_s in[i, s] * d[o, s]  (weight gradients: dot products over the samples) --------------- */
AI REAL hsum(vec v) {
    for (int w = VL / 2; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) v[i] += v[i + w];
    return v[0];
}

AI void dw_tile(REAL *restrict G, int ldg, const REAL *restrict in, const REAL *restrict d, int i0, const int it,
                int o0, const int ot, int nv, int ld) {
    vec acc[DI][DO];
    const vec zero = {0};
    for (int a = 0; a < it; a++)
        for (int b = 0; b < ot; b++) acc[a][b] = zero;
    for (int v = 0; v < nv; v++) {
        vec x[DI];
        for (int a = 0; a < it; a++) x[a] = LOADV(in + (long)(i0 + a) * ld + v * VL);
        for (int b = 0; b < ot; b++) {
            const vec y = LOADV(d + (long)(o0 + b) * ld + v * VL);
            for (int a = 0; a < it; a++) acc[a][b] += x[a] * y;
        }
    }
    for (int a = 0; a < it; a++)
        for (int b = 0; b < ot; b++) G[(long)(i0 + a) * ldg + o0 + b] = hsum(acc[a][b]);
}

AI void dw_it(REAL *restrict G, const REAL *restrict in, const REAL *restrict d, int i0, const int it, int no,
              int nv, int ld) {
    int o0 = 0;
    for (; o0 + DO <= no; o0 += DO) dw_tile(G, no, in, d, i0, it, o0, DO, nv, ld);
    switch (no - o0) {
#if DO > 4
    case 4: dw_tile(G, no, in, d, i0, it, o0, 4, nv, ld); break;
#endif
#if DO > 3
    case 3: dw_tile(G, no, in, d, i0, it, o0, 3, nv, ld); break;
#endif
#if DO > 2
    case 2: dw_tile(G, no, in, d, i0, it, o0, 2, nv, ld); break;
#endif
#if DO > 1
    case 1: dw_tile(G, no, in, d, i0, it, o0, 1, nv, ld); break;
#endif
    default: break;
    }
}

static void dw_kernel(REAL *restrict G, const REAL *restrict in, const REAL *restrict d, int ni, int no, int nv,
                      int ld) {
    for (int i0 = 0; i0 < ni; i0 += DI) {
        switch (ni - i0 < DI ? ni - i0 : DI) {
#if DI > 4
        case 5: dw_it(G, in, d, i0, 5, no, nv, ld); break;
#endif
#if DI > 3
        case 4: dw_it(G, in, d, i0, 4, no, nv, ld); break;
#endif
#if DI > 2
        case 3: dw_it(G, in, d, i0, 3, no, nv, ld); break;
#endif
#if DI > 1
        case 2: dw_it(G, in, d, i0, 2, no, nv, ld); break;
#endif
        default: dw_it(G, in, d, i0, 1, no, nv, ld); break;
        }
    }
}

static void bias_grad(REAL *restrict gb, const REAL *restrict d, int no, int nv, int ld) {
    const vec zero = {0};
    for (int o = 0; o < no; o++) {
        vec acc = zero;
        for (int v = 0; v < nv; v++) acc += LOADV(d + (long)o * ld + v * VL);
        gb[o] = hsum(acc);
    }
}

/* ---- penalties ------------------------------------------------------------------------------------------ */
/* The l1 terms as the reference writes them: lam_in on the first layer, lam on the layers between, and on
   the output layer lam_skip for its skip rows and lam for the rest. With no hidden layer the one matrix is
   both first and output layer and gets both terms, as in the reference. */
static int n_roles(const Job *J) { return J->L == 0 ? 2 : J->L + 1; }

static void l1_role(const Job *J, int r, int *layer, int *split, double *lam_main) {
    const int last = r == n_roles(J) - 1;
    *layer = r < J->L ? r : J->L;
    *split = last ? J->n_skip_rows : 0;
    *lam_main = r == 0 ? J->lam_in : J->lam;
}

/* ---- one member, one epoch ----------------------------------------------------------------------------- */
static double penalty_value(const Job *J, const REAL *p) {
    double total = 0.0;
    if (J->l1) {
        for (int r = 0; r < n_roles(J); r++) {
            int l, split;
            double lam_main;
            l1_role(J, r, &l, &split, &lam_main);
            const REAL *w = p + J->woff[l];
            double s_skip = 0.0, s = 0.0;
            for (long i = 0; i < (long)split * J->cols[l]; i++) s_skip += fabs((double)w[i]);
            for (long i = (long)split * J->cols[l]; i < (long)J->rows[l] * J->cols[l]; i++) s += fabs((double)w[i]);
            if (split) total += J->lam_skip * s_skip;
            total += lam_main * s;
        }
    }
    if (J->group) {
        double gsum = 0.0;
        const int hb = J->cols[0] / J->blocks, ob = J->n_out / J->blocks;
        for (int j = 0; j < J->n_in; j++)
            for (int b = 0; b < J->blocks; b++) {
                double ss = 0.0;
                const REAL *r0 = p + J->woff[0] + (long)j * J->cols[0] + (long)b * hb;
                for (int k = 0; k < hb; k++) ss += (double)r0[k] * r0[k];
                if (J->n_skip_rows) {
                    const REAL *r1 = p + J->woff[J->L] + (long)j * J->n_out + (long)b * ob;
                    for (int k = 0; k < ob; k++) ss += (double)r1[k] * r1[k];
                }
                gsum += sqrt(ss + 1e-12);
            }
        total += J->lam_group * gsum;
    }
    return total;
}

static void penalty_grad(const Job *J, const REAL *restrict p, REAL *restrict g) {
    if (J->l1 && !J->prox) { /* a proximal l1 is applied after the update instead */
        for (int r = 0; r < n_roles(J); r++) {
            int l, split_rows;
            double lam_role;
            l1_role(J, r, &l, &split_rows, &lam_role);
            const REAL *w = p + J->woff[l];
            REAL *gw = g + J->woff[l];
            const long split = (long)split_rows * J->cols[l], n = (long)J->rows[l] * J->cols[l];
            const REAL lam_main = (REAL)lam_role, lam_skip = (REAL)J->lam_skip;
            for (long i = 0; i < n; i++) {
                const REAL sgn = (REAL)(w[i] > 0) - (REAL)(w[i] < 0);
                gw[i] += (i < split ? lam_skip : lam_main) * sgn;
            }
        }
    }
    if (J->group && !J->prox_group) { /* a proximal group lasso is applied after the update instead */
        const int hb = J->cols[0] / J->blocks, ob = J->n_out / J->blocks;
        for (int j = 0; j < J->n_in; j++)
            for (int b = 0; b < J->blocks; b++) {
                REAL ss = 0;
                const REAL *r0 = p + J->woff[0] + (long)j * J->cols[0] + (long)b * hb;
                const REAL *r1 = p + J->woff[J->L] + (long)j * J->n_out + (long)b * ob;
                for (int k = 0; k < hb; k++) ss += r0[k] * r0[k];
                if (J->n_skip_rows)
                    for (int k = 0; k < ob; k++) ss += r1[k] * r1[k];
                const REAL c = (REAL)J->lam_group / ((REAL)2 * (REAL)sqrt((double)(ss + (REAL)1e-12)));
                REAL *g0 = g + J->woff[0] + (long)j * J->cols[0] + (long)b * hb;
                for (int k = 0; k < hb; k++) g0[k] += c * r0[k] + c * r0[k];
                if (J->n_skip_rows) {
                    REAL *g1 = g + J->woff[J->L] + (long)j * J->n_out + (long)b * ob;
                    for (int k = 0; k < ob; k++) g1[k] += c * r1[k] + c * r1[k];
                }
            }
    }
}

/* The group lasso's proximal step after an update: each (input, block) group shrinks towards zero by
   lr lam_group / d, with d the mean of Adam's denominators over the group, and becomes exactly zero when its
   norm is below that. */
static void group_prox(const Job *J, REAL *restrict p, const REAL *restrict ve, REAL bc2_sqrt, REAL eps) {
    const int hb = J->cols[0] / J->blocks, ob = J->n_out / J->blocks;
    const int skip = J->n_skip_rows != 0;
    for (int j = 0; j < J->n_in; j++)
        for (int b = 0; b < J->blocks; b++) {
            const long o0 = J->woff[0] + (long)j * J->cols[0] + (long)b * hb;
            const long o1 = J->woff[J->L] + (long)j * J->n_out + (long)b * ob;
            double ss = 0.0, dsum = 0.0;
            for (int k = 0; k < hb; k++) {
                ss += (double)p[o0 + k] * p[o0 + k];
                dsum += (double)(sqrt(ve[o0 + k]) / bc2_sqrt + eps);
            }
            if (skip)
                for (int k = 0; k < ob; k++) {
                    ss += (double)p[o1 + k] * p[o1 + k];
                    dsum += (double)(sqrt(ve[o1 + k]) / bc2_sqrt + eps);
                }
            const double d = dsum / (double)(hb + (skip ? ob : 0)), norm = sqrt(ss);
            const double keep = norm > 0.0 ? 1.0 - J->lr * J->lam_group / (d * norm) : 0.0;
            const REAL scale = keep > 0.0 ? (REAL)keep : (REAL)0;
            for (int k = 0; k < hb; k++) p[o0 + k] *= scale;
            if (skip)
                for (int k = 0; k < ob; k++) p[o1 + k] *= scale;
        }
}

static void member_epoch(const Job *J, Scratch *s, int m) {
    const int ld = J->ld, n_in = J->n_in, n_out = J->n_out, L = J->L, B = J->batch;
    const long np = J->np, S = J->S;
    const int64_t *perm = J->perm + (long)m * S;
    const uint8_t *mask = J->mask ? J->mask + (long)m * np : NULL;
    REAL *restrict p = s->p, *restrict mo = s->mo, *restrict ve = s->ve, *restrict g = s->g;
    memcpy(p, J->P + (long)m * np, np * sizeof(REAL));
    memcpy(mo, J->Mo + (long)m * np, np * sizeof(REAL));
    memcpy(ve, J->Ve + (long)m * np, np * sizeof(REAL));
    const REAL b2 = (REAL)0.999, one_b1 = (REAL)(1.0 - 0.9), one_b2 = (REAL)(1.0 - 0.999);
    const REAL eps = (REAL)1e-8;
    const long nbatch = (S + B - 1) / B;
    double acc_loss = 0.0;
    for (long k = 0; k < nbatch; k++) {
        const int b = (int)(S - k * B < B ? S - k * B : B);
        const int nv = (b + VL - 1) / VL, bp = nv * VL;
        /* gather the minibatch, feature-major; padding columns are zero */
        for (int sidx = 0; sidx < b; sidx++) {
            const long r = perm[k * B + sidx];
            const REAL *x = J->X + r * n_in, *y = J->Y + r * n_out;
            for (int i = 0; i < n_in; i++) s->A[(long)i * ld + sidx] = x[i];
            for (int o = 0; o < n_out; o++) s->Yb[(long)o * ld + sidx] = y[o];
        }
        for (int sidx = b; sidx < bp; sidx++) {
            for (int i = 0; i < n_in; i++) s->A[(long)i * ld + sidx] = 0;
            for (int o = 0; o < n_out; o++) s->Yb[(long)o * ld + sidx] = 0;
        }
        /* the next minibatch's rows are scattered over the data set: fetch them while this one computes */
        for (long sidx = (k + 1) * B; sidx < (k + 2) * B && sidx < S; sidx++) {
            const long r = perm[sidx];
            __builtin_prefetch(J->X + r * n_in);
            __builtin_prefetch(J->X + r * n_in + n_in - 1);
            __builtin_prefetch(J->Y + r * n_out);
            __builtin_prefetch(J->Y + r * n_out + n_out - 1);
        }
        /* forward */
        for (int l = 0; l < L; l++)
            rows_kernel(s->A + (long)J->out_row[l] * ld, s->A + (long)J->in_row[l] * ld, p + J->woff[l], J->cols[l],
                        1, J->rows[l], J->cols[l], nv, ld, p + J->boff[l], 0, POST_RELU, NULL);
        rows_kernel(s->out, s->A + (long)J->in_row[L] * ld, p + J->woff[L], n_out, 1, J->rows[L], n_out, nv, ld,
                    p + J->boff[L], 0, POST_NONE, NULL);
        /* loss: mean over the b real samples and the outputs; its gradient (zero on the padding) */
        const REAL scale = (REAL)2 * ((REAL)1 / (REAL)((long)b * n_out));
        ivec valid;
        for (int i = 0; i < VL; i++) valid[i] = (nv - 1) * VL + i < b ? -1 : 0;
        const vec zero = {0};
        vec sse = zero;
        for (int o = 0; o < n_out; o++) {
            for (int v = 0; v < nv; v++) {
                const long at = (long)o * ld + v * VL;
                vec d = LOADV(s->out + at) - LOADV(s->Yb + at);
                if (v == nv - 1) d = (vec)((ivec)d & valid);
                sse += d * d;
                STOREV(s->dout + at, d * scale);
            }
        }
        acc_loss += (double)hsum(sse) / ((double)b * n_out) * b;
        /* backward */
        dw_kernel(g + J->woff[L], s->A + (long)J->in_row[L] * ld, s->dout, J->rows[L], n_out, nv, ld);
        bias_grad(g + J->boff[L], s->dout, n_out, nv, ld);
        if (L > 0) {
            /* the output layer's rows that read hidden units: all hidden rows (skip) or the last layer's */
            const int first = J->n_skip_rows ? J->n_in : J->out_row[L - 1];
            const int nrows = J->n_skip_rows ? J->n_hid : J->cols[L - 1];
            const int wrow = first - J->in_row[L];
            rows_kernel(s->dA + (long)(first - n_in) * ld, s->dout, p + J->woff[L] + (long)wrow * n_out, 1, n_out,
                        n_out, nrows, nv, ld, NULL, 0, POST_GATE, s->A + (long)first * ld);
        }
        for (int l = L - 1; l >= 0; l--) {
            const REAL *dpre = s->dA + (long)(J->out_row[l] - n_in) * ld;
            dw_kernel(g + J->woff[l], s->A + (long)J->in_row[l] * ld, dpre, J->rows[l], J->cols[l], nv, ld);
            bias_grad(g + J->boff[l], dpre, J->cols[l], nv, ld);
            if (l > 0)
                rows_kernel(s->dA + (long)(J->in_row[l] - n_in) * ld, dpre, p + J->woff[l], 1, J->cols[l], J->cols[l],
                            J->rows[l], nv, ld, NULL, J->n_skip_rows != 0, POST_GATE, s->A + (long)J->in_row[l] * ld);
        }
        /* penalty (recorded at the epoch's last step, before its update), mask, Adam */
        if (k == nbatch - 1) J->pen[m] = penalty_value(J, p);
        penalty_grad(J, p, g);
        if (mask)
            for (long i = 0; i < np; i++) g[i] = mask[i] ? g[i] : (REAL)0;
        const double t = (double)(J->step0 + k + 1);
        const double bc1 = 1.0 - pow(0.9, t), bc2 = 1.0 - pow(0.999, t);
        const REAL neg_step = (REAL)(-(J->lr / bc1)), bc2_sqrt = (REAL)pow(bc2, 0.5);
        for (long i = 0; i < np; i++) {
            const REAL gi = g[i];
            const REAL mi = mo[i] + one_b1 * (gi - mo[i]);
            const REAL vi = ve[i] * b2 + one_b2 * gi * gi;
            mo[i] = mi;
            ve[i] = vi;
            p[i] = p[i] + neg_step * mi / (sqrt(vi) / bc2_sqrt + eps);
        }
        if (J->prox) { /* soft threshold in Adam's metric: |w| shrinks by lr lam / (sqrt(v_hat) + eps) */
            const REAL lr = (REAL)J->lr;
            for (long i = 0; i < np; i++) {
                const REAL shrunk = fabs(p[i]) - lr * (REAL)J->prox[i] / (sqrt(ve[i]) / bc2_sqrt + eps);
                p[i] = shrunk > (REAL)0 ? copysign(shrunk, p[i]) : (REAL)0;
            }
        }
        if (J->group && J->prox_group) group_prox(J, p, ve, bc2_sqrt, eps);
    }
    J->loss[m] = acc_loss / (double)S;
    memcpy(J->P + (long)m * np, p, np * sizeof(REAL));
    memcpy(J->Mo + (long)m * np, mo, np * sizeof(REAL));
    memcpy(J->Ve + (long)m * np, ve, np * sizeof(REAL));
}

static void *alloc_real(long n) {
    size_t bytes = ((size_t)(n > 0 ? n : 1) * sizeof(REAL) + 63) / 64 * 64;
    void *ptr = aligned_alloc(64, bytes);
    if (ptr) memset(ptr, 0, bytes);
    return ptr;
}

static void *worker(void *arg) {
    Job *J = (Job *)arg;
    Scratch s;
    s.A = alloc_real((long)J->n_act * J->ld);
    s.dA = alloc_real((long)J->n_hid * J->ld);
    s.Yb = alloc_real((long)J->n_out * J->ld);
    s.out = alloc_real((long)J->n_out * J->ld);
    s.dout = alloc_real((long)J->n_out * J->ld);
    s.g = alloc_real(J->np);
    s.p = alloc_real(J->np);
    s.mo = alloc_real(J->np);
    s.ve = alloc_real(J->np);
    if (!(s.A && s.dA && s.Yb && s.out && s.dout && s.g && s.p && s.mo && s.ve)) {
        __atomic_store_n(&J->failed, 1, __ATOMIC_RELAXED);
    } else {
        for (;;) {
            int m = __atomic_fetch_add(&J->next, 1, __ATOMIC_RELAXED);
            if (m >= J->M) break;
            member_epoch(J, &s, m);
        }
    }
    free(s.A); free(s.dA); free(s.Yb); free(s.out); free(s.dout); free(s.g); free(s.p); free(s.mo); free(s.ve);
    return NULL;
}

/* dims: n_in, hidden..., n_out (L + 2 entries). hyper: lr, l1, lam_in, lam, lam_skip, group, lam_group,
   blocks (the group lasso's groups are (input, block): the input's first-layer row over the block's units and
   its skip row over the block's outputs), prox_group (1: the group lasso as a proximal step).
   prox: NULL, or per parameter the l1 weight applied as a proximal step after each Adam step (then the l1
   subgradient is left out of the gradient; the recorded penalty still includes it).
   Returns 0, or -1 for bad dimensions, -2 when memory or threads ran out. */
int train_epoch(const int64_t *dims, int L, int n_skip_rows, long S, int batch, const REAL *X, const REAL *Y,
                const int64_t *perm, int M, REAL *P, REAL *Mo, REAL *Ve, const uint8_t *mask, long step0,
                const double *hyper, const double *prox, int n_threads, double *loss, double *pen) {
    if (L < 0 || L + 1 > MAXW || S < 1 || batch < 1 || M < 1) return -1;
    Job J;
    memset(&J, 0, sizeof J);
    J.L = L;
    J.n_in = (int)dims[0];
    J.n_out = (int)dims[L + 1];
    J.n_skip_rows = n_skip_rows;
    int row = J.n_in;
    long off = 0;
    for (int l = 0; l < L; l++) {
        J.rows[l] = (int)dims[l];
        J.cols[l] = (int)dims[l + 1];
        J.in_row[l] = l == 0 ? 0 : J.out_row[l - 1];
        J.out_row[l] = row;
        row += J.cols[l];
    }
    J.n_act = row;
    J.n_hid = row - J.n_in;
    J.in_row[L] = n_skip_rows || L == 0 ? 0 : J.out_row[L - 1];
    J.rows[L] = n_skip_rows ? row : (int)dims[L];
    J.cols[L] = J.n_out;
    for (int l = 0; l <= L; l++) {
        J.woff[l] = off;
        off += (long)J.rows[l] * J.cols[l];
        J.boff[l] = off;
        off += J.cols[l];
    }
    J.np = off;
    J.S = S;
    J.batch = batch;
    J.ld = (batch + VL - 1) / VL * VL;
    J.X = X; J.Y = Y; J.perm = perm; J.M = M; J.P = P; J.Mo = Mo; J.Ve = Ve; J.mask = mask;
    J.prox = prox;
    J.step0 = step0;
    J.lr = hyper[0];
    J.l1 = hyper[1] != 0.0;
    J.lam_in = hyper[2]; J.lam = hyper[3]; J.lam_skip = hyper[4];
    J.group = hyper[5] != 0.0;
    J.lam_group = hyper[6];
    J.blocks = (int)hyper[7];
    J.prox_group = hyper[8] != 0.0;
    if (J.blocks < 1 || (L > 0 && J.cols[0] % J.blocks) || J.n_out % J.blocks) return -1;
    J.loss = loss; J.pen = pen;
    for (int m = 0; m < M; m++) pen[m] = 0.0;
    int nt = n_threads < 1 ? 1 : (n_threads > M ? M : n_threads);
    pthread_t threads[64];
    if (nt > 64) nt = 64;
    int started = 0;
    for (int t = 1; t < nt; t++) {
        if (pthread_create(&threads[started], NULL, worker, &J) != 0) break;
        started++;
    }
    worker(&J);
    for (int t = 0; t < started; t++) pthread_join(threads[t], NULL);
    return J.failed ? -2 : 0;
}

int real_size(void) { return (int)sizeof(REAL); }
