"""Entry point: what a run starts from, the epoch loop and its checkpoints.

The command line is cli.py; the videos inputs.py; the Δ=0 baselines baselines.py; running encodes
(one video, an epoch on N workers or Ray actors, pass 1) encodes.py; the log and progress bar progress.py.

    python main.py --epochs 20 --log-level 2 --ckpt-interval 5     # bundled clips, built-in encoder
    python main.py --load-checkpoint ./checkpoints/checkpoint_epoch_10.pt --epochs 30
    python main.py --mode infer --load-checkpoint ./checkpoints/checkpoint_epoch_30.pt --epochs 1

One epoch is one encode of every video; one GOP of an encode is one episode.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.contrib.logging import logging_redirect_tqdm

import checkpoint
import critic_pretrain
import log_limit
import oracle_records
import policy
import protocol
import workers
from baselines import ensure_baselines
from cli import build_parser, config_from_args, glue_dash_values, parse_device
from config import Config
from encoder_proc import VideoSpec, VideoSpecError
from encodes import (
    StopFlag,
    evaluate_deterministic,
    run_epoch_on_ray,
    run_epoch_on_workers,
    run_first_passes,
    run_video,
    start_workers,
)
from inputs import resolve_videos
from io_runner import DETAILED, EncodeResult, Learner
from learners import ACT_DIM, Counters, SacLearner
from progress import EpochProgress, setup_logging, signed
from replay import ReplayBuffer
from reward import delta_psnr_at_equal_rate
from sac_agent import SACAgent
from state import OBS_DIM
from telemetry import Telemetry

log = logging.getLogger("rlrc")


TMPFS = Path("/dev/shm")


def default_rl_dir() -> Path:
    """The protocol directory when --rl-dir is not given: DIR/rl_io in a new private directory on tmpfs.

    On tmpfs a handshake costs no disk I/O (bench/bench_loop.py: a reply is written in ~60 µs on
    tmpfs, ~400 µs on ext4); the directory is removed at exit. Without /dev/shm: ./rl_io.
    """
    if TMPFS.is_dir() and os.access(TMPFS, os.W_OK | os.X_OK):
        top = Path(tempfile.mkdtemp(prefix="rlrc-", dir=TMPFS))  # mode 0700, a fresh name
        atexit.register(shutil.rmtree, top, True)
        return top / "rl_io"
    return Path("./rl_io")


def load_start(cfg: Config, specs: list[VideoSpec], device: torch.device) -> tuple[Any, policy.Policy | None]:
    """What the run starts from: (checkpoint dict, None), (None, policy) or (None, None) for a fresh agent.

    `--load-checkpoint` may name a training checkpoint or a policy file (policy.py). Without it,
    infer mode uses the policy shipped for the videos' codec (policies/<codec>.pt) when there is
    one. A policy sets the actor's layer sizes and the action range to those it was trained with.
    """
    pol = None
    if cfg.load_checkpoint:
        try:
            data = policy.read_file(Path(cfg.load_checkpoint))
            if data is None:
                return checkpoint.load(Path(cfg.load_checkpoint), map_location=device), None
            pol = policy.load(Path(cfg.load_checkpoint), data)
        except policy.PolicyError as exc:
            raise checkpoint.CheckpointError(f"--load-checkpoint: {exc}") from None
    elif cfg.mode == "infer":
        codec = next((s.flag("--codec") for s in specs if s.flag("--codec")), None) or "svtav1"
        if policy.shipped_policy(codec).is_file():
            pol = policy.load(policy.shipped_policy(codec))
    if pol is not None:
        cfg.sac.hidden_sizes = pol.hidden_sizes
        cfg.sac.max_delta_qp = pol.max_delta_qp
        unprobed = [s.name for s in specs if "--key-probe" not in s.args]
        if pol.wants_key_probe and not cfg.encoder and unprobed:
            log.warning("%s reads the key probe, and these videos' encodes do not send it: %s; add --key-probe to "
                        "their arguments (PROTOCOL.md §4.1.2), else its key answers are those of a probe of 0 dB",
                        pol.path, ", ".join(unprobed))  # fmt: skip
        no_zero = [s.name for s in specs if "--probe-zero" not in s.args]
        if pol.reads_probe_zero and not cfg.encoder and no_zero:
            log.warning("%s picks among the probes and Δ=0, and these videos' encodes do not send the zero encode: "
                        "%s; add --key-probe --probe-zero to their arguments, else it answers Δ=0 where it picks",
                        pol.path, ", ".join(no_zero))  # fmt: skip
    return None, pol


def pretrained_critics(cfg: Config, pol: policy.Policy | None) -> tuple[Any, str] | None:
    """--pretrain-critics: ((critic 1, critic 2), summary), the file's gain model; checked before any encode."""
    if not cfg.pretrain_critics:
        return None
    flag = f"--pretrain-critics {cfg.pretrain_critics}"
    if pol is None or cfg.mode != "train":
        raise ValueError(f"{flag}: needs train mode and --load-checkpoint naming a policy file (the actor it fits)")
    path = Path(cfg.pretrain_critics)
    if not path.is_file():
        raise ValueError(f"{flag}: no such file (bench/oracle_data.py writes oracle records)")
    log.info("fitting the reward critics to the gain model of %s", path)
    try:
        records = oracle_records.read_records([path])
        return critic_pretrain.critics_from_records(records, pol.codec, cfg.sac.max_delta_qp, cfg.sac.hidden_sizes,
                                                    seed=cfg.seed)  # fmt: skip
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{flag}: {exc}") from None


def save_checkpoint(
    cfg: Config, path: Path, agent: SACAgent, buffer: ReplayBuffer, counters: Counters, epoch: int, run_dir: str
) -> None:
    payload = {
        "agent": agent.state_dict(),
        "replay": buffer.state_dict() if cfg.save_replay_buffer else None,
        "epoch": epoch,
        "counters": counters.__dict__.copy(),
        "config": cfg.to_dict(),
        "rng": checkpoint.rng_state(),
        "run_dir": run_dir,
        "obs_dim": OBS_DIM,
    }
    checkpoint.save(path, payload)
    removed = checkpoint.rotate(Path(cfg.ckpt_dir), cfg.ckpt_keep)
    log.info("checkpoint written: %s%s", path, f" (removed {len(removed)} old)" if removed else "")


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(glue_dash_values(sys.argv[1:] if argv is None else argv))
    if ns.torch_threads > 0:  # before any torch work: --pretrain-critics fits its critics below
        torch.set_num_threads(ns.torch_threads)
    try:
        cfg = config_from_args(ns)
        setup_logging(cfg.log_level)
        device = parse_device(cfg.device)
        specs = resolve_videos(cfg, ns.dataset_args)
        ckpt, pol = load_start(cfg, specs, device)
        critics = pretrained_critics(cfg, pol)
        if not cfg.rl_dir:
            cfg.rl_dir = str(default_rl_dir())
        protocol.prepare_rl_dir(Path(cfg.rl_dir))  # created 0700; RlDirError if others may write to it
    except (ValueError, VideoSpecError, checkpoint.CheckpointError) as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        return 2

    stop = StopFlag()
    stop.consequence = "ending the encoder and exiting; nothing is trained yet, so no checkpoint is written"
    stop.install()
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    try:
        run_first_passes(cfg, specs, stop)
        baselines = ensure_baselines(cfg, specs, stop, ns.encoder_rl_args)
    except RuntimeError as exc:
        if not stop():
            log.error("%s", exc)
            return 1
    if stop():
        return stop.exit_code
    specs = [spec for spec in specs if spec.key in baselines.videos]
    if not specs:
        log.error("no video has a Δ=0 baseline: nothing to train or evaluate")
        return 1
    if cfg.make_baseline:
        return 0

    agent = SACAgent(OBS_DIM, ACT_DIM, cfg.sac, device, cfg.seed)
    if pol is not None:
        agent.set_reference(pol.full_actor())  # the actor starts as the policy; --bc-weight keeps it near it
        log.info("actor from the policy %s (%s)", pol.path, pol.provenance.get("summary", "no description"))
    if critics is not None:
        critic_pretrain.load_into(agent, critics[0])  # twin critics q1, q2
        log.info("%s", critics[1])
    buffer = ReplayBuffer(cfg.sac.buffer_size, OBS_DIM, ACT_DIM, seed=cfg.seed)
    counters = Counters()
    start_epoch = cfg.start_epoch
    run_dir = str(Path(cfg.runs_dir) / time.strftime(f"%Y%m%d-%H%M%S-{cfg.mode}"))
    if ckpt is not None:
        try:
            if ckpt.get("obs_dim") != OBS_DIM:
                raise checkpoint.CheckpointError(
                    f"--load-checkpoint: {cfg.load_checkpoint} has observations of size {ckpt.get('obs_dim')}, "
                    f"this version uses {OBS_DIM}"
                )
            agent.load_state_dict(ckpt["agent"])
            if ckpt.get("replay") is not None:
                buffer.load_state_dict(ckpt["replay"])
            counters = Counters(**ckpt["counters"])
            checkpoint.set_rng_state(ckpt["rng"])
        except (checkpoint.CheckpointError, KeyError, ValueError, RuntimeError) as exc:
            log.error("%s", exc)
            return 2
        if cfg.mode == "train":
            # Training continues the checkpoint's numbering and its TensorBoard run.
            if ns.start_epoch is None:
                start_epoch = int(ckpt["epoch"]) + 1
            run_dir = ckpt.get("run_dir") or run_dir
        log.info("resumed from %s (epoch %d, %d transitions in the replay buffer)",
                 cfg.load_checkpoint, ckpt["epoch"], len(buffer))  # fmt: skip
    elif cfg.mode == "infer" and pol is None:
        log.warning("--mode infer without --load-checkpoint and no shipped policy: the policy is untrained")

    if start_epoch > cfg.epochs:
        log.error("nothing to do: first epoch %d is after --epochs %d", start_epoch, cfg.epochs)
        return 2
    telemetry = Telemetry(run_dir if cfg.tensorboard else None)
    learner = SacLearner(agent, buffer, counters, learning=cfg.mode == "train")
    log.info(
        "%s on %d video(s), epochs %d..%d, device %s%s",
        cfg.mode,
        len(specs),
        start_epoch,
        cfg.epochs,
        device,
        f", TensorBoard: {run_dir}" if cfg.tensorboard else "",
    )
    stop.consequence = (
        "ending the encoder and writing a checkpoint that redoes this epoch"
        if cfg.mode == "train"
        else "ending the encoder and exiting (infer mode writes no checkpoint)"
    )
    total_mini_gops = sum(len(baselines.videos[spec.key].mini_gops) for spec in specs)
    epoch = start_epoch
    exit_code = 0
    report: list[dict[str, Any]] = []
    hub: workers.LearnerHub | None = None
    worker_learners: list[Learner] = []
    ray_pool = None
    if cfg.workers > 1 or cfg.ray:
        try:
            hub, worker_learners, ray_pool = start_workers(cfg, ns.encoder_rl_args, agent, buffer, counters, stop)
        except RuntimeError as exc:
            log.error("%s", exc)
            return 1

    def record(
        spec: VideoSpec, res: EncodeResult, epoch: int, epoch_rows: list[dict[str, float]], extra: Any = None
    ) -> None:
        """One finished encode into the epoch's rows, the report (plus `extra`), TensorBoard and the log."""
        s = res.summary()
        base = baselines.videos[spec.key]
        s["delta_psnr_y"] = s["psnr_y"] - base.psnr_y
        s["delta_psnr_y_equal_rate"] = delta_psnr_at_equal_rate(s["psnr_y"], s["kbps"], base)
        s["delta_ssim_y"] = s["ssim_y"] - base.ssim_y
        s["lambda"] = agent.lam
        epoch_rows.append(s)
        report.append({"epoch": epoch, "video": spec.name, **s, **(extra or {})})
        telemetry.video(spec.name, s, epoch, res, counters)
        log.log(
            DETAILED,
            "%s: %.1f kbps (target %.0f, error %+.2f%%), PSNR-Y %.3f dB (Δ %+.3f, at equal rate %s), "
            "SSIM-Y %.4f, mean QP %.1f, mean ΔQP %+.2f, reward %.4f, λ %.3f",
            spec.name, s["kbps"], s["target_kbps"], 100 * s["bitrate_error"], s["psnr_y"],
            s["delta_psnr_y"], signed(s["delta_psnr_y_equal_rate"]), s["ssim_y"], s["mean_qp"], s["mean_dqp"],
            s["reward_sum"], agent.lam,
        )  # fmt: skip

    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            epoch_rows: list[dict[str, float]] = []
            bar = EpochProgress(epoch, cfg.epochs, total_mini_gops, cfg.log_level, lambda: agent.lam)
            if hub is None:  # one encoder: learning between request and reply, exactly reproducible
                for spec in specs:
                    bar.start_video()
                    with logging_redirect_tqdm(loggers=[log]):
                        res = run_video(cfg, spec, learner, baselines.videos[spec.key], f"e{epoch}", stop,
                                        ns.encoder_rl_args, on_feedback=bar.step)  # fmt: skip
                    counters.encodes += 1
                    if stop():
                        break
                    if not res.ok:
                        log.error("%s", res.message)
                        if ns.stop_on_encoder_error:
                            exit_code = 1
                            break
                        continue
                    record(spec, res, epoch, epoch_rows)
            else:
                with logging_redirect_tqdm(loggers=[log]):
                    if ray_pool is not None:
                        results, failed = run_epoch_on_ray(
                            cfg, specs, ray_pool, hub, baselines, f"e{epoch}", stop, bar, ns.stop_on_encoder_error
                        )
                    else:
                        results, failed = run_epoch_on_workers(
                            cfg, specs, worker_learners, baselines, f"e{epoch}", stop, ns.encoder_rl_args, bar,
                            counters, ns.stop_on_encoder_error,
                        )  # fmt: skip
                    hub.drain(stop)  # the gradient steps owed to this epoch's GOPs: the replay ratio holds
                if failed:
                    exit_code = 1
                if not stop():
                    for spec, done in zip(specs, results, strict=True):
                        if done is not None and done[1].ok:
                            record(spec, done[1], epoch, epoch_rows, {"worker": done[0]})
            bar.close()
            if stop() or exit_code:
                break
            if epoch_rows:
                means = {k: float(np.mean([r[k] for r in epoch_rows])) for k in epoch_rows[0]}
                means["abs_bitrate_error"] = float(np.mean([abs(r["bitrate_error"]) for r in epoch_rows]))
                telemetry.epoch(means, epoch)
                log.info(
                    "epoch %d: mean |bitrate error| %.2f%%, mean ΔPSNR-Y at equal rate %s dB (raw %+.3f), "
                    "mean ΔSSIM-Y %+.5f, reward %.4f, λ %.3f, buffer %d",
                    epoch, 100 * means["abs_bitrate_error"], signed(means["delta_psnr_y_equal_rate"]),
                    means["delta_psnr_y"], means["delta_ssim_y"], means["reward_sum"], agent.lam, len(buffer),
                )  # fmt: skip
            if cfg.mode == "train" and ns.eval_interval > 0 and epoch % ns.eval_interval == 0:
                evaluate_deterministic(cfg, specs, agent, baselines, epoch, stop, ns.encoder_rl_args, telemetry)
            if cfg.mode == "train" and (epoch % cfg.ckpt_interval == 0 or epoch == cfg.epochs):
                save_checkpoint(cfg, checkpoint.epoch_path(Path(cfg.ckpt_dir), epoch), agent, buffer, counters,
                                epoch, run_dir)  # fmt: skip
        if hub is not None:
            hub.stop()  # after its running step: the checkpoint below sees a still agent
        if stop():
            exit_code = stop.exit_code
            if cfg.mode == "train":
                # The interrupted epoch is incomplete: the checkpoint resumes by redoing it.
                path = Path(cfg.ckpt_dir) / f"checkpoint_interrupted_epoch_{epoch}.pt"
                save_checkpoint(cfg, path, agent, buffer, counters, epoch - 1, run_dir)
    except checkpoint.CheckpointError as exc:
        log.error("%s", exc)
        exit_code = 1
    finally:
        if hub is not None:
            hub.stop()
        if ray_pool is not None:
            import ray_workers

            ray_pool.close()
            ray_workers.shutdown()
        telemetry.close()
        log_limit.log_summary(log)
        if report:
            out = Path(cfg.out_dir) / f"report_{cfg.mode}.json"
            out.write_text(json.dumps(report, indent=1))
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
