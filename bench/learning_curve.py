"""Learning curve: held-out BD-rate of the policy vs the encodes its training used.

    python bench/learning_curve.py data/oracle_x264.jsonl --codec x264 --out /tmp/curve --points 18,36,72

For each size n, the first n oracle points of the recipe's window sets and draws of rates (in a
seeded shuffle, so every size mixes clips and rates) train a policy with the shipped recipe
(imitation.train_policy with make_policy.py's defaults: imitation.SHIPPED_RECIPES[codec]), which is
then evaluated on the held-out split (evaluate.py, 4 rates per clip, no codec RC). "Encodes" counts
every encode behind those n points: pass 1, the Δ=0 encode and every oracle candidate. Prints one
Markdown row per size.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import clips  # noqa: E402
import imitation  # noqa: E402
import oracle_records  # noqa: E402
import policy  # noqa: E402
from bench import oracle_data  # noqa: E402
from bench.eval_quality import make_split  # noqa: E402
from bench.machine_info import machine  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--codec", default="svtav1", choices=("svtav1", "x264", "vp9"))
    p.add_argument("--out", required=True)
    p.add_argument("--points", default="12,24,48", help="training set sizes, oracle points")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--windows", default=None,
                   help="window sets of the records used (clips.WINDOW_SETS); default: the codec's shipped recipe")
    ns = p.parse_args()
    recipe = imitation.SHIPPED_RECIPES[ns.codec]
    ns.windows = ns.windows or recipe.windows
    if error := clips.window_sets_error("--windows", ns.windows):
        p.error(error)
    if error := oracle_data.missing_records("files", ns.files):
        p.error(error)
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    # make_policy --draws
    records = oracle_data.of_draws(oracle_records.read_records(ns.files), ns.windows, recipe.draws)
    order = np.random.default_rng(ns.seed).permutation(len(records))
    heldout = make_split(out, "heldout")
    rows = []
    t0 = time.monotonic()
    for n in (int(x) for x in ns.points.split(",")):
        subset = [records[i] for i in order[:n]]
        actor, summary = imitation.train_policy(subset, consensus=recipe.consensus, spec=recipe.features)
        path = out / f"policy_{n}.pt"
        policy.save(path, actor, ns.codec, 4, 0.02, {"summary": summary, "command": "bench/learning_curve.py"},
                    imitation.actor_inputs(recipe.features))  # fmt: skip
        folder = out / f"eval_{n}"
        cmd = [sys.executable, str(ROOT / "evaluate.py"), "--load-checkpoint", str(path), "--codec", ns.codec,
               "--inputs", str(heldout), "--skip-codec-rc", "--log-level", "0", "--out", str(folder)]  # fmt: skip
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(folder / "bdrate.csv", newline="") as fh:
            bd = {r["metric"]: r for r in csv.DictReader(fh) if r["pair"] == "agent vs baseline"}
        summ = json.loads((folder / "summary.json").read_text())
        videos = summ["videos"]
        encodes = sum(r["oracle"]["encodes"] + 2 for r in subset)
        worst = max(float(bd["psnr_y"][v]) for v in videos)
        rows.append((n, encodes, float(bd["psnr_y"]["mean"]), worst, float(bd["ssim_y"]["mean"]),
                     summ["agent"]["mean_abs_error_pct"]))  # fmt: skip
        print(f"n={n}: {rows[-1]}", flush=True)
    print(f"\n`python bench/learning_curve.py {' '.join(sys.argv[1:])}` — {machine()}, {time.monotonic() - t0:.0f} s\n")
    print("| oracle points | encodes | held-out BD-rate PSNR-Y, mean | worst clip | SSIM-Y mean "
          "| mean \\|bitrate error\\| |")
    print("|---|---|---|---|---|---|")
    for n, enc, mean, worst, ssim, err in rows:
        print(f"| {n} | {enc} | {mean:+.2f}% | {worst:+.2f}% | {ssim:+.2f}% | {err:.2f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
