"""The oracle: per-mini-GOP QP offsets found by search, every candidate a real encode.

What evaluate.py's `--oracle` and `evaluate.py oracle` report, and what bench/oracle_data.py stores
as demonstrations for imitation.py: first-improvement coordinate descent over the offsets around
the encoder's base QP, maximising overall PSNR-Y within the Δ=0 run's bits (`run_oracle`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import io_runner
from eval_runs import Point, Runner, RunRecord, ScriptedLearner

log = logging.getLogger("rlrc")


@dataclass
class OracleSettings:
    """Coordinate descent over per-mini-GOP QP offsets (QP units)."""

    max_offset: int = 4  # |offset| bound; default: the agent's action range (--max-delta-qp)
    steps: tuple[int, ...] = (3, 1)  # step sizes tried in turn, + then -
    sweeps: int = 1  # passes over all mini-GOPs per step size (a pass without a gain ends early)
    # mu of the objective PSNR-Y - mu * max(0, bits / budget - 1), dB per 100% overshoot. 10 dB makes
    # a 1% overshoot cost 0.1 dB, about twice what 1% more rate buys on these RD curves (0.04-0.06
    # dB), so buying quality with bits never pays, while a real gain is not thrown away because the
    # encoder's rate control landed 0.2% above the Δ=0 run's total.
    overshoot_db: float = 10.0


@dataclass
class OracleResult:
    """The best offsets found for one (clip, target); bits in bits, PSNR in dB, time in s."""

    video: str
    target_kbps: float
    budget_bits: int  # the Δ=0 run's total bits: the budget of the objective
    baseline_psnr_y: float
    offsets: list[int]
    record: RunRecord  # the best encode (method "oracle")
    encodes: int  # full encodes tried (the Δ=0 start not counted)
    accepted: int
    seconds: float  # wall time of the search
    best_steps: list[io_runner.Step] = field(default_factory=list)  # the best encode's steps (empty: Δ=0)
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every encode tried: offsets, psnr_y, bits

    def row(self) -> dict[str, Any]:
        return {
            "video": self.video, "target_kbps": self.target_kbps, "budget_bits": self.budget_bits,
            "bits": self.record.bits, "bits_over_budget_pct": 100.0 * (self.record.bits / self.budget_bits - 1.0),
            "baseline_psnr_y": self.baseline_psnr_y, "oracle_psnr_y": self.record.psnr_y,
            "delta_psnr_y": self.record.psnr_y - self.baseline_psnr_y, "encodes": self.encodes,
            "accepted": self.accepted, "seconds": self.seconds, "offsets": " ".join(map(str, self.offsets)),
        }  # fmt: skip


def oracle_objective(rec: RunRecord, budget_bits: int, cfg: OracleSettings) -> float:
    """J = PSNR-Y overall - overshoot_db * max(0, bits / budget - 1): what the oracle maximises (dB)."""
    return rec.psnr_y - cfg.overshoot_db * max(0.0, rec.bits / budget_bits - 1.0)


def run_oracle(
    runner: Runner, point: Point, baseline: RunRecord, cfg: OracleSettings, rate_tolerance: float = 0.02
) -> OracleResult:
    """Searches per-mini-GOP offsets around the encoder's base QP that raise overall PSNR-Y within budget.

    Every candidate is a whole encode from the first frame, answered through the real protocol by
    a ScriptedLearner (base_qp + offset[k]), so inter-frame dependencies and the encoder's own
    rate-control reaction to earlier mini-GOPs are real. Objective, maximised by first-improvement
    coordinate descent (offset k += step, else -= step, k = 0, 1, ...; then the next step size):

        J = PSNR-Y overall - overshoot_db * max(0, bits / budget - 1),  budget = the Δ=0 run's bits.

    J(Δ=0) is the baseline's PSNR-Y, so the result never scores below it. Cost: at most
    len(steps) * sweeps * 2 * mini-GOPs encodes. `rate_tolerance` only sorts GOPs for the report.
    """
    t0 = time.monotonic()
    n = len(baseline.minigops)
    budget = baseline.bits

    def score(rec: RunRecord) -> float:
        return oracle_objective(rec, budget, cfg)

    offsets = [0] * n
    best, best_score = baseline, score(baseline)
    best_steps: list[io_runner.Step] = []
    candidates: list[dict[str, Any]] = []
    encodes = accepted = 0
    for step in cfg.steps:
        for _sweep in range(cfg.sweeps):
            improved = False
            for k in range(n):
                for sign in (1, -1):
                    value = max(-cfg.max_offset, min(cfg.max_offset, offsets[k] + sign * step))
                    if value == offsets[k]:
                        continue
                    cand = list(offsets)
                    cand[k] = value
                    rec, res = runner.protocol_encode(point, "oracle", ScriptedLearner(cand, cfg.max_offset),
                                                      cfg.max_offset, rate_tolerance, "oracle_candidate")  # fmt: skip
                    encodes += 1
                    if not rec.ok:
                        raise RuntimeError(f"oracle encode failed: {rec.message}")
                    candidates.append({"offsets": cand, "psnr_y": rec.psnr_y, "ssim_y": rec.ssim_y, "bits": rec.bits})
                    log.debug("oracle candidate mg %d %+d: PSNR-Y %.4f dB, bits/budget %.4f, J %.4f", k, value,
                              rec.psnr_y, rec.bits / budget, score(rec))  # fmt: skip
                    if score(rec) > best_score:
                        offsets, best, best_score, improved = cand, rec, score(rec), True
                        best_steps = res.done_steps
                        accepted += 1
                        log.debug("oracle %s @%g: mg %d -> %+d, PSNR-Y %.4f dB, bits %d / %d", point.video.name,
                                  point.target_kbps, k, value, rec.psnr_y, rec.bits, budget)  # fmt: skip
                        break
            if not improved:
                break
    if best is baseline:  # nothing beat Δ = 0: the oracle's encode is the baseline's
        best = replace(baseline, method="oracle")
    seconds = time.monotonic() - t0
    log.info("oracle %s @ %g kbps: PSNR-Y %.3f -> %.3f dB (bits %.2f%% of the Δ=0 run's), %d encodes in %.0f s",
             point.video.name, point.target_kbps, baseline.psnr_y, best.psnr_y, 100.0 * best.bits / budget,
             encodes, seconds)  # fmt: skip
    return OracleResult(point.video.name, point.target_kbps, budget, baseline.psnr_y, offsets, best, encodes,
                        accepted, seconds, best_steps, candidates)  # fmt: skip
