"""Running encodes: one video (run_video), one epoch on N workers or Ray actors, pass 1, and the
deterministic policy's evaluation; StopFlag carries SIGINT/SIGTERM to all of them."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import encoder_proc
import io_runner
import workers
from config import Config
from encoder_proc import VideoSpec
from io_runner import EncodeResult, Learner, Step
from learner_process import LearnerProcess
from learners import ACT_DIM, Counters, SacLearner
from progress import EpochProgress, signed
from replay import ReplayBuffer
from reward import BaselineStats, delta_psnr_at_equal_rate
from sac_agent import SACAgent
from state import OBS_DIM
from telemetry import Telemetry

log = logging.getLogger("rlrc")


class StopFlag:
    """Set by SIGINT/SIGTERM; checked by the loop so that it can end encoders (and checkpoint, when training).

    `consequence` says what the run does on a signal at this point; main() keeps it up to date.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.consequence = "ending the encoder and exiting"

    def __call__(self) -> bool:
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as shells report a process ended by that signal."""
        return 128 + int(self.signum or 0)

    def install(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            if self.signum is not None:  # a second signal: give up at once
                raise KeyboardInterrupt
            self.signum = signum
            log.warning("received %s: %s", signal.Signals(signum).name, self.consequence)

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)


def run_video(
    cfg: Config,
    spec: VideoSpec,
    learner: Learner,
    baseline: Any,
    tag: str,
    stop: StopFlag,
    rl_args_template: str,
    side_run: bool = False,
    on_feedback: Callable[[Step], None] = lambda step: None,
    worker: int | None = None,
) -> EncodeResult:
    """One encode of `spec`; a side run (the baseline) writes its outputs under OUT_DIR, not the user's paths.

    `worker` k (with --workers N > 1) talks to its encoder in RL_DIR/wk under a session id of its own.
    """
    session = f"{os.getpid()}-{tag}" if worker is None else f"{os.getpid()}-w{worker}-{tag}"
    args = encoder_proc.redirect_outputs(spec.args, Path(cfg.out_dir), tag) if side_run else spec.args
    encoder_proc.make_output_dirs(args)
    rl_dir = Path(cfg.rl_dir) / f"w{worker}" if worker is not None else Path(cfg.rl_dir)
    command = (
        encoder_proc.encoder_command(cfg.encoder) + args + encoder_proc.rl_args(rl_args_template, rl_dir, session)
    )
    log_path = Path(cfg.out_dir) / "logs" / f"{spec.name}.{tag}.log"
    return io_runner.run_encode(
        spec,
        command,
        rl_dir,
        session,
        learner,
        baseline,
        cfg.sac.max_delta_qp,
        cfg.sac.rate_tolerance,
        cfg.encoder_timeout_s,
        log_path,
        cfg.reward_metric,
        stop,
        on_feedback,
    )


def run_epoch_on_workers(
    cfg: Config,
    specs: list[VideoSpec],
    learners: list[Learner],
    baselines: BaselineStats,
    tag: str,
    stop: StopFlag,
    rl_args_template: str,
    bar: EpochProgress,
    counters: Counters,
    stop_on_error: bool,
) -> tuple[list[tuple[int, EncodeResult] | None], bool]:
    """One encode of every video, `len(learners)` at once (worker k in RL_DIR/wk, acting with learners[k]).

    Failed encodes are logged as they fail; the other workers go on. Returns (worker, result) in
    the order of `specs` (None: not started because of a signal, or after a failure with
    `stop_on_error`) and whether that failure stopped the epoch.
    """
    failed = threading.Event()
    lock = threading.Lock()

    def encode(k: int, spec: VideoSpec) -> tuple[int, EncodeResult]:
        bar.start_video(spec.name)
        res = run_video(cfg, spec, learners[k], baselines.videos[spec.key], tag, stop, rl_args_template,
                        on_feedback=lambda st: bar.step(st, spec.name), worker=k)  # fmt: skip
        with lock:
            counters.encodes += 1
        if not res.ok and not stop():
            log.error("%s", res.message)
            if stop_on_error:
                failed.set()
        return k, res

    results = workers.run_pool(specs, len(learners), encode, lambda: stop() or failed.is_set())
    return results, failed.is_set()


def start_workers(
    cfg: Config, rl_args_template: str, agent: SACAgent, buffer: ReplayBuffer, counters: Counters, stop: StopFlag
) -> tuple[workers.LearnerHub, list[Learner], Any]:
    """--workers N > 1 or --ray: the learner hub (a thread or a process, started in train mode), one acting
    copy per worker, and the Ray pool (None without --ray). RuntimeError says why they could not start;
    nothing is left running then."""
    hub_class = LearnerProcess if cfg.learner == "process" else workers.LearnerThread
    hub = hub_class(agent, buffer, counters, cfg.weights_every)
    worker_learners = [hub.worker(k, cfg.seed + 1 + k, learning=cfg.mode == "train") for k in range(cfg.workers)]
    ray_pool = None
    if cfg.ray:
        import ray_workers

        t0 = time.monotonic()
        try:
            ray_workers.connect(cfg.ray, cfg.workers)
            ray_pool = ray_workers.RayPool(cfg.workers, cfg.sac.hidden_sizes, OBS_DIM, cfg.out_dir, cfg.encoder,
                                           rl_args_template, cfg.encoder_timeout_s)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 (any failure to reach or use the cluster)
            ray_workers.shutdown()
            raise RuntimeError(f"--ray {cfg.ray}: cannot start the workers: {exc}") from exc
        stop.install()  # after ray.init: the run's own handlers for SIGINT/SIGTERM
        log.info("%d Ray actor(s) on %s ready in %.1f s", cfg.workers, ", ".join(sorted(set(ray_pool.nodes))),
                 time.monotonic() - t0)  # fmt: skip
    else:
        log.info("%d workers (each in %s/wK), learning in a %s of its own", cfg.workers, cfg.rl_dir, cfg.learner)
    if cfg.mode == "train":
        try:
            hub.start()
        except RuntimeError:  # the learner process could not start
            if ray_pool is not None:
                ray_pool.close()
                ray_workers.shutdown()
            raise
    return hub, worker_learners, ray_pool


def run_epoch_on_ray(
    cfg: Config,
    specs: list[VideoSpec],
    pool: Any,
    hub: workers.LearnerHub,
    baselines: BaselineStats,
    tag: str,
    stop: StopFlag,
    bar: EpochProgress,
    stop_on_error: bool,
) -> tuple[list[tuple[int, EncodeResult] | None], bool]:
    """One encode of every video on the Ray actors of `pool` (ray_workers.RayPool); as run_epoch_on_workers.

    Each actor acts with the weights published when its encode starts; its finished GOPs go into the
    replay buffer, and λ is updated for each, when the encode comes back.
    """
    learning = cfg.mode == "train"
    results: list[tuple[int, EncodeResult] | None] = [None] * len(specs)
    failed = threading.Event()

    def submit(k: int, i: int) -> dict[str, Any]:
        random_steps = max(0, cfg.sac.learning_starts - hub.counters.steps) if learning else 0
        return {"baseline": baselines.videos[specs[i].key], "weights": hub.weights, "random_steps": random_steps,
                "learning": learning, "tag": tag, "seed": cfg.seed + 1 + k + 1000 * hub.counters.encodes,
                "lam": hub.agent.lam, "max_delta_qp": cfg.sac.max_delta_qp, "rate_tolerance": cfg.sac.rate_tolerance,
                "reward_metric": cfg.reward_metric}  # fmt: skip

    def take(k: int, i: int, out: Any) -> None:
        res, name = out.result, specs[i].name
        hub.counters.encodes += 1
        if learning:
            hub.count_step(len(res.steps))
            res.lambdas = []
            for episode, violation in zip(out.episodes, out.violations, strict=True):
                hub.add_episode(episode)
                res.lambdas.append(hub.end_gop(violation))
            logs = hub.take_logs()
            res.update_logs = [logs] if logs else []
        for st in res.done_steps:
            bar.step(st, name)
        if not res.ok and not stop():
            log.error("%s", res.message)
            if stop_on_error:
                failed.set()
        results[i] = (k, res)

    pool.run(specs, submit, take, lambda: stop() or failed.is_set())
    return results, failed.is_set()


def run_first_passes(cfg: Config, specs: list[VideoSpec], stop: StopFlag) -> None:
    """Runs pass 1 for every video whose first-pass statistics are missing."""
    for spec in specs:
        args = encoder_proc.pass1_args(spec)
        if args is None:
            continue
        Path(args[-1]).parent.mkdir(parents=True, exist_ok=True)
        log.info("first pass for %s -> %s", spec.name, args[-1])
        command = encoder_proc.encoder_command(cfg.encoder) + args
        encoder_proc.run_to_completion(
            command, Path(cfg.out_dir) / "logs" / f"{spec.name}.pass1.log", spec.name, timeout_s=3600, should_stop=stop
        )
        if stop():
            return


def evaluate_deterministic(
    cfg: Config, specs: list[VideoSpec], agent: SACAgent, baselines: BaselineStats, epoch: int, stop: StopFlag,
    rl_args_template: str, telemetry: Telemetry,
) -> None:
    """One encode of every video with the deterministic policy tanh(mean(s)), learning nothing.

    Training's own epoch summaries measure the exploring (sampled) policy; this is the policy a
    user ships. It draws no random numbers and changes no counter, so exact resume is unaffected.
    Logged as "epoch N, deterministic policy: ..." and under eval/ in TensorBoard.
    """
    learner = SacLearner(agent, ReplayBuffer(1, OBS_DIM, ACT_DIM), Counters(), learning=False)
    rows = []
    for spec in specs:
        base = baselines.videos[spec.key]
        res = run_video(cfg, spec, learner, base, f"e{epoch}eval", stop, rl_args_template, side_run=True)
        if stop():
            return
        if not res.ok:
            log.error("%s", res.message)
            continue
        s = res.summary()
        rows.append({"delta_psnr_y_equal_rate": delta_psnr_at_equal_rate(s["psnr_y"], s["kbps"], base),
                     "abs_bitrate_error": abs(s["bitrate_error"]), "mean_dqp": s["mean_dqp"]})  # fmt: skip
    if rows:
        means = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
        telemetry.epoch(means, epoch, prefix="eval")
        log.info("epoch %d, deterministic policy: mean ΔPSNR-Y at equal rate %s dB, mean |bitrate error| %.2f%%, "
                 "mean ΔQP %+.2f", epoch, signed(means["delta_psnr_y_equal_rate"]),
                 100 * means["abs_bitrate_error"], means["mean_dqp"])  # fmt: skip
