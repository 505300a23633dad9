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

/* For the translated CasADi graphs: library functions lane by lane, comparisons as 1.0 or 0.0. */
#define MAP1(f, x) ((vd){f((x)[0]), f((x)[1]), f((x)[2]), f((x)[3])})
#define MAP2(f, x, y) ((vd){f((x)[0], (y)[0]), f((x)[1], (y)[1]), f((x)[2], (y)[2]), f((x)[3], (y)[3])})
AI vd truth(vl c) { return (vd)(c & (vl)bcast(1.0)); } /* a comparison as CasADi's 1.0 or 0.0 */
