"""How much of the oracle's gain is a decision, and how much a lucky draw (issue 8, BENCHMARKS.md §2.4.26).

    python bench/oracle_transfer.py --codec x264 --data data/oracle_x264.jsonl --windows train,static [--jobs 2]
    python bench/oracle_transfer.py --codec svtav1 --report DIR --inputs CLIPS/   # after evaluate.py oracle --out DIR

The oracle (oracle_search.run_oracle) keeps whichever of ~30 candidate encodes scored best; encodes
are chaotic, so part of what it finds is the luck of that one encode. This script replays each
stored oracle point's offsets on the same window at slightly other targets (--factors, default
0.97, 1.00, 1.03 of the point's bit/pixel): a fresh pass 1, the Δ=0 encode and the oracle's offsets
as a script. At 1.00 the replay must reproduce the stored encodes (a determinism check); at the
others, a decision that is about the content keeps its gain, a lucky draw does not. Gain is at
equal rate, the oracle's own measure:

    gain = ΔPSNR-Y - slope * log2(bits / bits_Δ=0),   slope = the window's RD slope (gain_model.window_slopes)

It prints, per window set, in all and per kind of move (key mini-GOPs, the others, both): the
stored gain, the replayed gain at each factor, and the share of the stored gain that survives
(mean replayed gain at the other factors / mean stored gain), the ceiling of what a policy that
sees the content, not the draw, can capture of the oracle.

--donor same-source / other-source replays another point's answer instead of the point's own
(another window of the same source, or the nearest point of another source: donor()): whether an
answer carries over to other frames. --report replays the oracle points of an `evaluate.py oracle`
report (the held-out clips' first GOP, as eval_quality.py --oracle runs it) on the clips it coded.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import clips  # noqa: E402
import eval_runs  # noqa: E402
import gain_model  # noqa: E402
import oracle_records  # noqa: E402
from bench import oracle_data  # noqa: E402
from bench.machine_info import machine  # noqa: E402
from learners import ZeroDeltaLearner  # noqa: E402
from state import FEATURE_NAMES  # noqa: E402


def replay_point(job: dict) -> dict:
    """Pass 1, Δ=0 and the scripted oracle offsets at each factor; {"key", "error"} when an encode failed."""
    try:
        return _replay(job)
    except (RuntimeError, OSError, ValueError) as exc:
        return oracle_data.error_record(job, str(exc).strip() or type(exc).__name__)


def _replay(job: dict) -> dict:
    settings = eval_runs.EvalSettings(codec=job["codec"], frames=job.get("frames", 0))
    video = eval_runs.probe_videos([Path(job["path"])], settings)[0]
    out = {"key": job["key"], "window": job["window"], "donor": job["donor"], "replays": {}}
    for factor in job["factors"]:
        work = Path(job["work"]) / f"{factor:g}"
        shutil.rmtree(work, ignore_errors=True)  # pass-1 statistics of another target would be reused
        if "kbps" in job:  # a point of an evaluate.py report: its target in kbit/s
            kbps = job["kbps"] * factor
        else:
            (kbps,) = eval_runs.targets_for(video, None, [job["bpp"] * factor])
        point = eval_runs.Point(video, kbps, work, settings)
        runner = eval_runs.Runner(work, settings)
        runner.first_pass(point)
        base, base_res = runner.protocol_encode(point, "baseline", ZeroDeltaLearner(), 1, 0.02, "baseline")
        script = eval_runs.ScriptedLearner(job["offsets"], 4)
        oracle, _ = runner.protocol_encode(point, "oracle", script, 4, 0.02, "oracle")
        if not (base.ok and oracle.ok):
            raise RuntimeError(base.message or oracle.message)
        out["replays"][f"{factor:g}"] = {
            "base": [base.psnr_y, base.bits],
            "oracle": [oracle.psnr_y, oracle.bits],
            "base_qp": [s.request.base_qp for s in base_res.done_steps],
        }
        shutil.rmtree(work, ignore_errors=True)
    return out


def report_records(report: Path, inputs: Path) -> tuple[dict, dict, dict]:
    """An `evaluate.py oracle` report as records of oracle_data's shape (the fields this script reads):
    (records by key, RD slope per clip (gain_model.window_slopes over its Δ=0 encodes), clip name ->
    (folder name, clip path)). Mini-GOPs are numbered in GOPs of the report's 8 (evaluate.py's
    --keyint 64 / --mini-gop 8).
    """
    with open(report / "oracle.csv", newline="") as fh:
        oracle_rows = list(csv.DictReader(fh))
    paths = {p.stem: p for p in inputs.iterdir() if p.is_file()}
    by_key, windows = {}, {}
    for o in oracle_rows:
        name = o["video"]
        if name not in paths:
            raise ValueError(f"clip {name!r} of {report / 'oracle.csv'} is not in {inputs}")
        offsets = [int(v) for v in o["offsets"].split()]
        key = f"{name}/{float(o['target_kbps']):g}"
        by_key[key] = {
            "key": key, "window": name, "target_kbps": float(o["target_kbps"]),
            "baseline": {"psnr_y": float(o["baseline_psnr_y"]), "bits": int(o["budget_bits"])},
            "oracle": {"psnr_y": float(o["oracle_psnr_y"]), "bits": int(o["bits"]), "offsets": offsets},
            "baseline_steps": [{"request": {"mg_in_gop": k % 8}} for k in range(len(offsets))],
        }  # fmt: skip
        windows[name] = (inputs.name, paths[name])
    return by_key, gain_model.window_slopes(list(by_key.values())), windows


DONORS = ("self", "same-source", "other-source")
DONOR_FEATURES = ("log_fp_bpp", "lookahead_ratio", "log_target_bpp", "fp_intra", "fp_inter_ratio", "fp_future_ratio",
                  "fp_motion", "fp_noise", "fp_reuse")  # fmt: skip


def donor_features(records: dict[str, dict]) -> dict[str, np.ndarray]:
    """Each record's DONOR_FEATURES, the mean over its Δ=0 requests, standardised over `records`."""
    cols = [FEATURE_NAMES.index(f) for f in DONOR_FEATURES]
    feats = {k: oracle_records.observations(r["baseline_steps"])[0][:, cols].mean(axis=0) for k, r in records.items()}
    allf = np.array(list(feats.values()))
    mu, sd = allf.mean(axis=0), allf.std(axis=0) + 1e-9
    return {k: (f - mu) / sd for k, f in feats.items()}


def donor(rec: dict, records: dict[str, dict], windows: dict, kind: str, feats: dict[str, np.ndarray]) -> dict | None:
    """The record whose oracle offsets `rec`'s window replays (None: no donor of that kind).

    self: rec. same-source: a point of another window of the same source in the same window set, the
    nearest in log rate. other-source: the point of another source nearest in `feats` (donor_features).
    Donors other than self
    need one-GOP windows of the same number of mini-GOPs (offsets by position).
    """
    if kind == "self":
        return rec
    n = len(rec["oracle"]["offsets"])
    source, wset = oracle_records.source_of(rec["window"]), windows[rec["window"]][0]
    pool = [r for r in records.values() if len(r["oracle"]["offsets"]) == n and r["window"] != rec["window"]
            and {s["request"]["gop_index"] for s in r["baseline_steps"]} == {0}]  # fmt: skip
    if kind == "same-source":
        pool = [r for r in pool if oracle_records.source_of(r["window"]) == source and windows[r["window"]][0] == wset]
        return min(pool, key=lambda r: abs(math.log(r["bpp"] / rec["bpp"])), default=None)
    pool = [r for r in pool if oracle_records.source_of(r["window"]) != source]
    if not pool:
        return None
    mine = feats[rec["key"]]
    return min(pool, key=lambda r: float(np.sum((feats[r["key"]] - mine) ** 2)))


MOVES = ("key mini-GOPs only", "other mini-GOPs only", "both", "nothing")


def moved(rec: dict) -> str:
    """Which of MOVES the oracle's offsets changed: key mini-GOPs (the first of each GOP) and the others."""
    key = {k for k, step in enumerate(rec["baseline_steps"]) if step["request"]["mg_in_gop"] == 0}
    nonzero = {k for k, off in enumerate(rec["oracle"]["offsets"]) if off}
    if not nonzero:
        return "nothing"
    if nonzero <= key:
        return "key mini-GOPs only"
    return "both" if nonzero & key else "other mini-GOPs only"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codec", default="x264", choices=("svtav1", "x264", "vp9"))
    p.add_argument("--data", default=None, help="oracle records (bench/oracle_data.py --out)")
    p.add_argument("--windows", default="train", help="comma-separated window sets whose oracle points are replayed")
    p.add_argument("--factors", default="0.97,1,1.03", help="targets as factors of each point's bit/pixel")
    p.add_argument("--jobs", type=int, default=2, help="points replayed in parallel")
    p.add_argument("--limit", type=int, default=0, help="at most this many points (0 = all)")
    p.add_argument("--work", default="/tmp/rlrc_transfer", help="scratch folder for encodes")
    p.add_argument("--out", default=None, help="also write the replays as JSON lines here")
    p.add_argument("--donor", default="self", choices=DONORS,
                   help="whose oracle offsets each point replays: its own; another window of the same source and "
                        "window set (nearest rate); the nearest point of another source (donor())")  # fmt: skip
    p.add_argument(
        "--report",
        default=None,
        help="instead of --data: the --out folder of `evaluate.py oracle` (its oracle.csv); its "
        "oracle answers are replayed on its clips (--inputs, the folder it coded; --frames as it)",
    )
    p.add_argument("--inputs", default=None, help="with --report: the folder of the clips the report coded")
    p.add_argument("--frames", type=int, default=64, help="with --report: frames coded per clip, as the report")
    p.add_argument("--replays", default=None, help="the tables from an earlier run's --out, without encoding")
    ns = p.parse_args()
    for name in ns.windows.split(","):
        if name not in clips.WINDOW_SETS:
            p.error(f"--windows: unknown window set {name!r}; there are {', '.join(clips.WINDOW_SETS)}")
    try:
        factors = [float(f) for f in ns.factors.split(",")]
    except ValueError:
        p.error(f"--factors: {ns.factors!r} is not a comma-separated list of numbers")
    if not factors or min(factors) <= 0:
        p.error(f"--factors: {ns.factors!r} needs positive factors")
    if ns.jobs < 1 or ns.frames < 1:
        p.error(f"--jobs {ns.jobs} / --frames {ns.frames}: both must be at least 1")
    if (msg := oracle_data.missing_records("--replays", [Path(ns.replays)] if ns.replays else [])) is not None:
        p.error(msg)
    if ns.report:
        if ns.donor != "self" or not ns.inputs:
            p.error(
                "--report: replays a report's own oracle answers (no --donor) and needs --inputs, the clips it coded"
            )
        try:
            by_key, slopes, windows = report_records(Path(ns.report), Path(ns.inputs))
        except (OSError, KeyError, ValueError) as exc:
            p.error(f"--report: {exc}")
        donors = dict(by_key)
    else:
        if not ns.data:
            p.error("--data (oracle records) or --report (an evaluate.py oracle report) is needed")
        if (msg := oracle_data.missing_records("--data", [Path(ns.data)])) is not None:
            p.error(msg)
        by_key, slopes, windows, donors = data_points(Path(ns.data), ns.codec, ns.windows, ns.donor)
    jobs = [{"key": k, "codec": ns.codec, "window": r["window"], "path": str(windows[r["window"]][1]),
             "factors": factors, "offsets": donors[k]["oracle"]["offsets"], "donor": donors[k]["key"],
             "work": str(Path(ns.work) / k.replace("/", "_")),
             **({"kbps": r["target_kbps"], "frames": ns.frames} if ns.report else {"bpp": r["bpp"]})}
            for k, r in sorted(by_key.items()) if donors[k] is not None]  # fmt: skip
    if ns.limit:
        jobs = jobs[: ns.limit]
    if not jobs:
        p.error(f"--report: no oracle points in {ns.report}" if ns.report else
                f"--data: no {ns.codec} oracle points of {ns.windows} in {ns.data}")  # fmt: skip
    if ns.replays:
        results = [json.loads(line) for line in Path(ns.replays).read_text().splitlines() if line.strip()]
        results = [r for r in results if r["key"] in by_key]
        load0, t0 = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), time.monotonic()
    else:
        results, load0, t0 = encode_replays(jobs, ns.jobs, ns.out)
    print_tables(ns, results, by_key, slopes, windows, factors, load0, t0)
    return 0


def data_points(data: Path, codec: str, window_sets: str, kind: str) -> tuple[dict, dict, dict, dict]:
    """The oracle points of `window_sets` in `data`: (records by key, RD slope per window, window name ->
    (its set, its materialised file), each point's donor record (donor(); None: no donor))."""
    records = [r for r in oracle_records.read_records([data]) if r["codec"] == codec and "error" not in r]
    slopes = gain_model.window_slopes(records)
    by_key = {r["key"]: r for r in oracle_data.of_window_sets(records, window_sets)}
    windows = {w.name: (name, w) for name in window_sets.split(",") for w in clips.WINDOW_SETS[name]()}
    for name, (wset, win) in windows.items():
        if any(r["window"] == name for r in by_key.values()):
            windows[name] = (wset, clips.materialise(win))
    feats = donor_features(by_key) if kind == "other-source" else {}
    return by_key, slopes, windows, {k: donor(r, by_key, windows, kind, feats) for k, r in by_key.items()}


def encode_replays(jobs: list[dict], parallel: int, out: str | None) -> tuple[list[dict], str, float]:
    """Runs replay_point on every job (`parallel` at a time); the results, the load average at start, t0."""
    load0 = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    print(f"{len(jobs)} oracle points, {parallel} in parallel", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    results = []
    with mp.Pool(parallel) as pool:
        for n, res in enumerate(pool.imap_unordered(replay_point, jobs), 1):
            results.append(res)
            print(f"[{n}/{len(jobs)}] {res['key']} {'error ' + res['error'][:200] if 'error' in res else 'ok'} "
                  f"({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip
    if out:
        Path(out).write_text("".join(json.dumps(r) + "\n" for r in results))
    return results, load0, t0


def print_tables(ns: argparse.Namespace, results: list[dict], by_key: dict[str, dict], slopes: dict[str, float],
                 windows: dict, factors: list[float], load0: str, t0: float) -> None:  # fmt: skip
    """The stored and replayed gains per window set and per kind of oracle move (see the module docstring)."""
    Row = tuple[float, dict[str, float], bool, float]  # stored gain, replayed gains, x1 identical, base QPs moved
    rows: dict[str, list[Row]] = {}
    by_move: dict[str, list[Row]] = {}
    for res in results:
        if "error" in res:
            continue
        rec = by_key[res["key"]]
        slope = slopes[rec["window"]]
        stored = gain_model.equal_rate_gain(rec["oracle"]["psnr_y"], rec["oracle"]["bits"], rec["baseline"]["psnr_y"],
                      rec["baseline"]["bits"], slope)  # fmt: skip
        replayed = {f: gain_model.equal_rate_gain(*v["oracle"], *v["base"], slope) for f, v in res["replays"].items()}
        own = res.get("donor", res["key"]) == res["key"]  # a donor's offsets are not the stored oracle's
        identical = "1" not in res["replays"] or (
            (not own or res["replays"]["1"]["oracle"] == [rec["oracle"]["psnr_y"], rec["oracle"]["bits"]])
            and res["replays"]["1"]["base"] == [rec["baseline"]["psnr_y"], rec["baseline"]["bits"]])  # fmt: skip
        stored_qp = [step["request"].get("base_qp") for step in rec["baseline_steps"]]  # None in a report
        other_qp = [v["base_qp"] for f, v in res["replays"].items() if f != "1" and "base_qp" in v]
        moves = [] if None in stored_qp else [a != b for qps in other_qp for a, b in zip(qps, stored_qp, strict=True)]
        qp_moved = float(np.mean(moves)) if moves else np.nan
        row = (stored, replayed, identical, qp_moved)
        rows.setdefault(windows[rec["window"]][0], []).append(row)
        by_move.setdefault(moved(by_key[res.get("donor", res["key"])]), []).append(row)
    rows["all"] = [row for name in list(rows) for row in rows[name]]
    rows.update({f"oracle moved: {kind}": by_move[kind] for kind in MOVES if kind in by_move})

    print(f"\n`{' '.join(['python', 'bench/oracle_transfer.py', *sys.argv[1:]])}` ({time.monotonic() - t0:.0f} s)")
    print(
        f"\nmachine: {machine()}\nload average at start: {load0}, at end: "
        + "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    )
    names = [f"{f:g}" for f in factors]
    others = [f for f in names if f != "1" or ns.donor != "self"]  # x1 replays of a donor are new encodes
    whose = {"self": "the oracle's offsets", "same-source": "the offsets of another window of the same source",
             "other-source": "the offsets of the nearest point of another source"}[ns.donor]  # fmt: skip
    print(f"\n{ns.codec}: {whose} replayed at {'/'.join('x' + f for f in names)} of each point's target; dB at "
          "equal rate vs Δ=0, mean over points; 'stored oracle gain' is the point's own oracle's\n")  # fmt: skip
    print(
        "| windows | points | stored oracle gain | "
        + " | ".join(f"replayed x{f}" for f in names)
        + " | share kept at "
        + "/".join(others)
        + " | replays at x1 identical | replays worse than Δ=0 | Δ=0 base QPs that moved |"
    )
    print("|---|---:|---:|" + "---:|" * len(names) + "---:|---:|---:|---:|")

    def identical_count(rs: list[Row]) -> str:
        return f"{sum(r[2] for r in rs)} / {len(rs)}" if "1" in names else "–"

    for name, rs in rows.items():
        if not rs:
            continue
        stored = float(np.mean([r[0] for r in rs]))
        means = {f: float(np.mean([r[1][f] for r in rs])) for f in names}
        kept = np.mean([means[f] for f in others]) / stored if others and stored else float("nan")
        worse = sum(r[1][f] < 0 for r in rs for f in others)
        print(
            f"| {name} | {len(rs)} | {stored:+.4f} | "
            + " | ".join(f"{means[f]:+.4f}" for f in names)
            + f" | {100 * kept:.0f}% | {identical_count(rs)} | {worse} / {len(rs) * len(others)} | "
            + f"{100 * np.mean([r[3] for r in rs]):.0f}% |"
        )


if __name__ == "__main__":
    sys.exit(main())
