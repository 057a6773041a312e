/* The time loop of one LSTM layer, forward and backward, for the fused backend.

   Small recurrent models on a CPU spend their time in per-step op dispatch, not arithmetic:
   a 2-layer LSTM(8) does ~5k multiply-adds per step, which a core does in well under a
   microsecond, while a framework spends several microseconds per op to launch them. Here one
   call runs a layer over the whole chunk: forward, or backward including the weight gradients
   and the gradient into the layer below. See hiddenstate/_kernels/fused.py. It also holds the
   per-step passes of the sampling loop (hiddenstate/paths.py): the LSTM activations and cell
   update after a BLAS or oneDNN product, and the Student-t draw's arithmetic.

   Layout: weights as torch.nn.LSTM holds them (row-major; gate order i, f, g, o):
     w_ih (4H, IN), w_hh (4H, H), b_ih, b_hh (4H); h0, c0 (B, H).
   Sequences are time-major like nn.LSTM's own buffers (its batch_first output is a transposed
   view of a (T, B, H) buffer):
     hseq    (T, B, H)   out: h of every step
     cseq    (T, B, H)   out: c of every step (c_tstride 0: one (B, H) buffer, the last c)
     acts    (T, B, 4H)  out: gate activations i, f, g, o (a_tstride 0: one (B, 4H) scratch)
   x, dx and d_out are read through strides, so batch-first and time-major tensors both work.

   C99 plus GCC/Clang vector extensions (for the register-blocked matrix products), with no
   library calls in the float loops, so `cc -O3 -fno-trapping-math` vectorises them. exp is a
   Cephes-style polynomial (relative error about 2e-7), so results match torch's kernels to
   ~1e-6. The double versions use libm and exist for gradient checks. The body below is
   compiled twice, once per type: this file includes itself. */

#ifndef HS_REAL

#include <math.h>
#include <stddef.h>
#include <stdlib.h>

static inline float exp_f32(float x) {
    /* exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln2 / 2. */
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float shift = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    float n = (x * 1.44269504088896341f + shift) - shift;
    float r = x - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    union { float f; int i; } scale;
    scale.i = ((int)n + 127) << 23;
    return p * scale.f;
}

static inline float sigmoid_f32(float x) { return 1.0f / (1.0f + exp_f32(-x)); }
static inline float tanh_f32(float x) { return 2.0f / (1.0f + exp_f32(-2.0f * x)) - 1.0f; }
static inline double sigmoid_f64(double x) { return 1.0 / (1.0 + exp(-x)); }
static inline double tanh_f64(double x) { return tanh(x); }
static inline float sqrt_f32(float x) { return sqrtf(x); }
static inline double sqrt_f64(double x) { return sqrt(x); }

#define HS_CAT_(a, b) a##b
#define HS_CAT(a, b) HS_CAT_(a, b)

#define HS_REAL float
#define HS_SUFFIX _f32
#include "_fused_lstm.c"
#undef HS_REAL
#undef HS_SUFFIX

#define HS_REAL double
#define HS_SUFFIX _f64
#include "_fused_lstm.c"
#undef HS_REAL
#undef HS_SUFFIX

#else /* the body, once per HS_REAL */

#define R HS_REAL
#define FN(name) HS_CAT(name, HS_SUFFIX)

/* C (m, n) += A (m, k) @ W (k, n), with A[i * ars + p * acs], W[p * wrs + j] and C[i * crs + j]:
   rows of W and C are contiguous, A is read through strides (so A may be a transposed view).
   Blocks of 4 rows of C by one or two 32-byte vectors of columns stay in registers while p
   runs (GCC/Clang vector extensions); leftover rows and columns take narrower paths. */
static void FN(gemm_acc)(long m, long n, long k, const R* A, long ars, long acs, const R* W, long wrs, R* C,
                         long crs) {
    typedef R V __attribute__((vector_size(32)));
    const long L = (long)(sizeof(V) / sizeof(R));
#define LD(v, p) __builtin_memcpy(&(v), (p), sizeof(V))
#define ST(p, v) __builtin_memcpy((p), &(v), sizeof(V))
    long i = 0;
    for (; i + 4 <= m; i += 4) {
        R* c0 = C + i * crs;
        R* c1 = c0 + crs;
        R* c2 = c1 + crs;
        R* c3 = c2 + crs;
        const R* a = A + i * ars;
        long j = 0;
        for (; j + 2 * L <= n; j += 2 * L) {
            V x0, y0, x1, y1, x2, y2, x3, y3, w0, w1;
            LD(x0, c0 + j), LD(y0, c0 + j + L), LD(x1, c1 + j), LD(y1, c1 + j + L);
            LD(x2, c2 + j), LD(y2, c2 + j + L), LD(x3, c3 + j), LD(y3, c3 + j + L);
            for (long p = 0; p < k; p++) {
                LD(w0, W + p * wrs + j), LD(w1, W + p * wrs + j + L);
                const R* ap = a + p * acs;
                const R a0 = ap[0], a1 = ap[ars], a2 = ap[2 * ars], a3 = ap[3 * ars];
                x0 += a0 * w0, y0 += a0 * w1, x1 += a1 * w0, y1 += a1 * w1;
                x2 += a2 * w0, y2 += a2 * w1, x3 += a3 * w0, y3 += a3 * w1;
            }
            ST(c0 + j, x0), ST(c0 + j + L, y0), ST(c1 + j, x1), ST(c1 + j + L, y1);
            ST(c2 + j, x2), ST(c2 + j + L, y2), ST(c3 + j, x3), ST(c3 + j + L, y3);
        }
        for (; j + L <= n; j += L) {
            V x0, x1, x2, x3, w0;
            LD(x0, c0 + j), LD(x1, c1 + j), LD(x2, c2 + j), LD(x3, c3 + j);
            for (long p = 0; p < k; p++) {
                LD(w0, W + p * wrs + j);
                const R* ap = a + p * acs;
                x0 += ap[0] * w0, x1 += ap[ars] * w0, x2 += ap[2 * ars] * w0, x3 += ap[3 * ars] * w0;
            }
            ST(c0 + j, x0), ST(c1 + j, x1), ST(c2 + j, x2), ST(c3 + j, x3);
        }
        for (; j < n; j++) {
            R x0 = c0[j], x1 = c1[j], x2 = c2[j], x3 = c3[j];
            for (long p = 0; p < k; p++) {
                const R* ap = a + p * acs;
                const R w = W[p * wrs + j];
                x0 += ap[0] * w, x1 += ap[ars] * w, x2 += ap[2 * ars] * w, x3 += ap[3 * ars] * w;
            }
            c0[j] = x0, c1[j] = x1, c2[j] = x2, c3[j] = x3;
        }
    }
    for (; i < m; i++) {
        R* c0 = C + i * crs;
        const R* a = A + i * ars;
        long j = 0;
        for (; j + L <= n; j += L) {
            V x0, w0;
            LD(x0, c0 + j);
            for (long p = 0; p < k; p++) {
                LD(w0, W + p * wrs + j);
                x0 += a[p * acs] * w0;
            }
            ST(c0 + j, x0);
        }
        for (; j < n; j++) {
            R x0 = c0[j];
            for (long p = 0; p < k; p++) x0 += a[p * acs] * W[p * wrs + j];
            c0[j] = x0;
        }
    }
#undef LD
#undef ST
}

/* dst (cols, rows) = src (rows, cols) transposed. */
static void FN(transpose)(long rows, long cols, const R* restrict src, R* restrict dst) {
    for (long r = 0; r < rows; r++)
        for (long c = 0; c < cols; c++) dst[c * rows + r] = src[r * cols + c];
}

static inline void FN(gates)(long h, R* restrict a) {
    for (long j = 0; j < 2 * h; j++) a[j] = FN(sigmoid)(a[j]);
    for (long j = 2 * h; j < 3 * h; j++) a[j] = FN(tanh)(a[j]);
    for (long j = 3 * h; j < 4 * h; j++) a[j] = FN(sigmoid)(a[j]);
}

static inline void FN(cell)(long h, const R* restrict a, const R* cp, R* c, R* restrict hn) {
    for (long k = 0; k < h; k++) {
        const R ck = a[h + k] * cp[k] + a[k] * a[2 * h + k];
        c[k] = ck; /* may be cp itself (c_tstride 0): each element is read before it is written */
        hn[k] = a[3 * h + k] * FN(tanh)(ck);
    }
}

/* One step of B rows whose gate products came from elsewhere (a BLAS call): a (B, 4H), rows
   a_rs apart, holds the pre-activations (bias included) and is overwritten by the activations;
   c (B, H), rows c_rs apart, goes from c_{t-1} to c_t in place; hn (B, H), rows h_rs apart,
   gets h_t. The same activations and cell update as the forward loop below. */
void FN(hs_lstm_pointwise)(long B, long H, R* a, long a_rs, R* c, long c_rs, R* hn, long h_rs) {
    for (long b = 0; b < B; b++) {
        FN(gates)(H, a + b * a_rs);
        FN(cell)(H, a + b * a_rs, c + b * c_rs, c + b * c_rs, hn + b * h_rs);
    }
}

/* The same step on a contiguous a (B, 4H) whose g quarter holds twice its pre-activations (the
   products' g weights and bias scaled by 2, which is exact): every gate is then a sigmoid, in
   one loop over the whole buffer with no short per-row tails, and 2 sigmoid(2x) - 1 is tanh(x)
   as tanh_f32 computes it, to the bit (float64: to rounding, its tanh is libm's). */
void FN(hs_lstm_pointwise_flat)(long B, long H, R* restrict a, R* c, long c_rs, R* hn, long h_rs) {
    const long n = B * 4 * H;
    for (long j = 0; j < n; j++) a[j] = FN(sigmoid)(a[j]);
    for (long b = 0; b < B; b++) {
        const R* restrict r = a + b * 4 * H;
        R* cb = c + b * c_rs;
        R* restrict hb = hn + b * h_rs;
        for (long k = 0; k < H; k++) {
            const R ck = r[H + k] * cb[k] + r[k] * (2 * r[2 * H + k] - 1);
            cb[k] = ck;
            hb[k] = r[3 * H + k] * FN(tanh)(ck);
        }
    }
}

/* The Student-t draw of the sampling loop, in two passes around torch's softplus, gamma and
   normal draws (so that the random numbers stay torch's): the arithmetic of
   likelihood._StudentT in a pass each instead of a dozen elementwise ops on a few hundred values.
   Pass 1, in place over m values: loc *= scale; sp (2, m) holds softplus of the scale and df
   parameters and becomes sigma = (sp + min_scale) * scale and half the degrees of freedom,
   (sp + 2) / 2. scale (m) or NULL. */
void FN(hs_studentt_params)(long m, R* loc, R* sp, const R* scale, R min_scale) {
    R *sig = sp, *half = sp + m;
    for (long i = 0; i < m; i++) {
        R a = sig[i] + min_scale;
        if (scale) loc[i] *= scale[i], a *= scale[i];
        sig[i] = a;
        half[i] = (R)0.5 * (half[i] + 2);
    }
}

/* Pass 2, over pass 1's m values, gamma (the gamma draws of half the degrees of freedom) and eps
   (standard normals): loc + spread * eps * sigma / sqrt(max(2 gamma, tiny) / df). */
void FN(hs_studentt_draw)(long m, const R* loc, const R* sig, const R* half, const R* gamma, const R* eps, R spread,
                          R tiny, R* out) {
    for (long i = 0; i < m; i++) {
        R chi2 = gamma[i] * 2;
        chi2 = chi2 < tiny ? tiny : chi2;
        const R z = eps[i] * (1 / FN(sqrt)(chi2 / (half[i] * 2))) * sig[i];
        out[i] = (spread != 1 ? z * spread : z) + loc[i];
    }
}

/* x (B, T, IN) at x + b * xb + t * xt, features contiguous. Returns 0, or -1 when out of memory.
   Each step works on the whole batch at once, batch row after batch row inside every weight
   row, so the chains of multiply-adds into one row's gates interleave with the other rows'
   instead of waiting on their own latency. */
int FN(hs_lstm_forward)(long B, long T, long IN, long H, const R* x, long xb, long xt, const R* w_ih,
                        const R* w_hh, const R* b_ih, const R* b_hh, const R* h0, const R* c0, R* hseq, R* cseq,
                        long c_tstride, R* acts, long a_tstride) {
    const long G = 4 * H;
    R* buf = malloc(sizeof(R) * (IN * G + H * G + G));
    if (!buf) return -1;
    R *wt_ih = buf, *wt_hh = buf + IN * G, *bias = buf + IN * G + H * G;
    FN(transpose)(G, IN, w_ih, wt_ih); /* (IN, 4H) */
    FN(transpose)(G, H, w_hh, wt_hh);  /* (H, 4H) */
    for (long j = 0; j < G; j++) bias[j] = b_ih[j] + b_hh[j];
    for (long t = 0; t < T; t++) {
        R* a = acts + t * a_tstride;                       /* (B, 4H) */
        const R* hp = t ? hseq + (t - 1) * B * H : h0;     /* (B, H) */
        const R* cp = t ? cseq + (t - 1) * c_tstride : c0; /* (B, H) */
        for (long b = 0; b < B; b++)
            for (long j = 0; j < G; j++) a[b * G + j] = bias[j];
        FN(gemm_acc)(B, G, IN, x + t * xt, xb, 1, wt_ih, G, a, G); /* + x_t @ W_ih^T */
        FN(gemm_acc)(B, G, H, hp, H, 1, wt_hh, G, a, G);           /* + h_{t-1} @ W_hh^T */
        for (long b = 0; b < B; b++) {
            FN(gates)(H, a + b * G);
            FN(cell)(H, a + b * G, cp + b * H, cseq + t * c_tstride + b * H, hseq + (t * B + b) * H);
        }
    }
    free(buf);
    return 0;
}

/* The gate pre-activation gradients of one step and row; updates dc to d c_{t-1}. */
static inline void FN(dgates)(long h, const R* restrict a, const R* restrict c, const R* restrict cp,
                              const R* restrict up, const R* restrict dh, R* restrict dc, R* restrict dg) {
    for (long k = 0; k < h; k++) {
        const R i = a[k], f = a[h + k], g = a[2 * h + k], o = a[3 * h + k];
        const R tc = FN(tanh)(c[k]);
        const R dhk = dh[k] + up[k];
        const R dck = dc[k] + dhk * o * (1 - tc * tc);
        dg[k] = dck * g * i * (1 - i);
        dg[h + k] = dck * cp[k] * f * (1 - f);
        dg[2 * h + k] = dck * i * (1 - g * g);
        dg[3 * h + k] = dhk * tc * o * (1 - o);
        dc[k] = dck * f;
    }
}

/* Backward through the whole chunk.
   d_out (T, B, H) at d_out + t * dt + b * db_, hidden contiguous: the gradient reaching every
   step's h from above (loss or next layer). dh, dc (B, H): in, the gradient of h_n and c_n; out,
   of h0 and c0. dx (B, T, IN) at dx + b * dxb + t * dxt, or NULL. dw_ih (4H, IN), dw_hh (4H, H),
   db (4H): out, overwritten. Returns 0, or -1 when out of memory.
   The time loop finds every step's gate gradients and passes d h back through W_hh; the weight
   gradients, which nothing in the loop needs, are summed over all steps after it. */
int FN(hs_lstm_backward)(long B, long T, long IN, long H, const R* x, long xb, long xt, const R* w_ih,
                         const R* w_hh, const R* h0, const R* c0, const R* hseq, const R* cseq, const R* acts,
                         const R* d_out, long dt, long db_, R* dh, R* dc, R* dx, long dxb, long dxt, R* dw_ih,
                         R* dw_hh, R* db) {
    const long G = 4 * H;
    R* dgs = malloc(sizeof(R) * (T * B * G + B * IN)); /* every step's gate gradients; a dx scratch */
    if (!dgs) return -1;
    R* dxs = dgs + T * B * G;
    for (long t = T - 1; t >= 0; t--) {
        R* dg = dgs + t * B * G; /* (B, 4H) */
        for (long b = 0; b < B; b++) {
            const long row = t * B + b;
            const R* cp = t ? cseq + (row - B) * H : c0 + b * H;
            FN(dgates)(H, acts + row * G, cseq + row * H, cp, d_out + t * dt + b * db_, dh + b * H, dc + b * H,
                       dg + b * G);
        }
        for (long k = 0; k < B * H; k++) dh[k] = 0;
        FN(gemm_acc)(B, H, G, dg, G, 1, w_hh, H, dh, H); /* d h_{t-1} = d gates @ W_hh */
        if (dx) {
            for (long k = 0; k < B * IN; k++) dxs[k] = 0;
            FN(gemm_acc)(B, IN, G, dg, G, 1, w_ih, IN, dxs, IN); /* d x_t = d gates @ W_ih */
            for (long b = 0; b < B; b++)
                for (long i = 0; i < IN; i++) dx[b * dxb + t * dxt + i] = dxs[b * IN + i];
        }
    }
    for (long j = 0; j < G * IN; j++) dw_ih[j] = 0;
    for (long j = 0; j < G * H; j++) dw_hh[j] = 0;
    for (long j = 0; j < G; j++) db[j] = 0;
    for (long r = 0; r < T * B; r++)
        for (long j = 0; j < G; j++) db[j] += dgs[r * G + j];
    /* d W_hh = sum over steps of d gates^T @ h_{t-1}: h0 for t = 0, then hseq shifted by a step */
    FN(gemm_acc)(G, H, B, dgs, 1, G, h0, H, dw_hh, H);
    FN(gemm_acc)(G, H, (T - 1) * B, dgs + B * G, 1, G, hseq, H, dw_hh, H);
    for (long t = 0; t < T; t++) /* d W_ih = sum over steps of d gates^T @ x_t */
        FN(gemm_acc)(G, IN, B, dgs + t * B * G, 1, G, x + t * xt, xb, dw_ih, IN);
    free(dgs);
    return 0;
}

#undef R
#undef FN

#endif
