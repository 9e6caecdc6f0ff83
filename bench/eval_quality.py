"""Benchmark: policies vs the Δ=0 baseline (and the oracle) on the held-out split, BD-rate per clip.

    python bench/eval_quality.py --out /tmp/evalq                          # the shipped policy, SVT-AV1
    python bench/eval_quality.py --out /tmp/evalq --codec x264 --oracle
    python bench/eval_quality.py --out /tmp/evalq --policy agent=policies/svtav1.pt \\
        --policy pattern=/tmp/pattern.pt --policy sac=checkpoints/checkpoint_epoch_20.pt

Splits (clips.py): the shipped policies are trained on windows of carphone, carphone_distorted,
bikes and cockatoo (TRAIN_SOURCES; make_policy.py --windows may add MORE_TRAIN_SOURCES). The
held-out split is eight whole clips never seen in training: bigbuckbunny (640x360, 132 frames),
cityCC0 (360x202, 190), realshort (320x240, 36) and OpenCV's Megamind, tree, vtest, box and cup
(HELDOUT_SOURCES, scaled as in clips.heldout_windows()). Every recipe choice was made on the
held-out split, so its figures are optimistic; `--splits test` is the test split (five example
clips of other Debian packages, TEST_SOURCES, clips.test_windows()), evaluated once per shipped
policy; `--splits test2` is a second one (six clips of other packages, TEST2_SOURCES,
clips.test2_windows()), found after the first had been looked at three times. `--splits native`
is the held-out split's six halved clips at their own size (640x480 to 1280x720, clips.native_windows()):
the same content, four times the pixels, a size no training window had. `--keyint`, `--mini-gop`,
`--preset` and `--bpp` pass another GOP structure, preset or set of rates to every encode (BENCHMARKS.md
§2.4.33 has the shipped x264 policy under each). `--rate-draws 0.97,1,1.03` evaluates every policy again
with every target times each factor and adds a table of each clip's mean over the draws: one draw's luck
moves a clip by up to 2 points (§2.4.34-2.4.35). `--splits train`
adds the old bundled pair (carphone, bikes frames 0-119): clips the policies were trained on, for
contrast.

Each clip is encoded at 4 targets (evaluate.py's default 0.04-0.32 bit per luma pixel) with every
policy and the Δ=0 baseline (GOP 64, mini-GOP 8, the codec's default preset). With --oracle the
held-out (and test) clips also get the oracle search on their first --oracle-frames frames, with
the first policy on the same frames (its share of the oracle's gain). Prints the headline tables; full
reports (Markdown, CSV, PNG) are in OUT/<split>_<policy>/.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import clips  # noqa: E402
import policy  # noqa: E402
from bench.machine_info import machine  # noqa: E402
from bench.pool_eval import bd_rows, clip_bdrates, print_pooled  # noqa: E402
from eval_runs import DEFAULT_BPP  # noqa: E402
from inputs import bundled_clip  # noqa: E402


def make_split(out: Path, split: str) -> Path:
    """OUT/<split>/ with a link to every clip of the split (materialised in the clip cache); returns the folder."""
    folder = out / split
    folder.mkdir(parents=True, exist_ok=True)
    for win in clips.EVAL_SPLITS[split]():
        link = folder / f"{Path(win.source).stem}.y4m"
        if not link.exists():
            link.symlink_to(clips.materialise(win))
    return folder


def pooled_splits(unseen: list[str]) -> list[str]:
    """The splits whose clips are pooled into one mean and interval: `native` repeats the held-out split's
    sources at another size, so beside `heldout` it is left out (one source would count twice)."""
    return [s for s in unseen if s != "native" or "heldout" not in unseen]


def run_evaluate(args: list[str]) -> float:
    """Runs evaluate.py with `args`; returns its wall time, s."""
    cmd = [sys.executable, str(ROOT / "evaluate.py"), *args]
    print("\n$", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def print_policy_table(split: str, results: dict[str, Path]) -> None:
    """One row per policy: BD-rate vs Δ=0 per clip (PSNR-Y), mean, SSIM-Y mean, rate accuracy."""
    first = next(iter(results.values()))
    videos = json.loads((first / "summary.json").read_text())["videos"]
    print(f"\n## {split}: BD-rate vs the Δ=0 baseline, overall PSNR-Y (%, negative = fewer bits for the same quality)")
    print("| policy | " + " | ".join(videos) + " | mean | worst | SSIM-Y mean | mean \\|bitrate error\\| | "
          "GOPs over budget +2% (Δ=0) |")  # fmt: skip
    print("|---|" + "---|" * (len(videos) + 5))
    for name, folder in results.items():
        psnr = bd_rows(folder, "psnr_y")["agent vs baseline"]
        ssim = bd_rows(folder, "ssim_y")["agent vs baseline"]
        s = json.loads((folder / "summary.json").read_text())
        worst = max(psnr[v] for v in videos)
        base_over = s["baseline_gops_over_tol_pct"]
        print(f"| {name} | " + " | ".join(f"{psnr[v]:+.2f}" for v in videos)
              + f" | **{psnr['mean']:+.2f}** | {worst:+.2f} | {ssim['mean']:+.2f} | "
              f"{s['agent']['mean_abs_error_pct']:.2f}% (Δ=0 {s['baseline_mean_abs_error_pct']:.2f}%) | "
              f"{s['agent']['gops_over_tol_pct']:.0f}% ({base_over:.0f}%) |")  # fmt: skip


def draw_folder(out: Path, split: str, name: str, factor: float | None) -> Path:
    """The report folder of one policy on one split at one draw of rates (`factor` None: the rates as given)."""
    return out / (f"{split}_{name}" if factor is None else f"{split}_{name}_x{factor:g}")


def scaled_bpp(bpp: str | None, factor: float) -> str:
    """The targets (--bpp, or evaluate.py's default) times `factor`, as evaluate.py's --bpp."""
    values = [float(v) for v in bpp.split(",")] if bpp else DEFAULT_BPP
    return ",".join(f"{v * factor:.6g}" for v in values)


def print_draws_table(split: str, results: dict[str, list[Path]], factors: list[float]) -> None:
    """One row per policy: each clip's BD-rate vs Δ=0 (PSNR-Y) averaged over the draws of rates, with its range.

    One draw's targets decide where each clip's chaotic encodes land; a 3% change of every target moves a
    clip's BD-rate by up to 2 points (BENCHMARKS.md §2.4.34). The mean over draws is the steadier figure.
    """
    draws = ", ".join(f"x{f:g}" for f in factors)
    print(f"\n## {split}: BD-rate vs Δ=0, overall PSNR-Y (%), mean over {len(factors)} draws of rates ({draws}); "
          "[lowest … highest]")  # fmt: skip
    first = next(iter(results.values()))
    videos = list(clip_bdrates(first[0]))
    print("| policy | " + " | ".join(videos) + " | mean | worst clip (its mean) | mean per draw |")
    print("|---|" + "---|" * (len(videos) + 3))
    for name, folders in results.items():
        per_draw = [clip_bdrates(f) for f in folders]
        clip_means = {v: sum(d[v] for d in per_draw) / len(per_draw) for v in videos}
        cells = [f"{clip_means[v]:+.2f} [{min(d[v] for d in per_draw):+.2f} … {max(d[v] for d in per_draw):+.2f}]"
                 for v in videos]  # fmt: skip
        draw_means = " / ".join(f"{sum(d.values()) / len(d):+.2f}" for d in per_draw)
        mean = sum(clip_means.values()) / len(videos)
        print(f"| {name} | " + " | ".join(cells) + f" | **{mean:+.2f}** | {max(clip_means.values()):+.2f} | "
              f"{draw_means} |")  # fmt: skip


def print_codec_rc_table(split: str, results: dict[str, Path]) -> None:
    """BD-rates against the codec's own rate control (codec_rc: e.g. libvpx's 2-pass VBR), per clip."""
    print(f"\n## {split}: BD-rate vs the codec's own rate control (codec_rc), overall PSNR-Y (%)")
    first = next(iter(results.values()))
    videos = json.loads((first / "summary.json").read_text())["videos"]
    print("| pair | " + " | ".join(videos) + " | mean |")
    print("|---|" + "---|" * (len(videos) + 1))
    for name, folder in results.items():
        rows = bd_rows(folder, "psnr_y")
        for pair, label in (("baseline vs codec_rc", "Δ=0 vs codec_rc"), ("agent vs codec_rc", f"{name} vs codec_rc")):
            if pair in rows and (pair != "baseline vs codec_rc" or folder == first):
                print(f"| {label} | " + " | ".join(f"{rows[pair][v]:+.2f}" for v in videos)
                      + f" | **{rows[pair]['mean']:+.2f}** |")  # fmt: skip


def print_oracle_table(split: str, folder: Path, frames: int) -> None:
    s = json.loads((folder / "summary.json").read_text())
    oracle = bd_rows(folder, "psnr_y")
    videos = s["videos"]
    print(f"\n## {split}, first {frames} frames: the oracle and the first policy on the same frames")
    print("| pair | " + " | ".join(videos) + " | mean |")
    print("|---|" + "---|" * (len(videos) + 1))
    for pair in ("oracle vs baseline", "agent vs baseline"):
        if pair in oracle:
            print(f"| {pair} | " + " | ".join(f"{oracle[pair][v]:+.2f}" for v in videos)
                  + f" | {oracle[pair]['mean']:+.2f} |")  # fmt: skip
    print(f"The policy captures {100 * s['captured']:.0f}% of the oracle's ΔPSNR-Y at equal rate "
          f"({s['oracle_encodes']} oracle encodes, {s['oracle_seconds']:.0f} s).")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="work and report folder")
    p.add_argument("--codec", default="svtav1", choices=("svtav1", "x264", "vp9"))
    p.add_argument("--policy", action="append", default=[],
                   help="NAME=PATH of a policy or checkpoint, or NAME=x264 for a shipped one (repeatable; default: "
                        "agent=policies/CODEC.pt)")
    p.add_argument("--splits", default="heldout", help=f"comma-separated: {', '.join(clips.EVAL_SPLITS)}, train")
    p.add_argument("--oracle", action="store_true", help="also run the oracle on every split but train")
    p.add_argument("--oracle-frames", type=int, default=64, help="frames per clip for the oracle")
    p.add_argument("--codec-rc", action="store_true", help="also encode with the codec's own rate control")
    g = p.add_argument_group("encode settings, passed to every evaluate.py run (default: evaluate.py's)")
    g.add_argument("--keyint", type=int, default=None, help="GOP length, frames (evaluate.py's default 64)")
    g.add_argument("--mini-gop", type=int, default=None, help="mini-GOP length, frames (default 8)")
    g.add_argument("--preset", type=int, default=None, help="the built-in encoder's preset number")
    g.add_argument("--layer-offset-scale", type=float, default=None,
                   help="SVT-AV1's temporal-layer QP offsets times this, in [0, 3] (BENCHMARKS.md §2.4.36)")
    g.add_argument("--key-probe", action="store_true",
                   help="the built-in encoder's --key-probe in every agent encode (a policy that reads the key probe)")
    g.add_argument("--bpp", default=None, help="target bits per luma pixel, comma-separated (default 0.04-0.32)")
    g.add_argument("--rate-draws", default=None,
                   help="factors, comma-separated (e.g. 0.97,1,1.03): every policy on every split at every target "
                        "times each factor; a table gives each clip's mean over the draws and its range")  # fmt: skip
    ns = p.parse_args()
    given = (("--keyint", ns.keyint), ("--mini-gop", ns.mini_gop), ("--preset", ns.preset),
             ("--layer-offset-scale", ns.layer_offset_scale), ("--bpp", ns.bpp))
    settings = [f for flag, value in given if value is not None for f in (flag, str(value))]
    settings += ["--key-probe"] if ns.key_probe else []
    if ns.layer_offset_scale is not None and not 0 <= ns.layer_offset_scale <= 3:
        p.error(f"--layer-offset-scale {ns.layer_offset_scale}: want a number in [0, 3]")
    if ns.bpp is not None:
        try:
            if not all(float(v) > 0 for v in ns.bpp.split(",")):
                raise ValueError
        except ValueError:
            p.error(f"--bpp {ns.bpp!r}: want comma-separated positive numbers")
    factors: list[float] | None = None
    if ns.rate_draws is not None:
        try:
            factors = [float(v) for v in ns.rate_draws.split(",")]
            if not factors or not all(f > 0 for f in factors) or len(set(factors)) != len(factors):
                raise ValueError
        except ValueError:
            p.error(f"--rate-draws {ns.rate_draws!r}: want distinct positive factors, comma-separated")
    splits = ns.splits.split(",")
    if not set(splits) <= {*clips.EVAL_SPLITS, "train"}:
        p.error(f"--splits: unknown split in {ns.splits!r} ({', '.join(clips.EVAL_SPLITS)}, train)")
    policies = {}
    for item in ns.policy:
        name, sep, path = item.partition("=")
        if not (name and sep and policy.named(path).is_file()):
            p.error(f"--policy {item!r}: want NAME=PATH of an existing policy or checkpoint file "
                    f"(or NAME=one of {', '.join(policy.shipped_names())})")  # fmt: skip
        policies[name] = str(policy.named(path))
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    policies = policies or {"agent": str(policy.shipped_policy(ns.codec))}
    t0 = time.monotonic()
    unseen = [s for s in splits if s != "train"]
    inputs = {s: ["--inputs", str(make_split(out, s))] for s in unseen}
    inputs["train"] = ["--inputs", str(bundled_clip("carphone_pristine.mp4")), "--inputs",
                       str(bundled_clip("bikes.mp4")), "--frames", "120"]  # fmt: skip
    tables: dict[str, dict[str, Path]] = {}
    draw_tables: dict[str, dict[str, list[Path]]] = {}
    extra = [] if ns.codec_rc else ["--skip-codec-rc"]
    for split in splits:
        for name, path in policies.items():
            for factor in factors or [None]:
                folder = draw_folder(out, split, name, factor)
                # A draw's targets replace --bpp's (argparse keeps the last value given).
                rates = [] if factor is None else ["--bpp", scaled_bpp(ns.bpp, factor)]
                run_evaluate(["--load-checkpoint", path, "--codec", ns.codec, "--log-level", "1", *inputs[split],
                              *extra, *settings, *rates, "--out", str(folder)])  # fmt: skip
                draw_tables.setdefault(split, {}).setdefault(name, []).append(folder)
                if factor is None or factor == 1:
                    tables.setdefault(split, {})[name] = folder
    oracle_splits = unseen if ns.oracle else []
    for split in oracle_splits:
        first = next(iter(policies.values()))
        run_evaluate(["oracle", "--load-checkpoint", first, "--codec", ns.codec, *inputs[split], "--frames",
                      str(ns.oracle_frames), *settings, "--out", str(out / f"{split}_oracle")])  # fmt: skip
    print(f"\n`python bench/eval_quality.py {' '.join(sys.argv[1:])}` — {machine()}, {time.monotonic() - t0:.0f} s")
    for name, path in policies.items():
        print(f"- {name}: {path}")
    for split, results in tables.items():
        print_policy_table(split, results)
        if ns.codec_rc:
            print_codec_rc_table(split, results)
    if factors:
        for split, drawn in draw_tables.items():
            print_draws_table(split, drawn, factors)
    pooled = [s for s in pooled_splits(unseen) if s in tables]  # with --rate-draws, the x1 draw
    if len(pooled) > 1:
        print(f"\n## {' + '.join(pooled)} pooled: every clip of the splits, BD-rate vs Δ=0, overall PSNR-Y")
        print_pooled({name: [tables[s][name] for s in pooled] for name in policies})
    for split in oracle_splits:
        print_oracle_table(split, out / f"{split}_oracle", ns.oracle_frames)
    return 0


if __name__ == "__main__":
    sys.exit(main())
