"""Reward and cost: pure functions of feedback messages and the Δ=0 baseline of the same video.

Reward (dB, PSNR metric): the mini-GOP's share of the GOP's overall-PSNR gain over the baseline,

    r_k = 10/ln(10) * (n_k / N_g) * (mse_base_k - mse_k) / MSE_base_g,

with n_k the mini-GOP's frames, N_g the GOP's frames and MSE_base_g the baseline's frame-weighted
mean luma MSE over the GOP. Summed over a GOP this is, to first order, the GOP's overall-PSNR gain
(PSNR from total MSE), so starving a few frames to lift a mean of per-frame PSNRs earns nothing.
SSIM variant: r_k = 100 * (n_k / N_g) * (ssim_k - ssim_base_k), SSIM points summed over the GOP.
Rate-neutral variant ("psnr-rd"): the PSNR reward minus the bits it spent beyond the baseline's,
priced on the baseline's own RD curve,

    r_k = r_k(psnr) - (slope / ln 2) * (bits_k - bits_base_k) / BITS_base_g,

with `slope` the video's dB of overall PSNR-Y per doubling of the rate (VideoBaseline.psnr_slope)
and BITS_base_g the baseline's bits over the GOP. Summed over a GOP it is, to first order, the
GOP's PSNR gain at equal rate (reward.delta_psnr_at_equal_rate, the oracle search's measure): a
mini-GOP that spends pays at once, and the later mini-GOPs the rate control starves earn back
what they save, so spending now is no longer free (BENCHMARKS.md §2.4.24).

Cost (dimensionless): c_k = bits_k / B_g - n_k / N_g, with B_g the GOP's bit budget; summed over
a GOP it is GOP bits / B_g - 1, the quantity the Lagrange multiplier constrains.
"""

from __future__ import annotations

import functools
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from protocol import Feedback

BASELINE_FORMAT_VERSION = 1
REWARD_METRICS = ("psnr", "ssim", "psnr-rd")  # see the module docstring
_DB = 10.0 / math.log(10.0)


@dataclass
class BaselineMiniGop:
    """What the Δ=0 encode produced for one mini-GOP."""

    gop_index: int
    frame_count: int
    bits: int
    mse_y: float
    ssim_y: float
    base_qp: int


@dataclass
class VideoBaseline:
    """The Δ=0 encode of one video (one encoder command line)."""

    mini_gops: list[BaselineMiniGop]
    kbps: float = 0.0
    psnr_y: float = 0.0  # overall PSNR-Y of the whole encode, dB
    ssim_y: float = 0.0
    psnr_y_frame_mean: float = 0.0
    mean_qp: float = 0.0
    # Local RD slope of the Δ=0 encode, dB of overall PSNR-Y per doubling of the rate (from a second
    # Δ=0 encode slightly above the target); NaN when unknown. See delta_psnr_at_equal_rate.
    psnr_slope: float = math.nan
    encoder: str = ""  # the encoder command it was made with (encoder_proc.encoder_key), "" in older files
    video: str = ""  # the video's arguments minus outputs (VideoSpec.video_key), "" in older files

    @functools.cached_property
    def _gop_totals(self) -> dict[int, tuple[int, int, float]]:
        """(frames, bits, frame-weighted MSE sum) of every GOP, summed once: the reward reads them at
        every step. The mini-GOP list is complete when a VideoBaseline is made and never changes."""
        totals: dict[int, tuple[int, int, float]] = {}
        for m in self.mini_gops:
            frames, bits, mse_sum = totals.get(m.gop_index, (0, 0, 0.0))
            totals[m.gop_index] = (frames + m.frame_count, bits + m.bits, mse_sum + m.frame_count * m.mse_y)
        return totals

    def gop_frames(self, gop_index: int) -> int:
        """The baseline's frames in one GOP (0 if it has no such GOP)."""
        return self._gop_totals.get(gop_index, (0, 0, 0.0))[0]

    def gop_least_bits(self, gop_index: int, max_delta_qp: int, qp_max: int) -> float:
        """About the fewest bits any action could spend on one GOP (0 if the baseline has no such GOP).

        Each baseline mini-GOP's bits, scaled to the highest QP an action reaches from its base QP
        (base + max_delta_qp, at most qp_max); bits roughly halve every 6 QP (H.264, AV1).
        """
        return sum(
            m.bits * 2.0 ** (-min(max_delta_qp, max(qp_max - m.base_qp, 0)) / 6.0)
            for m in self.mini_gops
            if m.gop_index == gop_index
        )

    def gop_bits(self, gop_index: int) -> int:
        """The baseline's bits over one GOP (0 if it has no such GOP)."""
        return self._gop_totals.get(gop_index, (0, 0, 0.0))[1]

    def gop_mse(self, gop_index: int) -> float:
        """Frame-weighted mean luma MSE of the baseline over one GOP."""
        frames, _, mse_sum = self._gop_totals[gop_index]
        return mse_sum / frames


@dataclass
class BaselineStats:
    """Baselines of every video, keyed by the video's canonical key (see encoder_proc.video_key)."""

    videos: dict[str, VideoBaseline] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        """Writes JSON atomically (temporary file + rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format_version": BASELINE_FORMAT_VERSION, "videos": {k: asdict(v) for k, v in self.videos.items()}}
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> BaselineStats:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"--baseline-stats: file {path} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"--baseline-stats: {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format_version") != BASELINE_FORMAT_VERSION:
            raise ValueError(f"--baseline-stats: {path} has no format_version {BASELINE_FORMAT_VERSION}")
        videos = {}
        try:
            for key, v in data["videos"].items():
                mgs = [BaselineMiniGop(**m) for m in v.pop("mini_gops")]
                videos[key] = VideoBaseline(mini_gops=mgs, **v)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"--baseline-stats: {path} has a malformed entry: {exc}") from None
        return cls(videos=videos)


def delta_psnr_at_equal_rate(psnr_y: float, kbps: float, baseline: VideoBaseline) -> float:
    """PSNR-Y gain over the Δ=0 baseline at equal rate, dB (NaN without the baseline's RD slope).

        Δ = (PSNR - PSNR_base) - slope * log2(kbps / kbps_base)

    with `slope` the baseline's local dB per doubling of the rate: the quality an encode gained
    minus what its extra bits alone would have bought on the baseline's RD curve. A raw ΔPSNR
    rewards overspending; this does not.
    """
    if math.isnan(baseline.psnr_slope) or kbps <= 0 or baseline.kbps <= 0:
        return math.nan
    return (psnr_y - baseline.psnr_y) - baseline.psnr_slope * math.log2(kbps / baseline.kbps)


def reward(fb: Feedback, baseline: VideoBaseline, metric: str = "psnr") -> float:
    """Reward of one mini-GOP (see the module docstring); fb.mg_index indexes the baseline.

    metric: "psnr", "ssim" or "psnr-rd" (rate-neutral PSNR). ValueError when the baseline is of
    another encode, or has no RD slope for "psnr-rd".
    """
    if fb.mg_index >= len(baseline.mini_gops):
        raise ValueError(f"baseline has {len(baseline.mini_gops)} mini-GOPs, feedback is for mini-GOP {fb.mg_index}")
    base = baseline.mini_gops[fb.mg_index]
    if base.frame_count != fb.frame_count or base.gop_index != fb.gop_index:
        raise ValueError(
            f"baseline mini-GOP {fb.mg_index} has {base.frame_count} frames in GOP {base.gop_index}, "
            f"feedback has {fb.frame_count} in GOP {fb.gop_index}: the baseline is of another encode"
        )
    weight = fb.frame_count / baseline.gop_frames(fb.gop_index)
    if metric == "ssim":
        return 100.0 * weight * (fb.ssim_y - base.ssim_y)
    gop_mse = max(baseline.gop_mse(fb.gop_index), 1e-6)
    r = _DB * weight * (base.mse_y - fb.mse_y) / gop_mse
    if metric == "psnr-rd":
        if not math.isfinite(baseline.psnr_slope):
            raise ValueError("the psnr-rd reward needs the baseline's RD slope (psnr_slope); this baseline has none")
        r -= baseline.psnr_slope / math.log(2.0) * (fb.bits - base.bits) / max(baseline.gop_bits(fb.gop_index), 1)
    return r


def cost(fb: Feedback, gop_bits_budget: int, gop_frames: int) -> float:
    """Cost of one mini-GOP: its bits over its frame share of the GOP budget, in GOP-budget units."""
    return fb.bits / gop_bits_budget - fb.frame_count / gop_frames


def gop_violation(gop_bits: int, gop_bits_budget: int, tolerance: float) -> float:
    """The constraint's value for one GOP, for the λ update: GOP bits / budget - 1 - tolerance.

    Positive when the GOP used more than (1 + tolerance) * budget bits (λ rises), negative below.
    """
    if gop_bits_budget <= 0:
        raise ValueError(f"gop_bits_budget must be > 0, got {gop_bits_budget}")
    return gop_bits / gop_bits_budget - 1.0 - tolerance


def budget_out_of_reach(gop_bits_budget: int, tolerance: float, all_at_qp_max: bool, least_bits: float = 0.0) -> bool:
    """True when no action can bring a GOP within (1 + tolerance) * budget, so λ should not rise for it.

    Either every mini-GOP of the GOP was coded at the codec's highest QP, or `least_bits` (the
    fewest bits any action could spend on the GOP, `VideoBaseline.gop_least_bits`) exceed it.
    """
    return all_at_qp_max or least_bits > (1.0 + tolerance) * gop_bits_budget
