"""TensorBoard event files of a main.py run: per video, per GOP (λ and violations), per epoch."""

from __future__ import annotations

import math

import numpy as np

from io_runner import EncodeResult
from learners import Counters


class Telemetry:
    """TensorBoard event files under runs/ (or nothing with --no-tensorboard)."""

    def __init__(self, run_dir: str | None) -> None:
        self.writer = None
        if run_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=run_dir)

    def video(self, name: str, s: dict[str, float], epoch: int, result: EncodeResult, counters: Counters) -> None:
        """One encode's summary `s`, its ΔQP histogram, its GOPs' λ and violations and its SAC losses."""
        if self.writer is None or not s:
            return
        w = self.writer
        for key in ("bitrate_error", "psnr_y", "ssim_y", "mean_qp", "mean_dqp", "reward_sum", "cost_sum", "kbps",
                    "delta_psnr_y_equal_rate"):
            if not math.isnan(s[key]):
                w.add_scalar(f"video/{name}/{key}", s[key], epoch)
        w.add_histogram(f"video/{name}/delta_qp", np.array([st.qp - st.request.base_qp for st in result.steps]), epoch)
        first_gop = counters.gops - len(result.lambdas)
        for i, (lam, viol) in enumerate(zip(result.lambdas, result.gop_violations, strict=False)):
            w.add_scalar("constraint/lambda", lam, first_gop + i + 1)
            w.add_scalar("constraint/gop_violation", viol, first_gop + i + 1)
        if result.update_logs:
            for key in result.update_logs[0]:
                w.add_scalar(f"train/{key}", float(np.mean([u[key] for u in result.update_logs])), counters.steps)

    def epoch(self, means: dict[str, float], epoch: int, prefix: str = "epoch") -> None:
        """The epoch's means over its videos, under `prefix`/ (eval/ for the deterministic policy)."""
        if self.writer is None:
            return
        for key, value in means.items():
            if not math.isnan(value):
                self.writer.add_scalar(f"{prefix}/{key}", value, epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
