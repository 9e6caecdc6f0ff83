"""Evaluation report: the trained agent vs the Δ=0 baseline vs the codec's own rate control, BD-rates, oracle.

    # the report: every clip of a directory (or a glob), 4 target rates, agent / baseline / codec RC
    python evaluate.py --load-checkpoint CKPT --inputs DIR_OR_GLOB [--bitrates 100,200,400,800 | --bpp ...]
                       [--encoder "YOUR ENCODER" --encoder-args "A|B"]
                       [--codec svtav1] [--frames N] [--oracle] --out DIR
    # the oracle alone (+ the agent when a checkpoint is given): per-mini-GOP QP offsets found by search
    python evaluate.py oracle --inputs DIR_OR_GLOB [--bitrates ...] [--load-checkpoint CKPT] --out DIR

For every clip and target bitrate (kbit/s) it runs, with the built-in encoder and one shared
first pass (`--pass 1`, then `--pass 2 --stat-in`, as main.py's dataset mode does):

  agent     the checkpoint's policy, deterministic (learners.SacLearner in infer mode), through
            `io_runner.run_encode`: the same loop, protocol and encoder as in training;
  baseline  the encoder's own two-pass rate control with Δ = 0 (rc-mode 1). It answers the
            encoder's own base QP through the protocol (learners.ZeroDeltaLearner, what main.py uses
            as its baseline), which is bit-identical to an encode without --rl-dir (the tests check
            it) and also yields the GOP budgets; its time excludes the answers' wait;
  codec_rc  the codec's own rate control at the same target (rc-mode 2), same codec settings;
  codec_crf the codec's own CRF (rc-mode 3) at the baseline's mean base QP, rounded: a second
            reference curve (BD-rate needs curves, not equal rates), and the stand-in for codec_rc
            where a backend has no rc-mode 2;
  oracle    (optional) coordinate descent over per-mini-GOP QP offsets around the encoder's base
            QP, each candidate a full encode from frame 0 through the protocol, maximising overall
            PSNR-Y within the baseline's total bits (a penalty on overshoot, `run_oracle`).

Quality numbers come from the encoder's own --summary-json: overall PSNR-Y from the total luma MSE
(the headline), the mean of per-frame PSNR-Y, and mean SSIM-Y.

`--encoder CMD` evaluates a team's own encoder instead: it is run as main.py runs encoders (pass 1
with `--pass 1 --stat-out`, then `--pass 2 --stat-in` through the protocol; video flags `--input
--frames --bitrate`, plus `--encoder-args`), and every number comes from the protocol's feedback
alone: bits and per-mini-GOP MSE, overall PSNR-Y = 10 log10(255² / frame-weighted mean MSE). The
codec_rc and codec_crf columns need the built-in encoder's extra modes and are left out (said).

Outputs in --out: runs.csv (one row per encode), bdrate.csv, minigops.csv (per-mini-GOP QP / bits / budget), oracle.csv,
report.md, summary.json and PNG plots (RD curves per clip; QP per mini-GOP and bits vs budget per
GOP for one clip).

BD-rate (`bd_rate`): Bjøntegaard delta rate, percent; negative = the first curve needs fewer bits
for the same quality.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.interpolate import PchipInterpolator

import checkpoint
import encoder_proc
import io_runner
import protocol
from io_runner import EncodeResult, Learner

log = logging.getLogger("rlrc")

METHODS = ("agent", "baseline", "codec_rc", "codec_crf", "oracle")
METRICS = ("psnr_y", "psnr_y_frame_mean", "ssim_y")  # psnr_y (from total MSE) is the headline
METRIC_LABELS = {"psnr_y": "PSNR-Y (overall, dB)", "psnr_y_frame_mean": "mean per-frame PSNR-Y (dB)",
                 "ssim_y": "SSIM-Y"}  # fmt: skip
BD_PAIRS = (
    ("agent", "baseline"),
    ("agent", "codec_rc"),
    ("baseline", "codec_rc"),
    ("agent", "codec_crf"),
    ("baseline", "codec_crf"),
    ("oracle", "baseline"),
)
CRF_RANGE = {"svtav1": (1, 63), "x264": (0, 51), "vp9": (0, 255)}  # CRF scales (SVT-AV1: its QP; vp9: q_index)
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".ts", ".y4m", ".yuv")
DEFAULT_BPP = (0.04, 0.08, 0.16, 0.32)  # bits per luma pixel: 8x span, factor 2 apart


# ----------------------------------------------------------------------------- BD-rate


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


def _safe_bd(ra: list[float], qa: list[float], rb: list[float], qb: list[float]) -> float:
    """bd_rate, or NaN where the curves do not allow one (too few points, no overlap)."""
    try:
        return bd_rate(ra, qa, rb, qb)
    except ValueError:
        return math.nan


# ----------------------------------------------------------------------------- inputs


@dataclass
class Video:
    """One input clip. Sizes in luma pixels; `frames` is the number coded."""

    name: str
    path: Path
    width: int
    height: int
    fps: float  # frames/s (the file's, else 30 like the encoder)
    frames: int
    input_res: str | None = None  # WxH for a raw .yuv


@dataclass
class EvalSettings:
    """Encoder settings shared by every encode of a report (built-in encoder flags)."""

    codec: str = "svtav1"
    frames: int = 0  # 0 = the whole clip
    preset: int | None = None  # None = the encoder's default for the codec
    keyint: int = 64  # frames per GOP
    mini_gop: int = 8  # frames per mini-GOP
    input_res: str | None = None  # for .yuv inputs
    encoder_timeout_s: float = 60.0  # seconds without a protocol file before an encoder counts as hung
    device: str = "cpu"
    encoder: str = ""  # a team's own encoder command (main.py --encoder); "" = the built-in one
    encoder_args: tuple[str, ...] = ()  # its extra arguments for every encode (codec, GOP, preset flags)
    rl_args: str = encoder_proc.DEFAULT_RL_ARGS  # protocol arguments, as main.py --encoder-rl-args

    @property
    def builtin(self) -> bool:
        return not self.encoder


def find_inputs(patterns: Sequence[str]) -> list[Path]:
    """Clips named by `--inputs`: a directory (every video file in it), a glob, or a file; in order."""
    found: list[Path] = []
    for pattern in patterns:
        p = Path(os.path.expanduser(pattern))
        if p.is_dir():
            paths = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in VIDEO_EXTENSIONS)
        elif p.is_file():
            paths = [p]
        else:
            paths = [Path(f) for f in sorted(glob.glob(os.path.expanduser(pattern))) if Path(f).is_file()]
        if not paths:
            raise ValueError(f"--inputs: no video file matches {pattern!r}")
        found += [x for x in paths if x not in found]
    return found


def probe_videos(paths: Sequence[Path], settings: EvalSettings) -> list[Video]:
    """Opens every clip once (size, frame rate, frame count) before any encode starts."""
    from builtin_encoder.source import open_source

    videos: list[Video] = []
    for path in paths:
        res = settings.input_res if path.suffix.lower() == ".yuv" else None
        try:
            src = open_source(path, res)
        except Exception as exc:  # the source's errors name the file
            raise ValueError(f"--inputs: {exc}") from None
        frames = min(settings.frames, src.frame_count) if settings.frames > 0 else src.frame_count
        name = path.stem
        if any(v.name == name for v in videos):
            name = f"{name}_{len(videos)}"
        videos.append(Video(name, path, src.width, src.height, src.fps or 30.0, frames, res))
    return videos


def targets_for(video: Video, bitrates: Sequence[float] | None, bpp: Sequence[float] | None) -> list[float]:
    """Target rates of one clip in kbit/s: `bitrates` as given, or `bpp` (bits per luma pixel) scaled."""
    if bitrates:
        return [float(b) for b in bitrates]
    per_pixel = bpp or DEFAULT_BPP
    return [round(b * video.width * video.height * video.fps / 1000.0, 1) for b in per_pixel]


# ----------------------------------------------------------------------------- encodes


@dataclass
class MiniGopRow:
    """One mini-GOP of one encode: the QP decision and what it cost."""

    mg: int
    gop: int
    frames: int
    qp: int  # base QP the mini-GOP was coded at (the answer)
    encoder_qp: int  # the encoder's own proposal in the request (= qp for the baseline)
    bits: int
    gop_budget: int  # the GOP's bit budget as the request stated it (fixed at the GOP's start)


@dataclass
class RunRecord:
    """One encode of one clip at one target. Rates kbit/s, PSNR dB, times s."""

    video: str
    method: str  # one of METHODS
    target_kbps: float
    ok: bool = False
    message: str = ""
    width: int = 0
    height: int = 0
    frames: int = 0
    bits: int = 0
    kbps: float = math.nan
    psnr_y: float = math.nan  # overall, from the total luma MSE: the headline
    psnr_y_frame_mean: float = math.nan
    ssim_y: float = math.nan
    encode_s: float = math.nan  # codec time: first pass + final pass (+ the agent's decisions for agent/oracle)
    agent_s: float = 0.0  # time the encoder waited for answers
    wall_s: float = math.nan  # wall time of the final-pass process, start-up included
    gops: int = 0
    gops_over_budget: int = 0  # GOP bits > GOP budget (protocol runs only)
    gops_over_tol: int = 0  # GOP bits > GOP budget * (1 + rate tolerance)
    mean_dqp: float = math.nan  # mean (answered QP - encoder's base QP)
    minigops: list[MiniGopRow] = field(default_factory=list)

    @property
    def error(self) -> float:
        """Relative bitrate error kbps / target - 1 (fraction)."""
        return self.kbps / self.target_kbps - 1.0

    def row(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "minigops"}
        d["error_pct"] = 100.0 * self.error
        return d


@dataclass
class Point:
    """One (clip, target) pair and the files of its encodes (all under `work`)."""

    video: Video
    target_kbps: float
    work: Path
    settings: EvalSettings

    def base_args(self) -> list[str]:
        """Encoder arguments common to every method (input, codec, layout, frames, target).

        Another encoder gets the flags main.py's videos have (input, frames, bitrate) and its own.
        """
        v, s = self.video, self.settings
        args = ["--input", str(v.path)]
        if v.input_res:
            args += ["--input-res", v.input_res]
        if not s.builtin:
            return args + ["--frames", str(v.frames), "--bitrate", f"{self.target_kbps:g}", *s.encoder_args]
        args += ["--codec", s.codec, "--frames", str(v.frames), "--keyint", str(s.keyint),
                 "--mini-gop", str(s.mini_gop), "--bitrate", f"{self.target_kbps:g}"]  # fmt: skip
        if s.preset is not None:
            args += ["--preset", str(s.preset)]
        return args

    @property
    def stat_path(self) -> Path:
        return self.work / "pass1.stat"

    def pass2_args(self, tag: str) -> list[str]:
        """Arguments of a two-pass final encode on the shared first pass, writing `tag`.json/.csv."""
        if not self.settings.builtin:  # main.py's dataset mode: the protocol's feedback is the output
            return self.base_args() + ["--pass", "2", "--stat-in", str(self.stat_path)]
        return self.base_args() + ["--rc-mode", "1", "--pass", "2", "--stat-in", str(self.stat_path),
                                   "--summary-json", str(self.work / f"{tag}.json"),
                                   "--csv", str(self.work / f"{tag}.csv")]  # fmt: skip


class ScriptedLearner(Learner):
    """Answers mini-GOP k with the encoder's base QP + offsets[k] (the oracle's responder).

    run_encode maps an action a to base + round(a * max_offset), so a = offset / max_offset gives
    the offset exactly. Only the order of requests matters, not the observation.
    """

    learning = False

    def __init__(self, offsets: Sequence[int], max_offset: int) -> None:
        self.offsets = list(offsets)
        self.max_offset = max_offset
        self.k = 0

    def choose(self, obs: np.ndarray) -> np.ndarray:
        offset = self.offsets[self.k] if self.k < len(self.offsets) else 0
        self.k += 1
        return np.array([offset / self.max_offset], dtype=np.float32)


class Runner:
    """Runs the encodes of a report, one at a time; one protocol directory, sessions numbered per encode.

    With `worker` k (evaluate's --workers N > 1) the directory is OUT/rl_io/wk; `should_stop()`
    ends a running encode (another worker's failure or Ctrl-C).
    """

    def __init__(
        self,
        out_dir: Path,
        settings: EvalSettings,
        worker: int | None = None,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.settings = settings
        self.rl_dir = self.out_dir / "rl_io" / (f"w{worker}" if worker is not None else "")
        self.session_prefix = f"ev{os.getpid()}" + (f"-w{worker}" if worker is not None else "")
        self.should_stop = should_stop
        self.count = 0  # encoder processes started

    def first_pass(self, point: Point) -> float:
        """Runs pass 1 once per point (it depends on the target); returns its codec time, s."""
        point.work.mkdir(parents=True, exist_ok=True)
        summary = point.work / "pass1.json"
        if not (point.stat_path.exists() and summary.exists()):
            args = point.base_args() + ["--pass", "1", "--stat-out", str(point.stat_path)]
            if self.settings.builtin:
                args += ["--summary-json", str(summary)]
            self.count += 1
            t0 = time.monotonic()
            encoder_proc.run_to_completion(self.encoder + args, point.work / "pass1.log", point.video.name,
                                           timeout_s=3600, should_stop=self.should_stop)  # fmt: skip
            if not self.settings.builtin:  # its time: the process's wall time
                summary.write_text(json.dumps({"encode_s": time.monotonic() - t0}))
        return float(json.loads(summary.read_text())["encode_s"])

    @property
    def encoder(self) -> list[str]:
        return encoder_proc.encoder_command(self.settings.encoder)

    def protocol_encode(
        self, point: Point, method: str, learner: Learner, max_delta_qp: int, rate_tolerance: float, tag: str
    ) -> tuple[RunRecord, EncodeResult]:
        """One two-pass encode whose QPs `learner` answers through rl_io (io_runner.run_encode)."""
        args = point.pass2_args(tag)
        self.count += 1
        session = f"{self.session_prefix}-{self.count}"
        command = self.encoder + args + encoder_proc.rl_args(self.settings.rl_args, self.rl_dir, session)
        spec = encoder_proc.VideoSpec(point.video.name, args)
        timeout = self.settings.encoder_timeout_s
        res = io_runner.run_encode(spec, command, self.rl_dir, session, learner, None, max_delta_qp,
                                   rate_tolerance, timeout, point.work / f"{tag}.log",
                                   should_stop=self.should_stop)  # fmt: skip
        rec = RunRecord(point.video.name, method, point.target_kbps, ok=res.ok, message=res.message)
        if res.ok and self.settings.builtin:
            _fill_from_summary(rec, point.work / f"{tag}.json", res.wall_s)
        if res.ok and not self.settings.builtin:
            _fill_from_feedback(rec, res)
        if res.ok:
            rec.minigops = _minigops_from_result(res)
            _gop_counts(rec, rate_tolerance)
            rec.mean_dqp = float(np.mean([m.qp - m.encoder_qp for m in rec.minigops]))
        return rec, res

    def plain_encode(self, point: Point, method: str, extra: list[str], tag: str) -> RunRecord:
        """One encode without an agent (the codec's own rate control)."""
        summary = point.work / f"{tag}.json"
        args = point.base_args() + extra + ["--summary-json", str(summary), "--csv", str(point.work / f"{tag}.csv")]
        self.count += 1
        rec = RunRecord(point.video.name, method, point.target_kbps)
        t0 = time.monotonic()
        try:
            encoder_proc.run_to_completion(encoder_proc.encoder_command("") + args, point.work / f"{tag}.log",
                                           point.video.name, timeout_s=3600, should_stop=self.should_stop)  # fmt: skip
        except RuntimeError as exc:
            # e.g. a backend without a native rate control yet: the report says so (the encoder's
            # last line names the cause) and goes on.
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            rec.message = lines[-1] if lines else "encoder failed"
            return rec
        rec.ok = True
        _fill_from_summary(rec, summary, time.monotonic() - t0)
        return rec


def _fill_from_summary(rec: RunRecord, path: Path, wall_s: float) -> None:
    """Quality, rate and time from the encoder's --summary-json."""
    d = json.loads(path.read_text())
    rec.frames, rec.width, rec.height = int(d["frames"]), int(d["width"]), int(d["height"])
    rec.bits, rec.kbps = int(d["bits"]), float(d["kbps"])
    rec.psnr_y, rec.ssim_y = float(d["psnr_y"]), float(d["ssim_y"])
    rec.psnr_y_frame_mean = float(d["psnr_y_frame_mean"])
    rec.agent_s = float(d.get("agent_wait_s") or 0.0)
    rec.encode_s = float(d["encode_s"]) + float(d.get("pass1_s") or 0.0)
    rec.wall_s = wall_s


def _fill_from_feedback(rec: RunRecord, res: EncodeResult) -> None:
    """Quality, rate and time from the protocol's feedback alone (any encoder).

    Overall PSNR-Y from the frame-weighted mean of the mini-GOPs' luma MSE (capped at 100 dB, as
    the protocol says), rate from their bits at the requests' frame rate; time: the process's wall
    time less the agent's.
    """
    s = res.summary()
    steps = res.done_steps
    frames = sum(st.feedback.frame_count for st in steps)
    rec.frames, rec.width, rec.height = frames, steps[0].request.width, steps[0].request.height
    rec.bits, rec.kbps = sum(st.feedback.bits for st in steps), s["kbps"]
    rec.psnr_y, rec.ssim_y = s["psnr_y"], s["ssim_y"]
    rec.psnr_y_frame_mean = sum(st.feedback.psnr_y_frame_mean * st.feedback.frame_count for st in steps) / frames
    rec.agent_s = res.agent_s
    rec.encode_s = rec.wall_s = res.wall_s


def _minigops_from_result(res: EncodeResult) -> list[MiniGopRow]:
    return [
        MiniGopRow(
            s.request.mg_index,
            s.request.gop_index,
            s.feedback.frame_count,
            s.feedback.qp_used,
            s.request.base_qp,
            s.feedback.bits,
            s.request.gop_bits_budget,
        )  # fmt: skip
        for s in res.done_steps
        if s.feedback is not None
    ]


def gop_totals(rows: Sequence[MiniGopRow]) -> list[tuple[int, int, int]]:
    """(gop index, bits, budget) per GOP of an encode; the budget as its first request stated it."""
    out: dict[int, list[int]] = {}
    for m in rows:
        if m.gop not in out:
            out[m.gop] = [0, m.gop_budget]
        out[m.gop][0] += m.bits
    return [(g, bits, budget) for g, (bits, budget) in sorted(out.items())]


def _gop_counts(rec: RunRecord, rate_tolerance: float) -> None:
    gops = gop_totals(rec.minigops)
    rec.gops = len(gops)
    rec.gops_over_budget = sum(bits > budget for _, bits, budget in gops)
    rec.gops_over_tol = sum(bits > budget * (1.0 + rate_tolerance) for _, bits, budget in gops)


# ----------------------------------------------------------------------------- the agent


@dataclass
class AgentBundle:
    """A checkpoint's policy ready to answer, with the action range and tolerance it was trained with."""

    learner: Learner
    max_delta_qp: int
    rate_tolerance: float
    path: str
    epoch: int


def load_agent(path: str | Path, device: str = "cpu") -> AgentBundle:
    """Loads a policy file (policy.py) or a main.py checkpoint (learners.SacLearner in infer mode): no learning."""
    import torch

    import policy

    try:
        if (data := policy.read_file(Path(path))) is not None:
            pol = policy.load(Path(path), data)
            return AgentBundle(policy.PolicyLearner(pol), pol.max_delta_qp, pol.rate_tolerance, str(path), 0)
    except policy.PolicyError as exc:
        raise checkpoint.CheckpointError(f"--load-checkpoint: {exc}") from None

    from config import Config
    from learners import ACT_DIM, Counters, SacLearner
    from replay import ReplayBuffer
    from sac_agent import SACAgent
    from state import OBS_DIM

    ckpt = checkpoint.load(Path(path), map_location=device)
    if ckpt.get("obs_dim") != OBS_DIM:
        raise checkpoint.CheckpointError(
            f"--load-checkpoint: {path} has observations of size {ckpt.get('obs_dim')}, this version uses {OBS_DIM}"
        )
    cfg = Config.from_dict(ckpt["config"])
    agent = SACAgent(OBS_DIM, ACT_DIM, cfg.sac, torch.device(device), cfg.seed)
    try:
        agent.load_state_dict(ckpt["agent"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise checkpoint.CheckpointError(f"--load-checkpoint: {path}: {exc}") from None
    # Infer mode never touches the buffer: the smallest one will do.
    learner = SacLearner(agent, ReplayBuffer(1, OBS_DIM, ACT_DIM), Counters(), learning=False)
    return AgentBundle(learner, cfg.sac.max_delta_qp, cfg.sac.rate_tolerance, str(path), int(ckpt["epoch"]))


# ----------------------------------------------------------------------------- the oracle


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


# ----------------------------------------------------------------------------- the report


@dataclass
class Report:
    """Everything one evaluation measured; `write_report` turns it into files."""

    videos: list[Video]
    settings: EvalSettings
    runs: list[RunRecord] = field(default_factory=list)
    oracles: list[OracleResult] = field(default_factory=list)
    checkpoint: str = ""
    checkpoint_epoch: int = 0
    rate_tolerance: float = 0.02
    command: str = ""
    seconds: float = 0.0
    encodes: int = 0

    def get(self, video: str, method: str, target: float | None = None) -> list[RunRecord]:
        return [r for r in self.runs if r.video == video and r.method == method and r.ok
                and (target is None or r.target_kbps == target)]  # fmt: skip

    def bd(self, video: str, metric: str, a: str, b: str) -> float:
        """BD-rate (%) of method a against method b on one clip, NaN when either lacks points."""
        ra, rb = self.get(video, a), self.get(video, b)
        return _safe_bd([r.kbps for r in ra], [getattr(r, metric) for r in ra],
                        [r.kbps for r in rb], [getattr(r, metric) for r in rb])  # fmt: skip

    def bd_table(self) -> list[dict[str, Any]]:
        rows = []
        for metric in METRICS:
            for a, b in BD_PAIRS:
                values = {v.name: self.bd(v.name, metric, a, b) for v in self.videos}
                if all(math.isnan(x) for x in values.values()):
                    continue
                rows.append({"metric": metric, "pair": f"{a} vs {b}", **values, "mean": _nanmean(values.values())})
        return rows

    def delta_at_equal_rate(self, rec: RunRecord) -> float:
        """PSNR-Y of `rec` minus the baseline curve's PSNR-Y at rec's own rate (dB)."""
        base = self.get(rec.video, "baseline")
        if len(base) < 2:
            return math.nan
        return rec.psnr_y - quality_at_rate([r.kbps for r in base], [r.psnr_y for r in base], rec.kbps)

    def oracle_rows(self) -> list[dict[str, Any]]:
        """Per oracle point: its gain and the agent's, both at equal rate vs the baseline curve."""
        rows = []
        for o in self.oracles:
            agent = self.get(o.video, "agent", o.target_kbps)
            d_oracle = self.delta_at_equal_rate(o.record)
            d_agent = self.delta_at_equal_rate(agent[0]) if agent else math.nan
            rows.append({**o.row(), "oracle_dpsnr_equal_rate": d_oracle, "agent_dpsnr_equal_rate": d_agent})
        return rows

    def captured(self) -> float:
        """Share of the oracle's gain the agent captures: mean ΔPSNR@equal rate, agent / oracle."""
        rows = [r for r in self.oracle_rows() if not math.isnan(r["agent_dpsnr_equal_rate"])]
        if not rows:
            return math.nan
        oracle = float(np.mean([r["oracle_dpsnr_equal_rate"] for r in rows]))
        agent = float(np.mean([r["agent_dpsnr_equal_rate"] for r in rows]))
        return agent / oracle if oracle > 0 else math.nan

    def agent_rate_goals(self) -> dict[str, float]:
        agent = [r for r in self.runs if r.method == "agent" and r.ok]
        gops = sum(r.gops for r in agent)
        return {
            "mean_abs_error_pct": 100.0 * float(np.mean([abs(r.error) for r in agent])) if agent else math.nan,
            "max_abs_error_pct": 100.0 * float(max(abs(r.error) for r in agent)) if agent else math.nan,
            "gops": float(gops),
            "gops_over_budget_pct": 100.0 * sum(r.gops_over_budget for r in agent) / gops if gops else math.nan,
            "gops_over_tol_pct": 100.0 * sum(r.gops_over_tol for r in agent) / gops if gops else math.nan,
        }

    def summary(self) -> dict[str, Any]:
        """The headline numbers (also written as summary.json)."""
        bd = {f"{row['metric']}|{row['pair']}": row["mean"] for row in self.bd_table()}
        base = [r for r in self.runs if r.method == "baseline" and r.ok]
        base_gops = sum(r.gops for r in base)
        return {
            "videos": [v.name for v in self.videos],
            "bd_rate_mean_pct": bd,
            "agent": self.agent_rate_goals(),
            "baseline_mean_abs_error_pct": 100.0 * float(np.mean([abs(r.error) for r in base])) if base else math.nan,
            "baseline_gops_over_budget_pct": 100.0 * sum(r.gops_over_budget for r in base) / base_gops
            if base_gops else math.nan,
            "baseline_gops_over_tol_pct": 100.0 * sum(r.gops_over_tol for r in base) / base_gops
            if base_gops else math.nan,
            "captured": self.captured(),
            "oracle_encodes": sum(o.encodes for o in self.oracles),
            "oracle_seconds": sum(o.seconds for o in self.oracles),
            "encodes": self.encodes,
            "seconds": self.seconds,
        }  # fmt: skip


def _nanmean(values: Any) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def evaluate(
    videos: Sequence[Video],
    targets: dict[str, list[float]],
    out_dir: Path,
    settings: EvalSettings,
    agent: AgentBundle | None,
    methods: Sequence[str] = ("agent", "baseline", "codec_rc", "codec_crf"),
    oracle: OracleSettings | None = None,
    workers: int = 1,
) -> Report:
    """Encodes every clip at its targets with each method; returns the measurements (writes no report).

    `targets` maps a clip's name to its target rates (kbit/s). The baseline always runs (every
    comparison is against it); the oracle runs when `oracle` is given. With `workers` > 1 the
    (clip, target) points run on that many threads at once, each with its own encoder and rl_io
    subdirectory; the report is the same (runs in the same order; the same numbers, as every encode
    is deterministic), only faster.
    """
    t0 = time.monotonic()
    out_dir = Path(out_dir)
    tol = agent.rate_tolerance if agent else 0.02
    report = Report(list(videos), settings, rate_tolerance=tol)
    if agent is not None:
        report.checkpoint, report.checkpoint_epoch = agent.path, agent.epoch
    if not settings.builtin and {"codec_rc", "codec_crf"} & set(methods):
        log.warning("--encoder: codec_rc and codec_crf are left out (they need the built-in encoder's rc-modes 2 and "
                    "3); agent, baseline and oracle come from the protocol's feedback alone")  # fmt: skip
        methods = [m for m in methods if m not in ("codec_rc", "codec_crf")]
    points = [Point(v, t, out_dir / "work" / v.name / f"{t:g}kbps", settings) for v in videos for t in targets[v.name]]
    if workers <= 1:
        runners = [Runner(out_dir, settings)]
        done = [_evaluate_point(runners[0], point, agent, methods, oracle, tol) for point in points]
    else:
        import workers as pool

        halt = threading.Event()  # a failed point or Ctrl-C ends the other workers' encodes
        runners = [Runner(out_dir, settings, k, halt.is_set) for k in range(workers)]

        def run(k: int, point: Point) -> tuple[list[RunRecord], OracleResult | None]:
            try:
                return _evaluate_point(runners[k], point, agent, methods, oracle, tol)
            except BaseException:
                halt.set()
                raise

        done = pool.run_pool(points, workers, run, halt.is_set, halt)  # type: ignore[assignment]
    for result in done:
        assert result is not None  # a point not run means an exception, raised above
        runs, oracle_result = result
        report.runs += runs
        if oracle_result is not None:
            report.oracles.append(oracle_result)
    report.seconds = time.monotonic() - t0
    report.encodes = sum(r.count for r in runners)
    return report


_log_lock = threading.Lock()


def _evaluate_point(
    runner: Runner,
    point: Point,
    agent: AgentBundle | None,
    methods: Sequence[str],
    oracle: OracleSettings | None,
    tol: float,
) -> tuple[list[RunRecord], OracleResult | None]:
    """Every method's encode of one (clip, target) point, in the report's order, and the oracle's result."""
    from learners import ZeroDeltaLearner

    settings, runs = runner.settings, []
    pass1_s = runner.first_pass(point)
    base, _ = runner.protocol_encode(point, "baseline", ZeroDeltaLearner(), 1, tol, "baseline")
    if not base.ok:
        raise RuntimeError(f"baseline encode failed: {base.message}")
    # "No agent": the wait for the Δ=0 answers is protocol overhead, not encoding.
    base.encode_s += pass1_s - base.agent_s
    runs.append(base)
    if "agent" in methods and agent is not None:
        rec, _ = runner.protocol_encode(point, "agent", agent.learner, agent.max_delta_qp, tol, "agent")
        rec.encode_s += pass1_s
        runs.append(rec)
        if not rec.ok:
            log.error("%s", rec.message)
    if "codec_rc" in methods:
        runs.append(runner.plain_encode(point, "codec_rc", ["--rc-mode", "2"], "codec_rc"))
    if "codec_crf" in methods:
        lo, hi = CRF_RANGE[settings.codec]
        crf = min(max(round(float(np.mean([m.qp for m in base.minigops]))), lo), hi)
        rec = runner.plain_encode(point, "codec_crf", ["--rc-mode", "3", "--crf", str(crf)], "codec_crf")
        rec.message = rec.message if not rec.ok else f"CRF {crf}"
        runs.append(rec)
    result = None
    if oracle is not None:
        result = run_oracle(runner, point, base, oracle, tol)
        result.record.encode_s += pass1_s
        runs.append(result.record)
    with _log_lock:  # one point's lines together, whichever worker ran it
        log.info("%s @ %g kbps (%d frames)", point.video.name, point.target_kbps, point.video.frames)
        for r in runs:
            _log_run(r)
    return runs, result


def _log_run(r: RunRecord) -> None:
    if not r.ok:
        log.warning("  %-9s failed: %s", r.method, r.message[:300])
        return
    log.info("  %-9s %8.1f kbps (%+6.2f%%)  PSNR-Y %.3f dB  mean %.3f dB  SSIM-Y %.4f  %.2f s",
             r.method, r.kbps, 100 * r.error, r.psnr_y, r.psnr_y_frame_mean, r.ssim_y, r.encode_s)  # fmt: skip


# ----------------------------------------------------------------------------- files


def _fmt(x: Any, digits: int = 2) -> str:
    if isinstance(x, float):
        return "n/a" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    # A '|' inside a cell would split it: escape it.
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        if not rows:
            return
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot_rd(report: Report, video: str, path: Path) -> None:
    """RD curves of one clip: overall PSNR-Y and SSIM-Y against kbit/s (log axis), one line per method."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"agent": ("C0", "o", "-"), "baseline": ("C1", "s", "--"), "codec_rc": ("C2", "^", ":"),
              "codec_crf": ("C4", "v", "-."),
              "oracle": ("C3", "*", "")}  # fmt: skip
    for ax, metric in zip(axes, ("psnr_y", "ssim_y"), strict=True):
        for method in METHODS:
            recs = sorted(report.get(video, method), key=lambda r: r.kbps)
            if not recs:
                continue
            color, marker, ls = styles[method]
            ax.plot([r.kbps for r in recs], [getattr(r, metric) for r in recs], color=color, marker=marker,
                    linestyle=ls or "none", markersize=9 if method == "oracle" else 6, label=method)  # fmt: skip
        log_rate_axis(ax)
        ax.set_ylabel(METRIC_LABELS[metric])
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"{video}: rate-distortion ({report.settings.codec})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def log_rate_axis(ax: Any) -> None:
    """A log kbit/s x axis labelled in plain numbers ("30", "40", not "3×10¹").

    Minor ticks are labelled only when the data spans under about two decades (a small clip's
    rates lie within one), so that labels never crowd each other.
    """
    from matplotlib.ticker import LogFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    ax.xaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    ax.set_xlabel("rate (kbit/s)")


def plot_qp(report: Report, video: str, target: float, path: Path) -> None:
    """QP per mini-GOP at one target: the agent's answers, the encoder's proposals, the Δ=0 run."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(11, 4))
    # Drawn wide and pale first, so that an agent answering Δ = 0 is still seen on top of it.
    styles = {"baseline": dict(color="C1", linewidth=4, alpha=0.45), "agent": dict(color="C0", linewidth=1.6),
              "oracle": dict(color="C3", linewidth=1.2, linestyle="--")}  # fmt: skip
    for method, style in styles.items():
        recs = report.get(video, method, target)
        if not recs or not recs[0].minigops:
            continue
        mgs = recs[0].minigops
        label = "baseline (Δ=0) base QP" if method == "baseline" else f"{method} QP"
        ax.step([m.mg for m in mgs], [m.qp for m in mgs], where="mid", label=label, **style)  # type: ignore[arg-type]
        if method == "agent":
            ax.step([m.mg for m in mgs], [m.encoder_qp for m in mgs], where="mid", color="C0", linestyle=":",
                    linewidth=1.2, label="encoder's own base QP during the agent run")  # fmt: skip
        if method == "baseline":
            for prev, m in zip(mgs, mgs[1:], strict=False):
                if m.gop != prev.gop:
                    ax.axvline(m.mg - 0.5, color="grey", alpha=0.4, linewidth=0.8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("mini-GOP")
    ax.set_ylabel("base QP")
    ax.set_title(f"{video} @ {target:g} kbit/s: QP per mini-GOP (grey lines: GOP starts)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_gop_bits(report: Report, video: str, target: float, path: Path) -> None:
    """Bits per GOP against each run's own GOP budget (overshoot in %), at one target."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(11, 4))
    methods = [m for m in ("baseline", "agent", "oracle") if report.get(video, m, target)]
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        gops = gop_totals(report.get(video, method, target)[0].minigops)
        xs = [g + (i - (len(methods) - 1) / 2) * width for g, _, _ in gops]
        ax.bar(xs, [100.0 * (bits / budget - 1.0) for _, bits, budget in gops], width=width, label=method,
               color={"baseline": "C1", "agent": "C0", "oracle": "C3"}[method])  # fmt: skip
    ax.axhline(0.0, color="black", linewidth=1)
    ax.axhline(100.0 * report.rate_tolerance, color="black", linestyle="--", linewidth=0.8,
               label=f"tolerance (+{100 * report.rate_tolerance:g}%)")  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("GOP")
    ax.set_ylabel("GOP bits vs GOP budget (%)")
    ax.set_title(f"{video} @ {target:g} kbit/s: bits vs budget per GOP (> 0 = over budget)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: Report, out_dir: Path, plot_video: str | None = None) -> list[Path]:
    """Writes runs.csv, bdrate.csv, minigops.csv, oracle.csv, summary.json, report.md and PNGs; returns them."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    runs_rows = [r.row() for r in report.runs]
    _write_csv(out_dir / "runs.csv", runs_rows)
    bd_rows = report.bd_table()
    _write_csv(out_dir / "bdrate.csv", bd_rows)
    mg_rows = [{"video": r.video, "method": r.method, "target_kbps": r.target_kbps, **asdict(m)}
               for r in report.runs for m in r.minigops]  # fmt: skip
    _write_csv(out_dir / "minigops.csv", mg_rows)
    written += [out_dir / "runs.csv", out_dir / "bdrate.csv", out_dir / "minigops.csv"]
    oracle_rows = report.oracle_rows()
    if oracle_rows:
        _write_csv(out_dir / "oracle.csv", oracle_rows)
        written.append(out_dir / "oracle.csv")
    summary = report.summary()
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    written.append(out_dir / "summary.json")

    plots: list[Path] = []
    for v in report.videos:
        p = out_dir / f"rd_{v.name}.png"
        plot_rd(report, v.name, p)
        plots.append(p)
    names = [v.name for v in report.videos]
    chosen = plot_video if plot_video in names else (names[0] if names else None)
    if chosen is not None:
        targets = sorted({r.target_kbps for r in report.get(chosen, "baseline")})
        if targets:
            mid = targets[(len(targets) - 1) // 2]
            for fn, stem in ((plot_qp, "qp"), (plot_gop_bits, "gop_bits")):
                p = out_dir / f"{stem}_{chosen}.png"
                fn(report, chosen, mid, p)
                plots.append(p)
    written += plots
    md = out_dir / "report.md"
    md.write_text(markdown(report, [p.name for p in plots]))
    written.append(md)
    return written


def answer_counts(runs: Sequence[RunRecord], method: str = "agent") -> dict[str, tuple[Counter, Counter]]:
    """What a method answered, per clip over all its rates: counts of ΔQP = answered − the encoder's base QP.

    Returns {clip: (key mini-GOPs, the others)}; a GOP's key mini-GOP is its first. A constant
    policy shows one bar; a content-dependent one answers differently on different clips.
    """
    out: dict[str, tuple[Counter, Counter]] = {}
    for r in runs:
        if r.method != method or not r.ok or not r.minigops:
            continue
        key, other = out.setdefault(r.video, (Counter(), Counter()))
        first: dict[int, int] = {}  # GOP -> its first mini-GOP
        for m in r.minigops:
            first[m.gop] = min(first.get(m.gop, m.mg), m.mg)
        for m in r.minigops:
            (key if m.mg == first[m.gop] else other)[m.qp - m.encoder_qp] += 1
    return out


def _counts_text(c: Counter) -> str:
    return ", ".join(f"{d:+d}: {n}" for d, n in sorted(c.items())) if c else "–"


def markdown(report: Report, plots: Sequence[str]) -> str:
    """The report as Markdown: setup, BD-rates, goals, the agent's answers, per-encode table, oracle, plots."""
    s = report.settings
    summ = report.summary()
    goals = summ["agent"]
    out = ["# Evaluation report", ""]
    out += [f"- command: `{report.command}`" if report.command else "- command: (API call)",
            f"- checkpoint: `{report.checkpoint or 'none'}` (epoch {report.checkpoint_epoch})",
            (f"- encoder: built-in, codec {s.codec}, preset {s.preset if s.preset is not None else 'default'}, "
             f"keyint {s.keyint}, mini-GOP {s.mini_gop}" if s.builtin else
             f"- encoder: `{s.encoder}` with `{' '.join(s.encoder_args)}`; every number from the protocol's "
             "feedback (overall PSNR-Y from the mean luma MSE); codec_rc and codec_crf left out: they need the "
             "built-in encoder's rc-modes"),
            "- clips: " + ", ".join(f"{v.name} ({v.width}x{v.height}, {v.frames} frames, {v.fps:.2f} fps)"
                                     for v in report.videos),
            f"- {report.encodes} encoder processes in {report.seconds:.0f} s",
            "- methods: **agent** (deterministic policy, through the protocol), **baseline** (Δ = 0: the "
            "encoder's own two-pass rate control), **codec_rc** (the codec's own rate control, rc-mode 2), "
            "**codec_crf** (the codec's own CRF at the baseline's mean base QP: a reference curve), "
            "**oracle** (per-mini-GOP QP offsets found by coordinate descent, maximising PSNR-Y within the baseline's "
            "total bits)",
            "- BD-rate: PCHIP fit of ln(rate) against quality over the shared quality range; negative = the "
            "first method needs fewer bits for equal quality. PSNR-Y overall (from the total luma MSE) is the "
            "headline.", ""]  # fmt: skip

    out += ["## BD-rate (%)", ""]
    bd_rows = report.bd_table()
    header = ["metric", "pair"] + [v.name for v in report.videos] + ["mean"]
    out.append(_md_table(header, [[METRIC_LABELS[r["metric"]], r["pair"]]
                                  + [_fmt(r[v.name]) for v in report.videos] + [f"**{_fmt(r['mean'])}**"]
                                  for r in bd_rows]))  # fmt: skip
    out.append("")
    agent = [r for r in bd_rows if r["metric"] == "psnr_y" and r["pair"] == "agent vs baseline"]
    values = [x for x in (agent[0][v.name] for v in report.videos) if not math.isnan(x)] if agent else []
    if len(values) >= 2:
        p = pool_clips(values)
        out += [f"Agent vs baseline, overall PSNR-Y, over {p.n} clips: mean {p.mean:+.2f}%, 95% bootstrap "
                f"interval of the mean {p.low:+.2f} … {p.high:+.2f}% (clips resampled); better on {p.better}, "
                f"worse on {p.worse} (beyond ±0.05%), worst clip {p.worst:+.2f}%.", ""]  # fmt: skip

    oracle_rows = report.oracle_rows()
    captured = summ["captured"]
    reference = "codec_rc"
    bd_c = summ["bd_rate_mean_pct"].get("psnr_y|agent vs codec_rc", math.nan)
    if math.isnan(bd_c):  # no rc-mode 2 in this backend: the codec's CRF curve stands in
        reference = "codec_crf (stand-in: no codec_rc curve)"
        bd_c = summ["bd_rate_mean_pct"].get("psnr_y|agent vs codec_crf", math.nan)
    out += ["## Goals", ""]
    goal_rows = [
        ["agent captures >= 60% of the oracle's gain over the baseline (ΔPSNR-Y at equal rate)",
         "n/a (no oracle run)" if math.isnan(captured) else f"{100 * captured:.0f}%",
         _verdict(100 * captured, 60.0, higher=True)],
        [f"agent saves >= 2% BD-rate (PSNR-Y) vs {reference}", "n/a (no reference curve)" if math.isnan(bd_c)
         else f"{bd_c:.2f}%", _verdict(bd_c, -2.0, higher=False)],
        ["mean |bitrate error| of the agent <= 2%", f"{_fmt(goals['mean_abs_error_pct'])}%",
         _verdict(goals["mean_abs_error_pct"], 2.0, higher=False)],
        ["agent GOPs over budget <= 5%", f"{_fmt(goals['gops_over_budget_pct'], 1)}% of {int(goals['gops'])} "
         f"(over budget + {100 * report.rate_tolerance:g}%: {_fmt(goals['gops_over_tol_pct'], 1)}%)",
         _verdict(goals["gops_over_budget_pct"], 5.0, higher=False)],
    ]  # fmt: skip
    out.append(_md_table(["goal", "measured", "met"], goal_rows))
    out += ["", f"Baseline for comparison: mean |bitrate error| {_fmt(summ['baseline_mean_abs_error_pct'])}%, "
            f"GOPs over budget {_fmt(summ['baseline_gops_over_budget_pct'], 1)}%.", ""]  # fmt: skip

    answers = answer_counts(report.runs)
    if answers:
        out += ["## What the agent answered", "",
                "ΔQP = the agent's answer − the encoder's base QP, counted over every rate of each clip "
                "(ΔQP: count).", ""]  # fmt: skip
        out.append(_md_table(["clip", "key mini-GOPs", "other mini-GOPs"],
                             [[v, _counts_text(k), _counts_text(o)] for v, (k, o) in sorted(answers.items())]))
        out.append("")

    out += ["## Encodes", "", "Rates kbit/s, error vs target, PSNR dB, encode time s (first + final pass codec "
            "time; the agent's decisions included for agent/oracle).", ""]  # fmt: skip
    rows = []
    for r in sorted(report.runs, key=lambda r: (r.video, r.target_kbps, METHODS.index(r.method))):
        if not r.ok:
            rows.append([r.video, f"{r.target_kbps:g}", r.method] + [""] * 8 + ["failed: " + r.message[:200]])
            continue
        gops = f"{r.gops_over_budget}/{r.gops}" if r.gops else ""
        dqp = "" if math.isnan(r.mean_dqp) else _fmt(r.mean_dqp)
        rows.append([r.video, f"{r.target_kbps:g}", r.method, _fmt(r.kbps, 1), f"{100 * r.error:+.2f}%",
                     _fmt(r.psnr_y, 3), _fmt(r.psnr_y_frame_mean, 3), _fmt(r.ssim_y, 4), _fmt(r.encode_s),
                     gops, dqp, r.message])  # fmt: skip
    out.append(_md_table(["clip", "target", "method", "kbps", "error", "PSNR-Y", "mean PSNR-Y", "SSIM-Y",
                          "encode s", "GOPs over budget", "mean ΔQP", "note"], rows))  # fmt: skip
    out.append("")

    if oracle_rows:
        total = summ["oracle_encodes"]
        secs = summ["oracle_seconds"]
        out += ["## Oracle", "",
                f"Coordinate descent over per-mini-GOP QP offsets, each candidate a full encode through the "
                f"protocol; cost: {total} encodes in {secs:.0f} s ({secs / max(total, 1):.2f} s per encode). "
                "ΔPSNR-Y at equal rate = PSNR-Y minus the baseline curve's PSNR-Y at the same rate (PCHIP in "
                "ln rate). Share of the oracle's gain the agent captures: "
                f"**{_fmt(100 * captured, 0)}%**.", ""]  # fmt: skip
        out.append(_md_table(
            ["clip", "target", "bits vs Δ=0", "Δ=0 PSNR-Y", "oracle PSNR-Y", "oracle ΔPSNR@rate",
             "agent ΔPSNR@rate", "encodes", "offsets"],
            [[o["video"], f"{o['target_kbps']:g}", f"{o['bits_over_budget_pct']:+.2f}%", _fmt(o["baseline_psnr_y"], 3),
              _fmt(o["oracle_psnr_y"], 3), _fmt(o["oracle_dpsnr_equal_rate"], 3), _fmt(o["agent_dpsnr_equal_rate"], 3),
              o["encodes"], o["offsets"]] for o in oracle_rows]))  # fmt: skip
        out.append("")

    out += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(out)


def _verdict(value: float, threshold: float, higher: bool) -> str:
    if math.isnan(value):
        return "n/a"
    ok = value >= threshold if higher else value <= threshold
    return "yes" if ok else f"**no** (misses by {abs(value - threshold):.2f})"


# ----------------------------------------------------------------------------- command line


def _floats(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive numbers, got {text!r}")
    return values


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def build_parser(oracle_mode: bool) -> argparse.ArgumentParser:
    prog = "evaluate.py oracle" if oracle_mode else "evaluate.py"
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0] if __doc__ else None,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    optional = " (optional: to compare)" if oracle_mode else ""
    p.add_argument("--load-checkpoint", default="",
                   help="policy file or main.py checkpoint (default: policies/CODEC.pt)" + optional)  # fmt: skip
    p.add_argument("--inputs", action="append", required=True,
                   help="directory of clips, glob or file (repeatable)")  # fmt: skip
    g = p.add_mutually_exclusive_group()
    g.add_argument("--bitrates", type=_floats, help="target rates, kbit/s, comma-separated (same for every clip)")
    default_bpp = ",".join(map(str, DEFAULT_BPP))
    g.add_argument("--bpp", type=_floats,
                   help=f"target bits per luma pixel, comma-separated (default {default_bpp})")  # fmt: skip
    p.add_argument("--codec", choices=("svtav1", "x264", "vp9"), default="svtav1",
                   help="built-in encoder's codec; with --encoder: which shipped policy answers")  # fmt: skip
    p.add_argument("--encoder", default="", help="your own encoder command, split like a shell (as main.py "
                   "--encoder); numbers from the protocol's feedback alone (default: built-in)")  # fmt: skip
    p.add_argument("--encoder-args", default="", metavar="ARGS",
                   help="with --encoder: '|'-separated arguments for every encode (codec, GOP, preset)")  # fmt: skip
    p.add_argument("--encoder-rl-args", default=encoder_proc.DEFAULT_RL_ARGS, metavar="T",
                   help="protocol arguments, {rl_dir} and {session} filled (as main.py)")  # fmt: skip
    p.add_argument("--preset", type=int, default=None, help="codec speed preset (default: the encoder's)")
    p.add_argument("--frames", type=int, default=0, help="frames to code per clip (0 = all)")
    p.add_argument("--keyint", type=int, default=64, help="GOP length, frames")
    p.add_argument("--mini-gop", type=int, default=8, help="mini-GOP length, frames")
    p.add_argument("--input-res", default=None, help="WxH of raw .yuv inputs")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--plot-video", default=None, help="clip for the per-mini-GOP plots (default: the first)")
    if not oracle_mode:
        p.add_argument("--oracle", action="store_true", help="also run the oracle search (slow: see its cost)")
        p.add_argument("--skip-codec-rc", action="store_true",
                       help="leave out the codec's own rate control (codec_rc and codec_crf)")  # fmt: skip
    p.add_argument("--oracle-steps", type=_ints, default=OracleSettings.steps, help="oracle step sizes, QP")
    p.add_argument("--oracle-sweeps", type=int, default=OracleSettings.sweeps, help="oracle passes per step size")
    p.add_argument("--oracle-max-offset", type=int, default=None,
                   help="oracle |offset| bound, QP (default: the checkpoint's --max-delta-qp, else 4)")  # fmt: skip
    p.add_argument("--oracle-overshoot-db", type=float, default=OracleSettings.overshoot_db,
                   help="oracle: penalty mu in PSNR-Y - mu * max(0, bits/budget - 1), dB")  # fmt: skip
    p.add_argument("--encoder-timeout", type=float, default=60.0, help="seconds without a protocol file")
    p.add_argument("--workers", type=int, default=1,
                   help="(clip, target) points encoded at once, each worker in OUT/rl_io/wK; same report")  # fmt: skip
    p.add_argument("--device", default="cpu", help="where the agent's networks run")
    p.add_argument("--log-level", type=int, choices=(0, 1, 2, 3), default=1)
    return p


DASH_VALUE_FLAGS = ("--encoder-args", "--encoder-rl-args")  # values that start with '--'


def default_policy(codec: str, oracle_mode: bool) -> str:
    """The shipped policy for `codec` when no checkpoint is given ('' in oracle mode or when none ships)."""
    import policy

    path = policy.shipped_policy(codec)
    if oracle_mode or not path.is_file():
        return ""
    log.info("no --load-checkpoint: evaluating the shipped policy %s", path)
    return str(path)


def _interrupt(signum: int, _frame: Any) -> None:
    # SIGTERM as Ctrl-C: run_encode's cleanup then ends the running encoder's process group.
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    oracle_mode = bool(argv) and argv[0] == "oracle"
    if oracle_mode:
        argv = argv[1:]
    ns = build_parser(oracle_mode).parse_args(encoder_proc.glue_dash_values(argv, DASH_VALUE_FLAGS))
    from main import setup_logging

    setup_logging(ns.log_level)
    settings = EvalSettings(codec=ns.codec, frames=ns.frames, preset=ns.preset, keyint=ns.keyint,
                            mini_gop=ns.mini_gop, input_res=ns.input_res, encoder_timeout_s=ns.encoder_timeout,
                            device=ns.device, encoder=ns.encoder,
                            encoder_args=tuple(t for t in ns.encoder_args.split("|") if t),
                            rl_args=ns.encoder_rl_args)  # fmt: skip
    try:
        if ns.frames < 0:
            raise ValueError(f"--frames must be >= 0, got {ns.frames}")
        if ns.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {ns.workers}")
        videos = probe_videos(find_inputs(ns.inputs), settings)
        agent_path = ns.load_checkpoint or default_policy(ns.codec, oracle_mode)
        if not agent_path and not oracle_mode:
            raise ValueError(f"--load-checkpoint: none given and no policy ships for {ns.codec} (policies/)")
        agent = load_agent(agent_path, ns.device) if agent_path else None
        # The encodes' protocol directory: created 0700; RlDirError if others may write to it.
        protocol.prepare_rl_dir(Path(ns.out) / "rl_io", flag="--out")
    except (ValueError, checkpoint.CheckpointError) as exc:
        print(f"evaluate.py: error: {exc}", file=sys.stderr)
        return 2
    targets = {v.name: targets_for(v, ns.bitrates, ns.bpp) for v in videos}
    oracle = None
    if oracle_mode or ns.oracle:
        max_offset = ns.oracle_max_offset or (agent.max_delta_qp if agent else 4)
        oracle = OracleSettings(max_offset=max_offset, steps=ns.oracle_steps, sweeps=ns.oracle_sweeps,
                                overshoot_db=ns.oracle_overshoot_db)  # fmt: skip
    if oracle_mode:
        methods: tuple[str, ...] = ("agent",) if agent else ()
    else:
        methods = ("agent",) if ns.skip_codec_rc else ("agent", "codec_rc", "codec_crf")
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = evaluate(videos, targets, Path(ns.out), settings, agent, methods, oracle, ns.workers)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted: no report written")
        return 130
    report.command = " ".join(["python evaluate.py"] + (["oracle"] if oracle_mode else []) + argv)
    files = write_report(report, Path(ns.out), ns.plot_video)
    print(Path(ns.out, "report.md").read_text())
    log.info("wrote %s", ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
