"""--ray ADDRESS: the workers of `--workers N` as Ray actors on any node of a Ray cluster; the learner stays here.

    python main.py --ray local --workers 2 ...       # a Ray instance of its own on this machine
    python main.py --ray auto --workers 8 ...        # the cluster `ray start --head` made (RAY_ADDRESS or local)
    python main.py --ray ray://head:10001 ...        # through the Ray client

Each actor (`EncodeActor`, one CPU) runs whole encodes next to its encoder, with the built-in (or
`--encoder`) encoder and `io_runner.run_encode`, in a private rl_io directory on its node's tmpfs,
acting with the actor weights it was handed for that encode, and returns the whole encode: its
steps, its finished GOPs and their rate violations. The driver (main.py) puts the GOPs into the one
replay buffer and updates λ, in the order they come; the gradient steps run in workers.LearnerThread
as with local workers, at the same replay ratio. Actors get fresh weights with every encode.

Inputs, first-pass statistics (--stat-dir) and outputs (--out-dir, --o ...) are read and written
by path on every node: a shared filesystem, or the same files at the same paths on every machine;
so must the project checkout and its venv be. A node that cannot read an input fails that encode
with a message naming the node and the path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import encoder_proc
import io_runner
from encoder_proc import VideoSpec
from io_runner import EncodeResult, Learner, Step
from models import Actor, NumpyActor

PROJECT_ROOT = Path(__file__).resolve().parent
# Encoder flags whose values are files: made absolute before a spec travels to another process or node.
PATH_FLAGS = ("--input", "--stat-in", "--stat-out", "--o", "--csv", "--summary-json")
INPUT_FLAGS = ("--input", "--stat-in")  # read by the encoder: checked on the node first


def connect(address: str, workers: int) -> None:
    """ray.init for `--ray`: 'local' starts a Ray instance of this process's own, anything else joins one."""
    import ray

    env = {"env_vars": {"PYTHONPATH": str(PROJECT_ROOT)}}  # the checkout, by path, on every node
    if address == "local":
        ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False, runtime_env=env,
                 object_store_memory=128 * 1024 * 1024, log_to_driver=False)  # fmt: skip
    else:
        ray.init(address=address, runtime_env=env, log_to_driver=False)


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def absolute_args(args: list[str]) -> list[str]:
    """`args` with the values of PATH_FLAGS made absolute (an actor's working directory is not ours)."""
    out = list(args)
    for i, tok in enumerate(out[:-1]):
        if tok in PATH_FLAGS:
            out[i + 1] = str(Path(out[i + 1]).expanduser().absolute())
    return out


def unreadable_input(spec: VideoSpec) -> str:
    """'' if this node can read every input of `spec`, else a message naming the node and the file."""
    for flag in INPUT_FLAGS:
        path = spec.flag(flag)
        if path is not None and not os.access(path, os.R_OK):
            host = socket.gethostname()
            return (
                f"node {host} cannot read {path} ({flag} of video {spec.name}): with --ray, inputs and --stat-dir "
                "are read by path on every node: put them on a shared filesystem or at the same path on every "
                "machine"
            )
    return ""


@dataclass
class RemoteEncode:
    """What an actor returns: the encode, its finished GOPs (steps) and their rate violations, in order."""

    result: EncodeResult
    episodes: list[list[Step]] = field(default_factory=list)
    violations: list[float] = field(default_factory=list)
    node: str = ""


class _Collecting(Learner):
    """An actor's learner: acts with given weights, keeps finished GOPs for the driver, learns nothing here."""

    def __init__(self, actor: NumpyActor | None, random_steps: int, learning: bool, seed: int,
                 lam: float) -> None:  # fmt: skip
        self.actor, self.random_steps, self.learning, self.lam = actor, random_steps, learning, lam
        self.np_rng = np.random.default_rng(seed)
        self.episodes: list[list[Step]] = []
        self.violations: list[float] = []

    def choose(self, obs: np.ndarray) -> np.ndarray:
        # numpy, not torch: acting sits on the encoder's reply path (models.NumpyActor)
        if self.actor is None:  # Δ = 0
            return np.zeros(1, dtype=np.float32)
        if not self.learning:
            return self.actor.deterministic(obs)
        if self.random_steps > 0:
            self.random_steps -= 1
            return self.np_rng.uniform(-1.0, 1.0, size=1).astype(np.float32)
        return self.actor.sample(obs, self.np_rng)

    def learn(self) -> dict[str, float]:
        return {}

    def store_episode(self, steps: list[Step]) -> None:
        self.episodes.append(list(steps))

    def end_gop(self, violation: float) -> float:
        self.violations.append(violation)
        return self.lam  # the driver's λ as of this encode's start; the driver updates the real one


class EncodeActorImpl:
    """The body of a Ray actor: whole encodes on its node. `stop()` (a concurrent call) ends the running one."""

    def __init__(self, index: int, hidden_sizes: tuple[int, ...], obs_dim: int, out_dir: str,
                 encoder: str, rl_args_template: str, timeout_s: float) -> None:  # fmt: skip
        torch.set_num_threads(1)
        self.index = index
        self.actor = Actor(obs_dim, 1, hidden_sizes).requires_grad_(False)
        self.numpy_actor = NumpyActor(self.actor)  # rebuilt from each weights version
        self.version = -1
        self.out_dir, self.encoder, self.template, self.timeout_s = Path(out_dir), encoder, rl_args_template, timeout_s
        self.top = Path(tempfile.mkdtemp(prefix="rlrc-ray-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
        self.stopping = threading.Event()

    def encode(self, name: str, args: list[str], baseline: Any, weights: Any, random_steps: int, learning: bool,
               tag: str, seed: int, lam: float, max_delta_qp: int, rate_tolerance: float,
               reward_metric: str) -> RemoteEncode:  # fmt: skip
        spec = VideoSpec(name, args)
        node = socket.gethostname()
        if message := unreadable_input(spec):
            return RemoteEncode(EncodeResult(video=name, ok=False, message=message), node=node)
        actor = None
        if weights is not None:
            if weights.version != self.version:
                self.actor.load_state_dict(weights.actor)
                self.numpy_actor = NumpyActor(self.actor)
                self.version = weights.version
            actor = self.numpy_actor
        learner = _Collecting(actor, random_steps, learning, seed, lam)
        rl_dir = self.top / "rl_io"
        session = f"{os.getpid()}-r{self.index}-{tag}"
        encoder_proc.make_output_dirs(args)
        command = encoder_proc.encoder_command(self.encoder) + args + encoder_proc.rl_args(self.template, rl_dir,
                                                                                           session)  # fmt: skip
        res = io_runner.run_encode(spec, command, rl_dir, session, learner, baseline, max_delta_qp, rate_tolerance,
                                   self.timeout_s, self.out_dir / "logs" / f"{name}.{tag}.log", reward_metric,
                                   self.stopping.is_set)  # fmt: skip
        return RemoteEncode(res, learner.episodes, learner.violations, node)

    def stop(self) -> None:
        self.stopping.set()

    def ready(self) -> str:
        return socket.gethostname()

    def close(self) -> None:
        """Removes this actor's rl_io directory (ray.kill then ends the actor, which runs no finaliser)."""
        shutil.rmtree(self.top, ignore_errors=True)


class RayPool:
    """N Ray actors and the driver's side of their encodes: one epoch's videos handed out as actors come free."""

    def __init__(self, workers: int, hidden_sizes: tuple[int, ...], obs_dim: int, out_dir: str, encoder: str,
                 rl_args_template: str, timeout_s: float) -> None:  # fmt: skip
        import ray

        remote = ray.remote(num_cpus=1, max_concurrency=2)(EncodeActorImpl)  # a 2nd thread for stop()
        self.actors = [remote.remote(k, hidden_sizes, obs_dim, str(Path(out_dir).absolute()), encoder,
                                     rl_args_template, timeout_s) for k in range(workers)]  # fmt: skip
        self.nodes = ray.get([a.ready.remote() for a in self.actors])

    def run(
        self,
        specs: list[VideoSpec],
        submit: Callable[[int, int], dict[str, Any]],
        take: Callable[[int, int, RemoteEncode], None],
        should_stop: Callable[[], bool],
    ) -> None:
        """Encodes every spec on the actors, each as an actor comes free.

        `submit(k, i)` gives the keyword arguments of specs[i]'s encode on actor k when it starts;
        `take(k, i, out)` takes each finished one, in the driver's thread. On `should_stop()` every
        actor's running encode is ended (its encoder too) and no new one starts.
        """
        import ray

        todo = list(range(len(specs)))
        free = list(range(len(self.actors)))
        running: dict[Any, tuple[int, int]] = {}  # ObjectRef -> (actor, spec index)
        stopped = False
        while running or (todo and not stopped):
            while free and todo and not stopped:
                k, i = free.pop(0), todo.pop(0)
                spec = specs[i]
                kwargs = submit(k, i)
                running[self.actors[k].encode.remote(spec.name, absolute_args(spec.args), **kwargs)] = (k, i)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
            if should_stop() and not stopped:
                stopped = True
                ray.get([a.stop.remote() for a in self.actors])
            for ref in ready:
                k, i = running.pop(ref)
                free.append(k)
                take(k, i, ray.get(ref))

    def close(self) -> None:
        import ray

        with contextlib.suppress(Exception):  # an actor already gone has nothing to clean
            ray.get([a.close.remote() for a in self.actors], timeout=10)
        for a in self.actors:
            ray.kill(a)
        self.actors = []

