"""The GOP probes (--key-probe): a GOP coded twice more with its key mini-GOP's QP finer and then coarser, twice
more with the five mini-GOPs after the key finer and then coarser together (the ramp probe), and with
--probe-zero once more at Δ=0 throughout (the zero encode both probes are read against).

Whether a GOP's key mini-GOP should get more bits depends on how much of its quality the rest of the GOP
inherits, which no first-pass statistic tells well for SVT-AV1 (BENCHMARKS.md §2.4.41). The probe measures
it: before the GOP's first request, the whole GOP is coded at the encode's own preset under a copy of
the rate control, once with the key mini-GOP PROBE_OFFSET QP finer than the rate control's base QP and once
PROBE_OFFSET coarser, the other mini-GOPs at Δ=0. The request carries both encodes' bits and PSNR-Y
(protocol.KeyProbe); the agent values them (state.key_probe_feature). Nothing of the probes reaches the
output: they use their own codec instances, a copy of the rate control, and a scratch folder. Not the
fastest preset: at SVT-AV1's preset 13 the probe's contrast places the key decision about half as well on
the training windows (BENCHMARKS.md §2.4.43), for a native encode only a quarter faster. The ramp probe
measures the same for mini-GOPs 1..5 moved together, a decision the key probe does not tell (§2.4.44); it
goes in the requests of those mini-GOPs (`ramp_probe`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import protocol
from builtin_encoder.codec import Codec, YuvFrame
from builtin_encoder.layout import MiniGop
from builtin_encoder.metrics import psnr_from_mse
from builtin_encoder.ratecontrol import RateController

PROBE_CODECS = ("svtav1", "x264")  # the codecs whose backends the probe can fork (vp9's rate control is libvpx's)
PROBE_OFFSET = 3  # QP units of each probe's change to the key mini-GOP (§2.4.41: ±3)
KEY = range(1)  # the places in its GOP of the mini-GOPs each probe moves: the key, and the ramp after it
RAMP = range(1, protocol.RAMP_MINIGOPS + 1)

Gop = list[tuple[MiniGop, list[YuvFrame]]]  # one GOP's mini-GOPs, each with its frames
OpenCodec = Callable[[Path], Codec]  # a fresh codec, at the encode's preset, writing to the path
FrameQps = Callable[[Codec, int, MiniGop], list[int]]  # a mini-GOP's per-frame QPs at a base QP


@dataclass
class ProbeEncode:
    """One probe: the GOP's bits and overall PSNR-Y (dB, from its summed squared error)."""

    bits: int
    psnr_y: float


def probe_encode(open_codec: OpenCodec, out: Path, rc: RateController, gop: Gop, moved: range, delta: int,
                 frame_qps: FrameQps, luma: int) -> ProbeEncode:  # fmt: skip
    """The GOP coded by a fresh codec under a copy of `rc` (left as it was), `delta` codec QP steps added to the
    base QP of its mini-GOPs whose place in the GOP is in `moved` and Δ=0 on the others, every QP clamped to the
    codec's range."""
    rc = rc.fork()
    codec = open_codec(out)
    bits, sse, frames = 0, 0.0, 0
    try:
        for mg, chunk in gop:
            qp = rc.base_qp(mg) + (delta if mg.in_gop in moved else 0)
            qp = min(max(qp, codec.qp_min), codec.qp_max)
            stats = codec.encode(chunk, frame_qps(codec, qp, mg), key_first=mg.key_first)
            rc.update(mg, [st.bits for st in stats], qp)
            bits += sum(st.bits for st in stats)
            sse += sum(st.sse_y for st in stats)
            frames += len(stats)
        codec.close()
    finally:
        codec.close()  # idempotent in the backends; frees the codec on the error path
    return ProbeEncode(bits, psnr_from_mse(sse / (frames * luma)))


def probe_pair(open_codec: OpenCodec, scratch: Path, rc: RateController, gop: Gop, moved: range, step: int,
               frame_qps: FrameQps, luma: int, zero: ProbeEncode | None) -> protocol.KeyProbe:  # fmt: skip
    """The GOP coded with its mini-GOPs in `moved` `step` codec QP steps finer, then as many coarser; `zero`: the
    GOP at Δ=0 (the same for both probes), or None."""
    finer = probe_encode(open_codec, scratch / "finer", rc, gop, moved, -step, frame_qps, luma)
    coarser = probe_encode(open_codec, scratch / "coarser", rc, gop, moved, step, frame_qps, luma)
    return protocol.KeyProbe(offset=PROBE_OFFSET, finer_bits=finer.bits, finer_psnr_y=round(finer.psnr_y, 4),
                             coarser_bits=coarser.bits, coarser_psnr_y=round(coarser.psnr_y, 4),
                             zero_bits=None if zero is None else zero.bits,
                             zero_psnr_y=None if zero is None else round(zero.psnr_y, 4))  # fmt: skip


def key_probe(open_codec: OpenCodec, scratch: Path, rc: RateController, gop: Gop, frame_qps: FrameQps, luma: int,
              qp_unit: float, with_zero: bool = False,
              ) -> tuple[protocol.KeyProbe, protocol.KeyProbe | None]:  # fmt: skip
    """Both probes of `gop` (it starts at its key mini-GOP): the key's, and the ramp's (mini-GOPs
    1..protocol.RAMP_MINIGOPS together; None in a GOP of one mini-GOP); qp_unit: codec QP steps per QP unit
    (state.qp_unit); with_zero: the GOP at Δ=0 too, in both (--probe-zero)."""
    step = round(PROBE_OFFSET * qp_unit)
    zero = probe_encode(open_codec, scratch / "zero", rc, gop, KEY, 0, frame_qps, luma) if with_zero else None
    key = probe_pair(open_codec, scratch, rc, gop, KEY, step, frame_qps, luma, zero)
    if len(gop) < 2:
        return key, None
    ramp = probe_pair(open_codec, scratch, rc, gop, RAMP, step, frame_qps, luma, zero)
    return key, ramp
