/* rlrc_state.h: the agent's observation in C99 (state.py's build_observation, feature for feature).
 *
 * With a policy header from `python -m policy_export NAME --out DIR` (which copies this file there), an
 * encoder decides a mini-GOP's QP without Python:
 *
 *     rlrc_request rq = { ... the fields of the request it would write (PROTOCOL.md section 4.1) ... };
 *     rlrc_previous prev = { ... the previous mini-GOP of the same GOP, or .present = 0 ... };
 *     float obs[RLRC_OBS_DIM];
 *     rlrc_observation(&rq, &prev, obs);
 *     int qp = rlrc_NAME_qp(rlrc_NAME_action(obs), rq.base_qp, rq.qp_min, rq.qp_max, rq.qp_scale_max);
 *
 * Computed in double, rounded to float at the end and clipped to [-4, 4], as state.py does; the
 * features are state.FEATURE_NAMES, in that order. tests/test_policy_export.py checks it against
 * state.py on every request of real encodes. Only <math.h>; link with -lm.
 */
#ifndef RLRC_STATE_H
#define RLRC_STATE_H

#include <math.h>

#define RLRC_OBS_DIM 27
#define RLRC_PROBE_SLOPE_DB 2.5 /* state.PROBE_SLOPE_DB */
#define RLRC_PROBE_RATE_BAND 0.02 /* state.PROBE_RATE_BAND */
#define RLRC_EPS 1e-6
#define RLRC_REFERENCE_QP_SCALE 63.0

/* The request fields the observation reads (PROTOCOL.md section 4.1); lists are pointer + length. */
typedef struct {
    int mg_in_gop, mgs_in_gop, gop_frames, first_frame, frame_count, total_frames;
    int first_is_key; /* frame_types[0] == "KEY" */
    int base_qp, qp_min, qp_max, qp_scale_max;
    int width, height;
    double fps, target_kbps, fp_bpp;
    const double *lookahead_fp_bpp;
    int n_lookahead;
    double gop_bits_spent, gop_bits_budget, total_bits_spent, total_bits_budget;
    /* first_pass (protocol v2): n_first_pass = 0 when the request carries none */
    int n_first_pass;
    const double *intra_cost, *inter_cost, *sr_inter_cost, *mv_mean, *noise_sigma;
    const double *propagation; /* first_pass.propagation, NULL when not sent */
    int n_propagation;
    /* key_probe (a GOP's first mini-GOP, optional): key_probe_offset = 0 when the request carries none */
    int key_probe_offset;
    double key_probe_finer_bits, key_probe_finer_psnr_y, key_probe_coarser_bits, key_probe_coarser_psnr_y;
    /* the probes' zero encode (optional, the same in both probes): zero_bits = 0 when the request carries none */
    double key_probe_zero_bits, key_probe_zero_psnr_y;
    /* ramp_probe (mini-GOPs 1-5 of a GOP, optional): ramp_probe_offset = 0 when the request carries none */
    int ramp_probe_offset;
    double ramp_probe_finer_bits, ramp_probe_finer_psnr_y, ramp_probe_coarser_bits, ramp_probe_coarser_psnr_y;
    double ramp_probe_zero_bits, ramp_probe_zero_psnr_y;
} rlrc_request;

/* The previous mini-GOP of the same GOP: its feedback's bits, psnr_y and qp_used, and its request's base_qp. */
typedef struct {
    int present; /* 0 at a GOP's first mini-GOP */
    double bits, psnr_y;
    int qp_used, base_qp;
} rlrc_previous;

static inline double rlrc_log2(double x) { return log2(x > RLRC_EPS ? x : RLRC_EPS); }

/* Mean of values[lo:hi] with Python's slice rules (hi past the end stops there); 0 when empty. */
static inline double rlrc_mean(const double *values, int n, int lo, int hi) {
    if (hi > n) hi = n;
    if (lo >= hi) return 0.0;
    double s = 0.0;
    for (int i = lo; i < hi; i++) s += values[i];
    return s / (hi - lo);
}

static inline double rlrc_ratio(const double *num, const double *den, int n, int lo, int hi) {
    return (rlrc_log2(rlrc_mean(num, n, lo, hi) + RLRC_EPS) - rlrc_log2(rlrc_mean(den, n, lo, hi) + RLRC_EPS)) / 4.0;
}

/* state.gop_reuse: S = (1/n) sum_i sum_{j>i} prod_{k=i+1..j} (1 - r_k), r_k = min(1, inter_k / intra_k). */
static inline double rlrc_gop_reuse(const rlrc_request *rq) {
    int n = rq->n_first_pass;
    int last = rq->gop_frames - rq->mg_in_gop * rq->frame_count - 1;
    if (last < 0) last = 0;
    double seen_sum = 0.0;
    int seen = 0;
    for (int k = 1; k <= last && k < n; k++, seen++) {
        double intra = rq->intra_cost[k] > RLRC_EPS ? rq->intra_cost[k] : RLRC_EPS;
        double r = rq->inter_cost[k] / intra;
        seen_sum += r < 1.0 ? r : 1.0;
    }
    double fill = seen ? seen_sum / seen : 1.0;
    int rows = rq->frame_count < last + 1 ? rq->frame_count : last + 1;
    double total = 0.0;
    int counted = 0;
    for (int i = 0; i < rows; i++) {
        double survive = 1.0;
        for (int t = 0; t < last; t++) {
            int k = i + 1 + t;
            double keep;
            if (k > last) {
                keep = 0.0; /* past the GOP's end */
            } else if (k < n) {
                double intra = rq->intra_cost[k] > RLRC_EPS ? rq->intra_cost[k] : RLRC_EPS;
                double r = rq->inter_cost[k] / intra;
                keep = 1.0 - (r < 1.0 ? r : 1.0);
            } else {
                keep = 1.0 - fill; /* beyond the lookahead: the mean of what it reached */
            }
            survive *= keep;
            if (survive >= 1e-4) {
                total += survive;
                counted = 1;
            }
        }
    }
    return counted ? total / rq->frame_count : 0.0;
}

static inline float rlrc_clip4(double x) {
    float f = (float)x;
    return f < -4.0f ? -4.0f : f > 4.0f ? 4.0f : f;
}

/* state.probe_contrast: a probe pair's PSNR-Y difference at equal rate, dB per 6 QP of offset. */
static inline double rlrc_probe_contrast(int offset, double finer_bits, double finer_psnr_y, double coarser_bits,
                                         double coarser_psnr_y) {
    return (finer_psnr_y - coarser_psnr_y - RLRC_PROBE_SLOPE_DB * log2(finer_bits / coarser_bits)) * 3.0 / offset;
}

/* One probe's gain over the zero encode at equal rate, dB; -HUGE_VAL off the rate band (it does not count). */
static inline double rlrc_probe_gain(double bits, double psnr_y, double zero_bits, double zero_psnr_y) {
    if (fabs(bits / zero_bits - 1.0) > RLRC_PROBE_RATE_BAND) return -HUGE_VAL;
    return psnr_y - zero_psnr_y - RLRC_PROBE_SLOPE_DB * log2(bits / zero_bits);
}

/* state.probe_best: by how much the better probe beats the other and the zero encode at equal rate, dB (+ finer). */
static inline double rlrc_probe_best(double finer_bits, double finer_psnr_y, double coarser_bits, double coarser_psnr_y,
                                     double zero_bits, double zero_psnr_y) {
    double finer = rlrc_probe_gain(finer_bits, finer_psnr_y, zero_bits, zero_psnr_y);
    double coarser = rlrc_probe_gain(coarser_bits, coarser_psnr_y, zero_bits, zero_psnr_y);
    double f = finer - (coarser > 0.0 ? coarser : 0.0), c = coarser - (finer > 0.0 ? finer : 0.0);
    return (f > 0.0 ? f : 0.0) - (c > 0.0 ? c : 0.0);
}

/* The observation (RLRC_OBS_DIM floats, state.FEATURE_NAMES order) for request `rq` after `prev`. */
static inline void rlrc_observation(const rlrc_request *rq, const rlrc_previous *prev, float obs[RLRC_OBS_DIM]) {
    double v[RLRC_OBS_DIM];
    double pixels = (double)rq->width * rq->height;
    double target_bpp = rq->target_kbps * 1000.0 / rq->fps / pixels;
    double lookahead_ratio = 0.0;
    if (rq->n_lookahead > 0) {
        double s = 0.0;
        for (int i = 0; i < rq->n_lookahead; i++) s += rq->lookahead_fp_bpp[i];
        lookahead_ratio = (rlrc_log2(s / rq->n_lookahead) - rlrc_log2(rq->fp_bpp)) / 4.0;
    }
    double done = (double)rq->mg_in_gop / rq->mgs_in_gop;
    double gop_used = rq->gop_bits_spent / rq->gop_bits_budget;
    double total_frac = (double)rq->first_frame / rq->total_frames;
    double total_used = rq->total_bits_spent / rq->total_bits_budget;
    double unit = rq->qp_scale_max / RLRC_REFERENCE_QP_SCALE > 1.0 ? rq->qp_scale_max / RLRC_REFERENCE_QP_SCALE : 1.0;
    double prev_bits = 0.0, prev_psnr = 0.0, prev_delta = 0.0;
    if (prev != 0 && prev->present) {
        double share = rq->gop_bits_budget / rq->mgs_in_gop;
        prev_bits = rlrc_log2(prev->bits / share) / 4.0;
        prev_psnr = prev->psnr_y / 50.0;
        prev_delta = (prev->qp_used - prev->base_qp) / unit / 8.0;
    }
    v[0] = (double)rq->base_qp / rq->qp_scale_max;
    v[1] = (double)(rq->qp_max - rq->qp_min) / rq->qp_scale_max;
    v[2] = rlrc_log2(rq->fp_bpp) / 8.0;
    v[3] = lookahead_ratio;
    v[4] = rlrc_log2(target_bpp) / 8.0;
    v[5] = done;
    v[6] = (double)(rq->mgs_in_gop - rq->mg_in_gop - 1) / rq->mgs_in_gop;
    v[7] = gop_used;
    v[8] = gop_used - done;
    v[9] = total_used - total_frac;
    v[10] = rq->first_is_key ? 1.0 : 0.0;
    v[11] = prev_bits;
    v[12] = prev_psnr;
    v[13] = prev_delta;
    for (int i = 14; i < RLRC_OBS_DIM; i++) v[i] = 0.0;
    int n = rq->n_first_pass;
    if (n > 0) { /* state.first_pass_features */
        int f = rq->frame_count, skip = rq->first_frame == 0 ? 1 : 0;
        int own_lo = skip, own_hi = f;
        int rest_lo = n > f ? f : skip, rest_hi = n > f ? n : f;
        if (own_lo >= own_hi) own_lo = 0; /* a one-frame first mini-GOP: nothing but the key frame */
        v[14] = 1.0;
        v[15] = rlrc_log2(rlrc_mean(rq->intra_cost, n, 0, f)) / 4.0;
        v[16] = rlrc_ratio(rq->inter_cost, rq->intra_cost, n, own_lo, own_hi);
        v[17] = rlrc_ratio(rq->inter_cost, rq->intra_cost, n, rest_lo, rest_hi);
        v[18] = rlrc_ratio(rq->sr_inter_cost, rq->inter_cost, n, skip, n);
        v[19] = log2(1.0 + rlrc_mean(rq->mv_mean, n, skip, n)) / 4.0;
        v[20] = log2(1.0 + rlrc_mean(rq->noise_sigma, n, skip, n)) / 4.0;
        v[21] = log2(1.0 + rlrc_gop_reuse(rq)) / 4.0;
        if (rq->propagation != 0 && rq->n_propagation > 0) v[22] = rq->propagation[0] / 4.0;
    }
    if (rq->key_probe_offset > 0 && rq->mgs_in_gop >= 2) /* state.key_probe_feature */
        v[23] = rlrc_probe_contrast(rq->key_probe_offset, rq->key_probe_finer_bits, rq->key_probe_finer_psnr_y,
                                    rq->key_probe_coarser_bits, rq->key_probe_coarser_psnr_y);
    if (rq->ramp_probe_offset > 0) /* state.ramp_probe_feature */
        v[24] = rlrc_probe_contrast(rq->ramp_probe_offset, rq->ramp_probe_finer_bits, rq->ramp_probe_finer_psnr_y,
                                    rq->ramp_probe_coarser_bits, rq->ramp_probe_coarser_psnr_y);
    if (rq->key_probe_offset > 0 && rq->mgs_in_gop >= 2 && rq->key_probe_zero_bits > 0.0) /* state.probe_best */
        v[25] = rlrc_probe_best(rq->key_probe_finer_bits, rq->key_probe_finer_psnr_y, rq->key_probe_coarser_bits,
                                rq->key_probe_coarser_psnr_y, rq->key_probe_zero_bits, rq->key_probe_zero_psnr_y);
    if (rq->ramp_probe_offset > 0 && rq->ramp_probe_zero_bits > 0.0)
        v[26] = rlrc_probe_best(rq->ramp_probe_finer_bits, rq->ramp_probe_finer_psnr_y, rq->ramp_probe_coarser_bits,
                                rq->ramp_probe_coarser_psnr_y, rq->ramp_probe_zero_bits, rq->ramp_probe_zero_psnr_y);
    for (int i = 0; i < RLRC_OBS_DIM; i++) obs[i] = rlrc_clip4(v[i]);
}

#endif /* RLRC_STATE_H */
