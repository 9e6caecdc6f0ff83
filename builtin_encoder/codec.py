"""The one small interface every codec backend implements.

A backend owns one continuous encode: frames go in display order with a forced QP each, coded
packets come out, appended to the output bitstream. Backends run in a zero-latency / low-delay
configuration, so `encode` returns the stats of exactly the frames it was given: the encoder
program can then write the mini-GOP's feedback before asking for the next QP.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

import av
import numpy as np


@dataclass
class YuvFrame:
    """One 8-bit 4:2:0 picture. Planes are C-contiguous uint8 arrays, shapes (h, w), (h/2, w/2) x2."""

    y: np.ndarray
    u: np.ndarray
    v: np.ndarray


class Measure(enum.IntEnum):
    """How much distortion a backend measures per frame; each level includes the ones below.

    Measuring costs time on every frame (SVT-AV1: decoding ~1 ms and SSIM-Y ~3-5 ms per 640x272
    frame), so a pass asks only for what its outputs show.
    """

    NONE = 0  # bits, QP, type and layer only; sse_* and ssim_y are NaN
    SSE = 1  # + the SSE of Y, U and V (MSE, PSNR); ssim_y is NaN
    SSIM = 2  # + SSIM-Y: every FrameStats field


@dataclass
class CodecConfig:
    width: int  # luma pixels, even
    height: int  # luma pixels, even
    fps: float
    keyint: int  # frames per GOP (key-frame period)
    mini_gop: int  # frames per mini-GOP (the low-delay hierarchy period); divides keyint
    preset: int  # codec speed preset (SVT-AV1 0..13, x264 0..9 = placebo..ultrafast reversed)
    threads: int = 0  # 0 = codec default
    measure: Measure = Measure.SSIM  # distortion measured per frame (FrameStats' sse_* / ssim_y)


@dataclass
class FrameStats:
    """What the codec reports for one coded frame (display order)."""

    index: int  # display index within the encode
    frame_type: str  # "KEY" or "INTER"
    temporal_layer: int  # 0 = base layer
    qp: int  # QP the codec actually used for this frame
    bits: int  # size of the frame's packet, bits
    sse_y: float  # sum of squared errors over the luma plane (8-bit scale); NaN if not measured
    sse_u: float
    sse_v: float
    ssim_y: float  # SSIM of the luma plane, 0..1; NaN if not measured (see Measure)


class CodecStall(RuntimeError):
    """The codec library hung and the backend could not recover in place; the same encode may well succeed when
    run again (SVT-AV1 4.1's deadlock under its own rate control, codec_svtav1.py)."""


class Codec(Protocol):
    """A codec backend. See codec_svtav1.py and codec_x264.py."""

    name: str  # "svtav1" or "x264"
    qp_min: int  # smallest QP a frame may be given
    qp_max: int  # largest QP a frame may be given
    bitstream_ext: str  # ".ivf" or ".264"

    def layer_qp_offsets(self) -> list[int]:
        """QP offset of each temporal layer (index = layer) relative to the mini-GOP's base QP."""
        ...

    def key_qp_offset(self, base_qp: int) -> int:
        """QP offset (negative) of a key frame relative to the mini-GOP's base QP."""
        ...

    def temporal_layer(self, pos_in_minigop: int) -> int:
        """Temporal layer of the frame at position `pos_in_minigop` (0-based) of a mini-GOP."""
        ...

    def encode(self, frames: list[YuvFrame], qps: list[int], key_first: bool) -> list[FrameStats]:
        """Codes `frames` (consecutive, display order) at the given per-frame QPs.

        `key_first` forces the first frame to be a key frame. Returns one FrameStats per frame,
        in display order, after their packets were written to the bitstream.
        """
        ...

    def close(self) -> None:
        """Flushes the codec, finishes the bitstream file and frees the codec."""
        ...


def decoded_plane(picture: av.VideoFrame, plane: int, shape: tuple[int, int]) -> np.ndarray:
    """Plane `plane` of a decoded picture as a (h, w) uint8 view (no copy; rows padded to line_size)."""
    p = picture.planes[plane]
    return np.frombuffer(p, dtype=np.uint8).reshape(-1, p.line_size)[: shape[0], : shape[1]]
