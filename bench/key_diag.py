"""Why the key mini-GOP's offset does not transfer: scripted offsets, re-use along GOPs, feature scans.

    python bench/key_diag.py offsets --codec x264 --clip bigbuckbunny     # ~40 s: 4 rates x 10 encodes
    python bench/key_diag.py reuse --codec x264                           # ~30 s: Δ=0 on the held-out split
    python bench/key_diag.py features --codec x264 --sweeps data/keysweep_x264.jsonl   # ~1 min
    python bench/key_diag.py sweeps --codec x264 --sweeps data/keysweep_x264.jsonl     # seconds

The shipped policies make one decision per GOP that matters: the offset of its key mini-GOP
(BENCHMARKS.md §2.4.9). Four views of that decision (§2.4.10 has their figures):

- `offsets`: one held-out clip (clips.heldout_windows(), by source name prefix) at 0.04-0.32
  bit/pixel, the Δ=0 baseline and scripted offsets on the key mini-GOPs of its GOPs (all other
  mini-GOPs at 0, evaluate.ScriptedLearner), each as a BD-rate (overall PSNR-Y) against Δ=0:
  which GOP's decision costs or earns what.
- `reuse`: every held-out clip's Δ=0 encode at 0.08 bit/pixel: for each GOP, the key mini-GOP's
  first-pass features and r_k = inter/intra cost along the GOP (state.gop_reuse's r): where the
  GOP's content changes (r near 1: a cut) and where it stands still (r near 0).
- `features`: leave-one-source-out R² of the gain model (imitation.cross_validate_gain, ridge 3) on
  the oracle records of --sets plus the key sweeps, with fp_reuse and each other feature added to it.
- `sweeps`: per training window of the key sweeps, the rate-neutral best key offset at each rate
  (gain = ΔPSNR-Y − window slope × log2 rate ratio, imitation.window_slopes) beside its features.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import oracle_data  # noqa: E402

import clips  # noqa: E402
import evaluate  # noqa: E402
import imitation  # noqa: E402
import state  # noqa: E402
from learners import ZeroDeltaLearner  # noqa: E402

# name -> offsets of the key mini-GOPs of GOPs 0, 1, 2, ... (missing GOPs: 0)
DEFAULT_VARIANTS = (
    "shipped x264=-1,-1,2;sweep recipe=-1,-2,3;GOP0 -1=-1;GOP1 -1=0,-1;GOP1 -2=0,-2;GOP2 +2=0,0,2;GOP2 +3=0,0,3"
)
SHOWN = ("fp_reuse", "fp_intra", "fp_inter_ratio", "fp_noise", "fp_motion", "log_fp_bpp")


def parse_variants(text: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for item in text.split(";"):
        name, _, offsets = item.partition("=")
        out[name.strip()] = tuple(int(v) for v in offsets.split(","))
    return out


def heldout_video(source: str, codec: str) -> tuple[clips.Window, evaluate.Video]:
    wins = [w for w in clips.heldout_windows() if w.source.startswith(source)]
    if not wins:
        raise SystemExit(f"no held-out window starts with {source!r}: {[w.source for w in clips.heldout_windows()]}")
    path = clips.materialise(wins[0])
    return wins[0], evaluate.probe_videos([path], evaluate.EvalSettings(codec=codec))[0]


def baseline(video: evaluate.Video, codec: str, bpp: float, work: Path) -> tuple:
    """Pass 1 and the Δ=0 encode at `bpp` bit/pixel: the runner, the point and the encode's record and result."""
    settings = evaluate.EvalSettings(codec=codec)
    kbps = round(bpp * video.width * video.height * video.fps / 1000.0, 1)
    point = evaluate.Point(video, kbps, work, settings)
    runner = evaluate.Runner(work, settings)
    runner.first_pass(point)
    return runner, point, runner.protocol_encode(point, "baseline", ZeroDeltaLearner(), 1, 0.02, "baseline")


def cmd_offsets(args: argparse.Namespace, work: Path) -> None:
    variants = parse_variants(args.variants)
    win, video = heldout_video(args.clip, args.codec)
    rd: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in ["Δ=0", *variants]}
    for bpp in (0.04, 0.08, 0.16, 0.32):
        runner, point, (base, _) = baseline(video, args.codec, bpp, work / f"{bpp}")
        rd["Δ=0"][0].append(base.bits)
        rd["Δ=0"][1].append(base.psnr_y)
        keys = list(range(0, len(base.minigops), args.mgs_per_gop))
        for name, offsets in variants.items():
            script = [0] * len(base.minigops)
            for k, off in zip(keys, offsets, strict=False):
                script[k] = off
            rec, _ = runner.protocol_encode(point, "x", evaluate.ScriptedLearner(script, 4), 4, 0.02, "v")
            rd[name][0].append(rec.bits)
            rd[name][1].append(rec.psnr_y)
        print(f"  {bpp} bit/pixel done", file=sys.stderr, flush=True)
    print(f"{win.name}, {args.codec}, 0.04/0.08/0.16/0.32 bit/pixel; key mini-GOP every {args.mgs_per_gop}\n")
    print("| key offsets (GOP 0, 1, ...) | | BD-rate vs Δ=0 (PSNR-Y) |\n|---|---|---:|")
    for name, offsets in variants.items():
        bd = evaluate.bd_rate(rd[name][0], rd[name][1], rd["Δ=0"][0], rd["Δ=0"][1])
        print(f"| {name} | {', '.join(f'{o:+d}' for o in offsets)} | {bd:+.2f}% |")


def cmd_reuse(args: argparse.Namespace, work: Path) -> None:
    names = state.FEATURE_NAMES
    head = " | ".join(SHOWN)
    print(f"| clip | GOP | frames (seen) | {head} | r_k > 0.5 at frame | r_k along the GOP (min / median / max) |")
    print("|---|---:|---:|" + "---:|" * len(SHOWN) + "---|---|")
    for win in clips.heldout_windows():
        video = evaluate.probe_videos([clips.materialise(win)], evaluate.EvalSettings(codec=args.codec))[0]
        _, _, (_, res) = baseline(video, args.codec, 0.08, work / win.name)
        for step in res.done_steps:
            req = step.request
            if req.mg_in_gop or req.first_pass is None:
                continue
            fp = req.first_pass
            r = np.minimum(1.0, np.asarray(fp.inter_cost) / np.maximum(np.asarray(fp.intra_cost), 1e-6))
            along = r[1 : req.gop_frames]
            obs = state.build_observation(req, None, None)
            cuts = ", ".join(str(int(i) + 1) for i in np.flatnonzero(along > 0.5)) or "none"
            feats = " | ".join(f"{obs[names.index(n)]:+.2f}" for n in SHOWN)
            spread = f"{along.min():.2f} / {np.median(along):.2f} / {along.max():.2f}" if along.size else "-"
            seen = min(len(r), req.gop_frames)  # frames of the GOP the key request's first pass reaches
            print(f"| {win.source} | {req.gop_index} | {req.gop_frames} ({seen}) | {feats} | {cuts} | {spread} |")


def records(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    path = args.oracle or ROOT / f"data/oracle_{args.codec}.jsonl"
    oracle = oracle_data.of_window_sets(imitation.read_records([path]), args.sets)
    names = {w.name for s in args.sets.split(",") for w in clips.WINDOW_SETS[s]()}
    sweeps = [r for r in imitation.read_records([args.sweeps]) if r["window"] in names] if args.sweeps else []
    return oracle, sweeps


def cmd_features(args: argparse.Namespace, work: Path) -> None:
    oracle, sweeps = records(args)
    moves = imitation.move_samples(oracle + sweeps)
    print(f"{args.codec}, sets {args.sets}: {len(oracle)} oracle points + {len(sweeps)} key sweeps, "
          f"{len(moves)} moves from {len(set(moves.sources))} sources\n")  # fmt: skip
    print("| key mini-GOP features | LOSO R² | (no state) |\n|---|---:|---:|")
    unused = ("has_key", "qp_span", "fp_available", "gop_progress", "gop_left", "fp_reuse")
    for extra in [(), ("fp_reuse",)] + [("fp_reuse", f) for f in state.FEATURE_NAMES if f not in unused]:
        r2, r2_none = imitation.cross_validate_gain(moves, 3.0, imitation.GainFeatures(key=extra, inter=()))
        print(f"| {' + '.join(extra) or 'none'} | {r2:.3f} | ({r2_none:.3f}) |")


def cmd_sweeps(args: argparse.Namespace, work: Path) -> None:
    _, sweeps = records(args)
    if not sweeps:
        raise SystemExit("--sweeps: no key-sweep records of these sets")
    slopes = imitation.window_slopes(sweeps)
    names = state.FEATURE_NAMES
    best: dict[str, list[tuple[float, int]]] = {}
    feats: dict[str, np.ndarray] = {}
    for r in sweeps:
        obs, _ = imitation.observations(r["baseline_steps"])
        feats[r["window"]] = obs[0]
        b = r["baseline"]
        gains = {0: 0.0}
        for c in r["candidates"]:
            gains[c["offsets"][0]] = c["psnr_y"] - b["psnr_y"] - slopes[r["window"]] * math.log2(c["bits"] / b["bits"])
        best.setdefault(r["window"], []).append((r["bpp"], max(gains, key=gains.get)))
    print("| training window | fp_reuse | fp_inter_ratio | fp_motion | best key offset, rates ascending |")
    print("|---|---:|---:|---:|---|")
    for w in sorted(best):
        o = feats[w]
        shown = " | ".join(f"{o[names.index(n)]:+.2f}" for n in ("fp_reuse", "fp_inter_ratio", "fp_motion"))
        print(f"| {w} | {shown} | {' '.join(f'{b:+d}' for _, b in sorted(best[w]))} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("view", choices=("offsets", "reuse", "features", "sweeps"))
    p.add_argument("--codec", default="x264", choices=("x264", "svtav1"))
    p.add_argument("--clip", default="bigbuckbunny", help="offsets: held-out source (name prefix)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="offsets: 'name=o0,o1,...;name=...'")
    p.add_argument("--mgs-per-gop", type=int, default=8, help="offsets: mini-GOPs per GOP (key every N)")
    p.add_argument("--sets", default="train,static", help="features/sweeps: training window sets")
    p.add_argument("--oracle", type=Path, default=None, help="features: oracle records (data/oracle_CODEC.jsonl)")
    p.add_argument("--sweeps", type=Path, default=None, help="features/sweeps: key-sweep records")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="key_diag_") as tmp:
        {"offsets": cmd_offsets, "reuse": cmd_reuse, "features": cmd_features, "sweeps": cmd_sweeps}[args.view](
            args, Path(tmp)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
