/* The sampler's rule (infer/sampler.py) in C for rows that draw: temperature, top-k, top-p, min-p
   and the inverse-CDF draw, in expected O(V) per row (a repetition penalty is applied to the
   logits before they come here).

   The PyTorch form sorts each row's vocabulary to find the top-p cut, several passes over
   [B, V] of which the sort is the slowest (bench/README.md). Here a histogram of the row's
   logits finds the bin where the cumulative probability (largest first) reaches top_p, and a
   quickselect among that bin's tokens finds the cut (`cut`); top-k's cut is found the same
   way, by counts; min-p's is the largest value plus log(min_p). Each cut is a value, as in the
   PyTorch form: every token tied with the last one kept stays.
   tests/test_sampling.py checks it draws the tokens `reference_probs` and `draw` draw.

   Sums are in double, where the PyTorch form sums in float: the two can differ only where a
   cumulative probability falls within rounding of top_p or of the uniform number. */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

typedef struct { float x, w; } Item;  /* a token's scaled logit, and its weight in the cumulative sum */

/* The value of the item at which the cumulative weight, over items largest first, first reaches
   `target` from `acc` (-INFINITY if it never does: then every item stays). Reorders the items. */
static float select_cut(Item *it, int n, double acc, double target) {
    int lo = 0, hi = n;  /* the item sought is among it[lo..hi) */
    while (lo < hi) {
        float a = it[lo].x, b = it[lo + (hi - lo) / 2].x, c = it[hi - 1].x;
        float pivot = a < b ? (b < c ? b : (a < c ? c : a)) : (a < c ? a : (b < c ? c : b));  /* median of 3 */
        int gt = lo, i = lo, lt = hi;  /* [lo, gt) > pivot, [gt, lt) == pivot, [lt, hi) < pivot */
        while (i < lt) {
            Item t = it[i];
            if (t.x > pivot) { it[i++] = it[gt]; it[gt++] = t; }
            else if (t.x < pivot) { it[i] = it[--lt]; it[lt] = t; }
            else i++;
        }
        double above = 0.0, tied = 0.0;
        for (int k = lo; k < gt; k++) above += it[k].w;
        for (int k = gt; k < lt; k++) tied += it[k].w;
        if (acc + above >= target) hi = gt;
        else if (acc + above + tied >= target) return pivot;
        else { acc += above + tied; lo = lt; }
    }
    return -INFINITY;
}

enum { BINS = 1024 };

/* The value of the token at which the cumulative weight w (NULL: 1 each), over tokens at or above
   `floor` taken largest first, first reaches `target` (-INFINITY if it never does). A histogram
   over [lo, hi] finds the bin where it does: each token's bin in one vectorised pass, the bins'
   weights in a second (one pass doing both ran slower: the scattered adds stop the first
   from vectorising); a quickselect among that bin's tokens finds the token. `bin` and `it`:
   room for V each. */
static float cut(const float *x, const float *w, int V, float floor, float lo, float hi, double target,
                 uint16_t *bin, Item *it) {
    double mass[BINS] = {0};
    const float scale = hi > lo ? (BINS - 1) / (hi - lo) : 0.f;
    for (int i = 0; i < V; i++) {
        int k = (int)((hi - x[i]) * scale);
        bin[i] = (uint16_t)(k < 0 ? 0 : k > BINS - 1 ? BINS - 1 : k);  /* bin 0: the largest values */
    }
    for (int i = 0; i < V; i++)
        if (x[i] >= floor) mass[bin[i]] += w ? w[i] : 1.f;
    double acc = 0.0;
    int b = 0;
    while (b < BINS && acc + mass[b] < target) acc += mass[b++];
    if (b == BINS) return -INFINITY;
    int n = 0;
    for (int i = 0; i < V; i++)
        if (bin[i] == b && x[i] >= floor) it[n++] = (Item){x[i], w ? w[i] : 1.f};
    return select_cut(it, n, acc, target);
}

/* Room for a row's work, one buffer per thread (OpenMP's threads live as long as the process). */
static float *room(int V) {
    static __thread float *buf;
    static __thread int cap;
    if (cap < V) {
        free(buf);
        buf = malloc((size_t)V * 5 * sizeof(float));
        cap = buf ? V : 0;
    }
    return buf;
}

/* One row: the token drawn with uniform number u from logits after the row's settings
   (top_k 0: off; top_p 1: off; min_p 0: off). -1 if out of memory. */
static int64_t sample_row(const float *logits, int V, float temperature, int top_k, float top_p, float min_p,
                          double u) {
    float *x = room(V);
    if (!x) return -1;
    float *e = x + V;
    Item *it = (Item *)(e + V);
    uint16_t *bin = (uint16_t *)(e + 3 * (size_t)V);
    float mx = -INFINITY, mn = INFINITY;
    for (int i = 0; i < V; i++) {
        x[i] = logits[i] / temperature;
        mx = x[i] > mx ? x[i] : mx;
        mn = x[i] < mn ? x[i] : mn;
    }
    float keep = -INFINITY;  /* tokens below this value are cut */
    if (top_k > 0 && top_k < V) keep = cut(x, NULL, V, keep, mn, mx, top_k, bin, it);
    double total = 0.0;
    for (int i = 0; i < V; i++) {
        e[i] = x[i] >= keep ? expf(x[i] - mx) : 0.f;
        total += e[i];
    }
    if (top_p < 1.f) {
        float p = cut(x, e, V, keep, keep > mn ? keep : mn, mx, (double)top_p * total, bin, it);
        keep = p > keep ? p : keep;
    }
    if (min_p > 0.f) {  /* p(token) >= min_p * p(most likely), in scaled logits */
        float m = mx + (float)log((double)min_p);
        keep = m > keep ? m : keep;
    }
    double kept = 0.0;
    for (int i = 0; i < V; i++) kept += x[i] >= keep ? e[i] : 0.f;
    const double r = u * kept;
    double acc = 0.0;
    int64_t last = 0;
    for (int i = 0; i < V; i++) {
        if (x[i] < keep) continue;
        acc += e[i];
        last = i;
        if (acc > r) return i;
    }
    return last;
}

/* out[b]: the token of row b of logits [B, V], drawn with u[b] after temperature[b] (> 0),
   top_k[b], top_p[b] and min_p[b]. Rows run in parallel on `threads` threads. */
void sample_rows(const float *logits, int B, int V, const float *temperature, const int32_t *top_k,
                 const float *top_p, const float *min_p, const double *u, int64_t *out, int threads) {
    #pragma omp parallel for num_threads(threads) schedule(dynamic) if (threads > 1 && B > 1)
    for (int b = 0; b < B; b++)
        out[b] = sample_row(logits + (size_t)b * V, V, temperature[b], top_k[b], top_p[b], min_p[b], u[b]);
}
