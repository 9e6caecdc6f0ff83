"""Benchmark: the evaluation report (evaluate.py) on a train split and a held-out split of the bundled clips.

    python bench/eval_quality.py --checkpoint CKPT --out /tmp/evalq [--oracle] [--codec svtav1]
    python bench/eval_quality.py --train-epochs 6 --out /tmp/evalq     # trains its own checkpoint first

Splits (main.py's default training set is carphone + the first 120 frames of bikes):
  train     carphone_pristine (176x144, 120 frames) and bikes frames 0-119 (640x272)
  held-out  bikes frames 120-249 (written to OUT/heldout/bikes_tail.y4m: never seen in training)
            and bigbuckbunny (1280x720, 132 frames)
Each split is encoded at 4 targets in bits per luma pixel (evaluate.py's default 0.04-0.32 bpp)
with the agent, the Δ=0 baseline and the codec's own rate control. With --oracle the held-out
clips also get the oracle search (first --oracle-frames frames, to keep it affordable) with the
agent and baseline on the same frames. Prints the headline tables; the full reports (Markdown,
CSV, PNG) are in OUT/<split>/.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from fractions import Fraction
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from builtin_encoder.source import open_source, write_y4m  # noqa: E402
from main import bundled_clip  # noqa: E402

HEADLINE_PAIRS = ("agent vs baseline", "agent vs codec_rc", "baseline vs codec_rc", "agent vs codec_crf",
                  "baseline vs codec_crf", "oracle vs baseline")  # fmt: skip


def make_heldout(out: Path) -> Path:
    """OUT/heldout/ with bikes frames 120-249 as .y4m and a link to bigbuckbunny; returns the folder."""
    folder = out / "heldout"
    folder.mkdir(parents=True, exist_ok=True)
    tail = folder / "bikes_tail.y4m"
    if not tail.exists():
        src = open_source(bundled_clip("bikes.mp4"))
        fps = Fraction(src.fps or 25.0).limit_denominator(1001)
        write_y4m(islice(src.frames(), 120, None), tail, src.width, src.height, fps.numerator, fps.denominator)
    bbb = folder / "bigbuckbunny.mp4"
    if not bbb.exists():
        bbb.symlink_to(bundled_clip("bigbuckbunny.mp4"))
    return folder


def train_checkpoint(out: Path, epochs: int) -> Path:
    """Trains main.py's default run (bundled clips) for `epochs` epochs in OUT/train_run; returns the checkpoint."""
    run = out / "train_run"
    cmd = [sys.executable, str(ROOT / "main.py"), "--epochs", str(epochs), "--ckpt-interval", str(epochs),
           "--ckpt-dir", str(run / "ckpt"), "--out-dir", str(run / "out"), "--runs-dir", str(run / "runs"),
           "--rl-dir", str(run / "rl_io"), "--stat-dir", str(run / "stats"), "--no-tensorboard"]  # fmt: skip
    print("training:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return run / "ckpt" / f"checkpoint_epoch_{epochs}.pt"


def run_evaluate(args: list[str]) -> float:
    """Runs evaluate.py with `args`; returns its wall time, s."""
    cmd = [sys.executable, str(ROOT / "evaluate.py"), *args]
    print("\n$", " ".join(cmd), flush=True)
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def print_tables(name: str, folder: Path, seconds: float) -> None:
    summary = json.loads((folder / "summary.json").read_text())
    with open(folder / "bdrate.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["metric"] == "psnr_y"]
    videos = summary["videos"]
    print(f"\n## {name}: BD-rate on overall PSNR-Y (%, negative = fewer bits)  [{folder}/report.md, {seconds:.0f} s]")
    print("| pair | " + " | ".join(videos) + " | mean |")
    print("|---|" + "---|" * (len(videos) + 1))
    for r in rows:
        if r["pair"] in HEADLINE_PAIRS:
            cells = " | ".join(f"{float(r[v]):+.2f}" for v in videos)
            print(f"| {r['pair']} | {cells} | {float(r['mean']):+.2f} |")
    a = summary["agent"]
    print(f"agent: mean |bitrate error| {a['mean_abs_error_pct']:.2f}% (max {a['max_abs_error_pct']:.2f}%), "
          f"GOPs over budget {a['gops_over_budget_pct']:.1f}% of {a['gops']:.0f} "
          f"(over budget + tolerance {a['gops_over_tol_pct']:.1f}%)")  # fmt: skip
    print(f"baseline: mean |bitrate error| {summary['baseline_mean_abs_error_pct']:.2f}%, "
          f"GOPs over budget {summary['baseline_gops_over_budget_pct']:.1f}%")  # fmt: skip
    if summary["oracle_encodes"]:
        print(f"oracle: agent captures {100 * summary['captured']:.0f}% of the oracle's ΔPSNR-Y at equal rate; "
              f"{summary['oracle_encodes']} oracle encodes in {summary['oracle_seconds']:.0f} s")  # fmt: skip
        with open(folder / "oracle.csv", newline="") as fh:
            print("| clip | target kbps | oracle ΔPSNR@rate dB | agent ΔPSNR@rate dB | bits vs Δ=0 | encodes |")
            print("|---|---|---|---|---|---|")
            for o in csv.DictReader(fh):
                print(f"| {o['video']} | {float(o['target_kbps']):g} | {float(o['oracle_dpsnr_equal_rate']):+.3f} | "
                      f"{float(o['agent_dpsnr_equal_rate']):+.3f} | {float(o['bits_over_budget_pct']):+.2f}% | "
                      f"{o['encodes']} |")  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="main.py checkpoint (default: train one, see --train-epochs)")
    p.add_argument("--train-epochs", type=int, default=6, help="epochs of the checkpoint trained when none is given")
    p.add_argument("--out", required=True, help="work and report folder")
    p.add_argument("--codec", default="svtav1", choices=("svtav1", "x264"))
    p.add_argument("--oracle", action="store_true", help="also run the oracle on the held-out split")
    p.add_argument("--oracle-frames", type=int, default=64, help="frames per held-out clip for the oracle")
    p.add_argument("--oracle-steps", default="3,1", help="oracle step sizes, QP")
    p.add_argument("--splits", default="train,heldout", help="which splits to report")
    ns = p.parse_args()
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = Path(ns.checkpoint) if ns.checkpoint else train_checkpoint(out, ns.train_epochs)
    heldout = make_heldout(out)
    common = ["--load-checkpoint", str(ckpt), "--codec", ns.codec, "--log-level", "1"]
    done: list[tuple[str, Path, float]] = []
    splits = ns.splits.split(",")
    if "train" in splits:
        inputs = ["--inputs", str(bundled_clip("carphone_pristine.mp4")), "--inputs", str(bundled_clip("bikes.mp4"))]
        secs = run_evaluate(common + inputs + ["--frames", "120", "--out", str(out / "train")])
        done.append(("train split", out / "train", secs))
    if "heldout" in splits:
        secs = run_evaluate(common + ["--inputs", str(heldout), "--out", str(out / "heldout_report")])
        done.append(("held-out split", out / "heldout_report", secs))
    if ns.oracle:
        secs = run_evaluate(["oracle"] + common + ["--inputs", str(heldout), "--frames", str(ns.oracle_frames),
                                                   "--oracle-steps", ns.oracle_steps,
                                                   "--out", str(out / "heldout_oracle")])  # fmt: skip
        done.append((f"held-out split, oracle ({ns.oracle_frames} frames)", out / "heldout_oracle", secs))
    print(f"\ncheckpoint: {ckpt}")
    for name, folder, secs in done:
        print_tables(name, folder, secs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
