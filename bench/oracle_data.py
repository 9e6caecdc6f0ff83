"""Oracle demonstrations: the per-mini-GOP QP search run on the training windows, stored for imitation.

    python bench/oracle_data.py --codec svtav1 --out data/oracle_svtav1.jsonl [--jobs 2] [--rates 3]

For every training window (clips.training_windows(), or --windows static for the slow / still
augmented ones: one GOP each, TRAIN sources only; --windows pan: camera motion over still photos,
clips.pan_windows()) and a few
target rates drawn log-uniformly in [--bpp-min, --bpp-max] bits per luma pixel, it runs the Δ=0
baseline and evaluate.run_oracle (coordinate descent over per-mini-GOP offsets, every candidate a
real encode through the protocol), and appends one JSON line per point: the baseline's and the
best encode's requests and feedback (so any state can be rebuilt offline), the oracle's offsets,
and every candidate tried (offsets, PSNR-Y, bits). Points already in --out are skipped, so an
interrupted run resumes. `imitation.py` turns the file into a policy; `bench/oracle_diag.py`
reports how predictable the oracle is.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import clips  # noqa: E402
import evaluate  # noqa: E402
from learners import ZeroDeltaLearner  # noqa: E402


def points(codec: str, rates: int, bpp_min: float, bpp_max: float, seed: int, windows: str = "train") -> list[dict]:
    """(window, target kbps) pairs; rates drawn per window from a seeded log-uniform distribution.

    The draws follow the set's window list: adding or removing a window changes the rates of every
    window after it, so points searched before such an edit are no longer this set's
    (make_policy.py fits only the set's points: point_keys).
    """
    rng = np.random.default_rng(seed)
    out = []
    for win in clips.WINDOW_SETS[windows]():
        for bpp in np.exp(rng.uniform(math.log(bpp_min), math.log(bpp_max), size=rates)):
            out.append({"window": win, "bpp": float(bpp), "codec": codec})
    return out


def default_rates(windows: str) -> int:
    """Target rates per window: 2 for pan (many synthetic windows), else 3."""
    return 2 if windows == "pan" else 3


def point_key(codec: str, window_name: str, bpp: float) -> str:
    """A point's key in the records ("codec/window/bpp"): how a finished point is found again."""
    return f"{codec}/{window_name}/{bpp:.5f}"


def point_keys(codec: str, windows: str, seed: int = 0, bpp_min: float = 0.02, bpp_max: float = 0.4) -> set[str]:
    """The keys of every point of the comma-separated window sets, with this script's default rates."""
    return {point_key(codec, pt["window"].name, pt["bpp"])
            for name in windows.split(",")
            for pt in points(codec, default_rates(name), bpp_min, bpp_max, seed, name)}  # fmt: skip


def of_window_sets(records: list[dict], windows: str) -> list[dict]:
    """The records of the comma-separated window sets' points (each record's own codec): not a
    point of the same window at another rate, searched before a set's list changed."""
    keys = {codec: point_keys(codec, windows) for codec in {r["codec"] for r in records}}
    return [r for r in records if r["key"] in keys[r["codec"]]]


def finished_keys(out: Path) -> set[str]:
    """Keys of the points with a record in `out`; a point whose record is an error is not finished."""
    if not out.exists():
        return set()
    recs = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return {r["key"] for r in recs if "error" not in r}


def step_record(step) -> dict:
    return {"request": asdict(step.request), "feedback": asdict(step.feedback), "qp": step.qp}


def run_point(job: dict) -> dict:
    """Baseline + oracle for one point; returns the JSON record."""
    win, codec, work = job["window"], job["codec"], Path(job["work"])
    # A fresh folder: pass-1 statistics left by another run (another window once at this place in
    # a set's list) would be reused and refused by the encoder.
    shutil.rmtree(work, ignore_errors=True)
    path = clips.materialise(win)
    settings = evaluate.EvalSettings(codec=codec)
    video = evaluate.probe_videos([path], settings)[0]
    kbps = round(job["bpp"] * video.width * video.height * video.fps / 1000.0, 1)
    point = evaluate.Point(video, kbps, work, settings)
    runner = evaluate.Runner(work, settings)
    runner.first_pass(point)
    t0 = time.monotonic()
    base, base_res = runner.protocol_encode(point, "baseline", ZeroDeltaLearner(), 1, 0.02, "baseline")
    if not base.ok:
        return {"key": job["key"], "error": base.message}
    oracle = evaluate.run_oracle(runner, point, base, evaluate.OracleSettings())
    best_steps = oracle.best_steps or base_res.done_steps
    return {
        "key": job["key"], "window": win.name, "codec": codec, "bpp": job["bpp"], "target_kbps": kbps,
        "width": video.width, "height": video.height, "frames": video.frames,
        "baseline": {"psnr_y": base.psnr_y, "bits": base.bits, "ssim_y": base.ssim_y},
        "oracle": {"psnr_y": oracle.record.psnr_y, "bits": oracle.record.bits, "ssim_y": oracle.record.ssim_y,
                   "offsets": oracle.offsets, "encodes": oracle.encodes},
        "baseline_steps": [step_record(s) for s in base_res.done_steps],
        "oracle_steps": [step_record(s) for s in best_steps],
        "candidates": oracle.candidates, "seconds": time.monotonic() - t0,
    }  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codec", default="svtav1", choices=("svtav1", "x264", "vp9"))
    p.add_argument("--out", required=True, help="JSON-lines file (appended; existing points are skipped)")
    p.add_argument("--work", default="/tmp/rlrc_oracle", help="scratch folder for encodes")
    p.add_argument("--jobs", type=int, default=2, help="points searched in parallel")
    p.add_argument("--rates", type=int, default=None,
                   help="target rates per window (default 3 for train and static, 2 for pan)")  # fmt: skip
    p.add_argument("--bpp-min", type=float, default=0.02)
    p.add_argument("--bpp-max", type=float, default=0.4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit", type=int, default=0, help="at most this many points (0 = all)")
    p.add_argument("--windows", default="train", choices=sorted(clips.WINDOW_SETS),
                   help="train: clips.training_windows(); static: clips.static_windows() (slow / still); "
                        "pan: clips.pan_windows() (camera motion over still photos); natural: more camera "
                        "sources (clips.natural_windows()); screen: a screen recording "
                        "(clips.screen_windows())")  # fmt: skip
    ns = p.parse_args()
    if ns.rates is None:
        ns.rates = default_rates(ns.windows)
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = finished_keys(out)
    jobs = []
    for pt in points(ns.codec, ns.rates, ns.bpp_min, ns.bpp_max, ns.seed, ns.windows):
        key = point_key(ns.codec, pt["window"].name, pt["bpp"])
        if key not in done:
            work = Path(ns.work) / ns.codec / pt["window"].name / f"{pt['bpp']:.5f}"
            jobs.append({**pt, "key": key, "work": str(work)})
    if ns.limit:
        jobs = jobs[: ns.limit]
    for pt in jobs:  # materialise once, before the workers race for the same files
        clips.materialise(pt["window"])
    print(f"{len(jobs)} points to search ({len(done)} already in {out}), {ns.jobs} in parallel", flush=True)
    t0 = time.monotonic()
    with mp.Pool(ns.jobs) as pool, open(out, "a") as fh:
        for n, rec in enumerate(pool.imap_unordered(run_point, jobs), 1):
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
            if "error" in rec:
                print(f"[{n}/{len(jobs)}] {rec['key']}: error {rec['error'][:200]}", flush=True)
                continue
            gain = rec["oracle"]["psnr_y"] - rec["baseline"]["psnr_y"]
            ratio = rec["oracle"]["bits"] / rec["baseline"]["bits"]
            print(f"[{n}/{len(jobs)}] {rec['key']}: oracle {gain:+.3f} dB at bits x{ratio:.4f}, offsets "
                  f"{rec['oracle']['offsets']}, {rec['oracle']['encodes']} encodes, {rec['seconds']:.0f} s "
                  f"(elapsed {time.monotonic() - t0:.0f} s)", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
