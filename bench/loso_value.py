"""What a recipe's key-frame decision is worth on a training source it was not fitted on, read off real encodes.

    python bench/loso_value.py --codec x264 --sweeps data/keysweep_x264.jsonl            # seconds
    python bench/loso_value.py --codec x264 --sweeps data/keysweep_x264.jsonl --variants "k=1:consensus=1;no state:key="
    python bench/loso_value.py --codec x264 --sweeps S --judge visp --policy x264   # a policy file's own answers too

The held-out split chose every recipe so far (BENCHMARKS.md §2.4), so its figures are optimistic,
and the test split may be looked at only once per shipped policy. This script judges a recipe on
the training content alone, by nested leave-one-source-out: for each training source i, the
recipe (gain model, consensus over the remaining sources, gain_model.consensus_offset) is fitted
on the oracle records of every other source, and its answer for the key mini-GOP of each of
source i's key sweeps is looked up in that sweep, where every key offset -4..+4 was really
encoded (bench/oracle_data.py --search key: the other mini-GOPs at 0, where the shipped policies
leave them):

    value(point) = ΔPSNR-Y(a) - slope * log2(bits(a) / bits(0)),   a = round(a*(s)),

dB at equal rate, with the window's own RD slope from its sweeps' Δ=0 encodes (dB per doubling
of bits); as a rate, 100 * (2^(-value / slope) - 1) % (negative = fewer bits for the same
PSNR-Y). Beside it: the best offset of each sweep (the sweep's oracle, an upper bound with
selected noise in it), each window's one best offset at all its rates (what a policy that knew
the content but not the rate could get, selected in-sample too) and the best constant key offset
fitted without source i (what position alone says).

--policy FILE (a path or a shipped name; repeatable) adds a policy file's own key answers, round(action x its
max ΔQP) as the encoder applies them, with no refit: judged on sweeps of content it was not fitted on (--judge
a set outside its recipe), an out-of-sample figure; on its own training sets, an in-sample one.

A variant is "name:option=value,..." with options consensus (k), key ('+'-separated terms of g(s)
on the key mini-GOP; empty = none; a term is a state feature or its hinge, "fp_reuse>0.9" =
max(0, fp_reuse - 0.9), gain_model.parse_term), curv ('+'-separated terms the key mini-GOP's
curvature c(s) depends on; default one curvature), sweeps (1 = fit on the key sweeps of the
fitting sets too, the left-out source's excepted), ridge, clamp (1 = clip the state features g(s)
uses to the range seen in the fitting sources before predicting: no extrapolation), low (the lowest
key offset answered, default -4; answers below -4 need sweeps of those offsets: bench/oracle_data.py
--offsets, passed as a second --sweeps; an answer no sweep encoded is counted as 0 dB and warned about), pick (τ, dB:
the key answers the better of its probes where it beats the other and Δ=0 by more than τ, imitation.key_pick_offsets;
the records need the probes' zero encode, bench/probe_zero.py).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import clips  # noqa: E402
import gain_model  # noqa: E402
import imitation  # noqa: E402
import oracle_records  # noqa: E402
import policy  # noqa: E402
from bench import oracle_data  # noqa: E402
from state import FEATURE_NAMES  # noqa: E402

MAX_DELTA_QP = 4  # the shipped policies' action range, QP
TABLE = 8  # the sweep table holds offsets -TABLE..+TABLE (sweeps usually cover -4..+4; wider ones, more)


@dataclass(frozen=True)
class Variant:
    name: str
    consensus: float
    key: tuple[str, ...]
    ridge: float = 3.0
    clamp: bool = False
    gate: bool = False
    curvature: tuple[str, ...] = ()
    sweeps: bool = False  # also fit on the key sweeps of the fitting sets (make_policy.py --key-sweeps)
    low: int = -MAX_DELTA_QP  # the lowest key offset answered (the fits' range is then ±|low|); the highest is +4
    pick: float | None = None  # τ: the key answers its probes' pick (imitation.key_pick_offsets), no gain model


def parse_variants(text: str, base: Variant) -> list[Variant]:
    """'name:consensus=1,key=fp_reuse;name2:key=' -> variants of `base` (';' between variants, '+' between features)."""
    out = [base]
    for item in filter(None, (t.strip() for t in text.split(";"))):
        name, _, opts = item.partition(":")
        v = replace(base, name=name.strip())
        for opt in filter(None, opts.split(",")):
            k, _, val = opt.partition("=")
            if k == "consensus":
                v = replace(v, consensus=float(val))
            elif k == "key":
                v = replace(v, key=_terms(val, item))
            elif k == "curv":
                v = replace(v, curvature=_terms(val, item))
            elif k == "ridge":
                v = replace(v, ridge=float(val))
            elif k in ("clamp", "gate", "sweeps"):
                v = replace(v, **{k: val == "1"})
            elif k == "pick":
                v = replace(v, pick=float(val))
            elif k == "low":
                v = replace(v, low=int(val))
                if not -TABLE <= v.low <= -1:
                    raise SystemExit(f"--variants: low={val} in {item!r}: want -{TABLE}..-1")
            else:
                known = "consensus, key, curv, ridge, clamp, gate, sweeps, low, pick"
                raise SystemExit(f"--variants: unknown option {k!r} in {item!r} ({known})")
        out.append(v)
    return out


def _terms(text: str, item: str) -> tuple[str, ...]:
    """'fp_reuse>0.9+gop_left' -> its gain-model terms (gain_model.parse_term), or exit naming the bad one."""
    terms = tuple(filter(None, text.split("+")))
    for t in terms:
        try:
            gain_model.term_features(t)
        except ValueError as e:
            raise SystemExit(f"--variants: {e} in {item!r}") from None
    return terms


def swept_minigop(sweep: dict) -> int:
    """The mini-GOP a key sweep moved: the one whose offset is not 0 in its candidates (0 for a one-GOP window)."""
    moved = {i for c in sweep["candidates"] for i, a in enumerate(c["offsets"]) if a != 0}
    if len(moved) != 1:
        raise ValueError(f"{sweep['key']}: a key sweep moves one mini-GOP, this one moves {sorted(moved)}")
    return moved.pop()


def offset_values(sweep: dict, minigop: int, slope: float) -> np.ndarray:
    """Value of each offset -TABLE..+TABLE given at mini-GOP `minigop` in one sweep record (2 TABLE + 1; 0 at Δ=0,
    NaN where not swept), dB at equal rate against the record's Δ=0 encode; slope: the window's RD slope."""
    b = sweep["baseline"]
    v = np.full(2 * TABLE + 1, np.nan)
    v[TABLE] = 0.0
    for c in sweep["candidates"]:
        v[c["offsets"][minigop] + TABLE] = gain_model.equal_rate_gain(c["psnr_y"], c["bits"], b["psnr_y"], b["bits"],
                                                                      slope)  # fmt: skip
    return v


def window_best_means(values: np.ndarray) -> np.ndarray:
    """Each column's mean over the rows that encoded it (choices,); -inf for a column no row encoded."""
    swept = ~np.isnan(values)
    return np.where(swept.any(axis=0), np.nansum(values, axis=0) / np.maximum(swept.sum(axis=0), 1), -np.inf)


def window_best_values(values: np.ndarray, windows: list[str]) -> np.ndarray:
    """What knowing the content (not the rate) is worth: each point's value (P,) under its window's one best
    column at all the window's rates (chosen in-sample); values (P, choices), NaN where not encoded."""
    picked = np.zeros(len(values))
    for w in set(windows):
        rows = np.array([x == w for x in windows])
        # mean of each column over the rates that encoded it; a column no rate encoded never wins
        picked[rows] = values[rows, int(np.argmax(window_best_means(values[rows])))]
    return picked


def window_best_other_columns(values: np.ndarray, windows: list[str]) -> np.ndarray:
    """Each point's column (P,) that is best on its window's other rates (leave one rate out); values (P, choices),
    NaN where not encoded. -1 for a point whose window has one rate: nothing to choose from, it answers Δ=0."""
    columns = np.full(len(values), -1)
    for w in set(windows):
        rows = np.flatnonzero([x == w for x in windows])
        for i in rows if len(rows) > 1 else []:
            columns[i] = int(np.argmax(window_best_means(values[rows[rows != i]])))
    return columns


def window_best_other_rates(values: np.ndarray, windows: list[str]) -> np.ndarray:
    """window_best_values out of sample: each point's value (P,) under the column that is best on its window's
    other rates (window_best_other_columns), so that no point's own noise picks its column; values (P, choices),
    NaN where not encoded. A window with one rate answers Δ=0 (value 0)."""
    columns = window_best_other_columns(values, windows)
    return np.where(columns >= 0, values[np.arange(len(values)), columns], 0.0)


def sweep_table(sweeps: list[dict], slopes: dict[str, float]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Key-mini-GOP states (P, OBS_DIM), value of each offset -TABLE..+TABLE (P, 2 TABLE + 1; NaN where not swept),
    dB at equal rate, and the windows.

    slopes: each window's RD slope, dB per doubling of bits (gain_model.window_slopes of the sweeps).
    """
    obs, values, windows = [], [], []
    for r in sweeps:
        key = swept_minigop(r)
        obs.append(oracle_records.observations(r["baseline_steps"])[0][key])
        values.append(offset_values(r, key, slopes[r["window"]]))
        windows.append(r["window"])
    return np.asarray(obs), np.asarray(values), windows


def first_moved_minigop(record: dict) -> int:
    """The first mini-GOP a sweep's candidates move: a key or lead sweep's key, a ramp's first after the key."""
    return min(i for c in record["candidates"] for i, a in enumerate(c["offsets"]) if a != 0)


def paired_table(others: list[dict], sweeps: list[dict], slopes: dict[str, float]) -> np.ndarray:
    """Value of each offset -TABLE..+TABLE of another sweep kind at each key sweep's point (P, 2 TABLE + 1), dB at
    equal rate against that sweep's own Δ=0 encode, read at the first mini-GOP it moves (bench/oracle_data.py
    --search lead: the key and the next mini-GOP together; --search ramp: the five after the key); a row of NaN
    where that point has no such sweep."""
    by_point = {(r["window"], f"{r['bpp']:.5f}"): r for r in others}
    out = np.full((len(sweeps), 2 * TABLE + 1), np.nan)
    for i, r in enumerate(sweeps):
        other = by_point.get((r["window"], f"{r['bpp']:.5f}"))
        if other is not None:
            out[i] = offset_values(other, first_moved_minigop(other), slopes[r["window"]])
    return out


def answer(variant: Variant, fit_records: list[dict], obs: np.ndarray) -> np.ndarray:
    """The recipe's key offset, QP (rounded as the encoder applies it), for states obs, fitted on fit_records."""
    return answer_from_moves(variant, gain_model.move_samples(fit_records), obs)


def answer_from_moves(variant: Variant, moves: gain_model.MoveSamples, obs: np.ndarray) -> np.ndarray:
    """answer() from the fitting records' moves (gain_model.move_samples)."""
    if variant.pick is not None:  # read off the probes of the state alone: nothing fitted
        return imitation.key_pick_offsets(obs, variant.pick).astype(int)
    spec = gain_model.GainFeatures(key=variant.key, inter=(), curvature=variant.curvature)
    inside = np.ones(len(obs), bool)
    if (variant.clamp or variant.gate) and variant.key:
        cols = sorted({FEATURE_NAMES.index(name) for t in variant.key for name in gain_model.term_features(t)})
        key_rows = moves.obs[:, FEATURE_NAMES.index("has_key")] > 0.5
        lo, hi = moves.obs[key_rows][:, cols].min(axis=0), moves.obs[key_rows][:, cols].max(axis=0)
        inside = ((obs[:, cols] >= lo) & (obs[:, cols] <= hi)).all(axis=1)
        if variant.clamp:
            obs = obs.copy()
            obs[:, cols] = np.clip(obs[:, cols], lo, hi)
    reach = -variant.low
    if variant.consensus > 0:
        a = gain_model.consensus_offset(moves, obs, reach, variant.ridge, variant.consensus, spec)
    else:
        a = gain_model.fit_gain_model(moves, variant.ridge, spec).best_offset(obs, reach)
    a = np.where(inside | ~variant.gate, a, 0.0)
    return np.clip(np.round(a), variant.low, MAX_DELTA_QP).astype(int)


def policy_key_answers(pol: policy.Policy, obs: np.ndarray) -> np.ndarray:
    """A policy file's key offsets, QP, at states obs (P, OBS_DIM): round(action * max_delta_qp), as the encoder
    applies them (state.action_to_qp with a QP unit of 1)."""
    acts = np.array([float(pol.act(o.astype(np.float32))[0]) for o in obs])
    return np.clip(np.round(acts * pol.max_delta_qp), -TABLE, TABLE).astype(int)


def as_rate(value_db: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """dB at equal rate -> % rate at equal PSNR-Y (negative = fewer bits), point by point.

    The tables print the mean of these per-point figures, where points with a small RD slope (flat content, high
    rates) weigh most: read that column for direction and a real BD-rate for size (BENCHMARKS.md §2.4.40: +5% here
    was +0.45% of BD-rate on the same windows)."""
    return 100.0 * (np.power(2.0, -value_db / slope) - 1.0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codec", default="x264", choices=("svtav1", "x264", "vp9"))
    p.add_argument("--oracle", type=Path, default=None, help="oracle records (default data/oracle_CODEC.jsonl)")
    p.add_argument("--sweeps", type=Path, required=True, action="append",
                   help="key-sweep records (bench/oracle_data.py --search key); repeat it to add a sweep of other "
                        "offsets at the same points (--offsets): their candidates join (oracle_records.merge_sweeps)")
    p.add_argument("--windows", default=None, help="window sets (default: the codec's shipped recipe)")
    p.add_argument("--judge", default=None,
                   help="window sets whose key sweeps judge (default: --windows); e.g. tail: the short last GOPs")
    p.add_argument("--oracle-seed", type=int, default=None,
                   help="the oracle records' draw of rates (oracle_data.py --seed; default: the shipped draw)")
    p.add_argument("--variants", default="", help="more recipes to compare (module docstring)")
    p.add_argument("--lead-sweeps", type=Path, default=None,
                   help="lead-sweep records (bench/oracle_data.py --search lead): also judge each recipe's key "
                        "offset given to the next mini-GOP too, on the points both sweeps have")  # fmt: skip
    p.add_argument("--policy", action="append", default=[], metavar="FILE",
                   help="a policy file (or shipped name) whose own key answers (no refit) are judged too; repeatable")
    p.add_argument("--key-probe", action="store_true",
                   help="oracle records and sweeps searched with --key-probe (keys ending /kp): their states carry it")
    ns = p.parse_args()
    kp = oracle_data.probe_suffix(ns.key_probe)
    try:
        policies = [policy.load(policy.named(name)) for name in ns.policy]
    except policy.PolicyError as e:
        p.error(f"--policy: {e}")
    recipe = imitation.SHIPPED_RECIPES[ns.codec]
    windows = ns.windows or recipe.windows
    for flag, sets in (("--windows", windows), ("--judge", ns.judge or "")):
        if error := clips.window_sets_error(flag, sets):
            p.error(error)
    oracle_path = ns.oracle or ROOT / f"data/oracle_{ns.codec}.jsonl"
    inputs = [*(("--sweeps", f) for f in ns.sweeps), ("--oracle", oracle_path), ("--lead-sweeps", ns.lead_sweeps)]
    for flag, path in inputs:
        if path is None:
            continue
        if error := oracle_data.missing_records(flag, [path]):
            p.error(error)
    oracle = oracle_data.of_window_sets(oracle_records.read_records([oracle_path]), windows, seed=ns.oracle_seed,
                                        suffix=kp)  # fmt: skip
    try:
        sweep_records = oracle_records.merge_sweeps(oracle_records.read_records(ns.sweeps))
    except ValueError as e:
        p.error(f"--sweeps: {e}")
    sweeps = oracle_data.of_window_sets(sweep_records, ns.judge or windows, "key", suffix=kp)
    if not oracle or not sweeps:
        raise SystemExit(f"no oracle records ({len(oracle)}) or key sweeps ({len(sweeps)}) of the sets {windows}")
    feats = recipe.features
    shipped = Variant(f"shipped (key: {','.join(feats.key or ())}, k = {recipe.consensus:g})", recipe.consensus,
                      tuple(feats.key or ()), curvature=feats.curvature)  # fmt: skip
    variants = parse_variants(ns.variants, shipped) + [Variant("no state (one key offset)", 0.0, ())]
    slopes = gain_model.window_slopes(sweeps)
    if ns.lead_sweeps:
        lead_records = oracle_records.read_records([ns.lead_sweeps])
        leads = paired_table(oracle_data.of_window_sets(lead_records, ns.judge or windows, "lead"), sweeps, slopes)
        sweeps = [r for r, row in zip(sweeps, leads, strict=True) if not np.isnan(row).all()]
        leads = leads[~np.isnan(leads).all(axis=1)]
        if not sweeps:
            raise SystemExit(f"--lead-sweeps: no lead sweep at the key sweeps' points of {ns.judge or windows}")
    obs, values, wins = sweep_table(sweeps, slopes)
    slope = np.array([slopes[w] for w in wins])
    source = np.array([oracle_records.source_of(w) for w in wins])
    sources = sorted(set(source))
    answers = {v.name: np.zeros(len(wins), int) for v in variants}
    use_sweeps = any(v.sweeps for v in variants)
    fit_sweeps = oracle_data.of_window_sets(sweep_records, windows, "key", suffix=kp) if use_sweeps else []
    for s in sources:
        fit = [r for r in oracle if oracle_records.source_of(r["window"]) != s]
        more = [r for r in fit_sweeps if oracle_records.source_of(r["window"]) != s]
        test = source == s
        for v in variants:
            answers[v.name][test] = answer(v, fit + more if v.sweeps else fit, obs[test])
    best = np.nanmax(values, axis=1)
    window_best = window_best_values(values, wins)
    print(f"{ns.codec}, window sets {windows}: {len(oracle)} oracle points fit, {len(sweeps)} key sweeps of "
          f"{ns.judge or windows} judge, "
          f"{len(sources)} sources; value of the key decision on the left-out source, dB at equal rate "
          f"(mean over its sweep points) and as rate %")  # fmt: skip
    print("\n| recipe | " + " | ".join(sources) + " | mean over points, dB | as rate % | points worse than Δ=0 |")
    print("|---|" + "---:|" * (len(sources) + 3))
    for pol in policies:  # the file as it answers, fitted on whatever it was fitted on: not left-out
        answers[f"policy {pol.path} (its own answers)"] = policy_key_answers(pol, obs)
    rows = [(name, values[np.arange(len(wins)), offsets + TABLE]) for name, offsets in answers.items()]
    for name, val in rows:  # an answer no sweep encoded would count as Δ=0: say so
        if missing := int(np.isnan(val).sum()):
            print(f"WARNING: {name}: {missing} answers outside the swept offsets count as 0 dB")
    if ns.lead_sweeps:
        at = np.arange(len(wins))
        rows += [(f"{v.name}, the next mini-GOP too (lead)", leads[at, answers[v.name] + TABLE])
                 for v in variants]
    rows.append(("each window's best offset at all its rates (content known)", window_best))
    rows.append(("each window's best offset on its other rates (content known, out of sample)",
                 window_best_other_rates(values, wins)))  # fmt: skip
    rows.append(("each sweep's best offset (upper bound)", best))
    if ns.lead_sweeps:
        rows.append(("each lead sweep's best offset (upper bound)", np.nanmax(leads, axis=1)))
        rows.append(("the better of the two sweeps' best (upper bound)", np.maximum(best, np.nanmax(leads, axis=1))))
    for name, val in rows:
        val = np.nan_to_num(val, nan=0.0)
        per = " | ".join(f"{val[source == s].mean():+.3f}" for s in sources)
        worse = int((val < -1e-9).sum())
        print(f"| {name} | {per} | **{val.mean():+.4f}** | {as_rate(val, slope).mean():+.2f} | {worse} of {len(val)} |")
    print("\n| recipe | key offsets answered (count) |\n|---|---|")
    for name, offsets in answers.items():
        counts = np.bincount(offsets + TABLE, minlength=2 * TABLE + 1)
        print(f"| {name} | " + ", ".join(f"{i - TABLE:+d}: {n}" for i, n in enumerate(counts) if n) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
