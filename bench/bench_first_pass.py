"""Pass-1 cost of the first-pass analysis (builtin_encoder/analysis.py): this tree against an older commit.

    python bench/bench_first_pass.py --before 20d46a5        # svtav1 + x264, carphone + bikes, ~2 min

Runs `python -m builtin_encoder --pass 1 --stat-out F` (the pass that main.py and evaluate.py run
once per video) on the bundled clips, alternately in this tree and in a temporary `git worktree`
of --before (a commit without the analysis, or an older version of it), --repeats times each, and
prints the median wall-clock fps of the whole process beside the analysis alone (Analyzer.add over
the same frames, in this process), and whether the two trees wrote the same stat file (a speed-up of
the analysis must not change a bit of it). Alternating keeps a changing machine load from favouring
either side. Clips: the bundled carphone (176x144) and bikes (640x272), and `cockatoo` (1280x720,
from Debian's python3-imageio, fetched by `clips.clip_path`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine_info import machine  # noqa: E402
from builtin_encoder.analysis import Analyzer  # noqa: E402
from builtin_encoder.source import bundled_clip, open_source  # noqa: E402
from clips import clip_path  # noqa: E402

CLIPS = {"carphone": "carphone_pristine.mp4", "bikes": "bikes.mp4", "cockatoo": "cockatoo.mp4"}


def pass1_seconds(tree: Path, clip: str, codec: str, frames: int, stat: Path) -> float:
    cmd = [sys.executable, "-m", "builtin_encoder", "--input", clip, "--codec", codec, "--frames", str(frames),
           "--bitrate", "300", "--pass", "1", "--stat-out", str(stat)]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=tree, check=True, capture_output=True)
    return time.perf_counter() - t0


def analysis_seconds(clip: str, frames: int) -> float:
    ys = [f.y for f in open_source(clip).frames(frames)]
    analyzer = Analyzer()
    t0 = time.perf_counter()
    for y in ys:
        analyzer.add(y)
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="git commit to compare with (one without the analysis)")
    p.add_argument("--codecs", default="svtav1,x264")
    p.add_argument("--clips", default="carphone,bikes", help=f"comma-separated of {', '.join(CLIPS)}")
    p.add_argument("--frames", type=int, default=120)
    p.add_argument("--repeats", type=int, default=3)
    ns = p.parse_args()
    print(f"`python bench/bench_first_pass.py {' '.join(sys.argv[1:])}` — {machine()}, "
          f"load {os.getloadavg()[0]:.1f} at the start\n")  # fmt: skip
    print("| codec | clip | pass 1 before (fps) | pass 1 now (fps) | now / before | analysis alone (fps) "
          "| same stat file |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench_fp.") as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(old), ns.before], cwd=ROOT, check=True)
        try:
            for codec in ns.codecs.split(","):
                for name in ns.clips.split(","):
                    clip = str(clip_path(CLIPS[name]) if name == "cockatoo" else bundled_clip(CLIPS[name]))
                    before, now = [], []
                    for _ in range(ns.repeats):
                        before.append(pass1_seconds(old, clip, codec, ns.frames, Path(tmp) / "a.stat"))
                        now.append(pass1_seconds(ROOT, clip, codec, ns.frames, Path(tmp) / "b.stat"))
                    fps_before = ns.frames / statistics.median(before)
                    fps_now = ns.frames / statistics.median(now)
                    alone = ns.frames / analysis_seconds(clip, ns.frames)
                    same = (Path(tmp) / "a.stat").read_bytes() == (Path(tmp) / "b.stat").read_bytes()
                    print(f"| {codec} | {name} | {fps_before:.1f} | {fps_now:.1f} | {fps_now / fps_before:.2f} | "
                          f"{alone:.0f} | {'yes' if same else 'no'} |", flush=True)  # fmt: skip
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    print(f"\nload {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
