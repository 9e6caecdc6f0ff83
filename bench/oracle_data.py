"""Oracle demonstrations: the per-mini-GOP QP search run on the training windows, stored for imitation.

    python bench/oracle_data.py --codec svtav1 --out data/oracle_svtav1.jsonl [--jobs 2] [--rates 3]

For every training window (clips.training_windows(), or --windows static for the slow / still
augmented ones: one GOP each, TRAIN sources only; --windows pan: camera motion over still photos,
clips.pan_windows()) and a few
target rates drawn log-uniformly in [--bpp-min, --bpp-max] bits per luma pixel, it runs the Δ=0
baseline and oracle_search.run_oracle (coordinate descent over per-mini-GOP offsets, every candidate a
real encode through the protocol; with --search key, `key_sweep`: every offset of the last GOP's key
mini-GOP alone (the first mini-GOP of a one-GOP window), at 6 rates per window drawn with seed
10; with --search lead, the same points with every offset given to the key mini-GOP and the next
one together; with --search ramp, to the five mini-GOPs after the key, the key at Δ=0), and appends
one JSON line per point: the baseline's and the best encode's requests and feedback (so any state
can be rebuilt offline), the oracle's offsets, and every candidate tried (offsets, PSNR-Y, bits).
Points already in --out are skipped, so an interrupted run resumes. `imitation.py` turns the file
into a policy; `bench/oracle_diag.py` reports how predictable the oracle is.

    python bench/oracle_data.py --inputs CLIPS/ --frames 64 --encoder "YOUR ENCODER" --encoder-args="A|B" --out F

--inputs searches your own clips instead of a window set (each its own source; --augment adds a
slowed and a still copy of each: own_clips.py); --encoder runs a team's encoder through the
protocol (PROTOCOL.md §7; records get codec "encoder"), on --inputs or on a window set. An encode
that fails is a record with its error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import clips  # noqa: E402
import encoder_proc  # noqa: E402
import eval_runs  # noqa: E402
import oracle_search  # noqa: E402
import own_clips  # noqa: E402
import protocol  # noqa: E402
from bench import probe_zero  # noqa: E402
from learners import ZeroDeltaLearner  # noqa: E402

# The sweeps of one decision at every offset (key_sweep), beside the oracle's coordinate descent.
SWEEPS = ("key", "lead", "ramp")


def probe_suffix(key_probe: bool) -> str:
    """How the key of a point searched with --key-probe ends ("/kp"), for of_window_sets' `suffix`; "" without."""
    return "/kp" if key_probe else ""


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


def default_rates(windows: str, search: str = "oracle") -> int:
    """Target rates per window: 6 for a sweep (key, lead, ramp: 8 encodes a point), 2 for pan (many windows), else 3."""
    if search in SWEEPS:
        return 6
    return 2 if windows == "pan" else 3


def default_seed(search: str = "oracle") -> int:
    """The seed of the rate draws: a key, lead or ramp sweep draws other rates (10) than the oracle's points (0)."""
    return 10 if search in SWEEPS else 0


def point_key(codec: str, window_name: str, bpp: float, search: str = "oracle") -> str:
    """A point's key in the records ("codec/window/bpp", "codec/window/bpp/key" for a key sweep, ".../lead"):
    how a finished point is found again."""
    return f"{codec}/{window_name}/{bpp:.5f}" + ("" if search == "oracle" else f"/{search}")


def point_keys(codec: str, windows: str, search: str = "oracle", bpp_min: float = 0.02, bpp_max: float = 0.4,
               seed: int | None = None) -> set[str]:  # fmt: skip
    """The keys of every point of the comma-separated window sets, with this script's default rates and
    seed (or `seed`: another draw of the rates)."""
    seed = default_seed(search) if seed is None else seed
    return {point_key(codec, pt["window"].name, pt["bpp"], search)
            for name in windows.split(",") if name
            for pt in points(codec, default_rates(name, search), bpp_min, bpp_max, seed, name)}  # fmt: skip


def of_window_sets(records: list[dict], windows: str, search: str = "oracle", seed: int | None = None,
                   suffix: str = "") -> list[dict]:  # fmt: skip
    """The records of the comma-separated window sets' points searched by `search` (each record's own
    codec; rates of the default draw, or of `seed`'s): not a point of the same window at another
    rate, searched before a set's list changed. `suffix`: the keys' ending ("/kp": searched with --key-probe)."""
    keys = {codec: {k + suffix for k in point_keys(codec, windows, search, seed=seed)}
            for codec in {r["codec"] for r in records}}  # fmt: skip
    return [r for r in records if r["key"] in keys[r["codec"]]]


def of_draws(records: list[dict], windows: str, draws: tuple[int, ...], suffix: str = "") -> list[dict]:
    """of_window_sets for each seed of `draws` (draws of the oracle's rates fitted together), in that order."""
    return [r for seed in draws for r in of_window_sets(records, windows, seed=seed, suffix=suffix)]


def missing_records(flag: str, paths: list[Path]) -> str | None:
    """The message for the first of `paths` that is not a file (a records file this script writes), or None."""
    for path in paths:
        if not path.is_file():
            return f"{flag}: {path} is not a file (bench/oracle_data.py writes it)"
    return None


def finished_keys(out: Path) -> set[str]:
    """Keys of the points with a record in `out`; a point whose record is an error is not finished."""
    if not out.exists():
        return set()
    recs = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return {r["key"] for r in recs if "error" not in r}


def step_record(step) -> dict:
    return {"request": asdict(step.request), "feedback": asdict(step.feedback), "qp": step.qp}


def run_point(job: dict) -> dict:
    """Baseline + oracle for one point; returns the JSON record, or {"key", "error"} when an encode failed."""
    try:
        return _search_point(job)
    except (RuntimeError, OSError, ValueError) as exc:  # a failed or hung encoder: the message names it
        return error_record(job, str(exc).strip() or type(exc).__name__)


def error_record(job: dict, message: str) -> dict:
    """The record of a point whose encode failed: its key and the message, with where the logs are."""
    return {"key": job["key"], "error": f"{message} (logs in {job['work']})"}


def _search_point(job: dict) -> dict:
    codec, work = job["codec"], Path(job["work"])
    # A fresh folder: pass-1 statistics left by another run (another window once at this place in
    # a set's list) would be reused and refused by the encoder.
    shutil.rmtree(work, ignore_errors=True)
    settings = eval_runs.EvalSettings(codec=codec, frames=job.get("frames", 0), preset=job.get("preset"),
                                      key_probe=job.get("key_probe", False), encoder=job.get("encoder", ""),
                                      encoder_args=tuple(job.get("encoder_args", ())),
                                      rl_args=job.get("rl_args", encoder_proc.DEFAULT_RL_ARGS))  # fmt: skip
    if "input" in job:  # one of --inputs
        path, name = Path(job["input"]), job["name"]
    else:
        path, name = clips.materialise(probe_window(job["window"], job.get("scale", 1))), job["window"].name
    video = eval_runs.probe_videos([path], settings)[0]
    # The probes' zero encode: on a window of one GOP it is the Δ=0 encode itself (probe_zero.with_zero, below), on
    # a longer one the encoder codes it (--probe-zero).
    settings.probe_zero = settings.key_probe and video.frames > settings.keyint
    (kbps,) = eval_runs.targets_for(video, None, [job["bpp"]])
    point = eval_runs.Point(video, kbps, work, settings)
    runner = eval_runs.Runner(work, settings)
    runner.first_pass(point)
    t0 = time.monotonic()
    base, base_res = runner.protocol_encode(point, "baseline", ZeroDeltaLearner(), 1, 0.02, "baseline")
    if not base.ok:
        return error_record(job, base.message)
    if job.get("search") in SWEEPS:
        oracle = key_sweep(runner, point, base, job["search"], offsets=job.get("offsets"))
    else:
        oracle = oracle_search.run_oracle(runner, point, base, oracle_search.OracleSettings())
    best_steps = oracle.best_steps or base_res.done_steps
    record = {
        "key": job["key"], "window": name, "codec": codec, "bpp": job["bpp"], "target_kbps": kbps,
        **({"input": job["input"], "clip": job["clip"], "encoder": settings.encoder} if "input" in job else {}),
        "width": video.width, "height": video.height, "frames": video.frames,
        "baseline": {"psnr_y": base.psnr_y, "bits": base.bits, "ssim_y": base.ssim_y},
        "oracle": {"psnr_y": oracle.record.psnr_y, "bits": oracle.record.bits, "ssim_y": oracle.record.ssim_y,
                   "offsets": oracle.offsets, "encodes": oracle.encodes},
        "baseline_steps": [step_record(s) for s in base_res.done_steps],
        "oracle_steps": [step_record(s) for s in best_steps],
        "candidates": oracle.candidates, "seconds": time.monotonic() - t0, "search": job.get("search", "oracle"),
        **({"preset": job["preset"]} if job.get("preset") is not None else {}),
        **({"key_probe": True} if job.get("key_probe") else {}),
    }  # fmt: skip
    return probe_zero.with_zero(record) if settings.key_probe and not settings.probe_zero else record


def key_sweep(
    runner: eval_runs.Runner, point: eval_runs.Point, base: eval_runs.RunRecord, search: str = "key",
    offsets: list[int] | None = None,
) -> oracle_search.OracleResult:
    """Every offset of the last GOP's key mini-GOP in [-max_offset, max_offset] (or `offsets`), the others 0.

    The decision the shipped policies make: a cheaper and evenly spread sample of it than the
    oracle's coordinate descent (2 x max_offset encodes per point). In a one-GOP window that is the
    first mini-GOP; in a `tail` window (a full GOP then a short one) the short GOP's key mini-GOP.
    With search "lead", the mini-GOP after the key gets the same offset (moved_minigops): the first 16
    frames of the GOP as one decision; with "ramp", the RAMP mini-GOPs after the key get it and the key 0.
    The result has the oracle's form: the best candidate by the same objective, every candidate as tried.
    """
    cfg = oracle_search.OracleSettings()
    n, budget = len(base.minigops), base.bits
    moved = moved_minigops([m.gop for m in base.minigops], search)
    if not moved:
        raise ValueError(f"{search} sweep: the last GOP has no mini-GOP after its key")
    best, best_offsets, best_steps, candidates = base, [0] * n, [], []
    values = offsets or [v for v in range(-cfg.max_offset, cfg.max_offset + 1) if v != 0]
    reach = max(cfg.max_offset, *(abs(v) for v in values))
    for value in values:
        cand = [value if i in moved else 0 for i in range(n)]
        rec, res = runner.protocol_encode(point, "oracle", eval_runs.ScriptedLearner(cand, reach),
                                          reach, 0.02, "key_sweep")  # fmt: skip
        if not rec.ok:
            raise RuntimeError(f"{search} sweep encode failed: {rec.message}")
        candidates.append({"offsets": cand, "psnr_y": rec.psnr_y, "ssim_y": rec.ssim_y, "bits": rec.bits})
        if oracle_search.oracle_objective(rec, budget, cfg) > oracle_search.oracle_objective(best, budget, cfg):
            best, best_offsets, best_steps = rec, cand, res.done_steps
    return oracle_search.OracleResult(point.video.name, point.target_kbps, budget, base.psnr_y, best_offsets,
                                      replace(best, method="oracle"), len(candidates), int(best is not base), 0.0,
                                      best_steps, candidates)  # fmt: skip


# Mini-GOPs after the key that a ramp sweep moves together (BENCHMARKS.md §2.4.37: the held-out clips' oracle), the
# same ones the encoder's ramp probe moves (PROTOCOL.md §4.1.2).
RAMP = protocol.RAMP_MINIGOPS


def moved_minigops(gops: list[int], search: str = "key") -> list[int]:
    """The mini-GOPs a sweep moves, from each mini-GOP's GOP index: the last GOP's first (key) mini-GOP;
    with "lead" the next one too when that GOP has one; with "ramp" the RAMP mini-GOPs after the key (as
    many as the GOP has), the key left at Δ=0."""
    last = max(gops)
    key = gops.index(last)
    after = [i for i in range(key + 1, len(gops)) if gops[i] == last]
    if search == "ramp":
        return after[:RAMP]
    return [key, *after[:1]] if search == "lead" else [key]


def planned_points(ns: argparse.Namespace) -> list[dict]:
    """Every point main() searches: the window set's, or with --inputs the clips' (probed before any
    encode; ValueError names the flag). With --encoder each point carries the command and arguments."""
    label = "encoder" if ns.encoder else ns.codec
    own = {"encoder": ns.encoder, "encoder_args": [a for a in ns.encoder_args.split("|") if a],
           "rl_args": ns.encoder_rl_args} if ns.encoder else {}  # fmt: skip
    if ns.inputs is None:
        return [{**pt, **own} for pt in points(label, ns.rates, ns.bpp_min, ns.bpp_max, ns.seed, ns.windows)]
    out = []
    for w in input_windows(ns.inputs, ns.frames, ns.augment, Path(ns.out)):
        for bpp in own_clips.target_rates(w.name, ns.rates, ns.bpp_min, ns.bpp_max, ns.seed):
            out.append({"input": str(w.path), "clip": str(w.clip), "name": w.name, "frames": w.frames, "bpp": bpp,
                        "codec": label, "own_window": w, **own})  # fmt: skip
    return out


def input_windows(patterns: list[str], frames: int, augment: bool, records: Path) -> list[own_clips.OwnWindow]:
    """The search windows of --inputs (own_clips.windows; augmented copies beside the records file,
    in RECORDS-STEM_clips/), probed before any encode; ValueError names the flag."""
    videos = eval_runs.probe_videos(eval_runs.find_inputs(patterns), eval_runs.EvalSettings(frames=frames))
    out_dir = records.with_name(f"{records.stem}_clips")
    found = [w for v in videos for w in own_clips.windows(v.path, v.frames, augment, out_dir)]
    if error := own_clips.names_error(found):
        raise ValueError(error)
    return found


def probe_window(win: clips.Window, scale: int) -> clips.Window:
    """`win` `scale` times smaller (its downscale multiplied, its crop divided, kept even): the same picture."""
    if scale == 1:
        return win
    crop = None if win.crop is None else tuple(c // scale // 2 * 2 for c in win.crop)
    return replace(win, scale=win.scale * scale, crop=crop)


def work_folder(out: Path) -> Path:
    """The default scratch folder of the search that appends to `out`: its own, named from out's path.

    Every point starts by emptying its folder; two searches that shared one (two tests, two users'
    runs of the same clips) emptied each other's live encodes.
    """
    tag = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / "rlrc_oracle" / f"{out.stem}-{tag}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codec", default="svtav1", choices=("svtav1", "x264", "vp9"))
    p.add_argument("--out", required=True, help="JSON-lines file (appended; existing points are skipped)")
    p.add_argument("--work", default=None,
                   help="scratch folder for encodes (default: one of the --out file's own under the system's "
                        "temporary folder, so two searches never share one)")  # fmt: skip
    p.add_argument("--jobs", type=int, default=2, help="points searched in parallel")
    p.add_argument("--preset", type=int, default=None,
                   help="the built-in encoder's --preset for every encode (default: the codec's own); the records' "
                        "keys end in /pN, so they never stand for the default preset's")  # fmt: skip
    p.add_argument("--key-probe", action="store_true",
                   help="every agent encode with the built-in encoder's --key-probe (PROTOCOL.md §4.1.2), so the "
                        "states carry the key probe; keys end in /kp")  # fmt: skip
    p.add_argument("--probe-scale", type=int, default=1, metavar="K",
                   help="with --windows: code each window K times smaller (its downscale times K) at the point's own "
                        "bit/pixel, a cheaper probe of the same point; keys end in /sK")  # fmt: skip
    p.add_argument("--first-frames", type=int, default=None, metavar="N",
                   help="code only each point's first N frames, at the point's own rate (a shorter probe of the same "
                        "point); keys end in /fN")  # fmt: skip
    p.add_argument("--rates", type=int, default=None,
                   help="target rates per window (default 3; 2 for pan; 6 with a --search sweep)")  # fmt: skip
    p.add_argument("--bpp-min", type=float, default=0.02)
    p.add_argument("--bpp-max", type=float, default=0.4)
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the rate draws (default 0; 10 with --search key, lead or ramp)")
    p.add_argument("--limit", type=int, default=0, help="at most this many points (0 = all)")
    p.add_argument("--windows", default=None, choices=sorted(clips.WINDOW_SETS),
                   help="; ".join(f"{name}: clips.{fn.__name__}()" for name, fn in clips.WINDOW_SETS.items())
                   + " (each function's docstring says what it holds; --search key moves the last GOP's key); "
                   "default train")
    own_clips.add_own_flags(p, "--out")
    p.add_argument("--search", default="oracle", choices=("oracle", *SWEEPS),
                   help="oracle: coordinate descent over every mini-GOP (oracle_search.run_oracle); key: every offset "
                        "of the key mini-GOP alone (key_sweep, 8 encodes per point); lead: every offset of the key "
                        "mini-GOP and the next one together, at the key sweep's points; ramp: every offset of the "
                        "five mini-GOPs after the key together, the key at 0, at the same points")  # fmt: skip
    p.add_argument("--offsets", default=None,
                   help="with --search key: the key offsets swept, comma-separated (e.g. -8,-7,-6,-5; default "
                        "-4..+4 without 0); the points are the same as the default sweep's, so such a file adds "
                        "offsets to the same sweeps")  # fmt: skip
    # values that start with "--" ("--codec|x264") stay values, as in evaluate.py
    ns = p.parse_args(encoder_proc.glue_dash_values(sys.argv[1:], ("--encoder-args", "--encoder-rl-args")))
    if ns.offsets is not None:
        try:
            ns.offsets = [int(v) for v in ns.offsets.split(",")]
        except ValueError:
            p.error(f"--offsets {ns.offsets!r}: want comma-separated integers")
        if ns.search != "key" or 0 in ns.offsets or not ns.offsets:
            p.error("--offsets: with --search key only, non-zero offsets")
    if ns.inputs is not None and ns.windows is not None:
        p.error("--inputs and --windows: give one (your clips or a bundled window set)")
    if ns.probe_scale < 1 or (ns.probe_scale > 1 and ns.inputs is not None):
        p.error(f"--probe-scale {ns.probe_scale}: a whole number ≥ 1, with --windows only")
    if ns.first_frames is not None and ns.first_frames < 1:
        p.error(f"--first-frames: {ns.first_frames} is not a positive number of frames")
    if ns.preset is not None and ns.encoder:
        p.error("--preset is the built-in encoder's; give your encoder's in --encoder-args")
    if ns.key_probe and (error := eval_runs.key_probe_error(ns.codec, ns.encoder)):
        p.error(error)
    if ns.encoder_args and not ns.encoder:
        p.error("--encoder-args needs --encoder (the built-in encoder takes --codec)")
    if ns.frames < 0:
        p.error(f"--frames: {ns.frames} is negative")
    ns.windows = ns.windows or "train"
    if ns.rates is None:
        ns.rates = default_rates(ns.windows, ns.search)
    if ns.seed is None:
        ns.seed = default_seed(ns.search)
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ns.work = ns.work or str(work_folder(out))
    done = finished_keys(out)
    try:
        todo = planned_points(ns)
    except ValueError as exc:
        p.error(str(exc))
    jobs = []
    for pt in todo:
        name = pt["name"] if "input" in pt else pt["window"].name
        key = point_key(pt["codec"], name, pt["bpp"], ns.search) + ("" if ns.preset is None else f"/p{ns.preset}")
        if ns.first_frames is not None:
            key += f"/f{ns.first_frames}"
            pt = {**pt, "frames": ns.first_frames}
        key += probe_suffix(ns.key_probe)
        if ns.probe_scale != 1:
            key += f"/s{ns.probe_scale}"
            pt = {**pt, "scale": ns.probe_scale}
        if key not in done:
            work = Path(ns.work) / pt["codec"] / ns.search / name / f"{pt['bpp']:.5f}"
            jobs.append({**pt, "key": key, "work": str(work), "search": ns.search, "offsets": ns.offsets,
                         "preset": ns.preset, "key_probe": ns.key_probe})  # fmt: skip
    if ns.limit:
        jobs = jobs[: ns.limit]
    for pt in jobs:  # materialise once, before the workers race for the same files
        try:
            if "window" in pt:
                clips.materialise(probe_window(pt["window"], pt.get("scale", 1)))
            else:
                own_clips.materialise(pt.pop("own_window"))
        except (clips.ClipError, OSError, ValueError) as exc:  # an unreadable clip, a full disk: before any encode
            p.error(f"{pt.get('clip') or pt['window'].name}: {exc}")
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
