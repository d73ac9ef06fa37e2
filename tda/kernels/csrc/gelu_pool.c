/* GELU then 2x2 max-pooling of channels-last pre-activations, and its backward: the elementwise
 * part of the paper's conv-GELU-maxpool blocks, in one pass over memory instead of torch's four
 * (GELU, pooling with indices, a gather of the selected pre-activations, GELU's derivative there).
 *
 * Layout. z is a conv's output on the 2hp x 2wp grid of positions that floor pooling keeps,
 * channels-last: z[b][Y][X][c], Y < 2hp, X < 2wp. The pool window (py, px) is Y = 2py + dy,
 * X = 2px + dx, scanned (0,0), (0,1), (1,0), (1,1) like torch's max_pool2d: the first maximum of
 * GELU's values wins, NaN wins. idx holds the winner's grid position Y * 2wp + X (torch's indices).
 *
 * GELU is the exact (erf) GELU. double: libm's erf, as accurate as torch's. float: VL lanes at once (simd.h)
 * with the formula torch's own vectorised CPU GELU uses (Abramowitz-Stegun 7.1.26 for erf, absolute
 * error below 1.5e-7) and a Cody-Waite exp; values agree with torch's float GELU to a few units in
 * the last place. Built by tda/kernels/native.py: gcc -O3 -march=native -shared.
 */
#include <math.h>
#include <stdint.h>

#include "simd.h"

/* lanes of a float vector: the channels every float kernel of the library needs a multiple of */
int kernel_lanes(void) { return VL; }

/* e^x for x in [-87, 0] (callers pass -z^2/2): Cody-Waite reduction, cephes' expf polynomial. */
static inline vf vexp_neg(vf x) {
    x = sel(x < bc(-87.0f), bc(-87.0f), x);
    vf n = x * bc(1.44269504088896341f) + bc(12582912.0f);  /* round to nearest via 1.5 * 2^23 */
    n = n - bc(12582912.0f);
    vf r = x - n * bc(0.693359375f);
    r = r - n * bc(-2.12194440e-4f);
    vf p = bc(1.9875691500e-4f);
    p = p * r + bc(1.3981999507e-3f);
    p = p * r + bc(8.3333451907e-3f);
    p = p * r + bc(4.1665795894e-2f);
    p = p * r + bc(1.6666665459e-1f);
    p = p * r + bc(5.0000001201e-1f);
    p = p * (r * r) + r + bc(1.0f);
    vi e = (__builtin_convertvector(n, vi) + bci(127)) << 23;
    return p * (vf)e;
}

/* GELU(z) and GELU'(z) = Phi(z) + z phi(z), VL lanes. */
static inline void vgelu(vf z, vf *g, vf *dg) {
    vf x = z * bc(0.70710678118654752f);
    vi neg = x < bc(0.0f);
    vf ax = sel(neg, -x, x);
    vf t = bc(1.0f) / (bc(0.3275911f) * ax + bc(1.0f));
    vf r = bc(1.061405429f);
    r = r * t + bc(-1.453152027f);
    r = r * t + bc(1.421413741f);
    r = r * t + bc(-0.284496736f);
    r = r * t + bc(0.254829592f);
    vf e = vexp_neg(-(x * x));  /* e^(-z^2/2) */
    vf erf_abs = bc(1.0f) - r * t * e;
    vf cdf = bc(0.5f) * (bc(1.0f) + sel(neg, -erf_abs, erf_abs));
    *g = z * cdf;
    *dg = cdf + z * e * bc(0.39894228040143268f);
}

static inline void gelu64(double z, double *g, double *dg) {
    double cdf = 0.5 * (1.0 + erf(z * 0.70710678118654752));
    *g = z * cdf;
    *dg = cdf + z * exp(-0.5 * z * z) * 0.39894228040143268;
}

/* double: the same selection as pool_select, one channel (z[q] the window's four pre-activations). */
static inline void pool_select64(const double z[4], const int32_t pos[4], int64_t o, double *pooled, int32_t *idx,
                                 double *zsel, double *dsel) {
    double zmax = z[0], zmin = z[0], gmax, dmax, gmin, dmin;
    int32_t imax = pos[0], imin = pos[0];
    for (int q = 1; q < 4; q++) {
        if (z[q] > zmax || isnan(z[q])) { zmax = z[q]; imax = pos[q]; }
        if (z[q] < zmin) { zmin = z[q]; imin = pos[q]; }
    }
    gelu64(zmax, &gmax, &dmax);
    gelu64(zmin, &gmin, &dmin);
    int m = gmin > gmax || (gmin == gmax && imin < imax);
    pooled[o] = m ? gmin : gmax;
    if (idx) idx[o] = m ? imin : imax;
    if (zsel) zsel[o] = m ? zmin : zmax;
    if (dsel) dsel[o] = m ? dmin : dmax;
}

/* pooled[b,py,px,c] = max over the window of GELU(z); idx = the winner's grid position; zsel = its z;
 * dsel (if not NULL) = GELU'(zsel).
 *
 * GELU falls on (-inf, c0] and rises on [c0, inf) (c0 = -0.7518), so its maximum over a window is at the
 * window's largest or smallest z: two GELUs per window instead of four, which are most of the cost.
 * The largest and smallest z are the first of equals in scan order, and of the two the one with the larger
 * GELU wins, the earlier on a tie: torch's winner, unless two GELU values of a window differ only by
 * rounding. */
#define SCAN(ZQ, Q)                                                         \
    do {                                                                       \
        vi up = ((ZQ) > zmax) | ((ZQ) != (ZQ)), dn = (ZQ) < zmin;             \
        zmax = sel(up, ZQ, zmax);                                             \
        imax = seli(up, bci(pos[Q]), imax);                                \
        zmin = sel(dn, ZQ, zmin);                                             \
        imin = seli(dn, bci(pos[Q]), imin);                                \
    } while (0)

/* A window's four pre-activations zq -> the pooled GELU and (each pointer optional, already at the window's
 * channels) the winner's grid position, its z and GELU' there. */
static inline void pool_select(const vf zq[4], const int32_t pos[4], float *pooled, int32_t *idx, float *zsel,
                               float *dsel) {
    vf zmax = zq[0], zmin = zq[0];
    vi imax = bci(pos[0]), imin = imax;
    for (int q = 1; q < 4; q++) SCAN(zq[q], q);
    vf gmax, dmax, gmin, dmin;
    vgelu(zmax, &gmax, &dmax);
    vgelu(zmin, &gmin, &dmin);
    vi m = (gmin > gmax) | ((gmin == gmax) & (imin < imax));
    st(pooled, sel(m, gmin, gmax));
    if (idx) sti(idx, seli(m, imin, imax));
    if (zsel) st(zsel, sel(m, zmin, zmax));
    if (dsel) st(dsel, sel(m, dmin, dmax));
}

void gelu_pool_f32(const float *z, int64_t batch, int64_t hp, int64_t wp, int64_t C, float *pooled, int32_t *idx,
                   float *zsel, float *dsel) {
    for (int64_t b = 0; b < batch; b++)
        for (int64_t py = 0; py < hp; py++)
            for (int64_t px = 0; px < wp; px++) {
                int32_t pos[4];
                window_positions(py, px, wp, pos);
                const float *zb = z + b * 4 * hp * wp * C;
                const int64_t o = ((b * hp + py) * wp + px) * C;
                for (int64_t c = 0; c < C; c += VL) {
                    vf zq[4];
                    for (int q = 0; q < 4; q++) zq[q] = ld(zb + pos[q] * C + c);
                    pool_select(zq, pos, pooled + o + c, idx + o + c, zsel ? zsel + o + c : 0,
                                dsel ? dsel + o + c : 0);
                }
            }
}

void gelu_pool_f64(const double *z, int64_t batch, int64_t hp, int64_t wp, int64_t C, double *pooled, int32_t *idx,
                   double *zsel, double *dsel) {
    for (int64_t b = 0; b < batch; b++)
        for (int64_t py = 0; py < hp; py++)
            for (int64_t px = 0; px < wp; px++) {
                int32_t pos[4];
                window_positions(py, px, wp, pos);
                const double *zb = z + b * 4 * hp * wp * C;
                const int64_t o = ((b * hp + py) * wp + px) * C;
                for (int64_t c = 0; c < C; c++) {
                    double z4[4];
                    for (int q = 0; q < 4; q++) z4[q] = zb[pos[q] * C + c];
                    pool_select64(z4, pos, o + c, pooled, idx, zsel, dsel);
                }
            }
}

/* Backward of gelu_pool given the gradient d at the pooled outputs: gs = d * dsel (the gradient at
 * the selected pre-activations, [B, hp, wp, C]) and dz on the whole grid (gs at each window's winner,
 * 0 elsewhere; every entry written). */
void gelu_pool_backward_f32(const float *d, const int32_t *idx, const float *dsel, int64_t batch, int64_t hp,
                            int64_t wp, int64_t C, float *gs, float *dz) {
    for (int64_t b = 0; b < batch; b++)
        for (int64_t py = 0; py < hp; py++)
            for (int64_t px = 0; px < wp; px++) {
                int32_t pos[4];
                window_positions(py, px, wp, pos);
                float *db = dz + b * 4 * hp * wp * C;
                const int64_t o = ((b * hp + py) * wp + px) * C;
                for (int64_t c = 0; c < C; c += VL) {
                    vf g = ld(d + o + c) * ld(dsel + o + c);
                    vi i = ldi(idx + o + c);
                    st(gs + o + c, g);
                    for (int q = 0; q < 4; q++)
                        st(db + pos[q] * C + c, sel(i == bci(pos[q]), g, bc(0.0f)));
                }
            }
}

void gelu_pool_backward_f64(const double *d, const int32_t *idx, const double *dsel, int64_t batch, int64_t hp,
                            int64_t wp, int64_t C, double *gs, double *dz) {
    for (int64_t b = 0; b < batch; b++)
        for (int64_t py = 0; py < hp; py++)
            for (int64_t px = 0; px < wp; px++) {
                int32_t pos[4];
                window_positions(py, px, wp, pos);
                double *db = dz + b * 4 * hp * wp * C;
                const int64_t o = ((b * hp + py) * wp + px) * C;
                for (int64_t c = 0; c < C; c++) {
                    double g = d[o + c] * dsel[o + c];
                    gs[o + c] = g;
                    for (int q = 0; q < 4; q++) db[pos[q] * C + c] = idx[o + c] == pos[q] ? g : 0.0;
                }
            }
}

/* The first conv fused with gelu_pool, for inputs with few channels (im2col rows of few taps): z = bias +
 * cols W is formed in registers, window by window, and never written. cols [B * 2hp * 2wp, K] (the rows of
 * the pooled grid, as gelu_pool's z), W [K, C], sums in tap order t = 0..K-1. */
void conv_gelu_pool_f32(const float *cols, const float *W, const float *bias, int64_t batch, int64_t hp, int64_t wp,
                        int64_t K, int64_t C, float *pooled, int32_t *idx, float *zsel, float *dsel) {
    for (int64_t b = 0; b < batch; b++)
        for (int64_t py = 0; py < hp; py++)
            for (int64_t px = 0; px < wp; px++) {
                int32_t pos[4];
                window_positions(py, px, wp, pos);
                const float *r[4];
                for (int q = 0; q < 4; q++) r[q] = cols + (b * 4 * hp * wp + pos[q]) * K;
                const int64_t o = ((b * hp + py) * wp + px) * C;
                for (int64_t c = 0; c < C; c += VL) {
                    vf acc[4], w = ld(bias + c);
                    for (int q = 0; q < 4; q++) acc[q] = w;
                    for (int64_t t = 0; t < K; t++) {
                        w = ld(W + t * C + c);
                        for (int q = 0; q < 4; q++) acc[q] += bc(r[q][t]) * w;
                    }
                    pool_select(acc, pos, pooled + o + c, idx + o + c, zsel ? zsel + o + c : 0,
                                dsel ? dsel + o + c : 0);
                }
            }
}

void conv_gelu_pool_f64(const double *cols, const double *W, const double *bias, int64_t batch, int64_t hp,
                        int64_t wp, int64_t K, int64_t C, double *pooled, int32_t *idx, double *zsel, double *dsel) {
    double z[4];
    for (int64_t b = 0; b < batch; b++)
        for (int64_t py = 0; py < hp; py++)
            for (int64_t px = 0; px < wp; px++) {
                int32_t pos[4];
                window_positions(py, px, wp, pos);
                const int64_t o = ((b * hp + py) * wp + px) * C;
                for (int64_t c = 0; c < C; c++) {
                    for (int q = 0; q < 4; q++) {
                        const double *r = cols + (b * 4 * hp * wp + pos[q]) * K;
                        z[q] = bias[c];
                        for (int64_t t = 0; t < K; t++) z[q] += r[t] * W[t * C + c];
                    }
                    pool_select64(z, pos, o + c, pooled, idx, zsel, dsel);
                }
            }
}

/* Backward of conv_gelu_pool for the gradient d at the pooled outputs: gs = d * dsel [B, hp, wp, C], and the
 * weight gradient dW[t][c] = sum over windows of cols[winner row][t] * gs, into dW [K, C] (dw_stride 0), or
 * per sample into dW + b * dw_stride (dw_stride > 0). dW is overwritten. */
void conv_gelu_pool_backward_f32(const float *cols, const float *d, const int32_t *idx, const float *dsel,
                                 int64_t batch, int64_t hp, int64_t wp, int64_t K, int64_t C, float *gs, float *dW,
                                 int64_t dw_stride) {
    for (int64_t b = 0; b < batch; b++) {
        float *dw = dW + b * dw_stride;
        if (b == 0 || dw_stride)
            for (int64_t i = 0; i < K * C; i++) dw[i] = 0.0f;
        for (int64_t py = 0; py < hp; py++)
            for (int64_t px = 0; px < wp; px++) {
                int32_t pos[4];
                window_positions(py, px, wp, pos);
                const float *r[4];
                for (int q = 0; q < 4; q++) r[q] = cols + (b * 4 * hp * wp + pos[q]) * K;
                const int64_t o = ((b * hp + py) * wp + px) * C;
                for (int64_t c = 0; c < C; c += VL) {
                    vf g = ld(d + o + c) * ld(dsel + o + c), m[4];
                    vi i = ldi(idx + o + c);
                    st(gs + o + c, g);
                    for (int q = 0; q < 4; q++) m[q] = sel(i == bci(pos[q]), g, bc(0.0f));
                    for (int64_t t = 0; t < K; t++) {
                        vf acc = ld(dw + t * C + c);
                        for (int q = 0; q < 4; q++) acc += bc(r[q][t]) * m[q];
                        st(dw + t * C + c, acc);
                    }
                }
            }
    }
}

void conv_gelu_pool_backward_f64(const double *cols, const double *d, const int32_t *idx, const double *dsel,
                                 int64_t batch, int64_t hp, int64_t wp, int64_t K, int64_t C, double *gs,
                                 double *dW, int64_t dw_stride) {
    for (int64_t b = 0; b < batch; b++) {
        double *dw = dW + b * dw_stride;
        if (b == 0 || dw_stride)
            for (int64_t i = 0; i < K * C; i++) dw[i] = 0.0;
        for (int64_t py = 0; py < hp; py++)
            for (int64_t px = 0; px < wp; px++) {
                const int64_t o = ((b * hp + py) * wp + px) * C;
                for (int64_t c = 0; c < C; c++) {
                    double g = d[o + c] * dsel[o + c];
                    const double *r = cols + (b * 4 * hp * wp + idx[o + c]) * K;
                    gs[o + c] = g;
                    for (int64_t t = 0; t < K; t++) dw[t * C + c] += r[t] * g;
                }
            }
    }
}

/* A conv-GELU-pool block computed directly from its channels-last input x [B, H, W, cin] (padding already in
 * x), no im2col and no z in memory: per pool window and block of output channels, the window's four
 * pre-activations stay in registers over all k*k*cin taps (tap order (ky, kx, ci), weights
 * Wt [k*k*cin, cout] as the kernel layout), then gelu_pool's selection. The outputs are as gelu_pool's
 * (idx, zsel, dsel optional). */
/* One pool window, output channels c0 .. c0 + VL NB: the four positions' pre-activations in 4 NB registers. */
static inline __attribute__((always_inline)) void direct_window(
        const int NB, const float *xb, const float *Wt, const float *bias, int64_t Wd, int64_t cin, int64_t k,
        int64_t cout, int64_t py, int64_t px, int64_t wp, int64_t c0, int64_t o, float *pooled, int32_t *idx,
        float *zsel, float *dsel) {
    vf acc[MAXNB][4];
    for (int h = 0; h < NB; h++)
        for (int q = 0; q < 4; q++) acc[h][q] = ld(bias + c0 + VL * h);
    direct_term(NB, acc, xb, Wt, Wd, cin, k, cout, py, px, c0);
    int32_t pos[4];
    window_positions(py, px, wp, pos);
    for (int h = 0; h < NB; h++)
        pool_select(acc[h], pos, pooled + o + VL * h, idx ? idx + o + VL * h : 0, zsel ? zsel + o + VL * h : 0,
                    dsel ? dsel + o + VL * h : 0);
}

/* Channels in blocks of up to MAXNB vectors (4 MAXNB accumulators: enough independent FMAs to cover their
 * latency). Requires cout % VL == 0. */
void conv_direct_gelu_pool_f32(const float *x, const float *Wt, const float *bias, int64_t batch, int64_t H,
                               int64_t Wd, int64_t cin, int64_t k, int64_t cout, int64_t hp, int64_t wp,
                               float *pooled, int32_t *idx, float *zsel, float *dsel) {
    for (int64_t b = 0; b < batch; b++) {
        const float *xb = x + b * H * Wd * cin;
        for (int64_t c0 = 0; c0 < cout;) {
            const int nb = channel_blocks((cout - c0) / VL);
            for (int64_t py = 0; py < hp; py++)
                for (int64_t px = 0; px < wp; px++) {
                    const int64_t o = ((b * hp + py) * wp + px) * cout + c0;
                    if (nb == MAXNB)
                        direct_window(MAXNB, xb, Wt, bias, Wd, cin, k, cout, py, px, wp, c0, o, pooled, idx, zsel,
                                      dsel);
                    else if (nb == 3)
                        direct_window(3, xb, Wt, bias, Wd, cin, k, cout, py, px, wp, c0, o, pooled, idx, zsel, dsel);
                    else if (nb == 2)
                        direct_window(2, xb, Wt, bias, Wd, cin, k, cout, py, px, wp, c0, o, pooled, idx, zsel, dsel);
                    else
                        direct_window(1, xb, Wt, bias, Wd, cin, k, cout, py, px, wp, c0, o, pooled, idx, zsel, dsel);
                }
            c0 += VL * nb;
        }
    }
}

void conv_direct_gelu_pool_f64(const double *x, const double *Wt, const double *bias, int64_t batch, int64_t H,
                               int64_t Wd, int64_t cin, int64_t k, int64_t cout, int64_t hp, int64_t wp,
                               double *pooled, int32_t *idx, double *zsel, double *dsel) {
    double z[4];
    for (int64_t b = 0; b < batch; b++)
        for (int64_t py = 0; py < hp; py++)
            for (int64_t px = 0; px < wp; px++) {
                int32_t pos[4];
                window_positions(py, px, wp, pos);
                const int64_t o = ((b * hp + py) * wp + px) * cout;
                for (int64_t c = 0; c < cout; c++) {
                    for (int q = 0; q < 4; q++) {
                        const int64_t y = 2 * py + q / 2, xx = 2 * px + q % 2;
                        z[q] = bias[c];
                        for (int64_t ky = 0; ky < k; ky++)
                            for (int64_t kx = 0; kx < k; kx++)
                                for (int64_t ci = 0; ci < cin; ci++)
                                    z[q] += x[((b * H + y + ky) * Wd + xx + kx) * cin + ci] *
                                            Wt[((ky * k + kx) * cin + ci) * cout + c];
                    }
                    pool_select64(z, pos, o + c, pooled, idx, zsel, dsel);
                }
            }
}

/* The backward of a direct block (conv_direct_gelu_pool), given gs, the gradient at each window's selected
 * pre-activation [B, hp, wp, cout], and the winners idx. Each window passes one gradient per channel, so
 * rather than dense products over the whole grid (three quarters of it zero) each (window, channel) adds
 * its one input patch: k rows of k * cin contiguous values, channels-last.
 *
 * weight: dWT[co][(ky, kx, ci)] = sum over windows of gs * x[winner + (ky, kx)][ci], into dWT [cout, k*k*cin]
 *         (transposed kernel layout), per sample at dw_stride (> 0) or summed over the batch (0); overwritten.
 *         float: each row's run of k * cin values kept in registers over the windows, chunk by chunk.
 * input:  dx[b][winner + (ky, kx)][ci] += gs * WT[co][(ky, kx, ci)], WT the transposed weights; dx
 *         [B, H, W, cin] (padding included) is overwritten.
 * Every sum runs over the windows in the same order in each variant. */

/* Offset in a channels-last [H, Wd, cin] input of the winner pos of window (py, px): its row and column in the
 * window from pos minus the window's first position (no division; a stray index stays inside the window). */
static inline int64_t winner_at(int64_t pos, int64_t py, int64_t px, int64_t w2, int64_t Wd, int64_t cin) {
    const int64_t rel = pos - (2 * py * w2 + 2 * px), dy = rel >= w2, dx = (rel - dy * w2) & 1;
    return ((2 * py + dy) * Wd + 2 * px + dx) * cin;
}

#define POOL_CONV_BACKWARD(T, SFX)                                                                            \
    static void pool_conv_backward_weight_plain_##SFX(const T *x, const T *gs, const int32_t *idx, int64_t batch, \
                                                     int64_t H, int64_t Wd, int64_t cin, int64_t k, int64_t cout, \
                                                     int64_t hp, int64_t wp, T *dWT, int64_t dw_stride) {      \
        const int64_t taps = k * k * cin, run = k * cin, w2 = 2 * wp, n = hp * wp;                              \
        for (int64_t b = 0; b < batch; b++) {                                                                 \
            T *dw = dWT + b * dw_stride;                                                                      \
            if (b == 0 || dw_stride)                                                                          \
                for (int64_t i = 0; i < cout * taps; i++) dw[i] = 0;                                          \
            const T *xb = x + b * H * Wd * cin;                                                               \
            for (int64_t co = 0; co < cout; co++) {                                                           \
                T *row = dw + co * taps;                                                                      \
                for (int64_t py = 0; py < hp; py++)                                                           \
                    for (int64_t px = 0; px < wp; px++) {                                                     \
                        const int64_t o = (b * n + py * wp + px) * cout + co;                                 \
                        const T g = gs[o];                                                                    \
                        const T *src = xb + winner_at(idx[o], py, px, w2, Wd, cin);                           \
                        for (int64_t ky = 0; ky < k; ky++)                                                    \
                            for (int64_t j = 0; j < run; j++) row[ky * run + j] += g * src[ky * Wd * cin + j]; \
                    }                                                                                         \
            }                                                                                                 \
        }                                                                                                     \
    }                                                                                                         \
    static void pool_conv_backward_input_plain_##SFX(const T *gs, const int32_t *idx, const T *WT, int64_t batch, \
                                                    int64_t H, int64_t Wd, int64_t cin, int64_t k, int64_t cout, \
                                                    int64_t hp, int64_t wp, T *dx) {                           \
        const int64_t taps = k * k * cin, run = k * cin, w2 = 2 * wp, n = hp * wp;                              \
        for (int64_t i = 0; i < batch * H * Wd * cin; i++) dx[i] = 0;                                         \
        for (int64_t b = 0; b < batch; b++) {                                                                 \
            T *xb = dx + b * H * Wd * cin;                                                                    \
            for (int64_t py = 0; py < hp; py++)                                                               \
                for (int64_t px = 0; px < wp; px++)                                                           \
                    for (int64_t co = 0; co < cout; co++) {                                                   \
                        const int64_t o = (b * n + py * wp + px) * cout + co;                                 \
                        const T g = gs[o];                                                                    \
                        const T *src = WT + co * taps;                                                        \
                        T *dst = xb + winner_at(idx[o], py, px, w2, Wd, cin);                                 \
                        for (int64_t ky = 0; ky < k; ky++)                                                    \
                            for (int64_t j = 0; j < run; j++) dst[ky * Wd * cin + j] += g * src[ky * run + j]; \
                    }                                                                                         \
        }                                                                                                     \
    }

POOL_CONV_BACKWARD(float, f32)
POOL_CONV_BACKWARD(double, f64)

void pool_conv_backward_input_f64(const double *gs, const int32_t *idx, const double *WT, int64_t batch, int64_t H,
                                  int64_t Wd, int64_t cin, int64_t k, int64_t cout, int64_t hp, int64_t wp,
                                  double *dx) {
    pool_conv_backward_input_plain_f64(gs, idx, WT, batch, H, Wd, cin, k, cout, hp, wp, dx);
}

void pool_conv_backward_weight_f64(const double *x, const double *gs, const int32_t *idx, int64_t batch, int64_t H,
                                   int64_t Wd, int64_t cin, int64_t k, int64_t cout, int64_t hp, int64_t wp,
                                   double *dWT, int64_t dw_stride) {
    pool_conv_backward_weight_plain_f64(x, gs, idx, batch, H, Wd, cin, k, cout, hp, wp, dWT, dw_stride);
}

/* vectors of a row chunk kept in registers */
#define RB (4 * MAXNB)

/* row[0 .. NV VL) += sum over sample b's windows of gs[window][co] * (the winner's input at tap offset off). */
static inline __attribute__((always_inline)) void weight_chunk(const int NV, float *row, const float *xb,
        const float *gs, const int32_t *idx, int64_t b, int64_t co, int64_t cout, int64_t hp, int64_t wp, int64_t Wd,
        int64_t cin, int64_t off) {
    vf acc[RB];
    for (int t = 0; t < NV; t++) acc[t] = ld(row + VL * t);
    for (int64_t py = 0; py < hp; py++)
        for (int64_t px = 0; px < wp; px++) {
            const int64_t o = (b * hp * wp + py * wp + px) * cout + co;
            const vf g = bc(gs[o]);
            const float *src = xb + winner_at(idx[o], py, px, 2 * wp, Wd, cin) + off;
            for (int t = 0; t < NV; t++) acc[t] += g * ld(src + VL * t);
        }
    for (int t = 0; t < NV; t++) st(row + VL * t, acc[t]);
}

#define WEIGHT_CHUNK_CASE(NV) \
    case NV: weight_chunk(NV, row + ky * run + j0, xb, gs, idx, b, co, cout, hp, wp, Wd, cin, ky * Wd * cin + j0); break;

void pool_conv_backward_weight_f32(const float *x, const float *gs, const int32_t *idx, int64_t batch, int64_t H,
                                   int64_t Wd, int64_t cin, int64_t k, int64_t cout, int64_t hp, int64_t wp,
                                   float *dWT, int64_t dw_stride) {
    const int64_t taps = k * k * cin, run = k * cin;
    if (run % VL) {
        pool_conv_backward_weight_plain_f32(x, gs, idx, batch, H, Wd, cin, k, cout, hp, wp, dWT, dw_stride);
        return;
    }
    for (int64_t b = 0; b < batch; b++) {
        float *dw = dWT + b * dw_stride;
        if (b == 0 || dw_stride) memset(dw, 0, sizeof(float) * cout * taps);
        const float *xb = x + b * H * Wd * cin;
        for (int64_t co = 0; co < cout; co++) {
            float *row = dw + co * taps;
            for (int64_t ky = 0; ky < k; ky++)
                for (int64_t j0 = 0; j0 < run; j0 += VL * RB) {
                    const int64_t left = (run - j0) / VL;
                    switch (left < RB ? left : RB) {
                        WEIGHT_CHUNK_CASE(1) WEIGHT_CHUNK_CASE(2) WEIGHT_CHUNK_CASE(3) WEIGHT_CHUNK_CASE(4)
                        WEIGHT_CHUNK_CASE(5) WEIGHT_CHUNK_CASE(6) WEIGHT_CHUNK_CASE(7) WEIGHT_CHUNK_CASE(8)
                        WEIGHT_CHUNK_CASE(9) WEIGHT_CHUNK_CASE(10) WEIGHT_CHUNK_CASE(11) WEIGHT_CHUNK_CASE(12)
#if RB > 12
                        WEIGHT_CHUNK_CASE(13) WEIGHT_CHUNK_CASE(14) WEIGHT_CHUNK_CASE(15) WEIGHT_CHUNK_CASE(16)
#endif
                    }
                }
        }
    }
}

/* dst[0 .. NV VL) += g * src[0 .. NV VL): one row of a patch */
static inline __attribute__((always_inline)) void axpy_run(const int NV, float *dst, vf g, const float *src) {
    for (int t = 0; t < NV; t++) st(dst + VL * t, ld(dst + VL * t) + g * ld(src + VL * t));
}

#define INPUT_RUN_CASE(NV) \
    case NV: for (int64_t ky = 0; ky < k; ky++) axpy_run(NV, dst + ky * Wd * cin, g, src + ky * run); break;

void pool_conv_backward_input_f32(const float *gs, const int32_t *idx, const float *WT, int64_t batch, int64_t H,
                                  int64_t Wd, int64_t cin, int64_t k, int64_t cout, int64_t hp, int64_t wp,
                                  float *dx) {
    const int64_t taps = k * k * cin, run = k * cin, w2 = 2 * wp, n = hp * wp;
    if (run % VL || run / VL > 24) {
        pool_conv_backward_input_plain_f32(gs, idx, WT, batch, H, Wd, cin, k, cout, hp, wp, dx);
        return;
    }
    memset(dx, 0, sizeof(float) * batch * H * Wd * cin);
    for (int64_t b = 0; b < batch; b++) {
        float *xb = dx + b * H * Wd * cin;
        for (int64_t py = 0; py < hp; py++)
            for (int64_t px = 0; px < wp; px++)
                for (int64_t co = 0; co < cout; co++) {
                    const int64_t o = (b * n + py * wp + px) * cout + co;
                    const vf g = bc(gs[o]);
                    const float *src = WT + co * taps;
                    float *dst = xb + winner_at(idx[o], py, px, w2, Wd, cin);
                    switch (run / VL) {
                        INPUT_RUN_CASE(1) INPUT_RUN_CASE(2) INPUT_RUN_CASE(3) INPUT_RUN_CASE(4) INPUT_RUN_CASE(5)
                        INPUT_RUN_CASE(6) INPUT_RUN_CASE(7) INPUT_RUN_CASE(8) INPUT_RUN_CASE(9) INPUT_RUN_CASE(10)
                        INPUT_RUN_CASE(11) INPUT_RUN_CASE(12) INPUT_RUN_CASE(13) INPUT_RUN_CASE(14)
                        INPUT_RUN_CASE(15) INPUT_RUN_CASE(16) INPUT_RUN_CASE(17) INPUT_RUN_CASE(18)
                        INPUT_RUN_CASE(19) INPUT_RUN_CASE(20) INPUT_RUN_CASE(21) INPUT_RUN_CASE(22)
                        INPUT_RUN_CASE(23) INPUT_RUN_CASE(24)
                    }
                }
    }
}
