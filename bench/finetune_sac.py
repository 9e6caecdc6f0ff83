"""SAC fine-tuning of a shipped policy on training windows, then its deterministic policy on unseen clips.

    python bench/finetune_sac.py --codec x264 --windows "train[::2]" --out /tmp/ft        # C arms, ~8 min
    python bench/finetune_sac.py --codec x264 --out /tmp/ft2 \\
        --windows "static[::2],tail[::3],extra[:3],screen[:2],natural[::4]"                  # D arms, ~14 min

Each window of the sets (clips.WINDOW_SETS; `name[slice]` takes a Python slice of a set's list) is
encoded at one target drawn log-uniformly from 0.03-0.24 bit per luma pixel (seeded). Every arm runs
`main.py` on those videos from the policy (`--load-checkpoint POLICY`) with the same schedule
(`--bc-weight 10 --epochs 12 --learning-starts 0 --updates-per-step 4 --reward-metric psnr-rd
--gamma 0.99 --eval-interval 2`) plus the arm's own flags; the default arms differ only in the
critics' start: `fresh` (new networks) and `pretrained` (`--pretrain-critics`, the gain model of
the codec's shipped recipe on its oracle points, `--critic-data`). Then `bench/eval_quality.py`
evaluates every arm's last checkpoint beside the policy on `--splits` (held-out by default).

Prints the deterministic policy's ΔPSNR-Y at equal rate on the training windows every 2 epochs
(`main.py`'s "deterministic policy" lines) and eval_quality's tables (BENCHMARKS.md §2.4.24).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import clips  # noqa: E402
import eval_runs  # noqa: E402
import imitation  # noqa: E402
import oracle_records  # noqa: E402
from bench import oracle_data  # noqa: E402
from bench.machine_info import machine  # noqa: E402

SCHEDULE = ["--bc-weight", "10", "--epochs", "12", "--learning-starts", "0", "--updates-per-step", "4",
            "--reward-metric", "psnr-rd", "--gamma", "0.99", "--eval-interval", "2",
            "--ckpt-interval", "4"]  # fmt: skip
DETERMINISTIC = re.compile(r"epoch (\d+), deterministic policy: mean ΔPSNR-Y at equal rate ([+-]\d+\.\d+) dB")


def pick_windows(spec: str) -> list[clips.Window]:
    """'static[::2],tail' -> the windows of each set, sliced; ValueError naming a bad part."""
    out: list[clips.Window] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = re.fullmatch(r"(\w+)(?:\[(-?\d*)(?::(-?\d*))?(?::(-?\d*))?\])?", part)
        if m is None or m.group(1) not in clips.WINDOW_SETS:
            sets = ", ".join(clips.WINDOW_SETS)
            raise ValueError(f"--windows: {part!r} is not SET or SET[slice] with SET one of {sets}")
        name, start, stop, step = m.groups()
        wins = clips.WINDOW_SETS[name]()
        if "[" in part:
            bounds = [int(x) if x else None for x in (start, stop, step)]
            wins = wins[slice(*bounds)] if ":" in part else [wins[bounds[0] or 0]]
        out += wins
    if not out:
        raise ValueError("--windows: no window selected")
    return out


def video_args(wins: list[clips.Window], codec: str, work: Path, seed: int) -> list[str]:
    """One main.py --videos value per window, with its target bitrate (printed as a table)."""
    rng = np.random.default_rng(seed)
    ext = ".264" if codec == "x264" else ".ivf"
    (work / "enc").mkdir(parents=True, exist_ok=True)
    args = []
    print("| window | bit/pixel | kbit/s |\n|---|---:|---:|")
    for w in wins:
        path = clips.materialise(w)
        v = eval_runs.probe_videos([path], eval_runs.EvalSettings(codec=codec))[0]
        bpp = float(np.exp(rng.uniform(np.log(0.03), np.log(0.24))))
        (kbps,) = eval_runs.targets_for(v, None, [bpp])
        n = w.name
        args.append(f"--videos=--input|{path}|--codec|{codec}|--pass|2|--stat-in|{work}/stats/{n}.stat|"
                    f"--bitrate|{kbps}|--o|{work}/enc/{n}{ext}|--csv|{work}/enc/{n}.csv")  # fmt: skip
        print(f"| {n} | {bpp:.3f} | {kbps} |")
    return args


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codec", default="x264", choices=("svtav1", "x264", "vp9"))
    p.add_argument("--out", required=True, help="work and report folder")
    p.add_argument("--windows", default="train[::2]", help="window sets, comma-separated, each SET or SET[slice]")
    p.add_argument("--policy", default=None, help="the policy fine-tuned (default: the codec's shipped one)")
    p.add_argument("--critic-data", default=None,
                   help="oracle records for the pretrained arm (default data/oracle_CODEC.jsonl), of which the "
                        "shipped recipe's window sets are used")  # fmt: skip
    p.add_argument("--arms", default="fresh:;pretrained:--pretrain-critics {critic_data}",
                   help="'NAME:main.py flags;...'; {critic_data} is the recipe's records written under --out")
    p.add_argument("--splits", default="heldout", help="eval_quality.py --splits")
    p.add_argument("--seed", type=int, default=7, help="draw of the target rates")
    ns = p.parse_args()
    try:
        wins = pick_windows(ns.windows)
    except ValueError as exc:
        p.error(str(exc))
    pol = ns.policy or ns.codec
    data = Path(ns.critic_data or f"data/oracle_{ns.codec}.jsonl")
    arms = [tuple(a.split(":", 1)) for a in ns.arms.split(";") if a.strip()]
    if any(len(a) != 2 or not a[0] for a in arms):
        p.error(f"--arms: {ns.arms!r} is not 'NAME:flags;...'")
    uses_critic_data = any("{critic_data}" in flags for _, flags in arms)
    if uses_critic_data and not data.is_file():
        p.error(f"--critic-data: {data} is not a file (bench/oracle_data.py writes it)")
    out = Path(ns.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"{machine()}\n\n`python bench/finetune_sac.py {' '.join(sys.argv[1:])}`\n")
    critic_data = out / "critic_records.jsonl"
    if uses_critic_data:  # the recipe's points only, as make_policy.py fits
        recipe = imitation.SHIPPED_RECIPES[ns.codec]
        mine = [r for r in oracle_records.read_records([data]) if r["codec"] == ns.codec]
        kept = oracle_data.of_window_sets(mine, recipe.windows)
        critic_data.write_text("".join(json.dumps(r) + "\n" for r in kept))
    videos = video_args(wins, ns.codec, out, ns.seed)

    curves: dict[str, list[tuple[int, float]]] = {}
    ckpts = []
    for name, flags in arms:
        t0 = time.monotonic()
        run = out / name
        cmd = [sys.executable, str(ROOT / "main.py"), *videos, "--load-checkpoint", pol, *SCHEDULE,
               "--ckpt-dir", str(run / "ckpt"), "--out-dir", str(run / "out"), "--stat-dir", str(out / "stats"),
               "--baseline-stats", str(out / "baseline_stats.json"), "--runs-dir", str(run / "runs"),
               "--log-level", "1", *flags.format(critic_data=critic_data).split()]  # fmt: skip
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        (out / f"{name}.log").write_text(res.stderr)
        if res.returncode != 0:
            print(f"arm {name}: main.py exited {res.returncode}; its log is {out / f'{name}.log'}", file=sys.stderr)
            return 1
        curves[name] = [(int(e), float(v)) for e, v in DETERMINISTIC.findall(res.stderr)]
        ckpts.append(f"{name}={run / 'ckpt' / 'checkpoint_epoch_12.pt'}")
        print(f"\narm {name}: {time.monotonic() - t0:.0f} s", flush=True)

    epochs = sorted({e for c in curves.values() for e, _ in c})
    print("\nDeterministic policy on the training windows, ΔPSNR-Y at equal rate (dB), by epoch:\n")
    print("| arm | " + " | ".join(str(e) for e in epochs) + " |\n|---|" + "---:|" * len(epochs))
    for name, c in curves.items():
        by = dict(c)
        print(f"| {name} | " + " | ".join(f"{by[e]:+.3f}" if e in by else "" for e in epochs) + " |")
    cmd = [sys.executable, str(ROOT / "bench" / "eval_quality.py"), "--out", str(out / "eval"), "--codec", ns.codec,
           "--splits", ns.splits, "--policy", f"policy={pol}"]  # fmt: skip
    cmd += [x for c in ckpts for x in ("--policy", c)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    (out / "eval.log").write_text(res.stderr)
    print(res.stdout)
    return res.returncode


if __name__ == "__main__":
    sys.exit(main())
