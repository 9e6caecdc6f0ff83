"""The encode loop and the protocol client: frames -> mini-GOPs -> (agent) -> codec -> CSV / stats / feedback.

Order per mini-GOP k (the simple order the protocol allows): request k -> reply k -> code the
mini-GOP -> feedback k -> request k + 1. Without `--rl-dir` the agent step is skipped and the
rate control's own base QP is used (the "delta = 0 baseline").
"""

from __future__ import annotations

import contextlib
import csv
import inspect
import itertools
import json
import math
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TextIO

import numpy as np

import protocol
from builtin_encoder.analysis import Analyzer, BlockCosts, FrameAnalysis, noise_sigma, propagation
from builtin_encoder.codec import Codec, CodecConfig, CodecStall, FrameStats, Measure, YuvFrame
from builtin_encoder.errors import (
    BadInput,
    BadReply,
    CodecFailure,
    CodecStalled,
    EncoderError,
    Interrupted,
    ReplyTimeout,
)
from builtin_encoder.key_probe import RAMP, Gop, key_probe
from builtin_encoder.layout import MiniGop, build_layout
from builtin_encoder.metrics import psnr_from_mse
from builtin_encoder.ratecontrol import (
    CODEC_RC,
    FirstPassController,
    FrameStat,
    RateController,
    StatHeader,
    check_stats_match,
    read_stats,
    write_stats,
)
from builtin_encoder.source import FrameSource, frame_bytes_420, open_source

CODECS = ("svtav1", "x264", "vp9")
DEFAULT_PRESET = {"svtav1": 10, "x264": 7, "vp9": 5}  # x264: 7 = veryfast; vp9: libvpx --cpu-used 5
X264_DEFAULT_THREADS = 1  # what --threads 0 means for x264 (see Job.codec_config)
KEEP_FRAMES_BYTES = 512 * 2**20  # decoded input the in-memory pass 1 keeps for the final pass, at most
CSV_COLUMNS = [
    "frame", "mini_gop", "gop", "type", "layer", "base_qp", "qp", "bits", "psnr_y", "psnr_u", "psnr_v", "ssim_y",
]  # fmt: skip


@dataclass
class Settings:
    """Everything the command line sets (see cli.py for the flags and their defaults)."""

    input: str
    input_res: str | None = None
    frames: int = 0  # 0 = all
    out: str | None = None
    csv: str | None = None
    codec: str = "svtav1"
    preset: int | None = None  # None = DEFAULT_PRESET[codec]
    fps: float | None = None  # None = from the file, else 30
    keyint: int = 64
    mini_gop: int = 8
    threads: int = 0
    bitrate: float | None = None  # kbit/s
    rc_mode: int = 1
    qp: int | None = None
    crf: int | None = None
    pass_no: int = 0  # 0 = single command (pass 1 in memory when needed), 1, 2
    stat_in: str | None = None
    stat_out: str | None = None
    rl_dir: str | None = None
    rl_timeout: float = 60.0  # seconds
    rl_session: str = ""
    lookahead: int = 7  # mini-GOPs of look-ahead (fp_bpp, first_pass) in each request
    layer_offset_scale: float = 1.0  # temporal-layer QP offsets times this (frame_qps); 1 = the codec's own
    key_probe: bool = False  # probe each GOP's key QP (key_probe.py) into the agent's requests
    probe_zero: bool = False  # with key_probe: the GOP at Δ=0 too, in both probes
    summary_json: str | None = None
    quiet: bool = False


@dataclass
class Totals:
    """Running sums over the coded frames (bits, SSE per plane, SSIM, per-frame PSNR-Y)."""

    frames: int = 0
    mini_gops: int = 0
    bits: int = 0
    sse: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    ssim_y: float = 0.0
    psnr_y_frames: float = 0.0

    def add(self, stats: list[FrameStats], luma: int) -> None:
        self.mini_gops += 1
        for s in stats:
            self.frames += 1
            self.bits += s.bits
            self.sse[0] += s.sse_y
            self.sse[1] += s.sse_u
            self.sse[2] += s.sse_v
            self.ssim_y += s.ssim_y
            self.psnr_y_frames += psnr_from_mse(s.sse_y / luma)


def open_codec(name: str, cfg: CodecConfig, out_path: Path, native: dict[str, Any] | None = None,
               inputs: dict[str, Any] | None = None) -> Codec:  # fmt: skip
    """Creates the backend `name` writing to `out_path`; any failure is a CodecFailure (exit 5).

    `native` holds the keyword options that switch a backend to its own rate control (rc-modes
    2 and 3, e.g. {"crf": 30}); a backend without such an option is refused with a clear error.
    `inputs`: what a backend needs besides the frames (vp9: libvpx's first-pass statistics).
    """
    if name == "svtav1":
        from builtin_encoder.codec_svtav1 import SvtAv1Codec as cls
    elif name == "x264":
        from builtin_encoder.codec_x264 import X264Codec as cls  # type: ignore[assignment]
    elif name == "vp9":
        from builtin_encoder.codec_vp9 import Vp9Codec as cls  # type: ignore[assignment]
    else:
        raise BadInput(f"--codec must be one of {', '.join(CODECS)} (got {name!r})")
    native = native or {}
    accepted = inspect.signature(cls.__init__).parameters
    for key in native:
        if key not in accepted:
            raise BadInput(f"--codec {name}: this backend has no native rate-control option {key!r} yet "
                           "(needed for --rc-mode 2/3)")  # fmt: skip
    try:
        return cls(cfg, out_path, **native, **(inputs or {}))
    except EncoderError:  # e.g. Interrupted by SIGTERM while the codec started
        raise
    except OSError as exc:  # the output file cannot be created
        raise BadInput(f"--o: cannot write {out_path}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # the backends' way of refusing a configuration (size, mini-GOP...)
        raise BadInput(f"--codec {name} refuses this configuration: {exc}") from exc
    except Exception as exc:  # the backends' own error types differ; all mean "cannot start"
        raise CodecFailure(f"cannot start codec {name}: {exc}") from exc


def native_options(s: Settings) -> dict[str, Any] | None:
    """Backend options of the codec's own rate control: rc-mode 2 (bitrate) or 3 (CRF); else None."""
    if s.rc_mode == 3:
        return {"crf": s.crf}
    if s.rc_mode == 2:
        assert s.bitrate is not None
        return {"bitrate_kbps": s.bitrate}
    return None


def layer_offsets(codec: Codec, base_qp: int) -> list[int]:
    """The codec's temporal-layer QP offsets at `base_qp`.

    codec.py's interface has no argument, but the SVT-AV1 backend's offsets depend on the base
    QP (optional `base_qp` argument); passing it keeps the frame QPs what SVT itself would use.
    """
    if "base_qp" in inspect.signature(codec.layer_qp_offsets).parameters:
        return codec.layer_qp_offsets(base_qp)  # type: ignore[call-arg]
    return codec.layer_qp_offsets()


def scaled_offsets(offsets: list[int], scale: float) -> list[int]:
    """Layer QP offsets (<= 0) times `scale`, each magnitude rounded half up: a deeper (> 1) or flatter
    (< 1) hierarchy than the codec's own. scale 1 returns them unchanged."""
    return [-math.floor(-o * scale + 0.5) for o in offsets]


def frame_qps(codec: Codec, base_qp: int, mg: MiniGop, layer_scale: float = 1.0) -> list[int]:
    """Per-frame QPs of a mini-GOP at `base_qp`: layer / key offsets, clamped to the codec's range.

    layer_scale: the temporal layers' offsets times this (scaled_offsets); the key frame's is kept.
    """
    offsets = scaled_offsets(layer_offsets(codec, base_qp), layer_scale)
    qps = []
    for pos in range(mg.count):
        if pos == 0 and mg.key_first:
            q = base_qp + codec.key_qp_offset(base_qp)
        else:
            q = base_qp + offsets[codec.temporal_layer(pos)]
        qps.append(min(max(q, codec.qp_min), codec.qp_max))
    return qps


def codec_inputs(job: Job) -> dict[str, Any]:
    """What the backend needs besides the frames. vp9: libvpx's external rate control lives in
    libvpx's second pass, so libvpx's own first pass runs once per job (~1000 fps at 176x144) and
    every encode of the job opens libvpx's second pass on its statistics. It always runs at the
    first-pass preset, so that pass 2 from a stat file sees the same statistics as pass 1 did."""
    if job.settings.codec != "vp9":
        return {}
    if job.vpx_first_pass is None:
        from builtin_encoder.codec_vp9 import libvpx_first_pass

        try:
            cfg = job.codec_config(CODEC_RC["vp9"].first_pass_preset, Measure.NONE)
            job.vpx_first_pass = libvpx_first_pass(cfg, pass_frames(job, keep=True))
        except EncoderError:
            raise
        except Exception as exc:
            raise CodecFailure(f"libvpx's first pass failed: {exc}") from exc
    return {"twopass_stats": job.vpx_first_pass}


def codec_analysis(codec: Codec, index: int, frame: YuvFrame) -> FrameAnalysis | None:
    """Frame `index`'s first-pass statistics from the codec's own first pass (vp9: libvpx's), if it has one."""
    first_pass = getattr(codec, "first_pass", None)
    if not first_pass or index >= len(first_pass):
        return None
    from builtin_encoder.codec_vp9 import frame_analysis

    return frame_analysis(first_pass[index], noise_sigma(frame.y))


def _content_features(y: np.ndarray, prev_y: np.ndarray | None) -> tuple[float, float]:
    """(luma variance, mean |Y - Y_prev|) of a frame, 8-bit scale; cheap complexity features."""
    var = float(y.var(dtype=np.float64))
    if prev_y is None:
        return var, 0.0
    sad = float(np.abs(y.astype(np.int16) - prev_y.astype(np.int16)).mean(dtype=np.float64))
    return var, sad


def analysis_fields(a: FrameAnalysis) -> dict[str, float]:
    """A FrameAnalysis as FrameStat keyword arguments, rounded for the stat file."""
    return {name: round(value, 4) for name, value in asdict(a).items()}


def first_pass_message(stats: list[FrameStat], frames: range) -> protocol.FirstPass:
    """The request's `first_pass` field for display frames `frames`, from pass-1 stats.

    `propagation` is left out (None) unless every frame has one: VP9 (libvpx's first pass has no
    blocks) and stat files from before version 3 have none.
    """
    names = [f.name for f in fields(protocol.FirstPass) if f.name != "propagation"]
    message = protocol.FirstPass(**{name: [getattr(stats[i], name) for i in frames] for name in names})
    prop = [stats[i].propagation for i in frames]
    if all(p is not None for p in prop):
        message.propagation = prop
    return message


def gop_frame_count(layout: list[MiniGop], gop: int) -> int:
    """Frames in GOP `gop` of the layout."""
    return sum(m.count for m in layout if m.gop == gop)


def add_propagation(stats: list[FrameStat], blocks: list[BlockCosts]) -> None:
    """Sets `propagation` (analysis.propagation, rounded as the stat file rounds) on the last len(blocks)
    stats: one whole GOP's frames, in display order, with their per-block analysis."""
    first = len(stats) - len(blocks)
    for i, p in enumerate(propagation(blocks)):
        stats[first + i].propagation = round(p, 4)


# ----------------------------------------------------------------------------- the agent


class AgentClient:
    """The encoder's side of rl_io: writes requests / feedback / end, waits for replies."""

    def __init__(self, rl_dir: Path, session: str, timeout_s: float) -> None:
        self.rl_dir = Path(rl_dir)
        self.session = session
        self.timeout_s = timeout_s
        try:
            # Created 0700; refused if it belongs to another user or group/others may write to it.
            protocol.prepare_rl_dir(self.rl_dir)
        except protocol.RlDirError as exc:
            raise BadInput(str(exc)) from None
        # Stale files of an earlier encode must never be taken for this one's.
        protocol.clear_protocol_files(self.rl_dir)
        # Watch before the first request is written, so no reply event can be missed.
        self.watcher = protocol.DirWatcher(self.rl_dir)
        self.wait_s = 0.0  # seconds spent waiting for replies

    def ask(self, req: protocol.Request) -> int:
        """Writes request `req`, waits for its reply, returns the agent's QP (validated, never clamped)."""
        self._write(protocol.request_path(self.rl_dir, req.mg_index), req)
        path = protocol.reply_path(self.rl_dir, req.mg_index)
        t0 = time.monotonic()
        try:
            # A link, a non-regular or an oversized file at `path` is a ProtocolError (a bad reply).
            text = protocol.read_when_present(path, self.watcher, t0 + self.timeout_s)
            self.wait_s += time.monotonic() - t0
            if text is None:
                raise ReplyTimeout(f"{path}: no reply within --rl-timeout {self.timeout_s:g} s (field 'qp' never came)")
            reply = protocol.parse_reply(text, path, req.qp_min, req.qp_max)
        except protocol.ProtocolError as exc:
            raise BadReply(str(exc)) from None
        if reply.mg_index is not None and reply.mg_index != req.mg_index:
            raise BadReply(f"{path}: field 'mg_index' is {reply.mg_index}, expected {req.mg_index}")
        if reply.session is not None and reply.session != self.session:
            raise BadReply(f"{path}: field 'session' is {reply.session!r}, this encode is {self.session!r}")
        return reply.qp

    def feedback(self, fb: protocol.Feedback) -> None:
        self._write(protocol.feedback_path(self.rl_dir, fb.mg_index), fb)

    def _write(self, path: Path, msg: object) -> None:
        """Writes one message; a failure (e.g. something planted at the temporary's name) is BadInput."""
        try:
            protocol.write_message(path, msg)
        except OSError as exc:
            raise BadInput(f"--rl-dir: cannot write {path}: {exc}") from None

    def end(self, end: protocol.End) -> None:
        if len(end.message) > 16384:  # keeps end.json far below protocol.MAX_FILE_BYTES
            end.message = end.message[:16384] + " [...]"
        try:
            protocol.write_message(protocol.end_path(self.rl_dir), end)
        except OSError as exc:  # the directory vanished: nobody is left to tell
            print(f"builtin_encoder: cannot write {protocol.end_path(self.rl_dir)}: {exc}", file=sys.stderr)

    def close(self) -> None:
        self.watcher.close()


# ----------------------------------------------------------------------------- one encode pass


@dataclass
class PassResult:
    """What one pass produced: per-frame stats (for stat files) and totals."""

    frame_stats: list[FrameStat]
    totals: Totals
    seconds: float  # wall time of the pass, agent waits included
    agent_wait_s: float = 0.0
    measure: Measure = Measure.SSIM  # the distortion measured (less: the totals' quality sums are meaningless)


@dataclass
class Job:
    """The resolved parameters of an encode (after reading the input)."""

    settings: Settings
    source: FrameSource
    frames: int
    fps: float
    layout: list[MiniGop]
    kept: list[YuvFrame] | None = None  # the input frames as the in-memory pass 1 decoded them (see pass_frames)
    vpx_first_pass: bytes | None = None  # vp9: libvpx's first-pass statistics of the input (codec_inputs)

    @property
    def luma(self) -> int:
        return self.source.width * self.source.height

    def codec_config(self, preset: int, measure: Measure = Measure.SSIM) -> CodecConfig:
        s = self.settings
        threads = s.threads
        if threads == 0 and s.codec == "x264":
            # x264 codes one slice per thread, so x264's "auto" would make the bitstream depend on
            # the machine's cores. One thread also lets x264 measure PSNR/SSIM itself; with
            # --threads N > 1 each frame is decoded and measured instead (codec_x264.X264Codec).
            threads = X264_DEFAULT_THREADS
        return CodecConfig(self.source.width, self.source.height, self.fps, s.keyint, s.mini_gop, preset, threads,
                           measure)  # fmt: skip

    def stat_header(self, pass_no: int, preset: int) -> StatHeader:
        s = self.settings
        return StatHeader(s.codec, self.source.width, self.source.height, self.frames, self.fps, s.keyint,
                          s.mini_gop, pass_no, preset)  # fmt: skip


def pass_frames(job: Job, keep: bool = False) -> Iterator[YuvFrame]:
    """The frames a pass codes: those an earlier pass kept (complete), else decoded from the input.

    `keep` (the in-memory pass 1): keep the decoded frames for the next pass when they take at
    most KEEP_FRAMES_BYTES, which saves decoding the input twice (~1 ms per 640x272 frame).
    """
    if job.kept is not None and len(job.kept) == job.frames:
        return iter(job.kept)
    frames = job.source.frames(job.frames)
    if not keep or job.frames * frame_bytes_420(job.source.width, job.source.height) > KEEP_FRAMES_BYTES:
        return frames
    job.kept = []
    return _tee(frames, job.kept)


def _tee(frames: Iterator[YuvFrame], into: list[YuvFrame]) -> Iterator[YuvFrame]:
    for frame in frames:
        into.append(frame)
        yield frame


def _mini_gops(frames: Iterator[YuvFrame], layout: list[MiniGop]) -> Iterator[tuple[MiniGop, list[YuvFrame]]]:
    for mg in layout:
        chunk = list(itertools.islice(frames, mg.count))
        if len(chunk) != mg.count:
            raise BadInput(f"--input ended early: got {mg.first + len(chunk)} frames, expected more")
        yield mg, chunk


def _with_gops(mini_gops: Iterator[tuple[MiniGop, list[YuvFrame]]]) -> Iterator[tuple[MiniGop, list[YuvFrame], Gop]]:
    """Each mini-GOP with its frames and, at its GOP's first, the whole GOP (its frames read ahead: the key
    probe codes them before the first request); [] at the others."""
    gop: Gop = []
    for mg, chunk in mini_gops:
        gop.append((mg, chunk))
        if mg.gop_end:
            yield from ((m, c, gop if k == 0 else []) for k, (m, c) in enumerate(gop))
            gop = []
    yield from ((m, c, gop if k == 0 else []) for k, (m, c) in enumerate(gop))


def _probe(job: Job, rc: RateController, gop: Gop, scratch: Path,
           preset: int) -> tuple[protocol.KeyProbe, protocol.KeyProbe | None]:  # fmt: skip
    """The key and ramp probes of `gop` (key_probe.py): four encodes (five with --probe-zero) at the pass's
    `preset`, nothing of them kept."""
    s = job.settings
    cfg = job.codec_config(preset, Measure.SSE)
    inputs = codec_inputs(job)

    def qps(codec: Codec, qp: int, mg: MiniGop) -> list[int]:
        return frame_qps(codec, qp, mg, s.layer_offset_scale)

    codec_qp_max = _codec_qp_range(s.codec)[1]
    return key_probe(lambda out: open_codec(s.codec, cfg, out, None, inputs), scratch, rc, gop, qps, job.luma,
                     max(1.0, codec_qp_max / 63.0), s.probe_zero)  # fmt: skip


def encode_pass(
    job: Job,
    *,
    preset: int,
    rc: RateController | FirstPassController,
    totals: Totals,
    out_path: Path,
    agent: AgentClient | None = None,
    csv_file: TextIO | None = None,
    collect_features: bool = False,
    native: dict[str, Any] | None = None,
    measure: Measure = Measure.SSIM,
    keep_frames: bool = False,
    first_pass: list[FrameStat] | None = None,
) -> PassResult:
    """Codes the whole input once: base QP from `rc` (or the agent), stats into CSV / feedback.

    With `native` (rc-modes 2/3) the codec chooses every frame's QP itself; the QPs passed to it
    are then ignored, and base_qp is recorded as -1. `measure`: the distortion the codec
    measures per frame; the CSV and the agent's feedback need Measure.SSIM. `keep_frames`: keep
    the decoded input for the next pass (see pass_frames). `collect_features`: analyse every
    frame (analysis.py) into the returned stats. `first_pass`: pass-1 stats whose analysis goes
    into the agent's requests.
    """
    s = job.settings
    if measure < Measure.SSIM and (csv_file is not None or agent is not None):
        raise ValueError("the CSV and the agent's feedback need every distortion measure (Measure.SSIM)")
    t0 = time.monotonic()
    inputs = codec_inputs(job)
    codec = open_codec(s.codec, job.codec_config(preset, measure), out_path, native, inputs)
    out_stats: list[FrameStat] = []
    writer = csv.writer(csv_file) if csv_file is not None else None
    if writer is not None:
        writer.writerow(CSV_COLUMNS)
    prev_y: np.ndarray | None = None
    analyzer = Analyzer() if collect_features else None
    gop_blocks: list[BlockCosts] = []  # this GOP's per-block analysis so far, for its propagation
    luma, chroma = job.luma, job.luma // 4
    probing = agent is not None and s.key_probe
    mini_gops = _mini_gops(pass_frames(job, keep_frames), job.layout)
    items = _with_gops(mini_gops) if probing else ((mg, chunk, []) for mg, chunk in mini_gops)
    probe_dir = tempfile.TemporaryDirectory(prefix="builtin_encoder.probe.") if probing else None
    try:
        ramp: protocol.KeyProbe | None = None  # this GOP's ramp probe, for its mini-GOPs in key_probe.RAMP
        for mg, frames, gop in items:
            probe = None
            if gop:  # probing, at a GOP's first mini-GOP
                assert isinstance(rc, RateController) and probe_dir is not None
                try:
                    probe, ramp = _probe(job, rc, gop, Path(probe_dir.name), preset)
                except EncoderError:
                    raise
                except Exception as exc:
                    raise CodecFailure(f"codec {s.codec} failed in the probes of GOP {mg.gop}: {exc}") from exc
            base_qp = rc.base_qp(mg)
            gop_budget = rc.gop_budget(mg)
            qp = base_qp
            if agent is not None:
                assert isinstance(rc, RateController)  # pass 1 never talks to the agent
                in_ramp = ramp if mg.in_gop in RAMP else None  # the mini-GOPs the ramp probe moved
                qp = agent.ask(_request(job, rc, codec, mg, base_qp, gop_budget, agent.session, first_pass, probe,
                                        in_ramp))  # fmt: skip
            qps = frame_qps(codec, qp, mg, s.layer_offset_scale)
            try:
                stats = codec.encode(frames, qps, key_first=mg.key_first)
            except EncoderError:  # Interrupted (SIGTERM) arrives inside the codec call
                raise
            except CodecStall as exc:
                raise CodecStalled(f"codec {s.codec} hung on mini-GOP {mg.index} (frames {mg.first}..): {exc}") from exc
            except Exception as exc:
                raise CodecFailure(
                    f"codec {s.codec} failed on mini-GOP {mg.index} (frames {mg.first}..): {exc}"
                ) from exc
            if len(stats) != mg.count:
                raise CodecFailure(f"codec {s.codec} returned {len(stats)} frame stats for {mg.count} frames")
            rc.update(mg, [st.bits for st in stats], qp)
            totals.add(stats, luma)
            if native:
                qp = -1
            for pos, (st, frame) in enumerate(zip(stats, frames, strict=True)):
                index = mg.first + pos
                var, sad = _content_features(frame.y, prev_y) if collect_features else (0.0, 0.0)
                analysis = {}
                if collect_features:
                    own = codec_analysis(codec, index, frame)
                    if own is None:  # our own analysis, with the blocks propagation needs
                        own = analyzer.add(frame.y)
                        gop_blocks.append(analyzer.blocks)
                    analysis = analysis_fields(own)
                prev_y = frame.y
                out_stats.append(FrameStat(index, mg.index, mg.gop, st.frame_type, st.temporal_layer, qp, st.qp,
                                           st.bits, round(var, 3), round(sad, 4), **analysis))  # fmt: skip
                if writer is not None:
                    writer.writerow([
                        index, mg.index, mg.gop, st.frame_type, st.temporal_layer, qp, st.qp, st.bits,
                        f"{psnr_from_mse(st.sse_y / luma):.4f}", f"{psnr_from_mse(st.sse_u / chroma):.4f}",
                        f"{psnr_from_mse(st.sse_v / chroma):.4f}", f"{st.ssim_y:.6f}",
                    ])  # fmt: skip
            if collect_features and mg.gop_end:
                if len(gop_blocks) == gop_frame_count(job.layout, mg.gop):
                    add_propagation(out_stats, gop_blocks)
                gop_blocks = []
            if agent is not None:
                agent.feedback(_feedback(job, mg, qp, stats, agent.session))
        try:
            codec.close()
        except EncoderError:
            raise
        except Exception as exc:
            raise CodecFailure(f"codec {s.codec} failed to finish {out_path}: {exc}") from exc
    finally:
        # Idempotent in the backends; on the error path it frees the codec, and a second error
        # would hide the first one, which is the one to report.
        with contextlib.suppress(Exception):
            codec.close()
        if probe_dir is not None:
            probe_dir.cleanup()
    return PassResult(out_stats, totals, time.monotonic() - t0, agent.wait_s if agent else 0.0, measure)


def _request(job: Job, rc: RateController, codec: Codec, mg: MiniGop, base_qp: int, gop_budget: int,
             session: str, first_pass: list[FrameStat] | None,
             probe: protocol.KeyProbe | None = None,
             ramp: protocol.KeyProbe | None = None) -> protocol.Request:  # fmt: skip
    s = job.settings
    nxt = job.layout[mg.index + 1 : mg.index + 1 + s.lookahead]
    seen = range(mg.first, (nxt[-1] if nxt else mg).first + (nxt[-1] if nxt else mg).count)
    gop_frames = gop_frame_count(job.layout, mg.gop)
    assert rc.total_budget is not None
    return protocol.Request(
        mg_index=mg.index,
        gop_index=mg.gop,
        mg_in_gop=mg.in_gop,
        mgs_in_gop=mg.gop_size,
        gop_frames=gop_frames,
        first_frame=mg.first,
        frame_count=mg.count,
        frame_types=["KEY" if pos == 0 and mg.key_first else "INTER" for pos in range(mg.count)],
        temporal_layers=[0 if pos == 0 and mg.key_first else codec.temporal_layer(pos) for pos in range(mg.count)],
        base_qp=base_qp,
        qp_min=codec.qp_min,
        qp_max=codec.qp_max,
        fp_bpp=rc.fp_bpp(mg),
        lookahead_fp_bpp=[rc.fp_bpp(m) for m in nxt],
        gop_bits_spent=rc.gop_spent,
        gop_bits_budget=gop_budget,
        total_bits_spent=rc.total_spent,
        total_bits_budget=rc.total_budget,
        target_kbps=s.bitrate if s.bitrate else rc.total_budget * job.fps / job.frames / 1000.0,
        fps=job.fps,
        width=job.source.width,
        height=job.source.height,
        total_frames=job.frames,
        codec=s.codec,
        session=session,
        qp_scale_max=codec.qp_max,
        first_pass=first_pass_message(first_pass, seen) if first_pass else None,
        key_probe=probe,
        ramp_probe=ramp,
    )


def _feedback(job: Job, mg: MiniGop, qp: int, stats: list[FrameStats], session: str) -> protocol.Feedback:
    n = len(stats)
    luma, chroma = job.luma, job.luma // 4
    mse_y = sum(st.sse_y for st in stats) / (n * luma)
    mse_u = sum(st.sse_u for st in stats) / (n * chroma)
    mse_v = sum(st.sse_v for st in stats) / (n * chroma)
    return protocol.Feedback(
        mg_index=mg.index,
        gop_index=mg.gop,
        frame_count=n,
        bits=sum(st.bits for st in stats),
        qp_used=qp,
        frame_qps=[st.qp for st in stats],
        frame_bits=[st.bits for st in stats],
        mse_y=mse_y,
        mse_u=mse_u,
        mse_v=mse_v,
        psnr_y=psnr_from_mse(mse_y),
        psnr_u=psnr_from_mse(mse_u),
        psnr_v=psnr_from_mse(mse_v),
        psnr_y_frame_mean=sum(psnr_from_mse(st.sse_y / luma) for st in stats) / n,
        ssim_y=min(max(sum(st.ssim_y for st in stats) / n, 0.0), 1.0),
        gop_end=1 if mg.gop_end else 0,
        session=session,
    )


# ----------------------------------------------------------------------------- the program


def _prepare(s: Settings) -> Job:
    """Validates settings that need the input, opens it and resolves frames / fps / layout."""
    source = open_source(s.input, s.input_res, max(s.frames, 0))
    for warning in source.warnings:
        print(f"builtin_encoder: warning: {warning}", file=sys.stderr)
    if s.frames < 0:
        raise BadInput(f"--frames must be >= 0 (got {s.frames})")
    if s.frames > source.frame_count:
        raise BadInput(f"--frames {s.frames} exceeds the {source.frame_count} frames of {source.path}")
    frames = s.frames or source.frame_count
    fps = s.fps if s.fps is not None else (source.fps or 30.0)
    return Job(s, source, frames, fps, build_layout(frames, s.keyint, s.mini_gop))


def _first_pass(job: Job, totals: Totals, out_path: Path, csv_file: TextIO | None = None,
                stat_file: bool = False) -> PassResult:  # fmt: skip
    """Pass 1: the codec's fast preset, a constant QP steered towards the target (FirstPassController).

    Only the bits and the content analysis (analysis.py) are used, so the codec measures no
    distortion unless a CSV asks for it. Without a `stat_file` (pass 1 in memory) the decoded
    frames are kept for the final pass.
    """
    s = job.settings
    params = CODEC_RC[s.codec]
    qp_min, qp_max = _codec_qp_range(s.codec)
    budget = round(s.bitrate * 1000.0 * job.frames / job.fps) if s.bitrate else None
    rc = FirstPassController(layout=job.layout, params=params, qp_min=qp_min, qp_max=qp_max, total_budget=budget)
    measure = Measure.SSIM if csv_file is not None else Measure.NONE
    return encode_pass(job, preset=params.first_pass_preset, rc=rc, totals=totals, out_path=out_path,
                       csv_file=csv_file, collect_features=True, measure=measure,
                       keep_frames=not stat_file)  # fmt: skip


def _codec_qp_range(name: str) -> tuple[int, int]:
    """The QP range of backend `name`, read from its class without starting a codec."""
    if name == "svtav1":
        from builtin_encoder.codec_svtav1 import SvtAv1Codec as cls
    elif name == "vp9":
        from builtin_encoder.vp9_qindex import QP_MAX, QP_MIN

        return QP_MIN, QP_MAX
    else:
        from builtin_encoder.codec_x264 import X264Codec as cls  # type: ignore[assignment]
    return int(cls.qp_min), int(cls.qp_max)


def _load_stats(job: Job, path: Path) -> tuple[list[FrameStat], bool]:
    """(stats, whether they carry the first-pass analysis) of --stat-in file `path`."""
    header, stats = read_stats(path)
    check_stats_match(path, header, job.stat_header(1, 0))
    if not header.analysed:
        print(f"builtin_encoder: warning: --stat-in {path} is a version 1 stat file without first-pass analysis: "
              "requests carry no first_pass field; run --pass 1 again to add it", file=sys.stderr)  # fmt: skip
    return stats, header.analysed


def _quality(job: Job, res: PassResult) -> dict[str, float | None]:
    """The summary's PSNR / SSIM fields; None where the pass did not measure them (Measure)."""
    t = res.totals
    luma, chroma = job.luma * t.frames, job.luma // 4 * t.frames
    sse = res.measure >= Measure.SSE
    return {
        "psnr_y": psnr_from_mse(t.sse[0] / luma) if sse else None,
        "psnr_u": psnr_from_mse(t.sse[1] / chroma) if sse else None,
        "psnr_v": psnr_from_mse(t.sse[2] / chroma) if sse else None,
        "psnr_y_frame_mean": t.psnr_y_frames / t.frames if sse else None,
        "ssim_y": t.ssim_y / t.frames if res.measure >= Measure.SSIM else None,
    }


def _summary(job: Job, res: PassResult, target_kbps: float | None, out_path: Path | None, pass1_s: float) -> dict:
    t = res.totals
    s = job.settings
    duration = t.frames / job.fps
    kbps = t.bits / duration / 1000.0
    file_kbps = None
    if out_path is not None and out_path.exists():
        file_kbps = out_path.stat().st_size * 8 / duration / 1000.0
    return {
        "input": str(job.source.path),
        "codec": s.codec,
        "rc_mode": s.rc_mode,
        "frames": t.frames,
        "mini_gops": t.mini_gops,
        "width": job.source.width,
        "height": job.source.height,
        "fps": job.fps,
        "bits": t.bits,
        "kbps": kbps,
        "file_kbps": file_kbps,
        "target_kbps": target_kbps,
        "error_pct": (kbps / target_kbps - 1.0) * 100.0 if target_kbps else None,
        **_quality(job, res),
        "encode_fps": t.frames / res.seconds if res.seconds > 0 else math.inf,
        "encode_s": res.seconds,
        "agent_wait_s": res.agent_wait_s,
        "pass1_s": pass1_s,
    }


def summary_line(d: dict) -> str:
    """The one-line summary printed at the end (and put into end.json's message)."""
    target = f"{d['target_kbps']:.2f}" if d["target_kbps"] else "none"
    err = f"{d['error_pct']:+.2f}%" if d["error_pct"] is not None else "n/a"
    psnr = f"{d['psnr_y']:.3f}dB" if d["psnr_y"] is not None else "n/a"  # None: not measured (pass 1)
    ssim = f"{d['ssim_y']:.5f}" if d["ssim_y"] is not None else "n/a"
    return (
        f"{d['codec']} frames={d['frames']} kbps={d['kbps']:.2f} target={target} error={err} "
        f"psnr_y={psnr} ssim_y={ssim} fps={d['encode_fps']:.1f}"
    )


def _handle_signal(signum: int, _frame: Any) -> None:
    raise Interrupted(f"stopped by signal {signal.Signals(signum).name}")


class Program:
    """One run of the encoder program. Keeps the running totals so that end.json is truthful on errors."""

    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.agent: AgentClient | None = None
        self.totals = Totals()  # of the final pass (pass 1 in memory does not count)

    def run(self) -> int:
        """Runs the encode; returns the exit code. Writes end.json whenever --rl-dir is in use."""
        s = self.s
        old_term = signal.signal(signal.SIGTERM, _handle_signal)
        status, message, code = "ok", "", 0
        summary: dict[str, Any] = {}
        try:
            if s.rl_dir is not None and s.pass_no == 1:
                # Pass 1 is a fixed-QP run: no agent. The directory is left alone, so a pass 1
                # run beside a live pass 2 cannot clear that encode's files.
                print("builtin_encoder: --rl-dir is not used in --pass 1", file=sys.stderr)
            if s.rl_dir is not None and s.pass_no != 1 and s.rc_mode in (0, 1):
                self.agent = AgentClient(Path(s.rl_dir), s.rl_session, s.rl_timeout)
            summary = self._run()
            message = summary_line(summary)
        except EncoderError as exc:
            status, message, code = "error", str(exc), exc.exit_code
        except KeyboardInterrupt:
            status, message, code = "error", "stopped by SIGINT", Interrupted.exit_code
        except Exception as exc:  # a bug: still tell the agent, then show the traceback
            status, message, code = "error", f"internal error: {type(exc).__name__}: {exc}", 1
            traceback.print_exc()
        finally:
            signal.signal(signal.SIGTERM, old_term)
        if status != "ok" or not s.quiet:
            print(message if status == "ok" else f"builtin_encoder: error: {message}", file=sys.stderr)
        if s.summary_json:
            data = {"status": status, "message": message, **summary}
            try:
                protocol.write_atomic(Path(s.summary_json), json.dumps(data, indent=1) + "\n", mode=0o666)
            except OSError as exc:
                print(f"builtin_encoder: cannot write --summary-json {s.summary_json}: {exc}", file=sys.stderr)
        if self.agent is not None:
            t = self.totals
            end = protocol.End(status=status, mini_gops=t.mini_gops, frames=t.frames, bits=t.bits,
                               message=message, session=s.rl_session)  # fmt: skip
            self.agent.end(end)
            self.agent.close()
        return code

    def _run(self) -> dict[str, Any]:
        s = self.s
        job = _prepare(s)
        params = CODEC_RC[s.codec]
        preset = s.preset if s.preset is not None else DEFAULT_PRESET[s.codec]
        out_path = Path(s.out) if s.out else None
        ext = ".264" if s.codec == "x264" else ".ivf"
        with tempfile.TemporaryDirectory(prefix="builtin_encoder.") as tmp, _open_csv(s.csv) as csv_file:
            scratch = Path(tmp) / f"pass1{ext}"
            if s.pass_no == 1:
                assert s.stat_out is not None  # cli.py checks
                res = _first_pass(job, self.totals, out_path or scratch, csv_file, stat_file=True)
                _write_stats(Path(s.stat_out), job.stat_header(1, params.first_pass_preset), res.frame_stats)
                return _summary(job, res, None, out_path, 0.0)

            native = native_options(s)
            if native is not None:
                # rc-modes 2/3: the codec's own rate control, no stats, no agent.
                qp_min, qp_max = _codec_qp_range(s.codec)
                res = self._native_pass(job, preset, native, out_path or scratch, csv_file)
                if s.stat_out:
                    _write_stats(Path(s.stat_out), job.stat_header(2, preset), res.frame_stats)
                return _summary(job, res, s.bitrate if s.rc_mode == 2 else None, out_path, 0.0)

            # Pass 2 (or the single command): stats come from --stat-in or from pass 1 run here.
            stats: list[FrameStat] | None = None
            analysed = True
            pass1_s = 0.0
            if s.stat_in:
                stats, analysed = _load_stats(job, Path(s.stat_in))
            elif s.rc_mode == 1 or self.agent is not None:
                p1 = _first_pass(job, Totals(), scratch)
                stats, pass1_s = p1.frame_stats, p1.seconds
            qp_min, qp_max = _codec_qp_range(s.codec)
            total_budget = round(s.bitrate * 1000.0 * job.frames / job.fps) if s.bitrate else None
            rc = RateController(
                layout=job.layout,
                params=params,
                qp_min=qp_min,
                qp_max=qp_max,
                total_budget=total_budget,
                stats=stats,
                fixed_qp=s.qp if s.rc_mode == 0 else None,
                luma_pixels=job.luma,
            )
            res = encode_pass(
                job,
                preset=preset,
                rc=rc,
                totals=self.totals,
                out_path=out_path or Path(tmp) / f"out{ext}",
                agent=self.agent,
                csv_file=csv_file,
                collect_features=bool(s.stat_out),
                first_pass=stats if analysed else None,
            )
            if s.stat_out:
                _write_stats(Path(s.stat_out), job.stat_header(2, preset), res.frame_stats)
            return _summary(job, res, s.bitrate or None, out_path, pass1_s)


    def _native_pass(self, job: Job, preset: int, native: dict[str, Any], out_path: Path,
                     csv_file: TextIO | None) -> PassResult:  # fmt: skip
        """The codec's own rate control over the whole input; run once more from the start if the codec hangs
        (a hang there cannot be repaired mid-stream: the rate control's state is the codec's)."""
        s = self.s
        params = CODEC_RC[s.codec]
        qp_min, qp_max = _codec_qp_range(s.codec)
        for attempt in range(2):
            rc = RateController(layout=job.layout, params=params, qp_min=qp_min, qp_max=qp_max,
                                total_budget=None, stats=None, fixed_qp=(qp_min + qp_max) // 2)  # fmt: skip
            try:
                return encode_pass(job, preset=preset, rc=rc, totals=self.totals, out_path=out_path,
                                   csv_file=csv_file, collect_features=bool(s.stat_out), native=native)  # fmt: skip
            except CodecStalled as exc:
                if attempt == 1:
                    raise
                print(f"builtin_encoder: warning: {exc}; the encode starts again", file=sys.stderr)
                self.totals = Totals()
                if csv_file is not None:
                    csv_file.seek(0)
                    csv_file.truncate()
        raise AssertionError("unreachable")


def _write_stats(path: Path, header: StatHeader, frames: list[FrameStat]) -> None:
    try:
        write_stats(path, header, frames)
    except OSError as exc:
        raise BadInput(f"--stat-out: cannot write {path}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _open_csv(path: str | None) -> Iterator[TextIO | None]:
    if not path:
        yield None
        return
    try:
        fh = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 -- closed below
    except OSError as exc:
        raise BadInput(f"--csv: cannot write {path}: {exc.strerror or exc}") from None
    try:
        yield fh
    finally:
        fh.close()


def run(settings: Settings) -> int:
    """Runs the encoder program; returns the process exit code (see errors.py)."""
    return Program(settings).run()
