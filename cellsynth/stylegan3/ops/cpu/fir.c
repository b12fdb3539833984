/* Polyphase FIR resampling on the CPU for cellsynth's StyleGAN ops (loaded with ctypes).
 *
 * Tensors are channels-last: x [N, H, W, C], y [N, Ho, Wo, C], contiguous. Along each axis the
 * output sample j reads input sample i with the tap k = i * up + pad0 - j * down (0 <= k < K),
 * which is upsample-by-zero-insertion, pad, correlate with the taps g and keep every down-th
 * sample, without ever touching the inserted zeros or the dropped samples. The innermost loop
 * runs over the C contiguous channels, so it vectorises.
 *
 * Optional extras, all fused into the same pass:
 *   bias   [C]: added to every input sample read (the padding stays zero), as x + b before
 *               the filter;
 *   mode 1: after the filter, v = clamp(v, lo, hi) (each bound only when its flag is set), then
 *           v = v > 0 ? v : v * slope; when `code` is not NULL, write one byte per output
 *           sample: 1 where the slope was 1, 0 where it was `slope`, 2 where v was clamped.
 * apply_code: y = g * table[code] (the backward of mode 1), elementwise.
 *
 * Work is split over output rows (n, jh) between `threads` POSIX threads.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int up, down, pad0, len, out_len, taps;
} axis_t;

/* First and one-past-last input index that output j reads along an axis. */
static void axis_range(const axis_t *a, long j, long *i0, long *i1) {
    long lo = j * a->down - a->pad0; /* i * up >= lo */
    long hi = lo + a->taps - 1;      /* i * up <= hi */
    long first = lo >= 0 ? (lo + a->up - 1) / a->up : -((-lo) / a->up);
    long last = hi >= 0 ? hi / a->up : -((-hi + a->up - 1) / a->up);
    if (first < 0) first = 0;
    if (last > a->len - 1) last = a->len - 1;
    *i0 = first;
    *i1 = last + 1;
}

#define DEFINE_FIR(T, SUFFIX)                                                                      \
    typedef struct {                                                                               \
        const T *x;                                                                                \
        T *y;                                                                                      \
        const T *g;                                                                                \
        const T *bias;                                                                             \
        uint8_t *code;                                                                             \
        long n, c, row0, row1;                                                                     \
        axis_t ay, ax;                                                                             \
        int mode, has_lo, has_hi;                                                                  \
        T lo, hi, slope;                                                                           \
        int ok;                                                                                    \
    } job_##SUFFIX;                                                                                \
                                                                                                   \
    static void *fir_rows_##SUFFIX(void *arg) {                                                    \
        job_##SUFFIX *jb = (job_##SUFFIX *)arg;                                                    \
        const long C = jb->c, H = jb->ay.len, W = jb->ax.len;                                      \
        const long Ho = jb->ay.out_len, Wo = jb->ax.out_len, KW = jb->ax.taps;                     \
        T *acc = (T *)malloc(sizeof(T) * (size_t)C);                                               \
        if (!acc) return NULL;                                                                     \
        for (long row = jb->row0; row < jb->row1; row++) {                                         \
            const long n = row / Ho, jh = row % Ho;                                                \
            long ih0, ih1;                                                                         \
            axis_range(&jb->ay, jh, &ih0, &ih1);                                                   \
            for (long jw = 0; jw < Wo; jw++) {                                                     \
                long iw0, iw1;                                                                     \
                axis_range(&jb->ax, jw, &iw0, &iw1);                                               \
                T *restrict a = acc;                                                               \
                for (long c = 0; c < C; c++) a[c] = 0;                                             \
                T wsum = 0;                                                                        \
                for (long ih = ih0; ih < ih1; ih++) {                                              \
                    const long kh = ih * jb->ay.up + jb->ay.pad0 - jh * jb->ay.down;               \
                    const T *grow = jb->g + kh * KW;                                               \
                    const T *xrow = jb->x + ((n * H + ih) * W) * C;                                \
                    for (long iw = iw0; iw < iw1; iw++) {                                          \
                        const T w = grow[iw * jb->ax.up + jb->ax.pad0 - jw * jb->ax.down];         \
                        const T *restrict xp = xrow + iw * C;                                      \
                        wsum += w;                                                                 \
                        for (long c = 0; c < C; c++) a[c] += w * xp[c];                            \
                    }                                                                              \
                }                                                                                  \
                if (jb->bias) {                                                                    \
                    const T *restrict b = jb->bias;                                                \
                    for (long c = 0; c < C; c++) a[c] += wsum * b[c];                              \
                }                                                                                  \
                T *restrict yp = jb->y + ((n * Ho + jh) * Wo + jw) * C;                            \
                if (jb->mode == 1) {                                                               \
                    const T lo = jb->lo, hi = jb->hi, s = jb->slope;                               \
                    const int has_lo = jb->has_lo, has_hi = jb->has_hi;                            \
                    uint8_t *restrict cp =                                                         \
                        jb->code ? jb->code + ((n * Ho + jh) * Wo + jw) * C : NULL;                \
                    for (long c = 0; c < C; c++) {                                                 \
                        T v = a[c];                                                                \
                        uint8_t k = v > 0 ? 1 : 0;                                                 \
                        if (has_lo && v < lo) {                                                    \
                            v = lo;                                                                \
                            k = 2;                                                                 \
                        }                                                                          \
                        if (has_hi && v > hi) {                                                    \
                            v = hi;                                                                \
                            k = 2;                                                                 \
                        }                                                                          \
                        yp[c] = v > 0 ? v : v * s;                                                 \
                        if (cp) cp[c] = k;                                                         \
                    }                                                                              \
                } else {                                                                           \
                    memcpy(yp, a, sizeof(T) * (size_t)C);                                          \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        free(acc);                                                                                 \
        jb->ok = 1;                                                                                \
        return NULL;                                                                               \
    }                                                                                              \
                                                                                                   \
    int fir2d_##SUFFIX(const T *x, T *y, const T *g, const T *bias, uint8_t *code, long n,         \
                       long c, const int *yaxis, const int *xaxis, int mode, int has_lo,           \
                       int has_hi, double lo, double hi, double slope, int threads) {              \
        job_##SUFFIX jobs[64];                                                                     \
        pthread_t tid[64];                                                                         \
        axis_t ay = {yaxis[0], yaxis[1], yaxis[2], yaxis[3], yaxis[4], yaxis[5]};                  \
        axis_t ax = {xaxis[0], xaxis[1], xaxis[2], xaxis[3], xaxis[4], xaxis[5]};                  \
        long rows = n * ay.out_len;                                                                \
        if (threads < 1) threads = 1;                                                              \
        if (threads > 64) threads = 64;                                                            \
        if (threads > rows) threads = (int)(rows > 0 ? rows : 1);                                  \
        for (int t = 0; t < threads; t++) {                                                        \
            job_##SUFFIX jb = {x, y, g, bias, code, n, c, rows * t / threads,                      \
                               rows * (t + 1) / threads, ay, ax, mode, has_lo, has_hi,             \
                               (T)lo, (T)hi, (T)slope, 0};                                         \
            jobs[t] = jb;                                                                          \
        }                                                                                          \
        int started = 0;                                                                           \
        for (int t = 1; t < threads; t++) {                                                        \
            if (pthread_create(&tid[t], NULL, fir_rows_##SUFFIX, &jobs[t]) != 0) break;            \
            started = t;                                                                           \
        }                                                                                          \
        for (int t = started + 1; t < threads; t++) fir_rows_##SUFFIX(&jobs[t]);                   \
        fir_rows_##SUFFIX(&jobs[0]);                                                               \
        for (int t = 1; t <= started; t++) pthread_join(tid[t], NULL);                             \
        for (int t = 0; t < threads; t++)                                                          \
            if (!jobs[t].ok) return 1;                                                             \
        return 0;                                                                                  \
    }                                                                                              \
                                                                                                   \
    void apply_code_##SUFFIX(const T *grad, const uint8_t *code, T *out, long count, double t0,    \
                             double t1, double t2) {                                               \
        const T v0 = (T)t0, v1 = (T)t1, v2 = (T)t2;                                                \
        for (long i = 0; i < count; i++) {                                                         \
            const uint8_t k = code[i];                                                             \
            out[i] = grad[i] * (k == 1 ? v1 : (k == 0 ? v0 : v2));                                 \
        }                                                                                          \
    }

DEFINE_FIR(float, f32)
DEFINE_FIR(double, f64)

/* ABI version, checked by the loader. */
int cellsynth_fir_version(void) { return 1; }
