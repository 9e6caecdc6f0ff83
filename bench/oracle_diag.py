"""Diagnosis: can the agent's state predict what the oracle does, and how big is the signal?

    python bench/oracle_diag.py data/oracle_svtav1.jsonl [more.jsonl ...] [--epochs 300]
    python bench/oracle_diag.py datasets/oracle_svtav1_kp.jsonl.gz --key-probe   # the probed records kept in git

Reads bench/oracle_data.py output and prints, in Markdown:
  1. the oracle's gain per point (PSNR-Y over Δ=0 at the Δ=0 run's bits) and its offsets by position;
  2. the landscape's noise: how much PSNR-Y moves when one mini-GOP's offset moves by ±1 QP
     around the oracle's answer (the candidates of the last sweep), against the oracle's gain;
  3. predictability, leave-one-source-out: behaviour cloning of the oracle's offsets from today's
     state (imitation.cross_validate), beside two references that use no content: always 0 (Δ=0)
     and the mean offset of each GOP position on the training folds (a fixed pattern).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gain_model  # noqa: E402
import imitation  # noqa: E402
import oracle_records  # noqa: E402
from bench import oracle_data  # noqa: E402
from bench.machine_info import machine  # noqa: E402
from state import FEATURE_NAMES  # noqa: E402


def position_pattern_cv(demos: imitation.Demos, max_delta_qp: int) -> np.ndarray:
    """Out-of-fold predictions of 'the mean oracle offset of this GOP position', in QP."""
    pred = np.zeros(len(demos), dtype=np.float32)
    qp = demos.action * max_delta_qp
    for s in range(len(demos.sources)):
        test = demos.source == s
        for pos in np.unique(demos.position[test]):
            train = ~test & (demos.position == pos)
            pred[test & (demos.position == pos)] = float(np.mean(qp[train])) if train.any() else 0.0
    return pred


def landscape(records: list[dict]) -> tuple[list[float], list[float]]:
    """Per point: oracle gain (dB); and |ΔPSNR-Y| of single ±1 QP moves from the final answer (dB)."""
    gains, moves = [], []
    for rec in records:
        best = rec["oracle"]["offsets"]
        gains.append(rec["oracle"]["psnr_y"] - rec["baseline"]["psnr_y"])
        for c in rec["candidates"]:
            diff = [a - b for a, b in zip(c["offsets"], best, strict=True)]
            if sum(abs(d) for d in diff) == 1:
                moves.append(abs(c["psnr_y"] - rec["oracle"]["psnr_y"]))
    return gains, moves


def fmt(s: imitation.FitScore) -> str:
    return f"{s.mse:.2f} | {s.r2:+.3f} | {100 * s.sign_accuracy:.0f}%"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--max-delta-qp", type=int, default=4)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--weight-decay", type=float, default=1e-2)  # fmt: skip
    p.add_argument("--hidden", default="64,64")
    p.add_argument("--windows", default="train,static", help="window sets of the records used (clips.WINDOW_SETS)")
    p.add_argument("--key-probe", action="store_true",
                   help="records searched with --key-probe (keys ending /kp), e.g. datasets/oracle_svtav1_kp.jsonl.gz")
    ns = p.parse_args()
    if error := oracle_data.missing_records("files", ns.files):
        p.error(error)
    records = oracle_data.of_window_sets(oracle_records.read_records(ns.files), ns.windows,
                                         suffix=oracle_data.probe_suffix(ns.key_probe))  # fmt: skip
    if not records:
        p.error(f"no oracle points of the window sets {ns.windows!r} in {', '.join(map(str, ns.files))}"
                + ("" if ns.key_probe else " (records searched with --key-probe need --key-probe)"))
    demos = imitation.demos_from_records(records, ns.max_delta_qp)
    md = ns.max_delta_qp
    true_qp = demos.action * md
    print(f"# Oracle diagnosis\n\n`python bench/oracle_diag.py {' '.join(map(str, ns.files))}` — {machine()}\n")
    gains, moves = landscape(records)
    g = np.asarray(gains)
    print(f"{len(g)} points from {len(demos.sources)} sources ({', '.join(demos.sources)}), {len(demos)} steps\n")
    print("| oracle gain per point (dB) | mean | median | share > 0.02 dB | max |")
    print("|---|---|---|---|---|")
    print(f"| | {g.mean():+.3f} | {np.median(g):+.3f} | {100 * np.mean(g > 0.02):.0f}% | {g.max():+.3f} |\n")
    print("| GOP position | " + " | ".join(str(k) for k in range(int(demos.position.max()) + 1)) + " |")
    print("|---|" + "---|" * (int(demos.position.max()) + 1))
    for name, fn in (("mean offset", np.mean), ("share non-zero", lambda x: np.mean(x != 0))):
        cells = [fn(true_qp[demos.position == k]) for k in range(int(demos.position.max()) + 1)]
        print(f"| {name} | " + " | ".join(f"{c:+.2f}" for c in cells) + " |")
    m = np.asarray(moves)
    print(f"\nLandscape: a ±1 QP move of one mini-GOP from the oracle's answer changes PSNR-Y by "
          f"{np.mean(m):.3f} dB (median {np.median(m):.3f}, {len(m)} moves); the oracle's mean gain per point "
          f"is {g.mean():.3f} dB.\n")  # fmt: skip
    hidden = tuple(int(h) for h in ns.hidden.split(","))
    bc, _ = imitation.cross_validate(demos, hidden, md, ns.epochs, ns.weight_decay)
    fixed = imitation.score(position_pattern_cv(demos, md), true_qp)
    zero = imitation.score(np.zeros_like(true_qp), true_qp)
    print("Predicting the oracle's offset (QP), leave-one-source-out:\n")
    print("| predictor | MSE (QP²) | R² | sign accuracy on the oracle's non-zero offsets |")
    print("|---|---|---|---|")
    print(f"| always 0 (Δ=0) | {fmt(zero)} |")
    print(f"| mean offset per GOP position (fixed pattern) | {fmt(fixed)} |")
    print(f"| behaviour cloning from the state, MLP {hidden} | {fmt(bc)} |")
    print(f"\n{bc.nonzero} of {len(demos)} oracle offsets are non-zero.")
    moves = gain_model.move_samples(records)
    r2, r2_const = gain_model.cross_validate_gain(moves, 3.0)
    print(f"\nEvery candidate as data (gain_model.GainModel, {len(moves)} moves): leave-one-source-out R² of the "
          f"rate-neutral gain per QP of a move {r2:.3f} with the state, {r2_const:.3f} without (position, curvature "
          "only).")
    old = ",".join(n for n in FEATURE_NAMES if not n.startswith("fp_"))
    specs = [("", "", "none"), (old, old, "the 14 features before first-pass statistics, on both"),
             ("all", "all", "all features on both"), ("fp_future_ratio", "", "key: fp_future_ratio; others: none"),
             ("fp_reuse", "", "key: fp_reuse; others: none (the shipped recipe)"),
             ("fp_reuse", "fp_reuse", "key: fp_reuse; others: fp_reuse"),
             ("fp_future_ratio,log_target_bpp", "", "key: fp_future_ratio, log_target_bpp; others: none")]
    print("\nWhich features the gain model's slope g(s) may use (gain_model.GainFeatures), the same R², ridge 3:\n")
    print("| features of g(s) | R² |\n|---|---|")
    for key, inter, label in specs:
        r2_spec, _ = gain_model.cross_validate_gain(moves, 3.0, gain_model.GainFeatures.parse(key, inter))
        print(f"| {label} | {r2_spec:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
