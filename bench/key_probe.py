"""Would a probe encode tell the key decision (or the ramp's)? Two encodes of the point against its full sweep.

    python bench/oracle_data.py --codec svtav1 --search key --windows W --out K                            # sweeps
    python bench/oracle_data.py --codec svtav1 --search key --offsets=-3,3 --preset 13 --windows W --out P # probes
    python bench/key_probe.py --sweeps K --probes P [--judge-sweeps HK --judge-probes HP] [--policy svtav1]
    python bench/key_probe.py --sweeps K [--judge-sweeps HK]             # each sweep's own ±3: the encoder's probe
    python bench/key_probe.py --search ramp --sweeps R [--judge-sweeps HR]   # R: oracle_data.py --search ramp

The probe is what an encoder could measure before coding a GOP: the same GOP under the same rate
control, once with the key mini-GOP 3 QP finer and once 3 QP coarser. Its figure is the contrast
p = v(-3) - v(+3), dB at equal rate (loso_value.offset_values; the Δ=0 encode cancels out, so the two
probe encodes are all it needs). The label is the full sweep's contrast at the encoder's own preset,
c = mean v(-4..-1) - mean v(+1..+4). --probes gives probes coded apart (at another preset: --preset N);
without it each sweep's own -3 and +3 encodes are the probe, which is what the built-in encoder's
--key-probe codes (at the encode's own preset) on these one-GOP windows. With --search ramp the
sweeps and the probe move the five mini-GOPs after the key together (oracle_data.py --search ramp),
a decision of its own that a ramp probe would measure (BENCHMARKS.md §2.4.44).

On the sweeps and probes of --sweeps/--probes (the training side) it prints r(p, c) beside the state's
best single feature, and the value of the rule "offset -m if p > τ, +m if p < -τ, else 0" for m = 1, 2,
3, with τ chosen leave one source out from TAUS: each source's points get the τ best on the other
sources. With --judge-sweeps (other clips: the held-out split, only described; --judge-probes with
--probes) the rule's τ is the one best on all training points. Each table also gives the state-only
references: a policy file's own key answers (--policy, key sweeps only), and the content-known
ceilings of bench/key_ceiling.py. BENCHMARKS.md §2.4.41, §2.4.43, §2.4.44.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bdrate  # noqa: E402
import gain_model  # noqa: E402
import oracle_records  # noqa: E402
import policy  # noqa: E402
from bench import key_ceiling, loso_value, oracle_data  # noqa: E402
from state import FEATURE_NAMES  # noqa: E402

TAUS = (0.0, 0.02, 0.05, 0.1, 0.2)  # dB of probe contrast below which the rule answers Δ=0
PROBE = 3  # the probe's offsets: -PROBE and +PROBE
T = loso_value.TABLE


@dataclass
class ProbeTable:
    """Key sweeps with a probe at the same point: the sweep values (P, 2 TABLE + 1; dB at equal rate, NaN where not
    swept), the probe contrast p (P,), dB, key states (P, OBS_DIM), windows, sources and RD slopes (P,)."""

    values: np.ndarray
    probe: np.ndarray
    obs: np.ndarray
    windows: list[str]
    sources: np.ndarray
    slopes: np.ndarray
    encodes: np.ndarray  # (P, 2 TABLE + 1, 2): each offset's encode, (bits, PSNR-Y dB); NaN where not swept


def point_of(record: dict) -> tuple[str, str]:
    return record["window"], f"{record['bpp']:.5f}"


def probe_table(sweep_file: Path, probe_file: Path | None = None, probe_slope: float | None = None,
                search: str = "key") -> ProbeTable:  # fmt: skip
    """The sweeps of `sweep_file` (oracle_data.py --search `search`: key or ramp) that have a probe in `probe_file`
    (the same search with --offsets=-3,3 at the same points; None: each sweep's own -3 and +3 encodes), valued with
    the sweeps' window slopes; the probe with `probe_slope` (dB per doubling of bits) instead where given, as the
    encoder's probe is (state.PROBE_SLOPE_DB). Values, states and encodes are read at the first mini-GOP a sweep
    moves: the key, or a ramp's first mini-GOP after it (the others of a ramp share its offset)."""
    sweeps = key_ceiling.of_search(oracle_records.read_records([sweep_file]), search)
    if probe_file is None:
        probes = {point_of(r): r for r in sweeps}
    else:
        probes = {point_of(r): r for r in oracle_records.read_records([probe_file]) if r.get("search") == search}
    sweeps = [r for r in sweeps if point_of(r) in probes]
    if not sweeps:
        raise ValueError(f"{probe_file or sweep_file}: no probe at a {search} sweep's point of {sweep_file}")
    slopes = gain_model.window_slopes(sweeps)
    obs, values, windows = [], [], []
    probe = np.empty(len(sweeps))
    encodes = np.full((len(sweeps), 2 * T + 1, 2), np.nan)
    for i, r in enumerate(sweeps):
        moved = loso_value.first_moved_minigop(r)
        obs.append(oracle_records.observations(r["baseline_steps"])[0][moved])
        values.append(loso_value.offset_values(r, moved, slopes[r["window"]]))
        windows.append(r["window"])
        encodes[i, T] = r["baseline"]["bits"], r["baseline"]["psnr_y"]
        for c in r["candidates"]:
            encodes[i, c["offsets"][moved] + T] = c["bits"], c["psnr_y"]
        pr = probes[point_of(r)]
        slope = slopes[r["window"]] if probe_slope is None else probe_slope
        v = loso_value.offset_values(pr, loso_value.first_moved_minigop(pr), slope)
        probe[i] = v[T - PROBE] - v[T + PROBE]
    return ProbeTable(np.asarray(values), probe, np.asarray(obs), windows,
                      np.array([oracle_records.source_of(w) for w in windows]), np.array([slopes[w] for w in windows]),
                      encodes)  # fmt: skip


def sweep_contrast(values: np.ndarray) -> np.ndarray:
    """c (P,): mean value of the finer key offsets -TABLE..-1 minus that of the coarser ones +1..+TABLE, dB."""
    return np.nanmean(values[:, :T], axis=1) - np.nanmean(values[:, T + 1 :], axis=1)


def rule(probe: np.ndarray, tau: float, mag: int) -> np.ndarray:
    """Key offsets (P,): -mag where the probe says finer pays (p > tau), +mag where coarser does (p < -tau), else 0."""
    return np.where(probe > tau, -mag, np.where(probe < -tau, mag, 0))


def value_of(values: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Each point's value (P,) under its answered offset, dB at equal rate; an offset no sweep encoded counts as 0."""
    return np.nan_to_num(values[np.arange(len(offsets)), offsets + T], nan=0.0)


def best_tau(t: ProbeTable, mag: int, rows: np.ndarray | None = None) -> float:
    """The τ of TAUS with the most mean value over `rows` of t (all points by default)."""
    rows = np.ones(len(t.probe), bool) if rows is None else rows
    return max(TAUS, key=lambda tau: value_of(t.values[rows], rule(t.probe[rows], tau, mag)).mean())


def loso_answers(t: ProbeTable, mag: int) -> np.ndarray:
    """The rule's offsets (P,), each source's points under the τ best on the other sources."""
    out = np.zeros(len(t.probe), int)
    for s in np.unique(t.sources):
        mine = t.sources == s
        out[mine] = rule(t.probe[mine], best_tau(t, mag, ~mine), mag)
    return out


def window_bd_rates(t: ProbeTable, offsets: np.ndarray) -> dict[str, float]:
    """BD-rate (%, PSNR-Y) per window of its points answered with `offsets` (P,) against their Δ=0 encodes: each
    window's rates make the two curves (an offset no sweep encoded counts as Δ=0; of rates whose Δ=0 encodes are the
    same stream, the first). NaN where no BD-rate exists."""
    out = {}
    for w in sorted(set(t.windows)):
        rows = np.flatnonzero([x == w for x in t.windows])
        _, first = np.unique(t.encodes[rows, T], axis=0, return_index=True)
        rows = rows[np.sort(first)]
        picked = t.encodes[rows, offsets[rows] + T]
        picked = np.where(np.isnan(picked), t.encodes[rows, T], picked)
        base = t.encodes[rows, T]
        out[w] = bdrate.safe_bd_rate(list(picked[:, 0]), list(picked[:, 1]), list(base[:, 0]), list(base[:, 1]))
    return out


def other_rates_offsets(t: ProbeTable) -> np.ndarray:
    """The offsets (P,) of loso_value.window_best_other_rates: each point's best on its window's other rates."""
    columns = loso_value.window_best_other_columns(t.values, t.windows)
    return np.where(columns >= 0, columns - T, 0)


def print_rows(t: ProbeTable, rows: dict[str, tuple[np.ndarray, int]]) -> None:
    """One table row per decision: (its value per point (P,), dB; how many points it moved)."""
    print("| decision | mean dB | as rate % | points worse than Δ=0 | points moved |")
    print("|---|---:|---:|---:|---:|")
    for name, (val, moved) in rows.items():
        print(f"| {name} | **{val.mean():+.4f}** | {loso_value.as_rate(val, t.slopes).mean():+.2f} | "
              f"{int((val < -1e-9).sum())} | {moved} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--search", choices=("key", "ramp"), default="key",
                   help="the decision the sweeps and probes move (oracle_data.py --search; default key)")
    p.add_argument("--sweeps", type=Path, required=True, help="training-side sweeps (oracle_data.py --search S)")
    p.add_argument("--probes", type=Path, default=None,
                   help="probes at their points (--offsets=-3,3 --preset N); default: each sweep's own ±3 encodes")
    p.add_argument("--judge-sweeps", type=Path, default=None, help="other clips' sweeps, only described")
    p.add_argument("--judge-probes", type=Path, default=None, help="their probes (with --probes)")
    p.add_argument("--policy", action="append", default=[], metavar="FILE",
                   help="a policy file or shipped name whose own key answers are shown (repeatable)")  # fmt: skip
    p.add_argument("--probe-slope", type=float, default=None, metavar="DB",
                   help="value the probes at this RD slope (dB per doubling of bits; the encoder's: 2.5) instead of "
                        "each window's own")  # fmt: skip
    ns = p.parse_args(argv)
    if ns.judge_probes is not None and (ns.judge_sweeps is None or ns.probes is None):
        p.error("--judge-probes goes with --judge-sweeps and --probes")
    if ns.judge_sweeps is not None and (ns.probes is None) != (ns.judge_probes is None):
        p.error("--probes and --judge-probes go together: both sides probed the same way")
    if ns.policy and ns.search != "key":
        p.error("--policy shows a policy's key answers: it needs --search key")
    files = [("--sweeps", ns.sweeps), ("--probes", ns.probes), ("--judge-sweeps", ns.judge_sweeps),
             ("--judge-probes", ns.judge_probes)]  # fmt: skip
    for flag, path in files:
        if path is not None and (error := oracle_data.missing_records(flag, [path])):
            p.error(error)
    try:
        policies = [policy.load(policy.named(name)) for name in ns.policy]
        train = probe_table(ns.sweeps, ns.probes, ns.probe_slope, ns.search)
        judged = (None if ns.judge_sweeps is None
                  else probe_table(ns.judge_sweeps, ns.judge_probes, ns.probe_slope, ns.search))  # fmt: skip
    except (policy.PolicyError, ValueError) as e:
        p.error(str(e))

    for label, t in (("training side", train), ("judged clips", judged)):
        if t is None:
            continue
        c = sweep_contrast(t.values)
        fp = t.obs[:, FEATURE_NAMES.index("fp_propagation")]
        where = f"{len(set(t.windows))} windows, {len(set(t.sources))} sources"
        print(f"\n## {label}: {len(t.probe)} {ns.search} sweeps of {where}")
        print(f"r(probe contrast, sweep contrast) = {np.corrcoef(t.probe, c)[0, 1]:+.3f}; "
              f"r(fp_propagation, sweep contrast) = {np.corrcoef(fp, c)[0, 1]:+.3f}\n")
        rows = {}
        for mag in (1, 2, 3):
            if t is train:
                a, how = loso_answers(t, mag), "τ left-out source"
            else:
                tau = best_tau(train, mag)
                a, how = rule(t.probe, tau, mag), f"τ {tau} from the training side"
            rows[f"probe rule ±{mag}, {how}"] = (value_of(t.values, a), int((a != 0).sum()))
        for pol in policies:
            a = loso_value.policy_key_answers(pol, t.obs)
            rows[f"policy {pol.path}: its own key answers"] = (value_of(t.values, a), int((a != 0).sum()))
        for name, val in key_ceiling.ceiling_rows(t.values, None, t.windows).items():
            rows[name.replace("key:", f"{ns.search}:", 1)] = (np.nan_to_num(val, nan=0.0), 0)
        print_rows(t, rows)
        if t is judged:  # one window per clip, six rates each: a BD-rate per clip over the GOP the sweeps coded
            answers = {f"probe rule ±{m}": rule(t.probe, best_tau(train, m), m) for m in (1, 2, 3)}
            answers |= {f"policy {pol.path}": loso_value.policy_key_answers(pol, t.obs) for pol in policies}
            answers["content known, out of sample"] = other_rates_offsets(t)
            clips = sorted(set(t.windows))
            names = " | ".join(oracle_records.source_of(c) for c in clips)
            print(f"\n| BD-rate vs Δ=0, PSNR-Y, % | {names} | mean |")
            print("|---|" + "---:|" * (len(clips) + 1))
            for name, a in answers.items():
                bd = window_bd_rates(t, a)
                per = " | ".join(f"{bd[c]:+.2f}" for c in clips)
                print(f"| {name} | {per} | **{np.nanmean(list(bd.values())):+.2f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
