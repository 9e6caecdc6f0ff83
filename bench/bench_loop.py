"""Loop cost: handshake latency and the agent's share of the encode's wall time, on real encodes.

    python bench/bench_loop.py                      # both codecs, 176x144 and 640x272, ext4 + tmpfs, ~2 min
    python bench/bench_loop.py --repeats 1 --codecs x264 --clips carphone --rl-roots .   # ~15 s

What it runs, per codec x clip: pass 1 once (as main.py does), a Δ=0 encode (the baseline, also the
"no policy" row), then `--repeats` encodes through the real loop (io_runner.run_encode) with main.py's
SacLearner around a SACAgent: every request is answered with SACAgent.act (the policy's forward
pass, stochastic), and every answer is followed by SACAgent.train_step (one gradient step, batch
128) while the encoder codes. The encoder runs under a shim (this file, `--encoder-shim`) that
times, on the encoder's side, every wait for a reply: request renamed into place -> reply read.

A third set of encodes runs main.py's infer mode (deterministic act, no learning), to separate the
forward pass from the learning that follows each reply. A fourth trains as `main.py --workers N`
does (workers.py), a fifth as `--learner process` does (learner_process.py): the same SAC steps,
in a learner thread or process, never between a reply and the next request; their `--repeats`
encodes run on `--workers` workers at once (default 1), each in its own rl_io subdirectory.

Tables (Markdown):
  1. the real loop: handshake p50/p99 as io_runner measures it (request mtime -> reply renamed,
     EncodeResult.summary()'s formula over all encodes pooled) and as the encoder measures it, the
     per-mini-GOP difference of the two, the agent's share of the wall time as
     EncodeResult.summary() reports it (agent_s / wall_s), and the share of the final pass the
     encoder spent waiting for replies (its agent_wait_s / encode_s: what the agent costs the encode).
  2. bare round trips of two Python processes: inotify (protocol.DirWatcher) vs a 10 ms sleep-poll.
  3. where a handshake's time goes: each agent-side piece timed in-process on a real request,
     back to back and after a 10 ms sleep each (as in the loop, where the agent sleeps while the encoder codes).
Goals: handshake p50 <= 0.5 ms and p99 <= 2 ms including the forward pass; agent <= 1 % of the wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from machine_info import machine  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from replay import ReplayBuffer
    from sac_agent import SACAgent

# ----------------------------------------------------------------------------- encoder shim


def encoder_shim(out_path: str, argv: list[str]) -> int:
    """Runs the built-in encoder with every reply wait timed; writes {"waits_s": [...]} to out_path.

    The builtin encoder's AgentClient.ask writes the request (temporary file + rename), then calls
    protocol.read_when_present for the reply: timing that call is "request renamed into place ->
    reply read", per mini-GOP (the encoder itself only reports the sum, agent_wait_s).
    """
    import protocol
    from builtin_encoder import cli

    waits: list[float] = []
    original = protocol.read_when_present

    def timed(path: Path, watcher: protocol.DirWatcher, deadline: float, alive: object = None) -> str | None:
        t0 = time.perf_counter()
        text = original(path, watcher, deadline, alive)
        waits.append(time.perf_counter() - t0)
        return text

    protocol.read_when_present = timed  # session.py calls it through the module attribute
    code = cli.main(argv)
    Path(out_path).write_text(json.dumps({"waits_s": waits}))
    return code


# ----------------------------------------------------------------------------- bare round trips

PAYLOAD = json.dumps({"pad": "x" * 900})  # about the size of a real request, bytes


def _wait_inotify(path: Path, watcher: object) -> None:
    import protocol

    assert isinstance(watcher, protocol.DirWatcher)
    if protocol.read_when_present(path, watcher, time.monotonic() + 30.0) is None:
        raise TimeoutError(path)


def _wait_poll(path: Path, _watcher: object, interval_s: float = 0.010) -> None:
    deadline = time.monotonic() + 30.0
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(interval_s)
    path.read_text()


def pong(directory: str, count: int, mode: str) -> int:
    """The answering process of a bare round trip: waits for ping k, writes pong k."""
    import protocol

    d = Path(directory)
    wait = _wait_inotify if mode == "inotify" else _wait_poll
    with protocol.DirWatcher(d) as watcher:
        for k in range(count):
            wait(d / f"ping{k:05d}.json", watcher)
            protocol.write_atomic(d / f"pong{k:05d}.json", '{"qp": 30}')
    return 0


def bare_round_trips(mode: str, count: int, root: Path, warmup: int = 20, idle_s: float = 0.0) -> np.ndarray:
    """Round-trip times (s) of `count` ping -> pong exchanges of two Python processes in a new directory in `root`.

    `idle_s`: both processes sleep that long before each ping (as encoder and agent do while a
    mini-GOP is coded), so each exchange starts from idle CPUs instead of back to back.
    """
    import protocol

    wait = _wait_inotify if mode == "inotify" else _wait_poll
    with tempfile.TemporaryDirectory(prefix="bench_rt_", dir=root) as tmp:
        d = Path(tmp)
        with protocol.DirWatcher(d) as watcher:
            peer = subprocess.Popen([sys.executable, __file__, "--pong", tmp, str(count + warmup), mode])
            try:
                times = []
                for k in range(count + warmup):
                    if idle_s:
                        time.sleep(idle_s)
                    t0 = time.perf_counter()
                    protocol.write_atomic(d / f"ping{k:05d}.json", PAYLOAD)
                    wait(d / f"pong{k:05d}.json", watcher)
                    times.append(time.perf_counter() - t0)
            finally:
                peer.wait(30)
    return np.array(times[warmup:])


# ----------------------------------------------------------------------------- the real loop


@dataclass
class Config:
    codec: str
    clip: str  # bundled clip file name
    kbps: int
    frames: int


COLD_CALLS = 100  # table 3: calls timed after a 10 ms sleep each
CLIPS = {"carphone": ("carphone_pristine.mp4", 120), "bikes": ("bikes.mp4", 600)}  # file, kbit/s


def make_agent(torch_seed: int = 0) -> tuple[SACAgent, ReplayBuffer]:
    """A SACAgent (default SACConfig: (128, 128), batch 128) and a buffer ready to learn from step 1."""
    from config import SACConfig
    from replay import ReplayBuffer
    from sac_agent import SACAgent
    from state import OBS_DIM

    cfg = SACConfig(learning_starts=0)  # the policy answers from the first request (no random warm-up)
    agent = SACAgent(OBS_DIM, 1, cfg, "cpu", torch_seed)
    buffer = ReplayBuffer(cfg.buffer_size, OBS_DIM, 1, seed=torch_seed)
    rng = np.random.default_rng(torch_seed)
    for _ in range(cfg.batch_size):  # random transitions, so train_step runs from the first mini-GOP
        buffer.add(rng.normal(size=OBS_DIM), rng.uniform(-1, 1, 1), rng.normal(), rng.normal(),
                   rng.normal(size=OBS_DIM), 0.0)  # fmt: skip
    return agent, buffer


@dataclass
class LoopRow:
    name: str
    mini_gops: int
    hs_p50_ms: float
    hs_p99_ms: float
    enc_p50_ms: float
    enc_p99_ms: float
    diff_p50_ms: float  # encoder-side wait minus io_runner's handshake, per mini-GOP
    diff_max_abs_ms: float
    agent_share: float  # EncodeResult.summary()["agent_share"], pooled: sum agent_s / sum wall_s
    enc_wait_share: float  # encoder's agent_wait_s / encode_s, pooled
    learn_ms: float  # mean train_step time, ms
    encode_ms_per_mg: float  # encoder's final-pass wall time per mini-GOP, ms


def run_config(c: Config, repeats: int, work: Path, rl_dir: Path, label: str, workers: int = 1) -> list[LoopRow]:
    """Pass 1, the Δ=0 encode, then `repeats` SAC train, infer, learner-thread and learner-process train encodes.

    Returns one row each for Δ=0, infer, train, and train with the learner thread and process (on `workers` workers).
    """
    import encoder_proc
    import io_runner
    from inputs import bundled_clip
    from learners import Counters, SacLearner, ZeroDeltaLearner

    clip = bundled_clip(c.clip)
    tag = f"{c.codec}_{Path(c.clip).stem}"
    stat = work / f"{tag}.stat"
    args = ["--input", str(clip), "--codec", c.codec, "--frames", str(c.frames), "--bitrate", str(c.kbps),
            "--pass", "2", "--stat-in", str(stat), "--quiet"]  # fmt: skip
    spec = encoder_proc.VideoSpec(name=tag, args=args)
    p1 = encoder_proc.pass1_args(spec)  # None when an earlier rl root already made the stat file
    if p1 is not None:
        encoder_proc.run_to_completion(encoder_proc.encoder_command("") + p1, work / f"{tag}.pass1.log", tag, 600)

    agent, buffer = make_agent()
    learn_times: list[float] = []

    class TimedSacLearner(SacLearner):
        def learn(self) -> dict[str, float]:
            t0 = time.perf_counter()
            logs = super().learn()
            learn_times.append(time.perf_counter() - t0)
            return logs

    def encode(
        learner: io_runner.Learner, baseline: object, run: str, rl_dir: Path = rl_dir
    ) -> tuple[io_runner.EncodeResult, dict, list]:
        session = f"bench-{tag}-{run}"
        shim_out, summary = work / f"{tag}.{run}.waits.json", work / f"{tag}.{run}.summary.json"
        command = ([sys.executable, __file__, "--encoder-shim", str(shim_out)] + args
                   + ["--summary-json", str(summary)] + encoder_proc.rl_args(encoder_proc.DEFAULT_RL_ARGS, rl_dir,
                                                                              session))  # fmt: skip
        res = io_runner.run_encode(spec, command, rl_dir, session, learner, baseline, 4, 0.02, 120.0,
                                   work / f"{tag}.{run}.log")  # fmt: skip
        if not res.ok:
            raise RuntimeError(res.message)
        return res, json.loads(summary.read_text()), json.loads(shim_out.read_text())["waits_s"]

    base_res, base_sum, base_waits = encode(ZeroDeltaLearner(), None, "delta0")
    baseline = io_runner.baseline_from_result(base_res)
    runs = [(base_res, base_sum, base_waits)]
    learner = TimedSacLearner(agent, buffer, Counters(), learning=True)
    sac_runs = [encode(learner, baseline, f"sac{i}") for i in range(repeats)]
    # main.py --mode infer: the deterministic forward pass answers, nothing is learned.
    infer_runs = [encode(TimedSacLearner(agent, buffer, Counters(), learning=False), baseline, f"infer{i}")
                  for i in range(repeats)]  # fmt: skip
    # main.py --workers N [--learner process]: the gradient steps in the learner thread (workers.py) or
    # process (learner_process.py), the same replay ratio.
    import workers as pool
    from learner_process import LearnerProcess

    hub_runs = {}
    for kind, hub_class in (("thread", pool.LearnerThread), ("process", LearnerProcess)):
        agent2, buffer2 = make_agent()
        hub = hub_class(agent2, buffer2, Counters())
        learners = [hub.worker(k, k) for k in range(workers)]
        hub.start()
        try:
            def one(k: int, i: int, kind: str = kind, learners: list = learners) -> tuple:
                return encode(learners[k], baseline, f"{kind}{i}", rl_dir / f"w{k}")

            hub_runs[kind] = pool.run_pool(list(range(repeats)), workers, one, lambda: False)
            hub.drain()
        finally:
            hub.stop()
    name = f"{c.codec} {Path(c.clip).stem} ({label})"
    return [
        _row(f"{name} Δ=0, no policy", runs, []),
        _row(f"{name} SAC infer: act (deterministic)", infer_runs, []),
        _row(f"{name} SAC train: act + train_step", sac_runs, learn_times),
        *[_row(f"{name} SAC train, learner {kind}, {workers} worker(s): act", [r for r in done if r], [])
          for kind, done in hub_runs.items()],
    ]  # fmt: skip


def _row(name: str, runs: list, learn_times: list[float]) -> LoopRow:
    hs = np.concatenate([[s.handshake_s for s in r.done_steps] for r, _, _ in runs])
    enc = np.concatenate([w for _, _, w in runs])
    if len(enc) != len(hs):
        raise RuntimeError(f"{name}: {len(enc)} encoder-side waits for {len(hs)} handshakes")
    for _, s, w in runs:  # the shim's per-wait times must add up to the encoder's own total
        if abs(sum(w) - s["agent_wait_s"]) > 0.01 * s["agent_wait_s"] + 1e-3:
            raise RuntimeError(f"{name}: shim waits {sum(w):.4f} s != encoder agent_wait_s {s['agent_wait_s']:.4f} s")
    diff = enc - hs
    return LoopRow(
        name=name,
        mini_gops=len(hs),
        hs_p50_ms=1e3 * float(np.percentile(hs, 50)),
        hs_p99_ms=1e3 * float(np.percentile(hs, 99)),
        enc_p50_ms=1e3 * float(np.percentile(enc, 50)),
        enc_p99_ms=1e3 * float(np.percentile(enc, 99)),
        diff_p50_ms=1e3 * float(np.median(diff)),
        diff_max_abs_ms=1e3 * float(np.abs(diff).max()),
        agent_share=sum(r.agent_s for r, _, _ in runs) / sum(r.wall_s for r, _, _ in runs),
        enc_wait_share=sum(s["agent_wait_s"] for _, s, _ in runs) / sum(s["encode_s"] for _, s, _ in runs),
        learn_ms=1e3 * float(np.mean(learn_times)) if learn_times else float("nan"),
        encode_ms_per_mg=1e3 * sum(s["encode_s"] for _, s, _ in runs) / len(hs),
    )


# ----------------------------------------------------------------------------- pieces of a handshake


def breakdown(request_text: str, root: Path, n: int = 1000) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """Each agent-side piece of a handshake, timed `n` times in-process on one real request (s).

    File pieces run in a directory under `root` and, as in the real loop, write a new file name
    every time (replacing an existing file costs more on ext4).
    """
    import dataclasses

    import protocol
    from io_runner import RlIoChannel
    from models import NumpyActor
    from state import action_to_qp, build_observation

    agent, buffer = make_agent()
    with tempfile.TemporaryDirectory(prefix="bench_bd_", dir=root) as tmp:
        d = Path(tmp)
        channel = RlIoChannel(d, "", 10.0)
        req = protocol.parse_request(request_text, Path("request"))
        reqs = iter([dataclasses.replace(req, mg_index=i) for i in range(n + 100 + COLD_CALLS)])
        files = iter([protocol.request_path(d, i) for i in range(n + 100 + COLD_CALLS)])
        for i in range(n + 100 + COLD_CALLS):
            protocol.write_atomic(protocol.request_path(d, i), request_text)
        obs = build_observation(req, None, None)
        fast, rng = NumpyActor(agent.actor), np.random.default_rng(0)
        pieces: list[tuple[str, Callable[[], object]]] = [
            ("read request file", lambda: next(files).read_text(encoding="utf-8")),
            ("protocol.parse_request (JSON + validation)", lambda: protocol.parse_request(request_text, d)),
            ("build_observation", lambda: build_observation(req, None, None)),
            ("SACAgent.act (forward pass, sampled)", lambda: agent.act(obs)),
            ("SACAgent.act (deterministic)", lambda: agent.act(obs, deterministic=True)),
            # what --workers N > 1, infer and evaluation act with (models.NumpyActor)
            ("NumpyActor.sample (workers)", lambda: fast.sample(obs, rng)),
            ("NumpyActor.deterministic (infer, evaluate)", lambda: fast.deterministic(obs)),
            ("action_to_qp + write_reply (new file: tmp + rename)",
             lambda: channel.write_reply(next(reqs), action_to_qp(0.3, req, 4))),
            ("stat request mtime", lambda: protocol.request_path(d, 1).stat().st_mtime_ns),
        ]  # fmt: skip
        out = []
        for name, fn in pieces:
            times = np.empty(n + 50)
            for i in range(n + 50):
                t0 = time.perf_counter()
                fn()
                times[i] = time.perf_counter() - t0
            # In the loop each piece runs once per mini-GOP, after the agent slept while the encoder
            # coded: time it again after a 10 ms sleep each (cold caches, a vCPU woken from idle).
            cold = np.empty(COLD_CALLS)
            for i in range(COLD_CALLS):
                time.sleep(0.01)
                t0 = time.perf_counter()
                fn()
                cold[i] = time.perf_counter() - t0
            out.append((name, times[50:], cold))  # the first calls warm caches up
        times = np.empty(100)
        for i in range(len(times)):
            t0 = time.perf_counter()
            agent.train_step(buffer)
            times[i] = time.perf_counter() - t0
        # not timed after idle: off the reply path, it runs back to back with the learner's other updates
        out.append(("SACAgent.train_step (1 update, batch 128; runs after the reply)", times, None))
        channel.close()
    return out


# ----------------------------------------------------------------------------- report


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def fs_label(root: Path) -> str:
    """'<root> (<file system type>)', from /proc/mounts (the longest mount point containing root)."""
    root = root.resolve()
    best, fstype = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1]
            if (root == Path(mnt) or Path(mnt) in root.parents) and len(mnt) > len(best):
                best, fstype = mnt, parts[2]
    except OSError:
        pass
    return f"{root} {fstype}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--encoder-shim"]:
        return encoder_shim(argv[1], argv[2:])
    if argv[:1] == ["--pong"]:
        return pong(argv[1], int(argv[2]), argv[3])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--codecs", default="x264,svtav1", help="comma-separated (default x264,svtav1)")
    p.add_argument("--clips", default="carphone,bikes", help="carphone (176x144), bikes (640x272)")
    p.add_argument("--frames", type=int, default=120, help="frames per encode (default 120: 15 mini-GOPs)")
    p.add_argument("--repeats", type=int, default=3, help="SAC encodes per codec x clip (default 3)")
    p.add_argument("--rl-roots", default=".,/dev/shm",
                   help="comma-separated directories to put the rl_io directory in (default: the current "
                        "directory, where main.py's ./rl_io lives, and tmpfs /dev/shm when present)")  # fmt: skip
    p.add_argument("--round-trips", type=int, default=1000, help="bare inotify round trips (default 1000)")
    p.add_argument("--poll-round-trips", type=int, default=200, help="bare sleep-poll round trips (default 200)")
    p.add_argument("--torch-threads", type=int, default=0, help="torch.set_num_threads (default 0: torch's own)")
    p.add_argument("--workers", type=int, default=1,
                   help="workers at once for the learner-thread train encodes (default 1)")  # fmt: skip
    ns = p.parse_args(argv)
    from builtin_encoder.session import CODECS

    for name in ns.clips.split(","):
        if name not in CLIPS:
            p.error(f"--clips: unknown clip {name!r}; there are {', '.join(CLIPS)}")
    for name in ns.codecs.split(","):
        if name not in CODECS:
            p.error(f"--codecs: unknown codec {name!r}; there are {', '.join(CODECS)}")

    import torch

    import protocol

    if ns.torch_threads:
        torch.set_num_threads(ns.torch_threads)
    roots = [Path(r) for r in ns.rl_roots.split(",") if r and Path(r).is_dir()]
    print(f"machine: {machine()}")
    print(f"load average at start: {load()}")
    t_start = time.monotonic()

    rows: list[LoopRow] = []
    request_text = ""
    with tempfile.TemporaryDirectory(prefix="bench_loop_") as tmp:
        work = Path(tmp)
        for root in roots:
            with tempfile.TemporaryDirectory(prefix="bench_rl_io_", dir=root) as rl_tmp:
                for codec in ns.codecs.split(","):
                    for clip in ns.clips.split(","):
                        file, kbps = CLIPS[clip]
                        rows += run_config(Config(codec, file, kbps, ns.frames), ns.repeats, work, Path(rl_tmp),
                                           fs_label(root).split()[-1], ns.workers)  # fmt: skip
                        print(f"  done {codec} {clip} in {root} ({time.monotonic() - t_start:.0f} s, "
                              f"load {load()})", file=sys.stderr)  # fmt: skip
                request_text = protocol.request_path(Path(rl_tmp), 1).read_text()

    print("\n### 1. The real loop (io_runner.run_encode, real encoder processes, --pass 2)\n")
    print("rl_io in: " + "; ".join(fs_label(r) for r in roots) + "\n")
    print("| run | mini-GOPs | handshake p50 / p99 ms (io_runner) | encoder-side wait p50 / p99 ms | "
          "encoder − io_runner p50 / max abs ms | agent_share (agent_s / wall_s) | encoder wait share "
          "(agent_wait_s / encode_s) | train_step ms | encoder ms / mini-GOP |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r.name} | {r.mini_gops} | {r.hs_p50_ms:.3f} / {r.hs_p99_ms:.3f} | {r.enc_p50_ms:.3f} / "
              f"{r.enc_p99_ms:.3f} | {r.diff_p50_ms:+.3f} / {r.diff_max_abs_ms:.3f} | {100 * r.agent_share:.2f} % | "
              f"{100 * r.enc_wait_share:.2f} % | {r.learn_ms:.2f} | {r.encode_ms_per_mg:.1f} |")  # fmt: skip

    print("\n### 2. Bare round trips of two Python processes (~900-byte file each way, protocol.write_atomic)\n")
    print("| directory | wait | round trips | p50 ms | p99 ms | mean ms |")
    print("|---|---|---:|---:|---:|---:|")
    for root in roots:
        for mode, n, idle in (("inotify", ns.round_trips, 0.0), ("inotify, 10 ms idle before each", 200, 0.01),
                              ("10 ms sleep-poll", ns.poll_round_trips, 0.0)):  # fmt: skip
            rt = bare_round_trips("poll" if "poll" in mode else "inotify", n, root, idle_s=idle)
            print(f"| {fs_label(root)} | {mode} | {n} | {1e3 * np.percentile(rt, 50):.3f} | "
                  f"{1e3 * np.percentile(rt, 99):.3f} | {1e3 * rt.mean():.3f} |")  # fmt: skip

    print("\n### 3. Agent-side pieces of one handshake (in-process, one real request)\n")
    print("| piece | " + " | ".join(f"{fs_label(r)} p50 / p99 µs, p50 after 10 ms idle" for r in roots) + " |")
    print("|---|" + "---:|" * len(roots))
    tables = [breakdown(request_text, root) for root in roots]
    for i, (name, _, _) in enumerate(tables[0]):
        cells = [f"{1e6 * np.percentile(t[i][1], 50):.1f} / {1e6 * np.percentile(t[i][1], 99):.1f}, "
                 + (f"{1e6 * np.percentile(t[i][2], 50):.1f}" if t[i][2] is not None else "–") for t in tables]
        print(f"| {name} | " + " | ".join(cells) + " |")

    print(f"\nload average at end: {load()}; total {time.monotonic() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
