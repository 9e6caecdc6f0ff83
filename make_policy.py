"""Reproduces a shipped policy from scratch: oracle demonstrations -> gain model -> actor -> policies/<codec>.pt.

    python make_policy.py --codec svtav1            # about 25 min on 2 cores (102 oracle searches)
    python make_policy.py --codec x264              # about 55 min (378 oracle searches: two draws, then 70 s of fit)
    python make_policy.py --codec vp9               # about 37 min (2213 s: 48 + 24 oracle searches, then the fit)
    python make_policy.py --codec svtav1 --key-probe   # policies/svtav1_probe.pt, every encode with the probes: 102
        # oracle searches and 204 key sweeps: 2 h 17 min with other jobs on the cores (load 4-8), 160 CPU-min, so
        # about 80 min on two idle cores (45 min on an AVX-512 Xeon); gives the shipped file tensor for tensor on the
        # kind of CPU that made it (BENCHMARKS.md §2.4.42-2.4.49; another actor on that Xeon, §2.4.52)
    python make_policy.py --codec x264 --encoder "YOUR ENCODER" --encoder-args "A|B" --inputs YOUR_CLIPS/ \\
        --data mine.jsonl --out mine.pt   # your encoder, your clips, x264's recipe

Each codec has its recipe (imitation.SHIPPED_RECIPES: window sets, consensus k), the defaults of
--windows and --consensus; the policy file records what it was made with. --key-probe encodes every demonstration
with the encoder's probes (PROTOCOL.md §4.1.2) and follows imitation.PROBE_RECIPES (SVT-AV1: the key offset from
fp_reuse and key_probe, fitted on the key sweeps too, and the next mini-GOPs' from ramp_probe), into
data/oracle_<codec>_kp.jsonl and policies/<codec>_probe.pt.

1. Demonstrations (bench/oracle_data.py): on every training window of the recipe's window sets
   (clips.WINDOW_SETS: `train` = clips.training_windows(), `static` = their slowed / frozen copies,
   `natural` = more camera sources, `tail` = a full GOP then a short one, `extra` = a handheld
   camera, a rendered flame, motion graphics, `screen` = a screen recording, `anim` and `blupi` = rendered
   animation; never an evaluated source)
   at 3 target rates each, the Δ=0 encode and the oracle's coordinate descent, every candidate a
   real encode; with --key-sweeps, also every offset of the key mini-GOP alone on those sets (6
   other rates each); with --draws 0,2, the window sets again at a second draw of 3 rates (seed 2),
   and both draws are fitted together. Kept in --data (reused when present: delete it to start over).
2. The gain model (gain_model.GainModel): ridge regression of every candidate's rate-neutral gain
   over its parent on the state; its optimum a*(s), shrunk where the models fitted without each
   training source disagree (gain_model.consensus_offset, --consensus k), is the policy. By
   default the key mini-GOP's offset depends on first-pass features (SVT-AV1 and VP9:
   fp_reuse, how many later frames of the GOP re-use its content, state.gop_reuse; x264: the
   hinge fp_reuse>0.9 = max(0, fp_reuse - 0.9), only content most of the GOP re-uses, gop_left,
   short GOPs, and the hinge fp_propagation>0.825, block propagation above 3.3: a fixed camera)
   and the other mini-GOPs get one offset (BENCHMARKS.md §2.4.6, §2.4.14, §2.4.18 and §2.4.30 say
   how these were chosen). The
   actor is fitted with the unused features shuffled (imitation.ignoring_unused), so it ignores them.
3. The actor (models.Actor, the SAC actor) is fitted to a*(s) on every state of the stored
   trajectories (--payback: a*(s) x state.payback_share(s)) and written with its provenance;
   --fade-finer-keys makes the file fade a short GOP's finer key answer at answer time by the same
   share instead (policy.py).
   --pattern-out also writes the best fixed per-position pattern (the same model without state)
   as a policy: the reference to beat.

With --inputs the demonstrations are your clips (the first --frames frames of each, 3 rates each,
every clip its own source; --augment adds a slowed and a still copy of each), alone or, with
--windows, beside those sets; with --encoder every encode is your encoder's, through the protocol
(PROTOCOL.md §7), and the policy file's codec is "encoder". Both need --data and --out: the shipped
records and policies are never touched.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

import clips
import encoder_proc
import eval_runs
import gain_model
import imitation
import oracle_records
import own_clips
import policy
from bench import oracle_data
from models import Actor
from state import FEATURE_NAMES, OBS_DIM

ROOT = Path(__file__).resolve().parent
POSITIONS = 8  # mini-GOPs per GOP in the demonstrations (keyint 64, mini-GOP 8)


def select_records(every: list[dict], label: str, windows: str, key_sweeps: str, inputs: list[str],
                   draws: tuple[int, ...] = (0,), suffix: str = "") -> list[dict]:  # fmt: skip
    """The records the fit uses: codec `label`'s points of the window sets at the rates of each seed in
    `draws` (oracle_data.of_window_sets), its key sweeps of `key_sweeps`, and every oracle point of the
    windows named in `inputs` (--inputs). `suffix`: the window sets' keys' ending ("/kp": --key-probe)."""
    mine = [r for r in every if r["codec"] == label]
    records = (oracle_data.of_draws(mine, windows, draws, suffix)
               + oracle_data.of_window_sets(mine, key_sweeps, "key", suffix=suffix))  # fmt: skip
    return records + [r for r in mine if r["window"] in inputs and r.get("search", "oracle") == "oracle"]


def recipe_defaults(values: Callable[[imitation.Recipe], Iterable[object]]) -> str:
    """Each codec's shipped value of a flag, for its help: "svtav1: a; x264: b,c; vp9: a"."""
    return "; ".join(f"{codec}: {','.join(map(str, values(r)))}" for codec, r in imitation.SHIPPED_RECIPES.items())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codec", default="svtav1", choices=("svtav1", "x264", "vp9"))
    p.add_argument("--data", default=None, help="demonstrations file (default data/oracle_CODEC.jsonl)")
    p.add_argument("--out", default=None, help="policy file (default policies/CODEC.pt)")
    p.add_argument("--pattern-out", default=None, help="also write the best fixed pattern as a policy here")
    p.add_argument("--jobs", type=int, default=2, help="oracle searches in parallel")
    p.add_argument("--ridge", type=float, default=3.0, help="ridge penalty of the gain model")
    p.add_argument("--hidden", default="64,64", help="actor layer widths")
    p.add_argument("--max-delta-qp", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--windows", default=None,
                   help=f"oracle window sets, comma-separated: {', '.join(clips.WINDOW_SETS)} (clips.WINDOW_SETS); "
                        "default: the codec's shipped recipe (imitation.SHIPPED_RECIPES)")
    p.add_argument("--key-sweeps", default=None,
                   help="window sets whose key mini-GOP is also swept alone (oracle_data.py --search key: 6 rates, "
                        "8 encodes each), comma-separated; default: the codec's shipped recipe (none)")
    p.add_argument("--payback", action="store_true", help="fade offsets where the GOP cannot pay them back")
    p.add_argument("--fade-finer-keys", action="store_true",
                   help="the policy file fades a short GOP's finer key answer at answer time by the share of a GOP "
                        "left to pay it back (policy.py; BENCHMARKS.md §2.4.50: better rate accuracy on test2, not "
                        "shipped)")  # fmt: skip
    p.add_argument("--consensus", type=float, default=None,
                   help="k > 0: offsets shrunk by k x their spread over leave-one-source-out fits; "
                        "default: the codec's shipped recipe")  # fmt: skip
    p.add_argument("--key-features", default=None,
                   help="state features the gain model may use on the key mini-GOP (comma-separated; all; '' = none); "
                        "default: the codec's shipped recipe ("
                        f"{recipe_defaults(lambda r: r.features.key or ('all',))}); "
                        "a term f>t is max(0, f - t), f<t max(0, t - f), A*B the product of two terms")
    p.add_argument("--inter-features", default=None,
                   help="the same for the other mini-GOPs (default: the recipe's, none: one offset)")
    p.add_argument("--draws", default=None,
                   help="seeds of the target-rate draws searched and fitted together (comma-separated, "
                        "bench/oracle_data.py --seed); default: the codec's shipped recipe "
                        f"({recipe_defaults(lambda r: r.draws)})")
    p.add_argument("--key-probe", action="store_true",
                   help="demonstrations encoded with the built-in encoder's --key-probe (PROTOCOL.md §4.1.2), so the "
                        "gain model may read the state's key_probe (--key-features key_probe); the policy then "
                        "wants encodes with --key-probe too (svtav1, x264)")  # fmt: skip
    own_clips.add_own_flags(p, "--data")
    p.add_argument("--key-curvature", default=None,
                   help="state features the key mini-GOP's curvature c(s) depends on (comma-separated; '' = one "
                        "curvature, BENCHMARKS.md §2.4.14); default: the codec's shipped recipe (one curvature)")
    p.add_argument("--key-pick", type=float, default=None, metavar="TAU",
                   help="with --key-probe: the key mini-GOP answers the better probe's offset where it beats the other "
                        "and Δ=0 by more than TAU dB at equal rate (imitation.key_pick_offsets; BENCHMARKS.md "
                        "§2.4.54: not shipped, so name --out); default: the codec's recipe (off)")  # fmt: skip
    p.add_argument("--ramp-pick", type=float, default=None, metavar="TAU",
                   help="with --key-probe: mini-GOPs 1-5 answer the better ramp probe's offset in the same way "
                        "(imitation.ramp_pick_offsets); default: the codec's recipe (off)")  # fmt: skip
    # values that start with "--" ("--codec|x264") stay values, as in evaluate.py
    ns = p.parse_args(encoder_proc.glue_dash_values(sys.argv[1:], ("--encoder-args", "--encoder-rl-args")))
    recipe = imitation.recipe_for(ns.codec, ns.key_probe)
    if ns.key_features is None:
        ns.key_features = ",".join(recipe.features.key or ())
    if ns.inter_features is None:
        ns.inter_features = ",".join(recipe.features.inter or ())
    if ns.key_curvature is None:
        ns.key_curvature = ",".join(recipe.features.curvature)
    try:
        spec = gain_model.GainFeatures.parse(ns.key_features, ns.inter_features, ns.key_curvature)
    except ValueError as exc:
        p.error(str(exc))
    own = ns.inputs is not None or bool(ns.encoder)
    if own and not (ns.data and ns.out):
        p.error("--inputs / --encoder: name --data and --out (your records and policy stay apart from ours)")
    if ns.encoder_args and not ns.encoder:
        p.error("--encoder-args needs --encoder (the built-in encoder takes --codec)")
    if ns.key_probe and (error := eval_runs.key_probe_error(ns.codec, ns.encoder)):
        p.error(error)
    ns.key_pick = recipe.key_pick if ns.key_pick is None else ns.key_pick
    ns.ramp_pick = recipe.ramp_pick if ns.ramp_pick is None else ns.ramp_pick
    for flag, tau in (("--key-pick", ns.key_pick), ("--ramp-pick", ns.ramp_pick)):
        if tau is not None and (not ns.key_probe or tau < 0):
            p.error(f"{flag} {tau:g}: needs --key-probe and a margin >= 0 dB")
    inputs: list[str] = []
    if ns.inputs is not None:
        try:
            found = oracle_data.input_windows(ns.inputs, ns.frames, ns.augment, Path(ns.data))
        except ValueError as exc:
            p.error(str(exc))
        n = len({w.clip for w in found})
        if n < 2 and not ns.windows:  # the fit is judged, and the consensus taken, leaving one source out at a time
            p.error(f"--inputs: {n} clip; give 2 or more (8 or more different sources advised)")
        inputs = [w.name for w in found]
    elif ns.augment:
        p.error("--augment needs --inputs (the window sets have their own augmented sets: static)")
    # With --inputs, only the window sets named too (your clips with ours: --windows RECIPE-SETS).
    ns.windows = ns.windows or ("" if inputs else recipe.windows)
    ns.key_sweeps = ns.key_sweeps if ns.key_sweeps is not None else "" if inputs else recipe.key_sweeps
    ns.consensus = recipe.consensus if ns.consensus is None else ns.consensus
    try:
        draws = tuple(int(d) for d in ns.draws.split(",")) if ns.draws is not None else recipe.draws
    except ValueError:
        p.error(f"--draws {ns.draws!r}: give seeds, comma-separated (e.g. 0,2)")
    if not draws or len(set(draws)) != len(draws) or min(draws) < 0:
        p.error(f"--draws {ns.draws!r}: give distinct seeds >= 0, comma-separated (e.g. 0,2)")
    for flag, sets in (("--windows", ns.windows), ("--key-sweeps", ns.key_sweeps)):
        if error := clips.window_sets_error(flag, sets):
            p.error(error)
    t0 = time.monotonic()
    data = Path(ns.data or ROOT / "data" / f"oracle_{ns.codec}{'_kp' if ns.key_probe else ''}.jsonl")
    out = Path(ns.out or policy.shipped_policy(f"{ns.codec}_probe" if ns.key_probe else ns.codec))
    searches = [(["--windows", name, "--seed", str(seed)], "oracle")
                for seed in draws for name in filter(None, ns.windows.split(","))]  # fmt: skip
    searches += [(["--windows", name], "key") for name in filter(None, ns.key_sweeps.split(","))]
    if inputs:
        searches += [(["--inputs", *ns.inputs, "--frames", str(ns.frames), *(["--augment"] if ns.augment else [])],
                      "oracle")]  # fmt: skip
    if ns.encoder:
        # '=' form: the values start with "--" ("--codec|x264"), which argparse would read as a flag
        own_flags = [f"--encoder={ns.encoder}", f"--encoder-args={ns.encoder_args}",
                     f"--encoder-rl-args={ns.encoder_rl_args}"]  # fmt: skip
        searches = [(where + own_flags, search) for where, search in searches]
    if ns.key_probe:
        searches = [(where + ["--key-probe"], search) for where, search in searches]
    for where, search in searches:
        cmd = [sys.executable, str(ROOT / "bench" / "oracle_data.py"), "--codec", ns.codec, "--out", str(data),
               "--jobs", str(ns.jobs), *where, "--search", search]  # fmt: skip
        print("$", " ".join(cmd), flush=True)
        if subprocess.run(cmd).returncode != 0:
            print(f"make_policy.py: the search stopped (oracle_data.py said why above); its points so far are in "
                  f"{data}", file=sys.stderr)  # fmt: skip
            return 1

    label = "encoder" if ns.encoder else ns.codec  # the records' codec (oracle_data.py)
    records = select_records(oracle_records.read_records([data]), label, ns.windows, ns.key_sweeps, inputs, draws,
                             oracle_data.probe_suffix(ns.key_probe))  # fmt: skip
    if not records:
        print(f"make_policy.py: no oracle points of {ns.windows or ns.inputs} in {data}", file=sys.stderr)
        return 1
    hidden = tuple(int(h) for h in ns.hidden.split(","))
    actor, summary = imitation.train_policy(records, ns.max_delta_qp, hidden, ns.ridge, ns.seed, ns.payback,
                                           ns.consensus, spec, ns.key_pick, ns.ramp_pick)  # fmt: skip
    provenance = {"summary": summary, "command": " ".join(["python make_policy.py", *sys.argv[1:]]),
                  "data": str(data), "date": time.strftime("%Y-%m-%d"), "windows": ns.windows,
                  "key_sweeps": ns.key_sweeps, "consensus": str(ns.consensus), "features": spec.describe(),
                  "draws": ",".join(map(str, draws)), **({"key_probe": "1"} if ns.key_probe else {}),
                  **({"key_pick": f"{ns.key_pick:g}"} if ns.key_pick is not None else {}),
                  **({"ramp_pick": f"{ns.ramp_pick:g}"} if ns.ramp_pick is not None else {})}  # fmt: skip
    if ns.encoder:
        provenance |= {"encoder": ns.encoder, "encoder_args": ns.encoder_args}
    if inputs:
        provenance |= {"inputs": ",".join(inputs)}
    policy.save(out, actor, label, ns.max_delta_qp, 0.02, provenance,
                imitation.actor_inputs(spec, ns.key_pick is not None, ns.ramp_pick is not None),
                ns.fade_finer_keys)  # fmt: skip
    print(f"{out}: {summary}")
    if ns.pattern_out:
        moves = gain_model.move_samples(records)
        pattern = gain_model.fixed_pattern(moves, ns.max_delta_qp, POSITIONS)
        obs = oracle_records.trajectory_observations(records)
        pos = np.round(obs[:, FEATURE_NAMES.index("gop_progress")] * POSITIONS).astype(int)
        torch.manual_seed(ns.seed)
        fixed = Actor(OBS_DIM, 1, hidden)
        pattern_target = np.asarray(pattern, dtype=np.float64)[np.clip(pos, 0, POSITIONS - 1)]
        rms_p = imitation.distill(fixed, obs, pattern_target, ns.max_delta_qp)
        policy.save(Path(ns.pattern_out), fixed, ns.codec, ns.max_delta_qp, 0.02,
                    {"summary": f"best fixed pattern {pattern} (offset per GOP position), fit RMS {rms_p:.2f} QP",
                     "command": provenance["command"], "data": str(data)})  # fmt: skip
        print(f"{ns.pattern_out}: fixed pattern {pattern}, fit RMS {rms_p:.2f} QP")
    print(f"done in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
