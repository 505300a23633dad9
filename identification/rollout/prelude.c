/* alutwin rollout kernel, part 1 of 2: types and helpers (also all a translated prior needs).

   identification/rollout/translate.py assembles the kernel's source: this file, then the C that it translates
   from CasADi graphs (the algebraic outputs, outputs_vec, with NY; the physics prior, prior_vec, with
   HAS_PRIOR), then kernel.c. */
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
#define MAXV 8                               /* most vectors per activation row (8: float32 programs only) */
#define TILE32(nv) ((nv) <= 4 ? 4 : 2)       /* entries per tile of a float32 program (nv / 2 vectors of 8) */
#define NSCALE (2 * (NX + NU) + 2 * (NX + 1)) /* float32 programs: input mean, 1 / std; output scale, shift */
typedef double vd __attribute__((vector_size(32)));
typedef long long vl __attribute__((vector_size(32)));
typedef float vf __attribute__((vector_size(32))); /* 8 floats: the cells of two vd */
typedef int vi __attribute__((vector_size(32)));
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
    const float *tile_bias32;   /* float32 programs (f32 = 1): (n_tiles, TILE), instead of tile_bias */
    const float *nz_w32;        /* float32 programs: (rounds, TILE), instead of nz_w */
    const double *scale;        /* float32 programs: (NSCALE,) input mean (13), 1 / std (13), output scale (9) and
                                   shift (9; the 9th for the padding entries' trash row) */
    int f32;                    /* 1: the network layers in float32 (eval_group_f32) */
    long long B, H, n_blocks, n_items, n_rows;
    double dt;
    const double *x0, *u;       /* (B, NX), (B, H, NU) */
    double *out;                /* (M, B, H + 1, NX), or (B, H + 1, NX) for the ensemble mean */
    double *spread, *outputs;   /* summary: (B, H + 1, NX) std over members, (B, H + 1, NY) outputs of the mean */
    double *members;            /* summary: (M, B, H + 1, NX) every member's states, or NULL */
    const double *limits;       /* summary: (5,) the valid domain: min ledge mass, alumina % low, high, AlF3 % low,
                                   high (plant.params.DomainLimits) */
    const double *box;          /* summary: (2 NX,) low, high of the box the mean is checked against, or NULL */
    long long *member_exit;     /* summary: (M, B) each member's first step outside the domain, -1: never */
    long long *mean_exit;       /* summary: (B,) the mean's first step outside the domain */
    long long *box_exit;        /* summary: (B,) the mean's first step outside the box (with box) */
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

AI vf bcastf(float x) { return (vf){x, x, x, x, x, x, x, x}; }

#ifdef __AVX__
AI vf reluf(vf x) { return (vf)_mm256_max_ps(_mm256_setzero_ps(), (__m256)x); }

/* Two vectors of 4 doubles as one of 8 floats (lo in lanes 0-3), each rounded to nearest. */
AI vf narrow(vd lo, vd hi) {
    __m256 r = _mm256_castps128_ps256(_mm256_cvtpd_ps((__m256d)lo));
    return (vf)_mm256_insertf128_ps(r, _mm256_cvtpd_ps((__m256d)hi), 1);
}

/* 8 floats as two vectors of 4 doubles (exact). */
AI void widen(vf x, vd *lo, vd *hi) {
    *lo = (vd)_mm256_cvtps_pd(_mm256_castps256_ps128((__m256)x));
    *hi = (vd)_mm256_cvtps_pd(_mm256_extractf128_ps((__m256)x, 1));
}
#else
AI vf reluf(vf x) {
    const vf zero = bcastf(0.0f);
    return (vf)((vi)x & ~(vi)(x < zero));
}

AI vf narrow(vd lo, vd hi) {
    return (vf){(float)lo[0], (float)lo[1], (float)lo[2], (float)lo[3],
                (float)hi[0], (float)hi[1], (float)hi[2], (float)hi[3]};
}

AI void widen(vf x, vd *lo, vd *hi) {
    *lo = (vd){x[0], x[1], x[2], x[3]};
    *hi = (vd){x[4], x[5], x[6], x[7]};
}
#endif

AI vd loadu(const double *p) { /* numpy arrays need not be 32-byte aligned */
    vd v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* For the translated CasADi graphs: library functions lane by lane, comparisons as 1.0 or 0.0. */
#define MAP1(f, x) ((vd){f((x)[0]), f((x)[1]), f((x)[2]), f((x)[3])})
#define MAP2(f, x, y) ((vd){f((x)[0], (y)[0]), f((x)[1], (y)[1]), f((x)[2], (y)[2]), f((x)[3], (y)[3])})
AI vd truth(vl c) { return (vd)(c & (vl)bcast(1.0)); } /* a comparison as CasADi's 1.0 or 0.0 */
