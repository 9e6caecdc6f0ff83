"""Pools policy-vs-Δ=0 BD-rates over the clips of several evaluation runs: mean, 95% interval, wins.

    python bench/pool_eval.py shipped=/tmp/ev/heldout_agent,/tmp/ev/test_agent,/tmp/ev/test2_agent
    python bench/pool_eval.py tail=A,B prev=C,D --metric ssim_y
    python bench/pool_eval.py tail=A,B prev=C,D --versus prev     # + the paired difference tail - prev


Each FOLDER is an `evaluate.py --out` folder (bench/eval_quality.py makes them as OUT/<split>_<policy>);
its bdrate.csv gives one BD-rate per clip ("agent vs baseline", overall PSNR-Y by default). A split
of five to eight clips says little alone: one QP on one key frame moves a clip by 1-2%. Pooling the
clips of every split a policy was never fitted or chosen on, this prints per policy the number of
clips, their mean BD-rate, a 95% bootstrap interval of that mean (clips resampled with replacement,
10 000 times, seeded: the same figures every run), how many clips are better / worse than Δ=0 by more
than 0.05%, and the worst clip. Negative = fewer bits than Δ=0 for the same quality.

Two policies evaluated on the same clips differ by much less than either's interval suggests: their
clip-to-clip noise is shared. `--versus NAME` adds, for every other policy, the paired difference
(its BD-rate minus NAME's, clip by clip: the i-th folder of each paired with the i-th of the other,
clips matched by name) with its own bootstrap interval.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bdrate import pool_clips  # noqa: E402


def bd_rows(folder: Path, metric: str) -> dict[str, dict[str, float]]:
    """pair -> {clip or 'mean': BD-rate %} on `metric`, from an evaluate.py report folder's bdrate.csv."""
    path = Path(folder) / "bdrate.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no bdrate.csv (not an evaluate.py --out folder?)")
    with open(path, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["metric"] == metric]
    return {r["pair"]: {k: float(v) for k, v in r.items() if k not in ("metric", "pair")} for r in rows}


def clip_bdrates(folder: Path, metric: str = "psnr_y", pair: str = "agent vs baseline") -> dict[str, float]:
    """clip -> BD-rate % of `pair` on `metric` (bd_rows without the mean)."""
    rows = bd_rows(folder, metric)
    if pair not in rows:
        raise ValueError(f"{Path(folder) / 'bdrate.csv'}: no row for metric {metric!r}, pair {pair!r}")
    return {k: v for k, v in rows[pair].items() if k != "mean"}


def print_pooled(policies: dict[str, list[Path]], metric: str = "psnr_y") -> None:
    """One Markdown row per policy, pooling the clips of all its folders."""
    print(f"| policy | clips | mean BD-rate {metric} | 95% interval of the mean | better / worse than Δ=0 "
          "| worst clip |")  # fmt: skip
    print("|---|---:|---:|---|---|---:|")
    for name, folders in policies.items():
        p = pool_clips(list(pooled_values(folders, metric).values()))
        print(f"| {name} | {p.n} | **{p.mean:+.2f}%** | {p.low:+.2f} … {p.high:+.2f}% | {p.better} / {p.worse} "
              f"| {p.worst:+.2f}% |")  # fmt: skip


def pooled_values(folders: list[Path], metric: str) -> dict[tuple[int, str], float]:
    """(folder index, clip) -> BD-rate %, over a policy's folders in order."""
    return {(i, clip): v for i, f in enumerate(folders) for clip, v in clip_bdrates(f, metric).items()}


def print_versus(policies: dict[str, list[Path]], ref: str, metric: str = "psnr_y") -> None:
    """Paired differences policy - ref over the clips both were evaluated on (the i-th folders paired)."""
    base = pooled_values(policies[ref], metric)
    print(f"\n| policy − {ref} | paired clips | mean difference, {metric} | 95% interval | "
          f"better / worse than {ref} |\n|---|---:|---:|---|---|")  # fmt: skip
    for name, folders in policies.items():
        if name == ref:
            continue
        mine = pooled_values(folders, metric)
        common = sorted(set(mine) & set(base))
        if not common:
            print(f"| {name} | 0 | – | – | – |")
            continue
        d = pool_clips([mine[k] - base[k] for k in common])
        print(f"| {name} | {d.n} | **{d.mean:+.2f}** | {d.low:+.2f} … {d.high:+.2f} | {d.better} / {d.worse} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("policies", nargs="+", metavar="NAME=FOLDER[,FOLDER...]",
                   help="a policy's name and its evaluate.py report folders, comma-separated")  # fmt: skip
    p.add_argument("--metric", default="psnr_y", choices=("psnr_y", "psnr_y_frame_mean", "ssim_y"))
    p.add_argument("--versus", default=None, metavar="NAME", help="also the paired difference of every policy - NAME")
    ns = p.parse_args()
    policies: dict[str, list[Path]] = {}
    for item in ns.policies:
        name, sep, folders = item.partition("=")
        paths = [Path(f) for f in folders.split(",") if f]
        missing = [str(f) for f in paths if not (f / "bdrate.csv").is_file()]
        if not (name and sep and paths) or missing:
            p.error(f"{item!r}: want NAME=FOLDER[,FOLDER...] of evaluate.py report folders"
                    + (f" (no bdrate.csv in {', '.join(missing)})" if missing else ""))  # fmt: skip
        policies[name] = paths
    if ns.versus is not None and ns.versus not in policies:
        p.error(f"--versus {ns.versus!r}: not one of the policies ({', '.join(policies)})")
    print(f"`python bench/pool_eval.py {' '.join(sys.argv[1:])}`\n")
    print_pooled(policies, ns.metric)
    if ns.versus is not None:
        print_versus(policies, ns.versus, ns.metric)
    return 0


if __name__ == "__main__":
    sys.exit(main())
