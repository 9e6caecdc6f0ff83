"""Tests of the VP9 backend (libvpx's external rate control) against the real library, FFmpeg's VP9
decoder and a VP9 frame-header parser (tests/vp9_header.py)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from builtin_encoder.codec import CodecConfig, FrameStats, Measure, YuvFrame
from builtin_encoder.codec_vp9 import Vp9Codec, Vp9Error, frame_analysis, libvpx_first_pass
from builtin_encoder.source import open_source
from builtin_encoder.vp9_qindex import AC_QSTEP, qindex_for_quantizer, qstep_level, quantizer_for_qindex
from clips import bundled_clip
from tests.vp9_header import base_q_indices, decoder_q_indices, parse_packet, read_ivf

ROOT = Path(__file__).resolve().parent.parent


def _frames(name: str, count: int) -> list[YuvFrame]:
    return list(open_source(bundled_clip(name), None).frames(count))


def _cfg(frames: list[YuvFrame], keyint: int = 16, preset: int = 5, measure: Measure = Measure.SSIM) -> CodecConfig:
    h, w = frames[0].y.shape
    return CodecConfig(w, h, 30.0, keyint, 8, preset, 1, measure)


def _encode(path: Path, frames: list[YuvFrame], qps: list[int], cfg: CodecConfig, **kw: object) -> list[FrameStats]:
    """Codes `frames` in mini-GOPs of 8 at per-frame `qps`, a key frame every cfg.keyint frames."""
    stats: list[FrameStats] = []
    with Vp9Codec(cfg, path, twopass_stats=libvpx_first_pass(cfg, frames), **kw) as codec:  # type: ignore[arg-type]
        for i in range(0, len(frames), 8):
            stats += codec.encode(frames[i : i + 8], qps[i : i + 8], key_first=i % cfg.keyint == 0)
    return stats


def _decode_luma(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="yuv420p")[: f.height] for f in container.decode(video=0)]


def _psnr(sse: float, pixels: int) -> float:
    return 10 * math.log10(255.0**2 * pixels / sse)


def test_forced_q_index_is_in_the_bitstream_and_stats_are_the_decoders(tmp_path: Path) -> None:
    frames = _frames("carphone_pristine.mp4", 24)
    cfg = _cfg(frames)
    qps = [60] * 8 + [200] * 8 + [120] * 8
    qps[0], qps[16] = 41, 98  # key frames at the GOP starts, finer as key_qp_offset makes them
    out = tmp_path / "a.ivf"
    stats = _encode(out, frames, qps, cfg)

    assert [s.index for s in stats] == list(range(24))
    assert [s.qp for s in stats] == qps
    assert [s.frame_type for s in stats] == ["KEY" if i in (0, 16) else "INTER" for i in range(24)]
    assert sum(s.bits for s in stats) == 8 * sum(len(p) for p in read_ivf(out))
    # The answered q_index is the one each frame header carries; key frames exactly at GOP starts.
    assert base_q_indices(out) == qps
    assert [h.frame_type for p in read_ivf(out) for h in parse_packet(p)] == [s.frame_type for s in stats]

    assert decoder_q_indices(out) == [(i in (0, 16), q) for i, q in enumerate(qps)]  # FFmpeg's decoder agrees
    decoded = _decode_luma(out)
    assert len(decoded) == 24
    luma = cfg.width * cfg.height
    for i, (y, src, st) in enumerate(zip(decoded, frames, stats, strict=True)):
        sse = float(((y.astype(np.int64) - src.y) ** 2).sum())
        assert abs(_psnr(sse, luma) - _psnr(st.sse_y, luma)) < 0.05, f"frame {i}"
        assert 0.5 < st.ssim_y <= 1.0
    bits = [sum(s.bits for s in stats[g * 8 + 1 : g * 8 + 8]) for g in range(3)]
    assert bits[0] > bits[2] > bits[1]  # q 60 > q 120 > q 200


def test_key_offset_and_q_scale() -> None:
    frames = _frames("carphone_pristine.mp4", 8)
    codec = Vp9Codec(_cfg(frames), Path("/dev/null"), twopass_stats=libvpx_first_pass(_cfg(frames), frames))
    try:
        for base in (20, 60, 120, 200, 255):
            key = base + codec.key_qp_offset(base)
            assert key < base
            # The key frame's quantiser step is ~1.40x finer (x264's I/P ratio).
            assert AC_QSTEP[base] / AC_QSTEP[key] == pytest.approx(1.40, rel=0.06)
        assert codec.layer_qp_offsets() == [0] and codec.temporal_layer(5) == 0
        assert (codec.qp_min, codec.qp_max) == (0, 255)
    finally:
        codec.close()
    assert qstep_level(0) == pytest.approx(12.0) and qstep_level(255) == pytest.approx(6 * math.log2(1828))
    assert all(qstep_level(q + 0.5) < qstep_level(q + 1) for q in range(255))
    assert [qindex_for_quantizer(q) for q in (0, 1, 61, 62, 63)] == [0, 4, 244, 249, 255]
    assert all(quantizer_for_qindex(qindex_for_quantizer(q)) == q for q in range(64))


def test_exception_in_a_callback_fails_the_encode_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Python exception must never unwind through libvpx: the encode call fails with its message."""
    frames = _frames("carphone_pristine.mp4", 16)
    cfg = _cfg(frames)
    calls = []
    decide = Vp9Codec._on_decide

    def explode(self: Vp9Codec, model: object, gop_index: int, decision: object) -> None:
        calls.append(gop_index)
        if len(calls) == 3:
            raise RuntimeError("boom in the agent's answer")
        decide(self, model, gop_index, decision)  # type: ignore[arg-type]

    monkeypatch.setattr(Vp9Codec, "_on_decide", explode)
    codec = Vp9Codec(cfg, tmp_path / "b.ivf", twopass_stats=libvpx_first_pass(cfg, frames))
    with pytest.raises(Vp9Error, match=r"frame 2: rate-control callback get_encodeframe_decision failed: "
                                       r"RuntimeError: boom in the agent's answer"):  # fmt: skip
        codec.encode(frames[:8], [100] * 8, key_first=True)
    codec.close()  # still closes cleanly
    assert len(calls) == 3


def test_first_pass_statistics_come_from_libvpx(tmp_path: Path) -> None:
    frames = _frames("carphone_pristine.mp4", 16)
    cfg = _cfg(frames)
    with Vp9Codec(cfg, tmp_path / "c.ivf", twopass_stats=libvpx_first_pass(cfg, frames)) as codec:
        codec.encode(frames[:8], [120] * 8, key_first=True)
        assert len(codec.first_pass) == 16  # every frame's, handed over before the first frame
        fp = codec.first_pass
    # Frame 0 has no reference: libvpx's coded error is its intra error.
    assert fp[0].coded_error == pytest.approx(fp[0].intra_error)
    assert all(f.coded_error < f.intra_error for f in fp[1:])  # a talking head predicts well
    a = frame_analysis(fp[5], 2.0)
    assert 0 < a.inter_cost < a.intra_cost and 0 <= a.motion_share <= a.inter_share <= 1 and a.noise_sigma == 2.0
    assert a.intra_cost == pytest.approx(math.sqrt(2 / math.pi) * math.sqrt(fp[5].intra_error))


def test_libvpx_own_rate_control_modes(tmp_path: Path) -> None:
    """bitrate_kbps: libvpx's 2-pass VBR (the codec_rc baseline); crf: its constant-quality mode."""
    frames = _frames("carphone_pristine.mp4", 48)
    cfg = _cfg(frames, keyint=48)
    vbr = _encode(tmp_path / "vbr.ivf", frames, [0] * 48, cfg, bitrate_kbps=150)
    kbps = sum(s.bits for s in vbr) * 30.0 / 48 / 1000
    assert 0.8 < kbps / 150 < 1.2
    assert len({s.qp for s in vbr}) > 3  # libvpx chose them
    assert base_q_indices(tmp_path / "vbr.ivf") == [s.qp for s in vbr]
    cq = _encode(tmp_path / "cq.ivf", frames, [0] * 48, cfg, crf=120)
    assert sum(s.bits for s in cq) != sum(s.bits for s in vbr)
    assert all(s.sse_y > 0 for s in cq)
    with pytest.raises(ValueError, match="not both"):
        Vp9Codec(cfg, tmp_path / "x.ivf", twopass_stats=b"", bitrate_kbps=100, crf=30)


def test_bad_configuration_is_refused(tmp_path: Path) -> None:
    frames = _frames("carphone_pristine.mp4", 8)
    cfg = _cfg(frames)
    stats = libvpx_first_pass(cfg, frames)
    with pytest.raises(ValueError, match="preset must be 0..5"):
        Vp9Codec(_cfg(frames, preset=9), tmp_path / "a.ivf", twopass_stats=stats)
    with Vp9Codec(cfg, tmp_path / "b.ivf", twopass_stats=stats) as codec, pytest.raises(ValueError, match="300"):
        codec.encode(frames[:1], [300], key_first=True)


def test_encoder_program_pass_files_give_the_same_stream(tmp_path: Path) -> None:
    """vp9 through the encoder program: --pass 1/2 with stat files == the single command; the stat
    file carries libvpx's first-pass statistics; the request's QP scale is q_index."""
    common = [sys.executable, "-m", "builtin_encoder", "--quiet", "--input", bundled_clip("carphone_pristine.mp4"),
              "--codec", "vp9", "--frames", "32", "--keyint", "16", "--bitrate", "150"]  # fmt: skip
    stat = tmp_path / "p1.stat"
    run = subprocess.run  # noqa: S603 -- our own program
    assert run([*common, "--pass", "1", "--stat-out", str(stat)], cwd=ROOT, capture_output=True).returncode == 0
    a = run([*common, "--pass", "2", "--stat-in", str(stat), "--o", str(tmp_path / "a.ivf")], cwd=ROOT,
            capture_output=True, text=True)  # fmt: skip
    assert a.returncode == 0, a.stderr
    b = run([*common, "--o", str(tmp_path / "b.ivf"), "--summary-json", str(tmp_path / "s.json")], cwd=ROOT,
            capture_output=True, text=True)  # fmt: skip
    assert b.returncode == 0, b.stderr
    assert (tmp_path / "a.ivf").read_bytes() == (tmp_path / "b.ivf").read_bytes()
    lines = [json.loads(line) for line in stat.read_text().splitlines()]
    assert lines[0]["codec"] == "vp9" and lines[0]["analysed"]
    assert all(r["intra_cost"] > 0 for r in lines[1:]) and lines[6]["inter_cost"] < lines[6]["intra_cost"]
    assert json.loads((tmp_path / "s.json").read_text())["frames"] == 32
