"""The encodes of an evaluation: its clips, its (clip, target) points and the Runner that encodes them.

A Runner runs one encode at a time with the built-in encoder (or a team's own, `EvalSettings.encoder`):
a shared first pass per point, then either a two-pass encode whose QPs a Learner answers through
the protocol (`io_runner.run_encode`: the agent, the Δ=0 baseline, an oracle candidate) or an
encode by the codec's own rate control. Each encode becomes a RunRecord (rate, quality, time,
per-mini-GOP QPs and bits). evaluate.py decides what to encode; eval_report.py what to write.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import encoder_proc
import io_runner
from io_runner import EncodeResult, Learner

log = logging.getLogger("rlrc")

METHODS = ("agent", "baseline", "codec_rc", "codec_crf", "oracle")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v", ".ts", ".y4m", ".yuv")
DEFAULT_BPP = (0.04, 0.08, 0.16, 0.32)  # bits per luma pixel: 8x span, factor 2 apart


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
    layer_offset_scale: float = 1.0  # the built-in encoder's --layer-offset-scale (1 = the codec's own pyramid)
    key_probe: bool = False  # the built-in encoder's --key-probe in every agent encode (PROTOCOL.md §4.1.2)
    probe_zero: bool = False  # with key_probe, its --probe-zero too (a policy that reads the probes' zero encode)
    input_res: str | None = None  # for .yuv inputs
    encoder_timeout_s: float = 60.0  # seconds without a protocol file before an encoder counts as hung
    device: str = "cpu"
    encoder: str = ""  # a team's own encoder command (main.py --encoder); "" = the built-in one
    encoder_args: tuple[str, ...] = ()  # its extra arguments for every encode (codec, GOP, preset flags)
    rl_args: str = encoder_proc.DEFAULT_RL_ARGS  # protocol arguments, as main.py --encoder-rl-args

    @property
    def builtin(self) -> bool:
        return not self.encoder


KEY_PROBE_CODECS = ("svtav1", "x264")  # the built-in encoder's --key-probe (builtin_encoder/key_probe.py)


def key_probe_error(codec: str, encoder: str) -> str | None:
    """Why --key-probe cannot run for this codec and encoder (the built-in encoder's flag, svtav1 and x264); None if
    it can."""
    if encoder or codec not in KEY_PROBE_CODECS:
        return "--key-probe is the built-in encoder's, for svtav1 and x264 (your encoder sends key_probe itself)"
    return None


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
        if s.layer_offset_scale != 1.0:
            args += ["--layer-offset-scale", f"{s.layer_offset_scale:g}"]
        return args

    @property
    def stat_path(self) -> Path:
        return self.work / "pass1.stat"

    def pass2_args(self, tag: str) -> list[str]:
        """Arguments of a two-pass final encode on the shared first pass, writing `tag`.json/.csv."""
        if not self.settings.builtin:  # main.py's dataset mode: the protocol's feedback is the output
            return self.base_args() + ["--pass", "2", "--stat-in", str(self.stat_path)]
        probes = (["--key-probe"] + (["--probe-zero"] if self.settings.probe_zero else [])
                  if self.settings.key_probe else [])  # fmt: skip
        return self.base_args() + ["--rc-mode", "1", "--pass", "2", "--stat-in", str(self.stat_path),
                                   "--summary-json", str(self.work / f"{tag}.json"),
                                   "--csv", str(self.work / f"{tag}.csv"), *probes]  # fmt: skip


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

    def restart_encode(self) -> None:
        self.k = 0


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
        """One two-pass encode whose QPs `learner` answers through rl_io (io_runner.run_encode).

        An encode that stalls (alive, no protocol file for the encoder timeout) runs once more from
        its start, in a new session, when the learner does not learn: the answers are the same, and a
        stall is most often the codec's own (SVT-AV1 4.1 deadlocks now and then at normal priority).
        """
        args = point.pass2_args(tag)
        spec = encoder_proc.VideoSpec(point.video.name, args)
        timeout = self.settings.encoder_timeout_s
        for attempt in (1, 2):
            self.count += 1
            session = f"{self.session_prefix}-{self.count}"
            command = self.encoder + args + encoder_proc.rl_args(self.settings.rl_args, self.rl_dir, session)
            res = io_runner.run_encode(spec, command, self.rl_dir, session, learner, None, max_delta_qp,
                                       rate_tolerance, timeout, point.work / f"{tag}.log",
                                       should_stop=self.should_stop)  # fmt: skip
            if res.ok or not res.stalled or learner.learning or attempt == 2:
                break
            log.warning("%s @ %g kbps, %s: %s; running it once more", point.video.name, point.target_kbps, method,
                        res.message)  # fmt: skip
            learner.restart_encode()
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
