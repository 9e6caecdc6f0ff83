"""BD-rate and pooling over clips: pure functions of rate-distortion points.

    bd_rate(rates_a, quality_a, rates_b, quality_b)   # % extra rate curve A needs for B's quality
    quality_at_rate(rates, quality, rate)             # a curve's quality at one rate (ΔPSNR at equal rate)
    pool_clips(per_clip_bd_rates)                     # mean over clips with a 95% bootstrap interval

Rates in any one unit (kbit/s here), quality in any higher-is-better unit (dB, SSIM).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator


def _sorted_curve(rates: Sequence[float], quality: Sequence[float], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(quality ascending, ln rate) of one RD curve; refuses what no interpolation can take."""
    r = np.asarray(rates, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    if r.shape != q.shape or r.ndim != 1:
        raise ValueError(f"bd_rate: curve {name} has {r.size} rates and {q.size} qualities")
    if not (np.all(np.isfinite(r)) and np.all(np.isfinite(q))) or np.any(r <= 0):
        raise ValueError(f"bd_rate: curve {name} needs finite qualities and rates > 0 (got {r}, {q})")
    order = np.argsort(q)
    q, r = q[order], r[order]
    if np.any(np.diff(q) <= 0):
        raise ValueError(f"bd_rate: curve {name} has repeated quality values {q}")
    return q, np.log(r)


def _log_rate_integral(q: np.ndarray, lr: np.ndarray, lo: float, hi: float, method: str) -> float:
    """Integral of the fitted ln(rate)(quality) over [lo, hi]."""
    if method == "pchip":
        return float(PchipInterpolator(q, lr).integrate(lo, hi))
    if method == "cubic":
        if q.size < 4:
            raise ValueError(f"bd_rate: the cubic method needs >= 4 points per curve, got {q.size}")
        poly = np.polyint(np.polyfit(q, lr, 3))
        return float(np.polyval(poly, hi) - np.polyval(poly, lo))
    raise ValueError(f"bd_rate: method must be 'pchip' or 'cubic', got {method!r}")


def bd_rate(
    rates_a: Sequence[float],
    quality_a: Sequence[float],
    rates_b: Sequence[float],
    quality_b: Sequence[float],
    method: str = "pchip",
) -> float:
    """Bjøntegaard delta rate of curve A against curve B, in percent.

    Fits ln(rate) as a function of quality for each curve (PCHIP, as the JCT-VC / JVET CTC sheets
    do, or VCEG-M33's cubic polynomial), integrates both over the quality interval the curves share
    and returns (exp(mean difference) - 1) * 100: the average extra rate A needs for the same
    quality. Negative = A needs fewer bits. Rates in any unit (the same for both), quality in any
    higher-is-better unit (dB, SSIM). Raises ValueError for curves of fewer than 2 points, repeated
    qualities, non-positive rates or no shared quality interval.
    """
    qa, la = _sorted_curve(rates_a, quality_a, "A")
    qb, lb = _sorted_curve(rates_b, quality_b, "B")
    if qa.size < 2 or qb.size < 2:
        raise ValueError("bd_rate: each curve needs at least 2 points")
    lo, hi = max(qa[0], qb[0]), min(qa[-1], qb[-1])
    if not hi > lo:
        raise ValueError(f"bd_rate: the quality ranges do not overlap ([{qa[0]}, {qa[-1]}] vs [{qb[0]}, {qb[-1]}])")
    diff = (_log_rate_integral(qa, la, lo, hi, method) - _log_rate_integral(qb, lb, lo, hi, method)) / (hi - lo)
    return (math.exp(diff) - 1.0) * 100.0


def quality_at_rate(rates: Sequence[float], quality: Sequence[float], rate: float) -> float:
    """Quality of an RD curve at `rate`: PCHIP in ln(rate), linear extrapolation beyond its ends.

    Used for "ΔPSNR at equal rate": a single encode is compared with the baseline curve at the
    exact rate it spent, so a run that under- or overshoots is neither punished nor rewarded for it.
    """
    r = np.asarray(rates, dtype=np.float64)
    q = np.asarray(quality, dtype=np.float64)
    order = np.argsort(r)
    x, y = np.log(r[order]), q[order]
    if x.size < 2 or np.any(np.diff(x) <= 0):
        raise ValueError("quality_at_rate: need >= 2 points with distinct rates")
    t = math.log(rate)
    if t < x[0]:
        return float(y[0] + (y[1] - y[0]) / (x[1] - x[0]) * (t - x[0]))
    if t > x[-1]:
        return float(y[-1] + (y[-1] - y[-2]) / (x[-1] - x[-2]) * (t - x[-1]))
    return float(PchipInterpolator(x, y)(t))


@dataclass(frozen=True)
class Pooled:
    """Per-clip BD-rates (%) of one pair pooled: n, mean, its 95% bootstrap interval, wins, losses, worst."""

    n: int
    mean: float
    low: float
    high: float
    better: int
    worse: int
    worst: float


def pool_clips(values: Sequence[float], resamples: int = 10_000, seed: int = 0, tie: float = 0.05) -> Pooled:
    """Mean of per-clip BD-rates and its percentile-bootstrap 95% interval (clips resampled, seeded).

    One QP on one key frame moves a clip's BD-rate by 1-2%, so a mean over a few clips needs its
    interval beside it. Clips within ±`tie` % of 0 count as neither better nor worse.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no clips to pool")
    idx = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    low, high = np.percentile(x[idx].mean(axis=1), [2.5, 97.5])  # (resamples,) means
    return Pooled(int(x.size), float(x.mean()), float(low), float(high), int((x < -tie).sum()),
                  int((x > tie).sum()), float(x.max()))  # fmt: skip


def safe_bd_rate(ra: list[float], qa: list[float], rb: list[float], qb: list[float]) -> float:
    """bd_rate, or NaN where the curves do not allow one (too few points, no overlap)."""
    try:
        return bd_rate(ra, qa, rb, qb)
    except ValueError:
        return math.nan
