/* SPDX-License-Identifier: MIT */
/*
 * oracle.c — the reference NSA forward pass of the tests, in double.
 *
 * Each function below is one sentence of docs/nsa-semantics.md written out as
 * loops; the section it implements is named in its comment. Nothing here is
 * meant to be fast: clarity is the point, since every library result is
 * checked against this file. It is written from the spec alone and must not
 * borrow from src/.
 */
#include "oracle.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct oracle_state {
    oracle_problem p;   /* shallow copy: the caller keeps the tensors alive */
    int64_t *cmp_first; /* [num_seqs+1] first compressed token of each
                           sequence in kc / vc */
    double *kc;         /* [total compressed][Hkv][Dk] */
    double *vc;         /* [total compressed][Hkv][Dv] */
};

/* ------------------------------------------------------------------------ */
/* Small facts of the spec                                                   */
/* ------------------------------------------------------------------------ */

int64_t oracle_num_compressed(const nsa_config *cfg, int64_t len)
{
    /* Section 1: C(L) = floor((L - l)/d) + 1 if L >= l, else 0. */
    if (len < cfg->cmp_block)
        return 0;
    return (len - cfg->cmp_block) / cfg->cmp_stride + 1;
}

int64_t oracle_num_blocks(const nsa_config *cfg, int64_t len)
{
    return (len + cfg->sel_block - 1) / cfg->sel_block;
}

int64_t oracle_num_candidates(const nsa_config *cfg, int64_t len, int64_t t)
{
    /* Section 3: J = 0 .. floor(t/l'); section 9: every block. */
    if (cfg->causal)
        return t / cfg->sel_block + 1;
    return oracle_num_blocks(cfg, len);
}

int oracle_block_is_forced(const nsa_config *cfg, int64_t t, int64_t block)
{
    /* Sections 3 and 9: J < n_init, or floor(t/l') - n_local < J <=
     * floor(t/l'). The upper bound only matters when non-causal, where blocks
     * after the query's own are candidates too. */
    int64_t own = t / cfg->sel_block;
    if (block < cfg->sel_init)
        return 1;
    return block > own - cfg->sel_local && block <= own;
}

int64_t oracle_num_selected(const nsa_config *cfg, int64_t len, int64_t t)
{
    int64_t cand = oracle_num_candidates(cfg, len, t);
    return cand < cfg->sel_count ? cand : cfg->sel_count;
}

/* Compressed tokens query t may attend to (section 2; section 9: all). */
static int64_t num_visible_compressed(const nsa_config *cfg, int64_t len, int64_t t)
{
    if (!cfg->causal)
        return oracle_num_compressed(cfg, len);
    /* i*d + l - 1 <= t  <=>  i <= (t + 1 - l) / d */
    if (t < cfg->cmp_block - 1)
        return 0;
    return (t + 1 - cfg->cmp_block) / cfg->cmp_stride + 1;
}

/* omega(i, J) of Eq. 9: how much of compressed token i's window lies in
 * selection block J, in units of the stride d. */
static double overlap_weight(const nsa_config *cfg, int64_t i, int64_t block)
{
    int64_t c_lo = i * cfg->cmp_stride;
    int64_t c_hi = c_lo + cfg->cmp_block - 1;
    int64_t b_lo = block * cfg->sel_block;
    int64_t b_hi = b_lo + cfg->sel_block - 1;
    int64_t lo = c_lo > b_lo ? c_lo : b_lo;
    int64_t hi = c_hi < b_hi ? c_hi : b_hi;
    if (hi < lo)
        return 0.0;
    return (double)(hi - lo + 1) / (double)cfg->cmp_stride;
}

/* ------------------------------------------------------------------------ */
/* Section 1: compression                                                    */
/* ------------------------------------------------------------------------ */

/* phi of one window for one KV head. x points at token 0 of the window for
 * head h; consecutive tokens are row_stride floats apart. dim is Dk or Dv. */
static void compress_window(const nsa_config *cfg, const nsa_compress_params *prm, const float *x,
                            int64_t row_stride, int64_t dim, int64_t h, double *u, double *hidden,
                            double *out)
{
    const int64_t l = cfg->cmp_block;
    const int64_t ld = l * dim;

    /* u = vec(x + pe): token j, then channel e. */
    for (int64_t j = 0; j < l; j++) {
        for (int64_t e = 0; e < dim; e++) {
            double pe = prm->pe ? (double)prm->pe[(h * l + j) * dim + e] : 0.0;
            u[j * dim + e] = (double)x[j * row_stride + e] + pe;
        }
    }

    switch (cfg->compress) {
    case NSA_COMPRESS_MEAN:
        for (int64_t e = 0; e < dim; e++) {
            double sum = 0.0;
            for (int64_t j = 0; j < l; j++)
                sum += u[j * dim + e];
            out[e] = sum / (double)l;
        }
        break;
    case NSA_COMPRESS_WEIGHTED:
        for (int64_t e = 0; e < dim; e++) {
            double sum = 0.0;
            for (int64_t j = 0; j < l; j++)
                sum += (double)prm->a[h * l + j] * u[j * dim + e];
            out[e] = sum;
        }
        break;
    case NSA_COMPRESS_LINEAR: {
        const float *w = prm->w + h * ld * dim; /* [l*D][D] */
        for (int64_t c = 0; c < dim; c++) {
            double sum = 0.0;
            for (int64_t r = 0; r < ld; r++)
                sum += (double)w[r * dim + c] * u[r];
            out[c] = sum;
        }
        break;
    }
    case NSA_COMPRESS_MLP: {
        const int64_t m = cfg->cmp_mlp_hidden;
        const float *w1 = prm->w1 + h * ld * m;  /* [l*D][M] */
        const float *w2 = prm->w2 + h * m * dim; /* [M][D] */
        for (int64_t k = 0; k < m; k++) {
            double sum = 0.0;
            for (int64_t r = 0; r < ld; r++)
                sum += (double)w1[r * m + k] * u[r];
            hidden[k] = sum > 0.0 ? sum : 0.0;
        }
        for (int64_t c = 0; c < dim; c++) {
            double sum = 0.0;
            for (int64_t k = 0; k < m; k++)
                sum += (double)w2[k * dim + c] * hidden[k];
            out[c] = sum;
        }
        break;
    }
    }
}

/* Compressed tokens of one tensor (K or V) of one sequence. */
static void compress_sequence(const nsa_config *cfg, const nsa_compress_params *prm,
                              const float *x_seq, int64_t dim, int64_t len, double *dst, double *u,
                              double *hidden)
{
    const int64_t hkv = cfg->num_kv_heads;
    const int64_t count = oracle_num_compressed(cfg, len);
    for (int64_t i = 0; i < count; i++) {
        for (int64_t h = 0; h < hkv; h++) {
            const float *x = x_seq + (i * cfg->cmp_stride * hkv + h) * dim;
            compress_window(cfg, prm, x, hkv * dim, dim, h, u, hidden, dst + (i * hkv + h) * dim);
        }
    }
}

oracle_state *oracle_prepare(const oracle_problem *p)
{
    const nsa_config *cfg = &p->cfg;
    const int64_t hkv = cfg->num_kv_heads;
    const int64_t dk = cfg->head_dim_qk, dv = cfg->head_dim_v;
    const int64_t dmax = dk > dv ? dk : dv;

    oracle_state *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->p = *p;
    s->cmp_first = calloc((size_t)p->num_seqs + 1, sizeof(int64_t));
    if (!s->cmp_first)
        goto fail;
    for (int64_t b = 0; b < p->num_seqs; b++) {
        int64_t len = p->cu_seqlens[b + 1] - p->cu_seqlens[b];
        s->cmp_first[b + 1] = s->cmp_first[b] + oracle_num_compressed(cfg, len);
    }
    /* +1 keeps the allocations non-empty when no sequence reaches l. */
    int64_t total = s->cmp_first[p->num_seqs];
    s->kc = malloc(((size_t)(total * hkv * dk) + 1) * sizeof(double));
    s->vc = malloc(((size_t)(total * hkv * dv) + 1) * sizeof(double));
    double *u = malloc((size_t)(cfg->cmp_block * dmax) * sizeof(double));
    double *hidden =
        malloc(((size_t)(cfg->cmp_mlp_hidden > 0 ? cfg->cmp_mlp_hidden : 1)) * sizeof(double));
    if (!s->kc || !s->vc || !u || !hidden) {
        free(u);
        free(hidden);
        goto fail;
    }
    for (int64_t b = 0; b < p->num_seqs; b++) {
        int64_t start = p->cu_seqlens[b];
        int64_t len = p->cu_seqlens[b + 1] - start;
        compress_sequence(cfg, &p->cmp_k, p->k + start * hkv * dk, dk, len,
                          s->kc + s->cmp_first[b] * hkv * dk, u, hidden);
        compress_sequence(cfg, &p->cmp_v, p->v + start * hkv * dv, dv, len,
                          s->vc + s->cmp_first[b] * hkv * dv, u, hidden);
    }
    free(u);
    free(hidden);
    return s;

fail:
    oracle_free(s);
    return NULL;
}

void oracle_free(oracle_state *s)
{
    if (!s)
        return;
    free(s->cmp_first);
    free(s->kc);
    free(s->vc);
    free(s);
}

/* ------------------------------------------------------------------------ */
/* Softmax attention in double                                               */
/* ------------------------------------------------------------------------ */

/* Turns logits into probabilities in place (max-subtracted for range). */
static void softmax_in_place(double *x, int64_t n)
{
    if (n == 0)
        return;
    double mx = x[0];
    for (int64_t i = 1; i < n; i++)
        if (x[i] > mx)
            mx = x[i];
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) {
        x[i] = exp(x[i] - mx);
        sum += x[i];
    }
    for (int64_t i = 0; i < n; i++)
        x[i] /= sum;
}

static double dot_f32_f32(const float *a, const float *b, int64_t n)
{
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)a[i] * (double)b[i];
    return sum;
}

static double dot_f32_f64(const float *a, const double *b, int64_t n)
{
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)a[i] * b[i];
    return sum;
}

/* Attention of one query over raw keys at local positions pos[0..npos-1] of
 * the sequence starting at global token `start`, for KV head h. out = 0 when
 * npos = 0 (an empty key set attends to nothing). */
static void attend_raw(const oracle_problem *p, const float *qv, int64_t start, int64_t h,
                       const int64_t *pos, int64_t npos, double *logits, double *out)
{
    const int64_t hkv = p->cfg.num_kv_heads;
    const int64_t dk = p->cfg.head_dim_qk, dv = p->cfg.head_dim_v;
    const double scale = (double)p->cfg.scale;

    for (int64_t e = 0; e < dv; e++)
        out[e] = 0.0;
    for (int64_t j = 0; j < npos; j++) {
        const float *kv = p->k + ((start + pos[j]) * hkv + h) * dk;
        logits[j] = scale * dot_f32_f32(qv, kv, dk);
    }
    softmax_in_place(logits, npos);
    for (int64_t j = 0; j < npos; j++) {
        const float *vv = p->v + ((start + pos[j]) * hkv + h) * dv;
        for (int64_t e = 0; e < dv; e++)
            out[e] += logits[j] * (double)vv[e];
    }
}

/* ------------------------------------------------------------------------ */
/* Per-token work                                                            */
/* ------------------------------------------------------------------------ */

/* Where one token sits: its sequence, and its position in it. */
typedef struct token_place {
    int64_t seq, start, len, t;
} token_place;

static token_place locate_token(const oracle_problem *p, int64_t token)
{
    /* The sequence b with cu[b] <= token < cu[b+1]; zero-length sequences
     * never contain a token, so the first b whose end exceeds token. */
    token_place tp = {0, 0, 0, 0};
    for (int64_t b = 0; b < p->num_seqs; b++) {
        if (p->cu_seqlens[b + 1] > token) {
            tp.seq = b;
            tp.start = p->cu_seqlens[b];
            tp.len = p->cu_seqlens[b + 1] - tp.start;
            tp.t = token - tp.start;
            return tp;
        }
    }
    return tp; /* not reached for a valid token */
}

/* Section 2 for one query head: o_cmp and the probabilities p over the
 * visible compressed tokens (p has nvis entries). */
static void compressed_attention(const oracle_state *s, const token_place *tp, const float *qv,
                                 int64_t h, int64_t nvis, double *p, double *out)
{
    const nsa_config *cfg = &s->p.cfg;
    const int64_t hkv = cfg->num_kv_heads;
    const int64_t dk = cfg->head_dim_qk, dv = cfg->head_dim_v;
    const double *kc = s->kc + s->cmp_first[tp->seq] * hkv * dk;
    const double *vc = s->vc + s->cmp_first[tp->seq] * hkv * dv;

    for (int64_t i = 0; i < nvis; i++)
        p[i] = (double)cfg->scale * dot_f32_f64(qv, kc + (i * hkv + h) * dk, dk);
    softmax_in_place(p, nvis);
    /* Nothing visible: o_cmp = 0 (the loop below adds nothing). */
    for (int64_t e = 0; e < dv; e++)
        out[e] = 0.0;
    for (int64_t i = 0; i < nvis; i++)
        for (int64_t e = 0; e < dv; e++)
            out[e] += p[i] * vc[(i * hkv + h) * dv + e];
}

/* Section 3, selection for one KV head: fills sel[0..n-1] ascending, -1
 * padded, and returns the ranking margin. */
static double select_blocks(const nsa_config *cfg, const token_place *tp, const double *score,
                            unsigned char *chosen, int32_t *sel)
{
    const int64_t ncand = oracle_num_candidates(cfg, tp->len, tp->t);
    const int64_t target = oracle_num_selected(cfg, tp->len, tp->t);
    int64_t count = 0;

    for (int64_t j = 0; j < ncand; j++) {
        chosen[j] = (unsigned char)oracle_block_is_forced(cfg, tp->t, j);
        count += chosen[j];
    }

    /* Ranking: highest score first, ties to the lower block index (strict >
     * while scanning upwards keeps the first of equal scores). */
    int ranked = 0;
    double lowest_ranked = 0.0;
    while (count < target) {
        int64_t best = -1;
        for (int64_t j = 0; j < ncand; j++)
            if (!chosen[j] && (best < 0 || score[j] > score[best]))
                best = j;
        chosen[best] = 1;
        count++;
        ranked = 1;
        lowest_ranked = score[best];
    }

    int64_t w = 0;
    for (int64_t j = 0; j < ncand; j++)
        if (chosen[j])
            sel[w++] = (int32_t)j;
    for (; w < cfg->sel_count; w++)
        sel[w] = -1;

    /* The decision that a float implementation could flip: the weakest
     * ranked pick against the strongest block left out. */
    int64_t best_left = -1;
    for (int64_t j = 0; j < ncand; j++)
        if (!chosen[j] && (best_left < 0 || score[j] > score[best_left]))
            best_left = j;
    if (!ranked || best_left < 0)
        return INFINITY;
    double a = lowest_ranked, b = score[best_left];
    double mag = fabs(a) > fabs(b) ? fabs(a) : fabs(b);
    if (mag == 0.0)
        return 0.0;
    return (a - b) / mag;
}

/* The raw key positions of a block set (section 4): every position of each
 * block inside the sequence, cut at the query when causal. Returns count. */
static int64_t gather_block_positions(const nsa_config *cfg, const token_place *tp,
                                      const int32_t *blocks, int64_t *pos)
{
    int64_t npos = 0;
    for (int64_t slot = 0; slot < cfg->sel_count; slot++) {
        if (blocks[slot] < 0)
            continue;
        int64_t lo = (int64_t)blocks[slot] * cfg->sel_block;
        int64_t hi = lo + cfg->sel_block - 1;
        if (hi > tp->len - 1)
            hi = tp->len - 1;
        if (cfg->causal && hi > tp->t)
            hi = tp->t;
        for (int64_t x = lo; x <= hi; x++)
            pos[npos++] = x;
    }
    return npos;
}

/* The window positions (section 5; section 9 centres it). */
static int64_t gather_window_positions(const nsa_config *cfg, const token_place *tp, int64_t *pos)
{
    int64_t w = cfg->window, lo, hi;
    if (cfg->causal) {
        lo = tp->t - w + 1;
        hi = tp->t;
    } else {
        lo = tp->t - w / 2;
        hi = tp->t + (w + 1) / 2 - 1;
    }
    if (lo < 0)
        lo = 0;
    if (hi > tp->len - 1)
        hi = tp->len - 1;
    int64_t npos = 0;
    for (int64_t x = lo; x <= hi; x++)
        pos[npos++] = x;
    return npos;
}

/* Scratch of one oracle_token call, sized for the token's sequence. */
typedef struct token_scratch {
    double *p;             /* [C] compressed probabilities */
    double *score;         /* [blocks] */
    unsigned char *chosen; /* [blocks] */
    int64_t *pos;          /* key positions of one branch */
    double *logits;        /* one per key position */
    int32_t *sel;          /* [Hkv][n] */
    double *branch;        /* [3][Hq][Dv] o_cmp, o_slc, o_swa */
} token_scratch;

static int scratch_alloc(token_scratch *sc, const nsa_config *cfg, int64_t len)
{
    int64_t c = oracle_num_compressed(cfg, len) + 1;
    int64_t nb = oracle_num_blocks(cfg, len) + 1;
    int64_t hq = cfg->num_q_heads, dv = cfg->head_dim_v;
    /* Valid blocks are distinct, so at most len keys; the extra room keeps a
     * repeated block (a buggy selection passed back in) from overflowing. */
    int64_t keys = len + (int64_t)cfg->sel_count * cfg->sel_block + 1;
    sc->p = malloc((size_t)c * sizeof(double));
    sc->score = malloc((size_t)nb * sizeof(double));
    sc->chosen = malloc((size_t)nb);
    sc->pos = malloc((size_t)keys * sizeof(int64_t));
    sc->logits = malloc((size_t)keys * sizeof(double));
    sc->sel = malloc((size_t)(cfg->num_kv_heads * cfg->sel_count) * sizeof(int32_t));
    sc->branch = malloc((size_t)(3 * hq * dv) * sizeof(double));
    return sc->p && sc->score && sc->chosen && sc->pos && sc->logits && sc->sel && sc->branch;
}

static void scratch_free(token_scratch *sc)
{
    free(sc->p);
    free(sc->score);
    free(sc->chosen);
    free(sc->pos);
    free(sc->logits);
    free(sc->sel);
    free(sc->branch);
}

/* Sections 2 and 3 for KV head h: o_cmp of the G query heads, and the group's
 * block scores summed over them (Eq. 10). */
static void compressed_branch_and_scores(const oracle_state *s, const token_place *tp,
                                         int64_t token, int64_t h, token_scratch *sc, double *o_cmp)
{
    const nsa_config *cfg = &s->p.cfg;
    const int64_t g = cfg->num_q_heads / cfg->num_kv_heads;
    const int64_t dk = cfg->head_dim_qk, dv = cfg->head_dim_v;
    const int64_t nvis = num_visible_compressed(cfg, tp->len, tp->t);
    const int64_t nb = oracle_num_blocks(cfg, tp->len);

    for (int64_t j = 0; j < nb; j++)
        sc->score[j] = 0.0;
    for (int64_t hq = h * g; hq < (h + 1) * g; hq++) {
        const float *qv = s->p.q + (token * cfg->num_q_heads + hq) * dk;
        compressed_attention(s, tp, qv, h, nvis, sc->p, o_cmp + hq * dv);
        for (int64_t j = 0; j < nb; j++)
            for (int64_t i = 0; i < nvis; i++)
                sc->score[j] += overlap_weight(cfg, i, j) * sc->p[i];
    }
}

void oracle_token(const oracle_state *s, int64_t token, const int32_t *given_indices, double *o,
                  double *o_cmp, double *o_slc, double *o_swa, int32_t *indices, double *margin)
{
    const oracle_problem *p = &s->p;
    const nsa_config *cfg = &p->cfg;
    const int64_t hq_n = cfg->num_q_heads, hkv = cfg->num_kv_heads;
    const int64_t g = hq_n / hkv, n = cfg->sel_count;
    const int64_t dk = cfg->head_dim_qk, dv = cfg->head_dim_v;
    const token_place tp = locate_token(p, token);

    token_scratch sc;
    if (!scratch_alloc(&sc, cfg, tp.len)) {
        /* The tests treat NaN as a failure, so an allocation failure in the
         * oracle can never pass silently. */
        scratch_free(&sc);
        for (int64_t e = 0; o && e < hq_n * dv; e++)
            o[e] = NAN;
        return;
    }
    double *bc = sc.branch, *bs = bc + hq_n * dv, *bw = bs + hq_n * dv;

    for (int64_t h = 0; h < hkv; h++) {
        int32_t *sel = sc.sel + h * n;
        compressed_branch_and_scores(s, &tp, token, h, &sc, bc);
        double m = INFINITY;
        if (given_indices)
            memcpy(sel, given_indices + h * n, (size_t)n * sizeof(int32_t));
        else
            m = select_blocks(cfg, &tp, sc.score, sc.chosen, sel);
        if (margin)
            margin[h] = m;

        int64_t nsel = gather_block_positions(cfg, &tp, sel, sc.pos);
        for (int64_t hq = h * g; hq < (h + 1) * g; hq++) {
            const float *qv = p->q + (token * hq_n + hq) * dk;
            attend_raw(p, qv, tp.start, h, sc.pos, nsel, sc.logits, bs + hq * dv);
        }
        int64_t nwin = gather_window_positions(cfg, &tp, sc.pos);
        for (int64_t hq = h * g; hq < (h + 1) * g; hq++) {
            const float *qv = p->q + (token * hq_n + hq) * dk;
            attend_raw(p, qv, tp.start, h, sc.pos, nwin, sc.logits, bw + hq * dv);
        }
    }

    if (indices) {
        /* Report the set used, ascending and -1 padded, whatever order the
         * caller gave it in. */
        for (int64_t h = 0; h < hkv; h++) {
            int32_t *dst = indices + h * n;
            const int32_t *src = sc.sel + h * n;
            int64_t w = 0;
            for (int64_t blk = 0; blk < oracle_num_blocks(cfg, tp.len); blk++)
                for (int64_t slot = 0; slot < n; slot++)
                    if (src[slot] == blk)
                        dst[w++] = (int32_t)blk;
            for (; w < n; w++)
                dst[w] = -1;
        }
    }
    if (o) {
        /* Section 6: the gate mix. */
        for (int64_t hq = 0; hq < hq_n; hq++) {
            const float *gt = p->gates + (token * hq_n + hq) * 3;
            for (int64_t e = 0; e < dv; e++) {
                int64_t x = hq * dv + e;
                o[x] = (double)gt[0] * bc[x] + (double)gt[1] * bs[x] + (double)gt[2] * bw[x];
            }
        }
    }
    size_t bytes = (size_t)(hq_n * dv) * sizeof(double);
    if (o_cmp)
        memcpy(o_cmp, bc, bytes);
    if (o_slc)
        memcpy(o_slc, bs, bytes);
    if (o_swa)
        memcpy(o_swa, bw, bytes);
    scratch_free(&sc);
}

int64_t oracle_block_scores(const oracle_state *s, int64_t token, int64_t h, double *scores)
{
    const nsa_config *cfg = &s->p.cfg;
    const token_place tp = locate_token(&s->p, token);
    token_scratch sc;
    if (!scratch_alloc(&sc, cfg, tp.len)) {
        scratch_free(&sc);
        return -1;
    }
    compressed_branch_and_scores(s, &tp, token, h, &sc, sc.branch);
    int64_t ncand = oracle_num_candidates(cfg, tp.len, tp.t);
    memcpy(scores, sc.score, (size_t)ncand * sizeof(double));
    scratch_free(&sc);
    return ncand;
}

void oracle_forward(const oracle_state *s, const int32_t *given_indices, double *o, double *o_cmp,
                    double *o_slc, double *o_swa, int32_t *indices, double *margin)
{
    const nsa_config *cfg = &s->p.cfg;
    const int64_t row = (int64_t)cfg->num_q_heads * cfg->head_dim_v;
    const int64_t nrow = (int64_t)cfg->num_kv_heads * cfg->sel_count;
    for (int64_t tok = 0; tok < s->p.total_tokens; tok++) {
        oracle_token(s, tok, given_indices ? given_indices + tok * nrow : NULL,
                     o ? o + tok * row : NULL, o_cmp ? o_cmp + tok * row : NULL,
                     o_slc ? o_slc + tok * row : NULL, o_swa ? o_swa + tok * row : NULL,
                     indices ? indices + tok * nrow : NULL,
                     margin ? margin + tok * cfg->num_kv_heads : NULL);
    }
}

/* ------------------------------------------------------------------------ */
/* Helpers for gradient checks                                               */
/* ------------------------------------------------------------------------ */

double oracle_loss(const oracle_state *s, const int32_t *given_indices, const float *dout,
                   int64_t first_token, int64_t end_token)
{
    const nsa_config *cfg = &s->p.cfg;
    const int64_t row = (int64_t)cfg->num_q_heads * cfg->head_dim_v;
    const int64_t nrow = (int64_t)cfg->num_kv_heads * cfg->sel_count;
    double *o = malloc((size_t)row * sizeof(double));
    if (!o)
        return NAN;
    double loss = 0.0;
    for (int64_t tok = first_token; tok < end_token; tok++) {
        oracle_token(s, tok, given_indices ? given_indices + tok * nrow : NULL, o, NULL, NULL, NULL,
                     NULL, NULL);
        for (int64_t x = 0; x < row; x++)
            loss += (double)dout[tok * row + x] * o[x];
    }
    free(o);
    return loss;
}

double oracle_compressed_loss(const oracle_state *s, const float *dout, int64_t first_token,
                              int64_t end_token)
{
    const oracle_problem *p = &s->p;
    const nsa_config *cfg = &p->cfg;
    const int64_t hq_n = cfg->num_q_heads, dv = cfg->head_dim_v;
    double loss = 0.0;
    for (int64_t tok = first_token; tok < end_token; tok++) {
        const token_place tp = locate_token(p, tok);
        token_scratch sc;
        if (!scratch_alloc(&sc, cfg, tp.len)) {
            scratch_free(&sc);
            return NAN;
        }
        for (int64_t h = 0; h < cfg->num_kv_heads; h++)
            compressed_branch_and_scores(s, &tp, tok, h, &sc, sc.branch);
        for (int64_t hq = 0; hq < hq_n; hq++) {
            double dot = 0.0;
            for (int64_t e = 0; e < dv; e++)
                dot += (double)dout[(tok * hq_n + hq) * dv + e] * sc.branch[hq * dv + e];
            loss += (double)p->gates[(tok * hq_n + hq) * 3] * dot;
        }
        scratch_free(&sc);
    }
    return loss;
}

/* oracle_relu_kink_distance for one tensor (K or V) of one sequence: lowers
 * *min_pre to the smallest |pre-activation| and raises *max_sensitivity to
 * the largest |W1| and |x + pe| its windows use. */
static void relu_margins_of_sequence(const nsa_config *cfg, const nsa_compress_params *prm,
                                     const float *x_seq, int64_t dim, int64_t len, double *u,
                                     double *min_pre, double *max_sensitivity)
{
    const int64_t hkv = cfg->num_kv_heads, l = cfg->cmp_block, m = cfg->cmp_mlp_hidden;
    const int64_t ld = l * dim;
    const int64_t count = oracle_num_compressed(cfg, len);
    for (int64_t h = 0; h < hkv && count > 0; h++) {
        const float *w1 = prm->w1 + h * ld * m;
        for (int64_t r = 0; r < ld * m; r++)
            *max_sensitivity = fmax(*max_sensitivity, fabs((double)w1[r]));
    }
    for (int64_t i = 0; i < count; i++) {
        for (int64_t h = 0; h < hkv; h++) {
            const float *x = x_seq + (i * cfg->cmp_stride * hkv + h) * dim;
            const float *w1 = prm->w1 + h * ld * m;
            for (int64_t j = 0; j < l; j++) {
                for (int64_t e = 0; e < dim; e++) {
                    double pe = prm->pe ? (double)prm->pe[(h * l + j) * dim + e] : 0.0;
                    u[j * dim + e] = (double)x[j * hkv * dim + e] + pe;
                    *max_sensitivity = fmax(*max_sensitivity, fabs(u[j * dim + e]));
                }
            }
            for (int64_t k = 0; k < m; k++) {
                double sum = 0.0;
                for (int64_t r = 0; r < ld; r++)
                    sum += (double)w1[r * m + k] * u[r];
                *min_pre = fmin(*min_pre, fabs(sum));
            }
        }
    }
}

double oracle_relu_kink_distance(const oracle_state *s)
{
    const oracle_problem *p = &s->p;
    const nsa_config *cfg = &p->cfg;
    if (cfg->compress != NSA_COMPRESS_MLP)
        return INFINITY;
    const int64_t hkv = cfg->num_kv_heads;
    const int64_t dk = cfg->head_dim_qk, dv = cfg->head_dim_v;
    const int64_t dmax = dk > dv ? dk : dv;
    double *u = malloc((size_t)(cfg->cmp_block * dmax) * sizeof(double));
    if (!u)
        return 0.0; /* no safe step known: the caller's check will fail */
    double min_pre = INFINITY, max_sensitivity = 0.0;
    for (int64_t b = 0; b < p->num_seqs; b++) {
        int64_t start = p->cu_seqlens[b];
        int64_t len = p->cu_seqlens[b + 1] - start;
        relu_margins_of_sequence(cfg, &p->cmp_k, p->k + start * hkv * dk, dk, len, u, &min_pre,
                                 &max_sensitivity);
        relu_margins_of_sequence(cfg, &p->cmp_v, p->v + start * hkv * dv, dv, len, u, &min_pre,
                                 &max_sensitivity);
    }
    free(u);
    if (!(max_sensitivity > 0.0))
        return INFINITY;
    return min_pre / max_sensitivity;
}
