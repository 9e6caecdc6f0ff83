"""What a key-frame decision (and a ramp after it) could gain on any clips, and what a policy takes, off real sweeps.

    python bench/oracle_data.py --codec svtav1 --search key --inputs CLIPS/ --frames 64 --out K    # 48 sweeps: 3.5 min
    python bench/oracle_data.py --codec svtav1 --search ramp --inputs CLIPS/ --frames 64 --out R   # optional
    python bench/key_ceiling.py --sweeps K [--ramp R] [--policy svtav1] [--policy mine.pt]

`bench/loso_value.py` judges a recipe by leave-one-source-out fits on the training window sets. This
script needs no fit and no window set: on any clips' key sweeps (every key offset -4..+4 really
encoded at 6 rates per clip; your own clips with --inputs, or a window set with --windows) it
reports, per clip and overall, dB at equal rate against each sweep's Δ=0 encode (the clip's RD
slope from its sweeps, loso_value.offset_values) and as rate % (a mean of per-point figures in which flat,
low-slope points weigh most: direction, not size; loso_value.as_rate):

  - each policy file's own answers (loso_value.policy_key_answers: the QPs the encoder applies);
  - each clip's one best key offset at all its rates: what a policy that knew the clip (not the rate)
    could get, chosen in-sample: the ceiling of a content-dependent key decision on these clips;
  - the same chosen out of sample: each rate gets the offset that is best on the clip's other rates, so
    that no rate's own noise picks its offset (what is left is the part of the ceiling a clip-level
    decision can really take);
  - each sweep's best offset: the upper bound, with each rate's noise selected in;
  - with --ramp (oracle_data.py --search ramp: every offset given to the five mini-GOPs after the key
    together, at the same points): the same for that decision, and each clip's one best choice among
    key and ramp offsets;

and the mean value of each offset per clip. On the held-out clips these are the ceilings a policy's
BD-rate should be read against (BENCHMARKS.md §2.4.39).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gain_model  # noqa: E402
import oracle_records  # noqa: E402
import policy  # noqa: E402
from bench import loso_value, oracle_data  # noqa: E402

SHOWN = 4  # the offsets -SHOWN..+SHOWN shown per clip


def of_search(records: list[dict], search: str) -> list[dict]:
    """The records of points searched by `search` (oracle_data.py --search), whatever their window or clip."""
    return [r for r in records if r["key"] == oracle_data.point_key(r["codec"], r["window"], r["bpp"], search)]


def ceiling_rows(key: np.ndarray, ramp: np.ndarray | None, windows: list[str]) -> dict[str, np.ndarray]:
    """The ceilings per point (P,), dB at equal rate: key (P, choices) and ramp values (NaN where not swept)."""
    rows = {
        "key: each clip's one best offset (content known)": loso_value.window_best_values(key, windows),
        "key: each clip's best offset on its other rates (content known, out of sample)":
            loso_value.window_best_other_rates(key, windows),
        "key: each sweep's best offset (upper bound)": np.nanmax(key, axis=1),
    }
    if ramp is not None:
        rows["ramp: each clip's one best offset (content known)"] = loso_value.window_best_values(ramp, windows)
        rows["ramp: each clip's best offset on its other rates (out of sample)"] = loso_value.window_best_other_rates(
            ramp, windows
        )
        rows["ramp: each sweep's best offset (upper bound)"] = np.nanmax(np.nan_to_num(ramp, nan=0.0), axis=1)
        both = np.concatenate([key, ramp], axis=1)
        rows["each clip's one best choice, key or ramp offset (content known)"] = loso_value.window_best_values(
            both, windows
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweeps", type=Path, required=True, help="key-sweep records (oracle_data.py --search key)")
    p.add_argument("--ramp", type=Path, default=None, help="ramp-sweep records at the same points (--search ramp)")
    p.add_argument("--policy", action="append", default=[], metavar="FILE",
                   help="a policy file or shipped name whose own key answers are judged (repeatable)")  # fmt: skip
    ns = p.parse_args(argv)
    for flag, path in (("--sweeps", ns.sweeps), ("--ramp", ns.ramp)):
        if path is not None and (error := oracle_data.missing_records(flag, [path])):
            p.error(error)
    try:
        policies = [policy.load(policy.named(name)) for name in ns.policy]
    except policy.PolicyError as e:
        p.error(f"--policy: {e}")
    sweeps = of_search(oracle_records.read_records([ns.sweeps]), "key")
    if not sweeps:
        p.error(f"--sweeps: {ns.sweeps} holds no key sweep (oracle_data.py --search key)")
    slopes = gain_model.window_slopes(sweeps)
    obs, key, windows = loso_value.sweep_table(sweeps, slopes)
    ramp = None
    if ns.ramp is not None:
        ramps = of_search(oracle_records.read_records([ns.ramp]), "ramp")
        ramp = loso_value.paired_table(ramps, sweeps, slopes)
        if np.isnan(ramp).all():
            p.error(f"--ramp: no ramp sweep of {ns.ramp} is at a key sweep's point")
    slope = np.array([slopes[w] for w in windows])
    rows = {}
    for pol in policies:
        column = loso_value.policy_key_answers(pol, obs) + loso_value.TABLE  # its offset, as a column of `key`
        rows[f"policy {pol.path}: its own key answers"] = key[np.arange(len(key)), column]
    rows |= ceiling_rows(key, ramp, windows)
    clips = sorted(set(windows))
    names = [oracle_records.source_of(c) for c in clips]
    ramp_note = "" if ramp is None else f", ramp sweeps at {int((~np.isnan(ramp).all(axis=1)).sum())} of their points"
    print(f"{len(sweeps)} key sweeps of {len(clips)} clips{ramp_note}; dB at equal rate, mean over a clip's points\n")
    print("| decision | " + " | ".join(names) + " | mean dB | as rate % | points worse than Δ=0 |")
    print("|---|" + "---:|" * (len(clips) + 3))
    for name, val in rows.items():
        val = np.nan_to_num(val, nan=0.0)  # an answer no sweep encoded counts as Δ=0
        per = " | ".join(f"{val[[w == c for w in windows]].mean():+.3f}" for c in clips)
        worse = int((val < -1e-9).sum())
        print(f"| {name} | {per} | **{val.mean():+.4f}** | {loso_value.as_rate(val, slope).mean():+.2f} | {worse} |")
    t = loso_value.TABLE
    for label, values in (("key", key), ("ramp", ramp)):
        if values is None:
            continue
        print(f"\n| {label} offset, mean dB | " + " | ".join(f"{a:+d}" for a in range(-SHOWN, SHOWN + 1)) + " |")
        print("|---|" + "---:|" * (2 * SHOWN + 1))
        for c, n in zip(clips, names, strict=True):
            at = np.array([w == c for w in windows]) & ~np.isnan(values).all(axis=1)
            if at.any():
                means = np.nanmean(values[at][:, t - SHOWN : t + SHOWN + 1], axis=0)
                print(f"| {n} | " + " | ".join(f"{m:+.3f}" for m in means) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
