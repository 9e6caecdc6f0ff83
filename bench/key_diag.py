"""Why the key mini-GOP's offset does not transfer: scripted offsets, re-use along GOPs, feature scans.

    python bench/key_diag.py offsets --codec x264 --clip bigbuckbunny     # ~40 s: 4 rates x 10 encodes
    python bench/key_diag.py reuse --codec x264                           # ~30 s: Δ=0 on the held-out split
    python bench/key_diag.py features --codec x264 --sweeps data/keysweep_x264.jsonl   # ~1 min
    python bench/key_diag.py sweeps --codec x264 --sweeps data/keysweep_x264.jsonl     # seconds
    python bench/key_diag.py propagate --codec x264 --sweeps data/keysweep_x264.jsonl  # ~3 min
    python bench/key_diag.py propagate --codec x264 --sweeps data/keysweep_x264.jsonl \
        --sets train,static,natural,tail,extra,screen,fixed --judge train,static,natural,tail,extra,screen
    python bench/key_diag.py history --codec x264 --sweeps data/keysweep_x264.jsonl --sets two   # seconds
    python bench/key_diag.py pixels --codec x264 --sweeps data/keysweep_x264.jsonl --sets SETS  # ~30 s

The shipped policies make one decision per GOP that matters: the offset of its key mini-GOP
(BENCHMARKS.md §2.4.9). Seven views of that decision (§2.4.10, §2.4.11, §2.4.17 and §2.4.20 have their figures):

- `offsets`: one held-out clip (clips.heldout_windows(), by source name prefix) at 0.04-0.32
  bit/pixel, the Δ=0 baseline and scripted offsets on the key mini-GOPs of its GOPs (all other
  mini-GOPs at 0, eval_runs.ScriptedLearner), each as a BD-rate (overall PSNR-Y) against Δ=0:
  which GOP's decision costs or earns what.
- `reuse`: every held-out clip's Δ=0 encode at 0.08 bit/pixel: for each GOP, the key mini-GOP's
  first-pass features and r_k = inter/intra cost along the GOP (state.gop_reuse's r): where the
  GOP's content changes (r near 1: a cut) and where it stands still (r near 0).
- `features`: leave-one-source-out R² of the gain model (gain_model.cross_validate_gain, ridge 3) on
  the oracle records of --sets plus the key sweeps, with fp_reuse and each other feature added to it.
- `sweeps`: per training window of the key sweeps, the rate-neutral best key offset at each rate
  (gain = ΔPSNR-Y − window slope × log2 rate ratio, gain_model.window_slopes) beside its features.
- `propagate`: x264's MB-tree on the first pass's blocks instead of frame means: each block of
  frame t hands (intra + propagated) × (1 − inter/intra) to the blocks of frame t−1 its motion
  vector points at (area-weighted), from the GOP's last frame back to its key frame; the figure is
  P = log2(Σ(intra + propagated) / Σ intra) over the key frame's blocks (intra floored at +1 so
  flat blocks do not divide by 0). Printed for every held-out GOP and training window (each of its
  GOPs), then the leave-one-source-out R² of the gain model with P as a key-mini-GOP feature (in the
  unused `qp_span` column), beside `fp_reuse`; then P and its hinges as a term beside the shipped
  recipe, judged as `pixels` judges (§2.4.28): fitted on --sets, judged on the key sweeps of --judge
  (check sets such as `two` or `cut` need not be in --sets) and, apart, of the other --sets.
- `history`: key sweeps of a GOP after the first (sets `two`, `tail`): what the encode of the GOP
  before it says. From the Δ=0 run's feedback of that previous GOP: its key mini-GOP's share of the
  GOP's bits, log2(key frame bits / mean bits of its other frames), its PSNR-Y drop from the key
  mini-GOP to the GOP's second half; beside the state's features at the swept key. For each, the
  leave-one-source-out R² of a line predicting the sweep's value slope at 0 (g = (v(+1) − v(−1)) / 2,
  dB per QP), and what answering ±1 by that prediction's sign is worth (dB at equal rate).
- `pixels`: a picture statistic no first-pass field carries, the luma concentration C of each
  training window's first frame (share of its pixels on the 16 most common luma values: flat
  rendered colours), as a key-mini-GOP term beside the codec's shipped recipe (in the unused
  `qp_span` column): leave-one-source-out R² of the gain model and the value of its key answers on
  the left-out source's key sweeps (bench/loso_value.py's judge), all fitted and judged on --sets.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import loso_value  # noqa: E402
import oracle_data  # noqa: E402

import bdrate  # noqa: E402
import clips  # noqa: E402
import eval_runs  # noqa: E402
import gain_model  # noqa: E402
import imitation  # noqa: E402
import oracle_records  # noqa: E402
import state  # noqa: E402
from builtin_encoder import analysis  # noqa: E402
from builtin_encoder.source import open_source  # noqa: E402
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


def heldout_video(source: str, codec: str) -> tuple[clips.Window, eval_runs.Video]:
    wins = [w for w in clips.heldout_windows() if w.source.startswith(source)]
    if not wins:
        raise SystemExit(f"no held-out window starts with {source!r}: {[w.source for w in clips.heldout_windows()]}")
    path = clips.materialise(wins[0])
    return wins[0], eval_runs.probe_videos([path], eval_runs.EvalSettings(codec=codec))[0]


def baseline(video: eval_runs.Video, codec: str, bpp: float, work: Path) -> tuple:
    """Pass 1 and the Δ=0 encode at `bpp` bit/pixel: the runner, the point and the encode's record and result."""
    settings = eval_runs.EvalSettings(codec=codec)
    (kbps,) = eval_runs.targets_for(video, None, [bpp])
    point = eval_runs.Point(video, kbps, work, settings)
    runner = eval_runs.Runner(work, settings)
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
            rec, _ = runner.protocol_encode(point, "x", eval_runs.ScriptedLearner(script, 4), 4, 0.02, "v")
            rd[name][0].append(rec.bits)
            rd[name][1].append(rec.psnr_y)
        print(f"  {bpp} bit/pixel done", file=sys.stderr, flush=True)
    print(f"{win.name}, {args.codec}, 0.04/0.08/0.16/0.32 bit/pixel; key mini-GOP every {args.mgs_per_gop}\n")
    print("| key offsets (GOP 0, 1, ...) | | BD-rate vs Δ=0 (PSNR-Y) |\n|---|---|---:|")
    for name, offsets in variants.items():
        bd = bdrate.bd_rate(rd[name][0], rd[name][1], rd["Δ=0"][0], rd["Δ=0"][1])
        print(f"| {name} | {', '.join(f'{o:+d}' for o in offsets)} | {bd:+.2f}% |")


def cmd_reuse(args: argparse.Namespace, work: Path) -> None:
    names = state.FEATURE_NAMES
    head = " | ".join(SHOWN)
    print(f"| clip | GOP | frames (seen) | {head} | r_k > 0.5 at frame | r_k along the GOP (min / median / max) |")
    print("|---|---:|---:|" + "---:|" * len(SHOWN) + "---|---|")
    for win in clips.heldout_windows():
        video = eval_runs.probe_videos([clips.materialise(win)], eval_runs.EvalSettings(codec=args.codec))[0]
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
    """The oracle records and key sweeps of --sets."""
    oracle, sweeps, _ = records_and_judged(args)
    return oracle, sweeps


def records_and_judged(args: argparse.Namespace) -> tuple[list[dict], list[dict], list[dict]]:
    """The oracle records and key sweeps of --sets, and the key sweeps of --judge (default --sets; a judge
    set need not be fitted on: a check set such as `two` or `cut`), each file read once."""
    path = args.oracle or ROOT / f"data/oracle_{args.codec}.jsonl"
    oracle = oracle_data.of_window_sets(oracle_records.read_records([path]), args.sets, seed=args.oracle_seed)
    for other, seed in args.pool:  # more draws of rates, fitted together (BENCHMARKS.md §2.4.29, rule 18)
        oracle += oracle_data.of_window_sets(oracle_records.read_records([other]), args.sets, seed=seed)
    every = oracle_records.read_records([args.sweeps]) if args.sweeps else []
    return (oracle, oracle_data.of_window_sets(every, args.sets, "key"),
            oracle_data.of_window_sets(every, args.judge or args.sets, "key"))  # fmt: skip


def window_index(args: argparse.Namespace) -> dict[str, clips.Window]:
    """The windows of --sets and --judge, by name."""
    sets = dict.fromkeys(filter(None, f"{args.sets},{args.judge or ''}".split(",")))
    return {w.name: w for s in sets for w in clips.WINDOW_SETS[s]()}


def cmd_features(args: argparse.Namespace, work: Path) -> None:
    oracle, sweeps = records(args)
    moves = gain_model.move_samples(oracle + sweeps)
    print(f"{args.codec}, sets {args.sets}: {len(oracle)} oracle points + {len(sweeps)} key sweeps, "
          f"{len(moves)} moves from {len(set(moves.sources))} sources\n")  # fmt: skip
    print("| key mini-GOP features | LOSO R² | (no state) |\n|---|---:|---:|")
    unused = ("has_key", "qp_span", "fp_available", "gop_progress", "gop_left", "fp_reuse")
    for extra in [(), ("fp_reuse",)] + [("fp_reuse", f) for f in state.FEATURE_NAMES if f not in unused]:
        r2, r2_none = gain_model.cross_validate_gain(moves, 3.0, gain_model.GainFeatures(key=extra, inter=()))
        print(f"| {' + '.join(extra) or 'none'} | {r2:.3f} | ({r2_none:.3f}) |")


def cmd_sweeps(args: argparse.Namespace, work: Path) -> None:
    _, sweeps = records(args)
    if not sweeps:
        raise SystemExit("--sweeps: no key-sweep records of these sets")
    obs, values, windows = loso_value.sweep_table(sweeps, gain_model.window_slopes(sweeps))
    names = state.FEATURE_NAMES
    best: dict[str, list[tuple[float, int]]] = {}
    feats: dict[str, np.ndarray] = {}
    for r, o, v, w in zip(sweeps, obs, values, windows, strict=True):
        feats[w] = o
        a = int(np.nanargmax(v)) - loso_value.TABLE
        best.setdefault(w, []).append((r["bpp"], a if v[a + loso_value.TABLE] > 0 else 0))  # ties: 0
    print("| training window | fp_reuse | fp_inter_ratio | fp_motion | best key offset, rates ascending |")
    print("|---|---:|---:|---:|---|")
    for w in sorted(best):
        o = feats[w]
        shown = " | ".join(f"{o[names.index(n)]:+.2f}" for n in ("fp_reuse", "fp_inter_ratio", "fp_motion"))
        print(f"| {w} | {shown} | {' '.join(f'{b:+d}' for _, b in sorted(best[w]))} |")


def previous_gop_stats(steps: list[dict], gop: int) -> dict[str, float]:
    """Realized statistics of GOP `gop` − 1 from a run's steps ({"request", "feedback"} per mini-GOP).

    key_share: its key mini-GOP's bits / the GOP's bits; key_inter_bits: log2(key frame bits / mean
    bits of the GOP's other frames); psnr_drop: key mini-GOP PSNR-Y − mean PSNR-Y of the GOP's
    second half, dB.
    """
    fb = [s["feedback"] for s in steps if s["request"]["gop_index"] == gop - 1]
    if not fb:
        raise ValueError(f"no mini-GOP of GOP {gop - 1} in these steps")
    frame_bits = [b for f in fb for b in f["frame_bits"]]
    return {
        "key_share": fb[0]["bits"] / sum(f["bits"] for f in fb),
        "key_inter_bits": float(np.log2(frame_bits[0] / np.mean(frame_bits[1:]))),
        "psnr_drop": fb[0]["psnr_y"] - float(np.mean([f["psnr_y"] for f in fb[len(fb) // 2 :]])),
    }


def cmd_history(args: argparse.Namespace, work: Path) -> None:
    _, every = records(args)
    gop_of = [r["baseline_steps"][loso_value.swept_minigop(r)]["request"]["gop_index"] for r in every]
    sweeps = [r for r, gop in zip(every, gop_of, strict=True) if gop > 0]
    if not sweeps:
        raise SystemExit("--sweeps: no key sweeps of a GOP after the first in these sets (try --sets two,tail)")
    obs, values, windows = loso_value.sweep_table(sweeps, gain_model.window_slopes(sweeps))
    m = loso_value.TABLE
    g = (values[:, m + 1] - values[:, m - 1]) / 2  # (P,) dB per QP at offset 0
    source = np.array([oracle_records.source_of(w) for w in windows])
    prev = [previous_gop_stats(r["baseline_steps"], gop) for r, gop in zip(every, gop_of, strict=True) if gop > 0]
    columns = {f"previous GOP: {k}": np.array([p[k] for p in prev]) for k in prev[0]}
    shown = ("fp_inter_ratio", "fp_reuse", "log_fp_bpp", "lookahead_ratio", "fp_intra", "gop_left", "base_qp")
    columns |= {f"state: {n}": obs[:, state.FEATURE_NAMES.index(n)] for n in shown}
    print(f"{args.codec}, sets {args.sets}: {len(sweeps)} key sweeps of a later GOP, {len(set(source))} sources; "
          f"each sweep's best {np.nanmean(np.nanmax(values, axis=1)):+.4f} dB, always +1 "
          f"{np.nanmean(values[:, m + 1]):+.4f}, always -1 {np.nanmean(values[:, m - 1]):+.4f}\n")  # fmt: skip
    print("| feature | corr with g | LOSO R² of g | ±1 by the LOSO sign, dB |\n|---|---:|---:|---:|")
    for name, x in columns.items():
        pred = np.zeros_like(g)
        for s in set(source):
            out = source == s
            w = np.linalg.lstsq(np.c_[np.ones((~out).sum()), x[~out]], g[~out], rcond=None)[0]
            pred[out] = w[0] + w[1] * x[out]
        r2 = 1.0 - float(np.sum((g - pred) ** 2) / np.sum((g - g.mean()) ** 2))
        corr = float(np.corrcoef(x, g)[0, 1]) if np.std(x) > 0 else float("nan")
        act = np.sign(pred).astype(int)
        print(f"| {name} | {corr:+.2f} | {r2:+.2f} | {np.nanmean(values[np.arange(len(act)), act + m]):+.4f} |")


def cmd_propagate(args: argparse.Namespace, work: Path) -> None:
    gop = 8 * args.mgs_per_gop

    def key_frames_p(path: Path) -> list[tuple[float, int]]:
        """(P of the key frame, frames) of each GOP of the clip: analysis.propagation on pass 1's blocks."""
        blocks = analysis.frame_blocks(f.y for f in open_source(path).frames())
        p = analysis.propagation_by_gop(blocks, gop)
        return [(p[g], len(blocks[g : g + gop])) for g in range(0, len(blocks), gop)]

    print("| held-out clip | P per GOP (frames) |\n|---|---|")
    for win in clips.heldout_windows():
        print(f"| {win.source} | {', '.join(f'{p:.2f} ({n})' for p, n in key_frames_p(clips.materialise(win)))} |")
    oracle, sweeps, judge_sweeps = records_and_judged(args)
    windows = window_index(args)
    names = sorted({r["window"] for r in oracle + sweeps + judge_sweeps})
    prop = {}  # window -> P of each of its GOPs
    for name in names:
        prop[name] = [p for p, _ in key_frames_p(clips.materialise(windows[name]))]
    print("\n| training window | P per GOP |\n|---|---|")
    for name in sorted(prop):
        print(f"| {name} | {', '.join(f'{v:.2f}' for v in prop[name])} |")

    def column(name: str, obs: np.ndarray, swept: bool = False) -> np.ndarray:
        # P / 4 of each state's GOP. A sweep moved the last GOP's key; in an oracle record a full GOP's
        # key mini-GOP has gop_left 7/8 and a later, shorter GOP's less (the fitted sets' windows have
        # one full GOP at most).
        if swept:
            return np.full(len(obs), prop[name][-1] / 4.0)
        first = obs[:, state.FEATURE_NAMES.index("gop_left")] > (args.mgs_per_gop - 1.5) / args.mgs_per_gop
        return np.where(first, prop[name][0], prop[name][-1]) / 4.0

    moves = moves_with(oracle + sweeps, column)
    print(f"\n{args.codec}, sets {args.sets}: {len(oracle)} oracle points + {len(sweeps)} key sweeps, "
          f"{len(moves)} moves from {len(moves.sources)} sources\n")  # fmt: skip
    print("| key mini-GOP features | LOSO R² | (no state) |\n|---|---:|---:|")
    for key in [(), ("fp_reuse",), ("qp_span",), ("fp_reuse", "qp_span")]:
        r2, r2_none = gain_model.cross_validate_gain(moves, 3.0, gain_model.GainFeatures(key=key, inter=()))
        shown = " + ".join(k.replace("qp_span", "P") for k in key) or "none"
        print(f"| {shown} | {r2:.3f} | ({r2_none:.3f}) |")
    judge_key_term(args, (oracle, sweeps, judge_sweeps), column,
                   "P/4 = block propagation of the key's GOP (x264's MB-tree on the first pass)",
                   [("+ P", ""), ("+ hinge P>3.0", ">0.75"), ("+ hinge P>3.3", ">0.825"), ("+ hinge P>3.6", ">0.9")])


def luma_concentration(y: np.ndarray, levels: int = 16) -> float:
    """Share of a frame's luma pixels that take its `levels` most common values, 0..1.

    Flat rendered colours (cartoons, screen content) put most pixels on a few values; camera
    footage, with noise and shading, spreads them (0.2-0.4 on the training sources).
    """
    hist = np.bincount(y.ravel().astype(np.int64), minlength=256)
    return float(np.sort(hist)[::-1][:levels].sum() / y.size)


def cmd_pixels(args: argparse.Namespace, work: Path) -> None:
    oracle, sweeps, judge_sweeps = records_and_judged(args)
    windows = window_index(args)
    names = sorted({r["window"] for r in oracle + sweeps + judge_sweeps})
    conc = {n: luma_concentration(next(open_source(clips.materialise(windows[n])).frames(limit=1)).y) for n in names}
    by_source: dict[str, list[float]] = {}
    for n in names:
        by_source.setdefault(oracle_records.source_of(n), []).append(conc[n])
    print("| source | luma concentration of its windows' first frames |\n|---|---|")
    for src in sorted(by_source):
        print(f"| {src} | {', '.join(f'{c:.2f}' for c in by_source[src])} |")
    judge_key_term(args, (oracle, sweeps, judge_sweeps), lambda name, obs, swept=False: np.full(len(obs), conc[name]),
                   "C = luma concentration",
                   [("+ C", ""), ("+ hinge C>0.5", ">0.5")])  # fmt: skip


# A state column that is constant in every state (qp_span): where a candidate feature goes in these views.
SPARE = state.FEATURE_NAMES.index("qp_span")


def moves_with(chosen: list[dict], column: Callable[[str, np.ndarray], np.ndarray]) -> gain_model.MoveSamples:
    """gain_model.move_samples of `chosen` with column(window, obs) in the SPARE column of each window's states."""
    parts = []
    for name in sorted({r["window"] for r in chosen}):  # one window at a time: window_slopes groups by window
        m = gain_model.move_samples([r for r in chosen if r["window"] == name])
        m.obs[:, SPARE] = column(name, m.obs)
        parts.append(m)
    return gain_model.MoveSamples.concat(parts)


def judge_key_term(args: argparse.Namespace, recs: tuple[list[dict], list[dict], list[dict]],
                   column: Callable[..., np.ndarray], label: str, terms: list[tuple[str, str]]) -> None:  # fmt: skip
    """A candidate key-mini-GOP term beside the codec's shipped recipe: leave-one-source-out R² of the gain
    model, then the value of its key answers on the left-out source's key sweeps (bench/loso_value.py's
    judge), fitted on the oracle records of --sets, judged on the sweeps of --judge and, apart, of the other
    --sets. `column(window, obs, swept)` gives the term's value at each state of a window (it goes in the
    unused `qp_span` column; swept: the states are key sweeps', of the window's last GOP); `terms` are
    (name, "" or a hinge such as ">0.5") variants of it. `recs`: records_and_judged(args).
    """
    oracle, sweeps, judge_sweeps = recs
    moves = moves_with(oracle + sweeps, column)
    shipped = imitation.SHIPPED_RECIPES[args.codec]
    recipe, k = tuple(shipped.features.key or ()), shipped.consensus
    print(f"\n{args.codec}, sets {args.sets}: {len(oracle)} oracle points + {len(sweeps)} key sweeps, "
          f"{len(moves)} moves from {len(moves.sources)} sources; {label}\n")  # fmt: skip
    variants = [loso_value.Variant("shipped recipe's key terms", k, recipe)]
    variants += [loso_value.Variant(name, k, (*recipe, "qp_span" + hinge)) for name, hinge in terms]
    print("| key mini-GOP terms | LOSO R² of the gain model |\n|---|---:|")
    for v in variants:
        r2, _ = gain_model.cross_validate_gain(moves, 3.0, gain_model.GainFeatures(key=v.key, inter=()))
        print(f"| {v.name} | {r2:.3f} |")
    if not judge_sweeps:
        return
    fit = moves_with(oracle, column)  # the recipes fit on oracle records only (make_policy.py without --key-sweeps)
    judge = args.judge or args.sets
    others = ",".join(s for s in args.sets.split(",") if s not in judge.split(","))
    groups = [(judge, judge_sweeps)]
    if others:
        groups.append((others, oracle_data.of_window_sets(sweeps, others, "key")))
    print("\n| key mini-GOP terms | " + " | ".join(f"value on {g}'s sweeps, dB at equal rate | worse than Δ=0"
                                                   for g, _ in groups) + " |")  # fmt: skip
    print("|---|" + "---:|---:|" * len(groups))
    cells: dict[str, list[str]] = {v.name: [] for v in variants}
    for _, chosen in groups:
        obs, values, wins = loso_value.sweep_table(chosen, gain_model.window_slopes(chosen))
        for w in set(wins):
            rows = np.array(wins) == w
            obs[rows, SPARE] = column(w, obs[rows], True)
        source = np.array([oracle_records.source_of(w) for w in wins])
        for v in variants:
            a = np.zeros(len(wins), int)
            for src in set(source):
                out = np.array([fit.sources[i] == src for i in fit.source])
                a[source == src] = loso_value.answer_from_moves(v, fit.subset(~out), obs[source == src])
            val = np.nan_to_num(values[np.arange(len(a)), a + loso_value.TABLE], nan=0.0)
            cells[v.name] += [f"{val.mean():+.4f}", f"{int((val < -1e-9).sum())} of {len(val)}"]
    for v in variants:
        print(f"| {v.name} | " + " | ".join(cells[v.name]) + " |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("view", choices=("offsets", "reuse", "features", "sweeps", "propagate", "history", "pixels"))
    p.add_argument("--codec", default="x264", choices=("x264", "svtav1"))
    p.add_argument("--clip", default="bigbuckbunny", help="offsets: held-out source (name prefix)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS, help="offsets: 'name=o0,o1,...;name=...'")
    p.add_argument("--mgs-per-gop", type=int, default=8, help="offsets: mini-GOPs per GOP (key every N)")
    p.add_argument("--sets", default="train,static", help="features/sweeps/history: training window sets")
    p.add_argument("--oracle", type=Path, default=None, help="features: oracle records (data/oracle_CODEC.jsonl)")
    p.add_argument("--oracle-seed", type=int, default=None,
                   help="the oracle records' draw of rates (oracle_data.py --seed; default: the shipped draw)")
    p.add_argument("--pool", action="append", default=[], metavar="FILE:SEED",
                   help="also fit on FILE's oracle records of draw SEED (oracle_data.py --seed; repeatable)")
    p.add_argument("--sweeps", type=Path, default=None, help="features/sweeps/history: key-sweep records")
    p.add_argument("--judge", default=None,
                   help="propagate/pixels: window sets whose key sweeps judge (default --sets; a set outside "
                        "--sets is judged, not fitted on); the other --sets are judged apart")  # fmt: skip
    args = p.parse_args()
    for flag, sets in (("--sets", args.sets), ("--judge", args.judge or "")):
        if error := clips.window_sets_error(flag, sets):
            p.error(error)
    pool = []
    for value in args.pool:
        name, _, seed = value.rpartition(":")
        if not name or not seed.lstrip("-").isdigit():
            p.error(f"--pool {value!r}: give FILE:SEED, e.g. data/oracle_x264_seed2.jsonl:2")
        pool.append((Path(name), int(seed)))
    args.pool = pool
    for flag, path in (("--oracle", args.oracle), ("--sweeps", args.sweeps), *(("--pool", f) for f, _ in pool)):
        if path is not None and (error := oracle_data.missing_records(flag, [path])):
            p.error(error)
    with tempfile.TemporaryDirectory(prefix="key_diag_") as tmp:
        views = {"offsets": cmd_offsets, "reuse": cmd_reuse, "features": cmd_features, "sweeps": cmd_sweeps,
                 "propagate": cmd_propagate, "history": cmd_history, "pixels": cmd_pixels}  # fmt: skip
        views[args.view](args, Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
