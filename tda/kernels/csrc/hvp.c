/* The tangent half of Hessian-vector products through the CNNs' conv-GELU-maxpool blocks (Pearlmutter's
 * R-operator, forward over reverse): R tangent vectors at once, every max-pool's winners fixed by the primal
 * pass, so only the pre-activations at the winners matter, forward and backward.
 *
 * Layout as in gelu_pool.c: channels-last inputs x[b][Y][X][ci] (padding included), kernel-layout weights
 * W[(ky, kx, ci)][c], winners idx[b][window][c] = the grid position Y * 2wp + X of the selected entry of
 * each pool window. "Tangent vector r" selects, through a stride per argument (0: shared by every r), the
 * weights or the input of r; sample b of vector r is (r, b). Each kernel adds two terms, the second
 * optional (NULL): in the R-operator every conv product has a primal and a tangent factor, d(x W) =
 * x dW + dx W, and both are summed in the same registers.
 *
 *   conv_winners:          out[r][b][w][c] = bias_r[c] + sum_taps x1_{r,b}[winner + tap] W1_r[tap][c] (+ x2 W2),
 *                          and optionally the next block's tangent input nxt_{r,b} = out * gain (GELU' at the
 *                          winners) inside a zero border of `pad`
 *   cols_winners:          the same for an im2col of the first layer's input (few taps)
 *   conv_backward_weight:  dWT_r[c][tap] = sum_b sum_w g1_{r,b}[w][c] x1_{r,b}[winner + tap] (+ g2 x2)
 *   cols_backward_weight:  the same from an im2col, into the kernel layout dW_r[tap][c]
 *   conv_backward_input:   dx_{r,b}[winner + tap] = sum_w sum_c g1_{r,b}[w][c] WT1_r[c][tap] (+ g2 WT2), or
 *                          instead the previous block's gradient at its winners' pre-activations,
 *                          dgs = dx (inside the padding) * gain + e * dz (GELU' and GELU'' terms of the R-operator)
 *
 * float: VL lanes at once (16 with AVX-512, else 8; channels a multiple of VL); double: plain loops.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"


/* the window's accumulator of the winner's position, lane by lane */
static inline vf pick(const vf acc[4], vi iv, const int32_t pos[4]) {
    vf s = acc[0];
    for (int q = 1; q < 4; q++) s = sel(iv == bci(pos[q]), acc[q], s);
    return s;
}

/* ---------------------------------------------------------------- forward: pre-activations at the winners */

/* The epilogue of a window: its tangent pre-activations s at the winners, stored; times GELU' into the next block's
 * tangent input (nx: that input at this window's position, or NULL). */
static inline void store_winner(float *ob, float *nx, const float *gb, vf s, int64_t c) {
    st(ob + c, s);
    if (nx) st(nx + c, s * ld(gb + c));
}

static inline __attribute__((always_inline)) void winners_window(const int NB, const float *xb1, const float *W1,
        const float *xb2, const float *W2, const float *bias, const int32_t *ib, int64_t Wd, int64_t cin, int64_t k,
        int64_t C, int64_t py, int64_t px, int64_t wp, int64_t c0, float *ob, float *nx, const float *gb) {
    vf acc[MAXNB][4];
    for (int h = 0; h < NB; h++)
        for (int q = 0; q < 4; q++) acc[h][q] = bias ? ld(bias + c0 + VL * h) : bc(0.0f);
    direct_term(NB, acc, xb1, W1, Wd, cin, k, C, py, px, c0);
    if (xb2) direct_term(NB, acc, xb2, W2, Wd, cin, k, C, py, px, c0);
    int32_t pos[4];
    window_positions(py, px, wp, pos);
    for (int h = 0; h < NB; h++) {
        const int64_t c = c0 + VL * h;
        store_winner(ob, nx, gb, pick(acc[h], ldi(ib + c), pos), c);
    }
}

/* The zero border of the next block's tangent input [hp + 2 pad, wp + 2 pad, C] of one (r, b). */
#define ZERO_BORDER(T, nb, hp, wp, pad, C)                                                                      \
    do {                                                                                                       \
        const int64_t W2_ = (wp) + 2 * (pad);                                                                  \
        for (int64_t y_ = 0; y_ < (hp) + 2 * (pad); y_++)                                                      \
            for (int64_t x_ = 0; x_ < W2_; x_++)                                                               \
                if (y_ < (pad) || y_ >= (hp) + (pad) || x_ < (pad) || x_ >= (wp) + (pad))                      \
                    memset((nb) + (y_ * W2_ + x_) * (C), 0, sizeof(T) * (C));                                  \
    } while (0)

/* where window (py, px) of (r, b) lands in the next block's padded tangent input */
static inline int64_t next_at(int64_t rb, int64_t py, int64_t px, int64_t hp, int64_t wp, int64_t pad, int64_t C) {
    return ((rb * (hp + 2 * pad) + py + pad) * (wp + 2 * pad) + px + pad) * C;
}

void hvp_conv_winners_f32(const float *x1, int64_t x1_r, const float *W1, int64_t w1_r, const float *x2, int64_t x2_r,
                          const float *W2, int64_t w2_r, const float *bias, int64_t bias_r, const int32_t *idx, int64_t R,
                          int64_t B, int64_t H, int64_t Wd, int64_t cin, int64_t k, int64_t C, int64_t hp, int64_t wp,
                          float *out, const float *gain, float *nxt, int64_t pad) {
    const int64_t n = hp * wp, xs = H * Wd * cin;
    for (int64_t r = 0; r < R; r++)
        for (int64_t b = 0; b < B; b++) {
            const float *xb1 = x1 + r * x1_r + b * xs, *Wr1 = W1 + r * w1_r, *br = bias ? bias + r * bias_r : 0;
            const float *xb2 = x2 ? x2 + r * x2_r + b * xs : 0, *Wr2 = x2 ? W2 + r * w2_r : 0;
            if (nxt) ZERO_BORDER(float, nxt + (r * B + b) * (hp + 2 * pad) * (wp + 2 * pad) * C, hp, wp, pad, C);
            for (int64_t c0 = 0; c0 < C;) {
                const int nb = channel_blocks((C - c0) / VL);
                for (int64_t py = 0; py < hp; py++)
                    for (int64_t px = 0; px < wp; px++) {
                        const int64_t w = py * wp + px;
                        const int32_t *ib = idx + (b * n + w) * C;
                        const float *gb = gain ? gain + (b * n + w) * C : 0;
                        float *ob = out + ((r * B + b) * n + w) * C;
                        float *nx = nxt ? nxt + next_at(r * B + b, py, px, hp, wp, pad, C) : 0;
                        if (nb == MAXNB)
                            winners_window(MAXNB, xb1, Wr1, xb2, Wr2, br, ib, Wd, cin, k, C, py, px, wp, c0, ob, nx, gb);
                        else if (nb == 3)
                            winners_window(3, xb1, Wr1, xb2, Wr2, br, ib, Wd, cin, k, C, py, px, wp, c0, ob, nx, gb);
                        else if (nb == 2)
                            winners_window(2, xb1, Wr1, xb2, Wr2, br, ib, Wd, cin, k, C, py, px, wp, c0, ob, nx, gb);
                        else
                            winners_window(1, xb1, Wr1, xb2, Wr2, br, ib, Wd, cin, k, C, py, px, wp, c0, ob, nx, gb);
                    }
                c0 += VL * nb;
            }
        }
}

void hvp_cols_winners_f32(const float *cols, const float *W, int64_t w_r, const float *bias, int64_t bias_r,
                          const int32_t *idx, int64_t R, int64_t B, int64_t hp, int64_t wp, int64_t K, int64_t C,
                          float *out, const float *gain, float *nxt, int64_t pad) {
    const int64_t n = hp * wp;
    for (int64_t r = 0; r < R; r++)
        for (int64_t b = 0; b < B; b++) {
            if (nxt) ZERO_BORDER(float, nxt + (r * B + b) * (hp + 2 * pad) * (wp + 2 * pad) * C, hp, wp, pad, C);
            for (int64_t py = 0; py < hp; py++)
                for (int64_t px = 0; px < wp; px++) {
                    int32_t pos[4];
                    window_positions(py, px, wp, pos);
                    const float *row[4];
                    for (int q = 0; q < 4; q++) row[q] = cols + (b * 4 * n + pos[q]) * K;
                    const int64_t w = py * wp + px;
                    const int32_t *ib = idx + (b * n + w) * C;
                    const float *gb = gain ? gain + (b * n + w) * C : 0;
                    float *ob = out + ((r * B + b) * n + w) * C;
                    float *nx = nxt ? nxt + next_at(r * B + b, py, px, hp, wp, pad, C) : 0;
                    for (int64_t c = 0; c < C; c += VL) {
                        const vf b0 = bias ? ld(bias + r * bias_r + c) : bc(0.0f);
                        vf acc[4] = {b0, b0, b0, b0};
                        const float *Wc = W + r * w_r + c;
                        for (int64_t t = 0; t < K; t++) {
                            const vf wv = ld(Wc + t * C);
                            for (int q = 0; q < 4; q++) acc[q] += bc(row[q][t]) * wv;
                        }
                        store_winner(ob, nx, gb, pick(acc, ldi(ib + c), pos), c);
                    }
                }
        }
}

/* ---------------------------------------------------------------- backward: the winners' patches */

/* row[tap] += a * src1[tap] (+ b2 * src2[tap]) over one k x k patch: k runs of k * cin contiguous values */
static inline void patch_axpy(float *row, const float *s1, float a, const float *s2, float b2, int64_t k,
                              int64_t run, int64_t step) {
    const vf va = bc(a), vb = bc(b2);
    for (int64_t ky = 0; ky < k; ky++, s1 += step, s2 = s2 ? s2 + step : 0, row += run) {
        int64_t j = 0;
        if (s2) {
            for (; j + VL <= run; j += VL) st(row + j, ld(row + j) + va * ld(s1 + j) + vb * ld(s2 + j));
            for (; j < run; j++) row[j] += a * s1[j] + b2 * s2[j];
        } else {
            for (; j + VL <= run; j += VL) st(row + j, ld(row + j) + va * ld(s1 + j));
            for (; j < run; j++) row[j] += a * s1[j];
        }
    }
}

/* the scatter's mirror: dst[tap] += a * s1[tap] (+ b2 * s2[tap]), dst k runs at `step`, s contiguous */
static inline void patch_scatter(float *dst, const float *s1, float a, const float *s2, float b2, int64_t k,
                                 int64_t run, int64_t step) {
    const vf va = bc(a), vb = bc(b2);
    for (int64_t ky = 0; ky < k; ky++, s1 += run, s2 = s2 ? s2 + run : 0, dst += step) {
        int64_t j = 0;
        if (s2) {
            for (; j + VL <= run; j += VL) st(dst + j, ld(dst + j) + va * ld(s1 + j) + vb * ld(s2 + j));
            for (; j < run; j++) dst[j] += a * s1[j] + b2 * s2[j];
        } else {
            for (; j + VL <= run; j += VL) st(dst + j, ld(dst + j) + va * ld(s1 + j));
            for (; j < run; j++) dst[j] += a * s1[j];
        }
    }
}

void hvp_conv_backward_weight_f32(const float *x1, int64_t x1_r, const float *g1, int64_t g1_r, const float *x2,
                                  int64_t x2_r, const float *g2, int64_t g2_r, const int32_t *idx, int64_t R,
                                  int64_t B, int64_t H, int64_t Wd, int64_t cin, int64_t k, int64_t C, int64_t hp,
                                  int64_t wp, float *dWT) {
    const int64_t taps = k * k * cin, run = k * cin, w2 = 2 * wp, n = hp * wp, xs = H * Wd * cin;
    for (int64_t r = 0; r < R; r++) {
        float *dw = dWT + r * C * taps;
        memset(dw, 0, sizeof(float) * C * taps);
        for (int64_t b = 0; b < B; b++) {
            const float *xb1 = x1 + r * x1_r + b * xs, *gb1 = g1 + r * g1_r + b * n * C;
            const float *xb2 = x2 ? x2 + r * x2_r + b * xs : 0, *gb2 = x2 ? g2 + r * g2_r + b * n * C : 0;
            const int32_t *ib = idx + b * n * C;
            for (int64_t co = 0; co < C; co++)
                for (int64_t w = 0; w < n; w++) {
                    const int64_t o = w * C + co, pos = ib[o], at = ((pos / w2) * Wd + pos % w2) * cin;
                    patch_axpy(dw + co * taps, xb1 + at, gb1[o], xb2 ? xb2 + at : 0, xb2 ? gb2[o] : 0.0f, k, run,
                               Wd * cin);
                }
        }
    }
}

/* The R-operator's step from a block's input back to the previous block's winners: with dx the gradient at this
 * block's padded input (pad wide), dgs[w][c] = dx[inside] * gain[w][c] + e[w][c] * dz[w][c] over the previous
 * block's pooled grid (hp2 x wp2 = H - 2 pad, Wd - 2 pad). */
#define PREVIOUS_WINNERS(T, xb, gain, e, dz, dgs, H, Wd, cin, pad)                                              \
    do {                                                                                                       \
        const int64_t hp2_ = (H) - 2 * (pad), wp2_ = (Wd) - 2 * (pad);                                         \
        for (int64_t y_ = 0; y_ < hp2_; y_++)                                                                  \
            for (int64_t x_ = 0; x_ < wp2_; x_++) {                                                            \
                const T *s_ = (xb) + ((y_ + (pad)) * (Wd) + x_ + (pad)) * (cin);                               \
                const int64_t o_ = (y_ * wp2_ + x_) * (cin);                                                   \
                for (int64_t c_ = 0; c_ < (cin); c_++)                                                         \
                    (dgs)[o_ + c_] = s_[c_] * (gain)[o_ + c_] + (e)[o_ + c_] * (dz)[o_ + c_];                  \
            }                                                                                                  \
    } while (0)

int hvp_conv_backward_input_f32(const float *g1, int64_t g1_r, const float *WT1, int64_t wt1_r, const float *g2,
                                 int64_t g2_r, const float *WT2, int64_t wt2_r, const int32_t *idx, int64_t R,
                                 int64_t B, int64_t H, int64_t Wd, int64_t cin, int64_t k, int64_t C, int64_t hp,
                                 int64_t wp, float *dx, const float *gain, const float *e, const float *dz,
                                 float *dgs, int64_t pad) {
    const int64_t taps = k * k * cin, run = k * cin, w2 = 2 * wp, n = hp * wp, xs = H * Wd * cin;
    const int64_t n2 = (H - 2 * pad) * (Wd - 2 * pad) * cin;  /* the previous block's winners, per sample */
    float *scratch = dgs ? malloc(sizeof(float) * xs) : 0;
    if (dgs && !scratch) return -1;
    for (int64_t r = 0; r < R; r++)
        for (int64_t b = 0; b < B; b++) {
            float *xb = dgs ? scratch : dx + (r * B + b) * xs;
            memset(xb, 0, sizeof(float) * xs);
            const float *gb1 = g1 + r * g1_r + b * n * C, *gb2 = g2 ? g2 + r * g2_r + b * n * C : 0;
            const float *wr1 = WT1 + r * wt1_r, *wr2 = g2 ? WT2 + r * wt2_r : 0;
            const int32_t *ib = idx + b * n * C;
            for (int64_t w = 0; w < n; w++)
                for (int64_t co = 0; co < C; co++) {
                    const int64_t o = w * C + co, pos = ib[o];
                    patch_scatter(xb + ((pos / w2) * Wd + pos % w2) * cin, wr1 + co * taps, gb1[o],
                                  gb2 ? wr2 + co * taps : 0, gb2 ? gb2[o] : 0.0f, k, run, Wd * cin);
                }
            if (dgs)
                PREVIOUS_WINNERS(float, xb, gain + b * n2, e + b * n2, dz + (r * B + b) * n2,
                                 dgs + (r * B + b) * n2, H, Wd, cin, pad);
        }
    free(scratch);
    return 0;
}

void hvp_cols_backward_weight_f32(const float *cols, const float *g, int64_t g_r, const int32_t *idx, int64_t R,
                                  int64_t B, int64_t hp, int64_t wp, int64_t K, int64_t C, float *dW, int64_t dw_r) {
    const int64_t n = hp * wp;
    for (int64_t r = 0; r < R; r++) {
        float *dw = dW + r * dw_r;
        memset(dw, 0, sizeof(float) * K * C);
        for (int64_t b = 0; b < B; b++)
            for (int64_t py = 0; py < hp; py++)
                for (int64_t px = 0; px < wp; px++) {
                    int32_t pos[4];
                    window_positions(py, px, wp, pos);
                    const float *row[4];
                    for (int q = 0; q < 4; q++) row[q] = cols + (b * 4 * n + pos[q]) * K;
                    const int64_t o = (b * n + py * wp + px) * C;
                    for (int64_t c = 0; c < C; c += VL) {
                        const vf gv = ld(g + r * g_r + o + c);
                        const vi iv = ldi(idx + o + c);
                        vf m[4];
                        for (int q = 0; q < 4; q++) m[q] = sel(iv == bci(pos[q]), gv, bc(0.0f));
                        for (int64_t t = 0; t < K; t++) {
                            vf acc = ld(dw + t * C + c);
                            for (int q = 0; q < 4; q++) acc += bc(row[q][t]) * m[q];
                            st(dw + t * C + c, acc);
                        }
                    }
                }
    }
}

/* ---------------------------------------------------------------- double: the same sums, plain loops */

void hvp_conv_winners_f64(const double *x1, int64_t x1_r, const double *W1, int64_t w1_r, const double *x2,
                          int64_t x2_r, const double *W2, int64_t w2_r, const double *bias, int64_t bias_r,
                          const int32_t *idx, int64_t R, int64_t B, int64_t H, int64_t Wd, int64_t cin, int64_t k,
                          int64_t C, int64_t hp, int64_t wp, double *out, const double *gain, double *nxt, int64_t pad) {
    const int64_t n = hp * wp, xs = H * Wd * cin, w2 = 2 * wp;
    for (int64_t r = 0; r < R; r++)
        for (int64_t b = 0; b < B; b++) {
            if (nxt) ZERO_BORDER(double, nxt + (r * B + b) * (hp + 2 * pad) * (wp + 2 * pad) * C, hp, wp, pad, C);
            for (int64_t w = 0; w < n; w++)
                for (int64_t c = 0; c < C; c++) {
                    const int64_t pos = idx[(b * n + w) * C + c], at = ((pos / w2) * Wd + pos % w2) * cin;
                    double s = bias ? bias[r * bias_r + c] : 0.0;
                    for (int term = 0; term < (x2 ? 2 : 1); term++) {
                        const double *xb = term ? x2 + r * x2_r + b * xs : x1 + r * x1_r + b * xs;
                        const double *Wr = term ? W2 + r * w2_r : W1 + r * w1_r;
                        for (int64_t ky = 0; ky < k; ky++)
                            for (int64_t kx = 0; kx < k; kx++)
                                for (int64_t ci = 0; ci < cin; ci++)
                                    s += xb[at + (ky * Wd + kx) * cin + ci] * Wr[((ky * k + kx) * cin + ci) * C + c];
                    }
                    out[((r * B + b) * n + w) * C + c] = s;
                    if (nxt) nxt[next_at(r * B + b, w / wp, w % wp, hp, wp, pad, C) + c] = s * gain[(b * n + w) * C + c];
                }
        }
}

void hvp_cols_winners_f64(const double *cols, const double *W, int64_t w_r, const double *bias, int64_t bias_r,
                          const int32_t *idx, int64_t R, int64_t B, int64_t hp, int64_t wp, int64_t K, int64_t C,
                          double *out, const double *gain, double *nxt, int64_t pad) {
    const int64_t n = hp * wp;
    for (int64_t r = 0; r < R; r++)
        for (int64_t b = 0; b < B; b++) {
            if (nxt) ZERO_BORDER(double, nxt + (r * B + b) * (hp + 2 * pad) * (wp + 2 * pad) * C, hp, wp, pad, C);
            for (int64_t w = 0; w < n; w++)
                for (int64_t c = 0; c < C; c++) {
                    const double *row = cols + (b * 4 * n + idx[(b * n + w) * C + c]) * K;
                    double s = bias ? bias[r * bias_r + c] : 0.0;
                    for (int64_t t = 0; t < K; t++) s += row[t] * W[r * w_r + t * C + c];
                    out[((r * B + b) * n + w) * C + c] = s;
                    if (nxt) nxt[next_at(r * B + b, w / wp, w % wp, hp, wp, pad, C) + c] = s * gain[(b * n + w) * C + c];
                }
        }
}

void hvp_conv_backward_weight_f64(const double *x1, int64_t x1_r, const double *g1, int64_t g1_r, const double *x2,
                                  int64_t x2_r, const double *g2, int64_t g2_r, const int32_t *idx, int64_t R,
                                  int64_t B, int64_t H, int64_t Wd, int64_t cin, int64_t k, int64_t C, int64_t hp,
                                  int64_t wp, double *dWT) {
    const int64_t taps = k * k * cin, run = k * cin, w2 = 2 * wp, n = hp * wp, xs = H * Wd * cin;
    for (int64_t r = 0; r < R; r++) {
        double *dw = dWT + r * C * taps;
        for (int64_t i = 0; i < C * taps; i++) dw[i] = 0.0;
        for (int64_t b = 0; b < B; b++)
            for (int64_t co = 0; co < C; co++)
                for (int64_t w = 0; w < n; w++) {
                    const int64_t o = (b * n + w) * C + co, pos = idx[o], at = ((pos / w2) * Wd + pos % w2) * cin;
                    for (int term = 0; term < (x2 ? 2 : 1); term++) {
                        const double *src = (term ? x2 + r * x2_r : x1 + r * x1_r) + b * xs + at;
                        const double a = term ? g2[r * g2_r + o] : g1[r * g1_r + o];
                        for (int64_t ky = 0; ky < k; ky++)
                            for (int64_t j = 0; j < run; j++) dw[co * taps + ky * run + j] += a * src[ky * Wd * cin + j];
                    }
                }
    }
}

int hvp_conv_backward_input_f64(const double *g1, int64_t g1_r, const double *WT1, int64_t wt1_r, const double *g2,
                                 int64_t g2_r, const double *WT2, int64_t wt2_r, const int32_t *idx, int64_t R,
                                 int64_t B, int64_t H, int64_t Wd, int64_t cin, int64_t k, int64_t C, int64_t hp,
                                 int64_t wp, double *dx, const double *gain, const double *e, const double *dz,
                                 double *dgs, int64_t pad) {
    const int64_t taps = k * k * cin, run = k * cin, w2 = 2 * wp, n = hp * wp, xs = H * Wd * cin;
    const int64_t n2 = (H - 2 * pad) * (Wd - 2 * pad) * cin;
    double *scratch = dgs ? malloc(sizeof(double) * xs) : 0;
    if (dgs && !scratch) return -1;
    for (int64_t r = 0; r < R; r++)
        for (int64_t b = 0; b < B; b++) {
            double *xb = dgs ? scratch : dx + (r * B + b) * xs;
            for (int64_t i = 0; i < xs; i++) xb[i] = 0.0;
            for (int64_t w = 0; w < n; w++)
                for (int64_t co = 0; co < C; co++) {
                    const int64_t o = (b * n + w) * C + co, pos = idx[o];
                    double *dst = xb + ((pos / w2) * Wd + pos % w2) * cin;
                    for (int term = 0; term < (g2 ? 2 : 1); term++) {
                        const double *src = (term ? WT2 + r * wt2_r : WT1 + r * wt1_r) + co * taps;
                        const double a = term ? g2[r * g2_r + o] : g1[r * g1_r + o];
                        for (int64_t ky = 0; ky < k; ky++)
                            for (int64_t j = 0; j < run; j++) dst[ky * Wd * cin + j] += a * src[ky * run + j];
                    }
                }
            if (dgs)
                PREVIOUS_WINNERS(double, xb, gain + b * n2, e + b * n2, dz + (r * B + b) * n2,
                                 dgs + (r * B + b) * n2, H, Wd, cin, pad);
        }
    free(scratch);
    return 0;
}

void hvp_cols_backward_weight_f64(const double *cols, const double *g, int64_t g_r, const int32_t *idx, int64_t R,
                                  int64_t B, int64_t hp, int64_t wp, int64_t K, int64_t C, double *dW, int64_t dw_r) {
    const int64_t n = hp * wp;
    for (int64_t r = 0; r < R; r++) {
        double *dw = dW + r * dw_r;
        for (int64_t i = 0; i < K * C; i++) dw[i] = 0.0;
        for (int64_t b = 0; b < B; b++)
            for (int64_t w = 0; w < n; w++)
                for (int64_t c = 0; c < C; c++) {
                    const int64_t o = (b * n + w) * C + c;
                    const double *row = cols + (b * 4 * n + idx[o]) * K;
                    for (int64_t t = 0; t < K; t++) dw[t * C + c] += row[t] * g[r * g_r + o];
                }
    }
}
