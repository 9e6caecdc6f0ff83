"""The Δ=0 baseline of every video: its encode, its local RD slope, and the baseline file (reward.BaselineStats)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import encoder_proc
import io_runner
import workers
from config import Config
from encoder_proc import VideoSpec
from encodes import StopFlag, run_video
from learners import ZeroDeltaLearner
from progress import signed
from reward import BaselineStats

log = logging.getLogger("rlrc")

# A Δ=0 baseline further than this from its target (fraction) means the target is out of reach.
BASELINE_MISS = 0.10

RD_PROBE = 1.15  # target of the second Δ=0 encode, relative to the video's own


def rd_slope(
    cfg: Config, spec: VideoSpec, base: Any, stop: StopFlag, rl_args_template: str, worker: int | None = None
) -> float:
    """The baseline's local RD slope, dB of overall PSNR-Y per doubling of the rate (NaN if unknown).

    From a second Δ=0 encode at RD_PROBE x the `--bitrate` of `spec` (same first pass): what a
    few more bits buy without an agent, so that gains can be compared at equal rate.
    """
    kbps = spec.flag("--bitrate")
    try:
        probe_kbps = float(kbps) * RD_PROBE if kbps is not None else math.nan
    except ValueError:
        probe_kbps = math.nan
    if math.isnan(probe_kbps):
        return math.nan
    args = list(spec.args)
    args[args.index("--bitrate") + 1] = f"{probe_kbps:g}"
    res = run_video(cfg, VideoSpec(spec.name, args), ZeroDeltaLearner(), None, "baseline_probe", stop,
                    rl_args_template, side_run=True, worker=worker)  # fmt: skip
    s = res.summary()
    if not res.ok or not s or s["kbps"] <= base.kbps:
        log.warning("%s: no RD slope (second Δ=0 encode at %.0f kbps: %s): ΔPSNR at equal rate unavailable",
                    spec.name, probe_kbps, res.message or "no extra bits spent")  # fmt: skip
        return math.nan
    return (s["psnr_y"] - base.psnr_y) / math.log2(s["kbps"] / base.kbps)


def ensure_baselines(cfg: Config, specs: list[VideoSpec], stop: StopFlag, rl_args_template: str) -> BaselineStats:
    """Loads the baseline file and runs a Δ=0 encode for every video it lacks (then saves it).

    On a signal it stops after the running encode and saves the baselines finished so far.
    """
    path = Path(cfg.baseline_stats)
    stats = BaselineStats.load(path) if path.exists() else BaselineStats()
    missing = [s for s in specs if s.key not in stats.videos or cfg.make_baseline]
    if not cfg.make_baseline:
        for spec in missing:
            say_other_baselines(stats, spec, path)

    def baseline(k: int | None, spec: VideoSpec) -> Any:
        """The Δ=0 encode of `spec` and its RD slope (worker k's rl_io with --workers > 1); None if it failed."""
        log.info("baseline (Δ=0) encode of %s", spec.name)
        res = run_video(cfg, spec, ZeroDeltaLearner(), None, "baseline", stop, rl_args_template, side_run=True,
                        worker=k)  # fmt: skip
        if stop():
            return None
        if not res.ok:  # that video cannot be rewarded: left out, the others train
            log.error("baseline (Δ=0) encode of %s failed, so it is left out of this run: %s", spec.name, res.message)
            return None
        s = io_runner.baseline_from_result(res)
        s.encoder, s.video = encoder_proc.encoder_key(spec.encoder), spec.video_key
        s.psnr_slope = rd_slope(cfg, spec, s, stop, rl_args_template, worker=k)
        log.info("  %s: %.1f kbps, PSNR-Y %.3f dB, SSIM-Y %.4f, RD slope %s dB per doubling of the rate",
                 spec.name, s.kbps, s.psnr_y, s.ssim_y, signed(s.psnr_slope, 2, ""))  # fmt: skip
        for line in encoder_warnings(Path(cfg.out_dir) / "logs" / f"{spec.name}.baseline.log"):
            log.warning("%s: %s", spec.name, line)
        summary = res.summary()
        if abs(summary["bitrate_error"]) > BASELINE_MISS:
            log.warning(
                "%s: the Δ=0 baseline got %.1f kbps for a target of %.0f kbps (%+.0f%%): the encoder cannot "
                "meet this target on this input, so expect a bitrate error of that size; λ is not raised for "
                "GOPs that no QP offset can bring within budget",
                spec.name, summary["kbps"], summary["target_kbps"], 100 * summary["bitrate_error"],
            )  # fmt: skip
        return s

    if cfg.workers > 1:  # several videos' baselines at once
        made = workers.run_pool(missing, cfg.workers, baseline, stop)
    else:
        made = []
        for spec in missing:
            made.append(baseline(None, spec))
            if stop():
                break
    done = 0
    for spec, s in zip(missing, made, strict=False):  # those finished before a signal too
        if s is not None:
            stats.videos[spec.key] = s
            done += 1
    # Baseline files made before the RD slope existed: add it with one more encode each.
    for spec in specs:
        s = stats.videos.get(spec.key)
        if s is not None and math.isnan(s.psnr_slope) and not stop():
            s.psnr_slope = rd_slope(cfg, spec, s, stop, rl_args_template)
            done += 1
    if done:
        stats.save(path)
        log.info("baseline statistics written to %s", path)
    return stats


def say_other_baselines(stats: BaselineStats, spec: VideoSpec, path: Path) -> None:
    """Warns when the baseline file holds this video's baseline made with another encoder command."""
    for key, base in stats.videos.items():
        if key == spec.video_key:  # a file from before the key held the encoder
            log.warning("%s: %s has a Δ=0 baseline of this video made without a record of its encoder (an older "
                        "file): encoding a new one with this encoder (%s)", spec.name, path,
                        " ".join(spec.encoder))  # fmt: skip
        elif base.video == spec.video_key:
            mine = encoder_proc.encoder_key(spec.encoder).replace("|", " ")
            log.warning("%s: %s has a Δ=0 baseline of this video made with another encoder command (%s); this run "
                        "uses %s: encoding a new baseline (both are kept)", spec.name, path,
                        base.encoder.replace("|", " "), mine)  # fmt: skip


def encoder_warnings(log_path: Path) -> list[str]:
    """The warnings an encoder wrote to its log (lines with 'warning: '), for the user to see."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
    return [line.split("warning: ", 1)[1] for line in lines if "warning: " in line]
