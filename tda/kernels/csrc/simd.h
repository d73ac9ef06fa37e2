/* The float vectors the kernels compute with: VL lanes (16 with AVX-512, else 8), one output channel per lane.
 * Each lane sums its taps in the same order whatever VL is, so the width changes speed, not results. */
#ifndef TDA_SIMD_H
#define TDA_SIMD_H
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#define VL 16
#define MAXNB 4 /* 4 x 4 accumulators + 4 weights + 1 broadcast of 32 registers */
#define KEEP "+v"
#else
#define VL 8
#define MAXNB 3 /* 3 x 4 accumulators + 3 weights + 1 broadcast of 16 registers */
#define KEEP "+x"
#endif

typedef float vf __attribute__((vector_size(4 * VL)));
typedef int32_t vi __attribute__((vector_size(4 * VL)));

static inline vf bc(float x) { return (vf){0} + x; }
static inline vi bci(int32_t x) { return (vi){0} + x; }
static inline vf ld(const float *p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline vi ldi(const int32_t *p) { vi v; memcpy(&v, p, sizeof v); return v; }
static inline void st(float *p, vf v) { memcpy(p, &v, sizeof v); }
static inline void sti(int32_t *p, vi v) { memcpy(p, &v, sizeof v); }
/* lanes of a where m is all ones, else of b */
static inline vf sel(vi m, vf a, vf b) { return (vf)(((vi)a & m) | ((vi)b & ~m)); }
static inline vi seli(vi m, vi a, vi b) { return (a & m) | (b & ~m); }

/* Grid positions Y * 2wp + X of pool window (py, px) in scan order (0,0), (0,1), (1,0), (1,1). */
static inline void window_positions(int64_t py, int64_t px, int64_t wp, int32_t pos[4]) {
    const int32_t w2 = (int32_t)(2 * wp), p0 = (int32_t)(2 * py) * w2 + (int32_t)(2 * px);
    pos[0] = p0, pos[1] = p0 + 1, pos[2] = p0 + w2, pos[3] = p0 + w2 + 1;
}

/* How many VL-lane channel blocks a window's accumulators hold, with nv blocks of channels left. */
static inline int channel_blocks(int64_t nv) {
    if (VL == 8 && nv == 4) return 2; /* 32 channels as 16 + 16, not 24 + 8 */
    return nv >= MAXNB ? MAXNB : (int)nv;
}
/* One term of a window: acc[h][q] += sum over taps of x at position q (+ tap) times W's channels c0 + VL h. */
static inline __attribute__((always_inline)) void direct_term(const int NB, vf acc[][4], const float *xb,
        const float *W, int64_t Wd, int64_t cin, int64_t k, int64_t C, int64_t py, int64_t px, int64_t c0) {
    for (int64_t ky = 0; ky < k; ky++)
        for (int64_t kx = 0; kx < k; kx++) {
            const float *x0 = xb + ((2 * py + ky) * Wd + 2 * px + kx) * cin, *x2 = x0 + Wd * cin;
            const float *w = W + (ky * k + kx) * cin * C + c0;
            for (int64_t ci = 0; ci < cin; ci++, w += C) {
                vf wv[MAXNB];
                for (int h = 0; h < NB; h++) {
                    wv[h] = ld(w + VL * h);
#if defined(__x86_64__) || defined(__i386__)
                    /* keep the weights in registers: folded into each FMA they would be loaded four times,
                     * and loads, not FMAs, would bound the loop */
                    __asm__("" : KEEP(wv[h]));
#endif
                }
                const float *xq[4] = {x0 + ci, x0 + ci + cin, x2 + ci, x2 + ci + cin};
                for (int q = 0; q < 4; q++) { /* one broadcast live at a time */
                    const vf s = bc(*xq[q]);
                    for (int h = 0; h < NB; h++) acc[h][q] += s * wv[h];
                }
            }
        }
}

#endif
