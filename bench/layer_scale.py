"""Benchmark: SVT-AV1's pyramid depth (the built-in encoder's --layer-offset-scale) at equal rate, Δ=0 throughout.

    python bench/layer_scale.py windows --out F.jsonl [--windows fixed0,fixed,train,static,natural] [--jobs 2]
    python bench/layer_scale.py split --out F.jsonl [--split heldout] [--rate-draws 0.97,1,1.03]
    python bench/layer_scale.py report F.jsonl

The agent answers one base QP per mini-GOP; the frames of a mini-GOP then get SVT-AV1's own temporal-layer
offsets (codec_svtav1.layer_qp_offsets). This measures what the other lever, the depth of that hierarchy, is
worth: every encode is a Δ=0 encode through the protocol on its point's own pass 1, at S = 1 (the encoder's
own QPs) and at each --scales value S (every layer offset times S, the key frame's kept).

`windows`: the key sweeps' points (bench/oracle_data.py --search key: 6 rates per window, seed 10) of the
window sets. Gain = dB of PSNR-Y at equal rate against S = 1 with the window's RD slope (gain_model, from
its S = 1 encodes). The report gives per set the mean by S, each point's best S (an upper bound), each
window's best S at all its rates (the content known), and leave-one-source-out choices: one S for all
(the best on the other sources) and, per --feature, a linear fit of each S's gain on that state feature of
the key mini-GOP, answering the best S.

`split`: the whole clips of an evaluation split (bench/eval_quality.py's) at evaluate.py's default rates
times each --rate-draws factor; the report gives each S's BD-rate against S = 1 per clip (PSNR-Y and SSIM-Y,
mean over the draws and its range). BENCHMARKS.md §2.4.36 has both.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bdrate  # noqa: E402
import clips  # noqa: E402
import eval_runs  # noqa: E402
import gain_model  # noqa: E402
import oracle_records  # noqa: E402
from bench import eval_quality, loso_value, oracle_data  # noqa: E402
from bench.machine_info import machine  # noqa: E402
from learners import ZeroDeltaLearner  # noqa: E402
from state import FEATURE_NAMES  # noqa: E402

DEFAULT_SCALES = (0.5, 0.75, 1.25, 1.5)


def encode_scales(job: dict) -> dict:
    """Pass 1 (the encoder's own pyramid), then on it a Δ=0 encode at S = 1 and at each of job["scales"]; the
    record (or one with "error")."""
    work = Path(job["work"])
    shutil.rmtree(work, ignore_errors=True)
    settings = eval_runs.EvalSettings(codec="svtav1")
    path = Path(job["path"]) if "path" in job else clips.materialise(job["window"])
    video = eval_runs.probe_videos([path], settings)[0]
    (kbps,) = eval_runs.targets_for(video, None, [job["bpp"]])
    runner = eval_runs.Runner(work, settings)
    out = {k: job[k] for k in ("key", "window_name", "set", "clip", "factor", "bpp") if k in job}
    try:
        runner.first_pass(eval_runs.Point(video, kbps, work, settings))  # shared by every S: the same statistics
        encodes = []
        for scale in (1.0, *job["scales"]):
            point = eval_runs.Point(video, kbps, work, replace(settings, layer_offset_scale=scale))
            rec, res = runner.protocol_encode(point, "baseline", ZeroDeltaLearner(), 1, 0.02, f"s{scale}")
            if not rec.ok:
                return {**out, "error": f"S={scale}: {rec.message} (logs in {work})"}
            encodes.append({"scale": scale, "psnr_y": rec.psnr_y, "ssim_y": rec.ssim_y, "bits": rec.bits,
                            "kbps": rec.kbps})  # fmt: skip
            if scale == 1.0 and "window_name" in job:  # the states, for the report's feature choices
                out["baseline_steps"] = [oracle_data.step_record(s) for s in res.done_steps]
    except (RuntimeError, OSError, ValueError) as exc:
        return {**out, "error": f"{exc} (logs in {work})"}
    shutil.rmtree(work, ignore_errors=True)
    return {**out, "encodes": encodes}


def window_jobs(sets: list[str], scales: tuple[float, ...], work: Path) -> list[dict]:
    """The key sweeps' points of the window sets (6 rates per window, seed 10), one job each."""
    jobs = []
    for name in sets:
        rates, seed = oracle_data.default_rates(name, "key"), oracle_data.default_seed("key")
        for pt in oracle_data.points("svtav1", rates, 0.02, 0.4, seed, name):
            win = pt["window"]
            jobs.append({"window": win, "window_name": win.name, "set": name, "bpp": pt["bpp"], "scales": scales,
                         "key": oracle_data.point_key("svtav1", win.name, pt["bpp"], "layers"),
                         "work": str(work / name / win.name / f"{pt['bpp']:.5f}")})  # fmt: skip
    return jobs


def split_jobs(split: str, factors: list[float], scales: tuple[float, ...], work: Path) -> list[dict]:
    """Every clip of the split at evaluate.py's default rates times each factor, one job each."""
    folder = eval_quality.make_split(work / "clips", split)
    return [{"path": str(p), "clip": p.stem, "factor": f, "bpp": b * f, "scales": scales,
             "key": f"{split}/{p.stem}/{f}/{b}", "work": str(work / p.stem / f"{f}_{b}")}
            for p in sorted(folder.iterdir()) for f in factors for b in eval_runs.DEFAULT_BPP]  # fmt: skip


# ----------------------------------------------------------------------------- report


def window_gains(records: list[dict]) -> tuple[np.ndarray, list[float]]:
    """Gain of each S over S = 1 per point (P, 1 + len(scales)), dB at equal rate (column 0 = S 1 = 0); the S."""
    slopes = gain_model.window_slopes([{"window": r["window_name"], "baseline": r["encodes"][0]} for r in records])
    scales = [e["scale"] for e in records[0]["encodes"]]
    gains = [[gain_model.equal_rate_gain(e["psnr_y"], e["bits"], r["encodes"][0]["psnr_y"], r["encodes"][0]["bits"],
                                         slopes[r["window_name"]]) for e in r["encodes"]] for r in records]  # fmt: skip
    return np.asarray(gains), scales


def content_known(gains: np.ndarray, windows: list[str]) -> float:
    """Mean gain when each window gets the S that is best over all its rates (chosen in-sample), dB."""
    return float(loso_value.window_best_values(gains, windows).mean())


def loso_choice(gains: np.ndarray, sources: list[str], feature: np.ndarray | None) -> np.ndarray:
    """Each point's gain under a leave-one-source-out choice of S: the best S on the other sources' points
    (feature None), or the S whose linear fit gain ~ a + b * feature there predicts most at the point."""
    src = np.asarray(sources)
    out = np.zeros(len(gains))
    for s in set(sources):
        test = src == s
        if feature is None:
            out[test] = gains[test, int(np.argmax(gains[~test].mean(axis=0)))]
            continue
        x = np.stack([np.ones((~test).sum()), feature[~test]], axis=1)
        coef = np.linalg.lstsq(x, gains[~test], rcond=None)[0]  # (2, n_scales)
        pred = np.stack([np.ones(test.sum()), feature[test]], axis=1) @ coef
        out[test] = gains[test][np.arange(test.sum()), np.argmax(pred, axis=1)]
    return out


def print_windows_report(records: list[dict], features: list[str]) -> None:
    gains, scales = window_gains(records)
    windows = [r["window_name"] for r in records]
    sets = [r["set"] for r in records]
    head = " | ".join(f"S {s:g}" for s in scales[1:])
    print(f"| set | points | {head} | each point's best | each window's best |")
    print("|---|---:|" + "---:|" * (len(scales) + 1))
    for name in [*dict.fromkeys(sets), "all"]:
        rows = np.array([name in ("all", s) for s in sets])
        g, names = gains[rows], [w for w, k in zip(windows, rows, strict=True) if k]
        print(f"| {name} | {rows.sum()} | " + " | ".join(f"{v:+.4f}" for v in g.mean(axis=0)[1:])
              + f" | {g.max(axis=1).mean():+.4f} | {content_known(g, names):+.4f} |")
    sources = [oracle_records.source_of(w) for w in windows]
    obs = np.asarray([oracle_records.observations(r["baseline_steps"])[0][0] for r in records])
    print("\nLeave-one-source-out choice of S (dB at equal rate, points worse than S = 1):")
    for label, feature in [("one S for all", None), *((f, obs[:, FEATURE_NAMES.index(f)]) for f in features)]:
        got = loso_choice(gains, sources, feature)
        print(f"- {label}: {got.mean():+.4f} dB, {(got < 0).sum()} of {len(got)} worse")
    ssim = np.asarray([[e["ssim_y"] - r["encodes"][0]["ssim_y"] for e in r["encodes"]] for r in records])
    bits = np.asarray([[e["bits"] / r["encodes"][0]["bits"] for e in r["encodes"]] for r in records])
    print("\nSSIM-Y change / bits ratio against S = 1, all points: " + ", ".join(
        f"S {s:g} {ssim[:, j].mean():+.5f} / x{bits[:, j].mean():.4f}" for j, s in enumerate(scales) if j))


def split_bdrates(records: list[dict], metric: str) -> dict[float, dict[str, list[float]]]:
    """BD-rate (%) of each S against S = 1 per clip, one value per rate draw: {S: {clip: [per draw]}}."""
    curves: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for r in records:
        curves[(r["clip"], r["factor"])].append(r)
    out: dict[float, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (clip, _factor), pts in sorted(curves.items()):
        pts.sort(key=lambda r: r["bpp"])
        base = [p["encodes"][0] for p in pts]
        for j, enc in enumerate(pts[0]["encodes"][1:], 1):
            cand = [p["encodes"][j] for p in pts]
            out[enc["scale"]][clip].append(bdrate.safe_bd_rate([e["kbps"] for e in cand], [e[metric] for e in cand],
                                                               [e["kbps"] for e in base], [e[metric] for e in base]))
    return out


def print_split_report(records: list[dict]) -> None:
    for metric in ("psnr_y", "ssim_y"):
        for scale, by_clip in split_bdrates(records, metric).items():
            means = {c: float(np.mean(v)) for c, v in by_clip.items()}
            print(f"\n{metric}, S {scale:g} vs S 1, BD-rate % per clip, mean over the draws [range]:")
            print("| " + " | ".join(by_clip) + " | mean | worst |")
            print("|" + "---|" * (len(by_clip) + 2))
            print("| " + " | ".join(f"{means[c]:+.2f} [{min(v):+.2f} … {max(v):+.2f}]" for c, v in by_clip.items())
                  + f" | **{np.mean(list(means.values())):+.2f}** | {max(means.values()):+.2f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("windows", "split", "report"))
    p.add_argument("records", nargs="?", help="report: the records file")
    p.add_argument("--out", help="windows / split: JSON-lines records (appended; points already there are skipped)")
    p.add_argument("--windows", default="fixed0,fixed,train,static,natural", help="windows: comma-separated sets")
    p.add_argument("--split", default="heldout", choices=sorted(clips.EVAL_SPLITS), help="split: which clips")
    p.add_argument("--rate-draws", default="0.97,1,1.03", help="split: factors on evaluate.py's default rates")
    p.add_argument("--scales", default=",".join(map(str, DEFAULT_SCALES)), help="S values besides 1")
    p.add_argument("--features", default="fp_reuse,fp_propagation", help="report: features of the LOSO choices")
    p.add_argument("--work", default="/tmp/rlrc_layer_scale")
    p.add_argument("--jobs", type=int, default=2)
    ns = p.parse_args()
    if ns.mode == "report":
        if not ns.records or not Path(ns.records).is_file():
            p.error("report: give the records file a windows or split run wrote")
        recs = [json.loads(line) for line in Path(ns.records).read_text().splitlines() if line.strip()]
        if not recs:  # a failed point is not written: the next run encodes it again
            p.error(f"{ns.records}: no record")
        print(f"{len(recs)} points")
        if "window_name" in recs[0]:
            unknown = [f for f in ns.features.split(",") if f and f not in FEATURE_NAMES]
            if unknown:
                p.error(f"--features: unknown {unknown}")
            print_windows_report(recs, [f for f in ns.features.split(",") if f])
        else:
            print_split_report(recs)
        return 0
    if not ns.out:
        p.error(f"{ns.mode}: --out is required")
    try:
        scales = tuple(float(v) for v in ns.scales.split(","))
        factors = [float(v) for v in ns.rate_draws.split(",")]
    except ValueError:
        p.error("--scales / --rate-draws: want comma-separated numbers")
    if any(not 0 <= s <= 3 or s == 1 for s in scales) or any(not f > 0 for f in factors):
        p.error("--scales: values in [0, 3] other than 1; --rate-draws: positive factors")
    unknown = [s for s in ns.windows.split(",") if s not in clips.WINDOW_SETS]
    if ns.mode == "windows" and unknown:
        p.error(f"--windows: unknown sets {unknown} (known: {', '.join(sorted(clips.WINDOW_SETS))})")
    work, out = Path(ns.work), Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["key"] for line in out.read_text().splitlines() if line.strip()} if out.exists() else set()
    if ns.mode == "windows":
        jobs = window_jobs(ns.windows.split(","), scales, work)
        for job in jobs:  # materialise once, before the workers race for the same files
            clips.materialise(job["window"])
    else:
        jobs = split_jobs(ns.split, factors, scales, work)
    jobs = [j for j in jobs if j["key"] not in done]
    print(f"{len(jobs)} points to encode ({len(done)} already in {out}), {ns.jobs} in parallel", flush=True)
    t0 = time.monotonic()
    with mp.Pool(ns.jobs) as pool, open(out, "a") as fh:
        for n, rec in enumerate(pool.imap_unordered(encode_scales, jobs), 1):
            if "error" not in rec:
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
            status = rec.get("error", "ok")
            print(f"[{n}/{len(jobs)}] {rec['key']}: {status} ({time.monotonic() - t0:.0f} s)", flush=True)
    print(f"\n`python bench/layer_scale.py {' '.join(sys.argv[1:])}` — {machine()}, {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
