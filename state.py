"""State construction: a pure function from protocol messages to the agent's observation vector.

Every feature is scaled to roughly [-2, 2] so one network serves every resolution and bitrate.
"""

from __future__ import annotations

import math

import numpy as np

from protocol import Feedback, Request

FEATURE_NAMES: tuple[str, ...] = (
    "base_qp",  # base QP / 63
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
    "prev_delta_qp",  # previous (qp_used - base_qp) / 8; 0 at GOP start
)
OBS_DIM = len(FEATURE_NAMES)

_QP_SCALE = 63.0
_EPS = 1e-6


def _log2(x: float) -> float:
    return math.log2(max(x, _EPS))


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
        prev_delta = (prev_fb.qp_used - prev_base_qp) / 8.0
    else:
        prev_bits_ratio = prev_psnr = prev_delta = 0.0

    obs = np.array(
        [
            req.base_qp / _QP_SCALE,
            (req.qp_max - req.qp_min) / _QP_SCALE,
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
        ],
        dtype=np.float32,
    )
    return np.clip(obs, -4.0, 4.0)


def action_to_qp(action: float, req: Request, max_delta_qp: int) -> int:
    """Maps an action in [-1, 1] to the QP answered: base + round(action * max_delta_qp), in range."""
    delta = int(round(float(np.clip(action, -1.0, 1.0)) * max_delta_qp))
    return int(min(max(req.base_qp + delta, req.qp_min), req.qp_max))
