"""Learning cost: SAC gradient steps per second, our SACAgent vs Stable-Baselines3's SAC, on the CPU.

    python bench/bench_learning.py                  # ~1 min: threads 1 and torch's default, 5 rounds
    python bench/bench_learning.py --threads 1 --profile

Both agents get the same network sizes (SACConfig.hidden_sizes, for the actor and every critic),
batch size (SACConfig.batch_size), observation/action sizes (state.OBS_DIM, 1), learning rates,
gamma and tau, twin reward critics, automatic entropy tuning and one Polyak update per step, and
run in one process under the same torch thread setting. Each replay buffer is filled with the same
number of random transitions first.

  ours: `agent.update(buffer.sample(B))` in a loop (sampling included).
  SB3:  `model.train(gradient_steps=N, batch_size=B)` (sampling included, as in SB3's own loop).

Our update does more work per step: it also trains a cost critic Q_c (a third Q network with its own
target, optimiser and Polyak update; the actor loss evaluates it too), i.e. 3 critics to SB3's 2.
The table therefore gives the raw ratio and, "cost critic counted", the ratio of critic updates per
second (steps/s x 3 for ours, x 2 for SB3). Rounds alternate ours / SB3 so that a change of machine
load hits both; the median round is reported.
Goal: ours at least as many gradient steps/s as SB3's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from machine_info import machine  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from config import SACConfig  # noqa: E402
from replay import ReplayBuffer  # noqa: E402
from sac_agent import SACAgent  # noqa: E402
from state import OBS_DIM  # noqa: E402

ACT_DIM = 1


class SpacesOnly(gym.Env[np.ndarray, np.ndarray]):
    """An environment with EncoderEnv's spaces and nothing else: SB3 needs one to build its model."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(-4.0, 4.0, (OBS_DIM,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (ACT_DIM,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(OBS_DIM, np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        return np.zeros(OBS_DIM, np.float32), 0.0, False, False, {}


def random_transitions(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
        "next_obs": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(n, ACT_DIM)).astype(np.float32),
        "reward": rng.normal(size=n).astype(np.float32),
        "cost": rng.normal(size=n).astype(np.float32),
        "done": (rng.uniform(size=n) < 0.125).astype(np.float32),  # GOPs of 8 mini-GOPs
    }


def make_ours(cfg: SACConfig, data: dict[str, np.ndarray]) -> tuple[SACAgent, ReplayBuffer]:
    agent = SACAgent(OBS_DIM, ACT_DIM, cfg, "cpu", seed=0)
    n = len(data["obs"])
    buffer = ReplayBuffer(n, OBS_DIM, ACT_DIM, seed=0)
    for i in range(n):
        buffer.add(data["obs"][i], data["action"][i], float(data["reward"][i]), float(data["cost"][i]),
                   data["next_obs"][i], float(data["done"][i]))  # fmt: skip
    return agent, buffer


def make_sb3(cfg: SACConfig, data: dict[str, np.ndarray]):  # -> stable_baselines3.SAC
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import configure

    n = len(data["obs"])
    model = SAC(
        "MlpPolicy",
        SpacesOnly(),
        learning_rate=cfg.critic_lr,  # SB3 has one rate for actor, critics and alpha; ours are all 3e-4
        buffer_size=n,
        learning_starts=0,
        batch_size=cfg.batch_size,
        tau=cfg.tau,
        gamma=cfg.gamma,
        ent_coef=f"auto_{cfg.init_alpha}",
        policy_kwargs={"net_arch": list(cfg.hidden_sizes)},  # actor and both critics
        device="cpu",
        seed=0,
    )
    model.set_logger(configure(None, []))  # train() records losses; learn() would set this up
    for i in range(n):
        model.replay_buffer.add(data["obs"][i : i + 1], data["next_obs"][i : i + 1], data["action"][i : i + 1],
                                data["reward"][i : i + 1], data["done"][i : i + 1], [{}])  # fmt: skip
    return model


def time_ours(agent: SACAgent, buffer: ReplayBuffer, steps: int, batch: int) -> float:
    """Seconds for `steps` gradient steps of our agent."""
    t0 = time.perf_counter()
    for _ in range(steps):
        agent.update(buffer.sample(batch))
    return time.perf_counter() - t0


def time_sb3(model, steps: int, batch: int) -> float:  # model: stable_baselines3.SAC
    t0 = time.perf_counter()
    model.train(gradient_steps=steps, batch_size=batch)
    return time.perf_counter() - t0


def profile(agent: SACAgent, buffer: ReplayBuffer, model, steps: int, batch: int) -> None:
    """Top operators of both by self CPU time (torch.profiler), to see where the time goes."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for name, fn in (("ours", lambda: time_ours(agent, buffer, steps, batch)),
                     ("SB3", lambda: time_sb3(model, steps, batch))):  # fmt: skip
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        print(f"\n#### torch.profiler, {name}, {steps} steps (self CPU time)\n")
        print("```")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15, max_name_column_width=40))
        print("```")


def load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default=f"1,{torch.get_num_threads()}",
                   help="comma-separated torch thread counts to run (default 1 and torch's default)")  # fmt: skip
    p.add_argument("--steps", type=int, default=200, help="gradient steps per timed round (default 200)")
    p.add_argument("--rounds", type=int, default=5, help="alternating ours/SB3 rounds (default 5)")
    p.add_argument("--transitions", type=int, default=10_000, help="random transitions in each buffer")
    p.add_argument("--batch-size", type=int, default=SACConfig().batch_size)
    p.add_argument("--profile", action="store_true", help="also print torch.profiler tables")
    ns = p.parse_args(sys.argv[1:] if argv is None else argv)

    import stable_baselines3

    cfg = SACConfig(batch_size=ns.batch_size)
    data = random_transitions(ns.transitions, seed=0)
    print(f"machine: {machine()}")
    print(f"torch {torch.__version__}, stable-baselines3 {stable_baselines3.__version__}; "
          f"hidden {cfg.hidden_sizes}, batch {cfg.batch_size}, obs {OBS_DIM}, action {ACT_DIM}, "
          f"{ns.steps} steps x {ns.rounds} rounds")  # fmt: skip
    print(f"load average at start: {load()}\n")
    print("| torch threads | ours steps/s | SB3 steps/s | ours / SB3 | cost critic counted: ours×3 / SB3×2 "
          "critic updates/s | ours ms/step | SB3 ms/step |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    last = None
    for threads in (int(t) for t in ns.threads.split(",")):
        torch.set_num_threads(threads)
        agent, buffer = make_ours(cfg, data)
        model = make_sb3(cfg, data)
        time_ours(agent, buffer, 20, cfg.batch_size)  # warm-up: allocator, first-call overheads
        time_sb3(model, 20, cfg.batch_size)
        ours, sb3 = [], []
        for _ in range(ns.rounds):
            ours.append(ns.steps / time_ours(agent, buffer, ns.steps, cfg.batch_size))
            sb3.append(ns.steps / time_sb3(model, ns.steps, cfg.batch_size))
        o, s = float(np.median(ours)), float(np.median(sb3))
        print(f"| {threads} | {o:.1f} | {s:.1f} | {o / s:.3f} | {3 * o / (2 * s):.3f} | {1e3 / o:.2f} | "
              f"{1e3 / s:.2f} |")  # fmt: skip
        last = (agent, buffer, model)
    print(f"\nload average at end: {load()}")
    if ns.profile and last is not None:
        profile(*last, ns.steps, cfg.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
