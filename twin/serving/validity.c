/* alutwin validity scans (twin/serving/validity.py): one pass over a prediction's arrays.

   extremes: per scenario and state, the lowest and highest ensemble mean over the steps and the largest
   spread; a state that is ever non-finite gives NaN in all three (numpy's min/max propagate NaN).
   first_outside: per trajectory, the first step whose state leaves the valid domain, with the arithmetic of
   plant.domain.check_domain (percentages as 100 a / bath), or -1. */
#include <math.h>

void alutwin_extremes(long long b, long long t, const double *mean, const double *spread, double *lo, double *hi,
                      double *smax) {
    for (long long i = 0; i < b; ++i) {
        const double *m = mean + i * t * 8, *s = spread + i * t * 8;
        double l[8], h[8], x[8];
        int bad[8] = {0};
        for (int j = 0; j < 8; ++j) l[j] = h[j] = m[j], x[j] = s[j];
        for (long long k = 0; k < t; ++k) {
            for (int j = 0; j < 8; ++j) {
                const double v = m[k * 8 + j], w = s[k * 8 + j];
                bad[j] |= !isfinite(v) | !isfinite(w);
                l[j] = v < l[j] ? v : l[j];
                h[j] = v > h[j] ? v : h[j];
                x[j] = w > x[j] ? w : x[j];
            }
        }
        for (int j = 0; j < 8; ++j) {
            lo[i * 8 + j] = bad[j] ? NAN : l[j];
            hi[i * 8 + j] = bad[j] ? NAN : h[j];
            smax[i * 8 + j] = bad[j] ? NAN : x[j];
        }
    }
}

void alutwin_first_outside(long long n, long long t, const double *x, double min_ledge, double a_lo, double a_hi,
                           double f_lo, double f_hi, long long *out) {
    for (long long i = 0; i < n; ++i) {
        out[i] = -1;
        for (long long k = 0; k < t; ++k) {
            const double *s = x + (i * t + k) * 8;
            int finite = 1;
            for (int j = 0; j < 8; ++j) finite &= isfinite(s[j]);
            const double bath = s[1] + s[2] + s[3];
            const double pa = 100.0 * s[1] / bath, pf = 100.0 * s[2] / bath;
            /* as check_domain: a NaN percentage (0 / 0) compares false, so it is not a fault by itself */
            if (!finite || s[0] < min_ledge || pa < a_lo || pa > a_hi || pf < f_lo || pf > f_hi) {
                out[i] = k;
                break;
            }
        }
    }
}
