"""Tests of tests/vp9_header.py against real libvpx-vp9 encodes (PyAV) and FFmpeg's VP9 decoder.

The constant-quantizer encodes check ``base_q_idx`` against libvpx's quantizer -> q_index table;
the rate-controlled encodes check it frame by frame against the ``qp`` that FFmpeg's VP9 decoder
exports (``export_side_data=venc_params``: its ``qp`` is the frame's base_q_idx), which is an
independent reading of the same bits. Header paths the encoder here does not produce (profiles 2
and 3, intra-only frames, explicit inter frame sizes, loop filter delta updates, show_existing_frame,
superframes) are checked with headers built bit by bit.
"""

from __future__ import annotations

from pathlib import Path

import av
import av.sidedata.sidedata
import numpy as np
import pytest

from tests.vp9_header import (
    Vp9HeaderError,
    base_q_indices,
    decoder_q_indices,
    parse_frame_header,
    parse_packet,
    read_ivf,
    split_superframe,
)

WIDTH, HEIGHT = 176, 144

# vp9/encoder/vp9_quantize.c quantizer_to_qindex: the 0..63 "quantizer" of qmin/qmax to a q_index.
QUANTIZER_TO_QINDEX = [4 * q for q in range(62)] + [249, 255]

CONSTANT_Q = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", "b": "0"}


def encode_ivf(path: Path, options: dict[str, str], frames: int = 10, pix_fmt: str = "yuv420p") -> None:
    """Encode ``frames`` frames of moving synthetic content with libvpx-vp9 into an IVF file."""
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    with av.open(str(path), "w", format="ivf") as container:
        stream = container.add_stream("libvpx-vp9", rate=25)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, pix_fmt
        stream.options = options
        for i in range(frames):
            rgb = np.empty((HEIGHT, WIDTH, 3), np.uint8)
            rgb[..., 0] = ((xx + 4 * i) * 3) % 256
            rgb[..., 1] = ((yy + 2 * i) * 5) % 256
            rgb[..., 2] = ((xx ^ yy) + 8 * i) % 256
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())


@pytest.mark.parametrize("quantizer", [20, 62])
def test_constant_quantizer_gives_its_q_index(tmp_path: Path, quantizer: int) -> None:
    path = tmp_path / "cq.ivf"
    q = str(quantizer)
    encode_ivf(path, {**CONSTANT_Q, "qmin": q, "qmax": q, "crf": q})
    expected = QUANTIZER_TO_QINDEX[quantizer]

    packets = read_ivf(path)
    assert len(packets) == 10
    headers = [h for packet in packets for h in parse_packet(packet)]
    assert len(headers) == 10

    first = headers[0]
    assert (first.frame_type, first.profile, first.bit_depth) == ("KEY", 0, 8)
    assert (first.width, first.height) == (WIDTH, HEIGHT)
    assert first.show_frame and not first.intra_only and not first.error_resilient
    assert first.refresh_frame_flags == 0xFF
    for h in headers[1:]:
        assert h.frame_type == "INTER" and h.show_frame and not h.show_existing_frame and not h.intra_only
        assert (h.width, h.height) == (None, None)  # same size as the references: taken from one
        assert h.base_q_idx == expected
    assert base_q_indices(path) == [expected] * 10
    assert decoder_q_indices(path) == [(True, expected)] + [(False, expected)] * 9


def test_rate_controlled_q_matches_ffmpegs_decoder(tmp_path: Path) -> None:
    path = tmp_path / "vbr.ivf"
    rate_control = {"b": "60k", "qmin": "4", "qmax": "60", "g": "6"}
    encode_ivf(path, {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0", **rate_control}, frames=12)
    headers = [h for packet in read_ivf(path) for h in parse_packet(packet)]
    parsed = [(h.frame_type == "KEY", h.base_q_idx) for h in headers]
    assert parsed == decoder_q_indices(path)
    assert [key for key, _ in parsed] == [i % 6 == 0 for i in range(12)]
    qs = base_q_indices(path)
    assert len(set(qs)) > 3, qs  # the rate control really moved q: the check is not one constant
    assert all(QUANTIZER_TO_QINDEX[4] <= q <= QUANTIZER_TO_QINDEX[60] for q in qs), qs


@pytest.mark.parametrize(
    ("options", "pix_fmt", "profile", "error_resilient"),
    [({"error-resilient": "1"}, "yuv420p", 0, True), ({}, "yuv444p", 1, False)],
    ids=["error_resilient", "profile1_444"],
)
def test_error_resilient_and_profile1(
    tmp_path: Path, options: dict[str, str], pix_fmt: str, profile: int, error_resilient: bool
) -> None:
    path = tmp_path / "variant.ivf"
    encode_ivf(path, {**CONSTANT_Q, "qmin": "45", "qmax": "45", "crf": "45", **options}, pix_fmt=pix_fmt)
    headers = [h for packet in read_ivf(path) for h in parse_packet(packet)]
    assert len(headers) == 10
    assert [h.frame_type for h in headers] == ["KEY"] + ["INTER"] * 9
    assert {(h.profile, h.error_resilient) for h in headers} == {(profile, error_resilient)}
    assert (headers[0].width, headers[0].height) == (WIDTH, HEIGHT)
    assert base_q_indices(path) == [QUANTIZER_TO_QINDEX[45]] * 10
    assert [q for _, q in decoder_q_indices(path)] == [QUANTIZER_TO_QINDEX[45]] * 10


def make_superframe(frames: list[bytes], size_bytes: int) -> bytes:
    """Pack frames into a superframe (Annex B) whose sizes take ``size_bytes`` bytes each."""
    marker = 0xC0 | (size_bytes - 1) << 3 | (len(frames) - 1)
    sizes = b"".join(len(f).to_bytes(size_bytes, "little") for f in frames)
    return b"".join(frames) + bytes([marker]) + sizes + bytes([marker])


@pytest.mark.parametrize("size_bytes", [2, 4])
def test_superframe_is_split_and_every_frame_parsed(tmp_path: Path, size_bytes: int) -> None:
    path = tmp_path / "sf.ivf"
    encode_ivf(path, {**CONSTANT_Q, "qmin": "30", "qmax": "30", "crf": "30"}, frames=3)
    frames = read_ivf(path)
    packet = make_superframe(frames, size_bytes)
    assert split_superframe(packet) == frames
    assert [h.frame_type for h in parse_packet(packet)] == ["KEY", "INTER", "INTER"]
    assert [h.base_q_idx for h in parse_packet(packet)] == [QUANTIZER_TO_QINDEX[30]] * 3
    # A plain frame is one frame, and a last byte that only looks like a marker is not an index.
    assert split_superframe(frames[1]) == [frames[1]]
    junk = bytes(8) + b"\xc1"
    assert split_superframe(junk) == [junk]


class BitWriter:
    """Builds a header MSB first, the inverse of the parser's reader."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def f(self, value: int, n: int = 1) -> BitWriter:
        self.bits += [(value >> (n - 1 - i)) & 1 for i in range(n)]
        return self

    def su(self, value: int, n: int) -> BitWriter:
        return self.f(abs(value), n).f(int(value < 0))

    def sync(self) -> BitWriter:
        return self.f(0x49, 8).f(0x83, 8).f(0x42, 8)

    def tail(self, base_q_idx: int, error_resilient: bool = False) -> bytes:
        """Write refresh context / context idx / a loop filter with every delta updated / base_q_idx."""
        if not error_resilient:
            self.f(1).f(0)  # refresh_frame_context, frame_parallel_decoding_mode
        self.f(3, 2).f(36, 6).f(5, 3)  # frame_context_idx, loop_filter_level, loop_filter_sharpness
        self.f(1).f(1)  # loop_filter_delta_enabled, loop_filter_delta_update
        for delta in (1, 0, -1, -63, 20, -5):  # 4 ref deltas, 2 mode deltas, each updated
            self.f(1).su(delta, 6)
        self.f(base_q_idx, 8).f(0, 3)  # base_q_idx, three delta_coded 0
        self.bits += [0] * (-len(self.bits) % 8)
        return bytes(int("".join(map(str, self.bits[i : i + 8])), 2) for i in range(0, len(self.bits), 8))


def test_synthetic_headers_cover_the_other_paths() -> None:
    # Profile 2 key frame, 12 bit, BT.709, studio range; error resilient; size 1920x1080, render size given.
    key = BitWriter().f(2, 2).f(0).f(1).f(0).f(0).f(1).f(1).sync()  # marker, profile 2, key, show, er
    key.f(1).f(2, 3).f(0).f(1919, 16).f(1079, 16).f(1).f(639, 16).f(359, 16)
    h = parse_frame_header(key.tail(201, error_resilient=True))
    assert (h.profile, h.bit_depth, h.frame_type, h.error_resilient) == (2, 12, "KEY", True)
    assert (h.width, h.height, h.base_q_idx) == (1920, 1080, 201)

    # Profile 3 (reserved bit 0) key frame, 10 bit, sRGB 4:4:4.
    key3 = BitWriter().f(2, 2).f(1).f(1).f(0).f(0).f(0).f(1).f(0).sync()
    key3.f(0).f(7, 3).f(0).f(63, 16).f(31, 16).f(0)
    h = parse_frame_header(key3.tail(7))
    assert (h.profile, h.bit_depth, h.width, h.height, h.base_q_idx) == (3, 10, 64, 32, 7)

    # Profile 1 hidden intra-only frame, 4:2:2; refresh_frame_flags 0x81.
    intra = BitWriter().f(2, 2).f(1).f(0).f(0).f(1).f(0).f(0).f(1).f(2, 2).sync()
    intra.f(1, 3).f(1).f(1).f(0).f(0).f(0x81, 8)  # BT.601, full range, 4:2:2, reserved
    intra.f(351, 16).f(287, 16).f(0)
    h = parse_frame_header(intra.tail(255))
    assert (h.frame_type, h.show_frame, h.intra_only, h.refresh_frame_flags) == ("INTER", False, True, 0x81)
    assert (h.width, h.height, h.base_q_idx) == (352, 288, 255)

    # Profile 0 intra-only frame: no colour config.
    intra0 = BitWriter().f(2, 2).f(0).f(0).f(0).f(1).f(0).f(0).f(1).f(0, 2).sync().f(0x02, 8)
    intra0.f(175, 16).f(143, 16).f(0)
    assert parse_frame_header(intra0.tail(100)).base_q_idx == 100

    # Inter frame that codes its own size (no found_ref), fixed EIGHTTAP_SHARP filter.
    inter = BitWriter().f(2, 2).f(0).f(0).f(0).f(1).f(1).f(0).f(0, 2).f(0x04, 8)
    for ref in (0, 1, 2):
        inter.f(ref, 3).f(ref == 2)
    inter.f(0).f(0).f(0).f(87, 16).f(71, 16).f(0).f(1).f(0).f(2, 2)
    h = parse_frame_header(inter.tail(42))
    assert (h.frame_type, h.width, h.height, h.base_q_idx, h.refresh_frame_flags) == ("INTER", 88, 72, 42, 0x04)

    # Inter frame that takes its size from the second reference, switchable filter.
    inter_ref = BitWriter().f(2, 2).f(0).f(0).f(0).f(1).f(1).f(0).f(0, 2).f(0x01, 8)
    for ref in (0, 1, 2):
        inter_ref.f(ref, 3).f(0)
    inter_ref.f(0).f(1).f(0).f(1).f(1)
    h = parse_frame_header(inter_ref.tail(3))
    assert (h.width, h.height, h.base_q_idx) == (None, None, 3)

    # show_existing_frame of slot 5.
    h = parse_frame_header(bytes([0b10001101, 0b0100_0000]))
    assert (h.show_existing_frame, h.frame_to_show_map_idx, h.base_q_idx) == (True, 5, None)


def test_bad_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Vp9HeaderError, match="frame marker"):
        parse_frame_header(b"\x00\x00\x00")
    with pytest.raises(Vp9HeaderError, match="sync code"):
        parse_frame_header(bytes([0b10000000, 0, 0, 0, 0]))
    with pytest.raises(Vp9HeaderError, match="past the end"):
        parse_frame_header(bytes([0b10000000, 0x12, 0x60]))
    not_ivf = tmp_path / "x.ivf"
    not_ivf.write_bytes(b"RIFF" + bytes(40))
    with pytest.raises(Vp9HeaderError, match="DKIF"):
        read_ivf(not_ivf)
