"""State construction: a pure function from protocol messages to the agent's observation vector.

Every feature is scaled to roughly [-2, 2] so one network serves every resolution and bitrate.
"""

from __future__ import annotations

import math

import numpy as np

from protocol import Feedback, KeyProbe, Request

FEATURE_NAMES: tuple[str, ...] = (
    "base_qp",  # base QP / qp_scale_max
    "qp_span",  # (qp_max - qp_min) / 63
    "log_fp_bpp",  # log2 of this mini-GOP's first-pass bits per pixel, / 8
    "lookahead_ratio",  # log2(mean lookahead fp_bpp / this fp_bpp), / 4; 0 without lookahead
    "log_target_bpp",  # log2 of the target bits per pixel, / 8
    "gop_progress",  # mg_in_gop / mgs_in_gop
    "gop_left",  # mini-GOPs left in the GOP after this one / mgs_in_gop
    "gop_budget_used",  # gop_bits_spent / gop_bits_budget
    "gop_budget_lead",  # budget used minus the fraction of the GOP already coded (>0 = overspent)
    "total_budget_lead",  # the same over the whole encode
    "has_key",  # 1 if the mini-GOP starts with a key frame
    "prev_bits_ratio",  # log2(previous mini-GOP bits / its share of the GOP budget); 0 at GOP start
    "prev_psnr_y",  # previous mini-GOP PSNR-Y / 50; 0 at GOP start
    "prev_delta_qp",  # previous (qp_used - base_qp) / 8 QP units (see qp_unit); 0 at GOP start
    # From the request's optional first_pass statistics (protocol v2); all 0 without them.
    "fp_available",  # 1 if the request carries first_pass statistics
    "fp_intra",  # log2(mean intra cost of this mini-GOP's frames) / 4: texture
    "fp_inter_ratio",  # log2(mean inter cost / mean intra cost) of this mini-GOP / 4: how predictable it is
    "fp_future_ratio",  # the same over the lookahead frames: how much later frames reuse the content
    "fp_sr_ratio",  # log2(mean second-reference cost / mean inter cost) over all frames / 4: decay with distance
    "fp_motion",  # log2(1 + mean motion-vector length, pixels) / 4 over all frames
    "fp_noise",  # log2(1 + mean noise sigma) / 4 over all frames
    "fp_reuse",  # log2(1 + later frames of the GOP that re-use this mini-GOP's content) / 4: gop_reuse
    # From first_pass.propagation (optional); 0 without it.
    "fp_propagation",  # the mini-GOP's first frame's block propagation over the rest of its GOP / 4
    # From the request's optional key_probe (a GOP's first mini-GOP, the encoder's --key-probe); 0 without it.
    "key_probe",  # the probe's contrast: dB at equal rate the finer key QP gains over the coarser, per 6 QP
    # From the request's optional ramp_probe (mini-GOPs 1-5 of a GOP, --key-probe); 0 without it.
    "ramp_probe",  # the same contrast for the five mini-GOPs after the key moved together
    # From the probes' optional zero encode (the GOP at Δ=0); 0 without it.
    "key_probe_best",  # the margin by which the better key probe beats the other and Δ=0, dB at equal rate, + = finer
    "ramp_probe_best",  # the same for the ramp probe
)
OBS_DIM = len(FEATURE_NAMES)
# The features before fp_propagation: the inputs of the policies made before it (policy.py reads any
# file whose features are a subset of FEATURE_NAMES, in this order).
FEATURES_V2: tuple[str, ...] = FEATURE_NAMES[: FEATURE_NAMES.index("fp_propagation")]

_EPS = 1e-6
# dB of overall PSNR-Y per doubling of bits that values the key probe's two encodes at equal rate: the median
# RD slope of the SVT-AV1 training windows (BENCHMARKS.md §2.4.41). The two encodes differ little in bits
# (the rate control takes them back over the GOP), so the slope hardly matters (2.5 to 4: r 0.95 on held-out).
PROBE_SLOPE_DB = 2.5
# The action's QP unit is defined on a 0..63 scale (AV1 QP, x264 QP); codecs with a finer scale
# (VP9's q_index, 0..255) stretch it: see qp_unit.
_REFERENCE_QP_SCALE = 63.0


def _log2(x: float) -> float:
    return math.log2(max(x, _EPS))


def qp_unit(req: Request) -> float:
    """Codec QP steps per unit of ΔQP: max(1, qp_scale_max / 63) (1 for AV1 and x264, ~4 for VP9)."""
    return max(1.0, req.qp_scale_max / _REFERENCE_QP_SCALE)


def first_pass_features(req: Request) -> list[float]:
    """The fp_* features of FEATURE_NAMES from `req.first_pass`; zeros when the request has none.

    Frames are split into this mini-GOP's (the first frame_count entries) and the lookahead's (the
    rest; this mini-GOP's again when there is no lookahead). The encode's first frame has no
    reference (its inter cost is its intra cost) and is left out of the ratios.
    """
    fp = req.first_pass
    if fp is None:
        return [0.0] * 8
    n = req.frame_count
    skip = 1 if req.first_frame == 0 else 0  # the encode's first frame: no reference

    def mean(values: list[float], lo: int, hi: int) -> float:
        part = values[lo:hi]
        return sum(part) / len(part) if part else 0.0

    own, rest = (skip, n), (n, len(fp.intra_cost)) if len(fp.intra_cost) > n else (skip, n)
    everything = (skip, len(fp.intra_cost))
    if own[0] >= own[1]:  # a one-frame first mini-GOP: nothing but the key frame
        own = (0, n)

    def ratio(num: list[float], den: list[float], span: tuple[int, int]) -> float:
        return (_log2(mean(num, *span) + _EPS) - _log2(mean(den, *span) + _EPS)) / 4.0

    return [
        1.0,
        _log2(mean(fp.intra_cost, 0, n)) / 4.0,
        ratio(fp.inter_cost, fp.intra_cost, own),
        ratio(fp.inter_cost, fp.intra_cost, rest),
        ratio(fp.sr_inter_cost, fp.inter_cost, everything),
        math.log2(1.0 + mean(fp.mv_mean, *everything)) / 4.0,
        math.log2(1.0 + mean(fp.noise_sigma, *everything)) / 4.0,
        math.log2(1.0 + gop_reuse(req)) / 4.0,
    ]


def propagation_feature(req: Request) -> float:
    """fp_propagation: first_pass.propagation[0] / 4, the block propagation of the mini-GOP's first frame
    over the rest of its GOP (PROTOCOL.md §4.1.1: log2 of (own + propagated cost) / own cost); 0 without it."""
    fp = req.first_pass
    if fp is None or not fp.propagation:
        return 0.0
    return fp.propagation[0] / 4.0


def key_probe_feature(req: Request) -> float:
    """The key probe's contrast (PROTOCOL.md §4.1.2) in dB at equal rate per 6 QP, 0 without a probe:

        p = (finer_psnr_y - coarser_psnr_y - PROBE_SLOPE_DB * log2(finer_bits / coarser_bits)) * 3 / offset

    > 0: the finer key QP pays for its bits over the GOP (a lower QP here wins); < 0: the coarser one does.
    Also 0 in a GOP of one mini-GOP: nothing after the key inherits it, the rate control cannot take the probes'
    bits back, and p would be the fixed slope's guess at a plain RD trade (BENCHMARKS.md §2.4.42).
    """
    if req.key_probe is None or req.mgs_in_gop < 2:
        return 0.0
    return probe_contrast(req.key_probe)


def ramp_probe_feature(req: Request) -> float:
    """The ramp probe's contrast (PROTOCOL.md §4.1.2), as key_probe_feature's, on mini-GOPs 1-5; 0 without one.

    > 0: coding the mini-GOPs after the key finer together pays over the GOP (BENCHMARKS.md §2.4.44)."""
    return 0.0 if req.ramp_probe is None else probe_contrast(req.ramp_probe)


def key_probe_best_feature(req: Request) -> float:
    """probe_best of the key probe; 0 without a zero encode, and in a GOP of one mini-GOP (as key_probe_feature)."""
    if req.key_probe is None or req.mgs_in_gop < 2:
        return 0.0
    return probe_best(req.key_probe)


def ramp_probe_best_feature(req: Request) -> float:
    """probe_best of the ramp probe; 0 without one or without its zero encode."""
    return 0.0 if req.ramp_probe is None else probe_best(req.ramp_probe)


# A probe whose GOP bits differ from the zero encode's by more than this share does not count in probe_best: the
# rate constraint's free band (config.rate_tolerance's default). Its extra bits are paid by the next GOPs, which the
# fixed price of PROBE_SLOPE_DB does not see (BENCHMARKS.md §2.4.54: oa4_launch's first key, +6% bits).
PROBE_RATE_BAND = 0.02


def probe_best(k: KeyProbe) -> float:
    """Which of the three encodes of the GOP (finer, coarser, Δ=0) is best at equal rate, and by how much, dB:

        g_x = x_psnr_y - zero_psnr_y - PROBE_SLOPE_DB * log2(x_bits / zero_bits),   x = finer, coarser
              (-inf when |x_bits / zero_bits - 1| > PROBE_RATE_BAND: a probe off the GOP's budget does not count)
        b = max(0, g_finer - max(g_coarser, 0)) - max(0, g_coarser - max(g_finer, 0))

    > 0: the finer encode beats both others by b; < 0: the coarser one beats both by -b; 0: Δ=0 is best, or
    there is no zero encode. Unlike key_probe's contrast it says whether either move beats Δ=0 at all
    (BENCHMARKS.md §2.4.54).
    """
    if k.zero_bits is None or k.zero_psnr_y is None:
        return 0.0

    def gain(psnr: float, bits: int) -> float:
        if abs(bits / k.zero_bits - 1.0) > PROBE_RATE_BAND:
            return -math.inf
        return _probe_gain(psnr, bits, k.zero_psnr_y, k.zero_bits)

    finer, coarser = gain(k.finer_psnr_y, k.finer_bits), gain(k.coarser_psnr_y, k.coarser_bits)
    return max(0.0, finer - max(coarser, 0.0)) - max(0.0, coarser - max(finer, 0.0))


def probe_contrast(k: KeyProbe) -> float:
    """(finer_psnr_y - coarser_psnr_y - PROBE_SLOPE_DB * log2(finer_bits / coarser_bits)) * 3 / offset, dB."""
    return _probe_gain(k.finer_psnr_y, k.finer_bits, k.coarser_psnr_y, k.coarser_bits) * 3.0 / k.offset


def _probe_gain(psnr: float, bits: int, ref_psnr: float, ref_bits: int) -> float:
    """One probe encode's PSNR-Y over a reference encode of the same GOP at equal rate, dB:
    psnr - ref_psnr - PROBE_SLOPE_DB * log2(bits / ref_bits) (gain_model.equal_rate_gain at the probes' fixed slope)."""
    return psnr - ref_psnr - PROBE_SLOPE_DB * math.log2(bits / ref_bits)


def gop_reuse(req: Request) -> float:
    """How many later frames of the GOP re-use this mini-GOP's content, on average over its frames.

        S = (1/n) sum_{i in the mini-GOP} sum_{j > i} prod_{k = i+1..j} (1 - r_k)

    r_k = inter_cost / intra_cost of frame k (clipped to 1): the share of frame k that is new,
    not predicted from the frame before, so the product is the share of frame i's content still
    in frame j. j runs to the end of the GOP (the next GOP starts with a key frame and references
    nothing before it). Frames the first_pass lookahead does not reach continue with the mean r of
    those it does. As in x264's MB-tree: a still camera gives S near the frames left (better
    quality here pays off in all of them), noise or cuts give S near 0, and so does a GOP about
    to end. The GOP's frames after this mini-GOP's first are taken as gop_frames - mg_in_gop *
    frame_count - 1: exact when the GOP's mini-GOPs are of equal length but its last.
    """
    fp = req.first_pass
    if fp is None:
        return 0.0
    last = max(0, req.gop_frames - req.mg_in_gop * req.frame_count - 1)  # index of the GOP's last frame
    new = np.minimum(1.0, np.asarray(fp.inter_cost) / np.maximum(np.asarray(fp.intra_cost), _EPS))  # in [0, 1]
    seen = new[1 : last + 1]
    fill = float(np.cumsum(seen)[-1]) / len(seen) if len(seen) else 1.0
    keep = np.full(last + 1, 1.0 - fill)  # 1 - r_k for frames 0..last
    reached = min(len(new), last + 1)
    keep[:reached] = 1.0 - new[:reached]
    # survive[i, t] = prod_{k = i+1..i+1+t} (1 - r_k), one row per frame i of the mini-GOP; columns
    # past the GOP's end multiply in a 0. Products only fall, so "counted" stops each row at its
    # first value under 1e-4 (nothing of frame i left to re-use). Sums and products run in the
    # formula's order (cumsum/cumprod are sequential), so S is the same float as a Python loop's.
    rows = min(req.frame_count, last + 1)
    k = np.arange(rows)[:, None] + 1 + np.arange(last)[None, :]  # (rows, last)
    survive = np.cumprod(np.concatenate([keep, np.zeros(rows + 1)])[k], axis=1)
    counted = survive >= 1e-4
    return float(np.cumsum(survive[counted])[-1]) / req.frame_count if counted.any() else 0.0


def build_observation(req: Request, prev_fb: Feedback | None, prev_base_qp: int | None) -> np.ndarray:
    """Returns the observation for request `req`, shape (OBS_DIM,), float32.

    `prev_fb` is the feedback of the previous mini-GOP of the same GOP (None at a GOP's start),
    `prev_base_qp` the base QP that previous request carried.
    """
    pixels = float(req.width * req.height)
    target_bpp = req.target_kbps * 1000.0 / req.fps / pixels
    look = req.lookahead_fp_bpp
    lookahead_ratio = (_log2(sum(look) / len(look)) - _log2(req.fp_bpp)) / 4.0 if look else 0.0

    frames_done_frac = req.mg_in_gop / req.mgs_in_gop
    gop_used = req.gop_bits_spent / req.gop_bits_budget
    total_frac = req.first_frame / req.total_frames
    total_used = req.total_bits_spent / req.total_bits_budget

    if prev_fb is not None and prev_base_qp is not None:
        share = req.gop_bits_budget / req.mgs_in_gop
        prev_bits_ratio = _log2(prev_fb.bits / share) / 4.0
        prev_psnr = prev_fb.psnr_y / 50.0
        prev_delta = (prev_fb.qp_used - prev_base_qp) / qp_unit(req) / 8.0
    else:
        prev_bits_ratio = prev_psnr = prev_delta = 0.0

    obs = np.array(
        [
            req.base_qp / req.qp_scale_max,
            (req.qp_max - req.qp_min) / req.qp_scale_max,
            _log2(req.fp_bpp) / 8.0,
            lookahead_ratio,
            _log2(target_bpp) / 8.0,
            frames_done_frac,
            (req.mgs_in_gop - req.mg_in_gop - 1) / req.mgs_in_gop,
            gop_used,
            gop_used - frames_done_frac,
            total_used - total_frac,
            1.0 if req.frame_types[0] == "KEY" else 0.0,
            prev_bits_ratio,
            prev_psnr,
            prev_delta,
            *first_pass_features(req),
            propagation_feature(req),
            key_probe_feature(req),
            ramp_probe_feature(req),
            key_probe_best_feature(req),
            ramp_probe_best_feature(req),
        ],
        dtype=np.float32,
    )
    return np.clip(obs, -4.0, 4.0)


# gop_left of a key mini-GOP in a GOP of 8 mini-GOPs (7/8): the GOPs every demonstration was made in.
FULL_GOP_LEFT = 0.875


def payback_share(obs: np.ndarray) -> np.ndarray:
    """Share of a full GOP still to come after this mini-GOP, relative to a key mini-GOP's: obs (..., OBS_DIM) ->
    (...,) in [0, 1], clip(gop_left / (7/8), 0, 1).

    The encoder's rate control re-spends (or recovers) what an offset saves (or costs) in the rest of the same GOP; in
    the last mini-GOPs of a GOP, and in a short final GOP, there is little or nothing left to do that with, so an
    offset there only misses the rate. 1 for a key mini-GOP in a GOP of 8 mini-GOPs or more.
    """
    return np.clip(obs[..., FEATURE_NAMES.index("gop_left")] / np.float32(FULL_GOP_LEFT), 0.0, 1.0)


def fade_finer_key(action: np.ndarray, obs: np.ndarray) -> np.ndarray:
    """A policy's answer (1,) for one observation (OBS_DIM,) with a key mini-GOP's finer answer faded (float32):
    action * payback_share(obs) where has_key > 0.5 and action < 0, else action (policy.py, fade_finer_keys)."""
    if obs[FEATURE_NAMES.index("has_key")] > 0.5 and action[0] < 0.0:
        return (action * payback_share(obs)).astype(np.float32)
    return action


def action_to_qp(action: float, req: Request, max_delta_qp: int) -> int:
    """Maps an action in [-1, 1] to the QP answered to `req` (qp_answer on its fields)."""
    return qp_answer(action, req.base_qp, req.qp_min, req.qp_max, req.qp_scale_max, max_delta_qp)


def qp_answer(action: float, base_qp: int, qp_min: int, qp_max: int, qp_scale_max: int, max_delta_qp: int) -> int:
    """qp = clamp(base_qp + round(a * max_delta_qp * unit), qp_min, qp_max), a = clip(action, -1, 1).

    unit = max(1, qp_scale_max / 63) (qp_unit); round is Python's, half to even, in double precision
    (C's nearbyint/rint in the default rounding mode: policy_export's header).
    """
    unit = max(1.0, qp_scale_max / _REFERENCE_QP_SCALE)
    delta = int(round(float(np.clip(action, -1.0, 1.0)) * max_delta_qp * unit))
    return int(min(max(base_qp + delta, qp_min), qp_max))
