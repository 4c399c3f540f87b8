/* The decode step of model/gpt.py in C: new tokens through every layer, one row each.

   Three entry points share one layer loop (`layers`), and differ only in what they do after it:
   - `step`: one new token per row of the running batch (row b is cache row b, at `slot`); the
     logits of every row's next token;
   - `argmax`: the same step when only each row's most likely token is wanted (greedy, nothing
     reported): found from a bfloat16 copy of the output layer (`argmax_pruned`);
   - `prefill`: prompts, each position a row of the call (`at`: its cache row and slot), so
     each matrix is read once for all of them; the logits of the rows `out` names.
   Every row is computed as a step of its own would compute it (the same operations on the same
   values: the same bits in any batch, tested), which is why a story never depends on the rows
   beside it.

   The weights are the model's (laid out as read here by `model/native.py`); keys and values
   sit in the model's `KVCache`. `cbuild.py` compiles this once per machine; without a compiler
   the model's own `forward` decodes. tests/test_fast_decode.py checks the logits against
   `GPT.forward` to 1e-5 for every architecture.

   Layouts (row-major, float32): a linear layer's weight in panels of 16 output rows (`gemv`),
   the embedding table as nn.Embedding stores it, [vocab, d]; the KV cache is
   [layer, cache_rows, head, cache_len, head_dim]; the output layer's bfloat16 copy in panels,
   four interleaved (`panel_rows16`), with a radius per output row (`argmax_pruned`). */

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stddef.h>
#ifdef _OPENMP
#include <omp.h>
static inline int thread_num(void) { return omp_get_thread_num(); }
#else
static inline int thread_num(void) { return 0; }
#endif

enum { GELU = 0, SWIGLU = 1, RELU2 = 2 };
enum { RESID_PRE, ATTN_OUT, RESID_MID, MLP_POST, MLP_OUT, RESID_POST, POINTS };  /* decode.py's ADDABLE */

typedef struct {
    const float *norm1_w, *norm1_b, *qkv, *out, *out_b, *q_norm, *k_norm;
    const float *norm2_w, *norm2_b, *fc, *fc_b, *proj, *proj_b;
    float scale;
    int window;
} Layer;

typedef struct {
    int n_layer, n_head, head_dim, d_model, ffn, vocab, context, act, layer_norm, threads;
    float eps, qk_eps;
    const float *tok_emb, *pos_emb, *rope_cos, *rope_sin, *norm_w, *norm_b, *head;
    const uint16_t *head16;  /* the output layer in bfloat16, [blocks][d][PANELS][16] */
    const float *head_err;   /* per output row: how far its bfloat16 logit can be from its float32 one, per unit of |x| */
    const Layer *layers;
} Model;

/* The KV cache of a call: [layer, rows, head, len, head_dim] keys and values, and each row's
   leading padding slots. */
typedef struct {
    float *k, *v;
    const int64_t *pad;
    int rows, len;
} Cache;

/* LayerNorm (with `b`) or RMSNorm (b == NULL) of n values, as torch computes them. */
static void norm(float *out, const float *x, const float *w, const float *b, int n, float eps, int layer_norm) {
    if (layer_norm) {
        float mean = 0.f, var = 0.f;
        #pragma omp simd reduction(+:mean)
        for (int i = 0; i < n; i++) mean += x[i];
        mean /= n;
        #pragma omp simd reduction(+:var)
        for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
        float r = 1.f / sqrtf(var / n + eps);
        for (int i = 0; i < n; i++) out[i] = (x[i] - mean) * r * w[i] + (b ? b[i] : 0.f);
    } else {
        float ss = 0.f;
        #pragma omp simd reduction(+:ss)
        for (int i = 0; i < n; i++) ss += x[i] * x[i];
        float r = 1.f / sqrtf(ss / n + eps);
        for (int i = 0; i < n; i++) out[i] = x[i] * r * w[i];
    }
}

/* A linear layer's weight W [n_out, in] is held in panels of 16 output rows side by side:
   P[p][j][l] = W[16p + l][j], [ceil(n_out / 16)][n_in][16], zeros past n_out (`native.py` lays
   them out). For one or a few rows of x the panels give y[16p..16p+16] as a sum over j of
   x[j] * P[p][j]: a vector multiply-add per input, with no horizontal sums, where a dot product
   per output row (run.c's loop) ends in one each, which took longer (bench/README.md). */
enum { LANES = 16, PANELS = 4 };

/* R (1 or 2) rows of x against PANELS panels from p0 (np of them real; the rest repeat p0). */
static inline __attribute__((always_inline)) void panel_rows(float *y, const float *x, const float *p0, int np,
                                                             const float *bias, int n_in, int n_out, int first,
                                                             const int R) {
    const float *pq[PANELS];
    for (int q = 0; q < PANELS; q++) pq[q] = p0 + (size_t)(q < np ? q : 0) * n_in * LANES;
    float acc[2][PANELS][LANES] = {{{0}}};
    for (int j = 0; j < n_in; j++) {
        float v[2];
        for (int r = 0; r < R; r++) v[r] = x[(size_t)r * n_in + j];
        for (int q = 0; q < PANELS; q++) {
            const float *w = pq[q] + (size_t)j * LANES;
            for (int r = 0; r < R; r++) {
                #pragma omp simd
                for (int l = 0; l < LANES; l++) acc[r][q][l] += v[r] * w[l];
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int q = 0; q < np; q++)
            for (int l = 0; l < LANES && first + q * LANES + l < n_out; l++) {
                const int i = first + q * LANES + l;
                y[(size_t)r * n_out + i] = acc[r][q][l] + (bias ? bias[i] : 0.f);
            }
}

/* y[b] = W x[b] (+ bias) for B rows, two rows at a time, each group of panels read once for all. */
static void gemv(float *y, const float *x, const float *P, const float *bias, int B, int n_in, int n_out,
                 int threads) {
    const int panels = (n_out + LANES - 1) / LANES, blocks = (panels + PANELS - 1) / PANELS;
    #pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && (long)n_in * n_out * B > 16384)
    for (int blk = 0; blk < blocks; blk++) {
        const int p = PANELS * blk, np = panels - p < PANELS ? panels - p : PANELS;
        const float *p0 = P + (size_t)p * n_in * LANES;
        int b = 0;
        for (; b + 2 <= B; b += 2)
            panel_rows(y + (size_t)b * n_out, x + (size_t)b * n_in, p0, np, bias, n_in, n_out, p * LANES, 2);
        if (b < B) panel_rows(y + (size_t)b * n_out, x + (size_t)b * n_in, p0, np, bias, n_in, n_out, p * LANES, 1);
    }
}

/* Llama's "rotate half" RoPE of one head vector at table row `c`, `s`. */
static void rope(float *x, const float *c, const float *s, int D) {
    int h = D / 2;
    for (int i = 0; i < h; i++) {
        float a = x[i], b = x[i + h];
        x[i] = a * c[i] - b * s[i];
        x[i + h] = b * c[i + h] + a * s[i + h];
    }
}

static void add(float *x, const float *const *adds, int point, int b, int d) {
    if (adds && adds[point]) {
        const float *a = adds[point] + (size_t)b * d;
        for (int i = 0; i < d; i++) x[i] += a[i];
    }
}

/* One query's attention over keys first..n-1: z = softmax(q . K[t] * scale) @ V. Long head
   vectors (llama2.c's 48) vectorise along the head dimension; short ones (the paper's 1M model
   has 4) along the keys, where the former would run four-wide loops at full cost. */
static inline __attribute__((always_inline)) void attend_d(float *z, const float *q, const float *K, const float *V,
                                                         float *a, int first, int n, const int D, float scale) {
    float mx = -FLT_MAX, sum = 0.f;
    if (D >= 16) {
        for (int t = first; t < n; t++) {
            const float *kt = K + (size_t)t * D;
            float s = 0.f;
            #pragma omp simd reduction(+:s)
            for (int i = 0; i < D; i++) s += q[i] * kt[i];
            a[t] = s * scale;
        }
    } else {
        #pragma omp simd
        for (int t = first; t < n; t++) {
            const float *kt = K + (size_t)t * D;
            float s = 0.f;
            for (int i = 0; i < D; i++) s += q[i] * kt[i];
            a[t] = s * scale;
        }
    }
    #pragma omp simd reduction(max:mx)
    for (int t = first; t < n; t++) mx = a[t] > mx ? a[t] : mx;
    #pragma omp simd reduction(+:sum)
    for (int t = first; t < n; t++) { a[t] = expf(a[t] - mx); sum += a[t]; }
    const float inv = 1.f / sum;
    if (D >= 16) {
        for (int i = 0; i < D; i++) z[i] = 0.f;
        for (int t = first; t < n; t++) {
            const float p = a[t] * inv, *vt = V + (size_t)t * D;
            #pragma omp simd
            for (int i = 0; i < D; i++) z[i] += p * vt[i];
        }
    } else {
        float acc[16] = {0};
        #pragma omp simd reduction(+:acc[:16])
        for (int t = first; t < n; t++)
            for (int i = 0; i < D; i++) acc[i] += a[t] * V[(size_t)t * D + i];
        for (int i = 0; i < D; i++) z[i] = acc[i] * inv;
    }
}

/* `attend` with the paper's short heads (4 and 8 wide) as constants, so that the loops over keys
   load them as fixed-stride vectors instead of gathering them. */
static void attend(float *z, const float *q, const float *K, const float *V, float *a, int first, int n, int D,
                   float scale) {
    if (first >= n) {  /* no keys: a row's padding slot, stepped before its prompt begins */
        for (int i = 0; i < D; i++) z[i] = 0.f;
        return;
    }
    if (D == 4) attend_d(z, q, K, V, a, first, n, 4, scale);
    else if (D == 8) attend_d(z, q, K, V, a, first, n, 8, scale);
    else attend_d(z, q, K, V, a, first, n, D, scale);
}

/* Whether f is finite, from its bits: -Ofast lets the compiler assume isfinite() is always true. */
static inline int finite_float(float f) {
    union { float f; uint32_t u; } c = {.f = f};
    return (c.u & 0x7f800000u) != 0x7f800000u;
}

/* bfloat16 as float: its bits are a float's top half. */
static inline float from_bf16(uint16_t h) {
    union { uint32_t u; float f; } c = {.u = (uint32_t)h << 16};
    return c.f;
}

/* `panel_rows` of one row over the bfloat16 copy of the output layer (`head16`), for the PANELS
   panels of a block (np of them real): interleaved, [blocks][n_in][PANELS][16], so that a block
   is read as one stream. No bias. */
static void panel_row16(float *y, const float *x, const uint16_t *p0, int np, int n_in, int n_out, int first) {
    float acc[PANELS][LANES] = {{0}};
    for (int j = 0; j < n_in; j++) {
        for (int q = 0; q < PANELS; q++) {
            const uint16_t *w = p0 + ((size_t)j * PANELS + q) * LANES;
            #pragma omp simd
            for (int l = 0; l < LANES; l++) acc[q][l] += x[j] * from_bf16(w[l]);
        }
    }
    for (int q = 0; q < np; q++)
        for (int l = 0; l < LANES && first + q * LANES + l < n_out; l++) y[first + q * LANES + l] = acc[q][l];
}

/* The first index of the largest of V values, as torch.argmax: a NaN counts as the largest
   (tested by its bits: -Ofast lets the compiler assume isnan() is always false). */
static int64_t first_max(const float *x, int V) {
    int64_t top = 0;
    for (int i = 0; i < V; i++) {
        union { float f; uint32_t u; } c = {.f = x[i]};
        if ((c.u & 0x7fffffffu) > 0x7f800000u) return i;
        if (x[i] > x[top]) top = i;
    }
    return top;
}

/* The most likely token of one row, from its normalised last hidden state xn, as the first
   largest of its float32 logits, while reading half of the output layer: the largest matrix of
   the 15M shape (37 of its 61 MB), which decoding streams from memory at every token. The
   logits are first computed from the bfloat16 copy (approx, [vocab]). Row j's bfloat16 logit
   A_j is within R_j = head_err[j] * |x| + slack of its float32 logit L_j (Cauchy-Schwarz on the
   rounding of its weights, plus the float32 rounding of both sums: `native.rounding_radius`;
   slack covers denormal results flushed to zero, should the caller's thread do that), so no
   token can beat M = max_j (A_j - R_j), and a token with A_j + R_j < M is strictly below the
   most likely one. The others (one to a few at our shapes) get their float32 logits, computed as
   `gemv` computes them (the same panel, the same order of operations: the same bits). A row with
   infinite or NaN values, or whose logits overflow, gets all its logits.
   tests/test_fast_decode.py checks it against `step`'s logits. */
static int64_t argmax_pruned(const Model *m, const float *x, float *approx) {
    const int d = m->d_model, V = m->vocab, W = PANELS * LANES, nt = m->threads;
    const int panels = (V + LANES - 1) / LANES, blocks = (panels + PANELS - 1) / PANELS;
    #pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int blk = 0; blk < blocks; blk++) {
        const int p = PANELS * blk, np = panels - p < PANELS ? panels - p : PANELS;
        panel_row16(approx, x, m->head16 + (size_t)p * d * LANES, np, d, V, p * LANES);
    }
    const float *A = approx, *err = m->head_err;
    const float slack = 4.f * d * FLT_MIN;  /* what flushing denormal results to zero can move two sums */
    double ss = 0.0;
    for (int i = 0; i < d; i++) ss += (double)x[i] * x[i];
    const float size = (float)sqrt(ss);
    float floor = -FLT_MAX;
    int bad = !finite_float(size);
    #pragma omp simd reduction(max:floor) reduction(|:bad)
    for (int j = 0; j < V; j++) {
        const float low = A[j] - (err[j] * size + slack);
        floor = low > floor ? low : floor;
        bad |= !finite_float(low);
    }
    if (bad || !finite_float(floor)) {  /* inf or NaN in x, or logits or radii that overflow */
        gemv(approx, x, m->head, NULL, 1, d, V, nt);  /* every logit, as `step` computes them */
        return first_max(approx, V);
    }
    int64_t top = 0;
    float top_v = -INFINITY, exact[PANELS * LANES];
    int done = -1;  /* the block whose float32 logits are in `exact` */
    for (int j0 = 0; j0 < V; j0 += LANES) {  /* a vectorised look at 16 tokens, then at each of a few */
        const int n = V - j0 < LANES ? V - j0 : LANES;
        int hit = 0;
        for (int l = 0; l < n; l++) hit |= A[j0 + l] + (err[j0 + l] * size + slack) >= floor;
        if (!hit) continue;
        for (int j = j0; j < j0 + n; j++) {
            if (!(A[j] + (err[j] * size + slack) >= floor)) continue;
            const int blk = j / W;
            if (blk != done) {
                const int p = PANELS * blk, np = panels - p < PANELS ? panels - p : PANELS;
                panel_rows(exact, x, m->head + (size_t)p * d * LANES, np, NULL, d, V - blk * W, 0, 1);
                done = blk;
            }
            if (exact[j - blk * W] > top_v) { top_v = exact[j - blk * W]; top = j; }
        }
    }
    return top;
}

/* Where a call's work goes in its scratch, in floats: the activations of B rows, attention
   weights per thread, one row's approximate logits (`argmax`) and the rows' places in the cache
   (`step`, `argmax`: two int64 each). */
typedef struct { size_t x, xn, qkv, z, o, h, att, approx, at, end; } Layout;

static Layout layout(const Model *m, int B) {
    const size_t d = m->d_model, fc_out = m->act == SWIGLU ? 2 * m->ffn : m->ffn;
    Layout s;
    s.x = 0; s.xn = s.x + B * d; s.qkv = s.xn + B * d; s.z = s.qkv + 3 * B * d; s.o = s.z + B * d;
    s.h = s.o + B * d; s.att = s.h + B * fc_out; s.approx = s.att + (size_t)m->threads * m->context;
    s.at = s.approx + m->vocab;
    s.at += s.at % 2;  /* 8-byte aligned */
    s.end = s.at + 4 * (size_t)B;
    return s;
}

/* Floats of scratch a call of B rows needs, on the model's `threads`. */
long scratch_floats(const Model *m, int B) { return (long)layout(m, B).end; }

/* Addition points per layer (`adds`' layout), for the caller to check against its own list. */
int addition_points(void) { return POINTS; }

/* Row b's position: its slot less its cache row's padding (0 inside the padding). */
static inline int position(const Cache *c, int b, const int64_t *at) {
    const int pos = (int)at[2 * b + 1] - (int)c->pad[at[2 * b]];
    return pos < 0 ? 0 : pos;
}

/* The layer loop: tokens[b] at cache row at[2b], slot at[2b+1], for B rows, through every
   layer; each row's keys and values go into the cache, and its residual stream after the last
   layer stays in the scratch's x. A row attends to its cache row's keys up to its slot, which
   each layer writes for every row first (a prefill's earlier positions are rows of the same
   call); a row at a slot inside its padding (stepped before its prompt begins) attends to
   nothing and writes finite keys and values that nothing reads. adds: NULL (none), or
   (1 + POINTS * n_layer) pointers to [B, d] additions ([B, ffn] at MLP_POST; NULL = none):
   hook_embed, then each layer's points in the order above. */
static void layers(const Model *m, int B, const int64_t *tokens, const int64_t *at, const Cache *c,
                   const float *const *adds, float *scratch) {
    const int d = m->d_model, H = m->n_head, D = m->head_dim, F = m->ffn, nt = m->threads;
    const int fc_out = m->act == SWIGLU ? 2 * F : F;
    const Layout s = layout(m, B);
    float *x = scratch + s.x, *xn = scratch + s.xn, *qkv = scratch + s.qkv, *z = scratch + s.z;
    float *o = scratch + s.o, *h = scratch + s.h, *att = scratch + s.att;
    int keys = 0;  /* the most keys a row attends to */
    for (int b = 0; b < B; b++)
        if (at[2 * b + 1] + 1 > keys) keys = (int)at[2 * b + 1] + 1;

    for (int b = 0; b < B; b++) {
        const int pos = position(c, b, at);
        const float *e = m->tok_emb + (size_t)tokens[b] * d;
        for (int i = 0; i < d; i++) x[b * d + i] = e[i] + (m->pos_emb ? m->pos_emb[(size_t)pos * d + i] : 0.f);
        add(x + b * d, adds, 0, b, d);
    }
    for (int l = 0; l < m->n_layer; l++) {
        const Layer *L = &m->layers[l];
        const float *const *la = adds ? adds + 1 + POINTS * l : NULL;
        const size_t layer = (size_t)l * c->rows * H * c->len * D;
        for (int b = 0; b < B; b++) {
            add(x + b * d, la, RESID_PRE, b, d);
            norm(xn + b * d, x + b * d, L->norm1_w, L->norm1_b, d, m->eps, m->layer_norm);
        }
        gemv(qkv, xn, L->qkv, NULL, B, d, 3 * d, nt);
        for (int b = 0; b < B; b++) {  /* every row's key and value into the cache, before any attends */
            const int64_t r = at[2 * b], slot = at[2 * b + 1];
            const int pos = position(c, b, at);
            for (int hd = 0; hd < H; hd++) {
                float *q = qkv + (size_t)b * 3 * d + hd * D, *k = q + d, *v = q + 2 * d;
                if (L->q_norm) {
                    norm(q, q, L->q_norm, NULL, D, m->qk_eps, 0);
                    norm(k, k, L->k_norm, NULL, D, m->qk_eps, 0);
                }
                if (m->rope_cos) {
                    rope(q, m->rope_cos + (size_t)pos * D, m->rope_sin + (size_t)pos * D, D);
                    rope(k, m->rope_cos + (size_t)pos * D, m->rope_sin + (size_t)pos * D, D);
                }
                const size_t kv = layer + (((size_t)r * H + hd) * c->len + slot) * D;
                for (int i = 0; i < D; i++) { c->k[kv + i] = k[i]; c->v[kv + i] = v[i]; }
            }
        }
        #pragma omp parallel for collapse(2) num_threads(nt) schedule(static) if (nt > 1 && B * H > 1 && (long)B * H * keys * D > 16384)
        for (int b = 0; b < B; b++) {
            for (int hd = 0; hd < H; hd++) {
                const int64_t r = at[2 * b];
                const int slot = (int)at[2 * b + 1];
                const float *K = c->k + layer + ((size_t)r * H + hd) * c->len * D;
                const float *V = c->v + layer + ((size_t)r * H + hd) * c->len * D;
                int first = (int)c->pad[r];
                if (L->window && slot - L->window + 1 > first) first = slot - L->window + 1;
                attend(z + (size_t)b * d + hd * D, qkv + (size_t)b * 3 * d + hd * D, K, V,
                       att + (size_t)thread_num() * m->context, first, slot + 1, D, L->scale);
            }
        }
        gemv(o, z, L->out, L->out_b, B, d, d, nt);
        for (int b = 0; b < B; b++) {
            add(o + b * d, la, ATTN_OUT, b, d);
            for (int i = 0; i < d; i++) x[b * d + i] += o[b * d + i];
            add(x + b * d, la, RESID_MID, b, d);
            norm(xn + b * d, x + b * d, L->norm2_w, L->norm2_b, d, m->eps, m->layer_norm);
        }
        gemv(h, xn, L->fc, L->fc_b, B, d, fc_out, nt);
        for (int b = 0; b < B; b++) {  /* the activation, in place into the first F of each row */
            float *hb = h + (size_t)b * fc_out, *hz = h + (size_t)b * F;
            #pragma omp simd
            for (int i = 0; i < F; i++) {
                float g = hb[i];
                if (m->act == SWIGLU) hz[i] = g / (1.f + expf(-g)) * hb[F + i];
                else if (m->act == RELU2) hz[i] = g > 0.f ? g * g : 0.f;
                else hz[i] = 0.5f * g * (1.f + tanhf(0.7978845608028654f * (g + 0.044715f * g * g * g)));
            }
            add(hz, la, MLP_POST, b, F);  /* the neurons: [B, F] additions */
        }
        gemv(o, h, L->proj, L->proj_b, B, F, d, nt);
        for (int b = 0; b < B; b++) {
            add(o + b * d, la, MLP_OUT, b, d);
            for (int i = 0; i < d; i++) x[b * d + i] += o[b * d + i];
            add(x + b * d, la, RESID_POST, b, d);
        }
    }
}

/* Row b of the running batch is cache row b, at `slot`. */
static const int64_t *batch_rows(const Model *m, int B, int slot, float *scratch) {
    int64_t *at = (int64_t *)(scratch + layout(m, B).at);
    for (int b = 0; b < B; b++) { at[2 * b] = b; at[2 * b + 1] = slot; }
    return at;
}

/* Rows `rows` of the final residual stream x, normalised into xn. */
static void final_norm(const Model *m, float *xn, const float *x, int R, const int64_t *rows) {
    for (int k = 0; k < R; k++)
        norm(xn + (size_t)k * m->d_model, x + (size_t)(rows ? rows[k] : k) * m->d_model, m->norm_w, m->norm_b,
             m->d_model, m->eps, m->layer_norm);
}

/* One decode step of the running batch: tokens[b] appended to cache row b at `slot`; logits
   [B, vocab] of every row's next token. scratch: `scratch_floats(m, B)`. */
void step(const Model *m, int B, const int64_t *tokens, int slot, const Cache *c, const float *const *adds,
          float *logits, float *scratch) {
    const Layout s = layout(m, B);
    layers(m, B, tokens, batch_rows(m, B, slot, scratch), c, adds, scratch);
    final_norm(m, scratch + s.xn, scratch + s.x, B, NULL);
    gemv(logits, scratch + s.xn, m->head, NULL, B, m->d_model, m->vocab, m->threads);
}

/* `step` when only each row's most likely token is wanted: best[b], the first of its largest
   logits, as torch.argmax of `step`'s logits gives it (`argmax_pruned`, a row at a time). */
void argmax(const Model *m, int B, const int64_t *tokens, int slot, const Cache *c, const float *const *adds,
            int64_t *best, float *scratch) {
    const Layout s = layout(m, B);
    layers(m, B, tokens, batch_rows(m, B, slot, scratch), c, adds, scratch);
    final_norm(m, scratch + s.xn, scratch + s.x, B, NULL);
    for (int b = 0; b < B; b++) best[b] = argmax_pruned(m, scratch + s.xn + (size_t)b * m->d_model, scratch + s.approx);
}

/* Prompt positions as rows: tokens[b] at cache row at[2b], slot at[2b+1] (a prompt's positions in
   order, so its earlier ones are in the cache, or in this call, before its later ones attend);
   logits [n_out, vocab] of rows out[0..n_out) (each prompt's last position; n_out may be 0). */
void prefill(const Model *m, int B, const int64_t *tokens, const int64_t *at, const Cache *c, const float *const *adds,
             int n_out, const int64_t *out, float *logits, float *scratch) {
    const Layout s = layout(m, B);
    layers(m, B, tokens, at, c, adds, scratch);
    if (n_out == 0) return;  /* no prompt ends in this call */
    final_norm(m, scratch + s.xn, scratch + s.x, n_out, out);
    gemv(logits, scratch + s.xn, m->head, NULL, n_out, m->d_model, m->vocab, m->threads);
}
