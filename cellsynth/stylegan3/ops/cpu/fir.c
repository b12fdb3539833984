/* Polyphase FIR resampling on the CPU for cellsynth's StyleGAN ops (loaded with ctypes).
 *
 * Tensors are channels-last: x [N, H, W, C], y [N, Ho, Wo, C], contiguous. Along each axis the
 * output sample j reads input sample i with the tap k = i * up + pad0 - j * down (0 <= k < K),
 * which is upsample-by-zero-insertion, pad, correlate with the taps g and keep every down-th
 * sample, without ever touching the inserted zeros or the dropped samples. For each output pixel
 * the list of (input pixel, tap) pairs is built once; then blocks of 8 SIMD vectors of channels
 * (128 floats with AVX-512) accumulate over that list in registers, in the order of the list, and
 * the epilogue below runs on the registers before one store. GCC/Clang vector extensions: the
 * same source compiles to AVX-512, AVX2 or NEON (-march=native).
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
 *
 * Storage types: float and double (accumulated in their own type), and bfloat16 (x, y and the
 * gradients of apply_code in bf16, the taps, the bias and every sum in float32; one rounding per
 * stored value), so bf16 mixed-precision networks never convert whole activations to float.
 */
#include <math.h>
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

#define BLOCK 8 /* accumulator vectors per channel block */
#define MAX_THREADS 64

/* Run fn on jobs[0..threads) (each `size` bytes), jobs 1.. on new threads, job 0 here; a job
 * whose thread cannot be started runs here too. */
static void run_jobs(void *(*fn)(void *), char *jobs, size_t size, int threads) {
    pthread_t tid[MAX_THREADS];
    int started = 0;
    for (int t = 1; t < threads; t++) {
        if (pthread_create(&tid[t], NULL, fn, jobs + size * (size_t)t) != 0) break;
        started = t;
    }
    for (int t = started + 1; t < threads; t++) fn(jobs + size * (size_t)t);
    fn(jobs);
    for (int t = 1; t <= started; t++) pthread_join(tid[t], NULL);
}

static int clamp_threads(int threads, long units) {
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    if (threads > units) threads = (int)(units > 0 ? units : 1);
    return threads;
}

#define DEFINE_FIR(S, T, SUFFIX, VT, IT, ITYPE, BT, LANES, LOADV, STOREV, LOADS, STORES)       \
    typedef T VT __attribute__((vector_size(sizeof(T) * LANES), aligned(sizeof(T))));           \
    typedef ITYPE IT __attribute__((vector_size(sizeof(T) * LANES)));                           \
    typedef uint8_t BT __attribute__((vector_size(LANES)));                                      \
    static inline VT select_##SUFFIX(IT m, VT a, VT b) {                                       \
        return (VT)(((IT)a & m) | ((IT)b & ~m));                                               \
    }                                                                                          \
    typedef struct {                                                                               \
        const S *x;                                                                                \
        S *y;                                                                                      \
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
    /* Finish channels [c0, c0 + len) of one output pixel: bias, activation, store. */            \
    static inline void finish_##SUFFIX(const job_##SUFFIX *jb, T *acc, long c0, long len,         \
                                       T wsum, S *yp, uint8_t *cp) {                               \
        if (jb->bias)                                                                              \
            for (long c = 0; c < len; c++) acc[c] += wsum * jb->bias[c0 + c];                      \
        if (jb->mode == 1) {                                                                       \
            const T lo = jb->lo, hi = jb->hi, s = jb->slope;                                       \
            S *restrict out = yp + c0;                                                             \
            if (cp) {                                                                              \
                uint8_t *restrict kp = cp + c0;                                                    \
                for (long c = 0; c < len; c++) {                                                   \
                    const T v = acc[c];                                                            \
                    const T u = v < lo ? lo : (v > hi ? hi : v);                                   \
                    kp[c] = (v < lo || v > hi) ? 2 : (v > 0 ? 1 : 0);                              \
                    STORES(out + c, u > 0 ? u : u * s);                                            \
                }                                                                                  \
            } else {                                                                               \
                for (long c = 0; c < len; c++) {                                                   \
                    const T v = acc[c];                                                            \
                    const T u = v < lo ? lo : (v > hi ? hi : v);                                   \
                    STORES(out + c, u > 0 ? u : u * s);                                            \
                }                                                                                  \
            }                                                                                      \
        } else {                                                                                   \
            for (long c = 0; c < len; c++) STORES(yp + c0 + c, acc[c]);                            \
        }                                                                                          \
    }                                                                                              \
                                                                                                   \
    static void *fir_rows_##SUFFIX(void *arg) {                                                    \
        job_##SUFFIX *jb = (job_##SUFFIX *)arg;                                                    \
        const long C = jb->c, H = jb->ay.len, W = jb->ax.len;                                      \
        const long Ho = jb->ay.out_len, Wo = jb->ax.out_len, KW = jb->ax.taps;                     \
        const long ntaps = (long)jb->ay.taps * KW;                                                 \
        const S **src = (const S **)malloc(sizeof(S *) * (size_t)ntaps);                           \
        T *wt = (T *)malloc(sizeof(T) * (size_t)ntaps);                                            \
        if (!src || !wt) {                                                                         \
            free(src);                                                                             \
            free(wt);                                                                              \
            return NULL;                                                                           \
        }                                                                                          \
        VT acc[BLOCK];                                                                             \
        T tail[LANES * BLOCK];                                                                     \
        for (long row = jb->row0; row < jb->row1; row++) {                                         \
            const long n = row / Ho, jh = row % Ho;                                                \
            long ih0, ih1;                                                                         \
            axis_range(&jb->ay, jh, &ih0, &ih1);                                                   \
            S *yrow = jb->y + (n * Ho + jh) * Wo * C;                                              \
            uint8_t *crow = jb->code ? jb->code + (n * Ho + jh) * Wo * C : NULL;                   \
            for (long jw = 0; jw < Wo; jw++) {                                                     \
                long iw0, iw1, nt = 0;                                                             \
                axis_range(&jb->ax, jw, &iw0, &iw1);                                               \
                T wsum = 0;                                                                        \
                for (long ih = ih0; ih < ih1; ih++) {                                              \
                    const long kh = ih * jb->ay.up + jb->ay.pad0 - jh * jb->ay.down;               \
                    const S *xrow = jb->x + ((n * H + ih) * W) * C;                                \
                    for (long iw = iw0; iw < iw1; iw++) {                                          \
                        const T w = jb->g[kh * KW + iw * jb->ax.up + jb->ax.pad0 - jw * jb->ax.down]; \
                        src[nt] = xrow + iw * C;                                                   \
                        wt[nt++] = w;                                                              \
                        wsum += w;                                                                 \
                    }                                                                              \
                }                                                                                  \
                S *yp = yrow + jw * C;                                                             \
                uint8_t *cp = crow ? crow + jw * C : NULL;                                         \
                long c0 = 0;                                                                       \
                for (; c0 + LANES * BLOCK <= C; c0 += LANES * BLOCK) {                             \
                    for (int b = 0; b < BLOCK; b++) acc[b] = (VT){0};                              \
                    for (long t = 0; t < nt; t++) {                                                \
                        const S *p = src[t] + c0;                                                  \
                        const T w = wt[t];                                                         \
                        for (int b = 0; b < BLOCK; b++) acc[b] += w * LOADV(p + b * LANES);        \
                    }                                                                              \
                    for (int b = 0; b < BLOCK; b++) {                                              \
                        const long cb = c0 + b * LANES;                                            \
                        VT v = acc[b];                                                             \
                        if (jb->bias) v += wsum * *(const VT *)(jb->bias + cb);                    \
                        if (jb->mode == 1) {                                                       \
                            const VT vlo = (VT){0} + jb->lo, vhi = (VT){0} + jb->hi;               \
                            const IT mlo = v < vlo, mhi = v > vhi;                                 \
                            const VT u = select_##SUFFIX(mlo, vlo, select_##SUFFIX(mhi, vhi, v));  \
                            const IT pos = u > (VT){0};                                            \
                            v = select_##SUFFIX(pos, u, u * jb->slope);                            \
                            if (cp) {                                                              \
                                const IT clamped = mlo | mhi;                                      \
                                const IT k = (clamped & 2) | (~clamped & pos & 1);                 \
                                const BT kb = __builtin_convertvector(k, BT);                      \
                                memcpy(cp + cb, &kb, LANES);                                       \
                            }                                                                      \
                        }                                                                          \
                        STOREV(yp + cb, v);                                                        \
                    }                                                                              \
                }                                                                                  \
                for (; c0 + LANES <= C; c0 += LANES) {                                             \
                    VT a = {0};                                                                    \
                    for (long t = 0; t < nt; t++) a += wt[t] * LOADV(src[t] + c0);                 \
                    memcpy(tail, &a, sizeof(a));                                                   \
                    finish_##SUFFIX(jb, tail, c0, LANES, wsum, yp, cp);                            \
                }                                                                                  \
                if (c0 < C) {                                                                      \
                    const long len = C - c0;                                                       \
                    for (long c = 0; c < len; c++) tail[c] = 0;                                    \
                    for (long t = 0; t < nt; t++)                                                  \
                        for (long c = 0; c < len; c++) tail[c] += wt[t] * LOADS(src[t] + c0 + c);  \
                    finish_##SUFFIX(jb, tail, c0, len, wsum, yp, cp);                              \
                }                                                                                  \
            }                                                                                      \
        }                                                                                          \
        free(src);                                                                                 \
        free(wt);                                                                                  \
        jb->ok = 1;                                                                                \
        return NULL;                                                                               \
    }                                                                                              \
                                                                                                   \
    int fir2d_##SUFFIX(const S *x, S *y, const T *g, const T *bias, uint8_t *code, long n,         \
                       long c, const int *yaxis, const int *xaxis, int mode, int has_lo,           \
                       int has_hi, double lo, double hi, double slope, int threads) {              \
        job_##SUFFIX jobs[MAX_THREADS];                                                            \
        axis_t ay = {yaxis[0], yaxis[1], yaxis[2], yaxis[3], yaxis[4], yaxis[5]};                  \
        axis_t ax = {xaxis[0], xaxis[1], xaxis[2], xaxis[3], xaxis[4], xaxis[5]};                  \
        long rows = n * ay.out_len;                                                                \
        threads = clamp_threads(threads, rows);                                                    \
        for (int t = 0; t < threads; t++) {                                                        \
            job_##SUFFIX jb = {x, y, g, bias, code, n, c, rows * t / threads,                      \
                               rows * (t + 1) / threads, ay, ax, mode, has_lo, has_hi,             \
                               has_lo ? (T)lo : -(T)INFINITY, has_hi ? (T)hi : (T)INFINITY,        \
                               (T)slope, 0};                                         \
            jobs[t] = jb;                                                                          \
        }                                                                                          \
        run_jobs(fir_rows_##SUFFIX, (char *)jobs, sizeof(jobs[0]), threads);                      \
        for (int t = 0; t < threads; t++)                                                          \
            if (!jobs[t].ok) return 1;                                                             \
        return 0;                                                                                  \
    }                                                                                              \
                                                                                                   \
    typedef struct {                                                                               \
        const S *grad;                                                                             \
        const uint8_t *code;                                                                       \
        S *out;                                                                                    \
        long i0, i1;                                                                               \
        T v0, v1, v2;                                                                              \
    } code_job_##SUFFIX;                                                                           \
                                                                                                   \
    static void *apply_code_part_##SUFFIX(void *arg) {                                             \
        const code_job_##SUFFIX *jb = (const code_job_##SUFFIX *)arg;                              \
        const S *restrict g = jb->grad;                                                            \
        const uint8_t *restrict k = jb->code;                                                      \
        S *restrict o = jb->out;                                                                   \
        const T v0 = jb->v0, v1 = jb->v1, v2 = jb->v2;                                             \
        for (long i = jb->i0; i < jb->i1; i++)                                                     \
            STORES(o + i, LOADS(g + i) * (k[i] == 1 ? v1 : (k[i] == 0 ? v0 : v2)));                \
        return NULL;                                                                               \
    }                                                                                              \
                                                                                                   \
    void apply_code_##SUFFIX(const S *grad, const uint8_t *code, S *out, long count, double t0,    \
                             double t1, double t2, int threads) {                                  \
        code_job_##SUFFIX jobs[MAX_THREADS];                                                       \
        threads = clamp_threads(threads, count / 65536); /* small passes: one thread */            \
        for (int t = 0; t < threads; t++) {                                                        \
            code_job_##SUFFIX jb = {grad, code, out, count * t / threads,                          \
                                    count * (t + 1) / threads, (T)t0, (T)t1, (T)t2};               \
            jobs[t] = jb;                                                                          \
        }                                                                                          \
        run_jobs(apply_code_part_##SUFFIX, (char *)jobs, sizeof(jobs[0]), threads);               \
    }

/* Plain float / double storage: loads and stores are the accumulator type itself. */
#define LOADV_F32(p) (*(const vf32_t *)(p))
#define STOREV_F32(p, v) (*(vf32_t *)(p) = (v))
#define LOADV_F64(p) (*(const vf64_t *)(p))
#define STOREV_F64(p, v) (*(vf64_t *)(p) = (v))
#define LOADS_SAME(p) (*(p))
#define STORES_SAME(p, v) (*(p) = (v))

DEFINE_FIR(float, float, f32, vf32_t, vi32_t, int32_t, vb16_t, 16, LOADV_F32, STOREV_F32,
           LOADS_SAME, STORES_SAME)
DEFINE_FIR(double, double, f64, vf64_t, vi64_t, int64_t, vb8_t, 8, LOADV_F64, STOREV_F64,
           LOADS_SAME, STORES_SAME)

/* bfloat16 storage (the upper 16 bits of an IEEE float), float32 accumulation: a load widens
 * exactly (bits << 16); a store rounds to nearest, ties to even, and keeps NaNs quiet NaNs. */
typedef uint16_t vbf16_t __attribute__((vector_size(32), aligned(2)));
typedef uint32_t vu32_t __attribute__((vector_size(64)));

static inline float bf16_load(const uint16_t *p) {
    uint32_t u = (uint32_t)*p << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline void bf16_store(uint16_t *p, float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    *p = f != f ? (uint16_t)((u >> 16) | 0x40) : (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
static inline vf32_t bf16_loadv(const uint16_t *p) {
    vbf16_t h;
    memcpy(&h, p, sizeof h);
    vu32_t u = __builtin_convertvector(h, vu32_t) << 16;
    vf32_t f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline void bf16_storev(uint16_t *p, vf32_t f) {
    vu32_t u;
    memcpy(&u, &f, sizeof u);
    const vu32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
    const vi32_t nan = f != f;
    const vu32_t quiet = (u >> 16) | 0x40u;
    const vu32_t r = (vu32_t)(((vi32_t)quiet & nan) | ((vi32_t)rounded & ~nan));
    const vbf16_t h = __builtin_convertvector(r, vbf16_t);
    memcpy(p, &h, sizeof h);
}

DEFINE_FIR(uint16_t, float, bf16, vf32b_t, vi32b_t, int32_t, vb16b_t, 16, bf16_loadv, bf16_storev,
           bf16_load, bf16_store)

/* ABI version, checked by the loader. */
int cellsynth_fir_version(void) { return 3; }
